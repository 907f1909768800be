# %% [markdown]
# # 04 — Binary weights: sign, scale, straight-through
#
# **You will:** binarize the weight matrices of a tiny trained Transformer to one bit each. You
# check BinaryNet's sign convention (Courbariaux et al. 2016, arXiv:1602.02830), find XNOR-Net's
# optimal scale `alpha = mean|W|` (Rastegari et al., ECCV 2016, arXiv:1603.05279) by brute force
# and on a grid, verify the clipped straight-through gradient, retrain the model through the
# binarizer with latent float weights, and write it to a `.tz` file at one bit per weight. A last
# step shows Word2Bits' fixed levels (Lam 2018, arXiv:1803.05651) as the same format with a
# fixed scale.
#
# **Needs:** tutorial 01 (the model, its training loop and the copy task).
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

from tinyzip.compress import binarization as bz
from tinyzip.compressed import dequantize_all, pack_float
from tinyzip.container import load_tz, save_tz
from tinyzip.data import copy_task
from tinyzip.nn import gradcheck, optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.packing import packed_nbytes
from tinyzip.train import evaluate_teacher_forced, train

STEPS = 600          # training steps of the float model
BINARY_STEPS = 200   # retraining steps through the binarizer
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 0 — a tiny trained float model
#
# The same tiny encoder-decoder as in tutorial 01, trained to copy strings; we report its
# teacher-forced token accuracy on held-out strings. We will binarize every weight matrix except
# the shared embedding `emb`, which is also the output layer (BinaryNet, too, keeps its first
# and last layers in full precision).

# %%
V, D, H, F = 12, 32, 2, 64
config = Seq2SeqConfig(src_vocab=V, tgt_vocab=V, D=D, H=H, F=F, enc_layers=1, dec_layers=1, max_len=8)
model = Seq2Seq(config)
task = dict(vocab_size=V, min_len=2, max_len=6)
batches = functools.partial(copy_task.epoch_batches, seed=0, n_batches=20, batch_size=32, **task)
dev = copy_task.epoch_batches(10**6, seed=0, n_batches=2, batch_size=64, **task)
result = train(model, model.init_params(rng), batches, steps=STEPS, optimizer=optim.adam(), rng=rng,
               schedule=functools.partial(optim.inverse_sqrt_schedule, D=D, warmup=100, scale=2.0),
               log=None)
params = result.params
names = [key for key, value in params.items() if value.ndim == 2 and key != "emb"]
acc_float = evaluate_teacher_forced(model, params, dev)["accuracy"]
W = params["enc.0.ffn.W_1"].astype(np.float64)                    # (D, F), our running example
print(f"float model: dev token accuracy {acc_float:.3f}; {len(names)} matrices to binarize")
assert acc_float > 0.9

# %% [markdown]
# ## Step 1 — the sign, with sign(0) = +1
#
# BinaryNet's deterministic binarization is `B = +1 if w >= 0 else -1`. NumPy's `np.sign` maps 0
# to 0, which is not a bit; `bz.sign` maps 0 (and -0.0) to +1, so every weight gets one of two
# values. The sign is the one that makes `B * w = |w|`.

# %%
w = np.array([-2.0, -0.3, -0.0, 0.0, 0.4, 1.5])
print("w         ", w, "\nnp.sign(w)", np.sign(w), "\nbz.sign(w)", bz.sign(w))
assert set(bz.sign(w)) == {-1, 1} and bz.sign(w)[2] == bz.sign(w)[3] == 1
B = bz.sign(W)
assert np.array_equal(B * W, np.abs(W)) and np.array_equal(B[W != 0], np.sign(W[W != 0]))

# %% [markdown]
# ## Step 2 — the optimal scale (XNOR-Net)
#
# `sign(W)` alone has entries of size 1, far from the weights' scale. XNOR-Net approximates
# `W ~ alpha B` and minimises, over one group of `n` weights,
#
# `J(B, alpha) = ||W - alpha B||^2 = alpha^2 n - 2 alpha W.B + ||W||^2`.
#
# For any `alpha > 0`, `-2 alpha W.B` is smallest when `B = sign(W)`; then `dJ/dalpha = 0` gives
# `alpha* = W.B / n = mean|W|`, and `J* = ||W||^2 - n alpha*^2`. First a brute force on 8
# weights: all 256 sign patterns, each with its own best `alpha >= 0`. Then the whole matrix: a fine
# grid of `alpha` values never beats `mean|W|`.

# %%
w8 = W[0, :8]
best = min(np.sum((w8 - max(b @ w8 / 8, 0.0) * b) ** 2)
           for b in map(np.array, itertools.product([-1.0, 1.0], repeat=8)))
closed = np.sum((w8 - np.mean(np.abs(w8)) * bz.sign(w8)) ** 2)
print(f"8 weights: best of 256 sign patterns J = {best:.6f}, sign + mean|w| J = {closed:.6f}")
assert np.isclose(best, closed, rtol=1e-12, atol=0)

alpha = bz.optimal_scale(W, "tensor")                               # (1, 1)
grid = np.linspace(0.0, 2 * alpha.item(), 2001)                     # (2001,)
J = np.array([np.sum((W - a * B) ** 2) for a in grid])              # (2001,)
J_star = np.sum((W - alpha * B) ** 2)
print(f"alpha* = mean|W| = {alpha.item():.5f}; best grid alpha {grid[J.argmin()]:.5f}; "
      f"J* = {J_star:.4f} = ||W||^2 - n alpha*^2 = {np.sum(W**2) - W.size * alpha.item()**2:.4f}")
assert J_star <= J.min() * (1 + 1e-12) and abs(grid[J.argmin()] - alpha.item()) <= grid[1] - grid[0]
assert np.isclose(J_star, np.sum(W**2) - W.size * alpha.item() ** 2, rtol=1e-10)

alpha_out = bz.optimal_scale(W, "output")                           # (1, F): one per output unit
J_out = np.sum((W - bz.binarize(W, "output")) ** 2)
print(f"one alpha per output unit {alpha_out.shape}: J = {J_out:.4f} <= one per tensor J = {J_star:.4f}")
assert J_out <= J_star            # the per-tensor alpha is one choice per column: the optimum is no worse

# %% [markdown]
# ## Step 3 — the straight-through estimator
#
# `sign` has zero derivative almost everywhere, so BinaryNet trains a real-valued *latent* weight
# `r` and passes the gradient straight through the sign, cancelled where `|r| > 1`:
# `g_r = g_q 1(|r| <= 1)`. It is the derivative of `Htanh(r) = clip(r, -1, 1)`, used in place of
# `sign` on the way back. At `|r| = 1` exactly the gradient still passes.
#
# With the scale `alpha(W) = mean|W|` the forward is `alpha(W) sign(W)`, and `binarize_backward`
# returns the exact gradient of the surrogate `alpha(W) sign(W) + alpha_0 Htanh(W)` at
# `alpha_0 = alpha(W)`: the STE term plus `alpha`'s own gradient `sign(W_i) / n`. We check that
# by central differences, in float64, at weights away from the kinks 0 and +-1.

# %%
r = np.array([[-1.5, -1.0, -0.3], [0.0, 0.7, 1.0], [2.0, -0.9, 1.2]])
g_q = np.ones_like(r)
g_r = bz.binarize_backward(g_q, bz.binarize_forward(r, None)[1])
print("r  \n", r, "\ng_r\n", g_r)
assert np.array_equal(g_r, (np.abs(r) <= 1).astype(float))

Ws = rng.uniform(0.1, 0.9, size=(4, 5)) * rng.choice([-1.0, 1.0], size=(4, 5))
Ws[0, :2] = [1.3, -1.6]                                             # two latents outside [-1, 1]
dout = rng.normal(size=Ws.shape)
_, cache = bz.binarize_forward(Ws, "output")
alpha0 = bz.optimal_scale(Ws, "output")
numeric = gradcheck.numerical_grad(lambda Wp: np.sum(dout * (              # the surrogate's gradient
    bz.optimal_scale(Wp, "output") * bz.sign(Wp) + alpha0 * np.clip(Wp, -1, 1))), Ws)
analytic = bz.binarize_backward(dout, cache)
error = np.max(np.abs(analytic - numeric))
print(f"scaled STE vs central differences of the surrogate: max error {error:.1e}")
assert np.allclose(analytic, numeric, rtol=1e-6, atol=1e-8)

# %% [markdown]
# ## Step 4 — training through the binarizer
#
# First the naive way: binarize the trained model and stop. Then BinaryNet's way: keep the float
# weights as latents, run every forward with `alpha sign(W)`, send the gradient back through the
# STE, let Adam update the latents, and clip them to `[-1, 1]` after every step (the method's
# `after_step`), so no latent drifts so far that its sign can never flip back. We start from the
# float model, clipped.

# %%
method = bz.binarization_method(names, granularity="output")
acc_naive = evaluate_teacher_forced(model, method.forward(params)[0], dev)["accuracy"]
retrain = functools.partial(copy_task.epoch_batches, seed=1, n_batches=20, batch_size=32, **task)
latent = train(model, bz.clip_latent(params, names), retrain, steps=BINARY_STEPS, optimizer=optim.adam(),
               rng=rng, schedule=lambda t: 1e-3, method=method, log=None).params
eff = method.forward(latent)[0]
acc_binary = evaluate_teacher_forced(model, eff, dev)["accuracy"]
at_edge = sum(int(np.sum(np.abs(latent[key]) == 1.0)) for key in names)
print(f"dev accuracy: float {acc_float:.3f}, binarized as is {acc_naive:.3f}, "
      f"after {BINARY_STEPS} latent steps {acc_binary:.3f}; {at_edge} latents sit at the clip +-1")
assert all(np.abs(latent[key]).max() <= 1.0 for key in names)
assert all(np.array_equal(np.abs(eff[key]), np.broadcast_to(bz.optimal_scale(latent[key]), eff[key].shape))
           for key in names)                        # every column is +-alpha_j, nothing else
assert acc_binary > acc_naive and acc_binary > acc_float - 0.05

# %% [markdown]
# ## Step 5 — one bit per weight, on disk
#
# `pack_binary` stores the signs as a bit plane, `ceil(n / 8)` bytes (`W >= 0` -> 1, so sign(0)
# = +1 again), plus one float32 `alpha` per output unit. The embedding, biases and LayerNorms stay
# float32. A `(D_in, D_out)` matrix therefore shrinks by `32 D_in / (D_in + 32)`, not 32: for our
# 32 x 32 matrices the 32 scales weigh as much as the 1,024 sign bits (a `(1024, 1024)` matrix would
# get 31x). We write the binarized model and the float model as `.tz` files, read the binary one
# back, and check it is exactly the model we trained: same weights, same accuracy.

# %%
packed = {key: pack_float(value) for key, value in latent.items()}
for key in names:
    packed[key] = bz.pack_binary(latent[key], "output")
    n_in, n_out = latent[key].shape
    assert packed[key].nbytes == packed_nbytes(n_in * n_out, 1) + 4 * n_out     # bits + scales
    assert packed[key].float32_nbytes * (n_in + 32) == 32 * n_in * packed[key].nbytes
with tempfile.TemporaryDirectory() as tmp:
    float_bytes = save_tz(os.path.join(tmp, "float32.tz"), {k: pack_float(v) for k, v in params.items()},
                          config.to_dict())
    tz_bytes = save_tz(os.path.join(tmp, "binary.tz"), packed, config.to_dict())
    restored = dequantize_all(load_tz(os.path.join(tmp, "binary.tz")).packed)
acc_file = evaluate_teacher_forced(model, restored, dev)["accuracy"]
matrix_f32 = sum(packed[key].float32_nbytes for key in names)
matrix_packed = sum(packed[key].nbytes for key in names)
print(f"matrices: {matrix_f32} -> {matrix_packed} bytes ({matrix_f32 / matrix_packed:.1f}x); "
      f"files: {float_bytes} -> {tz_bytes} bytes ({float_bytes / tz_bytes:.2f}x); "
      f"accuracy read back {acc_file:.3f}")
assert all(np.array_equal(restored[key], eff[key]) for key in latent) and acc_file == acc_binary
assert tz_bytes < float_bytes

# %% [markdown]
# ## Step 6 — Word2Bits: the same bits, a fixed scale
#
# Word2Bits quantizes word vectors to fixed levels instead of a learned or computed scale: with
# 1 bit, `Q(x) = +1/3` if `x >= 0` else `-1/3`; with 2 bits, `sign(x) * (1/4 if |x| <= 1/2 else
# 3/4)`. Its backward is the plain identity (no clipping). The 1-bit version is exactly a binary
# tensor with `alpha = 1/3`, so `pack_binary(W, "tensor", alpha=1/3)` stores it in the same format.

# %%
E = params["emb"]                                                   # (V, D) word vectors
Q1, Q2 = bz.word2bits_quantize(E, 1), bz.word2bits_quantize(E, 2)
stored = bz.unpack_binary(bz.pack_binary(E, "tensor", alpha=1 / 3))
print(f"1-bit levels {np.unique(Q1)}, 2-bit levels {np.unique(Q2)}")
assert np.array_equal(stored, Q1) and set(np.unique(Q2)) <= {-0.75, -0.25, 0.25, 0.75}
g = rng.normal(size=E.shape).astype(np.float32)
assert np.array_equal(bz.Word2BitsTransform(1).backward(g, None), g)
