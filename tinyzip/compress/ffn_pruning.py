"""Structured pruning of FFN hidden nodes by their activation range (FullyQT's node pruning).

Gabriele Prato, Ella Charlaix, Mehdi Rezagholizadeh (2020), "Fully Quantized Transformer for
Machine Translation", Findings of EMNLP 2020, arXiv:1910.10485; its ICLR 2020 submission says, of
the trained quantized model, that "a good portion of the nodes in the encoder can be removed
without any loss in BLEU". That sentence is what we could check. The paper's method section could
not be read here: the statistic (P1) and the threshold (P2)-(P3) below are the paper card's
recollection of it, unverified, and the labels are ours.

Notation: an FFN (prefix ``"enc.0.ffn"``) computes a = ReLU(x @ W_1 + b_1): (T, F) and
y = a @ W_2 + b_2 (``nn/blocks.py``). Node j is column j of W_1, entry j of b_1 and row j of W_2;
a[:, j] is its output. The data is a list of batches; padding is never counted.

    m_j = max over the batch's real tokens t of a[t, j];  x_max_j <- mu x_max_j + (1 - mu) m_j,
          mu = 0.9, starting at the first batch's m_j (FQT's EMA range of the ReLU output,
          one range per node: the bucket of a column)                                     (P1)
    sigma = std over the FFN's nodes of x_max_j (ddof 0)                                   (P2)
    node j is pruned iff x_max_j < lambda sigma                                            (P3)
    pruning deletes W_1[:, j], b_1[j] and W_2[j, :]: a smaller FFN, not a masked one        (P4)

Why it can work: node j adds a[t, j] W_2[j] to y_t, so on data where a[:, j] = 0 (a dead node)
(P4) changes nothing, and in general ||y_t - y'_t|| <= sum over pruned j of a[t, j] ||W_2[j]||
(the triangle inequality). (P3) is relative: multiplying one FFN's W_1 and b_1 by c > 0 scales
every x_max_j and sigma by c and prunes the same nodes. It needs a ReLU (a >= 0, dead nodes
possible), FullyQT's and our translation models' activation; the statistic is still computed for
a GELU classifier, where no node is ever exactly dead.

Two selections besides (P3), ours, for measuring at a fixed size: ``smallest_nodes`` prunes the
floor(r F) nodes of least x_max in each FFN, and ``random_nodes`` the same number per FFN chosen
uniformly at random (the control: does x_max choose better than chance?).

``prune_nodes`` records the original indices of the removed nodes in the config's ``pruned_ffn``
(so a ``.tz`` file describes its shapes), works on a model pruned before, and refuses to remove
the last node of an FFN (an FFN without nodes is its bias b_2: drop the layer with LayerDrop's
``prune_layers`` instead).
"""
from dataclasses import replace

import numpy as np

from tinyzip.compress.fqt import real_entries

MOMENTUM = 0.9  # (P1): FQT's EMA of activation ranges


def _check_prefixes(model, prefixes):
    known = model.config.ffn_prefixes()
    prefixes = known if prefixes is None else list(prefixes)
    unknown = sorted(set(prefixes) - set(known))
    if unknown or not prefixes:
        raise ValueError(f"prefixes must be FFNs of this model {known}, got {prefixes}")
    return prefixes


def node_ranges(model, params, batches, prefixes=None, momentum=MOMENTUM) -> dict:
    """(P1): {FFN prefix: x_max (F_kept,) float64} over ``batches`` (default prefixes: every FFN).

    Each batch is the tuple of ``model.loss_and_grads``' data arguments (Seq2Seq: src, tgt_in,
    tgt_out); the model runs forward (no dropout) on all but the last."""
    prefixes = _check_prefixes(model, prefixes)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
    x_max = {}

    def observer(prefix):
        def forward(a, valid):
            real = real_entries(a, valid).reshape(-1, a.shape[-1])
            if real.shape[0] == 0:                     # a batch of padding only: nothing to record
                return a, None
            m = real.max(axis=0).astype(np.float64)
            if not np.all(np.isfinite(m)):
                raise ValueError(f"{prefix}: the activations are not finite")
            # Eq. (P1)
            x_max[prefix] = m if prefix not in x_max else momentum * x_max[prefix] + (1 - momentum) * m
            return a, None
        forward.takes_valid = True
        return forward, lambda da, cache: da

    hooks = {p + ".act": observer(p) for p in prefixes}
    for batch in batches:
        model.forward(params, *batch[:-1], act_hooks=hooks)
    if len(x_max) != len(prefixes):                          # no batch, or none with a real token
        raise ValueError("node_ranges needs at least one batch with a real token")
    return {p: x_max[p] for p in prefixes}


def _check_ranges(x_max):
    if not x_max:
        raise ValueError("x_max must name at least one FFN")
    for p, r in x_max.items():
        r = np.asarray(r)
        if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)):
            raise ValueError(f"x_max[{p!r}] must be a non-empty 1-D array of finite values, got {r!r}")


def threshold_nodes(x_max: dict, lam: float) -> dict:
    """(P2)-(P3): {prefix: sorted indices of the nodes with x_max < lam * std(x_max)}."""
    _check_ranges(x_max)
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lambda must be finite and >= 0, got {lam}")
    out = {}
    for p, r in x_max.items():
        # Eq. (P2)
        sigma = np.std(r)
        # Eq. (P3)
        out[p] = np.flatnonzero(np.asarray(r) < lam * sigma)
    return out


def smallest_nodes(x_max: dict, fraction: float) -> dict:
    """{prefix: sorted indices of the floor(fraction F) nodes of least x_max}; ties go to the
    lower index."""
    _check_ranges(x_max)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction}")
    return {p: np.sort(np.argsort(r, kind="stable")[:int(fraction * len(r))]) for p, r in x_max.items()}


def random_nodes(selection: dict, x_max: dict, rng: np.random.Generator) -> dict:
    """The control: in each FFN of ``x_max``, as many nodes as ``selection`` prunes there, drawn
    uniformly without replacement."""
    _check_ranges(x_max)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a np.random.Generator, got {type(rng).__name__}")
    return {p: np.sort(rng.choice(len(r), len(selection.get(p, ())), replace=False)) for p, r in x_max.items()}


def prune_nodes(model, params: dict, nodes: dict):
    """(P4): (smaller model, its params) without the FFN nodes ``nodes`` ({prefix: indices in the
    FFN's current numbering}); forward-equal to ``model`` with those nodes' W_1 columns and b_1
    entries set to 0. The config's ``pruned_ffn`` keeps the original indices."""
    config, params = model.config, dict(params)
    pruned = dict(config.pruned_ffn)
    known = config.ffn_prefixes()
    for p, remove in nodes.items():
        if p not in known:
            raise ValueError(f"{p!r} is not an FFN of this model: {known}")
        width = params[p + ".b_1"].shape[0]
        remove = np.asarray(remove)
        if remove.size == 0:
            continue
        if (remove.dtype.kind not in "iu" or remove.ndim != 1 or len(np.unique(remove)) != remove.size
                or remove.min() < 0 or remove.max() >= width):
            raise ValueError(f"nodes[{p!r}] must be distinct indices in [0, {width}), got {remove!r}")
        if remove.size == width:
            raise ValueError(f"nodes[{p!r}] would remove all {width} nodes of {p}; drop the layer instead")
        keep = np.setdiff1d(np.arange(width), remove)
        # Eq. (P4)
        params[p + ".W_1"] = np.ascontiguousarray(params[p + ".W_1"][:, keep])
        params[p + ".b_1"] = params[p + ".b_1"][keep].copy()
        params[p + ".W_2"] = np.ascontiguousarray(params[p + ".W_2"][keep])
        originals = np.setdiff1d(np.arange(config.F), config.pruned_ffn.get(p, ()))
        pruned[p] = sorted(set(config.pruned_ffn.get(p, ())) | {int(i) for i in originals[remove]})
    return type(model)(replace(config, pruned_ffn=pruned)), params


def kept_fraction(config) -> float:
    """The fraction of all FFN nodes the config keeps."""
    prefixes = config.ffn_prefixes()
    return 1.0 - sum(len(config.pruned_ffn.get(p, ())) for p in prefixes) / (config.F * len(prefixes))
