"""``minicompress prune MODEL --method M --sparsity S --out PATH``: prune a checkpoint, fine-tune
it, measure it (``minicompress.prune.pipeline.run_prune`` does the work).

Refused before any work: flag values and combinations (``PruneConfig`` says why, naming the
flags), an ``--out`` or ``--json`` that cannot be written or is the input, an existing
checkpoint at ``--out`` without ``--overwrite``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from minicompress.cli.common import (
    UserError,
    check_output_dir,
    check_output_file,
    flag_float,
    flag_int,
    read_text,
)
from minicompress.distill.losses import check_alpha, check_temperature
from minicompress.distill.trainer import DistillConfig, self_distill_loss
from minicompress.nn.checkpoint import CHECKPOINT_FILE, SUFFIX, checkpoint_file
from minicompress.prune.masks import check_sparsity, parse_nm
from minicompress.prune.pipeline import METHODS, REGULARIZERS, STORES, PruneConfig, run_prune
from minicompress.prune.regularizers import check_lambda
from minicompress.prune.schedules import SCHEDULES, check_fraction
from minicompress.prune.scores import CRITERIA
from minicompress.prune.structured import SCOPES
from minicompress.report.table import format_table


def _nm(text: str) -> str:
    import argparse

    try:
        parse_nm(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def register(sub) -> None:
    p = sub.add_parser("prune", help="prune a checkpoint (unstructured or heads/neurons/layers)")
    p.add_argument("model", help="checkpoint folder (or its model.mc file)")
    p.add_argument("--method", required=True, choices=METHODS, help="score or structure")
    p.add_argument("--sparsity", type=flag_float(), help="fraction pruned, in [0, 1]")
    p.add_argument("--criterion", choices=CRITERIA, help="group score (default l2)")
    p.add_argument("--scope", choices=SCOPES, help="per tensor/block or model-wide (local)")
    p.add_argument("--schedule", choices=SCHEDULES, help="(default oneshot)")
    p.add_argument(
        "--prune-end",
        type=flag_float(),
        help="fraction of the fine-tune steps by which a cubic / iterative schedule reaches "
        "its sparsity; the rest recovers (default 2/3)",
    )
    p.add_argument(
        "--prune-events",
        type=flag_int(minimum=1),
        help="how many times a cubic / iterative schedule raises the masks (default 10 / 5)",
    )
    p.add_argument("--regularizer", choices=REGULARIZERS, help="train under a penalty first")
    p.add_argument("--lambda", dest="lam", type=flag_float(), help="penalty strength")
    p.add_argument("--finetune-steps", type=flag_int(minimum=0), help="(default 0)")
    p.add_argument("--nm", type=_nm, help="an N:M pattern such as 2:4")
    p.add_argument("--lr", type=flag_float(), help="fine-tuning peak learning rate (1e-3)")
    p.add_argument("--batch-size", type=flag_int(minimum=1), help="(default 16)")
    p.add_argument(
        "--distill-alpha",
        type=flag_float(),
        help="fine-tune (and the control) on alpha CE + (1 - alpha) KD from the unpruned model "
        "(default: CE only)",
    )
    p.add_argument(
        "--distill-temperature",
        type=flag_float(),
        help="T of that KD term (default 2; needs --distill-alpha)",
    )
    p.add_argument("--eval-windows", type=flag_int(minimum=1), help="(default: all)")
    p.add_argument("--seed", type=flag_int(minimum=0), help="(default 0)")
    p.add_argument("--no-control", action="store_true",
                   help="skip the same fine-tune of the unpruned model")  # fmt: skip
    p.add_argument("--text", help="the UTF-8 text file the model was trained on")
    p.add_argument("--out", required=True, help="folder (or .mc file) for the pruned model")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument(
        "--store",
        choices=STORES,
        default="dense",
        help="dense fp32 (read by eval/generate), or sparse weights as CSR with float32 or int8 "
        "values (default dense)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint at --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _config(args) -> PruneConfig:
    """The PruneConfig of the flags; a value out of range names its flag, a combination
    that does not go together is explained by PruneConfig's message."""
    for flag, value, check in (
        ("--sparsity", args.sparsity, check_sparsity),
        ("--lambda", args.lam, check_lambda),
        ("--prune-end", args.prune_end, lambda v: check_fraction(v, "prune_end")),
    ):
        if value is not None:
            try:
                check(value)
            except (ValueError, TypeError) as e:
                raise UserError(f"{flag} {value}: {e}") from None
    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return PruneConfig(**given, control=not args.no_control)


def _make_loss(args):
    """(params, cfg) -> the self-distillation loss the flags ask for, or None (CE)."""
    if args.distill_alpha is None:
        if args.distill_temperature is not None:
            raise UserError("--distill-temperature needs --distill-alpha (KD is off without it)")
        return None
    if not args.finetune_steps:
        raise UserError("--distill-alpha distils while fine-tuning: give --finetune-steps >= 1")
    kw = {"alpha": args.distill_alpha}
    if args.distill_temperature is not None:
        kw["temperature"] = args.distill_temperature
    for flag, key, check in (
        ("--distill-alpha", "alpha", check_alpha),
        ("--distill-temperature", "temperature", check_temperature),
    ):
        if key in kw:
            try:
                check(kw[key])
            except (ValueError, TypeError) as e:
                raise UserError(f"{flag} {kw[key]}: {e}") from None
    dc = DistillConfig(**kw)
    return lambda params, cfg: self_distill_loss(params, cfg, dc)


def run(args) -> int:
    pc = _config(args)
    make_loss = _make_loss(args)
    src = checkpoint_file(args.model)
    if str(args.out).endswith(SUFFIX):
        check_output_file("--out", args.out, inputs=[src, args.text])
    else:
        check_output_dir("--out", args.out, inputs=[src, args.text], writes=[CHECKPOINT_FILE])
    if args.json is not None:
        check_output_file("--json", args.json, inputs=[src, args.text])
    if checkpoint_file(args.out).exists() and not args.overwrite:
        raise UserError(
            f"--out {str(args.out)!r} already holds a checkpoint; pass --overwrite to replace "
            "it or choose another folder"
        )
    text = read_text(args.text)
    m = run_prune(
        args.model, pc, args.out, args.json, text=text, overwrite=args.overwrite,
        progress=not args.no_progress, store=args.store, make_loss=make_loss,
    )  # fmt: skip
    row = {
        "method": m["method"],
        "sparsity": m["sparsity"],
        "val_ppl": m["val_ppl"],
        "baseline_val_ppl": m["baseline_val_ppl"],
        "control_val_ppl": m.get("control_val_ppl"),
        "nonzero_params": m["nonzero_params"],
        "file_bytes": m["file_bytes"],
        "baseline_file_bytes": m["baseline_file_bytes"],
    }
    print(format_table([row], floatfmt=".4g"))
    print(f"pruned model -> {m['out']}" + (f"; metrics -> {Path(args.json)}" if args.json else ""))
    return 0
