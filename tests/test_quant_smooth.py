"""minicompress/quant/smooth.py: SmoothQuant's and AWQ's factors by hand, the folded model
equal to the original in float (pre-LN and post-LN), AWQ's search never worse than no
scaling, and SmoothQuant lowering the static W8A8 error of a trained model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gradcheck import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from quant_models import tiny_trained

from minicompress.nn.gradcheck import random_params64
from minicompress.nn.model import TransformerConfig, forward, linear_names
from minicompress.quant import smooth
from minicompress.quant.calibrate import calibration_batches, record_inputs
from minicompress.quant.pipeline import QuantizeConfig, quantize_model
from minicompress.quant.ptq import perplexity
from minicompress.quant.tensor import QuantSpec


def test_smoothquant_scales_by_hand():
    # channel 0: max|X| = 16, max|W| = 1 -> alpha 0.5: sqrt(16) / 1 = 4
    # channel 1: max|X| = 1, max|W| = 4 -> 1 / 2 = 0.5; channel 2: a dead channel -> 1
    s = smooth.smoothquant_scales([16.0, 1.0, 0.0], [1.0, 4.0, 3.0], 0.5)
    assert s.dtype == np.float32
    assert_close(s, np.array([4.0, 0.5, 1.0], np.float32), rtol=0)
    # alpha 1 moves all of the range into the weight: s = max|X|; alpha 0: s = 1 / max|W|
    assert_close(smooth.smoothquant_scales([8.0], [2.0], 1.0), np.float32([8.0]), rtol=0)
    assert_close(smooth.smoothquant_scales([8.0], [2.0], 0.0), np.float32([0.5]), rtol=0)


def test_smoothing_balances_the_two_ranges(rng):
    # after scaling at alpha 0.5, each channel's activation and weight ranges are equal
    x = rng.standard_normal((64, 6)).astype(np.float32) * np.float32([1, 50, 2, 0.1, 8, 3])
    w = rng.standard_normal((6, 5)).astype(np.float32)
    s = smooth.smoothquant_scales(np.abs(x).max(0), np.abs(w).max(1), 0.5)
    assert_close(np.abs(x / s).max(0), np.abs(s[:, None] * w).max(1), rtol=1e-5)


def test_awq_scales_by_hand():
    # mean|x| = (1, 4, 16), alpha 0.5: (1, 2, 4), normalized by sqrt(4 * 1) = 2
    s = smooth.awq_scales([1.0, 4.0, 16.0], 0.5)
    assert_close(s, np.float32([0.5, 1.0, 2.0]), rtol=0)
    assert_close(smooth.awq_scales([1.0, 4.0, 16.0], 0.0), np.ones(3, np.float32), rtol=0)


def _equal_functions(params, scaled, cfg, rng):
    idx = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    ours, _ = forward(scaled, idx, cfg)
    theirs, _ = forward(params, idx, cfg)
    assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_folded_model_computes_the_same_function(norm, rng):
    cfg = TransformerConfig(
        vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, mlp_ratio=2, norm=norm
    )
    params = random_params64(cfg, rng)
    layers = smooth.foldable_layers(cfg)
    expect = {f"blocks.{i}.attn.proj" for i in range(2)}
    if norm == "pre":
        expect |= {"head"} | {f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "mlp.fc")}
    assert set(layers) == expect
    scales = {n: rng.uniform(0.2, 5.0, params[n + ".w"].shape[0]) for n in layers}
    before = {k: v.copy() for k, v in params.items()}
    scaled = smooth.fold_input_scales(params, cfg, scales)
    for k, v in params.items():
        assert np.array_equal(v, before[k])  # the caller's arrays are untouched
    assert not np.allclose(scaled["blocks.0.attn.qkv.w"], params["blocks.0.attn.qkv.w"])
    _equal_functions(params, scaled, cfg, rng)


def test_unfoldable_layer_and_bad_scales_are_refused(rng):
    cfg = TransformerConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    params = random_params64(cfg, rng)
    with pytest.raises(ValueError, match="blocks.0.mlp.proj.*cannot fold"):
        smooth.fold_input_scales(params, cfg, {"blocks.0.mlp.proj": np.ones(32)})
    with pytest.raises(ValueError, match="must be 8 finite values > 0"):
        smooth.fold_input_scales(params, cfg, {"blocks.0.mlp.fc": -np.ones(8)})
    with pytest.raises(ValueError, match="must be 8 finite values > 0"):
        smooth.fold_input_scales(params, cfg, {"blocks.0.mlp.fc": np.ones(7)})
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(ValueError, match="alpha must be a number in"):
            smooth.smoothquant_scales([1.0], [1.0], bad)
    with pytest.raises(ValueError, match="act_absmax"):
        smooth.smoothquant_scales([np.nan], [1.0])
    with pytest.raises(ValueError, match="one shape"):
        smooth.smoothquant_scales([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="must agree"):
        smooth.awq_search(np.ones((4, 3), np.float32), np.ones((2, 5), np.float32), QuantSpec())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), outlier=st.floats(1.0, 100.0))
def test_awq_search_is_never_worse_than_no_scaling(seed, outlier):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    x[:, 3] *= np.float32(outlier)  # one salient channel
    w = rng.standard_normal((16, 8)).astype(np.float32)
    spec = QuantSpec(4, "asymmetric", "group", group_size=8)
    s, alpha = smooth.awq_search(x, w, spec)
    assert 0.0 <= alpha <= 1.0 and s.shape == (16,)
    ones = np.ones(16, np.float32)
    assert smooth.scaled_output_error(x, w, s, spec) <= smooth.scaled_output_error(x, w, ones, spec)


def test_scaled_output_error_is_zero_on_the_grid():
    # weights already on the 4-bit grid of their own range, s = 1: no error at all
    w = np.tile(np.arange(16, dtype=np.float32)[:, None] / 4, (1, 2))  # codes 0..15, s=1/4
    x = np.eye(16, dtype=np.float32)
    spec = QuantSpec(4, "asymmetric", "tensor")
    assert smooth.scaled_output_error(x, w, np.ones(16, np.float32), spec) == 0.0


def test_channel_stats(rng):
    x = rng.standard_normal((50, 4)).astype(np.float32)
    absmax, mean = smooth.channel_stats({"l": x})["l"]
    assert_close(absmax, np.abs(x).max(axis=0).astype(np.float64), rtol=0)
    assert_close(mean, np.abs(x.astype(np.float64)).mean(axis=0), rtol=1e-12)


def test_smoothquant_lowers_the_static_w8a8_input_range_and_keeps_the_model():
    params, cfg, data = tiny_trained()
    base = QuantizeConfig(8, activations="static", calib_batches=2)
    plain = quantize_model(params, cfg, data, base, progress=False)
    smoothed = quantize_model(
        params, cfg, data, dataclasses.replace(base, smooth=0.5), progress=False
    )
    assert set(smoothed.meta["quantization"]["input_scales"]) == set(smooth.foldable_layers(cfg))
    # in float the smoothed model is the same function
    rng = np.random.default_rng(0)
    idx = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    assert_close(
        forward(smoothed.params, idx, cfg)[0], forward(params, idx, cfg)[0], rtol=0, atol=2e-4
    )
    # the outlier channels moved into the weights: the static range of an LN-fed layer
    # shrinks relative to the typical activation
    batches = calibration_batches(data.train, 2, 16, cfg.block_size, np.random.default_rng(1))
    name = "blocks.1.mlp.fc"
    before = record_inputs(params, cfg, batches, [name])[name]
    after = record_inputs(smoothed.params, cfg, batches, [name])[name]

    def peak_to_rms(x):
        return np.abs(x).max() / np.sqrt(np.mean(x**2))

    assert peak_to_rms(after) < peak_to_rms(before)
    ppl = [perplexity(q.sim_params, cfg, data.val, q.linear, 16) for q in (plain, smoothed)]
    assert np.isfinite(ppl).all()


def test_awq_keeps_the_model_and_is_recorded():
    params, cfg, data = tiny_trained()
    qc = QuantizeConfig(4, "group", 16, scheme="asymmetric", awq=True, calib_batches=1)
    q = quantize_model(params, cfg, data, qc, progress=False)
    alphas = q.meta["quantization"]["input_scales"]
    assert set(alphas) == set(smooth.foldable_layers(cfg))
    assert all(0.0 <= a <= 1.0 for a in alphas.values())
    rng = np.random.default_rng(0)
    idx = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    assert_close(forward(q.params, idx, cfg)[0], forward(params, idx, cfg)[0], rtol=0, atol=2e-4)
    assert set(linear_names(cfg)) - set(alphas) == {f"blocks.{i}.mlp.proj" for i in range(2)}


def test_config_refuses_bad_combinations():
    with pytest.raises(ValueError, match="alpha must be a number"):
        QuantizeConfig(8, activations="static", smooth=2.0)
    with pytest.raises(ValueError, match="granularity model"):
        QuantizeConfig(8, "model", scheme="asymmetric", awq=True)
    with pytest.raises(ValueError, match="not both"):
        QuantizeConfig(4, "group", 16, smooth=0.5, awq=True)
