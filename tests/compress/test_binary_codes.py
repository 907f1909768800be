"""Tests for binary-coding quantization: Guo et al. 2017 (greedy, refined), Xu et al. 2018
(alternating), Chung et al. 2020 (model-level strategy). Equation numbers are those of
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
    B, alpha = bc.greedy_codes(W, q)
    packed = bc.pack_binary_codes(B, alpha)
    D_in, D_out = W.shape
    assert packed.nbytes == q * D_out * -(-D_in // 8) + 4 * q * D_out
    np.testing.assert_array_equal(bc.unpack_binary_codes(packed), bc.dequantize(B, alpha))
    np.testing.assert_array_equal(bc.unpack(packed), bc.dequantize(B, alpha))


def test_pack_bit_layout_is_lsb_first_one_means_plus_one():
    codes = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1], dtype=np.int8).reshape(1, 9, 1)
    packed = bc.pack_binary_codes(codes, np.ones((1, 1), np.float32))
    assert packed.arrays["planes"].tolist() == [[[0xF9, 0x00]]]


@pytest.mark.parametrize("W, q, error", [
    (np.zeros((3, 2)), 0, ValueError), (np.zeros((3, 2)), 9, ValueError),
    (np.full((3, 2), np.nan), 2, ValueError), (np.zeros(3), 2, ValueError),
    (np.zeros((0, 2)), 2, ValueError), (np.zeros((3, 2), np.int64), 2, TypeError),
    (np.zeros((3, 2)), 2.0, TypeError)])
def test_bad_input_raises(W, q, error):
    with pytest.raises(error):
        bc.greedy_codes(W, q)


def test_unpack_rejects_other_methods_and_bad_planes():
    with pytest.raises(ValueError):
        bc.unpack_binary_codes(PackedTensor("kmeans", (2, 2), {}, {}))
    packed = bc.pack_binary_codes(*bc.greedy_codes(np.ones((9, 2)), 2))
    bad = PackedTensor("binary_codes", (9, 2), {**packed.arrays, "planes": packed.arrays["planes"][:, :, :1]}, packed.meta)
    with pytest.raises(ValueError):
        bc.unpack_binary_codes(bad)


# --- Chung et al. 2020 -----------------------------------------------------------------------

@given(hynp.arrays(np.int64, st.integers(1, 300), elements=st.integers(0, 50)),
       st.integers(1, 4), st.floats(0.05, 0.6))
def test_chung_embedding_bits_more_for_frequent_tokens(freqs, max_bits, ratio):
    bits = bc.embedding_bits(freqs, max_bits, ratio)
    order = np.argsort(-freqs, kind="stable")                              # ties: lower id first
    assert np.all(np.diff(bits[order]) <= 0) and bits.min() >= 1 and bits.max() <= max_bits
    for b in range(2, max_bits + 1):                                       # top ceil(ratio^(b-1) V) get >= b
        assert (bits >= b).sum() == int(np.ceil(ratio ** (b - 1) * freqs.size))


def test_chung_block_bits_per_block_type():
    cfg = bc.ChungBits(enc_attn=4, dec_self_attn=1, cross_attn=3, ffn=2, out=5)
    assert [bc.block_bits(n, cfg) for n in ("enc.0.attn.W_q", "dec.1.self_attn.W_o", "dec.0.cross_attn.W_k",
                                            "enc.2.ffn.W_1", "dec.0.ffn.W_2", "out.W", "emb")] == \
        [4, 1, 3, 2, 2, 5, "embedding"]
    assert all(bc.block_bits(n, cfg) is None for n in ("enc.0.attn.b_q", "dec.0.ln1.gamma", "out.b"))


def test_chung_method_quantizes_every_matrix_and_embedding_rows_by_frequency():
    rng = np.random.default_rng(0)
    params = {"emb": rng.normal(size=(20, 16)), "enc.0.attn.W_q": rng.normal(size=(16, 16)),
              "enc.0.attn.b_q": rng.normal(size=16), "dec.0.cross_attn.W_v": rng.normal(size=(16, 16))}
    freqs = np.arange(20)[::-1]                                            # token 0 most frequent
    cfg = bc.ChungBits(emb_max_bits=3, emb_ratio=0.3, enc_attn=2, cross_attn=1)
    eff, caches = bc.chung_method(params, cfg, freqs).forward(params)
    np.testing.assert_array_equal(eff["enc.0.attn.b_q"], params["enc.0.attn.b_q"])
    assert all(len(np.unique(eff["enc.0.attn.W_q"][:, j])) <= 4 for j in range(16))
    assert all(len(np.unique(eff["dec.0.cross_attn.W_v"][:, j])) <= 2 for j in range(16))
    token_bits = bc.embedding_bits(freqs, 3, 0.3)
    assert all(len(np.unique(eff["emb"][v])) <= 2 ** token_bits[v] for v in range(20))


def test_chung_staged_schedule_adds_one_block_per_interval():
    names = ["emb", "enc.0.attn.W_q", "enc.0.ffn.W_1", "enc.1.attn.W_q", "dec.0.self_attn.W_q",
             "dec.0.ln1.gamma", "out.W", "out.b"]
    blocks = bc.staged_blocks(names)
    assert blocks == [["emb"], ["enc.0.attn.W_q", "enc.0.ffn.W_1"], ["enc.1.attn.W_q"],
                      ["dec.0.self_attn.W_q"], ["out.W"]]
    sets = [bc.staged_quantized_names(step, blocks, 100) for step in range(0, 600, 50)]
    assert sets[0] == {"emb"} and sets[1] == {"emb"} and sets[2] == {"emb", "enc.0.attn.W_q", "enc.0.ffn.W_1"}
    assert all(a <= b for a, b in zip(sets, sets[1:])) and sets[-1] == {n for blk in blocks for n in blk}
    with pytest.raises(ValueError):
        bc.staged_quantized_names(-1, blocks, 100)


@given(matrix_st(max_side=12, dtype=np.float32), st.integers(1, 3), st.floats(0.1, 0.6))
def test_chung_mixed_embedding_export_round_trip_and_bytes(E, max_bits, ratio):
    freqs = np.arange(E.shape[0])[::-1]
    bits = bc.embedding_bits(freqs, max_bits, ratio)
    packed = bc.pack_embedding_codes(E, bits, "greedy")
    E_hat = bc.unpack_embedding_codes(packed)
    np.testing.assert_array_equal(bc.unpack(packed), E_hat)
    for v in range(E.shape[0]):
        expected = bc.dequantize(*bc.greedy_codes(E[v][:, None], int(bits[v])))[:, 0]   # token alone
        np.testing.assert_allclose(E_hat[v], expected, rtol=1e-5, atol=1e-6 * (1 + np.abs(E[v]).max()))
    D = E.shape[1]
    assert packed.nbytes == sum(int(b) * (-(-D // 8) + 4) + 4 for b in bits)   # planes + alphas + id
