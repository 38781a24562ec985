"""Numba CSR kernels with the contracts of ``reference.py``: conversion and the sparse linear layer.

Every public function here has the signature and the result of its twin in ``reference.py``
(``dense_to_csr``, ``csr_to_dense``, ``csr_matmul_reference``, ``sparse_linear_reference``),
plus a ``path=`` keyword: ``"reference"`` runs the NumPy twin, ``"portable"`` this module's
Numba kernels; ``None`` reads ``MINICOMPRESS_KERNEL`` (see ``csr_kernel_path``). Conversions
are bit for bit equal; products agree to float32 rounding (a different summation order).

How ``sparse_linear`` computes ``y = x @ w + bias`` from ``w_t`` = CSR of w.T ([N, K]):

1. pack x into blocks of W columns of x.T:  ``xp[b, k, t] = x[b*W + t, k]``  (W = 16 for
   M <= 16, else 32; the last block zero-padded), so that one weight entry (n, k, v)
   multiplies W contiguous floats: one or two AVX-512 registers. Full blocks are transposed
   16 x 16 floats at a time in registers (``simd.transpose_tile``; 2.8-4.8x faster than element
   by element, whose reads of rows K*4 bytes apart missed L1 when K = 1024).
2. for each block b and each output feature n (the rows of ``w_t``, split across threads into
   parts of about equal work, ``row_parts.balanced_parts``):
       acc[0:W] = sum_{j in row n} v_j * xp[b, idx_j, 0:W]      (in registers, 4 FMA chains)
       y[b*W + t, n] = scale[n] * acc[t] + bias[n]               (t < W, the tail trimmed)
   A packed block is K*W*4 bytes (96 KB for K = 768, W = 32), 64-byte aligned (a row of
   W floats that straddled two cache lines made the product 1.5-2x slower, ``aligned.py``):
   it stays in L2 while a thread streams its rows of ``w_t`` over it. Sums of 16 output
   features are stored together, so each cache line of y [M, N] is written in full: a full
   16 x W tile is transposed in registers (``simd.store_full_tile_t``, 64 shuffles per 16 x 16
   floats; element by element it took a third of a product at M = 32), a partial one
   element by element (``_store_tile``).
3. M < ``SPMV_MAX_M``: no packing; each output is a dot product gathered from x, 16 stored
   weights at a time (SpMV, ``csr_spmv.py``).
Small products (``row_parts.PARALLEL_MIN_WORK``, ``PARALLEL_MIN_BLOCK_WORK``) run on one
thread: waking the others costs more.
int8 values (``quantize_csr``) are converted to float32 as they are read; the per-row scale
is applied once per output.

The W-float accumulators and the register transposes are LLVM operations (``simd.py``).

The structure checks of ``reference.check_csr`` beyond types and dtypes run inside the
kernels: the lengths and the ends of indptr first (``row_parts.csr_ends_fit``), then, on
each part's rows just before they are read, indptr never decreasing and indices increasing
within a row and inside [0, K) (``_rows_are_valid``, vectorized; the SpMV checks each chunk
of 16 as it loads it). A bad CSR is never read out of bounds; ``check_csr`` then raises its
usual error. Non-contiguous arrays are copied to contiguous ones (only the copy costs).

Threads: the parallel kernels use ``numba.get_num_threads()`` threads. On a machine whose
cores are busy with other processes, every parallel call waits for its last thread to be
scheduled (measured here: 8-16 ms instead of 0.1-1 ms, for OpenBLAS as for these kernels);
``numba.set_num_threads(1)`` avoids it.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from numba import literally, njit, prange

from minicompress.kernels import csr_spmv, reference, row_parts, simd
from minicompress.kernels.aligned import aligned_bytes, aligned_empty
from minicompress.kernels.reference import (
    CSR,
    check_array,
    check_csr,
    check_index_dtype,
    check_matmul_operands,
)

KERNEL_CHOICES = ("auto", "reference", "portable", "vnni", "amx")  # shared with int8
SPMV_MAX_M = 4  # below this many rows of x, gathered dot products beat packing x
TILE_ROWS = 16  # output features summed before one transposed store: 64 contiguous bytes
PACK_K_CHUNK = 64  # rows of x.T packed per work item


def csr_kernel_path(path: str | None = None) -> str:
    """Which CSR implementation runs: ``"reference"`` (reference.py) or ``"portable"`` (Numba).

    ``path`` None reads ``MINICOMPRESS_KERNEL`` (default ``auto``). ``reference`` forces the
    NumPy references; ``portable``, ``vnni``, ``amx`` and ``auto`` run this module's Numba kernels
    (CSR has no VNNI or AMX variant: the Numba kernel is the portable path).
    """
    choice = path if path is not None else _environment_choice()
    if choice in ("auto", "portable", "vnni", "amx"):  # the common case, no string work
        return "portable"
    if not isinstance(choice, str) or choice.strip().lower() not in KERNEL_CHOICES:
        source = "path" if path is not None else "MINICOMPRESS_KERNEL"
        raise ValueError(f"{source} must be one of {', '.join(KERNEL_CHOICES)}; got {choice!r}")
    return "reference" if choice.strip().lower() == "reference" else "portable"


def _environment_choice() -> str:
    """``os.environ.get("MINICOMPRESS_KERNEL", "auto")`` in 0.2 us instead of 0.6-1.4 us
    (a missing key raises KeyError twice inside ``get``), a tenth of a matrix-vector product
    of 26K weights: the lookup in the dict that ``os.environ`` keeps in step with every
    change made through it (``monkeypatch.setenv`` included)."""
    env = os.environ
    try:
        raw = env._data.get(env.encodekey("MINICOMPRESS_KERNEL"))
    except AttributeError:  # not CPython's os._Environ: the public way
        return env.get("MINICOMPRESS_KERNEL", "auto")
    return "auto" if raw is None else env.decodevalue(raw)


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------


@njit(cache=True)
def _pack_item(src, transposed, xp, item, k_chunk):
    """Item ``item`` (a block b and a chunk of K) of ``_pack_blocks``.

    A full block of x is transposed 16 x 16 floats at a time in registers
    (``simd.transpose_tile``): element by element, the 32 rows of a block read at one k are
    4 KB apart when K = 1024, all in one set of L1, so each read missed (1.2 ns per float).
    """
    n_blocks, k_total, width = xp.shape
    m_total = src.shape[0] if transposed else src.shape[1]
    n_chunks = (k_total + k_chunk - 1) // k_chunk
    b = item // n_chunks
    k0 = (item % n_chunks) * k_chunk
    k1 = min(k0 + k_chunk, k_total)
    m0 = b * width
    if transposed and m0 + width <= m_total:
        while k0 + 16 <= k1:
            for t0 in range(0, width, 16):
                simd.transpose_tile(src, m0 + t0, k0, xp, b, t0)
            k0 += 16
    for k in range(k0, k1):
        for t in range(width):
            m = m0 + t
            if m < m_total:
                xp[b, k, t] = src[m, k] if transposed else src[k, m]
            else:
                xp[b, k, t] = 0.0


@njit(parallel=True, cache=True)
def _pack_blocks(src, transposed, xp, parallel):
    """xp[b, k, t] = x[b*W + t, k] (``transposed``: src is x [M, K]) or b[k, b*W + t] (src is
    b [K, M]); zero where b*W + t >= M.  xp: float32 [n_blocks, K, W]."""
    n_items = xp.shape[0] * ((xp.shape[1] + PACK_K_CHUNK - 1) // PACK_K_CHUNK)
    if parallel:
        for item in prange(n_items):  # blocks x chunks of K: even for one block
            _pack_item(src, transposed, xp, item, PACK_K_CHUNK)
    else:
        for item in range(n_items):
            _pack_item(src, transposed, xp, item, PACK_K_CHUNK)


@njit(cache=True)
def _rows_are_valid(indptr, indices, k_total, r0, r1):
    """The O(nnz) checks of ``check_csr`` for rows r0:r1, before any entry is read:
    indptr never decreasing and inside [0, nnz]; indices in [0, K), increasing in a row.

    Written as counts over whole runs of entries (not a test per entry with an early exit)
    so that LLVM vectorizes them: a few percent of a product, instead of half of one.
    """
    nnz = indices.shape[0]
    for n in range(r0, r1):
        if indptr[n] > indptr[n + 1]:
            return False
    lo, hi = indptr[r0], indptr[r1]
    if lo < 0 or hi > nnz:
        return False
    if hi == lo:
        return True
    run, after = indices[lo:hi], indices[lo + 1 : hi]  # slices from 0: LLVM vectorizes
    # one pass: the range, and the entries not above the previous one (allowed only at a row
    # start). int32 counts (np.int32(...) stops Numba widening them to int64) give 8 lanes.
    last_entry = run[run.shape[0] - 1]
    smallest, largest = last_entry, last_entry
    steps_down = np.int32(0)
    for j in range(run.shape[0] - 1):
        smallest = min(smallest, run[j])
        largest = max(largest, run[j])
        steps_down = np.int32(steps_down + np.int32(after[j] <= run[j]))
    if smallest < 0 or largest >= k_total:
        return False
    last = lo
    for n in range(r0 + 1, r1):
        p = indptr[n]
        if p != last and p < hi:  # a row starts at p (empty rows share their start)
            steps_down = np.int32(steps_down - np.int32(indices[p] <= indices[p - 1]))
            last = p
    return steps_down == 0


@njit(cache=True, fastmath=True)
def _store_tile(tile, out, scale, bias, transpose_out, m0, m_len, n0, n1):
    """out[m0 + t, n0 + i] (``transpose_out``) or out[n0 + i, m0 + t] =
    scale[n0 + i] * tile[i, t] + bias[n0 + i], for t < m_len, i < n1 - n0.

    Rows of y [M, N] are N floats apart: storing a tile of 16 output features at once writes
    each touched cache line in full. 1-D views keep the loops free of 2-D index arithmetic
    (3x faster, measured).
    """
    s = scale[n0:n1]
    b = bias[n0:n1]
    if transpose_out:
        for t in range(m_len):
            row = out[m0 + t, n0:n1]
            for i in range(n1 - n0):
                row[i] = s[i] * tile[i, t] + b[i]
    else:
        for i in range(n1 - n0):
            row = out[n0 + i, m0 : m0 + m_len]
            for t in range(m_len):
                row[t] = s[i] * tile[i, t] + b[i]


@njit(cache=True)
def _spmm_part(indptr, indices, data, xp, scale, bias, out, transpose_out, m_total, r0, r1, width):
    """Rows r0:r1 of the product for every block of xp; returns r0 if those rows are not a
    valid CSR (nothing is computed then), else -1.

    out[m, n] (``transpose_out``, out [M, N]) or out[n, m] (out [N, M]) =
    scale[n] * sum_j data[j] * xp[m // W, indices[j], m % W] + bias[n].
    """
    literally(width)
    if not _rows_are_valid(indptr, indices, xp.shape[1], r0, r1):
        return r0
    acc0 = simd.vec_alloc(width)  # four accumulators: four independent chains of FMAs
    acc1 = simd.vec_alloc(width)
    acc2 = simd.vec_alloc(width)
    acc3 = simd.vec_alloc(width)
    # [TILE_ROWS, W] sums of TILE_ROWS rows, aligned for the vector stores and loads
    tile = aligned_bytes(TILE_ROWS * width * 4).view(np.float32).reshape((TILE_ROWS, width))
    row_bytes = xp.strides[1]
    for b in range(xp.shape[0]):
        block = xp.ctypes.data + b * xp.strides[0]
        m0 = b * width
        m_len = min(width, m_total - m0)
        for n0 in range(r0, r1, TILE_ROWS):
            n1 = min(n0 + TILE_ROWS, r1)
            for n in range(n0, n1):
                lo, hi = indptr[n], indptr[n + 1]
                if lo < 0:  # never true (checked above); tells LLVM j >= 0
                    return n
                simd.vec_zero(acc0, width)
                simd.vec_zero(acc1, width)
                simd.vec_zero(acc2, width)
                simd.vec_zero(acc3, width)
                j = lo
                while j + 3 < hi:  # columns are >= 0 (checked): unsigned, no wrap code
                    c0, c1 = np.intp(np.uint32(indices[j])), np.intp(np.uint32(indices[j + 1]))
                    c2, c3 = np.intp(np.uint32(indices[j + 2])), np.intp(np.uint32(indices[j + 3]))
                    simd.vec_fma(acc0, np.float32(data[j]), block + c0 * row_bytes, width)
                    simd.vec_fma(acc1, np.float32(data[j + 1]), block + c1 * row_bytes, width)
                    simd.vec_fma(acc2, np.float32(data[j + 2]), block + c2 * row_bytes, width)
                    simd.vec_fma(acc3, np.float32(data[j + 3]), block + c3 * row_bytes, width)
                    j += 4
                while j < hi:
                    c0 = np.intp(np.uint32(indices[j]))
                    simd.vec_fma(acc0, np.float32(data[j]), block + c0 * row_bytes, width)
                    j += 1
                simd.vec_add(acc0, acc1, width)
                simd.vec_add(acc2, acc3, width)
                simd.vec_add(acc0, acc2, width)
                simd.vec_store(acc0, tile.ctypes.data + (n - n0) * width * 4, width)
            if transpose_out and n1 - n0 == TILE_ROWS and m_len == width:
                simd.store_full_tile_t(tile, out, scale, bias, m0, n0, width)
            else:
                _store_tile(tile, out, scale, bias, transpose_out, m0, m_len, n0, n1)
    return -1


@njit(cache=True)
def _spmm_rows(indptr, indices, data, xp, scale, bias, out, transpose_out, m_total, r0, r1):
    """``_spmm_part`` for rows r0:r1 with the block width of xp as a literal; 1 if invalid."""
    if xp.shape[2] == 16:
        r = _spmm_part(
            indptr, indices, data, xp, scale, bias, out, transpose_out, m_total, r0, r1, 16
        )
    else:
        r = _spmm_part(
            indptr, indices, data, xp, scale, bias, out, transpose_out, m_total, r0, r1, 32
        )
    return np.int64(r >= 0)


@njit(parallel=True, cache=True)
def _spmm(indptr, indices, data, xp, scale, bias, out, transpose_out, m_total, min_work):
    """``_spmm_part`` over all rows: on the calling thread below ``min_work``, else in
    parallel over ``row_parts.balanced_parts``. Returns how many parts found an invalid CSR.
    xp: float32 [n_blocks, K, W] with W = 16 or 32."""
    n_rows = indptr.shape[0] - 1
    if not row_parts.csr_ends_fit(indptr, indices, data, out.shape[1 if transpose_out else 0]):
        return 1
    count = row_parts.n_parts(n_rows, data.shape[0] * xp.shape[0], min_work)
    if count == 1:
        return _spmm_rows(
            indptr, indices, data, xp, scale, bias, out, transpose_out, m_total, 0, n_rows
        )
    parts = row_parts.balanced_parts(indptr, count)  # [count + 1]
    n_bad = 0  # parts whose rows are not a valid CSR
    for p in prange(count):
        n_bad += _spmm_rows(
            indptr,
            indices,
            data,
            xp,
            scale,
            bias,
            out,
            transpose_out,
            m_total,
            parts[p],
            parts[p + 1],
        )
    return n_bad


@njit(parallel=True, cache=True)
def _count_nonzeros(a, counts):
    """counts[r] = number of non-zeros of row r of a [R, C] (NaN counts, -0.0 does not)."""
    for r in prange(a.shape[0]):
        c = 0
        for k in range(a.shape[1]):
            if a[r, k] != 0:
                c += 1
        counts[r + 1] = c


@njit(parallel=True, cache=True)
def _fill_csr(a, indptr, indices, data):
    """indices/data of row r = the columns/values of the non-zeros of a[r], in order."""
    for r in prange(a.shape[0]):
        p = indptr[r]
        for k in range(a.shape[1]):
            if a[r, k] != 0:
                indices[p] = k
                data[p] = a[r, k]
                p += 1


@njit(parallel=True, cache=True)
def _scatter_csr(indptr, indices, data, out):
    """out[r, indices[j]] = data[j] for the entries j of row r (out zeroed by the caller)."""
    for r in prange(out.shape[0]):
        for j in range(indptr[r], indptr[r + 1]):
            out[r, indices[j]] = data[j]


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
    _count_nonzeros(a, counts)
    offsets = np.cumsum(counts)  # [R + 1] int64
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"a has {offsets[-1]} non-zeros: too many for int32 indptr")
    indptr = offsets.astype(np.int32)
    indices = np.empty(int(offsets[-1]), dtype=index_dtype)  # [nnz]
    data = np.empty(int(offsets[-1]), dtype=a.dtype)  # [nnz]
    _fill_csr(a, indptr, indices, data)
    return CSR(indptr, indices, data, (a.shape[0], a.shape[1]))


def csr_to_dense(m: CSR, *, path: str | None = None) -> np.ndarray:
    """The dense [R, C] array that a CSR matrix stands for (``reference.csr_to_dense``)."""
    if csr_kernel_path(path) == "reference":
        return reference.csr_to_dense(m)
    m = _contiguous_csr(check_csr("m", m))
    out = np.zeros(m.shape, dtype=m.data.dtype)  # [R, C]
    _scatter_csr(m.indptr, m.indices, m.data, out)
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
    if csr_kernel_path(path) == "reference":
        return reference.csr_matmul_reference(a, b)
    _check_csr_cheap("a", a)
    check_matmul_operands(a, b)
    r, m = a.shape[0], b.shape[1]
    ones, zeros = _constant_vector(r, 1.0), _constant_vector(r, 0.0)
    return _run(a, np.ascontiguousarray(b), False, ones, zeros, (r, m), "a")


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
    return _run(w_t, np.ascontiguousarray(x), True, scale_n, bias_n, (x.shape[0], n), "w_t")


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
    m: CSR,
    dense: np.ndarray,
    transposed: bool,
    scale: np.ndarray,
    bias: np.ndarray,
    out_shape: tuple[int, int],
    name: str,
) -> np.ndarray:
    """Dispatch to SpMV or packed SpMM; raise ``check_csr``'s error if a kernel found one.

    dense: x [M, K] (``transposed``, output [M, N]) or b [K, M] (output [R, M]).
    """
    m = _contiguous_csr(m)
    n_rows = m.shape[0]
    m_total = dense.shape[0] if transposed else dense.shape[1]
    out = np.empty(out_shape, dtype=np.float32)
    if n_rows == 0 or m_total == 0:
        check_csr(name, m)  # nothing to compute, but a bad structure is still refused
        return np.zeros(out_shape, dtype=np.float32)
    if transposed and m_total < SPMV_MAX_M:
        n_bad = csr_spmv.spmv(
            m.indptr, m.indices, m.data, dense, scale, bias, out, row_parts.PARALLEL_MIN_WORK
        )
    else:
        width = 16 if m_total <= 16 else 32
        n_blocks = (m_total + width - 1) // width
        # [blocks, K, W]; aligned, so that no row of W floats straddles two cache lines
        xp = aligned_empty((n_blocks, m.shape[1], width), np.float32)
        min_work = row_parts.PARALLEL_MIN_BLOCK_WORK
        _pack_blocks(dense, transposed, xp, m.data.shape[0] * n_blocks >= min_work)
        n_bad = _spmm(
            m.indptr, m.indices, m.data, xp, scale, bias, out, transposed, m_total, min_work
        )
    if n_bad:
        check_csr(name, m)  # raises the message for the problem the kernel found
        raise AssertionError(f"a kernel refused {name}, which check_csr accepts")
    return out
