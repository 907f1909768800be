"""compress/magnitude_pruning.py: Han et al. 2015 (arXiv 1506.02626) threshold pruning, Zhu & Gupta
2017 (arXiv 1710.01878) cubic schedule, Deep Compression (arXiv 1510.00149) relative indices."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.compress import magnitude_pruning as mp
from tinyzip.nn import optim
from tinyzip.nn.gradcheck import check_backward
from tinyzip.packing import packed_nbytes
from tests.strategies import floats_st, matrix_st

sparsity_st = st.floats(0.0, 1.0, allow_nan=False)


@given(matrix_st(), st.floats(0.0, 3.0), st.floats(0.01, 100.0))
def test_han_sec4_threshold_is_q_times_std_and_scale_invariant(W, q, c):
    """Han Sec. 4: keep <=> |w| >= q * sigma(W); mask(cW) = mask(W) = mask(-W) for c > 0."""
    mask = mp.std_threshold_mask(W, q)
    assert np.array_equal(mask, np.abs(W) >= q * np.std(W))
    c = 2.0 ** round(math.log2(c))      # power of two: c * W and c * sigma are exact
    assert np.array_equal(mp.std_threshold_mask(c * W, q), mask)
    assert np.array_equal(mp.std_threshold_mask(-W, q), mask)


def test_han_sec4_gaussian_pruned_fraction_is_erf():
    """For W ~ N(0, 1), the fraction below q * sigma is erf(q / sqrt 2) (q = 1: about 68%)."""
    W = np.random.default_rng(0).standard_normal((400, 500))
    for q in (0.5, 1.0, 2.0):
        pruned = 1.0 - mp.std_threshold_mask(W, q).mean()
        assert abs(pruned - math.erf(q / math.sqrt(2.0))) < 0.01


@given(matrix_st(bound=3.0), st.floats(0.0, 2.0))
def test_han_iterative_threshold_rounds_never_revive(W, q):
    """A second round (sigma over survivors) only removes weights: M_2 <= M_1."""
    m1 = mp.std_threshold_mask(W, q)
    m2 = mp.std_threshold_mask(W, q, m1)
    assert not np.any(m2 & ~m1)


@given(matrix_st(bound=3.0), sparsity_st)
def test_exact_k_matches_brute_force_sort_with_index_tiebreak(W, s):
    """Exactly floor(s N + 1/2) pruned: the smallest (|w|, flat index) pairs, by Python's sort."""
    W = np.round(W)       # many ties
    mask = mp.topk_mask(W, s)
    n_p = math.floor(s * W.size + 0.5)
    order = sorted(range(W.size), key=lambda i: (abs(W.flat[i]), i))
    expected = np.ones(W.size, dtype=bool)
    expected[order[:n_p]] = False
    assert np.array_equal(mask.ravel(), expected)
    assert (~mask).sum() == n_p


@given(matrix_st(bound=3.0), st.lists(sparsity_st, min_size=2, max_size=4))
def test_exact_k_rounds_are_monotone(W, targets):
    """With increasing targets and the previous mask passed in, masks only shrink."""
    mask = None
    for s in sorted(targets):
        new = mp.topk_mask(W, s, mask)
        if mask is not None:
            assert not np.any(new & ~mask)
        mask = new


@given(st.lists(matrix_st(max_side=6, bound=3.0), min_size=1, max_size=3), sparsity_st)
def test_global_exact_k_equals_layerwise_on_concatenation(Ws, s):
    """Global selection = exact-k on the concatenated flat weights (names in the given order)."""
    weights = {f"w{i}": np.round(W) for i, W in enumerate(Ws)}
    masks = mp.global_topk_masks(weights, s)
    flat = np.concatenate([w.ravel() for w in weights.values()])[None, :]
    expected = mp.topk_mask(flat, s).ravel()
    assert np.array_equal(np.concatenate([m.ravel() for m in masks.values()]), expected)


@given(st.floats(0.0, 0.5), st.floats(0.5, 1.0), st.integers(0, 50), st.integers(1, 20),
       st.integers(1, 30))
def test_zhu_gupta_eq1_cubic_schedule(s_i, s_f, t0, n, dt):
    """Eq. (1): s(t0) = s_i, s(t0 + n dt) = s_f, non-decreasing, concave steps, clamped outside."""
    steps = [t0 + j * dt for j in range(n + 1)]
    s = np.array([mp.cubic_sparsity(t, s_i, s_f, t0, n, dt) for t in steps])
    assert s[0] == pytest.approx(s_i, abs=1e-12) and s[-1] == pytest.approx(s_f, abs=1e-12)
    inc = np.diff(s)
    assert np.all(inc >= -1e-12) and np.all(np.diff(inc) <= 1e-12)
    assert mp.cubic_sparsity(t0 - 1, s_i, s_f, t0, n, dt) == pytest.approx(s_i)
    assert mp.cubic_sparsity(steps[-1] + 7, s_i, s_f, t0, n, dt) == s_f
    assert all(mp.is_pruning_step(t, t0, n, dt) for t in steps)
    assert not mp.is_pruning_step(steps[-1] + dt, t0, n, dt)


def test_zhu_gupta_eq1_midpoint_value():
    """Halfway, (1 - 1/2)^3 = 1/8 of the way is left: s = s_f - (s_f - s_i) / 8."""
    assert mp.cubic_sparsity(50, 0.0, 0.8, 0, 10, 10) == pytest.approx(0.8 - 0.8 / 8)


@given(st.floats(0.0, 0.999), st.integers(1, 6))
def test_iterative_targets_prune_a_constant_fraction_of_survivors(s_f, rounds):
    """s_r = 1 - (1 - s_f)^(r/R): each round keeps the same fraction; the last target is s_f."""
    t = [0.0] + mp.iterative_targets(s_f, rounds)
    assert t[-1] == s_f
    keep = [(1 - b) / (1 - a) for a, b in zip(t[:-1], t[1:])]
    assert np.allclose(keep, keep[0])


@given(hynp.arrays(np.float64, (4, 5), elements=floats_st()), hynp.arrays(bool, (4, 5)))
def test_mask_transform_backward_is_gradient_of_forward(W, mask):
    """W_eff = W * M is linear, so dW = dW_eff * M exactly (float64 central differences)."""
    t = mp.MaskTransform(mask)
    check_backward(t.forward, t.backward, [W.copy()])


@pytest.mark.parametrize("step", ["sgd", "adam", "adamw"])
def test_pruned_weights_stay_exactly_zero_through_real_optimizer_steps(step):
    """Dense training builds momentum/Adam state; after pruning, every step keeps pruned W == 0.

    Without ``after_step`` the old moments (and AdamW's decay) do move pruned weights: the test
    first shows that, so it can fail if masking were only applied to gradients.
    """
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((32, 6)), rng.standard_normal((32, 5))
    params = {"enc.0.ffn.W_1": rng.standard_normal((6, 5)), "enc.0.ffn.b_1": np.zeros(5)}
    init = optim.adam_init if step != "sgd" else optim.sgd_init
    update = {"sgd": optim.sgd_step, "adam": optim.adam_step, "adamw": optim.adamw_step}[step]
    state = init(params)

    def grads_of(eff):
        dy = x @ eff["enc.0.ffn.W_1"] + eff["enc.0.ffn.b_1"] - y          # (32, 5)
        return {"enc.0.ffn.W_1": x.T @ dy / len(x), "enc.0.ffn.b_1": dy.mean(0)}

    for _ in range(5):                                   # dense training: moments become nonzero
        params, state = update(params, grads_of(params), state, 0.01)
    params, masks = mp.prune_params(params, 0.6)
    method = mp.pruning_method(masks)
    pruned = ~masks["enc.0.ffn.W_1"]
    assert pruned.sum() == 18
    eff, cache = method.forward(params)
    raw, _ = update(params, method.backward(grads_of(eff), cache), state, 0.01)
    assert np.any(raw["enc.0.ffn.W_1"][pruned] != 0)    # the failure after_step must prevent
    for _ in range(20):
        eff, cache = method.forward(params)
        params, state = update(params, method.backward(grads_of(eff), cache), state, 0.01)
        params = method.after_step(params)
        assert np.all(params["enc.0.ffn.W_1"][pruned] == 0)
        assert np.all(eff["enc.0.ffn.W_1"][pruned] == 0)


def test_prunable_names_are_two_dimensional_and_skip_embeddings():
    params = {"emb": np.ones((7, 4)), "enc.0.attn.W_q": np.ones((4, 4)), "enc.0.attn.b_q": np.ones(4),
              "out.W": np.ones((4, 7))}
    assert mp.prunable_names(params) == ["enc.0.attn.W_q", "out.W"]
    assert mp.prunable_names(params, include_embeddings=True) == ["emb", "enc.0.attn.W_q", "out.W"]


@given(matrix_st(bound=3.0))
def test_zero_sparsity_and_zero_quality_leave_weights_unchanged(W):
    """s = 0 or q = 0 keeps every connection: the pruned network is the dense one."""
    pruned, masks = mp.prune_params({"W": W}, 0.0, names=["W"])
    assert np.array_equal(pruned["W"], W) and masks["W"].all()
    assert mp.std_threshold_mask(W, 0.0).all()


@given(hynp.arrays(np.float32, hynp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                   elements=st.sampled_from([0.0, 0.0, 0.0, 0.0, 1.5, -2.25])),
       st.integers(1, 8))
def test_deep_compression_sec2_relative_index_round_trip(W, bits):
    """pack/unpack is exact; codes fit in bits; fillers = sum floor((d - 1) / 2^bits)."""
    packed = mp.pack_sparse(W, index_bits=bits)
    assert np.array_equal(mp.unpack_sparse(packed), W)
    gaps = np.diff(np.flatnonzero(W), prepend=-1)
    assert packed.meta["fillers"] == int(((gaps - 1) // 2 ** bits).sum())
    count = packed.meta["count"]
    assert count == np.count_nonzero(W) + packed.meta["fillers"]
    assert packed.arrays["gaps"].size == packed_nbytes(count, bits)
    assert np.all(packed.arrays["values"][packed.arrays["values"] == 0] == 0)


def test_deep_compression_fig2_filler_every_2_to_the_bits():
    """3 bits reach a gap of 8 (the paper's example); a gap of 11 needs one filler zero."""
    W = np.zeros(16, np.float32)
    W[[1, 4, 15]] = [3.4, 0.9, 1.7]
    codes, stored = mp.relative_index_encode(np.flatnonzero(W), 3)
    assert stored.tolist() == [1, 4, 12, 15]
    assert (codes + 1).tolist() == [2, 3, 8, 3]
    assert mp.pack_sparse(W[None, :], index_bits=3).meta["fillers"] == 1
    assert mp.pack_sparse(np.zeros((3, 3), np.float32)).meta["count"] == 0


@pytest.mark.parametrize("bad, err", [
    (np.array([[1, 2]]), TypeError), (np.zeros((0, 3)), ValueError),
    (np.array([[np.nan, 1.0]]), ValueError), (np.array([[np.inf, 1.0]]), ValueError),
    ([[1.0, 2.0]], TypeError)])
def test_bad_weights_raise(bad, err):
    with pytest.raises(err):
        mp.topk_mask(bad, 0.5)
    with pytest.raises(err):
        mp.pack_sparse(bad)


def test_bad_arguments_raise():
    W = np.ones((3, 3))
    for call, err in [(lambda: mp.topk_mask(W, 1.5), ValueError),
                      (lambda: mp.topk_mask(W, -0.1), ValueError),
                      (lambda: mp.topk_mask(W, 0.5, np.ones((2, 2), bool)), TypeError),
                      (lambda: mp.std_threshold_mask(W, -1.0), ValueError),
                      (lambda: mp.std_threshold_mask(W, float("nan")), ValueError),
                      (lambda: mp.pack_sparse(W, index_bits=0), ValueError),
                      (lambda: mp.pack_sparse(W, index_bits=17), ValueError),
                      (lambda: mp.pack_sparse(W, index_bits=2.0), TypeError),
                      (lambda: mp.cubic_sparsity(0, 0.0, 0.9, 0, 0, 10), ValueError),
                      (lambda: mp.iterative_targets(0.9, 0), ValueError),
                      (lambda: mp.prune_params({"W": W}, 0.5, scope="row"), ValueError),
                      (lambda: mp.global_topk_masks({}, 0.5), ValueError)]:
        with pytest.raises(err):
            call()
