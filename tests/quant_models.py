"""A tiny trained language model shared by the quantization tests (trained once per test
session, in a few seconds): 2 layers, width 32, context 32, on the built-in corpus."""

from __future__ import annotations

import functools

import numpy as np

from minicompress.data import builtin_text, make_dataset
from minicompress.nn.model import TransformerConfig, init_params
from minicompress.nn.train import TrainConfig, train


@functools.lru_cache(maxsize=1)
def _trained():
    data = make_dataset(builtin_text()[:60_000], 32)
    cfg = TransformerConfig(
        vocab_size=data.tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32
    )
    params = init_params(cfg, np.random.default_rng(0))
    tc = TrainConfig(batch_size=8, steps=100, lr=1e-2, warmup=10, eval_every=0, seed=0)
    train(params, cfg, data, tc, progress=False)
    return params, cfg, data


def tiny_trained():
    """(params, cfg, data): a fresh copy of the parameters each call (tests may modify)."""
    params, cfg, data = _trained()
    return {k: v.copy() for k, v in params.items()}, cfg, data
