"""exp and GELU that LLVM vectorizes: the scalar functions the inference ops call inside
their Numba loops.

Without Intel's SVML, Numba's ``math.exp`` and SciPy's ``erf`` are scalar library calls,
one element at a time. The functions here are built from multiplies, adds, one division,
a rounding and a bit pattern, so a loop that calls them runs 16 float32 lanes per
instruction (AVX-512) or 8 (AVX2):

- ``exp_nonpositive``: float64, scaling and squaring, relative error < 1e-8 (the float64
  checks of the whole model use it);
- ``exp_nonpositive_f32``: float32, Cody and Waite's reduction x = n ln 2 + r and a degree-7
  polynomial, 2^n written as the bits of a float: relative error < 1e-7 (under one float32
  ulp), four times faster than the float64 one;
- ``gelu_erf_f32``: GELU(x) = x Phi(x) with Numerical Recipes' erfc fit, in float32.

Compiler flags: loops that reduce (sums, maxima) may be reassociated so that LLVM
vectorizes them (``FAST``). ``exp_nonpositive_f32`` must not be: with ``reassoc`` LLVM
merges its two-part ln 2 back into one constant and the error grows with |x| (five ulps at
x = -87, measured), so it and every function that calls it are compiled with ``NO_REASSOC``
(the scalar functions are inlined into their caller's loop, with the caller's flags).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

FAST = {"reassoc", "nsz", "contract", "arcp"}  # no flag that assumes finite values
NO_REASSOC = {"nsz", "contract", "arcp"}

# ----------------------------------------------------------------------------------------
# float64: scaling and squaring
# ----------------------------------------------------------------------------------------

_EXP_SQUARINGS = 7  # exp(x) = exp(x / 2^7)^(2^7)
_EXP_MIN = -87.0  # below this exp(x) < 1.7e-38 (the smallest normal float32): 0 is returned


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy", inline="always")
def exp_nonpositive(x):
    """exp(x) for x <= 0 by scaling and squaring:  exp(x) = p(x / 128)^128, where p is the
    Taylor polynomial of degree 11 of exp at 0, evaluated in float64 (Horner).

    On [-87, 0], r = x / 128 lies in [-0.68, 0], where p's relative error is below
    |r|^12 / 12! < 5e-11; seven squarings multiply it by 128: < 1e-8 relative, under one
    float32 ulp (6e-8). x < -87 gives 0 (exp(x) < 1.7e-38 there). x: a float scalar
    (float32 or float64)  ->  float64. Used where the argument is <= 0 by construction: a
    softmax after its maximum is subtracted.
    """
    if x < _EXP_MIN:
        return 0.0
    r = np.float64(x) * (1.0 / 128.0)
    p = 1.0 / 39916800.0  # 1/11!
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    for _ in range(_EXP_SQUARINGS):
        p = p * p
    return p


# ----------------------------------------------------------------------------------------
# float32: Cody-Waite reduction, 2^n from its bits
# ----------------------------------------------------------------------------------------


def float32_from_bits(i):
    """The float32 whose IEEE-754 bit pattern is the int32 ``i`` (a reinterpretation, no
    conversion): float32_from_bits((n + 127) << 23) = 2^n for -126 <= n <= 127."""
    return np.array(i, dtype=np.int32).view(np.float32)[()]


@intrinsic
def _ir_float32_from_bits(typingctx, i):
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if i.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif i.bitwidth < 32:
            v = builder.sext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(i), codegen


@overload(float32_from_bits)
def _ol_float32_from_bits(i):
    return lambda i: _ir_float32_from_bits(i)


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # 11 significant bits: n * _LN2_HI is exact for |n| < 2^13
_LN2_LO = np.float32(-2.12194440e-4)  # ln 2 - _LN2_HI
_EXP_MIN_F32 = np.float32(-87.0)
_C2, _C3, _C4 = np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24)
_C5, _C6, _C7 = np.float32(1 / 120), np.float32(1 / 720), np.float32(1 / 5040)
_ONE, _ZERO = np.float32(1.0), np.float32(0.0)


@njit(cache=True, nogil=True, fastmath=NO_REASSOC, error_model="numpy", inline="always")
def exp_nonpositive_f32(x):
    """exp(x) for float32 x <= 0, in float32 (Cody and Waite, "Software Manual for the
    Elementary Functions", 1980):

        n = round(x / ln 2),  r = x - n ln2_hi - n ln2_lo  (|r| <= ln 2 / 2),
        exp(x) = 2^n p(r),    p = the Taylor polynomial of degree 7 of exp at 0,

    ln 2 split in two so that n ln2_hi is exact; 2^n is the float whose exponent bits are
    n + 127. p's truncation error on |r| <= 0.347 is below 0.347^8 / 8! < 6e-9; with the
    float32 rounding the relative error is below 1e-7 (measured 7.6e-8 over [-87, 0],
    ``tests/test_deploy_fastmath.py``). x < -87 gives 0 (2^n would leave the normal
    range). Compile callers without ``reassoc`` (module docstring).
    x: float32 scalar  ->  float32.
    """
    if x < _EXP_MIN_F32:
        return _ZERO
    n = np.floor(x * _LOG2E + np.float32(0.5))  # float32: math.floor would give an int64
    r = x - n * _LN2_HI - n * _LN2_LO
    p = _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _ONE
    p = p * r + _ONE
    return p * float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")
def _exp_nonpositive_f64_array(x, y):  # x, y: [n]
    for i in range(x.size):
        y[i] = exp_nonpositive(x[i])


@njit(cache=True, nogil=True, fastmath=NO_REASSOC, error_model="numpy")
def _exp_nonpositive_f32_array(x, y):  # x, y: float32 [n]
    for i in range(x.size):
        y[i] = exp_nonpositive_f32(x[i])


def exp_nonpositive_array(x: np.ndarray) -> np.ndarray:
    """exp over an array whose entries are all <= 0 (checked): float64 by
    ``exp_nonpositive``, float32 by ``exp_nonpositive_f32``. x: [...]  ->  exp(x), the same
    shape and dtype."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64; got {x.dtype}")
    if x.size and not (x.max() <= 0):
        raise ValueError(f"x must be <= 0 everywhere (and not NaN); its maximum is {x.max()}")
    xc = np.ascontiguousarray(x)
    y = np.empty_like(xc)
    kernel = _exp_nonpositive_f32_array if x.dtype == np.float32 else _exp_nonpositive_f64_array
    kernel(xc.reshape(-1), y.reshape(-1))
    return y


# ----------------------------------------------------------------------------------------
# GELU, erf form, float32
# ----------------------------------------------------------------------------------------

# erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0: the Chebyshev fit of Press et
# al., "Numerical Recipes" (2nd ed., section 6.2, erfcc), fractional error < 1.2e-7 for every
# z >= 0. P's coefficients, constant term first, in float32:
_P0, _P1, _P2, _P3, _P4, _P5, _P6, _P7, _P8, _P9 = (
    np.float32(c)
    for c in (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
              -1.13520398, 1.48851587, -0.82215223, 0.17087277)
)  # fmt: skip


@njit(cache=True, nogil=True, fastmath=NO_REASSOC, error_model="numpy", inline="always")
def gelu_erf_f32(x):
    """GELU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), written with erfc(z), z = |x| / sqrt 2:
    0.5 x erfc(z) for x < 0 and 0.5 x (2 - erfc(z)) for x >= 0 (no cancellation for x < 0,
    where GELU is a small difference). erfc by the fit above with ``exp_nonpositive_f32``,
    all in float32.

    Accuracy (``tests/test_deploy_fastmath.py``, against SciPy's erfc in float64): relative
    error < 4e-7 for x >= 0; for x < 0 the exponent -z^2 is rounded in float32 (its ulp
    at z^2 = 50 is 4e-6), so the relative error grows to ~1e-5 at x = -10, where GELU is
    -8e-23: there the bound is absolute, 1e-7 (measured 7.3e-8).
    x: float32 scalar  ->  float32.
    """
    z = abs(x) * np.float32(0.7071067811865476)  # |x| / sqrt(2)
    t = _ONE / (_ONE + np.float32(0.5) * z)
    p = _P9
    p = _P8 + t * p
    p = _P7 + t * p
    p = _P6 + t * p
    p = _P5 + t * p
    p = _P4 + t * p
    p = _P3 + t * p
    p = _P2 + t * p
    p = _P1 + t * p
    p = _P0 + t * p
    # the exponent is <= 0 but for +3e-8 at z = 0 (the fit's own error): clamp it
    erfc = t * exp_nonpositive_f32(min(p - z * z, _ZERO))
    return np.float32(0.5) * x * (erfc if x < 0 else np.float32(2.0) - erfc)


# ----------------------------------------------------------------------------------------
# GELU, tanh form, float32
# ----------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = np.float32(0.7978845608028654)
_GELU_C = np.float32(0.044715)


@njit(cache=True, nogil=True, fastmath=NO_REASSOC, error_model="numpy", inline="always")
def gelu_tanh_f32(x):
    """GELU's tanh form, y = 0.5 x (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3), with
    one exp: 1 + tanh(u) = 2 / (1 + exp(-2u)), so with e = exp(-2|u|) <= 1,

        y = x / (1 + e)      for u >= 0,
        y = x e / (1 + e)    for u < 0      (no cancellation, no overflow),

    e by ``exp_nonpositive_f32``; all in float32. Against the formula in float64
    (``tests/test_deploy_fastmath.py``): relative error < 2e-7 for x >= 0, absolute < 1e-7
    for x < 0 (measured 1.4e-7 and 5.3e-8). x: float32 scalar  ->  float32.
    """
    u = _SQRT_2_OVER_PI * (x + _GELU_C * x * x * x)
    e = exp_nonpositive_f32(np.float32(-2.0) * abs(u))
    return (x if u >= 0 else x * e) / (_ONE + e)
