"""The model of ``minicompress.nn.model`` written independently in PyTorch, as an oracle.

It follows the papers' descriptions (GPT-2: pre-LN, tanh GELU, causal; BERT: post-LN, erf
GELU, token types, LayerNorm after the embeddings, padding mask), in idiomatic torch: one
``F.linear`` per layer (our weights [in, out] transposed to torch's [out, in]),
``F.scaled_dot_product_attention`` for attention, ``F.layer_norm``, ``F.gelu``. Like our
model it reads the number of heads of each block from its qkv weight (head width fixed), so
a model with heads or neurons removed runs too. Nothing here imports minicompress.
"""

from __future__ import annotations

import numpy as np


def torch_params(torch, params: dict, requires_grad: bool = True) -> dict:
    """Our parameters as torch leaves (same names; linear weights transposed to [out, in])."""
    out = {}
    for name, a in params.items():
        if name.endswith(".w"):
            a = a.T
        out[name] = torch.tensor(np.ascontiguousarray(a), requires_grad=requires_grad)
    return out


def grads_to_ours(tp: dict) -> dict:
    """The leaves' gradients in our layout (linear weights back to [in, out])."""
    out = {}
    for name, t in tp.items():
        g = t.grad.detach().numpy().copy()
        out[name] = g.T.copy() if name.endswith(".w") else g
    return out


def torch_forward(torch, tp: dict, cfg: dict, idx, pad_mask=None, token_types=None):
    """Logits [B, T, V] (``cfg["head"]``) or hidden states [B, T, C].

    cfg: our config as a dict (``TransformerConfig.to_dict()``); idx: int [B, T];
    pad_mask: bool [B, T], True = padding; token_types: int [B, T] or None.
    """
    F = torch.nn.functional
    idx = torch.as_tensor(idx)
    b, t = idx.shape
    c, eps = cfg["n_embd"], cfg["ln_eps"]
    d = c // cfg["n_head"]
    gelu = "tanh" if cfg["gelu"] == "tanh" else "none"
    x = F.embedding(idx, tp["wte"]) + tp["wpe"][:t]
    if cfg["type_vocab_size"]:
        tt = torch.zeros_like(idx) if token_types is None else torch.as_tensor(token_types)
        x = x + F.embedding(tt, tp["wtt"])
    if cfg["emb_norm"]:
        x = F.layer_norm(x, (c,), tp["ln_emb.g"], tp["ln_emb.b"], eps)
    # SDPA's boolean mask: True = may attend
    keep = torch.ones(b, 1, t, t, dtype=torch.bool)
    if cfg["causal"]:
        keep = keep & torch.ones(t, t, dtype=torch.bool).tril()
    if pad_mask is not None:
        keep = keep & ~torch.as_tensor(pad_mask)[:, None, None, :]

    def attn(p, a):
        qkv = F.linear(a, tp[p + "attn.qkv.w"], tp[p + "attn.qkv.b"])
        h = qkv.shape[-1] // (3 * d)
        q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in qkv.split(h * d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return F.linear(
            y.transpose(1, 2).reshape(b, t, h * d), tp[p + "attn.proj.w"], tp[p + "attn.proj.b"]
        )

    def mlp(p, a):
        f = F.gelu(F.linear(a, tp[p + "mlp.fc.w"], tp[p + "mlp.fc.b"]), approximate=gelu)
        return F.linear(f, tp[p + "mlp.proj.w"], tp[p + "mlp.proj.b"])

    def ln(p, name, a):
        return F.layer_norm(a, (c,), tp[p + name + ".g"], tp[p + name + ".b"], eps)

    for i in range(cfg["n_layer"]):
        p = f"blocks.{i}."
        if cfg["norm"] == "pre":  # GPT-2
            x = x + attn(p, ln(p, "ln1", x))
            x = x + mlp(p, ln(p, "ln2", x))
        else:  # BERT
            x = ln(p, "ln1", x + attn(p, x))
            x = ln(p, "ln2", x + mlp(p, x))
    if cfg["norm"] == "pre":
        x = F.layer_norm(x, (c,), tp["ln_f.g"], tp["ln_f.b"], eps)
    if cfg["head"]:
        x = F.linear(x, tp["head.w"])
    return x


def torch_sentence_embedding(torch, hidden, pad_mask):
    """sentence-transformers' pooling: mean over non-padding tokens, then L2 normalization."""
    keep = (~torch.as_tensor(pad_mask)).to(hidden.dtype)[:, :, None]  # [B, T, 1]
    mean = (hidden * keep).sum(1) / keep.sum(1)
    return torch.nn.functional.normalize(mean, p=2, dim=1)
