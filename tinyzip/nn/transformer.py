"""The encoder-decoder Transformer and a BERT-style encoder classifier, forward and backward by hand.

Vaswani et al. (2017), "Attention Is All You Need", NeurIPS, arXiv:1706.03762 (Sec. 3);
Pre-LN from Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture", ICML,
arXiv:2002.04745; the classifier follows Devlin et al. (2019), "BERT", NAACL, arXiv:1810.04805.

Per sub-layer (attention or FFN), with Dropout only when an ``rng`` is given:

    Post-LN (paper, default):  x <- LN(x + Dropout(Sublayer(x)))
    Pre-LN (Xiong et al.):     x <- x + Dropout(Sublayer(LN(x))),  and a final LN after the stack
    FFN(x) = act(x @ W_1 + b_1) @ W_2 + b_2                     Sec. 3.3, Eq. (2); act = ReLU or GELU
    PE(pos, 2i) = sin(pos / 10000^(2i/D)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/D))      Sec. 3.5
    x_0 = Dropout(E[ids] * sqrt(D) + PE)                                                  Sec. 3.4
    logits = x_L @ W_out + b_out, with W_out = E.T when embeddings are shared (Sec. 3.4)

Parameters are a flat dict (``enc.0.attn.W_q``...; see ``Seq2Seq.init_params``); gradients come
back in a dict with the same keys. ``matmuls[name](x2d)`` replaces ``x @ W`` for that weight
(inference only); ``act_hooks[point] = (fwd, bwd)`` wraps the input of a matmul
(``"<weight>:in"``), the attention probabilities (``"<attn>.probs"``) and the FFN activation
(``"<ffn>.act"``). ``head_mask`` maps an attention prefix (``"dec.0.cross_attn"``) to xi: (H,).

``forward(..., return_states=True)`` keeps ``cache.states``, a dict of lists, one entry per layer:
``enc.hidden`` [x_0 .. x_L] (x_L before the pre-LN final LN), ``enc.scores``/``enc.probs``
(B, H, S, S); ``dec.hidden``, ``dec.self_scores``/``dec.self_probs`` (B, H, T, T),
``dec.cross_scores``/``dec.cross_probs`` (B, H, T, S). ``backward(dlogits, cache, dstates)``
accepts gradients for any of them (same keys, lists with arrays or None).
"""
import math
from dataclasses import asdict, dataclass
from functools import partial
from typing import NamedTuple

import numpy as np

from tinyzip.nn import layers as L
from tinyzip.nn.attention import WEIGHTS, mha_backward, mha_forward, split_heads
from tinyzip.nn.losses import PAD, cross_entropy_backward, cross_entropy_forward


def sinusoidal_positions(T, D, offset=0, dtype=np.float32):
    """PE: (T, D) for positions offset .. offset + T - 1 (Vaswani et al. Sec. 3.5)."""
    pos = np.arange(offset, offset + T, dtype=np.float64)[:, None]  # (T, 1)
    freq = 10000.0 ** (-np.arange(0, D, 2, dtype=np.float64) / D)  # (D/2,)
    pe = np.zeros((T, D))
    pe[:, 0::2] = np.sin(pos * freq)  # (T, D/2)
    pe[:, 1::2] = np.cos(pos * freq)
    return pe.astype(dtype)


_GELU = {"gelu": "none", "gelu_tanh": "tanh"}


def _bias_name(name):
    return "out.b" if name == "emb" else name.rsplit(".", 1)[0] + ".b" + name.rsplit(".W", 1)[1]


class _Ops:
    """The layer ops of one model call: applies matmul overrides, hooks, dropout and head masks.

    Forward methods return ``(out, cache)``; backward methods accumulate into ``self.grads``.
    """

    def __init__(self, params, *, n_heads, pre_ln, activation, rng=None, p_drop=0.0,
                 matmuls=None, act_hooks=None, head_mask=None, keep_states=False):
        self.params, self.n_heads, self.pre_ln, self.activation = params, n_heads, pre_ln, activation
        self.rng, self.p_drop = rng, p_drop
        self.matmuls, self.hooks, self.head_mask = matmuls or {}, act_hooks or {}, head_mask or {}
        self.states = {} if keep_states else None
        self.grads = {}

    def keep(self, key, value):
        if self.states is not None:
            self.states.setdefault(key, []).append(value)

    def acc(self, name, g):
        if name in self.grads:
            self.grads[name] += g
        else:
            self.grads[name] = g  # every g here is a fresh array (or a view of one)

    def linear(self, name, x, W=None, b=None):
        if W is None:
            W = self.params["emb"].T if name == "emb" else self.params[name]
        b = self.params[_bias_name(name)] if b is None else b
        hook = self.hooks.get(name + ":in")
        hcache = None
        if hook is not None:
            x, hcache = hook[0](x)
        if name in self.matmuls:
            y = self.matmuls[name](x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
            return y + b, None
        y, lcache = L.linear_forward(x, W, b)
        return y, (lcache, hook, hcache)

    def linear_bwd(self, name, dy, cache):
        if cache is None:
            raise ValueError(f"no backward through matmuls[{name!r}] (inference only)")
        lcache, hook, hcache = cache
        dx, dW, db = L.linear_backward(dy, lcache)
        self.acc(name, np.ascontiguousarray(dW.T) if name == "emb" else dW)  # E is W_out.T
        self.acc(_bias_name(name), db)
        return dx if hook is None else hook[1](dx, hcache)

    def dropout(self, x):
        if self.rng is None or self.p_drop == 0:
            return x, None
        return L.dropout_forward(x, self.p_drop, self.rng)

    def layer_norm(self, prefix, x):
        return L.layer_norm_forward(x, self.params[prefix + ".gamma"], self.params[prefix + ".beta"])

    def layer_norm_bwd(self, prefix, dout, cache):
        dx, dgamma, dbeta = L.layer_norm_backward(dout, cache)
        self.acc(prefix + ".gamma", dgamma)
        self.acc(prefix + ".beta", dbeta)
        return dx

    def ffn(self, prefix, x):
        # Eq. (2): FFN(x) = act(x @ W_1 + b_1) @ W_2 + b_2
        h, c1 = self.linear(prefix + ".W_1", x)  # (B, T, F)
        if self.activation == "relu":
            a, ca = L.relu_forward(h)
        else:
            a, ca = L.gelu_forward(h, approximate=_GELU[self.activation])
        hook = self.hooks.get(prefix + ".act")
        hcache = None
        if hook is not None:
            a, hcache = hook[0](a)
        y, c2 = self.linear(prefix + ".W_2", a)  # (B, T, D)
        return y, (prefix, c1, ca, hook, hcache, c2)

    def ffn_bwd(self, dy, cache):
        prefix, c1, ca, hook, hcache, c2 = cache
        da = self.linear_bwd(prefix + ".W_2", dy, c2)
        if hook is not None:
            da = hook[1](da, hcache)
        dh = L.relu_backward(da, ca) if self.activation == "relu" else L.gelu_backward(da, ca)
        return self.linear_bwd(prefix + ".W_1", dh, c1)

    def attention(self, prefix, x_q, x_kv, key_pad, causal, kind, past_kv=None, static_kv=None):
        pair = (lambda n, x, W, b: self.linear(f"{prefix}.{n}", x, W, b),
                lambda n, dy, c: (self.linear_bwd(f"{prefix}.{n}", dy, c), None, None))
        out, cache = mha_forward(
            x_q, x_kv, *(self.params[f"{prefix}.{n}"] for n in WEIGHTS),
            n_heads=self.n_heads, key_pad=key_pad, causal=causal,
            head_mask=self.head_mask.get(prefix), past_kv=past_kv, static_kv=static_kv,
            return_scores=self.states is not None, linear=pair,
            probs_hook=self.hooks.get(prefix + ".probs"), dropout_p=self.p_drop, rng=self.rng)
        self.keep(kind + "scores", cache.scores)
        self.keep(kind + "probs", cache.probs)
        return out, (prefix, cache, pair)

    def attention_bwd(self, dout, cache, dprobs=None, dscores=None):
        """Returns (dx_q, dx_kv)."""
        prefix, acache, pair = cache
        g = mha_backward(dout, acache, dprobs=dprobs, dscores=dscores, linear=pair)
        if g[-1] is not None:
            self.grads[prefix + ".head_mask"] = g[-1]
        return g[0], g[1]

    def sublayer(self, ln, x, fn):
        """One residual sub-layer, post-LN or pre-LN, around ``fn(x) -> (y, cache)``."""
        if self.pre_ln:
            n, lc = self.layer_norm(ln, x)
            y, fc = fn(n)
            y, dc = self.dropout(y)
            return x + y, (ln, lc, fc, dc)
        y, fc = fn(x)
        y, dc = self.dropout(y)
        y += x
        out, lc = self.layer_norm(ln, y)
        return out, (ln, lc, fc, dc)

    def sublayer_bwd(self, dout, cache, fn_bwd):
        """``fn_bwd(dy, fn_cache) -> dx``; returns the gradient w.r.t. the sub-layer input."""
        ln, lc, fc, dc = cache
        if self.pre_ln:
            dy = dout if dc is None else L.dropout_backward(dout, dc)
            dx = self.layer_norm_bwd(ln, fn_bwd(dy, fc), lc)
            dx += dout
            return dx
        dh = self.layer_norm_bwd(ln, dout, lc)
        dy = dh if dc is None else L.dropout_backward(dh, dc)
        dx = fn_bwd(dy, fc)
        dx += dh
        return dx


def _get(dstates, key, i):
    """The upstream gradient ``dstates[key][i]``, or None."""
    return dstates.get(key, [None] * (i + 1))[i] if dstates else None


def _add(dx, key, i, dstates):
    extra = _get(dstates, key, i)
    return dx if extra is None else dx + extra


def _check_ids(name, ids, vocab, max_len):
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2 or ids.shape[1] > max_len:
        raise ValueError(f"{name} must be (B, length <= max_len={max_len}), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"{name} ids must lie in [0, {vocab}), got [{ids.min()}, {ids.max()}]")
    return ids


def _encoder_layer(ops, p, x, key_pad):
    x, c1 = ops.sublayer(f"{p}.ln1", x,
                         lambda n: ops.attention(f"{p}.attn", n, n, key_pad, False, "enc."))
    x, c2 = ops.sublayer(f"{p}.ln2", x, lambda n: ops.ffn(f"{p}.ffn", n))
    return x, (c1, c2)


def _self_attention_bwd(ops, dprobs, dscores):
    def fn_bwd(dy, cache):
        dx_q, dx_kv = ops.attention_bwd(dy, cache, dprobs, dscores)
        dx_q += dx_kv
        return dx_q
    return fn_bwd


def _encoder_stack(ops, x, key_pad, n_layers):
    """Layers 0 .. n_layers - 1 (and the pre-LN final LN) on x_0: (B, S, D)."""
    ops.keep("enc.hidden", x)
    caches = []
    for i in range(n_layers):
        x, c = _encoder_layer(ops, f"enc.{i}", x, key_pad)
        caches.append(c)
        ops.keep("enc.hidden", x)
    fc = None
    if ops.pre_ln:
        x, fc = ops.layer_norm("enc.ln_f", x)
    return x, (caches, fc)


def _encoder_stack_bwd(ops, dx, cache, dstates):
    """Gradient w.r.t. x_0, accumulating parameter gradients."""
    caches, fc = cache
    if fc is not None:
        dx = ops.layer_norm_bwd("enc.ln_f", dx, fc)
    dx = _add(dx, "enc.hidden", len(caches), dstates)
    for i in reversed(range(len(caches))):
        c1, c2 = caches[i]
        dx = ops.sublayer_bwd(dx, c2, ops.ffn_bwd)
        dx = ops.sublayer_bwd(dx, c1, _self_attention_bwd(
            ops, _get(dstates, "enc.probs", i), _get(dstates, "enc.scores", i)))
        dx = _add(dx, "enc.hidden", i, dstates)
    return dx


def _decoder_layer(ops, p, x, enc_out, src_pad, self_kv=None, cross_kv=None):
    x, c1 = ops.sublayer(f"{p}.ln1", x, lambda n: ops.attention(
        f"{p}.self_attn", n, n, None, True, "dec.self_", past_kv=self_kv))
    x, c2 = ops.sublayer(f"{p}.ln2", x, lambda n: ops.attention(
        f"{p}.cross_attn", n, enc_out, src_pad, False, "dec.cross_", static_kv=cross_kv))
    x, c3 = ops.sublayer(f"{p}.ln3", x, lambda n: ops.ffn(f"{p}.ffn", n))
    return x, (c1, c2, c3)


class EncoderState(NamedTuple):
    out: np.ndarray  # (B, S, D) encoder output
    src_pad: np.ndarray  # (B, S) bool, True at PAD
    cross_kv: list  # per decoder layer: (K, V) of cross-attention, each (B, H, S, Dh)


class DecoderState(NamedTuple):
    pos: int  # position of the next token
    self_kv: list  # per decoder layer: (K, V) of self-attention so far, each (B, H, pos, Dh)


class Seq2SeqCache(NamedTuple):
    ops: _Ops  # the call's options; backward accumulates into ops.grads
    src_emb: tuple
    enc: tuple
    tgt_emb: tuple
    dec: list
    dec_ln_f: tuple | None
    out: tuple
    states: dict | None  # see the module docstring


@dataclass(frozen=True)
class Seq2SeqConfig:
    src_vocab: int
    tgt_vocab: int
    D: int = 256
    H: int = 4
    F: int = 1024
    enc_layers: int = 3
    dec_layers: int = 3
    max_len: int = 256
    dropout: float = 0.1
    label_smoothing: float = 0.1
    pre_ln: bool = False
    share_embeddings: bool = True  # src/tgt embeddings and the output projection are one matrix

    def __post_init__(self):
        if self.D % self.H or self.D % 2:
            raise ValueError(f"D={self.D} must be even and divisible by H={self.H}")
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ValueError(f"share_embeddings needs src_vocab == tgt_vocab, got "
                             f"{self.src_vocab} and {self.tgt_vocab}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


def _xavier(rng, n_in, n_out):
    bound = math.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-bound, bound, size=(n_in, n_out)).astype(np.float32)


def _block_params(rng, p, D, F, attns, lns, init):
    out = {}
    for a in attns:
        for n in ("q", "k", "v", "o"):
            out[f"{p}.{a}.W_{n}"], out[f"{p}.{a}.b_{n}"] = init(D, D), np.zeros(D, np.float32)
    out[f"{p}.ffn.W_1"], out[f"{p}.ffn.b_1"] = init(D, F), np.zeros(F, np.float32)
    out[f"{p}.ffn.W_2"], out[f"{p}.ffn.b_2"] = init(F, D), np.zeros(D, np.float32)
    for ln in lns:
        out[f"{p}.{ln}.gamma"], out[f"{p}.{ln}.beta"] = np.ones(D, np.float32), np.zeros(D, np.float32)
    return out


class Seq2Seq:
    """Encoder-decoder Transformer (Vaswani et al. 2017). Holds the config only."""

    def __init__(self, config):
        self.config = config
        shared = config.share_embeddings
        self.src_emb, self.tgt_emb = ("emb", "emb") if shared else ("src_emb", "tgt_emb")
        self.out_name = "emb" if shared else "out.W"

    def attention_prefixes(self):
        """Every attention block's prefix, the keys ``head_mask`` understands."""
        c = self.config
        return ([f"enc.{i}.attn" for i in range(c.enc_layers)]
                + [f"dec.{i}.{a}" for i in range(c.dec_layers) for a in ("self_attn", "cross_attn")])

    def init_params(self, rng):
        """Xavier-uniform weights, N(0, D^-1/2) embeddings (PAD row 0), zero biases, LN = identity."""
        c = self.config
        params, init = {}, partial(_xavier, rng)

        def emb(V):
            E = rng.normal(0.0, c.D ** -0.5, size=(V, c.D)).astype(np.float32)
            E[PAD] = 0.0
            return E
        if c.share_embeddings:
            params["emb"] = emb(c.src_vocab)
        else:
            params["src_emb"], params["tgt_emb"] = emb(c.src_vocab), emb(c.tgt_vocab)
            params["out.W"] = init(c.D, c.tgt_vocab)
        params["out.b"] = np.zeros(c.tgt_vocab, np.float32)
        for i in range(c.enc_layers):
            params.update(_block_params(rng, f"enc.{i}", c.D, c.F, ["attn"], ["ln1", "ln2"], init))
        for i in range(c.dec_layers):
            params.update(_block_params(rng, f"dec.{i}", c.D, c.F, ["self_attn", "cross_attn"],
                                        ["ln1", "ln2", "ln3"], init))
        if c.pre_ln:
            for p in ("enc.ln_f", "dec.ln_f"):
                params[p + ".gamma"], params[p + ".beta"] = np.ones(c.D, np.float32), np.zeros(c.D, np.float32)
        return params

    def _ops(self, params, rng=None, matmuls=None, act_hooks=None, head_mask=None, states=False):
        c = self.config
        return _Ops(params, n_heads=c.H, pre_ln=c.pre_ln, activation="relu", rng=rng,
                    p_drop=c.dropout, matmuls=matmuls, act_hooks=act_hooks, head_mask=head_mask,
                    keep_states=states)

    def _embed(self, ops, name, ids, offset=0):
        E = ops.params[name]
        # Sec. 3.4 / 3.5: x_0 = Dropout(E[ids] * sqrt(D) + PE)
        e, ec = L.embedding_forward(ids, E)  # (B, T, D)
        e *= math.sqrt(self.config.D)
        e += sinusoidal_positions(ids.shape[1], self.config.D, offset, E.dtype)
        x, dc = ops.dropout(e)
        return x, (name, ec, dc)

    def _embed_bwd(self, ops, dx, cache):
        name, ec, dc = cache
        if dc is not None:
            dx = L.dropout_backward(dx, dc)
        ops.acc(name, L.embedding_backward(dx * math.sqrt(self.config.D), ec))

    def _output(self, ops, x):
        fc = None
        if self.config.pre_ln:
            x, fc = ops.layer_norm("dec.ln_f", x)
        logits, oc = ops.linear(self.out_name, x)  # (B, T, V)
        return logits, fc, oc

    def forward(self, params, src, tgt_in, *, rng=None, head_mask=None, return_states=False,
                matmuls=None, act_hooks=None):
        """logits: (B, T, V) and the cache for ``backward``. Dropout only when ``rng`` is given."""
        c = self.config
        src = _check_ids("src", src, c.src_vocab, c.max_len)
        tgt_in = _check_ids("tgt_in", tgt_in, c.tgt_vocab, c.max_len)
        if src.shape[0] != tgt_in.shape[0]:
            raise ValueError(f"src {src.shape} and tgt_in {tgt_in.shape} have different batch sizes")
        ops = self._ops(params, rng, matmuls, act_hooks, head_mask, return_states)
        src_pad = src == PAD  # (B, S)
        x, src_c = self._embed(ops, self.src_emb, src)
        enc_out, enc_c = _encoder_stack(ops, x, src_pad, c.enc_layers)
        x, tgt_c = self._embed(ops, self.tgt_emb, tgt_in)
        ops.keep("dec.hidden", x)
        dec_c = []
        for i in range(c.dec_layers):
            x, lc = _decoder_layer(ops, f"dec.{i}", x, enc_out, src_pad)
            dec_c.append(lc)
            ops.keep("dec.hidden", x)
        logits, fc, oc = self._output(ops, x)
        return logits, Seq2SeqCache(ops, src_c, enc_c, tgt_c, dec_c, fc, oc, ops.states)

    def backward(self, dlogits, cache, dstates=None):
        """Gradients for every parameter (and ``<attn>.head_mask`` when a head mask was given).

        ``dstates``: optional upstream gradients for ``cache.states`` (same keys, lists of arrays
        or None), e.g. from a distillation loss on hidden states or attention maps.
        """
        ops = cache.ops
        ops.grads = {}
        dx = ops.linear_bwd(self.out_name, dlogits, cache.out)
        if cache.dec_ln_f is not None:
            dx = ops.layer_norm_bwd("dec.ln_f", dx, cache.dec_ln_f)
        n = len(cache.dec)
        dx = _add(dx, "dec.hidden", n, dstates)
        d_enc = None
        for i in reversed(range(n)):
            c1, c2, c3 = cache.dec[i]
            dx = ops.sublayer_bwd(dx, c3, ops.ffn_bwd)

            def cross_bwd(dy, fc, i=i):
                nonlocal d_enc
                dx_q, dx_kv = ops.attention_bwd(dy, fc, _get(dstates, "dec.cross_probs", i),
                                                _get(dstates, "dec.cross_scores", i))
                d_enc = dx_kv if d_enc is None else d_enc + dx_kv
                return dx_q
            dx = ops.sublayer_bwd(dx, c2, cross_bwd)
            dx = ops.sublayer_bwd(dx, c1, _self_attention_bwd(
                ops, _get(dstates, "dec.self_probs", i), _get(dstates, "dec.self_scores", i)))
            dx = _add(dx, "dec.hidden", i, dstates)
        self._embed_bwd(ops, dx, cache.tgt_emb)
        if d_enc is None:  # no decoder layers
            ids = cache.src_emb[1][0]
            d_enc = np.zeros((*ids.shape, self.config.D), dlogits.dtype)
        self._embed_bwd(ops, _encoder_stack_bwd(ops, d_enc, cache.enc, dstates), cache.src_emb)
        return ops.grads

    def loss_and_grads(self, params, src, tgt_in, tgt_out, *, rng=None, act_hooks=None,
                       head_mask=None):
        """Mean label-smoothed cross-entropy over non-PAD targets, its gradients, and stats."""
        tgt_out = np.asarray(tgt_out)
        if tgt_out.shape != np.shape(tgt_in):
            raise ValueError(f"tgt_out {tgt_out.shape} must have the shape of tgt_in {np.shape(tgt_in)}")
        logits, cache = self.forward(params, src, tgt_in, rng=rng, head_mask=head_mask,
                                     act_hooks=act_hooks)
        loss, lc = cross_entropy_forward(logits, tgt_out, self.config.label_smoothing, PAD,
                                         overwrite_logits=True)
        grads = self.backward(cross_entropy_backward(1.0, lc), cache)
        return loss, grads, {"tokens": lc.tokens, "nll": lc.nll}

    def encode(self, params, src, matmuls=None, act_hooks=None):
        """Encoder output plus every decoder layer's cross-attention K, V (computed once)."""
        c = self.config
        src = _check_ids("src", src, c.src_vocab, c.max_len)
        ops = self._ops(params, matmuls=matmuls, act_hooks=act_hooks)
        src_pad = src == PAD
        enc_out, _ = _encoder_stack(ops, self._embed(ops, self.src_emb, src)[0], src_pad, c.enc_layers)
        cross_kv = []
        for i in range(c.dec_layers):
            p = f"dec.{i}.cross_attn"
            k = split_heads(ops.linear(p + ".W_k", enc_out)[0], c.H)  # (B, H, S, Dh)
            v = split_heads(ops.linear(p + ".W_v", enc_out)[0], c.H)
            cross_kv.append((k, v))
        return EncoderState(enc_out, src_pad, cross_kv)

    def decode_step(self, params, enc_state, prev_tokens, dec_state=None, matmuls=None,
                    act_hooks=None):
        """One decoder step with cached K/V: logprobs (B, V) of the next token, new state."""
        c = self.config
        prev = _check_ids("prev_tokens", np.asarray(prev_tokens).reshape(-1, 1), c.tgt_vocab, 1)
        pos = 0 if dec_state is None else dec_state.pos
        if pos >= c.max_len:
            raise ValueError(f"decode_step at position {pos} exceeds max_len={c.max_len}")
        ops = self._ops(params, matmuls=matmuls, act_hooks=act_hooks)
        x, _ = self._embed(ops, self.tgt_emb, prev, offset=pos)  # (B, 1, D)
        self_kv = []
        for i in range(c.dec_layers):
            past = None if dec_state is None else dec_state.self_kv[i]
            x, (c1, _, _) = _decoder_layer(ops, f"dec.{i}", x, None, enc_state.src_pad,
                                           self_kv=past, cross_kv=enc_state.cross_kv[i])
            acache = c1[2][1]  # sub-layer cache (ln, ln cache, (prefix, attention cache, _), _)
            self_kv.append((acache.k, acache.v))
        logits, _, _ = self._output(ops, x)
        logp, _ = L.log_softmax_forward(logits[:, 0])  # (B, V)
        return logp, DecoderState(pos + 1, self_kv)

    def reorder_state(self, state, index):
        """Rows ``index`` of an EncoderState or DecoderState (beam search reorders hypotheses)."""
        if isinstance(state, EncoderState):
            return EncoderState(state.out[index], state.src_pad[index],
                                [(k[index], v[index]) for k, v in state.cross_kv])
        return DecoderState(state.pos, [(k[index], v[index]) for k, v in state.self_kv])


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

    def __post_init__(self):
        if self.D % self.H:
            raise ValueError(f"D={self.D} must be divisible by H={self.H}")
        if self.activation not in ("relu", "gelu", "gelu_tanh"):
            raise ValueError(f'activation must be "relu", "gelu" or "gelu_tanh", got {self.activation!r}')

    def to_dict(self):
        return asdict(self)

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
        return [f"enc.{i}.attn" for i in range(self.config.layers)]

    def init_params(self, rng):
        """N(0, 0.02) weights and embeddings (BERT's initializer_range), zero biases, LN = identity."""
        c = self.config

        def init(*shape):
            return rng.normal(0.0, 0.02, size=shape).astype(np.float32)
        params = {"emb": init(c.vocab, c.D), "pos_emb": init(c.max_len, c.D),
                  "type_emb": init(c.type_vocab, c.D),
                  "emb_ln.gamma": np.ones(c.D, np.float32), "emb_ln.beta": np.zeros(c.D, np.float32)}
        for i in range(c.layers):
            params.update(_block_params(rng, f"enc.{i}", c.D, c.F, ["attn"], ["ln1", "ln2"], init))
        if c.pre_ln:
            params["enc.ln_f.gamma"], params["enc.ln_f.beta"] = np.ones(c.D, np.float32), np.zeros(c.D, np.float32)
        params["pool.W"], params["pool.b"] = init(c.D, c.D), np.zeros(c.D, np.float32)
        params["cls.W"], params["cls.b"] = init(c.D, c.n_classes), np.zeros(c.n_classes, np.float32)
        return params

    def forward(self, params, ids, type_ids=None, *, rng=None, head_mask=None,
                return_states=False, matmuls=None, act_hooks=None):
        """logits: (B, n_classes) and the cache for ``backward``."""
        c = self.config
        ids = _check_ids("ids", ids, c.vocab, c.max_len)
        type_ids = np.zeros_like(ids) if type_ids is None else _check_ids(
            "type_ids", type_ids, c.type_vocab, c.max_len)
        if type_ids.shape != ids.shape:
            raise ValueError(f"type_ids {type_ids.shape} must have the shape of ids {ids.shape}")
        ops = _Ops(params, n_heads=c.H, pre_ln=c.pre_ln, activation=c.activation, rng=rng,
                   p_drop=c.dropout, matmuls=matmuls, act_hooks=act_hooks, head_mask=head_mask,
                   keep_states=return_states)
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
                       head_mask=None):
        """Mean cross-entropy over the batch; stats = {"tokens": B, "nll", "correct"}."""
        logits, cache = self.forward(params, ids, type_ids, rng=rng, head_mask=head_mask,
                                     act_hooks=act_hooks)
        correct = int((logits.argmax(-1) == np.asarray(labels)).sum())
        loss, lc = cross_entropy_forward(logits, labels, 0.0, ignore_index=-1, overwrite_logits=True)
        grads = self.backward(cross_entropy_backward(1.0, lc), cache)
        return loss, grads, {"tokens": lc.tokens, "nll": lc.nll, "correct": correct}
