"""What an int8 layer may do to its output rows while they are still in cache: the
activation that follows the layer, and the quantization of the result for the next int8
layer (int8 activations carried from one layer to the next, ``carried.py``).

``epilogue_rows(y, m0, m1, act, q_out, s_out, z_out)`` runs on rows m0:m1 of a layer's
float32 output y, a block of rows that stays in L2 from the activation to the
quantization:

1. ``act``: y[m] = GELU(y[m]) in place, the float32 GELU of the inference ops
   (``fastmath.gelu_erf_f32`` or ``gelu_tanh_f32``, the same bits as
   ``deploy.ops.gelu_forward_infer``), or nothing (``ACT_NONE``);
2. when q_out has rows: the codes of y[m] for the next layer, per row from its own range
   (``int8_quant.quantize_rows``, bit for bit ``reference.quantize_rows_uint8``).

The layer driver (``parallel.run_layer``) calls it on blocks of ``EPILOGUE_ROWS`` rows as
soon as the layer has computed them, so the output is read again from L2, not from memory,
and GELU needs no pass of its own over the [M, F] output. The unfused order (the layer,
then ``ops.gelu_forward``, then the next layer's quantization) gives the same bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from minicompress.kernels.fastmath import NO_REASSOC, gelu_erf_f32, gelu_tanh_f32
from minicompress.kernels.int8_quant import quantize_rows

ACT_NONE, ACT_GELU_TANH, ACT_GELU_ERF = 0, 1, 2
ACTIVATIONS = {"none": ACT_NONE, "gelu_tanh": ACT_GELU_TANH, "gelu_erf": ACT_GELU_ERF}
EPILOGUE_ROWS = 64  # rows per block: 64 x 1536 floats (384 KB) stay in a core's L2


@njit(cache=True, nogil=True, fastmath=NO_REASSOC, error_model="numpy")
def activate_rows(y, m0, m1, act):
    """y[m0:m1] <- GELU(y[m0:m1]) in place (erf form for ACT_GELU_ERF, tanh form for
    ACT_GELU_TANH); nothing for ACT_NONE. y: float32 [M, N], C-contiguous."""
    flat = y.reshape(-1)[m0 * y.shape[1] : m1 * y.shape[1]]  # the rows as one vector
    if act == ACT_GELU_ERF:
        for j in range(flat.size):
            flat[j] = gelu_erf_f32(flat[j])
    elif act == ACT_GELU_TANH:
        for j in range(flat.size):
            flat[j] = gelu_tanh_f32(flat[j])


@njit(cache=True, nogil=True)
def epilogue_rows(y, m0, m1, act, q_out, s_out, z_out):
    """Steps 1-2 of the module docstring on rows m0:m1 of y, one step over the whole block
    (a call per row costs more than a row of 128 floats: measured). Returns False if a
    quantized row holds NaN or inf or its range overflows float32 (``quantize_rows``).

    y: float32 [M, N]; act: ACT_*; q_out: uint8 [>= M, >= N] (0 rows: no quantization);
    s_out: float32 [>= M]; z_out: int32 [>= M].
    """
    activate_rows(y, m0, m1, act)
    if q_out.shape[0] == 0:
        return True
    return quantize_rows(y, q_out, s_out, z_out, m0, m1, np.float32(0.0), np.int32(0))


@njit(cache=True, nogil=True)
def epilogue_fits(m, n, act, q_out, s_out, z_out):
    """Whether act is an ACT_* code and the output code buffers hold M rows of N codes."""
    if act < ACT_NONE or act > ACT_GELU_ERF:
        return False
    if q_out.shape[0] == 0:
        return True
    return q_out.shape[0] >= m and q_out.shape[1] >= n and s_out.size >= m and z_out.size >= m
