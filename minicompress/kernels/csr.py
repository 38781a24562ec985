"""The CSR kernels' public functions, with the contracts of ``reference.py``: conversion and
the sparse linear layer.

Every public function here has the signature and the result of its twin in ``reference.py``
(``dense_to_csr``, ``csr_to_dense``, ``csr_matmul_reference``, ``sparse_linear_reference``),
plus a ``path=`` keyword naming the implementation (``csr_kernel_path``):

- ``"reference"``: the NumPy twin;
- ``"portable"``: the plain Numba kernels of ``csr_portable.py`` (tier 1, any CPU);
- ``"simd"``: the x86 kernels (tier 2): ``x86/csr_spmm.py`` (activations packed in blocks,
  register tiles) and, for M < 4, ``x86/csr_spmv.py`` (16-lane gathers).

Conversions are bit for bit equal on every path; products agree to float32 rounding (each
path sums in its own order). int8 values (``quantize_csr``) are converted to float32 as they
are read; the per-row scale is applied once per output.

An invalid CSR structure is refused with ``reference.check_csr``'s message on every path:
the reference and portable paths check it first; the simd kernels check it as they read it,
cheaply, and a part that finds a fault makes ``check_csr`` raise. Non-contiguous arrays are
copied to contiguous ones (only the copy costs).
"""

from __future__ import annotations

import functools
import importlib

import numpy as np

from minicompress.kernel_choice import choice_source, kernel_choice
from minicompress.kernels import cpu, csr_portable, reference
from minicompress.kernels.reference import (
    CSR,
    check_array,
    check_csr,
    check_index_dtype,
    check_matmul_operands,
)

CSR_PATHS = ("reference", "portable", "simd")


def csr_kernel_path(path: str | None = None) -> str:
    """Which CSR implementation runs: ``"reference"``, ``"portable"`` or ``"simd"``.

    ``path`` None reads ``MINICOMPRESS_KERNEL`` (``kernel_choice``, default ``auto``); a
    ``path`` is one of its values or of ``CSR_PATHS``. ``reference`` and ``portable`` name
    themselves; ``auto`` runs the simd kernels on an x86-64 CPU when Numba compiles (not
    under ``NUMBA_DISABLE_JIT=1``), else the portable ones; ``simd`` and the x86 int8
    choices (``vnni``, ``amx``) run the simd kernels (CSR has no per-instruction-set
    variant), which need an x86-64 CPU.
    """
    choice = "simd" if path == "simd" else kernel_choice(path)
    if choice == "auto":
        return _AUTO
    if choice in ("reference", "portable"):
        return choice
    if not cpu.is_x86_64():
        source = choice_source(path)
        raise ValueError(
            f"{source}={choice!r} needs an x86-64 CPU for the CSR kernels; use 'portable' or 'auto'"
        )
    return "simd"


_AUTO = "simd" if cpu.is_x86_64() and cpu.jit_enabled() else "portable"  # what auto runs here
_spmm = None  # x86/csr_spmm.py, imported the first time the simd path runs


def _x86_spmm():
    global _spmm
    if _spmm is None:
        _spmm = importlib.import_module("minicompress.kernels.x86.csr_spmm")
    return _spmm


# ----------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------


def dense_to_csr(a: np.ndarray, index_dtype: type = np.int32, *, path: str | None = None) -> CSR:
    """CSR of a dense 2-D array, keeping its dtype (float32 or int8) and its non-zeros.

    Same contract as ``reference.dense_to_csr``: a: float32 or int8 [R, C]  ->  CSR with
    indices of ``index_dtype`` (int32, or int16 when C <= 32768), indptr int32 [R + 1].
    Two parallel passes over the rows: count the non-zeros, then write them.
    """
    if csr_kernel_path(path) == "reference":
        return reference.dense_to_csr(a, index_dtype)
    check_array("a", a, (np.float32, np.int8), 2)
    index_dtype = check_index_dtype(index_dtype, a.shape[1])
    a = np.ascontiguousarray(a)
    counts = np.zeros(a.shape[0] + 1, dtype=np.int64)  # [R + 1], counts[0] = 0
    csr_portable.count_nonzeros(a, counts)
    offsets = np.cumsum(counts)  # [R + 1] int64
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"a has {offsets[-1]} non-zeros: too many for int32 indptr")
    indptr = offsets.astype(np.int32)
    indices = np.empty(int(offsets[-1]), dtype=index_dtype)  # [nnz]
    data = np.empty(int(offsets[-1]), dtype=a.dtype)  # [nnz]
    csr_portable.fill_csr(a, indptr, indices, data)
    return CSR(indptr, indices, data, (a.shape[0], a.shape[1]))


def csr_to_dense(m: CSR, *, path: str | None = None) -> np.ndarray:
    """The dense [R, C] array that a CSR matrix stands for (``reference.csr_to_dense``)."""
    if csr_kernel_path(path) == "reference":
        return reference.csr_to_dense(m)
    m = _contiguous_csr(check_csr("m", m))
    out = np.zeros(m.shape, dtype=m.data.dtype)  # [R, C]
    csr_portable.scatter_csr(m.indptr, m.indices, m.data, out)
    return out


def quantize_csr(w_t: CSR) -> tuple[CSR, np.ndarray]:
    """Symmetric int8 values with one scale per row of ``w_t`` (= per output feature).

    The formula is ``reference.quantize_weight_per_channel`` applied to w = w_t.T:
    s_n = max_k |w_t[n, k]| / 127,  q = clip(round(w_t[n, k] / s_n), -127, 127).
    The sparsity pattern is kept as it is (a value rounding to 0 stays stored).

    w_t: CSR [N, K] with float32 data  ->  (CSR [N, K] with int8 data, scale float32 [N]).
    """
    check_csr("w_t", w_t)
    if w_t.data.dtype != np.float32:
        raise TypeError(f"w_t.data must be float32 to quantize; got {w_t.data.dtype}")
    q, scale = reference.quantize_weight_per_channel(reference.csr_to_dense(w_t).T)  # [K, N]
    rows = np.repeat(np.arange(w_t.shape[0]), np.diff(w_t.indptr))  # [nnz]
    data = q.T[rows, w_t.indices.astype(np.int64)]  # [nnz] int8, the stored positions only
    return CSR(w_t.indptr.copy(), w_t.indices.copy(), data, w_t.shape), scale


def dequantize_csr(w_t: CSR, scale: np.ndarray) -> CSR:
    """float32 CSR of ``v = scale[n] * q`` for each stored int8 value q of row n.

    w_t: CSR [N, K] with int8 data; scale: float32 [N]  ->  CSR [N, K] with float32 data.
    """
    check_csr("w_t", w_t)
    if w_t.data.dtype != np.int8:
        raise TypeError(f"w_t.data must be int8 to dequantize; got {w_t.data.dtype}")
    _check_vector("scale", scale, w_t.shape[0])
    rows = np.repeat(np.arange(w_t.shape[0]), np.diff(w_t.indptr))  # [nnz]
    data = (scale[rows] * w_t.data.astype(np.float32)).astype(np.float32)  # [nnz]
    return CSR(w_t.indptr.copy(), w_t.indices.copy(), data, w_t.shape)


def csr_matmul(a: CSR, b: np.ndarray, *, path: str | None = None) -> np.ndarray:
    """CSR x dense: ``c = a @ b`` (contract of ``reference.csr_matmul_reference``).

    a: CSR [R, C] with float32 data; b: float32 [C, M]  ->  c: float32 [R, M].
    """
    choice = csr_kernel_path(path)
    if choice == "reference":
        return reference.csr_matmul_reference(a, b)
    _check_csr_cheap("a", a)
    check_matmul_operands(a, b)
    r, m = a.shape[0], b.shape[1]
    ones, zeros = _constant_vector(r, 1.0), _constant_vector(r, 0.0)
    return _run(choice, a, np.ascontiguousarray(b), False, ones, zeros, (r, m), "a")


def sparse_linear(
    x: np.ndarray,
    w_t: CSR,
    bias: np.ndarray | None = None,
    *,
    scale: np.ndarray | None = None,
    path: str | None = None,
) -> np.ndarray:
    """A linear layer with a sparse weight: ``y = x @ w + bias`` where ``w_t`` is CSR of w.T.

    Contract of ``reference.sparse_linear_reference``, extended to int8 values:
    x: float32 [M, K]; w_t: CSR [N, K]; bias: float32 [N] or None  ->  y: float32 [M, N].
    float32 data: y[m, n] = sum_j v_j x[m, idx_j] + bias[n]  (``scale`` must be None).
    int8 data (from ``quantize_csr``): ``scale`` float32 [N] is required and
    y[m, n] = scale[n] * sum_j q_j x[m, idx_j] + bias[n], i.e. the float32 layer of
    ``dequantize_csr(w_t, scale)``.
    """
    choice = csr_kernel_path(path)
    _check_csr_cheap("w_t", w_t)
    if not _is(x, _FLOAT32, 2):
        check_array("x", x, (np.float32,), 2)
    n, k = w_t.shape
    if x.shape[1] != k:
        raise ValueError(f"x is {x.shape} and w_t is {w_t.shape}: x.shape[1] must equal K")
    int8_data = w_t.data.dtype is _INT8  # the dtype objects are unique: identity suffices
    if int8_data and scale is None:
        raise ValueError("w_t has int8 data: pass its per-row float32 scale [N] as scale=")
    if not int8_data and scale is not None:
        raise ValueError("scale= is only for int8 data; w_t has float32 data")
    if scale is not None:
        _check_vector("scale", scale, n)
    if bias is not None:
        _check_vector("bias", bias, n)
    if choice == "reference":
        w_ref = w_t if scale is None else dequantize_csr(w_t, scale)
        return reference.sparse_linear_reference(x, w_ref, bias)
    scale_n = _constant_vector(n, 1.0) if scale is None else np.ascontiguousarray(scale)
    bias_n = _constant_vector(n, 0.0) if bias is None else np.ascontiguousarray(bias)
    x = x if x.flags.c_contiguous else np.ascontiguousarray(x)
    return _run(choice, w_t, x, True, scale_n, bias_n, (x.shape[0], n), "w_t")


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _constant_vector(n: int, value: float) -> np.ndarray:
    """A float32 [n] filled with ``value`` (the scale or bias of a layer without one), made
    once per size: allocating two per call cost 2-3 us, a tenth of a product at M = 1.
    Only the kernels read it, and they never write it (left writeable, so that Numba does
    not compile a second, read-only signature of every kernel)."""
    return np.full(n, value, dtype=np.float32)


def _check_vector(name: str, v: object, n: int) -> None:
    if not _is(v, _FLOAT32):
        check_array(name, v, (np.float32,), 1)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {v.shape}")


def _contiguous_csr(m: CSR) -> CSR:
    indptr, indices, data = m.indptr, m.indices, m.data
    if indptr.flags.c_contiguous and indices.flags.c_contiguous and data.flags.c_contiguous:
        return m
    return CSR(*(np.ascontiguousarray(a) for a in (indptr, indices, data)), m.shape)


def _check_csr_cheap(name: str, m: object) -> None:
    """The part of ``check_csr`` that must run before a kernel is chosen: types, dtypes and
    dimensions (another dtype or layout would make Numba compile a new kernel, for seconds).
    The kernels check the rest (lengths, indptr ends, then each row) before they read it.
    Silent and fast when all is well; on any doubt ``check_csr`` raises its message."""
    if isinstance(m, CSR):
        indptr, indices, data, shape = m
        if (
            type(indptr) is np.ndarray  # identity checks: 0.1 us cheaper each
            and type(indices) is np.ndarray
            and type(data) is np.ndarray
            and indptr.dtype is _INT32
            and (indices.dtype is _INT32 or indices.dtype is _INT16)
            and (data.dtype is _FLOAT32_DTYPE or data.dtype is _INT8)
            and indptr.ndim == indices.ndim == data.ndim == 1
            and len(shape) == 2
            and shape[0] >= 0
            and shape[1] >= 0
        ):
            return
    check_csr(name, m)  # raises the full message


_INT32, _INT16, _INT8 = np.dtype(np.int32), np.dtype(np.int16), np.dtype(np.int8)
_FLOAT32_DTYPE = np.dtype(np.float32)
_FLOAT32 = (_FLOAT32_DTYPE,)


def _is(a: object, dtypes: tuple, ndim: int = 1) -> bool:
    """A fast yes for ``check_array``: an ndarray of one of ``dtypes`` with ``ndim`` axes."""
    return isinstance(a, np.ndarray) and a.dtype in dtypes and a.ndim == ndim


def _run(
    choice: str,
    m: CSR,
    dense: np.ndarray,
    transposed: bool,
    scale: np.ndarray,
    bias: np.ndarray,
    out_shape: tuple[int, int],
    name: str,
) -> np.ndarray:
    """``scale * (m @ dense) + bias`` on the portable or simd path; raise ``check_csr``'s
    error for an invalid structure.

    dense: x [M, K] (``transposed``, output [M, N]) or b [K, M] (output [R, M]).
    """
    m = _contiguous_csr(m)
    if m.shape[0] == 0 or out_shape[0] * out_shape[1] == 0:
        check_csr(name, m)  # nothing to compute, but a bad structure is still refused
        return np.zeros(out_shape, dtype=np.float32)
    if choice == "portable":
        check_csr(name, m)  # the plain kernels trust the structure
        b = np.ascontiguousarray(dense.T) if transposed else dense  # [K, M]
        c = np.empty((m.shape[0], b.shape[1]), dtype=np.float32)  # [R, M]
        csr_portable.spmm_rows(m.indptr, m.indices, m.data, b, scale, bias, c)
        return np.ascontiguousarray(c.T) if transposed else c
    out = np.empty(out_shape, dtype=np.float32)
    n_bad = _x86_spmm().run(m.indptr, m.indices, m.data, dense, transposed, scale, bias, out)
    if n_bad:
        check_csr(name, m)  # raises the message for the problem the kernel found
        raise AssertionError(f"a kernel refused {name}, which check_csr accepts")
    return out
