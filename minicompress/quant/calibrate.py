"""Static activation calibration: run the model over a few batches and record the input of
every chosen linear layer in an observer (course 3.1.2.2, steps 1-2).

``calibrate`` returns one range [lo, hi] per layer; ``static_qparams`` turns them into the
(scale, zero point) that ``FakeQuantLinear(activations="static")`` and a static int8
kernel take. Padding positions (``Batch.pad_mask``) are skipped by the observers.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from minicompress.data.corpus import Batch, get_batch
from minicompress.nn.linear import DENSE, check_linear
from minicompress.nn.model import TransformerConfig, forward, linear_names
from minicompress.quant.observers import make_observer
from minicompress.quant.tensor import QuantSpec, scale_zero_point


class ObservingLinear:
    """A ``linear`` that shows each chosen layer's input to its observer, then runs
    ``inner`` (dense by default). ``skip`` (bool [B, T], True = padding) is set per batch."""

    def __init__(self, observers: dict, inner=DENSE):
        self.observers = observers
        self.inner = check_linear(inner)
        self.skip = None

    def forward(self, name, x, w, b):
        if name in self.observers:
            self.observers[name].update(x, self.skip)  # x [B, T, K], skip [B, T]
        return self.inner.forward(name, x, w, b)

    def backward(self, name, dy, cache):
        return self.inner.backward(name, dy, cache)


def record_inputs(
    params: dict, cfg: TransformerConfig, batches: Iterable, layers=None, inner=DENSE
) -> dict:
    """Every input each linear layer receives over ``batches`` (padding dropped), to look
    at: {layer: float [n_tokens, K]}, in the model whose layers run ``inner`` (the float
    model by default; a fake-quantizing linear for the inputs a quantized model sees).
    Memory grows with the batches: use a few."""

    class Keep:
        def __init__(self):
            self.rows = []

        def update(self, x, skip=None):
            rows = x if skip is None else x[~np.asarray(skip, bool)]  # [..., K] kept
            self.rows.append(rows.reshape(-1, x.shape[-1]).copy())

    names = linear_names(cfg) if layers is None else list(layers)
    observing = ObservingLinear({n: Keep() for n in names}, inner)
    for batch in batches:
        batch = batch if isinstance(batch, Batch) else Batch(np.asarray(batch), None)
        observing.skip = batch.pad_mask
        forward(
            params, batch.x, cfg, observing, pad_mask=batch.pad_mask, token_types=batch.token_types
        )
    return {n: np.concatenate(k.rows) for n, k in observing.observers.items()}


def calibration_batches(
    ids: np.ndarray, n_batches: int, batch_size: int, block_size: int, rng: np.random.Generator
) -> list[Batch]:
    """``n_batches`` random windows of training text (never the validation text)."""
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1; got {n_batches}")
    return [Batch(*get_batch(ids, batch_size, block_size, rng)) for _ in range(n_batches)]


def calibrate(
    params: dict,
    cfg: TransformerConfig,
    batches: Iterable,
    observer: str = "minmax",
    spec: QuantSpec | None = None,
    layers: Iterable[str] | None = None,
    linear=DENSE,
    progress: bool = True,
) -> dict[str, tuple[np.float32, np.float32]]:
    """The range of the input of each linear layer over the calibration batches.

    batches: ``Batch``es (or int arrays [B, T] of token ids); observer: minmax | ema |
    percentile | mse | kl; spec: the activations' grid, which the MSE and KL observers
    optimize for (default 8-bit asymmetric per tensor); layers: default every linear;
    linear: what runs each layer (dense; or a fake-quantized one, to calibrate on the
    outputs of already-quantized layers)  ->  {layer: (lo, hi)}.
    """
    from tqdm.auto import tqdm

    names = linear_names(cfg) if layers is None else list(layers)
    unknown = sorted(set(names) - set(linear_names(cfg)))
    if unknown:
        raise ValueError(f"layers {unknown} are not linear layers of this model")
    spec = QuantSpec(8, "asymmetric", "tensor") if spec is None else spec
    observing = ObservingLinear({n: make_observer(observer, spec) for n in names}, linear)
    seen = 0
    for batch in tqdm(batches, desc=f"calibrate ({observer})", disable=not progress):
        batch = batch if isinstance(batch, Batch) else Batch(np.asarray(batch), None)
        observing.skip = batch.pad_mask
        forward(
            params, batch.x, cfg, observing, pad_mask=batch.pad_mask, token_types=batch.token_types
        )
        seen += 1
    if not seen:
        raise ValueError("calibrate needs at least one batch; got none")
    return {n: obs.range() for n, obs in observing.observers.items()}


def static_qparams(ranges: dict, bits: int = 8, scheme: str = "asymmetric") -> dict:
    """{layer: (scale float32, zero_point int32)} for calibrated ranges {layer: (lo, hi)}
    (widened to hold 0; ``tensor.scale_zero_point``)."""
    spec = QuantSpec(bits, scheme, "tensor")
    out = {}
    for name, (lo, hi) in ranges.items():
        scale, zero_point = scale_zero_point(np.float32(lo), np.float32(hi), spec)
        out[name] = (np.float32(scale), np.int32(zero_point))
    return out
