"""Tests of tinyzip.kernels.int8_vnni, the AVX-512 VNNI (vpdpbusd) int8 microkernel: its layout and
the unsigned-offset identity, and layers built with ``vnni=True`` against Jacob's Eq. (7) reference
(``int8_linear_reference``) bit for bit. Those layers run the VNNI kernel exactly where the CPU has
AVX512_VNNI (checked first) and the AVX2 or portable kernel elsewhere, so every test asserts on
every CPU."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinyzip  # noqa: F401  (environment before numba)
from tinyzip.compress import uniform as U
from tinyzip.kernels import int8 as I
from tinyzip.kernels.int8_vnni import accumulator_start, pack_vnni

from tests.strategies import linear_st



def test_vnni_layers_use_the_vnni_kernel_exactly_where_the_cpu_has_it():
    weights = I.prepare_int8_weights(np.ones((5, 7), np.int8), np.ones(5), vnni=True)
    assert (weights.W_vnni is not None) == I.HAS_VNNI == (weights.vnni_start is not None)
    assert I.prepare_int8_weights(np.ones((5, 7), np.int8), np.ones(5)).W_vnni is None   # only when asked


@given(st.integers(1, 40), st.integers(1, 30), st.integers(0, 2 ** 31))
def test_pack_vnni_puts_four_k_of_sixteen_columns_in_each_64_bytes(N, K, seed):
    """Wv[b, j, 4c + i] = W_t[16b + c, 4j + i], and zero in the padding."""
    W_t = np.random.default_rng(seed).integers(-128, 128, (N, K)).astype(np.int8)
    Wv = pack_vnni(W_t)
    assert Wv.shape == (-(-N // 16), -(-K // 4), 64) and Wv.flags.c_contiguous
    b, j, c, i = np.meshgrid(*(np.arange(s) for s in (Wv.shape[0], Wv.shape[1], 16, 4)), indexing="ij")
    n, k = 16 * b + c, 4 * j + i
    inside = (n < N) & (k < K)
    expected = np.where(inside, W_t[np.minimum(n, N - 1), np.minimum(k, K - 1)], 0)
    np.testing.assert_array_equal(Wv[b, j, 4 * c + i], expected)


@given(st.integers(1, 6), st.integers(1, 50), st.integers(1, 40), st.integers(0, 2 ** 31))
def test_the_unsigned_offset_comes_off_exactly_in_wrapping_int32(M, K, N, seed):
    """start[n] + sum_k (qx + 128) W = sum_k qx W, the accumulator in two's-complement int32;
    start is zero past N (the padded columns)."""
    rng = np.random.default_rng(seed)
    qx = rng.integers(-127, 128, (M, K)).astype(np.int64)
    W_t = rng.integers(-128, 128, (N, K)).astype(np.int8)
    start = accumulator_start(W_t)
    assert start.shape == (16 * -(-N // 16),) and not start[N:].any()
    acc = (start[:N].astype(np.int64) + (qx + 128) @ W_t.T.astype(np.int64)).astype(np.int32)  # what vpdpbusd leaves
    assert np.array_equal(acc, qx @ W_t.T.astype(np.int64))


def test_accumulator_start_wraps_like_int32_at_the_largest_k():
    """K = 132104 columns of -128: -128 * sum = 2^14 K leaves int32; the stored value is it mod 2^32."""
    W_t = np.full((3, 132104), -128, np.int8)
    v = (2 ** 14 * 132104) % 2 ** 32
    assert np.all(accumulator_start(W_t)[:3] == (v - 2 ** 32 if v >= 2 ** 31 else v))


@given(linear_st(max_side=53), st.sampled_from([0, I.SERIAL_WORK]))
def test_int8_linear_on_vnni_equals_reference_bit_for_bit(case, serial_work):
    """Shapes cross the 4-row x 64-column tile, K not a multiple of 4; zero points, bias, 1 row."""
    x, W, w_scale, w_zero, bias = case
    y = I.int8_linear(x, I.prepare_weight(W), w_scale, bias, w_zero=w_zero, fallback_batch=None,
                      serial_work=serial_work, vnni=True)
    np.testing.assert_array_equal(y, U.int8_linear_reference(x, W, w_scale, w_zero, bias))


@pytest.mark.parametrize("M, K, N", [(9, 1201, 53), (3, 600, 30), (130, 300, 70)])
def test_int8_linear_on_vnni_crosses_the_k_blocks(M, K, N):
    """K past the 64-quad cache block (and its remainder), a batch past 128 rows: still the reference."""
    rng = np.random.default_rng(K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    W = rng.integers(-128, 128, (K, N)).astype(np.int8)
    w_scale, w_zero = rng.uniform(0.01, 1.0, N), rng.integers(-20, 21, N).astype(np.int32)
    y = I.int8_linear(x, I.prepare_weight(W), w_scale, w_zero=w_zero, fallback_batch=None, vnni=True)
    np.testing.assert_array_equal(y, U.int8_linear_reference(x, W, w_scale, w_zero))


def test_int8_linear_on_vnni_at_the_largest_k_does_not_overflow():
    """qx = -127 (x all -1), W all -128: K = 132104 is the largest K with K * 127 * 128 <= 2^31 - 1; the
    raw sums (qx + 128 = 1) and the offset 128 colsum wrap, their difference does not."""
    K, M, N = 132104, 5, 19
    x, W = -np.ones((M, K), np.float32), np.full((K, N), -128, np.int8)
    y = I.int8_linear(x, I.prepare_weight(W), np.ones(N), fallback_batch=None, vnni=True)
    np.testing.assert_array_equal(y, U.int8_linear_reference(x, W, np.ones(N)))
    assert np.all(y == np.float32(K * 127 * 128 / 127))  # S_x = 1/127, S_W = 1


@given(linear_st(max_side=9), st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
def test_nan_or_inf_anywhere_in_x_raises_on_vnni(case, bad, data):
    x, W, w_scale, w_zero, bias = case
    x = x.copy()
    x[data.draw(st.integers(0, x.shape[0] - 1)), data.draw(st.integers(0, x.shape[1] - 1))] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        I.int8_linear(x, I.prepare_weight(W), w_scale, bias, w_zero=w_zero, fallback_batch=None, vnni=True)


def test_the_model_bridge_runs_dynamic_int8_layers_on_vnni_below_its_fallback_batch():
    from tinyzip import compressed
    rng = np.random.default_rng(0)
    packed = U.pack_uniform(rng.standard_normal((40, 24)).astype(np.float32), 8, "channel")
    x = rng.standard_normal((I.PACKED_FALLBACK_BATCH - 1, 40)).astype(np.float32)
    W_q, scale, zero = compressed.uniform_codes(packed)
    np.testing.assert_array_equal(compressed._int8_matmul(packed)(x), U.int8_linear_reference(x, W_q, scale, zero))


def test_the_bridge_keeps_vnni_at_every_batch_from_every_batch_k_and_falls_back_below():
    """At PACKED_FALLBACK_BATCH rows a K = EVERY_BATCH_K layer is Eq. (7) bit for bit on VNNI CPUs
    (no float fallback) and x @ unpack(packed) elsewhere; a K = EVERY_BATCH_K - 1 layer falls back everywhere."""
    from tinyzip import compressed
    from tinyzip.kernels.int8_vnni import EVERY_BATCH_K
    rng = np.random.default_rng(1)
    for K, on_vnni in ((EVERY_BATCH_K, I.HAS_VNNI), (EVERY_BATCH_K - 1, False)):
        packed = U.pack_uniform(rng.standard_normal((K, 20)).astype(np.float32), 8, "channel")
        x = rng.standard_normal((I.PACKED_FALLBACK_BATCH, K)).astype(np.float32)
        W_q, scale, zero = compressed.uniform_codes(packed)
        expected = U.int8_linear_reference(x, W_q, scale, zero) if on_vnni else x @ compressed.unpack(packed)
        np.testing.assert_array_equal(compressed._int8_matmul(packed)(x), expected)
