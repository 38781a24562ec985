"""Write ``tests/golden/<op>.npz``: small inputs with PyTorch's outputs and gradients.

Run once, with torch installed, from the repository root:

    python tests/make_golden.py            # every case
    python tests/make_golden.py adamw      # only the cases named

Every number in a golden file comes from PyTorch (the inputs from a seeded NumPy generator);
nothing is computed by minicompress. The tests compare our ops with these files when torch is
absent, and call the same builders with fresh inputs when it is present.

Conventions (ours -> torch):
- linear: our weight is [K, N] with y = x @ w + b; ``F.linear`` takes weight [N, K] = w.T.
- attention masks. Ours: ``pad_mask`` [B, T], True = padding, must NOT be attended to (as
  ``nn.MultiheadAttention(key_padding_mask=...)``, True = ignore).
  ``F.scaled_dot_product_attention(attn_mask=bool)`` is the opposite: True = takes part.
  ``nn.MultiheadAttention(attn_mask=bool)`` is True = not allowed (like key_padding_mask).
- MHA weights: our ``qkv.w`` [C, 3C] = ``in_proj_weight.T`` (columns: q | k | v, head-major
  inside each), ``qkv.b`` = ``in_proj_bias``; our ``proj.w`` = ``out_proj.weight.T``.

Every builder takes ``(torch, rng, dtype)`` and returns a dict of NumPy arrays: the inputs,
the upstream gradient ``dy`` (for a scalar loss, none), the output(s) and the gradients.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def _leaf(torch, a, grad=True):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def _np(t):
    return t.detach().numpy().copy()


def linear(torch, rng, dtype=np.float64):
    F = torch.nn.functional
    x = rng.standard_normal((2, 3, 5)).astype(dtype)  # [B, T, K]
    w = rng.standard_normal((5, 4)).astype(dtype)  # ours [K, N]
    b = rng.standard_normal(4).astype(dtype)
    dy = rng.standard_normal((2, 3, 4)).astype(dtype)
    xt, wt, bt = _leaf(torch, x), _leaf(torch, w.T.copy()), _leaf(torch, b)  # torch w: [N, K]
    y = F.linear(xt, wt, bt)
    y.backward(torch.tensor(dy))
    return dict(
        x=x, w=w, b=b, dy=dy, y=_np(y), dx=_np(xt.grad), dw=_np(wt.grad).T.copy(), db=_np(bt.grad)
    )


def embedding(torch, rng, dtype=np.float64):
    F = torch.nn.functional
    idx = np.array([[1, 3, 3, 0], [6, 1, 3, 2]], dtype=np.int64)  # repeats: grads must add up
    table = rng.standard_normal((7, 5)).astype(dtype)  # [V, C]; row 4 and 5 unused
    dy = rng.standard_normal((2, 4, 5)).astype(dtype)
    tt = _leaf(torch, table)
    y = F.embedding(torch.tensor(idx), tt)
    y.backward(torch.tensor(dy))
    return dict(idx=idx, table=table, dy=dy, y=_np(y), dtable=_np(tt.grad))


def layernorm(torch, rng, dtype=np.float64):
    F = torch.nn.functional
    x = (rng.standard_normal((2, 3, 6)) * 3.0 + 1.5).astype(dtype)
    g = rng.standard_normal(6).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    dy = rng.standard_normal((2, 3, 6)).astype(dtype)
    xt, gt, bt = _leaf(torch, x), _leaf(torch, g), _leaf(torch, b)
    y = F.layer_norm(xt, (6,), gt, bt, eps=1e-5)
    y.backward(torch.tensor(dy))
    return dict(x=x, g=g, b=b, dy=dy, y=_np(y), dx=_np(xt.grad), dg=_np(gt.grad), db=_np(bt.grad))


def _gelu(torch, rng, dtype, approximate):
    F = torch.nn.functional
    x = np.concatenate([np.linspace(-6, 6, 13), rng.standard_normal(11) * 2]).astype(dtype)
    x = x.reshape(4, 6)
    dy = rng.standard_normal((4, 6)).astype(dtype)
    xt = _leaf(torch, x)
    y = F.gelu(xt, approximate=approximate)
    y.backward(torch.tensor(dy))
    return dict(x=x, dy=dy, y=_np(y), dx=_np(xt.grad))


def gelu_tanh(torch, rng, dtype=np.float64):
    return _gelu(torch, rng, dtype, "tanh")


def gelu_erf(torch, rng, dtype=np.float64):
    return _gelu(torch, rng, dtype, "none")


def softmax(torch, rng, dtype=np.float64):
    x = (rng.standard_normal((3, 2, 7)) * 4.0).astype(dtype)
    x[0, 0, 0] = 700.0 if dtype == np.float64 else 80.0  # exp would overflow without the shift
    dy = rng.standard_normal((3, 2, 7)).astype(dtype)
    xt = _leaf(torch, x)
    y = torch.softmax(xt, dim=-1)
    y.backward(torch.tensor(dy))
    return dict(x=x, dy=dy, y=_np(y), dx=_np(xt.grad))


def cross_entropy(torch, rng, dtype=np.float64):
    F = torch.nn.functional
    logits = (rng.standard_normal((2, 3, 5)) * 2.0).astype(dtype)  # [B, T, V]
    targets = rng.integers(0, 5, size=(2, 3))
    lt = _leaf(torch, logits)
    loss = F.cross_entropy(lt.reshape(-1, 5), torch.tensor(targets.reshape(-1)))  # mean
    loss.backward()
    return dict(logits=logits, targets=targets, loss=_np(loss), dlogits=_np(lt.grad))


# right padding: every query still sees at least one real key, so torch (which gives NaN
# for a query that sees no key) and ours (a uniform row, meant to be ignored) are comparable
PAD_MASK = np.array([[False, False, False, True, True], [False, False, False, False, False]])


def _sdpa(torch, rng, dtype, causal, pad_mask):
    F = torch.nn.functional
    q, k, v, dy = (rng.standard_normal((2, 2, 5, 3)).astype(dtype) for _ in range(4))
    qt, kt, vt = _leaf(torch, q), _leaf(torch, k), _leaf(torch, v)
    attn_mask = None
    if pad_mask is not None:
        keep = torch.tensor(~pad_mask)[:, None, None, :]  # SDPA bool mask: True = takes part
        if causal:
            keep = keep & torch.ones(5, 5, dtype=torch.bool).tril()
        attn_mask = keep  # [B, 1, 1 or T, T]
    y = F.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=attn_mask, is_causal=causal and pad_mask is None
    )
    y.backward(torch.tensor(dy))
    out = dict(
        q=q,
        k=k,
        v=v,
        dy=dy,
        y=_np(y),
        dq=_np(qt.grad),
        dk=_np(kt.grad),
        dv=_np(vt.grad),
        causal=np.array(causal),
    )
    if pad_mask is not None:
        out["pad_mask"] = pad_mask
    return out


def sdpa_causal(torch, rng, dtype=np.float64):
    return _sdpa(torch, rng, dtype, True, None)


def sdpa_bidirectional(torch, rng, dtype=np.float64):
    return _sdpa(torch, rng, dtype, False, None)


def sdpa_pad(torch, rng, dtype=np.float64):
    return _sdpa(torch, rng, dtype, False, PAD_MASK)


def sdpa_causal_pad(torch, rng, dtype=np.float64):
    return _sdpa(torch, rng, dtype, True, PAD_MASK)


def _mha(torch, rng, dtype, causal, pad_mask):
    c, h, t = 8, 2, 5
    x = rng.standard_normal((2, t, c)).astype(dtype)
    dy = rng.standard_normal((2, t, c)).astype(dtype)
    mha = torch.nn.MultiheadAttention(
        c, h, batch_first=True, dtype=torch.float64 if dtype == np.float64 else torch.float32
    )
    in_w = (rng.standard_normal((3 * c, c)) * 0.5).astype(dtype)  # torch layout [3C, C]
    in_b = (rng.standard_normal(3 * c) * 0.1).astype(dtype)
    out_w = (rng.standard_normal((c, c)) * 0.5).astype(dtype)  # [C_out, C_in]
    out_b = (rng.standard_normal(c) * 0.1).astype(dtype)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.tensor(in_w))
        mha.in_proj_bias.copy_(torch.tensor(in_b))
        mha.out_proj.weight.copy_(torch.tensor(out_w))
        mha.out_proj.bias.copy_(torch.tensor(out_b))
    xt = _leaf(torch, x)
    # nn.MultiheadAttention masks: bool True = may NOT attend (both attn_mask and
    # key_padding_mask), the same sense as our pad_mask
    attn_mask = torch.ones(t, t, dtype=torch.bool).triu(1) if causal else None
    kpm = None if pad_mask is None else torch.tensor(pad_mask)
    y, _ = mha(xt, xt, xt, key_padding_mask=kpm, attn_mask=attn_mask, need_weights=False)
    y.backward(torch.tensor(dy))
    out = dict(
        x=x,
        dy=dy,
        n_head=np.array(h),
        causal=np.array(causal),
        qkv_w=in_w.T.copy(),
        qkv_b=in_b,
        proj_w=out_w.T.copy(),
        proj_b=out_b,  # our layout
        y=_np(y),
        dx=_np(xt.grad),
        dqkv_w=_np(mha.in_proj_weight.grad).T.copy(),
        dqkv_b=_np(mha.in_proj_bias.grad),
        dproj_w=_np(mha.out_proj.weight.grad).T.copy(),
        dproj_b=_np(mha.out_proj.bias.grad),
    )
    if pad_mask is not None:
        out["pad_mask"] = pad_mask
    return out


def mha_causal(torch, rng, dtype=np.float64):
    return _mha(torch, rng, dtype, True, None)


def mha_pad(torch, rng, dtype=np.float64):
    return _mha(torch, rng, dtype, False, PAD_MASK)


# ----------------------------------------------------------------------------------------
# whole models (the torch twin of tests/torch_twin.py) and AdamW over several steps
# ----------------------------------------------------------------------------------------


def _model_params(rng, cfg: dict, layers: list[tuple[int, int]], dtype) -> dict:
    """O(1) random parameters with our names and layouts; layers: (heads, MLP width) each."""
    c, v, d = cfg["n_embd"], cfg["vocab_size"], cfg["n_embd"] // cfg["n_head"]
    shapes = {"wte": (v, c), "wpe": (cfg["block_size"], c)}
    if cfg["type_vocab_size"]:
        shapes["wtt"] = (cfg["type_vocab_size"], c)
    if cfg["emb_norm"]:
        shapes.update({"ln_emb.g": (c,), "ln_emb.b": (c,)})
    for i, (h, f) in enumerate(layers):
        p = f"blocks.{i}."
        shapes.update({p + "ln1.g": (c,), p + "ln1.b": (c,), p + "ln2.g": (c,), p + "ln2.b": (c,)})
        shapes.update({p + "attn.qkv.w": (c, 3 * h * d), p + "attn.qkv.b": (3 * h * d,)})
        shapes.update({p + "attn.proj.w": (h * d, c), p + "attn.proj.b": (c,)})
        shapes.update({p + "mlp.fc.w": (c, f), p + "mlp.fc.b": (f,)})
        shapes.update({p + "mlp.proj.w": (f, c), p + "mlp.proj.b": (c,)})
    if cfg["norm"] == "pre":
        shapes.update({"ln_f.g": (c,), "ln_f.b": (c,)})
    if cfg["head"]:
        shapes["head.w"] = (c, v)
    out = {}
    for name, shape in shapes.items():
        scale = 0.5 if len(shape) == 2 else 0.2
        out[name] = (rng.standard_normal(shape) * scale + (name.endswith(".g"))).astype(dtype)
    return out


def _model_case(torch, rng, dtype, cfg, layers, pad_mask=None, with_types=False, pool=False):
    from torch_twin import grads_to_ours, torch_forward, torch_params, torch_sentence_embedding

    params = _model_params(rng, cfg, layers, dtype)
    b, t = (2, 5) if pad_mask is None else pad_mask.shape
    idx = rng.integers(0, cfg["vocab_size"], size=(b, t))
    types = rng.integers(0, cfg["type_vocab_size"], size=(b, t)) if with_types else None
    tp = torch_params(torch, params)
    out = torch_forward(torch, tp, cfg, idx, pad_mask, types)
    if pool:
        out = torch_sentence_embedding(torch, out, pad_mask)
    dy = rng.standard_normal(tuple(out.shape)).astype(dtype)
    out.backward(torch.tensor(dy))
    case = dict(config=np.array(json.dumps(cfg)), idx=idx, dy=dy, y=_np(out))
    case.update({"p." + k: a for k, a in params.items()})
    case.update({"g." + k: a for k, a in grads_to_ours(tp).items()})
    if pad_mask is not None:
        case["pad_mask"] = pad_mask
    if types is not None:
        case["token_types"] = types
    return case


_DECODER = dict(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8, mlp_ratio=2,
                causal=True, ln_eps=1e-5, type_vocab_size=0, emb_norm=False, head=True)  # fmt: skip


def model_pre(torch, rng, dtype=np.float64):
    """GPT-2 arrangement: pre-LN, tanh GELU, causal, output head."""
    cfg = dict(_DECODER, norm="pre", gelu="tanh")
    return _model_case(torch, rng, dtype, cfg, [(2, 16), (2, 16)])


def model_post(torch, rng, dtype=np.float64):
    """Post-LN, erf GELU, bidirectional with padding, output head."""
    cfg = dict(_DECODER, norm="post", gelu="none", causal=False)
    return _model_case(torch, rng, dtype, cfg, [(2, 16), (2, 16)], pad_mask=PAD_MASK)


def encoder(torch, rng, dtype=np.float64):
    """BERT arrangement (post-LN, erf GELU, token types, embedding LayerNorm, eps 1e-12,
    padding, no head) with a shrunk first block (1 head of 2, 5 neurons of 16), pooled and
    normalized as sentence-transformers does."""
    cfg = dict(_DECODER, norm="post", gelu="none", causal=False, ln_eps=1e-12,
               type_vocab_size=2, emb_norm=True, head=False)  # fmt: skip
    return _model_case(
        torch, rng, dtype, cfg, [(1, 5), (2, 16)], pad_mask=PAD_MASK, with_types=True, pool=True
    )


def adamw(torch, rng, dtype=np.float64):
    """torch.optim.AdamW over 6 steps with a changing lr: a matrix (decayed) and a vector
    (not decayed), gradients drawn per step."""
    w = rng.standard_normal((3, 4)).astype(dtype)
    v = rng.standard_normal(4).astype(dtype)
    steps, lrs = 6, np.array([1e-2, 2e-2, 3e-2, 2.5e-2, 1e-2, 5e-3])
    gw = rng.standard_normal((steps, 3, 4)).astype(dtype)
    gv = rng.standard_normal((steps, 4)).astype(dtype)
    tw, tv = _leaf(torch, w), _leaf(torch, v)
    opt = torch.optim.AdamW(
        [{"params": [tw], "weight_decay": 0.1}, {"params": [tv], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
    )  # fmt: skip
    ws, vs = [], []
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = float(lrs[i])
        tw.grad, tv.grad = torch.tensor(gw[i]), torch.tensor(gv[i])
        opt.step()
        ws.append(_np(tw))
        vs.append(_np(tv))
    return dict(w=w, v=v, gw=gw, gv=gv, lrs=lrs, w_after=np.stack(ws), v_after=np.stack(vs))


MODEL_BUILDERS = {"model_pre": model_pre, "model_post": model_post, "encoder": encoder}


OPS_BUILDERS = {
    "linear": linear,
    "embedding": embedding,
    "layernorm": layernorm,
    "gelu_tanh": gelu_tanh,
    "gelu_erf": gelu_erf,
    "softmax": softmax,
    "cross_entropy": cross_entropy,
}
ATTENTION_BUILDERS = {
    "sdpa_causal": sdpa_causal,
    "sdpa_bidirectional": sdpa_bidirectional,
    "sdpa_pad": sdpa_pad,
    "sdpa_causal_pad": sdpa_causal_pad,
    "mha_causal": mha_causal,
    "mha_pad": mha_pad,
}
BUILDERS = {**OPS_BUILDERS, **ATTENTION_BUILDERS, **MODEL_BUILDERS, "adamw": adamw}


def load_golden(name: str) -> dict[str, np.ndarray]:
    """The stored case ``name`` (a missing file is an error, not a skip)."""
    path = GOLDEN_DIR / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run python tests/make_golden.py")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def main(names: list[str]) -> int:
    """Write the golden files of ``names`` (default: all). Each case's seed is its position
    in BUILDERS, so writing one case leaves the others' files as they are."""
    import torch

    GOLDEN_DIR.mkdir(exist_ok=True)
    unknown = sorted(set(names) - set(BUILDERS))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {', '.join(BUILDERS)}")
    for i, (name, build) in enumerate(BUILDERS.items()):
        if names and name not in names:
            continue
        case = build(torch, np.random.default_rng([2024, i]), np.float64)
        for k, a in case.items():
            if a.dtype.kind == "U":  # a JSON config
                continue
            if a.dtype == object or not np.isfinite(a.astype(np.float64)).all():
                raise RuntimeError(f"{name}.{k} is not a finite numeric array")
        path = GOLDEN_DIR / f"{name}.npz"
        np.savez_compressed(path, torch_version=np.array(torch.__version__), **case)
        print(f"{path.name}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
