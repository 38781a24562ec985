"""The whole model quantized by one configuration (what ``quantize`` does, in memory).

``quantize_model`` turns a float model into a quantized one: optional QAT, weight
quantization, activation calibration. The activation quantization is recorded in the
metadata it returns (``meta["quantization"]``), which the checkpoint keeps, so
``simulation_linear(meta)`` rebuilds the linear that evaluates the saved model
(``deploy.format.load_quantized``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig
from minicompress.quant import smooth
from minicompress.quant.bias_correction import correct_biases
from minicompress.quant.calibrate import (
    calibrate,
    calibration_batches,
    record_inputs,
    static_qparams,
)
from minicompress.quant.gptq import gptq_quantize
from minicompress.quant.linear import ACTIVATION_MODES, FakeQuantLinear
from minicompress.quant.observers import OBSERVERS
from minicompress.quant.ptq import (
    CLIPS,
    EMBEDDING_SPEC,
    dequantized_params,
    quantize_weights,
)
from minicompress.quant.qat import QAT_TRAIN, qat
from minicompress.quant.tensor import QuantSpec


@dataclass(frozen=True)
class QuantizeConfig:
    """What ``quantize`` does to a model; each field is a flag of the command."""

    bits: int = 8  # bits per weight (2..8)
    granularity: str = "channel"  # weights sharing one range: model | tensor | channel | group
    group_size: int | None = None  # G, with granularity group (32 is a good start)
    scheme: str = "symmetric"  # asymmetric | symmetric (runs on the int8 kernels) | log
    clip: str = "minmax"  # weight ranges: minmax, or mse (each range shrunk where it pays)
    activations: str = "none"  # none (weight-only) | static (calibrated) | dynamic (per token)
    calibration: str = "minmax"  # the observer of static activations
    calib_batches: int = 8  # calibration batches of 16 training windows
    smooth: float = 0.0  # SmoothQuant migration strength alpha (0: off; the paper's 0.5)
    awq: bool = False  # AWQ: search per-channel weight scales on the calibration inputs
    gptq: bool = False  # GPTQ: round the linear weights with error compensation (same inputs)
    bias_correction: bool = False  # subtract each layer's mean output shift (same inputs)
    qat_steps: int = 0  # quantization-aware fine-tune steps before quantizing (0: PTQ)
    qat_lr: float = 1e-3  # its peak learning rate (the teacher's 6e-3 hurts a fine-tune)
    embeddings: bool = True  # quantize wte/wpe too (8-bit symmetric per row)
    seed: int = 0  # calibration batches and fine-tune batches

    def __post_init__(self):
        self.weight_spec()  # bits, scheme, granularity and group size checked there
        if self.activations not in ACTIVATION_MODES:
            raise ValueError(
                f"activations must be one of {', '.join(ACTIVATION_MODES)}; got "
                f"{self.activations!r}"
            )
        if self.clip not in CLIPS:
            raise ValueError(f"clip must be one of {', '.join(CLIPS)}; got {self.clip!r}")
        if self.clip == "mse" and (self.granularity == "model" or self.qat_steps):
            raise ValueError(
                "clip mse searches each tensor's own ranges after training: not with "
                "granularity model (one shared range) or QAT (its grid follows min-max)"
            )
        if self.calibration not in OBSERVERS:
            raise ValueError(
                f"calibration must be one of {', '.join(OBSERVERS)}; got {self.calibration!r}"
            )
        for name in ("calib_batches", "qat_steps", "seed"):
            v = getattr(self, name)
            low = 1 if name == "calib_batches" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {v!r}")
        smooth.check_alpha(self.smooth)
        if (self.smooth or self.awq) and self.granularity == "model":
            raise ValueError(
                "smooth and awq scale each layer's rows: not with granularity model "
                "(one shared range)"
            )
        if self.smooth and self.awq:
            raise ValueError("choose smooth (for activations) or awq (for weights), not both")
        linear_grid = self.scheme != "log" and self.clip == "minmax"
        if self.gptq and (self.granularity not in ("channel", "group") or not linear_grid):
            raise ValueError(
                "gptq rounds linear grids per channel or per group with min-max ranges: "
                "granularity channel or group, scheme asymmetric or symmetric, clip minmax"
            )
        if not self.qat_lr > 0:
            raise ValueError(f"qat_lr must be > 0; got {self.qat_lr}")

    def weight_spec(self) -> QuantSpec:
        """The weights' QuantSpec; group-wise scales are stored as float16 (a 4-bit group of
        32 then costs 0.58 bits of scale and zero point per weight instead of 1.1)."""
        return QuantSpec(
            self.bits,
            self.scheme,
            self.granularity,
            group_size=self.group_size,
            scale_dtype="float16" if self.granularity == "group" else "float32",
        )


def finetune_config(qc: QuantizeConfig):
    """The fine-tune of QAT and of its float control: ``QAT_TRAIN`` with the command's
    steps, learning rate and seed (warmup at most a quarter of the steps)."""
    warmup = min(QAT_TRAIN.warmup, qc.qat_steps // 4)
    return dataclasses.replace(
        QAT_TRAIN, steps=qc.qat_steps, lr=qc.qat_lr, seed=qc.seed, warmup=warmup
    )


CALIB_BATCH_SIZE = 16  # training windows per calibration batch


def calibration_data(data, cfg: TransformerConfig, qc: QuantizeConfig) -> list:
    """The calibration windows of ``qc`` (static activations, SmoothQuant, AWQ, GPTQ):
    ``qc.calib_batches`` batches [16, T] of random training windows of ``data``, drawn from
    the seed ``[qc.seed, 2]`` — the same windows for the same config, run after run."""
    rng = np.random.default_rng([qc.seed, 2])
    return calibration_batches(data.train, qc.calib_batches, CALIB_BATCH_SIZE, cfg.block_size, rng)


class Quantized(NamedTuple):
    params: dict  # the float parameters that were quantized (fine-tuned when QAT ran)
    qtensors: dict  # {parameter name: QuantizedTensor}
    sim_params: dict  # params with the quantized tensors dequantized
    linear: object  # the linear that simulates the activations (DENSE when none)
    meta: dict  # what the checkpoint records: {"quantization": {...}}


def quantize_model(
    params: dict, cfg: TransformerConfig, data, qc: QuantizeConfig, progress: bool = True
) -> Quantized:
    """QAT (if ``qc.qat_steps``) on a copy of ``params``, weight quantization, and the
    calibration of static activations on training windows of ``data``."""
    params = {k: v.copy() for k, v in params.items()}
    spec = qc.weight_spec()
    act_spec = QuantSpec(8, "asymmetric", "tensor")
    if qc.qat_steps:  # with quantized activations, QAT trains through per-token ones
        act_mode = "none" if qc.activations == "none" else "dynamic"
        qat(params, cfg, data, spec, finetune_config(qc), act_mode, progress=progress)
    batches = None  # training windows, for the activations' statistics
    if qc.smooth or qc.awq or qc.gptq or qc.bias_correction or qc.activations == "static":
        batches = calibration_data(data, cfg, qc)
    record = {
        "weights": spec.to_dict(),
        "activations": qc.activations,
        "config": dataclasses.asdict(qc),
    }
    if qc.smooth or qc.awq:
        params, record["input_scales"] = scale_inputs(params, cfg, batches, qc)
    embedding_spec = EMBEDDING_SPEC if qc.embeddings else None
    qtensors = quantize_weights(params, cfg, spec, embedding_spec=embedding_spec, clip=qc.clip)
    if qc.gptq:  # the linear weights again, each rounding compensated on its layer's inputs
        inputs = record_inputs(params, cfg, batches)  # {layer: [n_tokens, K]}
        for name, x in inputs.items():
            qtensors[name + ".w"] = gptq_quantize(x, params[name + ".w"], spec)
    sim_params = dequantized_params(params, qtensors)
    linear = DENSE
    if qc.activations == "dynamic":
        linear = FakeQuantLinear(activations="dynamic")
    elif qc.activations == "static":
        ranges = calibrate(sim_params, cfg, batches, qc.calibration, act_spec, progress=progress)
        act_qparams = static_qparams(ranges, act_spec.bits, act_spec.scheme)
        linear = FakeQuantLinear(activations="static", act_qparams=act_qparams)
        record["act_qparams"] = {n: [float(s), int(z)] for n, (s, z) in act_qparams.items()}
    if qc.bias_correction:  # after the activations' ranges: the shift includes their rounding
        params, sim_params, shifts = correct_biases(params, sim_params, cfg, batches, linear)
        record["bias_shift_max"] = max(shifts.values(), default=0.0)
    return Quantized(params, qtensors, sim_params, linear, {"quantization": record})


def scale_inputs(params: dict, cfg: TransformerConfig, batches, qc: QuantizeConfig):
    """SmoothQuant (``qc.smooth`` = alpha) or AWQ (``qc.awq``) on the foldable layers
    (``smooth.foldable_layers``), from their inputs over ``batches`` of the float model.
    -> (the equivalent parameters with the scales folded in, {layer: the alpha used})."""
    layers = list(smooth.foldable_layers(cfg))
    inputs = record_inputs(params, cfg, batches, layers)  # {layer: [n_tokens, K]}
    scales, used = {}, {}
    for name in layers:
        w = params[name + ".w"]  # [K, N]
        if qc.smooth:
            act_absmax, _ = smooth.channel_stats({name: inputs[name]})[name]
            scales[name] = smooth.smoothquant_scales(act_absmax, np.abs(w).max(axis=1), qc.smooth)
            used[name] = qc.smooth
        else:
            scales[name], used[name] = smooth.awq_search(inputs[name], w, qc.weight_spec())
    return smooth.fold_input_scales(params, cfg, scales), used


def simulation_linear(meta: dict):
    """The linear that evaluates a checkpoint as it was quantized: the activations'
    fake quantization recorded in ``meta["quantization"]`` (DENSE for none)."""
    record = meta.get("quantization") or {}
    mode = record.get("activations", "none")
    if mode == "dynamic":
        return FakeQuantLinear(activations="dynamic")
    if mode == "static":
        qp = {
            n: (np.float32(s), np.int32(z)) for n, (s, z) in record.get("act_qparams", {}).items()
        }
        return FakeQuantLinear(activations="static", act_qparams=qp)
    if mode != "none":
        known = ", ".join(ACTIVATION_MODES)
        raise ValueError(f"meta records activations {mode!r}; this minicompress knows {known}")
    return DENSE
