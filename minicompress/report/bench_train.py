"""Benchmark of one training step: NumPy (this package) against the same model in PyTorch.

A step is forward + backward + gradient clipping + AdamW on one batch of the default
config. Both run in the same process on the same weights and batch, in two rounds of
blocks, so that the machine's state affects both alike; the ratio numpy_ms / torch_ms is
the figure.
PyTorch is optional: without it only ``numpy_ms`` is reported.
"""

from __future__ import annotations

import time

import numpy as np

from minicompress.nn.model import TransformerConfig, init_params, loss_and_grads
from minicompress.nn.optim import AdamW, clip_grad_norm
from minicompress.platform import tune_allocator
from minicompress.report.timing import blas_summary
from minicompress.report.torch_twin import torch_forward, torch_params


def run_train_bench(
    batch_size: int = 16, repeat: int = 10, seed: int = 0, with_torch: bool = True
) -> dict:
    """Median milliseconds of a training step in NumPy and (if installed) PyTorch.

    ->  {"numpy_ms", "torch_ms", "ratio", "batch_size", "block_size", "params", "blas",
         "torch_threads", ...}; ``torch_ms``/``ratio`` are None without torch.
    """
    tune_allocator()
    rng = np.random.default_rng(seed)
    cfg = TransformerConfig(vocab_size=103)
    params = init_params(cfg, rng)
    x = rng.integers(0, cfg.vocab_size, (batch_size, cfg.block_size))
    y = rng.integers(0, cfg.vocab_size, (batch_size, cfg.block_size))
    opt = AdamW(lr=1e-4, weight_decay=0.1)

    def numpy_step():
        _, grads = loss_and_grads(params, x, y, cfg)
        clip_grad_norm(grads, 1.0)
        opt.step(params, grads)

    torch_step = None
    torch_threads = None
    if with_torch:
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            torch = None
        if torch is not None:
            torch.set_num_threads(2)
            torch_threads = torch.get_num_threads()
            tp = torch_params(torch, params)  # the package's one PyTorch twin

            def tforward(idx):
                return torch_forward(torch, tp, cfg, idx)

            decay = [p for p in tp.values() if p.ndim >= 2]
            no_decay = [p for p in tp.values() if p.ndim < 2]
            topt = torch.optim.AdamW(
                [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                lr=1e-4,
            )
            tx, ty = torch.tensor(x), torch.tensor(y)

            def torch_step():
                logits = tforward(tx)
                loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), ty.reshape(-1))
                topt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(tp.values()), 1.0)
                topt.step()

    steps = [("numpy", numpy_step)] + ([("torch", torch_step)] if torch_step else [])
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    # Blocks of steps rather than alternating single steps: each library's thread pool
    # spins for a while after its own calls and would slow the other one down. Two rounds,
    # so that both see the machine early and late; the first steps of a block are warm-up.
    for _ in range(2):
        for name, fn in steps:
            for i in range(repeat // 2 + 2):
                t0 = time.perf_counter()
                fn()
                if i >= 2:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    numpy_ms = float(np.median(times["numpy"]))
    torch_ms = float(np.median(times["torch"])) if "torch" in times else None
    return {
        "numpy_ms": numpy_ms,
        "torch_ms": torch_ms,
        "ratio": None if torch_ms is None else numpy_ms / torch_ms,
        "batch_size": batch_size,
        "block_size": cfg.block_size,
        "config": cfg.to_dict(),
        "params": int(sum(a.size for a in params.values())),
        "tokens_per_step": batch_size * cfg.block_size,
        "repeat": repeat,
        "blas": blas_summary(),
        "torch_threads": torch_threads,
    }
