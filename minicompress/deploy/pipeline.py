"""The combined pipeline: run a recipe (``deploy.recipe``) on a trained model, stage by
stage, each stage calling its technique's own public function, and store the result in the
encodings the runtime runs fastest.

    distill   ``distill.experiment.train_student`` (the teacher frozen, the student trained
              through the one loop on the mixed KD loss);
    prune     ``prune.pipeline.prune_model`` (scores, masks, schedule, fine-tuning, removal);
    quantize  ``quant.ptq.quantize_weights`` (the grid is fixed here; the weights move
              again if a fine-tune follows);
    finetune  the one training loop, ``nn.train.train``, through the quantization
              simulation (``quant.linear.FakeQuantLinear``: QAT) when the model is
              quantized, with the pruned weights held at zero (``prune.masks.HoldMasks``)
              when it is pruned.

After every stage the model is measured on the validation windows (the simulation of what
it has become) and the stage's figures are logged.

Storage (``stored_params``), decided by bytes on disk: a pruned weight that takes fewer
bytes as CSR is stored as CSR — with int8 values when it was quantized to 8 bits
symmetric per channel (the same codes: ``kernels.quantize_csr`` is that formula), else
float32; any other quantized weight keeps its codes (``QuantizedTensor``); everything else
float32. Which kernel runs a CSR weight is the runtime's decision
(``compressed.runtime_params``).

``compress`` adds the files: the output is checked before any work, the checkpoint and the
JSON are written only at the end, each atomically, and nothing that exists is replaced.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from minicompress.data import CharTokenizer, builtin_text, make_dataset
from minicompress.deploy.format import file_bytes, read_compressed, save_compressed
from minicompress.deploy.recipe import DistillStage, QuantizeStage, Recipe, recipe_dict
from minicompress.distill.experiment import Teacher, train_student
from minicompress.fileio import save_json
from minicompress.nn.checkpoint import checkpoint_file
from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, count_params, linear_names
from minicompress.nn.train import TrainConfig, evaluate, train
from minicompress.prune.masks import HoldMasks
from minicompress.prune.pipeline import UNSTRUCTURED, PruneConfig, prunable_names, prune_model
from minicompress.prune.sparse import to_sparse_weight
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.ptq import EMBEDDING_SPEC, dequantized_params, quantize_weights
from minicompress.quant.tensor import QuantizedTensor

# ----------------------------------------------------------------------------------------
# the model as it goes through the stages
# ----------------------------------------------------------------------------------------


@dataclass
class Stage:
    """The model between two stages."""

    params: dict  # float32 arrays (pruned weights exactly zero)
    cfg: TransformerConfig
    masks: dict | None = None  # name -> bool (True = kept) of unstructured pruning
    quant: QuantizeStage | None = None  # the grid, once quantized


def quantized(model: Stage) -> dict[str, QuantizedTensor]:
    """The codes of the model's current weights on its grid (empty when not quantized)."""
    if model.quant is None:
        return {}
    q = model.quant
    emb = EMBEDDING_SPEC if q.embeddings else None
    return quantize_weights(model.params, model.cfg, q.spec, embedding_spec=emb)


def simulation(model: Stage) -> tuple[dict, object]:
    """(parameters, linear) of the model's simulation: the dequantized weights, run with
    fake-quantized activations (per token) when the grid says so."""
    q = quantized(model)
    if not q:
        return model.params, DENSE
    linear = FakeQuantLinear(None, "dynamic") if model.quant.activations == "dynamic" else DENSE
    return dequantized_params(model.params, q), linear


def val_loss(model: Stage, data, max_windows: int | None = None) -> float:
    params, linear = simulation(model)
    return evaluate(params, model.cfg, data.val, max_windows, linear=linear)


def _copy(params: dict) -> dict:
    return {k: np.array(v, dtype=np.float32, copy=True) for k, v in params.items()}


# ----------------------------------------------------------------------------------------
# the stages
# ----------------------------------------------------------------------------------------


def distill_stage(model: Stage, stage: DistillStage, vocab, data, progress=True) -> Stage:
    """A student of ``stage``'s shape trained on ``model`` as the frozen teacher."""
    if model.masks is not None or model.quant is not None:
        raise ValueError("distill runs first: the teacher must not be pruned or quantized yet")
    teacher = Teacher(model.params, model.cfg, list(vocab), "<pipeline>")
    spec = stage.student_spec(model.cfg.n_embd)
    params, cfg, _, _ = train_student(
        teacher, spec, stage.distill, stage.train, data, progress=progress, desc="distill"
    )
    return Stage(params, cfg)


def prune_stage(model: Stage, pc: PruneConfig, data, progress=True, baseline=None) -> Stage:
    """``prune_model`` on the current model; unstructured methods leave masks to hold."""
    result = prune_model(
        model.params, model.cfg, data, pc, progress=progress, baseline_loss=baseline
    )
    masks = None
    if pc.method in UNSTRUCTURED:
        masks = {n: result.params[n] != 0 for n in prunable_names(result.cfg)}
    return Stage(result.params, result.cfg, masks, model.quant)


def quantize_stage(model: Stage, qs: QuantizeStage) -> Stage:
    """Fix the grid (the codes are taken from the weights whenever the model is stored or
    measured, so a fine-tune that follows trains the weights behind them)."""
    return replace(model, quant=qs)


def finetune_stage(model: Stage, tc: TrainConfig, data, progress=True) -> Stage:
    """The one training loop on a copy of the model: through the quantization simulation
    (QAT) when quantized, the pruned weights held at zero when pruned."""
    params = _copy(model.params)
    linear = DENSE
    if model.quant is not None:
        linear = FakeQuantLinear(model.quant.spec, model.quant.activations)
    hook = HoldMasks(model.masks) if model.masks else None
    desc = "QAT" if model.quant is not None else "fine-tune"
    train(params, model.cfg, data, tc, linear=linear, after_step=hook, progress=progress, desc=desc)
    return replace(model, params=params)


# ----------------------------------------------------------------------------------------
# storage
# ----------------------------------------------------------------------------------------


def _csr_int8_is_the_same_grid(qt: QuantizedTensor) -> bool:
    s = qt.spec
    return s.bits == 8 and s.scheme == "symmetric" and s.granularity == "channel" and s.narrow


def csr_is_smaller(w: np.ndarray, int8: bool) -> bool:
    """Whether w [K, N] takes fewer bytes as CSR of w.T than dense: CSR stores per non-zero
    a value (4 bytes, or 1 for int8) and a column index (2 bytes when K < 2**15, else 4),
    plus N + 1 row offsets of 4 bytes; dense stores K N values (int8: and N scales in both)."""
    k, n = w.shape
    nnz = int(np.count_nonzero(w))
    value, index = (1 if int8 else 4), (2 if k < 2**15 else 4)
    return nnz * (value + index) + 4 * (n + 1) < k * n * value


def stored_params(model: Stage) -> dict:
    """What the checkpoint stores for each tensor (see the module docstring)."""
    q = quantized(model)
    out = dict(model.params)
    out.update(q)
    for layer in linear_names(model.cfg):
        key = layer + ".w"
        w = model.params[key]
        if key not in q:
            if csr_is_smaller(w, int8=False):
                out[key] = to_sparse_weight(w)
        elif _csr_int8_is_the_same_grid(q[key]) and csr_is_smaller(w, int8=True):
            out[key] = to_sparse_weight(w, int8=True)
    return out


def storage_summary(stored: dict) -> dict[str, int]:
    """How many tensors each storage holds, e.g. {"fp32": 12, "int8": 17, "csr": 4}."""
    from minicompress.deploy.format import encode_tensor

    counts: dict[str, int] = {}
    for obj in stored.values():
        enc = "fp32" if isinstance(obj, np.ndarray) else encode_tensor(obj).encoding
        counts[enc] = counts.get(enc, 0) + 1
    return counts


# ----------------------------------------------------------------------------------------
# running a recipe
# ----------------------------------------------------------------------------------------


@dataclass
class Compressed:
    stored: dict  # name -> array / QuantizedTensor / SparseWeight, for save_compressed
    cfg: TransformerConfig
    model: Stage  # the float32 state behind it
    metrics: dict


def _sparsity(model: Stage) -> float:
    """Fraction of exact zeros over the linear weights of the blocks."""
    names = prunable_names(model.cfg)
    total = sum(model.params[n].size for n in names)
    return 1.0 - sum(np.count_nonzero(model.params[n]) for n in names) / total


def run_recipe(
    params: dict,
    cfg: TransformerConfig,
    vocab: list[str],
    data,
    recipe: Recipe,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    eval_windows: int | None = None,
    baseline_loss: float | None = None,
) -> Compressed:
    """Run ``recipe``'s stages in order on a copy of ``params`` (a trained float model of
    ``cfg``); ``data``: the TextDataset the stages train on and measure with;
    ``baseline_loss``: the model's validation loss on ``eval_windows``, when already known.
    ->  Compressed; ``metrics`` holds the baseline, each stage's figures (val_ppl, its
    change against the baseline, parameters, sparsity, seconds) and the totals."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a deploy.recipe.Recipe; got {type(recipe).__name__}")
    t_start = time.perf_counter()
    model = Stage(_copy(params), cfg)
    base = val_loss(model, data, eval_windows) if baseline_loss is None else baseline_loss
    stages = []
    say = log or (lambda s: None)
    say(f"baseline: val ppl {math.exp(base):.4f}, {count_params(params):,} parameters")
    for name in recipe.stages():
        t0 = time.perf_counter()
        conf = getattr(recipe, name)
        if name == "distill":
            model = distill_stage(model, conf, vocab, data, progress)
        elif name == "prune":
            loss_before = val_loss(model, data, eval_windows)
            model = prune_stage(model, conf, data, progress, baseline=loss_before)
        elif name == "quantize":
            model = quantize_stage(model, conf)
        else:
            model = finetune_stage(model, conf, data, progress)
        loss = val_loss(model, data, eval_windows)
        row = {
            "stage": name,
            "val_ppl": math.exp(loss),
            "delta_vs_baseline": math.exp(loss - base) - 1.0,
            "params": count_params(model.params),
            "sparsity": _sparsity(model),
            "layer_shapes": [[b.n_head, b.mlp_width] for b in _shapes(model)],
            "seconds": time.perf_counter() - t0,
        }
        stages.append(row)
        say(
            f"{name}: val ppl {row['val_ppl']:.4f} ({100 * row['delta_vs_baseline']:+.2f}%), "
            f"{row['params']:,} parameters, sparsity {row['sparsity']:.3f}, "
            f"{row['seconds']:.0f} s"
        )
    stored = stored_params(model)
    metrics = {
        "recipe": recipe_dict(recipe),
        "baseline_val_ppl": math.exp(base),
        "baseline_params": count_params(params),
        "val_ppl": stages[-1]["val_ppl"] if stages else math.exp(base),
        "stages": stages,
        "storage": storage_summary(stored),
        "seconds": time.perf_counter() - t_start,
    }
    return Compressed(stored, model.cfg, model, metrics)


def _shapes(model: Stage):
    from minicompress.nn.model import layer_shapes

    return layer_shapes(model.params, model.cfg)


def quant_meta(model: Stage) -> dict:
    """The checkpoint's one quantization record, in the form ``quant.pipeline`` writes:
    ``{"quantization": {"weights": spec.to_dict(), "activations": "none" | "dynamic",
    "embeddings": bool}}`` ({} when the model is not quantized). ``compressed.load_runtime``
    and ``quant.pipeline.simulation_linear`` read it."""
    if model.quant is None:
        return {}
    q = model.quant
    record = {"weights": q.spec.to_dict(), "activations": q.activations, "embeddings": q.embeddings}
    return {"quantization": record}


# ----------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------


def check_new_output(flag: str, path: str | Path) -> Path:
    """Refuse an output that exists (nothing is overwritten) or cannot be written, before
    any work: the nearest existing folder above it must be a writable folder."""
    p = Path(path)
    if p.exists():
        raise ValueError(f"{flag} {str(p)!r} already exists; choose a new path")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(p)!r} cannot be written: {str(parent)!r} is not writable")
    return p


def compress(
    model_path: str | Path,
    recipe: Recipe,
    out: str | Path,
    json_path: str | Path | None = None,
    text: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Run ``recipe`` on the checkpoint ``model_path`` and write the compressed checkpoint
    to ``out`` (a folder, which gets ``model.mc``, or a ``.mc`` file) and the metrics to
    ``json_path``. ``text``: the corpus the model was trained on (default the built-in
    one). Both outputs are checked before any work and written only when every stage has
    run; an existing file is never replaced. ->  the metrics (with ``file_bytes``,
    ``baseline_file_bytes``, ``compression_ratio``)."""
    out_file = check_new_output("--out", checkpoint_file(out) if Path(out).suffix != ".mc" else out)
    if json_path is not None:
        check_new_output("--json", json_path)
    model = read_compressed(model_path)
    if set(model.encodings.values()) != {"fp32"}:
        raise ValueError(f"{str(model_path)!r} is already compressed: give the float model")
    params, cfg, vocab = model.params, model.cfg, model.vocab
    data = make_dataset(text or builtin_text(), cfg.block_size, tokenizer=CharTokenizer(vocab))
    result = run_recipe(params, cfg, vocab, data, recipe, progress=progress, log=log)
    m = result.metrics
    meta_out = {"recipe": m["recipe"], **quant_meta(result.model), "source": str(model_path)}
    written = save_compressed(out_file, result.stored, result.cfg, vocab, meta_out)
    m["file_bytes"] = file_bytes(written)
    m["baseline_file_bytes"] = file_bytes(model_path)
    m["compression_ratio"] = m["baseline_file_bytes"] / m["file_bytes"]
    m["out"] = str(written)
    if json_path is not None:
        save_json(json_path, m)
    if log:
        log(
            f"wrote {written}: {m['file_bytes']:,} bytes ({m['compression_ratio']:.1f}x smaller "
            f"than {m['baseline_file_bytes']:,}), val ppl {m['val_ppl']:.4f} (baseline "
            f"{m['baseline_val_ppl']:.4f})"
        )
    return m
