"""Hessian-aware mixed precision: each layer's bit width from the top eigenvalue of its Hessian.

Sheng Shen, Zhen Dong, Jiayu Ye, Linjian Ma, Zhewei Yao, Amir Gholami, Michael W. Mahoney, Kurt
Keutzer (2020), "Q-BERT: Hessian Based Ultra Low Precision Quantization of BERT", AAAI 2020,
arXiv:1909.05840. The power iteration's protocol (random start, Rayleigh quotient, relative stopping
test at tol = 1e-3, at most 100 iterations) is that of the same group's PyHessian (Yao, Gholami,
Keutzer, Mahoney 2020, arXiv:1912.07145). The paper's equation numbers are not checked here, so the
lines carry our labels (Q1)-(Q4).

Notation: theta_i are the weight matrices of block i (one encoder or decoder layer, Q-BERT's unit:
``layer_blocks``), g_i(theta) = dL/dtheta_i the model's analytic gradient (``loss_and_grads``, no
dropout), H_i = d^2 L / dtheta_i^2 the block's diagonal Hessian block, v a direction with entries
in block i only, batches j = 1..m drawn from the training data.

    H_i v = (g_i(theta + eps v) - g_i(theta - eps v)) / (2 eps) + O(eps^2)              (Q1)
    repeat: w = H_i v,  lambda = v^T w,  v = w / ||w||
            until |lambda - lambda_prev| / (|lambda_prev| + 1e-6) < tol                 (Q2)
    Omega_i = |mean_j lambda_i^(j)| + std_j lambda_i^(j)       (std with ddof = 0)       (Q3)
    the blocks sorted by Omega, largest first (ties: block order); the first n_high get
    ``high`` bits, the others ``low``                                                   (Q4)

(Q1): Q-BERT (and PyHessian) take H v exactly by differentiating g . v a second time (Pearlmutter
1994). tinyzip's backward passes are written by hand and have no second-order mode, so H v is the
central difference of two exact gradients, computed in float64 whatever the model's dtype: its
truncation error is O(eps^2) (eps = 1e-4 on a unit v) and its rounding error about 1e-16 ||g|| /
eps, both far below the spread (Q3) measures across batches. Block i's H_i v is the block-i part
of H v for a v that is zero outside block i. The ReLU gates 1[h > 0] are frozen at theta's
(``model_grad_fn``, the models' ``relu_gates``): the R-op differentiates through ReLU with ReLU'' =
0, and so does the difference of gradients with frozen gates. Left free, a step that moves one
pre-activation across 0 adds its gradient jump / 2 eps, and the power iteration locks onto such
kinks: on the shipped model it returned -20 for a direction along which the loss curves by +2.

(Q2) returns the eigenvalue of largest magnitude; a negative one means the model is not at a
local minimum of that batch's loss (Q-BERT's explanation of its SQuAD loss). (Q3) penalizes a
block whose curvature varies between batches as well as one that is sharp on average. (Q4) is
the "2/3-bit MP" rule: the ranking decides, the count of high-precision blocks is the setting
(Q-BERT's assignment is by hand given the ranking, not an optimization).

The quantizer is ``uniform.py``'s symmetric per-channel grid. Q-BERT's group-wise quantization
gives each bucket of consecutive output neurons of a matrix its own range (its Fig. 4); one range
per output unit, ours, is its finest grouping. The embedding (tied with the output projection)
stays at 8 bits, as in Q-BERT's 8-bit embeddings; biases and LayerNorm stay float32.
``mixed_precision_method`` is the QAT transform set and ``pack_mixed`` the export; every matrix
is an ordinary ``uniform`` tensor of its own width, so loading needs nothing new.
"""
import numpy as np

from tinyzip.compress.base import Method
from tinyzip.compress.uniform import UniformWeightQuantizer, _check_bits, pack_uniform

HVP_EPS = 1e-4          # (Q1): the central difference's step along a unit v
POWER_TOL = 1e-3        # (Q2): PyHessian's relative stopping tolerance
POWER_MAX_ITER = 100    # (Q2): PyHessian's iteration cap


def layer_blocks(params: dict) -> dict:
    """Q-BERT's blocks: {"enc.0": [its weight matrices], ..., "dec.1": [...]}, in model order.
    A block is every 2-D parameter whose name starts with ``enc.<i>.`` or ``dec.<i>.``."""
    blocks = {}
    for name in params:
        parts = name.split(".")
        if np.ndim(params[name]) == 2 and len(parts) > 2 and parts[0] in ("enc", "dec") and parts[1].isdigit():
            blocks.setdefault(f"{parts[0]}.{parts[1]}", []).append(name)
    order = sorted(blocks, key=lambda b: (b.split(".")[0] != "enc", int(b.split(".")[1])))
    return {b: sorted(blocks[b]) for b in order}


def _check_direction(params, names, v):
    for n in names:
        if n not in params:
            raise KeyError(f"{n!r} is not a parameter of the model")
        if np.shape(v[n]) != np.shape(params[n]):
            raise ValueError(f"v[{n!r}] has shape {np.shape(v[n])}, the parameter {np.shape(params[n])}")
        if not np.all(np.isfinite(v[n])):
            raise ValueError(f"v[{n!r}] has NaN or inf entries")


def hessian_vector_product(grad_fn, params: dict, v: dict, eps=HVP_EPS) -> dict:
    """(Q1): H v restricted to v's names, by the central difference of ``grad_fn`` (params -> dict
    of gradients) at theta +- eps v, in float64. ``v`` maps the block's parameter names to arrays
    of their shapes; every other parameter stays at theta."""
    names = list(v)
    _check_direction(params, names, v)
    base = {n: np.asarray(W, np.float64) for n, W in params.items()}
    plus = dict(base, **{n: base[n] + eps * np.asarray(v[n], np.float64) for n in names})
    minus = dict(base, **{n: base[n] - eps * np.asarray(v[n], np.float64) for n in names})
    g_plus, g_minus = grad_fn(plus), grad_fn(minus)
    # Eq. (Q1)
    return {n: (g_plus[n] - g_minus[n]) / (2 * eps) for n in names}


def model_grad_fn(model, params: dict, batch):
    """params -> the gradients of ``model``'s loss on ``batch`` (a ``loss_and_grads`` data tuple),
    without dropout and with the ReLU gates frozen at ``params``' (recorded here, in float64)."""
    gates = {}
    model.loss_and_grads({n: np.asarray(W, np.float64) for n, W in params.items()}, *batch, relu_gates=gates)
    return lambda p: model.loss_and_grads(p, *batch, relu_gates=gates)[1]


def _dot(a: dict, b: dict) -> float:
    return float(sum(np.sum(a[n] * b[n]) for n in a))


def power_iteration(matvec, v0: dict, max_iter=POWER_MAX_ITER, tol=POWER_TOL):
    """(Q2): the eigenvalue of largest magnitude of the symmetric operator ``matvec`` (dict ->
    dict), from the start ``v0`` -> (lambda, unit eigenvector estimate, iterations used). An
    operator that maps v to 0 has lambda = 0 (returned at once, no division by 0)."""
    norm = np.sqrt(_dot(v0, v0))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("power_iteration needs a finite, non-zero start vector")
    v = {n: np.asarray(x, np.float64) / norm for n, x in v0.items()}
    lam_prev = None
    for it in range(1, max_iter + 1):
        w = matvec(v)
        lam = _dot(v, w)                                   # Rayleigh quotient v^T H v, ||v|| = 1
        w_norm = np.sqrt(_dot(w, w))
        if w_norm == 0:
            return 0.0, v, it
        v = {n: x / w_norm for n, x in w.items()}
        # Eq. (Q2)
        if lam_prev is not None and abs(lam - lam_prev) / (abs(lam_prev) + 1e-6) < tol:
            return lam, v, it
        lam_prev = lam
    return lam, v, max_iter


def top_eigenvalue(grad_fn, params: dict, names, rng: np.random.Generator, max_iter=POWER_MAX_ITER,
                   tol=POWER_TOL, eps=HVP_EPS) -> float:
    """(Q1)-(Q2): the top eigenvalue of the Hessian of ``grad_fn``'s loss in the parameters
    ``names``, power iteration from v ~ N(0, I) drawn with ``rng``."""
    if not names:
        raise ValueError("top_eigenvalue needs at least one parameter name")
    v0 = {n: rng.standard_normal(np.shape(params[n])) for n in names}
    lam, _, _ = power_iteration(lambda v: hessian_vector_product(grad_fn, params, v, eps), v0, max_iter, tol)
    return lam


def sensitivity(eigenvalues) -> float:
    """(Q3): Omega = |mean| + std (ddof = 0) of one block's top eigenvalues over batches."""
    lams = np.asarray(eigenvalues, np.float64)
    if lams.ndim != 1 or lams.size == 0 or not np.all(np.isfinite(lams)):
        raise ValueError(f"sensitivity needs a non-empty 1-D array of finite eigenvalues, got {lams!r}")
    # Eq. (Q3)
    return float(abs(lams.mean()) + lams.std(ddof=0))


def block_sensitivities(model, params: dict, batches, rng: np.random.Generator, blocks=None, **power) -> dict:
    """{block: {"eigenvalues": [lambda per batch], "omega": Omega}} (Q1)-(Q3) for every block of
    ``layer_blocks`` (or ``blocks``: {name: [parameter names]}). ``batches`` is a list of
    ``model.loss_and_grads`` data tuples; the loss has no dropout (no rng), so H is deterministic."""
    blocks = layer_blocks(params) if blocks is None else blocks
    batches = list(batches)
    if not batches:
        raise ValueError("block_sensitivities needs at least one batch")
    grad_fns = [model_grad_fn(model, params, batch) for batch in batches]
    out = {}
    for block, names in blocks.items():
        lams = [top_eigenvalue(grad_fn, params, names, rng, **power) for grad_fn in grad_fns]
        out[block] = {"eigenvalues": lams, "omega": sensitivity(lams)}
    return out


def assign_bits(omega: dict, n_high: int, low: int, high: int) -> dict:
    """(Q4): {block: bits}: the ``n_high`` blocks of largest Omega get ``high`` bits, the rest
    ``low``; ties go to the earlier block of ``omega``'s order."""
    low, high = _check_bits(low), _check_bits(high)
    if low > high:
        raise ValueError(f"low={low} must not exceed high={high}")
    if not 0 <= n_high <= len(omega):
        raise ValueError(f"n_high={n_high} must lie in [0, {len(omega)}] (the blocks)")
    names = list(omega)
    # Eq. (Q4)
    order = sorted(range(len(names)), key=lambda i: (-omega[names[i]], i))
    ranked_high = {names[i] for i in order[:n_high]}
    return {b: high if b in ranked_high else low for b in names}


def bits_by_name(params: dict, block_bits: dict, embedding_bits=8) -> dict:
    """Every 2-D parameter's width: its block's, or ``embedding_bits`` outside the blocks (the
    tied embedding and output projection)."""
    blocks = layer_blocks(params)
    if set(block_bits) != set(blocks):
        raise ValueError(f"block_bits must give every block of the model {list(blocks)} a width, "
                         f"got {sorted(block_bits)}")
    widths = {n: _check_bits(block_bits[b]) for b, names in blocks.items() for n in names}
    return {n: widths.get(n, _check_bits(embedding_bits)) for n, W in params.items() if np.ndim(W) == 2}


def mixed_precision_method(widths: dict) -> Method:
    """QAT with each matrix at its own width (symmetric per channel, clipped STE)."""
    return Method("hessian-mixed", {n: UniformWeightQuantizer(b) for n, b in widths.items()})


def pack_mixed(params: dict, widths: dict) -> dict:
    """{name: PackedTensor}: each matrix ``pack_uniform``-ed at its width (only these names)."""
    return {n: pack_uniform(params[n], b) for n, b in widths.items()}


def average_bits(params: dict, widths: dict) -> float:
    """Weight bits per quantized weight, sum_i n_i b_i / sum_i n_i (scales not counted)."""
    sizes = {n: np.size(params[n]) for n in widths}
    return sum(sizes[n] * widths[n] for n in widths) / sum(sizes.values())
