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
# # 02 — Backward passes, and how to trust them
#
# minicompress has no autograd engine: each op is a pair
# `op_forward(...) -> (out, cache)` and `op_backward(dout, cache) -> grads`, and the
# derivative is written by hand (it is stated in each backward's docstring). A hand-written
# derivative is only as good as its check, so this chapter checks every one against
# **central finite differences in float64**:
# $$\frac{\partial L}{\partial x_i} \approx \frac{L(x + h e_i) - L(x - h e_i)}{2h},
# \qquad h = 10^{-6},$$
# whose error is $O(h^2)$ from truncation plus $O(\varepsilon_{64} |L| / h) \approx 10^{-10}$
# from rounding — far below the $10^{-6}$ we allow.
#
# To test the backward of an op with a tensor output $y$, we make a scalar out of it:
# $L = \sum y \odot R$ for a fixed random $R$. Then $\partial L / \partial y = R$, so the
# backward is called with `dout = R`.
#
# Open as a notebook: `jupytext --to notebook tutorials/02_backward_and_gradcheck.py`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt
import numpy as np

from minicompress.data import CharTokenizer, builtin_text
from minicompress.nn import attention, model, ops
from minicompress.nn.backend import NUMBA_OPS, NUMPY_OPS
from minicompress.report.plots import save_figure

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
# next to this file; in a notebook (no __file__), next to the notebook
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)
rng = np.random.default_rng(0)
TOL = 1e-6  # the largest relative error we accept from a float64 gradient check

# %% [markdown]
# ## The checking tools
#
# `minicompress.nn.gradcheck.numerical_grad` (printed below: it is short) perturbs one
# entry at a time, in place, and restores it; the tests use the same function. The relative
# error compares the worst absolute difference with the tensor's largest entry:
# $$\mathrm{err}(a, n) = \frac{\max_i |a_i - n_i|}{\max(\max_i |a_i|, \max_i |n_i|)}.$$
# (Dividing entry by entry would blow up on entries that are $\approx 0$ by cancellation.)


# %%
import inspect

from minicompress.nn.gradcheck import numerical_grad, random_params64, rel_error

print(inspect.getsource(numerical_grad))

errors = {}  # "op: input" -> relative error, for the figure at the end


def check(op, f, inputs, analytic):
    """Compare analytic[name] with numerical_grad(f, inputs[name]) for every input."""
    for name, x in inputs.items():
        err = rel_error(analytic[name], numerical_grad(f, x))
        errors[f"{op}: {name}"] = err
        print(f"  {op:<14} d{name:<6} relative error {err:.1e}")
        assert err <= TOL, f"{op} d{name}: {err:.1e} > {TOL:.0e}"


# %% [markdown]
# ## Linear
# $$y = x W + b, \qquad \frac{\partial L}{\partial x} = \frac{\partial L}{\partial y} W^\top,
# \quad \frac{\partial L}{\partial W} = x^\top \frac{\partial L}{\partial y},
# \quad \frac{\partial L}{\partial b} = \sum_{\text{rows}} \frac{\partial L}{\partial y}.$$
# (For $x$ of shape $[B, T, K]$ the leading dims are flattened into $M = BT$ rows.)

# %%
B, T, K, N = 2, 3, 4, 5
x = rng.standard_normal((B, T, K))  # [B, T, K] float64
w = rng.standard_normal((K, N))  # [K, N]
b = rng.standard_normal(N)  # [N]
R = rng.standard_normal((B, T, N))  # dL/dy


def f():
    return float(np.sum(ops.linear_forward(x, w, b)[0] * R))


_, cache = ops.linear_forward(x, w, b)
dx, dw, db = ops.linear_backward(R, cache)
check("linear", f, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})

# %% [markdown]
# ## Layer norm
# With $\hat x = (x - \mu)\,r$, $r = 1/\sqrt{\sigma^2 + \epsilon}$ and $y = \hat x \odot g + b$
# (over the last axis of width $C$), and writing $\delta = \frac{\partial L}{\partial y}
# \odot g$:
# $$\frac{\partial L}{\partial x} = r\left(\delta - \overline{\delta} - \hat x\,
# \overline{\delta \odot \hat x}\right), \qquad
# \frac{\partial L}{\partial g} = \sum \frac{\partial L}{\partial y} \odot \hat x, \qquad
# \frac{\partial L}{\partial b} = \sum \frac{\partial L}{\partial y},$$
# where the bar is the mean over the $C$ entries of a row. The two subtracted terms are the
# paths through $\mu$ and through $\sigma^2$.

# %%
C = 6
x = rng.standard_normal((B, T, C))  # [B, T, C]
g = 1.0 + 0.3 * rng.standard_normal(C)  # [C]
b = 0.3 * rng.standard_normal(C)  # [C]
R = rng.standard_normal((B, T, C))


def f():
    return float(np.sum(ops.layernorm_forward(x, g, b)[0] * R))


_, cache = ops.layernorm_forward(x, g, b)
dx, dg, db = ops.layernorm_backward(R, cache)
check("layernorm", f, {"x": x, "g": g, "b": b}, {"x": dx, "g": dg, "b": db})

# %% [markdown]
# ## GELU, both forms
# Exact (erf) form, with $\Phi$ the standard normal CDF and $\varphi$ its density:
# $$y = x\,\Phi(x) = \tfrac12 x\left(1 + \mathrm{erf}(x/\sqrt2)\right), \qquad
# y' = \Phi(x) + x\,\varphi(x) = \tfrac12\left(1 + \mathrm{erf}(x/\sqrt2)\right)
# + \frac{x\,e^{-x^2/2}}{\sqrt{2\pi}}.$$
# Tanh form, with $u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)$ and $t = \tanh u$:
# $$y = \tfrac12 x (1 + t), \qquad
# y' = \tfrac12 (1 + t) + \tfrac12 x\,(1 - t^2)\,\sqrt{2/\pi}\,(1 + 3 \cdot 0.044715\,x^2).$$

# %%
x = 2.0 * rng.standard_normal((B, T, C))  # wide enough to cover the curved part
R = rng.standard_normal((B, T, C))
for form in ("tanh", "none"):

    def f(form=form):
        return float(np.sum(ops.gelu_forward(x, form)[0] * R))

    _, cache = ops.gelu_forward(x, form)
    check(f"gelu ({form})", f, {"x": x}, {"x": ops.gelu_backward(R, cache)})

# the tanh form approximates the erf form closely, but they are different functions
y_tanh, _ = ops.gelu_forward(x, "tanh")
y_erf, _ = ops.gelu_forward(x, "none")
print(f"max |gelu_tanh - gelu_erf| on these x: {np.abs(y_tanh - y_erf).max():.1e}")

# %% [markdown]
# How sharp is the check? Give it a *wrong* derivative: the tanh form's derivative while
# differentiating the erf form. The two functions differ by less than $10^{-3}$, yet the
# check fails by orders of magnitude over the tolerance.

# %%
_, cache_tanh = ops.gelu_forward(x, "tanh")
wrong = ops.gelu_backward(R, cache_tanh)  # derivative of the tanh form...


def f_erf():
    return float(np.sum(ops.gelu_forward(x, "none")[0] * R))  # ...checked against the erf form


err_wrong = rel_error(wrong, numerical_grad(f_erf, x))
print(f"  wrong derivative: relative error {err_wrong:.1e} (tolerance {TOL:.0e})")
assert err_wrong > 100 * TOL

# %% [markdown]
# ## Softmax
# $y_i = e^{x_i} / \sum_j e^{x_j}$ has Jacobian $\partial y_i / \partial x_j = y_i
# (\delta_{ij} - y_j)$, so with $\bar y = \partial L / \partial y$:
# $$\frac{\partial L}{\partial x} = y \odot \left(\bar y - \textstyle\sum_j \bar y_j\,
# y_j\right).$$
# (The forward subtracts $\max x$ first: it changes nothing mathematically and keeps
# `exp` from overflowing.)

# %%
x = rng.standard_normal((B, T, C))
R = rng.standard_normal((B, T, C))


def f():
    return float(np.sum(ops.softmax_forward(x)[0] * R))


y, cache = ops.softmax_forward(x)
check("softmax", f, {"x": x}, {"x": ops.softmax_backward(R, cache)})

# %% [markdown]
# ## Attention
# Forward: $S = Q K^\top s$ with $s = 1/\sqrt D$, masked; $P = \mathrm{softmax}(S)$;
# $Y = P V$. Backward, using the two results above (matmul and softmax):
# $$\bar V = P^\top \bar Y, \quad \bar P = \bar Y V^\top, \quad
# \bar S = P \odot \left(\bar P - \textstyle\sum_j \bar P_{:,j} P_{:,j}\right), \quad
# \bar Q = \bar S K\, s, \quad \bar K = \bar S^\top Q\, s.$$
# Masked entries have $P = 0$, so they get no gradient. We check the causal and the
# bidirectional forms, and a padding mask (True = padding).

# %%
H, D = 2, 3
q = rng.standard_normal((B, H, T, D))  # [B, H, T, D]
k = rng.standard_normal((B, H, T, D))
v = rng.standard_normal((B, H, T, D))
R = rng.standard_normal((B, H, T, D))
pad = np.array([[False, False, False], [False, False, True]])  # [B, T]: last token of seq 1
for label, causal, pad_mask in [
    ("attn causal", True, None),
    ("attn bidir", False, None),
    ("attn bidir+pad", False, pad),
]:

    def f(causal=causal, pad_mask=pad_mask):
        return float(np.sum(attention.attention_forward(q, k, v, causal, pad_mask)[0] * R))

    _, cache = attention.attention_forward(q, k, v, causal, pad_mask)
    dq, dk, dv = attention.attention_backward(R, cache)
    check(label, f, {"q": q, "k": k, "v": v}, {"q": dq, "k": dk, "v": dv})

# %% [markdown]
# ## Cross-entropy
# With $p = \mathrm{softmax}(z)$ over the vocabulary and targets $y_m$, averaged over the
# $M$ positions:
# $$L = \frac1M \sum_m \left(\log \textstyle\sum_v e^{z_{m,v}} - z_{m, y_m}\right), \qquad
# \frac{\partial L}{\partial z_m} = \frac{p_m - \mathrm{onehot}(y_m)}{M}.$$
# The loss is already a scalar, so the backward starts from $\partial L / \partial L = 1$.

# %%
V = 7
z = rng.standard_normal((B, T, V))  # [B, T, V] logits
targets = rng.integers(0, V, size=(B, T))  # [B, T]


def f():
    return float(ops.cross_entropy_forward(z, targets)[0])


_, cache = ops.cross_entropy_forward(z, targets)
check("cross-entropy", f, {"z": z}, {"z": ops.cross_entropy_backward(1.0, cache)})

# %% [markdown]
# ## The whole model
#
# `model.loss_and_grads` chains all of the above: forward through every block, cross-entropy,
# then every backward in reverse order. We check it on a tiny model reading real text, for a
# few sampled entries of **every** parameter tensor, in both arrangements (pre-LN with tanh
# GELU as GPT-2, post-LN with erf GELU as BERT).
#
# One subtlety: `init_params` draws weights with std 0.02, which makes the gradients of the
# deep parameters tiny (~1e-6), below what finite differences can resolve. For the check we
# use O(1) float64 parameters instead (`nn.gradcheck.random_params64`) — the derivative
# formulas do not care about the scale.
#
# The step $h$ is a trade-off: truncation error grows like $h^2$, rounding error like
# $\varepsilon |L| / h$, and the loss here ($\approx 5$) is large next to a single
# parameter's effect. The best $h$ is near $\varepsilon^{1/3} \approx 6 \cdot 10^{-6}$;
# we take $h = 10^{-5}$ for the model (with $10^{-6}$ the check still passes, with a
# 10x smaller margin).

# %%
text = builtin_text()
tok = CharTokenizer.from_text(text)
Tm = 8
idx = tok.encode(text[2000 : 2000 + 2 * Tm + 1])
x_tok = np.stack([idx[:Tm], idx[Tm : 2 * Tm]])  # [2, Tm]
y_tok = np.stack([idx[1 : Tm + 1], idx[Tm + 1 : 2 * Tm + 1]])  # next characters, [2, Tm]
n_sampled = 3 if FAST else 8  # entries checked per parameter tensor
H_MODEL = 1e-5  # finite-difference step for the whole model (see above)


model_errors = {}
for norm, gelu in [("pre", "tanh"), ("post", "none")]:
    cfg = model.TransformerConfig(
        vocab_size=tok.vocab_size,
        block_size=Tm,
        n_layer=2,
        n_head=2,
        n_embd=8,
        mlp_ratio=2,
        norm=norm,
        gelu=gelu,
    )
    params = random_params64(cfg, rng)
    loss, grads = model.loss_and_grads(params, x_tok, y_tok, cfg, op_impl=NUMPY_OPS)

    def f(cfg=cfg, params=params):
        logits, _ = model.forward(params, x_tok, cfg, op_impl=NUMPY_OPS)
        return float(ops.cross_entropy_forward(logits, y_tok)[0])

    worst = 0.0
    for name, p in params.items():
        flat_g = grads[name].reshape(-1)
        # sample among the entries that get a gradient (wpe rows past Tm and the rows of
        # characters absent from the batch have exactly zero gradient)
        live = np.flatnonzero(flat_g)
        entries = np.sort(rng.choice(live, size=min(n_sampled, live.size), replace=False))
        num = numerical_grad(f, p, h=H_MODEL, entries=entries).reshape(-1)[entries]
        err = rel_error(flat_g[entries], num)
        model_errors[(norm, name)] = err
        worst = max(worst, err)
    print(
        f"{norm}-LN / {gelu} GELU: loss {loss:.3f}, {len(params)} tensors, "
        f"worst relative error {worst:.1e}"
    )
    errors[f"model {norm}-LN (worst)"] = worst
    assert worst <= TOL, {k: v for k, v in model_errors.items() if v > TOL}

# %% [markdown]
# ## The Numba fused ops give the same gradients
#
# Training does not run the readable ops above: by default (`MINICOMPRESS_KERNEL=auto`) it
# runs `nn.backend.NUMBA_OPS`, Numba kernels that do layer norm, the tanh GELU and the masked
# attention softmax in one pass over each row. They have the same signatures and cache types
# as `NUMPY_OPS`; `MINICOMPRESS_KERNEL=reference` switches back. Here each fused op is
# compared with its reference twin, forward and backward, in float64 (where the two must
# agree to rounding) and in float32 (what training uses).

# %%
fused_errors = {}
for dtype, tol in [(np.float64, 1e-12), (np.float32, 1e-5)]:
    r = np.random.default_rng(1)
    x = r.standard_normal((4, 16, 32)).astype(dtype)  # [B, T, C]
    g, b = (1 + 0.2 * r.standard_normal(32)).astype(dtype), r.standard_normal(32).astype(dtype)
    q, k, v = (r.standard_normal((4, 2, 16, 16)).astype(dtype) for _ in range(3))  # [B,H,T,D]
    dy = r.standard_normal((4, 16, 32)).astype(dtype)
    dya = r.standard_normal((4, 2, 16, 16)).astype(dtype)
    results = {}
    for label, impl in [("reference", NUMPY_OPS), ("fused", NUMBA_OPS)]:
        ln_y, ln_c = impl.layernorm_forward(x, g, b)
        ge_y, ge_c = impl.gelu_forward(x, "tanh")
        at_y, at_c = impl.attention_forward(q, k, v, True, None)
        results[label] = {
            "layernorm": (ln_y, *impl.layernorm_backward(dy, ln_c)),
            "gelu": (ge_y, impl.gelu_backward(dy, ge_c)),
            "attention": (at_y, at_c.p, *impl.attention_backward(dya, at_c)),
        }
    for op in results["reference"]:
        err = max(
            rel_error(a.astype(np.float64), b_.astype(np.float64))
            for a, b_ in zip(results["reference"][op], results["fused"][op], strict=True)
        )
        fused_errors[(op, np.dtype(dtype).name)] = err
        print(
            f"  fused vs reference {op:<10} {np.dtype(dtype).name}: "
            f"max relative difference {err:.1e}"
        )
        assert err <= tol, (op, dtype, err)
    assert all(o.dtype == dtype for o in results["fused"]["layernorm"])  # dtype is kept

# %% [markdown]
# And for the whole model: the gradients of every parameter with the fused ops equal the
# reference ones (float64), and the fused model passes the finite-difference check too.

# %%
cfg = model.TransformerConfig(
    vocab_size=tok.vocab_size, block_size=Tm, n_layer=2, n_head=2, n_embd=8, mlp_ratio=2
)
params = random_params64(cfg, rng)
loss_ref, grads_ref = model.loss_and_grads(params, x_tok, y_tok, cfg, op_impl=NUMPY_OPS)
loss_fus, grads_fus = model.loss_and_grads(params, x_tok, y_tok, cfg, op_impl=NUMBA_OPS)
worst = max(rel_error(grads_fus[n], grads_ref[n]) for n in params)
print(f"model loss: reference {loss_ref:.12f}, fused {loss_fus:.12f}")
print(f"model gradients, fused vs reference (float64): worst relative difference {worst:.1e}")
assert abs(loss_ref - loss_fus) < 1e-12 and worst < 1e-12


def f():
    logits, _ = model.forward(params, x_tok, cfg, op_impl=NUMBA_OPS)
    return float(ops.cross_entropy_forward(logits, y_tok)[0])


worst = 0.0
for name, p in params.items():
    live = np.flatnonzero(grads_fus[name])
    entries = np.sort(rng.choice(live, size=min(n_sampled, live.size), replace=False))
    num = numerical_grad(f, p, h=H_MODEL, entries=entries).reshape(-1)[entries]
    worst = max(worst, rel_error(grads_fus[name].reshape(-1)[entries], num))
print(f"fused model vs finite differences: worst relative error {worst:.1e}")
errors["model fused (worst)"] = worst
assert worst <= TOL

# %% [markdown]
# ## All checks at a glance
#
# Every bar is far below the $10^{-6}$ line: they sit between $10^{-10}$ and $10^{-8}$, the
# rounding noise of the finite differences themselves. A wrong derivative stands far above
# the line: even the derivative of the wrong GELU form (above) misses by more than 100x the
# tolerance, and a missing term or a transposed matrix gives errors of order 1.

# %%
names = list(errors)
vals = [max(errors[n], 1e-17) for n in names]  # an exact 0 cannot sit on a log axis
fig, ax = plt.subplots(figsize=(7, 0.22 * len(names) + 1.2))
ax.barh(range(len(names)), vals, color="C0")
ax.axvline(TOL, color="C3", ls="--", label=f"tolerance {TOL:.0e}")
ax.set_xscale("log")
ax.set_yticks(range(len(names)), names, fontsize=7)
ax.invert_yaxis()
ax.set_xlabel("relative error vs central differences (float64)")
ax.set_title("gradient checks")
ax.legend(loc="lower right", fontsize=8)
path = FIGURES / "02_gradcheck_errors.png"
save_figure(fig, path, dpi=110)
print("figure:", path)
print(f"{len(errors)} checks, worst relative error {max(errors.values()):.1e} <= {TOL:.0e}")
assert max(errors.values()) <= TOL

# %% [markdown]
# ## What to remember
# - Each backward is a short formula; it sits in the docstring of the function you just
#   checked (`ops.layernorm_backward`, `attention.attention_backward`, ...).
# - Check in float64, with central differences, one tensor at a time, against the tensor's
#   largest entry; use parameters of size O(1) so that gradients rise above the noise.
# - A fast kernel is trusted only after it matches its readable reference (the fused ops
#   here; the int8 and sparse kernels in chapters 07 and 08).
