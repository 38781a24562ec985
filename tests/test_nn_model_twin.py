"""minicompress/nn/model.py against its PyTorch twin (tests/torch_twin.py), whole model:
GPT-2 arrangement (pre-LN, tanh GELU, causal), post-LN with padding, and a BERT-style encoder
(token types, embedding LayerNorm, eps 1e-12, no head, a shrunk block) pooled and normalized
as sentence-transformers does. Live when torch is installed, from golden files otherwise.
Outputs and every parameter's gradient of sum(out * dy), in float64, for both op backends."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gradcheck import assert_close
from make_golden import MODEL_BUILDERS, load_golden

from minicompress.nn import backend
from minicompress.nn.model import TransformerConfig, backward, forward
from minicompress.nn.ops import (
    l2_normalize_backward,
    l2_normalize_forward,
    mean_pool_backward,
    mean_pool_forward,
)

OPS = {"numpy": backend.NUMPY_OPS, "numba": backend.NUMBA_OPS}


def ours(case: dict, op_impl) -> tuple[np.ndarray, dict]:
    """Our output and gradients for a golden case (same inputs, same upstream gradient)."""
    cfg = TransformerConfig(**json.loads(str(case["config"])))
    params = {k[2:]: v for k, v in case.items() if k.startswith("p.")}
    pad = case.get("pad_mask")
    out, cache = forward(
        params, case["idx"], cfg, pad_mask=pad, token_types=case.get("token_types"),
        op_impl=op_impl,
    )  # fmt: skip
    if cfg.head:
        return out, backward(case["dy"], cache)
    pooled, pool_c = mean_pool_forward(out, pad)  # [B, T, C] -> [B, C]
    emb, norm_c = l2_normalize_forward(pooled)  # [B, C]
    dh = mean_pool_backward(l2_normalize_backward(case["dy"], norm_c), pool_c)
    return emb, backward(dh, cache)


def compare(case: dict, op_impl) -> None:
    y, grads = ours(case, op_impl)
    assert_close(y, case["y"], rtol=1e-10, atol=1e-12, name="output")
    theirs = {k[2:]: v for k, v in case.items() if k.startswith("g.")}
    assert sorted(grads) == sorted(theirs)
    for name, g in theirs.items():
        assert_close(grads[name], g, rtol=1e-9, atol=1e-11, name=f"d{name}")


@pytest.mark.parametrize("ops_name", list(OPS))
@pytest.mark.parametrize("name", list(MODEL_BUILDERS))
def test_model_matches_torch_golden(name, ops_name):
    compare(load_golden(name), OPS[ops_name])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(MODEL_BUILDERS))
def test_model_matches_torch_live(torch, name, seed):
    case = MODEL_BUILDERS[name](torch, np.random.default_rng([7, seed]), np.float64)
    compare(case, backend.NUMPY_OPS)
