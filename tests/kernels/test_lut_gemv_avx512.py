"""Tests of tinyzip.kernels.lut_gemv_avx512, BiQGEMM's one-row product with each mu = 8 table split
into two 16-entry halves looked up by vpermps. Equation numbers are the module's ((1')-(3')). The
kernel runs where the CPU has AVX-512 (checked first); elsewhere ``lut_linear`` keeps the scalar
one-row kernel, so the tests through ``lut_linear`` assert on every CPU."""
import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hynp

import tinyzip  # noqa: F401  (environment before numba)
from tinyzip.compress import binary_codes as bc
from tinyzip.kernels import lut_gemm as lg
from tinyzip.kernels import lut_gemv_avx512 as lv

_BITS4 = (np.arange(16)[:, None] >> np.arange(4)) & 1                      # (16, 4): bit j of e


def test_the_split_tables_are_used_exactly_where_the_cpu_has_avx512_and_q_is_at_most_3():
    codes, alphas = np.ones((3, 9, 5), np.int8), np.ones((3, 5), np.float32)
    assert (lg.prepare_lut_weights(codes=codes, alphas=alphas).blocks is not None) == lv.HAS_AVX512
    assert lg.prepare_lut_weights(codes=np.ones((4, 9, 5), np.int8), alphas=np.ones((4, 5))).blocks is None


@given(hynp.arrays(np.float32, 24, elements=st.integers(-1000, 1000).map(float)))
def test_eq2_split_each_half_table_entry_is_its_signed_sum(x):
    """L_t[e] = sum_{j<4} (2 bit_j(e) - 1) x[8t + j] and H_t alike on x[8t + 4 + j]: exact for
    integer-valued x."""
    tables = np.empty((6, 16), np.float32)
    lv._build_tables(x, tables)
    np.testing.assert_array_equal(tables, ((2.0 * _BITS4 - 1) @ x.reshape(6, 4).T.astype(np.float64)).T)


@given(hynp.arrays(np.float32, (1, 32), elements=st.integers(-1000, 1000).map(float)))
def test_eq1_split_the_two_halves_sum_to_the_papers_256_entry_table(x):
    """T_t[key] = L_t[key & 15] + H_t[key >> 4] for every key: the mu = 8 table, exactly."""
    tables = np.empty((8, 16), np.float32)
    lv._build_tables(x[0], tables)
    keys = np.arange(256)
    np.testing.assert_array_equal(tables[0::2][:, keys & 15] + tables[1::2][:, keys >> 4], lg.lut_tables(x)[0])


@given(st.integers(1, 200), st.integers(1, 80), st.integers(1, 3), st.data())
def test_eq3_one_row_is_exact_on_integer_inputs_and_scales(K, N, q, data):
    """With small integers for x and alpha every sum is exact in float32, so the one-row LUT path
    must equal the dense product bit for bit: a wrong key, nibble, table or unit would show."""
    x = data.draw(hynp.arrays(np.float32, (1, K), elements=st.integers(-8, 8).map(float)))
    codes = data.draw(hynp.arrays(np.int8, (q, K, N), elements=st.sampled_from([-1, 1])))
    alphas = data.draw(hynp.arrays(np.float32, (q, N), elements=st.integers(-4, 4).map(float)))
    P = lg.prepare_lut_weights(codes=codes, alphas=alphas)
    np.testing.assert_array_equal(lg.lut_linear(x, P, path="lut"),
                                  (x.astype(np.float64) @ bc.dequantize(codes, alphas).astype(np.float64)))


def test_pack_blocks_puts_32_units_of_one_key_index_and_plane_side_by_side():
    rng = np.random.default_rng(0)
    N, q, Kb = 70, 2, 16
    keys_nqt = rng.integers(0, 256, (N, q, Kb), dtype=np.uint8)
    alpha = rng.random((q, N), dtype=np.float32)
    keys, alpha_padded = lv.pack_blocks(keys_nqt, alpha)
    assert keys.shape == (3, Kb, q, 32) and keys.flags.c_contiguous and alpha_padded.shape == (q, 96)
    b, t, i, u = np.meshgrid(*map(np.arange, keys.shape), indexing="ij")
    unit = 32 * b + u
    real = unit < N
    np.testing.assert_array_equal(keys[real], keys_nqt[unit[real], i[real], t[real]])
    assert not keys[~real].any() and not alpha_padded[:, N:].any()
    np.testing.assert_array_equal(alpha_padded[:, :N], alpha)


def test_large_one_row_layers_on_both_thread_counts_equal_dense_within_the_bound(monkeypatch):
    rng = np.random.default_rng(1)
    K, N, q = 1000, 333, 3
    x = rng.normal(size=(1, K)).astype(np.float32)
    codes = rng.choice(np.array([-1, 1], np.int8), size=(q, K, N))
    alphas = rng.random((q, N), dtype=np.float32)
    P = lg.prepare_lut_weights(codes=codes, alphas=alphas)
    dense = x.astype(np.float64) @ bc.dequantize(codes, alphas).astype(np.float64)
    bound = 3.0 * (K + 16 + q) * float(np.finfo(np.float32).eps) * (np.abs(x).sum() * alphas.sum(axis=0))
    for serial_work in (1 << 62, 0):
        monkeypatch.setattr(lv, "SERIAL_WORK", serial_work)
        assert np.all(np.abs(lg.lut_linear(x, P, path="lut") - dense) <= bound)
