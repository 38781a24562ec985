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
# # 01 — The Transformer forward pass, shape by shape
#
# Every later chapter (quantization, distillation, pruning, int8 and sparse kernels) works
# on one small model: a GPT-style character language model written in NumPy in
# `minicompress/nn/model.py`. This chapter follows one batch of real text through it and
# prints the shape of every intermediate array.
#
# Shape letters used everywhere: **B** batch, **T** sequence, **C** model width,
# **H** heads, **D** = C / H head width, **F** MLP hidden width, **V** vocabulary.
#
# Run it with `python tutorials/01_transformer_forward.py` (set `MINICOMPRESS_FAST=1` for a
# smaller model), or open it as a notebook: `jupytext --to notebook
# tutorials/01_transformer_forward.py`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt
import numpy as np

from minicompress.data import CharTokenizer, builtin_text
from minicompress.nn import attention, model, ops
from minicompress.nn.backend import NUMPY_OPS
from minicompress.nn.linear import DenseLinear
from minicompress.report.plots import save_figure

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
# next to this file; in a notebook (no __file__), next to the notebook
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Text to token ids
#
# The built-in corpus is the English text of Python's own documentation (it ships with
# every Python, so nothing is downloaded). The tokenizer maps each distinct character to
# an integer, in sorted order.

# %%
text = builtin_text()
tok = CharTokenizer.from_text(text)
print(f"corpus: {len(text):,} characters, vocabulary V = {tok.vocab_size}")

B, T = 2, 16  # a tiny batch: 2 sequences of 16 characters
starts = [1000, 50_000]
snippets = [text[s : s + T] for s in starts]
idx = np.stack([tok.encode(s) for s in snippets])  # [B, T] int64
for s in snippets:
    print(repr(s))
print("idx:", idx.shape, idx.dtype)
assert tok.decode(idx[0]) == snippets[0]  # encode and decode are inverses

# %% [markdown]
# ## 2. The configuration and the parameters
#
# `TransformerConfig` is a frozen dataclass; its defaults are the teacher of the demo (4 layers,
# width 128). Here we use a smaller one. Parameters are a flat `dict[str, np.ndarray]`
# with dotted names; linear weights are stored `[in, out]` so that `y = x @ w + b`.

# %%
cfg = model.TransformerConfig(
    vocab_size=tok.vocab_size,
    block_size=32,
    n_layer=1 if FAST else 2,
    n_head=4,
    n_embd=32 if FAST else 64,
)
params = model.init_params(cfg, rng)

print(f"{'name':<24} {'shape':<14} {'count':>8}")
for name, a in params.items():
    print(f"{name:<24} {str(a.shape):<14} {a.size:>8,}")
n_params = model.count_params(params)
print(f"{'total':<24} {'':<14} {n_params:>8,}")

C, H, V = cfg.n_embd, cfg.n_head, cfg.vocab_size
D, F = C // H, cfg.mlp_ratio * C
assert params["blocks.0.attn.qkv.w"].shape == (C, 3 * C)
assert params["blocks.0.mlp.fc.w"].shape == (C, F)
assert all(a.dtype == np.float32 for a in params.values())

# %% [markdown]
# Per block: two LayerNorms ($4C$), the fused query/key/value projection ($C \cdot 3C + 3C$),
# the attention output projection ($C^2 + C$), the MLP ($C F + F + F C + C$). Plus the token
# and position tables ($VC + T_{max} C$), the final LayerNorm ($2C$) and the output head
# ($CV$, no bias). The count printed above is exactly that:

# %%
per_block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (C * F + F + F * C + C)
expected = V * C + cfg.block_size * C + cfg.n_layer * per_block + 2 * C + C * V
print(f"by the formula: {expected:,}   counted: {n_params:,}")
assert expected == n_params

# %% [markdown]
# ## 3. The whole forward pass in one call
#
# `model.forward` returns the logits of the next token at every position and a cache that
# the backward pass (chapter 02) and the compression chapters read. `ops=NUMPY_OPS`
# asks for the readable NumPy ops (the default uses the fused Numba ones, chapter 02 shows
# they agree).

# %%
logits, cache = model.forward(params, idx, cfg, op_impl=NUMPY_OPS)
print("logits:", logits.shape, logits.dtype)  # [B, T, V]
assert logits.shape == (B, T, V)
# an untrained model knows nothing: its predictions are close to uniform, loss ~ log V
loss, _ = ops.cross_entropy_forward(logits[:, :-1], idx[:, 1:])
print(f"loss of the untrained model: {loss:.3f} nats;  log V = {np.log(V):.3f}")
assert abs(loss - np.log(V)) < 0.1

# %% [markdown]
# ## 4. The same pass by hand, one op at a time
#
# Now we call the package ops ourselves, in the order `model.forward` does, and print each
# shape. (A pre-LN block, as in GPT-2.)
#
# **Embedding.** $x_{b,t} = W_{te}[\,\mathrm{idx}_{b,t}\,] + W_{pe}[\,t\,]$.

# %%
p = params
tok_emb, _ = ops.embedding_forward(idx, p["wte"])  # [B, T] -> [B, T, C]
pos_emb, _ = ops.embedding_forward(np.arange(T), p["wpe"])  # [T] -> [T, C]
x = tok_emb + pos_emb  # [B, T, C] (positions broadcast over the batch)
print("token embedding   ", tok_emb.shape)
print("position embedding", pos_emb.shape)
print("x = sum           ", x.shape)
assert np.array_equal(x, cache.hidden[0])  # the input of block 0, as the model cached it

# %% [markdown]
# **Layer norm** over the last axis, with a learned gain $g$ and shift $b$:
# $$\mathrm{LN}(x) = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot g + b,
# \qquad \mu, \sigma^2 \text{ the mean and (biased) variance of the } C \text{ entries.}$$

# %%
pre = "blocks.0."
h, _ = ops.layernorm_forward(x, p[pre + "ln1.g"], p[pre + "ln1.b"])  # [B, T, C]
print("ln1(x)            ", h.shape)
print(f"  per row: mean {h.mean(-1).std():.1e} (all ~0), std {h.std(-1).mean():.4f} (~1)")
assert np.allclose(h.mean(-1), 0, atol=1e-5)

# %% [markdown]
# **Queries, keys, values** come from one linear layer of width $3C$, then each is split
# into $H$ heads of width $D$:
# $[B, T, C] \to [B, T, H, D] \to [B, H, T, D]$.

# %%
qkv, _ = ops.linear_forward(h, p[pre + "attn.qkv.w"], p[pre + "attn.qkv.b"])  # [B, T, 3C]
print("qkv               ", qkv.shape)
q, k, v = (attention.split_heads(qkv[..., i * C : (i + 1) * C], H) for i in range(3))
print("q, k, v           ", q.shape, "  (B, H, T, D)")
assert q.shape == (B, H, T, D)

# %% [markdown]
# **Scaled dot-product attention** (Vaswani et al. 2017), causal: query $t$ may only look at
# keys $0..t$.
# $$P = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{D}} + M\right), \qquad
# M_{ij} = \begin{cases} 0 & j \le i \\ -\infty & j > i \end{cases}, \qquad Y = P V.$$
# The probabilities $P$ are kept in the cache: a distiller reads them there.

# %%
y, att_cache = attention.attention_forward(q, k, v, causal=True)  # [B, H, T, D]
P = att_cache.p  # [B, H, T, T]
print("attention probs P ", P.shape, "  (B, H, T_query, T_key)")
print("attention output  ", y.shape)

row_sums = P.sum(axis=-1)  # [B, H, T]
above_diagonal = np.triu(P, k=1)  # entries j > i
print(f"rows of P sum to 1: max |sum - 1| = {np.abs(row_sums - 1).max():.1e}")
print(f"P is lower-triangular: max P[i, j > i] = {above_diagonal.max():.1e}")
assert np.abs(row_sums - 1).max() < 1e-6
assert np.all(above_diagonal == 0)  # masked keys get exactly zero probability
print("query 3 of head 0 (it sees keys 0..3):", np.round(P[0, 0, 3, :6], 3))

# %% [markdown]
# **Merge heads and project**, then the **residual connection**: the block adds its result to
# its input rather than replacing it.

# %%
merged = attention.merge_heads(y)  # [B, H, T, D] -> [B, T, C]
a, _ = ops.linear_forward(merged, p[pre + "attn.proj.w"], p[pre + "attn.proj.b"])  # [B, T, C]
x = x + a  # residual
print("merged heads      ", merged.shape)
print("x + attn          ", x.shape)

# %% [markdown]
# **MLP** with a GELU non-linearity (Hendrycks & Gimpel 2016), tanh form as in GPT-2:
# $$\mathrm{GELU}(x) \approx \tfrac12 x\left(1 + \tanh\!\left(\sqrt{2/\pi}\,(x + 0.044715
# x^3)\right)\right), \qquad \mathrm{MLP}(x) = \mathrm{GELU}(x W_1 + b_1) W_2 + b_2.$$

# %%
h, _ = ops.layernorm_forward(x, p[pre + "ln2.g"], p[pre + "ln2.b"])  # [B, T, C]
f, _ = ops.linear_forward(h, p[pre + "mlp.fc.w"], p[pre + "mlp.fc.b"])  # [B, T, C] -> [B, T, F]
g, _ = ops.gelu_forward(f, cfg.gelu)  # [B, T, F]
m, _ = ops.linear_forward(g, p[pre + "mlp.proj.w"], p[pre + "mlp.proj.b"])  # [B, T, F] -> [B, T, C]
x = x + m  # residual
print("mlp hidden (fc)   ", f.shape, "  (B, T, F)")
print("gelu              ", g.shape)
print("block output      ", x.shape)

# our hand-made block gives what the model computed (same ops, same order)
diff = np.abs(x - cache.hidden[1]).max()
print(f"max |by hand - model| after block 0: {diff:.1e}")
assert diff < 1e-5

# %% [markdown]
# The remaining blocks repeat this. After the last one, a final layer norm and the output
# head (no bias) give one score per vocabulary entry:

# %%
for i in range(1, cfg.n_layer):
    print(f"block {i}: {cache.hidden[i].shape} -> {cache.hidden[i + 1].shape}")
x_last = cache.hidden[-1]  # [B, T, C]
h, _ = ops.layernorm_forward(x_last, p["ln_f.g"], p["ln_f.b"])  # [B, T, C]
out, _ = ops.linear_forward(h, p["head.w"], None)  # [B, T, C] -> [B, T, V]
print("logits            ", out.shape)
assert np.abs(out - logits).max() < 1e-5

# %% [markdown]
# ## 5. One head's attention map
#
# Rows are queries (the character being processed), columns are keys (the characters it may
# look at). Everything above the diagonal is white: the future is masked. The model is
# untrained, so each query spreads its attention almost evenly over the past — chapter 03
# trains it.

# %%
chars = list(snippets[0])
fig, ax = plt.subplots(figsize=(5, 4.5))
im = ax.imshow(P[0, 0], cmap="viridis", vmin=0, vmax=1)
ax.set_xticks(range(T), chars)
ax.set_yticks(range(T), chars)
ax.set_xlabel("key")
ax.set_ylabel("query")
ax.set_title("block 0, head 0: attention probabilities")
fig.colorbar(im, ax=ax)
path = FIGURES / "01_attention_map.png"
save_figure(fig, path, dpi=110)  # laid out, written atomically, closed
print("figure:", path)

# %% [markdown]
# ## 6. Pre-LN and post-LN
#
# Where the layer norm sits changes how the residual stream behaves:
#
# | | block | used by |
# |---|---|---|
# | **pre-LN** | $x \leftarrow x + f(\mathrm{LN}(x))$, plus a final LN before the head | GPT-2 |
# | **post-LN** | $x \leftarrow \mathrm{LN}(x + f(x))$ | the original Transformer, BERT |
#
# In pre-LN the residual stream is never normalized inside the blocks: each block only
# *adds* to it, so the gradient flows straight from the loss to the embedding through the
# additions, and training is stable without a careful warmup. Post-LN normalizes after every
# addition, so each block's output has unit scale, but the gradient must pass through every
# LN. `TransformerConfig(norm="post")` builds the BERT arrangement (no `ln_f`); the pretrained BERT
# loader uses it with `gelu="none"` (the exact erf form) and `causal=False`.

# %%
cfg_post = model.TransformerConfig(**{**cfg.to_dict(), "norm": "post"})
params_post = model.init_params(cfg_post, np.random.default_rng(0))
_, cache_post = model.forward(params_post, idx, cfg_post, op_impl=NUMPY_OPS)
print("post-LN has ln_f:", "ln_f.g" in params_post, "  pre-LN has ln_f:", "ln_f.g" in params)
print("RMS of the residual stream (pre-LN: embedding scale plus what blocks add; post-LN: 1):")
for i in range(cfg.n_layer + 1):
    rms_pre = np.sqrt(np.mean(cache.hidden[i] ** 2))
    rms_post = np.sqrt(np.mean(cache_post.hidden[i] ** 2))
    print(f"  hidden[{i}]: pre-LN {rms_pre:.4f}   post-LN {rms_post:.4f}")
post_out = cache_post.hidden[-1]
assert np.allclose(post_out.std(-1), 1.0, atol=1e-2)  # LN is the last op of a post-LN block

# %% [markdown]
# ## 7. Where the compression chapters hook in
#
# Three places, all visible in `model.forward`:
#
# 1. **Every linear layer** goes through a `linear` object with
#    `forward(name, x, w, b)` and `backward(name, dy, cache)` — the contract written down
#    as the `typing.Protocol` `nn.linear.Linear`. The default is `nn.linear.DENSE`
#    (`y = x @ w + b`). A quantizer passes an object that fake-quantizes `x` and `w`; an int8
#    or sparse runtime passes one that calls its kernel. The model never reads a linear
#    weight itself — it even takes the number of heads of a block from the width of the
#    qkv *output* — so a runtime may keep a packed int8 or CSR weight under the same name.
# 2. **`cache.hidden`**: the input of every block and the last block's output
#    (`n_layer + 1` arrays `[B, T, C]`) — what hidden-state distillation compares.
# 3. **`cache.attn`**: each layer's attention probabilities `[B, H, T, T]` — what attention
#    transfer compares. `model.backward(..., dhidden=, dattn=)` sends gradients back into both.
#
# A linear object that only records what passes through it shows the first hook:


# %%
class RecordingLinear(DenseLinear):
    """The dense layer, plus a log of every call (a stand-in for a quantizer)."""

    def __init__(self):
        self.calls = []

    def forward(self, name, x, w, b):
        self.calls.append((name, x.shape, w.shape))
        return super().forward(name, x, w, b)


rec = RecordingLinear()
logits_rec, cache_rec = model.forward(params, idx, cfg, linear=rec, op_impl=NUMPY_OPS)
for name, xs, ws in rec.calls:
    print(f"  {name:<20} x {str(xs):<14} w {ws}")
assert [c[0] for c in rec.calls] == model.linear_names(cfg)
assert np.array_equal(logits_rec, logits)
print("cache.hidden:", [a.shape for a in cache.hidden])
print("cache.attn:  ", [a.shape for a in cache.attn])
assert len(cache.hidden) == cfg.n_layer + 1 and len(cache.attn) == cfg.n_layer

# %% [markdown]
# ## What to remember
# - Activations live on the residual stream `[B, T, C]`; attention works per head on
#   `[B, H, T, D]` and produces `[B, H, T, T]` probabilities, lower-triangular when causal.
# - Every op is a package function (`ops.*`, `attention.*`) with a forward and a backward;
#   chapter 02 derives and checks each backward.
# - Compression plugs in through the `linear` object, `cache.hidden` and `cache.attn`.
