"""minicompress/pretrained/student.py: the embedding MSE's gradients by float64 finite
differences through pooling, normalization and the whole encoder; the loss hook (teacher
targets computed once per sentence, the frozen table); the sampler's batches; a few steps
of distillation through nn.train.train lower the loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gradcheck import assert_grads_ok, check_grads
from pretrained_helpers import TINY_CONFIG, need_extra, write_tiny_checkpoint

pytest.importorskip("minicompress.distill.student", reason="the distill package is not on main")

from minicompress.data import Batch  # noqa: E402
from minicompress.nn import backend  # noqa: E402
from minicompress.nn.gradcheck import random_params64  # noqa: E402
from minicompress.nn.linear import DENSE  # noqa: E402
from minicompress.pretrained import load_pretrained  # noqa: E402
from minicompress.pretrained.loader import bert_config  # noqa: E402
from minicompress.pretrained.student import (  # noqa: E402
    DISTILL_TRAIN,
    EmbeddingDistillLoss,
    SentenceSampler,
    embedding_mse,
)


def test_embedding_mse_gradients_by_finite_differences(rng):
    cfg = bert_config(TINY_CONFIG)
    params = random_params64(cfg, rng)
    pad = np.array([[False] * 5, [False, False, False, True, True]])
    batch = Batch(rng.integers(0, 20, (2, 5)), None, pad, rng.integers(0, 2, (2, 5)))
    target = rng.standard_normal((2, 8))
    target /= np.linalg.norm(target, axis=1, keepdims=True)

    def f():
        return embedding_mse(params, cfg, batch, target, op_impl=backend.NUMPY_OPS)[0]

    _, grads = embedding_mse(params, cfg, batch, target, op_impl=backend.NUMPY_OPS)
    names = ["wte", "wtt", "ln_emb.g", "blocks.0.attn.qkv.w", "blocks.1.mlp.fc.b", "blocks.1.ln2.g"]
    errors = check_grads(f, {k: params[k] for k in names}, grads, max_entries=40, rng=rng)
    assert_grads_ok(errors, tol=1e-6)


def test_embedding_mse_by_hand_at_the_target():
    """The loss is 0 with zero gradients when the student already gives the target."""
    need_extra()
    cfg = bert_config(TINY_CONFIG)
    params = {
        k: v.astype(np.float64) for k, v in random_params64(cfg, np.random.default_rng(1)).items()
    }
    batch = Batch(np.array([[2, 5, 6, 3]]), None, np.zeros((1, 4), bool), np.zeros((1, 4), int))
    from minicompress.pretrained.embed import sentence_embeddings
    from minicompress.pretrained.tokenizer import TokenBatch

    e = sentence_embeddings(
        params, cfg, TokenBatch(batch.x, batch.pad_mask, batch.token_types, None)
    )
    loss, grads = embedding_mse(params, cfg, batch, e)
    assert loss == 0.0
    assert max(np.abs(g).max() for g in grads.values()) == 0.0


def test_loss_hook_freezes_the_table_and_asks_the_teacher_once_per_sentence(tmp_path):
    need_extra()
    model = load_pretrained(write_tiny_checkpoint(tmp_path / "tiny"))
    loss = EmbeddingDistillLoss(model.params, model.cfg)
    b = model.tokenizer.encode(["the cat sat", "a dog", "the cat sat"])
    batch = Batch(b.ids, None, b.pad_mask, b.token_types)
    value, grads = loss(model.params, batch, model.cfg, DENSE)
    assert value < 1e-10  # the teacher is its own student: nothing to learn
    assert "wte" not in grads and "wpe" in grads and "blocks.1.mlp.fc.w" in grads
    assert len(loss._targets) == 2  # two distinct sentences


def test_sampler_gives_unlabelled_padded_batches(tmp_path, rng):
    need_extra()
    model = load_pretrained(write_tiny_checkpoint(tmp_path / "tiny"))
    tokens = model.tokenizer.encode(["the cat sat on the mat", "a dog", "red hat", "the dogs run"])
    batch = SentenceSampler(tokens)(rng, 3)
    assert batch.y is None and batch.x.shape[0] == 3
    assert batch.x.shape[1] == int((~batch.pad_mask).sum(1).max())  # cut to the longest
    assert np.all(batch.x[:, 0] == 2)  # every row starts with [CLS]


def test_a_few_steps_lower_the_loss(tmp_path):
    need_extra()
    from minicompress.distill.student import student_from_teacher
    from minicompress.nn.train import train

    model = load_pretrained(write_tiny_checkpoint(tmp_path / "tiny"))
    params, cfg = student_from_teacher(model.params, model.cfg, 1)
    texts = ["the cat sat on the mat", "a dog runs", "the red hat", "a big dog sat on a cat"] * 4
    tokens = model.tokenizer.encode(texts)
    loss = EmbeddingDistillLoss(model.params, model.cfg)
    tc = dataclasses.replace(DISTILL_TRAIN, batch_size=4, steps=30, lr=1e-2, warmup=0)
    wte = params["wte"].copy()
    hist = train(params, cfg, SentenceSampler(tokens), tc, loss=loss, progress=False)
    assert np.mean(hist.loss[-5:]) < 0.5 * np.mean(hist.loss[:5])
    np.testing.assert_array_equal(params["wte"], wte)  # frozen
