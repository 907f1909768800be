"""Shared hypothesis strategies (``*_st``), built on ``hypothesis.extra.numpy``.

Elements are bounded, finite and never subnormal: the property tests state laws on well-formed
input; bad input (NaN, inf, empty, wrong dtype) has tests of its own.
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp


def floats_st(dtype=np.float64, bound=10.0):
    width = 32 if np.dtype(dtype) == np.float32 else 64
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False,
                     allow_subnormal=False, width=width)


def matrix_st(min_side=1, max_side=17, dtype=np.float64, bound=10.0):
    """A 2-D float array with each side in [min_side, max_side] (crossing a tile of 8)."""
    shape = hynp.array_shapes(min_dims=2, max_dims=2, min_side=min_side, max_side=max_side)
    return hynp.arrays(dtype, shape, elements=floats_st(dtype, bound))


def vector_st(min_size=1, max_size=64, dtype=np.float64, bound=10.0):
    return hynp.arrays(dtype, st.integers(min_size, max_size), elements=floats_st(dtype, bound))


@st.composite
def matmul_pair_st(draw, max_side=17, dtype=np.float64, bound=10.0):
    """``(x, W)`` with x: (M, K) and W: (K, N), for ``x @ W``."""
    M, K, N = (draw(st.integers(1, max_side)) for _ in range(3))
    x = draw(hynp.arrays(dtype, (M, K), elements=floats_st(dtype, bound)))
    W = draw(hynp.arrays(dtype, (K, N), elements=floats_st(dtype, bound)))
    return x, W


@st.composite
def linear_st(draw, max_side=17):
    """``(x, W, w_scale, w_zero, bias)`` for an int8 linear layer: x float32 (M, K), W int8 (K, N) in
    -127..127, per-column scales, zero points or None, a float32 bias or None."""
    M, K, N = (draw(st.integers(1, max_side)) for _ in range(3))
    x = draw(hynp.arrays(np.float32, (M, K), elements=floats_st(np.float32, 10.0)))
    W = draw(hynp.arrays(np.int8, (K, N), elements=st.integers(-127, 127)))
    w_scale = draw(hynp.arrays(np.float32, N, elements=st.floats(2.0 ** -10, 1.0, width=32)))
    w_zero = draw(st.none() | hynp.arrays(np.int32, N, elements=st.integers(-20, 20)))
    bias = draw(st.none() | hynp.arrays(np.float32, N, elements=floats_st(np.float32, 5.0)))
    return x, W, w_scale, w_zero, bias
