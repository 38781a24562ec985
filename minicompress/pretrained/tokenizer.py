"""WordPiece tokenization of sentences into padded, masked batches for the BERT encoder.

The tokenizing itself is the ``tokenizers`` library's (the same Rust code that
sentence-transformers runs), read from the checkpoint's ``tokenizer.json`` or, failing that,
built from its ``vocab.txt``. What this module adds is the batch the model takes:

- ``[CLS] tokens [SEP]``, token type 0 everywhere (one sentence per row);
- **no fixed padding**: all-MiniLM-L6-v2's ``tokenizer.json`` pads every input to 128
  tokens; sentence-transformers calls the tokenizer with its own padding (to the longest
  row of the batch), so we switch the built-in padding off and pad to the longest row
  ourselves;
- ``pad_mask`` bool [B, T], **True at padding** (our convention; HF's ``attention_mask``
  is its negation);
- **text longer than ``max_length`` tokens is truncated, with a warning** naming the rows
  (``TruncationWarning``): the tokens past ``max_length - 1`` are dropped and ``[SEP]``
  closes the row, as sentence-transformers does silently (its ``max_seq_length``, 256 for
  all-MiniLM-L6-v2). ``max_length`` never exceeds the position table.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minicompress.pretrained.files import TOKENIZER_FILE, VOCAB_FILE, require


class TruncationWarning(UserWarning):
    """Some texts were longer than the model takes and were cut to ``max_length`` tokens."""


class TokenBatch(NamedTuple):
    ids: np.ndarray  # int64 [B, T] token ids, padded with the [PAD] id
    pad_mask: np.ndarray  # bool [B, T], True at padding
    token_types: np.ndarray  # int64 [B, T], all 0 (one sentence per row)
    lengths: np.ndarray  # int64 [B] real tokens per row, [CLS] and [SEP] included


def check_texts(texts, name: str = "texts") -> list[str]:
    """A non-empty list of strings (a single string is refused: it would be read as its
    characters)."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings; got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{name} must hold at least one text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{name}[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a string")
    return list(texts)


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists to the longest:  ->  ids int64 [B, T], pad_mask bool [B, T]
    (True at padding)."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)  # [B]
    t = int(lengths.max())
    ids = np.full((len(rows), t), pad_id, dtype=np.int64)  # [B, T]
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    pad_mask = np.arange(t)[None, :] >= lengths[:, None]  # [B, T]
    return ids, pad_mask


def select_rows(batch: TokenBatch, rows) -> TokenBatch:
    """The rows ``rows`` of a batch, cut to the longest of them (less padding)."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = batch.lengths[rows]  # [b]
    t = int(lengths.max())
    return TokenBatch(
        batch.ids[rows, :t], batch.pad_mask[rows, :t], batch.token_types[rows, :t], lengths
    )


class WordPieceTokenizer:
    """A checkpoint's WordPiece tokenizer, producing ``TokenBatch``es.

    ``encode(texts)`` tokenizes a list of strings; rows longer than ``max_length`` tokens
    are truncated with a ``TruncationWarning``.
    """

    def __init__(self, tokenizer, max_length: int, source: str):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(
                f"max_length must be an integer >= 2 ([CLS] and [SEP]); got {max_length}"
            )
        self._tok = tokenizer
        self.max_length = max_length
        self.source = source
        self._tok.no_padding()  # pad to the batch's longest row, not to a fixed 128
        self._tok.enable_truncation(max_length)  # counts [CLS] and [SEP]
        pad = self._tok.token_to_id("[PAD]")
        if pad is None:
            raise ValueError(f"{source}: the vocabulary has no [PAD] token")
        self.pad_id = int(pad)

    @classmethod
    def from_dir(cls, model_dir: str | Path, max_length: int) -> WordPieceTokenizer:
        """``tokenizer.json`` if the checkpoint has one, else ``vocab.txt`` with the BERT
        normalizer (lower-casing as ``tokenizer_config.json``'s ``do_lower_case``, default
        True)."""
        tk = require("tokenizers")
        d = Path(model_dir)
        if (d / TOKENIZER_FILE).is_file():
            path = d / TOKENIZER_FILE
            try:
                tok = tk.Tokenizer.from_file(str(path))
            except Exception as e:  # the library's own error type
                raise ValueError(f"{str(path)!r} is not a readable tokenizer file ({e})") from None
            return cls(tok, max_length, str(path))
        path = d / VOCAB_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{str(d)!r} has neither {TOKENIZER_FILE} nor {VOCAB_FILE}")
        lower = True
        cfg_path = d / "tokenizer_config.json"
        if cfg_path.is_file():
            try:
                lower = bool(json.loads(cfg_path.read_text("utf-8")).get("do_lower_case", True))
            except (OSError, ValueError) as e:
                raise ValueError(f"{str(cfg_path)!r} is not a readable JSON file ({e})") from None
        try:
            tok = tk.BertWordPieceTokenizer(str(path), lowercase=lower)
        except Exception as e:
            raise ValueError(
                f"{str(path)!r} is not a readable WordPiece vocabulary ({e})"
            ) from None
        return cls(tok, max_length, str(path))

    @classmethod
    def from_vocab(
        cls, vocab: list[str], settings: dict, max_length: int, source: str
    ) -> WordPieceTokenizer:
        """The tokenizer of a compressed checkpoint: BERT's WordPiece over ``vocab`` (token
        i is ``vocab[i]``) with the normalizer ``settings`` that ``settings()`` recorded.
        It gives the ids of the checkpoint's own tokenizer for the BERT family, whose
        ``tokenizer.json`` is exactly this pipeline."""
        tk = require("tokenizers")
        keys = ("lowercase", "strip_accents", "clean_text", "handle_chinese_chars")
        if not isinstance(settings, dict) or any(k not in settings for k in keys):
            raise ValueError(f"{source}: the tokenizer settings must hold {list(keys)}")
        tok = tk.BertWordPieceTokenizer(
            vocab={t: i for i, t in enumerate(vocab)}, **{k: settings[k] for k in keys}
        )
        return cls(tok, max_length, source)

    def vocab(self) -> list[str]:
        """The word pieces in id order (token i is ``vocab()[i]``)."""
        by_id = sorted((i, t) for t, i in self._tok.get_vocab().items())
        if [i for i, _ in by_id] != list(range(len(by_id))):
            raise ValueError(f"{self.source}: the token ids are not 0 .. {len(by_id) - 1}")
        return [t for _, t in by_id]

    def settings(self) -> dict:
        """What ``from_vocab`` needs besides the vocabulary: the BERT normalizer's options
        (lower-casing, accents, control characters, CJK characters)."""
        n = self._tok.normalizer
        keys = ("lowercase", "strip_accents", "clean_text", "handle_chinese_chars")
        if n is None or not all(hasattr(n, k) for k in keys):
            raise ValueError(
                f"{self.source}: the normalizer is {type(n).__name__}, not BERT's; a "
                f"compressed checkpoint cannot record it"
            )
        return {k: getattr(n, k) for k in keys}

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(
        self, texts: list[str], name: str = "texts", max_length: int | None = None
    ) -> TokenBatch:
        """Token ids of each text, ``[CLS] ... [SEP]``, right-padded to the longest row.

        texts: list of B strings  ->  TokenBatch(ids [B, T], pad_mask [B, T],
        token_types [B, T], lengths [B]). Texts longer than ``max_length`` tokens (default:
        the tokenizer's, which a call may lower but not raise) are cut, and a
        ``TruncationWarning`` names them by position in ``texts``.
        """
        texts = check_texts(texts, name)
        limit = self.max_length if max_length is None else max_length
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 2 <= limit <= self.max_length
        ):
            raise ValueError(
                f"max_length must be an integer in [2, {self.max_length}]; got {limit!r}"
            )
        if limit != self.max_length:
            self._tok.enable_truncation(limit)
        try:
            encodings = self._tok.encode_batch(texts)
        finally:
            self._tok.enable_truncation(self.max_length)
        cut = [i for i, e in enumerate(encodings) if e.overflowing]
        if cut:
            shown = ", ".join(str(i) for i in cut[:10]) + (" ..." if len(cut) > 10 else "")
            warnings.warn(
                f"{len(cut)} of {len(texts)} {name} were longer than {limit} tokens "
                f"and were truncated (positions {shown})",
                TruncationWarning,
                stacklevel=2,
            )
        ids, pad_mask = pad_batch([e.ids for e in encodings], self.pad_id)
        types, _ = pad_batch([e.type_ids for e in encodings], 0)
        lengths = (~pad_mask).sum(axis=1).astype(np.int64)
        return TokenBatch(ids, pad_mask, types, lengths)

    def __repr__(self) -> str:
        return f"WordPieceTokenizer({self.source!r}, max_length={self.max_length})"
