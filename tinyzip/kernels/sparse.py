"""Matmul with pruned weights stored as CSC: y = x @ W, W (K, N) sparse, only nonzeros read.

Weights from ``tinyzip.compress.magnitude_pruning`` (Han, Pool, Tran, Dally 2015, "Learning both
Weights and Connections for Efficient Neural Networks", NeurIPS 2015, arXiv:1506.02626; the
sparse storage of Han, Mao, Dally 2016, Deep Compression, ICLR 2016, arXiv:1510.00149, Sec. 2).

    y[m, n] = sum_{p in indptr[n] .. indptr[n+1]-1} x[m, indices[p]] * values[p]

CSC of W = CSR of W.T: column n of W (the weights feeding output n) is the slice
``indptr[n]:indptr[n+1]`` of ``indices`` (input rows k, increasing) and ``values``.

Why CSC and not CSR for y = x @ W with W (K, N): with CSC every output column is one independent
dot product, so the kernel parallelises over output columns even at batch 1, keeps the
accumulator in registers and only gathers from x (K floats, in L1). CSR walks rows of W = inputs
k and scatters x[m, k] * W[k, :] into the whole output row: parallel only over the batch (nothing
to split at M = 1) and every nonzero is a load-add-store into y.

Reference: ``sparse_matmul_reference`` = ``x @ csc_to_dense(csc)`` (NumPy float32). The kernel
forms the same nonzero products; zero weights add exact zeros, and the sums are taken in another
order, so the two agree within |y - y_ref| <= 2 gamma_K (|x| @ |W|), gamma_K = K u / (1 - K u),
u = eps(float32) / 2 (Higham, Accuracy and Stability of Numerical Algorithms, Sec. 3.1).

Dtypes: x float32; indptr int64 (N + 1,), indices int32 (nnz,), values float32 (nnz,); output
float32. ``CSCMatrix`` validates the structure once, at construction, and freezes its arrays,
so the per-call wrapper only checks x (a structural check is O(nnz) and would cost as much as
the multiply at batch 1).

Optimisations:
* ``prange`` over blocks of output columns: each block writes only its own columns of the
  transposed output ``outT`` (N, M), so the loop is race-free.
* M = 1: four partial sums per column break the FMA latency chain (the loop is bound by the
  gather of x[indices[p]], which LLVM keeps scalar).
* M > 1: x is transposed once to xT (K, Mp), zero-padded to Mp = 8 * ceil(M / 8); per column
  and group of 8 batch rows, eight register accumulators take one vector load of xT per
  nonzero (4-6x faster than a loop over the batch with the accumulator in memory).
* Indices are cast to uint64 before use: this removes Numba's negative-index wrap-around check
  (perf-notes section 7.3); the CSC structure was validated, so every index is in range.
"""
from dataclasses import dataclass

import numpy as np
from numba import get_num_threads, njit, prange

from tinyzip.kernels import all_finite


@dataclass(frozen=True)
class CSCMatrix:
    """W (K, N) in compressed sparse columns; arrays are validated and made read-only."""

    shape: tuple
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    def __post_init__(self):
        if (len(self.shape) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                            and s > 0 for s in self.shape)):
            raise ValueError(f"shape must be two positive ints (K, N), got {self.shape!r}")
        K, N = (int(s) for s in self.shape)
        arrays = {}
        for name, dtype in [("indptr", np.int64), ("indices", np.int32), ("values", np.float32)]:
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 1:
                raise TypeError(f"{name} must be a 1-D {np.dtype(dtype)} array, got "
                                f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
            arrays[name] = np.array(a, copy=True)
            arrays[name].setflags(write=False)
        indptr, indices, values = arrays["indptr"], arrays["indices"], arrays["values"]
        if indptr.size != N + 1 or indptr[0] != 0 or (np.diff(indptr) < 0).any():
            raise ValueError(f"indptr must be non-decreasing, start at 0 and have N + 1 = {N + 1} "
                             f"entries, got {indptr.size} entries")
        if indices.size != indptr[-1] or values.size != indptr[-1]:
            raise ValueError(f"indptr[-1] = {indptr[-1]} nonzeros, but indices has {indices.size} "
                             f"and values {values.size}")
        if indices.size and (indices.min() < 0 or indices.max() >= K):
            raise ValueError(f"row indices must lie in [0, {K}), got [{indices.min()}, {indices.max()}]")
        starts = np.zeros(indices.size, dtype=bool)
        starts[indptr[:-1][np.diff(indptr) > 0]] = True                    # first entry of a column
        if (np.diff(indices)[~starts[1:]] <= 0).any():
            raise ValueError("row indices must increase strictly within each column")
        if not np.isfinite(values).all():
            raise ValueError("values has NaN or inf entries")
        object.__setattr__(self, "shape", (K, N))
        for name, a in arrays.items():
            object.__setattr__(self, name, a)

    @property
    def nnz(self) -> int:
        return int(self.indices.size)


def to_csc(W: np.ndarray) -> CSCMatrix:
    """The nonzeros of a float32 W (K, N), column by column, rows increasing."""
    if not isinstance(W, np.ndarray) or W.dtype != np.float32 or W.ndim != 2:
        raise TypeError(f"W must be a 2-D float32 array, got {getattr(W, 'dtype', type(W).__name__)} "
                        f"{getattr(W, 'shape', '')}")
    if W.size == 0 or not np.isfinite(W).all():
        raise ValueError(f"W must be non-empty and finite, got shape {W.shape}")
    cols, rows = np.nonzero(W.T)                                           # (nnz,), column-major
    indptr = np.zeros(W.shape[1] + 1, dtype=np.int64)                      # (N + 1,)
    np.cumsum(np.bincount(cols, minlength=W.shape[1]), out=indptr[1:])
    return CSCMatrix(W.shape, indptr, rows.astype(np.int32), W.T[cols, rows])


def csc_to_dense(csc: CSCMatrix) -> np.ndarray:
    """The dense float32 W (K, N) of ``csc``."""
    W = np.zeros(csc.shape, dtype=np.float32)                              # (K, N)
    cols = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))         # (nnz,)
    W[csc.indices, cols] = csc.values
    return W


def sparse_matmul_reference(x: np.ndarray, csc: CSCMatrix) -> np.ndarray:
    """y = x @ W in NumPy float32 with the dense W. x (M, K) -> (M, N)."""
    return x @ csc_to_dense(csc)                                           # (M, N)


def sparse_matmul(x: np.ndarray, csc: CSCMatrix) -> np.ndarray:
    """y = x @ W reading only the nonzeros of W. x (M, K) float32 C-contiguous -> (M, N) float32."""
    if not isinstance(csc, CSCMatrix):
        raise TypeError(f"csc must be a CSCMatrix (see to_csc), got {type(csc).__name__}")
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(f"x must be a float32 array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != csc.shape[0]:
        raise ValueError(f"x must be (M >= 1, K = {csc.shape[0]}), got {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"x must be C-contiguous (np.ascontiguousarray), got strides {x.strides}")
    if not all_finite(x):
        raise ValueError("x has NaN or inf entries")
    M, N = x.shape[0], csc.shape[1]
    nb = max(16, -(-N // (4 * get_num_threads())))                          # >= 4 blocks per thread
    if M == 1:
        out = np.empty((1, N), dtype=np.float32)                           # (1, N)
        _sparse_gemv_kernel(x[0], csc.indptr, csc.indices, csc.values, out[0], nb)
        return out
    Mp = -(-M // 8) * 8
    xT = np.zeros((x.shape[1], Mp), dtype=np.float32)                      # (K, Mp), zero padded
    xT[:, :M] = x.T
    outT = np.empty((N, Mp), dtype=np.float32)                             # (N, Mp)
    _sparse_gemm8_kernel(xT, csc.indptr, csc.indices, csc.values, outT, nb)
    return np.ascontiguousarray(outT[:, :M].T)                             # (M, N)


@njit(parallel=True, cache=True)
def _sparse_gemv_kernel(x, indptr, indices, values, out, nb):
    # uint64 indices: Numba's signed indices carry a negative-index wrap-around select per
    # access; without it this loop ran 2.5x faster (perf-notes section 7.3).
    N = out.shape[0]
    u1, u2, u3, u4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)
    for b in prange((N + nb - 1) // nb):
        for n in range(b * nb, min(N, b * nb + nb)):
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            s3 = np.float32(0.0)
            p, end = np.uint64(indptr[n]), np.uint64(indptr[n + 1])
            while p + u4 <= end:
                s0 += x[np.uint64(indices[p])] * values[p]
                s1 += x[np.uint64(indices[p + u1])] * values[p + u1]
                s2 += x[np.uint64(indices[p + u2])] * values[p + u2]
                s3 += x[np.uint64(indices[p + u3])] * values[p + u3]
                p += u4
            while p < end:
                s0 += x[np.uint64(indices[p])] * values[p]
                p += u1
            out[n] = (s0 + s1) + (s2 + s3)


@njit(parallel=True, cache=True)
def _sparse_gemm8_kernel(xT, indptr, indices, values, outT, nb):
    # xT (K, Mp) and outT (N, Mp) with Mp a multiple of 8: eight batch columns per pass over a
    # column's nonzeros, in eight scalar accumulators that LLVM's SLP vectoriser packs into one
    # ymm register (one vector load of xT[k, m:m+8] per nonzero).
    N, Mp = outT.shape
    u = np.uint64
    for b in prange((N + nb - 1) // nb):
        for n in range(b * nb, min(N, b * nb + nb)):
            p0, p1 = u(indptr[n]), u(indptr[n + 1])
            for mm in range(0, Mp, 8):
                m = u(mm)
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
                p = p0
                while p < p1:
                    k, v = u(indices[p]), values[p]
                    a0 += v * xT[k, m]
                    a1 += v * xT[k, m + u(1)]
                    a2 += v * xT[k, m + u(2)]
                    a3 += v * xT[k, m + u(3)]
                    a4 += v * xT[k, m + u(4)]
                    a5 += v * xT[k, m + u(5)]
                    a6 += v * xT[k, m + u(6)]
                    a7 += v * xT[k, m + u(7)]
                    p += u(1)
                outT[n, m], outT[n, m + u(1)], outT[n, m + u(2)], outT[n, m + u(3)] = a0, a1, a2, a3
                outT[n, m + u(4)], outT[n, m + u(5)], outT[n, m + u(6)], outT[n, m + u(7)] = a4, a5, a6, a7
