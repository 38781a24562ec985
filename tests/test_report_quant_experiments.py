"""minicompress/report/quant_experiments.py on a tiny model: the rows asked for, their
sizes as on disk, the figures, and --resume keeping what was measured."""

from __future__ import annotations

import json

import numpy as np
from quant_models import tiny_trained

from minicompress.nn.checkpoint import save_checkpoint
from minicompress.report import quant_experiments as qe


def test_rows_sizes_figures_and_resume(tmp_path, monkeypatch):
    params, cfg, data = tiny_trained()
    save_checkpoint(tmp_path / "teacher", params, cfg, data.tokenizer.chars)
    # the experiments read the built-in corpus; the tiny model was trained on its start
    monkeypatch.setattr(
        qe, "builtin_text", lambda: data.tokenizer.decode(np.concatenate([data.train, data.val]))
    )
    out = tmp_path / "exp"
    only = ["W8 per channel, asymmetric", "W4 group 32, GPTQ"]
    r = qe.run_experiments(tmp_path / "teacher", out, qat_steps=0, sensitivity=False, only=only)
    assert [row["method"] for row in r["rows"]] == only
    for row in r["rows"]:
        path = out / "models" / qe._slug(row["method"]) / "model.mc"
        assert row["file_bytes"] == path.stat().st_size
        assert row["compression_ratio"] == r["baseline_file_bytes"] / row["file_bytes"]
        assert np.isclose(row["change_pct"], 100 * (row["val_ppl"] / r["baseline_val_ppl"] - 1))
    assert r["rows"][1]["gptq"] is True and r["rows"][1]["calib_batches"] == qe.CALIB_BATCHES
    for name in ("weight_grids.png", "clipping_rounding.png", "observer_ranges.png", "table.md"):
        assert (out / name).stat().st_size > 0
    # resume: the rows measured are kept as they are, the new one is added
    first = json.loads((out / "results.json").read_text())["rows"]
    r2 = qe.run_experiments(
        tmp_path / "teacher", out, 0, False, resume=True, only=[*only, "W8 per tensor"]
    )
    assert r2["rows"][:2] == first and r2["rows"][2]["method"] == "W8 per tensor"
