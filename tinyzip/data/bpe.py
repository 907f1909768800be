"""Byte-pair encoding of words into subword units.

Rico Sennrich, Barry Haddow, Alexandra Birch (2016). "Neural Machine Translation of Rare Words with
Subword Units." ACL 2016. arXiv:1508.07909.

A word is a sequence of characters plus an end-of-word marker ``</w>`` (the paper's "·"). Learning
(the paper's Algorithm 1) counts every adjacent symbol pair, weighted by word frequency, merges the
most frequent pair everywhere into one new symbol, and repeats; the merges, in order, are the
model. Applying it to a word (the paper's Section 3.2, "at test time") starts from characters and
performs the learned merges in merge order (lowest rank first) until none applies. Because the
marker is a symbol, a word-final subword differs from an inner one ("est</w>" vs "est"), so the
original words can be restored from the subwords.

Notation map
------------
paper                    code
vocab {word: freq}       ``word_freqs`` (dict str -> int; dict order matters for ties, see below)
get_stats(vocab)         ``stats`` (dict pair -> weighted count), kept up to date incrementally
best = max(pairs)        ``_pop_best`` (count first, then the tie-break below)
merge_vocab(best, vocab) ``_merge_word`` on every word that contains ``best``
num_merges               ``num_merges``

Tie-break (deterministic, and the paper's): among pairs of equal count, Algorithm 1's
``max(pairs, key=pairs.get)`` returns the pair inserted first into ``pairs``, i.e. the pair whose
first occurrence comes first when the words are scanned in dictionary order and each word left to
right. We keep exactly that order, so ``learn_bpe`` reproduces Algorithm 1 merge for merge; pass a
dict in a fixed order (e.g. the order of first occurrence in the corpus) for reproducible merges.

Deviations: (1) ``min_count`` (default 2, as in the authors' subword-nmt) stops learning when the
best pair occurs fewer times; Algorithm 1 has no such stop (use ``min_count=1``). (2) The paper
learns on the "dictionary extracted from a text"; we take that dictionary as input. (3) Applying
to a word whose characters were never seen leaves those characters as single symbols; the
vocabulary maps them to UNK (``text.Vocab``). (4) ``BPE.segment(word, known)`` undoes merges whose
result is not in ``known``, the remedy the paper's footnote 3 suggests ("recursively reversing
specific merges until all symbols are known").
"""
import heapq

END = "</w>"


def learn_bpe(word_freqs, num_merges=None, max_symbols=None, min_count=2):
    """Algorithm 1: list of merges (a, b), most frequent first.

    Stops after ``num_merges`` merges, or once the symbol inventory (every character, ``</w>``
    and every merged symbol still in use) reaches ``max_symbols``, or when the best pair occurs
    fewer than ``min_count`` times, whichever comes first. At least one limit must be given.
    """
    if num_merges is None and max_symbols is None:
        raise ValueError("give num_merges or max_symbols")
    for name, value in (("num_merges", num_merges), ("max_symbols", max_symbols), ("min_count", min_count)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    words, freqs = [], []
    for word, freq in word_freqs.items():
        bad_freq = isinstance(freq, bool) or not isinstance(freq, int) or freq < 1
        if not isinstance(word, str) or not word or bad_freq:
            raise ValueError(f"word_freqs must map non-empty str to int >= 1, got {word!r}: {freq!r}")
        words.append(list(word) + [END])
        freqs.append(freq)
    state = _LearnState(words, freqs)
    merges = []
    while num_merges is None or len(merges) < num_merges:
        if max_symbols is not None and state.n_symbols() >= max_symbols:
            break
        best = state.pop_best()
        if best is None or state.stats[best] < min_count:
            break
        merges.append(best)
        for w in sorted(state.where[best]):         # merge_vocab(best, vocab)
            state.merge(w, best)
    return merges


class BPE:
    """Applies learned merges to words (priority = merge rank), with a per-word cache."""

    def __init__(self, merges):
        self.merges = [tuple(m) for m in merges]
        if any(len(m) != 2 or not all(isinstance(s, str) and s for s in m) for m in self.merges):
            raise ValueError("merges must be pairs of non-empty str")
        self.ranks = {}
        self.parts = {}                              # merged symbol -> the earliest merge making it
        for rank, (a, b) in enumerate(self.merges):
            self.ranks.setdefault((a, b), rank)
            self.parts.setdefault(a + b, (a, b))
        self._cache = {}

    def segment(self, word, known=None):
        """Subword symbols of ``word``; the last one ends in ``</w>``. ``known``: see footnote 3."""
        if not isinstance(word, str) or not word:
            raise ValueError(f"word must be a non-empty str, got {word!r}")
        symbols = self._cache.get(word)
        if symbols is None:
            symbols = self._cache[word] = self._apply(word)
        if known is None:
            return symbols
        out = []
        for s in symbols:
            self._split_unknown(s, known, out)
        return tuple(out)

    def _apply(self, word):
        symbols = list(word) + [END]
        while len(symbols) > 1:
            ranked = [(self.ranks.get(pair, len(self.ranks)), pair) for pair in zip(symbols, symbols[1:])]
            rank, pair = min(ranked)
            if rank == len(self.ranks):
                break
            symbols = _merge_word(symbols, pair)
        return tuple(symbols)

    def _split_unknown(self, symbol, known, out):
        if symbol in known or symbol not in self.parts:
            out.append(symbol)
            return
        for part in self.parts[symbol]:
            self._split_unknown(part, known, out)


def join_subwords(symbols):
    """Inverse of segmentation: subword symbols -> words (a word ends at each ``</w>``)."""
    words, current = [], []
    for s in symbols:
        if s.endswith(END):
            current.append(s[: -len(END)])
            words.append("".join(current))
            current = []
        else:
            current.append(s)
    if current:                                      # a truncated word with no marker
        words.append("".join(current))
    return words


def _merge_word(symbols, pair, positions=False):
    """Replace every non-overlapping occurrence of ``pair``, left to right (merge_vocab's regex).

    With ``positions``, also return where the merged symbols sit in the new list and which pair
    indices of the old list overlapped a merge (those pairs disappear)."""
    a, b = pair
    out, merged_at, old_touched, i, n = [], [], set(), 0, len(symbols)
    while i < n:
        try:
            j = symbols.index(a, i)                  # jump to the next candidate (C speed)
        except ValueError:
            out.extend(symbols[i:])
            break
        if j + 1 < n and symbols[j + 1] == b:
            out.extend(symbols[i:j])
            old_touched.update((j - 1, j, j + 1))    # pairs starting at j-1, j, j+1 disappear
            merged_at.append(len(out))
            out.append(a + b)
            i = j + 2
        else:
            out.extend(symbols[i:j + 1])
            i = j + 1
    return (out, merged_at, old_touched) if positions else out


class _LearnState:
    """get_stats, kept incrementally: pair counts, which words hold each pair, a lazy max-heap.

    Heap entries are (-count, first_word, first_offset, pair); an entry may be stale but is never
    better than the pair's true key, so the first popped entry that equals its true key is the max.
    """

    def __init__(self, words, freqs):
        self.words, self.freqs = words, freqs
        self.stats, self.where, self.symbol_count, self.heap = {}, {}, {}, []
        self.base = {s for w in words for s in w}    # characters and </w>: always in the inventory
        self.n_merged_symbols = 0
        for w, symbols in enumerate(words):
            for symbol in symbols:
                self._count_symbol(symbol, freqs[w])
            for pair, n in _pair_counts(list(zip(symbols, symbols[1:]))).items():
                self._count_pair(w, pair, n, freqs[w])
        self.heap = [(-c, *self._first(p), p) for p, c in self.stats.items()]
        heapq.heapify(self.heap)

    def n_symbols(self):
        return len(self.base) + self.n_merged_symbols

    def merge(self, w, pair):
        """merge_vocab for word w, updating only the pairs that overlap a merged position."""
        old, freq, (a, b) = self.words[w], self.freqs[w], pair
        new, merged_at, old_touched = _merge_word(old, pair, positions=True)
        self.words[w] = new
        new_touched = {k for j in merged_at for k in (j - 1, j)}
        removed = _pair_counts([(old[k], old[k + 1]) for k in old_touched if 0 <= k < len(old) - 1])
        added = _pair_counts([(new[k], new[k + 1]) for k in new_touched if 0 <= k < len(new) - 1])
        for p in removed.keys() | added.keys():
            delta = added.get(p, 0) - removed.get(p, 0)
            if delta:
                self._count_pair(w, p, delta, freq)
            if delta > 0:                            # a new occurrence: the key may have improved
                heapq.heappush(self.heap, (-self.stats[p], -1, -1, p))
        k = len(merged_at)
        for symbol, delta in ((a, -k), (b, -k), (a + b, k)):
            self._count_symbol(symbol, delta * freq)

    def pop_best(self):
        """The most frequent pair, ties to the earliest first occurrence; None when no pair is left.

        Entries pushed with first occurrence (-1, -1), a lower bound, get their true key on reaching
        the top, so the costly ``_first`` runs only for pairs competing for the max.
        """
        while self.heap:
            neg, word, offset, pair = self.heap[0]
            count = self.stats.get(pair, 0)
            if count == -neg and count > 0:
                first = self._first(pair)
                if first == (word, offset):
                    return pair
                heapq.heapreplace(self.heap, (neg, *first, pair))
            elif count > 0:
                heapq.heapreplace(self.heap, (-count, -1, -1, pair))
            else:
                heapq.heappop(self.heap)
        return None

    def _first(self, pair):
        """(word index, character offset) of the first occurrence: Algorithm 1's insertion order."""
        w = min(self.where[pair])
        symbols, offset = self.words[w], 0
        for left, right in zip(symbols, symbols[1:]):
            if (left, right) == pair:
                return w, offset
            offset += len(left)
        raise AssertionError("pair index out of date")

    def _count_symbol(self, symbol, delta):
        before = self.symbol_count.get(symbol, 0)
        after = self.symbol_count[symbol] = before + delta
        if symbol not in self.base and (before == 0) != (after == 0):
            self.n_merged_symbols += 1 if after else -1

    def _count_pair(self, w, pair, delta, freq):
        count = self.stats[pair] = self.stats.get(pair, 0) + delta * freq
        if count == 0:
            del self.stats[pair]
        holders = self.where.setdefault(pair, {})
        holders[w] = holders.get(w, 0) + delta
        if holders[w] == 0:
            del holders[w]
            if not holders:
                del self.where[pair]


def _pair_counts(pairs):
    counts = {}
    for pair in pairs:
        counts[pair] = counts.get(pair, 0) + 1
    return counts
