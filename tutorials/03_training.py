# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 — Training a small character model
#
# Compression needs something to compress: a trained model (the *teacher* of the later
# chapters). This chapter trains one on the built-in corpus with the package's training loop,
# `minicompress.nn.train.train`, and looks at each of its parts: the data split and the
# batches, one optimizer step by hand, the learning-rate schedule, the loss curve, and a
# sample of generated text.
#
# With `MINICOMPRESS_FAST=1` a tiny model trains for 30 steps (seconds); without it, a small
# model trains for a few hundred steps (about a minute or two on a laptop).
# Open as a notebook: `jupytext --to notebook tutorials/03_training.py`.

# %%
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt
import numpy as np

from minicompress.data import builtin_text, get_batch, make_dataset
from minicompress.nn import model
from minicompress.nn.optim import AdamW, clip_grad_norm, global_grad_norm, lr_at
from minicompress.nn.train import TrainConfig, evaluate, next_token_loss, train
from minicompress.prune.masks import HoldMasks
from minicompress.prune.regularizers import L1Penalty, RegularizedLoss
from minicompress.report.plots import plot_loss_curve, save_figure

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
# next to this file; in a notebook (no __file__), next to the notebook
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)

# %% [markdown]
# ## 1. The model and the data
#
# `make_dataset` tokenizes the text by character and splits it **without shuffling**: the
# first 90% trains, the last 10% validates, so no validation window overlaps a training one.

# %%
if FAST:  # a tiny model: one block of width 32
    cfg_kw = dict(n_layer=1, n_head=4, n_embd=32, block_size=32)
    tc = TrainConfig(batch_size=8, steps=30, warmup=5, lr=3e-3, eval_every=10, eval_windows=16)
else:  # a small model: two blocks of width 64
    cfg_kw = dict(n_layer=2, n_head=4, n_embd=64, block_size=64)
    tc = TrainConfig(batch_size=16, steps=400, warmup=40, lr=3e-3, eval_every=50, eval_windows=32)
VAL_WINDOWS = 128 if FAST else None  # windows for our own before/after check (None: all)

text = builtin_text()
data = make_dataset(text, cfg_kw["block_size"])
cfg = model.TransformerConfig(vocab_size=data.tokenizer.vocab_size, **cfg_kw)
params = model.init_params(cfg, np.random.default_rng([tc.seed, 0]))
print(f"corpus {len(text):,} characters -> train {len(data.train):,}, val {len(data.val):,}")
print(
    f"model: {model.count_params(params):,} parameters, {cfg.n_layer} blocks, width "
    f"{cfg.n_embd}, context {cfg.block_size}"
)
assert len(data.train) + len(data.val) == len(text)

# %% [markdown]
# A batch is $B$ random windows of length $T$; the target of each position is the next
# character, so `y` is `x` shifted by one: $x = \mathrm{ids}[s : s+T]$,
# $y = \mathrm{ids}[s+1 : s+T+1]$. The window starts come from an explicit generator, so
# the same seed gives the same batches.

# %%
rng = np.random.default_rng(0)
x, y = get_batch(data.train, tc.batch_size, cfg.block_size, rng)  # [B, T], [B, T]
print("x:", x.shape, " y:", y.shape)
print("x[0]:", repr(data.tokenizer.decode(x[0])))
print("y[0]:", repr(data.tokenizer.decode(y[0])))
assert np.array_equal(x[:, 1:], y[:, :-1])  # y is x shifted left by one
x2, _ = get_batch(data.train, tc.batch_size, cfg.block_size, np.random.default_rng(0))
assert np.array_equal(x, x2)  # same seed, same batch

# %% [markdown]
# ## 2. One step by hand
#
# Before training, the model predicts every character with probability about $1/V$: its
# loss is $\log V$ nats per character (perplexity $e^{L} \approx V$). One step of the loop is:
# loss and gradients (chapter 02), clip the global gradient norm to `grad_clip`, then an
# **AdamW** update (Loshchilov & Hutter 2019). For each parameter $p$ with gradient $g$ at
# step $t$:
# $$p \leftarrow p - \eta\lambda p \quad\text{(decoupled weight decay, matrices only)}$$
# $$m \leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2$$
# $$p \leftarrow p - \eta\,\frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}.$$

# %%
val_before = evaluate(params, cfg, data.val, VAL_WINDOWS)
print(
    f"val loss before training: {val_before:.3f} nats/char (log V = "
    f"{math.log(cfg.vocab_size):.3f}), perplexity {math.exp(val_before):.1f}"
)
assert abs(val_before - math.log(cfg.vocab_size)) < 0.2

trial = {k: a.copy() for k, a in params.items()}  # a copy: the real run starts from params
loss0, grads = model.loss_and_grads(trial, x, y, cfg)
norm = clip_grad_norm(grads, tc.grad_clip)  # in place; returns the norm before clipping
print(
    f"batch loss {loss0:.3f}; gradient norm {norm:.3f} -> {global_grad_norm(grads):.3f} "
    f"after clipping to {tc.grad_clip}"
)
opt = AdamW(lr=tc.lr, weight_decay=tc.weight_decay)
opt.step(trial, grads, lr=tc.lr)
loss1, _ = model.loss_and_grads(trial, x, y, cfg)
print(f"same batch after one AdamW step: {loss0:.3f} -> {loss1:.3f}")
assert loss1 < loss0
assert global_grad_norm(grads) <= tc.grad_clip * (1 + 1e-5)

# %% [markdown]
# ## 3. The learning-rate schedule
#
# A linear **warmup** (Adam's second-moment estimate $v$ is noisy for the first steps, so
# large steps early can throw the model off), then a **cosine decay** to `min_lr`:
# $$\eta_t = \eta \frac{t+1}{t_w} \;\; (t < t_w), \qquad
# \eta_t = \eta_{min} + (\eta - \eta_{min})\,\tfrac12\left(1 + \cos\frac{\pi (t - t_w)}
# {t_{total} - t_w}\right) \;\; (t \ge t_w).$$
# `lr_at` is that formula; `train` calls it at every step. Below: our run's schedule and the
# default teacher's (`TrainConfig()`).

# %%
default = TrainConfig()
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, c, title in [(axes[0], tc, "this run"), (axes[1], default, "default teacher")]:
    steps = np.arange(c.steps)
    lrs = np.array([lr_at(s, c.steps, c.lr, c.warmup, c.min_lr) for s in steps])
    ax.plot(steps, lrs)
    ax.axvline(c.warmup, color="0.6", ls=":", label=f"end of warmup ({c.warmup})")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{title}: {c.steps} steps")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    # the claims of the formula: peak lr at the end of warmup, min_lr at the end
    assert np.isclose(lrs.max(), c.lr) and int(np.argmax(lrs)) in (c.warmup - 1, c.warmup)
    assert np.all(np.diff(lrs[: c.warmup]) > 0) and np.all(np.diff(lrs[c.warmup :]) <= 0)
    assert abs(lr_at(c.steps, c.steps, c.lr, c.warmup, c.min_lr) - c.min_lr) < 1e-12
path = FIGURES / "03_lr_schedule.png"
save_figure(fig, path, dpi=110)
print("figure:", path)

# %% [markdown]
# ## 4. Training
#
# `train` runs the loop of section 2 for `tc.steps` steps with the schedule of section 3,
# validates every `eval_every` steps on `eval_windows` validation windows, and updates
# `params` in place. It returns a `History` (batch losses, validation losses, tokens per
# second). Pass `out_dir=` to also save a checkpoint.

# %%
hist = train(params, cfg, data, tc, progress=not FAST)
val_after = evaluate(params, cfg, data.val, VAL_WINDOWS)  # the same windows as before
print(f"{len(hist.steps)} steps in {hist.seconds:.1f} s ({hist.tokens_per_second:,.0f} tokens/s)")
print(
    f"val loss: {val_before:.3f} -> {val_after:.3f} nats/char; "
    f"perplexity {math.exp(val_before):.1f} -> {math.exp(val_after):.2f}; "
    f"{val_after / math.log(2):.2f} bits/char"
)
assert len(hist.steps) == tc.steps
assert val_after < val_before - 0.5  # the model learned something
first, last = np.mean(hist.loss[:5]), np.mean(hist.loss[-5:])
print(f"batch loss, mean of the first 5 steps {first:.3f}, of the last 5 {last:.3f}")
assert last < first

# %% [markdown]
# The loss curve: batch losses are noisy (each batch is a different handful of windows);
# the validation loss is measured on fixed windows and is smooth. While the two stay close
# the model is not overfitting.

# %%
path = plot_loss_curve(hist, FIGURES / "03_loss_curve.png", title="03: training a small model")
print("figure:", path)

# %% [markdown]
# ## 5. Sampling
#
# `model.generate` feeds the prompt, samples the next character from
# $\mathrm{softmax}(z / \tau)$ restricted to the `top_k` most likely characters, appends it,
# and repeats. A lower temperature $\tau$ makes the text more predictable; $\tau = 0$ is
# greedy. A tiny model writes word-shaped noise; the default teacher writes recognisable
# documentation English with Python keywords.

# %%
prompt = data.tokenizer.encode("The ")
sample = model.generate(
    params, cfg, prompt, 60 if FAST else 200, np.random.default_rng(0), temperature=0.8, top_k=20
)
print(repr(data.tokenizer.decode(sample)))
assert sample.shape == (len(prompt) + (60 if FAST else 200),)
assert data.tokenizer.decode(sample).startswith("The ")

# %% [markdown]
# ## 6. The hooks every compression chapter uses
#
# `train` is the only training loop of the package. A technique changes what happens
# *inside* a step through three arguments, never by copying the loop:
#
# - `loss(params, batch, cfg, linear) -> (loss, grads)`: the default is next-token
#   cross-entropy (`nn.train.next_token_loss`); distillation mixes in the teacher's soft
#   labels, regularized pruning adds a penalty;
# - `after_step(step, params, grads, opt)`: runs after every AdamW step; pruning re-applies
#   its masks there (to the weights *and* to AdamW's moments `opt.m`, `opt.v`, or the next
#   step would revive a pruned weight);
# - `linear`: every linear layer of training *and* validation goes through it
#   (quantization-aware training passes a fake-quantizing one).
#
# Here the pruning chapter's two hooks are used ahead of time: a loss that adds an L1
# penalty $\lambda \lVert w \rVert_1$ on one matrix (its subgradient
# $\lambda\,\mathrm{sign}(w)$ joins the gradients), and an after-step hook that keeps a
# quarter of another matrix at exactly zero.

# %%
LAMBDA, PENALIZED, MASKED = 1e-3, "blocks.0.mlp.fc.w", "blocks.0.attn.proj.w"
# L = CE + lambda * ||w||_1: the default loss wrapped by a penalty
loss_with_penalty = RegularizedLoss(next_token_loss, L1Penalty((PENALIZED,), LAMBDA), "subgradient")
keep = np.random.default_rng(1).random(params[MASKED].shape) > 0.25  # True = kept
# the pruning chapter's hook: after each step, w, AdamW's m and v <- 0 where not kept
keep_mask = HoldMasks({MASKED: keep})
mask = keep.astype(np.float32)
params[MASKED] *= mask
tc_hooks = TrainConfig(steps=20 if FAST else 100, batch_size=8, warmup=5, lr=1e-3, eval_every=0)
norm_before = float(np.linalg.norm(params[PENALIZED]))
hist_hooks = train(
    params, cfg, data, tc_hooks, loss=loss_with_penalty, after_step=keep_mask, progress=False
)
print(f"zeros kept: {int(np.sum(params[MASKED] == 0))} of {int(np.sum(mask == 0))} masked")
print(f"||{PENALIZED}||: {norm_before:.3f} -> {np.linalg.norm(params[PENALIZED]):.3f}")
assert np.all(params[MASKED][mask == 0] == 0)

# %% [markdown]
# ## 7. The same from the command line
#
# The CLI is built from the same `TransformerConfig` and `TrainConfig` dataclasses:
#
# ```bash
# python -m minicompress train --out runs/teacher          # the default teacher
# python -m minicompress train --n-layer 2 --n-embd 64 --block-size 64 --steps 400 --out runs/small
# python -m minicompress eval runs/teacher                 # val loss, perplexity, bits/char
# python -m minicompress generate runs/teacher --prompt "def " --tokens 200 --temperature 0.8
# ```
#
# The default configuration (4 blocks, width 128, context 128, ~0.8M parameters,
# 1500 steps) is the teacher of the compression chapters; its target is a validation
# perplexity of at most 3.6 after about 5 minutes of training on a laptop CPU. Later chapters
# load that checkpoint (or train it with `python -m minicompress demo`).

# %%
print(
    f"this run: val perplexity {math.exp(val_after):.2f} with "
    f"{model.count_params(params):,} parameters and {tc.steps} steps; "
    f"target of the default teacher: <= 3.6"
)

# %% [markdown]
# ## What to remember
# - Split without shuffling; batches are random windows, targets are shifted by one.
# - One step: loss and gradients, clip the global norm, AdamW with decoupled decay.
# - Warmup, then cosine decay: `lr_at` is the schedule, `train` follows it.
# - Judge a model by its validation loss on fixed windows (perplexity $= e^{L}$).
# - Techniques plug into the one loop through `loss`, `after_step` and `linear`.
