"""minicompress/nn/checkpoint.py and minicompress/fileio.py: exact round trip, atomic
writes that leave no temporary file, and refusal of missing or damaged checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minicompress import fileio
from minicompress.data.corpus import make_dataset
from minicompress.nn.checkpoint import CONFIG_FILE, MODEL_FILE, load_checkpoint, save_checkpoint
from minicompress.nn.model import TransformerConfig, init_params
from minicompress.nn.train import TrainConfig, train

VOCAB = list("abcdefg")
CFG = TransformerConfig(
    vocab_size=7,
    block_size=6,
    n_layer=2,
    n_head=2,
    n_embd=8,
    mlp_ratio=2,
    norm="post",
    gelu="none",
    causal=False,
)  # not the defaults: all must survive


@pytest.fixture
def ckpt(tmp_path, rng):
    params = init_params(CFG, rng)
    params["blocks.0.ln1.b"] += rng.standard_normal(8).astype(np.float32)  # not all zeros
    save_checkpoint(tmp_path / "ck", params, CFG, VOCAB, {"note": "x", "steps": 3})
    return tmp_path / "ck", params


def test_round_trip_is_exact(ckpt):
    folder, params = ckpt
    for where in (folder, folder / CONFIG_FILE, folder / MODEL_FILE, str(folder)):
        loaded, cfg, vocab, meta = load_checkpoint(where)
        assert cfg == CFG and vocab == VOCAB and meta == {"note": "x", "steps": 3}
        assert loaded.keys() == params.keys()
        for k, a in params.items():
            assert loaded[k].dtype == np.float32 and np.array_equal(loaded[k], a), k


def test_atomic_write_leaves_no_temporary_files(ckpt):
    folder, params = ckpt
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, MODEL_FILE]
    save_checkpoint(folder, params, CFG, VOCAB)  # overwrite in place
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, MODEL_FILE]


def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    fileio.atomic_write_bytes(target, b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_missing_checkpoint(tmp_path, ckpt):
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    folder, _ = ckpt
    (folder / MODEL_FILE).unlink()
    with pytest.raises(ValueError, match="model.npz.*does not exist"):
        load_checkpoint(folder)


def test_truncated_npz_is_refused(ckpt):
    folder, _ = ckpt
    data = (folder / MODEL_FILE).read_bytes()
    (folder / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.npz.*damaged"):
        load_checkpoint(folder)


def test_flipped_byte_is_refused_by_checksum(ckpt):
    folder, _ = ckpt
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01  # inside an array: the zip would still read
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.npz.*SHA-256"):
        load_checkpoint(folder)


def test_truncated_npz_without_checksum_is_refused(ckpt):
    folder, _ = ckpt
    conf = json.loads((folder / CONFIG_FILE).read_text())
    del conf["sha256"]
    (folder / CONFIG_FILE).write_text(json.dumps(conf))
    data = (folder / MODEL_FILE).read_bytes()
    (folder / MODEL_FILE).write_bytes(data[:-100])
    with pytest.raises(ValueError, match="model.npz.*damaged or not an .npz"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "config.json.*damaged or not JSON"),
        (b"\xff\xfe", "config.json.*damaged"),
        ("[1, 2]", "config.json.*JSON object"),
        ('{"vocab": []}', "config.json"),
        ('{"model": 3, "vocab": []}', "config.json"),
    ],
)
def test_corrupt_json_is_refused(ckpt, text, match):
    folder, _ = ckpt
    path = folder / CONFIG_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=match):
        load_checkpoint(folder)


@pytest.mark.parametrize("field, value", [("n_embd", 16), ("n_layer", 3), ("vocab_size", 9)])
def test_shapes_mismatching_config_are_refused(ckpt, field, value):
    folder, _ = ckpt
    conf = json.loads((folder / CONFIG_FILE).read_text())
    conf["model"][field] = value
    (folder / CONFIG_FILE).write_text(json.dumps(conf))
    with pytest.raises(
        ValueError, match="does not match its config: parameter '.*' (should|is missing)"
    ):
        load_checkpoint(folder)


def test_invalid_config_values_are_refused(ckpt):
    folder, _ = ckpt
    conf = json.loads((folder / CONFIG_FILE).read_text())
    conf["model"]["n_head"] = 3  # 8 is not divisible by 3
    (folder / CONFIG_FILE).write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="n_embd=8 must be divisible by n_head=3"):
        load_checkpoint(folder)


def test_vocab_mismatching_config_is_refused(ckpt):
    folder, _ = ckpt
    conf = json.loads((folder / CONFIG_FILE).read_text())
    conf["vocab"] = conf["vocab"][:-1]
    (folder / CONFIG_FILE).write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="vocab has 6 characters, config says 7"):
        load_checkpoint(folder)


def test_object_arrays_are_not_saved(tmp_path):
    with pytest.raises(TypeError, match="'bad'.*object"):
        fileio.save_arrays(tmp_path / "x.npz", {"bad": np.array([{}], dtype=object)})
    assert not any(tmp_path.iterdir())


def test_training_writes_a_loadable_checkpoint(tmp_path):
    data = make_dataset("abcdefgh " * 30, block_size=8)
    cfg = TransformerConfig(
        vocab_size=data.tokenizer.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8
    )
    params = init_params(cfg, np.random.default_rng(0))
    tc = TrainConfig(batch_size=2, steps=2, warmup=1, eval_every=0)
    train(params, cfg, data, tc, out_dir=tmp_path / "run", progress=False)
    loaded, cfg2, vocab, meta = load_checkpoint(tmp_path / "run")
    assert cfg2 == cfg and vocab == data.tokenizer.chars and meta["steps"] == 2
    assert all(np.array_equal(loaded[k], params[k]) for k in params)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CONFIG_FILE, MODEL_FILE]
