"""minicompress/quant/ptq.py: which tensors are quantized and how, the model-wide range,
quality ordered by bits on a trained model, per-layer sensitivity, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from quant_models import tiny_trained

from minicompress.nn.model import linear_names
from minicompress.quant import ptq
from minicompress.quant.tensor import QuantSpec, dequantize_tensor

W8 = QuantSpec(8, "symmetric", "channel")


def test_which_tensors_and_how():
    params, cfg, _ = tiny_trained()
    q = ptq.quantize_weights(params, cfg, W8)
    assert set(q) == {f"{n}.w" for n in linear_names(cfg)} | {"wte", "wpe"}
    assert q["blocks.0.mlp.fc.w"].scale.shape == (1, 4 * cfg.n_embd)  # per output channel
    assert q["wte"].scale.shape == (cfg.vocab_size, 1) and q["wte"].spec == ptq.EMBEDDING_SPEC
    deq = ptq.dequantized_params(params, q)
    for name, a in params.items():
        if name in q:
            assert deq[name].dtype == np.float32 and not np.array_equal(deq[name], a)
            assert np.array_equal(deq[name], dequantize_tensor(q[name]))
        else:  # biases, LayerNorm: the very same arrays
            assert deq[name] is a
    only = ptq.quantize_weights(params, cfg, W8, ["blocks.1.attn.proj"], embedding_spec=None)
    assert set(only) == {"blocks.1.attn.proj.w"}


def test_model_granularity_is_one_range_over_the_model():
    params, cfg, _ = tiny_trained()
    spec = QuantSpec(8, "asymmetric", "model")
    q = ptq.quantize_weights(params, cfg, spec, embedding_spec=None)
    scales = {qt.scale.item() for qt in q.values()}
    zero_points = {qt.zero_point.item() for qt in q.values()}
    assert len(scales) == 1 and len(zero_points) == 1
    lo = min(params[k].min() for k in q)
    hi = max(params[k].max() for k in q)
    assert scales.pop() == pytest.approx((hi - lo) / 255, rel=1e-6)
    # with the embeddings quantized the same way, they join the one range
    q2 = ptq.quantize_weights(params, cfg, spec, embedding_spec=spec)
    assert len({qt.scale.item() for qt in q2.values()}) == 1 and "wte" in q2


def test_quality_is_ordered_by_bits():
    params, cfg, data = tiny_trained()
    base = ptq.perplexity(params, cfg, data.val, max_windows=64)

    def ppl(spec):
        q = ptq.quantize_weights(params, cfg, spec)
        return ptq.perplexity(ptq.dequantized_params(params, q), cfg, data.val, max_windows=64)

    p8 = ppl(W8)
    p4 = ppl(QuantSpec(4, "asymmetric", "group", group_size=16))
    p2 = ppl(QuantSpec(2, "asymmetric", "group", group_size=16))
    assert abs(p8 / base - 1) < 0.005  # W8 per channel: within half a percent
    assert p2 > p4 > base * 0.999 and p2 > 1.005 * base  # (a barely trained model: small)


def test_layer_sensitivity_quantizes_one_layer_at_a_time():
    params, cfg, data = tiny_trained()
    spec = QuantSpec(2, "symmetric", "tensor")
    rows = ptq.layer_sensitivity(params, cfg, data.val, spec, max_windows=16, progress=False)
    assert [r["layer"] for r in rows] == linear_names(cfg)
    base = ptq.perplexity(params, cfg, data.val, max_windows=16)
    # the row of one layer is the perplexity with that layer, and only it, quantized
    name = "blocks.0.mlp.fc"
    alone = dict(params)
    alone[name + ".w"] = dequantize_tensor(
        ptq.quantize_weights(params, cfg, spec, [name], None)[name + ".w"]
    )
    row = next(r for r in rows if r["layer"] == name)
    assert row["val_ppl"] == ptq.perplexity(alone, cfg, data.val, max_windows=16)
    assert row["delta_pct"] == pytest.approx(100 * (row["val_ppl"] / base - 1))
    assert max(r["delta_pct"] for r in rows) > 1.0  # 2 bits per tensor hurts somewhere


def test_bad_layers_are_refused():
    params, cfg, _ = tiny_trained()
    with pytest.raises(ValueError, match=r"layers \['blocks.0.mlp'\] are not linear layers"):
        ptq.quantize_weights(params, cfg, W8, ["blocks.0.mlp"])
    with pytest.raises(ValueError, match="divide the dimension"):
        ptq.quantize_weights(params, cfg, QuantSpec(4, "asymmetric", "group", group_size=48))
