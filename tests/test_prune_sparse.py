"""minicompress/prune/sparse.py: a pruned model on the CSR kernels computes what the dense
masked model computes; conversion round trips; inference-only errors."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.nn.model import TransformerConfig, forward, init_params, linear_names
from minicompress.prune.masks import apply_masks, local_masks
from minicompress.prune.pipeline import prunable_names
from minicompress.prune.sparse import (
    SPARSE,
    SparseWeight,
    pack_sparse,
    sparse_layers,
    to_dense_weight,
    to_sparse_weight,
    unpack_sparse,
)


def _pruned_model(rng, sparsity=0.8):
    cfg = TransformerConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)
    params = init_params(cfg, rng)
    names = prunable_names(cfg)
    params = apply_masks(params, local_masks({n: np.abs(params[n]) for n in names}, sparsity))
    return cfg, params


@pytest.mark.parametrize("path", ["reference", "portable"])
def test_sparse_model_equals_dense_masked_model(rng, path, monkeypatch):
    monkeypatch.setenv("MINICOMPRESS_KERNEL", path)
    cfg, params = _pruned_model(rng)
    runtime = pack_sparse(params, cfg, min_sparsity=0.5)
    assert sorted(sparse_layers(runtime)) == sorted(prunable_names(cfg))  # head stays dense
    for b in (1, 3):  # one row (SpMV path) and several
        idx = rng.integers(0, cfg.vocab_size, (b, cfg.block_size))
        ours, _ = forward(runtime, idx, cfg, SPARSE)
        theirs, _ = forward(params, idx, cfg)
        assert_close(ours, theirs, rtol=1e-4, atol=1e-5, name="CSR model vs dense")


def test_int8_values_match_the_dequantized_model(rng):
    cfg, params = _pruned_model(rng)
    runtime = pack_sparse(params, cfg, min_sparsity=0.5, int8=True)
    dequantized = unpack_sparse(runtime)
    w, q = params["blocks.0.mlp.fc.w"], dequantized["blocks.0.mlp.fc.w"]
    assert not (q[w == 0] != 0).any()  # the pruned pattern is kept
    scale = np.abs(w).max(axis=0) / 127  # per output feature
    assert (np.abs(w - q) <= scale / 2 + 1e-7).all()  # the rounding error of int8
    idx = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    ours, _ = forward(runtime, idx, cfg, SPARSE)
    theirs, _ = forward(dequantized, idx, cfg)
    assert_close(ours, theirs, rtol=1e-4, atol=1e-5, name="int8 CSR vs dequantized")


def test_sparse_weight_round_trip_is_exact(rng):
    w = rng.standard_normal((40, 24)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0
    sw = to_sparse_weight(w)
    assert isinstance(sw, SparseWeight) and sw.shape == (40, 24)
    assert sw.w_t.indices.dtype == np.int16  # K fits: half the index bytes
    assert np.array_equal(to_dense_weight(sw), w)
    assert sw.nbytes() < w.nbytes  # 70% zeros: smaller even with float32 values


def test_min_sparsity_leaves_dense_layers_dense(rng):
    cfg, params = _pruned_model(rng, sparsity=0.5)
    assert sparse_layers(pack_sparse(params, cfg, min_sparsity=0.8)) == []
    assert len(sparse_layers(pack_sparse(params, cfg, min_sparsity=0.5))) == 4 * cfg.n_layer
    assert len(sparse_layers(pack_sparse(params, cfg, min_sparsity=0.0))) == len(linear_names(cfg))
    with pytest.raises(ValueError, match="min_sparsity"):
        pack_sparse(params, cfg, min_sparsity=2.0)


def test_sparse_layers_have_no_backward(rng):
    cfg, params = _pruned_model(rng)
    runtime = pack_sparse(params, cfg, min_sparsity=0.5)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    _, cache = SPARSE.forward("blocks.0.mlp.fc", x, runtime["blocks.0.mlp.fc.w"], None)
    with pytest.raises(TypeError, match="no backward"):
        SPARSE.backward("blocks.0.mlp.fc", np.ones((2, 64), np.float32), cache)
    # dense layers still train through it
    y, cache = SPARSE.forward("head", x, params["head.w"], None)
    dx, dw, _ = SPARSE.backward("head", np.ones_like(y), cache)
    assert dx.shape == x.shape and dw.shape == params["head.w"].shape


def test_break_even_benchmark_runs_and_reports_every_point():
    """The benchmark's structure only (speed is never asserted in a test)."""
    from minicompress.report.bench_prune import break_even

    rows, lowest = break_even([(16, 8)], m=4, sparsities=(0.0, 0.9), rounds=1, repeat=1)
    assert [(r["K"], r["N"], r["sparsity"]) for r in rows] == [(16, 8, 0.0), (16, 8, 0.9)]
    assert all(r["dense_ms"] > 0 and r["csr_ms"] > 0 for r in rows)
    assert set(lowest) == {"16x8"} and lowest["16x8"] in (None, 0.0, 0.9)
