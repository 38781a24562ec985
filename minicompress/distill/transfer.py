"""Intermediate-layer transfer: what a student of another width or depth learns from the
teacher's hidden states and attention maps, besides its output distribution.

- **Layer mapping**: which student block learns from which teacher block. Uniform by
  default: student block l of M learns from teacher block (l + 1) N / M - 1 of N, so the
  last blocks line up (TinyBERT's g(m) = m N / M, Jiao et al. 2020).
- **Hidden states** through a learned projection (TinyBERT eq. 7): the student's width C_S
  is mapped to the teacher's C_T by ``h_S W + b``, trained with the student.
- **Attention maps** (MiniLM, Wang et al. 2020): the KL divergence from the teacher's
  attention distribution of each query to the student's, head by head when both have as
  many heads, else of the two heads' means.

The model exposes what these losses read: ``cache.hidden`` (n_layer + 1 arrays [B, T, C]:
the input of every block, then the last block's output) and ``cache.attn`` (n_layer arrays
[B, H_l, T, T]), and takes their gradients back through
``nn.model.backward(dlogits, cache, dhidden=..., dattn=...)``. Block l's output is
``cache.hidden[l + 1]``; its attention map is ``cache.attn[l]``.

Each loss averages over the rows it compares (tokens, or (head, query) pairs), not
counting padding; the teacher's side is a constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from minicompress.distill.losses import kl_rows, mse_rows_backward, mse_rows_forward, token_weights
from minicompress.nn.ops import linear_backward, linear_forward

# ----------------------------------------------------------------------------------------
# layer mapping
# ----------------------------------------------------------------------------------------


def uniform_layer_map(n_student: int, n_teacher: int) -> tuple[tuple[int, int], ...]:
    """Pairs (student block l, teacher block g(l)), g(l) = floor((l + 1) N / M) - 1.

    M = n_student, N = n_teacher blocks, 0-based. M = 2, N = 4: ((0, 1), (1, 3)); M = N:
    each block with itself; M = 3, N = 4: ((0, 0), (1, 1), (2, 3)). The last student block
    always learns from the last teacher block. A deeper student (M > N) maps several of its
    blocks to one teacher block.
    """
    for name, n in (("n_student", n_student), ("n_teacher", n_teacher)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} must be a positive number of blocks; got {n!r}")
    return tuple((l, max((l + 1) * n_teacher // n_student - 1, 0)) for l in range(n_student))


def check_layer_map(layer_map, n_student: int, n_teacher: int) -> tuple[tuple[int, int], ...]:
    """A layer map as sorted pairs (student block, teacher block), checked.

    layer_map: None (uniform), a mapping {student block: teacher block}, or a sequence of
    (student block, teacher block) pairs; blocks are 0-based. Refused: a block that does not
    exist, a student block listed twice, an empty map.
    """
    if layer_map is None:
        return uniform_layer_map(n_student, n_teacher)
    pairs = list(layer_map.items()) if isinstance(layer_map, Mapping) else list(layer_map)
    if not pairs:
        raise ValueError("layer_map is empty: name at least one (student, teacher) block pair")
    out = []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"layer_map entries must be (student, teacher) pairs; got {pair!r}")
        for side, block, n in (("student", pair[0], n_student), ("teacher", pair[1], n_teacher)):
            if isinstance(block, bool) or not isinstance(block, (int, np.integer)):
                raise ValueError(f"layer_map names {side} block {block!r}; blocks are integers")
            if not 0 <= block < n:
                raise ValueError(
                    f"layer_map names {side} block {block}, but the {side} has {n} blocks "
                    f"(0..{n - 1})"
                )
        out.append((int(pair[0]), int(pair[1])))
    students = [s for s, _ in out]
    if len(set(students)) != len(students):
        raise ValueError(f"layer_map lists a student block twice: {out}")
    return tuple(sorted(out))


# ----------------------------------------------------------------------------------------
# hidden states through a learned projection
# ----------------------------------------------------------------------------------------


def init_projection(
    c_student: int, c_teacher: int, rng: np.random.Generator, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Initial projection (w [C_S, C_T], b [C_T]) from the student's width to the teacher's.

    Equal widths: the identity (the loss starts as the plain MSE of the hidden states).
    Otherwise w ~ N(0, 1 / C_S), so that h_S w keeps the scale of h_S; b = 0.
    """
    if c_student == c_teacher:
        w = np.eye(c_student, dtype=dtype)
    else:
        w = (rng.standard_normal((c_student, c_teacher)) / np.sqrt(c_student)).astype(dtype)
    return w, np.zeros(c_teacher, dtype=dtype)


class HiddenMSECache(NamedTuple):
    proj: object  # LinearCache of h_S w + b, for dh_S and dw
    mse: object  # MSECache of the projected difference
    width: int  # C_T, the 1 / C_T of the loss


def hidden_mse_forward(
    h_s: np.ndarray,
    h_t: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    pad_mask: np.ndarray | None = None,
) -> tuple:
    """L = 1 / (N C_T) * sum_n || h_S,n W + b - h_T,n ||**2   (TinyBERT eq. 7, the mean over
    all N * C_T entries, as PyTorch's ``F.mse_loss(h_S @ W + b, h_T)``).

    h_s: [..., C_S] the student's hidden states; h_t: [..., C_T] the teacher's (constant);
    w: [C_S, C_T], b: [C_T] the projection; pad_mask: bool [...] or None  ->  scalar (h_s's
    dtype). Through ``nn.ops.linear_forward`` and ``losses.mse_rows_forward``.
    """
    h_s, h_t = np.asarray(h_s), np.asarray(h_t)
    if h_s.shape[:-1] != h_t.shape[:-1]:
        raise ValueError(
            f"student and teacher hidden states cover different positions: {h_s.shape} vs "
            f"{h_t.shape}"
        )
    if w.shape != (h_s.shape[-1], h_t.shape[-1]) or b.shape != (h_t.shape[-1],):
        raise ValueError(
            f"the projection must be w [C_S, C_T] = [{h_s.shape[-1]}, {h_t.shape[-1]}] and b "
            f"[{h_t.shape[-1]}]; got w {w.shape}, b {b.shape}"
        )
    y, proj = linear_forward(h_s, w.astype(h_s.dtype, copy=False), b.astype(h_s.dtype, copy=False))
    loss, mse = mse_rows_forward(y, h_t, pad_mask)  # [..., C_T] -> sum over C_T, mean over N
    c_t = h_t.shape[-1]
    return h_s.dtype.type(loss / c_t), HiddenMSECache(proj, mse, c_t)


def hidden_mse_backward(dloss: float, cache: HiddenMSECache) -> tuple:
    """dy = 2 (h_S W + b - h_T) / (N C_T);  dh_S = dy W^T;  dW = h_S^T dy;  db = sum dy."""
    dy = mse_rows_backward(dloss / cache.width, cache.mse)  # [..., C_T]
    return linear_backward(dy, cache.proj)  # dh_s [..., C_S], dw [C_S, C_T], db [C_T]


# ----------------------------------------------------------------------------------------
# attention maps
# ----------------------------------------------------------------------------------------

HEAD_MODES = ("auto", "matched", "averaged")  # how attention heads are paired


def resolve_heads(heads: str, h_student: int, h_teacher: int) -> str:
    """ "matched" (head h with head h) or "averaged" (the means over heads). "auto": matched
    when both have as many heads, else averaged. "matched" with different counts is refused."""
    if heads not in HEAD_MODES:
        raise ValueError(f"heads must be one of {', '.join(HEAD_MODES)}; got {heads!r}")
    if heads == "auto":
        return "matched" if h_student == h_teacher else "averaged"
    if heads == "matched" and h_student != h_teacher:
        raise ValueError(
            f"heads='matched' needs as many heads in both; the student block has {h_student}, "
            f"the teacher block {h_teacher} (use 'averaged' or 'auto')"
        )
    return heads


class AttentionKLCache(NamedTuple):
    dp: np.ndarray  # [B, H', T, T] dL/dA_S of the compared maps (before any head average)
    h_student: int  # H_S, to spread an averaged map's gradient over the student's heads
    mode: str  # "matched" or "averaged"


def attention_kl_forward(
    a_s: np.ndarray,
    a_t: np.ndarray,
    heads: str = "auto",
    pad_mask: np.ndarray | None = None,
) -> tuple:
    """L = 1 / R * sum_{b, h, t} KL(A_T[b, h, t, :] || A_S[b, h, t, :])   (MiniLM).

    a_s: [B, H_S, T, T] the student's attention probabilities (each row sums to 1), a_t:
    [B, H_T, T, T] the teacher's; heads: "matched" compares head h with head h (H_S = H_T),
    "averaged" compares mean_h A_S with mean_h A_T (each still a distribution), "auto"
    matches when it can; pad_mask: bool [B, T] (True = padding): padding queries are left out.
    R = the number of compared rows, B * H' * (non-padding queries), H' = H_S or 1.
    ->  scalar (a_s's dtype). Keys the teacher never attends to (p_T = 0: causal or padding
    masks) add 0. log A_S is taken of max(A_S, tiny) so that an underflowed 0 stays finite.
    """
    a_s, a_t = np.asarray(a_s), np.asarray(a_t)
    if a_s.ndim != 4 or a_t.ndim != 4 or a_s.shape[-1] != a_s.shape[-2]:
        raise ValueError(f"attention maps must be [B, H, T, T]; got {a_s.shape} and {a_t.shape}")
    if (a_s.shape[0], *a_s.shape[2:]) != (a_t.shape[0], *a_t.shape[2:]):
        raise ValueError(
            f"student and teacher attention maps cover different batches or sequences: "
            f"{a_s.shape} vs {a_t.shape}"
        )
    h_student = a_s.shape[1]
    mode = resolve_heads(heads, h_student, a_t.shape[1])
    a_t = a_t.astype(a_s.dtype, copy=False)
    if mode == "averaged":
        a_s = a_s.mean(axis=1, keepdims=True)  # [B, H_S, T, T] -> [B, 1, T, T]
        a_t = a_t.mean(axis=1, keepdims=True)  # [B, H_T, T, T] -> [B, 1, T, T]
    b, h, t, _ = a_s.shape
    pad = None
    if pad_mask is not None:
        pad_mask = np.asarray(pad_mask)
        if pad_mask.dtype != np.bool_ or pad_mask.shape != (b, t):
            raise ValueError(
                f"pad_mask must be bool [B, T] = ({b}, {t}); got {pad_mask.dtype} {pad_mask.shape}"
            )
        pad = np.broadcast_to(pad_mask[:, None, :], (b, h, t))  # [B, H', T] padding queries
    weights, n = token_weights((b, h, t), pad, a_s.dtype)  # [B, H', T, 1], R
    tiny = np.finfo(a_s.dtype).tiny
    safe_s = np.maximum(a_s, a_s.dtype.type(tiny))  # [B, H', T, T]
    log_t = np.log(np.maximum(a_t, a_s.dtype.type(tiny)))  # only read where a_t > 0
    kl = kl_rows(a_t, log_t, np.log(safe_s))  # [B, H', T]
    loss = float(np.sum(kl * weights[..., 0])) / n
    # dL/dA_S = -A_T / A_S / R on the compared rows (the derivative of -A_T log A_S)
    dp = -(a_t / safe_s) * weights * a_s.dtype.type(1.0 / n)  # [B, H', T, T]
    return a_s.dtype.type(loss), AttentionKLCache(dp, h_student, mode)


def attention_kl_backward(dloss: float, cache: AttentionKLCache) -> np.ndarray:
    """dL/dA_S[b, h, t, j] = -A_T[b, h, t, j] / A_S[b, h, t, j] / R   (matched), or that of
    the means divided by H_S for every student head (averaged: d mean_h A / dA_h = 1 / H_S).
    ->  [B, H_S, T, T], the ``dattn`` entry of ``nn.model.backward``."""
    dp, h_student, mode = cache
    if mode == "matched":
        return dp * dp.dtype.type(dloss)
    b, _, t, _ = dp.shape
    spread = dp * dp.dtype.type(dloss / h_student)  # [B, 1, T, T]
    return np.broadcast_to(spread, (b, h_student, t, t)).copy()  # [B, H_S, T, T]
