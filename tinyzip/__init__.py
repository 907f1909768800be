"""tinyzip: an exact, from-scratch NumPy reference implementation of Transformer compression.

Sub-packages
------------
nn/        the Transformer by hand: functional ``*_forward -> (out, cache)`` / ``*_backward`` pairs
data/      built-in tasks, sacremoses + BPE text pipeline, length-bucketed batches
compress/  one file per paper (array-level math first, model integration last)
kernels/   Numba kernels, each equal to its NumPy reference
"""
from tinyzip import _env  # noqa: F401  (sets Numba's environment before numba is imported)

__version__ = "0.1.0"
