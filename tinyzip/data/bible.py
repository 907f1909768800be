"""The real built-in corpus: English-Spanish Bible verse pairs (KJV 1769 -> Reina-Valera 1909).

What ships
----------
``tinyzip/data/bible_en_es.tsv.gz``: gzip'd UTF-8 TSV, one header line
``book  chapter  verse  split  en  es`` and one line per verse pair, in canonical (KJV) order.
Only pairs with at most ``MAX_WORDS`` whitespace-separated words on *both* sides are kept, so the
file stays small and a tiny Transformer can learn from it. Whole books are held out: ``DEV_BOOKS``
for validation and ``TEST_BOOKS`` for the test set; every other book is training data.

Provenance and license
----------------------
Built by ``scripts/build_bible_corpus.py``, which reads the SWORD zText modules of two Debian
packages directly (its own zText reader, Python's zlib; no libsword or pysword):

- ``sword-text-kjv`` 14.3-1: SWORD module ``engKJV2006eb`` version 14.3 (2022-12-21), "King James
  Version" (the standardized text of 1769, with Strong's numbers, which we strip), OSIS markup,
  KJV versification. Copyright: PUBLIC DOMAIN.
- ``sword-text-sparv`` 2.60-1: SWORD module ``spaRV1909eb`` version 2.60 (2022-12-23), "Reina
  Valera 1909", OSIS markup, KJV versification. Copyright: PUBLIC DOMAIN (Dominio Publico).

Both modules come from CrossWire / eBible.org and declare ``DistributionLicense=Public Domain``
in their ``.conf`` files. Both use KJV versification, so verse index i of one module is verse
index i of the other. The text is stripped of markup (OSIS tags, Strong's numbers, footnotes,
headings, the KJV paragraph mark) and whitespace is normalised; nothing else is changed
(archaic spelling and the translators' italics, shown as plain words, stay).
"""
import gzip
import os
import zlib
from typing import NamedTuple

from tinyzip.errors import FileFormatError

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bible_en_es.tsv.gz")
HEADER = ("book", "chapter", "verse", "split", "en", "es")
MAX_WORDS = 30
SPLITS = ("train", "dev", "test")
DEV_BOOKS = ("Esther", "Ecclesiastes", "Daniel", "Amos", "Galatians", "Hebrews", "1 Peter", "2 Peter")
TEST_BOOKS = ("Judges", "Ruth", "Lamentations", "Hosea", "Romans", "James")


class Verse(NamedTuple):
    """One aligned verse pair as stored in the shipped file."""

    book: str
    chapter: int
    verse: int
    split: str
    en: str
    es: str


def split_of(book):
    """'dev', 'test' or 'train': the split a whole book belongs to."""
    if not isinstance(book, str):
        raise TypeError(f"book must be a str, got {type(book).__name__}")
    if book in DEV_BOOKS:
        return "dev"
    if book in TEST_BOOKS:
        return "test"
    return "train"


def _parse_line(path, lineno, line):
    fields = line.split("\t")
    if len(fields) != len(HEADER):
        raise FileFormatError(f"{path}: line {lineno} has {len(fields)} fields, expected {len(HEADER)}")
    book, chapter, verse, split, en, es = fields
    if not (chapter.isdigit() and verse.isdigit()):
        raise FileFormatError(f"{path}: line {lineno} has a non-numeric chapter/verse {chapter!r}:{verse!r}")
    if split != split_of(book):
        raise FileFormatError(f"{path}: line {lineno} puts {book!r} in split {split!r}, expected {split_of(book)!r}")
    if not en or not es:
        raise FileFormatError(f"{path}: line {lineno} ({book} {chapter}:{verse}) has an empty text")
    return Verse(book, int(chapter), int(verse), split, en, es)


def load_bible_verses(path=None):
    """Every verse pair in the shipped file, in file order, as ``Verse`` records.

    Raises ``FileFormatError`` (one line, naming the file) if the file is missing, not gzip,
    not UTF-8, lacks the header, or has a malformed line.
    """
    path = DEFAULT_PATH if path is None else os.fspath(path)
    try:
        with gzip.open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise FileFormatError(f"{path}: Bible corpus file is missing (rebuild it with "
                              f"scripts/build_bible_corpus.py)") from None
    except (OSError, EOFError, zlib.error) as e:
        raise FileFormatError(f"{path}: not a readable gzip file ({e})") from None
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or tuple(lines[0].split("\t")) != HEADER:
        raise FileFormatError(f"{path}: first line must be the header {chr(9).join(HEADER)!r}")
    verses = [_parse_line(path, i + 2, line) for i, line in enumerate(lines[1:])]
    if not verses:
        raise FileFormatError(f"{path}: holds no verse pairs")
    return verses


def load_bible_es(path=None):
    """The English->Spanish task as ``(train, dev, test)``, each a list of ``(en, es)`` text pairs."""
    out = {s: [] for s in SPLITS}
    for v in load_bible_verses(path):
        out[v.split].append((v.en, v.es))
    return out["train"], out["dev"], out["test"]
