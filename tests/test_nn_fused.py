"""minicompress/nn/fused.py (and nn/backend.py): the Numba ops against their NumPy twins
(float32, tight tolerance, odd shapes, strided views, padding that hides every key from a
query), against PyTorch's golden files, and by float64 finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close, assert_grads_ok, check_grads
from make_golden import load_golden

from minicompress.nn import attention, backend, fused, ops

F32 = dict(rtol=1e-5, atol=1e-6)  # float32 rounding; the formulas are the same


def _strided(rng, shape, dtype, contiguous):
    """An array of ``shape``; when not ``contiguous``, a view with every other element of
    the last axis of a wider array (non-unit stride on the reduced axis)."""
    if contiguous:
        return rng.standard_normal(shape).astype(dtype)
    wide = rng.standard_normal((*shape[:-1], 2 * shape[-1])).astype(dtype)
    return wide[..., ::2]


# ----------------------------------------------------------------------------------------
# against torch's goldens (an independent reference, also without torch)
# ----------------------------------------------------------------------------------------


def test_embedding_backward_matches_torch_golden():
    c = load_golden("embedding")
    _, cache = ops.embedding_forward(c["idx"], c["table"])
    dtable = fused.embedding_backward_fused(c["dy"], cache)
    assert_close(dtable, c["dtable"], rtol=1e-12, atol=1e-13, name="embedding.dtable")


@pytest.mark.parametrize("contiguous", [True, False])
def test_embedding_backward_equals_reference(rng, contiguous):
    """Repeated ids (most of a small vocabulary hit many times, some never)."""
    idx = rng.integers(0, 9, size=(3, 11))  # V = 12: ids 9..11 never occur
    dout = _strided(rng, (3, 11, 6), np.float32, contiguous)
    _, cache = ops.embedding_forward(idx, np.zeros((12, 6), np.float32))
    ours = fused.embedding_backward_fused(dout, cache)
    assert ours.dtype == np.float32 and not ours[9:].any()
    assert_close(ours, ops.embedding_backward(dout, cache), **F32, name="dtable")


def test_layernorm_matches_torch_golden():
    c = load_golden("layernorm")
    y, cache = fused.layernorm_forward_fused(c["x"], c["g"], c["b"])
    dx, dg, db = fused.layernorm_backward_fused(c["dy"], cache)
    for key, got in dict(y=y, dx=dx, dg=dg, db=db).items():
        assert_close(got, c[key], rtol=1e-12, atol=1e-13, name=f"layernorm.{key}")


@pytest.mark.parametrize("name, approximate", [("gelu_tanh", "tanh"), ("gelu_erf", "none")])
def test_gelu_matches_torch_golden(name, approximate):
    c = load_golden(name)
    y, cache = fused.gelu_forward_fused(c["x"], approximate)
    dx = fused.gelu_backward_fused(c["dy"], cache)
    assert_close(y, c["y"], rtol=1e-12, atol=1e-13, name=f"{name}.y")
    assert_close(dx, c["dx"], rtol=1e-12, atol=1e-13, name=f"{name}.dx")


@pytest.mark.parametrize(
    "name", ["sdpa_causal", "sdpa_bidirectional", "sdpa_pad", "sdpa_causal_pad"]
)
def test_attention_matches_torch_golden(name):
    c = load_golden(name)
    y, cache = fused.attention_forward_fused(
        c["q"], c["k"], c["v"], bool(c["causal"]), c.get("pad_mask")
    )
    dq, dk, dv = fused.attention_backward_fused(c["dy"], cache)
    for key, got in dict(y=y, dq=dq, dk=dk, dv=dv).items():
        assert_close(got, c[key], rtol=1e-10, atol=1e-12, name=f"{name}.{key}")


# ----------------------------------------------------------------------------------------
# fused vs reference, float32
# ----------------------------------------------------------------------------------------

ROW_SHAPES = [(1, 1), (3, 7), (2, 5, 13), (4, 3, 64), (1, 2, 3, 33)]


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_layernorm_fused_equals_reference(rng, shape, contiguous):
    x = _strided(rng, shape, np.float32, contiguous) * 3 + 1
    g = _strided(rng, shape[-1:], np.float32, contiguous)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    dy = _strided(rng, shape, np.float32, contiguous)
    before = [a.copy() for a in (x, g, b, dy)]
    y_ref, c_ref = ops.layernorm_forward(x, g, b)
    y, c = fused.layernorm_forward_fused(x, g, b)
    grads_ref = ops.layernorm_backward(dy, c_ref)
    grads = fused.layernorm_backward_fused(dy, c)
    for name, a, r in zip(("y", "dx", "dg", "db"), (y, *grads), (y_ref, *grads_ref), strict=True):
        assert a.dtype == np.float32 and a.shape == r.shape
        assert_close(a, r, name=f"layernorm.{name}", **F32)
    for a, b0 in zip((x, g, b, dy), before, strict=True):
        np.testing.assert_array_equal(a, b0)  # inputs untouched


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_gelu_fused_equals_reference(rng, shape, contiguous, approximate):
    x = _strided(rng, shape, np.float32, contiguous) * 3
    dy = _strided(rng, shape, np.float32, contiguous)
    x0, dy0 = x.copy(), dy.copy()
    y_ref, c_ref = ops.gelu_forward(x, approximate)
    y, c = fused.gelu_forward_fused(x, approximate)
    assert y.dtype == np.float32
    assert_close(y, y_ref, name="gelu.y", **F32)
    assert_close(
        fused.gelu_backward_fused(dy, c), ops.gelu_backward(dy, c_ref), name="gelu.dx", **F32
    )
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)


ATT_SHAPES = [(1, 1, 1, 1), (2, 3, 7, 5), (3, 1, 13, 1), (1, 2, 33, 8)]


def _pad_mask(rng, b, t, kind):
    """None, random padding, or padding that leaves some query with no key at all."""
    if kind == "none":
        return None
    pad = rng.random((b, t)) < 0.4
    if kind == "blind":
        pad[0, 0] = True  # causal query 0 of sequence 0 sees only key 0: padding
        pad[-1, :] = True  # every query of the last sequence sees nothing
    return pad


@pytest.mark.parametrize("extra", [False, True], ids=["dy", "dy+dp_extra"])
@pytest.mark.parametrize("kind", ["none", "random", "blind"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("shape", ATT_SHAPES, ids=str)
def test_attention_fused_equals_reference(rng, shape, causal, kind, extra):
    b, h, t, d = shape
    base = rng.standard_normal((b, h, t, 3 * d)).astype(np.float32)
    q, k, v = base[..., :d], base[..., d : 2 * d], base[..., 2 * d :]  # strided views
    dy = rng.standard_normal(shape).astype(np.float32)
    dp = rng.standard_normal((b, h, t, t)).astype(np.float32) if extra else None
    pad = _pad_mask(rng, b, t, kind)
    before = [a.copy() for a in (base, dy, *(() if dp is None else (dp,)))]
    y_ref, c_ref = attention.attention_forward(q, k, v, causal, pad)
    y, c = fused.attention_forward_fused(q, k, v, causal, pad)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert_close(y, y_ref, name="attention.y", **F32)
    assert_close(c.p, c_ref.p, name="attention.p", **F32)
    grads_ref = attention.attention_backward(dy, c_ref, None if dp is None else dp.copy())
    grads = fused.attention_backward_fused(dy, c, dp)
    for name, a, r in zip(("dq", "dk", "dv"), grads, grads_ref, strict=True):
        assert_close(a, r, name=f"attention.{name}", **F32)
    for a, b0 in zip((base, dy, *(() if dp is None else (dp,))), before, strict=True):
        np.testing.assert_array_equal(a, b0)


# ----------------------------------------------------------------------------------------
# float64 finite differences of the fused ops
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 2, 6)], ids=str)
def test_layernorm_fused_gradcheck(rng, shape):
    x = rng.standard_normal(shape) * 2 + 0.5
    g, b = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    r = rng.standard_normal(shape)
    _, c = fused.layernorm_forward_fused(x, g, b)
    dx, dg, db = fused.layernorm_backward_fused(r, c)
    errors = check_grads(
        lambda: float(np.sum(fused.layernorm_forward_fused(x, g, b)[0] * r)),
        {"x": x, "g": g, "b": b},
        {"x": dx, "g": dg, "b": db},
    )
    assert_grads_ok(errors)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_fused_gradcheck(rng, approximate):
    x = rng.standard_normal((3, 7)) * 3
    r = rng.standard_normal((3, 7))
    _, c = fused.gelu_forward_fused(x, approximate)
    dx = fused.gelu_backward_fused(r, c)
    errors = check_grads(
        lambda: float(np.sum(fused.gelu_forward_fused(x, approximate)[0] * r)), {"x": x}, {"x": dx}
    )
    assert_grads_ok(errors)


GRAD_MASKS = {
    "none": None,
    "right": np.array([[False, False, False, True, True], [False] * 5]),
    "holes": np.array([[False, True, False, False, True], [False, False, True, False, False]]),
}


def _attention_gradcheck(rng, causal, pad, extra):
    q, k, v = (rng.standard_normal((2, 2, 5, 3)) for _ in range(3))
    r = rng.standard_normal((2, 2, 5, 3))
    rp = rng.standard_normal((2, 2, 5, 5)) if extra else None

    def loss():
        y, c = fused.attention_forward_fused(q, k, v, causal, pad)
        return float(np.sum(y * r) + (np.sum(c.p * rp) if extra else 0.0))

    _, c = fused.attention_forward_fused(q, k, v, causal, pad)
    dq, dk, dv = fused.attention_backward_fused(r, c, None if rp is None else rp.copy())
    return check_grads(loss, {"q": q, "k": k, "v": v}, {"q": dq, "k": dk, "v": dv})


@pytest.mark.parametrize("extra", [False, True], ids=["dy", "dy+dp_extra"])
@pytest.mark.parametrize("mask", list(GRAD_MASKS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_attention_fused_gradcheck(rng, causal, mask, extra):
    assert_grads_ok(_attention_gradcheck(rng, causal, GRAD_MASKS[mask], extra))


def test_attention_fused_gradcheck_query_sees_no_key(rng):
    pad = np.array([[True, False, False, True, False], [True] * 5])
    assert_grads_ok(_attention_gradcheck(rng, True, pad, False))


# ----------------------------------------------------------------------------------------
# backend selection
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("reference", backend.NUMPY_OPS),
        (" Reference ", backend.NUMPY_OPS),
        ("auto", backend.NUMBA_OPS),
        ("", backend.NUMBA_OPS),
        ("portable", backend.NUMBA_OPS),
    ],
)
def test_default_op_impl_follows_environment(monkeypatch, value, expected):
    monkeypatch.setenv("MINICOMPRESS_KERNEL", value)
    assert backend.default_op_impl() is expected


def test_default_op_impl_default_is_fused(monkeypatch):
    monkeypatch.delenv("MINICOMPRESS_KERNEL", raising=False)
    assert backend.default_op_impl() is backend.NUMBA_OPS


def test_default_op_impl_refuses_unknown_kernel(monkeypatch):
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "cuda")
    with pytest.raises(ValueError, match="MINICOMPRESS_KERNEL"):
        backend.default_op_impl()
