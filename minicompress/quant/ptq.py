"""Post-training quantization (PTQ) of the whole model, and per-layer sensitivity.

Weight-only: ``quantize_weights`` quantizes each chosen linear weight (and the embedding
tables) once; ``dequantized_params`` gives the float32 parameters those codes stand for,
which the ordinary dense model then runs: the exact simulation of weight-only
quantization. Weights + activations (W8A8): the same parameters, run through
``FakeQuantLinear(activations="static" | "dynamic")``.

Which tensors: the linear weights ``<layer>.w`` of ``layers`` (default every linear layer
of ``linear_names``, the output head included) with ``spec``; the embedding tables (``wte``,
``wpe``, ``wtt``) with ``embedding_spec`` (default 8-bit symmetric, one range per row:
a row is what one token reads), or kept in float with ``embedding_spec=None``. Biases and
LayerNorm parameters stay float32 (they are 0.5% of the teacher; quantizing the norms
wrecks encoders, DESIGN.md). Granularity ``model`` takes one range over every tensor
quantized with that spec: the course's statistics "of all the weights of the model".
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, linear_names
from minicompress.nn.train import evaluate
from minicompress.quant.tensor import (
    QuantizedTensor,
    QuantSpec,
    dequantize_tensor,
    model_range,
    quantize_tensor,
)

EMBEDDINGS = ("wte", "wpe", "wtt")  # tables [rows, C]: one range per row (axis 0)
# default for the tables: 8-bit symmetric per row (measured on the teacher: asymmetric rows
# cost +0.05% perplexity, symmetric ones nothing measurable)
EMBEDDING_SPEC = QuantSpec(8, "symmetric", "channel", axis=0)


def check_layers(cfg: TransformerConfig, layers: Iterable[str] | None) -> list[str]:
    """The linear layers to quantize: ``layers`` (checked) or all of them, in forward order."""
    names = linear_names(cfg)
    if layers is None:
        return names
    layers = list(layers)
    unknown = sorted(set(layers) - set(names))
    if unknown:
        raise ValueError(f"layers {unknown} are not linear layers of this model; it has {names}")
    return [n for n in names if n in layers]


def tensor_specs(
    params: dict,
    cfg: TransformerConfig,
    spec: QuantSpec,
    layers: Iterable[str] | None = None,
    embedding_spec: QuantSpec | None = EMBEDDING_SPEC,
) -> dict[str, QuantSpec]:
    """{parameter name: its QuantSpec} for every tensor that PTQ quantizes."""
    specs = {f"{n}.w": spec for n in check_layers(cfg, layers)}
    if embedding_spec is not None:
        specs.update({n: embedding_spec for n in EMBEDDINGS if n in params})
    return specs


def quantize_weights(
    params: dict,
    cfg: TransformerConfig,
    spec: QuantSpec,
    layers: Iterable[str] | None = None,
    embedding_spec: QuantSpec | None = EMBEDDING_SPEC,
) -> dict[str, QuantizedTensor]:
    """Quantize the linear weights of ``layers`` with ``spec`` and the embedding tables
    with ``embedding_spec`` -> {parameter name: QuantizedTensor}."""
    specs = tensor_specs(params, cfg, spec, layers, embedding_spec)
    shared = [n for n, s in specs.items() if s.granularity == "model"]
    lo, hi = model_range(params[n] for n in shared) if shared else (None, None)
    out = {}
    for name, s in specs.items():
        if s.granularity == "model":
            out[name] = quantize_tensor(params[name], s, lo, hi)
        else:
            out[name] = quantize_tensor(params[name], s)
    return out


def dequantized_params(params: dict, qtensors: dict[str, QuantizedTensor]) -> dict:
    """A copy of ``params`` where each quantized tensor is replaced by the float32 values
    its codes stand for (the others are the same arrays, not copies)."""
    out = dict(params)
    for name, qt in qtensors.items():
        out[name] = dequantize_tensor(qt)
    return out


def perplexity(params, cfg, ids, linear=DENSE, max_windows: int | None = None) -> float:
    """exp(mean cross-entropy) over the validation windows of ``ids``."""
    return math.exp(evaluate(params, cfg, ids, max_windows, linear=linear))


def layer_sensitivity(
    params: dict,
    cfg: TransformerConfig,
    ids: np.ndarray,
    spec: QuantSpec,
    layers: Iterable[str] | None = None,
    max_windows: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Quantize one layer at a time (weights only, the rest float) and measure perplexity.

    ->  [{"layer", "val_ppl", "delta_pct"}] in forward order, delta against the float model.
    """
    from tqdm.auto import tqdm

    base = perplexity(params, cfg, ids, max_windows=max_windows)
    rows = []
    for name in tqdm(check_layers(cfg, layers), desc="sensitivity", disable=not progress):
        q = quantize_weights(params, cfg, spec, [name], embedding_spec=None)
        ppl = perplexity(dequantized_params(params, q), cfg, ids, max_windows=max_windows)
        rows.append({"layer": name, "val_ppl": ppl, "delta_pct": 100 * (ppl / base - 1)})
    return rows
