"""minicompress/deploy/ops.py: the inference ops against the NumPy reference ops (float32 and
float64, odd shapes, strided input, fewer queries than keys, padding that hides every key
from a query), the vectorized exp against NumPy's, and the whole model through
``nn.model.forward`` with INFERENCE_OPS against the reference model."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.deploy import ops as D
from minicompress.nn import attention, ops
from minicompress.nn.backend import NUMPY_OPS
from minicompress.nn.gradcheck import random_params64
from minicompress.nn.model import LayerShape, TransformerConfig, forward

F32 = dict(rtol=2e-6, atol=2e-6)  # float32 rounding of a few dozen operations
# float64: the softmax's exp is exp_nonpositive (relative error < 1e-8), not libm's
F64 = dict(rtol=1e-8, atol=1e-9)
TOL = {np.float32: F32, np.float64: F64}


# ----------------------------------------------------------------------------------------
# exp_nonpositive
# ----------------------------------------------------------------------------------------


def test_exp_nonpositive_hand_values():
    x = np.array([0.0, -1.0, -np.log(2.0), -87.0, -87.5, -1e9, -np.inf])
    got = D.exp_nonpositive_array(x)
    want = [1.0, np.e**-1, 0.5, np.exp(-87.0), 0.0, 0.0, 0.0]
    assert_close(got, np.array(want), rtol=1e-8, atol=0.0, name="exp")


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 6.5e-8), (np.float64, 1e-8)])
def test_exp_nonpositive_against_numpy_over_its_range(rng, dtype, rtol):
    """float32: within the output's own rounding (half an ulp, 6e-8) of the exact value;
    float64: the documented bound of the scaling-and-squaring, 1e-8."""
    x = np.concatenate([-rng.uniform(0, 87, 200_000), -rng.uniform(0, 1e-4, 1000)])
    x = x.astype(dtype)
    exact = np.exp(x.astype(np.float64))
    got = D.exp_nonpositive_array(x)
    assert got.dtype == dtype
    rel = np.abs(got.astype(np.float64) - exact) / exact
    assert rel.max() < rtol, (rel.max(), x[np.argmax(rel)])


def test_exp_nonpositive_refuses_positive_and_nan():
    with pytest.raises(ValueError, match="<= 0"):
        D.exp_nonpositive_array(np.array([-1.0, 0.5]))
    with pytest.raises(ValueError, match="<= 0"):
        D.exp_nonpositive_array(np.array([np.nan]))
    with pytest.raises(TypeError, match="float32 or float64"):
        D.exp_nonpositive_array(np.array([-1, 0]))


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


def test_gelu_erf_against_scipy_in_float64(rng):
    from scipy.special import erfc

    x = np.concatenate([
        (rng.standard_normal(20000) * 4).astype(np.float32),
        np.float32([0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 9.5, -9.5, 13.0, -13.0, 1e4, -1e4]),
    ])  # fmt: skip
    y, _ = D.gelu_forward_infer(x, "none")
    x64 = x.astype(np.float64)
    z = np.abs(x64) / np.sqrt(2.0)
    ref = 0.5 * x64 * np.where(x64 < 0, erfc(z), 2.0 - erfc(z))  # GELU = x Phi(x), exactly
    # Numerical Recipes' erfc fit (fractional error < 1.2e-7) and float32 rounding: 2e-7
    # relative, also far out on the negative side where 0.5 x (1 + erf) cancels
    assert_close(y, ref, rtol=2e-7, atol=1e-37, name="gelu erf")


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_equals_reference(rng, approximate):
    x = (rng.standard_normal((4, 33)) * 4).astype(np.float32)
    y, cache = D.gelu_forward_infer(x, approximate)
    assert cache is None
    assert_close(y, ops.gelu_forward(x, approximate)[0], **F32, name="gelu")
    with pytest.raises(ValueError, match="approximate"):
        D.gelu_forward_infer(x, "sigmoid")


# ----------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------


def _qkv(rng, b, h, tq, tk, d, dtype):
    q = rng.standard_normal((b, h, tq, d)) * 2
    k = rng.standard_normal((b, h, tk, d)) * 2
    v = rng.standard_normal((b, h, tk, d))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "tq, tk",
    [(1, 1), (7, 7), (70, 70), (130, 130), (1, 9), (3, 9), (65, 100)],
)  # one position, odd sizes, more than one row block, decoding after a key/value cache
def test_attention_equals_reference(rng, dtype, causal, tq, tk):
    q, k, v = _qkv(rng, 2, 3, tq, tk, 8, dtype)
    y, cache = D.attention_forward_infer(q, k, v, causal)
    ref, _ = attention.attention_forward(q, k, v, causal)
    assert cache.p is None and y.dtype == dtype
    assert_close(y, ref, **TOL[dtype], name="attention")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tq", [5, 9])
def test_attention_with_padding_equals_reference(rng, causal, tq):
    """Padding at both ends; sequence 1 is padding at its first three positions, so under
    the causal mask its first queries see no key at all (a uniform row, as the reference),
    and sequence 2 is all padding."""
    tk = 9
    q, k, v = _qkv(rng, 3, 2, tq, tk, 4, np.float64)
    pad = np.zeros((3, tk), bool)
    pad[0, -2:] = True
    pad[1, :3] = True
    pad[2] = True
    y, _ = D.attention_forward_infer(q, k, v, causal, pad)
    ref, _ = attention.attention_forward(q, k, v, causal, pad)
    assert_close(y, ref, **F64, name="attention with padding")


def test_attention_accepts_strided_keys(rng):
    """Keys and values as the key/value cache hands them over: views of a longer buffer."""
    q, _, _ = _qkv(rng, 2, 2, 1, 1, 4, np.float32)
    buf_k, buf_v = (rng.standard_normal((2, 2, 16, 4)).astype(np.float32) for _ in range(2))
    k, v = buf_k[:, :, :6], buf_v[:, :, :6]
    y, _ = D.attention_forward_infer(q, k, v, True)
    ref, _ = attention.attention_forward(q, np.ascontiguousarray(k), np.ascontiguousarray(v))
    assert_close(y, ref, **F32, name="attention on views")


def test_attention_refuses_bad_shapes(rng):
    q, k, v = _qkv(rng, 1, 2, 4, 3, 4, np.float32)
    with pytest.raises(ValueError, match="more queries"):
        D.attention_forward_infer(q, k, v)
    q, k, v = _qkv(rng, 1, 2, 3, 3, 4, np.float32)
    with pytest.raises(ValueError, match="pad_mask"):
        D.attention_forward_infer(q, k, v, True, np.zeros((1, 2), bool))


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
