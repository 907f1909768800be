# %% [markdown]
# # 03 — Deep Compression: prune, share, Huffman-code
#
# **You will:** take one weight matrix of a tiny trained Transformer through the three stages of
# Deep Compression (Han, Mao & Dally, ICLR 2016, arXiv:1510.00149): magnitude pruning (Han et al.,
# NeurIPS 2015, arXiv:1506.02626) with the gradual cubic schedule of Zhu & Gupta (2017,
# arXiv:1710.01878), k-means weight sharing, and Huffman coding. Every stage is checked against
# its equation, and its size is measured from the real packed arrays and a real `.tz` file. At
# the end the whole tiny model is pruned, shared, written to disk, read back, and still copies.
#
# **Needs:** tutorial 01 (the model, its training loop and the copy task).
#
# **Runs in:** about 15 s on a laptop CPU.
#
# Every code step ends with a printed number and an `assert`, so this file is also a test.

# %%
import functools
import os
import tempfile

import numpy as np

from tinyzip.compress import huffman, kmeans, magnitude_pruning as mp
from tinyzip.compress.base import Method
from tinyzip.compressed import dequantize_all, pack_float, unpack
from tinyzip.container import format_inspect, load_tz, save_tz
from tinyzip.data import copy_task
from tinyzip.nn import gradcheck, optim
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.packing import packed_nbytes
from tinyzip.train import evaluate_teacher_forced, train

STEPS = 600          # training steps of the float model; more steps, better copies
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 0 — a tiny trained model and the matrix we will compress
#
# The same tiny encoder-decoder as in tutorial 01, trained to copy strings. We report the
# teacher-forced token accuracy on held-out strings (`evaluate_teacher_forced`), and we keep the
# optimizer state: Step 1 needs Adam's moments. The matrix we follow through every stage is the
# encoder's first FFN matrix `enc.0.ffn.W_1: (D, F)`.

# %%
V, D, H, F = 12, 32, 2, 64
config = Seq2SeqConfig(src_vocab=V, tgt_vocab=V, D=D, H=H, F=F, enc_layers=1, dec_layers=1, max_len=8)
model = Seq2Seq(config)
task = dict(vocab_size=V, min_len=2, max_len=6)
batches = functools.partial(copy_task.epoch_batches, seed=0, n_batches=20, batch_size=32, **task)
dev = copy_task.epoch_batches(10**6, seed=0, n_batches=2, batch_size=64, **task)
schedule = functools.partial(optim.inverse_sqrt_schedule, D=D, warmup=100, scale=2.0)
result = train(model, model.init_params(rng), batches, steps=STEPS, optimizer=optim.adam(), rng=rng,
               schedule=schedule, log=None)
params = result.params
acc_float = evaluate_teacher_forced(model, params, dev)["accuracy"]

name = "enc.0.ffn.W_1"
W = params[name]
print(f"float model: dev token accuracy {acc_float:.3f}; {name} {W.shape}, {W.size} weights")
assert acc_float > 0.9

# %% [markdown]
# ## Step 1 — magnitude pruning
#
# **Han et al. (2015), Sec. 4:** a weight is pruned when `|w| < q * std(W)`, with a per-layer
# "quality parameter" `q`. The sparsity it gives depends on the weights' distribution; for a
# Gaussian layer, `q = 1` prunes about 68%.
#
# **Exact k:** to hit a sparsity `s` exactly, prune the `n_p = floor(s N + 1/2)` smallest `|w|`
# (`topk_mask`; ties go to the lower flat index). Every pruned weight is then no larger than every
# kept one.

# %%
sigma = np.std(W, dtype=np.float64)
for q in (0.5, 1.0, 1.5):
    keep = mp.std_threshold_mask(W, q)
    print(f"q = {q}: threshold {q * sigma:.4f}, sparsity {1 - keep.mean():.3f}")
    assert np.all(np.abs(W[keep]) >= q * sigma) and np.all(np.abs(W[~keep]) < q * sigma)

SPARSITY = 0.9
mask = mp.topk_mask(W, SPARSITY)
W_pruned = W * mask
print(f"exact-k: {(~mask).sum()} of {W.size} pruned (target {mp.num_to_prune(W.size, SPARSITY)}); "
      f"largest pruned |w| {np.abs(W[~mask]).max():.4f} <= smallest kept {np.abs(W[mask]).min():.4f}")
assert (~mask).sum() == mp.num_to_prune(W.size, SPARSITY) == round(SPARSITY * W.size)
assert np.abs(W[~mask]).max() <= np.abs(W[mask]).min()

# %% [markdown]
# ### The Adam trap: masking the gradient is not enough
#
# Han et al. retrain the surviving weights with the pruned ones held at zero. The obvious way,
# multiplying the gradient by the mask, fails with Adam: the moments `m` and `v` built up before
# pruning are still there, and Adam's step `lr * m_hat / (sqrt(v_hat) + eps)` moves a weight whose
# gradient is exactly zero. We take five real training steps from the trained weights *and their
# Adam state*, once with the gradient mask alone and once with `pruning_method`, whose
# `after_step` writes the zeros back after every update.

# %%
masks = {name: mask}
full = mp.pruning_method(masks)
grad_only = Method("gradient mask only", full.transforms)       # same masks, no after_step
opt = optim.adam()
step_batches = copy_task.epoch_batches(1, seed=1, n_batches=5, batch_size=16, **task)
moved = {}
for method in (grad_only, full):
    p, state = mp.apply_masks(params, masks), result.opt_state
    for t, batch in enumerate(step_batches, start=STEPS + 1):
        eff, tcache = method.forward(p)
        loss, deff, _ = model.loss_and_grads(eff, *batch)
        grads = method.backward(deff, tcache)
        assert np.all(grads[name][~mask] == 0)                     # the pruned weights get no gradient
        p, state = opt.step(p, grads, state, schedule(t))
        p = method.after_step(p)
    moved[method.name] = int(np.count_nonzero(p[name][~mask]))
    export = mp.pack_sparse(p[name]).meta
    print(f"{method.name:>18}: {moved[method.name]:4d} of {(~mask).sum()} pruned weights nonzero after "
          f"5 Adam steps; a sparse export would store {export['count'] - export['fillers']} values")
assert moved[grad_only.name] > 0 and moved[full.name] == 0

# %% [markdown]
# ## Step 2 — gradual pruning: Zhu & Gupta's cubic schedule
#
# Pruning to a high sparsity in one shot leaves the network no time to adapt. Zhu & Gupta raise
# the target sparsity over `n` pruning steps, `dt` training steps apart, Eq. (1):
#
# `s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3`,  for `t` in `{t0, t0 + dt, ..., t0 + n dt}`.
#
# It prunes fast while redundant weights are plentiful and more and more slowly as fewer remain:
# each increment is smaller than the one before. We use this schedule on the whole model in Step 6.

# %%
s_i, s_f, t0, n_prune, dt = 0.0, 0.8, 0, 4, 40
ts = [t for t in range(t0, t0 + n_prune * dt + 1) if mp.is_pruning_step(t, t0, n_prune, dt)]
targets = [mp.cubic_sparsity(t, s_i, s_f, t0, n_prune, dt) for t in ts]
print("pruning steps", ts, "\ntargets       ", [f"{s:.3f}" for s in targets])
assert targets[0] == s_i and abs(targets[-1] - s_f) < 1e-12
assert np.all(np.diff(np.diff(targets)) < 0)                     # increments shrink: concave rise
assert mp.cubic_sparsity(t0 + 10 * n_prune * dt, s_i, s_f, t0, n_prune, dt) == targets[-1]

# %% [markdown]
# ## Step 3 — weight sharing by k-means (Deep Compression Sec. 3)
#
# The surviving weights of one layer are clustered into `k` shared values, the codebook; each
# weight then stores a `log2(k)`-bit index. Lloyd's algorithm minimises the within-cluster sum of
# squares, Eq. (2), `sum_j sum_{w in c_j} |w - c_j|^2`, starting from the paper's preferred
# *linear* initialisation (k points evenly spaced between min and max: large weights, rare but
# important, keep a centroid of their own). At convergence each centroid is the mean of its
# members and each weight sits at its nearest centroid.
#
# After pruning, no survivor lies near zero: linear initialisation puts a few centroids in that
# gap, and they stay empty (Lloyd leaves an empty centroid where it is). Those codes are wasted,
# the price of keeping centroids on the rare large weights.
#
# The pruned zeros are not clustered: they point to an extra, frozen codebook entry 0 (the "zero
# slot"). With `k = 15` the codebook has 16 entries and an index takes 4 bits.

# %%
k = 15
x = W_pruned[mask].astype(np.float64)                             # the survivors, (n,)
c_init = kmeans.linear_init(x, k)
C, idx_x, sse_history = kmeans.kmeans_1d(x, k, init="linear")
used = np.bincount(idx_x, minlength=k) > 0
means = np.array([x[idx_x == j].mean() for j in np.flatnonzero(used)])
print(f"{x.size} survivors, {k} clusters: SSE {sse_history[0]:.5f} (linear init) -> "
      f"{sse_history[-1]:.5f} after {len(sse_history) - 1} Lloyd iterations; "
      f"{k - used.sum()} centroids empty (in the pruned gap |w| < {np.abs(x).min():.3f})")
assert c_init[0] == x.min() and c_init[-1] == x.max()
assert np.all(np.diff(sse_history) <= 1e-12 * sse_history[0])     # Eq. (2) never increases
assert np.allclose(C[used], means, rtol=1e-12, atol=0)            # centroid = cluster mean
assert np.array_equal(C[~used], c_init[~used])                    # an empty centroid keeps its value
assert np.array_equal(kmeans.assign(x, C), idx_x)                 # every weight at its nearest centroid

codebook, idx = kmeans.kmeans_quantize(W_pruned, k)              # (K,), (D, F)
K = codebook.size
print(f"codebook of K = {K} entries (zero slot {codebook[k]}), {kmeans.index_bits(K)}-bit indices; "
      f"Eq. (1) rate for the survivors: {kmeans.compression_rate(x.size, K):.2f}x")
assert K == k + 1 and codebook[k] == 0 and np.all(idx[~mask] == k) and np.array_equal(idx[mask], idx_x)

# %% [markdown]
# ### Eq. (3): the gradient of a centroid
#
# Deep Compression fine-tunes the shared values: with `W = C[I]`, the gradient of centroid `k` is
# the sum of the gradients of the weights that share it,
# `dL/dC_k = sum_ij dL/dW_ij 1(I_ij = k)`, which is `np.bincount(I, weights=dW)`. We check it
# against central differences of the *whole model's loss* as a function of the 16 shared values,
# in float64. A small step (1e-6): moving one shared value moves every weight that uses it, and the
# model's ReLUs put a kink within the default step (5e-5) of some pre-activation.

# %%
src, tgt_in, tgt_out = step_batches[0]
params64 = {key: value.astype(np.float64) for key, value in params.items()}
C64 = codebook.astype(np.float64)

_, grads64, _ = model.loss_and_grads(dict(params64, **{name: C64[idx]}), src, tgt_in, tgt_out)
dC = kmeans.shared_weights_backward(grads64[name], (idx, K))       # Eq. (3)
dC_numeric = gradcheck.numerical_grad(
    lambda C: model.loss_and_grads(dict(params64, **{name: C[idx]}), src, tgt_in, tgt_out)[0], C64, eps=1e-6)
error = np.max(np.abs(dC - dC_numeric)) / np.max(np.abs(dC_numeric))
print(f"dL/dC by bincount vs central differences: max relative error {error:.1e}")
assert error < 1e-6

# %% [markdown]
# ## Step 4 — Huffman coding (Deep Compression Sec. 4)
#
# Two streams are left: the cluster index of every stored weight, and the sparse structure as
# *relative* indices, the gap `d` from one stored weight to the next, kept as `d - 1` in 5 bits
# (Sec. 2; a gap longer than 32 gets a filler entry that points to the zero slot). Neither stream
# is uniform, so a Huffman code (Huffman 1952) with shorter codewords for common symbols beats the
# fixed width. Its mean length `L` satisfies `H <= L < H + 1`, `H` the entropy; its lengths fill the
# Kraft inequality exactly, `sum 2^-l = 1`; and decoding gives back every symbol.
#
# The decoder also needs the code: a canonical Huffman code is fixed by its code lengths, one byte
# per symbol of the alphabet (16 for the indices, 32 for the gaps). That table is paid once per
# matrix, so Huffman coding pays for itself only above a break-even number of symbols,
# `8 * alphabet / (fixed width - L)`. The paper's 20-30% saving is for layers of millions of
# weights; on our 2,048-weight matrix we print where the break-even lies.

# %%
GAP_BITS = 5
gap_codes, stored = mp.relative_index_encode(np.flatnonzero(W_pruned), GAP_BITS)
assert np.array_equal(mp.relative_index_decode(gap_codes), stored)
streams = {"cluster index": (idx.reshape(-1)[stored], K, kmeans.index_bits(K)),
           "gap d - 1": (gap_codes, 2**GAP_BITS, GAP_BITS)}
print(f"{mask.sum()} stored weights + {stored.size - mask.sum()} fillers")
for label, (symbols, alphabet, width) in streams.items():
    counts = np.bincount(symbols, minlength=alphabet)
    lengths = huffman.huffman_code_lengths(counts)
    H_bits, L_bits = huffman.entropy_and_mean_length(counts, lengths)
    bitstream, nbits = huffman.huffman_encode(symbols, lengths)
    decoded = huffman.huffman_decode(bitstream, lengths, symbols.size, nbits)
    kraft = np.sum(2.0 ** -lengths[counts > 0].astype(np.float64))
    print(f"{label:>13}: H = {H_bits:.3f} <= L = {L_bits:.3f} bits/symbol (fixed: {width}); "
          f"{nbits} bits instead of {width * symbols.size}; a {alphabet}-byte table pays off above "
          f"{8 * alphabet / (width - L_bits):.0f} symbols")
    assert H_bits <= L_bits < H_bits + 1 and L_bits <= width and kraft == 1.0
    assert nbits == int(np.sum(counts * lengths)) and np.array_equal(decoded, symbols)

# %% [markdown]
# ## Step 5 — bytes at each stage, from real arrays and real files
#
# Deep Compression reports storage after each stage (its abstract: pruning keeps 1 connection in
# 9 to 13, sharing cuts each to 5 bits, and the whole pipeline shrinks AlexNet 35x, 240 MB to
# 6.9 MB). We build the packed tensor of each stage for our matrix:
#
# * dense: 4 bytes per weight;
# * pruned: float32 values of the stored entries + 5-bit relative indices;
# * + k-means: a float32 codebook + 4-bit cluster indices + the same 5-bit relative indices;
# * + Huffman: the codebook and, for each of the two streams (indices, gaps), its Huffman bit
#   stream and code-length table, or the fixed-width stream where coding would not pay.
#
# Each is written to a `.tz` file with `save_tz`, read back with `load_tz` and unpacked: the
# shared stages must give back `codebook[idx]` bit for bit (Huffman coding is lossless). A `.tz`
# file adds a fixed cost (the zip directory and the manifest), which for a 2,048-weight matrix
# is as large as the data; the paper's ratios are the packed bytes. A stream is Huffman-coded
# only where its bit stream plus its code-length table (Step 4) is smaller than the fixed width,
# so this stage never grows the tensor.

# %%
shared = kmeans.pack_codes(codebook, idx, k, gap_bits=GAP_BITS)
stages = {"dense float32": (pack_float(W), W),
          "pruned": (mp.pack_sparse(W_pruned, GAP_BITS), W_pruned),
          "+ k-means": (shared, codebook[idx]),
          "+ Huffman": (huffman.pack_kmeans_huffman(shared), codebook[idx])}
n_stored = stored.size
assert stages["pruned"][0].nbytes == 4 * n_stored + packed_nbytes(n_stored, GAP_BITS)
assert shared.nbytes == 4 * K + packed_nbytes(n_stored, 4) + packed_nbytes(n_stored, GAP_BITS)
meta = stages["+ Huffman"][0].meta
huffman_bytes = 4 * K                                   # the codebook
for stream, prefix, alphabet in (("indices", "index", K), ("gaps", "gap", 2**GAP_BITS)):
    if stream in meta["huffman"]:                       # coded: its bit stream + one length byte per symbol
        huffman_bytes += packed_nbytes(meta[f"{prefix}_nbits"], 1) + alphabet
    else:                                               # coding would not pay: kept at fixed width
        huffman_bytes += shared.arrays[stream].nbytes
print("Huffman-coded streams:", meta["huffman"])
assert stages["+ Huffman"][0].nbytes == huffman_bytes
dense_bytes = stages["dense float32"][0].nbytes
with tempfile.TemporaryDirectory() as tmp:
    for i, (stage, (packed, expected)) in enumerate(stages.items()):
        path = os.path.join(tmp, f"stage{i}.tz")
        file_bytes = save_tz(path, {name: packed}, config.to_dict())
        loaded = load_tz(path)
        assert np.array_equal(unpack(loaded.packed[name]), expected)
        print(f"{stage:>14}: {packed.nbytes:5d} packed bytes ({dense_bytes / packed.nbytes:5.1f}x), "
              f"{file_bytes:5d} bytes as a .tz file")
    print(format_inspect(loaded))
sizes = [packed.nbytes for packed, _ in stages.values()]
print(f"{name}: {dense_bytes} -> {sizes[-1]} bytes, {dense_bytes / sizes[-1]:.1f}x smaller")
assert sizes[0] > sizes[1] > sizes[2]

# %% [markdown]
# ## Step 6 — the whole tiny model: gradual pruning, sharing, a `.tz` file
#
# Now every weight matrix except the shared embedding: prune gradually to 80% with the Step 2
# schedule, training `dt` steps with `pruning_method` between pruning steps (Adam restarts at each
# `train` call; `after_step` keeps the zeros anyway); then share each matrix's survivors with
# `k = 15` and fine-tune the centroids for a few steps (`kmeans_method`: Eq. (3) gradients, the
# zero slot frozen, so pruned weights stay zero). Finally pack every matrix (k-means and relative
# indices, plus Huffman where it beats its tables), keep the rest as float32, and compare the
# file with an all-float32 `.tz`. The model read back from the file must give the same accuracy
# as the model in memory.

# %%
names = mp.prunable_names(params)
fine_tune = functools.partial(train, model, optimizer=optim.adam(), rng=rng, schedule=lambda t: 1e-3,
                              log=None)
p, masks = params, {}
for j, t in enumerate(ts):
    p, masks = mp.prune_params(p, mp.cubic_sparsity(t, s_i, s_f, t0, n_prune, dt), masks=masks)
    epochs = functools.partial(copy_task.epoch_batches, seed=10 + j, n_batches=20, batch_size=16, **task)
    p = fine_tune(p, epochs, steps=dt, method=mp.pruning_method(masks)).params
acc_pruned = evaluate_teacher_forced(model, p, dev)["accuracy"]
p, share = kmeans.kmeans_method(p, names, k)
epochs = functools.partial(copy_task.epoch_batches, seed=99, n_batches=20, batch_size=16, **task)
p = fine_tune(p, epochs, steps=dt, method=share).params
acc_shared = evaluate_teacher_forced(model, p, dev)["accuracy"]

packed = {key: pack_float(value) for key, value in p.items()}
for key in names:                                   # Huffman only where it beats its own tables
    codes = kmeans.pack_kmeans(p[key], k, gap_bits=GAP_BITS)
    packed[key] = min(codes, huffman.pack_kmeans_huffman(codes), key=lambda c: c.nbytes)
with tempfile.TemporaryDirectory() as tmp:
    float_bytes = save_tz(os.path.join(tmp, "float32.tz"), {key: pack_float(v) for key, v in params.items()},
                          config.to_dict())
    tz_bytes = save_tz(os.path.join(tmp, "deep.tz"), packed, config.to_dict())
    restored = dequantize_all(load_tz(os.path.join(tmp, "deep.tz")).packed)
acc_file = evaluate_teacher_forced(model, restored, dev)["accuracy"]
sparsity = 1 - sum(np.count_nonzero(p[key]) for key in names) / sum(p[key].size for key in names)
matrix_f32 = sum(packed[key].float32_nbytes for key in names)
matrix_packed = sum(packed[key].nbytes for key in names)
print(f"dev accuracy: float {acc_float:.3f}, pruned to {sparsity:.0%} {acc_pruned:.3f}, "
      f"+ shared {acc_shared:.3f}, read back from .tz {acc_file:.3f}")
n_huffman = sum(packed[key].method == "kmeans+huffman" for key in names)
print(f"{len(names)} matrices ({n_huffman} Huffman-coded): {matrix_f32} -> {matrix_packed} packed bytes "
      f"({matrix_f32 / matrix_packed:.1f}x); "
      f"files: {float_bytes} -> {tz_bytes} bytes ({float_bytes / tz_bytes:.2f}x)")
assert all(np.array_equal(restored[key], p[key]) for key in p)    # the file is lossless
assert all(np.all(p[key][~masks[key]] == 0) for key in names)     # sharing kept the pruned zeros
assert abs(sparsity - s_f) < 0.01 and acc_file == acc_shared
assert acc_shared > acc_float - 0.05 and tz_bytes < float_bytes
