"""Model checkpoints: a folder with ``model.npz`` (the parameters) and ``config.json`` (the
model config, the vocabulary, the SHA-256 of the arrays and what the trainer recorded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minicompress.fileio import load_arrays, load_json, save_arrays, save_json
from minicompress.nn.model import TransformerConfig, check_params

MODEL_FILE = "model.npz"
CONFIG_FILE = "config.json"


def save_checkpoint(
    out_dir: str | Path,
    params: dict,
    cfg: TransformerConfig,
    vocab: list[str],
    meta: dict | None = None,
) -> Path:
    """Write ``out_dir/model.npz`` then ``out_dir/config.json``, each atomically."""
    out = Path(out_dir)
    digest = save_arrays(out / MODEL_FILE, params)
    save_json(
        out / CONFIG_FILE,
        {"model": cfg.to_dict(), "vocab": list(vocab), "sha256": digest, "meta": meta or {}},
    )
    return out


def load_checkpoint(path: str | Path) -> tuple[dict, TransformerConfig, list[str], dict]:
    """(params, config, vocab, meta) of a checkpoint folder (or of its ``config.json``).

    Refused with a ValueError: a missing folder or file, a damaged file, arrays whose names or
    shapes do not match the config.
    """
    p = Path(path)
    folder = p.parent if p.name in (CONFIG_FILE, MODEL_FILE) else p
    if not folder.is_dir():
        raise ValueError(
            f"checkpoint {str(path)!r} does not exist (expected a folder with "
            f"{CONFIG_FILE} and {MODEL_FILE})"
        )
    conf = load_json(folder / CONFIG_FILE)
    try:
        cfg = TransformerConfig(**conf["model"])
        vocab = list(conf["vocab"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {str(folder)!r} has a damaged {CONFIG_FILE} ({e})") from None
    params = load_arrays(folder / MODEL_FILE, conf.get("sha256"))
    try:
        check_params(params, cfg)  # shapes come from the parameters: shrunk models load too
    except ValueError as e:
        raise ValueError(f"checkpoint {str(folder)!r} does not match its config: {e}") from None
    params = {k: a.astype(np.float32, copy=False) for k, a in params.items()}
    if len(vocab) != cfg.vocab_size:
        raise ValueError(
            f"checkpoint {str(folder)!r}: vocab has {len(vocab)} characters, "
            f"config says {cfg.vocab_size}"
        )
    return params, cfg, vocab, conf.get("meta", {})
