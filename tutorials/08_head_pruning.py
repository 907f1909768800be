# %% [markdown]
# # 08 — Head pruning: which attention heads matter, and a model without the rest
#
# **You will:** put a mask `xi_h` on every attention head of a tiny trained Transformer, get the
# loss's derivative in each `xi_h` from the backward pass and check it by finite differences, score
# heads by it the way Michel, Levy and Neubig do ("Are Sixteen Heads Really Better than One?",
# NeurIPS 2019, arXiv:1905.10650), compare the scores with what removing each head really costs,
# prune heads iteratively, and finally delete them from the weights, so the model and its file get
# smaller while it computes exactly what the masked model computed.
#
# **Needs:** tutorial 01 (the model, the copy task and the backward pass).
#
# **Runs in:** about 5 s on a laptop CPU.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import functools
import os
import tempfile

import numpy as np

from tinyzip.compress import head_pruning as hp
from tinyzip.compressed import dequantize_all, pack_float
from tinyzip.container import load_tz, save_tz
from tinyzip.data import copy_task
from tinyzip.nn import optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import evaluate_teacher_forced, train

STEPS = 600  # training steps of the float model
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 0 — a tiny trained model with 12 heads
#
# The copy task of tutorial 01, one encoder and one decoder layer with 4 heads in each attention
# block: encoder self-attention, decoder self-attention and encoder-decoder attention, 12 heads.
# Scored by teacher-forced token accuracy on held-out strings.

# %%
V, D, H, F = 12, 32, 4, 64
config = Seq2SeqConfig(src_vocab=V, tgt_vocab=V, D=D, H=H, F=F, enc_layers=1, dec_layers=1, max_len=8)
model = Seq2Seq(config)
task = dict(vocab_size=V, min_len=2, max_len=6)
batches = functools.partial(copy_task.epoch_batches, seed=0, n_batches=20, batch_size=32, **task)
dev = copy_task.epoch_batches(10**6, seed=0, n_batches=2, batch_size=64, **task)
params = train(model, model.init_params(rng), batches, steps=STEPS, optimizer=optim.adam(), rng=rng,
               schedule=functools.partial(optim.inverse_sqrt_schedule, D=D, warmup=100, scale=2.0),
               log=None).params
acc_float = evaluate_teacher_forced(model, params, dev)["accuracy"]
print(f"float model: dev token accuracy {acc_float:.3f}; blocks {model.attention_prefixes()}")
assert acc_float > 0.9

# %% [markdown]
# ## Step 1 — a mask on every head, and its gradient
#
# Multi-head attention concatenates the heads' outputs and multiplies by `W_o`; with a mask,
# `MHAtt(x) = Concat_h(xi_h heads_h) W_o + b_o`, so `xi_h = 0` removes head `h` and `xi = 1` is the
# model as trained. The backward pass gives `dL/dxi_h = sum over positions and features of
# heads_h * dL/d(xi_h heads_h)` at no extra cost (the model returns it as `<block>.head_mask`). A
# central difference of the loss in `xi_h` agrees (in float64, so the difference is exact enough).

# %%
src, tgt_in, tgt_out = next(iter(copy_task.epoch_batches(10**6 + 1, seed=0, n_batches=1, batch_size=16, **task)))
mask = hp.full_mask(model)
params64 = {key: value.astype(np.float64) for key, value in params.items()}
loss, grads, _ = model.loss_and_grads(params64, src, tgt_in, tgt_out, head_mask=mask)
block, h, eps = "dec.0.cross_attn", 1, 1e-5


def loss_at(value):
    xi = {p: m.copy() for p, m in mask.items()}
    xi[block][h] = value
    return model.loss_and_grads(params64, src, tgt_in, tgt_out, head_mask=xi)[0]


numeric = (loss_at(1 + eps) - loss_at(1 - eps)) / (2 * eps)
print(f"dL/dxi for {block} head {h}: backward {grads[block + '.head_mask'][h]:.6f}, "
      f"central difference {numeric:.6f}")
assert np.isclose(grads[block + ".head_mask"][h], numeric, rtol=1e-6, atol=1e-9)

# %% [markdown]
# ## Step 2 — importance: expected |dL/dxi_h|, against removing each head
#
# Michel et al. score head `h` by `I_h = E_x |dL(x)/dxi_h|`, one example `x` at a time: a first-order
# estimate of how much the loss changes when the head goes. Then each block's scores are divided by
# their l2 norm (Molchanov et al. 2017), so blocks are compared by the ranking inside them. Is the
# estimate any good? Remove each head alone (the "ablation" the paper starts from) and measure the
# loss: the head the scores call the least important costs much less than the one they call the
# most important.

# %%
examples = [(src[i:i + 1], tgt_in[i:i + 1], tgt_out[i:i + 1]) for i in range(len(src))]
importance = hp.head_importance(model, params, examples)
normalized = hp.normalize_by_block(importance)
ablation = {}
for p in model.attention_prefixes():
    for head in range(H):
        xi = {q: m.copy() for q, m in mask.items()}
        xi[p][head] = 0.0
        ablation[p, head] = model.loss_and_grads(params, src, tgt_in, tgt_out, head_mask=xi)[0] - loss
for p in model.attention_prefixes():
    cells = "  ".join(f"I={importance[p][k]:.3f} (norm {normalized[p][k]:.2f}) dL={ablation[p, k]:+.3f}"
                      for k in range(H))
    print(f"{p:<17} {cells}")
flat = [(p, k) for p in model.attention_prefixes() for k in range(H)]
scores = np.array([importance[p][k] for p, k in flat])
least, most = flat[int(scores.argmin())], flat[int(scores.argmax())]
print(f"least important by I: {least} (removing it: dL = {ablation[least]:+.3f}); "
      f"most important: {most} (dL = {ablation[most]:+.3f})")
assert ablation[least] < ablation[most]
assert all(abs(np.linalg.norm(n) - 1) < 1e-9 for n in normalized.values())

# %% [markdown]
# ## Step 3 — iterative pruning
#
# The paper prunes in steps: mask the 10% of all heads with the least (normalized) importance, here
# max(1, floor(1.2)) = 1 head, recompute the importance *under the new mask*, and repeat. Heads
# already masked are excluded by name: their `dL/dxi` is not zero in general. Accuracy holds for a
# while, then falls once heads the task needs go. The encoder-decoder attention, which is what
# copies a string, keeps a head longest, and losing its last one costs the most: Michel et al.
# found encoder-decoder attention the most sensitive to pruning in translation, too.

# %%
masks = hp.iterative_masks(model, params, examples, n_masked=9)
accuracy = []
for step, m in enumerate(masks, 1):
    small_model, small_params = hp.prune_heads(model, params, m)
    accuracy.append(evaluate_teacher_forced(small_model, small_params, dev)["accuracy"])
    gone = {p: np.flatnonzero(x == 0).tolist() for p, x in m.items() if (x == 0).any()}
    print(f"{step:2d} heads pruned: accuracy {accuracy[-1]:.3f}  {gone}")
assert all(np.all(b <= a) for prev, cur in zip(masks, masks[1:]) for a, b in zip(prev.values(), cur.values()))
assert accuracy[0] > acc_float - 0.05 and accuracy[-1] < accuracy[0]
assert masks[-2]["dec.0.cross_attn"].any() and not masks[-1]["dec.0.cross_attn"].any()
assert np.argmin(np.diff([acc_float] + accuracy)) == len(accuracy) - 1     # the largest drop is the last

# %% [markdown]
# ## Step 4 — a smaller model, and its file
#
# A mask saves nothing: the weights are all still there. `prune_heads` deletes them: for every
# masked head its `Dh = D / H` columns of `W_q`, `W_k`, `W_v` (and biases) and its `Dh` rows of
# `W_o`. The config records which heads (by their original index) are gone, so the file's reader
# builds the smaller model. It computes what the masked model computed, to the last bit or nearly
# (the sums have fewer terms), and its file is smaller by exactly those rows and columns.

# %%
keep = masks[3]                                                   # 4 of 12 heads pruned
small_model, small_params = hp.prune_heads(model, params, keep)
masked_logits, _ = model.forward(params, src, tgt_in, head_mask=keep)
small_logits, _ = small_model.forward(small_params, src, tgt_in)
with tempfile.TemporaryDirectory() as tmp:
    full_bytes = save_tz(os.path.join(tmp, "full.tz"), {k: pack_float(v) for k, v in params.items()},
                         config.to_dict())
    small_bytes = save_tz(os.path.join(tmp, "small.tz"), {k: pack_float(v) for k, v in small_params.items()},
                          small_model.config.to_dict())
    tz = load_tz(os.path.join(tmp, "small.tz"))
reader_model = Seq2Seq(Seq2SeqConfig.from_dict(tz.config))
acc_file = evaluate_teacher_forced(reader_model, dequantize_all(tz.packed), dev)["accuracy"]
n_params = sum(v.size for v in params.values())
n_small = sum(v.size for v in small_params.values())
print(f"pruned heads {small_model.config.pruned_heads}; parameters {n_params:,} -> {n_small:,}; "
      f"file {full_bytes:,} -> {small_bytes:,} bytes; max |masked - pruned| logit "
      f"{np.abs(masked_logits - small_logits).max():.1e}; accuracy read back {acc_file:.3f}")
assert n_params - n_small == 4 * (4 * D * (D // H) + 3 * (D // H))   # per head: 4 Dh-slices of D, 3 bias slices
assert np.allclose(masked_logits, small_logits, atol=1e-5) and small_bytes < full_bytes
assert acc_file == accuracy[3]
