"""Inference twins of the model's row-wise ops: no training caches, one pass where the
training ops make several.

``INFERENCE_OPS`` is an ``nn.backend.OpImpl`` like ``NUMPY_OPS`` and ``NUMBA_OPS``, so the
inference runtime runs the one model, ``nn.model.forward``, with it. What differs from the
training twins of ``nn/fused.py``:

- nothing is kept for a backward pass (the caches are None; the backward entries refuse):
  layer norm does not store x_hat, GELU does not store tanh(u), attention does not store
  the [B, H, Tq, Tk] probabilities;
- layer norm is one pass over each row into one output array;
- GELU is one vectorized pass in float32 (``kernels/fastmath.py``: a rational erf, or the
  tanh form with an exp from the float's bits);
- attention (``deploy/attention.py``) reads q, k, v as views of the qkv projection (no
  copy), runs head by head and row by row with the scores in registers, and writes its
  output in the order the next layer reads (no copy either). It takes fewer queries than
  keys (a key/value cache: query i sits at position Tk - Tq + i).

``INT8_INFERENCE_OPS`` is the same table with a layer norm that also quantizes its output
for the int8 layer that reads it (``layernorm_codes_forward_infer``: int8 activations
carried, ``kernels/carried.py``); the runtime uses it with ``RuntimeConfig(fuse=True)``.

The runtime (``deploy/runtime.py``) gets its parallelism by splitting the batch between
threads, which never wait for each other inside a layer; there every kernel runs on its
worker's one thread. A batch of one runs on the calling thread with Numba's threads: the
attention then shares its heads, and a large GELU its elements (``GELU_SPLIT_MIN``).
Shape letters: B batch, H heads, Tq queries, Tk keys, D head width, C width.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from minicompress.deploy.attention import attention_forward_infer, split_qkv_views
from minicompress.kernels.carried import CARRY_MIN_ROWS, empty_row_codes, with_codes
from minicompress.kernels.fastmath import FAST, NO_REASSOC, gelu_erf_f32, gelu_tanh_f32
from minicompress.kernels.int8_quant import quantize_rows
from minicompress.kernels.threads import threads_here
from minicompress.nn.backend import OpImpl
from minicompress.nn.fused import gelu_forward_fused

# ----------------------------------------------------------------------------------------
# layer norm
# ----------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")
def _layernorm_rows(x, g, b, eps, y, r0, r1):  # y[r0:r1] = layer norm of x[r0:r1]
    c = x.shape[1]  # x, y: [R, C]; g, b: [C]
    for i in range(r0, r1):
        mean = 0.0  # float64 accumulators, as the training kernel
        for j in range(c):
            mean += x[i, j]
        mean /= c
        var = 0.0
        for j in range(c):
            d = x[i, j] - mean
            var += d * d
        rstd = 1.0 / math.sqrt(var / c + eps)
        for j in range(c):
            y[i, j] = (x[i, j] - mean) * rstd * g[j] + b[j]


_CODE_BLOCK_ROWS = 16  # rows normalized, then quantized, while they are in L1


@njit(cache=True, nogil=True)
def _layernorm_codes_rows(x, g, b, eps, y, q, s, z):
    """y = layer norm of x's rows, and the codes of y's rows (``quantize_rows``), a block of
    rows at a time while they are in L1 (row by row was slower: each call's overhead).
    q: uint8 [>= R, >= C]; s: float32 [R]; z: int32 [R]. False if a row of y is not finite
    (its codes are then meaningless)."""
    finite = True
    for r0 in range(0, x.shape[0], _CODE_BLOCK_ROWS):
        r1 = min(x.shape[0], r0 + _CODE_BLOCK_ROWS)
        _layernorm_rows(x, g, b, eps, y, r0, r1)
        finite &= quantize_rows(y, q, s, z, r0, r1, np.float32(0.0), np.int32(0))
    return finite


def layernorm_forward_infer(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5):
    """``ops.layernorm_forward`` without its cache: y = (x - mean) / sqrt(var + eps) * g + b
    over the last axis, one pass per row.  x: [..., C]  ->  (y [..., C], None)."""
    shape = x.shape
    x2 = np.ascontiguousarray(x).reshape(-1, shape[-1])  # [R, C]
    y = np.empty_like(x2)
    _layernorm_rows(x2, g, b, eps, y, 0, x2.shape[0])
    return y.reshape(shape), None


def layernorm_codes_forward_infer(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5):
    """``layernorm_forward_infer`` that also quantizes its output for the int8 layer that
    reads it (int8 activations carried, ``kernels/carried.py``): y's rows are quantized
    (``quantize_rows_uint8``, bit for bit) right after they are normalized, and y is returned
    as a ``CodedArray`` carrying the codes. float32 with at least ``CARRY_MIN_ROWS`` rows
    only; otherwise, or if y is not finite, a plain array.
    x: [..., C]  ->  (y [..., C], None)."""
    shape = x.shape
    rows = int(np.prod(shape[:-1]))
    if x.dtype != np.float32 or rows < CARRY_MIN_ROWS:
        return layernorm_forward_infer(x, g, b, eps)
    x2 = np.ascontiguousarray(x).reshape(rows, shape[-1])  # [R, C]
    y = np.empty_like(x2)
    codes = empty_row_codes(rows, shape[-1])
    if not _layernorm_codes_rows(x2, g, b, eps, y, *codes):
        return y.reshape(shape), None
    return with_codes(y.reshape(shape), codes), None


# ----------------------------------------------------------------------------------------
# GELU
# ----------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=NO_REASSOC, error_model="numpy")
def _gelu_f32_array(x, y, erf):  # x, y: float32 [n]; the erf form, else the tanh form
    if erf:
        for i in range(x.shape[0]):
            y[i] = gelu_erf_f32(x[i])
    else:
        for i in range(x.shape[0]):
            y[i] = gelu_tanh_f32(x[i])


# elements from which GELU shares its pass among Numba's threads when it has several (a
# batch of one; measured at 128 x 512 on 2 threads: 16.6 -> 10.0 us)
GELU_SPLIT_MIN = 2**14


@njit(cache=True, nogil=True, parallel=True)
def _gelu_f32_parts(x, y, erf):  # _gelu_f32_array, one contiguous part per thread
    n = x.shape[0]
    parts = threads_here()
    for p in prange(parts):
        lo, hi = p * n // parts, (p + 1) * n // parts
        _gelu_f32_array(x[lo:hi], y[lo:hi], erf)


def gelu_forward_infer(x: np.ndarray, approximate: str = "tanh"):
    """``ops.gelu_forward`` without its cache. float32: one vectorized Numba pass of
    ``fastmath.gelu_erf_f32`` or ``gelu_tanh_f32`` (float32 exp from its bits; the erf form
    by SciPy's scalar ``erf`` took ~2/3 of a W8A8 BERT forward, the float64 version of
    this pass ~1/5), shared among Numba's threads from ``GELU_SPLIT_MIN`` elements when
    the calling thread has several (element-wise: the same bits). float64 (the checks of
    the whole model in float64): ``fused.gelu_forward_fused`` (NumPy's tanh, SciPy's exact
    ``erf``). x: [...]  ->  (y [...], None)."""
    if approximate not in ("tanh", "none") or x.dtype != np.float32:
        return gelu_forward_fused(x, approximate)[0], None
    xc = np.ascontiguousarray(x)
    y = np.empty_like(xc)
    split = xc.size >= GELU_SPLIT_MIN and numba.get_num_threads() > 1
    kernel = _gelu_f32_parts if split else _gelu_f32_array
    kernel(xc.reshape(-1), y.reshape(-1), approximate == "none")
    return y, None


# ----------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------


def _no_backward(*args, **kwargs):
    raise TypeError(
        "deploy.ops.INFERENCE_OPS keep no caches and have no backward; train or take "
        "gradients with nn.backend.NUMPY_OPS or NUMBA_OPS"
    )


INFERENCE_OPS = OpImpl(
    embedding_backward=_no_backward,
    layernorm_forward=layernorm_forward_infer,
    layernorm_backward=_no_backward,
    gelu_forward=gelu_forward_infer,
    gelu_backward=_no_backward,
    attention_forward=attention_forward_infer,
    attention_backward=_no_backward,
    split_qkv=split_qkv_views,
)
# the int8 runtime's table: every layer norm also writes the codes of its output, which the
# int8 layer reading it takes instead of quantizing it again (``kernels/carried.py``)
INT8_INFERENCE_OPS = INFERENCE_OPS._replace(layernorm_forward=layernorm_codes_forward_infer)
