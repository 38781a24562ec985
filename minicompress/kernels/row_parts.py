"""How the x86 CSR kernels split the rows of a sparse matrix among threads (and the O(1) checks
that come before).

A product with few stored weights runs on the calling thread: waking the other threads costs
more than they save (``PARALLEL_MIN_WORK``, ``PARALLEL_MIN_BLOCK_WORK``). A larger one is cut
into ``PARTS_PER_THREAD`` parts per thread of about equal work, so that a thread given short
rows takes another part instead of waiting for one given long rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from minicompress.kernels.threads import threads_here

# below these, one thread wins (measured with 2 threads on 26K-236K stored weights):
PARALLEL_MIN_WORK = 2**14  # SpMV: stored weights x rows of x (gathered products)
# SpMM: stored weights x blocks of x. Higher, because the other thread must first fetch the
# packed block from the packing core's cache: 128 KB at K = 1024 made 26K weights at M = 32
# 1.2x slower on two threads than on one.
PARALLEL_MIN_BLOCK_WORK = 2**15
PARTS_PER_THREAD = 4  # work items per thread: evens out rows of unequal length
ROW_COST = 8  # cost of one output row in "stored weights": its zeroing and its stores


@njit(cache=True, nogil=True)
def csr_ends_fit(indptr, indices, data, n_rows):
    """The O(1) checks of a CSR with n_rows rows, before any row is read: indptr has
    n_rows + 1 entries from 0 to nnz, data as many entries as indices."""
    nnz = indices.shape[0]
    return (
        indptr.shape[0] == n_rows + 1
        and data.shape[0] == nnz
        and indptr[0] == 0
        and indptr[n_rows] == nnz
    )


@njit(cache=True, nogil=True)
def n_parts(n_rows, work, min_work):
    """Parts to cut n_rows rows into: 1 (run serially) if work < min_work or one thread is
    allowed (``numba.set_num_threads``), else PARTS_PER_THREAD per thread, at most n_rows."""
    if work < min_work:
        return 1
    threads = threads_here()  # numba.get_num_threads(); 1 us from Python
    return 1 if threads == 1 else max(1, min(n_rows, PARTS_PER_THREAD * threads))


@njit(cache=True, nogil=True)
def balanced_parts(indptr, n_parts):
    """Row boundaries [n_parts + 1] splitting the rows into parts of about equal work.

    Work of rows [0, n) = (indptr[n] - indptr[0]) + ROW_COST * n. Always non-decreasing from
    0 to R, even for an invalid indptr (which the kernels then report).
    """
    n_rows = indptr.shape[0] - 1
    total = (indptr[n_rows] - indptr[0]) + ROW_COST * n_rows
    parts = np.empty(n_parts + 1, dtype=np.int64)
    parts[0] = 0
    n = 0
    for p in range(1, n_parts):
        target = total * p // n_parts
        while n < n_rows and (indptr[n] - indptr[0]) + ROW_COST * n < target:
            n += 1
        parts[p] = n
    parts[n_parts] = n_rows
    return parts
