"""True integer inference: the quantized model's linear layers on the int8 kernels.

``pack_int8_params`` replaces the weight of each quantized linear layer, in a copy of the
parameters, by a ``PackedInt8Linear`` (int8 codes laid out for the kernel, one float32
scale per output channel, the bias); ``Int8Linear`` is the ``linear`` that runs those
layers on ``kernels.int8_linear``: each token's activations are quantized to uint8 with
their own range (dynamic, per row), multiplied in int32, rescaled to float32. The model
passes each layer's weight entry to the ``linear`` without reading it, so nothing else
changes. Layers left in float (an unquantized head, say) run the dense product.

What it computes is exactly the simulation ``FakeQuantLinear(activations="dynamic")`` on
``ptq.dequantized_params`` (8-bit asymmetric activations per token, the same weights),
except for float rounding: the kernel sums the integer products exactly and scales once,
the simulation multiplies rounded floats. One layer agrees to a few float32 ulps; through
the model, a rare activation that lands within an ulp of a rounding boundary may round
the other way, so the logits agree to about 1e-4 of their scale
(``tests/test_quant_runtime.py`` states the bound).

Weights that the kernel takes: symmetric codes (any of 2..8 bits: they fit int8) with one
scale per output channel, or one per tensor (repeated per channel). Asymmetric and
group-wise weights have no int8 kernel: they run in the simulation only.
"""

from __future__ import annotations

import numpy as np

from minicompress.kernels import PackedInt8Linear, int8_linear, pack_quantized_int8_linear
from minicompress.nn.model import TransformerConfig, linear_names
from minicompress.nn.ops import linear_forward
from minicompress.quant import formulas as F
from minicompress.quant.tensor import QuantizedTensor, dequantize_tensor


def int8_weights(name: str, qt: QuantizedTensor) -> tuple[np.ndarray, np.ndarray]:
    """The int8 codes [K, N] and per-output-channel scales float32 [N] of a quantized
    linear weight, or a ValueError naming the layer when the kernel cannot run it."""
    spec = qt.spec
    if qt.q.ndim != 2:
        raise ValueError(f"{name}: the int8 kernel takes a 2-D weight [K, N]; got {qt.q.shape}")
    per_channel = spec.granularity == "channel" and F.check_axis(spec.axis, 2) == 1
    if spec.scheme != "symmetric" or not (per_channel or spec.granularity in ("tensor", "model")):
        raise ValueError(
            f"{name}: the int8 kernel takes symmetric weights with one scale per output "
            f"channel or per tensor; this one is {spec.scheme} per {spec.granularity} "
            f"(run it in the simulation: ptq.dequantized_params)"
        )
    n = qt.q.shape[1]
    scale = np.broadcast_to(qt.scale.astype(np.float32).reshape(-1), (n,))  # [N]
    return qt.q.astype(np.int8), np.ascontiguousarray(scale)


def pack_int8_params(
    params: dict, cfg: TransformerConfig, qtensors: dict, path: str | None = None
) -> dict:
    """A copy of ``params`` (the same arrays) where the weight of every linear layer that
    ``qtensors`` holds is a ``PackedInt8Linear`` with its bias inside, and every other
    quantized tensor (an embedding table) is its dequantized float32 values.

    qtensors: {parameter name: QuantizedTensor} (``ptq.quantize_weights``); path: the
    kernel path (default ``MINICOMPRESS_KERNEL`` / auto).
    """
    out = dict(params)
    layers = {f"{n}.w": n for n in linear_names(cfg)}
    for key, qt in qtensors.items():
        if key in layers:
            w_q, w_scale = int8_weights(layers[key], qt)
            bias = params.get(layers[key] + ".b")
            out[key] = pack_quantized_int8_linear(w_q, w_scale, bias, path)
        else:
            out[key] = dequantize_tensor(qt)
    return out


class Int8Linear:
    """Runs every layer whose weight is a ``PackedInt8Linear`` on ``int8_linear`` (the bias
    is inside the packed layer: the ``b`` the model passes is not added again); any other
    layer runs the dense float product. Inference only: there is no backward.

    act_qparams: None (the default: each token's activations get their own range at run
    time), or {layer name: (scale, zero point)} calibrated ahead of time
    (``calibrate.static_qparams``): those layers quantize every row with that one range, in
    the kernel (``int8_linear(x, w, act_scale, act_zero_point)``) — what the simulation
    ``FakeQuantLinear(activations="static", act_qparams=...)`` computes. A packed layer
    missing from ``act_qparams`` is refused by name."""

    def __init__(self, act_qparams: dict | None = None):
        self.act_qparams = None if act_qparams is None else dict(act_qparams)

    def forward(self, name: str, x: np.ndarray, w, b: np.ndarray | None):
        """x [..., K] -> y [..., N]."""
        if not isinstance(w, PackedInt8Linear):
            return linear_forward(x, w, b)
        rows = x.reshape(-1, x.shape[-1])  # [..., K] -> [M, K]
        if rows.dtype != np.float32:
            rows = rows.astype(np.float32)
        if self.act_qparams is None:
            y = int8_linear(rows, w)  # [M, N], bias included; a range per row
        else:
            if name not in self.act_qparams:
                raise ValueError(f"layer {name!r} has no calibrated activation range")
            scale, zero_point = self.act_qparams[name]
            y = int8_linear(rows, w, float(scale), int(zero_point))  # one range for all rows
        return y.reshape(*x.shape[:-1], w.n), None

    def backward(self, name: str, dy: np.ndarray, cache):
        raise TypeError(
            f"Int8Linear runs inference only: no backward for layer {name!r} (train with "
            f"quant.linear.FakeQuantLinear, then pack)"
        )

    def __repr__(self) -> str:
        n = "" if self.act_qparams is None else f"act_qparams=<{len(self.act_qparams)} layers>"
        return f"Int8Linear({n})"


INT8 = Int8Linear()
