"""Text corpora and character-level tokenization."""

from minicompress.data.corpus import (
    Batch,
    CharTokenizer,
    TextDataset,
    builtin_text,
    eval_windows,
    get_batch,
    lm_batch,
    load_text,
    make_dataset,
)

__all__ = [
    "Batch",
    "CharTokenizer",
    "TextDataset",
    "builtin_text",
    "eval_windows",
    "get_batch",
    "load_text",
    "lm_batch",
    "make_dataset",
]
