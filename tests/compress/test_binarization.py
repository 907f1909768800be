"""compress/binarization.py: BinaryNet (Courbariaux et al. 2016, arXiv 1602.02830), XNOR-Net /
BWN scale (Rastegari et al. 2016, arXiv 1603.05279), Word2Bits (Lam 2018, arXiv 1803.05651)."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.compress import binarization as bn
from tinyzip.nn import optim
from tinyzip.nn.gradcheck import check_backward
from tinyzip.packing import packed_nbytes
from tests.strategies import floats_st, matrix_st

gran_st = st.sampled_from(["tensor", "output", "row"])
AXIS = {"tensor": None, "output": 0, "row": 1}


def test_binarynet_sign_of_zero_and_negative_zero_is_plus_one():
    W = np.array([[0.0, -0.0, -1e-30, 2.0]])
    assert bn.sign(W).tolist() == [[1, 1, -1, 1]]
    assert bn.word2bits_quantize(W, 1)[0, :2].tolist() == [1 / 3, 1 / 3]
    assert bn.word2bits_quantize(W, 2)[0, :2].tolist() == [0.25, 0.25]


@given(matrix_st())
def test_binarynet_sign_is_plus_minus_one_and_idempotent(W):
    B = bn.sign(W)
    assert set(np.unique(B)) <= {-1, 1}
    assert np.array_equal(bn.sign(B.astype(np.float64)), B)
    assert np.array_equal(B[W != 0], np.sign(W[W != 0]))


@given(hynp.arrays(np.float64, st.integers(1, 8), elements=floats_st(bound=5.0)))
def test_xnor_alpha_and_sign_are_optimal_by_exhaustive_search(w):
    """min over all 2^n sign vectors B and alpha >= 0 of ||w - alpha B||^2 equals the closed form
    ||w||^2 - n mean|w|^2, attained at B = Sign(w), alpha = mean|w|."""
    n = w.size
    W = w[None, :]
    closed = float(w @ w) - n * float(np.mean(np.abs(w))) ** 2
    got = float(np.sum((W - bn.binarize(W, "tensor")) ** 2))
    best = min(float(np.sum((w - max(float(w @ np.array(B)) / n, 0.0) * np.array(B)) ** 2))
               for B in itertools.product([-1.0, 1.0], repeat=n))
    assert got == pytest.approx(closed, abs=1e-9) and got <= best + 1e-9


@given(matrix_st(max_side=9), gran_st, st.floats(-0.5, 0.5).filter(lambda d: abs(d) > 1e-6))
def test_xnor_alpha_perturbation_never_lowers_the_error(W, granularity, delta):
    """For fixed signs, J(alpha) is a parabola with minimum at mean|W|: J(alpha + d) >= J(alpha)."""
    alpha = bn.optimal_scale(W, granularity)
    B = bn.sign(W)
    axis = AXIS[granularity]
    J = lambda a: np.sum((W - a * B) ** 2, axis=axis)  # noqa: E731
    assert np.all(J(alpha + delta) >= J(alpha) - 1e-9)
    n = W.size if axis is None else W.shape[axis]
    assert np.allclose(J(alpha), np.sum(W * W, axis=axis) - n * np.squeeze(alpha, axis) ** 2
                       if axis is not None else np.sum(W * W) - n * alpha.item() ** 2, atol=1e-8)


@given(matrix_st(), gran_st)
def test_per_output_and_per_row_never_worse_than_per_tensor(W, granularity):
    err = lambda g: float(np.sum((W - bn.binarize(W, g)) ** 2))  # noqa: E731
    assert err(granularity) <= err("tensor") + 1e-9 * (1 + err("tensor"))


@given(matrix_st(), gran_st, st.integers(-4, 4))
def test_xnor_scale_equivariance_and_degenerate_inputs(W, granularity, e):
    """alpha(cW) = c alpha(W), B(cW) = B(W) for c = 2^e > 0; all-zero W -> 0; constant W exact."""
    c = 2.0 ** e
    assert np.array_equal(bn.optimal_scale(c * W, granularity), c * bn.optimal_scale(W, granularity))
    assert np.array_equal(bn.sign(c * W), bn.sign(W))
    Z = np.zeros_like(W)
    assert np.array_equal(bn.binarize(Z, granularity), Z)
    C = np.full_like(W, -1.25)
    assert np.array_equal(bn.binarize(C, granularity), C)


def test_binarynet_ste_passes_at_the_boundary_and_cancels_beyond():
    """g_r = g_q 1(|r| <= 1): |r| = 1 passes, the next float above 1 does not."""
    r = np.array([-np.nextafter(1.0, 2.0), -1.0, -0.5, 0.0, 1.0, np.nextafter(1.0, 2.0), 3.0])
    g = np.arange(1.0, 8.0)
    assert bn.ste_clipped(g, r).tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]


def _away_from_kinks(draw_W):
    """Entries with |w| in [0.05, 0.95] or [1.05, 2]: no sign flip or clip kink within eps."""
    mag = np.where(draw_W[1], 0.05 + 0.9 * draw_W[0], 1.05 + 0.95 * draw_W[0])
    return mag * np.where(draw_W[2], 1.0, -1.0)


@given(st.integers(0, 2 ** 31), st.sampled_from([None, "tensor", "output", "row"]))
def test_binarize_backward_is_exact_gradient_of_the_ste_surrogate(seed, granularity):
    """backward == d/dW [alpha(W) Sign(W) + alpha_0 Htanh(W)], alpha_0 = alpha(W) held fixed
    (granularity None: d/dW Htanh(W)); float64 central differences."""
    rng = np.random.default_rng(seed)
    W = _away_from_kinks((rng.random((4, 5)), rng.random((4, 5)) < 0.5, rng.random((4, 5)) < 0.5))
    alpha0 = 1.0 if granularity is None else bn.optimal_scale(W, granularity).copy()
    _, cache = bn.binarize_forward(W.copy(), granularity)

    def surrogate(V):
        scaled = 0.0 if granularity is None else bn.optimal_scale(V, granularity) * bn.sign(V)
        return scaled + alpha0 * np.clip(V, -1.0, 1.0), cache

    check_backward(surrogate, bn.binarize_backward, [W], rng=rng)


def _word2bits_reference(x, bits):
    """Word2Bits ``quantize`` (src/word2bits.cpp), transcribed scalar by scalar."""
    s = -1.0 if x < 0 else 1.0
    a = x * s
    if bits == 1:
        return s / 3
    return s * (0.25 if 0 <= a <= 0.5 else 0.75)


@given(matrix_st(bound=2.0), st.sampled_from([1, 2]))
def test_word2bits_levels_match_the_reference_quantizer(W, bits):
    W = np.round(W * 4) / 4                                   # hit 0 and +-1/2 exactly
    Q = bn.word2bits_quantize(W, bits)
    assert np.array_equal(Q, np.vectorize(lambda x: _word2bits_reference(x, bits))(W))
    assert np.array_equal(bn.word2bits_quantize(Q, bits), Q)  # idempotent
    nz = W != 0
    assert np.array_equal(bn.word2bits_quantize(-W, bits)[nz], -Q[nz])
    t = bn.Word2BitsTransform(bits)
    assert np.array_equal(t.backward(W, t.forward(W)[1]), W)  # plain STE


@pytest.mark.parametrize("granularity", [None, "output"])
def test_binarynet_latents_stay_clipped_through_real_adam_steps(granularity):
    """After every step latent weights lie in [-1, 1]; the effective weights are +-alpha."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((16, 6)), 5 * rng.standard_normal((16, 4))
    params = {"enc.0.ffn.W_1": rng.standard_normal((6, 4))}
    method = bn.binarization_method(["enc.0.ffn.W_1"], granularity)
    state = optim.adam_init(params)
    for _ in range(15):
        eff, cache = method.forward(params)
        We = eff["enc.0.ffn.W_1"]
        assert np.allclose(np.abs(We), np.abs(We).max(axis=0, keepdims=True))
        grads = method.backward({"enc.0.ffn.W_1": x.T @ (x @ We - y)}, cache)
        params, state = optim.adam_step(params, grads, state, 0.3)
        params = method.after_step(params)
        assert np.abs(params["enc.0.ffn.W_1"]).max() <= 1.0


@given(matrix_st(max_side=20), gran_st, st.sampled_from([np.float32, np.float64]))
def test_pack_binary_round_trip_and_bytes(W, granularity, dtype):
    """unpack(pack(W)) = float32(alpha* Sign(W)); 1 bit per weight + 4 bytes per alpha."""
    W = W.astype(dtype)
    packed = bn.pack_binary(W, granularity)
    expected = bn.optimal_scale(W, granularity).astype(np.float32) * bn.sign(W)
    assert np.array_equal(bn.unpack_binary(packed), expected)
    n_alpha = {"tensor": 1, "output": W.shape[1], "row": W.shape[0]}[granularity]
    assert packed.nbytes == packed_nbytes(W.size, 1) + 4 * n_alpha


def test_pack_binary_fixed_levels_for_binarynet_and_word2bits():
    W = np.array([[0.3, -2.0], [0.0, -0.1]])
    assert np.array_equal(bn.unpack_binary(bn.pack_binary(W, "tensor", alpha=1.0)), bn.sign(W))
    assert np.array_equal(bn.unpack_binary(bn.pack_binary(W, "tensor", alpha=1 / 3)),
                          bn.word2bits_quantize(W.astype(np.float32), 1))


@pytest.mark.parametrize("W, err", [
    (np.array([[1, 2]]), TypeError), (np.zeros((0, 3)), ValueError), (np.ones(3), ValueError),
    (np.array([[np.nan, 1.0]]), ValueError), (np.array([[np.inf, 1.0]]), ValueError),
    ([[1.0]], TypeError)])
def test_bad_weights_raise(W, err):
    with pytest.raises(err):
        bn.pack_binary(W)
    with pytest.raises(err):
        bn.binarize(W)


def test_bad_arguments_raise():
    W = np.ones((2, 3))
    for call, err in [(lambda: bn.optimal_scale(W, "channel"), ValueError),
                      (lambda: bn.word2bits_quantize(W, 3), ValueError),
                      (lambda: bn.word2bits_quantize(np.array([np.nan]), 1), ValueError),
                      (lambda: bn.word2bits_quantize(np.array([1]), 1), TypeError),
                      (lambda: bn.binarization_method(["W"], word2bits=4), ValueError),
                      (lambda: bn.pack_binary(W, "tensor", alpha=np.inf), ValueError),
                      (lambda: bn.unpack_binary(bn.PackedTensor("kmeans", (2, 3), {}, {})), ValueError)]:
        with pytest.raises(err):
            call()
