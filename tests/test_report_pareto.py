"""minicompress/report/pareto.py: the Pareto front on a hand-worked case and by its
definition on random points (every point off the front is dominated by one on it, no point
on it is dominated), and the plot is written."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicompress.report.pareto import pareto_front, plot_size_vs_perplexity


def test_pareto_front_hand_case():
    # (size, ppl): (3, 4) is dominated by (2, 3); (5, 1) by (4, 1); (2, 3) twice: both kept
    size = [1, 2, 3, 4, 2, 5]
    ppl = [5, 3, 4, 1, 3, 1]
    assert pareto_front(size, ppl).tolist() == [0, 1, 4, 3]


def _dominates(a, b) -> bool:
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20)), min_size=1, max_size=25))
def test_pareto_front_by_definition(points):
    size, ppl = (np.array(c, float) for c in zip(*points, strict=True))
    front = set(pareto_front(size, ppl).tolist())
    assert front
    for i, p in enumerate(points):
        dominated = any(_dominates(q, p) for q in points)
        assert (i in front) == (not dominated)
        if not dominated:
            continue
        assert any(_dominates(points[j], p) for j in front)


def test_pareto_front_refuses_bad_input():
    with pytest.raises(ValueError, match="one length"):
        pareto_front([1, 2], [1])
    with pytest.raises(ValueError, match="finite"):
        pareto_front([1, np.nan], [1, 2])


def test_plot_is_written(tmp_path):
    rows = [
        {"method": "fp32", "file_bytes": 3_000_000, "val_ppl": 3.5, "speedup": 1.0},
        {"method": "int8", "file_bytes": 800_000, "val_ppl": 3.51, "speedup": 1.9},
        {"method": "bad", "file_bytes": 900_000, "val_ppl": 4.0},
    ]
    path = plot_size_vs_perplexity(rows, tmp_path / "sub" / "p.png")
    assert path.stat().st_size > 5000
