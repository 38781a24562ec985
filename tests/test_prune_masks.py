"""minicompress/prune/masks.py: masks against torch.nn.utils.prune (live and golden files),
exact counts, ties, N:M, and masks held through AdamW steps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from make_golden_prune import BUILDERS, LN_CASES, load_golden

from minicompress.nn.optim import AdamW
from minicompress.prune.masks import (
    HoldMasks,
    apply_masks,
    channel_mask,
    check_sparsity,
    expand_channel_mask,
    global_masks,
    local_masks,
    n_to_prune,
    nm_mask,
    parse_nm,
    smallest_mask,
    sparsity_of,
)
from minicompress.prune.scores import magnitude_scores, random_scores


def _show(ours: np.ndarray, theirs: np.ndarray) -> str:
    return f"\nours (kept=1):\n{ours.astype(int)}\ntheirs:\n{theirs.astype(int)}"


# ---------------------------------------------------------------- against torch.nn.utils.prune


def _check_l1_unstructured(case):
    for i, amount in enumerate(case["amounts"]):
        for w, key in ((case["w"], "mask"), (case["w_small"], "mask_small")):
            ours = smallest_mask(magnitude_scores(w), float(amount))
            assert np.array_equal(ours, case[f"{key}_{i}"]), f"amount {amount}" + _show(
                ours, case[f"{key}_{i}"]
            )


def _check_ln_structured(case):
    for order, dim in LN_CASES:
        axis = 1 - dim  # torch's weight is our w.T
        ours = channel_mask(case["w"], float(case["amount"]), axis=axis, criterion=f"l{order}")
        theirs = case[f"mask_n{order}_dim{dim}"]
        assert np.array_equal(ours, theirs), f"n={order}, dim={dim}" + _show(ours, theirs)


def _check_random_structured(case, rng):
    """Random channels differ between generators: compare what is pruned, not which."""
    w = case["w"]
    for dim in (0, 1):
        axis = 1 - dim
        theirs = case[f"mask_dim{dim}"]
        keep = np.asarray(
            ~(np.moveaxis(~theirs, axis, 0).reshape(w.shape[axis], -1).all(axis=1))
        )  # channels torch kept
        ours_keep = smallest_mask(random_scores((w.shape[axis],), rng), float(case["amount"]))
        ours = expand_channel_mask(ours_keep, w.shape, axis)
        # the same number of whole channels pruned, every entry of a channel alike
        assert ours_keep.sum() == keep.sum(), f"dim={dim}: kept {ours_keep.sum()} vs {keep.sum()}"
        assert np.array_equal(theirs, expand_channel_mask(keep, w.shape, axis))
        assert (~ours).sum() == (~theirs).sum()


def _check_global_unstructured(case):
    ws = {f"w{i}": case[f"w{i}"] for i in range(3)}
    ours = global_masks({n: magnitude_scores(w) for n, w in ws.items()}, float(case["amount"]))
    for i in range(3):
        assert np.array_equal(ours[f"w{i}"], case[f"mask{i}"]), f"layer {i}" + _show(
            ours[f"w{i}"], case[f"mask{i}"]
        )


@pytest.mark.parametrize("name", BUILDERS)
def test_masks_match_torch_golden(name, rng):
    case = load_golden(name)
    if name == "prune_l1_unstructured":
        _check_l1_unstructured(case)
    elif name == "prune_ln_structured":
        _check_ln_structured(case)
    elif name == "prune_random_structured":
        _check_random_structured(case, rng)
    else:
        _check_global_unstructured(case)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", BUILDERS)
def test_masks_match_torch_live(name, seed, torch):
    case = BUILDERS[name](torch, np.random.default_rng([7, seed]))
    if name == "prune_l1_unstructured":
        _check_l1_unstructured(case)
    elif name == "prune_ln_structured":
        _check_ln_structured(case)
    elif name == "prune_random_structured":
        _check_random_structured(case, np.random.default_rng(seed))
    else:
        _check_global_unstructured(case)


def test_golden_masks_are_not_trivial():
    """The golden cases exercise real choices: partial masks, the global one uneven."""
    case = load_golden("prune_global_unstructured")
    fractions = [1 - case[f"mask{i}"].mean() for i in range(3)]
    assert fractions[1] > fractions[0] > fractions[2], fractions  # scales 0.3 < 1 < 2


# ---------------------------------------------------------------------------- counts and ties


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 200),
    sparsity=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    ties=st.booleans(),
)
def test_exactly_round_s_n_pruned_and_smallest_first(n, sparsity, seed, ties):
    r = np.random.default_rng(seed)
    scores = r.integers(0, 4, n).astype(np.float32) if ties else r.standard_normal(n)
    keep = smallest_mask(scores, sparsity)
    k = round(sparsity * n)
    assert (~keep).sum() == k
    if 0 < k < n:
        assert scores[~keep].max() <= scores[keep].min()
    if ties and 0 < k < n:  # among equal scores, the lower index goes first
        t = scores[~keep].max()
        pruned_t = np.flatnonzero((scores == t) & ~keep)
        kept_t = np.flatnonzero((scores == t) & keep)
        if kept_t.size:
            assert pruned_t.max() < kept_t.min()


def test_n_to_prune_rounds_half_to_even():
    assert [n_to_prune(s, 10) for s in (0.25, 0.35, 0.05, 0.15)] == [2, 4, 0, 2]
    assert n_to_prune(1.0, 7) == 7 and n_to_prune(0.0, 7) == 0


def test_ties_are_deterministic():
    scores = np.zeros((3, 4))
    keep = smallest_mask(scores, 0.5)
    assert keep.reshape(-1).tolist() == [False] * 6 + [True] * 6


def test_masks_grow_monotonically_from_a_previous_round(rng):
    w = rng.standard_normal((8, 8))
    first = smallest_mask(np.abs(w), 0.25)
    # new scores that would rank the pruned entries high: they stay pruned anyway
    scores = np.where(first, np.abs(w), 10.0)
    second = smallest_mask(scores, 0.5, keep=first)
    assert not (second & ~first).any()
    assert (~second).sum() == 32
    with pytest.raises(ValueError, match="cannot grow back"):
        smallest_mask(np.abs(w), 0.1, keep=second)


def test_global_masks_count_and_threshold(rng):
    scores = {"a": rng.random((5, 7)), "b": rng.random(11) * 0.5}
    masks = global_masks(scores, 0.3)
    assert sum((~m).sum() for m in masks.values()) == round(0.3 * 46)
    pruned = np.concatenate([scores[n][~masks[n]] for n in scores])
    kept = np.concatenate([scores[n][masks[n]] for n in scores])
    assert pruned.max() < kept.min()
    assert sparsity_of(masks) == pytest.approx(round(0.3 * 46) / 46)


def test_local_masks_same_sparsity_per_tensor(rng):
    scores = {"a": rng.random((10, 10)), "b": rng.random((4, 5)) * 100}
    masks = local_masks(scores, 0.5)
    assert (~masks["a"]).sum() == 50 and (~masks["b"]).sum() == 10


def test_channel_mask_by_hand():
    # columns with L1 norms 3, 10, 1, 6 and L2 norms 3, sqrt(50)=7.07, 1, sqrt(20)=4.47
    w = np.array([[3.0, 5.0, 1.0, 2.0], [0.0, 5.0, 0.0, 4.0]])
    keep_l1 = channel_mask(w, 0.5, axis=1, criterion="l1")
    assert keep_l1[0].tolist() == [False, True, False, True]
    w2 = np.array([[3.0, 1.0, 0.5], [0.0, 1.0, 0.5], [0.0, 1.0, 0.5], [0.0, 1.0, 0.5]])
    # column L1: 3, 4, 2; L2: 3, 2, 1; mean_abs is L1 / 4
    assert channel_mask(w2, 1 / 3, axis=1, criterion="l1")[0].tolist() == [True, True, False]
    assert channel_mask(w2, 2 / 3, axis=1, criterion="l2")[0].tolist() == [True, False, False]
    assert channel_mask(w2, 2 / 3, axis=1, criterion="l1")[0].tolist() == [False, True, False]


# ---------------------------------------------------------------------------------------- N:M


def test_nm_mask_by_hand():
    s = np.array([[0.1, 0.9, 0.5, 0.2], [4.0, 3.0, 2.0, 1.0]]).T  # [K=4, N=2]
    keep = nm_mask(s, 2, 4)
    assert keep[:, 0].tolist() == [False, True, True, False]
    assert keep[:, 1].tolist() == [True, True, False, False]


@settings(max_examples=30, deadline=None)
@given(
    k_runs=st.integers(1, 5),
    n_out=st.integers(1, 6),
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_nm_mask_properties(k_runs, n_out, nm, seed):
    n, m = nm
    s = np.random.default_rng(seed).standard_normal((k_runs * m, n_out))
    keep = nm_mask(s, n, m)
    runs = keep.reshape(k_runs, m, n_out)
    assert (runs.sum(axis=1) == n).all()  # exactly N of every M kept
    sr = s.reshape(k_runs, m, n_out)
    kept_min = np.where(runs, sr, np.inf).min(axis=1)
    pruned_max = np.where(~runs, sr, -np.inf).max(axis=1)
    assert (pruned_max <= kept_min).all()
    assert sparsity_of({"w": keep}) == pytest.approx(1 - n / m)
    # along axis 1 the same as the transposed problem along axis 0
    assert np.array_equal(nm_mask(s.T, n, m, axis=1), keep.T)


def test_nm_bad_input():
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(np.ones((6, 3)), 2, 4)
    with pytest.raises(ValueError, match="1 <= N <= M"):
        nm_mask(np.ones((8, 3)), 5, 4)
    with pytest.raises(ValueError, match="2:4"):
        parse_nm("2-4")
    with pytest.raises(ValueError, match="1 <= N <= M"):
        parse_nm("0:4")
    assert parse_nm("2:4") == (2, 4)


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
def test_sparsity_outside_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a fraction in \[0, 1\]"):
        smallest_mask(np.ones(4), bad)
    with pytest.raises(ValueError, match="sparsity"):
        global_masks({"w": np.ones(4)}, bad)


@pytest.mark.parametrize("bad", ["0.5", None, True])
def test_sparsity_of_wrong_type_is_refused(bad):
    with pytest.raises(TypeError, match="sparsity"):
        check_sparsity(bad)


def test_non_finite_scores_and_bad_masks_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        smallest_mask(np.array([1.0, np.nan]), 0.5)
    with pytest.raises(ValueError, match="keep must be a bool mask"):
        smallest_mask(np.ones(4), 0.5, keep=np.ones(3, bool))
    with pytest.raises(ValueError, match="does not have"):
        apply_masks({"a": np.ones(2)}, {"b": np.ones(2, bool)})


# ---------------------------------------------------------------------- masks through AdamW


def test_apply_masks_does_not_modify_its_input(rng):
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32)}
    before = params["w"].copy()
    keep = smallest_mask(np.abs(params["w"]), 0.5)
    out = apply_masks(params, {"w": keep})
    assert np.array_equal(params["w"], before)
    assert (out["w"][~keep] == 0).all() and np.array_equal(out["w"][keep], before[keep])
    assert out["w"].dtype == np.float32


def test_pruned_weights_stay_exactly_zero_through_adamw_steps(rng):
    params = {
        "w": rng.standard_normal((6, 5)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float32),
    }
    masks = {"w": smallest_mask(np.abs(params["w"]), 0.6)}
    params = apply_masks(params, masks)
    params = {k: v.copy() for k, v in params.items()}
    opt, hook = AdamW(lr=1e-2, weight_decay=0.1), HoldMasks(masks)
    for step in range(1, 8):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        opt.step(params, grads)
        assert (params["w"][~masks["w"]] != 0).any()  # the step itself moved them ...
        hook(step, params, grads, opt)
        assert (params["w"][~masks["w"]] == 0).all()  # ... the hook puts them back exactly
        assert (opt.m["w"][~masks["w"]] == 0).all() and (opt.v["w"][~masks["w"]] == 0).all()
        assert (grads["w"][~masks["w"]] == 0).all()
        assert (params["w"][masks["w"]] != 0).all()  # kept weights still train
    assert (opt.m["b"] != 0).all()  # unmasked parameters untouched
