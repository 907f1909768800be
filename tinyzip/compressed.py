"""Compressed models at run time: from packed tensors to a model forward, dequantized or on kernels.

A ``.tz`` file holds one ``PackedTensor`` per parameter. This module is the one place that knows
which method file reads which packed format back (an explicit table, no registry):

* ``unpack(packed)`` -> the dense float32 tensor (any method): the "dequantized" path, exact
  reference semantics, used for evaluation and as the oracle of the kernel path;
* ``kernel_matmuls(packed)`` -> ``{weight name: callable(x2d) -> x2d @ W}`` for every tensor whose
  format has a real kernel (int8 GEMM; BiQGEMM LUT for binary codes, 1-bit and ternary weights;
  codebook; CSC sparse): the model forward takes this dict as its ``matmuls`` argument, so
  compressed weights are multiplied in their packed form.

* ``static_act_hooks(packed)`` -> the frozen activation quantizers of a weights+activations file
  that no kernel applies (Q, K, V and softmax outputs, FQT's operands of Q K^T and P V): the model
  forward, ``encode`` and ``decode_step`` take them as ``act_hooks`` next to ``matmuls``.

Embeddings are always dequantized: a lookup reads V rows, it is not a matmul.

Weights+activations files (``tinyzip.compress.fqt.attach_act_ranges``): a uniform weight whose
``meta["act"]`` holds the static (S_x, Z_x) of its input runs ``int8_linear_static`` (the packed
AVX2 kernel on qx - Z_x where available) on x quantized with that (S_x, Z_x) (Jacob et al. 2018,
Eq. (4)), then y = S_x S_W acc in float64 -> float32; the input codes
equal those of the fake-quant forward, so the two differ only by float32 rounding. The output stays
float, not requantized to int8 (Jacob's output stage): every Linear output here goes to a float
consumer first (bias, then residual add and LayerNorm, or the Q/K/V quantizers followed by Q K^T,
softmax and P V in float on the fake-quantized operands, or ReLU then W_2's own input quantizer),
none of which our model runs on integers. The one output that is requantized
at once, W_1 -> ReLU -> W_2's input, stays float here too (a ``matmuls`` entry returns x @ W
without the bias); ``compress.integer_only.integer_ffns`` runs that chain with Jacob's integer
output stage instead (int32 bias, M = S_x S_W / S_a, ReLU as the clamp at Z = 0), as whole-FFN
``matmuls`` entries (``tinyzip eval --integer-ffn``). The shared output projection (``emb``,
used as emb.T) is quantized per embedding dimension, i.e. per input of that matmul, which the int8
kernel's per-output-column scales cannot express: it fake-quantizes its input with the stored
(S_x, Z_x) and multiplies the dequantized table in float32, as the fake-quant forward does.
"""
import numpy as np

from tinyzip.compress import (binarization, binary_codes, chung, cross_layer_sharing, fqt, huffman, kmeans, low_rank,
                              magnitude_pruning, ternary, uniform)
from tinyzip.compress.base import PackedTensor
from tinyzip.packing import unpack_uint

FLOAT_METHODS = {"float32": np.float32, "float16": np.float16}


def pack_float(W: np.ndarray, dtype=np.float32) -> PackedTensor:
    """An uncompressed tensor as a PackedTensor ("float32", or "float16" at half the bytes)."""
    dtype = np.dtype(dtype)
    name = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(dtype)
    if name is None:
        raise ValueError(f"pack_float stores float32 or float16, got {dtype}")
    return PackedTensor(name, tuple(W.shape), {"values": np.ascontiguousarray(W, dtype=dtype)})


def _unpack_float(packed):
    values = packed.arrays["values"]
    if values.dtype != FLOAT_METHODS[packed.method] or tuple(values.shape) != tuple(packed.shape):
        raise ValueError(f"{packed.method} tensor of shape {packed.shape} holds {values.dtype} {values.shape}")
    return values.astype(np.float32)


UNPACK = {
    "float32": _unpack_float,
    "float16": _unpack_float,
    "kmeans": kmeans.unpack_kmeans,
    "kmeans+huffman": huffman.unpack_kmeans_huffman,
    "sparse": magnitude_pruning.unpack_sparse,
    "uniform": uniform.unpack_uniform,
    "binary": binarization.unpack_binary,
    "binary_codes": binary_codes.unpack_binary_codes,
    "binary_codes_mixed": chung.unpack_embedding_codes,   # frequency-aware embeddings
    "ternary": ternary.unpack_ternary,
    "low_rank": low_rank.unpack_low_rank,
}


def unpack(packed: PackedTensor) -> np.ndarray:
    """The dense float32 tensor a packed tensor stands for. A tensor without an array or meta
    key its method reads (a file written by other code) is a ValueError naming the key."""
    if packed.method == cross_layer_sharing.FORMAT:
        raise ValueError(f"a shared tensor has no values of its own (it names {packed.meta.get('of')!r}); "
                         f"read the whole file with dequantize_all")
    if packed.method not in UNPACK:
        raise ValueError(f"unknown packed method {packed.method!r}; known: {sorted(UNPACK)}")
    try:
        return np.ascontiguousarray(UNPACK[packed.method](packed), dtype=np.float32)
    except KeyError as e:
        raise ValueError(f"{packed.method!r} tensor lacks {e} (arrays {sorted(packed.arrays)}, "
                         f"meta {sorted(packed.meta)})") from None


def shared_owners(packed: dict) -> dict:
    """{name: owner} of the ``"shared"`` tensors (ALBERT's cross-layer sharing), each checked to
    name a stored tensor of its shape."""
    owner_of = {}
    for name, p in packed.items():
        if p.method != cross_layer_sharing.FORMAT:
            continue
        owner = p.meta.get("of")
        target = packed.get(owner)
        if target is None or target.method == cross_layer_sharing.FORMAT or tuple(target.shape) != tuple(p.shape):
            raise ValueError(f"tensor {name!r} is shared with {owner!r}, which is not a stored tensor of shape "
                             f"{tuple(p.shape)}")
        owner_of[name] = owner
    return owner_of


def dequantize_all(packed: dict) -> dict:
    """``{name: PackedTensor}`` -> the float32 params dict the model forward takes; a shared tensor
    is its owner's array (the same object)."""
    owner_of, params = shared_owners(packed), {}
    for name, p in packed.items():
        if name in owner_of:
            continue
        try:
            params[name] = unpack(p)
        except ValueError as e:
            raise ValueError(f"tensor {name!r}: {e}") from None
    params.update({name: params[owner] for name, owner in owner_of.items()})
    return params


# ---- the kernel path -------------------------------------------------------------------------

def _static_qparams(act, where):
    """One stored activation range ``{"bits", "unsigned", "scale", "zero_point"}`` -> (S, Z, bits,
    unsigned), validated; ``where`` names it in the error."""
    try:
        scale, zero, bits, unsigned = float(act["scale"]), int(act["zero_point"]), act["bits"], bool(act["unsigned"])
        qmin, qmax = uniform.qrange(bits, unsigned=unsigned)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where} is malformed: {act!r} ({e})") from None
    if not (np.isfinite(scale) and scale > 0) or not qmin <= zero <= qmax:
        raise ValueError(f"{where} needs a finite scale > 0 and a zero point in [{qmin}, {qmax}], got {act!r}")
    return scale, zero, bits, unsigned


def act_qparams(packed):
    """The static input (S_x, Z_x, bits, unsigned) of a w+a weight, validated; None when absent."""
    act = packed.meta.get("act")
    return None if act is None else _static_qparams(act, f"meta['act'] of a {packed.method!r} tensor")


def _frozen_hook(qparams):
    """A frozen fake-quant act hook ``(fwd, bwd)`` with a static (S, Z): what
    ``fqt.ActivationQuantizer`` in mode "frozen" computes with the same (S, Z)."""
    scale, zero, bits, unsigned = qparams
    return (lambda x: uniform.fake_quant_forward(x, scale, zero, bits, unsigned=unsigned),
            uniform.fake_quant_backward)


def static_act_hooks(packed: dict, matmul_inputs: bool = False) -> dict:
    """The frozen activation quantizers of a weights+activations file, ``{point: (fwd, bwd)}``, for
    the model's ``act_hooks``: Q, K, V and softmax output of every attention block stored in its
    W_q's ``meta["act_points"]`` (``fqt.attach_act_ranges``): no kernel covers them, so the kernel
    path needs these hooks to compute what the frozen quantized model computes. With
    ``matmul_inputs`` also every weight's input point from its ``meta["act"]``: the dequantized path
    (the kernel matmuls quantize their inputs themselves)."""
    hooks = {}
    for name, p in packed.items():
        if matmul_inputs and "act" in p.meta:
            hooks[fqt.input_point(name)] = _frozen_hook(act_qparams(p))
        points = p.meta.get("act_points")
        if points is None:
            continue
        if not name.endswith(".W_q") or not isinstance(points, dict) or not set(points) <= set(fqt.ATTENTION_POINTS):
            raise ValueError(f"meta['act_points'] of {name} must be a dict on an attention W_q with keys in "
                             f"{fqt.ATTENTION_POINTS}, got {points!r}")
        for n, act in points.items():
            hooks[f"{name[:-4]}.{n}"] = _frozen_hook(_static_qparams(act, f"meta['act_points'][{n!r}] of {name}"))
    return hooks


def uniform_codes(packed):
    """A per-tensor or per-channel uniform weight's integer form: (W_q (D_in, D_out) int8 codes, S_W
    (D_out,) float64, Z_W (D_out,) int32 or None for symmetric grids); codes below 8 bits widened."""
    (D_in, D_out), meta = packed.shape, packed.meta
    if meta["bits"] == 8:
        q = packed.arrays["values"]
    else:                                            # int4 etc.: codes widened to int8
        q = unpack_uint(packed.arrays["values"], meta["bits"], D_in * D_out).astype(np.int16) + meta["qmin"]
    scale = np.broadcast_to(packed.arrays["scales"].reshape(-1), (D_out,)).astype(np.float64)
    zero = packed.arrays.get("zero_points")          # affine grids only
    zero = None if zero is None else np.broadcast_to(zero.reshape(-1), (D_out,)).astype(np.int32)
    return np.ascontiguousarray(q.reshape(D_in, D_out), dtype=np.int8), scale, zero


def _int8_matmul(packed):
    """Per-tensor or per-channel uniform codes (symmetric or affine, 2-8 bits) on the int8 kernel:
    y = S_x S_W (qx (q - Z_W)), Jacob Eq. (7) with the zero point of each output column; x
    quantized per row on the fly, or with the static (S_x, Z_x) of ``meta["act"]`` (see above)."""
    from tinyzip.kernels import aligned_copy
    from tinyzip.kernels.int8 import (FALLBACK_BATCH, HAS_AVX2, HAS_VNNI, PACKED_FALLBACK_BATCH, int8_linear_prepared,
                                      int8_linear_static, pack_weight, prepare_int8_weights, prepare_weight)
    from tinyzip.kernels.int8_vnni import EVERY_BATCH_K
    meta = packed.meta
    act = act_qparams(packed)
    if meta["granularity"] == "bucket":
        if act is not None:
            raise ValueError("static activation ranges need per-tensor or per-channel weight scales, got buckets")
        return None                                  # the kernel takes one (S, Z) per output column
    W_q, scale, zero = uniform_codes(packed)
    W_t = prepare_weight(W_q)                        # (N, K)
    if act is not None:
        x_scale, x_zero, bits, unsigned = act
        weights = prepare_int8_weights(W_t, scale, w_zero=zero, W_packed=pack_weight(W_t) if HAS_AVX2 else None)

        def static_matmul(x):                        # Eq. (4) with (S_x, Z_x): (M, K) -> (M, N)
            return int8_linear_static(np.ascontiguousarray(x, dtype=np.float32), weights, x_scale, x_zero, bits,
                                      unsigned)

        return static_matmul
    # the packed layouts (AVX2 pmaddwd, AVX-512 VNNI) win up to larger batches than the portable kernel;
    # VNNI from K = EVERY_BATCH_K at every batch (the shipped model's K = 128 and 512 layers keep the
    # float path from PACKED_FALLBACK_BATCH rows: 1920 x 128 x 512 0.75x, an int32 accumulator as large as y)
    fallback = (None if HAS_VNNI and W_t.shape[1] >= EVERY_BATCH_K else
                PACKED_FALLBACK_BATCH if HAS_AVX2 or HAS_VNNI else FALLBACK_BATCH)
    weights = prepare_int8_weights(W_t, scale, w_zero=zero, fallback_batch=fallback, vnni=True,
                                   W_packed=pack_weight(W_t) if HAS_AVX2 and not HAS_VNNI else None)

    def matmul(x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if weights.fallback_batch is not None and x.shape[0] >= weights.fallback_batch and weights.W_hat is None:
            weights.W_hat = aligned_copy(uniform.unpack_uniform(packed))  # float32 W, once, on a cache line
        return int8_linear_prepared(x, weights)

    return matmul


def _lut_matmul(packed):
    from tinyzip.kernels.lut_gemm import lut_linear, prepare_lut_weights
    if packed.method == "binary":                    # 1-bit, alpha per output unit = binary codes, q=1
        if packed.meta["granularity"] != "output":
            return None
        W = binarization.unpack_binary(packed)
        alpha = packed.arrays["alpha"].reshape(1, -1).astype(np.float32)
        prepared = prepare_lut_weights(codes=np.where(W >= 0, 1, -1)[None].astype(np.int8), alphas=alpha)
    elif packed.method == "ternary":                 # alpha T = (alpha/2)(b_1 + b_2): binary codes, q=2
        code = ternary.lut_codes(packed)
        if code is None:                             # one alpha per input row: not a per-unit scale
            return None
        prepared = prepare_lut_weights(codes=code[0], alphas=code[1])
    else:
        prepared = prepare_lut_weights(packed)
    return lambda x: lut_linear(np.ascontiguousarray(x, dtype=np.float32), prepared)


def _codebook_matmul(packed):
    from tinyzip.kernels import codebook_avx512
    from tinyzip.kernels.codebook import codebook_matmul
    if packed.method == "kmeans+huffman":            # Huffman is a storage code: decode once at load
        packed = huffman.kmeans_from_huffman(packed)
    codebook, idx = kmeans.unpack_codes(packed)
    if codebook.size > 256:
        return None
    idx8 = np.ascontiguousarray(idx, dtype=np.uint8)
    # on AVX-512, at most 16 entries: the kernel reads the indices in 64-column blocks (1 more byte a weight)
    blocks = (codebook_avx512.pack_blocks(idx8)
              if codebook_avx512.HAS_AVX512 and codebook.size <= codebook_avx512.TABLE else None)
    return lambda x: codebook_matmul(np.ascontiguousarray(x, dtype=np.float32), idx8, codebook, blocks)


def _sparse_matmul(packed):
    from tinyzip.kernels.sparse import sparse_matmul, to_csc
    csc = to_csc(magnitude_pruning.unpack_sparse(packed))
    return lambda x: sparse_matmul(np.ascontiguousarray(x, dtype=np.float32), csc)


def _low_rank_matmul(packed):
    A, B = low_rank.unpack_factors(packed)           # (x @ A) @ B: two thin matmuls, Eq. (R3)
    return lambda x: (x @ A) @ B


KERNELS = {
    "uniform": _int8_matmul,
    "binary_codes": _lut_matmul,
    "binary": _lut_matmul,
    "ternary": _lut_matmul,
    "kmeans": _codebook_matmul,
    "kmeans+huffman": _codebook_matmul,
    "sparse": _sparse_matmul,
    "low_rank": _low_rank_matmul,
}


def _output_projection(packed):
    """``emb`` used as the output projection emb.T, with a static input range: fake-quantized input
    times the dequantized table, in float32 (see the module docstring)."""
    x_scale, x_zero, bits, unsigned = act_qparams(packed)
    E_t = np.ascontiguousarray(unpack(packed).T)     # (D, V)

    def matmul(x):
        x_hat, _ = uniform.fake_quant_forward(x, x_scale, x_zero, bits, unsigned=unsigned)
        return x_hat @ E_t

    return matmul


def is_embedding(name: str) -> bool:
    return name in ("emb", "src_emb", "tgt_emb", "tok_emb", "pos_emb", "type_emb")


def kernel_matmuls(packed: dict) -> dict:
    """``{weight name: x2d -> x2d @ W}`` on the real kernels, for every matmul weight that has one.

    Weights without a kernel (float, bucketed uniform grids, codebooks over 256 entries)
    are left to the dequantized path: the caller passes ``dequantize_all(packed)`` as params too.
    """
    matmuls = {}
    for name, p in packed.items():
        if name == "emb" and "act" in p.meta:
            matmuls[name] = _output_projection(p)
            continue
        if name == "emb" and p.method == "low_rank":      # logits x @ E^T = (x @ B^T) @ A^T, Eq. (R5)
            A_t, B_t = (np.ascontiguousarray(f.T) for f in low_rank.unpack_factors(p))
            matmuls[name] = lambda x, A_t=A_t, B_t=B_t: (x @ B_t) @ A_t
            continue
        if is_embedding(name) or len(p.shape) != 2 or p.method not in KERNELS:
            continue
        fn = KERNELS[p.method](p)
        if fn is not None:
            matmuls[name] = fn
    for name, owner in shared_owners(packed).items():      # a shared layer runs its owner's kernel
        if owner in matmuls:
            matmuls[name] = matmuls[owner]
    return matmuls
