"""Tier 2: the fast CSR x dense product (SpMM), for 4 rows of x or more.

``sparse_linear`` computes ``y = x @ w + bias`` from ``w_t`` = CSR of w.T ([N, K]); the plain
form of the same product is ``csr_portable.spmm_rows``. This one adds, measured here:

1. pack x into blocks of W columns of x.T:  ``xp[b, k, t] = x[b*W + t, k]``  (W = 16 for
   M <= 16, else 32; the last block zero-padded), so that one weight entry (n, k, v)
   multiplies W contiguous floats: one or two AVX-512 registers. Full blocks are transposed
   16 x 16 floats at a time in registers (``simd.transpose_tile``; 2.8-4.8x faster than
   element by element, whose reads of rows K*4 bytes apart missed L1 when K = 1024).
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
thread: waking the others costs more. int8 values (``quantize_csr``) are converted to float32
as they are read; the per-row scale is applied once per output.

The structure checks of ``reference.check_csr`` beyond types and dtypes run inside the
kernels: the lengths and the ends of indptr first (``row_parts.csr_ends_fit``), then, on
each part's rows just before they are read, indptr never decreasing and indices increasing
within a row and inside [0, K) (``_rows_are_valid``, vectorized; the SpMV checks each chunk
of 16 as it loads it). A bad CSR is never read out of bounds: ``run`` returns how many parts
found one, and ``csr.py`` then raises ``check_csr``'s message.

Threads: the parallel kernels use ``numba.get_num_threads()`` threads. On a machine whose
cores are busy with other processes, every parallel call waits for its last thread to be
scheduled (measured here: 8-16 ms instead of 0.1-1 ms, for OpenBLAS as for these kernels);
``numba.set_num_threads(1)`` avoids it.
"""

from __future__ import annotations

import numpy as np
from numba import literally, njit, prange

from minicompress.kernels import row_parts
from minicompress.kernels.x86 import csr_spmv, simd
from minicompress.kernels.x86.aligned import aligned_bytes, aligned_empty

SPMV_MAX_M = 4  # below this many rows of x, gathered dot products beat packing x
TILE_ROWS = 16  # output features summed before one transposed store: 64 contiguous bytes
PACK_K_CHUNK = 64  # rows of x.T packed per work item


def run(indptr, indices, data, dense, transposed, scale, bias, out):
    """out = scale * (m @ dense) + bias, by SpMV or packed SpMM; how many parts found an
    invalid CSR (then ``out`` is undefined).

    indptr, indices, data: a CSR [R, C], C-contiguous; dense: x [M, C] (``transposed``, out
    float32 [M, R]) or b [C, M] (out [R, M]); scale, bias: float32 [R]. R >= 1, M >= 1.
    """
    m_total = dense.shape[0] if transposed else dense.shape[1]
    if transposed and m_total < SPMV_MAX_M:
        return csr_spmv.spmv(
            indptr, indices, data, dense, scale, bias, out, row_parts.PARALLEL_MIN_WORK
        )
    width = 16 if m_total <= 16 else 32
    n_blocks = (m_total + width - 1) // width
    # [blocks, K, W]; aligned, so that no row of W floats straddles two cache lines
    xp = aligned_empty(
        (n_blocks, dense.shape[1] if transposed else dense.shape[0], width), np.float32
    )
    min_work = row_parts.PARALLEL_MIN_BLOCK_WORK
    _pack_blocks(dense, transposed, xp, data.shape[0] * n_blocks >= min_work)
    return _spmm(indptr, indices, data, xp, scale, bias, out, transposed, m_total, min_work)


@njit(cache=True, nogil=True)
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


@njit(parallel=True, cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True, fastmath=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(parallel=True, cache=True, nogil=True)
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
