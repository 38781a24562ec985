"""minicompress/distill/losses.py: hand-worked values, scipy, PyTorch (live when installed,
else the golden files of ``make_golden_distill.py``), float64 finite differences, properties
and refused input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import assert_close, assert_grads_ok, check_grads
from hypothesis import given, settings
from hypothesis import strategies as st
from make_golden_distill import BUILDERS, SHAPE, load_golden
from scipy.special import rel_entr
from scipy.special import softmax as scipy_softmax

from minicompress.distill import losses
from minicompress.nn.ops import cross_entropy_backward, cross_entropy_forward

# ----------------------------------------------------------------------------------------
# PyTorch: golden files and live
# ----------------------------------------------------------------------------------------


def ours(name: str, c: dict) -> dict:
    """Our loss and gradient on the inputs of a golden case."""
    s, t, temp = c["student"], c["teacher"], float(c["temperature"])
    if name.startswith("kd_kl"):
        loss, cache = losses.kd_kl_forward(s, t, temp)
        return dict(loss=loss, dstudent=losses.kd_kl_backward(1.0, cache))
    if name == "kd_mse_logits":
        loss, cache = losses.kd_mse_logits_forward(s, t)
        return dict(loss=loss, dstudent=losses.kd_mse_logits_backward(1.0, cache))
    if name.startswith("kd_mse"):
        loss, cache = losses.kd_mse_forward(s, t, temp)
        return dict(loss=loss, dstudent=losses.kd_mse_backward(1.0, cache))
    if name.startswith("mix"):
        loss, cache = losses.distillation_loss_forward(
            s, t, c["targets"], float(c["alpha"]), temp, "kl"
        )
        return dict(loss=loss, dstudent=losses.distillation_loss_backward(1.0, cache))
    raise KeyError(name)


# batchmean on [B, T, V] divides by B only: torch's loss and gradient are T times ours
TORCH_SCALE = {"kd_kl_batchmean_3d": SHAPE[1]}
TOL = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=2e-5, atol=1e-6)}


def compare(name, c, dtype):
    got = ours(name, c)
    k = TORCH_SCALE.get(name, 1)
    for key, value in got.items():
        assert np.asarray(value).dtype == dtype, f"{name}.{key}: dtype {np.asarray(value).dtype}"
        assert_close(np.asarray(value) * k, c[key], name=f"{name}.{key}", **TOL[dtype])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_matches_torch_golden(name):
    compare(name, load_golden(name), np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_matches_torch_live(torch, rng, name, dtype):
    compare(name, BUILDERS[name](torch, rng, dtype), dtype)


def test_batchmean_counts_the_first_axis_only(torch, rng):
    """State it with torch itself: on [B, T, V], batchmean = sum / B; on [N, V], sum / N."""
    F = torch.nn.functional
    s, t = (torch.tensor(rng.standard_normal((2, 5, 4))) for _ in range(2))
    log_p, q = F.log_softmax(s, -1), F.softmax(t, -1)
    total = F.kl_div(log_p, q, reduction="sum")
    assert torch.isclose(F.kl_div(log_p, q, reduction="batchmean"), total / 2)
    flat = F.kl_div(log_p.reshape(-1, 4), q.reshape(-1, 4), reduction="batchmean")
    assert torch.isclose(flat, total / 10)
    ours_loss, _ = losses.kd_kl_forward(s.numpy(), t.numpy(), 1.0)
    assert math.isclose(ours_loss, float(flat), rel_tol=1e-12)


# ----------------------------------------------------------------------------------------
# scipy and hand-worked cases
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_kl_matches_scipy_rel_entr(rng, temperature):
    s = rng.standard_normal((4, 6, 9)) * 3.0
    t = rng.standard_normal((4, 6, 9)) * 3.0
    p_s = scipy_softmax(s / temperature, axis=-1)
    p_t = scipy_softmax(t / temperature, axis=-1)
    theirs = temperature**2 * rel_entr(p_t, p_s).sum(axis=-1).mean()
    loss, _ = losses.kd_kl_forward(s, t, temperature)
    assert_close(loss, theirs, rtol=1e-12, name="T^2 KL")


def test_kl_by_hand():
    # student [0, 0] -> p_S = [1/2, 1/2]; teacher [log 3, 0] -> p_T = [3/4, 1/4]
    # KL(p_T || p_S) = 3/4 log(3/2) + 1/4 log(1/2); gradient T (p_S - p_T) / N = [-1/4, 1/4]
    s = np.array([[0.0, 0.0]])
    t = np.array([[math.log(3.0), 0.0]])
    loss, cache = losses.kd_kl_forward(s, t, 1.0)
    assert math.isclose(loss, 0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel_tol=1e-14)
    np.testing.assert_allclose(losses.kd_kl_backward(1.0, cache), [[-0.25, 0.25]], rtol=1e-14)
    # at T = 2, the teacher [2 log 3, 0] has the same soft labels: the loss is T^2 = 4 times
    # larger, the gradient T (p_S - p_T) / N twice as large
    loss2, cache2 = losses.kd_kl_forward(s, 2.0 * t, 2.0)
    assert math.isclose(loss2, 4.0 * loss, rel_tol=1e-14)
    np.testing.assert_allclose(losses.kd_kl_backward(1.0, cache2), [[-0.5, 0.5]], rtol=1e-14)


def test_mse_on_probabilities_by_hand():
    # p_S = [1/2, 1/2], p_T = [3/4, 1/4]: L = (1/4)^2 + (1/4)^2 = 1/8.
    # dL/dp_S = 2 (p_S - p_T) = [-1/2, 1/2]; softmax Jacobian [[1/4, -1/4], [-1/4, 1/4]]
    # -> dL/dz_S = [-1/4, 1/4]. Two tokens (N = 2), the second with p_S == p_T: L halves,
    # the first token's gradient halves, the second's is 0.
    s = np.array([[0.0, 0.0], [1.0, 2.0]])
    t = np.array([[math.log(3.0), 0.0], [1.0, 2.0]])
    loss, cache = losses.kd_mse_forward(s, t, 1.0)
    assert math.isclose(loss, 1.0 / 16.0, rel_tol=1e-14)
    np.testing.assert_allclose(
        losses.kd_mse_backward(1.0, cache), [[-0.125, 0.125], [0.0, 0.0]], atol=1e-16
    )
    # T = 2 with the teacher scaled by 2 (same p_T) and the student at 0: the Jacobian has 1/T
    loss2, cache2 = losses.kd_mse_forward(s[:1], 2.0 * t[:1], 2.0)
    assert math.isclose(loss2, 1.0 / 8.0, rel_tol=1e-14)
    np.testing.assert_allclose(losses.kd_mse_backward(1.0, cache2), [[-0.125, 0.125]], rtol=1e-14)


def test_mse_on_logits_by_hand():
    s = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t = np.array([[1.0, 0.0, 5.0], [1.0, 1.0, 1.0]])
    loss, cache = losses.kd_mse_logits_forward(s, t)
    assert loss == (0 + 4 + 4 + 1 + 1 + 1) / 2  # sum of squares / N = 2 tokens
    np.testing.assert_array_equal(
        losses.kd_mse_logits_backward(1.0, cache), [[0, 2, -2], [-1, -1, -1]]
    )


def test_softmax_with_temperature_matches_scipy(rng):
    z = rng.standard_normal((3, 5)) * 4.0
    for temperature in (0.25, 1.0, 7.0):
        p, _ = losses.softmax_with_temperature_forward(z, temperature)
        assert_close(p, scipy_softmax(z / temperature, axis=-1), rtol=1e-14, atol=1e-300)
        log_p = losses.log_softmax_with_temperature(z, temperature)
        assert_close(np.exp(log_p), p, rtol=1e-13, atol=1e-300)


def test_log_softmax_keeps_the_log_of_an_underflowing_probability():
    log_p = losses.log_softmax_with_temperature(np.array([0.0, -2000.0]), 1.0)
    assert np.all(np.isfinite(log_p)) and math.isclose(log_p[1], -2000.0, rel_tol=1e-12)
    # the KL stays finite where log(softmax) would be log(0) = -inf
    loss, _ = losses.kd_kl_forward(np.array([[0.0, -2000.0]]), np.array([[0.0, 0.0]]))
    assert math.isfinite(loss) and loss > 900


def test_temperature_reveals_the_second_choice():
    """Dark knowledge: at T = 1 the teacher's second choice is almost invisible; at higher T
    its share grows, and so does its weight in the student's gradient."""
    z = np.array([10.0, 6.0, 0.0])
    shares = [losses.softmax_with_temperature_forward(z, t)[0][1] for t in (1.0, 2.0, 4.0)]
    assert shares[0] < 0.02 and shares[0] < shares[1] < shares[2]
    assert shares[2] > 0.2


def test_kl_tends_to_mse_of_centred_logits_at_high_temperature(rng):
    """Hinton et al. 2015, 2.1: T^2 KL -> 1/(2V) sum ((z_S - mean z_S) - (z_T - mean z_T))^2."""
    v = 11
    s, t = rng.standard_normal((5, v)), rng.standard_normal((5, v))
    loss, _ = losses.kd_kl_forward(s, t, 1000.0)
    d = (s - s.mean(-1, keepdims=True)) - (t - t.mean(-1, keepdims=True))
    limit = np.mean(np.sum(d * d, axis=-1)) / (2 * v)
    assert math.isclose(loss, limit, rel_tol=2e-3), (loss, limit)


# ----------------------------------------------------------------------------------------
# float64 finite differences
# ----------------------------------------------------------------------------------------

PAD = np.array([[False, True, False], [False, False, True]])  # [B, T] for SHAPE


def _fd_case(rng, forward, backward, kwargs):
    s = rng.standard_normal(SHAPE) * 2.0
    t = rng.standard_normal(SHAPE) * 3.0

    def f():
        return float(forward(s, t, **kwargs)[0])

    _, cache = forward(s, t, **kwargs)
    grad = backward(0.7, cache) / 0.7  # an upstream gradient other than 1 scales it
    assert_grads_ok(check_grads(f, {"student": s}, {"student": grad}), tol=1e-7)


@pytest.mark.parametrize("pad", [None, PAD], ids=["dense", "padded"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("kind", losses.KD_KINDS)
def test_kd_gradients_by_finite_differences(rng, kind, temperature, pad):
    _fd_case(
        rng,
        losses.KD_FORWARD[kind],
        losses.KD_BACKWARD[kind],
        dict(temperature=temperature, pad_mask=pad),
    )


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("kind", losses.KD_KINDS)
def test_mix_gradient_by_finite_differences(rng, kind, alpha):
    y = rng.integers(0, SHAPE[-1], size=SHAPE[:-1])

    def forward(s, t, **kw):
        return losses.distillation_loss_forward(s, t, y, **kw)

    _fd_case(
        rng,
        forward,
        losses.distillation_loss_backward,
        dict(alpha=alpha, temperature=2.0, kind=kind),
    )


def test_tempered_softmax_gradient_by_finite_differences(rng):
    z = rng.standard_normal((2, 6)) * 2.0
    w = rng.standard_normal((2, 6))  # f = sum(w * p)

    def f():
        return float(np.sum(w * losses.softmax_with_temperature_forward(z, 3.0)[0]))

    _, cache = losses.softmax_with_temperature_forward(z, 3.0)
    dz = losses.softmax_with_temperature_backward(w, cache)
    assert_grads_ok(check_grads(f, {"z": z}, {"z": dz}), tol=1e-7)


def test_rows_mse_gradient_by_finite_differences(rng):
    a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    _, cache = losses.mse_rows_forward(a, b)
    da = losses.mse_rows_backward(1.0, cache)
    errs = check_grads(lambda: float(losses.mse_rows_forward(a, b)[0]), {"a": a}, {"a": da})
    assert_grads_ok(errs, tol=1e-7)


# ----------------------------------------------------------------------------------------
# the mix, padding, dtypes, properties
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", losses.KD_KINDS)
def test_alpha_one_is_exactly_cross_entropy(rng, kind, dtype):
    s = rng.standard_normal(SHAPE).astype(dtype)
    t = rng.standard_normal(SHAPE).astype(dtype)
    y = rng.integers(0, SHAPE[-1], size=SHAPE[:-1])
    loss, cache = losses.distillation_loss_forward(s, t, y, 1.0, 3.0, kind)
    ce, ce_cache = cross_entropy_forward(s, y)
    assert loss == ce and np.asarray(loss).dtype == dtype
    np.testing.assert_array_equal(
        losses.distillation_loss_backward(1.0, cache), cross_entropy_backward(1.0, ce_cache)
    )
    assert cache.kd is None and cache.ce == float(ce)


@pytest.mark.parametrize("kind", losses.KD_KINDS)
def test_alpha_zero_is_exactly_the_kd_term_and_needs_no_targets(rng, kind):
    s, t = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    loss, cache = losses.distillation_loss_forward(s, t, None, 0.0, 2.0, kind)
    kd, kd_cache = losses.KD_FORWARD[kind](s, t, 2.0)
    assert loss == kd
    np.testing.assert_array_equal(
        losses.distillation_loss_backward(1.0, cache), losses.KD_BACKWARD[kind](1.0, kd_cache)
    )


def test_mix_is_the_weighted_sum_of_its_terms(rng):
    s, t = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    y = rng.integers(0, SHAPE[-1], size=SHAPE[:-1])
    loss, cache = losses.distillation_loss_forward(s, t, y, 0.3, 2.0, "mse")
    ce, _ = cross_entropy_forward(s, y)
    kd, _ = losses.kd_mse_forward(s, t, 2.0)
    assert math.isclose(loss, 0.3 * ce + 0.7 * kd, rel_tol=1e-14)
    assert cache.ce == ce and cache.kd == kd


@pytest.mark.parametrize("kind", losses.KD_KINDS)
def test_padding_tokens_change_nothing(rng, kind):
    """With a pad_mask, the loss is the loss of the real tokens alone, and whatever the
    logits at padding hold, they get a zero gradient."""
    s, t = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    loss, cache = losses.KD_FORWARD[kind](s, t, 2.0, PAD)
    alone, _ = losses.KD_FORWARD[kind](s[~PAD], t[~PAD], 2.0)  # [N, V]
    assert math.isclose(loss, alone, rel_tol=1e-13)
    s2 = s.copy()
    s2[PAD] = 1e3 * rng.standard_normal((int(PAD.sum()), SHAPE[-1]))
    loss2, cache2 = losses.KD_FORWARD[kind](s2, t, 2.0, PAD)
    assert loss2 == loss
    grad = losses.KD_BACKWARD[kind](1.0, cache2)
    assert np.all(grad[PAD] == 0) and np.any(grad[~PAD] != 0)


@pytest.mark.parametrize("kind", losses.KD_KINDS)
def test_float32_in_float32_out_and_no_mutation(rng, kind):
    s = rng.standard_normal(SHAPE).astype(np.float32)
    t = rng.standard_normal(SHAPE)  # a float64 teacher is cast to the student's dtype
    s0, t0 = s.copy(), t.copy()
    loss, cache = losses.KD_FORWARD[kind](s, t, 2.0)
    grad = losses.KD_BACKWARD[kind](1.0, cache)
    assert np.asarray(loss).dtype == np.float32 and grad.dtype == np.float32
    np.testing.assert_array_equal(s, s0)
    np.testing.assert_array_equal(t, t0)
    loss64, _ = losses.KD_FORWARD[kind](s.astype(np.float64), t, 2.0)
    assert math.isclose(loss, loss64, rel_tol=1e-5)


logit_rows = st.lists(st.floats(-20, 20), min_size=2, max_size=8)


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.floats(0.1, 10.0), st.floats(-50, 50))
def test_kl_properties(row, temperature, shift):
    """KL >= 0; KL = 0 and zero gradient against itself; both softmax losses ignore a
    constant added to the logits, and the gradient of each sums to 0 over the vocabulary."""
    z = np.array([row])
    t = z[:, ::-1].copy()
    for kind in ("kl", "mse"):
        loss, cache = losses.KD_FORWARD[kind](z, t, temperature)
        assert loss >= 0.0
        shifted, _ = losses.KD_FORWARD[kind](z + shift, t, temperature)
        assert math.isclose(shifted, loss, rel_tol=1e-6, abs_tol=1e-12)
        grad = losses.KD_BACKWARD[kind](1.0, cache)
        assert abs(grad.sum()) <= 1e-9 * max(1.0, np.abs(grad).max())
        same, same_cache = losses.KD_FORWARD[kind](z, z + shift, temperature)
        assert abs(same) <= 1e-12
        assert np.abs(losses.KD_BACKWARD[kind](1.0, same_cache)).max() <= 1e-12


# ----------------------------------------------------------------------------------------
# refused input
# ----------------------------------------------------------------------------------------

S = np.zeros((2, 3, 5))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("kind", losses.KD_KINDS)
def test_refuses_temperature_not_positive(kind, temperature):
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0; got"):
        losses.KD_FORWARD[kind](S, S, temperature)
    with pytest.raises(ValueError, match="temperature"):
        losses.distillation_loss_forward(S, S, None, 0.0, temperature, kind)


@pytest.mark.parametrize("temperature", ["2", True, None])
def test_refuses_temperature_not_a_number(temperature):
    with pytest.raises(TypeError, match="temperature must be a number"):
        losses.kd_kl_forward(S, S, temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_refuses_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]; got"):
        losses.distillation_loss_forward(S, S, np.zeros((2, 3), int), alpha, 1.0)


@pytest.mark.parametrize(
    "teacher, what",
    [
        (np.zeros((2, 3, 6)), "different vocabularies"),
        (np.zeros((2, 4, 5)), "different shapes"),
        (np.zeros((6, 5)), "different shapes"),
    ],
)
@pytest.mark.parametrize("kind", losses.KD_KINDS)
def test_refuses_logits_that_do_not_line_up(kind, teacher, what):
    with pytest.raises(ValueError, match=what + r".*student \(2, 3, 5\), teacher"):
        losses.KD_FORWARD[kind](S, teacher, 1.0)
    with pytest.raises(ValueError, match=what):
        losses.distillation_loss_forward(S, teacher, np.zeros((2, 3), int), 0.5, 1.0, kind)


def test_refuses_integer_logits():
    with pytest.raises(TypeError, match="student logits must be a float array"):
        losses.kd_kl_forward(np.zeros((2, 5), int), np.zeros((2, 5)))


def test_refuses_unknown_kind_and_missing_targets():
    with pytest.raises(ValueError, match=r"kind \(the KD loss\) must be one of kl, mse"):
        losses.distillation_loss_forward(S, S, None, 0.0, 1.0, "cosine")
    with pytest.raises(ValueError, match="alpha=0.5 weights the cross-entropy, which needs"):
        losses.distillation_loss_forward(S, S, None, 0.5, 1.0)


def test_refuses_bad_pad_mask():
    with pytest.raises(ValueError, match=r"pad_mask must be a bool array of shape \(2, 3\)"):
        losses.kd_kl_forward(S, S, 1.0, np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="no token to average over"):
        losses.kd_kl_forward(S, S, 1.0, np.ones((2, 3), bool))
