"""The ``.tz`` manifest: its canonical JSON and checksum, and the schema check a load runs first.

The schema is in ``container.py``'s docstring. ``parse_manifest`` decodes the manifest (no
duplicate keys, no NaN/inf constants), checks the format and version, the checksum over the
canonical JSON without ``checksum``, every key and type, each tensor's ``float32_bytes`` and
``packed_bytes`` against its shape and arrays, the names' order, and that each member's arrays fill
it exactly. It raises ValueError; ``container.load_tz`` turns that into ``FileFormatError``.
"""
import hashlib
import json
import math
import re

import numpy as np

FORMAT = "tinyzip.tz"
FORMAT_VERSION = 2
KEY_RE = re.compile(r"[A-Za-z0-9_]+\Z")
MEMBER_RE = re.compile(r"[0-9]{2,}\.bin\Z")
KINDS = "biuf"                       # bool, signed, unsigned, float arrays; nothing else is stored


def float32_bytes(shape) -> int:
    """Bytes the tensor takes as float32: 4 * prod(shape)."""
    return 4 * math.prod(int(s) for s in shape)


def canonical(obj) -> bytes:
    """The canonical JSON bytes: sorted keys, no spaces, ASCII, no NaN/inf (the form written)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the manifest's checksum and each member's digest."""
    return hashlib.sha256(data).hexdigest()


def json_value(value, where: str):
    """``value`` as plain JSON types (tuples -> lists, NumPy scalars -> Python); TypeError otherwise."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}; JSON has no NaN/inf")
        return value
    if isinstance(value, (list, tuple)):
        return [json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-str key {k!r} ({type(k).__name__})")
        return {k: json_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}, not a JSON value")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate JSON key {sorted(k for k in keys if keys.count(k) > 1)[0]!r}")
    return dict(pairs)


def _reject_constant(name):
    raise ValueError(f"non-JSON constant {name}")


def _field(obj: dict, key: str, typ: type, where: str):
    """``obj[key]`` if it has type ``typ`` (bool is not an int here), else a ValueError naming it."""
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ValueError(f"manifest {where}.{key} must be {typ.__name__}, got {type(value).__name__}")
    return value


def _shape(obj: dict, where: str) -> tuple:
    shape = _field(obj, "shape", list, where)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"manifest {where}.shape must be non-negative ints, got {shape!r}")
    return tuple(shape)


def _dtype(obj: dict, where: str) -> np.dtype:
    dtype = _field(obj, "dtype", str, where)
    try:
        ok = np.dtype(dtype).str == dtype and np.dtype(dtype).kind in KINDS
    except TypeError:
        ok = False
    if not ok or dtype[0] not in "<|":
        raise ValueError(f"manifest {where}.dtype {dtype!r} is not a little-endian number type")
    return np.dtype(dtype)


def _exact_keys(obj, keys: set, where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"manifest {where} must be an object, got {type(obj).__name__}")
    if set(obj) != keys:
        raise ValueError(f"manifest {where} has keys {sorted(obj)}, expected {sorted(keys)}")


_TOP_KEYS = {"format", "format_version", "config", "extra", "tensors", "members", "checksum"}
_TENSOR_KEYS = {"name", "method", "shape", "meta", "member", "arrays", "float32_bytes", "packed_bytes"}
_ARRAY_KEYS = {"dtype", "shape"}
_MEMBER_KEYS = {"sha256", "bytes"}


def parse_manifest(raw: bytes) -> dict:
    """Decode, version-check, checksum-check and schema-check the manifest (ValueError on failure)."""
    try:
        manifest = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                              parse_constant=_reject_constant)
    except (UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"manifest is not JSON ({type(e).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"manifest does not declare format {FORMAT!r} (not a .tz file?)")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(f"format version {version!r} is not supported (this tinyzip reads version "
                         f"{FORMAT_VERSION}; export the model again)")
    _exact_keys(manifest, _TOP_KEYS, "top level")
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    if manifest["checksum"] != sha256(canonical(body)):
        raise ValueError("manifest checksum mismatch (the manifest was edited or is corrupt)")
    _field(manifest, "config", dict, "top level")
    _field(manifest, "extra", dict, "top level")
    members = _field(manifest, "members", dict, "top level")
    for name, m in members.items():
        where = f"members[{name!r}]"
        if not MEMBER_RE.match(name):
            raise ValueError(f"manifest member name {name!r} is not allowed")
        _exact_keys(m, _MEMBER_KEYS, where)
        _field(m, "sha256", str, where)
        if _field(m, "bytes", int, where) < 0:
            raise ValueError(f"manifest {where}.bytes is negative")
    filled = dict.fromkeys(members, 0)                # bytes of the arrays laid out in each member
    names = []
    for i, t in enumerate(_field(manifest, "tensors", list, "top level")):
        where = f"tensors[{i}]"
        _exact_keys(t, _TENSOR_KEYS, where)
        for key, typ in [("name", str), ("method", str), ("meta", dict), ("member", str),
                         ("arrays", dict), ("float32_bytes", int), ("packed_bytes", int)]:
            _field(t, key, typ, where)
        shape = _shape(t, where)
        names.append(t["name"])
        if t["float32_bytes"] != float32_bytes(shape):
            raise ValueError(f"manifest {where}.float32_bytes {t['float32_bytes']} != 4 * prod{shape}")
        if t["member"] not in members:
            raise ValueError(f"manifest {where}.member {t['member']!r} is not a listed member")
        packed_bytes = 0
        for key, spec in t["arrays"].items():
            if not KEY_RE.match(key):
                raise ValueError(f"manifest {where}.arrays key {key!r} must match [A-Za-z0-9_]+")
            _exact_keys(spec, _ARRAY_KEYS, f"{where}.arrays[{key!r}]")
            packed_bytes += math.prod(_shape(spec, where)) * _dtype(spec, where).itemsize
        if t["packed_bytes"] != packed_bytes:
            raise ValueError(f"manifest {where}.packed_bytes {t['packed_bytes']} != {packed_bytes}, "
                             f"the bytes of its arrays")
        filled[t["member"]] += packed_bytes
    if any(a >= b for a, b in zip(names, names[1:])):
        raise ValueError("manifest tensors are not sorted by name without repeats")
    for name, nbytes in filled.items():
        if nbytes != members[name]["bytes"]:
            raise ValueError(f"manifest member {name!r} has {members[name]['bytes']} bytes, its "
                             f"tensors' arrays {nbytes}")
    return manifest
