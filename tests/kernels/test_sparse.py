"""Tests of tinyzip/kernels/sparse.py: y = x @ W with W pruned (Han et al. 2015, arXiv:1506.02626)
and stored as CSC, against its dense NumPy reference.

Tolerance: zero weights contribute exact zeros, so the kernel sums the same nonzero products
as the dense reference in another order; both lie within gamma_K |x| @ |W| of the exact
result (Higham, Sec. 3.1), gamma_K = K u / (1 - K u), u = eps / 2, plus one smallest subnormal
per underflowing product."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

import tinyzip  # noqa: F401  (environment before numba)
from strategies import floats_st
from tinyzip.kernels.sparse import (CSCMatrix, csc_to_dense, sparse_matmul, sparse_matmul_reference,
                                    to_csc)

F32 = np.finfo(np.float32)


def dot_bound(x, W, sides=2):
    """sides * gamma_K * (|x| @ |W|) + K * smallest subnormal, in float64."""
    K = x.shape[1]
    u = F32.eps / 2
    return sides * K * u / (1 - K * u) * (np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64))) \
        + K * F32.smallest_subnormal


@st.composite
def pruned_case_st(draw, max_m=9, max_k=17, max_n=70):
    """x (M, K) and W (K, N) with an exact fraction of its entries set to zero."""
    M, K, N = draw(st.integers(1, max_m)), draw(st.integers(1, max_k)), draw(st.integers(1, max_n))
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]) | st.floats(0, 1))
    x = draw(hynp.arrays(np.float32, (M, K), elements=floats_st(np.float32)))
    W = draw(hynp.arrays(np.float32, (K, N), elements=floats_st(np.float32)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    W.reshape(-1)[rng.permutation(W.size)[: round(sparsity * W.size)]] = 0
    return x, W


@given(case=pruned_case_st())
def test_kernel_equals_dense_reference_within_dot_product_bound(case):
    x, W = case
    csc = to_csc(W)
    y = sparse_matmul(x, csc)
    ref = sparse_matmul_reference(x, csc)
    assert y.dtype == np.float32 and y.shape == (x.shape[0], W.shape[1])
    assert (np.abs(y.astype(np.float64) - ref) <= dot_bound(x, W)).all()


@given(case=pruned_case_st())
def test_to_csc_round_trip_and_structure(case):
    _, W = case
    csc = to_csc(W)
    np.testing.assert_array_equal(csc_to_dense(csc), W)
    assert csc.nnz == np.count_nonzero(W) and csc.shape == W.shape
    np.testing.assert_array_equal(np.diff(csc.indptr), np.count_nonzero(W, axis=0))
    for n in range(W.shape[1]):
        rows = csc.indices[csc.indptr[n]:csc.indptr[n + 1]]
        np.testing.assert_array_equal(rows, np.flatnonzero(W[:, n]))
        np.testing.assert_array_equal(csc.values[csc.indptr[n]:csc.indptr[n + 1]], W[rows, n])


@pytest.mark.parametrize("M", [1, 6, 32])
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
def test_large_shapes_cross_blocks(M, sparsity):
    rng = np.random.default_rng(M)
    K, N = 301, 531
    x = rng.normal(size=(M, K)).astype(np.float32)
    W = rng.normal(size=(K, N)).astype(np.float32)
    W[rng.random((K, N)) < sparsity] = 0
    y = sparse_matmul(x, to_csc(W))
    assert (np.abs(y.astype(np.float64) - x @ W) <= dot_bound(x, W)).all()


def test_exact_on_integer_valued_data():
    """Small integers: all sums exact, so kernel == reference bit for bit, for M = 1 and M > 1."""
    rng = np.random.default_rng(1)
    W = rng.integers(-9, 10, size=(37, 41)).astype(np.float32)
    csc = to_csc(W)
    for M in (1, 9):
        x = rng.integers(-9, 10, size=(M, 37)).astype(np.float32)
        np.testing.assert_array_equal(sparse_matmul(x, csc), sparse_matmul_reference(x, csc))


def test_csc_arrays_are_private_read_only_copies():
    W = np.array([[0, 2], [3, 0]], np.float32)
    indptr, indices, values = np.array([0, 1, 2]), np.array([1, 0], np.int32), np.array([3, 2], np.float32)
    csc = CSCMatrix((2, 2), indptr, indices, values)
    values[0] = 99
    np.testing.assert_array_equal(csc_to_dense(csc), W)
    with pytest.raises(ValueError):
        csc.values[0] = 5


I64, I32, F = (lambda *v: np.array(v, np.int64)), (lambda *v: np.array(v, np.int32)), \
    (lambda *v: np.array(v, np.float32))


@pytest.mark.parametrize("args, error, match", [
    (((2, 2), I64(0, 1, 2), I32(0, 1), F(1, 2)), None, None),
    (((2, 2), I32(0, 1, 2), I32(0, 1), F(1, 2)), TypeError, "indptr must be a 1-D int64"),
    (((2, 2), I64(0, 1, 2), I64(0, 1), F(1, 2)), TypeError, "indices must be a 1-D int32"),
    (((2, 2), I64(0, 1, 2), I32(0, 1), np.ones(2)), TypeError, "values must be a 1-D float32"),
    (((2, 0), I64(0), I32(), F()), ValueError, "shape"),
    (((2, 2, 1), I64(0, 1, 2), I32(0, 1), F(1, 2)), ValueError, "shape"),
    (((2, 2), I64(0, 1), I32(0), F(1)), ValueError, "N \\+ 1"),
    (((2, 2), I64(1, 1, 2), I32(0, 1), F(1, 2)), ValueError, "start at 0"),
    (((2, 2), I64(0, 2, 1), I32(0, 1), F(1, 2)), ValueError, "non-decreasing"),
    (((2, 2), I64(0, 1, 3), I32(0, 1), F(1, 2)), ValueError, "nonzeros"),
    (((2, 2), I64(0, 1, 2), I32(0, 2), F(1, 2)), ValueError, "row indices must lie"),
    (((2, 2), I64(0, 2, 2), I32(1, 0), F(1, 2)), ValueError, "increase strictly"),
    (((2, 2), I64(0, 2, 2), I32(1, 1), F(1, 2)), ValueError, "increase strictly"),
    (((2, 2), I64(0, 1, 2), I32(0, 1), F(1, np.nan)), ValueError, "NaN"),
])
def test_csc_matrix_validates_its_structure(args, error, match):
    if error is None:
        assert CSCMatrix(*args).nnz == 2
    else:
        with pytest.raises(error, match=match):
            CSCMatrix(*args)


CSC = to_csc(np.eye(3, dtype=np.float32))


@pytest.mark.parametrize("x, csc, error, match", [
    (np.ones((2, 3)), CSC, TypeError, "float32"),
    (np.ones((2, 3), np.float32), np.eye(3, dtype=np.float32), TypeError, "CSCMatrix"),
    (np.ones((2, 4), np.float32), CSC, ValueError, "K = 3"),
    (np.ones(3, np.float32), CSC, ValueError, "K = 3"),
    (np.ones((0, 3), np.float32), CSC, ValueError, "M >= 1"),
    (np.ones((3, 2), np.float32).T, CSC, ValueError, "C-contiguous"),
    (np.full((1, 3), np.inf, np.float32), CSC, ValueError, "NaN or inf"),
])
def test_bad_input_raises_clear_errors(x, csc, error, match):
    with pytest.raises(error, match=match):
        sparse_matmul(x, csc)


@pytest.mark.parametrize("W, error", [(np.eye(2), TypeError), (np.zeros((0, 2), np.float32), ValueError),
                                      (np.full((2, 2), np.nan, np.float32), ValueError)])
def test_to_csc_rejects_bad_weights(W, error):
    with pytest.raises(error):
        to_csc(W)
