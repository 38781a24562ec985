"""Model checkpoints: one file holding the config, the vocabulary, the metadata and every
tensor, under one SHA-256 (the archive of ``minicompress.fileio``).

Where it lives: ``save_checkpoint("runs/teacher", ...)`` writes the file
``runs/teacher/model.mc`` (so the folder can also hold the run's plots); a path ending in
``.mc`` is the file itself. ``load_checkpoint`` takes the same path, the folder or the file.
Nothing beside the file is read: no side file can change the model.

What it holds (the archive's header)::

    {"config": {...TransformerConfig fields...},
     "vocab": ["\\n", " ", "!", ...],                   # token i is vocab[i]; len = vocab_size
     "meta": {...},                                     # what the trainer recorded
     "tensors": {"wte": {"encoding": "fp32", "arrays": {"values": "wte/values"}}, ...}}

Each tensor names its *encoding* and the archive arrays that hold it, by role. The dense
model is all ``"fp32"`` (one float32 array, role ``"values"``). Compressed checkpoints use
the same table with other encodings (int8 / int4 with scales and zero points, CSR, removed
structure) written through ``write_checkpoint`` and read through ``read_checkpoint``;
``load_checkpoint`` decodes fp32 only and names the loader of the others.

The writer checks everything the loader will require (config, vocabulary, every tensor's
name, shape and dtype) before a byte is written, and writes atomically: a crash leaves the
old checkpoint or the new one.

Checkpoints of minicompress 0.1 (a folder with ``model.npz`` and ``config.json``, whose
checksum did not cover the config) are refused with the command that converts them once:
``python -m minicompress convert OLD_FOLDER [--out NEW]``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minicompress import __version__
from minicompress.fileio import json_safe, load_archive, load_json, load_npz, save_archive
from minicompress.nn.model import TransformerConfig, check_params

CHECKPOINT_FILE = "model.mc"  # the file inside a checkpoint folder
SUFFIX = ".mc"  # a path with this suffix is the checkpoint file itself
KIND = "checkpoint"  # the archive kind
FP32 = "fp32"  # the encoding of a dense float32 tensor: one array, role "values"
COMPRESSED_LOADER = "minicompress.deploy.load_compressed"  # decodes the other encodings
LEGACY_FILES = ("config.json", "model.npz")  # a checkpoint folder of minicompress 0.1


class StoredTensor(NamedTuple):
    """One tensor as a checkpoint stores it."""

    encoding: str  # "fp32", or a compressed encoding ("int8", "int4", "csr", ...)
    arrays: dict[str, np.ndarray]  # the arrays that hold it, by role ({"values": w} for fp32)
    attrs: dict  # JSON-safe parameters of the encoding (granularity, group size, ...)


class Checkpoint(NamedTuple):
    """A checkpoint as read from disk, tensors not decoded."""

    path: Path  # the file
    cfg: TransformerConfig
    vocab: list[str]
    meta: dict
    tensors: dict[str, StoredTensor]


def checkpoint_file(path: str | Path) -> Path:
    """The file a checkpoint path names: ``path`` itself if it ends in ``.mc`` or is a file,
    else ``path/model.mc``."""
    p = Path(path)
    if p.suffix == SUFFIX or p.is_file():
        return p
    return p / CHECKPOINT_FILE


def _file_to_write(path: str | Path) -> Path:
    """Where a checkpoint given ``path`` is written: ``path`` if it ends in ``.mc``, else
    ``path/model.mc``; an existing file of another name is never replaced."""
    p = Path(path)
    if p.suffix == SUFFIX:
        return p
    if p.exists() and not p.is_dir():
        raise ValueError(
            f"{str(p)!r} is a file; a checkpoint path is a folder (the checkpoint goes in "
            f"{CHECKPOINT_FILE} inside it) or a file name ending in {SUFFIX}"
        )
    return p / CHECKPOINT_FILE


# ----------------------------------------------------------------------------------------
# checks shared by the writer and the reader
# ----------------------------------------------------------------------------------------


def _config_from_dict(d, where: str) -> TransformerConfig:
    try:
        return TransformerConfig.from_dict(d)
    except (TypeError, ValueError) as e:  # not a dict, unknown or missing field, bad value
        raise ValueError(f"{where}: the config is invalid ({e})") from None


def _check_vocab(vocab, cfg: TransformerConfig, where: str) -> list[str]:
    if not isinstance(vocab, (list, tuple)):
        raise TypeError(f"{where}: vocab must be a list of strings; got {type(vocab).__name__}")
    bad = next((i for i, t in enumerate(vocab) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{where}: vocab must be a list of strings; vocab[{bad}] is {vocab[bad]!r}")
    vocab = list(vocab)
    if len(vocab) != cfg.vocab_size:
        raise ValueError(
            f"{where}: vocab has {len(vocab)} tokens, config says vocab_size={cfg.vocab_size}"
        )
    if len(set(vocab)) != len(vocab):
        dup = next(t for t, n in Counter(vocab).items() if n > 1)
        raise ValueError(f"{where}: vocab holds the token {dup!r} more than once")
    return vocab


def _check_param_shapes(params: dict, cfg: TransformerConfig, where: str) -> None:
    """Every parameter the config needs, no other, with consistent shapes (heads and MLP
    width may be smaller than the config's in any block: a pruned model)."""
    try:
        check_params(params, cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: the parameters do not match the config: {e}") from None


def _fp32_values(name: str, a, where: str) -> np.ndarray:
    """A parameter as the float32 array an fp32 tensor stores: real floats only."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where}: parameter {name!r} is a {type(a).__name__}, not an array")
    if a.dtype.kind != "f":
        raise TypeError(
            f"{where}: parameter {name!r} has dtype {a.dtype}; a dense checkpoint holds real "
            f"float arrays (stored as float32)"
        )
    return a.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------
# the tensor table: any encoding
# ----------------------------------------------------------------------------------------


def write_checkpoint(
    path: str | Path,
    cfg: TransformerConfig,
    vocab: list[str],
    tensors: dict[str, StoredTensor],
    meta: dict | None = None,
) -> Path:
    """Write a checkpoint whose tensors are already encoded (``save_checkpoint`` does it
    for a dense model). Checks the config round trip, the vocabulary, the metadata and
    the tensor table before writing; returns the file written."""
    file = _file_to_write(path)
    where = f"checkpoint {str(file)!r}"
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg must be a TransformerConfig; got {type(cfg).__name__}")
    config = json_safe(cfg.to_dict(), "cfg")  # NumPy integers become plain ints
    if _config_from_dict(json.loads(json.dumps(config)), where) != cfg:
        raise ValueError(f"{where}: the config does not survive a JSON round trip: {cfg}")
    vocab = _check_vocab(vocab, cfg, where)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict or None; got {type(meta).__name__}")
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict of name -> StoredTensor; got {type(tensors)}")
    table, arrays = {}, {}
    for name, t in tensors.items():
        if not isinstance(t, StoredTensor):
            raise TypeError(f"tensor {name!r} must be a StoredTensor; got {type(t).__name__}")
        if not isinstance(t.encoding, str) or not t.encoding:
            raise TypeError(f"tensor {name!r}: encoding must be a non-empty string")
        if not isinstance(t.arrays, dict) or not t.arrays:
            raise TypeError(f"tensor {name!r}: arrays must be a non-empty dict of role -> array")
        if not isinstance(t.attrs, dict) or {"encoding", "arrays"} & set(t.attrs):
            raise TypeError(f"tensor {name!r}: attrs must be a dict without encoding/arrays")
        roles = {role: f"{name}/{role}" for role in t.arrays}
        table[name] = {"encoding": t.encoding, "arrays": roles, **t.attrs}
        for role, a in t.arrays.items():
            if roles[role] in arrays:
                raise ValueError(f"tensor {name!r}: array name {roles[role]!r} is taken")
            arrays[roles[role]] = a
    header = {
        "config": config,
        "vocab": vocab,
        "meta": json_safe(meta, "meta"),
        "tensors": json_safe(table, "tensors"),
        "written_by": f"minicompress {__version__}",
    }
    save_archive(file, KIND, header, arrays)
    return file


def _legacy_refusal(path: Path) -> ValueError | None:
    folder = path.parent if path.name in LEGACY_FILES else path
    if (folder / LEGACY_FILES[0]).is_file() and not (folder / CHECKPOINT_FILE).exists():
        return ValueError(
            f"checkpoint {str(folder)!r} is in the two-file format of minicompress 0.1 "
            f"(config.json + model.npz), which is no longer read because its checksum did "
            f"not cover the config; convert it once: python -m minicompress convert "
            f"{str(folder)!r} --out NEW_FOLDER"
        )
    return None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint's config, vocabulary, metadata and stored tensors (not decoded).
    Refused with a one-line ValueError: a missing, damaged or foreign file, an old-format
    folder, a header that does not describe a valid model."""
    legacy = _legacy_refusal(Path(path))
    if legacy is not None:
        raise legacy
    file = checkpoint_file(path)
    if not file.exists():
        raise ValueError(
            f"checkpoint {str(path)!r} does not exist (expected the folder of a checkpoint, "
            f"holding {CHECKPOINT_FILE}, or the {SUFFIX} file itself)"
        )
    _, header, arrays = load_archive(file, KIND)
    where = f"checkpoint {str(file)!r}"
    if not {"config", "vocab", "meta", "tensors"} <= set(header):
        raise ValueError(f"{where}: the header lacks config, vocab, meta or tensors")
    cfg = _config_from_dict(header["config"], where)
    try:
        vocab = _check_vocab(header["vocab"], cfg, where)
    except TypeError as e:
        raise ValueError(str(e)) from None
    if not isinstance(header["meta"], dict) or not isinstance(header["tensors"], dict):
        raise ValueError(f"{where}: meta and tensors must be JSON objects")
    tensors, used = {}, set()
    for name, rec in header["tensors"].items():
        ok = isinstance(rec, dict) and isinstance(rec.get("encoding"), str)
        ok = ok and isinstance(rec.get("arrays"), dict) and bool(rec["arrays"])
        if not ok:
            raise ValueError(f"{where}: the entry of tensor {name!r} is malformed")
        members = {}
        for role, key in rec["arrays"].items():
            if not isinstance(key, str) or key not in arrays or key in used:
                raise ValueError(f"{where}: tensor {name!r} names a missing array {key!r}")
            members[role] = arrays[key]
            used.add(key)
        attrs = {k: v for k, v in rec.items() if k not in ("encoding", "arrays")}
        tensors[name] = StoredTensor(rec["encoding"], members, attrs)
    stray = sorted(set(arrays) - used)
    if stray:
        raise ValueError(f"{where}: array {stray[0]!r} belongs to no tensor")
    return Checkpoint(file, cfg, vocab, header["meta"], tensors)


# ----------------------------------------------------------------------------------------
# the dense model
# ----------------------------------------------------------------------------------------


def check_savable(
    params: dict, cfg: TransformerConfig, vocab: list[str], meta: dict | None = None
) -> dict[str, np.ndarray]:
    """Everything ``load_checkpoint`` will require, checked without writing: the config,
    the vocabulary (one token per id), JSON-safe metadata, every parameter present with the
    shape the config needs and a real float dtype. -> the float32 arrays to store."""
    where = "save_checkpoint"
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg must be a TransformerConfig; got {type(cfg).__name__}")
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> array; got {type(params).__name__}")
    _check_vocab(vocab, cfg, where)
    json_safe({} if meta is None else meta, "meta")
    values = {name: _fp32_values(name, a, where) for name, a in params.items()}
    _check_param_shapes(values, cfg, where)
    return values


def save_checkpoint(
    path: str | Path,
    params: dict,
    cfg: TransformerConfig,
    vocab: list[str],
    meta: dict | None = None,
) -> Path:
    """Write a dense model (every tensor ``fp32``) as one file, atomically; see the module
    docstring. Float16/float64 parameters are stored as float32; anything ``load_checkpoint``
    would refuse is refused here first, before a byte is written. Returns the file."""
    values = check_savable(params, cfg, vocab, meta)
    tensors = {name: StoredTensor(FP32, {"values": a}, {}) for name, a in values.items()}
    return write_checkpoint(path, cfg, vocab, tensors, meta)


def load_checkpoint(path: str | Path) -> tuple[dict, TransformerConfig, list[str], dict]:
    """(params, config, vocab, meta) of a dense checkpoint (the folder or the file that
    ``save_checkpoint`` was given). params are float32 arrays of their own.

    Refused with a one-line ValueError: a missing or damaged file, another program's file
    or a pickle, an unknown format version, an old two-file checkpoint (with the command
    that converts it), a tensor in a compressed encoding (with the loader that reads it),
    an fp32 tensor that is not float32, parameters that do not fit the config.
    """
    ck = read_checkpoint(path)
    where = f"checkpoint {str(ck.path)!r}"
    params = {}
    for name, t in ck.tensors.items():
        if t.encoding != FP32:
            raise ValueError(
                f"{where}: tensor {name!r} is stored as {t.encoding!r}; load_checkpoint "
                f"reads dense (fp32) checkpoints only; load this one with {COMPRESSED_LOADER}"
            )
        values = t.arrays.get("values")
        if set(t.arrays) != {"values"} or values.dtype != np.float32:
            got = {role: str(a.dtype) for role, a in t.arrays.items()}
            raise ValueError(
                f"{where}: fp32 tensor {name!r} must be one float32 array 'values'; got {got}"
            )
        params[name] = values
    _check_param_shapes(params, ck.cfg, where)
    return params, ck.cfg, ck.vocab, ck.meta


def convert_legacy_checkpoint(folder: str | Path, out: str | Path | None = None) -> Path:
    """Convert a checkpoint folder of minicompress 0.1 (``config.json`` + ``model.npz``)
    into the one-file format, at ``out`` (default: ``folder/model.mc``, beside the old files,
    which are then never read again). The arrays are checked against the SHA-256 recorded in
    ``config.json``; the config itself was never covered by it, so convert only checkpoints
    whose ``config.json`` you trust. Returns the file written."""
    folder = Path(folder)
    conf_path, npz_path = (folder / f for f in LEGACY_FILES)
    if not conf_path.is_file() or not npz_path.is_file():
        raise ValueError(
            f"{str(folder)!r} is not a checkpoint of minicompress 0.1 (no config.json and "
            f"model.npz in it)"
        )
    target = _file_to_write(folder if out is None else out)
    if target.exists():
        raise ValueError(f"{str(target)!r} already exists; choose another --out")
    conf = load_json(conf_path)
    if not isinstance(conf.get("sha256"), str):
        raise ValueError(f"{str(conf_path)!r} records no SHA-256 of model.npz")
    where = f"checkpoint {str(folder)!r}"
    cfg = _config_from_dict(conf.get("model"), where)
    arrays = load_npz(npz_path, conf["sha256"])
    meta = conf.get("meta", {})
    return save_checkpoint(target, arrays, cfg, conf.get("vocab"), meta)
