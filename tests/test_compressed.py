"""compressed.py: every packed format reads back through the container, and the kernel path equals
the dequantized path of the same file (the oracle of the kernels at model level)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinyzip import container
from tinyzip.compress import (binarization, binary_codes, chung, fqt, huffman, kmeans, magnitude_pruning, ternary,
                              uniform)
from tinyzip.compress.base import PackedTensor
from tinyzip.compressed import dequantize_all, kernel_matmuls, pack_float, static_act_hooks, unpack
from tinyzip.decode import greedy_decode
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

FORMATS = {
    "kmeans": lambda W: kmeans.pack_kmeans(W, 15),
    "kmeans+huffman": lambda W: huffman.pack_kmeans_huffman(kmeans.pack_kmeans(W, 15)),
    "uniform-8": lambda W: uniform.pack_uniform(W, 8),
    "uniform-4": lambda W: uniform.pack_uniform(W, 4),
    "binary_codes-2": lambda W: binary_codes.pack_binary_codes(*binary_codes.binary_codes(W, 2)),
    "binary": lambda W: binarization.pack_binary(W),
    "ternary": lambda W: ternary.pack_ternary(W, "tensor"),
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
    token_bits = chung.embedding_bits(rng.integers(1, 100, 20).astype(float), max_bits=3, ratio=0.5)
    packed = chung.pack_embedding_codes(E, token_bits)
    E_hat = unpack(packed)
    for q in np.unique(token_bits):
        ids = np.flatnonzero(token_bits == q)
        B, alpha = binary_codes.binary_codes(np.ascontiguousarray(E[ids].T), int(q))
        np.testing.assert_allclose(E_hat[ids], binary_codes.dequantize(B, alpha).T, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_tensor_missing_an_array_is_a_clear_error_naming_it(fmt, tmp_path):
    """A checksum-valid file whose tensor lacks an array its method reads (written by other code)
    fails to load with a ValueError naming the tensor and the key, not a KeyError."""
    packed = FORMATS[fmt](np.random.default_rng(5).normal(size=(6, 10)))
    for key in packed.arrays:
        arrays = {k: v for k, v in packed.arrays.items() if k != key}
        container.save_tz(tmp_path / "m.tz", {"W": PackedTensor(packed.method, packed.shape, arrays, packed.meta)}, {})
        with pytest.raises(ValueError, match=f"tensor 'W': .*lacks '{key}'"):
            dequantize_all(container.load_tz(tmp_path / "m.tz").packed)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown packed method"):
        unpack(PackedTensor("nope", (1,), {}))
    with pytest.raises(ValueError, match="float32 or float16"):
        pack_float(np.zeros(2), np.int8)



# ---- weights + activations: static activation ranges in the file -------------------------------

def _with_act(packed, scale, zero_point, bits, unsigned):
    act = {"bits": bits, "unsigned": unsigned, "scale": scale, "zero_point": zero_point}
    return PackedTensor(packed.method, packed.shape, packed.arrays, dict(packed.meta, act=act))


@st.composite
def static_case(draw):
    M, K, N = draw(st.integers(1, 9)), draw(st.integers(1, 40)), draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    wbits, abits = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    symmetric, unsigned = draw(st.booleans()), draw(st.booleans())
    x = (rng.standard_normal((M, K)) * draw(st.sampled_from([0.01, 1.0, 30.0]))).astype(np.float32)
    lo, hi = sorted(rng.standard_normal(2) * 2)                      # a range that clips some of x
    scale, zero = uniform.quant_params(0.0 if unsigned else lo, abs(hi), abits, unsigned=unsigned)
    return x, rng.standard_normal((K, N)).astype(np.float32), wbits, symmetric, abits, unsigned, float(scale), int(zero)


@given(static_case())
def test_eq4_static_scale_int8_linear_equals_its_integer_reference_bit_for_bit(case):
    """Jacob Eq. (4) with one static (S_x, Z_x): the file's kernel matmul equals the NumPy integer
    reference exactly, for every weight and activation grid (K, N not multiples of 8, 1-row x)."""
    x, W, wbits, symmetric, abits, unsigned, scale, zero = case
    packed = _with_act(uniform.pack_uniform(W, wbits, symmetric=symmetric), scale, zero, abits, unsigned)
    matmul = kernel_matmuls({"enc.0.attn.W_q": packed})["enc.0.attn.W_q"]
    w_scale, w_zero = uniform.weight_qparams(W, wbits, symmetric=symmetric)
    W_q = uniform.quantize(W, w_scale, w_zero, wbits, symmetric)
    ref = uniform.int8_linear_static_reference(x, W_q, w_scale.reshape(-1), w_zero.reshape(-1), scale, zero,
                                               abits, unsigned)
    np.testing.assert_array_equal(matmul(x), ref)


def _calibrated(tiny, bits):
    model, params, src, tgt = tiny
    rng = np.random.default_rng(3)

    def calibrate(eff, hooks):
        for _ in range(3):
            model.forward(eff, rng.integers(4, 40, (2, 6)), rng.integers(4, 40, (2, 5)), act_hooks=hooks)

    params_hat, hooks, _ = fqt.ptq(params, calibrate, bits, calibration="ema")
    packed = {n: uniform.pack_uniform(W, bits) if W.ndim == 2 else pack_float(W) for n, W in params.items()}
    return params_hat, hooks, fqt.attach_act_ranges(packed, hooks)


@pytest.mark.parametrize("bits", [8, 4])
def test_wa_file_round_trips_and_each_kernel_matmul_equals_fake_quant_within_float32_rounding(tiny, tmp_path, bits):
    """A w+a .tz keeps every static (S_x, Z_x) exactly; fed the inputs each Linear sees in the
    fake-quant forward, the kernel matmul gives the same codes, so it differs from x_hat @ W_hat
    only by float32 rounding. With u = 2^-24: x_hat and W_hat are each rounded once (2u), the float32
    product sums K terms (K u), the kernel rounds S_x S_W acc once (u):
    |y_kernel - y_fakequant| <= (K + 3) u (|x_hat| @ |W_hat|), plus u of slack for float64 terms."""
    model, params, src, tgt = tiny
    params_hat, hooks, packed = _calibrated(tiny, bits)
    container.save_tz(tmp_path / "wa.tz", packed, model.config.to_dict())
    tz = container.load_tz(tmp_path / "wa.tz")
    seen = {}
    recording = {p: (lambda x, f=f, p=p: (seen.__setitem__(p, x), f(x))[1], b) for p, (f, b) in hooks.items()}
    model.forward(params_hat, src, tgt, act_hooks=recording)
    matmuls = kernel_matmuls(tz.packed)
    assert set(matmuls) == {n for n, W in params.items() if W.ndim == 2}       # emb: the output projection
    for name, matmul in matmuls.items():
        point = fqt.input_point(name)
        assert tz.packed[name].meta["act"] == fqt.act_meta(hooks[point][0].__self__)
        x = seen[point].reshape(-1, seen[point].shape[-1])
        x_hat = hooks[point][0](x)[0]
        W_hat = params_hat["emb"].T if name == "emb" else params_hat[name]
        y = matmul(x).astype(np.float64)
        bound = (x.shape[1] + 4) * 2.0 ** -24 * (np.abs(x_hat.astype(np.float64)) @ np.abs(W_hat.astype(np.float64)))
        assert np.all(np.abs(y - (x_hat @ W_hat)) <= bound), name


@pytest.mark.parametrize("bits", [8, 6])
def test_wa_file_computes_what_the_frozen_quantized_model_computes(tiny, tmp_path, bits):
    """save_tz -> load_tz: the kernel path (int8 matmuls with meta["act"], frozen Q/K/V/P hooks from
    meta["act_points"]) gives the in-memory frozen PTQ model's greedy translations and its logits
    up to float32 rounding (a code at a rounding boundary may flip: one step S of that point);
    the dequantized path with every stored range as a hook is that model up to the weights'
    float32 storage."""
    model, params, src, tgt = tiny
    params_hat, hooks, packed = _calibrated(tiny, bits)
    assert {p for p in hooks if not p.endswith((":in", ".act"))} == {
        f"{a}.{n}" for a in model.attention_prefixes() for n in fqt.ATTENTION_POINTS}
    container.save_tz(tmp_path / "wa.tz", packed, model.config.to_dict())
    tz = container.load_tz(tmp_path / "wa.tz")
    params_deq, matmuls = dequantize_all(tz.packed), kernel_matmuls(tz.packed)
    kernel_hooks, all_hooks = static_act_hooks(tz.packed), static_act_hooks(tz.packed, matmul_inputs=True)
    assert set(kernel_hooks) == set(hooks) - {p for p in hooks if p.endswith((":in", ".act"))}
    assert set(all_hooks) == set(hooks)
    ref, _ = model.forward(params_hat, src, tgt, act_hooks=hooks)
    deq, _ = model.forward(params_deq, src, tgt, act_hooks=all_hooks)
    out, _ = model.forward(params_deq, src, tgt, matmuls=matmuls, act_hooks=kernel_hooks)
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(deq, ref, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(out, ref, rtol=0, atol=0.02 * scale)
    assert np.mean(np.abs(out - ref) <= 1e-5 * scale) > 0.9
    limit = 8
    assert (greedy_decode(model, params_deq, src, limit, matmuls=matmuls, act_hooks=kernel_hooks)
            == greedy_decode(model, params_hat, src, limit, act_hooks=hooks))


def _range(bits=8, unsigned=False, scale=0.1, zero_point=0):
    return {"bits": bits, "unsigned": unsigned, "scale": scale, "zero_point": zero_point}


def _with_points(name, points):
    packed = uniform.pack_uniform(np.ones((4, 4), np.float32), 8)
    return {name: PackedTensor("uniform", (4, 4), packed.arrays, dict(packed.meta, act_points=points))}


@pytest.mark.parametrize("points, match", [({"q": _range(bits=9)}, "malformed"),
                                           ({"k": _range(unsigned=True, scale=0.0)}, "scale > 0"),
                                           ({"v": _range(zero_point=200)}, "zero point"),
                                           ({"probs": {"scale": 0.1}}, "malformed"),
                                           ({"o": _range()}, "keys in"),
                                           ([1, 2], "must be a dict")])
def test_malformed_act_points_are_a_clear_error(points, match):
    with pytest.raises(ValueError, match=match):
        static_act_hooks(_with_points("enc.0.attn.W_q", points))
    with pytest.raises(ValueError, match="attention W_q"):
        static_act_hooks(_with_points("enc.0.ffn.W_1", {"v": _range()}))


def test_weights_only_files_keep_dynamic_activations(tiny):
    model, params, src, tgt = tiny
    W = params["enc.0.ffn.W_1"]
    x = np.random.default_rng(4).standard_normal((3, W.shape[0])).astype(np.float32)
    packed = uniform.pack_uniform(W, 8)
    y = kernel_matmuls({"enc.0.ffn.W_1": packed})["enc.0.ffn.W_1"](x)
    W_q = uniform.quantize(W, *uniform.weight_qparams(W, 8), 8, True)
    np.testing.assert_array_equal(y, uniform.int8_linear_reference(x, W_q, packed.arrays["scales"].reshape(-1)))


@pytest.mark.parametrize("act, match", [({"bits": 8, "unsigned": False, "scale": -1.0, "zero_point": 0}, "scale > 0"),
                                        ({"bits": 8, "unsigned": False, "scale": 0.1, "zero_point": 300}, "zero point"),
                                        ({"bits": 9, "unsigned": False, "scale": 0.1, "zero_point": 0}, "malformed"),
                                        ({"scale": 0.1}, "malformed")])
def test_malformed_static_activation_meta_is_a_clear_error(act, match):
    packed = uniform.pack_uniform(np.ones((4, 3), np.float32), 8)
    with pytest.raises(ValueError, match=match):
        kernel_matmuls({"enc.0.ffn.W_1": PackedTensor("uniform", (4, 3), packed.arrays, dict(packed.meta, act=act))})


def test_static_ranges_need_uniform_per_channel_weights():
    W = np.random.default_rng(5).standard_normal((8, 3)).astype(np.float32)
    bucketed = _with_act(uniform.pack_uniform(W, 8, "bucket", bucket_size=4), 0.1, 0, 8, False)
    with pytest.raises(ValueError, match="buckets"):
        kernel_matmuls({"enc.0.ffn.W_1": bucketed})
    q = fqt.ActivationQuantizer(8, mode="observe")
    q.forward(np.ones(3))
    with pytest.raises(ValueError, match="'uniform' weight"):
        fqt.attach_act_ranges({"enc.0.ffn.W_1": kmeans.pack_kmeans(W, 4)},
                              {"enc.0.ffn.W_1:in": (q.forward, q.backward)})


def test_teacher_forced_evaluation_runs_through_the_activation_quantizers(tiny):
    from tinyzip.train import evaluate_teacher_forced
    model, params, src, tgt = tiny
    params_hat, hooks, _ = _calibrated(tiny, 2)
    batch = [(src, tgt, np.roll(tgt, -1, axis=1))]
    logits, _ = model.forward(params_hat, src, tgt, act_hooks=hooks)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch[0][2][..., None], -1).mean()
    assert evaluate_teacher_forced(model, params_hat, batch, act_hooks=hooks)["nll"] == pytest.approx(nll, rel=1e-5)
