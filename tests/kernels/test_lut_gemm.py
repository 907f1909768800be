"""Tests for the BiQGEMM lookup-table matmul (Jeon et al. 2020, SC20, arXiv:2005.09904).
Equation numbers are those of ``tinyzip/kernels/lut_gemm.py``."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hynp

from tests.strategies import floats_st
from tinyzip.compress import binary_codes as bc, chung
from tinyzip.kernels import lut_gemm as lg

EPS32 = float(np.finfo(np.float32).eps)


@st.composite
def lut_case_st(draw):
    """x (M, K) float32 and codes/alphas for W (K, N); M crosses the batch tiles 8/16/32 (16: M = 9,
    16, 48 at q = 1, 3), q the unrolled bit-plane loops (1..3) and the general one (4)."""
    M = draw(st.sampled_from([1, 2, 7, 8, 9, 16, 24, 32, 33, 40, 48]))
    K, N, q = draw(st.integers(1, 70)), draw(st.integers(1, 20)), draw(st.integers(1, 4))
    x = draw(hynp.arrays(np.float32, (M, K), elements=floats_st(np.float32, 4.0)))
    codes = draw(hynp.arrays(np.int8, (q, K, N), elements=st.sampled_from([-1, 1])))
    alphas = draw(hynp.arrays(np.float32, (q, N), elements=floats_st(np.float32, 2.0)))
    return x, codes, alphas


def _bound(x, alphas, Kb):
    """Classical dot-product bound: (#adds in any summation tree) * eps * sum of |terms|; the
    doubling tables' partial sums are at most 3 sum|x_sub| in size, hence the factor 3."""
    abs_terms = np.abs(x.astype(np.float64)).sum(axis=1, keepdims=True) * np.abs(alphas.astype(np.float64)).sum(axis=0)
    return 3.0 * (8 * Kb + 16 + alphas.shape[0]) * EPS32 * abs_terms + 1e-30   # (M, N)


@given(hynp.arrays(np.float64, (3, 16), elements=st.integers(-1000, 1000).map(float)))
def test_eq1_each_table_entry_is_its_signed_sum(x):
    """T_t[key] = sum_j (2 bit_j(key) - 1) x[8t + j], exact for integer-valued x."""
    T = lg.lut_tables(x)                                                   # (3, 2, 256)
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1                   # (256, 8)
    expected = np.einsum("kj,mtj->mtk", 2.0 * bits - 1, x.reshape(3, 2, 8))
    np.testing.assert_array_equal(T, expected)


@given(hynp.arrays(np.float32, (2, 24), elements=floats_st(np.float32, 100.0)))
def test_eq1_flipping_all_key_bits_negates_the_entry(x):
    T = lg.lut_tables(x.astype(np.float64))
    np.testing.assert_allclose(T[:, :, 255 - np.arange(256)], -T, rtol=0, atol=1e-9 * (1 + np.abs(x).sum()))


@given(lut_case_st())
def test_eq3_numpy_lut_reference_equals_dense_matmul(case):
    x, codes, alphas = case
    P = lg.prepare_lut_weights(codes=codes, alphas=alphas)
    Kb = P.keys_nqt.shape[2]
    xp = np.zeros((x.shape[0], 8 * Kb)); xp[:, :x.shape[1]] = x           # zero-padded inputs
    ref = lg.lut_matmul_reference(xp, P.keys_nqt, alphas.astype(np.float64))
    exact = x.astype(np.float64) @ bc.dequantize(codes, alphas.astype(np.float64))
    np.testing.assert_allclose(ref, exact, rtol=0, atol=1e-9 * (1 + np.abs(exact).max()))


@given(lut_case_st(), st.booleans())
def test_eq3_kernel_equals_dense_matmul_with_dequantized_weights(case, with_bias):
    x, codes, alphas = case
    P = lg.prepare_lut_weights(codes=codes, alphas=alphas)
    bias = np.linspace(-1, 1, codes.shape[2]).astype(np.float32) if with_bias else None
    y = lg.lut_linear(x, P, bias, path="lut")
    assert y.dtype == np.float32 and y.shape == (x.shape[0], codes.shape[2])
    dense32 = x @ bc.dequantize(codes, alphas) + (0 if bias is None else bias)
    bound = _bound(x, alphas, P.keys_nqt.shape[2]) + (0 if bias is None else EPS32 * np.abs(bias))
    assert np.all(np.abs(y - dense32) <= 2 * bound)


@pytest.mark.parametrize("M", [1, 2, 9, 33])
@pytest.mark.parametrize("q", [3, 6])
def test_eq3_parallel_kernels_equal_dense_matmul(M, q, monkeypatch):
    """Hypothesis shapes are small, so they run on one thread; force the parallel path here."""
    monkeypatch.setattr(lg, "SERIAL_WORK", 0)
    monkeypatch.setattr(lg.lut_gemv_avx512, "SERIAL_WORK", 0)
    rng = np.random.default_rng(M)
    x = rng.normal(size=(M, 77)).astype(np.float32)
    codes = rng.choice(np.array([-1, 1], np.int8), size=(q, 77, 23))
    alphas = rng.random((q, 23), dtype=np.float32)
    P = lg.prepare_lut_weights(codes=codes, alphas=alphas)
    y = lg.lut_linear(x, P, path="lut")
    assert np.all(np.abs(y - x @ bc.dequantize(codes, alphas)) <= 2 * _bound(x, alphas, P.keys_nqt.shape[2]))


@given(lut_case_st())
def test_dispatch_dense_path_equals_lut_path(case):
    """The dense path is NumPy's float32 product with the dequantized W, the baseline itself, at
    every batch size, and within the LUT kernel's bound of it."""
    x, codes, alphas = case
    P = lg.prepare_lut_weights(bc.pack_binary_codes(codes, alphas))
    bound = _bound(x, alphas, P.keys_nqt.shape[2])
    W = bc.dequantize(codes, alphas)
    expected = x @ W
    np.testing.assert_array_equal(lg.lut_linear(x, P, path="dense"), expected)
    assert np.all(np.abs(lg.lut_linear(x, P, path="dense") - lg.lut_linear(x, P, path="lut")) <= 2 * bound)
    assert np.all(np.abs(lg.lut_linear(x, P) - lg.lut_linear(x, P, path="lut")) <= 2 * bound)


def test_dispatch_rule_keeps_lut_where_it_wins_and_falls_back_where_it_loses():
    """The winners and losers of the measured table in ``use_lut``'s docstring."""
    assert lg.use_lut(8, 1, 4096, 4096) and lg.use_lut(32, 3, 4096, 4096) and lg.use_lut(128, 2, 4096, 4096)
    assert lg.use_lut(1, 2, 4096, 4096) and lg.use_lut(8, 3, 256, 1024)
    assert not lg.use_lut(128, 3, 1024, 1024) and lg.use_lut(128, 3, 4096, 4096)
    assert not lg.use_lut(128, 3, 4096, 1024) and not lg.use_lut(256, 3, 4096, 4096)
    if lg.lut_gemv_avx512.HAS_AVX512:   # one row: the vpermps kernel (1.2-8x numpy from 256 x 1024 up)
        assert lg.use_lut(1, 3, 256, 1024) and lg.use_lut(1, 3, 1024, 256) and not lg.use_lut(1, 1, 512, 128)
    else:
        assert not lg.use_lut(1, 1, 64, 64) and not lg.use_lut(1, 2, 1024, 1024)
    assert not lg.use_lut(1, 4, 4096, 4096)
    assert not lg.use_lut(8, 1, 1024, 256) and not lg.use_lut(8, 4, 4096, 4096)
    assert lg.use_lut(128, 2, 4096, 1024) and lg.use_lut(64, 2, 1024, 1024) and lg.use_lut(128, 1, 4096, 1024)
    assert not lg.use_lut(128, 2, 512, 512) and not lg.use_lut(256, 2, 4096, 4096)


def test_generated_kernel_module_is_up_to_date():
    path = Path(lg.__file__).with_name("_lut_generated.py")
    assert path.read_text() == lg._generated_source()


def _prepared(q=2, K=10, N=3):
    return lg.prepare_lut_weights(codes=np.ones((q, K, N), np.int8), alphas=np.ones((q, N), np.float32))


@pytest.mark.parametrize("codes, alphas", [
    (np.ones((0, 4, 2), np.int8), np.ones((0, 2), np.float32)),           # q = 0
    (np.ones((9, 4, 2), np.int8), np.ones((9, 2), np.float32)),           # q = 9
    (np.zeros((1, 4, 2), np.int8), np.ones((1, 2), np.float32)),          # code 0
    (np.ones((1, 4, 2), np.float32), np.ones((1, 2), np.float32)),        # float codes
    (np.ones((1, 4, 2), np.int8), np.ones((1, 3), np.float32)),           # alphas shape
    (np.ones((1, 4, 2), np.int8), np.full((1, 2), np.inf, np.float32)),   # inf alpha
    (np.ones((4, 2), np.int8), np.ones((1, 2), np.float32))])             # 2-D codes
def test_bad_weights_raise(codes, alphas):
    with pytest.raises(ValueError):
        lg.prepare_lut_weights(codes=codes, alphas=alphas)


@pytest.mark.parametrize("x, error", [
    (np.ones((2, 10)), TypeError), (np.ones((2, 10), np.int32), TypeError),
    (np.ones((2, 9), np.float32), ValueError), (np.ones(10, np.float32), ValueError),
    (np.ones((0, 10), np.float32), ValueError),
    (np.full((2, 10), np.nan, np.float32), ValueError), (np.full((1, 10), np.inf, np.float32), ValueError)])
def test_bad_input_raises(x, error):
    with pytest.raises(error):
        lg.lut_linear(x, _prepared())


@given(lut_case_st(), st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
def test_nan_or_inf_anywhere_in_x_raises_on_every_path(case, bad, data):
    """On the batched LUT path the check rides on the transposing copy of x: it must see every
    element; the M = 1 and dense paths check x themselves."""
    x, codes, alphas = case
    x = x.copy()
    x[data.draw(st.integers(0, x.shape[0] - 1)), data.draw(st.integers(0, x.shape[1] - 1))] = bad
    prepared = lg.prepare_lut_weights(codes=codes, alphas=alphas)
    strided = np.repeat(x, 2, axis=1)[:, ::2]                 # the same values, not contiguous
    for path in ("lut", "dense", "auto"):
        for x_in in (x, strided):
            with pytest.raises(ValueError, match="NaN or inf"):
                lg.lut_linear(x_in, prepared, path=path)


def test_bad_bias_prepared_and_path_raise():
    x = np.ones((2, 10), np.float32)
    with pytest.raises(ValueError):
        lg.lut_linear(x, _prepared(), np.ones(4, np.float32))
    with pytest.raises(TypeError):
        lg.lut_linear(x, "weights")
    with pytest.raises(ValueError):
        lg.lut_linear(x, _prepared(), path="fast")
    with pytest.raises(ValueError):
        lg.prepare_lut_weights()


def test_lut_matmuls_hook_equals_dense_matmul_of_the_unpacked_weights():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(40, 24)).astype(np.float32)
    packed = {"enc.0.ffn.W_1": bc.pack_binary_codes(*bc.greedy_codes(W, 2)),
              "emb": chung.pack_embedding_codes(W.T.copy(), np.ones(24, np.int64))}
    hooks = lg.lut_matmuls(packed)
    assert set(hooks) == {"enc.0.ffn.W_1"}
    x = rng.normal(size=(5, 40))                                           # float64 in, cast to float32
    W_hat = bc.unpack_binary_codes(packed["enc.0.ffn.W_1"])
    bound = _bound(x.astype(np.float32), packed["enc.0.ffn.W_1"].arrays["alphas"], 8)
    assert np.all(np.abs(hooks["enc.0.ffn.W_1"](x) - x.astype(np.float32) @ W_hat) <= 2 * bound)
