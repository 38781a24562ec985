"""minicompress/nn/attention.py: scaled dot-product attention against PyTorch's
``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` (live or golden), by hand,
and by float64 finite differences.

Mask conventions compared here (see make_golden.py): our ``pad_mask`` True = padding, never
attended to (= ``nn.MultiheadAttention`` key_padding_mask, True = ignore); torch SDPA's
boolean ``attn_mask`` is the opposite, True = takes part, so it is built as ``~pad_mask``.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close, assert_grads_ok, check_grads
from make_golden import ATTENTION_BUILDERS, load_golden

from minicompress.nn.attention import (
    attention_backward,
    attention_forward,
    merge_heads,
    split_heads,
)
from minicompress.nn.ops import linear_backward, linear_forward


def ours_sdpa(c):
    pad = c.get("pad_mask")
    y, cache = attention_forward(c["q"], c["k"], c["v"], bool(c["causal"]), pad)
    dq, dk, dv = attention_backward(c["dy"], cache)
    return dict(y=y, dq=dq, dk=dk, dv=dv)


def ours_mha(c):
    """Our ops assembled into nn.MultiheadAttention: qkv linear, split, attend, merge, proj."""
    x, h, width = c["x"], int(c["n_head"]), c["x"].shape[-1]
    qkv, qkv_cache = linear_forward(x, c["qkv_w"], c["qkv_b"])  # [B, T, C] -> [B, T, 3C]
    q, k, v = (split_heads(qkv[..., i * width : (i + 1) * width], h) for i in range(3))
    y, att_cache = attention_forward(q, k, v, bool(c["causal"]), c.get("pad_mask"))
    out, proj_cache = linear_forward(merge_heads(y), c["proj_w"], c["proj_b"])  # [B, T, C]
    dmerged, dproj_w, dproj_b = linear_backward(c["dy"], proj_cache)
    dq, dk, dv = attention_backward(split_heads(dmerged, h), att_cache)  # [B, H, T, D] each
    dqkv = np.concatenate([merge_heads(d) for d in (dq, dk, dv)], axis=-1)  # [B, T, 3C]
    dx, dqkv_w, dqkv_b = linear_backward(dqkv, qkv_cache)
    return dict(y=out, dx=dx, dqkv_w=dqkv_w, dqkv_b=dqkv_b, dproj_w=dproj_w, dproj_b=dproj_b)


def ours(name, case):
    return (ours_mha if name.startswith("mha") else ours_sdpa)(case)


TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}


@pytest.mark.parametrize("name", list(ATTENTION_BUILDERS))
def test_matches_torch_golden(name):
    case = load_golden(name)
    for key, got in ours(name, case).items():
        assert_close(got, case[key], name=f"{name}.{key}", **TOL[np.float64])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(ATTENTION_BUILDERS))
def test_matches_torch_live(torch, rng, name, dtype):
    case = ATTENTION_BUILDERS[name](torch, rng, dtype)
    for key, got in ours(name, case).items():
        assert got.dtype == dtype
        assert_close(got, case[key], name=f"{name}.{key}", **TOL[dtype])


# ----------------------------------------------------------------------------------------
# by hand
# ----------------------------------------------------------------------------------------


def test_single_key_returns_its_value(rng):
    q, k, v = (rng.standard_normal((1, 1, 1, 4)) for _ in range(3))
    y, cache = attention_forward(q, k, v, causal=False)
    np.testing.assert_array_equal(cache.p, [[[[1.0]]]])
    np.testing.assert_allclose(y, v, rtol=1e-15)


def test_causal_probabilities_by_hand():
    # all scores 0: query t spreads evenly over keys 0..t
    q = np.zeros((1, 1, 3, 2))
    _, cache = attention_forward(q, q, q, causal=True)
    expected = [[1, 0, 0], [1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3]]
    np.testing.assert_allclose(cache.p[0, 0], expected, rtol=1e-15, atol=0.0)


def test_scale_is_one_over_sqrt_head_width():
    # q.k = D * 1 * 1 = 4 for key 0, 0 for key 1: p0 = e^(4/sqrt 4) / (e^2 + 1)
    q = np.ones((1, 1, 1, 4))
    k = np.stack([np.ones(4), np.zeros(4)])[None, None]  # [1, 1, 2, 4]
    _, cache = attention_forward(q, k, k, causal=False)
    assert cache.p[0, 0, 0, 0] == pytest.approx(np.e**2 / (np.e**2 + 1.0), rel=1e-14)


@pytest.mark.parametrize("causal", [True, False])
def test_padding_keys_get_exactly_zero_probability(rng, causal):
    q, k, v = (rng.standard_normal((2, 2, 5, 3)).astype(np.float32) for _ in range(3))
    pad = np.array([[False, False, True, False, True], [False] * 5])
    _, cache = attention_forward(q, k, v, causal, pad)
    assert (cache.p[0, :, :, [2, 4]] == 0.0).all()
    if causal:
        assert (np.triu(cache.p[1, 0], k=1) == 0.0).all()
    np.testing.assert_allclose(cache.p.sum(-1), 1.0, rtol=1e-6)


def test_query_that_sees_no_key_is_uniform_float32(rng):
    """The documented contract, in float32: a query whose keys are all padding gets a
    uniform, finite row."""
    dtype = np.float32
    q, k, v = (rng.standard_normal((1, 1, 4, 3)).astype(dtype) for _ in range(3))
    pad = np.array([[True, False, False, True]])  # query 0 (causal) sees key 0 only: padding
    y, cache = attention_forward(q, k, v, True, pad)
    np.testing.assert_array_equal(cache.p[0, 0, 0], np.full(4, 0.25, dtype))
    assert np.isfinite(y).all()


def test_query_that_sees_no_key_is_uniform_float64(rng):
    q, k, v = (rng.standard_normal((1, 1, 3, 4)) for _ in range(3))
    pad = np.array([[True, False, False]])
    _, cache = attention_forward(q, k, v, True, pad)
    np.testing.assert_allclose(cache.p[0, 0, 0], np.full(3, 1 / 3), rtol=1e-12)


def test_split_and_merge_heads(rng):
    x = rng.standard_normal((2, 3, 6))
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 3, 2) and h.flags.c_contiguous
    np.testing.assert_array_equal(h[1, 2, 0], x[1, 0, 4:6])  # head 2 holds columns 4..5
    np.testing.assert_array_equal(merge_heads(h), x)


# ----------------------------------------------------------------------------------------
# float64 finite differences (right padding: every query sees at least one key)
# ----------------------------------------------------------------------------------------

MASKS = {
    "none": None,
    "right": np.array([[False, False, False, True, True], [False] * 5]),
    "holes": np.array([[False, True, False, False, True], [False, False, True, False, False]]),
}


@pytest.mark.parametrize("extra", [False, True], ids=["dy", "dy+dp_extra"])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_attention_gradcheck(rng, causal, mask, extra):
    q, k, v = (rng.standard_normal((2, 2, 5, 3)) for _ in range(3))
    pad = MASKS[mask]
    r = rng.standard_normal((2, 2, 5, 3))
    rp = rng.standard_normal((2, 2, 5, 5)) if extra else None

    def loss():
        y, cache = attention_forward(q, k, v, causal, pad)
        return float(np.sum(y * r) + (np.sum(cache.p * rp) if extra else 0.0))

    _, cache = attention_forward(q, k, v, causal, pad)
    dq, dk, dv = attention_backward(r, cache, rp)
    errors = check_grads(loss, {"q": q, "k": k, "v": v}, {"q": dq, "k": dk, "v": dv})
    assert_grads_ok(errors)


def test_backward_does_not_mutate(rng):
    q, k, v, dy = (rng.standard_normal((1, 2, 4, 3)) for _ in range(4))
    dp = rng.standard_normal((1, 2, 4, 4))
    before = [a.copy() for a in (q, k, v, dy, dp)]
    _, cache = attention_forward(q, k, v, True)
    p0 = cache.p.copy()
    attention_backward(dy, cache, dp)
    for a, b in zip((q, k, v, dy, dp, cache.p), (*before, p0), strict=True):
        np.testing.assert_array_equal(a, b)
