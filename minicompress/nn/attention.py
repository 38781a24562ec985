"""Scaled dot-product attention and multi-head self-attention, forward and backward.

Shape letters: B batch, T sequence, C width, H heads, D = C / H head width.

Mask conventions (they differ between libraries, so they are spelled out):
- ``causal=True``: query t sees keys 0..t (PyTorch ``is_causal=True``).
- ``pad_mask``: bool [B, T], **True where the token is padding** and must not be attended to
  (PyTorch ``nn.MultiheadAttention(key_padding_mask=...)``; the opposite of HF's
  ``attention_mask``, where 1 means keep).
Masked scores are replaced by a large negative number rather than -inf, so a query that
sees no key at all (a padding query under a causal mask) gets a uniform, finite row instead
of NaN. Such a row does not depend on the scores, so it sends no gradient back; its output
is meant to be ignored.
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
    causal: bool
    pad_mask: np.ndarray | None  # bool [B, T], True = padding


def check_pad_mask(pad_mask, b: int, t: int) -> np.ndarray | None:
    """Refuse a padding mask that is not bool [B, T]."""
    if pad_mask is None:
        return None
    pad_mask = np.asarray(pad_mask)
    if pad_mask.dtype != np.bool_ or pad_mask.shape != (b, t):
        raise ValueError(
            f"pad_mask must be a bool array of shape [B, T] = ({b}, {t}) with True at padding; "
            f"got {pad_mask.dtype} {pad_mask.shape}"
        )
    return pad_mask


def check_attention_shapes(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
    """q [B, H, Tq, D], k and v [B, H, Tk, D] with Tq <= Tk (Tq < Tk: the new positions
    after a key/value cache of Tk - Tq earlier ones)."""
    if q.ndim != 4 or k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"q, k, v must be [B, H, Tq, D], [B, H, Tk, D], [B, H, Tk, D]; got {q.shape}, "
            f"{k.shape}, {v.shape}"
        )
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"more queries ({q.shape[2]}) than keys ({k.shape[2]})")


def visible_keys(
    t: int, causal: bool, pad_mask: np.ndarray | None, t_keys: int | None = None
) -> np.ndarray | None:
    """Which keys each query may see: bool [Tq, Tk] (causal only), [B, 1, Tq, Tk] (with
    padding), or None (every key). Entry [.., i, j] is True when query i may attend to key j.
    Query i sits at position Tk - Tq + i (``t_keys`` = Tk, default Tq), so the causal mask is
    the lower triangle shifted right by Tk - Tq."""
    tk = t if t_keys is None else t_keys
    visible = np.tril(np.ones((t, tk), dtype=bool), k=tk - t) if causal else None  # [Tq, Tk]
    if pad_mask is not None:
        keep = ~pad_mask[:, None, None, :]  # [B, 1, 1, T]
        visible = keep if visible is None else keep & visible  # [B, 1, T, T]
    return visible


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
    With a key/value cache, k and v hold Tk >= Tq positions (the earlier ones first) and the
    queries are the last Tq of them; pad_mask is then [B, Tk].
    """
    b, _, t, d = q.shape
    tk = k.shape[2]
    check_attention_shapes(q, k, v)
    pad_mask = check_pad_mask(pad_mask, b, tk)
    scale = 1.0 / math.sqrt(d)
    # the transposes are copied: NumPy's batched matmul is 4x slower on a swapped view
    kt = np.ascontiguousarray(k.swapaxes(-1, -2))  # [B, H, D, Tk]
    att = q @ kt  # [B, H, Tq, D] @ [B, H, D, Tk] -> [B, H, Tq, Tk]
    att *= q.dtype.type(scale)
    visible = visible_keys(t, causal, pad_mask, tk)
    if visible is not None:
        att = np.where(visible, att, q.dtype.type(_MASKED))  # [B, H, T, T]
    p, _ = softmax_forward(att)  # [B, H, T, T]
    y = p @ v  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    return y, AttentionCache(q, k, v, p, scale, causal, pad_mask)


def attention_backward(dy: np.ndarray, cache: AttentionCache, dp_extra=None) -> tuple:
    """dv = p^T dy;  dp = dy v^T;  ds = p * (dp - sum(dp * p));  dq = ds k * scale;
    dk = ds^T q * scale.   ``dp_extra`` [B, H, T, T] is an extra gradient on ``p`` (e.g. an
    attention-transfer loss). Masked entries have p == 0 and so get no gradient; a query
    that sees no key has a constant row and gets none either."""
    q, k, v, p, scale, causal, pad_mask = cache
    dv = p.swapaxes(-1, -2) @ dy  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    vt = np.ascontiguousarray(v.swapaxes(-1, -2))  # [B, H, D, T]
    dp = dy @ vt  # [B, H, T, D] @ [B, H, D, T] -> [B, H, T, T]
    if dp_extra is not None:
        dp += dp_extra
    ds = softmax_backward(dp, p)  # [B, H, T, T]
    ds *= q.dtype.type(scale)
    visible = visible_keys(q.shape[2], causal, pad_mask, k.shape[2])
    if visible is not None:
        ds *= visible.any(axis=-1, keepdims=True)  # rows that see no key: no gradient
    dq = ds @ k  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    dk = ds.swapaxes(-1, -2) @ q  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    return dq, dk, dv


def split_qkv(qkv: np.ndarray, n_head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[B, T, 3C] -> q, k, v, each [B, H, T, D] (one copy for the three, each contiguous)."""
    b, t, c3 = qkv.shape
    x = qkv.reshape(b, t, 3, n_head, c3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)
    q, k, v = np.ascontiguousarray(x)  # [3, B, H, T, D]
    return q, k, v


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """[B, T, C] -> [B, H, T, D] (a copy, contiguous for the batched matmuls)."""
    b, t, c = x.shape
    return np.ascontiguousarray(x.reshape(b, t, n_head, c // n_head).transpose(0, 2, 1, 3))


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[B, H, T, D] -> [B, T, C]."""
    b, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)
