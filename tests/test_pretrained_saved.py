"""minicompress/pretrained/saved.py: a compressed encoder written as one checkpoint and read
back embeds text exactly as the model in memory did (every runtime: float, int8 kernels
with dynamic and static activations, the simulation, CSR), with its own tokenizer; the
file holds codes, not floats; what is not an encoder checkpoint, or is damaged, is refused
by name."""

from __future__ import annotations

import numpy as np
import pytest
from pretrained_helpers import minilm, need_extra, write_tiny_checkpoint

from minicompress.deploy.format import read_compressed, save_compressed
from minicompress.pretrained import embed_texts, load_pretrained
from minicompress.pretrained.compress import CompressConfig, compress
from minicompress.pretrained.saved import (
    checkpoint_vocab,
    load_compressed_encoder,
    save_compressed_encoder,
)
from minicompress.prune.sparse import SparseWeight
from minicompress.quant.runtime import Int8Linear
from minicompress.quant.tensor import QuantizedTensor

TEXTS = ["the cat sat on the mat", "a big red dog", "the dogs run .", "a hat"]


@pytest.fixture
def tiny(tmp_path):
    need_extra()
    return load_pretrained(write_tiny_checkpoint(tmp_path / "tiny"))


CONFIGS = {
    "W8 channel": CompressConfig(),
    "W8A8 dynamic": CompressConfig(activations="dynamic"),
    "W8A8 static": CompressConfig(activations="static"),
    "W4A8 group asym (simulation)": CompressConfig(
        bits=4, granularity="group", group_size=4, scheme="asymmetric", activations="dynamic"
    ),
    "sparse 60%": CompressConfig(bits=None, sparsity=0.6),
    "heads -50% + W8": CompressConfig(head_sparsity=0.5),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_embeds_as_the_model_in_memory(tiny, tmp_path, name):
    cc = CONFIGS[name]
    cm = compress(tiny, cc, TEXTS)
    path = save_compressed_encoder(tmp_path / "enc.mc", tiny, cm)
    model2, cm2 = load_compressed_encoder(path)
    assert cm2.runtime == cm.runtime and cm2.cfg == cm.cfg
    ours = embed_texts(tiny, TEXTS, params=cm.params, cfg=cm.cfg, linear=cm.linear)
    back = embed_texts(model2, TEXTS, params=cm2.params, cfg=cm2.cfg, linear=cm2.linear)
    np.testing.assert_array_equal(back, ours)  # the same codes, ranges and kernels
    # the file's own tokenizer gives the original ids
    a, b = tiny.tokenizer.encode(TEXTS), model2.tokenizer.encode(TEXTS)
    np.testing.assert_array_equal(a.ids, b.ids)


def test_the_file_stores_codes_and_static_ranges(tiny, tmp_path):
    cm = compress(tiny, CompressConfig(activations="static"), TEXTS)
    assert isinstance(cm.linear, Int8Linear) and cm.runtime == "int8 kernels"
    path = save_compressed_encoder(tmp_path / "enc.mc", tiny, cm)
    m = read_compressed(path)
    assert m.encodings["blocks.0.mlp.fc.w"] == "int8"
    assert isinstance(m.tensors["blocks.1.attn.qkv.w"], QuantizedTensor)
    assert m.encodings["ln_emb.g"] == "fp32"
    stored = m.meta["quantization"]["act_qparams"]
    assert set(stored) == set(cm.linear.act_qparams)
    for layer, (s, z) in cm.linear.act_qparams.items():
        assert stored[layer] == [float(s), int(z)]
    _, cm2 = load_compressed_encoder(path)
    assert cm2.linear.act_qparams.keys() == cm.linear.act_qparams.keys()


def test_pruned_weights_are_stored_as_csr(tiny, tmp_path):
    cm = compress(tiny, CompressConfig(bits=None, sparsity=0.6))
    assert isinstance(cm.stored["blocks.0.mlp.fc.w"], SparseWeight)
    path = save_compressed_encoder(tmp_path / "enc.mc", tiny, cm)
    assert read_compressed(path).encodings["blocks.0.mlp.fc.w"] == "csr"


def test_checkpoint_vocab_completes_the_table(tiny):
    vocab = checkpoint_vocab(tiny.tokenizer, tiny.cfg.vocab_size + 2)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == tiny.cfg.vocab_size + 2 and len(set(vocab)) == len(vocab)
    with pytest.raises(ValueError, match="more than"):
        checkpoint_vocab(tiny.tokenizer, 3)


def test_a_model_checkpoint_that_is_not_an_encoder_is_refused(tiny, tmp_path):
    path = save_compressed(
        tmp_path / "plain.mc", tiny.params, tiny.cfg, checkpoint_vocab(tiny.tokenizer, 20)
    )
    with pytest.raises(ValueError, match="is not a compressed sentence encoder"):
        load_compressed_encoder(path)


def test_a_damaged_file_is_refused_by_name(tiny, tmp_path):
    path = save_compressed_encoder(tmp_path / "enc.mc", tiny, compress(tiny, CompressConfig()))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="enc.mc"):
        load_compressed_encoder(path)


def test_minilm_w8a8_file_is_a_quarter_of_fp32_and_embeds_the_same(tmp_path):
    model = minilm()
    cm = compress(model, CompressConfig(activations="dynamic"))
    path = save_compressed_encoder(tmp_path / "w8a8.mc", model, cm)
    fp32_bytes = 4 * sum(a.size for a in model.params.values())
    assert path.stat().st_size < 0.3 * fp32_bytes  # int8 codes of wte and every linear
    model2, cm2 = load_compressed_encoder(path)
    texts = ["Quantization shrinks models.", "A dog runs in the park."]
    ours = embed_texts(model, texts, params=cm.params, linear=cm.linear)
    back = embed_texts(model2, texts, params=cm2.params, linear=cm2.linear)
    np.testing.assert_array_equal(back, ours)
