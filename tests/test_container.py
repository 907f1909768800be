"""Tests of the .tz container (tinyzip/container.py): exact round trips, deterministic bytes, atomic
writes, and a clear FileFormatError for every damaged, foreign or tampered file (fuzzed).

Expected values come from the format's definition, recomputed here independently (zipfile,
hashlib, json), never from the module's own output."""
import functools
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip import container
from tinyzip.compress.base import PackedTensor
from tinyzip.container import file_ratio, format_inspect, load_tz, save_tz, tz_report
from tinyzip.errors import FileFormatError

DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint16, np.float16,
          np.float32, np.float64, np.dtype(">f4"), np.dtype(">i2")]

json_st = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@st.composite
def packed_st(draw):
    names = draw(st.lists(st.text(min_size=1, max_size=10), max_size=4, unique=True))
    packed = {}
    for name in names:
        keys = draw(st.lists(st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True), max_size=3,
                             unique=True))
        arrays = {k: draw(hynp.arrays(st.sampled_from(DTYPES),
                                      hynp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))
                  for k in keys}
        shape = draw(hynp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9))
        meta = draw(st.dictionaries(st.text(max_size=6), json_st, max_size=3))
        packed[name] = PackedTensor(draw(st.sampled_from(["float32", "kmeans", "uniform"])),
                                    shape, arrays, meta)
    return packed


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="tz-test-")
    yield d
    shutil.rmtree(d)


def small_packed():
    rng = np.random.default_rng(0)
    return {
        "enc.0.W": PackedTensor("kmeans", (4, 6), {"codebook": rng.normal(size=4).astype(np.float32),
                                                   "idx": rng.integers(0, 4, 6, dtype=np.uint8)},
                                {"bits": 2}),
        "enc.0.b": PackedTensor("float32", (6,), {"values": rng.normal(size=6).astype(np.float32)}),
    }


@functools.lru_cache(maxsize=None)
def valid_bytes() -> bytes:
    d = tempfile.mkdtemp(prefix="tz-valid-")
    try:
        save_tz(os.path.join(d, "m.tz"), small_packed(), {"D": 4, "H": 2}, {"note": "fuzz base"})
        with open(os.path.join(d, "m.tz"), "rb") as fh:
            return fh.read()
    finally:
        shutil.rmtree(d)


def write(workdir, name, data: bytes) -> str:
    path = os.path.join(workdir, name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def checksum(body: dict) -> str:
    """The manifest checksum as the format defines it: sha256 of canonical JSON without 'checksum'."""
    body = {k: v for k, v in body.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=True).encode()).hexdigest()


def rezip(data: bytes, edit) -> bytes:
    """A new zip with every member of ``data`` passed through ``edit(members: dict) -> dict``."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members = edit(members)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return out.getvalue()


def edit_manifest(data: bytes, edit, refresh=True) -> bytes:
    def go(members):
        manifest = json.loads(members["manifest.json"])
        edit(manifest)
        if refresh:
            manifest["checksum"] = checksum(manifest)
        members["manifest.json"] = json.dumps(manifest).encode()
        return members
    return rezip(data, go)


def assert_bad(path, *fragments):
    with pytest.raises(FileFormatError) as info:
        load_tz(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message


def resaved(workdir, tz) -> bytes:
    path = os.path.join(workdir, "resaved.tz")
    save_tz(path, tz.packed, tz.config, tz.extra)
    with open(path, "rb") as fh:
        return fh.read()


def bad_or_identical(workdir, data: bytes) -> None:
    """The fuzz oracle: a mutated file either fails with FileFormatError or loads to the very content
    of the original (re-saving it gives the original bytes)."""
    path = write(workdir, "mutant.tz", data)
    try:
        tz = load_tz(path)
    except FileFormatError as e:
        assert "\n" not in str(e) and str(e).startswith(path)
        return
    assert resaved(workdir, tz) == valid_bytes()


# ---------------------------------------------------------------- round trip and schema

@given(packed=packed_st(), config=st.dictionaries(st.text(max_size=6), json_st, max_size=3),
       extra=st.dictionaries(st.text(max_size=6), json_st, max_size=3))
def test_round_trip_is_exact_and_resave_is_byte_identical(workdir, packed, config, extra):
    path = os.path.join(workdir, "rt.tz")
    nbytes = save_tz(path, packed, config, extra)
    assert nbytes == os.path.getsize(path)
    tz = load_tz(path)
    assert tz.config == config and tz.extra == extra and tz.file_bytes == nbytes
    assert list(tz.packed) == sorted(packed)
    for name, t in packed.items():
        u = tz.packed[name]
        assert (u.method, u.shape, u.meta) == (t.method, tuple(t.shape), t.meta)
        assert sorted(u.arrays) == sorted(t.arrays)
        for key, a in t.arrays.items():
            b = u.arrays[key]
            assert b.shape == a.shape and b.dtype == a.dtype.newbyteorder("<")
            assert b.tobytes() == a.astype(b.dtype).tobytes()          # bit-exact, NaN payloads too
    with open(path, "rb") as fh:
        assert resaved(workdir, tz) == fh.read()


def test_save_is_deterministic_whatever_the_dict_order(workdir):
    packed = small_packed()
    a = os.path.join(workdir, "a.tz")
    b = os.path.join(workdir, "b.tz")
    save_tz(a, packed, {"x": 1, "y": 2})
    save_tz(b, dict(reversed(packed.items())), {"y": 2, "x": 1})
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


def test_manifest_schema_members_and_checksums(workdir):
    """Format 2, rebuilt here from its definition: one member per method (in order of the method's
    first tensor by name) holding its tensors' arrays back to back (tensors by name, keys sorted);
    DEFLATE exactly when zlib makes a member smaller; per-member sha256; manifest checksum."""
    rng = np.random.default_rng(1)
    packed = dict(small_packed(), **{
        "dec.W": PackedTensor("kmeans", (3, 3), {"codebook": np.zeros(2, np.float32),
                                                 "idx": np.zeros(3, np.uint8)}, {"bits": 1}),
        "z.b": PackedTensor("float32", (300,), {"values": rng.normal(size=300).astype(np.float32)})})
    path = os.path.join(workdir, "schema.tz")
    save_tz(path, packed, {"D": 4}, {"merges": [["a", "b"]] * 50})
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        members = {i.filename: zf.read(i) for i in infos}
    order = sorted(packed)
    methods = list(dict.fromkeys(packed[n].method for n in order))
    expected = {f"{i:02d}.bin": b"".join(packed[n].arrays[k].tobytes() for n in order if packed[n].method == m
                                         for k in sorted(packed[n].arrays)) for i, m in enumerate(methods)}
    assert [i.filename for i in infos] == list(expected) + ["manifest.json"]
    for info in infos:
        deflated = zlib.compressobj(9, zlib.DEFLATED, -15)
        smaller = len(deflated.compress(members[info.filename]) + deflated.flush()) < info.file_size
        assert info.compress_type == (zipfile.ZIP_DEFLATED if smaller else zipfile.ZIP_STORED)
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
    manifest = json.loads(members["manifest.json"])
    assert set(manifest) == {"format", "format_version", "config", "extra", "tensors", "members",
                             "checksum"}
    assert (manifest["format"], manifest["format_version"]) == ("tinyzip.tz", 2)
    assert manifest["checksum"] == checksum(manifest)
    assert members["manifest.json"] == json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert (manifest["config"], manifest["extra"]) == ({"D": 4}, {"merges": [["a", "b"]] * 50})
    assert [t["name"] for t in manifest["tensors"]] == order
    for name, data in expected.items():
        assert members[name] == data
        assert manifest["members"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    for t in manifest["tensors"]:
        p = packed[t["name"]]
        assert t["method"] == p.method and t["shape"] == list(p.shape) and t["meta"] == p.meta
        assert t["member"] == f"{methods.index(p.method):02d}.bin"
        assert t["float32_bytes"] == 4 * int(np.prod(p.shape))
        assert t["packed_bytes"] == sum(a.nbytes for a in p.arrays.values())
        assert t["arrays"] == {k: {"dtype": a.dtype.str, "shape": list(a.shape)} for k, a in p.arrays.items()}


# ---------------------------------------------------------------- atomic writes

@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_old_file_and_leaves_no_temp(workdir, monkeypatch, exc):
    d = tempfile.mkdtemp(dir=workdir)
    path = os.path.join(d, "model.tz")
    save_tz(path, small_packed(), {"v": "old"})
    with open(path, "rb") as fh:
        old = fh.read()
    real, calls = container._write_member, []

    def failing(zf, name, data):             # the second member fails after the first is written
        calls.append(1)
        if len(calls) == 2:
            raise exc
        return real(zf, name, data)

    monkeypatch.setattr(container, "_write_member", failing)
    with pytest.raises(type(exc)):
        save_tz(path, small_packed(), {"v": "new"})
    assert len(calls) == 2
    assert os.listdir(d) == ["model.tz"]
    with open(path, "rb") as fh:
        assert fh.read() == old
    assert load_tz(path).config == {"v": "old"}


@pytest.mark.parametrize("packed, config, extra, error", [
    ({"w": np.zeros(3)}, {}, None, TypeError),
    ({"w": PackedTensor("float32", (3,), {"v": np.zeros(3, dtype=object)})}, {}, None, TypeError),
    ({"w": PackedTensor("float32", (3,), {"v": [0.0, 1.0, 2.0]})}, {}, None, TypeError),
    ({"w": PackedTensor("float32", (3,), {"../v": np.zeros(3)})}, {}, None, ValueError),
    ({"w": PackedTensor("float32", (-3,), {"v": np.zeros(3)})}, {}, None, ValueError),
    ({"w": PackedTensor("", (3,), {"v": np.zeros(3)})}, {}, None, TypeError),
    ({"w": PackedTensor("float32", (3,), {}, {1: "int key"})}, {}, None, TypeError),
    ({3: PackedTensor("float32", (3,), {})}, {}, None, TypeError),
    ({}, {"lr": float("nan")}, None, ValueError),
    ({}, {"f": len}, None, TypeError),
    ({}, [], None, TypeError),
    ({}, {}, "notes", TypeError),
])
def test_save_rejects_bad_input_and_writes_nothing(workdir, packed, config, extra, error):
    d = tempfile.mkdtemp(dir=workdir)
    with pytest.raises(error):
        save_tz(os.path.join(d, "bad.tz"), packed, config, extra)
    assert os.listdir(d) == []


# ---------------------------------------------------------------- bad files, one by one

def test_missing_empty_and_foreign_files(workdir):
    assert_bad(os.path.join(workdir, "does-not-exist.tz"))
    assert_bad(write(workdir, "empty.tz", b""))
    assert_bad(write(workdir, "text.tz", b"hello, I am not a zip\n" * 10))
    npz = os.path.join(workdir, "params.npz")
    np.savez(npz, W=np.zeros((2, 2)))
    assert_bad(npz, "manifest.json")
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("readme.txt", "hi")
    assert_bad(write(workdir, "plain.zip", plain.getvalue()))


def test_wrong_version_and_format_name(workdir):
    for version in (1, 3):                  # format 1 (one .npy per array) is refused by name
        def other_version(m, version=version):
            m["format_version"] = version
        assert_bad(write(workdir, "v.tz", edit_manifest(valid_bytes(), other_version)),
                   f"version {version} is not supported", "export the model again")

    format1 = io.BytesIO()                  # a format 1 file: one .npy member per array
    with zipfile.ZipFile(format1, "w") as zf:
        zf.writestr("00000.values.npy", b"\x93NUMPY")
        zf.writestr("manifest.json", json.dumps({"format": "tinyzip.tz", "format_version": 1}))
    assert_bad(write(workdir, "v1.tz", format1.getvalue()), "version 1 is not supported")

    def other(m):
        m["format"] = "safetensors"
    assert_bad(write(workdir, "fmt.tz", edit_manifest(valid_bytes(), other)), "format")


def test_edited_manifest_fails_its_checksum(workdir):
    def edit(m):
        m["config"]["D"] = 8
    assert_bad(write(workdir, "edited.tz", edit_manifest(valid_bytes(), edit, refresh=False)),
               "checksum")


def first_data_member(members: dict) -> str:
    return next(n for n in members if n.endswith(".bin"))


def test_tampered_member_fails_its_sha256(workdir):
    def tamper(members):                # same length, other bytes
        name = first_data_member(members)
        members[name] = bytes(b ^ 1 for b in members[name])
        return members
    assert_bad(write(workdir, "tampered.tz", rezip(valid_bytes(), tamper)), "sha256")


def test_arrays_must_fill_their_member_exactly(workdir):
    def grow(members):                  # a consistent sha and size for one more byte
        name = first_data_member(members)
        members[name] += b"\0"
        manifest = json.loads(members["manifest.json"])
        spec = manifest["members"][name]
        spec["sha256"], spec["bytes"] = hashlib.sha256(members[name]).hexdigest(), len(members[name])
        manifest["checksum"] = checksum(manifest)
        members["manifest.json"] = json.dumps(manifest).encode()
        return members
    assert_bad(write(workdir, "grown.tz", rezip(valid_bytes(), grow)), "arrays")


def test_missing_extra_and_path_component_members(workdir):
    def drop(members):
        del members[first_data_member(members)]
        return members
    assert_bad(write(workdir, "missing.tz", rezip(valid_bytes(), drop)), "missing")

    def add(members):
        members["09.bin"] = members[first_data_member(members)]
        return members
    assert_bad(write(workdir, "extra.tz", rezip(valid_bytes(), add)), "not in the manifest")

    def evil(members):
        members["../../etc/evil.bin"] = b"x"
        return members
    assert_bad(write(workdir, "evil.tz", rezip(valid_bytes(), evil)), "not allowed")


@pytest.mark.parametrize("edit", [
    lambda m: m.__setitem__("tensors", {}),
    lambda m: m["tensors"][0].__setitem__("shape", [4, "6"]),
    lambda m: m["tensors"][0].__setitem__("float32_bytes", 96.0),
    lambda m: m["tensors"][0].__setitem__("float32_bytes", True),
    lambda m: m["tensors"][0].__setitem__("packed_bytes", 1),
    lambda m: m["tensors"][0].pop("meta"),
    lambda m: m["tensors"][0].__setitem__("member", "../00.bin"),
    lambda m: m["tensors"].append(dict(m["tensors"][0])),
    lambda m: m["tensors"].reverse(),
    lambda m: m["tensors"][0]["arrays"]["idx"].__setitem__("dtype", "O"),
    lambda m: m["tensors"][0]["arrays"]["idx"].__setitem__("dtype", ">f4"),
    lambda m: m["tensors"][0]["arrays"]["idx"].__setitem__("dtype", "<u2"),
    lambda m: m["tensors"][0]["arrays"]["idx"].__setitem__("shape", [10**12, 10**12]),
    lambda m: m["tensors"][0]["arrays"].__setitem__("../x", {"dtype": "|u1", "shape": [0]}),
    lambda m: next(iter(m["members"].values())).__setitem__("bytes", 10**15),
    lambda m: next(iter(m["members"].values())).__setitem__("bytes", -1),
    lambda m: m["members"].__setitem__("07.bin", {"sha256": "0" * 64, "bytes": 0}),
    lambda m: m.__setitem__("config", [1, 2]),
    lambda m: m.__setitem__("format_version", 2.0),
], ids=["tensors-not-list", "shape-str", "f32-float", "f32-bool", "packed-bytes", "no-meta",
        "member-path", "duplicate-tensor", "unsorted-tensors", "object-dtype", "big-endian",
        "other-itemsize", "huge-shape", "array-key-path", "huge-bytes", "negative-bytes",
        "unused-member", "config-list", "version-float"])
def test_manifest_with_wrong_types_or_values(workdir, edit):
    assert_bad(write(workdir, "types.tz", edit_manifest(valid_bytes(), edit)))


def test_other_compression_methods_are_refused(workdir):
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(valid_bytes())) as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_BZIP2) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    assert_bad(write(workdir, "bzip2.tz", out.getvalue()), "DEFLATE")


def claim_size(data: bytes, member: str, size: int) -> bytes:
    """``data`` with the central directory's uncompressed size of ``member`` set to ``size``
    (zip spec 4.3.12: signature PK\\1\\2, size at offset 24, name length at 28, name at 46)."""
    data = bytearray(data)
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        n = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46: at + 46 + n] == member.encode():
            struct.pack_into("<I", data, at + 24, size)
            return bytes(data)
        at = data.find(b"PK\x01\x02", at + 1)
    raise AssertionError(f"{member} not in the central directory")


def test_members_claiming_more_than_deflate_can_give_are_refused_before_reading(workdir):
    """DEFLATE expands at most 1032:1, and a stored member is its own size: larger claims are
    refused from the sizes alone, so a crafted file cannot make the loader allocate much."""
    with zipfile.ZipFile(io.BytesIO(valid_bytes())) as zf:
        info = zf.getinfo("manifest.json")
        assert info.compress_type == zipfile.ZIP_DEFLATED
        data = next(i for i in zf.infolist() if i.compress_type == zipfile.ZIP_STORED)
    bomb = claim_size(valid_bytes(), "manifest.json", 1032 * info.compress_size + 1)
    assert_bad(write(workdir, "bomb.tz", bomb), "claims")
    assert_bad(write(workdir, "stored.tz", claim_size(valid_bytes(), data.filename, data.file_size + 1)))


def test_manifest_size_limit(workdir, monkeypatch):
    monkeypatch.setattr(container, "MAX_MANIFEST_BYTES", 100)
    assert_bad(write(workdir, "big-manifest.tz", valid_bytes()), "limit")


# ---------------------------------------------------------------- fuzz

@settings(max_examples=60)
@given(cut=st.integers(0, 10**9))
def test_fuzz_truncated_file_is_rejected(workdir, cut):
    data = valid_bytes()
    assert_bad(write(workdir, "cut.tz", data[: cut % len(data)]))


@settings(max_examples=150)
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=4))
def test_fuzz_flipped_bytes_are_rejected_or_harmless(workdir, flips):
    data = bytearray(valid_bytes())
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    bad_or_identical(workdir, bytes(data))


@given(drop=st.sets(st.integers(0, 2), min_size=1))
def test_fuzz_removed_members_are_rejected(workdir, drop):
    def remove(members):
        assert len(members) == 3                 # two methods' members and the manifest
        return {n: c for i, (n, c) in enumerate(members.items()) if i not in drop}
    assert_bad(write(workdir, "removed.tz", rezip(valid_bytes(), remove)))


def _paths(obj, prefix=()):
    """Every path (tuple of keys / indices) into a JSON tree, containers included."""
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _opaque(path) -> bool:
    """Parts a re-checksummed edit may legitimately change (the checksum is their only guard;
    an array's dtype and shape are written once, in the manifest, so they are among them)."""
    return (path[:1] in [("config",), ("extra",)]
            or (len(path) >= 3 and path[0] == "tensors" and path[2] in ("name", "method", "meta", "shape"))
            or (len(path) >= 3 and path[0] == "tensors" and path[2] == "arrays"))


@settings(max_examples=100)
@given(data=st.data())
def test_fuzz_edited_manifest_is_rejected_or_harmless(workdir, data):
    """Any edit without a fresh checksum fails; with a fresh checksum, any edit of a field the
    container cross-checks (format, version, sizes, member specs and references) fails too."""
    refresh = data.draw(st.booleans(), label="refresh checksum")
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(valid_bytes())).read("manifest.json"))
    paths = [p for p in _paths(manifest) if p and not (refresh and (_opaque(p) or p == ("checksum",)))]
    path = data.draw(st.sampled_from(paths), label="path")
    op = data.draw(st.sampled_from(["replace", "delete", "add"]), label="op")
    value = data.draw(json_st, label="value")

    def edit(m):
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if op == "replace":
            parent[path[-1]] = value
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]]["added_key"] = value
        elif isinstance(parent[path[-1]], list):
            parent[path[-1]].append(value)
        else:
            parent[path[-1]] = [parent[path[-1]], value]
    bad_or_identical(workdir, edit_manifest(valid_bytes(), edit, refresh=refresh))


# ---------------------------------------------------------------- report and ratio

def test_report_inspect_table_and_file_ratio(workdir):
    """Each tensor's bytes in the file are its share (by packed bytes) of its member's compressed
    size, read here from zipfile; the overhead line is the file minus the data members."""
    big = PackedTensor("float32", (2000,), {"values": np.zeros(2000, np.float32)})   # deflates
    packed = dict(small_packed(), big=big)
    path = os.path.join(workdir, "report.tz")
    nbytes = save_tz(path, packed, {})
    tz = load_tz(path)
    with zipfile.ZipFile(path) as zf:
        compressed = {i.filename: i.compress_size for i in zf.infolist()}
    rows = tz_report(tz)
    assert [r["name"] for r in rows] == sorted(packed)
    member_of = {t["name"]: t["member"] for t in tz.manifest["tensors"]}
    for r in rows:
        p = packed[r["name"]]
        member = member_of[r["name"]]
        same = [n for n in packed if member_of[n] == member]
        share = p.nbytes / sum(packed[n].nbytes for n in same)
        assert r["float32_bytes"] == 4 * int(np.prod(p.shape))
        assert r["packed_bytes"] == p.nbytes
        assert r["stored_bytes"] == pytest.approx(share * compressed[member])
        assert r["ratio"] == pytest.approx(r["float32_bytes"] / r["stored_bytes"])
    assert sum(r["stored_bytes"] for r in rows) == pytest.approx(nbytes - compressed["manifest.json"]
                                                                 - (nbytes - sum(compressed.values())))
    text = format_inspect(tz)
    f32 = sum(4 * int(np.prod(p.shape)) for p in packed.values())
    overhead = nbytes - sum(c for n, c in compressed.items() if n != "manifest.json")
    assert f"{f32:,}" in text and f"{nbytes:,} bytes" in text
    assert f"container overhead: {overhead:,} bytes" in text
    for name in packed:
        assert name in text
    float_file = write(workdir, "float.npz", b"\0" * 10 * nbytes)
    assert file_ratio(float_file, path) == 10.0 == file_ratio(10 * nbytes, nbytes)
    with pytest.raises(ValueError):
        file_ratio(0, path)
