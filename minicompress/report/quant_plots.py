"""Figures of quantization (PNG, Agg backend): a weight histogram under its quantization
grid, clipping error against rounding error as the clipping range varies, the per-layer
sensitivity bar chart, and calibrated activation ranges over an activation histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minicompress.quant.tensor import QuantSpec, error_split
from minicompress.report.plots import _plt, save_figure


def _save(fig, path) -> Path:
    return save_figure(fig, path, dpi=110)


def plot_weight_grid(values: np.ndarray, grids: dict, path, title: str = "") -> Path:
    """Histogram of ``values`` (log count) with each grid of ``grids`` ({label: sorted grid
    points}) drawn as ticks beneath it, one row per grid."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    v = np.asarray(values, np.float64).reshape(-1)
    ax.hist(v, bins=200, color="0.55", log=True)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log)")
    top = ax.get_ylim()[1]
    for i, (label, pts) in enumerate(grids.items()):
        pts = np.asarray(pts)
        y = top * 10.0 ** (-0.35 * (i + 1))
        ax.plot(
            pts,
            np.full(pts.shape, y),
            "|",
            color=f"C{i}",
            ms=12,
            mew=1.2,
            label=f"{label} ({len(pts)} levels)",
        )
    ax.set_ylim(top=top * 1.2)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title)
    return _save(fig, path)


def plot_clipping_rounding(x: np.ndarray, spec: QuantSpec, path, n: int = 60, title="") -> Path:
    """Clipping error, rounding error and their sum (mean squared, log scale) as the range
    shrinks from the min-max range: [a lo, a hi] for a from 1 down to 0.05."""
    plt = _plt()
    lo, hi = float(x.min()), float(x.max())
    alphas = np.linspace(1.0, 0.05, n)
    split = np.array([error_split(x, spec, np.float32(a * lo), np.float32(a * hi)) for a in alphas])
    clip, rnd = split[:, 0] / x.size, split[:, 1] / x.size
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(alphas, clip, label="clipping error")
    ax.plot(alphas, rnd, label="rounding error")
    ax.plot(alphas, clip + rnd, "k--", label="total")
    best = alphas[np.argmin(clip + rnd)]
    ax.axvline(best, color="0.5", lw=0.8)
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("clipping range / min-max range")
    ax.set_ylabel("mean squared error")
    ax.set_title(title or f"{spec.bits}-bit {spec.scheme}: best range {best:.2f} x min-max")
    ax.legend()
    return _save(fig, path)


def plot_sensitivity(rows: list[dict], path, title: str = "per-layer sensitivity") -> Path:
    """Bar chart of ``delta_pct`` per ``layer`` (rows of ``ptq.layer_sensitivity``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["layer"].replace("blocks.", "b") for r in rows]
    ax.bar(range(len(rows)), [r["delta_pct"] for r in rows], color="C3")
    ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("validation perplexity change (%)")
    ax.set_title(title)
    ax.axhline(0, color="0.3", lw=0.8)
    return _save(fig, path)


def plot_activation_ranges(values: np.ndarray, ranges: dict, path, title: str = "") -> Path:
    """Histogram of activation ``values`` (log count) with each calibrator's range
    ({label: (lo, hi)}) drawn as a bracket above it."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.hist(np.asarray(values).reshape(-1), bins=300, color="0.6", log=True)
    top = ax.get_ylim()[1]
    for i, (label, (lo, hi)) in enumerate(ranges.items()):
        y = top * 10.0 ** (-0.3 * (i + 1))
        ax.plot([lo, hi], [y, y], "-", color=f"C{i}", lw=2, label=f"{label} [{lo:.2f}, {hi:.2f}]")
    ax.set_ylim(top=top * 1.2)
    ax.set_xlabel("activation value")
    ax.set_ylabel("count (log)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)
