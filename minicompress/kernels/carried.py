"""int8 activations carried from one layer to the next: the uint8 codes of an activation,
made where the activation is made, so that the int8 layer that reads it does not quantize it
again.

An int8 layer quantizes its input x [M, K] on every call (``quantize_rows_uint8``: a pass
over each row for its range, one for the codes). When x has just been written by a layer
norm or by the epilogue of the layer before (``epilogue.py``), its rows are still in cache
there, and quantizing them then saves reading them again from memory. The codes travel with
the values:

- ``RowCodes(codes, scale, zero_point)``: ``quantize_rows_uint8`` of x's rows, laid out as
  every kernel path reads them: codes uint8 [Mr, Kc] with Mr = M rounded up to
  ``ROW_MULTIPLE`` (the AMX path's blocks of rows) and Kc = K rounded up to
  ``COLUMN_MULTIPLE`` (every path's padding of K), zeros past K; scale float32 [M],
  zero_point int32 [M].
- ``CodedArray``: an ndarray holding the float32 values of x that also carries their
  ``RowCodes`` (``.row_codes``). Only that very object carries them: a view, a reshape or the
  result of any operation on it has ``row_codes = None``, since its values may differ.

The int8 runtime passes a ``CodedArray`` from the layer norm (``deploy.ops``) or from the
MLP's first layer (GELU and the codes in its epilogue) to the int8 layer that reads it;
``int8_fused.int8_linear_fused(x, layer, codes=...)`` uses the codes instead of quantizing x. The
result is the same, bit for bit: the codes are the ones the layer would have computed.
Below ``CARRY_MIN_ROWS`` rows (generation, one token at a time) nothing is carried: the
product is a few microseconds and the extra arguments would cost more than they save.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minicompress.kernels.int8_quant import quantize_rows

ROW_MULTIPLE = 32  # rows of the AMX path's blocks (``x86/amx.py`` M_BLOCK)
COLUMN_MULTIPLE = 64  # K of the AMX tiles; the other paths pad K to 4
CARRY_MIN_ROWS = 16  # fewer rows: nothing is carried (see the module docstring)


class RowCodes(NamedTuple):
    """The uint8 codes of the rows of an activation x [M, K], padded for the kernels.

    codes: uint8 [ceil(M / 32) * 32, ceil(K / 64) * 64], the codes of
    ``quantize_rows_uint8(x)`` in [:M, :K] and 0 in the padding columns; scale: float32 [M];
    zero_point: int32 [M]."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def empty_row_codes(m: int, k: int) -> RowCodes:
    """Buffers for the codes of an [M, K] activation (filled by a kernel)."""
    codes = np.empty((_round_up(m, ROW_MULTIPLE), _round_up(k, COLUMN_MULTIPLE)), np.uint8)
    return RowCodes(codes, np.empty(m, np.float32), np.empty(m, np.int32))


def row_codes(x: np.ndarray) -> RowCodes:
    """``quantize_rows_uint8(x)`` laid out as a ``RowCodes`` (the Numba quantizer of the
    kernels, ``int8_quant.quantize_rows``). x: float32 [M, K], C-contiguous, finite."""
    m, k = x.shape
    out = empty_row_codes(m, k)
    if not quantize_rows(x, out.codes, out.scale, out.zero_point, 0, m, np.float32(0), np.int32(0)):
        raise ValueError("x must be finite, with rows whose range fits float32")
    return out


class CodedArray(np.ndarray):
    """A float32 activation that carries the ``RowCodes`` of its rows (``.row_codes``).

    Made with ``with_codes(values, codes)``; every array derived from it (views, reshapes,
    results of operations) has ``row_codes = None``."""

    row_codes: RowCodes | None = None

    def __array_finalize__(self, obj) -> None:
        self.row_codes = None  # a derived array: its values may not be the coded ones


def with_codes(values: np.ndarray, codes: RowCodes) -> CodedArray:
    """``values`` (not copied) as a ``CodedArray`` carrying ``codes``."""
    out = values.view(CodedArray)
    out.row_codes = codes
    return out


def codes_of(x) -> RowCodes | None:
    """The codes ``x`` carries, or None (a plain array, or one derived from a coded one)."""
    return x.row_codes if type(x) is CodedArray else None
