"""minicompress/nn/linear.py: the ``linear`` contract. A hook's outputs and gradients are
really used by the model (finite differences through the hook agree with the model's
gradients, and the logits change as the hook says), and the model never reads a linear
weight itself (an opaque object under the weight's key works)."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close, assert_grads_ok, check_grads

from minicompress.nn.gradcheck import random_params64
from minicompress.nn.linear import DENSE, Linear, check_linear
from minicompress.nn.model import TransformerConfig, backward, forward, linear_names
from minicompress.nn.ops import linear_backward, linear_forward

TINY = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, mlp_ratio=2)


class MaskScaleLinear:
    """A hook that changes both the forward and the backward: y = (a x) @ (w * m) + b with
    a per-layer input scale ``a`` and a fixed mask ``m`` (a pruner and a quantizer's
    smooth stand-in). Its gradients: dx = a dy (w m)^T, dw = m * (a x)^T dy, db = sum dy."""

    def __init__(self, masks: dict, scales: dict):
        self.masks, self.scales = masks, scales

    def forward(self, name, x, w, b):
        y, cache = linear_forward(self.scales[name] * x, w * self.masks[name], b)
        return y, (cache, name)

    def backward(self, name, dy, cache):
        inner, _ = cache
        dx, dw, db = linear_backward(dy, inner)
        return self.scales[name] * dx, dw * self.masks[name], db


@pytest.mark.parametrize("norm, gelu", [("pre", "tanh"), ("post", "none")])
def test_hook_gradients_match_finite_differences(rng, norm, gelu):
    cfg = TransformerConfig(**TINY, norm=norm, gelu=gelu)
    params = random_params64(cfg, rng)
    names = linear_names(cfg)
    masks = {n: (rng.random(params[n + ".w"].shape) > 0.3).astype(np.float64) for n in names}
    hook = MaskScaleLinear(masks, {n: 0.5 + rng.random() for n in names})
    idx = rng.integers(0, cfg.vocab_size, (2, 5))
    r = rng.standard_normal((2, 5, cfg.vocab_size))

    def loss():
        return float(np.sum(forward(params, idx, cfg, hook)[0] * r))

    logits, cache = forward(params, idx, cfg, hook)
    grads = backward(r, cache)
    errors = check_grads(loss, params, grads, h=1e-5, max_entries=12, rng=rng)
    assert_grads_ok(errors, tol=1e-6)
    # the mask really reaches the weights: masked entries get exactly zero gradient
    for n in names:
        assert np.all(grads[n + ".w"][masks[n] == 0] == 0), n
    # and the hook's output is what the model used: it differs from the dense model's
    dense_logits, _ = forward(params, idx, cfg)
    assert np.abs(logits - dense_logits).max() > 1e-3


class Opaque:
    """A weight the model cannot read: no shape, no dtype, no arithmetic."""

    __slots__ = ("_a",)

    def __init__(self, a):
        self._a = a


class UnwrapLinear:
    """A runtime that keeps its own form of the weight under the parameter's key."""

    def forward(self, name, x, w, b):
        assert isinstance(w, Opaque) and isinstance(b, Opaque | None), name
        return DENSE.forward(name, x, w._a, None if b is None else b._a)

    def backward(self, name, dy, cache):
        return DENSE.backward(name, dy, cache)


@pytest.mark.parametrize("head", [True, False])
def test_model_never_reads_a_linear_weight(rng, head):
    cfg = TransformerConfig(**TINY, head=head)
    params = random_params64(cfg, rng)
    wrapped = dict(params)
    for n in linear_names(cfg):
        wrapped[n + ".w"] = Opaque(params[n + ".w"])
        if n + ".b" in params:
            wrapped[n + ".b"] = Opaque(params[n + ".b"])
    idx = rng.integers(0, cfg.vocab_size, (2, 5))
    out_plain, cache_plain = forward(params, idx, cfg)
    out_wrapped, cache_wrapped = forward(wrapped, idx, cfg, UnwrapLinear())
    np.testing.assert_array_equal(out_wrapped, out_plain)
    dy = rng.standard_normal(out_plain.shape)
    g_plain, g_wrapped = backward(dy, cache_plain), backward(dy, cache_wrapped)
    for k in g_plain:
        assert_close(g_wrapped[k], g_plain[k], rtol=0, name=k)


def test_dense_is_a_linear_and_other_objects_are_refused(rng):
    assert isinstance(DENSE, Linear)
    assert check_linear(DENSE) is DENSE
    cfg = TransformerConfig(**TINY)
    params = random_params64(cfg, rng)
    with pytest.raises(TypeError, match="linear must have methods forward"):
        forward(params, np.zeros((1, 3), np.int64), cfg, linear=object())


class FusedGelu:
    """A linear with the optional ``forward_gelu``: it marks its output so the test can see
    which way the model went, and declines layers named in ``decline``."""

    def __init__(self, decline=()):
        self.decline = set(decline)

    def forward(self, name, x, w, b):
        return linear_forward(x, w, b)

    def backward(self, name, dy, cache):
        return linear_backward(dy, cache)

    def forward_gelu(self, name, x, w, b, approximate):
        if name in self.decline:
            return None
        return np.full((*x.shape[:-1], w.shape[1]), 7.0)


def test_linear_gelu_uses_forward_gelu_or_falls_back(rng):
    from minicompress.nn.backend import NUMPY_OPS
    from minicompress.nn.linear import linear_gelu

    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    g, fc_cache, gelu_cache = linear_gelu(FusedGelu(), NUMPY_OPS, "fc", x, w, b, "tanh")
    assert (g == 7.0).all() and fc_cache is None and gelu_cache is None
    for linear in (DENSE, FusedGelu(decline=["fc"])):  # no method, or the method declines
        g, fc_cache, gelu_cache = linear_gelu(linear, NUMPY_OPS, "fc", x, w, b, "tanh")
        expected, _ = NUMPY_OPS.gelu_forward(x @ w + b, "tanh")
        assert_close(g, expected, rtol=1e-12, atol=1e-12, name="gelu(x w + b)")
        assert fc_cache is not None and gelu_cache is not None  # training still has them
