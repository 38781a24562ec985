"""``minicompress quantize MODEL --out PATH``: quantize a model's weights (and optionally
its activations), save the compressed checkpoint, report quality and size. The
quantization is ``quant.pipeline.quantize_model``; the file ``deploy.format``'s."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from minicompress.cli.common import (
    add_config_flags,
    check_output_dir,
    check_output_file,
    config_from_args,
    read_text,
)
from minicompress.data.corpus import CharTokenizer, make_dataset
from minicompress.deploy.format import file_bytes, save_compressed
from minicompress.fileio import save_json
from minicompress.nn.checkpoint import CHECKPOINT_FILE, SUFFIX, checkpoint_file, load_checkpoint
from minicompress.quant.pipeline import QuantizeConfig, finetune_config, quantize_model
from minicompress.quant.ptq import perplexity
from minicompress.quant.qat import finetune
from minicompress.report.table import format_table

SHOWN = ("val_ppl", "baseline_val_ppl", "change_pct", "file_bytes", "compression_ratio")


def register(sub) -> None:
    q = sub.add_parser(
        "quantize",
        help="quantize weights (W8/W4/...) and activations (static/dynamic); save the model",
        description="Quantize MODEL's linear weights and embeddings at --bits with one range "
        "per --granularity, optionally its activations (--activations static calibrates on "
        "training text with --calibration), optionally after --qat-steps of quantization-"
        "aware fine-tuning; save the compressed checkpoint to --out.",
    )
    q.add_argument("model", help="a dense checkpoint (folder or .mc file)")
    add_config_flags(q, QuantizeConfig)
    q.add_argument("--out", required=True, help="folder (or .mc file) of the quantized model")
    q.add_argument("--json", help="also write the report to this JSON file")
    q.add_argument("--text", help="the UTF-8 text file the model was trained on")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.set_defaults(func=run)


def run_quantize(
    model: str | Path, qc: QuantizeConfig, out: str | Path, text: str, progress: bool = True
) -> dict:
    """The whole command: load MODEL, measure it, quantize it (``quantize_model``), measure
    the quantized model as it will run, save it to ``out`` -> the report (what ``--json``
    writes): at least val_ppl, baseline_val_ppl, file_bytes, baseline_file_bytes. With QAT,
    also the same fine-tune of the float model (``control_val_ppl``)."""
    params, cfg, vocab, meta = load_checkpoint(model)
    data = make_dataset(text, cfg.block_size, tokenizer=CharTokenizer(vocab))
    baseline = perplexity(params, cfg, data.val)
    result = quantize_model(params, cfg, data, qc, progress)
    val_ppl = perplexity(result.sim_params, cfg, data.val, result.linear)
    file = save_compressed(
        out, {**result.params, **result.qtensors}, cfg, vocab, {**meta, **result.meta}
    )
    report = {
        "val_ppl": val_ppl,
        "baseline_val_ppl": baseline,
        "change_pct": 100 * (val_ppl / baseline - 1),
        "file": str(file),
        "file_bytes": file_bytes(file),
        "baseline_file_bytes": file_bytes(model),
        **dataclasses.asdict(qc),
    }
    report["compression_ratio"] = report["baseline_file_bytes"] / report["file_bytes"]
    n_params = sum(a.size for a in params.values())
    report["bits_per_parameter"] = 8 * report["file_bytes"] / n_params  # on disk, all in
    if qc.qat_steps:  # the same fine-tune of the float model: QAT's fair reference
        control = {k: v.copy() for k, v in params.items()}
        finetune(control, cfg, data, finetune_config(qc), progress=progress)
        report["control_val_ppl"] = perplexity(control, cfg, data.val)
        report["change_vs_control_pct"] = 100 * (val_ppl / report["control_val_ppl"] - 1)
    return report


def run(args) -> int:
    qc = config_from_args(QuantizeConfig, args)
    model = checkpoint_file(args.model)
    out = Path(args.out)
    if out.suffix == SUFFIX:
        check_output_file("--out", out, inputs=[model, args.text])
    else:
        check_output_dir("--out", out, inputs=[model, args.text], writes=[CHECKPOINT_FILE])
    if args.json is not None:
        check_output_file("--json", args.json, inputs=[model, args.text, args.out])
    text = read_text(args.text)
    report = run_quantize(args.model, qc, out, text, progress=not args.no_progress)
    print(format_table([{k: report[k] for k in SHOWN}], floatfmt=".4g"))
    if "control_val_ppl" in report:
        print(
            f"the same fine-tune of the float model: val ppl {report['control_val_ppl']:.4f}; "
            f"quantized vs it: {report['change_vs_control_pct']:+.2f}%"
        )
    print(f"wrote {report['file']}")
    if args.json is not None:
        save_json(args.json, report)
    return 0
