"""Gradient checking: float64 central differences against an analytic backward.

Every backward in minicompress is checked this way (tests/, tutorial 02); it is public so
that students can check their own backward passes the same way.

Relative error of a gradient:

    rel_error(a, n) = max_i |a_i - n_i| / max(max_i |a_i|, max_i |n_i|)

i.e. the worst absolute difference measured against the tensor's largest entry. (Dividing
entry by entry is ill-conditioned: an entry that is 1e-12 by cancellation would report a
huge "relative" error from finite-difference noise alone, and forcing a floor there is
the kind of loose tolerance that hides bugs.) Check each parameter tensor separately, so
a small bias gradient is not measured against a large weight gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_grad(
    f: Callable[[], float],
    x: np.ndarray,
    h: float = 1e-6,
    entries: np.ndarray | None = None,
) -> np.ndarray:
    """Central differences (f(x + h e_i) - f(x - h e_i)) / 2h of the scalar ``f()`` w.r.t.
    the float64 array ``x``, which ``f`` reads; ``x`` is perturbed in place and restored.

    ``entries``: flat indices to evaluate (default all); the others are left at 0.
    ->  array shaped like ``x``.
    """
    if x.dtype != np.float64:
        raise TypeError(f"finite differences need float64; got {x.dtype}")
    flat = x.reshape(-1)  # a view: perturbing it perturbs x
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so that it can be perturbed in place")
    grad = np.zeros(x.size)
    for i in range(x.size) if entries is None else entries:
        old = flat[i]
        flat[i] = old + h
        f_plus = f()
        flat[i] = old - h
        f_minus = f()
        flat[i] = old
        grad[i] = (f_plus - f_minus) / (2.0 * h)
    return grad.reshape(x.shape)


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| / max(max |a|, max |n|)   (0 when both are exactly zero)."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    if analytic.shape != numeric.shape:
        raise ValueError(f"shapes differ: {analytic.shape} vs {numeric.shape}")
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0))
    diff = np.abs(analytic - numeric).max(initial=0.0)
    return 0.0 if diff == 0.0 else float(diff / scale)


def check_grads(
    f: Callable[[], float],
    inputs: dict[str, np.ndarray],
    analytic: dict[str, np.ndarray],
    h: float = 1e-6,
    max_entries: int | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """Relative error of ``analytic[name]`` against central differences of ``f`` w.r.t.
    each ``inputs[name]`` (float64 arrays that ``f`` reads).

    ``max_entries``: check at most this many randomly chosen entries per array (``rng``
    chooses), to keep large checks fast; the error is then measured on those entries only.
    ->  {name: relative error}.
    """
    errors = {}
    for name, x in inputs.items():
        a = np.asarray(analytic[name], np.float64)
        if a.shape != x.shape:
            raise ValueError(f"gradient of {name!r} has shape {a.shape}; input has {x.shape}")
        entries = None
        if max_entries is not None and x.size > max_entries:
            entries = np.sort(rng.choice(x.size, size=max_entries, replace=False))
        n = numerical_grad(f, x, h, entries)
        if entries is not None:
            a, n = a.reshape(-1)[entries], n.reshape(-1)[entries]
        errors[name] = rel_error(a, n)
    return errors


def random_params64(cfg, rng: np.random.Generator, layers=None) -> dict[str, np.ndarray]:
    """float64 parameters of size O(1) for a gradient check of the whole model: LayerNorm
    gains 1 + 0.2 N(0, 1), other vectors 0.2 N(0, 1), matrices 0.5 N(0, 1).

    ``init_params``' std of 0.02 makes the gradients of deep parameters ~1e-6, below what
    finite differences resolve; the derivative formulas do not care about the scale.
    ``layers``: per-block ``LayerShape`` (heads, MLP width) for a shrunk model.
    """
    from minicompress.nn.model import param_shapes

    params = {}
    for name, shape in param_shapes(cfg, layers).items():
        if name.endswith(".g"):
            params[name] = 1.0 + 0.2 * rng.standard_normal(shape)
        elif len(shape) == 1:
            params[name] = 0.2 * rng.standard_normal(shape)
        else:
            params[name] = 0.5 * rng.standard_normal(shape)
    return params
