"""The training loop: one plain function, with compression hook points, checkpoints and exact resume.

One step (design.md), for every compression method alike::

    eff, tcache = method.forward(params)                 # identity when nothing is compressed
    loss, deff, stats = model.loss_and_grads(eff, *batch, rng=rng, act_hooks=method.act_hooks)
    grads = method.backward(deff, tcache)                # STE, masks, per-cluster sums, ...
    grads, norm = clip_by_global_norm(grads, clip_norm)  # Pascanu et al. 2013, Alg. 1
    params, opt_state = optimizer.step(params, grads, opt_state, schedule(step))
    params = method.after_step(params)                   # e.g. keep pruned weights at zero

Data order. ``batches`` is either a list of batches (the same every epoch) or a function
``batches(epoch) -> iterable of batches`` that is a pure function of ``epoch`` (e.g.
``functools.partial(copy_task.epoch_batches, seed=0, ...)``). The position in the data is then
``(epoch, index)``: a resumed run rebuilds epoch ``epoch`` and skips ``index`` batches.

Exact resume. A checkpoint holds params, optimizer state, step, the rng's bit-generator state and
the data position, all as of the end of a completed step. Training 2N steps in one run and
training N steps, saving, loading in a fresh process and training N more give the same losses
and the same rng stream. Ctrl-C (KeyboardInterrupt) mid-step rolls back to the last completed
step (including the rng), writes the checkpoint and returns with ``interrupted=True``.
"""
import functools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from tinyzip import io
from tinyzip.compress.base import IDENTITY, Method
from tinyzip.data import copy_task
from tinyzip.nn.optim import Optimizer, adam, clip_by_global_norm, inverse_sqrt_schedule

PRESETS = {
    # model sizes for the CLI and the benchmark; "default" equals Seq2SeqConfig's defaults
    "tiny": {"D": 32, "H": 2, "F": 64, "enc_layers": 1, "dec_layers": 1},
    "small": {"D": 64, "H": 4, "F": 256, "enc_layers": 2, "dec_layers": 2},
    "default": {"D": 256, "H": 4, "F": 1024, "enc_layers": 3, "dec_layers": 3},
}


@dataclass
class TrainResult:
    """What :func:`train` returns. ``losses`` has one entry per step run by this call."""

    params: dict
    opt_state: dict
    step: int
    rng: np.random.Generator
    data_position: tuple
    losses: list = field(default_factory=list)
    history: list = field(default_factory=list)   # [{"step": k, **validate(...)}]
    interrupted: bool = False


class _Committed(NamedTuple):
    """Everything a checkpoint needs, replaced by ONE assignment per step, so Ctrl-C sees a whole step."""

    params: dict
    opt_state: dict
    step: int
    position: tuple
    rng_state: dict


def _epoch(batches, epoch: int):
    return iter(batches(epoch) if callable(batches) else batches)


def train(model, params: dict, batches, *, steps: int, optimizer: Optimizer,
          schedule: Callable[[int], float], rng: np.random.Generator, method: Method = IDENTITY,
          clip_norm: float | None = 1.0, checkpoint_path=None, checkpoint_every: int = 0,
          resume: bool = False, validate: Callable[[dict, int], dict] | None = None,
          validate_every: int = 0, config: dict | None = None, extra: dict | None = None,
          log="stderr", log_seconds: float | None = None) -> TrainResult:
    """Train ``params`` until ``steps`` optimizer steps in total have been taken.

    model: anything with ``loss_and_grads(params, *batch, rng=, act_hooks=) -> (loss, grads, stats)``.
    schedule: ``schedule(step) -> lr`` for the 1-based step being taken.
    rng: drives dropout; with ``resume`` its state is replaced by the checkpoint's.
    checkpoint_path: written every ``checkpoint_every`` steps (0: never), at the end and on Ctrl-C.
    resume: continue from ``checkpoint_path`` (params, optimizer, step, rng, data position).
    validate: ``validate(effective_params, step) -> {metric: float}`` every ``validate_every``
        steps and at the end; the results go to ``TrainResult.history`` and the progress line.
    log: stream for the progress line, ``"stderr"`` (sys.stderr at call time) or None (silent);
        ``log_seconds`` between lines (default 0.2 s on a terminal, where the line updates in
        place, and 10 s otherwise).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if (checkpoint_every or resume) and checkpoint_path is None:
        raise ValueError("checkpoint_every and resume need a checkpoint_path")
    if resume:
        ckpt = io.load_checkpoint(checkpoint_path)
        _check_same_shapes(checkpoint_path, ckpt.params, params)
        rng.bit_generator.state = ckpt.rng.bit_generator.state
        cur = _Committed(ckpt.params, ckpt.opt_state, ckpt.step, ckpt.data_position, rng.bit_generator.state)
    else:
        cur = _Committed(params, optimizer.init(params), 0, (0, 0), rng.bit_generator.state)
    save = functools.partial(_save, checkpoint_path, config=config, extra=extra)
    progress = _Progress(sys.stderr if log == "stderr" else log, cur.step, steps, log_seconds)
    result = TrainResult(cur.params, cur.opt_state, cur.step, rng, cur.position)
    epoch, index = cur.position
    data = _epoch(batches, epoch)
    for _ in range(index):
        if next(data, None) is None:
            raise ValueError(f"batches gave fewer than {index} batches for epoch {epoch} on resume")
    saved_step = None
    try:
        while cur.step < steps:
            batch = next(data, None)
            if batch is None:
                if index == 0:
                    raise ValueError(f"batches gave no batch for epoch {epoch}")
                epoch, index = epoch + 1, 0
                data = _epoch(batches, epoch)
                continue
            step = cur.step + 1
            lr = schedule(step)
            eff, tcache = method.forward(cur.params)
            loss, deff, stats = model.loss_and_grads(eff, *batch, rng=rng, act_hooks=method.act_hooks)
            if not math.isfinite(loss):
                raise ValueError(f"loss is {loss} at step {step} (lr {lr:.3g}): training diverged; "
                                 f"lower the learning rate")
            grads = method.backward(deff, tcache)
            if clip_norm:
                grads, _ = clip_by_global_norm(grads, clip_norm)
            new_params, new_opt_state = optimizer.step(cur.params, grads, cur.opt_state, lr)
            new_params = method.after_step(new_params)
            index += 1
            cur = _Committed(new_params, new_opt_state, step, (epoch, index), rng.bit_generator.state)
            result.losses.append(float(loss))
            if checkpoint_every and step % checkpoint_every == 0:
                save(cur)
                saved_step = step
            if validate is not None and validate_every and step % validate_every == 0 and step < steps:
                result.history.append({"step": step, **validate(method.forward(cur.params)[0], step)})
            progress.update(step, float(loss), lr, int(stats.get("tokens", 0)), result.history)
        if validate is not None and (not result.history or result.history[-1]["step"] != cur.step):
            result.history.append({"step": cur.step, **validate(method.forward(cur.params)[0], cur.step)})
        if checkpoint_path is not None and saved_step != cur.step:
            save(cur)
        progress.finish(cur.step, result.history)
    except KeyboardInterrupt:
        rng.bit_generator.state = cur.rng_state  # roll back what the unfinished step drew
        if checkpoint_path is not None:
            save(cur)
        progress.interrupted(cur.step, checkpoint_path)
        result.interrupted = True
    except BaseException:
        progress.end_line()  # so an error message starts on its own line
        raise
    result.params, result.opt_state, result.step, result.data_position = (
        cur.params, cur.opt_state, cur.step, cur.position)
    rng.bit_generator.state = cur.rng_state
    return result


def _check_same_shapes(path, loaded: dict, params: dict) -> None:
    expected = {k: v.shape for k, v in params.items()}
    got = {k: v.shape for k, v in loaded.items()}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))[:3]
        raise ValueError(f"checkpoint {path} does not fit this model (params differ: {diff})")


def _save(path, cur: _Committed, *, config, extra) -> None:
    io.save_checkpoint(path, cur.params, cur.opt_state, step=cur.step, rng=io.rng_from_json(cur.rng_state),
                       data_position=cur.position, config=config, extra=extra)


def format_seconds(seconds: float) -> str:
    """1h02m, 3m05s or 42s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Progress:
    """``step 120/1000  loss 2.3412  lr 3.2e-04  4,321 tok/s  ETA 1m23s  | val nll 2.1``."""

    def __init__(self, stream, start_step: int, total: int, interval: float | None):
        self.stream, self.start_step, self.total = stream, start_step, total
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.t0 = self.t_last = time.perf_counter()
        self.losses, self.tokens, self.printed_step, self.line_open = [], 0, None, False

    def _emit(self, text: str, final: bool = False) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K" + ("\n" if final else ""))
            self.line_open = not final
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _line(self, step: int, lr: float, history: list) -> str:
        now = time.perf_counter()
        done = step - self.start_step
        rate = self.tokens / max(now - self.t_last, 1e-9)
        eta = (now - self.t0) / max(done, 1) * (self.total - step)
        loss = sum(self.losses) / len(self.losses) if self.losses else float("nan")
        text = (f"step {step:>{len(str(self.total))}}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  "
                f"{rate:,.0f} tok/s  ETA {format_seconds(eta)}")
        if history:
            text += "  | val " + " ".join(f"{k} {v:.4g}" for k, v in history[-1].items() if k != "step")
        return text

    def update(self, step: int, loss: float, lr: float, tokens: int, history: list) -> None:
        self.losses.append(loss)
        self.tokens += tokens
        self.lr = lr
        now = time.perf_counter()
        if step == self.start_step + 1 or step == self.total or now - self.t_last >= self.interval:
            self._emit(self._line(step, lr, history))
            self.t_last, self.losses, self.tokens, self.printed_step = now, [], 0, step

    def finish(self, step: int, history: list) -> None:
        if self.stream is None:
            return
        if self.printed_step != step and hasattr(self, "lr"):
            self._emit(self._line(step, self.lr, history))
        self.end_line()
        if history and history[-1]["step"] == step:
            metrics = " ".join(f"{k} {v:.4g}" for k, v in history[-1].items() if k != "step")
            self._emit(f"final val {metrics}", final=True)

    def end_line(self) -> None:
        """Finish an in-place terminal line with a newline."""
        if self.stream is not None and self.line_open:
            self.stream.write("\n")
            self.stream.flush()
            self.line_open = False

    def interrupted(self, step: int, path) -> None:
        if self.stream is not None:
            self.end_line()
            saved = f"; checkpoint written to {path}" if path is not None else ""
            self._emit(f"interrupted after step {step}{saved}", final=True)


def evaluate_teacher_forced(model, params: dict, batches, act_hooks=None) -> dict:
    """Token-level NLL and accuracy of ``model.forward(params, src, tgt_in)`` against ``tgt_out``.

    Non-PAD (id 0) target positions only; no dropout; the usual ``validate`` callback.
    ``act_hooks`` (e.g. frozen activation quantizers, ``tinyzip.compress.fqt``) go to the forward.
    """
    nll_sum, correct, count = 0.0, 0, 0
    hooks = {} if act_hooks is None else {"act_hooks": act_hooks}        # models without hooks work too
    for src, tgt_in, tgt_out in batches:
        logits, _ = model.forward(params, src, tgt_in, **hooks)               # (B, T, V)
        z = logits - logits.max(axis=-1, keepdims=True)                       # (B, T, V)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))             # (B, T, V)
        mask = tgt_out != 0                                                   # (B, T)
        picked = np.take_along_axis(logp, tgt_out[..., None], axis=-1)[..., 0]  # (B, T)
        nll_sum -= float(picked[mask].sum())
        correct += int((logits.argmax(axis=-1) == tgt_out)[mask].sum())
        count += int(mask.sum())
    if count == 0:
        raise ValueError("evaluation batches hold no non-PAD target token")
    return {"nll": nll_sum / count, "accuracy": correct / count}


COPY_TASK = {"vocab_size": 20, "min_len": 3, "max_len": 10}
DEV_EPOCH = 2 ** 31  # the dev set is the epoch that training never reaches


def checkpoint_path_for(out) -> str:
    """``runs/copy.npz`` -> ``runs/copy.ckpt.npz``: where a run's checkpoint lives."""
    out = str(out)
    return (out[:-4] if out.endswith(".npz") else out) + ".ckpt.npz"


def train_copy_task(*, out, steps: int = 300, preset: str = "small", reverse: bool = False,
                    batch_size: int = 32, seed: int = 0, resume: bool = False, warmup: int = 100,
                    lr_scale: float = 1.0, checkpoint_every: int = 100, log="stderr") -> dict:
    """Train a Seq2Seq ``preset`` on the copy (or reverse) task and save it to ``out``.

    Adam (0.9, 0.98, 1e-9) with Vaswani's schedule, clip 1.0, checkpoints beside ``out``
    (:func:`checkpoint_path_for`). Returns ``{"params", "config", "dev", "step", "interrupted",
    "checkpoint"}``; the model file is written only when training reached ``steps``.
    """
    from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    task = dict(COPY_TASK, reverse=reverse)
    V = task["vocab_size"]
    config = Seq2SeqConfig(src_vocab=V, tgt_vocab=V, max_len=task["max_len"] + 1, **PRESETS[preset])
    model = Seq2Seq(config)
    rng = np.random.default_rng(seed)
    params = model.init_params(rng)
    batches = functools.partial(copy_task.epoch_batches, seed=seed, n_batches=50, batch_size=batch_size,
                                **task)
    dev = copy_task.epoch_batches(DEV_EPOCH, seed=seed, n_batches=4, batch_size=64, **task)
    name = "reverse" if reverse else "copy"
    extra = {"model": "Seq2Seq", "task": name, "task_config": task, "preset": preset, "seed": seed}
    result = train(model, params, batches, steps=steps, optimizer=adam(), rng=rng,
                   schedule=functools.partial(inverse_sqrt_schedule, D=config.D, warmup=warmup,
                                              scale=lr_scale),
                   checkpoint_path=checkpoint_path_for(out), checkpoint_every=checkpoint_every,
                   resume=resume, validate=lambda p, step: evaluate_teacher_forced(model, p, dev),
                   validate_every=max(steps // 5, 1), config=config.to_dict(), extra=extra, log=log)
    dev_metrics = {k: v for k, v in result.history[-1].items() if k != "step"} if result.history else {}
    if not result.interrupted:
        io.save_model(out, result.params, config.to_dict(), dict(extra, steps=result.step, dev=dev_metrics))
    return {"params": result.params, "config": config, "dev": dev_metrics, "step": result.step,
            "interrupted": result.interrupted, "checkpoint": checkpoint_path_for(out)}
