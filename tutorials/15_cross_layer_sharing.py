# %% [markdown]
# # 15 — Cross-layer sharing: one set of weights for every layer of a stack
#
# **You will:** build ALBERT's cross-layer parameter sharing (Lan et al., ICLR 2020,
# arXiv:1909.11942, Sec. 3.1): the L layers of a stack are split into G contiguous groups and all
# layers of a group compute with one stored set of weights. You train a shared model from scratch
# next to an ordinary one, check that a shared set's gradient is the sum of its layers'
# gradients, see why tying an already trained model is a different matter, and write a file that
# stores each set once.
#
# **Needs:** tutorial 01 (the model and the copy task).
#
# **Runs in:** about 25 s on a laptop CPU.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import functools
import os
import tempfile

import numpy as np

from tinyzip.compress import cross_layer_sharing as cls
from tinyzip.compress.base import IDENTITY
from tinyzip.compressed import dequantize_all, pack_float
from tinyzip.container import load_tz, save_tz
from tinyzip.data import copy_task
from tinyzip.nn import optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import evaluate_teacher_forced, train

V, D, H, F = 12, 32, 2, 64
STEPS = 600

# %% [markdown]
# ## Step 0 — which layer uses which set
#
# Layer l (0-based) of a stack of L layers with G groups uses set `g(l) = floor(l G / L)`. G = 1
# is ALBERT's default (every layer the same weights); G = L shares nothing. ALBERT's code writes
# the rule as `int(l / L * G)` in floating point, which rounds a few exact integers down: at
# L = G = 22 it puts layers 14 and 15 in one group. We compute it in integers.

# %%
for n_groups in (1, 2, 3, 4, 6, 12):
    print(f"L = 12, G = {n_groups:>2}: " + " ".join(str(cls.group_of(i, 12, n_groups)) for i in range(12)))
albert = [int(i / 22 * 22) for i in range(22)]
print(f"ALBERT's float rule at L = G = 22 gives {len(set(albert))} groups; the integer rule "
      f"{len({cls.group_of(i, 22, 22) for i in range(22)})}")
assert [cls.group_of(i, 12, 4) for i in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and len(set(albert)) == 21

# %% [markdown]
# ## Step 1 — train a shared model from scratch
#
# ALBERT's protocol: the model is shared from its first step. Stored parameters hold one set per
# group, named after the group's first layer (`enc.0.ffn.W_1`); the training method hands every
# layer its group's arrays in the forward pass and sums the layers' gradients in the backward.
# Both models below start from the same initial values (the shared one keeps each group's first
# layer) and see the same batches. With a third of the numbers, the shared model is not worse
# here; in these 600 steps it even learns faster than the plain one (at 400 steps: 0.959 against
# 0.741), so read the comparison as "no loss at this budget", not as a gain from sharing.

# %%
config = Seq2SeqConfig(src_vocab=V, tgt_vocab=V, D=D, H=H, F=F, enc_layers=3, dec_layers=3, max_len=10)
model = Seq2Seq(config)
task = dict(vocab_size=V, min_len=2, max_len=8)
batches = functools.partial(copy_task.epoch_batches, seed=0, n_batches=20, batch_size=32, **task)
dev = copy_task.epoch_batches(10**6, seed=0, n_batches=2, batch_size=64, **task)
init = model.init_params(np.random.default_rng(0))
sharing = cls.SharingMethod(cls.owners(config, {"enc": 1, "dec": 1}, "all", init))


def train_copy(start, method, steps=STEPS, seed=0):
    return train(model, start, batches, steps=steps, optimizer=optim.adam(), rng=np.random.default_rng(seed),
                 schedule=functools.partial(optim.inverse_sqrt_schedule, D=D, warmup=100, scale=1.0),
                 method=method, log=None).params


plain = train_copy(init, IDENTITY)
shared = train_copy(sharing.tie(init, "first"), sharing)
numbers = {"plain": sum(W.size for W in plain.values()), "shared": sum(W.size for W in shared.values())}
accuracy = {"plain": evaluate_teacher_forced(model, plain, dev)["accuracy"],
            "shared": evaluate_teacher_forced(model, sharing.forward(shared)[0], dev)["accuracy"]}
for name in ("plain", "shared"):
    print(f"{name:>6}: {numbers[name]:>6,} numbers stored, dev token accuracy {accuracy[name]:.3f}")
assert numbers["shared"] < 0.4 * numbers["plain"] and accuracy["shared"] > 0.9

# %% [markdown]
# ## Step 2 — a shared set's gradient is the sum of its layers' gradients
#
# Tying is a function: theta_l = phi for every layer l of the group. By the chain rule,
# dL/dphi = sum over l of dL/dtheta_l. The method's backward does exactly that sum; a central
# difference of the loss checks one entry.

# %%
src, tgt_in, tgt_out = dev[0]
eff, cache = sharing.forward(shared)
loss, per_layer, _ = model.loss_and_grads(eff, src, tgt_in, tgt_out)
grads = sharing.backward(per_layer, cache)
summed = sum(per_layer[f"enc.{i}.ffn.W_2"] for i in range(3))
step = dict(shared)
step["enc.0.ffn.W_2"] = shared["enc.0.ffn.W_2"].copy()
step["enc.0.ffn.W_2"][3, 5] += 1e-3
up = model.loss_and_grads(sharing.forward(step)[0], src, tgt_in, tgt_out)[0]
step["enc.0.ffn.W_2"][3, 5] -= 2e-3
down = model.loss_and_grads(sharing.forward(step)[0], src, tgt_in, tgt_out)[0]
print(f"dL/dphi[3, 5] = {grads['enc.0.ffn.W_2'][3, 5]:+.5f}; sum of the 3 layers' {summed[3, 5]:+.5f}; "
      f"central difference {(up - down) / 2e-3:+.5f}")
assert np.array_equal(grads["enc.0.ffn.W_2"], summed)
assert abs(grads["enc.0.ffn.W_2"][3, 5] - (up - down) / 2e-3) < 1e-3 * max(1.0, abs(summed[3, 5]))

# %% [markdown]
# ## Step 3 — tying a trained model is not the same thing
#
# The plain model's three layers learned different functions. Replacing them by their mean
# gives a model that computes none of them; a short fine-tuning of the tied model brings back
# part of the accuracy. This is how the README's rows compress the shipped model (which was
# trained unshared); ALBERT itself shares from the start, as in step 1.

# %%
tied = sharing.tie(plain, "mean")
tied_accuracy = evaluate_teacher_forced(model, sharing.forward(tied)[0], dev)["accuracy"]
tuned = train_copy(tied, sharing, steps=150, seed=1)
tuned_accuracy = evaluate_teacher_forced(model, sharing.forward(tuned)[0], dev)["accuracy"]
print(f"plain model tied at its layer means: {tied_accuracy:.3f}; after 150 steps: {tuned_accuracy:.3f}")
assert tied_accuracy < 0.5 and tuned_accuracy > tied_accuracy + 0.3

# %% [markdown]
# ## Step 4 — each set stored once
#
# In the `.tz` file the owner of a set is an ordinary tensor; every other layer's tensor is a
# `"shared"` entry that names its owner and holds no array. Loading resolves it to the owner's
# array (the same object: a shared model also uses less memory at run time).

# %%
packed = {n: pack_float(W) for n, W in shared.items()}
packed.update({n: cls.pack_shared(owner, plain[n].shape) for n, owner in sharing.owner_of.items()})
with tempfile.TemporaryDirectory() as tmp:
    plain_bytes = save_tz(os.path.join(tmp, "plain.tz"), {n: pack_float(W) for n, W in plain.items()},
                          config.to_dict())
    shared_bytes = save_tz(os.path.join(tmp, "shared.tz"), packed, config.to_dict())
    loaded = dequantize_all(load_tz(os.path.join(tmp, "shared.tz")).packed)
print(f"file {plain_bytes:,} -> {shared_bytes:,} bytes; dec.2's W_1 is dec.0's array: "
      f"{loaded['dec.2.ffn.W_1'] is loaded['dec.0.ffn.W_1']}")
assert shared_bytes < 0.5 * plain_bytes and loaded["dec.2.ffn.W_1"] is loaded["dec.0.ffn.W_1"]
