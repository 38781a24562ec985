"""minicompress/fileio.py: the archive's bytes against its written layout, exact round
trips (hand-picked and hypothesis-drawn), refusal of every truncation, flipped byte,
foreign file, pickle and malformed header, atomic writes that leave no trace of a failure."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minicompress import fileio

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def seal(body: bytes) -> bytes:
    """A file with the checksum recomputed: what a deliberate edit (not damage) looks like."""
    return body + hashlib.sha256(body).digest()


def archive_bytes(doc: dict, data: bytes = b"", version: int = 1) -> bytes:
    """An archive assembled by hand from the layout in the module docstring."""
    text = json.dumps(doc).encode()
    text += b" " * (-(16 + len(text)) % 64)
    return seal(b"MINICMP\x00" + struct.pack("<II", version, len(text)) + text + data)


@pytest.fixture
def small(tmp_path):
    arrays = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "q": np.array([-128, 0, 127], dtype=np.int8),
    }
    path = tmp_path / "a.mc"
    fileio.save_archive(path, "test", {"note": "x", "n": 3}, arrays)
    return path, arrays


# ----------------------------------------------------------------------------------------
# the layout, byte by byte
# ----------------------------------------------------------------------------------------


def test_layout_matches_the_documented_format(small):
    path, arrays = small
    data = path.read_bytes()
    assert data[:8] == b"MINICMP\x00"
    version, header_len = struct.unpack("<II", data[8:16])
    assert version == 1 and (16 + header_len) % 64 == 0
    doc = json.loads(data[16 : 16 + header_len])
    assert doc["kind"] == "test" and doc["header"] == {"note": "x", "n": 3}
    assert doc["arrays"]["w"] == {"dtype": "float32", "shape": [2, 3], "offset": 0}
    assert doc["arrays"]["q"] == {"dtype": "int8", "shape": [3], "offset": 64}
    start = 16 + header_len
    assert data[start : start + 24] == arrays["w"].astype("<f4").tobytes()
    assert data[start + 24 : start + 64] == bytes(40)  # padding to the next 64 bytes
    assert data[start + 64 : start + 67] == arrays["q"].tobytes()
    assert len(data) == start + 67 + 32
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()


def test_hand_assembled_archive_loads(tmp_path):
    """The reader follows the documented layout, not only what our writer happens to do."""
    w = np.array([[1.5, -2.0]], dtype="<f4")
    doc = {
        "kind": "test",
        "header": {"a": [1, "b"]},
        "arrays": {"w": {"dtype": "float32", "shape": [1, 2], "offset": 0}},
    }
    (tmp_path / "x").write_bytes(archive_bytes(doc, w.tobytes()))
    kind, header, arrays = fileio.load_archive(tmp_path / "x")
    assert kind == "test" and header == {"a": [1, "b"]}
    assert arrays["w"].dtype == np.float32 and np.array_equal(arrays["w"], w)


# ----------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------


def test_round_trip_keeps_dtype_shape_order_and_bits(tmp_path):
    nan_payload = np.array([np.nan, -0.0, np.inf], dtype=np.float32)
    nan_payload.view(np.uint32)[0] |= 0x1234  # a NaN with a payload: bits, not values
    arrays = {
        "z": np.array(True),  # 0-d
        "empty": np.zeros((0, 4), np.int16),
        "big_endian": np.arange(5, dtype=">f8"),
        "strided": np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2],  # not contiguous
        "fortran": np.asfortranarray(np.arange(6, dtype=np.uint64).reshape(2, 3)),
        "bits": nan_payload,
        "half": np.array([1.0, 65504.0], np.float16),
    }
    fileio.save_archive(tmp_path / "a", "t", {"k": [1, 2.5, None, True, "é"]}, arrays)
    _, header, loaded = fileio.load_archive(tmp_path / "a", "t")
    assert header == {"k": [1, 2.5, None, True, "é"]}
    assert list(loaded) == list(arrays)  # insertion order kept
    for name, a in arrays.items():
        b = loaded[name]
        assert b.shape == a.shape and b.dtype == a.dtype.newbyteorder("="), name
        assert b.tobytes() == a.astype(a.dtype.newbyteorder("=")).tobytes(), name
        assert b.flags.writeable and b.flags.c_contiguous
        # NumPy's own dtype object, not an equal copy (the kernels test dtypes by identity)
        assert b.dtype is np.dtype(a.dtype.type), name


def test_loaded_arrays_are_independent_copies(small):
    path, _ = small
    _, _, a = fileio.load_archive(path)
    _, _, b = fileio.load_archive(path)
    a["w"][0, 0] = 99
    assert b["w"][0, 0] == 0


def test_numpy_scalars_in_header_become_plain_json(tmp_path):
    header = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "t": (1, np.int8(2))}
    fileio.save_archive(tmp_path / "a", "t", header, {})
    _, loaded, arrays = fileio.load_archive(tmp_path / "a")
    assert loaded == {"i": 3, "f": 0.5, "b": True, "t": [1, 2]} and arrays == {}
    assert type(loaded["i"]) is int and type(loaded["b"]) is bool


names = st.text(min_size=1, max_size=12)
dtypes = st.sampled_from(fileio.ARRAY_DTYPES).map(np.dtype)
any_array = dtypes.flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@SETTINGS
@given(
    arrays=st.dictionaries(names, any_array, max_size=5),
    header=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    kind=names,
)
def test_round_trip_property(tmp_path, arrays, header, kind):
    path = tmp_path / "p.mc"
    fileio.save_archive(path, kind, header, arrays)
    got_kind, got_header, got = fileio.load_archive(path, kind)
    assert got_kind == kind and got_header == header
    assert list(got) == list(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        assert got[name].tobytes() == a.tobytes()  # bit-exact, NaNs included


# ----------------------------------------------------------------------------------------
# damaged and foreign files
# ----------------------------------------------------------------------------------------


def test_every_truncation_is_refused(small, tmp_path):
    path, _ = small
    data = path.read_bytes()
    cut = tmp_path / "cut"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError) as e:
            fileio.load_archive(cut)
        assert "damaged" in one_line(e.value) or "not a minicompress file" in str(e.value), n


def test_every_flipped_byte_is_refused(small, tmp_path):
    path, _ = small
    data = path.read_bytes()
    bad = tmp_path / "bad"
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            flipped = bytearray(data)
            flipped[i] ^= bit
            bad.write_bytes(bytes(flipped))
            with pytest.raises(ValueError) as e:
                fileio.load_archive(bad)
            one_line(e.value)


def test_unknown_version_is_refused_by_name(small, tmp_path):
    path, _ = small
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<I", 2)
    (tmp_path / "v2").write_bytes(seal(bytes(data[:-32])))  # even with a valid checksum
    with pytest.raises(ValueError, match="format version 2; this minicompress reads version 1"):
        fileio.load_archive(tmp_path / "v2")


@pytest.mark.parametrize(
    "payload, match",
    [
        (pickle.dumps({"w": np.zeros(3)}), "pickle, which minicompress never loads"),
        (pickle.dumps([1, 2], protocol=0), "pickle"),
        (b"", "not a minicompress file"),
        (b"hello world, this is some text that is long enough" * 3, "not a minicompress file"),
    ],
)
def test_foreign_files_are_refused(tmp_path, payload, match):
    (tmp_path / "f").write_bytes(payload)
    with pytest.raises(ValueError, match=match) as e:
        fileio.load_archive(tmp_path / "f")
    one_line(e.value)


def test_npz_file_is_refused_with_a_hint(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(3))
    (tmp_path / "model.npz").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="zip or .npz.*minicompress convert"):
        fileio.load_archive(tmp_path / "model.npz")


def test_missing_file_folder_and_wrong_kind(small, tmp_path):
    path, _ = small
    with pytest.raises(ValueError, match="does not exist"):
        fileio.load_archive(tmp_path / "nothing")
    with pytest.raises(ValueError, match="does not exist.*folder"):
        fileio.load_archive(tmp_path)
    with pytest.raises(ValueError, match="holds a minicompress 'test', not a 'checkpoint'"):
        fileio.load_archive(path, "checkpoint")


W = {"dtype": "float32", "shape": [2], "offset": 0}


@pytest.mark.parametrize(
    "doc, data, match",
    [
        ({"kind": "t", "header": {}}, b"", "keys kind, header, arrays"),
        ({"kind": 3, "header": {}, "arrays": {}}, b"", "wrong type"),
        ({"kind": "t", "header": [], "arrays": {}}, b"", "wrong type"),
        ({"kind": "t", "header": {}, "arrays": []}, b"", "arrays table"),
        ({"kind": "t", "header": {}, "arrays": {"w": {**W, "dtype": "complex64"}}}, bytes(16), "w"),
        ({"kind": "t", "header": {}, "arrays": {"w": {**W, "dtype": "object"}}}, bytes(8), "w"),
        ({"kind": "t", "header": {}, "arrays": {"w": {**W, "dtype": "<U2"}}}, bytes(16), "w"),
        ({"kind": "t", "header": {}, "arrays": {"w": {**W, "shape": [-2]}}}, bytes(8), "w"),
        ({"kind": "t", "header": {}, "arrays": {"w": {**W, "shape": [2.0]}}}, bytes(8), "w"),
        ({"kind": "t", "header": {}, "arrays": {"w": {**W, "offset": -1}}}, bytes(8), "w"),
        ({"kind": "t", "header": {}, "arrays": {"w": {**W, "extra": 1}}}, bytes(8), "w"),
        ({"kind": "t", "header": {}, "arrays": {"w": W}}, bytes(4), "past the end"),
        ({"kind": "t", "header": {}, "arrays": {"w": W}}, bytes(12), "4 bytes after"),
        (
            {"kind": "t", "header": {}, "arrays": {"w": W, "v": {**W, "offset": 4}}},
            bytes(12),
            "overlap",
        ),
        (
            {"kind": "t", "header": {}, "arrays": {"w": {**W, "shape": [0, 2**61, 2**61]}}},
            b"",
            "cannot be read",
        ),
    ],
)
def test_malformed_header_with_valid_checksum_is_refused(tmp_path, doc, data, match):
    (tmp_path / "x").write_bytes(archive_bytes(doc, data))
    with pytest.raises(ValueError, match=match) as e:
        fileio.load_archive(tmp_path / "x")
    one_line(e.value)


def test_header_that_is_not_json_or_runs_past_the_end(tmp_path):
    body = b"MINICMP\x00" + struct.pack("<II", 1, 48) + b"{not json" + b" " * 39
    (tmp_path / "x").write_bytes(seal(body))
    with pytest.raises(ValueError, match="malformed header"):
        fileio.load_archive(tmp_path / "x")
    body = b"MINICMP\x00" + struct.pack("<II", 1, 10_000) + b"{}"
    (tmp_path / "y").write_bytes(seal(body))
    with pytest.raises(ValueError, match="header runs past the end"):
        fileio.load_archive(tmp_path / "y")


@SETTINGS
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_value_error(tmp_path, data):
    (tmp_path / "r").write_bytes(data)
    with pytest.raises(ValueError) as e:
        fileio.load_archive(tmp_path / "r")
    one_line(e.value)


@SETTINGS
@given(doc=json_values, data=st.binary(max_size=64))
def test_arbitrary_sealed_headers_load_or_raise_value_error(tmp_path, doc, data):
    """A file with a valid checksum and any JSON header: loads, or a clear ValueError."""
    (tmp_path / "r").write_bytes(archive_bytes(doc, data))
    try:
        kind, header, arrays = fileio.load_archive(tmp_path / "r")
    except ValueError as e:
        one_line(e)
    else:
        assert doc == {"kind": kind, "header": header, "arrays": doc["arrays"]}
        assert set(arrays) == set(doc["arrays"])


@SETTINGS
@given(position=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_flipped_bit_property(small, tmp_path, position, bit):
    path, _ = small
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= 1 << bit
    (tmp_path / "f").write_bytes(bytes(data))
    with pytest.raises(ValueError):
        fileio.load_archive(tmp_path / "f")


# ----------------------------------------------------------------------------------------
# what the writer refuses, before writing anything
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, arrays, error, match",
    [
        ({}, {"c": np.zeros(2, np.complex64)}, TypeError, "'c' has dtype complex64"),
        ({}, {"s": np.array(["ab"])}, TypeError, "'s' has dtype <U2"),
        ({}, {"o": np.array([{}], dtype=object)}, TypeError, "'o' has dtype object"),
        ({}, {"v": np.zeros(2, dtype=[("a", "i4")])}, TypeError, "'v' has dtype"),
        ({}, {"t": np.array(["2020"], dtype="datetime64[D]")}, TypeError, "'t' has dtype"),
        ({}, {"l": [1.0, 2.0]}, TypeError, "'l' is a list"),
        ({}, {3: np.zeros(2)}, TypeError, "non-empty strings"),
        ({}, {"": np.zeros(2)}, TypeError, "non-empty strings"),
        ({"x": float("nan")}, {}, ValueError, r"header\['x'\] is nan"),
        ({"x": [1, float("inf")]}, {}, ValueError, r"header\['x'\]\[1\] is inf"),
        ({"x": np.zeros(2)}, {}, TypeError, r"header\['x'\] is a ndarray"),
        ({"x": {1: 2}}, {}, TypeError, "key 1"),
        ({"x": {1, 2}}, {}, TypeError, "is a set"),
        ([], {}, TypeError, "header must be a dict"),
    ],
)
def test_writer_refuses_before_writing(tmp_path, header, arrays, error, match):
    target = tmp_path / "a.mc"
    target.write_bytes(b"old")
    with pytest.raises(error, match=match) as e:
        fileio.save_archive(target, "t", header, arrays)
    one_line(e.value)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mc"]


@SETTINGS
@given(value=st.one_of(st.integers(), st.floats(), st.text(), st.binary(), st.complex_numbers()))
def test_writer_property_only_clear_errors(tmp_path, value):
    """Any Python value as an array or in the header: written and read back equal, or a
    TypeError/ValueError, never anything else."""
    for header, arrays in (({"v": value}, {}), ({}, {"v": value})):
        try:
            fileio.save_archive(tmp_path / "w.mc", "t", header, arrays)
        except (TypeError, ValueError) as e:
            one_line(e)
        else:
            _, h, _ = fileio.load_archive(tmp_path / "w.mc")
            assert h == header


def test_writer_refuses_a_folder_or_a_file_as_parent(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a folder"):
        fileio.save_archive(tmp_path, "t", {}, {})
    with pytest.raises(ValueError, match="'.*f' is a file"):
        fileio.save_archive(tmp_path / "f" / "sub" / "a.mc", "t", {}, {})


# ----------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path, monkeypatch, step):
    target = tmp_path / "a.bin"
    fileio.atomic_write_bytes(target, b"old")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    if step == "write":
        real_fdopen = os.fdopen

        class Failing(io.RawIOBase):
            def __init__(self, fd):
                self.f = real_fdopen(fd, "wb")

            def write(self, b):
                crash()

            def close(self):
                self.f.close()

        monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: Failing(fd))
    else:
        monkeypatch.setattr(fileio.os, step, crash)
    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write_bytes(target, b"new contents")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_new_file_gets_the_umask_mode_and_replaced_file_keeps_its_mode(tmp_path):
    old = os.umask(0o027)
    try:
        fileio.atomic_write_bytes(tmp_path / "new", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0o600
    (tmp_path / "kept").write_bytes(b"x")
    os.chmod(tmp_path / "kept", 0o604)
    fileio.atomic_write_bytes(tmp_path / "kept", b"y")
    assert (tmp_path / "kept").stat().st_mode & 0o777 == 0o604


def test_save_json_converts_numpy_and_load_json_refuses_damage(tmp_path):
    fileio.save_json(tmp_path / "m.json", {"a": np.float32(0.5), "n": np.int64(2), "t": (1,)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 0.5, "n": 2, "t": [1]}
    assert fileio.load_json(tmp_path / "m.json") == {"a": 0.5, "n": 2, "t": [1]}
    with pytest.raises(ValueError, match="is a folder"):
        fileio.save_json(tmp_path, {})
    (tmp_path / "bad.json").write_bytes(b"\xff{")
    with pytest.raises(ValueError, match="damaged or not JSON"):
        fileio.load_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        fileio.load_json(tmp_path / "list.json")


def test_load_npz_checks_the_recorded_checksum(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, w=np.arange(3.0))
    data = buf.getvalue()
    (tmp_path / "m.npz").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert np.array_equal(fileio.load_npz(tmp_path / "m.npz", digest)["w"], np.arange(3.0))
    (tmp_path / "m.npz").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="SHA-256"):
        fileio.load_npz(tmp_path / "m.npz", digest)
    (tmp_path / "m.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged or not an .npz"):
        fileio.load_npz(tmp_path / "m.npz")
