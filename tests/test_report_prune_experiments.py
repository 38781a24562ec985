"""minicompress/report/prune_experiments.py: the quality bars — each bar's configuration,
its loss, and one control per fine-tune (steps, learning rate, loss), on a tiny model."""

from __future__ import annotations

import math

import pytest
from quant_models import tiny_trained

from minicompress.report import prune_experiments as pe


@pytest.fixture(scope="module")
def tiny():
    return tiny_trained()  # the quantization tests' tiny model, trained once per session


def test_every_bar_builds_its_config():
    for name, (kw, bar) in pe.BARS.items():
        pc, distill = pe.bar_config(name, 30)
        assert pc.finetune_steps == 30 and 0 < bar <= 0.1
        assert pc.method == kw["method"] and pc.sparsity == kw["sparsity"]
        assert distill == kw.get("distill")
    with pytest.raises(ValueError, match="bar must be one of"):
        pe.bar_config("magnitude 99%", 30)


def test_the_80_percent_bar_of_issue_18_is_five_percent():
    rows = {n: b for n, (kw, b) in pe.BARS.items() if kw["sparsity"] == 0.8}
    assert 0.05 in rows.values() and 0.10 in rows.values()  # the new recipe and the old row


def test_bars_compare_each_row_with_the_control_of_its_own_fine_tune(tiny, monkeypatch):
    params, cfg, data = tiny
    monkeypatch.setattr(pe, "BARS", {
        "a": (dict(method="magnitude", sparsity=0.5, scope="global"), 0.01),
        "b": (dict(method="magnitude", sparsity=0.8, scope="global"), 0.10),
        "c": (dict(method="magnitude", sparsity=0.8, scope="global", lr=3e-3), 0.05),
        "d": (dict(method="magnitude", sparsity=0.8, distill=dict(alpha=0.5)), 0.05),
    })  # fmt: skip
    rows = {r["name"]: r for r in pe.bars(params, cfg, data, finetune_steps=3)}
    assert rows["a"]["control_val_ppl"] == rows["b"]["control_val_ppl"]  # same fine-tune
    assert rows["c"]["control_val_ppl"] != rows["a"]["control_val_ppl"]  # lr 3e-3
    assert rows["d"]["control_val_ppl"] != rows["a"]["control_val_ppl"]  # KD from itself
    assert rows["d"]["distill"] == {"alpha": 0.5} and rows["c"]["lr"] == 3e-3
    for r in rows.values():
        assert math.isclose(r["delta_vs_control"], r["val_ppl"] / r["control_val_ppl"] - 1)
        assert r["passed"] == (r["delta_vs_control"] <= r["bar"])
    rows_c = pe.bars(params, cfg, data, finetune_steps=3, which=["c"])
    assert [r["name"] for r in rows_c] == ["c"]
    assert rows_c[0]["control_val_ppl"] == rows["c"]["control_val_ppl"]  # seeded
