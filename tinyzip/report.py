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

The rows are an explicit list in ``plan(full)``; each is one small function of this file that
calls the method files in ``tinyzip/compress``, in pipeline order, and returns
``(name, bits, {param name: PackedTensor})``.
"""
import json
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from tinyzip import container, viz
from tinyzip.compress import binarization, chung, fqt, huffman, kmeans, magnitude_pruning, uniform
from tinyzip.compress.base import Chain, Method
from tinyzip.compressed import pack_float
from tinyzip.data import load_task, make_batches
from tinyzip.nn.optim import adam
from tinyzip.train import train
from tinyzip.translation import (PRESETS, SHIPPED_MODEL, encode_pairs, evaluate, load_translator, save_translator,
                                 train_translation)


@dataclass
class Context:
    """What every row needs: the baseline, data for fine-tuning and for evaluation."""

    translator: object              # the float32 baseline Translator
    train_ids: list                 # encoded training pairs, for short fine-tuning
    test_pairs: list                # (src, ref) texts the table is measured on
    out_dir: str
    preset: object
    seed: int
    float_bytes: int = 0
    baseline_bleu: float = 0.0
    log: object = None
    pruned: dict = field(default_factory=dict)   # (sparsity, steps) -> pruned params, shared by rows
    checkpoint_dir: str | None = None            # fine-tuning checkpoints (resumable runs)
    beam: int = 1                                # > 1: also measure BLEU with beam search


def finetune_peak_lr(preset) -> float:
    """Fine-tuning continues training: the preset's lr at its last step, at most half its peak."""
    return min(0.5 * preset.peak_lr, preset.schedule(preset.steps))


def finetune(ctx: Context, params: dict, method: Method, steps: int, tag: str) -> dict:
    """``steps`` of training through ``method`` (lr: :func:`finetune_peak_lr`, warmup steps/10).

    With ``ctx.checkpoint_dir`` the run checkpoints as ``<tag>.ckpt.npz`` every 50 steps and a
    rerun resumes there (a finished one returns its params at once). The method is rebuilt by
    the caller from the same inputs, so its state (masks, assignments) is the same on resume."""
    if steps <= 0:
        return params
    model, preset = ctx.translator.model, ctx.preset
    peak, warmup = finetune_peak_lr(preset), max(steps // 10, 1)

    def batches(epoch):
        return make_batches(ctx.train_ids, preset.max_tokens, np.random.default_rng([ctx.seed, 99, epoch]))

    ckpt = None if ctx.checkpoint_dir is None else os.path.join(ctx.checkpoint_dir, f"{tag}.ckpt.npz")
    if ctx.log is not None:
        print(f"fine-tuning {tag}: {steps} steps", file=ctx.log)
    result = train(model, params, batches, steps=steps, optimizer=adam(), rng=np.random.default_rng(ctx.seed),
                   schedule=lambda s: peak * min(1.0, s / warmup), method=method, log=ctx.log,
                   checkpoint_path=ckpt, checkpoint_every=50 if ckpt else 0,
                   resume=ckpt is not None and os.path.exists(ckpt))
    if result.interrupted:
        raise KeyboardInterrupt
    return result.params


def pack_model(params: dict, pack_matrix, names) -> dict:
    """``pack_matrix(name, W)`` for the named matrices, float32 for everything else (biases, LN)."""
    return {n: pack_matrix(n, W) if n in names else pack_float(W) for n, W in params.items()}


def matrices(params: dict) -> list:
    """Every 2-D parameter: the attention, FFN and (shared) embedding/output matrices."""
    return [n for n, W in params.items() if W.ndim == 2]


# ---- one function per row ---------------------------------------------------------------------

def pruned_model(ctx, params, sparsity, steps, rounds=4):
    """Zhu & Gupta gradual magnitude pruning to ``sparsity`` in ``rounds`` rounds, retrained in
    between. Memoized in ``ctx``, so the Deep Compression row builds on the pruning row's model."""
    key = (sparsity, steps, rounds)
    if key not in ctx.pruned:
        names, masks = magnitude_pruning.prunable_names(params), None
        for r, target in enumerate(magnitude_pruning.iterative_targets(sparsity, rounds)):
            params, masks = magnitude_pruning.prune_params(params, target, names=names, masks=masks)
            params = finetune(ctx, params, magnitude_pruning.pruning_method(masks), steps // rounds,
                              f"prune{int(sparsity * 100)}-{steps}x{rounds}-round{r}")
        ctx.pruned[key] = params
    return ctx.pruned[key]


def row_pruning(ctx, params, sparsity=0.8, steps=300, rounds=4):
    """Gradual magnitude pruning, exported in Deep Compression's sparse format (CSC kernel at run time)."""
    params = pruned_model(ctx, params, sparsity, steps, rounds)
    names = magnitude_pruning.prunable_names(params)
    packed = pack_model(params, lambda n, W: magnitude_pruning.pack_sparse(W), names)
    return f"magnitude_pruning-{int(sparsity * 100)}", None, packed


def row_kmeans(ctx, params, bits=4, steps=100):
    """Deep Compression weight sharing: k = 2^bits centroids per matrix, centroids fine-tuned (Eq. 3)."""
    names = matrices(params)
    params, method = kmeans.kmeans_method(params, names, 1 << bits)
    params = finetune(ctx, params, method, steps, f"kmeans{bits}-{steps}")
    packed = pack_model(params, lambda n, W: kmeans.pack_kmeans(W, 1 << bits), names)
    return f"kmeans-{bits}bit", bits, packed


def row_deep_compression(ctx, params, sparsity=0.8, bits=4, steps=300, share_steps=100, gap_bits=4, rounds=4):
    """Prune -> share (k = 2^bits - 1 plus the zero slot) -> Huffman: the full Deep Compression pipeline."""
    pruned = pruned_model(ctx, params, sparsity, steps, rounds)
    names = magnitude_pruning.prunable_names(pruned)
    k = (1 << bits) - 1
    shared, method = kmeans.kmeans_method(pruned, names, k)
    shared = finetune(ctx, shared, method, share_steps, f"dc{int(sparsity * 100)}-{steps}x{rounds}-{bits}-{share_steps}")

    def pack(name, W):
        return huffman.pack_kmeans_huffman(kmeans.pack_kmeans(W, k, gap_bits=gap_bits))

    packed = pack_model(shared, pack, names)
    others = [n for n in matrices(shared) if n not in names]      # e.g. the embedding: shared, not pruned
    packed.update({n: kmeans.pack_kmeans(shared[n], 1 << bits) for n in others})
    return f"magnitude_pruning-{int(sparsity * 100)}+kmeans+huffman", bits, packed


def row_binarization(ctx, params, steps=300):
    """BinaryNet signs with XNOR per-output scales, latent weights trained through the clipped STE."""
    names = [n for n in matrices(params) if n != "emb"]            # the lookup table stays float
    method = binarization.binarization_method(names)
    latent = binarization.clip_latent(params, names)
    latent = finetune(ctx, latent, method, steps, f"binarization-{steps}")
    packed = pack_model(latent, lambda n, W: binarization.pack_binary(W), names)
    return "binarization", 1, packed


def row_uniform(ctx, params, bits=8, steps=0, activations=False, calib_batches=8):
    """Per-channel symmetric uniform weights (Jacob 2018 / FQT); PTQ when steps = 0, else QAT.

    ``activations``: weights+activations (FQT placement, ``fqt.activation_points``: every matmul
    input, Q, K, V and softmax outputs included): PTQ calibrates the EMA of min/max of each point
    on ``calib_batches`` training batches; QAT fake-quantizes them with EMA ranges while it trains
    (a run resumed after its last step has no ranges: they are then re-estimated the same way on
    the calibration batches, weights frozen). The frozen (S, Z) go into the file
    (``fqt.attach_act_ranges``): the int8 kernel quantizes the Linear inputs with them, and
    Q, K, V, P are fake-quantized with theirs (``compressed.static_act_hooks``)."""
    names, model = matrices(params), ctx.translator.model
    tag = f"uniform{'-wa' if activations else ''}{bits}-{steps}"

    def calibrate(eff, hooks, mode):
        fqt.set_act_mode(hooks, mode)
        batches = make_batches(ctx.train_ids, ctx.preset.max_tokens, np.random.default_rng([ctx.seed, 98]))
        for _, (src, tgt_in, _) in zip(range(calib_batches), batches):
            model.forward(eff, src, tgt_in, act_hooks=hooks)

    hooks = {}
    if steps:
        method = fqt.qat_method(params, bits, weights_only=not activations)
        params = finetune(ctx, params, method, steps, tag)
        hooks = method.act_hooks
        if any(h[0].__self__.range is None for h in hooks.values()):
            calibrate(method.forward(params)[0], hooks, "ema")
        fqt.set_act_mode(hooks, "frozen")
    elif activations:
        _, hooks, _ = fqt.ptq(params, lambda eff, h: calibrate(eff, h, "calibrate"), bits, calibration="ema")
    packed = fqt.attach_act_ranges(pack_model(params, lambda n, W: uniform.pack_uniform(W, bits), names), hooks)
    return f"uniform-{'qat' if steps else 'ptq'}{'-w+a' if activations else ''}-{bits}bit", bits, packed


def row_binary_codes(ctx, params, q=2, steps=300, fit="alternating", emb_ratio=8.0, staged=False):
    """Chung et al. 2020: every matrix in ``q``-bit binary codes (``fit``: Guo et al. greedy or
    Xu et al. alternating), float16 alphas; the embedding with frequency-aware widths (Algorithm 1,
    b = 4, r = ``emb_ratio``; r = 8 averages 1.14 bits per row; r = 0: every row q bits, the
    uniform baseline); QAT through the STE, optionally in the paper's three stages (embedding,
    decoder, encoder), each ``steps / 3``. Runs on BiQGEMM."""
    bits = chung.ChungBits(emb_max_bits=q if emb_ratio == 0 else 4, emb_ratio=emb_ratio,
                           enc_attn=q, enc_ffn=q, dec_self_attn=q, cross_attn=q, dec_ffn=q, out=q)
    freqs = chung.token_frequencies(ctx.train_ids, ctx.translator.model.config.src_vocab)
    stages = chung.staged_blocks(params) if staged else [None]
    for s in range(len(stages)):
        names = None if not staged else {n for block in stages[:s + 1] for n in block}
        method = chung.chung_method(params, bits, freqs, names=names, method=fit, alpha_dtype=np.float16)
        params = finetune(ctx, params, method, steps // len(stages),
                          f"binary_codes{q}-{fit}-r{emb_ratio:g}-{steps}{'-staged' if staged else ''}-stage{s}")
    packed = chung.chung_pack(params, bits, freqs, method=fit, alpha_dtype=np.float16)
    packed.update({n: pack_float(W) for n, W in params.items() if n not in packed})
    return f"binary_codes-{q}bit-{fit}{'-staged' if staged else ''}", q, packed


def plan(task: str, full: bool):
    """The rows, in the order of the table (an explicit list: no registry). ``steps`` is each
    row's fine-tuning budget; 0 means post-training only.

    On the real model (bible-es) the quick plan is post-training or very short fine-tuning, to
    stay under 5 minutes; ``full`` runs post-training rows first (their results come in
    minutes), then the fine-tuned ones with the reference runs' budgets (hours)."""
    if task == "bible-es" and not full:
        return [
            (row_pruning, {"sparsity": 0.5, "steps": 60, "rounds": 1}),
            (row_kmeans, {"bits": 4, "steps": 0}),
            (row_deep_compression, {"sparsity": 0.5, "steps": 60, "rounds": 1, "share_steps": 0}),
            (row_binarization, {"steps": 40}),
            (row_uniform, {"bits": 8, "steps": 0}),
            (row_uniform, {"bits": 4, "steps": 0}),
            (row_binary_codes, {"q": 2, "steps": 60, "fit": "alternating"}),
        ]
    if task == "bible-es":
        return ([(row_kmeans, {"bits": b, "steps": 0}) for b in (8, 5, 4, 3, 2)]
                + [(row_uniform, {"bits": b, "steps": 0}) for b in (8, 6, 4)]
                + [(row_binary_codes, {"q": q, "steps": 0, "fit": fit}) for q in (2, 3, 4)
                   for fit in ("greedy", "alternating")]
                + [(row_uniform, {"bits": b, "steps": 400}) for b in (8, 6, 4)]
                + [(row_kmeans, {"bits": b, "steps": 400}) for b in (4, 3)]
                + [(row_binary_codes, {"q": q, "steps": 1000, "fit": "alternating"}) for q in (1, 2, 3)]
                + [(row_binary_codes, {"q": 2, "steps": 1000, "fit": "alternating", "emb_ratio": r}) for r in (0.0, 1.0)]
                + [(row_binary_codes, {"q": 2, "steps": 1000, "fit": "alternating", "staged": True})]
                + [(row_pruning, {"sparsity": 0.5, "steps": 1000, "rounds": 1}),
                   (row_pruning, {"sparsity": 0.8, "steps": 4000}),
                   (row_deep_compression, {"sparsity": 0.8, "steps": 4000, "share_steps": 400}),
                   (row_pruning, {"sparsity": 0.9, "steps": 4000}),
                   (row_binarization, {"steps": 2000})])
    if not full:
        return [
            (row_pruning, {"sparsity": 0.8, "steps": 100}),
            (row_kmeans, {"bits": 4, "steps": 30}),
            (row_deep_compression, {"sparsity": 0.9, "bits": 3, "steps": 100, "share_steps": 30}),
            (row_binarization, {"steps": 60}),
            (row_uniform, {"bits": 8, "steps": 0}),
            (row_uniform, {"bits": 4, "steps": 40}),
            (row_binary_codes, {"q": 2, "steps": 60, "fit": "greedy"}),
        ]
    return ([(row_pruning, {"sparsity": s, "steps": 600}) for s in (0.5, 0.8, 0.9)]
            + [(row_kmeans, {"bits": b, "steps": 200}) for b in (8, 5, 4, 3, 2)]
            + [(row_deep_compression, {"steps": 600}),
               (row_deep_compression, {"sparsity": 0.9, "bits": 3, "steps": 600, "share_steps": 200}),
               (row_binarization, {"steps": 600})]
            + [(row_uniform, {"bits": b, "steps": 0}) for b in (8, 6, 4)]
            + [(row_uniform, {"bits": b, "steps": 400}) for b in (8, 6, 4)]
            + [(row_uniform, {"bits": b, "steps": s, "activations": True}) for s in (0, 400) for b in (8, 6, 4)]
            + [(row_binary_codes, {"q": q, "steps": 300, "fit": "alternating", "emb_ratio": r})
               for r in (8.0, 0.0) for q in (1, 2, 3, 4)]             # frequency-aware vs uniform embedding
            + [(row_binary_codes, {"q": 2, "steps": 300, "fit": "alternating", "emb_ratio": 8.0, "staged": True}),
               (row_binary_codes, {"q": 2, "steps": 300, "fit": "alternating", "emb_ratio": 1.0}),
               (row_binary_codes, {"q": 2, "steps": 300, "fit": "greedy", "emb_ratio": 8.0})])


def row_name(fn, kwargs) -> str:
    """A row's key in the JSON (resumed runs skip rows already measured)."""
    return fn.__name__[4:] + "(" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")"


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


def attention_entropy(translator, pairs, n=64) -> float:
    """Mean entropy (nats) of the decoder's cross-attention rows, teacher forced on ``n`` pairs, on
    the model as loaded (its kernel matmuls and, for weights+activations files, its quantizers)."""
    src, tgt_in = pair_arrays(translator, pairs[:n])
    _, cache = translator.model.forward(translator.params, src, tgt_in, return_states=True,
                                        matmuls=translator.matmuls or None, act_hooks=translator.act_hooks or None)
    ent = viz.attention_entropy(cache.states["dec.cross_probs"], mask=src != 0, query_mask=tgt_in != 0)
    return float(np.mean(ent))


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
                     f"{r['attention_entropy']:>7.3f}")
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
            name, bits, packed = fn(ctx, dict(translator.params), **kwargs)
            path = os.path.join(out_dir, key_to_filename(key))
            container.save_tz(path, packed, translator.model.config.to_dict(),
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
