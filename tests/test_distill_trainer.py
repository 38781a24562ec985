"""minicompress/distill/trainer.py and student.py: the whole distillation loss (logits,
hidden states through the projection, attention maps) gradient-checked through a student
model in float64; the loss driving the one training loop; the frozen teacher; the soft-label
cache; the student's initialisation from the teacher; refused input."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from gradcheck import assert_grads_ok, check_grads

from minicompress.data import Batch, make_dataset
from minicompress.distill import student as st
from minicompress.distill.trainer import DistillConfig, DistillLoss, SoftLabelCache
from minicompress.nn.checkpoint import load_checkpoint
from minicompress.nn.gradcheck import random_params64
from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, forward, init_params
from minicompress.nn.train import TrainConfig, next_token_loss, train

V = 11
TEACHER = TransformerConfig(vocab_size=V, block_size=6, n_layer=3, n_head=2, n_embd=8, mlp_ratio=2)


def tiny_pair(rng, student_heads=1, **teacher_kw):
    t_cfg = dataclasses.replace(TEACHER, **teacher_kw)
    s_cfg = st.student_config(t_cfg, n_layer=2, n_embd=4, n_head=student_heads)
    return random_params64(t_cfg, rng), t_cfg, random_params64(s_cfg, rng), s_cfg


def to_float64(loss: DistillLoss) -> None:
    for k in loss.params:  # the projections start float32, as the loop trains them
        loss.params[k] = loss.params[k].astype(np.float64)


# ----------------------------------------------------------------------------------------
# the whole loss through the student, float64 finite differences
# ----------------------------------------------------------------------------------------

CASES = {
    # decoder: alpha mix, hidden states through the projection, attention heads averaged
    "causal-kl-averaged": dict(
        teacher=dict(), heads=1, pad=False, dc=dict(alpha=0.3, loss="kl", attn_heads="auto")
    ),
    "causal-mse-matched": dict(
        teacher=dict(), heads=2, pad=False, dc=dict(alpha=0.6, loss="mse", attn_heads="matched")
    ),
    "causal-mse-logits": dict(teacher=dict(), heads=2, pad=False, dc=dict(loss="mse-logits")),
    # encoder (post-LN, bidirectional) on padded, unlabelled text: alpha = 0
    "post-ln-padded": dict(
        teacher=dict(norm="post", gelu="none", causal=False),
        heads=2,
        pad=True,
        dc=dict(alpha=0.0, loss="kl"),
    ),
}
PAD = np.array([[False, False, False, False, True], [False, False, False, True, True]])


@pytest.mark.parametrize("case", list(CASES))
def test_whole_loss_gradcheck_through_the_student(rng, case):
    spec = CASES[case]
    t_params, t_cfg, s_params, s_cfg = tiny_pair(rng, spec["heads"], **spec["teacher"])
    dc = DistillConfig(temperature=2.0, hidden_weight=0.7, attn_weight=0.5, **spec["dc"])
    loss = DistillLoss(t_params, t_cfg, s_params, s_cfg, dc, rng=rng)
    to_float64(loss)
    assert sorted(loss.params) == [
        f"distill.hidden.{i}.{p}" for i in range(2) for p in ("b", "w")
    ]  # one projection [C_S, C_T] per mapped block
    x = rng.integers(0, V, size=(2, 5))
    pad = PAD if spec["pad"] else None
    y = None if spec["dc"].get("alpha", 0.5) == 0 else rng.integers(0, V, size=(2, 5))
    batch = Batch(x, y, pad)
    value, grads = loss(s_params, batch, s_cfg, DENSE)
    assert all(loss.terms[-1][k] > 0 for k in ("kd", "hidden", "attn"))
    inputs = {**s_params, **loss.params}
    assert grads.keys() == inputs.keys()

    def f():
        return loss(s_params, batch, s_cfg, DENSE)[0]

    assert f() == value  # deterministic, and the teacher is not changed by a call
    errors = check_grads(f, inputs, grads, max_entries=10, rng=rng)
    assert_grads_ok(errors, tol=1e-6)


def test_alpha_one_without_transfer_is_the_loops_cross_entropy(rng):
    t_params, t_cfg, s_params, s_cfg = tiny_pair(rng)
    loss = DistillLoss(t_params, t_cfg, s_params, s_cfg, DistillConfig(alpha=1.0))
    batch = Batch(rng.integers(0, V, size=(2, 6)), rng.integers(0, V, size=(2, 6)))
    value, grads = loss(s_params, batch, s_cfg, DENSE)
    ref_value, ref_grads = next_token_loss(s_params, batch, s_cfg, DENSE)
    assert value == ref_value and not loss.params
    for k, g in ref_grads.items():
        np.testing.assert_array_equal(grads[k], g, err_msg=k)


def test_mapped_blocks_only_get_the_transfer_terms(rng):
    """A layer map naming one pair: one projection, and the transfer reaches the student
    through that block's output and attention only."""
    t_params, t_cfg, s_params, s_cfg = tiny_pair(rng, 2)
    dc = DistillConfig(alpha=1.0, hidden_weight=1.0, attn_weight=1.0, layer_map=((0, 2),))
    loss = DistillLoss(t_params, t_cfg, s_params, s_cfg, dc)
    assert sorted(loss.params) == ["distill.hidden.0.b", "distill.hidden.0.w"]
    batch = Batch(rng.integers(0, V, size=(2, 6)), rng.integers(0, V, size=(2, 6)))
    _, grads = loss(s_params, batch, s_cfg, DENSE)
    _, ce_grads = next_token_loss(s_params, batch, s_cfg, DENSE)
    # block 1 lies after block 0's output: its gradients are the cross-entropy's alone
    for k in grads:
        if k.startswith("blocks.1.") or k in ("ln_f.g", "ln_f.b", "head.w"):
            np.testing.assert_allclose(grads[k], ce_grads[k], rtol=1e-12, err_msg=k)
        elif k.startswith("blocks.0."):
            assert not np.allclose(grads[k], ce_grads[k]), k


# ----------------------------------------------------------------------------------------
# through the training loop
# ----------------------------------------------------------------------------------------


def tiny_data(block_size):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    return make_dataset(text, block_size)


def test_trains_through_the_loop_with_a_frozen_teacher(tmp_path):
    data = tiny_data(16)
    t_cfg = TransformerConfig(
        vocab_size=data.tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16
    )
    t_params = init_params(t_cfg, np.random.default_rng(1))
    tc = TrainConfig(batch_size=4, steps=12, warmup=2, lr=3e-3, eval_every=6, eval_windows=4)
    train(t_params, t_cfg, data, tc, progress=False)  # a teacher that knows something
    t_before = {k: v.copy() for k, v in t_params.items()}
    s_cfg = st.student_config(t_cfg, 1, 8)
    s_params = init_params(s_cfg, np.random.default_rng(2))
    s_before = {k: v.copy() for k, v in s_params.items()}
    dc = DistillConfig(alpha=0.5, temperature=2.0, hidden_weight=0.5, attn_weight=0.5)
    loss = DistillLoss(t_params, t_cfg, s_params, s_cfg, dc, rng=np.random.default_rng(3))
    proj_before = {k: v.copy() for k, v in loss.params.items()}
    hist = train(s_params, s_cfg, data, tc, loss=loss, out_dir=tmp_path / "s", progress=False)
    assert len(hist.loss) == 12 and len(loss.terms) == 12
    assert hist.val_steps[-1] == 12 and np.isfinite(hist.val_loss[-1])
    for k, v in t_before.items():  # the teacher is frozen
        np.testing.assert_array_equal(t_params[k], v, err_msg=k)
    assert all(not np.array_equal(s_params[k], s_before[k]) for k in ("wte", "head.w"))
    assert all(not np.array_equal(loss.params[k], v) for k, v in proj_before.items())
    saved, _, _, _ = load_checkpoint(tmp_path / "s")  # the projections are not saved
    assert set(saved) == set(s_params)
    assert not loss.teacher_params["wte"].flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        loss.teacher_params["wte"][0, 0] = 1.0


def test_same_seed_same_student():
    data = tiny_data(8)
    t_cfg = TransformerConfig(
        vocab_size=data.tokenizer.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=8
    )
    t_params = init_params(t_cfg, np.random.default_rng(0))
    s_cfg = st.student_config(t_cfg, 1, 8)
    tc = TrainConfig(batch_size=2, steps=4, warmup=1, eval_every=0)
    runs = []
    for _ in range(2):
        s_params = init_params(s_cfg, np.random.default_rng([0, 0]))
        loss = DistillLoss(t_params, t_cfg, s_params, s_cfg, DistillConfig(hidden_weight=1.0))
        hist = train(s_params, s_cfg, data, tc, loss=loss, progress=False)
        runs.append((hist.loss, s_params["head.w"].copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


# ----------------------------------------------------------------------------------------
# soft-label cache
# ----------------------------------------------------------------------------------------


def test_soft_label_cache_reuses_the_teachers_outputs(rng):
    t_params, t_cfg, s_params, s_cfg = tiny_pair(rng)
    cache = SoftLabelCache(max_mb=1.0)
    dc = DistillConfig(hidden_weight=1.0)
    cached = DistillLoss(t_params, t_cfg, s_params, s_cfg, dc, soft_labels=cache)
    plain = DistillLoss(t_params, t_cfg, s_params, s_cfg, dc)
    b1 = Batch(rng.integers(0, V, size=(2, 6)), rng.integers(0, V, size=(2, 6)))
    b2 = Batch(rng.integers(0, V, size=(2, 6)), rng.integers(0, V, size=(2, 6)))
    for batch in (b1, b2, b1, b1):
        v_cached, g_cached = cached(s_params, batch, s_cfg, DENSE)
        v_plain, g_plain = plain(s_params, batch, s_cfg, DENSE)
        assert v_cached == v_plain
        np.testing.assert_array_equal(g_cached["wte"], g_plain["wte"])
    assert (cache.hits, cache.misses) == (2, 2) and len(cache.entries) == 2
    one = cache.bytes // 2
    small = SoftLabelCache(max_mb=1.5 * one / 2**20)  # room for one batch: b1 stays, b2 not
    loss = DistillLoss(t_params, t_cfg, s_params, s_cfg, dc, soft_labels=small)
    for batch in (b1, b2, b1, b2):
        loss(s_params, batch, s_cfg, DENSE)
    assert (small.hits, small.misses, len(small.entries)) == (1, 3, 1)
    assert small.bytes == one


def test_soft_label_cache_refuses_negative_size():
    with pytest.raises(ValueError, match="max_mb must be a number >= 0"):
        SoftLabelCache(-1)


# ----------------------------------------------------------------------------------------
# the student: shape, initialisation from the teacher
# ----------------------------------------------------------------------------------------


def test_student_config_heads():
    t = TransformerConfig(vocab_size=V, n_embd=128, n_head=4)  # D = 32
    assert st.student_config(t, 2, 64).n_head == 4
    assert st.student_config(t, 2, 96).n_head == 4
    assert st.student_config(t, 2, 32, n_head=2).n_head == 2
    t6 = TransformerConfig(vocab_size=V, n_embd=96, n_head=6)  # D = 16
    assert st.student_config(t6, 2, 64).n_head == 4  # 6 does not divide 64: 64 / D heads
    with pytest.raises(ValueError, match="--student-heads"):
        st.student_config(t6, 2, 40)


@pytest.mark.parametrize("n, m, expected", [(4, 2, [0, 2]), (6, 3, [0, 2, 4]), (4, 3, [0, 1, 2])])
def test_every_other_layer(n, m, expected):
    assert st.every_other_layer(n, m) == expected


def test_student_from_teacher_copies_every_other_block(rng):
    t_cfg = dataclasses.replace(TEACHER, n_layer=4)
    t_params = init_params(t_cfg, rng)
    s_params, s_cfg = st.student_from_teacher(t_params, t_cfg, 2)
    assert s_cfg.n_layer == 2 and s_cfg.n_embd == t_cfg.n_embd
    for dst, src in ((0, 0), (1, 2)):
        for part in ("attn.qkv.w", "mlp.proj.b", "ln1.g"):
            np.testing.assert_array_equal(
                s_params[f"blocks.{dst}.{part}"], t_params[f"blocks.{src}.{part}"]
            )
    np.testing.assert_array_equal(s_params["head.w"], t_params["head.w"])
    s_params["wte"][0, 0] += 1.0  # copies, not views of the teacher's arrays
    assert s_params["wte"][0, 0] != t_params["wte"][0, 0]
    # a student of the teacher's blocks 1 and 3 computes what the teacher's blocks 1 and 3
    # would, one after the other
    custom, _ = st.student_from_teacher(t_params, t_cfg, 2, layers=[1, 3])
    np.testing.assert_array_equal(custom["blocks.1.mlp.fc.w"], t_params["blocks.3.mlp.fc.w"])
    x = rng.integers(0, V, size=(1, 4))
    logits, _ = forward(custom, x, s_cfg)
    assert logits.shape == (1, 4, V)


def test_student_from_teacher_refuses_bad_layers(rng):
    t_params = init_params(TEACHER, rng)
    with pytest.raises(ValueError, match="needs 1 to 3 blocks; got 4"):
        st.student_from_teacher(t_params, TEACHER, 4)
    with pytest.raises(ValueError, match=r"names teacher block 3; the teacher has blocks 0..2"):
        st.student_from_teacher(t_params, TEACHER, 2, layers=[0, 3])
    with pytest.raises(ValueError, match="names 1 teacher blocks for 2 student blocks"):
        st.student_from_teacher(t_params, TEACHER, 2, layers=[0])


# ----------------------------------------------------------------------------------------
# refused input
# ----------------------------------------------------------------------------------------


def test_refuses_a_student_of_another_vocabulary(rng):
    t_params = init_params(TEACHER, rng)
    s_cfg = dataclasses.replace(st.student_config(TEACHER, 1, 4), vocab_size=V + 1)
    with pytest.raises(ValueError, match="different vocabularies: 11 tokens vs 12"):
        DistillLoss(t_params, TEACHER, init_params(s_cfg, rng), s_cfg)


def test_refuses_a_longer_context_or_another_masking(rng):
    t_params = init_params(TEACHER, rng)
    for change, match in (
        (dict(block_size=7), "student context 7 is longer than the teacher's 6"),
        (dict(causal=False), "teacher causal=True but student causal=False"),
    ):
        s_cfg = dataclasses.replace(st.student_config(TEACHER, 1, 4), **change)
        with pytest.raises(ValueError, match=match):
            DistillLoss(t_params, TEACHER, init_params(s_cfg, rng), s_cfg)


def test_warns_when_the_student_is_larger_than_the_teacher(rng):
    t_params = init_params(TEACHER, rng)
    s_cfg = st.student_config(TEACHER, 4, 16)
    with pytest.warns(UserWarning, match=r"student \(.* parameters.*\) is larger than the teacher"):
        DistillLoss(t_params, TEACHER, init_params(s_cfg, rng), s_cfg)
    smaller = st.student_config(TEACHER, 1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DistillLoss(t_params, TEACHER, init_params(smaller, rng), smaller)


def test_refuses_a_layer_map_of_blocks_that_do_not_exist(rng):
    t_params = init_params(TEACHER, rng)
    s_cfg = st.student_config(TEACHER, 2, 4)
    dc = DistillConfig(hidden_weight=1.0, layer_map=((1, 3),))
    with pytest.raises(ValueError, match=r"names teacher block 3, but the teacher has 3 blocks"):
        DistillLoss(t_params, TEACHER, init_params(s_cfg, rng), s_cfg, dc)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(alpha=1.2), ValueError, r"alpha must lie in \[0, 1\]"),
        (dict(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
        (dict(loss="js"), ValueError, "must be one of kl, mse, mse-logits"),
        (dict(hidden_weight=-1.0), ValueError, "hidden_weight must be a finite number >= 0"),
        (dict(attn_weight="1"), TypeError, "attn_weight must be a number"),
        (dict(attn_heads="sum"), ValueError, "attn_heads must be one of auto, matched"),
    ],
)
def test_distill_config_refuses(kwargs, error, match):
    with pytest.raises(error, match=match):
        DistillConfig(**kwargs)


def test_refuses_a_model_of_another_shape_at_call_time(rng):
    t_params, t_cfg, s_params, s_cfg = tiny_pair(rng)
    loss = DistillLoss(t_params, t_cfg, s_params, s_cfg)
    other = dataclasses.replace(s_cfg, n_layer=1)
    batch = Batch(rng.integers(0, V, size=(1, 4)), rng.integers(0, V, size=(1, 4)))
    with pytest.raises(ValueError, match="built for a student of 2 blocks of width 4"):
        loss(init_params(other, rng), batch, other, DENSE)


# ----------------------------------------------------------------------------------------
# self-distillation: the model as the teacher of its own compressed copy
# ----------------------------------------------------------------------------------------


def test_self_distill_loss_of_the_unchanged_model_is_alpha_times_ce(rng):
    from minicompress.distill.trainer import self_distill_loss

    cfg = dataclasses.replace(TEACHER, n_layer=2)
    params = init_params(cfg, rng)
    x = rng.integers(0, V, size=(3, cfg.block_size))
    y = rng.integers(0, V, size=(3, cfg.block_size))
    loss = self_distill_loss(params, cfg, DistillConfig(alpha=0.3, temperature=2.0))
    value, grads = loss(params, Batch(x, y), cfg, DENSE)
    ce, ce_grads = next_token_loss(params, Batch(x, y), cfg)
    # student == teacher: KL(p || p) = 0 and its gradient T (p_s - p_t) / B = 0
    assert value == pytest.approx(0.3 * ce, rel=1e-6)
    assert loss.terms[-1]["kd"] == pytest.approx(0.0, abs=1e-6)
    for k in params:
        np.testing.assert_allclose(grads[k], 0.3 * ce_grads[k], rtol=1e-4, atol=1e-7)
    # the teacher is a copy: changing the caller's arrays afterwards does not change it
    params["head.w"] += rng.normal(0, 1, params["head.w"].shape).astype(np.float32)
    moved, _ = loss(params, Batch(x, y), cfg, DENSE)
    assert loss.terms[-1]["kd"] > 1e-4 and moved != pytest.approx(value)
    assert loss.soft_labels is not None and loss.soft_labels.hits == 1  # same batch again


def test_self_distill_loss_without_cache(rng):
    from minicompress.distill.trainer import self_distill_loss

    cfg = dataclasses.replace(TEACHER, n_layer=1)
    assert self_distill_loss(init_params(cfg, rng), cfg, soft_label_mb=0).soft_labels is None
