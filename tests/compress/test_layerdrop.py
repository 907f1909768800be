"""compress/layerdrop.py: Fan, Grave, Joulin (2020), LayerDrop, arXiv:1909.11556. Labels (D1)-(D4)
are the module docstring's."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.compress import layerdrop as ld
from tinyzip.compress.head_pruning import prune_heads
from tinyzip.nn.classifier import ClassifierConfig, EncoderClassifier
from tinyzip.nn.gradcheck import numerical_grad
from tinyzip.nn.layers import log_softmax_forward
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

SRC = np.array([[4, 5, 6, 7, 2, 0], [6, 3, 8, 2, 0, 0]])
TGT_IN = np.array([[1, 4, 5, 6, 7], [1, 6, 8, 0, 0]])
TGT_OUT = np.array([[4, 5, 6, 7, 2], [6, 8, 2, 0, 0]])
BATCH = (SRC, TGT_IN, TGT_OUT)


def seq2seq(pre_ln=False, enc_layers=3, dec_layers=2, **kw):
    return Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=10, D=8, H=2, F=12, enc_layers=enc_layers,
                                 dec_layers=dec_layers, max_len=10, pre_ln=pre_ln, dropout=0.0, **kw))


def params64(model, seed=0):
    rng = np.random.default_rng(seed)
    return {k: v.astype(np.float64) + 0.2 * rng.standard_normal(v.shape) for k, v in model.init_params(rng).items()}


# ---- (D1) training and (D2) evaluation -----------------------------------------------------------

def test_d1_rate_zero_is_the_plain_model_and_rate_one_skips_every_layer():
    model = seq2seq()
    params = params64(model)
    plain = model.loss_and_grads(params, *BATCH)
    never = ld.LayerDrop(model, 0.0, 0.0).loss_and_grads(params, *BATCH, rng=np.random.default_rng(0))
    assert never[0] == plain[0] and all(np.array_equal(never[1][n], plain[1][n]) for n in params)
    always = ld.LayerDrop(model, 1.0, 1.0)
    loss, grads, _ = always.loss_and_grads(params, *BATCH, rng=np.random.default_rng(0))
    assert always.last_skipped == frozenset(ld.layer_names(model.config))
    empty_model, empty = ld.prune_layers(model, params, [], [])
    assert loss == pytest.approx(empty_model.loss_and_grads(empty, *BATCH)[0], rel=1e-12)
    assert all(not grads[n].any() for n in params if n.startswith(("enc.", "dec.")) and n.split(".")[1].isdigit())


def test_d2_without_an_rng_every_layer_runs():
    model = seq2seq()
    params = params64(model)
    drop = ld.LayerDrop(model, 0.9, 0.9)
    loss, _, _ = drop.loss_and_grads(params, *BATCH)
    assert drop.last_skipped == frozenset() and loss == model.loss_and_grads(params, *BATCH)[0]


@pytest.mark.parametrize("p_enc, p_dec", [(0.2, 0.5), (0.5, 0.0)])
def test_d1_each_layer_is_kept_with_probability_one_minus_p_independently(p_enc, p_dec):
    """Over 4,000 draws each layer's keep rate is 1 - p within 5 binomial standard deviations, and
    a pair of layers is kept together at the product of the rates."""
    config = seq2seq().config
    rng, n = np.random.default_rng(0), 4000
    draws = [ld.draw_skips(config, p_enc, p_dec, rng) for _ in range(n)]
    names = ld.layer_names(config)
    keep = {name: 1.0 - (p_enc if name.startswith("enc") else p_dec) for name in names}
    for name in names:
        rate = np.mean([name not in s for s in draws])
        assert abs(rate - keep[name]) <= 5 * np.sqrt(keep[name] * (1 - keep[name]) / n) + 1e-12
    both = np.mean([("enc.0" not in s) and ("dec.1" not in s) for s in draws])
    expected = keep["enc.0"] * keep["dec.1"]
    assert abs(both - expected) <= 5 * np.sqrt(expected * (1 - expected) / n) + 1e-12


@given(st.integers(0, 2 ** 32 - 1))
def test_d1_a_skipped_layer_gets_zero_gradient_and_is_the_identity(seed):
    model = seq2seq()
    params = params64(model)
    drop = ld.LayerDrop(model, 0.5, 0.5)
    _, grads, _ = drop.loss_and_grads(params, *BATCH, rng=np.random.default_rng(seed))
    for name in params:
        layer = ".".join(name.split(".")[:2])
        if layer in drop.last_skipped:
            assert not grads[name].any()
    _, cache = model.forward(params, SRC, TGT_IN, skip_layers=drop.last_skipped)
    states = model.forward(params, SRC, TGT_IN, return_states=True)[1].states
    assert states is not None and cache.states is None


@pytest.mark.parametrize("pre_ln", [False, True])
@pytest.mark.parametrize("skips", [{"enc.0"}, {"enc.1", "dec.0"}, {"dec.1"}, {"enc.0", "enc.1", "dec.0", "dec.1"}])
def test_d1_gradients_with_skipped_layers_match_finite_differences(pre_ln, skips):
    """The backward with ``skip_layers`` against central differences of the loss, in float64, for
    one encoder and one decoder matrix and the embedding (skipped or not)."""
    model = seq2seq(pre_ln, enc_layers=2, dec_layers=2)
    params = params64(model)
    _, grads, _ = model.loss_and_grads(params, *BATCH, skip_layers=skips)
    for name in ("enc.1.ffn.W_1", "dec.0.cross_attn.W_v", "emb"):
        def loss_of(W, name=name):
            return model.loss_and_grads({**params, name: W}, *BATCH, skip_layers=skips)[0]
        expected = numerical_grad(loss_of, params[name].copy())
        np.testing.assert_allclose(grads.get(name, np.zeros_like(expected)), expected, rtol=1e-6, atol=1e-8)


def test_skip_layers_rejects_unknown_layers_and_states():
    model = seq2seq()
    params = params64(model)
    with pytest.raises(ValueError, match="not layers of this model"):
        model.forward(params, SRC, TGT_IN, skip_layers={"enc.7"})
    with pytest.raises(ValueError, match="return_states"):
        model.forward(params, SRC, TGT_IN, skip_layers={"enc.0"}, return_states=True)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            ld.LayerDrop(model, bad, 0.2)


def test_classifier_layers_can_be_skipped():
    model = EncoderClassifier(ClassifierConfig(vocab=10, n_classes=2, D=8, H=2, F=12, layers=2, max_len=10,
                                               dropout=0.0))
    params = params64(model)
    ids, labels = SRC, np.array([0, 1])
    _, grads, _ = model.loss_and_grads(params, ids, None, labels, skip_layers={"enc.1"})
    assert "enc.1.ffn.W_1" not in grads and grads["enc.0.ffn.W_1"].any()
    with pytest.raises(ValueError, match="not layers"):
        model.loss_and_grads(params, ids, None, labels, skip_layers={"dec.0"})


# ---- (D3) Every Other and (D4) pruning ------------------------------------------------------------

@pytest.mark.parametrize("n, rate, kept", [
    (12, 0.5, [0, 2, 4, 6, 8, 10]), (12, 0.25, [0, 1, 2, 4, 5, 6, 8, 9, 10]), (4, 0.5, [0, 2]),
    (2, 0.5, [0]), (3, 0.2, [0, 1, 2]), (6, 1 / 3, [0, 1, 3, 4]), (5, 0.0, [0, 1, 2, 3, 4]), (4, 1.0, []),
])
def test_d3_every_other_drops_depths_divisible_by_floor_one_over_r(n, rate, kept):
    assert ld.every_other(n, rate) == kept


@given(st.integers(0, 30), st.floats(0.01, 1.0))
def test_d3_the_count_dropped_is_floor_l_over_period(n, rate):
    assert n - len(ld.every_other(n, rate)) == n // int(np.floor(1 / rate))


@pytest.mark.parametrize("pre_ln", [False, True])
@given(data=st.data())
def test_d4_the_pruned_model_equals_the_full_model_with_those_layers_skipped(pre_ln, data):
    """In the full forward and in incremental decoding (encode + decode_step), with a parameter
    count of the embeddings plus the kept layers."""
    model = seq2seq(pre_ln)
    params = params64(model)
    keep_enc = sorted(data.draw(st.sets(st.integers(0, 2))))
    keep_dec = sorted(data.draw(st.sets(st.integers(0, 1))))
    skipped = frozenset(n for n in ld.layer_names(model.config)
                        if not (n.startswith("enc") and int(n[4:]) in keep_enc)
                        and not (n.startswith("dec") and int(n[4:]) in keep_dec))
    small, small_params = ld.prune_layers(model, params, keep_enc, keep_dec)
    assert (small.config.enc_layers, small.config.dec_layers) == (len(keep_enc), len(keep_dec))
    assert set(small_params) == set(small.init_params(np.random.default_rng(0)))
    per_layer = {s: sum(params[n].size for n in params if n.startswith(s + ".0.")) for s in ("enc", "dec")}
    outside = sum(W.size for n, W in params.items() if not (n.split(".")[0] in ("enc", "dec")
                                                            and n.split(".")[1].isdigit()))
    assert sum(W.size for W in small_params.values()) == (outside + len(keep_enc) * per_layer["enc"]
                                                          + len(keep_dec) * per_layer["dec"])
    full_logits, _ = model.forward(params, SRC, TGT_IN, skip_layers=skipped)
    small_logits, _ = small.forward(small_params, SRC, TGT_IN)
    np.testing.assert_allclose(small_logits, full_logits, rtol=1e-12, atol=1e-12)
    expected, _ = log_softmax_forward(full_logits)
    state, dec_state = small.encode(small_params, SRC), None
    for t in range(TGT_IN.shape[1]):
        logp, dec_state = small.decode_step(small_params, state, TGT_IN[:, t], dec_state)
        real = TGT_IN[:, t] != 0
        np.testing.assert_allclose(logp[real], expected[real, t], rtol=1e-9, atol=1e-9)


def test_d4_pruned_heads_move_with_their_layers():
    model = seq2seq()
    params = params64(model)
    mask = {"enc.2.attn": np.array([1.0, 0.0]), "dec.1.cross_attn": np.array([0.0, 1.0])}
    headless, headless_params = prune_heads(model, params, mask)
    small, small_params = ld.prune_layers(headless, headless_params, [0, 2], [1])
    assert small.config.pruned_heads == {"enc.1.attn": (1,), "dec.0.cross_attn": (0,)}
    assert small_params["enc.1.attn.W_q"].shape == (8, 4)
    logits, _ = small.forward(small_params, SRC, TGT_IN)
    full, _ = headless.forward(headless_params, SRC, TGT_IN, skip_layers={"enc.1", "dec.0"})
    np.testing.assert_allclose(logits, full, rtol=1e-12, atol=1e-12)


def test_d4_kept_layers_keep_their_order_whatever_order_they_are_given_in():
    model = seq2seq()
    params = params64(model)
    _, in_order = ld.prune_layers(model, params, [0, 2], [1, 0])
    _, shuffled = ld.prune_layers(model, params, [2, 0], [0, 1])
    assert all(np.array_equal(in_order[n], shuffled[n]) for n in in_order)
    assert np.array_equal(in_order["enc.1.ffn.W_1"], params["enc.2.ffn.W_1"])


def test_d4_rejects_bad_indices():
    model = seq2seq()
    params = params64(model)
    for keep_enc, keep_dec in (([0, 0], [0]), ([3], [0]), ([0], [-1])):
        with pytest.raises(ValueError, match="distinct layer indices"):
            ld.prune_layers(model, params, keep_enc, keep_dec)
