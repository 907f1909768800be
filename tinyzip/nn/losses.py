"""Cross-entropy with label smoothing and an ignored (PAD) index, fused and step by step.

Label smoothing as in Szegedy et al. 2016 ("Rethinking the Inception Architecture", CVPR,
arXiv:1512.00567, Sec. 7) and Vaswani et al. 2017 (eps_ls = 0.1): the one-hot target of class y
is replaced by

    q(k) = (1 - eps) * 1[k = y] + eps / V            (uniform over **all** V classes)

and the per-token loss is the cross-entropy H(q, p) with p = softmax(z):

    l = -(1 - eps) * log p_y - (eps / V) * sum_k log p_k = (1 - eps) * NLL + eps * mean_k(-log p_k)

(fairseq instead spreads eps over the V - 1 other classes; we keep Szegedy's form, so eps = 0 is
plain NLL and the minimiser is p = q with minimum H(q)). Tokens whose target equals
``ignore_index`` (PAD = 0) contribute nothing; the loss is the mean over the N counted tokens.
The gradient of the fused form is dz = (p - q) / N on counted tokens and 0 on ignored ones.
"""
from typing import NamedTuple

import numpy as np

from tinyzip.nn.layers import _check_float

PAD = 0


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (N, V) softmax(z), possibly the caller's logits buffer
    targets: np.ndarray  # (N,)
    valid: np.ndarray  # (N,) bool, target != ignore_index
    label_smoothing: float
    shape: tuple  # the logits' shape
    tokens: int  # number of counted tokens
    nll: float  # mean -log p_y over counted tokens (no smoothing)
    overwrite: bool  # probs is the caller's logits buffer, free to overwrite again


def _check(z, targets, label_smoothing):
    _check_float("logits", z)
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets must be integers, got dtype {targets.dtype}")
    if targets.shape != z.shape[:-1]:
        raise ValueError(f"targets shape {targets.shape} must equal logits shape without the "
                         f"class axis {z.shape[:-1]}")
    if targets.size and (targets.min() < 0 or targets.max() >= z.shape[-1]):
        raise ValueError(f"targets must lie in [0, {z.shape[-1]}), got range "
                         f"[{targets.min()}, {targets.max()}]")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return targets.reshape(-1)


def cross_entropy_forward(logits, targets, label_smoothing=0.0, ignore_index=PAD,
                          overwrite_logits=False):
    """Fused log-softmax + label-smoothed NLL, mean over non-ignored tokens.

    logits: (..., V) float, targets: (...) int. Returns (loss: float, cache). With
    ``overwrite_logits=True`` the logits buffer is reused for the probabilities and then for the
    gradient (no (N, V) temporaries; backward may then run only once).
    """
    y = _check(logits, targets, label_smoothing)
    V = logits.shape[-1]
    z = logits.reshape(-1, V) if overwrite_logits else logits.reshape(-1, V).copy()  # (N, V)
    rows = np.arange(z.shape[0])
    z -= z.max(-1, keepdims=True)
    mean_z = z.mean(-1, dtype=np.float64)  # (N,)
    z_y = z[rows, y].astype(np.float64)  # (N,)
    np.exp(z, out=z)
    s = z.sum(-1, keepdims=True)  # (N, 1)
    z /= s
    lse = np.log(s[:, 0].astype(np.float64))  # (N,)
    valid = y != ignore_index
    tokens = int(valid.sum())
    n = max(tokens, 1)
    nll = (lse - z_y)[valid].sum() / n  # -log p_y
    smooth = (lse - mean_z)[valid].sum() / n  # mean_k -log p_k
    loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    return float(loss), CrossEntropyCache(z, y, valid, label_smoothing, logits.shape, tokens,
                                          float(nll), overwrite_logits)


def cross_entropy_backward(dloss, cache):
    """dlogits = dloss * (p - q) / N on counted tokens, 0 on ignored ones."""
    probs, y, valid, eps, shape, tokens, _, overwrite = cache
    V = probs.shape[-1]
    dz = probs if overwrite else probs.copy()  # (N, V)
    dz[np.arange(dz.shape[0]), y] -= 1.0 - eps
    dz -= eps / V
    scale = np.where(valid, dloss / max(tokens, 1), 0.0).astype(dz.dtype)[:, None]  # (N, 1)
    dz *= scale
    return dz.reshape(shape)


def smoothed_nll_forward(logp, targets, label_smoothing=0.0, ignore_index=PAD):
    """Label-smoothed NLL from log-probabilities (the step-by-step twin of the fused loss).

    logp: (..., V) log-probabilities, targets: (...) int -> (loss: float, cache).
    """
    y = _check(logp, targets, label_smoothing)
    V = logp.shape[-1]
    lp = logp.reshape(-1, V)  # (N, V)
    valid = y != ignore_index
    n = max(int(valid.sum()), 1)
    q = np.full(lp.shape, label_smoothing / V)  # (N, V) smoothed targets
    q[np.arange(lp.shape[0]), y] += 1.0 - label_smoothing
    q[~valid] = 0.0
    loss = -(q * lp).sum() / n
    return float(loss), (q, n, logp.shape, logp.dtype)


def smoothed_nll_backward(dloss, cache):
    """dlogp = -dloss * q / N."""
    q, n, shape, dtype = cache
    return (-dloss / n * q).astype(dtype).reshape(shape)
