"""minicompress/quant/observers.py: PyTorch's observers (live and golden), the histogram
against NumPy's, percentile against np.percentile, MSE against a brute-force search on
the raw values, KL against scipy.stats.entropy, masks and non-finite values skipped."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from gradcheck import assert_close
from make_golden_quant import OBSERVER_BUILDERS, load_golden

from minicompress.quant import observers as O
from minicompress.quant.tensor import QuantSpec, fake_quantize_tensor, scale_zero_point

# ----------------------------------------------------------------------------------------
# PyTorch: MinMaxObserver, MovingAverageMinMaxObserver (per tensor)
# ----------------------------------------------------------------------------------------

# torch observer -> (ours, QuantSpec). Conventions: torch widens [min, max] to hold 0 when
# it computes qparams (ours: scale_zero_point does); symmetric qint8 is /127.5 on
# [-128, 127] (our narrow=False).
PER_TENSOR = {
    "observer_minmax_affine": (O.MinMaxObserver, QuantSpec(8, "asymmetric", "tensor")),
    "observer_minmax_positive": (O.MinMaxObserver, QuantSpec(8, "asymmetric", "tensor")),
    "observer_minmax_4bit": (O.MinMaxObserver, QuantSpec(4, "asymmetric", "tensor")),
    "observer_minmax_symmetric": (
        O.MinMaxObserver,
        QuantSpec(8, "symmetric", "tensor", narrow=False),
    ),
    "observer_moving_average": (
        lambda: O.MovingAverageMinMaxObserver(0.01),
        QuantSpec(8, "asymmetric", "tensor"),
    ),
}


def compare_observer(name, case):
    make, spec = PER_TENSOR[name]
    obs = make()
    for batch in case["batches"]:
        obs.update(batch)
    lo, hi = obs.range()
    assert_close(
        np.array([lo, hi]),
        np.array([case["min_val"], case["max_val"]]),
        rtol=0,
        name=f"{name} range",
    )
    scale, zero_point = scale_zero_point(lo, hi, spec)
    assert_close(scale, case["scale"][0], rtol=0, name=f"{name}.scale")
    assert zero_point == case["zero_point"][0], (zero_point, case["zero_point"])


@pytest.mark.parametrize("name", list(PER_TENSOR))
def test_observer_matches_torch_golden(name):
    compare_observer(name, load_golden(name))


@pytest.mark.parametrize("name", list(PER_TENSOR))
def test_observer_matches_torch_live(name, torch, rng):
    compare_observer(name, OBSERVER_BUILDERS[name](torch, rng))


# ----------------------------------------------------------------------------------------
# the histogram and what is built on it
# ----------------------------------------------------------------------------------------


def activation_batches(rng, n=4, outlier=40.0):
    out = [(rng.standard_normal((8, 16, 32)) * 1.5 + 0.3).astype(np.float32) for _ in range(n)]
    out[1][0, 3, 5] = outlier
    return out


def test_histogram_is_exact_whatever_the_order(rng):
    batches = activation_batches(rng)
    batches[2] *= 10  # widens the range mid-way: bins must merge
    fwd, rev = O.HistogramObserver(max_bins=256), O.HistogramObserver(max_bins=256)
    for b in batches:
        fwd.update(b)
    for b in batches[::-1]:
        rev.update(b)
    assert fwd.width == rev.width and len(fwd.counts) <= 256
    allv = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    edges = (fwd.k0 + np.arange(len(fwd.counts) + 1)) * fwd.width
    expected, _ = np.histogram(allv, edges)  # numpy's bins are [a, b) too, but the last
    expected[-1] -= np.count_nonzero(allv == edges[-1])  # one of numpy's is closed: undo
    assert np.array_equal(fwd.counts, expected)
    r0 = rev.k0 - fwd.k0
    assert np.array_equal(rev.counts[max(0, -r0) :], fwd.counts[max(0, r0) :][: len(rev.counts)])
    assert fwd.counts.sum() == allv.size == fwd.n_seen


def test_percentile_matches_numpy(rng):
    batches = activation_batches(rng)
    obs = O.PercentileObserver(99.9)
    for b in batches:
        obs.update(b)
    lo, hi = obs.range()
    allv = np.concatenate([b.ravel() for b in batches])
    ref = np.percentile(allv, [0.1, 99.9])
    # within one bin width (interpolation inside a bin differs from NumPy's between values)
    assert_close(np.array([lo, hi]), ref, rtol=0, atol=obs.width, name="percentiles")
    assert hi < 40.0  # the outlier is clipped


def _raw_mse(values, spec, lo, hi, alphas):
    """The squared error of fake quantization of every raw value, per clipping factor."""
    return np.array(
        [
            np.sum(
                (
                    values
                    - fake_quantize_tensor(values, spec, np.float32(a * lo), np.float32(a * hi))
                ).astype(np.float64)
                ** 2
            )
            for a in alphas
        ]
    )


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_choice_matches_brute_force_on_raw_values(bits, rng):
    batches = activation_batches(rng, outlier=60.0)
    spec = QuantSpec(bits, "asymmetric", "tensor")
    obs = O.MSEObserver(spec)
    for b in batches:
        obs.update(b)
    alphas, errs = obs.errors()
    allv = np.concatenate([b.ravel() for b in batches])
    raw = _raw_mse(allv, spec, obs.lo, obs.hi, alphas)
    best_raw, best_hist = int(np.argmin(raw)), int(np.argmin(errs))
    # the histogram (bin centres) picks a clipping range whose true error is within 2% of
    # the best one on the raw values, and it clips the outlier
    assert raw[best_hist] <= raw[best_raw] * 1.02, (alphas[best_hist], alphas[best_raw])
    assert raw[best_hist] < raw[0]  # better than min-max (alpha = 1)
    assert obs.range()[1] < 60.0


def test_kl_of_threshold_by_hand_and_against_scipy():
    hist = np.array([4.0, 2.0, 1.0, 1.0])
    # i = 4, 2 levels: P = [4, 2, 1, 1] / 8; chunks {0, 1}, {2, 3}: Q = [3, 3, 1, 1] / 8
    expected = 0.5 * np.log(4 / 3) + 0.25 * np.log(2 / 3)
    assert O._kl_of_threshold(hist, 4, 2) == pytest.approx(expected, rel=1e-12)
    # i = 2: P = [4, 2 + 2] / 8 (the clipped mass in the last bin); Q = [4, 2] / 6
    p, q = np.array([4, 4]) / 8, np.array([4, 2]) / 6
    assert O._kl_of_threshold(hist, 2, 2) == pytest.approx(scipy.stats.entropy(p, q), rel=1e-12)


def test_kl_threshold_clips_outliers_of_a_gaussian(rng):
    obs = O.KLObserver(QuantSpec(8, "symmetric", "tensor"))
    for b in activation_batches(rng, outlier=60.0):
        obs.update(b)
    lo, hi = obs.range()
    ts, kls = obs.divergences()
    assert hi == ts[np.argmin(kls)] and -hi <= lo < 0
    assert 3 * 1.5 < hi < 60.0  # beyond 3 sigma, short of the outlier


def test_mse_range_balances_clipping_and_rounding(rng):
    # without outliers, 8-bit min-max is near optimal: MSE keeps most of the range
    x = rng.uniform(-1, 1, (64, 64)).astype(np.float32)
    obs = O.MSEObserver(QuantSpec(8, "asymmetric", "tensor"))
    obs.update(x)
    lo, hi = obs.range()
    assert hi > 0.95 * x.max() and lo < 0.95 * x.min()


# ----------------------------------------------------------------------------------------
# masks, non-finite values, no data
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", O.OBSERVERS)
def test_masked_and_non_finite_values_are_skipped(name, rng):
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)  # [B, T, K]
    skip = np.zeros((2, 5), bool)
    skip[1, 3:] = True  # padding rows
    dirty = x.copy()
    dirty[1, 3:] = 1e6  # whatever padding rows hold must not count
    dirty[0, 0, 0], dirty[0, 1, 2], dirty[1, 0, 1] = -np.inf, np.nan, np.inf
    kept = dirty[~skip]  # [n, K]: the unmasked rows
    kept = kept[np.isfinite(kept)]  # their finite values, flat
    assert kept.size == 8 * 8 - 3
    obs, ref = O.make_observer(name), O.make_observer(name)
    obs.update(dirty, skip)
    ref.update(kept)
    assert obs.n_skipped_nonfinite == 3 and obs.n_seen == kept.size
    lo, hi = obs.range()
    assert (lo, hi) == ref.range() and hi < 10
    if name in ("minmax", "ema"):  # one batch: the extremes themselves
        assert (lo, hi) == (kept.min(), kept.max())


def test_calibrating_with_no_data_is_refused():
    for name in O.OBSERVERS:
        obs = O.make_observer(name)
        with pytest.raises(ValueError, match="has seen no finite values: calibrate with"):
            obs.range()
        obs.update(np.full((2, 3), np.nan, np.float32))
        obs.update(np.ones((2, 3), np.float32), skip=np.array([True, True]))
        with pytest.raises(ValueError, match=r"seen no finite values.*skipped 6 non-finite"):
            obs.range()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="calibration must be one of minmax, ema, percentile"):
        O.make_observer("entropy")
    with pytest.raises(ValueError, match=r"percentile must be in \(50, 100\]; got 40"):
        O.PercentileObserver(40)
    with pytest.raises(ValueError, match="averaging_constant must be in"):
        O.MovingAverageMinMaxObserver(0.0)
    with pytest.raises(ValueError, match="skip .* must match the leading axes"):
        O.MinMaxObserver().update(np.ones((2, 3, 4), np.float32), np.ones((3,), bool))
    with pytest.raises(TypeError, match="floating-point numpy.ndarray"):
        O.MinMaxObserver().update(np.ones((2, 3), np.int32))
