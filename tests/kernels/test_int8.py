"""kernels/int8.py against its NumPy references in compress/uniform.py (Jacob et al. 2018,
arXiv 1712.05877: Eq. (4), (7) and the gemmlowp output stage). Integer results are compared
exactly; shapes cross the 2 x 4 register tile (1..17) so every remainder path runs."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.compress import integer_only
from tinyzip.compress import uniform as U
from tinyzip.kernels import int8 as I
from tests.strategies import linear_st

i8 = st.integers(-128, 127)


@st.composite
def gemm_st(draw, max_side=17):
    M, K, N = (draw(st.integers(1, max_side)) for _ in range(3))
    qx = draw(hynp.arrays(np.int8, (M, K), elements=i8))
    W = draw(hynp.arrays(np.int8, (K, N), elements=i8))
    zx = draw(st.none() | hynp.arrays(np.int32, M, elements=i8))
    zw = draw(st.none() | hynp.arrays(np.int32, N, elements=i8))
    bias = draw(st.none() | hynp.arrays(np.int32, N, elements=st.integers(-(2 ** 20), 2 ** 20)))
    return qx, W, zx, zw, bias


@given(gemm_st())
def test_eq4_int8_gemm_equals_reference_bit_for_bit(case):
    qx, W, zx, zw, bias = case
    expected = U.int8_matmul_reference(qx, W, 0 if zx is None else zx, 0 if zw is None else zw, bias)
    np.testing.assert_array_equal(I.int8_gemm(qx, I.prepare_weight(W), zx, zw, bias), expected)


@pytest.mark.parametrize("M, N", [(1, 5), (3, 4)])
def test_int8_gemm_all_minus_128_at_the_largest_k_does_not_overflow(M, N):
    """K = 131071 is the largest K with K * 128^2 <= 2^31 - 1; every output is K * 2^14."""
    K = 131071
    qx, W_t = np.full((M, K), -128, np.int8), np.full((N, K), -128, np.int8)
    acc = I.int8_gemm(qx, W_t)
    assert np.all(acc == K * 2 ** 14)
    np.testing.assert_array_equal(acc, U.int8_matmul_reference(qx, np.ascontiguousarray(W_t.T)))
    with pytest.raises(ValueError, match="overflow"):
        I.int8_gemm(np.full((1, K + 1), -128, np.int8), np.full((1, K + 1), -128, np.int8))


@st.composite
def requant_st(draw):
    M, N = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    extremes = st.sampled_from([U.INT32_MIN, U.INT32_MAX, -1, 0, 1])
    acc = draw(hynp.arrays(np.int32, (M, N), elements=st.integers(U.INT32_MIN, U.INT32_MAX) | extremes))
    M0 = draw(hynp.arrays(np.int32, N, elements=st.integers(2 ** 30, 2 ** 31 - 1)))
    shift = draw(hynp.arrays(np.int32, N, elements=st.integers(0, 31)))
    return acc, M0, shift, draw(i8)


@given(requant_st())
def test_eq6_requantize_equals_reference_bit_for_bit(case):
    acc, M0, shift, z_out = case
    np.testing.assert_array_equal(I.requantize(acc, M0, shift, z_out),
                                  U.requantize_reference(acc, M0, shift, z_out))


@given(requant_st())
def test_single_rounding_requantize_equals_its_reference_bit_for_bit(case):
    """TFLite's single rounding, (acc M0_q + 2^(30 + shift)) >> (31 + shift), in the kernel and in NumPy."""
    acc, M0, shift, z_out = case
    np.testing.assert_array_equal(I.requantize(acc, M0, shift, z_out, rounding="single"),
                                  integer_only.requantize_single_reference(acc, M0, shift, z_out))


@given(linear_st(), st.sampled_from(["NK", "KN"]), st.sampled_from([0, I.SERIAL_WORK]))
def test_int8_linear_equals_reference_bit_for_bit(case, layout, serial_work):
    """Per-row symmetric activation quantization + int32 GEMM + float64 epilogue, all exact, on the
    parallel (serial_work=0) and the one-thread kernel."""
    x, W, w_scale, w_zero, bias = case
    W_q = I.prepare_weight(W) if layout == "NK" else W
    y = I.int8_linear(x, W_q, w_scale, bias, w_zero=w_zero, layout=layout, fallback_batch=None,
                      serial_work=serial_work)
    np.testing.assert_array_equal(y, U.int8_linear_reference(x, W, w_scale, w_zero, bias))


@given(linear_st(max_side=9))
def test_int8_linear_fallback_is_dequantized_sgemm(case):
    """From fallback_batch rows on: y = x @ W_hat + b in float32, within K eps (|x| @ |W_hat| + |b|)."""
    x, W, w_scale, w_zero, bias = case
    zw = np.zeros(W.shape[1], np.int64) if w_zero is None else w_zero.astype(np.int64)
    W_hat = (w_scale.astype(np.float64) * (W.astype(np.int64) - zw)).astype(np.float32).astype(np.float64)
    b = np.zeros(W.shape[1]) if bias is None else bias.astype(np.float64)
    y = I.int8_linear(x, I.prepare_weight(W), w_scale, bias, w_zero=w_zero, fallback_batch=1)
    x64 = x.astype(np.float64)
    tol = (W.shape[0] + 2) * np.finfo(np.float32).eps * (np.abs(x64) @ np.abs(W_hat) + np.abs(b))
    assert np.all(np.abs(y - (x64 @ W_hat + b)) <= tol + 1e-30)
    W_hat32 = W_hat.astype(np.float32)  # a caller-kept dequantized copy is used as is
    y_kept = I.int8_linear(x, I.prepare_weight(W), w_scale, bias, w_zero=w_zero, fallback_batch=1, W_hat=W_hat32)
    np.testing.assert_array_equal(y_kept, x @ W_hat32 + b.astype(np.float32))


@given(linear_st(max_side=29), st.booleans(), st.lists(st.integers(1, 6), min_size=1, max_size=4))
def test_prepared_weight_reused_across_calls_equals_reference(case, packed, batches):
    """One ``prepare_int8_weights`` serves every later call, as a model layer uses it: each call (any
    batch, bias or none) equals the reference bit for bit, and from fallback_batch rows on it is the
    float path on the W_hat made at the first such call and kept."""
    x, W, w_scale, w_zero, bias = case
    W_t = I.prepare_weight(W)
    weights = I.prepare_int8_weights(W_t, w_scale, w_zero=w_zero, fallback_batch=5,
                                     W_packed=I.pack_weight(W_t) if packed else None)
    for M in batches:
        xm = np.resize(x, (M, x.shape[1]))
        y = I.int8_linear_prepared(xm, weights, bias)
        if M < 5:
            np.testing.assert_array_equal(y, U.int8_linear_reference(xm, W, w_scale, w_zero, bias))
        else:
            np.testing.assert_array_equal(y, I.int8_linear(xm, W_t, w_scale, bias, w_zero=w_zero, fallback_batch=5))
            assert weights.W_hat is not None


@given(linear_st(max_side=9), st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
def test_nan_or_inf_anywhere_in_x_raises_on_every_path(case, bad, data):
    """The non-finite check rides on the quantizer's max|x| pass: it must see every element, on the
    portable, packed and float paths alike."""
    x, W, w_scale, w_zero, bias = case
    m, k = data.draw(st.integers(0, x.shape[0] - 1)), data.draw(st.integers(0, x.shape[1] - 1))
    x = x.copy()
    x[m, k] = bad
    W_t = I.prepare_weight(W)
    for W_packed, fallback in ((None, None), (I.pack_weight(W_t), None), (None, 1)):
        with pytest.raises(ValueError, match="NaN or inf"):
            I.int8_linear(x, W_t, w_scale, bias, w_zero=w_zero, W_packed=W_packed, fallback_batch=fallback)
        with pytest.raises(ValueError, match="NaN or inf"):                  # static activation grid
            I.int8_linear_static(x, I.prepare_int8_weights(W_t, w_scale, w_zero=w_zero, W_packed=W_packed),
                                 0.05, 3, 8)


def test_int8_linear_is_close_to_float_on_a_real_layer():
    """Weights per channel + activations per token, 8 bits: ~1% of max|y| (perf-notes: 1.0-1.4%)."""
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((5, 64)).astype(np.float32), rng.standard_normal((64, 33)).astype(np.float32)
    packed = U.pack_uniform(W, 8, "channel")
    y = I.int8_linear(x, I.prepare_weight(packed.arrays["values"]), packed.arrays["scales"][0])
    assert np.abs(y - x @ W).max() <= 0.03 * np.abs(x @ W).max()


def test_bad_inputs_raise_clear_errors():
    qx, W_t = np.ones((2, 3), np.int8), np.ones((4, 3), np.int8)
    with pytest.raises(TypeError, match="int8"):
        I.int8_gemm(qx.astype(np.int16), W_t)
    with pytest.raises(ValueError, match="differ in K"):
        I.int8_gemm(qx, np.ones((4, 5), np.int8))
    with pytest.raises(ValueError, match="C-contiguous"):
        I.int8_gemm(qx, np.ones((3, 4), np.int8).T)
    with pytest.raises(ValueError, match="empty"):
        I.int8_gemm(np.ones((0, 3), np.int8), W_t)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        I.int8_gemm(qx, W_t, zw=np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="integer"):
        I.int8_gemm(qx, W_t, zx=np.zeros(2))
    with pytest.raises(ValueError, match="shift"):
        I.requantize(np.ones((2, 2), np.int32), 2 ** 30, 32)
    with pytest.raises(TypeError, match="int32"):
        I.requantize(np.ones((2, 2), np.int64), 2 ** 30, 3)
    with pytest.raises(ValueError, match="rounding"):
        I.requantize(np.ones((2, 2), np.int32), 2 ** 30, 3, rounding="even")
    x = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="float32"):
        I.int8_linear(x.astype(np.float64), W_t, np.ones(4))
    for wrong_axes in (x[0], x[None]):                  # a shape error, as in the other kernels
        with pytest.raises(ValueError, match="2-D"):
            I.int8_linear(wrong_axes, W_t, np.ones(4))
    bad = x.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        I.int8_linear(bad, W_t, np.ones(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        I.int8_linear(x, W_t, np.array([1.0, np.inf, 1.0, 1.0]))
    with pytest.raises(ValueError, match="layout"):
        I.int8_linear(x, W_t, np.ones(4), layout="T")
    with pytest.raises(ValueError, match="does not match"):
        I.int8_linear(x, W_t, np.ones(3), layout="KN")
    with pytest.raises(TypeError, match="W_hat"):
        I.int8_linear(x, W_t, np.ones(4), fallback_batch=1, W_hat=np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="prepare_int8_weights"):
        I.int8_linear_prepared(x, W_t)
    with pytest.raises(ValueError, match="does not match"):
        I.int8_linear_prepared(np.ones((2, 5), np.float32), I.prepare_int8_weights(W_t, np.ones(4)))


def test_pack_weight_layout_matches_its_definition():
    """Wp[b, j, 2c + i] = W_t[8b + c, 2j + i], zero past N or K (the padding adds nothing)."""
    W_t = np.random.default_rng(1).integers(-128, 128, (13, 7)).astype(np.int8)
    Wp = I.pack_weight(W_t)
    assert Wp.shape == (2, 4, 16)
    for b, j, c, i in np.ndindex(2, 4, 8, 2):
        n, k = 8 * b + c, 2 * j + i
        assert Wp[b, j, 2 * c + i] == (W_t[n, k] if n < 13 and k < 7 else 0)


@given(linear_st(max_side=53), st.sampled_from([0, I.SERIAL_WORK]))
def test_int8_linear_on_packed_weights_equals_reference_bit_for_bit(case, serial_work):
    """The AVX2 pmaddwd path: (x[2j], x[2j+1]) . (W[2j, n], W[2j+1, n]) summed in int32 is the same Eq. (7)
    product; shapes cross its 4-row x 24-column tile and odd K (zero-padded pair)."""
    x, W, w_scale, w_zero, bias = case
    W_p = I.pack_weight(I.prepare_weight(W))
    y = I.int8_linear(x, I.prepare_weight(W), w_scale, bias, w_zero=w_zero, fallback_batch=None,
                      serial_work=serial_work, W_packed=W_p)
    np.testing.assert_array_equal(y, U.int8_linear_reference(x, W, w_scale, w_zero, bias))


@pytest.mark.parametrize("M, K, N", [(9, 1201, 53), (3, 600, 30)])
def test_int8_linear_on_packed_weights_crosses_the_k_blocks(M, K, N):
    """K past the 256-pair cache block (and its remainder): still equal to the reference."""
    rng = np.random.default_rng(K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    W = rng.integers(-128, 128, (K, N)).astype(np.int8)
    w_scale, w_zero = rng.uniform(0.01, 1.0, N), rng.integers(-20, 21, N).astype(np.int32)
    y = I.int8_linear(x, I.prepare_weight(W), w_scale, w_zero=w_zero, fallback_batch=None,
                      W_packed=I.pack_weight(I.prepare_weight(W)))
    np.testing.assert_array_equal(y, U.int8_linear_reference(x, W, w_scale, w_zero))


def test_int8_linear_on_packed_weights_at_the_largest_k_does_not_overflow():
    """qx = -127 (x all -1), W all -128: K = 132104 is the largest K with K * 127 * 128 <= 2^31 - 1."""
    K, M, N = 132104, 5, 9
    x, W = -np.ones((M, K), np.float32), np.full((K, N), -128, np.int8)
    y = I.int8_linear(x, I.prepare_weight(W), np.ones(N), fallback_batch=None,
                      W_packed=I.pack_weight(I.prepare_weight(W)))
    np.testing.assert_array_equal(y, U.int8_linear_reference(x, W, np.ones(N)))
    assert np.all(y == np.float32(K * 127 * 128 / 127))  # S_x = 1/127, S_W = 1


def test_int8_linear_rejects_a_packed_weight_of_another_shape():
    x, W_t = np.ones((2, 3), np.float32), np.ones((4, 3), np.int8)
    with pytest.raises(TypeError, match="W_packed"):
        I.int8_linear(x, W_t, np.ones(4), W_packed=np.ones((1, 1, 16), np.int8))
    with pytest.raises(TypeError, match="W_packed"):
        I.int8_linear(x, W_t, np.ones(4), W_packed=I.pack_weight(W_t).astype(np.int16))


@st.composite
def static_st(draw, max_side=53):
    M, K, N = draw(st.integers(1, 9)), draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    bits, unsigned = draw(st.integers(2, 8)), draw(st.booleans())
    x = (rng.standard_normal((M, K)) * draw(st.sampled_from([0.01, 1.0, 30.0]))).astype(np.float32)
    lo, hi = sorted(rng.standard_normal(2) * 2)                      # a range that clips some of x
    scale, zero = U.quant_params(0.0 if unsigned else lo, abs(hi), bits, unsigned=unsigned)
    W = rng.integers(-128, 128, (K, N)).astype(np.int8)
    w_scale = rng.uniform(0.01, 1.0, N)
    w_zero = draw(st.none() | st.just(rng.integers(-20, 21, N).astype(np.int32)))
    return x, W, w_scale, w_zero, float(scale), int(zero), bits, unsigned


@given(static_st(), st.booleans(), st.sampled_from([0, I.SERIAL_WORK]))
def test_eq4_int8_linear_static_equals_reference_bit_for_bit(case, packed, serial_work):
    """Jacob Eq. (4) with one static (S_x, Z_x) on every 2..8-bit grid, signed or unsigned (ReLU
    outputs, shifted by -128 into int8): the packed pmaddwd path (int16 qx - Z_x) and the portable
    int8_gemm path both equal the NumPy integer reference exactly; K, N cross the 4 x 24 tile."""
    x, W, w_scale, w_zero, scale, zero, bits, unsigned = case
    W_t = I.prepare_weight(W)
    weights = I.prepare_int8_weights(W_t, w_scale, w_zero=w_zero, W_packed=I.pack_weight(W_t) if packed else None)
    y = I.int8_linear_static(x, weights, scale, zero, bits, unsigned, serial_work=serial_work)
    ref = U.int8_linear_static_reference(x, W, w_scale, w_zero, scale, zero, bits, unsigned)
    np.testing.assert_array_equal(y, ref)


def test_int8_linear_static_at_the_largest_k_does_not_overflow():
    """|qx - Z_x| = 255 (unsigned 8-bit grid, x at its top, Z_x = 0), W all -128: K = 65793 is the
    largest K with K * 255 * 128 <= 2^31 - 1; the packed path still equals the reference."""
    K, M, N = 65793, 2, 9
    x, W = np.full((M, K), 255.0, np.float32), np.full((K, N), -128, np.int8)
    W_t = I.prepare_weight(W)
    y = I.int8_linear_static(x, I.prepare_int8_weights(W_t, np.ones(N), W_packed=I.pack_weight(W_t)), 1.0, 0, 8, True)
    np.testing.assert_array_equal(y, U.int8_linear_static_reference(x, W, np.ones(N), None, 1.0, 0, 8, True))
    assert np.all(y == np.float32(-K * 255 * 128))


def test_int8_linear_static_rejects_bad_input():
    x, W_t = np.ones((2, 3), np.float32), np.ones((4, 3), np.int8)
    weights = I.prepare_int8_weights(W_t, np.ones(4))
    with pytest.raises(ValueError, match="x_scale"):
        I.int8_linear_static(x, weights, 0.0, 0, 8)
    with pytest.raises(ValueError, match="NaN"):
        I.int8_linear_static(np.full((2, 3), np.nan, np.float32), weights, 1.0, 0, 8)
    with pytest.raises(ValueError, match="does not match"):
        I.int8_linear_static(np.ones((2, 5), np.float32), weights, 1.0, 0, 8)
    with pytest.raises(TypeError, match="prepare_int8_weights"):
        I.int8_linear_static(x, W_t, 1.0, 0, 8)
    with pytest.raises(TypeError, match="W_packed"):
        I.prepare_int8_weights(W_t, np.ones(4), W_packed=np.ones((1, 1, 16), np.int8))
    with pytest.raises(ValueError, match="bits"):
        I.int8_linear_static(x, weights, 1.0, 0, 9)
    with pytest.raises(ValueError, match="bits"):
        I.int8_linear_static(x, I.prepare_int8_weights(W_t, np.ones(4), W_packed=I.pack_weight(W_t)), 1.0, 0, 9)


_CACHE_PROBE = """
import sys
import numpy as np
import tinyzip
from tinyzip.kernels import int8 as I
W_t = I.prepare_weight(np.ones((8, 8), np.int8))
for W_packed in (None, I.pack_weight(W_t)):
    I.int8_linear(np.ones((2, 8), np.float32), W_t, np.ones(8), W_packed=W_packed,
                  serial_work=0 if sys.argv[1] == "parallel" else 10 ** 9)
kernels = (I._linear_kernel, I.packed_linear_kernel) if sys.argv[1] == "parallel" else ()
print(sum(sum(k.stats.cache_hits.values()) for k in kernels))
"""


def test_parallel_kernels_never_load_the_serial_variants_cached_code(tmp_path):
    """numba#6845: Numba's cache key ignores ``parallel``, so njit(parallel=True) and njit() of one
    body shared a cache entry and whichever compiled first was loaded for both (after the test suite
    the "parallel" kernels ran on one thread). With a cache holding only the serial variants, a new
    process must compile the parallel ones, not load them."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    probe = [sys.executable, "-c", _CACHE_PROBE]
    subprocess.run(probe + ["serial"], env=env, check=True, capture_output=True)
    run = subprocess.run(probe + ["parallel"], env=env, check=True, capture_output=True, text=True)
    assert run.stdout.strip() == "0"
