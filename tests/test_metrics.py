"""Tests for corpus BLEU (Papineni et al. 2002, as computed by sacreBLEU 2.x) and accuracy.

Small cases are worked by hand from the definitions (the arithmetic is in each docstring);
sacrebleu is imported only here, as an independent oracle on random corpora.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.metrics import accuracy, bleu_from_stats, corpus_bleu, tokenize_13a


def test_identical_corpus_is_100():
    """All p_n = 1 and c = r, so BP = 1 and BLEU = 100."""
    hyps = ["the cat sat on the mat .", "Ich habe drei rote Äpfel."]
    r = corpus_bleu(hyps, hyps)
    assert r.score == pytest.approx(100.0, abs=1e-9) and r.bp == 1.0
    assert r.precisions == pytest.approx([100.0] * 4)


def test_hand_computed_single_sentence():
    """hyp 'the cat sat on the mat', ref 'the cat sat on a mat' (6 tokens each):
    p1 = 5/6 ('the' x2 clipped to 1), p2 = 3/5 (the cat, cat sat, sat on), p3 = 2/4, p4 = 1/3;
    BP = 1; BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3)^(1/4) = 100 * (1/12)^(1/4)."""
    r = corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert r.counts == [5, 3, 2, 1] and r.totals == [6, 5, 4, 3]
    assert r.score == pytest.approx(100 * (1 / 12) ** 0.25, rel=1e-12)
    assert (r.sys_len, r.ref_len, r.bp) == (6, 6, 1.0)


def test_clipping_papineni_example():
    """Papineni's 'the the the the the the the' against two references: 'the' occurs at most twice
    in one reference (lower-cased), so p1 = 2/7. No bigram matches: under 'exp' smoothing the
    k-th zero order gets 100 / (2^k * total): p2 = 100/(2*6), p3 = 100/(4*5), p4 = 100/(8*4).
    c = 7, closest r = 7, BP = 1."""
    hyp = ["the the the the the the the"]
    refs = [["The cat is on the mat"], ["There is a cat on the mat"]]
    r = corpus_bleu(hyp, refs, lowercase=True)
    expected_p = [100 * 2 / 7, 100 / 12, 100 / 20, 100 / 32]
    assert r.precisions == pytest.approx(expected_p, rel=1e-12)
    assert r.score == pytest.approx(math.exp(sum(math.log(p) for p in expected_p) / 4), rel=1e-12)


def test_multiple_references_take_the_max_count_not_the_sum():
    """'the the' vs refs 'the a' and 'the b': clip = max(1, 1) = 1, so p1 = 1/2 (a sum would give 2/2)."""
    r = corpus_bleu(["the the"], [["the a"], ["the b"]])
    assert r.counts[0] == 1 and r.totals[0] == 2


def test_closest_reference_length_ties_go_to_the_shorter():
    """hyp length 5, refs of length 4 and 6 are equally close: r = 4, so c > r and BP = 1."""
    r = corpus_bleu(["a b c d e"], [["a b c d"], ["a b c d e f"]])
    assert r.ref_len == 4 and r.bp == 1.0
    r = corpus_bleu(["a b c d e"], [["a b c d e f"], ["a b c d"]])   # reference order does not matter
    assert r.ref_len == 4


def test_brevity_penalty():
    """hyp 'the cat sat on' (c = 4) is a prefix of the 6-token ref: every p_n = 1, BP = exp(1 - 6/4)."""
    r = corpus_bleu(["the cat sat on"], ["the cat sat on the mat"])
    assert r.bp == pytest.approx(math.exp(-0.5), rel=1e-12)
    assert r.score == pytest.approx(100 * math.exp(-0.5), rel=1e-12)


def test_empty_hypothesis_has_bp_zero_and_score_zero():
    r = corpus_bleu([""], ["a b c d"])
    assert (r.score, r.bp, r.sys_len) == (0.0, 0.0, 0)


def test_zero_matches_score_exactly_zero():
    r = corpus_bleu(["a b c d"], ["e f g h"])
    assert r.score == 0.0 and r.precisions == [0.0] * 4 and r.bp == 1.0


def test_corpus_level_sums_before_dividing():
    """Segments 'a b c d' (exact) and 'a b c d e' vs 'a x c y e' (a, c, e match; no bigram):
    p1 = (4+3)/(4+5) = 7/9, p2 = 3/(3+4) = 3/7, p3 = 2/(2+3) = 2/5, p4 = 1/(1+2) = 1/3; c = r = 9.
    BLEU = 100 * (7/9 * 3/7 * 2/5 * 1/3)^(1/4) = 100 * (2/45)^(1/4), not the mean of sentence BLEUs."""
    hyps, refs = ["a b c d", "a b c d e"], ["a b c d", "a x c y e"]
    r = corpus_bleu(hyps, refs)
    assert r.score == pytest.approx(100 * (2 / 45) ** 0.25, rel=1e-12)
    mean_sentence = np.mean([corpus_bleu([h], [g]).score for h, g in zip(hyps, refs)])
    assert abs(r.score - mean_sentence) > 1.0


def test_smoothing_methods():
    """'a b c d' vs 'a b c e': correct = [3, 2, 1, 0], total = [4, 3, 2, 1]."""
    hyp, ref = ["a b c d"], ["a b c e"]
    exp_p = [75.0, 100 * 2 / 3, 50.0, 100 / 2]                       # exp: 1st zero order -> 100/(2*1)
    assert corpus_bleu(hyp, ref).precisions == pytest.approx(exp_p, rel=1e-12)
    floor = corpus_bleu(hyp, ref, smooth_method="floor")
    assert floor.precisions[3] == pytest.approx(100 * 0.1 / 1)      # floor: 100 * 0.1 / total
    addk = corpus_bleu(hyp, ref, smooth_method="add-k")              # k = 1 added for n >= 2 only
    assert addk.precisions == pytest.approx([75.0, 75.0, 100 * 2 / 3, 50.0], rel=1e-12)
    assert corpus_bleu(hyp, ref, smooth_method="none").score == 0.0  # log 0 -> -9999999999


def test_effective_order():
    """'a b' vs 'a b': total_3 = 0 stops the loop. Without effective order the mean runs over 4
    orders with log 0 -> score 0; with it, over the 2 orders seen -> 100."""
    assert corpus_bleu(["a b"], ["a b"]).score == 0.0
    assert corpus_bleu(["a b"], ["a b"], effective_order=True).score == pytest.approx(100.0)


def test_13a_tokenizer_cases():
    cases = {"3.14 and 1,000": "3.14 and 1,000", "the end.": "the end .", "don't": "don't",
             "well-known": "well-known", "1990-1991": "1990 - 1991", "a/b": "a / b", "$5": "$ 5",
             "Hello, world!": "Hello , world !", "U.S.A.": "U . S . A .", "x &amp; y": "x & y",
             "a <skipped> b": "a b", "  many   spaces  ": "many spaces", "(3. März)": "( 3 . März )"}
    for text, expected in cases.items():
        assert tokenize_13a(text) == expected, text


def test_tokenize_none_is_whitespace_only():
    r13a = corpus_bleu(["Hello , world ! ok"], ["Hello, world! ok"])
    rnone = corpus_bleu(["Hello , world ! ok"], ["Hello, world! ok"], tokenize="none")
    assert r13a.score == pytest.approx(100.0) and rnone.score < 100.0
    assert "tok:none" in rnone.signature


def test_signature_fields_match_sacrebleu():
    from sacrebleu.metrics import BLEU
    for ours in ({}, {"smooth_method": "floor"}, {"lowercase": True, "effective_order": True},
                 {"tokenize": "none"}):
        metric = BLEU(**ours)
        metric.corpus_score(["a b c d"], [["a b c d"]])
        theirs = [f for f in metric.get_signature().format().split("|") if not f.startswith("version")]
        mine = [f for f in corpus_bleu(["a b c d"], ["a b c d"], **ours).signature.split("|")
                if not f.startswith("impl")]
        assert mine == theirs


words_st = st.sampled_from("a b c the cat , . 3.14 - ( ) & won't 1990-1991 x/y Äpfel".split())
line_st = st.lists(words_st, max_size=9).map(" ".join)


@st.composite
def corpus_st(draw):
    n = draw(st.integers(1, 5))
    hyps = draw(st.lists(line_st, min_size=n, max_size=n))
    refs = draw(st.lists(st.lists(line_st, min_size=n, max_size=n), min_size=1, max_size=3))
    return hyps, refs


@given(corpus_st(), st.sampled_from(["exp", "floor", "add-k", "none"]), st.booleans(),
       st.sampled_from(["13a", "none"]), st.booleans())
def test_equals_sacrebleu_on_random_corpora(corpus, smooth, eff, tok, lower):
    import sacrebleu
    hyps, refs = corpus
    theirs = sacrebleu.corpus_bleu(hyps, refs, smooth_method=smooth, use_effective_order=eff,
                                   tokenize=tok, lowercase=lower)
    ours = corpus_bleu(hyps, refs, tokenize=tok, smooth_method=smooth, effective_order=eff, lowercase=lower)
    assert ours.score == pytest.approx(theirs.score, abs=1e-6)
    assert ours.precisions == pytest.approx(theirs.precisions, abs=1e-6)
    assert ours.bp == pytest.approx(theirs.bp, abs=1e-12)
    assert (ours.sys_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)
    assert 0.0 <= ours.score <= 100.0 + 1e-9
    # order of segments and of reference streams does not matter
    perm = list(reversed(range(len(hyps))))
    swapped = corpus_bleu([hyps[i] for i in perm], [[s[i] for i in perm] for s in reversed(refs)],
                          tokenize=tok, smooth_method=smooth, effective_order=eff, lowercase=lower)
    assert swapped.score == pytest.approx(ours.score, abs=1e-9)


def test_bleu_from_stats_equals_corpus_bleu():
    r = corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    stats = [r.sys_len, r.ref_len] + r.counts + r.totals
    assert bleu_from_stats(stats).score == r.score


def test_bleu_bad_input():
    with pytest.raises(ValueError):
        corpus_bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        corpus_bleu([], [])
    with pytest.raises(TypeError):
        corpus_bleu("a b", ["a b"])
    with pytest.raises(ValueError):
        corpus_bleu(["a"], ["a"], tokenize="intl")
    with pytest.raises(ValueError):
        corpus_bleu(["a"], ["a"], smooth_method="laplace")
    with pytest.raises(ValueError):
        corpus_bleu(["a"], [[None]])


def test_accuracy():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert accuracy(np.array([[1, 0], [2, 0]]), np.array([[1, 0], [3, 0]]), ignore_index=0) == 0.5
    with pytest.raises(ValueError):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError):
        accuracy([], [])
    with pytest.raises(TypeError):
        accuracy([0.5], [1])
