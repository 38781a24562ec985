"""The coefficients of ``kernels.fastmath.gelu_erf_f32``'s erf, made once by this script
(``python tests/fit_erf_rational.py``; not a test).

erf(z) ~ z P(z^2) / Q(z^2) on [0, 4], P and Q of degree 5, Q(0) = 1, fitted for the
smallest relative error: linear least squares on the residual z P - erf Q, reweighted by
1 / (erf Q) of the previous fit (Loeb's iteration), then by the error itself (Lawson's
iteration toward the minimax fit); the best fit seen is kept. Past z = 4, erf(z) rounds to
1 in float32 (erfc(4) = 1.5e-8, below half an ulp of 1).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

Z_MAX = 4.0


def fit(dp: int = 5, dq: int = 5, loeb: int = 30, lawson: int = 200):
    """-> (P's coefficients, Q's coefficients, both constant term first; max relative
    error on the grid, in float64)."""
    z = np.sort(np.concatenate([np.linspace(1e-5, Z_MAX, 40_000), np.geomspace(1e-5, 0.5, 2000)]))
    f, u = erf(z), z * z
    a = np.hstack([z[:, None] * u[:, None] ** np.arange(dp + 1),
                   -f[:, None] * u[:, None] ** np.arange(1, dq + 1)])  # fmt: skip
    q_prev, lawson_w = np.ones_like(z), np.ones_like(z)
    best = (None, None, np.inf)
    for it in range(loeb + lawson):
        w = np.sqrt(lawson_w) / (f * q_prev)
        sol = np.linalg.lstsq(a * w[:, None], f * w, rcond=None)[0]
        p, q = sol[: dp + 1], np.concatenate([[1.0], sol[dp + 1 :]])
        q_val = np.polyval(q[::-1], u)
        rel = (z * np.polyval(p[::-1], u) / q_val - f) / f
        if np.abs(rel).max() < best[2] and np.all(q_val > 0):
            best = (p, q, float(np.abs(rel).max()))
        q_prev = q_val
        if it >= loeb:
            lawson_w = lawson_w * np.abs(rel)
            lawson_w /= lawson_w.sum()
    return best


if __name__ == "__main__":
    p, q, err = fit()
    print(f"max relative error {err:.2e}")
    print("P:", ", ".join(f"{c:.9e}" for c in p))
    print("Q:", ", ".join(f"{c:.9e}" for c in q))
