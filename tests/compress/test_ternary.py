"""compress/ternary.py: TWN (Li & Liu 2016, arXiv 1605.04711) as TernaryBERT uses it (Zhang et al.
2020, arXiv 2009.12812). Equation labels (T1)-(T6) are the module docstring's."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.compress import ternary as tn
from tinyzip.compress.base import PackedTensor
from tinyzip.compressed import kernel_matmuls, unpack
from tinyzip.kernels.lut_gemm import lut_linear, prepare_lut_weights
from tinyzip.nn import optim
from tinyzip.nn.gradcheck import check_backward
from tinyzip.packing import packed_nbytes
from tests.strategies import floats_st, matrix_st

gran_st = st.sampled_from(list(tn.GRANULARITIES))
AXIS = {"tensor": None, "output": 0, "row": 1}


def _error(W, T, alpha):
    return float(np.sum((W - alpha * T) ** 2))


@given(matrix_st(), gran_st)
def test_t2_codes_are_trits_and_values_are_minus_zero_plus_alpha(W, granularity):
    T, alpha = tn.ternarize(W, granularity, clip=None)
    assert T.dtype == np.int8 and set(np.unique(T)) <= {-1, 0, 1}
    assert np.all(alpha >= 0)
    axis = AXIS[granularity]
    nonzero = np.any(W != 0, axis=axis, keepdims=True)
    assert np.all(alpha[np.broadcast_to(nonzero, alpha.shape)] > 0)     # alpha > 0 whenever W != 0
    assert np.array_equal(np.sign(T[T != 0]), np.sign(W[T != 0]))


@given(matrix_st(max_side=9), gran_st, st.floats(-0.5, 0.5).filter(lambda d: abs(d) > 1e-6))
def test_t3_scale_is_optimal_for_its_threshold(W, granularity, step):
    """For the codes of (T2), J(alpha) is a parabola whose minimum is (T3)'s mean of the kept |W|:
    the derivative sum T (W - alpha T) is 0, a shifted alpha is never better, and J(alpha*) equals
    ||W||^2 - (sum_kept |W|)^2 / |kept|."""
    T, alpha = tn.ternarize(W, granularity, clip=None)
    axis = AXIS[granularity]
    J = lambda a: np.sum((W - a * T) ** 2, axis=axis)  # noqa: E731
    assert np.allclose(np.sum(T * (W - alpha * T), axis=axis), 0.0, atol=1e-9)
    assert np.all(J(np.maximum(alpha + step, 0)) >= J(alpha) - 1e-9)
    kept = np.sum(np.abs(W) * (T != 0), axis=axis)
    count = np.maximum(np.sum(T != 0, axis=axis), 1)
    assert np.allclose(J(alpha), np.sum(W * W, axis=axis) - kept ** 2 / count, atol=1e-8)


@given(hynp.arrays(np.float64, st.integers(1, 6), elements=floats_st(bound=5.0)))
def test_t4_exact_threshold_reaches_the_brute_force_optimum_of_t1(w):
    """min over all 3^n ternary T and alpha > 0 of ||w - alpha T||^2 (alpha = w.T / T.T for each T)
    equals the error at ``optimal_threshold``: the best T has TWN's threshold form."""
    W = w[None, :]
    best = float(w @ w)                                     # T = 0
    for T in itertools.product([-1.0, 0.0, 1.0], repeat=w.size):
        T = np.array(T)
        if T @ T and w @ T > 0:
            best = min(best, float(w @ w) - float(w @ T) ** 2 / float(T @ T))
    T, alpha = tn.ternarize(W, "tensor", clip=None, delta=tn.optimal_threshold(W))
    assert _error(W, T, alpha) == pytest.approx(best, rel=1e-9, abs=1e-9)
    T7, alpha7 = tn.ternarize(W, "tensor", clip=None)      # (T5) can only be as good
    assert _error(W, T7, alpha7) >= best - 1e-9


def _continuous_optimum(dist: str) -> float:
    """Delta* / E|W| for a density: (T4) is stationary where Delta = alpha*(Delta) / 2 =
    E[|W| : |W| > Delta] / 2. Uniform[-1, 1]: Delta = (1 + Delta) / 4 = 1/3, E|W| = 1/2. Standard
    normal: Delta = phi(Delta) / (2 (1 - Phi(Delta))), solved by bisection, E|W| = sqrt(2 / pi)."""
    if dist == "uniform":
        return (1 / 3) / (1 / 2)
    lo, hi = 0.0, 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        tail_mean = math.exp(-mid * mid / 2) / math.sqrt(2 * math.pi) / (0.5 * math.erfc(mid / math.sqrt(2)))
        lo, hi = (mid, hi) if mid < tail_mean / 2 else (lo, mid)
    return lo / math.sqrt(2 / math.pi)


@pytest.mark.parametrize("dist", ["normal", "uniform"])
def test_t5_seven_tenths_is_near_the_exact_threshold_on_large_samples(dist):
    """TWN's justification of (T5): Delta* / E|W| is 2/3 for a uniform W and ~0.77 for a Gaussian;
    the exact (T4) on 200k samples finds those, and Delta = 0.7 E|W| costs under 1% more error."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((1, 200_000)) if dist == "normal" else rng.uniform(-1, 1, (1, 200_000))
    delta = tn.optimal_threshold(W)
    assert delta.item() / np.mean(np.abs(W)) == pytest.approx(_continuous_optimum(dist), abs=0.01)
    exact = _error(W, *tn.ternarize(W, "tensor", clip=None, delta=delta))
    approx = _error(W, *tn.ternarize(W, "tensor", clip=None))
    assert exact <= approx < 1.01 * exact


def test_t2_threshold_ties_go_to_zero():
    W = np.array([[0.5, -0.5, 0.50000001, -2.0]])
    assert tn.ternary_codes(W, 0.5).tolist() == [[0, 0, 1, -1]]
    W = np.array([[1.0, 1.0, 0.1]])                         # mean|W| = 0.7, Delta = 0.49
    T, alpha = tn.ternarize(W, clip=None)
    assert T.tolist() == [[1, 1, 0]] and alpha.item() == 1.0


@given(matrix_st(), gran_st, st.integers(-4, 4), st.randoms(use_true_random=False))
def test_twn_sign_symmetry_scale_and_permutation_equivariance(W, granularity, e, rnd):
    T, alpha = tn.ternarize(W, granularity, clip=None)
    Tn, alphan = tn.ternarize(-W, granularity, clip=None)
    assert np.array_equal(Tn, -T) and np.array_equal(alphan, alpha)
    c = 2.0 ** e                                            # exact in floating point
    Tc, alphac = tn.ternarize(c * W, granularity, clip=None)
    assert np.array_equal(Tc, T) and np.allclose(alphac, c * alpha, rtol=1e-12, atol=0)
    if granularity == "tensor":
        order = list(range(W.shape[1]))
        rnd.shuffle(order)
        Tp, alphap = tn.ternarize(W[:, order], granularity, clip=None)
        assert np.array_equal(Tp, T[:, order]) and np.allclose(alphap, alpha, rtol=1e-12)


@given(hynp.arrays(np.float64, st.tuples(st.just(1), st.integers(1, 17)), elements=floats_st()))
def test_row_wise_on_one_row_equals_layer_wise(W):
    Tr, ar = tn.ternarize(W, "row", clip=None)
    Tt, at = tn.ternarize(W, "tensor", clip=None)
    assert np.array_equal(Tr, Tt) and np.array_equal(ar, at)


@given(gran_st, st.integers(-24, 24).filter(lambda k: k != 0).map(lambda k: k / 8))  # dyadic: exact means
def test_degenerate_groups_give_zeros_or_exact_values(granularity, c):
    """All-zero W: no kept entry, alpha = 0 (not TernaryBERT's 0/0 = NaN); constant W: every
    entry kept (0.7|c| < |c|), exact; one nonzero entry: kept, exact."""
    Z = np.zeros((3, 4))
    T, alpha = tn.ternarize(Z, granularity)
    assert not np.any(T) and np.array_equal(alpha, np.zeros_like(alpha))
    C = np.full((3, 4), c)
    assert np.array_equal(np.multiply(*reversed(tn.ternarize(C, granularity, clip=None))), C)
    S = np.zeros((3, 4))
    S[1, 2] = c
    T, alpha = tn.ternarize(S, "tensor", clip=None)
    assert np.array_equal(alpha * T, S)
    assert tn.optimal_threshold(Z).item() == 0.0


def test_t6_weights_are_clipped_before_the_threshold():
    W = np.array([[10.0, 0.1, -0.2, -7.0]])
    assert tn.clip_weights(W).tolist() == [[2.5, 0.1, -0.2, -2.5]]
    T, alpha = tn.ternarize(W)                               # Delta = 0.7 * 5.3 / 4 = 0.9275 on the clipped W
    assert T.tolist() == [[1, 0, 0, -1]] and alpha.item() == 2.5
    assert tn.clip_weights(W, None) is W


def test_t6_ste_passes_strictly_inside_the_clip_and_zero_at_and_beyond():
    c = tn.CLIP
    W = np.array([-3.0, -c, -np.nextafter(c, 0.0), 0.0, np.nextafter(c, 0.0), c, 3.0])
    g = np.arange(1.0, 8.0)
    assert tn.ste_backward(g, W).tolist() == [0.0, 0.0, 3.0, 4.0, 5.0, 0.0, 0.0]
    assert tn.ste_backward(g, W, clip=None).tolist() == g.tolist()


@given(st.integers(0, 2 ** 31))
def test_t6_ste_is_the_exact_gradient_of_its_surrogate(seed):
    """The STE is d/dW clip(W, -c, c): float64 central differences away from the kinks at +-c."""
    rng = np.random.default_rng(seed)
    mag = np.where(rng.random((4, 5)) < 0.5, 2.4 * rng.random((4, 5)), 2.6 + rng.random((4, 5)))
    W = mag * np.where(rng.random((4, 5)) < 0.5, 1.0, -1.0)
    t = tn.TernaryTransform("tensor")
    check_backward(lambda V: (np.clip(V, -tn.CLIP, tn.CLIP), V), t.backward, [W], rng=rng)


def test_ternary_qat_trains_through_real_adam_steps():
    """Effective weights stay in {-alpha, 0, alpha} at every step while the loss falls."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 6))
    target = tn.ternarize(rng.standard_normal((6, 4)))
    y = x @ (target[1] * target[0])
    params = {"enc.0.ffn.W_1": 0.5 * rng.standard_normal((6, 4))}
    method = tn.ternary_method({"enc.0.ffn.W_1": "tensor"})
    state, losses = optim.adam_init(params), []
    for _ in range(60):
        eff, cache = method.forward(params)
        We = eff["enc.0.ffn.W_1"]
        assert len(np.unique(np.abs(We[We != 0]))) <= 1
        losses.append(float(np.mean((x @ We - y) ** 2)))
        grads = method.backward({"enc.0.ffn.W_1": x.T @ (x @ We - y) / len(x)}, cache)
        params, state = optim.adam_step(params, grads, state, 0.02)
    assert losses[-1] < 0.5 * losses[0]


@given(matrix_st(max_side=20), gran_st, st.sampled_from([np.float32, np.float64]))
def test_pack_round_trip_and_two_bits_per_weight(W, granularity, dtype):
    W = W.astype(dtype)
    packed = tn.pack_ternary(W, granularity)
    T, alpha = tn.ternarize(W, granularity)
    assert np.array_equal(tn.unpack_ternary(packed), alpha.astype(np.float32) * T)
    n_alpha = {"tensor": 1, "output": W.shape[1], "row": W.shape[0]}[granularity]
    assert packed.nbytes == packed_nbytes(W.size, 2) + 4 * n_alpha


@given(matrix_st(max_side=12), st.sampled_from(["tensor", "output"]))
def test_ternary_is_a_two_bit_binary_code_with_equal_alphas(W, granularity):
    """alpha T == (alpha/2) b_1 + (alpha/2) b_2 exactly, so the LUT kernel runs it as q = 2."""
    T, alpha = tn.ternarize(W, granularity)
    codes, alphas = tn.as_binary_codes(T, alpha)
    assert set(np.unique(codes)) <= {-1, 1}
    assert np.array_equal(alphas[0] * codes[0] + alphas[1] * codes[1], alpha * T)


@pytest.mark.parametrize("granularity, K, N, M", [("tensor", 300, 260, 1), ("output", 512, 1024, 1),
                                                  ("output", 100, 70, 9), ("tensor", 1024, 512, 40)])
def test_lut_kernel_on_a_ternary_file_equals_its_dense_product(granularity, K, N, M):
    rng = np.random.default_rng(K + N)
    packed = tn.pack_ternary(rng.standard_normal((K, N)).astype(np.float32), granularity)
    codes, alphas = tn.lut_codes(packed)
    prepared = prepare_lut_weights(codes=codes, alphas=alphas)
    x = rng.standard_normal((M, K)).astype(np.float32)
    dense = x.astype(np.float64) @ unpack(packed).astype(np.float64)
    tol = 4 * K * np.finfo(np.float32).eps * float(np.abs(x).sum(axis=1).max() * np.abs(unpack(packed)).max())
    np.testing.assert_allclose(lut_linear(x, prepared, path="lut"), dense, atol=tol, rtol=0)   # the kernel
    np.testing.assert_allclose(kernel_matmuls({"W": packed})["W"](x), dense, atol=tol, rtol=0)  # the layer
    assert "W" not in kernel_matmuls({"W": tn.pack_ternary(rng.standard_normal((K, N)), "row")})


@pytest.mark.parametrize("W, err", [
    (np.array([[1, 2]]), TypeError), (np.zeros((0, 3)), ValueError), (np.ones(3), ValueError),
    (np.array([[np.nan, 1.0]]), ValueError), (np.array([[np.inf, 1.0]]), ValueError), ([[1.0]], TypeError)])
def test_bad_weights_raise(W, err):
    with pytest.raises(err):
        tn.pack_ternary(W)
    with pytest.raises(err):
        tn.optimal_threshold(W)


def test_bad_arguments_and_corrupt_files_raise():
    W = np.ones((2, 3))
    good = tn.pack_ternary(W, "output")
    three = np.full_like(good.arrays["codes"], 0xFF)        # every code 3: no trit
    for call in [lambda: tn.ternarize(W, "channel"), lambda: tn.ternarize(W, clip=0.0),
                 lambda: tn.ternarize(W, clip=np.nan), lambda: tn.ternary_method({"W": "block"}),
                 lambda: tn.unpack_ternary(PackedTensor("binary", (2, 3), good.arrays, good.meta)),
                 lambda: tn.unpack_ternary(PackedTensor("ternary", (2, 3), {**good.arrays, "codes": three}, good.meta)),
                 lambda: tn.unpack_ternary(PackedTensor("ternary", (2, 3), {**good.arrays, "alpha": np.ones(2, np.float32)},
                                                        good.meta)),
                 lambda: tn.unpack_ternary(PackedTensor("ternary", (2, 3), good.arrays, {"granularity": "bucket"})),
                 lambda: tn.unpack_ternary(PackedTensor("ternary", (2, 3), {**good.arrays, "alpha": np.full(3, np.nan,
                                                                                                            np.float32)},
                                                        good.meta))]:
        with pytest.raises(ValueError):
            call()
