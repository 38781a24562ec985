"""``minicompress demo [--quick]``: train the teacher (or reuse the one trained before),
compress it with every technique of the course (``report.demo_report``: W8 weight-only,
W8A8, W4 QAT, 50% and 80% unstructured pruning, heads removed, a distilled student, the
combined recipe) and print the table: size, compression ratio, perplexity, tokens/s.

Each configuration has its own teacher folder under ``--out`` (``teacher`` for the
default, ``teacher-quick`` for ``--quick``, ``-seedN`` appended for another seed), so a
quick run never replaces a trained teacher. A folder that already holds the teacher of
this configuration is reused; one that holds another teacher is refused, saying what to
pass (``--retrain`` or another ``--out``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from minicompress.cli.common import UserError, check_output_dir, check_output_file, flag_int
from minicompress.cli.train import LOSS_PLOT, metrics
from minicompress.data.corpus import CharTokenizer, builtin_text, make_dataset
from minicompress.fileio import json_safe
from minicompress.nn.checkpoint import checkpoint_file, load_checkpoint
from minicompress.nn.model import TransformerConfig, count_params, init_params
from minicompress.nn.train import TrainConfig, evaluate, train

QUICK_MODEL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 64}  # trains in seconds
QUICK_TRAIN = {"steps": 40, "eval_every": 0, "warmup": 10}
RESULTS = "results.json"


def register(sub) -> None:
    d = sub.add_parser("demo", help="train a teacher and print size / quality / latency")
    d.add_argument(
        "--out",
        default=None,
        help="folder for the teachers, the table and the figures (default runs/demo, "
        "runs/demo-quick with --quick)",
    )
    d.add_argument("--quick", action="store_true", help="a tiny model, a few steps (for CI)")
    d.add_argument("--seed", type=flag_int(minimum=0), default=0, help="(default 0)")
    d.add_argument(
        "--retrain", action="store_true", help="train this configuration's teacher again"
    )
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=run)


def teacher_plan(quick: bool, seed: int, vocab_size: int):
    """(model config, training config, folder name) of the demo's teacher."""
    cfg = TransformerConfig(vocab_size=vocab_size, **(QUICK_MODEL if quick else {}))
    tc = TrainConfig(seed=seed, **(QUICK_TRAIN if quick else {}))
    name = "teacher" + ("-quick" if quick else "") + (f"-seed{seed}" if seed else "")
    return cfg, tc, name


def _differences(a: dict, b: dict) -> str:
    keys = [k for k in {**a, **b} if a.get(k) != b.get(k)]
    return ", ".join(f"{k}={a.get(k)!r} there, {b.get(k)!r} here" for k in keys[:3])


def reuse_teacher(folder: Path, cfg, tc, vocab) -> dict | None:
    """The parameters of the teacher in ``folder`` if it was trained with exactly this
    configuration; None if there is none; a UserError if it holds another one."""
    if not checkpoint_file(folder).exists():
        return None
    hint = "pass --retrain to train this teacher again, or --out to use another folder"
    try:
        params, cfg_there, vocab_there, meta = load_checkpoint(folder)
    except ValueError as e:
        raise UserError(f"{e}; {hint}") from None
    train_here = json.loads(json.dumps(json_safe(asdict(tc))))
    train_there = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    if cfg_there != cfg or vocab_there != vocab or train_there != train_here:
        what = _differences(cfg_there.to_dict(), cfg.to_dict()) or _differences(
            train_there, train_here
        )
        raise UserError(
            f"{str(folder)!r} holds a teacher trained with another configuration "
            f"({what or 'another vocabulary'}); {hint}"
        )
    return params


def run(args) -> int:
    quick = args.quick
    out = Path(args.out or ("runs/demo-quick" if quick else "runs/demo"))
    text = builtin_text()
    tok = CharTokenizer.from_text(text)
    cfg, tc, name = teacher_plan(quick, args.seed, tok.vocab_size)
    teacher_dir = out / name
    check_output_dir("--out", teacher_dir)
    for written in (RESULTS, "report.md", "pareto.png", "sensitivity.png", "sparsity_sweep.png"):
        check_output_file("--out", out / written)  # written after the training: checked before
    check_output_dir("--out", out / "models")
    data = make_dataset(text, cfg.block_size, tokenizer=tok)
    params = None if args.retrain else reuse_teacher(teacher_dir, cfg, tc, tok.chars)
    if params is not None:
        print(f"minicompress demo: reusing the teacher trained before in {teacher_dir}")
        loss = evaluate(params, cfg, data.val)  # every validation window, as after training
        seconds = None
    else:
        params = init_params(cfg, np.random.default_rng([tc.seed, 0]))
        print(
            f"minicompress demo: training the teacher ({count_params(params):,} parameters) "
            f"on Python's documentation ({len(text):,} characters)"
            + (" [quick mode]" if quick else "")
        )
        hist = train(params, cfg, data, tc, out_dir=teacher_dir, progress=not args.no_progress)
        loss, seconds = hist.val_loss[-1], hist.seconds
        from minicompress.report.plots import plot_loss_curve

        plot_loss_curve(hist, teacher_dir / LOSS_PLOT, "teacher")
    m = metrics(loss, params)
    print(
        f"teacher: val ppl {m['val_ppl']:.4f}, {m['bpc']:.3f} bits/char, {m['params']:,} parameters"
    )
    if (teacher_dir / LOSS_PLOT).exists():
        print(f"loss curve: {teacher_dir / LOSS_PLOT}")
    from minicompress.report.demo_report import format_results, run_study, study_config

    print("\ncompressing the teacher with every technique (each model saved, then measured)")
    results = run_study(
        teacher_dir,
        out,
        study_config(quick),
        text=text,
        progress=not args.no_progress,
        extra={"train_seconds": seconds},
    )
    print()
    print(format_results(results))
    print(
        "(size: the checkpoint file on disk; val_ppl: every validation window, on the runtime; "
        "tokens/s: the runtime's forward over a batch, speed-up against the fp32 teacher)"
    )
    if results["targets"]:
        met = ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in results["targets"].items())
        print(f"combined recipe targets (>= 10x smaller, <= 10% ppl, >= 3x tokens/s): {met}")
    print(f"\nreport: {out / 'report.md'}; table: {out / RESULTS}; models: {out / 'models'}")
    print("plots: " + ", ".join(results["plots"].values()))
    combined = results["rows"][-1]
    print(f"\nsample of the {combined['method']} model:\n{combined['sample']}")
    return 0
