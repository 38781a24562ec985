"""Pruning: importance scores, masks, schedules, regularizers, structured removal.

The course (3.3) in the order of these modules:
- ``scores``: how important each weight (or head, neuron, layer) is — |w|, |dL/dw|,
  |w dL/dw|, movement, random; groups scored by L1, L2 or mean |w|.
- ``masks``: which weights to drop given their scores — per tensor, across the model, N:M —
  and the after-step hook that keeps them at exactly zero while fine-tuning.
- ``schedules``: how sparsity grows during fine-tuning (one-shot, iterative, cubic).
- ``regularizers``: L = L0 + lambda ||w||_p (L1, group lasso) and their proximal steps.
- ``groups`` and ``structured``: which entries make up a head, a neuron, a layer, and how
  to remove them so that the matrices really shrink.

As in ``torch.nn.utils.prune``, pruning methods differ only in their scores: every mask is
computed from a score array passed separately from the weights, by the same few functions.
"""
