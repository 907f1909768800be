"""The ``.tz`` compressed-model file: real bytes on disk, exact accounting.

A ``.tz`` file is a zip archive holding one data member per method, ``NN.bin``, and a JSON
manifest ``manifest.json`` (written last). A data member is the raw little-endian bytes of every
array of every tensor of one method, back to back, with no per-array header. The compression ratio
tinyzip reports is ``file_ratio``: bytes of the float32 model file / bytes of the ``.tz`` file.

Manifest schema, format version 2 (all keys required, no others; ``manifest.py`` checks it on load)::

    {"format": "tinyzip.tz", "format_version": 2,
     "config": {...}, "extra": {...},                     # JSON objects, opaque to the container
     "tensors": [{"name": str, "method": str, "shape": [int, ...], "meta": {...},
                  "member": member_name,
                  "arrays": {array_key: {"dtype": "<f4" | "|u1" | ..., "shape": [int, ...]}, ...},
                  "float32_bytes": 4 * prod(shape), "packed_bytes": sum of the arrays' nbytes}, ...],
     "members": {member_name: {"sha256": hex of the member's bytes, "bytes": int}, ...},
     "checksum": sha256 hex of the canonical JSON of this object without "checksum"}

Layout: tensors are sorted by name (strictly increasing), a tensor's arrays by key. Member
``NN.bin`` (NN = 00, 01, ... in the order of each method's first tensor) holds the arrays of all
tensors of that method in that order, so an array's offset is the sum of the bytes before it: the
manifest stores no offsets, and the loader checks that the arrays fill their member exactly.
Canonical JSON is ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``,
the form ``manifest.json`` is written in. ``checksum`` catches an edited manifest (config, meta,
array dtypes and shapes), the per-member ``sha256`` an edited array, so a damaged file fails to
load instead of giving a silently different model.

Sizes (numbers-de model, 86 tensors, k-means 4-bit): format 1 wrote one ``.npy`` member per
array, each paying ~0.5 KB (``.npy`` header, zip headers, a manifest entry with its sha256), 104 KB
of a 531 KB file; format 2 pays 7.5 KB, 6 KB of it the tokenizer in ``extra``. Every member, the
manifest included, is DEFLATEd (zlib level 9) when that makes it smaller, else STORED: the
manifest shrinks ~5x, float32 biases and LayerNorms 6%, 4-bit k-means codes 2% (their order-0
entropy allows 3%), Huffman streams not at all. ``format_inspect`` prints per tensor the method's
packed bytes and its share of the bytes in the file, so the container's part is visible.

Safety: only STORED and DEFLATE members, no encryption, no paths. Before reading a member the
loader checks its size against the manifest and against DEFLATE's maximum expansion (1032:1), and
reads at most that many bytes, so a crafted file cannot make it allocate more than ~1032x its
own size; the manifest is capped at ``MAX_MANIFEST_BYTES``. Anything wrong raises
``FileFormatError`` naming the file. Format 1 files are refused with a message saying so.

Determinism: fixed timestamps (1980-01-01), sorted tensors and keys, sorted JSON, so save -> load
-> save gives identical bytes (with the same zlib). Writes go to a temporary file in the target's
directory, then ``os.replace``: a failed or interrupted write leaves any old file intact.
"""
import math
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from tinyzip.compress.base import PackedTensor
from tinyzip.errors import FileFormatError
from tinyzip.manifest import (FORMAT, FORMAT_VERSION, KEY_RE, KINDS, MEMBER_RE, canonical, float32_bytes, json_value,
                              parse_manifest, sha256)

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20        # tokenizer merges fit easily; a 1 GB "manifest" is an attack
MAX_DEFLATE_RATIO = 1032             # DEFLATE expands one byte to at most ~1032 (a 258-byte match in 2 bits)
DEFLATE_LEVEL = 9
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class TzFile:
    """A loaded ``.tz`` file: ``packed`` tensors by name, model ``config``, ``extra``, the manifest,
    the file's size and ``stored_bytes`` (zip member name -> bytes it takes in the file)."""

    packed: dict
    config: dict
    extra: dict
    manifest: dict
    file_bytes: int = 0
    stored_bytes: dict = field(default_factory=dict)


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
            if not isinstance(key, str) or not KEY_RE.match(key):
                raise ValueError(f"packed[{name!r}] array key {key!r} must match [A-Za-z0-9_]+")
            if not isinstance(a, np.ndarray) or a.dtype.kind not in KINDS:
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
    config = json_value(config, "config")
    extra = json_value({} if extra is None else extra, "extra")
    tensors, member_of, pieces = [], {}, {}
    for name, t, arrays in items:
        member = member_of.setdefault(t.method, f"{len(member_of):02d}.bin")   # one per method
        pieces.setdefault(member, []).extend(a.tobytes() for a in arrays.values())
        tensors.append({
            "name": name, "method": t.method, "shape": [int(s) for s in t.shape],
            "meta": json_value(t.meta, f"packed[{name!r}].meta"), "member": member,
            "arrays": {key: {"dtype": a.dtype.str, "shape": list(a.shape)} for key, a in arrays.items()},
            "float32_bytes": float32_bytes(t.shape),
            "packed_bytes": int(sum(a.nbytes for a in arrays.values())),
        })
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w") as zf:
                members = {}
                for member, chunks in pieces.items():
                    data = b"".join(chunks)
                    members[member] = {"sha256": sha256(data), "bytes": len(data)}
                    _write_member(zf, member, data)
                manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config,
                            "extra": extra, "tensors": tensors, "members": members}
                manifest["checksum"] = sha256(canonical(manifest))
                _write_member(zf, MANIFEST, canonical(manifest))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return os.path.getsize(path)


def _deflated_size(data: bytes) -> int:
    """Bytes of ``data`` as a raw DEFLATE stream, the way ``zipfile`` writes it."""
    z = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    return len(z.compress(data)) + len(z.flush())


def _write_member(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """One zip member, DEFLATE when that is smaller than the bytes themselves, else STORED."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    deflate = _deflated_size(data) < len(data)
    info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    zf.writestr(info, data, compresslevel=DEFLATE_LEVEL if deflate else None)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> bytes:
    """A member's bytes, read only after its sizes are checked (bounded memory, CRC checked)."""
    stored = info.compress_type == zipfile.ZIP_STORED
    if info.flag_bits & 0x41 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"member {info.filename!r} is encrypted or compressed with a method other "
                         f"than DEFLATE")
    if info.compress_size > size or info.file_size > MAX_DEFLATE_RATIO * info.compress_size \
            or (stored and info.file_size != info.compress_size):
        raise ValueError(f"member {info.filename!r} claims {info.file_size} bytes from "
                         f"{info.compress_size} in a {size}-byte file")
    with zf.open(info) as fh:
        data = fh.read(info.file_size)
    if len(data) != info.file_size:
        raise ValueError(f"member {info.filename!r} ends after {len(data)} of {info.file_size} bytes")
    return data


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
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError,
                NotImplementedError, RuntimeError) as e:
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
    if infos[MANIFEST].file_size > MAX_MANIFEST_BYTES:
        raise ValueError(f"{MANIFEST} is {infos[MANIFEST].file_size} bytes, over the "
                         f"{MAX_MANIFEST_BYTES}-byte limit")
    manifest = parse_manifest(_read_member(zf, infos[MANIFEST], size))   # first: its version
    for name in infos:
        if name != MANIFEST and not MEMBER_RE.match(name):
            raise ValueError(f"member name {name!r} is not allowed (path components or foreign file)")
    listed = set(manifest["members"])
    if listed != set(infos) - {MANIFEST}:
        missing, unknown = sorted(listed - set(infos)), sorted(set(infos) - listed - {MANIFEST})
        raise ValueError(f"members missing {missing[:3]} / not in the manifest {unknown[:3]}")
    data = {}
    for member, spec in manifest["members"].items():
        if infos[member].file_size != spec["bytes"]:
            raise ValueError(f"member {member!r} has {infos[member].file_size} bytes, manifest says "
                             f"{spec['bytes']}")
        data[member] = _read_member(zf, infos[member], size)
        if sha256(data[member]) != spec["sha256"]:
            raise ValueError(f"member {member!r}: sha256 mismatch (corrupt or tampered)")
    offset, packed = dict.fromkeys(data, 0), {}
    for t in manifest["tensors"]:
        arrays = {}
        for key in sorted(t["arrays"]):              # the writer's order, whatever the JSON's
            spec, member = t["arrays"][key], t["member"]
            dtype, count = np.dtype(spec["dtype"]), math.prod(spec["shape"])
            array = np.frombuffer(data[member], dtype=dtype, count=count, offset=offset[member])
            arrays[key] = array.reshape(spec["shape"]).copy()
            offset[member] += count * dtype.itemsize
        packed[t["name"]] = PackedTensor(t["method"], tuple(t["shape"]), arrays, t["meta"])
    stored = {name: info.compress_size for name, info in infos.items()}
    return TzFile(packed, manifest["config"], manifest["extra"], manifest, size, stored)


def tz_report(tz: TzFile) -> list:
    """One row per tensor: name, method, shape, float32_bytes, packed_bytes (its arrays),
    stored_bytes (its share of its member's bytes in the file, in proportion to packed bytes:
    DEFLATE's saving on a shared member is shared alike), ratio = float32_bytes / stored_bytes."""
    rows = []
    for t in tz.manifest["tensors"]:
        member = tz.manifest["members"][t["member"]]["bytes"]
        share = t["packed_bytes"] / member if member else 0.0
        stored = share * tz.stored_bytes.get(t["member"], member)
        rows.append({"name": t["name"], "method": t["method"], "shape": tuple(t["shape"]),
                     "float32_bytes": t["float32_bytes"], "packed_bytes": t["packed_bytes"],
                     "stored_bytes": stored, "ratio": t["float32_bytes"] / stored if stored else math.inf})
    return rows


def format_inspect(tz: TzFile) -> str:
    """The per-tensor byte table ``tinyzip inspect FILE`` prints, with totals, the container's
    overhead (manifest, zip headers) on lines of their own and the file's bytes."""
    rows = tz_report(tz)
    f32 = sum(r["float32_bytes"] for r in rows)
    nbytes = sum(r["packed_bytes"] for r in rows)
    stored = sum(tz.stored_bytes.get(m, 0) for m in tz.manifest["members"])
    cells = [(r["name"], r["method"], "x".join(map(str, r["shape"])) or "scalar",
              f"{r['float32_bytes']:,}", f"{r['packed_bytes']:,}", f"{round(r['stored_bytes']):,}",
              f"{r['ratio']:.2f}x" if math.isfinite(r["ratio"]) else "-") for r in rows]   # "-": no bytes (shared)
    head = ("tensor", "method", "shape", "float32 B", "packed B", "in file B", "ratio")
    total = (f"total ({len(rows)} tensors)", "", "", f"{f32:,}", f"{nbytes:,}", f"{stored:,}",
             f"{f32 / stored:.2f}x" if stored else "inf")
    widths = [max(len(c[i]) for c in cells + [head, total]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
    rule = fmt.format(*("-" * w for w in widths))
    manifest = tz.stored_bytes.get(MANIFEST, 0)
    headers = tz.file_bytes - stored - manifest
    raw = len(canonical(tz.manifest))
    lines = [fmt.format(*head), rule] + [fmt.format(*c) for c in cells] + [rule, fmt.format(*total)]
    return "\n".join(lines + [
        f"container overhead: {manifest + headers:,} bytes = manifest {manifest:,} (config, extra, "
        f"tensor list; {raw:,} as JSON) + zip headers {headers:,}",
        f"file: {tz.file_bytes:,} bytes; float32 tensor bytes / file bytes = {f32 / tz.file_bytes:.2f}x"])


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
