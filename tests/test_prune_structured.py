"""minicompress/prune/structured.py and groups.py: the physically shrunk model computes what
the masked model computes; the group geometry by hand; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.nn.checkpoint import load_checkpoint, save_checkpoint
from minicompress.nn.model import (
    TransformerConfig,
    count_params,
    forward,
    init_params,
    layer_shapes,
)
from minicompress.prune import groups as G
from minicompress.prune.masks import apply_masks
from minicompress.prune.scores import structure_scores
from minicompress.prune.structured import (
    prune_structures,
    remove_structures,
    select_structures,
    structure_masks,
)


def _model(rng, **kw):
    base = dict(vocab_size=13, block_size=8, n_layer=3, n_head=4, n_embd=16, mlp_ratio=2)
    cfg = TransformerConfig(**{**base, **kw})
    params = init_params(cfg, rng)
    # trained-looking weights: every entry, biases included, away from zero
    params = {
        k: (v + 0.2 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in params.items()
    }
    return cfg, params


@pytest.mark.parametrize("kind", ["heads", "neurons", "layers"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_shrunk_model_equals_masked_model(kind, scope, rng):
    cfg, params = _model(rng)
    idx = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    sparsity = 0.5 if kind != "layers" else 1 / 3
    new, new_cfg, keep = prune_structures(params, cfg, kind, sparsity, scope=scope)
    masked = apply_masks(params, structure_masks(params, cfg, kind, keep))
    ours, _ = forward(new, idx, new_cfg)
    theirs, _ = forward(masked, idx, cfg)
    assert_close(ours, theirs, rtol=1e-5, atol=1e-5, name=f"{kind} shrunk vs masked")
    full, _ = forward(params, idx, cfg)
    assert np.abs(full - theirs).max() > 1e-3  # something was really removed
    assert count_params(new) < count_params(params)


def test_removed_heads_and_neurons_shrink_every_matrix_and_bias(rng):
    cfg, params = _model(rng)
    keep_h = [np.array([True, False, True, False]), np.array([False, False, True, True])]
    keep_h.append(np.array([True, True, True, False]))
    new, new_cfg = remove_structures(params, cfg, "heads", keep_h)
    assert new_cfg == cfg
    assert [s.n_head for s in layer_shapes(new, cfg)] == [2, 2, 3]
    d = cfg.head_dim
    assert new["blocks.0.attn.qkv.w"].shape == (16, 3 * 2 * d)
    assert new["blocks.0.attn.qkv.b"].shape == (3 * 2 * d,)
    assert new["blocks.0.attn.proj.w"].shape == (2 * d, 16)
    # block 0 keeps heads 0 and 2: its k columns are the k columns of those heads
    c = cfg.n_embd
    k_cols = np.r_[c + 0 * d : c + 1 * d, c + 2 * d : c + 3 * d]
    assert np.array_equal(
        new["blocks.0.attn.qkv.w"][:, 2 * d : 4 * d], params["blocks.0.attn.qkv.w"][:, k_cols]
    )
    assert np.array_equal(
        new["blocks.0.attn.proj.w"][d:], params["blocks.0.attn.proj.w"][2 * d : 3 * d]
    )

    keep_n = [np.arange(32) % 2 == 0, np.arange(32) < 5, np.arange(32) == 7]
    new, _ = remove_structures(params, cfg, "neurons", keep_n)
    assert [s.mlp_width for s in layer_shapes(new, cfg)] == [16, 5, 1]
    assert np.array_equal(new["blocks.2.mlp.fc.w"][:, 0], params["blocks.2.mlp.fc.w"][:, 7])
    assert new["blocks.2.mlp.fc.b"].tolist() == [params["blocks.2.mlp.fc.b"][7]]
    assert np.array_equal(new["blocks.2.mlp.proj.w"][0], params["blocks.2.mlp.proj.w"][7])
    assert params["blocks.2.mlp.fc.w"].shape == (16, 32)  # the input is not modified


def test_removed_layers_are_renumbered(rng, tmp_path):
    cfg, params = _model(rng)
    new, new_cfg = remove_structures(params, cfg, "layers", [np.array([True, False, True])])
    assert new_cfg.n_layer == 2
    assert np.array_equal(new["blocks.1.mlp.fc.w"], params["blocks.2.mlp.fc.w"])
    assert not any(k.startswith("blocks.2.") for k in new)
    # and the smaller model is a valid checkpoint
    save_checkpoint(tmp_path / "m", new, new_cfg, [chr(97 + i) for i in range(13)])
    loaded, loaded_cfg, _, _ = load_checkpoint(tmp_path / "m")
    assert loaded_cfg.n_layer == 2 and all(np.array_equal(loaded[k], new[k]) for k in new)


def test_shrunk_heads_survive_a_checkpoint_round_trip(rng, tmp_path):
    cfg, params = _model(rng)
    new, new_cfg, _ = prune_structures(params, cfg, "heads", 0.25)
    save_checkpoint(tmp_path / "m", new, new_cfg, [chr(97 + i) for i in range(13)])
    loaded, _, _, _ = load_checkpoint(tmp_path / "m")
    assert [s.n_head for s in layer_shapes(loaded, cfg)] == [3, 3, 3]


def test_group_scores_by_hand():
    """One block, 2 heads of D = 1, C = 2: head h's entries are its q, k, v columns (rows of
    qkv.w [2, 6] at columns h, 2 + h, 4 + h), their biases and row h of proj.w [2, 2]."""
    cfg = TransformerConfig(vocab_size=3, block_size=2, n_layer=1, n_head=2, n_embd=2, mlp_ratio=1)
    params = init_params(cfg, np.random.default_rng(0))
    params["blocks.0.attn.qkv.w"] = np.array(
        [[1, 0, 1, 0, 1, 0], [1, 2, 1, 0, 1, 0]], dtype=np.float32
    )  # head 0 columns 0, 2, 4: entries 1,1,1,1,1,1; head 1 columns 1, 3, 5: 0,2,0,0,0,0
    params["blocks.0.attn.qkv.b"] = np.array([0, 0, 0, 0, 3, 0], dtype=np.float32)
    params["blocks.0.attn.proj.w"] = np.array([[0, 0], [3, 4]], dtype=np.float32)
    l1 = structure_scores(params, cfg, "heads", "l1")[0]
    l2 = structure_scores(params, cfg, "heads", "l2")[0]
    mean = structure_scores(params, cfg, "heads", "mean_abs")[0]
    assert l1.tolist() == [9.0, 9.0]  # head 0: six 1s + bias 3; head 1: 2 + 3 + 4
    assert l2.tolist() == pytest.approx([np.sqrt(6 + 9), np.sqrt(4 + 9 + 16)])
    assert mean.tolist() == pytest.approx([9 / 11, 9 / 11])  # 6 + 3 + 2 entries per head
    rows = G.gather_groups(params, G.structure_parts(params, cfg, "heads", 0))
    assert rows.shape == (2, 11)
    assert np.array_equal(
        G.scatter_groups(params, G.structure_parts(params, cfg, "heads", 0), rows)[
            "blocks.0.attn.qkv.w"
        ],
        params["blocks.0.attn.qkv.w"],
    )


def test_global_selection_can_be_uneven(rng):
    scores = [np.array([5.0, 6.0, 7.0, 8.0]), np.array([0.1, 0.2, 9.0, 9.5])]
    keep = select_structures(scores, 0.25, "heads", "global")
    assert [k.tolist() for k in keep] == [[True] * 4, [False, False, True, True]]
    keep = select_structures(scores, 0.25, "heads", "local")
    assert [k.sum() for k in keep] == [3, 3]


@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_pruning_every_group_of_a_block_is_refused(kind, rng):
    cfg, params = _model(rng)
    scores = structure_scores(params, cfg, kind, "l2")
    with pytest.raises(ValueError, match=f"every {kind[:-1]} of block 0: remove the layer"):
        select_structures(scores, 1.0, kind, "local")
    scores[1] = scores[1] * 0  # global: block 1 scores lowest of all
    with pytest.raises(ValueError, match=f"every {kind[:-1]} of block 1"):
        select_structures(scores, 0.34, kind, "global")
    keep = [np.ones(len(s), bool) for s in scores]
    keep[2][:] = False
    with pytest.raises(ValueError, match=f"keeps no {kind[:-1]}"):
        remove_structures(params, cfg, kind, keep)


def test_bad_structured_input(rng):
    cfg, params = _model(rng)
    with pytest.raises(ValueError, match="kind must be one of heads, neurons, layers"):
        prune_structures(params, cfg, "channels", 0.5)
    with pytest.raises(ValueError, match="sparsity"):
        prune_structures(params, cfg, "heads", 1.5)
    with pytest.raises(ValueError, match="keep the model|keep at least one layer"):
        prune_structures(params, cfg, "layers", 1.0)
    with pytest.raises(ValueError, match="keep\\[0\\] must be bool \\[4\\]"):
        remove_structures(params, cfg, "heads", [np.ones(3, bool)] * 3)
    with pytest.raises(ValueError, match="scope must be one of"):
        select_structures([np.ones(4)], 0.5, "heads", "everywhere")
    broken = dict(params)
    del broken["blocks.1.attn.qkv.b"]
    with pytest.raises(ValueError, match="blocks.1.attn.qkv.b"):
        prune_structures(broken, cfg, "heads", 0.5)
