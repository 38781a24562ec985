"""minicompress/deploy/recipe.py: a TOML recipe becomes the techniques' own configurations
(their defaults and the pipeline's), and every bad recipe is refused naming the stage and
the key, before any work."""

from __future__ import annotations

import json

import pytest

from minicompress.deploy.recipe import STAGES, load_recipe, parse_recipe, recipe_dict
from minicompress.distill.trainer import DistillConfig
from minicompress.nn.train import TrainConfig
from minicompress.prune.pipeline import PruneConfig
from minicompress.quant.tensor import QuantSpec

FULL = """
[distill]
n_layer = 2
init = "teacher"
temperature = 3.0
steps = 300
lr = 3e-3

[prune]
method = "neurons"
sparsity = 0.5
finetune_steps = 100

[quantize]
bits = 4
activations = "dynamic"

[finetune]
steps = 120
"""


def test_a_full_recipe_becomes_the_techniques_configs(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(FULL, encoding="utf-8")
    r = load_recipe(path)
    assert r.stages() == list(STAGES)
    assert r.distill.student == {"n_layer": 2, "init": "teacher", "n_embd": None}
    assert r.distill.student_spec(128).n_embd == 128
    assert r.distill.distill == DistillConfig(temperature=3.0)
    assert r.distill.train.steps == 300 and r.distill.train.lr == 3e-3
    assert r.distill.train.min_lr <= 3e-3  # a given lr below the default floor is respected
    assert r.prune == PruneConfig(method="neurons", sparsity=0.5, finetune_steps=100, control=False)
    assert r.quantize.spec == QuantSpec(4, "symmetric", "channel")
    assert r.quantize.activations == "dynamic" and r.quantize.embeddings
    assert r.finetune == TrainConfig(
        steps=120, lr=1e-3, min_lr=1e-4, warmup=20, eval_every=0, seed=1
    )
    json.dumps(recipe_dict(r))  # what the checkpoint's metadata records is JSON


def test_any_subset_in_order():
    r = parse_recipe({"quantize": {"bits": 8, "activations": "none"}})
    assert r.stages() == ["quantize"] and r.prune is None
    r = parse_recipe({"prune": {"method": "magnitude", "sparsity": 0.8}, "finetune": {"steps": 3}})
    assert r.stages() == ["prune", "finetune"]


@pytest.mark.parametrize(
    "tables, message",
    [
        ({}, "at least one of the stages"),
        ({"quantise": {"bits": 8}}, "unknown stage 'quantise'"),
        ({"quantize": {"bits": 8}, "prune": {"sparsity": 0.5}}, "in the order"),
        ({"prune": {"method": "magnitude", "sparsity": 1.5}}, r"\[prune\].*sparsity"),
        ({"prune": {"methd": "magnitude"}}, r"\[prune\]: unknown key 'methd'"),
        ({"quantize": {"bits": 9}}, r"\[quantize\].*bits"),
        ({"quantize": {"bits": 8, "activations": "static"}}, "activations must be one of"),
        ({"quantize": {"bits": 8, "embeddings": "yes"}}, "embeddings must be true or false"),
        ({"distill": {"steps": 10}}, "'n_layer'.*required"),
        ({"distill": {"n_layer": 0, "steps": 10}}, "n_layer must be an integer >= 1"),
        ({"distill": {"n_layer": 2, "steps": 10, "alpha": 2.0}}, r"\[distill\].*alpha"),
        ({"distill": {"n_layer": 2, "steps": 10, "init": "random"}}, "init must be one of"),
        ({"distill": {"n_layer": 2}}, "'steps' is required"),
        ({"finetune": {"steps": 10, "lr": -1.0}}, r"\[finetune\].*lr"),
        ({"finetune": {"epochs": 3}}, r"unknown key 'epochs'; allowed: .*steps"),
        ({"finetune": 3}, "must be a table"),
    ],
)
def test_bad_recipes_are_refused_naming_stage_and_key(tables, message):
    with pytest.raises(ValueError, match=message):
        parse_recipe(tables)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[prune\nmethod = 1", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_recipe(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_recipe(binary)
