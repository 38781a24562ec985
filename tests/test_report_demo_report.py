"""minicompress/report/demo_report.py and the ``demo`` command: ``demo --quick`` runs end to
end (teacher, every method, the measurements from the saved files) and writes the table,
``results.json``, ``report.md``, the three plots, the models and a sample of each; the
helpers (targets, Markdown table, file names) on hand-made rows."""

from __future__ import annotations

import json

import pytest

from minicompress.cli import main
from minicompress.deploy.format import load_compressed
from minicompress.report.demo_report import (
    TABLE_COLUMNS,
    markdown_table,
    slug,
    study_config,
    table_rows,
    targets_met,
)

METHODS = [
    "teacher fp32",
    "fp32 fine-tuned (control)",
    "W8 weight-only",
    "W8A8 dynamic",
    "W4 QAT",
    "prune 50% magnitude",
    "prune 80% cubic",
    "heads removed",
    "distilled student",
    "combined",
]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    return out


def test_demo_quick_writes_table_json_report_plots_and_models(quick_demo, capsys):
    out = quick_demo
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [r["method"] for r in rows] == METHODS
    for r in rows:
        for key in TABLE_COLUMNS:
            assert key in r, (r["method"], key)
        assert r["val_ppl"] > 1 and r["tokens_per_s"] > 0 and r["sample"].startswith("The ")
    teacher = rows[0]
    assert teacher["compression_ratio"] == 1.0 and teacher["speedup"] == 1.0
    # each size is that of the file saved, and the 8-bit codes are ~4x smaller than fp32
    for r in rows[1:]:
        path = out / "models" / f"{slug(r['method'])}.mc"
        assert r["file_bytes"] == path.stat().st_size
        assert r["compression_ratio"] == pytest.approx(teacher["file_bytes"] / r["file_bytes"])
    by = {r["method"]: r for r in rows}
    assert 3.0 < by["W8 weight-only"]["compression_ratio"] < 4.0
    assert by["W4 QAT"]["compression_ratio"] > by["W8A8 dynamic"]["compression_ratio"]
    # the weight-only 8-bit model is the teacher to within 1% perplexity
    assert abs(by["W8 weight-only"]["delta_ppl_pct"]) < 1.0
    params, cfg, _, meta = load_compressed(out / "models" / "combined.mc")
    record = meta["quantization"]
    assert cfg.n_layer == 1 and record["activations"] == "dynamic"
    assert record["weights"]["bits"] == 4 and record["weights"]["scheme"] == "symmetric"
    for name in ("pareto.png", "sensitivity.png", "sparsity_sweep.png"):
        assert (out / name).stat().st_size > 5000, name
    report = (out / "report.md").read_text()
    assert "| method |" in report and "![Size against perplexity](pareto.png)" in report
    assert set(results["targets"]) == {"compression_ratio", "delta_ppl_pct", "speedup"}
    assert len(results["sensitivity"]) == 2 * 4 + 1  # every linear layer of the quick model


def test_targets_and_tables_on_hand_made_rows():
    row = {
        "method": "combined",
        "setting": "x",
        "file_bytes": 100,
        "compression_ratio": 10.0,
        "val_ppl": 3.9,
        "delta_ppl_pct": 10.5,
        "tokens_per_s": 3000.0,
        "speedup": 3.0,
    }
    assert targets_met([row]) == {
        "compression_ratio": True,
        "delta_ppl_pct": False,
        "speedup": True,
    }
    assert targets_met([{**row, "method": "W8"}]) == {}
    md = markdown_table(table_rows([row]))
    assert md.splitlines()[0].startswith("| method | bits/sparsity | size_kB |")
    assert "| combined | x | 0.1 | 10 | 3.9 | 10.5 | 3000 | 3 |" in md
    assert slug("prune 50% magnitude") == "prune-50-magnitude"


def test_study_configs_are_the_issue_s_methods():
    for quick in (True, False):
        names = [m.name for m in study_config(quick).methods]
        assert names == METHODS[1:]
