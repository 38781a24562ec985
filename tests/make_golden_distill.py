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


def hidden_mse(torch, rng, dtype=np.float64):
    """F.mse_loss(h_S @ W + b, h_T): the mean over all N * C_T entries (TinyBERT eq. 7)."""
    F = torch.nn.functional
    h_s = rng.standard_normal((2, 3, 4)).astype(dtype)  # [B, T, C_S]
    h_t = rng.standard_normal((2, 3, 6)).astype(dtype)  # [B, T, C_T]
    w = (rng.standard_normal((4, 6)) * 0.5).astype(dtype)  # ours [C_S, C_T]
    b = (rng.standard_normal(6) * 0.1).astype(dtype)
    hs, wt, bt = (torch.tensor(a, requires_grad=True) for a in (h_s, w.T.copy(), b))
    loss = F.mse_loss(F.linear(hs, wt, bt), torch.tensor(h_t))  # torch weight [C_T, C_S]
    loss.backward()
    return dict(
        h_s=h_s,
        h_t=h_t,
        w=w,
        b=b,
        loss=_np(loss),
        dh_s=_np(hs.grad),
        dw=_np(wt.grad).T.copy(),
        db=_np(bt.grad),
    )


def _attention_maps(torch, rng, dtype, heads):
    """Causal attention probabilities: softmax of random scores with -inf above the diagonal."""
    t = 4
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    scores = torch.tensor(rng.standard_normal((2, heads, t, t)) * 2.0)
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1).numpy().astype(dtype)


def _attention_kl(torch, rng, dtype, h_s, h_t):
    """sum over (b, h, query) of F.kl_div(log A_S, A_T, reduction="sum") over keys, divided by
    the number of rows; with different head counts, of the maps averaged over the heads."""
    F = torch.nn.functional
    a_s = _attention_maps(torch, rng, dtype, h_s)
    a_t = _attention_maps(torch, rng, dtype, h_t)
    ast = torch.tensor(a_s, requires_grad=True)
    s, t = ast, torch.tensor(a_t)
    if h_s != h_t:
        s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
    rows = s.shape[0] * s.shape[1] * s.shape[2]
    # kl_div takes log A_S, which is -inf at the masked keys (where A_T is 0 too): kl_div's
    # target * input would be 0 * -inf = nan there, so the log is taken of 1 instead
    log_s = torch.log(torch.where(t > 0, s, torch.ones_like(s)))
    loss = F.kl_div(log_s, t, reduction="sum") / rows
    loss.backward()
    return dict(a_s=a_s, a_t=a_t, loss=_np(loss), da_s=_np(ast.grad))


def attention_kl_matched(torch, rng, dtype=np.float64):
    return _attention_kl(torch, rng, dtype, 3, 3)


def attention_kl_averaged(torch, rng, dtype=np.float64):
    return _attention_kl(torch, rng, dtype, 2, 3)


TRANSFER_BUILDERS = {
    "hidden_mse": hidden_mse,
    "attention_kl_matched": attention_kl_matched,
    "attention_kl_averaged": attention_kl_averaged,
}

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
    for i, (name, build) in enumerate({**BUILDERS, **TRANSFER_BUILDERS}.items()):
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
