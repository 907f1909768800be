"""Tests for length-bucketed, token-budget batches (tinyzip/data/batching.py)."""
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.data import BOS, EOS, PAD, UNK, make_batches

ids_st = st.integers(UNK, 40)


@st.composite
def pairs_and_budget_st(draw):
    pairs = draw(st.lists(st.tuples(st.lists(ids_st, min_size=1, max_size=12),
                                    st.lists(ids_st, min_size=0, max_size=12)), min_size=1, max_size=40))
    need = max(max(len(s), len(t) + 1) for s, t in pairs)
    return pairs, draw(st.integers(need, 4 * need + 40))


def _unpad(src, tgt_in, tgt_out):
    """Recover (src ids, tgt ids) from each padded row, checking the row layout on the way."""
    out = []
    for s, ti, to in zip(src, tgt_in, tgt_out):
        n_s = int((s != PAD).sum())
        assert (s[:n_s] != PAD).all() and (s[n_s:] == PAD).all()       # padding only at the end
        n_t = int(np.argmax(to == EOS))
        assert to[n_t] == EOS and (to[n_t + 1:] == PAD).all() and (to[:n_t] > EOS).all()
        assert ti[0] == BOS and (ti[1:n_t + 1] == to[:n_t]).all() and (ti[n_t + 1:] == PAD).all()
        out.append((tuple(s[:n_s].tolist()), tuple(to[:n_t].tolist())))
    return out


@given(pairs_and_budget_st(), st.integers(0, 2**32 - 1))
def test_each_pair_exactly_once_layout_and_budget(pairs_budget, seed):
    pairs, max_tokens = pairs_budget
    seen = []
    for src, tgt_in, tgt_out in make_batches(pairs, max_tokens, np.random.default_rng(seed)):
        assert src.dtype == tgt_in.dtype == tgt_out.dtype == np.int64
        assert tgt_in.shape == tgt_out.shape and src.shape[0] == tgt_in.shape[0]
        assert src.shape[0] * max(src.shape[1], tgt_in.shape[1]) <= max_tokens   # B * max(S, T)
        seen += _unpad(src, tgt_in, tgt_out)
    assert Counter(seen) == Counter((tuple(s), tuple(t)) for s, t in pairs)


@given(pairs_and_budget_st(), st.integers(0, 2**32 - 1))
def test_deterministic_given_rng(pairs_budget, seed):
    pairs, max_tokens = pairs_budget
    a = list(make_batches(pairs, max_tokens, np.random.default_rng(seed)))
    b = list(make_batches(pairs, max_tokens, np.random.default_rng(seed)))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def test_unshuffled_batches_are_sorted_by_length():
    rng = np.random.default_rng(0)
    pairs = [(list(rng.integers(4, 9, size=n)), list(rng.integers(4, 9, size=n)))
             for n in rng.integers(1, 30, 200)]
    costs = [max(b[0].shape[1], b[1].shape[1]) for b in make_batches(pairs, 64, shuffle=False)]
    assert costs == sorted(costs)


def test_shuffle_changes_batch_order():
    pairs = [([4] * n, [5] * n) for n in range(1, 41)]
    order = [[b[0].shape[1] for b in make_batches(pairs, 41, np.random.default_rng(s))] for s in range(3)]
    assert order[0] != order[1] or order[0] != order[2]


def test_bad_input_raises():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="over max_tokens"):
        list(make_batches([([4] * 9, [5])], 8, rng))
    with pytest.raises(ValueError, match="empty source"):
        list(make_batches([([], [5])], 8, rng))
    with pytest.raises(ValueError, match="PAD/BOS/EOS"):
        list(make_batches([([4, EOS], [5])], 8, rng))
    with pytest.raises(ValueError):
        list(make_batches([([4], [-1])], 8, rng))
    with pytest.raises(ValueError):
        list(make_batches([([4], [5])], 0, rng))
    with pytest.raises(TypeError):
        list(make_batches([([4], [5])], 8, rng=None))
    assert list(make_batches([], 8, rng)) == []
