"""Test utilities: "ours beside theirs" comparisons; the finite-difference gradient check
itself is the package's (``minicompress.nn.gradcheck``), re-exported here."""

from __future__ import annotations

import numpy as np

from minicompress.nn.gradcheck import check_grads, numerical_grad, rel_error

__all__ = ["assert_close", "assert_grads_ok", "check_grads", "numerical_grad", "rel_error"]


def assert_grads_ok(errors: dict[str, float], tol: float = 1e-6) -> None:
    """Fail naming every tensor whose relative error exceeds ``tol``."""
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        lines = [f"  {k}: relative error {v:.3e} > {tol:.0e}" for k, v in sorted(bad.items())]
        raise AssertionError("gradient check failed:\n" + "\n".join(lines))


def assert_close(
    ours: np.ndarray,
    theirs: np.ndarray,
    rtol: float,
    atol: float = 0.0,
    name: str = "value",
) -> None:
    """np.allclose semantics (|ours - theirs| <= atol + rtol |theirs|, equal infinities
    close, NaN only against NaN); on failure, show the worst entries with ours beside
    theirs."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if ours.shape != theirs.shape:
        raise AssertionError(f"{name}: shape ours {ours.shape} vs theirs {theirs.shape}")
    o, t = ours.astype(np.float64), theirs.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: decided below
        excess = np.abs(o - t) - (atol + rtol * np.abs(t))
    infinite = np.isinf(o) | np.isinf(t)
    excess = np.where(infinite, np.where(o == t, -1.0, np.inf), excess)  # inf only equals inf
    nan_o, nan_t = np.isnan(o), np.isnan(t)
    excess = np.where(nan_o | nan_t, np.where(nan_o & nan_t, -1.0, np.inf), excess)
    if (excess <= 0).all():
        return
    worst = np.argsort(excess, axis=None)[::-1][:6]
    rows = [f"{'index':>16} {'ours':>24} {'theirs':>24} {'|diff|':>10}"]
    for flat in worst:
        if excess.reshape(-1)[flat] <= 0:
            break
        i = np.unravel_index(flat, ours.shape)
        rows.append(
            f"{str(tuple(int(j) for j in i)):>16} {o[i]:>24.17g} {t[i]:>24.17g} "
            f"{abs(o[i] - t[i]):>10.3e}"
        )
    n_bad = int((excess > 0).sum())
    raise AssertionError(
        f"{name}: {n_bad} of {ours.size} entries differ beyond rtol={rtol:g}, atol={atol:g}\n"
        + "\n".join(rows)
    )
