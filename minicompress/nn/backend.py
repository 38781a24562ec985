"""Which implementation of the training ops the model runs: the NumPy reference or Numba.

``MINICOMPRESS_KERNEL`` (shared with ``minicompress.kernels``) chooses: ``reference`` runs
the readable NumPy ops of ``ops.py``/``attention.py``; ``auto`` (default), ``portable``,
``vnni`` and ``amx`` run the Numba ops of ``fused.py`` (embedding backward, layer norm,
GELU, attention softmax), which have the same contracts.
"""

from __future__ import annotations

from typing import NamedTuple

from minicompress.kernel_choice import kernel_choice
from minicompress.nn import attention, fused, ops


class TrainingOps(NamedTuple):
    embedding_backward: object
    layernorm_forward: object
    layernorm_backward: object
    gelu_forward: object
    gelu_backward: object
    attention_forward: object
    attention_backward: object


REFERENCE_OPS = TrainingOps(
    ops.embedding_backward,
    ops.layernorm_forward,
    ops.layernorm_backward,
    ops.gelu_forward,
    ops.gelu_backward,
    attention.attention_forward,
    attention.attention_backward,
)

FUSED_OPS = TrainingOps(
    fused.embedding_backward_fused,
    fused.layernorm_forward_fused,
    fused.layernorm_backward_fused,
    fused.gelu_forward_fused,
    fused.gelu_backward_fused,
    fused.attention_forward_fused,
    fused.attention_backward_fused,
)


def select_ops() -> TrainingOps:
    """The training ops that ``MINICOMPRESS_KERNEL`` asks for."""
    return REFERENCE_OPS if kernel_choice() == "reference" else FUSED_OPS
