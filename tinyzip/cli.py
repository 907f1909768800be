"""The ``tinyzip`` command. Thin on purpose: parse arguments, call library functions, print.

Adding a subcommand (e.g. ``eval``) takes three steps:

1. write ``_add_eval(sub)`` that calls ``sub.add_parser("eval", help=..., description=...)``, adds
   its arguments and ends with ``parser.set_defaults(func=_cmd_eval)``;
2. write ``_cmd_eval(args) -> int`` that calls the library and prints (exit status 0 on success);
3. append ``_add_eval`` to ``COMMANDS`` (top-level) or ``BENCH_COMMANDS`` (``tinyzip bench ...``).

Errors are one line on stderr and exit status 2, never a traceback: argparse mistakes (via
``_Parser.error``) and, from any command, ``TinyzipError``, ``ValueError``, ``TypeError``,
``OSError`` and Ctrl-C (``KeyboardInterrupt``).
"""
import argparse
import json
import os
import signal
import sys
import threading

from tinyzip import __version__
from tinyzip.errors import TinyzipError


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line (argparse prints usage + message otherwise)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _write_json(path, obj) -> None:
    """Write ``obj`` as JSON atomically (temp file in the same directory, then rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


TRANSLATION_TASKS = ["numbers-de", "bible-es", "files"]


def _add_train(sub):
    p = sub.add_parser("train", help="train a model",
                       description="Train a Seq2Seq Transformer; checkpoints go beside --out "
                                   "(NAME.ckpt.npz) and --resume continues from there exactly. "
                                   "Translation tasks use their preset (tinyzip.translation.PRESETS).")
    p.add_argument("--task", choices=TRANSLATION_TASKS + ["copy", "reverse"], default="numbers-de",
                   help="built-in task, or 'files' with --src/--tgt (default: numbers-de)")
    p.add_argument("--src", help="with --task files: source sentences, one per line")
    p.add_argument("--tgt", help="with --task files: target sentences, line i translating --src line i")
    p.add_argument("--langs", default="en,de", help="with --task files: source,target language codes")
    p.add_argument("--preset", default=None,
                   help="copy/reverse: tiny|small|default (default: small); translation: a preset name "
                        "(default: the task's own; 'numbers-de' for --task files)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=32, help="copy/reverse: sequences per batch (default: 32)")
    p.add_argument("--warmup", type=int, default=100, help="copy/reverse: warmup steps (default: 100)")
    p.add_argument("--lr-scale", type=float, default=1.0, help="copy/reverse: multiplies Vaswani's schedule")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default: 200)")
    p.add_argument("--out", default=None, help="model file to write (default: runs/TASK.npz)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, dropout and data (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    if (args.steps is not None and args.steps < 1) or args.checkpoint_every < 0:
        raise ValueError("--steps must be >= 1 and --checkpoint-every >= 0")
    out = args.out or os.path.join("runs", f"{args.task}.npz")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if args.task in ("copy", "reverse"):
        return _train_copy(args, out)
    from dataclasses import replace

    from tinyzip.data import Task, load_parallel_files, load_task
    from tinyzip.translation import PRESETS, evaluate, train_translation

    if args.task == "files":
        if not (args.src and args.tgt):
            raise ValueError("--task files needs --src and --tgt")
        langs = args.langs.split(",")
        if len(langs) != 2:
            raise ValueError(f"--langs must be two codes like en,de, got {args.langs!r}")
        pairs = load_parallel_files(args.src, args.tgt)
        n_dev = max(1, min(500, len(pairs) // 20))
        task = Task("files", pairs[2 * n_dev:], pairs[:n_dev], pairs[n_dev:2 * n_dev], *langs)
        if not task.train:
            raise ValueError(f"{args.src}: {len(pairs)} pairs are too few to hold out dev and test sets")
    else:
        task = load_task(args.task, seed=args.seed)
    name = args.preset or ("numbers-de" if args.task == "files" else args.task)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    preset = PRESETS[name] if args.steps is None else replace(PRESETS[name], steps=args.steps)
    translator, result = train_translation(task, preset=preset, out=out, seed=args.seed, resume=args.resume,
                                           checkpoint_every=args.checkpoint_every)
    if result.interrupted:
        print(f"tinyzip: interrupted after step {result.step}; continue with the same command plus --resume",
              file=sys.stderr)
        return 2
    bleu = evaluate(translator, task.dev)["bleu"]
    print(f"wrote {out} ({os.path.getsize(out):,} bytes) after {result.step} steps; dev BLEU {bleu:.2f}")
    return 0


def _train_copy(args, out) -> int:
    from tinyzip.train import train_copy_task

    preset = args.preset or "small"
    if preset not in ("tiny", "small", "default"):
        raise ValueError(f"copy/reverse presets are tiny, small, default; got {preset!r}")
    if args.batch_size < 1 or args.warmup < 1:
        raise ValueError("--batch-size and --warmup must be >= 1")
    result = train_copy_task(out=out, steps=args.steps or 300, preset=preset, reverse=args.task == "reverse",
                             batch_size=args.batch_size, seed=args.seed, resume=args.resume,
                             warmup=args.warmup, lr_scale=args.lr_scale,
                             checkpoint_every=args.checkpoint_every)
    if result["interrupted"]:
        print(f"tinyzip: interrupted after step {result['step']}; continue with the same command "
              f"plus --resume (checkpoint {result['checkpoint']})", file=sys.stderr)
        return 2
    dev = ", ".join(f"{k} {v:.4f}" for k, v in result["dev"].items())
    print(f"wrote {out} ({os.path.getsize(out):,} bytes) after {result['step']} steps; dev {dev}")
    return 0


def _add_demo(sub):
    p = sub.add_parser("demo", help="the main job: compress the shipped model with every method, print the table",
                       description="Compress the shipped Bible En->Es model with one representative setting "
                                   "of every method (post-training or a short fine-tuning), reload each .tz and "
                                   "measure file bytes, BLEU and decode speed on the real kernels, on 300 "
                                   "evenly spaced test sentences. --task numbers-de trains the quick task's "
                                   "model first instead.")
    p.add_argument("--full", action="store_true",
                   help="every bit width and variant with full fine-tuning, whole test set, beam 4 too (hours)")
    p.add_argument("--task", choices=["bible-es", "numbers-de", "copy"], default="bible-es",
                   help="bible-es (default: the shipped model), numbers-de (the quick task: trains its own model first, ~5 min in all), "
                        "copy (a seconds-long smoke run)")
    p.add_argument("--steps", type=int, default=None,
                   help="train a new baseline of this many steps (default: the shipped model for bible-es, "
                        "the preset's steps otherwise)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="cap on every method's fine-tuning steps (0: post-training only)")
    p.add_argument("--n-test", type=int, default=None,
                   help="evenly spaced test sentences measured (default: 300; --full: all)")
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="directory for models and maps")
    p.add_argument("--json", metavar="PATH", help="also write the table as JSON (rewritten after every row)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep the rows in --json, resume fine-tuning from --out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from tinyzip.report import format_table, run_demo
    from tinyzip.train import format_seconds

    if args.resume and not args.json:
        raise ValueError("--resume needs --json PATH (the rows measured so far)")
    n_test = args.n_test if args.n_test is not None else (None if args.full else 300)
    report = run_demo(task=args.task, out_dir=args.out, full=args.full, steps=args.steps,
                      finetune_steps=args.finetune_steps, seed=args.seed, n_test=n_test,
                      json_path=args.json, resume=args.resume)
    print(f"\n{report['task']}: {report['n_test']} test sentences, greedy decoding, sacreBLEU 13a; "
          f"'tune' = fine-tuning steps; files in {args.out}; wall time {format_seconds(report['wall_seconds'])}"
          + (f" over {len(report['segments'])} resumed runs" if len(report["segments"]) > 1 else ""))
    print(format_table(report["rows"]))
    return 0


def _add_translate(sub):
    p = sub.add_parser("translate", help="translate English to Spanish with the shipped model (or any model file)",
                       description="Translate TEXT, or each line of standard input when TEXT is omitted.")
    p.add_argument("text", nargs="*", help="sentences (default: read lines from stdin)")
    p.add_argument("--model", default=None,
                   help="a model file written by 'tinyzip train' (.npz) or a .tz (default: the shipped "
                        "Bible En->Es model)")
    p.add_argument("--beam", type=int, default=4, help="beam size (1: greedy; default: 4)")
    p.add_argument("--kernels", action="store_true", help=".tz only: multiply on the real kernels")
    p.set_defaults(func=_cmd_translate)


def _cmd_translate(args) -> int:
    from tinyzip.translation import SHIPPED_MODEL, load_translator

    if args.beam < 1:
        raise ValueError(f"--beam must be >= 1, got {args.beam}")
    translator = load_translator(args.model or SHIPPED_MODEL, kernels=args.kernels)
    texts = args.text or [line.rstrip("\n") for line in sys.stdin]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("nothing to translate (give TEXT or lines on stdin)")
    for line in translator.translate(texts, beam=args.beam):
        print(line)
    return 0


def _add_eval(sub):
    p = sub.add_parser("eval", help="BLEU, file bytes and decode speed of a model file or .tz",
                       description="Evaluate on a built-in task's test split (or --src/--ref files).")
    p.add_argument("model")
    p.add_argument("--task", choices=["numbers-de", "bible-es"], default=None,
                   help="test split to use (default: the task the model was trained on)")
    p.add_argument("--src", help="source sentences, one per line (with --ref)")
    p.add_argument("--ref", help="reference translations, one per line (with --src)")
    p.add_argument("--beam", type=int, default=1, help="beam size (default: 1, greedy)")
    p.add_argument("--n", type=int, default=None, help="only the first N test sentences")
    p.add_argument("--kernels", action="store_true", help=".tz only: multiply on the real kernels")
    p.add_argument("--integer-ffn", action="store_true",
                   help="weights+activations .tz only: run every FFN on integers, W_1 -> ReLU -> W_2 through "
                        "Jacob's requantization (implies --kernels)")
    p.add_argument("--rounding", choices=["gemmlowp", "single"], default="gemmlowp",
                   help="with --integer-ffn: requantize with gemmlowp's two roundings (SRDHM, then "
                        "RoundingDivideByPOT; default) or TFLite's single rounding")
    p.add_argument("--json", metavar="PATH", help="also write {'task', 'rows': [...]} as JSON")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from tinyzip.data import load_parallel_files, load_task
    from tinyzip.report import entropy_cell, attention_entropy
    from tinyzip.translation import evaluate, load_translator

    translator = load_translator(args.model, kernels=args.kernels, integer_ffn=args.integer_ffn,
                                 rounding=args.rounding)
    if args.src or args.ref:
        if not (args.src and args.ref):
            raise ValueError("--src and --ref go together")
        pairs, task = load_parallel_files(args.src, args.ref), "files"
    else:
        task = args.task or _task_of(args.model)
        pairs = load_task(task).test
    pairs = pairs[:args.n] if args.n else pairs
    result = evaluate(translator, pairs, beam=args.beam)
    row = {"method": os.path.basename(args.model), "file_bytes": os.path.getsize(args.model),
           "bleu": result["bleu"], "decode_tokens_per_s": result["decode_tokens_per_s"],
           "attention_entropy": attention_entropy(translator, pairs), "beam": args.beam,
           "kernels": bool(args.kernels or args.integer_ffn), "integer_ffn": bool(args.integer_ffn),
           "rounding": args.rounding if args.integer_ffn else None,
           "n": len(pairs), "signature": result["signature"]}
    print(f"{row['method']}: BLEU {row['bleu']:.2f} ({result['signature']}) on {len(pairs)} {task} sentences, "
          f"{row['file_bytes']:,} bytes, {row['decode_tokens_per_s']:.0f} decoded tokens/s, "
          f"attention entropy {entropy_cell(row['attention_entropy'])}")
    if args.json:
        _write_json(args.json, {"task": task, "rows": [row]})
    return 0


def _task_of(path) -> str:
    from tinyzip import container, io

    extra = container.load_tz(path).extra if str(path).endswith(".tz") else io.load_model(path)[2]
    task = extra.get("task")
    if task not in ("numbers-de", "bible-es"):
        raise ValueError(f"{path}: no built-in task recorded; pass --task or --src/--ref")
    return task


def _add_inspect(sub):
    p = sub.add_parser("inspect", help="per-tensor byte table of a .tz file")
    p.add_argument("file")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    from tinyzip.container import format_inspect, load_tz

    print(format_inspect(load_tz(args.file)))
    return 0


def _add_attention(sub):
    p = sub.add_parser("attention", help="cross-attention maps of one sentence pair",
                       description="Write a PNG grid (layers x heads) with matplotlib, or a text heat "
                                   "map without it, and print the entropy per layer and head.")
    p.add_argument("model")
    p.add_argument("source")
    p.add_argument("target", nargs="?", help="target sentence (default: the model's own translation)")
    p.add_argument("--out", default="attention.png", help="PNG path (.txt without matplotlib)")
    p.set_defaults(func=_cmd_attention)


def _cmd_attention(args) -> int:
    import numpy as np

    from tinyzip import viz
    from tinyzip.report import pair_arrays, write_attention
    from tinyzip.translation import load_translator

    translator = load_translator(args.model)
    target = args.target or translator.translate([args.source])[0]
    pair = (args.source, target)
    path = write_attention(translator, pair, os.path.dirname(os.path.abspath(args.out)),
                           os.path.basename(args.out))
    src, tgt_in = pair_arrays(translator, [pair])
    _, cache = translator.model.forward(translator.params, src, tgt_in, return_states=True)
    entropy = viz.attention_entropy(cache.states["dec.cross_probs"], mask=src != 0)
    print(f"{args.source} -> {target}\nwrote {path}\ncross-attention entropy (nats), layer x head:")
    for layer, row in enumerate(entropy):
        print(f"  layer {layer}: " + " ".join(f"{h:.3f}" for h in row[~np.isnan(row)]))  # pruned heads: fewer
    return 0


def _add_bench_train(bsub):
    p = bsub.add_parser("train", help="forward+backward tokens/s of the NumPy Transformer",
                        description="Time Seq2Seq.loss_and_grads (and one Adam step) per model preset.")
    p.add_argument("--presets", default="tiny,small,default", help="comma-separated (default: all)")
    p.add_argument("--batch", type=int, default=32, help="sequences per batch (default: 32)")
    p.add_argument("--length", type=int, default=32, help="tokens per sequence (default: 32)")
    p.add_argument("--vocab", type=int, default=1000, help="vocabulary size (default: 1000)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per preset (default: 5)")
    p.add_argument("--json", metavar="PATH", help="also write {'machine', 'results'} as JSON")
    p.set_defaults(func=_cmd_bench_train)


def _cmd_bench_train(args) -> int:
    from tinyzip.bench import bench_train, format_train_table, machine_info

    rows = bench_train([s.strip() for s in args.presets.split(",") if s.strip()], batch=args.batch,
                       length=args.length, vocab=args.vocab, repeats=args.repeats)
    print(format_train_table(rows))
    if args.json:
        _write_json(args.json, {"machine": machine_info(), "results": rows})
    return 0


def _add_bench_kernels(bsub):
    p = bsub.add_parser("kernels", help="compressed matmul kernels vs NumPy float32 x @ W",
                        description="Validate, then time each kernel and NumPy float32 in alternation in "
                                    "this process; ratios > 1 mean faster than NumPy.")
    p.add_argument("--kernels", default=",".join(_KERNELS), help=f"comma-separated (default: all of {', '.join(_KERNELS)})")
    p.add_argument("--shapes", default="1024x1024,4096x4096,4096x1024", help="W shapes KxN (default: the issue's three)")
    p.add_argument("--batches", default="1,8,32,128", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=15, help="timed runs per configuration (default: 15)")
    p.add_argument("--passes", type=int, default=1,
                   help="time the whole grid this many times, report the median pass (default: 1)")
    p.add_argument("--cold", action="store_true",
                   help="evict every cache before every timed call, both sides alike (weights from DRAM, as in a "
                        "model larger than the L3)")
    p.add_argument("--json", metavar="PATH", help="also write {'machine', 'results'} as JSON")
    p.set_defaults(func=_cmd_bench_kernels)


_KERNELS = ("int8", "lut-q1", "lut-q2", "lut-q3", "codebook-4bit", "sparse-90", "numpy-copy")


def _cmd_bench_kernels(args) -> int:
    from tinyzip.bench import bench_kernels, format_kernel_table, machine_info

    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        raise ValueError(f"--shapes wants KxN,KxN and --batches integers; got {args.shapes!r}, {args.batches!r}") from None
    if any(len(s) != 2 or min(s) < 1 for s in shapes) or min(batches) < 1 or min(args.repeats, args.passes) < 1:
        raise ValueError("shapes, batches, --repeats and --passes must be positive")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load >= 1.0:
        print(f"note: load average {load:.1f}: with another process busy, NumPy's multi-threaded sgemm can run "
              f"10-50x slower (its threads wait on each other), which inflates the ratios; measure on an idle "
              f"machine", file=sys.stderr)
    rows = bench_kernels([k.strip() for k in args.kernels.split(",") if k.strip()], shapes, batches,
                         repeats=args.repeats, passes=args.passes, cold=args.cold)
    print(format_kernel_table(rows))
    if args.cold:
        print("(--cold: every cache evicted before every timed call, both sides alike)")
    from numba import get_num_threads
    blas = os.environ.get("OPENBLAS_NUM_THREADS")
    if blas is not None and blas.isdigit() and int(blas) < get_num_threads():
        print(f"note: NumPy ran on {blas} BLAS thread(s), the kernels on {get_num_threads()}; for a like-for-like "
              f"comparison run with OPENBLAS_NUM_THREADS={get_num_threads()} (tinyzip's default is 1, see _env.py)")
    if args.json:
        _write_json(args.json, {"machine": machine_info(), "results": rows})
    return 0


BENCH_COMMANDS = [_add_bench_train, _add_bench_kernels]


def _add_bench(sub):
    p = sub.add_parser("bench", help="benchmarks (see 'tinyzip bench --help')",
                       description="Benchmarks that print ratios measured in one run.")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="BENCH", parser_class=_Parser)
    for add in BENCH_COMMANDS:
        add(bsub)


COMMANDS = [_add_demo, _add_train, _add_translate, _add_eval, _add_inspect, _add_attention, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinyzip", description="tinyzip: Transformer compression, from scratch in NumPy.")
    parser.add_argument("--version", action="version", version=f"tinyzip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return text or type(error).__name__


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Entry point of the ``tinyzip`` console script; returns the exit status.

    SIGTERM (``kill PID``, a job scheduler's stop) is handled like Ctrl-C: training writes its
    checkpoint and ``demo --json`` its rows and wall time, so the same command plus ``--resume``
    continues (a background job started by a non-interactive shell ignores SIGINT)."""
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("tinyzip: interrupted", file=sys.stderr)
        return 2
    except (TinyzipError, ValueError, TypeError, OSError) as e:
        print(f"tinyzip {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # python -m tinyzip.cli
    sys.exit(main())
