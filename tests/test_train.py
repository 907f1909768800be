"""Tests of tinyzip.train: the five-line step, checkpoints, exact resume in a fresh process, Ctrl-C.

The model here is a stand-in with Seq2Seq's ``loss_and_grads`` signature (a softmax regression on
the copy task, with dropout so the rng stream matters), so the loop is tested on its own.
"""
import functools
import io as stdio
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tinyzip import io, train as tz_train
from tinyzip.compress.base import Method
from tinyzip.data import copy_task
from tinyzip.errors import FileFormatError
from tinyzip.nn import optim

V, D = 12, 8


class StandIn:
    """logits = dropout(E[tgt_in] + F[src shifted]) @ W + b; loss = mean CE over non-PAD targets."""

    def init_params(self, rng):
        return {"E": (0.1 * rng.normal(size=(V, D))).astype(np.float32),
                "F": (0.1 * rng.normal(size=(V, D))).astype(np.float32),
                "W": (0.1 * rng.normal(size=(D, V))).astype(np.float32),
                "b": np.zeros(V, np.float32)}

    def loss_and_grads(self, params, src, tgt_in, tgt_out, *, rng=None, act_hooks=None):
        src_t = np.concatenate([src, np.zeros((src.shape[0], 1), src.dtype)], axis=1)  # (B, T)
        h = params["E"][tgt_in] + params["F"][src_t]                                   # (B, T, D)
        keep = (rng.random(h.shape) >= 0.1) / 0.9 if rng is not None else np.ones_like(h)
        x = h * keep
        hook = (act_hooks or {}).get("W:in")
        x_hat, hcache = hook[0](x) if hook else (x, None)
        logits = x_hat @ params["W"] + params["b"]                                     # (B, T, V)
        z = logits - logits.max(-1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        mask = tgt_out != 0
        count = int(mask.sum())
        picked = np.take_along_axis(p, tgt_out[..., None], -1)[..., 0]
        loss = float(-np.log(picked[mask]).sum() / count)
        dlogits = p.copy()
        np.put_along_axis(dlogits, tgt_out[..., None], np.take_along_axis(p, tgt_out[..., None], -1) - 1, -1)
        dlogits *= mask[..., None] / count
        grads = {"W": np.einsum("btd,btv->dv", x_hat, dlogits).astype(np.float32),
                 "b": dlogits.sum((0, 1)).astype(np.float32)}
        dx = dlogits @ params["W"].T
        dx = hook[1](dx, hcache) if hook else dx
        dh = (dx * keep).astype(np.float32)
        grads["E"], grads["F"] = np.zeros_like(params["E"]), np.zeros_like(params["F"])
        np.add.at(grads["E"], tgt_in, dh)
        np.add.at(grads["F"], src_t, dh)
        return loss, grads, {"tokens": count, "nll": loss}


BATCHES = functools.partial(copy_task.epoch_batches, seed=7, n_batches=3, batch_size=4, vocab_size=V,
                            min_len=2, max_len=5)


def _run(steps, *, checkpoint_path=None, resume=False, model=None, **kwargs):
    """The configuration every resume test shares (also imported by the fresh-process half)."""
    model = model or StandIn()
    params = model.init_params(np.random.default_rng(0))
    kwargs.setdefault("log", None)
    return tz_train.train(model, params, BATCHES, steps=steps, optimizer=optim.adam(),
                          schedule=functools.partial(optim.inverse_sqrt_schedule, D=D, warmup=4, scale=0.5),
                          rng=np.random.default_rng(42), clip_norm=1.0, checkpoint_path=checkpoint_path,
                          resume=resume, **kwargs)


class HalveW:
    """A weight transform for the hook test: W_eff = W / 2, so dW = dW_eff / 2."""

    def forward(self, W):
        return W / 2, None

    def backward(self, dW_eff, cache):
        return dW_eff / 2


def test_step_is_the_five_lines_of_the_design():
    """One train() step == method.forward, loss_and_grads, method.backward, clip, step, after_step."""
    calls = []
    method = Method("test", transforms={"W": HalveW()},
                    after_step=lambda p: {**p, "b": np.zeros_like(p["b"])},
                    act_hooks={"W:in": (lambda x: (calls.append("fwd") or 2 * x, None),
                                        lambda dx, c: calls.append("bwd") or 2 * dx)})
    model = StandIn()
    params = model.init_params(np.random.default_rng(0))
    batch = BATCHES(0)[0]
    opt = optim.adamw(weight_decay=0.1)
    lr = optim.inverse_sqrt_schedule(1, D, warmup=4)

    rng = np.random.default_rng(3)
    eff, tcache = method.forward(params)
    loss, deff, _ = model.loss_and_grads(eff, *batch, rng=rng, act_hooks=method.act_hooks)
    grads, _ = optim.clip_by_global_norm(method.backward(deff, tcache), 0.5)
    expected, _ = opt.step(params, grads, opt.init(params), lr)
    expected = method.after_step(expected)

    calls.clear()
    result = tz_train.train(model, params, [batch], steps=1, optimizer=opt, clip_norm=0.5,
                            schedule=functools.partial(optim.inverse_sqrt_schedule, D=D, warmup=4),
                            rng=np.random.default_rng(3), method=method, log=None)
    assert calls == ["fwd", "bwd"] and result.losses == [loss] and result.step == 1
    for name in params:
        np.testing.assert_array_equal(result.params[name], expected[name])
    assert not result.params["b"].any()


def test_loss_falls_on_the_copy_task():
    result = _run(120)
    first, last = np.mean(result.losses[:10]), np.mean(result.losses[-10:])
    print(f"loss {first:.3f} -> {last:.3f}")
    assert last < 0.5 * first


def _fresh_process_second_half(ckpt_path, out_path, steps):
    """Run in a new interpreter: resume from ckpt_path to `steps`, save losses, params and rng draws."""
    result = _run(steps, checkpoint_path=ckpt_path, resume=True)
    np.savez(out_path, losses=np.array(result.losses), draws=result.rng.random(4),
             position=np.array(result.data_position), **{f"p_{k}": v for k, v in result.params.items()})


def test_exact_resume_in_a_fresh_process(tmp_path):
    """2N steps in one run == N steps, checkpoint, load in a NEW process, N more (N crosses an epoch)."""
    N = 5
    full = _run(2 * N)
    ckpt = tmp_path / "run.ckpt.npz"
    half = _run(N, checkpoint_path=ckpt)
    assert io.load_checkpoint(ckpt).step == N and io.load_checkpoint(ckpt).data_position == (1, 2)
    np.testing.assert_allclose(half.losses, full.losses[:N], rtol=0, atol=0)

    out = tmp_path / "second.npz"
    code = textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("resume_half", {__file__!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module._fresh_process_second_half({str(ckpt)!r}, {str(out)!r}, {2 * N})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with np.load(out) as second:
        np.testing.assert_allclose(second["losses"], full.losses[N:], rtol=1e-6)
        np.testing.assert_array_equal(second["draws"], full.rng.random(4))
        assert tuple(second["position"]) == full.data_position
        for name, value in full.params.items():
            np.testing.assert_allclose(second[f"p_{name}"], value, rtol=1e-6, atol=1e-7)


class InterruptAt(StandIn):
    """Raises KeyboardInterrupt inside the k-th call, AFTER the real forward drew its dropout masks."""

    def __init__(self, k):
        self.k, self.calls = k, 0

    def loss_and_grads(self, *args, **kwargs):
        self.calls += 1
        out = super().loss_and_grads(*args, **kwargs)
        if self.calls == self.k:
            raise KeyboardInterrupt
        return out


def test_ctrl_c_mid_step_checkpoints_the_last_whole_step_and_resumes_exactly(tmp_path):
    full = _run(8)
    ckpt = tmp_path / "c.npz"
    log = stdio.StringIO()
    hit = _run(8, checkpoint_path=ckpt, model=InterruptAt(4), log=log)
    assert hit.interrupted and hit.step == 3 and io.load_checkpoint(ckpt).step == 3
    assert "interrupted after step 3" in log.getvalue()
    resumed = _run(8, checkpoint_path=ckpt, resume=True)
    np.testing.assert_array_equal(hit.losses + resumed.losses, full.losses)
    np.testing.assert_array_equal(resumed.rng.random(3), full.rng.random(3))


def test_checkpoint_every_n_steps_and_at_the_end(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(io, "save_checkpoint", lambda path, *a, step, **k: written.append(step))
    _run(5, checkpoint_path=tmp_path / "c.npz", checkpoint_every=2)
    assert written == [2, 4, 5]


def test_validate_every_n_steps_and_at_the_end_sees_effective_params():
    seen = []

    def validate(eff, step):
        seen.append(step)
        return {"W_sum": float(eff["W"].sum())}

    method = Method("halve", transforms={"W": HalveW()})
    result = _run(7, validate=validate, validate_every=3, method=method)
    assert seen == [3, 6, 7] and [h["step"] for h in result.history] == [3, 6, 7]
    assert result.history[-1]["W_sum"] == pytest.approx(float(result.params["W"].sum()) / 2, rel=1e-5)


class FakeTTY(stdio.StringIO):
    def isatty(self):
        return True


def test_progress_line_plain_and_tty():
    plain, tty = stdio.StringIO(), FakeTTY()
    _run(4, log=plain, log_seconds=0.0)
    lines = plain.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("step 1/4") and lines[-1].startswith("step 4/4")
    assert all(w in lines[-1] for w in ("loss", "lr", "tok/s", "ETA"))
    _run(4, log=tty, log_seconds=0.0)
    text = tty.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    tty = FakeTTY()
    with pytest.raises(ValueError, match="diverged"):
        _run(4, log=tty, model=DivergesAt(3), log_seconds=0.0)
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("\n"), "error must start a new line"


class DivergesAt(StandIn):
    def __init__(self, k):
        self.k, self.calls = k, 0

    def loss_and_grads(self, *args, **kwargs):
        self.calls += 1
        loss, grads, stats = super().loss_and_grads(*args, **kwargs)
        return (float("nan") if self.calls >= self.k else loss), grads, stats


def test_bad_use_raises_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="diverged"):
        _run(3, model=DivergesAt(1))
    with pytest.raises(ValueError, match="checkpoint_path"):
        _run(3, resume=True)
    with pytest.raises(FileFormatError, match="no such file"):
        _run(3, checkpoint_path=tmp_path / "missing.npz", resume=True)
    other = {"W": np.ones((2, 2), np.float32)}
    io.save_checkpoint(tmp_path / "o.npz", other, optim.adam_init(other), step=1,
                       rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="does not fit"):
        _run(3, checkpoint_path=tmp_path / "o.npz", resume=True)
    with pytest.raises(ValueError, match="no batch"):
        tz_train.train(StandIn(), StandIn().init_params(np.random.default_rng(0)), [], steps=1,
                       optimizer=optim.sgd(), schedule=lambda s: 0.1, rng=np.random.default_rng(0), log=None)


class UniformLogits:
    def forward(self, params, src, tgt_in):
        return np.zeros(tgt_in.shape + (V,)), None


def test_teacher_forced_eval_of_uniform_logits():
    """Uniform logits: nll = log V per token; argmax is id 0 (PAD), never a target, so accuracy 0."""
    metrics = tz_train.evaluate_teacher_forced(UniformLogits(), {}, BATCHES(0))
    assert metrics["nll"] == pytest.approx(np.log(V), rel=1e-12) and metrics["accuracy"] == 0.0


def test_exact_resume_with_the_real_seq2seq_and_dropout(tmp_path):
    """The same law on the real model (dropout on): 6 steps == 3 steps + checkpoint + 3 steps."""
    from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

    model = Seq2Seq(Seq2SeqConfig(src_vocab=V, tgt_vocab=V, D=16, H=2, F=32, enc_layers=1, dec_layers=1,
                                  max_len=8, dropout=0.2))

    def run(steps, **kwargs):
        return tz_train.train(model, model.init_params(np.random.default_rng(0)), BATCHES, steps=steps,
                              optimizer=optim.adamw(), rng=np.random.default_rng(5), log=None,
                              schedule=functools.partial(optim.inverse_sqrt_schedule, D=16, warmup=3),
                              checkpoint_path=tmp_path / "s.npz", **kwargs)

    full = run(6)
    first = run(3)
    second = run(6, resume=True)
    np.testing.assert_array_equal(first.losses + second.losses, full.losses)
    for name, value in full.params.items():
        np.testing.assert_array_equal(second.params[name], value)


@pytest.mark.parametrize("reverse", [False, True])
def test_copy_task_batches_follow_the_data_layout(reverse):
    """tgt_in = BOS + y, tgt_out = y + EOS, PAD = 0 after each row's length; y = x or x reversed."""
    src, tgt_in, tgt_out = copy_task.copy_batch(np.random.default_rng(0), 50, vocab_size=9, min_len=1,
                                                max_len=6, reverse=reverse)
    assert src.shape == (50, 6) and tgt_in.shape == tgt_out.shape == (50, 7)
    for x_row, ti, to in zip(src, tgt_in, tgt_out):
        x = x_row[x_row != copy_task.PAD]
        assert 1 <= len(x) <= 6 and x.min() >= copy_task.FIRST_SYMBOL and x.max() < 9
        assert not x_row[len(x):].any(), "padding must come after the symbols"
        y = x[::-1] if reverse else x
        np.testing.assert_array_equal(ti[:len(y) + 1], np.r_[copy_task.BOS, y])
        np.testing.assert_array_equal(to[:len(y) + 1], np.r_[y, copy_task.EOS])
        assert not ti[len(y) + 1:].any() and not to[len(y) + 1:].any()


def test_copy_task_epochs_are_a_pure_function_of_seed_and_epoch():
    a, b, c = BATCHES(3), BATCHES(3), BATCHES(4)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert any((x[0].shape != z[0].shape) or (x[0] != z[0]).any() for x, z in zip(a, c))
    with pytest.raises(ValueError, match="vocab_size"):
        copy_task.copy_batch(np.random.default_rng(0), 2, vocab_size=4)
