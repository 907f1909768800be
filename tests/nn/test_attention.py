"""Tests of tinyzip.nn.attention: scaled dot-product multi-head attention (Vaswani et al. 2017,
arXiv:1706.03762, Eq. 1) with padding/causal masks, Michel et al. (2019, arXiv:1905.10650) head mask
xi and cached keys/values."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.nn.attention import mha_backward, mha_forward
from tinyzip.nn.gradcheck import check_backward


def weights(D, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) / math.sqrt(D) if len(s) == 2 else 0.1 * rng.standard_normal(s)
            for s in [(D, D), (D,)] * 4]


def inputs(B=2, T=3, S=4, D=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, D)), rng.standard_normal((B, S, D))


def reference(x_q, x_kv, W, H, key_pad=None, causal=False, head_mask=None):
    """Eq. (1) with one loop per batch row, head and query (independent of the vectorised code)."""
    W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o = W
    B, T, D = x_q.shape
    S, Dh = x_kv.shape[1], D // H
    out = np.zeros((B, T, D))
    for b in range(B):
        Q, K, V = x_q[b] @ W_q + b_q, x_kv[b] @ W_k + b_k, x_kv[b] @ W_v + b_v
        concat = np.zeros((T, D))
        for h in range(H):
            cols = slice(h * Dh, (h + 1) * Dh)
            for t in range(T):
                allowed = [s for s in range(S) if not (key_pad is not None and key_pad[b, s])
                           and not (causal and s > t + S - T)]
                logits = np.array([Q[t, cols] @ K[s, cols] / math.sqrt(Dh) for s in allowed])
                p = np.exp(logits - logits.max())
                p /= p.sum()
                xi = 1.0 if head_mask is None else head_mask[h]
                concat[t, cols] = xi * sum(pi * V[s, cols] for pi, s in zip(p, allowed))
        out[b] = concat @ W_o + b_o
    return out


KEY_PAD = np.array([[False, False, False, True], [False, True, False, True]])


@given(st.integers(0, 99), st.sampled_from([1, 2, 3]), st.booleans(), st.booleans())
def test_eq1_matches_loop_reference(seed, H, pad, causal):
    x_q, x_kv = inputs(seed=seed)
    W = weights(6, seed)
    key_pad = KEY_PAD if pad else None
    xi = np.array([0.5, -1.0, 2.0])[:H]
    out, cache = mha_forward(x_q, x_kv, *W, n_heads=H, key_pad=key_pad, causal=causal, head_mask=xi)
    np.testing.assert_allclose(out, reference(x_q, x_kv, W, H, key_pad, causal, xi), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(cache.probs.sum(-1), 1.0, rtol=1e-12)


def test_padded_keys_and_future_keys_get_exactly_zero_probability():
    x_q, x_kv = inputs(T=4)
    _, cache = mha_forward(x_q, x_kv, *weights(6), n_heads=2, key_pad=KEY_PAD, causal=True)
    assert np.all(cache.probs[0, :, :, 3] == 0) and np.all(cache.probs[1][..., [1, 3]] == 0)
    assert np.all(cache.probs[:, :, np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] == 0)


@pytest.mark.parametrize("pad,causal", [(False, False), (True, False), (True, True)])
def test_backward_matches_central_differences_incl_head_mask_and_state_grads(pad, causal):
    """All gradients, including dL/dxi and upstream gradients for the returned scores/probs."""
    x_q, x_kv = inputs(seed=3)
    key_pad = KEY_PAD if pad else None
    xi = np.array([0.7, 1.2])

    def forward(x_q, x_kv, *rest):
        out, cache = mha_forward(x_q, x_kv, *rest[:8], n_heads=2, key_pad=key_pad, causal=causal,
                                 head_mask=rest[8], return_scores=True)
        return (out, cache.scores, cache.probs), cache

    def backward(douts, cache):
        return mha_backward(douts[0], cache, dprobs=douts[2], dscores=douts[1])

    check_backward(forward, backward, [x_q, x_kv, *weights(6, 3), xi])


def smooth_hook(c):
    """An identity-like smooth hook x -> c x + 0.05 x^2 (its backward needs its own cache: x)."""
    return (lambda x: (c * x + 0.05 * x * x, x), lambda d, x: d * (c + 0.1 * x))


HOOKS = {"q": smooth_hook(2.0), "k": smooth_hook(0.5), "v": smooth_hook(1.5), "probs": smooth_hook(2.0)}


@pytest.mark.parametrize("points", [["probs"], ["q", "k", "v", "probs"]])
def test_hooks_on_q_k_v_probs_and_dropout_are_in_the_backward(points):
    """Hooks on Q, K, V (the operands of Q K^T and P V) and on P, with dropout on a fixed rng:
    every input and weight gradient matches central differences."""
    x_q, x_kv = inputs(seed=4)
    hooks = {n: HOOKS[n] for n in points}

    def forward(*args):
        return mha_forward(*args, n_heads=3, key_pad=KEY_PAD, hooks=hooks, dropout_p=0.3,
                           rng=np.random.default_rng(0))
    check_backward(forward, lambda d, c: mha_backward(d, c)[:-1], [x_q, x_kv, *weights(6, 4)])


@given(st.integers(0, 99), st.booleans())
def test_eq1_with_hooks_is_eq1_on_the_hooked_q_k_v_and_probs(seed, causal):
    """softmax(h_q(Q) h_k(K)^T / sqrt(Dh) + mask) -> h_p -> times h_v(V): the loop reference with
    each hook applied to its operand (Q before the 1/sqrt(Dh) factor)."""
    x_q, x_kv = inputs(seed=seed)
    W = weights(6, seed)
    h = {n: (lambda x, f=f: f(x)[0]) for n, (f, _) in HOOKS.items()}
    out, _ = mha_forward(x_q, x_kv, *W, n_heads=2, key_pad=KEY_PAD, causal=causal, hooks=HOOKS)
    W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o = W
    B, T, D = x_q.shape
    S, Dh = x_kv.shape[1], D // 2
    ref = np.zeros((B, T, D))
    for b in range(B):
        Q, K, V = h["q"](x_q[b] @ W_q + b_q), h["k"](x_kv[b] @ W_k + b_k), h["v"](x_kv[b] @ W_v + b_v)
        for hd in range(2):
            cols = slice(hd * Dh, (hd + 1) * Dh)
            for t in range(T):
                allowed = [s for s in range(S) if not KEY_PAD[b, s] and not (causal and s > t + S - T)]
                logits = np.array([Q[t, cols] @ K[s, cols] / math.sqrt(Dh) for s in allowed])
                p = h["probs"](np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
                ref[b, t, cols] = sum(pi * V[s, cols] for pi, s in zip(p, allowed))
        ref[b] = ref[b] @ W_o + b_o
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


def test_causal_outputs_before_t_ignore_tokens_from_t_on():
    x, _ = inputs(T=5, seed=5)
    W = weights(6, 5)
    out, _ = mha_forward(x, x, *W, n_heads=2, causal=True)
    x2 = x.copy()
    x2[:, 3:] += 10.0
    out2, _ = mha_forward(x2, x2, *W, n_heads=2, causal=True)
    np.testing.assert_array_equal(out[:, :3], out2[:, :3])
    assert not np.allclose(out[:, 3:], out2[:, 3:])


def test_cached_keys_values_give_the_full_causal_result_one_query_at_a_time():
    x, _ = inputs(T=5, seed=6)
    W = weights(6, 6)
    full, _ = mha_forward(x, x, *W, n_heads=3, causal=True)
    past = None
    for t in range(5):
        step, cache = mha_forward(x[:, t:t + 1], x[:, t:t + 1], *W, n_heads=3, causal=True,
                                  past_kv=past)
        past = (cache.k, cache.v)
        np.testing.assert_allclose(step[:, 0], full[:, t], rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="inference"):
        mha_backward(step, cache)


def test_cached_keys_values_with_hooks_give_the_full_result_when_the_hooks_are_elementwise():
    """past_kv: the k/v hooks act on each call's new rows only, the past ones were hooked already."""
    x, _ = inputs(T=5, seed=8)
    W = weights(6, 8)
    full, _ = mha_forward(x, x, *W, n_heads=3, causal=True, hooks=HOOKS)
    past = None
    for t in range(5):
        step, cache = mha_forward(x[:, t:t + 1], x[:, t:t + 1], *W, n_heads=3, causal=True,
                                  past_kv=past, hooks=HOOKS)
        past = (cache.k, cache.v)
        np.testing.assert_allclose(step[:, 0], full[:, t], rtol=1e-12, atol=1e-13)


def test_static_kv_equals_projecting_the_memory():
    x_q, x_kv = inputs(seed=7)
    W = weights(6, 7)
    ref, c = mha_forward(x_q, x_kv, *W, n_heads=2, key_pad=KEY_PAD)
    out, _ = mha_forward(x_q, None, *W, n_heads=2, key_pad=KEY_PAD, static_kv=(c.k, c.v))
    np.testing.assert_array_equal(out, ref)


def test_self_attention_without_positions_is_permutation_equivariant():
    x, _ = inputs(T=5, seed=8)
    W = weights(6, 8)
    perm = np.array([3, 0, 4, 1, 2])
    out, _ = mha_forward(x, x, *W, n_heads=2)
    out_p, _ = mha_forward(x[:, perm], x[:, perm], *W, n_heads=2)
    np.testing.assert_allclose(out_p, out[:, perm], rtol=1e-12, atol=1e-13)


def test_float32_stays_float32():
    x_q, x_kv = inputs()
    W = [w.astype(np.float32) for w in weights(6)]
    out, cache = mha_forward(x_q.astype(np.float32), x_kv.astype(np.float32), *W, n_heads=2,
                             key_pad=KEY_PAD, head_mask=np.ones(2, np.float32))
    grads = mha_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)


def test_bad_input_names_the_problem():
    x_q, x_kv = inputs()
    W = weights(6)
    with pytest.raises(ValueError, match="not divisible"):
        mha_forward(x_q, x_kv, *W, n_heads=4)
    with pytest.raises(ValueError, match="head_mask"):
        mha_forward(x_q, x_kv, *W, n_heads=2, head_mask=np.ones(3))
    with pytest.raises(ValueError, match="key_pad"):
        mha_forward(x_q, x_kv, *W, n_heads=2, key_pad=KEY_PAD[:, :2])
    with pytest.raises(ValueError, match="x_kv"):
        mha_forward(x_q, x_kv[:1], *W, n_heads=2)
    with pytest.raises(TypeError, match="x_q"):
        mha_forward(x_q.astype(int), x_kv, *W, n_heads=2)


def test_key_bias_gets_zero_gradient_because_softmax_ignores_a_shift_per_query():
    """q . (k_s + b_k) = q . k_s + q . b_k: the added term is the same for every key s."""
    x_q, x_kv = inputs(seed=9)
    out, cache = mha_forward(x_q, x_kv, *weights(6, 9), n_heads=2, key_pad=KEY_PAD)
    db_k = mha_backward(np.random.default_rng(0).standard_normal(out.shape), cache)[5]
    np.testing.assert_allclose(db_k, 0, atol=1e-13)
