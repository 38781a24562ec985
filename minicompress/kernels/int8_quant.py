"""Numba pieces shared by every int8 path: the activation quantizer, the dequantizer, the
checks.

``quantize_rows`` is ``reference.quantize_rows_uint8`` fused into one pass per row for the
range and one for the codes, bit for bit: the same float32 operations in the same order
(``(hi - lo) / 255``, ``rint(-lo / s)``, ``rint(x / s) + z``, a true division, not a
multiplication by ``1 / s``), rounding half to even in both. Given a static scale and zero
point (calibrated ahead of time), it writes the codes of ``reference.quantize_uint8`` with
them instead, with the same code loop. It runs on one thread over a range of rows: the
kernels call it inside their own parallel loop, so that a call of the layer is one parallel
region (waking the other core costs more than quantizing a row).

Non-finite values (one rule on every path, the reference's): an x holding NaN or inf, or a
row whose range ``max(x, 0) - min(x, 0)`` overflows float32, is refused (``NOT_FINITE``,
which ``int8_linear`` turns into a ValueError); so are non-finite scales or biases in a
packed layer (``BAD_VALUES``), which packing never produces.

``dequantize_tile`` is steps 3-4 of ``reference.quantized_linear_reference`` applied to a
tile of int32 accumulators as soon as it is computed, while it is still in cache:

    y[m, n] = (s_x[m] * w_scale[n]) * float32(acc[m, n] - z_x[m] * col_sum[n]) + bias[n].

``layer_status`` is the check every layer kernel makes first, natively, of the shapes of
its arrays and the finiteness of its scales and bias: the caller checks their dtypes and
contiguity (a wrong one would make Numba compile a new specialization, which takes
seconds), and a shape check in Python costs more than the product itself at M = 1
(measured: 1.2 us of a 6 us call). Each path checks its own weight layout
(``weight_status``, see ``parallel.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from minicompress.kernels.fastmath import float32_from_bits

_ROUND_MAGIC = np.float32(1.5 * 2**23)  # adding it leaves no bits below 1: the FPU rounds
_SIGN_BIT = np.int32(-(2**31))
_ABS_BITS = np.int32(0x7FFFFFFF)
_EXP_ALL_ONES = np.int32(0x7F800000)  # |bits| >= this: inf or NaN

# what a layer kernel returns
OK = 0
NOT_FINITE = 1  # x holds NaN or inf (or a row's range overflows); y is undefined
BAD_SHAPES = 2  # the layer's arrays do not have the shapes of its path's layout; y untouched
BAD_VALUES = 3  # non-finite scale or bias, or non-zero weights in the layout's padding


@njit(cache=True, nogil=True)
def round_half_even(v):
    """``np.rint(v)`` for a float32 with |v| <= 2**22, as two additions that vectorize.

    (v + 1.5 * 2**23) has no bits below 1, so the addition rounds v to an integer with the
    FPU's default mode, half to even; subtracting the constant back is exact. (Numba lowers
    ``np.rint`` to a call that blocks vectorization.) No fastmath here, or the two additions
    would cancel.
    """
    return (v + _ROUND_MAGIC) - _ROUND_MAGIC


@njit(cache=True, nogil=True, inline="always")
def row_range(bits):
    """lo = min(min_k x_k, 0), hi = max(max_k x_k, 0) and whether x is finite, in one pass
    over the int32 bit patterns of a float32 row x.

    For IEEE floats, comparing bit patterns as signed integers orders the non-negative
    floats; flipping the sign bit does the same for the negative ones. So max(0, bits) is the
    bits of hi, max(0, bits ^ sign) those of -lo, and max(bits & 0x7FFFFFFF) >= 0x7F800000
    exactly when an element is inf or NaN. Integer maxima vectorize; float min/max with
    NaN semantics do not.

    bits: int32 [K] (``row.view(np.int32)``)  ->  (lo float32, hi float32, finite bool).
    """
    hi_b, neg_lo_b, abs_b = np.int32(0), np.int32(0), np.int32(0)
    for i in range(bits.size):
        b = bits[i]
        hi_b = max(hi_b, b)
        neg_lo_b = max(neg_lo_b, np.int32(b ^ _SIGN_BIT))
        abs_b = max(abs_b, np.int32(b & _ABS_BITS))
    # the floats of those bits (a bit cast in registers: an array to view would be a
    # heap allocation per row)
    return -float32_from_bits(neg_lo_b), float32_from_bits(hi_b), abs_b < _EXP_ALL_ONES


@njit(cache=True, nogil=True, inline="always")
def _write_codes(row, q_row, scale, z_f):
    """q_row[:K] = clip(rint(row / scale) + z, 0, 255), q_row[K:] = 0 (``quantize_uint8``).

    Exact for any finite row and positive scale: round_half_even is exact for |v| <= 2**22,
    and beyond it (or for an infinite row / scale) its result is still past the clip, on the
    same side as rint's."""
    for i in range(row.size):
        # an integer of |c| <= 510, exact in float32; clamped as a float, since int32
        # arithmetic in Numba widens to int64 and halves the vector width (measured 20%)
        c = round_half_even(row[i] / scale) + z_f
        q_row[i] = np.uint8(np.int32(min(max(c, np.float32(0.0)), np.float32(255.0))))
    for i in range(row.size, q_row.size):
        q_row[i] = 0  # padding of K: the packed weights there are 0 too


@njit(cache=True, nogil=True, inline="always")
def _quantize_row(x, bits, q, s_x, z_x, m, act_scale, act_zp):
    """Quantize row m of x into q[m, :K] and zero q[m, K:]; False if x[m] is not finite or
    (dynamic ranges) its range overflows float32. bits: x viewed as int32. act_scale > 0:
    static scale and zero point act_zp; else the row's own range."""
    row, q_row = x[m], q[m]  # [K], [Kq]
    lo, hi, finite = row_range(bits[m])
    if act_scale > np.float32(0.0):
        scale, z = act_scale, act_zp
        z_f = np.float32(act_zp)
    else:
        span = hi - lo
        finite = finite and span < np.float32(np.inf)
        scale = span / np.float32(255.0)
        if not scale > np.float32(0.0):  # a row of zeros, or a range whose scale underflows
            scale = np.float32(1.0)
        z_f = min(max(round_half_even(-lo / scale), np.float32(0.0)), np.float32(255.0))
        z = np.int32(z_f)
    _write_codes(row, q_row, scale, z_f)
    s_x[m] = scale
    z_x[m] = z
    return finite


@njit(cache=True, nogil=True)
def quantize_rows(x, q, s_x, z_x, m0, m1, act_scale, act_zp):
    """``quantize_rows_uint8`` of rows m0:m1 into preallocated outputs, on one thread; with
    act_scale > 0, ``quantize_uint8(x, act_scale, act_zp)`` instead (s_x and z_x then hold
    the static values).

    x: float32 [M, K]; q: uint8 [>= M, Kq] with Kq >= K (columns K: are set to 0);
    s_x: float32 [M]; z_x: int32 [M]; act_scale: float32; act_zp: int32 in [0, 255].
    Returns False if those rows hold NaN or inf, or (dynamic) a row range overflows.
    """
    finite = True
    bits = x.view(np.int32)  # [M, K], once: a view per row costs its checks every row
    for m in range(m0, m1):
        finite &= _quantize_row(x, bits, q, s_x, z_x, m, act_scale, act_zp)
    return finite


@njit(cache=True, nogil=True)
def all_finite(v):
    """Whether a float32 vector holds no NaN or inf: the largest |bits| below inf's (the
    third result of ``row_range``, alone; an integer maximum, which vectorizes)."""
    bits = v.view(np.int32)
    abs_b = np.int32(0)
    for i in range(bits.size):
        abs_b = max(abs_b, np.int32(bits[i] & _ABS_BITS))
    return abs_b < _EXP_ALL_ONES


@njit(cache=True, nogil=True)
def layer_status(x, col_sum, w_scale, bias, y):
    """OK if the arrays of a layer other than its weight fit together, else BAD_SHAPES;
    BAD_VALUES if w_scale or bias is not finite.

    x: [M, K]; col_sum, w_scale, bias: [N]; y: [M, N] (N is y's). Shapes and values only:
    dtypes and C order are the caller's checks, the weight the path's (``weight_status``).
    """
    vector = (y.shape[1],)
    if (
        x.shape[0] != y.shape[0]
        or col_sum.shape != vector
        or w_scale.shape != vector
        or bias.shape != vector
    ):
        return BAD_SHAPES
    if not (all_finite(w_scale) and all_finite(bias)):
        return BAD_VALUES
    return OK


@njit(cache=True, nogil=True)
def dequantize_tile(acc, m0, rows, n0, n1, s_x, z_x, col_sum, w_scale, bias, has_bias, y):
    """y[m0 + r, n0:n1] from acc[r, :n1 - n0] for r < rows (formula in the module docstring).

    acc: int32 [>= rows, >= n1 - n0]; s_x: float32 [M]; z_x: int32 [M]; col_sum: int32 [N];
    w_scale, bias: float32 [N]; y: float32 [M, N] written in place.
    """
    width = n1 - n0
    for r in range(rows):
        m = m0 + r
        s, z = s_x[m], z_x[m]
        # 1-D contiguous views let LLVM vectorize the loops below
        acc_r, y_r = acc[r, :width], y[m, n0:n1]  # [width]
        col_sum_r, w_scale_r, bias_r = col_sum[n0:n1], w_scale[n0:n1], bias[n0:n1]  # [width]
        # the corrected sum is sum_k (q_x - z_x) w_q: it fits in int32, so the cast is exact
        if has_bias:
            for j in range(width):
                corrected = np.float32(np.int32(acc_r[j] - z * col_sum_r[j]))
                y_r[j] = (s * w_scale_r[j]) * corrected + bias_r[j]
        else:
            for j in range(width):
                corrected = np.float32(np.int32(acc_r[j] - z * col_sum_r[j]))
                y_r[j] = (s * w_scale_r[j]) * corrected
