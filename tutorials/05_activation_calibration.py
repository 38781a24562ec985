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
# # 05 — Activation quantization: calibration, outliers, and five observers
#
# Weights are known ahead of time; the activations — the inputs of every linear layer —
# exist only while the model runs. The course (3.1.2) quantizes them too, with a range
# gathered "on training or validation data" beforehand (**static**), or the range can be
# taken from each token's own values at run time (**dynamic**, what the int8 kernels do).
#
# This chapter records real activations, shows their outliers, runs the five observers of
# `minicompress.quant.observers` — min-max, moving-average min-max, percentile, MSE-optimal
# clipping, KL/entropy — on them, and measures what each does to the model's perplexity
# (weights at 8 bits per channel, activations at 8 bits per tensor). It ends with the two
# traps that cost other libraries dearly: a $-\infty$ mask inside the calibration data, and
# an entropy calibration that clips the values that matter.
#
# `MINICOMPRESS_FAST=1`: a tiny model, a few batches (seconds). Otherwise the default
# teacher if `MINICOMPRESS_TEACHER` names it, else a small model trained here.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt
import numpy as np

from minicompress.data import CharTokenizer, builtin_text, make_dataset
from minicompress.nn.checkpoint import load_checkpoint
from minicompress.nn.model import TransformerConfig, forward, init_params
from minicompress.nn.train import TrainConfig, train
from minicompress.quant import observers as O
from minicompress.quant import ptq
from minicompress.quant.calibrate import (
    calibrate,
    calibration_batches,
    record_inputs,
    static_qparams,
)
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.tensor import QuantSpec, error_split, fake_quantize_tensor
from minicompress.report.plots import save_figure
from minicompress.report.quant_plots import plot_activation_ranges
from minicompress.report.table import format_table

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)

teacher = os.environ.get("MINICOMPRESS_TEACHER")
if teacher and not FAST:  # the default teacher: python -m minicompress train --out DIR
    params, cfg, vocab, _ = load_checkpoint(teacher)
    data = make_dataset(builtin_text(), cfg.block_size, tokenizer=CharTokenizer(vocab))
else:  # a small model trained here (a tiny one in fast mode)
    block, width = (32, 32) if FAST else (64, 64)
    data = make_dataset(builtin_text()[: 120_000 if FAST else None], block)
    cfg = TransformerConfig(data.tokenizer.vocab_size, block, n_layer=2, n_head=2, n_embd=width)
    params = init_params(cfg, np.random.default_rng(0))
    tc = TrainConfig(batch_size=16, steps=120 if FAST else 600, lr=1e-2, warmup=20, eval_every=0)
    train(params, cfg, data, tc, progress=not FAST)
WINDOWS = 32 if FAST else None  # validation windows per perplexity (None: all)
# weights at 8 bits per channel (tutorial 04): what is measured below is the activations
W8 = ptq.dequantized_params(
    params, ptq.quantize_weights(params, cfg, QuantSpec(8, "symmetric", "channel"))
)
base = ptq.perplexity(params, cfg, data.val, max_windows=WINDOWS)
w8 = ptq.perplexity(W8, cfg, data.val, max_windows=WINDOWS)
print(f"validation perplexity: float {base:.4f}, weights at 8 bits {w8:.4f}")

# %% [markdown]
# ## 1. What the linear layers see
#
# `ObservingLinear` is a `linear` object (the model's extension point) that shows each
# layer's input to an observer before running the layer; `record_inputs` uses it with an
# observer that just keeps the values, to look at them.

# %%
rng = np.random.default_rng(0)
batches = calibration_batches(data.train, 4 if FAST else 8, 16, cfg.block_size, rng)
acts = record_inputs(W8, cfg, batches)  # {layer: [tokens, K]}
rows = []
for n, a in acts.items():
    per_channel = np.abs(a).max(axis=0)  # [K]
    kurtosis = float(np.mean((a - a.mean()) ** 4) / a.var() ** 2)  # 3 for a Gaussian
    rows.append(
        {
            "layer": n,
            "min": float(a.min()),
            "max": float(a.max()),
            "p99.9 |x|": float(np.percentile(np.abs(a), 99.9)),
            "kurtosis": kurtosis,
            "top / median channel": float(per_channel.max() / np.median(per_channel)),
        }
    )
print(format_table(rows, floatfmt=".3g"))
gelu_inputs = [r for r in rows if r["layer"].endswith("mlp.proj")]
assert all(r["min"] > -0.2 for r in gelu_inputs)  # GELU(x) >= -0.17: one-sided
assert max(r["kurtosis"] for r in gelu_inputs) > 6  # far heavier tails than a Gaussian
assert all(r["max"] > r["p99.9 |x|"] for r in rows)

# %% [markdown]
# Two things stand out. The inputs of `mlp.proj` are GELU outputs, all $\geq -0.17$: a
# symmetric range would waste half its codes, so activations use the asymmetric grid (with
# a zero point). And they are **heavy-tailed** (kurtosis far above a Gaussian's 3): most
# values sit near 0, a few reach many times the typical size, and some channels reach
# several times further than the median channel (the last column). One min-max range per
# tensor must cover the rare large values, which makes the step coarse for everything else.
# (Large language models push this to extremes: a few channels 100x larger than the rest.)

# %%
name = max(gelu_inputs, key=lambda r: r["kurtosis"])["layer"]
per_channel = np.abs(acts[name]).max(axis=0)
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(np.arange(per_channel.size), np.sort(per_channel)[::-1], color="C0")
ax.set_xlabel("channel (sorted)")
ax.set_ylabel("max |x| over the batches")
ax.set_title(f"input of {name}: the range of each channel")
save_figure(fig, FIGURES / "05_channel_ranges.png", dpi=110)

# %% [markdown]
# ## 2. Five observers on the same activations
#
# - **min-max**: the smallest and largest value; never clips, coarse with outliers;
# - **moving-average min-max** (PyTorch's, $c = 0.01$): $lo \leftarrow lo + c(\min x - lo)$
#   per batch — less swayed by one extreme batch, but clips what later batches exceed;
# - **percentile** (99.99%): drops the rarest values;
# - **MSE**: the range $[a\,lo, a\,hi]$ that minimizes the expected squared error of the
#   fake-quantized activations, searched on a histogram (tutorial 04, section 7);
# - **KL** (TensorRT's entropy calibration): the threshold whose quantized histogram is
#   closest, in KL divergence, to the clipped one.
#
# The histogram the last three share keeps exact counts: bins of a power-of-two width that
# merge in pairs when a batch widens the range.

# %%
spec = QuantSpec(8, "asymmetric", "tensor")
held_out = calibration_batches(data.train, 2, 16, cfg.block_size, np.random.default_rng(9))
x = record_inputs(W8, cfg, held_out, [name])[name]  # the same layer's inputs, other text
ranges, errs = {}, []
for obs_name in O.OBSERVERS:
    r = calibrate(W8, cfg, batches, obs_name, spec, layers=[name], progress=False)[name]
    ranges[obs_name] = r
    clip, rnd = error_split(x, spec, *r)
    errs.append(
        {
            "observer": obs_name,
            "lo": float(r[0]),
            "hi": float(r[1]),
            "clipping error": clip / x.size,
            "rounding error": rnd / x.size,
            "total": (clip + rnd) / x.size,
        }
    )
print(f"input of {name}, 8-bit asymmetric per tensor, errors on held-out batches:")
print(format_table(errs, floatfmt=".3g"))
path = plot_activation_ranges(
    acts[name],
    ranges,
    FIGURES / "05_observer_ranges.png",
    f"input of {name}: the range each observer chose",
)
total = {e["observer"]: e["total"] for e in errs}
assert total["mse"] <= total["minmax"] * 1.05  # MSE's search never does much worse
assert ranges["minmax"][1] >= max(r[1] for r in ranges.values())  # min-max is the widest

# %% [markdown]
# ## 3. What each observer does to the model
#
# Now calibrate every linear layer's input with each observer, and run the model with the
# activations fake-quantized statically (one scale and zero point per layer, fixed), then
# dynamically (each token's own range, at run time: the int8 kernels' way).

# %%
table = [{"activations": "float (weights W8)", "val_ppl": w8, "change_%": 100 * (w8 / base - 1)}]
for obs_name in O.OBSERVERS:
    r = calibrate(W8, cfg, batches, obs_name, spec, progress=False)
    fq = FakeQuantLinear(activations="static", act_qparams=static_qparams(r))
    ppl = ptq.perplexity(W8, cfg, data.val, fq, max_windows=WINDOWS)
    table.append(
        {"activations": f"static, {obs_name}", "val_ppl": ppl, "change_%": 100 * (ppl / base - 1)}
    )
ppl = ptq.perplexity(W8, cfg, data.val, FakeQuantLinear(activations="dynamic"), WINDOWS)
table.append(
    {"activations": "dynamic, per token", "val_ppl": ppl, "change_%": 100 * (ppl / base - 1)}
)
print(format_table(table, floatfmt=".4f"))
res = {r["activations"]: r["val_ppl"] for r in table}
assert res["static, minmax"] < base * 1.02  # W8A8 static within 2%
assert res["dynamic, per token"] <= res["static, minmax"] * 1.002  # own range per token

# %% [markdown]
# ## 4. Trap one: a $-\infty$ in the calibration data
#
# A causal mask is often written by adding $-\infty$ to the masked attention scores. If
# those scores reach an observer, min-max sets $lo = -\infty$: the scale becomes infinite
# and every value quantizes to the same code (one library's static quantization lost a
# factor 24 in perplexity to exactly this). Our observers drop non-finite values, and
# positions marked as padding, and count what they dropped:

# %%
scores = np.random.default_rng(1).standard_normal((2, 8, 8)).astype(np.float32)  # [B, T, T]
scores[:, np.triu_indices(8, 1)[0], np.triu_indices(8, 1)[1]] = -np.inf  # causal mask
naive_lo = scores.min()
obs = O.MinMaxObserver()
obs.update(scores)
print(
    f"naive min: {naive_lo}; observer range {obs.range()}, "
    f"skipped {obs.n_skipped_nonfinite} non-finite values"
)
assert naive_lo == -np.inf and np.isfinite(obs.range()).all()
assert obs.n_skipped_nonfinite == 2 * 28

# %% [markdown]
# ## 5. Trap two: an entropy calibration that clips what matters
#
# KL calibration was designed for CNN activations after ReLU. On a distribution with a few
# rare, large, *important* values it chooses a threshold that drops them — the outlier
# channels above. Attention probabilities are the extreme case: nearly all are close to 0,
# a few close to 1, and those few are the attention. With the fine histogram (thousands of
# bins) the KL threshold sits far below 1:

# %%
_, cache = forward(W8, batches[0].x, cfg)
probs = np.concatenate([p.reshape(-1) for p in cache.attn])  # every attention probability
kl = O.KLObserver(QuantSpec(8, "symmetric", "tensor"))
kl.update(probs)
lo, hi = kl.range()
clipped = probs > hi
print(
    f"attention probabilities: max {probs.max():.3f}; KL keeps [{lo:.4f}, {hi:.4f}], clipping "
    f"{clipped.mean():.2%} of them, which hold {probs[clipped].sum() / probs.sum():.1%} of "
    f"the attention mass"
)
x_hat = fake_quantize_tensor(probs, QuantSpec(8, "asymmetric", "tensor"), lo, hi)
assert hi < 0.5 * probs.max()
print(f"after quantization the largest probability is {x_hat.max():.3f}")

# %% [markdown]
# In this package's models the attention probabilities stay in float (only the linear
# layers are quantized), so the model above never sees this. But the same threshold logic
# hits the GELU outputs that feed `mlp.proj`: most are near 0, a few are large. The KL
# threshold can be as small as $2^{n-1}$ bins of the histogram (128 at 8 bits), so the
# finer the histogram, the harder it can clip. On the default teacher KL kept
# $[-0.17, 0.5]$ of GELU outputs reaching 8.3 in two blocks, and the perplexity rose 12%
# (min-max: +0.03%; README, quantization). The bin count decides:

# %%
gelu_in = acts[name]
for bins in (256, 4096):
    obs = O.KLObserver(QuantSpec(8, "symmetric", "tensor"), max_bins=bins)
    obs.update(gelu_in)
    lo, hi = obs.range()
    print(
        f"{bins:>5} bins: KL keeps [{lo:.3f}, {hi:.3f}] of [{gelu_in.min():.3f}, "
        f"{gelu_in.max():.3f}], clipping {np.mean(gelu_in > hi):.3%} of the values"
    )
    if bins == 256:
        coarse_hi = hi
assert coarse_hi >= hi  # a coarse histogram cannot clip as hard

# %% [markdown]
# Prefer min-max, moving-average or MSE ranges for Transformer activations, or dynamic
# per-token ranges, which need no calibration at all; if you use KL, look at what it clips.
