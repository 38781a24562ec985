"""A small Transformer — decoder (GPT-2) or encoder (BERT) — with explicit forward and
backward passes.

Parameters are a flat ``dict[str, np.ndarray]`` with dotted names
(``"blocks.0.attn.qkv.w"``); gradients come back with the same keys, so masks, quantization
parameters and optimizer state can all address a weight by name.

Where compression hooks in (the extension contract):
- every linear layer goes through a ``linear`` object (``nn/linear.py``): the model hands it
  ``params[name + ".w"]`` and never reads a linear weight itself, so a quantizer, a masker or
  an int8 / CSR runtime can stand in;
- **shapes come from the parameters**: the number of heads of a block is the width of its
  qkv output divided by 3 D (the head width D = n_embd / n_head is fixed), and the MLP width
  is whatever its weights have, so a model with heads or neurons removed is still a model;
- a distiller reads ``cache.hidden`` (the input of every block and the last block's output)
  and ``cache.attn`` (the attention probabilities of every block) and sends gradients back
  into them through ``backward(..., dhidden=, dattn=)``; the training loop (``nn/train.py``)
  takes the loss and an after-step hook.

Shape letters: B batch, T sequence, C width, H heads (of a block), D = C / n_head,
F MLP width (of a block), V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np

from minicompress.nn.attention import check_pad_mask, merge_heads, split_heads
from minicompress.nn.backend import OpImpl, check_op_impl
from minicompress.nn.linear import DENSE, check_linear, linear_gelu
from minicompress.nn.ops import (
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_forward,
)
from minicompress.platform import total_memory_bytes

# ----------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------

_INT_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio")
_CHOICES = {"norm": ("pre", "post"), "gelu": ("tanh", "none")}
_BOOL_FIELDS = ("causal", "emb_norm", "head")


def _strict_int(name: str, value, minimum: int) -> int:
    """``value`` as a plain int >= minimum; bools, floats and strings are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")
    return int(value)


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of the model. The defaults are the demo's teacher, a GPT-2-style character
    decoder of ~0.8M parameters. BERT-family encoders set ``norm="post"``, ``gelu="none"``,
    ``causal=False``, ``ln_eps=1e-12``, ``type_vocab_size=2``, ``emb_norm=True``,
    ``head=False``.

    ``n_head`` and ``mlp_ratio`` give the full shapes that ``init_params`` creates; a pruned
    model may have fewer heads (of the same width D = n_embd / n_head) or a narrower MLP in
    any block, read from its parameters (``layer_shapes``).
    """

    vocab_size: int  # V: number of distinct tokens (characters for the built-in corpus)
    block_size: int = 128  # longest sequence the position table holds
    n_layer: int = 4  # number of Transformer blocks
    n_head: int = 4  # attention heads per block at full size; must divide n_embd
    n_embd: int = 128  # C: width of the residual stream
    mlp_ratio: int = 4  # F = mlp_ratio * C: hidden width of the MLP at full size
    norm: str = "pre"  # "pre" (GPT-2: x + f(ln(x))) or "post" (BERT: ln(x + f(x)))
    gelu: str = "tanh"  # "tanh" (GPT-2) or "none" (the exact erf form, BERT)
    causal: bool = True  # decoder (True) or bidirectional encoder (False)
    ln_eps: float = 1e-5  # epsilon of every LayerNorm (BERT: 1e-12)
    type_vocab_size: int = 0  # token-type (segment) embeddings "wtt"; 0: none (BERT: 2)
    emb_norm: bool = False  # a LayerNorm "ln_emb" right after the embeddings (BERT)
    head: bool = True  # output projection to V; False: forward returns the hidden states

    def __post_init__(self):
        for name in _INT_FIELDS:
            object.__setattr__(self, name, _strict_int(name, getattr(self, name), 1))
        object.__setattr__(
            self, "type_vocab_size", _strict_int("type_vocab_size", self.type_vocab_size, 0)
        )
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False; got {value!r}")
            object.__setattr__(self, name, bool(value))
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")
        eps = self.ln_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
            raise TypeError(f"ln_eps must be a number; got {eps!r}")
        if not (math.isfinite(eps) and 0 < eps < 1):
            raise ValueError(f"ln_eps must lie in (0, 1); got {eps}")
        object.__setattr__(self, "ln_eps", float(eps))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        """D: width of one attention head (fixed, whatever heads a block keeps)."""
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        """A config from ``to_dict()``'s output; unknown keys are refused by name."""
        if not isinstance(d, dict):
            raise TypeError(f"a model config must be a dict; got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; allowed {sorted(known)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------
# parameters: names, shapes, initialisation
# ----------------------------------------------------------------------------------------


class LayerShape(NamedTuple):
    n_head: int  # H: heads this block keeps
    mlp_width: int  # F: neurons of this block's MLP


def linear_names(cfg: TransformerConfig) -> list[str]:
    """Names (without ``.w``/``.b``) of every linear layer, in forward order."""
    names = []
    for i in range(cfg.n_layer):
        names += [f"blocks.{i}.attn.qkv", f"blocks.{i}.attn.proj"]
        names += [f"blocks.{i}.mlp.fc", f"blocks.{i}.mlp.proj"]
    return [*names, "head"] if cfg.head else names


def _block_shapes(cfg: TransformerConfig, h: int, f: int, i: int) -> dict[str, tuple]:
    c, d, pre = cfg.n_embd, cfg.head_dim, f"blocks.{i}."
    return {
        pre + "ln1.g": (c,),
        pre + "ln1.b": (c,),
        pre + "attn.qkv.w": (c, 3 * h * d),
        pre + "attn.qkv.b": (3 * h * d,),
        pre + "attn.proj.w": (h * d, c),
        pre + "attn.proj.b": (c,),
        pre + "ln2.g": (c,),
        pre + "ln2.b": (c,),
        pre + "mlp.fc.w": (c, f),
        pre + "mlp.fc.b": (f,),
        pre + "mlp.proj.w": (f, c),
        pre + "mlp.proj.b": (c,),
    }


def param_shapes(
    cfg: TransformerConfig, layers: list[LayerShape] | None = None
) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in a fixed order; ``layers`` gives the heads and MLP
    width of each block (default: the config's full ``n_head`` and ``mlp_ratio * n_embd``)."""
    c = cfg.n_embd
    if layers is None:
        layers = [LayerShape(cfg.n_head, cfg.mlp_ratio * c)] * cfg.n_layer
    shapes = {"wte": (cfg.vocab_size, c), "wpe": (cfg.block_size, c)}
    if cfg.type_vocab_size:
        shapes["wtt"] = (cfg.type_vocab_size, c)
    if cfg.emb_norm:
        shapes["ln_emb.g"], shapes["ln_emb.b"] = (c,), (c,)
    for i, (h, f) in enumerate(layers):
        shapes.update(_block_shapes(cfg, h, f, i))
    if cfg.norm == "pre":
        shapes["ln_f.g"], shapes["ln_f.b"] = (c,), (c,)
    if cfg.head:
        shapes["head.w"] = (c, cfg.vocab_size)
    return shapes


def param_count(cfg: TransformerConfig) -> int:
    """Number of parameters of the full-size model the config describes, in closed form
    (nothing allocated, whatever n_layer): the embeddings and norms outside the blocks plus
    n_layer times one block."""
    one_block = sum(
        math.prod(s) for s in _block_shapes(cfg, cfg.n_head, cfg.mlp_ratio * cfg.n_embd, 0).values()
    )
    outside = sum(math.prod(s) for s in param_shapes(dataclasses.replace(cfg, n_layer=1)).values())
    return int(outside - one_block + cfg.n_layer * one_block)


def layer_shapes(params: dict, cfg: TransformerConfig) -> list[LayerShape]:
    """Heads and MLP width of every block, read from the parameters' shapes (checked)."""
    return check_params(params, cfg)


def _is_real_float_array(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64)


def check_params(params: dict, cfg: TransformerConfig) -> list[LayerShape]:
    """Refuse parameters that are not a model of ``cfg``: a missing or unexpected name, an
    array that is not float32/float64, a shape inconsistent with the config or with the
    rest of its block (H >= 1 heads of width D, F >= 1 neurons). ->  the blocks' shapes."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays; got {type(params).__name__}")
    d = cfg.head_dim
    layers = []
    for i in range(cfg.n_layer):
        pre = f"blocks.{i}."
        for key in (pre + "attn.qkv.w", pre + "mlp.fc.w"):
            if key not in params:
                raise ValueError(f"parameter {key!r} is missing")
            if not _is_real_float_array(params[key]) or params[key].ndim != 2:
                raise ValueError(f"parameter {key!r} must be a 2-D float32 array")
        width = params[pre + "attn.qkv.w"].shape[1]
        if width == 0 or width % (3 * d):
            raise ValueError(
                f"parameter {pre + 'attn.qkv.w'!r} has {width} columns: must be 3 * H * D "
                f"with H >= 1 heads of width D={d}"
            )
        mlp = params[pre + "mlp.fc.w"].shape[1]
        if mlp == 0:
            raise ValueError(f"parameter {pre + 'mlp.fc.w'!r} has no neurons; remove the layer")
        layers.append(LayerShape(width // (3 * d), mlp))
    expected = param_shapes(cfg, layers)
    missing = [k for k in expected if k not in params]
    if missing:
        raise ValueError(f"parameters {missing[:5]} are missing (model config: {cfg})")
    unexpected = sorted(set(params) - set(expected))
    if unexpected:
        raise ValueError(f"unexpected parameters {unexpected[:5]}; this config has none of them")
    for name, shape in expected.items():
        a = params[name]
        if not _is_real_float_array(a):
            what = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"parameter {name!r} must be a float32 array; got {what}")
        if a.shape != shape:
            raise ValueError(f"parameter {name!r} should have shape {shape}; got {a.shape}")
    return layers


def init_params(cfg: TransformerConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """GPT-2 initialisation: N(0, 0.02) weights, N(0, 0.02 / sqrt(2 n_layer)) for the
    projections into the residual stream, zero biases, unit LayerNorm gains. float32.

    A config whose parameters alone would not fit in this machine's memory is refused
    before anything is allocated.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    n_bytes, memory = 4 * param_count(cfg), total_memory_bytes()
    if memory is not None and n_bytes > memory:
        raise ValueError(
            f"the model {cfg} has {param_count(cfg):,} parameters ({n_bytes / 2**30:.1f} GiB "
            f"in float32), more than this machine's {memory / 2**30:.1f} GiB of memory"
        )
    resid_std = 0.02 / np.sqrt(2 * cfg.n_layer)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith(".g"):
            params[name] = np.ones(shape, np.float32)
        elif name.endswith(".b"):
            params[name] = np.zeros(shape, np.float32)
        else:  # into the residual stream: the attention and MLP output projections
            std = resid_std if name.endswith(("attn.proj.w", "mlp.proj.w")) else 0.02
            params[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    return params


def count_params(params: dict[str, np.ndarray]) -> int:
    return int(sum(a.size for a in params.values()))


# ----------------------------------------------------------------------------------------
# forward and backward
# ----------------------------------------------------------------------------------------


class BlockCache(NamedTuple):
    ln1: object
    qkv: object
    att: object
    proj: object
    ln2: object
    fc: object
    gelu: object
    mlp_proj: object


class KVCache:
    """Keys and values of every block for the positions seen so far, so that generation
    computes each new position once instead of re-running the whole context.

    ``k[l]``, ``v[l]``: [B, H_l, block_size, D] buffers (allocated at the first call, in the
    activations' dtype); positions ``0 .. length - 1`` are filled. For inference only:
    ``backward`` refuses a forward pass that used a cache.
    """

    def __init__(self, cfg: TransformerConfig, batch_size: int):
        self.capacity = cfg.block_size
        self.batch_size = _strict_int("batch_size", batch_size, 1)
        self.length = 0
        self.k: list = [None] * cfg.n_layer
        self.v: list = [None] * cfg.n_layer

    def extend(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store k, v [B, H, Tq, D] of the new positions; ->  all keys and values so far,
        [B, H, length + Tq, D] each (views of the buffers)."""
        b, h, t, d = k.shape
        if self.k[layer] is None:
            self.k[layer] = np.empty((b, h, self.capacity, d), dtype=k.dtype)
            self.v[layer] = np.empty((b, h, self.capacity, d), dtype=v.dtype)
        end = self.length + t
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class ModelCache(NamedTuple):
    cfg: TransformerConfig
    linear: object  # the linear-layer object used in the forward pass
    op_impl: OpImpl  # NumPy or Numba implementations of LN, GELU and attention
    emb: tuple  # caches of (tokens, positions, token types or None)
    ln_emb: object  # LayerNormCache of the embedding norm, or None
    blocks: list  # [BlockCache] * n_layer
    ln_f: object  # LayerNormCache (pre-LN) or None
    head: object  # cache of the output projection, or None
    hidden: list  # n_layer + 1 arrays [B, T, C]: input of every block, last block's output
    attn: list  # n_layer arrays [B, H, T, T]: attention probabilities
    pad_mask: np.ndarray | None
    kv_cache: KVCache | None  # the key/value cache of the call, if any (no backward then)


def check_tokens(idx, cfg: TransformerConfig, name: str = "idx") -> np.ndarray:
    """Refuse token ids the model cannot take: not a 2-D int array, no position, ids outside
    [0, V), sequences longer than block_size."""
    idx = np.asarray(idx)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must be a 2-D integer array [B, T]; got {idx.dtype} {idx.shape}")
    if idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one sequence of one token; got {idx.shape}")
    if idx.shape[1] > cfg.block_size:
        raise ValueError(
            f"{name} has sequences of length {idx.shape[1]}, longer than block_size="
            f"{cfg.block_size}"
        )
    if idx.min() < 0 or idx.max() >= cfg.vocab_size:
        raise ValueError(
            f"{name} holds token ids in [{idx.min()}, {idx.max()}]; allowed [0, {cfg.vocab_size})"
        )
    return idx


def _check_token_types(token_types, idx: np.ndarray, cfg: TransformerConfig):
    """token_types: int [B, T] in [0, type_vocab_size), or None (all type 0)."""
    if token_types is None:
        return np.zeros_like(idx) if cfg.type_vocab_size else None
    if not cfg.type_vocab_size:
        raise ValueError("token_types given, but the model has no token-type embeddings")
    tt = np.asarray(token_types)
    if tt.shape != idx.shape or not np.issubdtype(tt.dtype, np.integer):
        raise ValueError(f"token_types must be an integer array of shape {idx.shape}")
    if tt.min() < 0 or tt.max() >= cfg.type_vocab_size:
        raise ValueError(f"token_types must lie in [0, {cfg.type_vocab_size})")
    return tt


@functools.lru_cache(maxsize=64)
def _names_read(cfg: TransformerConfig) -> frozenset:
    """The names of the parameters the forward pass reads (per config, found once: building
    ``param_shapes`` on every call was 8 us of a 1 ms forward of the teacher)."""
    return frozenset(param_shapes(cfg))


def _check_names(params, cfg: TransformerConfig) -> None:
    """Every parameter the forward pass reads is present (names only: a linear weight may be
    a packed object that only the ``linear`` understands)."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict; got {type(params).__name__}")
    if not params.keys() >= _names_read(cfg):
        missing = [k for k in param_shapes(cfg) if k not in params]
        raise ValueError(f"params lacks {missing[:5]}, which the model config {cfg} needs")


def _block_forward(p, pre, x, cfg, linear, ops, pad_mask, kv=None, layer=0):
    """One Transformer block. pre-LN: x + attn(ln1(x)), then + mlp(ln2(.));
    post-LN: ln1(x + attn(x)), then ln2(. + mlp(.)). Heads: the qkv output's width / 3D.
    With a key/value cache ``kv``, the queries of x attend to the cached keys too."""
    post, eps = cfg.norm == "post", cfg.ln_eps
    if post:
        a_in, ln1 = x, None
    else:
        a_in, ln1 = ops.layernorm_forward(x, p[pre + "ln1.g"], p[pre + "ln1.b"], eps)
    qkv, qkv_c = linear.forward(
        pre + "attn.qkv", a_in, p[pre + "attn.qkv.w"], p.get(pre + "attn.qkv.b")
    )  # [B, T, C] -> [B, T, 3 H D]
    h = qkv.shape[-1] // (3 * cfg.head_dim)
    q, k, v = ops.split_qkv(qkv, h)  # [B, T, 3 H D] -> 3 x [B, H, T, D]
    if kv is not None:
        k, v = kv.extend(layer, k, v)  # [B, H, T_past + T, D]
    y, att_c = ops.attention_forward(q, k, v, cfg.causal, pad_mask)  # [B, H, T, D]
    a, proj_c = linear.forward(
        pre + "attn.proj", merge_heads(y), p[pre + "attn.proj.w"], p.get(pre + "attn.proj.b")
    )  # [B, T, H D] -> [B, T, C]
    x = x + a
    if post:
        x, ln1 = ops.layernorm_forward(x, p[pre + "ln1.g"], p[pre + "ln1.b"], eps)
        m_in, ln2 = x, None
    else:
        m_in, ln2 = ops.layernorm_forward(x, p[pre + "ln2.g"], p[pre + "ln2.b"], eps)
    g, fc_c, gelu_c = linear_gelu(
        linear, ops, pre + "mlp.fc", m_in, p[pre + "mlp.fc.w"], p.get(pre + "mlp.fc.b"), cfg.gelu
    )  # [B, T, C] -> [B, T, F], GELU applied
    m, mp_c = linear.forward(
        pre + "mlp.proj", g, p[pre + "mlp.proj.w"], p.get(pre + "mlp.proj.b")
    )  # [B, T, F] -> [B, T, C]
    x = x + m
    if post:
        x, ln2 = ops.layernorm_forward(x, p[pre + "ln2.g"], p[pre + "ln2.b"], eps)
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
    )  # [B, T, H D]
    b, h, t, d = bc.att.q.shape
    dy = split_heads(dmerged, h)  # [B, T, H D] -> [B, H, T, D]
    dq, dk, dv = ops.attention_backward(dy, bc.att, dp_extra)
    dqkv = np.empty((b, t, 3, h, d), dtype=dx.dtype)  # [B, T, 3, H, D]
    for i, dpart in enumerate((dq, dk, dv)):
        dqkv[:, :, i] = dpart.transpose(0, 2, 1, 3)
    da_in, grads[pre + "attn.qkv.w"], grads[pre + "attn.qkv.b"] = linear.backward(
        pre + "attn.qkv", dqkv.reshape(b, t, 3 * h * d), bc.qkv
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
    token_types: np.ndarray | None = None,
    op_impl: OpImpl | None = None,
    kv_cache: KVCache | None = None,
) -> tuple[np.ndarray, ModelCache]:
    """Logits of the next token at every position (``cfg.head``), or the final hidden states.

    idx: int [B, T] with 1 <= T <= block_size; pad_mask: bool [B, T] (True = padding) or None;
    token_types: int [B, T] or None (all 0; only with ``cfg.type_vocab_size``);
    ``op_impl``: ``nn.backend.NUMPY_OPS`` or ``NUMBA_OPS`` (default: ``MINICOMPRESS_KERNEL``)
    or an inference twin of them; ``kv_cache``: a ``KVCache`` holding the keys and values of
    the ``kv_cache.length`` positions before idx (generation: idx holds the new positions
    only; no padding, no backward).
    ->  logits [B, T, V] or hidden states [B, T, C] (the parameters' dtype), and the cache
    for ``backward``.
    """
    idx = check_tokens(idx, cfg)
    ops = check_op_impl(op_impl)
    linear = check_linear(linear)
    _check_names(params, cfg)
    check_pad_mask(pad_mask, *idx.shape)
    token_types = _check_token_types(token_types, idx, cfg)
    t, start = idx.shape[1], 0
    if kv_cache is not None:
        start = _check_kv_cache(kv_cache, idx, pad_mask, cfg)
    tok, tok_c = embedding_forward(idx, params["wte"])  # [B, T, C]
    pos, pos_c = embedding_forward(np.arange(start, start + t), params["wpe"])  # [T, C]
    x = tok + pos  # [B, T, C]
    tt_c = None
    if token_types is not None:
        typ, tt_c = embedding_forward(token_types, params["wtt"])  # [B, T, C]
        x += typ
    ln_emb = None
    if cfg.emb_norm:
        x, ln_emb = ops.layernorm_forward(x, params["ln_emb.g"], params["ln_emb.b"], cfg.ln_eps)
    hidden, attn, blocks = [x], [], []
    for i in range(cfg.n_layer):
        x, bc = _block_forward(params, f"blocks.{i}.", x, cfg, linear, ops, pad_mask, kv_cache, i)
        blocks.append(bc)
        hidden.append(x)
        attn.append(bc.att.p)
    ln_f = None
    if cfg.norm == "pre":
        x, ln_f = ops.layernorm_forward(x, params["ln_f.g"], params["ln_f.b"], cfg.ln_eps)
    head_c = None
    if cfg.head:
        x, head_c = linear.forward("head", x, params["head.w"], None)  # [B, T, C] -> [B, T, V]
    if kv_cache is not None:
        kv_cache.length += t
    cache = ModelCache(
        cfg, linear, ops, (tok_c, pos_c, tt_c), ln_emb, blocks, ln_f, head_c, hidden, attn,
        pad_mask, kv_cache,
    )  # fmt: skip
    return x, cache


def _check_kv_cache(kv: KVCache, idx: np.ndarray, pad_mask, cfg: TransformerConfig) -> int:
    """The position of idx's first token; refuse a cache that cannot take idx."""
    if not isinstance(kv, KVCache):
        raise TypeError(f"kv_cache must be a KVCache; got {type(kv).__name__}")
    if pad_mask is not None:
        raise ValueError("kv_cache does not take a pad_mask (generation has no padding)")
    if not cfg.causal:
        raise ValueError("kv_cache needs a causal model: an encoder's keys change with the text")
    if idx.shape[0] != kv.batch_size or len(kv.k) != cfg.n_layer:
        raise ValueError(f"kv_cache was made for batch {kv.batch_size}; idx has {idx.shape[0]}")
    if kv.length + idx.shape[1] > cfg.block_size:
        raise ValueError(
            f"kv_cache holds {kv.length} positions: {idx.shape[1]} more exceed block_size="
            f"{cfg.block_size}"
        )
    return kv.length


def backward(
    dout: np.ndarray,
    cache: ModelCache,
    dhidden: list | None = None,
    dattn: list | None = None,
) -> dict[str, np.ndarray]:
    """Gradients of every parameter, same keys as ``params``.

    dout: [B, T, V] on the logits (or [B, T, C] on the hidden states of a model without
    head). Optional extra gradients: ``dhidden[i]`` [B, T, C] on ``cache.hidden[i]`` and
    ``dattn[l]`` [B, H, T, T] on ``cache.attn[l]`` (None entries skip).
    """
    cfg, linear, ops = cache.cfg, cache.linear, cache.op_impl
    if cache.kv_cache is not None:
        raise ValueError("backward of a forward pass with a kv_cache is not supported")
    for extra, n, what in ((dhidden, cfg.n_layer + 1, "dhidden"), (dattn, cfg.n_layer, "dattn")):
        if extra is not None and len(extra) != n:
            raise ValueError(f"{what} must hold {n} entries (arrays or None); got {len(extra)}")
    grads: dict[str, np.ndarray] = {}
    dx = dout
    if cfg.head:
        dx, grads["head.w"], _ = linear.backward("head", dout, cache.head)  # [B, T, C]
    if cfg.norm == "pre":
        dx, grads["ln_f.g"], grads["ln_f.b"] = ops.layernorm_backward(dx, cache.ln_f)
    for i in reversed(range(cfg.n_layer)):
        if dhidden is not None and dhidden[i + 1] is not None:
            dx = dx + dhidden[i + 1]
        dp = None if dattn is None else dattn[i]
        dx = _block_backward(dx, cache.blocks[i], f"blocks.{i}.", cfg, linear, ops, grads, dp)
    if dhidden is not None and dhidden[0] is not None:
        dx = dx + dhidden[0]
    if cfg.emb_norm:
        dx, grads["ln_emb.g"], grads["ln_emb.b"] = ops.layernorm_backward(dx, cache.ln_emb)
    tok_c, pos_c, tt_c = cache.emb
    grads["wte"] = ops.embedding_backward(dx, tok_c)
    if tt_c is not None:
        grads["wtt"] = ops.embedding_backward(dx, tt_c)
    dpos = ops.embedding_backward(dx.sum(axis=0), pos_c)  # [T, C] -> [T, C]
    grads["wpe"] = np.zeros((cfg.block_size, dx.shape[-1]), dtype=dx.dtype)
    grads["wpe"][: dpos.shape[0]] = dpos
    return grads


def loss_and_grads(
    params, idx, targets, cfg, linear=DENSE, op_impl=None, pad_mask=None
) -> tuple[float, dict]:
    """Mean cross-entropy of next-token prediction and its gradients."""
    if not cfg.head:
        raise ValueError("loss_and_grads needs a model with an output head (cfg.head=True)")
    logits, cache = forward(params, idx, cfg, linear, pad_mask=pad_mask, op_impl=op_impl)
    loss, ce_c = cross_entropy_forward(logits, np.asarray(targets))
    grads = backward(cross_entropy_backward(1.0, ce_c), cache)
    return float(loss), grads


# ----------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------


def check_sampling(
    cfg: TransformerConfig, n_tokens, temperature, top_k
) -> tuple[int, float, int | None]:
    """Refuse sampling settings that would be misread: ``n_tokens`` an integer >= 0,
    ``temperature`` a finite number >= 0, ``top_k`` None or an integer in [1, V] (not a bool,
    not a float)."""
    n_tokens = _strict_int("n_tokens", n_tokens, 0)
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(
        temperature, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"temperature must be a number; got {temperature!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0; got {temperature}")
    if top_k is not None:
        top_k = _strict_int("top_k", top_k, 1)
        if top_k > cfg.vocab_size:
            raise ValueError(f"top_k must be in [1, {cfg.vocab_size}] or None; got {top_k}")
    return n_tokens, float(temperature), top_k


def check_prompt(prompt, cfg: TransformerConfig) -> np.ndarray:
    """A prompt is a non-empty 1-D integer array of token ids in [0, V)."""
    p = np.asarray(prompt)
    if p.ndim != 1 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(
            f"prompt must be a 1-D integer array of token ids; got {p.dtype} {p.shape}"
        )
    if p.size == 0:
        raise ValueError("prompt must hold at least one token")
    if p.min() < 0 or p.max() >= cfg.vocab_size:
        raise ValueError(
            f"prompt holds ids in [{p.min()}, {p.max()}]; allowed [0, {cfg.vocab_size})"
        )
    return p.astype(np.int64)


def sample_next(logits: np.ndarray, rng, temperature: float, top_k: int | None) -> int:
    """One token from logits [V]: p = softmax(z / temperature) over the ``top_k`` most likely
    tokens (all when None); temperature 0 takes the most likely token (greedy)."""
    z = logits.astype(np.float64)  # [V]
    if temperature == 0:
        return int(np.argmax(z))
    with np.errstate(over="ignore"):  # a tiny temperature sends the others to -inf: greedy
        z = (z - z.max()) / temperature  # shifted first, so the largest is exactly 0
    if top_k is not None:
        z[z < np.sort(z)[-top_k]] = -np.inf
    prob = np.exp(z)
    return int(rng.choice(z.shape[0], p=prob / prob.sum()))


def generate(
    params: dict[str, np.ndarray],
    cfg: TransformerConfig,
    prompt: np.ndarray,
    n_tokens: int,
    rng: np.random.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    linear=DENSE,
    use_cache: bool = True,
    op_impl: OpImpl | None = None,
) -> np.ndarray:
    """Sample ``n_tokens`` tokens after ``prompt`` (int [T0]), one at a time.

    The context is the last ``block_size`` tokens. With ``use_cache`` the keys and values of
    the context are kept (``KVCache``), so each new token costs one position; once the text
    is longer than ``block_size`` the window slides, every absolute position shifts and the
    window is recomputed (as without the cache). Both give the same tokens.
    ->  int64 [T0 + n_tokens].
    """
    if not cfg.head or not cfg.causal:
        raise ValueError("generate needs a causal model with an output head")
    n_tokens, temperature, top_k = check_sampling(cfg, n_tokens, temperature, top_k)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be True or False; got {use_cache!r}")
    out = [int(i) for i in check_prompt(prompt, cfg)]
    kv = None
    for _ in range(n_tokens):
        if kv is not None and kv.length < cfg.block_size:  # one new position
            ctx = np.array([out[-1:]], dtype=np.int64)  # [1, 1]
        else:  # the whole window: the first token, no cache, or a full cache
            kv = KVCache(cfg, 1) if use_cache else None
            ctx = np.array([out[-cfg.block_size :]], dtype=np.int64)  # [1, T]
        logits, _ = forward(params, ctx, cfg, linear, op_impl=op_impl, kv_cache=kv)
        out.append(sample_next(logits[0, -1], rng, temperature, top_k))
    return np.array(out, dtype=np.int64)
