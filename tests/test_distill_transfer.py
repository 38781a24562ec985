"""minicompress/distill/transfer.py: the layer map by hand, the hidden-state and attention
losses against PyTorch (live, else the golden files of ``make_golden_distill.py``) and scipy,
float64 finite differences, and refused input. The same losses checked through a whole
student model are in test_distill_trainer.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import assert_close, assert_grads_ok, check_grads
from make_golden_distill import TRANSFER_BUILDERS, load_golden
from scipy.special import rel_entr, softmax

from minicompress.distill import transfer

# ----------------------------------------------------------------------------------------
# layer map
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m, n, expected",
    [
        (2, 4, ((0, 1), (1, 3))),  # TinyBERT g(m) = m N / M, 1-based: 2 and 4
        (4, 4, ((0, 0), (1, 1), (2, 2), (3, 3))),
        (3, 4, ((0, 0), (1, 1), (2, 3))),
        (1, 4, ((0, 3),)),
        (3, 12, ((0, 3), (1, 7), (2, 11))),
        (4, 2, ((0, 0), (1, 0), (2, 0), (3, 1))),  # deeper student: blocks share a teacher's
    ],
)
def test_uniform_layer_map_by_hand(m, n, expected):
    assert transfer.uniform_layer_map(m, n) == expected


def test_check_layer_map_accepts_dicts_and_pairs():
    assert transfer.check_layer_map(None, 2, 4) == ((0, 1), (1, 3))
    assert transfer.check_layer_map({1: 2, 0: 0}, 2, 4) == ((0, 0), (1, 2))
    assert transfer.check_layer_map([(1, 3)], 2, 4) == ((1, 3),)  # a subset of the blocks


@pytest.mark.parametrize(
    "layer_map, match",
    [
        ({0: 4}, r"names teacher block 4, but the teacher has 4 blocks \(0..3\)"),
        ({2: 0}, r"names student block 2, but the student has 2 blocks \(0..1\)"),
        ({-1: 0}, "names student block -1"),
        ([(0, 1), (0, 2)], "lists a student block twice"),
        ({}, "layer_map is empty"),
        ([(0, 1, 2)], r"must be \(student, teacher\) pairs"),
        ({0: 1.5}, "names teacher block 1.5; blocks are integers"),
    ],
)
def test_check_layer_map_refuses(layer_map, match):
    with pytest.raises(ValueError, match=match):
        transfer.check_layer_map(layer_map, 2, 4)


@pytest.mark.parametrize("m, n", [(0, 4), (2, 0), (True, 4)])
def test_uniform_layer_map_refuses_bad_counts(m, n):
    with pytest.raises(ValueError, match="must be a positive number of blocks"):
        transfer.uniform_layer_map(m, n)


# ----------------------------------------------------------------------------------------
# PyTorch: golden files and live
# ----------------------------------------------------------------------------------------


def ours(name, c):
    if name == "hidden_mse":
        loss, cache = transfer.hidden_mse_forward(c["h_s"], c["h_t"], c["w"], c["b"])
        dh_s, dw, db = transfer.hidden_mse_backward(1.0, cache)
        return dict(loss=loss, dh_s=dh_s, dw=dw, db=db)
    loss, cache = transfer.attention_kl_forward(c["a_s"], c["a_t"])  # "auto" heads
    return dict(loss=loss, da_s=transfer.attention_kl_backward(1.0, cache))


TOL = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=2e-5, atol=1e-6)}


def compare(name, c, dtype):
    for key, value in ours(name, c).items():
        assert np.asarray(value).dtype == dtype, f"{name}.{key}: {np.asarray(value).dtype}"
        assert_close(value, c[key], name=f"{name}.{key}", **TOL[dtype])


@pytest.mark.parametrize("name", list(TRANSFER_BUILDERS))
def test_matches_torch_golden(name):
    compare(name, load_golden(name), np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(TRANSFER_BUILDERS))
def test_matches_torch_live(torch, rng, name, dtype):
    compare(name, TRANSFER_BUILDERS[name](torch, rng, dtype), dtype)


# ----------------------------------------------------------------------------------------
# hidden states: by hand, finite differences
# ----------------------------------------------------------------------------------------


def test_hidden_mse_by_hand():
    # identity projection: L = mean over the N * C entries of (h_S - h_T)^2
    h_s = np.array([[1.0, 2.0], [0.0, 0.0]])
    h_t = np.array([[1.0, 0.0], [3.0, 1.0]])
    w, b = transfer.init_projection(2, 2, np.random.default_rng(0), np.float64)
    np.testing.assert_array_equal(w, np.eye(2))
    loss, cache = transfer.hidden_mse_forward(h_s, h_t, w, b)
    assert loss == (0 + 4 + 9 + 1) / 4
    dh_s, dw, db = transfer.hidden_mse_backward(1.0, cache)
    np.testing.assert_array_equal(dh_s, [[0.0, 1.0], [-1.5, -0.5]])  # 2 (h_S - h_T) / 4
    np.testing.assert_array_equal(db, [-1.5, 0.5])


def test_hidden_mse_learns_the_map_between_widths(rng):
    """A teacher whose hidden states are a linear map of the student's: the projection that
    is that map gives 0, and the loss's own gradient finds it (plain gradient descent)."""
    h_s = rng.standard_normal((64, 3))
    true_w = rng.standard_normal((3, 5))
    h_t = h_s @ true_w + 0.5
    assert transfer.hidden_mse_forward(h_s, h_t, true_w, np.full(5, 0.5))[0] < 1e-28
    w, b = transfer.init_projection(3, 5, rng, np.float64)
    first = transfer.hidden_mse_forward(h_s, h_t, w, b)[0]
    for _ in range(500):
        loss, cache = transfer.hidden_mse_forward(h_s, h_t, w, b)
        _, dw, db = transfer.hidden_mse_backward(1.0, cache)
        w, b = w - 1.0 * dw, b - 1.0 * db
    assert loss < 1e-6 * first
    assert_close(w, true_w, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("pad", [None, np.array([[False, True, False], [False, False, True]])])
def test_hidden_mse_gradients_by_finite_differences(rng, pad):
    h_s = rng.standard_normal((2, 3, 4))
    h_t = rng.standard_normal((2, 3, 6))
    w = rng.standard_normal((4, 6))
    b = rng.standard_normal(6)

    def f():
        return float(transfer.hidden_mse_forward(h_s, h_t, w, b, pad)[0])

    _, cache = transfer.hidden_mse_forward(h_s, h_t, w, b, pad)
    dh_s, dw, db = transfer.hidden_mse_backward(1.3, cache)
    analytic = {"h_s": dh_s / 1.3, "w": dw / 1.3, "b": db / 1.3}
    assert_grads_ok(check_grads(f, {"h_s": h_s, "w": w, "b": b}, analytic), tol=1e-7)
    if pad is not None:
        assert np.all(dh_s[pad] == 0)


# ----------------------------------------------------------------------------------------
# attention maps: scipy, properties, finite differences
# ----------------------------------------------------------------------------------------


def causal_maps(rng, b, h, t, pad=None):
    """Attention probabilities as the model makes them: causal, padding keys masked."""
    scores = rng.standard_normal((b, h, t, t)) * 2.0
    visible = np.tril(np.ones((t, t), bool))
    if pad is not None:
        visible = visible & ~pad[:, None, None, :]
    return softmax(np.where(visible, scores, -np.inf), axis=-1)


def test_attention_kl_matches_scipy_rel_entr(rng):
    a_s, a_t = causal_maps(rng, 2, 3, 5), causal_maps(rng, 2, 3, 5)
    loss, _ = transfer.attention_kl_forward(a_s, a_t, "matched")
    assert_close(loss, rel_entr(a_t, a_s).sum(-1).mean(), rtol=1e-12)
    loss, _ = transfer.attention_kl_forward(a_s, a_t, "averaged")
    theirs = rel_entr(a_t.mean(1), a_s.mean(1)).sum(-1).mean()
    assert_close(loss, theirs, rtol=1e-12)


def test_attention_kl_of_a_map_with_itself_is_zero(rng):
    a = causal_maps(rng, 2, 2, 4)
    loss, cache = transfer.attention_kl_forward(a, a.copy())
    assert loss == 0.0
    # the gradient -A_T / A_S / R is -1 / R on visible keys: constant along each row, so
    # the softmax backward turns it into 0 (a minimum)
    da = transfer.attention_kl_backward(1.0, cache)
    dscores = a * (da - np.sum(da * a, axis=-1, keepdims=True))
    assert np.abs(dscores).max() < 1e-15


def test_attention_heads_auto_matches_or_averages(rng):
    a_s, a_t = causal_maps(rng, 1, 2, 4), causal_maps(rng, 1, 4, 4)
    _, cache = transfer.attention_kl_forward(a_s, a_t)
    assert cache.mode == "averaged"
    da = transfer.attention_kl_backward(1.0, cache)
    assert da.shape == a_s.shape and np.array_equal(da[:, 0], da[:, 1])
    _, cache = transfer.attention_kl_forward(a_s, a_t[:, :2])
    assert cache.mode == "matched"


def test_attention_kl_leaves_padding_queries_out(rng):
    pad = np.array([[False, False, True], [False, False, False]])
    a_s, a_t = causal_maps(rng, 2, 2, 3, pad), causal_maps(rng, 2, 2, 3, pad)
    loss, cache = transfer.attention_kl_forward(a_s, a_t, pad_mask=pad)
    keep = ~pad[:, None, :].repeat(2, axis=1)  # [B, H, T]
    assert_close(loss, rel_entr(a_t, a_s).sum(-1)[keep].mean(), rtol=1e-12)
    da = transfer.attention_kl_backward(1.0, cache)
    assert np.all(da[:, :, 2][np.array([True, False])] == 0)  # sequence 0's padding query


def test_attention_kl_stays_finite_when_a_probability_underflows():
    a_t = np.array([[[[1.0, 0.0], [0.5, 0.5]]]], dtype=np.float32)  # [1, 1, 2, 2]
    a_s = np.array([[[[1.0, 0.0], [1.0, 0.0]]]], dtype=np.float32)  # a 0 where A_T is not
    loss, cache = transfer.attention_kl_forward(a_s, a_t)
    da = transfer.attention_kl_backward(1.0, cache)
    assert np.isfinite(loss) and loss > 10 and np.all(np.isfinite(da))


@pytest.mark.parametrize("heads, h_s, h_t", [("matched", 2, 2), ("averaged", 2, 3)])
@pytest.mark.parametrize("pad", [None, np.array([[False, False, True], [False, False, False]])])
def test_attention_kl_gradient_by_finite_differences(rng, heads, h_s, h_t, pad):
    a_s = causal_maps(rng, 2, h_s, 3, pad) + 0.1  # any positive values: the formula's gradient
    a_t = causal_maps(rng, 2, h_t, 3, pad)

    def f():
        return float(transfer.attention_kl_forward(a_s, a_t, heads, pad)[0])

    _, cache = transfer.attention_kl_forward(a_s, a_t, heads, pad)
    da = transfer.attention_kl_backward(0.5, cache) / 0.5
    assert_grads_ok(check_grads(f, {"a_s": a_s}, {"a_s": da}), tol=1e-7)


def test_float32_in_float32_out_and_no_mutation(rng):
    a_s = causal_maps(rng, 1, 2, 4).astype(np.float32)
    a_t = causal_maps(rng, 1, 2, 4)
    a_s0, a_t0 = a_s.copy(), a_t.copy()
    loss, cache = transfer.attention_kl_forward(a_s, a_t)
    assert np.asarray(loss).dtype == np.float32
    assert transfer.attention_kl_backward(1.0, cache).dtype == np.float32
    np.testing.assert_array_equal(a_s, a_s0)
    np.testing.assert_array_equal(a_t, a_t0)
    loss64, _ = transfer.attention_kl_forward(a_s.astype(np.float64), a_t)
    assert math.isclose(loss, loss64, rel_tol=1e-5)


# ----------------------------------------------------------------------------------------
# refused input
# ----------------------------------------------------------------------------------------


def test_attention_refuses_bad_shapes_and_head_modes(rng):
    a2, a3 = causal_maps(rng, 1, 2, 4), causal_maps(rng, 1, 3, 4)
    with pytest.raises(ValueError, match="heads='matched' needs as many heads in both"):
        transfer.attention_kl_forward(a2, a3, "matched")
    with pytest.raises(ValueError, match="heads must be one of auto, matched, averaged"):
        transfer.attention_kl_forward(a2, a2, "first")
    with pytest.raises(ValueError, match="different batches or sequences"):
        transfer.attention_kl_forward(a2, causal_maps(rng, 1, 2, 5))
    with pytest.raises(ValueError, match=r"attention maps must be \[B, H, T, T\]"):
        transfer.attention_kl_forward(a2[0], a2[0])
    with pytest.raises(ValueError, match=r"pad_mask must be bool \[B, T\]"):
        transfer.attention_kl_forward(a2, a2, pad_mask=np.zeros((1, 3), bool))


def test_hidden_mse_refuses_bad_shapes(rng):
    h_s, h_t = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 6))
    w, b = transfer.init_projection(4, 6, rng, np.float64)
    with pytest.raises(ValueError, match=r"w \[C_S, C_T\] = \[4, 6\]"):
        transfer.hidden_mse_forward(h_s, h_t, w.T, b)
    with pytest.raises(ValueError, match="cover different positions"):
        transfer.hidden_mse_forward(h_s, h_t[:, :2], w, b)
