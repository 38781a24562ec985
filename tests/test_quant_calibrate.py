"""minicompress/quant/calibrate.py: the ranges are those of the inputs each layer really
received, padding skipped, over all batches; bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from quant_models import tiny_trained

from minicompress.data import Batch
from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, forward, init_params, linear_names
from minicompress.quant.calibrate import calibrate, calibration_batches, static_qparams
from minicompress.quant.tensor import QuantSpec, scale_zero_point


class RecordingLinear:
    """Dense, and keeps every input it sees, per layer (the independent record)."""

    def __init__(self):
        self.inputs = {}

    def forward(self, name, x, w, b):
        self.inputs.setdefault(name, []).append(x.copy())
        return DENSE.forward(name, x, w, b)

    def backward(self, name, dy, cache):
        return DENSE.backward(name, dy, cache)


def test_minmax_ranges_are_those_of_the_layer_inputs(rng):
    params, cfg, data = tiny_trained()
    batches = calibration_batches(data.train, 3, 4, cfg.block_size, rng)
    ranges = calibrate(params, cfg, batches, "minmax", progress=False)
    rec = RecordingLinear()
    for b in batches:
        forward(params, b.x, cfg, rec)
    assert list(ranges) == linear_names(cfg)
    for name, (lo, hi) in ranges.items():
        seen = np.concatenate([x.ravel() for x in rec.inputs[name]])
        assert (lo, hi) == (seen.min(), seen.max()), name
    # the MLP projection reads GELU outputs: nothing below GELU's minimum -0.17
    assert ranges["blocks.0.mlp.proj"][0] > -0.2


def test_padding_is_skipped():
    # a post-LN encoder reads the raw embeddings in its first qkv: give the padding token
    # a huge embedding, and the padded positions would set that layer's range
    cfg = TransformerConfig(
        vocab_size=11,
        block_size=6,
        n_layer=1,
        n_head=2,
        n_embd=8,
        causal=False,
        head=False,
        norm="post",
    )
    params = init_params(cfg, np.random.default_rng(1))
    params["wte"][10] = 100.0
    x = np.random.default_rng(2).integers(0, 10, (3, 6))
    pad = np.zeros((3, 6), bool)
    pad[0, 4:] = pad[2, 2:] = True
    x[pad] = 10
    ranges = calibrate(params, cfg, [Batch(x, None, pad)], "minmax", progress=False)
    rec = RecordingLinear()
    forward(params, x, cfg, rec, pad_mask=pad)
    for name, (lo, hi) in ranges.items():
        kept = rec.inputs[name][0][~pad]  # [n_real, K]
        assert (lo, hi) == (kept.min(), kept.max()), name
    assert rec.inputs["blocks.0.attn.qkv"][0].max() >= 100 > 10 * ranges["blocks.0.attn.qkv"][1]


def test_layers_observer_and_static_qparams(rng):
    params, cfg, data = tiny_trained()
    batches = calibration_batches(data.train, 2, 4, cfg.block_size, rng)
    ranges = calibrate(
        params, cfg, batches, "percentile", layers=["blocks.1.mlp.fc"], progress=False
    )
    assert list(ranges) == ["blocks.1.mlp.fc"]
    qp = static_qparams(ranges, 8, "asymmetric")
    lo, hi = ranges["blocks.1.mlp.fc"]
    s, z = scale_zero_point(lo, hi, QuantSpec(8, "asymmetric", "tensor"))
    assert qp["blocks.1.mlp.fc"] == (s, z) and qp["blocks.1.mlp.fc"][0].dtype == np.float32
    # plain token arrays are accepted as batches too
    assert calibrate(params, cfg, [b.x for b in batches], progress=False).keys() == set(
        linear_names(cfg)
    )


def test_bad_input_is_refused(rng):
    params, cfg, data = tiny_trained()
    with pytest.raises(ValueError, match="calibrate needs at least one batch"):
        calibrate(params, cfg, [], progress=False)
    with pytest.raises(ValueError, match=r"layers \['blocks.9.mlp.fc'\] are not linear"):
        calibrate(params, cfg, [], layers=["blocks.9.mlp.fc"], progress=False)
    with pytest.raises(ValueError, match="calibration must be one of"):
        calibrate(params, cfg, [], "max", progress=False)
    with pytest.raises(ValueError, match="n_batches must be >= 1"):
        calibration_batches(data.train, 0, 4, cfg.block_size, rng)
