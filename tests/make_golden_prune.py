"""Write ``tests/golden/prune_<case>.npz``: weights and the masks ``torch.nn.utils.prune``
computes for them.

Run once, with torch installed, from the repository root:

    python tests/make_golden_prune.py

The weights come from a seeded NumPy generator (normal values: no ties, so the masks do not
depend on how torch's topk orders equal scores); every mask comes from torch. Nothing is
computed by minicompress. ``tests/test_prune_masks.py`` compares our masks with these files
when torch is absent, and calls the same builders with fresh weights when it is present.

Layouts (ours -> torch): our linear weight is [K, N] (y = x @ w); torch's ``nn.Linear``
weight is [N, K] = w.T, so a torch mask is transposed back. torch's ``dim=0`` (output
features, the rows of its weight) is our axis 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
AMOUNTS = (0.0, 0.25, 0.35, 0.5, 0.8, 1.0)  # fractions, as torch takes them (round half even)
LN_CASES = ((1, 0), (2, 0), (1, 1), (2, 1))  # (norm order n, torch dim)
GLOBAL_AMOUNT = 0.6


def _prune(torch):
    """``torch.nn.utils.prune`` (a submodule that ``import torch`` does not load)."""
    import torch.nn.utils.prune as prune

    return prune


def _linear(torch, w_ours: np.ndarray):
    """An nn.Linear (float64, no bias) holding our [K, N] weight."""
    k, n = w_ours.shape
    lin = torch.nn.Linear(k, n, bias=False, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w_ours.T.copy()))
    return lin


def _mask(lin) -> np.ndarray:
    """torch's mask [N, K] as our bool [K, N]."""
    return lin.weight_mask.detach().numpy().T.astype(bool).copy()


def l1_unstructured(torch, rng):
    prune = _prune(torch)
    w = rng.standard_normal((10, 6))  # [K, N], 60 entries
    w_small = rng.standard_normal((2, 5))  # 10 entries: 0.25 * 10 = 2.5, 0.35 * 10 = 3.5
    out = {"w": w, "w_small": w_small, "amounts": np.array(AMOUNTS)}
    for i, amount in enumerate(AMOUNTS):
        for key, weight in (("mask", w), ("mask_small", w_small)):
            lin = _linear(torch, weight)
            prune.l1_unstructured(lin, "weight", amount=amount)
            out[f"{key}_{i}"] = _mask(lin)
    return out


def ln_structured(torch, rng):
    prune = _prune(torch)
    w = rng.standard_normal((6, 8))  # [K, N]; torch [8, 6]
    out = {"w": w, "amount": np.array(0.4), "cases": np.array(LN_CASES)}
    for order, dim in LN_CASES:
        lin = _linear(torch, w)
        prune.ln_structured(lin, "weight", amount=0.4, n=order, dim=dim)
        out[f"mask_n{order}_dim{dim}"] = _mask(lin)
    return out


def random_structured(torch, rng):
    prune = _prune(torch)
    w = rng.standard_normal((6, 8))  # [K, N]
    out = {"w": w, "amount": np.array(0.5)}
    for dim in (0, 1):
        lin = _linear(torch, w)
        prune.random_structured(lin, "weight", amount=0.5, dim=dim)
        out[f"mask_dim{dim}"] = _mask(lin)
    return out


def global_unstructured(torch, rng):
    prune = _prune(torch)
    # three layers of different scales: a global threshold prunes the small one most
    ws = [rng.standard_normal((4, 5)) * s for s in (1.0, 0.3, 2.0)]
    lins = [_linear(torch, w) for w in ws]
    prune.global_unstructured(
        [(lin, "weight") for lin in lins],
        pruning_method=prune.L1Unstructured,
        amount=GLOBAL_AMOUNT,
    )
    out = {"amount": np.array(GLOBAL_AMOUNT)}
    for i, (w, lin) in enumerate(zip(ws, lins, strict=True)):
        out[f"w{i}"] = w
        out[f"mask{i}"] = _mask(lin)
    return out


BUILDERS = {
    "prune_l1_unstructured": l1_unstructured,
    "prune_ln_structured": ln_structured,
    "prune_random_structured": random_structured,
    "prune_global_unstructured": global_unstructured,
}


def load_golden(name: str) -> dict[str, np.ndarray]:
    """The stored case ``name`` (a missing file is an error, not a skip)."""
    path = GOLDEN_DIR / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run python tests/make_golden_prune.py")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def main() -> int:
    import torch

    torch.manual_seed(0)  # random_structured draws from torch's generator
    GOLDEN_DIR.mkdir(exist_ok=True)
    for i, (name, build) in enumerate(BUILDERS.items()):
        case = build(torch, np.random.default_rng([2025, i]))
        path = GOLDEN_DIR / f"{name}.npz"
        np.savez_compressed(path, torch_version=np.array(torch.__version__), **case)
        print(f"{path.name}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
