"""minicompress/quant/formulas.py: hand-worked cases, PyTorch's fake quantization (live
when installed, else the golden files of ``make_golden_quant.py``), and properties."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from make_golden_quant import FAKE_QUANT_BUILDERS, load_golden

from minicompress.quant import formulas as F

# ----------------------------------------------------------------------------------------
# hand-worked cases
# ----------------------------------------------------------------------------------------


def test_course_case_two_bits():
    # w in [-0.25, 0.75] at 2 bits: s = (0.75 + 0.25) / (2**2 - 1) = 1/3, z = round(0.75) = 1.
    # w / s = [-0.75, 0, 0.75, 1.5, 2.25] -> round (half to even) [-1, 0, 1, 2, 2] -> + z
    w = np.array([-0.25, 0.0, 0.25, 0.5, 0.75], np.float32)
    s = F.linear_scale(w.min(), w.max(), 2)
    assert s == np.float32(1 / 3) and s.dtype == np.float32
    z = F.asymmetric_zero_point(w.min(), s)
    assert z == 1
    q = F.quantize(w, s, z, *F.code_range(2, "asymmetric"))
    assert q.tolist() == [0, 1, 2, 3, 3] and q.dtype == np.int32
    w_hat = F.dequantize(q, s, z)
    assert_close(w_hat, np.array([-1, 0, 1, 2, 2]) / 3, rtol=1e-7, name="w_hat")
    # the course's form Q(w) = clip(round(w / s), c_min, c_max): the same grid, codes - z
    c_min, c_max = F.course_code_range(w.min(), s, 2)
    assert (c_min, c_max) == (-1, 2)
    assert F.quantize(w, s, 0, c_min, c_max).tolist() == [-1, 0, 1, 2, 2]


def test_symmetric_three_bits_by_hand():
    # max|w| = 1.5, 3 bits: s = 1.5 / (2**2 - 1) = 0.5; codes in [-3, 3]
    # w / s = [-3, -0.5, 0.5, 1.5, 2.5, 3] -> round half to even [-3, -0, 0, 2, 2, 3]
    w = np.array([-1.5, -0.25, 0.25, 0.75, 1.25, 1.5], np.float32)
    s = F.symmetric_scale(np.abs(w).max(), 3)
    assert s == 0.5
    assert F.code_range(3, "symmetric") == (-3, 3)
    q = F.quantize(w, s, 0, -3, 3)
    assert q.tolist() == [-3, 0, 0, 2, 2, 3]
    assert F.dequantize(q, s, 0).tolist() == [-1.5, 0.0, 0.0, 1.0, 1.0, 1.5]


def test_symmetric_scale_conventions_127_and_127_5():
    amax = np.float32(12.7)
    assert F.symmetric_scale(amax, 8) == np.float32(12.7) / np.float32(127)  # ours, narrow
    assert F.symmetric_scale(amax, 8, narrow=False) == np.float32(12.7) / np.float32(127.5)
    assert F.code_range(8, "symmetric") == (-127, 127)
    assert F.code_range(8, "symmetric", narrow=False) == (-128, 127)
    assert F.code_range(8, "asymmetric") == (0, 255)
    assert F.code_range(2, "log") == (-1, 1)


def test_rounding_is_half_to_even():
    s = np.float32(0.25)
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32) * s  # exact half steps
    assert F.quantize(x, s, 0, -10, 10).tolist() == [0, 2, 2, 0, -2, -2]


def test_clipping_outside_the_range():
    s, z = np.float32(0.1), np.int32(3)  # grid [0, 7] covers [-0.3, 0.4]
    x = np.array([-5.0, -0.3, 0.4, 5.0], np.float32)
    assert F.quantize(x, s, z, 0, 7).tolist() == [0, 0, 7, 7]
    assert F.ste_mask(x, s, z, 0, 7).tolist() == [False, True, True, False]


def test_values_beyond_the_float_range_of_x_over_s_clip():
    s = np.float32(1e-30)  # x / s overflows float32 to +-inf: still clipped, no warning
    x = np.array([3e38, -3e38, 0.0], np.float32)
    with np.errstate(all="raise"):
        assert F.quantize(x, s, 3, 0, 15).tolist() == [15, 0, 3]
        assert F.ste_mask(x, s, 3, 0, 15).tolist() == [False, False, True]


@pytest.mark.parametrize("value", [0.0, 0.3, -2.5])
def test_constant_tensor_does_not_divide_by_zero(value):
    w = np.full(7, value, np.float32)
    with np.errstate(all="raise"):  # any division by zero or invalid op fails the test
        s = F.linear_scale(w.min(), w.max(), 4)
        z = F.asymmetric_zero_point(w.min(), s)
        assert s == (abs(value) if value else 1.0)
        # the course's form (no widening to 0): the constant is still exact
        c_min, c_max = F.course_code_range(w.min(), s, 4)
        assert np.array_equal(F.quantize(w, s, 0, c_min, c_max) * s, w)
        # the package's form: range widened to hold 0
        lo, hi = F.include_zero(w.min(), w.max())
        s2 = F.linear_scale(lo, hi, 4)
        z2 = F.asymmetric_zero_point(lo, s2)
        assert np.array_equal(F.fake_quantize(w, s2, z2, 0, 15), w)
        s3 = F.symmetric_scale(np.abs(w).max(), 4)
        assert np.array_equal(F.fake_quantize(w, s3, 0, -7, 7), w)
        s4 = F.log_scale(np.abs(w).max(), 4)
        if value:
            assert np.isfinite(s4) and s4 > 0
    assert z.dtype == np.int32


def test_log_quantization_by_hand():
    # bits 3: 2**2 - 1 = 3 magnitudes. max|x| = 1 -> e_max = 0, e_min = -2: grid {0, ±1/4, ±1/2, ±1}
    x = np.array([1.0, 0.6, 0.3, 0.1, -0.5, 0.13, -0.2, 3.0], np.float32)
    s = F.log_scale(np.float32(1.0), 3)
    assert s == 0.25
    q = F.log_quantize(x, s, 3)
    # 0.6: log2(0.6/0.25) = 1.26 -> code 2; 0.3: 0.26 -> 1; 0.1 < s/2 -> 0;
    # 0.13 >= s/2 -> 1 (nearer s than 0); -0.2: log2(0.8) = -0.32 -> 0 -> code 1; 3.0 clips to 3
    assert q.tolist() == [3, 2, 1, 0, -2, 1, -1, 3]
    assert F.log_dequantize(q, s).tolist() == [1.0, 0.5, 0.25, 0.0, -0.5, 0.25, -0.25, 1.0]


def test_log_grid_at_two_bits_is_ternary():
    s = F.log_scale(np.float32(0.9), 2)  # e_max = round(log2 0.9) = 0: grid {0, ±1}
    x = np.array([-0.9, -0.4, 0.0, 0.6], np.float32)
    assert F.log_dequantize(F.log_quantize(x, s, 2), s).tolist() == [-1.0, 0.0, 0.0, 1.0]


def test_dtype_is_kept():
    x = np.linspace(-1, 1, 9)  # float64
    s = F.linear_scale(x.min(), x.max(), 8)
    assert s.dtype == np.float64
    assert F.fake_quantize(x, s, F.asymmetric_zero_point(x.min(), s), 0, 255).dtype == np.float64
    x32 = x.astype(np.float32)
    s32 = F.linear_scale(x32.min(), x32.max(), 8)
    assert s32.dtype == np.float32
    assert F.fake_quantize(x32, s32, 0, 0, 255).dtype == np.float32


def test_group_view_and_granular_view():
    w = np.arange(24, dtype=np.float32).reshape(6, 4)  # [K=6, N=4]
    v = F.group_view(w, 3, axis=0)
    assert v.shape == (2, 3, 4) and np.shares_memory(v, w)
    assert np.array_equal(v[1, :, 2], w[3:6, 2])  # group 1 of column 2: rows 3..5
    view, axes = F.granular_view(w, "group", axis=1, group_size=2)
    lo, hi = F.min_max(view, axes)
    assert lo.shape == (3, 1, 4) and lo[1, 0, 2] == w[2, 2] and hi[1, 0, 2] == w[3, 2]
    _, axes = F.granular_view(w, "channel", axis=1)
    assert axes == (0,)
    # embedding tables [V, C]: a channel is a row (axis 0), groups run along C
    view, axes = F.granular_view(w, "group", axis=0, group_size=2)
    assert view.shape == (6, 2, 2) and axes == (2,)


# ----------------------------------------------------------------------------------------
# PyTorch: fake_quantize_per_tensor_affine / fake_quantize_per_channel_affine
# ----------------------------------------------------------------------------------------


def ours_fake_quant(case):
    """Our fake quantization and straight-through gradient on a case of make_golden_quant.
    Per channel: torch's scale [N] along axis 1 of x [K, N] is ours [1, N]."""
    x, scale, zp = case["x"], case["scale"], case["zero_point"]
    if scale.ndim == 1:
        scale, zp = scale[None, :], zp[None, :]
    q_range = int(case["q_min"]), int(case["q_max"])
    y = F.fake_quantize(x, scale, zp, *q_range)
    dx = case["dy"] * F.ste_mask(x, scale, zp, *q_range)
    return y, dx, scale


def near_tie(x, scale):
    """Where x / s lies within 4 ulps of a half-integer: torch's x * (1/s) may round the
    other way there. With a power-of-two scale both are exact: nothing is excluded."""
    if np.all(np.frexp(scale)[0] == 0.5):
        return np.zeros(x.shape, bool)
    r = x.astype(np.float64) / scale.astype(np.float64)
    return np.abs(np.abs(r - np.floor(r)) - 0.5) < 4 * np.finfo(np.float32).eps * np.abs(r)


def compare_fake_quant(name, case):
    """Equal to torch bit for bit, except that at a near-tie (x / s within a few ulps of
    k + 1/2, which the cases plant on purpose) the two may round apart by one step."""
    y, dx, scale = ours_fake_quant(case)
    ties = near_tie(case["x"], scale)
    keep = ~ties
    assert_close(y[keep], case["y"][keep], rtol=0, atol=0, name=f"{name}.y")
    assert_close(dx[keep], case["dx"][keep], rtol=0, atol=0, name=f"{name}.dx")
    step = np.broadcast_to(scale, y.shape)[ties]
    assert np.all(np.abs(y - case["y"])[ties] <= step * 1.0001), f"{name}: more than a step"


@pytest.mark.parametrize("name", list(FAKE_QUANT_BUILDERS))
def test_fake_quantize_matches_torch_golden(name):
    compare_fake_quant(name, load_golden(name))


@pytest.mark.parametrize("name", list(FAKE_QUANT_BUILDERS))
def test_fake_quantize_matches_torch_live(name, torch, rng):
    compare_fake_quant(name, FAKE_QUANT_BUILDERS[name](torch, rng))


def test_golden_fake_quant_exercises_ties_and_clipping():
    case = load_golden("fq_tensor_uint8_pow2")
    r = case["x"] / case["scale"]
    assert (r - np.floor(r) == 0.5).sum() >= 40  # exact ties, rounded half to even by both
    case = load_golden("fq_tensor_int4_symmetric")
    assert (case["dx"] == 0).sum() >= 20  # clipped values get no gradient


def test_torch_rounds_x_times_reciprocal():
    # The stated difference of conventions, shown on the golden case where it bites: at
    # near-ties ours (x / s) and torch's (x * (1/s)) round apart; torch's own expression,
    # typed here, reproduces torch's output everywhere.
    case = load_golden("fq_tensor_int4_symmetric")
    x, s = case["x"], case["scale"]
    y, _, _ = ours_fake_quant(case)
    differ = y != case["y"]
    assert differ.any() and near_tie(x, s)[differ].all()
    inv = np.float32(1) / s
    torch_style = np.clip(np.rint(x * inv), case["q_min"], case["q_max"]).astype(np.float32) * s
    assert np.array_equal(torch_style, case["y"])


# ----------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------

finite_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=12),
    elements=st.floats(-1e3, 1e3, width=32),
)


def _grid(x, bits, scheme):
    """Scale, zero point and code range of x's own min-max range, as the package does it."""
    lo, hi = x.min(), x.max()
    if scheme == "asymmetric":
        lo, hi = F.include_zero(lo, hi)
        s = F.linear_scale(lo, hi, bits)
        return s, F.asymmetric_zero_point(lo, s), F.code_range(bits, scheme)
    s = F.symmetric_scale(np.maximum(np.abs(lo), np.abs(hi)), bits)
    return s, np.int32(0), F.code_range(bits, scheme)


@settings(max_examples=150, deadline=None)
@given(finite_arrays, st.integers(2, 8), st.sampled_from(["asymmetric", "symmetric"]))
def test_codes_on_grid_error_bounded_and_idempotent(x, bits, scheme):
    s, z, (q_min, q_max) = _grid(x, bits, scheme)
    q = F.quantize(x, s, z, q_min, q_max)
    assert q.min() >= q_min and q.max() <= q_max  # every code on its grid
    assert q_max - q_min + 1 == (2**bits if scheme == "asymmetric" else 2**bits - 1)
    x_hat = F.dequantize(q, s, z)
    # inside the range (min-max: everywhere) the error is at most half a step (plus the
    # float32 rounding of s * (q - z) itself)
    bound = s / 2 + 4 * np.finfo(np.float32).eps * (np.abs(x) + s)
    assert np.all(np.abs(x - x_hat) <= bound), np.max(np.abs(x - x_hat) - bound)
    assert np.array_equal(F.fake_quantize(x_hat, s, z, q_min, q_max), x_hat)  # idempotent
    # nothing inside the range is clipped; an end may be, by under half a step (checked by
    # the bound above): the zero point is rounded, which shifts the grid by up to half a
    # step (x = [-1, 1] at 2 bits: z = round(1.5) = 2 puts 1 at code 3.5 of 0..3)
    kept = F.ste_mask(x, s, z, q_min, q_max)
    assert np.all(kept | (x == x.max()) | (x == x.min()))


@settings(max_examples=100, deadline=None)
@given(finite_arrays, st.integers(2, 8))
def test_course_form_equals_asymmetric_with_zero_point(x, bits):
    lo, hi = F.include_zero(x.min(), x.max())
    s = F.linear_scale(lo, hi, bits)
    z = F.asymmetric_zero_point(lo, s)
    c_min, c_max = F.course_code_range(lo, s, bits)
    assert c_min == -z
    assert np.array_equal(F.quantize(x, s, 0, c_min, c_max) + z, F.quantize(x, s, z, 0, c_max + z))


@settings(max_examples=100, deadline=None)
@given(finite_arrays, st.integers(2, 8))
def test_log_codes_are_signed_powers_of_two(x, bits):
    s = F.log_scale(np.abs(x).max(), bits)
    q = F.log_quantize(x, s, bits)
    levels = 2 ** (bits - 1) - 1
    assert np.abs(q).max() <= levels
    x_hat = F.log_dequantize(q, s)
    nz = x_hat != 0
    mant, _ = np.frexp(np.abs(x_hat[nz]))
    assert np.all(mant == 0.5)  # |x_hat| = 2**e exactly
    assert np.all(np.sign(x_hat[nz]) == np.sign(x[nz]))
    # inside the grid's range, the rounding is to the nearest exponent: within half an octave
    inside = nz & (np.abs(x) >= s) & (np.abs(x) <= s * 2.0 ** (levels - 1))
    assert np.all(np.abs(np.log2(np.abs(x[inside]) / np.abs(x_hat[inside]))) <= 0.5 + 1e-6)
    assert np.array_equal(F.log_quantize(x_hat, s, bits), q)  # idempotent


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 1, 9, 16, -8])
def test_bits_outside_2_to_8_are_refused(bits):
    with pytest.raises(ValueError, match=r"bits must be in \[2, 8\]; got"):
        F.linear_scale(np.float32(-1), np.float32(1), bits)
    with pytest.raises(ValueError, match="bits must be in"):
        F.code_range(bits, "symmetric")


@pytest.mark.parametrize("bits", [4.0, "8", True, None])
def test_bits_of_the_wrong_type_are_refused(bits):
    with pytest.raises(TypeError, match="bits must be an integer"):
        F.check_bits(bits)


def test_check_values_refuses_nan_inf_empty_and_ints():
    with pytest.raises(ValueError, match="must be finite; it holds 2 NaN or infinite"):
        F.check_values("w", np.array([1.0, np.nan, np.inf], np.float32))
    with pytest.raises(ValueError, match=r"w is empty \(shape \(0, 3\)\)"):
        F.check_values("w", np.zeros((0, 3), np.float32))
    with pytest.raises(TypeError, match="floating-point dtype; got int64"):
        F.check_values("w", np.arange(3))
    with pytest.raises(TypeError, match="numpy.ndarray; got list"):
        F.check_values("w", [1.0])


def test_unknown_scheme_and_granularity_are_refused():
    with pytest.raises(ValueError, match="scheme must be one of asymmetric, symmetric, log"):
        F.code_range(8, "affine")
    with pytest.raises(ValueError, match="granularity must be one of model, tensor"):
        F.granular_view(np.zeros((2, 2), np.float32), "row")


def test_axis_out_of_range_is_refused():
    w = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="axis 2 is out of range for an array of 2 dim"):
        F.granular_view(w, "channel", axis=2)
    with pytest.raises(ValueError, match="axis -3 is out of range"):
        F.group_view(w, 2, axis=-3)


def test_group_size_must_divide_the_dimension():
    w = np.zeros((10, 6), np.float32)
    with pytest.raises(ValueError, match=r"group_size 4 must be >= 1 and divide .*size 10"):
        F.granular_view(w, "group", axis=1, group_size=4)
    with pytest.raises(ValueError, match="group_size 0 must be >= 1"):
        F.group_view(w, 0)
    with pytest.raises(ValueError, match="group granularity needs a 2-D array"):
        F.granular_view(np.zeros((2, 2, 2), np.float32), "group", group_size=2)
    with pytest.raises(ValueError, match="needs a group_size"):
        F.granular_view(w, "group", axis=1)


# ----------------------------------------------------------------------------------------
# the int8 kernels' quantizers are these formulas, bit for bit
# ----------------------------------------------------------------------------------------


def _kernel_cases(rng):
    x = (rng.standard_normal((37, 53)) * rng.uniform(0.01, 10, (37, 1))).astype(np.float32)
    x[3] = 0.0  # an all-zero row / column
    x[5] = 2.5  # a constant row
    x[7, :4] = [0.5, -0.5, 1.5, -2.5]  # ties at a unit scale
    x[9] = np.abs(x[9])  # one-signed rows: the range widened to hold 0
    x[11] = -np.abs(x[11])
    return x


def test_kernel_weight_quantizer_is_symmetric_per_channel(rng):
    from minicompress.kernels.reference import quantize_weight_per_channel

    w = _kernel_cases(rng)
    q_ref, s_ref = quantize_weight_per_channel(w)
    s = F.symmetric_scale(np.abs(w).max(axis=0), 8)  # [N]: max|w| / 127
    q = F.quantize(w, s, 0, *F.code_range(8, "symmetric"))  # [-127, 127]
    assert np.array_equal(s, s_ref) and s.dtype == s_ref.dtype
    assert np.array_equal(q, q_ref)


def test_kernel_activation_quantizer_is_asymmetric_per_row(rng):
    from minicompress.kernels.reference import quantize_rows_uint8

    x = _kernel_cases(rng)
    q_ref, s_ref, z_ref = quantize_rows_uint8(x)
    lo, hi = F.include_zero(x.min(axis=1), x.max(axis=1))  # [M]
    s = F.linear_scale(lo, hi, 8)  # (hi - lo) / 255
    z = F.asymmetric_zero_point(lo, s)
    q = F.quantize(x, s[:, None], z[:, None], *F.code_range(8, "asymmetric"))
    assert np.array_equal(s, s_ref) and s.dtype == s_ref.dtype
    assert np.array_equal(z, z_ref) and np.array_equal(q, q_ref)
