"""minicompress/deploy/runtime.py and deploy/profile.py: the runtime's output against the
reference model (float64 and float32, the batch split between threads, an encoder with
padding), the int8 runtime against its simulation, generation with and without the
key/value cache, the per-storage dispatch, and the time breakdown."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.deploy.profile import time_breakdown
from minicompress.deploy.runtime import Runtime, RuntimeConfig, RuntimeLinear, batch_slices
from minicompress.kernels import PackedInt8Linear, quantized_linear_reference
from minicompress.nn.backend import NUMPY_OPS
from minicompress.nn.gradcheck import random_params64
from minicompress.nn.linear import DENSE
from minicompress.nn.model import (
    LayerShape,
    TransformerConfig,
    forward,
    generate,
    init_params,
    linear_names,
)
from minicompress.quant.ptq import quantize_weights
from minicompress.quant.runtime import pack_int8_params
from minicompress.quant.tensor import QuantSpec

TINY = dict(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16, mlp_ratio=2)
F64 = dict(rtol=1e-8, atol=1e-9)  # exp_nonpositive in the softmax: < 1e-8 relative


def _f32(params):
    return {k: v.astype(np.float32) for k, v in params.items()}


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("b", [1, 2, 5])
def test_runtime_equals_reference_model(rng, threads, b):
    """float64 parameters, a shrunk block; each share of the batch is a separate forward."""
    cfg = TransformerConfig(**TINY)
    params = random_params64(cfg, rng, [LayerShape(2, 32), LayerShape(1, 7)])
    idx = rng.integers(0, cfg.vocab_size, (b, 12))
    with Runtime(params, cfg, RuntimeConfig(threads=threads)) as rt:
        ours = rt.forward(idx)
    ref, _ = forward(params, idx, cfg, op_impl=NUMPY_OPS)
    assert_close(ours, ref, **F64, name="logits")


def test_runtime_float32_equals_reference_model(rng):
    """float32 as deployed: the tolerance is float32 rounding through two blocks."""
    cfg = TransformerConfig(**TINY)
    params = _f32(random_params64(cfg, rng))
    idx = rng.integers(0, cfg.vocab_size, (4, 12))
    with Runtime(params, cfg) as rt:
        ours = rt.forward(idx)
    ref, _ = forward(params, idx, cfg, op_impl=NUMPY_OPS)
    assert ours.dtype == np.float32
    assert_close(ours, ref, rtol=1e-4, atol=1e-4, name="logits")


def test_runtime_encoder_splits_padding_and_token_types_with_the_batch(rng):
    cfg = TransformerConfig(
        **TINY,
        norm="post",
        gelu="none",
        causal=False,
        type_vocab_size=2,
        emb_norm=True,
        head=False,
    )
    params = random_params64(cfg, rng)
    idx = rng.integers(0, cfg.vocab_size, (5, 8))
    types = rng.integers(0, 2, (5, 8))
    pad = np.zeros((5, 8), bool)
    pad[1, 5:] = True
    pad[4, 2:] = True
    with Runtime(params, cfg, RuntimeConfig(threads=2)) as rt:
        ours = rt.forward(idx, pad_mask=pad, token_types=types)
    ref, _ = forward(params, idx, cfg, pad_mask=pad, token_types=types, op_impl=NUMPY_OPS)
    assert_close(ours, ref, **F64, name="hidden states")


@pytest.mark.parametrize(
    "b, threads, min_rows, sizes",
    [(5, 2, 1, [2, 3]), (1, 2, 1, [1]), (7, 3, 1, [2, 3, 2]), (8, 4, 3, [4, 4]), (3, 1, 1, [3])],
)
def test_batch_slices(b, threads, min_rows, sizes):
    parts = batch_slices(b, threads, min_rows)
    assert [s.stop - s.start for s in parts] == sizes
    assert parts[0].start == 0 and parts[-1].stop == b
    assert all(p.stop == q.start for p, q in zip(parts, parts[1:], strict=False))


def test_runtime_config_refuses_bad_values():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            RuntimeConfig(threads=bad)


# ----------------------------------------------------------------------------------------
# the runtime linear
# ----------------------------------------------------------------------------------------


def _packed(params, cfg, layers=None):
    q = quantize_weights(params, cfg, QuantSpec(8, "symmetric", "channel"), layers, None)
    return pack_int8_params(params, cfg, q)


class ReferenceInt8:
    """A packed layer computed by ``kernels.quantized_linear_reference`` (NumPy) on the same
    codes, scales and bias (inside the packed layer)."""

    def forward(self, name, x, w: PackedInt8Linear, b):
        y = quantized_linear_reference(x.reshape(-1, w.k), w.w_q(), w.w_scale, w.bias)
        return y.reshape(*x.shape[:-1], w.n), None

    def backward(self, name, dy, cache):
        raise AssertionError("not called")


def test_int8_runtime_equals_its_simulation(rng):
    """Every linear layer on the int8 kernels against the NumPy reference of the same
    integer arithmetic through the same model: equal to float32 rounding."""
    cfg = TransformerConfig(**TINY)
    params = init_params(cfg, rng)
    packed = _packed(params, cfg)
    assert all(isinstance(packed[n + ".w"], PackedInt8Linear) for n in linear_names(cfg))
    idx = rng.integers(0, cfg.vocab_size, (3, 12))
    with Runtime(packed, cfg) as rt:
        ours = rt.forward(idx)
    sim = RuntimeLinear({np.ndarray: DENSE, PackedInt8Linear: ReferenceInt8()})
    ref, _ = forward(packed, idx, cfg, sim, op_impl=NUMPY_OPS)
    assert_close(ours, ref, rtol=1e-4, atol=1e-5, name="int8 logits")
    dense, _ = forward(params, idx, cfg, op_impl=NUMPY_OPS)
    assert 0 < np.abs(ours - dense).max() < 0.05 * np.abs(dense).max()  # quantized, close


def test_runtime_linear_refuses_unknown_storage_and_backward(rng):
    lin = RuntimeLinear()
    with pytest.raises(TypeError, match=r"'blocks.0.mlp.fc' stores its weight as list"):
        lin.forward("blocks.0.mlp.fc", np.ones((2, 3), np.float32), [[1.0]], None)
    with pytest.raises(TypeError, match="no backward"):
        lin.backward("head", np.ones((2, 3)), None)
    assert lin.kernel_of(np.ones((2, 2))) == "DenseInference"
    assert lin.kernel_of("x") == "none"


# ----------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens", [5, 15])  # 15 after a prompt of 3 slides past 12
def test_generation_with_the_cache_equals_without_and_the_reference(rng, n_tokens):
    """Greedy: the runtime with its key/value cache, the runtime without, and the reference
    model's loop without cache give the same tokens (float64 weights of size O(1), so the
    logits' margins are far above the ops' rounding)."""
    cfg = TransformerConfig(**TINY)
    params = random_params64(cfg, rng)
    prompt = np.array([3, 1, 4])
    greedy = np.random.default_rng(0)
    with Runtime(params, cfg) as rt:
        cached = rt.generate(prompt, n_tokens, greedy, temperature=0.0)
        uncached = rt.generate(prompt, n_tokens, greedy, temperature=0.0, use_cache=False)
    ref = generate(params, cfg, prompt, n_tokens, greedy, 0.0, linear=DENSE, use_cache=False)
    assert len(cached) == 3 + n_tokens
    np.testing.assert_array_equal(cached, ref)
    np.testing.assert_array_equal(uncached, ref)


def test_sampled_generation_follows_the_seed(rng):
    cfg = TransformerConfig(**TINY)
    params = random_params64(cfg, rng)
    with Runtime(params, cfg) as rt:
        a, b = (rt.generate([1], 8, np.random.default_rng(7), 0.9, 5) for _ in range(2))
    ref = generate(params, cfg, np.array([1]), 8, np.random.default_rng(7), 0.9, 5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, ref)


# ----------------------------------------------------------------------------------------
# the time breakdown
# ----------------------------------------------------------------------------------------


def test_time_breakdown_names_every_part(rng):
    cfg = TransformerConfig(**TINY)
    params = _packed(init_params(cfg, rng), cfg, layers=["blocks.1.mlp.fc"])
    with Runtime(params, cfg) as rt:
        parts = time_breakdown(rt, rng.integers(0, cfg.vocab_size, (2, 12)), repeat=2)
    for key in ("attention", "layer norm", "GELU", "other", "total"):
        assert key in parts
    assert "linear (DenseInference)" in parts and "linear (Int8Linear)" in parts
    timed = sum(v for k, v in parts.items() if k not in ("total", "other"))
    assert all(v > 0 for k, v in parts.items() if k != "other")
    assert timed <= parts["total"] * 1.5  # medians of parts need not add up exactly
    with pytest.raises(ValueError, match="repeat"):
        time_breakdown(rt, np.zeros((1, 2), int), repeat=0)
