"""``minicompress demo [--quick]``: train the teacher (or reuse the one trained before) and
print its size / quality / latency table.

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
from minicompress.fileio import json_safe, save_json
from minicompress.nn.checkpoint import CHECKPOINT_FILE, checkpoint_file, load_checkpoint
from minicompress.nn.model import TransformerConfig, count_params, forward, generate, init_params
from minicompress.nn.train import TrainConfig, evaluate, train
from minicompress.report.table import format_table

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


def _latency_ms(params, cfg, repeat: int = 20) -> float:
    """Time of one forward pass over a full context of one sequence: the best median of 3
    rounds, each after a pause (right after training or evaluation, BLAS threads still
    busy made the first median 1000x the next one on a loaded machine)."""
    from minicompress.report.timing import best_of_rounds

    x = np.zeros((1, cfg.block_size), dtype=np.int64)
    fn = lambda: forward(params, x, cfg)  # noqa: E731
    return best_of_rounds({"fp32": fn}, rounds=3, repeat=repeat, pause_s=0.2)["fp32"]


def run(args) -> int:
    quick = args.quick
    out = Path(args.out or ("runs/demo-quick" if quick else "runs/demo"))
    text = builtin_text()
    tok = CharTokenizer.from_text(text)
    cfg, tc, name = teacher_plan(quick, args.seed, tok.vocab_size)
    teacher_dir = out / name
    check_output_dir("--out", teacher_dir)
    check_output_file("--out", out / RESULTS)  # written after the training: checked before
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
    rows = [
        {
            "model": "teacher fp32",
            "params": m["params"],
            "size_MB": checkpoint_file(teacher_dir).stat().st_size / 1e6,
            "ratio": 1.0,
            "val_ppl": m["val_ppl"],
            "bpc": m["bpc"],
            "latency_ms": _latency_ms(params, cfg, 5 if quick else 20),
        }
    ]
    print()
    print(format_table(rows))
    print("(size: the checkpoint file; latency: one forward pass over a full context)")
    if (teacher_dir / LOSS_PLOT).exists():
        print(f"\nloss curve: {teacher_dir / LOSS_PLOT}")
    save_json(
        out / RESULTS,
        {"rows": rows, "teacher": str(teacher_dir / CHECKPOINT_FILE), "train_seconds": seconds},
    )
    sample = generate(
        params,
        cfg,
        data.tokenizer.encode("The "),
        40 if quick else 200,
        np.random.default_rng(0),
        temperature=0.8,
        top_k=20,
    )
    print("\nsample:\n" + data.tokenizer.decode(sample))
    return 0
