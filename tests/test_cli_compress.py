"""minicompress/cli/compress.py: ``compress MODEL --recipe FILE --out PATH [--json PATH]``
through the command line's own entry (``cli.main``): a recipe writes the checkpoint and its
metrics; a bad recipe, an output that exists or cannot be written and a file of another
project each give one line and exit status 2, and nothing on disk is written or replaced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import refused

from minicompress.cli import main
from minicompress.data.corpus import CharTokenizer
from minicompress.deploy.format import read_compressed
from minicompress.nn.checkpoint import save_checkpoint
from minicompress.nn.model import TransformerConfig, init_params

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture
def model(tmp_path) -> tuple[Path, Path]:
    """(a tiny float checkpoint, the text its vocabulary comes from)."""
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT, encoding="utf-8")
    tok = CharTokenizer.from_text(TEXT)
    cfg = TransformerConfig(tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
    params = init_params(cfg, np.random.default_rng(0))
    path = save_checkpoint(tmp_path / "teacher", params, cfg, tok.chars)
    return Path(path), text


def recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_compress_writes_checkpoint_and_json(model, tmp_path):
    path, text = model
    r = recipe(tmp_path, "[prune]\nmethod = 'neurons'\nsparsity = 0.5\n[quantize]\nbits = 8\n")
    out, js = tmp_path / "small", tmp_path / "small.json"
    argv = ["compress", str(path), "--recipe", str(r), "--out", str(out), "--json", str(js)]
    assert main([*argv, "--text", str(text), "--no-progress"]) == 0
    m = json.loads(js.read_text())
    stored = read_compressed(out / "model.mc")
    assert m["file_bytes"] == (out / "model.mc").stat().st_size == stored.file_bytes
    assert [s["stage"] for s in m["stages"]] == ["prune", "quantize"]
    # half of each block's MLP neurons removed: 2 * 16 = 32 of 64 remain
    assert stored.params["blocks.0.mlp.fc.w"].shape == (16, 32)
    assert stored.encodings["blocks.0.mlp.fc.w"] == "int8"


@pytest.mark.parametrize(
    "body, message",
    [
        ("[quantise]\nbits = 8\n", "unknown stage 'quantise'"),
        ("[prune]\nmethod = 'magnitude'\nsparsity = 1.5\n", "sparsity"),
        ("[quantize]\nbits = 8\n[prune]\nsparsity = 0.5\n", "in the order"),
        ("[finetune\nsteps = 3\n", "not valid TOML"),
    ],
)
def test_bad_recipes_give_one_line_and_write_nothing(model, tmp_path, capsys, body, message):
    path, text = model
    r = recipe(tmp_path, body)
    out, js = tmp_path / "out", tmp_path / "m.json"
    line = refused(
        capsys, ["compress", str(path), "--recipe", str(r), "--out", str(out), "--json", str(js)]
    )
    assert line.startswith("minicompress compress: error:") and message in line, line
    assert not out.exists() and not js.exists()


def test_outputs_that_exist_or_cannot_be_written_are_refused(model, tmp_path, capsys):
    path, text = model
    r = recipe(tmp_path, "[quantize]\nbits = 8\n")
    taken = tmp_path / "taken.mc"
    taken.write_bytes(b"the user's file")
    taken_json = tmp_path / "taken.json"
    taken_json.write_text("{}")
    base = ["compress", str(path), "--recipe", str(r), "--text", str(text)]
    line = refused(capsys, [*base, "--out", str(taken)])
    assert "--out" in line and "already exists" in line, line
    line = refused(capsys, [*base, "--out", str(tmp_path / "new"), "--json", str(taken_json)])
    assert "--json" in line and "already exists" in line, line
    line = refused(capsys, [*base, "--out", "/proc/minicompress-test/model.mc"])
    assert "--out" in line and "cannot be written" in line, line
    assert taken.read_bytes() == b"the user's file" and taken_json.read_text() == "{}"
    assert not (tmp_path / "new").exists()


def test_a_file_of_another_project_is_refused(tmp_path, capsys):
    foreign = tmp_path / "model.mc"
    foreign.write_bytes(b"PK\x03\x04 a zip file, not a minicompress checkpoint")
    r = recipe(tmp_path, "[quantize]\nbits = 8\n")
    out = tmp_path / "out.mc"
    line = refused(capsys, ["compress", str(foreign), "--recipe", str(r), "--out", str(out)])
    assert "model.mc" in line, line
    assert not out.exists()
