"""Arrays whose data start on a 64-byte boundary: one cache line, one zmm register.

A 64-byte vector load or store at an address that is not a multiple of 64 touches two
cache lines, so it costs two accesses. NumPy aligns array data to 16 bytes and Numba to 32,
so whether an array is aligned depends on where malloc happened to put it. Measured here,
in one process on the same data:

- the CSR product, which reads W floats of packed activations per stored weight: 4.96
  against 9.3 ms for 768 x 3072 at M = 512 (one thread), 0.12 against 0.18 ms for
  256 x 1024 at M = 128;
- the int8 layer at M = 1 on 1024 x 256, which streams packed weights: 5.8 against 7.1 us.

The kernels' hot buffers are therefore allocated here: packed weights once, the CSR blocks
of activations and the AMX tiles on every call. (Outputs are not: their stores measured
the same either way.)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

ALIGNMENT = 64  # bytes: a cache line, and the width of an AVX-512 register


@njit(cache=True, nogil=True)
def aligned_bytes(nbytes):
    """uint8 [nbytes] whose data start on an ALIGNMENT-byte boundary.

    A view into a buffer ALIGNMENT bytes longer, which the view keeps alive. Callable from
    Python and from Numba kernels; ``.view(dtype).reshape(shape)`` makes any array of it.
    """
    buffer = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    return buffer[start : start + nbytes]


def aligned_empty(shape: int | tuple[int, ...], dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` (C order) with ALIGNMENT-byte aligned data."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dtype = np.dtype(dtype)
    return aligned_bytes(math.prod(shape) * dtype.itemsize).view(dtype).reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-ordered copy of ``a`` with ALIGNMENT-byte aligned data (same dtype and shape)."""
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out
