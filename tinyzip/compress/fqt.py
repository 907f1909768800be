"""FQT at model level: where a Transformer is quantized, PTQ with calibration, QAT, and the static
activation ranges a weights+activations ``.tz`` file carries.

Papers
------
* Gabriele Prato, Ella Charlaix, Mehdi Rezagholizadeh (2020). "Fully Quantized Transformer for
  Machine Translation". Findings of EMNLP 2020, arXiv:1910.10485 (FQT). Every weight but biases,
  every matmul input, ReLU and softmax outputs on unsigned grids, activation ranges by EMA of
  min/max with momentum 0.9, quantizers before dropout.
* Benoit Jacob et al. (2018). "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference". CVPR 2018, arXiv:1712.05877. Activation ranges are learned
  by an EMA during training (Sec. 3.1), then frozen: at inference every activation has one static
  (S, Z) per tensor (Sec. 2.1). Post-training calibration on a few batches (``ptq``) is the same
  EMA run without weight updates: our PTQ, not a procedure of the paper.

The quantizers themselves (grids, Eq. (1), STE, range estimators) are in ``uniform.py``.

Placement (``activation_points``): point name -> unsigned grid? FQT quantizes the inputs of every
matmul, the activation-by-activation ones Q K^T and P V included:
  "<W>:in"        the input of the matmul with weight W (every 2-D param; ``emb:in`` is the shared
                  output projection's input, lookups never fire it), signed affine grid;
  "<ffn>.act"     ReLU output, unsigned grid [0, 2^b - 1] (it is W_2's input: "<ffn>.W_2:in" is
                  left out);
  "<attn>.q", "<attn>.k", "<attn>.v"
                  the projections Q, K, V (before Q's 1/sqrt(Dh), a constant factor), the operands
                  of Q K^T and of P V, signed affine grid;
  "<attn>.probs"  the softmax output P, unsigned grid.
``attention_operands=False`` leaves the last four float (only Linear inputs are then quantized).
Not done here (FQT quantizes them too, for integer-only inference, not as matmul inputs): the
softmax's numerator and denominator, the LayerNorm's internals (x - mu, sqrt(var + eps), their
quotient) and gamma; the LayerNorm output itself is quantized wherever it feeds a matmul.

Padding is excluded from the range statistics (min/max, EMA of min/max, in calibration and QAT):
``ActivationQuantizer.forward`` has ``takes_valid``, so the model passes it the pad mask of each
point's input (``tinyzip.nn.blocks``): the source mask for encoder rows and cross-attention K/V
inputs, the target mask for decoder rows, the query rows' mask for Q and the key rows' for K and V,
and real query rows x real key columns for attention probabilities. The range is taken over
``x[valid]`` only; the fake quantization still applies to every position (PAD rows are quantized
with the range of the real ones).

Static activation ranges in a file (``attach_act_ranges``): every point gets the per-tensor
(S, Z) = ``quant_params(x_min, x_max, bits, unsigned)`` of its frozen quantizer, as
``{"bits", "unsigned", "scale", "zero_point"}``, exactly the (S, Z) the frozen fake-quant forward
uses. A matmul input (and the ReLU output, W_2's input) goes to ``meta["act"]`` of that weight's
PackedTensor (its ``input_point``): ``tinyzip.compressed`` quantizes the input with it and runs the
int8 kernel. Q, K, V and P feed no weight, so an attention block's four go to
``meta["act_points"] = {"q": ..., "k": ..., "v": ..., "probs": ...}`` of its W_q PackedTensor;
``tinyzip.compressed.static_act_hooks`` turns them back into frozen fake-quant hooks.
"""
import numpy as np

from tinyzip.compress.base import Method, PackedTensor
from tinyzip.compress.uniform import (UniformWeightQuantizer, _check_bits, ema_minmax, fake_quant_backward,
                                      fake_quant_forward, quant_params)

MODES = ("observe", "calibrate", "ema", "frozen")
ATTENTION_POINTS = ("q", "k", "v", "probs")  # the operands of Q K^T and P V, per attention block


def real_entries(x, valid):
    """The entries of x at real positions: x[valid] (leading axes flattened), or x when all are real."""
    if valid is None or valid.all():
        return x
    return x[np.broadcast_to(valid, x.shape[:valid.ndim])]


class ActivationQuantizer:
    """One activation point, per tensor; the range is the only state. ``mode``:

    * "observe": record the running min/max, pass x through (PTQ calibration, ``calibration="minmax"``);
    * "calibrate": record the EMA of min/max (FQT, ``momentum``), pass x through (PTQ, ``"ema"``);
    * "ema": FQT training: update the EMA range, then fake-quantize;
    * "frozen": fake-quantize with the fixed range (evaluation, export).

    ``forward``/``backward`` are the ``(fwd, bwd)`` act hook; ``forward(x, valid)`` records the range
    of the real positions only (see the module docstring).
    """

    def __init__(self, bits, unsigned=False, momentum=0.9, mode="ema"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.bits, self.unsigned, self.momentum, self.mode = _check_bits(bits), unsigned, momentum, mode
        self.range = None

    def qparams(self):
        """(S, Z) of the current range on this point's grid (float64 S, int64 Z)."""
        if self.range is None:
            raise ValueError("activation quantizer has no range yet (run calibration or training first)")
        return quant_params(*self.range, self.bits, unsigned=self.unsigned)

    def forward(self, x, valid=None):
        """x -> (x_hat, cache). ``valid``: bool broadcastable to x's leading axes, True at real (not
        PAD) positions, None = all real: only those enter the range statistics."""
        if self.mode not in MODES:
            raise ValueError(f"activation quantizer in unknown mode {self.mode!r}")
        if self.mode != "frozen":
            self._record(real_entries(x, valid))
        if self.mode in ("observe", "calibrate"):
            return x, None
        scale, zero_point = self.qparams()
        return fake_quant_forward(x, scale, zero_point, self.bits, unsigned=self.unsigned)

    forward.takes_valid = True  # the model passes the pad mask (tinyzip.nn.blocks)

    def _record(self, x):
        if x.size == 0:
            return  # every position is padding: nothing to measure
        if self.mode == "observe":
            lo, hi = np.float64(x.min()), np.float64(x.max())
            self.range = (lo, hi) if self.range is None else (min(self.range[0], lo), max(self.range[1], hi))
        else:
            self.range = ema_minmax(self.range, x, self.momentum)  # FQT: m = 0.9

    def backward(self, dx_hat, cache):
        return fake_quant_backward(dx_hat, cache)


def activation_points(params, act_unsigned=True, attention_operands=True) -> dict:
    """FQT placement: point -> unsigned? (see the module docstring). Dropout acts after the probs
    hook (attention dropout) and after whole sublayers, so every quantizer sits before dropout."""
    points = {}
    for name, W in params.items():
        if np.ndim(W) != 2:
            continue
        if name.endswith(".W_1"):
            points[name[:-4] + ".act"] = act_unsigned  # ReLU >= 0; pass False for GELU
        elif name.endswith(".W_q") and attention_operands:
            points.update({f"{name[:-4]}.{n}": n == "probs" for n in ATTENTION_POINTS})  # P >= 0
        if not name.endswith(".W_2"):
            points[name + ":in"] = False
    return points


def input_point(weight_name: str) -> str:
    """The activation point whose quantizer feeds the matmul of ``weight_name``."""
    return weight_name[:-4] + ".act" if weight_name.endswith(".ffn.W_2") else weight_name + ":in"


def set_act_mode(act_hooks: dict, mode: str) -> None:
    """Switch every ActivationQuantizer behind ``act_hooks`` to one of ``MODES``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for fwd, _ in act_hooks.values():
        fwd.__self__.mode = mode


def _weight_transforms(params, bits, granularity, symmetric, bucket_size, ste):
    return {name: UniformWeightQuantizer(bits, granularity, symmetric, bucket_size, ste)
            for name, W in params.items() if np.ndim(W) == 2}


def _act_hooks(params, bits, act_unsigned, attention_operands, momentum, mode):
    quantizers = {point: ActivationQuantizer(bits, unsigned, momentum, mode)
                  for point, unsigned in activation_points(params, act_unsigned, attention_operands).items()}
    return {point: (q.forward, q.backward) for point, q in quantizers.items()}


def qat_method(params, bits, weights_only=False, granularity="channel", symmetric=True, bucket_size=None,
               act_bits=None, momentum=0.9, act_unsigned=True, ste="clipped", attention_operands=True) -> Method:
    """Quantization-aware training (FQT): every 2-D weight fake-quantized from its own min/max each
    step; activations (unless ``weights_only``) fake-quantized with EMA ranges (momentum 0.9).
    Call ``set_act_mode(method.act_hooks, "frozen")`` before evaluation or export."""
    hooks = {} if weights_only else _act_hooks(params, act_bits or bits, act_unsigned, attention_operands,
                                               momentum, "ema")
    return Method("uniform-qat", _weight_transforms(params, bits, granularity, symmetric, bucket_size, ste),
                  act_hooks=hooks)


def ptq(params, calibration_fn=None, bits=8, granularity="channel", symmetric=True, bucket_size=None,
        act_bits=None, act_unsigned=True, weights_only=False, calibration="minmax", momentum=0.9,
        attention_operands=True):
    """Post-training quantization -> (params_hat, act_hooks, report).

    Weights: fake-quantized once (dequantized float32). Activations (unless ``weights_only``):
    ``calibration_fn(params_hat, act_hooks)`` runs the model forward on a few batches with the
    hooks passing x through while they record its range: the running min/max (``calibration=
    "minmax"``) or FQT's EMA of min/max (``"ema"``, ``momentum``); the ranges are then frozen.
    Points the forward never called are dropped. Weights only need no ``calibration_fn``.
    """
    if calibration not in ("minmax", "ema"):
        raise ValueError(f"calibration must be 'minmax' or 'ema', got {calibration!r}")
    if not weights_only and calibration_fn is None:
        raise ValueError("ptq with activations needs a calibration_fn(params_hat, act_hooks) that runs "
                         "the model on a few batches; pass one, or weights_only=True")
    transforms = _weight_transforms(params, bits, granularity, symmetric, bucket_size, "clipped")
    params_hat = dict(params)
    for name, transform in transforms.items():
        params_hat[name] = transform.forward(params[name])[0]
    hooks = {}
    if not weights_only:
        mode = "observe" if calibration == "minmax" else "calibrate"
        hooks = _act_hooks(params, act_bits or bits, act_unsigned, attention_operands, momentum, mode)
        calibration_fn(params_hat, hooks)
        hooks = {p: h for p, h in hooks.items() if h[0].__self__.range is not None}
        set_act_mode(hooks, "frozen")
    report = {"bits": bits, "act_bits": None if weights_only else act_bits or bits,
              "weights": sorted(transforms), "ranges": {p: h[0].__self__.range for p, h in hooks.items()}}
    return params_hat, hooks, report


# ----------------------------------------------------------------------------- export
def act_meta(quantizer: ActivationQuantizer) -> dict:
    """The JSON-safe static (S, Z) of one point: what ``meta["act"]`` of a weight holds."""
    scale, zero_point = quantizer.qparams()
    return {"bits": quantizer.bits, "unsigned": bool(quantizer.unsigned), "scale": float(scale),
            "zero_point": int(zero_point)}


def attach_act_ranges(packed: dict, act_hooks: dict) -> dict:
    """``{name: PackedTensor}`` -> the same with every quantizer's static (S, Z) attached (see the
    module docstring): ``meta["act"]`` on each uniform weight whose input point has a quantizer in
    ``act_hooks`` (other methods have no static-activation kernel: a hook at their input raises),
    ``meta["act_points"]`` on W_q for the Q, K, V and softmax points of its attention block."""
    out = dict(packed)
    for name, p in packed.items():
        hook = act_hooks.get(input_point(name))
        if hook is None or len(p.shape) != 2:
            continue
        if p.method != "uniform":
            raise ValueError(f"{name}: static activation ranges need a 'uniform' weight, got {p.method!r}")
        out[name] = PackedTensor(p.method, p.shape, p.arrays, dict(p.meta, act=act_meta(hook[0].__self__)))
    blocks = {}
    for point, (fwd, _) in act_hooks.items():
        attn, _, n = point.rpartition(".")
        if n in ATTENTION_POINTS:
            blocks.setdefault(attn, {})[n] = act_meta(fwd.__self__)
    for attn, metas in blocks.items():
        p = out.get(attn + ".W_q")
        if p is None:
            raise ValueError(f"{attn}: its {sorted(metas)} ranges go with {attn}.W_q, which is not in the packed dict")
        out[attn + ".W_q"] = PackedTensor(p.method, p.shape, p.arrays, dict(p.meta, act_points=metas))
    return out
