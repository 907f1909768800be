"""Trained quantization by weight sharing: 1-D k-means per layer (Deep Compression, stage 2).

Paper
-----
Song Han, Huizi Mao, William J. Dally (2016). "Deep Compression: Compressing Deep Neural Networks
with Pruning, Trained Quantization and Huffman Coding". ICLR 2016, arXiv:1510.00149, Sec. 3.
The n weights of one layer are clustered into k shared values (the codebook); each weight stores
a log2(k)-bit index. Centroids are then fine-tuned: the gradient of a centroid is the sum of the
gradients of the weights that share it, with assignments fixed. Weights are not shared across
layers. The paper quantizes AlexNet to 8 bits (256 shared weights) per conv layer and 5 bits (32)
per fc layer.

Notation map (paper -> code)
----------------------------
W = {w_1..w_n}, one layer   -> ``W`` (D_in, D_out) or any shape; clustered values ``x`` (n,)
C = {c_1..c_k} centroids    -> ``codebook`` (K,), K = k, or k + 1 with the zero slot (below)
I_ij cluster index of W_ij  -> ``idx`` int64, shape of ``W``
dL/dW_ij, dL/dC_k           -> ``dW`` (shape of W), ``dC`` (K,)
b bits per weight, k        -> ``b = 32``, ``k``

Equations
---------
Eq. (1)  compression rate   r = n b / (n log2(k) + k b)
Eq. (2)  WCSS objective     argmin_C  sum_{i=1..k} sum_{w in c_i} |w - c_i|^2
Eq. (3)  centroid gradient  dL/dC_k = sum_{i,j} dL/dW_ij 1(I_ij = k)   (= np.bincount(idx, dW))
Sec. 3.2 initialisation     linear:  c_j = min + j (max - min) / (k - 1),  j = 0..k-1
                            density: c_j = F^-1((j + 1/2) / k), F the empirical CDF (inverse
                                     taken as the smallest observed w with F(w) >= p)
                            Forgy:   k distinct observations drawn with ``rng``
Lloyd iterations: assign every value to its nearest centroid, ties to the lower centroid index;
then every non-empty centroid becomes the mean of its members; an empty centroid keeps its value.
Stop when no assignment changes (a fixed point) or after ``max_iter`` iterations. In 1-D every
cluster is an interval of the sorted values, so Lloyd runs on sorted values and finds the k - 1
interval ends by binary search (``assign_sorted``); ``assign`` is the same rule for any order.

Choices
-------
* Pruned weights: exact zeros are not clustered. When ``W`` has zeros, ``codebook`` gets a frozen
  extra entry ``codebook[k] = 0`` (the zero slot) that every zero points to; it receives no
  gradient, so pruned weights stay exactly zero. Then K = k + 1 and the index width is
  ceil(log2(k + 1)) bits (choose k = 2^b - 1 to stay at b bits).
* If the values to cluster have at most k distinct values the codebook is those values (padded by
  repeating the largest): the exact optimum of Eq. (2), SSE 0, and a Lloyd fixed point.
* Trained quantization as a weight transform (``SharedWeightTransform``): the stored parameter is
  the dense W = C[I]. ``forward`` returns W projected onto shared values (cluster means, equal to
  W when W is already shared); ``backward`` returns dW_ij = dL/dC_{I_ij}, Eq. (3) scattered back to
  every member. This is NOT the derivative of ``forward`` w.r.t. W (that would be the per-cluster
  mean): it is chosen so that an SGD step on W, W_ij -= lr dL/dC_{I_ij}, moves every member of
  cluster k by exactly the paper's centroid step C_k -= lr dL/dC_k. ``after_step`` re-projects W,
  so Adam or momentum state that differs between members cannot split a cluster.
  The exact derivative pair is ``shared_weights_forward``/``shared_weights_backward`` (C -> C[I]).
"""
import math
from dataclasses import dataclass

import numpy as np

from tinyzip.compress.base import Method, PackedTensor
from tinyzip.compress.magnitude_pruning import (  # stage 1 of the same pipeline
    _check_weight as _check_values, relative_index_decode, relative_index_encode,
)
from tinyzip.packing import pack_uint, unpack_uint

MAX_K = 1 << 16


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    return int(k)


def compression_rate(n: int, k: int, b: int = 32) -> float:
    """Eq. (1): r = n b / (n log2(k) + k b) for n weights of b bits sharing k values."""
    # Eq. (1)
    return n * b / (n * math.log2(k) + k * b)


def index_bits(K: int) -> int:
    """Bits per stored index for a codebook of K entries: ceil(log2 K), at least 1."""
    return max(1, math.ceil(math.log2(K)))


# ---- Sec. 3.2: initialisation -------------------------------------------------------------

def linear_init(x: np.ndarray, k: int) -> np.ndarray:
    """k points evenly spaced over [min x, max x] (k = 1: the midpoint)."""
    lo, hi = float(x.min()), float(x.max())
    return np.linspace(lo, hi, k) if k > 1 else np.array([(lo + hi) / 2.0])


def density_init(x: np.ndarray, k: int) -> np.ndarray:
    """Quantiles at p_j = (j + 1/2) / k of the empirical CDF (evenly spaced on its y-axis)."""
    return np.quantile(x, (np.arange(k) + 0.5) / k, method="inverted_cdf")


def forgy_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Forgy: k observations at k distinct random positions."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"Forgy initialisation needs rng: np.random.Generator, got {type(rng).__name__}")
    if k > x.size:
        raise ValueError(f"Forgy initialisation needs k <= n, got k={k}, n={x.size}")
    return x[rng.choice(x.size, size=k, replace=False)]


# ---- Eq. (2): Lloyd iterations ------------------------------------------------------------

def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid, argmin_j |x - c_j|, ties to the lower index j. (n,) int64."""
    # In 1-D the nearest centroid is one of the two sorted neighbours of x, because the computed
    # distance |x - c| is monotone in c on each side of x. O(n log k) instead of an (n, k) block.
    order = np.argsort(centroids, kind="stable")          # equal values: lower index first
    u = centroids[order]                                  # (k,) sorted
    new_run = np.r_[True, u[1:] != u[:-1]]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(u.size), 0))
    pos = np.searchsorted(u, x, side="left")              # u[pos - 1] < x <= u[pos]
    left = run_start[np.maximum(pos - 1, 0)]              # lowest index among equal values
    right = np.minimum(pos, u.size - 1)
    d_left = np.where(pos > 0, np.abs(x - u[left]), np.inf)
    d_right = np.where(pos < u.size, np.abs(x - u[right]), np.inf)
    pick_left = (d_left < d_right) | ((d_left == d_right) & (order[left] < order[right]))
    return order[np.where(pick_left, left, right)].astype(np.int64)


def assign_sorted(xs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``assign`` for sorted ``xs`` in O(k log n): each cluster is an interval of ``xs``.

    Between sorted neighbouring centroid values u_j < u_{j+1}, "x goes to u_{j+1}" is monotone in
    x, so the k - 1 interval ends are found by a binary search run for all j at once.
    """
    order = np.argsort(centroids, kind="stable")
    u, first = np.unique(centroids[order], return_index=True)    # first: lowest index per value
    rep = order[first]                                           # (m,) centroid index per value
    lo, hi = np.zeros(u.size - 1, np.int64), np.full(u.size - 1, xs.size, np.int64)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        x = xs[np.minimum(mid, xs.size - 1)]
        d_left, d_right = np.abs(x - u[:-1]), np.abs(x - u[1:])
        right = (d_right < d_left) | ((d_right == d_left) & (rep[1:] < rep[:-1]))
        goes_right = (x > u[1:]) | ((x >= u[:-1]) & right) | (mid >= xs.size)
        hi = np.where(goes_right & (lo < hi), mid, hi)
        lo = np.where(~goes_right & (lo < hi), mid + 1, lo)
    counts = np.diff(np.concatenate([[0], lo, [xs.size]]))       # (m,) points per value
    return np.repeat(rep, counts).astype(np.int64)


def update(x: np.ndarray, idx: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Every non-empty centroid becomes its members' mean; an empty one keeps its value."""
    counts = np.bincount(idx, minlength=centroids.size)
    sums = np.bincount(idx, weights=x, minlength=centroids.size)
    return np.where(counts > 0, sums / np.maximum(counts, 1), centroids)


def sse(x: np.ndarray, idx: np.ndarray, centroids: np.ndarray) -> float:
    """Eq. (2): within-cluster sum of squares."""
    # Eq. (2)
    return float(np.sum((x - centroids[idx]) ** 2))


def kmeans_1d(x: np.ndarray, k: int, init: str = "linear", rng: np.random.Generator | None = None,
              max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, list]:
    """Lloyd's k-means on a 1-D float array, in float64. Returns (centroids (k,), idx (n,), SSEs).

    ``SSEs`` holds the objective after each assignment step (non-increasing up to rounding).
    """
    _check_values(x, "x")
    k = _check_k(k)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if init not in ("linear", "density", "forgy"):
        raise ValueError(f"init must be 'linear', 'density' or 'forgy', got {init!r}")
    distinct = np.unique(x)
    if distinct.size <= k:      # exact optimum: every distinct value is a centroid
        centroids = np.concatenate([distinct, np.full(k - distinct.size, distinct[-1])])
        idx = assign(x, centroids)
        return centroids, idx, [sse(x, idx, centroids)]
    if init == "linear":
        centroids = linear_init(x, k)
    elif init == "density":
        centroids = density_init(x, k)
    else:
        centroids = forgy_init(x, k, rng)
    order = np.argsort(x, kind="stable")
    xs = x[order]                                        # (n,) sorted: clusters are intervals
    idx = assign_sorted(xs, centroids)
    history = [sse(xs, idx, centroids)]
    for _ in range(max_iter):
        centroids = update(xs, idx, centroids)
        new_idx = assign_sorted(xs, centroids)
        history.append(sse(xs, new_idx, centroids))
        if np.array_equal(new_idx, idx):
            break
        idx = new_idx
    out = np.empty_like(new_idx)
    out[order] = new_idx
    return centroids, out, history


def kmeans_quantize(W: np.ndarray, k: int, init: str = "linear", rng: np.random.Generator | None = None,
                    max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """One layer's codebook (K,) in W's dtype and indices (shape of W); zeros use the zero slot."""
    _check_values(W)
    k = _check_k(k)
    nonzero = W != 0
    codebook = np.zeros(k + (not nonzero.all()), dtype=np.float64)   # zero slot when W has zeros
    idx = np.full(W.shape, k, dtype=np.int64)
    if nonzero.any():
        codebook[:k], idx[nonzero], _ = kmeans_1d(W[nonzero], k, init, rng, max_iter)
    return codebook.astype(W.dtype), idx


# ---- Eq. (3): centroid fine-tuning --------------------------------------------------------

def shared_weights_forward(codebook: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, tuple]:
    """W = C[I]: every weight reads its shared value. Returns (W (shape of idx), cache)."""
    return codebook[idx], (idx, codebook.size)


def shared_weights_backward(dW: np.ndarray, cache: tuple) -> np.ndarray:
    """Eq. (3): dL/dC_k = sum_ij dL/dW_ij 1(I_ij = k). (K,)"""
    idx, K = cache
    # Eq. (3)
    return np.bincount(idx.ravel(), weights=dW.ravel(), minlength=K).astype(dW.dtype)


def _cluster_means(W, idx, K, frozen_zero):
    """Members' means, taken relative to each cluster's first member so that an already shared
    W comes back bit for bit (a plain sum / count of equal floats can round)."""
    flat_idx, flat_w = idx.ravel(), W.ravel().astype(np.float64)
    ref = np.zeros(K)
    present, first = np.unique(flat_idx, return_index=True)
    ref[present] = flat_w[first]
    dev = np.bincount(flat_idx, weights=flat_w - ref[flat_idx], minlength=K)
    C = ref + dev / np.maximum(np.bincount(flat_idx, minlength=K), 1)
    if frozen_zero:
        C[K - 1] = 0.0
    return C


@dataclass(frozen=True)
class SharedWeightTransform:
    """Trained quantization with fixed assignments ``idx`` (see the module docstring for backward)."""

    idx: np.ndarray
    K: int
    frozen_zero: bool = False        # True: the last codebook entry is the zero slot

    def forward(self, W):
        if W.shape != self.idx.shape:
            raise ValueError(f"assignments of shape {self.idx.shape} do not match weight {W.shape}")
        return _cluster_means(W, self.idx, self.K, self.frozen_zero).astype(W.dtype)[self.idx], None

    def backward(self, dW_eff, cache):
        dC = shared_weights_backward(dW_eff, (self.idx, self.K))
        if self.frozen_zero:
            dC[self.K - 1] = 0.0
        return dC[self.idx]          # Eq. (3) scattered back to every member of the cluster


def kmeans_method(params: dict, names, k: int, init: str = "linear",
                  rng: np.random.Generator | None = None) -> tuple[dict, Method]:
    """Cluster each named weight; returns (params with W = C[I], the fine-tuning Method)."""
    params, transforms = dict(params), {}
    for name in names:
        codebook, idx = kmeans_quantize(params[name], k, init, rng)
        params[name] = codebook[idx]
        transforms[name] = SharedWeightTransform(idx, codebook.size, codebook.size > k)

    def after_step(p):
        p = dict(p)
        for n, t in transforms.items():
            p[n] = _cluster_means(p[n], t.idx, t.K, t.frozen_zero).astype(p[n].dtype)[t.idx]
        return p

    return params, Method("kmeans", transforms, after_step=after_step)


# ---- export -------------------------------------------------------------------------------

def pack_codes(codebook: np.ndarray, idx: np.ndarray, k: int, gap_bits: int | None = None) -> PackedTensor:
    """Codebook + indices -> PackedTensor("kmeans"); with ``gap_bits`` only non-zeros are stored.

    Layout: ``codebook`` float32 (K,); ``indices`` uint8 ``pack_uint(idx, index_bits(K))`` over all
    weights, or with ``gap_bits`` over the stored entries (non-zeros and filler zeros, which use
    the zero slot) plus ``gaps`` uint8 ``pack_uint(d - 1, gap_bits)`` (Deep Compression Sec. 2).
    ``meta``: k, K, index_bits, count (indices stored), zero_slot, and gap_bits, fillers if sparse.
    """
    K = int(codebook.size)
    if K not in (k, k + 1) or not np.issubdtype(np.asarray(idx).dtype, np.integer) \
            or (idx.size and (idx.min() < 0 or idx.max() >= K)):
        raise ValueError(f"need a codebook of k or k + 1 entries and integer indices in [0, K); "
                         f"got k={k}, K={K}, idx dtype {np.asarray(idx).dtype}")
    bits = index_bits(K)
    zero_slot = K > k
    flat = idx.reshape(-1)
    meta = {"k": int(k), "K": K, "index_bits": bits, "zero_slot": bool(zero_slot)}
    arrays = {"codebook": codebook.astype(np.float32)}
    if gap_bits is not None:
        positions = np.flatnonzero(flat != k) if zero_slot else np.arange(flat.size)
        codes, stored = relative_index_encode(positions, gap_bits)
        flat = flat[stored]           # fillers sit on zeros, so they read the zero slot
        arrays["gaps"] = pack_uint(codes, gap_bits)
        meta.update(gap_bits=int(gap_bits), fillers=int(stored.size - positions.size))
    arrays["indices"] = pack_uint(flat, bits)
    meta["count"] = int(flat.size)
    return PackedTensor("kmeans", tuple(idx.shape), arrays, meta)


def pack_kmeans(W: np.ndarray, k: int, init: str = "linear", rng: np.random.Generator | None = None,
                max_iter: int = 100, gap_bits: int | None = None) -> PackedTensor:
    """Cluster ``W`` (``kmeans_quantize``) and export it (``pack_codes``)."""
    codebook, idx = kmeans_quantize(W, k, init, rng, max_iter)
    return pack_codes(codebook, idx, k, gap_bits)


def unpack_codes(packed: PackedTensor) -> tuple[np.ndarray, np.ndarray]:
    """(codebook float32 (K,), idx int64 of the dense shape) from a "kmeans" PackedTensor."""
    if packed.method != "kmeans":
        raise ValueError(f"unpack_kmeans needs method 'kmeans', got {packed.method!r}")
    meta, arrays = packed.meta, packed.arrays
    codebook = np.asarray(arrays["codebook"], dtype=np.float32)
    codes = unpack_uint(arrays["indices"], meta["index_bits"], meta["count"]).astype(np.int64)
    if codes.size and codes.max() >= codebook.size:
        raise ValueError(f"index {codes.max()} outside a codebook of {codebook.size} entries")
    size = int(np.prod(packed.shape, dtype=np.int64))
    if "gaps" not in arrays:
        if codes.size != size:
            raise ValueError(f"{codes.size} indices for a tensor of shape {packed.shape}")
        return codebook, codes.reshape(packed.shape)
    positions = relative_index_decode(unpack_uint(arrays["gaps"], meta["gap_bits"], meta["count"]))
    if (positions.size and positions[-1] >= size) or (not meta["zero_slot"] and positions.size != size):
        raise ValueError(f"{positions.size} sparse positions do not fit shape {packed.shape}")
    idx = np.full(size, meta["k"], dtype=np.int64)       # unstored entries: the zero slot
    idx[positions] = codes
    return codebook, idx.reshape(packed.shape)


def unpack_kmeans(packed: PackedTensor) -> np.ndarray:
    """Inverse of ``pack_kmeans``: the dense float32 tensor codebook[idx]."""
    codebook, idx = unpack_codes(packed)
    return codebook[idx]
