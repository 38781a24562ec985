"""Numba versions of the row-wise ops of training, with the contracts of ``ops.py``.

NumPy evaluates layer norm and the masked softmax as a chain of full-size temporaries, one
pass over memory per operator; these kernels make one pass over each row, and the causal
softmax skips the half of the scores that the mask removes. Each function has the
signature, the cache type and (to rounding) the result of its NumPy twin in ``ops.py`` /
``attention.py``, which stays the readable definition; tests compare the two and check both
by finite differences. ``MINICOMPRESS_KERNEL=reference`` makes the model use the NumPy
twins instead (see ``nn.backend``).

The kernels run on one thread on purpose: OpenBLAS's worker threads keep spinning for a
while after each matmul, and a Numba parallel region right after one fights them for the
two cores (measured here: a 2.5 ms matmul followed by a 6 ms parallel kernel took 15 ms).
Transcendentals stay in NumPy (``np.tanh``, ``np.exp``): its SIMD versions beat a
scalar loop by 10x, so the kernels do the arithmetic around them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy.special import erf

from minicompress.nn.attention import AttentionCache, check_attention_shapes, check_pad_mask
from minicompress.nn.ops import (
    EmbeddingCache,
    GeluCache,
    LayerNormCache,
    gelu_forward,
)

# ----------------------------------------------------------------------------------------
# GELU, tanh form: the polynomial parts fused, tanh left to NumPy's SIMD version
# ----------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715

# Reductions (row sums, means) may be reassociated so that LLVM vectorizes them; no flag
# that assumes finite values, since the masks use -inf. Results then differ from a strict
# left-to-right sum in the last bits, deterministically on a given CPU.
_REASSOC = {"reassoc", "nsz", "contract"}


@njit(cache=True)
def _gelu_tanh_argument(x, u):  # x, u: [n]; u = sqrt(2/pi) (x + c x^3)
    dt = x.dtype.type
    s, sc = dt(_SQRT_2_OVER_PI), dt(_SQRT_2_OVER_PI * _GELU_C)
    for i in range(x.size):
        v = x[i]
        u[i] = (sc * v * v + s) * v


@njit(cache=True)
def _gelu_tanh_output(x, t, y):  # y = 0.5 x (1 + t)
    dt = x.dtype.type
    for i in range(x.size):
        y[i] = dt(0.5) * x[i] * (dt(1.0) + t[i])


@njit(cache=True)
def _gelu_tanh_backward_kernel(dy, x, t, dx):
    # dx = dy (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3c x^2))
    dt = x.dtype.type
    s, sc3 = dt(_SQRT_2_OVER_PI), dt(3.0 * _SQRT_2_OVER_PI * _GELU_C)
    for i in range(x.size):
        v, ti = x[i], t[i]
        dx[i] = dy[i] * dt(0.5) * (dt(1.0) + ti + v * (dt(1.0) - ti * ti) * (sc3 * v * v + s))


def _gelu_erf_forward(x: np.ndarray) -> tuple:
    """``ops.gelu_forward``'s erf form in place on temporaries (one pass per operator, no
    hidden copies): scipy's vectorized ``erf`` beats a scalar loop."""
    dt = x.dtype.type
    t = erf(x * dt(1.0 / math.sqrt(2.0))).astype(x.dtype, copy=False)
    y = t + dt(1.0)
    y *= x
    y *= dt(0.5)
    return y, GeluCache(x, t, "none")


def _gelu_erf_backward(dy: np.ndarray, cache: GeluCache) -> np.ndarray:
    """``ops.gelu_backward``'s erf form, in place on one temporary."""
    x, t, _ = cache
    dt = x.dtype.type
    d = x * x  # 2 x exp(-x^2 / 2) / sqrt(2 pi)
    d *= dt(-0.5)
    np.exp(d, out=d)
    d *= x
    d *= dt(2.0 / math.sqrt(2.0 * math.pi))
    d += t
    d += dt(1.0)
    d *= dt(0.5)
    d *= dy
    return d


def gelu_forward_fused(x: np.ndarray, approximate: str = "tanh") -> tuple:
    """``ops.gelu_forward``: the tanh form in three passes, the erf form in place."""
    if approximate == "none":
        return _gelu_erf_forward(x)
    if approximate != "tanh":
        return gelu_forward(x, approximate)  # refuses it with the reference's message
    x = np.ascontiguousarray(x)
    t, y = np.empty_like(x), np.empty_like(x)
    _gelu_tanh_argument(x.reshape(-1), t.reshape(-1))
    np.tanh(t, out=t)
    _gelu_tanh_output(x.reshape(-1), t.reshape(-1), y.reshape(-1))
    return y, GeluCache(x, t, "tanh")


def gelu_backward_fused(dy: np.ndarray, cache: GeluCache) -> np.ndarray:
    """``ops.gelu_backward``: one pass (tanh form), in place (erf form)."""
    if cache.approximate != "tanh":
        return _gelu_erf_backward(dy, cache)
    dy = np.ascontiguousarray(dy)
    dx = np.empty_like(dy)
    _gelu_tanh_backward_kernel(
        dy.reshape(-1), cache.x.reshape(-1), cache.t.reshape(-1), dx.reshape(-1)
    )
    return dx


# ----------------------------------------------------------------------------------------
# embedding backward: a scatter-add of rows
# ----------------------------------------------------------------------------------------


@njit(cache=True)
def _scatter_add_rows(table, idx, rows):  # table[idx[i]] += rows[i]; idx: [M], rows: [M, C]
    for i in range(idx.shape[0]):
        table[idx[i]] += rows[i]


def embedding_backward_fused(dout: np.ndarray, cache: EmbeddingCache) -> np.ndarray:
    """``ops.embedding_backward`` (``np.add.at``) as a plain loop, in the same order."""
    idx, vocab_size = cache
    c = dout.shape[-1]
    dtable = np.zeros((vocab_size, c), dtype=dout.dtype)
    _scatter_add_rows(dtable, idx.reshape(-1), np.ascontiguousarray(dout).reshape(-1, c))
    return dtable


# ----------------------------------------------------------------------------------------
# layer norm
# ----------------------------------------------------------------------------------------


@njit(cache=True, fastmath=_REASSOC)
def _layernorm_kernel(x, g, b, eps, y, xhat, rstd):  # x, y, xhat: [R, C]; rstd: [R]
    r, c = x.shape
    for i in range(r):
        mean = x[i].sum() / c
        var = 0.0
        for j in range(c):
            d = x[i, j] - mean
            var += d * d
        s = 1.0 / math.sqrt(var / c + eps)
        rstd[i] = s
        for j in range(c):
            h = (x[i, j] - mean) * s
            xhat[i, j] = h
            y[i, j] = h * g[j] + b[j]


@njit(cache=True, fastmath=_REASSOC)
def _layernorm_backward_kernel(dy, xhat, rstd, g, dx):  # dy, xhat, dx: [R, C]; rstd: [R]
    r, c = dy.shape
    for i in range(r):
        m1 = 0.0  # mean(dxhat)
        m2 = 0.0  # mean(dxhat * xhat)
        for j in range(c):
            d = dy[i, j] * g[j]
            m1 += d
            m2 += d * xhat[i, j]
        m1 /= c
        m2 /= c
        for j in range(c):
            dx[i, j] = rstd[i] * (dy[i, j] * g[j] - m1 - xhat[i, j] * m2)


def layernorm_forward_fused(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5):
    """``ops.layernorm_forward`` in one pass over each row (statistics accumulated in float64)."""
    shape = x.shape
    x2 = np.ascontiguousarray(x).reshape(-1, shape[-1])  # [R, C]
    y, xhat = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)
    _layernorm_kernel(x2, g, b, eps, y, xhat, rstd)
    cache = LayerNormCache(xhat.reshape(shape), rstd.reshape(*shape[:-1], 1), g)
    return y.reshape(shape), cache


def layernorm_backward_fused(dy: np.ndarray, cache: LayerNormCache) -> tuple:
    """``ops.layernorm_backward``: dx in one pass per row, dg and db as NumPy reductions."""
    xhat, rstd, g = cache
    c = dy.shape[-1]
    dy2 = np.ascontiguousarray(dy).reshape(-1, c)  # [R, C]
    xh2 = xhat.reshape(-1, c)
    dx = np.empty_like(dy2)
    _layernorm_backward_kernel(dy2, xh2, rstd.reshape(-1), g, dx)
    dg = np.einsum("rc,rc->c", dy2, xh2)  # sum over rows of dy * xhat, no temporary
    return dx.reshape(dy.shape), dg, dy2.sum(axis=0)


# ----------------------------------------------------------------------------------------
# attention softmax: scale, mask and normalise in one pass
# ----------------------------------------------------------------------------------------


@njit(cache=True, fastmath=_REASSOC)
def _shift_and_mask(att, scale, causal, pad):  # att: [B, H, Tq, Tk] in place; pad: [B, Tk]
    """att <- (att - max of the visible scores) * scale, and -inf where masked.
    A query that sees no key gets all zeros (uniform after exp), as the NumPy version.
    Query i sits at position Tk - Tq + i (Tq < Tk: the new positions after a key/value
    cache), so under the causal mask it sees keys 0 .. Tk - Tq + i."""
    b_, h_, t_, tk = att.shape
    dt = att.dtype.type
    has_pad = pad.shape[0] > 0
    for row in range(b_ * h_ * t_):
        b = row // (h_ * t_)
        i = row % t_
        a = att[b, (row // t_) % h_, i]  # [Tk] scores of query i
        end = tk - t_ + i + 1 if causal else tk
        m = dt(-np.inf)
        for j in range(end):
            if not (has_pad and pad[b, j]) and a[j] > m:
                m = a[j]
        if m == -np.inf:
            a[:] = 0.0
            continue
        for j in range(end):
            a[j] = (a[j] - m) * scale
        a[end:] = -np.inf
        if has_pad:
            for j in range(end):
                if pad[b, j]:
                    a[j] = -np.inf


@njit(cache=True, fastmath=_REASSOC)
def _normalize_rows(e, causal, tq):  # e: [B*H*Tq, Tk] in place; causal: rows end at the diagonal
    tk = e.shape[1]
    for r in range(e.shape[0]):
        end = tk - tq + r % tq + 1 if causal else tk
        s = e.dtype.type(0.0)
        for j in range(end):
            s += e[r, j]
        inv = e.dtype.type(1.0) / s
        for j in range(end):
            e[r, j] *= inv


@njit(cache=True, fastmath=_REASSOC)
def _softmax_backward_kernel(dp, p, scale, causal, pad):  # dp (in place -> ds), p: [B,H,T,T]
    """ds = p * (dp - sum(dp * p)) * scale per row; zero past the diagonal (causal) and for a
    query that sees no key (its row is constant). pad: [B, T] or [0, 0] for none."""
    b_, h_, t_, tk = p.shape
    dt = p.dtype.type
    has_pad = pad.shape[0] > 0
    for row in range(b_ * h_ * t_):
        b, hh, i = row // (h_ * t_), (row // t_) % h_, row % t_
        d, q = dp[b, hh, i], p[b, hh, i]
        end = tk - t_ + i + 1 if causal else tk
        sees_a_key = True
        if has_pad:
            sees_a_key = False
            for j in range(end):
                if not pad[b, j]:
                    sees_a_key = True
                    break
        if not sees_a_key:
            d[:] = 0.0
            continue
        s = dt(0.0)
        for j in range(end):
            s += d[j] * q[j]
        for j in range(end):
            d[j] = q[j] * (d[j] - s) * scale
        d[end:] = 0.0


def _pad_array(pad_mask) -> np.ndarray:
    return np.zeros((0, 0), np.bool_) if pad_mask is None else np.ascontiguousarray(pad_mask)


def attention_forward_fused(q, k, v, causal: bool = True, pad_mask=None) -> tuple:
    """``attention.attention_forward`` with the scale, mask and softmax fused in one pass."""
    b, _, t, d = q.shape
    tk = k.shape[2]
    check_attention_shapes(q, k, v)
    pad_mask = check_pad_mask(pad_mask, b, tk)
    scale = 1.0 / math.sqrt(d)
    kt = np.ascontiguousarray(k.swapaxes(-1, -2))  # [B, H, D, Tk]: a view would be 4x slower
    att = q @ kt  # [B, H, Tq, D] @ [B, H, D, Tk] -> [B, H, Tq, Tk]
    _shift_and_mask(att, q.dtype.type(scale), causal, _pad_array(pad_mask))
    np.exp(att, out=att)  # NumPy's SIMD exp: 10x a scalar exp loop
    # with padding a query may see no key and get a full uniform row: normalise whole rows
    _normalize_rows(att.reshape(-1, tk), causal and pad_mask is None, t)  # [B, H, Tq, Tk]
    y = att @ v  # [B, H, Tq, Tk] @ [B, H, Tk, D] -> [B, H, Tq, D]
    return y, AttentionCache(q, k, v, att, scale, causal, pad_mask)


def attention_backward_fused(dy, cache: AttentionCache, dp_extra=None) -> tuple:
    """``attention.attention_backward`` with the softmax backward and the scale fused."""
    q, k, v, p, scale, causal, pad_mask = cache
    dv = p.swapaxes(-1, -2) @ dy  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    vt = np.ascontiguousarray(v.swapaxes(-1, -2))  # [B, H, D, T]
    dp = dy @ vt  # [B, H, T, D] @ [B, H, D, T] -> [B, H, T, T]
    if dp_extra is not None:
        dp += dp_extra
    _softmax_backward_kernel(dp, p, q.dtype.type(scale), causal, _pad_array(pad_mask))
    dq = dp @ k  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    dk = dp.swapaxes(-1, -2) @ q  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    return dq, dk, dv
