"""minicompress/deploy/pipeline.py: a recipe's stages on a tiny trained model — each stage
measured, pruned weights held at zero through the fine-tune, the grid kept, the storage
chosen per tensor — the saved file run by the runtime equal to the simulation of what was
stored, and ``compress``'s files: checked before the work, written only at the end,
nothing replaced."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gradcheck import assert_close
from quant_models import tiny_trained

from minicompress.deploy import dense_params, load_runtime, pipeline, save_compressed
from minicompress.deploy.recipe import parse_recipe
from minicompress.nn.backend import NUMPY_OPS
from minicompress.nn.checkpoint import save_checkpoint
from minicompress.nn.model import forward
from minicompress.prune.pipeline import prunable_names
from minicompress.prune.sparse import SparseWeight
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.tensor import QuantizedTensor

ALL = {
    "distill": {"n_layer": 1, "steps": 6, "lr": 3e-3},
    "prune": {"method": "magnitude", "sparsity": 0.85, "finetune_steps": 4},
    "quantize": {"bits": 8},
    "finetune": {"steps": 4},
}


@pytest.fixture(scope="module")
def tiny():
    return tiny_trained()


def _run(tiny, tables):
    params, cfg, data = tiny
    return pipeline.run_recipe(
        params, cfg, data.tokenizer.chars, data, parse_recipe(tables), progress=False, log=None
    )


def test_every_stage_runs_is_measured_and_stored_as_it_should(tiny):
    params, cfg, _ = tiny
    before = {k: v.copy() for k, v in params.items()}
    res = _run(tiny, ALL)
    assert all(np.array_equal(params[k], before[k]) for k in params)  # input untouched
    m = res.metrics
    assert [s["stage"] for s in m["stages"]] == ["distill", "prune", "quantize", "finetune"]
    assert res.cfg.n_layer == 1 and m["stages"][0]["params"] < m["baseline_params"]
    assert all(np.isfinite(s["val_ppl"]) and s["seconds"] >= 0 for s in m["stages"])
    # the pruned weights stayed exactly zero through the QAT fine-tune
    names = prunable_names(res.cfg)
    assert m["stages"][1]["sparsity"] == pytest.approx(m["stages"][3]["sparsity"], abs=0)
    assert all(not res.model.params[n][~res.model.masks[n]].any() for n in names)
    # 85% sparse and 8-bit symmetric per channel: int8 CSR; head and embeddings: int8 codes
    assert all(isinstance(res.stored[n], SparseWeight) for n in names)
    assert all(res.stored[n].scale is not None for n in names)
    assert isinstance(res.stored["head.w"], QuantizedTensor)
    assert isinstance(res.stored["wte"], QuantizedTensor)
    # float32: per block 2 LayerNorms (g, b) and 4 biases, and the final LayerNorm
    assert m["storage"] == {"fp32": 8 + 2, "int8": 3, "csr": 4}  # csr of int8 values


def test_saved_model_on_the_runtime_equals_the_simulation_of_what_was_stored(tiny, tmp_path):
    """Layers stored as int8 codes run on the int8 kernels with per-token activations; CSR
    int8 layers run the CSR kernel on float activations: the simulation does the same per
    layer (FakeQuantLinear's dynamic activations on the int8-coded layers only)."""
    res = _run(tiny, ALL)
    _, _, data = tiny
    meta = pipeline.quant_meta(res.model)
    save_compressed(tmp_path / "m", res.stored, res.cfg, data.tokenizer.chars, meta)
    rt, _, _ = load_runtime(tmp_path / "m")
    int8_layers = [
        k[:-2] for k, v in res.stored.items() if k.endswith(".w") and isinstance(v, QuantizedTensor)
    ]
    idx = np.asarray(data.val[: 2 * 32]).reshape(2, 32)
    sim, _ = forward(
        dense_params(res.stored), idx, res.cfg,
        FakeQuantLinear(None, "dynamic", layers=int8_layers), op_impl=NUMPY_OPS,
    )  # fmt: skip
    assert_close(rt.forward(idx), sim, rtol=0, atol=2e-4 * np.abs(sim).max(), name="logits")


def test_structured_pruning_then_weight_only_quantization(tiny):
    res = _run(
        tiny,
        {
            "prune": {"method": "heads", "sparsity": 0.5},
            "quantize": {"bits": 4, "granularity": "group", "group_size": 8, "activations": "none"},
        },
    )
    assert [s.n_head for s in pipeline._shapes(res.model)] == [1, 1]
    assert res.stored["blocks.0.attn.qkv.w"].q.shape == (32, 3 * 16)  # one head of 16 left
    assert res.stored["blocks.0.attn.qkv.w"].spec.bits == 4
    record = pipeline.quant_meta(res.model)["quantization"]
    assert record["activations"] == "none" and record["weights"]["bits"] == 4
    assert record["weights"]["granularity"] == "group" and record["weights"]["group_size"] == 8


def test_fine_tune_alone_trains_the_float_model(tiny):
    params, _, _ = tiny
    res = _run(tiny, {"finetune": {"steps": 3}})
    assert res.metrics["storage"] == {"fp32": len(params)}
    assert any(not np.array_equal(res.model.params[k], params[k]) for k in params)


# ----------------------------------------------------------------------------------------
# compress: the files
# ----------------------------------------------------------------------------------------


def _teacher(tiny, tmp_path):
    params, cfg, data = tiny
    save_checkpoint(tmp_path / "teacher", params, cfg, data.tokenizer.chars)
    return tmp_path / "teacher", data


def test_compress_writes_the_checkpoint_and_the_json(tiny, tmp_path):
    teacher, data = _teacher(tiny, tmp_path)
    text = data.tokenizer.decode(np.concatenate([data.train, data.val]))
    m = pipeline.compress(
        teacher, parse_recipe({"quantize": {"bits": 8}}), tmp_path / "out",
        tmp_path / "m.json", text=text, progress=False, log=None,
    )  # fmt: skip
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["file_bytes"] == (tmp_path / "out" / "model.mc").stat().st_size
    # 8-bit codes of a 32k-parameter model: under 4x, as the header and scales count too
    assert 2.5 < saved["compression_ratio"] == m["compression_ratio"] < 4
    assert saved["stages"][0]["stage"] == "quantize"


def test_compress_refuses_existing_outputs_before_any_work(tiny, tmp_path, monkeypatch):
    teacher, data = _teacher(tiny, tmp_path)
    (tmp_path / "taken.json").write_text("{}")
    monkeypatch.setattr(pipeline, "run_recipe", lambda *a, **k: pytest.fail("work started"))
    recipe = parse_recipe({"finetune": {"steps": 1}})
    with pytest.raises(ValueError, match="--json .* already exists"):
        pipeline.compress(teacher, recipe, tmp_path / "new", tmp_path / "taken.json", log=None)
    with pytest.raises(ValueError, match="--out .* already exists"):
        pipeline.compress(teacher, recipe, teacher, log=None)
    assert (tmp_path / "taken.json").read_text() == "{}"
    assert not (tmp_path / "new").exists()


def test_a_failed_stage_writes_nothing(tiny, tmp_path, monkeypatch):
    teacher, data = _teacher(tiny, tmp_path)

    def broken(*args, **kwargs):
        raise ValueError("pruning failed")

    monkeypatch.setattr(pipeline, "prune_model", broken)
    recipe = parse_recipe({"prune": {"method": "magnitude", "sparsity": 0.5}})
    text = data.tokenizer.decode(np.concatenate([data.train, data.val]))
    with pytest.raises(ValueError, match="pruning failed"):
        pipeline.compress(
            teacher, recipe, tmp_path / "out", tmp_path / "m.json", text=text, log=None
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()


def test_compress_refuses_foreign_and_compressed_models(tiny, tmp_path):
    foreign = tmp_path / "foreign.mc"
    foreign.write_bytes(b"PK\x03\x04 not a minicompress checkpoint")
    recipe = parse_recipe({"quantize": {"bits": 8}})
    with pytest.raises(ValueError, match="foreign.mc"):
        pipeline.compress(foreign, recipe, tmp_path / "a", log=None)
    res = _run(tiny, {"quantize": {"bits": 8}})
    _, cfg, data = tiny
    save_compressed(tmp_path / "q", res.stored, cfg, data.tokenizer.chars)
    with pytest.raises(ValueError, match="already compressed"):
        pipeline.compress(tmp_path / "q", recipe, tmp_path / "b", log=None)
