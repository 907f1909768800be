"""compress/kmeans.py: Deep Compression (Han, Mao, Dally, ICLR 2016, arXiv 1510.00149) Sec. 3,
weight sharing by 1-D k-means and centroid fine-tuning."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.compress import kmeans as km
from tinyzip.compress.base import PackedTensor
from tinyzip.nn import optim
from tinyzip.nn.gradcheck import check_backward
from tinyzip.packing import packed_nbytes
from tests.strategies import floats_st, matrix_st, vector_st

init_st = st.sampled_from(["linear", "density", "forgy"])


def test_eq1_compression_rate_worked_example_and_limit():
    """Eq. (1): 16 weights, 4 shared values, 32 bits -> 16*32 / (16*2 + 4*32) = 3.2 (Fig. 3)."""
    assert km.compression_rate(16, 4) == pytest.approx(3.2)
    assert km.compression_rate(10 ** 12, 16) == pytest.approx(32 / 4, rel=1e-6)
    assert km.compression_rate(2, 256) < 1


@given(vector_st(min_size=2), st.integers(2, 20))
def test_sec32_linear_init_spans_min_max_evenly(x, k):
    c = km.linear_init(x, k)
    assert c[0] == x.min() and c[-1] == x.max()
    assert np.allclose(np.diff(c), (x.max() - x.min()) / (k - 1))


@given(vector_st(min_size=1), st.integers(1, 20))
def test_sec32_density_init_is_inverse_empirical_cdf(x, k):
    """c_j is an observed w with F(c_j) >= p_j > F(c_j^-), p_j = (j + 1/2) / k."""
    c = km.density_init(x, k)
    p = (np.arange(k) + 0.5) / k
    assert np.all(np.isin(c, x)) and np.all(np.diff(c) >= 0)
    for cj, pj in zip(c, p):
        assert np.mean(x <= cj) >= pj > np.mean(x < cj)


@given(vector_st(min_size=5), st.integers(1, 5), st.integers(0, 2 ** 31))
def test_sec32_forgy_init_draws_distinct_observations_reproducibly(x, k, seed):
    c1 = km.forgy_init(x, k, np.random.default_rng(seed))
    assert np.array_equal(c1, km.forgy_init(x, k, np.random.default_rng(seed)))
    remaining = list(x)
    for v in c1:              # a multiset draw: each observation used at most once
        remaining.remove(v)


@given(vector_st(max_size=30, bound=4.0), hynp.arrays(np.float64, st.integers(1, 6),
                                                      elements=floats_st(bound=4.0)))
def test_assignment_is_nearest_centroid_ties_to_lower_index(x, c):
    """Brute force per point: min over j of |x - c_j|, the first j attaining it."""
    x, c = np.round(x * 2) / 2, np.round(c * 2) / 2          # half-integers: many exact ties
    idx = km.assign(x, c)
    for xi, j in zip(x, idx):
        d = [abs(xi - cj) for cj in c]
        assert j == d.index(min(d))
    xs = np.sort(x)
    assert np.array_equal(km.assign_sorted(xs, c), km.assign(xs, c))   # the interval search


@given(hynp.arrays(np.float64, st.integers(1, 6), elements=floats_st(bound=4.0)),
       hynp.arrays(np.float64, st.integers(1, 3), elements=floats_st(bound=4.0)))
def test_eq2_assignment_minimises_sse_over_all_k_to_the_n_assignments(x, c):
    """For fixed centroids, nearest-centroid assignment is optimal (exhaustive on tiny inputs)."""
    best = min(sum((xi - c[j]) ** 2 for xi, j in zip(x, a))
               for a in itertools.product(range(c.size), repeat=x.size))
    assert km.sse(x, km.assign(x, c), c) <= best + 1e-12


@given(vector_st(min_size=2, max_size=60), st.integers(1, 8), init_st, st.integers(0, 99))
def test_eq2_lloyd_sse_never_increases_and_ends_at_member_means(x, k, init, seed):
    """SSE is non-increasing; at the fixed point every non-empty centroid is its members' mean."""
    k = min(k, x.size)
    c, idx, history = km.kmeans_1d(x, k, init, np.random.default_rng(seed), max_iter=500)
    assert all(b <= a * (1 + 1e-12) + 1e-12 for a, b in zip(history, history[1:]))
    assert np.array_equal(km.assign(x, c), idx)
    for j in np.unique(idx):
        assert c[j] == pytest.approx(x[idx == j].mean(), abs=1e-12)


@given(vector_st(min_size=2, max_size=8, bound=4.0), st.integers(1, 3))
def test_eq2_lloyd_is_never_below_the_exhaustive_optimum(x, k):
    """Optimal 1-D clusters are contiguous runs of sorted values; Lloyd cannot beat that optimum."""
    s = np.sort(x)
    best = math.inf
    for cuts in itertools.combinations(range(1, s.size), min(k, s.size) - 1):
        parts = np.split(s, cuts)
        best = min(best, sum(float(((p - p.mean()) ** 2).sum()) for p in parts))
    c, idx, _ = km.kmeans_1d(x, k)
    assert km.sse(x, idx, c) >= best - 1e-9


@given(hynp.arrays(np.float64, st.integers(1, 50), elements=st.sampled_from([-1.5, 0.25, 2.0, 7.0])),
       st.integers(4, 10))
def test_k_at_least_distinct_values_reconstructs_exactly(x, k):
    c, idx, _ = km.kmeans_1d(x, k)
    assert np.array_equal(c[idx], x)


@given(vector_st(min_size=2), init_st)
def test_k1_centroid_is_the_mean(x, init):
    c, idx, _ = km.kmeans_1d(x, 1, init, np.random.default_rng(0))
    assert np.all(idx == 0) and c[0] == pytest.approx(x.mean(), abs=1e-9)


@given(matrix_st(bound=3.0), hynp.arrays(bool, (17, 17)), st.integers(1, 7))
def test_pruned_zeros_stay_exactly_zero_in_the_zero_slot(W, keep, k):
    """Zeros are not clustered: they index codebook[k] == 0; at most k shared non-zero values."""
    W = W * keep[: W.shape[0], : W.shape[1]]
    codebook, idx = km.kmeans_quantize(W, k)
    Q = codebook[idx]
    assert np.all(Q[W == 0] == 0)
    assert np.unique(idx[W != 0]).size <= k
    if (W == 0).any():
        assert codebook.size == k + 1 and codebook[k] == 0 and np.all(idx[W == 0] == k)


@given(hynp.arrays(np.float64, (5, 4), elements=floats_st()), st.integers(1, 6))
def test_eq3_centroid_gradient_is_bincount_and_gradchecks(dW, K):
    """dL/dC_k = sum of dL/dW over members: np.bincount; gradient check of C -> C[I]."""
    rng = np.random.default_rng(K)
    idx = rng.integers(0, K, size=(5, 4))
    C = rng.standard_normal(K)
    _, cache = km.shared_weights_forward(C, idx)
    dC = km.shared_weights_backward(dW, cache)
    assert np.array_equal(dC, np.bincount(idx.ravel(), weights=dW.ravel(), minlength=K))
    assert dC.sum() == pytest.approx(dW.sum())
    check_backward(lambda c: km.shared_weights_forward(c, idx), km.shared_weights_backward, [C])


def test_eq3_sgd_step_through_transform_is_the_papers_centroid_step():
    """SGD on the stored W with the transform's gradient == C_k -= lr dL/dC_k, member by member."""
    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((8, 6)) * (rng.random((8, 6)) > 0.3)
    params, method = km.kmeans_method({"out.W": W0}, ["out.W"], 5)
    t = method.transforms["out.W"]
    C = np.bincount(t.idx.ravel(), weights=params["out.W"].ravel(), minlength=t.K) \
        / np.maximum(np.bincount(t.idx.ravel(), minlength=t.K), 1)
    dW_eff = rng.standard_normal((8, 6))
    eff, cache = method.forward(params)
    assert np.array_equal(eff["out.W"], params["out.W"])
    grads = method.backward({"out.W": dW_eff}, cache)
    new, _ = optim.sgd_step(params, grads, optim.sgd_init(params), 0.1, momentum=0.0)
    dC = np.bincount(t.idx.ravel(), weights=dW_eff.ravel(), minlength=t.K)
    dC[-1] = 0.0                                         # the frozen zero slot
    assert np.allclose(new["out.W"], (C - 0.1 * dC)[t.idx], rtol=0, atol=1e-12)
    assert np.all(new["out.W"][W0 == 0] == 0)


def test_trained_quantization_stays_shared_under_adam_with_after_step():
    """Through real Adam steps with after_step: <= K distinct values per layer, zeros stay zero."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((16, 6)), rng.standard_normal((16, 4))
    W0 = rng.standard_normal((6, 4)) * (rng.random((6, 4)) > 0.4)
    params, method = km.kmeans_method({"W": W0}, ["W"], 3)
    state = optim.adam_init(params)
    state["m"]["W"] = rng.standard_normal((6, 4))          # moments that differ inside clusters
    for _ in range(10):
        eff, cache = method.forward(params)
        grads = method.backward({"W": x.T @ (x @ eff["W"] - y)}, cache)
        params, state = optim.adam_step(params, grads, state, 0.01)
        params = method.after_step(params)
        assert np.unique(params["W"][W0 != 0]).size <= 3
        assert np.all(params["W"][W0 == 0] == 0)


@given(matrix_st(bound=3.0), hynp.arrays(bool, (17, 17)), st.integers(1, 9),
       st.one_of(st.none(), st.integers(1, 6)), st.sampled_from([np.float32, np.float64]))
def test_pack_kmeans_round_trip_dense_and_sparse(W, keep, k, gap_bits, dtype):
    """unpack(pack(W)) == codebook[idx] in float32; indices take ceil(log2 K) bits each."""
    W = (W * keep[: W.shape[0], : W.shape[1]]).astype(dtype)
    codebook, idx = km.kmeans_quantize(W, k)
    packed = km.pack_kmeans(W, k, gap_bits=gap_bits)
    assert np.array_equal(km.unpack_kmeans(packed), codebook.astype(np.float32)[idx])
    bits = packed.meta["index_bits"]
    assert bits == max(1, math.ceil(math.log2(codebook.size)))
    assert packed.arrays["indices"].size == packed_nbytes(packed.meta["count"], bits)
    if gap_bits is None:
        assert packed.meta["count"] == W.size


def test_k_of_2_to_the_b_minus_1_with_zeros_keeps_b_bits():
    W = np.arange(-20.0, 20.0).reshape(5, 8)
    assert km.pack_kmeans(W, 15).meta["index_bits"] == 4 and km.pack_kmeans(W, 15).meta["K"] == 16


@pytest.mark.parametrize("W, k, err", [
    (np.array([[1, 2]]), 2, TypeError), (np.zeros((0, 2)), 2, ValueError),
    (np.array([[np.nan, 1.0]]), 2, ValueError), (np.array([[1.0, -np.inf]]), 2, ValueError),
    (np.ones((2, 2)), 0, ValueError), (np.ones((2, 2)), 2 ** 16 + 1, ValueError),
    (np.ones((2, 2)), 2.0, TypeError), ([[1.0]], 2, TypeError)])
def test_bad_input_raises(W, k, err):
    with pytest.raises(err):
        km.pack_kmeans(W, k)


def test_bad_init_and_rng_raise():
    x = np.arange(10.0)
    with pytest.raises(ValueError):
        km.kmeans_1d(x, 3, init="kmeans++")
    with pytest.raises(TypeError):
        km.kmeans_1d(x, 3, init="forgy")
    with pytest.raises(ValueError):
        km.forgy_init(x, 11, np.random.default_rng(0))
    with pytest.raises(ValueError):
        km.kmeans_1d(x, 3, max_iter=0)
    with pytest.raises(ValueError):
        km.unpack_kmeans(PackedTensor("sparse", (2, 2), {}, {}))
