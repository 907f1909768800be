"""Built-in task ``numbers-de``: English -> German numbers, dates and short sentences (generated).

A seeded, deterministic generator of sentence pairs that need the things real translation needs,
on a vocabulary of a few hundred words (plus the German numerals, which BPE splits) and with
sentences of 5-17 tokens, so that a small Transformer can learn it on a CPU:

- **Numerals as words.** German writes a number below a million as one word, units before tens:
  23 400 = "twenty-three thousand four hundred" -> "dreiundzwanzigtausendvierhundert". The digit 1
  is "eins" when it ends a standalone number (einhunderteins), "ein" inside a compound
  (einundzwanzig, eintausend, einhunderteintausend) and an article before a noun (einen, eine, ein).
- **Dates.** "3 March 2021" and "March 3, 2021" -> "3. März 2021" (ordinal day with a period).
- **Agreement.** Adjective endings follow gender, number, case and the article:
  "a red apple" -> "einen roten Apfel" (accusative, masculine), "a red pear" -> "eine rote Birne",
  "a red book" -> "ein rotes Buch", "three red apples" -> "drei rote Äpfel" (strong plural),
  "the three red apples" -> "die drei roten Äpfel" (weak plural); nominative for subjects
  ("der rote Apfel kostet ...").
- **Word order.** German is verb-second: a fronted time phrase moves the subject behind the verb
  ("On 3 March 2021 she bought ..." -> "Am 3. März 2021 kaufte sie ..."); a time phrase at the end
  of the English sentence comes before the object in German ("Sie kaufte gestern ..."); the future
  puts the infinitive last ("Tomorrow I will buy two cups." -> "Morgen werde ich zwei Tassen kaufen.").

Numbers before a noun never end in "one" above one (101 apples): German usage varies there
(hundertein / hundertundein), so the generator avoids it instead of picking a side.

Sentences are plain, detokenized text ("Ich habe drei rote Äpfel."); the Moses tokenizer in
``text.py`` splits the final period. Splits are disjoint: pairs are deduplicated by source
sentence before they are dealt into train, dev and test.
"""
import calendar

import numpy as np

ONES_EN = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
           "fifteen sixteen seventeen eighteen nineteen").split()
TENS_EN = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy",
           8: "eighty", 9: "ninety"}
ONES_DE = ("null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn "
           "fünfzehn sechzehn siebzehn achtzehn neunzehn").split()
TENS_DE = {2: "zwanzig", 3: "dreißig", 4: "vierzig", 5: "fünfzig", 6: "sechzig", 7: "siebzig",
           8: "achtzig", 9: "neunzig"}
MONTHS_EN = tuple(calendar.month_name[1:])
MONTHS_DE = ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
             "Oktober", "November", "Dezember")

# (English singular, English plural, German singular, German plural, gender m/f/n)
NOUNS = (
    ("apple", "apples", "Apfel", "Äpfel", "m"), ("dog", "dogs", "Hund", "Hunde", "m"),
    ("chair", "chairs", "Stuhl", "Stühle", "m"), ("table", "tables", "Tisch", "Tische", "m"),
    ("ball", "balls", "Ball", "Bälle", "m"), ("pear", "pears", "Birne", "Birnen", "f"),
    ("cat", "cats", "Katze", "Katzen", "f"), ("flower", "flowers", "Blume", "Blumen", "f"),
    ("cup", "cups", "Tasse", "Tassen", "f"), ("lamp", "lamps", "Lampe", "Lampen", "f"),
    ("book", "books", "Buch", "Bücher", "n"), ("house", "houses", "Haus", "Häuser", "n"),
    ("car", "cars", "Auto", "Autos", "n"), ("glass", "glasses", "Glas", "Gläser", "n"),
    ("picture", "pictures", "Bild", "Bilder", "n"), ("egg", "eggs", "Ei", "Eier", "n"),
)
# English adjective -> German stem; every stem takes its ending unchanged (no "teuer" -> "teure").
ADJECTIVES = (("red", "rot"), ("blue", "blau"), ("green", "grün"), ("big", "groß"),
              ("small", "klein"), ("old", "alt"), ("new", "neu"), ("black", "schwarz"),
              ("white", "weiß"), ("beautiful", "schön"))
# Persons: 1s, 2s, 3s, 1p, 3p. English "you" is always translated as informal singular "du".
SUBJECTS = (("I", "ich", "1s"), ("you", "du", "2s"), ("he", "er", "3s"), ("she", "sie", "3s"),
            ("we", "wir", "1p"), ("they", "sie", "3p"), ("Anna", "Anna", "3s"),
            ("Tom", "Tom", "3s"), ("Maria", "Maria", "3s"), ("Paul", "Paul", "3s"))
PERSONS = ("1s", "2s", "3s", "1p", "3p")
# English (base, 3rd singular, past) -> German infinitive, present and past by person.
VERBS = (
    (("have", "has", "had"), "haben", "habe hast hat haben haben", "hatte hattest hatte hatten hatten"),
    (("buy", "buys", "bought"), "kaufen", "kaufe kaufst kauft kaufen kaufen",
     "kaufte kauftest kaufte kauften kauften"),
    (("see", "sees", "saw"), "sehen", "sehe siehst sieht sehen sehen", "sah sahst sah sahen sahen"),
    (("need", "needs", "needed"), "brauchen", "brauche brauchst braucht brauchen brauchen",
     "brauchte brauchtest brauchte brauchten brauchten"),
    (("sell", "sells", "sold"), "verkaufen", "verkaufe verkaufst verkauft verkaufen verkaufen",
     "verkaufte verkauftest verkaufte verkauften verkauften"),
)
WERDEN = dict(zip(PERSONS, "werde wirst wird werden werden".split()))
SEIN_PRESENT = dict(zip(PERSONS, "bin bist ist sind sind".split()))
SEIN_PAST = dict(zip(PERSONS, "war warst war waren waren".split()))
BE_EN_PRESENT = {"1s": "am", "2s": "are", "3s": "is", "1p": "are", "3p": "are"}
BE_EN_PAST = {"1s": "was", "2s": "were", "3s": "was", "1p": "were", "3p": "were"}
# Accusative and nominative articles and adjective endings (Duden declension tables).
ACC_INDEF = {"m": ("einen", "en"), "f": ("eine", "e"), "n": ("ein", "es")}
ACC_DEF = {"m": ("den", "en"), "f": ("die", "e"), "n": ("das", "e")}
NOM_DEF = {"m": ("der", "e"), "f": ("die", "e"), "n": ("das", "e")}
PLURAL_STRONG, PLURAL_WEAK = "e", "en"   # "drei rote Äpfel" / "die drei roten Äpfel"
# Sentence kinds: clause with an object, "the number is", price, age, today's date.
KIND_CUMULATIVE = np.cumsum([0.6, 0.1, 0.1, 0.1])


def number_en(n):
    """British English words for 0 <= n <= 999 999: 1 234 -> 'one thousand two hundred and thirty-four'."""
    _check_number(n)
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = []
    if thousands:
        words += [_en_below_1000(thousands), "thousand"]
    if rest >= 100:
        words.append(_en_below_1000(rest - rest % 100))
    if rest % 100:
        if n >= 100:
            words.append("and")
        words.append(_en_below_100(rest % 100))
    return " ".join(words)


def number_de(n):
    """German numeral for 0 <= n <= 999 999, written as one word; a final 1 is 'eins'."""
    _check_number(n)
    if n == 0:
        return "null"
    thousands, rest = divmod(n, 1000)
    word = _de_below_1000(thousands, final_one="ein") + "tausend" if thousands else ""
    return word + (_de_below_1000(rest, final_one="eins") if rest else "")


def date_en(day, month, year, us=False):
    """'3 March 2021' (British) or 'March 3, 2021' (US); month is 1..12."""
    _check_date(day, month, year)
    return f"{MONTHS_EN[month - 1]} {day}, {year}" if us else f"{day} {MONTHS_EN[month - 1]} {year}"


def date_de(day, month, year):
    """'3. März 2021': the day is an ordinal, written as a digit and a period."""
    _check_date(day, month, year)
    return f"{day}. {MONTHS_DE[month - 1]} {year}"


def noun_phrase(count, noun, adjective=None, definite=False, case="acc", one_word="a"):
    """(English, German) noun phrase: count >= 1, noun an index into NOUNS, adjective into ADJECTIVES.

    Singular indefinite uses ``one_word`` ("a" picks a/an, or "one"). Case is "acc" or "nom";
    the nominative is only built with the definite article (the generator's subjects).
    """
    if not isinstance(count, int) or count < 1 or (count > 100 and count % 100 == 1):
        raise ValueError(f"count must be an int >= 1 not ending in 'one' above one, got {count!r}")
    if case not in ("acc", "nom") or (case == "nom" and not definite):
        raise ValueError(f"case must be 'acc', or 'nom' with definite=True; got {case!r}, {definite}")
    sg_en, pl_en, sg_de, pl_de, gender = NOUNS[noun]
    adj_en, adj_de = ADJECTIVES[adjective] if adjective is not None else (None, None)
    noun_en, noun_de = (sg_en, sg_de) if count == 1 else (pl_en, pl_de)
    words_en = [adj_en, noun_en] if adj_en else [noun_en]
    if count == 1:
        article, ending = (NOM_DEF if case == "nom" else ACC_DEF if definite else ACC_INDEF)[gender]
        words_de = [article]
        if definite:
            words_en.insert(0, "the")
        else:
            vowel = words_en[0][0] in "aeiou"
            words_en.insert(0, "one" if one_word == "one" else "an" if vowel else "a")
    else:
        words_en.insert(0, number_en(count))
        words_de = [number_de(count)]
        if definite:
            words_en.insert(0, "the")
            words_de.insert(0, "die")
        ending = PLURAL_WEAK if definite else PLURAL_STRONG
    if adj_de:
        words_de.append(adj_de + ending)
    return " ".join(words_en), " ".join(words_de + [noun_de])


def clause(subject, verb, tense, obj, time=None, front=False):
    """(English, German) sentence 'subject verb obj [time].' in German verb-second order.

    subject/verb index SUBJECTS/VERBS; tense is "present", "past" or "future"; obj is a noun
    phrase pair; time is an (English, German) pair such as ("on 3 March 2021", "am 3. März 2021"),
    fronted in both languages when ``front``.
    """
    subj_en, subj_de, person = SUBJECTS[subject]
    (base, third, past), infinitive, present_de, past_de = VERBS[verb]
    if tense == "present":
        verb_en = third if person == "3s" else base
        finite_de, tail_de = dict(zip(PERSONS, present_de.split()))[person], []
    elif tense == "past":
        verb_en = past
        finite_de, tail_de = dict(zip(PERSONS, past_de.split()))[person], []
    elif tense == "future":
        verb_en, finite_de, tail_de = "will " + base, WERDEN[person], [infinitive]
    else:
        raise ValueError(f"tense must be 'present', 'past' or 'future', got {tense!r}")
    obj_en, obj_de = obj
    middle_de = ([time[1]] if time and not front else []) + [obj_de] + tail_de
    if time and front:
        comma = "," if time[0][-1].isdigit() and "," in time[0] else ""   # "On March 3, 2021, she ..."
        en = f"{time[0]}{comma} {subj_en} {verb_en} {obj_en}"
        de = " ".join([time[1], finite_de, subj_de] + middle_de)
    else:
        en = f"{subj_en} {verb_en} {obj_en}" + (f" {time[0]}" if time else "")
        de = " ".join([subj_de, finite_de] + middle_de)
    return _sentence(en), _sentence(de)


def generate_numbers_de(seed=0, n_train=20000, n_dev=500, n_test=500):
    """Deterministic (train, dev, test) lists of (English, German) pairs with disjoint sources."""
    for name, value in (("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    rng = np.random.default_rng(seed)
    total, pairs, seen = n_train + n_dev + n_test, [], set()
    while len(pairs) < total:
        en, de = _sample_pair(rng)
        if en not in seen:
            seen.add(en)
            pairs.append((en, de))
    test, dev = pairs[:n_test], pairs[n_test:n_test + n_dev]
    return pairs[n_test + n_dev:], dev, test


# --- sampling ------------------------------------------------------------------------------

def _sample_pair(rng):
    kind = int(np.searchsorted(KIND_CUMULATIVE, rng.random(), side="right"))
    if kind == 0:                                   # "On 3 March 2021 she bought two red cups."
        tense = ("present", "past", "future")[rng.integers(3)]
        when, time = rng.integers(3), None          # none, adverb, date
        if when == 1:
            time = {"present": ("today", "heute"), "past": ("yesterday", "gestern"),
                    "future": ("tomorrow", "morgen")}[tense]
        elif when == 2 and tense != "present":
            time = _sample_on_date(rng, future=tense == "future")
        _, obj = _sample_noun_phrase(rng, definite=rng.random() < 0.25, case="acc", max_digits=3)
        return clause(int(rng.integers(len(SUBJECTS))), int(rng.integers(len(VERBS))), tense, obj,
                      time, front=bool(rng.integers(2)))
    if kind == 1:                                   # "The number is twenty-three thousand four hundred."
        n = _sample_number(rng, max_digits=6, low=0)
        return _sentence(f"the number is {number_en(n)}"), _sentence(f"die Zahl ist {number_de(n)}")
    if kind == 2:                                   # "The two red apples cost five euros."
        count, (subj_en, subj_de) = _sample_noun_phrase(rng, definite=True, case="nom", max_digits=1)
        price = _sample_count(rng, max_digits=4)
        euros_en = "one euro" if price == 1 else f"{number_en(price)} euros"
        euros_de = "einen Euro" if price == 1 else f"{number_de(price)} Euro"
        return (_sentence(f"{subj_en} {'costs' if count == 1 else 'cost'} {euros_en}"),
                _sentence(f"{subj_de} {'kostet' if count == 1 else 'kosten'} {euros_de}"))
    subj_en, subj_de, person = SUBJECTS[rng.integers(len(SUBJECTS))]
    if kind == 3:                                   # "Tom is twenty-one years old."
        age = int(rng.integers(1, 100))
        years_en = "one year" if age == 1 else f"{number_en(age)} years"
        years_de = "ein Jahr" if age == 1 else f"{number_de(age)} Jahre"
        if rng.random() < 0.5:
            return (_sentence(f"{subj_en} {BE_EN_PRESENT[person]} {years_en} old"),
                    _sentence(f"{subj_de} {SEIN_PRESENT[person]} {years_de} alt"))
        on_en, on_de = _sample_on_date(rng, future=False)       # verb-second: "Am ... war Tom ..."
        comma = "," if "," in on_en else ""
        return (_sentence(f"{on_en}{comma} {subj_en} {BE_EN_PAST[person]} {years_en} old"),
                _sentence(f"{on_de} {SEIN_PAST[person]} {subj_de} {years_de} alt"))
    day, month, year = _sample_date(rng)            # "Today is 3 March 2021."
    return (_sentence(f"today is {date_en(day, month, year, us=bool(rng.integers(2)))}"),
            _sentence(f"heute ist der {date_de(day, month, year)}"))


def _sample_noun_phrase(rng, definite, case, max_digits):
    count = 1 if rng.random() < 0.3 else _sample_count(rng, max_digits)
    adjective = None if rng.random() < 0.3 else int(rng.integers(len(ADJECTIVES)))
    one_word = "one" if rng.random() < 0.2 else "a"
    return count, noun_phrase(count, int(rng.integers(len(NOUNS))), adjective, definite, case, one_word)


def _sample_count(rng, max_digits):
    """A count before a noun: >= 1 and, above one, not ending in 'one' (see the module docstring)."""
    count = _sample_number(rng, max_digits)
    while count > 100 and count % 100 == 1:
        count = _sample_number(rng, max_digits)
    return count


def _sample_on_date(rng, future):
    """'on <date>' in a year that suits the tense (this text was written in 2026)."""
    day, month, year = _sample_date(rng, *((2027, 2050) if future else (1950, 2025)))
    return "on " + date_en(day, month, year, us=bool(rng.integers(2))), "am " + date_de(day, month, year)


def _sample_number(rng, max_digits, low=1):
    """Log-uniform: the number of digits is uniform in 1..max_digits, then the value is uniform."""
    digits = int(rng.integers(1, max_digits + 1))
    return int(rng.integers(max(low, 10 ** (digits - 1) if digits > 1 else low), 10 ** digits))


def _sample_date(rng, first_year=1950, end_year=2050):
    year, month = int(rng.integers(first_year, end_year)), int(rng.integers(1, 13))
    return int(rng.integers(1, calendar.monthrange(year, month)[1] + 1)), month, year


# --- words ---------------------------------------------------------------------------------

def _en_below_100(n):
    if n < 20:
        return ONES_EN[n]
    tens, unit = divmod(n, 10)
    return TENS_EN[tens] + (f"-{ONES_EN[unit]}" if unit else "")


def _en_below_1000(n):
    hundreds, rest = divmod(n, 100)
    words = [ONES_EN[hundreds], "hundred"] if hundreds else []
    if rest:
        words += (["and"] if hundreds else []) + [_en_below_100(rest)]
    return " ".join(words)


def _de_below_100(n, final_one):
    if n == 1:
        return final_one
    if n < 20:
        return ONES_DE[n]
    tens, unit = divmod(n, 10)
    return ((("ein" if unit == 1 else ONES_DE[unit]) + "und") if unit else "") + TENS_DE[tens]


def _de_below_1000(n, final_one):
    hundreds, rest = divmod(n, 100)
    word = ("ein" if hundreds == 1 else ONES_DE[hundreds]) + "hundert" if hundreds else ""
    return word + (_de_below_100(rest, final_one) if rest else "")


def _sentence(text):
    return text[0].upper() + text[1:] + "."


def _check_number(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= 999_999:
        raise ValueError(f"number must be an int in [0, 999999], got {n!r}")


def _check_date(day, month, year):
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        raise ValueError(f"invalid date: day={day!r}, month={month!r}, year={year!r}")
