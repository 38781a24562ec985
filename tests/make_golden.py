"""Write ``tests/golden/<op>.npz``: small inputs with PyTorch's outputs and gradients.

Run once, with torch installed, from the repository root:

    python tests/make_golden.py

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
BUILDERS = {**OPS_BUILDERS, **ATTENTION_BUILDERS}


def load_golden(name: str) -> dict[str, np.ndarray]:
    """The stored case ``name`` (a missing file is an error, not a skip)."""
    path = GOLDEN_DIR / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run python tests/make_golden.py")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def main() -> int:
    import torch

    GOLDEN_DIR.mkdir(exist_ok=True)
    for i, (name, build) in enumerate(BUILDERS.items()):
        case = build(torch, np.random.default_rng([2024, i]), np.float64)
        for k, a in case.items():
            if a.dtype == object or not np.isfinite(a.astype(np.float64)).all():
                raise RuntimeError(f"{name}.{k} is not a finite numeric array")
        path = GOLDEN_DIR / f"{name}.npz"
        np.savez_compressed(path, torch_version=np.array(torch.__version__), **case)
        print(f"{path.name}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
