"""minicompress/report/bench_quality_peers.py and ``bench quality-peers``: the harness on a
tiny trained model with whatever peers are installed (the missing ones skipped with one
line, as in CI), the row keys, the JSON fields, the references, and the command's refusals.
Nothing here asserts a speed or a number the harness computes for itself."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_report_bench_peers import refused

from minicompress.cli import main
from minicompress.data.corpus import CharTokenizer, builtin_text, make_dataset
from minicompress.nn.checkpoint import save_checkpoint
from minicompress.nn.model import TransformerConfig, init_params
from minicompress.nn.train import TrainConfig, evaluate, train
from minicompress.report import bench_quality_peers as bq

JSON_FIELDS = {"row", "key", "contender", "library", "version", "ours", "val_ppl", "reference",
               "reference_ppl", "delta_pct", "model_bytes", "fp32_bytes", "compression_ratio",
               "fp32_val_ppl", "finetune_steps", "calibration_windows", "eval_windows",
               "note"}  # fmt: skip
WINDOWS = 8  # validation windows measured: enough to tell a broken model from a good one


@pytest.fixture(scope="module")
def tiny():
    """A decoder trained for a few steps on a slice of the corpus (width 64: W4 group 64
    fits), its vocabulary and dataset."""
    text = builtin_text()
    tok = CharTokenizer.from_text(text)
    cfg = TransformerConfig(vocab_size=len(tok.chars), block_size=32, n_layer=1, n_head=4,
                            n_embd=64)  # fmt: skip
    data = make_dataset(text[:30_000], cfg.block_size, tokenizer=tok)
    params = init_params(cfg, np.random.default_rng(0))
    train(params, cfg, data, TrainConfig(steps=20, batch_size=8, eval_every=0), progress=False)
    return params, cfg, list(tok.chars), data


@pytest.fixture(scope="module")
def result(tiny):
    lines = []
    params, cfg, vocab, data = tiny
    r = bq.run_quality_peers(params, cfg, vocab, data, finetune_steps=2, eval_windows=WINDOWS,
                             threads=1, log=lines.append)  # fmt: skip
    return r, lines


def test_every_contender_is_measured_or_skipped_with_one_line(result):
    r, lines = result
    measured = {(row["row"], row["key"]) for row in r["rows"]}
    skipped = {(s["row"], s["key"]) for s in r["skipped"]}
    every = {(row.key, c.key) for row in bq.ROWS for c in row.contenders}
    assert measured | skipped == every and not measured & skipped
    skip_lines = [line for line in lines if line.startswith("skipped ")]
    assert len(skip_lines) == len(skipped)
    for s in r["skipped"]:
        assert f"skipped {s['row']} {s['key']}: {s['reason']}" in skip_lines
    # ours never skips; our rows are in every row of the table
    assert all(not s["key"].startswith("ours") for s in r["skipped"])
    assert {row.key for row in bq.ROWS} == {row["row"] for row in r["rows"] if row["ours"]}


def own_control(tiny, bar: str, steps: int) -> float:
    """The validation perplexity of the unpruned model after the fine-tune of ``bar``."""
    from minicompress.distill.trainer import DistillConfig, self_distill_loss
    from minicompress.report.prune_experiments import bar_config, control_loss

    params, cfg, _, data = tiny
    pc, distill = bar_config(bar, steps, eval_windows=WINDOWS)
    loss = None if distill is None else self_distill_loss(params, cfg, DistillConfig(**distill))
    return math.exp(control_loss(params, cfg, data, pc, loss=loss))


def test_rows_hold_their_fields_and_references(result, tiny):
    r, _ = result
    params, cfg, _, data = tiny
    fp32 = math.exp(evaluate(params, cfg, data.val, WINDOWS))  # measured here, independently
    assert r["fp32_val_ppl"] == pytest.approx(fp32, rel=1e-6)
    assert r["eval_windows"] == WINDOWS and r["finetune_steps"] == 2
    assert r["calibration_windows"] == 64  # the 64 training windows
    for row in bq.json_rows(r):
        assert JSON_FIELDS <= set(row), JSON_FIELDS - set(row)
        assert row["ours"] == (row["library"] == "minicompress")
        ref = fp32 if row["reference"] == "fp32" else r["control_val_ppl"]
        if (row["row"], row["key"]) == ("prune80", "ours-recipe"):  # lr 3e-3, KD: own control
            ref = own_control(tiny, bq.OURS_PRUNE["prune80"]["ours-recipe"], steps=2)
            assert ref != pytest.approx(r["control_val_ppl"], rel=1e-6)
            assert f"{ref:.4f}" in row["note"] and "own control" in row["note"]
        assert row["reference_ppl"] == pytest.approx(ref, rel=1e-6)
        assert row["delta_pct"] == pytest.approx(100 * (row["val_ppl"] / ref - 1), rel=1e-6)
        assert row["compression_ratio"] == pytest.approx(row["fp32_bytes"] / row["model_bytes"])
        assert row["model_bytes"] > 0 and math.isfinite(row["val_ppl"])
        # a 20-step model compressed gently stays near its reference
        assert abs(row["delta_pct"]) < 25, row
    json.dumps(bq.json_rows(r))  # plain JSON


def test_quantized_models_are_smaller_than_fp32_and_4_bits_than_8(result):
    r, _ = result
    rows = {(row["row"], row["key"]): row for row in r["rows"]}
    for row in rows.values():
        if row["reference"] == "fp32":
            assert row["model_bytes"] < row["fp32_bytes"], row
    assert rows[("w4", "ours-rtn")]["model_bytes"] < rows[("w8", "ours-sym")]["model_bytes"]


def test_peer_masks_prune_the_same_fraction_as_ours(result):
    """torch's global L1 50% and our global magnitude 50% remove as many weights: their CSR
    files hold as many values (within a few bytes of headers)."""
    r, _ = result
    rows = {(row["row"], row["key"]): row for row in r["rows"]}
    if ("prune50", "torch") not in rows:
        pytest.skip("torch is not installed")
    ours, torch_row = rows[("prune50", "ours")], rows[("prune50", "torch")]
    assert torch_row["model_bytes"] == pytest.approx(ours["model_bytes"], rel=0.01)
    assert rows[("prune80", "torch")]["model_bytes"] < torch_row["model_bytes"]


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_torch_global_l1_masks_are_our_global_magnitude_masks(torch, rng, sparsity):
    """PyTorch's global L1 pruning of the twin, brought back to our [K, N] layout, keeps
    exactly the weights our global magnitude masks keep (square and oblong weights)."""
    from minicompress.prune.masks import global_masks
    from minicompress.prune.pipeline import prunable_names
    from minicompress.prune.scores import magnitude_scores

    cfg = TransformerConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    params = init_params(cfg, rng)
    theirs = bq.torch_global_l1_masks(params, cfg, sparsity)
    ours = global_masks({n: magnitude_scores(params[n]) for n in prunable_names(cfg)}, sparsity)
    assert list(theirs) == list(ours)
    for name in ours:
        assert theirs[name].shape == params[name].shape
        np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)
    total = sum(m.size for m in ours.values())
    assert sum(int((~m).sum()) for m in theirs.values()) == round(sparsity * total)


def test_without_any_peer_only_ours_run(tiny, monkeypatch):
    """CI without the peers extra: every peer skipped with one line naming what is missing."""
    monkeypatch.setattr(bq, "missing_modules", lambda c: list(c.needs))
    params, cfg, vocab, data = tiny
    lines = []
    r = bq.run_quality_peers(params, cfg, vocab, data, rows=["w8", "heads"], finetune_steps=1,
                             eval_windows=2, threads=1, log=lines.append)  # fmt: skip
    assert [row["key"] for row in r["rows"]] == ["ours-sym", "ours-asym", "ours"]
    peers = [c for k in ("w8", "heads") for c in bq.BY_KEY[k].contenders if c.needs]
    assert len([x for x in lines if "not installed" in x]) == len(peers)
    text = bq.format_quality_peers(r)
    assert "W8 per channel" in text and "heads 25% local" in text and "control" in text


def test_check_rows_keeps_table_order():
    assert bq.check_rows(["heads", "w8"]) == ["w8", "heads"]
    assert bq.check_rows(None) == [row.key for row in bq.ROWS]


@pytest.mark.parametrize("keys", [["w16"], [], ["w8", "prune99"]])
def test_check_rows_refuses_unknown_keys(keys):
    with pytest.raises(ValueError, match="choose among"):
        bq.check_rows(keys)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_run_refuses_bad_finetune_steps(tiny, steps):
    params, cfg, vocab, data = tiny
    with pytest.raises(ValueError, match="finetune_steps"):
        bq.run_quality_peers(params, cfg, vocab, data, rows=["w8"], finetune_steps=steps)


# ----------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny):
    params, cfg, vocab, _ = tiny
    return save_checkpoint(tmp_path / "tiny" / "model.mc", params, cfg, vocab)


def test_command_writes_rows_and_plot(tmp_path, tiny_checkpoint, capsys):
    out, plot = tmp_path / "rows.json", tmp_path / "q.png"
    argv = ["bench", "quality-peers", "--checkpoint", str(tiny_checkpoint), "--rows", "w8,heads",
            "--quick", "--threads", "1", "--json", str(out), "--plot", str(plot)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "W8 per channel" in text and "heads 25% local" in text
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and {r["row"] for r in rows} == {"w8", "heads"}
    for r in rows:
        assert JSON_FIELDS <= set(r) and r["eval_windows"] == bq.QUICK_WINDOWS
        assert r["finetune_steps"] == bq.QUICK_STEPS
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_refuses_bad_input(tmp_path, tiny_checkpoint, capsys):
    ck = ["bench", "quality-peers", "--checkpoint", str(tiny_checkpoint)]
    line = refused(capsys, [*ck, "--rows", "w8,w16"])
    assert "--rows" in line and "w16" in line and "prune80" in line
    assert "--finetune-steps" in refused(capsys, [*ck, "--finetune-steps", "0"])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert "--json" in refused(capsys, [*ck, "--json", str(blocker / "rows.json")])
    line = refused(capsys, [*ck, "--plot", str(tmp_path)])
    assert "--plot" in line and "folder" in line
    line = refused(capsys, ["bench", "quality-peers", "--checkpoint", str(tmp_path / "none")])
    assert "--checkpoint" in line and "no checkpoint" in line
    line = refused(capsys, ["bench", "peers", "--rows", "w8"])
    assert "bench quality-peers only" in line
    line = refused(capsys, ["bench", "runtime", "--finetune-steps", "3"])
    assert "--finetune-steps" in line and "quality-peers" in line
