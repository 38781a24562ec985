"""Masks: which weights to drop, given their scores, and keeping them dropped.

A mask is a bool array shaped like its weight, True where the weight is **kept** (the sense
of ``torch.nn.utils.prune``'s 1/0 masks). Every mask function takes scores (``scores.py``),
never the weights themselves: magnitude, gradient, Taylor, movement and random pruning all
go through the same functions, and differ only in the scores they pass.

Counting (DESIGN.md): sparsity is a fraction in [0, 1]; exactly ``round(sparsity * n)`` of the
n candidates are pruned (Python's ``round``, half to even, as ``torch.nn.utils.prune``). Ties
are broken deterministically: among equal scores the entry with the lower flat index (in
the order the scores are given) is pruned first.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from minicompress.prune.scores import group_score


def check_sparsity(sparsity: object, name: str = "sparsity") -> float:
    """Refuse a sparsity that is not a real number in [0, 1]."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, Real):
        raise TypeError(f"{name} must be a fraction in [0, 1]; got {sparsity!r}")
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1]; got {sparsity!r}")
    return float(sparsity)


def n_to_prune(sparsity: float, n: int) -> int:
    """k = round(sparsity * n): how many of n candidates a sparsity prunes (half to even)."""
    return int(round(check_sparsity(sparsity) * n))


def _check_scores(name: str, scores: object) -> np.ndarray:
    s = np.asarray(scores)
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise TypeError(f"{name} must be a real array; got dtype {s.dtype}")
    if np.issubdtype(s.dtype, np.floating) and not np.isfinite(s).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(s)).sum())} NaN or infinite scores")
    return s


def _check_keep(name: str, keep: object, shape: tuple) -> np.ndarray:
    k = np.asarray(keep)
    if k.dtype != np.bool_ or k.shape != shape:
        raise ValueError(f"{name} must be a bool mask of shape {shape}; got {k.dtype} {k.shape}")
    return k


def _prune_smallest(flat: np.ndarray, k: int, pruned_before: np.ndarray | None) -> np.ndarray:
    """Keep mask (bool [n]) dropping the k smallest of ``flat``: first every entry already
    pruned (``pruned_before``), then by increasing score, lower index first on ties."""
    order_key = flat.astype(np.float64)
    if pruned_before is not None:
        n_before = int(pruned_before.sum())
        if k < n_before:
            raise ValueError(
                f"a mask cannot grow back: {n_before} entries are pruned already, "
                f"the new sparsity asks for only {k}"
            )
        order_key = np.where(pruned_before, -np.inf, order_key)
    order = np.argsort(order_key, kind="stable")  # ties: lower flat index first
    keep = np.ones(flat.size, dtype=bool)
    keep[order[:k]] = False
    return keep


def smallest_mask(
    scores: np.ndarray, sparsity: float, keep: np.ndarray | None = None
) -> np.ndarray:
    """Per-tensor ("local") mask: prune the round(sparsity * n) entries with the smallest
    scores (``torch.nn.utils.prune.l1_unstructured`` when scores = |w|).

    scores: real [...] (n entries); sparsity in [0, 1]; keep: the mask from an earlier
    pruning round (bool, the scores' shape) or None. With ``keep`` the entries pruned before
    stay pruned and count towards the total: sparsity is the fraction of the whole tensor
    (not of what remains, as torch's iterative PruningContainer counts), so it must not be
    lower than before.  ->  bool [...], True = kept.
    """
    s = _check_scores("scores", scores)
    before = None if keep is None else ~_check_keep("keep", keep, s.shape).reshape(-1)
    return _prune_smallest(s.reshape(-1), n_to_prune(sparsity, s.size), before).reshape(s.shape)


def global_masks(
    scores: dict[str, np.ndarray],
    sparsity: float,
    keep: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Model-wide ("global") masks: one threshold over the scores of all the tensors,
    round(sparsity * sum of sizes) entries pruned in total
    (``torch.nn.utils.prune.global_unstructured``). Layers whose scores are smaller lose more.

    scores: name -> real array; the tensors are concatenated in the dict's order (which
    decides ties between tensors); keep: earlier masks, as in ``smallest_mask``.
    -> name -> bool mask (True = kept).
    """
    if not scores:
        raise ValueError("scores is empty: give at least one tensor to prune")
    checked = {n: _check_scores(f"scores[{n!r}]", s) for n, s in scores.items()}
    flat = np.concatenate([s.reshape(-1).astype(np.float64) for s in checked.values()])
    before = None
    if keep is not None:
        missing = [n for n in checked if n not in keep]
        if missing:
            raise ValueError(f"keep has no mask for {missing}")
        before = np.concatenate(
            [~_check_keep(f"keep[{n!r}]", keep[n], s.shape).reshape(-1) for n, s in checked.items()]
        )
    kept = _prune_smallest(flat, n_to_prune(sparsity, flat.size), before)
    out, start = {}, 0
    for n, s in checked.items():
        out[n] = kept[start : start + s.size].reshape(s.shape)
        start += s.size
    return out


def local_masks(
    scores: dict[str, np.ndarray],
    sparsity: float,
    keep: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """``smallest_mask`` on each tensor: the same sparsity in every layer."""
    if not scores:
        raise ValueError("scores is empty: give at least one tensor to prune")
    return {
        n: smallest_mask(s, sparsity, None if keep is None else keep[n]) for n, s in scores.items()
    }


def channel_scores(scores: np.ndarray, axis: int, criterion: str = "l2") -> np.ndarray:
    """Score of each channel (slice along ``axis``) of one tensor by the L1 norm, L2 norm or
    mean |.| of its entries (``scores.group_score``). For a linear weight [K, N], axis 1
    scores the output features (``torch.nn.utils.prune.ln_structured`` with dim=0 on torch's
    [N, K] weight).  scores: real [...]  ->  float64 [shape[axis]]."""
    s = _check_scores("scores", scores)
    if not -s.ndim <= axis < s.ndim:
        raise ValueError(f"axis {axis} is out of range for scores of shape {s.shape}")
    rows = np.moveaxis(s, axis, 0).reshape(s.shape[axis], -1)  # [channels, entries]
    return group_score(rows.astype(np.float64), criterion)


def expand_channel_mask(keep: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """A per-channel keep mask (bool [shape[axis]]) broadcast to a whole tensor of ``shape``."""
    keep = np.asarray(keep)
    if keep.dtype != np.bool_ or keep.shape != (shape[axis],):
        raise ValueError(f"keep must be bool [{shape[axis]}]; got {keep.dtype} {keep.shape}")
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(keep.reshape(view), shape).copy()


def channel_mask(scores: np.ndarray, sparsity: float, axis: int, criterion: str = "l2"):
    """Structured mask of one tensor: prune the round(sparsity * G) channels along ``axis``
    with the smallest ``channel_scores``, every entry of each.  ->  bool, scores' shape."""
    s = _check_scores("scores", scores)
    keep = smallest_mask(channel_scores(s, axis, criterion), sparsity)
    return expand_channel_mask(keep, s.shape, axis)


def parse_nm(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4): N kept of every M consecutive weights; 1 <= N <= M."""
    try:
        n_text, m_text = str(pattern).split(":")
        n, m = int(n_text), int(m_text)
    except ValueError:
        raise ValueError(f"an N:M pattern is written like '2:4'; got {pattern!r}") from None
    if not 1 <= n <= m:
        raise ValueError(f"an N:M pattern needs 1 <= N <= M; got {pattern!r}")
    return n, m


def nm_mask(scores: np.ndarray, n: int, m: int, axis: int = 0) -> np.ndarray:
    """N:M semi-structured mask: in every run of M consecutive entries along ``axis``, keep
    the N with the largest scores (2:4 is what sparse tensor cores run; NVIDIA's Ampere
    whitepaper, Mishra et al. 2021). Sparsity is exactly 1 - N / M.

    scores: real [K, N_out] for a linear weight stored [in, out]: the default axis 0 groups
    the input features, the sum a dot product runs over (the hardware's choice).
    -> bool mask of the scores' shape. Refused: the length of ``axis`` not a multiple of M.
    Ties inside a run: the lower index is pruned first.
    """
    s = _check_scores("scores", scores)
    if isinstance(n, bool) or isinstance(m, bool) or not 1 <= int(n) <= int(m):
        raise ValueError(f"N:M needs integers 1 <= N <= M; got {n}:{m}")
    if not -s.ndim <= axis < s.ndim:
        raise ValueError(f"axis {axis} is out of range for scores of shape {s.shape}")
    length = s.shape[axis]
    if length % m:
        raise ValueError(
            f"an {n}:{m} pattern needs the length along axis {axis} to be a multiple of {m}; "
            f"scores have shape {s.shape}"
        )
    moved = np.moveaxis(s, axis, -1)  # [..., L]
    runs = moved.reshape(*moved.shape[:-1], length // m, m).astype(np.float64)  # [..., L/M, M]
    order = np.argsort(runs, axis=-1, kind="stable")  # per run, smallest (lower index) first
    keep = np.ones(runs.shape, dtype=bool)
    np.put_along_axis(keep, order[..., : m - n], False, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def sparsity_of(masks: dict[str, np.ndarray]) -> float:
    """Measured sparsity: pruned entries / all entries, over every mask given."""
    total = sum(int(k.size) for k in masks.values())
    if total == 0:
        raise ValueError("no entries: the masks are empty")
    return sum(int(k.size - np.count_nonzero(k)) for k in masks.values()) / total


def zero_fraction(params: dict[str, np.ndarray], names: list[str]) -> float:
    """Measured sparsity of weights: exact zeros / entries, over ``names``."""
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}")
    total = sum(params[n].size for n in names)
    if total == 0:
        return math.nan
    return sum(int(params[n].size - np.count_nonzero(params[n])) for n in names) / total


def apply_masks(params: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict:
    """A new parameter dict with w * mask for each masked name (the input is not modified);
    unmasked names are shared with the input."""
    _check_mask_names(params, masks)
    out = dict(params)
    for n, keep in masks.items():
        out[n] = np.where(_check_keep(f"masks[{n!r}]", keep, params[n].shape), params[n], 0).astype(
            params[n].dtype
        )
    return out


def _check_mask_names(params: dict, masks: dict) -> None:
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(f"masks name parameters the model does not have: {unknown}")


class HoldMasks:
    """After-step hook: keep pruned weights at exactly zero through fine-tuning.

    After each optimizer step, for every masked name: w <- w * mask, and the AdamW moments
    m, v <- 0 where pruned (so no stale momentum pushes a pruned weight again, and a weight
    that is unmasked later starts fresh). The gradient of a pruned weight is zeroed too,
    for hooks that run after this one. In place: the loop trains ``params`` in place.

    ``masks``: name -> bool mask (True = kept); ``masks`` may be replaced between steps (a
    schedule raising the sparsity does).
    """

    def __init__(self, masks: dict[str, np.ndarray]):
        self.masks = dict(masks)

    def __call__(self, step: int, params: dict, grads: dict, opt) -> None:
        _check_mask_names(params, self.masks)
        for n, keep in self.masks.items():
            pruned = ~keep
            params[n][pruned] = 0.0
            for state in (getattr(opt, "m", None), getattr(opt, "v", None)):
                if state is not None and n in state:
                    state[n][pruned] = 0.0
            if grads is not None and n in grads:
                grads[n][pruned] = 0.0


def chain(*hooks):
    """One after-step hook calling ``hooks`` in order (None entries skipped)."""
    hooks = [h for h in hooks if h is not None]

    def after_step(step: int, params: dict, grads: dict, opt) -> None:
        for h in hooks:
            h(step, params, grads, opt)

    return after_step
