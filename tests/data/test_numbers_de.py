"""Tests for the generated numbers-de task (tinyzip/data/numbers_de.py).

Expected German was written by hand from the rules of German numerals, dates and adjective
declension (Duden tables), not copied from the generator's output. A small independent parser
reads numerals back to integers, so every number 0..999 999 can be checked without a table.
"""
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.data import load_task
from tinyzip.data.numbers_de import (ADJECTIVES, NOUNS, SUBJECTS, VERBS, clause, date_de, date_en,
                                     generate_numbers_de, noun_phrase, number_de, number_en)
from tinyzip.metrics import tokenize_13a

GERMAN = {
    0: "null", 1: "eins", 2: "zwei", 6: "sechs", 7: "sieben", 11: "elf", 12: "zwölf",
    16: "sechzehn", 17: "siebzehn", 20: "zwanzig", 21: "einundzwanzig", 30: "dreißig",
    31: "einunddreißig", 66: "sechsundsechzig", 77: "siebenundsiebzig", 99: "neunundneunzig",
    100: "einhundert", 101: "einhunderteins", 111: "einhundertelf", 121: "einhunderteinundzwanzig",
    200: "zweihundert", 606: "sechshundertsechs", 700: "siebenhundert", 1000: "eintausend",
    1001: "eintausendeins", 1100: "eintausendeinhundert", 2021: "zweitausendeinundzwanzig",
    16000: "sechzehntausend", 17017: "siebzehntausendsiebzehn", 21000: "einundzwanzigtausend",
    23400: "dreiundzwanzigtausendvierhundert", 101000: "einhunderteintausend",
    101101: "einhunderteintausendeinhunderteins",
    999999: "neunhundertneunundneunzigtausendneunhundertneunundneunzig",
}
ENGLISH = {
    0: "zero", 13: "thirteen", 21: "twenty-one", 40: "forty", 100: "one hundred",
    101: "one hundred and one", 1005: "one thousand and five", 1100: "one thousand one hundred",
    23400: "twenty-three thousand four hundred", 101000: "one hundred and one thousand",
    999999: "nine hundred and ninety-nine thousand nine hundred and ninety-nine",
}


def _index(table, english):
    return next(i for i, row in enumerate(table) if row[0] == english)


def _noun(word):
    return _index(NOUNS, word)


def _adj(word):
    return _index(ADJECTIVES, word)


def _parse_de(word):
    """Independent reader of German numerals (units before tens, 'und', 'hundert', 'tausend')."""
    units = {"ein": 1, "eins": 1, "zwei": 2, "drei": 3, "vier": 4, "fünf": 5, "sechs": 6, "sieben": 7,
             "acht": 8, "neun": 9, "zehn": 10, "elf": 11, "zwölf": 12, "sechzehn": 16, "siebzehn": 17}
    for u, v in (("drei", 3), ("vier", 4), ("fünf", 5), ("acht", 8), ("neun", 9)):
        units[u + "zehn"] = 10 + v
    tens = {"zwanzig": 20, "dreißig": 30, "vierzig": 40, "fünfzig": 50, "sechzig": 60, "siebzig": 70,
            "achtzig": 80, "neunzig": 90}

    def below_100(s):
        if not s:
            return 0
        if s in units:
            return units[s]
        if s in tens:
            return tens[s]
        u, t = s.split("und")
        assert u in units and units[u] < 10 and u != "eins", s
        return units[u] + tens[t]

    def below_1000(s):
        if "hundert" in s:
            h, rest = s.split("hundert")
            assert h in units and units[h] < 10 and h != "eins", s
            return 100 * units[h] + below_100(rest)
        return below_100(s)

    if word == "null":
        return 0
    assert not word.endswith("ein"), word               # a final 1 is "eins"
    if "tausend" in word:
        th, rest = word.split("tausend")
        assert not th.endswith("eins"), word
        return 1000 * below_1000(th) + below_1000(rest)
    return below_1000(word)


def _parse_en(text):
    """Independent reader of English numerals."""
    small = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
             "fifteen sixteen seventeen eighteen nineteen").split()
    tens = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

    def below_1000(words):
        value = 0
        if "hundred" in words:
            assert words[1] == "hundred" and small.index(words[0]) < 10, words
            value, words = 100 * small.index(words[0]), words[2:]
            if words:
                assert words[0] == "and", words
                words = words[1:]
        if words:
            (w,) = words
            t, _, u = w.partition("-")
            value += small.index(w) if w in small else 10 * tens.index(t) + (small.index(u) if u else 0)
        return value

    words = text.split()
    if "thousand" in words:
        k = words.index("thousand")
        rest = words[k + 1:]
        if rest and rest[0] == "and":                  # "one thousand and five"
            assert len(rest) == 2, words
            rest = rest[1:]
        return 1000 * below_1000(words[:k]) + below_1000(rest)
    return below_1000(words)


def test_numerals_de_hand_table():
    for n, word in GERMAN.items():
        assert number_de(n) == word, n


def test_numerals_en_hand_table():
    for n, words in ENGLISH.items():
        assert number_en(n) == words, n


@given(st.integers(0, 999_999))
def test_numeral_de_reads_back_and_obeys_spelling_rules(n):
    """One word; 'eins' only at the very end; 'sechzehn'/'siebzig', never 'sechszehn'/'siebenzig'."""
    word = number_de(n)
    assert _parse_de(word) == n
    assert " " not in word and "eins" not in word[:-4]
    assert not re.search("sechsz|siebenz", word)


@given(st.integers(0, 999_999))
def test_numeral_en_reads_back(n):
    """British style: 'and' before the part below 100 of each group that has hundreds or follows
    'thousand' ('one hundred and one thousand and five')."""
    assert _parse_en(number_en(n)) == n


def test_numbers_out_of_range_raise():
    for bad in (-1, 1_000_000, 2.0, True):
        with pytest.raises(ValueError):
            number_de(bad)
        with pytest.raises(ValueError):
            number_en(bad)


def test_dates():
    assert date_en(3, 3, 2021) == "3 March 2021"
    assert date_en(3, 3, 2021, us=True) == "March 3, 2021"
    assert date_de(3, 3, 2021) == "3. März 2021"
    assert date_de(31, 12, 1999) == "31. Dezember 1999"
    assert date_de(29, 2, 2024) == "29. Februar 2024"
    for bad in ((29, 2, 2023), (31, 4, 2020), (1, 13, 2020), (0, 1, 2020)):
        with pytest.raises(ValueError):
            date_de(*bad)


def test_noun_phrase_articles_and_adjective_endings():
    """Accusative: einen roten Apfel / eine rote Birne / ein rotes Buch; den/die/das + weak -en/-e;
    plural strong -e without article, weak -en after 'die'; nominative der/die/das + -e."""
    cases = [
        ((1, "apple", "red"), {}, ("a red apple", "einen roten Apfel")),
        ((1, "pear", "red"), {}, ("a red pear", "eine rote Birne")),
        ((1, "book", "red"), {}, ("a red book", "ein rotes Buch")),
        ((1, "egg", None), {}, ("an egg", "ein Ei")),
        ((1, "apple", "old"), {}, ("an old apple", "einen alten Apfel")),
        ((1, "cup", None), {"one_word": "one"}, ("one cup", "eine Tasse")),
        ((1, "dog", "big"), {"definite": True}, ("the big dog", "den großen Hund")),
        ((1, "lamp", "white"), {"definite": True}, ("the white lamp", "die weiße Lampe")),
        ((1, "car", "new"), {"definite": True}, ("the new car", "das neue Auto")),
        ((3, "apple", "red"), {}, ("three red apples", "drei rote Äpfel")),
        ((3, "apple", "red"), {"definite": True}, ("the three red apples", "die drei roten Äpfel")),
        ((21, "cat", None), {}, ("twenty-one cats", "einundzwanzig Katzen")),
        ((1, "apple", "red"), {"definite": True, "case": "nom"}, ("the red apple", "der rote Apfel")),
        ((1, "house", "small"), {"definite": True, "case": "nom"}, ("the small house", "das kleine Haus")),
        ((2, "glass", "green"), {"definite": True, "case": "nom"},
         ("the two green glasses", "die zwei grünen Gläser")),
    ]
    for (count, noun, adj), kw, expected in cases:
        assert noun_phrase(count, _noun(noun), None if adj is None else _adj(adj), **kw) == expected


def test_noun_phrase_rejects_counts_ending_in_one_above_one():
    for bad in (0, 101, 1001, 2301):
        with pytest.raises(ValueError):
            noun_phrase(bad, 0)


def test_clause_verb_second_and_verb_final():
    I, you, she, we, tom = (_index(SUBJECTS, s) for s in ("I", "you", "she", "we", "Tom"))
    have, buy, see, sell = (_index([v[0] for v in VERBS], v) for v in ("have", "buy", "see", "sell"))
    cases = [
        ((I, have, "present", noun_phrase(23, _noun("apple"), _adj("red"))), {},
         ("I have twenty-three red apples.", "Ich habe dreiundzwanzig rote Äpfel.")),
        ((she, buy, "past", noun_phrase(5, _noun("book"), _adj("old"))),
         {"time": ("on 3 March 2021", "am 3. März 2021"), "front": True},
         ("On 3 March 2021 she bought five old books.", "Am 3. März 2021 kaufte sie fünf alte Bücher.")),
        ((she, buy, "past", noun_phrase(5, _noun("book"), _adj("old"))),
         {"time": ("on March 3, 2021", "am 3. März 2021"), "front": True},
         ("On March 3, 2021, she bought five old books.", "Am 3. März 2021 kaufte sie fünf alte Bücher.")),
        ((tom, see, "past", noun_phrase(1, _noun("dog"), _adj("black"))), {"time": ("yesterday", "gestern")},
         ("Tom saw a black dog yesterday.", "Tom sah gestern einen schwarzen Hund.")),
        ((we, buy, "future", noun_phrase(2, _noun("cup"))), {"time": ("tomorrow", "morgen"), "front": True},
         ("Tomorrow we will buy two cups.", "Morgen werden wir zwei Tassen kaufen.")),
        ((you, see, "present", noun_phrase(2, _noun("dog"))), {},
         ("You see two dogs.", "Du siehst zwei Hunde.")),
        ((you, buy, "past", noun_phrase(1, _noun("lamp"), definite=True)), {},
         ("You bought the lamp.", "Du kauftest die Lampe.")),
        ((tom, sell, "present", noun_phrase(1, _noun("house"), _adj("beautiful"))),
         {"time": ("today", "heute")},
         ("Tom sells a beautiful house today.", "Tom verkauft heute ein schönes Haus.")),
    ]
    for args, kw, expected in cases:
        assert clause(*args, **kw) == expected


def test_generation_is_deterministic_and_seeded():
    a = generate_numbers_de(seed=3, n_train=300, n_dev=20, n_test=20)
    b = generate_numbers_de(seed=3, n_train=300, n_dev=20, n_test=20)
    c = generate_numbers_de(seed=4, n_train=300, n_dev=20, n_test=20)
    assert a == b and a != c


def test_default_task_sizes_disjoint_splits_and_lengths():
    """20k/500/500, sources unique across all splits, 4..20 13a tokens per side, sentence shape."""
    task = load_task("numbers-de")
    assert (len(task.train), len(task.dev), len(task.test)) == (20000, 500, 500)
    assert (task.src_lang, task.tgt_lang) == ("en", "de")
    sources = [s for split in (task.train, task.dev, task.test) for s, _ in split]
    assert len(set(sources)) == len(sources)
    for en, de in task.train + task.dev + task.test:
        for text in (en, de):
            assert 4 <= len(tokenize_13a(text).split()) <= 20, text
            assert text[0].isupper() and text.endswith(".") and "  " not in text


def test_generator_validates_sizes():
    with pytest.raises(ValueError):
        generate_numbers_de(n_train=-1)
