"""GPTQ: weights rounded one input row at a time, each row's rounding error compensated by
the rows not yet rounded (Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023; the
Optimal Brain Surgeon update of Hassibi & Stork 1993).

For a layer y = x @ w (x [M, K], w [K, N]) the output error of rounding w to w_hat is

    E = || x @ (w - w_hat) ||^2 = sum_n (w_n - w_hat_n)^T H (w_n - w_hat_n),  H = x^T x

(w_n: column n). Round-to-nearest minimizes each weight's own error; GPTQ rounds row k,
then moves the rows after it so that the output error that row k's rounding causes is
cancelled as far as the remaining rows can cancel it:

    err_k = (w[k] - w_hat[k]) / U[k, k]
    w[k+1:] -= U[k, k+1:][:, None] * err_k[None, :]

with U the upper Cholesky factor of H^-1 (``H^-1 = U^T U``) and H damped by 1% of its mean
diagonal (the paper's lambda). Group-wise ranges are taken when the sequence reaches the
group's first row, from the rows as they are then (the paper's "lazy" groups). NumPy only.
"""

from __future__ import annotations

import numpy as np

from minicompress.quant import formulas as F
from minicompress.quant.tensor import QuantSpec, quantize_tensor, scale_zero_point

DAMP = 0.01  # lambda: H + DAMP * mean(diag H) * I (the paper's default)


def inverse_hessian_factor(x: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """U, the upper Cholesky factor of (x^T x + damp * mean(diag) * I)^-1 (float64 [K, K]).
    x: float [M, K] calibration inputs. A channel that is always 0 gets diagonal 1 (its
    weights then round to nearest, and move nothing)."""
    x = np.asarray(x, np.float64)
    h = x.T @ x  # [K, K]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    h_inv = np.linalg.inv(h)
    return np.linalg.cholesky(h_inv).T  # upper: h_inv = U^T U


def gptq_quantize(x: np.ndarray, w: np.ndarray, spec: QuantSpec, damp: float = DAMP):
    """Quantize w [K, N] for inputs x [M, K] by GPTQ (module docstring).

    spec: a linear scheme (asymmetric or symmetric) per output channel or per group along
    K (axis -1, the weights' usual spec). -> QuantizedTensor of w's shape, whose codes are
    those the sequence chose (equal to ``quantize_tensor`` of the rows as they were when
    rounded, with the ranges taken at each group's start).
    """
    F.check_values("w", w)
    F.check_values("x", x)
    if w.ndim != 2 or x.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"x [M, K] and w [K, N] must agree; got {x.shape} and {w.shape}")
    if spec.scheme == "log" or spec.granularity not in ("channel", "group"):
        raise ValueError(
            f"gptq takes a linear scheme per channel or per group; got {spec.scheme} per "
            f"{spec.granularity}"
        )
    if F.check_axis(spec.axis, 2) != 1:
        raise ValueError("gptq quantizes ranges per output channel (axis -1 of [K, N])")
    k_in = w.shape[0]
    group = k_in if spec.granularity == "channel" else spec.group_size
    if k_in % group:
        raise ValueError(f"group_size {group} must divide K={k_in}")
    u = inverse_hessian_factor(x, damp)  # [K, K]
    work = w.astype(np.float64)  # [K, N]: rows move as the rows before them are rounded
    seen = np.empty_like(work)  # each row as it was when rounded
    q_min, q_max = spec.code_range()
    los, his = [], []
    for k in range(k_in):
        if k % group == 0:  # this group's ranges, from its rows as they are now
            lo = work[k : k + group].min(axis=0, keepdims=True).astype(w.dtype)  # [1, N]
            hi = work[k : k + group].max(axis=0, keepdims=True).astype(w.dtype)
            scale, zero_point = scale_zero_point(lo, hi, spec)
            scale = scale.astype(w.dtype)
            los.append(lo)
            his.append(hi)
        row = work[k].astype(w.dtype)  # [N]
        seen[k] = row
        row_hat = F.fake_quantize(row, scale[0], zero_point[0], q_min, q_max)  # [N]
        err = (row.astype(np.float64) - row_hat) / u[k, k]  # [N]
        work[k + 1 :] -= u[k, k + 1 :, None] * err[None, :]  # [K-k-1, N]
    lo, hi = np.stack(los), np.stack(his)  # [K/G, 1, N]
    if spec.granularity == "channel":
        lo, hi = lo[0], hi[0]  # [1, N]
    return quantize_tensor(seen.astype(w.dtype), spec, lo, hi)


def output_error(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    """|| x @ (w - w_hat) ||^2 / (M N): the objective GPTQ lowers (float64)."""
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.mean((np.asarray(x, np.float64) @ d) ** 2))
