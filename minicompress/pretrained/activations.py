"""The inputs of a real model's linear layers, and their outlier channels.

Quantizing an activation ``x`` [tokens, K] to int8 with one scale per tensor (or per token)
sets the grid step from its largest value. In trained Transformers a few channels of the
residual stream carry values 10-20x larger than the rest on many tokens (Dettmers et al.
2022, "LLM.int8()"; Bondarenko et al. 2021 for BERT), so the step fits those few channels
and the others get a handful of levels. These functions find them: the per-channel
maximum of |x| over the real (non-padding) tokens, and the channels far above the median.
"""

from __future__ import annotations

import numpy as np

from minicompress.nn.linear import DENSE
from minicompress.nn.model import forward, linear_names

# BlockCache field of each linear layer of a block, in forward order
_BLOCK_FIELDS = {"attn.qkv": "qkv", "attn.proj": "proj", "mlp.fc": "fc", "mlp.proj": "mlp_proj"}


def linear_inputs(params: dict, cfg, batch) -> dict[str, np.ndarray]:
    """The input of every linear layer at the real tokens: {layer name: float32 [N, K]},
    N the number of non-padding tokens of ``batch`` (a ``TokenBatch``).

    Read from the dense forward pass's caches: ``DENSE`` keeps each layer's input ``x`` in
    its ``LinearCache`` for the weight gradient, so nothing is run twice.
    """
    pad = batch.pad_mask if batch.pad_mask.any() else None
    _, cache = forward(
        params, batch.ids, cfg, DENSE, pad_mask=pad, token_types=batch.token_types
    )  # fmt: skip
    keep = ~batch.pad_mask  # [B, T]
    out = {}
    for name in linear_names(cfg):
        if name == "head":
            continue
        block, layer = name.split(".", 2)[1], name.split(".", 2)[2]
        x = getattr(cache.blocks[int(block)], _BLOCK_FIELDS[layer]).x  # [B, T, K]
        out[name] = x[keep]  # [N, K]
    return out


def channel_absmax(x: np.ndarray) -> np.ndarray:
    """m_k = max_n |x[n, k]|.   x: [N, K]  ->  [K] (x's dtype)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty 2-D array [N, K]; got shape {x.shape}")
    return np.abs(x).max(axis=0)


def outlier_channels(absmax: np.ndarray, factor: float = 6.0) -> np.ndarray:
    """Channels whose max |x| exceeds ``factor`` times the median channel's, largest first.

    absmax: [K] (``channel_absmax``)  ->  int64 [n_outliers]."""
    absmax = np.asarray(absmax, dtype=np.float64)
    if absmax.ndim != 1 or absmax.size == 0:
        raise ValueError(f"absmax must be a non-empty 1-D array [K]; got shape {absmax.shape}")
    if not factor > 0:
        raise ValueError(f"factor must be > 0; got {factor}")
    idx = np.flatnonzero(absmax > factor * np.median(absmax))
    return idx[np.argsort(-absmax[idx], kind="stable")].astype(np.int64)
