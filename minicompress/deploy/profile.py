"""Where the milliseconds of a forward pass go: the runtime's forward, one thread, with a
clock around every linear layer (by the kernel that ran it) and every op of the OpImpl.

The model is the runtime's own (``nn.model.forward`` with the runtime's linear and ops);
only the objects handed to it are wrapped, so what is timed is what
runs. Whatever is not inside a timed call (embeddings, residual additions, reshapes of the
heads, the Python of the forward itself) is reported as ``other``.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from minicompress.deploy.runtime import Runtime, single_threaded
from minicompress.nn.backend import OpImpl
from minicompress.nn.model import check_tokens, forward

_OPS_TIMED = {
    "layernorm_forward": "layer norm",
    "gelu_forward": "GELU",
    "attention_forward": "attention",
}


class _Clock:
    def __init__(self, clock):
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, what: str, fn):
        def timed(*args, **kwargs):
            t0 = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[what] += self.clock() - t0

        return timed


class _TimedLinear:
    """The runtime's linear with a clock around each call, filed under the kernel's name."""

    def __init__(self, runtime: Runtime, clock: _Clock):
        self.inner, self.clock = runtime.linear, clock

    def forward(self, name, x, w, b):
        what = f"linear ({self.inner.kernel_of(w)})"
        return self.clock.wrap(what, self.inner.forward)(name, x, w, b)

    def forward_gelu(self, name, x, w, b, approximate):
        """The fused layer + GELU, filed under ``"linear + GELU (kernel)"``; None (and
        nothing filed) when the inner linear declines."""
        fused = getattr(self.inner, "forward_gelu", None)
        t0 = self.clock.clock()
        g = None if fused is None else fused(name, x, w, b, approximate)
        if g is not None:
            self.clock.seconds[f"linear + GELU ({self.inner.kernel_of(w)})"] += (
                self.clock.clock() - t0
            )
        return g

    def backward(self, name, dy, cache):
        return self.inner.backward(name, dy, cache)


def time_breakdown(
    runtime: Runtime, idx: np.ndarray, repeat: int = 5, clock=time.perf_counter
) -> dict[str, float]:
    """Milliseconds per forward pass spent in each part, the median of ``repeat`` passes
    after one warm-up, on the calling thread (BLAS and Numba on one thread).

    idx: int [B, T]  ->  {part: ms} with the linear layers by kernel (``"linear
    (DenseInference)"``; the MLP's first int8 layer with GELU in its epilogue as ``"linear +
    GELU (Int8Linear)"``), ``"attention"``, ``"layer norm"``, ``"GELU"``, ``"other"`` (the
    median total minus the parts' medians) and ``"total"``.
    """
    idx = check_tokens(idx, runtime.cfg)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an integer >= 1; got {repeat!r}")
    runs: list[dict[str, float]] = []
    with single_threaded():
        for i in range(repeat + 1):
            c = _Clock(clock)
            ops = OpImpl(
                **{
                    f: c.wrap(_OPS_TIMED[f], getattr(runtime.ops, f))
                    if f in _OPS_TIMED
                    else getattr(runtime.ops, f)
                    for f in OpImpl._fields
                }
            )
            t0 = clock()
            forward(runtime.params, idx, runtime.cfg, _TimedLinear(runtime, c), op_impl=ops)
            total = clock() - t0
            if i:  # the first pass warms up caches and the allocator
                runs.append({**c.seconds, "total": total})
    keys = sorted({k for r in runs for k in r} - {"total"})
    out = {k: float(np.median([r.get(k, 0.0) for r in runs]) * 1e3) for k in keys}
    total = float(np.median([r["total"] for r in runs]) * 1e3)
    out["other"] = total - sum(out.values())  # the medians of the parts add up to the total
    out["total"] = total
    return out
