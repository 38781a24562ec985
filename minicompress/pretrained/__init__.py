"""A real pretrained model: a local Hugging Face BERT-family checkpoint (all-MiniLM-L6-v2 by
default) loaded into the NumPy model, its sentence embeddings, and how far compression
moves them (fidelity against the fp32 model)."""

from minicompress.pretrained.embed import embed_texts, sentence_embeddings
from minicompress.pretrained.loader import (
    PretrainedModel,
    bert_config,
    default_model_dir,
    hf_to_params,
    load_pretrained,
    model_package_version,
)
from minicompress.pretrained.tokenizer import TokenBatch, TruncationWarning, WordPieceTokenizer

__all__ = [
    "PretrainedModel",
    "TokenBatch",
    "TruncationWarning",
    "WordPieceTokenizer",
    "bert_config",
    "default_model_dir",
    "embed_texts",
    "hf_to_params",
    "load_pretrained",
    "model_package_version",
    "sentence_embeddings",
]
