"""minicompress/deploy/ops.py: the inference ops against the NumPy reference ops (float32 and
float64, odd shapes, strided input), and the whole model through ``nn.model.forward`` with
INFERENCE_OPS against the reference model (float64, and float32 on the SIMD attention).
The exp, GELU scalars: tests/test_kernels_fastmath.py; attention: tests/test_deploy_attention.py."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.deploy import ops as D
from minicompress.nn import ops
from minicompress.nn.backend import NUMPY_OPS
from minicompress.nn.gradcheck import random_params64
from minicompress.nn.model import LayerShape, TransformerConfig, forward

F32 = dict(rtol=2e-6, atol=2e-6)  # float32 rounding of a few dozen operations
# float64: the softmax's exp is exp_nonpositive (relative error < 1e-8), not libm's
F64 = dict(rtol=1e-8, atol=1e-9)
TOL = {np.float32: F32, np.float64: F64}


# ----------------------------------------------------------------------------------------
# layer norm and GELU
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_layernorm_equals_reference(rng, dtype, contiguous):
    x = rng.standard_normal((3, 5, 26)) * 3 + 1
    if not contiguous:
        x = x[:, ::2]  # a strided view
    x = x.astype(dtype)
    g, b = (rng.standard_normal(26).astype(dtype) for _ in range(2))
    y, cache = D.layernorm_forward_infer(x, g, b, 1e-5)
    assert cache is None and y.dtype == dtype and y.shape == x.shape
    assert_close(y, ops.layernorm_forward(x, g, b, 1e-5)[0], **TOL[dtype], name="layernorm")


def test_layernorm_uses_eps(rng):
    """A constant row has variance 0: y = b exactly, whatever eps; eps = 1e-12 (BERT) and a
    row of variance 1e-8 tell eps apart."""
    x = np.stack([np.full(8, 3.0), 1e-4 * np.arange(8) - 3.5e-4])  # [2, 8]
    g, b = np.ones(8), np.zeros(8)
    for eps in (1e-5, 1e-12):
        assert_close(
            D.layernorm_forward_infer(x, g, b, eps)[0],
            ops.layernorm_forward(x, g, b, eps)[0],
            **F64,
            name=f"eps={eps}",
        )


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_equals_reference(rng, approximate):
    x = (rng.standard_normal((4, 33)) * 4).astype(np.float32)
    y, cache = D.gelu_forward_infer(x, approximate)
    assert cache is None
    assert_close(y, ops.gelu_forward(x, approximate)[0], **F32, name="gelu")
    with pytest.raises(ValueError, match="approximate"):
        D.gelu_forward_infer(x, "sigmoid")


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_shared_among_threads_is_bit_for_bit(rng, approximate):
    """A large GELU on two Numba threads (a batch of one) gives the one-thread bits; an
    odd size leaves the parts unequal."""
    from minicompress.deploy.runtime import numba_threads

    x = (rng.standard_normal(D.GELU_SPLIT_MIN + 7) * 4).astype(np.float32)
    with numba_threads(1):
        one = D.gelu_forward_infer(x, approximate)[0]
    with numba_threads(2):
        two = D.gelu_forward_infer(x, approximate)[0]
    np.testing.assert_array_equal(two, one)
    assert_close(one, ops.gelu_forward(x, approximate)[0], **F32, name="gelu")


def test_inference_ops_have_no_backward():
    for name in ("embedding_backward", "layernorm_backward", "gelu_backward"):
        with pytest.raises(TypeError, match="no backward"):
            getattr(D.INFERENCE_OPS, name)(np.ones(3), None)
    with pytest.raises(TypeError, match="no backward"):
        D.INFERENCE_OPS.attention_backward(np.ones(3), None, None)


# ----------------------------------------------------------------------------------------
# the whole model
# ----------------------------------------------------------------------------------------

TINY = dict(vocab_size=11, block_size=9, n_layer=2, n_head=2, n_embd=8, mlp_ratio=2)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_model_with_inference_ops_equals_reference_model(rng, norm):
    """A shrunk block (1 head, MLP of 5) included; float64 parameters."""
    cfg = TransformerConfig(**TINY, norm=norm)
    params = random_params64(cfg, rng, [LayerShape(1, 5), LayerShape(2, 16)])
    idx = rng.integers(0, cfg.vocab_size, (3, 9))
    ours, cache = forward(params, idx, cfg, op_impl=D.INFERENCE_OPS)
    ref, _ = forward(params, idx, cfg, op_impl=NUMPY_OPS)
    assert_close(ours, ref, **F64, name="logits")
    with pytest.raises(TypeError, match="no backward"):
        from minicompress.nn.model import backward

        backward(np.ones_like(ours), cache)


def test_encoder_with_inference_ops_equals_reference(rng):
    """BERT-style: post-LN, erf GELU, token types, embedding norm, no head, padding."""
    cfg = TransformerConfig(
        **{**TINY, "n_head": 2},
        norm="post",
        gelu="none",
        causal=False,
        ln_eps=1e-12,
        type_vocab_size=2,
        emb_norm=True,
        head=False,
    )
    params = random_params64(cfg, rng)
    idx = rng.integers(0, cfg.vocab_size, (2, 7))
    types = rng.integers(0, 2, (2, 7))
    pad = np.zeros((2, 7), bool)
    pad[1, 4:] = True
    ours, _ = forward(params, idx, cfg, pad_mask=pad, token_types=types, op_impl=D.INFERENCE_OPS)
    ref, _ = forward(params, idx, cfg, pad_mask=pad, token_types=types, op_impl=NUMPY_OPS)
    assert_close(ours, ref, **F64, name="hidden states")


@pytest.mark.parametrize("norm, causal, gelu", [("pre", True, "tanh"), ("post", False, "none")])
def test_float32_model_with_inference_ops_equals_float64_reference(rng, norm, causal, gelu):
    """float32 parameters and heads of width 16: the SIMD attention on views of the qkv
    projection, the float32 GELU; against the NumPy model in float64 on the same numbers,
    with padding on the encoder."""
    cfg = TransformerConfig(
        vocab_size=11, block_size=20, n_layer=2, n_head=2, n_embd=32, mlp_ratio=2,
        norm=norm, causal=causal, gelu=gelu,
    )  # fmt: skip
    params64 = random_params64(cfg, rng)
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    params64 = {k: v.astype(np.float64) for k, v in params32.items()}
    idx = rng.integers(0, cfg.vocab_size, (3, 20))
    pad = None
    if not causal:
        pad = np.zeros((3, 20), bool)
        pad[1, 13:] = True
    ours, _ = forward(params32, idx, cfg, pad_mask=pad, op_impl=D.INFERENCE_OPS)
    ref, _ = forward(params64, idx, cfg, pad_mask=pad, op_impl=NUMPY_OPS)
    assert ours.dtype == np.float32
    assert_close(ours, ref, rtol=1e-4, atol=1e-4, name="float32 model")


# ----------------------------------------------------------------------------------------
# layer norm that also quantizes its output (int8 activations carried)
# ----------------------------------------------------------------------------------------


def test_layernorm_with_codes_equals_layernorm_then_quantization(rng):
    from minicompress.kernels.carried import codes_of, row_codes
    from minicompress.kernels.reference import quantize_rows_uint8

    x = (rng.standard_normal((3, 11, 64)) * 3 + 1).astype(np.float32)
    g, b = (rng.standard_normal(64).astype(np.float32) for _ in range(2))
    y, cache = D.layernorm_codes_forward_infer(x, g, b, 1e-5)
    plain, _ = D.layernorm_forward_infer(x, g, b, 1e-5)
    assert cache is None and y.shape == x.shape
    np.testing.assert_array_equal(y, plain)  # the same float32 bits
    codes = codes_of(y)
    q, scale, zero_point = quantize_rows_uint8(plain.reshape(-1, 64))  # the NumPy reference
    np.testing.assert_array_equal(codes.codes[:33, :64], q)
    np.testing.assert_array_equal(codes.scale, scale)
    np.testing.assert_array_equal(codes.zero_point, zero_point)
    np.testing.assert_array_equal(codes.codes[:33], row_codes(plain.reshape(-1, 64)).codes[:33])
    # too few rows (a generated token), float64, or a non-finite output: a plain array
    for small in (x[:1, :5], x.astype(np.float64)):
        gs, bs = g.astype(small.dtype), b.astype(small.dtype)
        out, _ = D.layernorm_codes_forward_infer(small, gs, bs)
        assert codes_of(out) is None
        expected = ops.layernorm_forward(small, gs, bs, 1e-5)[0]
        assert_close(out, expected, **TOL[small.dtype.type], name="layer norm")
    bad = x.copy()
    bad[0, 0, 0] = np.inf
    assert codes_of(D.layernorm_codes_forward_infer(bad, g, b)[0]) is None
