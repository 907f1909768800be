"""The Transformer's elementwise and affine layers as pure forward/backward pairs.

Every op is ``name_forward(x, ...) -> (out, cache)`` and ``name_backward(dout, cache)``, which
returns the gradients in the order of the forward's array arguments (bare when there is one).
Nothing is kept between calls; the cache holds exactly what backward needs. Float32 and float64
both work; outputs keep the input dtype.

Equations (code notation; x: (..., D), W: (D_in, D_out), y = x @ W + b):

* linear:      y = x @ W + b;  dx = dy @ W.T,  dW = x.T @ dy,  db = sum_rows(dy)
* embedding:   out[n] = E[ids[n]];  dE[v] = sum_{n: ids[n] = v} dout[n]
* layer norm (Ba, Kiros, Hinton 2016, arXiv:1607.06450, Eq. 4, population variance):
  x_hat = (x - mu) / sqrt(var + eps),  out = gamma * x_hat + beta;
  dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) with g = dout * gamma
* ReLU:        out = max(0, x)
* GELU (Hendrycks & Gimpel 2016, arXiv:1606.08415): exact out = x * Phi(x) = x/2 (1 + erf(x/sqrt 2));
  tanh form out = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). google-research/bert's
  ``modeling.py`` (current master) uses the **tanh** form; its first release used the erf form,
  which HuggingFace keeps as ``"gelu"`` (their ``"gelu_new"`` is the tanh form).
* softmax:     y = exp(x - max) / sum exp(x - max);  dx = y * (dy - sum(dy * y))
* log-softmax: y = x - logsumexp(x);  dx = dy - softmax(x) * sum(dy)
* dropout (inverted): out = x * m / (1 - p), m ~ Bernoulli(1 - p) drawn from ``rng``
"""
import math

import numpy as np

_ERF = np.frompyfunc(math.erf, 1, 1)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _check_float(name, x):
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a float32 or float64 ndarray, got "
                        f"{type(x).__name__} of dtype {getattr(x, 'dtype', None)}")


def _rows(x):
    """(..., D) -> (N, D); unlike reshape(-1, D) it also works for D = 0 (a block pruned of all heads)."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def linear_forward(x, W, b):
    """y = x @ W + b.  x: (..., D_in), W: (D_in, D_out), b: (D_out,) -> y: (..., D_out)."""
    _check_float("x", x)
    if W.ndim != 2 or x.shape[-1] != W.shape[0] or b.shape != (W.shape[1],):
        raise ValueError(f"linear: x {x.shape}, W {W.shape}, b {b.shape} do not fit "
                         "(need x (..., D_in), W (D_in, D_out), b (D_out,))")
    y = (_rows(x) @ W).reshape(*x.shape[:-1], W.shape[1])  # (..., D_out)
    y += b
    return y, (x, W)


def linear_backward(dy, cache):
    """Gradients (dx, dW, db) of y = x @ W + b."""
    x, W = cache
    dy2 = _rows(dy)  # (N, D_out)
    dW = _rows(x).T @ dy2  # (D_in, D_out)
    db = dy2.sum(0)  # (D_out,)
    dx = (dy2 @ W.T).reshape(x.shape)  # (..., D_in)
    return dx, dW, db


def embedding_forward(ids, E):
    """out = E[ids].  ids: integer (...), E: (V, D) -> out: (..., D)."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"embedding ids must be integers, got dtype {ids.dtype}")
    _check_float("E", E)
    if E.ndim != 2:
        raise ValueError(f"embedding table must be (V, D), got shape {E.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= E.shape[0]):
        raise ValueError(f"embedding ids must lie in [0, {E.shape[0]}), got range "
                         f"[{ids.min()}, {ids.max()}]")
    return E[ids], (ids, E.shape)  # (..., D)


def embedding_backward(dout, cache):
    """dE: each row of dout added into the row of E it was read from."""
    ids, shape = cache
    dE = np.zeros(shape, dtype=dout.dtype)  # (V, D)
    np.add.at(dE, ids.reshape(-1), dout.reshape(-1, shape[1]))
    return dE


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """LN(x) = gamma * (x - mu) / sqrt(var + eps) + beta over the last axis (Ba et al. Eq. 4)."""
    _check_float("x", x)
    if gamma.shape != (x.shape[-1],) or beta.shape != (x.shape[-1],):
        raise ValueError(f"layer_norm: gamma {gamma.shape} / beta {beta.shape} must be "
                         f"({x.shape[-1]},) for x {x.shape}")
    x_hat = x - x.mean(-1, keepdims=True)  # (..., D)
    var = np.einsum("...d,...d->...", x_hat, x_hat)[..., None]  # (..., 1)
    var /= x.shape[-1]
    var += eps
    rstd = np.sqrt(var, out=var)
    np.reciprocal(rstd, out=rstd)
    x_hat *= rstd
    out = x_hat * gamma
    out += beta
    return out, (x_hat, gamma, rstd)


def layer_norm_backward(dout, cache):
    """Gradients (dx, dgamma, dbeta) of layer norm."""
    x_hat, gamma, rstd = cache
    D = x_hat.shape[-1]
    dout2, x_hat2 = dout.reshape(-1, D), x_hat.reshape(-1, D)  # (N, D)
    dgamma = np.einsum("nd,nd->d", dout2, x_hat2)  # (D,)
    dbeta = dout2.sum(0)  # (D,)
    g = dout * gamma  # (..., D)
    mean_g = g.mean(-1, keepdims=True)  # (..., 1)
    mean_gx = np.einsum("...d,...d->...", g, x_hat)[..., None]  # (..., 1)
    mean_gx /= D
    g -= mean_g
    g -= x_hat * mean_gx
    g *= rstd
    return g, dgamma, dbeta


def relu_forward(x):
    """out = max(0, x)."""
    _check_float("x", x)
    out = np.maximum(x, 0)
    return out, out


def relu_backward(dout, cache):
    """dx = dout where the output is positive, else 0."""
    return dout * (cache > 0)


def gelu_forward(x, approximate="none"):
    """GELU: x * Phi(x) with the exact erf (``"none"``) or the tanh approximation (``"tanh"``)."""
    _check_float("x", x)
    if approximate == "none":
        cdf = _ERF(x / math.sqrt(2.0)).astype(x.dtype)
        cdf += 1
        cdf *= 0.5  # Phi(x)
        return x * cdf, (x, cdf, None, approximate)
    if approximate == "tanh":
        t = np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))
        return 0.5 * x * (1 + t), (x, None, t, approximate)
    raise ValueError(f'gelu approximate must be "none" or "tanh", got {approximate!r}')


def gelu_backward(dout, cache):
    """dx = dout * d/dx GELU(x)."""
    x, cdf, t, approximate = cache
    if approximate == "none":
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # phi(x)
        return dout * (cdf + x * pdf)
    dinner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
    return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dinner)


def softmax_forward(x, axis=-1):
    """y = exp(x - max) / sum(exp(x - max)) along ``axis``."""
    _check_float("x", x)
    y = x - x.max(axis, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis, keepdims=True)
    return y, (y, axis)


def softmax_backward(dy, cache):
    """dx = y * (dy - sum(dy * y))."""
    y, axis = cache
    dx = dy * y
    dx -= y * dx.sum(axis, keepdims=True)
    return dx


def log_softmax_forward(x, axis=-1):
    """y = x - logsumexp(x) along ``axis``."""
    _check_float("x", x)
    shifted = x - x.max(axis, keepdims=True)
    y = shifted - np.log(np.exp(shifted).sum(axis, keepdims=True))
    return y, (y, axis)


def log_softmax_backward(dy, cache):
    """dx = dy - softmax(x) * sum(dy)."""
    y, axis = cache
    return dy - np.exp(y) * dy.sum(axis, keepdims=True)


def dropout_forward(x, p, rng):
    """Inverted dropout: keep each entry with probability 1 - p and scale it by 1 / (1 - p)."""
    _check_float("x", x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout needs rng: np.random.Generator, got {type(rng).__name__}")
    mask = rng.random(x.shape, dtype=x.dtype) >= p
    scaled = mask.astype(x.dtype)
    scaled *= 1.0 / (1.0 - p)
    return x * scaled, scaled


def dropout_backward(dout, cache):
    """dx = dout * m / (1 - p)."""
    return dout * cache
