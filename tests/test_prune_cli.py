"""minicompress/cli/prune.py: the prune command on a tiny model — the JSON it promises, the
pruned checkpoint, and one clean line (exit 2) for every bad input, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from minicompress.cli import main
from minicompress.nn.checkpoint import load_checkpoint, save_checkpoint
from minicompress.nn.model import TransformerConfig, init_params, layer_shapes
from minicompress.prune.pipeline import prunable_names

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture
def setup(tmp_path) -> tuple[Path, Path]:
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT, encoding="utf-8")
    vocab = sorted(set(TEXT))
    cfg = TransformerConfig(
        vocab_size=len(vocab), block_size=16, n_layer=2, n_head=2, n_embd=16, mlp_ratio=2
    )
    model = tmp_path / "model"
    save_checkpoint(model, init_params(cfg, np.random.default_rng(0)), cfg, vocab)
    return model, text


def _prune(model, text, *flags, out=None):
    out = out or model.parent / "pruned"
    return main(["prune", str(model), "--text", str(text), "--out", str(out), "--no-progress",
                 "--eval-windows", "2", *flags])  # fmt: skip


def test_prune_writes_the_model_and_the_json(setup, capsys):
    model, text = setup
    js = model.parent / "m.json"
    flags = ["--method", "magnitude", "--sparsity", "0.6", "--scope", "global"]
    flags += ["--finetune-steps", "2", "--batch-size", "2", "--json", str(js)]
    code = _prune(model, text, *flags)
    assert code == 0, capsys.readouterr().err
    m = json.loads(js.read_text())
    for key in ("val_ppl", "baseline_val_ppl", "sparsity", "nonzero_params", "file_bytes",
                "baseline_file_bytes", "control_val_ppl"):  # fmt: skip
        assert key in m, key
    params, cfg, _, _ = load_checkpoint(model.parent / "pruned")
    names = prunable_names(cfg)
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    assert zeros == round(0.6 * sum(params[n].size for n in names))
    assert m["sparsity"] == pytest.approx(zeros / sum(params[n].size for n in names))
    assert "val_ppl" in capsys.readouterr().out


def test_prune_heads_shrinks_the_checkpoint(setup, capsys):
    model, text = setup
    js = model.parent / "h.json"
    assert _prune(model, text, "--method", "heads", "--sparsity", "0.5", "--json", str(js)) == 0
    m = json.loads(js.read_text())
    assert m["file_bytes"] < m["baseline_file_bytes"]
    params, cfg, _, _ = load_checkpoint(model.parent / "pruned")
    assert [s.n_head for s in layer_shapes(params, cfg)] == [1, 1]


_MAG50 = "--method magnitude --sparsity 0.5"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--method", "magnitude", "--sparsity", "1.5"], "--sparsity 1.5: sparsity must be"),
        (["--method", "magnitude", "--sparsity", "-0.1"], "--sparsity -0.1"),
        (["--method", "cut", "--sparsity", "0.5"], "invalid choice: 'cut'"),
        (["--method", "magnitude", "--nm", "2:3:4"], "2:4"),
        (["--method", "magnitude", "--nm", "3:4", "--sparsity", "0.5"], "has sparsity 0.25"),
        (
            [
                "--method",
                "heads",
                "--regularizer",
                "group-lasso",
                "--lambda",
                "-1",
                "--finetune-steps",
                "9",
            ],
            "--lambda -1.0: lambda must be >= 0",
        ),  # fmt: skip
        (["--method", "heads", "--sparsity", "1.0"], "every head of block 0"),
        (
            ["--method", "neurons", "--sparsity", "1.0", "--scope", "global"],
            "every neuron of block",
        ),  # fmt: skip
        (["--method", "magnitude"], "sparsity is required"),
        (
            ["--method", "magnitude", "--sparsity", "0.5", "--schedule", "cubic"],
            "finetune_steps >= 1",
        ),  # fmt: skip
        (
            (_MAG50 + " --schedule cubic --finetune-steps 4 --prune-end 1.5").split(),
            "--prune-end 1.5: prune_end must be a fraction in (0, 1]",
        ),
        (
            (_MAG50 + " --schedule cubic --finetune-steps 4 --prune-events 0").split(),
            "--prune-events",
        ),
        (
            (_MAG50 + " --finetune-steps 4 --prune-end 0.5").split(),
            "use schedule 'cubic' or 'iterative'",
        ),
        (
            (_MAG50 + " --finetune-steps 4 --distill-alpha 1.5").split(),
            "--distill-alpha 1.5: alpha must lie in [0, 1]",
        ),
        (
            (_MAG50 + " --finetune-steps 4 --distill-alpha 0.5 --distill-temperature 0").split(),
            "--distill-temperature 0.0: temperature must be a finite number > 0",
        ),
        (
            (_MAG50 + " --finetune-steps 4 --distill-temperature 2").split(),
            "--distill-temperature needs --distill-alpha",
        ),
        (
            ["--method", "magnitude", "--sparsity", "0.5", "--distill-alpha", "0.5"],
            "--distill-alpha distils while fine-tuning: give --finetune-steps >= 1",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(setup, capsys, flags, message):
    model, text = setup
    assert _prune(model, text, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (model.parent / "pruned").exists()  # nothing written


def test_outputs_are_refused_before_any_work(setup, capsys):
    model, text = setup
    flags = ["--method", "magnitude", "--sparsity", "0.5"]
    assert _prune(model, text, *flags, out=model) == 2  # the input itself
    assert "would replace the input" in capsys.readouterr().err
    assert _prune(model, text, *flags) == 0
    capsys.readouterr()
    assert _prune(model, text, *flags) == 2  # a checkpoint is there now
    assert "already holds a checkpoint; pass --overwrite" in capsys.readouterr().err
    assert _prune(model, text, *flags, "--overwrite") == 0
    assert _prune(model, text, *flags, "--json", str(model.parent)) == 2
    assert "is a folder" in capsys.readouterr().err
    assert _prune(model, text, *flags, "--json", str(text)) == 2
    assert "is a file this command reads" in capsys.readouterr().err
    assert main(["prune", str(model.parent / "none"), "--out", str(model.parent / "o"),
                 *flags]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err


def test_prune_stores_sparse_weights_as_csr(setup, capsys):
    from minicompress.prune.sparse import load_sparse, sparse_layers, unpack_sparse

    model, text = setup
    sizes = {}
    for store in ("dense", "csr", "csr-int8"):
        js, out = model.parent / f"{store}.json", model.parent / store
        flags = ["--method", "magnitude", "--sparsity", "0.8", "--store", store]
        assert _prune(model, text, *flags, "--json", str(js), out=out) == 0, capsys.readouterr()
        sizes[store] = json.loads(js.read_text())["file_bytes"]
    # the tiny model's embeddings and head stay dense: its block weights are a third of it
    assert sizes["csr-int8"] < sizes["csr"] < sizes["dense"], sizes
    dense_params, _, _, _ = load_checkpoint(model.parent / "dense")
    csr_params = unpack_sparse(load_sparse(model.parent / "csr")[0])
    assert all(np.array_equal(csr_params[k], dense_params[k]) for k in dense_params)
    for store in ("csr", "csr-int8"):
        runtime, cfg, _, _ = load_sparse(model.parent / store)
        assert sorted(sparse_layers(runtime)) == sorted(prunable_names(cfg))
        dense = unpack_sparse(runtime)
        zeros = sum(int((dense[n] == 0).sum()) for n in prunable_names(cfg))
        assert zeros >= sum(round(0.8 * dense[n].size) for n in prunable_names(cfg))
        with pytest.raises(ValueError, match="csr"):  # the dense loader says what it cannot read
            load_checkpoint(model.parent / store)


def test_prune_with_schedule_flags_and_self_distillation(setup, capsys):
    model, text = setup
    js = model.parent / "kd.json"
    flags = ["--method", "magnitude", "--sparsity", "0.8", "--scope", "global", "--schedule",
             "cubic", "--finetune-steps", "8", "--prune-end", "0.5", "--prune-events", "2",
             "--distill-alpha", "0.25", "--distill-temperature", "3",
             "--json", str(js)]  # fmt: skip
    assert _prune(model, text, *flags) == 0
    m = json.loads(js.read_text())
    assert [s for s, _ in m["events"]] == [2, 4]  # ramp of 4 steps, 2 mask updates
    assert m["config"]["prune_end"] == 0.5 and m["config"]["prune_events"] == 2
    assert m["loss"]["hook"] == "DistillLoss"
    assert (m["loss"]["alpha"], m["loss"]["temperature"]) == (0.25, 3.0)
    assert "control_val_ppl" in m and m["sparsity"] == pytest.approx(0.8, abs=1e-3)
