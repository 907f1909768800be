"""Benchmarks that print what they measure in one run: training throughput of the NumPy Transformer.

``bench_train`` times one forward+backward pass (``Seq2Seq.loss_and_grads`` with dropout on, as in
training) and, separately, one Adam update, for each model preset on random token batches of
``batch x length`` target tokens (no padding, so every token counts). It validates before timing
(finite loss, a gradient for every parameter; llm.c's "validate, then benchmark") and reports the
median (and minimum) over ``repeats`` timed runs after one warm-up run.

Timings on a shared 2-vCPU machine drift by 1.5-3x (see perf-notes): compare numbers taken in the
same run, and read ``machine.loadavg``. With other processes busy, OpenBLAS's 2 threads can make
small matmuls many times slower; ``OPENBLAS_NUM_THREADS=1`` is then faster (the value in effect is
reported as ``machine.openblas_num_threads``).
"""
import os
import platform
import time

import numpy as np

from tinyzip.nn.optim import adam
from tinyzip.train import PRESETS


def _seconds(fn, repeats: int) -> tuple[float, float]:
    """(median, min) wall-clock seconds of ``fn()`` over ``repeats`` runs after one warm-up run."""
    fn()  # warm-up: first-touch allocations, BLAS thread start
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def machine_info() -> dict:
    """What the numbers depend on: CPU count, NumPy version, BLAS threads setting, load."""
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def bench_train(presets=("tiny", "small", "default"), *, batch: int = 32, length: int = 32,
                vocab: int = 1000, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Forward+backward seconds and tokens/s per preset; rows follow design.md's ``bench train`` JSON.

    ``layers`` is encoder + decoder layers (the default preset has 3 + 3 = 6).
    """
    from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

    if batch < 1 or length < 1 or repeats < 1 or vocab < 5:
        raise ValueError(f"need batch, length, repeats >= 1 and vocab >= 5, got {batch}, {length}, "
                         f"{repeats}, {vocab}")
    rows = []
    for name in presets:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        config = Seq2SeqConfig(src_vocab=vocab, tgt_vocab=vocab, max_len=length, **PRESETS[name])
        model = Seq2Seq(config)
        rng = np.random.default_rng(seed)
        params = model.init_params(rng)
        src, tgt_in, tgt_out = (rng.integers(4, vocab, size=(batch, length)) for _ in range(3))  # (B, T)
        loss, grads, stats = model.loss_and_grads(params, src, tgt_in, tgt_out, rng=rng)
        if not np.isfinite(loss) or set(grads) < set(params):
            raise RuntimeError(f"preset {name}: loss {loss}, or gradients missing; not timing a broken step")
        step_seconds, step_min = _seconds(
            lambda: model.loss_and_grads(params, src, tgt_in, tgt_out, rng=rng), repeats)
        opt = adam()
        state = opt.init(params)
        adam_seconds, _ = _seconds(lambda: opt.step(params, grads, state, 1e-4), repeats)
        tokens = int(stats["tokens"])
        rows.append({"preset": name, "D": config.D, "H": config.H, "F": config.F,
                     "layers": config.enc_layers + config.dec_layers, "batch": batch, "length": length,
                     "vocab": vocab, "params": int(sum(v.size for v in params.values())),
                     "tokens": tokens, "step_seconds": step_seconds, "tokens_per_s": tokens / step_seconds,
                     "step_seconds_min": step_min, "adam_seconds": adam_seconds})
    return rows


def format_train_table(rows: list[dict]) -> str:
    """The rows of :func:`bench_train` as an aligned text table."""
    lines = [f"{'preset':<8} {'D':>4} {'H':>2} {'F':>5} {'layers':>6} {'params':>9} {'batch':>9} "
             f"{'fwd+bwd s':>9} {'tokens/s':>9} {'adam s':>7}"]
    for r in rows:
        lines.append(f"{r['preset']:<8} {r['D']:>4} {r['H']:>2} {r['F']:>5} {r['layers']:>6} "
                     f"{r['params']:>9,} {str(r['batch']) + 'x' + str(r['length']):>9} "
                     f"{r['step_seconds']:>9.4f} {r['tokens_per_s']:>9,.0f} {r['adam_seconds']:>7.4f}")
    return "\n".join(lines)
