"""What the runtime runs for a checkpoint of any encoding (``deploy.format``).

A quantized linear weight that the int8 kernels take (symmetric, one scale per output
channel or per tensor) becomes a ``kernels.PackedInt8Linear`` when the model was quantized
with dynamic or static activations (``meta["quantization"]["activations"]``, the record
``quant.pipeline`` and ``deploy.pipeline`` write) — the runtime then computes what the
simulation ``FakeQuantLinear(activations=...)`` computes, per token or with the recorded
calibrated ranges; otherwise
(weight-only, or a grid the kernels do not take) its dequantized float32 values, exactly
what the weight-only simulation runs. A CSR weight runs on the CSR kernels when its
sparsity reaches their measured break-even (``prune.sparse.BREAK_EVEN``), else as its dense
float32 values (the file keeps the smaller form either way); everything else is float32.
"""

from __future__ import annotations

from pathlib import Path

from minicompress.deploy.format import read_compressed
from minicompress.deploy.runtime import Runtime, RuntimeConfig, RuntimeLinear, default_handlers
from minicompress.kernels import PackedInt8Linear
from minicompress.nn.model import TransformerConfig, linear_names
from minicompress.prune.sparse import BREAK_EVEN, SparseWeight, to_dense_weight
from minicompress.quant.runtime import int8_weights, pack_int8_params, runtime_linear
from minicompress.quant.tensor import QuantizedTensor, dequantize_tensor

RUNTIME_ACTIVATIONS = ("none", "dynamic", "static")  # the simulations the runtime reproduces


def sparse_fraction(w: SparseWeight) -> float:
    """Fraction of zeros of the dense weight a SparseWeight stands for."""
    n, k = w.w_t.shape
    return 1.0 - w.w_t.data.size / (n * k)


def _int8_kernel_takes(name: str, qt: QuantizedTensor) -> bool:
    try:
        int8_weights(name, qt)
    except ValueError:
        return False
    return True


def runtime_params(params: dict, cfg: TransformerConfig, activations: str = "none") -> dict:
    """The weights the runtime runs for a compressed model (see the module docstring).

    activations: "dynamic" or "static" (W8A8: quantized linear weights on the int8 kernels,
    whose activations the runtime's linear quantizes per token or with the calibrated
    ranges) or "none" (weight-only: every quantized tensor dequantized to float32).
    """
    if activations not in RUNTIME_ACTIVATIONS:
        raise ValueError(
            f"the runtime runs activations {', '.join(RUNTIME_ACTIVATIONS)}; got {activations!r}"
        )
    layers = {n + ".w": n for n in linear_names(cfg)}
    packable = {
        key: obj
        for key, obj in params.items()
        if isinstance(obj, QuantizedTensor)
        and key in layers
        and activations != "none"
        and _int8_kernel_takes(layers[key], obj)
    }
    out = {}
    for key, obj in params.items():
        if isinstance(obj, QuantizedTensor) and key not in packable:
            out[key] = dequantize_tensor(obj)
        elif isinstance(obj, SparseWeight) and sparse_fraction(obj) < BREAK_EVEN:
            out[key] = to_dense_weight(obj)  # the dense product is faster below break-even
        else:
            out[key] = obj
    return pack_int8_params(out, cfg, packable) if packable else out


def load_runtime(path: str | Path, rc: RuntimeConfig | None = None) -> tuple[Runtime, list, dict]:
    """A ``Runtime`` for a checkpoint file of any encoding -> (runtime, vocab, meta). A W8A8
    static checkpoint runs its packed layers on ``quant.runtime.runtime_linear(meta)``: the
    int8 kernels with the activation ranges calibrated and recorded in the file."""
    m = read_compressed(path)
    record = m.meta.get("quantization")
    activations = record.get("activations", "none") if isinstance(record, dict) else "none"
    linear = None
    if activations == "static":
        linear = RuntimeLinear({**default_handlers(), PackedInt8Linear: runtime_linear(m.meta)})
    params = runtime_params(m.tensors, m.cfg, activations)
    return Runtime(params, m.cfg, rc, linear), m.vocab, m.meta
