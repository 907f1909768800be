"""rows.py (the demo's row recipes) and report.py's pieces that are not the demo run itself (that runs in
tests/test_cli.py)."""
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.report import evenly_spaced
from tinyzip.compress import ternary
from tinyzip.compressed import unpack
from tinyzip.plans import plan, row_name
from tinyzip.rows import (Context, row_distilled_student, row_head_pruning, row_hessian_mixed, row_layerdrop,
                          row_lottery, row_low_rank, row_ternary, row_uniform)
from tinyzip.translation import PRESETS


@given(st.integers(1, 300), st.integers(1, 300))
def test_evenly_spaced_subset_is_fixed_ordered_and_spans_the_split(size, n):
    pairs = [(f"s{i}", f"t{i}") for i in range(size)]
    subset = evenly_spaced(pairs, n)
    idx = [int(s[1:]) for s, _ in subset]
    assert len(subset) == min(n, size) and idx == sorted(set(idx))     # n distinct, order kept
    assert idx[0] == 0 and (n == 1 or idx[-1] == size - 1)              # first and last book both in
    assert subset == evenly_spaced(pairs, n)                            # a fixed subset


def test_evenly_spaced_rejects_nonpositive_n():
    with pytest.raises(ValueError, match="n_test"):
        evenly_spaced([("a", "b")] * 3, 0)


def test_full_plans_hold_fqt_grid_and_keep_their_keys():
    """FQT's grid in both --full plans: PTQ and QAT at 8, 6, 4 bits, weights only and
    weights+activations (the quick task's w+a rows after the weight-only ones; the Bible model's
    post-training rows before its fine-tuned ones); resumed --full runs find their measured rows
    under the same keys as before. The short demo plans have no w+a rows."""
    weight_only = [row_name(row_uniform, {"bits": b, "steps": s}) for s in (0, 400) for b in (8, 6, 4)]
    wa = [row_name(row_uniform, {"bits": b, "steps": s, "activations": True}) for s in (0, 400) for b in (8, 6, 4)]
    keys = [row_name(fn, kw) for fn, kw in plan("numbers-de", True)]
    assert keys[keys.index(weight_only[0]):keys.index(weight_only[0]) + 12] == weight_only + wa
    assert weight_only[0] == "uniform(bits=8, steps=0)"
    bible = plan("bible-es", True)
    keys = [row_name(fn, kw) for fn, kw in bible]
    assert set(weight_only + wa) <= set(keys)
    tuned = [sum(v for k, v in kw.items() if k.endswith("steps")) > 0 for _, kw in bible]
    assert tuned == sorted(tuned)                           # post-training rows first
    for task in ("bible-es", "numbers-de"):
        assert not any(kw.get("activations") for _, kw in plan(task, False))


def tiny_row_context(H=2, layers=1):
    """A model of ``layers`` + ``layers`` layers (D=16), its init params and a Context with 40
    random training pairs."""
    model = Seq2Seq(Seq2SeqConfig(src_vocab=30, tgt_vocab=30, D=16, H=H, F=24, enc_layers=layers,
                                  dec_layers=layers))
    params = model.init_params(np.random.default_rng(0))
    rng = np.random.default_rng(1)
    train_ids = [(list(rng.integers(4, 30, n)), list(rng.integers(4, 30, n))) for n in rng.integers(2, 8, 40)]
    return Context(SimpleNamespace(model=model, params=params), train_ids, [], "", PRESETS["copy"], 0), params


@pytest.mark.parametrize("steps", [0, 2])
def test_wa_uniform_row_exports_a_static_input_range_for_every_matrix(steps):
    """PTQ (steps = 0, EMA calibration) and QAT (EMA ranges learned while training) both leave a
    frozen (S, Z) in meta["act"] of every 2-D weight, on the unsigned grid for W_2 (ReLU output)."""
    ctx, params = tiny_row_context()
    name, bits, packed = row_uniform(ctx, params, bits=4, steps=steps, activations=True, calib_batches=2)
    assert name == f"uniform-{'qat' if steps else 'ptq'}-w+a-4bit" and bits == 4
    for n, W in params.items():
        act = packed[n].meta.get("act")
        assert (act is not None) == (W.ndim == 2)
        if act is not None:
            assert act["bits"] == 4 and act["unsigned"] == n.endswith("ffn.W_2") and act["scale"] > 0


@pytest.mark.parametrize("distill", [None, "outputs", "outputs+layers"])
def test_ternary_row_packs_every_matrix_at_two_bits_with_embedding_rows(distill):
    """TernaryBERT's granularity: one alpha per Linear matrix, one per token row of the embedding;
    with ``distill`` the fine-tuning runs on the Distiller against the baseline, which stays as it was."""
    ctx, params = tiny_row_context()
    baseline = {k: v.copy() for k, v in params.items()}
    name, bits, packed = row_ternary(ctx, params, steps=3, distill=distill)
    assert name == ("ternary" if distill is None else f"ternary-distilled-{distill}") and bits == 2
    matrices = [n for n, W in params.items() if W.ndim == 2]
    assert all(packed[n].method == ("ternary" if n in matrices else "float32") for n in params)
    assert all(packed[n].meta["granularity"] == ("row" if n == "emb" else "tensor") for n in matrices)
    moved = [n for n in matrices                     # fine-tuning changed what is stored
             if not np.array_equal(unpack(packed[n]), unpack(ternary.pack_ternary(params[n], packed[n].meta["granularity"])))]
    assert moved
    assert all(np.array_equal(params[k], baseline[k]) for k in params)


@pytest.mark.parametrize("fraction, steps", [(0.0, 0), (0.25, 0), (0.5, 3)])
def test_head_pruning_row_stores_a_smaller_model_with_its_config(fraction, steps):
    """round(fraction N) heads removed by (H4), the packed shapes those of the new config (what
    the file's reader builds), float16 storage; fraction 0 is the storage alone."""
    ctx, params = tiny_row_context(H=4)
    name, bits, packed, new_config = row_head_pruning(ctx, params, fraction=fraction, steps=steps, examples=5)
    assert bits == 16 and all(t.method == "float16" for t in packed.values())
    assert name == (f"head_pruning-{int(fraction * 100)}+float16" if fraction else "float16")
    assert sum(len(h) for h in new_config.pruned_heads.values()) == round(fraction * 12)
    shapes = {n: W.shape for n, W in Seq2Seq(new_config).init_params(np.random.default_rng(0)).items()}
    assert shapes == {n: t.shape for n, t in packed.items()}


@pytest.mark.parametrize("steps", [0, 2])
def test_hessian_mixed_rows_put_the_high_width_on_the_most_or_least_sensitive_layer(steps):
    """One Hessian run (memoized in ctx) serves both orders; "hessian" gives the layer of larger
    Omega the high width, "reverse" the other; the embedding is 8-bit, every matrix 'uniform'."""
    ctx, params = tiny_row_context()
    rows = {o: row_hessian_mixed(ctx, params, low=2, high=4, n_high=1, order=o, steps=steps)
            for o in ("hessian", "reverse")}
    assert len(ctx.sensitivities) == 1
    omega = {b: s["omega"] for b, s in next(iter(ctx.sensitivities.values())).items()}
    sharp, flat = sorted(omega, key=omega.get, reverse=True)
    for order, (name, bits, packed) in rows.items():
        high = sharp if order == "hessian" else flat
        assert name == f"hessian_mixed-2/4bit-1high-{order}" and 2 < bits < 8
        for n, W in params.items():
            if W.ndim == 2:
                expected = 8 if n == "emb" else 4 if n.startswith(high + ".") else 2
                assert packed[n].method == "uniform" and packed[n].meta["bits"] == expected
            else:
                assert packed[n].method == "float32"
    with pytest.raises(ValueError, match="order"):
        row_hessian_mixed(ctx, params, order="random")


@pytest.mark.parametrize("kwargs, layers, name", [
    ({}, (1, 1), "layerdrop-1+1layers+float16"),
    ({"rate_dec": 0.0, "after_steps": 2}, (1, 2), "layerdrop-1+2layers+float16"),
    ({"train_p": 0.5, "steps": 2}, (1, 1), "layerdrop-p0.5-1+1layers+float16"),
    ({"rate_enc": 0.0, "rate_dec": 0.0, "train_p": 0.5, "steps": 2, "scratch": True}, (2, 2),
     "layerdrop-p0.5-scratch-2+2layers+float16"),
])
def test_layerdrop_rows_store_the_smaller_model_they_name(kwargs, layers, name):
    """Every Other at 1/2 keeps the first of two layers; the file holds exactly the smaller
    config's tensors, in float16; LayerDrop training is shared by the rows of one setting."""
    ctx, params = tiny_row_context(layers=2)
    got_name, bits, packed, config = row_layerdrop(ctx, params, **kwargs)
    assert got_name == name and bits == 16 and (config.enc_layers, config.dec_layers) == layers
    shapes = {n: W.shape for n, W in Seq2Seq(config).init_params(np.random.default_rng(0)).items()}
    assert shapes == {n: t.shape for n, t in packed.items()}
    assert all(t.method == "float16" for t in packed.values())
    if not kwargs:
        np.testing.assert_array_equal(unpack(packed["dec.0.ffn.W_1"]), params["dec.0.ffn.W_1"].astype(np.float16))
    if kwargs.get("train_p"):
        assert len(ctx.layerdrop) == 1
        row_layerdrop(ctx, params, **dict(kwargs, rate_enc=0.5))
        assert len(ctx.layerdrop) == 1


@pytest.mark.parametrize("kwargs, name", [({"steps": 2}, "distilled-1+1layers+float16"),
                                          ({"steps": 2, "alpha": 1.0, "gamma": 0.0}, "distilled-1+1layers-soft+float16")])
def test_distilled_student_starts_from_every_other_teacher_layer_and_trains(kwargs, name):
    """DistilBERT's student: half the layers, taken from the teacher (layer 0 of two), then
    trained against it; the teacher (the context's translator) is left as it was."""
    ctx, params = tiny_row_context(layers=2)
    before = {n: W.copy() for n, W in params.items()}
    got_name, bits, packed, config = row_distilled_student(ctx, params, **kwargs)
    assert got_name == name and bits == 16 and (config.enc_layers, config.dec_layers) == (1, 1)
    shapes = {n: W.shape for n, W in Seq2Seq(config).init_params(np.random.default_rng(0)).items()}
    assert shapes == {n: t.shape for n, t in packed.items()}
    untrained = row_distilled_student(ctx, params, steps=0)[2]
    np.testing.assert_array_equal(unpack(untrained["dec.0.ffn.W_1"]), params["dec.0.ffn.W_1"].astype(np.float16))
    assert not np.array_equal(unpack(packed["dec.0.ffn.W_1"]), unpack(untrained["dec.0.ffn.W_1"]))
    assert all(np.array_equal(params[n], before[n]) for n in params)


@pytest.mark.parametrize("reinit", [False, True])
def test_lottery_rows_store_the_ticket_sparse_and_reinit_keeps_its_mask(reinit, tmp_path):
    """Two rounds of 20% (ceil) of the attention and FFN matrices, each retrained with the
    baseline's recipe (2 steps here); the file is sparse with exactly the mask's zeros; the
    control trains the same mask from other initial values; rounds are checkpointed and shared."""
    ctx, params = tiny_row_context()
    ctx.preset, ctx.checkpoint_dir = replace(ctx.preset, steps=2), str(tmp_path)
    name, bits, packed = row_lottery(ctx, params, rounds=2, reinit=reinit)
    prunable = [n for n, W in params.items() if W.ndim == 2 and n != "emb"]
    total = sum(params[n].size for n in prunable)
    kept = total - math.ceil(0.2 * total)
    kept -= math.ceil(0.2 * kept)
    assert name == f"lottery-{'reinit' if reinit else 'ticket'}-{round(100 * kept / total, 1):g}%kept" and bits is None
    restored = {n: unpack(packed[n]) for n in prunable}
    assert sum(int(np.count_nonzero(W)) for W in restored.values()) == kept
    assert all(packed[n].method == "sparse" for n in prunable) and packed["emb"].method == "float32"
    ticket = row_lottery(ctx, params, rounds=2)[2]               # from the checkpoints
    same_mask = all(np.array_equal(unpack(ticket[n]) != 0, restored[n] != 0) for n in prunable)
    same_values = all(np.array_equal(unpack(ticket[n]), restored[n]) for n in prunable)
    assert same_mask and same_values == (not reinit)


@pytest.mark.parametrize("embedding_rank, steps", [(None, 0), (4, 3)])
def test_low_rank_row_stores_factors_of_every_matrix(embedding_rank, steps):
    """Rank min(rank, m, n) factors for the attention and FFN matrices, the embedding's only when
    asked; fine-tuning moves the factors; everything float16."""
    ctx, params = tiny_row_context()
    name, bits, packed = row_low_rank(ctx, params, rank=8, embedding_rank=embedding_rank, steps=steps)
    assert bits == 16 and name == "low_rank-8" + ("" if embedding_rank is None else "+emb4") + "+float16"
    for n, W in params.items():
        factored = W.ndim == 2 and (n != "emb" or embedding_rank is not None)
        assert packed[n].method == ("low_rank" if factored else "float16") and packed[n].shape == W.shape
        if factored:
            assert packed[n].meta["rank"] == (embedding_rank if n == "emb" else 8)
            assert packed[n].arrays["A"].dtype == np.float16
    post = row_low_rank(ctx, params, rank=8, embedding_rank=embedding_rank)[2]
    moved = not np.array_equal(unpack(post["enc.0.ffn.W_1"]), unpack(packed["enc.0.ffn.W_1"]))
    assert moved == (steps > 0)
