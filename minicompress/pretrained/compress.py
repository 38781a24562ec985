"""Compress a pretrained encoder with the package's own techniques, and run the result.

Nothing here is a new formula: pruning is ``prune`` (magnitude masks, head removal),
quantization is ``quant`` (``ptq.quantize_weights``, ``calibrate``,
``linear.FakeQuantLinear``) and the int8 runtime is ``quant.runtime`` on the
``kernels``' int8 GEMM. This module chooses, from one ``CompressConfig``, what runs:

- weights only (``activations="none"``): the dequantized weights in the dense model (the
  exact simulation of weight-only quantization; its speed is the float model's);
- W8A8 dynamic (``"dynamic"``) with symmetric per-channel or per-tensor weights of <= 8
  bits: **the real int8 kernels** (``quant.runtime.Int8Linear``): each token's
  activations quantized to uint8 with its own range at run time, int32 accumulation; other
  weight grids run in the simulation (``FakeQuantLinear(activations="dynamic")``);
- W8A8 static (``"static"``): activation ranges calibrated ahead of time on corpus
  sentences outside the fidelity set, run in the simulation.

Only the linear layers are quantized (and the embedding tables, 8-bit per row, as
``quant.ptq`` does by default); LayerNorm, softmax, GELU and the attention products stay in
float (DESIGN.md: quantizing an encoder's norms wrecks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from minicompress.data import Batch
from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, linear_names
from minicompress.prune.masks import apply_masks, check_sparsity, local_masks
from minicompress.prune.scores import magnitude_scores
from minicompress.prune.structured import prune_structures
from minicompress.quant.calibrate import calibrate, static_qparams
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.ptq import dequantized_params, quantize_weights
from minicompress.quant.runtime import INT8, pack_int8_params
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
    linear: object  # DENSE, FakeQuantLinear (simulation) or quant.runtime.INT8 (kernels)
    runtime: str  # "float", "simulation" or "int8 kernels"
    qtensors: dict  # {parameter name: QuantizedTensor} (empty without quantization)
    info: dict  # what was done: sparsity, heads kept, calibrated layers


def kernel_runs(cc: CompressConfig) -> bool:
    """Whether the int8 kernels can run these weights with dynamic activations: symmetric
    codes of <= 8 bits with one scale per output channel or per tensor."""
    return (
        cc.activations == "dynamic"
        and cc.scheme == "symmetric"
        and cc.granularity in ("tensor", "channel")
    )


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
    if cc.head_sparsity:
        params, cfg, keep = prune_structures(params, cfg, "heads", cc.head_sparsity)
        info["heads_kept"] = [int(k.sum()) for k in keep]
    if cc.sparsity:
        params = prune_linear_weights(params, cfg, cc.sparsity)
        info["sparsity"] = cc.sparsity
    spec = cc.weight_spec()
    if spec is None:
        return CompressedModel(params, cfg, DENSE, "float", {}, info)
    qtensors = quantize_weights(params, cfg, spec)
    if cc.activations == "none":
        return CompressedModel(
            dequantized_params(params, qtensors), cfg, DENSE, "float", qtensors, info
        )
    if kernel_runs(cc):
        packed = pack_int8_params(params, cfg, qtensors)
        return CompressedModel(packed, cfg, INT8, "int8 kernels", qtensors, info)
    simulated = dequantized_params(params, qtensors)
    if cc.activations == "dynamic":
        fq = FakeQuantLinear(activations="dynamic")
        return CompressedModel(simulated, cfg, fq, "simulation", qtensors, info)
    if not calibration_texts:
        raise ValueError("static activations need calibration sentences (calibration_texts)")
    batches = calibration_batches(model, calibration_texts)
    ranges = calibrate(simulated, cfg, batches, observer=cc.calibration, progress=False)
    info["calibrated_layers"] = len(ranges)
    fq = FakeQuantLinear(activations="static", act_qparams=static_qparams(ranges))
    return CompressedModel(simulated, cfg, fq, "simulation", qtensors, info)
