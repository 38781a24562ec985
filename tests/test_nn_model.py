"""minicompress/nn/model.py (and the loop of nn/train.py that drives it): whole-model
float64 finite differences for both op backends, causality and padding properties, the
linear hook, refusal of bad input, generation, bit-identical training, and learning."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from gradcheck import assert_close, assert_grads_ok, check_grads

from minicompress.data.corpus import make_dataset
from minicompress.nn import backend
from minicompress.nn.gradcheck import random_params64
from minicompress.nn.linear import DENSE
from minicompress.nn.model import (
    KVCache,
    LayerShape,
    TransformerConfig,
    backward,
    count_params,
    forward,
    generate,
    init_params,
    linear_names,
    loss_and_grads,
    param_count,
)
from minicompress.nn.ops import (
    cross_entropy_backward,
    cross_entropy_forward,
    l2_normalize_backward,
    l2_normalize_forward,
    mean_pool_backward,
    mean_pool_forward,
)
from minicompress.nn.train import TrainConfig, train

OPS = {"reference": backend.NUMPY_OPS, "fused": backend.NUMBA_OPS}
TINY = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, mlp_ratio=2)


# ----------------------------------------------------------------------------------------
# float64 finite differences of the whole model
# ----------------------------------------------------------------------------------------

# right padding in bidirectional and causal mode: every query sees at least one real key
# (a query that sees no key is tested in test_nn_attention and test_nn_fused)
PAD = np.array([[False, False, False, False, True], [False, False, False, True, True]])
MODES = {
    "causal": dict(causal=True, pad=None),
    "bidirectional+pad": dict(causal=False, pad=PAD),
    "causal+pad": dict(causal=True, pad=PAD),
}


@pytest.mark.parametrize("extra", [False, True], ids=["dlogits", "dlogits+dhidden+dattn"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("ops_name", list(OPS))
def test_model_gradcheck(rng, ops_name, norm, mode, extra):
    causal, pad = MODES[mode]["causal"], MODES[mode]["pad"]
    gelu = "tanh" if norm == "pre" else "none"  # both GELU forms covered
    cfg = TransformerConfig(**TINY, norm=norm, gelu=gelu, causal=causal)
    ops = OPS[ops_name]
    params = random_params64(cfg, rng)
    idx = rng.integers(0, cfg.vocab_size, size=(2, 5))
    b, t, c, h = 2, 5, cfg.n_embd, cfg.n_head
    r = rng.standard_normal((b, t, cfg.vocab_size))
    dhidden = dattn = None
    if extra:  # a distiller's extra losses: sum(hidden[i] * dhidden[i]) + sum(attn * dattn)
        dhidden = [rng.standard_normal((b, t, c)) for _ in range(cfg.n_layer + 1)]
        dhidden[1] = None  # None entries are skipped
        dattn = [rng.standard_normal((b, h, t, t)) for _ in range(cfg.n_layer)]

    def loss():
        logits, cache = forward(params, idx, cfg, pad_mask=pad, op_impl=ops)
        total = np.sum(logits * r)
        if extra:
            total += sum(
                np.sum(x * d) for x, d in zip(cache.hidden, dhidden, strict=True) if d is not None
            )
            total += sum(np.sum(p * d) for p, d in zip(cache.attn, dattn, strict=True))
        return float(total)

    logits, cache = forward(params, idx, cfg, pad_mask=pad, op_impl=ops)
    assert logits.dtype == np.float64 and logits.shape == (b, t, cfg.vocab_size)
    grads = backward(r, cache, dhidden, dattn)
    assert grads.keys() == params.keys()
    for name, g in grads.items():
        assert g.shape == params[name].shape and g.dtype == np.float64, name
    errors = check_grads(loss, params, grads, max_entries=12, rng=rng)
    assert_grads_ok(errors)


ENCODER = dict(TINY, norm="post", gelu="none", causal=False, ln_eps=1e-12, type_vocab_size=2,
               emb_norm=True, head=False)  # fmt: skip


@pytest.mark.parametrize("shrunk", [False, True], ids=["full", "1 head + 3 neurons in block 0"])
@pytest.mark.parametrize("ops_name", list(OPS))
def test_encoder_gradcheck_through_pooling(rng, ops_name, shrunk):
    """BERT arrangement: token types, embedding LayerNorm, eps 1e-12, padding, no head; the
    loss reads the L2-normalized mean-pooled sentence embedding (sentence-transformers)."""
    cfg = TransformerConfig(**ENCODER)
    layers = [LayerShape(1, 3), LayerShape(2, 16)] if shrunk else None
    params = random_params64(cfg, rng, layers)
    idx = rng.integers(0, cfg.vocab_size, size=(2, 5))
    types = rng.integers(0, 2, size=(2, 5))
    r = rng.standard_normal((2, cfg.n_embd))
    ops = OPS[ops_name]

    def embed():
        hidden, cache = forward(params, idx, cfg, pad_mask=PAD, token_types=types, op_impl=ops)
        pooled, pool_c = mean_pool_forward(hidden, PAD)  # [B, T, C] -> [B, C]
        emb, norm_c = l2_normalize_forward(pooled)
        return emb, cache, pool_c, norm_c

    emb, cache, pool_c, norm_c = embed()
    assert emb.shape == (2, cfg.n_embd) and np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    grads = backward(mean_pool_backward(l2_normalize_backward(r, norm_c), pool_c), cache)
    assert grads.keys() == params.keys() and "wtt" in grads and "ln_emb.g" in grads
    errors = check_grads(lambda: float(np.sum(embed()[0] * r)), params, grads, max_entries=10,
                         rng=rng)  # fmt: skip
    assert_grads_ok(errors)


def test_loss_and_grads_is_cross_entropy_backward(rng):
    cfg = TransformerConfig(**TINY)
    params = random_params64(cfg, rng)
    idx = rng.integers(0, cfg.vocab_size, size=(2, 6))
    tgt = rng.integers(0, cfg.vocab_size, size=(2, 6))
    loss, grads = loss_and_grads(params, idx, tgt, cfg, op_impl=backend.NUMPY_OPS)

    def f():
        logits, _ = forward(params, idx, cfg, op_impl=backend.NUMPY_OPS)
        return float(cross_entropy_forward(logits, tgt)[0])

    assert loss == f()
    assert_grads_ok(check_grads(f, params, grads, max_entries=6, rng=rng))


# ----------------------------------------------------------------------------------------
# fused and reference backends give the same model (float32)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("causal", [True, False])
def test_fused_model_equals_reference_model(rng, norm, causal):
    cfg = TransformerConfig(**TINY, norm=norm, causal=causal)
    params = init_params(cfg, rng)
    idx = rng.integers(0, cfg.vocab_size, size=(3, 6))
    pad = np.zeros((3, 6), bool)
    pad[1, 4:] = True
    out = {}
    for name, ops in OPS.items():
        logits, cache = forward(params, idx, cfg, pad_mask=pad, op_impl=ops)
        loss, ce = cross_entropy_forward(logits, idx)
        out[name] = (logits, backward(cross_entropy_backward(1.0, ce), cache))
    assert_close(out["fused"][0], out["reference"][0], rtol=1e-5, atol=1e-6, name="logits")
    for key, g in out["reference"][1].items():
        scale = float(np.abs(g).max())
        assert_close(out["fused"][1][key], g, rtol=1e-4, atol=1e-5 * scale, name=key)


# ----------------------------------------------------------------------------------------
# properties of the forward pass
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_causal_model_does_not_look_ahead(rng, norm):
    cfg = TransformerConfig(**TINY, norm=norm)
    params = init_params(cfg, rng)
    idx = rng.integers(0, cfg.vocab_size, size=(1, 6))
    changed = idx.copy()
    changed[0, 4] = (idx[0, 4] + 1) % cfg.vocab_size
    a, _ = forward(params, idx, cfg)
    b, _ = forward(params, changed, cfg)
    np.testing.assert_array_equal(a[:, :4], b[:, :4])  # positions before 4: bit-identical
    assert not np.array_equal(a[:, 4:], b[:, 4:])


def test_bidirectional_model_ignores_padding_tokens(rng):
    cfg = TransformerConfig(**TINY, causal=False)
    params = init_params(cfg, rng)
    idx = rng.integers(0, cfg.vocab_size, size=(1, 6))
    pad = np.array([[False, False, False, False, True, True]])
    changed = idx.copy()
    changed[0, 4:] = (idx[0, 4:] + 1) % cfg.vocab_size
    a, _ = forward(params, idx, cfg, pad_mask=pad)
    b, _ = forward(params, changed, cfg, pad_mask=pad)
    assert_close(a[:, :4], b[:, :4], rtol=1e-6, atol=1e-7, name="real positions")
    c, _ = forward(params, changed, cfg)  # without the mask the padding is seen
    assert np.abs(a[:, :4] - c[:, :4]).max() > 1e-5


def test_cache_holds_hidden_states_and_attention(rng):
    cfg = TransformerConfig(**TINY)
    params = init_params(cfg, rng)
    logits, cache = forward(params, rng.integers(0, 7, size=(2, 5)), cfg)
    assert logits.dtype == np.float32 and logits.shape == (2, 5, 7)
    assert [h.shape for h in cache.hidden] == [(2, 5, 8)] * 3
    assert [p.shape for p in cache.attn] == [(2, 2, 5, 5)] * 2
    for p in cache.attn:
        np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
        assert (np.triu(p, k=1) == 0).all()


def test_linear_hook_sees_every_layer_in_order(rng):
    cfg = TransformerConfig(**TINY)
    params = init_params(cfg, rng)
    calls = []

    class Recorder:
        def forward(self, name, x, w, b):
            calls.append(("f", name))
            return DENSE.forward(name, x, w, b)

        def backward(self, name, dy, cache):
            calls.append(("b", name))
            return DENSE.backward(name, dy, cache)

    idx = rng.integers(0, 7, size=(1, 4))
    loss_and_grads(params, idx, idx, cfg, linear=Recorder())
    names = linear_names(cfg)
    assert [n for k, n in calls if k == "f"] == names
    assert sorted(n for k, n in calls if k == "b") == sorted(names)


def test_init_params(rng):
    cfg = TransformerConfig(**TINY)
    params = init_params(cfg, rng)
    assert all(a.dtype == np.float32 for a in params.values())
    assert params["blocks.1.attn.qkv.w"].shape == (8, 24)
    assert params["blocks.0.mlp.proj.w"].shape == (16, 8)
    assert params["head.w"].shape == (8, 7) and "head.b" not in params
    for name in linear_names(cfg)[:-1]:
        assert name + ".w" in params and name + ".b" in params
    per_block = 2 * 2 * 8 + (8 * 24 + 24) + (8 * 8 + 8) + (8 * 16 + 16) + (16 * 8 + 8)
    assert count_params(params) == 7 * 8 + 6 * 8 + 2 * per_block + 2 * 8 + 8 * 7
    again = init_params(cfg, np.random.default_rng(20240611))
    assert all(np.array_equal(params[k], again[k]) for k in params)  # same seed, same numbers
    with pytest.raises(TypeError, match="rng"):
        init_params(cfg, 0)


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------


def test_config_refuses_indivisible_heads():
    with pytest.raises(ValueError, match="n_embd.*n_head"):
        TransformerConfig(vocab_size=5, n_embd=10, n_head=3)


@pytest.mark.parametrize(
    "field", ["vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"]
)
@pytest.mark.parametrize("value", [0, -2, 2.0, True])
def test_config_refuses_non_positive_sizes(field, value):
    kwargs = dict(TINY, **{field: value})
    with pytest.raises((ValueError, TypeError), match=field):
        TransformerConfig(**kwargs)


@pytest.mark.parametrize("field, value", [("norm", "mid"), ("gelu", "relu")])
def test_config_refuses_unknown_choices(field, value):
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**TINY, **{field: value})


@pytest.mark.parametrize("bad", [-1, 7])
def test_forward_refuses_tokens_outside_vocabulary(rng, bad):
    cfg = TransformerConfig(**TINY)
    idx = np.array([[0, 1, bad]])
    with pytest.raises(ValueError, match=r"idx.*\[0, 7\)"):
        forward(init_params(cfg, rng), idx, cfg)


def test_forward_refuses_sequences_longer_than_block_size(rng):
    cfg = TransformerConfig(**TINY)
    with pytest.raises(ValueError, match="idx.*block_size=6"):
        forward(init_params(cfg, rng), np.zeros((1, 7), np.int64), cfg)


def test_forward_names_a_missing_parameter(rng):
    cfg = TransformerConfig(**TINY)
    params = init_params(cfg, rng)
    forward(params, np.zeros((1, 4), np.int64), cfg)  # complete: runs
    del params["blocks.1.mlp.fc.b"]
    with pytest.raises(ValueError, match=r"params lacks \['blocks.1.mlp.fc.b'\]"):
        forward(params, np.zeros((1, 4), np.int64), cfg)
    with pytest.raises(TypeError, match="params must be a dict"):
        forward(list(params.values()), np.zeros((1, 4), np.int64), cfg)


@pytest.mark.parametrize("idx", [np.zeros(4, np.int64), np.zeros((1, 4))], ids=["1-D", "float"])
def test_forward_refuses_non_token_arrays(rng, idx):
    cfg = TransformerConfig(**TINY)
    with pytest.raises(ValueError, match="idx"):
        forward(init_params(cfg, rng), idx, cfg)


@pytest.mark.parametrize("shape", [(1, 4), (2, 3)], ids=["batch 1 of 2", "T-1"])
@pytest.mark.parametrize("ops_name", list(OPS))
def test_forward_refuses_pad_mask_of_wrong_shape(rng, ops_name, shape):
    cfg = TransformerConfig(**TINY, causal=False)
    idx = rng.integers(0, cfg.vocab_size, size=(2, 4))
    with pytest.raises(ValueError, match="pad_mask"):
        pad = np.zeros(shape, bool)
        forward(init_params(cfg, rng), idx, cfg, pad_mask=pad, op_impl=OPS[ops_name])


# ----------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------


def test_generate(rng):
    cfg = TransformerConfig(**TINY)
    params = init_params(cfg, rng)
    prompt = np.array([1, 2, 3])
    out = generate(params, cfg, prompt, 10, np.random.default_rng(5))  # past block_size
    assert out.dtype == np.int64 and out.shape == (13,)
    np.testing.assert_array_equal(out[:3], prompt)
    assert out.min() >= 0 and out.max() < cfg.vocab_size
    np.testing.assert_array_equal(out, generate(params, cfg, prompt, 10, np.random.default_rng(5)))
    # greedy: each new token is the argmax of the logits of the context
    greedy = generate(params, cfg, prompt, 2, rng, temperature=0)
    logits, _ = forward(params, greedy[None, :3], cfg)
    assert greedy[3] == np.argmax(logits[0, -1])
    top1 = generate(params, cfg, prompt, 2, rng, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1, greedy)  # top_k=1 is greedy too


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_tokens=-1), "n_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=8), "top_k"),
    ],
)
def test_generate_refuses_bad_arguments(rng, kwargs, name):
    cfg = TransformerConfig(**TINY)
    args = dict(n_tokens=2) | kwargs
    with pytest.raises(ValueError, match=name):
        generate(init_params(cfg, rng), cfg, np.array([1]), rng=rng, **args)


@pytest.mark.parametrize(
    "prompt, kwargs, error, name",
    [
        (np.array([[1, 2]]), {}, ValueError, "prompt"),  # 2-D: would be flattened
        (np.array([1.7, 2.0]), {}, ValueError, "prompt"),  # float ids: would be truncated
        (np.array([], np.int64), {}, ValueError, "prompt"),
        (np.array([9]), {}, ValueError, "prompt"),  # outside the vocabulary
        (np.array([1]), dict(top_k=True), TypeError, "top_k"),  # a bool is not 1
        (np.array([1]), dict(top_k=1.5), TypeError, "top_k"),
        (np.array([1]), dict(temperature=float("nan")), ValueError, "temperature"),
        (np.array([1]), dict(temperature="0.5"), TypeError, "temperature"),
        (np.array([1]), dict(n_tokens=2.0), TypeError, "n_tokens"),
    ],
)
def test_generate_refuses_misreadable_input(rng, prompt, kwargs, error, name):
    cfg = TransformerConfig(**TINY)
    args = dict(n_tokens=2) | kwargs
    with pytest.raises(error, match=name):
        generate(init_params(cfg, rng), cfg, prompt, rng=rng, **args)


def test_forward_refuses_empty_input_and_missing_parameters(rng):
    cfg = TransformerConfig(**TINY)
    params = init_params(cfg, rng)
    with pytest.raises(ValueError, match="at least one"):
        forward(params, np.zeros((1, 0), np.int64), cfg)
    del params["blocks.1.ln2.g"]
    with pytest.raises(ValueError, match=r"blocks\.1\.ln2\.g"):
        forward(params, np.zeros((1, 3), np.int64), cfg)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(causal="false"), TypeError, "causal"),  # a non-empty string would count as True
        (dict(head=1), TypeError, "head"),
        (dict(ln_eps=0.0), ValueError, "ln_eps"),
        (dict(ln_eps=float("nan")), ValueError, "ln_eps"),
        (dict(type_vocab_size=-1), ValueError, "type_vocab_size"),
    ],
)
def test_config_refuses_misreadable_values(kwargs, error, name):
    with pytest.raises(error, match=name):
        TransformerConfig(**TINY, **kwargs)


def test_config_round_trip_and_numpy_integers():
    cfg = TransformerConfig(**dict(TINY, n_layer=np.int64(2)), causal=np.bool_(False))
    assert type(cfg.n_layer) is int and type(cfg.causal) is bool
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        TransformerConfig.from_dict({**cfg.to_dict(), "n_heads": 3})


def test_a_model_that_cannot_fit_in_memory_is_refused_before_allocating(rng):
    cfg = TransformerConfig(vocab_size=10, n_embd=2**20, n_head=1, n_layer=64)
    assert param_count(cfg) > 10**12
    with pytest.raises(ValueError, match="memory"):
        init_params(cfg, rng)


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_param_count_matches_init_params(rng, layers):
    for kw in (TINY, ENCODER):
        cfg = TransformerConfig(**{**kw, "n_layer": layers})
        assert param_count(cfg) == count_params(init_params(cfg, rng))
    assert param_count(TransformerConfig(**dict(TINY, n_layer=2**40))) > 2**40  # no allocation


# ----------------------------------------------------------------------------------------
# training: same seed, same numbers; the model learns
# ----------------------------------------------------------------------------------------

TEXT = "the quick brown fox jumps over the lazy dog. " * 40
TRAIN_CFG = dict(vocab_size=1, block_size=16, n_layer=1, n_head=2, n_embd=16)
TRAIN_TC = TrainConfig(
    batch_size=8, steps=12, lr=1e-2, min_lr=1e-3, warmup=3, eval_every=6, eval_windows=4, seed=3
)


def _train_once(tc=TRAIN_TC, seed=0):
    data = make_dataset(TEXT, TRAIN_CFG["block_size"])
    cfg = TransformerConfig(**dict(TRAIN_CFG, vocab_size=data.tokenizer.vocab_size))
    params = init_params(cfg, np.random.default_rng([seed, 0]))
    hist = train(params, cfg, data, tc, progress=False)
    return params, hist, cfg, data


def test_training_is_bit_identical_in_process():
    p1, h1, _, _ = _train_once()
    p2, h2, _, _ = _train_once()
    assert h1.loss == h2.loss and h1.val_loss == h2.val_loss
    assert p1.keys() == p2.keys()
    for k in p1:
        assert np.array_equal(p1[k], p2[k]), k
    p3, h3, _, _ = _train_once(replace(TRAIN_TC, seed=4))  # and the seed matters
    assert h3.loss != h1.loss


def test_training_is_bit_identical_in_a_subprocess(tmp_path):
    p1, h1, _, _ = _train_once()
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        from test_nn_model import _train_once
        params, hist, _, _ = _train_once()
        np.savez({str(tmp_path / "p.npz")!r}, loss=np.array(hist.loss), **params)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with np.load(tmp_path / "p.npz") as z:
        assert np.array_equal(z["loss"], np.array(h1.loss))
        for k in p1:
            assert np.array_equal(z[k], p1[k]), k


def test_model_learns_a_repeated_text():
    tc = replace(TRAIN_TC, steps=60, warmup=5, lr=1e-2, eval_every=0)
    params, hist, cfg, data = _train_once(tc)
    chance = math.log(cfg.vocab_size)  # loss of a uniform guess
    first, last = np.mean(hist.loss[:3]), np.mean(hist.loss[-5:])
    assert first > 0.8 * chance  # it starts near chance...
    assert last < 0.25 * chance, (first, last, chance)  # ...and ends far below it
    assert hist.val_loss[-1] < 0.25 * chance


# ----------------------------------------------------------------------------------------
# the key/value cache
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ops_name", list(OPS))
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_kv_cache_positions_equal_the_full_forward(rng, ops_name, norm):
    """Prefill 3 positions, then feed 1, then 2: each call's logits equal the rows of one
    forward pass over the whole sequence."""
    cfg = TransformerConfig(**TINY, norm=norm)
    params = random_params64(cfg, rng, [LayerShape(1, 16), LayerShape(2, 5)])  # shrunk too
    idx = rng.integers(0, cfg.vocab_size, size=(2, 6))
    ops = OPS[ops_name]
    full, _ = forward(params, idx, cfg, op_impl=ops)
    kv = KVCache(cfg, batch_size=2)
    parts = []
    for lo, hi in [(0, 3), (3, 4), (4, 6)]:
        logits, cache = forward(params, idx[:, lo:hi], cfg, op_impl=ops, kv_cache=kv)
        parts.append(logits)
        assert kv.length == hi
    assert_close(np.concatenate(parts, axis=1), full, rtol=1e-12, atol=1e-12, name="logits")
    with pytest.raises(ValueError, match="exceed block_size"):
        forward(params, idx[:, :1], cfg, kv_cache=kv)
    with pytest.raises(ValueError, match="backward"):
        backward(np.ones_like(logits), cache)


def test_kv_cache_refuses_what_it_cannot_take(rng):
    cfg = TransformerConfig(**TINY)
    params = init_params(cfg, rng)
    idx = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="batch"):
        forward(params, idx, cfg, kv_cache=KVCache(cfg, batch_size=1))
    with pytest.raises(ValueError, match="pad_mask"):
        forward(params, idx, cfg, pad_mask=np.zeros((2, 3), bool), kv_cache=KVCache(cfg, 2))
    enc = TransformerConfig(**TINY, causal=False)
    with pytest.raises(ValueError, match="causal"):
        forward(init_params(enc, rng), idx, enc, kv_cache=KVCache(enc, 2))


@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (0.9, 3)])
def test_generation_with_the_cache_equals_generation_without(rng, temperature, top_k):
    """Greedy and sampled (same seed): the same tokens, also past block_size (the window
    slides), which a prompt of 4 and 9 new tokens with block_size 6 reaches."""
    cfg = TransformerConfig(**TINY)
    params = random_params64(cfg, rng)
    prompt = np.array([1, 5, 2, 0])
    runs = [
        generate(
            params, cfg, prompt, 9, np.random.default_rng(3), temperature, top_k, use_cache=use
        )  # fmt: skip
        for use in (True, False)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
