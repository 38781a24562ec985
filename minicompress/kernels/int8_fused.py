"""The int8 linear layer with int8 activations carried in and out and its activation in the
epilogue (``carried.py``, ``epilogue.py``): ``int8_linear_fused``, beside ``int8.int8_linear``
(the same checks of the layer, the same kernels: their ``linear_kernel_full`` entry).
"""

from __future__ import annotations

import numpy as np

from minicompress.kernels.carried import RowCodes, empty_row_codes
from minicompress.kernels.epilogue import ACTIVATIONS, epilogue_rows
from minicompress.kernels.int8 import (
    NO_CODES,
    NO_SCALE,
    NO_ZERO_POINT,
    OK,
    SERIAL_MAX_WORK,
    PackedInt8Linear,
    layer_kernels_for,
    raise_for,
)
from minicompress.kernels.reference import check_array, quantized_linear_reference


def _codes_fit(codes: RowCodes, m: int, packed: PackedInt8Linear) -> bool:
    """Whether the path can read ``codes`` as x's quantized rows: as wide as its quantized
    rows (K padded to 4 on the x86 paths, not at all on the portable one: the same width
    when K is a multiple of 64), with rows for M."""
    width = packed.k if packed.path == "portable" else 4 * packed.weight.shape[1]
    return codes.codes.shape[1] == width and codes.codes.shape[0] >= m


_UINT8, _INT32, _FLOAT32 = np.dtype(np.uint8), np.dtype(np.int32), np.dtype(np.float32)


def _codes_are_plain(codes: object, m: int, k: int) -> bool:
    """The checks of ``_check_codes`` that pass for every RowCodes a kernel made, by
    identity and shape only (a few hundred ns against several us for the named checks)."""
    try:
        q, scale, zero_point = codes
        return (
            type(codes) is RowCodes
            and q.dtype is _UINT8
            and scale.dtype is _FLOAT32
            and zero_point.dtype is _INT32
            and q.ndim == 2
            and q.shape[0] >= m
            and q.shape[1] >= k
            and scale.shape == (m,)
            and zero_point.shape == (m,)
            and q.flags.c_contiguous
            and scale.flags.c_contiguous
            and zero_point.flags.c_contiguous
        )
    except (TypeError, ValueError, AttributeError):
        return False


def _check_codes(codes: object, m: int, k: int) -> RowCodes:
    """Refuse codes that are not a ``RowCodes`` of an [M, K] activation, naming the field."""
    if not isinstance(codes, RowCodes):
        raise TypeError(f"codes must be a RowCodes or None; got {type(codes).__name__}")
    check_array("codes.codes", codes.codes, (np.uint8,), 2)
    check_array("codes.scale", codes.scale, (np.float32,), 1)
    check_array("codes.zero_point", codes.zero_point, (np.int32,), 1)
    if codes.codes.shape[0] < m or codes.codes.shape[1] < k:
        raise ValueError(f"codes.codes is {codes.codes.shape}: it must hold at least {m} x {k}")
    if codes.scale.shape != (m,) or codes.zero_point.shape != (m,):
        raise ValueError(
            f"codes.scale and codes.zero_point must have shape ({m},); got "
            f"{codes.scale.shape} and {codes.zero_point.shape}"
        )
    if not all(a.flags.c_contiguous for a in codes):
        raise ValueError("codes' arrays must be C-contiguous")
    return codes


def int8_linear_fused(
    x: np.ndarray,
    packed: PackedInt8Linear,
    codes: RowCodes | None = None,
    activation: str = "none",
    quantize_output: bool = False,
) -> tuple[np.ndarray, RowCodes | None]:
    """``int8_linear`` (dynamic activations) with int8 activations carried in and out and the
    activation fused into its epilogue (``carried.py``, ``epilogue.py``):

    y = activation(int8_linear(x, packed)),  codes of y = quantize_rows_uint8(y)

    x: float32 [M, K], the values (C-contiguous, finite); codes: x's ``RowCodes`` made where
    x was made (``carried.row_codes``), used instead of quantizing x when the path reads
    them (K a multiple of 64), or None; activation: "none", "gelu_tanh" or "gelu_erf"
    (the float32 GELU of ``fastmath``); quantize_output: also return the codes of y
      ->  (y float32 [M, N], y's ``RowCodes`` or None).

    The same bits as the unfused steps on every path (the reference path: the NumPy
    ``quantized_linear_reference``, then ``epilogue.epilogue_rows`` on its output).
    """
    if not isinstance(packed, PackedInt8Linear):
        raise TypeError(f"packed must be a PackedInt8Linear; got {type(packed).__name__}")
    act = ACTIVATIONS.get(activation) if isinstance(activation, str) else None
    if act is None:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    if not (type(x) is np.ndarray and x.dtype is _FLOAT32 and x.ndim == 2):
        x = check_array("x", np.asarray(x), (np.float32,), 2)  # a CodedArray: its values
    m = x.shape[0]
    if x.shape[1] != packed.k:
        raise ValueError(f"x is {x.shape}: x.shape[1] must equal the layer's K={packed.k}")
    if codes is not None and not _codes_are_plain(codes, m, packed.k):
        codes = _check_codes(codes, m, packed.k)  # raises, naming the field
    kernels = layer_kernels_for(packed)
    codes_out = empty_row_codes(m, packed.n) if quantize_output else NO_CODES
    if kernels is None:  # the reference path: the NumPy layer, then the same epilogue
        y = quantized_linear_reference(x, packed.weight, packed.w_scale, packed.bias)
        if not epilogue_rows(y, 0, m, act, *codes_out):
            raise ValueError("the layer's output is not finite: it cannot be quantized")
        return y, (codes_out if quantize_output else None)
    x = np.ascontiguousarray(x)
    codes_in = codes if codes is not None and _codes_fit(codes, m, packed) else NO_CODES
    y = np.empty((m, packed.n), _FLOAT32)  # [M, N]
    has_bias = packed.bias is not None
    bias = packed.bias if has_bias else packed.w_scale  # a float32 [N] never read without bias
    serial = m * packed.k * packed.n <= SERIAL_MAX_WORK
    options = (NO_SCALE, NO_ZERO_POINT, *codes_in, act, *codes_out)  # parallel.run_layer's
    status = kernels[2](
        x, packed.weight, packed.col_sum, packed.w_scale, bias, has_bias, y, serial, options
    )
    if status != OK:
        raise_for(status, packed)
    return y, (codes_out if quantize_output else None)
