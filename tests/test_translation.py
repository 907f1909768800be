"""translation.py: the glue between tokenizer, model, training, decoding and BLEU."""
import math
from dataclasses import replace

import numpy as np
import pytest

from tinyzip import io
from tinyzip.data import load_task
from tinyzip.errors import FileFormatError
from tinyzip.translation import PRESETS, Preset, encode_pairs, evaluate, load_translator, train_translation


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tr") / "copy.npz"
    task = load_task("copy")
    translator, result = train_translation(task, preset=replace(PRESETS["copy"], steps=40), out=out, log=None)
    return task, translator, result, out


def test_schedule_is_linear_warmup_then_inverse_sqrt_with_its_peak_at_warmup():
    p = Preset(vocab_size=10, model={}, steps=1, max_tokens=1, peak_lr=2e-3, warmup=100)
    assert p.schedule(0) == p.schedule(1) == 2e-3 / 100                 # step 0 guarded
    assert p.schedule(50) == pytest.approx(1e-3) and p.schedule(100) == pytest.approx(2e-3)
    assert p.schedule(400) == pytest.approx(2e-3 * math.sqrt(100 / 400))
    assert max(p.schedule(s) for s in range(1, 1000)) == p.schedule(100)


def test_batched_decoding_keeps_sentence_order_and_does_not_depend_on_the_batch(trained):
    task, translator, _, _ = trained
    ids = [translator.tokenizer.encode_src(s) for s, _ in task.test[:12]]
    together = translator.decode_ids(ids, batch_size=5)              # sorted by length, 3 batches
    alone = [translator.decode_ids([i])[0] for i in ids]
    assert together == alone


def test_encode_pairs_drops_pairs_longer_than_the_model_reads(trained):
    _, translator, _, _ = trained
    tok = translator.tokenizer
    pairs = [("a b", "a b"), (" ".join("abcdefgh"), "a")]
    kept = encode_pairs(tok, pairs, max_len=len(tok.encode_src("a b")) + 1)   # + 1: BOS / EOS
    assert kept == [(tok.encode_src("a b"), tok.encode_tgt("a b"))]


def test_model_file_round_trips_with_its_tokenizer_and_task(trained):
    task, translator, result, out = trained
    loaded = load_translator(out)
    assert io.load_model(out)[2]["task"] == "copy" and io.load_model(out)[2]["steps"] == result.step
    for name, W in translator.params.items():
        np.testing.assert_array_equal(loaded.params[name], W)
    texts = [s for s, _ in task.test[:5]]
    assert loaded.translate(texts) == translator.translate(texts)


def test_bleu_of_the_models_own_output_as_reference_is_100(trained):
    task, translator, _, _ = trained
    pairs = task.test[:10]
    hyps = translator.translate([s for s, _ in pairs])
    result = evaluate(translator, [(s, h) for (s, _), h in zip(pairs, hyps) if h.strip()])
    assert result["bleu"] == pytest.approx(100.0) and result["decode_tokens_per_s"] > 0


def test_a_model_file_without_tokenizer_is_refused_in_one_line(tmp_path, trained):
    _, translator, _, _ = trained
    path = tmp_path / "bare.npz"
    io.save_model(path, translator.params, translator.model.config.to_dict(), {})
    with pytest.raises(FileFormatError, match="not a translation model"):
        load_translator(path)


@pytest.mark.parametrize("kind", [".npz", ".tz"])
def test_a_file_whose_tensors_do_not_fit_its_config_is_refused_at_load(tmp_path, trained, kind):
    """Here a head-pruned model's weights under the unpruned config: one line naming the tensor."""
    from tinyzip import container
    from tinyzip.compress import head_pruning
    from tinyzip.compressed import pack_float
    _, translator, _, _ = trained
    mask = head_pruning.full_mask(translator.model)
    mask["enc.0.attn"][0] = 0
    _, params = head_pruning.prune_heads(translator.model, translator.params, mask)
    path, extra = tmp_path / f"m{kind}", {"tokenizer": translator.tokenizer.to_dict()}
    if kind == ".npz":
        io.save_model(path, params, translator.model.config.to_dict(), extra)
    else:
        container.save_tz(path, {n: pack_float(W) for n, W in params.items()}, translator.model.config.to_dict(), extra)
    with pytest.raises(FileFormatError, match=r"parameter 'enc.0.attn.W_.' has shape .*, the config implies"):
        load_translator(path)


def test_too_long_sentence_is_a_clear_error(trained):
    _, translator, _, _ = trained
    with pytest.raises(ValueError, match="reads at most"):
        translator.decode_ids([[5] * (translator.model.config.max_len + 1)])


def test_resume_reuses_the_checkpoints_tokenizer_and_continues_exactly(tmp_path):
    """2N steps in one run equal N steps, then N more resumed from the checkpoint (which also
    carries the tokenizer, so resuming does not learn BPE again)."""
    task = load_task("copy")
    preset = replace(PRESETS["copy"], steps=6)
    _, straight = train_translation(task, preset=preset, out=tmp_path / "a.npz", log=None)
    train_translation(task, preset=replace(preset, steps=3), out=tmp_path / "b.npz", log=None)
    resumed, second = train_translation(task, preset=preset, out=tmp_path / "b.npz", resume=True, log=None)
    np.testing.assert_allclose(second.losses, straight.losses[3:], rtol=1e-6)
    for name, W in straight.params.items():
        np.testing.assert_allclose(resumed.params[name], W, rtol=1e-5, atol=1e-7)
