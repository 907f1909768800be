# %% [markdown]
# # 02 — Translation end to end
#
# **You will:** take English -> German translation through every stage a real system has: the
# data (generated sentences with numbers, dates and adjective agreement), Moses tokenization and
# byte-pair encoding (Sennrich, Haddow & Birch, ACL 2016, arXiv:1508.07909), length-bucketed
# batches with padding, a short training run of a tiny Transformer (Vaswani et al. 2017,
# arXiv:1706.03762), greedy decoding and beam search, BLEU (Papineni et al., ACL 2002) computed
# exactly as sacreBLEU does (Post, WMT 2018, arXiv:1804.08771), and the decoder's
# cross-attention on one sentence, with its entropy (Clark et al. 2019, arXiv:1906.04341).
#
# **Needs:** tutorial 01 (the model, its loss and its training loop).
#
# **Runs in:** about 20 s on a laptop CPU. To keep it that short we learn BPE and train on 3 000
# of the 20 000 training pairs, with a 1 + 1 layer model of width 64 for 300 steps. On this small,
# regular, generated language that is enough to translate many dev sentences exactly, but the
# model still gets adjective endings, long numbers and dates wrong often enough; the full recipe
# (a 2 + 2 layer model of width 128 on all the data, a few minutes) is
# `tinyzip train --task numbers-de`, and `tinyzip demo` trains it, compresses it and compares.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import os

# Our matmuls are small (width 64). On a busy 2-core machine OpenBLAS's second thread spins and
# waits far more than it helps, so one BLAS thread is several times faster here (see
# tinyzip/bench.py). This only takes effect before NumPy is first imported; your setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import collections
import dataclasses
import math

import numpy as np

from tinyzip.data import BOS, EOS, PAD, Tokenizer, load_task, make_batches
from tinyzip.data.bpe import END
from tinyzip.data.numbers_de import number_de, number_en
from tinyzip.decode import beam_search, greedy_decode
from tinyzip.metrics import corpus_bleu
from tinyzip.train import evaluate_teacher_forced
from tinyzip.translation import Preset, encode_pairs, evaluate, train_translation, with_params
from tinyzip.viz import attention_entropy, terminal_heatmap

N_TRAIN = 3000    # training pairs we use (of 20 000); more pairs, better translations
N_DEV = 200       # dev pairs for validation and BLEU
STEPS = 300       # training steps in Step 4
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 1 — the data
#
# `load_task("numbers-de")` generates (deterministically, from a seed) English sentences and
# their German translations: numbers written as words, dates, adjectives that agree with the
# noun's gender, number and case, and verb-second word order. The splits are disjoint.
#
# One German rule the model must learn: a number below a million is **one word**, and below 100
# the **units come before the tens**, joined by "und": 23 = "dreiundzwanzig" (three-and-twenty).
# A 1 inside a compound is "ein" ("einundzwanzig", "eintausend"), but "eins" at the very end
# ("hunderteins"). Thousands are a prefix: `number_de(1000 a + b) = prefix(a) + "tausend" +
# number_de(b)`. We check the first law for every number below 100 and the second for every
# prefix `a` and every rest `b` (not every combination), then check that the generated
# data really uses `number_de`: every "The number is ..." sentence below 1000 is translated
# "Die Zahl ist <number_de(n)>.".

# %%
task = load_task("numbers-de")
print(f"{len(task.train)} train, {len(task.dev)} dev, {len(task.test)} test pairs "
      f"({task.src_lang} -> {task.tgt_lang})")
for src_text, tgt_text in task.train[:4]:
    print(f"  {src_text}\n    -> {tgt_text}")
for n in (23, 21, 101, 23_400, 1_001):
    print(f"  {n:>6} = {number_en(n)!r} -> {number_de(n)!r}")


def in_compound(n):
    """The German word for n (1 <= n < 1000) inside a longer number: a final "eins" becomes "ein"."""
    word = number_de(n)
    return word[:-1] if word.endswith("eins") else word


for n in range(21, 100):
    tens, unit = divmod(n, 10)
    if unit:
        assert number_de(n) == in_compound(unit) + "und" + number_de(10 * tens), n
thousands = ({(a, b) for a in range(1, 1000) for b in (0, 1, 71)}
             | {(a, b) for a in (1, 21, 999) for b in range(1000)})
for a, b in thousands:                                      # every prefix a, every rest b
    assert number_de(1000 * a + b) == in_compound(a) + "tausend" + (number_de(b) if b else ""), (a, b)

word_to_n = {number_en(n): n for n in range(1, 1000)}
checked = 0
for src_text, tgt_text in task.train:
    words = src_text.removeprefix("The number is ").removesuffix(".")
    if src_text.startswith("The number is ") and words in word_to_n:
        assert tgt_text == f"Die Zahl ist {number_de(word_to_n[words])}.", (src_text, tgt_text)
        checked += 1
print(f"units-before-tens law: all n < 100; thousands law: {len(thousands)} numbers; "
      f"{checked} 'The number is ...' pairs match number_de")
assert checked > 0

# %% [markdown]
# ## Step 2 — Moses tokens, then BPE subwords
#
# First the Moses tokenizer splits punctuation off the words ("alt." -> "alt", "."). Then BPE
# (the paper's Algorithm 1) builds subwords: write every word as characters plus an end-of-word
# marker `</w>`, count every adjacent symbol pair weighted by how often the word occurs, merge
# the most frequent pair everywhere into one new symbol, and repeat. The merges, in order, are
# the model. We learn one *joint* BPE on both languages (so source and target can share one
# embedding matrix) and stop when the vocabulary, four specials included (PAD=0, BOS=1, EOS=2,
# UNK=3), has 400 symbols (there are more merges than new symbols: a symbol that later merges
# use up entirely drops out). We count the pairs ourselves: the first merge must be the most
# frequent pair.
#
# At test time a word is split into characters and the learned merges are applied in order, so a
# long German number that was never seen in training still becomes known subwords. Decoding
# joins the subwords at each `</w>` and undoes the Moses tokenization: text -> ids -> text gives
# the text back exactly.

# %%
train_pairs = task.train[:N_TRAIN]
dev_pairs = task.dev[:N_DEV]
tok = Tokenizer.learn([s for s, _ in train_pairs], [t for _, t in train_pairs],
                      task.src_lang, task.tgt_lang, vocab_size=400)
merges = tok.src_bpe.merges
print("Moses tokens:", tok.tokenize(train_pairs[0][1], task.tgt_lang))
print(f"{len(merges)} merges learned; the first 12, in order:")
print("  " + ", ".join(f"{a}+{b}" for a, b in merges[:12]))

word_freq = collections.Counter()
for src_text, tgt_text in train_pairs:
    word_freq.update(tok.tokenize(src_text, task.src_lang) + tok.tokenize(tgt_text, task.tgt_lang))
pair_count = collections.Counter()
for word, freq in word_freq.items():
    symbols = list(word) + [END]
    for pair in zip(symbols, symbols[1:]):
        pair_count[pair] += freq
print(f"first merge {merges[0]} occurs {pair_count[merges[0]]} times; "
      f"the most frequent pair occurs {max(pair_count.values())} times")
assert pair_count[merges[0]] == max(pair_count.values())

word = next(number_de(n) for n in range(347_958, 1_000_000) if number_de(n) not in word_freq)
subwords = tok.tgt_bpe.segment(word)
print(f"{word!r}, never seen in training -> {list(subwords)}")
assert "".join(subwords) == word + END and all(s in tok.tgt_vocab for s in subwords)

src_text, tgt_text = dev_pairs[0]
ids = tok.encode_tgt(tgt_text)
print(f"{tgt_text!r}\n  -> ids {ids}\n  -> {tok.decode(ids)!r}   (vocabulary: {tok.tgt_vocab_size} symbols)")
for src_text, tgt_text in dev_pairs:
    assert tok.decode(tok.encode_src(src_text), side="src") == src_text
    assert tok.decode(tok.encode_tgt(tgt_text)) == tgt_text
print(f"round trip exact on all {len(dev_pairs)} dev pairs, both sides")
assert tok.src_vocab_size == tok.tgt_vocab_size == 400

# %% [markdown]
# ## Step 3 — batches of similar length, padded
#
# Sentences differ in length, but a batch is a rectangle, so short rows are padded with PAD = 0
# (the loss ignores PAD positions). To waste little on padding, `make_batches` sorts the pairs by
# length (random order among ties), cuts the sorted list into batches of at most `max_tokens`
# padded tokens, `B * max(S, T) <= max_tokens`, and shuffles the batches (Vaswani et al.,
# Sec. 5.1). The decoder reads `tgt_in = [BOS] + y` and must predict `tgt_out = y + [EOS]`, the
# same sentence shifted by one. We check, for every batch, the budget, the shift, and that the
# batches hold every training pair exactly once; and we compare the padding with that of the same
# batch sizes filled with pairs in random order.

# %%
MAX_TOKENS = 1500  # padded tokens per batch
MAX_LEN = 48       # longer sentences (in subwords) are dropped; none is that long here
train_ids = encode_pairs(tok, train_pairs, max_len=MAX_LEN)
batches = list(make_batches(train_ids, MAX_TOKENS, rng))
src, tgt_in, tgt_out = batches[0]
print(f"{len(batches)} batches; the first: src {src.shape}, tgt_in {tgt_in.shape}")
print("  src[0]    ", src[0])
print("  tgt_in[0] ", tgt_in[0])
print("  tgt_out[0]", tgt_out[0])

groups = []                                                 # the (src, y) pairs of each batch
for src, tgt_in, tgt_out in batches:
    B, T = tgt_out.shape
    assert B * max(src.shape[1], T) <= MAX_TOKENS
    groups.append([])
    for s, t_in, t_out in zip(src, tgt_in, tgt_out):
        n = list(t_out).index(EOS)                          # y = tgt_out before its EOS
        y = list(t_out[:n])
        assert list(t_in) == [BOS] + y + [PAD] * (T - 1 - n)
        assert list(t_out) == y + [EOS] + [PAD] * (T - 1 - n)
        groups[-1].append((list(s[s != PAD]), y))
in_batches = collections.Counter((tuple(s), tuple(y)) for g in groups for s, y in g)
assert len(train_ids) == len(train_pairs)
assert in_batches == collections.Counter((tuple(s), tuple(y)) for s, y in train_ids)


def padding_fraction(groups):
    """Share of PAD in the padded `src` and `tgt_out` arrays of these groups of (src, y) pairs."""
    real = sum(len(s) + len(y) + 1 for g in groups for s, y in g)
    padded = sum(len(g) * (max(len(s) for s, _ in g) + max(len(y) for _, y in g) + 1) for g in groups)
    return 1 - real / padded


ends = np.cumsum([len(g) for g in groups])
shuffled = [train_ids[i] for i in rng.permutation(len(train_ids))]
bucketed = padding_fraction(groups)
unsorted = padding_fraction([shuffled[end - len(g):end] for g, end in zip(groups, ends)])
print(f"padding: {bucketed:.1%} with length buckets, {unsorted:.1%} with the same batch sizes "
      "in random order")
assert bucketed < unsorted

# %% [markdown]
# ## Step 4 — train a tiny translator
#
# `train_translation` puts Steps 2 and 3 and tutorial 01's training loop together: it builds a
# `Seq2Seq` for the tokenizer's vocabulary, draws fresh batches every epoch, and takes `STEPS`
# Adam steps with a linear warm-up and `1/sqrt(step)` decay (`Preset.schedule`), label smoothing
# 0.1 and, here, no dropout (a run this short has no time to overfit). Every `STEPS // 4`
# steps it measures the teacher-forced loss on the dev set, the negative log-likelihood per
# target token (nats). We give it our 3 000 pairs and our tokenizer. Before training, that loss
# is close to `log V`, the loss of a uniform guess over the vocabulary (tutorial 01, Step 3);
# after, it must be far below.

# %%
preset = Preset(vocab_size=tok.tgt_vocab_size, steps=STEPS, max_tokens=MAX_TOKENS, peak_lr=3e-3, warmup=50,
                max_len=MAX_LEN, model=dict(D=64, H=4, F=128, enc_layers=1, dec_layers=1, dropout=0.0,
                                       label_smoothing=0.1))
small = dataclasses.replace(task, train=train_pairs, dev=dev_pairs)
translator, result = train_translation(small, preset=preset, tokenizer=tok, log=None)
model, params = translator.model, translator.params

dev_batches = list(make_batches(encode_pairs(tok, dev_pairs, max_len=MAX_LEN), MAX_TOKENS, shuffle=False))
params0 = model.init_params(np.random.default_rng(1))       # an untrained model of the same shape
nll0 = evaluate_teacher_forced(model, params0, dev_batches)["nll"]
print(f"{sum(p.size for p in params.values()):,} parameters; dev loss (nats/token): untrained {nll0:.3f} "
      f"(log V = {math.log(tok.tgt_vocab_size):.3f})")
for h in result.history:
    print(f"  step {h['step']:>4}: dev loss {h['nll']:.3f}, next-token accuracy {h['accuracy']:.1%}")
assert result.history[-1]["nll"] < 0.25 * nll0

# %% [markdown]
# ## Step 5 — greedy decoding and beam search
#
# At test time there is no reference to feed the decoder: it reads its own output. **Greedy**
# decoding takes the most likely token at every step. **Beam search** keeps the `K` best partial
# translations (by total log-probability), extends each by every token, and keeps the best `K`
# again; a finished translation `Y` is ranked by `log P(Y | X) / lp(Y)` with the length penalty
# `lp(Y) = ((5 + |Y|) / 6) ** 0.6` (Wu et al. 2016, arXiv:1609.08144), so that short outputs are
# not favoured just for having fewer factors below 1. With `K = 1` beam search keeps only the best
# continuation, which is exactly greedy decoding: we check that on 64 dev sentences. A wider beam
# finds translations the model scores higher, not necessarily better ones: on a model this small
# it need not raise BLEU (Step 6).

# %%
src_ids = [tok.encode_src(s) for s, _ in dev_pairs[:64]]
src = np.zeros((len(src_ids), max(map(len, src_ids))), dtype=np.int64)  # (B, S), PAD = 0
for row, s in enumerate(src_ids):
    src[row, :len(s)] = s
greedy = greedy_decode(model, params, src, max_len=60)
beam1 = beam_search(model, params, src, beam_size=1, max_len=60)
beam4 = beam_search(model, params, src, beam_size=4, max_len=60)
for i in range(3):
    print(f"  {dev_pairs[i][0]}\n    greedy: {tok.decode(greedy[i])}\n    beam 4: {tok.decode(beam4[i])}"
          f"\n    ref:    {dev_pairs[i][1]}")
print(f"beam 1 == greedy on {sum(a == b for a, b in zip(beam1, greedy))} of {len(greedy)} sentences; "
      f"beam 4 differs from greedy on {sum(a != b for a, b in zip(beam4, greedy))}")
assert beam1 == greedy

# %% [markdown]
# ## Step 6 — BLEU
#
# BLEU compares n-grams (n = 1..4) of the output with the reference. The modified precision
# `p_n` counts each hypothesis n-gram at most as often as it occurs in the reference ("clipping":
# "the the the" does not get three matches for one "the"). The score is
# `BLEU = BP * exp(mean_n log p_n)`, with the brevity penalty `BP = exp(1 - r / c)` when the
# output (c tokens) is shorter than the reference (r tokens), else 1. Counts are summed over the
# whole corpus before dividing. sacreBLEU first splits punctuation (its "13a" tokenizer) and
# reports percentages. We work two cases by hand:
#
# - "the cat sat on the mat" vs "the cat sat on a mat": the second "the" is clipped, so
#   p = 5/6, 3/5, 2/4, 1/3 and c = r, BLEU = 100 * (1/12) ** (1/4);
# - "the cat sat on" vs "the cat sat on the mat": every n-gram matches, c = 4, r = 6, BLEU =
#   100 * exp(1 - 6/4).
#
# Then the trained model's BLEU on our dev sentences, greedy and beam 4, against the untrained
# model's.

# %%
perfect = corpus_bleu([t for _, t in dev_pairs], [t for _, t in dev_pairs])
clipped = corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
short = corpus_bleu(["the cat sat on"], ["the cat sat on the mat"])
print(f"perfect: {perfect.score:.2f}; clipped case: {clipped.score:.2f} (precisions "
      f"{', '.join(f'{p:.1f}' for p in clipped.precisions)}); short case: {short.score:.2f} "
      f"(BP {short.bp:.3f})")
assert math.isclose(perfect.score, 100.0)
assert clipped.counts == [5, 3, 2, 1] and clipped.totals == [6, 5, 4, 3] and clipped.bp == 1.0
assert math.isclose(clipped.score, 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
assert math.isclose(short.score, 100 * math.exp(1 - 6 / 4))

untrained = evaluate(with_params(translator, params0), dev_pairs)
trained = evaluate(translator, dev_pairs)
trained_beam = evaluate(translator, dev_pairs, beam=4)
print(f"dev BLEU ({N_DEV} sentences): untrained {untrained['bleu']:.1f}, trained greedy "
      f"{trained['bleu']:.1f}, beam 4 {trained_beam['bleu']:.1f}   [{trained['signature']}]")
print(f"exact translations: {sum(h == r for h, (_, r) in zip(trained['hyps'], dev_pairs))} of {N_DEV}")
assert trained["bleu"] > untrained["bleu"] + 10

# %% [markdown]
# ## Step 7 — where the decoder looks
#
# Cross-attention lets each target position read the source. `model.forward(...,
# return_states=True)` keeps, per decoder layer, `cache.states["dec.cross_probs"][i]` of shape
# `(B, H, T, S)`: row `q` is a softmax over the `S` source tokens, so it sums to 1. We run the
# model teacher-forced on its own greedy translation of one dev sentence and draw the sharpest
# head as a heatmap (darker = more weight; rows are the output tokens being predicted, columns
# the source subwords, `·` marking a word's end as in the BPE paper). Digits are mostly read from
# the one source position they copy. Look at the spelled-out number: German puts the units first
# (Step 1), so the row predicting "zwei" tends to read "two" and the row predicting "undsiebzig"
# to read "seventy", a crossing off the diagonal. The entropy of a row, `-sum_k a_k log a_k`
# (nats), is 0 when the row looks at one token and `log S` when it spreads evenly, its maximum;
# we check that bound, and `attention_entropy` against the definition.

# %%
src_text = next(s for s, _ in dev_pairs if s.startswith("On "))
x = tok.encode_src(src_text)
y = translator.decode_ids([x])[0]
src = np.array([x], dtype=np.int64)                          # (1, S)
tgt_in = np.array([[BOS] + y], dtype=np.int64)               # (1, T)
_, cache = model.forward(params, src, tgt_in, return_states=True)
probs = cache.states["dec.cross_probs"]                      # L arrays of (1, H, T, S)
S = src.shape[1]
entropy = attention_entropy(probs)                           # (L, H)
head = int(entropy[-1].argmin())
print(f"{src_text}\n  -> {tok.decode(y)}")
print(f"cross-attention entropy per head (last layer): {np.round(entropy[-1], 3)}; "
      f"uniform over S = {S} tokens: log S = {math.log(S):.3f}")
def label(i):
    return tok.src_vocab.symbol(i).replace(END, "·")


print(f"head {head}:")
print(terminal_heatmap(probs[-1][0, head], [label(i) for i in y] + ["</s>"], [label(i) for i in x]))

p64 = [p.astype(np.float64) for p in probs]
by_hand = np.stack([-(p * np.log(np.maximum(p, 1e-300))).sum(-1).mean(axis=(0, 2)) for p in p64])  # (L, H)
assert all(np.allclose(p.sum(-1), 1.0, atol=1e-5) for p in probs)
assert np.allclose(entropy, by_hand) and np.all(entropy >= 0) and np.all(entropy <= math.log(S) + 1e-9)
