"""compress/distillation.py: Hinton et al. 2015 (arXiv 1503.02531) soft targets; TinyBERT's layer
losses (Jiao et al. 2020, arXiv 1909.10351) as TernaryBERT trains with them; DistilBERT's cosine term
and half-depth student (Sanh et al. 2019, arXiv 1910.01108); TinyBERT's layer mapping. Labels
(K1)-(K7) are the module docstring's."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.compress import distillation as kd
from tinyzip.compress import ternary
from tinyzip.nn import optim
from tinyzip.nn.gradcheck import numerical_grad
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import train
from tests.strategies import floats_st

SRC = np.array([[4, 5, 6, 2, 0], [6, 3, 2, 0, 0]])
TGT_IN = np.array([[1, 4, 5, 6], [1, 6, 0, 0]])
TGT_OUT = np.array([[4, 5, 6, 2], [6, 2, 0, 0]])

logits_st = hynp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 6)),
                        elements=floats_st(bound=6.0))
temperature_st = st.sampled_from([0.5, 1.0, 2.0, 7.0])


def tiny_model(label_smoothing=0.0, layers=1):
    return Seq2Seq(Seq2SeqConfig(src_vocab=7, tgt_vocab=7, D=4, H=2, F=6, enc_layers=layers, dec_layers=layers,
                                 max_len=8, label_smoothing=label_smoothing))


def params64(model, seed):
    rng = np.random.default_rng(seed)
    return {k: v.astype(np.float64) + 0.1 * rng.standard_normal(v.shape) for k, v in model.init_params(rng).items()}


def _valid(z, seed):
    valid = np.random.default_rng(seed).random(z.shape[:-1]) < 0.7
    valid.flat[0] = True
    return valid


@given(logits_st, st.integers(0, 2 ** 16), temperature_st)
def test_k3_gradient_is_t_times_q_minus_p_over_n_and_matches_central_differences(z, seed, temperature):
    v = np.random.default_rng(seed).normal(size=z.shape) * 3
    valid = _valid(z, seed)
    loss, dz = kd.soft_target_loss(z, v, valid, temperature)
    q = np.exp(z / temperature) / np.exp(z / temperature).sum(-1, keepdims=True)
    p = np.exp(v / temperature) / np.exp(v / temperature).sum(-1, keepdims=True)
    np.testing.assert_allclose(dz, temperature * (q - p) * valid[..., None] / valid.sum(), atol=1e-12)
    numeric = numerical_grad(lambda _: kd.soft_target_loss(z, v, valid, temperature)[0], z)
    np.testing.assert_allclose(dz, numeric, rtol=1e-6, atol=1e-9)


@given(logits_st, st.integers(0, 2 ** 16), temperature_st, st.floats(-50, 50))
def test_k2_is_batchmean_kl_nonnegative_shift_invariant_and_zero_iff_matched(z, seed, temperature, c):
    """Per token: sum over classes of p (log p - log q), times T^2, averaged over the valid tokens
    (not over classes too); >= 0; unchanged by a constant added to a token's logits; 0 with zero
    gradient when z - v is constant per token; PAD tokens count for nothing."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=z.shape) * 3
    valid = _valid(z, seed)
    loss, dz = kd.soft_target_loss(z, v, valid, temperature)
    per_token = []
    for idx in zip(*np.nonzero(valid)):
        lq = z[idx] / temperature - math.log(np.exp(z[idx] / temperature).sum())
        lp = v[idx] / temperature - math.log(np.exp(v[idx] / temperature).sum())
        per_token.append(float(np.exp(lp) @ (lp - lq)))
    assert loss == pytest.approx(temperature ** 2 * np.mean(per_token), rel=1e-9, abs=1e-12) and loss >= 0
    np.testing.assert_allclose(dz.sum(-1), 0.0, atol=1e-12)
    shift = rng.normal(size=z.shape[:-1] + (1,)) * c
    assert kd.soft_target_loss(z + shift, v - shift, valid, temperature)[0] == pytest.approx(loss, rel=1e-9, abs=1e-9)
    matched, dmatched = kd.soft_target_loss(v + shift, v, valid, temperature)
    assert matched == pytest.approx(0.0, abs=1e-9) and np.allclose(dmatched, 0.0, atol=1e-12)
    z_pad = np.where(valid[..., None], z, rng.normal(size=z.shape) * 9)
    assert kd.soft_target_loss(z_pad, v, valid, temperature)[0] == pytest.approx(loss, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("temperature, bound", [(10.0, 2e-2), (100.0, 2e-3), (1000.0, 2e-4)])
def test_high_temperature_limit_is_logit_matching(temperature, bound):
    """Hinton et al.: for zero-mean logits and T >> |z|, T^2 dC/dz -> (z - v) / V, i.e. N dz -> (z - v) / V
    with (K3)'s dz = T (q - p) / N; the error shrinks like 1/T."""
    rng = np.random.default_rng(0)
    z, v = rng.normal(size=(1, 1, 7)), rng.normal(size=(1, 1, 7))
    z, v = z - z.mean(), v - v.mean()
    _, dz = kd.soft_target_loss(z, v, np.ones((1, 1), bool), temperature)
    assert np.max(np.abs(dz - (z - v) / 7)) < bound


def test_one_hot_teacher_at_t1_gives_the_hard_cross_entropy():
    """With T = 1 and teacher logits c e_y, c -> inf, the soft term tends to -log q_y (no smoothing)."""
    z = np.random.default_rng(1).normal(size=(2, 3, 5))
    y = np.array([[1, 4, 0], [2, 2, 3]])
    v = 200.0 * np.eye(5)[y]
    soft, _ = kd.soft_target_loss(z, v, np.ones((2, 3), bool), 1.0)
    nll = -np.mean(np.take_along_axis(z - np.log(np.exp(z).sum(-1, keepdims=True)), y[..., None], -1))
    assert soft == pytest.approx(nll, rel=1e-9)


@given(st.integers(0, 2 ** 16))
def test_k5_state_mse_counts_only_kept_entries_and_its_gradient_is_exact(seed):
    rng = np.random.default_rng(seed)
    s, t = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    keep = rng.random((2, 3, 1)) < 0.6
    keep[0, 0, 0] = True
    loss, ds = kd.state_mse(s, t, keep)
    kept = np.broadcast_to(keep, s.shape)
    assert loss == pytest.approx(np.mean((s - t)[kept] ** 2), rel=1e-12)
    np.testing.assert_allclose(ds, numerical_grad(lambda _: kd.state_mse(s, t, keep)[0], s), rtol=1e-6, atol=1e-9)
    assert not np.any(ds[~kept])
    assert kd.state_mse(np.where(kept, s, 99.0), t, keep)[0] == loss


def test_k5_masks_keep_real_tokens_and_the_causal_pairs():
    masks = kd.state_masks(SRC, TGT_IN)
    assert masks["enc.hidden"][:, :, 0].tolist() == (SRC != 0).tolist()
    self_mask = masks["dec.self_scores"][1, 0]                     # target row 2: tokens [1, 6, PAD, PAD]
    assert self_mask.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert masks["dec.cross_scores"][1, 0].tolist() == [[1, 1, 1, 0, 0]] * 2 + [[0] * 5] * 2


@pytest.mark.parametrize("alpha, temperature, beta, gamma",
                         [(1.0, 1.0, 1.0, 0.0), (0.4, 3.0, 0.5, 0.0), (0.0, 2.0, 0.0, 0.0), (5 / 7, 2.0, 0.0, 1 / 7),
                          (0.5, 1.0, 0.7, 2.0)])
def test_k4_k5_k6_distiller_gradients_match_central_differences_of_its_loss(alpha, temperature, beta, gamma):
    """grads = d/dparams [alpha L_soft + (1 - alpha) L_hard + beta L_trm + gamma L_cos] (float64,
    label smoothing on)."""
    model = tiny_model(label_smoothing=0.1, layers=2)
    student, teacher = params64(model, 3), params64(model, 4)
    distiller = kd.Distiller(model, teacher, alpha=alpha, temperature=temperature, beta=beta, gamma=gamma)
    loss, grads, stats = distiller.loss_and_grads(student, SRC, TGT_IN, TGT_OUT)
    assert set(grads) == set(student)
    for name in ("emb", "enc.0.attn.W_q", "dec.1.cross_attn.W_k", "dec.0.ffn.W_2", "enc.1.ln1.gamma", "out.b"):
        def f(_):
            return distiller.loss_and_grads(student, SRC, TGT_IN, TGT_OUT)[0]
        np.testing.assert_allclose(grads[name], numerical_grad(f, student[name]), rtol=1e-6, atol=1e-9)
    if alpha == 0.0 and beta == 0.0:                               # pure hard cross-entropy
        hard, hard_grads, _ = model.loss_and_grads(student, SRC, TGT_IN, TGT_OUT)
        assert loss == pytest.approx(hard, rel=1e-12)
        assert all(np.allclose(grads[n], hard_grads[n], rtol=1e-12, atol=1e-15) for n in student)


@given(hynp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 5)),
                  elements=floats_st(bound=5.0)), st.integers(0, 2 ** 16), st.floats(0.1, 10.0))
def test_k6_cosine_loss_is_in_0_2_scale_invariant_masked_and_its_gradient_exact(h, seed, c):
    rng = np.random.default_rng(seed)
    h = h + 0.5 * rng.standard_normal(h.shape)                 # norms away from 0, where cos has a kink
    t = rng.standard_normal(h.shape)
    valid = _valid(h, seed)
    loss, dh = kd.cosine_loss(h, t, valid)
    assert -1e-12 <= loss <= 2 + 1e-12
    assert kd.cosine_loss(c * h, t, valid)[0] == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert kd.cosine_loss(c * t, t, valid)[0] == pytest.approx(0.0, abs=1e-12)   # parallel: 0
    assert kd.cosine_loss(-t, t, valid)[0] == pytest.approx(2.0, abs=1e-12)      # opposite: 2
    other = np.where(valid[..., None], h, rng.standard_normal(h.shape))          # PAD rows ignored
    assert kd.cosine_loss(other, t, valid)[0] == pytest.approx(loss, rel=1e-12, abs=1e-15)
    assert not dh[~valid].any()
    np.testing.assert_allclose(dh, numerical_grad(lambda x: kd.cosine_loss(x, t, valid)[0], h.copy()),
                               rtol=1e-5, atol=1e-8)


def test_a_half_depth_student_distils_from_the_full_teacher():
    """DistilBERT's setting: the teacher is another model (two layers a stack, the student one);
    its logits and last hidden state come from teacher_model; layer losses need equal depths."""
    student_model, teacher_model = tiny_model(layers=1), tiny_model(layers=2)
    student, teacher = params64(student_model, 3), params64(teacher_model, 4)
    distiller = kd.Distiller(student_model, teacher, alpha=1.0, beta=0.0, gamma=1.0, teacher_model=teacher_model)
    loss, grads, stats = distiller.loss_and_grads(student, SRC, TGT_IN, TGT_OUT)
    z, cache = student_model.forward(student, SRC, TGT_IN, return_states=True)
    v, t_cache = teacher_model.forward(teacher, SRC, TGT_IN, return_states=True)
    valid = TGT_IN != 0
    assert stats["soft"] == pytest.approx(kd.soft_target_loss(z, v, valid)[0], rel=1e-12)
    assert stats["cosine"] == pytest.approx(kd.cosine_loss(cache.states["dec.hidden"][-1],
                                                           t_cache.states["dec.hidden"][-1], valid)[0], rel=1e-12)
    assert set(grads) == set(student)
    with pytest.raises(ValueError, match="layers' states"):
        kd.Distiller(student_model, teacher, beta=1.0, teacher_model=teacher_model).loss_and_grads(
            student, SRC, TGT_IN, TGT_OUT)


@pytest.mark.parametrize("n_teacher", range(1, 25))
def test_k7_maps_start_at_the_embedding_increase_and_match_tinyberts_indices(n_teacher):
    """g(0) = 0, strictly increasing, inside [1, N]; uniform ends at N and equals huawei-noah's
    indices (hidden j k, attention i k + k - 1 for 0-based student layer i, k = N / M); top ends
    at N, bottom is the identity."""
    for n_student in range(1, n_teacher + 1):
        for strategy in kd.LAYER_MAPS:
            if strategy == "uniform" and n_teacher % n_student:
                with pytest.raises(ValueError, match="divisible"):
                    kd.layer_map(n_student, n_teacher, strategy)
                continue
            g = kd.layer_map(n_student, n_teacher, strategy)
            assert len(g) == n_student + 1 and g[0] == 0 and all(a < b for a, b in zip(g, g[1:]))
            assert 1 <= g[1] and g[-1] <= n_teacher
        if n_teacher % n_student == 0:
            k = n_teacher // n_student
            g = kd.layer_map(n_student, n_teacher)
            assert g == [j * k for j in range(n_student + 1)] and g[-1] == n_teacher
            assert [g[i + 1] - 1 for i in range(n_student)] == [i * k + k - 1 for i in range(n_student)]
        assert kd.layer_map(n_student, n_teacher, "top")[-1] == n_teacher
        assert kd.layer_map(n_student, n_teacher, "bottom") == list(range(n_student + 1))


@pytest.mark.parametrize("strategy", kd.LAYER_MAPS)
def test_k7_layer_loss_compares_each_student_state_with_the_teacher_state_the_map_names(strategy):
    """A 1+1 student of a 2+2 teacher: L_trm is the sum of state_mse over the mapped pairs only."""
    student_model, teacher_model = tiny_model(layers=1), tiny_model(layers=2)
    student, teacher = params64(student_model, 3), params64(teacher_model, 4)
    s_states = student_model.forward(student, SRC, TGT_IN, return_states=True)[1].states
    t_states = teacher_model.forward(teacher, SRC, TGT_IN, return_states=True)[1].states
    masks = kd.state_masks(SRC, TGT_IN)
    g = kd.layer_map(1, 2, strategy)                                   # uniform, top: [0, 2]; bottom: [0, 1]
    expected = sum(kd.state_mse(s_states[key][m], t_states[key][g[m]], masks[key])[0]
                   for key in kd.HIDDEN_KEYS for m in range(2))
    expected += sum(kd.state_mse(s_states[key][0], t_states[key][g[1] - 1], masks[key])[0] for key in kd.SCORE_KEYS)
    total, dstates = kd.layer_loss(s_states, t_states, masks, strategy)
    assert total == pytest.approx(expected, rel=1e-12)
    assert {k: len(v) for k, v in dstates.items()} == {k: len(s_states[k]) for k in dstates}


def test_k7_distiller_with_a_layer_map_has_exact_gradients():
    """A half-depth student on (K4) + (K5) through the uniform map: gradients by central differences."""
    student_model, teacher_model = tiny_model(label_smoothing=0.1, layers=1), tiny_model(layers=2)
    student, teacher = params64(student_model, 3), params64(teacher_model, 4)
    distiller = kd.Distiller(student_model, teacher, alpha=0.5, beta=0.7, teacher_model=teacher_model,
                             layer_map="uniform")
    loss, grads, stats = distiller.loss_and_grads(student, SRC, TGT_IN, TGT_OUT)
    assert stats["layers"] > 0
    for name in ("emb", "enc.0.attn.W_q", "dec.0.cross_attn.W_k", "dec.0.ffn.W_2", "dec.0.ln3.beta"):
        def f(_):
            return distiller.loss_and_grads(student, SRC, TGT_IN, TGT_OUT)[0]
        np.testing.assert_allclose(grads[name], numerical_grad(f, student[name]), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="layer map"):
        kd.layer_map(1, 2, "skip")
    with pytest.raises(ValueError, match="student layers"):
        kd.layer_map(3, 2)


def test_student_equal_to_teacher_has_zero_soft_and_layer_loss():
    model = tiny_model(layers=2)
    params = params64(model, 5)
    loss, grads, stats = kd.Distiller(model, params).loss_and_grads(params, SRC, TGT_IN, TGT_OUT)
    assert stats["soft"] == pytest.approx(0.0, abs=1e-12) and stats["layers"] == pytest.approx(0.0, abs=1e-12)
    assert all(np.allclose(g, 0.0, atol=1e-12) for g in grads.values())


def test_distilled_ternary_training_moves_toward_the_teacher_and_leaves_it_untouched():
    """A ternary student (TernaryBERT's setting) trained through train.train with the Distiller:
    its distillation loss falls, and the teacher's params are the same arrays, unchanged."""
    model = tiny_model(layers=1)
    teacher = {k: v.astype(np.float32) for k, v in params64(model, 6).items()}
    before = {k: v.copy() for k, v in teacher.items()}
    method = ternary.ternary_method({n: "tensor" for n, W in teacher.items() if W.ndim == 2})
    distiller = kd.Distiller(model, teacher)
    batches = lambda epoch: iter([(SRC, TGT_IN, TGT_OUT)] * 10)  # noqa: E731
    result = train(distiller, dict(teacher), batches, steps=40, optimizer=optim.adam(), schedule=lambda s: 3e-3,
                   rng=np.random.default_rng(0), method=method, log=None)
    assert np.mean(result.losses[-5:]) < 0.5 * result.losses[0]
    assert all(np.array_equal(teacher[k], before[k]) for k in teacher)


def test_bad_inputs_raise():
    z = np.zeros((1, 2, 3))
    for call, err in [(lambda: kd.soft_target_loss(z, np.zeros((1, 2, 4)), np.ones((1, 2), bool)), ValueError),
                      (lambda: kd.soft_target_loss(z, z, np.zeros((1, 2), bool)), ValueError),
                      (lambda: kd.soft_target_loss(z, z, np.ones((1, 2), bool), 0.0), ValueError),
                      (lambda: kd.soft_target_loss(z, z + np.nan, np.ones((1, 2), bool)), ValueError),
                      (lambda: kd.soft_target_loss(z.astype(int), z, np.ones((1, 2), bool)), TypeError),
                      (lambda: kd.state_mse(z, z, np.zeros((1, 2, 1), bool)), ValueError),
                      (lambda: kd.Distiller(None, {}, alpha=1.5), ValueError),
                      (lambda: kd.Distiller(None, {}, temperature=-1.0), ValueError),
                      (lambda: kd.Distiller(None, {}, gamma=-1.0), ValueError),
                      (lambda: kd.cosine_loss(z, z, np.zeros((1, 2), bool)), ValueError),
                      (lambda: kd.layer_loss({"enc.hidden": [z]}, {"enc.hidden": [z, z]}, {}), ValueError)]:
        with pytest.raises(err):
            call()
