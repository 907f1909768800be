"""The building blocks shared by ``Seq2Seq`` and ``EncoderClassifier``: residual sub-layers, the FFN,
attention with its hooks, and the encoder layer/stack, forward and backward by hand.

Vaswani et al. (2017), "Attention Is All You Need", NeurIPS, arXiv:1706.03762 (Sec. 3);
Pre-LN from Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture", ICML,
arXiv:2002.04745. Internal to ``tinyzip.nn``: the models in ``transformer.py`` (Seq2Seq) and
``classifier.py`` (EncoderClassifier) are built from these; nothing here is public API.

Per sub-layer (attention or FFN), with Dropout only when an ``rng`` is given:

    Post-LN (paper, default):  x <- LN(x + Dropout(Sublayer(x)))
    Pre-LN (Xiong et al.):     x <- x + Dropout(Sublayer(LN(x))),  and a final LN after the stack
    FFN(x) = act(x @ W_1 + b_1) @ W_2 + b_2                     Sec. 3.3, Eq. (2); act = ReLU or GELU

``_Ops`` holds the options of one model call and applies them at every layer: ``matmuls[name](x2d)``
replaces ``x @ W`` for that weight, ``matmuls[ffn_prefix](x2d)`` the whole FFN (inference only);
``act_hooks[point] = (fwd, bwd)`` wraps the
input of a matmul (``"<weight>:in"``), the attention's Q, K, V projections and probabilities
(``"<attn>.q"``, ``".k"``, ``".v"``, ``".probs"``: the operands of Q K^T and P V) and the FFN
activation (``"<ffn>.act"``); ``head_mask`` maps an attention prefix (``"enc.0.attn"``) to xi: (H,);
``relu_gates`` (a dict, default None) freezes each ReLU's gate 1[h > 0] at the first call's (a
smooth loss for finite differences of the gradient, ``tinyzip.compress.hessian``); the layers named
in ``skip_layers`` (``"enc.1"``, ``"dec.0"``) are the identity, forward and backward, and their
parameters get no gradient (LayerDrop, ``tinyzip.compress.layerdrop``; training forwards only).
The ops know which positions are real (not PAD): ``valid`` (B, L) bool, True at real rows (None:
all real), the source mask for encoder rows and cross-attention K/V inputs (and K, V), the target
mask for decoder rows (and their Q, K, V); attention probabilities get ``valid[b, 0, t, s]`` = real
query t and real key s (``_probs_valid``). A hook ``fwd`` with the attribute ``takes_valid = True`` is called as
``fwd(x, valid)`` (valid broadcastable to x's leading axes, or None), so range statistics can skip
padding (``tinyzip.compress.fqt``); any other hook is called as ``fwd(x)``, unchanged.
Backward methods accumulate parameter gradients into ``ops.grads`` (same keys as the params).
With ``keep_states``, ``ops.states`` collects ``enc.hidden`` [x_0 .. x_L] (x_L before the pre-LN
final LN) and ``enc.scores``/``enc.probs`` (B, H, S, S), one entry per layer; ``_encoder_stack_bwd``
accepts upstream gradients for them in ``dstates`` (same keys, lists with arrays or None).
"""
import numpy as np

from tinyzip.nn import layers as L
from tinyzip.nn.attention import HOOK_POINTS, WEIGHTS, mha_backward, mha_forward


def _check_ids(name, ids, vocab, max_len):
    """``ids`` as an integer (B, length) array, or a ValueError/TypeError naming ``name``."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2 or ids.shape[1] > max_len:
        raise ValueError(f"{name} must be (B, length <= max_len={max_len}), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"{name} ids must lie in [0, {vocab}), got [{ids.min()}, {ids.max()}]")
    return ids


def _pruned_units(field, pruned, n_units, prefixes, unit="head"):
    """A config's ``pruned_heads`` ({attention prefix: head indices removed, Michel et al. 2019}) or
    ``pruned_ffn`` ({FFN prefix: hidden-node indices removed, ``compress/ffn_pruning.py``}) as
    {prefix: sorted tuple of ints}, or a ValueError naming ``field`` and the bad entry."""
    if not isinstance(pruned, dict):
        raise ValueError(f"{field} must be a dict {{prefix: [{unit}, ...]}}, got {pruned!r}")
    out = {}
    for prefix, units in pruned.items():
        if prefix not in prefixes:
            raise ValueError(f"{field}: {prefix!r} is not one of the model's blocks {prefixes}")
        units = tuple(sorted(units))
        if (not all(isinstance(u, int | np.integer) and 0 <= u < n_units for u in units)
                or len(set(units)) != len(units)):
            raise ValueError(f"{field}[{prefix!r}] must be distinct {unit} indices in [0, {n_units}), got {units}")
        if units:
            out[prefix] = tuple(int(u) for u in units)
    return out


def _attention_width(config, prefix):
    """H Dh of an attention block: the number of heads it kept times Dh = D / H."""
    return (config.H - len(config.pruned_heads.get(prefix, ()))) * (config.D // config.H)


def _ffn_width(config, layer):
    """The hidden width of layer ``layer``'s FFN (``"enc.0"``): F less the nodes it had pruned."""
    return config.F - len(config.pruned_ffn.get(layer + ".ffn", ()))


def _pruning_dict(d):
    """A config's ``asdict`` without empty ``pruned_heads``/``pruned_ffn``, so the files of unpruned
    models are as before."""
    for key in ("pruned_heads", "pruned_ffn"):
        if not d[key]:
            del d[key]
    return d


def _block_params(rng, p, D, F, attns, lns, init, widths=None):
    """One layer's attention blocks ``attns``, FFN (hidden width F) and layer norms ``lns`` under
    prefix ``p``; ``widths[a]`` is block a's H Dh (default D: no head pruned)."""
    out = {}
    for a in attns:
        width = D if widths is None else widths[a]
        for n in ("q", "k", "v"):
            out[f"{p}.{a}.W_{n}"], out[f"{p}.{a}.b_{n}"] = init(D, width), np.zeros(width, np.float32)
        out[f"{p}.{a}.W_o"], out[f"{p}.{a}.b_o"] = init(width, D), np.zeros(D, np.float32)
    out[f"{p}.ffn.W_1"], out[f"{p}.ffn.b_1"] = init(D, F), np.zeros(F, np.float32)
    out[f"{p}.ffn.W_2"], out[f"{p}.ffn.b_2"] = init(F, D), np.zeros(D, np.float32)
    for ln in lns:
        out[f"{p}.{ln}.gamma"], out[f"{p}.{ln}.beta"] = np.ones(D, np.float32), np.zeros(D, np.float32)
    return out


_GELU = {"gelu": "none", "gelu_tanh": "tanh"}


def _bias_name(name):
    return "out.b" if name == "emb" else name.rsplit(".", 1)[0] + ".b" + name.rsplit(".W", 1)[1]


def _probs_valid(q_valid, kv_valid):
    """Real entries of attention probabilities (B, 1, T, S): real query rows x real key columns."""
    if q_valid is None and kv_valid is None:
        return None
    rows = True if q_valid is None else q_valid[:, None, :, None]  # (B, 1, T, 1)
    cols = True if kv_valid is None else kv_valid[:, None, None, :]  # (B, 1, 1, S)
    return rows & cols


class _Ops:
    """The layer ops of one model call: applies matmul overrides, hooks, dropout and head masks.

    Forward methods return ``(out, cache)``; backward methods accumulate into ``self.grads``.
    """

    def __init__(self, params, *, n_heads, pre_ln, activation, rng=None, p_drop=0.0,
                 matmuls=None, act_hooks=None, head_mask=None, keep_states=False, relu_gates=None,
                 skip_layers=()):
        self.params, self.n_heads, self.pre_ln, self.activation = params, n_heads, pre_ln, activation
        self.relu_gates, self.skip_layers = relu_gates, frozenset(skip_layers)
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

    def hook(self, point, x, valid=None):
        """The act hook at ``point`` on x -> (x_hat, hook cache); x itself and None without a hook."""
        if point not in self.hooks:
            return x, None
        fwd, bwd = self.hooks[point]
        x_hat, hcache = fwd(x, valid) if getattr(fwd, "takes_valid", False) else fwd(x)
        return x_hat, (bwd, hcache)

    def hook_bwd(self, dx_hat, hc):
        return dx_hat if hc is None else hc[0](dx_hat, hc[1])

    def linear(self, name, x, W=None, b=None, valid=None):
        if W is None:
            W = self.params["emb"].T if name == "emb" else self.params[name]
        b = self.params[_bias_name(name)] if b is None else b
        x, hc = self.hook(name + ":in", x, valid)
        if name in self.matmuls:
            y = self.matmuls[name](x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
            return y + b, None
        y, lcache = L.linear_forward(x, W, b)
        return y, (lcache, hc)

    def linear_bwd(self, name, dy, cache):
        if cache is None:
            raise ValueError(f"no backward through matmuls[{name!r}] (inference only)")
        lcache, hc = cache
        dx, dW, db = L.linear_backward(dy, lcache)
        self.acc(name, np.ascontiguousarray(dW.T) if name == "emb" else dW)  # E is W_out.T
        self.acc(_bias_name(name), db)
        return self.hook_bwd(dx, hc)

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

    def ffn(self, prefix, x, valid=None):
        if prefix in self.matmuls:                            # the whole FFN on one kernel (inference only)
            y = self.matmuls[prefix](x.reshape(-1, x.shape[-1])).reshape(x.shape)
            return y, (prefix, None, None, None, None)
        # Eq. (2): FFN(x) = act(x @ W_1 + b_1) @ W_2 + b_2
        h, c1 = self.linear(prefix + ".W_1", x, valid=valid)  # (B, T, F)
        if self.activation == "relu":
            a, ca = self.relu(prefix, h)
        else:
            a, ca = L.gelu_forward(h, approximate=_GELU[self.activation])
        a, hc = self.hook(prefix + ".act", a, valid)
        y, c2 = self.linear(prefix + ".W_2", a, valid=valid)  # (B, T, D)
        return y, (prefix, c1, ca, hc, c2)

    def relu(self, prefix, h):
        """ReLU, or with ``relu_gates`` (a dict) h * gate with the FFN's gate 1[h > 0] frozen: taken
        from the dict, or recorded there on the FFN's first call (``compress/hessian.py``)."""
        if self.relu_gates is None:
            return L.relu_forward(h)
        gate = self.relu_gates.setdefault(prefix, h > 0)
        if gate.shape != h.shape:
            raise ValueError(f"relu_gates[{prefix!r}] has shape {gate.shape}, the activations {h.shape}")
        return h * gate, gate                                 # relu_backward: dh = da * (gate > 0)

    def ffn_bwd(self, dy, cache):
        prefix, c1, ca, hc, c2 = cache
        if ca is None:                                        # the FFN ran on matmuls[prefix]
            raise ValueError(f"no backward through matmuls[{prefix!r}] (inference only)")
        da = self.hook_bwd(self.linear_bwd(prefix + ".W_2", dy, c2), hc)
        dh = L.relu_backward(da, ca) if self.activation == "relu" else L.gelu_backward(da, ca)
        return self.linear_bwd(prefix + ".W_1", dh, c1)

    def attention_hooks(self, prefix, q_valid, kv_valid):
        """``mha_forward``'s hooks of the attention block ``prefix`` ("q", "k", "v", "probs"), each
        given the pad mask of its rows: Q the query rows', K and V the key rows'; None without any."""
        points = [n for n in HOOK_POINTS if f"{prefix}.{n}" in self.hooks]
        if not points:
            return None
        valid = {"q": q_valid, "k": kv_valid, "v": kv_valid}
        if "probs" in points:
            valid["probs"] = _probs_valid(q_valid, kv_valid)
        return {n: (lambda x, n=n: self.hook(f"{prefix}.{n}", x, valid[n]), self.hook_bwd) for n in points}

    def attention(self, prefix, x_q, x_kv, key_pad, causal, kind, past_kv=None, static_kv=None,
                  q_valid=None, kv_valid=None):
        """``q_valid``: real rows of x_q (W_q, W_o inputs), ``kv_valid``: of x_kv (W_k, W_v inputs)."""
        pair = (lambda n, x, W, b: self.linear(f"{prefix}.{n}", x, W, b,
                                               kv_valid if n in ("W_k", "W_v") else q_valid),
                lambda n, dy, c: (self.linear_bwd(f"{prefix}.{n}", dy, c), None, None))
        head_dim = x_q.shape[-1] // self.n_heads  # n_heads: the config's H, before any pruning
        out, cache = mha_forward(
            x_q, x_kv, *(self.params[f"{prefix}.{n}"] for n in WEIGHTS),
            n_heads=self.params[f"{prefix}.b_q"].shape[0] // head_dim, head_dim=head_dim,
            key_pad=key_pad, causal=causal,
            head_mask=self.head_mask.get(prefix), past_kv=past_kv, static_kv=static_kv,
            return_scores=self.states is not None, linear=pair,
            hooks=self.attention_hooks(prefix, q_valid, kv_valid), dropout_p=self.p_drop, rng=self.rng)
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


def _encoder_layer(ops, p, x, key_pad):
    valid = None if key_pad is None else ~key_pad  # (B, S)
    x, c1 = ops.sublayer(f"{p}.ln1", x, lambda n: ops.attention(
        f"{p}.attn", n, n, key_pad, False, "enc.", q_valid=valid, kv_valid=valid))
    x, c2 = ops.sublayer(f"{p}.ln2", x, lambda n: ops.ffn(f"{p}.ffn", n, valid))
    return x, (c1, c2)


def _self_attention_bwd(ops, dprobs, dscores):
    def fn_bwd(dy, cache):
        dx_q, dx_kv = ops.attention_bwd(dy, cache, dprobs, dscores)
        dx_q += dx_kv
        return dx_q
    return fn_bwd


def _check_skip_layers(skip_layers, layers, keep_states):
    """A ValueError unless ``skip_layers`` names only ``layers`` (and no states are kept: the
    per-layer state lists would lose their alignment with the layers)."""
    unknown = sorted(set(skip_layers) - set(layers))
    if unknown:
        raise ValueError(f"skip_layers names {unknown}, not layers of this model: {layers}")
    if skip_layers and keep_states:
        raise ValueError("skip_layers cannot be combined with return_states")


def _encoder_stack(ops, x, key_pad, n_layers):
    """Layers 0 .. n_layers - 1 (and the pre-LN final LN) on x_0: (B, S, D)."""
    ops.keep("enc.hidden", x)
    caches = []
    for i in range(n_layers):
        c = None                                        # a skipped layer passes x through
        if f"enc.{i}" not in ops.skip_layers:
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
        if caches[i] is not None:
            c1, c2 = caches[i]
            dx = ops.sublayer_bwd(dx, c2, ops.ffn_bwd)
            dx = ops.sublayer_bwd(dx, c1, _self_attention_bwd(
                ops, _get(dstates, "enc.probs", i), _get(dstates, "enc.scores", i)))
        dx = _add(dx, "enc.hidden", i, dstates)
    return dx
