# %% [markdown]
# # 05 — Uniform quantization: int8 and int4 grids, QAT, integer-only inference
#
# **You will:** build affine and symmetric integer grids and check their laws (Jacob et al.,
# CVPR 2018, arXiv:1712.05877; Q8BERT, Zafrir et al. 2019, arXiv:1910.06188), compare one scale
# per tensor with one per output channel on a trained weight, check the clipped straight-through
# gradient (FQT, Prato et al. 2020, arXiv:1910.10485), run Jacob's integer-only requantization
# and the int8 GEMM kernel against their NumPy references, bound the error of the float-in/float-out
# `int8_linear`, compare post-training quantization with a short quantization-aware retraining of a
# tiny model, count the bytes of real `.tz` files at 8 and 4 bits, and run a weights+activations
# FFN on integers from its input codes to its output (Jacob's fused layer).
#
# **Needs:** tutorial 01 (the model, its training loop and the copy task); tutorial 04 helps.
#
# **Runs in:** about 20 s on a laptop CPU.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import functools
import os
import tempfile

import numpy as np

from tinyzip.compress import fqt, integer_only
from tinyzip.compress import uniform as uq
from tinyzip.compressed import dequantize_all, kernel_matmuls, pack_float, static_act_hooks
from tinyzip.container import load_tz, save_tz
from tinyzip.data import copy_task
from tinyzip.kernels import int8
from tinyzip.nn import optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.packing import packed_nbytes
from tinyzip.train import evaluate_teacher_forced, train

STEPS = 600       # training steps of the float model
QAT_STEPS = 150   # retraining steps through the 4-bit weight quantizer
QAT_BITS = 4
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 0 — a tiny trained float model
#
# The same tiny encoder-decoder as in tutorials 01 and 04, trained to copy strings; we report its
# teacher-forced token accuracy on held-out strings. Our running example is the first FFN weight.

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
names = [key for key, value in params.items() if value.ndim == 2]
acc_float = evaluate_teacher_forced(model, params, dev)["accuracy"]
W = params["enc.0.ffn.W_1"]                                          # (D, F) float32
print(f"float model: dev token accuracy {acc_float:.3f}; {len(names)} weight matrices")
assert acc_float > 0.9

# %% [markdown]
# ## Step 1 — two grids: affine and symmetric
#
# A `b`-bit grid stores an integer `q` and means `x = S (q - Z)` (Jacob Eq. 1). The **affine**
# grid uses all of `[-2^(b-1), 2^(b-1) - 1]` and picks the step `S = (x_max - x_min) / (qmax - qmin)`
# and a zero point `Z`. Jacob insists that the real number 0 be *exactly* representable (zero
# padding, ReLU zeros), so the range is first widened to contain 0 and `Z` is rounded to an
# integer ("nudged"). Then `x_min` and `x_max` still land on the two ends of the grid, and every
# `x` in the range is within half a step of its grid point: `|x - x_hat| <= S / 2`.
#
# The **symmetric** grid (Q8BERT) fixes `Z = 0` and uses `[-(2^(b-1) - 1), 2^(b-1) - 1]`
# (-128 stays unused) with `S = max|x| / qmax`: simpler integer arithmetic, at the price of
# wasting half the grid on a one-sided range.

# %%
x = rng.normal(0.3, 1.0, size=1000)                                  # a skewed range
x_min, x_max = x.min(), x.max()
for symmetric in (False, True):
    qmin, qmax = uq.qrange(8, symmetric)
    S, Z = uq.quant_params(x_min, x_max, 8, symmetric)
    q = uq.quantize(x, S, Z, 8, symmetric)
    x_hat = uq.dequantize(q, S, Z, dtype=np.float64)
    err = np.abs(x - x_hat).max()
    ends = uq.quantize(np.array([x_min, x_max]), S, Z, 8, symmetric)
    zero = uq.dequantize(uq.quantize(np.zeros(1), S, Z, 8, symmetric), S, Z, dtype=np.float64)[0]
    print(f"{'symmetric' if symmetric else 'affine   '}: grid [{qmin}, {qmax}], S = {float(S):.5f}, "
          f"Z = {int(Z)}, ends -> {ends.tolist()}, max |x - x_hat| = {err:.5f} <= S/2 = {float(S) / 2:.5f}")
    assert zero == 0.0                                               # zero exactly representable
    assert err <= S / 2 * (1 + 1e-12)
    if symmetric:
        assert Z == 0 and np.abs(ends.astype(int)).max() == qmax      # max|x| hits an end
    else:
        assert ends.tolist() == [qmin, qmax]                          # x_min, x_max hit the grid ends
S_aff = uq.quant_params(x_min, x_max, 8)[0]
S_sym = uq.quant_params(x_min, x_max, 8, symmetric=True)[0]
assert S_aff <= S_sym          # the affine step is never larger: it spends the grid on [x_min, x_max]

# %% [markdown]
# ## Step 2 — one scale per tensor or one per output channel
#
# A weight matrix `W: (D_in, D_out)` can share one scale, or give each output unit (each column)
# its own. A column's step `S_j = max|W[:, j]| / qmax` is never larger than the tensor's
# `S = max|W| / qmax`, so its worst-case error `S_j / 2` is never larger either. At 4 bits the
# difference shows in the squared error too (that part is typical, not a theorem: a smaller step
# is not better for every single weight).

# %%
for bits in (8, 4):
    W_t = uq.UniformWeightQuantizer(bits, "tensor").forward(W)[0]
    W_c = uq.UniformWeightQuantizer(bits, "channel").forward(W)[0]
    S_t, _ = uq.weight_qparams(W, bits, "tensor")
    S_c, _ = uq.weight_qparams(W, bits, "channel")                    # (1, F)
    err_c = np.abs(W_c - W).max(axis=0)                               # (F,) worst error per column
    mse_t, mse_c = np.mean((W_t - W) ** 2), np.mean((W_c - W) ** 2)
    print(f"{bits} bits: MSE per tensor {mse_t:.3e}, per channel {mse_c:.3e}; "
          f"columns whose step is smaller: {int(np.sum(S_c < S_t))} of {W.shape[1]}")
    assert np.all(S_c <= S_t) and np.all(err_c <= S_c[0] / 2 * (1 + 1e-6))
    assert np.abs(W_t - W).max() <= S_t / 2 * (1 + 1e-6)
    assert mse_c <= mse_t

# %% [markdown]
# ## Step 3 — the clipped straight-through estimator
#
# Rounding has zero derivative almost everywhere. Jacob and FQT pass the gradient straight
# through the rounding, but not through the clamp: where `round(x / S + Z)` falls outside
# `[qmin, qmax]`, the output no longer moves with `x` and the gradient is 0. So
# `dx = dx_hat` inside `[S (qmin - Z - 1/2), S (qmax - Z + 1/2)]` and `0` outside. (Q8BERT passes
# everything: `ste="q8bert"`.)

# %%
S, Z = uq.quant_params(-1.0, 2.0, 4)
qmin, qmax = uq.qrange(4)
xs = np.linspace(-2.0, 3.0, 101) + 1e-3                              # off the boundaries
x_hat, cache = uq.fake_quant_forward(xs, S, Z, 4)
dx = uq.fake_quant_backward(np.ones_like(xs), cache)
lo, hi = S * (qmin - Z - 0.5), S * (qmax - Z + 0.5)
print(f"S = {float(S):.4f}, Z = {int(Z)}: gradient passes on [{float(lo):.3f}, {float(hi):.3f}], "
      f"{int(dx.sum())} of {xs.size} points")
assert np.array_equal(dx, ((xs > lo) & (xs < hi)).astype(float))
assert np.all(np.abs(x_hat - xs)[dx == 1] <= S / 2 * (1 + 1e-12))   # inside: only rounding error
assert np.array_equal(uq.fake_quant_backward(np.ones_like(xs), uq.fake_quant_forward(xs, S, Z, 4,
                                                                                     ste="q8bert")[1]),
                      np.ones_like(xs))

# %% [markdown]
# ## Step 4 — integer-only inference: Jacob's requantization
#
# With `x = S1 (q1 - Z1)` and `W = S2 (q2 - Z2)`, the product `y = S3 (q3 - Z3)` needs
# `q3 = Z3 + M acc` with the int32 accumulator `acc = sum_k (q1 - Z1)(q2 - Z2)` (Eq. 4) and
# `M = S1 S2 / S3` (Eq. 5), a real number in `(0, 1)`. Integer hardware writes it as
# `M = 2^-n M0` with `M0` in `[1/2, 1)`, stored as the int32 `M0_q = round(M0 2^31)` in
# `[2^30, 2^31)` (Eq. 6). Then `q3` needs one rounding high-multiply and one rounding shift.
#
# The Numba kernel `int8_gemm` must equal the NumPy reference exactly, zero points included, and
# so must `requantize`. Against the real-valued `Z3 + M acc`, the integer pipeline may round
# differently, by at most one step.

# %%
Mr, K, N = 5, 100, 12
qx = rng.integers(-128, 128, size=(Mr, K), dtype=np.int8)
qW = rng.integers(-128, 128, size=(K, N), dtype=np.int8)
zx, zw = rng.integers(-20, 20, size=Mr), rng.integers(-20, 20, size=N)
acc = int8.int8_gemm(qx, int8.prepare_weight(qW), zx, zw)
acc_ref = uq.int8_matmul_reference(qx, qW, zx, zw)
S1, S2 = 0.02, rng.uniform(0.001, 0.01, size=N)                      # per-channel weight scales
S3 = np.abs(S1 * S2 * acc).max() / 127                               # output range fits the grid
M = S1 * S2 / S3                                                     # (N,) Eq. (5)
M0_q, n = uq.quantize_multiplier(M)
z3 = 3
q3 = int8.requantize(acc, M0_q, n, z3)
q3_real = np.clip(np.rint(z3 + M * acc), -128, 127)                  # the real-valued output stage
print(f"M in [{M.min():.2e}, {M.max():.2e}]; M0_q in [{M0_q.min()}, {M0_q.max()}], shifts {n.min()}..{n.max()}; "
      f"{int(np.sum(q3 != q3_real))} of {q3.size} outputs differ from round(Z3 + M acc) by one")
assert np.array_equal(acc, acc_ref) and acc.dtype == np.int32
assert np.all((M0_q >= 2 ** 30) & (M0_q.astype(np.int64) < 2 ** 31))
assert np.all(np.abs(M0_q * 2.0 ** -(31 + n) - M) <= 2.0 ** -(32 + n))    # M0 rounded to nearest
assert np.array_equal(q3, uq.requantize_reference(acc, M0_q, n, z3))
assert np.abs(q3.astype(int) - q3_real).max() <= 1

# %% [markdown]
# ## Step 5 — float in, float out: `int8_linear`
#
# A model layer receives float activations. `int8_linear` quantizes each row of `x` (each token)
# symmetrically on the fly, `S_x[m] = max|x[m]| / 127`, runs the int8 GEMM against the stored
# int8 weight, and rescales: `y = S_x[m] S_W[n] acc[m, n]`. The weight error is already in
# `W_hat = S_W q_W`; what remains is the activation rounding, `|x - x_hat| <= S_x / 2` per entry,
# hence `|y - x @ W_hat| <= (S_x / 2) sum_k |W_hat[k, n]|` plus float rounding.

# %%
W_q = uq.quantize(W, *uq.weight_qparams(W, 8), 8, symmetric=True)   # (D, F) int8
S_W = uq.weight_qparams(W, 8)[0][0]                                  # (F,)
W_hat = uq.dequantize(W_q, S_W, 0)                                   # (D, F) float32
xa = rng.normal(size=(6, D)).astype(np.float32)
y = int8.int8_linear(xa, int8.prepare_weight(W_q), S_W)
y_float = xa.astype(np.float64) @ W_hat.astype(np.float64)
S_x = np.abs(xa).max(axis=1, keepdims=True) / 127                    # (6, 1)
bound = S_x / 2 * np.abs(W_hat).sum(axis=0) + 4 * np.finfo(np.float32).eps * np.abs(y_float)
err = np.abs(y - y_float)
print(f"int8_linear vs x @ W_hat: max error {err.max():.2e}, at most {(err / bound).max():.2f} of the bound")
assert np.array_equal(y, uq.int8_linear_reference(xa, W_q, S_W))    # kernel == reference, bit for bit
assert np.all(err <= bound)
# A model layer calls this with the same weight at every step: check it once, then each call only
# checks and quantizes x (the same result; on small layers most of a call was the re-checking).
layer = int8.prepare_int8_weights(int8.prepare_weight(W_q), S_W)
assert np.array_equal(int8.int8_linear_prepared(xa, layer), y)

# %% [markdown]
# ## Step 6 — post-training quantization vs quantization-aware training
#
# **PTQ** rounds the trained weights once. **QAT** (Jacob, FQT) keeps float weights, runs every
# forward with their fake-quantized copies (a fresh per-channel min/max each step) and sends the
# gradient back through the clipped STE of Step 3. At 4 bits the rounding costs accuracy; a short
# retraining lets the float weights move to where their rounded copies work. Activations stay
# float here (`weights_only=True`); `qat_method` can quantize them too, with EMA ranges.

# %%
params_ptq, _, report = fqt.ptq(params, None, QAT_BITS, weights_only=True)
acc_ptq = evaluate_teacher_forced(model, params_ptq, dev)["accuracy"]
method = fqt.qat_method(params, QAT_BITS, weights_only=True)
retrain = functools.partial(copy_task.epoch_batches, seed=1, n_batches=20, batch_size=32, **task)
latent = train(model, params, retrain, steps=QAT_STEPS, optimizer=optim.adam(), rng=rng,
               schedule=lambda t: 1e-3, method=method, log=None).params
eff = method.forward(latent)[0]
acc_qat = evaluate_teacher_forced(model, eff, dev)["accuracy"]
levels = max(len(np.unique(eff[key][:, j])) for key in names for j in range(eff[key].shape[1]))
print(f"{QAT_BITS}-bit weights, dev accuracy: float {acc_float:.3f}, PTQ {acc_ptq:.3f}, "
      f"after {QAT_STEPS} QAT steps {acc_qat:.3f}; at most {levels} distinct values per column")
assert report["weights"] == sorted(names)
assert levels <= 2 ** QAT_BITS - 1                                   # symmetric grid [-7, 7]
assert acc_qat >= acc_ptq

# %% [markdown]
# ## Step 7 — bytes on disk
#
# `pack_uniform` stores 8-bit codes as one int8 per weight (1/4 of float32) and 4-bit codes two
# per byte (1/8), plus one float32 scale per output channel (symmetric grids need no zero
# points). A `(D_in, D_out)` matrix therefore takes exactly `ceil(D_in D_out b / 8) + 4 D_out`
# bytes. Biases and LayerNorms stay float32. We write the float, 8-bit and 4-bit models as `.tz`
# files, read them back, and check the manifest's byte counts and the weights themselves.

# %%
files = {}
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "float32.tz")
    files["float32"] = (save_tz(path, {k: pack_float(v) for k, v in params.items()}, config.to_dict()), None)
    for bits, source in ((8, params), (4, latent)):
        packed = {k: pack_float(v) for k, v in source.items()}
        packed.update({k: uq.pack_uniform(source[k], bits) for k in names})
        path = os.path.join(tmp, f"int{bits}.tz")
        files[f"int{bits}"] = (save_tz(path, packed, config.to_dict()), load_tz(path))
for bits, source in ((8, params), (4, latent)):
    tz = files[f"int{bits}"][1]
    stored = {t["name"]: t["packed_bytes"] for t in tz.manifest["tensors"]}
    for key in names:
        n_in, n_out = source[key].shape
        assert stored[key] == packed_nbytes(n_in * n_out, bits) + 4 * n_out
        assert 32 * (stored[key] - 4 * n_out) == bits * 4 * n_in * n_out    # 1/4 or 1/8 of float32
    restored = dequantize_all(tz.packed)
    assert all(np.array_equal(restored[k], uq.UniformWeightQuantizer(bits).forward(source[k])[0])
               for k in names)
    acc_file = evaluate_teacher_forced(model, restored, dev)["accuracy"]
    matrix = sum(stored[k] for k in names)
    print(f"int{bits}: matrices {matrix} bytes (float32 {sum(4 * source[k].size for k in names)}), "
          f"file {files[f'int{bits}'][0]} bytes, accuracy read back {acc_file:.3f}")
    if bits == 4:
        assert acc_file == acc_qat
print(f"file sizes: float32 {files['float32'][0]}, int8 {files['int8'][0]}, int4 {files['int4'][0]} bytes")
assert files["float32"][0] > files["int8"][0] > files["int4"][0]

# %% [markdown]
# ## Step 8 — weights and activations: static ranges in the file
#
# With activations quantized too (FQT), every matmul input gets one (S_x, Z_x) per tensor, frozen
# after calibration: PTQ runs a few training batches through the model while each quantizer keeps
# FQT's EMA of min/max (momentum 0.9), passing x through. FQT quantizes the inputs of *all* matrix
# multiplications, so besides each Linear's input this covers both operands of the two
# activation-by-activation products of attention: Q and K of Q K^T, the softmax output P (on an
# unsigned grid, P >= 0) and V of P V. `fqt.attach_act_ranges` writes each weight's input
# (S_x, Z_x) into its packed tensor's `meta["act"]`, and an attention block's Q, K, V, P ranges
# into `meta["act_points"]` of its W_q. At load time the int8 GEMM takes x quantized with the
# stored scale (Jacob Eq. (4)), the very codes the fake-quant forward used, and
# `static_act_hooks` fake-quantizes Q, K, V, P with theirs, so the file computes what the
# fake-quant model computes up to float32 rounding.

# %%
def calibrate(eff, hooks):
    for src, tgt_in, _ in retrain(0):
        model.forward(eff, src, tgt_in, act_hooks=hooks)


params_wa, hooks, report = fqt.ptq(params, calibrate, 8, calibration="ema")
packed = {k: pack_float(v) for k, v in params.items()}
packed.update({k: uq.pack_uniform(params[k], 8) for k in names})
packed = fqt.attach_act_ranges(packed, hooks)
with tempfile.TemporaryDirectory() as tmp:
    save_tz(os.path.join(tmp, "w8a8.tz"), packed, config.to_dict())
    tz = load_tz(os.path.join(tmp, "w8a8.tz"))
matmuls = kernel_matmuls(tz.packed)
acc_fake = evaluate_teacher_forced(model, params_wa, dev, act_hooks=hooks)["accuracy"]
src, tgt_in, tgt_out = dev[0]
logits_fake, _ = model.forward(params_wa, src, tgt_in, act_hooks=hooks)
logits_file, _ = model.forward(dequantize_all(tz.packed), src, tgt_in, matmuls=matmuls,
                               act_hooks=static_act_hooks(tz.packed))
print(f"w8a8: {len(report['ranges'])} activation ranges, e.g. {names[0]} input "
      f"S_x = {tz.packed[names[0]].meta['act']['scale']:.4f}; dev accuracy (fake-quant) {acc_fake:.3f}; "
      f"file on the int8 kernel vs fake-quant logits: max |diff| {np.abs(logits_file - logits_fake).max():.1e}")
assert all("act" in tz.packed[k].meta for k in names)
assert {k for k in names if "act_points" in tz.packed[k].meta} == {k for k in names if k.endswith(".W_q")}
assert np.abs(logits_file - logits_fake).max() <= 1e-3 * np.abs(logits_fake).max()

# %% [markdown]
# ## Step 9 — an FFN on integers: Jacob's fused layer
#
# Every Linear above returns a float output. In the FFN one output goes straight into another
# quantized matmul: `relu(x @ W_1 + b_1)` is W_2's input. Jacob Sec. 2.4 keeps that on integers:
# the bias is stored as int32 at the accumulator's scale, `b_q = round(b_1 / (S_x S_W1))`; the
# int32 accumulator `acc1 + b_q` is scaled to W_2's input grid by the fixed-point
# `M = S_x S_W1 / S_a` of Step 4; and the ReLU is the clamp at that grid's zero point (the ReLU
# grid is unsigned, Z_a = 0), so nothing between the two matmuls is a float. `integer_ffns` reads
# every range from the file and replaces each FFN of the model. Against the float-output path the
# ReLU codes move by at most one step (the rounded bias, gemmlowp's rounding), so the logits move
# a little.

# %%
ffns = integer_only.integer_ffns(tz.packed)
logits_int, _ = model.forward(dequantize_all(tz.packed), src, tgt_in, matmuls={**matmuls, **ffns},
                              act_hooks=static_act_hooks(tz.packed))
ffn = integer_only.integer_ffn(tz.packed, "enc.0.ffn")
x_ffn = rng.normal(size=(5, config.D)).astype(np.float32)
y_int, q_relu = integer_only.run_integer_ffn(ffn, x_ffn)
print(f"{len(ffns)} FFNs on integers; enc.0.ffn: bias {ffn.b1_q[:3]}... (int32), M0_q {ffn.M0_q[0]}, "
      f"shift {ffn.shift[0]}; logits vs the float-output file: max |diff| "
      f"{np.abs(logits_int - logits_file).max():.1e}; same argmax at "
      f"{np.mean(logits_int.argmax(-1) == logits_file.argmax(-1)):.1%} of positions")
assert np.array_equal(y_int, integer_only.integer_ffn_reference(ffn, x_ffn)[0])   # kernels == reference
assert np.all(q_relu >= ffn.a_bounds[0])                                           # the clamp is the ReLU
assert np.abs(logits_int - logits_file).max() <= 0.05 * np.abs(logits_file).max()
assert np.mean(logits_int.argmax(-1) == logits_file.argmax(-1)) >= 0.99
# gemmlowp rounds M acc twice (SRDHM, then RoundingDivideByPOT); TFLite's single-rounding build
# rounds it once. The two ReLU codes differ by at most one step, and rarely:
_, q_single = integer_only.run_integer_ffn(integer_only.integer_ffn(tz.packed, "enc.0.ffn", rounding="single"), x_ffn)
print(f"single vs gemmlowp rounding: {np.mean(q_single != q_relu):.2%} of the ReLU codes differ")
assert np.abs(q_single.astype(int) - q_relu).max() <= 1
