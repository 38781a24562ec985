"""The pruning experiments of issue #13, on a trained model: each writes a JSON of its rows,
``prune_plots.py`` draws them.

- ``sweep``: validation perplexity against sparsity (0-95%) for magnitude, gradient, Taylor
  and random scores, one-shot and fine-tuned (every fine-tuned point against the same
  fine-tune of the unpruned model, computed once);
- ``heads``: the importance of every head of every layer — its L2 / L1 score and the real
  increase of the validation loss when that head alone is removed;
- ``zhu_gupta``: a large sparse model against small dense ones with about as many non-zero
  parameters, all with the same training budget (Zhu & Gupta 2017);
- ``bars``: the quality bars (50% magnitude, 80% cubic, 25% of heads; fine-tuned, against
  the fine-tuned control).

Run: ``python -m minicompress.report.prune_experiments --model DIR --out DIR
[--what sweep,heads,zhu_gupta,bars] [--bars NAME;NAME] [--finetune-steps N] [--fast]``.
Every run is seeded: the same command gives the same numbers.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from minicompress.data.corpus import CharTokenizer, builtin_text, make_dataset
from minicompress.fileio import save_json
from minicompress.nn.checkpoint import load_checkpoint
from minicompress.nn.model import TransformerConfig, count_params, init_params
from minicompress.nn.train import TrainConfig, evaluate, train
from minicompress.prune.pipeline import PruneConfig, prunable_names, prune_model
from minicompress.prune.scores import structure_scores
from minicompress.prune.structured import remove_structures

SWEEP_METHODS = ("magnitude", "gradient", "taylor", "random")
SWEEP_SPARSITIES = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def control_loss(params, cfg, data, pc: PruneConfig, progress: bool = False, loss=None) -> float:
    """Validation loss of the unpruned model after the fine-tune ``pc`` describes (on
    ``loss``, the training loop's loss hook; None: cross-entropy)."""
    work = {k: v.copy() for k, v in params.items()}
    train(work, cfg, data, pc.train_config(), loss=loss, progress=progress, desc="control")
    return evaluate(work, cfg, data.val, pc.eval_windows)


def sweep(
    params,
    cfg,
    data,
    methods=SWEEP_METHODS,
    sparsities=SWEEP_SPARSITIES,
    finetune_steps: int = 100,
    scope: str = "global",
    eval_windows: int | None = None,
    progress: bool = False,
) -> list[dict]:
    """Rows {method, sparsity, finetune_steps, val_ppl, delta_vs_reference, ...}: each method
    at each sparsity one-shot (reference: the model before pruning) and fine-tuned
    (reference: the same fine-tune of the unpruned model)."""
    base = evaluate(params, cfg, data.val, eval_windows)
    rows = []
    ctl = None
    if finetune_steps:
        pc = PruneConfig("magnitude", 0.0, finetune_steps=finetune_steps, eval_windows=eval_windows)
        ctl = control_loss(params, cfg, data, pc, progress)
    for method in methods:
        for s in sparsities:
            for steps in (0, finetune_steps) if finetune_steps else (0,):
                pc = PruneConfig(
                    method, s, scope=scope, finetune_steps=steps, eval_windows=eval_windows
                )
                r = prune_model(
                    params, cfg, data, pc, progress=progress, baseline_loss=base, control_loss=ctl
                )
                m = r.metrics
                ref = base if steps == 0 else ctl
                rows.append(
                    {
                        "method": method,
                        "sparsity": m["sparsity"],
                        "finetune_steps": steps,
                        "val_ppl": m["val_ppl"],
                        "reference_ppl": math.exp(ref),
                        "delta_vs_reference": math.exp(m["val_loss"] - ref) - 1,
                        "seconds": m["seconds"],
                    }
                )
                print(_row_line(rows[-1]), flush=True)
    return rows


def _row_line(row: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def head_importance(
    params, cfg, data, eval_windows: int | None = 64, progress: bool = False
) -> dict:
    """Per head [n_layer, H]: L2 and L1 scores of its weights, and the measured increase of
    the validation loss when that head alone is removed (``structured.remove_structures``)."""
    base = evaluate(params, cfg, data.val, eval_windows)
    l2 = np.stack(structure_scores(params, cfg, "heads", "l2"))
    l1 = np.stack(structure_scores(params, cfg, "heads", "l1"))
    delta = np.zeros_like(l2)
    for layer in range(cfg.n_layer):
        for h in range(l2.shape[1]):
            keep = [np.ones(l2.shape[1], dtype=bool) for _ in range(cfg.n_layer)]
            keep[layer][h] = False
            small, small_cfg = remove_structures(params, cfg, "heads", keep)
            delta[layer, h] = evaluate(small, small_cfg, data.val, eval_windows) - base
            print(f"layer {layer} head {h}: l2 {l2[layer, h]:.3f} d_loss {delta[layer, h]:+.4f}")
    from scipy.stats import spearmanr

    corr = float(np.corrcoef(l2.ravel(), delta.ravel())[0, 1])
    # within a layer: does the score order the heads as their real cost does?
    within = float(np.mean([spearmanr(l2[i], delta[i]).statistic for i in range(cfg.n_layer)]))
    return {
        "spearman_within_layer": within,
        "l2": l2.tolist(),
        "l1": l1.tolist(),
        "delta_loss": delta.tolist(),
        "baseline_loss": base,
        "eval_windows": eval_windows,
        "corr_l2_delta": corr,
    }


def _dense_small(cfg, width: int) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=cfg.vocab_size,
        block_size=cfg.block_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=width,
        mlp_ratio=cfg.mlp_ratio,
    )


def zhu_gupta(
    params,
    cfg,
    data,
    teacher_steps: int,
    finetune_steps: int = 300,
    sparsities=(0.5, 0.8, 0.9),
    widths=(96, 64, 48),
    progress: bool = False,
) -> list[dict]:
    """Large-sparse against small-dense at about equal non-zero parameters.

    Large sparse: the trained model pruned by global magnitude with the cubic schedule while
    fine-tuning ``finetune_steps``. Small dense: the same architecture at width w trained
    from scratch for ``teacher_steps + finetune_steps`` steps (the large one's total budget)
    with the teacher's training schedule. -> rows {model, nonzero_params, val_ppl}.
    """
    rows = []
    base = evaluate(params, cfg, data.val)
    rows.append(
        {
            "model": f"dense width {cfg.n_embd}",
            "nonzero_params": int(count_params(params)),
            "val_ppl": math.exp(base),
            "steps": teacher_steps,
        }  # fmt: skip
    )
    for s in sparsities:
        pc = PruneConfig(
            "magnitude", s, scope="global", schedule="cubic", finetune_steps=finetune_steps,
            control=False,
        )  # fmt: skip
        m = prune_model(params, cfg, data, pc, progress=progress, baseline_loss=base).metrics
        rows.append(
            {
                "model": f"sparse {s:.0%} width {cfg.n_embd}",
                "nonzero_params": m["nonzero_params"],
                "val_ppl": m["val_ppl"],
                "steps": teacher_steps + finetune_steps,
            }  # fmt: skip
        )
        print(_row_line(rows[-1]), flush=True)
    for w in widths:
        small_cfg = _dense_small(cfg, w)
        small = init_params(small_cfg, np.random.default_rng([0, 0]))
        tc = TrainConfig(steps=teacher_steps + finetune_steps, eval_every=0)
        hist = train(small, small_cfg, data, tc, progress=progress, desc=f"dense {w}")
        rows.append(
            {
                "model": f"dense width {w}",
                "nonzero_params": int(count_params(small)),
                "val_ppl": math.exp(hist.val_loss[-1]),
                "steps": tc.steps,
            }  # fmt: skip
        )
        print(_row_line(rows[-1]), flush=True)
    return rows


# issue 18's 80% recipe (see BARS)
_RAMP80 = dict(
    method="magnitude", sparsity=0.8, scope="global", schedule="cubic", prune_end=0.2,
    prune_events=60, lr=3e-3,
)  # fmt: skip

BARS = {  # name: (PruneConfig keywords [+ "distill": DistillConfig keywords], the bar)
    "magnitude 50% global": (dict(method="magnitude", sparsity=0.5, scope="global"), 0.01),
    "magnitude 50% cubic global": (
        dict(method="magnitude", sparsity=0.5, scope="global", schedule="cubic"),
        0.01,
    ),
    "magnitude 80% cubic global": (
        dict(method="magnitude", sparsity=0.8, scope="global", schedule="cubic"),
        0.10,
    ),
    # issue 18's bar: 80% with the cubic schedule <= +5% against the control at 300 steps.
    # The masks rise at every step of the first 20% of the steps (60 of 300: the cubic ramp,
    # dt = 1) and the model recovers at 80% for the other 80%; the fine-tune peaks at lr 3e-3
    # (its control too: 3e-3 leaves the unpruned teacher where 1e-3 does).
    "magnitude 80% cubic global, ramp 20%, lr 3e-3": (_RAMP80, 0.05),
    # The same, learning from the unpruned model (KD, alpha 0.5, T 2) — and so does its
    # control: the unpruned model fine-tuned at lr 3e-3 on the same loss (KD from itself),
    # which ends better than the cross-entropy control.
    "magnitude 80% cubic global, ramp 20%, lr 3e-3, KD": (
        {**_RAMP80, "distill": dict(alpha=0.5, temperature=2.0)},
        0.05,
    ),
    "heads 25% local": (dict(method="heads", sparsity=0.25, criterion="l2"), 0.05),
}


def bar_config(name: str, finetune_steps: int, **kw) -> tuple[PruneConfig, dict | None]:
    """The ``PruneConfig`` of the bar ``name`` at ``finetune_steps`` (``kw``: more fields,
    e.g. eval_windows) and its distillation keywords (None: cross-entropy)."""
    if name not in BARS:
        raise ValueError(f"bar must be one of {', '.join(BARS)}; got {name!r}")
    fields = dict(BARS[name][0])
    distill = fields.pop("distill", None)
    return PruneConfig(**fields, finetune_steps=finetune_steps, **kw), distill


def bar_loss(params, cfg, distill: dict | None):
    """The fine-tune's loss of a bar: None (cross-entropy) or KD from the unpruned model
    (``distill.trainer.self_distill_loss`` with ``distill``'s DistillConfig keywords)."""
    if distill is None:
        return None
    from minicompress.distill.trainer import DistillConfig, self_distill_loss

    return self_distill_loss(params, cfg, DistillConfig(**distill))


def bars(params, cfg, data, finetune_steps: int = 300, progress: bool = False, which=None):
    """The quality bars: each fine-tuned ``finetune_steps`` and compared with the same
    fine-tune of the unpruned model (same steps, learning rate and loss: one control per
    fine-tune, shared by the bars that have it). -> rows {name, val_ppl, control_val_ppl,
    delta_vs_control, bar, passed, ...}."""
    base = evaluate(params, cfg, data.val)
    controls = {}  # (TrainConfig, distillation) -> the control's validation loss
    rows = []
    for name, (_, bar) in BARS.items():
        if which is not None and name not in which:
            continue
        pc, distill = bar_config(name, finetune_steps)
        loss = bar_loss(params, cfg, distill)
        key = (pc.train_config(), repr(distill))
        m = prune_model(params, cfg, data, pc, progress=progress, baseline_loss=base,
                        control_loss=controls.get(key), loss=loss).metrics  # fmt: skip
        controls[key] = math.log(m["control_val_ppl"])
        rows.append(
            {
                "name": name,
                "val_ppl": m["val_ppl"],
                "control_val_ppl": m["control_val_ppl"],
                "baseline_val_ppl": m["baseline_val_ppl"],
                "delta_vs_control": m["delta_vs_control"],
                "bar": bar,
                "passed": m["delta_vs_control"] <= bar,
                "sparsity": m["sparsity"],
                "lr": pc.lr,
                "distill": distill,
                "seconds": m["seconds"],
            }  # fmt: skip
        )
        print(_row_line(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="trained checkpoint folder")
    ap.add_argument("--out", required=True, help="folder for the JSON results")
    ap.add_argument("--what", default="sweep,heads,zhu_gupta,bars")
    ap.add_argument("--finetune-steps", type=int, default=None)
    ap.add_argument("--teacher-steps", type=int, default=1400, help="for zhu_gupta's budget")
    ap.add_argument("--fast", action="store_true", help="few points, few steps, a val subset")
    ap.add_argument("--bars", help="only these bars (names of BARS, separated by ';')")
    args = ap.parse_args(argv)
    params, cfg, vocab, _ = load_checkpoint(args.model)
    data = make_dataset(builtin_text(), cfg.block_size, tokenizer=CharTokenizer(vocab))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fast = args.fast
    print(f"{len(prunable_names(cfg))} prunable weights; model {count_params(params):,} params")
    for what in args.what.split(","):
        t0 = time.perf_counter()
        if what == "sweep":
            steps = args.finetune_steps if args.finetune_steps is not None else 100
            rows = sweep(
                params, cfg, data,
                sparsities=(0.0, 0.5, 0.9) if fast else SWEEP_SPARSITIES,
                finetune_steps=10 if fast else steps,
                eval_windows=16 if fast else None,
            )  # fmt: skip
            save_json(out / "sweep.json", {"rows": rows, "finetune_steps": steps})
        elif what == "heads":
            save_json(out / "heads.json", head_importance(params, cfg, data, 16 if fast else 64))
        elif what == "zhu_gupta":
            steps = args.finetune_steps if args.finetune_steps is not None else 300
            rows = zhu_gupta(params, cfg, data, args.teacher_steps, steps)
            save_json(out / "zhu_gupta.json", {"rows": rows})
        elif what == "bars":
            steps = args.finetune_steps if args.finetune_steps is not None else 300
            which = None if args.bars is None else [b.strip() for b in args.bars.split(";")]
            for b in which or ():
                if b not in BARS:
                    raise SystemExit(f"--bars: unknown bar {b!r}; known: {'; '.join(BARS)}")
            save_json(out / "bars.json", {"rows": bars(params, cfg, data, steps, which=which)})
        else:
            raise SystemExit(f"--what: unknown experiment {what!r}")
        print(f"{what}: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
