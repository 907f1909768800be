"""The encoder-decoder Transformer, forward and backward by hand.

Vaswani et al. (2017), "Attention Is All You Need", NeurIPS, arXiv:1706.03762 (Sec. 3);
Pre-LN from Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture", ICML,
arXiv:2002.04745. The sub-layers, FFN (Eq. (2)), attention hooks and the encoder stack are in
``blocks.py``; the BERT-style ``EncoderClassifier`` built from the same blocks is in ``classifier.py``.

    PE(pos, 2i) = sin(pos / 10000^(2i/D)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/D))      Sec. 3.5
    x_0 = Dropout(E[ids] * sqrt(D) + PE)                                                  Sec. 3.4
    logits = x_L @ W_out + b_out, with W_out = E.T when embeddings are shared (Sec. 3.4)

Parameters are a flat dict (``enc.0.attn.W_q``...; see ``Seq2Seq.init_params``); gradients come
back in a dict with the same keys. ``matmuls[name](x2d)`` replaces ``x @ W`` for that weight
(inference only), and ``matmuls[ffn_prefix](x2d)`` (e.g. ``"enc.0.ffn"``) the whole FFN, bias and
activation included (``compress.integer_only``); ``act_hooks[point] = (fwd, bwd)`` wraps the input of a matmul
(``"<weight>:in"``), the attention's Q, K, V and probabilities (``"<attn>.q"``, ``".k"``, ``".v"``,
``".probs"``) and the FFN activation (``"<ffn>.act"``); a hook may ask for the pad mask of its
input (``takes_valid``, see ``blocks.py``): encoder rows and cross-attention K/V get the source
mask, decoder rows the target mask (``decode_step``: one row per hypothesis, masked where beam
search feeds PAD to a dead one). ``encode`` applies the cross-attention "k"/"v" hooks to the K, V
it caches and ``decode_step`` the self-attention ones to each new row, so incremental decoding
computes what ``forward`` computes under the same (frozen) hooks.
``head_mask`` maps an attention prefix (``"dec.0.cross_attn"``) to xi: (H,).

``forward(..., return_states=True)`` keeps ``cache.states``, a dict of lists, one entry per layer:
``enc.hidden`` [x_0 .. x_L] (x_L before the pre-LN final LN), ``enc.scores``/``enc.probs``
(B, H, S, S); ``dec.hidden``, ``dec.self_scores``/``dec.self_probs`` (B, H, T, T),
``dec.cross_scores``/``dec.cross_probs`` (B, H, T, S). ``backward(dlogits, cache, dstates)``
accepts gradients for any of them (same keys, lists with arrays or None).

Incremental decoding: ``encode`` computes the encoder output and every cross-attention K, V once
(``EncoderState``); ``decode_step`` appends one token's self-attention K, V (``DecoderState``);
``reorder_state`` selects rows of either for beam search.
"""
import math
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np

from tinyzip.nn import layers as L
from tinyzip.nn.attention import split_heads
from tinyzip.nn.blocks import _Ops, _add, _attention_width, _block_params, _check_ids, _check_skip_layers, \
    _encoder_stack, _encoder_stack_bwd, _ffn_width, _get, _pruned_units, _pruning_dict, _self_attention_bwd
from tinyzip.nn.losses import PAD, cross_entropy_backward, cross_entropy_forward


def sinusoidal_positions(T, D, offset=0, dtype=np.float32):
    """PE: (T, D) for positions offset .. offset + T - 1 (Vaswani et al. Sec. 3.5)."""
    pos = np.arange(offset, offset + T, dtype=np.float64)[:, None]  # (T, 1)
    freq = 10000.0 ** (-np.arange(0, D, 2, dtype=np.float64) / D)  # (D/2,)
    pe = np.zeros((T, D))
    pe[:, 0::2] = np.sin(pos * freq)  # (T, D/2)
    pe[:, 1::2] = np.cos(pos * freq)
    return pe.astype(dtype)


def _decoder_layer(ops, p, x, enc_out, src_pad, self_kv=None, cross_kv=None, tgt_valid=None):
    """``tgt_valid``: (B, T) True at real target rows, None when all are real."""
    x, c1 = ops.sublayer(f"{p}.ln1", x, lambda n: ops.attention(
        f"{p}.self_attn", n, n, None, True, "dec.self_", past_kv=self_kv,
        q_valid=tgt_valid, kv_valid=tgt_valid))
    x, c2 = ops.sublayer(f"{p}.ln2", x, lambda n: ops.attention(
        f"{p}.cross_attn", n, enc_out, src_pad, False, "dec.cross_", static_kv=cross_kv,
        q_valid=tgt_valid, kv_valid=~src_pad))
    x, c3 = ops.sublayer(f"{p}.ln3", x, lambda n: ops.ffn(f"{p}.ffn", n, tgt_valid))
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
    pruned_heads: dict = field(default_factory=dict)  # attention prefix -> heads removed (head_pruning)
    pruned_ffn: dict = field(default_factory=dict)    # FFN prefix -> hidden nodes removed (ffn_pruning)

    def __post_init__(self):
        if self.D % self.H or self.D % 2:
            raise ValueError(f"D={self.D} must be even and divisible by H={self.H}")
        object.__setattr__(self, "pruned_heads", _pruned_units("pruned_heads", self.pruned_heads, self.H,
                                                               self.attention_prefixes()))
        object.__setattr__(self, "pruned_ffn", _pruned_units("pruned_ffn", self.pruned_ffn, self.F,
                                                             self.ffn_prefixes(), "node"))
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ValueError(f"share_embeddings needs src_vocab == tgt_vocab, got "
                             f"{self.src_vocab} and {self.tgt_vocab}")

    def attention_prefixes(self):
        """Every attention block's prefix, the keys of ``head_mask`` and ``pruned_heads``."""
        return ([f"enc.{i}.attn" for i in range(self.enc_layers)]
                + [f"dec.{i}.{a}" for i in range(self.dec_layers) for a in ("self_attn", "cross_attn")])

    def ffn_prefixes(self):
        """Every FFN's prefix (``"enc.0.ffn"``), the keys of ``pruned_ffn``."""
        return [f"enc.{i}.ffn" for i in range(self.enc_layers)] + [f"dec.{i}.ffn" for i in range(self.dec_layers)]

    def to_dict(self):
        """The config as JSON-ready values; ``pruned_heads`` and ``pruned_ffn`` only when something
        was pruned, so the files of unpruned models are as before."""
        return _pruning_dict(asdict(self))

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


def _xavier(rng, n_in, n_out):
    bound = math.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-bound, bound, size=(n_in, n_out)).astype(np.float32)


class Seq2Seq:
    """Encoder-decoder Transformer (Vaswani et al. 2017). Holds the config only."""

    def __init__(self, config):
        self.config = config
        shared = config.share_embeddings
        self.src_emb, self.tgt_emb = ("emb", "emb") if shared else ("src_emb", "tgt_emb")
        self.out_name = "emb" if shared else "out.W"

    def attention_prefixes(self):
        """Every attention block's prefix, the keys ``head_mask`` understands."""
        return self.config.attention_prefixes()

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
            params.update(_block_params(rng, f"enc.{i}", c.D, _ffn_width(c, f"enc.{i}"), ["attn"], ["ln1", "ln2"],
                                        init, {"attn": _attention_width(c, f"enc.{i}.attn")}))
        for i in range(c.dec_layers):
            attns = ["self_attn", "cross_attn"]
            params.update(_block_params(rng, f"dec.{i}", c.D, _ffn_width(c, f"dec.{i}"), attns, ["ln1", "ln2", "ln3"],
                                        init, {a: _attention_width(c, f"dec.{i}.{a}") for a in attns}))
        if c.pre_ln:
            for p in ("enc.ln_f", "dec.ln_f"):
                params[p + ".gamma"], params[p + ".beta"] = np.ones(c.D, np.float32), np.zeros(c.D, np.float32)
        return params

    def _ops(self, params, rng=None, matmuls=None, act_hooks=None, head_mask=None, states=False, relu_gates=None,
             skip_layers=()):
        c = self.config
        _check_skip_layers(skip_layers, [f"enc.{i}" for i in range(c.enc_layers)]
                           + [f"dec.{i}" for i in range(c.dec_layers)], states)
        return _Ops(params, n_heads=c.H, pre_ln=c.pre_ln, activation="relu", rng=rng,
                    p_drop=c.dropout, matmuls=matmuls, act_hooks=act_hooks, head_mask=head_mask,
                    keep_states=states, relu_gates=relu_gates, skip_layers=skip_layers)

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

    def _output(self, ops, x, tgt_valid=None):
        fc = None
        if self.config.pre_ln:
            x, fc = ops.layer_norm("dec.ln_f", x)
        logits, oc = ops.linear(self.out_name, x, valid=tgt_valid)  # (B, T, V)
        return logits, fc, oc

    def forward(self, params, src, tgt_in, *, rng=None, head_mask=None, return_states=False,
                matmuls=None, act_hooks=None, relu_gates=None, skip_layers=()):
        """logits: (B, T, V) and the cache for ``backward``. Dropout only when ``rng`` is given."""
        c = self.config
        src = _check_ids("src", src, c.src_vocab, c.max_len)
        tgt_in = _check_ids("tgt_in", tgt_in, c.tgt_vocab, c.max_len)
        if src.shape[0] != tgt_in.shape[0]:
            raise ValueError(f"src {src.shape} and tgt_in {tgt_in.shape} have different batch sizes")
        ops = self._ops(params, rng, matmuls, act_hooks, head_mask, return_states, relu_gates, skip_layers)
        src_pad = src == PAD  # (B, S)
        x, src_c = self._embed(ops, self.src_emb, src)
        enc_out, enc_c = _encoder_stack(ops, x, src_pad, c.enc_layers)
        x, tgt_c = self._embed(ops, self.tgt_emb, tgt_in)
        tgt_valid = tgt_in != PAD  # (B, T)
        ops.keep("dec.hidden", x)
        dec_c = []
        for i in range(c.dec_layers):
            lc = None                                   # a skipped layer passes x through
            if f"dec.{i}" not in ops.skip_layers:
                x, lc = _decoder_layer(ops, f"dec.{i}", x, enc_out, src_pad, tgt_valid=tgt_valid)
            dec_c.append(lc)
            ops.keep("dec.hidden", x)
        logits, fc, oc = self._output(ops, x, tgt_valid)
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
            if cache.dec[i] is None:
                dx = _add(dx, "dec.hidden", i, dstates)
                continue
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
        if d_enc is None:  # no decoder layers (or all skipped)
            ids = cache.src_emb[1][0]
            d_enc = np.zeros((*ids.shape, self.config.D), dlogits.dtype)
        self._embed_bwd(ops, _encoder_stack_bwd(ops, d_enc, cache.enc, dstates), cache.src_emb)
        return ops.grads

    def loss_and_grads(self, params, src, tgt_in, tgt_out, *, rng=None, act_hooks=None,
                       head_mask=None, relu_gates=None, skip_layers=()):
        """Mean label-smoothed cross-entropy over non-PAD targets, its gradients, and stats."""
        tgt_out = np.asarray(tgt_out)
        if tgt_out.shape != np.shape(tgt_in):
            raise ValueError(f"tgt_out {tgt_out.shape} must have the shape of tgt_in {np.shape(tgt_in)}")
        logits, cache = self.forward(params, src, tgt_in, rng=rng, head_mask=head_mask,
                                     act_hooks=act_hooks, relu_gates=relu_gates, skip_layers=skip_layers)
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
        cross_kv, src_valid = [], ~src_pad
        for i in range(c.dec_layers):
            p = f"dec.{i}.cross_attn"
            k = ops.hook(p + ".k", ops.linear(p + ".W_k", enc_out, valid=src_valid)[0], src_valid)[0]
            v = ops.hook(p + ".v", ops.linear(p + ".W_v", enc_out, valid=src_valid)[0], src_valid)[0]
            cross_kv.append((split_heads(k, c.D // c.H), split_heads(v, c.D // c.H)))  # (B, H, S, Dh) each
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
        tgt_valid = prev != PAD  # (B, 1); a live hypothesis has only real tokens before this one
        self_kv = []
        for i in range(c.dec_layers):
            past = None if dec_state is None else dec_state.self_kv[i]
            x, (c1, _, _) = _decoder_layer(ops, f"dec.{i}", x, None, enc_state.src_pad,
                                           self_kv=past, cross_kv=enc_state.cross_kv[i],
                                           tgt_valid=tgt_valid)
            acache = c1[2][1]  # sub-layer cache (ln, ln cache, (prefix, attention cache, _), _)
            self_kv.append((acache.k, acache.v))
        logits, _, _ = self._output(ops, x, tgt_valid)
        logp, _ = L.log_softmax_forward(logits[:, 0])  # (B, V)
        return logp, DecoderState(pos + 1, self_kv)

    def reorder_state(self, state, index):
        """Rows ``index`` of an EncoderState or DecoderState (beam search reorders hypotheses)."""
        if isinstance(state, EncoderState):
            return EncoderState(state.out[index], state.src_pad[index],
                                [(k[index], v[index]) for k, v in state.cross_kv])
        return DecoderState(state.pos, [(k[index], v[index]) for k, v in state.self_kv])
