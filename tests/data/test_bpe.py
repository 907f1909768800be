"""Tests for BPE (Sennrich, Haddow, Birch 2016, ACL, arXiv:1508.07909; tinyzip/data/bpe.py).

The reference is the paper's Algorithm 1 itself, rewritten here in its naive form (recount every
pair, take the max, merge in every word), against which the incremental learner must agree merge
for merge, including the tie-break.
"""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.data.bpe import BPE, END, join_subwords, learn_bpe

PAPER_VOCAB = {"low": 5, "lower": 2, "newest": 6, "widest": 3}     # Algorithm 1's toy dictionary


def _algorithm1(word_freqs, num_merges):
    """Algorithm 1, naive: get_stats over all words (dict insertion order), max (first max wins),
    merge the pair in every word (non-overlapping, left to right). Returns (merges, final words)."""
    vocab = [(list(w) + [END], f) for w, f in word_freqs.items()]
    merges = []
    for _ in range(num_merges):
        pairs = {}
        for symbols, f in vocab:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + f
        if not pairs:
            break
        best = max(pairs, key=pairs.get)             # first inserted among equal counts
        merges.append(best)
        new_vocab = []
        for symbols, f in vocab:
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_vocab.append((out, f))
        vocab = new_vocab
    return merges, [tuple(s) for s, _ in vocab]


word_freqs_st = st.dictionaries(st.text("abcd", min_size=1, max_size=7), st.integers(1, 5),
                                min_size=1, max_size=8)


def test_algorithm1_merge_order_on_the_papers_toy_dictionary():
    """Counts by hand (l o w </w>:5, l o w e r </w>:2, n e w e s t </w>:6, w i d e s t </w>:3):
    1. e-s = 6+3 = 9, s-t = 9, t-</w> = 9 (w-e = 2+6 = 8): tie at 9, e-s occurs first -> (e, s)
    2. es-t = 9, t-</w> = 9: es-t first in 'newest' -> (es, t);  3. est-</w> = 9 -> (est, </w>)
    4. l-o = 7, o-w = 7 -> (l, o);  5. lo-w = 7 -> (lo, w)
    6. n-e = 6, e-w = 6, w-est</w> = 6 (low-</w> = 5): n-e first in 'newest' -> (n, e)
    7. ne-w = 6 -> (ne, w);  8. new-est</w> = 6 -> (new, est</w>);  9. low-</w> = 5
    10. w-i = 3, i-d = 3, d-est</w> = 3: w-i first -> (w, i)."""
    expected = [("e", "s"), ("es", "t"), ("est", END), ("l", "o"), ("lo", "w"), ("n", "e"),
                ("ne", "w"), ("new", "est" + END), ("low", END), ("w", "i")]
    assert learn_bpe(PAPER_VOCAB, num_merges=10, min_count=1) == expected


def test_figure1_lower_segments_as_low_er():
    """Figure 1 learns 4 merges from {'low', 'lowest', 'newer', 'wider'}; the OOV 'lower' is
    then segmented 'low er·' (Section 3.2). Our tie-break picks l-o, lo-w, e-r, er-</w>."""
    merges = learn_bpe({"low": 1, "lowest": 1, "newer": 1, "wider": 1}, num_merges=4, min_count=1)
    assert BPE(merges).segment("lower") == ("low", "er" + END)


@given(word_freqs_st, st.integers(0, 20))
def test_algorithm1_equals_naive_reference(word_freqs, num_merges):
    """Incremental learner == naive Algorithm 1, merge for merge (ties included)."""
    expected, _ = _algorithm1(word_freqs, num_merges)
    assert learn_bpe(word_freqs, num_merges=num_merges, min_count=1) == expected


@given(word_freqs_st, st.integers(0, 20))
def test_apply_reproduces_the_learned_segmentation(word_freqs, num_merges):
    """Applying the merges by rank to a training word gives the segmentation learning ended with."""
    merges, final = _algorithm1(word_freqs, num_merges)
    bpe = BPE(merges)
    assert [bpe.segment(w) for w in word_freqs] == final


@given(word_freqs_st, st.lists(st.text("abcdxyz", min_size=1, max_size=9), min_size=1, max_size=5))
def test_round_trip_join_recovers_words(word_freqs, words):
    """Concatenating the subwords (markers removed) gives the word back, seen characters or not."""
    bpe = BPE(learn_bpe(word_freqs, num_merges=15, min_count=1))
    for w in words:
        symbols = bpe.segment(w)
        assert symbols[-1].endswith(END) and sum(s.endswith(END) for s in symbols) == 1
        assert join_subwords(symbols) == [w]
    assert join_subwords([s for w in words for s in bpe.segment(w)]) == words


def test_merge_priority_is_rank():
    """'abc' with [(a,b), (b,c)] -> ab c; with the ranks swapped -> a bc."""
    assert BPE([("a", "b"), ("b", "c")]).segment("abc") == ("ab", "c", END)
    assert BPE([("b", "c"), ("a", "b")]).segment("abc") == ("a", "bc", END)
    assert BPE([("a", "a")]).segment("aaa") == ("aa", "a", END)     # non-overlapping, left to right


def test_unseen_characters_stay_single_symbols():
    bpe = BPE(learn_bpe(PAPER_VOCAB, num_merges=10, min_count=1))
    assert bpe.segment("xyz") == ("x", "y", "z", END)
    assert bpe.segment("lowé") == ("low", "é", END)


def test_footnote3_unknown_symbols_are_split_back():
    """A subword outside ``known`` is replaced by the two symbols it was merged from, recursively."""
    bpe = BPE([("l", "o"), ("lo", "w"), ("low", END)])
    assert bpe.segment("low") == ("low" + END,)
    assert bpe.segment("low", known={"lo", "w", END}) == ("lo", "w", END)
    assert bpe.segment("low", known={"l", "o", "w", END}) == ("l", "o", "w", END)


def test_min_count_stops_learning():
    assert learn_bpe({"ab": 1}, num_merges=5) == []
    assert learn_bpe({"ab": 2}, num_merges=5) == [("a", "b"), ("ab", END)]


@given(word_freqs_st, st.integers(1, 30))
def test_max_symbols_bounds_the_inventory(word_freqs, max_symbols):
    """Inventory = characters + </w> + merged symbols in use; learning stops when it reaches the bound."""
    merges = learn_bpe(word_freqs, max_symbols=max_symbols, min_count=1)
    bpe = BPE(merges)
    inventory = {c for w in word_freqs for c in w} | {END} | {s for w in word_freqs for s in bpe.segment(w)}
    exhausted = all(len(bpe.segment(w)) == 1 for w in word_freqs)
    assert len(inventory) == max_symbols or (len(inventory) < max_symbols and exhausted) or \
        (not merges and len(inventory) >= max_symbols)


def test_bad_input_raises():
    with pytest.raises(ValueError):
        learn_bpe({"ab": 1})                          # no limit given
    for bad in ({"": 1}, {"ab": 0}, {"ab": 1.5}, {3: 1}):
        with pytest.raises(ValueError):
            learn_bpe(bad, num_merges=1)
    with pytest.raises(ValueError):
        learn_bpe({"ab": 1}, num_merges=-1)
    with pytest.raises(ValueError):
        BPE([("a",)])
    with pytest.raises(ValueError):
        BPE([]).segment("")
