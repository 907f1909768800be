# %% [markdown]
# # 11 — LayerDrop: train with layers missing, then remove them
#
# **You will:** train a tiny Transformer twice from the same start, once as usual and once with
# LayerDrop (Fan, Grave, Joulin, ICLR 2020, arXiv:1909.11556): at every training step each layer
# is skipped with probability p, as if it were not there. Then you cut both models to half their
# depth, with no retraining, and see which one survives; and you check that a cut model is a
# genuinely smaller model that computes exactly what the full model computes with those layers
# skipped.
#
# **Needs:** tutorial 01 (the model and the copy task).
#
# **Runs in:** about 8 s on a laptop CPU.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import functools
import os
import tempfile

import numpy as np

from tinyzip.compress import layerdrop as ld
from tinyzip.compressed import pack_float
from tinyzip.container import save_tz
from tinyzip.data import copy_task
from tinyzip.nn import optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import evaluate_teacher_forced, train

STEPS = 600  # training steps of each model
P = 0.2      # LayerDrop's rate, fairseq's recommended value

# %% [markdown]
# ## Step 0 — the rule, and what a skipped layer does
#
# In each training forward, draw `u_i ~ U(0, 1)` for every layer `i` and run the layer only if
# `u_i > p`; otherwise the residual stream passes through unchanged (fairseq does not rescale the
# layers that ran, unlike ordinary dropout). A skipped layer gets no gradient that step. At
# evaluation every layer runs.

# %%
V, D, H, F = 12, 32, 2, 64
config = Seq2SeqConfig(src_vocab=V, tgt_vocab=V, D=D, H=H, F=F, enc_layers=2, dec_layers=2, max_len=8)
model = Seq2Seq(config)
draws = [ld.draw_skips(config, P, P, np.random.default_rng([1, i])) for i in range(2000)]
kept = {name: np.mean([name not in s for s in draws]) for name in ld.layer_names(config)}
print("fraction of steps each layer runs: " + ", ".join(f"{n} {k:.3f}" for n, k in kept.items()))
task = dict(vocab_size=V, min_len=2, max_len=6)
batch = copy_task.epoch_batches(10**5, seed=3, n_batches=1, batch_size=32, **task)[0]
drop = ld.LayerDrop(model, P, P)
params0 = model.init_params(np.random.default_rng(0))
_, grads, _ = drop.loss_and_grads(params0, *batch, rng=np.random.default_rng(0))
skipped_params = [n for n in grads if ".".join(n.split(".")[:2]) in drop.last_skipped]
print(f"one step skipped {sorted(drop.last_skipped)}: {len(skipped_params)} parameters, all with gradient 0: "
      f"{all(not grads[n].any() for n in skipped_params)}")
assert all(abs(k - (1 - P)) < 0.03 for k in kept.values())
assert drop.last_skipped and skipped_params and all(not grads[n].any() for n in skipped_params)

# %% [markdown]
# ## Step 1 — two models from one start
#
# The same initialization, the same batches and the same schedule; one of them trains with
# LayerDrop at p = 0.2. At full depth it pays a little: it has learned to work with any of its
# layers missing.

# %%
batches = functools.partial(copy_task.epoch_batches, seed=0, n_batches=20, batch_size=32, **task)
dev = copy_task.epoch_batches(10**6, seed=0, n_batches=2, batch_size=64, **task)


def train_copy(loss_model):
    rng = np.random.default_rng(0)
    return train(loss_model, model.init_params(rng), batches, steps=STEPS, optimizer=optim.adam(), rng=rng,
                 schedule=functools.partial(optim.inverse_sqrt_schedule, D=D, warmup=100, scale=1.0),
                 log=None).params


plain, dropped = train_copy(model), train_copy(ld.LayerDrop(model, P, P))
acc = {name: evaluate_teacher_forced(model, p, dev)["accuracy"]
       for name, p in (("plain", plain), ("LayerDrop", dropped))}
print(f"dev token accuracy at full depth: plain {acc['plain']:.3f}, LayerDrop {acc['LayerDrop']:.3f}")
assert acc["plain"] > 0.95 and acc["LayerDrop"] > acc["plain"] - 0.05

# %% [markdown]
# ## Step 2 — cut to half depth, no retraining
#
# "Every Other" at rate r drops the layers at depth `d` (1, 2, ...) with `d = 0 mod floor(1/r)`:
# at r = 1/2, the second layer of each stack. The plain model falls apart without the layers it
# was trained with; the LayerDrop model keeps most of its accuracy.

# %%
print(f"{'kept layers (enc + dec)':<24} {'plain':>6} {'LayerDrop':>10}")
cut = {}
for rate_enc, rate_dec in ((0.5, 0.5), (0.5, 0.0), (0.0, 0.5)):
    row = []
    for p in (plain, dropped):
        small, small_params = ld.prune_every_other(model, p, rate_enc, rate_dec)
        row.append(evaluate_teacher_forced(small, small_params, dev)["accuracy"])
    layers = f"{small.config.enc_layers} + {small.config.dec_layers}"
    cut[layers] = row
    print(f"{layers:<24} {row[0]:>6.3f} {row[1]:>10.3f}")
assert ld.every_other(2, 0.5) == [0] and ld.every_other(12, 0.25) == [0, 1, 2, 4, 5, 6, 8, 9, 10]
assert cut["1 + 1"][1] > cut["1 + 1"][0] + 0.3 and cut["2 + 1"][1] > cut["2 + 1"][0] + 0.3

# %% [markdown]
# ## Step 3 — a smaller model, not a masked one
#
# Pruning renumbers the kept layers (`dec.2` becomes `dec.1`, ...) and writes a config with fewer
# layers, so the file holds only what runs. Its output is exactly the full model's with the
# dropped layers skipped.

# %%
small, small_params = ld.prune_every_other(model, dropped, 0.5, 0.5)
src, tgt_in, _ = batch
full_logits, _ = model.forward(dropped, src, tgt_in, skip_layers={"enc.1", "dec.1"})
small_logits, _ = small.forward(small_params, src, tgt_in)
with tempfile.TemporaryDirectory() as tmp:
    full_bytes = save_tz(os.path.join(tmp, "full.tz"), {n: pack_float(W) for n, W in dropped.items()},
                         config.to_dict())
    small_bytes = save_tz(os.path.join(tmp, "small.tz"), {n: pack_float(W) for n, W in small_params.items()},
                          small.config.to_dict())
print(f"{len(dropped)} -> {len(small_params)} tensors, {full_bytes:,} -> {small_bytes:,} bytes; "
      f"largest logit difference to the full model with layers skipped: {np.abs(full_logits - small_logits).max():.1e}")
assert np.array_equal(full_logits, small_logits) and small_bytes < 0.6 * full_bytes
