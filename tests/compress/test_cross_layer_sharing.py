"""compress/cross_layer_sharing.py: ALBERT's cross-layer parameter sharing (Lan et al. 2020,
arXiv:1909.11942, Sec. 3.1). Labels (S1)-(S4) are the module docstring's."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.compress import cross_layer_sharing as cls
from tinyzip.compress import ffn_pruning, uniform
from tinyzip.compressed import dequantize_all, kernel_matmuls, pack_float, unpack
from tinyzip.container import format_inspect, load_tz, save_tz
from tinyzip.nn.classifier import ClassifierConfig, EncoderClassifier
from tinyzip.nn.gradcheck import numerical_grad
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

SRC = np.array([[4, 5, 6, 7, 2, 0], [6, 3, 8, 2, 0, 0]])
TGT_IN = np.array([[1, 4, 5, 6, 7], [1, 6, 8, 0, 0]])
TGT_OUT = np.array([[4, 5, 6, 7, 2], [6, 8, 2, 0, 0]])
BATCH = (SRC, TGT_IN, TGT_OUT)


def seq2seq(enc_layers=4, dec_layers=3, pre_ln=False):
    return Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=10, D=8, H=2, F=12, enc_layers=enc_layers,
                                 dec_layers=dec_layers, max_len=10, pre_ln=pre_ln, dropout=0.0))


def params64(model, seed=0):
    rng = np.random.default_rng(seed)
    return {k: v.astype(np.float64) + 0.2 * rng.standard_normal(v.shape) for k, v in model.init_params(rng).items()}


# ---- (S1): the groups --------------------------------------------------------------------------

@pytest.mark.parametrize("n_layers", range(1, 65))
def test_s1_makes_g_contiguous_groups_and_is_albert_code_without_its_rounding(n_layers):
    """google-research/albert computes int(l / L * G) in floats. Where that differs from ours, the
    exact l G / L is an integer that the float product lands just below (first at L = G = 22,
    where layers 14 and 15 would share a set though G = L)."""
    for n_groups in range(1, n_layers + 1):
        g = [cls.group_of(i, n_layers, n_groups) for i in range(n_layers)]
        assert sorted(set(g)) == list(range(n_groups)) and g == sorted(g)
        for i in range(n_layers):
            albert = int(i / n_layers * n_groups)
            assert albert == g[i] or (albert == g[i] - 1 and i * n_groups % n_layers == 0)
    assert [cls.group_of(i, n_layers, 1) for i in range(n_layers)] == [0] * n_layers
    assert [cls.group_of(i, n_layers, n_layers) for i in range(n_layers)] == list(range(n_layers))


def test_s1_owners_store_g_sets_of_the_kind_asked():
    model = seq2seq()
    params = params64(model)
    owner_of = cls.owners(model.config, {"enc": 2, "dec": 1}, "all", params)
    assert {o for n, o in owner_of.items() if n.startswith("enc.")} == {
        n for n in params if n.startswith(("enc.0.", "enc.2."))}                     # layers 0-1 -> 0, 2-3 -> 2
    assert owner_of["enc.3.ffn.W_1"] == "enc.2.ffn.W_1" and owner_of["dec.2.ln3.gamma"] == "dec.0.ln3.gamma"
    ffn = cls.owners(model.config, {"dec": 1}, "ffn", params)
    assert set(ffn) == {n for n in params if n.startswith("dec.") and ".ffn." in n}
    attention = cls.owners(model.config, {"dec": 3}, "attention", params)
    assert all(n == o for n, o in attention.items())                                  # G = L: nothing shared
    assert {n.split(".")[2] for n in attention} == {"self_attn", "cross_attn"}
    assert "emb" not in owner_of and "out.b" not in owner_of


# ---- (S2)-(S3): forward and backward -------------------------------------------------------------

@pytest.mark.parametrize("kind", cls.KINDS)
@pytest.mark.parametrize("pre_ln", [False, True])
def test_s2_shared_model_is_the_unshared_model_with_copied_layers(kind, pre_ln):
    """Every layer of a group computes with the group's set: the logits equal those of an unshared
    model whose tensors are explicit copies of the owners'."""
    model = seq2seq(pre_ln=pre_ln)
    params = params64(model)
    method = cls.SharingMethod(cls.owners(model.config, {"enc": 2, "dec": 1}, kind, params))
    stored = method.tie(params, "first")
    copies = {n: stored[method.owner_of.get(n, n)].copy() for n in params}
    eff, _ = method.forward(stored)
    assert set(eff) == set(params)
    np.testing.assert_array_equal(model.forward(eff, SRC, TGT_IN)[0], model.forward(copies, SRC, TGT_IN)[0])


@pytest.mark.parametrize("kind", cls.KINDS)
def test_s3_gradient_of_a_shared_set_is_the_sum_over_its_layers_and_matches_differences(kind):
    model = seq2seq()
    method = cls.SharingMethod(cls.owners(model.config, {"enc": 1, "dec": 2}, kind, params64(model)))
    stored = method.tie(params64(model))

    def loss(p):
        return model.loss_and_grads(method.forward(p)[0], *BATCH)[0]

    eff, cache = method.forward(stored)
    _, deff, _ = model.loss_and_grads(eff, *BATCH)
    grads = method.backward(deff, cache)
    assert set(grads) == set(stored)
    owner = {"all": "enc.0.ln1.gamma", "ffn": "enc.0.ffn.W_2", "attention": "enc.0.attn.W_q"}[kind]
    layers = [n for n, o in method.owner_of.items() if o == owner] + [owner]
    assert len(layers) == 4
    np.testing.assert_allclose(grads[owner], sum(deff[n] for n in layers), rtol=1e-12, atol=1e-15)
    differences = numerical_grad(lambda _: loss(stored), stored[owner])
    np.testing.assert_allclose(grads[owner], differences, rtol=1e-5, atol=1e-8)
    for other in ("dec.0.ffn.b_1", "dec.2.self_attn.W_v"):               # dec: groups {0, 1} and {2}
        if other in grads:
            differences = numerical_grad(lambda _: loss(stored), stored[other])
            np.testing.assert_allclose(grads[other], differences, rtol=1e-5, atol=1e-8)


def test_one_group_per_layer_shares_nothing():
    model = seq2seq()
    params = params64(model)
    method = cls.SharingMethod(cls.owners(model.config, {"enc": 4, "dec": 3}, "all", params))
    assert method.owner_of == {} and method.tie(params) == params
    assert cls.parameter_count(params, method.owner_of) == sum(W.size for W in params.values())


# ---- (S4): from a trained model -----------------------------------------------------------------

def test_s4_owners_start_at_the_mean_or_the_first_and_the_count_drops_by_the_shared_layers():
    model = seq2seq()
    params = params64(model)
    owner_of = cls.owners(model.config, {"enc": 2, "dec": 1}, "ffn", params)
    method = cls.SharingMethod(owner_of)
    mean, first = method.tie(params, "mean"), method.tie(params, "first")
    np.testing.assert_allclose(mean["enc.2.ffn.W_1"], (params["enc.2.ffn.W_1"] + params["enc.3.ffn.W_1"]) / 2,
                               rtol=1e-15)
    np.testing.assert_allclose(mean["dec.0.ffn.b_2"], sum(params[f"dec.{i}.ffn.b_2"] for i in range(3)) / 3,
                               rtol=1e-14)
    assert np.array_equal(first["dec.0.ffn.W_1"], params["dec.0.ffn.W_1"])
    assert set(mean) == set(params) - {"enc.1.ffn.W_1", "enc.1.ffn.b_1", "enc.1.ffn.W_2", "enc.1.ffn.b_2",
                                       "enc.3.ffn.W_1", "enc.3.ffn.b_1", "enc.3.ffn.W_2", "enc.3.ffn.b_2"} - {
        f"dec.{i}.ffn.{w}" for i in (1, 2) for w in ("W_1", "b_1", "W_2", "b_2")}
    per_ffn = 8 * 12 + 12 + 12 * 8 + 8
    assert cls.parameter_count(params, owner_of) == sum(W.size for W in params.values()) - (2 + 2) * per_ffn
    assert sum(W.size for W in mean.values()) == cls.parameter_count(params, owner_of)


def test_a_classifier_shares_its_encoder():
    model = EncoderClassifier(ClassifierConfig(vocab=10, n_classes=3, D=8, H=2, F=12, layers=3, max_len=10,
                                               dropout=0.0))
    params = params64(model)
    method = cls.SharingMethod(cls.owners(model.config, {"enc": 1}, "all", params))
    stored = method.tie(params, "first")
    eff, _ = method.forward(stored)
    ids = np.array([[4, 5, 6, 7], [6, 3, 8, 0]])
    copies = {n: stored[method.owner_of.get(n, n)] for n in params}
    np.testing.assert_array_equal(model.forward(eff, ids)[0], model.forward(copies, ids)[0])
    assert len(method.owner_of) == 2 * len([n for n in params if n.startswith("enc.0.")])


# ---- the file ------------------------------------------------------------------------------------

def test_a_shared_file_stores_each_set_once_and_loads_every_layer_with_the_owners_array_and_kernel(tmp_path):
    model = seq2seq()
    params = {k: v.astype(np.float32) for k, v in params64(model).items()}
    method = cls.SharingMethod(cls.owners(model.config, {"enc": 1, "dec": 1}, "all", params))
    stored = method.tie(params)
    packed = {n: pack_float(W) for n, W in stored.items()}
    packed["enc.0.ffn.W_1"] = uniform.pack_uniform(stored["enc.0.ffn.W_1"], 8)          # has an int8 kernel
    packed.update({n: cls.pack_shared(o, params[n].shape) for n, o in method.owner_of.items()})
    full_bytes = save_tz(tmp_path / "full.tz", {n: pack_float(W) for n, W in params.items()},
                         model.config.to_dict())
    shared_bytes = save_tz(tmp_path / "shared.tz", packed, model.config.to_dict())
    layer_bytes = 4 * sum(W.size for n, W in params.items() if n in method.owner_of)
    assert all(packed[n].nbytes == 0 for n in method.owner_of)
    assert shared_bytes < full_bytes - 0.8 * layer_bytes          # less their manifest entries (names, shapes)
    loaded = dequantize_all(load_tz(tmp_path / "shared.tz").packed)
    assert set(loaded) == set(params)
    assert loaded["enc.3.attn.W_k"] is loaded["enc.0.attn.W_k"]
    np.testing.assert_array_equal(loaded["dec.2.ln2.beta"], stored["dec.0.ln2.beta"])
    eff, _ = method.forward({n: unpack(p) for n, p in packed.items() if n not in method.owner_of})
    np.testing.assert_array_equal(model.forward(loaded, SRC, TGT_IN)[0], model.forward(eff, SRC, TGT_IN)[0])
    matmuls = kernel_matmuls(load_tz(tmp_path / "shared.tz").packed)
    assert matmuls["enc.2.ffn.W_1"] is matmuls["enc.0.ffn.W_1"]
    table = format_inspect(load_tz(tmp_path / "shared.tz")).splitlines()
    line = next(x for x in table if x.startswith("enc.1.attn.W_q"))
    assert line.split()[1:] == ["shared", "8x8", "256", "0", "0", "-"]          # no bytes, no ratio


# ---- bad input -----------------------------------------------------------------------------------

def test_bad_input_is_a_clear_error():
    model = seq2seq()
    params = params64(model)
    for layer, n_layers, n_groups in ((0, 4, 0), (0, 4, 5), (4, 4, 2), (-1, 4, 2)):
        with pytest.raises(ValueError, match="n_groups"):
            cls.group_of(layer, n_layers, n_groups)
    with pytest.raises(ValueError, match="n_groups"):
        cls.owners(model.config, {"enc": 5}, "all", params)
    with pytest.raises(ValueError, match="not a stack"):
        cls.owners(model.config, {"decoder": 1}, "all", params)
    with pytest.raises(ValueError, match="kind"):
        cls.owners(model.config, {"enc": 1}, "ffn_only", params)
    method = cls.SharingMethod(cls.owners(model.config, {"enc": 1}, "all", params))
    with pytest.raises(ValueError, match="init"):
        method.tie(params, "median")
    pruned_model, pruned = ffn_pruning.prune_nodes(model, params, {"enc.2.ffn": [0]})
    with pytest.raises(ValueError, match="shapes differ"):
        cls.SharingMethod(cls.owners(pruned_model.config, {"enc": 1}, "ffn", pruned)).tie(pruned)
    W = pack_float(np.ones((8, 12), np.float32))
    for packed, match in (({"a": cls.pack_shared("b", (8, 12))}, "not a stored tensor"),
                          ({"a": cls.pack_shared("b", (8, 12)), "b": cls.pack_shared("a", (8, 12))}, "not a stored"),
                          ({"a": cls.pack_shared("b", (12, 8)), "b": W}, "of shape")):
        with pytest.raises(ValueError, match=match):
            dequantize_all(packed)
    with pytest.raises(ValueError, match="no values of its own"):
        unpack(cls.pack_shared("b", (8, 12)))


@given(st.integers(1, 12), st.data())
def test_s1_every_group_has_a_first_layer_that_owns_it(n_layers, data):
    """The owner of each group is its lowest layer, for any stack size and group count."""
    n_groups = data.draw(st.integers(1, n_layers))
    model = seq2seq(enc_layers=n_layers, dec_layers=1)
    names = [f"enc.{i}.ffn.b_2" for i in range(n_layers)]
    owner_of = cls.owners(model.config, {"enc": n_groups}, "ffn", names)
    for i in range(n_layers):
        owner = int(owner_of[f"enc.{i}.ffn.b_2"].split(".")[1])
        g = cls.group_of(i, n_layers, n_groups)
        assert cls.group_of(owner, n_layers, n_groups) == g and owner <= i
        assert owner == 0 or cls.group_of(owner - 1, n_layers, n_groups) == g - 1
