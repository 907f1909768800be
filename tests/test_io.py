"""Tests of tinyzip.io: round trips, atomic writes, and one-line FileFormatErrors for bad files."""
import json
import os

import numpy as np
import pytest

from tinyzip import io
from tinyzip.errors import FileFormatError
from tinyzip.nn import optim


def _params(rng):
    return {"emb": rng.normal(size=(11, 4)).astype(np.float32),
            "enc.0.ln1.gamma": np.ones(4, np.float32),
            "scale64": rng.normal(size=(3,)),
            "counts": np.arange(5, dtype=np.int64)}


def _assert_one_line_naming(excinfo, path, words):
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message, message
    assert words in message, message


def test_model_round_trip_keeps_values_dtypes_config_extra(tmp_path):
    rng = np.random.default_rng(0)
    params, path = _params(rng), tmp_path / "m.npz"
    config = {"D": 4, "H": 2, "vocab": 11, "pre_ln": False}
    extra = {"task": "copy", "bleu": 12.5, "tokenizer": {"merges": [["a", "b"]]}}
    io.save_model(path, params, config, extra)
    loaded, config2, extra2 = io.load_model(path, {k: v.shape for k, v in params.items()})
    assert config2 == config and extra2 == extra and set(loaded) == set(params)
    for name, value in params.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)


def test_file_is_plain_npz_readable_without_pickle(tmp_path):
    """Engineers without tinyzip read the file with NumPy alone."""
    path = tmp_path / "m.npz"
    io.save_model(path, {"w": np.arange(3.0)}, {"D": 1}, {})
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["__meta__"].tobytes())
        np.testing.assert_array_equal(z["params/w"], np.arange(3.0))
    assert meta["format"] == "tinyzip.model" and meta["version"] == 1


def test_crash_mid_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    path = tmp_path / "m.npz"
    old = _params(rng)
    io.save_model(path, old, {"v": 1}, {})
    calls = []
    real_write = np.lib.format.write_array

    def crash_after_two_members(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt  # Ctrl-C while writing the third member
        return real_write(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", crash_after_two_members)
    with pytest.raises(KeyboardInterrupt):
        io.save_model(path, _params(rng), {"v": 2}, {})
    monkeypatch.undo()
    loaded, config, _ = io.load_model(path)
    assert config == {"v": 1}
    for name, value in old.items():
        np.testing.assert_array_equal(loaded[name], value)
    assert os.listdir(tmp_path) == ["m.npz"], "the temporary file was not removed"


def test_missing_file(tmp_path):
    with pytest.raises(FileFormatError) as e:
        io.load_model(tmp_path / "nope.npz")
    _assert_one_line_naming(e, tmp_path / "nope.npz", "no such file")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "m.npz"
    io.save_model(path, _params(np.random.default_rng(2)), {}, {})
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(FileFormatError) as e:
        io.load_model(path)
    _assert_one_line_naming(e, path, "")


def test_corrupt_member_bytes(tmp_path):
    """One flipped byte inside an array's data fails the zip CRC-32."""
    path = tmp_path / "m.npz"
    big = np.zeros((64, 64), np.float32)
    io.save_model(path, {"W": big}, {}, {})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError) as e:
        io.load_model(path)
    _assert_one_line_naming(e, path, "corrupt")


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.ones(2))
    single = tmp_path / "single.npy"
    np.save(single, np.ones(2))
    for path, words in [(text, "corrupt"), (plain, "no __meta__"), (single, "single .npy")]:
        with pytest.raises(FileFormatError) as e:
            io.load_model(path)
        _assert_one_line_naming(e, path, words)


def test_checkpoint_is_not_a_model_and_vice_versa(tmp_path):
    params = {"w": np.ones(2)}
    ckpt, model = tmp_path / "c.npz", tmp_path / "m.npz"
    io.save_checkpoint(ckpt, params, optim.sgd_init(params), step=3, rng=np.random.default_rng(0))
    io.save_model(model, params, {}, {})
    with pytest.raises(FileFormatError) as e:
        io.load_model(ckpt)
    _assert_one_line_naming(e, ckpt, "tinyzip.checkpoint")
    with pytest.raises(FileFormatError) as e:
        io.load_checkpoint(model)
    _assert_one_line_naming(e, model, "tinyzip.model")


def _write_by_hand(path, meta, **members):
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **members)


def test_wrong_version(tmp_path):
    path = tmp_path / "future.npz"
    _write_by_hand(path, {"format": "tinyzip.model", "version": 99, "arrays": {}})
    with pytest.raises(FileFormatError) as e:
        io.load_model(path)
    _assert_one_line_naming(e, path, "version 99")


def test_member_shape_disagrees_with_metadata(tmp_path):
    path = tmp_path / "tampered.npz"
    meta = {"format": "tinyzip.model", "version": 1,
            "arrays": {"params/W": {"shape": [2, 2], "dtype": "<f4"}}}
    _write_by_hand(path, meta, **{"params/W": np.ones(3, np.float32)})
    with pytest.raises(FileFormatError) as e:
        io.load_model(path)
    _assert_one_line_naming(e, path, "'params/W'")


def test_wrong_shape_versus_config(tmp_path):
    path = tmp_path / "m.npz"
    io.save_model(path, {"W": np.ones((4, 3), np.float32)}, {"D": 4}, {})
    with pytest.raises(FileFormatError) as e:
        io.load_model(path, {"W": (4, 4)})
    _assert_one_line_naming(e, path, "(4, 4)")
    with pytest.raises(FileFormatError) as e:
        io.load_model(path, {"W": (4, 3), "b": (3,)})
    _assert_one_line_naming(e, path, "missing ['b']")


def test_bad_params_are_rejected_before_writing(tmp_path):
    with pytest.raises(TypeError, match="'x'"):
        io.save_model(tmp_path / "m.npz", {"x": np.array(["a"], dtype=object)}, {}, {})
    with pytest.raises(ValueError, match="'a/b'"):
        io.save_model(tmp_path / "m.npz", {"a/b": np.ones(1)}, {}, {})
    assert not os.listdir(tmp_path)


def test_checkpoint_round_trip_continues_rng_stream(tmp_path):
    rng = np.random.default_rng(123)
    rng.normal(size=7)  # advance somewhere arbitrary
    params = {"W": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    grads = {"W": np.full((2, 3), 0.1, np.float32), "b": np.full(3, -0.2, np.float32)}
    params, opt_state = optim.adam_step(params, grads, optim.adam_init(params), 0.01)
    path = tmp_path / "c.npz"
    io.save_checkpoint(path, params, opt_state, step=1, rng=rng, data_position=(2, 5),
                       config={"D": 3}, extra={"task": "copy"})
    ckpt = io.load_checkpoint(path)
    np.testing.assert_array_equal(ckpt.rng.normal(size=5), rng.normal(size=5))
    assert ckpt.step == 1 and ckpt.data_position == (2, 5)
    assert ckpt.config == {"D": 3} and ckpt.extra == {"task": "copy"}
    assert ckpt.opt_state["step"] == 1 and set(ckpt.opt_state) == {"step", "m", "v"}
    for key in ("m", "v"):
        for name in params:
            np.testing.assert_array_equal(ckpt.opt_state[key][name], opt_state[key][name])


def test_checkpoint_rejects_uncheckpointable_rng(tmp_path):
    mt = np.random.Generator(np.random.MT19937(0))
    with pytest.raises(TypeError, match="MT19937"):
        io.save_checkpoint(tmp_path / "c.npz", {"w": np.ones(1)}, {"step": 0}, step=0, rng=mt)


def test_load_seq2seq_checks_every_shape_against_the_config(tmp_path):
    from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

    config = Seq2SeqConfig(src_vocab=10, tgt_vocab=10, D=8, H=2, F=16, enc_layers=1, dec_layers=1, max_len=6)
    params = Seq2Seq(config).init_params(np.random.default_rng(0))
    path = tmp_path / "m.npz"
    io.save_model(path, params, config.to_dict(), {"model": "Seq2Seq"})
    model, loaded, extra = io.load_seq2seq(path)
    assert model.config == config and extra == {"model": "Seq2Seq"}
    np.testing.assert_array_equal(loaded["enc.0.ffn.W_1"], params["enc.0.ffn.W_1"])

    io.save_model(path, dict(params, **{"enc.0.ffn.W_1": np.ones((8, 17), np.float32)}), config.to_dict(), {})
    with pytest.raises(FileFormatError) as e:
        io.load_seq2seq(path)
    _assert_one_line_naming(e, path, "'enc.0.ffn.W_1' has shape (8, 17), the config implies (8, 16)")
    io.save_model(path, params, dict(config.to_dict(), D=7), {})
    with pytest.raises(FileFormatError) as e:
        io.load_seq2seq(path)
    _assert_one_line_naming(e, path, "invalid Seq2Seq config")
    io.save_model(path, params, config.to_dict(), {"model": "EncoderClassifier"})
    with pytest.raises(FileFormatError) as e:
        io.load_seq2seq(path)
    _assert_one_line_naming(e, path, "not a Seq2Seq")
