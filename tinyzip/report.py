"""The main job: compress a baseline once per method and measure every row of the table.

The baseline is the model shipped in the package (Bible En->Es, ``translation.SHIPPED_MODEL``) for
``task="bible-es"``, the default; the quick tasks (numbers-de, copy) train their own in minutes.

Every row is measured, never computed from a formula: the method's tensors are packed, written
to a real ``.tz`` file (``container.save_tz``), read back, and the model read back from the file
translates the test sentences on the real kernels (int8 GEMM, BiQGEMM LUT, codebook, CSC sparse).

* ``file_bytes`` and ``ratio``: bytes of the ``.tz`` file; ratio = float32 model file bytes / that.
* ``bits``: the method's nominal bits per compressed weight (None for pruning alone).
* ``bleu``: corpus BLEU (sacreBLEU 13a) of greedy decoding; ``bleu_pct`` = 100 * bleu / baseline.
* ``decode_tokens_per_s``: generated tokens per second of batched greedy decoding on the kernels.
* ``attention_entropy``: mean entropy (nats) of the decoder's cross-attention rows on test
  sentences (teacher forced), to test transformers.zip's "compressed models attend more sharply".

The rows themselves (one small function per method setting) are in ``tinyzip/rows.py`` and the
plans that list them in ``tinyzip/plans.py``; this file runs them, writes each row's ``.tz`` and
measures it.
"""
import json
import os
import time
from dataclasses import replace

import numpy as np

from tinyzip import container, viz
from tinyzip.data import load_task, make_batches
from tinyzip.plans import plan, row_name
from tinyzip.rows import Context
from tinyzip.translation import (PRESETS, SHIPPED_MODEL, encode_pairs, evaluate, load_translator, save_translator,
                                 train_translation)


def evenly_spaced(pairs, n):
    """``n`` pairs spread evenly over ``pairs`` (every book of the test split), order kept; all if n is None."""
    if n is None or n >= len(pairs):
        return list(pairs)
    if n < 1:
        raise ValueError(f"n_test must be >= 1, got {n}")
    return [pairs[i] for i in np.unique(np.linspace(0, len(pairs) - 1, n).round().astype(int))]


# ---- measuring ------------------------------------------------------------------------------

def pair_arrays(translator, pairs):
    """(src (B, S), tgt_in (B, T)) id arrays of (source, target) text pairs, for teacher forcing."""
    ids = encode_pairs(translator.tokenizer, pairs, translator.model.config.max_len - 2)
    if not ids:
        raise ValueError("the sentence pairs are empty or too long for this model")
    src, tgt_in, _ = next(iter(make_batches(ids, 10 ** 9, shuffle=False)))
    return src, tgt_in


def attention_entropy(translator, pairs, n=64) -> float | None:
    """Mean entropy (nats) of the decoder's cross-attention rows, teacher forced on ``n`` pairs, on
    the model as loaded (its kernel matmuls and, for weights+activations files, its quantizers);
    None when head pruning removed every cross-attention head."""
    src, tgt_in = pair_arrays(translator, pairs[:n])
    _, cache = translator.model.forward(translator.params, src, tgt_in, return_states=True,
                                        matmuls=translator.matmuls or None, act_hooks=translator.act_hooks or None)
    ent = viz.attention_entropy(cache.states["dec.cross_probs"], mask=src != 0, query_mask=tgt_in != 0)
    return None if np.isnan(ent).all() else float(np.nanmean(ent))  # NaN: heads a pruned layer lacks


def measure(ctx: Context, method: str, bits, path: str, seconds: float) -> dict:
    """Reload ``path`` (a .tz or the float model file) and measure one row on the real kernels."""
    translator = load_translator(path, kernels=path.endswith(".tz"))
    # Warm-up: one full decode batch (64 sentences), so Numba compiles every kernel variant the
    # timed run will meet (the LUT kernels have one per tile of rows) before the timing starts.
    evaluate(translator, ctx.test_pairs[:64])
    result = evaluate(translator, ctx.test_pairs)
    file_bytes = os.path.getsize(path)
    row = {"method": method, "bits": bits, "file_bytes": file_bytes,
           "ratio": ctx.float_bytes / file_bytes if ctx.float_bytes else 1.0,
           "bleu": result["bleu"], "bleu_pct": 100.0 * result["bleu"] / ctx.baseline_bleu if ctx.baseline_bleu else 100.0,
           "decode_tokens_per_s": result["decode_tokens_per_s"],
           "bleu_beam": evaluate(translator, ctx.test_pairs, beam=ctx.beam)["bleu"] if ctx.beam > 1 else None,
           "attention_entropy": attention_entropy(translator, ctx.test_pairs),
           "compress_seconds": seconds, "path": path}
    return row


def finetune_steps_of(row) -> int:
    """Total fine-tuning steps of a row (its settings' ``*steps`` values)."""
    return sum(v for k, v in row.get("settings", {}).items() if k.endswith("steps"))


def entropy_cell(entropy) -> str:
    return "-" if entropy is None else f"{entropy:.3f}"


def format_table(rows: list) -> str:
    beam = any(r.get("bleu_beam") is not None for r in rows)
    header = (f"{'method':<40} {'bits':>4} {'tune':>5} {'file bytes':>11} {'ratio':>6} {'BLEU':>6}"
              + (f" {'beam4':>6}" if beam else "") + f" {'% base':>7} {'tok/s':>7} {'H(attn)':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        bits = "-" if r["bits"] is None else f"{r['bits']:g}"
        beam_cell = f" {r['bleu_beam']:>6.2f}" if beam and r.get("bleu_beam") is not None else (" " * 7 if beam else "")
        lines.append(f"{r['method']:<40} {bits:>4} {finetune_steps_of(r):>5} {r['file_bytes']:>11,} {r['ratio']:>5.2f}x "
                     f"{r['bleu']:>6.2f}{beam_cell} {r['bleu_pct']:>6.1f}% {r['decode_tokens_per_s']:>7.0f} "
                     f"{entropy_cell(r['attention_entropy']):>7}")
    return "\n".join(lines)


def baseline(data, out_dir, preset, steps, seed, log, resume=False):
    """The float32 baseline and the path of its float32 model file: the shipped model for
    bible-es (nothing is trained), a freshly trained one for the quick tasks (on ``resume``,
    the one the interrupted run trained)."""
    float_path = os.path.join(out_dir, "float32.npz")
    if resume and os.path.exists(float_path):
        print(f"baseline: {float_path} (resumed run)", file=log)
        return load_translator(float_path), float_path
    if data.name == "bible-es" and steps is None:
        print(f"baseline: the shipped model {SHIPPED_MODEL}", file=log)
        translator = load_translator(SHIPPED_MODEL)
        save_translator(float_path, translator, {"task": data.name})
        return translator, float_path
    print(f"training the float32 baseline on {data.name} ({preset.steps} steps) ...", file=log)
    translator, _ = train_translation(data, preset=preset, out=float_path, seed=seed, log=log)
    return translator, float_path


def run_demo(*, task="bible-es", out_dir="runs/demo", full=False, steps=None, finetune_steps=None, seed=0,
             n_test=None, json_path=None, resume=False, log="stderr") -> dict:
    """Compress the baseline with every row of ``plan(task, full)``; print and return the table.

    ``steps`` trains a new baseline of that many steps instead of using the shipped model;
    ``finetune_steps`` caps every row's fine-tuning (0: post-training only); ``n_test`` evenly
    spaced test sentences (None: all). ``resume`` keeps the rows already in ``json_path`` and
    resumes fine-tuning from the checkpoints in ``out_dir/checkpoints``."""
    import sys
    log = sys.stderr if log == "stderr" else log
    os.makedirs(out_dir, exist_ok=True)
    preset = PRESETS[task] if steps is None else replace(PRESETS[task], steps=steps)
    data = load_task(task, seed=seed)
    test_pairs = evenly_spaced(data.test, n_test)
    earlier = {"rows": [], "segments": []}
    if resume and json_path and os.path.exists(json_path):
        with open(json_path) as f:
            earlier = json.load(f)
    done = {r["key"]: r for r in earlier["rows"] if "key" in r}
    # Wall time: one segment per invocation (a resumed run adds one); each is updated after every
    # row and when the run stops, so the JSON's wall_seconds is the run's total however often resumed.
    segment = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": 0.0, "rows_measured": 0}
    segments, started = earlier.get("segments", []) + [segment], time.perf_counter()
    translator, float_path = baseline(data, out_dir, preset, steps, seed, log, resume)
    ctx = Context(translator, encode_pairs(translator.tokenizer, data.train, preset.max_len), test_pairs,
                  out_dir, preset, seed, log=log, checkpoint_dir=os.path.join(out_dir, "checkpoints"),
                  beam=4 if full else 1)
    os.makedirs(ctx.checkpoint_dir, exist_ok=True)
    if not resume:                                    # a fresh run never continues an old one
        for name in os.listdir(ctx.checkpoint_dir):
            if name.endswith(".ckpt.npz"):
                os.remove(os.path.join(ctx.checkpoint_dir, name))
    report = {"task": task, "n_test": len(test_pairs), "full": full, "rows": [], "segments": segments}

    def save():
        segment["seconds"] = time.perf_counter() - started
        report["wall_seconds"] = sum(s["seconds"] for s in segments)
        if json_path:
            _write_json(json_path, report)             # an interrupted run keeps what it measured

    def emit(row, measured=True):
        report["rows"].append(row)
        segment["rows_measured"] += measured
        print(format_table(report["rows"]).splitlines()[-1], file=log)
        save()

    try:
        base = done.get("baseline") or dict(measure(ctx, "float32", 32, float_path, 0.0), key="baseline")
        ctx.float_bytes, ctx.baseline_bleu = base["file_bytes"], base["bleu"]
        emit(dict(base, ratio=1.0, bleu_pct=100.0), measured="baseline" not in done)
        write_attention(translator, test_pairs[0], out_dir)
        for fn, kwargs in plan(task, full):
            if finetune_steps is not None:
                kwargs = {k: min(v, finetune_steps) if k.endswith("steps") else v for k, v in kwargs.items()}
            key = row_name(fn, kwargs)
            if key in done:
                emit(done[key], measured=False)
                continue
            start = time.perf_counter()
            name, bits, packed, *new_config = fn(ctx, dict(translator.params), **kwargs)
            config = new_config[0] if new_config else translator.model.config  # head pruning: smaller
            path = os.path.join(out_dir, key_to_filename(key))
            container.save_tz(path, packed, config.to_dict(),
                              {"tokenizer": translator.tokenizer.to_dict(), "method": name, "settings": kwargs})
            emit(dict(measure(ctx, name, bits, path, time.perf_counter() - start), key=key, settings=kwargs))
    finally:
        save()                                         # also on Ctrl-C: the segment's time is kept
    return report


def key_to_filename(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in key).strip("_") + ".tz"


def write_attention(translator, pair, out_dir, filename="attention.png") -> str:
    """Cross-attention maps of one (source, target) pair, every layer and head (PNG, or text
    without matplotlib); returns the path written."""
    tok = translator.tokenizer
    src, tgt_in = pair_arrays(translator, [pair])
    _, cache = translator.model.forward(translator.params, src, tgt_in, return_states=True)
    src_tokens = [tok.src_vocab.symbol(int(i)) for i in src[0]]
    tgt_tokens = ["<s>"] + [tok.tgt_vocab.symbol(int(i)) for i in tgt_in[0, 1:]]
    return viz.write_attention_maps(cache.states["dec.cross_probs"], src_tokens, tgt_tokens,
                                    os.path.join(out_dir, filename))


def _write_json(path, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
