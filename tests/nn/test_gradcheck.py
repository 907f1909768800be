"""Tests of tinyzip.nn.gradcheck: fourth-order central differences against derivatives known in
closed form."""
import numpy as np
import pytest

from tinyzip.nn.gradcheck import check_backward, numerical_grad


def test_numerical_grad_of_sum_of_sines_is_cosine_and_x_is_restored():
    """d/dx sum(sin x) = cos x; x is bitwise unchanged afterwards."""
    x = np.random.default_rng(0).uniform(-3, 3, size=(3, 4))
    before = x.copy()
    g = numerical_grad(lambda v: np.sin(v).sum(), x)
    np.testing.assert_allclose(g, np.cos(x), rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(x, before)


def test_numerical_grad_truncation_error_is_fourth_order():
    """Halving the step divides the error by 2^4 (a plain central difference: by 2^2)."""
    x = np.random.default_rng(3).uniform(-1, 1, size=6)
    exact = 3 * np.cos(3 * x)
    err = [np.abs(numerical_grad(lambda v: np.sin(3 * v).sum(), x, eps) - exact).max() for eps in (2e-2, 1e-2)]
    assert 12 < err[0] / err[1] < 20


def test_numerical_grad_round_off_stays_below_the_tolerance_when_L_is_large():
    """L = sum(sin x) + 1000: every evaluation rounds at ulp(1000) = 1.1e-13, which a central
    difference at h = 1e-6 turns into errors up to 6e-8; the default step keeps them under 1e-8."""
    x = np.random.default_rng(4).uniform(-3, 3, size=200)
    g = numerical_grad(lambda v: np.sin(v).sum() + 1000.0, x)
    np.testing.assert_allclose(g, np.cos(x), rtol=0, atol=1e-8)


def test_check_backward_accepts_a_correct_backward_and_rejects_a_wrong_one():
    """y = x * w elementwise: dx = dy * w, dw = dy * x; a swapped backward must fail."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(5), rng.standard_normal(5)

    def forward(x, w):
        return x * w, (x, w)
    check_backward(forward, lambda dy, c: (dy * c[1], dy * c[0]), [x, w])
    with pytest.raises(AssertionError, match="input 0"):
        check_backward(forward, lambda dy, c: (dy * c[0], dy * c[1]), [x, w])


def test_check_backward_handles_tuple_outputs_and_wrt():
    """Two outputs (sum and product): gradients add; only the inputs in wrt are checked."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(4), rng.standard_normal(4)

    def forward(a, b):
        return (a + b, a * b), (a, b)

    def backward(douts, c):
        ds, dp = douts
        return ds + dp * c[1], ds + dp * c[0]
    check_backward(forward, backward, [a, b], wrt=[1])


def test_numerical_grad_rejects_float32():
    with pytest.raises(TypeError, match="float64"):
        numerical_grad(lambda v: v.sum(), np.ones(3, np.float32))
