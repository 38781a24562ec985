"""What the runtime runs for a checkpoint of any encoding (``deploy.format``).

A quantized linear weight that the int8 kernels take (symmetric, one scale per output
channel or per tensor) becomes a ``kernels.PackedInt8Linear`` when the model was quantized
with dynamic activations (``meta["quantization"]["activations"] == "dynamic"``, the record
``quant.pipeline`` and ``deploy.pipeline`` write) — the runtime then
computes what the simulation ``FakeQuantLinear(activations="dynamic")`` computes; otherwise
(weight-only, or a grid the kernels do not take) its dequantized float32 values, exactly
what the weight-only simulation runs. A CSR weight runs on the CSR kernels when its
sparsity reaches their measured break-even (``prune.sparse.BREAK_EVEN``), else as its dense
float32 values (the file keeps the smaller form either way); everything else is float32.
"""

from __future__ import annotations

from pathlib import Path

from minicompress.deploy.format import read_compressed
from minicompress.deploy.runtime import Runtime, RuntimeConfig
from minicompress.nn.model import TransformerConfig, linear_names
from minicompress.prune.sparse import BREAK_EVEN, SparseWeight, to_dense_weight
from minicompress.quant.runtime import int8_weights, pack_int8_params
from minicompress.quant.tensor import QuantizedTensor, dequantize_tensor

RUNTIME_ACTIVATIONS = ("none", "dynamic")  # what the runtime reproduces of the simulation


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

    activations: "dynamic" (W8A8 dynamic: quantized linear weights on the int8 kernels) or
    "none" (weight-only: every quantized tensor dequantized to float32).
    """
    if activations not in RUNTIME_ACTIVATIONS:
        raise ValueError(
            f"the runtime runs activations {' or '.join(RUNTIME_ACTIVATIONS)}; got "
            f"{activations!r} (a static-activation model runs in the simulation only)"
        )
    layers = {n + ".w": n for n in linear_names(cfg)}
    packable = {
        key: obj
        for key, obj in params.items()
        if isinstance(obj, QuantizedTensor)
        and key in layers
        and activations == "dynamic"
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
    """A ``Runtime`` for a checkpoint file of any encoding -> (runtime, vocab, meta)."""
    m = read_compressed(path)
    record = m.meta.get("quantization")
    activations = record.get("activations", "none") if isinstance(record, dict) else "none"
    return Runtime(runtime_params(m.tensors, m.cfg, activations), m.cfg, rc), m.vocab, m.meta
