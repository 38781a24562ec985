"""The size / quality trade-off: the Pareto front of compressed models and its plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minicompress.report.plots import _plt, save_figure


def pareto_front(size: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates, sorted by size.

    Point j dominates point i when size_j <= size_i and loss_j <= loss_i with at least one
    of the two strictly smaller (smaller is better for both: bytes on disk, perplexity).
    size, loss: [n] finite  ->  int [k], 1 <= k <= n (empty input: empty output). Equal
    points are all kept (neither dominates the other).
    """
    size, loss = np.asarray(size, np.float64), np.asarray(loss, np.float64)
    if size.shape != loss.shape or size.ndim != 1:
        raise ValueError(f"size and loss must be 1-D of one length; got {size.shape}, {loss.shape}")
    if not (np.isfinite(size).all() and np.isfinite(loss).all()):
        raise ValueError("size and loss must be finite")
    keep = []
    for i in range(size.size):
        no_worse = (size <= size[i]) & (loss <= loss[i])
        better = (size < size[i]) | (loss < loss[i])
        if not (no_worse & better).any():
            keep.append(i)
    return np.array(sorted(keep, key=lambda i: (size[i], loss[i])), dtype=np.int64)


def plot_size_vs_perplexity(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """File size (log scale) against validation perplexity, one labelled point per model,
    the Pareto front drawn as a step line. rows: dicts with ``method``, ``file_bytes``,
    ``val_ppl`` (and ``speedup``, shown in the label when present)."""
    plt = _plt()
    size = np.array([r["file_bytes"] for r in rows], np.float64)
    ppl = np.array([r["val_ppl"] for r in rows], np.float64)
    front = pareto_front(size, ppl)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    on_front = np.zeros(len(rows), bool)
    on_front[front] = True
    ax.scatter(size[~on_front] / 1e3, ppl[~on_front], color="0.55", zorder=3, label="dominated")
    ax.scatter(size[on_front] / 1e3, ppl[on_front], color="C3", zorder=4, label="Pareto front")
    ax.step(size[front] / 1e3, ppl[front], where="post", color="C3", lw=1.2, alpha=0.7)
    for r, x, y in zip(rows, size / 1e3, ppl, strict=True):
        label = r["method"] + (f" ({r['speedup']:.1f}x)" if r.get("speedup") else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("file size on disk (kB, log scale)")
    ax.set_ylabel("validation perplexity")
    ax.set_title(title or "size against quality (label: tokens/s speed-up over fp32)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
