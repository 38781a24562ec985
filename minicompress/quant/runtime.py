"""True integer inference: the quantized model's linear layers on the int8 kernels.

``pack_int8_params`` replaces the weight of each quantized linear layer, in a copy of the
parameters, by a ``PackedInt8Linear`` (int8 codes laid out for the kernel, one float32
scale per output channel, the bias); ``Int8Linear`` is the ``linear`` that runs those
layers on ``kernels.int8_linear``: each token's activations are quantized to uint8 with
their own range (dynamic, per row), multiplied in int32, rescaled to float32. The model
passes each layer's weight entry to the ``linear`` without reading it, so nothing else
changes. Layers left in float (an unquantized head, say) run the dense product. With
calibrated activation scales (``Int8Linear(act_qparams)``, W8A8 static) the kernel's
static variant quantizes every token with its layer's fixed scale and zero point.

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
from minicompress.kernels.carried import CARRY_MIN_ROWS, codes_of, with_codes
from minicompress.kernels.int8_fused import int8_linear_fused
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


_GELU_FORMS = {"tanh": "gelu_tanh", "none": "gelu_erf"}  # the model's cfg.gelu -> the kernel's


class Int8Linear:
    """Runs every layer whose weight is a ``PackedInt8Linear`` on ``int8_linear`` (the bias
    is inside the packed layer: the ``b`` the model passes is not added again); any other
    layer runs the dense float product. Inference only: there is no backward.

    act_qparams: None (dynamic activations: each token's own range, the default), or
    {layer: (scale, zero_point)} calibrated ahead of time (``calibrate.static_qparams``,
    8-bit asymmetric): the kernel's static variant quantizes every row with those; the
    result is then ``FakeQuantLinear(activations="static", act_qparams=...)`` on the same
    weights, up to float rounding."""

    def __init__(self, act_qparams: dict | None = None):
        if act_qparams is not None:
            act_qparams = {n: (np.float32(s), int(z)) for n, (s, z) in dict(act_qparams).items()}
        self.act_qparams = act_qparams

    def forward(self, name: str, x: np.ndarray, w, b: np.ndarray | None):
        """x [..., K] -> y [..., N]. Dynamic activations: codes that x carries (a layer
        norm of the int8 runtime made them, ``kernels.carried``) are used instead of
        quantizing x again."""
        if not isinstance(w, PackedInt8Linear):
            return linear_forward(x, w, b)
        codes = codes_of(x)
        rows = x.reshape(-1, x.shape[-1])  # [..., K] -> [M, K]
        if rows.dtype != np.float32:
            rows = rows.astype(np.float32)
        if self.act_qparams is None:
            if codes is None:
                y = int8_linear(rows, w)  # [M, N], bias included
            else:
                y = int8_linear_fused(rows, w, codes)[0]  # [M, N], x's codes carried in
        elif name in self.act_qparams:
            y = int8_linear(rows, w, *self.act_qparams[name])  # [M, N], static activations
        else:
            raise ValueError(f"no calibrated activation scale for layer {name!r}: calibrate it")
        return y.reshape(*x.shape[:-1], w.n), None

    def forward_gelu(self, name: str, x: np.ndarray, w, b: np.ndarray | None, approximate: str):
        """GELU(x @ w + b) with GELU in the int8 kernel's epilogue and the result's codes
        made there for the next int8 layer (``nn.linear.linear_gelu``'s optional method);
        None (declined: the model runs ``forward`` then its GELU) for a float layer, static
        activations, or fewer than ``CARRY_MIN_ROWS`` rows. x [..., K] -> g [..., N]."""
        form = _GELU_FORMS.get(approximate)
        rows = int(np.prod(x.shape[:-1]))
        if not isinstance(w, PackedInt8Linear) or self.act_qparams is not None or form is None:
            return None
        if x.dtype != np.float32 or rows < CARRY_MIN_ROWS:
            return None
        codes = codes_of(x)
        flat = x.reshape(rows, x.shape[-1])  # [..., K] -> [M, K]
        g, g_codes = int8_linear_fused(flat, w, codes, form, quantize_output=True)  # [M, N]
        return with_codes(g.reshape(*x.shape[:-1], w.n), g_codes)

    def backward(self, name: str, dy: np.ndarray, cache):
        raise TypeError(
            f"Int8Linear runs inference only: no backward for layer {name!r} (train with "
            f"quant.linear.FakeQuantLinear, then pack)"
        )

    def __repr__(self) -> str:
        mode = "dynamic" if self.act_qparams is None else f"static, {len(self.act_qparams)} layers"
        return f"Int8Linear({mode})"


INT8 = Int8Linear()


def runtime_linear(meta: dict) -> Int8Linear:
    """The ``Int8Linear`` that runs a checkpoint as it was quantized: static activations
    with the scales recorded in ``meta["quantization"]["act_qparams"]``, dynamic ones
    otherwise (a weight-only checkpoint runs W8A8 dynamic on the kernels)."""
    record = meta.get("quantization") or {}
    if record.get("activations") == "static":
        return Int8Linear(record.get("act_qparams", {}))
    return INT8
