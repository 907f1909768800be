"""Tests for binary-coding quantization: Guo et al. 2017 (greedy, refined), Xu et al. 2018
(alternating), Chung et al. 2020 (model-level strategy). Equation numbers are those of
``tinyzip/compress/binary_codes.py``; a column of W (D_in, D_out) is one output unit."""
from collections import Counter
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
    np.testing.assert_array_equal(bc.unpack(packed), bc.dequantize(B, alpha))


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
    np.testing.assert_array_equal(bc.unpack(packed), forward)
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


# --- Chung et al. 2020 -----------------------------------------------------------------------

def test_eq7_paper_example_b4_r2_v1500():
    """Algorithm 1 worked example: b = 4, r = 2, v = 1500 -> clusters of 100, 200, 400, 800
    tokens at 4, 3, 2, 1 bits (mean 26/15 = 1.73 bits)."""
    bits = bc.embedding_bits(np.arange(1500)[::-1], max_bits=4, ratio=2)   # token 0 most frequent
    assert [int((bits == b).sum()) for b in (4, 3, 2, 1)] == [100, 200, 400, 800]
    assert np.all(bits[:100] == 4) and np.all(bits[700:] == 1)
    assert abs(bits.mean() - 26 / 15) < 1e-12


@pytest.mark.parametrize("ratio, paper_mean", [(1, 2.5), (2, 1.73), (4, 1.3), (8, 1.1)])
def test_eq7_mean_bits_match_the_paper(ratio, paper_mean):
    """b = 4: r = 1, 2, 4, 8 give 2.5, 1.73, 1.3, 1.1 bits per embedding weight (paper's figures,
    rounded as quoted); mean = sum_i (b - i) r^i / sum_i r^i when V is a multiple of sum_i r^i."""
    S = sum(ratio ** i for i in range(4))
    bits = bc.embedding_bits(np.ones(3 * S), max_bits=4, ratio=ratio)
    exact = sum((4 - i) * ratio ** i for i in range(4)) / S
    assert abs(bits.mean() - exact) < 1e-12
    assert round(bits.mean(), len(str(paper_mean).split(".")[1])) == paper_mean


@given(hynp.arrays(np.int64, st.integers(1, 300), elements=st.integers(0, 50)),
       st.integers(1, 5), st.floats(0.25, 8.0))
def test_eq7_cluster_sizes_and_more_bits_for_frequent_tokens(freqs, max_bits, ratio):
    """Sorted by frequency (ties: lower id first), cluster i holds the next |c_i| tokens at b - i
    bits, |c_i| within 1 of V r^i / sum_k r^k and cumulative ends within 1/2 of theirs."""
    bits = bc.embedding_bits(freqs, max_bits, ratio)
    order = np.argsort(-freqs, kind="stable")
    V, growth = freqs.size, ratio ** np.arange(max_bits)
    expected_ends = V * np.cumsum(growth) / growth.sum()
    sizes = np.array([(bits == max_bits - i).sum() for i in range(max_bits)])
    assert sizes.sum() == V and np.all(np.abs(sizes - V * growth / growth.sum()) <= 1 + 1e-9)
    assert np.all(np.abs(np.cumsum(sizes) - expected_ends) <= 0.5 + 1e-9)
    assert np.array_equal(bits[order], np.repeat(max_bits - np.arange(max_bits), sizes))


@given(hynp.arrays(np.int64, st.integers(1, 300), elements=st.integers(0, 50)), st.integers(1, 5))
def test_eq7_ratio_zero_is_uniform_width(freqs, max_bits):
    """r -> 0 puts every token in the first cluster: all b bits, whatever the frequencies."""
    assert np.all(bc.embedding_bits(freqs, max_bits, 0.0) == max_bits)


@pytest.mark.parametrize("freqs, max_bits, ratio, error", [
    (np.array([]), 4, 2.0, ValueError), (np.ones((2, 2)), 4, 2.0, ValueError),
    (np.array([1.0, np.nan]), 4, 2.0, ValueError), (np.array([1, -1]), 4, 2.0, ValueError),
    (np.ones(5), 0, 2.0, ValueError), (np.ones(5), 9, 2.0, ValueError), (np.ones(5), 4, -1.0, ValueError),
    (np.ones(5), 4, np.inf, ValueError), (np.ones(5), 4.0, 2.0, TypeError)])
def test_eq7_bad_input_raises(freqs, max_bits, ratio, error):
    with pytest.raises(error):
        bc.embedding_bits(freqs, max_bits, ratio)


def test_token_frequencies_count_source_target_and_one_bos_eos_per_pair():
    pairs = [([5, 6, 5], [7]), ([4], []), ([9, 9], [9, 8, 4])]
    counts = Counter(t for s, y in pairs for t in list(s) + list(y)) + Counter({1: 3, 2: 3})
    freqs = bc.token_frequencies(pairs, 12)
    assert freqs.tolist() == [counts.get(v, 0) for v in range(12)]


def test_chung_block_bits_per_sub_layer_type():
    cfg = bc.ChungBits(enc_attn=4, enc_ffn=6, dec_self_attn=1, cross_attn=3, dec_ffn=2, out=5)
    assert [bc.block_bits(n, cfg) for n in ("enc.0.attn.W_q", "enc.2.ffn.W_1", "dec.1.self_attn.W_o",
                                            "dec.0.cross_attn.W_k", "dec.0.ffn.W_2", "out.W", "emb")] == \
        [4, 6, 1, 3, 2, 5, "embedding"]
    assert all(bc.block_bits(n, cfg) is None for n in ("enc.0.attn.b_q", "dec.0.ln1.gamma", "out.b"))


def test_chung_defaults_are_the_papers_final_model():
    """Decoder: self-attn 2, enc-dec attn 3, FFN 1 bit; encoder: self-attn 3, FFN 4; embedding
    b = 4, r = 1 (2.5 bits)."""
    cfg = bc.ChungBits()
    assert (cfg.dec_self_attn, cfg.cross_attn, cfg.dec_ffn, cfg.enc_attn, cfg.enc_ffn) == (2, 3, 1, 3, 4)
    assert bc.embedding_bits(np.ones(400), cfg.emb_max_bits, cfg.emb_ratio).mean() == 2.5


def _tiny_params(rng):
    return {"emb": rng.normal(size=(20, 16)).astype(np.float32),
            "enc.0.attn.W_q": rng.normal(size=(16, 16)).astype(np.float32),
            "enc.0.attn.b_q": rng.normal(size=16).astype(np.float32),
            "dec.0.cross_attn.W_v": rng.normal(size=(16, 16)).astype(np.float32),
            "dec.0.ffn.W_1": rng.normal(size=(16, 24)).astype(np.float32)}


def test_chung_method_quantizes_every_matrix_and_embedding_rows_by_frequency():
    params = _tiny_params(np.random.default_rng(0))
    freqs = np.arange(20)[::-1]                                            # token 0 most frequent
    cfg = bc.ChungBits(emb_max_bits=3, emb_ratio=2.0, enc_attn=2, cross_attn=1, dec_ffn=3)
    eff, caches = bc.chung_method(params, cfg, freqs).forward(params)
    np.testing.assert_array_equal(eff["enc.0.attn.b_q"], params["enc.0.attn.b_q"])
    for name, q in (("enc.0.attn.W_q", 2), ("dec.0.cross_attn.W_v", 1), ("dec.0.ffn.W_1", 3)):
        assert all(len(np.unique(eff[name][:, j])) <= 2 ** q for j in range(eff[name].shape[1]))
    token_bits = bc.embedding_bits(freqs, 3, 2.0)
    assert all(len(np.unique(eff["emb"][v])) <= 2 ** token_bits[v] for v in range(20))


@pytest.mark.parametrize("alpha_dtype", [None, np.float16])
def test_chung_pack_unpacks_to_exactly_the_qat_forward(alpha_dtype):
    """The file is the trained model: chung_pack read back == chung_method's forward, bit for bit."""
    params = _tiny_params(np.random.default_rng(1))
    freqs = np.random.default_rng(2).integers(0, 100, 20)
    cfg = bc.ChungBits(emb_max_bits=4, emb_ratio=2.0)
    eff, _ = bc.chung_method(params, cfg, freqs, alpha_dtype=alpha_dtype).forward(params)
    packed = bc.chung_pack(params, cfg, freqs, alpha_dtype=alpha_dtype)
    assert set(packed) == {"emb", "enc.0.attn.W_q", "dec.0.cross_attn.W_v", "dec.0.ffn.W_1"}
    for name, p in packed.items():
        np.testing.assert_array_equal(bc.unpack(p), eff[name])


def test_chung_staged_schedule_embedding_then_decoder_then_encoder():
    names = ["emb", "enc.0.attn.W_q", "enc.0.ffn.W_1", "enc.1.attn.W_q", "dec.0.self_attn.W_q",
             "dec.0.ln1.gamma", "out.W", "out.b"]
    blocks = bc.staged_blocks(names)
    assert blocks == [["emb", "out.W"], ["dec.0.self_attn.W_q"], ["enc.0.attn.W_q", "enc.0.ffn.W_1", "enc.1.attn.W_q"]]
    sets = [bc.staged_quantized_names(step, blocks, 100) for step in range(0, 400, 50)]
    assert sets[0] == sets[1] == {"emb", "out.W"} and sets[2] == {"emb", "out.W", "dec.0.self_attn.W_q"}
    assert all(a <= b for a, b in zip(sets, sets[1:])) and sets[-1] == {n for blk in blocks for n in blk}
    with pytest.raises(ValueError):
        bc.staged_quantized_names(-1, blocks, 100)


@given(matrix_st(max_side=12, dtype=np.float32), st.integers(1, 4), st.floats(0.5, 4.0),
       st.sampled_from([None, np.float16]))
def test_chung_mixed_embedding_export_round_trip_and_bytes(E, max_bits, ratio, alpha_dtype):
    """Each token is coded alone (its own alphas), so grouping by width is bookkeeping; the file
    holds 3 bits of width per token, then per token b * ceil(D/8) plane bytes and b alphas."""
    freqs = np.arange(E.shape[0])[::-1]
    bits = bc.embedding_bits(freqs, max_bits, ratio)
    packed = bc.pack_embedding_codes(E, bits, "greedy", alpha_dtype=alpha_dtype)
    E_hat = bc.unpack_embedding_codes(packed)
    np.testing.assert_array_equal(bc.unpack(packed), E_hat)
    np.testing.assert_array_equal(bc.FrequencyAwareEmbeddingSTE(bits, "greedy", alpha_dtype=alpha_dtype).forward(E)[0], E_hat)
    for v in range(E.shape[0]):
        B, alpha = bc.binary_codes(E[v][:, None], int(bits[v]), "greedy", alpha_dtype=alpha_dtype)   # token alone
        np.testing.assert_allclose(E_hat[v], bc.dequantize(B, alpha)[:, 0], rtol=1e-5, atol=1e-6 * (1 + np.abs(E[v]).max()))
    V, D = E.shape
    alpha_bytes = 2 if alpha_dtype is np.float16 else 4
    assert packed.nbytes == -(-3 * V // 8) + sum(int(b) * (-(-D // 8) + alpha_bytes) for b in bits)


def test_mixed_embedding_bad_widths_raise():
    E = np.ones((4, 8), np.float32)
    for token_bits in (np.array([1, 2, 9, 1]), np.array([0, 1, 1, 1]), np.array([1.0, 2, 1, 1]), np.ones(3, int)):
        with pytest.raises(ValueError):
            bc.pack_embedding_codes(E, token_bits)
    packed = bc.pack_embedding_codes(E, np.array([1, 2, 2, 1]))
    with pytest.raises(ValueError):
        bc.unpack_embedding_codes(PackedTensor("binary_codes_mixed", (4, 8), packed.arrays, {**packed.meta, "bits": [1, 3]}))
