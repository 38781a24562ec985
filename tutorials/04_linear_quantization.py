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
# # 04 — Linear quantization: the course's formula, and where one range fails
#
# The course (3.1.1) maps each weight $w$ to one of $2^n$ levels:
# $$Q(w) = \mathrm{clip}\big(\mathrm{round}(w / s),\ c_\min,\ c_\max\big), \qquad
#   s = \frac{w_\max - w_\min}{2^n - 1},$$
# with $w_\min, w_\max$ taken over *all the weights of the model*. This chapter works the
# formula by hand, writes it with a zero point (the form every int8 library stores),
# compares it with the symmetric and the logarithmic quantizer, and then asks the question
# that decides whether it works on a real model: **which weights share one range** — the
# whole model, each tensor, each output channel, or each group of 32 weights?
#
# Every formula is a function of `minicompress.quant.formulas` (or `quant.tensor`, which
# puts them together); this chapter only calls them. With `MINICOMPRESS_FAST=1` a tiny model
# trains for a few seconds; without it, the default teacher is used if
# `MINICOMPRESS_TEACHER` names its checkpoint, else a small model trains (a minute or two).

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt
import numpy as np

from minicompress.data import CharTokenizer, builtin_text, make_dataset
from minicompress.nn.checkpoint import load_checkpoint
from minicompress.nn.model import TransformerConfig, init_params, linear_names
from minicompress.nn.train import TrainConfig, train
from minicompress.quant import formulas as F
from minicompress.quant import ptq
from minicompress.quant.tensor import (
    QuantSpec,
    dequantize_tensor,
    grid_points,
    model_range,
    quantize_tensor,
    scale_zero_point,
)
from minicompress.report.plots import save_figure
from minicompress.report.quant_plots import plot_clipping_rounding, plot_weight_grid
from minicompress.report.table import format_table

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The formula on five numbers
#
# Take $w \in [-0.25, 0.75]$ at $n = 2$ bits. Then $s = (0.75 + 0.25) / (2^2 - 1) = 1/3$:
# four levels, one third apart. $w / s = [-0.75, 0, 0.75, 1.5, 2.25]$ rounds to
# $[-1, 0, 1, 2, 2]$ — note $1.5 \to 2$ and $2.25 \to 2$ — so $c_\min = \mathrm{round}(w_\min
# / s) = -1$ and $c_\max = c_\min + 2^n - 1 = 2$.

# %%
w = np.array([-0.25, 0.0, 0.25, 0.5, 0.75], np.float32)
s = F.linear_scale(w.min(), w.max(), 2)
c_min, c_max = F.course_code_range(w.min(), s, 2)
c = F.quantize(w, s, 0, c_min, c_max)  # the course's Q(w): zero point 0, codes in [c_min, c_max]
print(f"s = {s:.6f}, c_min = {c_min}, c_max = {c_max}, Q(w) = {c.tolist()}")
print(f"dequantized s * Q(w) = {np.round((s * c).astype(float), 4).tolist()}")
assert s == np.float32(1 / 3) and c.tolist() == [-1, 0, 1, 2, 2]

# %% [markdown]
# ## 2. The zero point: the same grid, unsigned codes
#
# Storing $[-1, 2]$ needs a sign. Shift by the **zero point** $z = -c_\min =
# \mathrm{round}(-w_\min / s)$ and the codes become $0 \ldots 2^n - 1$ (uint8 at 8 bits):
# $$q = \mathrm{clip}(\mathrm{round}(w / s) + z,\ 0,\ 2^n - 1), \qquad \hat w = s\,(q - z).$$
# This is **asymmetric** quantization. The **symmetric** form fixes $z = 0$ and
# $s = \max|w| / (2^{n-1} - 1)$: codes $-(2^{n-1}-1) \ldots 2^{n-1}-1$, i.e. $\pm 127$ at 8
# bits. PyTorch's symmetric observers divide by $(2^n - 1)/2 = 127.5$ instead and allow
# $-128$; our functions take `narrow=False` for that convention (tests compare both).

# %%
z = F.asymmetric_zero_point(w.min(), s)
q = F.quantize(w, s, z, *F.code_range(2, "asymmetric"))
w_hat = np.round(F.dequantize(q, s, z).astype(float), 4)
print(f"z = {z}, q = {q.tolist()}  (= Q(w) + z), w_hat = {w_hat.tolist()}")
assert np.array_equal(q, c + z)
s_sym = F.symmetric_scale(np.abs(w).max(), 2)
q_sym = F.quantize(w, s_sym, 0, *F.code_range(2, "symmetric"))
print(f"symmetric: s = {s_sym:.3f}, codes {q_sym.tolist()} in {F.code_range(2, 'symmetric')}")
print(
    f"8-bit symmetric scale of max|w| = 1: ours 1/{1 / F.symmetric_scale(np.float32(1), 8):.1f}, "
    f"PyTorch's 1/{1 / F.symmetric_scale(np.float32(1), 8, narrow=False):.1f}"
)

# %% [markdown]
# At 2 bits the symmetric grid has only 3 levels ($-1, 0, 1$ times $s = 0.75$): $0.25$ and
# $0.5$ both become 0 and 0.75, where the asymmetric grid had four levels $1/3$ apart. For a
# range that is not centred on 0 the asymmetric grid spends its levels where the weights are.
# The price of the zero point is an extra term in an integer matmul (tutorial 07, section 3).
#
# ## 3. Rounding, and the half-step bound
#
# Rounding is **half to even** (`np.rint`, as PyTorch and the int8 kernels): $0.5 \to 0$,
# $1.5 \to 2$, $2.5 \to 2$. Inside the range every value moves by at most half a step,
# $|w - \hat w| \le s / 2$; quantizing the quantized values again changes nothing.

# %%
print("round half to even:", F.quantize(np.array([0.5, 1.5, 2.5, -0.5], np.float32), 1.0, 0, -9, 9))
x = rng.standard_normal(10_000).astype(np.float32)
for bits in (2, 4, 8):
    spec = QuantSpec(bits, "asymmetric", "tensor")
    qt = quantize_tensor(x, spec)
    x_hat = dequantize_tensor(qt)
    step = qt.scale.item()
    worst = np.abs(x - x_hat).max()
    print(f"{bits} bits: s = {step:.5f}, max |x - x_hat| = {worst:.5f} <= s/2 = {step / 2:.5f}")
    assert worst <= step / 2 * (1 + 1e-5)
    assert np.array_equal(dequantize_tensor(quantize_tensor(x_hat, spec)), x_hat)

# %% [markdown]
# ## 4. Logarithmic quantization
#
# The course names a second quantizer beside the linear one: levels that are powers of two,
# $\hat w = \mathrm{sign}(w)\, 2^{\mathrm{round}(\log_2 |w|)}$ (Miyashita et al. 2016). With
# one sign bit and $n - 1$ bits of exponent there are $2^{n-1} - 1$ magnitudes below the
# largest one, plus zero. A multiplication by $\hat w$ is then a shift — but the grid is
# dense near 0 and sparse at the top, where a Gaussian's large weights sit.

# %%
spec_log, spec_lin = QuantSpec(4, "log", "tensor"), QuantSpec(4, "asymmetric", "tensor")
s_log = F.log_scale(np.abs(x).max(), 4)
print("4-bit log grid (magnitudes):", grid_points(s_log, 0, spec_log)[8:].round(4).tolist())
err = {}
for spec in (spec_lin, spec_log):
    x_hat = dequantize_tensor(quantize_tensor(x, spec))
    err[spec.scheme] = float(np.mean((x - x_hat) ** 2))
    rel = np.median(np.abs(x - x_hat) / np.abs(x))
    print(
        f"{spec.scheme:>10}: mean squared error {err[spec.scheme]:.5f}, median relative {rel:.3f}"
    )
assert err["asymmetric"] < err["log"]  # on Gaussian values, the linear grid is closer

# %% [markdown]
# ## 5. A trained model: which weights share a range?
#
# "All the weights of the model" share one range in the course's statement. Weights of
# different layers have very different ranges, though, and a layer with small weights then
# lands on a handful of levels. The finer the granularity — per tensor, per output channel
# (a column of our `[in, out]` weights), per group of $G$ consecutive inputs of one output —
# the more levels each weight gets, for a few more scales to store.

# %%
teacher = os.environ.get("MINICOMPRESS_TEACHER")
if teacher and not FAST:  # the default teacher: python -m minicompress train --out DIR
    params, cfg, vocab, _ = load_checkpoint(teacher)
    data = make_dataset(builtin_text(), cfg.block_size, tokenizer=CharTokenizer(vocab))
else:  # a small model trained here (a tiny one in fast mode)
    block, width = (32, 32) if FAST else (64, 64)
    data = make_dataset(builtin_text()[: 120_000 if FAST else None], block)
    cfg = TransformerConfig(data.tokenizer.vocab_size, block, n_layer=2, n_head=2, n_embd=width)
    params = init_params(cfg, np.random.default_rng(0))
    steps = 120 if FAST else 600
    tc = TrainConfig(batch_size=16, steps=steps, lr=1e-2, warmup=20, eval_every=0)
    train(params, cfg, data, tc, progress=not FAST)
WINDOWS = 32 if FAST else None  # validation windows per perplexity (None: all)
base = ptq.perplexity(params, cfg, data.val, max_windows=WINDOWS)
print(f"model: {cfg.n_layer} layers, width {cfg.n_embd}; validation perplexity {base:.3f}")

# %%
names = linear_names(cfg)
lo, hi = model_range(params[f"{n}.w"] for n in names)
spec_model = QuantSpec(4, "asymmetric", "model")
rows = []
for n in names:
    w = params[f"{n}.w"]
    levels_model = np.unique(quantize_tensor(w, spec_model, lo, hi).q).size
    levels_tensor = np.unique(quantize_tensor(w, QuantSpec(4, "asymmetric", "tensor")).q).size
    rows.append(
        {
            "layer": n,
            "min": float(w.min()),
            "max": float(w.max()),
            "levels used, model range": levels_model,
            "per tensor": levels_tensor,
        }
    )
print(f"one range for the model: [{lo:.3f}, {hi:.3f}]; 4 bits = 16 levels")
print(format_table(rows, floatfmt=".3f"))
assert max(r["levels used, model range"] for r in rows) <= 16
assert min(r["levels used, model range"] for r in rows) < 16

# %% [markdown]
# The figure shows the layer with the narrowest range under three grids: the model's one
# range (most of its levels fall outside the layer's weights), the tensor's own range, and
# the range of one output channel.

# %%
narrow = min(names, key=lambda n: np.ptp(params[f"{n}.w"]))
w = params[f"{narrow}.w"]
col = int(np.argmin(np.ptp(w, axis=0)))
spec_t = QuantSpec(4, "asymmetric", "tensor")
grids = {
    "one range for the model": grid_points(*scale_zero_point(lo, hi, spec_t), spec_t),
    "per tensor": grid_points(*scale_zero_point(w.min(), w.max(), spec_t), spec_t),
    f"per channel (column {col})": grid_points(
        *scale_zero_point(w[:, col].min(), w[:, col].max(), spec_t), spec_t
    ),
}
path = plot_weight_grid(w, grids, FIGURES / "04_weight_grids.png", f"{narrow}.w at 4 bits")
print(f"figure: {path}")

# %% [markdown]
# The squared error over all the linear weights falls at each finer granularity; and what
# matters, the perplexity, follows (weights only; the embeddings stay float here):

# %%
GRANULARITIES = {
    "model": QuantSpec(4, "asymmetric", "model"),
    "tensor": QuantSpec(4, "asymmetric", "tensor"),
    "channel": QuantSpec(4, "asymmetric", "channel"),
    "group 32": QuantSpec(4, "asymmetric", "group", group_size=32),
}
mse = {}
for label, spec in GRANULARITIES.items():
    q = ptq.quantize_weights(params, cfg, spec, embedding_spec=None)
    mse[label] = sum(float(np.sum((dequantize_tensor(qt) - params[k]) ** 2)) for k, qt in q.items())
print({k: f"{v:.4g}" for k, v in mse.items()})
assert mse["model"] > mse["tensor"] > mse["channel"] > mse["group 32"]


def ppl_of(spec):
    q = ptq.quantize_weights(params, cfg, spec, embedding_spec=None)
    return ptq.perplexity(ptq.dequantized_params(params, q), cfg, data.val, max_windows=WINDOWS)


table = []
for bits in (8, 4):
    for label, spec in GRANULARITIES.items():
        spec = QuantSpec(bits, "asymmetric", spec.granularity, group_size=spec.group_size)
        ppl = ppl_of(spec)
        table.append(
            {
                "bits": bits,
                "range shared by": label,
                "val_ppl": ppl,
                "change_%": 100 * (ppl / base - 1),
            }
        )
log4 = ppl_of(QuantSpec(4, "log", "channel"))
table.append(
    {
        "bits": 4,
        "range shared by": "channel, log grid",
        "val_ppl": log4,
        "change_%": 100 * (log4 / base - 1),
    }
)
print(format_table(table, floatfmt=".3f"))
by = {(r["bits"], r["range shared by"]): r["val_ppl"] for r in table}
assert abs(by[8, "channel"] / base - 1) < 0.01  # 8 bits per channel: within 1%
assert by[4, "model"] > by[4, "group 32"]  # one range for the model fails first
assert log4 > by[4, "channel"]  # the log grid loses to the linear one at 4 bits

# %% [markdown]
# ## 6. Bits
#
# Per channel and per group of 32, the perplexity against the bit width: the knee is
# where the rounding error starts to matter.

# %%
bit_list = [2, 4, 8] if FAST else [2, 3, 4, 5, 6, 8]
curves = {}
for label, gran, g in (("per channel", "channel", None), ("group 32", "group", 32)):
    curves[label] = [ppl_of(QuantSpec(b, "asymmetric", gran, group_size=g)) for b in bit_list]
fig, ax = plt.subplots(figsize=(6, 3.6))
for label, ppls in curves.items():
    ax.plot(bit_list, ppls, "o-", label=label)
ax.axhline(base, color="0.4", ls="--", label="float32")
ax.set_xlabel("bits per weight")
ax.set_ylabel("validation perplexity")
ax.set_yscale("log")
ax.legend()
save_figure(fig, FIGURES / "04_bits.png", dpi=110)
print({k: [round(v, 3) for v in ppls] for k, ppls in curves.items()})
assert all(p[0] > p[-1] for p in curves.values())  # 2 bits worse than 8

# %% [markdown]
# ## 7. Clipping against rounding
#
# A range narrower than min-max clips the extreme weights (clipping error) but makes every
# step finer (rounding error). At 4 bits the range with the smallest squared error is well
# inside the min-max range; that trade-off is what the MSE observer of tutorial 05
# searches, and what `quantize_weights(..., clip="mse")` does for every channel or group.

# %%
widest = max(names, key=lambda n: np.abs(params[f"{n}.w"]).max() / params[f"{n}.w"].std())
path = plot_clipping_rounding(
    params[f"{widest}.w"],
    QuantSpec(4, "asymmetric", "tensor"),
    FIGURES / "04_clipping_rounding.png",
)
print(f"figure: {path}  ({widest}.w)")

# %% [markdown]
# Smallest squared error of the weights is not smallest loss, though: the clipped weights
# are the largest ones, and a network leans on its largest weights. Compare per channel at
# 4 bits, with and without the search. (On the default teacher the search made W4 per
# channel *worse*: +1.95% perplexity against +1.59% with min-max ranges; README, quantization.)

# %%
spec = QuantSpec(4, "asymmetric", "channel")
errors, ppls = {}, {}
for clip in ("minmax", "mse"):
    q = ptq.quantize_weights(params, cfg, spec, embedding_spec=None, clip=clip)
    errors[clip] = sum(float(np.sum((dequantize_tensor(t) - params[k]) ** 2)) for k, t in q.items())
    ppls[clip] = ptq.perplexity(
        ptq.dequantized_params(params, q), cfg, data.val, max_windows=WINDOWS
    )
    print(f"clip {clip:>6}: weight squared error {errors[clip]:.4f}, perplexity {ppls[clip]:.4f}")
assert errors["mse"] < errors["minmax"]
