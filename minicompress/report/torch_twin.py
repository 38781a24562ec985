"""The model of ``nn.model`` written independently in PyTorch: the oracle of the tests and
the PyTorch contender of the benchmarks (``bench peers`` exports it to ONNX).

It follows the papers' descriptions (GPT-2: pre-LN, tanh GELU, causal; BERT: post-LN, erf
GELU, token types, LayerNorm after the embeddings, padding mask), in idiomatic torch: one
linear layer per weight (our ``[in, out]`` weights transposed to torch's ``[out, in]``),
``F.scaled_dot_product_attention``, ``F.layer_norm``, ``F.gelu``. Like our model it reads
the number of heads of each block from the width of its qkv weight (head width fixed), so a
model with heads or neurons removed runs too.

One forward, ``twin_forward``, takes the model's tensors by name and a ``linear(name, x)``;
it runs two ways:
- ``torch_params`` + ``torch_forward``: functional, on leaves that can require gradients
  (the tests compare gradients in float64);
- ``torch_twin``: an ``nn.Module`` whose linear layers are ``nn.Linear`` modules, so that
  ``torch.ao.quantization.quantize_dynamic`` can replace them and ``torch.onnx.export``
  can trace it.

PyTorch is imported by the caller (passed in) or lazily: it is an optional oracle, never a
dependency of the package. Nothing here imports the model it is a twin of.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


def _cfg_dict(cfg) -> dict:
    """Our config as a dict (``TransformerConfig.to_dict()``, or already a dict)."""
    return dict(cfg) if isinstance(cfg, Mapping) else cfg.to_dict()


def twin_forward(torch, tensor: Callable, linear: Callable, cfg, idx, pad_mask=None,
                 token_types=None, pool: bool = False):  # fmt: skip
    """Logits [B, T, V] (``cfg["head"]``), hidden states [B, T, C], or with ``pool`` the
    sentence embeddings [B, C] (mean over non-padding tokens, then L2-normalized).

    tensor(name) -> a non-linear parameter (``wte``, ``ln1.g`` ...); linear(name, x) ->
    the linear layer ``name`` (without ``.w``) applied to x; cfg: our config (dict or
    TransformerConfig); idx: int [B, T]; pad_mask: bool [B, T], True = padding;
    token_types: int [B, T] or None (zeros).
    """
    F = torch.nn.functional
    cfg = _cfg_dict(cfg)
    idx = torch.as_tensor(idx)
    b, t = idx.shape
    c, eps = cfg["n_embd"], cfg["ln_eps"]
    d = c // cfg["n_head"]
    gelu = "tanh" if cfg["gelu"] == "tanh" else "none"
    x = F.embedding(idx, tensor("wte")) + tensor("wpe")[:t]  # [B, T, C]
    if cfg["type_vocab_size"]:
        tt = torch.zeros_like(idx) if token_types is None else torch.as_tensor(token_types)
        x = x + F.embedding(tt, tensor("wtt"))
    if cfg["emb_norm"]:
        x = F.layer_norm(x, (c,), tensor("ln_emb.g"), tensor("ln_emb.b"), eps)
    pad = None if pad_mask is None else torch.as_tensor(pad_mask)
    # SDPA's boolean mask: True = may attend; without padding a causal model uses its flag
    keep = None
    if pad is not None:
        keep = ~pad[:, None, None, :]  # [B, 1, 1, T]
        if cfg["causal"]:
            keep = keep & torch.ones(t, t, dtype=torch.bool).tril()  # [B, 1, T, T]
    is_causal = bool(cfg["causal"]) and keep is None

    def attn(p, a):
        qkv = linear(p + "attn.qkv", a)  # [B, T, C] -> [B, T, 3*H*D]
        h = qkv.shape[-1] // (3 * d)
        q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in qkv.split(h * d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=is_causal)
        return linear(p + "attn.proj", y.transpose(1, 2).reshape(b, t, h * d))  # -> [B, T, C]

    def mlp(p, a):
        return linear(p + "mlp.proj", F.gelu(linear(p + "mlp.fc", a), approximate=gelu))

    def ln(p, name, a):
        return F.layer_norm(a, (c,), tensor(p + name + ".g"), tensor(p + name + ".b"), eps)

    for i in range(cfg["n_layer"]):
        p = f"blocks.{i}."
        if cfg["norm"] == "pre":  # GPT-2
            x = x + attn(p, ln(p, "ln1", x))
            x = x + mlp(p, ln(p, "ln2", x))
        else:  # BERT
            x = ln(p, "ln1", x + attn(p, x))
            x = ln(p, "ln2", x + mlp(p, x))
    if cfg["norm"] == "pre":
        x = F.layer_norm(x, (c,), tensor("ln_f.g"), tensor("ln_f.b"), eps)
    if cfg["head"]:
        return linear("head", x)  # [B, T, C] -> [B, T, V]
    if pool:
        return torch_sentence_embedding(torch, x, pad)
    return x


def torch_sentence_embedding(torch, hidden, pad_mask=None):
    """sentence-transformers' pooling: mean over non-padding tokens, then L2 normalization.
    hidden [B, T, C], pad_mask bool [B, T] (True = padding) or None -> [B, C]."""
    if pad_mask is None:
        mean = hidden.mean(1)
    else:
        keep = (~torch.as_tensor(pad_mask)).to(hidden.dtype)[:, :, None]  # [B, T, 1]
        mean = (hidden * keep).sum(1) / keep.sum(1)
    return torch.nn.functional.normalize(mean, p=2, dim=1)


# ----------------------------------------------------------------------------------------
# functional: leaves by name (gradients for the tests)
# ----------------------------------------------------------------------------------------


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


def torch_forward(torch, tp: dict, cfg, idx, pad_mask=None, token_types=None, pool=False):
    """``twin_forward`` on the leaves of ``torch_params``."""
    F = torch.nn.functional

    def linear(name, x):
        return F.linear(x, tp[name + ".w"], tp.get(name + ".b"))

    return twin_forward(torch, tp.__getitem__, linear, cfg, idx, pad_mask, token_types, pool)


# ----------------------------------------------------------------------------------------
# as an nn.Module (quantize_dynamic, ONNX export)
# ----------------------------------------------------------------------------------------


def _module_key(name: str) -> str:
    return name.replace(".", "_")  # module names may not hold dots


def torch_twin(params: dict, cfg, pool: bool = False):
    """The twin as an ``nn.Module`` in eval mode holding copies of ``params`` (their dtype):
    ``module(idx, pad_mask=None, token_types=None)`` -> ``twin_forward``'s output (with
    ``pool``, the sentence embeddings of a model without head). Every linear layer is an
    ``nn.Linear`` (our ``[K, N]`` weight stored ``[N, K]``)."""
    import torch
    from torch import nn

    cfg = _cfg_dict(cfg)

    def layer_names() -> list[str]:
        return sorted({n[:-2] for n in params if n.endswith(".w")})

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.linears = nn.ModuleDict()
            for name in layer_names():
                w, b = params[name + ".w"], params.get(name + ".b")  # [K, N], [N]
                lin = nn.Linear(w.shape[0], w.shape[1], bias=b is not None, dtype=_dtype(w))
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))  # [N, K]
                    if b is not None:
                        lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
                self.linears[_module_key(name)] = lin
            linear_keys = {n + ".w" for n in layer_names()} | {n + ".b" for n in layer_names()}
            self.tensors = nn.ParameterDict(
                {
                    _module_key(n): nn.Parameter(torch.from_numpy(np.array(a)), False)
                    for n, a in params.items()
                    if n not in linear_keys
                }
            )

        def forward(self, idx, pad_mask=None, token_types=None):
            def tensor(name):
                return self.tensors[_module_key(name)]

            def linear(name, x):
                return self.linears[_module_key(name)](x)

            return twin_forward(torch, tensor, linear, cfg, idx, pad_mask, token_types, pool)

    def _dtype(a):
        return torch.float64 if a.dtype == np.float64 else torch.float32

    return Twin().eval()
