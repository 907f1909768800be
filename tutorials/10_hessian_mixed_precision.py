# %% [markdown]
# # 10 — Hessian mixed precision: which layers get the bits (Q-BERT)
#
# **You will:** measure how sharply a tiny trained Transformer's loss curves in each layer's
# weights, by the top eigenvalue of that layer's Hessian (power iteration on Hessian-vector
# products); turn the eigenvalues into Q-BERT's sensitivity `Omega = |mean| + std` over batches
# (Shen et al., AAAI 2020, arXiv:1909.05840); give the most sensitive layers more bits; and check
# the choice against every other choice, by brute force. Then you write the mixed-precision file.
#
# **Needs:** tutorial 01 (the model and the copy task), tutorial 05 (uniform quantization).
#
# **Runs in:** about 6 s on a laptop CPU.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import functools
import itertools
import os
import tempfile

import numpy as np

from tinyzip.compress import hessian as hs
from tinyzip.compress.uniform import UniformWeightQuantizer
from tinyzip.compressed import dequantize_all, pack_float
from tinyzip.container import load_tz, save_tz
from tinyzip.data import copy_task
from tinyzip.nn import optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import evaluate_teacher_forced, train

STEPS = 600  # training steps of the float model
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 0 — a tiny trained model with four layers
#
# Tutorial 01's copy task, with two encoder and two decoder layers (D = 32): four layers to rank.
# Q-BERT's unit is one layer: all the weight matrices of `enc.0`, of `enc.1`, and so on.

# %%
V, D, H, F = 12, 32, 2, 64
config = Seq2SeqConfig(src_vocab=V, tgt_vocab=V, D=D, H=H, F=F, enc_layers=2, dec_layers=2, max_len=8)
model = Seq2Seq(config)
task = dict(vocab_size=V, min_len=2, max_len=6)
batches = functools.partial(copy_task.epoch_batches, seed=0, n_batches=20, batch_size=32, **task)
dev = copy_task.epoch_batches(10**6, seed=0, n_batches=2, batch_size=64, **task)
params = train(model, model.init_params(rng), batches, steps=STEPS, optimizer=optim.adam(), rng=rng,
               schedule=functools.partial(optim.inverse_sqrt_schedule, D=D, warmup=100, scale=1.0),
               log=None).params
acc_float = evaluate_teacher_forced(model, params, dev)["accuracy"]
blocks = hs.layer_blocks(params)
print(f"float model: dev token accuracy {acc_float:.3f}; layers "
      + ", ".join(f"{b} ({sum(params[n].size for n in names):,} weights)" for b, names in blocks.items()))
assert acc_float > 0.95 and list(blocks) == ["enc.0", "enc.1", "dec.0", "dec.1"]

# %% [markdown]
# ## Step 1 — a Hessian-vector product without the Hessian
#
# A layer of 8,192 weights has a Hessian of 67 million entries; power iteration needs only its
# product with a vector. Q-BERT differentiates `g . v` a second time; tinyzip's backward passes
# are written by hand, so `H v` is the central difference of two exact gradients,
# `(g(theta + eps v) - g(theta - eps v)) / 2 eps`, in float64. One catch: ReLU. A step that moves a
# pre-activation across 0 makes the gradient jump, and the difference divides that jump by
# `2 eps`. `model_grad_fn` freezes every ReLU's on/off pattern at `theta` (the models'
# `relu_gates`), which is what the exact second derivative does too. Check: `v^T H v` must be the
# curvature of the loss along `v`, measured from the loss alone.

# %%
batch = copy_task.epoch_batches(10**5, seed=3, n_batches=1, batch_size=32, **task)[0]
names = blocks["dec.0"]
v = {n: rng.standard_normal(params[n].shape) for n in names}
norm = np.sqrt(sum(np.sum(x * x) for x in v.values()))
v = {n: x / norm for n, x in v.items()}
grad_fn = hs.model_grad_fn(model, params, batch)
vHv = sum(np.sum(v[n] * Hv) for n, Hv in hs.hessian_vector_product(grad_fn, params, v).items())
gates, h = {}, 1e-3
p64 = {n: W.astype(np.float64) for n, W in params.items()}
loss = lambda p: model.loss_and_grads(p, *batch, relu_gates=gates)[0]  # noqa: E731
at_theta = loss(p64)                                             # records theta's gates
curvature = (loss({**p64, **{n: p64[n] + h * v[n] for n in names}}) - 2 * at_theta
             + loss({**p64, **{n: p64[n] - h * v[n] for n in names}})) / h ** 2
print(f"v^T H v = {vHv:.6e}; (L(theta + h v) - 2 L(theta) + L(theta - h v)) / h^2 = {curvature:.6e}")
assert abs(vHv - curvature) < 1e-4 * abs(curvature)

# %% [markdown]
# ## Step 2 — the top eigenvalue of each layer, on three batches
#
# Power iteration (PyHessian's protocol, the same group's code): start from a random `v`, set
# `v = H v / ||H v||`, read `lambda = v^T H v`, stop when `lambda` changes by less than 0.1%.
# It finds the eigenvalue of largest magnitude; a negative one would say the model is not at a
# minimum of that batch's loss. Q-BERT takes it on several batches and scores each layer by
# `Omega = |mean| + std`: sharp on average, or unstable between batches, both count.

# %%
hessian_batches = copy_task.epoch_batches(10**5, seed=3, n_batches=3, batch_size=32, **task)
sens = hs.block_sensitivities(model, params, hessian_batches, np.random.default_rng(0))
for b, s in sens.items():
    print(f"{b}: top eigenvalues " + ", ".join(f"{lam:+.3f}" for lam in s["eigenvalues"])
          + f"  ->  Omega {s['omega']:.3f}")
omega = {b: s["omega"] for b, s in sens.items()}
assert all(s["omega"] == hs.sensitivity(s["eigenvalues"]) for s in sens.values())

# %% [markdown]
# ## Step 3 — the bits follow Omega; is that the best choice?
#
# Two of the four layers get 4 bits, the other two 2 bits (symmetric per-channel uniform weights,
# tutorial 05, no retraining). Q-BERT's rule gives the 4 bits to the two largest Omegas. With four
# layers there are only six ways to choose two, so we can measure them all.

# %%
def accuracy_with(high_layers, low=2, high=4):
    widths = hs.bits_by_name(params, {b: high if b in high_layers else low for b in blocks})
    eff, _ = hs.mixed_precision_method(widths).forward(params)
    return evaluate_teacher_forced(model, eff, dev)["accuracy"]


bits = hs.assign_bits(omega, n_high=2, low=2, high=4)
chosen = tuple(b for b in blocks if bits[b] == 4)
reverse = tuple(b for b in blocks if b not in chosen)
every = {pair: accuracy_with(pair) for pair in itertools.combinations(blocks, 2)}
for pair, acc in sorted(every.items(), key=lambda item: -item[1]):
    tag = " <- Q-BERT's choice" if pair == chosen else " <- the reverse" if pair == reverse else ""
    print(f"4 bits for {' + '.join(pair):<13} accuracy {acc:.3f}{tag}")
rank = sorted(every.values(), reverse=True).index(every[chosen]) + 1
all_low, all_high = accuracy_with(()), accuracy_with(tuple(blocks))
print(f"Q-BERT's choice ranks {rank} of 6; all layers at 2 bits {all_low:.3f}, all at 4 bits {all_high:.3f}")
assert all_low < min(every.values()) and max(every.values()) <= all_high + 0.01

# %% [markdown]
# On this tiny model the ranking does not find the best pair: the top eigenvalue is one
# direction of a layer's curvature, while quantization moves every weight at once. By a
# second-order Taylor expansion the loss grows by about `g . d + d^T H d / 2` for the error
# `d = Q(W) - W`; `lambda_max ||d||^2 / 2` bounds the second term, and very loosely, because `d`
# spreads over all the directions, most of them flat. The shipped translation model is kinder to
# Q-BERT: there its choice is the best of the six, at 3/4 bits and at 2/3 (README, "Hessian mixed
# precision"). Check a heuristic against brute force whenever the search is small enough.

# %%
d = {n: UniformWeightQuantizer(2).forward(params[n])[0].astype(np.float64) - params[n] for n in names}
d_norm2 = sum(np.sum(x * x) for x in d.values())
dHd = sum(np.sum(d[n] * Hd) for n, Hd in hs.hessian_vector_product(grad_fn, params, d).items())
lam = sens["dec.0"]["eigenvalues"][0]
print(f"dec.0 at 2 bits: d^T H d / ||d||^2 = {dHd / d_norm2:.5f}, against lambda_max = {lam:.3f}")
assert abs(dHd) / d_norm2 < 0.1 * abs(lam)

# %% [markdown]
# ## Step 4 — the mixed-precision file
#
# Each matrix is an ordinary `uniform` tensor at its own width, so nothing new is needed to read
# it; the embedding stays at 8 bits (as in Q-BERT), biases and LayerNorm in float32.

# %%
widths = hs.bits_by_name(params, bits)
packed = {n: pack_float(W) for n, W in params.items()}
packed.update(hs.pack_mixed(params, widths))
with tempfile.TemporaryDirectory() as tmp:
    float_bytes = save_tz(os.path.join(tmp, "float32.tz"), {n: pack_float(W) for n, W in params.items()},
                          config.to_dict())
    tz_bytes = save_tz(os.path.join(tmp, "mixed.tz"), packed, config.to_dict())
    restored = dequantize_all(load_tz(os.path.join(tmp, "mixed.tz")).packed)
acc_file = evaluate_teacher_forced(model, restored, dev)["accuracy"]
print(f"{hs.average_bits(params, widths):.2f} bits per weight on average: {float_bytes:,} -> {tz_bytes:,} bytes "
      f"({float_bytes / tz_bytes:.2f}x); accuracy read back {acc_file:.3f} (measured above {every[chosen]:.3f})")
assert tz_bytes < float_bytes / 4 and acc_file == every[chosen]
