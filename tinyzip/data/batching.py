"""Length-bucketed batches under a token budget, padded with PAD=0.

Vaswani et al. (2017, "Attention Is All You Need", NeurIPS, arXiv:1706.03762, Section 5.1) batch
"sentence pairs ... together by approximate sequence length", each batch holding about 25 000 source
and 25 000 target tokens. We do the same at tiny scale, the way fairseq does: sort the pairs by
length (random order among equal lengths), cut the sorted list greedily into batches whose padded
size stays within ``max_tokens``, then shuffle the order of the batches. Sorting keeps padding small;
shuffling batches (not pairs) keeps each epoch's order random.

Budget: a batch of B pairs costs ``B * max(S, T)`` where S is its longest source and T = 1 + its
longest target (the decoder sees BOS + y and predicts y + EOS). Every batch satisfies
``cost <= max_tokens``; a single pair that alone exceeds the budget is an error (filter long pairs
first), never a silently oversized batch.

Shapes: ``src (B, S)``, ``tgt_in (B, T)``, ``tgt_out (B, T)``, all int64; padding only at the end
of each row; ``tgt_in = [BOS] + y``, ``tgt_out = y + [EOS]``.
"""
import numpy as np

from tinyzip.data.text import BOS, EOS, PAD


def make_batches(pairs_ids, max_tokens, rng=None, shuffle=True):
    """Yield ``(src, tgt_in, tgt_out)`` int64 arrays; each pair appears exactly once per call.

    ``pairs_ids``: list of (src ids, tgt ids) without PAD/BOS/EOS (UNK is fine); the source must
    be non-empty, the target may be empty. ``rng`` (np.random.Generator) is required when ``shuffle``; with
    ``shuffle=False`` the batches come in sorted order, shortest first, deterministically.
    """
    lengths = _check(pairs_ids, max_tokens)
    if shuffle and not isinstance(rng, np.random.Generator):
        raise TypeError(f"shuffle=True needs rng: np.random.Generator, got {type(rng).__name__}")
    n = len(lengths)
    order = rng.permutation(n) if shuffle else np.arange(n)
    order = order[np.argsort(lengths[order], kind="stable")]       # by length, random among ties
    batches, start, longest = [], 0, 0
    for k, i in enumerate(order):
        longest_if_added = max(longest, lengths[i])
        if k > start and (k - start + 1) * longest_if_added > max_tokens:
            batches.append(order[start:k])
            start, longest_if_added = k, lengths[i]
        longest = longest_if_added
    if n:
        batches.append(order[start:])
    if shuffle:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    for idx in batches:
        yield _pad([pairs_ids[i] for i in idx])


def _pad(pairs):
    B = len(pairs)
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs) + 1
    src = np.full((B, S), PAD, dtype=np.int64)                     # (B, S)
    tgt_in = np.full((B, T), PAD, dtype=np.int64)                  # (B, T)
    tgt_out = np.full((B, T), PAD, dtype=np.int64)                 # (B, T)
    for b, (s, t) in enumerate(pairs):
        src[b, :len(s)] = s
        tgt_in[b, 0] = BOS
        tgt_in[b, 1:len(t) + 1] = t
        tgt_out[b, :len(t)] = t
        tgt_out[b, len(t)] = EOS
    return src, tgt_in, tgt_out


def _check(pairs_ids, max_tokens):
    """Per-pair cost max(S, T + 1) as an int64 array, after validating everything."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    lengths = np.empty(len(pairs_ids), dtype=np.int64)
    for i, pair in enumerate(pairs_ids):
        if len(pair) != 2:
            raise ValueError(f"pair {i} must be (src_ids, tgt_ids), got {len(pair)} items")
        src, tgt = pair
        if len(src) == 0:
            raise ValueError(f"pair {i} has an empty source (drop empty lines before batching)")
        for name, seq in (("source", src), ("target", tgt)):
            if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0 for x in seq):
                raise ValueError(f"pair {i}: {name} ids must be non-negative ints")
            if any(x in (PAD, BOS, EOS) for x in seq):
                raise ValueError(f"pair {i}: {name} contains PAD/BOS/EOS; pass ids without specials")
        lengths[i] = max(len(src), len(tgt) + 1)
        if lengths[i] > max_tokens:
            raise ValueError(f"pair {i} needs {lengths[i]} tokens, over max_tokens={max_tokens}; "
                             "raise max_tokens or drop long pairs")
    return lengths
