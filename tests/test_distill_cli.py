"""minicompress/cli/distill.py: the ``distill`` command on a tiny teacher — the JSON it
promises, the table it prints, the grid of settings; every bad input one clean line (exit 2);
outputs checked before any training; the student-larger-than-teacher warning on one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import refused

from minicompress.cli import main
from minicompress.data import make_dataset
from minicompress.nn.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from minicompress.nn.model import TransformerConfig, init_params
from minicompress.nn.train import TrainConfig, train

TEXT = "the quick brown fox jumps over the lazy dog; the dog sleeps. " * 30
FAST = ["--steps", "3", "--batch-size", "2", "--warmup", "1", "--eval-every", "0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("text") / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    data = make_dataset(TEXT, 16)
    cfg = TransformerConfig(
        vocab_size=data.tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16
    )
    params = init_params(cfg, np.random.default_rng(0))
    train(params, cfg, data, TrainConfig(batch_size=4, steps=10, warmup=2), progress=False)
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    save_checkpoint(path, params, cfg, data.tokenizer.chars)
    return path


def distill(teacher, corpus, *extra) -> list[str]:
    base = ["distill", str(teacher), "--student-layers", "1", "--student-width", "8"]
    return [*base, "--text", str(corpus), *FAST, "--no-progress", *extra]


def test_distill_writes_the_student_and_the_promised_json(teacher, corpus, tmp_path, capsys):
    out, js, png = tmp_path / "student", tmp_path / "r.json", tmp_path / "c.png"
    argv = distill(teacher, corpus, "--scratch-baseline", "--seeds", "2", "--alpha", "0.3")
    assert main([*argv, "--out", str(out), "--json", str(js), "--plot", str(png)]) == 0
    r = json.loads(js.read_text())
    for key in ("val_ppl", "teacher_val_ppl", "scratch_val_ppl", "params", "teacher_params"):
        assert isinstance(r[key], (int, float)) and r[key] > 0, key
    assert r["seeds"] == [0, 1] and [p["seed"] for p in r["per_seed"]] == [0, 1]
    assert r["alpha"] == 0.3 and r["train"]["steps"] == 3
    _, cfg, _, meta = load_checkpoint(out)
    assert (cfg.n_layer, cfg.n_embd) == (1, 8) and meta["distill"]["alpha"] == 0.3
    printed = capsys.readouterr().out
    assert "student, scratch" in printed and "distilled kl a=0.3 T=2" in printed
    assert png.stat().st_size > 0


def test_a_grid_of_settings_and_the_seed_flag(teacher, corpus, tmp_path):
    js = tmp_path / "r.json"
    argv = distill(teacher, corpus, "--alpha", "0,1", "--temperature", "1,4", "--loss", "mse")
    assert main([*argv, "--seed", "5", "--out", str(tmp_path / "s.mc"), "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert sorted((x["alpha"], x["temperature"]) for x in r["runs"]) == [
        (0, 1),
        (0, 4),
        (1, 1),
        (1, 4),
    ]
    assert r["seeds"] == [5] and "per_seed" not in r and "scratch_val_ppl" not in r
    # alpha = 1 is the cross-entropy whatever T: the two runs are the same student
    ones = [x["val_ppl"] for x in r["runs"] if x["alpha"] == 1]
    assert ones[0] == ones[1]
    assert (tmp_path / "s.mc").is_file()


def test_student_larger_than_the_teacher_warns_on_one_line(teacher, corpus, tmp_path, capsys):
    argv = distill(teacher, corpus)
    argv[argv.index("--student-width") + 1] = "32"
    argv[argv.index("--student-layers") + 1] = "3"
    assert main([*argv, "--out", str(tmp_path / "big")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minicompress distill: warning: the student")
    assert "is larger than the teacher" in err[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--alpha", "1.5"], r"--alpha: .*alpha must lie in \[0, 1\]; got 1.5"),
        (["--alpha", "0.5,x"], "--alpha: 'x' is not a number"),
        (["--alpha", "0.5,0.5"], "--alpha: '0.5,0.5' lists a value twice"),
        (["--temperature", "0"], "--temperature: temperature must be a finite number > 0"),
        (["--temperature=-1,2"], "--temperature: temperature must be"),
        (["--loss", "kl,cosine"], "--loss: 'cosine' is not one of kl, mse, mse-logits"),
        (["--hidden-weight", "-1"], "--hidden-weight: -1.0 is too small"),
        (["--seeds", "0"], "--seeds: 0 is too small"),
        (["--init", "half"], "--init: invalid choice"),
        (["--steps", "0"], "--steps 0: steps must be"),
        (["--student-heads", "3"], "n_embd=8 must be divisible by n_head=3"),
        (["--init", "teacher"], "init='teacher' copies the teacher's blocks"),
    ],
)
def test_bad_flags_are_one_line(teacher, corpus, tmp_path, capsys, extra, message):
    line = refused(capsys, [*distill(teacher, corpus, *extra), "--out", str(tmp_path / "s")])
    assert line.startswith("minicompress distill: error:"), line
    assert re.search(message, line), line
    assert not (tmp_path / "s").exists()


def test_no_minutes_flag(teacher, corpus, tmp_path, capsys):
    """A clock would give the scratch student (cheaper steps) more steps than the distilled."""
    line = refused(capsys, [*distill(teacher, corpus, "--minutes", "1"), "--out", "s"])
    assert "unrecognized arguments: --minutes" in line


def test_outputs_refused_before_training(teacher, corpus, tmp_path, capsys):
    argv = distill(teacher, corpus)
    line = refused(capsys, [*argv, "--out", str(teacher)])
    assert "teacher" in line
    (tmp_path / "done").mkdir()
    save_checkpoint(tmp_path / "done", *_tiny())
    line = refused(capsys, [*argv, "--out", str(tmp_path / "done")])
    assert "already holds a checkpoint; pass --overwrite" in line
    line = refused(capsys, [*argv, "--out", str(tmp_path / "s"), "--json", str(tmp_path)])
    assert "--json" in line and "is a folder" in line
    line = refused(capsys, [*argv, "--out", str(tmp_path / "s"), "--json", str(corpus)])
    assert "is a file this command reads" in line
    assert not (tmp_path / "s").exists()


def test_another_vocabulary_is_refused(teacher, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("ZYX " * 400, encoding="utf-8")
    line = refused(capsys, [*distill(teacher, other), "--out", str(tmp_path / "s")])
    assert "holds the character" in line and "not in the vocabulary" in line


def test_missing_teacher(corpus, tmp_path, capsys):
    line = refused(capsys, [*distill(tmp_path / "nothing", corpus), "--out", str(tmp_path / "s")])
    assert "nothing" in line and CHECKPOINT_FILE in line or "does not exist" in line


def _tiny():
    cfg = TransformerConfig(vocab_size=3, block_size=4, n_layer=1, n_head=1, n_embd=4)
    return init_params(cfg, np.random.default_rng(0)), cfg, ["a", "b", "c"]
