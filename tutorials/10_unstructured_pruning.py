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
# # 10 — Unstructured pruning: which single weights can go?
#
# The course (3.3.2) gives two criteria for removing single weights:
#
# - **magnitude**: sort the weights by $|w|$ and drop the smallest $s \times 100\%$;
# - **gradient**: compute $\partial\mathcal{L}/\partial w_{ij}$ and drop the weights whose
#   gradient is smallest in absolute value.
#
# This chapter implements both with the package (`minicompress.prune`), adds the two scores
# the literature compares them with — Taylor $|w\,\partial\mathcal{L}/\partial w|$ and random —
# and measures on a trained model: how much each criterion costs at each sparsity, one-shot
# and after fine-tuning; how masks survive fine-tuning; Zhu & Gupta's gradual schedule; the
# 2:4 pattern; and, with CSR (chapter 08), when the zeros make the model faster.
#
# With `MINICOMPRESS_FAST=1` the model is tiny and trains a few dozen steps (well under a
# minute); without it a small model trains for a few minutes and every curve is measured on
# the whole validation set.
# Open as a notebook: `jupytext --to notebook tutorials/10_unstructured_pruning.py`.

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
from minicompress.data.corpus import lm_batch
from minicompress.nn.model import TransformerConfig, forward, init_params
from minicompress.nn.train import TrainConfig, evaluate, train
from minicompress.prune.masks import (
    apply_masks,
    global_masks,
    local_masks,
    nm_mask,
    smallest_mask,
    sparsity_of,
)
from minicompress.prune.pipeline import PruneConfig, prunable_names, prune_model
from minicompress.prune.schedules import Cubic, cubic_sparsity
from minicompress.prune.scores import (
    gradient_scores,
    magnitude_scores,
    mean_gradients,
    taylor_scores,
)
from minicompress.prune.sparse import SPARSE, pack_sparse, sparse_layers
from minicompress.report.plots import save_figure
from minicompress.report.prune_plots import plot_sweep
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
# ## 1. A trained model to prune
#
# Pruning a model that learned nothing tells nothing, so we train one first (chapter 03).

# %%
if FAST:
    cfg_kw = dict(n_layer=2, n_head=4, n_embd=32, block_size=32)
    tc = TrainConfig(batch_size=8, steps=60, warmup=6, lr=6e-3, eval_every=0)
    VAL = 24  # validation windows measured
    FT = 10  # fine-tuning steps
else:
    cfg_kw = dict(n_layer=2, n_head=4, n_embd=64, block_size=64)
    tc = TrainConfig(batch_size=16, steps=500, warmup=50, lr=6e-3, eval_every=0)
    VAL = None  # all of them
    FT = 100
data = make_dataset(builtin_text(), cfg_kw["block_size"])
cfg = TransformerConfig(vocab_size=data.tokenizer.vocab_size, **cfg_kw)
params = init_params(cfg, np.random.default_rng(0))
train(params, cfg, data, tc, progress=False)
base = evaluate(params, cfg, data.val, VAL)
names = prunable_names(cfg)  # the block linear weights: what unstructured pruning acts on
print(f"trained: val ppl {math.exp(base):.3f}; prunable weights: {names}")

# %% [markdown]
# ## 2. The two criteria on numbers you can check
#
# A score per weight; the mask keeps the largest scores. Exactly $\mathrm{round}(s\,n)$
# weights are pruned, and ties go to the lower index, so the mask is reproducible.

# %%
w = np.array([[0.9, -0.1, 0.4], [-0.05, 0.7, -0.3]], dtype=np.float32)
g = np.array([[0.01, 0.8, -0.02], [0.5, -0.03, 0.0]], dtype=np.float32)
for label, scores in [
    ("magnitude |w|", magnitude_scores(w)),
    ("gradient |dL/dw|", gradient_scores(g)),
    ("Taylor |w dL/dw|", taylor_scores(w, g)),
]:
    keep = smallest_mask(scores, 0.5)
    print(f"{label:18s} keeps\n{keep.astype(int)}")
    assert (~keep).sum() == 3
assert smallest_mask(magnitude_scores(w), 0.5).tolist() == [
    [True, False, True],
    [False, True, False],
]
# the gradient criterion keeps two weights that magnitude drops (-0.1 and -0.05): the two
# criteria agree on one weight of three
assert smallest_mask(gradient_scores(g), 0.5).tolist() == [
    [False, True, False],
    [True, True, False],
]

# %% [markdown]
# The gradient of a *trained* model is small everywhere (it sits near a minimum) and each
# batch's gradient is mostly noise. `mean_gradients` averages $\partial\mathcal{L}/\partial w$
# over calibration batches — the gradient of the loss on more data — before scoring.

# %%
calib = [lm_batch(data.train, 8, cfg.block_size, np.random.default_rng([0, i])) for i in range(4)]
g_mean = mean_gradients(params, cfg, calib, names)
one = mean_gradients(params, cfg, calib[:1], names)
n0 = names[0]
print(
    f"{n0}: mean |w| {np.abs(params[n0]).mean():.3g}, mean |dL/dw| over 4 batches "
    f"{np.abs(g_mean[n0]).mean():.3g}, over 1 batch {np.abs(one[n0]).mean():.3g}"
)
assert np.abs(g_mean[n0]).mean() < np.abs(one[n0]).mean()  # averaging cancels the noise

# %% [markdown]
#
# ## 3. Local and global masks
#
# *Local*: the same sparsity in every tensor. *Global*: one threshold over all of them
# (`torch.nn.utils.prune.global_unstructured`): layers with smaller weights lose more.

# %%
scores = {n: magnitude_scores(params[n]) for n in names}
local, glob = local_masks(scores, 0.7), global_masks(scores, 0.7)
rows = [
    {
        "weight": n,
        "shape": str(params[n].shape),
        "local": 1 - local[n].mean(),
        "global": 1 - glob[n].mean(),
    }
    for n in names
]
print(format_table(rows))
assert abs(sparsity_of(local) - 0.7) < 1e-3 and abs(sparsity_of(glob) - 0.7) < 1e-3
assert max(r["global"] for r in rows) - min(r["global"] for r in rows) > 0.05  # uneven

# %% [markdown]
# ## 4. The sparsity sweep
#
# Each criterion at several sparsities, once right after pruning (one-shot, dashed) and once
# after fine-tuning with the masks held (solid). Fine-tuning uses $\eta = 10^{-3}$, and a
# fine-tuned pruned model is compared with the **same fine-tune of the unpruned model**:
# otherwise the fine-tune's own gain would be credited to pruning.

# %%
sparsities = (0.0, 0.5, 0.8, 0.9) if FAST else (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
ctl_model = {k: v.copy() for k, v in params.items()}
train(
    ctl_model,
    cfg,
    data,
    PruneConfig("magnitude", 0.0, finetune_steps=FT).train_config(),
    progress=False,
)
ctl = evaluate(ctl_model, cfg, data.val, VAL)
sweep = []
for method in ("magnitude", "gradient", "taylor", "random"):
    for s in sparsities:
        for steps in (0, FT):
            pc = PruneConfig(
                method, s, scope="global", finetune_steps=steps, eval_windows=VAL, calib_batches=4
            )
            m = prune_model(
                params, cfg, data, pc, progress=False, baseline_loss=base, control_loss=ctl
            ).metrics
            ref = base if steps == 0 else ctl
            sweep.append(
                {
                    "method": method,
                    "sparsity": m["sparsity"],
                    "finetune_steps": steps,
                    "val_ppl": m["val_ppl"],
                    "reference_ppl": math.exp(ref),
                    "delta_vs_reference": math.exp(m["val_loss"] - ref) - 1,
                }
            )
print(format_table(sweep, floatfmt=".4g"))
print("figure:", plot_sweep(sweep, FIGURES / "10_sparsity_sweep.png"))


def ppl(method, s, steps):
    return next(
        r["val_ppl"]
        for r in sweep
        if (r["method"], r["finetune_steps"]) == (method, steps) and abs(r["sparsity"] - s) < 0.01
    )


# what the sweep shows: magnitude beats random at high sparsity, and fine-tuning recovers
assert ppl("magnitude", 0.8, 0) < ppl("random", 0.8, 0)
assert ppl("magnitude", 0.8, FT) < ppl("magnitude", 0.8, 0)

# %% [markdown]
# ## 5. Masks hold through fine-tuning
#
# After each AdamW step the after-step hook (`masks.HoldMasks`, inside `GradualPruner`) puts
# every pruned weight back to exactly zero and clears its moments $m, v$, so nothing
# accumulated before pruning pushes it out again.

# %%
r = prune_model(
    params,
    cfg,
    data,
    PruneConfig("magnitude", 0.5, finetune_steps=FT, eval_windows=VAL, control=False),
    progress=False,
)
zeros = sum(int((r.params[n] == 0).sum()) for n in names)
total = sum(r.params[n].size for n in names)
print(f"after {FT} fine-tuning steps: {zeros} of {total} block weights exactly zero")
assert zeros == sum(round(0.5 * r.params[n].size) for n in names)

# %% [markdown]
# ## 6. Gradual pruning: Zhu & Gupta's cubic schedule
#
# $$s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3$$
# prunes fast while there are many redundant weights, then slowly, with fine-tuning in
# between. Same number of steps, same final sparsity: one-shot against cubic.

# %%
sched = Cubic(0.9, 0.0, start=0, n=10, dt=max(1, FT * 2 // 30))
t = np.arange(0, sched.end + 2)
s_t = [sched.sparsity_at(int(i)) for i in t]
assert math.isclose(cubic_sparsity(sched.end, 0.0, 0.9, 0, 10, sched.dt), 0.9)
results = {}
for schedule in ("oneshot", "cubic"):
    pc = PruneConfig(
        "magnitude",
        0.9,
        scope="global",
        schedule=schedule,
        finetune_steps=3 * FT,
        eval_windows=VAL,
        control=False,
    )
    results[schedule] = prune_model(params, cfg, data, pc, progress=False).metrics
    print(f"{schedule:8s} 90%: val ppl {results[schedule]['val_ppl']:.3f}")
fig, ax = plt.subplots(figsize=(5, 3))
ax.step(t, s_t, where="post")
ax.set_xlabel("step t")
ax.set_ylabel("sparsity $s_t$")
ax.set_title("cubic schedule, $s_f$ = 0.9, n = 10")
ax.grid(alpha=0.3)
save_figure(fig, FIGURES / "10_cubic_schedule.png", dpi=110)
if not FAST:  # with enough steps, gradual pruning recovers better than one cut
    assert results["cubic"]["val_ppl"] < results["oneshot"]["val_ppl"]

# %% [markdown]
# ## 7. 2:4 sparsity
#
# In every run of 4 consecutive input weights of an output, keep the 2 largest: exactly 50%,
# in a pattern that sparse tensor cores (and in principle SIMD code) can exploit.

# %%
mask24 = nm_mask(magnitude_scores(params[names[0]]), 2, 4)
runs = mask24.reshape(-1, 4, mask24.shape[1]).sum(axis=1)
assert (runs == 2).all()
r24 = prune_model(
    params, cfg, data, PruneConfig("magnitude", nm="2:4", eval_windows=VAL), progress=False
)
r50 = prune_model(
    params, cfg, data, PruneConfig("magnitude", 0.5, eval_windows=VAL), progress=False
)
print(
    f"one-shot, no fine-tune: 2:4 ppl {r24.metrics['val_ppl']:.3f}, "
    f"unstructured 50% (per tensor) ppl {r50.metrics['val_ppl']:.3f}"
)
# every 2:4 mask is a 50% mask, so the best 50% mask by |w| prunes weights no larger in
# total: the 2:4 constraint can only cost, not save, magnitude
kept = lambda p: sum(float(np.abs(p[n]).sum()) for n in names)  # noqa: E731
assert kept(r24.params) <= kept(r50.params) + 1e-3

# %% [markdown]
# ## 8. CSR: when the zeros pay
#
# Chapter 08 measured the break-even sparsity of one layer. Here the whole pruned model runs
# on the CSR kernels through the `linear` contract (`prune.sparse.SPARSE`): `pack_sparse`
# stores every block weight above the break-even sparsity as CSR and leaves the others dense.
# The output is the masked model's, to float rounding; the time depends on the sparsity.

# %%
numba.set_num_threads(1)
idx = np.random.default_rng(1).integers(0, cfg.vocab_size, (4, cfg.block_size))
rows = []
with threadpool_limits(limits=1, user_api="blas"):
    for s in (0.5, 0.8, 0.95):
        masked = apply_masks(
            params, global_masks({n: magnitude_scores(params[n]) for n in names}, s)
        )
        runtime = pack_sparse(masked, cfg, min_sparsity=0.0)  # every layer on CSR, to compare
        y_dense, _ = forward(masked, idx, cfg)
        y_csr, _ = forward(runtime, idx, cfg, SPARSE)
        assert np.allclose(y_dense, y_csr, rtol=1e-4, atol=1e-4)
        t = best_of_rounds(
            {
                "dense": lambda m=masked: forward(m, idx, cfg),
                "csr": lambda r=runtime: forward(r, idx, cfg, SPARSE),
            },
            rounds=2,
            repeat=3 if FAST else 10,
        )
        rows.append(
            {
                "sparsity": s,
                "csr layers": len(sparse_layers(runtime)),
                "dense ms": t["dense"],
                "CSR ms": t["csr"],
                "speed-up": t["dense"] / t["csr"],
            }
        )
print(format_table(rows))
print(
    "(one run on this machine; `python -m minicompress.report.bench_prune` measures the "
    "break-even per layer shape)"
)

# %% [markdown]
# ## What to remember
# - Magnitude and gradient are the course's two criteria; on a trained model the mean
#   gradient is small and noisy, so $|\partial\mathcal{L}/\partial w|$ alone ranks weights
#   poorly — weighting it by $|w|$ (Taylor) fixes much of that; random is the floor.
# - Fine-tuning with the masks held recovers most of the loss; compare against the same
#   fine-tune of the unpruned model.
# - Gradual (cubic) pruning beats one cut at high sparsity with the same budget.
# - Zeros pay off only in a sparse format, and only beyond the break-even sparsity.
