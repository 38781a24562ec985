"""The inference runtime: the one model, ``nn.model.forward``, with inference ops, a linear
that runs each layer on the kernel its weight is stored for, and the batch split between
threads.

What it puts together (none of it a second copy of the model):

- ``deploy.ops.INFERENCE_OPS``: layer norm, GELU and attention without training caches;
- ``RuntimeLinear``: a ``linear`` of the model's contract that looks at how each weight is
  stored and hands the layer to the object that runs it — a float32 array to the BLAS
  product, a packed int8 weight to the int8 kernels, a CSR weight to the sparse kernels; a
  layer removed by structured pruning is simply a smaller array;
- ``nn.model.KVCache`` and ``nn.model.generate`` for generation (each new token costs one
  position).

Threads: a layer of a batch of 32 x 128 tokens is a few milliseconds of work; sharing each
product between two threads makes them wait for each other a dozen times per block, and on a
busy machine a waiting thread loses its core for a whole time slice (measured here: the
training forward 2.7 s against 0.4 s when each thread ran half the batch alone, under a
load of 11 on 2 cores). So the runtime splits the *batch*: each of ``threads`` worker
threads runs ``forward`` on its share of the sequences with BLAS and Numba on one thread,
and the threads meet once, at the end. NumPy's BLAS calls and the Numba kernels release
the GIL (every kernel of ``kernels/`` and ``deploy/`` is compiled ``nogil``: without it the
workers took turns, and two threads ran all-MiniLM-L6-v2 no faster than one), so the
workers really run at the same time. A batch too small to split (one sequence) runs on the
calling thread with Numba's threads instead: the int8 layers share their columns or rows,
the attention its heads, a large GELU its elements; BLAS stays on one thread (OpenBLAS's
spinning threads beside Numba's OpenMP ones took a float32 sequence of the teacher from 2.6
to 28-48 ms on these 2 cores). The BLAS and Numba thread counts are set for the duration of
a call (``one_blas_thread``, ``numba_threads``) and restored afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

from minicompress.deploy.ops import INFERENCE_OPS, INT8_INFERENCE_OPS
from minicompress.kernels import PackedInt8Linear
from minicompress.nn.backend import OpImpl
from minicompress.nn.model import (
    TransformerConfig,
    check_tokens,
    forward,
    generate,
)
from minicompress.nn.ops import linear_forward
from minicompress.platform import tune_allocator
from minicompress.prune.sparse import SPARSE, SparseWeight
from minicompress.quant.runtime import INT8

# ----------------------------------------------------------------------------------------
# the runtime linear: one kernel per storage
# ----------------------------------------------------------------------------------------


class DenseInference:
    """A float32 weight [K, N]: ``ops.linear_forward`` (one BLAS sgemm, then the bias); no
    cache is kept."""

    def forward(self, name: str, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple:
        return linear_forward(x, w, b)[0], None

    def backward(self, name: str, dy: np.ndarray, cache) -> tuple:
        raise TypeError(f"layer {name!r}: the inference runtime has no backward")


DENSE_INFERENCE = DenseInference()


def default_handlers() -> dict[type, object]:
    """Which object runs a layer, by the type of its stored weight: a float32 array the
    BLAS product, a ``kernels.PackedInt8Linear`` the int8 kernels (``quant.runtime.INT8``,
    bias inside the packed layer), a ``prune.sparse.SparseWeight`` the CSR kernels
    (``prune.sparse.SPARSE``, float32 or int8 values)."""
    return {np.ndarray: DENSE_INFERENCE, PackedInt8Linear: INT8, SparseWeight: SPARSE}


class RuntimeLinear:
    """The ``linear`` of the inference runtime: each layer runs on the object registered for
    the type of its weight (``handlers``: {type: linear object}; default
    ``default_handlers()``). A weight of a type nobody handles is refused by name. fuse:
    let a handler apply the MLP's GELU inside its layer (``forward_gelu``)."""

    def __init__(self, handlers: dict[type, object] | None = None, fuse: bool = False):
        self.handlers = dict(default_handlers() if handlers is None else handlers)
        self.fuse = fuse

    def forward(self, name: str, x: np.ndarray, w, b: np.ndarray | None) -> tuple:
        handler = self.handlers.get(type(w))
        if handler is None:
            allowed = ", ".join(t.__name__ for t in self.handlers)
            raise TypeError(
                f"layer {name!r} stores its weight as {type(w).__name__}; the runtime runs "
                f"{allowed}"
            )
        return handler.forward(name, x, w, b)

    def forward_gelu(self, name: str, x: np.ndarray, w, b, approximate: str):
        """GELU(x @ w + b) by the handler's own ``forward_gelu`` (the int8 kernels' epilogue),
        or None (the model then runs ``forward`` and its GELU op) if it has none or
        ``fuse`` is off."""
        fused = getattr(self.handlers.get(type(w)), "forward_gelu", None) if self.fuse else None
        return None if fused is None else fused(name, x, w, b, approximate)

    def backward(self, name: str, dy: np.ndarray, cache) -> tuple:
        raise TypeError(f"layer {name!r}: the inference runtime has no backward")

    def kernel_of(self, w) -> str:
        """The name of the object that runs a weight stored like ``w``."""
        handler = self.handlers.get(type(w))
        return type(handler).__name__ if handler is not None else "none"


# ----------------------------------------------------------------------------------------
# threads
# ----------------------------------------------------------------------------------------

_controller = None
_controller_lock = threading.Lock()


def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries (found once: it walks the loaded
    shared objects)."""
    global _controller
    with _controller_lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        return _controller


@functools.cache
def _blas_libraries() -> tuple:
    """threadpoolctl's controllers of the loaded BLAS libraries."""
    return tuple(_blas_controller().select(user_api="blas").lib_controllers)


@contextlib.contextmanager
def one_blas_thread():
    """A context in which every loaded BLAS runs on the calling thread only; each library's
    thread count is restored on exit. (Read and set library by library: threadpoolctl's
    ``limit`` reads every library's whole description first, 11 us of a 1 ms forward.)"""
    changed = []
    for lib in _blas_libraries():
        n = lib.get_num_threads()
        if n is not None and n != 1:
            lib.set_num_threads(1)
            changed.append((lib, n))
    try:
        yield
    finally:
        for lib, n in changed:
            lib.set_num_threads(n)


@contextlib.contextmanager
def numba_threads(n: int = 1):
    """A context in which this thread's Numba kernels use ``n`` threads (capped at Numba's
    pool size) and BLAS runs on the calling thread only. Numba's thread count is per
    thread: the old one is restored on exit."""
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        with one_blas_thread():
            yield
    finally:
        numba.set_num_threads(old)


def single_threaded():
    """A context in which BLAS and this thread's Numba kernels run on the calling thread
    only."""
    return numba_threads(1)


def _single_threaded_worker() -> None:
    numba.set_num_threads(1)  # thread-local: this worker's Numba kernels stay on it


@dataclass(frozen=True)
class RuntimeConfig:
    threads: int = 2  # worker threads; each runs forward on its share of the batch
    min_rows_per_thread: int = 1  # sequences a thread must get before the batch is split
    # int8 layers: carry their activations' codes from the layer that makes them (layer
    # norms, the MLP's first layer) and apply GELU in the first layer's epilogue
    # (``kernels/carried.py``, ``epilogue.py``): the same numbers, bit for bit. Off by
    # default: measured 0-10% slower on the 2-core Zen 5 (the passes it saves read data
    # still in L2/L3: they cost their arithmetic, which stays; README "fused int8 layers")
    fuse: bool = False

    def __post_init__(self):
        for name in ("threads", "min_rows_per_thread"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if not isinstance(self.fuse, bool):
            raise ValueError(f"fuse must be True or False; got {self.fuse!r}")


def batch_slices(b: int, threads: int, min_rows: int = 1) -> list[slice]:
    """Split B sequences into at most ``threads`` contiguous shares of nearly equal size,
    each of at least ``min_rows`` sequences (one share when B is too small)."""
    n = max(1, min(threads, b // max(1, min_rows)))
    bounds = [_round_half_even(i * b, n) for i in range(n + 1)]  # i b / n, rounded
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    return [slice(lo, hi) for lo, hi in pairs if hi > lo]


def _round_half_even(num: int, den: int) -> int:
    """num / den (den > 0) rounded to the nearest integer, ties to even, in integers."""
    q, r = divmod(num, den)
    return q + (2 * r > den or (2 * r == den and q % 2 == 1))


def runtime_ops(params: dict, linear, fuse: bool = False) -> OpImpl:
    """The op table the runtime runs: ``INT8_INFERENCE_OPS`` (each layer norm also writes the
    codes of its output for the int8 layer that reads it) when ``fuse`` is on, some weight
    is a packed int8 layer and ``linear`` runs those with dynamic activation ranges (static
    ones have their own scales); else ``INFERENCE_OPS``."""
    handler = linear.handlers.get(PackedInt8Linear) if isinstance(linear, RuntimeLinear) else None
    dynamic = handler is not None and getattr(handler, "act_qparams", 0) is None
    packed = any(isinstance(v, PackedInt8Linear) for v in params.values())
    return INT8_INFERENCE_OPS if fuse and dynamic and packed else INFERENCE_OPS


# ----------------------------------------------------------------------------------------
# the runtime
# ----------------------------------------------------------------------------------------


class Runtime:
    """A model ready for inference: its (possibly packed) parameters, its config, the
    runtime linear and a pool of worker threads.

    params: the model's parameters, each linear weight stored as any type ``linear``
    handles (float32 arrays, ``PackedInt8Linear``, CSR weights); cfg: its config; rc: the
    threads and ``fuse``; linear: a ``RuntimeLinear`` (its handlers are used, with rc's
    ``fuse``) or any object of the ``linear`` contract.
    """

    def __init__(
        self,
        params: dict,
        cfg: TransformerConfig,
        rc: RuntimeConfig | None = None,
        linear: RuntimeLinear | None = None,
    ):
        if not isinstance(cfg, TransformerConfig):
            raise TypeError(f"cfg must be a TransformerConfig; got {type(cfg).__name__}")
        self.params = params
        self.cfg = cfg
        self.rc = RuntimeConfig() if rc is None else rc
        if linear is None or isinstance(linear, RuntimeLinear):  # its handlers, rc's fuse
            linear = RuntimeLinear(None if linear is None else linear.handlers, self.rc.fuse)
        self.linear = linear
        self.ops = runtime_ops(params, self.linear, self.rc.fuse)
        self._pool: ThreadPoolExecutor | None = None
        tune_allocator()  # MB-sized activations: keep freed pages instead of re-faulting them

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.rc.threads,
                thread_name_prefix="minicompress-runtime",
                initializer=_single_threaded_worker,
            )
        return self._pool

    def close(self) -> None:
        """Stop the worker threads (they also stop with the process)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _forward_part(self, idx, pad_mask, token_types):
        out, _ = forward(self.params, idx, self.cfg, self.linear, pad_mask, token_types, self.ops)
        return np.asarray(out)  # a plain array (a layer norm's output may carry codes)

    def forward(
        self,
        idx: np.ndarray,
        pad_mask: np.ndarray | None = None,
        token_types: np.ndarray | None = None,
    ) -> np.ndarray:
        """``nn.model.forward``'s output (logits [B, T, V], or hidden states [B, T, C] for a
        model without head) computed by the runtime, the batch split between the threads."""
        idx = check_tokens(idx, self.cfg)
        parts = batch_slices(idx.shape[0], self.rc.threads, self.rc.min_rows_per_thread)

        def cut(a, s):
            return None if a is None else np.asarray(a)[s]

        if len(parts) == 1:  # one share (a batch of one): the threads share each kernel
            with numba_threads(self.rc.threads):
                return self._forward_part(idx, pad_mask, token_types)
        with one_blas_thread():
            pool = self._workers()
            futures = [
                pool.submit(self._forward_part, idx[s], cut(pad_mask, s), cut(token_types, s))
                for s in parts
            ]
            outs = [f.result() for f in futures]
        return np.concatenate(outs, axis=0)

    def generate(
        self,
        prompt: np.ndarray,
        n_tokens: int,
        rng: np.random.Generator,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
    ) -> np.ndarray:
        """``nn.model.generate`` (the one generation loop; with the key/value cache each new
        token costs one position) on the runtime's ops and linear, on the calling thread."""
        with single_threaded():
            return generate(
                self.params,
                self.cfg,
                prompt,
                n_tokens,
                rng,
                temperature,
                top_k,
                linear=self.linear,
                use_cache=use_cache,
                op_impl=self.ops,
            )
