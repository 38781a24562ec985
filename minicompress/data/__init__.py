"""Text corpora and character-level tokenization."""

from minicompress.data.corpus import (
    CharTokenizer,
    TextDataset,
    builtin_text,
    eval_windows,
    get_batch,
    load_text,
    make_dataset,
)

__all__ = [
    "CharTokenizer",
    "TextDataset",
    "builtin_text",
    "eval_windows",
    "get_batch",
    "load_text",
    "make_dataset",
]
