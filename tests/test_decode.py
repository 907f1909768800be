"""Tests of tinyzip.decode: greedy decoding and beam search with the GNMT length penalty
lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, arXiv:1609.08144, Eq. 14)."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.decode import BOS, EOS, beam_search, greedy_decode, length_penalty, top_candidates
from tinyzip.nn.layers import log_softmax_forward
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig


class PrefixModel:
    """log P(next | sentence, prefix) from a seeded table, so every output can be enumerated.

    ``src[:, 0]`` names the sentence; the decoder state is the tuple of tokens fed so far.
    """

    def __init__(self, V, seed):
        self.V, self.seed = V, seed

    def encode(self, params, src, matmuls=None, act_hooks=None):
        return np.asarray(src)[:, 0].copy()

    def logp(self, sentence, prefix):
        z = 2.0 * np.random.default_rng([self.seed, int(sentence), *prefix]).standard_normal(self.V)
        z[EOS] += 0.7 * len(prefix)  # later EOS is likelier, so hypotheses of all lengths occur
        return log_softmax_forward(z)[0]

    def decode_step(self, params, enc, prev, state, matmuls=None, act_hooks=None):
        state = [(int(t),) if s is None else s + (int(t),)
                 for s, t in zip(state or [None] * len(prev), prev)]
        return np.stack([self.logp(b, s[1:]) for b, s in zip(enc, state)]), state

    def reorder_state(self, state, index):
        return state[index] if isinstance(state, np.ndarray) else [state[i] for i in index]


def brute_force(model, sentence, max_len, alpha):
    """The best of every hypothesis: EOS-terminated ones of at most max_len steps, and the
    max_len-token ones cut at max_len, each scored log P(Y) / lp(|Y|)."""
    best = (-np.inf, None)
    others = [v for v in range(model.V) if v != EOS]
    for n in range(max_len + 1):
        for toks in itertools.product(others, repeat=n):
            logp = sum(model.logp(sentence, toks[:i])[t] for i, t in enumerate(toks))
            if n < max_len:
                score = (logp + model.logp(sentence, toks)[EOS]) / length_penalty(n + 1, alpha)
            elif n == max_len:
                score = logp / length_penalty(n, alpha)
            best = max(best, (score, list(toks)))
    return best[1]


@given(st.integers(0, 10_000), st.integers(1, 5), st.integers(1, 40), st.integers(1, 50))
def test_top_candidates_equal_the_first_n_of_a_stable_descending_sort(seed, B, M, n):
    """Ties (values drawn from 4 levels, -inf included) go to the lower index, as in the full sort."""
    levels = np.array([-np.inf, -3.0, -1.5, 0.0])
    cand = levels[np.random.default_rng(seed).integers(0, 4, size=(B, M))]
    np.testing.assert_array_equal(top_candidates(cand, n), np.argsort(-cand, axis=1, kind="stable")[:, :n])


@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.6, 1.5]))
def test_wide_beam_equals_exhaustive_search_of_the_length_normalised_score(seed, alpha):
    """With beam_size >= every live hypothesis, beam search is exhaustive (score / lp(Y))."""
    model, max_len = PrefixModel(V=4, seed=seed), 3
    src = np.array([[0], [1]])
    got = beam_search(model, None, src, beam_size=27, max_len=max_len, alpha=alpha)
    assert got == [brute_force(model, b, max_len, alpha) for b in (0, 1)]


@given(st.integers(0, 10_000))
def test_beam_size_one_equals_greedy(seed):
    model = PrefixModel(V=6, seed=seed)
    src = np.arange(5)[:, None]
    assert beam_search(model, None, src, beam_size=1, max_len=6) == greedy_decode(model, None, src, 6)


def test_length_penalty_is_one_at_length_one_and_increasing():
    assert length_penalty(1, 0.6) == 1.0 and length_penalty(7, 0.0) == 1.0
    assert all(length_penalty(n, 0.6) < length_penalty(n + 1, 0.6) for n in range(1, 30))


def seq2seq():
    cfg = Seq2SeqConfig(src_vocab=13, tgt_vocab=13, D=16, H=4, F=32, enc_layers=2, dec_layers=2,
                        max_len=16)
    model = Seq2Seq(cfg)
    rng = np.random.default_rng(0)
    params = {k: 3 * v if v.ndim == 2 else v for k, v in model.init_params(rng).items()}
    params["out.b"][EOS] = 4.0  # some sentences stop early, some run to max_len
    src = rng.integers(3, 13, size=(6, 7))
    src[1, 4:], src[3, 2:] = 0, 0
    return model, params, src


def test_greedy_with_cache_equals_greedy_recomputing_the_whole_prefix():
    model, params, src = seq2seq()
    got = greedy_decode(model, params, src, 10)
    assert any(len(g) < 10 for g in got) and any(len(g) == 10 for g in got)
    assert all(BOS not in g and EOS not in g for g in got)
    for b in range(len(src)):
        prefix = [BOS]
        for _ in range(10):
            logits, _ = model.forward(params, src[b:b + 1], np.array([prefix]))
            tok = int(logits[0, -1].argmax())
            if tok == EOS:
                break
            prefix.append(tok)
        assert got[b] == prefix[1:]


def test_beam_search_on_a_transformer_beam_one_is_greedy_and_batching_changes_nothing():
    model, params, src = seq2seq()
    assert beam_search(model, params, src, beam_size=1, max_len=10) == greedy_decode(model, params, src, 10)
    batched = beam_search(model, params, src, beam_size=3, max_len=10)
    assert batched == [beam_search(model, params, src[b:b + 1], beam_size=3, max_len=10)[0]
                       for b in range(len(src))]


def test_weight_overrides_and_activation_hooks_reach_every_decoding_matmul():
    """x @ W overrides and identity hooks change nothing, and every hook point is visited."""
    model, params, src = seq2seq()
    seen = set()
    points = [n + ":in" for n, v in params.items() if v.ndim == 2]
    points += [p + ".probs" for p in model.attention_prefixes()]
    hooks = {p: ((lambda p: lambda x: (seen.add(p) or x, None))(p), None) for p in points}
    matmuls = {n: (lambda W: lambda x: x @ W)(params[n].T if n == "emb" else params[n])
               for n, v in params.items() if v.ndim == 2}
    ref = beam_search(model, params, src, beam_size=2, max_len=6)
    assert beam_search(model, params, src, beam_size=2, max_len=6, matmuls=matmuls,
                       act_hooks=hooks) == ref
    assert seen == set(points)


def test_bad_input_names_the_problem():
    model, params, src = seq2seq()
    with pytest.raises(ValueError, match="src must be"):
        greedy_decode(model, params, src[0], 5)
    with pytest.raises(ValueError, match="max_len"):
        beam_search(model, params, src, max_len=0)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, params, src, beam_size=0, max_len=5)
