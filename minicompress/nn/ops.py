"""Functional ops of the Transformer, each a forward/backward pair.

``op_forward(...) -> (out, cache)`` and ``op_backward(dout, cache) -> grads``. Caches are
NamedTuples; a comment says what is cached and why. Every op keeps its input dtype
(float32 in training, float64 in gradient checks). Shape letters: B batch, T sequence,
C width, V vocabulary, K in-features, N out-features; ``...`` any leading dims.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import erf

# ----------------------------------------------------------------------------------------
# linear
# ----------------------------------------------------------------------------------------


class LinearCache(NamedTuple):
    x: np.ndarray  # [..., K] input, needed for dw
    w: np.ndarray  # [K, N] weight, needed for dx


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple:
    """y = x @ w + b.   x: [..., K], w: [K, N], b: [N] or None  ->  y: [..., N]."""
    y = x.reshape(-1, x.shape[-1]) @ w  # [M, K] @ [K, N] -> [M, N]
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[1]), LinearCache(x, w)


def linear_backward(dy: np.ndarray, cache: LinearCache) -> tuple:
    """dx = dy @ w.T;  dw = x.T @ dy;  db = dy.sum(0)   (leading dims flattened to M)."""
    x, w = cache
    dy2 = dy.reshape(-1, dy.shape[-1])  # [..., N] -> [M, N]
    dx = (dy2 @ w.T).reshape(x.shape)  # [M, N] @ [N, K] -> [..., K]
    dw = x.reshape(-1, x.shape[-1]).T @ dy2  # [K, M] @ [M, N] -> [K, N]
    db = dy2.sum(axis=0)  # [N]
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# embedding
# ----------------------------------------------------------------------------------------


class EmbeddingCache(NamedTuple):
    idx: np.ndarray  # [...] token ids, to scatter the gradient back
    vocab_size: int


def embedding_forward(idx: np.ndarray, table: np.ndarray) -> tuple:
    """out = table[idx].   idx: int [...] in [0, V), table: [V, C]  ->  out: [..., C]."""
    if idx.size and (idx.min() < 0 or idx.max() >= table.shape[0]):
        raise ValueError(f"idx must lie in [0, {table.shape[0]}); got [{idx.min()}, {idx.max()}]")
    return table[idx], EmbeddingCache(idx, table.shape[0])


def embedding_backward(dout: np.ndarray, cache: EmbeddingCache) -> np.ndarray:
    """dtable[v] = sum of dout over the positions where idx == v   ->  [V, C]."""
    idx, vocab_size = cache
    dtable = np.zeros((vocab_size, dout.shape[-1]), dtype=dout.dtype)
    np.add.at(dtable, idx.reshape(-1), dout.reshape(-1, dout.shape[-1]))
    return dtable


# ----------------------------------------------------------------------------------------
# layer norm
# ----------------------------------------------------------------------------------------


class LayerNormCache(NamedTuple):
    xhat: np.ndarray  # [..., C] normalized input, reused by both dx and dg
    rstd: np.ndarray  # [..., 1] 1 / sqrt(var + eps)
    g: np.ndarray  # [C] gain


def layernorm_forward(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> tuple:
    """y = (x - mean) / sqrt(var + eps) * g + b over the last axis (biased variance).

    x: [..., C], g: [C], b: [C]  ->  y: [..., C].   Ba, Kiros & Hinton 2016.
    """
    xc = x - x.mean(axis=-1, keepdims=True)  # [..., C]
    var = np.mean(xc * xc, axis=-1, keepdims=True)  # [..., 1]
    rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))  # [..., 1]
    xhat = xc * rstd  # [..., C]
    return xhat * g + b, LayerNormCache(xhat, rstd, g)


def layernorm_backward(dy: np.ndarray, cache: LayerNormCache) -> tuple:
    """dxhat = dy * g;  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat));
    dg = sum(dy * xhat);  db = sum(dy)   (sums over all leading dims)."""
    xhat, rstd, g = cache
    dxhat = dy * g  # [..., C]
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
    dx -= xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True)
    dx *= rstd
    lead = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


# ----------------------------------------------------------------------------------------
# GELU
# ----------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


class GeluCache(NamedTuple):
    x: np.ndarray  # [...] input
    t: np.ndarray  # [...] tanh(u) (tanh form) or erf(x / sqrt 2) (erf form), reused in backward
    approximate: str


def gelu_forward(x: np.ndarray, approximate: str = "tanh") -> tuple:
    """GELU (Hendrycks & Gimpel 2016), elementwise, written as its formula.

    erf form:  y = 0.5 x (1 + erf(x / sqrt 2))
    tanh form: y = 0.5 x (1 + tanh(u)),  u = sqrt(2 / pi) (x + 0.044715 x^3)
    ``approximate`` is "tanh" or "none", as in ``torch.nn.functional.gelu``.
    x: [...]  ->  y: [...] (same dtype). The cache keeps t = tanh(u) or erf(x / sqrt 2),
    which the derivative reuses. (``fused.gelu_forward_fused`` is the fast twin.)
    """
    if approximate == "tanh":
        t = np.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x**3))
    elif approximate == "none":
        t = erf(x / math.sqrt(2.0)).astype(x.dtype, copy=False)
    else:
        raise ValueError(f"approximate must be 'tanh' or 'none'; got {approximate!r}")
    return 0.5 * x * (1.0 + t), GeluCache(x, t, approximate)


def gelu_backward(dy: np.ndarray, cache: GeluCache) -> np.ndarray:
    """erf form:  dy/dx = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
    tanh form: dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2 / pi) (1 + 3 * 0.044715 x^2)."""
    x, t, approximate = cache
    if approximate == "tanh":
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x**2)
        dydx = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx
    else:
        dydx = 0.5 * (1.0 + t) + x * np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)
    return dy * dydx


# ----------------------------------------------------------------------------------------
# softmax and cross-entropy
# ----------------------------------------------------------------------------------------


def softmax_forward(x: np.ndarray) -> tuple:
    """y = exp(x - max x) / sum exp(x - max x) over the last axis.  Cache: y itself."""
    y = x - x.max(axis=-1, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)
    return y, y


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = y * (dy - sum(dy * y))  over the last axis."""
    return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # [M, V] softmax of the logits
    targets: np.ndarray  # [M]
    shape: tuple  # shape of the logits


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray) -> tuple:
    """loss = mean_i (logsumexp(logits_i) - logits_i[y_i]).

    logits: [..., V], targets: int [...] in [0, V)  ->  scalar loss (the logits' dtype).
    """
    v = logits.shape[-1]
    z = logits.reshape(-1, v)  # [M, V]
    y = targets.reshape(-1)  # [M]
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"targets has shape {targets.shape}; logits need {logits.shape[:-1]}")
    if y.size and (y.min() < 0 or y.max() >= v):
        raise ValueError(f"targets must lie in [0, {v}); got [{y.min()}, {y.max()}]")
    shifted = z - z.max(axis=1, keepdims=True)  # [M, V]
    lse = np.log(np.exp(shifted).sum(axis=1))  # [M]
    loss = np.mean(lse - shifted[np.arange(y.shape[0]), y])
    probs = np.exp(shifted - lse[:, None])  # [M, V]
    return logits.dtype.type(loss), CrossEntropyCache(probs, y, logits.shape)


def cross_entropy_backward(dloss: float, cache: CrossEntropyCache) -> np.ndarray:
    """dlogits = dloss * (softmax(logits) - onehot(y)) / M   ->  the logits' shape."""
    probs, y, shape = cache
    d = probs.copy()
    d[np.arange(y.shape[0]), y] -= 1.0
    d *= probs.dtype.type(dloss / y.shape[0])
    return d.reshape(shape)


# ----------------------------------------------------------------------------------------
# pooling and normalization of sentence embeddings (encoders)
# ----------------------------------------------------------------------------------------


class MeanPoolCache(NamedTuple):
    weight: np.ndarray  # [B, T] 1 / n_b at the n_b real tokens of sequence b, 0 at padding
    shape: tuple  # [B, T, C] of the input


def mean_pool_forward(h: np.ndarray, pad_mask: np.ndarray | None = None) -> tuple:
    """out[b] = sum_t keep[b, t] h[b, t] / sum_t keep[b, t],  keep = not pad_mask (the mean
    over the non-padding tokens; sentence-transformers' mean pooling).

    h: [B, T, C]; pad_mask: bool [B, T] (True = padding) or None  ->  out: [B, C].
    A sequence that is all padding is refused (its mean is undefined).
    """
    b, t, _ = h.shape
    keep = np.ones((b, t), h.dtype) if pad_mask is None else (~pad_mask).astype(h.dtype)
    n = keep.sum(axis=1, keepdims=True)  # [B, 1]
    if np.any(n == 0):
        raise ValueError(f"sequences {np.flatnonzero(n[:, 0] == 0).tolist()} are all padding")
    weight = keep / n  # [B, T]
    out = np.einsum("bt,btc->bc", weight, h)  # [B, T] x [B, T, C] -> [B, C]
    return out, MeanPoolCache(weight, h.shape)


def mean_pool_backward(dout: np.ndarray, cache: MeanPoolCache) -> np.ndarray:
    """dh[b, t] = weight[b, t] * dout[b]   ->  [B, T, C]."""
    return cache.weight[:, :, None] * dout[:, None, :]


def first_token_pool_forward(h: np.ndarray) -> tuple:
    """out[b] = h[b, 0] (BERT's [CLS] token).   h: [B, T, C]  ->  out: [B, C]."""
    return h[:, 0].copy(), h.shape


def first_token_pool_backward(dout: np.ndarray, shape: tuple) -> np.ndarray:
    """dh[:, 0] = dout, zero elsewhere   ->  [B, T, C]."""
    dh = np.zeros(shape, dtype=dout.dtype)
    dh[:, 0] = dout
    return dh


class L2NormalizeCache(NamedTuple):
    y: np.ndarray  # [..., C] the output
    norm: np.ndarray  # [..., 1] max(||x||, eps)
    clipped: np.ndarray  # [..., 1] bool: ||x|| < eps, where the output is x / eps


def l2_normalize_forward(x: np.ndarray, eps: float = 1e-12) -> tuple:
    """y = x / max(||x||_2, eps) over the last axis (``torch.nn.functional.normalize``).

    x: [..., C]  ->  y: [..., C].
    """
    raw = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))  # [..., 1]
    norm = np.maximum(raw, x.dtype.type(eps))
    y = x / norm
    return y, L2NormalizeCache(y, norm, raw < eps)


def l2_normalize_backward(dy: np.ndarray, cache: L2NormalizeCache) -> np.ndarray:
    """dx = (dy - y * sum(dy * y)) / ||x||   where ||x|| >= eps;   dx = dy / eps elsewhere."""
    y, norm, clipped = cache
    radial = np.where(clipped, 0.0, np.sum(dy * y, axis=-1, keepdims=True))  # [..., 1]
    return ((dy - y * radial) / norm).astype(dy.dtype, copy=False)
