"""The training loop — the only one in the package — with a loss hook and an after-step hook.

Every technique trains through ``train``: plain next-token training (the default loss),
quantization-aware training (a fake-quantizing ``linear``), distillation (a loss that runs
the frozen teacher and mixes its soft labels with cross-entropy), regularized pruning (a
loss with a penalty, a proximal ``after_step``) and fine-tuning under a mask (an
``after_step`` that re-applies it). The loop itself does: random batches, AdamW, warmup +
cosine schedule, gradient clipping, periodic validation with the same ``linear`` as
training, an atomic checkpoint at the end, a progress bar with the loss and tokens per
second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from minicompress.data.corpus import Batch, TextDataset, eval_windows, lm_batch
from minicompress.nn.checkpoint import save_checkpoint
from minicompress.nn.linear import DENSE, check_linear
from minicompress.nn.model import TransformerConfig, forward, loss_and_grads
from minicompress.nn.ops import cross_entropy_forward
from minicompress.nn.optim import AdamW, clip_grad_norm, lr_at
from minicompress.platform import tune_allocator

# ----------------------------------------------------------------------------------------
# the hooks
# ----------------------------------------------------------------------------------------


class LossFn(Protocol):
    """The loss of one batch and its gradients (same keys as the parameters).

    A loss with trainable arrays of its own (a distiller's projection from the student's
    width to the teacher's) exposes them as the attribute ``params``; its gradients for them
    come back in the same dict, and the loop updates them with the model's (they are not
    saved in the model's checkpoint).
    """

    def __call__(
        self, params: dict, batch: Batch, cfg: TransformerConfig, linear
    ) -> tuple[float, dict[str, np.ndarray]]: ...


class AfterStep(Protocol):
    """Called after every optimizer step (``step`` counts from 1): re-apply pruning masks
    (AdamW's moments are ``opt.m`` / ``opt.v``, under the parameters' keys), take a
    proximal step (the step's learning rate is ``opt.last_lr``), update quantization
    ranges."""

    def __call__(self, step: int, params: dict, grads: dict, opt: AdamW) -> None: ...


def next_token_loss(params: dict, batch: Batch, cfg: TransformerConfig, linear=DENSE):
    """The default loss: mean cross-entropy of the next token (``model.loss_and_grads``)."""
    if batch.y is None:
        raise ValueError("next_token_loss needs targets (batch.y); this batch has none")
    return loss_and_grads(params, batch.x, batch.y, cfg, linear, pad_mask=batch.pad_mask)


# ----------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------


def _number(name: str, value, integer: bool):
    """A plain int (``integer``) or finite float from ``value``; bools and strings refused."""
    ok = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, ok):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}; got {value!r} ({type(value).__name__})")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults train the demo's teacher (the default
    ``TransformerConfig``) to a validation perplexity below 3.6 on the built-in corpus in
    about 5 minutes on 2 cores. Fine-tuning a compressed model wants ``lr`` about 1e-3."""

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
        minimum = {"batch_size": 1, "steps": 1, "warmup": 0, "eval_every": 0}
        minimum.update({"eval_windows": 1, "seed": 0})
        for name, low in minimum.items():
            value = _number(name, getattr(self, name), integer=True)
            if value < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {value}")
            object.__setattr__(self, name, value)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            object.__setattr__(self, name, _number(name, getattr(self, name), integer=False))
        if self.minutes is not None:
            minutes = _number("minutes", self.minutes, integer=False)
            if not 0 < minutes <= 60 * 24 * 365:
                raise ValueError(f"minutes must lie in (0, 525600]; got {minutes}")
            object.__setattr__(self, "minutes", minutes)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must lie in [0, lr={self.lr}]; got {self.min_lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0; got {self.grad_clip}")


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_second: float = 0.0


# ----------------------------------------------------------------------------------------
# validation and the loop
# ----------------------------------------------------------------------------------------


def evaluate(
    params,
    cfg: TransformerConfig,
    ids: np.ndarray,
    max_windows: int | None = None,
    batch_size: int = 32,
    linear=DENSE,
) -> float:
    """Mean cross-entropy (nats per token) over the non-overlapping windows of ``ids``
    (the first ``max_windows`` of them), with the given ``linear``."""
    x, y = eval_windows(ids, cfg.block_size)
    if max_windows is not None:
        x, y = x[:max_windows], y[:max_windows]
    if len(x) == 0:
        raise ValueError(f"ids has {len(ids)} tokens: not one window of {cfg.block_size} + 1")
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits, _ = forward(params, x[i : i + batch_size], cfg, linear)
        loss, _ = cross_entropy_forward(logits, y[i : i + batch_size])
        total += float(loss) * y[i : i + batch_size].size
        count += y[i : i + batch_size].size
    return total / count


Sampler = Callable[[np.random.Generator, int], Batch]  # (rng, batch_size) -> Batch
Validator = Callable[[dict, object, "int | None"], float]  # (params, linear, windows) -> loss


def _sampler_and_validator(data, cfg, validate) -> tuple[Sampler, Validator | None]:
    if isinstance(data, TextDataset):
        sample = lambda rng, b: lm_batch(data.train, b, cfg.block_size, rng)  # noqa: E731
        if validate is None:
            validate = lambda p, lin, n: evaluate(p, cfg, data.val, n, linear=lin)  # noqa: E731
        return sample, validate
    if callable(data):
        return data, validate
    raise TypeError(
        "data must be a TextDataset or a callable (rng, batch_size) -> Batch; "
        f"got {type(data).__name__}"
    )


def _trainable(params: dict, loss) -> dict:
    """The model's parameters and the loss's own (``loss.params``), under one dict whose
    arrays are the same objects (updated in place)."""
    extra = getattr(loss, "params", None) or {}
    clash = sorted(set(extra) & set(params))
    if clash:
        raise ValueError(f"the loss's own parameters {clash} have the names of model parameters")
    return {**params, **extra}


def train(
    params: dict,
    cfg: TransformerConfig,
    data,
    tc: TrainConfig,
    *,
    loss: LossFn | None = None,
    after_step: AfterStep | None = None,
    linear=DENSE,
    validate: Validator | None = None,
    out_dir: str | Path | None = None,
    vocab: list[str] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> History:
    """Train ``params`` in place; save the last checkpoint to ``out_dir`` (if given).

    data: a ``TextDataset`` (random windows of ``data.train``, validation on ``data.val``)
        or a callable ``(rng, batch_size) -> Batch``;
    loss: ``(params, batch, cfg, linear) -> (loss, grads)``, default ``next_token_loss``;
    after_step: ``(step, params, grads, opt) -> None``, after each AdamW step;
    linear: the linear-layer object of training *and* validation;
    validate: ``(params, linear, max_windows) -> mean loss``; default cross-entropy on
        ``data.val`` for a ``TextDataset``, none otherwise;
    vocab: the tokenizer's symbols for the checkpoint (default ``data.tokenizer.chars``).
    """
    from tqdm.auto import tqdm

    if not isinstance(tc, TrainConfig):
        raise TypeError(f"tc must be a TrainConfig; got {type(tc).__name__}")
    linear = check_linear(linear)
    loss = next_token_loss if loss is None else loss
    sample, validate = _sampler_and_validator(data, cfg, validate)
    if out_dir is not None and vocab is None:
        if not isinstance(data, TextDataset):
            raise ValueError("out_dir needs vocab= when data is not a TextDataset")
        vocab = data.tokenizer.chars
    trainable = _trainable(params, loss)
    tune_allocator()
    rng = np.random.default_rng([tc.seed, 1])  # [seed, 0] is the parameters' stream
    opt = AdamW(lr=tc.lr, weight_decay=tc.weight_decay)
    hist = History()
    budget = None if tc.minutes is None else tc.minutes * 60.0
    bar = tqdm(
        total=tc.steps if budget is None else int(budget),
        disable=not progress,
        desc=desc,
        unit="step" if budget is None else "s",
        dynamic_ncols=True,
        mininterval=0.5,
    )
    start = time.perf_counter()
    step, tokens = 0, 0
    while True:
        elapsed = time.perf_counter() - start
        if (budget is None and step >= tc.steps) or (budget is not None and elapsed >= budget):
            break
        if budget is None:
            lr = lr_at(step, tc.steps, tc.lr, tc.warmup, tc.min_lr)
        else:  # the clock stands in for the step count: the cosine spans the time budget
            t = step if step < tc.warmup else tc.warmup + 1000 * elapsed / budget
            lr = lr_at(t, tc.warmup + 1000, tc.lr, tc.warmup, tc.min_lr)
        batch = sample(rng, tc.batch_size)
        value, grads = loss(params, batch, cfg, linear)
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at step {step}: loss {value}; lower lr")
        clip_grad_norm(grads, tc.grad_clip)
        opt.step(trainable, grads, lr)
        step += 1
        tokens += batch.x.size
        if after_step is not None:
            after_step(step, params, grads, opt)
        hist.steps.append(step)
        hist.loss.append(value)
        if validate is not None and tc.eval_every and step % tc.eval_every == 0:
            hist.val_steps.append(step)
            hist.val_loss.append(validate(params, linear, tc.eval_windows))
        now = time.perf_counter() - start
        bar.set_postfix(
            loss=f"{value:.3f}",
            lr=f"{lr:.1e}",
            val=f"{hist.val_loss[-1]:.3f}" if hist.val_loss else "-",
            tok_s=f"{tokens / now:,.0f}",
            refresh=False,  # the bar redraws at most every mininterval, not every step
        )
        bar.update(1 if budget is None else int(now) - bar.n)
    bar.close()
    hist.seconds = time.perf_counter() - start
    hist.tokens_per_second = tokens / max(hist.seconds, 1e-9)
    if validate is not None:
        final = validate(params, linear, None)  # every validation window, not a sample
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
            "val_loss": hist.val_loss[-1] if hist.val_loss else None,
        }
        save_checkpoint(out_dir, params, cfg, vocab, meta)
    return hist
