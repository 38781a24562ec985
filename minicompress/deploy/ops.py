"""Inference twins of the model's row-wise ops: no training caches, one pass where the
training ops make several.

``INFERENCE_OPS`` is an ``nn.backend.OpImpl`` like ``NUMPY_OPS`` and ``NUMBA_OPS``, so the
inference runtime runs the one model, ``nn.model.forward``, with it. What differs from the
training twins of ``nn/fused.py``:

- nothing is kept for a backward pass (the caches are None; the backward entries refuse):
  layer norm does not store x_hat, GELU does not store tanh(u), attention does not store
  the [B, H, Tq, Tk] probabilities;
- layer norm is one pass over each row into one output array;
- attention runs head by head: scores ``q k^T`` and output ``p v`` are two small BLAS
  products per head (``np.dot`` inside Numba), and the scale, the mask and the softmax are
  fused in one pass over the scores of that head, which stay in the cache (L2). No
  transposed copy of k, no [B, H, T, T] array. It takes fewer queries than keys (a
  key/value cache: query i sits at position Tk - Tq + i).

The kernels run on the calling thread; the runtime (``deploy/runtime.py``) gets its
parallelism by splitting the batch between threads, which never wait for each other inside a
layer. Shape letters: B batch, H heads, Tq queries, Tk keys, D head width, C width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from minicompress.nn.attention import check_attention_shapes, check_pad_mask
from minicompress.nn.backend import OpImpl
from minicompress.nn.fused import gelu_forward_fused

# Reductions may be reassociated so that LLVM vectorizes them (as nn/fused.py); no flag that
# assumes finite values.
_FAST = {"reassoc", "nsz", "contract", "arcp"}

# ----------------------------------------------------------------------------------------
# exp of a non-positive number, vectorizable
# ----------------------------------------------------------------------------------------

_EXP_SQUARINGS = 7  # exp(x) = exp(x / 2^7)^(2^7)
_EXP_MIN = -87.0  # below this exp(x) < 1.7e-38 (the smallest normal float32): 0 is returned


@njit(cache=True, fastmath=_FAST, error_model="numpy", inline="always")
def exp_nonpositive(x):
    """exp(x) for x <= 0 by scaling and squaring:  exp(x) = p(x / 128)^128, where p is the
    Taylor polynomial of degree 11 of exp at 0, evaluated in float64 (Horner).

    On [-87, 0], r = x / 128 lies in [-0.68, 0], where p's relative error is below
    |r|^12 / 12! < 5e-11; seven squarings multiply it by 128: < 1e-8 relative, under one
    float32 ulp (6e-8). x < -87 gives 0 (exp(x) < 1.7e-38 there). Built from multiplies and
    adds only, so LLVM vectorizes a loop that calls it (without Intel's SVML, Numba's
    ``math.exp`` is a scalar library call). x: a float scalar (float32 or float64)
    ->  float64. Used where the argument is <= 0 by construction: a softmax after its
    maximum is subtracted, tanh(u) = (1 - exp(-2|u|)) / (1 + exp(-2|u|)).
    """
    if x < _EXP_MIN:
        return 0.0
    r = np.float64(x) * (1.0 / 128.0)
    p = 1.0 / 39916800.0  # 1/11!
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    for _ in range(_EXP_SQUARINGS):
        p = p * p
    return p


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def _exp_nonpositive_array(x, y):  # x, y: [n]; y = exp(x) for x <= 0 (a test hook)
    for i in range(x.size):
        y[i] = exp_nonpositive(x[i])


def exp_nonpositive_array(x: np.ndarray) -> np.ndarray:
    """``exp_nonpositive`` over an array: x float32/float64 [...], every entry <= 0 (checked)
    ->  exp(x), the same shape and dtype."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64; got {x.dtype}")
    if x.size and not (x.max() <= 0):
        raise ValueError(f"x must be <= 0 everywhere (and not NaN); its maximum is {x.max()}")
    xc = np.ascontiguousarray(x)
    y = np.empty_like(xc)
    _exp_nonpositive_array(xc.reshape(-1), y.reshape(-1))
    return y


# ----------------------------------------------------------------------------------------
# layer norm
# ----------------------------------------------------------------------------------------


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def _layernorm_rows(x, g, b, eps, y):  # x, y: [R, C]; g, b: [C]
    r, c = x.shape
    for i in range(r):
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


def layernorm_forward_infer(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5):
    """``ops.layernorm_forward`` without its cache: y = (x - mean) / sqrt(var + eps) * g + b
    over the last axis, one pass per row.  x: [..., C]  ->  (y [..., C], None)."""
    shape = x.shape
    x2 = np.ascontiguousarray(x).reshape(-1, shape[-1])  # [R, C]
    y = np.empty_like(x2)
    _layernorm_rows(x2, g, b, eps, y)
    return y.reshape(shape), None


# ----------------------------------------------------------------------------------------
# GELU
# ----------------------------------------------------------------------------------------


# erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0: the Chebyshev fit of Press et
# al., "Numerical Recipes" (2nd ed., section 6.2, erfcc), fractional error < 1.2e-7 for every
# z >= 0. P's coefficients, constant term first:
_ERFC_P = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
           -1.13520398, 1.48851587, -0.82215223, 0.17087277)  # fmt: skip


@njit(cache=True, fastmath=_FAST, error_model="numpy", inline="always")
def gelu_erf_scalar(x):
    """GELU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), written with erfc(z), z = |x| / sqrt 2:
    0.5 x erfc(z) for x < 0 and 0.5 x (2 - erfc(z)) for x >= 0 (no cancellation for x < 0,
    where GELU is a small difference). erfc by ``_ERFC_P`` in float64 with
    ``exp_nonpositive``: relative error of the result < 2e-7 — about two float32 ulps —
    and multiplies, adds and one division only, so that LLVM vectorizes a loop over it
    (SciPy's ``erf`` is a scalar library call per element). x: float scalar -> float64."""
    z = abs(x) * 0.7071067811865476  # |x| / sqrt(2)
    t = 1.0 / (1.0 + 0.5 * z)
    p = _ERFC_P[9]
    p = _ERFC_P[8] + t * p
    p = _ERFC_P[7] + t * p
    p = _ERFC_P[6] + t * p
    p = _ERFC_P[5] + t * p
    p = _ERFC_P[4] + t * p
    p = _ERFC_P[3] + t * p
    p = _ERFC_P[2] + t * p
    p = _ERFC_P[1] + t * p
    p = _ERFC_P[0] + t * p
    # the exponent is <= 0 but for +3e-8 at z = 0 (the fit's own error): clamp it
    erfc = t * exp_nonpositive(min(p - z * z, 0.0))
    return 0.5 * x * (erfc if x < 0 else 2.0 - erfc)


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def _gelu_erf_array(x, y):  # x, y: [n]
    for i in range(x.shape[0]):
        y[i] = gelu_erf_scalar(x[i])


def gelu_forward_infer(x: np.ndarray, approximate: str = "tanh"):
    """``ops.gelu_forward`` without its cache. The tanh form: ``fused.gelu_forward_fused``'s
    passes (the polynomial in Numba, tanh by NumPy's vectorized function, measured 2x
    faster here than a single Numba pass that builds tanh from ``exp_nonpositive``). The
    erf form of float32: one vectorized Numba pass of ``gelu_erf_scalar`` (within two
    float32 ulps; SciPy's scalar ``erf`` took ~2/3 of a W8A8 BERT forward); of float64
    (the checks of the whole model in float64): the fused passes with SciPy's exact ``erf``.
    x: [...]  ->  (y [...], None)."""
    if approximate != "none" or x.dtype != np.float32:
        return gelu_forward_fused(x, approximate)[0], None
    xc = np.ascontiguousarray(x)
    y = np.empty_like(xc)
    _gelu_erf_array(xc.reshape(-1), y.reshape(-1))
    return y, None


# ----------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------


class NoAttentionCache(NamedTuple):
    """What the inference attention keeps: nothing. ``p`` is None because the model's forward
    lists every block's ``cache.p`` (the probabilities a distiller reads); inference never
    holds them for a whole batch."""

    p: None = None


_NO_ATTENTION_CACHE = NoAttentionCache()


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def _softmax_row(s, end, scale, tk):
    """s[:end] <- softmax(scale * s[:end]), s[end:] <- 0. Scores of -inf (padding) get
    probability 0; a row whose scores are all -inf (a query that sees no key) gets 1 / Tk
    on each of its Tk' entries, as the NumPy reference (its masked scores are all -1e9, so
    such a query averages all Tk values; a causal block holds Tk' <= Tk keys: the
    causal mask and padding together can only leave a query keyless in a non-causal
    model or with every visible key padded). s: [Tk']."""
    m = s[0]
    for j in range(1, end):
        m = max(m, s[j])
    if m == -np.inf:
        s[:] = 1.0 / tk
        return
    total = 0.0
    for j in range(end):
        e = exp_nonpositive((s[j] - m) * scale)  # exp(-inf) = 0
        s[j] = e
        total += e
    inv = 1.0 / total
    for j in range(end):
        s[j] *= inv
    s[end:] = 0.0


_ROW_BLOCK = 64  # causal queries per block: a block multiplies only the keys it can see


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def _attention_heads(q, k, v, causal, pad, y):
    """y[b, h] = softmax(q[b, h] k[b, h]^T / sqrt(D) + mask) v[b, h] for every head.
    q, y: [B, H, Tq, D]; k, v: [B, H, Tk, D] (C-contiguous); pad: [B, Tk] or [0, 0].
    Causal: the queries go in blocks of _ROW_BLOCK rows, and a block's two products stop
    at the last key its last query sees (at T = 128, two blocks: 3/4 of the full square)."""
    b_, h_, tq, d = q.shape
    tk = k.shape[2]
    scale = 1.0 / math.sqrt(d)
    has_pad = pad.shape[0] > 0
    blocked = causal and not has_pad  # with padding a query may see no key: full rows
    rows = min(tq, _ROW_BLOCK) if blocked else tq
    buf = np.empty(rows * tk, dtype=q.dtype)  # scores of one block, then its probabilities
    for b in range(b_):
        for h in range(h_):
            for i0 in range(0, tq, rows):
                i1 = min(i0 + rows, tq)
                kend = tk - tq + i1 if blocked else tk  # keys 0 .. kend - 1 are seen
                s = buf[: (i1 - i0) * kend].reshape((i1 - i0, kend))
                np.dot(q[b, h, i0:i1], k[b, h, :kend].T, s)  # [R, D] @ [D, Tk'] -> [R, Tk']
                if has_pad:
                    for j in range(kend):
                        if pad[b, j]:
                            s[:, j] = -np.inf
                for i in range(i0, i1):
                    end = tk - tq + i + 1 if causal else tk
                    _softmax_row(s[i - i0], end, scale, tk)
                np.dot(s, v[b, h, :kend], y[b, h, i0:i1])  # [R, Tk'] @ [Tk', D] -> [R, D]


def attention_forward_infer(q, k, v, causal: bool = True, pad_mask=None):
    """``attention.attention_forward`` without the probabilities in its cache:
    y = softmax(q k^T / sqrt(D) + mask) v, head by head.

    q: [B, H, Tq, D]; k, v: [B, H, Tk, D] with Tq <= Tk (query i at position Tk - Tq + i);
    pad_mask: bool [B, Tk] (True = padding) or None  ->  (y [B, H, Tq, D], NoAttentionCache).
    """
    check_attention_shapes(q, k, v)
    b, _, _, _ = q.shape
    pad_mask = check_pad_mask(pad_mask, b, k.shape[2])
    pad = np.zeros((0, 0), np.bool_) if pad_mask is None else np.ascontiguousarray(pad_mask)
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    y = np.empty_like(q)
    _attention_heads(q, k, v, bool(causal), pad, y)
    return y, _NO_ATTENTION_CACHE


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
)
