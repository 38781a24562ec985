"""Figures of the pruning experiments (``prune_experiments.py``, ``bench_prune.py``) and of
tutorials 10 and 11. Each function takes the rows an experiment returns and writes a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minicompress.report.plots import _plt, save_figure


def _save(fig, path) -> Path:
    return save_figure(fig, path, dpi=120)


def plot_sweep(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Validation perplexity against sparsity, one colour per method; dashed one-shot, solid
    fine-tuned (rows of ``prune_experiments.sweep``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5.2))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, method in enumerate(methods):
        for tuned, style in ((False, "--"), (True, "-")):
            pts = sorted(
                (r["sparsity"], r["val_ppl"])
                for r in rows
                if r["method"] == method and (r["finetune_steps"] > 0) == tuned
            )
            if pts:
                s, p = zip(*pts, strict=True)
                steps = max(r["finetune_steps"] for r in rows)
                label = f"{method}, " + (f"fine-tuned {steps} steps" if tuned else "one-shot")
                ax.plot(s, p, style, marker="o", ms=3, color=f"C{i}", label=label)
    refs = {r["reference_ppl"] for r in rows}
    for ref in sorted(refs):
        ax.axhline(ref, color="0.6", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity of the block weights")
    ax.set_ylabel("validation perplexity (log)")
    ax.set_title(title or "perplexity against sparsity (dotted: unpruned, before/after fine-tune)",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_head_importance(heads: dict, path: str | Path) -> Path:
    """Heat maps [layer, head]: the L2 score of each head's weights, and the measured
    increase of the validation loss when that head alone is removed."""
    from matplotlib.colors import SymLogNorm

    plt = _plt()
    l2, delta = np.asarray(heads["l2"]), np.asarray(heads["delta_loss"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, data, title, norm in (
        (axes[0], l2, "L2 norm of the head's weights", None),
        (axes[1], delta, "val loss increase, head removed (symlog)", SymLogNorm(1e-3)),
    ):
        im = ax.imshow(data, cmap="viridis", aspect="auto", norm=norm)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(data.shape[1]))
        ax.set_yticks(range(data.shape[0]))
        ax.set_title(title, fontsize=9)
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax)
    fig.suptitle(
        f"head importance: Pearson {heads['corr_l2_delta']:.2f} overall, Spearman "
        f"{heads['spearman_within_layer']:.2f} within a layer (mean)",
        fontsize=10,
    )
    return _save(fig, path)


def plot_zhu_gupta(rows: list[dict], path: str | Path) -> Path:
    """Validation perplexity against non-zero parameters: large-sparse against small-dense."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker, color in (("sparse", "o", "C3"), ("dense", "s", "C0")):
        pts = sorted(
            (r["nonzero_params"], r["val_ppl"], r["model"])
            for r in rows
            if r["model"].startswith(kind)
        )
        if pts:
            x, y, names = zip(*pts, strict=True)
            ax.plot(x, y, marker=marker, color=color, label=f"{kind} models")
            for xi, yi, name in pts:
                ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("non-zero parameters")
    ax.set_ylabel("validation perplexity")
    ax.set_title("large-sparse vs small-dense (Zhu & Gupta 2017)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_break_even(rows: list[dict], path: str | Path) -> Path:
    """Time of each layer shape on CSR against sparsity, with the dense time as a line
    (rows of ``bench_prune.break_even``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    shapes = list(dict.fromkeys((r["K"], r["N"]) for r in rows))
    for i, (k, n) in enumerate(shapes):
        rs = sorted((r for r in rows if (r["K"], r["N"]) == (k, n)), key=lambda r: r["sparsity"])
        ax.plot([r["sparsity"] for r in rs], [r["csr_ms"] for r in rs], "o-", color=f"C{i}",
                label=f"CSR {k}x{n}")  # fmt: skip
        ax.axhline(rs[0]["dense_ms"], color=f"C{i}", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("ms per call (best round)")
    ax.set_title(f"CSR vs dense (dashed), M = {rows[0]['M']} rows")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
