"""Fake quantization of the linear layers, with the straight-through estimator.

``FakeQuantLinear`` is a ``linear`` object of the model's contract: in ``forward`` it
rounds the weight and/or the input of each chosen layer to its quantization grid and
multiplies the rounded values in float (what integer inference computes, simulated);
in ``backward`` it treats the rounding as the identity (the straight-through estimator,
Bengio et al. 2013), so the gradient reaches the float weights and quantization-aware
training can move them:

    forward:   x_hat = fq(x),  w_hat = fq(w),  y = x_hat @ w_hat + b
    backward:  dx = (dy @ w_hat.T) * pass_x,   dw = (x_hat.T @ dy) * pass_w,   db = sum dy

pass = 1 where the value lies inside the grid's range, 0 where the clip acts
(``formulas.ste_mask``). The scales are constants for the backward (no gradient into the
ranges, as PyTorch's ``fake_quantize_*``).

Weights: ``weights`` (a QuantSpec) fake-quantizes each chosen layer's weight from its own
min-max range on every call (QAT: the weights move) — or pass ``None`` and give the model
already-quantized weights (PTQ: ``ptq.dequantized_params``). Activations:
- ``"dynamic"``: one range per token (row of x), from x itself on every call; at 8 bits
  asymmetric this is exactly what the int8 kernels do (``quantize_rows_uint8``);
- ``"static"``: one scale and zero point per layer, fixed ahead of time by calibration
  (``calibrate.calibrate`` then ``calibrate.static_qparams``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from minicompress.nn.ops import LinearCache, linear_backward, linear_forward
from minicompress.quant import formulas as F
from minicompress.quant.tensor import QuantSpec, fake_quantize_ste, fake_quantize_tensor

ACTIVATION_MODES = ("none", "static", "dynamic")


class FakeQuantCache(NamedTuple):
    lin: LinearCache  # (x_hat, w_hat): the product's backward needs the rounded values
    x_pass: np.ndarray | None  # bool [..., K]: where dx passes (None: everywhere)
    w_pass: np.ndarray | None  # bool [K, N]: where dw passes (None: everywhere)


class FakeQuantLinear:
    """Fake-quantized linear layers for PTQ simulation and QAT (see the module docstring).

    weights:     QuantSpec for the weights, or None (weights used as given)
    activations: "none" | "static" | "dynamic"
    act_bits, act_scheme: the activations' grid (8, "asymmetric": the int8 kernels')
    act_qparams: {layer: (scale, zero_point)} for "static" (``calibrate.static_qparams``)
    layers:      names of the layers to quantize (default: every layer it is called with)
    weight_ranges: {layer: (lo, hi)} fixed weight ranges (e.g. clipped ones, shaped like
                 the scales); the layers not in it use their weight's own min-max
    """

    def __init__(
        self,
        weights: QuantSpec | None = None,
        activations: str = "none",
        act_bits: int = 8,
        act_scheme: str = "asymmetric",
        act_qparams: dict | None = None,
        layers: Iterable[str] | None = None,
        weight_ranges: dict | None = None,
    ):
        if weights is not None and not isinstance(weights, QuantSpec):
            raise TypeError(f"weights must be a QuantSpec or None; got {type(weights).__name__}")
        if weights is not None and weights.granularity == "model":
            raise ValueError(
                "granularity 'model' needs one range over the whole model: quantize the "
                "weights with ptq.quantize_weights and pass weights=None"
            )
        if activations not in ACTIVATION_MODES:
            raise ValueError(
                f"activations must be one of {', '.join(ACTIVATION_MODES)}; got {activations!r}"
            )
        if activations != "none" and act_scheme == "log":
            raise ValueError(
                "activations are quantized linearly: act_scheme must be 'asymmetric' or 'symmetric'"
            )
        self.act_range = F.code_range(act_bits, act_scheme)  # checks bits and scheme
        if activations == "static" and act_qparams is None:
            raise ValueError("static activations need act_qparams: calibrate first")
        self.weights, self.activations = weights, activations
        self.act_bits, self.act_scheme = act_bits, act_scheme
        self.act_qparams = act_qparams
        self.layers = None if layers is None else frozenset(layers)
        self.weight_ranges = weight_ranges or {}

    def quantizes(self, name: str) -> bool:
        return self.layers is None or name in self.layers

    def fake_quantize_weight(self, name: str, w: np.ndarray):
        """(w_hat, pass mask or None) of one layer's weight [K, N]."""
        if self.weights is None:
            return w, None
        w_hat, w_pass = fake_quantize_ste(w, self.weights, *self.weight_ranges.get(name, ()))
        return w_hat, None if w_pass.all() else w_pass  # own min-max range: none clipped

    def fake_quantize_input(self, name: str, x: np.ndarray):
        """(x_hat, pass mask or None) of one layer's input [..., K]."""
        if self.activations == "none":
            return x, None
        if self.activations == "dynamic":
            rows = x.reshape(-1, x.shape[-1])  # [..., K] -> [M, K]: one range per token
            spec = QuantSpec(self.act_bits, self.act_scheme, "channel", axis=0)
            return fake_quantize_tensor(rows, spec).reshape(x.shape), None
        if name not in self.act_qparams:
            raise ValueError(f"no calibrated activation scale for layer {name!r}: calibrate it")
        scale, zero_point = self.act_qparams[name]
        scale = np.asarray(scale, x.dtype)
        x_hat = F.fake_quantize(x, scale, zero_point, *self.act_range)
        return x_hat, F.ste_mask(x, scale, zero_point, *self.act_range)

    def forward(self, name: str, x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
        """y = fq(x) @ fq(w) + b.   x [..., K], w [K, N], b [N] or None  ->  y [..., N]."""
        if not self.quantizes(name):
            y, lin = linear_forward(x, w, b)
            return y, FakeQuantCache(lin, None, None)
        w_hat, w_pass = self.fake_quantize_weight(name, w)  # [K, N]
        x_hat, x_pass = self.fake_quantize_input(name, x)  # [..., K]
        y, lin = linear_forward(x_hat, w_hat, b)  # [..., N]
        return y, FakeQuantCache(lin, x_pass, w_pass)

    def backward(self, name: str, dy: np.ndarray, cache: FakeQuantCache):
        """Straight-through: dx = (dy @ w_hat.T) * pass_x, dw = (x_hat.T @ dy) * pass_w,
        db = sum of dy over the leading axes."""
        dx, dw, db = linear_backward(dy, cache.lin)  # [..., K], [K, N], [N]
        if cache.x_pass is not None:
            dx = dx * cache.x_pass
        if cache.w_pass is not None:
            dw = dw * cache.w_pass
        return dx, dw, db
