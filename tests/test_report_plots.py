"""minicompress/report/plots.py: figures are written atomically — a PNG appears whole, and a
figure that fails to render leaves the file that was there before untouched."""

from __future__ import annotations

import pytest

from minicompress.report.plots import _plt, save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_save_figure_writes_a_png_and_leaves_no_temporary_file(tmp_path):
    fig, ax = _plt().subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "sub" / "a.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]


def test_a_figure_that_fails_to_render_keeps_the_old_file(tmp_path):
    old = tmp_path / "a.png"
    old.write_bytes(b"the picture the user had")
    fig, ax = _plt().subplots()
    ax.text(0.5, 0.5, r"$\undefinedcommand$")  # mathtext fails when the figure is drawn
    with pytest.raises(ValueError):
        save_figure(fig, old)
    assert old.read_bytes() == b"the picture the user had"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
