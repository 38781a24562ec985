"""Distil a sentence encoder into a shallower student on its own embeddings.

The student starts as every other block of the teacher (``distill.student_from_teacher``,
DistilBERT's initialisation: blocks 0, 2, 4 of all-MiniLM-L6-v2 for 3 layers) and learns,
through the one training loop (``nn.train.train``), to reproduce the teacher's sentence
embeddings on unlabelled corpus sentences with the course's MSE:

    L = 1/B sum_b sum_c (e_S[b, c] - e_T[b, c])**2,
    e = normalize(mean over the real tokens of the last hidden states)

(``distill.losses.mse_rows_forward``). The loss's backward chains the package's own
backward passes: MSE -> ``l2_normalize_backward`` -> ``mean_pool_backward`` ->
``nn.model.backward``.

The training sentences are the corpus' prose sentences *outside* the fidelity set, so the
student is judged on sentences it never saw.
"""

from __future__ import annotations

import numpy as np

from minicompress.data import Batch
from minicompress.distill.losses import mse_rows_backward, mse_rows_forward
from minicompress.distill.student import student_from_teacher
from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, backward, check_params, forward
from minicompress.nn.ops import (
    l2_normalize_backward,
    l2_normalize_forward,
    mean_pool_backward,
    mean_pool_forward,
)
from minicompress.nn.train import TrainConfig, train
from minicompress.pretrained.embed import sentence_embeddings
from minicompress.pretrained.sentences import sentences_outside
from minicompress.pretrained.tokenizer import TokenBatch, select_rows

STUDENT_LAYERS = 3  # issue 15: a 3-layer student of the 6-layer teacher
# fine-tuning a pretrained model: lr about 1e-3 (DESIGN.md); no weight decay, which would
# shrink the rows of the 30522-token embedding table that the corpus never uses
DISTILL_TRAIN = TrainConfig(
    batch_size=32, steps=300, lr=1e-3, min_lr=1e-5, warmup=20, weight_decay=0.0, eval_every=0
)


class SentenceSampler:
    """``data`` for ``nn.train.train``: ``(rng, batch_size) -> Batch(x, None, pad_mask,
    token_types)`` of sentences drawn uniformly (without replacement within a batch) from
    ``tokens`` (a ``TokenBatch`` of all the training sentences, tokenized once)."""

    def __init__(self, tokens: TokenBatch):
        self.tokens = tokens

    def __call__(self, rng: np.random.Generator, batch_size: int) -> Batch:
        n = self.tokens.ids.shape[0]
        rows = rng.choice(n, size=min(batch_size, n), replace=False)
        b = select_rows(self.tokens, rows)
        return Batch(b.ids, None, b.pad_mask, b.token_types)


def embedding_mse(params, cfg, batch: Batch, target: np.ndarray, linear=DENSE, op_impl=None):
    """L = MSE(e_S, target) over the sentences of ``batch`` and its gradients w.r.t. the
    student's parameters (see the module docstring).  ->  (float, grads)."""
    h, cache = forward(
        params, batch.x, cfg, linear, pad_mask=batch.pad_mask, token_types=batch.token_types,
        op_impl=op_impl,
    )  # fmt: skip  # [B, T, C]
    pooled, pool_c = mean_pool_forward(h, batch.pad_mask)  # [B, C]
    emb, norm_c = l2_normalize_forward(pooled)  # [B, C]
    loss, mse_c = mse_rows_forward(emb, target)
    demb = mse_rows_backward(1.0, mse_c)  # [B, C]
    dh = mean_pool_backward(l2_normalize_backward(demb, norm_c), pool_c)  # [B, T, C]
    return float(loss), backward(dh, cache)


class EmbeddingDistillLoss:
    """The loss hook of ``nn.train.train``: ``embedding_mse`` against the frozen teacher's
    embeddings of the same batch (computed once per distinct sentence and kept).

    The gradients of ``frozen`` (default the word-embedding table ``wte``) are dropped, so
    the loop leaves those parameters as they are: the student keeps the teacher's 30522
    token vectors, most of which the corpus never uses (AdamW would spend more time on
    that table than on the three blocks)."""

    def __init__(
        self,
        teacher_params: dict,
        teacher_cfg: TransformerConfig,
        frozen: tuple[str, ...] = ("wte",),
        op_impl=None,
    ):
        check_params(teacher_params, teacher_cfg)
        self.teacher_params = teacher_params
        self.teacher_cfg = teacher_cfg
        self.frozen = tuple(frozen)
        self.op_impl = op_impl
        self._targets: dict[bytes, np.ndarray] = {}  # ids of one sentence -> its embedding

    @staticmethod
    def _keys(batch: Batch) -> list[bytes]:
        return [row[~pad].tobytes() for row, pad in zip(batch.x, batch.pad_mask, strict=True)]

    def targets(self, batch: Batch) -> np.ndarray:
        """The teacher's embeddings of the batch's sentences [B, C] (float32)."""
        keys = self._keys(batch)
        if any(k not in self._targets for k in keys):
            tb = TokenBatch(batch.x, batch.pad_mask, batch.token_types, (~batch.pad_mask).sum(1))
            emb = sentence_embeddings(
                self.teacher_params, self.teacher_cfg, tb, op_impl=self.op_impl
            )
            self._targets.update(zip(keys, emb, strict=True))
        return np.stack([self._targets[k] for k in keys])

    def __call__(self, params: dict, batch: Batch, cfg: TransformerConfig, linear):
        value, grads = embedding_mse(params, cfg, batch, self.targets(batch), linear, self.op_impl)
        return value, {k: g for k, g in grads.items() if k not in self.frozen}


def distill_student(
    model,
    held_out: list[str],
    n_layer: int = STUDENT_LAYERS,
    tc: TrainConfig = DISTILL_TRAIN,
    max_length: int = 128,
    progress: bool = True,
) -> tuple[dict, TransformerConfig, object]:
    """A ``n_layer``-block student of ``model`` (a ``PretrainedModel``), initialised from
    every other teacher block and trained on the teacher's embeddings of the corpus
    sentences outside ``held_out``.  ->  (student params, student config, train History)."""
    params, cfg = student_from_teacher(model.params, model.cfg, n_layer)
    tokens = model.tokenizer.encode(sentences_outside(held_out), max_length=max_length)
    loss = EmbeddingDistillLoss(model.params, model.cfg)
    hist = train(
        params, cfg, SentenceSampler(tokens), tc, loss=loss, progress=progress,
        desc=f"distil {model.cfg.n_layer} -> {n_layer} layers",
    )  # fmt: skip
    return params, cfg, hist
