"""LayerDrop: train with whole layers dropped at random, then prune to a shallower model.

Angela Fan, Edouard Grave, Armand Joulin (2020), "Reducing Transformer Depth on Demand with
Structured Dropout", ICLR 2020, arXiv:1909.11556. The training rule and the pruning by
re-numbering follow fairseq (``fairseq/modules/layer_drop.py``, ``checkpoint_utils.
prune_state_dict``, ``examples/layerdrop``). The paper's equation numbers are not checked here, so
the lines carry our labels (D1)-(D4).

Notation: a stack (encoder or decoder) has L layers, 0-based index i (``"enc.i"``, ``"dec.i"``),
depth d = i + 1; p is the training drop rate (``p_enc``, ``p_dec``: fairseq's
``--encoder-layerdrop`` and ``--decoder-layerdrop``), r the pruning rate at inference.

    training: u_i ~ U(0, 1) drawn afresh at every forward; layer i runs iff u_i > p,
              else it is the identity (the residual stream passes through); no 1 / (1 - p)  (D1)
    evaluation: every layer runs                                                          (D2)
    Every Other at rate r: drop the layers of depth d = 0 (mod floor(1 / r))              (D3)
    pruning: the kept layers, in order, renumbered 0 .. L' - 1                             (D4)

(D1) A skipped layer is skipped whole, forward and backward (the models' ``skip_layers``): its
parameters get gradient 0 that step. One deviation from fairseq: our optimizers update every
parameter, so Adam still moves a skipped layer by its decaying first moment, where PyTorch leaves
a parameter without a gradient alone. (D3) with 1-based depth: r = 1/2 drops depths 2, 4, ...
(indices 1, 3, ...), keeping the first layer, as fairseq's example keeps layers 0, 2, 4, ...;
r = 1/4 drops every fourth layer; r < 1/L drops none. (D4) makes the pruned model a smaller model,
not a masked one: its config has fewer layers (``pruned_heads`` and ``pruned_ffn`` move with their
layers), and its forward equals the full model's run with the dropped layers skipped. The paper's
finding that LayerDrop only during fine-tuning does not make a model robust to pruning (fairseq's
README) is what the ``--full`` rows of the shipped model measure; the quick task trains with it
from scratch.
"""
import math
from dataclasses import replace

import numpy as np


def layer_names(config) -> list:
    """``["enc.0", ..., "dec.0", ...]``: the layers of a Seq2Seq config, in order."""
    return [f"enc.{i}" for i in range(config.enc_layers)] + [f"dec.{i}" for i in range(config.dec_layers)]


def _check_rate(name, p):
    if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise ValueError(f"{name} must be a rate in [0, 1], got {p!r}")
    return float(p)


def draw_skips(config, p_enc, p_dec, rng: np.random.Generator) -> frozenset:
    """(D1): the layers to skip in one training forward; one u ~ U(0, 1) per layer, in order."""
    p_enc, p_dec = _check_rate("p_enc", p_enc), _check_rate("p_dec", p_dec)
    u = rng.random(config.enc_layers + config.dec_layers)
    rates = [p_enc] * config.enc_layers + [p_dec] * config.dec_layers
    # Eq. (D1): layer i is kept iff u_i > p
    return frozenset(name for name, u_i, p in zip(layer_names(config), u, rates) if not u_i > p)


class LayerDrop:
    """A Seq2Seq's loss for ``train.train`` with LayerDrop (D1): with an ``rng`` (training), each
    call skips the layers ``draw_skips`` picks and returns gradient 0 for their parameters;
    without one (evaluation, (D2)) every layer runs. ``last_skipped`` is the last call's set."""

    def __init__(self, model, p_enc=0.2, p_dec=0.2):
        self.model = model
        self.config = model.config
        self.p_enc, self.p_dec = _check_rate("p_enc", p_enc), _check_rate("p_dec", p_dec)
        self.last_skipped = frozenset()

    def loss_and_grads(self, params, *batch, rng=None, act_hooks=None, **kwargs):
        self.last_skipped = frozenset() if rng is None else draw_skips(self.config, self.p_enc, self.p_dec, rng)
        loss, grads, stats = self.model.loss_and_grads(params, *batch, rng=rng, act_hooks=act_hooks,
                                                       skip_layers=self.last_skipped, **kwargs)
        for name, W in params.items():
            if name not in grads:                      # a skipped layer's parameters
                grads[name] = np.zeros_like(W)
        return loss, grads, stats


def every_other(n_layers: int, rate: float) -> list:
    """(D3): the indices kept when pruning a stack of ``n_layers`` at ``rate``."""
    rate = _check_rate("rate", rate)
    if rate == 0.0:
        return list(range(n_layers))
    period = math.floor(1.0 / rate)
    # Eq. (D3): depth d = i + 1 is dropped when d = 0 (mod floor(1 / r))
    return [i for i in range(n_layers) if (i + 1) % period != 0]


def _renumber(name: str, new_index: dict):
    """``enc.3.ffn.W_1`` -> ``enc.1.ffn.W_1`` for new_index {"enc.3": "enc.1"}; None if the layer
    is dropped; unchanged for names outside the layers (embeddings, final LayerNorms)."""
    parts = name.split(".")
    if len(parts) < 3 or parts[0] not in ("enc", "dec") or not parts[1].isdigit():
        return name
    layer = new_index.get(f"{parts[0]}.{parts[1]}")
    return None if layer is None else ".".join([layer] + parts[2:])


def prune_layers(model, params: dict, keep_enc, keep_dec):
    """(D4): (smaller model, its params) with only the layers ``keep_enc`` / ``keep_dec``
    (indices), renumbered in order. Forward-equal to ``model`` run with the others skipped."""
    c = model.config
    for name, keep, n in (("keep_enc", keep_enc, c.enc_layers), ("keep_dec", keep_dec, c.dec_layers)):
        if len(set(keep)) != len(keep) or not all(isinstance(i, (int, np.integer)) and 0 <= i < n for i in keep):
            raise ValueError(f"{name} must be distinct layer indices in [0, {n}), got {list(keep)!r}")
    new_index = {f"enc.{old}": f"enc.{new}" for new, old in enumerate(sorted(keep_enc))}
    new_index.update({f"dec.{old}": f"dec.{new}" for new, old in enumerate(sorted(keep_dec))})
    pruned = {}
    for name, W in params.items():
        new_name = _renumber(name, new_index)
        if new_name is not None:
            pruned[new_name] = W
    moved = {"pruned_heads": {}, "pruned_ffn": {}}
    for field, renumbered in moved.items():
        for prefix, removed in getattr(c, field).items():
            new_prefix = _renumber(prefix + ".W", new_index)
            if new_prefix is not None:
                renumbered[new_prefix[:-2]] = removed
    config = replace(c, enc_layers=len(keep_enc), dec_layers=len(keep_dec), **moved)
    return type(model)(config), pruned


def prune_every_other(model, params: dict, rate_enc: float, rate_dec: float):
    """(D3) + (D4): the model with every stack pruned Every Other at its rate."""
    c = model.config
    return prune_layers(model, params, every_other(c.enc_layers, rate_enc), every_other(c.dec_layers, rate_dec))
