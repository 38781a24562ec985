"""Matplotlib figures shared by the CLI and the tutorials (Agg backend: files, no screen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minicompress.fileio import atomic_writer


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically (``fileio.atomic_writer``: an interrupted run leaves
    the old file or the new one, never half a picture) and close it. ->  the path."""
    path = Path(path)
    fig.tight_layout()
    with atomic_writer(path) as f:
        fig.savefig(f, dpi=dpi, format="png")
    _plt().close(fig)
    return path


def plot_loss_curve(history, path: str | Path, title: str = "training") -> Path:
    """Training loss (and its moving average) and validation loss against the step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps, loss = np.asarray(history.steps), np.asarray(history.loss)
    ax.plot(steps, loss, color="0.75", lw=0.8, label="train (batch)")
    if len(loss) >= 20:
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color="C0", lw=1.5, label=f"train ({k}-step mean)")
    if history.val_loss:
        ax.plot(history.val_steps, history.val_loss, "o-", color="C3", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
