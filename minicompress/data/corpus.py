"""The built-in corpus (Python's own documentation), a character tokenizer, batches.

Every Python ships ``pydoc_data.topics``: the English text of the language reference that
``help()`` shows (~465k characters). Its topics joined in sorted order are the default
corpus, so nothing is downloaded and every run sees the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np


def builtin_text() -> str:
    """The text of ``pydoc_data.topics``, topics in sorted order of their names."""
    from pydoc_data.topics import topics

    return "".join(topics[name] for name in sorted(topics))


def load_text(path: str | Path) -> str:
    """A user's UTF-8 text file; a missing, unreadable, undecodable or empty file is refused."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"text file {str(p)!r} does not exist or is not a file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"text file {str(p)!r} is not valid UTF-8 (byte {e.start}): give a UTF-8 text file"
        ) from None
    except OSError as e:
        raise ValueError(f"text file {str(p)!r} cannot be read: {e.strerror}") from None
    if not text:
        raise ValueError(f"text file {str(p)!r} is empty")
    return text


class CharTokenizer:
    """One token per distinct character of a text, in sorted order.

    encode: str -> int64 [n];   decode: int [n] -> str.
    """

    def __init__(self, chars: str | list[str]):
        chars = list(chars)
        if not chars or len(set(chars)) != len(chars):
            raise ValueError("chars must be a non-empty sequence of distinct characters")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise ValueError("text must not be empty")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, name: str = "text") -> np.ndarray:
        """Token ids of ``text``; a character outside the vocabulary is refused, naming
        ``name`` (the argument the text came from)."""
        try:
            return np.array([self.index[c] for c in text], dtype=np.int64)
        except KeyError as e:
            raise ValueError(
                f"{name} holds the character {e.args[0]!r}, which is not in the vocabulary of "
                f"{self.vocab_size} characters"
            ) from None

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); got [{ids.min()}, {ids.max()}]"
            )
        return "".join(self.chars[i] for i in ids)


@dataclass(frozen=True)
class TextDataset:
    """A tokenized text, split once: the first 90% for training, the last 10% for validation."""

    tokenizer: CharTokenizer
    train: np.ndarray  # int64 [n_train]
    val: np.ndarray  # int64 [n_val]


def make_dataset(
    text: str, block_size: int, val_fraction: float = 0.1, tokenizer: CharTokenizer | None = None
) -> TextDataset:
    """Tokenize ``text`` and split it at ``(1 - val_fraction) * len``, without shuffling (so
    no validation window overlaps a training one). Each part must hold a full block.
    ``tokenizer`` (e.g. a trained model's) defaults to the characters of ``text``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1); got {val_fraction}")
    tok = CharTokenizer.from_text(text) if tokenizer is None else tokenizer
    ids = tok.encode(text)
    n_train = int(round(len(ids) * (1.0 - val_fraction)))
    need = block_size + 1
    if n_train < need or len(ids) - n_train < need:
        raise ValueError(
            f"text is too short: {len(ids)} characters; with block_size={block_size} it needs "
            f"at least {int(np.ceil(need / val_fraction))} so that the validation part holds "
            f"{need}"
        )
    return TextDataset(tok, ids[:n_train], ids[n_train:])


def get_batch(
    ids: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random windows: x = ids[s : s + T], y = ids[s + 1 : s + T + 1] for B random starts s.

    ->  x, y: int64 [B, T].   The starts come from ``rng`` alone.
    """
    if len(ids) < block_size + 1:
        raise ValueError(f"ids has {len(ids)} tokens; a batch needs at least {block_size + 1}")
    starts = rng.integers(0, len(ids) - block_size, size=batch_size)  # [B]
    offsets = starts[:, None] + np.arange(block_size)  # [B, T]
    return ids[offsets], ids[offsets + 1]


class Batch(NamedTuple):
    """One training batch, as the training loop hands it to a loss.

    x: int [B, T] token ids; y: int [B, T] next-token targets, or None for unlabelled text
    (an encoder distilled on its teacher's embeddings); pad_mask: bool [B, T], True at
    padding, or None; token_types: int [B, T] (segment ids of an encoder) or None.
    """

    x: np.ndarray
    y: np.ndarray | None
    pad_mask: np.ndarray | None = None
    token_types: np.ndarray | None = None


def lm_batch(ids: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator) -> Batch:
    """``get_batch`` as a ``Batch`` of next-token prediction (no padding)."""
    x, y = get_batch(ids, batch_size, block_size, rng)
    return Batch(x, y)


def eval_windows(ids: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All non-overlapping windows of ``ids``, in order: the fixed validation set.

    ->  x, y: int64 [n_windows, T] with n_windows = (len(ids) - 1) // T.
    """
    n = (len(ids) - 1) // block_size
    x = ids[: n * block_size].reshape(n, block_size)
    y = ids[1 : n * block_size + 1].reshape(n, block_size)
    return x, y
