"""A small Transformer language model with explicit forward and backward passes.

Parameters are a flat ``dict[str, np.ndarray]`` with dotted names
(``"blocks.0.attn.qkv.w"``); gradients come back with the same keys, so masks, quantization
parameters and optimizer state can all address a weight by name.

Where compression hooks in:
- every linear layer goes through a ``linear`` object with ``forward(name, x, w, b)`` and
  ``backward(name, dy, cache)``: a quantizer fakes-quantizes ``x`` and ``w`` there (with a
  straight-through backward), a runtime swaps the matmul for an int8 or sparse kernel;
- a pruner holds masks keyed by parameter name and multiplies them into ``params``/``grads``;
- a distiller reads ``cache.hidden`` (the input of every block and the last block's output)
  and ``cache.attn`` (the attention probabilities of every layer) and may send gradients
  back into them through ``backward(..., dhidden=, dattn=)``.

Shape letters: B batch, T sequence, C width, H heads, D = C / H, F = mlp_ratio * C, V vocab.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from minicompress.nn.attention import check_pad_mask, merge_heads, split_heads, split_qkv
from minicompress.nn.backend import TrainingOps, select_ops
from minicompress.nn.ops import (
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_forward,
    linear_backward,
    linear_forward,
)


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of the model. The defaults are the teacher of the demo (~0.8M parameters)."""

    vocab_size: int  # V: number of distinct tokens (characters for the built-in corpus)
    block_size: int = 128  # longest sequence the position table holds
    n_layer: int = 4  # number of Transformer blocks
    n_head: int = 4  # attention heads per block; must divide n_embd
    n_embd: int = 128  # C: width of the residual stream
    mlp_ratio: int = 4  # F = mlp_ratio * C: hidden width of the MLP
    norm: str = "pre"  # "pre" (GPT-2: x + f(ln(x))) or "post" (BERT: ln(x + f(x)))
    gelu: str = "tanh"  # "tanh" (GPT-2) or "none" (the exact erf form, BERT)
    causal: bool = True  # decoder (True) or bidirectional encoder (False)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post'; got {self.norm!r}")
        if self.gelu not in ("tanh", "none"):
            raise ValueError(f"gelu must be 'tanh' or 'none'; got {self.gelu!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def linear_names(cfg: TransformerConfig) -> list[str]:
    """Names (without ``.w``/``.b``) of every linear layer, in forward order."""
    names = []
    for i in range(cfg.n_layer):
        names += [f"blocks.{i}.attn.qkv", f"blocks.{i}.attn.proj"]
        names += [f"blocks.{i}.mlp.fc", f"blocks.{i}.mlp.proj"]
    return [*names, "head"]


def init_params(cfg: TransformerConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """GPT-2 initialisation: N(0, 0.02) weights, N(0, 0.02 / sqrt(2 n_layer)) for the
    projections into the residual stream, zero biases, unit LayerNorm gains. float32."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    c, f = cfg.n_embd, cfg.mlp_ratio * cfg.n_embd

    def normal(shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    p = {"wte": normal((cfg.vocab_size, c)), "wpe": normal((cfg.block_size, c))}
    resid_std = 0.02 / np.sqrt(2 * cfg.n_layer)
    for i in range(cfg.n_layer):
        pre = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            p[pre + ln + ".g"] = np.ones(c, np.float32)
            p[pre + ln + ".b"] = np.zeros(c, np.float32)
        for name, shape, std in [
            ("attn.qkv", (c, 3 * c), 0.02),
            ("attn.proj", (c, c), resid_std),
            ("mlp.fc", (c, f), 0.02),
            ("mlp.proj", (f, c), resid_std),
        ]:
            p[pre + name + ".w"] = normal(shape, std)
            p[pre + name + ".b"] = np.zeros(shape[1], np.float32)
    if cfg.norm == "pre":
        p["ln_f.g"] = np.ones(c, np.float32)
        p["ln_f.b"] = np.zeros(c, np.float32)
    p["head.w"] = normal((c, cfg.vocab_size))
    return p


def count_params(params: dict[str, np.ndarray]) -> int:
    return int(sum(a.size for a in params.values()))


class DenseLinear:
    """The plain linear layer ``y = x @ w + b``. Quantizers, pruners and runtimes provide an
    object with the same two methods; ``name`` is the layer's name (``"blocks.0.mlp.fc"``)."""

    def forward(self, name: str, x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
        return linear_forward(x, w, b)

    def backward(self, name: str, dy: np.ndarray, cache):
        return linear_backward(dy, cache)


DENSE = DenseLinear()


class BlockCache(NamedTuple):
    ln1: object
    qkv: object
    att: object
    proj: object
    ln2: object
    fc: object
    gelu: object
    mlp_proj: object


class ModelCache(NamedTuple):
    cfg: TransformerConfig
    linear: object  # the linear-layer object used in the forward pass
    ops: TrainingOps  # NumPy or Numba implementations of LN, GELU and attention
    emb: tuple  # (token cache, position cache)
    blocks: list  # [BlockCache] * n_layer
    ln_f: object  # LayerNormCache (pre-LN) or None
    head: object  # cache of the output projection
    hidden: list  # n_layer + 1 arrays [B, T, C]: input of every block, last block's output
    attn: list  # n_layer arrays [B, H, T, T]: attention probabilities
    pad_mask: np.ndarray | None


def check_tokens(idx: np.ndarray, cfg: TransformerConfig, name: str = "idx") -> np.ndarray:
    """Refuse token ids the model cannot take: not a 2-D int array, ids outside [0, V),
    sequences longer than block_size."""
    idx = np.asarray(idx)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must be a 2-D integer array [B, T]; got {idx.dtype} {idx.shape}")
    if idx.shape[1] > cfg.block_size:
        raise ValueError(
            f"{name} has sequences of length {idx.shape[1]}, longer than block_size="
            f"{cfg.block_size}"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= cfg.vocab_size):
        raise ValueError(
            f"{name} holds token ids in [{idx.min()}, {idx.max()}]; allowed [0, {cfg.vocab_size})"
        )
    return idx


def _block_forward(p, pre, x, cfg, linear, ops, pad_mask):
    """One Transformer block. pre-LN: x + attn(ln1(x)), then + mlp(ln2(.));
    post-LN: ln1(x + attn(x)), then ln2(. + mlp(.))."""
    h = cfg.n_head
    post = cfg.norm == "post"
    if post:
        a_in, ln1 = x, None
    else:
        a_in, ln1 = ops.layernorm_forward(x, p[pre + "ln1.g"], p[pre + "ln1.b"])
    qkv, qkv_c = linear.forward(
        pre + "attn.qkv", a_in, p[pre + "attn.qkv.w"], p[pre + "attn.qkv.b"]
    )  # [B, T, C] -> [B, T, 3C]
    q, k, v = split_qkv(qkv, h)  # [B, T, 3C] -> 3 x [B, H, T, D]
    y, att_c = ops.attention_forward(q, k, v, cfg.causal, pad_mask)  # [B, H, T, D]
    a, proj_c = linear.forward(
        pre + "attn.proj", merge_heads(y), p[pre + "attn.proj.w"], p[pre + "attn.proj.b"]
    )  # [B, T, C]
    x = x + a
    if post:
        x, ln1 = ops.layernorm_forward(x, p[pre + "ln1.g"], p[pre + "ln1.b"])
        m_in, ln2 = x, None
    else:
        m_in, ln2 = ops.layernorm_forward(x, p[pre + "ln2.g"], p[pre + "ln2.b"])
    f, fc_c = linear.forward(
        pre + "mlp.fc", m_in, p[pre + "mlp.fc.w"], p[pre + "mlp.fc.b"]
    )  # [B, T, C] -> [B, T, F]
    g, gelu_c = ops.gelu_forward(f, cfg.gelu)  # [B, T, F]
    m, mp_c = linear.forward(
        pre + "mlp.proj", g, p[pre + "mlp.proj.w"], p[pre + "mlp.proj.b"]
    )  # [B, T, F] -> [B, T, C]
    x = x + m
    if post:
        x, ln2 = ops.layernorm_forward(x, p[pre + "ln2.g"], p[pre + "ln2.b"])
    return x, BlockCache(ln1, qkv_c, att_c, proj_c, ln2, fc_c, gelu_c, mp_c)


def _block_backward(dx, bc, pre, cfg, linear, ops, grads, dp_extra):
    """Backward of ``_block_forward``: dx [B, T, C] of the output -> dx of the input."""
    post = cfg.norm == "post"
    if post:
        dx, grads[pre + "ln2.g"], grads[pre + "ln2.b"] = ops.layernorm_backward(dx, bc.ln2)
    dg, grads[pre + "mlp.proj.w"], grads[pre + "mlp.proj.b"] = linear.backward(
        pre + "mlp.proj", dx, bc.mlp_proj
    )  # [B, T, F]
    df = ops.gelu_backward(dg, bc.gelu)
    dm_in, grads[pre + "mlp.fc.w"], grads[pre + "mlp.fc.b"] = linear.backward(
        pre + "mlp.fc", df, bc.fc
    )  # [B, T, C]
    if post:
        dx = dx + dm_in
        dx, grads[pre + "ln1.g"], grads[pre + "ln1.b"] = ops.layernorm_backward(dx, bc.ln1)
    else:
        dln, grads[pre + "ln2.g"], grads[pre + "ln2.b"] = ops.layernorm_backward(dm_in, bc.ln2)
        dx = dx + dln
    dmerged, grads[pre + "attn.proj.w"], grads[pre + "attn.proj.b"] = linear.backward(
        pre + "attn.proj", dx, bc.proj
    )  # [B, T, C]
    b, t, c = dmerged.shape
    h = cfg.n_head
    dy = split_heads(dmerged, h)  # [B, T, C] -> [B, H, T, D]
    dq, dk, dv = ops.attention_backward(dy, bc.att, dp_extra)
    dqkv = np.empty((b, t, 3, h, c // h), dtype=dx.dtype)  # [B, T, 3, H, D]
    for i, d in enumerate((dq, dk, dv)):
        dqkv[:, :, i] = d.transpose(0, 2, 1, 3)
    da_in, grads[pre + "attn.qkv.w"], grads[pre + "attn.qkv.b"] = linear.backward(
        pre + "attn.qkv", dqkv.reshape(b, t, 3 * c), bc.qkv
    )  # [B, T, C]
    if post:
        return dx + da_in
    dln, grads[pre + "ln1.g"], grads[pre + "ln1.b"] = ops.layernorm_backward(da_in, bc.ln1)
    return dx + dln


def forward(
    params: dict[str, np.ndarray],
    idx: np.ndarray,
    cfg: TransformerConfig,
    linear=DENSE,
    pad_mask: np.ndarray | None = None,
    ops: TrainingOps | None = None,
) -> tuple[np.ndarray, ModelCache]:
    """Logits of the next token at every position.

    idx: int [B, T] with T <= block_size; pad_mask: bool [B, T] (True = padding) or None
    ->  logits [B, T, V] (the parameters' dtype) and the cache for ``backward``.
    """
    idx = check_tokens(idx, cfg)
    ops = select_ops() if ops is None else ops
    check_pad_mask(pad_mask, *idx.shape)
    t = idx.shape[1]
    tok, tok_c = embedding_forward(idx, params["wte"])  # [B, T, C]
    pos, pos_c = embedding_forward(np.arange(t), params["wpe"])  # [T, C]
    x = tok + pos  # [B, T, C]
    hidden, attn, blocks = [x], [], []
    for i in range(cfg.n_layer):
        x, bc = _block_forward(params, f"blocks.{i}.", x, cfg, linear, ops, pad_mask)
        blocks.append(bc)
        hidden.append(x)
        attn.append(bc.att.p)
    ln_f = None
    if cfg.norm == "pre":
        x, ln_f = ops.layernorm_forward(x, params["ln_f.g"], params["ln_f.b"])
    logits, head_c = linear.forward("head", x, params["head.w"], None)  # [B, T, V]
    cache = ModelCache(
        cfg, linear, ops, (tok_c, pos_c), blocks, ln_f, head_c, hidden, attn, pad_mask
    )
    return logits, cache


def backward(
    dlogits: np.ndarray,
    cache: ModelCache,
    dhidden: list | None = None,
    dattn: list | None = None,
) -> dict[str, np.ndarray]:
    """Gradients of every parameter, same keys as ``params``.

    dlogits: [B, T, V]. Optional extra gradients: ``dhidden[i]`` [B, T, C] on
    ``cache.hidden[i]`` and ``dattn[l]`` [B, H, T, T] on ``cache.attn[l]`` (None entries skip).
    """
    cfg, linear, ops = cache.cfg, cache.linear, cache.ops
    grads: dict[str, np.ndarray] = {}
    dx, grads["head.w"], _ = linear.backward("head", dlogits, cache.head)  # [B, T, C]
    if cfg.norm == "pre":
        dx, grads["ln_f.g"], grads["ln_f.b"] = ops.layernorm_backward(dx, cache.ln_f)
    for i in reversed(range(cfg.n_layer)):
        if dhidden is not None and dhidden[i + 1] is not None:
            dx = dx + dhidden[i + 1]
        dp = None if dattn is None else dattn[i]
        dx = _block_backward(dx, cache.blocks[i], f"blocks.{i}.", cfg, linear, ops, grads, dp)
    if dhidden is not None and dhidden[0] is not None:
        dx = dx + dhidden[0]
    tok_c, pos_c = cache.emb
    grads["wte"] = ops.embedding_backward(dx, tok_c)
    dpos = ops.embedding_backward(dx.sum(axis=0), pos_c)  # [T, C] -> [block_used, C]
    grads["wpe"] = np.zeros((cfg.block_size, dx.shape[-1]), dtype=dx.dtype)
    grads["wpe"][: dpos.shape[0]] = dpos
    return grads


def loss_and_grads(params, idx, targets, cfg, linear=DENSE, ops=None) -> tuple[float, dict]:
    """Mean cross-entropy of next-token prediction and its gradients."""
    logits, cache = forward(params, idx, cfg, linear, ops=ops)
    loss, ce_c = cross_entropy_forward(logits, targets)
    grads = backward(cross_entropy_backward(1.0, ce_c), cache)
    return float(loss), grads


def generate(
    params: dict[str, np.ndarray],
    cfg: TransformerConfig,
    prompt: np.ndarray,
    n_tokens: int,
    rng: np.random.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    linear=DENSE,
) -> np.ndarray:
    """Sample ``n_tokens`` tokens after ``prompt`` (int [T0]), one at a time.

    p(next) = softmax(logits / temperature), restricted to the ``top_k`` most likely tokens;
    temperature 0 takes the most likely token (greedy). The context is cut to the last
    ``block_size`` tokens.  ->  int64 [T0 + n_tokens].
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0; got {n_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; got {temperature}")
    if top_k is not None and not 1 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k must be in [1, {cfg.vocab_size}] or None; got {top_k}")
    out = [int(i) for i in np.asarray(prompt).reshape(-1)]
    if not out:
        raise ValueError("prompt must hold at least one token")
    for _ in range(n_tokens):
        ctx = np.array(out[-cfg.block_size :], dtype=np.int64)[None, :]  # [1, T]
        logits, _ = forward(params, ctx, cfg, linear)
        z = logits[0, -1].astype(np.float64)  # [V]
        if temperature == 0:
            out.append(int(np.argmax(z)))
            continue
        z = z / temperature
        if top_k is not None:
            z[z < np.sort(z)[-top_k]] = -np.inf
        prob = np.exp(z - z.max())
        out.append(int(rng.choice(z.shape[0], p=prob / prob.sum())))
    return np.array(out, dtype=np.int64)
