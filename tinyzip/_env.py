"""Process environment tinyzip needs, set before NumPy's BLAS or Numba start (perf-notes §7).

* ``NUMBA_SLP_VECTORIZE=1``: Numba turns LLVM's SLP vectoriser off by default; the LUT and int8
  kernels rely on it. The Numba cache key ignores this flag, so it must be set before the first
  import of numba, always the same way.
* ``OMP_WAIT_POLICY=PASSIVE``: Numba's OpenMP workers sleep instead of spinning after a parallel
  region. Spinning workers and OpenBLAS's spinning threads fight over 2 cores: alternating NumPy
  and Numba calls then took about 4 ms each instead of about 50 us (perf-notes §7.1; measured
  again here at 20-44 ms under load, 0.1-0.3 ms with this setting).
* ``OPENBLAS_THREAD_TIMEOUT=4``: OpenBLAS threads wait only briefly before sleeping, for the
  same reason (perf-notes §7.1).
* ``OPENBLAS_NUM_THREADS=1``: with any other process busy on a 2-core machine, two OpenBLAS
  threads wait on each other and a training step of the small preset took 1.5-2.4 s instead of
  0.18-0.20 s on one thread (``tinyzip bench train --presets small``, measured alternately).
  On an idle machine two threads speed up large matmuls (up to ~1.5x for sgemm here); set
  ``OPENBLAS_NUM_THREADS=2`` yourself when the machine is yours alone.

Only defaults are set (``os.environ.setdefault``): a user's explicit setting wins. They take
effect when ``tinyzip`` is imported before NumPy (the ``tinyzip`` command always is).
"""
import os

os.environ.setdefault("NUMBA_SLP_VECTORIZE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
