"""Importance scores: how much each weight, or each group of weights, matters.

A score array has the shape of its weight; a larger score means more important, so masks
prune the smallest scores first (``masks.py``). Scores are computed here and handed to the
mask functions separately from the weights, as ``torch.nn.utils.prune``'s
``importance_scores``: every pruning method is a score, the masks are shared.

Element scores (course 3.3.2 and the papers it builds on):
    magnitude   s = |w|
    gradient    s = |dL/dw|           dL/dw accumulated over batches (``mean_gradients``)
    Taylor      s = |w * dL/dw|       first-order estimate of the loss change when w -> 0
    movement    S = -sum_t w_t * dL/dw_t   accumulated while fine-tuning (Sanh et al. 2020)
    random      s ~ U[0, 1)           the baseline every paper compares against
Group scores (course 3.3.1): a head, an MLP neuron or a layer scored by the L1 norm, the L2
norm or the mean absolute value of the entries that belong to it (``groups.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from minicompress.prune import groups as G

CRITERIA = ("l1", "l2", "mean_abs")  # group criteria, course 3.3.1
ELEMENT_METHODS = ("magnitude", "gradient", "taylor", "random")  # scores computed at once


def _float_array(name: str, a: object) -> np.ndarray:
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must be a real float array; got dtype {a.dtype}")
    return a


def _same_shape(w: np.ndarray, g: np.ndarray) -> None:
    if w.shape != g.shape:
        raise ValueError(f"w and g must have the same shape; got {w.shape} and {g.shape}")


def magnitude_scores(w: np.ndarray) -> np.ndarray:
    """s = |w| (magnitude pruning: the smallest weights matter least).

    w: float [...]  ->  s: same shape and dtype.
    """
    return np.abs(_float_array("w", w))


def gradient_scores(g: np.ndarray) -> np.ndarray:
    """s = |dL/dw| (the course's gradient criterion, 3.3.2: drop the weights whose gradient
    is smallest in absolute value).

    g: float [...], the gradient of the loss over the calibration batches (the mean of the
    per-batch gradients, ``mean_gradients``)  ->  s: same shape and dtype.
    Near a minimum dL/dw is small everywhere and mostly batch noise: this criterion then ranks
    weights by how noisy their gradient is (tutorial 10 measures what that costs).
    """
    return np.abs(_float_array("g", g))


def taylor_scores(w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """s = |w * dL/dw|: the first-order Taylor estimate of how much the loss changes when w
    is set to zero, |L(w = 0) - L(w)| ~ |-w dL/dw| (Molchanov et al. 2017, 2019; LeCun et al.
    1990 keep the second-order term).

    w, g: float [...] of the same shape  ->  s: same shape, w's dtype.
    """
    w, g = _float_array("w", w), _float_array("g", g)
    _same_shape(w, g)
    return np.abs(w * g).astype(w.dtype, copy=False)


def movement_update(score: np.ndarray, w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """One step of movement scores (Sanh, Wolf & Rush 2020, "Movement Pruning"):

        S <- S - w * dL/dw

    Summed over fine-tuning steps, S is large for weights that move away from zero (w and
    -dL/dw, the direction of the update, agree in sign) and small or negative for weights
    shrinking towards zero: those are pruned first, whatever their size now.

    score, w, g: float [...] of one shape  ->  the new score (the inputs are not modified).
    """
    score, w, g = _float_array("score", score), _float_array("w", w), _float_array("g", g)
    _same_shape(w, g)
    _same_shape(score, w)
    return (score - w * g).astype(score.dtype, copy=False)


def random_scores(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """s ~ U[0, 1), independent per entry: random pruning, the baseline (float32 [shape])."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    return rng.random(shape, dtype=np.float32)


def group_score(rows: np.ndarray, criterion: str) -> np.ndarray:
    """Score of each group from the entries that belong to it (course 3.3.1):

        l1:       sum_j |x_gj|
        l2:       sqrt(sum_j x_gj^2)
        mean_abs: (1 / n_g) sum_j |x_gj|

    rows: float [G, n], row g the entries of group g (weights, or element scores such as
    |w dL/dw|); criterion: one of ``CRITERIA``  ->  float64 [G] (a sum over thousands of
    float32 entries is accumulated in float64). A group with no entries is refused.
    """
    rows = _float_array("rows", rows)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"rows must be [G, n] with n >= 1 entries per group; got {rows.shape}")
    x = rows.astype(np.float64)
    if criterion == "l1":
        return np.abs(x).sum(axis=1)
    if criterion == "l2":
        return np.sqrt(np.square(x).sum(axis=1))
    if criterion == "mean_abs":
        return np.abs(x).mean(axis=1)
    raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")


def structure_scores(
    values: dict[str, np.ndarray], cfg, kind: str, criterion: str = "l2"
) -> list[np.ndarray]:
    """Score of every head / MLP neuron / layer of the model, layer by layer.

    values: the parameters (scores by L1, L2, mean |w| of the weights) or element scores
    under the same names (e.g. Taylor scores); kind: ``"heads"``, ``"neurons"`` or
    ``"layers"`` (``groups.KINDS``); criterion: see ``group_score``.
    -> kind heads / neurons: one float64 array [H_i] / [F_i] per block;
       kind layers: one float64 array [n_layer].
    Which entries belong to a group is ``groups.structure_parts``.
    """
    per_layer = [
        group_score(G.gather_groups(values, G.structure_parts(values, cfg, kind, i)), criterion)
        for i in range(cfg.n_layer)
    ]
    return [np.concatenate(per_layer)] if kind == "layers" else per_layer


def element_scores(
    method: str,
    params: dict[str, np.ndarray],
    names: Iterable[str],
    grads: dict[str, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Scores of the weights ``names`` by one of the element criteria (``ELEMENT_METHODS``).

    magnitude needs only ``params``; gradient and taylor need ``grads`` (``mean_gradients``);
    random needs ``rng``; movement scores are accumulated while fine-tuning (``Movement``)
    and are not computed here.  ->  dict name -> score array (shape of the weight).
    """
    names = list(names)
    if method not in ELEMENT_METHODS:
        raise ValueError(f"method must be one of {', '.join(ELEMENT_METHODS)}; got {method!r}")
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(
            f"unknown parameter names {unknown}; the model has {sorted(params)[:8]}..."
        )
    if method in ("gradient", "taylor"):
        if grads is None or any(n not in grads for n in names):
            raise ValueError(f"method {method!r} needs the gradients of {names} (mean_gradients)")
    if method == "magnitude":
        return {n: magnitude_scores(params[n]) for n in names}
    if method == "gradient":
        return {n: gradient_scores(grads[n]) for n in names}
    if method == "taylor":
        return {n: taylor_scores(params[n], grads[n]) for n in names}
    if rng is None:
        raise ValueError("method 'random' needs rng, a numpy.random.Generator")
    return {n: random_scores(params[n].shape, rng) for n in names}


def mean_gradients(
    params: dict[str, np.ndarray],
    cfg,
    batches: Iterable,
    names: Iterable[str] | None = None,
    loss=None,
    linear=None,
) -> dict[str, np.ndarray]:
    """dL/dw of the loss averaged over calibration batches: (1 / n) sum_b dL_b/dw, i.e. the
    gradient of the mean loss over the n batches (the course's dL/dw, on more data than one
    batch). Accumulated in float64, returned in each weight's dtype.

    batches: ``data.Batch`` objects (e.g. ``data.lm_batch`` draws); loss: a loss hook
    ``(params, batch, cfg, linear) -> (loss, grads)``, default next-token cross-entropy;
    names: the weights wanted (default all).  ->  name -> mean gradient.
    """
    from minicompress.nn.linear import DENSE
    from minicompress.nn.train import next_token_loss

    loss = next_token_loss if loss is None else loss
    linear = DENSE if linear is None else linear
    total: dict[str, np.ndarray] = {}
    count = 0
    for batch in batches:
        _, grads = loss(params, batch, cfg, linear)
        wanted = grads.keys() if names is None else names
        for n in wanted:
            if n not in grads:
                raise ValueError(f"the loss returned no gradient for {n!r}")
            total[n] = total.get(n, 0.0) + grads[n].astype(np.float64)
        count += 1
    if count == 0:
        raise ValueError("batches is empty: give at least one calibration batch")
    return {n: (g / count).astype(params[n].dtype) for n, g in total.items()}


class Movement:
    """After-step hook accumulating movement scores S <- S - w * dL/dw (``movement_update``)
    for the weights ``names`` at every optimizer step.

    ``grads`` are the ones the step used (after clipping; clipping rescales every gradient by
    the same factor, so the ranking inside a step is unchanged) and ``params`` the weights
    just updated. ``scores`` holds S (float32, the weights' shapes), starting at zero.
    """

    def __init__(self, params: dict[str, np.ndarray], names: Iterable[str]):
        self.scores = {n: np.zeros_like(params[n]) for n in names}

    def __call__(self, step: int, params: dict, grads: dict, opt) -> None:
        for n in self.scores:
            self.scores[n] = movement_update(self.scores[n], params[n], grads[n])
