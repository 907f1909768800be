"""The shipped KJV -> Reina-Valera 1909 corpus and the zText reader that builds it.

Reads only the shipped file and synthetic files (no SWORD packages needed). Expected texts are the
published KJV (1769) and RV1909 wordings; expected sizes are the ranges stated when the corpus was
specified (about 19.8k / 1.0k / 1.07k pairs), not numbers copied from our build.
"""
import gzip
import importlib.util
import os
import re
import struct
import zlib

import pytest

from tinyzip.data import bible
from tinyzip.errors import FileFormatError

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)


@pytest.fixture(scope="module")
def verses():
    return bible.load_bible_verses()


@pytest.fixture(scope="module")
def script():
    path = os.path.join(ROOT, "scripts", "build_bible_corpus.py")
    spec = importlib.util.spec_from_file_location("build_bible_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _find(verses, book, chapter, verse):
    hits = [v for v in verses if (v.book, v.chapter, v.verse) == (book, chapter, verse)]
    assert len(hits) == 1, f"{book} {chapter}:{verse} found {len(hits)} times"
    return hits[0]


def test_split_sizes_match_the_specified_ranges():
    train, dev, test = bible.load_bible_es()
    assert 18_500 <= len(train) <= 20_500
    assert 900 <= len(dev) <= 1_100
    assert 950 <= len(test) <= 1_200
    for pairs in (train, dev, test):
        assert all(isinstance(en, str) and isinstance(es, str) for en, es in pairs)


def test_file_is_small():
    assert os.path.getsize(bible.DEFAULT_PATH) < 3_000_000


def test_held_out_books_are_whole_and_disjoint(verses):
    books = {s: {v.book for v in verses if v.split == s} for s in bible.SPLITS}
    assert books["dev"] == set(bible.DEV_BOOKS)
    assert books["test"] == set(bible.TEST_BOOKS)
    assert not books["train"] & (books["dev"] | books["test"])
    assert not books["dev"] & books["test"]
    assert len(books["train"]) == 66 - len(bible.DEV_BOOKS) - len(bible.TEST_BOOKS)


def test_known_verses(verses):
    gen = _find(verses, "Genesis", 1, 1)
    assert gen.en == "In the beginning God created the heaven and the earth."
    assert gen.es == "En el principio crió Dios los cielos y la tierra."
    john = _find(verses, "John", 11, 35)
    assert (john.en, john.es) == ("Jesus wept.", "Y lloró Jesús.")
    assert john.split == "train"
    rom = _find(verses, "Romans", 6, 23)
    assert rom.split == "test"
    assert rom.en == ("For the wages of sin is death; but the gift of God is eternal life "
                      "through Jesus Christ our Lord.")
    assert "la paga del pecado es muerte" in rom.es


def test_no_markup_and_clean_whitespace(verses):
    for v in verses:
        for text in (v.en, v.es):
            assert not any(c in text for c in "<>\u00b6\\\t\n&"), (v.book, v.chapter, v.verse, text)
            assert text == " ".join(text.split())
            assert "lemma" not in text and not re.search(r"strong:[GH]\d", text)


def test_at_most_max_words_on_both_sides(verses):
    assert bible.MAX_WORDS == 30
    assert all(len(v.en.split()) <= 30 and len(v.es.split()) <= 30 for v in verses)


def test_verses_are_unique_and_in_canonical_order(script, verses):
    order = {name: i for i, (_, name, _) in enumerate(script.KJV_BOOKS)}
    keys = [(order[v.book], v.chapter, v.verse) for v in verses]
    assert keys == sorted(set(keys))


def test_pairs_are_aligned_by_proper_names(verses):
    """A name in the English verse appears, in its RV1909 spelling, in the Spanish verse."""
    for en_name, es_name in (("Jesus", "Jes"), ("Moses", "Mois"), ("Jerusalem", "Jerusal"), ("David", "David")):
        pairs = [v for v in verses if en_name in v.en.split() or en_name + "," in v.en]
        assert len(pairs) > 50
        agree = sum(es_name in v.es for v in pairs)
        assert agree >= 0.95 * len(pairs), (en_name, agree, len(pairs))


def test_load_bible_es_matches_verse_records(verses):
    train, dev, test = bible.load_bible_es()
    assert train == [(v.en, v.es) for v in verses if v.split == "train"]
    assert test == [(v.en, v.es) for v in verses if v.split == "test"]
    assert dev == [(v.en, v.es) for v in verses if v.split == "dev"]
    assert len(train) + len(dev) + len(test) == len(verses)


def test_split_of():
    assert bible.split_of("Hebrews") == "dev" and bible.split_of("James") == "test"
    assert bible.split_of("Genesis") == "train"
    with pytest.raises(TypeError, match="book"):
        bible.split_of(3)


# ---- bad files -------------------------------------------------------------------------------

def _write(path, text):
    path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    return path


HEADER = "\t".join(bible.HEADER) + "\n"


def test_missing_file_raises_file_format_error(tmp_path):
    with pytest.raises(FileFormatError, match="missing"):
        bible.load_bible_es(tmp_path / "nope.tsv.gz")


def test_corrupt_gzip_raises_file_format_error(tmp_path):
    good = open(bible.DEFAULT_PATH, "rb").read()
    bad = tmp_path / "bad.tsv.gz"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(FileFormatError, match="bad.tsv.gz"):
        bible.load_bible_es(bad)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(FileFormatError, match="gzip"):
        bible.load_bible_es(bad)


@pytest.mark.parametrize("body, message", [
    ("", "header"),
    ("book\ten\n", "header"),
    (HEADER, "no verse pairs"),
    (HEADER + "Genesis\t1\t1\ttrain\tIn the beginning\n", "fields"),
    (HEADER + "Genesis\t1\tx\ttrain\ta\tb\n", "non-numeric"),
    (HEADER + "Genesis\t1\t1\tdev\ta\tb\n", "expected 'train'"),
    (HEADER + "Ruth\t1\t1\ttrain\ta\tb\n", "expected 'test'"),
    (HEADER + "Genesis\t1\t1\ttrain\t\tb\n", "empty"),
])
def test_malformed_tsv_raises_naming_the_problem(tmp_path, body, message):
    path = _write(tmp_path / "c.tsv.gz", body)
    with pytest.raises(FileFormatError, match=message):
        bible.load_bible_verses(path)


def test_non_utf8_raises(tmp_path):
    path = tmp_path / "c.tsv.gz"
    path.write_bytes(gzip.compress(HEADER.encode() + b"Genesis\t1\t1\ttrain\t\xff\tb\n"))
    with pytest.raises(FileFormatError, match="UTF-8"):
        bible.load_bible_verses(path)


# ---- the build script, on synthetic input ----------------------------------------------------

def test_kjv_table_has_the_published_totals(script):
    """66 books, 1189 chapters, 23145 OT + 7957 NT = 31102 verses (KJV versification)."""
    assert len(script.KJV_BOOKS) == 66
    assert sum(len(c) for _, _, c in script.KJV_BOOKS) == 1189
    assert [sum(map(sum, (c for _, _, c in books))) for _, books, _ in script.TESTAMENTS] == [23145, 7957]
    assert {n for _, books, n in script.TESTAMENTS} == {23145, 7957}
    names = {name for _, name, _ in script.KJV_BOOKS}
    assert set(bible.DEV_BOOKS) <= names and set(bible.TEST_BOOKS) <= names


def test_read_ztext_round_trips_synthetic_module(script, tmp_path):
    """.bzs = (offset, size, usize) per zlib block; .bzv = (block, offset, size) per entry."""
    blocks = ["heading", "In the beginning. And the earth.", "Jesus wept."]
    entries = [(0, 0, 0), (0, 0, 7), (1, 0, 17), (1, 18, 14), (2, 0, 11)]
    bzz, bzs = b"", b""
    for text in blocks:
        raw = text.encode()
        comp = zlib.compress(raw)
        bzs += struct.pack("<III", len(bzz), len(comp), len(raw))
        bzz += comp
    bzv = b"".join(struct.pack("<IIH", *e) for e in entries)
    for ext, data in (("bzz", bzz), ("bzs", bzs), ("bzv", bzv)):
        (tmp_path / f"nt.{ext}").write_bytes(data)
    got = script.read_ztext(str(tmp_path), "nt")
    assert got == ["", "heading", "In the beginning.", "And the earth.", "Jesus wept."]


def test_read_ztext_rejects_bad_index(script, tmp_path):
    for ext, data in (("bzz", b""), ("bzs", b"\0" * 5), ("bzv", b"")):
        (tmp_path / f"ot.{ext}").write_bytes(data)
    with pytest.raises(ValueError, match="multiples"):
        script.read_ztext(str(tmp_path), "ot")


def test_clean_strips_osis_strongs_notes_and_pilcrows(script):
    osis = ('<div type="x-milestone" subType="x-preverse" sID="pv2"/><div sID="gen5" type="x-p"/> '
            '\u00b6 And <w lemma="strong:H0430">God</w> <w lemma="strong:H0559">said</w>, Let there be a '
            '<w lemma="strong:H7549">firmament</w> <transChange type="added">was</transChange>.'
            '<note placement="foot"><reference type="annotateRef">1.6 </reference>firmament: Heb. '
            'expansion</note> <title type="x-heading">Headings go</title><div eID="gen3" type="x-p"/>')
    assert script.clean(osis, "en") == "And God said, Let there be a firmament was."
    assert script.clean('<w lemma="strong:H1">afrai</w>d \\nd <w>LORD</w></divineName>', "en") == "afraid LORD"


def test_clean_spanish_spacing_and_drop_caps(script):
    assert script.clean('\u00bf<w lemma="strong:H1">CAZAR\u00c1S</w> t\u00fa?', "es") == "\u00bfCazar\u00e1s t\u00fa?"
    assert script.clean('<w>y d\u00edce</w><transChange type="added">les</transChange>', "es") == "y d\u00edceles"
    assert script.clean('<w>hay all\u00ed</w><transChange type="added">tambi\u00e9n</transChange>',
                        "es") == "hay all\u00ed tambi\u00e9n"
    assert script.clean("Y PASANDO por", "es") == "Y pasando por"
    assert script.clean("BETH. \u00bfCon qu\u00e9", "es", psalm119=True) == "\u00bfCon qu\u00e9"


def test_overlap_is_jaccard_of_strongs_numbers(script):
    a = '<w lemma="strong:H0430">God</w> <w lemma="strong:H1254">created</w>'
    b = '<w lemma="strong:H430">Dios</w> <w lemma="strong:H7225">principio</w>'
    assert script.overlap(a, b) == pytest.approx(1 / 3)
    assert script.overlap("plain", "texto") == 1.0


def test_walk_kjv_checks_chapter_markers_and_count(script):
    books = [("Obad", "Obadiah", (2,))]
    entries = ["", "", "book intro", '<chapter osisID="Obad.1"/>', "v1", "v2"]
    assert list(script.walk_kjv(entries, "ot", books, 2)) == [("Obadiah", 1, 1, "v1"), ("Obadiah", 1, 2, "v2")]
    with pytest.raises(ValueError, match="needs 6"):
        list(script.walk_kjv(entries[:-1], "ot", books, 2))
    entries[3] = '<chapter osisID="Jonah.1"/>'
    with pytest.raises(ValueError, match="Obad.1"):
        list(script.walk_kjv(entries, "ot", books, 2))


def test_write_is_deterministic_gzip(script, tmp_path):
    rows = [("Genesis", "1", "1", "train", "In the beginning", "En el principio")]
    a, b = tmp_path / "a.tsv.gz", tmp_path / "b.tsv.gz"
    script.write_tsv_gz(str(a), rows)
    script.write_tsv_gz(str(b), rows)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[4:8] == b"\0\0\0\0"                     # gzip MTIME field is zero
    assert bible.load_bible_verses(a)[0].es == "En el principio"
    with pytest.raises(ValueError, match="TSV"):
        script.write_tsv_gz(str(a), [("Genesis", "1", "1", "train", "a\tb", "c")])
