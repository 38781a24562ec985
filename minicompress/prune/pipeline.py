"""One pruning run, as the ``prune`` command does it: score, mask or remove, fine-tune
through the training loop, measure.

``prune_model`` works on arrays (the CLI, the experiments and the tutorials call it);
``run_prune`` adds the files: it loads a checkpoint, saves the pruned one, writes the JSON.

The steps:
1. unstructured methods (magnitude, gradient, taylor, movement, random) mask single block
   weights (``prunable_names``) — per tensor or globally, or N:M; structured methods
   (heads, neurons, layers) mask whole groups (``structured.structure_masks``);
2. the masks follow a schedule (one-shot, iterative, cubic) while the model fine-tunes
   (``gradual.GradualPruner`` as the loop's after-step hook), or with a regularizer, the
   model first trains under the penalty's proximal step for 2/3 of the steps, is pruned
   once (exactly-zero weights / groups first) and recovers for the last third;
3. structured methods then remove the masked groups physically (a smaller model);
4. the result is measured on every validation window against the model before pruning
   and, when fine-tuned, against the same fine-tune of the unpruned model (``control``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import numpy as np

from minicompress.data.corpus import lm_batch
from minicompress.nn.model import count_params, layer_shapes
from minicompress.nn.train import TrainConfig, evaluate, train
from minicompress.prune import groups as G
from minicompress.prune.gradual import GradualPruner
from minicompress.prune.masks import (
    chain,
    check_sparsity,
    global_masks,
    local_masks,
    nm_mask,
    parse_nm,
    zero_fraction,
)
from minicompress.prune.regularizers import (
    GroupLasso,
    L1Penalty,
    ProximalStep,
    check_lambda,
)
from minicompress.prune.schedules import SCHEDULES, OneShot, check_fraction, make_schedule
from minicompress.prune.scores import (
    CRITERIA,
    Movement,
    element_scores,
    magnitude_scores,
    mean_gradients,
    structure_scores,
)
from minicompress.prune.sparse import save_sparse
from minicompress.prune.structured import (
    SCOPES,
    remove_structures,
    select_structures,
    structure_masks,
)

UNSTRUCTURED = ("magnitude", "gradient", "taylor", "movement", "random")
STRUCTURED = ("heads", "neurons", "layers")
METHODS = UNSTRUCTURED + STRUCTURED
REGULARIZERS = ("l1", "group-lasso")
STORES = ("dense", "csr", "csr-int8")  # how run_prune writes the pruned model


def prunable_names(cfg) -> list[str]:
    """The weights unstructured pruning acts on: every linear weight of every block (the
    qkv, attention output, MLP fc and projection matrices; 94% of the default teacher).
    Biases, LayerNorms, embeddings and the output head stay dense."""
    return [
        f"blocks.{i}.{layer}.w"
        for i in range(cfg.n_layer)
        for layer in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    ]


@dataclass(frozen=True)
class PruneConfig:
    """What to prune, how, and how to fine-tune. Mirrors the ``prune`` command's flags."""

    method: str = "magnitude"  # an element score (UNSTRUCTURED) or a structure (STRUCTURED)
    sparsity: float | None = None  # fraction pruned; None only with nm or a group lasso
    criterion: str = "l2"  # group score of heads / neurons / layers: l1, l2, mean_abs
    scope: str = "local"  # "local": per tensor / per block; "global": one threshold overall
    schedule: str = "oneshot"  # oneshot, iterative, cubic (interleaved with fine-tuning)
    prune_end: float | None = None  # fraction of the steps by which a gradual schedule is
    # at its final sparsity (None: 2/3; the rest recovers)
    prune_events: int | None = None  # mask updates of a gradual schedule (None: cubic 10,
    # iterative 5)
    regularizer: str | None = None  # "l1" (unstructured) or "group-lasso" (heads, neurons)
    lam: float = 0.0  # lambda of the regularizer
    finetune_steps: int = 0  # optimizer steps of fine-tuning (0: prune only)
    nm: str | None = None  # an N:M pattern such as "2:4" (unstructured methods, one-shot)
    lr: float = 1e-3  # fine-tuning peak learning rate (DESIGN.md: about 1e-3, not 6e-3)
    batch_size: int = 16  # B of the fine-tuning batches
    warmup: int = 20  # fine-tuning warmup steps (fewer when there are fewer steps)
    calib_batches: int = 8  # batches whose mean gradient the gradient / taylor scores use
    control: bool = True  # also fine-tune the unpruned model the same way, as the reference
    eval_windows: int | None = None  # validation windows measured (None: all of them)
    seed: int = 0  # batches, random scores

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.sparsity is not None:
            check_sparsity(self.sparsity)
        if self.criterion not in CRITERIA:
            raise ValueError(
                f"criterion must be one of {', '.join(CRITERIA)}; got {self.criterion!r}"
            )
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {self.scope!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}"
            )
        check_lambda(self.lam)
        if self.prune_end is not None:
            check_fraction(self.prune_end, "prune_end")
        if self.prune_events is not None:
            v = self.prune_events
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"prune_events must be an integer >= 1; got {v!r}")
        for name in ("finetune_steps", "warmup", "calib_batches", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0; got {v!r}")
        if self.calib_batches < 1:
            raise ValueError(f"calib_batches must be >= 1; got {self.calib_batches}")
        self._check_combination()

    def _check_combination(self) -> None:
        structured = self.method in STRUCTURED
        gradual = self.schedule != "oneshot"
        if self.nm is not None:
            n, m = parse_nm(self.nm)
            if structured:
                raise ValueError(f"--nm applies to single weights, not to method {self.method!r}")
            if gradual:
                raise ValueError("an N:M pattern is applied at once: use schedule 'oneshot'")
            if self.sparsity is not None and not math.isclose(self.sparsity, 1 - n / m):
                raise ValueError(
                    f"an {self.nm} pattern has sparsity {1 - n / m:g}; got sparsity {self.sparsity}"
                )
        if self.regularizer is not None:
            if self.regularizer not in REGULARIZERS:
                allowed = ", ".join(REGULARIZERS)
                raise ValueError(f"regularizer must be one of {allowed}; got {self.regularizer!r}")
            want = ("heads", "neurons") if self.regularizer == "group-lasso" else UNSTRUCTURED
            if self.method not in want:
                raise ValueError(
                    f"regularizer {self.regularizer!r} goes with methods {', '.join(want)}; "
                    f"got method {self.method!r}"
                )
            if self.finetune_steps < 3:
                raise ValueError("a regularizer trains: give finetune_steps >= 3")
            if gradual:
                raise ValueError("with a regularizer the model is pruned once: schedule 'oneshot'")
        if self.sparsity is None and self.nm is None and self.regularizer != "group-lasso":
            raise ValueError("sparsity is required (a fraction in [0, 1])")
        if self.method == "movement" and self.finetune_steps < 2:
            raise ValueError("movement scores accumulate while fine-tuning: finetune_steps >= 2")
        if not gradual and (self.prune_end is not None or self.prune_events is not None):
            raise ValueError(
                "prune_end and prune_events shape a gradual schedule: use schedule 'cubic' or "
                f"'iterative', not {self.schedule!r}"
            )
        if gradual and self.finetune_steps < 1:
            raise ValueError(
                f"schedule {self.schedule!r} prunes while fine-tuning: finetune_steps >= 1"
            )

    def train_config(self) -> TrainConfig:
        """The fine-tuning schedule: warmup then cosine from ``lr`` to lr / 10."""
        steps = max(1, self.finetune_steps)
        return TrainConfig(
            batch_size=self.batch_size,
            steps=steps,
            lr=self.lr,
            min_lr=self.lr / 10,
            warmup=min(self.warmup, steps // 5),
            eval_every=0,
            seed=self.seed,
        )


@dataclass
class PruneResult:
    params: dict  # the pruned (and, for structures, shrunk) model
    cfg: object  # its config (fewer layers after method "layers")
    metrics: dict  # val_ppl, baseline_val_ppl, sparsity, ... (see ``prune_model``)
    control_params: dict | None = None  # the unpruned model after the same fine-tune


def _group_entries(params: dict, cfg, kind: str) -> int:
    """Entries that belong to the groups of ``kind`` (what structured pruning acts on)."""
    return sum(
        params[p.name].size
        for i in range(cfg.n_layer)
        for p in G.structure_parts(params, cfg, kind, i)
    )


def _keep_from_masks(params: dict, cfg, kind: str, masks: dict) -> list[np.ndarray]:
    """Which groups a structure mask keeps (a group is kept if any of its entries is)."""
    as_values = {**params, **{n: m.astype(np.float32) for n, m in masks.items()}}
    if kind == "layers":
        rows = [
            G.gather_groups(as_values, G.structure_parts(params, cfg, kind, i)).any()
            for i in range(cfg.n_layer)
        ]
        return [np.array(rows, dtype=bool)]
    return [
        G.gather_groups(as_values, G.structure_parts(params, cfg, kind, i)).any(axis=1)
        for i in range(cfg.n_layer)
    ]


def _structure_mask_fn(cfg, pc: PruneConfig, geometry: dict):
    """(values, sparsity, keep) -> masks zeroing the lowest-scoring groups; sparsity None:
    the groups that are exactly zero (after group lasso)."""

    def mask_fn(values: dict, sparsity: float, keep_before) -> dict:
        group_scores = structure_scores(values, cfg, pc.method, pc.criterion)
        if pc.sparsity is None:  # group lasso without a target: drop the zero groups
            keep = [s > 0 for s in group_scores]
            for i, k in enumerate(keep):
                if not k.any():
                    raise ValueError(
                        f"group lasso (lambda={pc.lam}) zeroed every {pc.method[:-1]} of block "
                        f"{i}: lower lambda, or give a sparsity"
                    )
        else:
            keep = select_structures(group_scores, sparsity, pc.method, pc.scope)
        return structure_masks(geometry, cfg, pc.method, keep)

    return mask_fn


def _calibration(data, cfg, pc: PruneConfig) -> list:
    rng = np.random.default_rng([pc.seed, 2])  # [seed, 1] is the fine-tuning batches' stream
    return [
        lm_batch(data.train, pc.batch_size, cfg.block_size, rng) for _ in range(pc.calib_batches)
    ]


def _schedule(pc: PruneConfig, final: float | None):
    steps = pc.finetune_steps
    if pc.regularizer is not None:  # train under the penalty first, prune once, recover
        return OneShot(1.0 if final is None else final, start=(2 * steps) // 3)
    start = 0
    if pc.method == "movement":  # scores need some steps to accumulate
        start = max(1, steps // 3) if pc.schedule == "oneshot" else max(1, steps // 10)
    return make_schedule(pc.schedule, final, steps, start, end=pc.prune_end, events=pc.prune_events)


def _scores_and_masks(pc: PruneConfig, cfg, data, work: dict, names: list, movement):
    """The method's (scores_fn, mask_fn, final sparsity) for ``GradualPruner``."""
    if pc.method in STRUCTURED:
        return (lambda p: p), _structure_mask_fn(cfg, pc, work), pc.sparsity
    if pc.method == "magnitude":
        scores_fn = lambda p: {n: magnitude_scores(p[n]) for n in names}  # noqa: E731
    elif pc.method in ("gradient", "taylor"):
        calib = _calibration(data, cfg, pc)  # the same batches at every pruning event
        scores_fn = lambda p: element_scores(  # noqa: E731
            pc.method, p, names, mean_gradients(p, cfg, calib, names)
        )
    elif pc.method == "random":  # drawn once: the masks of a schedule nest
        fixed = element_scores("random", work, names, rng=np.random.default_rng([pc.seed, 3]))
        scores_fn = lambda p: fixed  # noqa: E731
    else:
        scores_fn = lambda p: movement.scores  # noqa: E731
    if pc.nm is None:
        return scores_fn, (global_masks if pc.scope == "global" else local_masks), pc.sparsity
    n_keep, m = parse_nm(pc.nm)
    nm_fn = lambda s, sparsity, keep: {k: nm_mask(v, n_keep, m) for k, v in s.items()}  # noqa: E731
    return scores_fn, nm_fn, 1 - n_keep / m


def _loss_record(loss) -> dict | None:
    """What the fine-tune's loss was, for the metrics: None (cross-entropy), or the loss's
    class name and its ``config`` dataclass (a ``DistillLoss``'s alpha, temperature, ...)."""
    if loss is None:
        return None
    config = getattr(loss, "config", None)
    fields = asdict(config) if is_dataclass(config) and not isinstance(config, type) else {}
    return {"hook": type(loss).__name__, **fields}


def prune_model(
    params: dict,
    cfg,
    data,
    pc: PruneConfig,
    *,
    progress: bool = True,
    baseline_loss: float | None = None,
    control_loss: float | None = None,
    loss=None,
) -> PruneResult:
    """Prune a copy of ``params`` as ``pc`` says (the input is not modified).

    data: a ``TextDataset`` (fine-tuning batches from ``data.train``, measurements on
    ``data.val``); baseline_loss / control_loss: the validation loss of the unpruned model
    before / after the same fine-tune, when already known (experiments reuse them);
    loss: the fine-tune's loss hook (``nn.train.LossFn``) for the pruned model and the
    control alike, e.g. ``distill.trainer.self_distill_loss`` (KD from the unpruned model;
    None: next-token cross-entropy); refused if it trains arrays of its own.
    -> PruneResult; ``metrics`` holds val_loss, val_ppl, baseline_val_ppl, control_val_ppl
    (when fine-tuned), delta_vs_baseline and delta_vs_control (relative change of val ppl),
    sparsity (measured over the weights the method prunes), nonzero_params, params,
    layer_shapes, events (step, sparsity), kept (structured methods: the original indices of
    the heads / neurons of each block, or of the layers, that remain) and seconds.
    """
    t_start = time.perf_counter()
    layer_shapes(params, cfg)  # refuse a model that is not one of cfg before any work
    if getattr(loss, "params", None):  # the pruned run would hand them on to the control
        raise ValueError(
            f"loss {type(loss).__name__} trains arrays of its own ({', '.join(loss.params)}): "
            "the pruned model and the control need a loss without them (e.g. distillation of "
            "the logits only, hidden_weight 0)"
        )
    work = {k: np.array(v, dtype=np.float32, copy=True) for k, v in params.items()}
    tc = pc.train_config()
    if baseline_loss is None:
        baseline_loss = evaluate(params, cfg, data.val, pc.eval_windows)
    structured = pc.method in STRUCTURED
    names = prunable_names(cfg)

    # 1. scores and masks
    movement = Movement(work, names) if pc.method == "movement" else None
    scores_fn, mask_fn, final = _scores_and_masks(pc, cfg, data, work, names, movement)
    pruner = GradualPruner(_schedule(pc, final), scores_fn, mask_fn)

    # 2. fine-tuning, with the masks (and the regularizer) as after-step hooks
    prox = None
    if pc.regularizer is not None:
        penalty = (
            L1Penalty(tuple(names), pc.lam)
            if pc.regularizer == "l1"
            else GroupLasso(cfg, (pc.method,), pc.lam)
        )
        prox = ProximalStep(penalty, until=pruner.schedule.start)
    pruner.start(work)
    if pc.finetune_steps > 0:  # movement scores first, then the penalty, then the masks
        hooks = chain(movement, prox, pruner)
        train(
            work, cfg, data, tc, loss=loss, after_step=hooks, progress=progress,
            desc=f"prune {pc.method}",
        )  # fmt: skip
    if pruner.masks is None:  # sparsity 0: nothing was pruned
        pruner.masks = {}

    # 3. structures leave physically
    out_cfg, kept = cfg, None
    if structured:
        before = _group_entries(work, cfg, pc.method)
        if pruner.masks:
            keep = _keep_from_masks(work, cfg, pc.method, pruner.masks)
            work, out_cfg = remove_structures(work, cfg, pc.method, keep)
            kept = [np.flatnonzero(k).tolist() for k in keep]  # original indices that stay
        sparsity = 1.0 - _group_entries(work, out_cfg, pc.method) / before
    else:
        sparsity = zero_fraction(work, names)

    # 4. measurements
    val_loss = evaluate(work, out_cfg, data.val, pc.eval_windows)
    control_params = None
    if pc.finetune_steps > 0 and pc.control and control_loss is None:
        control_params = {k: np.array(v, dtype=np.float32, copy=True) for k, v in params.items()}
        train(control_params, cfg, data, tc, loss=loss, progress=progress, desc="control")
        control_loss = evaluate(control_params, cfg, data.val, pc.eval_windows)
    metrics = {
        "method": pc.method,
        "config": asdict(pc),
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss),
        "baseline_val_ppl": math.exp(baseline_loss),
        "delta_vs_baseline": math.exp(val_loss - baseline_loss) - 1.0,
        "sparsity": sparsity,
        "nonzero_params": int(sum(np.count_nonzero(a) for a in work.values())),
        "params": count_params(work),
        "baseline_params": count_params(params),
        "layer_shapes": [list(s) for s in layer_shapes(work, out_cfg)],
        "events": [[int(s), float(v)] for s, v in pruner.events],
        "kept": kept,
        "loss": _loss_record(loss),
        "seconds": time.perf_counter() - t_start,
    }
    if pc.finetune_steps > 0 and control_loss is not None:
        metrics["control_val_ppl"] = math.exp(control_loss)
        metrics["delta_vs_control"] = math.exp(val_loss - control_loss) - 1.0
    return PruneResult(work, out_cfg, metrics, control_params)


def run_prune(
    model: str | Path,
    pc: PruneConfig,
    out: str | Path,
    json_path: str | Path | None = None,
    *,
    text: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    store: str = "dense",
    make_loss=None,
) -> dict:
    """The ``prune`` command: load the checkpoint ``model``, prune it (``prune_model``), save
    the pruned model to ``out`` (a folder, or a file name ending in ``.mc``) and the metrics
    to ``json_path``.

    store: ``"dense"`` (every tensor fp32: ``load_checkpoint``, ``eval`` and ``generate``
    read it), ``"csr"`` or ``"csr-int8"`` (the linear weights at least ``sparse.BREAK_EVEN``
    sparse in the "csr" encoding, float32 or int8 values: ``sparse.load_sparse`` reads it).
    make_loss: (params, cfg) -> the fine-tune's loss hook, built on the loaded model (e.g.
    ``distill.trainer.self_distill_loss``: KD from the unpruned model); None: cross-entropy.

    The metrics add ``file_bytes`` and ``baseline_file_bytes`` (the two checkpoint files'
    bytes on disk) to ``prune_model``'s. Refused before any work: ``out`` is the input model,
    or already holds a checkpoint and ``overwrite`` is False. Nothing is written when the run
    fails (every file is written atomically, at the end).
    """
    from minicompress.data.corpus import CharTokenizer, builtin_text, make_dataset
    from minicompress.fileio import save_json
    from minicompress.nn.checkpoint import checkpoint_file, load_checkpoint, save_checkpoint

    src, dst = checkpoint_file(model), checkpoint_file(out)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"--out {str(out)!r} is the input model: choose another folder")
    if dst.exists() and not overwrite:
        raise ValueError(
            f"--out {str(out)!r} already holds a checkpoint; pass --overwrite to replace it "
            "or choose another folder"
        )
    if json_path is not None and Path(json_path).is_dir():
        raise ValueError(f"--json {str(json_path)!r} is a folder: give a file name")
    if store not in STORES:
        raise ValueError(f"store must be one of {', '.join(STORES)}; got {store!r}")
    params, cfg, vocab, meta = load_checkpoint(src)
    data = make_dataset(
        builtin_text() if text is None else text, cfg.block_size, tokenizer=CharTokenizer(vocab)
    )
    loss = None if make_loss is None else make_loss(params, cfg)
    result = prune_model(params, cfg, data, pc, progress=progress, loss=loss)
    metrics = dict(result.metrics)
    meta_out = {"source": meta, "prune": metrics}
    if store == "dense":
        written = save_checkpoint(out, result.params, result.cfg, vocab, meta_out)
    else:
        written = save_sparse(
            out, result.params, result.cfg, vocab, meta_out, int8=store == "csr-int8"
        )
    metrics["file_bytes"] = written.stat().st_size
    metrics["baseline_file_bytes"] = src.stat().st_size
    metrics["model"] = str(src)
    metrics["out"] = str(written)
    if json_path is not None:
        save_json(json_path, metrics)
    return metrics
