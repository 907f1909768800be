"""Ternary weights: TWN's threshold ternarizer, as TernaryBERT trains it (clip, STE, granularity).

Papers
------
* Fengfu Li, Bin Liu, Xiaoxing Wang, Bo Zhang, Junchi Yan (2016). "Ternary Weight Networks".
  arXiv:1605.04711. W ~ alpha T with T in {-1, 0, +1}, fitted by minimizing the Euclidean distance;
  a threshold function with the approximation Delta = 0.7 E|W|.
* Wei Zhang, Lu Hou, Yichun Yin, Lifeng Shang, Xiao Chen, Xin Jiang, Qun Liu (2020). "TernaryBERT:
  Distillation-aware Ultra-low Bit BERT". EMNLP 2020, arXiv:2009.12812. TWN on every Linear weight
  (one alpha per matrix) and on the word embedding (one alpha per token row), latent weights clipped
  to [-2.5, 2.5] before ternarizing, trained through a straight-through estimator (their code's
  ``TwnQuantizer`` in ``transformer/utils_quant.py``).

Notation map (paper -> code)
----------------------------
W (one group: a matrix, a column or a row), n entries -> ``W``
W^t (ternary codes), alpha (scale)                   -> ``T`` (int8 -1/0/+1), ``alpha`` (keepdims shape)
Delta (threshold), I_Delta = {i : |W_i| > Delta}     -> ``delta``, the boolean ``kept``
Our W is (D_in, D_out) with y = x @ W. Granularity "tensor" is TernaryBERT's layer-wise (one alpha, one
Delta per matrix); "row" one per row, e.g. per token of an embedding (V, D), TernaryBERT's row-wise;
"output" one per output unit (column), which the LUT kernel's per-unit alphas also hold.

Equations (labelled here (T1)-(T6); TWN states them in its Sec. 2, numbering not checked)
------------------------------------------------------------------------------------------
(T1) min over alpha > 0, T in {-1, 0, +1}^n of  J = ||W - alpha T||^2
(T2) T_i = +1 if W_i > Delta, -1 if W_i < -Delta, else 0     (strict: |W_i| = Delta gives 0)
(T3) for that T:  alpha*(Delta) = sum_{i in I_Delta} |W_i| / |I_Delta|   (the mean of the kept |W|),
     J(alpha*) = ||W||^2 - (sum_{i in I_Delta} |W_i|)^2 / |I_Delta|
(T4) Delta* = argmax over Delta of (sum_{i in I_Delta} |W_i|)^2 / |I_Delta|; no closed form, but only
     the n cut points of the sorted |W| differ, so ``optimal_threshold`` scans them (exact TWN)
(T5) Delta ~ 0.7 E|W| = 0.7 sum_i |W_i| / n                    (TWN's approximation of (T4))
(T6) TernaryBERT: W <- clip(W, -c, c) first (c = 2.5), and the STE
     dW = dW_eff 1(-c < W < c)      (strict: at |W| = c the gradient is 0, as in their code)

Ternary as a 2-bit binary code (our derivation, exact): alpha T = (alpha/2) b_1 + (alpha/2) b_2 with
b_1 = +1 where T >= 0 else -1 and b_2 = +1 where T > 0 else -1. So a ternary matrix runs on the
BiQGEMM LUT kernel (``kernels/lut_gemm.py``) as q = 2 with two equal alphas, and its file costs 2 bits
per weight (codes T + 1 in {0, 1, 2}) plus one float32 alpha per group.

Deviations and choices
----------------------
* TernaryBERT trains with distillation losses (teacher = the full-precision model). tinyzip has no
  distillation yet, so its rows fine-tune on the task loss through the STE alone.
* All-zero group: I_Delta is empty and TernaryBERT's alpha is 0/0 = NaN; here alpha = 0 and T = 0.
* Activations stay float (TernaryBERT also quantizes them to 8 bits; see ``uniform.py`` for that).
"""
from dataclasses import dataclass

import numpy as np

from tinyzip.compress.base import Method, PackedTensor
# the same (D_in, D_out) granularities and weight checks as the binary case
from tinyzip.compress.binarization import GRANULARITIES, check_weight, granularity_axis
from tinyzip.packing import pack_uint, unpack_uint

DELTA_FACTOR = 0.7          # (T5)
CLIP = 2.5                  # (T6), TernaryBERT's clip_val


def _check_clip(clip):
    if clip is not None and not (isinstance(clip, (int, float)) and np.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0 or None, got {clip!r}")


def clip_weights(W: np.ndarray, clip: float | None = CLIP) -> np.ndarray:
    """(T6): TernaryBERT clips the latent weights to [-clip, clip] before ternarizing (None: no clip)."""
    check_weight(W)
    _check_clip(clip)
    return W if clip is None else np.clip(W, -clip, clip)


def twn_threshold(W: np.ndarray, granularity: str = "tensor") -> np.ndarray:
    """(T5): Delta = 0.7 mean|W| per group, keepdims shape."""
    check_weight(W)
    # Eq. (T5)
    return DELTA_FACTOR * np.mean(np.abs(W), axis=granularity_axis(granularity), keepdims=True)


def ternary_codes(W: np.ndarray, delta) -> np.ndarray:
    """(T2): T = +1 where W > Delta, -1 where W < -Delta, else 0 (int8); ``delta`` broadcasts."""
    check_weight(W)
    # Eq. (T2)
    return ((W > delta).astype(np.int8) - (W < -delta).astype(np.int8))


def optimal_scale(W: np.ndarray, T: np.ndarray, granularity: str = "tensor") -> np.ndarray:
    """(T3): alpha* = mean |W| over the kept entries (T != 0) of each group; 0 for a group with none."""
    check_weight(W)
    axis = granularity_axis(granularity)
    kept = T != 0
    count = np.sum(kept, axis=axis, keepdims=True)
    # Eq. (T3)
    total = np.sum(np.abs(W) * kept, axis=axis, keepdims=True, dtype=np.float64)
    return (total / np.maximum(count, 1)).astype(W.dtype)


def ternarize(W: np.ndarray, granularity: str = "tensor", clip: float | None = CLIP,
              delta=None) -> tuple[np.ndarray, np.ndarray]:
    """(T6) clip, (T5) threshold (or the given ``delta``), (T2) codes, (T3) scale -> (T, alpha)."""
    Wc = clip_weights(W, clip)
    if delta is None:
        delta = twn_threshold(Wc, granularity)
    T = ternary_codes(Wc, delta)
    return T, optimal_scale(Wc, T, granularity)


def optimal_threshold(W: np.ndarray, granularity: str = "tensor") -> np.ndarray:
    """(T4), exactly: per group, the Delta among the cut points of the sorted |W| that maximizes
    (sum of the kept |W|)^2 / (number kept). Returned as the largest |W| left out (0 if all are
    kept), so (T2)'s strict > keeps the maximizing set. A cut inside a run of equal |W| = a never
    wins: keeping j more of them scores (S + j a)^2 / (k + j), whose derivative in j has the sign of
    a (2k + j) - S, so it falls then rises and its maximum is at an end of the run."""
    check_weight(W)
    axis = granularity_axis(granularity)
    groups = np.abs(W).reshape(1, -1) if axis is None else np.moveaxis(np.abs(W), axis, -1).reshape(-1, W.shape[axis])
    desc = -np.sort(-groups.astype(np.float64), axis=1)             # |W| descending, per group
    k = np.arange(1, desc.shape[1] + 1)
    # Eq. (T4): keep the k largest
    score = np.cumsum(desc, axis=1) ** 2 / k
    next_abs = np.concatenate([desc[:, 1:], np.zeros((desc.shape[0], 1))], axis=1)
    delta = next_abs[np.arange(desc.shape[0]), np.argmax(score, axis=1)]
    shape = [1, 1] if axis is None else [1 if d == axis else W.shape[d] for d in range(2)]
    return delta.reshape(shape).astype(W.dtype)


def ste_backward(dW_eff: np.ndarray, W: np.ndarray, clip: float | None = CLIP) -> np.ndarray:
    """(T6): dW = dW_eff where -clip < W < clip, else 0 (everywhere with ``clip=None``)."""
    if clip is None:
        return dW_eff
    # Eq. (T6)
    return dW_eff * ((W > -clip) & (W < clip)).astype(dW_eff.dtype)


def as_binary_codes(T: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha T as the 2-bit binary code (alpha/2)(b_1 + b_2) of the module docstring:
    codes (2, *T.shape) int8 in {-1, +1} and alphas (2, *alpha.shape), both halves alpha/2."""
    b_1 = np.where(T >= 0, 1, -1).astype(np.int8)
    b_2 = np.where(T > 0, 1, -1).astype(np.int8)
    return np.stack([b_1, b_2]), np.stack([alpha / 2, alpha / 2])


# ---- weight transform and the model-level method ---------------------------------------------

@dataclass(frozen=True)
class TernaryTransform:
    """Latent float W -> alpha T (TWN after TernaryBERT's clip); straight-through backward (T6)."""

    granularity: str = "tensor"
    clip: float | None = CLIP

    def forward(self, W):
        T, alpha = ternarize(W, self.granularity, self.clip)
        return alpha * T.astype(W.dtype), W

    def backward(self, dW_eff, W):
        return ste_backward(dW_eff, W, self.clip)


def ternary_method(granularities: dict, clip: float | None = CLIP) -> Method:
    """``{param name: granularity}`` -> the method (TernaryBERT: "tensor" for Linear weights, "row"
    for the word embedding). Latent weights stay float and unclipped; the clip is in the forward."""
    _check_clip(clip)
    for g in granularities.values():
        granularity_axis(g)
    return Method("ternary", {n: TernaryTransform(g, clip) for n, g in granularities.items()})


# ---- export ------------------------------------------------------------------------------------

def pack_ternary(W: np.ndarray, granularity: str = "tensor", clip: float | None = CLIP) -> PackedTensor:
    """2 bits per weight + float32 scales.

    Layout: ``arrays = {"codes": uint8 pack_uint(T + 1, 2) over W row-major, "alpha": float32
    (1,) | (D_out,) | (D_in,)}``, ``meta = {"granularity"}``.
    """
    T, alpha = ternarize(W, granularity, clip)
    codes = pack_uint((T + 1).astype(np.uint8).reshape(-1), 2)
    return PackedTensor("ternary", tuple(W.shape), {"codes": codes, "alpha": alpha.astype(np.float32).reshape(-1)},
                        {"granularity": granularity})


def unpack_codes(packed: PackedTensor) -> tuple[np.ndarray, np.ndarray]:
    """(T int8 of the stored shape, alpha float32 in keepdims shape) of a ``pack_ternary`` tensor."""
    if packed.method != "ternary":
        raise ValueError(f"unpack_ternary needs method 'ternary', got {packed.method!r}")
    N, M = packed.shape
    granularity = packed.meta.get("granularity")
    keep = {"tensor": (1, 1), "output": (1, M), "row": (N, 1)}.get(granularity)
    if keep is None:
        raise ValueError(f"ternary tensor has granularity {granularity!r}, expected one of {GRANULARITIES}")
    alpha = np.asarray(packed.arrays["alpha"], dtype=np.float32)
    if alpha.size != keep[0] * keep[1] or not np.all(np.isfinite(alpha)):
        raise ValueError(f"{alpha.size} alphas (finite) do not fit granularity {granularity!r} of shape {packed.shape}")
    codes = unpack_uint(packed.arrays["codes"], 2, N * M)
    if codes.max() > 2:
        raise ValueError("ternary codes hold the value 3, which is no trit (corrupt file?)")
    return (codes.astype(np.int8) - 1).reshape(N, M), alpha.reshape(keep)


def lut_codes(packed: PackedTensor):
    """A ``pack_ternary`` matrix (K, N) as the LUT kernel's 2-bit code: codes (2, K, N) in {-1, +1} and
    alphas (2, N), one per output unit (``as_binary_codes``); None for granularity "row", whose one
    alpha per input row is no per-unit scale."""
    T, alpha = unpack_codes(packed)
    if packed.meta["granularity"] == "row":
        return None
    return as_binary_codes(T, np.broadcast_to(alpha, (1, T.shape[1])).reshape(-1))


def unpack_ternary(packed: PackedTensor) -> np.ndarray:
    """Inverse of ``pack_ternary``: alpha * T, float32 of the stored shape."""
    T, alpha = unpack_codes(packed)
    return alpha * T.astype(np.float32)
