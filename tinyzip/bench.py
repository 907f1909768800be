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
import glob
import os
import platform
import time

import numpy as np
from numba import njit, prange

from tinyzip.kernels import aligned_copy
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
    """What the numbers depend on: CPU count and model (LLVM's name for it: the project's machines
    changed from Zen 3 to Zen 4 between two sessions unannounced), the int8 and one-row LUT kernels
    that model gets, NumPy version, BLAS threads setting, load."""
    import llvmlite.binding as llvm_binding

    from tinyzip.kernels.int8 import HAS_AVX2, HAS_VNNI
    from tinyzip.kernels.lut_gemv_avx512 import HAS_AVX512
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "cpu": llvm_binding.get_host_cpu_name(),
            "int8_kernel": "avx512-vnni" if HAS_VNNI else "avx2" if HAS_AVX2 else "portable",
            "lut_gemv_kernel": "avx512-vpermps" if HAS_AVX512 else "scalar",
            "python": platform.python_version(),
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


# ---- kernels: every compressed matmul against NumPy float32 x @ W, measured in the same run ----

KERNEL_SHAPES = ((1024, 1024), (4096, 4096), (4096, 1024))     # W as (K, N) for y = x @ W
KERNEL_BATCHES = (1, 8, 32, 128)
KERNELS = ("int8", "lut-q1", "lut-q2", "lut-q3", "codebook-4bit", "sparse-90", "numpy-copy")
EVICT_BYTES_FALLBACK = 32 << 20                                  # L3 size when the OS does not say


def _last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs), or ``EVICT_BYTES_FALLBACK`` where unknown."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        with open(path) as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        if text.rstrip("KM").isdigit():
            sizes.append(int(text.rstrip("KM")) * scale)
    return max(sizes, default=EVICT_BYTES_FALLBACK)


@njit(parallel=True, cache=True)
def _read_every_line(buffer):
    """One int64 of every 64-byte line of ``buffer``, read on every thread: evicts both cores' caches."""
    total = 0
    for i in prange(buffer.shape[0] // 8):
        total += buffer[8 * i]
    return total


def cache_evictor():
    """A function that, called before a timed call, leaves no weight of the last calls in any cache:
    it reads a buffer of twice the last-level cache (clean lines, so nothing is written back inside
    the timed call). This is what a layer of a model whose weights exceed the L3 sees."""
    buffer = np.ones(2 * _last_level_cache_bytes() // 8, np.int64)
    _read_every_line(buffer)                                     # compile once, outside any timing
    return lambda: _read_every_line(buffer)


def _kernel_case(kind: str, W: np.ndarray, rng):
    """(bits, fn(x) -> y, W_hat, dequant_fn, auto_fn) for one kernel family on weight W (K, N):
    LUT rows also time dequantize-then-matmul and the layer's dispatching path (``path="auto"``)."""
    from tinyzip.compress import binary_codes, kmeans, uniform
    from tinyzip.compressed import KERNELS as BRIDGE
    from tinyzip.kernels.lut_gemm import lut_linear, prepare_lut_weights

    if kind == "int8":
        packed = uniform.pack_uniform(W, 8)
        return 8, BRIDGE["uniform"](packed), uniform.unpack_uniform(packed), None, None
    if kind.startswith("lut-q"):
        q = int(kind[5:])
        B, alpha = binary_codes.greedy_codes(W, q)
        prepared = prepare_lut_weights(codes=B, alphas=alpha)
        W_deq = binary_codes.dequantize(B, alpha)

        def dequantize_then_matmul(x):
            return x @ binary_codes.dequantize(B, alpha)

        return (q, lambda x: lut_linear(x, prepared, path="lut"), W_deq, dequantize_then_matmul,
                lambda x: lut_linear(x, prepared))
    if kind == "codebook-4bit":
        packed = kmeans.pack_kmeans(W, 16, max_iter=10)
        return 4, BRIDGE["kmeans"](packed), kmeans.unpack_kmeans(packed), None, None
    if kind == "numpy-copy":               # the null candidate: NumPy itself, on a copy of W
        W_copy = aligned_copy(W)           # on a cache line, like W: the two products are alike
        return 32, lambda x: x @ W_copy, W, None, None
    if kind == "sparse-90":
        from tinyzip.compress import magnitude_pruning
        pruned = W * magnitude_pruning.topk_mask(W, 0.9)
        return None, BRIDGE["sparse"](magnitude_pruning.pack_sparse(pruned)), pruned, None, None
    raise ValueError(f"unknown kernel {kind!r}; choose from {', '.join(KERNELS)}")


def _paired_seconds(fns, repeats: int, evict=None) -> list[float]:
    """Median seconds of each fn, timed in alternation (a b a b ...) so drift hits them alike;
    ``evict()``, if given, runs (untimed) before every call."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    budget = time.perf_counter() + 2.0                            # at most ~2 s per configuration
    for r in range(repeats):
        for i, fn in enumerate(fns):
            if evict is not None:
                evict()
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() > budget:
            break
    return [float(np.median(t)) for t in times]


def _case_seconds(fns, repeats: int, evict=None) -> list[float]:
    """[NumPy, candidate] seconds for every candidate fns[1:], each in an alternation of its own with
    NumPy (fns[0]). A shared alternation let one candidate's memory traffic slow the next:
    dequantize-then-matmul writes a fresh W on every call, which slowed the layer after it (1024^2,
    batch 1: 214 us against 76 us alone with NumPy) and evicted NumPy's W from L3, flattering the
    LUT path where a float32 W fits in L3 (3-bit, 4096x1024, batch 1: 1.03x there, 0.83-0.89x alone)."""
    return [t for fn in fns[1:] for t in _paired_seconds([fns[0], fn], repeats, evict)]


def bench_kernels(kernels=KERNELS, shapes=KERNEL_SHAPES, batches=KERNEL_BATCHES, *, repeats: int = 15,
                  passes: int = 1, cold: bool = False, seed: int = 0) -> list[dict]:
    """Each kernel against NumPy float32 ``x @ W`` (and, for LUT, against dequantize-then-matmul),
    validated first: the kernel must equal ``x @ W_hat`` (W_hat its dequantized weight) within 1e-3
    relative (int8 quantizes x too: 2e-2). ``ratio_vs_numpy`` > 1 means faster than NumPy float32.

    ``passes`` > 1 times every configuration that many times, the passes one after the other over the
    whole grid (so each pass catches the machine at another moment): seconds are the median over the
    passes of each pass's median, and ``ratio_vs_numpy_passes`` lists the ratio of every pass. On a
    shared machine a ratio drifts by 10-30% from minute to minute; one pass is one sample.

    Two readings help judge a cell. ``numpy-copy`` times NumPy's own ``x @ W`` on a copy of W against
    the original: its ratio is what the method reads for two equal computations (cache sharing and
    drift), the margin any other ratio of that cell needs to mean something. ``cold=True`` evicts
    every cache before every timed call (``cache_evictor``), both sides alike, so every weight comes
    from DRAM, as in a model whose weights exceed the L3 (x and the buffers come from DRAM too). With
    warm caches a float32 W that fits in the L3 (4096x1024 is 16 MB) is read from there, where
    bandwidth is cheap and a smaller weight saves little.

    W, its copy and x start on a 64-byte cache line (``aligned_copy``), NumPy's best case: at the
    16-byte alignment NumPy's allocator promises, OpenBLAS ran 1024 x 1024 at batch 8 up to 1.5x
    slower, and two equal products on two copies of W read 0.72-1.21x of each other."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    rng = np.random.default_rng(seed)
    cases = []                                               # (row, timed callables), validated
    for K, N in shapes:
        W = aligned_copy((rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32))  # (K, N), NumPy's best
        for kind in kernels:
            bits, fn, W_hat, dequant_fn, auto_fn = _kernel_case(kind, W, rng)
            for M in batches:
                x = aligned_copy(rng.standard_normal((M, K)).astype(np.float32))  # (M, K)
                y, y_ref = fn(x), x @ W_hat
                err = float(np.abs(y - y_ref).max() / max(np.abs(y_ref).max(), 1e-30))
                if err > (2e-2 if kind == "int8" else 1e-3):
                    raise RuntimeError(f"{kind} {K}x{N} batch {M}: relative error {err:.2e}; not timing it")
                fns = [lambda x=x, W=W: x @ W, lambda x=x, fn=fn: fn(x)]
                if dequant_fn:
                    fns += [lambda x=x, f=dequant_fn: f(x), lambda x=x, f=auto_fn: f(x)]
                cases.append(({"kernel": kind, "bits": bits, "K": K, "N": N, "batch": M, "max_rel_error": err}, fns))
    evict = cache_evictor() if cold else None
    per_pass = [[_case_seconds(fns, repeats, evict) for _, fns in cases] for _ in range(passes)]
    rows = []
    for c, (row, fns) in enumerate(cases):
        secs = np.median([per_pass[p][c] for p in range(passes)], axis=0)   # [numpy, candidate] per candidate
        ratios = secs[0::2] / secs[1::2]                                     # each against its own NumPy timing
        row = dict(row, caches="cold" if cold else "warm", seconds=float(secs[1]), numpy_fp32_seconds=float(secs[0]),
                   ratio_vs_numpy=float(ratios[0]))
        if passes > 1:
            row["ratio_vs_numpy_passes"] = [per_pass[p][c][0] / per_pass[p][c][1] for p in range(passes)]
        if len(fns) > 2:
            row["dequant_matmul_seconds"] = float(secs[3])
            row["ratio_vs_dequant_matmul"] = float(ratios[0] / ratios[1])  # both against NumPy: drift cancels
            row["auto_seconds"] = float(secs[5])                           # what a model layer runs
            row["auto_ratio_vs_numpy"] = float(ratios[2])
        rows.append(row)
    return rows


def format_kernel_table(rows: list[dict]) -> str:
    lines = [f"{'kernel':<14} {'W (K x N)':>11} {'batch':>5} {'kernel s':>10} {'numpy fp32 s':>12} "
             f"{'x numpy':>8} {'x dequant+mm':>12} {'layer (auto) x numpy':>20}"]
    for r in rows:
        deq = f"{r['ratio_vs_dequant_matmul']:.2f}x" if "ratio_vs_dequant_matmul" in r else "-"
        auto = f"{r['auto_ratio_vs_numpy']:.2f}x" if "auto_ratio_vs_numpy" in r else "-"
        spread = r.get("ratio_vs_numpy_passes")
        spread = f"  (passes {min(spread):.2f}-{max(spread):.2f}x)" if spread else ""
        lines.append(f"{r['kernel']:<14} {str(r['K']) + 'x' + str(r['N']):>11} {r['batch']:>5} "
                     f"{r['seconds']:>10.6f} {r['numpy_fp32_seconds']:>12.6f} {r['ratio_vs_numpy']:>7.2f}x "
                     f"{deq:>12} {auto:>20}{spread}")
    return "\n".join(lines)
