"""minicompress/quant/tensor.py: each granularity is the per-tensor quantizer applied to the
values that share a range; PyTorch's per-channel observers; float16 scales; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from make_golden_quant import load_golden

from minicompress.quant import formulas as F
from minicompress.quant.tensor import (
    QuantSpec,
    dequantize_tensor,
    error_split,
    fake_quantize_ste,
    fake_quantize_tensor,
    grid_points,
    model_range,
    quantize_tensor,
    scale_zero_point,
)

SCHEMES = ["asymmetric", "symmetric", "log"]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_channel_is_tensor_quantization_of_each_column(scheme, bits, rng):
    w = (rng.standard_normal((12, 5)) * rng.uniform(0.01, 2, 5)).astype(np.float32)  # [K, N]
    qt = quantize_tensor(w, QuantSpec(bits, scheme, "channel"))
    assert qt.scale.shape == (1, 5) and qt.q.shape == w.shape and qt.q.dtype == np.int32
    for n in range(5):
        col = quantize_tensor(w[:, n : n + 1], QuantSpec(bits, scheme, "tensor"))
        assert np.array_equal(qt.q[:, n : n + 1], col.q)
        assert qt.scale[0, n] == col.scale.item() and qt.zero_point[0, n] == col.zero_point.item()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_group_is_tensor_quantization_of_each_group(scheme, rng):
    w = rng.standard_normal((8, 3)).astype(np.float32)  # [K, N], groups of 4 along K
    qt = quantize_tensor(w, QuantSpec(4, scheme, "group", group_size=4))
    assert qt.scale.shape == (2, 1, 3)
    for g in range(2):
        for n in range(3):
            part = quantize_tensor(w[4 * g : 4 * g + 4, n : n + 1], QuantSpec(4, scheme, "tensor"))
            assert np.array_equal(qt.q[4 * g : 4 * g + 4, n : n + 1], part.q)
            assert qt.scale[g, 0, n] == part.scale.item()
    assert_close(
        dequantize_tensor(qt)[4:, 1],
        dequantize_tensor(quantize_tensor(w[4:, 1:2], QuantSpec(4, scheme, "tensor")))[:, 0],
        rtol=0,
        name="group 1 of column 1",
    )


def test_embedding_rows_are_channels(rng):
    table = rng.standard_normal((6, 8)).astype(np.float32)  # [V, C]: one range per token
    qt = quantize_tensor(table, QuantSpec(8, "asymmetric", "channel", axis=0))
    assert qt.scale.shape == (6, 1)
    qg = quantize_tensor(table, QuantSpec(4, "symmetric", "group", axis=0, group_size=4))
    assert qg.scale.shape == (6, 2, 1)  # view [V, C/G, G]: per row, per group of 4
    assert np.array_equal(
        qg.q[2, 4:], quantize_tensor(table[2:3, 4:], QuantSpec(4, "symmetric", "tensor")).q[0]
    )


def test_model_granularity_shares_one_range(rng):
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = (rng.standard_normal((5, 2)) * 3).astype(np.float32)
    lo, hi = model_range([a, b])
    assert (lo, hi) == (min(a.min(), b.min()), max(a.max(), b.max()))
    spec = QuantSpec(8, "asymmetric", "model")
    qa, qb = quantize_tensor(a, spec, lo, hi), quantize_tensor(b, spec, lo, hi)
    assert qa.scale.item() == qb.scale.item() == F.linear_scale(lo, hi, 8)
    assert qa.zero_point.item() == qb.zero_point.item()
    # a's own range is narrower: its codes use only part of the grid
    assert qa.q.max() - qa.q.min() < 255 * 0.7
    with pytest.raises(ValueError, match="granularity 'model' takes one range"):
        quantize_tensor(a, spec)


def test_given_range_clips(rng):
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 4.0], np.float32)
    spec = QuantSpec(8, "asymmetric", "tensor")
    y = fake_quantize_tensor(x, spec, -1.0, 1.0)
    # s = 2/255 and z = round(1 / s) = 127 (1/s is 127.49999 in float32): the grid covers
    # [-127 s, 128 s]; -3 and -1 land on its low end, 4 on its high end
    s = F.linear_scale(np.float32(-1), np.float32(1), 8)
    assert y[0] == y[1] == -127 * s and y[-1] == 128 * s
    assert y[2] == 0.0  # zero is exact
    assert abs(y[3] - 0.5) <= s / 2 and abs(y[4] - 1.0) <= s / 2


@pytest.mark.parametrize("name", ["observer_per_channel_symmetric", "observer_per_channel_affine"])
def test_per_channel_scales_match_torch_observer_golden(name):
    # PerChannelMinMaxObserver(ch_axis=1): symmetric qint8 s = max|w| / 127.5 on [-128, 127]
    # (our narrow=False), affine quint8 s = (max(hi, 0) - min(lo, 0)) / 255, z = -round(lo / s)
    case = load_golden(name)
    w = case["batches"][0]
    scheme = "symmetric" if name.endswith("symmetric") else "asymmetric"
    qt = quantize_tensor(w, QuantSpec(8, scheme, "channel", axis=1, narrow=False))
    assert_close(qt.scale[0], case["scale"], rtol=0, name=f"{name}.scale")
    assert np.array_equal(qt.zero_point[0], case["zero_point"])


def test_float16_scales_are_what_the_codes_use(rng):
    w = rng.standard_normal((64, 6)).astype(np.float32)
    spec = QuantSpec(4, "asymmetric", "group", group_size=16, scale_dtype="float16")
    qt = quantize_tensor(w, spec)
    assert qt.scale.dtype == np.float16
    # re-quantizing with the stored scale gives the stored codes: the file is the simulation
    view = F.group_view(w, 16, 0)
    q = F.quantize(view, qt.scale.astype(np.float32), qt.zero_point, 0, 15).reshape(w.shape)
    assert np.array_equal(q, qt.q)
    err = np.abs(dequantize_tensor(qt) - w)
    assert err.max() <= qt.scale.astype(np.float32).max() * 0.51


def test_does_not_mutate_and_keeps_dtype(rng):
    w = rng.standard_normal((8, 4))  # float64
    before = w.copy()
    y = fake_quantize_tensor(w, QuantSpec(8, "symmetric", "channel"))
    assert np.array_equal(w, before) and y.dtype == np.float64


shapes = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8)


@settings(max_examples=120, deadline=None)
@given(
    hnp.arrays(np.float32, shapes, elements=st.floats(-100, 100, width=32)),
    st.integers(2, 8),
    st.sampled_from(["asymmetric", "symmetric"]),
    st.sampled_from(["tensor", "channel"]),
)
def test_error_at_most_half_a_step(w, bits, scheme, granularity):
    qt = quantize_tensor(w, QuantSpec(bits, scheme, granularity))
    q_min, q_max = qt.spec.code_range()
    assert qt.q.min() >= q_min and qt.q.max() <= q_max
    step = np.broadcast_to(qt.scale, w.shape)
    err = np.abs(dequantize_tensor(qt) - w)
    assert np.all(err <= step / 2 + 4 * np.finfo(np.float32).eps * (np.abs(w) + step))
    again = quantize_tensor(dequantize_tensor(qt), qt.spec, *_range_of(qt))
    assert np.array_equal(again.q, qt.q)  # quantize o dequantize is the identity on codes


def _range_of(qt):
    """The range [s (q_min - z), s (q_max - z)] that the grid of qt covers."""
    q_min, q_max = qt.spec.code_range()
    s, z = qt.scale, qt.zero_point
    return s * (q_min - z), s * (q_max - z)


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------


def test_bad_values_are_refused():
    spec = QuantSpec()
    with pytest.raises(ValueError, match="x must be finite"):
        quantize_tensor(np.array([[1.0, np.nan]], np.float32), spec)
    with pytest.raises(ValueError, match="x is empty"):
        quantize_tensor(np.zeros((0, 4), np.float32), spec)
    with pytest.raises(ValueError, match="ranges must be finite with lo <= hi"):
        quantize_tensor(np.zeros((2, 4), np.float32), QuantSpec(granularity="tensor"), 1.0, -1.0)
    with pytest.raises(ValueError, match="give both lo and hi"):
        quantize_tensor(np.zeros((2, 4), np.float32), spec, lo=-1.0)
    with pytest.raises(ValueError, match="at least one tensor"):
        model_range([])
    with pytest.raises(ValueError, match="tensor 1 must be finite"):
        model_range([np.ones(2, np.float32), np.array([np.inf], np.float32)])


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="bits must be in"):
        QuantSpec(bits=9)
    with pytest.raises(ValueError, match="needs group_size"):
        QuantSpec(granularity="group")
    with pytest.raises(ValueError, match="group_size is only used with granularity 'group'"):
        QuantSpec(granularity="channel", group_size=32)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        QuantSpec(granularity="group", group_size=0)
    with pytest.raises(ValueError, match="scale_dtype must be"):
        QuantSpec(scale_dtype="bfloat16")
    with pytest.raises(ValueError, match="scheme must be one of"):
        QuantSpec(scheme="minmax")
    with pytest.raises(ValueError, match="divide the dimension"):
        quantize_tensor(
            np.zeros((10, 4), np.float32), QuantSpec(4, granularity="group", group_size=3)
        )
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        quantize_tensor(np.zeros((10, 4), np.float32), QuantSpec(axis=3))


def test_torch_symmetric_convention_clips_the_positive_extreme():
    # max|w| / (max|w| / 127.5) = 127.5 rounds (half to even) to 128, beyond 127: PyTorch's
    # convention clips the largest positive weight of every channel by half a step; ours
    # (/127 on [-127, 127]) represents it exactly
    w = np.array([-0.9, 0.3, 127.5 / 64], np.float32)  # s = 1/64 exactly: an exact tie
    x_hat, mask = fake_quantize_ste(w, QuantSpec(8, "symmetric", "tensor", narrow=False))
    assert mask.tolist() == [True, True, False] and x_hat[2] == 127 / 64
    x_hat, mask = fake_quantize_ste(w, QuantSpec(8, "symmetric", "tensor"))
    assert mask.all() and x_hat[2] == w[2]


def test_grid_points_by_hand():
    spec = QuantSpec(2, "asymmetric", "tensor")
    s, z = scale_zero_point(np.float32(-0.25), np.float32(0.75), spec)  # the course's case
    assert_close(grid_points(s, z, spec), np.array([-1, 0, 1, 2]) / 3, rtol=1e-7, name="grid")
    log = QuantSpec(3, "log", "tensor")
    assert grid_points(np.float32(0.25), 0, log).tolist() == [-1, -0.5, -0.25, 0, 0.25, 0.5, 1]


def test_error_split_into_clipping_and_rounding():
    spec = QuantSpec(8, "asymmetric", "tensor")
    x = np.array([-3.0, -0.5, 0.2, 0.7, 2.5], np.float32)
    clip, rnd = error_split(x, spec, np.float32(-1), np.float32(1))
    s, z = scale_zero_point(np.float32(-1), np.float32(1), spec)
    ends = grid_points(s, z, spec)[[0, -1]]
    assert clip == pytest.approx((-3 - ends[0]) ** 2 + (2.5 - ends[1]) ** 2, rel=1e-6)
    assert 0 < rnd <= 3 * (s / 2) ** 2
    assert error_split(x, spec, x.min(), x.max())[0] == 0  # min-max: nothing clipped
