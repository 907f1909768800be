"""Translation data: built-in tasks, user corpora, the Moses + BPE text pipeline, batches.

    task = load_task("numbers-de")                       # Task(name, train, dev, test, src_lang, tgt_lang)
    tok = Tokenizer.learn([s for s, _ in task.train], [t for _, t in task.train],
                          task.src_lang, task.tgt_lang, vocab_size=800)
    pairs = [(tok.encode_src(s), tok.encode_tgt(t)) for s, t in task.train]
    for src, tgt_in, tgt_out in make_batches(pairs, max_tokens=2048, rng=np.random.default_rng(0)):
        ...                                              # (B, S), (B, T), (B, T) int64, PAD=0

Built-in tasks (``TASKS``): ``numbers-de`` (generated English -> German numbers, dates and short
sentences, ``numbers_de.py``), ``bible-es`` (English -> Spanish Bible verses, ``bible.py``),
``copy`` (random letter strings copied verbatim, drawn with ``copy_task.py``).
"""
from dataclasses import dataclass

from tinyzip.data.batching import make_batches
from tinyzip.data.text import BOS, EOS, PAD, SPECIALS, UNK, Tokenizer, Vocab
from tinyzip.errors import FileFormatError

__all__ = ["Task", "TASKS", "load_task", "load_parallel_files", "Tokenizer", "Vocab", "make_batches",
           "PAD", "BOS", "EOS", "UNK", "SPECIALS"]

TASKS = ("numbers-de", "bible-es", "copy")
COPY_SIZES = (4000, 200, 200)          # train, dev, test pairs of the text copy task


@dataclass(frozen=True)
class Task:
    """A translation task: lists of (source text, target text) pairs and the two language codes."""

    name: str
    train: list
    dev: list
    test: list
    src_lang: str
    tgt_lang: str


def load_task(name, seed=0):
    """One of ``TASKS``. ``seed`` selects the generated data of numbers-de and copy; bible-es is a
    fixed corpus (whole books held out) and ignores it."""
    if name == "numbers-de":
        from tinyzip.data.numbers_de import generate_numbers_de
        return Task(name, *generate_numbers_de(seed), "en", "de")
    if name == "bible-es":
        from tinyzip.data.bible import load_bible_es
        return Task(name, *load_bible_es(), "en", "es")
    if name == "copy":
        return Task(name, *_copy_pairs(seed), "en", "en")
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")


def load_parallel_files(src_path, tgt_path):
    """(source, target) pairs from two aligned UTF-8 text files, one sentence per line.

    Line i of one file translates line i of the other. Pairs where either side is blank are
    dropped (a blank source cannot be encoded). Raises ``FileFormatError`` (a ValueError) with a
    one-line message naming the file when a file cannot be read, is not UTF-8, has no non-blank
    line, or the two files differ in line count.
    """
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        raise FileFormatError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
                              "parallel files must have one line per sentence pair")
    pairs = [(s.strip(), t.strip()) for s, t in zip(src, tgt) if s.strip() and t.strip()]
    if not pairs:
        raise FileFormatError(f"{src_path} and {tgt_path}: no line pair with text on both sides")
    return pairs


def _read_lines(path):
    try:
        with open(path, encoding="utf-8", newline=None) as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise FileFormatError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if not any(line.strip() for line in lines):
        raise FileFormatError(f"{path}: empty file (no non-blank line)")
    return lines


def _copy_pairs(seed):
    """Text version of ``copy_task``: its random id strings, written as letters ('e f k')."""
    import numpy as np

    from tinyzip.data import copy_task
    rng = np.random.default_rng(seed)
    src, _, _ = copy_task.copy_batch(rng, 4 * sum(COPY_SIZES), vocab_size=16, min_len=3, max_len=10)
    texts = [" ".join(chr(ord("a") + int(i) - copy_task.FIRST_SYMBOL) for i in row if i != PAD)
             for row in src]
    unique = list(dict.fromkeys(texts))         # dedupe, keep order, so the splits are disjoint
    if len(unique) < sum(COPY_SIZES):
        raise AssertionError("copy task: too few distinct strings")
    n_train, n_dev, n_test = COPY_SIZES
    pairs = [(t, t) for t in unique[:sum(COPY_SIZES)]]
    return pairs[n_test + n_dev:], pairs[n_test:n_test + n_dev], pairs[:n_test]
