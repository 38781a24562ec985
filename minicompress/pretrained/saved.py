"""A compressed sentence encoder as one checkpoint file, and back.

The file is the package's one compressed format (``deploy.format.save_compressed``: one
file, written atomically, SHA-256 over everything): each tensor in the encoding its
technique made (``intN`` codes, ``csr``, ``fp32``), the encoder's config, the WordPiece
vocabulary as the checkpoint's vocabulary (token i is ``vocab[i]``), and in the metadata:

- ``encoder``: where the model came from and the tokenizer's normalizer settings and
  maximum length, so that the file alone tokenizes and embeds text;
- ``quantization`` / ``compress``: how it was compressed
  (``pretrained.compress.compression_meta``): the activation mode and, for static
  activations, the calibrated ranges, so that it runs again exactly as it was measured.

``load_compressed_encoder`` gives back the same two objects ``compress`` made in memory:
a ``PretrainedModel`` (tokenizer, float32 values, config) and a ``CompressedModel`` (what
runs: packed int8 weights on the kernels, the simulation, or float).
"""

from __future__ import annotations

from pathlib import Path

from minicompress.deploy.format import read_compressed, save_compressed
from minicompress.nn.linear import DENSE
from minicompress.nn.model import linear_names
from minicompress.pretrained.compress import CompressedModel
from minicompress.pretrained.loader import PretrainedModel
from minicompress.pretrained.tokenizer import WordPieceTokenizer
from minicompress.quant.pipeline import simulation_linear
from minicompress.quant.runtime import INT8, Int8Linear, int8_weights, pack_int8_params
from minicompress.quant.tensor import QuantizedTensor

ENCODER_META = "encoder"  # the metadata key that marks a compressed sentence encoder
UNUSED_TOKEN = "[minicompress-unused-{}]"  # names of embedding rows the tokenizer never emits


def checkpoint_vocab(tokenizer: WordPieceTokenizer, vocab_size: int) -> list[str]:
    """The tokenizer's word pieces in id order, completed to ``vocab_size`` entries (the
    rows of the word embeddings) with placeholder names that no text produces."""
    pieces = tokenizer.vocab()
    if len(pieces) > vocab_size:
        raise ValueError(f"the tokenizer has {len(pieces)} tokens, more than {vocab_size} rows")
    return pieces + [UNUSED_TOKEN.format(i) for i in range(len(pieces), vocab_size)]


def save_compressed_encoder(path: str | Path, model: PretrainedModel, cm: CompressedModel) -> Path:
    """Write the compressed model ``cm`` of ``model`` (``pretrained.compress.compress``) as
    one checkpoint file at ``path`` (a ``.mc`` name, or a folder that gets ``model.mc``),
    atomically.  ->  the file written."""
    tok = model.tokenizer
    meta = {
        ENCODER_META: {
            "source": model.name,
            "tokenizer": {**tok.settings(), "vocab_size": tok.vocab_size},
            "max_length": tok.max_length,
        },
        **cm.meta,
    }
    vocab = checkpoint_vocab(tok, cm.cfg.vocab_size)
    return save_compressed(path, cm.stored, cm.cfg, vocab, meta)


def _kernels_take_all(qtensors: dict, cfg) -> bool:
    """Whether every quantized linear weight has codes the int8 kernels run."""
    layers = {n + ".w": n for n in linear_names(cfg)}
    names = [k for k in qtensors if k in layers]
    try:
        for k in names:
            int8_weights(layers[k], qtensors[k])
    except ValueError:
        return False
    return bool(names)


def load_compressed_encoder(path: str | Path) -> tuple[PretrainedModel, CompressedModel]:
    """A checkpoint written by ``save_compressed_encoder``, ready to embed text.

    ->  (PretrainedModel: its tokenizer, float32 values of every tensor and config;
         CompressedModel: what runs — int8 activations with codes the kernels take run
         packed on them, other quantized activations in the simulation, weight-only and
         pruned models as float32). A damaged file, or a checkpoint that is not a
         compressed sentence encoder, is a ValueError naming the file.
    """
    m = read_compressed(path)
    where = f"checkpoint {str(m.path)!r}"
    enc = m.meta.get(ENCODER_META)
    if not isinstance(enc, dict) or not isinstance(enc.get("tokenizer"), dict):
        raise ValueError(
            f"{where} is not a compressed sentence encoder (no {ENCODER_META!r} metadata: "
            f"write one with `pretrained compress --out`)"
        )
    settings = enc["tokenizer"]
    n = settings.get("vocab_size")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(m.vocab):
        raise ValueError(f"{where}: tokenizer vocab_size {n!r} is not in [1, {len(m.vocab)}]")
    tokenizer = WordPieceTokenizer.from_vocab(m.vocab[:n], settings, enc.get("max_length"), where)
    model = PretrainedModel(m.params, m.cfg, tokenizer, m.path, str(enc.get("source", "")))

    qtensors = {k: t for k, t in m.tensors.items() if isinstance(t, QuantizedTensor)}
    record = m.meta.get("quantization") if isinstance(m.meta.get("quantization"), dict) else {}
    activations = record.get("activations", "none")
    info = m.meta.get("compress", {})
    sim = simulation_linear(m.meta)  # refuses an unknown activation mode by name
    if activations == "none":
        cm = CompressedModel(m.params, m.cfg, DENSE, "float", qtensors, info, m.tensors, m.meta)
    elif _kernels_take_all(qtensors, m.cfg):
        packed = pack_int8_params(m.params, m.cfg, qtensors)
        linear = INT8 if activations == "dynamic" else Int8Linear(sim.act_qparams)
        cm = CompressedModel(
            packed, m.cfg, linear, "int8 kernels", qtensors, info, m.tensors, m.meta
        )
    else:
        cm = CompressedModel(m.params, m.cfg, sim, "simulation", qtensors, info, m.tensors, m.meta)
    return model, cm
