"""The packed weight layout of the x86 int8 paths: 4 consecutive k of a column side by side.

Every x86 int8 instruction used here (``vpdpbusd`` on zmm or ymm, ``vpmaddubsw``, AMX's
``tdpbusd``) multiplies 4 bytes of activations (4 consecutive k) by 4 bytes of weights of
one output column, in each 32-bit lane. So the weights are packed once as

    packed[j, kk, i, r] = w_q[4 kk + r, L j + i]     (zero where 4 kk + r >= K or L j + i >= N)

of shape [ceil(N/L), ceil(K/4), L, 4]: for L output columns (16 for a zmm register, 8 for a
ymm one), 4 consecutive k of each column lie together, so one 4L-byte load is a weight
operand for L columns x 4 k. ``pack_k4`` makes it (K padded further for AMX tiles),
``unpack_k4`` inverts it, ``padding_is_zero`` checks the invariant the kernels rely on:
every k and column past the layer's own is zero, so the padding adds nothing to a sum.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from minicompress.kernels.x86.aligned import aligned_empty


def pack_k4(w_q: np.ndarray, lanes: int, k_multiple: int = 4) -> np.ndarray:
    """Pack int8 weights [K, N] into the k4 layout with ``lanes`` columns per block.

    w_q: int8 [K, N]; lanes: 8 or 16; k_multiple: K is padded to a multiple of it (4, or 64
    for AMX tiles)  ->  int8 [ceil(N/lanes), Kp/4, lanes, 4], C-contiguous, 64-byte aligned
    (``aligned.py``), zero in the padding.
    """
    k, n = w_q.shape
    kp, np_ = -(-k // k_multiple) * k_multiple, -(-n // lanes) * lanes
    padded = np.zeros((kp, np_), dtype=np.int8)  # [Kp, Np]
    padded[:k, :n] = w_q
    blocks = padded.reshape(kp // 4, 4, np_ // lanes, lanes)  # [K/4, 4, N/L, L]
    packed = aligned_empty((np_ // lanes, kp // 4, lanes, 4), np.int8)  # aligned loads
    packed[...] = blocks.transpose(2, 0, 3, 1)  # -> [N/L, K/4, L, 4]
    return packed


@njit(cache=True, nogil=True)
def k4_shape(k, n, lanes, k_multiple):
    """The shape ``pack_k4`` gives a [K, N] weight."""
    return (-(-n // lanes), -(-k // k_multiple) * (k_multiple // 4), lanes, 4)


def unpack_k4(packed: np.ndarray, k: int, n: int) -> np.ndarray:
    """Inverse of ``pack_k4``: int8 [N/L, Kp/4, L, 4] -> int8 [K, N]."""
    nb, kq, lanes = packed.shape[0], packed.shape[1], packed.shape[2]
    w = packed.transpose(1, 3, 0, 2).reshape(kq * 4, nb * lanes)  # -> [Kp, Np]
    return np.ascontiguousarray(w[:k, :n])


@njit(cache=True, nogil=True)
def padding_is_zero(w, k, n):
    """Whether every weight of a packed [nb, kq, L, 4] array at k >= K or column >= N is 0.

    The kernels pad the activations with zeros and drop the padded columns, so a non-zero
    there means a layer whose ``k`` or ``n`` was changed after packing: its results would be
    wrong without a word. Reads only the padding (nothing when K is a multiple of 4 and N of
    L, the common case).
    """
    nb, kq, lanes = w.shape[0], w.shape[1], w.shape[2]
    bits = np.int8(0)
    kk0, r0 = k // 4, k % 4
    for j in range(nb):
        for kk in range(kk0, kq):
            block = w[j, kk]  # [L, 4]
            first = r0 if kk == kk0 else 0
            for i in range(lanes):
                for r in range(first, 4):
                    bits |= block[i, r]
    i0 = n - (nb - 1) * lanes  # columns of the last block that belong to the layer
    if 0 < i0 < lanes:
        last = w[nb - 1]  # [kq, L, 4]
        for kk in range(kq):
            for i in range(i0, lanes):
                for r in range(4):
                    bits |= last[kk, i, r]
    return bits == 0
