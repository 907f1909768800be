"""Binary-coding quantization (BCQ): greedy, refined and alternating fits, STE, export, and
the model-level strategy of Chung et al. 2020.

Papers
------
* Guo, Yao, Zhao, Chen (2017). "Network Sketching: Exploiting Binary Structure in Deep CNNs".
  CVPR 2017, arXiv:1706.02021. Greedy residual binary codes ("direct approximation") and their
  least-squares refinement ("approximation with refinement"), there per conv filter.
* Xu, Yao, Lin, Ou, Cao, Wang, Zha (2018). "Alternating Multi-bit Quantization for Recurrent
  Neural Networks". ICLR 2018, arXiv:1802.00150. Alternate LS scales and optimal codes (found
  by a binary search over the sorted levels); two alternating cycles suffice, hence iters=2.
* Chung, Kim, Choi, Kwon, Jeon, Park, Kim, Lee (2020). "Extremely Low Bit Transformer
  Quantization for On-Device Neural Machine Translation". Findings of EMNLP 2020,
  arXiv:2009.07453. Mixed-precision BCQ of a Transformer: more bits for frequent words, a bit
  width per block type, quantization-aware retraining block by block.

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

Deviations and choices
----------------------
* sign(0) = +1 (Guo's and Chung's public code use ``torch.sign``, which gives a 0 code).
* (5) is solved for all columns at once through the Gram matrices G = B_j^T B_j (exact small
  integers) and ``np.linalg.pinv(G, hermitian=True)``: with duplicate or linearly dependent codes
  G is singular and pinv returns the minimum-norm least-squares alphas (pinv(G) B^T w equals
  pinv(B) w). Alphas may come out negative; the level set {s . alpha} does not care.
* (6) sorts the 2^q levels of each column and counts the midpoints w has reached; a w exactly on
  a midpoint takes the upper level (Xu's binary search sends ``w < mid`` left). Same result as a
  binary search, written as q-independent array code.
* Chung et al.: the embedding bit-allocation rule, the block bit widths and the block order of
  the staged schedule below are our reading; the paper's method section could not be checked.
"""
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from tinyzip.compress.base import Method, PackedTensor
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
    """Eq. (1): W_hat = sum_i alpha[i] * B[i].  B: (q, D_in, D_out), alpha: (q, D_out)."""
    if B.ndim != 3 or alpha.shape != (B.shape[0], B.shape[2]):
        raise ValueError(f"codes {B.shape} and alphas {alpha.shape} do not match (q, D_in, D_out)/(q, D_out)")
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
        # Eq. (3)
        alpha[i] = np.abs(R).mean(axis=0)
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


def binary_codes(W: np.ndarray, q: int, method: str = "alternating", iters: int = 2):
    """One entry point: ``method`` is "greedy" (Eqs. 2-4), "refined" (+ Eq. 5) or "alternating"."""
    if method == "greedy":
        return greedy_codes(W, q)
    if method == "refined":
        B, _ = greedy_codes(W, q)
        return B, refit_alphas(W, B)
    if method == "alternating":
        return alternating_codes(W, q, iters)
    raise ValueError(f"method must be 'greedy', 'refined' or 'alternating', got {method!r}")


@dataclass(frozen=True)
class BinaryCodesSTE:
    """QAT transform: forward = Eq. (1) of the fitted codes; backward = identity STE.

    The variant is the plain straight-through estimator dW = dW_hat, everywhere (no clip mask:
    BCQ has no clipping range, its largest level grows with the weights).
    """

    q: int
    method: str = "alternating"
    iters: int = 2

    def forward(self, W):
        B, alpha = binary_codes(W, self.q, self.method, self.iters)
        return dequantize(B, alpha), None

    def backward(self, dW_hat, cache):
        return dW_hat


def pack_binary_codes(B: np.ndarray, alpha: np.ndarray) -> PackedTensor:
    """Sign planes as bits (1 -> +1, 0 -> -1) and float32 alphas: q*D_in bits + 4q bytes per unit.

    ``planes``: uint8 (q, D_out, ceil(D_in / 8)); bit t of byte c of ``planes[i, j]`` is the code
    of W[8c + t, j] in plane i (LSB first, ``tinyzip.packing`` order; pad bits are 0). Each
    byte is one mu = 8 key of the LUT kernel. ``alphas``: float32 (q, D_out).
    """
    q, D_in, D_out = B.shape
    if alpha.shape != (q, D_out) or not np.all(np.abs(B) == 1):
        raise ValueError(f"need codes in {{-1,+1}} (q, D_in, D_out) and alphas (q, D_out); got {B.shape}, {alpha.shape}")
    Kb = -(-D_in // 8)
    bits = np.zeros((q, D_out, 8 * Kb), dtype=np.uint8)                   # (q, D_out, 8 Kb)
    bits[:, :, :D_in] = np.moveaxis(B, 1, 2) > 0
    planes = pack_uint(bits, 1).reshape(q, D_out, Kb)                      # (q, D_out, Kb)
    meta = {"q": q, "layout": "planes[q, D_out, ceil(D_in/8)] LSB-first bits of W[:, j] (1=+1, 0=-1); "
                              "alphas[q, D_out] float32; W[k, j] = sum_i alphas[i, j] * b_i[k, j]"}
    return PackedTensor("binary_codes", (D_in, D_out), {"planes": planes, "alphas": alpha.astype(np.float32)}, meta)


def unpack_codes(packed: PackedTensor) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``pack_binary_codes``: codes int8 (q, D_in, D_out) and float32 alphas (q, D_out)."""
    if packed.method != "binary_codes":
        raise ValueError(f"not a binary_codes tensor: method {packed.method!r}")
    D_in, D_out = packed.shape
    planes, alpha = packed.arrays["planes"], packed.arrays["alphas"]
    q, Kb = int(packed.meta["q"]), -(-D_in // 8)
    if planes.dtype != np.uint8 or planes.shape != (q, D_out, Kb) or alpha.shape != (q, D_out):
        raise ValueError(f"planes {planes.dtype}{planes.shape} / alphas {alpha.shape} do not match q={q}, shape {packed.shape}")
    bits = unpack_uint(planes.reshape(-1), 1, 8 * planes.size).reshape(q, D_out, 8 * Kb)[:, :, :D_in]
    B = (2 * np.moveaxis(bits, 2, 1).astype(np.int8) - 1)                  # (q, D_in, D_out)
    return np.ascontiguousarray(B), alpha.astype(np.float32)


def unpack_binary_codes(packed: PackedTensor) -> np.ndarray:
    """The float32 weights (D_in, D_out) a packed binary-code tensor stands for, Eq. (1)."""
    return dequantize(*unpack_codes(packed))


# --- Model level: Chung et al. 2020 on a Seq2Seq params dict (names as in CONTRACT.md) -------

def embedding_bits(token_freqs: np.ndarray, max_bits: int = 3, ratio: float = 0.1) -> np.ndarray:
    """Bits per token (V,): rank tokens by training-data frequency (ties: lower id first);
    the top ratio^(max_bits-1) fraction gets max_bits, the top ratio^(max_bits-2) max_bits-1,
    ..., the top ``ratio`` fraction 2 bits and every other token 1 bit (cluster sizes rounded up).
    Frequent words get more bits; with ratio=0.1 the average is just above 1 bit per weight.
    """
    token_freqs = np.asarray(token_freqs)
    if token_freqs.ndim != 1 or token_freqs.size == 0 or not np.issubdtype(token_freqs.dtype, np.number):
        raise ValueError(f"token_freqs must be a non-empty 1-D numeric array, got {token_freqs.dtype} {token_freqs.shape}")
    if not np.all(np.isfinite(token_freqs)) or np.any(token_freqs < 0):
        raise ValueError("token_freqs must be finite and non-negative")
    max_bits = _check_q(max_bits)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must lie in (0, 1), got {ratio}")
    V = token_freqs.size
    rank = np.empty(V, dtype=np.int64)
    rank[np.argsort(-token_freqs, kind="stable")] = np.arange(V)          # 0 = most frequent
    bits = np.ones(V, dtype=np.int64)
    for b in range(2, max_bits + 1):
        bits[rank < int(np.ceil(ratio ** (b - 1) * V))] = b
    return bits


@dataclass(frozen=True)
class ChungBits:
    """Bit widths per block type (illustrative defaults: the decoder, run once per output token,
    gets the fewest bits; the paper's per-block table is not reproduced here)."""

    emb_max_bits: int = 3
    emb_ratio: float = 0.1
    enc_attn: int = 3
    dec_self_attn: int = 2
    cross_attn: int = 3
    ffn: int = 2
    out: int = 2


def block_bits(name: str, config: ChungBits):
    """Param name -> bits (int), "embedding" for frequency-aware tokens, or None (not quantized)."""
    parts = name.split(".")
    if name in ("emb", "src_emb", "tgt_emb"):
        return "embedding"
    if name == "out.W":
        return config.out
    if len(parts) == 4 and parts[3].startswith("W_"):
        kind = {("enc", "attn"): config.enc_attn, ("dec", "self_attn"): config.dec_self_attn,
                ("dec", "cross_attn"): config.cross_attn, ("enc", "ffn"): config.ffn,
                ("dec", "ffn"): config.ffn}
        return kind.get((parts[0], parts[2]))
    return None


@dataclass(frozen=True)
class FrequencyAwareEmbeddingSTE:
    """Transform for E (V, D): token v's vector (a column of E.T) gets ``token_bits[v]`` bits."""

    token_bits: np.ndarray = field(repr=False)
    method: str = "alternating"
    iters: int = 2

    def forward(self, E):
        if E.ndim != 2 or E.shape[0] != self.token_bits.size:
            raise ValueError(f"embedding of shape {E.shape} does not match {self.token_bits.size} token bit widths")
        E_hat = np.empty_like(E)
        for q in np.unique(self.token_bits):
            ids = np.flatnonzero(self.token_bits == q)
            B, alpha = binary_codes(np.ascontiguousarray(E[ids].T), int(q), self.method, self.iters)  # (D, n_q)
            E_hat[ids] = dequantize(B, alpha).T                             # (n_q, D)
        return E_hat, None

    def backward(self, dE_hat, cache):
        return dE_hat


def chung_method(params: dict, config: ChungBits, token_freqs: np.ndarray, names=None,
                 method: str = "alternating", iters: int = 2) -> Method:
    """QAT method: a BCQ STE transform for every quantizable name (all of them, or ``names``)."""
    transforms = {}
    for name in (params if names is None else names):
        bits = block_bits(name, config)
        if bits == "embedding":
            token_bits = embedding_bits(token_freqs, config.emb_max_bits, config.emb_ratio)
            transforms[name] = FrequencyAwareEmbeddingSTE(token_bits, method, iters)
        elif bits is not None:
            transforms[name] = BinaryCodesSTE(bits, method, iters)
    return Method("binary_codes_chung2020", transforms)


def staged_blocks(param_names) -> list:
    """Blocks in the order they get quantized: embeddings, then each encoder layer, each decoder
    layer, then the output layer; each block is the list of its quantizable matrix names."""
    names = [n for n in param_names if block_bits(n, ChungBits()) is not None]
    layer_key = lambda n: (n.split(".")[0], int(n.split(".")[1]))          # noqa: E731
    order = [[n for n in names if n in ("emb", "src_emb", "tgt_emb")]]
    for side in ("enc", "dec"):
        layers = sorted({layer_key(n)[1] for n in names if n.startswith(side + ".")})
        order += [[n for n in names if n.startswith(f"{side}.{i}.")] for i in layers]
    order.append([n for n in names if n == "out.W"])
    return [block for block in order if block]


def staged_quantized_names(step: int, blocks: list, interval: int) -> set:
    """The staged schedule: block b is quantized from step b * interval on (block 0 at step 0)."""
    if step < 0 or interval <= 0:
        raise ValueError(f"need step >= 0 and interval > 0, got step={step}, interval={interval}")
    return {name for block in blocks[: step // interval + 1] for name in block}


def pack_embedding_codes(E: np.ndarray, token_bits: np.ndarray, method: str = "alternating",
                         iters: int = 2) -> PackedTensor:
    """Frequency-aware embedding E (V, D) -> PackedTensor("binary_codes_mixed"): for each bit
    width b in use, ``ids{b}`` int32 token ids and that group's ``planes{b}``/``alphas{b}`` laid
    out as in ``pack_binary_codes`` for the group's E[ids].T (D, n_b)."""
    E = _check_weights(E)
    token_bits = np.asarray(token_bits)
    if token_bits.shape != (E.shape[0],) or token_bits.min() < 1 or token_bits.max() > MAX_BITS:
        raise ValueError(f"token_bits must hold one width in 1..{MAX_BITS} per row of E {E.shape}")
    arrays = {}
    for b in np.unique(token_bits):
        ids = np.flatnonzero(token_bits == b).astype(np.int32)
        group = pack_binary_codes(*binary_codes(np.ascontiguousarray(E[ids].T), int(b), method, iters))
        arrays.update({f"ids{b}": ids, f"planes{b}": group.arrays["planes"], f"alphas{b}": group.arrays["alphas"]})
    meta = {"bits": sorted(int(b) for b in np.unique(token_bits)), "layout": "per bit width b: ids{b}, and "
            "planes{b}/alphas{b} as binary_codes of E[ids{b}].T (D, n_b)"}
    return PackedTensor("binary_codes_mixed", E.shape, arrays, meta)


def unpack_embedding_codes(packed: PackedTensor) -> np.ndarray:
    """Inverse of ``pack_embedding_codes``: float32 E (V, D)."""
    if packed.method != "binary_codes_mixed":
        raise ValueError(f"not a binary_codes_mixed tensor: method {packed.method!r}")
    V, D = packed.shape
    E = np.zeros((V, D), dtype=np.float32)
    for b in packed.meta["bits"]:
        ids = packed.arrays[f"ids{b}"]
        group = PackedTensor("binary_codes", (D, ids.size), {"planes": packed.arrays[f"planes{b}"],
                             "alphas": packed.arrays[f"alphas{b}"]}, {"q": b})
        E[ids] = unpack_binary_codes(group).T                               # (n_b, D)
    return E


def unpack(packed: PackedTensor) -> np.ndarray:
    """The container's entry point: float32 weights of a "binary_codes" or "binary_codes_mixed" tensor."""
    if packed.method == "binary_codes_mixed":
        return unpack_embedding_codes(packed)
    return unpack_binary_codes(packed)
