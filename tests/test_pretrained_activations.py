"""minicompress/pretrained/activations.py: the inputs of the linear layers read from the
forward pass (checked against the block inputs and the GELU's range), per-channel maxima
and outlier channels by hand."""

from __future__ import annotations

import numpy as np
import pytest
from pretrained_helpers import need_extra, write_tiny_checkpoint

from minicompress.nn.model import forward
from minicompress.pretrained import load_pretrained
from minicompress.pretrained.activations import channel_absmax, linear_inputs, outlier_channels


def test_linear_inputs_are_the_layers_inputs_at_real_tokens(tmp_path):
    need_extra()
    model = load_pretrained(write_tiny_checkpoint(tmp_path / "tiny"))
    batch = model.tokenizer.encode(["the cat sat on the mat .", "a dog"])
    inputs = linear_inputs(model.params, model.cfg, batch)
    n = int((~batch.pad_mask).sum())
    assert sorted(inputs) == sorted(
        f"blocks.{i}.{k}" for i in range(2) for k in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    )
    assert inputs["blocks.1.mlp.fc"].shape == (n, 8)
    assert inputs["blocks.0.mlp.proj"].shape == (n, 12)
    _, cache = forward(
        model.params, batch.ids, model.cfg, pad_mask=batch.pad_mask, token_types=batch.token_types
    )
    keep = ~batch.pad_mask
    for i in range(2):  # post-LN: a block's qkv reads the block's input itself
        np.testing.assert_array_equal(inputs[f"blocks.{i}.attn.qkv"], cache.hidden[i][keep])
    assert inputs["blocks.0.mlp.proj"].min() >= -0.17  # GELU(x) >= -0.1700 for every x


def test_channel_absmax_and_outliers_by_hand():
    x = np.array([[1.0, -2.0, 0.5, 30.0], [-1.5, 1.0, 0.25, -8.0], [0.5, 0.0, -0.75, 1.0]])
    np.testing.assert_array_equal(channel_absmax(x), [1.5, 2.0, 0.75, 30.0])
    # median of (1.5, 2, 0.75, 30) is 1.75: 30 > 6 * 1.75; 2 > 1.1 * 1.75 too
    np.testing.assert_array_equal(outlier_channels(channel_absmax(x)), [3])
    np.testing.assert_array_equal(outlier_channels(channel_absmax(x), factor=1.1), [3, 1])


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros(3)])
def test_bad_shapes_are_refused(bad):
    with pytest.raises(ValueError, match="x must be"):
        channel_absmax(bad)
