"""Tier 1: the portable int8 kernels, for any CPU Numba supports (read after ``reference.py``).

The integer GEMM is the reference's triple loop with the loops in the order a CPU likes:

    for each row m of the activations, each tile of 256 output columns:
        acc[0:256] = 0                                  (int32, stays in L1)
        for each k:  acc[j] += int32(a[m, k]) * w[k, n0 + j]    for j < 256

The inner loop runs over a contiguous row of w, so LLVM vectorizes it (``vpmovsxbd`` +
``vpmaddwd`` on 256-bit vectors); no loop form makes it emit the int8 dot-product
instructions of the x86 paths, so this path runs at a quarter to half the speed of NumPy's
fp32 matmul (faster at M = 1, where reading the weights dominates and they are 4x smaller).

The linear layer (``linear_kernel``) is ``parallel.run_layer`` with this module's steps:
the activation rows are quantized (``int8_quant.quantize_rows``), each tile of 256 columns
is computed as above and dequantized at once (``int8_quant.dequantize_tile``). Weights keep
the plain [K, N] layout. With ``NUMBA_DISABLE_JIT=1`` all of it runs as plain Python, to
step through with a debugger.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit, prange

from minicompress.kernels import parallel
from minicompress.kernels.int8_quant import BAD_SHAPES, OK, dequantize_tile

N_TILE = 256  # int32 accumulators per row: 1 KB, stays in L1
_NO_SCALE, _NO_ZP = parallel.NO_SCALE, parallel.NO_ZERO_POINT  # per-row activation ranges


@njit(parallel=True, cache=True, nogil=True)
def gemm_kernel(a, w, c):
    """c = a @ w: a uint8 or int8 [M, K], w int8 [K, N], c int32 [M, N] (written in full).

    Work items are (256-column tile of N, row of M) pairs, so M = 1 still uses every core.
    """
    m_total, k = a.shape
    n = w.shape[1]
    n_tiles = (n + N_TILE - 1) // N_TILE
    for t in prange(n_tiles * m_total):
        n0 = (t // m_total) * N_TILE
        m = t % m_total
        width = min(n, n0 + N_TILE) - n0
        acc = np.zeros(N_TILE, dtype=np.int32)  # [N_TILE]
        for i in range(k):
            a_mk = np.int32(a[m, i])
            w_row = w[i, n0 : n0 + width]  # [width], contiguous: the loop below vectorizes
            for j in range(width):
                acc[j] += a_mk * w_row[j]
        c[m, n0 : n0 + width] = acc[:width]


# ----------------------------------------------------------------------------------------
# the linear layer: the steps of parallel.run_layer for this path
# ----------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def linear_rows(q, work, m0, m1, w_q, u0, u1, n, s_x, z_x, col_sum, w_scale, bias, has_bias, y):
    """y[m0:m1, 256 u0 : min(n, 256 u1)] from the quantized rows q (uint8 [M, K]), a tile
    of 256 columns at a time; ``work`` is unused."""
    k = w_q.shape[0]
    acc = np.empty((1, N_TILE), dtype=np.int32)  # [1, N_TILE]
    acc_row = acc[0]  # [N_TILE]
    for n0 in range(u0 * N_TILE, min(n, u1 * N_TILE), N_TILE):
        n1 = min(n, n0 + N_TILE)
        for m in range(m0, m1):
            acc_row[:] = 0
            for i in range(k):
                a_mk = np.int32(q[m, i])
                w_row = w_q[i, n0:n1]  # [n1 - n0], contiguous: the loop below vectorizes
                for j in range(n1 - n0):
                    acc_row[j] += a_mk * w_row[j]
            dequantize_tile(acc, m, 1, n0, n1, s_x, z_x, col_sum, w_scale, bias, has_bias, y)


@njit(cache=True, nogil=True)
def weight_status(w_q, k, n):
    """OK if the weight is the layer's [K, N], else BAD_SHAPES."""
    return OK if w_q.shape == (k, n) else BAD_SHAPES


@njit(cache=True, nogil=True)
def column_units(w_q, n):
    """The units of N the threads share: tiles of N_TILE columns."""
    return -(-n // N_TILE)


@njit(cache=True, nogil=True)
def q_width(w_q, k):
    """The quantized rows are as wide as x (no padding of K)."""
    return k


@njit(cache=True, nogil=True)
def linear_kernel(x, weight, col_sum, w_scale, bias, has_bias, y):
    """``quantized_linear_reference`` on the portable path: ``parallel.run_layer`` (its
    status) with the steps above; ``weight`` is ``w_q``, int8 [K, N]."""
    return parallel.run_layer(
        "portable", x, weight, col_sum, w_scale, bias, has_bias, y, False, parallel.options()
    )


@njit(cache=True, nogil=True)
def linear_kernel_serial(x, weight, col_sum, w_scale, bias, has_bias, y):
    """``linear_kernel`` on the calling thread (``parallel.run_layer_serial``)."""
    return parallel.run_layer_serial(
        "portable", x, weight, col_sum, w_scale, bias, has_bias, y, True, parallel.options()
    )


@njit(cache=True, nogil=True)
def linear_kernel_full(x, weight, col_sum, w_scale, bias, has_bias, y, serial, options):
    """``linear_kernel`` with every argument of ``parallel.run_layer``: on the calling
    thread only if ``serial``; ``options``: static activation scale and zero point, carried
    codes in and out, the activation of ``epilogue.py``."""
    return parallel.run_layer(
        "portable", x, weight, col_sum, w_scale, bias, has_bias, y, serial, options
    )


parallel.register("portable", sys.modules[__name__])
