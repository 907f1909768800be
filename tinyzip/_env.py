"""Process environment tinyzip needs, set before NumPy's BLAS or Numba start (perf-notes §7).

* ``NUMBA_SLP_VECTORIZE=1``: Numba turns LLVM's SLP vectoriser off by default; the LUT and int8
  kernels rely on it. The Numba cache key ignores this flag, so it must be set before the first
  import of numba, always the same way.

Only defaults are set (``os.environ.setdefault``): a user's explicit setting wins.
"""
import os

os.environ.setdefault("NUMBA_SLP_VECTORIZE", "1")
