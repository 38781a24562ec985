"""Figures and the table of knowledge distillation, shared by the ``distill`` command and
tutorial 09: soft labels at several temperatures, the validation curves of a distilled and
a scratch student, the sweep over alpha and T, and the results table. Each takes numbers
already computed (the results dict of ``distill.experiment.run_distill``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minicompress.report.plots import _plt, save_figure
from minicompress.report.table import format_table


def _save(fig, path) -> Path:
    return save_figure(fig, path, dpi=110)


def plot_soft_labels(
    probs_by_temperature: dict[float, np.ndarray], labels: list[str], path, title: str = ""
) -> Path:
    """Bars of one distribution (over ``labels``) at each temperature: {T: p [V]}."""
    plt = _plt()
    temps = sorted(probs_by_temperature)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(temps)
    x = np.arange(len(labels))
    for k, t in enumerate(temps):
        offset = (k - (len(temps) - 1) / 2) * width
        ax.bar(x + offset, probs_by_temperature[t], width, label=f"T={t:g}")
    ax.set_xticks(x, labels)
    ax.set_ylabel("probability")
    ax.set_title(title or "soft labels: softmax(z / T)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def setting_label(run: dict) -> str:
    """``distilled kl a=0.5 T=2`` (and ``h=`` / ``att=`` when the transfer terms are on)."""
    name = f"distilled {run['loss']} a={run['alpha']:g} T={run['temperature']:g}"
    name += f" h={run['hidden_weight']:g}" if run["hidden_weight"] else ""
    name += f" att={run['attn_weight']:g}" if run["attn_weight"] else ""
    return name


def _plot_curve(ax, curve: dict, style: str, label: str, color=None) -> None:
    """The periodic checks joined by a line; the last point, taken over every validation
    window (the periodic ones use the first ``eval_windows``), as a star of the same colour."""
    steps, ppl = curve["steps"], np.exp(curve["val_loss"])
    (line,) = ax.plot(steps[:-1], ppl[:-1], style, ms=3, label=label, color=color)
    ax.plot(steps[-1:], ppl[-1:], "*", ms=11, color=line.get_color())


def plot_distill_curves(results: dict, path, title: str = "") -> Path:
    """Validation perplexity against the step of the first seed's students: every distilled
    setting and the scratch baseline, with the teacher as a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    curves = results["curves"]
    for i, run in enumerate(results["runs"]):
        c = curves.get(f"distilled {i}")
        if c:
            _plot_curve(ax, c, "o-", setting_label(run))
    if "scratch" in curves:
        _plot_curve(ax, curves["scratch"], "s--", "scratch", color="0.4")
    ax.axhline(results["teacher_val_ppl"], color="k", lw=0.8, ls=":", label="teacher")
    ax.plot([], [], "*", ms=11, color="0.6", label="final: all validation windows")
    ax.set_xlabel("step")
    ax.set_ylabel("validation perplexity")
    ax.set_title(
        title
        or f"student of {results['params']:,} parameters "
        f"({results['compression']:.1f}x fewer than the teacher), seed {results['seeds'][0]}"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_sweep(results: dict, path, title: str = "") -> Path:
    """Validation perplexity (mean over seeds, sample std as error bars) against alpha, one
    line per (KD loss, T). The scratch student is drawn at alpha = 1, where the objective is
    the cross-entropy alone (same init and batches: it *is* that run), joined to each line
    by a dotted segment; the teacher is a horizontal line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    groups: dict[tuple, list] = {}
    for r in results["runs"]:
        groups.setdefault((r["loss"], r["temperature"]), []).append(r)
    scratch = results.get("scratch_val_ppl")
    for (loss, t), rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: r["alpha"])
        bars = ax.errorbar(
            [r["alpha"] for r in rows],
            [r["val_ppl"] for r in rows],
            yerr=[r["val_ppl_std"] for r in rows],
            marker="o",
            capsize=3,
            label=f"{loss}, T={t:g}",
        )
        if scratch is not None and rows[-1]["alpha"] < 1:
            color = bars.lines[0].get_color()
            ax.plot([rows[-1]["alpha"], 1.0], [rows[-1]["val_ppl"], scratch], ":", color=color)
    if scratch is not None:
        ax.errorbar(
            [1.0],
            [scratch],
            yerr=[results["scratch_val_ppl_std"]],
            fmt="s",
            color="k",
            capsize=3,
            label="scratch (alpha = 1: no teacher)",
        )
    ax.axhline(results["teacher_val_ppl"], color="k", lw=0.8, ls=":", label="teacher")
    ax.set_xlabel("alpha (weight of the hard-label cross-entropy)")
    ax.set_ylabel("validation perplexity")
    n = len(results["seeds"])
    ax.set_title(
        title
        or f"student of {results['params']:,} parameters, {results['train']['steps']} steps, "
        f"{n} seed{'s' if n > 1 else ''}"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_distill_results(results: dict, path) -> Path:
    """The sweep when the runs vary alpha or T, else the validation curves."""
    varies = len({(r["alpha"], r["temperature"]) for r in results["runs"]}) > 1
    return (plot_sweep if varies else plot_distill_curves)(results, path)


def _pm(mean: float, std: float, n: int) -> str:
    return f"{mean:.4f}" + (f" ± {std:.4f}" if n > 1 else "")


def distill_table(results: dict) -> str:
    """The results as a text table: the teacher, the scratch student and one row per
    distillation setting; validation perplexity as mean ± sample std over the seeds."""
    n = len(results["seeds"])
    rows = [
        {
            "model": "teacher",
            "params": results["teacher_params"],
            "val_ppl": f"{results['teacher_val_ppl']:.4f}",
        }
    ]
    if "scratch_val_ppl" in results:
        rows.append(
            {
                "model": "student, scratch",
                "params": results["params"],
                "val_ppl": _pm(results["scratch_val_ppl"], results["scratch_val_ppl_std"], n),
            }
        )
    for r in results["runs"]:
        rows.append(
            {
                "model": setting_label(r),
                "params": results["params"],
                "val_ppl": _pm(r["val_ppl"], r["val_ppl_std"], n),
            }
        )
    seeds = results["seeds"]
    return format_table(rows) + f"\n(val_ppl: mean ± sample std over seeds {seeds})"
