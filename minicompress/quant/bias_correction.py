"""Bias correction: remove the mean shift that quantization adds to each layer's output.

Rounding weights (and activations) is not unbiased layer by layer: for a given set of
inputs, the quantized layer's outputs are off by an error whose *mean* over tokens is not
zero, and later layers (layer norms, GELU) turn that offset into real damage. Nagel et al.,
"Data-Free Quantization Through Weight Equalization and Bias Correction" (ICCV 2019, §4.2)
subtract the expected error from the bias:

    shift = E_x[ q_layer(x) - layer(x) ],     b <- b - shift,

with the expectation over calibration inputs x of the layer ("empirical bias correction";
the data-free form estimates E[x] from batch-norm statistics instead). For a linear layer
with fake-quantized activations q_a and dequantized weights W_q,

    shift = E[q_a(x)] @ W_q - E[x] @ W        (the bias cancels; linear in the means).

``correct_biases`` applies it layer after layer in forward order, each layer's inputs taken
from the quantized model whose earlier biases are already corrected (so a layer also
absorbs the mean shift of the inputs it really receives: NNCF's ``FastBiasCorrection`` does
the same on OpenVINO models). Layers without a bias (the output head) are left alone.
"""

from __future__ import annotations

import numpy as np

from minicompress.nn.model import TransformerConfig, linear_names
from minicompress.quant.calibrate import record_inputs


def bias_shift(x: np.ndarray, w: np.ndarray, w_q: np.ndarray, quantized_linear, name: str):
    """The mean output error of one layer: mean over rows of
    ``quantized_linear.forward(name, x, w_q, 0)`` - ``x @ w`` (float64).

    x: [n, K] the layer's inputs (float, as the quantized model feeds it); w: [K, N] float
    weight; w_q: [K, N] its dequantized weight; quantized_linear: the ``linear`` that fakes
    the activations' quantization (DENSE for weight-only)  ->  shift float64 [N]."""
    zero = np.zeros(w.shape[1], dtype=w.dtype)
    y_q, _ = quantized_linear.forward(name, x, w_q, zero)  # [n, N]
    return y_q.mean(axis=0, dtype=np.float64) - (x.astype(np.float64) @ w).mean(axis=0)


def correct_biases(
    params: dict, sim_params: dict, cfg: TransformerConfig, batches, quantized_linear
) -> tuple[dict, dict, dict]:
    """``b <- b - bias_shift`` for every linear layer with a bias, in forward order.

    params: the float parameters; sim_params: the same with the quantized tensors
    dequantized; batches: calibration batches (training windows); quantized_linear: the
    linear of the quantized model (its activation fake quantization). Returns (params,
    sim_params) with the corrected biases (copies of the dicts; the other arrays shared) and
    {layer: |shift| max} for the report."""
    params, sim_params = dict(params), dict(sim_params)
    shifts = {}
    for name in linear_names(cfg):
        if params.get(name + ".b") is None:
            continue  # the head has no bias to correct
        x = record_inputs(sim_params, cfg, batches, [name], inner=quantized_linear)[name]
        shift = bias_shift(x, params[name + ".w"], sim_params[name + ".w"], quantized_linear, name)
        b = (params[name + ".b"] - shift).astype(params[name + ".b"].dtype)
        params[name + ".b"] = sim_params[name + ".b"] = b
        shifts[name] = float(np.abs(shift).max())
    return params, sim_params, shifts
