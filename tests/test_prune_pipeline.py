"""minicompress/prune/pipeline.py: one pruning run per method on a tiny model (what the CLI
does), the regularizers through the training loop, and bad configurations."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import numerical_grad, rel_error

from minicompress.data import builtin_text, make_dataset
from minicompress.data.corpus import Batch
from minicompress.nn.model import TransformerConfig, init_params, layer_shapes
from minicompress.nn.train import TrainConfig, next_token_loss, train
from minicompress.prune import groups as G
from minicompress.prune.pipeline import PruneConfig, prunable_names, prune_model
from minicompress.prune.regularizers import (
    GroupLasso,
    L1Penalty,
    ProximalStep,
    RegularizedLoss,
)


@pytest.fixture(scope="module")
def tiny():
    data = make_dataset(builtin_text()[:20000], 16)
    cfg = TransformerConfig(
        vocab_size=data.tokenizer.vocab_size, block_size=16, n_layer=2, n_head=4, n_embd=16,
        mlp_ratio=2,
    )  # fmt: skip
    params = init_params(cfg, np.random.default_rng(0))
    train(params, cfg, data, TrainConfig(steps=30, batch_size=8, eval_every=0, warmup=5),
          progress=False)  # fmt: skip
    return params, cfg, data


def _run(tiny, loss=None, **kw):
    params, cfg, data = tiny
    before = {k: v.copy() for k, v in params.items()}
    kw = {"batch_size": 4, "eval_windows": 8, **kw}
    result = prune_model(params, cfg, data, PruneConfig(**kw), progress=False, loss=loss)
    assert all(np.array_equal(before[k], params[k]) for k in params)  # input untouched
    return result


@pytest.mark.parametrize(
    "kw",
    [
        dict(method="magnitude", sparsity=0.5, finetune_steps=4),
        dict(method="gradient", sparsity=0.5, scope="global", calib_batches=2),
        dict(method="taylor", sparsity=0.7, schedule="cubic", finetune_steps=6, calib_batches=2),
        dict(method="movement", sparsity=0.5, schedule="iterative", finetune_steps=6),
        dict(method="random", sparsity=0.3),
    ],
)
def test_unstructured_methods_reach_their_sparsity(tiny, kw):
    r = _run(tiny, **kw)
    names = prunable_names(r.cfg)
    n = sum(r.params[k].size for k in names)
    zeros = sum(int((r.params[k] == 0).sum()) for k in names)
    if kw.get("scope") == "global":  # one count over all the weights ...
        assert zeros == round(kw["sparsity"] * n)
    else:  # ... or one per tensor
        assert zeros == sum(round(kw["sparsity"] * r.params[k].size) for k in names)
    assert r.metrics["sparsity"] == pytest.approx(zeros / n)
    assert r.metrics["nonzero_params"] == sum(int(np.count_nonzero(a)) for a in r.params.values())
    if kw.get("finetune_steps"):
        assert "control_val_ppl" in r.metrics and "delta_vs_control" in r.metrics


def test_nm_pattern(tiny):
    r = _run(tiny, method="magnitude", nm="2:4")
    for k in prunable_names(r.cfg):
        runs = (r.params[k] != 0).reshape(-1, 4, r.params[k].shape[1])
        assert (runs.sum(axis=1) == 2).all()
    assert r.metrics["sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["heads", "neurons", "layers"])
def test_structured_methods_shrink_the_model(tiny, kind):
    _, cfg, _ = tiny
    r = _run(tiny, method=kind, sparsity=0.5, finetune_steps=3)
    shapes = layer_shapes(r.params, r.cfg)
    kept = r.metrics["kept"]  # original indices that remain, increasing
    assert all(k == sorted(set(k)) for k in kept)
    if kind == "heads":
        assert [s.n_head for s in shapes] == [2, 2] and [len(k) for k in kept] == [2, 2]
    elif kind == "neurons":
        assert [s.mlp_width for s in shapes] == [16, 16] and [len(k) for k in kept] == [16, 16]
    else:
        assert r.cfg.n_layer == 1 and len(kept) == 1 and len(kept[0]) == 1
    assert r.metrics["sparsity"] == pytest.approx(0.5)
    assert r.metrics["params"] < r.metrics["baseline_params"]


def test_group_lasso_removes_the_groups_it_zeroed(tiny):
    # a strong penalty at a high rate: some neurons die, and exactly those are removed
    r = _run(tiny, method="neurons", regularizer="group-lasso", lam=0.003, lr=1e-2,
             finetune_steps=9)  # fmt: skip
    widths = [s.mlp_width for s in layer_shapes(r.params, r.cfg)]
    assert min(widths) >= 1 and sum(widths) < 64, widths
    assert r.metrics["sparsity"] == pytest.approx(1 - sum(widths) / 64)
    assert r.metrics["events"][0][0] == 6  # pruned after 2/3 of the steps


def test_group_lasso_that_kills_a_whole_block_is_refused(tiny):
    with pytest.raises(ValueError, match="zeroed every head of block 0: lower lambda"):
        _run(tiny, method="heads", regularizer="group-lasso", lam=0.1, lr=1e-2,
             finetune_steps=9)  # fmt: skip


def test_proximal_l1_makes_exact_zeros_through_the_loop(tiny):
    params, cfg, data = tiny
    params = {k: v.copy() for k, v in params.items()}
    names = prunable_names(cfg)
    tc = TrainConfig(steps=5, batch_size=4, lr=1e-2, warmup=1, eval_every=0)
    penalty = L1Penalty(tuple(names), 1.0)
    zeros_before = sum(int((params[n] == 0).sum()) for n in names)
    loss = RegularizedLoss(next_token_loss, penalty, "proximal")
    train(params, cfg, data, tc, loss=loss, after_step=ProximalStep(penalty),
          progress=False)  # fmt: skip
    zeros_after = sum(int((params[n] == 0).sum()) for n in names)
    assert zeros_before == 0 and zeros_after > 0.3 * sum(params[n].size for n in names)


def test_regularized_loss_adds_the_penalty_and_its_gradient(tiny):
    params, cfg, data = tiny
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    penalty = GroupLasso(cfg, ("heads", "neurons"), 0.3)
    value, grads = penalty.value_and_grads(p64)
    expected = 0.0
    for kind in ("heads", "neurons"):
        for i in range(cfg.n_layer):
            rows = G.gather_groups(p64, G.structure_parts(p64, cfg, kind, i))
            expected += np.linalg.norm(rows, axis=1).sum()
    assert value == pytest.approx(0.3 * expected, rel=1e-12)
    for name in ("blocks.0.attn.qkv.w", "blocks.1.mlp.fc.b", "blocks.1.attn.proj.w"):
        x = p64[name]
        num = numerical_grad(
            lambda: penalty.value_and_grads(p64)[0], x, entries=np.arange(0, x.size, 7)
        )
        sel = np.zeros(x.size, bool)
        sel[::7] = True
        assert rel_error(grads[name].reshape(-1)[sel], num.reshape(-1)[sel]) < 1e-7, name

    b = Batch(data.train[None, :16], data.train[None, 1:17])
    base_loss, base_grads = next_token_loss(params, b, cfg)
    sub = RegularizedLoss(next_token_loss, L1Penalty(("blocks.0.mlp.fc.w",), 0.5), "subgradient")
    loss, g = sub(
        params,
        b,
        cfg,
        None.__class__ and __import__("minicompress.nn.linear", fromlist=["DENSE"]).DENSE,
    )
    w = params["blocks.0.mlp.fc.w"]
    assert loss == pytest.approx(base_loss + 0.5 * np.abs(w.astype(np.float64)).sum(), rel=1e-6)
    np.testing.assert_allclose(
        g["blocks.0.mlp.fc.w"], base_grads["blocks.0.mlp.fc.w"] + 0.5 * np.sign(w), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(method="pruneall", sparsity=0.5), "method must be one of"),
        (dict(method="magnitude", sparsity=1.2), r"sparsity must be a fraction in \[0, 1\]"),
        (dict(method="magnitude", sparsity=-0.2), r"sparsity must be a fraction in \[0, 1\]"),
        (dict(method="magnitude"), "sparsity is required"),
        (dict(method="magnitude", sparsity=0.3, nm="2:4"), "has sparsity 0.5"),
        (dict(method="heads", sparsity=0.5, nm="2:4"), "single weights"),
        (dict(method="magnitude", nm="2:4", schedule="cubic", finetune_steps=5), "oneshot"),
        (dict(method="magnitude", nm="3:2"), "1 <= N <= M"),
        (dict(method="heads", regularizer="l1", lam=1.0, finetune_steps=9), "goes with methods"),
        (
            dict(method="heads", regularizer="group-lasso", lam=-1.0, finetune_steps=9),
            "lambda must be >= 0",
        ),
        (dict(method="heads", regularizer="group-lasso", lam=1.0), "finetune_steps >= 3"),
        (dict(method="movement", sparsity=0.5), "finetune_steps >= 2"),
        (dict(method="magnitude", sparsity=0.5, schedule="cubic"), "finetune_steps >= 1"),
        (dict(method="heads", sparsity=0.5, criterion="l3"), "criterion must be one of"),
        (dict(method="heads", sparsity=0.5, scope="model"), "scope must be one of"),
        (
            dict(method="magnitude", sparsity=0.8, schedule="cubic", finetune_steps=9, prune_end=0),
            r"prune_end must be a fraction in \(0, 1\]; got 0",
        ),
        (
            dict(
                method="magnitude", sparsity=0.8, schedule="cubic", finetune_steps=9, prune_end=1.2
            ),
            "prune_end must be a fraction",
        ),  # fmt: skip
        (
            dict(
                method="magnitude", sparsity=0.8, schedule="cubic", finetune_steps=9, prune_events=0
            ),
            "prune_events must be an integer >= 1; got 0",
        ),  # fmt: skip
        (
            dict(method="magnitude", sparsity=0.8, finetune_steps=9, prune_end=0.5),
            "gradual schedule: use schedule 'cubic' or 'iterative', not 'oneshot'",
        ),
    ],
)
def test_bad_configs_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(**kw)


def test_prune_end_and_events_place_the_mask_updates(tiny):
    r = _run(tiny, method="magnitude", sparsity=0.8, scope="global", schedule="cubic",
             finetune_steps=12, prune_end=0.5, prune_events=3, control=False)  # fmt: skip
    # ramp of 6 steps, 3 events dt = 2 apart: s = 0.8 (1 - (1 - k/3)^3) = 0.563, 0.770, 0.8
    steps = [s for s, _ in r.metrics["events"]]
    assert steps == [2, 4, 6]
    want = [0.8 * (1 - (1 - k / 3) ** 3) for k in (1, 2, 3)]
    assert [v for _, v in r.metrics["events"]] == pytest.approx(want, abs=1e-3)


class CountingLoss:
    """next-token cross-entropy, counting its calls and the first token of each batch."""

    def __init__(self):
        self.calls = []

    def __call__(self, params, batch, cfg, linear):
        self.calls.append(int(batch.x[0, 0]))
        return next_token_loss(params, batch, cfg, linear)


def test_the_loss_hook_trains_the_pruned_model_and_the_control(tiny):
    plain = _run(tiny, method="magnitude", sparsity=0.5, finetune_steps=5)
    counting = CountingLoss()
    hooked = _run(tiny, method="magnitude", sparsity=0.5, finetune_steps=5, loss=counting)
    assert len(counting.calls) == 10  # 5 steps of the pruned model, then 5 of the control
    assert counting.calls[:5] == counting.calls[5:]  # the same batches, in the same order
    for key in ("val_ppl", "control_val_ppl"):  # cross-entropy by hook = the default loss
        assert hooked.metrics[key] == pytest.approx(plain.metrics[key], rel=1e-6)
    assert plain.metrics["loss"] is None and hooked.metrics["loss"] == {"hook": "CountingLoss"}


def test_a_loss_with_arrays_of_its_own_is_refused(tiny):
    counting = CountingLoss()
    counting.params = {"proj.w": np.zeros((2, 2), np.float32)}
    with pytest.raises(ValueError, match=r"trains arrays of its own \(proj.w\)"):
        _run(tiny, method="magnitude", sparsity=0.5, finetune_steps=2, loss=counting)
    assert counting.calls == []  # refused before any work


def test_self_distillation_fine_tunes_both_runs_on_the_kd_loss(tiny):
    from minicompress.distill.trainer import DistillConfig, self_distill_loss

    params, cfg, _ = tiny
    plain = _run(tiny, method="magnitude", sparsity=0.7, finetune_steps=6)
    kd = self_distill_loss(params, cfg, DistillConfig(alpha=0.5, temperature=2.0))
    r = _run(tiny, method="magnitude", sparsity=0.7, finetune_steps=6, loss=kd)
    assert kd.soft_labels.misses == 6 and kd.soft_labels.hits == 6  # control: cached labels
    assert r.metrics["loss"]["hook"] == "DistillLoss" and r.metrics["loss"]["alpha"] == 0.5
    assert r.metrics["val_ppl"] != pytest.approx(plain.metrics["val_ppl"], rel=1e-6)
    assert r.metrics["control_val_ppl"] != pytest.approx(plain.metrics["control_val_ppl"], rel=1e-6)
    assert r.metrics["delta_vs_control"] == pytest.approx(
        r.metrics["val_ppl"] / r.metrics["control_val_ppl"] - 1
    )


def test_pruning_every_head_of_a_block_is_refused_in_a_run(tiny):
    with pytest.raises(ValueError, match="every head of block"):
        _run(tiny, method="heads", sparsity=1.0)


def test_run_prune_writes_checkpoint_and_json(tiny, tmp_path):
    from minicompress.fileio import load_json
    from minicompress.nn.checkpoint import load_checkpoint, save_checkpoint
    from minicompress.prune.pipeline import run_prune

    params, cfg, data = tiny
    src = save_checkpoint(tmp_path / "model", params, cfg, data.tokenizer.chars)
    text = builtin_text()[:20000]
    pc = PruneConfig("heads", 0.25, eval_windows=4)
    m = run_prune(src, pc, tmp_path / "out", tmp_path / "m.json", text=text, progress=False)
    saved = load_json(tmp_path / "m.json")
    for key in ("val_ppl", "baseline_val_ppl", "sparsity", "nonzero_params", "file_bytes",
                "baseline_file_bytes"):  # fmt: skip
        assert key in saved and saved[key] == m[key]
    assert 0 < saved["file_bytes"] < saved["baseline_file_bytes"]  # heads really removed
    pruned, pcfg, _, _ = load_checkpoint(tmp_path / "out")
    assert [s.n_head for s in layer_shapes(pruned, pcfg)] == [3, 3]

    before = (tmp_path / "out" / "model.mc").read_bytes()
    with pytest.raises(ValueError, match="already holds a checkpoint; pass --overwrite"):
        run_prune(src, pc, tmp_path / "out", text=text, progress=False)
    with pytest.raises(ValueError, match="is the input model"):
        run_prune(src, pc, src, text=text, overwrite=True, progress=False)
    # a run that fails (every head of a block) writes nothing and keeps what was there
    with pytest.raises(ValueError, match="every head of block"):
        run_prune(src, PruneConfig("heads", 1.0), tmp_path / "out", text=text, overwrite=True,
                  progress=False)  # fmt: skip
    assert (tmp_path / "out" / "model.mc").read_bytes() == before
    with pytest.raises(ValueError, match="does not exist"):
        run_prune(tmp_path / "nothing", pc, tmp_path / "o2", text=text, progress=False)
    assert not (tmp_path / "o2").exists()
