"""minicompress/prune/scores.py: element and group scores by hand, Taylor scores against the
real change of a loss, movement scores accumulated step by step."""

from __future__ import annotations

import numpy as np
import pytest

from minicompress.prune.scores import (
    Movement,
    element_scores,
    gradient_scores,
    group_score,
    magnitude_scores,
    movement_update,
    random_scores,
    taylor_scores,
)


def test_element_scores_by_hand():
    w = np.array([[-2.0, 0.5], [0.0, 3.0]], dtype=np.float32)
    g = np.array([[0.1, -4.0], [7.0, -0.5]], dtype=np.float32)
    assert magnitude_scores(w).tolist() == [[2.0, 0.5], [0.0, 3.0]]
    assert gradient_scores(g).tolist() == np.float32([[0.1, 4.0], [7.0, 0.5]]).tolist()
    assert taylor_scores(w, g).tolist() == np.float32([[0.2, 2.0], [0.0, 1.5]]).tolist()
    assert taylor_scores(w, g).dtype == np.float32


def test_taylor_score_predicts_the_loss_change_of_removing_a_weight():
    """For L(w) = sum_i a_i w_i + 1/2 sum_i c_i w_i^2 with small curvature c, setting w_i to
    0 changes L by a_i w_i + 1/2 c_i w_i^2 = w_i dL/dw_i - 1/2 c_i w_i^2 ~ w_i dL/dw_i."""
    r = np.random.default_rng(0)
    a, c, w = r.standard_normal(50), 1e-4 * r.random(50), r.standard_normal(50)

    def loss(x):
        return float(a @ x + 0.5 * (c * x**2).sum())

    grad = a + c * w
    change = np.array(
        [abs(loss(np.where(np.arange(50) == i, 0.0, w)) - loss(w)) for i in range(50)]
    )
    np.testing.assert_allclose(taylor_scores(w, grad), change, rtol=1e-3, atol=1e-6)
    # and the ranking by |w| alone is a different one here
    assert not np.array_equal(np.argsort(magnitude_scores(w)), np.argsort(change))


def test_movement_accumulates_minus_w_times_g():
    w1, g1 = np.array([1.0, -1.0, 2.0]), np.array([0.5, 0.5, -1.0])
    w2, g2 = np.array([0.9, -1.1, 2.1]), np.array([1.0, -2.0, 0.0])
    s = movement_update(np.zeros(3), w1, g1)  # [-0.5, 0.5, 2.0]
    s = movement_update(s, w2, g2)  # [-0.5 - 0.9, 0.5 - 2.2, 2.0]
    np.testing.assert_allclose(s, [-1.4, -1.7, 2.0], rtol=1e-15)

    hook = Movement({"w": w1.astype(np.float32)}, ["w"])
    hook(1, {"w": w1.astype(np.float32)}, {"w": g1.astype(np.float32)}, None)
    hook(2, {"w": w2.astype(np.float32)}, {"w": g2.astype(np.float32)}, None)
    np.testing.assert_allclose(hook.scores["w"], [-1.4, -1.7, 2.0], rtol=1e-6)


def test_random_scores_are_seeded_and_uniform():
    a = random_scores((1000,), np.random.default_rng(3))
    b = random_scores((1000,), np.random.default_rng(3))
    assert np.array_equal(a, b) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() < 1.0 and abs(a.mean() - 0.5) < 0.05
    with pytest.raises(TypeError, match="Generator"):
        random_scores((3,), 42)


def test_group_score_criteria_by_hand():
    rows = np.array([[3.0, -4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert group_score(rows, "l1").tolist() == [7.0, 4.0]
    assert group_score(rows, "l2").tolist() == [5.0, 2.0]
    assert group_score(rows, "mean_abs").tolist() == [1.75, 1.0]
    with pytest.raises(ValueError, match="criterion must be one of l1, l2, mean_abs"):
        group_score(rows, "linf")
    with pytest.raises(ValueError, match="n >= 1"):
        group_score(np.zeros((3, 0)), "l1")


def test_element_scores_dispatch_and_bad_input(rng):
    params = {"a.w": rng.standard_normal((3, 2)), "b.w": rng.standard_normal(4)}
    grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    s = element_scores("taylor", params, ["a.w"], grads)
    assert list(s) == ["a.w"] and np.array_equal(s["a.w"], np.abs(params["a.w"] * grads["a.w"]))
    with pytest.raises(ValueError, match=r"unknown parameter names \['c.w'\]"):
        element_scores("magnitude", params, ["c.w"])
    with pytest.raises(ValueError, match="needs the gradients"):
        element_scores("gradient", params, ["a.w"])
    with pytest.raises(ValueError, match="method must be one of"):
        element_scores("hessian", params, ["a.w"])
    with pytest.raises(ValueError, match="rng"):
        element_scores("random", params, ["a.w"])
    with pytest.raises(TypeError, match="real float"):
        magnitude_scores(np.array([1, 2]))
    with pytest.raises(ValueError, match="same shape"):
        taylor_scores(np.ones(3), np.ones(4))
