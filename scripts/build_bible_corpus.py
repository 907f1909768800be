"""Build tinyzip/data/bible_en_es.tsv.gz from Debian's SWORD packages (KJV and Reina-Valera 1909).

    apt-get update && apt-get install -y sword-text-kjv sword-text-sparv
    python scripts/build_bible_corpus.py            # writes tinyzip/data/bible_en_es.tsv.gz

The SWORD zText format, read here with Python's zlib only (files per testament, ``ot.*``/``nt.*``):

- ``.bzv`` verse index, one little-endian record ``(block u32, offset u32, size u16)`` per entry,
  in versification order: entry 0 is the module heading, entry 1 the testament heading, then for
  each book a book-intro entry, and for each chapter a chapter-intro entry followed by its verses;
- ``.bzs`` block index, one record ``(offset u32, compressed size u32, uncompressed size u32)``
  per block of the ``.bzz`` file;
- ``.bzz`` the zlib-compressed blocks; a verse is ``block[offset:offset + size]`` (UTF-8 OSIS).

Both modules declare ``Versification=KJV``, so the i-th entry of one is the i-th of the other.
``KJV_BOOKS`` below gives the verses per chapter; the walk checks that every chapter-intro entry
carries the matching ``osisID`` and that the entry count of each testament is exact.
The output is deterministic (gzip mtime 0, no file name in the header) and written atomically.
"""
import argparse
import configparser
import gzip
import html
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from tinyzip.data.bible import DEFAULT_PATH, HEADER, MAX_WORDS, SPLITS, split_of  # noqa: E402

MODULES = {"en": ("sword-text-kjv", "engKJV2006eb"), "es": ("sword-text-sparv", "spaRV1909eb")}

# KJV versification: (OSIS id, name, verses in chapter 1, 2, ...). OT has 23145 verses, NT 7957.
KJV_BOOKS = [(osis, name, tuple(int(n) for n in counts.split())) for osis, name, counts in (
    ("Gen", "Genesis", "31 25 24 26 32 22 24 22 29 32 32 20 18 24 21 16 27 33 38 18 34 24 20 67 34 "
                       "35 46 22 35 43 55 32 20 31 29 43 36 30 23 23 57 38 34 34 28 34 31 22 33 26"),
    ("Exod", "Exodus", "22 25 22 31 23 30 25 32 35 29 10 51 22 31 27 36 16 27 25 26 36 31 33 18 40 "
                       "37 21 43 46 38 18 35 23 35 35 38 29 31 43 38"),
    ("Lev", "Leviticus", "17 16 17 35 19 30 38 36 24 20 47 8 59 57 33 34 16 30 37 27 24 33 44 23 55 46 34"),
    ("Num", "Numbers", "54 34 51 49 31 27 89 26 23 36 35 16 33 45 41 50 13 32 22 29 35 41 30 25 18 "
                       "65 23 31 40 16 54 42 56 29 34 13"),
    ("Deut", "Deuteronomy", "46 37 29 49 33 25 26 20 29 22 32 32 18 29 23 22 20 22 21 20 23 30 25 22 "
                            "19 19 26 68 29 20 30 52 29 12"),
    ("Josh", "Joshua", "18 24 17 24 15 27 26 35 27 43 23 24 33 15 63 10 18 28 51 9 45 34 16 33"),
    ("Judg", "Judges", "36 23 31 24 31 40 25 35 57 18 40 15 25 20 20 31 13 31 30 48 25"),
    ("Ruth", "Ruth", "22 23 18 22"),
    ("1Sam", "1 Samuel", "28 36 21 22 12 21 17 22 27 27 15 25 23 52 35 23 58 30 24 42 15 23 29 22 44 "
                         "25 12 25 11 31 13"),
    ("2Sam", "2 Samuel", "27 32 39 12 25 23 29 18 13 19 27 31 39 33 37 23 29 33 43 26 22 51 39 25"),
    ("1Kgs", "1 Kings", "53 46 28 34 18 38 51 66 28 29 43 33 34 31 34 34 24 46 21 43 29 53"),
    ("2Kgs", "2 Kings", "18 25 27 44 27 33 20 29 37 36 21 21 25 29 38 20 41 37 37 21 26 20 37 20 30"),
    ("1Chr", "1 Chronicles", "54 55 24 43 26 81 40 40 44 14 47 40 14 17 29 43 27 17 19 8 30 19 32 31 "
                             "31 32 34 21 30"),
    ("2Chr", "2 Chronicles", "17 18 17 22 14 42 22 18 31 19 23 16 22 15 19 14 19 34 11 37 20 12 21 27 "
                             "28 23 9 27 36 27 21 33 25 33 27 23"),
    ("Ezra", "Ezra", "11 70 13 24 17 22 28 36 15 44"),
    ("Neh", "Nehemiah", "11 20 32 23 19 19 73 18 38 39 36 47 31"),
    ("Esth", "Esther", "22 23 15 17 14 14 10 17 32 3"),
    ("Job", "Job", "22 13 26 21 27 30 21 22 35 22 20 25 28 22 35 22 16 21 29 29 34 30 17 25 6 14 23 "
                   "28 25 31 40 22 33 37 16 33 24 41 30 24 34 17"),
    ("Ps", "Psalms", "6 12 8 8 12 10 17 9 20 18 7 8 6 7 5 11 15 50 14 9 13 31 6 10 22 12 14 9 11 12 "
                     "24 11 22 22 28 12 40 22 13 17 13 11 5 26 17 11 9 14 20 23 19 9 6 7 23 13 11 11 "
                     "17 12 8 12 11 10 13 20 7 35 36 5 24 20 28 23 10 12 20 72 13 19 16 8 18 12 13 17 "
                     "7 18 52 17 16 15 5 23 11 13 12 9 9 5 8 28 22 35 45 48 43 13 31 7 10 10 9 8 18 "
                     "19 2 29 176 7 8 9 4 8 5 6 5 6 8 8 3 18 3 3 21 26 9 8 24 13 10 7 12 15 21 10 20 "
                     "14 9 6"),
    ("Prov", "Proverbs", "33 22 35 27 23 35 27 36 18 32 31 28 25 35 33 33 28 24 29 30 31 29 35 34 28 "
                         "28 27 28 27 33 31"),
    ("Eccl", "Ecclesiastes", "18 26 22 16 20 12 29 17 18 20 10 14"),
    ("Song", "Song of Solomon", "17 17 11 16 16 13 13 14"),
    ("Isa", "Isaiah", "31 22 26 6 30 13 25 22 21 34 16 6 22 32 9 14 14 7 25 6 17 25 18 23 12 21 13 29 "
                      "24 33 9 20 24 17 10 22 38 22 8 31 29 25 28 28 25 13 15 22 26 11 23 15 12 17 13 "
                      "12 21 14 21 22 11 12 19 12 25 24"),
    ("Jer", "Jeremiah", "19 37 25 31 31 30 34 22 26 25 23 17 27 22 21 21 27 23 15 18 14 30 40 10 38 24 "
                        "22 17 32 24 40 44 26 22 19 32 21 28 18 16 18 22 13 30 5 28 7 47 39 46 64 34"),
    ("Lam", "Lamentations", "22 22 66 22 22"),
    ("Ezek", "Ezekiel", "28 10 27 17 17 14 27 18 11 22 25 28 23 23 8 63 24 32 14 49 32 31 49 27 17 21 "
                        "36 26 21 26 18 32 33 31 15 38 28 23 29 49 26 20 27 31 25 24 23 35"),
    ("Dan", "Daniel", "21 49 30 37 31 28 28 27 27 21 45 13"),
    ("Hos", "Hosea", "11 23 5 19 15 11 16 14 17 15 12 14 16 9"),
    ("Joel", "Joel", "20 32 21"),
    ("Amos", "Amos", "15 16 15 13 27 14 17 14 15"),
    ("Obad", "Obadiah", "21"),
    ("Jonah", "Jonah", "17 10 10 11"),
    ("Mic", "Micah", "16 13 12 13 15 16 20"),
    ("Nah", "Nahum", "15 13 19"),
    ("Hab", "Habakkuk", "17 20 19"),
    ("Zeph", "Zephaniah", "18 15 20"),
    ("Hag", "Haggai", "15 23"),
    ("Zech", "Zechariah", "21 13 10 14 11 15 14 23 17 12 17 14 9 21"),
    ("Mal", "Malachi", "14 17 18 6"),
    ("Matt", "Matthew", "25 23 17 25 48 34 29 34 38 42 30 50 58 36 39 28 27 35 30 34 46 46 39 51 46 "
                        "75 66 20"),
    ("Mark", "Mark", "45 28 35 41 43 56 37 38 50 52 33 44 37 72 47 20"),
    ("Luke", "Luke", "80 52 38 44 39 49 50 56 62 42 54 59 35 35 32 31 37 43 48 47 38 71 56 53"),
    ("John", "John", "51 25 36 54 47 71 53 59 41 42 57 50 38 31 27 33 26 40 42 31 25"),
    ("Acts", "Acts", "26 47 26 37 42 15 60 40 43 48 30 25 52 28 41 40 34 28 41 38 40 30 35 27 27 32 "
                     "44 31"),
    ("Rom", "Romans", "32 29 31 25 21 23 25 39 33 21 36 21 14 23 33 27"),
    ("1Cor", "1 Corinthians", "31 16 23 21 13 20 40 13 27 33 34 31 13 40 58 24"),
    ("2Cor", "2 Corinthians", "24 17 18 18 21 18 16 24 15 18 33 21 14"),
    ("Gal", "Galatians", "24 21 29 31 26 18"),
    ("Eph", "Ephesians", "23 22 21 32 33 24"),
    ("Phil", "Philippians", "30 30 21 23"),
    ("Col", "Colossians", "29 23 25 18"),
    ("1Thess", "1 Thessalonians", "10 20 13 18 28"),
    ("2Thess", "2 Thessalonians", "12 17 18"),
    ("1Tim", "1 Timothy", "20 15 16 16 25 21"),
    ("2Tim", "2 Timothy", "18 26 17 22"),
    ("Titus", "Titus", "16 15 15"),
    ("Phlm", "Philemon", "25"),
    ("Heb", "Hebrews", "14 18 19 16 14 20 28 13 28 39 40 29 25"),
    ("Jas", "James", "27 26 18 17 20"),
    ("1Pet", "1 Peter", "25 25 22 19 14"),
    ("2Pet", "2 Peter", "21 22 18"),
    ("1John", "1 John", "10 29 24 21 21"),
    ("2John", "2 John", "13"),
    ("3John", "3 John", "14"),
    ("Jude", "Jude", "25"),
    ("Rev", "Revelation", "20 29 22 11 14 17 17 13 21 11 19 17 18 20 8 21 18 24 21 15 27 21"),
)]
MIN_OVERLAP = 0.3         # Strong's-number Jaccard below this: the pair is misaligned
SHIFTED_CHAPTER = 3       # a run of this many misaligned pairs: the chapter's numbering is shifted
TESTAMENTS = (("ot", KJV_BOOKS[:39], 23145), ("nt", KJV_BOOKS[39:], 7957))


def read_ztext(module_dir, testament):
    """Every entry of one testament of a zText module, decoded, in .bzv order."""
    def load(ext):
        with open(os.path.join(module_dir, f"{testament}.{ext}"), "rb") as f:
            return f.read()

    bzv, bzs, bzz = load("bzv"), load("bzs"), load("bzz")
    if len(bzv) % 10 or len(bzs) % 12:
        raise ValueError(f"{module_dir}/{testament}: index sizes {len(bzv)} (.bzv), {len(bzs)} (.bzs) "
                         f"are not multiples of 10 and 12")
    blocks = []
    for offset, size, usize in struct.iter_unpack("<III", bzs):
        data = zlib.decompressobj().decompress(bzz[offset:offset + size])
        if len(data) != usize:
            raise ValueError(f"{module_dir}/{testament}.bzz: block at {offset} inflates to {len(data)} "
                             f"bytes, index says {usize}")
        blocks.append(data)
    return [blocks[b][o:o + n].decode("utf-8") if n else "" for b, o, n in struct.iter_unpack("<IIH", bzv)]


def walk_kjv(entries, testament, books, n_verses):
    """Yield (book name, chapter, verse, raw text), skipping the heading and intro entries."""
    expected = 2 + len(books) + sum(len(c) for _, _, c in books) + n_verses  # module + testament headings
    if len(entries) != expected:
        raise ValueError(f"{testament}: {len(entries)} index entries, KJV versification needs {expected}")
    i = 2
    for osis, name, counts in books:
        i += 1                                                    # book intro
        for chapter, n in enumerate(counts, start=1):
            if f'osisID="{osis}.{chapter}"' not in entries[i]:
                raise ValueError(f"{testament} entry {i}: expected the intro of {osis}.{chapter}, "
                                 f"got {entries[i][:80]!r}")
            i += 1                                                # chapter intro
            for verse in range(1, n + 1):
                yield name, chapter, verse, entries[i]
                i += 1


# Footnotes and editorial headings go; canonical psalm titles ("A Psalm of David") stay as text,
# because the SpaRV has them as plain text at the start of verse 1 too.
_DROP = re.compile(r"<note\b[^>]*>.*?</note>|<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>", re.S)
# The KJV puts Psalm 119's stanza letters in (dropped) headings; the SpaRV starts the verse with them.
_ACROSTIC = re.compile(r"^(ALEPH|BETH|GIMEL|DALETH|HE|VAU|ZAIN|CHETH|TETH|JOD|CAPH|LAMED|MEM|NUN|SAMECH|AIN|PE|"
                       r"TZADDI|COPH|RESH|SIN|TAU)\.? ")
_INLINE = re.compile(r"</?(w|transChange|divineName|seg|foreign|q)\b[^>]*>")  # word-level markup
_TAG = re.compile(r"<[^>]*>")                                     # structural tags: div, l, lb, chapter...
_USFM = re.compile(r"\\[a-z]+\d*\*?")                             # stray USFM markers like "\nd"
_JOINT = re.compile(r"(\w)((?:</?(?:w|transChange)\b[^>]*>)+)(\w+)")
# Spanish enclitic pronouns the SpaRV tags as separate "added" words: "díce<added>les</added>".
_ENCLITICS = {"me", "te", "se", "lo", "la", "le", "los", "las", "les", "nos", "os", "selo", "sela",
              "selos", "selas", "melo", "mela", "telo", "tela", "noslo", "osla", "oslo"}
_STRONGS = re.compile(r"strong:([GH])0*(\d+)")


def _joint(match, lang):
    """Markup between two letters: the KJV splits words there ("afrai</w>d"), the SpaRV omits spaces."""
    glue = lang == "en" or match.group(3).lower() in _ENCLITICS
    return match.group(1) + ("" if glue else " ") + match.group(3)


def clean(osis, lang, psalm119=False):
    """Plain text of one OSIS verse: no tags, notes, Strong's numbers or pilcrows; single spaces."""
    text = _DROP.sub(" ", osis)
    text = _JOINT.sub(lambda m: _joint(m, lang), text)
    text = _TAG.sub(" ", _INLINE.sub("", text))
    text = html.unescape(_USFM.sub(" ", text)).replace("\u00b6", " ")
    text = " ".join(text.split())
    text = re.sub(r" ([,.;:?!)\u2014])", r"\1", text)            # "word ," left by a removed tag
    if lang == "es":
        text = _ACROSTIC.sub("", text) if psalm119 else text
        words = text.split(" ")
        for k in range(min(2, len(words))):                 # drop-cap style "EN el", "Y PASANDO por"
            if len(words[k]) > 1 and words[k].isupper():
                words[k] = words[k].lower()
                if k == 0:                                  # "¿CAZARÁS" -> "¿Cazarás"
                    first = next(j for j, c in enumerate(words[k]) if c.isalpha())
                    words[k] = words[k][:first] + words[k][first].upper() + words[k][first + 1:]
        text = " ".join(words)
    return text


def strongs(osis):
    """Strong's numbers tagged in a verse (outside footnotes): the alignment check's evidence."""
    return {m.group(1) + m.group(2) for m in _STRONGS.finditer(_DROP.sub(" ", osis))}


def provenance(sword_root):
    """(Debian package, version, module, module version) for each language, for the build log."""
    rows = []
    for lang, (package, module) in MODULES.items():
        conf = configparser.ConfigParser(strict=False, interpolation=None)
        conf.read(os.path.join(sword_root, "mods.d", f"{module}.conf"), encoding="utf-8")
        try:
            deb = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                                 capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            deb = "?"
        rows.append((lang, package, deb, module, conf.get(module, "Version", fallback="?"),
                     conf.get(module, "DistributionLicense", fallback="?")))
    return rows


def overlap(en_osis, es_osis):
    """Jaccard overlap of the two verses' Strong's numbers; 1.0 when neither is tagged."""
    a, b = strongs(en_osis), strongs(es_osis)
    return len(a & b) / len(a | b) if a or b else 1.0


def build(sword_root, max_words, min_overlap=MIN_OVERLAP):
    """All aligned pairs as rows (book, chapter, verse, split, en, es) and build statistics.

    The SpaRV keeps Spanish verse numbers inside the KJV index in a few places (e.g. KJV Job
    38:39-41 are Spanish Job 39:1-3): there the verses after the break are shifted, the Spanish
    verse before an empty slot holds two verses, and surplus verses are merged into the last one.
    Both modules tag words with Strong's numbers of the same Hebrew/Greek word, so a pair whose
    Strong's sets overlap less than ``min_overlap`` (Jaccard) is misaligned. We drop every chapter
    with a run of ``SHIFTED_CHAPTER`` consecutive misaligned pairs, each other misaligned pair, empty verses,
    and the verse before an empty Spanish slot.
    """
    raw = {}
    for lang, (_, module) in MODULES.items():
        module_dir = os.path.join(sword_root, "modules", "texts", "ztext", module)
        raw[lang] = [v for t, books, n in TESTAMENTS for v in walk_kjv(read_ztext(module_dir, t), t, books, n)]
    keys = [v[:3] for v in raw["en"]]
    en = [clean(v[3], "en") for v in raw["en"]]
    es = [clean(v[3], "es", psalm119=v[:2] == ("Psalms", 119)) for v in raw["es"]]
    bad = [overlap(a[3], b[3]) < min_overlap for a, b in zip(raw["en"], raw["es"])]
    shifted, run = set(), 0
    for i, key in enumerate(keys):
        run = run + 1 if bad[i] and (run == 0 or keys[i - 1][:2] == key[:2]) else int(bad[i])
        if run >= SHIFTED_CHAPTER:
            shifted.add(key[:2])
    stats = {"verses": len(keys), "empty": 0, "merged": 0, "shifted_chapter": 0, "misaligned": 0,
             "too_long": 0}
    rows = []
    for i, (book, chapter, verse) in enumerate(keys):
        if not en[i] or not es[i]:
            reason = "empty"
        elif i + 1 < len(keys) and not es[i + 1] and keys[i + 1][:2] == (book, chapter):
            reason = "merged"
        elif (book, chapter) in shifted:
            reason = "shifted_chapter"
        elif bad[i]:
            reason = "misaligned"
        elif len(en[i].split()) > max_words or len(es[i].split()) > max_words:
            reason = "too_long"
        else:
            rows.append((book, str(chapter), str(verse), split_of(book), en[i], es[i]))
            continue
        stats[reason] += 1
    stats["shifted_chapters"] = " ".join(f"{b.replace(' ', '')}.{c}" for b, c in sorted(shifted))
    return rows, stats


def write_tsv_gz(path, rows):
    """Deterministic gzip TSV (mtime 0, no name), written to a temp file and renamed."""
    lines = ["\t".join(HEADER)] + ["\t".join(r) for r in rows]
    for line in lines:
        if "\n" in line or line.count("\t") != len(HEADER) - 1:
            raise ValueError(f"row would break the TSV format: {line[:80]!r}")
    data = gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), compresslevel=9, mtime=0)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return len(data)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sword-root", default="/usr/share/sword", help="holds mods.d/ and modules/")
    parser.add_argument("--out", default=DEFAULT_PATH)
    parser.add_argument("--max-words", type=int, default=MAX_WORDS, help="per side, whitespace words")
    args = parser.parse_args(argv)
    for row in provenance(args.sword_root):
        print("source: lang={} package={} {} module={} {} license={}".format(*row))
    rows, stats = build(args.sword_root, args.max_words)
    nbytes = write_tsv_gz(args.out, rows)
    counts = {s: sum(r[3] == s for r in rows) for s in SPLITS}
    print(" ".join(f"{k}={v}" for k, v in stats.items()))
    print(f"kept={len(rows)} " + " ".join(f"{s}={n}" for s, n in counts.items())
          + f" bytes={nbytes} -> {args.out}")

if __name__ == "__main__":
    main()
