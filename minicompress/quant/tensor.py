"""A whole tensor quantized at one granularity: the formulas of ``formulas.py`` put together.

``quantize_tensor(x, spec)`` takes the ranges (min-max over the values that share one, or
the range the caller gives: the model's range, a calibrated or clipped one), turns them
into scales and zero points, and quantizes; ``dequantize_tensor`` inverts it. The result
carries everything the file format stores: codes, scales, zero points and the spec.

NumPy only, like ``formulas.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from minicompress.quant import formulas as F


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one tensor."""

    bits: int = 8  # n: 2**n codes (2..8)
    scheme: str = "asymmetric"  # "asymmetric" (zero point), "symmetric" or "log"
    granularity: str = "channel"  # "model" | "tensor" | "channel" | "group"
    axis: int = -1  # the channel axis kept by channel/group ranges: -1 = output of [K, N]
    group_size: int | None = None  # G, for granularity "group" (must divide the other axis)
    narrow: bool = (
        True  # symmetric codes in [-(2**(n-1)-1), ...]; False: PyTorch's [-2**(n-1), ...]
    )
    scale_dtype: str = "float32"  # scales are rounded to this before the codes are computed

    def __post_init__(self):
        F.check_bits(self.bits)
        F.check_scheme(self.scheme)
        F.check_granularity(self.granularity)
        if self.granularity == "group":
            if self.group_size is None:
                raise ValueError("granularity 'group' needs group_size (e.g. 32)")
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
                raise TypeError(f"group_size must be a positive integer; got {self.group_size!r}")
            if self.group_size < 1:
                raise ValueError(f"group_size must be >= 1; got {self.group_size}")
        elif self.group_size is not None:
            raise ValueError(
                f"group_size is only used with granularity 'group'; got group_size="
                f"{self.group_size} with granularity {self.granularity!r}"
            )
        if self.scale_dtype not in ("float32", "float16"):
            raise ValueError(
                f"scale_dtype must be 'float32' or 'float16'; got {self.scale_dtype!r}"
            )

    def code_range(self) -> tuple[int, int]:
        return F.code_range(self.bits, self.scheme, self.narrow)

    def to_dict(self) -> dict:
        return asdict(self)


class QuantizedTensor(NamedTuple):
    """Codes and quantization parameters of one tensor.

    q:          int32, the tensor's shape; codes in ``spec.code_range()``
    scale:      x's dtype (float16 if ``spec.scale_dtype`` says so), broadcastable to the
                granular view (per tensor: shape [1, ..., 1]; channel of [K, N]: [1, N];
                group: [K/G, 1, N])
    zero_point: int32, the shape of scale (zeros unless asymmetric)
    spec:       the QuantSpec that made it
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    spec: QuantSpec

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape


def tensor_range(x: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """min-max ranges of ``x`` at ``spec``'s granularity, shaped like the scales.
    ``model`` has no range of its own: pass the model's range to ``quantize_tensor``."""
    if spec.granularity == "model":
        raise ValueError(
            "granularity 'model' takes one range for every tensor of the model: compute it "
            "with model_range() and pass lo=, hi= to quantize_tensor"
        )
    view, axes = F.granular_view(x, spec.granularity, spec.axis, spec.group_size)
    return F.min_max(view, axes)


def scale_zero_point(lo, hi, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """Scales and zero points for the ranges [lo, hi] under ``spec.scheme``.

    asymmetric: [lo, hi] widened to hold 0, ``linear_scale`` and ``asymmetric_zero_point``;
    symmetric: ``symmetric_scale(max(|lo|, |hi|))``, z = 0;
    log: ``log_scale(max(|lo|, |hi|))``, z = 0.
    The scale is rounded to ``spec.scale_dtype`` (float16 halves what the file stores per
    group); the zero point is computed from the rounded scale, so codes and file agree.
    """
    lo, hi = np.asarray(lo), np.asarray(hi)
    if spec.scheme == "asymmetric":
        lo, hi = F.include_zero(lo, hi)
        scale = F.linear_scale(lo, hi, spec.bits)
    else:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        if spec.scheme == "symmetric":
            scale = F.symmetric_scale(amax, spec.bits, spec.narrow)
        else:
            scale = F.log_scale(amax, spec.bits)
    if spec.scale_dtype == "float16":
        scale = _to_float16(scale).astype(scale.dtype)
    if spec.scheme == "asymmetric":
        q_min, q_max = spec.code_range()
        zero_point = np.clip(F.asymmetric_zero_point(lo, scale), q_min, q_max).astype(np.int32)
    else:
        zero_point = np.zeros(scale.shape, np.int32)
    return scale, zero_point


def _to_float16(scale: np.ndarray) -> np.ndarray:
    """Scales as float16, never rounded to 0 or inf (clamped into float16's normal range)."""
    fmax, tiny = np.finfo(np.float16).max, np.finfo(np.float16).tiny
    return np.clip(scale, tiny, fmax).astype(np.float16)


def quantize_tensor(x: np.ndarray, spec: QuantSpec, lo=None, hi=None) -> QuantizedTensor:
    """Quantize ``x`` at ``spec``: ranges, scales and zero points, then codes.

    x: float [...] (finite, non-empty); lo, hi: the ranges to use (broadcastable to the
    scales' shape; required for granularity ``model``), default min-max of x. Values
    outside a given range are clipped to it.
    """
    F.check_values("x", x)
    if (lo is None) != (hi is None):
        raise ValueError("give both lo and hi, or neither")
    view, _ = F.granular_view(x, spec.granularity, spec.axis, spec.group_size)
    if lo is None:
        lo, hi = tensor_range(x, spec)
    else:
        lo, hi = np.asarray(lo, x.dtype), np.asarray(hi, x.dtype)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or np.any(lo > hi):
            raise ValueError(f"ranges must be finite with lo <= hi; got lo={lo}, hi={hi}")
    scale, zero_point = scale_zero_point(lo, hi, spec)
    scale = np.broadcast_to(scale, scale_shape(x.shape, spec))
    zero_point = np.broadcast_to(zero_point, scale.shape)
    if spec.scheme == "log":
        q = F.log_quantize(view, scale, spec.bits)
    else:
        q = F.quantize(view, scale, zero_point, *spec.code_range())
    # float16 scales are stored as such (exact: they were rounded to float16 above)
    stored = scale.astype(np.float16) if spec.scale_dtype == "float16" else scale
    return QuantizedTensor(
        q.reshape(x.shape), np.ascontiguousarray(stored), np.ascontiguousarray(zero_point), spec
    )


def scale_shape(shape: tuple[int, ...], spec: QuantSpec) -> tuple[int, ...]:
    """The shape of the scales (and zero points) of a tensor of ``shape`` at ``spec``:
    (1, ..., 1) per model/tensor; size 1 except ``axis`` per channel; per group of a
    [K, N] weight (axis 1), [K/G, 1, N] against the grouped view [K/G, G, N]."""
    shape = tuple(int(n) for n in shape)
    if spec.granularity in ("model", "tensor"):
        return (1,) * len(shape)
    axis = F.check_axis(spec.axis, len(shape))
    if spec.granularity == "channel":
        return tuple(n if a == axis else 1 for a, n in enumerate(shape))
    if len(shape) != 2:
        raise ValueError(f"group granularity needs a 2-D array; got shape {shape}")
    along = 1 - axis
    if shape[along] % spec.group_size:
        raise ValueError(
            f"group_size {spec.group_size} must divide the dimension it groups (axis "
            f"{along} of shape {shape}, size {shape[along]})"
        )
    return shape[:along] + (shape[along] // spec.group_size, 1) + shape[along + 1 :]


def dequantize_tensor(qt: QuantizedTensor, dtype=np.float32) -> np.ndarray:
    """The values the codes stand for: ``s * (q - z)`` (linear) or ``sign(q) s 2**(|q|-1)``
    (log), shaped like the original tensor, in ``dtype`` (float32)."""
    spec = qt.spec
    view, _ = F.granular_view(qt.q, spec.granularity, spec.axis, spec.group_size)
    scale = qt.scale.astype(dtype)
    if spec.scheme == "log":
        out = F.log_dequantize(view, scale)
    else:
        out = F.dequantize(view, scale, qt.zero_point)
    return out.reshape(qt.q.shape)


def fake_quantize_tensor(x: np.ndarray, spec: QuantSpec, lo=None, hi=None) -> np.ndarray:
    """``dequantize_tensor(quantize_tensor(x, spec, lo, hi))`` in x's dtype."""
    return dequantize_tensor(quantize_tensor(x, spec, lo, hi), x.dtype)


def fake_quantize_ste(
    x: np.ndarray, spec: QuantSpec, lo=None, hi=None
) -> tuple[np.ndarray, np.ndarray]:
    """Fake quantization and where its straight-through gradient passes.

    -> (x_hat in x's dtype, bool mask of x's shape): d x_hat / d x = mask (1 inside the
    representable range, 0 where the clip acts; ``formulas.ste_mask``, ``log_ste_mask``).
    With x's own min-max range the mask is all True, except in PyTorch's symmetric
    convention (``narrow=False``), where max|x| / s = 127.5 rounds to 128 and is clipped.
    """
    qt = quantize_tensor(x, spec, lo, hi)
    x_hat = dequantize_tensor(qt, x.dtype)
    view, _ = F.granular_view(x, spec.granularity, spec.axis, spec.group_size)
    scale = qt.scale.astype(x.dtype)
    if spec.scheme == "log":
        mask = F.log_ste_mask(view, scale, spec.bits)
    else:
        mask = F.ste_mask(view, scale, qt.zero_point, *spec.code_range())
    return x_hat, mask.reshape(x.shape)


def grid_points(scale, zero_point, spec: QuantSpec) -> np.ndarray:
    """The values one range's codes stand for, ascending: s (q - z) for every code q
    (log: 0 and +-s 2**(|q| - 1)). scale, zero_point: one range's (scalars) -> float64."""
    q_min, q_max = spec.code_range()
    q = np.arange(q_min, q_max + 1)
    if spec.scheme == "log":
        return np.unique(F.log_dequantize(q, np.float64(scale)))
    return F.dequantize(q, np.float64(scale), int(zero_point))


def error_split(x: np.ndarray, spec: QuantSpec, lo, hi) -> tuple[float, float]:
    """The squared error of fake-quantizing x within [lo, hi], split in two:

        clipping error = sum over x outside the grid's range of (x - x_hat)**2,
        rounding error = sum over x inside it of (x - x_hat)**2

    (inside/outside: ``ste_mask``). A narrower range lowers the rounding error (finer
    steps) and raises the clipping error: the trade-off the MSE observer searches."""
    x_hat, inside = fake_quantize_ste(x, spec, lo, hi)
    err = (x.astype(np.float64) - x_hat) ** 2
    return float(err[~inside].sum()), float(err[inside].sum())


def model_range(tensors) -> tuple[np.float32, np.float32]:
    """The course's statistics "of all the weights of the model": (w_min, w_max) over every
    array of ``tensors`` (an iterable of float arrays, none empty or non-finite)."""
    lo, hi, seen = np.inf, -np.inf, 0
    for i, t in enumerate(tensors):
        F.check_values(f"tensor {i}", t)
        lo, hi, seen = min(lo, float(t.min())), max(hi, float(t.max())), seen + 1
    if not seen:
        raise ValueError("model_range needs at least one tensor")
    return np.float32(lo), np.float32(hi)
