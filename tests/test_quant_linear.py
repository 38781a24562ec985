"""minicompress/quant/linear.py: the straight-through gradient against finite differences
taken by whole quantization steps, against PyTorch (live and golden), layer choice, the
dynamic grid against the int8 kernels' activation quantizer, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close, assert_grads_ok, check_grads
from make_golden_quant import fq_linear, load_golden

from minicompress.kernels.reference import quantize_rows_uint8
from minicompress.nn.ops import linear_backward, linear_forward
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.tensor import QuantSpec, quantize_tensor, scale_zero_point


def _fd_by_steps(loss, a, steps):
    """Central differences of loss() w.r.t. each entry of a (float64, perturbed in place
    and restored) with a step of ``steps[i]`` for entry i."""
    flat, out = a.reshape(-1), np.zeros(a.size)
    for i in range(a.size):
        old = flat[i]
        flat[i] = old + steps[i]
        up = loss()
        flat[i] = old - steps[i]
        down = loss()
        flat[i] = old
        out[i] = (up - down) / (2 * steps[i])
    return out.reshape(a.shape)


def _settled(r, q_min, q_max, k):
    """Entries whose code position r = x / s + z stays on one side for +-k steps: inside
    the grid's range [q_min - 1/2, q_max + 1/2] or beyond it, and not at a rounding tie."""
    inside = (r > q_min - 0.5 + k + 1e-6) & (r < q_max + 0.5 - k - 1e-6)
    outside = (r < q_min - 0.5 - k - 1e-6) | (r > q_max + 0.5 + k + 1e-6)
    not_tie = np.abs(np.abs(r - np.floor(r)) - 0.5) > 1e-6
    return (inside | outside) & not_tie, outside


def test_ste_gradient_equals_finite_differences_by_whole_steps(rng):
    # Fake quantization is a staircase: its derivative is 0 almost everywhere, and the STE
    # does not claim otherwise. What it claims is the slope of the staircase at the scale
    # of its steps: inside the range, fq(x + k s) = fq(x) + k s exactly, so a central
    # difference with a step of k whole quantization steps is exactly the STE gradient
    # (1 inside, 0 where the clip acts), up to float64 rounding.
    x = rng.standard_normal((2, 3, 6))  # [B, T, K] float64
    w = rng.standard_normal((6, 4)) * 0.5  # [K, N]
    b = rng.standard_normal(4)
    dy = rng.standard_normal((2, 3, 4))
    act_spec = QuantSpec(6, "asymmetric", "tensor")
    s_x, z_x = scale_zero_point(np.float64(-1.2), np.float64(1.0), act_spec)  # x clips
    w_spec = QuantSpec(5, "asymmetric", "channel")
    w_lo, w_hi = 0.7 * w.min(axis=0, keepdims=True), 0.7 * w.max(axis=0, keepdims=True)
    fq = FakeQuantLinear(
        weights=w_spec,
        activations="static",
        act_bits=6,
        act_qparams={"layer": (s_x, z_x)},
        weight_ranges={"layer": (w_lo, w_hi)},
    )
    y, cache = fq.forward("layer", x, w, b)
    dx, dw, db = fq.backward("layer", dy, cache)

    def loss():
        return float(np.sum(dy * fq.forward("layer", x, w, b)[0]))

    k = 3
    ok_x, clipped_x = _settled(x / s_x + z_x, 0, 63, k)
    fd_x = _fd_by_steps(loss, x, np.full(x.size, k * s_x))
    assert ok_x.sum() >= 20 and clipped_x.sum() >= 4
    assert_close(dx[ok_x], fd_x[ok_x], rtol=1e-9, atol=1e-12, name="dx")
    assert np.all(dx[clipped_x] == 0)

    qt = quantize_tensor(w, w_spec, w_lo, w_hi)
    s_w = np.broadcast_to(qt.scale, w.shape)
    ok_w, clipped_w = _settled(w / s_w + qt.zero_point, 0, 31, k)
    fd_w = _fd_by_steps(loss, w, (k * s_w).reshape(-1))
    assert ok_w.sum() >= 8 and clipped_w.sum() >= 2
    assert_close(dw[ok_w], fd_w[ok_w], rtol=1e-9, atol=1e-12, name="dw")
    assert np.all(dw[clipped_w] == 0)
    assert_grads_ok(check_grads(loss, {"b": b}, {"b": db}), tol=1e-8)  # b: not quantized


def _ours_fq_linear(case):
    # torch's static activation qparams, given as ours; weights: our per-channel min-max
    # symmetric (max|w| / 127 on [-127, 127]), the scale the case gave torch
    fq = FakeQuantLinear(
        weights=QuantSpec(8, "symmetric", "channel"),
        activations="static",
        act_qparams={"l": (case["act_scale"], case["act_zero_point"])},
    )
    y, cache = fq.forward("l", case["x"], case["w"], case["b"])
    dx, dw, db = fq.backward("l", case["dy"], cache)
    return dict(y=y, dx=dx, dw=dw, db=db)


def _compare_with_torch(case):
    ours = _ours_fq_linear(case)
    assert (case["dx"] == 0).sum() >= 2  # some inputs clip: the mask is exercised
    for key in ("y", "dx", "dw", "db"):
        # float32 products summed in another order: a few ulps
        assert_close(ours[key], case[key], rtol=1e-5, atol=1e-6, name=key)
    assert np.array_equal(ours["dx"] == 0, case["dx"] == 0)


def test_fake_quant_linear_matches_torch_golden():
    _compare_with_torch(load_golden("fq_linear"))


def test_fake_quant_linear_matches_torch_live(torch, rng):
    _compare_with_torch(fq_linear(torch, rng))


def test_layers_not_chosen_are_dense(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    dy = rng.standard_normal((4, 3)).astype(np.float32)
    fq = FakeQuantLinear(QuantSpec(2, "symmetric", "tensor"), "dynamic", layers=["other"])
    y, cache = fq.forward("this", x, w, b)
    y_ref, c_ref = linear_forward(x, w, b)
    assert np.array_equal(y, y_ref)
    for ours, ref in zip(fq.backward("this", dy, cache), linear_backward(dy, c_ref), strict=True):
        assert np.array_equal(ours, ref)
    y_q, _ = fq.forward("other", x, w, b)
    assert not np.allclose(y_q, y_ref, atol=1e-2)  # and the chosen one is quantized


def test_dynamic_activations_are_the_int8_kernels_grid(rng):
    x = (rng.standard_normal((3, 7, 16)) * 2 + 0.5).astype(np.float32)  # [B, T, K]
    fq = FakeQuantLinear(activations="dynamic")
    x_hat, mask = fq.fake_quantize_input("l", x)
    q, s, z = quantize_rows_uint8(x.reshape(-1, 16))  # the kernels' reference quantizer
    expected = s[:, None] * (q.astype(np.float32) - z[:, None].astype(np.float32))
    assert mask is None
    assert np.array_equal(x_hat.reshape(-1, 16), expected.astype(np.float32))


def test_weight_only_forward_uses_the_quantized_weight(rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    spec = QuantSpec(4, "asymmetric", "group", group_size=4)
    fq = FakeQuantLinear(spec)
    y, cache = fq.forward("l", x, w, None)
    w_hat = cache.lin.w
    assert np.array_equal(w_hat, quantize_tensor(w, spec).q * 0 + w_hat)  # shape, dtype
    assert len(np.unique(w_hat[:4, 0])) <= 16 and not np.array_equal(w_hat, w)
    assert_close(y, x @ w_hat, rtol=1e-6, name="y")
    assert cache.x_pass is None and cache.w_pass is None  # own min-max: nothing clipped


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="activations must be one of none, static, dynamic"):
        FakeQuantLinear(activations="per-token")
    with pytest.raises(ValueError, match="static activations need act_qparams"):
        FakeQuantLinear(activations="static")
    with pytest.raises(ValueError, match="act_scheme must be 'asymmetric' or 'symmetric'"):
        FakeQuantLinear(activations="dynamic", act_scheme="log")
    with pytest.raises(ValueError, match="bits must be in"):
        FakeQuantLinear(activations="dynamic", act_bits=12)
    with pytest.raises(ValueError, match="granularity 'model' needs one range"):
        FakeQuantLinear(QuantSpec(8, granularity="model"))
    with pytest.raises(TypeError, match="weights must be a QuantSpec"):
        FakeQuantLinear(8)
    fq = FakeQuantLinear(activations="static", act_qparams={})
    with pytest.raises(ValueError, match="no calibrated activation scale for layer 'fc'"):
        fq.forward("fc", np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), None)
    with pytest.raises(ValueError, match="x must be finite"):
        FakeQuantLinear(activations="dynamic").forward(
            "fc", np.array([[np.nan, 1.0]], np.float32), np.ones((2, 2), np.float32), None
        )
