"""minicompress/prune/regularizers.py: the proximal operators against their closed forms
and against the minimization that defines them; penalties and their gradients."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close, numerical_grad, rel_error
from hypothesis import given, settings
from hypothesis import strategies as st

from minicompress.prune.regularizers import (
    check_lambda,
    group_lasso_value_and_grad,
    group_soft_threshold,
    l1_value_and_grad,
    make_penalty,
    soft_threshold,
)


def test_soft_threshold_by_hand():
    w = np.array([-3.0, -0.5, 0.0, 0.2, 1.0, 2.0], dtype=np.float32)
    out = soft_threshold(w, 1.0)
    assert out.tolist() == [-2.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert out.dtype == np.float32
    assert w.tolist() == np.float32([-3.0, -0.5, 0.0, 0.2, 1.0, 2.0]).tolist()  # untouched


def test_group_soft_threshold_by_hand():
    rows = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [0.6, 0.8]])  # norms 5, 0.5, 0, 1
    out = group_soft_threshold(rows, 1.0)
    # (1 - 1/5) * [3, 4] = [2.4, 3.2]; norm 0.5 <= 1 -> 0; zero stays zero; norm 1 <= 1 -> 0
    assert_close(out, np.array([[2.4, 3.2], [0, 0], [0, 0], [0, 0]]), rtol=1e-15, atol=1e-15)


def _objective_l1(x, w, tau):
    return 0.5 * np.sum((x - w) ** 2) + tau * np.sum(np.abs(x))


def _objective_group(x, w, tau):
    return 0.5 * np.sum((x - w) ** 2) + tau * np.sqrt(np.sum(x**2))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tau=st.floats(0.0, 3.0))
def test_prox_operators_minimize_their_objective(seed, tau):
    """prox(w) = argmin_x 1/2 ||x - w||^2 + tau R(x): no nearby point does better, and
    scipy's minimizer (an independent method) finds no lower value."""
    from scipy.optimize import minimize

    r = np.random.default_rng(seed)
    w = r.standard_normal(5) * 2
    for prox, obj in (
        (soft_threshold(w, tau), _objective_l1),
        (group_soft_threshold(w[None, :], tau)[0], _objective_group),
    ):
        best = obj(prox, w, tau)
        for _ in range(50):
            assert best <= obj(prox + r.standard_normal(5) * 1e-3, w, tau) + 1e-12
        found = minimize(obj, w, args=(w, tau), method="Nelder-Mead", options={"xatol": 1e-10})
        assert best <= found.fun + 1e-9


def test_group_soft_threshold_zeroes_whole_groups_only():
    rows = np.random.default_rng(0).standard_normal((20, 7))
    out = group_soft_threshold(rows, 2.5)
    dead = ~out.any(axis=1)
    norms = np.linalg.norm(rows, axis=1)
    assert np.array_equal(dead, norms <= 2.5) and dead.any() and not dead.all()
    assert (out[~dead] != 0).all()  # survivors keep every entry (a shrink, not a sparsify)
    # survivors keep their direction and lose exactly tau of their norm
    assert_close(np.linalg.norm(out[~dead], axis=1), norms[~dead] - 2.5, rtol=1e-12)


def test_penalty_values_and_gradients():
    r = np.random.default_rng(1)
    w = r.standard_normal((4, 3))
    value, grad = l1_value_and_grad(w)
    assert value == pytest.approx(np.abs(w).sum())
    assert np.array_equal(grad, np.sign(w))
    value, grad = group_lasso_value_and_grad(w)
    assert value == pytest.approx(sum(np.linalg.norm(row) for row in w))
    x = w.copy()
    numeric = numerical_grad(lambda: group_lasso_value_and_grad(x)[0], x)
    assert rel_error(grad, numeric) < 1e-8
    _, g0 = group_lasso_value_and_grad(np.zeros((2, 3)))
    assert (g0 == 0).all()  # a valid subgradient at a zero group, not NaN


@pytest.mark.parametrize("bad", [-1.0, -1e-9])
def test_negative_lambda_is_refused(bad):
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        check_lambda(bad)
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        make_penalty("l1", bad, None, ["w"], ())


@pytest.mark.parametrize("bad", [float("nan"), "1", None])
def test_non_numeric_lambda_is_refused(bad):
    with pytest.raises(TypeError, match="lambda"):
        check_lambda(bad)


def test_bad_tau_and_penalty_names():
    with pytest.raises(ValueError, match="tau"):
        soft_threshold(np.ones(3), -1.0)
    with pytest.raises(ValueError, match="regularizer must be one of"):
        make_penalty("l2", 1.0, None, ["w"], ())


def test_proximal_steps_scale_with_adams_metric():
    """After an AdamW step with second moments v (here b2 = 0, t = 1: v_hat = v, eps = 0),
    the L1 threshold of weight i is tau / sqrt(v_i) and a group's is tau / mean(sqrt(v))."""
    from types import SimpleNamespace

    from minicompress.prune.regularizers import L1Penalty, adam_metric

    opt = SimpleNamespace(
        v={"w": np.array([[4.0, 1.0]], np.float32)}, m={}, t=1, betas=(0.9, 0.0), eps=0.0
    )
    assert adam_metric(opt, "w").tolist() == [[2.0, 1.0]]
    assert adam_metric(opt, "other") is None and adam_metric(None, "w") is None
    params = {"w": np.array([[0.6, 0.6]], np.float32)}
    L1Penalty(("w",), 1.0).prox(params, 1.0, opt)  # thresholds 0.5 and 1.0
    assert_close(params["w"], np.array([[0.1, 0.0]]), rtol=1e-6, atol=1e-7)
    params = {"w": np.array([[0.6, 0.6]], np.float32)}
    L1Penalty(("w",), 1.0).prox(params, 0.5, None)  # no optimizer: one threshold, 0.5
    assert_close(params["w"], np.array([[0.1, 0.1]]), rtol=1e-6, atol=1e-7)


def test_group_prox_uses_the_groups_mean_metric():
    from types import SimpleNamespace

    from minicompress.nn.model import TransformerConfig, init_params
    from minicompress.prune import groups as G
    from minicompress.prune.regularizers import GroupLasso

    cfg = TransformerConfig(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4, mlp_ratio=1)
    params = init_params(cfg, np.random.default_rng(0))
    parts = G.structure_parts(params, cfg, "neurons", 0)
    rows = G.gather_groups(params, parts)  # [4 neurons, 9 entries]
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    # second moments: neuron j's entries all have sqrt(v) = j + 1, so tau_j = tau / (j + 1)
    v = {p.name: np.ones_like(params[p.name]) for p in parts}
    v = {**v, **G.scale_groups(v, parts, np.array([1.0, 4.0, 9.0, 16.0]))}
    opt = SimpleNamespace(v=v, m={}, t=1, betas=(0.9, 0.0), eps=0.0)
    tau = float(norms[0] * 1.01)  # neuron 0 (tau / 1) dies, neuron 3 (tau / 4) survives
    expected = group_soft_threshold(rows, tau / np.array([1.0, 2.0, 3.0, 4.0]))
    work = {k: a.copy() for k, a in params.items()}
    GroupLasso(cfg, ("neurons",), 1.0).prox(work, tau, opt)
    assert_close(G.gather_groups(work, parts), expected, rtol=1e-6, atol=1e-7)
    dead = ~expected.any(axis=1)
    assert dead.any() and not dead.all()
