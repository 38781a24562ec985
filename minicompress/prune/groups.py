"""Which entries make up an attention head, an MLP neuron, a layer.

Structured pruning scores, penalizes and removes whole groups of weights. The geometry of
those groups lives here, once, and scores (``scores.structure_scores``), group lasso
(``regularizers``) and removal (``structured``) all read it.

A group spans several tensors. Each tensor is seen through a reshaped view in which one
axis indexes the groups (``Part``):

head h of block i (D = cfg.head_dim, H_i heads; qkv columns laid out [3][H_i][D]):
    blocks.i.attn.qkv.w  [C, 3*H_i*D] viewed [C, 3, H_i, D], axis 2   (its q, k, v columns)
    blocks.i.attn.qkv.b  [3*H_i*D]    viewed [3, H_i, D],    axis 1   (their biases)
    blocks.i.attn.proj.w [H_i*D, C]   viewed [H_i, D, C],    axis 0   (the rows it feeds)
neuron j of block i's MLP (F_i neurons):
    blocks.i.mlp.fc.w    [C, F_i], axis 1 (its column);  blocks.i.mlp.fc.b [F_i], axis 0
    blocks.i.mlp.proj.w  [F_i, C], axis 0 (its row)
layer i: every linear weight and bias of block i, as one group (axis None).
The output projections' biases (attn.proj.b, mlp.proj.b) belong to no head or neuron: they
are added once, whatever the number of heads or neurons.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minicompress.nn.model import layer_shapes

KINDS = ("heads", "neurons", "layers")
LAYER_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")  # the linears of a block


class Part(NamedTuple):
    """One tensor's share of a family of groups."""

    name: str  # parameter name, e.g. "blocks.0.attn.qkv.w"
    view: tuple[int, ...]  # the shape the tensor is seen as
    axis: int | None  # the view's axis indexing the groups; None: the whole tensor is one group
    tensor_axis: int | None = None  # the tensor's own axis that holds the group axis


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return kind


def check_layer(cfg, layer: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"layer must be an integer; got {layer!r}")
    if not 0 <= layer < cfg.n_layer:
        raise ValueError(f"layer must be in [0, {cfg.n_layer}); got {layer}")
    return int(layer)


def structure_parts(params: dict, cfg, kind: str, layer: int) -> list[Part]:
    """The parts of the groups of one kind in block ``layer`` (see the module docstring)."""
    check_kind(kind)
    layer = check_layer(cfg, layer)
    pre = f"blocks.{layer}."
    shape = layer_shapes(params, cfg)[layer]  # H_i, F_i read from the arrays (checked)
    c, d = cfg.n_embd, cfg.head_dim
    if kind == "heads":
        h = shape.n_head
        return [
            Part(pre + "attn.qkv.w", (c, 3, h, d), 2, 1),
            Part(pre + "attn.qkv.b", (3, h, d), 1, 0),
            Part(pre + "attn.proj.w", (h, d, c), 0, 0),
        ]
    if kind == "neurons":
        f = shape.mlp_width
        return [
            Part(pre + "mlp.fc.w", (c, f), 1, 1),
            Part(pre + "mlp.fc.b", (f,), 0, 0),
            Part(pre + "mlp.proj.w", (f, c), 0, 0),
        ]
    return [
        Part(pre + n + s, params[pre + n + s].shape, None)
        for n in LAYER_LINEARS
        for s in (".w", ".b")
    ]


def _view(params: dict, part: Part) -> np.ndarray:
    a = params[part.name]
    if a.size != int(np.prod(part.view)):
        raise ValueError(f"{part.name} has shape {a.shape}, which cannot be viewed as {part.view}")
    return a.reshape(part.view)


def n_groups(params: dict, parts: list[Part]) -> int:
    """G: the number of groups the parts describe (1 for a layer)."""
    sizes = {1 if p.axis is None else p.view[p.axis] for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"the parts disagree on the number of groups: {sorted(sizes)}")
    return sizes.pop()


def gather_groups(values: dict, parts: list[Part]) -> np.ndarray:
    """The entries of each group as the rows of one matrix.

    values: name -> array (the parameters, or scores under the same names)
    ->  [G, n]: row g holds every entry of group g, tensor after tensor in ``parts`` order.
    """
    g = n_groups(values, parts)
    rows = []
    for p in parts:
        v = _view(values, p)
        rows.append(
            v.reshape(1, -1) if p.axis is None else np.moveaxis(v, p.axis, 0).reshape(g, -1)
        )
    return np.concatenate(rows, axis=1)


def scatter_groups(values: dict, parts: list[Part], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The inverse of ``gather_groups``: new tensors (shapes of ``values``) whose entries are
    taken from ``rows`` [G, n].  ->  name -> new array, for the names of ``parts`` only."""
    g = n_groups(values, parts)
    rows = np.asarray(rows)
    sizes = [values[p.name].size // g for p in parts]
    if rows.shape != (g, sum(sizes)):
        raise ValueError(f"rows must have shape ({g}, {sum(sizes)}); got {rows.shape}")
    out, start = {}, 0
    for p, size in zip(parts, sizes, strict=True):
        block = rows[:, start : start + size]  # [G, size]
        start += size
        if p.axis is None:
            out[p.name] = block.reshape(values[p.name].shape).copy()
            continue
        moved = list(p.view)
        moved.insert(0, moved.pop(p.axis))  # the view with the group axis first
        v = np.moveaxis(block.reshape(moved), 0, p.axis)
        out[p.name] = np.ascontiguousarray(v).reshape(values[p.name].shape)
    return out


def scale_groups(values: dict, parts: list[Part], factors: np.ndarray) -> dict[str, np.ndarray]:
    """New tensors with every entry of group g multiplied by ``factors[g]`` (float [G]); a
    0/1 factor is a group mask. ->  name -> new array, for the names of ``parts`` only."""
    g = n_groups(values, parts)
    factors = np.asarray(factors)
    if factors.shape != (g,):
        raise ValueError(f"factors must have shape ({g},); got {factors.shape}")
    out = {}
    for p in parts:
        v = _view(values, p)
        shape = [1] * v.ndim
        if p.axis is not None:
            shape[p.axis] = g
        scaled = v * factors.reshape(shape).astype(v.dtype)
        out[p.name] = scaled.reshape(values[p.name].shape)
    return out


def take_groups(values: dict, parts: list[Part], keep: np.ndarray) -> dict[str, np.ndarray]:
    """New, smaller tensors holding only the groups ``keep`` (int indices, increasing).

    The view's group axis shrinks from G to len(keep); the tensor is reshaped back with the
    new size, e.g. qkv.w [C, 3*H*D] -> [C, 3*H'*D].  ->  name -> new array.
    """
    keep = np.asarray(keep)
    if keep.ndim != 1 or keep.size == 0 or not np.issubdtype(keep.dtype, np.integer):
        raise ValueError(f"keep must be a non-empty 1-D array of group indices; got {keep!r}")
    out = {}
    for p in parts:
        if p.axis is None:
            raise ValueError(f"{p.name} is one group: remove the whole layer instead")
        v = np.take(_view(values, p), keep, axis=p.axis)
        shape = list(values[p.name].shape)
        shape[p.tensor_axis] = -1  # the only axis of the tensor whose length changes
        out[p.name] = np.ascontiguousarray(v.reshape(shape))
    return out
