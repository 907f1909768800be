"""compress/hessian.py: Shen et al. (2020), Q-BERT, arXiv:1909.05840, with PyHessian's power
iteration. Labels (Q1)-(Q4) are the module docstring's."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.compress import hessian as hs
from tinyzip.compress.uniform import UniformWeightQuantizer
from tinyzip.compressed import dequantize_all
from tinyzip.nn.classifier import ClassifierConfig, EncoderClassifier
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

SRC = np.array([[4, 5, 6, 7, 2, 0], [6, 3, 8, 2, 0, 0]])
TGT_IN = np.array([[1, 4, 5, 6, 7], [1, 6, 8, 0, 0]])
TGT_OUT = np.array([[4, 5, 6, 7, 2], [6, 8, 2, 0, 0]])
BATCH = (SRC, TGT_IN, TGT_OUT)


def seq2seq(pre_ln=False):
    return Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=10, D=8, H=2, F=12, enc_layers=2, dec_layers=1,
                                 max_len=10, pre_ln=pre_ln, dropout=0.0))


def params64(model, seed=0):
    rng = np.random.default_rng(seed)
    return {k: v.astype(np.float64) + 0.2 * rng.standard_normal(v.shape) for k, v in model.init_params(rng).items()}


def unit(v):
    norm = np.sqrt(sum(np.sum(x * x) for x in v.values()))
    return {n: x / norm for n, x in v.items()}


def random_direction(params, names, rng):
    return unit({n: rng.standard_normal(params[n].shape) for n in names})


def symmetric(eigenvalues, seed):
    """Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    n = len(eigenvalues)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return Q @ np.diag(eigenvalues) @ Q.T


def matrix_operator(H):
    return lambda v: {"x": H @ v["x"]}


# ---- (Q1): the Hessian-vector product ------------------------------------------------------------

@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 6))
def test_q1_hvp_of_a_quadratic_loss_is_a_times_v(seed, n):
    """L = 1/2 w^T A w + b^T w + (a term in u): g_w = A w + b is linear, so the difference is exact."""
    rng = np.random.default_rng(seed)
    A = symmetric(rng.standard_normal(n), seed)
    b = rng.standard_normal(n)
    params = {"w": rng.standard_normal(n), "u": rng.standard_normal(3)}
    grad_fn = lambda p: {"w": A @ p["w"] + b + p["u"].sum(), "u": np.full(3, p["w"].sum())}  # noqa: E731
    v = {"w": rng.standard_normal(n)}
    Hv = hs.hessian_vector_product(grad_fn, params, v)
    assert list(Hv) == ["w"]                                  # the block's part of H v only
    np.testing.assert_allclose(Hv["w"], A @ v["w"], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("pre_ln", [False, True])
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_q1_v_h_v_is_the_curvature_of_the_loss_along_v(pre_ln, seed):
    """v^T H v from differences of gradients equals d^2/dt^2 L(theta + t v) from differences of the
    loss alone (forward passes only), with the ReLU gates frozen in both."""
    model = seq2seq(pre_ln)
    params = params64(model, seed % 1000)
    names = hs.layer_blocks(params)["enc.1"]
    v = random_direction(params, names, np.random.default_rng(seed))
    grad_fn = hs.model_grad_fn(model, params, BATCH)
    vHv = hs._dot(v, hs.hessian_vector_product(grad_fn, params, v))
    gates = {}
    loss = lambda p: model.loss_and_grads(p, *BATCH, relu_gates=gates)[0]  # noqa: E731
    at_theta = loss(params)                                   # the first call records theta's gates
    h = 1e-3
    shifted = [dict(params, **{n: params[n] + s * h * v[n] for n in names}) for s in (1, -1)]
    curvature = (loss(shifted[0]) - 2 * at_theta + loss(shifted[1])) / h ** 2
    assert vHv == pytest.approx(curvature, rel=1e-4, abs=1e-6)


@given(seed=st.integers(0, 2 ** 32 - 1))
def test_q1_hvp_is_symmetric_and_linear(seed):
    """u^T H v = v^T H u, and H (a u + b v) = a H u + b H v, across the decoder block."""
    model = seq2seq()
    params = params64(model)
    names = hs.layer_blocks(params)["dec.0"]
    rng = np.random.default_rng(seed)
    u, v = random_direction(params, names, rng), random_direction(params, names, rng)
    grad_fn = hs.model_grad_fn(model, params, BATCH)
    Hu, Hv = (hs.hessian_vector_product(grad_fn, params, x) for x in (u, v))
    assert hs._dot(u, Hv) == pytest.approx(hs._dot(v, Hu), rel=1e-6, abs=1e-8)
    mix = hs.hessian_vector_product(grad_fn, params, {n: 2 * u[n] - 3 * v[n] for n in names})
    for n in names:
        np.testing.assert_allclose(mix[n], 2 * Hu[n] - 3 * Hv[n], rtol=1e-4, atol=1e-6)  # O(eps^2)


def test_relu_gates_recorded_at_theta_change_nothing_there():
    """The frozen-gate model equals the plain one at the point its gates come from, and keeps them."""
    model = seq2seq()
    params = params64(model)
    plain_loss, plain_grads, _ = model.loss_and_grads(params, *BATCH)
    gates = {}
    loss, grads, _ = model.loss_and_grads(params, *BATCH, relu_gates=gates)
    assert loss == plain_loss and all(np.array_equal(grads[n], plain_grads[n]) for n in params)
    assert sorted(gates) == ["dec.0.ffn", "enc.0.ffn", "enc.1.ffn"]
    frozen = {k: g.copy() for k, g in gates.items()}
    model.loss_and_grads({n: -W for n, W in params.items()}, *BATCH, relu_gates=gates)
    assert all(np.array_equal(gates[k], frozen[k]) for k in frozen)
    with pytest.raises(ValueError, match="relu_gates"):
        model.loss_and_grads(params, SRC[:1], TGT_IN[:1], TGT_OUT[:1], relu_gates=gates)


def test_q1_model_grad_fn_keeps_the_gates_of_theta_elsewhere():
    """Away from theta the gradient is the frozen-gate model's (theta's ReLU pattern), not the
    plain model's, whose gates follow the point: differences of it stay off the kinks."""
    model = seq2seq()
    params = params64(model)
    grad_fn = hs.model_grad_fn(model, params, BATCH)
    elsewhere = {n: W + 0.5 * np.random.default_rng(1).standard_normal(W.shape) for n, W in params.items()}
    gates = {}
    model.loss_and_grads(params, *BATCH, relu_gates=gates)
    frozen = model.loss_and_grads(elsewhere, *BATCH, relu_gates=gates)[1]
    plain = model.loss_and_grads(elsewhere, *BATCH)[1]
    got = grad_fn(elsewhere)
    assert all(np.array_equal(got[n], frozen[n]) for n in params)
    assert not all(np.allclose(got[n], plain[n]) for n in params)


def test_q1_rejects_bad_directions():
    params = {"w": np.zeros(3)}
    grad_fn = lambda p: {"w": p["w"]}  # noqa: E731
    with pytest.raises(ValueError, match="shape"):
        hs.hessian_vector_product(grad_fn, params, {"w": np.ones(4)})
    with pytest.raises(ValueError, match="NaN"):
        hs.hessian_vector_product(grad_fn, params, {"w": np.array([1.0, np.nan, 0.0])})
    with pytest.raises(KeyError):
        hs.hessian_vector_product(grad_fn, params, {"x": np.ones(3)})


# ---- (Q2): power iteration -----------------------------------------------------------------------

@given(st.integers(0, 2 ** 32 - 1), st.integers(2, 8), st.booleans())
def test_q2_power_iteration_finds_the_eigenvalue_of_largest_magnitude(seed, n, negative):
    """With a spectral gap (|lambda_2| <= |lambda_1| / 2) and a start at cosine 0.8 to the dominant
    eigenvector, the iteration stops within (Q2)'s tolerance of the dominant eigenvalue, negative
    ones included, and v is its eigenvector. (From a start almost orthogonal to it the relative
    test can stop early, as PyHessian's does: the eigenvalue is then one of the others'.)"""
    rng = np.random.default_rng(seed)
    dominant = rng.uniform(1, 10) * (-1 if negative else 1)
    rest = rng.uniform(-0.5, 0.5, n - 1) * abs(dominant)
    H = symmetric(np.append(rest, dominant), seed)
    top = np.linalg.eigh(H)[1][:, np.argmax(np.abs(np.linalg.eigvalsh(H)))]
    other = rng.standard_normal(n)
    other -= (other @ top) * top
    start = 0.8 * top + 0.6 * other / np.linalg.norm(other)
    lam, v, iterations = hs.power_iteration(matrix_operator(H), {"x": start})
    assert iterations < hs.POWER_MAX_ITER
    assert lam == pytest.approx(dominant, rel=10 * hs.POWER_TOL)
    assert np.linalg.norm(H @ v["x"] - lam * v["x"]) <= 0.2 * abs(dominant)


@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 8))
def test_q2_rayleigh_quotient_never_exceeds_the_top_eigenvalue_of_a_psd_matrix(seed, n):
    rng = np.random.default_rng(seed)
    eigenvalues = rng.uniform(0, 5, n)
    lam, _, _ = hs.power_iteration(matrix_operator(symmetric(eigenvalues, seed)), {"x": rng.standard_normal(n)},
                                   max_iter=3)
    assert lam <= eigenvalues.max() + 1e-9


@given(st.integers(0, 2 ** 32 - 1))
def test_q2_the_stopping_test_is_relative(seed):
    """Scaling H by 1000 scales lambda by 1000 and leaves the iterations used unchanged (both
    scales far above the 1e-6 guard of the denominator)."""
    rng = np.random.default_rng(seed)
    H = 1e3 * symmetric(rng.uniform(-1, 1, 5), seed)
    start, c = {"x": rng.standard_normal(5)}, 1e3
    lam, _, iterations = hs.power_iteration(matrix_operator(H), start)
    lam_c, _, iterations_c = hs.power_iteration(matrix_operator(c * H), start)
    assert iterations_c == iterations and lam_c == pytest.approx(c * lam, rel=1e-9)


def test_q2_edge_operators():
    """H = 0 gives 0 without dividing by 0; H = c I gives c on the second iteration."""
    x0 = {"x": np.arange(1.0, 5.0)}
    assert hs.power_iteration(lambda v: {"x": 0 * v["x"]}, x0)[0] == 0.0
    lam, _, iterations = hs.power_iteration(lambda v: {"x": -2.5 * v["x"]}, x0)
    assert lam == pytest.approx(-2.5) and iterations == 2
    for bad in ({"x": np.zeros(3)}, {"x": np.array([1.0, np.inf])}):
        with pytest.raises(ValueError, match="start vector"):
            hs.power_iteration(lambda v: v, bad)


def test_q2_top_eigenvalue_is_deterministic_and_matches_the_dense_hessian():
    """On a quadratic, top_eigenvalue equals eigvalsh's dominant value; one seed, one answer."""
    A = symmetric(np.array([4.0, 1.0, -0.5, 0.25]), 3)
    grad_fn = lambda p: {"w": A @ p["w"]}  # noqa: E731
    params = {"w": np.ones(4)}
    first = hs.top_eigenvalue(grad_fn, params, ["w"], np.random.default_rng(7))
    assert first == hs.top_eigenvalue(grad_fn, params, ["w"], np.random.default_rng(7))
    assert first == pytest.approx(4.0, rel=10 * hs.POWER_TOL)


# ---- (Q3): sensitivity ---------------------------------------------------------------------------

@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=8), st.randoms())
def test_q3_omega_is_abs_mean_plus_population_std_in_any_order(lams, random):
    omega = hs.sensitivity(lams)
    mean = sum(lams) / len(lams)
    std = (sum((x - mean) ** 2 for x in lams) / len(lams)) ** 0.5
    assert omega == pytest.approx(abs(mean) + std, rel=1e-9, abs=1e-9)
    shuffled = list(lams)
    random.shuffle(shuffled)
    assert hs.sensitivity(shuffled) == pytest.approx(omega, rel=1e-12, abs=1e-12)


def test_q3_rejects_empty_and_non_finite():
    for bad in ([], [1.0, np.nan], [np.inf]):
        with pytest.raises(ValueError, match="finite eigenvalues"):
            hs.sensitivity(bad)


def test_q3_block_sensitivities_of_a_transformer():
    """Every block gets one eigenvalue per batch, the dominant eigenvalue of its own Hessian block
    on that batch: the same from another random start, and Omega is (Q3) of them."""
    model = seq2seq()
    params = params64(model)
    batches = [tuple(x[i:i + 1] for x in BATCH) for i in range(2)]
    out = hs.block_sensitivities(model, params, batches, np.random.default_rng(0))
    assert list(out) == ["enc.0", "enc.1", "dec.0"]
    for block, names in hs.layer_blocks(params).items():
        lams = [hs.top_eigenvalue(hs.model_grad_fn(model, params, b), params, names, np.random.default_rng(1))
                for b in batches]
        np.testing.assert_allclose(out[block]["eigenvalues"], lams, rtol=20 * hs.POWER_TOL)
        assert out[block]["omega"] == hs.sensitivity(out[block]["eigenvalues"])
    with pytest.raises(ValueError, match="at least one batch"):
        hs.block_sensitivities(model, params, [], np.random.default_rng(0))


# ---- (Q4): bit assignment ------------------------------------------------------------------------

@given(st.lists(st.integers(0, 5), min_size=1, max_size=7), st.data())
def test_q4_assignment_maximizes_the_sensitivity_given_high_bits(omegas, data):
    """The high-bit set has exactly n_high blocks and the largest total Omega of any such set
    (brute force), larger Omega never gets fewer bits, and ties go to the earlier block."""
    omega = {f"b{i}": float(o) for i, o in enumerate(omegas)}
    n_high = data.draw(st.integers(0, len(omega)))
    bits = hs.assign_bits(omega, n_high, low=2, high=3)
    high = [b for b in omega if bits[b] == 3]
    assert len(high) == n_high and set(bits.values()) <= {2, 3}
    best = max((sum(omega[b] for b in s) for s in itertools.combinations(omega, n_high)), default=0.0)
    assert sum(omega[b] for b in high) == best
    for a, b in itertools.permutations(omega, 2):
        if omega[a] > omega[b]:
            assert bits[a] >= bits[b]
    names = list(omega)
    for a, b in itertools.combinations(names, 2):              # a is earlier than b
        if omega[a] == omega[b]:
            assert bits[a] >= bits[b]


def test_q4_rejects_bad_settings():
    omega = {"enc.0": 1.0, "enc.1": 2.0}
    for kwargs in ({"n_high": 3, "low": 2, "high": 3}, {"n_high": 1, "low": 4, "high": 3},
                   {"n_high": 1, "low": 1, "high": 3}, {"n_high": 1, "low": 2, "high": 9}):
        with pytest.raises(ValueError):
            hs.assign_bits(omega, **kwargs)


# ---- the mixed-precision model -------------------------------------------------------------------

def test_layer_blocks_of_both_models():
    seq = params64(seq2seq())
    blocks = hs.layer_blocks(seq)
    assert list(blocks) == ["enc.0", "enc.1", "dec.0"]
    assert blocks["dec.0"] == sorted(n for n in seq if n.startswith("dec.0.") and seq[n].ndim == 2)
    assert "emb" not in sum(blocks.values(), [])
    clf = EncoderClassifier(ClassifierConfig(vocab=10, D=8, H=2, F=12, layers=3, max_len=10, n_classes=2))
    assert list(hs.layer_blocks(clf.init_params(np.random.default_rng(0)))) == ["enc.0", "enc.1", "enc.2"]


def test_each_matrix_is_stored_at_its_width_and_reads_back_as_qat_sees_it():
    model = seq2seq()
    params = {n: W.astype(np.float32) for n, W in params64(model).items()}
    widths = hs.bits_by_name(params, {"enc.0": 2, "enc.1": 4, "dec.0": 3})
    assert widths["emb"] == 8 and widths["enc.1.ffn.W_1"] == 4 and widths["dec.0.cross_attn.W_q"] == 3
    assert set(widths) == {n for n, W in params.items() if W.ndim == 2}
    packed = hs.pack_mixed(params, widths)
    eff, _ = hs.mixed_precision_method(widths).forward(params)
    restored = dequantize_all(packed)
    for n, b in widths.items():
        assert packed[n].meta["bits"] == b
        np.testing.assert_array_equal(restored[n], eff[n])
        np.testing.assert_array_equal(eff[n], UniformWeightQuantizer(b).forward(params[n])[0])
    sizes = {n: params[n].size for n in widths}
    assert hs.average_bits(params, widths) == pytest.approx(sum(sizes[n] * widths[n] for n in widths)
                                                            / sum(sizes.values()))
    with pytest.raises(ValueError, match="every block"):
        hs.bits_by_name(params, {"enc.0": 2, "enc.1": 4})
