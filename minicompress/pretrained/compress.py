"""Compress a pretrained encoder with the package's own techniques, and run the result.

Nothing here is a new formula: pruning is ``prune`` (magnitude masks, head removal),
quantization is ``quant`` (``ptq.quantize_weights``, ``calibrate``,
``linear.FakeQuantLinear``) and the int8 runtime is ``quant.runtime`` on the
``kernels``' int8 GEMM. This module chooses, from one ``CompressConfig``, what runs:

- weights only (``activations="none"``): the dequantized weights in the dense model (the
  exact simulation of weight-only quantization; its speed is the float model's);
- W8A8 (``"dynamic"`` or ``"static"``) with symmetric per-channel or per-tensor weights of
  <= 8 bits: **the real int8 kernels** (``quant.runtime.Int8Linear``), int32 accumulation;
  dynamic: each token's activations quantized to uint8 with its own range at run time;
  static: one range per layer, calibrated ahead of time on corpus sentences outside the
  fidelity set. Other weight grids (asymmetric, group-wise) run in the simulation
  (``FakeQuantLinear``), which computes the same numbers without the speed.

``CompressedModel.stored`` is the model as the checkpoint keeps it (``deploy.format``):
quantized tensors as ``QuantizedTensor`` (their codes), weights pruned to at least
``prune.sparse.BREAK_EVEN`` as CSR (``SparseWeight``) when nothing quantizes them, the rest
float32 arrays; ``meta`` is what the runtime needs to run it again (``pretrained.saved``).

Only the linear layers are quantized (and the embedding tables, 8-bit per row, as
``quant.ptq`` does by default); LayerNorm, softmax, GELU and the attention products stay in
float (DESIGN.md: quantizing an encoder's norms wrecks it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from minicompress.data import Batch
from minicompress.deploy.runtime import Runtime, RuntimeConfig, RuntimeLinear, default_handlers
from minicompress.kernels import PackedInt8Linear
from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, linear_names
from minicompress.prune.masks import apply_masks, check_sparsity, local_masks
from minicompress.prune.scores import magnitude_scores
from minicompress.prune.sparse import BREAK_EVEN, pack_sparse
from minicompress.prune.structured import prune_structures
from minicompress.quant.calibrate import calibrate, static_qparams
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.ptq import dequantized_params, quantize_weights
from minicompress.quant.runtime import INT8, Int8Linear, pack_int8_params
from minicompress.quant.tensor import QuantSpec

GRANULARITIES = ("tensor", "channel", "group")
ACTIVATIONS = ("none", "static", "dynamic")
SCHEMES = ("symmetric", "asymmetric")


@dataclass(frozen=True)
class CompressConfig:
    """What to do to the encoder. The default is W8 per-channel weight-only."""

    bits: int | None = 8  # weight bits, 2..8; None: weights stay float32 (pruning alone)
    granularity: str = "channel"  # one weight range per "tensor", output "channel" or "group"
    group_size: int = 32  # G: weights per range along the input axis, for "group"
    scheme: str = "symmetric"  # the int8 kernels take symmetric weights; or "asymmetric"
    activations: str = "none"  # "none" (weights only), "dynamic" (per token), "static"
    calibration: str = "minmax"  # observer of static activation ranges (quant.observers)
    calibration_sentences: int = 64  # corpus sentences (outside the fidelity set) to calibrate
    sparsity: float = 0.0  # fraction of each linear weight pruned by magnitude (per layer)
    head_sparsity: float = 0.0  # fraction of each block's attention heads removed (L2 norm)

    def __post_init__(self):
        if self.bits is not None and (
            isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8
        ):
            raise ValueError(f"bits must be an integer in [2, 8] or None; got {self.bits!r}")
        for name, allowed in (
            ("granularity", GRANULARITIES),
            ("activations", ACTIVATIONS),
            ("scheme", SCHEMES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise TypeError(f"group_size must be an integer; got {self.group_size!r}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1; got {self.group_size}")
        if self.activations != "none" and self.bits is None:
            raise ValueError("activations are quantized with the weights: give bits (8)")
        n = self.calibration_sentences
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"calibration_sentences must be an integer >= 1; got {n!r}")
        for name in ("sparsity", "head_sparsity"):
            check_sparsity(getattr(self, name), name)
        if self.head_sparsity >= 1:
            raise ValueError("head_sparsity must be < 1: a block needs at least one head")

    def label(self) -> str:
        """A short name: ``W8 channel``, ``W8A8 dynamic``, ``W4 group32``, ``sparse 50%``."""
        parts = []
        if self.bits is not None:
            grid = (
                "group" + str(self.group_size) if self.granularity == "group" else self.granularity
            )
            acts = "" if self.activations == "none" else f"A8 {self.activations}"
            parts.append(
                f"W{self.bits}{acts} {grid}" + (" asym" if self.scheme == "asymmetric" else "")
            )
        if self.sparsity:
            parts.append(f"sparse {self.sparsity:.0%}")
        if self.head_sparsity:
            parts.append(f"heads -{self.head_sparsity:.0%}")
        return " + ".join(parts) or "fp32"

    def weight_spec(self) -> QuantSpec | None:
        """The ``QuantSpec`` of the linear weights (None: not quantized)."""
        if self.bits is None:
            return None
        if self.granularity == "group":
            # groups of G consecutive inputs (axis 0 of [K, N]) within each output column
            return QuantSpec(self.bits, self.scheme, "group", axis=-1, group_size=self.group_size)
        return QuantSpec(self.bits, self.scheme, self.granularity)


class CompressedModel(NamedTuple):
    params: dict  # what the model runs on (dequantized, masked, or packed int8 weights)
    cfg: TransformerConfig  # the (possibly shrunk) encoder's config
    linear: object  # DENSE, FakeQuantLinear (simulation) or quant.runtime.Int8Linear (kernels)
    runtime: str  # "float", "simulation" or "int8 kernels"
    qtensors: dict  # {parameter name: QuantizedTensor} (empty without quantization)
    info: dict  # what was done: sparsity, heads kept, calibrated layers
    stored: dict  # name -> what the checkpoint stores (QuantizedTensor, SparseWeight, array)
    meta: dict  # what the checkpoint records of the compression (see ``compression_meta``)


def kernel_runs(cc: CompressConfig) -> bool:
    """Whether the int8 kernels can run these weights with quantized activations: symmetric
    codes of <= 8 bits with one scale per output channel or per tensor."""
    return (
        cc.activations in ("dynamic", "static")
        and cc.scheme == "symmetric"
        and cc.granularity in ("tensor", "channel")
    )


def compression_meta(cc: CompressConfig, info: dict, act_qparams: dict | None) -> dict:
    """What a checkpoint records so that it runs as it was measured: ``quantization``, the
    package's one quantization record (as ``quant.pipeline`` makes it: the weight grid, the
    activation mode, the calibrated static ranges; read by
    ``quant.pipeline.simulation_linear`` and the runtimes), and ``compress`` (the whole
    ``CompressConfig`` and ``info``)."""
    meta: dict = {"compress": {"config": dataclasses.asdict(cc), **info}}
    spec = cc.weight_spec()
    if spec is not None:
        record = {"weights": spec.to_dict(), "activations": cc.activations}
        if act_qparams is not None:
            record["act_qparams"] = {n: [float(s), int(z)] for n, (s, z) in act_qparams.items()}
        meta["quantization"] = record
    return meta


def stored_tensors(params: dict, cfg: TransformerConfig, qtensors: dict) -> dict:
    """The model as a checkpoint stores it: each quantized tensor its ``QuantizedTensor``;
    without quantization, each linear weight pruned to at least ``BREAK_EVEN`` as CSR
    (``prune.sparse.pack_sparse``: smaller on disk, and the CSR kernels run it); the rest
    float32 arrays. ``params``: the float (pruned) parameters that were quantized."""
    if qtensors:
        return {**params, **qtensors}
    return pack_sparse(params, cfg, BREAK_EVEN)


def prune_linear_weights(params: dict, cfg: TransformerConfig, sparsity: float) -> dict:
    """Each linear weight with the ``sparsity`` share of its smallest |w| set to 0
    (``prune.masks.local_masks`` on ``prune.scores.magnitude_scores``). A new dict."""
    names = [n + ".w" for n in linear_names(cfg)]
    masks = local_masks({n: magnitude_scores(params[n]) for n in names}, sparsity)
    return apply_masks(params, masks)


def calibration_batches(model, texts: list[str], batch_size: int = 16) -> list[Batch]:
    """``texts`` tokenized into padded ``Batch``es (for ``quant.calibrate``: the observers
    skip the padding)."""
    tb = model.tokenizer.encode(texts)
    return [
        Batch(tb.ids[i : i + batch_size], None, tb.pad_mask[i : i + batch_size],
              tb.token_types[i : i + batch_size])
        for i in range(0, len(texts), batch_size)
    ]  # fmt: skip


def compress(model, cc: CompressConfig, calibration_texts: list[str] | None = None):
    """Prune, then quantize, the encoder of ``model`` (a ``PretrainedModel``) as ``cc``
    says.  ->  ``CompressedModel``. ``calibration_texts``: sentences for static ranges
    (needed only with ``activations="static"``; keep them apart from the evaluation set)."""
    if not isinstance(cc, CompressConfig):
        raise TypeError(f"cc must be a CompressConfig; got {type(cc).__name__}")
    params, cfg, info = model.params, model.cfg, {}
    act_qparams = None
    if cc.head_sparsity:
        params, cfg, keep = prune_structures(params, cfg, "heads", cc.head_sparsity)
        info["heads_kept"] = [int(k.sum()) for k in keep]
    if cc.sparsity:
        params = prune_linear_weights(params, cfg, cc.sparsity)
        info["sparsity"] = cc.sparsity
    spec = cc.weight_spec()
    if spec is None:
        stored = stored_tensors(params, cfg, {})
        meta = compression_meta(cc, info, None)
        return CompressedModel(params, cfg, DENSE, "float", {}, info, stored, meta)
    qtensors = quantize_weights(params, cfg, spec)
    stored = stored_tensors(params, cfg, qtensors)
    simulated = dequantized_params(params, qtensors)
    if cc.activations == "static":
        if not calibration_texts:
            raise ValueError("static activations need calibration sentences (calibration_texts)")
        batches = calibration_batches(model, calibration_texts)
        ranges = calibrate(simulated, cfg, batches, observer=cc.calibration, progress=False)
        info["calibrated_layers"] = len(ranges)
        act_qparams = static_qparams(ranges)
    meta = compression_meta(cc, info, act_qparams)
    if cc.activations == "none":
        return CompressedModel(simulated, cfg, DENSE, "float", qtensors, info, stored, meta)
    if kernel_runs(cc):
        packed = pack_int8_params(params, cfg, qtensors)
        linear = INT8 if act_qparams is None else Int8Linear(act_qparams)
        return CompressedModel(packed, cfg, linear, "int8 kernels", qtensors, info, stored, meta)
    fq = FakeQuantLinear(activations=cc.activations, act_qparams=act_qparams)
    return CompressedModel(simulated, cfg, fq, "simulation", qtensors, info, stored, meta)


def compress_beside(model, cc: CompressConfig, held_out: list[str]) -> CompressedModel:
    """``compress`` with the static ranges (if any) calibrated on the first
    ``cc.calibration_sentences`` corpus prose sentences that are not in ``held_out`` (the
    sentences the model will be evaluated on)."""
    from minicompress.pretrained.sentences import sentences_outside

    calibration = None
    if cc.activations == "static":
        calibration = sentences_outside(held_out)[: cc.calibration_sentences]
    return compress(model, cc, calibration)


def encoder_runtime(cm: CompressedModel, threads: int = 2) -> Runtime | None:
    """The inference runtime (``deploy.runtime.Runtime``: inference ops, the batch split
    between ``threads`` threads) of a model that runs in float or on the int8 kernels, with
    its own ``Int8Linear`` for the packed layers (static ranges included); None for a
    simulation, which has no faster form."""
    if cm.runtime == "simulation":
        return None
    handlers = default_handlers()
    if isinstance(cm.linear, Int8Linear):
        handlers[PackedInt8Linear] = cm.linear
    return Runtime(cm.params, cm.cfg, RuntimeConfig(threads=threads), RuntimeLinear(handlers))
