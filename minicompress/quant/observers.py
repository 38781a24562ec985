"""Observers: the range [lo, hi] of an activation, gathered over calibration batches.

Course 3.1.2.2, step 1: "collect the statistics of the activations on training/validation
data". Every observer has ``update(x, skip=None)`` and ``range() -> (lo, hi)``:

- ``MinMaxObserver``: the smallest and largest value seen;
- ``MovingAverageMinMaxObserver``: lo <- lo + c (min(x) - lo) per batch (PyTorch's
  ``MovingAverageMinMaxObserver``, c = 0.01), less swayed by one outlier batch;
- ``PercentileObserver``: the p-th and (100 - p)-th percentiles (clips rare outliers);
- ``MSEObserver``: the clipping range that minimizes the expected squared error of
  fake quantization (clipping error against rounding error), searched on a histogram;
- ``KLObserver``: TensorRT's entropy calibration (Migacz 2017, "8-bit Inference with
  TensorRT"): the threshold t whose 2**(n-1)-level quantization of the |x| histogram
  clipped at t is closest in KL divergence to the clipped histogram itself.

Masked positions (``skip``: True = padding, broadcast over the last axis) and non-finite
values are never counted: a -inf causal mask or a padded row would otherwise set the range
(one library's static quantization lost a factor 24 in perplexity to exactly that). The
number of non-finite values skipped is kept in ``n_skipped_nonfinite``.
"""

from __future__ import annotations

import math

import numpy as np

from minicompress.quant.tensor import QuantSpec, fake_quantize_tensor

OBSERVERS = ("minmax", "ema", "percentile", "mse", "kl")


def observed_values(x: np.ndarray, skip: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The values an observer counts: finite, not at a skipped position.

    x: float [..., K]; skip: bool [...] (x's leading axes, True = ignore that row) or None
    ->  (float32 [n] values, number of non-finite values dropped).
    """
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be a floating-point numpy.ndarray; got {type(x).__name__}")
    if skip is not None:
        skip = np.asarray(skip, dtype=bool)
        if skip.shape != x.shape[: skip.ndim] or skip.ndim >= x.ndim + 1:
            raise ValueError(f"skip {skip.shape} must match the leading axes of x {x.shape}")
        x = x[~skip]  # [n_kept, ..., K]
    finite = np.isfinite(x)
    n_bad = int(x.size - np.count_nonzero(finite))
    return (x[finite] if n_bad else x.reshape(-1)).astype(np.float32, copy=False), n_bad


class _Observer:
    """What every observer shares: counting, and a clear error before any data."""

    def __init__(self):
        self.n_seen = 0  # values counted
        self.n_skipped_nonfinite = 0

    def update(self, x: np.ndarray, skip: np.ndarray | None = None) -> None:
        v, n_bad = observed_values(x, skip)
        self.n_skipped_nonfinite += n_bad
        if v.size:
            self.n_seen += v.size
            self._add(v)

    def _add(self, v: np.ndarray) -> None:
        raise NotImplementedError

    def _check_seen(self) -> None:
        if self.n_seen == 0:
            raise ValueError(
                f"{type(self).__name__} has seen no finite values: calibrate with at least "
                f"one batch (skipped {self.n_skipped_nonfinite} non-finite values)"
            )

    def range(self) -> tuple[np.float32, np.float32]:
        raise NotImplementedError


class MinMaxObserver(_Observer):
    """lo = min, hi = max over every value seen."""

    def __init__(self):
        super().__init__()
        self.lo, self.hi = np.float32(np.inf), np.float32(-np.inf)

    def _add(self, v):
        self.lo, self.hi = min(self.lo, v.min()), max(self.hi, v.max())

    def range(self):
        self._check_seen()
        return np.float32(self.lo), np.float32(self.hi)


class MovingAverageMinMaxObserver(_Observer):
    """lo_t = lo_{t-1} + c (min(x_t) - lo_{t-1}), the same for hi; the first batch sets
    them. PyTorch's ``MovingAverageMinMaxObserver`` (c = averaging_constant = 0.01)."""

    def __init__(self, averaging_constant: float = 0.01):
        super().__init__()
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant must be in (0, 1]; got {averaging_constant}")
        self.c = np.float32(averaging_constant)
        self.lo = self.hi = None

    def _add(self, v):
        lo, hi = v.min(), v.max()
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.c * (lo - self.lo)
            self.hi = self.hi + self.c * (hi - self.hi)

    def range(self):
        self._check_seen()
        return np.float32(self.lo), np.float32(self.hi)


class HistogramObserver(_Observer):
    """An exact histogram of every value seen, with at most ``max_bins`` bins.

    Bin k holds the values in [k w, (k + 1) w), with w a power of two: a batch that
    widens the range adds bins, and when there are more than ``max_bins`` the width
    doubles and neighbours merge (bins 2j and 2j + 1 into j). Every count stays exact at
    the current width, whatever the order of the batches (no re-binning by
    interpolation). The exact min and max are kept beside it.
    """

    def __init__(self, max_bins: int = 4096):
        super().__init__()
        if max_bins < 16:
            raise ValueError(f"max_bins must be >= 16; got {max_bins}")
        self.max_bins = max_bins
        self.width = None  # w, a power of two
        self.k0 = 0  # index of the first bin
        self.counts = np.zeros(0, np.int64)
        self.lo, self.hi = np.float32(np.inf), np.float32(-np.inf)

    def _add(self, v):
        lo, hi = v.min(), v.max()
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        if self.width is None:
            span = float(hi) - float(lo)
            ref = span if span > 0 else max(abs(float(lo)), 1e-30)
            self.width = 2.0 ** math.ceil(math.log2(ref / (self.max_bins // 2)))
            self.k0 = math.floor(float(lo) / self.width)
        k = np.floor(v.astype(np.float64) / self.width).astype(np.int64)  # bin of each value
        k_lo, k_hi = min(self.k0, int(k.min())), max(self.k0 + len(self.counts), int(k.max()) + 1)
        while k_hi - k_lo > self.max_bins:  # merge pairs until the range fits
            self._merge()
            k = np.floor_divide(k, 2)
            k_lo, k_hi = (
                min(self.k0, int(k.min())),
                max(self.k0 + len(self.counts), int(k.max()) + 1),
            )
        counts = np.zeros(k_hi - k_lo, np.int64)
        counts[self.k0 - k_lo : self.k0 - k_lo + len(self.counts)] = self.counts
        counts += np.bincount(k - k_lo, minlength=len(counts))
        self.counts, self.k0 = counts, k_lo

    def _merge(self):
        """Double the width: bin k becomes bin floor(k / 2), exactly."""
        counts = self.counts
        if self.k0 % 2:  # align to an even index so that pairs are (2j, 2j + 1)
            counts = np.concatenate([[0], counts])
        if len(counts) % 2:
            counts = np.concatenate([counts, [0]])
        self.counts = counts.reshape(-1, 2).sum(axis=1)
        self.k0 = math.floor(self.k0 / 2)
        self.width *= 2.0

    def centers(self) -> np.ndarray:
        """float64 [n_bins]: the middle of each bin."""
        return (self.k0 + np.arange(len(self.counts)) + 0.5) * self.width

    def range(self):
        self._check_seen()
        return np.float32(self.lo), np.float32(self.hi)


class PercentileObserver(HistogramObserver):
    """lo, hi = the (100 - p)-th and p-th percentiles of the values (interpolated inside a
    bin, held within the exact [min, max])."""

    def __init__(self, percentile: float = 99.99, max_bins: int = 4096):
        super().__init__(max_bins)
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100]; got {percentile}")
        self.percentile = percentile

    def _quantile(self, fraction: float) -> float:
        cum = np.cumsum(self.counts)  # [n_bins]
        target = fraction * cum[-1]
        i = int(np.searchsorted(cum, target, side="left"))
        before = cum[i - 1] if i else 0
        inside = (target - before) / max(self.counts[i], 1)
        return (self.k0 + i + inside) * self.width

    def range(self):
        self._check_seen()
        p = self.percentile / 100
        lo = max(float(self.lo), self._quantile(1 - p))
        hi = min(float(self.hi), self._quantile(p))
        return np.float32(lo), np.float32(max(hi, lo))


class MSEObserver(HistogramObserver):
    """The clipping range [a lo, a hi], a in (0, 1], that minimizes the expected squared
    error of fake quantization at ``spec``:

        E(a) = sum_bins count_b * (c_b - fq_a(c_b))**2,   c_b the bin centres,

    over ``n_grid`` values of a. A small a clips the tails (clipping error), a = 1 spreads
    the 2**n levels over the outliers (rounding error): the best a balances the two.
    """

    def __init__(self, spec: QuantSpec | None = None, n_grid: int = 100, max_bins: int = 4096):
        super().__init__(max_bins)
        self.spec = QuantSpec(8, "asymmetric", "tensor") if spec is None else spec
        self.n_grid = n_grid

    def errors(self) -> tuple[np.ndarray, np.ndarray]:
        """(a [n_grid], E(a) [n_grid]): the search the range is chosen from."""
        self._check_seen()
        spec = QuantSpec(self.spec.bits, self.spec.scheme, "tensor", narrow=self.spec.narrow)
        keep = self.counts > 0
        c, n = self.centers()[keep].astype(np.float32), self.counts[keep]
        alphas = np.linspace(1.0, 1.0 / self.n_grid, self.n_grid)
        errs = np.empty(self.n_grid)
        for i, a in enumerate(alphas):
            x_hat = fake_quantize_tensor(c, spec, np.float32(a * self.lo), np.float32(a * self.hi))
            errs[i] = float(np.sum(n * (c.astype(np.float64) - x_hat) ** 2))
        return alphas, errs

    def range(self):
        alphas, errs = self.errors()
        a = alphas[int(np.argmin(errs))]  # ties: the widest range (alphas decrease)
        return np.float32(a * self.lo), np.float32(a * self.hi)


class KLObserver(HistogramObserver):
    """TensorRT's entropy calibration on the histogram of |x|.

    For each threshold i (in bins of |x|, from 2**(n-1) to all of them):
    P = the first i bins, with the mass beyond them added to bin i - 1 (the clipped
    distribution); Q = the first i bins quantized to 2**(n-1) levels: split into 2**(n-1)
    contiguous chunks, each chunk's mass spread evenly over its non-empty bins (the clipped
    mass is not in Q: that is what clipping loses). Choose the i with the smallest
    KL(P || Q) = sum P log(P / Q); t = i * w.
    The range is then [max(lo, -t), min(hi, t)].
    """

    def __init__(self, spec: QuantSpec | None = None, max_bins: int = 4096, stride: int = 1):
        super().__init__(max_bins)
        self.spec = QuantSpec(8, "symmetric", "tensor") if spec is None else spec
        self.stride = stride  # try every stride-th threshold (1: all)

    def abs_histogram(self) -> np.ndarray:
        """Counts of |x| in bins [j w, (j + 1) w), j >= 0: bin k < 0 folds onto -k - 1."""
        k = self.k0 + np.arange(len(self.counts))
        j = np.where(k < 0, -k - 1, k)
        return np.bincount(j, weights=self.counts, minlength=int(j.max()) + 1)

    def divergences(self) -> tuple[np.ndarray, np.ndarray]:
        """(thresholds t [m], KL(P || Q) [m]) over the candidate thresholds."""
        self._check_seen()
        hist = self.abs_histogram()
        levels = 2 ** (self.spec.bits - 1)
        n = len(hist)
        if n <= levels:  # fewer bins than levels: nothing is lost without clipping
            return np.array([n * self.width]), np.array([0.0])
        stops = np.arange(levels, n + 1, self.stride)
        kls = np.array([_kl_of_threshold(hist, i, levels) for i in stops])
        return stops * self.width, kls

    def range(self):
        ts, kls = self.divergences()
        t = ts[int(np.argmin(kls))]
        return np.float32(max(float(self.lo), -t)), np.float32(min(float(self.hi), t))


def _kl_of_threshold(hist: np.ndarray, i: int, levels: int, eps: float = 1e-4) -> float:
    """KL(P || Q) for the |x| histogram clipped at i bins and quantized to ``levels``.

    P: the first i bins, the mass beyond them added to bin i - 1. Q: the first i bins
    *without* that mass, merged into ``levels`` contiguous chunks, each chunk's mass spread
    evenly over the bins where P is non-zero. Both normalized; where P > 0 but Q = 0, Q
    gets ``eps`` (taken evenly from its other bins), as TensorRT's smoothing does.
    """
    sliced = hist[:i].astype(np.float64)  # [i]
    p = sliced.copy()
    p[-1] += hist[i:].sum()  # outliers clipped into the last bin
    nonzero = p > 0
    chunk = np.minimum((np.arange(i) * levels) // i, levels - 1)  # [i] level of each bin
    mass = np.bincount(chunk, weights=sliced, minlength=levels)  # [levels]
    filled = np.bincount(chunk, weights=nonzero, minlength=levels)  # non-empty bins per level
    q = np.where(nonzero, mass[chunk] / np.maximum(filled[chunk], 1), 0.0)  # [i]
    p, q = p[nonzero] / p.sum(), q[nonzero] / max(q.sum(), 1e-300)
    empty = q == 0
    if empty.any():
        q = np.where(empty, eps, q - eps * empty.sum() / max((~empty).sum(), 1))
    return float(np.sum(p * np.log(p / q)))


def make_observer(name: str, spec: QuantSpec | None = None, **kwargs) -> _Observer:
    """An observer by its CLI name: minmax | ema | percentile | mse | kl."""
    if name == "minmax":
        return MinMaxObserver(**kwargs)
    if name == "ema":
        return MovingAverageMinMaxObserver(**kwargs)
    if name == "percentile":
        return PercentileObserver(**kwargs)
    if name == "mse":
        return MSEObserver(spec, **kwargs)
    if name == "kl":
        return KLObserver(spec, **kwargs)
    raise ValueError(f"calibration must be one of {', '.join(OBSERVERS)}; got {name!r}")
