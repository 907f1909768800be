"""Tests of tinyzip.nn.layers: float64 gradient checks of every pair, and the layers' defining laws
(layer norm: Ba et al. 2016 Eq. 4; GELU: Hendrycks & Gimpel 2016; inverted dropout)."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.nn import layers as L
from tinyzip.nn.gradcheck import check_backward

shapes_st = hynp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@given(shapes_st, st.integers(1, 5), st.integers(0, 99))
def test_linear_backward_matches_central_differences(shape, n_out, seed):
    x = normal(shape, seed)
    check_backward(L.linear_forward, L.linear_backward,
                   [x, normal((shape[-1], n_out), seed + 1), normal(n_out, seed + 2)])


def test_embedding_backward_sums_repeated_rows():
    """dE[v] = sum over the positions that read row v (ids repeat here)."""
    ids = np.array([[1, 3, 1], [0, 3, 3]])
    E = normal((5, 4))
    check_backward(lambda E: L.embedding_forward(ids, E), L.embedding_backward, [E])


@given(shapes_st.filter(lambda s: s[-1] > 1), st.integers(0, 99))
def test_layer_norm_backward_matches_central_differences(shape, seed):
    x = normal(shape, seed)
    check_backward(L.layer_norm_forward, L.layer_norm_backward,
                   [x, normal(shape[-1], seed + 1), normal(shape[-1], seed + 2)])


@given(hynp.arrays(np.float64, st.integers(2, 16),
                   elements=st.floats(-50, 50, allow_subnormal=False)),
       st.floats(-20, 20), st.floats(0.1, 10))
def test_eq4_layer_norm_is_standardisation_invariant_to_shift_and_scale(x, shift, scale):
    """x_hat has mean 0 and variance var/(var+eps); LN(a x + c) = LN(x) for a > 0 up to eps."""
    if x.std() < 1e-2:
        return
    g, b = np.ones(x.size), np.zeros(x.size)
    y, _ = L.layer_norm_forward(x, g, b, eps=0.0)
    np.testing.assert_allclose(y.mean(), 0, atol=1e-9)
    np.testing.assert_allclose(y.var(), 1, rtol=1e-9)
    np.testing.assert_allclose(L.layer_norm_forward(scale * x + shift, g, b, eps=0.0)[0], y,
                               atol=1e-7)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_backward_matches_central_differences(approximate):
    x = np.linspace(-5, 5, 41)
    check_backward(lambda x: L.gelu_forward(x, approximate), L.gelu_backward, [x])


def test_gelu_exact_is_x_times_normal_cdf_and_tanh_form_is_close():
    """GELU(x) = x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2; tanh form within 1e-3."""
    x = np.linspace(-6, 6, 121)
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    exact, _ = L.gelu_forward(x, "none")
    np.testing.assert_allclose(exact, x * phi, rtol=1e-15, atol=1e-15)
    assert np.abs(L.gelu_forward(x, "tanh")[0] - exact).max() < 1e-3


def test_relu_backward_matches_central_differences():
    x = normal(20) + 0.05  # keep entries away from the kink at 0
    x[np.abs(x) < 1e-3] = 0.5
    check_backward(L.relu_forward, L.relu_backward, [x])


@given(shapes_st, st.integers(0, 99), st.sampled_from([0, -1]))
def test_softmax_and_log_softmax_backward_match_central_differences(shape, seed, axis):
    x = 3 * normal(shape, seed)
    check_backward(lambda x: L.softmax_forward(x, axis), L.softmax_backward, [x])
    check_backward(lambda x: L.log_softmax_forward(x, axis), L.log_softmax_backward, [x])


def test_softmax_rows_sum_to_one_and_log_softmax_is_its_log_even_for_huge_logits():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, 0.0, 5.0]])
    p, _ = L.softmax_forward(x)
    lp, _ = L.log_softmax_forward(x)
    np.testing.assert_allclose(p.sum(-1), 1.0)
    np.testing.assert_allclose(np.exp(lp), p, atol=1e-15)


def test_dropout_keeps_expectation_and_its_backward_uses_the_same_mask():
    """E[out] = x for inverted dropout; backward multiplies by the same m / (1 - p)."""
    x = np.ones((200, 200))
    out, cache = L.dropout_forward(x, 0.3, np.random.default_rng(0))
    assert abs(out.mean() - 1.0) < 0.02
    assert abs((out == 0).mean() - 0.3) < 0.01
    np.testing.assert_array_equal(L.dropout_backward(np.ones_like(x), cache), out)
    check_backward(lambda x: L.dropout_forward(x, 0.5, np.random.default_rng(1)),
                   L.dropout_backward, [normal(7)])


@pytest.mark.parametrize("name", ["linear", "layer_norm", "gelu", "softmax", "dropout"])
def test_float32_in_float32_out(name):
    x = normal((3, 4)).astype(np.float32)
    W, v = normal((4, 4)).astype(np.float32), np.ones(4, np.float32)
    run = {"linear": lambda: L.linear_forward(x, W, v), "layer_norm": lambda: L.layer_norm_forward(x, v, v),
           "gelu": lambda: L.gelu_forward(x), "softmax": lambda: L.softmax_forward(x),
           "dropout": lambda: L.dropout_forward(x, 0.1, np.random.default_rng(0))}[name]
    assert run()[0].dtype == np.float32


def test_bad_input_names_the_problem():
    x = normal((2, 3))
    with pytest.raises(ValueError, match="linear"):
        L.linear_forward(x, normal((4, 2)), normal(2))
    with pytest.raises(TypeError, match="float32 or float64"):
        L.relu_forward(np.ones(3, np.int64))
    with pytest.raises(TypeError, match="integers"):
        L.embedding_forward(np.array([0.5]), x)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        L.embedding_forward(np.array([2]), x)
    with pytest.raises(ValueError, match="gamma"):
        L.layer_norm_forward(x, np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="approximate"):
        L.gelu_forward(x, "sigmoid")
    with pytest.raises(ValueError, match="dropout p"):
        L.dropout_forward(x, 1.0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        L.dropout_forward(x, 0.1, 0)
