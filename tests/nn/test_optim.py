"""Tests of tinyzip.nn.optim against steps worked by hand from the papers' formulas.

Kingma & Ba 2015 (Adam, arXiv:1412.6980), Loshchilov & Hutter 2019 (AdamW, arXiv:1711.05101),
Vaswani et al. 2017 Eq. (3) (arXiv:1706.03762), Pascanu et al. 2013 Alg. 1 (arXiv:1211.5063).
The expected numbers are worked out in the comments, never copied from the code's output.
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.nn import optim


def _scalar_params(value):
    return {"w": np.array([value], dtype=np.float64)}


def test_eq1_to_4_adam_two_steps_by_hand():
    """Two Adam steps on one scalar, lr = 0.1, beta1 = 0.9, beta2 = 0.98, eps = 1e-9.

    Step 1, g = 0.5: m = 0.05, v = 0.02 * 0.25 = 0.005, m_hat = 0.5, v_hat = 0.25,
    theta = 1 - 0.1 * 0.5 / (0.5 + 1e-9).
    Step 2, g = -1: m = 0.9 * 0.05 - 0.1 = -0.055, v = 0.98 * 0.005 + 0.02 = 0.0249,
    m_hat = -0.055 / 0.19, v_hat = 0.0249 / 0.0396.
    """
    params, state = _scalar_params(1.0), optim.adam_init(_scalar_params(1.0))
    params, state = optim.adam_step(params, _scalar_params(0.5), state, 0.1)
    theta1 = 1.0 - 0.1 * 0.5 / (0.5 + 1e-9)
    assert state["step"] == 1
    np.testing.assert_allclose(state["m"]["w"], [0.05], rtol=1e-12)
    np.testing.assert_allclose(state["v"]["w"], [0.005], rtol=1e-12)
    np.testing.assert_allclose(params["w"], [theta1], rtol=1e-12)

    params, state = optim.adam_step(params, _scalar_params(-1.0), state, 0.1)
    np.testing.assert_allclose(state["m"]["w"], [-0.055], rtol=1e-12)
    np.testing.assert_allclose(state["v"]["w"], [0.0249], rtol=1e-12)
    theta2 = theta1 - 0.1 * (-0.055 / 0.19) / (math.sqrt(0.0249 / 0.0396) + 1e-9)
    np.testing.assert_allclose(params["w"], [theta2], rtol=1e-12)


def test_adam_first_step_moves_each_coordinate_by_lr():
    """Kingma & Ba Sec. 2.1: at t = 1, m_hat / sqrt(v_hat) = g / |g|, so |step| = lr (for |g| >> eps)."""
    params = {"W": np.zeros((2, 3)), "b": np.zeros(3)}
    grads = {"W": np.array([[1e-3, -2.0, 50.0], [-7.0, 0.3, 1e-2]]), "b": np.array([4.0, -4.0, 0.25])}
    new, _ = optim.adam_step(params, grads, optim.adam_init(params), 0.01)
    for name in params:
        np.testing.assert_allclose(new[name], -0.01 * np.sign(grads[name]), rtol=1e-5)


@given(hynp.arrays(np.float64, (5,), elements=st.floats(-10, 10).filter(lambda x: abs(x) > 1e-3)),
       st.floats(1e-2, 1e2))
def test_adam_update_is_invariant_to_gradient_scale(g, c):
    """Kingma & Ba Sec. 2.1: the step is invariant to rescaling the gradient by c > 0 (up to eps)."""
    params = {"w": np.ones(5)}
    state = optim.adam_init(params)
    a, _ = optim.adam_step(params, {"w": g}, state, 0.1, eps=1e-15)
    b, _ = optim.adam_step(params, {"w": c * g}, state, 0.1, eps=1e-15)
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-9)


def test_adamw_alg2_decoupled_decay_skips_biases():
    """Alg. 2 with g = 0: theta = theta - lr * lambda * theta for matrices only (torch.optim.AdamW form).

    W = 2, lr = 0.1, lambda = 0.5: 2 - 0.1 * 0.5 * 2 = 1.9; the 1-D bias keeps 2.
    """
    params = {"W": np.full((1, 1), 2.0), "b": np.full(1, 2.0)}
    grads = {"W": np.zeros((1, 1)), "b": np.zeros(1)}
    new, _ = optim.adamw_step(params, grads, optim.adam_init(params), 0.1, weight_decay=0.5)
    np.testing.assert_allclose(new["W"], [[1.9]], rtol=1e-12)
    np.testing.assert_allclose(new["b"], [2.0], rtol=1e-12)


def test_adamw_decay_does_not_enter_the_moments():
    """Decoupled: AdamW's m and v equal Adam's on the same gradients (decay is not a gradient term)."""
    params = {"W": np.full((2, 2), 3.0)}
    grads = {"W": np.array([[0.1, -0.2], [0.3, 0.0]])}
    state = optim.adam_init(params)
    _, s_adam = optim.adam_step(params, grads, state, 0.1)
    _, s_adamw = optim.adamw_step(params, grads, state, 0.1, weight_decay=0.3)
    np.testing.assert_array_equal(s_adam["m"]["W"], s_adamw["m"]["W"])
    np.testing.assert_array_equal(s_adam["v"]["W"], s_adamw["v"]["W"])


def test_sgd_momentum_two_steps_by_hand():
    """v1 = 0.5, theta1 = 1 - 0.1 * 0.5 = 0.95; v2 = 0.9 * 0.5 + 0.5 = 0.95, theta2 = 0.95 - 0.095."""
    params, state = _scalar_params(1.0), optim.sgd_init(_scalar_params(1.0))
    params, state = optim.sgd_step(params, _scalar_params(0.5), state, 0.1, momentum=0.9)
    np.testing.assert_allclose(params["w"], [0.95], rtol=1e-12)
    params, state = optim.sgd_step(params, _scalar_params(0.5), state, 0.1, momentum=0.9)
    np.testing.assert_allclose(params["w"], [0.855], rtol=1e-12)
    assert state["step"] == 2


def test_sgd_nesterov_first_step_by_hand():
    """Nesterov: theta1 = 1 - 0.1 * (0.5 + 0.9 * 0.5) = 0.905."""
    params = _scalar_params(1.0)
    new, _ = optim.sgd_step(params, _scalar_params(0.5), optim.sgd_init(params), 0.1, nesterov=True)
    np.testing.assert_allclose(new["w"], [0.905], rtol=1e-12)


@pytest.mark.parametrize("make", [optim.sgd, optim.adam, optim.adamw])
def test_steps_are_pure_and_keep_dtype(make):
    """Updates return new arrays; inputs and state are untouched; float32 stays float32."""
    opt = make()
    params = {"W": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}
    grads = {"W": np.full((2, 2), 0.5, np.float32), "b": np.full(2, -0.5, np.float32)}
    state = opt.init(params)
    snapshot = {k: v.copy() for k, v in params.items()}
    new, new_state = opt.step(params, grads, state, 1e-2)
    for k in params:
        np.testing.assert_array_equal(params[k], snapshot[k])
        assert new[k].dtype == np.float32 and not np.shares_memory(new[k], params[k])
    assert state["step"] == 0 and new_state["step"] == 1


def test_eq3_inverse_sqrt_schedule_by_hand():
    """Vaswani Eq. (3): peak at step = warmup is (D * warmup)^-0.5 = 1/sqrt(2048000) for 512/4000."""
    peak = 1.0 / math.sqrt(512 * 4000)
    assert math.isclose(optim.inverse_sqrt_schedule(4000, 512, 4000), peak, rel_tol=1e-12)
    assert abs(peak - 7.0e-4) < 2e-5  # the paper's "7.0e-4"
    # linear warmup: step 1000 is a quarter of the peak; decay ~ step^-0.5: step 16000 is half
    assert math.isclose(optim.inverse_sqrt_schedule(1000, 512, 4000), peak / 4, rel_tol=1e-12)
    assert math.isclose(optim.inverse_sqrt_schedule(16000, 512, 4000), peak / 2, rel_tol=1e-12)
    assert math.isclose(optim.inverse_sqrt_schedule(4000, 512, 4000, scale=2.0), 2 * peak, rel_tol=1e-12)


@given(st.integers(1, 50_000), st.integers(1, 5000))
def test_eq3_schedule_is_maximal_at_warmup(step, warmup):
    """Eq. (3) is continuous and maximal at step = warmup; step 0 is guarded (equals step 1)."""
    lr = optim.inverse_sqrt_schedule(step, 64, warmup)
    assert 0 < lr <= optim.inverse_sqrt_schedule(warmup, 64, warmup) * (1 + 1e-12)
    assert optim.inverse_sqrt_schedule(0, 64, warmup) == optim.inverse_sqrt_schedule(1, 64, warmup)


def test_linear_decay_by_hand():
    """peak 1, warmup 2, total 10: steps 1, 2, 6, 10, 20 give 0.5, 1, 1 - 4/8, 0, 0."""
    values = [optim.linear_decay(s, 1.0, 10, warmup=2) for s in (1, 2, 6, 10, 20)]
    np.testing.assert_allclose(values, [0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-15)


def test_clip_alg1_by_hand():
    """||(3, 4)|| = 5 > 1: scaled to (0.6, 0.8) (up to the 1e-6 guard); norm returned unclipped."""
    clipped, norm = optim.clip_by_global_norm({"a": np.array([3.0]), "b": np.array([4.0])}, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose([clipped["a"][0], clipped["b"][0]], [0.6, 0.8], rtol=1e-6)


@given(hynp.arrays(np.float64, (7,), elements=st.floats(-1e3, 1e3)), st.floats(1e-3, 1e3))
def test_clip_preserves_direction_and_bounds_norm(g, max_norm):
    """Pascanu Alg. 1: the result is c * g with 0 < c <= 1, and its global norm is <= max_norm."""
    grads = {"x": g[:3], "y": g[3:].reshape(2, 2)}
    clipped, norm = optim.clip_by_global_norm(grads, max_norm)
    assert optim.global_norm(clipped) <= max_norm * (1 + 1e-12) or norm <= max_norm
    if norm <= max_norm:
        assert clipped is grads
    else:
        c = optim.global_norm(clipped) / norm
        assert 0 < c <= 1
        for name in grads:
            np.testing.assert_allclose(clipped[name], c * grads[name], rtol=1e-9, atol=1e-300)


def test_bad_input_raises_clear_errors():
    params = {"W": np.zeros((2, 2))}
    with pytest.raises(ValueError, match="lack parameters"):
        optim.adam_step(params, {}, optim.adam_init(params), 0.1)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        optim.sgd_step(params, {"W": np.zeros(3)}, optim.sgd_init(params), 0.1)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_by_global_norm({"W": np.ones(2)}, 0.0)
    with pytest.raises(ValueError, match="nan"):
        optim.clip_by_global_norm({"W": np.array([np.nan])}, 1.0)
    with pytest.raises(ValueError, match="betas"):
        optim.adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="warmup"):
        optim.inverse_sqrt_schedule(1, 64, 0)
