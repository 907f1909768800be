"""Translation end to end: tokenizer, model, training, decoding and BLEU, as the CLI and demo use them.

    task = load_task("numbers-de")
    translator, result = train_translation(task, preset=PRESETS["numbers-de"], out="runs/nde.npz")
    print(translator.translate(["I have twenty-three red apples."]))
    print(evaluate(translator, task.test)["bleu"])

A ``Translator`` is the model (config only), its float32 params and the tokenizer; it is saved as
one model file (``tinyzip.io``; the tokenizer's merges and vocabulary ride in the JSON ``extra``)
and loaded back from that file or from a compressed ``.tz`` (``tinyzip.container``), whose tensors
are either dequantized or, with ``kernels=True``, multiplied on the real kernels.
"""
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from tinyzip import io
from tinyzip.data import Task, Tokenizer, make_batches
from tinyzip.decode import beam_search, greedy_decode
from tinyzip.metrics import corpus_bleu
from tinyzip.nn.optim import adam
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import checkpoint_path_for, evaluate_teacher_forced, train
from tinyzip.errors import FileFormatError


@dataclass(frozen=True)
class Preset:
    """A model size and its training recipe (Adam 0.9/0.98/1e-9, linear warmup then 1/sqrt decay)."""

    vocab_size: int
    model: dict
    steps: int
    max_tokens: int            # source + target tokens per batch (padding included)
    peak_lr: float
    warmup: int
    max_len: int = 128         # longest sentence in tokens the model accepts

    def schedule(self, step: int) -> float:
        """lr(step) = peak_lr * min(step / warmup, sqrt(warmup / step)): Vaswani's shape, scaled to its peak."""
        step = max(step, 1)
        return self.peak_lr * min(step / self.warmup, (self.warmup / step) ** 0.5)


PRESETS = {
    "copy": Preset(vocab_size=60, model=dict(D=32, H=2, F=64, enc_layers=1, dec_layers=1, dropout=0.0,
                                             label_smoothing=0.0),
                   steps=300, max_tokens=1000, peak_lr=3e-3, warmup=50),
    "numbers-de": Preset(vocab_size=1000, model=dict(D=128, H=4, F=256, enc_layers=2, dec_layers=2,
                                                     dropout=0.1, label_smoothing=0.1),
                         steps=400, max_tokens=3000, peak_lr=2e-3, warmup=200),
    "bible-es": Preset(vocab_size=8000, model=dict(D=128, H=4, F=512, enc_layers=2, dec_layers=2,
                                                   dropout=0.1, label_smoothing=0.1),
                       steps=12000, max_tokens=2500, peak_lr=1.5e-3, warmup=400, max_len=160),
}


# The model shipped in the package: Bible En->Es, preset "bible-es", weights in float16 (see README,
# "The shipped model"; rebuilt by `tinyzip train --task bible-es` then scripts/ship_model.py).
SHIPPED_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "bible_en_es.tz")


@dataclass
class Translator:
    """A trained model ready to translate: ``model`` (config only), float32 ``params``, ``tokenizer``.

    ``matmuls`` (optional) maps weight names to kernel matmuls of a compressed model; ``act_hooks``
    (optional) are the frozen activation quantizers of a weights+activations file that no kernel
    applies (``tinyzip.compressed.static_act_hooks``: Q, K, V and softmax outputs).
    """

    model: Seq2Seq
    params: dict
    tokenizer: Tokenizer
    matmuls: dict = field(default_factory=dict)
    act_hooks: dict = field(default_factory=dict)

    def translate(self, texts, beam: int = 1, batch_size: int = 64) -> list:
        """Translate a list of source sentences (greedy, or beam search with ``beam > 1``)."""
        ids = [self.tokenizer.encode_src(t) for t in texts]
        return [self.tokenizer.decode(y) for y in self.decode_ids(ids, beam, batch_size)]

    @staticmethod
    def max_output(source_length: int) -> int:
        """Longest output for a source of this many tokens: 2 S + 10 (translations here are shorter)."""
        return 2 * source_length + 10

    def decode_ids(self, src_ids, beam: int = 1, batch_size: int = 64) -> list:
        """Token-id lists in, token-id lists out; sentences are batched by length, order kept."""
        max_len = self.model.config.max_len
        too_long = [i for i, s in enumerate(src_ids) if len(s) > max_len]
        if too_long:
            raise ValueError(f"sentence {too_long[0]} has {len(src_ids[too_long[0]])} tokens; "
                             f"this model reads at most {max_len}")
        order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
        out = [None] * len(src_ids)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            S = max(1, max(len(src_ids[i]) for i in chunk))
            src = np.zeros((len(chunk), S), dtype=np.int64)        # (B, S), PAD = 0
            for row, i in enumerate(chunk):
                src[row, :len(src_ids[i])] = src_ids[i]
            limit = min(max_len, self.max_output(S))
            if beam > 1:
                hyps = beam_search(self.model, self.params, src, beam_size=beam, max_len=limit,
                                   matmuls=self.matmuls or None, act_hooks=self.act_hooks or None)
            else:
                hyps = greedy_decode(self.model, self.params, src, max_len=limit, matmuls=self.matmuls or None,
                                     act_hooks=self.act_hooks or None)
            for i, hyp in zip(chunk, hyps):            # each sentence's own limit: batch-independent
                out[i] = list(hyp)[:self.max_output(len(src_ids[i]))]
        return out


def encode_pairs(tokenizer: Tokenizer, pairs, max_len: int) -> list:
    """(src, tgt) texts -> id lists; pairs longer than ``max_len`` tokens on either side are dropped."""
    encoded = [(tokenizer.encode_src(s), tokenizer.encode_tgt(t)) for s, t in pairs]
    return [(s, t) for s, t in encoded if 0 < len(s) <= max_len and len(t) < max_len]


def train_translation(task: Task, *, preset: Preset, out=None, steps: int | None = None, seed: int = 0,
                      resume: bool = False, checkpoint_every: int = 200, log="stderr",
                      tokenizer: Tokenizer | None = None):
    """Learn a joint BPE tokenizer (unless given), train a Seq2Seq on ``task.train``, save to ``out``.

    Returns ``(translator, train_result)``. Dev loss/accuracy (teacher forced) is the validation
    metric; BLEU is measured by :func:`evaluate` afterwards. ``resume`` continues from the
    checkpoint beside ``out`` (``<out>.ckpt.npz``), exactly.
    """
    import sys
    log = sys.stderr if log == "stderr" else log
    steps = preset.steps if steps is None else steps
    ckpt = None if out is None else checkpoint_path_for(out)
    if tokenizer is None and resume and ckpt is not None:      # learning is deterministic: reuse it
        tokenizer = Tokenizer.from_dict(io.load_checkpoint(ckpt).extra["tokenizer"])
    if tokenizer is None:
        tokenizer = Tokenizer.learn([s for s, _ in task.train], [t for _, t in task.train],
                                    task.src_lang, task.tgt_lang, vocab_size=preset.vocab_size)
    train_ids = encode_pairs(tokenizer, task.train, preset.max_len)
    dev_ids = encode_pairs(tokenizer, task.dev, preset.max_len)
    config = Seq2SeqConfig(src_vocab=tokenizer.src_vocab_size, tgt_vocab=tokenizer.tgt_vocab_size,
                           max_len=preset.max_len + 2, **preset.model)
    model = Seq2Seq(config)
    rng = np.random.default_rng(seed)
    params = model.init_params(rng)
    dev_batches = list(make_batches(dev_ids, preset.max_tokens, shuffle=False))

    def batches(epoch):
        return make_batches(train_ids, preset.max_tokens, np.random.default_rng([seed, epoch]))

    def validate(eff, step):
        return evaluate_teacher_forced(model, eff, dev_batches)

    extra = {"task": task.name, "tokenizer": tokenizer.to_dict()}
    result = train(model, params, batches, steps=steps, optimizer=adam(), schedule=preset.schedule,
                   rng=rng, checkpoint_path=ckpt, checkpoint_every=checkpoint_every if ckpt else 0,
                   resume=resume, validate=validate, validate_every=max(steps // 4, 1),
                   config=config.to_dict(), extra=extra, log=log)
    translator = Translator(model, result.params, tokenizer)
    if out is not None and not result.interrupted:
        save_translator(out, translator, {"task": task.name, "steps": result.step, "history": result.history})
    return translator, result


def save_translator(path, translator: Translator, extra: dict | None = None) -> None:
    """One float32 model file: params, config, tokenizer (and any ``extra`` notes)."""
    io.save_model(path, translator.params, translator.model.config.to_dict(),
                  dict(extra or {}, tokenizer=translator.tokenizer.to_dict()))


def load_translator(path, kernels: bool = False, integer_ffn: bool = False, rounding: str = "gemmlowp") -> Translator:
    """A Translator from a model file (``.npz``) or a compressed ``.tz`` (dequantized, or on the
    real kernels with ``kernels=True``). A weights+activations ``.tz`` brings its frozen activation
    quantizers: on the kernels those the kernels do not apply, dequantized all of them.
    ``integer_ffn`` (a weights+activations ``.tz``, implies ``kernels``) runs every FFN on integers
    from its input codes to its output (``compress.integer_only``: Jacob et al.'s fused layer), its
    requantization rounding as gemmlowp does or, with ``rounding="single"``, as TFLite's single rounding."""
    from tinyzip import container
    from tinyzip.compress.integer_only import integer_ffns
    from tinyzip.compressed import dequantize_all, kernel_matmuls, static_act_hooks
    path = str(path)
    if integer_ffn and not path.endswith(".tz"):
        raise ValueError(f"{path}: integer FFNs need a weights+activations .tz file")
    if rounding != "gemmlowp" and not integer_ffn:
        raise ValueError(f"rounding={rounding!r} applies to integer FFNs only (integer_ffn=True, --integer-ffn)")
    kernels = kernels or integer_ffn
    if path.endswith(".tz"):
        tz = container.load_tz(path)
        params, config, extra = dequantize_all(tz.packed), tz.config, tz.extra
        matmuls = kernel_matmuls(tz.packed) if kernels else {}
        if integer_ffn:
            matmuls.update(integer_ffns(tz.packed, rounding))
        act_hooks = static_act_hooks(tz.packed, matmul_inputs=not kernels)
    else:
        params, config, extra = io.load_model(path)
        matmuls, act_hooks = {}, {}
    try:
        model = Seq2Seq(Seq2SeqConfig.from_dict(config))
        tokenizer = Tokenizer.from_dict(extra["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise FileFormatError(f"{path}: not a translation model ({e})") from None
    # every tensor must have the shape its config gives it (head pruning changes them)
    io.check_shapes(path, params, {k: v.shape for k, v in model.init_params(np.random.default_rng(0)).items()})
    return Translator(model, params, tokenizer, matmuls, act_hooks)


def evaluate(translator: Translator, pairs, beam: int = 1, batch_size: int = 64) -> dict:
    """Corpus BLEU (sacreBLEU 13a, detokenized) on (src, ref) pairs, and decode speed.

    Returns ``{"bleu", "signature", "decode_tokens_per_s", "seconds", "hyps"}``; tokens/s counts
    generated target tokens (EOS included) per second of decoding.
    """
    src_ids = [translator.tokenizer.encode_src(s) for s, _ in pairs]
    start = time.perf_counter()
    out_ids = translator.decode_ids(src_ids, beam, batch_size)
    seconds = time.perf_counter() - start
    hyps = [translator.tokenizer.decode(y) for y in out_ids]
    bleu = corpus_bleu(hyps, [r for _, r in pairs])
    generated = sum(len(y) + 1 for y in out_ids)
    return {"bleu": bleu.score, "signature": bleu.signature, "seconds": seconds,
            "decode_tokens_per_s": generated / max(seconds, 1e-9), "hyps": hyps}


def with_params(translator: Translator, params: dict, matmuls: dict | None = None,
                act_hooks: dict | None = None) -> Translator:
    """The same model and tokenizer with other (e.g. compressed) params."""
    return replace(translator, params=params, matmuls=matmuls or {}, act_hooks=act_hooks or {})
