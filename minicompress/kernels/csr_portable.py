"""Tier 1: the CSR kernels in plain Numba, for any CPU (read after ``reference.py``).

Conversions (``dense_to_csr``, ``csr_to_dense`` of ``csr.py``) run two parallel passes over
the rows: count the non-zeros of each row, then write them. The product is the definition,
row by row:

    c[r, :] = scale[r] * sum_{j in row r} data[j] * b[indices[j], :] + bias[r]

Each stored weight multiplies one contiguous row of b (M floats), which LLVM vectorizes;
rows of a are shared among the threads. ``sparse_linear`` runs it with b = x.T. The fast
x86 forms of the same product are in ``x86/csr_spmm.py`` (activations packed in blocks,
register tiles) and ``x86/csr_spmv.py`` (gathers, for M < 4).

The CSR structure is not checked here: ``csr.py`` runs ``reference.check_csr`` first.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, nogil=True)
def spmm_rows(indptr, indices, data, b, scale, bias, c):
    """c[r, :] = scale[r] * sum_{j in row r} data[j] * b[indices[j], :] + bias[r].

    indptr int32 [R + 1], indices int32 or int16 [nnz], data float32 or int8 [nnz]: a valid
    CSR [R, C]; b: float32 [C, M]; scale, bias: float32 [R]; c: float32 [R, M], written.
    """
    for r in prange(c.shape[0]):
        c_row = c[r]  # [M]
        c_row[:] = 0.0
        for j in range(indptr[r], indptr[r + 1]):
            v = np.float32(data[j])
            b_row = b[indices[j]]  # [M], contiguous: the loop below vectorizes
            for t in range(c_row.size):
                c_row[t] += v * b_row[t]
        for t in range(c_row.size):
            c_row[t] = scale[r] * c_row[t] + bias[r]


@njit(parallel=True, cache=True, nogil=True)
def count_nonzeros(a, counts):
    """counts[r] = number of non-zeros of row r of a [R, C] (NaN counts, -0.0 does not)."""
    for r in prange(a.shape[0]):
        c = 0
        for k in range(a.shape[1]):
            if a[r, k] != 0:
                c += 1
        counts[r + 1] = c


@njit(parallel=True, cache=True, nogil=True)
def fill_csr(a, indptr, indices, data):
    """indices/data of row r = the columns/values of the non-zeros of a[r], in order."""
    for r in prange(a.shape[0]):
        p = indptr[r]
        for k in range(a.shape[1]):
            if a[r, k] != 0:
                indices[p] = k
                data[p] = a[r, k]
                p += 1


@njit(parallel=True, cache=True, nogil=True)
def scatter_csr(indptr, indices, data, out):
    """out[r, indices[j]] = data[j] for the entries j of row r (out zeroed by the caller)."""
    for r in prange(out.shape[0]):
        for j in range(indptr[r], indptr[r + 1]):
            out[r, indices[j]] = data[j]
