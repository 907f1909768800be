"""A tiny synthetic sequence-to-sequence task: copy (or reverse) a random string of symbols.

No paper: this is the classic sanity check for an encoder-decoder (a model that cannot learn to
copy has a bug). It needs no tokenizer, trains in seconds, and has a known optimum (loss -> the
label-smoothing floor, accuracy -> 1), so tests, tutorials and ``tinyzip train --task copy`` use it.

Ids follow the tinyzip vocabulary: PAD=0, BOS=1, EOS=2, UNK=3; symbols are 4 .. vocab_size-1.
A batch is ``(src (B, S), tgt_in (B, T), tgt_out (B, T))`` int64, padded with PAD, where
``tgt_in = BOS + y`` and ``tgt_out = y + EOS`` (the same layout as ``tinyzip.data.make_batches``),
with ``y = x`` (copy) or ``y = x[::-1]`` (reverse).
"""
import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3
FIRST_SYMBOL = 4


def copy_batch(rng: np.random.Generator, batch_size: int, *, vocab_size: int = 16, min_len: int = 3,
               max_len: int = 8, reverse: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One padded batch of random strings with lengths uniform in [min_len, max_len]."""
    if vocab_size <= FIRST_SYMBOL:
        raise ValueError(f"vocab_size must be > {FIRST_SYMBOL} (4 ids are special), got {vocab_size}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = rng.integers(min_len, max_len + 1, size=batch_size)                   # (B,)
    symbols = rng.integers(FIRST_SYMBOL, vocab_size, size=(batch_size, max_len))    # (B, S)
    positions = np.arange(max_len)                                                  # (S,)
    valid = positions[None, :] < lengths[:, None]                                   # (B, S)
    src = np.where(valid, symbols, PAD).astype(np.int64)                            # (B, S)
    if reverse:
        # y[i] = x[len - 1 - i] inside each row's own length
        index = np.clip(lengths[:, None] - 1 - positions[None, :], 0, max_len - 1)  # (B, S)
        y = np.where(valid, np.take_along_axis(src, index, axis=1), PAD)            # (B, S)
    else:
        y = src
    tgt_in = np.concatenate([np.full((batch_size, 1), BOS), y], axis=1)             # (B, T) T = S+1
    tgt_out = np.concatenate([y, np.full((batch_size, 1), PAD)], axis=1)            # (B, T)
    tgt_out[np.arange(batch_size), lengths] = EOS
    return src, tgt_in.astype(np.int64), tgt_out.astype(np.int64)


def epoch_batches(epoch: int, *, seed: int, n_batches: int, batch_size: int, vocab_size: int = 16,
                  min_len: int = 3, max_len: int = 8, reverse: bool = False) -> list:
    """The batches of one epoch, a pure function of (seed, epoch): fresh strings every epoch.

    Passed to ``tinyzip.train.train`` (via ``functools.partial``), this makes the data order
    reproducible from ``(epoch, index)`` alone, which is what exact resume needs.
    """
    rng = np.random.default_rng([seed, epoch])
    return [copy_batch(rng, batch_size, vocab_size=vocab_size, min_len=min_len, max_len=max_len,
                       reverse=reverse) for _ in range(n_batches)]
