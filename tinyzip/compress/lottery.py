"""Lottery tickets: iterative magnitude pruning with the survivors reset to their initial values.

Jonathan Frankle, Michael Carbin (2019), "The Lottery Ticket Hypothesis: Finding Sparse, Trainable
Neural Networks", ICLR 2019, arXiv:1803.03635 (iterative pruning with resetting, their
"Strategy 1"); global pruning at 20% a round as in their deeper networks and in facebookresearch's
``open_lth`` (``pruning/sparse_global.py``, ``lottery/runner.py``). The paper's equation numbers
are not checked here, so the lines carry our labels (L1)-(L4).

Notation: theta_0 the initial weights (saved once), m the masks of the prunable matrices (1 =
kept; ``magnitude_pruning.prunable_names``: the attention and FFN matrices, not the embedding),
theta_T the weights after training m * theta for T steps, p the fraction pruned per round.

    n_prune = ceil(p * |{m = 1}|): the surviving weights of least |theta_T|, pooled over all
              prunable matrices (global) or per matrix (layer-wise)                      (L1)
    m_{r+1} = m_r with those n_prune entries set to 0 (nested: m_{r+1} <= m_r)               (L2)
    theta <- m_{r+1} * theta_0, then train T steps with the mask held (the ticket)          (L3)
    control: m_{r+1} * theta_0' with theta_0' a fresh initialization (random reinit)        (L4)

After r rounds the kept fraction is about (1 - p)^r (exactly: the ceil of (L1) each round). The
hypothesis: the ticket (L3) trains to the dense model's accuracy at sparsities where the control
(L4), the same mask with other initial values, does not.

Choices: (L1) prunes exactly n_prune weights; ``open_lth``'s global pruning keeps |w| > threshold
and so also removes the threshold weight itself (n_prune + 1 for distinct magnitudes). Ties go to
the lower flat index (``magnitude_pruning``'s exact-k rule). Scores are |theta_T| of the round's
trained weights, never |theta_0|. Rewinding to an early step theta_k (Frankle et al. 2020) is not
done here: (L3) resets to theta_0. The mask is held during training by ``magnitude_pruning.
pruning_method`` (masked forward and gradient, pruned weights put back to 0 after every step, as
``open_lth``'s ``PrunedModel`` re-applies its mask before every forward).
"""
import math

import numpy as np

from tinyzip.compress import magnitude_pruning as mp

PRUNE_FRACTION = 0.2  # (L1): open_lth's default, Frankle & Carbin's rate for global pruning


def _check_fraction(p):
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {p!r}")
    return float(p)


def imp_masks(trained: dict, masks: dict, fraction=PRUNE_FRACTION, scope="global") -> dict:
    """(L1)-(L2): one round's new masks from the trained weights ``trained`` of the names in
    ``masks`` (all-True masks for the first round)."""
    fraction = _check_fraction(fraction)
    names = list(masks)
    for n in names:
        if np.shape(masks[n]) != np.shape(trained[n]) or np.asarray(masks[n]).dtype != bool:
            raise ValueError(f"masks[{n!r}] must be bool of the shape of its weight {np.shape(trained[n])}")
    if scope == "global":
        total = sum(m.size for m in masks.values())
        pruned = total - sum(int(m.sum()) for m in masks.values())
        # Eq. (L1): ceil(p * survivors), pooled over every prunable matrix
        n_prune = math.ceil(fraction * (total - pruned))
        return mp.global_topk_masks({n: trained[n] for n in names}, (pruned + n_prune) / total, masks)
    if scope == "layer":
        out = {}
        for n in names:
            survivors = int(masks[n].sum())
            # Eq. (L1), per matrix
            n_prune = math.ceil(fraction * survivors)
            out[n] = mp.topk_mask(trained[n], (masks[n].size - survivors + n_prune) / masks[n].size, masks[n])
        return out
    raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")


def reset_to(init: dict, masks: dict) -> dict:
    """(L3)/(L4): the survivors at their values in ``init``, the pruned weights 0."""
    return mp.apply_masks(init, masks)


def kept_fraction(masks: dict) -> float:
    """Fraction of the prunable weights still kept."""
    return sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())


def lottery_tickets(train_fn, theta_0: dict, dense: dict, rounds: int, names=None,
                    fraction=PRUNE_FRACTION, scope="global") -> list:
    """Iterative pruning with resetting, (L1)-(L3), for ``rounds`` rounds after the dense run:
    a list of (masks, trained params), one per round. ``dense`` is theta_T of the dense network
    (trained from ``theta_0``); ``train_fn(params, masks)`` trains the reset ticket with the
    mask held and returns its weights (the same recipe as the dense run)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    names = mp.prunable_names(theta_0) if names is None else list(names)
    masks = {n: np.ones(np.shape(theta_0[n]), dtype=bool) for n in names}
    trained, levels = dense, []
    for _ in range(rounds):
        masks = imp_masks(trained, masks, fraction, scope)
        # Eq. (L3): the survivors go back to theta_0
        trained = train_fn(reset_to(theta_0, masks), masks)
        levels.append((masks, trained))
    return levels
