"""compress/low_rank.py: truncated SVD (Eckart & Young 1936, Mirsky 1960) and ALBERT's factorized
embedding (Lan et al. 2020, arXiv:1909.11942). Labels (R1)-(R5) are the module docstring's."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.compress import low_rank as lr
from tinyzip.compressed import kernel_matmuls, unpack
from tinyzip.nn.gradcheck import check_backward

shape_st = st.tuples(st.integers(1, 9), st.integers(1, 9))


def matrix(seed, m, n, rank=None):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((m, n))
    if rank is not None:                                   # an exactly rank-deficient matrix
        W = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    return W


@given(st.integers(0, 2 ** 32 - 1), shape_st, st.data())
def test_r2_errors_are_the_tail_singular_values(seed, shape, data):
    """||W - W_r||_F^2 = sum_{i>r} s_i^2 and ||W - W_r||_2 = s_{r+1} (0 past the last)."""
    W = matrix(seed, *shape)
    r = data.draw(st.integers(0, min(shape)))
    A, B = lr.truncated_svd(W, r)
    s = lr.singular_values(W)
    residual = W - A @ B
    assert np.linalg.norm(residual) == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)), rel=1e-9, abs=1e-12)
    assert lr.truncation_error(s, r) == pytest.approx(np.linalg.norm(residual), rel=1e-9, abs=1e-12)
    spectral = np.linalg.norm(residual, 2) if residual.any() else 0.0
    assert spectral == pytest.approx(s[r] if r < len(s) else 0.0, rel=1e-9, abs=1e-12)
    assert np.linalg.matrix_rank(A @ B) <= r


@given(st.integers(0, 2 ** 32 - 1), shape_st, st.data())
def test_r2_eckart_young_no_rank_r_matrix_is_closer(seed, shape, data):
    """Against random rank-r candidates and against small moves of the factors themselves."""
    W = matrix(seed, *shape)
    r = data.draw(st.integers(1, min(shape)))
    A, B = lr.truncated_svd(W, r)
    best = np.linalg.norm(W - A @ B)
    rng = np.random.default_rng(seed + 1)
    for _ in range(20):
        X = rng.standard_normal((shape[0], r)) @ rng.standard_normal((r, shape[1]))
        X *= np.sum(W * X) / max(np.sum(X * X), 1e-300)    # the best multiple of that candidate
        assert np.linalg.norm(W - X) >= best - 1e-9
        dA, dB = 1e-3 * rng.standard_normal(A.shape), 1e-3 * rng.standard_normal(B.shape)
        assert np.linalg.norm(W - (A + dA) @ (B + dB)) >= best - 1e-9


def test_full_rank_reconstructs_and_error_never_grows_with_rank():
    W = matrix(0, 7, 5)
    A, B = lr.truncated_svd(W, 5)
    np.testing.assert_allclose(A @ B, W, rtol=1e-10, atol=1e-10)
    errors = [np.linalg.norm(W - np.matmul(*lr.truncated_svd(W, r))) for r in range(6)]
    assert errors[0] == pytest.approx(np.linalg.norm(W)) and all(np.diff(errors) <= 1e-12)


def test_truncation_past_the_rank_of_a_deficient_matrix_is_exact():
    W = matrix(1, 8, 6, rank=2)
    for r in (2, 3, 6):
        np.testing.assert_allclose(np.matmul(*lr.truncated_svd(W, r)), W, atol=1e-10)


@given(st.integers(0, 2 ** 32 - 1), shape_st, st.data())
def test_r3_factors_are_balanced_and_multiply_like_w_r(seed, shape, data):
    """A^T A = B B^T = diag(s_r): the singular values split evenly; (x @ A) @ B = x @ W_r."""
    W = matrix(seed, *shape)
    r = data.draw(st.integers(0, min(shape)))
    A, B = lr.truncated_svd(W, r)
    assert A.shape == (shape[0], r) and B.shape == (r, shape[1])
    s = lr.singular_values(W)[:r]
    np.testing.assert_allclose(A.T @ A, np.diag(s), atol=1e-9)
    np.testing.assert_allclose(B @ B.T, np.diag(s), atol=1e-9)
    x = np.random.default_rng(seed).standard_normal((3, shape[0]))
    np.testing.assert_allclose((x @ A) @ B, x @ (A @ B), atol=1e-9)


@given(st.integers(1, 500), st.integers(1, 500), st.integers(0, 500))
def test_r4_factors_store_fewer_numbers_iff_rank_is_below_break_even(m, n, r):
    assert (r * (m + n) < m * n) == (r < lr.break_even_rank(m, n))


def test_packed_bytes_are_r_times_m_plus_n_floats():
    A, B = lr.truncated_svd(matrix(2, 12, 20).astype(np.float32), 3)
    packed = lr.pack_low_rank(A, B)
    assert packed.nbytes == 4 * 3 * (12 + 20) and packed.shape == (12, 20) and packed.meta["rank"] == 3
    np.testing.assert_allclose(unpack(packed), A.astype(np.float64) @ B, rtol=1e-6, atol=1e-6)
    half = lr.pack_low_rank(A, B, np.float16)
    assert half.nbytes == 2 * 3 * (12 + 20)
    expected = A.astype(np.float16).astype(np.float64) @ B.astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(unpack(half), expected, rtol=1e-6, atol=1e-6)


@given(st.integers(0, 2 ** 32 - 1), st.floats(0.01, 1.0))
def test_rank_for_energy_is_the_least_rank_keeping_that_energy(seed, energy):
    s = lr.singular_values(matrix(seed, 9, 7))
    r = lr.rank_for_energy(s, energy)
    kept = lambda k: np.sum(s[:k] ** 2) / np.sum(s ** 2)     # noqa: E731
    assert kept(r) >= energy - 1e-12 and (r == 1 or kept(r - 1) < energy)


def test_factor_method_backward_matches_central_differences():
    """dA = dW @ B^T, dB = A^T @ dW: the chain rule of W = A B, by fourth-order differences."""
    W = matrix(3, 5, 4)
    method = lr.FactorMethod({"W": 2})
    stored = method.factorize({"W": W, "b": np.ones(4)})
    assert set(stored) == {"W@A", "W@B", "b"}

    def forward(A, B):
        eff, cache = method.forward({"W@A": A, "W@B": B, "b": stored["b"]})
        return eff["W"], cache

    def backward(dW, cache):
        grads = method.backward({"W": dW, "b": np.zeros(4)}, cache)
        return grads["W@A"], grads["W@B"]

    check_backward(forward, backward, [stored["W@A"], stored["W@B"]])


def test_linear_layers_run_as_two_thin_matmuls_and_the_embedding_as_its_transpose():
    rng = np.random.default_rng(4)
    packed = {n: lr.pack_low_rank(*lr.truncated_svd(rng.standard_normal(s).astype(np.float32), 3))
              for n, s in (("enc.0.ffn.W_1", (16, 24)), ("emb", (40, 16)))}
    matmuls = kernel_matmuls(packed)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(matmuls["enc.0.ffn.W_1"](x), x @ unpack(packed["enc.0.ffn.W_1"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmuls["emb"](x), x @ unpack(packed["emb"]).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("W, rank, match", [
    (np.zeros((0, 3)), 0, "non-empty"), (np.ones(4), 1, "non-empty"), (np.ones((2, 2), np.int32), 1, "float"),
    (np.array([[1.0, np.nan]]), 1, "NaN"), (np.ones((3, 2)), 3, r"rank=3 must lie in \[0, 2\]"),
    (np.ones((3, 2)), -1, "rank=-1")])
def test_bad_input_is_a_clear_error(W, rank, match):
    with pytest.raises(ValueError, match=match):
        lr.truncated_svd(W, rank)


def test_a_file_whose_factors_do_not_fit_its_shape_is_refused():
    packed = lr.pack_low_rank(np.ones((4, 2)), np.ones((2, 3)))
    broken = type(packed)(packed.method, (4, 5), packed.arrays, packed.meta)
    with pytest.raises(ValueError, match="holds A"):
        unpack(broken)
    with pytest.raises(ValueError, match="A \\(m, r\\) and B \\(r, n\\)"):
        lr.pack_low_rank(np.ones((4, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="energy"):
        lr.rank_for_energy([1.0], 0.0)
