"""minicompress/pretrained/loader.py: a Hugging Face BERT checkpoint into our parameters.

A tiny random checkpoint in HF's layout (written here) is loaded and run by our model, and
compared with BERT written in PyTorch straight from the HF tensors (an oracle that does not
share the loader's renaming); the qkv column layout is checked entry by entry; every bad
checkpoint is refused with a message naming the file and the tensor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gradcheck import assert_close
from pretrained_helpers import (
    TINY_CONFIG,
    have,
    hf_bert_torch,
    minilm,
    need_extra,
    tiny_hf_tensors,
    write_tiny_checkpoint,
)

from minicompress.nn.model import forward
from minicompress.pretrained.loader import (
    bert_config,
    hf_to_params,
    load_pretrained,
    max_seq_length,
    resolve_model_dir,
)


@pytest.fixture
def tiny(tmp_path):
    need_extra()
    return write_tiny_checkpoint(tmp_path / "tiny")


def test_config_is_a_post_ln_bert_encoder():
    cfg = bert_config(TINY_CONFIG)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (2, 2, 8, 16)
    assert (cfg.norm, cfg.gelu, cfg.causal, cfg.ln_eps) == ("post", "none", False, 1e-12)
    assert (cfg.type_vocab_size, cfg.emb_norm, cfg.head) == (2, True, False)


def test_qkv_columns_are_query_key_value_then_head_then_dim(rng):
    tensors = tiny_hf_tensors(rng)
    cfg = bert_config(TINY_CONFIG)
    params = hf_to_params(tensors, cfg, TINY_CONFIG["intermediate_size"])
    c, h, d = 8, 2, 4
    w, b = params["blocks.1.attn.qkv.w"], params["blocks.1.attn.qkv.b"]
    for part_i, part in enumerate(("query", "key", "value")):
        hf_w = tensors[f"encoder.layer.1.attention.self.{part}.weight"]  # [out, in]
        hf_b = tensors[f"encoder.layer.1.attention.self.{part}.bias"]
        for head in range(h):
            for dim in range(d):
                col = part_i * c + head * d + dim  # [3][H][D]
                np.testing.assert_array_equal(w[:, col], hf_w[head * d + dim, :])
                assert b[col] == hf_b[head * d + dim]
    np.testing.assert_array_equal(
        params["blocks.0.mlp.fc.w"], tensors["encoder.layer.0.intermediate.dense.weight"].T
    )
    np.testing.assert_array_equal(
        params["blocks.0.ln1.g"], tensors["encoder.layer.0.attention.output.LayerNorm.weight"]
    )
    np.testing.assert_array_equal(
        params["blocks.0.ln2.b"], tensors["encoder.layer.0.output.LayerNorm.bias"]
    )
    assert "pooler.dense.weight" not in params and params["wte"].dtype == np.float32


def test_tiny_checkpoint_matches_bert_in_torch(torch, tiny, rng):
    model = load_pretrained(tiny)
    tensors = tiny_hf_tensors(np.random.default_rng(0))  # what write_tiny_checkpoint wrote
    ids = rng.integers(0, TINY_CONFIG["vocab_size"], size=(2, 7))
    pad = np.zeros((2, 7), dtype=bool)
    pad[1, 4:] = True
    types = rng.integers(0, 2, size=(2, 7))
    ours, _ = forward(model.params, ids, model.cfg, pad_mask=pad, token_types=types)
    theirs = hf_bert_torch(torch, tensors, TINY_CONFIG, ids, (~pad).astype(np.int64), types)
    keep = ~pad  # padded positions' outputs are never used
    assert_close(ours[keep], theirs.numpy()[keep], rtol=1e-5, atol=1e-5, name="hidden")


@pytest.mark.skipif(not have("transformers"), reason="transformers is not installed")
def test_tiny_checkpoint_matches_transformers_bertmodel(torch, tmp_path, rng):
    need_extra()
    import transformers

    hf_cfg = transformers.BertConfig(**{k: v for k, v in TINY_CONFIG.items() if k != "model_type"})
    torch.manual_seed(3)
    bert = transformers.BertModel(hf_cfg).eval()
    bert.save_pretrained(tmp_path / "hf", safe_serialization=True)
    (tmp_path / "hf" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    model = load_pretrained(tmp_path / "hf")
    ids = rng.integers(0, TINY_CONFIG["vocab_size"], size=(2, 9))
    mask = np.ones((2, 9), dtype=np.int64)
    mask[0, 6:] = 0
    with torch.no_grad():
        theirs = bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    ours, _ = forward(model.params, ids, model.cfg, pad_mask=mask == 0)
    keep = mask == 1
    assert_close(ours[keep], theirs.last_hidden_state.numpy()[keep], rtol=1e-5, atol=1e-5)


def test_bert_prefix_and_tf_layernorm_names_are_read(tiny, rng):
    tensors = tiny_hf_tensors(rng)
    renamed = {}
    for k, a in tensors.items():
        k = "bert." + k
        if ".LayerNorm." in k:
            k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
        renamed[k] = a
    renamed["cls.predictions.bias"] = np.zeros(3, np.float32)  # a masked-LM head: skipped
    cfg = bert_config(TINY_CONFIG)
    a = hf_to_params(tensors, cfg, 12)
    b = hf_to_params(renamed, cfg, 12)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_minilm_shapes_and_sequence_length():
    model = minilm()
    cfg = model.cfg
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size) == (6, 12, 384, 30522)
    assert sum(a.size for a in model.params.values()) == 22_565_376  # 22.7M less the pooler
    assert model.params["blocks.0.mlp.fc.w"].shape == (384, 1536)
    # sentence_bert_config.json says 256 though the position table holds 512
    assert max_seq_length(model.model_dir, cfg) == 256 == model.tokenizer.max_length


# ----------------------------------------------------------------------------------------
# bad checkpoints
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "vocab.txt"])
def test_a_missing_file_is_named(tiny, missing):
    (tiny / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        load_pretrained(tiny)


def test_a_pickled_checkpoint_alone_is_refused(tiny):
    (tiny / "model.safetensors").rename(tiny / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin is a pickled"):
        load_pretrained(tiny)


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_model_dir(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "roberta"}, "model_type is 'roberta'"),
        ({"hidden_act": "relu"}, "hidden_act is 'relu'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"is_decoder": True}, "decoder"),
        ({"num_attention_heads": 3}, "divisible"),
        ({"hidden_size": None}, "n_embd"),
        ({"intermediate_size": 0}, "intermediate_size"),
    ],
)
def test_another_architecture_is_refused_naming_config(tiny, change, message):
    (tiny / "config.json").write_text(json.dumps({**TINY_CONFIG, **change}))
    with pytest.raises(ValueError, match="config.json") as e:
        load_pretrained(tiny)
    assert message in str(e.value)


def test_a_missing_config_key_is_named():
    cfg = {k: v for k, v in TINY_CONFIG.items() if k != "intermediate_size"}
    with pytest.raises(ValueError, match="intermediate_size"):
        bert_config(cfg)


def test_a_weight_of_unexpected_shape_is_named(tmp_path, rng):
    need_extra()
    tensors = tiny_hf_tensors(rng)
    name = "encoder.layer.1.attention.self.key.weight"
    tensors[name] = np.zeros((8, 5), np.float32)
    folder = write_tiny_checkpoint(tmp_path / "bad", tensors)
    with pytest.raises(ValueError, match="model.safetensors") as e:
        load_pretrained(folder)
    assert name in str(e.value) and "(8, 5)" in str(e.value) and "(8, 8)" in str(e.value)


def test_a_missing_and_an_unknown_tensor_are_named(rng):
    cfg = bert_config(TINY_CONFIG)
    tensors = tiny_hf_tensors(rng)
    del tensors["encoder.layer.0.output.dense.bias"]
    with pytest.raises(ValueError, match="encoder.layer.0.output.dense.bias"):
        hf_to_params(tensors, cfg, 12)
    tensors = tiny_hf_tensors(rng)
    tensors["encoder.layer.2.output.dense.bias"] = np.zeros(8, np.float32)  # a third layer
    with pytest.raises(ValueError, match="unexpected tensor 'encoder.layer.2"):
        hf_to_params(tensors, cfg, 12)


def test_integer_weights_are_refused(rng):
    tensors = tiny_hf_tensors(rng)
    tensors["embeddings.LayerNorm.bias"] = np.zeros(8, np.int32)
    with pytest.raises(ValueError, match="embeddings.LayerNorm.bias.*int32"):
        hf_to_params(tensors, bert_config(TINY_CONFIG), 12)


def test_a_damaged_weights_file_is_refused(tiny):
    data = (tiny / "model.safetensors").read_bytes()
    (tiny / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors.*not a readable safetensors"):
        load_pretrained(tiny)


def test_a_damaged_config_is_refused(tiny):
    (tiny / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json.*not a readable JSON"):
        load_pretrained(tiny)
