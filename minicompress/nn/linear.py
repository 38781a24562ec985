"""The ``linear`` contract: the one place where every compression technique plugs into the
model.

Every linear layer of the model (``qkv``, ``proj``, ``fc``, the MLP ``proj`` and the output
head) calls ``linear.forward(name, x, w, b)`` and, in the backward pass,
``linear.backward(name, dy, cache)``. The model never multiplies by a linear weight itself,
and never reads one: it hands ``params[name + ".w"]`` and ``params.get(name + ".b")`` to the
object, so

- a quantizer fake-quantizes ``x`` and ``w`` inside ``forward`` and passes the gradient
  straight through in ``backward`` (quantization-aware training);
- a pruner multiplies ``w`` by a mask (the masked weight gets no gradient);
- an inference runtime keeps a packed int8 or CSR weight under the same key and runs its
  kernel (no ``backward`` needed).

``name`` is the layer's name without the suffix (``"blocks.0.mlp.fc"``); the object may
treat layers differently by name (e.g. leave the output head in float).

One optional method: ``forward_gelu(name, x, w, b, approximate)`` -> GELU(x @ w + b), or
None to decline. An inference runtime that can apply GELU inside its layer (the int8
kernels' epilogue) has it; the MLP's first layer goes through ``linear_gelu``, which uses it
when present and otherwise calls ``forward`` and then the op table's GELU.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from minicompress.nn.ops import linear_backward, linear_forward


@runtime_checkable
class Linear(Protocol):
    """What the model asks of a linear layer. Shapes: x [..., K], w [K, N] (or whatever the
    object stores under the weight's key), b [N] or None, y [..., N]."""

    def forward(self, name: str, x: np.ndarray, w: Any, b: np.ndarray | None) -> tuple:
        """->  (y [..., N], cache): the output and what ``backward`` needs."""
        ...

    def backward(self, name: str, dy: np.ndarray, cache: Any) -> tuple:
        """dy [..., N]  ->  (dx [..., K], dw [K, N], db [N] or None): the gradients of the
        loss with respect to the input, the weight and the bias that ``forward`` was given."""
        ...


class DenseLinear:
    """The plain linear layer ``y = x @ w + b`` (``ops.linear_forward``/``linear_backward``)."""

    def forward(self, name: str, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple:
        return linear_forward(x, w, b)

    def backward(self, name: str, dy: np.ndarray, cache) -> tuple:
        return linear_backward(dy, cache)

    def __repr__(self) -> str:
        return "DENSE"


DENSE = DenseLinear()


def check_linear(linear: object) -> Linear:
    """Refuse an object that does not have the contract's two methods."""
    if not isinstance(linear, Linear):
        raise TypeError(
            "linear must have methods forward(name, x, w, b) and backward(name, dy, cache); "
            f"got {type(linear).__name__}"
        )
    return linear


def linear_gelu(linear, ops, name: str, x: np.ndarray, w, b, approximate: str) -> tuple:
    """g = GELU(x @ w + b), the MLP's first layer and its activation:
    ``linear.forward_gelu`` if the object has one and takes the layer (inference: no caches),
    else ``linear.forward`` then ``ops.gelu_forward``.
    x: [..., K]  ->  (g [..., N], the linear's cache or None, the GELU's cache or None)."""
    fused = getattr(linear, "forward_gelu", None)
    if fused is not None:
        g = fused(name, x, w, b, approximate)
        if g is not None:
            return g, None, None
    f, fc_cache = linear.forward(name, x, w, b)
    g, gelu_cache = ops.gelu_forward(f, approximate)
    return g, fc_cache, gelu_cache
