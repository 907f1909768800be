"""Tests of tinyzip/kernels/codebook_avx512.py, the codebook matmul with a codebook of at most 16
entries in one zmm register (vpermps), through ``codebook_matmul(..., blocks)``: it runs there on
AVX-512 CPUs and ``codebook.py``'s kernel elsewhere, so every test asserts on every CPU.
Bound: ``test_codebook.dot_bound`` (gamma_K per side, Higham Sec. 3.1)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

import tinyzip  # noqa: F401  (environment before numba)
from strategies import floats_st
from test_codebook import dot_bound
from tinyzip.kernels import codebook_avx512 as cv
from tinyzip.kernels.codebook import codebook_matmul, codebook_matmul_reference


@st.composite
def case_st(draw, integers=False):
    """x (M, K), idx (K, N) < k <= 16, codebook (k,): N crosses the 64-column blocks, M the row
    tiles of 6, 4 and 1 (and 8 as two of 4)."""
    M = draw(st.sampled_from([1, 2, 4, 5, 6, 7, 8, 9, 13]))
    K, N, k = draw(st.integers(1, 300)), draw(st.integers(1, 200)), draw(st.integers(1, 16))
    values = st.integers(-8, 8).map(float) if integers else floats_st(np.float32)
    x = draw(hynp.arrays(np.float32, (M, K), elements=values))
    idx = draw(hynp.arrays(np.uint8, (K, N), elements=st.integers(0, k - 1)))
    codebook = draw(hynp.arrays(np.float32, k, elements=values))
    return x, idx, codebook


@given(case=case_st())
def test_kernel_equals_reference_within_the_dot_product_bound(case):
    x, idx, codebook = case
    y = codebook_matmul(x, idx, codebook, cv.pack_blocks(idx))
    assert y.dtype == np.float32 and y.shape == (x.shape[0], idx.shape[1]) and y.flags.c_contiguous
    ref = codebook_matmul_reference(x, idx, codebook)
    assert (np.abs(y.astype(np.float64) - ref) <= dot_bound(x, codebook[idx])).all()


@given(case=case_st(integers=True))
def test_kernel_is_exact_on_integer_data(case):
    """Small integers: every sum is exact in float32, so y equals the exact product bit for bit;
    a wrong index, lane, row or block would show."""
    x, idx, codebook = case
    exact = x.astype(np.float64) @ codebook[idx].astype(np.float64)
    np.testing.assert_array_equal(codebook_matmul(x, idx, codebook, cv.pack_blocks(idx)), exact)


def test_pack_blocks_puts_64_columns_of_one_row_side_by_side():
    idx = np.random.default_rng(0).integers(0, 256, (5, 150), dtype=np.uint8)
    blocks = cv.pack_blocks(idx)
    assert blocks.shape == (3, 5, 64) and blocks.flags.c_contiguous
    b, k, c = np.meshgrid(*map(np.arange, blocks.shape), indexing="ij")
    real = 64 * b + c < 150
    np.testing.assert_array_equal(blocks[real], idx[k[real], (64 * b + c)[real]])
    assert not blocks[~real].any()


@pytest.mark.parametrize("bad", [5, 15, 16, 17, 200])
def test_an_index_beyond_the_codebook_is_an_error_also_where_vpermps_would_wrap_it(bad):
    """vpermps reads 4 bits of an index: 17 would read entry 1. Entries 4..15 are NaN, and every
    index read is ORed into a check, so each bad index raises."""
    idx = np.zeros((70, 100), np.uint8)
    idx[69, 99] = bad
    for rows in (1, 6):
        with pytest.raises(ValueError, match=f"up to {bad}"):
            codebook_matmul(np.ones((rows, 70), np.float32), idx, np.ones(4, np.float32), cv.pack_blocks(idx))


def test_blocks_of_another_idx_are_refused():
    idx = np.zeros((6, 5), np.uint8)
    with pytest.raises(ValueError, match="pack_blocks"):
        codebook_matmul(np.ones((1, 6), np.float32), idx, np.ones(4, np.float32), cv.pack_blocks(idx[:5]))
    with pytest.raises(TypeError, match="uint8"):
        cv.pack_blocks(idx.astype(np.int16))


@pytest.mark.parametrize("M", [1, 11])
def test_large_layers_on_both_thread_counts_equal_the_reference(M, monkeypatch):
    rng = np.random.default_rng(1)
    K, N = 1000, 333
    x = rng.normal(size=(M, K)).astype(np.float32)
    idx = rng.integers(0, 16, (K, N), dtype=np.uint8)
    codebook = rng.normal(size=16).astype(np.float32)
    ref = codebook_matmul_reference(x, idx, codebook)
    for serial_work in (1 << 62, 0):
        monkeypatch.setattr(cv, "SERIAL_WORK", serial_work)
        y = codebook_matmul(x, idx, codebook, cv.pack_blocks(idx))
        assert (np.abs(y.astype(np.float64) - ref) <= dot_bound(x, codebook[idx])).all()
