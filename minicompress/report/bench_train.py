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


def torch_twin(params: dict, cfg: TransformerConfig):
    """The model of ``nn.model`` written as idiomatic PyTorch eager, with a copy of ``params``.

    Linear weights are transposed to torch's ``[out, in]`` and applied with ``F.linear``
    (one fused addmm); attention is ``F.scaled_dot_product_attention``. Returns the torch
    parameters (same names) and ``forward(idx) -> logits``.
    """
    import torch
    import torch.nn.functional as F

    if cfg.norm != "pre":
        raise ValueError(f"torch_twin supports norm='pre' only; got {cfg.norm!r}")

    def to_torch(name, a):
        if name.endswith(".w"):  # linear weights: [in, out] -> [out, in]
            a = a.T
        return torch.nn.Parameter(torch.tensor(np.ascontiguousarray(a)))

    tp = {k: to_torch(k, v) for k, v in params.items()}
    h, c = cfg.n_head, cfg.n_embd

    def forward(idx):  # idx: long [B, T] -> logits [B, T, V]
        b, t = idx.shape
        x = F.embedding(idx, tp["wte"]) + tp["wpe"][:t]
        for i in range(cfg.n_layer):
            p = f"blocks.{i}."
            a = F.layer_norm(x, (c,), tp[p + "ln1.g"], tp[p + "ln1.b"])
            qkv = F.linear(a, tp[p + "attn.qkv.w"], tp[p + "attn.qkv.b"])
            q, k, v = (z.view(b, t, h, c // h).transpose(1, 2) for z in qkv.split(c, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=cfg.causal)
            y = y.transpose(1, 2).reshape(b, t, c)
            x = x + F.linear(y, tp[p + "attn.proj.w"], tp[p + "attn.proj.b"])
            m = F.layer_norm(x, (c,), tp[p + "ln2.g"], tp[p + "ln2.b"])
            m = F.gelu(F.linear(m, tp[p + "mlp.fc.w"], tp[p + "mlp.fc.b"]), approximate=cfg.gelu)
            x = x + F.linear(m, tp[p + "mlp.proj.w"], tp[p + "mlp.proj.b"])
        x = F.layer_norm(x, (c,), tp["ln_f.g"], tp["ln_f.b"])
        return F.linear(x, tp["head.w"])

    return tp, forward


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
            tp, tforward = torch_twin(params, cfg)
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
