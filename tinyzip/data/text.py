"""Text <-> ids: Moses tokenization, BPE subwords, and a vocabulary with four specials.

The pipeline of Sennrich et al. (2016, arXiv:1508.07909, Section 4): tokenize with the Moses
tokenizer (here ``sacremoses``, ``escape=False`` so "&" stays "&" rather than "&amp;"), split every
token into BPE subwords (``bpe.py``), look each subword up in a ``Vocab``. Decoding runs it
backwards and detokenizes, so the output is plain text ready for sacreBLEU-style scoring
(``tinyzip.metrics.corpus_bleu``).

Specials (every tinyzip vocabulary): PAD=0, BOS=1, EOS=2, UNK=3. By default source and target share
one BPE model and one vocabulary ("joint BPE", learned on the concatenation of both sides as in the
paper's footnote 4), which is what ``Seq2SeqConfig(share_embeddings=True)`` needs.

Decoding splits words at the BPE end-of-word marker ``</w>``; Moses always splits "<", "/" and ">"
apart, so no token can contain the marker itself. Unknown input never crashes: a subword not in the vocabulary is split back into the two symbols it
was merged from, recursively (the paper's footnote 3), and a character never seen in training
becomes UNK, one UNK per unknown character.
"""
from sacremoses import MosesDetokenizer, MosesTokenizer

from tinyzip.data.bpe import BPE, END, join_subwords, learn_bpe

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
FORMAT = "tinyzip-tokenizer"
FORMAT_VERSION = 2
TOKEN_CACHE_SIZE = 200_000     # Moses is the slow step; learn() and encode() share its output


class Vocab:
    """Symbol <-> id. Ids 0..3 are the specials; ``symbols`` are the rest, in id order from 4."""

    def __init__(self, symbols):
        symbols = list(symbols)
        if len(set(symbols)) != len(symbols) or set(symbols) & set(SPECIALS):
            raise ValueError("vocabulary symbols must be unique and must not repeat the specials")
        self.symbols = symbols
        self.id_of = {s: i for i, s in enumerate(SPECIALS + tuple(symbols))}

    def __len__(self):
        return len(self.id_of)

    def __contains__(self, symbol):
        return symbol in self.id_of

    def id(self, symbol):
        return self.id_of.get(symbol, UNK)

    def symbol(self, i):
        if not 0 <= i < len(self.id_of):
            raise ValueError(f"id {i} out of range for a vocabulary of {len(self.id_of)}")
        return SPECIALS[i] if i < len(SPECIALS) else self.symbols[i - len(SPECIALS)]


class Tokenizer:
    """Moses + BPE + Vocab for one language pair; ``joint`` when both sides share BPE and vocab."""

    def __init__(self, src_lang, tgt_lang, src_merges, src_symbols, tgt_merges=None, tgt_symbols=None):
        self.src_lang, self.tgt_lang = _check_lang(src_lang), _check_lang(tgt_lang)
        self.joint = tgt_merges is None and tgt_symbols is None
        self.src_bpe, self.src_vocab = BPE(src_merges), Vocab(src_symbols)
        if self.joint:
            self.tgt_bpe, self.tgt_vocab = self.src_bpe, self.src_vocab
        else:
            self.tgt_bpe, self.tgt_vocab = BPE(tgt_merges), Vocab(tgt_symbols)
        self._moses, self._ids, self._token_cache = {}, {"src": {}, "tgt": {}}, {}

    @classmethod
    def learn(cls, src_texts, tgt_texts, src_lang="en", tgt_lang="de", *, num_merges=None,
              vocab_size=None, joint=True, min_count=2):
        """Learn BPE on Moses tokens of the training texts; stop at num_merges or vocab_size.

        ``vocab_size`` counts the four specials and every symbol, characters included. The
        vocabulary has exactly that size, or fewer symbols when no pair occurring ``min_count``
        times is left first (applying the merges reproduces the learned segmentation, so the
        learner's inventory count is the vocabulary's size). Texts are lists of str.
        """
        if (num_merges is None) == (vocab_size is None):
            raise ValueError("give exactly one of num_merges and vocab_size")
        if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size <= len(SPECIALS)):
            raise ValueError(f"vocab_size must be an int > {len(SPECIALS)}, got {vocab_size!r}")
        tok = cls(src_lang, tgt_lang, [], [])
        src_tokens = [tok.tokenize(t, src_lang) for t in _check_texts(src_texts, "src_texts")]
        tgt_tokens = [tok.tokenize(t, tgt_lang) for t in _check_texts(tgt_texts, "tgt_texts")]
        max_symbols = None if vocab_size is None else vocab_size - len(SPECIALS)
        sides = [src_tokens + tgt_tokens] if joint else [src_tokens, tgt_tokens]
        learned = []
        for lines in sides:
            freqs = _word_freqs(lines)
            merges = learn_bpe(freqs, num_merges=num_merges, max_symbols=max_symbols, min_count=min_count)
            learned += [merges, _symbols(freqs, BPE(merges))]
        result = cls(src_lang, tgt_lang, *learned)
        result._token_cache = tok._token_cache       # encoding the training texts next is common
        return result

    def tokenize(self, text, lang):
        """Moses tokens of one line (``escape=False``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        tokens = self._token_cache.get((lang, text))
        if tokens is None:
            if len(self._token_cache) >= TOKEN_CACHE_SIZE:
                self._token_cache.clear()
            tokens = self._token_cache[lang, text] = tuple(self._tools(lang)[0].tokenize(text, escape=False))
        return list(tokens)

    def encode_src(self, text):
        """Source text -> ids (no BOS/EOS)."""
        return self._encode(text, "src")

    def encode_tgt(self, text):
        """Target text -> ids (no BOS/EOS; ``make_batches`` adds them)."""
        return self._encode(text, "tgt")

    def encode(self, text, side="src"):
        if side not in ("src", "tgt"):
            raise ValueError(f"side must be 'src' or 'tgt', got {side!r}")
        return self.encode_src(text) if side == "src" else self.encode_tgt(text)

    def decode(self, ids, side="tgt"):
        """Ids -> detokenized text. Stops at the first EOS; skips PAD and BOS; UNK -> '<unk>'."""
        if side not in ("src", "tgt"):
            raise ValueError(f"side must be 'src' or 'tgt', got {side!r}")
        vocab, lang = (self.tgt_vocab, self.tgt_lang) if side == "tgt" else (self.src_vocab, self.src_lang)
        symbols = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i not in (PAD, BOS):
                symbols.append(vocab.symbol(i))
        return self._tools(lang)[1].detokenize(join_subwords(symbols))

    @property
    def src_vocab_size(self):
        return len(self.src_vocab)

    @property
    def tgt_vocab_size(self):
        return len(self.tgt_vocab)

    def to_dict(self):
        """JSON-safe description (lists, ints and strings), saved beside the model.

        Version 2 stores only what cannot be derived: the BPE merges and the vocabulary's order
        (by training frequency, so not derivable from the merges). Every string is written once:
        ``base`` lists, sorted, the strings no earlier merge makes (the characters and ``</w>``);
        string ``len(base) + r`` is a + b of merge r. ``merges`` is the flat id list
        [a_0, b_0, a_1, b_1, ...] and ``symbols`` the vocabulary's ids from id 4 on. Measured on the
        Bible tokenizer (8,177 merges, 7,996 symbols): 104 KB of JSON, 45 KB deflated, where
        version 1's lists of strings took 244 KB and 61 KB.
        """
        d = {"format": FORMAT, "version": FORMAT_VERSION, "src_lang": self.src_lang,
             "tgt_lang": self.tgt_lang, "src": _number_strings(self.src_bpe.merges, self.src_vocab.symbols)}
        if not self.joint:
            d["tgt"] = _number_strings(self.tgt_bpe.merges, self.tgt_vocab.symbols)
        return d

    @classmethod
    def from_dict(cls, d):
        """Inverse of ``to_dict``; also reads version 1 (merges and symbols as lists of strings)."""
        version = d.get("version") if isinstance(d, dict) else None
        if not isinstance(d, dict) or d.get("format") != FORMAT or type(version) is not int \
                or version not in (1, FORMAT_VERSION):
            raise ValueError(f"not a {FORMAT} dict of version 1 or {FORMAT_VERSION}")
        try:
            if version == 1:
                sides = [d["src_merges"], d["src_symbols"], d.get("tgt_merges"), d.get("tgt_symbols")]
            else:
                sides = [*_strings(d["src"]), *(_strings(d["tgt"]) if "tgt" in d else (None, None))]
            return cls(d["src_lang"], d["tgt_lang"], *sides)
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad {FORMAT} dict: {e!r}") from None

    def _encode(self, text, side):
        lang, bpe, vocab = ((self.src_lang, self.src_bpe, self.src_vocab) if side == "src"
                            else (self.tgt_lang, self.tgt_bpe, self.tgt_vocab))
        ids, cache = [], self._ids[side]
        for token in self.tokenize(text, lang):
            if token not in cache:                   # BPE + lookup once per distinct token
                cache[token] = [vocab.id(s) for s in bpe.segment(token, vocab)]
            ids += cache[token]
        return ids

    def _tools(self, lang):
        if lang not in self._moses:
            self._moses[lang] = (MosesTokenizer(lang=lang), MosesDetokenizer(lang=lang))
        return self._moses[lang]


def _word_freqs(lines):
    """Token counts in order of first occurrence (the order BPE's tie-break follows)."""
    freqs = {}
    for tokens in lines:
        for t in tokens:
            freqs[t] = freqs.get(t, 0) + 1
    return freqs


def _symbols(freqs, bpe):
    """Vocabulary symbols: every character and END, plus every subword of the training words,
    most frequent first (ties by string), so that each training word is encoded without UNK."""
    counts = {END: 0}
    for word, f in freqs.items():
        for c in word:
            counts.setdefault(c, 0)
        for s in bpe.segment(word):
            counts[s] = counts.get(s, 0) + f
    return sorted(counts, key=lambda s: (-counts[s], s))


def _number_strings(merges, symbols):
    """{"base", "merges", "symbols"} of ``to_dict``: every string numbered once."""
    made = {}                                        # string -> the first merge that makes it
    for r, (a, b) in enumerate(merges):
        made.setdefault(a + b, r)
    base = {s for r, pair in enumerate(merges) for s in pair if made.get(s, r) >= r}
    base = sorted(base | {s for s in symbols if s not in made})
    ids = {s: i for i, s in enumerate(base)}

    def id_of(s):
        return ids[s] if s in ids else len(base) + made[s]
    return {"base": base, "merges": [id_of(s) for pair in merges for s in pair],
            "symbols": [id_of(s) for s in symbols]}


def _strings(side):
    """Inverse of ``_number_strings``: (merges, symbols) as lists of strings."""
    base, flat, symbols = side["base"], side["merges"], side["symbols"]
    if not (isinstance(base, list) and isinstance(flat, list) and isinstance(symbols, list)) \
            or len(flat) % 2 or not all(isinstance(s, str) for s in base) \
            or not all(type(i) is int and i >= 0 for i in flat + symbols):
        raise ValueError("tokenizer side needs base: list of str, merges: even-length list of "
                         "ids >= 0, symbols: list of ids >= 0")
    strings, merges = list(base), []
    for r in range(len(flat) // 2):
        a, b = flat[2 * r], flat[2 * r + 1]
        if max(a, b) >= len(strings):
            raise ValueError(f"merge {r} refers to string {max(a, b)}, only {len(strings)} defined")
        merges.append((strings[a], strings[b]))
        strings.append(strings[a] + strings[b])
    if symbols and max(symbols) >= len(strings):
        raise ValueError(f"symbol id {max(symbols)} refers past the {len(strings)} strings")
    return merges, [strings[i] for i in symbols]


def _check_texts(texts, name):
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{name} must be a list of str")
    return texts


def _check_lang(lang):
    if not isinstance(lang, str) or not lang:
        raise ValueError(f"language code must be a non-empty str such as 'en', got {lang!r}")
    return lang
