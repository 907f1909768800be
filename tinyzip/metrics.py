"""Corpus BLEU exactly as sacreBLEU 2.x computes it, and plain accuracy.

Kishore Papineni, Salim Roukos, Todd Ward, Wei-Jing Zhu (2002). "BLEU: a Method for Automatic
Evaluation of Machine Translation." ACL 2002, pp. 311-318.
Matt Post (2018). "A Call for Clarity in Reporting BLEU Scores." WMT 2018, arXiv:1804.08771
(sacreBLEU: score detokenized output against untouched references with the metric's own 13a
tokenization, and report the signature). Smoothing: Boxing Chen, Colin Cherry (2014). "A Systematic
Comparison of Smoothing Techniques for Sentence-Level BLEU." WMT 2014 (methods 1-3).

Notation map (paper -> code)
----------------------------
candidate c_i, references r_ij   ``hyps[i]``, ``refs[j][i]`` (j-th reference stream)
Count_clip(g)                    ``min(count_hyp(g), max_j count_ref_j(g))``  (max over references)
p_n (modified precision)         ``precisions[n-1] / 100`` = sum_i correct_n(i) / sum_i total_n(i)
c, r                             ``sys_len`` (hypothesis tokens), ``ref_len`` (sum of closest ref lengths)
BP, w_n = 1/N, N = 4             ``bp``, uniform weights, ``max_order``

Equations (paper, "modified n-gram precision on blocks of text", "sentence brevity penalty",
"BLEU details"):
    p_n  = sum_i sum_{g in n-grams(c_i)} Count_clip(g) / sum_i sum_{g} Count(g)      (corpus level)
    BP   = 1 if c > r else exp(1 - r/c)
    BLEU = BP * exp( sum_{n=1..N} w_n log p_n )
All sums run over the corpus before dividing: corpus BLEU is not the mean of sentence BLEUs.
The closest reference length of a hypothesis is the one with the smallest |len - ref_len|, ties
broken toward the shorter reference.

sacreBLEU's details, reproduced line for line (``sacrebleu/metrics/bleu.py``, 2.x):
- Score and precisions are percentages (x100). ``bp = 0`` when ``sys_len = 0``.
- No matching n-gram of any order -> score 0.0 immediately.
- For n = 1..N: ``add-k`` adds k (default 1) to correct_n and total_n for n > 1; if total_n = 0 the
  loop stops (higher orders keep precision 0); ``effective_order`` then averages only the orders
  seen so far; a zero correct_n gets, under ``exp`` (the default, NIST mteval-v13a, Chen & Cherry
  method 3), p_n = 100 / (2^k total_n) for the k-th such order, under ``floor`` (method 1)
  p_n = 100 * 0.1 / total_n, and under ``none`` stays 0.
- log 0 is taken as -9999999999, so a zero precision drives the score to (about) 0.

13a tokenization (mteval-v13a; ``sacrebleu/tokenizers/tokenizer_13a.py``, ``tokenizer_re.py``):
drop "<skipped>", join "-\\n", newlines -> spaces, unescape &quot; &amp; &lt; &gt;, then
    ([\\{-\\~\\[-\\` -\\&\\(-\\+\\:-\\@\\/])  -> " \\1 "   (punctuation and symbols, not ' - . ,)
    ([^0-9])([\\.,])                      -> "\\1 \\2 " (period/comma after a non-digit)
    ([\\.,])([^0-9])                      -> " \\1 \\2" (period/comma before a non-digit)
    ([0-9])(-)                            -> "\\1 \\2 " (hyphen after a digit)
and collapse whitespace. ``tokenize="none"`` splits on whitespace only ("tokenized BLEU", for
text already tokenized, e.g. by Moses; such scores are not comparable with 13a scores).
"""
import math
import re
from dataclasses import dataclass

import numpy as np

SMOOTH_DEFAULTS = {"none": None, "floor": 0.1, "add-k": 1, "exp": None}
TOKENIZERS = ("13a", "none")
LOG_ZERO = -9999999999          # sacreBLEU's my_log(0)
_RE_13A = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


@dataclass(frozen=True)
class BLEUResult:
    """Corpus BLEU: ``score`` and ``precisions`` in percent, n-gram ``counts``/``totals`` per order."""

    score: float
    precisions: list
    bp: float
    sys_len: int
    ref_len: int
    counts: list
    totals: list
    signature: str

    def __str__(self):
        p = "/".join(f"{x:.1f}" for x in self.precisions)
        ratio = self.sys_len / self.ref_len if self.ref_len else 0.0
        return (f"BLEU = {self.score:.2f} {p} (BP = {self.bp:.3f} ratio = {ratio:.3f} "
                f"hyp_len = {self.sys_len} ref_len = {self.ref_len}) {self.signature}")


def tokenize_13a(line):
    """mteval-v13a tokenization of one line, as sacreBLEU's ``Tokenizer13a``."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _RE_13A:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


def corpus_bleu(hyps, refs, tokenize="13a", smooth_method="exp", smooth_value=None,
                lowercase=False, effective_order=False, max_order=4):
    """BLEU of a corpus of hypothesis strings against one or more reference streams.

    ``refs`` is either a list of strings (one reference per hypothesis) or a list of reference
    streams (each a list as long as ``hyps``; an entry may be None where a segment has fewer
    references), as in ``sacrebleu.corpus_bleu(hyps, [refs])``.
    """
    hyps, streams = _check_args(hyps, refs, tokenize, smooth_method, max_order)
    stats = np.zeros(2 + 2 * max_order, dtype=np.int64)   # [sys_len, ref_len, correct_1.., total_1..]
    for i, hyp in enumerate(hyps):
        seg_refs = [s[i] for s in streams if s[i] is not None]
        if not seg_refs:
            raise ValueError(f"segment {i} has no reference (every entry is None)")
        stats += _segment_stats(_prep(hyp, tokenize, lowercase),
                                [_prep(r, tokenize, lowercase) for r in seg_refs], max_order)
    nrefs = {sum(s[i] is not None for s in streams) for i in range(len(hyps))}
    signature = "|".join([
        f"nrefs:{nrefs.pop() if len(nrefs) == 1 else 'var'}", f"case:{'lc' if lowercase else 'mixed'}",
        f"eff:{'yes' if effective_order else 'no'}", f"tok:{tokenize}",
        f"smooth:{smooth_method}" + (f"[{_smooth(smooth_method, smooth_value):.2f}]"
                                     if SMOOTH_DEFAULTS[smooth_method] is not None else ""),
        "impl:tinyzip"])
    return bleu_from_stats(stats, smooth_method, smooth_value, effective_order, max_order, signature)


def bleu_from_stats(stats, smooth_method="exp", smooth_value=None, effective_order=False,
                    max_order=4, signature=""):
    """BLEU from summed sufficient statistics ``[sys_len, ref_len, correct_1..N, total_1..N]``."""
    sys_len, ref_len = int(stats[0]), int(stats[1])
    correct = [int(x) for x in stats[2:2 + max_order]]
    total = [int(x) for x in stats[2 + max_order:2 + 2 * max_order]]
    k = _smooth(smooth_method, smooth_value)
    # BP = 1 if c > r else exp(1 - r/c); sacreBLEU also takes c = r as 1 and c = 0 as 0
    bp = 1.0
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    precisions = [0.0] * max_order
    if not any(correct):
        return BLEUResult(0.0, precisions, bp, sys_len, ref_len, correct, total, signature)
    smooth_mteval, eff_order = 1.0, max_order
    for n in range(1, max_order + 1):
        if smooth_method == "add-k" and n > 1:
            correct[n - 1] += k
            total[n - 1] += k
        if total[n - 1] == 0:
            break
        if effective_order:
            eff_order = n
        if correct[n - 1] == 0:
            if smooth_method == "exp":
                smooth_mteval *= 2
                precisions[n - 1] = 100.0 / (smooth_mteval * total[n - 1])
            elif smooth_method == "floor":
                precisions[n - 1] = 100.0 * k / total[n - 1]
        else:
            # p_n = sum Count_clip / sum Count, in percent
            precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1]
    # BLEU = BP * exp(sum_n w_n log p_n), w_n = 1 / eff_order
    score = bp * math.exp(sum([_log(p) for p in precisions[:eff_order]]) / eff_order)
    return BLEUResult(score, precisions, bp, sys_len, ref_len, correct, total, signature)


def accuracy(pred, labels, ignore_index=None):
    """Fraction of positions where ``pred == labels`` (same shape, integer arrays), skipping
    positions whose label is ``ignore_index`` (e.g. PAD)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"pred shape {pred.shape} != labels shape {labels.shape}")
    if pred.size == 0:
        raise ValueError("accuracy of an empty array is undefined")
    for name, a in (("pred", pred), ("labels", labels)):
        if a.dtype.kind not in "iub":
            raise TypeError(f"{name} must hold integers or bools, got dtype {a.dtype}")
    keep = np.ones(labels.shape, dtype=bool) if ignore_index is None else labels != ignore_index
    if not keep.any():
        raise ValueError("accuracy of zero positions: every label is ignore_index")
    return float((pred[keep] == labels[keep]).mean())


def _segment_stats(hyp, refs, max_order):
    """[hyp_len, closest ref_len, correct_1..N, total_1..N] of one tokenized segment."""
    hyp_counts, hyp_len = _ngrams(hyp, max_order)
    ref_max, ref_lens = {}, []
    for ref in refs:
        counts, n_tokens = _ngrams(ref, max_order)
        ref_lens.append(n_tokens)
        for g, c in counts.items():                  # max over references, not sum
            ref_max[g] = max(ref_max.get(g, 0), c)
    closest = min(ref_lens, key=lambda r: (abs(hyp_len - r), r))   # ties -> shorter reference
    correct, total = [0] * max_order, [0] * max_order
    for g, c in hyp_counts.items():
        total[len(g) - 1] += c
        correct[len(g) - 1] += min(c, ref_max.get(g, 0))            # Count_clip
    return np.array([hyp_len, closest] + correct + total, dtype=np.int64)


def _ngrams(line, max_order):
    tokens = line.split()
    counts = {}
    for n in range(1, max_order + 1):
        for i in range(len(tokens) - n + 1):
            g = tuple(tokens[i:i + n])
            counts[g] = counts.get(g, 0) + 1
    return counts, len(tokens)


def _prep(sentence, tokenize, lowercase):
    if lowercase:
        sentence = sentence.lower()
    sentence = sentence.rstrip()
    return tokenize_13a(sentence) if tokenize == "13a" else sentence


def _smooth(method, value):
    return SMOOTH_DEFAULTS[method] if value is None else value


def _log(x):
    return math.log(x) if x != 0.0 else LOG_ZERO


def _check_args(hyps, refs, tokenize, smooth_method, max_order):
    if isinstance(hyps, str) or not all(isinstance(h, str) for h in hyps):
        raise TypeError("hyps must be a list of str")
    if len(hyps) == 0:
        raise ValueError("hyps is empty: BLEU of an empty corpus is undefined")
    if isinstance(refs, str) or len(refs) == 0:
        raise TypeError("refs must be a list of str or a list of reference streams")
    streams = [list(refs)] if all(isinstance(r, str) for r in refs) else [list(s) for s in refs]
    for j, s in enumerate(streams):
        if len(s) != len(hyps):
            raise ValueError(f"reference stream {j} has {len(s)} lines, hyps has {len(hyps)}")
        if not all(r is None or isinstance(r, str) for r in s):
            raise TypeError(f"reference stream {j} must hold str (or None)")
    if tokenize not in TOKENIZERS:
        raise ValueError(f"tokenize must be one of {TOKENIZERS}, got {tokenize!r}")
    if smooth_method not in SMOOTH_DEFAULTS:
        raise ValueError(f"smooth_method must be one of {tuple(SMOOTH_DEFAULTS)}, got {smooth_method!r}")
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"max_order must be a positive int, got {max_order!r}")
    return list(hyps), streams
