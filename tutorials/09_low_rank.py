# %% [markdown]
# # 09 — Low rank: truncated SVD, Eckart-Young, and a model of thin matmuls
#
# **You will:** take a weight matrix of a tiny trained Transformer apart with the SVD, check that
# cutting it to its top `r` singular values is the best rank-`r` approximation there is
# (Eckart & Young 1936), see what that costs the model at each rank, train the factors
# `A`, `B` of `W = A @ B` instead of `W`, and write a file whose layers compute `(x @ A) @ B`. The
# embedding gets ALBERT's factorization (Lan et al., ICLR 2020, arXiv:1909.11942): a `V x r`
# table times an `r x D` projection.
#
# **Needs:** tutorial 01 (the model and the copy task).
#
# **Runs in:** about 5 s on a laptop CPU.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import functools
import os
import tempfile

import numpy as np

from tinyzip.compress import low_rank as lr
from tinyzip.compressed import dequantize_all, kernel_matmuls, pack_float
from tinyzip.container import load_tz, save_tz
from tinyzip.data import copy_task
from tinyzip.nn import optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import evaluate_teacher_forced, train

STEPS = 600         # training steps of the float model
FACTOR_STEPS = 150  # training steps of the factors
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 0 — a tiny trained model
#
# Tutorial 01's copy task; one encoder and one decoder layer, D = 32, FFN width 64. Its matrices
# are 32 x 32 (attention), 32 x 64 and 64 x 32 (FFN), and the 12 x 32 embedding, which is also the
# output layer.

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
acc_float = evaluate_teacher_forced(model, params, dev)["accuracy"]
matrices = [key for key, value in params.items() if value.ndim == 2]
print(f"float model: dev token accuracy {acc_float:.3f}; {len(matrices)} matrices")
assert acc_float > 0.9

# %% [markdown]
# ## Step 1 — the SVD, and the best rank-r matrix
#
# `W = U diag(s) V^T` with `s` descending. Keeping the first `r` terms gives `W_r`, and its error
# is exactly what the dropped singular values say: `||W - W_r||_F^2 = sum_{i>r} s_i^2` and the
# largest singular value of `W - W_r` is `s_{r+1}`. Eckart and Young: no matrix of rank `r` is
# closer. We try 2,000 random rank-`r` matrices (each scaled to its best multiple) and small
# moves of the factors; none gets closer.

# %%
W = params["enc.0.ffn.W_1"].astype(np.float64)                       # (32, 64)
s = lr.singular_values(W)
r = 8
A, B = lr.truncated_svd(W, r)
error = np.linalg.norm(W - A @ B)
print(f"W {W.shape}: s_1 = {s[0]:.3f}, s_8 = {s[7]:.3f}, s_9 = {s[8]:.3f}, s_32 = {s[-1]:.4f}; "
      f"rank {r}: ||W - W_r||_F = {error:.4f} = sqrt(sum of the rest) = {lr.truncation_error(s, r):.4f}")
assert np.isclose(error, lr.truncation_error(s, r)) and np.isclose(np.linalg.norm(W - A @ B, 2), s[r])
closest = np.inf
for _ in range(1000):
    X = rng.standard_normal((32, r)) @ rng.standard_normal((r, 64))
    X *= np.sum(W * X) / np.sum(X * X)
    moved = (A + 1e-2 * rng.standard_normal(A.shape)) @ (B + 1e-2 * rng.standard_normal(B.shape))
    closest = min(closest, np.linalg.norm(W - X), np.linalg.norm(W - moved))
print(f"closest of 2,000 other rank-{r} matrices: {closest:.4f} (W_r: {error:.4f})")
assert closest > error

# %% [markdown]
# ## Step 2 — what each rank costs the model
#
# `A = U_r diag(s_r)^(1/2)` and `B = diag(s_r)^(1/2) V_r^T` split the singular values evenly, so
# `A^T A = B B^T = diag(s_r)`. Stored as factors, a matrix takes `r (m + n)` numbers instead of
# `m n`: fewer only below `r = m n / (m + n)`, 16 for the 32 x 32 attention matrices and 21.3 for
# the FFN's. Trained matrices are far from low rank: to keep 90% of `||W||_F^2` this one needs
# 13 of its 32 singular values. Cutting every matrix to rank `r`, the model holds to rank 16 and
# loses accuracy fast below.

# %%
np.testing.assert_allclose(A.T @ A, np.diag(s[:r]), atol=1e-10)
print(f"rank for 90% of the energy: {lr.rank_for_energy(s, 0.9)} of {len(s)}; break-even ranks: "
      f"32 x 32 {lr.break_even_rank(32, 32):.1f}, 32 x 64 {lr.break_even_rank(32, 64):.1f}")
n_float = sum(params[key].size for key in matrices)
accuracy = {}
for rank in (24, 16, 8, 4):
    method = lr.FactorMethod({key: min(rank, *params[key].shape) for key in matrices})
    stored = method.factorize(params)
    accuracy[rank] = evaluate_teacher_forced(model, method.forward(stored)[0], dev)["accuracy"]
    n_factors = sum(v.size for key, v in stored.items() if key.endswith(("@A", "@B")))
    print(f"rank {rank:2d}: {n_factors:,} numbers in the factors (float matrices {n_float:,}), "
          f"accuracy {accuracy[rank]:.3f}")
assert lr.rank_for_energy(s, 0.9) > r and accuracy[16] > acc_float - 0.02 > accuracy[8] > accuracy[4]

# %% [markdown]
# ## Step 3 — training the factors
#
# Rank 8 halves the numbers (and more for the FFN) but loses most of the accuracy. Instead of
# training `W`, train `A` and `B`: the model sees `W = A @ B`, and the chain rule gives
# `dA = dW @ B^T`, `dB = A^T @ dW` (`FactorMethod`; its tests check these by finite differences).
# The SVD factors are the start, so training begins from the best rank-8 model there is.

# %%
ranks = {key: min(8, *params[key].shape) for key in matrices}
method = lr.FactorMethod(ranks)
retrain = functools.partial(copy_task.epoch_batches, seed=1, n_batches=20, batch_size=32, **task)
factors = train(model, method.factorize(params), retrain, steps=FACTOR_STEPS, optimizer=optim.adam(), rng=rng,
                schedule=lambda t: 1e-3, method=method, log=None).params
acc_trained = evaluate_teacher_forced(model, method.forward(factors)[0], dev)["accuracy"]
print(f"rank 8: accuracy {accuracy[8]:.3f} from the SVD, {acc_trained:.3f} after {FACTOR_STEPS} steps on the factors")
assert acc_trained > accuracy[8] + 0.2

# %% [markdown]
# ## Step 4 — a file of factors, run as thin matmuls
#
# The file stores `A` and `B` for every matrix. Read back, each Linear layer computes
# `(x @ A) @ B` (two matmuls of width 8) and the embedding's output layer `(x @ B^T) @ A^T`; the
# embedding lookup reads rows of `A @ B`. The layers give the dense product of the stored
# factors, and the accuracy read back is the trained one.

# %%
packed = {key: pack_float(value) for key, value in factors.items() if not key.endswith(("@A", "@B"))}
packed.update({key: lr.pack_low_rank(factors[key + "@A"], factors[key + "@B"]) for key in ranks})
with tempfile.TemporaryDirectory() as tmp:
    float_bytes = save_tz(os.path.join(tmp, "float32.tz"), {k: pack_float(v) for k, v in params.items()},
                          config.to_dict())
    tz_bytes = save_tz(os.path.join(tmp, "low_rank.tz"), packed, config.to_dict())
    tz = load_tz(os.path.join(tmp, "low_rank.tz"))
restored, matmuls = dequantize_all(tz.packed), kernel_matmuls(tz.packed)
x = rng.standard_normal((5, D)).astype(np.float32)
gap = np.abs(matmuls["enc.0.ffn.W_1"](x) - x @ restored["enc.0.ffn.W_1"]).max()
acc_file = evaluate_teacher_forced(model, restored, dev)["accuracy"]
print(f"files: {float_bytes:,} -> {tz_bytes:,} bytes ({float_bytes / tz_bytes:.2f}x); {len(matmuls)} layers "
      f"as thin matmuls (gap to the dense product {gap:.1e}); accuracy read back {acc_file:.3f}")
assert tz_bytes < float_bytes and gap < 1e-5 and abs(acc_file - acc_trained) < 0.01
