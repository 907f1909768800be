"""Tests of tinyzip.nn.transformer: Vaswani et al. 2017 (arXiv:1706.03762), Pre-LN (Xiong et al.
2020, arXiv:2002.04745) and the BERT-style classifier (Devlin et al. 2019, arXiv:1810.04805).

Whole-model backward passes are checked against float64 central differences of
L = sum(logits * dout) (+ sum(state * dstate) for the returned states).
"""
import math

import numpy as np
import pytest

from tinyzip.nn.gradcheck import check_backward, numerical_grad
from tinyzip.nn.losses import cross_entropy_forward
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig, \
    sinusoidal_positions

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
