"""Files written atomically and read without pickle; the archive that holds a checkpoint.

**Atomic writes.** A file is written to a temporary file in the same folder, flushed and
fsynced, renamed over the target in one step (``os.replace``), and then the folder itself
is fsynced so that the rename survives a power cut. A crash at any moment leaves the old
file or the new one, never neither and never half of one.

**The archive** is one file holding a JSON header and named arrays, under one SHA-256::

    offset 0       magic b"MINICMP\\0"                              8 bytes
    8              format version, uint32 little-endian             4 bytes
    12             header length L, uint32 little-endian            4 bytes
    16             header: ASCII JSON, padded with spaces so that the data starts at a
                   multiple of 64 bytes                              L bytes
    16 + L         data: each array C-ordered, little-endian, at an offset (from the start
                   of the data) that is a multiple of 64
    end - 32       SHA-256 of every byte before it                  32 bytes

The header JSON is ``{"kind": str, "header": {...}, "arrays": {name: {"dtype": "float32",
"shape": [...], "offset": int}}}``: ``kind`` says what the file holds (``"checkpoint"``),
``header`` is the caller's own dict. Arrays are bool, integer or real float; no Python
object is ever stored, so nothing is unpickled. Loading checks the magic, the version and
the checksum before it reads anything else: a truncated file, a flipped byte, a file of
another program or a pickle is refused with a one-line ``ValueError``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAGIC = b"MINICMP\x00"
FORMAT_VERSION = 1  # the version this code writes and the only one it reads
ALIGN = 64  # arrays start at multiples of 64 bytes (a cache line, an AVX-512 register)
_PREAMBLE = struct.Struct("<8sII")  # magic, version, header length
_DIGEST_BYTES = 32  # SHA-256
# dtypes an archive may hold: bool, integers, real floats (no complex, strings or objects)
ARRAY_DTYPES = (
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
)


# ----------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (0o022 otherwise)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be
    opened (Windows) or fsynced (some network file systems)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # cannot fsync here
            raise
    finally:
        os.close(fd)


def _parent_folder(path: Path) -> Path:
    """The folder that will hold ``path``, created if missing; a clear ValueError when the
    path names a folder or a parent is a file."""
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {str(path)!r}: {str(parent)!r} is a file")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """``with atomic_writer(path) as f: f.write(...)``: the bytes go to a temporary file in
    the same folder; on success it is fsynced, renamed over ``path`` and the folder fsynced;
    on any error (or a crash) the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    folder = _parent_folder(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private (0600); give it the mode a plain open() would
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
            os.chmod(tmp, mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename, fsync folder)."""
    with atomic_writer(path) as f:
        f.write(data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------


def json_safe(obj, where: str = "value", allow_nan: bool = False):
    """``obj`` as plain JSON types: NumPy integers, floats and bools become Python ones,
    tuples become lists. Refused with a TypeError naming ``where`` (e.g. ``meta['x']``):
    arrays, sets, non-string dict keys, any other object; with a ValueError: NaN or
    infinity unless ``allow_nan`` (JSON has neither)."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not allow_nan and not math.isfinite(value):
            raise ValueError(f"{where} is {value}, which JSON cannot hold")
        return value
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, f"{where}[{i}]", allow_nan) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has the key {k!r}; JSON keys must be strings")
            out[k] = json_safe(v, f"{where}[{k!r}]", allow_nan)
        return out
    raise TypeError(
        f"{where} is a {type(obj).__name__}; only None, bool, int, float, str, lists and "
        f"dicts with string keys can be saved"
    )


def save_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` (NumPy scalars allowed) as indented JSON, atomically."""
    text = json.dumps(json_safe(obj, "the JSON object", allow_nan=True), indent=2, sort_keys=True)
    atomic_write_bytes(path, (text + "\n").encode())


def load_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"file {str(path)!r} is damaged or not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"file {str(path)!r} must hold a JSON object")
    return obj


# ----------------------------------------------------------------------------------------
# the archive: one file, a JSON header and named arrays under one SHA-256
# ----------------------------------------------------------------------------------------


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _archive_array(name, a) -> np.ndarray:
    """``a`` as a C-ordered little-endian array of an allowed dtype, or a clear error."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"array names must be non-empty strings; got {name!r}")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"array {name!r} is a {type(a).__name__}; give a numpy.ndarray")
    if a.dtype.name not in ARRAY_DTYPES:
        raise TypeError(
            f"array {name!r} has dtype {a.dtype}; an archive holds only "
            f"{', '.join(ARRAY_DTYPES)} arrays"
        )
    return a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)  # keeps 0-d arrays 0-d


def save_archive(path: str | Path, kind: str, header: dict, arrays: dict[str, np.ndarray]) -> str:
    """Write ``header`` (a JSON-safe dict, NumPy scalars allowed) and ``arrays`` to one
    file at ``path``, atomically, with the SHA-256 of the whole file at its end (see the
    module docstring for the layout). Everything is checked before a byte is written.
    Returns the checksum (hex)."""
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"kind must be a non-empty string; got {kind!r}")
    if not isinstance(header, dict):
        raise TypeError(f"header must be a dict; got {type(header).__name__}")
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict of name -> numpy.ndarray; got {type(arrays)}")
    stored = {name: _archive_array(name, a) for name, a in arrays.items()}
    table, offset = {}, 0
    for name, a in stored.items():
        offset = _aligned(offset)
        table[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset}
        offset += a.nbytes
    doc = {"kind": kind, "header": json_safe(header, "header"), "arrays": table}
    text = json.dumps(doc, allow_nan=False, ensure_ascii=True).encode()  # keeps dict order
    text += b" " * (_aligned(_PREAMBLE.size + len(text)) - _PREAMBLE.size - len(text))
    if len(text) >= 2**32:
        raise ValueError(f"header of {len(text)} bytes is too large (limit 4 GiB)")

    digest = hashlib.sha256()
    with atomic_writer(path) as f:

        def put(chunk) -> None:
            digest.update(chunk)
            f.write(chunk)

        put(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(text)))
        put(text)
        written = 0
        for name, a in stored.items():
            put(b"\x00" * (table[name]["offset"] - written))
            put(a.reshape(-1).view(np.uint8).data if a.size else b"")
            written = table[name]["offset"] + a.nbytes
        f.write(digest.digest())
    return digest.hexdigest()


def _what_it_looks_like(data: bytes) -> str:
    if data[:1] == b"\x80" or (data[:1] in (b"(", b"c", b"]", b"}") and data[-1:] == b"."):
        return " (it looks like a Python pickle, which minicompress never loads)"
    if data[:4] == b"PK\x03\x04":
        return (
            " (it is a zip or .npz file; a checkpoint of minicompress 0.1 was a folder with "
            "model.npz and config.json: convert it with `python -m minicompress convert`)"
        )
    if data[:6] == b"\x93NUMPY":
        return " (it is a .npy file)"
    return ""


def _parse_table(table, data_len: int, where: str) -> dict[str, tuple[np.dtype, tuple, int]]:
    """The arrays table of a header, checked: known dtypes, non-negative shapes, regions
    inside the data and not overlapping. -> {name: (dtype, shape, offset)}."""
    if not isinstance(table, dict):
        raise ValueError(f"{where}: the arrays table is not a JSON object")
    out, regions = {}, []
    for name, rec in table.items():
        ok = isinstance(rec, dict) and set(rec) == {"dtype", "shape", "offset"}
        ok = ok and rec["dtype"] in ARRAY_DTYPES and isinstance(rec["shape"], list)
        ok = ok and len(rec["shape"]) <= 32  # NumPy's limit on dimensions
        ok = ok and all(type(n) is int and 0 <= n < 2**62 for n in rec["shape"])
        ok = ok and type(rec["offset"]) is int and rec["offset"] >= 0
        if not ok:
            raise ValueError(f"{where}: the entry of array {name!r} is malformed: {rec!r}")
        dtype = np.dtype(rec["dtype"]).newbyteorder("<")
        shape = tuple(rec["shape"])
        nbytes = math.prod(shape) * dtype.itemsize
        if rec["offset"] + nbytes > data_len:
            raise ValueError(f"{where}: array {name!r} runs past the end of the data")
        out[name] = (dtype, shape, rec["offset"])
        if nbytes:
            regions.append((rec["offset"], rec["offset"] + nbytes, name))
    regions.sort()
    for (_, end, a), (start, _, b) in zip(regions, regions[1:], strict=False):
        if start < end:
            raise ValueError(f"{where}: arrays {a!r} and {b!r} overlap")
    used = max(
        (offset + math.prod(shape) * dtype.itemsize for dtype, shape, offset in out.values()),
        default=0,
    )
    if used != data_len:
        raise ValueError(f"{where}: {data_len - used} bytes after the last array")
    return out


def load_archive(
    path: str | Path, kind: str | None = None
) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(kind, header, arrays) of an archive written by ``save_archive``.

    Refused with a one-line ValueError, in this order: a missing file or a folder; a file
    that is not an archive (a pickle, an .npz, anything else); another format version; a
    checksum that does not match (a truncated file, a flipped byte, an edited header); a
    malformed header or arrays table; a ``kind`` other than the one asked for. The arrays
    are fresh writable copies in native byte order.
    """
    path = Path(path)
    where = f"file {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{where} cannot be read: {e.strerror}") from None
    if len(data) < _PREAMBLE.size + _DIGEST_BYTES or data[:8] != MAGIC:
        if data[:8] == MAGIC:
            raise ValueError(f"{where} is damaged: truncated to {len(data)} bytes")
        raise ValueError(f"{where} is not a minicompress file{_what_it_looks_like(data)}")
    _, version, header_len = _PREAMBLE.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {version}; this minicompress reads version "
            f"{FORMAT_VERSION} (a file written by a newer minicompress, or a damaged one)"
        )
    body, recorded = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != recorded:
        raise ValueError(
            f"{where} is damaged: its SHA-256 does not match the one written with it "
            f"(truncated, or changed after it was saved)"
        )
    start = _PREAMBLE.size + header_len
    if start > len(body):
        raise ValueError(f"{where} is damaged: its header runs past the end of the file")
    try:
        doc = json.loads(body[_PREAMBLE.size : start].decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{where} has a malformed header ({e})") from None
    if not isinstance(doc, dict) or set(doc) != {"kind", "header", "arrays"}:
        raise ValueError(f"{where} has a malformed header (keys kind, header, arrays expected)")
    if not isinstance(doc["kind"], str) or not isinstance(doc["header"], dict):
        raise ValueError(f"{where} has a malformed header (kind or header of the wrong type)")
    if kind is not None and doc["kind"] != kind:
        raise ValueError(f"{where} holds a minicompress {doc['kind']!r}, not a {kind!r}")
    table = _parse_table(doc["arrays"], len(body) - start, where)
    arrays = {}
    for name, (dtype, shape, offset) in table.items():
        try:
            a = np.frombuffer(body, dtype, math.prod(shape), start + offset).reshape(shape)
        except (ValueError, OverflowError) as e:  # e.g. a zero-size array of absurd shape
            raise ValueError(f"{where}: array {name!r} cannot be read ({e})") from None
        # NumPy's own native dtype object (a byte-order-swapped descriptor is equal to it but
        # not it, and the kernels' fast paths test dtypes by identity)
        arrays[name] = a.astype(np.dtype(dtype.char), copy=True)
    return doc["kind"], doc["header"], arrays


# ----------------------------------------------------------------------------------------
# the .npz files of minicompress 0.1 (read only, to convert old checkpoints)
# ----------------------------------------------------------------------------------------


def load_npz(path: str | Path, expected_sha256: str | None = None) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file, read without pickle; a missing, damaged or tampered file
    (checksum differs from ``expected_sha256``) is refused with a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    data = path.read_bytes()
    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise ValueError(
            f"file {str(path)!r} is damaged: its SHA-256 does not match the one recorded "
            f"when it was saved"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise ValueError(f"file {str(path)!r} is damaged or not an .npz file ({e})") from None
