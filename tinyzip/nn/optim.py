"""Optimizers, learning-rate schedules and gradient clipping as pure functions on params dicts.

Papers
------
* SGD with momentum, in the form most libraries use (Sutskever, Martens, Dahl & Hinton 2013,
  "On the importance of initialization and momentum in deep learning", ICML; velocity without the
  learning rate folded in, as in PyTorch's ``torch.optim.SGD``).
* Adam: Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", ICLR, arXiv:1412.6980.
* AdamW: Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", ICLR, arXiv:1711.05101.
* Warmup schedule and Adam settings: Vaswani et al. 2017, "Attention Is All You Need", NeurIPS,
  arXiv:1706.03762, Sec. 5.3 (beta1 = 0.9, beta2 = 0.98, eps = 1e-9, Eq. (3) below).
* Global-norm clipping: Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent
  neural networks", ICML, arXiv:1211.5063, Algorithm 1.

Notation map (paper -> code)
----------------------------
theta -> ``params[name]``; g_t -> ``grads[name]``; m_t, v_t -> ``state["m"][name]``,
``state["v"][name]``; t -> ``state["step"]`` (1 after the first update); alpha, eta_t -> ``lr``;
beta1, beta2, epsilon -> ``beta1, beta2, eps``; lambda (AdamW) -> ``weight_decay``;
mu (momentum) -> ``momentum``; d_model -> ``D``; threshold (clipping) -> ``max_norm``.

Equations
---------
SGD+momentum:  v_t = mu v_{t-1} + g_t;  theta_t = theta_{t-1} - lr v_t
               (Nesterov: theta_t = theta_{t-1} - lr (g_t + mu v_t))
Adam, Algorithm 1 of Kingma & Ba:
  (1) m_t = beta1 m_{t-1} + (1 - beta1) g_t
  (2) v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
  (3) m_hat = m_t / (1 - beta1^t),  v_hat = v_t / (1 - beta2^t)
  (4) theta_t = theta_{t-1} - lr m_hat / (sqrt(v_hat) + eps)
AdamW, the parameter update of Algorithm 2 of Loshchilov & Hutter, in our form:
  theta_t = theta_{t-1} - lr (m_hat / (sqrt(v_hat) + eps) + lambda theta_{t-1})
  Deviation: the paper writes theta_{t-1} - eta_t (alpha m_hat / (sqrt(v_hat) + eps) + lambda
  theta_{t-1}) with a schedule multiplier eta_t; our ``lr`` is alpha * eta_t and also scales the
  decay, as torch.optim.AdamW does (theta <- theta - lr * lambda * theta), so our lambda is the
  paper's lambda / alpha.
  Decay is applied only where ``decay_mask(name, value)`` is true; the default skips every
  parameter with fewer than 2 dimensions (biases, LayerNorm gamma/beta).
Vaswani Eq. (3):  lr(step) = scale * D^-0.5 * min(step^-0.5, step * warmup^-1.5),  step >= 1.
Pascanu Alg. 1:   if ||g|| > max_norm:  g <- g * max_norm / ||g||,  ||g|| over ALL gradients.

Every step returns new arrays and a new state; the inputs are never modified, so a training loop
can keep the previous step for an exact checkpoint. State holds an int ``"step"`` and, per moment,
a dict of arrays with the keys of ``params`` (what ``tinyzip.io.save_checkpoint`` writes).
"""
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


def _check_grads(params: dict, grads: dict) -> None:
    missing = [name for name in params if name not in grads]
    if missing:
        raise ValueError(f"grads lack parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, value in params.items():
        if grads[name].shape != value.shape:
            raise ValueError(f"grad {name!r} has shape {grads[name].shape}, param has {value.shape}")


def _zeros_like(params: dict) -> dict:
    return {name: np.zeros_like(value) for name, value in params.items()}


def sgd_init(params: dict) -> dict:
    """State of SGD with momentum: zero velocity per parameter."""
    return {"step": 0, "velocity": _zeros_like(params)}


def sgd_step(params: dict, grads: dict, state: dict, lr: float, *, momentum: float = 0.9,
             nesterov: bool = False) -> tuple[dict, dict]:
    """One SGD update: v = mu v + g; theta -= lr v (or lr (g + mu v) with Nesterov)."""
    _check_grads(params, grads)
    new_params, velocity = {}, {}
    for name, theta in params.items():
        g = grads[name]
        v = momentum * state["velocity"][name] + g
        direction = g + momentum * v if nesterov else v
        new_params[name] = theta - lr * direction
        velocity[name] = v
    return new_params, {"step": state["step"] + 1, "velocity": velocity}


def adam_init(params: dict) -> dict:
    """State of Adam/AdamW: t = 0 and zero first and second moments."""
    return {"step": 0, "m": _zeros_like(params), "v": _zeros_like(params)}


def _adam_direction(g, m, v, t, beta1, beta2, eps):
    # Eq. (1)
    m = beta1 * m + (1.0 - beta1) * g
    # Eq. (2)
    v = beta2 * v + (1.0 - beta2) * (g * g)
    # Eq. (3), folded into Python floats so the arrays keep their dtype
    bias1 = 1.0 - beta1 ** t
    bias2 = 1.0 - beta2 ** t
    # Eq. (4) without lr: m_hat / (sqrt(v_hat) + eps)
    direction = (m / bias1) / (np.sqrt(v / bias2) + eps)
    return direction, m, v


def adam_step(params: dict, grads: dict, state: dict, lr: float, *,
              betas: tuple = (0.9, 0.98), eps: float = 1e-9) -> tuple[dict, dict]:
    """One Adam update, Algorithm 1 of Kingma & Ba (Transformer defaults for betas and eps)."""
    _check_grads(params, grads)
    beta1, beta2 = betas
    t = state["step"] + 1
    new_params, m_new, v_new = {}, {}, {}
    for name, theta in params.items():
        direction, m_new[name], v_new[name] = _adam_direction(
            grads[name], state["m"][name], state["v"][name], t, beta1, beta2, eps)
        # Eq. (4)
        new_params[name] = theta - lr * direction
    return new_params, {"step": t, "m": m_new, "v": v_new}


def decays_matrices(name: str, value: np.ndarray) -> bool:
    """Default AdamW decay mask: decay weight matrices and embeddings, skip biases and LayerNorm."""
    return value.ndim >= 2


def adamw_step(params: dict, grads: dict, state: dict, lr: float, *,
               betas: tuple = (0.9, 0.98), eps: float = 1e-9, weight_decay: float = 0.01,
               decay_mask: Callable[[str, np.ndarray], bool] = decays_matrices) -> tuple[dict, dict]:
    """One AdamW update: Adam plus weight decay decoupled from the gradient (Alg. 2)."""
    _check_grads(params, grads)
    beta1, beta2 = betas
    t = state["step"] + 1
    new_params, m_new, v_new = {}, {}, {}
    for name, theta in params.items():
        direction, m_new[name], v_new[name] = _adam_direction(
            grads[name], state["m"][name], state["v"][name], t, beta1, beta2, eps)
        if weight_decay and decay_mask(name, theta):
            # Alg. 2: the decay uses theta_{t-1} and never enters the moments m, v
            direction = direction + weight_decay * theta
        new_params[name] = theta - lr * direction
    return new_params, {"step": t, "m": m_new, "v": v_new}


@dataclass(frozen=True)
class Optimizer:
    """An update rule with its hyperparameters bound: ``init(params)``, ``step(params, grads, state, lr)``."""

    name: str
    init: Callable[[dict], dict]
    step: Callable[[dict, dict, dict, float], tuple]


def sgd(momentum: float = 0.9, nesterov: bool = False) -> Optimizer:
    """SGD with (optionally Nesterov) momentum as an :class:`Optimizer`."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return Optimizer("sgd", sgd_init, lambda p, g, s, lr: sgd_step(p, g, s, lr, momentum=momentum,
                                                                    nesterov=nesterov))


def _check_betas(betas, eps):
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def adam(betas: tuple = (0.9, 0.98), eps: float = 1e-9) -> Optimizer:
    """Adam (Transformer defaults) as an :class:`Optimizer`."""
    _check_betas(betas, eps)
    return Optimizer("adam", adam_init, lambda p, g, s, lr: adam_step(p, g, s, lr, betas=betas, eps=eps))


def adamw(betas: tuple = (0.9, 0.98), eps: float = 1e-9, weight_decay: float = 0.01,
          decay_mask: Callable[[str, np.ndarray], bool] = decays_matrices) -> Optimizer:
    """AdamW (decoupled weight decay, biases and LayerNorm skipped by default) as an :class:`Optimizer`."""
    _check_betas(betas, eps)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return Optimizer("adamw", adam_init, lambda p, g, s, lr: adamw_step(
        p, g, s, lr, betas=betas, eps=eps, weight_decay=weight_decay, decay_mask=decay_mask))


def inverse_sqrt_schedule(step: int, D: int, warmup: int = 4000, scale: float = 1.0) -> float:
    """Vaswani Eq. (3): scale * D^-0.5 * min(step^-0.5, step * warmup^-1.5); step 0 counts as 1."""
    if D <= 0 or warmup <= 0:
        raise ValueError(f"D and warmup must be > 0, got D={D}, warmup={warmup}")
    step = max(int(step), 1)
    # Eq. (3)
    return scale * D ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


def linear_decay(step: int, peak: float, total: int, warmup: int = 0, end: float = 0.0) -> float:
    """Linear warmup from 0 to ``peak`` over ``warmup`` steps, then linear decay to ``end`` at ``total``."""
    if total <= 0 or not 0 <= warmup < total:
        raise ValueError(f"need 0 <= warmup < total and total > 0, got warmup={warmup}, total={total}")
    step = max(int(step), 1)
    if step <= warmup:
        return peak * step / warmup
    frac = min(step - warmup, total - warmup) / (total - warmup)
    return peak + (end - peak) * frac


def global_norm(grads: dict) -> float:
    """||g|| = sqrt(sum over all gradients of sum g^2), accumulated in float64."""
    return math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))


def clip_by_global_norm(grads: dict, max_norm: float) -> tuple[dict, float]:
    """Pascanu Alg. 1: scale all gradients by max_norm/||g|| if ||g|| > max_norm. Returns (grads, ||g||)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    norm = global_norm(grads)
    if not math.isfinite(norm):
        raise ValueError(f"gradient global norm is {norm}; the loss or a backward produced nan/inf")
    if norm <= max_norm:
        return grads, norm
    factor = max_norm / (norm + 1e-6)  # the 1e-6 keeps the clipped norm strictly below max_norm
    return {name: g * np.asarray(factor, dtype=g.dtype) for name, g in grads.items()}, norm
