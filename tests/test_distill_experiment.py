"""minicompress/distill/experiment.py, with its table and figures (report/distill_plots.py):
the distilled-vs-scratch experiment end to end on a tiny teacher — both arms see the same
init and batches, the results hold every figure the ``distill`` command promises, nothing
is written over the user's files, and a failed run writes nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from minicompress.data import make_dataset
from minicompress.distill import experiment as ex
from minicompress.nn.checkpoint import load_checkpoint, save_checkpoint
from minicompress.nn.model import TransformerConfig, init_params
from minicompress.nn.train import TrainConfig, train
from minicompress.report.distill_plots import distill_table, plot_distill_results

TEXT = "the quick brown fox jumps over the lazy dog; the dog sleeps. " * 30
TC = TrainConfig(batch_size=4, steps=6, warmup=2, lr=3e-3, eval_every=3, eval_windows=4)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    data = make_dataset(TEXT, 16)
    cfg = TransformerConfig(
        vocab_size=data.tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16
    )
    params = init_params(cfg, np.random.default_rng(0))
    train(params, cfg, data, TrainConfig(batch_size=4, steps=20, warmup=2), progress=False)
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    save_checkpoint(path, params, cfg, data.tokenizer.chars)
    return path


def run(teacher_dir, tmp_path, **kw):
    args = dict(
        spec=ex.StudentSpec(1, 8),
        grid=ex.parse_grid([0.5], [2.0], ["kl"]),
        tc=TC,
        seeds=[0, 1],
        out=tmp_path / "student",
        text=TEXT,
        scratch_baseline=True,
        json_path=tmp_path / "r.json",
        progress=False,
        log=lambda *_: None,
    )
    args.update(kw)
    return ex.run_distill_command(teacher_dir, **args)


def test_results_hold_every_promised_figure(teacher_dir, tmp_path):
    results = run(teacher_dir, tmp_path)
    plot_distill_results(results, tmp_path / "curves.png")
    saved = json.loads((tmp_path / "r.json").read_text())
    for key in ("val_ppl", "teacher_val_ppl", "scratch_val_ppl", "params", "teacher_params"):
        assert key in saved and saved[key] == results[key]
    assert saved["teacher_params"] > saved["params"] and saved["compression"] > 1
    assert [p["seed"] for p in saved["per_seed"]] == [0, 1]
    for row, d, s in zip(
        saved["per_seed"], saved["val_ppl_per_seed"], saved["scratch_val_ppl_per_seed"], strict=True
    ):
        assert row["val_ppl"] == d and row["scratch_val_ppl"] == s
    d = saved["val_ppl_per_seed"]
    assert math.isclose(saved["val_ppl"], (d[0] + d[1]) / 2)
    assert math.isclose(saved["val_ppl_std"], abs(d[0] - d[1]) / math.sqrt(2))
    assert (tmp_path / "curves.png").stat().st_size > 0
    params, cfg, _, meta = load_checkpoint(tmp_path / "student")
    assert cfg.n_layer == 1 and cfg.n_embd == 8
    assert meta["distill"]["alpha"] == 0.5 and meta["distill"]["val_ppl"] == results["val_ppl"]


def test_distilled_and_scratch_start_alike_and_alpha_one_is_scratch(teacher_dir, tmp_path):
    """With alpha = 1 and no transfer, the distilled student *is* the scratch student (same
    init, same batches, the same cross-entropy): the two arms differ only by the loss."""
    results = run(teacher_dir, tmp_path, grid=ex.parse_grid([1.0], [2.0], ["kl"]), seeds=[3])
    assert results["val_ppl_per_seed"] == results["scratch_val_ppl_per_seed"]
    assert "per_seed" not in results and results["val_ppl_std"] == 0.0


def test_grid_runs_every_setting_with_a_shared_soft_label_cache(teacher_dir, tmp_path):
    grid = ex.parse_grid([0.0, 0.5], [1.0, 4.0], ["kl", "mse"])
    assert len(grid) == 8
    results = run(
        teacher_dir,
        tmp_path,
        grid=grid,
        seeds=[0],
        scratch_baseline=False,
        tc=TrainConfig(batch_size=2, steps=2, warmup=1, eval_every=0),
    )
    plot_distill_results(results, tmp_path / "sweep.png")
    settings = {(r["loss"], r["temperature"], r["alpha"]) for r in results["runs"]}
    assert len(settings) == 8 and "scratch_val_ppl" not in results
    assert results["val_ppl"] == min(r["val_ppl"] for r in results["runs"])
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_init_from_teacher_needs_the_teachers_width(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="init='teacher' copies the teacher's blocks"):
        run(teacher_dir, tmp_path, spec=ex.StudentSpec(1, 8, init="teacher"))
    results = run(
        teacher_dir, tmp_path, spec=ex.StudentSpec(1, 16, init="teacher"), seeds=[0]
    )  # one block of the teacher's two
    assert results["init"] == "teacher" and results["params"] < results["teacher_params"]


def test_refuses_to_overwrite_and_writes_nothing_on_failure(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="is the teacher's checkpoint"):
        run(teacher_dir, tmp_path, out=teacher_dir)
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        run(teacher_dir, tmp_path)
    assert (tmp_path / "student" / "mine.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="different vocabularies|holds the character"):
        run(teacher_dir, tmp_path, out=tmp_path / "new", text="ZZZ" * 200 + TEXT)
    assert not (tmp_path / "new").exists() and not (tmp_path / "r.json").exists()


def test_parse_grid_checks_every_value():
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        ex.parse_grid([0.5, 2.0], [1.0], ["kl"])
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        ex.parse_grid([0.5], [0.0], ["kl"])
    with pytest.raises(ValueError, match="must be one of kl, mse, mse-logits"):
        ex.parse_grid([0.5], [1.0], ["l2"])


def test_table_shows_mean_and_spread(teacher_dir, tmp_path):
    results = run(teacher_dir, tmp_path)
    table = distill_table(results)
    assert "teacher" in table and "student, scratch" in table and " ± " in table
    assert f"{results['val_ppl']:.4f}" in table
