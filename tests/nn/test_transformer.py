"""Tests of tinyzip.nn.transformer (and the blocks.py it is built from): Vaswani et al. 2017
(arXiv:1706.03762), Pre-LN (Xiong et al. 2020, arXiv:2002.04745).

Whole-model backward passes are checked against float64 central differences of
L = sum(logits * dout) (+ sum(state * dstate) for the returned states).
"""
import math

import numpy as np
import pytest

from tinyzip.nn.gradcheck import check_backward, numerical_grad
from tinyzip.nn.layers import layer_norm_forward, log_softmax_forward
from tinyzip.nn.losses import cross_entropy_forward
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig, sinusoidal_positions

SRC = np.array([[4, 5, 6, 2, 0], [6, 3, 2, 0, 0]])
TGT_IN = np.array([[1, 4, 5, 6], [1, 6, 0, 0]])
TGT_OUT = np.array([[4, 5, 6, 2], [6, 2, 0, 0]])


def tiny(pre_ln=False, share=True, layers=1, **kw):
    cfg = Seq2SeqConfig(src_vocab=7, tgt_vocab=7, D=4, H=2, F=6, enc_layers=layers,
                        dec_layers=layers, max_len=8, pre_ln=pre_ln, share_embeddings=share, **kw)
    return Seq2Seq(cfg)


def params64(model, seed=0):
    """float64 params, with non-trivial LN and biases so every gradient path is exercised."""
    rng = np.random.default_rng(seed)
    return {k: v.astype(np.float64) + 0.1 * rng.standard_normal(v.shape)
            for k, v in model.init_params(rng).items()}


@pytest.mark.parametrize("pre_ln", [False, True])
@pytest.mark.parametrize("share", [True, False])
def test_seq2seq_backward_matches_central_differences(pre_ln, share):
    """Every parameter gradient and dL/dxi of every attention block, post-/pre-LN, tied or not."""
    model = tiny(pre_ln, share)
    params = params64(model)
    names, prefixes = list(params), model.attention_prefixes()
    xi = [np.array([0.7, 1.3]) for _ in prefixes]

    def forward(*arrays):
        p = dict(zip(names, arrays))
        return model.forward(p, SRC, TGT_IN, head_mask=dict(zip(prefixes, arrays[len(names):])))

    def backward(dlogits, cache):
        g = model.backward(dlogits, cache)
        assert set(g) == set(names) | {p + ".head_mask" for p in prefixes}
        return tuple(g[n] for n in names) + tuple(g[p + ".head_mask"] for p in prefixes)

    check_backward(forward, backward, [params[n] for n in names] + xi)


STATE_KEYS = ["enc.hidden", "enc.scores", "enc.probs", "dec.hidden", "dec.self_scores",
              "dec.self_probs", "dec.cross_scores", "dec.cross_probs"]


@pytest.mark.parametrize("pre_ln", [False, True])
def test_seq2seq_dstates_backward_matches_central_differences(pre_ln):
    """Upstream gradients for hidden states, scores and probabilities flow like the logits'."""
    model = tiny(pre_ln, layers=2)
    params = params64(model, seed=1)
    names = list(params)
    wrt = [i for i, n in enumerate(names) if n.startswith(("enc.0", "dec.1", "emb"))]

    def forward(*arrays):
        logits, cache = model.forward(dict(zip(names, arrays)), SRC, TGT_IN, return_states=True)
        flat = [s for k in STATE_KEYS for s in cache.states[k]]
        return (logits, *flat), cache

    def backward(douts, cache):
        it = iter(douts[1:])
        dstates = {k: [next(it) for _ in cache.states[k]] for k in STATE_KEYS}
        g = model.backward(douts[0], cache, dstates=dstates)
        return tuple(g[n] for n in names)

    check_backward(forward, backward, [params[n] for n in names], wrt=wrt)


def test_loss_and_grads_matches_central_differences_of_the_loss():
    """grads = dLoss/dparams for the mean label-smoothed CE over non-PAD targets."""
    model = tiny(share=False, label_smoothing=0.1)
    params = params64(model, seed=2)
    loss, grads, stats = model.loss_and_grads(params, SRC, TGT_IN, TGT_OUT)
    assert stats["tokens"] == int((TGT_OUT != 0).sum())
    for name in ("tgt_emb", "enc.0.attn.W_q", "dec.0.cross_attn.W_v", "out.W", "out.b"):
        x = params[name]

        def f(_):
            logits, _c = model.forward(params, SRC, TGT_IN)
            return cross_entropy_forward(logits, TGT_OUT, 0.1)[0]
        np.testing.assert_allclose(grads[name], numerical_grad(f, x), rtol=1e-6, atol=1e-9)
    logits, _ = model.forward(params, SRC, TGT_IN)
    assert math.isclose(loss, cross_entropy_forward(logits, TGT_OUT, 0.1)[0], rel_tol=1e-12)


def test_pe_values_norms_and_rotation_property():
    """PE in [-1, 1]; PE(0) = [0, 1, 0, 1, ...]; |PE(pos)|^2 = D/2; PE(pos + k) rotates each
    (sin, cos) pair of PE(pos) by the angle omega_i k (Sec. 3.5)."""
    D, k = 8, 3
    pe = sinusoidal_positions(20, D, dtype=np.float64)
    assert np.all(np.abs(pe) <= 1)
    np.testing.assert_allclose(pe[0], np.tile([0.0, 1.0], D // 2), atol=0)
    np.testing.assert_allclose((pe ** 2).sum(1), D / 2)
    np.testing.assert_allclose(sinusoidal_positions(5, D, offset=7, dtype=np.float64), pe[7:12])
    omega = 10000.0 ** (-np.arange(0, D, 2) / D)
    for pos in range(10):
        s, c = pe[pos, 0::2], pe[pos, 1::2]
        rot_s = s * np.cos(omega * k) + c * np.sin(omega * k)
        rot_c = c * np.cos(omega * k) - s * np.sin(omega * k)
        np.testing.assert_allclose(pe[pos + k, 0::2], rot_s, atol=1e-12)
        np.testing.assert_allclose(pe[pos + k, 1::2], rot_c, atol=1e-12)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_zero_sublayers_give_ln_of_input_post_ln_and_final_ln_pre_ln(pre_ln):
    """With every sub-layer output 0: Post-LN layer output = LN(LN(x)); Pre-LN stack = LN_f(x)."""
    model = tiny(pre_ln, layers=2)
    params = {k: v.astype(np.float64) for k, v in model.init_params(np.random.default_rng(0)).items()}
    for k in params:
        if k.endswith(("W_o", "b_o", "W_2", "b_2")):
            params[k][...] = 0
    _, cache = model.forward(params, SRC, TGT_IN, return_states=True)
    x0 = cache.states["enc.hidden"][0]
    one, zero = np.ones(4), np.zeros(4)
    if pre_ln:
        np.testing.assert_array_equal(cache.states["enc.hidden"][2], x0)
    else:
        twice = layer_norm_forward(layer_norm_forward(x0, one, zero)[0], one, zero)[0]
        np.testing.assert_allclose(cache.states["enc.hidden"][1], twice, rtol=1e-12, atol=1e-12)


def test_padded_positions_get_zero_gradient_and_zero_attention():
    model = tiny(share=False, layers=2)
    params = params64(model, seed=4)
    _, grads, _ = model.loss_and_grads(params, SRC, TGT_IN, TGT_OUT)
    assert np.all(grads["src_emb"][0] == 0) and np.all(grads["tgt_emb"][0] == 0)
    assert np.any(grads["src_emb"][4] != 0)
    _, cache = model.forward(params, SRC, TGT_IN, return_states=True)
    for probs in cache.states["dec.cross_probs"] + cache.states["enc.probs"]:
        assert np.all(probs[:, :, :, (SRC == 0)[0]][0] == 0) and np.all(probs[1, :, :, 3:] == 0)


def test_logits_before_t_do_not_depend_on_target_tokens_from_t_on():
    model = tiny(layers=2)
    params = params64(model, seed=5)
    tgt = np.array([[1, 4, 5, 6], [1, 6, 3, 5]])
    logits, _ = model.forward(params, SRC, tgt)
    tgt2 = tgt.copy()
    tgt2[:, 2:] = [[3, 3], [4, 4]]
    logits2, _ = model.forward(params, SRC, tgt2)
    np.testing.assert_array_equal(logits[:, :2], logits2[:, :2])
    assert not np.allclose(logits[:, 2:], logits2[:, 2:])


@pytest.mark.parametrize("pre_ln", [False, True])
def test_decode_step_with_cache_equals_full_recomputation(pre_ln):
    model = tiny(pre_ln, layers=2)
    params = params64(model, seed=6)
    tgt = np.array([[1, 4, 5, 6, 3], [1, 6, 3, 5, 5]])
    full, _ = model.forward(params, SRC, tgt)
    ref, _ = log_softmax_forward(full)
    enc, state = model.encode(params, SRC), None
    for t in range(tgt.shape[1]):
        logp, state = model.decode_step(params, enc, tgt[:, t], state)
        np.testing.assert_allclose(logp, ref[:, t], rtol=1e-12, atol=1e-12)
    swap = np.array([1, 0])
    enc2, state2 = model.reorder_state(enc, swap), model.reorder_state(state, swap)
    a, _ = model.decode_step(params, enc, np.array([4, 5]), state)
    b, _ = model.decode_step(params, enc2, np.array([5, 4]), state2)
    np.testing.assert_array_equal(a, b[swap])


def test_matmuls_override_with_x_at_W_gives_identical_logits():
    model = tiny(layers=2)
    params = {k: v for k, v in model.init_params(np.random.default_rng(7)).items()}
    matmuls = {n: (lambda W: lambda x: x @ W)(params[n] if n != "emb" else params[n].T)
               for n, v in params.items() if v.ndim == 2}
    ref, _ = model.forward(params, SRC, TGT_IN)
    out, _ = model.forward(params, SRC, TGT_IN, matmuls=matmuls)
    np.testing.assert_array_equal(out, ref)
    enc = model.encode(params, SRC, matmuls=matmuls)
    a, _ = model.decode_step(params, enc, TGT_IN[:, 0], None, matmuls=matmuls)
    b, _ = model.decode_step(params, model.encode(params, SRC), TGT_IN[:, 0], None)
    np.testing.assert_array_equal(a, b)


def test_act_hooks_run_forward_and_backward_at_every_point():
    """Hooks scaling by c (backward also by c) on every point: gradients match central differences."""
    model = tiny(layers=1)
    params = params64(model, seed=8)
    names = list(params)
    points = [n + ":in" for n, v in params.items() if v.ndim == 2]
    points += [f"{p}.{n}" for p in model.attention_prefixes() for n in ("q", "k", "v", "probs")]
    points += ["enc.0.ffn.act", "dec.0.ffn.act"]
    seen = set()

    def hook(point, c):
        return (lambda x: (seen.add(point) or c * x, None), lambda d, _: c * d)
    hooks = {p: hook(p, 1.0 + 0.1 * i) for i, p in enumerate(points)}

    def forward(*arrays):
        return model.forward(dict(zip(names, arrays)), SRC, TGT_IN, act_hooks=hooks)

    wrt = ["emb", "enc.0.attn.W_v", "enc.0.attn.W_q", "dec.0.cross_attn.W_k", "dec.0.self_attn.b_q"]
    check_backward(forward, lambda d, c: tuple(model.backward(d, c)[n] for n in names),
                   [params[n] for n in names], wrt=[names.index(n) for n in wrt])
    assert seen == set(points)


def test_decode_step_with_hooks_on_q_k_v_probs_equals_the_hooked_forward():
    """encode hooks the cross-attention K, V it caches, decode_step each new self-attention row:
    with elementwise hooks, incremental decoding = the full forward under the same hooks."""
    model = tiny(layers=2)
    params = params64(model, seed=10)
    hooks = {f"{p}.{n}": (lambda x, c=1.0 + 0.1 * i: (c * x + 0.05 * x * x, None), None)
             for i, (p, n) in enumerate((p, n) for p in model.attention_prefixes() for n in ("q", "k", "v", "probs"))}
    tgt = np.array([[1, 4, 5, 6, 3], [1, 6, 3, 5, 5]])
    full, _ = model.forward(params, SRC, tgt, act_hooks=hooks)
    ref, _ = log_softmax_forward(full)
    plain, _ = model.forward(params, SRC, tgt)
    assert not np.allclose(full, plain)
    enc, state = model.encode(params, SRC, act_hooks=hooks), None
    for t in range(tgt.shape[1]):
        logp, state = model.decode_step(params, enc, tgt[:, t], state, act_hooks=hooks)
        np.testing.assert_allclose(logp, ref[:, t], rtol=1e-12, atol=1e-12)


def test_dropout_only_with_rng_and_its_backward_is_exact():
    model = tiny(layers=1, dropout=0.3)
    params = params64(model, seed=9)
    a, _ = model.forward(params, SRC, TGT_IN)
    b, _ = model.forward(params, SRC, TGT_IN)
    c, _ = model.forward(params, SRC, TGT_IN, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    names = ["enc.0.ffn.W_1", "dec.0.self_attn.W_q"]

    def forward(*arrays):
        return model.forward({**params, **dict(zip(names, arrays))}, SRC, TGT_IN,
                             rng=np.random.default_rng(1))
    check_backward(forward, lambda d, c: tuple(model.backward(d, c)[n] for n in names),
                   [params[n].copy() for n in names])


def test_tied_embedding_gradient_is_sum_of_both_embedding_paths_and_the_output_path():
    """Shared E: dE = dE_src + dE_tgt + dW_out.T of the untied model with the same values."""
    tied, untied = tiny(share=True), tiny(share=False)
    p = params64(tied, seed=10)
    assert "out.W" not in p and "src_emb" not in p
    q = {k: v for k, v in p.items() if k != "emb"}
    q.update(src_emb=p["emb"], tgt_emb=p["emb"], **{"out.W": np.ascontiguousarray(p["emb"].T)})
    _, g, _ = tied.loss_and_grads(p, SRC, TGT_IN, TGT_OUT)
    _, h, _ = untied.loss_and_grads(q, SRC, TGT_IN, TGT_OUT)
    np.testing.assert_allclose(g["emb"], h["src_emb"] + h["tgt_emb"] + h["out.W"].T, rtol=1e-12,
                               atol=1e-15)


def test_float32_model_gives_float32_logits_and_grads_and_config_round_trips():
    model = tiny(layers=1)
    params = model.init_params(np.random.default_rng(11))
    assert all(v.dtype == np.float32 for v in params.values())
    loss, grads, stats = model.loss_and_grads(params, SRC, TGT_IN, TGT_OUT, rng=np.random.default_rng(0))
    assert set(grads) == set(params) and all(g.dtype == np.float32 for g in grads.values())
    assert np.isfinite(loss) and stats["tokens"] == 6 and stats["nll"] > 0
    assert Seq2SeqConfig.from_dict(model.config.to_dict()) == model.config


def test_bad_input_names_the_problem():
    model = tiny()
    params = model.init_params(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"src ids must lie in \[0, 7\)"):
        model.forward(params, SRC + 5, TGT_IN)
    with pytest.raises(TypeError, match="tgt_in must be integer"):
        model.forward(params, SRC, TGT_IN.astype(float))
    with pytest.raises(ValueError, match="batch"):
        model.forward(params, SRC[:1], TGT_IN)
    with pytest.raises(ValueError, match="max_len=8"):
        model.forward(params, np.ones((1, 9), int), TGT_IN[:1])
    with pytest.raises(ValueError, match="tgt_out"):
        model.loss_and_grads(params, SRC, TGT_IN, TGT_OUT[:, :2])
    with pytest.raises(ValueError, match="divisible"):
        Seq2SeqConfig(src_vocab=5, tgt_vocab=5, D=6, H=4)
    with pytest.raises(ValueError, match="share_embeddings"):
        Seq2SeqConfig(src_vocab=5, tgt_vocab=6)
