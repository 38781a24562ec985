"""minicompress/nn/train.py: the one training loop and its hooks. A distillation-style loss
(frozen teacher, KL + hidden-state transfer through a trainable projection of the loss's
own) and a mask-keeping after-step hook run through ``train``; validation uses the same
``linear`` as training; a model with heads and neurons removed trains, saves and loads;
``TrainConfig`` refuses what it cannot use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minicompress.data.corpus import Batch, builtin_text, make_dataset
from minicompress.nn.checkpoint import load_checkpoint, save_checkpoint
from minicompress.nn.linear import DENSE
from minicompress.nn.model import (
    TransformerConfig,
    backward,
    check_params,
    forward,
    init_params,
    layer_shapes,
)
from minicompress.nn.ops import softmax_forward
from minicompress.nn.train import TrainConfig, next_token_loss, train

TEXT = builtin_text()[:4000]


@pytest.fixture(scope="module")
def data():
    return make_dataset(TEXT, 8)


def tiny_cfg(data, **kw):
    base = dict(vocab_size=data.tokenizer.vocab_size, block_size=8, n_layer=2, n_head=4)
    return TransformerConfig(**{**base, "n_embd": 16, "mlp_ratio": 2, **kw})


FAST = TrainConfig(steps=6, batch_size=4, warmup=2, eval_every=3, eval_windows=2, lr=3e-3)


# ----------------------------------------------------------------------------------------
# a distillation-style loss and a mask-keeping after-step hook
# ----------------------------------------------------------------------------------------


class ToyDistillLoss:
    """0.5 CE + 0.5 T^2 KL(teacher || student) + MSE(hidden_s @ P, hidden_t) on the last
    hidden state, with the projection P [C_s, C_t] trained by the loop (``self.params``)."""

    def __init__(self, teacher, t_cfg, s_width, rng, temperature=2.0):
        self.teacher, self.t_cfg, self.temperature = teacher, t_cfg, temperature
        self.params = {"proj": (0.1 * rng.standard_normal((s_width, t_cfg.n_embd))).astype(
            np.float32
        )}  # fmt: skip
        self.calls = 0

    def __call__(self, params, batch, cfg, linear):
        self.calls += 1
        t_logits, t_cache = forward(self.teacher, batch.x, self.t_cfg)
        logits, cache = forward(params, batch.x, cfg, linear)
        n = batch.x.size
        temp = self.temperature
        p_t, _ = softmax_forward(t_logits / temp)
        p_s, _ = softmax_forward(logits / temp)
        kl = temp**2 * float(np.sum(p_t * (np.log(p_t) - np.log(p_s)))) / n
        ce_loss, ce_grads = next_token_loss(params, batch, cfg, linear)  # CE grads too
        dlogits_kl = temp * (p_s - p_t) / n
        h_s, h_t = cache.hidden[-1], t_cache.hidden[-1]
        diff = h_s @ self.params["proj"] - h_t  # [B, T, C_t]
        mse = float(np.mean(diff**2))
        ddiff = 2.0 * diff / diff.size
        dhidden = [None] * cfg.n_layer + [ddiff @ self.params["proj"].T]
        grads = backward(0.5 * dlogits_kl, cache, dhidden=dhidden)
        for k, g in ce_grads.items():
            grads[k] = grads[k] + 0.5 * g
        grads["proj"] = h_s.reshape(-1, h_s.shape[-1]).T @ ddiff.reshape(-1, diff.shape[-1])
        return 0.5 * ce_loss + 0.5 * kl + mse, grads


class KeepMask:
    """After every step: weight <- weight * mask, and AdamW's moments too."""

    def __init__(self, masks):
        self.masks, self.steps = masks, []

    def __call__(self, step, params, grads, opt):
        self.steps.append(step)
        for name, m in self.masks.items():
            params[name] *= m
            opt.m[name] *= m
            opt.v[name] *= m


def test_distillation_loss_and_mask_hook_through_train(data, rng):
    t_cfg = tiny_cfg(data, n_embd=24, n_head=4)
    teacher = init_params(t_cfg, np.random.default_rng(1))
    teacher_before = {k: v.copy() for k, v in teacher.items()}
    cfg = tiny_cfg(data)
    params = init_params(cfg, np.random.default_rng(2))
    loss = ToyDistillLoss(teacher, t_cfg, cfg.n_embd, rng)
    proj_before = loss.params["proj"].copy()
    name = "blocks.0.mlp.fc.w"
    mask = (rng.random(params[name].shape) > 0.5).astype(np.float32)
    params[name] *= mask
    keep = KeepMask({name: mask})
    hist = train(params, cfg, data, FAST, loss=loss, after_step=keep, progress=False)
    assert loss.calls == FAST.steps and keep.steps == list(range(1, FAST.steps + 1))
    assert np.all(params[name][mask == 0] == 0)  # exactly zero through every AdamW step
    assert np.any(params[name][mask == 1] != 0)
    assert np.abs(loss.params["proj"] - proj_before).max() > 1e-4  # the loop trained it
    for k in teacher:  # the teacher is frozen
        np.testing.assert_array_equal(teacher[k], teacher_before[k])
    assert all(math.isfinite(v) for v in hist.loss) and len(hist.val_loss) == 2


def test_without_the_hook_the_masked_weight_moves(data, rng):
    """The control of the test above: AdamW alone would revive the pruned weights."""
    cfg = tiny_cfg(data)
    params = init_params(cfg, np.random.default_rng(2))
    name = "blocks.0.mlp.fc.w"
    mask = (rng.random(params[name].shape) > 0.5).astype(np.float32)
    params[name] *= mask
    train(params, cfg, data, FAST, progress=False)
    assert np.count_nonzero(params[name][mask == 0]) > 0


class CountingLinear:
    def __init__(self):
        self.calls = 0

    def forward(self, name, x, w, b):
        self.calls += 1
        return DENSE.forward(name, x, w, b)

    def backward(self, name, dy, cache):
        return DENSE.backward(name, dy, cache)


def test_validation_uses_the_training_linear(data):
    cfg = tiny_cfg(data)
    params = init_params(cfg, np.random.default_rng(3))
    counting = CountingLinear()
    tc = TrainConfig(steps=2, batch_size=2, warmup=1, eval_every=0)
    train(params, cfg, data, tc, linear=counting, progress=False)
    per_forward = 4 * cfg.n_layer + 1  # linear layers per forward pass
    n_val = math.ceil(((len(data.val) - 1) // cfg.block_size) / 32)  # batches of 32 windows
    assert counting.calls == per_forward * (tc.steps + n_val)


def test_batches_from_a_callable_and_a_custom_validation(data):
    cfg = tiny_cfg(data)
    params = init_params(cfg, np.random.default_rng(4))
    seen = []

    def sample(rng, batch_size):
        x = rng.integers(0, cfg.vocab_size, (batch_size, cfg.block_size))
        seen.append(x.shape)
        return Batch(x, np.roll(x, -1, axis=1))

    calls = []

    def validate(p, linear, windows):
        calls.append(windows)
        return 1.0

    tc = TrainConfig(steps=4, batch_size=3, warmup=1, eval_every=2, eval_windows=5)
    hist = train(params, cfg, sample, tc, validate=validate, progress=False)
    assert seen == [(3, cfg.block_size)] * 4
    assert calls == [5, 5, None] and hist.val_loss == [1.0, 1.0]


# ----------------------------------------------------------------------------------------
# shapes come from the parameters
# ----------------------------------------------------------------------------------------


def keep_heads(params, cfg, layer, keep):
    """The params of ``layer`` restricted to heads ``keep`` (q, k, v columns and proj rows)."""
    d, h = cfg.head_dim, params[f"blocks.{layer}.attn.qkv.w"].shape[1] // (3 * cfg.head_dim)
    cols = np.concatenate([np.arange(j * h * d + i * d, j * h * d + (i + 1) * d)
                           for j in range(3) for i in keep])  # fmt: skip
    rows = np.concatenate([np.arange(i * d, (i + 1) * d) for i in keep])
    p, pre = dict(params), f"blocks.{layer}.attn."
    p[pre + "qkv.w"] = params[pre + "qkv.w"][:, cols].copy()
    p[pre + "qkv.b"] = params[pre + "qkv.b"][cols].copy()
    p[pre + "proj.w"] = params[pre + "proj.w"][rows].copy()
    return p


def keep_neurons(params, layer, keep):
    p, pre = dict(params), f"blocks.{layer}.mlp."
    p[pre + "fc.w"] = params[pre + "fc.w"][:, keep].copy()
    p[pre + "fc.b"] = params[pre + "fc.b"][keep].copy()
    p[pre + "proj.w"] = params[pre + "proj.w"][keep].copy()
    return p


def embed_back(shrunk, cfg, heads_kept, neurons_kept):
    """Full-size params equal to ``shrunk`` where kept, zero where removed (the masked model):
    heads ``heads_kept`` of block 0 and neurons ``neurons_kept`` of block 1."""
    out = {k: v.copy() for k, v in shrunk.items()}
    d, h, c, f = cfg.head_dim, cfg.n_head, cfg.n_embd, cfg.mlp_ratio * cfg.n_embd
    pre, k = "blocks.0.attn.", len(heads_kept)
    out[pre + "qkv.w"], out[pre + "qkv.b"] = (
        np.zeros((c, 3 * h * d), np.float32),
        np.zeros(3 * h * d, np.float32),
    )
    out[pre + "proj.w"] = np.zeros((h * d, c), np.float32)
    for slot, i in enumerate(heads_kept):
        for j in range(3):  # q, k, v
            src = slice((j * k + slot) * d, (j * k + slot + 1) * d)
            dst = slice((j * h + i) * d, (j * h + i + 1) * d)
            out[pre + "qkv.w"][:, dst] = shrunk[pre + "qkv.w"][:, src]
            out[pre + "qkv.b"][dst] = shrunk[pre + "qkv.b"][src]
        out[pre + "proj.w"][i * d : (i + 1) * d] = shrunk[pre + "proj.w"][slot * d : (slot + 1) * d]
    pre = "blocks.1.mlp."
    out[pre + "fc.w"], out[pre + "fc.b"] = np.zeros((c, f), np.float32), np.zeros(f, np.float32)
    out[pre + "proj.w"] = np.zeros((f, c), np.float32)
    out[pre + "fc.w"][:, neurons_kept] = shrunk[pre + "fc.w"]
    out[pre + "fc.b"][neurons_kept] = shrunk[pre + "fc.b"]
    out[pre + "proj.w"][neurons_kept] = shrunk[pre + "proj.w"]
    return out


def test_shrunk_model_trains_saves_loads_and_equals_the_masked_model(data, tmp_path):
    cfg = tiny_cfg(data)  # 4 heads of D = 4, MLP width 32
    full = init_params(cfg, np.random.default_rng(5))
    heads_kept, neurons_kept = [0, 2], np.arange(0, 32, 2)  # two heads gone, half the neurons
    shrunk = keep_neurons(keep_heads(full, cfg, 0, heads_kept), 1, neurons_kept)
    assert [tuple(s) for s in layer_shapes(shrunk, cfg)] == [(2, 32), (4, 16)]
    idx = np.random.default_rng(6).integers(0, cfg.vocab_size, (3, 8))

    masked = embed_back(shrunk, cfg, heads_kept, neurons_kept)
    np.testing.assert_allclose(forward(shrunk, idx, cfg)[0], forward(masked, idx, cfg)[0],
                               rtol=1e-5, atol=1e-6)  # fmt: skip

    hist = train(shrunk, cfg, data, FAST, out_dir=tmp_path / "ck", progress=False)
    assert math.isfinite(hist.val_loss[-1])
    loaded, cfg2, _, _ = load_checkpoint(tmp_path / "ck")
    assert cfg2 == cfg and layer_shapes(loaded, cfg2) == layer_shapes(shrunk, cfg)
    out = forward(loaded, idx, cfg2)[0]
    np.testing.assert_array_equal(out, forward(shrunk, idx, cfg)[0])
    masked = embed_back(loaded, cfg, heads_kept, neurons_kept)
    np.testing.assert_allclose(out, forward(masked, idx, cfg)[0], rtol=1e-5, atol=1e-6)


def test_inconsistent_shapes_are_refused(data, tmp_path):
    cfg = tiny_cfg(data)
    params = init_params(cfg, np.random.default_rng(7))
    bad = dict(params)
    bad["blocks.0.attn.proj.w"] = params["blocks.0.attn.proj.w"][:8]  # 2 heads, qkv has 4
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.proj\.w.*shape"):
        check_params(bad, cfg)
    bad = dict(params)
    bad["blocks.1.attn.qkv.w"] = params["blocks.1.attn.qkv.w"][:, :10]  # not 3 * H * D
    with pytest.raises(ValueError, match="3 \\* H \\* D"):
        check_params(bad, cfg)
    save_checkpoint(tmp_path / "ok", params, cfg, data.tokenizer.chars)
    with pytest.raises(ValueError, match="unexpected"):
        check_params({**params, "extra.w": params["wte"]}, cfg)


# ----------------------------------------------------------------------------------------
# TrainConfig
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("lr", "0.1", TypeError),
        ("lr", float("inf"), ValueError),
        ("lr", 0.0, ValueError),
        ("minutes", float("inf"), ValueError),
        ("minutes", -1.0, ValueError),
        ("eval_windows", 0, ValueError),
        ("weight_decay", float("nan"), ValueError),
        ("seed", -1, ValueError),
        ("steps", True, TypeError),
        ("batch_size", 2.0, TypeError),
        ("grad_clip", 0.0, ValueError),
    ],
)
def test_train_config_refuses(field, value, error):
    with pytest.raises(error, match=field):
        TrainConfig(**{field: value})


def test_train_config_takes_numpy_integers():
    tc = TrainConfig(steps=np.int64(5), batch_size=np.int32(2))
    assert type(tc.steps) is int and type(tc.batch_size) is int


def test_after_step_sees_the_learning_rate_of_the_step(data):
    """``opt.last_lr`` is the schedule's rate of the step just taken (warmup, then cosine)."""
    from minicompress.nn.optim import lr_at

    cfg = tiny_cfg(data)
    params = init_params(cfg, np.random.default_rng(8))
    tc = TrainConfig(steps=5, batch_size=2, warmup=2, lr=1e-2, min_lr=1e-3, eval_every=0)
    seen = []
    train(params, cfg, data, tc, after_step=lambda s, p, g, opt: seen.append(opt.last_lr),
          progress=False)  # fmt: skip
    assert seen == [lr_at(s, 5, 1e-2, 2, 1e-3) for s in range(5)]
    assert seen[0] < seen[1] and seen[-1] < seen[1]  # up during warmup, down after
