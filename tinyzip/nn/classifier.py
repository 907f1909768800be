"""A BERT-style encoder classifier, forward and backward by hand.

Devlin et al. (2019), "BERT", NAACL, arXiv:1810.04805; its encoder layers are those of Vaswani et
al. (2017), arXiv:1706.03762, post-LN by default or pre-LN (Xiong et al. 2020, arXiv:2002.04745),
built from ``blocks.py``:

    x_0 = Dropout(LN(E[ids] + P[pos] + E_type[type_ids]))      learned positions, segment embeddings
    x_L = encoder layers (self-attention over non-PAD keys, FFN with GELU by default)
    pooled = tanh(x_L[:, 0] @ W_pool + b_pool)                 the first token's state
    logits = Dropout(pooled) @ W_cls + b_cls                   (B, n_classes)

``matmuls``, ``act_hooks``, ``head_mask`` and ``return_states``/``dstates`` (``enc.hidden``,
``enc.scores``, ``enc.probs``) work as for ``Seq2Seq`` (see ``blocks.py``).
"""
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np

from tinyzip.nn import layers as L
from tinyzip.nn.blocks import _Ops, _attention_width, _block_params, _check_ids, _check_skip_layers, \
    _encoder_stack, _encoder_stack_bwd, _ffn_width, _pruned_units, _pruning_dict
from tinyzip.nn.losses import PAD, cross_entropy_backward, cross_entropy_forward


@dataclass(frozen=True)
class ClassifierConfig:
    vocab: int
    n_classes: int
    D: int = 128
    H: int = 4
    F: int = 512
    layers: int = 2
    max_len: int = 128
    type_vocab: int = 2
    dropout: float = 0.1
    activation: str = "gelu_tanh"  # google-research/bert's form; "gelu" = exact erf; or "relu"
    pre_ln: bool = False
    pruned_heads: dict = field(default_factory=dict)  # attention prefix -> heads removed (head_pruning)
    pruned_ffn: dict = field(default_factory=dict)    # FFN prefix -> hidden nodes removed (ffn_pruning)

    def __post_init__(self):
        if self.D % self.H:
            raise ValueError(f"D={self.D} must be divisible by H={self.H}")
        if self.activation not in ("relu", "gelu", "gelu_tanh"):
            raise ValueError(f'activation must be "relu", "gelu" or "gelu_tanh", got {self.activation!r}')
        object.__setattr__(self, "pruned_heads", _pruned_units("pruned_heads", self.pruned_heads, self.H,
                                                               self.attention_prefixes()))
        object.__setattr__(self, "pruned_ffn", _pruned_units("pruned_ffn", self.pruned_ffn, self.F,
                                                             self.ffn_prefixes(), "node"))

    def attention_prefixes(self):
        return [f"enc.{i}.attn" for i in range(self.layers)]

    def ffn_prefixes(self):
        return [f"enc.{i}.ffn" for i in range(self.layers)]

    def to_dict(self):
        """JSON-ready values; ``pruned_heads``/``pruned_ffn`` only when used (as ``Seq2SeqConfig``)."""
        return _pruning_dict(asdict(self))

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


class ClassifierCache(NamedTuple):
    ops: _Ops
    emb: tuple
    enc: tuple
    pool: tuple
    states: dict | None  # "enc.hidden", "enc.scores", "enc.probs" as for Seq2Seq


class EncoderClassifier:
    """BERT-style encoder classifier (Devlin et al. 2019). Holds the config only.

    x_0 = Dropout(LN(E[ids] + P[pos] + E_type[type_ids])); post-LN (or pre-LN) encoder layers with
    GELU; pooled = tanh(x_L[:, 0] @ W_pool + b_pool); logits = Dropout(pooled) @ W_cls + b_cls.
    Keys that are PAD are masked. Params: ``emb``, ``pos_emb``, ``type_emb``, ``emb_ln.*``,
    ``enc.{i}.*`` as in Seq2Seq, ``pool.W``, ``pool.b``, ``cls.W``, ``cls.b``.
    """

    def __init__(self, config):
        self.config = config

    def attention_prefixes(self):
        return self.config.attention_prefixes()

    def init_params(self, rng):
        """N(0, 0.02) weights and embeddings (BERT's initializer_range), zero biases, LN = identity."""
        c = self.config

        def init(*shape):
            return rng.normal(0.0, 0.02, size=shape).astype(np.float32)
        params = {"emb": init(c.vocab, c.D), "pos_emb": init(c.max_len, c.D),
                  "type_emb": init(c.type_vocab, c.D),
                  "emb_ln.gamma": np.ones(c.D, np.float32), "emb_ln.beta": np.zeros(c.D, np.float32)}
        for i in range(c.layers):
            params.update(_block_params(rng, f"enc.{i}", c.D, _ffn_width(c, f"enc.{i}"), ["attn"], ["ln1", "ln2"],
                                        init, {"attn": _attention_width(c, f"enc.{i}.attn")}))
        if c.pre_ln:
            params["enc.ln_f.gamma"], params["enc.ln_f.beta"] = np.ones(c.D, np.float32), np.zeros(c.D, np.float32)
        params["pool.W"], params["pool.b"] = init(c.D, c.D), np.zeros(c.D, np.float32)
        params["cls.W"], params["cls.b"] = init(c.D, c.n_classes), np.zeros(c.n_classes, np.float32)
        return params

    def forward(self, params, ids, type_ids=None, *, rng=None, head_mask=None,
                return_states=False, matmuls=None, act_hooks=None, relu_gates=None, skip_layers=()):
        """logits: (B, n_classes) and the cache for ``backward``."""
        c = self.config
        ids = _check_ids("ids", ids, c.vocab, c.max_len)
        type_ids = np.zeros_like(ids) if type_ids is None else _check_ids(
            "type_ids", type_ids, c.type_vocab, c.max_len)
        if type_ids.shape != ids.shape:
            raise ValueError(f"type_ids {type_ids.shape} must have the shape of ids {ids.shape}")
        _check_skip_layers(skip_layers, [f"enc.{i}" for i in range(c.layers)], return_states)
        ops = _Ops(params, n_heads=c.H, pre_ln=c.pre_ln, activation=c.activation, rng=rng,
                   p_drop=c.dropout, matmuls=matmuls, act_hooks=act_hooks, head_mask=head_mask,
                   keep_states=return_states, relu_gates=relu_gates, skip_layers=skip_layers)
        e, wc = L.embedding_forward(ids, params["emb"])  # (B, T, D)
        e += params["pos_emb"][: ids.shape[1]]
        e += params["type_emb"][type_ids]
        e, lc = ops.layer_norm("emb_ln", e)
        x, dc = ops.dropout(e)
        x, enc_c = _encoder_stack(ops, x, ids == PAD, c.layers)
        h, c1 = ops.linear("pool.W", x[:, 0])  # (B, D)
        pooled = np.tanh(h)
        pd, pdc = ops.dropout(pooled)
        logits, c2 = ops.linear("cls.W", pd)  # (B, n_classes)
        return logits, ClassifierCache(ops, (ids, type_ids, wc, lc, dc), enc_c,
                                       (x.shape, c1, pooled, pdc, c2), ops.states)

    def backward(self, dlogits, cache, dstates=None):
        """Gradients for every parameter (plus ``<attn>.head_mask``), with optional ``dstates``."""
        ops = cache.ops
        ops.grads = {}
        shape, c1, pooled, pdc, c2 = cache.pool
        dp = ops.linear_bwd("cls.W", dlogits, c2)
        if pdc is not None:
            dp = L.dropout_backward(dp, pdc)
        dh = dp * (1 - pooled * pooled)  # tanh' = 1 - tanh^2
        dx = np.zeros(shape, dlogits.dtype)  # (B, T, D)
        dx[:, 0] = ops.linear_bwd("pool.W", dh, c1)
        dx = _encoder_stack_bwd(ops, dx, cache.enc, dstates)
        ids, type_ids, wc, lc, dc = cache.emb
        if dc is not None:
            dx = L.dropout_backward(dx, dc)
        de = ops.layer_norm_bwd("emb_ln", dx, lc)
        ops.acc("emb", L.embedding_backward(de, wc))
        dpos = np.zeros_like(ops.params["pos_emb"])
        dpos[: ids.shape[1]] = de.sum(0)
        ops.acc("pos_emb", dpos)
        ops.acc("type_emb", L.embedding_backward(de, (type_ids, ops.params["type_emb"].shape)))
        return ops.grads

    def loss_and_grads(self, params, ids, type_ids, labels, *, rng=None, act_hooks=None,
                       head_mask=None, relu_gates=None, skip_layers=()):
        """Mean cross-entropy over the batch; stats = {"tokens": B, "nll", "correct"}."""
        logits, cache = self.forward(params, ids, type_ids, rng=rng, head_mask=head_mask,
                                     act_hooks=act_hooks, relu_gates=relu_gates, skip_layers=skip_layers)
        correct = int((logits.argmax(-1) == np.asarray(labels)).sum())
        loss, lc = cross_entropy_forward(logits, labels, 0.0, ignore_index=-1, overwrite_logits=True)
        grads = self.backward(cross_entropy_backward(1.0, lc), cache)
        return loss, grads, {"tokens": lc.tokens, "nll": lc.nll, "correct": correct}
