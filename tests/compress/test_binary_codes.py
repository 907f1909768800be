"""Tests for binary-coding quantization: Guo et al. 2017 (greedy, refined), Xu et al. 2018
(alternating); Chung et al. 2020's model level is in test_chung.py. Equation numbers are those of
``tinyzip/compress/binary_codes.py``; a column of W (D_in, D_out) is one output unit."""
from itertools import product

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hynp

from tests.strategies import floats_st, matrix_st
from tinyzip.compress import binary_codes as bc
from tinyzip.compress.base import PackedTensor


def _err(W, B, alpha):
    return ((W - bc.dequantize(B, alpha)) ** 2).sum(axis=0)               # (D_out,)


small_st = matrix_st(max_side=8)                                           # n <= 8 for brute force
q_st = st.integers(1, 3)


@given(matrix_st(), st.integers(1, 4))
def test_eq4_greedy_residual_drops_by_n_alpha_squared(W, q):
    """||R_i||^2 = ||R_{i-1}||^2 - D_in * alpha_i^2 for every column and bit (Guo et al.)."""
    B, alpha = bc.greedy_codes(W, q)
    R = W.copy()
    for i in range(q):
        before = (R ** 2).sum(axis=0)
        R = R - alpha[i] * B[i]
        scale = before + 1e-300
        np.testing.assert_allclose((R ** 2).sum(axis=0), before - W.shape[0] * alpha[i] ** 2,
                                   rtol=0, atol=1e-9 * scale.max() + 1e-12)


@given(small_st)
def test_eq3_one_bit_greedy_is_the_brute_force_one_bit_optimum(W):
    """q = 1: b = sign(w), alpha = mean|w| minimises ||w - alpha b||^2 over all b and alpha."""
    B, alpha = bc.greedy_codes(W, 1)
    n = W.shape[0]
    signs = np.array(list(product((-1.0, 1.0), repeat=n)))                 # (2^n, n)
    a = signs @ W / n                                                      # LS alpha per sign vector
    best = ((W[None] - a[:, None, :] * signs[:, :, None]) ** 2).sum(axis=1).min(axis=0)
    np.testing.assert_allclose(_err(W, B, alpha), best, rtol=1e-9, atol=1e-9)


def test_eq2_sign_of_zero_is_plus_one_and_zero_input_gives_no_nan():
    W = np.zeros((5, 3))
    for method in ("greedy", "refined", "alternating"):
        B, alpha = bc.binary_codes(W, 3, method)
        assert np.all(B == 1) and np.all(alpha == 0) and not np.any(np.isnan(bc.dequantize(B, alpha)))
    B, _ = bc.greedy_codes(np.array([[0.0], [-1.0]]), 1)
    assert B[0, 0, 0] == 1 and B[0, 1, 0] == -1


@given(matrix_st(), st.integers(1, 4))
def test_eq5_refit_never_increases_error(W, q):
    B, alpha = bc.greedy_codes(W, q)
    before = _err(W, B, alpha)
    assert np.all(_err(W, B, bc.refit_alphas(W, B)) <= before * (1 + 1e-9) + 1e-12)


@given(small_st, q_st)
def test_eq5_ls_alphas_equal_brute_force_least_squares(W, q):
    """pinv of the Gram matrices gives the minimum-norm LS solution, as numpy's lstsq does."""
    B, _ = bc.alternating_codes(W, q, iters=1)
    alpha = bc.refit_alphas(W, B)
    for j in range(W.shape[1]):
        expected = np.linalg.lstsq(B[:, :, j].T.astype(float), W[:, j], rcond=None)[0]
        np.testing.assert_allclose(alpha[:, j], expected, rtol=1e-7, atol=1e-9 * (1 + np.abs(W).max()))


def test_eq5_duplicate_codes_do_not_break_ls():
    """|w| constant -> greedy R_1 = 0 -> b_2 = b_3 = +1: a singular Gram matrix, still finite."""
    W = np.array([[2.0, -1.0], [-2.0, -1.0], [2.0, -1.0], [-2.0, -1.0]])
    B, alpha = bc.binary_codes(W, 3, "refined")
    assert np.all(np.isfinite(alpha))
    np.testing.assert_allclose(bc.dequantize(B, alpha), W, atol=1e-12)


@given(small_st, hynp.arrays(np.float64, 3, elements=floats_st(bound=5.0)), q_st)
def test_eq6_codes_for_fixed_alphas_equal_brute_force_over_sign_patterns(W, a, q):
    alpha = np.repeat(a[:q, None], W.shape[1], axis=1)                      # (q, D_out)
    B = bc.assign_codes(W, alpha)
    levels = np.array(list(product((-1.0, 1.0), repeat=q))) @ alpha        # (2^q, D_out)
    best = np.abs(W[None] - levels[:, None, :]).min(axis=0)                # (D_in, D_out)
    np.testing.assert_allclose(np.abs(W - bc.dequantize(B, alpha)), best, rtol=1e-12, atol=1e-12)


def test_eq6_weight_on_a_midpoint_takes_the_upper_level():
    alpha = np.array([[1.0]])                                              # levels -1, +1; midpoint 0
    assert bc.assign_codes(np.array([[0.0], [-1e-300]]), alpha)[0, :, 0].tolist() == [1, -1]


@given(matrix_st(), st.integers(1, 4))
def test_xu_alternating_never_increases_error(W, q):
    errors = [_err(W, *bc.alternating_codes(W, q, iters=t)) for t in range(4)]
    greedy = _err(W, *bc.greedy_codes(W, q))
    for earlier, later in zip([greedy] + errors, errors):
        assert np.all(later <= earlier * (1 + 1e-9) + 1e-12)


@given(matrix_st(), q_st, st.sampled_from(["greedy", "refined", "alternating"]))
def test_eq1_at_most_2_to_q_symmetric_levels_per_column(W, q, method):
    B, alpha = bc.binary_codes(W, q, method)
    W_hat = bc.dequantize(B, alpha)
    levels = np.array(list(product((-1.0, 1.0), repeat=q))) @ alpha        # (2^q, D_out)
    assert np.all(np.abs(W_hat[None] - levels[:, None, :]).min(axis=0) <= 1e-12 * (1 + np.abs(levels).max()))
    np.testing.assert_array_equal(bc.binary_codes(4.0 * W, q, method)[0], B)   # scale-equivariant codes


def test_ste_forward_quantizes_and_backward_is_identity():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(6, 4)).astype(np.float32)
    ste = bc.BinaryCodesSTE(2, "greedy")
    W_hat, cache = ste.forward(W)
    np.testing.assert_array_equal(W_hat, bc.dequantize(*bc.greedy_codes(W, 2)))
    dW = rng.normal(size=W.shape).astype(np.float32)
    assert ste.backward(dW, cache) is dW


@given(matrix_st(dtype=np.float32), st.integers(1, 8))
def test_pack_round_trip_and_real_bytes(W, q):
    """float32 alphas: q * D_out * ceil(D_in / 8) bytes of planes + 4 q D_out bytes of alphas."""
    B, alpha = bc.greedy_codes(W, q)
    packed = bc.pack_binary_codes(B, alpha)
    D_in, D_out = W.shape
    assert packed.nbytes == q * D_out * -(-D_in // 8) + 4 * q * D_out
    np.testing.assert_array_equal(bc.unpack_binary_codes(packed), bc.dequantize(B, alpha))
    np.testing.assert_array_equal(bc.unpack_binary_codes(packed), bc.dequantize(B, alpha))


@given(matrix_st(dtype=np.float32), st.integers(1, 4), st.sampled_from(["greedy", "refined", "alternating"]))
def test_float16_alphas_are_the_fit_rounded_and_the_file_is_the_ste_forward(W, q, method):
    """alpha_dtype=float16: alphas = float16(final fit), 2 bytes each in the file, and the STE
    forward (the model QAT trains and evaluates) equals the unpacked file bit for bit."""
    B, alpha = bc.binary_codes(W, q, method, alpha_dtype=np.float16)
    B32, alpha32 = bc.binary_codes(W, q, method)
    np.testing.assert_array_equal(B, B32)
    np.testing.assert_array_equal(alpha, alpha32.astype(np.float16))
    packed = bc.pack_binary_codes(B, alpha)
    D_in, D_out = W.shape
    assert packed.arrays["alphas"].dtype == np.float16
    assert packed.nbytes == q * D_out * -(-D_in // 8) + 2 * q * D_out
    forward = bc.BinaryCodesSTE(q, method, alpha_dtype=np.float16).forward(W)[0]
    assert forward.dtype == np.float32
    np.testing.assert_array_equal(bc.unpack_binary_codes(packed), forward)
    # triangle inequality: ||W - W_hat16|| <= ||W - W_hat|| + sqrt(D_in) sum_i |alpha16_i - alpha_i|,
    # and float16 rounding moves alpha_i by at most max(2^-11 |alpha_i|, 2^-25) (normal / subnormal)
    W64, a64 = W.astype(np.float64), alpha32.astype(np.float64)
    shift = np.sqrt(D_in) * np.maximum(2.0 ** -11 * np.abs(a64), 2.0 ** -25).sum(axis=0)   # (D_out,)
    lhs, rhs = np.sqrt(_err(W64, B, alpha.astype(np.float64))), np.sqrt(_err(W64, B, a64)) + shift
    assert np.all(lhs <= rhs * (1 + 1e-9))


def test_float16_alphas_that_overflow_and_unknown_alpha_dtypes_are_errors():
    with pytest.raises(ValueError, match="float16"):
        bc.binary_codes(np.full((4, 2), 1e6), 1, "greedy", alpha_dtype=np.float16)
    with pytest.raises(TypeError):
        bc.binary_codes(np.ones((4, 2)), 1, "greedy", alpha_dtype=np.int8)
    with pytest.raises(ValueError):
        bc.pack_binary_codes(np.ones((1, 4, 2), np.int8), np.array([[np.nan, 1.0]]))


def test_pack_bit_layout_is_lsb_first_one_means_plus_one():
    codes = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1], dtype=np.int8).reshape(1, 9, 1)
    packed = bc.pack_binary_codes(codes, np.ones((1, 1), np.float32))
    assert packed.arrays["planes"].tolist() == [[[0xF9, 0x00]]]


@pytest.mark.parametrize("W, q, error", [
    (np.zeros((3, 2)), 0, ValueError), (np.zeros((3, 2)), 9, ValueError),
    (np.full((3, 2), np.nan), 2, ValueError), (np.full((3, 2), np.inf), 2, ValueError),
    (np.zeros(3), 2, ValueError), (np.zeros((0, 2)), 2, ValueError),
    (np.zeros((3, 2), np.int64), 2, TypeError), (np.zeros((3, 2)), 2.0, TypeError)])
def test_bad_input_raises(W, q, error):
    for method in ("greedy", "refined", "alternating"):
        with pytest.raises(error):
            bc.binary_codes(W, q, method)


def test_wrong_shapes_raise():
    W, B = np.ones((4, 3)), np.ones((2, 4, 3), np.int8)
    with pytest.raises(ValueError):
        bc.refit_alphas(W, B[:, :3])
    with pytest.raises(ValueError):
        bc.assign_codes(W, np.ones((2, 2)))
    with pytest.raises(ValueError):
        bc.dequantize(B, np.ones((2, 2)))
    with pytest.raises(ValueError):
        bc.pack_binary_codes(B, np.ones((3, 3)))
    with pytest.raises(ValueError):
        bc.binary_codes(W, 2, "nearest")


def test_unpack_rejects_other_methods_and_bad_planes():
    with pytest.raises(ValueError):
        bc.unpack_binary_codes(PackedTensor("kmeans", (2, 2), {}, {}))
    packed = bc.pack_binary_codes(*bc.greedy_codes(np.ones((9, 2)), 2))
    bad = PackedTensor("binary_codes", (9, 2), {**packed.arrays, "planes": packed.arrays["planes"][:, :, :1]}, packed.meta)
    with pytest.raises(ValueError):
        bc.unpack_binary_codes(bad)
    bad = PackedTensor("binary_codes", (9, 2), {**packed.arrays, "alphas": np.ones((2, 2), np.int32)}, packed.meta)
    with pytest.raises(ValueError):
        bc.unpack_binary_codes(bad)
