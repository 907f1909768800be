"""compressed.py: every packed format reads back through the container, and the kernel path equals
the dequantized path of the same file (the oracle of the kernels at model level)."""
import numpy as np
import pytest

from tinyzip import container
from tinyzip.compress import binarization, binary_codes, huffman, kmeans, magnitude_pruning, uniform
from tinyzip.compressed import dequantize_all, kernel_matmuls, pack_float, unpack
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

FORMATS = {
    "kmeans": lambda W: kmeans.pack_kmeans(W, 15),
    "kmeans+huffman": lambda W: huffman.pack_kmeans_huffman(kmeans.pack_kmeans(W, 15)),
    "uniform-8": lambda W: uniform.pack_uniform(W, 8),
    "uniform-4": lambda W: uniform.pack_uniform(W, 4),
    "binary_codes-2": lambda W: binary_codes.pack_binary_codes(*binary_codes.binary_codes(W, 2)),
    "binary": lambda W: binarization.pack_binary(W),
    "sparse": lambda W: magnitude_pruning.pack_sparse(magnitude_pruning.topk_mask(W, 0.8) * W),
}


@pytest.fixture(scope="module")
def tiny():
    config = Seq2SeqConfig(src_vocab=40, tgt_vocab=40, D=32, H=2, F=48, enc_layers=1, dec_layers=1)
    model = Seq2Seq(config)
    rng = np.random.default_rng(0)
    return model, model.init_params(rng), rng.integers(4, 40, (3, 7)), rng.integers(4, 40, (3, 5))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_kernel_path_equals_dequantized_path(tiny, tmp_path, fmt):
    model, params, src, tgt = tiny
    packed = {n: FORMATS[fmt](W) if W.ndim == 2 and n != "emb" else pack_float(W) for n, W in params.items()}
    container.save_tz(tmp_path / "m.tz", packed, model.config.to_dict())
    tz = container.load_tz(tmp_path / "m.tz")
    params_deq = dequantize_all(tz.packed)
    for name, p in packed.items():                       # the file holds exactly what was packed
        np.testing.assert_array_equal(params_deq[name], unpack(p))
    matmuls = kernel_matmuls(tz.packed)
    assert set(matmuls) == {n for n, W in params.items() if W.ndim == 2 and n != "emb"}
    logits_deq, _ = model.forward(params_deq, src, tgt)
    logits_kernel, _ = model.forward(params_deq, src, tgt, matmuls=matmuls)
    scale = float(np.abs(logits_deq).max())
    # float kernels differ from BLAS only in summation order; int8 also quantizes activations
    # per row to 8 bits, an error of at most ~K * 2^-8 relative per matmul input
    tol = 0.05 * scale if fmt.startswith("uniform") else 1e-4 * scale
    np.testing.assert_allclose(logits_kernel, logits_deq, atol=tol, rtol=0)


def test_float16_halves_the_bytes_and_rounds_to_nearest_half():
    W = np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)
    p = pack_float(W, np.float16)
    assert p.nbytes == W.nbytes // 2
    np.testing.assert_array_equal(unpack(p), W.astype(np.float16).astype(np.float32))


def test_frequency_aware_embedding_reads_back_row_by_row():
    """Chung et al. 2020: token v's row is coded with token_bits[v] bits; the file keeps each
    group's codes, so reading back equals coding each bit group on its own."""
    rng = np.random.default_rng(2)
    E = rng.normal(size=(20, 8)).astype(np.float32)
    token_bits = binary_codes.embedding_bits(rng.integers(1, 100, 20).astype(float), max_bits=3, ratio=0.5)
    packed = binary_codes.pack_embedding_codes(E, token_bits)
    E_hat = unpack(packed)
    for q in np.unique(token_bits):
        ids = np.flatnonzero(token_bits == q)
        B, alpha = binary_codes.binary_codes(np.ascontiguousarray(E[ids].T), int(q))
        np.testing.assert_allclose(E_hat[ids], binary_codes.dequantize(B, alpha).T, rtol=1e-6, atol=1e-7)


def test_unknown_method_is_a_clear_error():
    from tinyzip.compress.base import PackedTensor
    with pytest.raises(ValueError, match="unknown packed method"):
        unpack(PackedTensor("nope", (1,), {}))
    with pytest.raises(ValueError, match="float32 or float16"):
        pack_float(np.zeros(2), np.int8)
