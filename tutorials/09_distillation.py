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
# # 09 — Knowledge distillation: what the teacher's second choice says
#
# A trained teacher knows more than the right answer. After "th" a character model puts
# most of its probability on "e", but what it gives "a", "i" and "o" — and how little it
# gives "x" — says which mistakes are almost right. The hard label (the one character that
# followed in the text) says none of it. Knowledge distillation (course 3.2) trains a small
# student to match the teacher's whole distribution, the *soft labels*:
#
# $$\mathcal{L} = \alpha\,\mathcal{L}_\mathrm{CE}(p_S, y)
#   + (1-\alpha)\,\mathcal{L}_\mathrm{KD}(p_S, p_T),
#   \qquad p = \mathrm{softmax}(z / T)$$
#
# with $\mathcal{L}_\mathrm{KD}$ the KL divergence $\sum_i p_T(i)\log\frac{p_T(i)}{p_S(i)}$
# (scaled by $T^2$, Hinton et al. 2015) or the squared difference
# $\sum_i (p_T(i) - p_S(i))^2$. This chapter looks at soft labels and the temperature on toy
# logits, derives and checks the gradient of each KD loss, then distils a teacher into a
# student with fewer parameters and compares it with the same student trained from scratch.
#
# With `MINICOMPRESS_FAST=1` the models are tiny and train for a few dozen steps (seconds);
# without it, a small teacher and its student train for a few hundred steps (a few minutes).
# Open as a notebook: `jupytext --to notebook tutorials/09_distillation.py`.

# %%
import math
import os
from pathlib import Path

import numpy as np

from minicompress.data import builtin_text, make_dataset
from minicompress.distill import losses
from minicompress.distill.experiment import StudentSpec, Teacher, run_distill
from minicompress.distill.trainer import DistillConfig
from minicompress.nn.gradcheck import check_grads
from minicompress.nn.model import TransformerConfig, count_params, init_params
from minicompress.nn.ops import cross_entropy_backward, cross_entropy_forward
from minicompress.nn.train import TrainConfig, train
from minicompress.report.distill_plots import plot_distill_curves, plot_soft_labels
from minicompress.report.table import format_table

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
# next to this file; in a notebook (no __file__), next to the notebook
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Soft labels and the temperature
#
# Toy logits of a teacher for the character after "th": "e" first, then the vowels, and
# "x" and "z" far behind. At $T = 1$ the softmax is almost the hard label; dividing the
# logits by $T > 1$ flattens it and the *ranking* of the other characters — the "dark
# knowledge" — becomes visible. The order never changes: $z/T$ keeps it.

# %%
chars = ["e", "a", "i", "o", "x", "z"]
z_teacher = np.array([8.0, 5.5, 4.5, 3.0, -2.0, -4.0])
probs = {t: losses.softmax_with_temperature_forward(z_teacher, t)[0] for t in (1.0, 2.0, 4.0)}
print(
    format_table(
        [{"T": t, **{c: float(p) for c, p in zip(chars, probs[t], strict=True)}} for t in probs],
        floatfmt=".4f",
    )
)
print(f"figure: {plot_soft_labels(probs, chars, FIGURES / '09_soft_labels.png')}")


def entropy(p):
    return float(-(p * np.log(p)).sum())


assert probs[1.0][0] > 0.85  # at T = 1, "e" takes nearly 90% of the mass
assert entropy(probs[1.0]) < entropy(probs[2.0]) < entropy(probs[4.0])
for p in probs.values():
    assert np.all(np.diff(p) < 0)  # the order of the characters is kept at every T
# what the second choice says: "a" against "x" is a factor exp(7.5) at T = 1 (invisible next
# to "e"), exp(7.5 / 4) at T = 4, where "a" is a real share of the mass
assert probs[1.0][1] < 0.08 and probs[4.0][1] > 0.2
assert math.isclose(probs[1.0][1] / probs[1.0][4], math.exp(7.5), rel_tol=1e-9)

# %% [markdown]
# ## 2. The KL loss and its gradient
#
# For one token, $L = T^2 \sum_i p_T(i)\,(\log p_T(i) - \log p_S(i))$ with
# $\log p_S(i) = z_i / T - \log\sum_j e^{z_j/T}$, so
# $\partial \log p_S(i) / \partial z_j = (\delta_{ij} - p_S(j)) / T$ and
#
# $$\frac{\partial L}{\partial z_j} = -T \sum_i p_T(i)\,(\delta_{ij} - p_S(j))
#   = T\,(p_S(j) - p_T(j)),$$
#
# averaged over the $N$ tokens of the batch: $T (p_S - p_T) / N$. The package's
# `kd_kl_forward` / `kd_kl_backward` implement exactly this; we check the closed form against
# float64 central differences.

# %%
z_s = rng.standard_normal((4, 6)) * 2.0  # a student's logits for 4 tokens
z_t = np.tile(z_teacher, (4, 1)) + rng.standard_normal((4, 6))  # the teacher's
for t in (1.0, 4.0):
    _, cache = losses.kd_kl_forward(z_s, z_t, t)
    grad = losses.kd_kl_backward(1.0, cache)
    err = check_grads(
        lambda t=t: float(losses.kd_kl_forward(z_s, z_t, t)[0]), {"z": z_s}, {"z": grad}
    )
    print(f"T={t:g}: KL gradient, relative error against finite differences {err['z']:.1e}")
    assert err["z"] < 1e-8

# %% [markdown]
# **Why $T^2$.** Without it, the gradient $(p_S - p_T)/(T N)$ shrinks like $1/T^2$ as the
# temperature grows (the softened distributions differ by $O(1/T)$, then the chain rule
# divides by $T$ again). With it, the gradient keeps its size — so the KD term can be mixed
# with the cross-entropy at any temperature without retuning $\alpha$. At high $T$ it even
# approaches the squared difference of the (centred) logits,
# $\frac{1}{2V}\sum_i (z_S(i) - z_T(i))^2$ (Hinton et al., section 2.1).

# %%
rows = []
for t in (2.0, 5.0, 20.0, 100.0):
    loss, cache = losses.kd_kl_forward(z_s, z_t, t)
    g = losses.kd_kl_backward(1.0, cache)
    rows.append({"T": t, "T^2 KL": float(loss), "|grad| with T^2": float(np.linalg.norm(g)),
                 "|grad| without": float(np.linalg.norm(g)) / t**2})  # fmt: skip
print(format_table(rows, floatfmt=".4g"))
assert rows[-1]["|grad| with T^2"] / rows[1]["|grad| with T^2"] > 0.8  # about constant
assert rows[-1]["|grad| without"] < 0.01 * rows[1]["|grad| without"]  # vanishes as 1/T^2
d = (z_s - z_s.mean(-1, keepdims=True)) - (z_t - z_t.mean(-1, keepdims=True))
limit = float(np.mean(np.sum(d * d, axis=-1)) / (2 * z_s.shape[-1]))
print(f"T=100: T^2 KL = {rows[-1]['T^2 KL']:.4f}, high-T limit 1/(2V) sum dz^2 = {limit:.4f}")
assert math.isclose(rows[-1]["T^2 KL"], limit, rel_tol=0.02)

# %% [markdown]
# ## 3. The course's squared difference, through the softmax Jacobian
#
# $L = \frac{1}{N}\sum_n \sum_i (p_T(i) - p_S(i))^2$ has
# $\partial L / \partial p_S(i) = 2 (p_S(i) - p_T(i)) / N$, and the softmax of $z/T$ has the
# Jacobian $\partial p_S(i) / \partial z_j = p_S(i) (\delta_{ij} - p_S(j)) / T$, so
#
# $$\frac{\partial L}{\partial z_j} = \frac{2}{N T}\,p_S(j)\Big[(p_S(j) - p_T(j))
#   - \sum_i p_S(i)\,(p_S(i) - p_T(i))\Big].$$
#
# The factor $p_S(j)$ is the difference from the KL: a student that is confidently wrong
# (its $p_S$ of the right class near 0) gets almost no push from the MSE, and a strong one
# from the KL.

# %%
_, cache = losses.kd_mse_forward(z_s, z_t, 2.0)
grad = losses.kd_mse_backward(1.0, cache)
err = check_grads(lambda: float(losses.kd_mse_forward(z_s, z_t, 2.0)[0]), {"z": z_s}, {"z": grad})
print(f"MSE on probabilities: relative error against finite differences {err['z']:.1e}")
assert err["z"] < 1e-8

wrong = np.array([[-6.0, 0, 0, 0, 8.0, 0]])  # sure of "x" where the teacher says "e"
push = {}
for kind in ("kl", "mse"):
    _, c = losses.KD_FORWARD[kind](wrong, z_teacher[None], 1.0)
    push[kind] = -float(losses.KD_BACKWARD[kind](1.0, c)[0, 0])  # how hard "e" is pulled up
print(f"pull on the teacher's first choice: KL {push['kl']:.4f}, MSE {push['mse']:.2e}")
assert push["kl"] > 100 * push["mse"] > 0

# %% [markdown]
# And the mix: with $\alpha = 1$ the objective is exactly the cross-entropy of the nn
# package, value and gradient — the scratch student's loss.

# %%
y = rng.integers(0, 6, size=4)
mixed, c = losses.distillation_loss_forward(z_s, z_t, y, alpha=1.0, temperature=4.0)
ce, ce_cache = cross_entropy_forward(z_s, y)
assert mixed == ce
assert np.array_equal(
    losses.distillation_loss_backward(1.0, c), cross_entropy_backward(1.0, ce_cache)
)

# %% [markdown]
# ## 4. Teacher -> student
#
# A teacher is trained on the built-in corpus with the package's loop; a student with
# fewer, narrower blocks is then trained twice for the same number of steps, from the
# same initial weights, on the same batches: once on the cross-entropy alone (*scratch*),
# once on the mix with the teacher's soft labels (`DistillLoss`, through the same
# `nn.train.train`). `run_distill` does both, for each seed.

# %%
if FAST:
    teacher_kw = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
    teacher_tc = TrainConfig(batch_size=8, steps=60, warmup=5, lr=3e-3, eval_every=0)
    student = StudentSpec(n_layer=1, n_embd=16, n_head=2)
    tc = TrainConfig(batch_size=8, steps=40, warmup=5, lr=3e-3, eval_every=10, eval_windows=16)
    seeds = [0]
    text = builtin_text()[:60_000]
else:
    teacher_kw = dict(n_layer=2, n_head=4, n_embd=64, block_size=64)
    teacher_tc = TrainConfig(batch_size=16, steps=600, warmup=50, lr=3e-3, eval_every=0)
    student = StudentSpec(n_layer=1, n_embd=32, n_head=4)
    tc = TrainConfig(batch_size=16, steps=400, warmup=40, lr=3e-3, eval_every=50, eval_windows=32)
    seeds = [0, 1, 2]
    text = builtin_text()

data = make_dataset(text, teacher_kw["block_size"])
cfg = TransformerConfig(vocab_size=data.tokenizer.vocab_size, **teacher_kw)
t_params = init_params(cfg, np.random.default_rng([0, 0]))
hist = train(t_params, cfg, data, teacher_tc, progress=False)
teacher = Teacher(t_params, cfg, data.tokenizer.chars, "(trained above)")
print(f"teacher: {count_params(t_params):,} parameters, val ppl {math.exp(hist.val_loss[-1]):.3f}")

results, s_params, s_cfg = run_distill(
    teacher,
    student,
    [DistillConfig(alpha=0.5, temperature=2.0, loss="kl")],
    tc,
    seeds,
    text=text,
    scratch_baseline=True,
    progress=False,
)
print(f"curves: {plot_distill_curves(results, FIGURES / '09_distill_curves.png')}")
print(
    f"student {results['params']:,} parameters ({results['compression']:.1f}x fewer): "
    f"distilled val ppl {results['val_ppl']:.3f}, scratch {results['scratch_val_ppl']:.3f}, "
    f"teacher {results['teacher_val_ppl']:.3f} ({len(seeds)} seed(s))"
)
assert results["compression"] > 4
assert results["teacher_val_ppl"] < results["scratch_val_ppl"] < cfg.vocab_size
assert results["val_ppl"] < cfg.vocab_size
if not FAST:  # three seeds: the gain is larger than the seeds' spread
    assert results["beats_scratch_beyond_spread"], results

# %% [markdown]
# ## 5. What to try
#
# - `python -m minicompress distill TEACHER --student-layers 3 --student-width 64 --alpha 0.5
#   --temperature 2 --loss kl --steps 1000 --scratch-baseline --seeds 3 --out student` runs
#   the experiment of the README on the default teacher.
# - Change $\alpha$ and $T$ (a comma-separated list of each runs the grid) and look at where
#   the soft labels help most; compare `--loss kl`, `mse` and `mse-logits`.
# - `--hidden-weight` and `--attn-weight` add the TinyBERT / MiniLM terms: the student's
#   hidden states (through a learned projection to the teacher's width) and its attention
#   maps learn from the teacher's blocks too.
