"""Write ``tests/golden/distill_<case>.npz``: PyTorch's values and gradients of the KD losses.

Run once, with torch installed, from the repository root:

    python tests/make_golden_distill.py

Every number in a golden file comes from PyTorch (the inputs from a seeded NumPy generator);
nothing is computed by minicompress. The tests compare our losses with these files when torch
is absent, and call the same builders with fresh inputs when it is present.

How PyTorch counts tokens: ``F.kl_div(..., reduction="batchmean")`` divides the summed KL by
``input.size(0)`` only. Our losses average over every token (N = B * T for [B, T, V]
logits), so the builders flatten the logits to [N, V] before calling torch; the case
``kd_kl_batchmean_3d`` keeps [B, T, V] unflattened to pin what ``batchmean`` does there
(a loss T times ours).

Every builder takes ``(torch, rng, dtype)`` and returns a dict of NumPy arrays: the inputs
(``student``, ``teacher``, ``temperature``, ...), the loss and ``dstudent``, the gradient of
the loss w.r.t. the student's logits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
SHAPE = (2, 3, 7)  # [B, T, V]


def _logits(rng, dtype, scale=2.0):
    s = (rng.standard_normal(SHAPE) * scale).astype(dtype)
    t = (rng.standard_normal(SHAPE) * scale * 1.5).astype(dtype)
    return s, t


def _np(t):
    return t.detach().numpy().copy()


def _kd_kl(torch, rng, dtype, temperature, flatten=True):
    F = torch.nn.functional
    s, t = _logits(rng, dtype)
    st = torch.tensor(s, requires_grad=True)
    shape = (-1, SHAPE[-1]) if flatten else SHAPE  # [N, V]: batchmean divides by N
    log_p_s = F.log_softmax(st.reshape(shape) / temperature, dim=-1)
    p_t = F.softmax(torch.tensor(t).reshape(shape) / temperature, dim=-1)
    loss = temperature**2 * F.kl_div(log_p_s, p_t, reduction="batchmean")
    loss.backward()
    return dict(
        student=s,
        teacher=t,
        temperature=np.array(temperature),
        loss=_np(loss),
        dstudent=_np(st.grad),
    )


def kd_kl_t1(torch, rng, dtype=np.float64):
    return _kd_kl(torch, rng, dtype, 1.0)


def kd_kl_t4(torch, rng, dtype=np.float64):
    return _kd_kl(torch, rng, dtype, 4.0)


def kd_kl_t05(torch, rng, dtype=np.float64):
    return _kd_kl(torch, rng, dtype, 0.5)


def kd_kl_batchmean_3d(torch, rng, dtype=np.float64):
    """batchmean on [B, T, V] as it is: the sum over B * T tokens divided by B."""
    return _kd_kl(torch, rng, dtype, 2.0, flatten=False)


def _kd_mse(torch, rng, dtype, temperature):
    """The course's MSE on probabilities: sum of squares over V and N, divided by N."""
    F = torch.nn.functional
    s, t = _logits(rng, dtype)
    st = torch.tensor(s, requires_grad=True)
    p_s = F.softmax(st / temperature, dim=-1)
    p_t = F.softmax(torch.tensor(t) / temperature, dim=-1)
    n = SHAPE[0] * SHAPE[1]
    loss = F.mse_loss(p_s, p_t, reduction="sum") / n
    loss.backward()
    return dict(
        student=s,
        teacher=t,
        temperature=np.array(temperature),
        loss=_np(loss),
        dstudent=_np(st.grad),
    )


def kd_mse_t1(torch, rng, dtype=np.float64):
    return _kd_mse(torch, rng, dtype, 1.0)


def kd_mse_t3(torch, rng, dtype=np.float64):
    return _kd_mse(torch, rng, dtype, 3.0)


def kd_mse_logits(torch, rng, dtype=np.float64):
    F = torch.nn.functional
    s, t = _logits(rng, dtype)
    st = torch.tensor(s, requires_grad=True)
    loss = F.mse_loss(st, torch.tensor(t), reduction="sum") / (SHAPE[0] * SHAPE[1])
    loss.backward()
    return dict(
        student=s, teacher=t, temperature=np.array(1.0), loss=_np(loss), dstudent=_np(st.grad)
    )


def _mix(torch, rng, dtype, alpha, temperature):
    """alpha * F.cross_entropy (mean over tokens) + (1 - alpha) * T**2 KL batchmean."""
    F = torch.nn.functional
    s, t = _logits(rng, dtype)
    targets = rng.integers(0, SHAPE[-1], size=SHAPE[:-1])
    st = torch.tensor(s, requires_grad=True)
    flat = st.reshape(-1, SHAPE[-1])  # [N, V]
    ce = F.cross_entropy(flat, torch.tensor(targets.reshape(-1)))
    kd = temperature**2 * F.kl_div(
        F.log_softmax(flat / temperature, dim=-1),
        F.softmax(torch.tensor(t).reshape(-1, SHAPE[-1]) / temperature, dim=-1),
        reduction="batchmean",
    )
    loss = alpha * ce + (1.0 - alpha) * kd
    loss.backward()
    return dict(
        student=s,
        teacher=t,
        targets=targets,
        alpha=np.array(alpha),
        temperature=np.array(temperature),
        loss=_np(loss),
        dstudent=_np(st.grad),
    )


def mix_a03_t2(torch, rng, dtype=np.float64):
    return _mix(torch, rng, dtype, 0.3, 2.0)


BUILDERS = {
    "kd_kl_t1": kd_kl_t1,
    "kd_kl_t4": kd_kl_t4,
    "kd_kl_t05": kd_kl_t05,
    "kd_kl_batchmean_3d": kd_kl_batchmean_3d,
    "kd_mse_t1": kd_mse_t1,
    "kd_mse_t3": kd_mse_t3,
    "kd_mse_logits": kd_mse_logits,
    "mix_a03_t2": mix_a03_t2,
}


def load_golden(name: str) -> dict[str, np.ndarray]:
    """The stored case ``name`` (a missing file is an error, not a skip)."""
    path = GOLDEN_DIR / f"distill_{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run python tests/make_golden_distill.py")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def main() -> int:
    import torch

    GOLDEN_DIR.mkdir(exist_ok=True)
    for i, (name, build) in enumerate(BUILDERS.items()):
        case = build(torch, np.random.default_rng([2025, 12, i]), np.float64)
        for k, a in case.items():
            if a.dtype == object or not np.isfinite(a.astype(np.float64)).all():
                raise RuntimeError(f"{name}.{k} is not a finite numeric array")
        path = GOLDEN_DIR / f"distill_{name}.npz"
        np.savez_compressed(path, torch_version=np.array(torch.__version__), **case)
        print(f"{path.name}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
