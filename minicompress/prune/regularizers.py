"""Sparsity by regularized training (course 3.3.1): L = L0 + lambda * ||w||_p.

Two penalties:
- L1 on single weights: R(w) = sum_i |w_i|, which drives weights to zero one by one;
- group lasso on heads or neurons: R(w) = sum_g ||w_g||_2 (Yuan & Lin 2006), the L2 norm of
  each group summed, which drives whole groups to zero at once: those are then removed.

A penalty reaches the loop in one of two ways:
- ``"subgradient"``: a loss hook (``RegularizedLoss``) returns L0 + lambda R and adds
  lambda dR/dw to the gradients (sign(w) for L1, w_g / ||w_g|| for a group). Weights get
  small but, with a step size that does not vanish, oscillate around zero instead of
  reaching it.
- ``"proximal"`` (proximal gradient): the optimizer steps on L0 alone (the loss hook only
  reports L0 + lambda R); after each step the after-step hook (``ProximalStep``) applies the
  proximal operator of tau R — soft thresholding for L1, group soft thresholding for group
  lasso — which sets weights and whole groups to exactly zero.

The step size tau. For plain gradient descent with rate eta, tau = eta * lambda. AdamW's
step is w - eta * m_hat / D with D = sqrt(v_hat) + eps per coordinate: a different step
size per coordinate, so the matching proximal step is taken in the metric D (Yun, Lozano &
Yang 2021, "Adaptive proximal gradient methods for structured neural networks"): for L1
exactly a threshold tau_i = eta * lambda / D_i per weight; for a group, approximated with the
group's mean, tau_g = eta * lambda / mean_g(D). With it a group ends at exactly zero when
the norm of its (averaged) loss gradient stays below lambda — the optimality condition of
group lasso — instead of whenever Adam's normalized steps happen to be small; with one
threshold tau = eta * lambda for all, every group of a layer tends to die or live together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from numbers import Real

import numpy as np

from minicompress.prune import groups as G

PENALTIES = ("l1", "group-lasso")
MODES = ("proximal", "subgradient")


def check_lambda(lam: object) -> float:
    """Refuse a regularization strength that is not a finite real >= 0."""
    if isinstance(lam, bool) or not isinstance(lam, Real) or not np.isfinite(float(lam)):
        raise TypeError(f"lambda must be a finite real number >= 0; got {lam!r}")
    if lam < 0:
        raise ValueError(f"lambda must be >= 0; got {lam!r}")
    return float(lam)


def _check_tau(tau: object):
    """tau: a real >= 0, or an array of them (one threshold per entry or per group)."""
    if isinstance(tau, np.ndarray):
        if not np.issubdtype(tau.dtype, np.floating) or not (tau >= 0).all():
            raise ValueError("tau must hold real numbers >= 0")
        return tau
    if isinstance(tau, bool) or not isinstance(tau, Real) or not tau >= 0:
        raise ValueError(f"tau must be a real number >= 0; got {tau!r}")
    return float(tau)


def soft_threshold(w: np.ndarray, tau: float) -> np.ndarray:
    """The proximal operator of tau * ||w||_1, entry by entry:

        prox(w)_i = argmin_x 1/2 (x - w_i)^2 + tau |x| = sign(w_i) * max(|w_i| - tau, 0)

    Entries with |w_i| <= tau become exactly 0; the others move tau towards zero.
    w: float [...]; tau >= 0, a number or an array broadcasting to w (one threshold per
    entry)  ->  same shape and dtype (w is not modified).
    """
    tau = _check_tau(tau)
    w = np.asarray(w)
    return (np.sign(w) * np.maximum(np.abs(w) - tau, 0)).astype(w.dtype)


def group_soft_threshold(rows: np.ndarray, tau: float) -> np.ndarray:
    """The proximal operator of tau * sum_g ||x_g||_2, group by group (block soft threshold):

        prox(w)_g = argmin_x 1/2 ||x - w_g||^2 + tau ||x||_2 = w_g * max(0, 1 - tau / ||w_g||_2)

    A group whose norm is <= tau becomes exactly 0 (all its entries at once); the others
    shrink towards 0 along their own direction by tau. A zero group stays 0.
    rows: float [G, n], one group per row; tau >= 0, a number or one per group [G]
    ->  [G, n], rows' dtype.
    """
    tau = _check_tau(tau)
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"rows must be [G, n]; got shape {rows.shape}")
    return (rows * group_shrink_factors(rows, tau)[:, None]).astype(rows.dtype)


def group_shrink_factors(rows: np.ndarray, tau) -> np.ndarray:
    """max(0, 1 - tau / ||w_g||_2) per group (0 for a zero group): the factor of
    ``group_soft_threshold``.  rows: float [G, n]; tau: number or [G]  ->  float64 [G]."""
    norms = np.sqrt(np.square(np.asarray(rows, dtype=np.float64)).sum(axis=1))  # [G]
    return np.where(norms > tau, 1.0 - tau / np.where(norms > 0, norms, 1.0), 0.0)


def adam_metric(opt, name: str) -> np.ndarray | None:
    """D = sqrt(v_hat) + eps, v_hat = v / (1 - b2^t): the per-coordinate scale by which AdamW
    divided the step of parameter ``name`` (None when ``opt`` keeps no second moment for it,
    e.g. plain SGD, or before its first step).  ->  float64, the parameter's shape."""
    v = getattr(opt, "v", None)
    t = getattr(opt, "t", 0)
    if v is None or name not in v or not t:
        return None
    b2 = opt.betas[1]
    return np.sqrt(v[name].astype(np.float64) / (1.0 - b2**t)) + opt.eps


def l1_value_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
    """R(w) = sum_i |w_i| and its subgradient sign(w) (0 at w_i = 0).
    w: float [...]  ->  (float, same shape and dtype)."""
    w = np.asarray(w)
    return float(np.abs(w.astype(np.float64)).sum()), np.sign(w).astype(w.dtype)


def group_lasso_value_and_grad(rows: np.ndarray) -> tuple[float, np.ndarray]:
    """R = sum_g ||x_g||_2 and its gradient x_g / ||x_g||_2 (0 for a zero group, a valid
    subgradient there).  rows: float [G, n]  ->  (float, [G, n] in rows' dtype)."""
    rows = np.asarray(rows)
    norms = np.sqrt(np.square(rows.astype(np.float64)).sum(axis=1))  # [G]
    inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    return float(norms.sum()), (rows * inv[:, None]).astype(rows.dtype)


@dataclass(frozen=True)
class L1Penalty:
    """lambda * sum |w| over the weights ``names``."""

    names: tuple[str, ...]  # the weights penalized (e.g. every block linear weight)
    lam: float  # lambda: strength of the penalty

    def __post_init__(self):
        check_lambda(self.lam)

    def value_and_grads(self, params: dict) -> tuple[float, dict]:
        total, grads = 0.0, {}
        for n in self.names:
            v, g = l1_value_and_grad(params[n])
            total += v
            grads[n] = g * g.dtype.type(self.lam)
        return self.lam * total, grads

    def prox(self, params: dict, tau: float, opt=None) -> None:
        """w <- soft_threshold(w, tau / D) in place, tau = lr * lambda, D = ``adam_metric``
        (1 without an adaptive optimizer)."""
        for n in self.names:
            d = adam_metric(opt, n)
            params[n][...] = soft_threshold(params[n], tau if d is None else tau / d)


@dataclass(frozen=True)
class GroupLasso:
    """lambda * sum_g ||w_g||_2 over the heads and/or neurons of every block
    (``groups.structure_parts``)."""

    cfg: object  # the model's TransformerConfig (D, n_layer)
    kinds: tuple[str, ...]  # "heads", "neurons", or both
    lam: float  # lambda: strength of the penalty

    def __post_init__(self):
        check_lambda(self.lam)
        if not self.kinds or any(k not in ("heads", "neurons") for k in self.kinds):
            raise ValueError(f"group lasso groups are 'heads' and/or 'neurons'; got {self.kinds}")

    def _all_parts(self, params: dict):
        for kind in self.kinds:
            for i in range(self.cfg.n_layer):
                yield G.structure_parts(params, self.cfg, kind, i)

    def value_and_grads(self, params: dict) -> tuple[float, dict]:
        total, grads = 0.0, {}
        for parts in self._all_parts(params):
            value, rows = group_lasso_value_and_grad(G.gather_groups(params, parts))
            total += value
            for n, g in G.scatter_groups(params, parts, rows * rows.dtype.type(self.lam)).items():
                grads[n] = grads[n] + g if n in grads else g
        return self.lam * total, grads

    def prox(self, params: dict, tau: float, opt=None) -> None:
        """Group soft threshold of every group in place with tau_g = tau / mean_g(D),
        tau = lr * lambda, D = ``adam_metric`` (tau_g = tau without an adaptive optimizer).
        For the groups that are exactly zero afterwards, AdamW's first moment is zeroed too
        (its second moment is kept: zeroing it would make the next step larger)."""
        m = getattr(opt, "m", None)
        for parts in self._all_parts(params):
            tau_g = tau
            metric = {p.name: adam_metric(opt, p.name) for p in parts}
            if all(d is not None for d in metric.values()):
                tau_g = tau / G.gather_groups(metric, parts).mean(axis=1)  # [G]
            rows = group_soft_threshold(G.gather_groups(params, parts), tau_g)  # [G, n]
            dead = ~rows.any(axis=1)  # [G]: groups now exactly zero
            for n, a in G.scatter_groups(params, parts, rows).items():
                params[n][...] = a
            if m is not None and dead.any() and all(p.name in m for p in parts):
                for n, a in G.scale_groups(m, parts, (~dead).astype(np.float32)).items():
                    m[n][...] = a


class RegularizedLoss:
    """Loss hook L = L0 + lambda R: wraps a loss (the default next-token cross-entropy or any
    other) and adds the penalty's value, and in ``"subgradient"`` mode its gradient."""

    def __init__(self, base: Callable, penalty, mode: str = "proximal"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.base, self.penalty, self.mode = base, penalty, mode
        if hasattr(base, "params"):  # trainable arrays of the wrapped loss stay visible
            self.params = base.params

    def __call__(self, params: dict, batch, cfg, linear) -> tuple[float, dict]:
        loss, grads = self.base(params, batch, cfg, linear)
        value, pgrads = self.penalty.value_and_grads(params)
        if self.mode == "subgradient":
            grads = dict(grads)
            for n, g in pgrads.items():
                grads[n] = grads[n] + g
        return loss + value, grads


class ProximalStep:
    """After-step hook: the penalty's proximal operator with tau = lr_t * lambda (scaled by
    AdamW's metric, see the module docstring), where ``lr(step)`` gives the learning rate of
    the step just taken (``step`` counts from 1); only up to step ``until`` (None: every
    step), e.g. a regularized phase before pruning."""

    def __init__(self, penalty, lr: Callable[[int], float], until: int | None = None):
        self.penalty, self.lr, self.until = penalty, lr, until

    def __call__(self, step: int, params: dict, grads: dict, opt) -> None:
        if self.until is None or step <= self.until:
            self.penalty.prox(params, self.lr(step) * self.penalty.lam, opt)


def step_lr(tc) -> Callable[[int], float]:
    """The learning rate ``nn.train.train`` used for step ``step`` (counted from 1) under the
    step-based schedule of ``tc`` (``nn.optim.lr_at`` at step - 1)."""
    from minicompress.nn.optim import lr_at

    if tc.minutes is not None:
        raise ValueError("a proximal step needs a step-based schedule: TrainConfig(minutes=None)")
    return lambda step: lr_at(step - 1, tc.steps, tc.lr, tc.warmup, tc.min_lr)


def make_penalty(name: str, lam: float, cfg, names: Iterable[str], kinds: tuple[str, ...]):
    """``"l1"`` on the weights ``names``, or ``"group-lasso"`` on the groups ``kinds``."""
    lam = check_lambda(lam)
    if name == "l1":
        return L1Penalty(tuple(names), lam)
    if name == "group-lasso":
        return GroupLasso(cfg, tuple(kinds), lam)
    raise ValueError(f"regularizer must be one of {', '.join(PENALTIES)}; got {name!r}")
