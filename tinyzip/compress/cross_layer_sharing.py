"""ALBERT's cross-layer parameter sharing: the layers of a stack use a few parameter sets.

Lan, Chen, Goodman, Gimpel, Sharma, Soricut (2020), "ALBERT: A Lite BERT for Self-supervised
Learning of Language Representations", ICLR, arXiv:1909.11942, Sec. 3.1 (cross-layer parameter
sharing: all parameters, FFN only or attention only). The group rule is google-research/albert's
``modeling.py`` (``group_idx = int(layer_idx / num_hidden_layers * num_hidden_groups)``); the
labels (S1)-(S4) are ours.

Notation: a stack (encoder or decoder) has L layers l = 0 .. L-1 and G groups (1 <= G <= L);
theta_l are layer l's parameters of the shared kind (``"all"``: every parameter of the layer,
LayerNorms included; ``"ffn"``: W_1, b_1, W_2, b_2; ``"attention"``: every attention block's
weights and biases).

    g(l) = floor(l G / L): contiguous groups, G = 1 shares one set, G = L shares nothing      (S1)
    theta_l = phi_{g(l)}: each group stores one set phi_g, every layer of the group uses it   (S2)
    dL/dphi_g = sum over l with g(l) = g of dL/dtheta_l   (the chain rule of tying)           (S3)
    from a trained unshared model: phi_g = the mean of its layers' theta_l, or the first's    (S4)

(S1) in integers is the code's float rule without its rounding. They differ in 18 of the 2,080
pairs (L, G) with L <= 64, each where l G / L is an integer that the float product misses from
below: at L = G = 22, int(15 / 22 * 22) = 14, so layers 14 and 15 would share though G = L.
ALBERT's own configs (G = 1) never meet the case. ALBERT trains the shared model from scratch;
(S4) is ours, for compressing a trained model (then fine-tuned); the quick task trains from
scratch too.

Training (``SharingMethod``, ``train.train``'s method protocol, like ``low_rank.FactorMethod``):
the stored parameters hold phi_g under the name of the group's first layer (``enc.0.ffn.W_1``)
and nothing for the other layers; ``forward`` gives every layer its group's arrays and
``backward`` sums their gradients (S3). Export (``pack_shared``): the owner is stored once, each
other layer's tensor as a ``"shared"`` PackedTensor naming its owner and holding no array, which
``tinyzip.compressed`` resolves at load (the same array, and the same kernel, for every layer).
"""
import numpy as np

from tinyzip.compress.base import PackedTensor

FORMAT = "shared"
KINDS = ("all", "ffn", "attention")


def group_of(layer: int, n_layers: int, n_groups: int) -> int:
    """(S1): the group of 0-based ``layer`` in a stack of ``n_layers`` with ``n_groups`` groups."""
    if not 1 <= n_groups <= n_layers or not 0 <= layer < n_layers:
        raise ValueError(f"need 0 <= layer < n_layers and 1 <= n_groups <= n_layers, got {layer}, {n_layers}, "
                         f"{n_groups}")
    # Eq. (S1)
    return layer * n_groups // n_layers


def _in_kind(rest: str, kind: str) -> bool:
    """Whether a layer's parameter (its name after ``enc.3.``) is of the shared ``kind``."""
    if kind == "all":
        return True
    if kind == "ffn":
        return rest.startswith("ffn.")
    return rest.split(".")[0] in ("attn", "self_attn", "cross_attn")


def owners(config, groups: dict, kind: str, names) -> dict:
    """{parameter name: the name it is stored under} for the layer parameters among ``names``
    shared under (S1)-(S2); ``groups`` = {"enc": G_enc, "dec": G_dec} (a stack left out is not
    shared). Parameters outside the layers, or of another kind, are absent."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    sizes = {"enc": getattr(config, "enc_layers", getattr(config, "layers", 0)),
             "dec": getattr(config, "dec_layers", 0)}
    unknown = sorted(set(groups) - {s for s, n in sizes.items() if n})
    if unknown:
        raise ValueError(f"groups names {unknown}, not a stack of this model (its stacks: {sizes})")
    first = {(s, g): min(i for i in range(sizes[s]) if group_of(i, sizes[s], G) == g)
             for s, G in groups.items() for g in range(G)}
    out = {}
    for name in names:
        stack, layer, rest = (name.split(".", 2) + ["", ""])[:3]
        if stack not in groups or not layer.isdigit() or not rest or not _in_kind(rest, kind):
            continue
        g = group_of(int(layer), sizes[stack], groups[stack])
        out[name] = f"{stack}.{first[stack, g]}.{rest}"
    return out


class SharingMethod:
    """Training with tied layers: stored params hold one set per group (S2), gradients sum (S3)."""

    name = "cross_layer_sharing"
    act_hooks: dict = {}

    def __init__(self, owner_of: dict):
        self.owner_of = {n: o for n, o in owner_of.items() if n != o}   # the tensors not stored

    def tie(self, params: dict, init: str = "mean") -> dict:
        """(S4): the stored params of an unshared model: each owner the ``"mean"`` of its group's
        tensors (or the ``"first"`` layer's), the others removed."""
        if init not in ("mean", "first"):
            raise ValueError(f"init must be 'mean' or 'first', got {init!r}")
        members = {}
        for name, owner in self.owner_of.items():
            members.setdefault(owner, [owner]).append(name)
        stored = {n: W for n, W in params.items() if n not in self.owner_of}
        for owner, group in members.items():
            shapes = {params[n].shape for n in group}
            if len(shapes) != 1:
                raise ValueError(f"cannot share {group}: their shapes differ {sorted(shapes)} (pruned differently?)")
            if init == "mean":
                # Eq. (S4)
                stored[owner] = np.mean([params[n] for n in group], axis=0).astype(params[owner].dtype)
        return stored

    def forward(self, params: dict):
        """(S2): every layer sees its group's arrays."""
        eff = dict(params)
        for name, owner in self.owner_of.items():
            # Eq. (S2)
            eff[name] = params[owner]
        return eff, None

    def backward(self, deff: dict, cache) -> dict:
        """(S3): each stored set gets the sum of its layers' gradients."""
        grads = {n: g for n, g in deff.items() if n not in self.owner_of}
        for name, owner in self.owner_of.items():
            # Eq. (S3)
            grads[owner] = grads[owner] + deff[name]
        return grads

    def after_step(self, params: dict) -> dict:
        return params


def pack_shared(owner: str, shape) -> PackedTensor:
    """A tensor stored as a reference to ``owner`` (no array of its own)."""
    return PackedTensor(FORMAT, tuple(int(s) for s in shape), {}, {"of": owner})


def parameter_count(params: dict, owner_of: dict) -> int:
    """Numbers stored once the tensors in ``owner_of`` (other than owners) are shared."""
    return int(sum(W.size for n, W in params.items() if owner_of.get(n, n) == n))
