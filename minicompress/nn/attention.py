"""Scaled dot-product attention and multi-head self-attention, forward and backward.

Shape letters: B batch, T sequence, C width, H heads, D = C / H head width.

Mask conventions (they differ between libraries, so they are spelled out):
- ``causal=True``: query t sees keys 0..t (PyTorch ``is_causal=True``).
- ``pad_mask``: bool [B, T], **True where the token is padding** and must not be attended to
  (PyTorch ``nn.MultiheadAttention(key_padding_mask=...)``; the opposite of HF's
  ``attention_mask``, where 1 means keep).
Masked scores are set to a large negative number rather than -inf, so a query that sees
no key at all (a padding query) gets a uniform, finite distribution instead of NaN; its
output is meant to be ignored.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minicompress.nn.ops import softmax_backward, softmax_forward

_MASKED = -1e9  # exp(-1e9 - max) == 0 in float32 and float64


class AttentionCache(NamedTuple):
    q: np.ndarray  # [B, H, T, D] queries, needed for dk
    k: np.ndarray  # [B, H, T, D] keys, needed for dq
    v: np.ndarray  # [B, H, T, D] values, needed for dp
    p: np.ndarray  # [B, H, T, T] attention probabilities, needed for dv and the softmax backward
    scale: float
    zero_past_diagonal: bool = False  # causal without padding: p[..., i, j] == 0 for j > i


def attention_bias(t: int, causal: bool, pad_mask: np.ndarray | None, dtype) -> np.ndarray | None:
    """Additive mask: 0 where a query may see a key, -1e9 where not.

    -> [T, T] (causal only), [B, 1, 1 or T, T] (with padding), or None (no mask).
    """
    bias = None
    if causal:
        bias = np.triu(np.full((t, t), _MASKED, dtype=dtype), k=1)  # [T, T]
    if pad_mask is not None:
        pad = np.where(pad_mask, dtype(_MASKED), dtype(0.0))[:, None, None, :]  # [B, 1, 1, T]
        bias = pad if bias is None else np.maximum(pad + bias, dtype(_MASKED))
    return bias


def attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = True,
    pad_mask: np.ndarray | None = None,
) -> tuple:
    """y = softmax(q k^T / sqrt(D) + mask) v   (Vaswani et al. 2017).

    q, k, v: [B, H, T, D]; pad_mask: bool [B, T] or None  ->  y: [B, H, T, D].
    The probabilities ``p`` [B, H, T, T] are in the cache (a distiller reads them there).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    # the transposes are copied: NumPy's batched matmul is 4x slower on a swapped view
    att = q @ np.ascontiguousarray(
        k.swapaxes(-1, -2)
    )  # [B, H, T, D] @ [B, H, D, T] -> [B, H, T, T]
    att *= q.dtype.type(scale)
    bias = attention_bias(q.shape[2], causal, pad_mask, q.dtype.type)
    if bias is not None:
        att += bias
    p, _ = softmax_forward(att)  # [B, H, T, T]
    y = p @ v  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    return y, AttentionCache(q, k, v, p, scale, causal and pad_mask is None)


def attention_backward(dy: np.ndarray, cache: AttentionCache, dp_extra=None) -> tuple:
    """dv = p^T dy;  dp = dy v^T;  ds = p * (dp - sum(dp * p));  dq = ds k * scale;
    dk = ds^T q * scale.   ``dp_extra`` [B, H, T, T] is an extra gradient on ``p`` (e.g. an
    attention-transfer loss); masked entries have p == 0 and so get no gradient."""
    q, k, v, p, scale, _ = cache
    dv = p.swapaxes(-1, -2) @ dy  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    dp = dy @ np.ascontiguousarray(v.swapaxes(-1, -2))  # [B,H,T,D] @ [B,H,D,T] -> [B,H,T,T]
    if dp_extra is not None:
        dp += dp_extra
    ds = softmax_backward(dp, p)  # [B, H, T, T]
    ds *= q.dtype.type(scale)
    dq = ds @ k  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    dk = ds.swapaxes(-1, -2) @ q  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    return dq, dk, dv


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """[B, T, C] -> [B, H, T, D] (a copy, contiguous for the batched matmuls)."""
    b, t, c = x.shape
    return np.ascontiguousarray(x.reshape(b, t, n_head, c // n_head).transpose(0, 2, 1, 3))


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[B, H, T, D] -> [B, T, C]."""
    b, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)
