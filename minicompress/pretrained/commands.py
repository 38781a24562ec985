"""What the ``pretrained`` commands do, as functions (the CLI module only parses flags and
prints): read the texts to embed, embed them, write the ``.npy``.

``pretrained embed [--model-dir DIR | --checkpoint FILE.mc] [--text T ...] [--text-file
FILE] [--out FILE.npy]``: one sentence per ``--text`` and one per line of ``--text-file``
(every line, blank ones included, so that row i of the output is line i + 1 of the file),
``--text`` values first; embeddings in input order. ``--checkpoint`` embeds with a
compressed encoder written by ``pretrained compress --out`` (its own tokenizer, its int8
kernels).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from minicompress.data import load_text
from minicompress.fileio import atomic_write_bytes
from minicompress.nn.linear import DENSE
from minicompress.pretrained.embed import DEFAULT_BATCH_SIZE, embed_texts
from minicompress.pretrained.loader import load_pretrained
from minicompress.pretrained.saved import load_compressed_encoder


def read_texts(texts: list[str] | None = None, text_file: str | Path | None = None) -> list[str]:
    """The ``--text`` values, then every line of ``text_file`` (UTF-8), in order. No text
    at all is refused; so is an unreadable or empty file (``data.load_text``)."""
    out = list(texts or [])
    if text_file is not None:
        out += load_text(text_file).splitlines()
    if not out:
        raise ValueError("no text to embed: give --text TEXT (repeatable) or --text-file FILE")
    return out


def npy_bytes(array: np.ndarray) -> bytes:
    """The bytes of a ``.npy`` file holding ``array`` (object arrays refused: no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` to ``path`` (a ``.npy`` name) atomically: a failed run leaves the old
    file, never half of a new one."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"the output file must end in .npy; got {str(path)!r}")
    atomic_write_bytes(path, npy_bytes(array))
    return path


def load_encoder(model_dir: str | Path | None = None, checkpoint: str | Path | None = None):
    """(model, params, cfg, linear) that embed text: the fp32 checkpoint directory
    (``load_pretrained``), or a compressed encoder file (``load_compressed_encoder``)."""
    if checkpoint is None:
        model = load_pretrained(model_dir)
        return model, model.params, model.cfg, DENSE
    if model_dir is not None:
        raise ValueError("give a model directory or a compressed checkpoint, not both")
    model, cm = load_compressed_encoder(checkpoint)
    return model, cm.params, cm.cfg, cm.linear


def embed_command(
    model_dir: str | Path | None,
    texts: list[str] | None,
    text_file: str | Path | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    checkpoint: str | Path | None = None,
) -> np.ndarray:
    """Sentence embeddings float32 [N, C] of the texts, in input order (see the module)."""
    all_texts = read_texts(texts, text_file)
    model, params, cfg, linear = load_encoder(model_dir, checkpoint)
    return embed_texts(model, all_texts, batch_size, linear, params, cfg, progress=progress)
