"""Model files and training checkpoints: one ``.npz`` each, written atomically, read without pickle.

Layout of both files (a zip of ``.npy`` members, readable by any NumPy, no tinyzip needed)::

    __meta__.npy            uint8 array holding UTF-8 JSON: {"format", "version", "arrays": {member:
                            {"shape", "dtype"}}, "config", "extra", ...}
    params/<name>.npy       one member per parameter (``params/enc.0.attn.W_q``)
    opt/<key>/<name>.npy    checkpoints only: each dict of arrays in the optimizer state (m, v, ...)

``format`` is ``"tinyzip.model"`` or ``"tinyzip.checkpoint"``; ``version`` is an int, bumped when
the layout changes. A checkpoint's JSON also holds ``step``, ``data_position`` ([epoch, batches
into the epoch]), the optimizer's scalar state and ``rng_state`` (``Generator.bit_generator.state``,
JSON-safe for PCG64).

Writes go to a temporary file in the target's directory, are flushed to disk, then renamed over the
target with ``os.replace``, so a crash mid-write leaves the previous file whole. Reads use
``np.load(allow_pickle=False)``; anything wrong (missing, truncated, corrupt, foreign, another
format or version, a member missing or of the wrong shape) raises
:class:`tinyzip.errors.FileFormatError` with a one-line message naming the file and the problem.
"""
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np

from tinyzip.errors import FileFormatError

MODEL_FORMAT = "tinyzip.model"
CHECKPOINT_FORMAT = "tinyzip.checkpoint"
VERSION = 1
_META = "__meta__"
_BIT_GENERATORS = {"PCG64": np.random.PCG64, "PCG64DXSM": np.random.PCG64DXSM,
                   "Philox": np.random.Philox, "SFC64": np.random.SFC64}


def _fail(path, problem: str) -> FileFormatError:
    return FileFormatError(f"{os.fspath(path)}: {' '.join(str(problem).split())}")


def _check_arrays(arrays: dict, what: str) -> None:
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{what} name {name!r} must be a non-empty str without '/'")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise TypeError(f"{what} {name!r} must be a numeric ndarray, got "
                            f"{type(value).__name__} {getattr(value, 'dtype', '')}")


def _write_atomic(path, members: dict, meta: dict) -> None:
    """Write members + JSON meta as one .npz at ``path`` via a temp file and ``os.replace``."""
    path = os.fspath(path)
    meta = dict(meta, arrays={k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in members.items()})
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_META: blob}, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read(path, expected_format: str) -> tuple[dict, dict]:
    """Read and validate an .npz written by :func:`_write_atomic`; returns (members, meta)."""
    if not os.path.exists(path):
        raise _fail(path, "no such file")
    if os.path.isdir(path):
        raise _fail(path, "is a directory, not a tinyzip file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise _fail(path, "is a single .npy array, not a tinyzip .npz file")
        with z:
            if _META not in z.files:
                raise _fail(path, f"not a tinyzip file (no {_META} member; a plain .npz?)")
            meta = json.loads(z[_META].tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or "format" not in meta or "version" not in meta:
                raise _fail(path, "not a tinyzip file (metadata lacks format/version)")
            if meta["format"] != expected_format:
                raise _fail(path, f"is a {meta['format']!r} file, expected {expected_format!r}")
            if meta["version"] != VERSION:
                raise _fail(path, f"format version {meta['version']!r} is not supported "
                                  f"(this tinyzip reads version {VERSION})")
            declared = meta.get("arrays", {})
            present = set(z.files) - {_META}
            if set(declared) != present:
                missing, unknown = sorted(set(declared) - present), sorted(present - set(declared))
                raise _fail(path, f"members do not match the metadata (missing {missing[:3]}, "
                                  f"unexpected {unknown[:3]})")
            members = {}
            for name in sorted(present):
                value = z[name]
                spec = declared[name]
                if list(value.shape) != spec["shape"] or value.dtype.str != spec["dtype"]:
                    raise _fail(path, f"member {name!r} is {value.dtype.str}{list(value.shape)}, "
                                      f"metadata says {spec['dtype']}{spec['shape']}")
                members[name] = value
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, TypeError,
            UnicodeDecodeError) as e:
        raise _fail(path, f"truncated or corrupt ({type(e).__name__}: {e})") from None
    return members, meta


def _group(members: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in members.items() if k.startswith(prefix)}


def save_model(path, params: dict, config: dict, extra: dict | None = None) -> None:
    """Write ``params`` (flat dict of arrays) with JSON ``config`` and ``extra`` to one .npz, atomically."""
    _check_arrays(params, "param")
    meta = {"format": MODEL_FORMAT, "version": VERSION, "config": config, "extra": extra or {}}
    _write_atomic(path, {f"params/{k}": v for k, v in params.items()}, meta)


def load_model(path, expected_shapes: dict | None = None) -> tuple[dict, dict, dict]:
    """Read a model file -> (params, config, extra).

    ``expected_shapes`` ({name: shape}, e.g. from the model built from ``config``) is checked too:
    a missing, unexpected or wrongly shaped parameter raises FileFormatError.
    """
    members, meta = _read(path, MODEL_FORMAT)
    params = _group(members, "params/")
    if expected_shapes is not None:
        check_shapes(path, params, expected_shapes)
    return params, meta.get("config", {}), meta.get("extra", {})


def load_seq2seq(path):
    """Read a Seq2Seq model file -> (model, params, extra), every shape checked against its config.

    Written by ``tinyzip train`` (``extra["model"] == "Seq2Seq"``); a config the model rejects or
    parameters that do not fit it raise FileFormatError.
    """
    from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

    params, config, extra = load_model(path)
    if extra.get("model", "Seq2Seq") != "Seq2Seq":
        raise _fail(path, f"holds a {extra['model']!r} model, not a Seq2Seq")
    try:
        model = Seq2Seq(Seq2SeqConfig.from_dict(config))
    except (TypeError, ValueError) as e:
        raise _fail(path, f"invalid Seq2Seq config ({e})") from None
    shapes = {k: v.shape for k, v in model.init_params(np.random.default_rng(0)).items()}
    check_shapes(path, params, shapes)
    return model, params, extra


def check_shapes(path, params: dict, expected_shapes: dict) -> None:
    """FileFormatError naming ``path`` unless ``params`` has exactly the names and shapes expected."""
    if set(params) != set(expected_shapes):
        missing = sorted(set(expected_shapes) - set(params))
        unknown = sorted(set(params) - set(expected_shapes))
        raise _fail(path, f"parameters do not match the config (missing {missing[:3]}, "
                          f"unexpected {unknown[:3]})")
    for name, shape in expected_shapes.items():
        if tuple(params[name].shape) != tuple(shape):
            raise _fail(path, f"parameter {name!r} has shape {tuple(params[name].shape)}, "
                              f"the config implies {tuple(shape)}")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns; ``rng`` continues the saved random stream exactly."""

    params: dict
    opt_state: dict
    step: int
    rng: np.random.Generator
    data_position: tuple
    config: dict
    extra: dict


def rng_state_to_json(rng: np.random.Generator) -> dict:
    """``rng.bit_generator.state`` as JSON-safe data (PCG64-family generators only)."""
    state = rng.bit_generator.state
    if state["bit_generator"] not in _BIT_GENERATORS:
        raise TypeError(f"cannot checkpoint a {state['bit_generator']} generator; use "
                        f"np.random.default_rng (PCG64)")
    return state


def rng_from_json(state: dict) -> np.random.Generator:
    """A new Generator whose stream continues exactly from a state saved by :func:`rng_state_to_json`."""
    bit_generator = _BIT_GENERATORS[state["bit_generator"]]()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def save_checkpoint(path, params: dict, opt_state: dict, *, step: int, rng: np.random.Generator,
                    data_position: tuple = (0, 0), config: dict | None = None,
                    extra: dict | None = None) -> None:
    """Write params, optimizer state, step, rng state and data position to one .npz, atomically.

    ``opt_state`` values are either JSON scalars (``"step"``) or dicts of arrays (``"m"``, ``"v"``).
    """
    _check_arrays(params, "param")
    members = {f"params/{k}": v for k, v in params.items()}
    opt_scalars = {}
    for key, value in opt_state.items():
        if isinstance(value, dict):
            _check_arrays(value, f"optimizer state {key!r}")
            members.update({f"opt/{key}/{k}": v for k, v in value.items()})
        else:
            opt_scalars[key] = value
    meta = {"format": CHECKPOINT_FORMAT, "version": VERSION, "step": int(step),
            "data_position": [int(x) for x in data_position], "rng_state": rng_state_to_json(rng),
            "opt_scalars": opt_scalars,
            "opt_groups": sorted(k for k, v in opt_state.items() if isinstance(v, dict)),
            "config": config or {}, "extra": extra or {}}
    _write_atomic(path, members, meta)


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    members, meta = _read(path, CHECKPOINT_FORMAT)
    try:
        opt_state = dict(meta["opt_scalars"])
        for key in meta["opt_groups"]:
            opt_state[key] = _group(members, f"opt/{key}/")
        rng = rng_from_json(meta["rng_state"])
        step, position = int(meta["step"]), tuple(int(x) for x in meta["data_position"])
    except (KeyError, TypeError, ValueError) as e:
        raise _fail(path, f"corrupt checkpoint metadata ({type(e).__name__}: {e})") from None
    return Checkpoint(_group(members, "params/"), opt_state, step, rng, position,
                      meta.get("config", {}), meta.get("extra", {}))
