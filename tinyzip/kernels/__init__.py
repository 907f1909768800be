"""Numba kernels. ``parallel_and_serial`` builds the two compiled variants of one kernel body;
``all_finite`` is the layers' NaN/inf check of their input; ``aligned_empty`` and ``aligned_copy``
put the float32 weights the layers keep for NumPy on a cache-line boundary."""
import types

import numpy as np
from numba import njit


def parallel_and_serial(body):
    """(njit(parallel=True, cache=True)(body), the same on one thread) for a body with ``prange``.

    The serial variant is compiled from a renamed copy of ``body``: Numba's cache file is named
    after a function's qualified name and line, and its key holds the signature and bytecode but
    not ``parallel`` (numba#6845), so both variants of one function share a cache entry and the
    first one compiled is loaded for both. After the test suite (small layers: serial first) the
    "parallel" int8 kernels ran on one thread: 9.5 ms instead of 4.3 ms at 4096^2, batch 32."""
    twin = types.FunctionType(body.__code__, body.__globals__, body.__name__ + "_serial", body.__defaults__,
                              body.__closure__)
    twin.__qualname__ = body.__qualname__ + "_serial"
    return njit(parallel=True, cache=True)(body), njit(cache=True)(twin)


CACHE_LINE = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts on a 64-byte (cache-line) boundary.

    NumPy's allocator only promises 16 bytes, so a large array starts wherever malloc or mmap put
    it (an mmap'd one 16 bytes past a page). OpenBLAS's float32 product is measurably slower on a
    W that does not start on a cache line: 1024 x 1024 at batch 8, 2 threads, 228 us aligned
    against 291-348 us at offsets 16, 32, 48 (4096 x 1024 at batch 1: 414 against 469-519 us).
    Equal NumPy products on two copies of one W therefore read 0.6-1.7x of each other, and a
    layer's float fallback lost or won against NumPy by where its copy landed."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned_copy(a) -> np.ndarray:
    """A C-contiguous copy of ``a`` on a 64-byte boundary (``aligned_empty``)."""
    a = np.asarray(a)
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


@njit(cache=True)
def all_finite(x):
    """``np.isfinite(x).all()`` for x (M, K), compiled and branch-free within a row, so it vectorizes:
    a row of 1024 floats in 0.4 us (4.5-5 us with cold caches) against NumPy's 2 us (16-20 us),
    960 x 512 in 36-38 us against 74-80 us. Layers whose kernels do not check x as they read it call it."""
    inf = np.float32(np.inf)
    for m in range(x.shape[0]):
        finite = True
        for k in range(x.shape[1]):
            finite &= abs(x[m, k]) < inf                                   # False for NaN too
        if not finite:
            return False
    return True
