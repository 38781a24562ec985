"""Files written atomically and read without pickle.

A write goes to a temporary file in the same folder, is flushed to disk, then renamed over
the target in one step (``os.replace``): a crash leaves the old file or the new one, never
half of one. Arrays are stored as ``.npz`` and read with ``allow_pickle=False``; a JSON file
beside them records their SHA-256, so a damaged file is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an uncompressed ``.npz`` holding ``arrays`` (object arrays refused)."""
    for name, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(
                f"array {name!r} has dtype object, which cannot be saved without pickle"
            )
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray]) -> str:
    """Save ``arrays`` atomically as ``.npz``; returns the file's SHA-256."""
    data = npz_bytes(arrays)
    atomic_write_bytes(path, data)
    return sha256(data)


def load_arrays(path: str | Path, expected_sha256: str | None = None) -> dict[str, np.ndarray]:
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


def save_json(path: str | Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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
