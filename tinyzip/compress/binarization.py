"""1-bit weights: BinaryNet sign + clipped straight-through estimator, XNOR-Net scale, Word2Bits levels.

Papers
------
* Matthieu Courbariaux, Itay Hubara, Daniel Soudry, Ran El-Yaniv, Yoshua Bengio (2016).
  "Binarized Neural Networks: Training Deep Neural Networks with Weights and Activations
  Constrained to +1 or -1". arXiv:1602.02830. Forward with sign(W); keep real-valued latent
  weights, clip them to [-1, 1] after every update; backward through sign with the
  straight-through estimator that cancels the gradient where |r| > 1.
* Mohammad Rastegari, Vicente Ordonez, Joseph Redmon, Ali Farhadi (2016). "XNOR-Net: ImageNet
  Classification Using Binary Convolutional Neural Networks". ECCV 2016, arXiv:1603.05279.
  Binary-Weight-Networks: W ~ alpha B with B = sign(W), alpha = mean |W| per output filter.
* Maximilian Lam (2018). "Word2Bits - Quantized Word Vectors". arXiv:1803.05651. Fixed levels
  with a plain straight-through estimator on the latent vectors.

Notation map (paper -> code)
----------------------------
r (real-valued latent weight), q = Sign(r) -> ``W``, ``B`` (int8, +1/-1)
g_q, g_r (gradients w.r.t. q and r)         -> ``dW_eff``, ``dW``
alpha (scale), n (entries sharing it)       -> ``alpha`` (keepdims shape), ``n``
Our W is (D_in, D_out) with y = x @ W: XNOR's per-filter scale (one per output unit) is one alpha
per COLUMN of W, granularity "output", shape (1, D_out). "row" gives one per row (N, 1), e.g. per
token of an embedding (V, D); "tensor" gives one, shape (1, 1).

Equations
---------
BinaryNet, deterministic binarization:  B = Sign(W) = +1 if W >= 0 else -1   (so Sign(0) = +1,
    also for -0.0; NumPy's np.sign(0) = 0 is not used)
BinaryNet, STE through Sign:            g_r = g_q 1(|r| <= 1)  (the derivative of
    Htanh(r) = clip(r, -1, 1); at |r| = 1 exactly the gradient passes)
XNOR-Net, J(B, alpha) = ||W - alpha B||^2 = alpha^2 n - 2 alpha W.B + W.W over one group:
    B* = Sign(W);  alpha* = W.B* / n = mean |W|;  J(B*, alpha*) = ||W||^2 - n alpha*^2
Word2Bits (its code's ``quantize``): 1 bit: Q(x) = +1/3 if x >= 0 else -1/3;
    2 bits: Q(x) = Sign(x) (1/4 if |x| <= 1/2 else 3/4), levels {-3/4, -1/4, 1/4, 3/4};
    backward: dW = dW_eff (identity; Word2Bits applies the gradient taken at Q(x) to x).

Backward of the scaled binarizer (our derivation, exact for the surrogate below)
-------------------------------------------------------------------------------
W_eff = alpha(W) B(W). B is replaced by Htanh for the gradient (BinaryNet STE) and alpha = mean|W|
is differentiated exactly (d alpha / d W_i = Sign(W_i) / n), giving
    dW_i = alpha 1(|W_i| <= 1) dW_eff_i + Sign(W_i) / n * sum_{j in group} dW_eff_j B_j,
the gradient of  alpha(W) Sign(W) + alpha_0 Htanh(W)  at alpha_0 = alpha(W) held constant. XNOR-Net
states a gradient with this 1/n term; many implementations drop it — we keep it.

Deviations and choices
----------------------
* Latent clipping to [-1, 1] (``after_step``) follows BinaryNet's H = 1; Word2Bits does not clip.
* BinaryNet also binarizes activations and offers stochastic binarization; tinyzip binarizes
  weights only, deterministically.
* The CS224n "transformers.zip" report combines Word2Bits and BinaryNet; its exact recipe was not
  available, so both pieces are offered separately.
"""
from dataclasses import dataclass

import numpy as np

from tinyzip.compress.base import Method, PackedTensor
from tinyzip.packing import pack_uint, unpack_uint

GRANULARITIES = ("tensor", "output", "row")
_AXES = {"tensor": None, "output": 0, "row": 1}


def check_weight(W):
    """A non-empty, finite, 2-D float ndarray, or a TypeError / ValueError saying what it is not."""
    if not isinstance(W, np.ndarray):
        raise TypeError(f"W must be a numpy array, got {type(W).__name__}")
    if not np.issubdtype(W.dtype, np.floating):
        raise TypeError(f"W must be a float array, got dtype {W.dtype}")
    if W.ndim != 2 or W.size == 0:
        raise ValueError(f"W must be a non-empty 2-D matrix, got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise ValueError("W has NaN or inf entries")


def granularity_axis(granularity):
    """The axis a granularity reduces over (None: the whole tensor); a ValueError for others."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return _AXES[granularity]


def sign(W: np.ndarray) -> np.ndarray:
    """BinaryNet's deterministic binarization: +1 where W >= 0 (0 and -0.0 included), else -1. int8."""
    return np.where(W >= 0, 1, -1).astype(np.int8)


def optimal_scale(W: np.ndarray, granularity: str = "output") -> np.ndarray:
    """XNOR-Net: alpha* = mean |W| over each group, keepdims shape (all-zero group -> 0)."""
    check_weight(W)
    axis = granularity_axis(granularity)
    # XNOR-Net: alpha* = W . Sign(W) / n = mean |W|
    return np.mean(np.abs(W), axis=axis, keepdims=True, dtype=np.float64).astype(W.dtype)


def binarize(W: np.ndarray, granularity: str | None = "output") -> np.ndarray:
    """W_eff = alpha* Sign(W); ``granularity=None`` gives BinaryNet's unscaled +1/-1."""
    check_weight(W)
    B = sign(W).astype(W.dtype)
    return B if granularity is None else optimal_scale(W, granularity) * B


def ste_clipped(dW_eff: np.ndarray, W: np.ndarray) -> np.ndarray:
    """BinaryNet STE: g_r = g_q 1(|r| <= 1)."""
    return dW_eff * (np.abs(W) <= 1).astype(dW_eff.dtype)


def binarize_forward(W: np.ndarray, granularity: str | None = "output") -> tuple[np.ndarray, tuple]:
    """Forward of the trained binarizer: (alpha Sign(W) or Sign(W), cache)."""
    return binarize(W, granularity), (W, granularity)


def binarize_backward(dW_eff: np.ndarray, cache: tuple) -> np.ndarray:
    """Clipped STE through Sign, times alpha, plus alpha's own gradient (module docstring)."""
    W, granularity = cache
    if granularity is None:
        return ste_clipped(dW_eff, W)
    axis = _AXES[granularity]
    B = sign(W).astype(dW_eff.dtype)
    n = W.size if axis is None else W.shape[axis]
    d_alpha = np.sum(dW_eff * B, axis=axis, keepdims=True)         # dL/dalpha per group
    return optimal_scale(W, granularity) * ste_clipped(dW_eff, W) + B * d_alpha / n


def word2bits_quantize(W: np.ndarray, bits: int = 1) -> np.ndarray:
    """Word2Bits levels: 1 bit {-1/3, +1/3}; 2 bits {-3/4, -1/4, +1/4, +3/4}; Sign(0) = +1."""
    if not isinstance(W, np.ndarray) or not np.issubdtype(W.dtype, np.floating):
        raise TypeError(f"W must be a float numpy array, got {getattr(W, 'dtype', type(W).__name__)}")
    if not np.all(np.isfinite(W)):
        raise ValueError("W has NaN or inf entries")
    S = sign(W).astype(W.dtype)
    if bits == 1:
        return S / 3
    if bits == 2:
        return S * np.where(np.abs(W) <= 0.5, 0.25, 0.75).astype(W.dtype)
    raise ValueError(f"Word2Bits levels are defined here for bits in (1, 2), got {bits!r}")


# ---- weight transforms and the model-level method ----------------------------------------

@dataclass(frozen=True)
class BinaryTransform:
    """Latent float W -> alpha Sign(W) (or Sign(W) when granularity is None); STE backward."""

    granularity: str | None = "output"

    def forward(self, W):
        return binarize_forward(W, self.granularity)

    def backward(self, dW_eff, cache):
        return binarize_backward(dW_eff, cache)


@dataclass(frozen=True)
class Word2BitsTransform:
    """Latent float W -> Word2Bits levels; backward is the identity (plain STE)."""

    bits: int = 1

    def forward(self, W):
        return word2bits_quantize(W, self.bits), None

    def backward(self, dW_eff, cache):
        return dW_eff


def clip_latent(params: dict, names) -> dict:
    """BinaryNet: after each update, latent weights are clipped to [-1, 1]."""
    out = dict(params)
    for name in names:
        out[name] = np.clip(params[name], -1.0, 1.0)
    return out


def binarization_method(names, granularity: str | None = "output", word2bits: int | None = None) -> Method:
    """BinaryNet/XNOR (clipped latents) or, with ``word2bits`` = 1 or 2, Word2Bits (no clipping)."""
    names = list(names)
    if word2bits is not None:
        word2bits_quantize(np.zeros(1), word2bits)                 # validates bits early
        return Method("binarization-word2bits", {n: Word2BitsTransform(word2bits) for n in names})
    if granularity is not None:
        granularity_axis(granularity)
    return Method("binarization", {n: BinaryTransform(granularity) for n in names},
                  after_step=lambda params: clip_latent(params, names))


# ---- export ---------------------------------------------------------------------------------

def pack_binary(W: np.ndarray, granularity: str = "output",
                alpha: float | np.ndarray | None = None) -> PackedTensor:
    """1 bit per weight + float32 scales.

    Layout: ``arrays = {"signs": uint8 pack_uint(W >= 0, 1) over W row-major,
    "alpha": float32 (1,) | (D_out,) | (N,)}``, ``meta = {"granularity"}``. ``alpha`` defaults to
    the XNOR optimum; pass 1.0 for BinaryNet's +1/-1 or 1/3 for Word2Bits' 1-bit levels.
    """
    check_weight(W)
    axis = granularity_axis(granularity)
    if alpha is None:
        alpha = optimal_scale(W, granularity)
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float32),
                            np.mean(W, axis=axis, keepdims=True).shape)
    if not np.all(np.isfinite(alpha)):
        raise ValueError("alpha has NaN or inf entries")
    signs = pack_uint((W >= 0).astype(np.uint8).reshape(-1), 1)
    return PackedTensor("binary", tuple(W.shape), {"signs": signs, "alpha": alpha.reshape(-1).copy()},
                        {"granularity": granularity})


def unpack_binary(packed: PackedTensor) -> np.ndarray:
    """Inverse of ``pack_binary``: alpha * (+1/-1), float32 of the stored shape."""
    if packed.method != "binary":
        raise ValueError(f"unpack_binary needs method 'binary', got {packed.method!r}")
    N, M = packed.shape
    granularity = packed.meta["granularity"]
    keep = {"tensor": (1, 1), "output": (1, M), "row": (N, 1)}[granularity]
    alpha = np.asarray(packed.arrays["alpha"], dtype=np.float32)
    if alpha.size != keep[0] * keep[1]:
        raise ValueError(f"{alpha.size} alphas do not fit granularity {granularity!r} "
                         f"of shape {packed.shape}")
    bits = unpack_uint(packed.arrays["signs"], 1, N * M).reshape(N, M)
    return alpha.reshape(keep) * (2.0 * bits.astype(np.float32) - 1.0)
