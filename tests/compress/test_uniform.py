"""compress/uniform.py: Jacob et al. 2018 (arXiv 1712.05877), Q8BERT (Zafrir et al. 2019, arXiv
1910.06188), Fully Quantized Transformer (Prato et al. 2020, arXiv 1910.10485)."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.compress import fqt as F
from tinyzip.compress import uniform as U
from tinyzip.compress.base import Method, PackedTensor
from tinyzip.nn.gradcheck import check_backward
from tinyzip.packing import packed_nbytes
from tests.strategies import floats_st, matrix_st

bits_st = st.integers(2, 8)
grid_st = st.sampled_from([(False, False), (True, False), (False, True)])  # (symmetric, unsigned)
int32_st = st.integers(U.INT32_MIN, U.INT32_MAX)


@st.composite
def range_st(draw):
    a, b = draw(floats_st(bound=1e3)), draw(floats_st(bound=1e3))
    return min(a, b), max(a, b)


@given(range_st(), bits_st, grid_st)
def test_eq1_zero_is_exactly_representable(rng_, bits, grid):
    """Jacob Sec. 2.1: the range is widened to contain 0, so S (round(0 / S + Z) - Z) == 0 exactly."""
    scale, zp = U.quant_params(*rng_, bits, *grid)
    qmin, qmax = U.qrange(bits, *grid)
    assert scale > 0 and qmin <= zp <= qmax
    q = U.quantize(np.zeros(3), scale, zp, bits, *grid)
    assert np.all(U.dequantize(q, scale, zp, np.float64) == 0.0)


@given(range_st(), bits_st, grid_st)
@example((-1.0, 1.0), 2, (False, False))  # ties: qmin - lo / S = -1/2, lo / S + Z = qmin - 1/2
@example((-1.0, 5.0), 2, (False, False))
def test_eq1_range_ends_map_to_grid_ends(rng_, bits, grid):
    """x_min, x_max (widened to contain 0) land on qmin, qmax; symmetric: -+max|x| on -+qmax;
    unsigned: 0 and x_max on 0 and qmax."""
    symmetric, unsigned = grid
    lo, hi = min(rng_[0], 0.0), max(rng_[1], 0.0)
    if unsigned:
        lo = 0.0
    elif symmetric:
        lo, hi = -max(-lo, hi), max(-lo, hi)
    if lo == hi:  # all-zero range: only the zero code exists
        return
    scale, zp = U.quant_params(lo, hi, bits, *grid)
    q = U.quantize(np.array([lo, hi]), scale, zp, bits, *grid)
    assert q.tolist() == list(U.qrange(bits, *grid))


@given(matrix_st(bound=100.0), bits_st, grid_st)
def test_eq1_rounding_error_at_most_half_step_inside_the_range(W, bits, grid):
    """|S (q - Z) - x| <= S / 2 for every x in [x_min, x_max] (min/max range of x itself)."""
    symmetric, unsigned = grid
    if unsigned:
        W = np.abs(W)
    scale, zp = U.quant_params(W.min(), W.max(), bits, *grid)
    W_hat = U.dequantize(U.quantize(W, scale, zp, bits, *grid), scale, zp, np.float64)
    assert np.all(np.abs(W_hat - W) <= scale / 2 * (1 + 1e-9) + 1e-12 * np.abs(W))


@given(matrix_st(bound=100.0), bits_st, st.booleans(), st.integers(1, 5))
def test_fqt_per_channel_and_bucket_steps_never_exceed_per_tensor(W, bits, symmetric, bucket):
    """Min/max ranges: a column's range is a subset of the tensor's and a bucket's of its column's,
    so the steps obey S_bucket <= S_channel <= S_tensor (for groups that are not all zero: those
    get the placeholder S = 1 and no error), and the channel error is <= S_tensor / 2."""
    s_t, _ = U.quant_params(*U.minmax_range(W, "tensor"), bits, symmetric)
    s_c, z_c = U.quant_params(*U.minmax_range(W, "channel"), bits, symmetric)
    s_b, _ = U.quant_params(*U.minmax_range(W, "bucket", bucket), bits, symmetric)
    s_c_b = np.repeat(s_c, len(s_b), 0)
    nonzero_c = np.any(W != 0, axis=0, keepdims=True)
    nonzero_b = np.maximum.reduceat(np.abs(W), np.arange(0, W.shape[0], bucket), axis=0) > 0
    assert np.all((s_c <= s_t * (1 + 1e-12)) | ~nonzero_c)
    assert np.all((s_b <= s_c_b * (1 + 1e-12)) | ~nonzero_b)
    W_hat = U.dequantize(U.quantize(W, s_c, z_c, bits, symmetric), s_c, z_c, np.float64)
    assert np.all(np.abs(W_hat - W) <= s_t / 2 * (1 + 1e-9) + 1e-12 * np.abs(W))


@given(matrix_st(max_side=9), st.integers(9, 20))
def test_fqt_bucket_as_large_as_the_column_is_per_channel(W, bucket):
    a = U.UniformWeightQuantizer(4, "bucket", False, bucket).forward(W)[0]
    b = U.UniformWeightQuantizer(4, "channel", False).forward(W)[0]
    assert np.array_equal(a, b)


@pytest.mark.parametrize("c", [0.0, 3.25, -1e-3, 7e5])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "bucket"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_constant_or_zero_tensor_gives_no_nan(c, granularity, symmetric):
    W = np.full((6, 3), c, np.float32)
    W_hat, mask = U.UniformWeightQuantizer(3, granularity, symmetric, 4).forward(W)
    assert np.all(np.isfinite(W_hat)) and mask.all()
    assert np.allclose(W_hat, c, rtol=1e-6, atol=0)
    assert (c != 0.0) or np.all(W_hat == 0.0)


@given(matrix_st(), bits_st, grid_st)
def test_eq1_requantizing_with_the_same_parameters_is_a_no_op(W, bits, grid):
    scale, zp = U.quant_params(W.min(), W.max(), bits, *grid)
    once, _ = U.fake_quant_forward(W, scale, zp, bits, *grid)
    twice, _ = U.fake_quant_forward(once, scale, zp, bits, *grid)
    assert np.array_equal(once, twice)


@given(matrix_st(), bits_st, st.sampled_from(["tensor", "channel", "bucket"]), st.booleans())
@example(np.array([[-1.0, 1.0]]), 2, "tensor", False)  # tie: qmin - lo / S = -1/2 exactly
def test_requantizing_a_quantized_weight_is_a_no_op(W, bits, granularity, symmetric):
    """The nudge puts min/max of W on qmin/qmax, so W_hat spans the whole grid and re-deriving
    (S, Z) from W_hat reproduces W_hat (S up to one float32 rounding)."""
    t = U.UniformWeightQuantizer(bits, granularity, symmetric, 3)
    once = t.forward(W.astype(np.float32))[0]
    np.testing.assert_allclose(t.forward(once)[0], once, rtol=1e-6, atol=1e-6 * np.abs(W).max())


@given(hynp.arrays(np.float64, st.integers(1, 40), elements=floats_st(bound=20.0)), bits_st, grid_st)
def test_ste_clipped_passes_gradient_where_the_clamp_is_inactive_and_zero_where_it_acts(x, bits, grid):
    """The clipped STE: dx = dx_hat * [qmin <= round(x / S + Z) <= qmax], i.e. x inside
    [S (qmin - Z - 1/2), S (qmax - Z + 1/2)] (PyTorch's cachemask; Jacob's TF and FQT's clamp stop
    half a step earlier); the range here is [-5, 5], x reaches +-20."""
    scale, zp = U.quant_params(-5.0, 5.0, bits, *grid)
    qmin, qmax = U.qrange(bits, *grid)
    dx_hat = np.arange(1.0, x.size + 1)
    _, cache = U.fake_quant_forward(x, scale, zp, bits, *grid)
    lo, hi = scale * (qmin - zp - 0.5), scale * (qmax - zp + 0.5)
    expected = np.where((x > lo) & (x < hi), dx_hat, 0.0)
    ties = np.isclose(x, lo, rtol=1e-12) | np.isclose(x, hi, rtol=1e-12)  # boundary: rounding decides
    assert np.array_equal(U.fake_quant_backward(dx_hat, cache)[~ties], expected[~ties])
    _, cache = U.fake_quant_forward(x, scale, zp, bits, *grid, ste="q8bert")
    assert np.array_equal(U.fake_quant_backward(dx_hat, cache), dx_hat)  # Q8BERT: pass everything


@given(matrix_st(), bits_st, st.sampled_from(["tensor", "channel", "bucket"]), st.booleans())
@example(np.array([[1.0, -1.0]]), 2, "tensor", False)  # tie: the nudge puts 1.0 at qmax + 1/2
def test_ste_min_max_weights_are_clamped_at_most_at_a_half_step_tie(W, bits, granularity, symmetric):
    """With (S, Z) from W's own min/max, every x / S + Z lies in [qmin - 1/2, qmax + 1/2] up to the
    float32 rounding of S (eps below), so the clipped STE passes every gradient except, on an exact
    tie, that of a group's min or max weight, which the nudge left half a step outside the grid."""
    _, mask = U.UniformWeightQuantizer(bits, granularity, symmetric, 3).forward(W)
    scale, zp = U.weight_qparams(W, bits, granularity, symmetric, 3)
    u = W / U._expand(scale, W.shape, granularity, 3) + U._expand(zp, W.shape, granularity, 3)
    qmin, qmax = U.qrange(bits, symmetric)
    eps = (qmax - qmin) * 2.0 ** -22
    assert np.all((u >= qmin - 0.5 - eps) & (u <= qmax + 0.5 + eps))
    at_tie = (np.abs(u - (qmin - 0.5)) <= eps) | (np.abs(u - (qmax + 0.5)) <= eps)
    assert np.all(mask | at_tie)


@given(hynp.arrays(np.float64, st.integers(1, 12), elements=floats_st(bound=8.0)), bits_st)
def test_ste_is_the_exact_gradient_of_its_clip_surrogate(x, bits):
    """Gradient check: the clipped STE equals d/dx clip(x, lo, hi) with lo, hi the half-step-widened
    grid ends (central differences, float64)."""
    scale, zp = U.quant_params(-3.0, 5.0, bits)
    qmin, qmax = U.qrange(bits)
    lo, hi = scale * (qmin - zp - 0.5), scale * (qmax - zp + 0.5)
    x = x[(np.abs(x - lo) > 1e-3) & (np.abs(x - hi) > 1e-3)]  # away from the two kinks
    if x.size == 0:
        return

    def forward(v):
        return np.clip(v, lo, hi), U.fake_quant_forward(v, scale, zp, bits)[1]

    check_backward(forward, U.fake_quant_backward, [x.copy()])


def test_rounding_is_half_to_even_on_exact_ties():
    """Ties x / S = k + 1/2 go to the even k (NumPy, PyTorch, Q8BERT); TFLite would give 3 and -3."""
    q = U.quantize(np.array([0.5, 1.5, 2.5, -2.5]), 1.0, 0, 8, symmetric=True)
    assert q.tolist() == [0, 2, 2, -2]


@given(matrix_st(), bits_st)
def test_q8bert_symmetric_grid_is_odd_and_max_maps_to_qmax(W, bits):
    scale, zp = U.quant_params(W.min(), W.max(), bits, symmetric=True)
    q, q_neg = U.quantize(W, scale, zp, bits, True), U.quantize(-W, scale, zp, bits, True)
    assert np.array_equal(q_neg, -q)
    if np.abs(W).max() > 0:
        assert np.abs(q).max() == 2 ** (bits - 1) - 1


@given(st.lists(floats_st(bound=50.0), min_size=1, max_size=6), floats_st(bound=50.0), st.integers(0, 20))
def test_fqt_ema_minmax_momentum_0p9(first, m, k):
    """FQT: x <- 0.9 x + 0.1 batch; starting from the first batch range, k constant batches m give
    m + (e0 - m) 0.9^k."""
    state = U.ema_minmax(None, np.array(first))
    assert state == (min(first), max(first))
    for _ in range(k):
        state = U.ema_minmax(state, np.array([m]))
    np.testing.assert_allclose(state, [m + (e - m) * 0.9 ** k for e in (min(first), max(first))],
                               rtol=1e-12, atol=1e-12)


@given(floats_st(bound=50.0), floats_st(bound=50.0), st.integers(0, 20))
def test_q8bert_ema_of_max_abs_decay_0p9999(first, m, k):
    t = U.ema_absmax(None, np.array([first]))
    assert t == abs(first)
    for _ in range(k):
        t = U.ema_absmax(t, np.array([m]))
    np.testing.assert_allclose(t, abs(m) + (abs(first) - abs(m)) * 0.9999 ** k, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- export
@given(matrix_st(max_side=12), bits_st, st.sampled_from(["tensor", "channel", "bucket"]), st.booleans())
def test_pack_unpack_equals_the_training_transform(W, bits, granularity, symmetric):
    W = W.astype(np.float32)
    packed = U.pack_uniform(W, bits, granularity, symmetric, 5)
    assert isinstance(packed, PackedTensor) and packed.method == "uniform"
    t = U.UniformWeightQuantizer(bits, granularity, symmetric, 5)
    assert np.array_equal(U.unpack_uniform(packed), t.forward(W)[0])
    values = packed.arrays["values"]
    assert values.nbytes == (W.size if bits == 8 else packed_nbytes(W.size, bits))
    assert values.dtype == (np.int8 if bits == 8 else np.uint8)


def test_pack_8bit_takes_a_quarter_and_4bit_an_eighth_of_float32():
    W = np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32)
    for bits, ratio in ((8, 4), (4, 8)):
        packed = U.pack_uniform(W, bits, "channel", symmetric=False)
        overhead = 128 * (4 + 1)  # float32 scale + int8 zero point per output column
        assert packed.nbytes == W.nbytes // ratio + overhead
    assert U.pack_uniform(W, 8, "channel").arrays["values"].shape == (256, 128)


# ----------------------------------------------------------------------------- integer inference
@given(st.floats(1e-9, 1 - 1e-9), st.integers(0, 20))
def test_eq6_quantize_multiplier_normalised_fixed_point(M, _):
    """M = 2^-n M0, M0_q = round(M0 2^31) in [2^30, 2^31), |M0_q 2^-(31+n) - M| <= 2^-(32+n)."""
    M0_q, n = (int(v) for v in U.quantize_multiplier(M))
    assert 2 ** 30 <= M0_q < 2 ** 31 and 0 <= n <= 31
    assert abs(Fraction(M0_q, 2 ** (31 + n)) - Fraction(M)) <= Fraction(1, 2 ** (32 + n))


def test_eq6_quantize_multiplier_powers_of_two_and_carry():
    assert [tuple(map(int, U.quantize_multiplier(m))) for m in (0.5, 0.25)] == [(2 ** 30, 0), (2 ** 30, 1)]
    M0_q, n = U.quantize_multiplier(0.25 * (1 - 2.0 ** -40))  # M0 rounds to 1.0: renormalised
    assert (int(M0_q), int(n)) == (2 ** 30, 1)


def _srdhm_exact(a, b):
    if a == b == U.INT32_MIN:
        return U.INT32_MAX
    return (Fraction(a * b, 2 ** 31) + Fraction(1, 2)).__floor__()


@given(st.lists(st.tuples(int32_st, int32_st), min_size=1, max_size=50))
def test_srdhm_is_round_half_up_of_ab_over_2p31(pairs):
    a, b = np.array(pairs, np.int64).T
    assert U.srdhm_reference(a, b).tolist() == [_srdhm_exact(int(x), int(y)) for x, y in pairs]


@given(st.integers(-(2 ** 30), 2 ** 30))
def test_srdhm_ties_round_up_and_saturation(j):
    """a b / 2^31 = j + 1/2 exactly (b = 2^30, a = 2 j + 1) rounds up, also for negatives;
    SRDHM(-2^31, -2^31) saturates to 2^31 - 1."""
    a = 2 * j + 1
    if U.INT32_MIN <= a <= U.INT32_MAX:
        assert int(U.srdhm_reference(a, 2 ** 30)) == j + 1 == _srdhm_exact(a, 2 ** 30)
    assert int(U.srdhm_reference(U.INT32_MIN, U.INT32_MIN)) == U.INT32_MAX


def _rdivpot_exact(x, n):
    f = Fraction(x, 2 ** n)
    r = (abs(f) + Fraction(1, 2)).__floor__()
    return r if x >= 0 else -r


@given(st.lists(int32_st, min_size=1, max_size=50), st.integers(0, 31))
def test_rounding_divide_by_pot_is_half_away_from_zero(xs, n):
    x = np.array(xs + [2 ** n // 2 * s for s in (1, -1, 3, -3)], np.int64).clip(U.INT32_MIN, U.INT32_MAX)
    assert U.rounding_divide_by_pot_reference(x, n).tolist() == [_rdivpot_exact(int(v), n) for v in x]


@given(hynp.arrays(np.int32, st.integers(1, 30), elements=st.integers(-(2 ** 24), 2 ** 24)),
       st.floats(1e-6, 0.99), st.integers(-128, 127))
def test_eq5_requantize_within_one_lsb_of_float(acc, M, z_out):
    """Two roundings (SRDHM, shift) put q3 within 1 of clamp(round(M acc) + Z3)."""
    M0_q, n = U.quantize_multiplier(M)
    q3 = U.requantize_reference(acc, M0_q, n, z_out).astype(np.int64)
    exact = np.clip(np.rint(M * acc.astype(np.float64)) + z_out, -128, 127)
    assert np.all(np.abs(q3 - exact) <= 1)


@st.composite
def int_mats_st(draw):
    M, K, N = (draw(st.integers(1, 9)) for _ in range(3))
    i8 = st.integers(-128, 127)
    return (draw(hynp.arrays(np.int8, (M, K), elements=i8)), draw(hynp.arrays(np.int8, (K, N), elements=i8)),
            draw(hynp.arrays(np.int64, M, elements=i8)), draw(hynp.arrays(np.int64, N, elements=i8)))


@given(int_mats_st())
def test_eq7_zero_point_expansion_equals_direct_product(mats):
    """K Zx ZW - Zx colsum(qW) - ZW rowsum(qx) + qx @ qW == (qx - Zx) @ (qW - ZW), exactly."""
    qx, qW, zx, zW = mats
    a, b = qx.astype(np.int64), qW.astype(np.int64)
    expanded = (qx.shape[1] * zx[:, None] * zW[None, :] - zx[:, None] * b.sum(0)[None, :]
                - zW[None, :] * a.sum(1)[:, None] + a @ b)
    assert np.array_equal(U.int8_matmul_reference(qx, qW, zx, zW), expanded)


@given(st.tuples(matrix_st(max_side=9, dtype=np.float32), st.integers(1, 9)))
def test_int8_linear_reference_error_is_bounded_by_activation_rounding(pair):
    """With W_hat fixed, y - x @ W_hat = (x_hat - x) @ W_hat, so |err| <= (S_x / 2) sum_k |W_hat|."""
    x, N = pair
    W = np.random.default_rng(N).standard_normal((x.shape[1], N)).astype(np.float32)
    packed = U.pack_uniform(W, 8, "channel")
    W_hat = U.unpack_uniform(packed).astype(np.float64)
    y = U.int8_linear_reference(x, packed.arrays["values"], packed.arrays["scales"][0])
    _, sx = U.quantize_rows_reference(x)
    bound = sx[:, None] / 2 * np.abs(W_hat).sum(0)[None, :]
    assert np.all(np.abs(y - x.astype(np.float64) @ W_hat) <= bound * (1 + 1e-5) + 1e-5 * np.abs(y))


# ----------------------------------------------------------------------------- model level
def _fake_params(rng):
    D, F, V = 4, 6, 5
    p = {"emb": rng.standard_normal((V, D)), "enc.0.attn.W_q": rng.standard_normal((D, D)),
         "enc.0.attn.b_q": rng.standard_normal(D), "enc.0.ffn.W_1": rng.standard_normal((D, F)),
         "enc.0.ffn.b_1": rng.standard_normal(F), "enc.0.ffn.W_2": rng.standard_normal((F, D)),
         "enc.0.ln1.gamma": np.ones(D), "enc.0.ln1.beta": np.zeros(D)}
    return {k: v.astype(np.float32) for k, v in p.items()}


def test_fqt_placement_quantizes_2d_weights_and_matmul_inputs_only():
    params = _fake_params(np.random.default_rng(0))
    method = F.qat_method(params, 4)
    assert isinstance(method, Method)
    assert sorted(method.transforms) == ["emb", "enc.0.attn.W_q", "enc.0.ffn.W_1", "enc.0.ffn.W_2"]
    assert sorted(method.act_hooks) == ["emb:in", "enc.0.attn.W_q:in", "enc.0.attn.k", "enc.0.attn.probs",
                                       "enc.0.attn.q", "enc.0.attn.v", "enc.0.ffn.W_1:in", "enc.0.ffn.act"]
    eff, caches = method.forward(params)
    for name in ("enc.0.attn.b_q", "enc.0.ffn.b_1", "enc.0.ln1.gamma", "enc.0.ln1.beta"):
        assert eff[name] is params[name]
    assert len(np.unique(eff["enc.0.ffn.W_1"][:, 0])) <= 16
    grads = method.backward({k: np.ones_like(v) for k, v in eff.items()}, caches)
    assert np.array_equal(grads["enc.0.ffn.W_1"], np.ones_like(params["enc.0.ffn.W_1"]))  # STE


def test_fqt_activation_hooks_track_ema_then_freeze_on_unsigned_grids():
    method = F.qat_method(_fake_params(np.random.default_rng(0)), 8)
    fwd, bwd = method.act_hooks["enc.0.ffn.act"]
    a1, a2 = np.array([0.0, 1.0, 2.0]), np.array([0.0, 4.0])
    fwd(a1)
    x_hat, cache = fwd(a2)
    assert fwd.__self__.range == (0.0, 0.9 * 2.0 + 0.1 * 4.0)
    assert x_hat.min() >= 0 and x_hat[1] == pytest.approx(2.2, abs=2.2 / 255)  # clipped at the EMA max
    assert np.array_equal(bwd(np.ones(2), cache), [1.0, 0.0])  # 4.0 is clamped: no gradient
    probs, _ = method.act_hooks["enc.0.attn.probs"][0](np.array([0.2, 0.3, 0.5]))
    assert np.all(probs >= 0)
    F.set_act_mode(method.act_hooks, "frozen")
    fwd(np.array([100.0]))
    assert fwd.__self__.range == (0.0, 2.2)


def test_ptq_calibrates_called_points_then_freezes_and_drops_the_rest():
    params = _fake_params(np.random.default_rng(1))
    batches = [np.array([-1.0, 2.0]), np.array([-3.0, 0.5])]

    def calibrate(params_hat, hooks):
        assert np.array_equal(params_hat["enc.0.ffn.b_1"], params["enc.0.ffn.b_1"])
        for x in batches:
            assert np.array_equal(hooks["enc.0.attn.W_q:in"][0](x)[0], x)  # observe: identity

    params_hat, hooks, report = F.ptq(params, calibrate, 8)
    assert list(hooks) == ["enc.0.attn.W_q:in"] and report["ranges"]["enc.0.attn.W_q:in"] == (-3.0, 2.0)
    x_hat, _ = hooks["enc.0.attn.W_q:in"][0](np.array([-3.0, 5.0]))
    assert x_hat[1] == pytest.approx(2.0, abs=5 / 255)
    assert np.array_equal(params_hat["emb"], U.UniformWeightQuantizer(8).forward(params["emb"])[0])


def test_ptq_weights_only_needs_no_calibration_and_activations_do():
    params = _fake_params(np.random.default_rng(2))
    params_hat, hooks, report = F.ptq(params, bits=4, weights_only=True)
    assert hooks == {} and report["act_bits"] is None
    assert np.array_equal(params_hat["enc.0.ffn.W_1"], U.UniformWeightQuantizer(4).forward(params["enc.0.ffn.W_1"])[0])
    with pytest.raises(ValueError, match="calibration_fn"):
        F.ptq(params, bits=8)



@given(st.lists(hynp.arrays(np.float64, st.integers(1, 6), elements=floats_st(bound=1e3)), min_size=1, max_size=5),
       bits_st, st.sampled_from([0.5, 0.9]))
def test_fqt_ema_calibration_range_is_the_ema_of_batch_minmax_and_the_file_stores_its_qparams(batches, bits, m):
    """PTQ with FQT's EMA calibration: x_min <- m x_min + (1 - m) min(batch), started at the first
    batch; x passes through unquantized; the exported (S, Z) is quant_params of that range."""
    params = _fake_params(np.random.default_rng(0))

    def calibrate(params_hat, hooks):
        for x in batches:
            assert np.array_equal(hooks["enc.0.attn.W_q:in"][0](x)[0], x)

    _, hooks, report = F.ptq(params, calibrate, bits, calibration="ema", momentum=m, attention_operands=False)
    lo, hi = batches[0].min(), batches[0].max()
    for x in batches[1:]:
        lo, hi = m * lo + (1 - m) * x.min(), m * hi + (1 - m) * x.max()
    assert report["ranges"]["enc.0.attn.W_q:in"] == pytest.approx((lo, hi), rel=1e-12, abs=1e-12)
    packed = F.attach_act_ranges({"enc.0.attn.W_q": U.pack_uniform(params["enc.0.attn.W_q"], bits)}, hooks)
    scale, zero = U.quant_params(*report["ranges"]["enc.0.attn.W_q:in"], bits)
    assert packed["enc.0.attn.W_q"].meta["act"] == {"bits": bits, "unsigned": False, "scale": float(scale),
                                                    "zero_point": int(zero)}


def test_fqt_placement_without_attention_operands_and_the_input_point_of_each_weight():
    params = _fake_params(np.random.default_rng(0))
    points = F.activation_points(params, attention_operands=False)
    assert sorted(points) == ["emb:in", "enc.0.attn.W_q:in", "enc.0.ffn.W_1:in", "enc.0.ffn.act"]
    assert points["enc.0.ffn.act"] is True and points["emb:in"] is False
    assert {F.input_point(n) for n in ("emb", "enc.0.attn.W_q", "enc.0.ffn.W_1", "enc.0.ffn.W_2")} == set(points)


@given(hynp.arrays(np.float32, st.integers(1, 30), elements=floats_st(np.float32, bound=100.0)), bits_st, st.booleans())
def test_static_codes_for_the_int8_gemm_keep_q_minus_z(x, bits, unsigned):
    """Jacob Eq. (4) needs only q - Z: the int8 codes (an unsigned 8-bit grid shifted by -128)
    keep q - Z of the point's own grid, so S_x (qx - zx) is the fake-quant x_hat."""
    scale, zero = U.quant_params(min(float(x.min()), 0.0), float(np.abs(x).max()), bits, unsigned=unsigned)
    qx, zx = U.quantize_static_reference(x, scale, zero, bits, unsigned)
    q = U.quantize(x, scale, zero, bits, unsigned=unsigned).astype(np.int64)
    assert qx.dtype == np.int8 and np.array_equal(qx.astype(np.int64) - zx, q - zero)
    x_hat, _ = U.fake_quant_forward(x, scale, zero, bits, unsigned=unsigned)
    np.testing.assert_array_equal(U.dequantize(qx, scale, zx), x_hat)


def test_activation_quantizer_without_a_range_or_with_a_bad_mode_raises():
    with pytest.raises(ValueError, match="no range"):
        F.ActivationQuantizer(8, mode="frozen").forward(np.ones(2))
    with pytest.raises(ValueError, match="mode"):
        F.ActivationQuantizer(8, mode="train")
    with pytest.raises(ValueError, match="calibration"):
        F.ptq(_fake_params(np.random.default_rng(0)), lambda p, h: None, 8, calibration="mean")

# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bits", [1, 9, 0, -3])
def test_bits_outside_2_to_8_raise(bits):
    with pytest.raises(ValueError, match="bits"):
        U.quant_params(-1.0, 1.0, bits)


@pytest.mark.parametrize("bits", [4.0, True, "8"])
def test_non_int_bits_raise_type_error(bits):
    with pytest.raises(TypeError, match="bits"):
        U.qrange(bits)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_raise(bad):
    W = np.ones((3, 3))
    W[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        U.pack_uniform(W, 8)
    with pytest.raises(ValueError, match="NaN or inf"):
        U.quant_params(bad, 1.0, 8)


def test_empty_and_wrong_dtype_and_bad_options_raise():
    with pytest.raises(ValueError, match="empty"):
        U.UniformWeightQuantizer(8).forward(np.zeros((0, 3)))
    with pytest.raises(TypeError, match="float"):
        U.quantize(np.ones(3, np.int32), 1.0, 0, 8)
    with pytest.raises(ValueError, match="granularity"):
        U.minmax_range(np.ones((2, 2)), "row")
    with pytest.raises(ValueError, match="bucket_size"):
        U.minmax_range(np.ones((2, 2)), "bucket")
    with pytest.raises(ValueError, match="2-D"):
        U.minmax_range(np.ones(4), "channel")
    with pytest.raises(ValueError, match="x_min > x_max"):
        U.quant_params(1.0, -1.0, 8)
    with pytest.raises(ValueError, match="ste"):
        U.fake_quant_forward(np.ones(2), 1.0, 0, 8, ste="identity")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        U.quantize_multiplier(1.5)
    with pytest.raises(ValueError, match="overflows"):
        U.int8_matmul_reference(np.full((1, 131072), -128, np.int8), np.full((131072, 1), -128, np.int8))
