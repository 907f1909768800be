"""compress/fqt.py at model level: FQT (Prato et al. 2020, arXiv 1910.10485) quantizes the inputs of
every matmul (Q, K, softmax output P and V of Q K^T and P V included) and the ReLU output, with a
range from min/max or an EMA of min/max (Jacob et al. 2018, arXiv 1712.05877, Sec. 3). Padding is
excluded from those statistics, so the ranges recorded on a padded batch are those of its real
tokens: the same as on the sentences without padding, whatever the PAD positions hold.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.compress import fqt
from tinyzip.decode import beam_search, greedy_decode
from tinyzip.nn.layers import log_softmax_forward
from tinyzip.nn.losses import PAD
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import evaluate_teacher_forced

V = 12
MODEL = Seq2Seq(Seq2SeqConfig(src_vocab=V, tgt_vocab=V, D=8, H=2, F=12, enc_layers=2, dec_layers=2,
                              max_len=12, dropout=0.0))


def _params(seed=0):
    """float64 params with non-trivial biases/LN and a non-zero PAD embedding row."""
    rng = np.random.default_rng(seed)
    params = {k: v.astype(np.float64) + 0.1 * rng.standard_normal(v.shape)
              for k, v in MODEL.init_params(rng).items()}
    params["emb"][PAD] = rng.standard_normal(MODEL.config.D)
    return params


PARAMS = _params()
tokens_st = st.lists(st.integers(1, V - 1), min_size=1, max_size=6)  # anything but PAD
pair_st = st.tuples(tokens_st, tokens_st)


def _batch(pairs, extra_src=0, extra_tgt=0):
    """(src, tgt_in, tgt_out) padded with PAD to the longest sentence plus ``extra`` columns."""
    S = max(len(s) for s, _ in pairs) + extra_src
    T = max(len(t) for _, t in pairs) + extra_tgt
    src, tgt_in = np.full((len(pairs), S), PAD), np.full((len(pairs), T), PAD)
    for b, (s, t) in enumerate(pairs):
        src[b, :len(s)], tgt_in[b, :len(t)] = s, t
    tgt_out = np.where(tgt_in != PAD, (tgt_in + 1) % (V - 1) + 1, PAD)  # any non-PAD target
    return src, tgt_in, tgt_out


def _hooks(mode, bits=8):
    """Fresh FQT activation quantizers at every point (Q, K, V, softmax outputs included), in ``mode``."""
    hooks = fqt.qat_method(PARAMS, bits).act_hooks
    fqt.set_act_mode(hooks, mode)
    return hooks


ATTENTION = MODEL.attention_prefixes()


def test_fqt_placement_quantizes_both_operands_of_every_matmul():
    """FQT: the inputs of all matmuls, weights' (x @ W) and activations' (Q K^T, P V): signed grids,
    but the softmax output P and the ReLU output (W_2's input) on unsigned grids."""
    points = fqt.activation_points(PARAMS)
    weights = [n for n, W in PARAMS.items() if W.ndim == 2]
    assert set(points) == ({fqt.input_point(n) for n in weights}
                           | {f"{a}.{n}" for a in ATTENTION for n in ("q", "k", "v", "probs")})
    assert {p for p, unsigned in points.items() if unsigned} == (
        {f"{a}.probs" for a in ATTENTION} | {p for p in points if p.endswith(".ffn.act")})
    linear_only = fqt.activation_points(PARAMS, attention_operands=False)
    assert set(points) - set(linear_only) == {f"{a}.{n}" for a in ATTENTION for n in fqt.ATTENTION_POINTS}


def _without_mask(hooks):
    """The same quantizers behind plain ``fwd(x)`` hooks, which the model calls without a mask."""
    return {p: (lambda x, f=f: f(x), b) for p, (f, b) in hooks.items()}


def _ranges(hooks):
    return {p: fwd.__self__.range for p, (fwd, _) in hooks.items()}


def _assert_same_ranges(a, b):
    assert a.keys() == b.keys()
    for p in a:
        assert (a[p] is None) == (b[p] is None), p
        if a[p] is not None:  # the same real values, summed in another order: float64 rounding only
            np.testing.assert_allclose(a[p], b[p], rtol=1e-9, atol=1e-12, err_msg=p)


def _forward(params, batch, hooks):
    MODEL.forward(params, batch[0], batch[1], act_hooks=hooks)


def _train(params, batch, hooks):
    return MODEL.loss_and_grads(params, *batch, act_hooks=hooks)


def _evaluate(params, batch, hooks):
    evaluate_teacher_forced(MODEL, params, [batch], act_hooks=hooks)


RUNS = {"forward": _forward, "loss_and_grads": _train, "evaluate_teacher_forced": _evaluate}


@given(st.lists(pair_st, min_size=2, max_size=4), st.sampled_from(sorted(RUNS)))
def test_minmax_range_of_a_padded_batch_is_that_of_its_sentences_run_alone(pairs, run):
    """observe: [x_min, x_max] over the real tokens = the union of each sentence's own range."""
    padded, alone = _hooks("observe"), _hooks("observe")
    RUNS[run](PARAMS, _batch(pairs), padded)
    for pair in pairs:
        RUNS[run](PARAMS, _batch([pair]), alone)
    _assert_same_ranges(_ranges(padded), _ranges(alone))


@given(st.lists(st.lists(pair_st, min_size=2, max_size=3), min_size=1, max_size=3),
       st.sampled_from(["minmax", "ema"]), st.sampled_from([0.5, 0.9]))
def test_ptq_calibration_on_padded_batches_is_the_statistic_of_the_real_tokens(batches, calibration, m):
    """fqt.ptq: minmax = running min/max, ema = FQT's x_min <- m x_min + (1 - m) min(batch) from
    the first batch, where min(batch) is over the batch's real tokens (its sentences run alone)."""
    _, hooks, report = fqt.ptq(PARAMS, lambda eff, h: [_forward(eff, _batch(p), h) for p in batches], 8,
                               calibration=calibration, momentum=m)
    params_hat = fqt.ptq(PARAMS, bits=8, weights_only=True)[0]
    expected = None
    for pairs in batches:
        alone = _hooks("observe")
        for pair in pairs:
            _forward(params_hat, _batch([pair]), alone)
        batch_range = _ranges(alone)
        if expected is None:
            expected = batch_range
        elif calibration == "minmax":
            expected = {p: (min(expected[p][0], lo), max(expected[p][1], hi)) for p, (lo, hi) in batch_range.items()}
        else:
            expected = {p: (m * expected[p][0] + (1 - m) * lo, m * expected[p][1] + (1 - m) * hi)
                        for p, (lo, hi) in batch_range.items()}
    _assert_same_ranges(report["ranges"], expected)
    assert set(hooks) == set(expected)


def _equal_length_batches(shapes, data):
    """One batch of B drawn pairs (source length S, target length T) per (S, T, B)."""
    return [[(data.draw(st.lists(st.integers(1, V - 1), min_size=S, max_size=S)),
              data.draw(st.lists(st.integers(1, V - 1), min_size=T, max_size=T))) for _ in range(B)]
            for S, T, B in shapes]


shapes_st = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3)), min_size=1, max_size=3)


@given(shapes_st, st.integers(0, 3), st.integers(0, 3), st.data())
def test_ema_ranges_and_loss_of_batches_with_extra_padding_equal_those_without(shapes, extra_src, extra_tgt,
                                                                               data):
    """FQT's EMA of min/max, batch after batch, recorded on batches with extra PAD columns equals the
    one recorded on the same batches without them, and so does the loss ("calibrate": x passes
    through). Across shapes the real values agree to float64 rounding only, hence the tolerance;
    with fake quantization on, one rounding can carry a value across a grid step (see next test)."""
    plain, padded = _hooks("calibrate"), _hooks("calibrate")
    for pairs in _equal_length_batches(shapes, data):
        loss, _, _ = _train(PARAMS, _batch(pairs), plain)
        loss_padded, _, _ = _train(PARAMS, _batch(pairs, extra_src, extra_tgt), padded)
        assert loss_padded == pytest.approx(loss, rel=1e-9)
    _assert_same_ranges(_ranges(padded), _ranges(plain))


def _with_noise_at_padding(hooks, rng):
    """The same quantizers, handed inputs whose PAD rows hold random values instead of the model's.
    Not the probabilities: their masked entries include (real query, PAD key), which the model keeps
    at exact zeros and real rows use; their PAD query rows follow from the noisy Q, K, V."""
    noisy = {}
    for point, (fwd, bwd) in hooks.items():
        if point.endswith(".probs"):
            noisy[point] = (fwd, bwd)
            continue

        def forward(x, valid=None, fwd=fwd):
            if valid is not None and not valid.all():
                x = x.copy()
                pad = ~np.broadcast_to(valid, x.shape[:valid.ndim])
                x[pad] = rng.uniform(-10.0, 10.0, x[pad].shape)
            return fwd(x, valid)

        forward.takes_valid = True
        noisy[point] = (forward, bwd)
    return noisy


@given(shapes_st, st.integers(0, 3), st.integers(0, 3), st.integers(0, 2**32 - 1), st.data())
def test_qat_ema_ranges_and_loss_do_not_see_what_padding_holds(shapes, extra_src, extra_tgt, seed, data):
    """ema (FQT training): batch after batch, the EMA ranges (updated, then used to fake-quantize)
    and the loss of padded batches are the same whatever the PAD rows hold, here random values at
    every hooked input. Both runs have the same shapes, so the real rows' arithmetic is the same
    and the comparison is exact."""
    model_pad, noisy_pad = _hooks("ema"), _hooks("ema")
    noisy_hooks = _with_noise_at_padding(noisy_pad, np.random.default_rng(seed))
    for pairs in _equal_length_batches(shapes, data):
        batch = _batch(pairs, extra_src, extra_tgt)
        loss, _, _ = _train(PARAMS, batch, model_pad)
        assert _train(PARAMS, batch, noisy_hooks)[0] == loss
    assert _ranges(noisy_pad) == _ranges(model_pad)


@pytest.mark.parametrize("mode", ["observe", "calibrate", "ema"])
@pytest.mark.parametrize("run", sorted(RUNS))
def test_values_at_pad_positions_do_not_change_any_range(mode, run):
    """The PAD embedding row times 1000 changes every PAD position's activations, not one range;
    hooks without the mask (plain ``fwd(x)``) do see it."""
    loud = dict(PARAMS, emb=PARAMS["emb"].copy())
    loud["emb"][PAD] *= 1000.0
    batches = [_batch([([4, 5, 6], [1, 4]), ([7], [1, 8, 9, 5])], 1, 1), _batch([([3, 9], [1, 2])], 2, 0)]
    ranges = []
    for params in (PARAMS, loud):
        hooks = _hooks(mode)
        for batch in batches:
            RUNS[run](params, batch, hooks)
        ranges.append(_ranges(hooks))
    _assert_same_ranges(*ranges)
    unmasked = _hooks(mode)
    for batch in batches:
        RUNS[run](loud, batch, _without_mask(unmasked))
    assert _ranges(unmasked)["enc.0.attn.W_q:in"][1] > 100 * ranges[0]["enc.0.attn.W_q:in"][1]


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3), st.data())
def test_a_batch_without_padding_gives_what_hooks_without_the_mask_give(S, T, B, data):
    """No PAD: the masked hooks (all valid) change nothing: same logits, gradients and ranges as
    the same quantizers called as plain fwd(x)."""
    pairs = [(data.draw(st.lists(st.integers(1, V - 1), min_size=S, max_size=S)),
              data.draw(st.lists(st.integers(1, V - 1), min_size=T, max_size=T))) for _ in range(B)]
    batch = _batch(pairs)
    masked = _hooks("ema")
    plain = _hooks("ema")
    loss, grads, _ = _train(PARAMS, batch, masked)
    loss_plain, grads_plain, _ = _train(PARAMS, batch, _without_mask(plain))
    assert loss == loss_plain and _ranges(masked) == _ranges(plain)
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads_plain[name])


@given(st.lists(tokens_st, min_size=2, max_size=3), st.sampled_from(["greedy", "beam"]))
def test_decoding_a_padded_batch_records_the_ranges_of_each_sentence_decoded_alone(sources, search):
    """Incremental decoding (encode + decode_step): the source mask covers the encoder, the
    cross-attention K/V inputs and probability columns; dead beam rows (fed PAD) are left out."""
    def decode(src, hooks):
        if search == "greedy":
            return greedy_decode(MODEL, PARAMS, src, 5, act_hooks=hooks)
        return beam_search(MODEL, PARAMS, src, beam_size=2, max_len=5, act_hooks=hooks)
    padded, alone = _hooks("observe"), _hooks("observe")
    src = _batch([(s, [1]) for s in sources])[0]
    out = decode(src, padded)
    assert out == [decode(_batch([(s, [1])])[0], alone)[0] for s in sources]
    _assert_same_ranges(_ranges(padded), _ranges(alone))


@pytest.mark.parametrize("bits", [8, 4])
def test_decode_step_equals_the_forward_under_frozen_quantizers_at_every_point(bits):
    """Frozen FQT quantizers are elementwise with a fixed range, so encode (cross-attention K, V
    hooked once) + decode_step (each new self-attention K, V row hooked) = the full forward."""
    hooks = _hooks("ema", bits)
    src, tgt_in, tgt_out = _batch([([4, 5, 6], [1, 4, 7]), ([7, 3], [1, 8, 9, 5]), ([9], [1, 2])])
    _train(PARAMS, (src, tgt_in, tgt_out), hooks)
    fqt.set_act_mode(hooks, "frozen")
    ref, _ = log_softmax_forward(MODEL.forward(PARAMS, src, tgt_in, act_hooks=hooks)[0])
    assert not np.allclose(ref, log_softmax_forward(MODEL.forward(PARAMS, src, tgt_in)[0])[0])
    real = tgt_in != PAD
    enc, state = MODEL.encode(PARAMS, src, act_hooks=hooks), None
    for t in range(tgt_in.shape[1]):
        logp, state = MODEL.decode_step(PARAMS, enc, tgt_in[:, t], state, act_hooks=hooks)
        np.testing.assert_allclose(logp[real[:, t]], ref[real[:, t], t], rtol=1e-9, atol=1e-9)


def test_attach_act_ranges_puts_each_attention_blocks_q_k_v_probs_ranges_on_its_w_q():
    """Every frozen quantizer's (S, Z) is in the file: matmul inputs in meta["act"] of their weight,
    Q, K, V, P of an attention block in meta["act_points"] of its W_q."""
    from tinyzip.compress import uniform
    hooks = _hooks("ema")
    _train(PARAMS, _batch([([4, 5, 6], [1, 4]), ([7], [1, 8, 9])]), hooks)
    fqt.set_act_mode(hooks, "frozen")
    packed = {n: uniform.pack_uniform(W.astype(np.float32), 8) for n, W in PARAMS.items() if W.ndim == 2}
    out = fqt.attach_act_ranges(packed, hooks)
    stored = {}
    for name, p in out.items():
        stored[fqt.input_point(name)] = p.meta["act"]
        for n, meta in p.meta.get("act_points", {}).items():
            stored[f"{name[:-4]}.{n}"] = meta
    assert stored == {p: fqt.act_meta(fwd.__self__) for p, (fwd, _) in hooks.items()}
    assert {n for n, p in out.items() if "act_points" in p.meta} == {a + ".W_q" for a in ATTENTION}
    with pytest.raises(ValueError, match="W_q"):
        fqt.attach_act_ranges({n: p for n, p in packed.items() if n != "dec.0.self_attn.W_q"}, hooks)
