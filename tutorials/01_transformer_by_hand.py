# %% [markdown]
# # 01 — The Transformer by hand
#
# **You will:** build a tiny encoder-decoder Transformer (Vaswani et al. 2017, arXiv:1706.03762)
# whose forward *and* backward passes are plain NumPy; check a layer's hand-written gradient
# against finite differences; check one weight of the whole model the same way; then train it to
# copy strings and watch the loss fall.
#
# **Needs:** NumPy, and the shapes notation: `B` batch, `S`/`T` source/target length, `D` width,
# `H` heads, `F` FFN width, `V` vocabulary. Weights are `W: (D_in, D_out)` and `y = x @ W + b`.
#
# **Runs in:** about 20 s on a laptop CPU.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import functools
import math

import numpy as np

from tinyzip.data import copy_task
from tinyzip.nn import gradcheck, layers, optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import train

STEPS = 250  # training steps in Step 5; more steps, better copies
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 1 — a tiny model is a config plus a flat dict of arrays
#
# `Seq2Seq` holds only its config. The parameters live in a flat `dict[str, ndarray]` with dotted
# names (`enc.0.attn.W_q`), and every gradient comes back in a dict with the same keys. With shared
# embeddings (Sec. 3.4 of the paper) one matrix `emb: (V, D)` embeds source and target tokens and
# is also the output projection. We count the parameters by hand from the layer shapes: an
# attention block has four `(D, D)` matrices plus biases; the FFN has `(D, F)` and `(F, D)`; each
# LayerNorm has `gamma` and `beta` of `(D,)`; the encoder layer has 2 LayerNorms, the decoder
# layer 3 and a second (cross-)attention.

# %%
V, D, H, F = 12, 32, 2, 64
config = Seq2SeqConfig(src_vocab=V, tgt_vocab=V, D=D, H=H, F=F, enc_layers=1, dec_layers=1, max_len=16)
model = Seq2Seq(config)
params = model.init_params(rng)

attention = 4 * (D * D + D)
ffn = D * F + F + F * D + D
by_hand = (V * D + V) + (attention + ffn + 2 * 2 * D) + (2 * attention + ffn + 3 * 2 * D)
n_params = sum(p.size for p in params.values())
print(f"{len(params)} arrays, {n_params:,} parameters (by hand: {by_hand:,})")
assert n_params == by_hand

# %% [markdown]
# ## Step 2 — one layer's backward, checked against central differences
#
# Each layer is a pure pair: `out, cache = *_forward(x, ...)` and
# `grads = *_backward(dout, cache)`. LayerNorm (Ba et al. 2016) is
# `y = gamma * (x - mu) / sqrt(var + eps) + beta`. The check uses a scalar "fake loss"
# `L = sum(y * dout)` with a random `dout`, so `dL/dy = dout`, and compares the analytic gradient
# of `gamma` with `(L(gamma + h e_i) - L(gamma - h e_i)) / 2h` in float64.

# %%
x = rng.normal(size=(3, 5, 8))
gamma, beta = rng.normal(size=8), rng.normal(size=8)
y, cache = layers.layer_norm_forward(x, gamma, beta)
dout = rng.normal(size=y.shape)
dx, dgamma, dbeta = layers.layer_norm_backward(dout, cache)
numeric = gradcheck.numerical_grad(lambda g: np.sum(layers.layer_norm_forward(x, g, beta)[0] * dout), gamma)
error = np.max(np.abs(dgamma - numeric))
print(f"LayerNorm dgamma: max |analytic - numeric| = {error:.2e}")
assert error < 1e-7
gradcheck.check_backward(layers.layer_norm_forward, layers.layer_norm_backward, [x, gamma, beta])
print("check_backward passed for dx, dgamma and dbeta")

# %% [markdown]
# ## Step 3 — the loss of an untrained model
#
# A batch of the copy task is `(src (B, S), tgt_in (B, T), tgt_out (B, T))`: the target sequence
# shifted right after BOS is the decoder's input, the same sequence followed by EOS is what it
# must predict (PAD = 0 positions are ignored). An untrained model's logits are roughly
# independent with mean 0 and some variance `s2` (about 1 here: a unit-variance LayerNorm output
# times embedding rows of variance `1/D`, summed over `D`). The expected cross-entropy is then
# about `log(V * E[exp(z)]) - E[z] = log V + s2 / 2`, for the label-smoothed target too, since
# smoothing only mixes in more classes with the same expectation.

# %%
src, tgt_in, tgt_out = copy_task.copy_batch(rng, 8, vocab_size=V, min_len=2, max_len=6)
print("src[0]    ", src[0])
print("tgt_in[0] ", tgt_in[0])
print("tgt_out[0]", tgt_out[0])
logits, _ = model.forward(params, src, tgt_in)  # (B, T, V)
loss0, grads, stats = model.loss_and_grads(params, src, tgt_in, tgt_out)
s2 = logits.var(axis=-1).mean()
expected = math.log(V) + s2 / 2
print(f"logits {logits.shape}, variance {s2:.2f}; initial loss {loss0:.3f} vs log V + s2/2 = "
      f"{expected:.3f} ({stats['tokens']} target tokens)")
assert logits.shape == tgt_in.shape + (V,) and abs(loss0 - expected) < 0.3

# %% [markdown]
# ## Step 4 — one weight of the whole model, checked by finite differences
#
# The model's backward chains every layer's backward in reverse order. If any of them were wrong,
# the gradient of a weight deep inside would disagree with finite differences of the *whole*
# loss. We check a few entries of the encoder's first FFN matrix in float64 (no dropout: `rng`
# is not passed, so the loss is a deterministic function of the weights).

# %%
params64 = {k: v.astype(np.float64) for k, v in params.items()}
_, grads64, _ = model.loss_and_grads(params64, src, tgt_in, tgt_out)
W = params64["enc.0.ffn.W_1"]
worst = 0.0
for i, j in [(0, 0), (3, 17), (31, 63)]:
    old, h = W[i, j], 1e-6
    W[i, j] = old + h
    up = model.loss_and_grads(params64, src, tgt_in, tgt_out)[0]
    W[i, j] = old - h
    down = model.loss_and_grads(params64, src, tgt_in, tgt_out)[0]
    W[i, j] = old
    numeric = (up - down) / (2 * h)
    worst = max(worst, abs(numeric - grads64["enc.0.ffn.W_1"][i, j]) / max(abs(numeric), 1e-8))
print(f"whole-model check of enc.0.ffn.W_1: worst relative error {worst:.2e}")
assert worst < 1e-5

# %% [markdown]
# ## Step 5 — train it to copy
#
# The training step is five lines (see `tinyzip/train.py`): forward with the (here uncompressed)
# weights, hand-written backward, global-norm gradient clipping (Pascanu et al. 2013), an Adam
# update with the paper's `beta1 = 0.9, beta2 = 0.98, eps = 1e-9`, and the paper's learning rate,
# Eq. (3): `lr = D^-0.5 * min(step^-0.5, step * warmup^-1.5)`: a linear warm-up, then decay as
# `1/sqrt(step)`. Dropout (0.1) is on because `train` passes its `rng` to the model. Each epoch
# is 20 fresh batches of 32 random strings.

# %%
batches = functools.partial(copy_task.epoch_batches, seed=0, n_batches=20, batch_size=32,
                            vocab_size=V, min_len=2, max_len=6)
result = train(model, params, batches, steps=STEPS, optimizer=optim.adam(), rng=rng,
               schedule=functools.partial(optim.inverse_sqrt_schedule, D=D, warmup=50), log=None)
first, last = np.mean(result.losses[:10]), np.mean(result.losses[-10:])
print(f"mean loss of the first 10 steps {first:.3f}, of the last 10 steps {last:.3f}")
assert last < 0.5 * first

# %% [markdown]
# ## Step 6 — does it copy?
#
# Greedy decoding: encode the source once, then feed the decoder its own best guess one token at
# a time (`decode_step` keeps each layer's keys and values, so every step costs one position).
# We count how many fresh strings, never seen in training, come back exactly.

# %%
src, _, tgt_out = copy_task.copy_batch(np.random.default_rng(123), 64, vocab_size=V, min_len=2, max_len=6)
enc_state = model.encode(result.params, src)
tokens, state = np.full(len(src), copy_task.BOS), None
outputs = []
for _ in range(tgt_out.shape[1]):
    logp, state = model.decode_step(result.params, enc_state, tokens, state)  # (B, V)
    tokens = logp.argmax(axis=-1)                                             # (B,)
    outputs.append(tokens)
outputs = np.stack(outputs, axis=1)                                           # (B, T)
exact = np.mean([(o == t)[t != copy_task.PAD].all() for o, t in zip(outputs, tgt_out)])
print("src   ", src[0], "\ncopied", outputs[0])
print(f"{exact:.0%} of 64 new strings copied exactly (with EOS)")
assert exact > 0.5
