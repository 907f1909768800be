"""compress/head_pruning.py: Michel, Levy, Neubig (2019), arXiv:1905.10650, "Are Sixteen Heads Really
Better than One?". Labels (H1)-(H4) are the module docstring's."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.compress import head_pruning as hp
from tinyzip.compressed import dequantize_all, pack_float
from tinyzip.container import load_tz, save_tz
from tinyzip.nn.classifier import ClassifierConfig, EncoderClassifier
from tinyzip.nn.gradcheck import check_backward, numerical_grad
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

SRC = np.array([[4, 5, 6, 7, 2, 0], [6, 3, 8, 2, 0, 0]])
TGT_IN = np.array([[1, 4, 5, 6, 7], [1, 6, 8, 0, 0]])
TGT_OUT = np.array([[4, 5, 6, 7, 2], [6, 8, 2, 0, 0]])
EXAMPLES = [(SRC[i:i + 1], TGT_IN[i:i + 1], TGT_OUT[i:i + 1]) for i in range(2)]


def seq2seq(pre_ln=False, **kw):
    return Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=10, D=8, H=4, F=12, enc_layers=2, dec_layers=2,
                                 max_len=10, pre_ln=pre_ln, dropout=0.0, **kw))


def params64(model, seed=0):
    """float64 params with non-zero biases and LN, so every path (b_q ... b_o) is exercised."""
    rng = np.random.default_rng(seed)
    return {k: v.astype(np.float64) + 0.2 * rng.standard_normal(v.shape)
            for k, v in model.init_params(rng).items()}


def random_mask(model, rng, p_zero=0.4):
    """A 0/1 mask with every block's heads each zero with probability p_zero (whole blocks too)."""
    return {p: (rng.random(len(xi)) >= p_zero).astype(np.float64) for p, xi in hp.full_mask(model).items()}


# ---- (H1): the mask and the physical removal ------------------------------------------------------

def test_h1_all_ones_mask_is_the_unmasked_model():
    model = seq2seq()
    params = params64(model)
    plain, _ = model.forward(params, SRC, TGT_IN)
    masked, _ = model.forward(params, SRC, TGT_IN, head_mask=hp.full_mask(model))
    assert np.array_equal(plain, masked)
    pruned_model, pruned = hp.prune_heads(model, params, hp.full_mask(model))
    assert pruned_model.config == model.config
    assert all(np.array_equal(pruned[n], params[n]) for n in params)


@pytest.mark.parametrize("pre_ln", [False, True])
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_h1_removing_heads_equals_masking_them(pre_ln, seed):
    """Deleting head h's columns of W_q, W_k, W_v, b_q, b_k, b_v and rows of W_o gives the logits
    of the forward with xi_h = 0 (any heads, whole blocks included), in the full forward and in
    incremental decoding (encode + decode_step)."""
    rng = np.random.default_rng(seed)
    model = seq2seq(pre_ln)
    params = params64(model, seed % 1000)
    mask = random_mask(model, rng)
    small_model, small = hp.prune_heads(model, params, mask)
    masked, _ = model.forward(params, SRC, TGT_IN, head_mask=mask)
    pruned, _ = small_model.forward(small, SRC, TGT_IN)
    np.testing.assert_allclose(pruned, masked, rtol=1e-12, atol=1e-12)
    state, dec = small_model.encode(small, SRC), None
    for t in range(TGT_IN.shape[1]):
        logp, dec = small_model.decode_step(small, state, TGT_IN[:, t], dec)
        real = TGT_IN[:, t] != 0
        full = masked[:, t] - np.log(np.sum(np.exp(masked[:, t]), axis=-1, keepdims=True))
        np.testing.assert_allclose(logp[real], full[real], rtol=1e-10, atol=1e-10)


def test_h1_removing_heads_of_a_classifier_equals_masking_them():
    model = EncoderClassifier(ClassifierConfig(vocab=10, n_classes=3, D=8, H=4, F=12, layers=2, dropout=0.0))
    params = params64(model)
    mask = {"enc.0.attn": np.array([0.0, 1, 0, 1]), "enc.1.attn": np.zeros(4)}
    small_model, small = hp.prune_heads(model, params, mask)
    types = np.zeros_like(SRC)
    masked, _ = model.forward(params, SRC, types, head_mask=mask)
    np.testing.assert_allclose(small_model.forward(small, SRC, types)[0], masked, rtol=1e-12, atol=1e-12)
    assert small["enc.0.attn.W_q"].shape == (8, 4) and small["enc.1.attn.W_o"].shape == (0, 8)


def test_pruning_twice_keeps_original_head_indices():
    """A mask on an already pruned model refers to the heads it has left; the config records the
    original indices, and two steps equal one step with the union of the masks."""
    model = seq2seq()
    params = params64(model)
    first = hp.full_mask(model)
    first["enc.0.attn"][[0, 2]] = 0
    m1, p1 = hp.prune_heads(model, params, first)
    second = hp.full_mask(m1)
    second["enc.0.attn"][1] = 0                        # the second remaining head: original head 3
    second["dec.1.cross_attn"][0] = 0
    m2, p2 = hp.prune_heads(m1, p1, second)
    assert m2.config.pruned_heads == {"enc.0.attn": (0, 2, 3), "dec.1.cross_attn": (0,)}
    union = hp.full_mask(model)
    union["enc.0.attn"][[0, 2, 3]] = 0
    union["dec.1.cross_attn"][0] = 0
    m3, p3 = hp.prune_heads(model, params, union)
    assert m3.config == m2.config
    assert all(np.array_equal(p2[n], p3[n]) for n in p3)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_backward_of_a_pruned_model_matches_central_differences(pre_ln):
    """The attention backward with fewer heads than D / Dh, and with none (a block pruned whole):
    every gradient, dL/dxi of the heads left included."""
    model = seq2seq(pre_ln)
    mask = {"enc.0.attn": np.array([1.0, 0, 1, 0]), "dec.0.self_attn": np.array([0.0, 0, 1, 0]),
            "dec.1.cross_attn": np.zeros(4)}
    small_model, small = hp.prune_heads(model, params64(model), mask)
    names, prefixes = list(small), [p for p in small_model.attention_prefixes() if p != "dec.1.cross_attn"]
    xi = [np.linspace(0.7, 1.3, len(hp.full_mask(small_model)[p])) for p in prefixes]

    def forward(*arrays):
        return small_model.forward(dict(zip(names, arrays)), SRC, TGT_IN,
                                   head_mask=dict(zip(prefixes, arrays[len(names):])))

    def backward(dlogits, cache):
        g = small_model.backward(dlogits, cache)
        return tuple(g[n] for n in names) + tuple(g[p + ".head_mask"] for p in prefixes)

    check_backward(forward, backward, [small[n] for n in names] + xi)


def test_a_block_without_heads_passes_only_its_output_bias():
    """Post-LN: the sub-layer is LN(x + b_o); no NaN anywhere."""
    model = seq2seq()
    params = params64(model)
    mask = {"enc.0.attn": np.zeros(4)}
    small_model, small = hp.prune_heads(model, params, mask)
    no_attention = dict(params, **{"enc.0.attn.W_o": np.zeros_like(params["enc.0.attn.W_o"])})
    logits, _ = small_model.forward(small, SRC, TGT_IN)
    assert np.all(np.isfinite(logits))
    np.testing.assert_allclose(logits, model.forward(no_attention, SRC, TGT_IN)[0], rtol=1e-12, atol=1e-12)


# ---- (H2) and (H3): importance ---------------------------------------------------------------------

def test_h2_importance_is_the_mean_absolute_mask_derivative():
    """I_h = mean over examples of |dL/dxi_h|, dL/dxi_h by central differences of the loss in xi_h."""
    model = seq2seq()
    params = params64(model)
    importance = hp.head_importance(model, params, EXAMPLES)
    for prefix in ("enc.1.attn", "dec.0.cross_attn"):
        expected = np.zeros(4)
        for example in EXAMPLES:
            def loss(xi):
                return model.loss_and_grads(params, *example, head_mask={prefix: xi})[0]
            expected += np.abs(numerical_grad(loss, np.ones(4), eps=1e-4)) / len(EXAMPLES)
        np.testing.assert_allclose(importance[prefix], expected, rtol=1e-6, atol=1e-10)
        assert np.all(importance[prefix] >= 0)


def test_h2_is_taken_at_the_current_mask_and_a_masked_head_keeps_a_gradient():
    """dL/dxi_h at xi_h = 0 is <heads_h, dL/d(xi_h heads_h)>, in general not 0: masked heads must
    be excluded from selection by name, not by score."""
    model = seq2seq()
    params = params64(model)
    mask = hp.full_mask(model)
    mask["enc.0.attn"][1] = 0
    importance = hp.head_importance(model, params, EXAMPLES, mask)
    assert importance["enc.0.attn"][1] > 0
    expected = np.mean([abs(numerical_grad(
        lambda x: model.loss_and_grads(params, *ex, head_mask=dict(mask, **{"enc.0.attn": x}))[0],
        mask["enc.0.attn"].copy(), eps=1e-4)[1]) for ex in EXAMPLES])
    assert importance["enc.0.attn"][1] == pytest.approx(expected, rel=1e-6)


@given(st.lists(st.lists(st.just(0.0) | st.floats(1e-6, 1e6), min_size=1, max_size=6), min_size=1, max_size=5),
       st.floats(1e-3, 1e3))
def test_h3_blocks_have_unit_norm_and_scale_does_not_matter(rows, c):
    importance = {f"b{i}": np.array(r) for i, r in enumerate(rows)}
    normalized = hp.normalize_by_block(importance)
    scaled = hp.normalize_by_block({p: c * I for p, I in importance.items()})
    for p, I in normalized.items():
        assert np.all(np.isfinite(I))
        norm = math.sqrt(float(np.sum(importance[p] ** 2)))
        if norm > 0:
            assert np.sqrt(np.sum(I ** 2)) == pytest.approx(1.0, rel=1e-9)
            np.testing.assert_allclose(scaled[p], I, rtol=1e-9)
        if norm == 0:
            assert np.all(I == 0)                     # the 1e-20 guard: an all-zero block stays 0


# ---- (H4): iterative pruning ------------------------------------------------------------------------

def test_h4_selection_takes_the_least_important_unmasked_heads_ties_by_flat_index():
    importance = {"a": np.array([0.5, 0.0, 0.2]), "b": np.array([0.2, 0.1])}
    mask = {"a": np.array([1.0, 0, 1]), "b": np.ones(2)}
    assert hp.heads_to_mask(importance, mask, 1) == [("b", 1)]            # a's head 1 is masked already
    assert hp.heads_to_mask(importance, mask, 3) == [("b", 1), ("a", 2), ("b", 0)]   # 0.2 tie: a first
    with pytest.raises(ValueError, match="unmasked"):
        hp.heads_to_mask(importance, mask, 5)


def test_h4_steps_mask_ten_percent_nested_and_never_twice():
    """N = 24 heads: max(1, floor(0.1 N)) = 2 a step, the last step the rest; each mask contains the
    one before; a step's new heads are the least important under the mask before (recomputed)."""
    model = seq2seq()
    params = params64(model)
    masks = hp.iterative_masks(model, params, EXAMPLES, 7)
    counts = [sum(int(np.sum(xi == 0)) for xi in m.values()) for m in masks]
    assert counts == [2, 4, 6, 7]
    before = hp.full_mask(model)
    for m in masks:
        assert all(np.all(m[p] <= before[p]) for p in m)                   # nested
        importance = hp.normalize_by_block(hp.head_importance(model, params, EXAMPLES, before))
        new = {(p, h) for p in m for h in np.flatnonzero((m[p] == 0) & (before[p] == 1))}
        assert new == set(hp.heads_to_mask(importance, before, len(new)))
        before = m


def test_h4_one_head_a_step_when_ten_percent_is_less_than_one():
    model = Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=10, D=8, H=2, F=12, enc_layers=1, dec_layers=1,
                                  max_len=10, dropout=0.0))       # N = 6 heads: floor(0.6) = 0 -> 1
    masks = hp.iterative_masks(model, params64(model), EXAMPLES, 3)
    assert [sum(int(np.sum(xi == 0)) for xi in m.values()) for m in masks] == [1, 2, 3]


# ---- the file: a pruned model is a smaller model ---------------------------------------------------

def test_a_pruned_model_saves_and_loads_with_its_smaller_shapes(tmp_path):
    model = seq2seq()
    params = {k: v.astype(np.float32) for k, v in params64(model).items()}
    mask = hp.full_mask(model)
    mask["dec.0.self_attn"][[1, 3]] = 0
    small_model, small = hp.prune_heads(model, params, mask)
    full, packed = ({n: pack_float(W) for n, W in p.items()} for p in (params, small))
    full_bytes = save_tz(tmp_path / "full.tz", full, model.config.to_dict())
    small_bytes = save_tz(tmp_path / "small.tz", packed, small_model.config.to_dict())
    removed = 2 * (4 * 8 * 2 + 3 * 2) * 4              # 2 heads of Dh = 2: W_q,k,v,o and b_q,k,v
    assert sum(t.nbytes for t in full.values()) - sum(t.nbytes for t in packed.values()) == removed
    assert small_bytes < full_bytes
    tz = load_tz(tmp_path / "small.tz")
    loaded, config = dequantize_all(tz.packed), Seq2SeqConfig.from_dict(tz.config)
    assert config == small_model.config
    assert all(np.array_equal(loaded[n], small[n]) for n in small)
    expected = Seq2Seq(config).init_params(np.random.default_rng(0))     # the config's own shapes
    assert {n: W.shape for n, W in expected.items()} == {n: W.shape for n, W in loaded.items()}
    assert "pruned_heads" not in model.config.to_dict()    # unpruned files are as before


@pytest.mark.parametrize("pruned, match", [
    ({"enc.9.attn": [0]}, "not one of the model.s blocks"), ({"enc.0.attn": [4]}, r"in \[0, 4\)"),
    ({"enc.0.attn": [1, 1]}, "distinct"), ({"enc.0.attn": [0.5]}, "distinct"), ([0], "must be a dict")])
def test_config_rejects_bad_pruned_heads(pruned, match):
    with pytest.raises(ValueError, match=match):
        seq2seq(pruned_heads=pruned)


def test_bad_input_is_a_clear_error():
    model = seq2seq()
    params = params64(model)
    with pytest.raises(ValueError, match="values in"):
        hp.prune_heads(model, params, {"enc.0.attn": np.array([1.0, 0.5, 1, 1])})
    with pytest.raises(ValueError, match="4 values"):
        hp.head_importance(model, params, EXAMPLES, {"enc.0.attn": np.ones(3)})
    with pytest.raises(ValueError, match="not attention blocks"):           # a misspelt block is not ignored
        hp.prune_heads(model, params, {"enc.0.atn": np.zeros(4)})
    with pytest.raises(ValueError, match="at least one batch"):
        hp.head_importance(model, params, [])
    with pytest.raises(ValueError, match="n_masked"):
        hp.iterative_masks(model, params, EXAMPLES, 25)
