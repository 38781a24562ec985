"""``minicompress quantize MODEL --out PATH``: quantize a model's weights (and optionally
its activations), save the compressed checkpoint, report quality and size. The work is
``quant.command.run_quantize``; this module parses the flags."""

from __future__ import annotations

from pathlib import Path

from minicompress.cli.common import (
    add_config_flags,
    check_output_dir,
    check_output_file,
    config_from_args,
    read_text,
)
from minicompress.fileio import save_json
from minicompress.nn.checkpoint import CHECKPOINT_FILE, SUFFIX, checkpoint_file
from minicompress.quant.command import QuantizeConfig, run_quantize
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
