"""Tests of tinyzip/kernels/codebook.py: y = x @ codebook[idx] with uint8 indices (Deep Compression
weight sharing, Han, Mao, Dally 2016, arXiv:1510.00149) against its NumPy reference.

Tolerance: the classical dot-product bound |fl(x . w) - x . w| <= gamma_K |x| . |w|,
gamma_K = K u / (1 - K u), u = eps / 2 (Higham, Sec. 3.1), for any order of the K additions;
kernel and reference each contribute one gamma_K. Products that underflow add at most one
smallest subnormal each (inputs are normal, their products need not be)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

import tinyzip  # noqa: F401  (environment before numba)
from strategies import floats_st
from tinyzip.kernels.codebook import codebook_matmul, codebook_matmul_reference

F32 = np.finfo(np.float32)


def dot_bound(x, W, sides=2):
    """sides * gamma_K * (|x| @ |W|) + K * smallest subnormal, in float64."""
    K = x.shape[1]
    u = F32.eps / 2
    gamma = K * u / (1 - K * u)
    return sides * gamma * (np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64))) \
        + K * F32.smallest_subnormal


@st.composite
def codebook_case_st(draw, max_m=9, max_k=17, max_n=70):
    """x (M, K), idx (K, N) < k, codebook (k,): K crosses the unroll of 4, N the block of 32."""
    M, K, N = draw(st.integers(1, max_m)), draw(st.integers(1, max_k)), draw(st.integers(1, max_n))
    k = draw(st.sampled_from([1, 2, 16, 255, 256]) | st.integers(1, 256))
    x = draw(hynp.arrays(np.float32, (M, K), elements=floats_st(np.float32)))
    idx = draw(hynp.arrays(np.uint8, (K, N), elements=st.integers(0, k - 1)))
    codebook = draw(hynp.arrays(np.float32, k, elements=floats_st(np.float32)))
    return x, idx, codebook


@given(case=codebook_case_st())
def test_kernel_equals_reference_within_dot_product_bound(case):
    x, idx, codebook = case
    y = codebook_matmul(x, idx, codebook)
    ref = codebook_matmul_reference(x, idx, codebook)
    assert y.dtype == np.float32 and y.shape == (x.shape[0], idx.shape[1])
    W = codebook[idx]
    assert (np.abs(y.astype(np.float64) - ref) <= dot_bound(x, W)).all()


@given(case=codebook_case_st())
def test_kernel_error_vs_exact_product_is_one_gamma_k(case):
    """The kernel alone: |y - x @ W (float64)| <= gamma_K |x| @ |W| (+ float64's own error)."""
    x, idx, codebook = case
    W = codebook[idx].astype(np.float64)
    exact = x.astype(np.float64) @ W
    y = codebook_matmul(x, idx, codebook)
    tol = dot_bound(x, W, sides=1) + x.shape[1] * np.finfo(np.float64).eps * (np.abs(x) @ np.abs(W))
    assert (np.abs(y - exact) <= tol).all()


@pytest.mark.parametrize("M", [1, 5, 32])
def test_large_shapes_cross_blocks_and_remainders(M):
    rng = np.random.default_rng(M)
    K, N, k = 301, 531, 16                       # K % 4 = 1, N spans several column blocks
    x = rng.normal(size=(M, K)).astype(np.float32)
    idx = rng.integers(0, k, size=(K, N), dtype=np.uint8)
    codebook = rng.normal(size=k).astype(np.float32)
    y = codebook_matmul(x, idx, codebook)
    ref = codebook_matmul_reference(x, idx, codebook)
    assert (np.abs(y.astype(np.float64) - ref) <= dot_bound(x, codebook[idx])).all()


def test_exact_on_integer_valued_data():
    """Small integers: every product and partial sum is exactly representable, so any order of
    summation gives the exact result and kernel == reference bit for bit."""
    rng = np.random.default_rng(0)
    x = rng.integers(-8, 9, size=(7, 45)).astype(np.float32)
    codebook = np.arange(-128, 128, dtype=np.float32)
    idx = rng.integers(0, 256, size=(45, 77), dtype=np.uint8)
    np.testing.assert_array_equal(codebook_matmul(x, idx, codebook),
                                  codebook_matmul_reference(x, idx, codebook))


def test_index_beyond_codebook_is_an_error_not_garbage():
    x = np.ones((2, 6), np.float32)
    idx = np.zeros((6, 5), np.uint8)
    idx[3, 4] = 7
    with pytest.raises(ValueError, match="up to 7"):
        codebook_matmul(x, idx, np.ones(4, np.float32))


def test_overflow_is_not_mistaken_for_a_bad_index():
    x = np.full((1, 4), 3e38, np.float32)
    codebook = np.array([3e38, -3e38], np.float32)
    idx = np.array([[0], [1], [0], [1]], np.uint8)
    assert not np.isfinite(codebook_matmul(x, idx, codebook)).any()


GOOD_X, GOOD_IDX, GOOD_CB = np.ones((2, 3), np.float32), np.zeros((3, 4), np.uint8), np.ones(2, np.float32)


@pytest.mark.parametrize("x, idx, codebook, error, match", [
    (GOOD_X.astype(np.float64), GOOD_IDX, GOOD_CB, TypeError, "x must be float32"),
    (GOOD_X, GOOD_IDX.astype(np.int64), GOOD_CB, TypeError, "idx must be uint8"),
    (GOOD_X, GOOD_IDX, GOOD_CB.astype(np.float16), TypeError, "codebook must be float32"),
    (GOOD_X.tolist(), GOOD_IDX, GOOD_CB, TypeError, "numpy array"),
    (GOOD_X[0], GOOD_IDX, GOOD_CB, ValueError, "2-D"),
    (np.ones((3, 2), np.float32).T, GOOD_IDX, GOOD_CB, ValueError, "C-contiguous"),
    (np.ones((2, 4), np.float32), GOOD_IDX, GOOD_CB, ValueError, "do not chain"),
    (GOOD_X, GOOD_IDX, np.ones(257, np.float32), ValueError, "1..256"),
    (GOOD_X, GOOD_IDX, np.ones(0, np.float32), ValueError, "1..256"),
    (np.ones((0, 3), np.float32), GOOD_IDX, GOOD_CB, ValueError, "empty"),
    (np.array([[1, np.nan, 1]] * 2, np.float32), GOOD_IDX, GOOD_CB, ValueError, "x has NaN"),
    (GOOD_X, GOOD_IDX, np.array([1, np.inf], np.float32), ValueError, "codebook has NaN"),
])
def test_bad_input_raises_clear_errors(x, idx, codebook, error, match):
    with pytest.raises(error, match=match):
        codebook_matmul(x, idx, codebook)
