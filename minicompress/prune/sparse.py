"""Sparse inference: a pruned model's linear layers run on the CSR kernels.

A mask alone saves nothing (tutorial 08): the zeros are still stored and multiplied. Here
each pruned weight w [K, N] is stored as CSR of w.T ([N, K], one row per output feature,
``kernels.dense_to_csr``), optionally with int8 values and one scale per output feature
(``kernels.quantize_csr``: prune, then quantize), and the model runs it through the ``linear``
contract: ``SparseLinear.forward`` calls ``kernels.sparse_linear`` for a ``SparseWeight`` and
the dense product for an ordinary array.

Which layers go sparse: CSR pays only beyond a break-even sparsity (each stored weight costs
an index and an indirect load, where a dense product streams). ``pack_sparse`` converts the
layers whose measured sparsity is at least ``min_sparsity`` and leaves the others dense;
``BREAK_EVEN`` is the default, measured by ``report/bench_prune.py`` (``break_even``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minicompress.kernels import (
    CSR,
    csr_to_dense,
    dense_to_csr,
    dequantize_csr,
    quantize_csr,
    sparse_linear,
)
from minicompress.nn.linear import DENSE
from minicompress.nn.model import linear_names
from minicompress.prune.masks import check_sparsity

# Lowest sparsity at which kernels.sparse_linear beat the dense float32 product on the
# teacher's four block shapes (128x384, 128x128, 128x512, 512x128) with 4096 rows (a batch
# of 32 x 128 tokens), one thread, on the 2-core AVX-512 machine of this project: 0.7 for
# the smallest, 0.8 for the others ("python -m minicompress.report.bench_prune").
BREAK_EVEN = 0.8


class SparseWeight(NamedTuple):
    """A linear weight w [K, N] stored for ``kernels.sparse_linear``.

    w_t:   CSR [N, K] of w.T, float32 or int8 values
    scale: float32 [N] per output feature for int8 values (w = scale[n] * q), else None
    """

    w_t: CSR
    scale: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(K, N): the shape of the dense weight it stands for."""
        n, k = self.w_t.shape
        return (k, n)

    def nbytes(self) -> int:
        return self.w_t.nbytes() + (0 if self.scale is None else int(self.scale.nbytes))


def to_sparse_weight(w: np.ndarray, int8: bool = False) -> SparseWeight:
    """CSR of w.T (index dtype int16 when K fits, halving the index bytes), float32 values or
    int8 values with a per-output-feature scale.  w: float32 [K, N]."""
    if not isinstance(w, np.ndarray) or w.ndim != 2:
        raise TypeError(f"w must be a 2-D float32 array [K, N]; got {type(w).__name__}")
    k = w.shape[0]
    index_dtype = np.int16 if k <= np.iinfo(np.int16).max else np.int32
    w_t = dense_to_csr(np.ascontiguousarray(w.T, dtype=np.float32), index_dtype)  # [N, K]
    if not int8:
        return SparseWeight(w_t, None)
    q_t, scale = quantize_csr(w_t)
    return SparseWeight(q_t, scale)


def to_dense_weight(w: SparseWeight) -> np.ndarray:
    """The dense float32 [K, N] weight a ``SparseWeight`` stands for (int8 values scaled)."""
    w_t = w.w_t if w.scale is None else dequantize_csr(w.w_t, w.scale)
    return np.ascontiguousarray(csr_to_dense(w_t).T)


class SparseLinear:
    """The ``linear`` of sparse inference: ``SparseWeight`` -> ``kernels.sparse_linear``,
    an ndarray -> the dense product. Inference only (``backward`` refuses a sparse layer)."""

    def forward(self, name: str, x: np.ndarray, w, b: np.ndarray | None) -> tuple:
        if not isinstance(w, SparseWeight):
            return DENSE.forward(name, x, w, b)
        k, n = w.shape
        x2 = np.ascontiguousarray(x.reshape(-1, k), dtype=np.float32)  # [..., K] -> [M, K]
        y = sparse_linear(x2, w.w_t, b, scale=w.scale)  # [M, N]
        return y.reshape(*x.shape[:-1], n), None

    def backward(self, name: str, dy: np.ndarray, cache) -> tuple:
        if cache is None:
            raise TypeError(
                f"layer {name!r} runs on a CSR weight: sparse inference has no backward"
            )
        return DENSE.backward(name, dy, cache)

    def __repr__(self) -> str:
        return "SparseLinear()"


SPARSE = SparseLinear()


def layer_sparsity(w: np.ndarray) -> float:
    """Fraction of exact zeros of one weight."""
    return 1.0 - np.count_nonzero(w) / w.size


def pack_sparse(params: dict, cfg, min_sparsity: float = BREAK_EVEN, int8: bool = False) -> dict:
    """Runtime parameters for ``SPARSE``: every linear weight whose sparsity is at least
    ``min_sparsity`` becomes a ``SparseWeight``; the other arrays are shared as they are.
    min_sparsity: in [0, 1] (0: every layer sparse, 1: only fully zero ones); int8: quantize
    the stored values (prune, then quantize). The input is not modified."""
    check_sparsity(min_sparsity, "min_sparsity")
    out = dict(params)
    for name in linear_names(cfg):
        w = params[name + ".w"]
        if isinstance(w, np.ndarray) and layer_sparsity(w) >= min_sparsity:
            out[name + ".w"] = to_sparse_weight(w, int8)
    return out


def unpack_sparse(params: dict) -> dict:
    """Dense parameters again: each ``SparseWeight`` back to its float32 [K, N] array."""
    return {k: to_dense_weight(v) if isinstance(v, SparseWeight) else v for k, v in params.items()}


def sparse_layers(params: dict) -> list[str]:
    """Names of the weights stored as CSR."""
    return [k for k, v in params.items() if isinstance(v, SparseWeight)]
