"""The quantization experiments on a trained model: the quality table, the sizes on disk,
per-layer sensitivity and the figures of the README.

    python -m minicompress.report.quant_experiments MODEL --out DIR [--qat-steps 300]

Every row quantizes the same float model and measures the validation perplexity over all
validation windows, and the size of the compressed checkpoint file it writes
(``DIR/models/<row>/model.mc``). Weight-only rows quantize the linear weights at the row's
granularity and the embeddings at 8 bits per row (AWQ and GPTQ rows use 64 training
windows); W8A8 rows add activations (dynamic per token, or static calibrated on 64
training windows by each observer, with or without SmoothQuant); the QAT row fine-tunes
through fake quantization and is compared with the same fine-tune of the float model.
Writes ``DIR/results.json`` (rows as they finish) and ``DIR/table.md``; ``--only`` runs
the rows whose label contains a text, ``--resume`` keeps the rows already measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from minicompress.data import CharTokenizer, builtin_text, make_dataset
from minicompress.deploy.format import file_bytes, save_compressed
from minicompress.fileio import atomic_write_bytes, load_json, save_json
from minicompress.nn.checkpoint import checkpoint_file, load_checkpoint
from minicompress.nn.model import linear_names
from minicompress.quant.calibrate import calibration_batches, record_inputs
from minicompress.quant.observers import OBSERVERS, make_observer
from minicompress.quant.pipeline import QuantizeConfig, finetune_config, quantize_model
from minicompress.quant.ptq import layer_sensitivity, perplexity
from minicompress.quant.qat import finetune
from minicompress.quant.tensor import QuantSpec, grid_points, model_range, scale_zero_point
from minicompress.report import quant_plots
from minicompress.report.table import format_table

CALIB_BATCHES = 4  # calibration (static, AWQ, SmoothQuant): 4 x 16 = 64 training windows

SMOOTH_ALPHAS = (0.5, 0.75)  # SmoothQuant migration strengths tried (the paper's 0.5 first)


def rows_to_run(qat_steps: int) -> list[tuple[str, QuantizeConfig]]:
    """(label, QuantizeConfig) of every row of the table."""
    asym, sym = "asymmetric", "symmetric"
    calib = {"calib_batches": CALIB_BATCHES}
    rows = [
        ("W8 one range for the model (course)", QuantizeConfig(8, "model", scheme=asym)),
        ("W8 per tensor", QuantizeConfig(8, "tensor", scheme=sym)),
        ("W8 per channel", QuantizeConfig(8, "channel", scheme=sym)),
        ("W8 per channel, asymmetric", QuantizeConfig(8, "channel", scheme=asym)),
        ("W4 one range for the model", QuantizeConfig(4, "model", scheme=asym)),
        ("W4 per tensor", QuantizeConfig(4, "tensor", scheme=asym)),
        ("W4 per channel", QuantizeConfig(4, "channel", scheme=asym)),
        ("W4 per channel, log grid", QuantizeConfig(4, "channel", scheme="log")),
        ("W4 group 32, log grid", QuantizeConfig(4, "group", 32, scheme="log")),
        ("W4 group 64", QuantizeConfig(4, "group", 64, scheme=asym)),
        ("W4 group 32", QuantizeConfig(4, "group", 32, scheme=asym)),
        ("W4 per channel, MSE clipping", QuantizeConfig(4, "channel", scheme=asym, clip="mse")),
        ("W4 group 64, MSE clipping", QuantizeConfig(4, "group", 64, scheme=asym, clip="mse")),
        ("W4 group 32, MSE clipping", QuantizeConfig(4, "group", 32, scheme=asym, clip="mse")),
        ("W4 group 64, AWQ", QuantizeConfig(4, "group", 64, scheme=asym, awq=True, **calib)),
        ("W4 group 32, AWQ", QuantizeConfig(4, "group", 32, scheme=asym, awq=True, **calib)),
        ("W4 group 64, GPTQ", QuantizeConfig(4, "group", 64, scheme=asym, gptq=True, **calib)),
        ("W4 group 32, GPTQ", QuantizeConfig(4, "group", 32, scheme=asym, gptq=True, **calib)),
        ("W4 per channel, GPTQ", QuantizeConfig(4, "channel", scheme=asym, gptq=True, **calib)),
        ("W3 group 32, GPTQ", QuantizeConfig(3, "group", 32, scheme=asym, gptq=True, **calib)),
        ("W3 group 32", QuantizeConfig(3, "group", 32, scheme=asym)),
        ("W3 group 32, MSE clipping", QuantizeConfig(3, "group", 32, scheme=asym, clip="mse")),
        ("W2 group 32", QuantizeConfig(2, "group", 32, scheme=asym)),
        ("W8A8 dynamic (per token)", QuantizeConfig(8, activations="dynamic")),
    ]
    for obs in OBSERVERS:
        qc = QuantizeConfig(8, activations="static", calibration=obs, calib_batches=CALIB_BATCHES)
        rows.append((f"W8A8 static, {obs}", qc))
    for alpha in SMOOTH_ALPHAS:
        for obs in ("minmax", "percentile"):
            qc = QuantizeConfig(
                8, activations="static", calibration=obs, calib_batches=CALIB_BATCHES, smooth=alpha
            )
            rows.append((f"W8A8 static, {obs}, SmoothQuant {alpha}", qc))
    if qat_steps:
        qc = QuantizeConfig(4, "group", 32, scheme=asym, qat_steps=qat_steps)
        rows.append((f"W4 group 32 after {qat_steps} QAT steps", qc))
    return rows


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def measure_row(
    params, cfg, vocab, meta, data, qc: QuantizeConfig, out, max_windows: int | None = None
) -> tuple[float, int]:
    """One row: the model quantized by ``qc`` (``quantize_model``), its validation perplexity
    over the first ``max_windows`` validation windows (None: all), and the bytes of the
    compressed checkpoint it writes to ``out`` (a folder). -> (val_ppl, file_bytes)."""
    q = quantize_model(params, cfg, data, qc, progress=False)
    ppl = perplexity(q.sim_params, cfg, data.val, q.linear, max_windows)
    path = save_compressed(out, {**q.params, **q.qtensors}, cfg, vocab, {**meta, **q.meta})
    return ppl, file_bytes(path)


def run_experiments(
    model,
    out,
    qat_steps: int = 300,
    sensitivity: bool = True,
    resume: bool = False,
    only: list[str] | None = None,
) -> dict:
    """Every row of ``rows_to_run``, the figures, the sensitivity (module docstring).
    resume: keep the rows already in ``out/results.json`` and run only the others;
    only: run just the rows whose label contains one of these strings."""
    out = Path(out)
    params, cfg, vocab, meta = load_checkpoint(model)
    data = make_dataset(builtin_text(), cfg.block_size, tokenizer=CharTokenizer(vocab))
    base = perplexity(params, cfg, data.val)
    base_bytes = file_bytes(checkpoint_file(model))
    results = {"model": str(model), "baseline_val_ppl": base, "baseline_file_bytes": base_bytes}
    rows = []
    if resume and (out / "results.json").is_file():
        rows = load_json(out / "results.json").get("rows", [])
    done = {r["method"] for r in rows}
    print(f"float32: val ppl {base:.4f}, {base_bytes:,} bytes", flush=True)
    for label, qc in rows_to_run(qat_steps):
        if label in done or (only and not any(o in label for o in only)):
            continue
        t0 = time.perf_counter()
        ppl, nbytes = measure_row(params, cfg, vocab, meta, data, qc, out / "models" / _slug(label))
        row = {
            "method": label,
            "val_ppl": ppl,
            "change_pct": 100 * (ppl / base - 1),
            "file_bytes": nbytes,
            "compression_ratio": base_bytes / nbytes,
            **dataclasses.asdict(qc),
        }
        if qc.qat_steps:
            control = {k: v.copy() for k, v in params.items()}
            finetune(control, cfg, data, finetune_config(qc), progress=False)
            control_ppl = perplexity(control, cfg, data.val)
            row["control_val_ppl"] = control_ppl
            row["change_vs_control_pct"] = 100 * (ppl / control_ppl - 1)
            plain = dataclasses.replace(qc, qat_steps=0)  # PTQ of the fine-tuned float model
            ppl_ptq = perplexity(
                quantize_model(control, cfg, data, plain, False).sim_params, cfg, data.val
            )
            row["ptq_of_control_val_ppl"] = ppl_ptq
            row["ptq_of_control_vs_control_pct"] = 100 * (ppl_ptq / control_ppl - 1)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"{label:40s} {ppl:.4f} {row['change_pct']:+.3f}% {row['file_bytes']:>9,} bytes "
            f"({row['compression_ratio']:.2f}x) {row['seconds']:.0f}s",
            flush=True,
        )
        save_json(out / "results.json", {**results, "rows": rows})
    results["rows"] = rows
    figures(params, cfg, data, out)
    if sensitivity:
        spec = QuantSpec(4, "asymmetric", "tensor")
        sens = layer_sensitivity(params, cfg, data.val, spec, progress=False)
        results["sensitivity"] = {"spec": spec.to_dict(), "rows": sens}
        quant_plots.plot_sensitivity(
            sens, out / "sensitivity.png", "one layer at a time at 4 bits per tensor"
        )
        print(format_table(sens, floatfmt=".3f"), flush=True)
    save_json(out / "results.json", results)
    cols = ["method", "val_ppl", "change_pct", "file_bytes", "compression_ratio"]
    table = format_table([{c: r[c] for c in cols} for r in rows], floatfmt=".4g")
    atomic_write_bytes(out / "table.md", (table + "\n").encode())
    return results


def figures(params, cfg, data, out: Path) -> None:
    """The README's figures: grids over a weight histogram, clipping vs rounding, and the
    observers' ranges over the most heavy-tailed activation."""
    names = linear_names(cfg)
    lo, hi = model_range(params[f"{n}.w"] for n in names)
    narrow = min(names, key=lambda n: np.ptp(params[f"{n}.w"]))
    w = params[f"{narrow}.w"]
    col = int(np.argmin(np.ptp(w, axis=0)))
    spec = QuantSpec(4, "asymmetric", "tensor")
    grids = {
        "one range for the model": grid_points(*scale_zero_point(lo, hi, spec), spec),
        "per tensor": grid_points(*scale_zero_point(w.min(), w.max(), spec), spec),
        f"per channel (column {col})": grid_points(
            *scale_zero_point(w[:, col].min(), w[:, col].max(), spec), spec
        ),
    }
    quant_plots.plot_weight_grid(w, grids, out / "weight_grids.png", f"{narrow}.w at 4 bits")
    widest = max(names, key=lambda n: np.abs(params[f"{n}.w"]).max() / params[f"{n}.w"].std())
    quant_plots.plot_clipping_rounding(
        params[f"{widest}.w"],
        spec,
        out / "clipping_rounding.png",
        title=f"{widest}.w, 4 bits per tensor",
    )

    batches = calibration_batches(data.train, 2, 16, cfg.block_size, np.random.default_rng(0))
    acts = record_inputs(params, cfg, batches)
    kurt = {n: float(np.mean((a - a.mean()) ** 4) / a.var() ** 2) for n, a in acts.items()}
    name = max(kurt, key=kurt.get)
    ranges = {}
    for obs_name in OBSERVERS:
        obs = make_observer(obs_name, QuantSpec(8, "asymmetric", "tensor"))
        obs.update(acts[name])
        ranges[obs_name] = obs.range()
    quant_plots.plot_activation_ranges(
        acts[name],
        ranges,
        out / "observer_ranges.png",
        f"input of {name} (kurtosis {kurt[name]:.0f})",
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a dense checkpoint (the teacher)")
    ap.add_argument("--out", required=True, help="folder for results.json, table.md, figures")
    ap.add_argument("--qat-steps", type=int, default=300, help="0: no QAT row")
    ap.add_argument("--no-sensitivity", action="store_true")
    ap.add_argument("--resume", action="store_true", help="keep the rows already measured")
    ap.add_argument(
        "--only", nargs="+", metavar="TEXT", help="run only rows whose label contains TEXT"
    )
    args = ap.parse_args(argv)
    r = run_experiments(
        args.model, args.out, args.qat_steps, not args.no_sensitivity, args.resume, args.only
    )
    cols = ["method", "val_ppl", "change_pct", "file_bytes", "compression_ratio"]
    print(format_table([{c: row[c] for c in cols} for row in r["rows"]], floatfmt=".4g"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
