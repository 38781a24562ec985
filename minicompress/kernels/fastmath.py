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
- ``erf_f32`` and ``gelu_erf_f32``: GELU(x) = x Phi(x) with a rational fit of erf (no exp),
  in float32.

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
    ``tests/test_kernels_fastmath.py``). x < -87 gives 0 (2^n would leave the normal
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

# erf(z) = z P(z^2) / Q(z^2) on 0 <= z <= 4, P and Q of degree 5: our fit
# (``tests/fit_erf_rational.py``: least squares reweighted toward the smallest relative
# error), relative error < 2.5e-8 in float64. Past z = 4, erf(z) is 1 in float32.
# Coefficients, constant term first:
_EP0, _EP1, _EP2, _EP3, _EP4, _EP5 = (
    np.float32(c)
    for c in (1.128379139e00, 1.935441614e-01, 5.310164078e-02, 3.883309712e-03,
              2.845658774e-04, 1.986798788e-06)
)  # fmt: skip
_EQ1, _EQ2, _EQ3, _EQ4, _EQ5 = (
    np.float32(c)
    for c in (5.048566029e-01, 1.153496405e-01, 1.520718127e-02, 1.185564261e-03,
              3.742034469e-05)
)  # fmt: skip
_ERF_Z_MAX = np.float32(4.0)


@njit(cache=True, nogil=True, fastmath=NO_REASSOC, error_model="numpy", inline="always")
def erf_f32(z):
    """erf(z) for float32 z >= 0: z P(z^2) / Q(z^2) (the fit above) for z < 4, else 1.
    Ten multiply-adds and one division, no exp: it vectorizes into 16 lanes. Relative
    error < 4e-7 in float32, measured 3.5e-7 (six ulps just below 1; the fit itself is
    exact to 2.5e-8: the rest is float32 rounding), ``tests/test_kernels_fastmath.py``."""
    if not z < _ERF_Z_MAX:
        return _ONE
    u = z * z
    p = _EP5
    p = p * u + _EP4
    p = p * u + _EP3
    p = p * u + _EP2
    p = p * u + _EP1
    p = p * u + _EP0
    q = _EQ5
    q = q * u + _EQ4
    q = q * u + _EQ3
    q = q * u + _EQ2
    q = q * u + _EQ1
    q = q * u + _ONE
    return min(z * p / q, _ONE)


@njit(cache=True, nogil=True, fastmath=NO_REASSOC, error_model="numpy", inline="always")
def gelu_erf_f32(x):
    """GELU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), erf by ``erf_f32`` (odd: the sign
    of x), all in float32.

    Accuracy (``tests/test_kernels_fastmath.py``, against SciPy's erf in float64): relative
    error < 3e-7 for x >= 0; for x < 0, 1 + erf is a difference of two numbers near 1 (as in
    PyTorch's vectorized GELU), so the bound is absolute: 1e-6 (measured 8.2e-7 near
    x = -5.6, where GELU is -1.5e-7: erf's float32 ulp near 1 is 6e-8); for x < -5.66 the
    result is 0 (the true value is above -4.3e-8). 2.8x faster than the exp-based erfc fit
    it replaced (0.31 against 0.87 ms for 1.6 M elements), whose bound for x < 0 was 1e-7.
    x: float32 scalar  ->  float32.
    """
    e = erf_f32(abs(x) * np.float32(0.7071067811865476))  # erf(|x| / sqrt 2)
    return np.float32(0.5) * x * (_ONE + (e if x >= 0 else -e))


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
    (``tests/test_kernels_fastmath.py``): relative error < 2e-7 for x >= 0, absolute < 1e-7
    for x < 0 (measured 1.4e-7 and 5.3e-8). x: float32 scalar  ->  float32.
    """
    u = _SQRT_2_OVER_PI * (x + _GELU_C * x * x * x)
    e = exp_nonpositive_f32(np.float32(-2.0) * abs(u))
    return (x if u >= 0 else x * e) / (_ONE + e)
