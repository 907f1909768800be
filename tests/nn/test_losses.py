"""Tests of tinyzip.nn.losses: label-smoothed cross-entropy (Szegedy et al. 2016, arXiv:1512.00567,
Sec. 7; Vaswani et al. 2017) with q(k) = (1 - eps) 1[k = y] + eps / V and PAD targets ignored."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.nn.gradcheck import check_backward
from tinyzip.nn.layers import log_softmax_backward, log_softmax_forward
from tinyzip.nn.losses import cross_entropy_backward, cross_entropy_forward, \
    smoothed_nll_backward, smoothed_nll_forward


def batch(seed, N=6, V=5):
    rng = np.random.default_rng(seed)
    logits = 2 * rng.standard_normal((2, N // 2, V))
    targets = rng.integers(0, V, size=(2, N // 2))
    targets[0, -1] = 0  # at least one PAD
    targets[1, 0] = 3  # at least one counted token
    return logits, targets


@given(st.integers(0, 999), st.sampled_from([0.0, 0.1, 0.5]))
def test_fused_equals_log_softmax_then_smoothed_nll_in_value_and_gradient(seed, eps):
    logits, targets = batch(seed)
    loss, cache = cross_entropy_forward(logits, targets, eps)
    logp, lcache = log_softmax_forward(logits)
    loss2, ncache = smoothed_nll_forward(logp, targets, eps)
    assert np.isclose(loss, loss2, rtol=1e-12)
    d1 = cross_entropy_backward(1.0, cache)
    d2 = log_softmax_backward(smoothed_nll_backward(1.0, ncache), lcache)
    np.testing.assert_allclose(d1, d2, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fused_and_step_by_step_backward_match_central_differences(eps):
    logits, targets = batch(1)
    check_backward(lambda z: cross_entropy_forward(z, targets, eps), cross_entropy_backward, [logits])
    logp, _ = log_softmax_forward(logits)
    check_backward(lambda lp: smoothed_nll_forward(lp, targets, eps), smoothed_nll_backward, [logp])


def test_label_smoothing_formula_per_token():
    """l = (1 - eps) (-log p_y) + eps * mean_k(-log p_k), mean over non-PAD tokens only."""
    logits, targets = batch(2)
    eps = 0.2
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    mask = targets != 0
    per = -(1 - eps) * np.take_along_axis(logp, targets[..., None], -1)[..., 0] - eps * logp.mean(-1)
    loss, cache = cross_entropy_forward(logits, targets, eps)
    assert np.isclose(loss, per[mask].mean(), rtol=1e-12)
    assert cache.tokens == mask.sum()
    assert np.isclose(cache.nll, -np.take_along_axis(logp, targets[..., None], -1)[..., 0][mask].mean())
    assert np.all(cross_entropy_backward(1.0, cache)[~mask] == 0)  # PAD rows get no gradient


def test_minimum_is_at_p_equals_q_with_value_entropy_of_q():
    """Gibbs: H(q, p) >= H(q) with equality iff p = q; so logits = log q attain the minimum."""
    eps, V, y = 0.1, 6, 4
    q = np.full(V, eps / V)
    q[y] += 1 - eps
    loss, cache = cross_entropy_forward(np.log(q)[None], np.array([y]), eps)
    assert np.isclose(loss, -(q * np.log(q)).sum(), rtol=1e-12)
    np.testing.assert_allclose(cross_entropy_backward(1.0, cache), 0, atol=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(20):
        other = np.log(q) + 0.3 * rng.standard_normal(V)
        assert cross_entropy_forward(other[None], np.array([y]), eps)[0] > loss


def test_overwrite_logits_reuses_the_buffer_and_gives_the_same_gradient():
    logits, targets = batch(3)
    ref = cross_entropy_backward(1.0, cross_entropy_forward(logits, targets, 0.1)[1])
    buf = logits.astype(np.float32)
    loss, cache = cross_entropy_forward(buf, targets, 0.1, overwrite_logits=True)
    d = cross_entropy_backward(1.0, cache)
    assert np.shares_memory(d, buf) and d.dtype == np.float32
    np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-7)


def test_bad_input_names_the_problem():
    logits, targets = batch(4)
    with pytest.raises(ValueError, match="targets shape"):
        cross_entropy_forward(logits, targets[:, :1], 0.1)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        cross_entropy_forward(logits, targets + 5, 0.1)
    with pytest.raises(TypeError, match="integers"):
        cross_entropy_forward(logits, targets.astype(float), 0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy_forward(logits, targets, 1.0)
