# %% [markdown]
# # 07 — Ternary weights: TWN's threshold, TernaryBERT's training, a 2-bit file on the LUT kernel
#
# **You will:** ternarize the weight matrices of a tiny trained Transformer to {-alpha, 0, +alpha}.
# You derive TWN's optimal scale for a threshold and check it (Li & Liu 2016, arXiv:1605.04711),
# find the exact best threshold by scanning the sorted |W| and compare it with TWN's `0.7 E|W|`,
# check by brute force over all 3^n codes that a threshold is all the search needs, train the
# model through the ternarizer the way TernaryBERT does (Zhang et al., EMNLP 2020,
# arXiv:2009.12812: clip to [-2.5, 2.5], straight-through gradient), and write it at 2 bits per
# weight to a `.tz` file whose matrices then run on the BiQGEMM lookup-table kernel.
#
# **Needs:** tutorial 01 (the model and the copy task); tutorial 04 (the binary case) helps.
#
# **Runs in:** about 15 s on a laptop CPU.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import functools
import itertools
import os
import tempfile

import numpy as np

from tinyzip.compress import ternary as tn
from tinyzip.compressed import dequantize_all, kernel_matmuls, pack_float, unpack
from tinyzip.container import load_tz, save_tz
from tinyzip.data import copy_task
from tinyzip.kernels.lut_gemm import lut_linear, prepare_lut_weights
from tinyzip.nn import optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.packing import packed_nbytes
from tinyzip.train import evaluate_teacher_forced, train

STEPS = 600          # training steps of the float model
TERNARY_STEPS = 150  # training steps through the ternarizer
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 0 — a tiny trained float model
#
# Tutorial 04's model: a one-layer encoder-decoder trained to copy strings, scored by teacher-forced
# token accuracy on held-out strings. TernaryBERT ternarizes every Linear weight with one scale
# per matrix and the word embedding with one scale per token row; we do the same.

# %%
V, D, H, F = 12, 32, 2, 64
config = Seq2SeqConfig(src_vocab=V, tgt_vocab=V, D=D, H=H, F=F, enc_layers=1, dec_layers=1, max_len=8)
model = Seq2Seq(config)
task = dict(vocab_size=V, min_len=2, max_len=6)
batches = functools.partial(copy_task.epoch_batches, seed=0, n_batches=20, batch_size=32, **task)
dev = copy_task.epoch_batches(10**6, seed=0, n_batches=2, batch_size=64, **task)
params = train(model, model.init_params(rng), batches, steps=STEPS, optimizer=optim.adam(), rng=rng,
               schedule=functools.partial(optim.inverse_sqrt_schedule, D=D, warmup=100, scale=2.0),
               log=None).params
granularities = {key: "row" if key == "emb" else "tensor" for key, value in params.items() if value.ndim == 2}
acc_float = evaluate_teacher_forced(model, params, dev)["accuracy"]
W = params["enc.0.ffn.W_1"].astype(np.float64)                    # (D, F), our running example
print(f"float model: dev token accuracy {acc_float:.3f}; {len(granularities)} matrices to ternarize")
assert acc_float > 0.9

# %% [markdown]
# ## Step 1 — codes for a threshold, and the best scale for them
#
# TWN approximates `W ~ alpha T` with `T` in {-1, 0, +1}. For a threshold `Delta`, the codes are
# `T = +1 where W > Delta, -1 where W < -Delta, 0 otherwise` (strict: `|W| = Delta` gives 0). With
# `I` the kept entries, `J(alpha) = ||W - alpha T||^2 = |I| alpha^2 - 2 alpha sum_I |W| + ||W||^2`,
# a parabola whose minimum is `alpha* = mean of the kept |W|`, with
# `J* = ||W||^2 - (sum_I |W|)^2 / |I|`. A fine grid of `alpha` never beats it.

# %%
delta = tn.twn_threshold(W)                                        # 0.7 mean|W|, (1, 1)
T = tn.ternary_codes(W, delta)
alpha = tn.optimal_scale(W, T)
grid = np.linspace(0.0, 2 * alpha.item(), 2001)
J = np.array([np.sum((W - a * T) ** 2) for a in grid])
kept = np.abs(W)[T != 0]
J_star = np.sum((W - alpha * T) ** 2)
print(f"Delta = {delta.item():.5f}, {kept.size} of {W.size} kept, alpha* = {alpha.item():.5f} "
      f"(best grid alpha {grid[J.argmin()]:.5f}); J* = {J_star:.4f}")
assert np.isclose(alpha.item(), kept.mean(), rtol=1e-12) and J_star <= J.min() * (1 + 1e-12)
assert np.isclose(J_star, np.sum(W**2) - kept.sum() ** 2 / kept.size, rtol=1e-10)

# %% [markdown]
# ## Step 2 — the best threshold: a scan, and TWN's 0.7
#
# Putting `alpha*` back, the best threshold maximizes `(sum_I |W|)^2 / |I|`. Only `n` sets `I` can
# come from a threshold (the `k` largest |W|), so `optimal_threshold` sorts |W| and scans them:
# the exact TWN. Is a threshold all the search needs? On 7 weights, a brute force over all
# 3^7 = 2,187 codes `T` (each with its own best `alpha`) finds the same error. TWN instead takes
# `Delta = 0.7 E|W|`, the value that is near-optimal for both a uniform (exact: 2/3 E|W|) and a
# Gaussian (about 0.77 E|W|) weight distribution; on our matrix it costs little.

# %%
w7 = W[0, :7]
best = float(w7 @ w7)
for code in map(np.array, itertools.product([-1.0, 0.0, 1.0], repeat=7)):
    if code @ code and w7 @ code > 0:
        best = min(best, float(w7 @ w7) - float(w7 @ code) ** 2 / float(code @ code))
T7, alpha7 = tn.ternarize(w7[None], clip=None, delta=tn.optimal_threshold(w7[None]))
scan = np.sum((w7 - alpha7 * T7) ** 2)
print(f"7 weights: brute force over 2,187 codes J = {best:.6f}, threshold scan J = {scan:.6f}")
assert np.isclose(best, scan, rtol=1e-12)

exact = tn.optimal_threshold(W)
T_exact, alpha_exact = tn.ternarize(W, clip=None, delta=exact)
J_exact = np.sum((W - alpha_exact * T_exact) ** 2)
print(f"this matrix: exact Delta* = {exact.item() / np.abs(W).mean():.3f} E|W| (J = {J_exact:.4f}); "
      f"0.7 E|W| gives J = {J_star:.4f}, {100 * (J_star / J_exact - 1):.2f}% more")
assert J_exact <= J_star < 1.05 * J_exact

# %% [markdown]
# ## Step 3 — training through the ternarizer (TernaryBERT)
#
# Ternarizing the trained model as it is loses accuracy. TernaryBERT keeps float *latent* weights,
# clips them to [-2.5, 2.5] and ternarizes them in every forward, and sends the gradient straight
# through: `dW = dW_eff` where `-2.5 < W < 2.5`, zero outside (and at the edge). Our weights are far
# inside the clip, so here it is the plain straight-through estimator. (TernaryBERT also distills
# from the float model; tinyzip trains on the task loss alone.)

# %%
method = tn.ternary_method(granularities)
acc_naive = evaluate_teacher_forced(model, method.forward(params)[0], dev)["accuracy"]
retrain = functools.partial(copy_task.epoch_batches, seed=1, n_batches=20, batch_size=32, **task)
latent = train(model, params, retrain, steps=TERNARY_STEPS, optimizer=optim.adam(), rng=rng,
               schedule=lambda t: 3e-4, method=method, log=None).params
eff = method.forward(latent)[0]
acc_ternary = evaluate_teacher_forced(model, eff, dev)["accuracy"]
zeros = np.mean(np.concatenate([eff[key].ravel() == 0 for key in granularities]))
print(f"dev accuracy: float {acc_float:.3f}, ternarized as is {acc_naive:.3f}, "
      f"after {TERNARY_STEPS} latent steps {acc_ternary:.3f}; {100 * zeros:.0f}% of the weights are 0")
assert all(len(np.unique(np.abs(eff[key]))) <= 2 for key, g in granularities.items() if g == "tensor")
assert acc_ternary > max(acc_naive + 0.1, 0.9)      # most of what ternarizing as is lost comes back

# %% [markdown]
# ## Step 4 — two bits per weight, on disk, on the lookup-table kernel
#
# `pack_ternary` stores `T + 1` in 2 bits and one float32 `alpha` per group. Read back, a matrix
# is also a 2-bit binary code: `alpha T = (alpha/2) b_1 + (alpha/2) b_2` with `b_1 = +1 where
# T >= 0`, `b_2 = +1 where T > 0` (check the three cases). So the model's matrices run on the
# BiQGEMM kernel of tutorial 06, unchanged: `kernel_matmuls` gives the model one such layer per
# matrix (at this tiny size each layer dispatches to the dense product, see tutorial 06). We write
# the file, read it back, and force one matrix through the lookup tables to compare with the
# dense product of the dequantized matrix.

# %%
packed = {key: pack_float(value) for key, value in latent.items()}
for key, g in granularities.items():
    packed[key] = tn.pack_ternary(latent[key], g)
    assert packed[key].nbytes == packed_nbytes(latent[key].size, 2) + 4 * (1 if g == "tensor" else V)
codes, alphas = tn.as_binary_codes(np.array([-1, 0, 1]), np.float32(0.5))
assert (alphas[0] * codes[0] + alphas[1] * codes[1]).tolist() == [-0.5, 0.0, 0.5]
with tempfile.TemporaryDirectory() as tmp:
    float_bytes = save_tz(os.path.join(tmp, "float32.tz"), {k: pack_float(v) for k, v in params.items()},
                          config.to_dict())
    tz_bytes = save_tz(os.path.join(tmp, "ternary.tz"), packed, config.to_dict())
    tz = load_tz(os.path.join(tmp, "ternary.tz"))
restored = dequantize_all(tz.packed)
matmuls = kernel_matmuls(tz.packed)
codes, alphas = tn.lut_codes(tz.packed["enc.0.ffn.W_1"])           # (2, D, F) signs, (2, F) alpha/2 each
x = rng.normal(size=(5, D)).astype(np.float32)
y_lut = lut_linear(x, prepare_lut_weights(codes=codes, alphas=alphas), path="lut")
gap = np.abs(y_lut - x @ unpack(tz.packed["enc.0.ffn.W_1"])).max()
acc_file = evaluate_teacher_forced(model, restored, dev)["accuracy"]
print(f"files: {float_bytes} -> {tz_bytes} bytes ({float_bytes / tz_bytes:.2f}x); accuracy read back "
      f"{acc_file:.3f}; {len(matmuls)} matrices on LUT layers; lookup tables vs dense: max gap {gap:.1e}")
assert all(np.array_equal(restored[key], eff[key].astype(np.float32)) for key in granularities)
assert acc_file == acc_ternary and tz_bytes < float_bytes / 2 and gap < 1e-5
assert "emb" not in matmuls                       # one alpha per token row is not a per-unit scale
