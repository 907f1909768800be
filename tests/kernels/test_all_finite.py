"""Tests of tinyzip.kernels.all_finite, the NaN/inf check the kernel layers run on their input:
it must agree with ``np.isfinite(x).all()`` wherever the bad value sits and whatever x's layout."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

import tinyzip  # noqa: F401  (environment before numba)
from tinyzip.kernels import all_finite

F32 = np.finfo(np.float32)


@st.composite
def matrix_with_specials_st(draw):
    """A float32 (M, K) matrix of finite values near the float32 limits, with NaN, +inf and -inf
    written at drawn places (possibly none), and a drawn layout: C order, Fortran order or strided."""
    M, K = draw(st.integers(1, 6)), draw(st.integers(1, 70))
    x = draw(hynp.arrays(np.float32, (M, K), elements=st.floats(-float(F32.max), float(F32.max), width=32)))
    for _ in range(draw(st.integers(0, 3))):
        bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        x[draw(st.integers(0, M - 1)), draw(st.integers(0, K - 1))] = bad
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        return np.asfortranarray(x)
    if layout == "strided":
        return np.repeat(x, 2, axis=1)[:, ::2]                         # the same values, not contiguous
    return x


@given(matrix_with_specials_st())
def test_all_finite_equals_numpy_isfinite_all(x):
    assert all_finite(x) == bool(np.isfinite(x).all())


def test_all_finite_at_the_float32_limits():
    assert all_finite(np.array([[F32.max, -F32.max, F32.smallest_subnormal, -0.0]], np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros((3, 1000), np.float32)
        x[2, 999] = bad                                                # the very last element
        assert not all_finite(x)
