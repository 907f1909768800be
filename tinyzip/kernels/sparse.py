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
* M > 1: x is transposed once to xT (K, M); each nonzero then updates a row of M accumulators
  with one contiguous, vectorisable FMA loop over the batch.
"""
from dataclasses import dataclass

import numpy as np
from numba import get_num_threads, njit, prange


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
    if not np.isfinite(x).all():
        raise ValueError("x has NaN or inf entries")
    N = csc.shape[1]
    nb = max(16, -(-N // (4 * get_num_threads())))                          # >= 4 blocks per thread
    outT = np.empty((N, x.shape[0]), dtype=np.float32)                     # (N, M)
    if x.shape[0] == 1:
        _sparse_gemv_kernel(x[0], csc.indptr, csc.indices, csc.values, outT[:, 0], nb)
    else:
        xT = np.ascontiguousarray(x.T)                                     # (K, M)
        _sparse_gemm_kernel(xT, csc.indptr, csc.indices, csc.values, outT, nb)
    return np.ascontiguousarray(outT.T)                                    # (M, N)


@njit(parallel=True, cache=True)
def _sparse_gemv_kernel(x, indptr, indices, values, out, nb):
    N = out.shape[0]
    for b in prange((N + nb - 1) // nb):
        for n in range(b * nb, min(N, b * nb + nb)):
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            s3 = np.float32(0.0)
            p, end = indptr[n], indptr[n + 1]
            while p + 4 <= end:
                s0 += x[indices[p]] * values[p]
                s1 += x[indices[p + 1]] * values[p + 1]
                s2 += x[indices[p + 2]] * values[p + 2]
                s3 += x[indices[p + 3]] * values[p + 3]
                p += 4
            while p < end:
                s0 += x[indices[p]] * values[p]
                p += 1
            out[n] = (s0 + s1) + (s2 + s3)


@njit(parallel=True, cache=True)
def _sparse_gemm_kernel(xT, indptr, indices, values, outT, nb):
    N, M = outT.shape
    for b in prange((N + nb - 1) // nb):
        acc = np.empty(M, dtype=np.float32)
        for n in range(b * nb, min(N, b * nb + nb)):
            acc[:] = 0.0
            for p in range(indptr[n], indptr[n + 1]):
                k, v = indices[p], values[p]
                for m in range(M):
                    acc[m] += v * xT[k, m]
            for m in range(M):
                outT[n, m] = acc[m]
