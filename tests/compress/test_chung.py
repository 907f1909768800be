"""Tests for Chung et al. 2020 at model level (``tinyzip/compress/chung.py``): Algorithm 1's
frequency-aware embedding widths (Eq. (1) there), the per-sub-layer widths, the staged schedule,
and the mixed-width embedding file; the binary codes themselves are tested in test_binary_codes."""
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, strategies as st
from hypothesis.extra import numpy as hynp

from tests.strategies import matrix_st
from tinyzip import compressed
from tinyzip.compress import binary_codes as bc, chung
from tinyzip.compress.base import PackedTensor


def test_alg1_paper_example_b4_r2_v1500():
    """Algorithm 1 worked example: b = 4, r = 2, v = 1500 -> clusters of 100, 200, 400, 800
    tokens at 4, 3, 2, 1 bits (mean 26/15 = 1.73 bits)."""
    bits = chung.embedding_bits(np.arange(1500)[::-1], max_bits=4, ratio=2)   # token 0 most frequent
    assert [int((bits == b).sum()) for b in (4, 3, 2, 1)] == [100, 200, 400, 800]
    assert np.all(bits[:100] == 4) and np.all(bits[700:] == 1)
    assert abs(bits.mean() - 26 / 15) < 1e-12


@pytest.mark.parametrize("ratio, paper_mean", [(1, 2.5), (2, 1.73), (4, 1.3), (8, 1.1)])
def test_alg1_mean_bits_match_the_paper(ratio, paper_mean):
    """b = 4: r = 1, 2, 4, 8 give 2.5, 1.73, 1.3, 1.1 bits per embedding weight (paper's figures,
    rounded as quoted); mean = sum_i (b - i) r^i / sum_i r^i when V is a multiple of sum_i r^i."""
    S = sum(ratio ** i for i in range(4))
    bits = chung.embedding_bits(np.ones(3 * S), max_bits=4, ratio=ratio)
    exact = sum((4 - i) * ratio ** i for i in range(4)) / S
    assert abs(bits.mean() - exact) < 1e-12
    assert round(bits.mean(), len(str(paper_mean).split(".")[1])) == paper_mean


@given(hynp.arrays(np.int64, st.integers(1, 300), elements=st.integers(0, 50)),
       st.integers(1, 5), st.floats(0.25, 8.0))
def test_alg1_cluster_sizes_and_more_bits_for_frequent_tokens(freqs, max_bits, ratio):
    """Sorted by frequency (ties: lower id first), cluster i holds the next |c_i| tokens at b - i
    bits, |c_i| within 1 of V r^i / sum_k r^k and cumulative ends within 1/2 of theirs."""
    bits = chung.embedding_bits(freqs, max_bits, ratio)
    order = np.argsort(-freqs, kind="stable")
    V, growth = freqs.size, ratio ** np.arange(max_bits)
    expected_ends = V * np.cumsum(growth) / growth.sum()
    sizes = np.array([(bits == max_bits - i).sum() for i in range(max_bits)])
    assert sizes.sum() == V and np.all(np.abs(sizes - V * growth / growth.sum()) <= 1 + 1e-9)
    assert np.all(np.abs(np.cumsum(sizes) - expected_ends) <= 0.5 + 1e-9)
    assert np.array_equal(bits[order], np.repeat(max_bits - np.arange(max_bits), sizes))


@given(hynp.arrays(np.int64, st.integers(1, 300), elements=st.integers(0, 50)), st.integers(1, 5))
def test_alg1_ratio_zero_is_uniform_width(freqs, max_bits):
    """r -> 0 puts every token in the first cluster: all b bits, whatever the frequencies."""
    assert np.all(chung.embedding_bits(freqs, max_bits, 0.0) == max_bits)


@pytest.mark.parametrize("freqs, max_bits, ratio, error", [
    (np.array([]), 4, 2.0, ValueError), (np.ones((2, 2)), 4, 2.0, ValueError),
    (np.array([1.0, np.nan]), 4, 2.0, ValueError), (np.array([1, -1]), 4, 2.0, ValueError),
    (np.ones(5), 0, 2.0, ValueError), (np.ones(5), 9, 2.0, ValueError), (np.ones(5), 4, -1.0, ValueError),
    (np.ones(5), 4, np.inf, ValueError), (np.ones(5), 4.0, 2.0, TypeError)])
def test_alg1_bad_input_raises(freqs, max_bits, ratio, error):
    with pytest.raises(error):
        chung.embedding_bits(freqs, max_bits, ratio)


def test_token_frequencies_count_source_target_and_one_bos_eos_per_pair():
    pairs = [([5, 6, 5], [7]), ([4], []), ([9, 9], [9, 8, 4])]
    counts = Counter(t for s, y in pairs for t in list(s) + list(y)) + Counter({1: 3, 2: 3})
    freqs = chung.token_frequencies(pairs, 12)
    assert freqs.tolist() == [counts.get(v, 0) for v in range(12)]


def test_chung_block_bits_per_sub_layer_type():
    cfg = chung.ChungBits(enc_attn=4, enc_ffn=6, dec_self_attn=1, cross_attn=3, dec_ffn=2, out=5)
    assert [chung.block_bits(n, cfg) for n in ("enc.0.attn.W_q", "enc.2.ffn.W_1", "dec.1.self_attn.W_o",
                                            "dec.0.cross_attn.W_k", "dec.0.ffn.W_2", "out.W", "emb")] == \
        [4, 6, 1, 3, 2, 5, "embedding"]
    assert all(chung.block_bits(n, cfg) is None for n in ("enc.0.attn.b_q", "dec.0.ln1.gamma", "out.b"))


def test_chung_defaults_are_the_papers_final_model():
    """Decoder: self-attn 2, enc-dec attn 3, FFN 1 bit; encoder: self-attn 3, FFN 4; embedding
    b = 4, r = 1 (2.5 bits)."""
    cfg = chung.ChungBits()
    assert (cfg.dec_self_attn, cfg.cross_attn, cfg.dec_ffn, cfg.enc_attn, cfg.enc_ffn) == (2, 3, 1, 3, 4)
    assert chung.embedding_bits(np.ones(400), cfg.emb_max_bits, cfg.emb_ratio).mean() == 2.5


def _tiny_params(rng):
    return {"emb": rng.normal(size=(20, 16)).astype(np.float32),
            "enc.0.attn.W_q": rng.normal(size=(16, 16)).astype(np.float32),
            "enc.0.attn.b_q": rng.normal(size=16).astype(np.float32),
            "dec.0.cross_attn.W_v": rng.normal(size=(16, 16)).astype(np.float32),
            "dec.0.ffn.W_1": rng.normal(size=(16, 24)).astype(np.float32)}


def test_chung_method_quantizes_every_matrix_and_embedding_rows_by_frequency():
    params = _tiny_params(np.random.default_rng(0))
    freqs = np.arange(20)[::-1]                                            # token 0 most frequent
    cfg = chung.ChungBits(emb_max_bits=3, emb_ratio=2.0, enc_attn=2, cross_attn=1, dec_ffn=3)
    eff, caches = chung.chung_method(params, cfg, freqs).forward(params)
    np.testing.assert_array_equal(eff["enc.0.attn.b_q"], params["enc.0.attn.b_q"])
    for name, q in (("enc.0.attn.W_q", 2), ("dec.0.cross_attn.W_v", 1), ("dec.0.ffn.W_1", 3)):
        assert all(len(np.unique(eff[name][:, j])) <= 2 ** q for j in range(eff[name].shape[1]))
    token_bits = chung.embedding_bits(freqs, 3, 2.0)
    assert all(len(np.unique(eff["emb"][v])) <= 2 ** token_bits[v] for v in range(20))


@pytest.mark.parametrize("alpha_dtype", [None, np.float16])
def test_chung_pack_unpacks_to_exactly_the_qat_forward(alpha_dtype):
    """The file is the trained model: chung_pack read back == chung_method's forward, bit for bit."""
    params = _tiny_params(np.random.default_rng(1))
    freqs = np.random.default_rng(2).integers(0, 100, 20)
    cfg = chung.ChungBits(emb_max_bits=4, emb_ratio=2.0)
    eff, _ = chung.chung_method(params, cfg, freqs, alpha_dtype=alpha_dtype).forward(params)
    packed = chung.chung_pack(params, cfg, freqs, alpha_dtype=alpha_dtype)
    assert set(packed) == {"emb", "enc.0.attn.W_q", "dec.0.cross_attn.W_v", "dec.0.ffn.W_1"}
    for name, p in packed.items():
        np.testing.assert_array_equal(compressed.unpack(p), eff[name])


def test_chung_staged_schedule_embedding_then_decoder_then_encoder():
    names = ["emb", "enc.0.attn.W_q", "enc.0.ffn.W_1", "enc.1.attn.W_q", "dec.0.self_attn.W_q",
             "dec.0.ln1.gamma", "out.W", "out.b"]
    blocks = chung.staged_blocks(names)
    assert blocks == [["emb", "out.W"], ["dec.0.self_attn.W_q"], ["enc.0.attn.W_q", "enc.0.ffn.W_1", "enc.1.attn.W_q"]]
    sets = [chung.staged_quantized_names(step, blocks, 100) for step in range(0, 400, 50)]
    assert sets[0] == sets[1] == {"emb", "out.W"} and sets[2] == {"emb", "out.W", "dec.0.self_attn.W_q"}
    assert all(a <= b for a, b in zip(sets, sets[1:])) and sets[-1] == {n for blk in blocks for n in blk}
    with pytest.raises(ValueError):
        chung.staged_quantized_names(-1, blocks, 100)


_GROUPED_ALPHA_CASE = np.array([[0.22663583] * 9, [0.35330555, 6.717463, 0.0, 7.8260274] + [0.22663583] * 5,
                                [0.22663583] * 9], np.float32)


@given(matrix_st(max_side=12, dtype=np.float32), st.integers(1, 4), st.floats(0.5, 4.0),
       st.sampled_from([None, np.float16]))
@example(_GROUPED_ALPHA_CASE, 4, 0.5, np.float16)   # its third alpha once differed by a float16 step
def test_chung_mixed_embedding_export_round_trip_and_bytes(E, max_bits, ratio, alpha_dtype):
    """Each token is coded alone (its own alphas), so grouping by width is bookkeeping: bit for bit
    what coding the token alone gives. The file holds 3 bits of width per token, then per token
    b * ceil(D/8) plane bytes and b alphas."""
    freqs = np.arange(E.shape[0])[::-1]
    bits = chung.embedding_bits(freqs, max_bits, ratio)
    packed = chung.pack_embedding_codes(E, bits, "greedy", alpha_dtype=alpha_dtype)
    E_hat = chung.unpack_embedding_codes(packed)
    np.testing.assert_array_equal(compressed.unpack(packed), E_hat)
    np.testing.assert_array_equal(chung.FrequencyAwareEmbeddingSTE(bits, "greedy", alpha_dtype=alpha_dtype).forward(E)[0], E_hat)
    for v in range(E.shape[0]):
        B, alpha = bc.binary_codes(E[v][:, None], int(bits[v]), "greedy", alpha_dtype=alpha_dtype)   # token alone
        np.testing.assert_array_equal(E_hat[v], bc.dequantize(B, alpha)[:, 0])
    V, D = E.shape
    alpha_bytes = 2 if alpha_dtype is np.float16 else 4
    assert packed.nbytes == -(-3 * V // 8) + sum(int(b) * (-(-D // 8) + alpha_bytes) for b in bits)


def test_mixed_embedding_bad_widths_raise():
    E = np.ones((4, 8), np.float32)
    for token_bits in (np.array([1, 2, 9, 1]), np.array([0, 1, 1, 1]), np.array([1.0, 2, 1, 1]), np.ones(3, int)):
        with pytest.raises(ValueError):
            chung.pack_embedding_codes(E, token_bits)
    packed = chung.pack_embedding_codes(E, np.array([1, 2, 2, 1]))
    with pytest.raises(ValueError):
        chung.unpack_embedding_codes(PackedTensor("binary_codes_mixed", (4, 8), packed.arrays, {**packed.meta, "bits": [1, 3]}))
