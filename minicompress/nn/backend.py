"""Which implementation of the model's row-wise ops runs: the NumPy reference or its Numba twin.

The model's ``op_impl`` argument takes one of two ``OpImpl`` tables with the same
contracts: ``NUMPY_OPS`` (the readable NumPy ops of ``ops.py`` / ``attention.py``) and
``NUMBA_OPS`` (the fused Numba twins of ``fused.py``: embedding backward, layer norm, GELU,
attention softmax). Tests run both and compare. By default ``MINICOMPRESS_KERNEL`` chooses
(``reference`` -> NumPy, anything else -> Numba); the linear layers are not here: they go
through the ``linear`` contract (``nn/linear.py``).
"""

from __future__ import annotations

from typing import NamedTuple

from minicompress.kernel_choice import kernel_choice
from minicompress.nn import attention, fused, ops


class OpImpl(NamedTuple):
    """One implementation of each row-wise op of the model (forward/backward pairs)."""

    embedding_backward: object
    layernorm_forward: object
    layernorm_backward: object
    gelu_forward: object
    gelu_backward: object
    attention_forward: object
    attention_backward: object
    # [B, T, 3 H D] -> q, k, v [B, H, T, D]: contiguous copies for the batched matmuls of
    # training; the inference attention reads strided views of the projection instead
    split_qkv: object = attention.split_qkv


NUMPY_OPS = OpImpl(
    ops.embedding_backward,
    ops.layernorm_forward,
    ops.layernorm_backward,
    ops.gelu_forward,
    ops.gelu_backward,
    attention.attention_forward,
    attention.attention_backward,
)

NUMBA_OPS = OpImpl(
    fused.embedding_backward_fused,
    fused.layernorm_forward_fused,
    fused.layernorm_backward_fused,
    fused.gelu_forward_fused,
    fused.gelu_backward_fused,
    fused.attention_forward_fused,
    fused.attention_backward_fused,
)


def default_op_impl() -> OpImpl:
    """The ops that ``MINICOMPRESS_KERNEL`` asks for: NumPy for ``reference``, else Numba."""
    return NUMPY_OPS if kernel_choice() == "reference" else NUMBA_OPS


def check_op_impl(op_impl: object) -> OpImpl:
    """``op_impl`` itself, or the default when None; anything else is refused."""
    if op_impl is None:
        return default_op_impl()
    if not isinstance(op_impl, OpImpl):
        raise TypeError(
            f"op_impl must be nn.backend.NUMPY_OPS, NUMBA_OPS (an OpImpl) or None; "
            f"got {type(op_impl).__name__}"
        )
    return op_impl
