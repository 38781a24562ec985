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

Storage: ``save_sparse`` writes the same model as one checkpoint file (``nn.checkpoint``)
whose sparse weights use the "csr" encoding (``encode_sparse_weight``: indptr, int16 or int32
indices, float32 or int8 values and scales) and the rest "fp32"; ``load_sparse`` reads it
back for ``SPARSE``. A float32 CSR weight costs 6 bytes per stored value with int16 indices
(4 bytes dense), 3 with int8 values, plus 4 bytes per output feature.
"""

from __future__ import annotations

from pathlib import Path
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
from minicompress.kernels.reference import check_csr
from minicompress.nn.checkpoint import (
    FP32,
    StoredTensor,
    check_savable,
    read_checkpoint,
    write_checkpoint,
)
from minicompress.nn.linear import DENSE
from minicompress.nn.model import check_params, linear_names
from minicompress.prune.masks import check_sparsity

# Lowest sparsity from which kernels.sparse_linear beat the dense float32 product on all four
# block shapes of the default teacher (128x384, 128x128, 128x512, 512x128), both called
# through the linear contract, one thread: at M = 1024 rows (a batch of 8 sequences) 0.2 for
# the first three and 0.4 for 512x128; at M = 128 (one sequence) 0-0.2 and 0.3
# (``python -m minicompress.report.bench_prune --rows M``, 2-core AVX-512 VM). At M = 1 (one
# token of generation) CSR never won on these small layers: a call costs a few microseconds
# more than the dense product takes.
BREAK_EVEN = 0.4


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


# ----------------------------------------------------------------------------------------
# storage: the "csr" encoding of a checkpoint tensor
# ----------------------------------------------------------------------------------------

CSR_ENCODING = "csr"  # the checkpoint encoding of a SparseWeight


def encode_sparse_weight(sw: SparseWeight) -> StoredTensor:
    """A ``SparseWeight`` as a checkpoint tensor (``nn.checkpoint.StoredTensor``).

    arrays: ``indptr`` int32 [N + 1], ``indices`` int16/int32 [nnz], ``data`` float32 or
    int8 [nnz] (CSR of w.T: row n holds output feature n), and ``scale`` float32 [N] for
    int8 values; attrs: ``shape`` [K, N] of the dense weight.
    """
    if not isinstance(sw, SparseWeight):
        raise TypeError(f"encode_sparse_weight takes a SparseWeight; got {type(sw).__name__}")
    arrays = {"indptr": sw.w_t.indptr, "indices": sw.w_t.indices, "data": sw.w_t.data}
    if sw.scale is not None:
        arrays["scale"] = sw.scale
    return StoredTensor(CSR_ENCODING, arrays, {"shape": list(sw.shape)})


def decode_sparse_weight(attrs: dict, arrays: dict) -> SparseWeight:
    """The ``SparseWeight`` a "csr" tensor stores. Refused with a ValueError: missing or
    extra arrays, a shape that is not two positive integers, a CSR structure that
    ``kernels.reference.check_csr`` refuses, int8 values without a scale (or float32 values
    with one), scales that are not finite and positive."""
    shape = attrs.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(type(n) is int and n >= 1 for n in shape)
    ):
        raise ValueError(
            f"a csr tensor's shape must be two positive integers [K, N]; got {shape!r}"
        )
    has_scale = "scale" in arrays
    if set(arrays) - {"scale"} != {"indptr", "indices", "data"}:
        raise ValueError(
            f"a csr tensor holds indptr, indices, data (and scale); got {sorted(arrays)}"
        )
    k, n = shape
    # arrays read from a file carry dtype objects equal to, but not the same as, NumPy's
    # own; the CSR kernels pick their path by dtype identity, so view them as the canonical
    arrays = {role: _canonical(a) for role, a in arrays.items()}
    try:
        w_t = check_csr("w_t", CSR(arrays["indptr"], arrays["indices"], arrays["data"], (n, k)))
    except TypeError as e:
        raise ValueError(str(e)) from None
    int8 = w_t.data.dtype == np.int8
    if int8 != has_scale:
        raise ValueError("int8 values need their float32 scale [N]; float32 values have none")
    scale = None
    if has_scale:
        scale = arrays["scale"]
        if scale.dtype != np.float32 or scale.shape != (n,):
            raise ValueError(f"scale must be float32 [{n}]; got {scale.dtype} {scale.shape}")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("scales must be finite and positive")
    return SparseWeight(w_t, scale)


def _canonical(a: object) -> object:
    """``a`` viewed with NumPy's own dtype object for its type (no copy)."""
    if isinstance(a, np.ndarray) and a.dtype.kind in "iuf" and a.dtype.isnative:
        return a.view(a.dtype.type)
    return a


def save_sparse(
    path,
    params: dict,
    cfg,
    vocab: list[str],
    meta: dict | None = None,
    min_sparsity: float = BREAK_EVEN,
    int8: bool = False,
) -> Path:
    """Write a pruned model as one checkpoint file: the linear weights at least
    ``min_sparsity`` sparse as "csr" (``pack_sparse``), everything else "fp32". Checked
    before a byte is written (``nn.checkpoint.check_savable``); atomic. Returns the file."""
    values = check_savable(params, cfg, vocab, meta)
    runtime = pack_sparse(values, cfg, min_sparsity, int8)
    tensors = {
        name: encode_sparse_weight(v)
        if isinstance(v, SparseWeight)
        else StoredTensor(FP32, {"values": v}, {})
        for name, v in runtime.items()
    }
    return write_checkpoint(path, cfg, vocab, tensors, meta)


def load_sparse(path) -> tuple[dict, object, list[str], dict]:
    """(runtime params, config, vocab, meta) of a checkpoint written by ``save_sparse``:
    "csr" tensors as ``SparseWeight`` (run them with ``SPARSE``), "fp32" ones as arrays.
    ``unpack_sparse`` gives the dense float32 parameters back, equal to those saved (int8
    values: their dequantized values)."""
    ck = read_checkpoint(path)
    where = f"checkpoint {str(ck.path)!r}"
    params = {}
    for name, t in ck.tensors.items():
        try:
            if t.encoding == CSR_ENCODING:
                params[name] = decode_sparse_weight(t.attrs, t.arrays)
            elif t.encoding == FP32 and set(t.arrays) == {"values"}:
                params[name] = t.arrays["values"]
            else:
                raise ValueError(f"encoding {t.encoding!r} is not csr or fp32")
        except ValueError as e:
            raise ValueError(f"{where}: tensor {name!r}: {e}") from None
    try:
        check_params(unpack_sparse(params), ck.cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: the tensors do not make the config's model: {e}") from None
    return params, ck.cfg, ck.vocab, ck.meta
