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
# # 11 — Structured pruning: removing heads and neurons for real
#
# Unstructured pruning (chapter 10) leaves a matrix of the same shape with scattered zeros:
# it needs a sparse format and a high sparsity before it pays. Structured pruning (course
# 3.3.1) removes whole **attention heads**, **MLP neurons** or **layers**: the matrices get
# smaller, and the ordinary dense kernels get faster at once. Two ways to choose what goes:
#
# - **by importance**: score each group by the $L_1$ norm, the $L_2$ norm or the mean
#   $|w|$ of the weights that belong to it, and drop the lowest;
# - **by regularization**: train with $\mathcal{L} = \mathcal{L}_0 + \lambda\|\mathbf{w}\|_p$
#   (here group lasso, $\sum_g \|\mathbf{w}_g\|_2$), which drives whole groups to zero, then
#   remove the zero groups.
#
# With `MINICOMPRESS_FAST=1` the model is tiny and trains a few dozen steps (well under a
# minute); without it a small model trains for a few minutes.
# Open as a notebook: `jupytext --to notebook tutorials/11_structured_pruning.py`.

# %%
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt
import numba
import numpy as np
from threadpoolctl import threadpool_limits

from minicompress.data import builtin_text, make_dataset
from minicompress.nn.model import (
    TransformerConfig,
    count_params,
    forward,
    init_params,
    layer_shapes,
)
from minicompress.nn.train import TrainConfig, evaluate, train
from minicompress.prune import groups as G
from minicompress.prune.masks import apply_masks
from minicompress.prune.pipeline import PruneConfig, prune_model
from minicompress.prune.regularizers import GroupLasso, ProximalStep
from minicompress.prune.scores import structure_scores
from minicompress.prune.structured import (
    prune_structures,
    remove_structures,
    select_structures,
    structure_masks,
)
from minicompress.report.plots import save_figure
from minicompress.report.prune_experiments import head_importance
from minicompress.report.prune_plots import plot_head_importance
from minicompress.report.table import format_table
from minicompress.report.timing import best_of_rounds

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
# One BLAS thread for the whole chapter: its matrices are small, and on a busy machine
# OpenBLAS's second thread spins waiting for a core (measured: 15x the CPU time in fast mode)
threadpool_limits(limits=1, user_api="blas")
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)

# %% [markdown]
# ## 1. A trained model

# %%
if FAST:
    cfg_kw = dict(n_layer=2, n_head=4, n_embd=32, block_size=32)
    tc = TrainConfig(batch_size=8, steps=60, warmup=6, lr=6e-3, eval_every=0)
    VAL, FT = 24, 10  # validation windows, fine-tuning steps
else:
    cfg_kw = dict(n_layer=2, n_head=4, n_embd=64, block_size=64)
    tc = TrainConfig(batch_size=16, steps=500, warmup=50, lr=6e-3, eval_every=0)
    VAL, FT = None, 100
data = make_dataset(builtin_text(), cfg_kw["block_size"])
cfg = TransformerConfig(vocab_size=data.tokenizer.vocab_size, **cfg_kw)
params = init_params(cfg, np.random.default_rng(0))
train(params, cfg, data, tc, progress=False)
base = evaluate(params, cfg, data.val, VAL)
print(f"trained: val ppl {math.exp(base):.3f}, {count_params(params):,} parameters")

# %% [markdown]
# ## 2. What belongs to a head, and to a neuron
#
# Head $h$ of a block owns its query, key and value columns of `qkv.w` (laid out
# $[3][H][D]$), their biases, and the $D$ rows of `attn.proj.w` its output feeds. Neuron $j$
# of the MLP owns column $j$ of `mlp.fc.w`, its bias, and row $j$ of `mlp.proj.w`.
# `groups.structure_parts` says so once; scores, group lasso and removal all read it.

# %%
for kind in ("heads", "neurons"):
    parts = G.structure_parts(params, cfg, kind, 0)
    rows = G.gather_groups(params, parts)  # [G, entries of one group]
    print(
        f"{kind}: {rows.shape[0]} groups of {rows.shape[1]} entries each, from",
        [(p.name, p.view, p.axis) for p in parts],
    )
d, c = cfg.head_dim, cfg.n_embd
assert G.gather_groups(params, G.structure_parts(params, cfg, "heads", 0)).shape == (
    cfg.n_head,
    3 * c * d + 3 * d + d * c,
)

# %% [markdown]
# ## 3. Which heads matter?
#
# The course's importance scores come from the weights alone. The real importance of a
# head is what the model loses without it: remove each head alone and measure the validation
# loss. The heat maps put the two side by side.

# %%
heads = head_importance(params, cfg, data, eval_windows=16 if FAST else 64)
print("figure:", plot_head_importance(heads, FIGURES / "11_head_importance.png"))
print(f"correlation between the L2 score and the loss increase: {heads['corr_l2_delta']:.2f}")
for crit in ("l1", "l2", "mean_abs"):
    print(crit, np.round(np.stack(structure_scores(params, cfg, "heads", crit)), 3).tolist())

# %% [markdown]
# ## 4. Remove 25% of the heads by importance: the matrices shrink
#
# `select_structures` drops the lowest-scoring quarter of the heads of each block (local) or
# of the model (global). The masked model — those heads' weights set to zero in the
# full-size arrays — and the physically smaller model compute the same outputs: a zero head
# attends uniformly to zero values, and its projection rows are zero.

# %%
scores = structure_scores(params, cfg, "heads", "l2")
keep = select_structures(scores, 0.25, "heads", "local")
small, small_cfg = remove_structures(params, cfg, "heads", keep)
masked = apply_masks(params, structure_masks(params, cfg, "heads", keep))
idx = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, cfg.block_size))
y_small, _ = forward(small, idx, small_cfg)
y_masked, _ = forward(masked, idx, cfg)
assert np.allclose(y_small, y_masked, rtol=1e-5, atol=1e-5)
print("heads per block:", [s.n_head for s in layer_shapes(small, small_cfg)])
print(
    "qkv.w of block 0:",
    params["blocks.0.attn.qkv.w"].shape,
    "->",
    small["blocks.0.attn.qkv.w"].shape,
)
print(f"parameters {count_params(params):,} -> {count_params(small):,}")
assert count_params(small) < count_params(params)

# %% [markdown]
# Then fine-tune the smaller model, and compare with the same fine-tune of the unpruned one.

# %%
table = []
for kw in (
    dict(method="heads", sparsity=0.25, scope="local"),
    dict(method="heads", sparsity=0.25, scope="global"),
    dict(method="neurons", sparsity=0.5, scope="local"),
    dict(method="layers", sparsity=0.5),
):
    m = prune_model(
        params, cfg, data, PruneConfig(**kw, finetune_steps=FT, eval_windows=VAL), progress=False
    ).metrics
    table.append(
        {
            "removed": f"{kw['sparsity']:.0%} {kw['method']} ({kw.get('scope', '-')})",
            "params": m["params"],
            "one-shot + FT ppl": m["val_ppl"],
            "control ppl": m["control_val_ppl"],
            "vs control": m["delta_vs_control"],
        }
    )
print(format_table(table, floatfmt=".4g"))
heads_row = table[0]
assert heads_row["params"] < count_params(params)

# %% [markdown]
# ## 5. Group lasso: let training choose
#
# The penalty $\lambda\sum_g\|\mathbf{w}_g\|_2$ has a proximal operator that sets a whole
# group to exactly zero once its norm falls below a threshold $\tau$:
# $$\mathrm{prox}(\mathbf{w}_g) = \mathbf{w}_g\max\left(0,\ 1 - \tau/\|\mathbf{w}_g\|_2\right).$$
# After every optimizer step the after-step hook applies it (`ProximalStep`). With plain
# gradient descent $\tau = \eta_t\lambda$; AdamW divides each coordinate's step by
# $D = \sqrt{\hat v} + \epsilon$, so the matching threshold is $\eta_t\lambda / \bar D_g$
# (the group's mean $D$). A group then dies when the norm of its loss gradient stays below
# $\lambda$ — that is how $\lambda$ reads. The neurons whose norm reaches zero are removed,
# and removing them changes nothing.

# %%
# the norm of a group's loss gradient below which it dies (tried: the full-mode model loses
# every neuron of its second block from 0.001 on, the fast one most neurons from 0.01 on)
lam = 0.003 if FAST else 0.0003
work = {k: v.copy() for k, v in params.items()}
ft = TrainConfig(
    batch_size=tc.batch_size, steps=3 * FT, lr=3e-3, min_lr=3e-4, warmup=2, eval_every=0
)
penalty = GroupLasso(cfg, ("neurons",), lam)
norms = []


def record(step, p, grads, opt):
    rows = G.gather_groups(p, G.structure_parts(p, cfg, "neurons", 0))
    norms.append(np.linalg.norm(rows, axis=1))


prox = ProximalStep(penalty)


def after_step(step, p, grads, opt):
    prox(step, p, grads, opt)
    record(step, p, grads, opt)


train(work, cfg, data, ft, after_step=after_step, progress=False)
norms = np.array(norms)  # [steps, F]
alive = [
    G.gather_groups(work, G.structure_parts(work, cfg, "neurons", i)).any(axis=1)
    for i in range(cfg.n_layer)
]
print("neurons left per block:", [int(a.sum()) for a in alive], "of", cfg.mlp_ratio * cfg.n_embd)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(norms, lw=0.6)
ax.set_xlabel("step")
ax.set_ylabel("$\\|w_g\\|_2$ of each neuron, block 0")
ax.set_title(f"group lasso, lambda = {lam}: groups reach exactly 0")
save_figure(fig, FIGURES / "11_group_lasso_norms.png", dpi=110)
assert (norms[-1] == 0).any(), "no neuron reached zero: raise lambda"
shrunk, shrunk_cfg = remove_structures(work, cfg, "neurons", alive)
y_full, _ = forward(work, idx, cfg)
y_shrunk, _ = forward(shrunk, idx, shrunk_cfg)
assert np.allclose(y_full, y_shrunk, rtol=1e-5, atol=1e-5)  # the zero groups did nothing
print(
    f"after group lasso: val ppl {math.exp(evaluate(shrunk, shrunk_cfg, data.val, VAL)):.3f}, "
    f"{count_params(work):,} -> {count_params(shrunk):,} parameters"
)

# %% [markdown]
# ## 6. The real speed-up
#
# A shrunk model runs on the same dense kernels, with smaller matrices: no sparse format
# needed. Timed in alternation in one process, one thread.

# %%
numba.set_num_threads(1)
half_neurons, half_cfg, _ = prune_structures(params, cfg, "neurons", 0.5)
half_heads, hh_cfg, _ = prune_structures(params, cfg, "heads", 0.5)
x = np.random.default_rng(2).integers(0, cfg.vocab_size, (8, cfg.block_size))
with threadpool_limits(limits=1, user_api="blas"):
    t = best_of_rounds(
        {
            "full": lambda: forward(params, x, cfg),
            "50% neurons removed": lambda: forward(half_neurons, x, half_cfg),
            "50% heads removed": lambda: forward(half_heads, x, hh_cfg),
        },
        rounds=2,
        repeat=3 if FAST else 10,
    )
print(format_table([{"model": k, "ms": v, "speed-up": t["full"] / v} for k, v in t.items()]))

# %% [markdown]
# ## What to remember
# - A structure is removed only when all of it goes: its columns, its bias and the rows it
#   feeds. The shrunk model then equals the masked one, and needs no special kernel.
# - Weight norms are a cheap guess at importance; measuring the loss without each head shows
#   where the guess is wrong. Local selection (a share of every block) and global selection
#   (one ranking across blocks, which compares norms of different layers) choose different
#   heads: which one loses less depends on the model — measure both.
# - Group lasso trains the choice into the model: whole groups reach exactly zero through
#   the proximal step, and removing them costs nothing more.
