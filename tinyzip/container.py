"""The ``.tz`` compressed-model file: real bytes on disk, exact accounting.

A ``.tz`` file is a zip archive (every member ``ZIP_STORED``) holding one ``.npy`` member per
exported array and a JSON manifest ``manifest.json`` (written last). The compression ratio tinyzip
reports is ``file_ratio``: bytes of the float32 model file / bytes of the ``.tz`` file.

Manifest schema, format version 1 (all keys required, no others)::

    {"format": "tinyzip.tz", "format_version": 1,
     "config": {...}, "extra": {...},                     # JSON objects, opaque to the container
     "tensors": [{"name": str, "method": str, "shape": [int, ...], "meta": {...},
                  "members": {array_key: member_name, ...},
                  "float32_bytes": 4 * prod(shape), "packed_bytes": sum of the arrays' nbytes}, ...],
     "members": {member_name: {"sha256": hex, "dtype": "<f4" | "|u1" | ..., "shape": [int, ...],
                               "bytes": size of the .npy member}, ...},
     "checksum": sha256 hex of the canonical JSON of this object without "checksum"}

Canonical JSON is ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``;
``manifest.json`` itself is written in that form (compact: its bytes count in the file too).
``checksum`` catches an edited manifest (config, meta, shapes), the per-member ``sha256`` an edited
array, so a damaged file fails to load instead of giving a silently different model. Member names
are ``{tensor index:05d}.{array key}.npy``, tensors sorted by name.

Why ``ZIP_STORED`` and not DEFLATE (measured with zlib level 9 on a 512x512 Gaussian layer): DEFLATE
saves 0% on uniform 4-bit codes and on sign planes, 7% on float32/float16, 14% on int8, 27% on
k-means codes and 68% on absolute int32 sparse indices. Every saving it finds is entropy coding
that a method owns (Huffman coding and relative indices, Deep Compression): leaving it to the
container would hide it inside every row instead of showing it in that method's row. Stored
members also make the reader safe against zip bombs (a member's size is its stored size, which
cannot exceed the file) and keep each array's bytes contiguous in the file.
Overhead is about 0.5 KB per array (128 B ``.npy`` header, ~110 B of zip headers, ~250 B of
manifest entry); ``format_inspect`` prints it, and it is part of every ratio tinyzip reports.

Determinism: fixed timestamps (1980-01-01), sorted members, ``.npy`` format 1.0 little-endian,
sorted JSON, so save -> load -> save gives identical bytes. Writes go to a temporary file in the
target's directory, then ``os.replace``: a failed or interrupted write leaves any old file intact.
"""
import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np

from tinyzip.compress.base import PackedTensor
from tinyzip.errors import FileFormatError

FORMAT = "tinyzip.tz"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20        # tokenizer merges fit easily; a 1 GB "manifest" is an attack
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_KEY_RE = re.compile(r"[A-Za-z0-9_]+\Z")
_MEMBER_RE = re.compile(r"[0-9]{5,}\.[A-Za-z0-9_]+\.npy\Z")
_KINDS = "biuf"                      # bool, signed, unsigned, float arrays; nothing else is stored


@dataclass(frozen=True)
class TzFile:
    """A loaded ``.tz`` file: ``packed`` tensors by name, model ``config``, ``extra``, the manifest."""

    packed: dict
    config: dict
    extra: dict
    manifest: dict
    file_bytes: int = 0


def float32_bytes(shape) -> int:
    """Bytes the tensor takes as float32: 4 * prod(shape)."""
    return 4 * math.prod(int(s) for s in shape)


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_value(value, where: str):
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
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-str key {k!r} ({type(k).__name__})")
        return {k: _json_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}, not a JSON value")


def _npy_bytes(array: np.ndarray) -> bytes:
    """One ``.npy`` member (format 1.0, C order, little-endian)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def _prepare(packed: dict) -> list:
    """Validate ``packed`` and return (name, tensor, {key: little-endian C array}) sorted by name."""
    if not isinstance(packed, dict):
        raise TypeError(f"packed must be a dict name -> PackedTensor, got {type(packed).__name__}")
    out = []
    for name in sorted(packed, key=lambda n: (not isinstance(n, str), str(n))):
        t = packed[name]
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty str, got {name!r}")
        if not isinstance(t, PackedTensor):
            raise TypeError(f"packed[{name!r}] is a {type(t).__name__}, not a PackedTensor")
        if not isinstance(t.method, str) or not t.method:
            raise TypeError(f"packed[{name!r}].method must be a non-empty str, got {t.method!r}")
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0
                   for s in t.shape):
            raise ValueError(f"packed[{name!r}].shape must be non-negative ints, got {t.shape!r}")
        if not isinstance(t.arrays, dict) or not isinstance(t.meta, dict):
            raise TypeError(f"packed[{name!r}].arrays and .meta must be dicts")
        arrays = {}
        for key in sorted(t.arrays):
            a = t.arrays[key]
            if not isinstance(key, str) or not _KEY_RE.match(key):
                raise ValueError(f"packed[{name!r}] array key {key!r} must match [A-Za-z0-9_]+")
            if not isinstance(a, np.ndarray) or a.dtype.kind not in _KINDS:
                raise TypeError(f"packed[{name!r}].arrays[{key!r}] must be a bool/int/uint/float "
                                f"ndarray, got {getattr(a, 'dtype', type(a).__name__)}")
            arrays[key] = np.require(a, a.dtype.newbyteorder("<"), ["C"])  # keeps 0-d shape
        out.append((name, t, arrays))
    return out


def save_tz(path, packed: dict, config: dict, extra: dict | None = None) -> int:
    """Write ``packed`` tensors, model ``config`` and ``extra`` to ``path`` atomically; return file bytes."""
    path = os.fspath(path)
    if not isinstance(config, dict) or not (extra is None or isinstance(extra, dict)):
        raise TypeError("config must be a dict and extra a dict or None")
    items = _prepare(packed)
    config = _json_value(config, "config")
    extra = _json_value({} if extra is None else extra, "extra")
    tensors, members = [], {}
    for i, (name, t, arrays) in enumerate(items):
        tensors.append({
            "name": name, "method": t.method, "shape": [int(s) for s in t.shape],
            "meta": _json_value(t.meta, f"packed[{name!r}].meta"),
            "members": {key: f"{i:05d}.{key}.npy" for key in arrays},
            "float32_bytes": float32_bytes(t.shape),
            "packed_bytes": int(sum(a.nbytes for a in arrays.values())),
        })
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
                for tensor, (_, _, arrays) in zip(tensors, items):
                    for key, member in tensor["members"].items():
                        data = _npy_bytes(arrays[key])
                        members[member] = {"sha256": _sha256(data), "dtype": arrays[key].dtype.str,
                                           "shape": list(arrays[key].shape), "bytes": len(data)}
                        _write_member(zf, member, data)
                manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config,
                            "extra": extra, "tensors": tensors, "members": members}
                manifest["checksum"] = _sha256(_canonical(manifest))
                _write_member(zf, MANIFEST, _canonical(manifest))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return os.path.getsize(path)


def _write_member(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


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


def _exact_keys(obj, keys: set, where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"manifest {where} must be an object, got {type(obj).__name__}")
    if set(obj) != keys:
        raise ValueError(f"manifest {where} has keys {sorted(obj)}, expected {sorted(keys)}")


_TOP_KEYS = {"format", "format_version", "config", "extra", "tensors", "members", "checksum"}
_TENSOR_KEYS = {"name", "method", "shape", "meta", "members", "float32_bytes", "packed_bytes"}
_MEMBER_KEYS = {"sha256", "dtype", "shape", "bytes"}


def _parse_manifest(raw: bytes) -> dict:
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
        raise ValueError(f"format version {version!r} is not supported (this tinyzip reads "
                         f"version {FORMAT_VERSION})")
    _exact_keys(manifest, _TOP_KEYS, "top level")
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    if manifest["checksum"] != _sha256(_canonical(body)):
        raise ValueError("manifest checksum mismatch (the manifest was edited or is corrupt)")
    _field(manifest, "config", dict, "top level")
    _field(manifest, "extra", dict, "top level")
    for name, m in _field(manifest, "members", dict, "top level").items():
        where = f"members[{name!r}]"
        _exact_keys(m, _MEMBER_KEYS, where)
        _field(m, "sha256", str, where)
        _field(m, "bytes", int, where)
        _shape(m, where)
        dtype = _field(m, "dtype", str, where)
        try:
            ok = np.dtype(dtype).str == dtype and np.dtype(dtype).kind in _KINDS
        except TypeError:
            ok = False
        if not ok or dtype[0] not in "<|":
            raise ValueError(f"manifest {where}.dtype {dtype!r} is not a little-endian number type")
    referenced, names = [], set()
    for i, t in enumerate(_field(manifest, "tensors", list, "top level")):
        where = f"tensors[{i}]"
        _exact_keys(t, _TENSOR_KEYS, where)
        for key, typ in [("name", str), ("method", str), ("meta", dict), ("members", dict),
                         ("float32_bytes", int), ("packed_bytes", int)]:
            _field(t, key, typ, where)
        shape = _shape(t, where)
        if t["name"] in names:
            raise ValueError(f"manifest names tensor {t['name']!r} twice")
        names.add(t["name"])
        if t["float32_bytes"] != float32_bytes(shape):
            raise ValueError(f"manifest {where}.float32_bytes {t['float32_bytes']} != 4 * prod{shape}")
        packed_bytes = 0
        for key, member in t["members"].items():
            if not _KEY_RE.match(key) or not isinstance(member, str) or member not in manifest["members"]:
                raise ValueError(f"manifest {where}.members[{key!r}] -> {member!r} is not a listed member")
            m = manifest["members"][member]
            packed_bytes += math.prod(m["shape"]) * np.dtype(m["dtype"]).itemsize
            referenced.append(member)
        if t["packed_bytes"] != packed_bytes:
            raise ValueError(f"manifest {where}.packed_bytes {t['packed_bytes']} != {packed_bytes}, "
                             f"the bytes of its members' arrays")
    if sorted(referenced) != sorted(manifest["members"]):
        raise ValueError("manifest members are not each used by exactly one tensor")
    return manifest


def _read_array(data: bytes, spec: dict) -> np.ndarray:
    """The array in one ``.npy`` member after checking it against its manifest entry."""
    if _sha256(data) != spec["sha256"]:
        raise ValueError("sha256 mismatch (corrupt or tampered)")
    buf = io.BytesIO(data)
    if np.lib.format.read_magic(buf) != (1, 0):
        raise ValueError("not an .npy format 1.0 array")
    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(buf)
    if fortran_order or dtype.str != spec["dtype"] or list(shape) != spec["shape"]:
        raise ValueError(f"holds {dtype.str} {shape} (fortran_order={fortran_order}), manifest says "
                         f"{spec['dtype']} {tuple(spec['shape'])}")
    count = math.prod(shape)
    if len(data) - buf.tell() != count * dtype.itemsize:
        raise ValueError(f"has {len(data) - buf.tell()} data bytes for {count} x {dtype.str}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell()).reshape(shape).copy()


def load_tz(path) -> TzFile:
    """Read and fully verify a ``.tz`` file; any problem raises ``FileFormatError`` naming the file."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError,
            NotImplementedError) as e:
        raise FileFormatError(f"{path}: not a readable .tz zip archive ({_one_line(e)})") from None
    with zf:
        try:
            return _load(zf, size)
        except FileFormatError:
            raise
        except ValueError as e:                       # ours: names the member or manifest field
            raise FileFormatError(f"{path}: {_one_line(e)}") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError,
                RuntimeError) as e:
            raise FileFormatError(f"{path}: damaged zip archive ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _load(zf: zipfile.ZipFile, size: int) -> TzFile:
    infos = {}
    for info in zf.infolist():
        if info.filename in infos:
            raise ValueError(f"member {info.filename!r} appears twice")
        infos[info.filename] = info
    if MANIFEST not in infos:
        raise ValueError(f"no {MANIFEST} (a plain zip or .npz, not a .tz file)")
    for name, info in infos.items():
        if name != MANIFEST and not _MEMBER_RE.match(name):
            raise ValueError(f"member name {name!r} is not allowed (path components or foreign file)")
        if info.flag_bits & 0x41 or info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"member {name!r} is encrypted or compressed; .tz members are stored")
        if info.file_size != info.compress_size or info.compress_size > size:
            raise ValueError(f"member {name!r} claims {info.file_size} bytes in a {size}-byte file")
    if infos[MANIFEST].file_size > MAX_MANIFEST_BYTES:
        raise ValueError(f"{MANIFEST} is {infos[MANIFEST].file_size} bytes, over the "
                         f"{MAX_MANIFEST_BYTES}-byte limit")
    manifest = _parse_manifest(zf.read(infos[MANIFEST]))
    listed = set(manifest["members"])
    if listed != set(infos) - {MANIFEST}:
        missing, unknown = sorted(listed - set(infos)), sorted(set(infos) - listed - {MANIFEST})
        raise ValueError(f"members missing {missing[:3]} / not in the manifest {unknown[:3]}")
    packed = {}
    for t in manifest["tensors"]:
        arrays = {}
        for key, member in t["members"].items():
            spec = manifest["members"][member]
            if infos[member].file_size != spec["bytes"]:
                raise ValueError(f"member {member!r} has {infos[member].file_size} bytes, "
                                 f"manifest says {spec['bytes']}")
            try:
                arrays[key] = _read_array(zf.read(infos[member]), spec)
            except ValueError as e:
                raise ValueError(f"member {member!r} of tensor {t['name']!r}: {e}") from None
        packed[t["name"]] = PackedTensor(t["method"], tuple(t["shape"]), arrays, t["meta"])
    return TzFile(packed, manifest["config"], manifest["extra"], manifest, size)


def tz_report(tz: TzFile) -> list:
    """One row per tensor: name, method, shape, float32_bytes, packed_bytes, ratio (float32/packed)."""
    rows = []
    for name, t in tz.packed.items():
        f32, nbytes = float32_bytes(t.shape), t.nbytes
        rows.append({"name": name, "method": t.method, "shape": tuple(t.shape), "float32_bytes": f32,
                     "packed_bytes": nbytes, "ratio": f32 / nbytes if nbytes else math.inf})
    return rows


def format_inspect(tz: TzFile) -> str:
    """The per-tensor byte table ``tinyzip inspect FILE`` prints, with totals and the file's bytes."""
    rows = tz_report(tz)
    f32 = sum(r["float32_bytes"] for r in rows)
    nbytes = sum(r["packed_bytes"] for r in rows)
    cells = [(r["name"], r["method"], "x".join(map(str, r["shape"])) or "scalar",
              f"{r['float32_bytes']:,}", f"{r['packed_bytes']:,}", f"{r['ratio']:.2f}x") for r in rows]
    head = ("tensor", "method", "shape", "float32 B", "packed B", "ratio")
    total = (f"total ({len(rows)} tensors)", "", "", f"{f32:,}", f"{nbytes:,}",
             f"{f32 / nbytes:.2f}x" if nbytes else "inf")
    widths = [max(len(c[i]) for c in cells + [head, total]) for i in range(6)]
    fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*c) for c in cells]
    lines.append(fmt.format(*("-" * w for w in widths)))
    lines.append(fmt.format(*total))
    lines.append(f"file: {tz.file_bytes:,} bytes ({tz.file_bytes - nbytes:,} of headers and manifest); "
                 f"float32 tensor bytes / file bytes = {f32 / tz.file_bytes:.2f}x")
    return "\n".join(lines)


def file_ratio(float_file, tz_file) -> float:
    """Compression ratio tinyzip reports: float32 model file bytes / ``.tz`` file bytes.

    Each argument is a path or a byte count (int)."""
    def nbytes(f):
        if isinstance(f, (int, np.integer)) and not isinstance(f, bool):
            return int(f)
        return os.path.getsize(os.fspath(f))
    num, den = nbytes(float_file), nbytes(tz_file)
    if num <= 0 or den <= 0:
        raise ValueError(f"file sizes must be positive, got {num} and {den}")
    return num / den
