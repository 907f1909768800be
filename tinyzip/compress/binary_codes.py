"""Binary-coding quantization (BCQ): greedy, refined and alternating fits, STE and export.

Papers
------
* Guo, Yao, Zhao, Chen (2017). "Network Sketching: Exploiting Binary Structure in Deep CNNs".
  CVPR 2017, arXiv:1706.02021. Greedy residual binary codes ("direct approximation") and their
  least-squares refinement ("approximation with refinement"), there per conv filter.
* Xu, Yao, Lin, Ou, Cao, Wang, Zha (2018). "Alternating Multi-bit Quantization for Recurrent
  Neural Networks". ICLR 2018, arXiv:1802.00150. Alternate LS scales and optimal codes (found
  by a binary search over the sorted levels); two alternating cycles suffice, hence iters=2.

A q-bit binary code approximates each output unit's weight vector by q signed copies of a sign
vector. Students read it as the non-uniform sibling of int-q; kernel engineers feed the packed
sign planes to the lookup-table matmul in ``tinyzip.kernels.lut_gemm`` (BiQGEMM).

Layout (stated once, no silent transposes)
------------------------------------------
Our weights are ``W: (D_in, D_out)`` with ``y = x @ W``. The papers write ``y = W x`` and give
each *row* of their W its own scales; a row of theirs is one output unit, i.e. **a column of
our W**. So the alphas here have shape ``(q, D_out)`` and every reduction runs over axis 0
(``D_in``). For an embedding ``E: (V, D)`` a token's vector is a row of E, so the model-level
code quantizes ``E.T`` (D, V) and gives every token its own alphas (when the embedding is tied
to the output layer, ``E.T`` is exactly that layer's W).

Notation map (paper -> code, shapes)
------------------------------------
q -> ``q`` (bits); n -> ``D_in``; w (one row of theirs) -> ``W[:, j]``;
b_i in {-1,+1}^n -> ``B[i]`` (q, D_in, D_out) int8; alpha_i -> ``alpha[i]`` (q, D_out);
r_i (residual) -> ``R``; T (alternating cycles) -> ``iters``.

Equations (this file's numbering; the papers' own numbers were not checked against the PDFs)
-------------------------------------------------------------------------------------------
(1) W[:, j] ~ sum_{i=1..q} alpha[i, j] * B[i, :, j]                               (BCQ)
(2) greedy: B[i] = sign(R_{i-1}) with sign(0) = +1, R_0 = W                        (Guo)
(3)         alpha[i] = mean_k |R_{i-1}[k, :]|      (the optimal 1-bit fit of R_{i-1})
(4)         R_i = R_{i-1} - alpha[i] * B[i]; so ||R_i||^2 = ||R_{i-1}||^2 - D_in * alpha[i]^2
(5) refit: alpha[:, j] = argmin_a ||W[:, j] - B[:, :, j].T a||^2 = pinv(B_j) W[:, j]  (Guo, Xu)
(6) codes: B[:, k, j] = argmin_{s in {-1,+1}^q} |W[k, j] - s . alpha[:, j]|           (Xu)
    alternating (Xu): greedy init, then ``iters`` times (5) then (6), and a final (5).
Where the bits go in a Transformer (Chung et al. 2020: frequency-aware embedding widths, a width
per sub-layer type, staged retraining) is ``chung.py``.

Deviations and choices
----------------------
* sign(0) = +1, as in the Chung et al. first author's public replication code (``(w >= 0) * 2 - 1``);
  a plain ``torch.sign`` / ``np.sign`` would give a 0 code.
* (5) is solved for all columns at once through the Gram matrices G = B_j^T B_j (exact small
  integers) and ``np.linalg.pinv(G, hermitian=True)``: with duplicate or linearly dependent codes
  G is singular and pinv returns the minimum-norm least-squares alphas (pinv(G) B^T w equals
  pinv(B) w). Alphas may come out negative; the level set {s . alpha} does not care.
* (6) sorts the 2^q levels of each column and counts the midpoints w has reached; a w exactly on
  a midpoint takes the upper level (Xu's binary search sends ``w < mid`` left). Same result as a
  binary search, written as q-independent array code.
* Storage precision: ``binary_codes(..., alpha_dtype=np.float16)`` rounds the alphas of the
  final fit to float16 and returns them as float16; the STE forward, the packed file and the
  unpacked model all use exactly those rounded alphas (the codes are not re-assigned after the
  rounding, a relative change of at most 2^-11 per alpha). Packing stores float16 alphas as
  float16 and any other alphas as float32.
"""
from dataclasses import dataclass
from itertools import product

import numpy as np

from tinyzip.compress.base import PackedTensor
from tinyzip.packing import pack_uint, unpack_uint

MAX_BITS = 8


def _check_weights(W) -> np.ndarray:
    if not isinstance(W, np.ndarray) or W.dtype not in (np.float32, np.float64):
        raise TypeError(f"W must be a float32/float64 ndarray, got {getattr(W, 'dtype', type(W))}")
    if W.ndim != 2 or W.size == 0:
        raise ValueError(f"W must be a non-empty 2-D (D_in, D_out) array, got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise ValueError("W contains NaN or inf")
    return W


def _check_q(q) -> int:
    if not isinstance(q, (int, np.integer)) or isinstance(q, bool):
        raise TypeError(f"q must be an int, got {type(q).__name__}")
    if not 1 <= q <= MAX_BITS:
        raise ValueError(f"q must be in 1..{MAX_BITS}, got {q}")
    return int(q)


def dequantize(B: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Eq. (1): W_hat = sum_i alpha[i] * B[i].  B: (q, D_in, D_out), alpha: (q, D_out).
    Computed in float32 at least (float16 alphas are widened exactly), float64 for float64 alphas."""
    if B.ndim != 3 or alpha.shape != (B.shape[0], B.shape[2]):
        raise ValueError(f"codes {B.shape} and alphas {alpha.shape} do not match (q, D_in, D_out)/(q, D_out)")
    alpha = alpha.astype(np.promote_types(alpha.dtype, np.float32), copy=False)
    return np.einsum("ikj,ij->kj", B, alpha).astype(alpha.dtype)          # (D_in, D_out)
def greedy_codes(W: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Eqs. (2)-(4), Guo et al.: codes (q, D_in, D_out) int8 and alphas (q, D_out)."""
    W, q = _check_weights(W), _check_q(q)
    R = W.copy()
    B = np.empty((q,) + W.shape, dtype=np.int8)                            # (q, D_in, D_out)
    alpha = np.empty((q, W.shape[1]), dtype=W.dtype)
    for i in range(q):
        # Eq. (2)
        B[i] = np.where(R >= 0, 1, -1)
        # Eq. (3); each column summed as a contiguous row, so in the same (pairwise) order whether it
        # is coded alone or inside a matrix: NumPy sums a strided axis in another order, and the
        # 1-ulp difference could become a float16 step of a stored alpha (found by hypothesis)
        alpha[i] = np.ascontiguousarray(np.abs(R).T).mean(axis=1)
        # Eq. (4)
        R -= alpha[i] * B[i]
    return B, alpha


def refit_alphas(W: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Eq. (5): least-squares alphas (q, D_out) for fixed codes; pinv handles dependent codes."""
    W = _check_weights(W)
    if B.ndim != 3 or B.shape[1:] != W.shape:
        raise ValueError(f"codes of shape {B.shape} do not fit W of shape {W.shape}")
    q, W64 = B.shape[0], W.astype(np.float64)
    G = np.empty((W.shape[1], q, q))                                       # (D_out, q, q): B_j^T B_j
    rhs = np.empty((W.shape[1], q))                                        # (D_out, q):    B_j^T w_j
    for i in range(q):
        rhs[:, i] = (B[i] * W64).sum(axis=0)
        for l in range(q):
            G[:, i, l] = (B[i] * B[l]).sum(axis=0, dtype=np.int64)         # exact small integers
    # Eq. (5)
    alpha = np.einsum("jil,jl->ij", np.linalg.pinv(G, hermitian=True), rhs)  # (q, D_out)
    return alpha.astype(W.dtype)


def _sign_patterns(q: int) -> np.ndarray:
    return np.array(list(product((-1, 1), repeat=q)), dtype=np.int8)      # (2^q, q)


def assign_codes(W: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Eq. (6): for fixed alphas, each weight's nearest level s . alpha -> codes (q, D_in, D_out)."""
    W = _check_weights(W)
    if alpha.ndim != 2 or alpha.shape[1] != W.shape[1]:
        raise ValueError(f"alphas of shape {alpha.shape} do not fit W of shape {W.shape}")
    q = _check_q(alpha.shape[0])
    S = _sign_patterns(q)                                                  # (2^q, q)
    levels = S.astype(np.float64) @ alpha.astype(np.float64)              # (2^q, D_out)
    order = np.argsort(levels, axis=0, kind="stable")                      # (2^q, D_out)
    sorted_levels = np.take_along_axis(levels, order, axis=0)
    mids = 0.5 * (sorted_levels[1:] + sorted_levels[:-1])                  # (2^q - 1, D_out)
    rank = np.zeros(W.shape, dtype=np.int64)                               # (D_in, D_out)
    for mid in mids:                                                       # sorted-levels search
        rank += W >= mid
    # Eq. (6)
    pattern = np.take_along_axis(order, rank, axis=0)                      # (D_in, D_out)
    return np.ascontiguousarray(np.moveaxis(S[pattern], -1, 0))            # (q, D_in, D_out)


def alternating_codes(W: np.ndarray, q: int, iters: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Xu et al.: greedy init, ``iters`` rounds of Eq. (5) then Eq. (6), then a final Eq. (5)."""
    if not isinstance(iters, (int, np.integer)) or iters < 0:
        raise ValueError(f"iters must be a non-negative int, got {iters!r}")
    B, _ = greedy_codes(W, q)
    for _ in range(int(iters)):
        B = assign_codes(W, refit_alphas(W, B))
    return B, refit_alphas(W, B)


def storage_alphas(alpha: np.ndarray, alpha_dtype=None) -> np.ndarray:
    """Alphas rounded to the float type they are stored in (None: unchanged); overflow is an error."""
    if alpha_dtype is None:
        return alpha
    alpha_dtype = np.dtype(alpha_dtype)
    if alpha_dtype not in (np.float16, np.float32):
        raise TypeError(f"alpha_dtype must be float16, float32 or None, got {alpha_dtype}")
    with np.errstate(over="ignore"):
        rounded = alpha.astype(alpha_dtype)
    if not np.all(np.isfinite(rounded)):
        raise ValueError(f"alphas up to {np.abs(alpha).max():.3g} do not fit in {alpha_dtype}")
    return rounded


def binary_codes(W: np.ndarray, q: int, method: str = "alternating", iters: int = 2, alpha_dtype=None):
    """One entry point: ``method`` is "greedy" (Eqs. 2-4), "refined" (+ Eq. 5) or "alternating";
    the final alphas are rounded to ``alpha_dtype`` (float16 or float32; None keeps W's dtype)."""
    if method == "greedy":
        B, alpha = greedy_codes(W, q)
    elif method == "refined":
        B, _ = greedy_codes(W, q)
        alpha = refit_alphas(W, B)
    elif method == "alternating":
        B, alpha = alternating_codes(W, q, iters)
    else:
        raise ValueError(f"method must be 'greedy', 'refined' or 'alternating', got {method!r}")
    return B, storage_alphas(alpha, alpha_dtype)


@dataclass(frozen=True)
class BinaryCodesSTE:
    """QAT transform: forward = Eq. (1) of the fitted codes (alphas at storage precision, so the
    forward is exactly the model the file holds); backward = identity STE.

    The variant is the plain straight-through estimator dW = dW_hat, everywhere (no clip mask:
    BCQ has no clipping range, its largest level grows with the weights).
    """

    q: int
    method: str = "alternating"
    iters: int = 2
    alpha_dtype: object = None

    def forward(self, W):
        B, alpha = binary_codes(W, self.q, self.method, self.iters, self.alpha_dtype)
        return dequantize(B, alpha).astype(W.dtype, copy=False), None

    def backward(self, dW_hat, cache):
        return dW_hat


def pack_binary_codes(B: np.ndarray, alpha: np.ndarray) -> PackedTensor:
    """Sign planes as bits (1 -> +1, 0 -> -1) and the alphas: q*D_in bits + 2q or 4q bytes per unit.

    ``planes``: uint8 (q, D_out, ceil(D_in / 8)); bit t of byte c of ``planes[i, j]`` is the code
    of W[8c + t, j] in plane i (LSB first, ``tinyzip.packing`` order; pad bits are 0). Each
    byte is one mu = 8 key of the LUT kernel. ``alphas``: (q, D_out), float16 when given as
    float16 (fitted with ``alpha_dtype=np.float16``), else float32.
    """
    q, D_in, D_out = B.shape
    if alpha.shape != (q, D_out) or not np.all(np.abs(B) == 1):
        raise ValueError(f"need codes in {{-1,+1}} (q, D_in, D_out) and alphas (q, D_out); got {B.shape}, {alpha.shape}")
    if not np.issubdtype(alpha.dtype, np.floating) or not np.all(np.isfinite(alpha)):
        raise ValueError(f"alphas must be finite floats, got {alpha.dtype}")
    Kb = -(-D_in // 8)
    bits = np.zeros((q, D_out, 8 * Kb), dtype=np.uint8)                   # (q, D_out, 8 Kb)
    bits[:, :, :D_in] = np.moveaxis(B, 1, 2) > 0
    planes = pack_uint(bits, 1).reshape(q, D_out, Kb)                      # (q, D_out, Kb)
    stored = alpha if alpha.dtype == np.float16 else alpha.astype(np.float32)
    meta = {"q": q, "layout": f"planes[q, D_out, ceil(D_in/8)] LSB-first bits of W[:, j] (1=+1, 0=-1); "
                              f"alphas[q, D_out] {stored.dtype}; W[k, j] = sum_i alphas[i, j] * b_i[k, j]"}
    return PackedTensor("binary_codes", (D_in, D_out), {"planes": planes, "alphas": stored}, meta)


def unpack_codes(packed: PackedTensor) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``pack_binary_codes``: codes int8 (q, D_in, D_out) and float32 alphas (q, D_out)."""
    if packed.method != "binary_codes":
        raise ValueError(f"not a binary_codes tensor: method {packed.method!r}")
    D_in, D_out = packed.shape
    planes, alpha = packed.arrays["planes"], packed.arrays["alphas"]
    q, Kb = int(packed.meta["q"]), -(-D_in // 8)
    if planes.dtype != np.uint8 or planes.shape != (q, D_out, Kb) or alpha.shape != (q, D_out):
        raise ValueError(f"planes {planes.dtype}{planes.shape} / alphas {alpha.shape} do not match q={q}, shape {packed.shape}")
    if alpha.dtype not in (np.float16, np.float32):
        raise ValueError(f"alphas must be stored as float16 or float32, got {alpha.dtype}")
    bits = unpack_uint(planes.reshape(-1), 1, 8 * planes.size).reshape(q, D_out, 8 * Kb)[:, :, :D_in]
    B = (2 * np.moveaxis(bits, 2, 1).astype(np.int8) - 1)                  # (q, D_in, D_out)
    return np.ascontiguousarray(B), alpha.astype(np.float32)


def unpack_binary_codes(packed: PackedTensor) -> np.ndarray:
    """The float32 weights (D_in, D_out) a packed binary-code tensor stands for, Eq. (1)."""
    return dequantize(*unpack_codes(packed))
