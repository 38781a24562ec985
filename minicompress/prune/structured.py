"""Structured pruning (course 3.3.1): choose heads, MLP neurons or layers by their scores,
then remove them physically, so that the matrices really get smaller.

Zeroing a neuron's weights but leaving its bias alive has not removed it (DESIGN.md); here a
removed head takes its q, k, v columns and biases and its rows of the output projection
with it, a removed neuron its fc column, fc bias and row of the MLP projection, and a
removed layer the whole block. The smaller parameters are a valid model as they are: the
model reads each block's heads and width from the arrays' shapes (``nn.model.layer_shapes``),
and a checkpoint holds them.

The masked model — the same groups set to zero in the full-size arrays (``structure_masks``)
— computes the same outputs as the shrunk one: a head whose q, k, v are zero attends
uniformly to values that are zero, and its projection rows are zero; a neuron with a zero
column and bias outputs GELU(0) = 0; a pre-LN block whose linears are all zero adds nothing
to the residual stream (a post-LN block still normalizes, so there removing a layer is not
the same as zeroing it).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from minicompress.prune import groups as G
from minicompress.prune.masks import check_sparsity, global_masks, smallest_mask
from minicompress.prune.scores import structure_scores

SCOPES = ("local", "global")


def _names(kind: str) -> str:
    return {"heads": "head", "neurons": "neuron", "layers": "layer"}[kind]


def select_structures(
    scores: list[np.ndarray], sparsity: float, kind: str, scope: str = "local"
) -> list[np.ndarray]:
    """Which groups to keep: drop round(sparsity * G) of the lowest scores, per layer
    (``"local"``: the same share of every block) or across the model (``"global"``).

    scores: ``scores.structure_scores``'s output (one array [G_i] per block; for layers one
    array [n_layer]) -> the same list of bool keep arrays. Refused: a block left with no head
    or no neuron (remove the layer instead), a model left with no layer.
    """
    check_sparsity(sparsity)
    G.check_kind(kind)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}")
    if scope == "local" or kind == "layers":
        keep = [smallest_mask(s, sparsity) for s in scores]
    else:
        masks = global_masks({str(i): s for i, s in enumerate(scores)}, sparsity)
        keep = [masks[str(i)] for i in range(len(scores))]
    what = _names(kind)
    for i, k in enumerate(keep):
        if not k.any():
            where = "the model" if kind == "layers" else f"block {i}"
            fix = (
                "keep at least one layer"
                if kind == "layers"
                else "remove the layer instead (kind='layers') or prune less"
            )
            raise ValueError(
                f"sparsity {sparsity} ({scope}) would prune every {what} of {where}: {fix}"
            )
    return keep


def structure_masks(params: dict, cfg, kind: str, keep: list[np.ndarray]) -> dict:
    """Bool masks (True = kept) over the full-size parameters that zero the dropped groups:
    the "masked model" that ``remove_structures`` must match. ->  name -> bool mask."""
    G.check_kind(kind)
    keep = _check_keep(params, cfg, kind, keep)
    masks = {}
    for i in range(cfg.n_layer):
        parts = G.structure_parts(params, cfg, kind, i)
        factors = keep[0][i : i + 1] if kind == "layers" else keep[i]
        ones = {p.name: np.ones(params[p.name].shape, dtype=bool) for p in parts}
        masks.update(G.scale_groups(ones, parts, factors))
    return masks


def _check_keep(params: dict, cfg, kind: str, keep: list) -> list[np.ndarray]:
    if kind == "layers":
        sizes = [cfg.n_layer]
    else:
        sizes = [
            G.n_groups(params, G.structure_parts(params, cfg, kind, i)) for i in range(cfg.n_layer)
        ]
    if not isinstance(keep, (list, tuple)) or len(keep) != len(sizes):
        raise ValueError(f"keep must be a list of {len(sizes)} bool arrays for kind {kind!r}")
    out = []
    for i, (k, size) in enumerate(zip(keep, sizes, strict=True)):
        k = np.asarray(k)
        if k.dtype != np.bool_ or k.shape != (size,):
            raise ValueError(f"keep[{i}] must be bool [{size}]; got {k.dtype} {k.shape}")
        out.append(k)
    return out


def remove_structures(params: dict, cfg, kind: str, keep: list[np.ndarray]):
    """The physically smaller model: only the kept heads / neurons / layers.

    params: a model of ``cfg``; keep: ``select_structures``'s output.
    -> (new params, new cfg). Heads and neurons: same config (shapes come from the arrays),
    every other array shared with the input; layers: ``n_layer`` lowered and the kept blocks
    renumbered 0, 1, ... in their order. The input is not modified.
    """
    G.check_kind(kind)
    keep = _check_keep(params, cfg, kind, keep)
    what = _names(kind)
    for i, k in enumerate(keep):
        if not k.any():
            raise ValueError(
                f"keep[{i}] keeps no {what}: "
                + ("a model needs a layer" if kind == "layers" else "remove the layer instead")
            )
    if kind == "layers":
        return _remove_layers(params, cfg, keep[0])
    out = dict(params)
    for i in range(cfg.n_layer):
        parts = G.structure_parts(params, cfg, kind, i)
        out.update(G.take_groups(params, parts, np.flatnonzero(keep[i])))
    return out, cfg


def _remove_layers(params: dict, cfg, keep: np.ndarray):
    kept = [int(i) for i in np.flatnonzero(keep)]
    out = {k: a for k, a in params.items() if not k.startswith("blocks.")}
    for new, old in enumerate(kept):
        prefix = f"blocks.{old}."
        for k, a in params.items():
            if k.startswith(prefix):
                out[f"blocks.{new}." + k[len(prefix) :]] = a
    return out, dataclasses.replace(cfg, n_layer=len(kept))


def prune_structures(
    params: dict,
    cfg,
    kind: str,
    sparsity: float,
    criterion: str = "l2",
    scope: str = "local",
    scores: dict | None = None,
):
    """Score, select and remove in one call: the ``sparsity`` share of heads / neurons /
    layers with the lowest ``criterion`` score of their entries (``values``: the weights, or
    element scores such as Taylor's under the same names) is removed.
    -> (new params, new cfg, keep)."""
    values = params if scores is None else {**params, **scores}
    group_scores = structure_scores(values, cfg, kind, criterion)
    keep = select_structures(group_scores, sparsity, kind, scope)
    new_params, new_cfg = remove_structures(params, cfg, kind, keep)
    return new_params, new_cfg, keep
