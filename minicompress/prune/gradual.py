"""Pruning interleaved with fine-tuning: an after-step hook that follows a schedule.

At step t (the number of optimizer steps taken; 0 before the first) the hook asks the
schedule for its target sparsity s_t (``schedules.py``). When s_t rises it recomputes the
scores on the current weights and the masks at s_t — the weights pruned before stay pruned
(``masks.smallest_mask``'s ``keep``) — and after every step it puts the pruned weights back
to exactly zero with their AdamW moments (``masks.HoldMasks``). Between pruning events the
network fine-tunes and recovers (Zhu & Gupta 2017).

Call ``start(params)`` before training (it applies what the schedule prunes at t = 0: all of
it for a one-shot schedule), then pass the object to ``nn.train.train(after_step=...)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from minicompress.prune.masks import HoldMasks, sparsity_of

ScoresFn = Callable[[dict], dict]  # params -> name -> scores
MaskFn = Callable[[dict, float, "dict | None"], dict]  # (scores, sparsity, keep) -> masks


class GradualPruner:
    """After-step hook: masks that follow ``schedule`` (see the module docstring).

    schedule: ``OneShot`` / ``Iterative`` / ``Cubic`` (anything with ``sparsity_at(t)``);
    scores: params -> score dict, called at each pruning event (magnitude on the current
    weights, gradients on calibration batches, accumulated movement scores, ...);
    mask_fn: (scores, sparsity, keep) -> masks, e.g. ``masks.local_masks`` or
    ``masks.global_masks``. ``events`` records (step, measured sparsity of the masks) of each
    pruning event.
    """

    def __init__(self, schedule, scores: ScoresFn, mask_fn: MaskFn):
        self.schedule, self.scores, self.mask_fn = schedule, scores, mask_fn
        self.sparsity = 0.0
        self.masks: dict[str, np.ndarray] | None = None
        self.events: list[tuple[int, float]] = []
        self._hold = HoldMasks({})

    def update(self, step: int, params: dict) -> bool:
        """Raise the masks to the schedule's sparsity at ``step`` if it grew; True if it did."""
        target = self.schedule.sparsity_at(step)
        if target <= self.sparsity and self.masks is not None:
            return False
        if target <= 0.0:
            return False
        self.masks = self.mask_fn(self.scores(params), target, self.masks)
        self._hold.masks = self.masks
        self.sparsity = target
        self.events.append((step, sparsity_of(self.masks)))
        return True

    def start(self, params: dict) -> None:
        """Before training: prune what the schedule prunes at t = 0, and zero it."""
        if self.update(0, params):
            self._hold(0, params, None, None)

    def __call__(self, step: int, params: dict, grads: dict, opt) -> None:
        self.update(step, params)
        if self.masks is not None:
            self._hold(step, params, grads, opt)
