"""minicompress/prune/gradual.py through the one training loop: pruned weights stay exactly
zero after every fine-tuning step (AdamW moments included), and the sparsity follows the
schedule."""

from __future__ import annotations

import numpy as np
import pytest

from minicompress.data.corpus import Batch
from minicompress.nn.model import TransformerConfig, init_params
from minicompress.nn.train import TrainConfig, train
from minicompress.prune.gradual import GradualPruner
from minicompress.prune.masks import global_masks, local_masks, sparsity_of
from minicompress.prune.pipeline import prunable_names
from minicompress.prune.schedules import Cubic, OneShot
from minicompress.prune.scores import Movement, magnitude_scores

CFG = TransformerConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, mlp_ratio=2)


def _data(rng_batch: np.random.Generator, batch_size: int) -> Batch:
    x = rng_batch.integers(0, CFG.vocab_size, (batch_size, CFG.block_size))
    return Batch(x, (x + 1) % CFG.vocab_size)  # a learnable rule


def _tc(steps):
    return TrainConfig(batch_size=4, steps=steps, lr=1e-2, warmup=1, eval_every=0)


class _Check:
    """After-step hook run after the pruner: every pruned weight and its moments are 0."""

    def __init__(self, pruner):
        self.pruner, self.seen = pruner, []

    def __call__(self, step, params, grads, opt):
        masks = self.pruner.masks or {}
        for n, keep in masks.items():
            assert (params[n][~keep] == 0).all(), f"step {step}: {n} has pruned weights != 0"
            assert (opt.m[n][~keep] == 0).all() and (opt.v[n][~keep] == 0).all()
            assert (params[n][keep] != 0).all(), f"step {step}: {n} lost kept weights"
        self.seen.append((step, sparsity_of(masks) if masks else 0.0))


def test_pruned_weights_exactly_zero_through_the_training_loop(rng):
    params = init_params(CFG, rng)
    names = prunable_names(CFG)
    sched = Cubic(0.75, initial=0.0, start=2, n=3, dt=2)  # prunes at steps 4, 6, 8
    pruner = GradualPruner(
        sched, lambda p: {n: magnitude_scores(p[n]) for n in names}, global_masks
    )
    check = _Check(pruner)

    def after_step(step, p, g, opt):
        pruner(step, p, g, opt)
        check(step, p, g, opt)

    pruner.start(params)
    assert pruner.masks is None  # the cubic schedule prunes nothing at t0 with s_i = 0
    train(params, CFG, _data, _tc(12), after_step=after_step, progress=False)
    assert [s for s, _ in pruner.events] == [4, 6, 8]
    n = sum(params[k].size for k in names)
    assert pruner.events[-1][1] == round(0.75 * n) / n
    assert sum(int((params[k] == 0).sum()) for k in names) == round(
        0.75 * n
    )  # exactly round(s n) zeros at the end
    # masks only grow: each event's pruned set contains the previous one's
    assert [s for _, s in check.seen][-1] == pytest.approx(0.75, abs=1e-3)


def test_oneshot_prunes_before_training_and_masks_hold(rng):
    params = init_params(CFG, rng)
    names = prunable_names(CFG)
    pruner = GradualPruner(
        OneShot(0.5), lambda p: {n: magnitude_scores(p[n]) for n in names}, local_masks
    )
    pruner.start(params)
    zeros_before = {n: params[n] == 0 for n in names}
    assert all(z.mean() == 0.5 for z in zeros_before.values())
    check = _Check(pruner)

    def after_step(step, p, g, opt):
        pruner(step, p, g, opt)
        check(step, p, g, opt)

    train(params, CFG, _data, _tc(6), after_step=after_step, progress=False)
    assert len(check.seen) == 6 and pruner.events == [(0, 0.5)]
    for n in names:
        assert np.array_equal(params[n] == 0, zeros_before[n])


def test_movement_scores_prune_weights_moving_to_zero(rng):
    """Weights pushed towards zero by the loss get low movement scores: with a loss whose
    gradient is +w on half of a weight (towards 0) and -w on the other half (away), the
    first half is pruned."""
    params = {"w": rng.standard_normal((4, 6)).astype(np.float32)}
    towards = np.zeros((4, 6), bool)
    towards[:, :3] = True
    mv = Movement(params, ["w"])
    for step in range(1, 4):
        grads = {"w": np.where(towards, params["w"], -params["w"]).astype(np.float32)}
        params["w"] -= 0.1 * grads["w"]
        mv(step, params, grads, None)
    keep = local_masks(mv.scores, 0.5)["w"]
    assert np.array_equal(keep, ~towards)
