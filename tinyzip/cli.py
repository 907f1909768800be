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
import sys

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


def _add_train(sub):
    p = sub.add_parser("train", help="train a model",
                       description="Train a Seq2Seq Transformer; checkpoints go beside --out "
                                   "(NAME.ckpt.npz) and --resume continues from there exactly.")
    p.add_argument("--task", choices=["copy", "reverse"], default="copy",
                   help="built-in task (default: copy)")
    p.add_argument("--preset", choices=["tiny", "small", "default"], default="small",
                   help="model size (default: small; default = D 256, H 4, F 1024, 3+3 layers)")
    p.add_argument("--steps", type=int, default=300, help="total optimizer steps (default: 300)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch (default: 32)")
    p.add_argument("--warmup", type=int, default=100, help="warmup steps of the schedule (default: 100)")
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiplies Vaswani's schedule (default: 1)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="steps between checkpoints (default: 100)")
    p.add_argument("--out", default=None, help="model file to write (default: runs/TASK-PRESET.npz)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, dropout and data (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from tinyzip.train import train_copy_task

    if args.steps < 1 or args.batch_size < 1 or args.warmup < 1 or args.checkpoint_every < 0:
        raise ValueError("--steps, --batch-size and --warmup must be >= 1, --checkpoint-every >= 0")
    out = args.out or os.path.join("runs", f"{args.task}-{args.preset}.npz")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    result = train_copy_task(out=out, steps=args.steps, preset=args.preset, reverse=args.task == "reverse",
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
    p = sub.add_parser("demo", help="train the default model and print the results table",
                       description="Placeholder of the main demo: train the default model on the copy "
                                   "task and print a one-row table (float32 baseline).")
    p.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    p.add_argument("--out", default=os.path.join("runs", "demo.npz"),
                   help="model file (default: runs/demo.npz)")
    p.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from tinyzip.train import train_copy_task

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    result = train_copy_task(out=args.out, steps=args.steps, preset="default", seed=args.seed)
    if result["interrupted"]:
        print(f"tinyzip: interrupted after step {result['step']}", file=sys.stderr)
        return 2
    row = {"method": "float32", "bits": 32.0, "file_bytes": os.path.getsize(args.out), "ratio": 1.0,
           "bleu": None, "bleu_pct": None, "decode_tokens_per_s": None, "attention_entropy": None,
           "accuracy": result["dev"].get("accuracy")}
    print(f"{'method':<10} {'bits':>5} {'file bytes':>12} {'ratio':>6} {'dev accuracy':>13}")
    print(f"{row['method']:<10} {row['bits']:>5.0f} {row['file_bytes']:>12,} {row['ratio']:>6.2f} "
          f"{row['accuracy']:>13.4f}")
    if args.json:
        _write_json(args.json, {"task": "copy", "rows": [row]})
    return 0


def _add_bench_train(bsub):
    p = bsub.add_parser("train", help="forward+backward tokens/s of the NumPy Transformer",
                        description="Time Seq2Seq.loss_and_grads (and one Adam step) per model preset.")
    p.add_argument("--presets", default="tiny,small,default", help="comma-separated (default: all)")
    p.add_argument("--batch", type=int, default=32, help="sequences per batch (default: 32)")
    p.add_argument("--length", type=int, default=32, help="tokens per sequence (default: 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per preset (default: 5)")
    p.add_argument("--json", metavar="PATH", help="also write {'machine', 'results'} as JSON")
    p.set_defaults(func=_cmd_bench_train)


def _cmd_bench_train(args) -> int:
    from tinyzip.bench import bench_train, format_train_table, machine_info

    rows = bench_train([s.strip() for s in args.presets.split(",") if s.strip()], batch=args.batch,
                       length=args.length, repeats=args.repeats)
    print(format_train_table(rows))
    if args.json:
        _write_json(args.json, {"machine": machine_info(), "results": rows})
    return 0


BENCH_COMMANDS = [_add_bench_train]


def _add_bench(sub):
    p = sub.add_parser("bench", help="benchmarks (see 'tinyzip bench --help')",
                       description="Benchmarks that print ratios measured in one run.")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="BENCH", parser_class=_Parser)
    for add in BENCH_COMMANDS:
        add(bsub)


COMMANDS = [_add_demo, _add_train, _add_bench]


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


def main(argv=None) -> int:
    """Entry point of the ``tinyzip`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("tinyzip: interrupted", file=sys.stderr)
        return 2
    except (TinyzipError, ValueError, TypeError, OSError) as e:
        print(f"tinyzip {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m tinyzip.cli
    sys.exit(main())
