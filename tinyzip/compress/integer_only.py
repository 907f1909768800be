"""Jacob et al.'s integer-only inference at model level: a weights+activations FFN on integers from
its input codes to its output accumulator, with the fused layer's int32 bias, requantization and
ReLU as a clamp.

Paper
-----
Benoit Jacob, Skirmantas Kligys, Bo Chen, Menglong Zhu, Matthew Tang, Andrew Howard, Hartwig Adam,
Dmitry Kalenichenko (2018). "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference". CVPR 2018, arXiv:1712.05877. Sec. 2.2-2.4: a layer's int32
accumulator, plus an int32 bias, is scaled down by the fixed-point multiplier M to the next layer's
8-bit grid, and the activation function is folded into the final clamp.

Where it runs
-------------
``tinyzip.compressed`` runs each Linear of a weights+activations file on the int8 kernel but
returns its output in float (every output there feeds a float consumer: bias, residual add,
LayerNorm, softmax). One output in the Transformer goes straight to another quantized matmul: the
FFN's W_1 -> ReLU -> W_2 (``fqt``'s point "<ffn>.act" is W_2's input). This module runs that chain
as the paper does, reading everything from the file: W_1's input range ``meta["act"]`` (S_x, Z_x),
the ReLU point's range on W_2 (S_a, Z_a = 0, unsigned grid), the weights' per-channel (S_W, Z_W).
Only the FFN's input (a LayerNorm output) is quantized from float, and only its output (bound for
the residual add) returns to float.

Equations (code notation: x (M, D) the FFN input, W_1 (D, F), W_2 (F, D), n an output column)
---------
Sec. 2.4 bias:        b_q[n] = round(b_1[n] / (S_x S_W1[n])), int32, zero point 0
Eq. (4), (7):         acc1[m, n] = sum_k (qx[m, k] - Z_x)(qW1[k, n] - Z_W1[n]) + b_q[n]      (int32)
Eq. (5), (6):         M[n] = S_x S_W1[n] / S_a = 2^-shift[n] M0[n],  M0 in [1/2, 1)
Sec. 2.4 fused ReLU:  qa[m, n] = clamp(Z_a + RDivPOT(SRDHM(acc1, M0_q[n]), shift[n]), Z_a, qmax_a)
                      (on the unsigned ReLU grid Z_a = 0: the clamp at Z_a is the ReLU)
TFLite single rounding (``rounding="single"``, TFLite's TFLITE_SINGLE_ROUNDING build):
                      qa[m, n] = clamp(Z_a + floor((acc1 M0_q[n] + 2^(30 + shift[n])) / 2^(31 + shift[n])),
                      Z_a, qmax_a): M0_q 2^-(31 + shift) acc1 rounded once to nearest, ties up
Eq. (4):              acc2[m, n] = sum_f (qa[m, f] - Z_a)(qW2[f, n] - Z_W2[n])               (int32)
output (float32):     y = float32(S_a S_W2[n] acc2[m, n]) + b_2[n]   (the float path's own rounding)

Against the float-output path (``compressed.kernel_matmuls``: h = S_x S_W1 acc + b_1 in float,
ReLU, then W_2's input quantizer rounds h / S_a), qa differs by at most one step: b_q is rounded
(at most M/2 < 1/2 of a step), gemmlowp rounds twice (SRDHM to a 2^-shift step, then RDivPOT: a
value within 2^-(shift+1) of a tie may go either way) and breaks ties away from zero, where
``np.rint`` breaks them to even. An 8-bit unsigned grid [0, 255] enters the int8 kernels as q - 128 with Z - 128, as
in ``uniform.quantize_static_reference``. Here only the FFN is integer: attention, softmax,
LayerNorm and the residual adds stay float (FQT quantizes their internals too; we do not).
"""
from dataclasses import dataclass

import numpy as np

from tinyzip.compress import uniform
from tinyzip.compressed import act_qparams, uniform_codes, unpack
from tinyzip.kernels import int8

ROUNDINGS = int8.ROUNDINGS          # the output stage's rounding: twice (Jacob, gemmlowp) or once (TFLite)


def quantize_bias(b, x_scale, w_scale) -> np.ndarray:
    """Sec. 2.4: b_q = round(b / (S_x S_W)), int32 with zero point 0 (the accumulator's scale)."""
    b = uniform._check_float(np.asarray(b, np.float64), "bias")
    bias_scale = np.float64(x_scale) * np.asarray(w_scale, np.float64)
    b_q = np.rint(b / bias_scale)
    if np.any(np.abs(b_q) > uniform.INT32_MAX):
        raise ValueError(f"bias / (S_x S_W) leaves int32 (largest {np.abs(b_q).max():.3g}): the scales are too small")
    return b_q.astype(np.int32)


@dataclass(frozen=True)
class IntegerFFN:
    """One FFN of a weights+activations file, ready for integer inference (see ``integer_ffn``)."""

    W1_t: np.ndarray        # (F, D) int8 codes of W_1, transposed for ``int8.int8_gemm``
    W2_t: np.ndarray        # (D, F) int8 codes of W_2, transposed
    w1_zero: np.ndarray     # (F,) int32 Z_W1
    w2_zero: np.ndarray     # (D,) int32 Z_W2
    x_qparams: tuple        # (S_x, Z_x, bits, unsigned) of W_1's input
    a_bounds: tuple         # (Z_a, qmax_a) of the ReLU grid; an 8-bit one as int8: (-128, 127)
    b1_q: np.ndarray        # (F,) int32, Sec. 2.4
    M0_q: np.ndarray        # (F,) int32, Eq. (6)
    shift: np.ndarray       # (F,) int32, Eq. (6)
    y_scale: np.ndarray     # (D,) float64 S_a S_W2
    b2: np.ndarray          # (D,) float32
    rounding: str = "gemmlowp"   # one of ROUNDINGS


def _codes(packed, name):
    """(W_q (K, N) int8, S_W (N,) float64, Z_W (N,) int32) of a per-tensor or per-channel uniform weight."""
    if packed.method != "uniform" or packed.meta["granularity"] == "bucket":
        raise ValueError(f"{name}: integer inference needs a per-tensor or per-channel 'uniform' weight, "
                         f"got {packed.method!r} {packed.meta.get('granularity', '')}")
    W_q, scale, zero = uniform_codes(packed)
    return W_q, scale, np.zeros(len(scale), np.int32) if zero is None else zero


def requantize_single_reference(acc, M0_q, shift, z_out, bits=8):
    """TFLite's single-rounding output stage: clamp(Z3 + floor((acc M0_q + 2^(30 + shift)) / 2^(31 + shift)),
    qmin, qmax) in int64 (|acc M0_q| < 2^62), where gemmlowp's ``uniform.requantize_reference`` rounds twice."""
    qmin, qmax = uniform.qrange(bits)
    total_shift = 31 + np.asarray(shift, np.int64)
    product = np.asarray(acc, np.int64) * np.asarray(M0_q, np.int64)
    scaled = (product + (np.int64(1) << (total_shift - 1))) >> total_shift
    return np.clip(scaled + z_out, qmin, qmax).astype(np.int8)


def integer_ffn(packed: dict, prefix: str, rounding: str = "gemmlowp") -> IntegerFFN:
    """The FFN ``prefix`` (e.g. "enc.0.ffn") of a weights+activations ``{name: PackedTensor}``, its output
    stage rounding as gemmlowp does (twice) or, with ``rounding="single"``, as TFLite's single rounding."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    try:
        W1, W2, b1, b2 = (packed[f"{prefix}.{n}"] for n in ("W_1", "W_2", "b_1", "b_2"))
    except KeyError as e:
        raise ValueError(f"{prefix}: the file has no {e.args[0]}") from None
    x_qparams, a_qparams = act_qparams(W1), act_qparams(W2)
    if x_qparams is None or a_qparams is None:
        raise ValueError(f"{prefix}: W_1 and W_2 need static input ranges (meta['act']): a weights+activations "
                         f"file (fqt.attach_act_ranges)")
    a_scale, a_zero, a_bits, a_unsigned = a_qparams
    if not a_unsigned or a_zero != 0:
        raise ValueError(f"{prefix}: the fused ReLU needs the unsigned grid with zero point 0 at W_2's input, "
                         f"got unsigned={a_unsigned}, Z={a_zero} (a GELU FFN has no integer clamp)")
    W1_q, w1_scale, w1_zero = _codes(W1, prefix + ".W_1")
    W2_q, w2_scale, w2_zero = _codes(W2, prefix + ".W_2")
    # Eq. (5)
    M = x_qparams[0] * w1_scale / a_scale
    if np.any(M >= 1):
        raise ValueError(f"{prefix}: M = S_x S_W1 / S_a reaches {M.max():.3g} >= 1 (one accumulator step "
                         f"S_x S_W1 spans a whole step of the ReLU grid); Jacob's output stage needs 0 < M < 1")
    M0_q, shift = uniform.quantize_multiplier(M)
    a_shift = 128 if a_bits == 8 else 0                    # [0, 255] enters the int8 kernel as q - 128
    return IntegerFFN(int8.prepare_weight(W1_q), int8.prepare_weight(W2_q), w1_zero, w2_zero, x_qparams,
                      (-a_shift, uniform.qrange(a_bits, unsigned=True)[1] - a_shift),
                      quantize_bias(unpack(b1), x_qparams[0], w1_scale), M0_q, shift,
                      a_scale * w2_scale, unpack(b2), rounding)


def _input_codes(ffn, x):
    x = np.ascontiguousarray(uniform._check_float(x, "x"), dtype=np.float32)   # as the model's matmuls
    if x.ndim != 2 or x.shape[1] != ffn.W1_t.shape[1]:
        raise ValueError(f"x must be (M, {ffn.W1_t.shape[1]}), got {x.shape}")
    return uniform.quantize_static_reference(x, *ffn.x_qparams)    # (qx int8, zx), qx - zx = q - Z_x


def run_integer_ffn(ffn: IntegerFFN, x) -> tuple[np.ndarray, np.ndarray]:
    """x (M, D) float -> (y (M, D) float32, qa (M, F) int8 ReLU codes in ``a_bounds``) on the Numba
    kernels; equals ``integer_ffn_reference`` bit for bit."""
    qx, zx = _input_codes(ffn, x)
    acc1 = int8.int8_gemm(qx, ffn.W1_t, zx, ffn.w1_zero, ffn.b1_q)                     # Eq. (4) + bias
    qa = np.clip(int8.requantize(acc1, ffn.M0_q, ffn.shift, ffn.a_bounds[0], ffn.rounding), *ffn.a_bounds)  # ReLU
    acc2 = int8.int8_gemm(qa, ffn.W2_t, ffn.a_bounds[0], ffn.w2_zero)                  # Eq. (4)
    return (ffn.y_scale * acc2).astype(np.float32) + ffn.b2, qa


def integer_ffn_reference(ffn: IntegerFFN, x) -> tuple[np.ndarray, np.ndarray]:
    """The same in NumPy integer arithmetic (int64 sums, gemmlowp's or TFLite's single-rounding output stage)."""
    qx, zx = _input_codes(ffn, x)
    acc1 = uniform.int8_matmul_reference(qx, ffn.W1_t.T, zx, ffn.w1_zero, ffn.b1_q)
    requantize = uniform.requantize_reference if ffn.rounding == "gemmlowp" else requantize_single_reference
    qa = np.clip(requantize(acc1, ffn.M0_q, ffn.shift, ffn.a_bounds[0]), *ffn.a_bounds)
    acc2 = uniform.int8_matmul_reference(qa, ffn.W2_t.T, ffn.a_bounds[0], ffn.w2_zero)
    return (ffn.y_scale * acc2).astype(np.float32) + ffn.b2, qa


def integer_ffns(packed: dict, rounding: str = "gemmlowp") -> dict:
    """``{ffn prefix: callable(x2d) -> FFN(x2d)}`` for every FFN of a weights+activations file, on
    integers: the model forward takes them in its ``matmuls`` next to the weights' kernel matmuls."""
    prefixes = sorted(name[:-len(".W_1")] for name in packed if name.endswith(".ffn.W_1"))
    if not prefixes:
        raise ValueError("the packed model has no FFN (no '<layer>.ffn.W_1')")
    ffns = {prefix: integer_ffn(packed, prefix, rounding) for prefix in prefixes}
    return {prefix: (lambda x, ffn=ffn: run_integer_ffn(ffn, x)[0]) for prefix, ffn in ffns.items()}
