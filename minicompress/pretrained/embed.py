"""Sentence embeddings of a BERT encoder: the model's hidden states, mean-pooled over the
real tokens and L2-normalized (sentence-transformers' ``Transformer -> Pooling(mean) ->
Normalize``).

Everything here calls the one model (``nn.model.forward``) and the package's pooling ops
(``nn.ops.mean_pool_forward``, ``l2_normalize_forward``); a compressed model is the same
call with another ``linear`` (quantized, masked, int8 runtime) or other parameters.
"""

from __future__ import annotations

import numpy as np

from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, forward
from minicompress.nn.ops import l2_normalize_forward, mean_pool_forward
from minicompress.pretrained.tokenizer import TokenBatch, check_texts, select_rows

DEFAULT_BATCH_SIZE = 32  # sentences per forward pass


def sentence_embeddings(
    params: dict,
    cfg: TransformerConfig,
    batch: TokenBatch,
    linear=DENSE,
    op_impl=None,
) -> np.ndarray:
    """e_b = normalize(mean_{t: not pad[b, t]} h[b, t]),  h = the encoder's last hidden states.

    batch: TokenBatch (ids, pad_mask, token_types [B, T])  ->  float32 [B, C], unit rows.
    A batch without padding passes ``pad_mask=None`` to the model (the same numbers, no
    masking work).
    """
    pad = batch.pad_mask if batch.pad_mask.any() else None
    h, _ = forward(
        params, batch.ids, cfg, linear, pad_mask=pad, token_types=batch.token_types,
        op_impl=op_impl,
    )  # fmt: skip  # [B, T] -> [B, T, C]
    pooled, _ = mean_pool_forward(h, pad)  # [B, T, C] -> [B, C]
    emb, _ = l2_normalize_forward(pooled)  # [B, C]
    return emb


def embed_texts(
    model,
    texts: list[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    linear=DENSE,
    params: dict | None = None,
    cfg: TransformerConfig | None = None,
    op_impl=None,
    progress: bool = False,
) -> np.ndarray:
    """Embeddings of ``texts`` in input order: float32 [N, C].

    model: a ``PretrainedModel`` (its tokenizer, and its params/config unless ``params`` /
    ``cfg`` give others, e.g. a pruned or distilled model). Texts are batched by length
    (less padding) and the rows put back in input order. Padding does not change a row's
    embedding: padded keys get probability exactly 0 and padded tokens are not pooled.
    """
    texts = check_texts(texts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    params = model.params if params is None else params
    cfg = model.cfg if cfg is None else cfg
    everything = model.tokenizer.encode(texts)  # [N, T_max]
    order = np.argsort(everything.lengths, kind="stable")  # shortest first, ties in order
    out = np.empty((len(texts), cfg.n_embd), dtype=np.float32)  # [N, C]
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="embed", unit="batch")
    for s in starts:
        rows = order[s : s + batch_size]
        batch = select_rows(everything, rows)  # [b, T] with T the longest of these rows
        out[rows] = sentence_embeddings(params, cfg, batch, linear, op_impl)
    return out


def runtime_embeddings(runtime, batch: TokenBatch) -> np.ndarray:
    """``sentence_embeddings`` computed by an inference runtime (``deploy.runtime.Runtime``:
    inference ops, the batch split between threads; ``pretrained.compress.encoder_runtime``)
    instead of the training path: the same formula, the same numbers to float rounding.

    batch: TokenBatch [B, T]  ->  float32 [B, C], unit rows."""
    pad = batch.pad_mask if batch.pad_mask.any() else None
    h = runtime.forward(batch.ids, pad, batch.token_types)  # [B, T] -> [B, T, C]
    pooled, _ = mean_pool_forward(h, pad)  # [B, T, C] -> [B, C]
    emb, _ = l2_normalize_forward(pooled)  # [B, C]
    return emb
