"""Magnitude pruning: per-layer std threshold, exact-k sparsity, cubic gradual schedule, masks.

Papers
------
* Song Han, Jeff Pool, John Tran, William J. Dally (2015). "Learning both Weights and Connections
  for Efficient Neural Networks". NeurIPS 2015, arXiv:1506.02626. Train, prune every connection
  whose |w| is below a per-layer threshold, retrain the survivors (not re-initialised); iterate.
  Sec. 4: "the pruning threshold is chosen as a quality parameter multiplied by the standard
  deviation of a layer's weights"; pruning is a mask per weight blob that also masks the update.
* Michael Zhu, Suyog Gupta (2017). "To prune, or not to prune: exploring the efficacy of pruning for
  model compression". arXiv:1710.01878. Gradual pruning: the sparsity target of every layer follows
  a cubic schedule; at each pruning step the smallest-magnitude weights are masked until the layer
  reaches the target.
* Song Han, Huizi Mao, William J. Dally (2016). "Deep Compression". ICLR 2016, arXiv:1510.00149,
  Sec. 2 and Fig. 2: the sparse structure is stored as relative indices (index differences) of a
  fixed width, 8 bits for conv and 5 bits for fc layers in the text (Table 4 stores AlexNet's with
  4 bits); a difference that does not fit gets a filler zero.

Notation map (paper -> code)
----------------------------
W_l (layer weights)        -> ``W`` (D_in, D_out), any float array
quality parameter q        -> ``q``;  sigma(W_l) -> ``np.std`` (ddof=0) over the surviving weights
mask M (1 = kept)          -> ``mask``, bool, same shape as ``W``
s_i, s_f, t0, n, dt        -> ``s_initial, s_final, t0, n, dt`` (Zhu & Gupta Eq. (1))
index difference, bits     -> ``gaps``, ``index_bits``

Equations
---------
Han Sec. 4:        keep  w  <=>  |w| >= q * sigma(W)       (prune strictly below the threshold)
Exact k:           prune the  n_p = floor(s * N + 1/2)  smallest |w| (s * N rounded half up); ties
                   in |w| are broken by flat (row-major) index, the lower index is pruned first;
                   weights already pruned count as the smallest, so masks never grow back.
Zhu & Gupta Eq. (1):  s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3,
                   t in {t0, t0 + dt, ..., t0 + n dt}; clamped: s_i before t0, s_f after t0 + n dt.
Relative index:    positions p_0 < p_1 < ... of the stored entries in the flattened W,
                   gap d_j = p_j - p_{j-1} with p_{-1} = -1, so d_j >= 1; the code stored in
                   ``index_bits`` bits is d_j - 1, so the largest gap is 2^bits. A longer gap gets
                   filler zeros every 2^bits positions: floor((d - 1) / 2^bits) fillers per gap.

Deviations and choices
----------------------
* sigma is taken over the weights still unpruned (the paper does not say; with an all-kept mask it
  is the layer's std). A zero-size survivor set prunes nothing further.
* The paper's Fig. 2 calls 8 "the largest 3-bit unsigned number"; storing d - 1 makes that true
  (3 bits reach a gap of 8). Positions are row-major over the whole matrix, not per CSR row.
* Iterative rounds use geometric targets s_r = 1 - (1 - s_f)^(r / R): each round prunes the same
  fraction of the survivors (Han et al. give no formula).
"""
from dataclasses import dataclass

import numpy as np

from tinyzip.compress.base import Method, PackedTensor
from tinyzip.packing import pack_uint, unpack_uint

EMBEDDING_NAMES = ("emb", "src_emb", "tgt_emb")


def _check_weight(W, name="W"):
    if not isinstance(W, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(W).__name__}")
    if not np.issubdtype(W.dtype, np.floating):
        raise TypeError(f"{name} must be a float array, got dtype {W.dtype}")
    if W.size == 0:
        raise ValueError(f"{name} is empty (shape {W.shape})")
    if not np.all(np.isfinite(W)):
        raise ValueError(f"{name} has NaN or inf entries")


def _check_mask(mask, W):
    if mask is None:
        return np.ones(W.shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != W.shape:
        raise TypeError(f"mask must be bool of shape {W.shape}, got {mask.dtype} {mask.shape}")
    return mask


def _check_sparsity(s, name="sparsity"):
    if isinstance(s, bool) or not isinstance(s, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(s).__name__}")
    if not 0.0 <= float(s) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {s}")
    return float(s)


def std_threshold_mask(W: np.ndarray, q: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Han et al. Sec. 4: keep |w| >= q * std(surviving W); returns the new bool mask (shape of W)."""
    _check_weight(W)
    mask = _check_mask(mask, W)
    if isinstance(q, bool) or not isinstance(q, (int, float, np.floating, np.integer)) \
            or not np.isfinite(q) or q < 0:
        raise ValueError(f"quality parameter q must be a finite number >= 0, got {q!r}")
    if not mask.any():
        return mask.copy()
    sigma = float(np.std(W[mask], dtype=np.float64))
    # Han Sec. 4: threshold = quality parameter x standard deviation of the layer's weights
    threshold = q * sigma
    return mask & (np.abs(W) >= threshold)


def num_to_prune(size: int, sparsity: float) -> int:
    """n_p = floor(s * N + 1/2): the target sparsity times the size, rounded half up."""
    return min(int(np.floor(_check_sparsity(sparsity) * size + 0.5)), int(size))


def _prune_order(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Flat indices from first- to last-pruned: already pruned first, then by |w|, then by index."""
    key = np.where(mask.ravel(), scores.ravel(), -1.0)   # |w| >= 0, so pruned entries sort first
    return np.argsort(key, kind="stable")                # stable: equal keys keep index order


def topk_mask(W: np.ndarray, sparsity: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Layer-wise exact-k mask: exactly ``num_to_prune(W.size, s)`` entries are False.

    Already pruned entries (``mask`` False) are pruned first, so the new mask is <= ``mask``
    whenever the target is at least the current sparsity.
    """
    _check_weight(W)
    mask = _check_mask(mask, W)
    order = _prune_order(np.abs(W.astype(np.float64)), mask)
    new = np.ones(W.size, dtype=bool)
    new[order[: num_to_prune(W.size, sparsity)]] = False
    return new.reshape(W.shape)


def global_topk_masks(weights: dict, sparsity: float, masks: dict | None = None) -> dict:
    """Global exact-k masks over all tensors together; ties by (name order as given, flat index)."""
    if not weights:
        raise ValueError("global_topk_masks needs at least one weight")
    masks = masks or {}
    names = list(weights)
    for name in names:
        _check_weight(weights[name], name)
    flat_w = np.concatenate([np.abs(weights[n].astype(np.float64)).ravel() for n in names])
    flat_m = np.concatenate([_check_mask(masks.get(n), weights[n]).ravel() for n in names])
    order = _prune_order(flat_w, flat_m)
    keep = np.ones(flat_w.size, dtype=bool)
    keep[order[: num_to_prune(flat_w.size, sparsity)]] = False
    out, start = {}, 0
    for name in names:
        size = weights[name].size
        out[name] = keep[start: start + size].reshape(weights[name].shape)
        start += size
    return out


def cubic_sparsity(t: int, s_initial: float, s_final: float, t0: int, n: int, dt: int) -> float:
    """Zhu & Gupta Eq. (1): the target sparsity at step t, clamped outside [t0, t0 + n dt]."""
    s_i, s_f = _check_sparsity(s_initial, "s_initial"), _check_sparsity(s_final, "s_final")
    if n < 1 or dt < 1:
        raise ValueError(f"cubic schedule needs n >= 1 and dt >= 1, got n={n}, dt={dt}")
    progress = min(max((t - t0) / (n * dt), 0.0), 1.0)
    # Eq. (1)
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def is_pruning_step(t: int, t0: int, n: int, dt: int) -> bool:
    """True at t in {t0, t0 + dt, ..., t0 + n dt}: the steps where Zhu & Gupta update masks."""
    return t0 <= t <= t0 + n * dt and (t - t0) % dt == 0


def iterative_targets(s_final: float, rounds: int) -> list[float]:
    """Geometric prune-retrain targets s_r = 1 - (1 - s_f)^(r/R), r = 1..R (last one is s_f)."""
    s_f = _check_sparsity(s_final, "s_final")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    return [1.0 - (1.0 - s_f) ** (r / rounds) for r in range(1, rounds)] + [s_f]


def prunable_names(params: dict, include_embeddings: bool = False) -> list[str]:
    """The 2-D weights (CONTRACT param names), embeddings only when asked; sorted for determinism."""
    return sorted(name for name, value in params.items() if np.ndim(value) == 2
                  and (include_embeddings or name not in EMBEDDING_NAMES))


# ---- masks as weight transforms --------------------------------------------------------------

@dataclass(frozen=True)
class MaskTransform:
    """forward: W_eff = W * M;  backward: dW = dW_eff * M (pruned weights get no gradient)."""

    mask: np.ndarray

    def forward(self, W):
        if W.shape != self.mask.shape:
            raise ValueError(f"mask shape {self.mask.shape} does not match weight shape {W.shape}")
        return W * self.mask.astype(W.dtype), None

    def backward(self, dW_eff, cache):
        return dW_eff * self.mask.astype(dW_eff.dtype)


def apply_masks(params: dict, masks: dict) -> dict:
    """W <- W * M for every masked parameter; a new dict (the arrays of others are shared)."""
    out = dict(params)
    for name, mask in masks.items():
        out[name] = params[name] * mask.astype(params[name].dtype)
    return out


def pruning_method(masks: dict) -> Method:
    """The model-level method: mask transforms plus an ``after_step`` that re-applies the masks.

    Masking the gradient is not enough: momentum or Adam moments built up before pruning, and
    decoupled weight decay, still move a pruned weight; ``after_step`` puts it back to exactly 0.
    """
    masks = {name: np.asarray(m, dtype=bool) for name, m in masks.items()}
    return Method("magnitude_pruning", {n: MaskTransform(m) for n, m in masks.items()},
                  after_step=lambda params: apply_masks(params, masks))


def prune_params(params: dict, sparsity: float, *, scope: str = "layer", names=None,
                 masks: dict | None = None) -> tuple[dict, dict]:
    """One pruning round: new masks at ``sparsity`` (layer-wise or global) and the masked params."""
    names = prunable_names(params) if names is None else list(names)
    masks = masks or {}
    if scope == "layer":
        new = {n: topk_mask(params[n], sparsity, masks.get(n)) for n in names}
    elif scope == "global":
        new = global_topk_masks({n: params[n] for n in names}, sparsity, masks)
    else:
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    return apply_masks(params, new), new


# ---- export: Deep Compression relative indices --------------------------------------------

def _check_index_bits(index_bits):
    if isinstance(index_bits, bool) or not isinstance(index_bits, (int, np.integer)):
        raise TypeError(f"index_bits must be an int, got {type(index_bits).__name__}")
    if not 1 <= index_bits <= 16:
        raise ValueError(f"index_bits must be in 1..16, got {index_bits}")
    return int(index_bits)


def relative_index_encode(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted flat positions -> (gap codes d - 1 in [0, 2^bits), stored positions incl. fillers)."""
    bits = _check_index_bits(index_bits)
    positions = np.asarray(positions, dtype=np.int64)
    if positions.ndim != 1 or (positions.size and (positions[0] < 0 or np.any(np.diff(positions) <= 0))):
        raise ValueError("positions must be a 1-D strictly increasing array of indices >= 0")
    span = 1 << bits
    gaps = np.diff(positions, prepend=-1)                       # d_j >= 1
    fillers = (gaps - 1) // span                                # floor((d - 1) / 2^bits) per gap
    # a gap d becomes `fillers` steps of 2^bits followed by the remainder
    n_fill = int(fillers.sum())
    owner = np.repeat(np.arange(positions.size), fillers)       # (n_fill,) which gap each filler splits
    step = np.arange(n_fill) - np.repeat(np.cumsum(fillers) - fillers, fillers) + 1
    prev = np.concatenate([[-1], positions[:-1]]) if positions.size else positions
    filler_pos = prev[owner] + step * span                      # (n_fill,)
    stored = np.sort(np.concatenate([positions, filler_pos]))   # (count + n_fill,)
    codes = np.diff(stored, prepend=-1) - 1
    return codes.astype(np.int64), stored


def relative_index_decode(codes: np.ndarray) -> np.ndarray:
    """Gap codes (d - 1) -> stored flat positions (fillers included): p_j = sum_{i<=j} (c_i + 1) - 1."""
    return np.cumsum(np.asarray(codes, dtype=np.int64) + 1) - 1


def pack_sparse(W: np.ndarray, index_bits: int = 5) -> PackedTensor:
    """Deep Compression sparse export: float32 values + relative-index gap codes of ``index_bits``.

    Layout: ``arrays = {"values": float32 (m,), "gaps": uint8 pack_uint(d - 1, index_bits)}``,
    ``meta = {"index_bits", "count": m (stored entries incl. fillers), "fillers"}``; a filler stores
    value 0.0. ``W`` zeros are the pruned weights; the dense shape is ``PackedTensor.shape``.
    """
    _check_weight(W)
    bits = _check_index_bits(index_bits)
    flat = W.reshape(-1)
    positions = np.flatnonzero(flat)
    codes, stored = relative_index_encode(positions, bits)
    values = flat[stored].astype(np.float32)                    # fillers read the zero they sit on
    return PackedTensor("sparse", tuple(W.shape),
                        {"values": values, "gaps": pack_uint(codes, bits)},
                        {"index_bits": bits, "count": int(stored.size),
                         "fillers": int(stored.size - positions.size)})


def unpack_sparse(packed: PackedTensor) -> np.ndarray:
    """Inverse of ``pack_sparse``: the dense float32 tensor."""
    if packed.method != "sparse":
        raise ValueError(f"unpack_sparse needs method 'sparse', got {packed.method!r}")
    bits, count = packed.meta["index_bits"], packed.meta["count"]
    positions = relative_index_decode(unpack_uint(packed.arrays["gaps"], bits, count))
    size = int(np.prod(packed.shape, dtype=np.int64))
    values = np.asarray(packed.arrays["values"], dtype=np.float32)
    if values.shape != (count,) or (count and positions[-1] >= size):
        raise ValueError(f"sparse tensor of shape {packed.shape}: {values.shape} values or "
                         f"positions up to {positions[-1] if count else None} do not fit")
    dense = np.zeros(size, dtype=np.float32)
    dense[positions] = values
    return dense.reshape(packed.shape)
