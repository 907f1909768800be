"""compressed._int8_matmul: every packed uniform variant the int8 kernel accepts (2-8 bits, per tensor
or per channel, symmetric or affine) gives the dequantized path's product (Jacob et al. 2018,
arXiv 1712.05877, Eq. (7): the weight zero point enters through the row sums of qx)."""
import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip import compressed
from tinyzip.compress import uniform as U
from tinyzip.kernels import int8 as I
from tests.strategies import floats_st, matrix_st

variant_st = st.tuples(st.integers(2, 8), st.sampled_from(["tensor", "channel"]), st.booleans())


@st.composite
def layer_st(draw, max_rows):
    W = draw(matrix_st(max_side=13, dtype=np.float32))                          # (K, N)
    M = draw(st.integers(1, max_rows))
    x = draw(hynp.arrays(np.float32, (M, W.shape[0]), elements=floats_st(np.float32, 10.0)))
    return x, W


@given(layer_st(max_rows=9), variant_st)
@example((np.array([[1.0, -2.0]], np.float32), np.array([[-1.0], [1.0]], np.float32)), (2, "tensor", False))
def test_eq7_kernel_path_equals_dequantized_path_on_quantized_activations(layer, variant):
    """Below FALLBACK_BATCH: y = float32(x_hat @ W_hat) with x_hat = S_x qx the per-row quantized
    activations and W_hat = unpack(packed), up to float32 rounding (W_hat is float32 itself)."""
    (x, W), (bits, granularity, symmetric) = layer, variant
    packed = U.pack_uniform(W, bits, granularity, symmetric)
    y = compressed._int8_matmul(packed)(x)
    qx, sx = U.quantize_rows_reference(x)
    x_hat = sx[:, None] * qx.astype(np.float64)                                 # (M, K)
    W_hat = compressed.unpack(packed).astype(np.float64)                        # (K, N)
    bound = (np.abs(x_hat) @ np.abs(W_hat)) * 2.0 ** -22
    assert np.all(np.abs(y - x_hat @ W_hat) <= bound + np.finfo(np.float32).tiny)


@given(layer_st(max_rows=3), variant_st)
def test_large_batches_run_the_dequantized_sgemm_exactly(layer, variant):
    """From the bridge's fallback batch on (PACKED_FALLBACK_BATCH with a packed layout) it is
    x @ unpack(packed), bit for bit."""
    (x, W), (bits, granularity, symmetric) = layer, variant
    fallback = I.PACKED_FALLBACK_BATCH if I.HAS_AVX2 or I.HAS_VNNI else I.FALLBACK_BATCH
    x = np.repeat(x, -(-fallback // x.shape[0]), axis=0)                          # >= fallback rows
    packed = U.pack_uniform(W, bits, granularity, symmetric)
    np.testing.assert_array_equal(compressed._int8_matmul(packed)(x), x @ compressed.unpack(packed))


def test_bucketed_grids_stay_on_the_dequantized_path():
    W = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    assert compressed._int8_matmul(U.pack_uniform(W, 8, "bucket", bucket_size=4)) is None
