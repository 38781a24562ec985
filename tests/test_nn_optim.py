"""minicompress/nn/optim.py: AdamW and SGD step for step against torch.optim, gradient
clipping against torch.nn.utils.clip_grad_norm_, and the schedule and first steps by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.nn.optim import SGD, AdamW, clip_grad_norm, global_grad_norm, lr_at

N_STEPS = 6
LRS = [1e-2, 2e-2, 3e-2, 2e-2, 1e-2, 5e-3]  # passed per step, as the schedule does


def _problem(rng):
    """A matrix (decayed), an embedding-like matrix and a bias vector (not decayed), with
    a fixed sequence of gradients."""
    params = {
        "w": rng.standard_normal((3, 4)),
        "wte": rng.standard_normal((5, 2)),
        "b": rng.standard_normal(4),
    }
    grads = [{k: rng.standard_normal(a.shape) for k, a in params.items()} for _ in range(N_STEPS)]
    grads[2]["b"] = np.zeros(4)  # a zero gradient: v ~ 0, eps matters
    return params, grads


def _torch_run(torch, opt_cls, params, grads, wd, **kwargs):
    """torch: matrices in a group with weight_decay=wd, vectors in a group with 0 (our
    optimizers decay only matrices)."""
    tp = {k: torch.tensor(a.copy(), requires_grad=True) for k, a in params.items()}
    groups = [
        {"params": [tp[k] for k in tp if tp[k].ndim >= 2], "weight_decay": wd},
        {"params": [tp[k] for k in tp if tp[k].ndim < 2], "weight_decay": 0.0},
    ]
    opt = opt_cls(groups, lr=LRS[0], **kwargs)
    history = []
    for step, g in enumerate(grads):
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        for group in opt.param_groups:
            group["lr"] = LRS[step]
        opt.step()
        history.append({k: t.detach().numpy().copy() for k, t in tp.items()})
    return history


def _our_run(opt, params, grads):
    params = {k: a.copy() for k, a in params.items()}
    history = []
    for step, g in enumerate(grads):
        opt.step(params, {k: a.copy() for k, a in g.items()}, lr=LRS[step])
        history.append({k: a.copy() for k, a in params.items()})
    return history


def _compare(ours, theirs):
    for step, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        for k in t:
            assert_close(o[k], t[k], rtol=1e-12, atol=1e-14, name=f"step {step + 1} {k}")


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_matches_torch(torch, rng, wd):
    params, grads = _problem(rng)
    kw = dict(betas=(0.9, 0.95), eps=1e-8)
    theirs = _torch_run(torch, torch.optim.AdamW, params, grads, wd, **kw)
    ours = _our_run(AdamW(lr=LRS[0], weight_decay=wd, **kw), params, grads)
    _compare(ours, theirs)


@pytest.mark.parametrize("momentum, wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.05), (0.5, 0.3)])
def test_sgd_matches_torch(torch, rng, momentum, wd):
    params, grads = _problem(rng)
    theirs = _torch_run(torch, torch.optim.SGD, params, grads, wd, momentum=momentum)
    ours = _our_run(SGD(lr=LRS[0], momentum=momentum, weight_decay=wd), params, grads)
    _compare(ours, theirs)


def test_adamw_first_step_by_hand():
    # t = 1: m = (1-b1) g, v = (1-b2) g^2, so the update is lr * g / (|g| + eps')
    # ~ lr * sign(g); decay first multiplies matrices by (1 - lr wd)
    p = {"w": np.array([[1.0, -2.0]]), "b": np.array([3.0, 4.0])}
    g = {"w": np.array([[0.5, -1e-3]]), "b": np.array([-2.0, 7.0])}
    opt = AdamW(lr=0.1, weight_decay=0.5, eps=0.0)
    opt.step(p, g)
    np.testing.assert_allclose(p["w"], [[1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1]], rtol=1e-12)
    np.testing.assert_allclose(p["b"], [3.0 + 0.1, 4.0 - 0.1], rtol=1e-12)  # vector: no decay
    assert opt.t == 1 and set(opt.state_dict()) == {"t", "m.w", "v.w", "m.b", "v.b"}


def test_sgd_by_hand():
    p = {"w": np.array([[1.0, 2.0]]), "b": np.array([1.0])}
    opt = SGD(lr=0.5, momentum=0.9, weight_decay=0.1)
    opt.step(p, {"w": np.array([[1.0, 0.0]]), "b": np.array([2.0])})
    # w: g + wd w = [1.1, 0.2]; b: no decay
    np.testing.assert_allclose(p["w"], [[1.0 - 0.55, 2.0 - 0.1]], rtol=1e-15)
    np.testing.assert_allclose(p["b"], [0.0], atol=1e-15)
    opt.step(p, {"w": np.array([[0.0, 0.0]]), "b": np.array([0.0])})
    # buf_b = 0.9 * 2 + 0 = 1.8 -> b = 0 - 0.5 * 1.8
    np.testing.assert_allclose(p["b"], [-0.9], rtol=1e-15)


def test_optimizers_keep_float32(rng):
    for opt in (AdamW(), SGD(weight_decay=0.1)):
        p = {"w": rng.standard_normal((2, 3)).astype(np.float32)}
        opt.step(p, {"w": rng.standard_normal((2, 3)).astype(np.float32)})
        assert p["w"].dtype == np.float32


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (AdamW, dict(lr=0.0), "lr"),
        (AdamW, dict(betas=(0.9, 1.0)), "betas"),
        (AdamW, dict(weight_decay=-1.0), "weight_decay"),
        (SGD, dict(lr=-1.0), "lr"),
        (SGD, dict(momentum=1.0), "momentum"),
    ],
)
def test_optimizers_refuse_bad_hyperparameters(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


# ----------------------------------------------------------------------------------------
# clipping
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3])  # clipped, clipped, untouched
def test_clip_grad_norm_matches_torch(torch, rng, max_norm):
    grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    tensors = []
    for g in grads.values():
        t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(g.copy())
        tensors.append(t)
    their_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    ours = {k: g.copy() for k, g in grads.items()}
    norm = clip_grad_norm(ours, max_norm)
    assert norm == pytest.approx(float(their_norm), rel=1e-14)
    for (k, g), t in zip(ours.items(), tensors, strict=True):
        assert_close(g, t.grad.numpy(), rtol=1e-14, atol=0.0, name=k)


def test_clip_grad_norm_by_hand():
    grads = {"a": np.array([3.0]), "b": np.array([[4.0]])}  # ||g|| = 5
    assert global_grad_norm(grads) == 5.0
    assert clip_grad_norm(grads, 1.0) == 5.0
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(grads["a"], [3.0 * coef], rtol=1e-15)
    np.testing.assert_allclose(grads["b"], [[4.0 * coef]], rtol=1e-15)
    small = {"a": np.array([0.3, 0.4])}
    clip_grad_norm(small, 1.0)
    np.testing.assert_array_equal(small["a"], [0.3, 0.4])  # below the limit: untouched
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(small, 0.0)


# ----------------------------------------------------------------------------------------
# schedule: lr = 1, min_lr = 0.1, 10 warmup steps, 110 steps in all
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.1),  # warmup start: lr * 1 / warmup
        (4, 0.5),
        (9, 1.0),  # last warmup step reaches lr
        (10, 1.0),  # cosine starts at lr
        (35, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),  # a quarter of the way
        (60, 0.55),  # midpoint: (lr + min_lr) / 2
        (110, 0.1),  # end: min_lr
        (500, 0.1),  # after the end: stays at min_lr
    ],
)
def test_lr_at_by_hand(step, expected):
    assert lr_at(step, 110, 1.0, 10, 0.1) == pytest.approx(expected, rel=1e-14, abs=1e-15)


def test_lr_at_without_warmup_and_refuses_bad_total():
    assert lr_at(0, 100, 2.0, 0) == 2.0
    assert lr_at(100, 100, 2.0, 0) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="total"):
        lr_at(0, 0, 1.0, 0)


# ----------------------------------------------------------------------------------------
# the NumPy AdamW beside the Numba kernel, and AdamW over several steps without torch
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_numba_kernel_equals_numpy_reference(rng, dtype):
    from minicompress.nn.optim import _adamw_kernel, adamw_update_reference

    n = 1000
    state = [rng.standard_normal(n).astype(dtype) for _ in range(3)]  # p, m, v (abs below)
    state[2] = np.abs(state[2])
    g = rng.standard_normal(n).astype(dtype)
    ref = [a.copy() for a in state]
    fast = [a.copy() for a in state]
    args = (0.999, 0.9, 0.95, 0.02, 0.3, 1e-8)  # decay, b1, b2, step_size, bias2_sqrt, eps
    for _ in range(3):
        adamw_update_reference(ref[0], g, ref[1], ref[2], *args)
        _adamw_kernel(fast[0], g, fast[1], fast[2], *args)
    for name, o, t in zip("pmv", fast, ref, strict=True):
        # the same float operations in the same order: equal to the last bit or two
        assert_close(o, t, rtol=4 * np.finfo(dtype).eps, name=name)


def test_adamw_matches_torch_golden():
    """torch.optim.AdamW's parameters after each of 6 steps (tests/golden/adamw.npz)."""
    from make_golden import load_golden

    c = load_golden("adamw")
    params = {"w": c["w"].copy(), "v": c["v"].copy()}
    opt = AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for i in range(len(c["lrs"])):
        opt.step(params, {"w": c["gw"][i].copy(), "v": c["gv"][i].copy()}, lr=float(c["lrs"][i]))
        assert_close(params["w"], c["w_after"][i], rtol=1e-12, atol=1e-14, name=f"w step {i + 1}")
        assert_close(params["v"], c["v_after"][i], rtol=1e-12, atol=1e-14, name=f"v step {i + 1}")
