"""Multi-head scaled dot-product attention, forward and backward by hand.

Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser, Polosukhin (2017), "Attention Is All
You Need", NeurIPS, arXiv:1706.03762, Sec. 3.2; head mask from Michel, Levy, Neubig (2019), "Are
Sixteen Heads Really Better than One?", NeurIPS, arXiv:1905.10650, Sec. 2.

Notation (paper -> code): d_model -> D, h -> H, d_k = d_v -> Dh = D / H, W_i^Q (all heads side by
side) -> W_q (D, H Dh) with y = x @ W + b (the paper also writes x W, so no transpose), W^O -> W_o
(H Dh, D), xi_h -> head_mask[h]. Queries come from x_q (B, T, D), keys and values from x_kv (B, S, D).
A block whose heads were pruned (``compress.head_pruning``) keeps H < D / Dh heads, possibly none:
its out is then b_o alone, the residual path carries the sub-layer.

    Q = x_q @ W_q + b_q,  K = x_kv @ W_k + b_k,  V = x_kv @ W_v + b_v         split to (B, H, ., Dh)
    scores = Q K^T / sqrt(Dh)                                                  Eq. (1), (B, H, T, S)
    probs  = softmax(scores + mask)                                            Eq. (1)
    heads  = probs V                                                           (B, H, T, Dh)
    out    = Concat_h(xi_h * heads_h) @ W_o + b_o                              (H1) of head_pruning.py

``mask`` is 0 where a query may look and -1e30 where it may not: keys that are PAD
(``key_pad[b, s]`` True) and, with ``causal=True``, keys after the query (query i of T sees key j
of S iff j <= i + S - T, so a query block at the end of a longer cached key sequence works too).
exp(-1e30 - max) is exactly 0, so masked keys get probability 0 and no gradient, while a row with
every key masked stays finite. ``scores`` returned for distillation are **before** the mask.

The gradient w.r.t. the head mask is dL/dxi_h = sum_{b,t,d} dL/d(xi_h heads_h) * heads_h, the
head-importance signal of Michel et al. (``compress.head_pruning``'s (H2) averages its absolute value).

Hooks (``hooks={point: (fwd, bwd)}``, ``fwd(x) -> (x_hat, hcache)``, ``bwd(dx_hat, hcache) -> dx``;
activation quantizers, Prato et al. 2020 quantize every matmul input, Q K^T and P V included):

    "q"      on Q = x_q @ W_q + b_q (B, T, H Dh), before the 1/sqrt(Dh) scaling and Q K^T
    "k", "v" on K, V (B, S, H Dh), before Q K^T and P V
    "probs"  on the softmax output P, before dropout and P V

Incremental decoding: ``past_kv=(K, V)`` from earlier steps is prepended to this call's keys and
values (the hooks act on this call's new rows only: the past rows were hooked when they were new);
``static_kv=(K, V)`` replaces the key/value projections entirely (cross-attention over a fixed
encoder output; its maker applies the "k"/"v" hooks). Those two paths are for inference: backward
refuses them.
"""
import math
from typing import NamedTuple

import numpy as np

from tinyzip.nn.layers import _check_float, dropout_backward, dropout_forward, linear_backward, \
    linear_forward, softmax_backward, softmax_forward

NEG = -1e30
WEIGHTS = ("W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "W_o", "b_o")
HOOK_POINTS = ("q", "k", "v", "probs")


class AttentionCache(NamedTuple):
    lin: dict  # "W_q" / "W_k" / "W_v" / "W_o" -> the linear cache of that projection
    q: np.ndarray  # (B, H, T, Dh) already multiplied by 1/sqrt(Dh)
    k: np.ndarray  # (B, H, S, Dh)
    v: np.ndarray  # (B, H, S, Dh)
    scores: np.ndarray | None  # (B, H, T, S) before the mask, kept when asked for
    probs: np.ndarray  # (B, H, T, S) after the probs hook: what multiplies V
    softmax: tuple  # softmax cache
    hooked: dict  # point -> (bwd, hcache) of each hook that ran
    drop: np.ndarray | None  # dropout cache of the probabilities
    heads: np.ndarray  # (B, H, T, Dh) before the head mask
    head_mask: np.ndarray | None  # (H,)
    inference_only: bool  # past_kv or static_kv was used


def _plain_linear(name, x, W, b):
    return linear_forward(x, W, b)


def _plain_linear_backward(name, dy, cache):
    return linear_backward(dy, cache)


def attention_bias(key_pad, T, S, causal, dtype):
    """Additive mask (B or 1, 1, T or 1, S): 0 where allowed, -1e30 where masked."""
    bias = np.zeros((1, 1, 1, S), dtype=dtype)
    if key_pad is not None:
        bias = np.where(key_pad[:, None, None, :], NEG, 0.0).astype(dtype)  # (B, 1, 1, S)
    if causal:
        future = np.arange(S)[None, :] > np.arange(T)[:, None] + (S - T)  # (T, S)
        bias = bias + np.where(future, NEG, 0.0).astype(dtype)  # (B, 1, T, S)
    return bias


def _hook(hooks, point, x, hooked):
    """x through ``hooks[point]`` (its backward half recorded in ``hooked``); x itself without one."""
    if hooks is None or point not in hooks:
        return x
    fwd, bwd = hooks[point]
    x_hat, hcache = fwd(x)
    hooked[point] = (bwd, hcache)
    return x_hat


def _hook_bwd(hooked, point, dx_hat):
    if point not in hooked:
        return dx_hat
    bwd, hcache = hooked[point]
    return bwd(dx_hat, hcache)


def split_heads(x, Dh):
    """(B, T, H Dh) -> (B, H, T, Dh), a view."""
    B, T, width = x.shape
    return x.reshape(B, T, width // Dh, Dh).transpose(0, 2, 1, 3)  # (B, H, T, Dh)


def mha_forward(x_q, x_kv, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, *, n_heads, head_dim=None,
                key_pad=None, causal=False, head_mask=None, past_kv=None, static_kv=None, return_scores=False,
                linear=None, hooks=None, dropout_p=0.0, rng=None):
    """Multi-head attention.  x_q: (B, T, D), x_kv: (B, S, D) -> out (B, T, D), cache.

    ``n_heads`` heads of ``head_dim`` (default D / n_heads) each: W_q, W_k, W_v are (D, n_heads
    head_dim) and W_o is (n_heads head_dim, D); fewer than D / head_dim heads after pruning.
    ``key_pad``: (B, S_total) bool, True at PAD keys. ``head_mask``: (H,) float. ``linear``: an
    optional pair ``(fwd(name, x, W, b) -> (y, cache), bwd(name, dy, cache) -> (dx, dW, db))``
    used for the four projections (the model plugs in weight overrides and input hooks here).
    ``hooks``: optional ``{point: (fwd, bwd)}`` for points in ``HOOK_POINTS`` (module docstring).
    With ``rng`` given, dropout ``dropout_p`` is applied to the probabilities after the hook
    (``cache.probs`` is the value before dropout).
    """
    _check_float("x_q", x_q)
    if x_q.ndim != 3:
        raise ValueError(f"attention: x_q must be (B, T, D), got shape {x_q.shape}")
    D = x_q.shape[-1]
    if head_dim is None:
        if n_heads < 1 or D % n_heads:
            raise ValueError(f"attention: D={D} is not divisible by n_heads={n_heads}")
        head_dim = D // n_heads
    Dh, width = head_dim, n_heads * head_dim
    if W_q.shape != (D, width) or W_o.shape != (width, D):
        raise ValueError(f"attention: x_q {x_q.shape} must be (B, T, D) with W_q {W_q.shape} of shape "
                         f"(D, H Dh) = ({D}, {width}) and W_o {W_o.shape} of shape ({width}, {D})")
    if head_mask is not None:
        head_mask = np.asarray(head_mask)
        if head_mask.shape != (n_heads,):
            raise ValueError(f"head_mask must have shape ({n_heads},), got {head_mask.shape}")
    fwd, _ = linear or (_plain_linear, _plain_linear_backward)
    lin, hooked = {}, {}
    q, lin["W_q"] = fwd("W_q", x_q, W_q, b_q)  # (B, T, D)
    q = split_heads(_hook(hooks, "q", q, hooked), Dh)  # (B, H, T, Dh)
    if "q" in hooked:
        q = q * (1.0 / math.sqrt(Dh))  # the hook's output may be in its cache: no in-place
    else:
        q *= 1.0 / math.sqrt(Dh)
    if static_kv is not None:
        k, v = static_kv
    else:
        if x_kv.ndim != 3 or x_kv.shape[0] != x_q.shape[0] or x_kv.shape[-1] != D:
            raise ValueError(f"attention: x_kv {x_kv.shape} must be (B, S, D) with B, D of x_q "
                             f"{x_q.shape}")
        k, lin["W_k"] = fwd("W_k", x_kv, W_k, b_k)
        v, lin["W_v"] = fwd("W_v", x_kv, W_v, b_v)
        k, v = _hook(hooks, "k", k, hooked), _hook(hooks, "v", v, hooked)  # new rows only
        k, v = split_heads(k, Dh), split_heads(v, Dh)  # (B, H, S, Dh)
        if past_kv is not None:
            k = np.concatenate([past_kv[0], k], axis=2)  # (B, H, S_past + S, Dh)
            v = np.concatenate([past_kv[1], v], axis=2)
    B, H, T, S = q.shape[0], n_heads, q.shape[2], k.shape[2]
    if key_pad is not None and np.shape(key_pad) != (B, S):
        raise ValueError(f"key_pad must have shape {(B, S)}, got {np.shape(key_pad)}")
    scores = q @ k.transpose(0, 1, 3, 2)  # (B, H, T, S)
    kept_scores = scores.copy() if return_scores else None
    if key_pad is not None or causal:
        scores += attention_bias(key_pad, T, S, causal, scores.dtype)
    probs, sm_cache = softmax_forward(scores)  # Eq. (1)
    probs = _hook(hooks, "probs", probs, hooked)
    drop = None
    if rng is not None and dropout_p > 0:
        probs_used, drop = dropout_forward(probs, dropout_p, rng)
    else:
        probs_used = probs
    heads = probs_used @ v  # (B, H, T, Dh)
    masked = heads if head_mask is None else heads * head_mask.reshape(H, 1, 1).astype(heads.dtype)
    merged = masked.transpose(0, 2, 1, 3).reshape(B, T, width)  # (B, T, H Dh)
    out, lin["W_o"] = fwd("W_o", merged, W_o, b_o)
    cache = AttentionCache(lin, q, k, v, kept_scores, probs, sm_cache, hooked, drop, heads, head_mask,
                           past_kv is not None or static_kv is not None)
    return out, cache


def mha_backward(dout, cache, dprobs=None, dscores=None, linear=None):
    """Gradients (dx_q, dx_kv, dW_q, db_q, dW_k, db_k, dW_v, db_v, dW_o, db_o, dhead_mask).

    ``dprobs``/``dscores``: optional upstream gradients for the returned probabilities and
    scores (distillation losses on attention). ``dhead_mask`` is None when no head mask was given.
    """
    lin, q, k, v, _, probs, sm_cache, hooked, drop, heads, head_mask, inference_only = cache
    if inference_only:
        raise ValueError("attention backward is not available after past_kv/static_kv (inference)")
    _, bwd = linear or (_plain_linear, _plain_linear_backward)
    B, H, T, Dh = heads.shape
    dmerged, dW_o, db_o = bwd("W_o", dout, lin["W_o"])
    dmasked = dmerged.reshape(B, T, H, Dh).transpose(0, 2, 1, 3)  # (B, H, T, Dh)
    dhead_mask = None
    if head_mask is None:
        dheads = dmasked
    else:
        dhead_mask = np.einsum("bhtd,bhtd->h", dmasked, heads).astype(head_mask.dtype)  # (H,)
        dheads = dmasked * head_mask.reshape(H, 1, 1).astype(heads.dtype)
    probs_used = probs if drop is None else probs * drop
    dv = probs_used.transpose(0, 1, 3, 2) @ dheads  # (B, H, S, Dh)
    dP = dheads @ v.transpose(0, 1, 3, 2)  # (B, H, T, S)
    if drop is not None:
        dP = dropout_backward(dP, drop)
    if dprobs is not None:
        dP += dprobs
    dP = _hook_bwd(hooked, "probs", dP)
    ds = softmax_backward(dP, sm_cache)
    if dscores is not None:
        ds += dscores
    dq = ds @ k  # (B, H, T, Dh), gradient w.r.t. the scaled q
    dk = ds.transpose(0, 1, 3, 2) @ q  # (B, H, S, Dh)
    dq *= 1.0 / math.sqrt(Dh)

    def merge(x):
        return x.transpose(0, 2, 1, 3).reshape(B, x.shape[2], H * Dh)  # (B, ., H Dh)

    dx_q, dW_q, db_q = bwd("W_q", _hook_bwd(hooked, "q", merge(dq)), lin["W_q"])
    dx_kv, dW_k, db_k = bwd("W_k", _hook_bwd(hooked, "k", merge(dk)), lin["W_k"])
    dx_v, dW_v, db_v = bwd("W_v", _hook_bwd(hooked, "v", merge(dv)), lin["W_v"])
    dx_kv += dx_v
    return dx_q, dx_kv, dW_q, db_q, dW_k, db_k, dW_v, db_v, dW_o, db_o, dhead_mask
