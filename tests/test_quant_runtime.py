"""minicompress/quant/runtime.py: the model on the int8 kernels against its fake-quant
simulation (one layer to float rounding; the whole model within the stated tolerance),
W4A8 on the same kernels, and what the kernels cannot run, refused."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close
from quant_models import tiny_trained

from minicompress.data import eval_windows
from minicompress.deploy.format import load_int8, save_compressed
from minicompress.kernels import int8_kernel_path, pack_quantized_int8_linear
from minicompress.nn.model import forward
from minicompress.nn.ops import cross_entropy_forward
from minicompress.quant import ptq
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.runtime import INT8, Int8Linear, int8_weights, pack_int8_params
from minicompress.quant.tensor import QuantSpec, dequantize_tensor, quantize_tensor

PATHS = ["reference", "portable", int8_kernel_path("auto")]
SIM = FakeQuantLinear(activations="dynamic")  # 8-bit asymmetric per token: the kernels' grid
W8 = QuantSpec(8, "symmetric", "channel")
KERNEL_SPECS = [W8, QuantSpec(4, "symmetric", "channel"), QuantSpec(8, "symmetric", "tensor")]


@pytest.mark.parametrize("path", sorted(set(PATHS)))
@pytest.mark.parametrize("spec", KERNEL_SPECS, ids=["w8", "w4", "w8-tensor"])
def test_one_layer_equals_its_simulation(path, spec, rng):
    x = (rng.standard_normal((2, 9, 48)) * 1.5 + 0.2).astype(np.float32)  # [B, T, K]
    w = (rng.standard_normal((48, 40)) * 0.2).astype(np.float32)  # [K, N]
    b = rng.standard_normal(40).astype(np.float32)
    qt = quantize_tensor(w, spec)
    packed = pack_quantized_int8_linear(*int8_weights("l", qt), b, path)
    y_int, _ = INT8.forward("l", x, packed, b)
    y_sim, _ = SIM.forward("l", x, dequantize_tensor(qt), b)
    # the same integers on both sides; only the float rounding of the product differs
    assert_close(y_int, y_sim, rtol=0, atol=1e-5 * np.abs(y_sim).max(), name=f"y ({path})")


@pytest.mark.parametrize("path", sorted(set(PATHS)))
def test_one_layer_with_a_static_range_equals_its_simulation(path, rng):
    x = (rng.standard_normal((2, 9, 48)) * 1.5 + 0.2).astype(np.float32)  # [B, T, K]
    w = (rng.standard_normal((48, 40)) * 0.2).astype(np.float32)  # [K, N]
    b = rng.standard_normal(40).astype(np.float32)
    qt = quantize_tensor(w, W8)
    packed = pack_quantized_int8_linear(*int8_weights("l", qt), b, path)
    # a range narrower than x's: some values clip, on both sides alike
    act = {"l": (np.float32(4.0 / 255), np.int32(128))}
    y_int, _ = Int8Linear(act).forward("l", x, packed, b)
    sim = FakeQuantLinear(activations="static", act_qparams=act)
    y_sim, _ = sim.forward("l", x, dequantize_tensor(qt), b)
    assert_close(y_int, y_sim, rtol=0, atol=1e-5 * np.abs(y_sim).max(), name=f"y ({path})")
    y_dyn, _ = INT8.forward("l", x, packed, b)
    assert np.abs(y_dyn - y_int).max() > 1e-2 * np.abs(y_sim).max()  # the range mattered
    with pytest.raises(ValueError, match="layer 'other' has no calibrated activation range"):
        Int8Linear(act).forward("other", x, packed, b)


def test_model_on_int8_kernels_matches_simulation():
    params, cfg, data = tiny_trained()
    q = ptq.quantize_weights(params, cfg, W8)
    sim_params = ptq.dequantized_params(params, q)
    int_params = pack_int8_params(params, cfg, q)
    x, y = eval_windows(data.val, cfg.block_size)
    x, y = x[:32], y[:32]
    logits_sim, _ = forward(sim_params, x, cfg, SIM)
    logits_int, _ = forward(int_params, x, cfg, INT8)
    # Stated tolerance: a rare activation within an ulp of a rounding boundary rounds the
    # other way on one side, and its layer's output moves by one activation step; so the
    # logits agree to 1e-3 of their scale on average and 2% at worst, and the loss to 1e-4.
    scale = np.abs(logits_sim).max()
    diff = np.abs(logits_int - logits_sim)
    assert diff.mean() <= 1e-3 * scale and diff.max() <= 2e-2 * scale, (diff.mean(), diff.max())
    ce_sim, _ = cross_entropy_forward(logits_sim, y)
    ce_int, _ = cross_entropy_forward(logits_int, y)
    assert abs(ce_int / ce_sim - 1) <= 1e-4
    # and quantization did something: the float model differs by more than that
    logits_fp, _ = forward(params, x, cfg)
    assert np.abs(logits_fp - logits_sim).mean() > diff.mean()


def test_packed_params_keep_everything_else():
    params, cfg, _ = tiny_trained()
    q = ptq.quantize_weights(params, cfg, W8, layers=["blocks.0.mlp.fc"])
    packed = pack_int8_params(params, cfg, q, path="reference")
    assert type(packed["blocks.0.mlp.fc.w"]).__name__ == "PackedInt8Linear"
    assert packed["blocks.1.mlp.fc.w"] is params["blocks.1.mlp.fc.w"]  # not quantized: float
    assert np.array_equal(packed["wte"], dequantize_tensor(q["wte"]))
    assert np.array_equal(packed["blocks.0.mlp.fc.w"].bias, params["blocks.0.mlp.fc.b"])


def test_what_the_kernels_cannot_run_is_refused(rng):
    w = rng.standard_normal((16, 8)).astype(np.float32)
    for spec in (
        QuantSpec(8, "asymmetric", "channel"),
        QuantSpec(4, "symmetric", "group", group_size=8),
        QuantSpec(8, "symmetric", "channel", axis=0),
    ):
        with pytest.raises(ValueError, match="blocks.0.mlp.fc: the int8 kernel takes symmetric"):
            int8_weights("blocks.0.mlp.fc", quantize_tensor(w, spec))
    with pytest.raises(TypeError, match="Int8Linear runs inference only"):
        INT8.backward("head", np.zeros((2, 3), np.float32), None)


def test_a_saved_checkpoint_runs_on_the_kernels_as_stored(tmp_path):
    params, cfg, data = tiny_trained()
    q = ptq.quantize_weights(params, cfg, W8)
    save_compressed(tmp_path / "w8", {**params, **q}, cfg, data.tokenizer.chars)
    loaded, cfg2, _, _ = load_int8(tmp_path / "w8", kernel_path="reference")
    in_memory = pack_int8_params(params, cfg, q, path="reference")
    x = eval_windows(data.val, cfg.block_size)[0][:4]
    assert np.array_equal(forward(loaded, x, cfg2, INT8)[0], forward(in_memory, x, cfg, INT8)[0])
    q4 = ptq.quantize_weights(params, cfg, QuantSpec(4, "asymmetric", "group", group_size=16))
    save_compressed(tmp_path / "w4", {**params, **q4}, cfg, data.tokenizer.chars)
    with pytest.raises(ValueError, match="the int8 kernel takes symmetric weights"):
        load_int8(tmp_path / "w4")
