"""Chung et al. 2020 at model level: frequency-aware embedding widths, a bit width per sub-layer
type, staged quantization-aware retraining, and the mixed-width embedding file format.

Paper
-----
Chung, Kim, Choi, Kwon, Jeon, Park, Kim, Lee (2020). "Extremely Low Bit Transformer Quantization
for On-Device Neural Machine Translation". Findings of EMNLP 2020, arXiv:2009.07453.

Every matrix is a binary code (``binary_codes.py``: W ~ sum_i alpha_i b_i, Guo et al. greedy or
Xu et al. alternating). What this paper adds is *where the bits go*:

(1) Algorithm 1: tokens sorted by training-data frequency are cut into clusters c_0..c_{b-1}
    with |c_i| = V r^i / sum_{k=0..b-1} r^k; the tokens of c_i get b - i bits (frequent words
    more). r = 0 (our extension: the limit r -> 0) puts every token in c_0, the uniform width.
(2) One width per sub-layer type (encoder self-attention, encoder FFN, decoder self-attention,
    encoder-decoder attention, decoder FFN): ``ChungBits``; defaults are the paper's final model.
(3) Retraining in stages, one block more quantized per stage: embedding, then decoder, then
    encoder (``staged_blocks``), with the straight-through estimator of ``binary_codes``.

Notation map: v -> V (vocabulary), b -> ``max_bits``, r -> ``ratio``; an embedding E (V, D) is
coded as E.T (D, V), so every token has its own alphas (the tied output layer's W is E.T).

Choices: the paper fits with the greedy method; here every function defaults to the alternating
fit (never a larger error) and ``method="greedy"`` gives the paper's. Cluster sizes are rounded at
the cumulative boundaries, so they sum to V and each differs from V r^i / sum r^k by less than 1.
Source for (1)-(3): a detailed public review of the paper (Algorithm 1 with b = 4, r = 2,
v = 1500 -> clusters 100/200/400/800 at 4/3/2/1 bits, mean 1.73; r = 1, 4, 8 -> 2.5, 1.3, 1.1
bits; final model: embedding 2.5, decoder self-attn 2, enc-dec attn 3, FFN 1 bit; encoder
self-attn 3, FFN 4 bits; retraining embedding -> decoder -> encoder). The PDF itself was not read.

File format of a frequency-aware embedding (``pack_embedding_codes``, method
"binary_codes_mixed"): the V widths in 3 bits each, then per width the tokens of that width as
one ``binary_codes`` tensor.
"""
from dataclasses import dataclass, field

import numpy as np

from tinyzip.compress.base import Method, PackedTensor
from tinyzip.compress.binary_codes import (MAX_BITS, BinaryCodesSTE, _check_q, _check_weights, binary_codes,
                                           dequantize, pack_binary_codes, unpack_binary_codes)
from tinyzip.data.text import BOS, EOS
from tinyzip.packing import pack_uint, unpack_uint

WIDTH_BITS = 3               # a token's width 1..8 is stored as width - 1 in 3 bits


def token_frequencies(pairs_ids, vocab_size: int) -> np.ndarray:
    """Training-data counts (V,) of every token the shared embedding serves: source and target
    ids, plus one BOS (decoder input) and one EOS (decoder output) per sentence pair."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for src, tgt in pairs_ids:
        counts += np.bincount(np.asarray(list(src) + list(tgt) + [BOS, EOS], dtype=np.int64), minlength=vocab_size)
    return counts


def embedding_bits(token_freqs: np.ndarray, max_bits: int = 4, ratio: float = 1.0) -> np.ndarray:
    """Algorithm 1 (Eq. (1) here): bits per token (V,). Rank tokens by frequency (ties:
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
    # Eq. (1)
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
