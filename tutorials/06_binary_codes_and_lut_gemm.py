# %% [markdown]
# # 06 — Multi-bit binary codes and the lookup-table matmul
#
# **You will:** approximate each output unit's weights by `q` scaled sign vectors, fitted greedily
# (Guo et al., CVPR 2017, arXiv:1706.02021) and by alternating minimisation (Xu et al., ICLR 2018,
# arXiv:1802.00150); check the residual law of the greedy fit, the optimality of the code
# assignment by brute force, and that alternating never loses to greedy. Then you build the
# BiQGEMM lookup table for one 8-input sub-vector (Jeon et al., SC20, arXiv:2005.09904), multiply
# through it with a float tolerance derived from `K`, count packed bytes, give frequent tokens
# more bits (Chung et al., Findings of EMNLP 2020, arXiv:2009.07453), and retrain a tiny model
# through 2-bit codes.
#
# **Needs:** tutorial 04 (one-bit weights, the straight-through estimator); tutorial 01 for the model.
#
# **Runs in:** about 20 s on a laptop CPU.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import functools
import itertools
import os
import tempfile

import numpy as np

from tinyzip.compress import binary_codes as bc, chung
from tinyzip.compress.base import Method
from tinyzip.compressed import dequantize_all, pack_float
from tinyzip.container import load_tz, save_tz
from tinyzip.data import copy_task
from tinyzip.kernels import lut_gemm
from tinyzip.nn import optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import evaluate_teacher_forced, train

STEPS = 600       # training steps of the float model
QAT_STEPS = 150   # retraining steps through the 2-bit codes
Q = 2             # bits per weight in the retrained model
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 0 — a tiny trained float model
#
# The tiny encoder-decoder of tutorials 01 and 04, trained to copy strings. We will code every
# weight matrix except the shared embedding `emb` (also the output layer), which Step 6 treats
# separately.

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
names = [key for key, value in params.items() if value.ndim == 2 and key != "emb"]
acc_float = evaluate_teacher_forced(model, params, dev)["accuracy"]
W = params["enc.0.ffn.W_1"].astype(np.float64)                      # (D, F), our running example
print(f"float model: dev token accuracy {acc_float:.3f}; {len(names)} matrices to code")
assert acc_float > 0.9

# %% [markdown]
# ## Step 1 — greedy codes: one bit at a time
#
# A `q`-bit binary code writes column `j` of `W` as `sum_i alpha[i, j] B[i, :, j]` with signs
# `B[i] in {-1, +1}`. Guo's greedy fit takes the best one-bit fit of what is left, `q` times:
# `B[i] = sign(R_{i-1})`, `alpha[i] = mean|R_{i-1}|` (the XNOR-Net scale of tutorial 04), and
# `R_i = R_{i-1} - alpha[i] B[i]`. Since `B[i] . R_{i-1} = n alpha[i]` (n = D_in), every bit removes
# exactly `n alpha[i]^2` of squared residual, per column:
# `||R_i||^2 = ||R_{i-1}||^2 - n alpha[i]^2`.

# %%
q = 4
B, alpha = bc.greedy_codes(W, q)                                     # (q, D, F), (q, F)
n = W.shape[0]
R = W.copy()
norms = [np.sum(R ** 2, axis=0)]                                     # (F,) per column
for i in range(q):
    R = R - alpha[i] * B[i]
    norms.append(np.sum(R ** 2, axis=0))
drops = -np.diff(np.array(norms), axis=0)                            # (q, F)
print("mean squared residual after 0..4 bits:", " ".join(f"{v.mean() / n:.2e}" for v in norms))
assert np.allclose(drops, n * alpha ** 2, rtol=1e-10, atol=1e-15)
assert np.allclose(R, W - bc.dequantize(B, alpha), rtol=0, atol=1e-14)

# %% [markdown]
# ## Step 2 — alternating: better scales, then better codes
#
# Greedy never revisits a bit. Xu et al. alternate two exact steps: for fixed codes the best
# scales are a small least-squares problem per column (`refit_alphas`), and for fixed scales each
# weight independently takes the nearest of the `2^q` levels `s . alpha` (`assign_codes`).
# Neither step can increase the error, and the alternation starts from the greedy codes, so the
# result is never worse than greedy, column by column. Refining only the scales (`"refined"`)
# lies in between.

# %%
def column_error(codes):
    return np.sum((W - bc.dequantize(*codes)) ** 2, axis=0)            # (F,)


for bits in (1, 2, 3):
    e_greedy = column_error(bc.binary_codes(W, bits, "greedy"))
    e_refined = column_error(bc.binary_codes(W, bits, "refined"))
    e_alt = column_error(bc.binary_codes(W, bits, "alternating"))
    print(f"{bits} bits: squared error greedy {e_greedy.sum():.4f}, refined {e_refined.sum():.4f}, "
          f"alternating {e_alt.sum():.4f}")
    tol = 1e-10 * np.sum(W ** 2, axis=0)
    assert np.all(e_refined <= e_greedy + tol) and np.all(e_alt <= e_refined + tol)
    if bits == 1:                     # one bit: sign and mean|w| are already optimal (tutorial 04)
        assert np.allclose(e_alt, e_greedy, rtol=1e-10)

# %% [markdown]
# ## Step 3 — the code assignment is optimal: a brute force
#
# For fixed scales, `assign_codes` sorts the `2^q` levels and finds each weight's nearest one
# with midpoints. On a vector of 5 weights with 2 bits there are only `2^(2*5) = 1024` ways to
# choose all the signs, so we try them all and keep the one with the smallest error.

# %%
w5 = W[:5, :1]                                                       # (5, 1)
a2 = bc.binary_codes(w5, 2)[1]                                       # (2, 1) alternating scales
best_err, best_B = np.inf, None
for signs in itertools.product([-1, 1], repeat=10):
    Bt = np.array(signs, dtype=np.int8).reshape(2, 5, 1)             # (q, 5, 1)
    err = np.sum((w5 - bc.dequantize(Bt, a2)) ** 2)
    if err < best_err:
        best_err, best_B = err, Bt
B_assign = bc.assign_codes(w5, a2)
err_assign = np.sum((w5 - bc.dequantize(B_assign, a2)) ** 2)
print(f"best of 1024 sign patterns: error {best_err:.3e}; assign_codes: {err_assign:.3e}")
assert np.array_equal(B_assign, best_B) and err_assign == best_err

# %% [markdown]
# ## Step 4 — BiQGEMM: one table per 8 inputs
#
# In `y = x @ W` every weight is a sum of signed alphas, so `y[n] = sum_i alpha[i, n]
# sum_k B[i, k, n] x[k]`: the inner sums only add or subtract inputs. Split `x` into sub-vectors
# of 8; each column's 8 signs for those inputs form one byte, a *key*. BiQGEMM precomputes, once
# per sub-vector, all 256 signed sums `T[key] = sum_j (2 bit_j(key) - 1) x[j]` (Eq. 1, built by
# doubling with 255 additions, Eq. 2). Then 8 multiply-adds become one table look-up, shared by
# all output units and all `q` bit planes. Flipping every bit of a key flips every sign:
# `T[255 - key] = -T[key]`. With small integer inputs every sum is exact, so we can assert equality.

# %%
x8 = np.array([[3, -1, 4, 1, -5, 9, 2, -6]], dtype=np.float32)       # one sub-vector
T = lut_gemm.lut_tables(x8)[0, 0]                                    # (256,)
bits_of = (np.arange(256)[:, None] >> np.arange(8)) & 1              # (256, 8) bit j of each key
direct = (2 * bits_of - 1) @ x8[0].astype(np.int64)                  # (256,) exact signed sums
print(f"x = {x8[0].astype(int).tolist()}: T[0] = {T[0]:.0f} = -sum x, T[255] = {T[255]:.0f}, "
      f"T[0b00000101] = {T[5]:.0f}")
assert np.array_equal(T, direct.astype(np.float32))
assert np.array_equal(T[255 - np.arange(256)], -T)

# %% [markdown]
# The one-row kernel on AVX-512 CPUs (`kernels/lut_gemv_avx512.py`) never builds the 256 entries.
# A key's entry is the signed sum over its low nibble's four inputs plus the one over its high
# nibble's: `T[key] = L[key & 15] + H[key >> 4]`. Two 16-entry tables hold the same information,
# each fits one 512-bit register, and one `vpermps` instruction looks up 16 output units at once.

# %%
keys = np.arange(256)
L, H = ((2 * bits_of[:16, :4] - 1) @ x8[0, 4 * h:4 * h + 4].astype(np.int64) for h in (0, 1))
print(f"L = {L.tolist()}")
assert np.array_equal(L[keys & 15] + H[keys >> 4], direct)

# %% [markdown]
# ## Step 5 — the LUT matmul against the dense product
#
# `lut_linear` runs the kernel on packed keys (K = 32 is padded with zero inputs to a multiple of
# 64). Float32 sums are re-associated (tables, then sums of tables, then alphas), so it differs
# from the exact product by rounding only. Each input passes through at most about `K + 8 + q`
# float32 additions and multiplications, so the error is below `(K + 16) eps (|x| @ sum_i
# |alpha_i|)`, per output. The NumPy reference `lut_matmul_reference` does the same sums with
# explicit tables and obeys the same bound.

# %%
B2, a2 = bc.binary_codes(params["enc.0.ffn.W_1"], Q)                # float32 (q, D, F), (q, F)
packed = bc.pack_binary_codes(B2, a2)
prepared = lut_gemm.prepare_lut_weights(packed)
x = rng.normal(size=(8, D)).astype(np.float32)                       # (M, K)
y = lut_gemm.lut_linear(x, prepared, path="lut")
exact = x.astype(np.float64) @ bc.dequantize(B2.astype(np.float64), a2.astype(np.float64))
bound = (D + 16) * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(a2).sum(axis=0)[None, :].repeat(D, 0))
x_pad = np.zeros((8, 8 * prepared.keys_nqt.shape[2]), np.float32)
x_pad[:, :D] = x
y_ref = lut_gemm.lut_matmul_reference(x_pad, prepared.keys_nqt, prepared.alpha)
print(f"LUT kernel vs exact x @ W_hat: max error {np.abs(y - exact).max():.2e}, "
      f"{(np.abs(y - exact) / bound).max():.3f} of the bound")
assert np.all(np.abs(y - exact) <= bound) and np.all(np.abs(y_ref - exact) <= bound)

# %% [markdown]
# ## Step 6 — bytes, and more bits for frequent tokens
#
# Packed, a `(D_in, D_out)` matrix in `q` bits takes `q` sign planes of `ceil(D_in / 8)` bytes per
# output unit plus `q` float32 alphas per unit: `q D_out ceil(D_in / 8) + 4 q D_out` bytes.
#
# Chung et al. give embedding rows different widths by training-data frequency (their
# Algorithm 1): sort the vocabulary by frequency and cut it into `b` clusters whose sizes grow by
# a factor `r`, `|c_i| = V r^i / (1 + r + ... + r^(b-1))`; cluster `i` gets `b - i` bits. With
# their `b = 4`, `r = 8`, seven tokens in eight get 1 bit and the mean is 1.14 bits, while the few
# frequent words keep 4. Each token is its own output unit (its own alphas), so coding the tokens
# in groups of equal width is pure bookkeeping: every row equals the code fitted to that row
# alone. Our vocabulary has only 12 tokens, so we use `b = 3`, `r = 2`: cluster ends at
# 12 * (1, 3, 7) / 7 = 1.7, 5.1, 12, rounded to 2, 5, 12, i.e. 2 tokens at 3 bits, 3 at 2, 7 at 1.

# %%
n_in, n_out = params["enc.0.ffn.W_1"].shape
assert packed.nbytes == Q * n_out * -(-n_in // 8) + 4 * Q * n_out
B_back, a_back = bc.unpack_codes(packed)
assert np.array_equal(B_back, B2) and np.array_equal(a_back, a2)
print(f"{Q}-bit {n_in} x {n_out} matrix: {packed.nbytes} bytes, float32 {4 * n_in * n_out} "
      f"({4 * n_in * n_out / packed.nbytes:.1f}x)")

freqs = np.zeros(V, np.int64)
for _, _, tgt_out in batches(0):
    freqs += np.bincount(tgt_out.ravel(), minlength=V)
freqs[0] = 0                                                         # PAD is never looked up as a word
token_bits = chung.embedding_bits(freqs, max_bits=3, ratio=2.0)
order = np.argsort(-freqs, kind="stable")
E = params["emb"]                                                    # (V, D)
E_hat = chung.FrequencyAwareEmbeddingSTE(token_bits).forward(E)[0]
alone = np.stack([bc.dequantize(*bc.binary_codes(np.ascontiguousarray(E[v][:, None]), int(token_bits[v])))[:, 0]
                  for v in range(V)])                                # (V, D) each row coded alone
print("tokens by frequency:", order.tolist(), "\nbits               :", token_bits[order].tolist(),
      f"\naverage {token_bits.mean():.2f} bits per embedding weight")
assert np.all(np.diff(token_bits[order]) <= 0)                       # more frequent -> never fewer bits
assert [int(np.sum(token_bits == b)) for b in (3, 2, 1)] == [2, 3, 7]
assert np.allclose(E_hat, alone, rtol=0, atol=1e-6)

# %% [markdown]
# ## Step 7 — retraining through the codes
#
# As with one bit in tutorial 04: coding the trained weights once ("as is") costs accuracy, so we
# keep float latent weights, run every forward with their `Q`-bit alternating codes, and pass the
# gradient straight through (`BinaryCodesSTE`, identity backward: binary codes have no clipping
# range). Then we write the model to a `.tz` file and read it back.

# %%
method = Method("bcq", {key: bc.BinaryCodesSTE(Q) for key in names})
acc_naive = evaluate_teacher_forced(model, method.forward(params)[0], dev)["accuracy"]
retrain = functools.partial(copy_task.epoch_batches, seed=1, n_batches=20, batch_size=32, **task)
latent = train(model, params, retrain, steps=QAT_STEPS, optimizer=optim.adam(), rng=rng,
               schedule=lambda t: 1e-3, method=method, log=None).params
eff = method.forward(latent)[0]
acc_qat = evaluate_teacher_forced(model, eff, dev)["accuracy"]
levels = max(len(np.unique(eff[key][:, j])) for key in names for j in range(eff[key].shape[1]))
tz_packed = {key: pack_float(value) for key, value in latent.items()}
tz_packed.update({key: bc.pack_binary_codes(*bc.binary_codes(latent[key], Q)) for key in names})
with tempfile.TemporaryDirectory() as tmp:
    float_bytes = save_tz(os.path.join(tmp, "float32.tz"), {k: pack_float(v) for k, v in params.items()},
                          config.to_dict())
    tz_bytes = save_tz(os.path.join(tmp, f"bcq{Q}.tz"), tz_packed, config.to_dict())
    restored = dequantize_all(load_tz(os.path.join(tmp, f"bcq{Q}.tz")).packed)
acc_file = evaluate_teacher_forced(model, restored, dev)["accuracy"]
print(f"{Q}-bit codes, dev accuracy: float {acc_float:.3f}, coded as is {acc_naive:.3f}, after {QAT_STEPS} "
      f"QAT steps {acc_qat:.3f}, read back {acc_file:.3f}; files {float_bytes} -> {tz_bytes} bytes")
assert levels <= 2 ** Q                                              # at most 2^q levels per column
assert all(np.array_equal(restored[key], eff[key]) for key in names) and acc_file == acc_qat
assert acc_qat >= acc_naive and tz_bytes < float_bytes
