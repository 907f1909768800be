"""Attention-head importance and head pruning after training.

Michel, Levy, Neubig (2019), "Are Sixteen Heads Really Better than One?", NeurIPS, arXiv:1905.10650
(Sec. 2 and 4); the layer-wise normalization is Molchanov, Tyree, Karras, Aila, Kautz (2017),
"Pruning Convolutional Neural Networks for Resource Efficient Inference", ICLR, arXiv:1611.06440.
The paper's equation numbers are not checked here, so the lines carry our labels (H1)-(H4).

Notation: an attention block is named by its prefix (``"enc.0.attn"``, ``"dec.1.cross_attn"``, the
model's ``attention_prefixes()``); its H heads have masks xi (H,), all ones in a normal forward, and
heads_h (B, H, T, Dh) is head h's output before W_o (``nn/attention.py``). L(x) is the model's
training loss on one example x (for translation: label-smoothed cross-entropy, mean over the
target tokens of one sentence pair).

    MHAtt(x) = Concat_h(xi_h heads_h(x)) @ W_o + b_o = sum_h xi_h Att_h(x) + b_o           (H1)
    I_h = E_x |dL(x)/dxi_h|,   dL/dxi_h = sum_{t,d} heads_h[t, d] dL/d(xi_h heads_h)[t, d]    (H2)
    I_h <- I_h / (||I_block||_2 + 1e-20)       over the heads of one block (Molchanov et al.)  (H3)
    repeat: xi_h <- 0 for the max(1, floor(0.1 N)) unmasked heads of least I (N: all heads),
            then recompute I under the new mask                                               (H4)

(H2) is the first-order Taylor estimate of the change in loss when head h is removed; the
gradient w.r.t. xi comes from the attention backward (``mha_backward``'s ``dhead_mask``). E_x is
the mean over the batches given, each one example in the paper's setting (per-example absolute
values; huggingface's ``run_bertology.py`` with its default batch size 1). (H4) is the
paper's iterative pruning; heads already masked are excluded explicitly, since their dL/dxi is
not 0 in general. Ties are broken by the flat index (block order, then head), so the order is
deterministic.

``prune_heads`` makes a mask physical: for every head with xi_h = 0 it deletes the head's Dh columns
of W_q, W_k, W_v and b_q, b_k, b_v and its Dh rows of W_o, and records the original head indices in
the config's ``pruned_heads``. The result is a smaller model, not a masked one: its forward equals
the masked model's, its ``.tz`` file and its attention matmuls are smaller. A block may lose every
head; its output is then b_o, and the residual path carries the sub-layer.
"""
from dataclasses import replace

import numpy as np

LAYER_NORM_EPS = 1e-20  # (H3)'s guard for a block whose importances are all 0
PRUNE_FRACTION = 0.1    # (H4): 10% of all heads per step


def _kept(config, prefix):
    """Original indices of the heads a block still has (its ``pruned_heads`` removed)."""
    gone = set(config.pruned_heads.get(prefix, ()))
    return [h for h in range(config.H) if h not in gone]


def full_mask(model) -> dict:
    """xi = 1 for every head the model has: {prefix: ones (H_kept,)} (float64)."""
    return {p: np.ones(len(_kept(model.config, p))) for p in model.attention_prefixes()}


def _completed_mask(model, head_mask) -> dict:
    """``head_mask`` with ones for the blocks it leaves out, or a ValueError for a bad entry."""
    full = full_mask(model)
    unknown = sorted(set(head_mask or {}) - set(full))
    if unknown:
        raise ValueError(f"head_mask names {unknown}, not attention blocks of this model: {list(full)}")
    mask = {**full, **(head_mask or {})}
    for p, ones in full.items():
        xi = np.asarray(mask[p])
        if xi.shape != ones.shape or not np.all((xi == 0) | (xi == 1)):
            raise ValueError(f"head_mask[{p!r}] must be {len(ones)} values in {{0, 1}}, got {xi!r}")
    return mask


def head_importance(model, params, batches, head_mask=None) -> dict:
    """I (H2): {prefix: mean over ``batches`` of |dL/dxi| (H_kept,)}, float64.

    Each batch is the tuple of ``model.loss_and_grads``' data arguments (Seq2Seq: src, tgt_in,
    tgt_out; one sentence pair per batch for the paper's E_x |.|). ``head_mask`` (default and for
    blocks it leaves out: all ones) is the mask the gradient is taken at: the current one during
    iterative pruning."""
    head_mask = _completed_mask(model, head_mask)
    total, count = {p: np.zeros(len(xi)) for p, xi in head_mask.items()}, 0
    for batch in batches:
        _, grads, _ = model.loss_and_grads(params, *batch, head_mask=head_mask)
        for p in total:
            # Eq. (H2): the attention backward's dL/dxi_h = <heads_h, dL/d(xi_h heads_h)>
            total[p] += np.abs(grads[p + ".head_mask"])
        count += 1
    if count == 0:
        raise ValueError("head_importance needs at least one batch")
    return {p: t / count for p, t in total.items()}


def normalize_by_block(importance: dict) -> dict:
    """(H3): each block's scores divided by their l2 norm (+1e-20), so blocks compare by rank."""
    # Eq. (H3)
    return {p: I / (np.sqrt(np.sum(I ** 2)) + LAYER_NORM_EPS) for p, I in importance.items()}


def heads_to_mask(importance: dict, head_mask: dict, n: int) -> list:
    """(H4)'s selection: the ``n`` unmasked heads of least importance as (prefix, head) pairs, in
    the blocks' order of ``importance``; ties go to the lower flat index. Masked heads never return."""
    flat = [(p, h) for p, I in importance.items() for h in range(len(I))]
    scores = np.concatenate([np.where(head_mask[p] == 0, np.inf, I) for p, I in importance.items()])
    order = np.argsort(scores, kind="stable")
    free = int(np.sum(np.isfinite(scores)))
    if not 0 <= n <= free:
        raise ValueError(f"cannot mask {n} more heads: {free} are unmasked")
    return [flat[i] for i in order[:n]]


def iterative_masks(model, params, batches, n_masked: int, normalize=True,
                    fraction=PRUNE_FRACTION) -> list:
    """(H4) until ``n_masked`` heads are masked: the mask after every step, a list of {prefix: xi}.

    Each step masks max(1, floor(fraction N)) heads (the last step only what is left), chosen by
    the importance (normalized by block with ``normalize``, as the paper's runs do) recomputed
    under the mask of the step before. ``batches`` is a list (it is read once per step)."""
    mask = full_mask(model)
    n_total = sum(len(xi) for xi in mask.values())
    if not 0 <= n_masked <= n_total:
        raise ValueError(f"n_masked={n_masked} must lie in [0, {n_total}] (the model's heads)")
    per_step, masks, done = max(1, int(fraction * n_total)), [], 0
    while done < n_masked:
        importance = head_importance(model, params, batches, mask)
        if normalize:
            importance = normalize_by_block(importance)
        mask = {p: xi.copy() for p, xi in mask.items()}
        # Eq. (H4)
        for p, h in heads_to_mask(importance, mask, min(per_step, n_masked - done)):
            mask[p][h] = 0.0
        done = sum(int(np.sum(xi == 0)) for xi in mask.values())
        masks.append(mask)
    return masks


def prune_heads(model, params, head_mask):
    """The smaller model without the masked heads: (new model, new params), forward-equal to
    ``model`` run with ``head_mask`` (blocks it leaves out keep their heads). Works on a model
    pruned before (indices stay original)."""
    head_mask = _completed_mask(model, head_mask)
    config = model.config
    Dh = config.D // config.H
    pruned, params = dict(config.pruned_heads), dict(params)
    for p in model.attention_prefixes():
        xi = np.asarray(head_mask[p])
        if np.all(xi == 1):
            continue
        kept_now = np.flatnonzero(xi)                       # positions in the current block
        cols = (kept_now[:, None] * Dh + np.arange(Dh)).ravel()
        for n in ("q", "k", "v"):
            params[f"{p}.W_{n}"] = np.ascontiguousarray(params[f"{p}.W_{n}"][:, cols])
            params[f"{p}.b_{n}"] = params[f"{p}.b_{n}"][cols].copy()
        params[f"{p}.W_o"] = np.ascontiguousarray(params[f"{p}.W_o"][cols])
        originals = _kept(config, p)
        removed_now = {originals[j] for j in np.flatnonzero(xi == 0)}
        pruned[p] = sorted(set(config.pruned_heads.get(p, ())) | removed_now)
    new_model = type(model)(replace(config, pruned_heads=pruned))
    return new_model, params


def n_heads(model) -> int:
    """Heads the model has (after any pruning)."""
    return sum(len(_kept(model.config, p)) for p in model.attention_prefixes())
