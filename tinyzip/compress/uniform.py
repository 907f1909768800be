"""Uniform (linear) quantization: affine and symmetric grids, fake-quant training, integer inference.

Papers
------
* Benoit Jacob, Skirmantas Kligys, Bo Chen, Menglong Zhu, Matthew Tang, Andrew Howard, Hartwig Adam,
  Dmitry Kalenichenko (2018). "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference". CVPR 2018, arXiv:1712.05877. The affine scheme, nudged zero
  point, integer-only matmul with a fixed-point requantization multiplier.
* Ofir Zafrir, Guy Boudoukh, Peter Izsak, Moshe Wasserblat (2019). "Q8BERT: Quantized 8Bit BERT".
  EMC^2 workshop at NeurIPS 2019, arXiv:1910.06188. Symmetric grid [-127, 127], EMA of max|x|
  (decay 0.9999 in the official nlp-architect code), a straight-through estimator that passes
  every gradient.
* Gabriele Prato, Ella Charlaix, Mehdi Rezagholizadeh (2020). "Fully Quantized Transformer for
  Machine Translation". Findings of EMNLP 2020, arXiv:1910.10485 (FQT). Min/max quantizer, EMA of
  activation ranges with momentum 0.9, STE with zero gradient for clamped values, buckets,
  unsigned grids for ReLU and softmax outputs, every matmul input quantized.

Notation map (paper -> code)
----------------------------
r (real value), q (integer code)       -> ``x``, ``q``;  S (scale) -> ``scale``;  Z -> ``zero_point``
b bits, [qmin, qmax]                    -> ``bits``, ``qrange(bits, symmetric, unsigned)``
x_min, x_max (FQT), max|x| (Q8BERT)     -> ``x_min``, ``x_max``
M = S1 S2 / S3 = 2^-n M0 (Jacob Eq. 5-6) -> ``quantize_multiplier(M) -> (M0_q, n)``, M0_q = M0 * 2^31
Weights ``W: (D_in, D_out)``, ``y = x @ W + b``. Jacob writes r3 = r1 r2: r1 is our x, r2 our W.

Grids (``qrange``):  affine [-2^(b-1), 2^(b-1)-1] with Z in it (Jacob's uint8 [0, 255] shifted by
-128: r = S (q - Z) is unchanged when q and Z shift together);  symmetric [-(2^(b-1)-1), 2^(b-1)-1],
Z = 0 (Q8BERT, -128 unused);  unsigned [0, 2^b-1], Z = 0, x_min fixed at 0 (FQT ReLU / softmax).

Equations
---------
Jacob Eq. (1):   x = S (q - Z)
Jacob Sec. 2.1, 3.1: zero exactly representable: [lo, hi] = [min(x_min, 0), max(x_max, 0)],
                 S = (hi - lo) / (qmax - qmin),  Z = clamp(round(qmin - lo / S), qmin, qmax) (the
                 nudge, Sec. 3.1): grid [S (qmin - Z), S (qmax - Z)] holds 0 (TF widens the range
                 to hold 0 where it tracks it, then ``Nudge`` shifts it with S fixed)
Q8BERT Eq. (1):  symmetric: S = max|x| / (2^(b-1) - 1) (the paper's scale is our 1/S)
FQT Eq. (1)-(2): Q(x) = round((clamp(x, x_min, x_max) - x_min) / s),  s = (x_max - x_min) / (2^b - 1)
quantize:        q = clamp(round(x / S + Z), qmin, qmax);   dequantize: x_hat = S (q - Z)
EMA (FQT):       x_max <- m x_max + (1 - m) max(x), m = 0.9, same for x_min ("momentum 0.9": our reading)
EMA (Q8BERT):    t <- d t + (1 - d) max|x|, d = 0.9999, t initialised to the first max|x|
STE clipped:     dx = dx_hat * [qmin <= round(x / S + Z) <= qmax]: zero where the clamp acts, outside
                 [S (qmin - Z - 1/2), S (qmax - Z + 1/2)] (PyTorch's ``fake_quantize_*_cachemask``).
                 TF (Jacob) and FQT zero it outside [S (qmin - Z), S (qmax - Z)]: on the half-step
                 bands between we pass it, so a tensor's own min/max never loses it to S's rounding;
                 "q8bert": dx = dx_hat
Jacob Eq. (4):   acc = sum_k (qx_k - Zx)(qW_k - ZW) + q_bias     (int32, bias scale S1 S2, Z 0)
Jacob Eq. (7):   = K Zx ZW - Zx sum_k qW_k - ZW sum_k qx_k + sum_k qx_k qW_k
Static activations (Jacob Sec. 2.1): x quantized with one frozen (S_x, Z_x) per tensor, then
                 y = S_x S_W[n] acc[m, n] (float output; an unsigned 8-bit grid [0, 255] enters the
                 int8 GEMM as q - 128 with zero point Z_x - 128: q - Z unchanged)
Jacob Eq. (5)-(6), output stage: q3 = clamp(Z3 + RDivPOT(SRDHM(acc, M0_q), n), qmin, qmax)
  SRDHM(a, b) = round-half-up(a b / 2^31), saturating SRDHM(-2^31, -2^31) = 2^31 - 1 (gemmlowp)
  RDivPOT(x, n) = x / 2^n rounded to nearest, ties away from zero (gemmlowp RoundingDivideByPOT)

Choices and deviations
----------------------
* One rounding rule for floats: half to even (``np.rint``; PyTorch and Q8BERT too), for the codes
  and for the zero point. TFLite rounds half away from zero; the two differ only on exact ties
  x/S + Z = k + 1/2 (e.g. x = 2.5 S gives 2 here, 3 in TFLite). The integer output stage follows
  gemmlowp exactly.
* The nudge (``_nudge``): Z is the nearest integer to qmin - lo/S, except that on a tie, or when
  the storage rounding of S moves lo/S by a hair, Z steps once more so that x_min and x_max still
  round to qmin and qmax: min/max weights span the whole grid and re-quantizing W_hat is a no-op.
  S is rounded toward zero into its storage precision (float32 for weights) before Z is chosen;
  the price is an error bound of S/2 (1 + (qmax - qmin) 2^-24) at the two ends of the range.
  An all-zero range gets S = 1 (any step reproduces 0 exactly): no NaN.
* Granularity: "tensor"; "channel" = one (S, Z) per output column of W, i.e. per output unit;
  "bucket" = FQT buckets of ``bucket_size`` consecutive rows inside each column (the last bucket
  may be shorter; bucket_size >= D_in is "channel").
* Model-level placement (weights, activations incl. Q, K, V and P, PTQ, QAT, stored activation
  ranges) is in ``fqt.py``. FQT's bucket shape is not pinned down by the paper text we could
  reach; ours (rows inside a column) makes buckets a refinement of per-channel.
* M >= 1 or n > 31 in ``quantize_multiplier`` raise (the paper observes 0 < M < 1). Jacob's equation
  numbers are checked against the paper (arXiv v1), the arithmetic against gemmlowp's; the integer
  references below are what ``tinyzip.kernels.int8`` must equal bit for bit.
"""
from dataclasses import dataclass

import numpy as np

from tinyzip.compress.base import PackedTensor
from tinyzip.packing import pack_uint, unpack_uint

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
NUDGE_ULPS = 4  # most ulps _nudge takes off S to fit both range ends on the grid


def _check_bits(bits) -> int:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    return int(bits)


def _check_float(x, name="x") -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def qrange(bits, symmetric=False, unsigned=False) -> tuple[int, int]:
    """Integer grid [qmin, qmax] for ``bits`` (see the module docstring)."""
    bits = _check_bits(bits)
    if unsigned:
        return 0, 2 ** bits - 1
    return (-(2 ** (bits - 1)) + int(symmetric)), 2 ** (bits - 1) - 1


def quant_params(x_min, x_max, bits, symmetric=False, unsigned=False, scale_dtype=np.float64):
    """Jacob Sec. 2.1 / Q8BERT / FQT: ``(scale float64, zero_point int64)`` for ranges of any shape.

    ``scale_dtype`` is the precision S is stored in (float32 for exported weights): S is rounded
    toward zero into it, then Z is nudged for that exact S (see ``_nudge``)."""
    x_min, x_max = _check_float(np.asarray(x_min, np.float64), "x_min"), _check_float(
        np.asarray(x_max, np.float64), "x_max")
    if np.any(x_min > x_max):
        raise ValueError("x_min > x_max somewhere in the given ranges")
    qmin, qmax = qrange(bits, symmetric, unsigned)
    lo, hi = np.minimum(x_min, 0.0), np.maximum(x_max, 0.0)  # zero exactly representable
    if symmetric:
        scale = np.maximum(-lo, hi) / qmax  # Q8BERT Eq. (1)
    elif unsigned:
        scale = hi / qmax  # FQT: x_min = 0 for ReLU / softmax outputs
    else:
        scale = (hi - lo) / (qmax - qmin)  # FQT Eq. (2)
    scale = _round_toward_zero(np.where(scale > 0, scale, 1.0), scale_dtype)  # all-zero range: S = 1
    if symmetric or unsigned:
        return scale, np.zeros(scale.shape, np.int64)
    return _nudge(lo, hi, scale, qmin, qmax, scale_dtype)


def _round_toward_zero(scale, dtype):
    """S in ``dtype`` (returned as float64), never above the float64 S.

    Rounding down keeps the grid's (qmax - qmin) steps from outrunning [x_min, x_max], so both ends
    can land on qmin and qmax. A float32 step below the smallest normal is raised to it (such tiny
    weights quantize to 0)."""
    s = scale.astype(dtype)
    s = np.where(s > scale, np.nextafter(s, dtype(0)), s)
    if np.dtype(dtype) == np.float32:
        s = np.maximum(s, np.finfo(np.float32).tiny)
    return s.astype(np.float64)


def _nudge(lo, hi, scale, qmin, qmax, dtype):
    """Jacob Sec. 3.1 (TF's nudge): Z = round(qmin - lo / S), an integer, so that 0 = S (Z - Z)
    exactly and the grid is the nudged range [S (qmin - Z), S (qmax - Z)]. Returns (S, Z).

    Rounding is half to even, like ``quantize``. On a tie (qmin - lo / S = k + 1/2) one of the two
    nearest Z leaves x_max (or x_min) half a step off its grid end; Z then moves one step the other
    way, so x_min -> qmin and x_max -> qmax. Where the float rounding of lo / S and hi / S leaves no
    such Z (a tie off by an ulp), S steps down one ulp of ``dtype`` and Z is chosen again, up to
    ``NUDGE_ULPS`` times (only ranges below float32's smallest normal step run out: they map to 0)."""
    for _ in range(NUDGE_ULPS + 1):
        z = np.clip(np.rint(qmin - lo / scale), qmin, qmax)
        z = z - (np.rint(lo / scale + z) > qmin)  # x_min would round above qmin: grid up a step
        z = z + (np.rint(hi / scale + z) < qmax)  # x_max would round below qmax: grid down a step
        z = np.clip(z, qmin, qmax)
        ends = (np.rint(lo / scale + z) <= qmin) & (np.rint(hi / scale + z) >= qmax)
        if np.all(ends):
            break
        scale = np.where(ends, scale, np.nextafter(scale.astype(dtype), dtype(0)).astype(np.float64))
    return scale, z.astype(np.int64)


def quantize(x, scale, zero_point, bits, symmetric=False, unsigned=False) -> np.ndarray:
    """q = clamp(round(x / S + Z), qmin, qmax), half to even; int8 (uint8 for unsigned grids)."""
    x = _check_float(x)
    qmin, qmax = qrange(bits, symmetric, unsigned)
    q = np.clip(np.rint(x.astype(np.float64) / scale + zero_point), qmin, qmax)
    return q.astype(np.uint8 if unsigned else np.int8)


def dequantize(q, scale, zero_point, dtype=np.float32) -> np.ndarray:
    """Jacob Eq. (1): x_hat = S (q - Z)."""
    return (scale * (np.asarray(q, np.int64) - zero_point)).astype(dtype)


# ----------------------------------------------------------------------------- range estimation
def minmax_range(W, granularity="tensor", bucket_size=None):
    """(x_min, x_max) per tensor (scalars), per channel ((D_out,)), or per bucket ((n_buckets, D_out))."""
    W = _check_float(W, "W")
    if granularity == "tensor":
        return np.float64(W.min()), np.float64(W.max())
    starts = _bucket_starts(W, granularity, bucket_size)
    return (np.minimum.reduceat(W, starts, axis=0).astype(np.float64),
            np.maximum.reduceat(W, starts, axis=0).astype(np.float64))


def _bucket_starts(W, granularity, bucket_size):
    if W.ndim != 2:
        raise ValueError(f"granularity {granularity!r} needs a 2-D W (D_in, D_out), got shape {W.shape}")
    if granularity == "channel":
        return np.array([0])
    if granularity != "bucket":
        raise ValueError(f"granularity must be 'tensor', 'channel' or 'bucket', got {granularity!r}")
    if not isinstance(bucket_size, (int, np.integer)) or bucket_size < 1:
        raise ValueError(f"granularity 'bucket' needs an int bucket_size >= 1, got {bucket_size!r}")
    return np.arange(0, W.shape[0], bucket_size)


def _expand(p, W_shape, granularity, bucket_size):
    """Broadcast per-group parameters to W's shape: (n_buckets, D_out) -> (D_in, D_out)."""
    if granularity != "bucket":
        return p
    sizes = np.diff(np.append(np.arange(0, W_shape[0], bucket_size), W_shape[0]))
    return np.repeat(p, sizes, axis=0)


def ema_minmax(prev, x, momentum=0.9):
    """FQT: x_min/x_max <- m * old + (1 - m) * batch value; ``prev=None`` starts at the batch range."""
    x = _check_float(x)
    lo, hi = np.float64(x.min()), np.float64(x.max())
    if prev is None:
        return lo, hi
    return momentum * prev[0] + (1 - momentum) * lo, momentum * prev[1] + (1 - momentum) * hi


def ema_absmax(prev, x, decay=0.9999):
    """Q8BERT: t <- d * t + (1 - d) * max|x|; ``prev=None`` starts at the first max|x|."""
    m = np.float64(np.abs(_check_float(x)).max())
    return m if prev is None else decay * prev + (1 - decay) * m


# ----------------------------------------------------------------------------- fake quantization
def fake_quant_forward(x, scale, zero_point, bits, symmetric=False, unsigned=False, ste="clipped"):
    """x_hat = S (clamp(round(x / S + Z), qmin, qmax) - Z); cache = the STE mask (or None)."""
    if ste not in ("clipped", "q8bert"):
        raise ValueError(f"ste must be 'clipped' (Jacob, FQT) or 'q8bert' (pass everything), got {ste!r}")
    x = _check_float(x)
    qmin, qmax = qrange(bits, symmetric, unsigned)
    v = np.rint(x.astype(np.float64) / scale + zero_point)  # the code before clamping
    x_hat = dequantize(np.clip(v, qmin, qmax), scale, zero_point, dtype=x.dtype)
    return x_hat, (None if ste == "q8bert" else (v >= qmin) & (v <= qmax))


def fake_quant_backward(dx_hat, cache):
    """STE: pass dx_hat where the clamp did not act, zero where it did (clipped); all of it (q8bert)."""
    return dx_hat if cache is None else dx_hat * cache


def weight_qparams(W, bits, granularity="channel", symmetric=True, bucket_size=None):
    """Min/max (S, Z) per group of W, S in float32, the precision ``pack_uniform`` stores (and Z
    nudged for that S; a step below float32's smallest normal is raised to it: such tiny weights
    quantize to 0)."""
    x_min, x_max = minmax_range(W, granularity, bucket_size)
    return quant_params(x_min, x_max, bits, symmetric, scale_dtype=np.float32)


@dataclass(frozen=True)
class UniformWeightQuantizer:
    """Transform for a weight: fake-quantize with the current min/max of W (FQT, Q8BERT weights)."""

    bits: int
    granularity: str = "channel"
    symmetric: bool = True
    bucket_size: int | None = None
    ste: str = "clipped"

    def forward(self, W):
        scale, zero_point = weight_qparams(W, self.bits, self.granularity, self.symmetric,
                                           self.bucket_size)
        scale = _expand(scale, W.shape, self.granularity, self.bucket_size)
        zero_point = _expand(zero_point, W.shape, self.granularity, self.bucket_size)
        return fake_quant_forward(W, scale, zero_point, self.bits, self.symmetric, ste=self.ste)

    def backward(self, dW_eff, cache):
        return fake_quant_backward(dW_eff, cache)


# ----------------------------------------------------------------------------- integer inference
def quantize_multiplier(M):
    """Jacob Eq. (6): M = 2^-n M0, M0 in [1/2, 1) -> (M0_q = round(M0 2^31) int32, n int32)."""
    M = _check_float(np.asarray(M, np.float64), "M")
    if np.any((M <= 0) | (M >= 1)):
        raise ValueError(f"requantization multiplier M must lie in (0, 1), got range [{M.min()}, {M.max()}]")
    mant, exp = np.frexp(M)  # M = mant 2^exp, mant in [1/2, 1)
    M0_q, n = np.floor(mant * 2.0 ** 31 + 0.5).astype(np.int64), -exp.astype(np.int64)
    carry = M0_q == 2 ** 31  # rounding reached 1.0: renormalise
    M0_q, n = np.where(carry, 2 ** 30, M0_q), np.where(carry, n - 1, n)
    if np.any(n < 0) or np.any(n > 31):
        raise ValueError(f"M needs a right shift in 0..31, got shifts {n.min()}..{n.max()}")
    return M0_q.astype(np.int32), n.astype(np.int32)


def srdhm_reference(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul: round-half-up(a b / 2^31), int32 in and out."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b  # |ab| <= 2^62: exact in int64
    num = ab + np.where(ab >= 0, 2 ** 30, 1 - 2 ** 30)  # gemmlowp's nudge
    quot = np.sign(num) * (np.abs(num) >> 31)  # C division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, quot).astype(np.int32)


def rounding_divide_by_pot_reference(x, n):
    """gemmlowp RoundingDivideByPOT: x / 2^n to nearest, ties away from zero, n in 0..31."""
    x, n = np.asarray(x, np.int64), np.asarray(n, np.int64)
    mask = (np.int64(1) << n) - 1
    threshold = (mask >> 1) + (x < 0)
    return ((x >> n) + ((x & mask) > threshold)).astype(np.int32)


def requantize_reference(acc, M0_q, n, z_out, bits=8):
    """Jacob output stage: clamp(Z3 + RDivPOT(SRDHM(acc, M0_q), n), qmin, qmax) on the affine grid."""
    qmin, qmax = qrange(bits)
    scaled = rounding_divide_by_pot_reference(srdhm_reference(acc, M0_q), n).astype(np.int64)
    return np.clip(scaled + z_out, qmin, qmax).astype(np.int8)


def int8_matmul_reference(qx, qW, zx=0, zW=0, bias=None):
    """Jacob Eq. (4): sum_k (qx - Zx)(qW - ZW) + bias, exact: qx (M, K), qW (K, N) int8, zx scalar or (M,),
    zW scalar or (N,), bias int32 (N,) -> int32 (M, N); ValueError if a result leaves int32."""
    for name, a in (("qx", qx), ("qW", qW)):
        if a.dtype != np.int8 or a.ndim != 2:
            raise TypeError(f"{name} must be a 2-D int8 array, got {a.dtype} {a.shape}")
    if qx.shape[1] != qW.shape[0]:
        raise ValueError(f"inner sizes differ: qx {qx.shape} @ qW {qW.shape}")
    zx = np.asarray(zx, np.int64).reshape(-1, 1) if np.ndim(zx) else np.int64(zx)
    acc = (qx.astype(np.int64) - zx) @ (qW.astype(np.int64) - np.asarray(zW, np.int64))  # (M, N)
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise ValueError(f"int32 accumulator overflows for K={qx.shape[1]}")
    return acc.astype(np.int32)


def quantize_rows_reference(x):
    """Dynamic per-row (per-token) symmetric int8 of x (M, K): (qx in [-127, 127], scale (M,))."""
    x = _check_float(x)
    scale, _ = quant_params(x.min(axis=1), x.max(axis=1), 8, symmetric=True)
    return quantize(x, scale[:, None], 0, 8, symmetric=True), scale


def int8_linear_reference(x, W_q, w_scale, w_zero=None, bias=None):
    """y = (S_x S_W) acc + b in float64, returned as float32; x (M, K) float, W_q (K, N) int8."""
    qx, sx = quantize_rows_reference(x)
    acc = int8_matmul_reference(qx, W_q, 0, 0 if w_zero is None else w_zero)  # (M, N)
    y = (sx[:, None] * np.asarray(w_scale, np.float64)) * acc
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y.astype(np.float32)


def quantize_static_reference(x, scale, zero_point, bits, unsigned=False):
    """Static per-tensor activation codes for the int8 GEMM: q = clamp(round(x / S_x + Z_x)) on the
    point's grid, as int8; an unsigned 8-bit grid is shifted by -128 (and Z_x with it).
    Returns ``(qx int8, zx int)`` with qx - zx = q - Z_x."""
    q = quantize(x, scale, zero_point, bits, unsigned=unsigned).astype(np.int16)
    shift = 128 if qrange(bits, unsigned=unsigned)[1] > 127 else 0
    return (q - shift).astype(np.int8), int(zero_point) - shift


def int8_linear_static_reference(x, W_q, w_scale, w_zero, x_scale, x_zero, bits, unsigned=False):
    """y = (S_x S_W[n]) sum_k (qx - Z_x)(qW - Z_W[n]) in float64, returned as float32 (no bias):
    Jacob Eq. (4) with a static activation (S_x, Z_x). x (M, K) float, W_q (K, N) int8."""
    qx, zx = quantize_static_reference(x, x_scale, x_zero, bits, unsigned)
    acc = int8_matmul_reference(qx, W_q, zx, 0 if w_zero is None else w_zero)  # (M, N)
    return ((np.float64(x_scale) * np.asarray(w_scale, np.float64)) * acc).astype(np.float32)


# ----------------------------------------------------------------------------- export
def pack_uniform(W, bits, granularity="channel", symmetric=True, bucket_size=None) -> PackedTensor:
    """Real bytes: codes as int8 (bits = 8) or ``pack_uint``-packed (q - qmin) for bits < 8,
    float32 ``scales`` (group shape: (), (1, D_out) or (n_buckets, D_out)) and, for affine grids,
    int8 ``zero_points`` of the same shape. Codes are W's own (D_in, D_out) row-major order."""
    W = _check_float(W, "W")
    scale, zero_point = weight_qparams(W, bits, granularity, symmetric, bucket_size)
    q = quantize(W, _expand(scale, W.shape, granularity, bucket_size),
                 _expand(zero_point, W.shape, granularity, bucket_size), bits, symmetric)
    qmin = qrange(bits, symmetric)[0]
    values = q if bits == 8 else pack_uint(q.astype(np.int64) - qmin, bits)
    arrays = {"values": values, "scales": scale.astype(np.float32)}
    if not symmetric:
        arrays["zero_points"] = zero_point.astype(np.int8)
    meta = {"bits": int(bits), "granularity": granularity, "symmetric": bool(symmetric),
            "bucket_size": bucket_size, "qmin": qmin}
    return PackedTensor("uniform", tuple(W.shape), arrays, meta)


def unpack_uniform(packed: PackedTensor) -> np.ndarray:
    """float32 W_hat = S (q - Z), equal to ``UniformWeightQuantizer(...).forward(W)[0]``."""
    if packed.method != "uniform":
        raise ValueError(f"unpack_uniform got a {packed.method!r} tensor")
    meta, arrays, shape = packed.meta, packed.arrays, tuple(packed.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if meta["bits"] == 8:
        q = arrays["values"].astype(np.int64).reshape(shape)
    else:
        q = unpack_uint(arrays["values"], meta["bits"], count).astype(np.int64).reshape(shape) + meta["qmin"]
    scale = arrays["scales"].astype(np.float64)
    zero_point = arrays.get("zero_points", np.zeros(scale.shape, np.int8)).astype(np.int64)
    g, bs = meta["granularity"], meta["bucket_size"]
    return dequantize(q, _expand(scale, shape, g, bs), _expand(zero_point, shape, g, bs))
