"""Matmul with k-means-shared weights: y = x @ W where W[k, n] = codebook[idx[k, n]].

Weights from ``tinyzip.compress.kmeans`` (Han, Mao, Dally 2016, "Deep Compression: Compressing
Deep Neural Networks with Pruning, Trained Quantization and Huffman Coding", ICLR 2016,
arXiv:1510.00149, Sec. 3): every weight stores a uint8 index into a float32 codebook of at most
256 shared values. The kernel reads the 1-byte indices instead of 4-byte weights and never
materialises the dense float32 W.

    y[m, n] = sum_k x[m, k] * codebook[idx[k, n]]        x: (M, K), idx: (K, N), y: (M, N)

Reference: ``codebook_matmul_reference`` = ``x @ kmeans.shared_weights_forward(codebook, idx)[0]``
(dequantize, then NumPy float32 matmul). The kernel forms the same products; only the order of
the K additions differs (BLAS blocks and vectorises the reduction one way, the kernel adds groups
of four rows into its accumulator), so the two agree within the classical dot-product bound
|y - y_ref| <= 2 gamma_K (|x| @ |W|), gamma_K = K u / (1 - K u), u = eps(float32) / 2, each
side contributing one gamma_K (Higham, "Accuracy and Stability of Numerical Algorithms", Sec. 3.1).

Dtypes: x float32, idx uint8, codebook float32 (1 <= k <= 256), float32 accumulation and output.

Why gather + FMA and not the weight-sharing sums: summing x per cluster first,
s[c, n] = sum_{k: idx[k, n] = c} x[k] and then y[n] = sum_c codebook[c] s[c, n], replaces K*N
multiplies by K*N adds plus k*N multiplies, but each add is a scatter into s (a load-add-store
that no x86 vector unit does), while a multiply costs little next to the add. Measured in one
process on this 2-vCPU host (W 1024x1024, k = 16, best of many runs), the cluster-sum variant was
2.3x slower than gather + multiply-add at batch 1 and about 70-110x slower at batch 8 and 32.

Optimisations:
* ``prange`` over blocks of NB output columns (two per thread, 32..1024 wide): a block writes
  only its own columns of ``out`` and owns its buffers (``w0..w3``, ``acc``), so the loop is
  race-free and parallel even at M = 1. Wide blocks read each idx row in long contiguous runs.
  Under ``SERIAL_WORK`` multiply-adds a serial twin runs instead (no parallel region to start).
* Per block, four rows of the weight tile are dequantized into ``w0..w3`` (NB,) (a scalar
  gather from the codebook, which sits in L1) and then used for all M rows of x, so the gather
  is paid once per weight, not once per weight and batch row.
* ``acc`` (M, NB) float32 stays in L1/L2; four products per load/store of ``acc`` and the
  contiguous inner loop over NB columns let LLVM vectorise it (separate multiply and add: no
  fastmath, so no FMA contraction either).
* Indices are uint64 where it matters (no negative-index wrap-around check, perf-notes 7.3).
* Limits, measured: LLVM emits no vector gather, so the look-up costs about one cycle per
  weight; at batch 1 the kernel is slower than NumPy's float32 GEMV (which streams 4 bytes per
  weight at memory speed) and its gain is memory: 1 byte per weight instead of 4.
* At most 16 codebook entries, AVX-512, ``blocks`` given: ``codebook_avx512.py`` looks up 16
  weights with one ``vpermps`` from a register, feeds them straight into a register tile of
  multiply-adds and streams the indices in 64-column blocks.
* Out-of-range indices: the codebook is padded to 256 entries with NaN, so an index >= k can
  never read outside memory and turns its outputs into NaN; the wrapper then names the error.
  Checking ``idx.max()`` up front would cost a full pass over idx on every call.
"""
import numpy as np
from numba import get_num_threads, prange

from tinyzip.compress.kmeans import shared_weights_forward
from tinyzip.kernels import all_finite, codebook_avx512, parallel_and_serial

MAX_K = 256
# M K N below this runs on one thread: a parallel region costs 60-130 us to start here (one / two
# threads: 128x128 at batch 1 22 / 83 us, 128x512 at batch 8 50 / 76 us; 1024^2 at batch 1 358 / 244 us)
SERIAL_WORK = 1 << 20


def codebook_matmul_reference(x: np.ndarray, idx: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """y = x @ codebook[idx] in NumPy: dequantize (K, N), then a float32 matmul. -> (M, N)"""
    W, _ = shared_weights_forward(codebook, idx)                          # (K, N)
    return x @ W                                                           # (M, N)


def _check(x, idx, codebook):
    for name, a, dtype, ndim in [("x", x, np.float32, 2), ("idx", idx, np.uint8, 2),
                                 ("codebook", codebook, np.float32, 1)]:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{name} must be {np.dtype(dtype)}, got {a.dtype}")
        if a.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray), got strides {a.strides}")
    if x.size == 0 or idx.size == 0:
        raise ValueError(f"empty input: x {x.shape}, idx {idx.shape}")
    if x.shape[1] != idx.shape[0]:
        raise ValueError(f"x {x.shape} and idx {idx.shape} do not chain: x.shape[1] != idx.shape[0]")
    if not 1 <= codebook.size <= MAX_K:
        raise ValueError(f"codebook must have 1..{MAX_K} entries for uint8 indices, got {codebook.size}")
    if not np.isfinite(codebook).all():
        raise ValueError("codebook has NaN or inf entries")
    if not all_finite(x):
        raise ValueError("x has NaN or inf entries")


def _block_width(N: int) -> int:
    """Columns per parallel block: two blocks per thread, 32..1024 columns (w and acc stay in
    L1/L2; narrower blocks read each idx row in short pieces, one page per row, and were slower)."""
    per_block = -(-N // (2 * get_num_threads()))
    return int(min(1024, max(32, -(-per_block // 32) * 32)))


def codebook_matmul(x: np.ndarray, idx: np.ndarray, codebook: np.ndarray, blocks: np.ndarray | None = None
                    ) -> np.ndarray:
    """y = x @ codebook[idx] without building W. x (M, K) float32, idx (K, N) uint8 -> (M, N).

    ``blocks``: ``codebook_avx512.pack_blocks(idx)``, kept by a caller that multiplies by one idx
    many times (the model bridge); with at most 16 codebook entries ``codebook_avx512``'s
    ``vpermps`` kernel then runs on AVX-512 CPUs."""
    _check(x, idx, codebook)
    lut = np.full(MAX_K, np.nan, dtype=np.float32)                         # (256,)
    lut[: codebook.size] = codebook
    K, N = idx.shape
    if blocks is not None and blocks.shape != (-(-N // codebook_avx512.COLS), K, codebook_avx512.COLS):
        raise ValueError(f"blocks {blocks.shape} is not codebook_avx512.pack_blocks of idx {idx.shape}")
    out_of_range = False
    if blocks is not None and codebook.size <= codebook_avx512.TABLE and codebook_avx512.HAS_AVX512:
        out, out_of_range = codebook_avx512.codebook_matmul_blocks(x, blocks, lut[:codebook_avx512.TABLE], N)
    else:
        out = np.empty((x.shape[0], N), dtype=np.float32)                 # (M, N)
        kernel = _codebook_matmul_kernel if x.shape[0] * K * N >= SERIAL_WORK else _codebook_matmul_kernel_serial
        kernel(x, idx, lut, out, _block_width(N))
    if out_of_range or codebook.size < MAX_K and np.isnan(out).any():
        if int(idx.max()) >= codebook.size:
            raise ValueError(f"idx has values up to {int(idx.max())}, but the codebook has only "
                             f"{codebook.size} entries")
    return out


def _codebook_matmul_body(x, idx, lut, out, nb):
    # Indices are uint64 where it matters: Numba's signed indices carry a negative-index
    # wrap-around select that blocks vectorisation (perf-notes section 7.3).
    M, K = x.shape
    N = idx.shape[1]
    K4 = K - K % 4
    u1, u2, u3 = np.uint64(1), np.uint64(2), np.uint64(3)
    for b in prange((N + nb - 1) // nb):
        n0 = np.uint64(b * nb)
        L = np.uint64(min(N, b * nb + nb) - b * nb)
        w0 = np.empty(L, dtype=np.float32)
        w1 = np.empty(L, dtype=np.float32)
        w2 = np.empty(L, dtype=np.float32)
        w3 = np.empty(L, dtype=np.float32)
        acc = np.zeros((M, L), dtype=np.float32)                          # (M, L)
        for kk in range(0, K4, 4):
            k = np.uint64(kk)
            for j in range(L):                   # dequantize rows k..k+3 of this column block
                w0[j] = lut[idx[k, n0 + j]]
                w1[j] = lut[idx[k + u1, n0 + j]]
                w2[j] = lut[idx[k + u2, n0 + j]]
                w3[j] = lut[idx[k + u3, n0 + j]]
            for m in range(M):
                x0, x1, x2, x3 = x[m, k], x[m, k + u1], x[m, k + u2], x[m, k + u3]
                a = acc[m]
                for j in range(L):
                    a[j] += x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j]
        for kk in range(K4, K):                  # remainder rows, K not a multiple of 4
            k = np.uint64(kk)
            for j in range(L):
                w0[j] = lut[idx[k, n0 + j]]
            for m in range(M):
                xk = x[m, k]
                a = acc[m]
                for j in range(L):
                    a[j] += xk * w0[j]
        for m in range(M):
            for j in range(L):
                out[m, n0 + j] = acc[m, j]


_codebook_matmul_kernel, _codebook_matmul_kernel_serial = parallel_and_serial(_codebook_matmul_body)
