"""minicompress/nn/ops.py: hand-worked values, float64 finite differences, and PyTorch
(live when installed, else the golden files written once by ``make_golden.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import assert_close, assert_grads_ok, check_grads, rel_error
from make_golden import OPS_BUILDERS, load_golden

from minicompress.nn import ops

# ----------------------------------------------------------------------------------------
# ours, run on a case dict of make_golden (same keys as torch's results)
# ----------------------------------------------------------------------------------------


def ours_linear(c):
    y, cache = ops.linear_forward(c["x"], c["w"], c["b"])
    dx, dw, db = ops.linear_backward(c["dy"], cache)
    return dict(y=y, dx=dx, dw=dw, db=db)


def ours_embedding(c):
    y, cache = ops.embedding_forward(c["idx"], c["table"])
    return dict(y=y, dtable=ops.embedding_backward(c["dy"], cache))


def ours_layernorm(c):
    y, cache = ops.layernorm_forward(c["x"], c["g"], c["b"])
    dx, dg, db = ops.layernorm_backward(c["dy"], cache)
    return dict(y=y, dx=dx, dg=dg, db=db)


def _ours_gelu(approximate):
    def run(c):
        y, cache = ops.gelu_forward(c["x"], approximate)
        return dict(y=y, dx=ops.gelu_backward(c["dy"], cache))

    return run


def ours_softmax(c):
    y, cache = ops.softmax_forward(c["x"])
    return dict(y=y, dx=ops.softmax_backward(c["dy"], cache))


def ours_cross_entropy(c):
    loss, cache = ops.cross_entropy_forward(c["logits"], c["targets"])
    return dict(loss=loss, dlogits=ops.cross_entropy_backward(1.0, cache))


OURS = {
    "linear": ours_linear,
    "embedding": ours_embedding,
    "layernorm": ours_layernorm,
    "gelu_tanh": _ours_gelu("tanh"),
    "gelu_erf": _ours_gelu("none"),
    "softmax": ours_softmax,
    "cross_entropy": ours_cross_entropy,
}
assert OURS.keys() == OPS_BUILDERS.keys()

# float64: only summation order differs from torch; float32: rounding of the op itself
TOL = {np.float64: dict(rtol=1e-12, atol=1e-13), np.float32: dict(rtol=1e-5, atol=1e-6)}


def compare(name, got, theirs, dtype):
    for key, ours in got.items():
        assert np.asarray(ours).dtype == dtype, f"{name}.{key}: dtype {np.asarray(ours).dtype}"
        assert_close(ours, theirs[key], name=f"{name}.{key}", **TOL[dtype])


@pytest.mark.parametrize("name", list(OURS))
def test_matches_torch_golden(name):
    case = load_golden(name)
    compare(name, OURS[name](case), case, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(OURS))
def test_matches_torch_live(torch, rng, name, dtype):
    torch_case = OPS_BUILDERS[name](torch, rng, dtype)
    compare(name, OURS[name](torch_case), torch_case, dtype)


# ----------------------------------------------------------------------------------------
# hand-worked values
# ----------------------------------------------------------------------------------------


def test_linear_by_hand():
    x = np.array([[1.0, 2.0]])
    w = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 3.0]])  # [K=2, N=3]
    y, cache = ops.linear_forward(x, w, np.array([0.0, 1.0, 0.0]))
    np.testing.assert_array_equal(y, [[2.0, 5.0, 5.0]])
    dx, dw, db = ops.linear_backward(np.array([[1.0, 0.0, 1.0]]), cache)
    np.testing.assert_array_equal(dx, [[0.0, 3.5]])
    np.testing.assert_array_equal(dw, [[1.0, 0.0, 1.0], [2.0, 0.0, 2.0]])
    np.testing.assert_array_equal(db, [1.0, 0.0, 1.0])


def test_linear_without_bias_and_no_mutation(rng):
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((4, 2))
    x0, w0 = x.copy(), w.copy()
    y, cache = ops.linear_forward(x, w, None)
    ops.linear_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(y, x @ w)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


def test_layernorm_by_hand():
    # x = [1, 2, 3]: mean 2, biased variance 2/3, so xhat = [-1, 0, 1] * sqrt(3/2) (eps = 0)
    y, _ = ops.layernorm_forward(np.array([1.0, 2.0, 3.0]), np.ones(3), np.zeros(3), eps=0.0)
    np.testing.assert_allclose(y, [-math.sqrt(1.5), 0.0, math.sqrt(1.5)], rtol=1e-15)


@pytest.mark.parametrize(
    "approximate, x, expected",
    [
        ("none", 1.0, 0.8413447460685429),  # Phi(1) = 0.5 (1 + erf(1/sqrt 2))
        ("none", -1.0, -0.15865525393145707),  # -(1 - Phi(1))
        ("none", 0.0, 0.0),
        # tanh form at 1: 0.5 (1 + tanh(sqrt(2/pi) * 1.044715))
        ("tanh", 1.0, 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * 1.044715))),
        ("tanh", 0.0, 0.0),
    ],
)
def test_gelu_by_hand(approximate, x, expected):
    y, _ = ops.gelu_forward(np.array([x]), approximate)
    np.testing.assert_allclose(y, [expected], rtol=1e-15, atol=0.0)


def test_gelu_slope_at_zero_is_one_half():
    for approximate in ("tanh", "none"):
        _, cache = ops.gelu_forward(np.array([0.0]), approximate)
        assert ops.gelu_backward(np.array([1.0]), cache)[0] == 0.5


def test_gelu_refuses_unknown_form():
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu_forward(np.zeros(3), "sigmoid")


def test_softmax_by_hand_and_overflow():
    y, _ = ops.softmax_forward(np.array([0.0, math.log(3.0)]))
    np.testing.assert_allclose(y, [0.25, 0.75], rtol=1e-15)
    y, _ = ops.softmax_forward(np.array([1000.0, 1000.0], np.float32))  # exp(1000) = inf
    np.testing.assert_array_equal(y, np.array([0.5, 0.5], np.float32))


def test_cross_entropy_by_hand():
    # uniform logits: loss = log V; gradient (1/V - onehot) / M
    logits = np.zeros((2, 4))
    loss, cache = ops.cross_entropy_forward(logits, np.array([0, 3]))
    assert loss == pytest.approx(math.log(4.0), rel=1e-15)
    d = ops.cross_entropy_backward(1.0, cache)
    np.testing.assert_allclose(d, [[-0.375, 0.125, 0.125, 0.125], [0.125, 0.125, 0.125, -0.375]])


@pytest.mark.parametrize("bad", [-1, 5])
def test_cross_entropy_refuses_targets_outside_vocabulary(bad):
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy_forward(np.zeros((2, 5)), np.array([0, bad]))


def test_cross_entropy_refuses_mismatched_targets():
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy_forward(np.zeros((2, 3, 5)), np.zeros((2, 2), np.int64))


# ----------------------------------------------------------------------------------------
# float64 finite differences
# ----------------------------------------------------------------------------------------


def _project(out, r):
    """A scalar loss L = sum(out * r), whose gradient w.r.t. out is r."""
    return float(np.sum(out * r))


def test_gradcheck_helper_can_fail(rng):
    x = rng.standard_normal(5)
    good = check_grads(lambda: float(np.sum(np.sin(x))), {"x": x}, {"x": np.cos(x)})
    bad = check_grads(lambda: float(np.sum(np.sin(x))), {"x": x}, {"x": np.cos(x) * 1.001})
    assert good["x"] < 1e-9 and bad["x"] > 5e-4
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0


def test_linear_gradcheck(rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    r = rng.standard_normal((2, 3, 5))
    y, cache = ops.linear_forward(x, w, b)
    dx, dw, db = ops.linear_backward(r, cache)
    errors = check_grads(
        lambda: _project(ops.linear_forward(x, w, b)[0], r),
        {"x": x, "w": w, "b": b},
        {"x": dx, "w": dw, "b": db},
    )
    assert_grads_ok(errors)


def test_embedding_gradcheck(rng):
    idx = np.array([[0, 2, 2], [4, 0, 2]])
    table = rng.standard_normal((6, 3))
    r = rng.standard_normal((2, 3, 3))
    _, cache = ops.embedding_forward(idx, table)
    dtable = ops.embedding_backward(r, cache)
    errors = check_grads(
        lambda: _project(ops.embedding_forward(idx, table)[0], r),
        {"table": table},
        {"table": dtable},
    )
    assert_grads_ok(errors)
    assert not dtable[[1, 3, 5]].any()  # unused rows get no gradient


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 8)])
def test_layernorm_gradcheck(rng, shape):
    x = rng.standard_normal(shape) * 2.0 + 0.5
    g, b = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    r = rng.standard_normal(shape)
    _, cache = ops.layernorm_forward(x, g, b)
    dx, dg, db = ops.layernorm_backward(r, cache)
    errors = check_grads(
        lambda: _project(ops.layernorm_forward(x, g, b)[0], r),
        {"x": x, "g": g, "b": b},
        {"x": dx, "g": dg, "b": db},
    )
    assert_grads_ok(errors)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_gradcheck(rng, approximate):
    x = np.concatenate([rng.standard_normal(20) * 3.0, [0.0, -5.0, 5.0]]).reshape(23)
    r = rng.standard_normal(x.shape)
    _, cache = ops.gelu_forward(x, approximate)
    dx = ops.gelu_backward(r, cache)
    errors = check_grads(
        lambda: _project(ops.gelu_forward(x, approximate)[0], r), {"x": x}, {"x": dx}
    )
    assert_grads_ok(errors)


def test_softmax_gradcheck(rng):
    x = rng.standard_normal((3, 6)) * 2.0
    r = rng.standard_normal((3, 6))
    y, cache = ops.softmax_forward(x)
    dx = ops.softmax_backward(r, cache)
    errors = check_grads(lambda: _project(ops.softmax_forward(x)[0], r), {"x": x}, {"x": dx})
    assert_grads_ok(errors)


def test_cross_entropy_gradcheck(rng):
    logits = rng.standard_normal((2, 3, 5)) * 2.0
    targets = rng.integers(0, 5, size=(2, 3))
    _, cache = ops.cross_entropy_forward(logits, targets)
    d = ops.cross_entropy_backward(1.0, cache)
    errors = check_grads(
        lambda: float(ops.cross_entropy_forward(logits, targets)[0]),
        {"logits": logits},
        {"logits": d},
    )
    assert_grads_ok(errors)


# ----------------------------------------------------------------------------------------
# dtypes are kept, inputs are not mutated
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ops_keep_dtype_and_do_not_mutate(rng, dtype):
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    g, b = np.ones(4, dtype), np.zeros(4, dtype)
    x0 = x.copy()
    dy = rng.standard_normal((2, 3, 4)).astype(dtype)
    dy0 = dy.copy()
    y, c = ops.layernorm_forward(x, g, b)
    outs = [y, *ops.layernorm_backward(dy, c)]
    for approximate in ("tanh", "none"):
        y, c = ops.gelu_forward(x, approximate)
        outs += [y, ops.gelu_backward(dy, c)]
    y, c = ops.softmax_forward(x)
    outs += [y, ops.softmax_backward(dy, c)]
    loss, c = ops.cross_entropy_forward(x, np.zeros((2, 3), np.int64))
    outs += [loss, ops.cross_entropy_backward(1.0, c)]
    assert [np.asarray(o).dtype for o in outs] == [np.dtype(dtype)] * len(outs)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)


# ----------------------------------------------------------------------------------------
# pooling and L2 normalization of sentence embeddings
# ----------------------------------------------------------------------------------------


def test_mean_pool_by_hand():
    h = np.arange(12, dtype=np.float64).reshape(2, 3, 2)  # [B, T, C]
    pad = np.array([[False, False, True], [False, False, False]])
    out, _ = ops.mean_pool_forward(h, pad)
    np.testing.assert_allclose(
        out, [[1.0, 2.0], [8.0, 9.0]], rtol=1e-15
    )  # (0+2)/2, (1+3)/2; rows 3..5
    with pytest.raises(ValueError, match="all padding"):
        ops.mean_pool_forward(h, np.ones((2, 3), bool))


def test_first_token_pool_and_l2_normalize_by_hand():
    h = np.array([[[3.0, 4.0], [1.0, 1.0]]])
    cls, shape = ops.first_token_pool_forward(h)
    np.testing.assert_array_equal(cls, [[3.0, 4.0]])
    y, _ = ops.l2_normalize_forward(cls)
    np.testing.assert_array_equal(y, [[0.6, 0.8]])
    dh = ops.first_token_pool_backward(np.array([[1.0, 2.0]]), shape)
    np.testing.assert_array_equal(dh, [[[1.0, 2.0], [0.0, 0.0]]])
    zero, _ = ops.l2_normalize_forward(np.zeros((1, 2)))  # below eps: no 0/0
    np.testing.assert_array_equal(zero, [[0.0, 0.0]])


def test_pooling_and_normalize_gradcheck(rng):
    h = rng.standard_normal((2, 4, 3))
    pad = np.array([[False, False, True, True], [False, False, False, False]])
    r = rng.standard_normal((2, 3))

    def f():
        pooled, _ = ops.mean_pool_forward(h, pad)
        return float(np.sum(ops.l2_normalize_forward(pooled)[0] * r))

    pooled, pool_c = ops.mean_pool_forward(h, pad)
    _, norm_c = ops.l2_normalize_forward(pooled)
    dh = ops.mean_pool_backward(ops.l2_normalize_backward(r, norm_c), pool_c)
    assert_grads_ok(check_grads(f, {"h": h}, {"h": dh}))
    assert np.all(dh[0, 2:] == 0)  # padding gets no gradient

    def g():
        return float(np.sum(ops.first_token_pool_forward(h)[0] * r))

    dh = ops.first_token_pool_backward(r, h.shape)
    assert_grads_ok(check_grads(g, {"h": h}, {"h": dh}))


def test_l2_normalize_matches_torch(torch, rng):
    x = rng.standard_normal((3, 5))
    x[1] *= 1e-14  # below eps: F.normalize divides by eps there
    dy = rng.standard_normal((3, 5))
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.normalize(xt, p=2, dim=-1, eps=1e-12)
    yt.backward(torch.tensor(dy))
    y, cache = ops.l2_normalize_forward(x)
    assert_close(y, yt.detach().numpy(), rtol=1e-12, atol=1e-15, name="y")
    dx = ops.l2_normalize_backward(dy, cache)
    assert_close(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12, name="dx")
