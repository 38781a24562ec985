"""minicompress/deploy/runtime.py and deploy/profile.py: the runtime's output against the
reference model (float64 and float32, the batch split between threads, an encoder with
padding), the int8 runtime against its simulation, generation with and without the
key/value cache, the per-storage dispatch, and the time breakdown."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.deploy.ops import INT8_INFERENCE_OPS
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


def test_batch_slices_round_as_linspace():
    """The shares' bounds are i B / n rounded half to even: NumPy's linspace, rounded."""
    for b in range(1, 40):
        for threads in range(1, 6):
            n = min(threads, b)
            bounds = np.linspace(0, b, n + 1).round().astype(int)
            want = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]
            assert [(s.start, s.stop) for s in batch_slices(b, threads)] == want


def test_one_blas_thread_sets_and_restores():
    from threadpoolctl import threadpool_info, threadpool_limits

    from minicompress.deploy.runtime import one_blas_thread

    if not [i for i in threadpool_info() if i["user_api"] == "blas"]:
        pytest.skip("no BLAS library loaded")
    with threadpool_limits(limits=2, user_api="blas"):
        before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        with one_blas_thread():
            inside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert inside == [1] * len(before)
    assert after == before


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
    params = _packed(init_params(cfg, rng), cfg, layers=["blocks.1.mlp.fc", "blocks.1.attn.qkv"])
    idx = rng.integers(0, cfg.vocab_size, (2, 12))  # 24 rows: the int8 MLP layer takes GELU
    with Runtime(params, cfg, RuntimeConfig(threads=1, fuse=False)) as rt:
        unfused = time_breakdown(rt, idx, repeat=1)
    assert "linear + GELU (Int8Linear)" not in unfused and "linear (Int8Linear)" in unfused
    with Runtime(params, cfg, RuntimeConfig(fuse=True)) as rt:
        parts = time_breakdown(rt, idx, repeat=2)
    for key in ("attention", "layer norm", "GELU", "other", "total"):  # GELU: block 0's
        assert key in parts
    assert "linear (DenseInference)" in parts and "linear (Int8Linear)" in parts
    assert "linear + GELU (Int8Linear)" in parts  # blocks.1.mlp.fc, GELU in its epilogue
    assert "linear + GELU (DenseInference)" not in parts
    timed = sum(v for k, v in parts.items() if k not in ("total", "other"))
    assert all(v > 0 for k, v in parts.items() if k != "other")
    assert timed <= parts["total"] * 1.5  # medians of parts need not add up exactly
    with pytest.raises(ValueError, match="repeat"):
        time_breakdown(rt, np.zeros((1, 2), int), repeat=0)


# ----------------------------------------------------------------------------------------
# int8 activations carried and GELU in the int8 layer's epilogue
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm, gelu", [("pre", "tanh"), ("post", "none")])
@pytest.mark.parametrize("threads, b", [(1, 3), (2, 4), (2, 1)])
def test_fused_runtime_gives_the_unfused_numbers_bit_for_bit(rng, norm, gelu, threads, b):
    """Every linear int8 (width 64: the carried codes fit every path): the layer norms'
    codes and the MLP's GELU + codes in the epilogue change nothing, on 1 and 2 threads,
    for a batch of one (Numba's threads share each kernel) and a split batch."""
    cfg = TransformerConfig(**{**TINY, "n_embd": 64, "n_head": 4}, norm=norm, gelu=gelu)
    params = _packed(_f32(init_params(cfg, rng)), cfg)
    idx = rng.integers(0, cfg.vocab_size, (b, 12))  # 12 or more rows per share: carried
    with Runtime(params, cfg, RuntimeConfig(threads=threads, fuse=True)) as fused:
        ours = fused.forward(idx)
        assert fused.ops is INT8_INFERENCE_OPS
    with Runtime(params, cfg, RuntimeConfig(threads=threads, fuse=False)) as unfused:
        theirs = unfused.forward(idx)
    assert type(ours) is np.ndarray
    np.testing.assert_array_equal(ours, theirs)


def test_fused_path_is_taken(rng, monkeypatch):
    """The MLP's first int8 layer runs with GELU in its epilogue and codes carried in and
    out: counted at int8_linear_fused."""
    from minicompress.quant import runtime as quant_runtime

    calls = []
    real = quant_runtime.int8_linear_fused

    def counting(x, packed, codes=None, activation="none", quantize_output=False):
        calls.append((codes is not None, activation, quantize_output))
        return real(x, packed, codes, activation, quantize_output)

    monkeypatch.setattr(quant_runtime, "int8_linear_fused", counting)
    cfg = TransformerConfig(**{**TINY, "n_embd": 64, "n_head": 4})
    params = _packed(_f32(init_params(cfg, rng)), cfg)
    with Runtime(params, cfg, RuntimeConfig(threads=1, fuse=True)) as rt:
        rt.forward(rng.integers(0, cfg.vocab_size, (2, 12)))
    # per block: qkv (ln1's codes), fc + GELU (ln2's codes in, codes out), mlp.proj (fc's
    # codes); then the head (ln_f's codes). attn.proj quantizes the attention's output itself
    assert calls.count((True, "gelu_tanh", True)) == cfg.n_layer
    assert calls.count((True, "none", False)) == 2 * cfg.n_layer + 1
    assert len(calls) == 3 * cfg.n_layer + 1


def test_runtime_config_refuses_a_fuse_that_is_not_a_bool():
    with pytest.raises(ValueError, match="fuse must be True or False; got 'yes'"):
        RuntimeConfig(fuse="yes")
