"""``minicompress distill``: distil a trained teacher into a smaller student — optionally
against the same student trained from scratch (same data, steps and seeds), over several
seeds, and over a grid of alpha x temperature x KD loss (comma-separated values).

The work is ``minicompress.distill.experiment.run_distill_command``; this module reads the
flags, checks the outputs before any training starts, and prints and draws the results.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from minicompress.cli.common import (
    UserError,
    add_config_flags,
    check_output_dir,
    check_output_file,
    config_from_args,
    flag_float,
    flag_int,
    read_text,
)
from minicompress.distill.experiment import INITS, StudentSpec, parse_grid, run_distill_command
from minicompress.distill.losses import KD_KINDS, check_alpha, check_temperature
from minicompress.nn.checkpoint import SUFFIX, checkpoint_file
from minicompress.nn.train import TrainConfig
from minicompress.report.distill_plots import distill_table, plot_distill_results


def _list_of(parse, what: str):
    """A comma-separated list, each item read by ``parse`` (duplicates refused)."""

    def read(text: str) -> list:
        items = [t.strip() for t in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}")
        values = []
        for item in items:
            try:
                values.append(parse(item))
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{text!r} lists a value twice")
        return values

    read.__name__ = f"list of {what}"
    return read


def _alpha(text: str) -> float:
    return check_alpha(flag_float()(text))


def _temperature(text: str) -> float:
    return check_temperature(flag_float()(text))


def _kind(text: str) -> str:
    if text not in KD_KINDS:
        raise ValueError(f"{text!r} is not one of {', '.join(KD_KINDS)}")
    return text


def register(sub) -> None:
    d = sub.add_parser(
        "distill",
        help="distil a teacher into a smaller student (against the same student from scratch)",
    )
    d.add_argument("teacher", help="the teacher's checkpoint folder (or its model.mc file)")
    d.add_argument("--student-layers", type=flag_int(minimum=1), required=True, metavar="L")
    d.add_argument("--student-width", type=flag_int(minimum=1), required=True, metavar="C")
    d.add_argument(
        "--student-heads",
        type=flag_int(minimum=1),
        metavar="H",
        help="(default: the teacher's heads when they divide the width)",
    )
    d.add_argument(
        "--alpha",
        type=_list_of(_alpha, "numbers in [0, 1]"),
        default=[0.5],
        metavar="A[,A...]",
        help="weight of the hard-label cross-entropy; a list runs each (default 0.5)",
    )
    d.add_argument(
        "--temperature",
        type=_list_of(_temperature, "numbers > 0"),
        default=[2.0],
        metavar="T[,T...]",
        help="softmax temperature of the KD term; a list runs each (default 2)",
    )
    d.add_argument(
        "--loss",
        type=_list_of(_kind, "KD losses"),
        default=["kl"],
        metavar="|".join(KD_KINDS),
        help="KD term: T^2 KL, the course's MSE on probabilities, or MSE on logits; a list "
        "runs each (default kl)",
    )
    d.add_argument(
        "--hidden-weight",
        type=flag_float(minimum=0.0),
        default=0.0,
        metavar="W",
        help="weight of the hidden-state MSE through a learned projection (default 0: off)",
    )
    d.add_argument(
        "--attn-weight",
        type=flag_float(minimum=0.0),
        default=0.0,
        metavar="W",
        help="weight of the attention-map KL (default 0: off)",
    )
    d.add_argument(
        "--init",
        choices=INITS,
        default="scratch",
        help="the student starts random, or as every other block of the teacher (default scratch)",
    )
    d.add_argument(
        "--scratch-baseline",
        action="store_true",
        help="also train the same student from scratch, same data, steps and seeds",
    )
    d.add_argument(
        "--seeds",
        type=flag_int(minimum=1),
        default=1,
        metavar="K",
        help="run the seeds --seed .. --seed + K - 1 (default 1)",
    )
    # --steps, --batch-size, --lr, --seed, ...; no --minutes: the distilled and the scratch
    # student must take the same number of steps (a clock would give the cheaper one more)
    add_config_flags(d, TrainConfig, skip=("minutes",))
    d.add_argument("--text", help="the UTF-8 text file the teacher was trained on")
    d.add_argument(
        "--out",
        required=True,
        help=f"the distilled student (the best setting's, first seed): a folder or a {SUFFIX} file",
    )
    d.add_argument("--overwrite", action="store_true", help="replace a checkpoint in --out")
    d.add_argument("--json", help="write the results to this JSON file")
    d.add_argument("--plot", help="draw the validation curves (or the alpha/T sweep) here")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=run)


def _one_line_warnings():
    """A ``warnings.showwarning`` that prints each distinct warning once, on one line (the
    teacher/student check runs once per training run; a filter's "once" does not survive
    the ``catch_warnings`` blocks of the libraries in between)."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text not in seen:
            seen.add(text)
            print(f"minicompress distill: warning: {text}", file=sys.stderr)

    return show


def run(args) -> int:
    teacher_file = checkpoint_file(args.teacher)
    inputs = [teacher_file, args.text]
    if args.out.endswith(SUFFIX):
        check_output_file("--out", args.out, inputs=inputs)
    else:
        check_output_dir("--out", args.out, inputs=inputs, writes=[teacher_file.name])
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            check_output_file(flag, path, inputs=[*inputs, checkpoint_file(args.out)])
    if args.json is not None and args.plot is not None and args.json == args.plot:
        raise UserError(f"--json and --plot are the same file {args.json!r}")
    tc = config_from_args(TrainConfig, args)
    grid = parse_grid(args.alpha, args.temperature, args.loss, args.hidden_weight, args.attn_weight)
    spec = StudentSpec(args.student_layers, args.student_width, args.student_heads, args.init)
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = _one_line_warnings()  # restored when the block ends
        results = run_distill_command(
            args.teacher,
            spec,
            grid,
            tc,
            [tc.seed + k for k in range(args.seeds)],
            args.out,
            text=read_text(args.text),
            scratch_baseline=args.scratch_baseline,
            json_path=args.json,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    print(distill_table(results))
    if args.plot is not None:
        print(f"figure -> {plot_distill_results(results, args.plot)}")
    return 0
