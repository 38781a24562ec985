"""minicompress/quant/bias_correction.py: the shift by hand, the mean output error of every
corrected layer zero on the inputs the corrected quantized model feeds it, and the pipeline
changing only biases (the head, which has none, untouched)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gradcheck import assert_close
from quant_models import tiny_trained

from minicompress.nn.linear import DENSE
from minicompress.nn.model import linear_names
from minicompress.quant.bias_correction import bias_shift
from minicompress.quant.calibrate import record_inputs
from minicompress.quant.pipeline import QuantizeConfig, calibration_data, quantize_model


def test_bias_shift_by_hand():
    # y_q - y = x @ (w_q - w) = [[1, 2], [3, 4]] @ [[0.5, 0], [0, -0.25]]
    #         = [[0.5, -0.5], [1.5, -1.0]]  ->  mean over rows [1.0, -0.75]
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    w = np.eye(2, dtype=np.float32)
    w_q = np.array([[1.5, 0.0], [0.0, 0.75]], np.float32)
    assert_close(bias_shift(x, w, w_q, DENSE, "layer"), np.array([1.0, -0.75]), rtol=1e-12)
    assert not bias_shift(x, w, w, DENSE, "layer").any()  # nothing rounded: no shift


@pytest.mark.parametrize("activations, bits", [("static", 8), ("none", 4), ("dynamic", 8)])
def test_every_corrected_layer_has_no_mean_error_on_its_inputs(activations, bits):
    """On the calibration windows, each layer of the corrected quantized model (fed by the
    corrected layers before it) has outputs whose mean equals the float layer's on the same
    inputs; before the correction the mean error was not zero."""
    params, cfg, data = tiny_trained()
    qc = QuantizeConfig(bits, activations=activations, calib_batches=2, bias_correction=True)
    plain = quantize_model(params, cfg, data, dataclasses.replace(qc, bias_correction=False), False)
    fixed = quantize_model(params, cfg, data, qc, False)
    batches = calibration_data(data, cfg, qc)
    corrected = [n for n in linear_names(cfg) if n + ".b" in params]
    inputs = record_inputs(fixed.sim_params, cfg, batches, corrected, inner=fixed.linear)
    before = []
    for name in corrected:
        x, w, w_q = inputs[name], params[name + ".w"], fixed.sim_params[name + ".w"]
        b_new, b_old = fixed.params[name + ".b"], params[name + ".b"]
        y_q = fixed.linear.forward(name, x, w_q, b_new)[0].astype(np.float64)
        y = x.astype(np.float64) @ w + b_old
        scale = np.abs(y).mean()
        assert np.abs((y_q - y).mean(axis=0)).max() < 1e-5 * scale, name
        y_plain = plain.linear.forward(name, x, w_q, b_old)[0].astype(np.float64)
        before.append(np.abs((y_plain - y).mean(axis=0)).max() / scale)
    assert max(before) > 1e-4  # there was a shift to correct
    assert fixed.meta["quantization"]["bias_shift_max"] > 0


def test_only_biases_change_and_the_head_is_left_alone():
    params, cfg, data = tiny_trained()
    qc = QuantizeConfig(8, activations="static", calib_batches=2)
    plain = quantize_model(params, cfg, data, qc, False)
    fixed = quantize_model(params, cfg, data, dataclasses.replace(qc, bias_correction=True), False)
    assert "head.b" not in fixed.params
    linear_biases = {n + ".b" for n in linear_names(cfg)}
    for key, value in plain.params.items():
        same = np.array_equal(value, fixed.params[key])
        assert same == (key not in linear_biases), key  # layer norms' biases: untouched
        assert value.dtype == fixed.params[key].dtype
    for key, qt in plain.qtensors.items():  # the codes are those of the same weights
        np.testing.assert_array_equal(qt.q, fixed.qtensors[key].q)
    assert plain.meta["quantization"]["act_qparams"] == fixed.meta["quantization"]["act_qparams"]
