"""minicompress.kernels.fastmath: the vectorizable exp (float64 and float32) against
NumPy's exp in float64, the float32 GELUs against their formulas in float64 (SciPy's erfc),
and the bit reinterpretation against NumPy's view."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close
from numba import njit
from scipy.special import erf, erfc

from minicompress.deploy.ops import gelu_forward_infer
from minicompress.kernels import fastmath as F


def test_float32_from_bits_against_numpy_view():
    bits = np.array([0, 127 << 23, (127 + 5) << 23, (127 - 126) << 23, 0x3FC00000], np.int32)
    want = bits.view(np.float32)  # 0, 1, 32, 2^-126, 1.5
    assert [F.float32_from_bits(int(b)) for b in bits] == list(want)
    assert want[1] == 1.0 and want[2] == 32.0 and want[4] == 1.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_nonpositive_hand_values(dtype):
    x = np.array([0.0, -1.0, -np.log(2.0), -87.0, -87.5, -1e9, -np.inf], dtype)
    got = F.exp_nonpositive_array(x)
    want = np.exp(x.astype(np.float64))
    want[4:] = 0.0  # below -87: 0 by definition
    assert got.dtype == dtype
    rtol = 1e-7 if dtype == np.float32 else 1e-8
    assert_close(got.astype(np.float64), want, rtol=rtol, atol=0.0, name="exp")
    assert got[0] == 1.0


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-7), (np.float64, 1e-8)])
def test_exp_nonpositive_against_numpy_over_its_range(rng, dtype, rtol):
    """float64 (scaling and squaring): the documented 1e-8; float32 (Cody-Waite): under one
    float32 ulp, 1e-7 — also at x near -87, where merging the two parts of ln 2 (the
    compiler under ``reassoc``) would cost five ulps."""
    x = np.concatenate([-rng.uniform(0, 87, 400_000), -rng.uniform(80, 87, 50_000),
                        -rng.uniform(0, 1e-4, 1000)]).astype(dtype)  # fmt: skip
    exact = np.exp(x.astype(np.float64))
    got = F.exp_nonpositive_array(x)
    assert got.dtype == dtype
    rel = np.abs(got.astype(np.float64) - exact) / exact
    assert rel.max() < rtol, (rel.max(), x[np.argmax(rel)])


def test_exp_nonpositive_refuses_positive_and_nan():
    with pytest.raises(ValueError, match="<= 0"):
        F.exp_nonpositive_array(np.array([-1.0, 0.5]))
    with pytest.raises(ValueError, match="<= 0"):
        F.exp_nonpositive_array(np.array([np.nan], np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        F.exp_nonpositive_array(np.array([-1, 0]))


@njit(cache=False)
def _erf_loop(z, y):
    for i in range(z.size):
        y[i] = F.erf_f32(z[i])


def _erf_array(z: np.ndarray) -> np.ndarray:
    y = np.empty_like(z)
    _erf_loop(z, y)
    return y


def _gelu64(x: np.ndarray, approximate: str) -> np.ndarray:
    """The two GELU formulas in float64 (erf through SciPy's erfc: no cancellation)."""
    x = x.astype(np.float64)
    if approximate == "none":
        z = np.abs(x) / np.sqrt(2.0)
        return 0.5 * x * np.where(x < 0, erfc(z), 2.0 - erfc(z))
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize(
    "approximate, rtol, atol_neg", [("none", 3e-7, 1e-6), ("tanh", 2e-7, 1e-7)]
)
def test_gelu_f32_against_formula_in_float64(rng, approximate, rtol, atol_neg):
    """Relative error on x >= 0, absolute on x < 0 (where GELU -> 0: the erf form's 1 + erf
    is a difference of numbers near 1, the tanh form's exponent is rounded in float32: see
    the docstrings)."""
    x = np.concatenate([
        (rng.standard_normal(300_000) * 4).astype(np.float32),
        np.linspace(-12, 12, 200_001, dtype=np.float32),
        np.float32([0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 13.0, -13.0, 1e4, -1e4]),
    ])  # fmt: skip
    y, _ = gelu_forward_infer(x, approximate)
    assert y.dtype == np.float32
    ref = _gelu64(x, approximate)
    pos = x >= 0
    assert_close(y[pos], ref[pos], rtol=rtol, atol=1e-37, name=f"gelu {approximate}, x >= 0")
    assert_close(y[~pos], ref[~pos], rtol=0.0, atol=atol_neg, name=f"gelu {approximate}, x < 0")
    assert np.all(y[x < 0] <= 0) and np.all(y[pos] >= 0)  # GELU's sign is x's


def test_erf_f32_against_scipy(rng):
    """The rational fit of erf (``tests/fit_erf_rational.py``) in float32: relative error
    < 4e-7 on [0, 4], exactly 1 past it (where erf rounds to 1 in float32), odd use by GELU
    aside."""
    z = np.concatenate([
        np.linspace(0, 6, 600_001, dtype=np.float32),
        np.abs(rng.standard_normal(100_000)).astype(np.float32),
        np.float32([1e-30, 1e-6, 3.9999998, 4.0, 1e4, np.inf]),
    ])  # fmt: skip
    got = np.array([F.erf_f32(v) for v in z[-6:]], dtype=np.float32)
    assert got[-3:].tolist() == [1.0, 1.0, 1.0]
    y = _erf_array(z)
    ref = erf(z.astype(np.float64))
    assert_close(y, ref, rtol=4e-7, atol=1e-37, name="erf_f32")
    assert np.all(np.diff(y[:600_001]) >= -8e-7)  # monotone as erf, to twice its error
    assert np.all(y <= 1.0)
