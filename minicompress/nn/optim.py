"""Optimizers, gradient clipping and the learning-rate schedule.

Optimizers update a ``dict[str, np.ndarray]`` of parameters in place from gradients with
the same keys; their state (moments, momentum buffers) is kept under the same keys too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit


def adamw_update_reference(p, g, m, v, decay, b1, b2, step_size, bias2_sqrt, eps) -> None:
    """The AdamW update of one flat parameter, in place, written as its formulas:

        p <- decay * p                                  (decay = 1 - lr * weight_decay)
        m <- b1 m + (1 - b1) g;    v <- b2 v + (1 - b2) g^2
        p <- p - step_size * m / (sqrt(v) / bias2_sqrt + eps)

    with step_size = lr / (1 - b1^t) and bias2_sqrt = sqrt(1 - b2^t) at step t.
    p, g, m, v: [n] of one dtype (float32 in training). ``_adamw_kernel`` is its Numba twin
    (same signature, same float operations in the same order: the same bits).
    """
    dt = p.dtype.type
    decay, b1, b2 = dt(decay), dt(b1), dt(b2)
    step_size, bias2_sqrt, eps = dt(step_size), dt(bias2_sqrt), dt(eps)
    p *= decay
    m[:] = b1 * m + (dt(1.0) - b1) * g
    v[:] = b2 * v + (dt(1.0) - b2) * (g * g)
    p -= step_size * m / (np.sqrt(v) / bias2_sqrt + eps)


@njit(cache=True)
def _adamw_kernel(p, g, m, v, decay, b1, b2, step_size, bias2_sqrt, eps):  # p, g, m, v: [n]
    """``adamw_update_reference`` in one pass over memory instead of one per NumPy operator
    (in place, in the parameter's dtype)."""
    dt = p.dtype.type
    decay, b1, b2 = dt(decay), dt(b1), dt(b2)
    step_size, bias2_sqrt, eps = dt(step_size), dt(bias2_sqrt), dt(eps)
    for i in range(p.size):
        p[i] *= decay
        m[i] = b1 * m[i] + (dt(1.0) - b1) * g[i]
        v[i] = b2 * v[i] + (dt(1.0) - b2) * (g[i] * g[i])
        p[i] -= step_size * m[i] / (math.sqrt(v[i]) / bias2_sqrt + eps)


def decays(name: str, param: np.ndarray) -> bool:
    """Weight decay applies to matrices (linear weights, embeddings), not to biases or
    LayerNorm gains/shifts (the vectors), as in GPT-2 and BERT."""
    return param.ndim >= 2


@dataclass
class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``.

    At step t, for each parameter p with gradient g:
        p <- p - lr * wd * p                       (decoupled decay; matrices only)
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    lr: float = 1e-3  # peak learning rate (the schedule scales it)
    betas: tuple[float, float] = (0.9, 0.999)  # decay rates of the first and second moments
    eps: float = 1e-8  # added to the denominator, for steps where v is ~0
    weight_decay: float = 0.01  # torch's default

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1); got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay}")
        self.t = 0
        self.last_lr = self.lr  # the learning rate of the last step (after-step hooks read it)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, params: dict, grads: dict, lr: float | None = None) -> None:
        """One update of every parameter that has a gradient, in place."""
        lr = self.lr if lr is None else lr
        self.last_lr = lr
        b1, b2 = self.betas
        self.t += 1
        step_size = lr / (1.0 - b1**self.t)
        bias2_sqrt = math.sqrt(1.0 - b2**self.t)
        for name, g in grads.items():
            p = params[name]
            if name not in self.m:
                if not p.flags.c_contiguous:
                    raise ValueError(
                        f"params[{name!r}] must be C-contiguous to be updated in place"
                    )
                self.m[name], self.v[name] = np.zeros_like(p), np.zeros_like(p)
            decay = 1.0 - lr * self.weight_decay if decays(name, p) else 1.0
            _adamw_kernel(
                p.reshape(-1),
                np.ascontiguousarray(g).reshape(-1),
                self.m[name].reshape(-1),
                self.v[name].reshape(-1),
                decay,
                b1,
                b2,
                step_size,
                bias2_sqrt,
                self.eps,
            )

    def state_dict(self) -> dict[str, np.ndarray]:
        """Moments as flat arrays (``m.<name>``, ``v.<name>``) plus the step count."""
        out = {"t": np.array(self.t)}
        out.update({f"m.{k}": a for k, a in self.m.items()})
        out.update({f"v.{k}": a for k, a in self.v.items()})
        return out


@dataclass
class SGD:
    """SGD with momentum, as ``torch.optim.SGD`` (dampening 0, no Nesterov).

    g <- g + wd * p (matrices only);   buf <- momentum * buf + g  (buf = g at the first step);
    p <- p - lr * buf
    """

    lr: float = 0.1  # learning rate
    momentum: float = 0.9  # 0 gives plain SGD
    weight_decay: float = 0.0  # L2 penalty added to the gradient (coupled, unlike AdamW)

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1); got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay}")
        self.buf: dict[str, np.ndarray] = {}

    def step(self, params: dict, grads: dict, lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        for name, g in grads.items():
            p = params[name]
            dt = p.dtype.type
            if self.weight_decay and decays(name, p):
                g = g + dt(self.weight_decay) * p
            if self.momentum:
                if name in self.buf:
                    self.buf[name] *= dt(self.momentum)
                    self.buf[name] += g
                else:
                    self.buf[name] = g.copy()
                g = self.buf[name]
            p -= dt(lr) * g


def global_grad_norm(grads: dict[str, np.ndarray]) -> float:
    """||g|| = sqrt(sum over all parameters of sum g^2), accumulated in float64."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients by min(1, max_norm / (||g|| + 1e-6)) in place, as
    ``torch.nn.utils.clip_grad_norm_``; returns ||g|| before clipping."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0; got {max_norm}")
    norm = global_grad_norm(grads)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return norm


def lr_at(step: int, total: int, lr: float, warmup: int, min_lr: float = 0.0) -> float:
    """Linear warmup then cosine decay.

    lr_t = lr * (t + 1) / warmup                                         for t < warmup
    lr_t = min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (t - warmup) / (total - warmup)))
    ``step`` may be fractional (a training run limited by time uses the elapsed fraction).
    """
    if total <= 0:
        raise ValueError(f"total must be > 0; got {total}")
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
