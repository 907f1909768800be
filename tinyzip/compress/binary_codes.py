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
  arXiv:2009.07453. Mixed-precision BCQ of a Transformer: more bits for frequent words
  (Algorithm 1), a bit width per sub-layer type, retraining block by block.

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
r_i (residual) -> ``R``; T (alternating cycles) -> ``iters``; Chung's Algorithm 1: v -> V,
b (clusters = most bits) -> ``max_bits``, r (cluster growth factor) -> ``ratio``.

Equations (this file's numbering; the papers' own numbers were not checked against the PDFs)
-------------------------------------------------------------------------------------------
(1) W[:, j] ~ sum_{i=1..q} alpha[i, j] * B[i, :, j]                               (BCQ)
(2) greedy: B[i] = sign(R_{i-1}) with sign(0) = +1, R_0 = W                        (Guo)
(3)         alpha[i] = mean_k |R_{i-1}[k, :]|      (the optimal 1-bit fit of R_{i-1})
(4)         R_i = R_{i-1} - alpha[i] * B[i]; so ||R_i||^2 = ||R_{i-1}||^2 - D_in * alpha[i]^2
(5) refit: alpha[:, j] = argmin_a ||W[:, j] - B[:, :, j].T a||^2 = pinv(B_j) W[:, j]  (Guo, Xu)
(6) codes: B[:, k, j] = argmin_{s in {-1,+1}^q} |W[k, j] - s . alpha[:, j]|           (Xu)
    alternating (Xu): greedy init, then ``iters`` times (5) then (6), and a final (5).
(7) Chung Alg. 1: tokens sorted by training frequency, cut into clusters c_0..c_{b-1} with
    |c_i| = V r^i / sum_{k=0..b-1} r^k; the tokens of c_i get b - i bits.

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
* Storage precision: ``binary_codes(..., alpha_dtype=np.float16)`` rounds the alphas of the
  final fit to float16 and returns them as float16; the STE forward, the packed file and the
  unpacked model all use exactly those rounded alphas (the codes are not re-assigned after the
  rounding, a relative change of at most 2^-11 per alpha). Packing stores float16 alphas as
  float16 and any other alphas as float32.
* (7) cluster sizes are rounded at the cumulative boundaries, so they sum to V and each differs
  from V r^i / sum r^k by less than 1. Chung et al. fit with the greedy method (Eqs. 2-4);
  every function here defaults to the alternating fit (never a larger error), ``method="greedy"``
  gives the paper's.
* Source for (7), the sub-layer bits and the stage order: a detailed review of the paper
  (Algorithm 1 with b = 4, r = 2, v = 1500 -> clusters 100/200/400/800 at 4/3/2/1 bits, mean 1.73;
  r = 1, 4, 8 -> 2.5, 1.3, 1.1 bits; final model: embedding 2.5, decoder 1.8 = self-attn 2,
  enc-dec attn 3, FFN 1 bit; encoder 3.7 = self-attn 3, FFN 4 bits; retraining in 3 stages:
  embedding, then decoder, then encoder). The paper's PDF itself was not read.
"""
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from tinyzip.compress.base import Method, PackedTensor
from tinyzip.data.text import BOS, EOS
from tinyzip.packing import pack_uint, unpack_uint

MAX_BITS = 8
WIDTH_BITS = 3               # a token's width 1..8 is stored as width - 1 in 3 bits


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


# --- Model level: Chung et al. 2020 on a Seq2Seq params dict (names as in CONTRACT.md) -------

def token_frequencies(pairs_ids, vocab_size: int) -> np.ndarray:
    """Training-data counts (V,) of every token the shared embedding serves: source and target
    ids, plus one BOS (decoder input) and one EOS (decoder output) per sentence pair."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for src, tgt in pairs_ids:
        counts += np.bincount(np.asarray(list(src) + list(tgt) + [BOS, EOS], dtype=np.int64), minlength=vocab_size)
    return counts


def embedding_bits(token_freqs: np.ndarray, max_bits: int = 4, ratio: float = 1.0) -> np.ndarray:
    """Eq. (7), Chung et al. Algorithm 1: bits per token (V,). Rank tokens by frequency (ties:
    lower id first), cut the ranking into ``max_bits`` clusters of sizes proportional to
    1, r, r^2, ..., r^(b-1) (cumulative boundaries rounded), give cluster i b - i bits.
    Paper: b = 4; r = 1, 2, 4, 8 give 2.5, 1.73, 1.32, 1.14 bits per embedding weight on average.
    r = 0 is the limit r -> 0: one cluster, every token b bits (the uniform-width baseline)."""
    token_freqs = np.asarray(token_freqs)
    if token_freqs.ndim != 1 or token_freqs.size == 0 or not np.issubdtype(token_freqs.dtype, np.number):
        raise ValueError(f"token_freqs must be a non-empty 1-D numeric array, got {token_freqs.dtype} {token_freqs.shape}")
    if not np.all(np.isfinite(token_freqs)) or np.any(token_freqs < 0):
        raise ValueError("token_freqs must be finite and non-negative")
    max_bits = _check_q(max_bits)
    if not (np.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"ratio must be a finite number >= 0, got {ratio}")
    V, growth = token_freqs.size, float(ratio) ** np.arange(max_bits)    # (b,) r^i
    # Eq. (7)
    ends = np.rint(V * np.cumsum(growth) / growth.sum()).astype(np.int64)  # (b,) cluster ends
    ends[-1] = V
    sizes = np.diff(ends, prepend=0)                                       # |c_i|
    bits = np.empty(V, dtype=np.int64)
    bits[np.argsort(-token_freqs, kind="stable")] = np.repeat(max_bits - np.arange(max_bits), sizes)
    return bits


@dataclass(frozen=True)
class ChungBits:
    """Bits per sub-layer type. Defaults: the paper's final model (embedding b = 4, r = 1 ->
    2.5 bits; decoder self-attn 2, enc-dec attn 3, FFN 1; encoder self-attn 3, FFN 4). ``out``
    (an output layer not tied to the embedding) is our choice; the paper ties it."""

    emb_max_bits: int = 4
    emb_ratio: float = 1.0
    enc_attn: int = 3
    enc_ffn: int = 4
    dec_self_attn: int = 2
    cross_attn: int = 3
    dec_ffn: int = 1
    out: int = 2


def block_bits(name: str, config: ChungBits):
    """Param name -> bits (int), "embedding" for frequency-aware tokens, or None (not quantized)."""
    parts = name.split(".")
    if name in ("emb", "src_emb", "tgt_emb"):
        return "embedding"
    if name == "out.W":
        return config.out
    if len(parts) == 4 and parts[3].startswith("W_"):
        kind = {("enc", "attn"): config.enc_attn, ("enc", "ffn"): config.enc_ffn,
                ("dec", "self_attn"): config.dec_self_attn, ("dec", "cross_attn"): config.cross_attn,
                ("dec", "ffn"): config.dec_ffn}
        return kind.get((parts[0], parts[2]))
    return None


@dataclass(frozen=True)
class FrequencyAwareEmbeddingSTE:
    """Transform for E (V, D): token v's vector (a column of E.T) gets ``token_bits[v]`` bits."""

    token_bits: np.ndarray = field(repr=False)
    method: str = "alternating"
    iters: int = 2
    alpha_dtype: object = None

    def forward(self, E):
        if E.ndim != 2 or E.shape[0] != self.token_bits.size:
            raise ValueError(f"embedding of shape {E.shape} does not match {self.token_bits.size} token bit widths")
        E_hat = np.empty_like(E)
        for q in np.unique(self.token_bits):
            ids = np.flatnonzero(self.token_bits == q)
            B, alpha = binary_codes(np.ascontiguousarray(E[ids].T), int(q), self.method, self.iters,
                                    self.alpha_dtype)                       # (q, D, n_q), (q, n_q)
            E_hat[ids] = dequantize(B, alpha).T                             # (n_q, D)
        return E_hat, None

    def backward(self, dE_hat, cache):
        return dE_hat


def _chung_plan(params: dict, config: ChungBits, token_freqs, names) -> dict:
    """name -> bits (int) or token bit widths (V,) for every quantized matrix."""
    plan = {}
    for name in (params if names is None else names):
        bits = block_bits(name, config)
        if bits == "embedding":
            plan[name] = embedding_bits(token_freqs, config.emb_max_bits, config.emb_ratio)
        elif bits is not None:
            plan[name] = bits
    return plan


def chung_method(params: dict, config: ChungBits, token_freqs: np.ndarray, names=None,
                 method: str = "alternating", iters: int = 2, alpha_dtype=None) -> Method:
    """QAT method: a BCQ STE transform for every quantizable name (all of them, or ``names``)."""
    transforms = {}
    for name, bits in _chung_plan(params, config, token_freqs, names).items():
        if isinstance(bits, np.ndarray):
            transforms[name] = FrequencyAwareEmbeddingSTE(bits, method, iters, alpha_dtype)
        else:
            transforms[name] = BinaryCodesSTE(bits, method, iters, alpha_dtype)
    return Method("binary_codes_chung2020", transforms)


def chung_pack(params: dict, config: ChungBits, token_freqs: np.ndarray, method: str = "alternating",
               iters: int = 2, alpha_dtype=None) -> dict:
    """``{name: PackedTensor}`` of every matrix ``chung_method`` quantizes, fitted with the same
    arguments, so unpacking gives exactly that method's forward (biases and LayerNorm: not here)."""
    packed = {}
    for name, bits in _chung_plan(params, config, token_freqs, None).items():
        if isinstance(bits, np.ndarray):
            packed[name] = pack_embedding_codes(params[name], bits, method, iters, alpha_dtype)
        else:
            packed[name] = pack_binary_codes(*binary_codes(params[name], bits, method, iters, alpha_dtype))
    return packed


def staged_blocks(param_names) -> list:
    """Chung et al.'s three retraining stages, in order: the embedding block (and an untied
    output layer), then the decoder, then the encoder; each stage lists its quantizable matrices."""
    names = [n for n in param_names if block_bits(n, ChungBits()) is not None]
    order = [[n for n in names if block_bits(n, ChungBits()) == "embedding" or n == "out.W"],
             [n for n in names if n.startswith("dec.")], [n for n in names if n.startswith("enc.")]]
    return [block for block in order if block]


def staged_quantized_names(step: int, blocks: list, interval: int) -> set:
    """The staged schedule: block b is quantized from step b * interval on (block 0 at step 0)."""
    if step < 0 or interval <= 0:
        raise ValueError(f"need step >= 0 and interval > 0, got step={step}, interval={interval}")
    return {name for block in blocks[: step // interval + 1] for name in block}


def pack_embedding_codes(E: np.ndarray, token_bits: np.ndarray, method: str = "alternating",
                         iters: int = 2, alpha_dtype=None) -> PackedTensor:
    """Frequency-aware embedding E (V, D) -> PackedTensor("binary_codes_mixed"): ``widths``, the
    V token widths minus 1 in 3 bits each (``tinyzip.packing``); for each width b in use, the
    tokens of that width in increasing id order form one group whose ``planes{b}``/``alphas{b}``
    are laid out as in ``pack_binary_codes`` for E[ids].T (D, n_b)."""
    E = _check_weights(E)
    token_bits = np.asarray(token_bits)
    if (token_bits.shape != (E.shape[0],) or not np.issubdtype(token_bits.dtype, np.integer)
            or token_bits.min() < 1 or token_bits.max() > MAX_BITS):
        raise ValueError(f"token_bits must hold one integer width in 1..{MAX_BITS} per row of E {E.shape}")
    arrays = {"widths": pack_uint(token_bits - 1, WIDTH_BITS)}
    for b in np.unique(token_bits):
        ids = np.flatnonzero(token_bits == b)
        group = pack_binary_codes(*binary_codes(np.ascontiguousarray(E[ids].T), int(b), method, iters, alpha_dtype))
        arrays.update({f"planes{b}": group.arrays["planes"], f"alphas{b}": group.arrays["alphas"]})
    meta = {"bits": sorted(int(b) for b in np.unique(token_bits)), "layout": "widths: V x 3-bit (width - 1); "
            "per width b: planes{b}/alphas{b} as binary_codes of E[ids].T (D, n_b), ids = tokens of width b"}
    return PackedTensor("binary_codes_mixed", E.shape, arrays, meta)


def unpack_embedding_codes(packed: PackedTensor) -> np.ndarray:
    """Inverse of ``pack_embedding_codes``: float32 E (V, D)."""
    if packed.method != "binary_codes_mixed":
        raise ValueError(f"not a binary_codes_mixed tensor: method {packed.method!r}")
    V, D = packed.shape
    token_bits = unpack_uint(packed.arrays["widths"], WIDTH_BITS, V) + 1   # (V,)
    if sorted(np.unique(token_bits).tolist()) != list(packed.meta["bits"]):
        raise ValueError(f"token widths {np.unique(token_bits).tolist()} do not match meta bits {packed.meta['bits']}")
    E = np.zeros((V, D), dtype=np.float32)
    for b in packed.meta["bits"]:
        ids = np.flatnonzero(token_bits == b)
        group = PackedTensor("binary_codes", (D, ids.size), {"planes": packed.arrays[f"planes{b}"],
                             "alphas": packed.arrays[f"alphas{b}"]}, {"q": b})
        E[ids] = unpack_binary_codes(group).T                               # (n_b, D)
    return E


def unpack(packed: PackedTensor) -> np.ndarray:
    """The container's entry point: float32 weights of a "binary_codes" or "binary_codes_mixed" tensor."""
    if packed.method == "binary_codes_mixed":
        return unpack_embedding_codes(packed)
    return unpack_binary_codes(packed)
