"""compress/integer_only.py: Jacob et al. 2018 (arXiv 1712.05877) Sec. 2.2-2.4, the fused integer
layer, chained through a weights+activations FFN: int32 bias at the accumulator's scale, the
fixed-point multiplier M = S_x S_W1 / S_a (Eq. 5-6), ReLU as the clamp at the zero point, and the
second matmul on the requantized codes.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip import container
from tinyzip.compress import fqt, integer_only, uniform
from tinyzip.compress.base import PackedTensor
from tinyzip.compressed import kernel_matmuls, pack_float, uniform_codes, unpack
from tinyzip.data.text import Tokenizer
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.translation import load_translator


def _act(bits, unsigned, scale, zero=0):
    return {"bits": bits, "unsigned": unsigned, "scale": float(scale), "zero_point": int(zero)}


def _with_act(packed, act):
    return PackedTensor(packed.method, packed.shape, packed.arrays, dict(packed.meta, act=act))


@st.composite
def ffn_case(draw):
    """A packed FFN with static ranges: D, F not multiples of 8 included, 1-row inputs included,
    weights at 2-8 bits (symmetric or affine), activations at 8, 6 or 4 bits."""
    M, D, F = draw(st.integers(1, 5)), draw(st.integers(1, 20)), draw(st.integers(1, 24))
    wbits, abits = draw(st.integers(2, 8)), draw(st.sampled_from([8, 6, 4]))
    symmetric = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    x = rng.standard_normal((M, D)).astype(np.float32)
    W1, W2 = (rng.standard_normal(s).astype(np.float32) for s in ((D, F), (F, D)))
    b1, b2 = (0.5 * rng.standard_normal(n).astype(np.float32) for n in (F, D))
    lo, hi = -abs(rng.normal(2, 0.5)), abs(rng.normal(2, 0.5))             # clips some of x
    x_scale, x_zero = uniform.quant_params(lo, hi, abits)
    W1_packed = uniform.pack_uniform(W1, wbits, symmetric=symmetric)
    h_max = float(np.maximum(x @ W1 + b1, 0).max())
    a_scale = max(h_max * rng.uniform(0.3, 1.0) / (2 ** abits - 1),    # clips some h
                  1.01 * float(x_scale) * float(W1_packed.arrays["scales"].max()))  # keeps M < 1
    packed = {"ffn.W_1": _with_act(W1_packed, _act(abits, False, x_scale, x_zero)),
              "ffn.W_2": _with_act(uniform.pack_uniform(W2, wbits, symmetric=symmetric), _act(abits, True, a_scale)),
              "ffn.b_1": pack_float(b1), "ffn.b_2": pack_float(b2)}
    return packed, x


@given(st.floats(-10, 10), st.floats(1e-3, 1.0), st.floats(1e-3, 1.0))
def test_sec24_bias_is_int32_on_the_accumulator_grid(b, x_scale, w_scale):
    """b_q = round(b / (S_x S_W)) with zero point 0: b_q S_x S_W is within half an accumulator step of b."""
    b_q = integer_only.quantize_bias(np.array([b]), x_scale, np.array([w_scale]))
    assert b_q.dtype == np.int32
    assert abs(float(b_q[0]) * x_scale * w_scale - b) <= x_scale * w_scale / 2 * (1 + 1e-12)


def test_bias_that_leaves_int32_is_a_clear_error():
    with pytest.raises(ValueError, match="leaves int32"):
        integer_only.quantize_bias(np.array([1.0]), 1e-6, np.array([1e-6]))


@given(ffn_case(), st.sampled_from(integer_only.ROUNDINGS))
def test_eq4_integer_ffn_on_the_kernels_equals_its_integer_reference_bit_for_bit(case, rounding):
    packed, x = case
    ffn = integer_only.integer_ffn(packed, "ffn", rounding)
    y, qa = integer_only.run_integer_ffn(ffn, x)
    y_ref, qa_ref = integer_only.integer_ffn_reference(ffn, x)
    np.testing.assert_array_equal(qa, qa_ref)
    np.testing.assert_array_equal(y, y_ref)


@given(ffn_case())
def test_eq5_6_fused_layer_is_the_relu_of_M_acc_rounded_ties_away_from_zero(case):
    """Sec. 2.4: qa - Z_a = clamp(round(M acc1), 0, qmax_a) with acc1 = Eq. (4) + b_q and
    M = S_x S_W1 / S_a: the clamp at the zero point is the ReLU, rounding ties away from zero.
    gemmlowp rounds twice, SRDHM to a 2^-shift step of the result, then RDivPOT, so entries within
    2^-(shift+1) (plus 1e-6 for M0's own rounding) of a tie may go either way and are skipped."""
    packed, x = case
    ffn = integer_only.integer_ffn(packed, "ffn")
    _, qa = integer_only.run_integer_ffn(ffn, x)
    qx, zx = uniform.quantize_static_reference(x, *ffn.x_qparams)
    acc1 = uniform.int8_matmul_reference(qx, ffn.W1_t.T, zx, ffn.w1_zero, ffn.b1_q).astype(np.float64)
    a_scale = packed["ffn.W_2"].meta["act"]["scale"]
    r = ffn.x_qparams[0] * uniform_codes(packed["ffn.W_1"])[1] / a_scale * acc1   # M acc1, real-valued
    expected = np.clip(np.sign(r) * np.floor(np.abs(r) + 0.5), 0, ffn.a_bounds[1] - ffn.a_bounds[0])
    clear = np.abs(np.abs(r) - np.floor(np.abs(r)) - 0.5) > 2.0 ** -(ffn.shift + 1.0) + 1e-6
    np.testing.assert_array_equal((qa.astype(np.int64) - ffn.a_bounds[0])[clear], expected[clear])
    assert np.all(qa[r < -0.5] == ffn.a_bounds[0])                              # negative -> ReLU's 0


@given(ffn_case())
def test_single_rounding_fused_layer_is_the_relu_of_M0_acc_rounded_once_ties_up(case):
    """TFLite's single rounding: qa - Z_a = clamp(floor(M0_q 2^-(31 + shift) acc1 + 1/2), 0, qmax_a)
    for every entry, in exact rational arithmetic: no window of doubt as with gemmlowp's two roundings."""
    packed, x = case
    ffn = integer_only.integer_ffn(packed, "ffn", "single")
    _, qa = integer_only.run_integer_ffn(ffn, x)
    qx, zx = uniform.quantize_static_reference(x, *ffn.x_qparams)
    acc1 = uniform.int8_matmul_reference(qx, ffn.W1_t.T, zx, ffn.w1_zero, ffn.b1_q)
    qmax = ffn.a_bounds[1] - ffn.a_bounds[0]
    for (m, n), a in np.ndenumerate(acc1):
        r = Fraction(int(a) * int(ffn.M0_q[n]), 2 ** (31 + int(ffn.shift[n])))
        assert int(qa[m, n]) - ffn.a_bounds[0] == min(max(math.floor(r + Fraction(1, 2)), 0), qmax)


@st.composite
def output_stage_st(draw):
    """(acc, M0_q, shift) with M acc mostly inside the int8 grid (|acc| <= 256 2^shift), int32's ends included."""
    shift, M0 = draw(st.integers(0, 31)), draw(st.integers(2 ** 30, 2 ** 31 - 1))
    reach = min(256 << shift, uniform.INT32_MAX)
    acc = draw(st.integers(-reach, reach) | st.sampled_from([uniform.INT32_MIN, uniform.INT32_MAX, -1, 0, 1]))
    return acc, M0, shift


@given(output_stage_st())
def test_single_rounding_is_correctly_rounded_and_gemmlowp_within_one_of_it(case):
    """Single rounding = the exact M0_q 2^-(31 + shift) acc rounded to nearest, ties up (then the int8
    clamp); gemmlowp's SRDHM then RoundingDivideByPOT lands at most one step away from it."""
    acc, M0, shift = case
    exact = Fraction(acc * M0, 2 ** (31 + shift))
    single = int(integer_only.requantize_single_reference(np.int32(acc), M0, shift, 0))
    double = int(uniform.requantize_reference(np.int32(acc), M0, shift, 0))
    assert single == min(max(math.floor(exact + Fraction(1, 2)), -128), 127)
    assert abs(double - single) <= 1


def test_gemmlowp_rounds_twice_where_single_rounding_rounds_once():
    """acc = 1, M0_q = 2^31 - 1, shift = 1: the exact value 0.49999999977 rounds to 0 once; SRDHM
    first rounds 0.99999999953 up to 1, and RoundingDivideByPOT then takes the tie 1/2 away from zero."""
    assert int(integer_only.requantize_single_reference(np.int32(1), 2 ** 31 - 1, 1, 0)) == 0
    assert int(uniform.requantize_reference(np.int32(1), 2 ** 31 - 1, 1, 0)) == 1


@pytest.fixture(scope="module")
def wa_file(tmp_path_factory):
    """A calibrated weights+activations .tz of a small Transformer, and its FFN inputs."""
    config = Seq2SeqConfig(src_vocab=40, tgt_vocab=40, D=32, H=2, F=48, enc_layers=1, dec_layers=1)
    model, rng = Seq2Seq(config), np.random.default_rng(0)
    params = {k: v + 0.1 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in model.init_params(rng).items()}
    src, tgt = rng.integers(4, 40, (4, 7)), rng.integers(4, 40, (4, 6))

    def calibrate(eff, hooks):
        for _ in range(3):
            model.forward(eff, rng.integers(4, 40, (2, 6)), rng.integers(4, 40, (2, 5)), act_hooks=hooks)

    _, hooks, _ = fqt.ptq(params, calibrate, 8, calibration="ema")
    packed = {n: uniform.pack_uniform(W, 8) if W.ndim == 2 else pack_float(W) for n, W in params.items()}
    path = tmp_path_factory.mktemp("wa") / "wa.tz"
    tokenizer = Tokenizer.learn(["in the beginning"], ["en el principio"], "en", "es", num_merges=4)
    container.save_tz(path, fqt.attach_act_ranges(packed, hooks), config.to_dict(),
                      extra={"tokenizer": tokenizer.to_dict()})
    tz = container.load_tz(path)
    matmuls, seen = kernel_matmuls(tz.packed), {}
    recording = {n: (lambda x, n=n, f=f: (seen.setdefault(n, x), f(x))[1]) for n, f in matmuls.items()}
    model.forward({n: unpack(p) for n, p in tz.packed.items()}, src, tgt, matmuls=recording)
    return tz.packed, matmuls, seen, (model, path, src, tgt)


@pytest.mark.parametrize("prefix", ["enc.0.ffn", "dec.0.ffn"])
def test_integer_ffn_is_within_one_step_of_the_float_output_path(wa_file, prefix):
    """On a calibrated file and the inputs the model feeds it: the ReLU codes differ from the float
    path's (float h + b_1, ReLU, W_2's input quantizer) by at most one step (b_q's rounding, ties),
    so y differs by at most S_a |dq| @ |W2_hat| plus float32 rounding, and not at all where a row's
    codes agree."""
    packed, matmuls, seen, _ = wa_file
    x = seen[prefix + ".W_1"]
    ffn = integer_only.integer_ffn(packed, prefix)
    y, qa = integer_only.run_integer_ffn(ffn, x)
    h = np.maximum(matmuls[prefix + ".W_1"](x) + unpack(packed[prefix + ".b_1"]), 0)
    y_float = matmuls[prefix + ".W_2"](h) + unpack(packed[prefix + ".b_2"])
    act = packed[prefix + ".W_2"].meta["act"]
    qa_float, _ = uniform.quantize_static_reference(h, act["scale"], 0, 8, unsigned=True)
    dq = np.abs(qa.astype(np.int64) - qa_float)
    assert dq.max() <= 1
    assert np.any(qa > ffn.a_bounds[0]) and np.any(qa == ffn.a_bounds[0])       # ReLU passes and clamps
    same = np.all(dq == 0, axis=1)
    np.testing.assert_array_equal(y[same], y_float[same])
    bound = act["scale"] * (dq @ np.abs(unpack(packed[prefix + ".W_2"]).astype(np.float64)))
    bound += 4 * np.finfo(np.float32).eps * (np.abs(y) + np.abs(y_float))
    assert np.all(np.abs(y.astype(np.float64) - y_float) <= bound)


def test_a_file_without_activation_ranges_is_a_clear_error(wa_file):
    packed = {n: PackedTensor(p.method, p.shape, p.arrays, {k: v for k, v in p.meta.items() if k != "act"})
              for n, p in wa_file[0].items()}
    with pytest.raises(ValueError, match="weights\\+activations"):
        integer_only.integer_ffn(packed, "enc.0.ffn")
    with pytest.raises(ValueError, match="has no"):
        integer_only.integer_ffn(wa_file[0], "enc.7.ffn")


@pytest.mark.parametrize("change, match", [(dict(unsigned=False), "unsigned grid"),
                                           (dict(scale=1e-12), "M = S_x S_W1 / S_a")])
def test_a_relu_range_the_fused_layer_cannot_use_is_a_clear_error(wa_file, change, match):
    packed = dict(wa_file[0])
    W2 = packed["enc.0.ffn.W_2"]
    packed["enc.0.ffn.W_2"] = _with_act(W2, dict(W2.meta["act"], **change))
    with pytest.raises(ValueError, match=match):
        integer_only.integer_ffn(packed, "enc.0.ffn")


def test_bucketed_weights_and_bad_inputs_are_clear_errors(wa_file):
    packed = dict(wa_file[0])
    W1 = packed["enc.0.ffn.W_1"]
    bucketed = uniform.pack_uniform(unpack(W1), 8, granularity="bucket", bucket_size=8)
    packed["enc.0.ffn.W_1"] = _with_act(bucketed, W1.meta["act"])
    with pytest.raises(ValueError, match="per-tensor or per-channel"):
        integer_only.integer_ffn(packed, "enc.0.ffn")
    ffn = integer_only.integer_ffn(wa_file[0], "enc.0.ffn")
    with pytest.raises(ValueError, match="must be"):
        integer_only.run_integer_ffn(ffn, np.zeros((2, 31), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        integer_only.run_integer_ffn(ffn, np.full((2, 32), np.nan, np.float32))


def test_the_model_forward_takes_integer_ffns_in_its_matmuls(wa_file):
    """``integer_ffns`` replaces each whole FFN (each is called once per forward): the logits move
    only by the one-step code changes, there is no backward through them, and a file loaded with
    ``integer_ffn=True`` computes exactly that model."""
    packed, matmuls, _, (model, path, src, tgt) = wa_file
    params = {n: unpack(p) for n, p in packed.items()}
    ffns = integer_only.integer_ffns(packed)
    assert set(ffns) == {"enc.0.ffn", "dec.0.ffn"}
    calls = []
    counted = {p: (lambda x, f=f, p=p: (calls.append(p), f(x))[1]) for p, f in ffns.items()}
    ref, _ = model.forward(params, src, tgt, matmuls=matmuls)
    out, cache = model.forward(params, src, tgt, matmuls={**matmuls, **counted})
    assert sorted(calls) == ["dec.0.ffn", "enc.0.ffn"]
    np.testing.assert_allclose(out, ref, rtol=0, atol=0.02 * float(np.abs(ref).max()))
    with pytest.raises(ValueError, match="no backward through matmuls"):
        model.backward(np.ones_like(out), cache)
    translator = load_translator(path, integer_ffn=True)                       # the file, as `tinyzip eval` loads it
    assert set(ffns) <= set(translator.matmuls)
    file_out, _ = model.forward(translator.params, src, tgt, matmuls=translator.matmuls,
                                act_hooks=translator.act_hooks)
    np.testing.assert_array_equal(file_out, model.forward(params, src, tgt, matmuls={**matmuls, **ffns},
                                                          act_hooks=translator.act_hooks)[0])


def test_integer_ffn_needs_a_tz_file(tmp_path):
    with pytest.raises(ValueError, match="weights\\+activations .tz"):
        load_translator(tmp_path / "model.npz", integer_ffn=True)


def test_an_unknown_rounding_or_one_without_integer_ffns_is_a_clear_error(wa_file):
    with pytest.raises(ValueError, match="rounding"):
        integer_only.integer_ffn(wa_file[0], "enc.0.ffn", "tflite")
    with pytest.raises(ValueError, match="integer FFNs only"):
        load_translator(wa_file[3][1], kernels=True, rounding="single")
