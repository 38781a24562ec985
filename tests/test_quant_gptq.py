"""minicompress/quant/gptq.py: GPTQ is round-to-nearest when the inputs are uncorrelated,
it lowers the output error against round-to-nearest on correlated inputs and on each
layer of a trained model (on text it did not calibrate on), bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gradcheck import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from quant_models import tiny_trained

from minicompress.quant.calibrate import calibration_batches, record_inputs
from minicompress.quant.gptq import gptq_quantize, inverse_hessian_factor, output_error
from minicompress.quant.pipeline import QuantizeConfig, quantize_model
from minicompress.quant.tensor import QuantSpec, dequantize_tensor, quantize_tensor

G16 = QuantSpec(4, "asymmetric", "group", group_size=16, scale_dtype="float16")
W3_G8 = QuantSpec(3, "asymmetric", "group", group_size=8)
SPECS = [G16, QuantSpec(4, "symmetric", "channel"), W3_G8]


def test_inverse_hessian_factor_by_hand():
    # x^T x = diag(4, 1) (+1% of its mean diagonal 2.5 = 0.025): U = diag(1/sqrt(h))
    x = np.array([[2.0, 0.0], [0.0, 1.0]])
    u = inverse_hessian_factor(x)
    assert_close(u, np.diag([1 / np.sqrt(4.025), 1 / np.sqrt(1.025)]), rtol=1e-12)
    # and in general U^T U is the inverse of the damped Hessian
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5))
    u = inverse_hessian_factor(x, damp=0.1)
    h = x.T @ x
    h += 0.1 * np.mean(np.diag(h)) * np.eye(5)
    assert_close(u.T @ u @ h, np.eye(5), rtol=0, atol=1e-10)
    assert np.allclose(u, np.triu(u))


@pytest.mark.parametrize("spec", SPECS, ids=["g16", "channel-sym", "w3-g8"])
def test_uncorrelated_inputs_give_round_to_nearest(spec, rng):
    # x^T x diagonal: H^-1's factor is diagonal, no row moves: GPTQ is round-to-nearest
    w = rng.standard_normal((32, 6)).astype(np.float32)
    x = np.diag(rng.uniform(0.5, 2.0, 32)).astype(np.float32)  # [M=K, K]
    ours = gptq_quantize(x, w, spec)
    rtn = quantize_tensor(w, spec)
    assert np.array_equal(ours.q, rtn.q) and np.array_equal(ours.scale, rtn.scale)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), spec=st.sampled_from(SPECS))
def test_codes_are_on_the_grid_and_correlated_inputs_gain(seed, spec):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((32, 32))
    x = (rng.standard_normal((256, 32)) @ mix).astype(np.float32)  # correlated channels
    w = rng.standard_normal((32, 8)).astype(np.float32)
    qt = gptq_quantize(x, w, spec)
    q_min, q_max = spec.code_range()
    assert qt.q.shape == w.shape and q_min <= qt.q.min() and qt.q.max() <= q_max
    assert qt.scale.shape == quantize_tensor(w, spec).scale.shape
    rtn = dequantize_tensor(quantize_tensor(w, spec))
    assert output_error(x, w, dequantize_tensor(qt)) < output_error(x, w, rtn)


def test_gptq_lowers_each_layer_s_output_error_on_held_out_text():
    params, cfg, data = tiny_trained()
    qc = QuantizeConfig(3, "group", 16, scheme="asymmetric", calib_batches=2)
    rtn = quantize_model(params, cfg, data, qc, progress=False)
    ours = quantize_model(params, cfg, data, dataclasses.replace(qc, gptq=True), progress=False)
    assert set(ours.qtensors) == set(rtn.qtensors)
    assert ours.meta["quantization"]["config"]["gptq"] is True
    # inputs of other windows than the calibration's (another seed)
    batches = calibration_batches(data.train, 2, 16, cfg.block_size, np.random.default_rng(9))
    for name, x in record_inputs(params, cfg, batches).items():
        w = params[name + ".w"]
        errs = [output_error(x, w, q.sim_params[name + ".w"]) for q in (rtn, ours)]
        assert errs[1] < errs[0], (name, errs)


def test_bad_input_is_refused(rng):
    w = rng.standard_normal((16, 4)).astype(np.float32)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="must agree"):
        gptq_quantize(x[:, :8], w, G16)
    with pytest.raises(ValueError, match="linear scheme per channel or per group"):
        gptq_quantize(x, w, QuantSpec(4, "log", "channel"))
    with pytest.raises(ValueError, match="linear scheme per channel or per group"):
        gptq_quantize(x, w, QuantSpec(4, "asymmetric", "tensor"))
    with pytest.raises(ValueError, match="per output channel"):
        gptq_quantize(x, w, QuantSpec(4, "asymmetric", "channel", axis=0))
    with pytest.raises(ValueError, match="group_size 5 must divide K=16"):
        gptq_quantize(x, w, QuantSpec(4, "asymmetric", "group", group_size=5))
    with pytest.raises(ValueError, match="NaN or infinite"):
        gptq_quantize(np.full_like(x, np.nan), w, G16)
    with pytest.raises(ValueError, match="gptq rounds linear grids"):
        QuantizeConfig(4, "group", 16, scheme="asymmetric", clip="mse", gptq=True)
