"""compress/ffn_pruning.py: FFN node pruning by activation range (Prato et al. 2020, FullyQT,
arXiv:1910.10485). Labels (P1)-(P4) are the module docstring's."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.compress import ffn_pruning as fp
from tinyzip.compress.layerdrop import prune_layers
from tinyzip.compressed import dequantize_all, pack_float
from tinyzip.container import load_tz, save_tz
from tinyzip.nn.classifier import ClassifierConfig, EncoderClassifier
from tinyzip.nn.gradcheck import check_backward
from tinyzip.nn.losses import PAD
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

SRC = np.array([[4, 5, 6, 7, 2, 0], [6, 3, 8, 2, 0, 0]])
TGT_IN = np.array([[1, 4, 5, 6, 7], [1, 6, 8, 0, 0]])
TGT_OUT = np.array([[4, 5, 6, 7, 2], [6, 8, 2, 0, 0]])
BATCH = (SRC, TGT_IN, TGT_OUT)
SRC2 = np.array([[9, 8, 7, 6, 5, 4], [3, 4, 5, 6, 7, 8]])
TGT2_IN = np.array([[1, 9, 8, 7, 6], [1, 3, 4, 5, 6]])
BATCH2 = (SRC2, TGT2_IN, TGT2_IN)


def seq2seq(pre_ln=False, **kw):
    return Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=10, D=8, H=2, F=12, enc_layers=2, dec_layers=2,
                                 max_len=10, pre_ln=pre_ln, dropout=0.0, **kw))


def params64(model, seed=0):
    rng = np.random.default_rng(seed)
    return {k: v.astype(np.float64) + 0.2 * rng.standard_normal(v.shape) for k, v in model.init_params(rng).items()}


def zeroed(params, nodes):
    """The masked model of (P4): each node's W_1 column and b_1 entry set to 0 (so a[:, j] = 0)."""
    params = dict(params)
    for p, js in nodes.items():
        params[p + ".W_1"], params[p + ".b_1"] = params[p + ".W_1"].copy(), params[p + ".b_1"].copy()
        params[p + ".W_1"][:, js], params[p + ".b_1"][js] = 0.0, 0.0
    return params


def ffn_inputs_of_w2(model, params, batch):
    """{FFN prefix: (B, T, F) a} recorded at W_2's input by a plain hook (it sees PAD rows too)."""
    seen = {}

    def recorder(prefix):
        def forward(x):
            seen[prefix] = x.copy()
            return x, None
        return forward, None
    hooks = {p + ".W_2:in": recorder(p) for p in model.config.ffn_prefixes()}
    model.forward(params, *batch[:-1], act_hooks=hooks)
    return seen


# ---- (P1): the per-node range ------------------------------------------------------------------

def test_p1_x_max_is_the_ema_of_each_batchs_max_over_real_tokens():
    """Recorded independently at W_2's input, with PAD rows removed by the token ids: x_max =
    0.9 m_1 + 0.1 m_2 for two batches, m_1 alone for one, for encoder and decoder FFNs."""
    model = seq2seq()
    params = params64(model)
    maxima = []
    for src, tgt_in, _ in (BATCH, BATCH2):
        a = ffn_inputs_of_w2(model, params, (src, tgt_in, None))
        real = {"enc": src != PAD, "dec": tgt_in != PAD}
        maxima.append({p: x[real[p[:3]]].max(axis=0) for p, x in a.items()})
    one = fp.node_ranges(model, params, [BATCH])
    two = fp.node_ranges(model, params, [BATCH, BATCH2])
    for p in model.config.ffn_prefixes():
        np.testing.assert_allclose(one[p], maxima[0][p], rtol=0, atol=1e-14)
        np.testing.assert_allclose(two[p], 0.9 * maxima[0][p] + 0.1 * maxima[1][p], rtol=1e-13, atol=1e-14)
    assert set(fp.node_ranges(model, params, [BATCH], ["dec.1.ffn"])) == {"dec.1.ffn"}


def test_p1_padding_does_not_change_the_ranges():
    """Extra PAD columns (whose encoder rows and decoder rows have non-zero activations) leave x_max
    unchanged."""
    model = seq2seq()
    params = params64(model)
    padded = (np.pad(SRC, ((0, 0), (0, 3))), np.pad(TGT_IN, ((0, 0), (0, 3))), np.pad(TGT_OUT, ((0, 0), (0, 3))))
    a = ffn_inputs_of_w2(model, params, padded)
    assert np.abs(a["enc.0.ffn"][:, -3:]).max() > 0 and np.abs(a["dec.0.ffn"][:, -3:]).max() > 0
    plain, with_pad = fp.node_ranges(model, params, [BATCH]), fp.node_ranges(model, params, [padded])
    for p in plain:
        np.testing.assert_allclose(with_pad[p], plain[p], rtol=1e-12, atol=1e-14)


# ---- (P2)-(P3): the threshold --------------------------------------------------------------------

@given(st.lists(st.floats(0, 100), min_size=1, max_size=20), st.floats(0, 8))
def test_p3_prunes_exactly_the_nodes_below_lambda_times_the_standard_deviation(values, lam):
    r = np.array(values)
    sigma = (sum((v - sum(values) / len(values)) ** 2 for v in values) / len(values)) ** 0.5
    expected = [j for j, v in enumerate(values) if v < lam * sigma]
    got = fp.threshold_nodes({"enc.0.ffn": r}, lam)["enc.0.ffn"]
    near = [j for j, v in enumerate(values) if abs(v - lam * sigma) <= 1e-9 * (1 + abs(v))]
    assert set(got) - set(near) == set(expected) - set(near)
    assert fp.threshold_nodes({"enc.0.ffn": r}, 0.0)["enc.0.ffn"].size == 0    # x_max >= 0: none below 0


def test_p2_sigma_is_the_population_standard_deviation():
    """[0, 1.5, 3]: sigma = sqrt(1.5) = 1.22 (ddof 0; 1.5 with ddof 1), so at lambda = 1.1 the
    threshold 1.35 keeps the node at 1.5 (ddof 1's 1.65 would prune it)."""
    assert list(fp.threshold_nodes({"enc.0.ffn": np.array([0.0, 1.5, 3.0])}, 1.1)["enc.0.ffn"]) == [0]


@pytest.mark.parametrize("c", [0.25, 2.0, 8.0])
def test_p3_is_invariant_to_scaling_an_ffns_relu_inputs(c):
    """W_1, b_1 of one FFN times c and its W_2 over c (the model's function unchanged): that FFN's
    x_max scales by c, the others stay, and (P3) prunes the same nodes."""
    model = seq2seq()
    params = params64(model)
    scaled = dict(params)
    p = "enc.1.ffn"
    scaled[p + ".W_1"], scaled[p + ".b_1"], scaled[p + ".W_2"] = (c * params[p + ".W_1"], c * params[p + ".b_1"],
                                                                  params[p + ".W_2"] / c)
    base, new = fp.node_ranges(model, params, [BATCH, BATCH2]), fp.node_ranges(model, scaled, [BATCH, BATCH2])
    np.testing.assert_allclose(new[p], c * base[p], rtol=1e-12)
    np.testing.assert_allclose(new["dec.0.ffn"], base["dec.0.ffn"], rtol=1e-10)
    for lam in (0.5, 1.0, 2.0, 3.0):
        assert all(np.array_equal(a, b) for a, b in zip(fp.threshold_nodes(base, lam).values(),
                                                        fp.threshold_nodes(new, lam).values()))


def test_smallest_nodes_are_the_least_x_max_with_ties_to_the_lower_index():
    r = np.array([3.0, 1.0, 2.0, 1.0, 5.0, 0.5, 2.0])
    got = fp.smallest_nodes({"enc.0.ffn": r}, 0.5)["enc.0.ffn"]     # floor(3.5) = 3 nodes
    assert list(got) == [1, 3, 5]
    assert list(fp.smallest_nodes({"enc.0.ffn": r}, 4 / 7)["enc.0.ffn"]) == [1, 2, 3, 5]   # 2.0 at 2 before 6
    assert fp.smallest_nodes({"enc.0.ffn": r}, 0.0)["enc.0.ffn"].size == 0


@given(st.integers(0, 2 ** 32 - 1))
def test_random_nodes_match_the_selections_counts_and_are_seeded(seed):
    ranges = {"enc.0.ffn": np.arange(12.0), "dec.1.ffn": np.arange(7.0)}
    selection = fp.smallest_nodes(ranges, 0.5)
    a = fp.random_nodes(selection, ranges, np.random.default_rng(seed))
    b = fp.random_nodes(selection, ranges, np.random.default_rng(seed))
    assert all(np.array_equal(a[p], b[p]) for p in ranges)
    assert {p: len(set(a[p])) for p in ranges} == {"enc.0.ffn": 6, "dec.1.ffn": 3}
    assert all(0 <= a[p].min() and a[p].max() < len(ranges[p]) for p in ranges)


# ---- (P4): the smaller model ---------------------------------------------------------------------

@pytest.mark.parametrize("pre_ln", [False, True])
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_p4_removing_nodes_equals_zeroing_their_inputs(pre_ln, seed):
    """The pruned model's logits equal the full model's with the nodes' W_1 columns and b_1 entries
    at 0, in the full forward and in incremental decoding; its loss equals the masked model's."""
    rng = np.random.default_rng(seed)
    model = seq2seq(pre_ln)
    params = params64(model)
    nodes = {p: np.flatnonzero(rng.random(12) < 0.4) for p in model.config.ffn_prefixes()}
    nodes = {p: js[:11] for p, js in nodes.items()}                # never all 12
    small_model, small = fp.prune_nodes(model, params, nodes)
    masked = zeroed(params, nodes)
    np.testing.assert_allclose(small_model.forward(small, SRC, TGT_IN)[0], model.forward(masked, SRC, TGT_IN)[0],
                               rtol=1e-12, atol=1e-12)
    state = small_model.encode(small, SRC)
    step, _ = small_model.decode_step(small, state, TGT_IN[:, :1])
    ref, _ = model.decode_step(masked, model.encode(masked, SRC), TGT_IN[:, :1])
    np.testing.assert_allclose(step, ref, rtol=1e-12, atol=1e-12)
    assert small_model.loss_and_grads(small, *BATCH)[0] == pytest.approx(model.loss_and_grads(masked, *BATCH)[0],
                                                                          rel=1e-12)


@pytest.mark.parametrize("activation", ["relu", "gelu_tanh"])
def test_p4_on_a_classifier(activation):
    model = EncoderClassifier(ClassifierConfig(vocab=10, n_classes=3, D=8, H=2, F=12, layers=2, max_len=10,
                                               dropout=0.0, activation=activation))
    params = params64(model)
    nodes = {"enc.0.ffn": np.array([0, 5, 11]), "enc.1.ffn": np.array([2])}
    small_model, small = fp.prune_nodes(model, params, nodes)
    ids = np.array([[4, 5, 6, 7], [6, 3, 8, 0]])
    np.testing.assert_allclose(small_model.forward(small, ids)[0], model.forward(zeroed(params, nodes), ids)[0],
                               rtol=1e-12, atol=1e-12)
    ranges = fp.node_ranges(small_model, small, [(ids, None, np.array([0, 2]))])
    assert {p: r.shape for p, r in ranges.items()} == {"enc.0.ffn": (9,), "enc.1.ffn": (11,)}


def test_p4_dead_nodes_have_x_max_zero_are_selected_and_prune_exactly():
    """Nodes made dead (b_1 = -1e3: a = 0 at every token) get x_max = 0, (P3) selects them for any
    lambda > 0 (here one so small that it selects nothing else), and the pruned model's logits are
    the full model's."""
    model = seq2seq()
    params = params64(model)
    dead = {"enc.0.ffn": [1, 7], "dec.1.ffn": [0, 4, 5]}
    for p, js in dead.items():
        params[p + ".b_1"] = params[p + ".b_1"].copy()
        params[p + ".b_1"][js] = -1e3
    ranges = fp.node_ranges(model, params, [BATCH, BATCH2])
    picked = fp.threshold_nodes(ranges, 1e-9)
    for p in model.config.ffn_prefixes():                 # the random model has dead nodes of its own too
        assert set(picked[p]) == set(np.flatnonzero(ranges[p] == 0)) >= set(dead.get(p, []))
    small_model, small = fp.prune_nodes(model, params, picked)
    for src, tgt_in, _ in (BATCH, BATCH2):
        np.testing.assert_allclose(small_model.forward(small, src, tgt_in)[0], model.forward(params, src, tgt_in)[0],
                                   rtol=1e-12, atol=1e-12)


def test_backward_of_a_pruned_model_matches_central_differences():
    model = seq2seq()
    small_model, small = fp.prune_nodes(model, params64(model), {"enc.1.ffn": [0, 3], "dec.0.ffn": [11]})
    names = list(small)

    def forward(*arrays):
        return small_model.forward(dict(zip(names, arrays)), SRC, TGT_IN)

    def backward(dlogits, cache):
        g = small_model.backward(dlogits, cache)
        return tuple(g[n] for n in names)

    check_backward(forward, backward, [small[n] for n in names])


def test_pruning_twice_keeps_original_node_indices():
    model = seq2seq()
    params = params64(model)
    once_model, once = fp.prune_nodes(model, params, {"enc.0.ffn": [0, 2]})
    twice_model, twice = fp.prune_nodes(once_model, once, {"enc.0.ffn": [0, 4]})   # originals 1 and 6
    assert twice_model.config.pruned_ffn == {"enc.0.ffn": (0, 1, 2, 6)}
    assert fp.kept_fraction(twice_model.config) == pytest.approx(1 - 4 / 48)
    np.testing.assert_allclose(twice_model.forward(twice, SRC, TGT_IN)[0],
                               model.forward(zeroed(params, {"enc.0.ffn": [0, 1, 2, 6]}), SRC, TGT_IN)[0],
                               rtol=1e-12, atol=1e-12)


def test_layerdrop_moves_pruned_nodes_with_their_layers():
    model = seq2seq()
    params = params64(model)
    ffn_model, ffn_params = fp.prune_nodes(model, params, {"enc.1.ffn": [3], "dec.0.ffn": [2, 5]})
    shallow, shallow_params = prune_layers(ffn_model, ffn_params, [1], [0, 1])
    assert shallow.config.pruned_ffn == {"enc.0.ffn": (3,), "dec.0.ffn": (2, 5)}
    expected = shallow.init_params(np.random.default_rng(0))
    assert {n: W.shape for n, W in expected.items()} == {n: W.shape for n, W in shallow_params.items()}


def test_a_pruned_model_saves_and_loads_with_its_smaller_shapes(tmp_path):
    model = seq2seq()
    params = {k: v.astype(np.float32) for k, v in params64(model).items()}
    small_model, small = fp.prune_nodes(model, params, {"enc.0.ffn": [1, 2, 3], "dec.1.ffn": [0]})
    save_tz(tmp_path / "small.tz", {n: pack_float(W) for n, W in small.items()}, small_model.config.to_dict())
    tz = load_tz(tmp_path / "small.tz")
    loaded, config = dequantize_all(tz.packed), Seq2SeqConfig.from_dict(tz.config)
    assert config == small_model.config and config.pruned_ffn == {"enc.0.ffn": (1, 2, 3), "dec.1.ffn": (0,)}
    assert all(np.array_equal(loaded[n], small[n]) for n in small)
    expected = Seq2Seq(config).init_params(np.random.default_rng(0))
    assert {n: W.shape for n, W in expected.items()} == {n: W.shape for n, W in loaded.items()}
    assert loaded["enc.0.ffn.W_1"].shape == (8, 9) and loaded["dec.1.ffn.W_2"].shape == (11, 8)
    assert "pruned_ffn" not in model.config.to_dict()                    # unpruned files are as before


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("pruned, match", [
    ({"enc.0.attn": [0]}, "not one of the model.s blocks"), ({"enc.0.ffn": [12]}, r"in \[0, 12\)"),
    ({"enc.0.ffn": [1, 1]}, "distinct"), ({"dec.1.ffn": [0.5]}, "distinct"), ([0], "must be a dict")])
def test_config_rejects_bad_pruned_ffn(pruned, match):
    with pytest.raises(ValueError, match=match):
        seq2seq(pruned_ffn=pruned)


def test_bad_input_is_a_clear_error():
    model = seq2seq()
    params = params64(model)
    ranges = fp.node_ranges(model, params, [BATCH])
    with pytest.raises(ValueError, match="FFNs of this model"):
        fp.node_ranges(model, params, [BATCH], ["enc.0.fnn"])
    with pytest.raises(ValueError, match="momentum"):
        fp.node_ranges(model, params, [BATCH], momentum=1.0)
    with pytest.raises(ValueError, match="at least one batch"):
        fp.node_ranges(model, params, [])
    bad = dict(params, **{"enc.0.ffn.b_1": np.full(12, np.nan)})
    with pytest.raises(ValueError, match="not finite"):
        fp.node_ranges(model, bad, [BATCH])
    for lam in (-0.1, np.nan, np.inf):
        with pytest.raises(ValueError, match="lambda"):
            fp.threshold_nodes(ranges, lam)
    with pytest.raises(ValueError, match="fraction"):
        fp.smallest_nodes(ranges, 1.0)
    with pytest.raises(ValueError, match="finite values"):
        fp.threshold_nodes({"enc.0.ffn": np.array([1.0, np.inf])}, 1.0)
    with pytest.raises(ValueError, match="finite values"):
        fp.smallest_nodes({"enc.0.ffn": np.array([])}, 0.5)
    with pytest.raises(TypeError, match="Generator"):
        fp.random_nodes({}, ranges, 0)
    with pytest.raises(ValueError, match="not an FFN"):
        fp.prune_nodes(model, params, {"enc.0.attn": [0]})
    for nodes in ([12], [-1], [1, 1], np.array([0.0])):
        with pytest.raises(ValueError, match="distinct indices"):
            fp.prune_nodes(model, params, {"enc.0.ffn": nodes})
    with pytest.raises(ValueError, match="drop the layer"):
        fp.prune_nodes(model, params, {"enc.0.ffn": np.arange(12)})
