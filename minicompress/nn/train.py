"""The training loop: random batches, AdamW, warmup + cosine schedule, clipping, periodic
validation, atomic checkpoints, a progress bar with the loss and tokens per second."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from minicompress.data.corpus import TextDataset, eval_windows, get_batch
from minicompress.nn.checkpoint import save_checkpoint
from minicompress.nn.model import DENSE, TransformerConfig, forward, loss_and_grads
from minicompress.nn.ops import cross_entropy_forward
from minicompress.nn.optim import AdamW, clip_grad_norm, lr_at
from minicompress.platform import tune_allocator


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults train the demo's teacher (the default ``TransformerConfig``) to a
    validation perplexity below 3.6 on the built-in corpus in under 5 minutes on 2 cores."""

    batch_size: int = 16  # B: sequences per step
    steps: int = 1400  # optimizer steps (ignored when ``minutes`` is set)
    minutes: float | None = None  # train for this long instead; the schedule follows the clock
    lr: float = 6e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup: int = 100  # steps of linear warmup
    weight_decay: float = 0.1  # decoupled, on matrices only
    grad_clip: float = 1.0  # global gradient-norm limit
    eval_every: int = 250  # validate every this many steps (0: only at the end)
    eval_windows: int = 64  # validation windows used by the periodic checks (all at the end)
    seed: int = 0  # seeds the batches, as the stream default_rng([seed, 1])

    def __post_init__(self):
        for name in ("batch_size", "steps", "warmup"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < (0 if name == "warmup" else 1):
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0; got {self.minutes}")
        if not self.lr > 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(
                f"need 0 <= min_lr <= lr and lr > 0; got lr={self.lr}, min_lr={self.min_lr}"
            )


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_second: float = 0.0


def evaluate(
    params,
    cfg: TransformerConfig,
    ids: np.ndarray,
    max_windows: int | None = None,
    batch_size: int = 32,
    linear=DENSE,
) -> float:
    """Mean cross-entropy (nats per token) over the non-overlapping windows of ``ids``."""
    x, y = eval_windows(ids, cfg.block_size)
    if max_windows is not None:
        x, y = x[:max_windows], y[:max_windows]
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits, _ = forward(params, x[i : i + batch_size], cfg, linear)
        loss, _ = cross_entropy_forward(logits, y[i : i + batch_size])
        total += float(loss) * y[i : i + batch_size].size
        count += y[i : i + batch_size].size
    return total / count


def train(
    params: dict,
    cfg: TransformerConfig,
    data: TextDataset,
    tc: TrainConfig,
    out_dir: str | Path | None = None,
    progress: bool = True,
    linear=DENSE,
) -> History:
    """Train ``params`` in place; save the last checkpoint to ``out_dir`` (if given)."""
    from tqdm.auto import tqdm

    tune_allocator()
    rng = np.random.default_rng([tc.seed, 1])  # [seed, 0] is the parameters' stream
    opt = AdamW(lr=tc.lr, weight_decay=tc.weight_decay)
    hist = History()
    tokens = tc.batch_size * cfg.block_size
    budget = None if tc.minutes is None else tc.minutes * 60.0
    bar = tqdm(
        total=tc.steps if budget is None else int(budget),
        disable=not progress,
        unit="step" if budget is None else "s",
        dynamic_ncols=True,
        mininterval=0.5,
    )
    start = time.perf_counter()
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        if (budget is None and step >= tc.steps) or (budget is not None and elapsed >= budget):
            break
        if budget is None:
            lr = lr_at(step, tc.steps, tc.lr, tc.warmup, tc.min_lr)
        else:  # the clock stands in for the step count: the cosine spans the time budget
            t = step if step < tc.warmup else tc.warmup + 1000 * elapsed / budget
            lr = lr_at(t, tc.warmup + 1000, tc.lr, tc.warmup, tc.min_lr)
        x, y = get_batch(data.train, tc.batch_size, cfg.block_size, rng)
        loss, grads = loss_and_grads(params, x, y, cfg, linear)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step}: loss {loss}; lower lr")
        clip_grad_norm(grads, tc.grad_clip)
        opt.step(params, grads, lr)
        step += 1
        hist.steps.append(step)
        hist.loss.append(loss)
        if tc.eval_every and step % tc.eval_every == 0:
            hist.val_steps.append(step)
            hist.val_loss.append(evaluate(params, cfg, data.val, tc.eval_windows))
        now = time.perf_counter() - start
        bar.set_postfix(
            loss=f"{loss:.3f}",
            lr=f"{lr:.1e}",
            val=f"{hist.val_loss[-1]:.3f}" if hist.val_loss else "-",
            tok_s=f"{step * tokens / now:,.0f}",
            refresh=False,  # the bar redraws at most every mininterval, not every step
        )
        bar.update(1 if budget is None else int(now) - bar.n)
    bar.close()
    hist.seconds = time.perf_counter() - start
    hist.tokens_per_second = step * tokens / max(hist.seconds, 1e-9)
    final = evaluate(params, cfg, data.val)  # every validation window, not a sample
    if hist.val_steps and hist.val_steps[-1] == step:
        hist.val_loss[-1] = final
    else:
        hist.val_steps.append(step)
        hist.val_loss.append(final)
    if out_dir is not None:
        meta = {
            "train": asdict(tc),
            "steps": step,
            "seconds": hist.seconds,
            "val_loss": hist.val_loss[-1],
        }
        save_checkpoint(out_dir, params, cfg, data.tokenizer.chars, meta)
    return hist
