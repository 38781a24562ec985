"""A compression recipe: distill -> prune -> quantize -> fine-tune, any subset, in that order.

A recipe is a small TOML file with one table per stage; the keys of a table are the fields
of the technique's own configuration, which checks them (``distill.experiment.StudentSpec``
+ ``distill.trainer.DistillConfig`` + ``nn.train.TrainConfig``; ``prune.pipeline.
PruneConfig``; ``quant.tensor.QuantSpec`` + the activations; ``TrainConfig``)::

    [distill]            # a student trained on the teacher's soft labels
    n_layer = 2          # StudentSpec: blocks, width (default: the teacher's), heads, init
    init = "teacher"
    temperature = 2.0    # DistillConfig
    steps = 300          # TrainConfig of the student's training

    [prune]              # PruneConfig
    method = "neurons"
    sparsity = 0.5
    finetune_steps = 100

    [quantize]           # QuantSpec (default 8-bit symmetric per output channel: the grid
    bits = 8             # the int8 kernels take) and the activations: "dynamic" (per
    activations = "dynamic"   # token, on the int8 kernels) or "none" (weight-only)

    [finetune]           # TrainConfig; through the fake quantization and with the pruning
    steps = 100          # masks held, when the stages before made them

Every value is checked when the recipe is read, before any work: an unknown stage or key,
a stage out of order, an out-of-range value is a ValueError naming the stage and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import tomllib

from minicompress.distill.experiment import INITS, StudentSpec
from minicompress.distill.trainer import DistillConfig
from minicompress.nn.train import TrainConfig
from minicompress.prune.pipeline import PruneConfig
from minicompress.quant.tensor import QuantSpec

STAGES = ("distill", "prune", "quantize", "finetune")  # the order they run in
ACTIVATIONS = ("none", "dynamic")  # what the runtime runs (static: simulation only)

# defaults of the pipeline that differ from the techniques' own: fine-tunes at about 1e-3
# (DESIGN.md), no periodic validation inside a stage (each stage is measured after it)
FINETUNE_DEFAULTS = {"lr": 1e-3, "min_lr": 1e-4, "warmup": 20, "eval_every": 0, "seed": 1}
DISTILL_TRAIN_DEFAULTS = {"eval_every": 0}
PRUNE_DEFAULTS = {"control": False}  # the pipeline reports against the teacher
QUANT_DEFAULTS = {"scheme": "symmetric", "granularity": "channel"}  # the int8 kernels' grid


@dataclass(frozen=True)
class DistillStage:
    student: dict  # StudentSpec fields; n_embd None: the teacher's width
    distill: DistillConfig
    train: TrainConfig

    def student_spec(self, teacher_width: int) -> StudentSpec:
        kw = dict(self.student)
        if kw.get("n_embd") is None:
            kw["n_embd"] = teacher_width
        return StudentSpec(**kw)


@dataclass(frozen=True)
class QuantizeStage:
    spec: QuantSpec
    activations: str = "dynamic"  # "dynamic" (W8A8 on the int8 kernels) or "none"
    embeddings: bool = True  # also the embedding tables (8-bit per row, quant.ptq's default)


@dataclass(frozen=True)
class Recipe:
    distill: DistillStage | None = None
    prune: PruneConfig | None = None
    quantize: QuantizeStage | None = None
    finetune: TrainConfig | None = None
    source: dict = field(default_factory=dict, compare=False)  # the tables as read

    def stages(self) -> list[str]:
        """Names of the stages the recipe runs, in order."""
        return [s for s in STAGES if getattr(self, s) is not None]


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------


def _names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def _build(cls, kwargs: dict, where: str):
    """``cls(**kwargs)``, its TypeError/ValueError prefixed with where it came from."""
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"recipe [{where}]: {e}") from None


def _split(table: dict, stage: str, groups: dict[str, set[str]]) -> dict[str, dict]:
    """Route each key of a stage's table to the configuration that has that field."""
    out = {g: {} for g in groups}
    for key, value in table.items():
        owner = [g for g, names in groups.items() if key in names]
        if not owner:
            allowed = sorted(set().union(*groups.values()))
            raise ValueError(
                f"recipe [{stage}]: unknown key {key!r}; allowed: {', '.join(allowed)}"
            )
        out[owner[0]][key] = value
    return out


def _train_config(kwargs: dict, defaults: dict, stage: str) -> TrainConfig:
    if "steps" not in kwargs:
        raise ValueError(f"recipe [{stage}]: 'steps' is required (optimizer steps)")
    merged = {**defaults, **kwargs}
    if "lr" in kwargs and "min_lr" not in kwargs:
        merged["min_lr"] = min(kwargs["lr"], merged.get("min_lr", kwargs["lr"]))
    return _build(TrainConfig, merged, stage)


def _distill(table: dict) -> DistillStage:
    student_keys = _names(StudentSpec)
    parts = _split(
        table,
        "distill",
        {"student": student_keys, "distill": _names(DistillConfig), "train": _names(TrainConfig)},
    )
    student = parts["student"]
    if "n_layer" not in student:
        raise ValueError("recipe [distill]: 'n_layer' (the student's blocks) is required")
    student.setdefault("n_embd", None)
    student.setdefault("init", "teacher")
    for key in ("n_layer", "n_embd", "n_head"):
        v = student.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"recipe [distill]: {key} must be an integer >= 1; got {v!r}")
    if student["init"] not in INITS:
        raise ValueError(f"recipe [distill]: init must be one of {INITS}; got {student['init']!r}")
    if isinstance(parts["distill"].get("layer_map"), list):  # TOML arrays -> tuples
        parts["distill"]["layer_map"] = tuple(tuple(p) for p in parts["distill"]["layer_map"])
    return DistillStage(
        student,
        _build(DistillConfig, parts["distill"], "distill"),
        _train_config(parts["train"], DISTILL_TRAIN_DEFAULTS, "distill"),
    )


def _quantize(table: dict) -> QuantizeStage:
    parts = _split(
        table, "quantize", {"spec": _names(QuantSpec), "stage": {"activations", "embeddings"}}
    )
    spec = _build(QuantSpec, {**QUANT_DEFAULTS, **parts["spec"]}, "quantize")
    stage = parts["stage"]
    activations = stage.get("activations", "dynamic")
    if activations not in ACTIVATIONS:
        raise ValueError(
            f"recipe [quantize]: activations must be one of {', '.join(ACTIVATIONS)}; got "
            f"{activations!r}"
        )
    embeddings = stage.get("embeddings", True)
    if not isinstance(embeddings, bool):
        raise ValueError(f"recipe [quantize]: embeddings must be true or false; got {embeddings!r}")
    return QuantizeStage(spec, activations, embeddings)


def parse_recipe(tables: dict) -> Recipe:
    """A Recipe from its tables ({stage: {key: value}}, as TOML reads them), checked."""
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"a recipe needs at least one of the stages {', '.join(STAGES)}")
    unknown = [s for s in tables if s not in STAGES]
    if unknown:
        raise ValueError(
            f"recipe: unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}"
        )
    order = [STAGES.index(s) for s in tables]
    if order != sorted(order):
        listed = ", ".join(tables)
        raise ValueError(
            f"recipe: the stages run in the order {', '.join(STAGES)}; the recipe lists {listed}"
        )
    for stage, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"recipe: [{stage}] must be a table of key = value")
    kw = {}
    if "distill" in tables:
        kw["distill"] = _distill(tables["distill"])
    if "prune" in tables:
        _split(tables["prune"], "prune", {"prune": _names(PruneConfig)})
        kw["prune"] = _build(PruneConfig, {**PRUNE_DEFAULTS, **tables["prune"]}, "prune")
    if "quantize" in tables:
        kw["quantize"] = _quantize(tables["quantize"])
    if "finetune" in tables:
        _split(tables["finetune"], "finetune", {"train": _names(TrainConfig)})
        kw["finetune"] = _train_config(tables["finetune"], FINETUNE_DEFAULTS, "finetune")
    return Recipe(**kw, source=tables)


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a TOML recipe file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"recipe {str(p)!r} cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ValueError(f"recipe {str(p)!r} is not UTF-8 text") from None
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"recipe {str(p)!r} is not valid TOML ({e})") from None
    return parse_recipe(tables)


def recipe_dict(recipe: Recipe) -> dict:
    """The recipe as JSON-safe tables (what the checkpoint's metadata records)."""
    out = {}
    for stage in recipe.stages():
        value = getattr(recipe, stage)
        out[stage] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out
