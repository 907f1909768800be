"""Low-rank factorization: truncated SVD (Eckart-Young), and ALBERT's factorized embedding.

Eckart, Young (1936), "The approximation of one matrix by another of lower rank", Psychometrika
1(3); Mirsky (1960) for every unitarily invariant norm. Lan, Chen, Goodman, Gimpel, Sharma, Soricut
(2020), "ALBERT: A Lite BERT for Self-supervised Learning of Language Representations", ICLR,
arXiv:1909.11942, Sec. 3.1 (factorized embedding parameterization). The equations are textbook
linear algebra; the labels (R1)-(R5) are ours.

A weight W: (m, n) with y = x @ W (m = D_in, n = D_out; a paper's W x is our W.T, whose SVD is the
transpose of ours, so nothing changes but the names).

    W = U diag(s) V^T,  s_1 >= s_2 >= ... >= s_k >= 0,  k = min(m, n)                     (R1)
    W_r = U_r diag(s_r) V_r^T: the best rank-r approximation in every unitarily invariant norm;
    ||W - W_r||_F^2 = sum_{i>r} s_i^2,  ||W - W_r||_2 = s_{r+1}  (s_{k+1} = 0)              (R2)
    A = U_r diag(s_r)^(1/2)  (m, r),  B = diag(s_r)^(1/2) V_r^T  (r, n),  x @ W_r = (x @ A) @ B  (R3)
    r (m + n) numbers instead of m n: fewer iff r < m n / (m + n)                         (R4)
    ALBERT: the V x H embedding E = E' P with E' (V, r) and P (r, H): V r + r H parameters      (R5)

(R3) splits the singular values evenly between the factors (the same product as U_r and
diag(s_r) V_r^T, with factors of equal scale, which suits fine-tuning both). (R5) is (R3) applied to
the embedding, which the shipped model also uses as its output layer: the logits x @ E^T become
(x @ B^T) @ A^T. ALBERT trains E' and P from scratch; here they come from the trained E's SVD.

Fine-tuning the factors: ``FactorMethod`` is a training method (``train.train``'s protocol) whose
stored parameters hold ``<name>@A`` and ``<name>@B`` in place of ``<name>``; the model sees
W = A @ B, and the chain rule gives dA = dW @ B^T, dB = A^T @ dW.

Export (``pack_low_rank``): the factors as float32 (or float16) arrays ``A`` and ``B``; at run time
a Linear layer computes (x @ A) @ B, two thin matmuls, and the embedding's output projection as above.
"""
import numpy as np

from tinyzip.compress.base import PackedTensor

FORMAT = "low_rank"


def _check_matrix(W):
    W = np.asarray(W)
    if W.ndim != 2 or 0 in W.shape or W.dtype.kind != "f":
        raise ValueError(f"low rank needs a non-empty float matrix, got {W.dtype} {W.shape}")
    if not np.all(np.isfinite(W)):
        raise ValueError("low rank: W has NaN or inf entries")
    return W


def singular_values(W) -> np.ndarray:
    """s of (R1), descending, float64."""
    return np.linalg.svd(_check_matrix(W).astype(np.float64), compute_uv=False)


def truncated_svd(W, rank: int):
    """(R1)-(R3): the balanced factors A (m, r), B (r, n) of the best rank-r approximation, in W's dtype."""
    W = _check_matrix(W)
    if not 0 <= rank <= min(W.shape):
        raise ValueError(f"rank={rank} must lie in [0, {min(W.shape)}] for W of shape {W.shape}")
    # Eq. (R1)
    U, s, Vt = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    # Eq. (R3)
    A, B = U[:, :rank] * root, root[:, None] * Vt[:rank]
    return A.astype(W.dtype), B.astype(W.dtype)


def truncation_error(s, rank: int) -> float:
    """(R2): ||W - W_r||_F from the singular values."""
    return float(np.sqrt(np.sum(np.asarray(s, np.float64)[rank:] ** 2)))


def rank_for_energy(s, energy: float) -> int:
    """The least r whose W_r keeps ``energy`` of ||W||_F^2 (sum of the first r s_i^2), 0 < energy <= 1."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy={energy} must lie in (0, 1]")
    s2 = np.asarray(s, np.float64) ** 2
    if s2.sum() == 0:
        return 0
    kept = np.cumsum(s2) / s2.sum()
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, len(s2)))


def break_even_rank(m: int, n: int) -> float:
    """(R4): factors of rank r store fewer numbers than W iff r < m n / (m + n)."""
    # Eq. (R4)
    return m * n / (m + n)


class FactorMethod:
    """Training through W = A @ B for the named matrices (``train.train``'s method protocol).

    ``factorize(params)`` replaces each named W by ``<name>@A``, ``<name>@B`` (rank ``ranks[name]``);
    ``forward`` gives the model W = A @ B, ``backward`` the factors' gradients."""

    name = "low_rank"
    act_hooks: dict = {}

    def __init__(self, ranks: dict):
        self.ranks = dict(ranks)

    def factorize(self, params: dict) -> dict:
        out = {k: v for k, v in params.items() if k not in self.ranks}
        for name, rank in self.ranks.items():
            out[name + "@A"], out[name + "@B"] = truncated_svd(params[name], rank)
        return out

    def forward(self, params: dict):
        eff = {k: v for k, v in params.items() if not k.endswith(("@A", "@B"))}
        for name in self.ranks:
            eff[name] = params[name + "@A"] @ params[name + "@B"]
        return eff, params

    def backward(self, deff: dict, params: dict) -> dict:
        grads = {k: v for k, v in deff.items() if k not in self.ranks}
        for name in self.ranks:
            dW, A, B = deff[name], params[name + "@A"], params[name + "@B"]
            grads[name + "@A"], grads[name + "@B"] = dW @ B.T, A.T @ dW   # chain rule of W = A B
        return grads

    def after_step(self, params: dict) -> dict:
        return params


def pack_low_rank(A, B, dtype=np.float32) -> PackedTensor:
    """Factors as stored: ``A`` (m, r) and ``B`` (r, n) in float32 or float16; the tensor's shape is (m, n)."""
    A, B, dtype = np.asarray(A), np.asarray(B), np.dtype(dtype)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"low rank factors must be A (m, r) and B (r, n), got {A.shape} and {B.shape}")
    if dtype not in (np.float32, np.float16):
        raise ValueError(f"low rank factors are stored as float32 or float16, got {dtype}")
    return PackedTensor(FORMAT, (A.shape[0], B.shape[1]),
                        {"A": np.ascontiguousarray(A, dtype), "B": np.ascontiguousarray(B, dtype)},
                        {"rank": int(A.shape[1])})


def unpack_factors(packed: PackedTensor):
    """(A, B) of a ``low_rank`` tensor as float32, checked against its shape."""
    A, B = packed.arrays["A"].astype(np.float32), packed.arrays["B"].astype(np.float32)
    m, n = packed.shape
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != m or B.shape[1] != n or A.shape[1] != B.shape[0]:
        raise ValueError(f"low_rank tensor of shape {packed.shape} holds A {A.shape} and B {B.shape}")
    return A, B


def unpack_low_rank(packed: PackedTensor) -> np.ndarray:
    """W_r = A @ B, float32."""
    A, B = unpack_factors(packed)
    return (A.astype(np.float64) @ B.astype(np.float64)).astype(np.float32)
