"""Tests of tinyzip.kernels.aligned_empty / aligned_copy: arrays like NumPy's whose data starts on
a 64-byte cache line, and the layers' float32 fallback weights that use them."""
import gc

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

import tinyzip  # noqa: F401  (environment before numba)
from tinyzip.compress import binary_codes
from tinyzip.kernels import CACHE_LINE, aligned_copy, aligned_empty
from tinyzip.kernels.int8 import int8_linear_prepared, prepare_int8_weights, prepare_weight
from tinyzip.kernels.lut_gemm import lut_linear, prepare_lut_weights

DTYPES = st.sampled_from([np.float32, np.float64, np.int8, np.int16, np.int32, np.uint8])


@given(hynp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40), DTYPES)
def test_aligned_empty_is_np_empty_on_a_cache_line(shape, dtype):
    a = aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    if a.size:
        assert a.ctypes.data % CACHE_LINE == 0


@given(hynp.arrays(DTYPES, hynp.array_shapes(min_dims=1, max_dims=3, max_side=30)), st.booleans())
def test_aligned_copy_equals_its_input_and_owns_its_memory(a, strided):
    if strided and a.ndim and a.shape[-1] > 1:
        a = a[..., ::2]                                                # a non-contiguous input
    b = aligned_copy(a)
    assert b.dtype == a.dtype and b.shape == a.shape and b.flags.c_contiguous
    assert np.array_equal(b, a, equal_nan=a.dtype.kind == "f")
    assert not np.shares_memory(a, b)
    assert b.ctypes.data % CACHE_LINE == 0


def test_aligned_memory_stays_valid_after_its_buffer_name_is_gone():
    arrays = [aligned_empty((257, 3), np.float64) for _ in range(8)]
    for i, a in enumerate(arrays):
        a[...] = i
    gc.collect()
    junk = [np.full((257, 3), -1.0) for _ in range(8)]                 # reuse freed memory, if any was freed
    assert all(np.all(a == i) for i, a in enumerate(arrays)) and len(junk) == 8


def test_the_lut_layers_float_fallback_weight_sits_on_a_cache_line():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((130, 70)).astype(np.float32)
    B, alpha = binary_codes.greedy_codes(W, 2)
    prepared = prepare_lut_weights(codes=B, alphas=alpha)
    x = rng.standard_normal((3, 130)).astype(np.float32)
    y = lut_linear(x, prepared, path="dense")
    assert prepared.dense.ctypes.data % CACHE_LINE == 0
    np.testing.assert_allclose(y, x @ binary_codes.dequantize(B, alpha), rtol=1e-6, atol=1e-6)


def test_the_int8_layers_float_fallback_weight_sits_on_a_cache_line():
    rng = np.random.default_rng(1)
    W_q = rng.integers(-128, 128, size=(90, 40), dtype=np.int8)      # (K, N)
    scale = rng.uniform(0.01, 0.1, 40)
    weights = prepare_int8_weights(prepare_weight(W_q), scale, fallback_batch=1)
    x = rng.standard_normal((5, 90)).astype(np.float32)
    y = int8_linear_prepared(x, weights)                               # the float path: x @ W_hat
    assert weights.W_hat.ctypes.data % CACHE_LINE == 0
    np.testing.assert_allclose(y, x @ (W_q * scale).astype(np.float32), rtol=1e-5, atol=1e-5)
