"""int8 x int8 -> int32 GEMM/GEMV, Jacob's integer requantization, and a float-in/float-out int8 linear.

Computes (Jacob et al. 2018, arXiv:1712.05877, Eq. (4) and (7); references in
``tinyzip.compress.uniform``):

    int8_gemm:    acc[m, n] = sum_k (qx[m, k] - zx[m]) (W_t[n, k] - zw[n]) + bias[n]   == int8_matmul_reference
    requantize:   q3 = clamp(Z3 + RDivPOT(SRDHM(acc, M0_q[n]), shift[n]), -128, 127)  == requantize_reference
                  (rounding="single": TFLite's one rounding, == integer_only.requantize_single_reference)
    int8_linear:  y = (S_x[m] S_W[n]) acc[m, n] + b[n], with qx the per-row symmetric int8
                  quantization of x (dynamic, per token)                              == int8_linear_reference
    int8_linear_static: y = (S_x S_W[n]) sum_k (qx - Z_x)(W_t[n, k] - Z_W[n]), x quantized with one
                  static (S_x, Z_x) (weights+activations files)               == int8_linear_static_reference

Layout: ``W_t = W.T``, (N, K), C-contiguous (``prepare_weight``): a dot product's operands are contiguous
along k; ``prepare_int8_weights`` also keeps ``pack_weight(W_t)`` (AVX2) and ``pack_vnni(W_t)`` (VNNI).

Dtype contract: int8 x int8 products summed in an int32 accumulator that wraps (two's complement);
Eq. (7) expands the zero points, so the result is exact whenever the true sum fits int32. The
wrappers refuse inputs whose worst case K * max|qx - zx| * max|W - zw| + max|bias| exceeds
2^31 - 1: for plain int8 K <= 131071 (all -128 x -128 gives K * 2^14; 131072 * 2^14 = 2^31 overflows).

Optimisations:
* ``prange`` over blocks of 4 output columns n (rows of W_t): threads never share an output element.
* 2 x 4 register tile (2 rows of qx x 4 rows of W_t) over a contiguous k loop, 1 x 4 row and scalar
  column remainders (1 thread, K=4096: 2x4 and 4x2 33 GMAC/s, 4x4 25, 1x1 21); ``np.int32(acc +
  np.int32(a) * np.int32(b))`` keeps the arithmetic 32-bit (vpmovsxbd + vpmulld + vpaddd).
* x is quantized symmetrically per row: Eq. (7) needs no column sums of W; Z_W adds row sums of qx.
* Packed path (AVX2, ``W_packed``): ``int8_avx2.py``'s vpmaddwd microkernel (4 x 24 register tile,
  ~70 GMAC/s per thread against ~33 for the 2 x 4 tile). Without AVX2 ``W_packed`` is ignored.
* VNNI path (AVX512_VNNI, ``vnni=True``, dynamic x): ``int8_vnni.py``'s vpdpbusd, 64 MACs an instruction.
* A weight is checked once (``prepare_int8_weights``), x in the quantizer's max|x| pass (40-45 us less a call).
* Dispatch: one thread below ``SERIAL_WORK`` multiply-adds; from ``fallback_batch`` rows (``FALLBACK_BATCH``;
  ``PACKED_FALLBACK_BATCH`` with either packed layout) OpenBLAS sgemm on W_hat.
* No fastmath: the float epilogue is the reference's float64 expression, bit for bit.
"""
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from tinyzip.compress.uniform import (  # noqa: F401  (the references this file must equal)
    INT32_MAX, int8_linear_reference, int8_linear_static_reference, int8_matmul_reference, qrange,
    quantize_rows_reference, quantize_static_reference, requantize_reference,
)
from tinyzip.kernels import aligned_empty, all_finite, parallel_and_serial
from tinyzip.kernels.int8_avx2 import (HAS_AVX2, pack_weight, packed_linear_kernel, packed_linear_kernel_serial,  # noqa: F401 (pack_weight is public here)
                                       static_codes_kernel)
from tinyzip.kernels.int8_vnni import (HAS_VNNI, accumulator_start, pack_vnni, vnni_linear_kernel,
                                       vnni_linear_kernel_serial)

# Batch size from which int8_linear hands over to dequantize + BLAS sgemm: the 2 x 4 tile loses to
# OpenBLAS once W stops being the bottleneck (4096^2 vs x @ W: 2 threads 1.31x at 8, 0.88x at 32).
FALLBACK_BATCH = 32
# The same with ``W_packed`` (1 thread vs x @ W at 128 rows: 4096^2 1.5-1.7x, 1024^2 0.9-1.1x).
PACKED_FALLBACK_BATCH = 128
SERIAL_WORK = 2 ** 21  # below this many multiply-adds one thread ends before a sleeping second one wakes
ROUNDINGS = ("gemmlowp", "single")   # requantize's output stage: two roundings (Jacob, gemmlowp) or one (TFLite)


@njit(cache=True)
def _dot_block(a, wt, m_rows, acc, n0, nn):
    """acc[:, n0:n0+nn] = a @ wt[n0:n0+nn].T for all rows m < m_rows (nn = 4, or a tail of 1..3)."""
    K = a.shape[1]
    if nn == 4:
        w0, w1, w2, w3 = wt[n0], wt[n0 + 1], wt[n0 + 2], wt[n0 + 3]
        m = 0
        while m + 2 <= m_rows:
            a0, a1 = a[m], a[m + 1]
            c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = np.int32(0)
            for k in range(K):
                x0, x1 = np.int32(a0[k]), np.int32(a1[k])
                y0, y1, y2, y3 = np.int32(w0[k]), np.int32(w1[k]), np.int32(w2[k]), np.int32(w3[k])
                c00 = np.int32(c00 + x0 * y0); c01 = np.int32(c01 + x0 * y1)  # noqa: E702
                c02 = np.int32(c02 + x0 * y2); c03 = np.int32(c03 + x0 * y3)  # noqa: E702
                c10 = np.int32(c10 + x1 * y0); c11 = np.int32(c11 + x1 * y1)  # noqa: E702
                c12 = np.int32(c12 + x1 * y2); c13 = np.int32(c13 + x1 * y3)  # noqa: E702
            acc[m, n0], acc[m, n0 + 1], acc[m, n0 + 2], acc[m, n0 + 3] = c00, c01, c02, c03
            acc[m + 1, n0], acc[m + 1, n0 + 1], acc[m + 1, n0 + 2], acc[m + 1, n0 + 3] = c10, c11, c12, c13
            m += 2
        while m < m_rows:
            a0 = a[m]
            c00 = c01 = c02 = c03 = np.int32(0)
            for k in range(K):
                x0 = np.int32(a0[k])
                c00 = np.int32(c00 + x0 * np.int32(w0[k])); c01 = np.int32(c01 + x0 * np.int32(w1[k]))  # noqa: E702
                c02 = np.int32(c02 + x0 * np.int32(w2[k])); c03 = np.int32(c03 + x0 * np.int32(w3[k]))  # noqa: E702
            acc[m, n0], acc[m, n0 + 1], acc[m, n0 + 2], acc[m, n0 + 3] = c00, c01, c02, c03
            m += 1
    else:
        for n in range(n0, n0 + nn):
            for m in range(m_rows):
                c = np.int32(0)
                for k in range(K):
                    c = np.int32(c + np.int32(a[m, k]) * np.int32(wt[n, k]))
                acc[m, n] = c


@njit(parallel=True, cache=True)
def _int8_gemm_kernel(a, wt, za, zw, bias, rowsum, colsum, acc):
    """acc = raw - zw rowsum - za colsum + K za zw + bias (Eq. 7), in wrapping int32."""
    (M, K), N = a.shape, wt.shape[0]
    for nb in prange((N + 3) // 4):
        n0 = nb * 4
        nn = min(4, N - n0)
        _dot_block(a, wt, M, acc, n0, nn)
        for m in range(M):
            for n in range(n0, n0 + nn):
                acc[m, n] = np.int32(acc[m, n] - zw[n] * rowsum[m] - za[m] * colsum[n]
                                     + np.int32(K * za[m]) * zw[n] + bias[n])


@njit(cache=True)
def _rowsum_kernel(a, out):
    """out[i] = sum_k a[i, k] in int32 (row sums of qx, or of W_t = column sums of W)."""
    for i in range(a.shape[0]):
        s = np.int32(0)
        for k in range(a.shape[1]):
            s = np.int32(s + np.int32(a[i, k]))
        out[i] = s


@njit(parallel=True, cache=True)
def _requantize_kernel(acc, M0, shift, z_out, qmin, qmax, single, out):
    """gemmlowp's output stage per element: SRDHM, then RoundingDivideByPOT, + Z3, clamp; with
    ``single`` TFLite's one rounding (acc M0 + 2^(30 + shift)) >> (31 + shift) instead of the two."""
    M, N = acc.shape
    for m in prange(M):
        for n in range(N):
            ab = np.int64(acc[m, n]) * np.int64(M0[n])  # |ab| < 2^62; M0_q >= 0: SRDHM cannot saturate
            e = np.int64(shift[n])
            if single:
                r = (ab + (np.int64(1) << (30 + e))) >> (31 + e)
            else:
                num = ab + (np.int64(1 << 30) if ab >= 0 else np.int64(1 - (1 << 30)))
                h = num >> 31 if num >= 0 else -((-num) >> 31)  # C division: toward zero
                mask = (np.int64(1) << e) - 1
                r = (h >> e) + (1 if (h & mask) > (mask >> 1) + (1 if h < 0 else 0) else 0)
            out[m, n] = min(max(r + z_out, qmin), qmax)


@njit(cache=True)
def _quantize_rows_kernel(x, qx, scale):
    """Per-row symmetric int8: S = max|x| / 127 (1 if the row is zero), q = clamp(rint(x / S), +-127);
    False at once on NaN/inf. max|x| is an integer max over x's float32 bits without the sign (|x|'s
    order; NaN, inf >= 0x7F800000): it vectorises, a float max with an early exit did not (3x faster)."""
    bits, one = x.view(np.int32), np.empty(1, np.int32)                # x: C-contiguous float32 (M, K)
    for m in range(x.shape[0]):
        big = np.int32(0)
        for k in range(x.shape[1]):
            big = max(big, bits[m, k] & np.int32(0x7FFFFFFF))
        if big >= np.int32(0x7F800000):
            return False
        one[0] = big
        s = np.float64(one.view(np.float32)[0]) / 127.0 if big > 0 else 1.0
        scale[m] = s
        for k in range(x.shape[1]):
            qx[m, k] = np.int8(min(max(np.rint(np.float64(x[m, k]) / s), -127.0), 127.0))
    return True


def _linear_body(a, wt, sx, sw, zw, rowsum, bias, acc, y):
    """y = float32((sx[m] sw[n]) (raw - zw[n] rowsum[m]) + bias[n]); acc is int32 scratch."""
    M, N = a.shape[0], wt.shape[0]
    for nb in prange((N + 3) // 4):
        n0 = nb * 4
        nn = min(4, N - n0)
        _dot_block(a, wt, M, acc, n0, nn)
        for m in range(M):
            for n in range(n0, n0 + nn):
                c = np.int32(acc[m, n] - zw[n] * rowsum[m])
                y[m, n] = np.float32((sx[m] * sw[n]) * np.float64(c) + bias[n])


_linear_kernel, _linear_kernel_serial = parallel_and_serial(_linear_body)  # serial: small layers, no wake-up


@njit(parallel=True, cache=True)
def _dequantize_kernel(wt, sw, zw, out):
    """out[n, k] = float32(sw[n] (wt[n, k] - zw[n])): W_hat.T, (N, K), for the BLAS path."""
    N, K = wt.shape
    for n in prange(N):
        for k in range(K):
            out[n, k] = np.float32(sw[n] * np.float64(np.int32(wt[n, k]) - zw[n]))


def prepare_weight(W_q):
    """The stored layout: W_q (K, N) int8 -> W_t = W_q.T as a C-contiguous (N, K) int8 array."""
    _check_2d("W_q", W_q, np.int8)
    return np.ascontiguousarray(W_q.T)


def _check_2d(name, a, dtype):
    """A wrong type or dtype is a TypeError; a wrong number of axes, like every other kernel's
    shape error, a ValueError."""
    if not isinstance(a, np.ndarray) or a.dtype != dtype:
        raise TypeError(f"{name} must be a 2-D {np.dtype(dtype).name} ndarray, got "
                        f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray or prepare_weight)")


def _vector(name, v, n, dtype, default=0):
    """A length-n vector of ``dtype`` from None (default), a scalar or an (n,) array."""
    if v is None:
        return np.full(n, default, dtype)
    v = np.asarray(v)
    if v.ndim == 0:
        v = np.full(n, v)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(v.dtype, np.integer):
        raise TypeError(f"{name} must be integer, got {v.dtype}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(v, dtype)


def _guard_overflow(K, x_bound, w_bound, bias_bound=0):
    worst = int(K) * int(x_bound) * int(w_bound) + int(bias_bound)
    if worst > INT32_MAX:
        raise ValueError(f"K={K} can overflow the int32 accumulator: worst case {worst} > 2^31 - 1 "
                         f"(max K for int8 x int8 without zero points is 131071)")


def int8_gemm(qx, W_t, zx=None, zw=None, bias=None):
    """Jacob Eq. (4) in int32: qx (M, K) int8, W_t (N, K) int8 (= W.T), zx (M,) or scalar,
    zw (N,) or scalar, bias (N,) int32 -> acc (M, N) int32 == ``int8_matmul_reference(qx, W_t.T, ...)``."""
    _check_2d("qx", qx, np.int8)
    _check_2d("W_t", W_t, np.int8)
    (M, K), N = qx.shape, W_t.shape[0]
    if W_t.shape[1] != K:
        raise ValueError(f"qx {qx.shape} and W_t {W_t.shape} differ in K")
    za, zw, b = _vector("zx", zx, M, np.int32), _vector("zw", zw, N, np.int32), _vector("bias", bias, N, np.int32)
    _guard_overflow(K, 128 + np.abs(za.astype(np.int64)).max(), 128 + np.abs(zw.astype(np.int64)).max(),
                    np.abs(b.astype(np.int64)).max())
    rowsum, colsum = np.empty(M, np.int32), np.empty(N, np.int32)
    _rowsum_kernel(qx, rowsum)
    _rowsum_kernel(W_t, colsum)
    acc = np.empty((M, N), np.int32)
    _int8_gemm_kernel(qx, W_t, za, zw, b, rowsum, colsum, acc)
    return acc


def requantize(acc, M0_q, shift, z_out=0, rounding="gemmlowp"):
    """Jacob's integer output stage to int8: acc (M, N) int32, M0_q and shift per column (N,) or
    scalars (from ``quantize_multiplier``), z_out the output zero point == ``requantize_reference``;
    ``rounding="single"``: TFLite's single rounding == ``integer_only.requantize_single_reference``."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    _check_2d("acc", acc, np.int32)
    N = acc.shape[1]
    M0, sh = _vector("M0_q", M0_q, N, np.int32), _vector("shift", shift, N, np.int32)
    if np.any(M0 < 0) or np.any((sh < 0) | (sh > 31)):
        raise ValueError("M0_q must be >= 0 and shift in 0..31 (see quantize_multiplier)")
    if not -128 <= int(z_out) <= 127:
        raise ValueError(f"z_out must lie in [-128, 127], got {z_out}")
    out = np.empty(acc.shape, np.int8)
    _requantize_kernel(acc, M0, sh, int(z_out), -128, 127, rounding == "single", out)
    return out


@dataclass
class Int8Weights:
    """One weight checked and laid out once (``prepare_int8_weights``) for the calls of a model layer:
    ``int8_linear_prepared`` and ``int8_linear_static`` then check and quantize only x."""

    W_t: np.ndarray                      # (N, K) int8 = W_q.T, C-contiguous
    w_scale: np.ndarray                  # (N,) float64, finite
    w_zero: np.ndarray                   # (N,) int32, zeros on symmetric grids
    W_packed: np.ndarray | None          # pack_weight(W_t), used on AVX2 CPUs
    fallback_batch: int | None           # from this many rows on, float32 sgemm (None: never)
    W_hat: np.ndarray | None = field(default=None, repr=False)  # float32 (K, N), made at the first fallback
    W_vnni: np.ndarray | None = field(default=None, repr=False)  # pack_vnni(W_t), made on AVX512_VNNI CPUs
    vnni_start: np.ndarray | None = field(default=None, repr=False)  # accumulator_start(W_t), with W_vnni
    has_zero: bool = field(init=False)   # any Z_W != 0: the kernel then subtracts Z_W * rowsum(qx)
    w_bound: int = field(init=False)     # max |W_t - Z_W| <= 128 + max |Z_W|, for the overflow guards
    zero_bias: np.ndarray = field(init=False, repr=False)       # (N,) float64 zeros, for bias=None

    def __post_init__(self):
        self.has_zero = bool(np.any(self.w_zero))
        self.w_bound = 128 + int(np.abs(self.w_zero.astype(np.int64)).max())
        self.zero_bias = np.zeros(self.W_t.shape[0])


def prepare_int8_weights(W_q, w_scale, *, w_zero=None, layout="NK", fallback_batch=FALLBACK_BATCH, W_hat=None,
                         W_packed=None, vnni=False) -> Int8Weights:
    """Check and keep one weight for ``int8_linear_prepared``; the arguments are ``int8_linear``'s."""
    if layout not in ("NK", "KN"):
        raise ValueError(f"layout must be 'NK' (W.T, fast) or 'KN' (W), got {layout!r}")
    W_t = prepare_weight(W_q) if layout == "KN" else W_q
    _check_2d("W_q", W_t, np.int8)
    N, K = W_t.shape
    sw, zw = _vector("w_scale", w_scale, N, np.float64), _vector("w_zero", w_zero, N, np.int32)
    if W_hat is not None and (not isinstance(W_hat, np.ndarray) or W_hat.dtype != np.float32 or W_hat.shape != (K, N)):
        raise TypeError(f"W_hat must be a float32 ({K}, {N}) array, got {getattr(W_hat, 'dtype', None)} "
                        f"{getattr(W_hat, 'shape', None)}")
    packed_shape = (-(-N // 8), -(-K // 2), 16)
    if W_packed is not None and (not isinstance(W_packed, np.ndarray) or W_packed.dtype != np.int8
                                 or W_packed.shape != packed_shape or not W_packed.flags.c_contiguous):
        raise TypeError(f"W_packed must be pack_weight(W_t): a C-contiguous int8 {packed_shape} array, got "
                        f"{getattr(W_packed, 'dtype', type(W_packed).__name__)} {getattr(W_packed, 'shape', '')}")
    weights = Int8Weights(W_t, sw, zw, W_packed if HAS_AVX2 else None, fallback_batch, W_hat)
    if vnni and HAS_VNNI:
        weights.W_vnni, weights.vnni_start = pack_vnni(W_t), accumulator_start(W_t)
    _guard_overflow(K, 127, weights.w_bound)
    return weights


def _check_x(x, weights) -> tuple[int, int, int]:
    """(M, K, N) of a float32 x (M, K) for a weight from ``prepare_int8_weights``, or a clear error."""
    _check_2d("x", x, np.float32)
    if not isinstance(weights, Int8Weights):
        raise TypeError(f"weights must come from prepare_int8_weights, got {type(weights).__name__}")
    if weights.W_t.shape[1] != x.shape[1]:
        raise ValueError(f"x {x.shape} does not match the weight's (N, K) = {weights.W_t.shape}")
    return x.shape[0], x.shape[1], weights.W_t.shape[0]


def int8_linear_static(x, weights: Int8Weights, x_scale, x_zero, bits, unsigned=False, *, serial_work=SERIAL_WORK):
    """y = (S_x S_W[n]) sum_k (qx - Z_x)(W_t[n, k] - Z_W[n]) as float32 (no bias): Jacob Eq. (4) with one
    static activation (S_x, Z_x) on a 2..8-bit grid (signed, or ``unsigned`` for ReLU outputs), for
    weights+activations files, on a weight from ``prepare_int8_weights`` (whose ``fallback_batch`` does
    not apply). Equals ``int8_linear_static_reference(x, W_t.T, ...)`` bit for bit.

    With ``W_packed`` (AVX2) the pmaddwd kernel multiplies the int16 qx - Z_x (|qx - Z_x| <= 255, made in
    one pass by ``static_codes_kernel``; Z_W is Eq. (7)'s row-sum correction), else ``int8_gemm`` runs.
    """
    M, K, N = _check_x(x, weights)
    if not (np.isfinite(x_scale) and x_scale > 0):
        raise ValueError(f"x_scale must be finite and > 0, got {x_scale}")
    sw, zw, W_packed = weights.w_scale, weights.w_zero, weights.W_packed
    if W_packed is None:                                       # quantize_static_reference rejects NaN / inf
        qx, zx = quantize_static_reference(x, x_scale, x_zero, bits, unsigned)  # (M, K) int8, qx - zx = q - Z_x
        acc = int8_gemm(qx, weights.W_t, zx=zx, zw=zw)                        # Eq. (4), (M, N) int32
        return ((np.float64(x_scale) * sw) * acc).astype(np.float32)
    _guard_overflow(K, 255, weights.w_bound)
    xd = np.zeros((M, 2 * W_packed.shape[1]), np.int16)                       # (M, 2 ceil(K/2)), pad 0 adds 0
    rowsum = np.empty(M, np.int32)                                            # sum_k (qx - Z_x), for Z_W
    qmin, qmax = qrange(bits, unsigned=unsigned)
    if not static_codes_kernel(x, np.float64(x_scale), np.float64(x_zero), qmin, qmax, xd, rowsum):
        raise ValueError("x contains NaN or inf")                             # xd = qx - Z_x in [-255, 255]
    acc, y = np.empty((M, 8 * W_packed.shape[0]), np.int32), np.empty((M, N), np.float32)
    kernel = packed_linear_kernel if M * N * K >= serial_work else packed_linear_kernel_serial
    kernel(xd.view(np.int32), W_packed, np.full(M, np.float64(x_scale)), sw, zw, rowsum, weights.zero_bias, acc, y)
    return y


def int8_linear(x, W_q, w_scale, bias=None, *, w_zero=None, layout="NK", fallback_batch=FALLBACK_BATCH,
                W_hat=None, serial_work=SERIAL_WORK, W_packed=None, vnni=False):
    """y = x @ W_hat + b with W_hat = w_scale (W_q - w_zero), x (M, K) float32 quantized per row on the fly.

    W_q int8: (N, K) = W.T with ``layout="NK"`` (``prepare_weight``), or (K, N) with "KN"; w_scale,
    w_zero, bias (N,). ``W_packed = pack_weight(W.T)`` runs the AVX2 pmaddwd kernel, ``vnni=True`` packs
    W for the AVX512_VNNI vpdpbusd one, which then runs (same result; each needs its CPU feature).
    Below ``fallback_batch`` rows (None: always) the result equals ``int8_linear_reference`` bit for
    bit; from there on it is float32 sgemm on ``W_hat`` (float32 (K, N), dequantized here if not given;
    x is then not quantized). Below ``serial_work`` multiply-adds (M N K) the kernel runs on one
    thread, with the same result. Called many times with one weight (a model layer):
    ``prepare_int8_weights`` once, then ``int8_linear_prepared``.
    """
    weights = prepare_int8_weights(W_q, w_scale, w_zero=w_zero, layout=layout, fallback_batch=fallback_batch,
                                   W_hat=W_hat, W_packed=W_packed, vnni=vnni)
    return int8_linear_prepared(x, weights, bias, serial_work=serial_work)


def int8_linear_prepared(x, weights: Int8Weights, bias=None, *, serial_work=SERIAL_WORK):
    """``int8_linear`` on a weight from ``prepare_int8_weights``: the same result, bit for bit; the
    fallback's W_hat, when the weights have none, is made on the first large batch and kept."""
    M, K, N = _check_x(x, weights)
    b = weights.zero_bias if bias is None else _vector("bias", bias, N, np.float64, 0.0)
    if weights.fallback_batch is not None and M >= weights.fallback_batch:
        if not all_finite(x):
            raise ValueError("x contains NaN or inf")
        if weights.W_hat is None:
            W_hat = aligned_empty((N, K), np.float32)
            _dequantize_kernel(weights.W_t, weights.w_scale, weights.w_zero, W_hat)
            weights.W_hat = W_hat.T  # (K, N) view: sgemm reads the transposed layout at full speed
        y = x @ weights.W_hat  # (M, N)
        return y if bias is None else y + b.astype(np.float32)
    parallel = M * N * K >= serial_work
    sx, rowsum, y = np.empty(M, np.float64), np.zeros(M, np.int32), np.empty((M, N), np.float32)
    vnni, packed = weights.W_vnni, weights.W_packed  # codes read as int32: VNNI int8 k quads, AVX2 int16 pairs
    qx, acc_cols = ((np.zeros((M, 4 * vnni.shape[1]), np.int8), 16 * vnni.shape[0]) if vnni is not None else
                    (np.zeros((M, 2 * packed.shape[1]), np.int16), 8 * packed.shape[0]) if packed is not None else
                    (np.zeros((M, K), np.int8), N))
    if not _quantize_rows_kernel(x, qx, sx):
        raise ValueError("x contains NaN or inf")
    if weights.has_zero:
        _rowsum_kernel(qx, rowsum)
    acc, common = np.empty((M, acc_cols), np.int32), (sx, weights.w_scale, weights.w_zero)
    if vnni is not None:
        kernel = vnni_linear_kernel if parallel else vnni_linear_kernel_serial
        kernel(qx.view(np.int32), vnni, weights.vnni_start, *common, rowsum, b, acc, y)
    elif packed is not None:
        kernel = packed_linear_kernel if parallel else packed_linear_kernel_serial
        kernel(qx.view(np.int32), packed, *common, rowsum, b, acc, y)
    else:
        kernel = _linear_kernel if parallel else _linear_kernel_serial
        kernel(qx, weights.W_t, *common, rowsum, b, acc, y)
    return y
