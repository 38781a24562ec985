"""The quantization formulas of the course, one small function each, in plain NumPy.

This module imports nothing from minicompress: the int8 kernels (``kernels/reference.py``)
build their weight and activation quantizers from these functions, and everything in
``quant/`` calls them too. Shape letters: K in-features, N out-features, G group size.

The course (3.1.1.1) writes the linear quantizer as

    Q(w) = clip(round(w / s), c_min, c_max),    s = (w_max - w_min) / (2**n - 1),

with w_min, w_max "of all the weights of the model". Written with a zero point z = -c_min
the codes become unsigned, which is how every int8 library stores them:

    asymmetric:  s = (w_max - w_min) / (2**n - 1),  z = round(-w_min / s),
                 q = clip(round(w / s) + z, 0, 2**n - 1),     w_hat = s * (q - z);
    symmetric:   s = max|w| / (2**(n-1) - 1),  z = 0,
                 q = clip(round(w / s), -(2**(n-1) - 1), 2**(n-1) - 1),  w_hat = s * q;
    log:         w_hat = sign(w) * 2**round(log2 |w|), exponents clipped to 2**(n-1) - 1
                 levels below the largest (Miyashita et al. 2016, arXiv:1603.01025).

Conventions, stated once:
- **Rounding is half to even** (``np.rint``), as PyTorch (``std::nearbyint``) and the
  int8 kernels; ``round(2.5) = 2``.
- **Division, not a reciprocal**: ``rint(x / s)``. PyTorch's ``fake_quantize_*`` round
  ``x * (1 / s)``, which differs from ``x / s`` in the last bit, so the two can disagree
  by one step where ``x / s`` lies within an ulp of a half-integer.
- **Symmetric scale /127 (narrow range)**: ``s = max|w| / (2**(n-1) - 1)`` with codes in
  [-127, 127] at 8 bits, so that -q is a code whenever q is (what the int8 kernels use).
  PyTorch's symmetric observers use the full range [-128, 127] with
  ``s = max|w| / ((2**n - 1) / 2)`` = max|w| / 127.5 at 8 bits: ``symmetric_scale(...,
  narrow=False)`` and ``code_range(..., narrow=False)`` give that convention.
- **The range holds zero**: the quantizers of the package widen [lo, hi] to
  [min(lo, 0), max(hi, 0)] first (``include_zero``), as PyTorch's observers do. Zero
  (padding, a pruned weight, a GELU zero) is then exact, and z lies on the grid. For the
  weights of a trained model lo < 0 < hi anyway, so this is the course's formula.
- **Degenerate ranges never divide by zero**: an all-zero tensor gets s = 1 (any scale
  reproduces zeros); a constant tensor c (hi == lo != 0) gets s = |c|, so c is exact.
- Functions keep the float dtype of their input (float32 by default, float64 in gradient
  checks); codes are int32; nothing is mutated.

Granularity: one range for the whole ``model`` (computed by the caller over every tensor),
per ``tensor``, per ``channel`` (one range per index of ``axis``; for a linear weight
[K, N] the output channel is axis 1, scales [1, N]), or per ``group`` of G consecutive
values along the other axis of a 2-D array (for [K, N]: G in-features of one output
channel, scales [K/G, 1, N] against the grouped view [K/G, G, N]).
"""

from __future__ import annotations

import numpy as np

BITS_RANGE = (2, 8)  # bit widths the package quantizes to, inclusive
SCHEMES = ("asymmetric", "symmetric", "log")
GRANULARITIES = ("model", "tensor", "channel", "group")


# ----------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------


def check_bits(bits: object) -> int:
    """``bits`` as an int in [2, 8], or a ValueError/TypeError naming the value."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an integer in [2, 8]; got {bits!r}")
    if not BITS_RANGE[0] <= bits <= BITS_RANGE[1]:
        raise ValueError(f"bits must be in [2, 8]; got {bits}")
    return int(bits)


def check_values(name: str, x: object) -> np.ndarray:
    """A non-empty, finite, real floating-point array, or a clear error naming ``name``."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray; got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must have a floating-point dtype; got {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); there is nothing to quantize")
    if not np.isfinite(x).all():
        n_bad = int(x.size - np.isfinite(x).sum())
        raise ValueError(f"{name} must be finite; it holds {n_bad} NaN or infinite values")
    return x


def check_scheme(scheme: object) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    return scheme


def check_granularity(granularity: object) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}"
        )
    return granularity


def check_axis(axis: object, ndim: int) -> int:
    """``axis`` normalized to [0, ndim), or a ValueError naming it."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer; got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array of {ndim} dimensions")
    return int(axis) % ndim


# ----------------------------------------------------------------------------------------
# granularity: which values share a range
# ----------------------------------------------------------------------------------------


def group_view(x: np.ndarray, group_size: int, axis: int = 0) -> np.ndarray:
    """``x`` with ``axis`` split into groups of ``group_size`` consecutive values.

    x: [K, N], axis 0, G  ->  view [K/G, G, N]   (any ndim: axis -> (n_groups, G)).
    A group size that does not divide the axis is a ValueError (no ragged last group).
    """
    axis = check_axis(axis, x.ndim)
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size must be a positive integer; got {group_size!r}")
    k = x.shape[axis]
    if group_size < 1 or k % group_size:
        raise ValueError(
            f"group_size {group_size} must be >= 1 and divide the dimension it groups "
            f"(axis {axis} of shape {x.shape}, size {k})"
        )
    shape = x.shape[:axis] + (k // group_size, group_size) + x.shape[axis + 1 :]
    return x.reshape(shape)


def granular_view(
    x: np.ndarray, granularity: str, axis: int = -1, group_size: int | None = None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The view of ``x`` whose ranges are taken, and the axes each range reduces over.

    - ``model`` / ``tensor``: x itself, every axis (the caller supplies the model range);
    - ``channel``: x itself, every axis but ``axis`` (weights [K, N], axis 1: over K);
    - ``group``: x 2-D, groups of G along the axis that is not ``axis``; for [K, N] with
      axis 1: view [K/G, G, N], reduced over the G axis (1) only.
    """
    check_granularity(granularity)
    if granularity in ("model", "tensor"):
        return x, tuple(range(x.ndim))
    axis = check_axis(axis, x.ndim)
    if granularity == "channel":
        return x, tuple(a for a in range(x.ndim) if a != axis)
    if x.ndim != 2:
        raise ValueError(f"group granularity needs a 2-D array; got shape {x.shape}")
    if group_size is None:
        raise ValueError("group granularity needs a group_size")
    along = 1 - axis  # the other axis: the in-features of a [K, N] weight
    return group_view(x, group_size, along), (along + 1,)


def min_max(x: np.ndarray, reduce_axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """lo = min, hi = max of ``x`` over ``reduce_axes``, kept as size-1 axes (so they
    broadcast against x). Same dtype as x."""
    return x.min(axis=reduce_axes, keepdims=True), x.max(axis=reduce_axes, keepdims=True)


def include_zero(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] widened to hold 0: ``lo' = min(lo, 0)``, ``hi' = max(hi, 0)``.

    Zero is then exactly representable and the zero point lies on the grid (PyTorch's
    ``MinMaxObserver`` does the same)."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    return np.minimum(lo, lo.dtype.type(0)), np.maximum(hi, hi.dtype.type(0))


# ----------------------------------------------------------------------------------------
# scale, zero point and the integer grid
# ----------------------------------------------------------------------------------------


def linear_scale(lo, hi, bits: int) -> np.ndarray:
    """The course's step: ``s = (w_max - w_min) / (2**n - 1)``.

    lo, hi: float arrays (broadcastable), lo <= hi  ->  s, their dtype and shape.
    hi == lo (a constant range): s = |lo|, or 1 when lo == 0 (no division by zero; the
    constant is then exactly representable). A step below the dtype's smallest normal
    number (a range under ~1e-36 in float32) is raised to it, never rounded to 0.
    float32 in, float32 arithmetic out, so that ``s`` is bit for bit what the int8 kernels
    compute: ``(hi - lo) / float32(255)``.
    """
    bits = check_bits(bits)
    lo, hi = np.asarray(lo), np.asarray(hi)
    span = hi - lo
    levels = span.dtype.type(2**bits - 1)
    tiny = np.finfo(span.dtype).tiny  # a step of a subnormal range would round to 0
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        fallback = np.where(lo != 0, np.abs(lo), span.dtype.type(1))
        step = np.maximum(span / levels, tiny)
        return np.where(span > 0, step, fallback).astype(span.dtype, copy=False)


def asymmetric_zero_point(lo, scale) -> np.ndarray:
    """``z = round(-w_min / s)``, the code of 0.0 (half to even) -> int32, shape of lo.

    With lo <= 0 <= hi (``include_zero``), z lies in [0, 2**n - 1]. Otherwise the course's
    form gives a z off the grid, which ``quantize`` still handles: q = round(w/s) + z.
    """
    lo, scale = np.asarray(lo), np.asarray(scale)
    return np.rint(-lo / scale).astype(np.int32)


def symmetric_scale(amax, bits: int, narrow: bool = True) -> np.ndarray:
    """``s = max|w| / (2**(n-1) - 1)`` (narrow range: 127 at 8 bits, ours and the course's).

    ``narrow=False`` is PyTorch's symmetric convention, ``s = max|w| / ((2**n - 1) / 2)``
    (127.5 at 8 bits) with codes in [-2**(n-1), 2**(n-1) - 1].
    amax: float array >= 0  ->  s, its dtype; amax == 0 gives s = 1; a step below the
    smallest normal number is raised to it.
    """
    bits = check_bits(bits)
    amax = np.asarray(amax)
    levels = amax.dtype.type(2 ** (bits - 1) - 1 if narrow else (2**bits - 1) / 2)
    tiny = np.finfo(amax.dtype).tiny  # a step of a subnormal range would round to 0
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        step = np.maximum(amax / levels, tiny)
        return np.where(amax > 0, step, amax.dtype.type(1)).astype(amax.dtype)


def code_range(bits: int, scheme: str, narrow: bool = True) -> tuple[int, int]:
    """(q_min, q_max) of the integer codes.

    asymmetric: [0, 2**n - 1]; symmetric and log: [-(2**(n-1) - 1), 2**(n-1) - 1]
    (``narrow=False``: PyTorch's [-2**(n-1), 2**(n-1) - 1] for symmetric).
    """
    bits = check_bits(bits)
    if check_scheme(scheme) == "asymmetric":
        return 0, 2**bits - 1
    half = 2 ** (bits - 1)
    return (-(half - 1) if narrow or scheme == "log" else -half), half - 1


def course_code_range(w_min, scale, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The course's c_min, c_max for ``Q(w) = clip(round(w / s), c_min, c_max)``:
    ``c_min = round(w_min / s)``, ``c_max = c_min + 2**n - 1`` (2**n codes). int32.

    It is the asymmetric grid shifted by the zero point: c_min = -z (half-to-even
    rounding is odd-symmetric, so round(w_min / s) = -round(-w_min / s))."""
    bits = check_bits(bits)
    c_min = np.rint(np.asarray(w_min) / np.asarray(scale)).astype(np.int32)
    return c_min, c_min + np.int32(2**bits - 1)


# ----------------------------------------------------------------------------------------
# quantize, dequantize, fake-quantize
# ----------------------------------------------------------------------------------------


def quantize(x: np.ndarray, scale, zero_point, q_min, q_max) -> np.ndarray:
    """``q = clip(round(x / s) + z, q_min, q_max)`` -> int32, shape of x.

    x: float [...]; scale (float, > 0), zero_point (int) broadcastable to x. The course's
    form is zero_point 0 with (c_min, c_max) of ``course_code_range``. Rounding half to
    even, a true division (not x * (1/s)), in x's dtype: bit for bit the int8 kernels.
    """
    x, scale, zero_point = np.asarray(x), np.asarray(scale), np.asarray(zero_point)
    c = np.rint(x / scale).astype(np.int64) + zero_point  # exact integers
    return np.clip(c, q_min, q_max).astype(np.int32)


def dequantize(q: np.ndarray, scale, zero_point) -> np.ndarray:
    """``w_hat = s * (q - z)`` in scale's dtype (float32 for float32 scales)."""
    scale = np.asarray(scale)
    centered = np.asarray(q).astype(np.int64) - np.asarray(zero_point)  # exact
    return (scale * centered.astype(scale.dtype)).astype(scale.dtype, copy=False)


def fake_quantize(x: np.ndarray, scale, zero_point, q_min, q_max) -> np.ndarray:
    """``dequantize(quantize(x))``: x rounded to the nearest point of the grid, clipped to
    [s (q_min - z), s (q_max - z)]. Same dtype and shape as x.

    Inside the range |x - x_hat| <= s / 2; applying it twice changes nothing."""
    scale = np.asarray(scale, dtype=np.asarray(x).dtype)
    return dequantize(quantize(x, scale, zero_point, q_min, q_max), scale, zero_point)


def ste_mask(x: np.ndarray, scale, zero_point, q_min, q_max) -> np.ndarray:
    """Where the straight-through estimator passes the gradient of ``fake_quantize``:

        d x_hat / d x = 1  if q_min <= round(x / s) + z <= q_max  else 0   (bool, shape of x)

    i.e. 1 for x inside the representable range (half a step beyond each end), 0 where
    the clip acts. The rounding itself is treated as the identity (Bengio et al. 2013,
    arXiv:1308.3432); this is PyTorch's ``fake_quantize_*`` backward.
    """
    x, scale, zero_point = np.asarray(x), np.asarray(scale), np.asarray(zero_point)
    c = np.rint(x / scale).astype(np.int64) + zero_point
    return (c >= q_min) & (c <= q_max)


# ----------------------------------------------------------------------------------------
# log (power-of-two) quantization
# ----------------------------------------------------------------------------------------


def log_scale(amax, bits: int) -> np.ndarray:
    """The smallest non-zero magnitude of the log grid: ``2**e_min`` with
    ``e_max = round(log2 max|w|)``, ``e_min = e_max - (2**(n-1) - 2)``.

    The grid is {0} and ±2**e for 2**(n-1) - 1 exponents e_min..e_max (one sign bit, the
    rest an exponent code, code 0 kept for zero). e_min is held >= -126 (float32's
    smallest normal); amax == 0 gives 1. amax: float array  ->  float32 powers of two.
    """
    bits = check_bits(bits)
    amax = np.asarray(amax, dtype=np.float64)
    with np.errstate(divide="ignore"):
        e_max = np.rint(np.log2(np.where(amax > 0, amax, 1.0)))
    e_min = np.maximum(e_max - (2 ** (bits - 1) - 2), -126)
    return np.ldexp(1.0, e_min.astype(np.int64)).astype(np.float32)


def log_quantize(x: np.ndarray, scale, bits: int) -> np.ndarray:
    """Signed exponent codes of x on the log grid whose smallest level is ``scale``:

        |q| = clip(round(log2(|x| / s)) + 1, 1, 2**(n-1) - 1),  q = sign(x) |q|,
        q = 0 where |x| < s / 2   (nearer to 0 than to s).

    Rounding is in the log domain (the boundary between 2**e and 2**(e+1) is 2**(e+1/2)),
    half to even. x: float [...]; scale: powers of two broadcastable to x -> int32.
    """
    bits = check_bits(bits)
    x = np.asarray(x)
    ratio = np.abs(x).astype(np.float64) / np.asarray(scale, dtype=np.float64)
    with np.errstate(divide="ignore"):
        code = np.clip(
            np.rint(np.log2(np.where(ratio > 0, ratio, 1.0))) + 1, 1, 2 ** (bits - 1) - 1
        )
    code = np.where(ratio < 0.5, 0, code)
    return (np.sign(x) * code).astype(np.int32)


def log_dequantize(q: np.ndarray, scale) -> np.ndarray:
    """``w_hat = sign(q) * s * 2**(|q| - 1)``, 0 for q = 0 -> float32 (scale's dtype)."""
    q = np.asarray(q)
    scale = np.asarray(scale)
    mag = np.ldexp(scale, np.maximum(np.abs(q), 1).astype(np.int32) - 1)
    return (np.sign(q) * np.where(q == 0, 0, mag)).astype(scale.dtype, copy=False)


def log_ste_mask(x: np.ndarray, scale, bits: int) -> np.ndarray:
    """Where the straight-through estimator passes the gradient of log fake quantization:
    1 unless the exponent is clipped at the top, ``round(log2(|x| / s)) + 1 > 2**(n-1) - 1``
    (rounding to zero at the bottom counts as rounding, so it passes). bool, shape of x."""
    bits = check_bits(bits)
    ratio = np.abs(np.asarray(x)).astype(np.float64) / np.asarray(scale, dtype=np.float64)
    with np.errstate(divide="ignore"):
        code = np.rint(np.log2(np.where(ratio > 0, ratio, 1.0))) + 1
    return code <= 2 ** (bits - 1) - 1
