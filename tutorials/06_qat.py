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
# # 06 — Quantization-aware training, and the model on the int8 kernels
#
# Post-training quantization (tutorials 04-05) rounds a trained model and hopes. The course
# (3.1.2.2) adds: "fine-tune or retrain to recover the accuracy". Training *through* the
# rounding needs a gradient of a staircase, whose derivative is zero almost everywhere; the
# **straight-through estimator** (STE) uses the slope of the staircase at the scale of its
# steps instead: 1 inside the range, 0 where the clip acts. With it, QAT is the ordinary
# training loop with a `linear` that fake-quantizes (`quant.linear.FakeQuantLinear`).
#
# Then the quantized model stops being a simulation: its linear layers run on the int8
# kernels of tutorial 07 (`quant.runtime.Int8Linear`), and we check that the integers give
# what the simulation promised.
#
# `MINICOMPRESS_FAST=1`: a tiny model, 2 bits, a few dozen steps (seconds). Otherwise the
# default teacher if `MINICOMPRESS_TEACHER` names it (QAT at 4 bits, 300 steps, about ten
# minutes), else a small model trained here.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt
import numpy as np

from minicompress.data import CharTokenizer, builtin_text, eval_windows, make_dataset
from minicompress.kernels import int8_kernel_path
from minicompress.nn.checkpoint import load_checkpoint
from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, forward, init_params
from minicompress.nn.train import TrainConfig, train
from minicompress.quant import formulas as F
from minicompress.quant import ptq
from minicompress.quant.calibrate import calibration_batches, record_inputs
from minicompress.quant.gptq import gptq_quantize, output_error
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.qat import QAT_TRAIN, finetune, qat
from minicompress.quant.runtime import INT8, pack_int8_params
from minicompress.quant.tensor import QuantSpec, dequantize_tensor
from minicompress.report.bench_quant import TimedLinear, best_split_of_rounds
from minicompress.report.plots import save_figure
from minicompress.report.table import format_table

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)

# %% [markdown]
# ## 1. The straight-through estimator
#
# $\hat x = s\,(\mathrm{clip}(\mathrm{round}(x/s) + z, q_\min, q_\max) - z)$ is flat between
# steps. Inside the range, though, moving $x$ by a whole number $k$ of steps moves $\hat x$
# by exactly $k s$: the staircase has slope 1 at the scale of its steps. The STE uses that
# slope, $\partial \hat x / \partial x = 1$ inside the range and 0 where the clip acts
# (`formulas.ste_mask`), and treats the scale as a constant.

# %%
s, z, (q_min, q_max) = np.float64(0.25), 4, (0, 15)  # a 4-bit grid covering [-1, 2.75]
x = np.linspace(-2, 4, 1201)
x_hat = F.fake_quantize(x, s, z, q_min, q_max)
ste = F.ste_mask(x, s, z, q_min, q_max).astype(float)
k = 3  # central differences over 3 whole steps
fd = (
    F.fake_quantize(x + k * s, s, z, q_min, q_max) - F.fake_quantize(x - k * s, s, z, q_min, q_max)
) / (2 * k * s)
inside = (x / s + z > q_min - 0.5 + k) & (x / s + z < q_max + 0.5 - k)
outside = (x / s + z < q_min - 0.5 - k) | (x / s + z > q_max + 0.5 + k)
assert np.allclose(fd[inside], 1.0) and np.allclose(fd[outside], 0.0)
assert np.array_equal(ste[inside | outside], fd[inside | outside])
fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
ax[0].plot(x, x, color="0.7", lw=0.8, label="x")
ax[0].plot(x, x_hat, label="fake_quantize(x)")
ax[0].set_title("the staircase")
ax[0].legend()
ax[1].plot(x, ste, label="STE gradient")
ax[1].plot(x, fd, "--", label=f"difference over {k} steps")
ax[1].set_title("its gradient")
ax[1].legend()
save_figure(fig, FIGURES / "06_ste.png", dpi=110)
print("STE gradient = finite differences over whole steps, inside and outside the range")

# %% [markdown]
# ## 2. QAT against PTQ, after the same fine-tune
#
# A fine-tune changes the model by itself, so QAT is compared with the *same* fine-tune of
# the float model (same steps, learning rate, batches), quantized afterwards (PTQ). The
# fine-tune runs at lr = 1e-3: at the training rate 6e-3 even the float model gets worse.

# %%
teacher = os.environ.get("MINICOMPRESS_TEACHER")
if teacher and not FAST:  # the default teacher: python -m minicompress train --out DIR
    params, cfg, vocab, _ = load_checkpoint(teacher)
    data = make_dataset(builtin_text(), cfg.block_size, tokenizer=CharTokenizer(vocab))
    spec, tc = QuantSpec(4, "asymmetric", "group", group_size=32), QAT_TRAIN
else:  # a small model trained here (a tiny one in fast mode)
    block, width = (32, 32) if FAST else (64, 64)
    data = make_dataset(builtin_text()[: 120_000 if FAST else None], block)
    cfg = TransformerConfig(data.tokenizer.vocab_size, block, n_layer=2, n_head=2, n_embd=width)
    params = init_params(cfg, np.random.default_rng(0))
    steps = 120 if FAST else 600
    train(
        params,
        cfg,
        data,
        TrainConfig(batch_size=16, steps=steps, lr=1e-2, warmup=20, eval_every=0),
        progress=not FAST,
    )
    # fast: 2 bits (a tiny model loses too little at 4 to see a difference)
    spec = QuantSpec(2 if FAST else 4, "asymmetric", "group", group_size=16 if FAST else 32)
    tc = TrainConfig(
        batch_size=8 if FAST else 16,
        steps=40 if FAST else 300,
        lr=3e-3 if FAST else 1e-3,
        min_lr=1e-4,
        warmup=5 if FAST else 20,
        eval_every=0,
        seed=1,
    )
WINDOWS = 32 if FAST else None


def ppl(p, linear=DENSE):
    return ptq.perplexity(p, cfg, data.val, linear, max_windows=WINDOWS)


def ptq_of(p):
    return ptq.dequantized_params(p, ptq.quantize_weights(p, cfg, spec, embedding_spec=None))


control = {k: v.copy() for k, v in params.items()}
finetune(control, cfg, data, tc, progress=not FAST)
student = {k: v.copy() for k, v in params.items()}
hist = qat(student, cfg, data, spec, tc, progress=not FAST)
rows = [
    {"model": "float, before", "val_ppl": ppl(params)},
    {"model": "float, fine-tuned (control)", "val_ppl": ppl(control)},
    {
        "model": f"PTQ W{spec.bits} g{spec.group_size} of the control",
        "val_ppl": ppl(ptq_of(control)),
    },
    {"model": f"QAT W{spec.bits} g{spec.group_size}", "val_ppl": ppl(ptq_of(student))},
]
ref = rows[1]["val_ppl"]
for r in rows:
    r["vs control %"] = 100 * (r["val_ppl"] / ref - 1)
print(format_table(rows, floatfmt=".4f"))
ptq_loss, qat_loss = rows[2]["val_ppl"] - ref, rows[3]["val_ppl"] - ref
assert qat_loss < ptq_loss  # training through the rounding recovers part of the loss
print(f"QAT keeps {qat_loss / ptq_loss:.0%} of PTQ's loss")

# %% [markdown]
# After QAT, `ptq.quantize_weights(student, cfg, spec)` is exactly the model the training
# loop validated: each weight's grid follows its own min-max range at every call, so the
# codes of the final weights are the ones the last forward pass used.
#
# ## 2b. Better rounding without training: GPTQ
#
# Round-to-nearest minimizes each weight's own error. What the model feels is the layer's
# output error $\|X (W - \hat W)\|^2$, which weighs the weights by the inputs' second
# moments $X^\top X$. GPTQ (Frantar et al. 2023, `quant.gptq.gptq_quantize`) rounds one
# input row at a time and moves the rows not yet rounded to cancel the error it just made,
# using $64$ training windows as $X$. On the default teacher it takes W4 group 64 from
# +1.28% to +0.40% perplexity with no training at all (README, quantization table).

# %%
n_calib = 2 if FAST else 4  # batches of 16 training windows (64 on the teacher)
calib = calibration_batches(data.train, n_calib, 16, cfg.block_size, np.random.default_rng(0))
held_out = calibration_batches(data.train, 1, 16, cfg.block_size, np.random.default_rng(99))
x_calib, x_held = record_inputs(params, cfg, calib), record_inputs(params, cfg, held_out)
rtn_q = ptq.quantize_weights(params, cfg, spec, embedding_spec=None)
gptq_q = {f"{n}.w": gptq_quantize(x, params[f"{n}.w"], spec) for n, x in x_calib.items()}
rows, err_rtn, err_gptq = [], 0.0, 0.0
for n, x in x_held.items():  # the output error on text GPTQ did not see
    w = params[f"{n}.w"]
    e_rtn = output_error(x, w, dequantize_tensor(rtn_q[f"{n}.w"]))
    e_gptq = output_error(x, w, dequantize_tensor(gptq_q[f"{n}.w"]))
    rows.append({"layer": n, "round to nearest": e_rtn, "GPTQ": e_gptq})
    err_rtn, err_gptq = err_rtn + e_rtn, err_gptq + e_gptq
print(format_table(rows, floatfmt=".3g"))
p_rtn = ppl(ptq.dequantized_params(params, rtn_q))
p_gptq = ppl(ptq.dequantized_params(params, gptq_q))
print(
    f"W{spec.bits} g{spec.group_size}: perplexity round-to-nearest {p_rtn:.4f}, GPTQ {p_gptq:.4f}"
)
assert err_gptq < err_rtn  # the objective GPTQ lowers, measured on held-out text

# %% [markdown]
# ## 3. The model on the int8 kernels
#
# With symmetric 8-bit weights per output channel, every linear layer can run on
# `kernels.int8_linear`: `pack_int8_params` lays each weight out for the kernel once (bias
# inside); `Int8Linear` runs it, quantizing each token's activations to uint8 inside the
# kernel. The simulation of the same thing is `FakeQuantLinear(activations="dynamic")` on
# the dequantized weights: the same integers, multiplied as floats.

# %%
q8 = ptq.quantize_weights(params, cfg, QuantSpec(8, "symmetric", "channel"), embedding_spec=None)
sim_params = ptq.dequantized_params(params, q8)
int8_params = pack_int8_params(params, cfg, q8)
x_val, _ = eval_windows(data.val, cfg.block_size)
x_val = x_val[:32]
sim = FakeQuantLinear(activations="dynamic")
logits_sim, _ = forward(sim_params, x_val, cfg, sim)
logits_int, _ = forward(int8_params, x_val, cfg, INT8)
diff = np.abs(logits_int - logits_sim)
scale = np.abs(logits_sim).max()
print(
    f"kernel path {int8_kernel_path()}: |int8 - simulation| mean {diff.mean():.2e}, max "
    f"{diff.max():.2e} (logits up to {scale:.1f})"
)
assert diff.mean() <= 1e-3 * scale and diff.max() <= 2e-2 * scale
p_sim, p_int, p_fp = ppl(sim_params, sim), ppl(int8_params, INT8), ppl(params)
print(f"perplexity: float {p_fp:.4f}, W8A8 simulated {p_sim:.4f}, W8A8 on int8 kernels {p_int:.4f}")
assert abs(p_int / p_sim - 1) < 1e-3

# %% [markdown]
# The two differ by float rounding only: the kernel sums exact integer products and scales
# once; the simulation multiplies rounded floats. Rarely, an activation lands within an ulp
# of a rounding boundary and rounds the other way on one side, which moves its layer's
# output by one activation step; hence agreement to about $10^{-4}$ of the logits' scale
# rather than bit for bit.
#
# Where does the time go? The same batch through the float forward and the int8 forward,
# with the time inside the linear layers measured separately:

# %%
contenders = {}
for name, p, lin in (
    ("float32", params, TimedLinear(DENSE)),
    ("int8", int8_params, TimedLinear(INT8)),
):
    run = lambda p=p, lin=lin: forward(p, x_val, cfg, lin)  # noqa: E731
    contenders[name] = (run, lambda lin=lin: lin.seconds)
best = best_split_of_rounds(contenders, rounds=2, repeat=3 if FAST else 10)
rows = [
    {"forward": n, "ms": ms, "linear layers ms": lin, "rest ms": ms - lin}
    for n, (ms, lin) in best.items()
]
print(format_table(rows, floatfmt=".2f"))
print(
    "(the rest: attention, layer norm, GELU, embeddings; python -m minicompress.report."
    "bench_quant MODEL compares with PyTorch's quantize_dynamic)"
)
