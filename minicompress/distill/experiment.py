"""The distillation experiment: a student distilled from a trained teacher against the same
student trained from scratch (same data, steps and seed), over several seeds, for one
setting or a grid of them (alpha x temperature x KD loss). The ``distill`` command is a thin
shell around ``run_distill``; the tutorial calls the same functions.

Both arms start from the same initial parameters and see the same batches in the same
order (``TrainConfig.seed`` seeds both); they differ only in the loss. Validation is the
student's next-token cross-entropy over every validation window (the loop's final check).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minicompress.data import CharTokenizer, make_dataset
from minicompress.distill.student import (
    check_teacher_student,
    student_config,
    student_from_teacher,
)
from minicompress.distill.trainer import DistillConfig, DistillLoss, SoftLabelCache
from minicompress.fileio import save_json
from minicompress.nn.checkpoint import load_checkpoint, save_checkpoint
from minicompress.nn.model import count_params, init_params
from minicompress.nn.train import History, TrainConfig, evaluate, train

INITS = ("scratch", "teacher")  # where the student's parameters start


@dataclass(frozen=True)
class StudentSpec:
    """The student's shape and starting point."""

    n_layer: int  # blocks
    n_embd: int  # width C (must equal the teacher's with init="teacher")
    n_head: int | None = None  # heads; None: see ``student.student_config``
    init: str = "scratch"  # "scratch" (random, as the baseline) or "teacher" (every other block)

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}; got {self.init!r}")


@dataclass
class Teacher:
    params: dict
    cfg: object  # TransformerConfig
    vocab: list
    path: str


def load_teacher(path: str | Path) -> Teacher:
    params, cfg, vocab, _ = load_checkpoint(path)
    return Teacher(params, cfg, vocab, str(path))


def make_student(teacher: Teacher, spec: StudentSpec, seed: int):
    """The student's initial (params, cfg): random from ``[seed, 0]`` (the stream the
    ``train`` command uses), or the teacher's every other block with ``init="teacher"``."""
    cfg = student_config(teacher.cfg, spec.n_layer, spec.n_embd, spec.n_head)
    if spec.init == "teacher":
        if spec.n_embd != teacher.cfg.n_embd or cfg.n_head != teacher.cfg.n_head:
            raise ValueError(
                f"init='teacher' copies the teacher's blocks, so the student needs its width "
                f"{teacher.cfg.n_embd} and {teacher.cfg.n_head} heads; got width {spec.n_embd}, "
                f"{cfg.n_head} heads"
            )
        return student_from_teacher(teacher.params, teacher.cfg, spec.n_layer)
    return init_params(cfg, np.random.default_rng([seed, 0])), cfg


def train_student(
    teacher: Teacher,
    spec: StudentSpec,
    dc: DistillConfig | None,
    tc: TrainConfig,
    data,
    *,
    soft_labels: SoftLabelCache | None = None,
    progress: bool = True,
    desc: str = "student",
) -> tuple[dict, object, History, DistillLoss | None]:
    """Train one student with ``tc`` (its seed seeds the init and the batches): distilled
    with ``dc``, or from scratch on cross-entropy when ``dc`` is None.
    ->  (params, cfg, history, the loss object or None)."""
    params, cfg = make_student(teacher, spec, tc.seed)
    loss = None
    if dc is not None:
        loss = DistillLoss(
            teacher.params,
            teacher.cfg,
            params,
            cfg,
            dc,
            rng=np.random.default_rng([tc.seed, 2]),
            soft_labels=soft_labels,
        )
    hist = train(params, cfg, data, tc, loss=loss, progress=progress, desc=desc)
    return params, cfg, hist, loss


def spread(values: list[float]) -> float:
    """Sample standard deviation (ddof = 1) of the seeds' figures; 0 for one seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _summary(ppls: list[float]) -> dict:
    return {
        "val_ppl": float(np.mean(ppls)),
        "val_ppl_std": spread(ppls),
        "val_ppl_per_seed": [float(p) for p in ppls],
    }


def _setting(dc: DistillConfig) -> dict:
    return {
        "alpha": dc.alpha,
        "temperature": dc.temperature,
        "loss": dc.loss,
        "hidden_weight": dc.hidden_weight,
        "attn_weight": dc.attn_weight,
    }


def _curve(hist: History) -> dict:
    return {"steps": list(hist.val_steps), "val_loss": [float(v) for v in hist.val_loss]}


def run_distill(
    teacher: Teacher,
    spec: StudentSpec,
    grid: list[DistillConfig],
    tc: TrainConfig,
    seeds: list[int],
    *,
    text: str,
    scratch_baseline: bool = True,
    soft_label_mb: float = 0.0,
    progress: bool = True,
    log=print,
) -> tuple[dict, dict, object]:
    """Distil ``teacher`` into the student ``spec`` with every setting of ``grid`` and every
    seed, and (``scratch_baseline``) train the same student from scratch once per seed.

    ``soft_label_mb``: a soft-label cache shared by the runs of one seed (they draw the same
    batches, so the teacher labels each batch once). ->  (results, params of the best
    distilled student (lowest mean val ppl; the first seed's), its config). ``results``
    holds the teacher's, the students' and the scratch students' figures, mean and spread
    over the seeds, per setting and per seed (the layout of the ``--json`` file).
    """
    if not grid:
        raise ValueError("grid must hold at least one DistillConfig")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one; got {seeds}")
    data = make_dataset(text, teacher.cfg.block_size, tokenizer=CharTokenizer(teacher.vocab))
    first_params, cfg = make_student(teacher, spec, seeds[0])
    check_teacher_student(teacher.cfg, cfg, teacher.params, first_params)
    n_teacher, n_student = count_params(teacher.params), count_params(first_params)
    teacher_loss = evaluate(teacher.params, teacher.cfg, data.val)
    log(
        f"teacher {teacher.path}: {n_teacher:,} parameters, val ppl {math.exp(teacher_loss):.4f}"
        f"\nstudent: {cfg.n_layer} blocks, width {cfg.n_embd}, {cfg.n_head} heads, "
        f"{n_student:,} parameters ({n_teacher / n_student:.2f}x fewer), init {spec.init}"
    )
    ppl = {i: [] for i in range(len(grid))}
    curves, seconds = {}, {i: 0.0 for i in range(len(grid))}
    scratch_ppl, best_params = [], {}
    for seed in seeds:
        tcs = dataclasses.replace(tc, seed=seed)
        cache = SoftLabelCache(soft_label_mb) if soft_label_mb and len(grid) > 1 else None
        for i, dc in enumerate(grid):
            t0 = time.perf_counter()
            desc = f"distil a={dc.alpha:g} T={dc.temperature:g} {dc.loss} seed {seed}"
            params, _, hist, _ = train_student(
                teacher, spec, dc, tcs, data, soft_labels=cache, progress=progress, desc=desc
            )
            seconds[i] += time.perf_counter() - t0
            ppl[i].append(math.exp(hist.val_loss[-1]))
            log(f"  seed {seed} {_setting(dc)}: val ppl {ppl[i][-1]:.4f}")
            if seed == seeds[0]:
                best_params[i] = params
                curves[f"distilled {i}"] = _curve(hist)
        if scratch_baseline:
            params, _, hist, _ = train_student(
                teacher, spec, None, tcs, data, progress=progress, desc=f"scratch seed {seed}"
            )
            scratch_ppl.append(math.exp(hist.val_loss[-1]))
            log(f"  seed {seed} scratch: val ppl {scratch_ppl[-1]:.4f}")
            if seed == seeds[0]:
                curves["scratch"] = _curve(hist)
    runs = [
        {**_setting(dc), **_summary(ppl[i]), "seconds": seconds[i]} for i, dc in enumerate(grid)
    ]
    best = min(range(len(grid)), key=lambda i: runs[i]["val_ppl"])
    results = {
        "teacher": teacher.path,
        "teacher_params": n_teacher,
        "teacher_val_ppl": math.exp(teacher_loss),
        "student": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head},
        "init": spec.init,
        "params": n_student,
        "compression": n_teacher / n_student,
        "train": dataclasses.asdict(tc),
        "seeds": list(seeds),
        **runs[best],  # the best setting's figures at the top level
        "runs": runs,
        "curves": curves,
    }
    if scratch_baseline:
        s = _summary(scratch_ppl)
        results.update(
            scratch_val_ppl=s["val_ppl"],
            scratch_val_ppl_std=s["val_ppl_std"],
            scratch_val_ppl_per_seed=s["val_ppl_per_seed"],
        )
        gain = s["val_ppl"] - runs[best]["val_ppl"]
        noise = max(s["val_ppl_std"], runs[best]["val_ppl_std"])
        results["gain_over_scratch"] = gain
        results["beats_scratch_beyond_spread"] = bool(gain > noise)
        for run in runs:
            run["gain_over_scratch"] = s["val_ppl"] - run["val_ppl"]
    if len(seeds) > 1:
        results["per_seed"] = [
            {"seed": seed, "val_ppl": runs[best]["val_ppl_per_seed"][k]}
            | ({"scratch_val_ppl": scratch_ppl[k]} if scratch_baseline else {})
            for k, seed in enumerate(seeds)
        ]
    return results, best_params[best], cfg


def check_out_path(out: str | Path, teacher_path: str | Path, overwrite: bool) -> Path:
    """Refuse an output path that is the teacher's, or that exists already (a file or a
    folder that is not empty) unless ``overwrite``: nothing the user had is replaced by
    mistake. Checked before any training starts."""
    out = Path(out)
    if out.resolve() == Path(teacher_path).resolve():
        raise ValueError(f"--out {str(out)!r} is the teacher's checkpoint; choose another path")
    taken = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if taken and not overwrite:
        raise ValueError(
            f"--out {str(out)!r} already exists; pass --overwrite to replace it or choose "
            "another path"
        )
    return out


def save_student(out: Path, params: dict, cfg, teacher: Teacher, results: dict) -> Path:
    """The distilled student's checkpoint, with what it was distilled from in its meta."""
    keep = ("teacher", "teacher_val_ppl", "init", "alpha", "temperature", "loss", "val_ppl")
    meta = {"distill": {k: results[k] for k in keep if k in results}, "train": results["train"]}
    return save_checkpoint(out, params, cfg, teacher.vocab, meta)


def parse_grid(alphas, temperatures, losses, hidden_weight=0.0, attn_weight=0.0):
    """Every combination of the given alphas, temperatures and KD losses, as DistillConfigs
    (each checked). A single value of each is a grid of one."""
    return [
        DistillConfig(
            alpha=a, temperature=t, loss=k, hidden_weight=hidden_weight, attn_weight=attn_weight
        )
        for k in losses
        for t in temperatures
        for a in alphas
    ]


def run_distill_command(
    teacher_path: str | Path,
    spec: StudentSpec,
    grid: list[DistillConfig],
    tc: TrainConfig,
    seeds: list[int],
    out: str | Path,
    *,
    text: str,
    scratch_baseline: bool = False,
    json_path: str | Path | None = None,
    overwrite: bool = False,
    soft_label_mb: float = 1024.0,
    progress: bool = True,
    log=print,
) -> dict:
    """What ``python -m minicompress distill`` does: check the output path, load the
    teacher, ``run_distill``, then write the best student to ``out`` and the results to
    ``json_path``. Nothing is written before every run has finished. ->  the results
    (the command prints them as a table and draws them: ``report.distill_plots``)."""
    out = check_out_path(out, teacher_path, overwrite)
    if json_path is not None and Path(json_path).resolve() == out.resolve():
        raise ValueError(f"--json {str(json_path)!r} is the same path as --out")
    teacher = load_teacher(teacher_path)
    results, params, cfg = run_distill(
        teacher,
        spec,
        grid,
        tc,
        seeds,
        text=text,
        scratch_baseline=scratch_baseline,
        soft_label_mb=soft_label_mb,
        progress=progress,
        log=log,
    )
    save_student(out, params, cfg, teacher, results)
    log(f"student -> {out}")
    if json_path is not None:
        save_json(json_path, results)
        log(f"results -> {json_path}")
    return results
