"""minicompress/deploy/compressed.py and format.py together: a compressed model (fp32,
int8 per channel, int4 per group, CSR, int8 CSR, a shrunk block) round-trips through one
file; damaged and foreign files are refused; and for every kind of compressed model the
runtime's output equals its simulation within a stated tolerance."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.deploy.compressed import load_runtime, runtime_params
from minicompress.deploy.format import (
    dense_params,
    file_bytes,
    load_compressed,
    read_compressed,
    save_compressed,
)
from minicompress.deploy.ops import INFERENCE_OPS
from minicompress.deploy.runtime import Runtime
from minicompress.kernels import PackedInt8Linear
from minicompress.nn.backend import NUMPY_OPS
from minicompress.nn.checkpoint import save_checkpoint
from minicompress.nn.model import LayerShape, TransformerConfig, forward, init_params, param_shapes
from minicompress.prune.masks import local_masks
from minicompress.prune.sparse import BREAK_EVEN, SparseWeight, to_sparse_weight
from minicompress.prune.structured import remove_structures
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.ptq import dequantized_params, quantize_weights
from minicompress.quant.tensor import QuantizedTensor, QuantSpec

TINY = dict(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16, mlp_ratio=4)
VOCAB = [chr(ord("a") + i) for i in range(13)]
W8 = QuantSpec(8, "symmetric", "channel")
W4_GROUP = QuantSpec(4, "asymmetric", "group", axis=-1, group_size=8)


def _model(rng):
    cfg = TransformerConfig(**TINY)
    params = init_params(cfg, rng)
    # weights of size O(0.1-1) so that quantization and sparsity change the logits visibly
    params = {k: (v * 10 if k.endswith(".w") else v) for k, v in params.items()}
    return params, cfg


def _sparse(params, names, sparsity):
    masks = local_masks({n: np.abs(params[n]) for n in names}, sparsity)
    return {**params, **{n: params[n] * masks[n] for n in names}}


# ----------------------------------------------------------------------------------------
# one file
# ----------------------------------------------------------------------------------------


def _mixed_model(rng):
    """fp32 embeddings and head, int8 per-channel block 0, int4 per-group qkv of block 1,
    CSR (float and int8) MLP of block 1, one head of block 1 removed."""
    params, cfg = _model(rng)
    keep = [np.array([True, True]), np.array([True, False])]
    params, cfg = remove_structures(params, cfg, "heads", keep)
    params = _sparse(params, ["blocks.1.mlp.fc.w", "blocks.1.mlp.proj.w"], 0.8)
    q8 = quantize_weights(params, cfg, W8, [f"blocks.0.{n}" for n in ("attn.qkv", "mlp.fc")], None)
    q4 = quantize_weights(params, cfg, W4_GROUP, ["blocks.1.attn.qkv"], None)
    stored = {**params, **q8, **q4}
    stored["blocks.1.mlp.fc.w"] = to_sparse_weight(params["blocks.1.mlp.fc.w"])
    stored["blocks.1.mlp.proj.w"] = to_sparse_weight(params["blocks.1.mlp.proj.w"], int8=True)
    return stored, cfg


def test_a_compressed_model_round_trips_through_one_file(rng, tmp_path):
    stored, cfg = _mixed_model(rng)
    path = save_compressed(tmp_path / "m", stored, cfg, VOCAB, {"quant": {"bits": 8}})
    m = read_compressed(tmp_path / "m")
    back, cfg2, vocab, meta = m.tensors, m.cfg, m.vocab, m.meta
    assert cfg2 == cfg and vocab == VOCAB and meta == {"quant": {"bits": 8}}
    assert set(back) == set(stored)
    for name, obj in stored.items():
        assert type(back[name]) is type(obj), name
    assert back["blocks.1.attn.qkv.w"].spec == W4_GROUP
    np.testing.assert_array_equal(back["blocks.0.mlp.fc.w"].q, stored["blocks.0.mlp.fc.w"].q)
    for name, a in dense_params(stored).items():
        np.testing.assert_array_equal(dense_params(back)[name], a, err_msg=name)
    assert file_bytes(path) == path.stat().st_size
    dense_size = sum(
        4 * int(np.prod(s)) for s in param_shapes(cfg, [LayerShape(2, 64)] * 2).values()
    )
    assert file_bytes(path) < dense_size  # smaller than the unpruned fp32 arrays alone


def test_damaged_and_foreign_files_are_refused(rng, tmp_path):
    stored, cfg = _mixed_model(rng)
    path = save_compressed(tmp_path / "m", stored, cfg, VOCAB)
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.mc"
    data[len(data) // 2] ^= 0x40
    flipped.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.mc"
    truncated.write_bytes(path.read_bytes()[:-100])
    foreign = tmp_path / "foreign.mc"
    np.savez(foreign.with_suffix(".npz"), a=np.ones(3))
    foreign.write_bytes(foreign.with_suffix(".npz").read_bytes())
    for bad in (flipped, truncated, foreign, tmp_path / "missing.mc"):
        with pytest.raises(ValueError) as e:
            load_compressed(bad)
        assert "\n" not in str(e.value) and str(bad.name) in str(e.value), str(e.value)


def test_save_refuses_what_is_not_a_model_before_writing(rng, tmp_path):
    stored, cfg = _mixed_model(rng)
    stored = {k: v for k, v in stored.items() if k != "ln_f.g"}
    with pytest.raises(ValueError, match="ln_f.g"):
        save_compressed(tmp_path / "m", stored, cfg, VOCAB)
    assert not (tmp_path / "m").exists()
    with pytest.raises(TypeError, match="no encoding for a str"):
        save_compressed(tmp_path / "m", {**stored, "ln_f.g": "x"}, cfg, VOCAB)


def test_dense_checkpoints_load_too(rng, tmp_path):
    params, cfg = _model(rng)
    save_checkpoint(tmp_path / "d", params, cfg, VOCAB)
    back, *_ = load_compressed(tmp_path / "d")
    for k, v in params.items():
        np.testing.assert_array_equal(back[k], v)


# ----------------------------------------------------------------------------------------
# the runtime against the simulation
# ----------------------------------------------------------------------------------------


def _logits(params, cfg, idx, linear=None, op_impl=NUMPY_OPS):
    kwargs = {} if linear is None else {"linear": linear}
    return forward(params, idx, cfg, op_impl=op_impl, **kwargs)[0]


@pytest.mark.parametrize("bits", [8, 4])
def test_w8a8_dynamic_runtime_equals_its_simulation(rng, tmp_path, bits):
    """int8 kernels (per-token uint8 activations, int32 sums) against FakeQuantLinear's
    dynamic activations on the dequantized weights; 4-bit symmetric per-channel codes (the
    demo's combined model: stored two per byte) run on the same kernels. Tolerance 2e-4 of
    the logits' scale at every position but at most one: a rare activation within an ulp of
    a rounding boundary rounds the other way (see quant/runtime.py) and moves the logits
    of its position by up to a few percent. The simulation runs the runtime's own ops
    (``INFERENCE_OPS``, tested against the reference ops in test_deploy_ops.py), so that
    only the linear layers differ: other float rounding in attention or GELU would move
    activations across rounding boundaries too."""
    params, cfg = _model(rng)
    q = quantize_weights(params, cfg, QuantSpec(bits, "symmetric", "channel"), embedding_spec=None)
    save_compressed(
        tmp_path / "m", {**params, **q}, cfg, VOCAB, {"quantization": {"activations": "dynamic"}}
    )
    rt, _, _ = load_runtime(tmp_path / "m")
    assert all(isinstance(rt.params[k], PackedInt8Linear) for k in q)
    assert set(read_compressed(tmp_path / "m").encodings[k] for k in q) == {f"int{bits}"}
    idx = rng.integers(0, cfg.vocab_size, (3, 16))
    ours = rt.forward(idx)
    sim_linear = FakeQuantLinear(None, "dynamic")
    sim = _logits(dequantized_params(params, q), cfg, idx, sim_linear, INFERENCE_OPS)
    scale = np.abs(sim).max()
    off = np.abs(ours - sim).max(axis=-1) > 2e-4 * scale  # [B, T] positions beyond 2e-4
    assert off.sum() <= 1, f"{off.sum()} positions differ: {np.argwhere(off).tolist()}"
    keep = ~off  # a flipped rounding moves one position's logits by a step of the grid
    assert_close(ours[keep], sim[keep], rtol=0, atol=2e-4 * scale, name="W8A8 logits")
    assert np.abs(ours - sim).max() <= 5e-2 * scale
    dense = _logits(params, cfg, idx)
    assert np.abs(dense - sim).max() > 10 * 2e-4 * scale  # the test can tell them apart


def test_weight_only_runtime_equals_its_simulation(rng, tmp_path):
    """int4 group-wise weights have no kernel: the runtime runs their dequantized values,
    exactly the weight-only simulation (float32 rounding of the ops only)."""
    params, cfg = _model(rng)
    q = quantize_weights(params, cfg, W4_GROUP)
    save_compressed(tmp_path / "m", {**params, **q}, cfg, VOCAB)
    rt, _, _ = load_runtime(tmp_path / "m")
    idx = rng.integers(0, cfg.vocab_size, (2, 16))
    sim = _logits(dequantized_params(params, q), cfg, idx)
    assert_close(rt.forward(idx), sim, rtol=1e-4, atol=1e-4, name="W4 logits")


@pytest.mark.parametrize("int8", [False, True])
def test_csr_runtime_equals_the_masked_model(rng, tmp_path, int8):
    """85% sparse blocks (beyond the break-even) on the CSR kernels (float32 values, or int8
    values with a scale per output feature) against the dense model with the same zeros
    (and, for int8, the same dequantized values)."""
    params, cfg = _model(rng)
    names = [f"blocks.{i}.{n}.w" for i in range(2) for n in ("attn.qkv", "mlp.fc", "mlp.proj")]
    params = _sparse(params, names, 0.85)
    stored = {**params, **{n: to_sparse_weight(params[n], int8) for n in names}}
    save_compressed(tmp_path / "m", stored, cfg, VOCAB)
    rt, _, _ = load_runtime(tmp_path / "m")
    assert all(isinstance(rt.params[n], SparseWeight) for n in names)
    idx = rng.integers(0, cfg.vocab_size, (2, 16))
    sim = _logits(dense_params(stored), cfg, idx)
    assert_close(rt.forward(idx), sim, rtol=1e-4, atol=1e-4, name="CSR logits")


def test_shrunk_model_runtime_equals_the_reference(rng, tmp_path):
    params, cfg = _model(rng)
    keep = [np.array([False, True]), np.array([True, True])]
    params, cfg = remove_structures(params, cfg, "heads", keep)
    save_compressed(tmp_path / "m", params, cfg, VOCAB)
    rt, _, _ = load_runtime(tmp_path / "m")
    idx = rng.integers(0, cfg.vocab_size, (2, 16))
    assert_close(rt.forward(idx), _logits(params, cfg, idx), rtol=1e-4, atol=1e-4, name="shrunk")


def test_csr_below_break_even_runs_dense(rng):
    """A CSR weight below the break-even sparsity is stored sparse but run as its dense
    values (same output)."""
    params, cfg = _model(rng)
    params = _sparse(params, ["blocks.0.mlp.fc.w"], BREAK_EVEN / 2)
    stored = {**params, "blocks.0.mlp.fc.w": to_sparse_weight(params["blocks.0.mlp.fc.w"])}
    rp = runtime_params(stored, cfg)
    assert isinstance(rp["blocks.0.mlp.fc.w"], np.ndarray)
    np.testing.assert_array_equal(rp["blocks.0.mlp.fc.w"], params["blocks.0.mlp.fc.w"])


def test_runtime_params_refuses_unknown_activations_and_dequantizes_weight_only(rng):
    params, cfg = _model(rng)
    with pytest.raises(ValueError, match="none, dynamic, static; got 'per-token'"):
        runtime_params(params, cfg, "per-token")
    rp = runtime_params({**params, **quantize_weights(params, cfg, W8, None, None)}, cfg)
    assert all(isinstance(v, np.ndarray) for v in rp.values())  # weight-only: dequantized
    assert isinstance(Runtime(rp, cfg).forward(np.zeros((1, 3), int)), np.ndarray)
    assert isinstance(quantize_weights(params, cfg, W8, None, None)["head.w"], QuantizedTensor)


def test_w8a8_static_checkpoint_runs_on_the_kernels_with_its_recorded_ranges(tmp_path):
    """A ``quantize --activations static`` checkpoint on the runtime: packed int8 layers with
    the calibrated ranges the file records, against the simulation ``load_quantized`` runs
    (the same tolerance as the dynamic model); without the ranges (dynamic) it differs."""
    from quant_models import tiny_trained

    from minicompress.deploy.format import load_quantized
    from minicompress.quant.pipeline import QuantizeConfig, quantize_model

    params, cfg, data = tiny_trained()
    q = quantize_model(
        params, cfg, data, QuantizeConfig(8, activations="static", calib_batches=1), False
    )
    vocab = data.tokenizer.chars
    save_compressed(tmp_path / "s", {**q.params, **q.qtensors}, cfg, vocab, q.meta)
    rt, _, meta = load_runtime(tmp_path / "s")
    assert meta["quantization"]["activations"] == "static"
    assert any(isinstance(v, PackedInt8Linear) for v in rt.params.values())
    sim_params, _, _, _, sim_linear = load_quantized(tmp_path / "s")
    idx = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, cfg.block_size))
    sim = _logits(sim_params, cfg, idx, sim_linear)
    ours, scale = rt.forward(idx), np.abs(sim).max()
    diff = np.abs(ours - sim)
    assert diff.mean() <= 1e-3 * scale and diff.max() <= 2e-2 * scale, (diff.mean(), diff.max())
    dynamic = Runtime(runtime_params(rt.params, cfg), cfg).forward(idx)  # per-token ranges
    assert np.abs(dynamic - ours).max() > 10 * diff.mean()
