"""The lane operations of ``kernels/x86/simd.py`` that the inference softmax uses (fill, masked
max and add, horizontal max and sum), compiled (LLVM vectors) and as their NumPy twins (what
runs under NUMBA_DISABLE_JIT=1), against plain NumPy expressions: every lane, lane counts
below 0, inside and past the width, rows at an address that is not 64-byte aligned, and
NaN past the lane count (which must be ignored)."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import assert_close
from numba import literally, njit

from minicompress.kernels.x86 import simd

WIDTHS = [16, 32]
COUNTS = [-3, 0, 1, 7, 15, 16, 17, 40]  # lanes to take: none, some, all (n >= W)


@njit(cache=False)
def _compiled(is_max, start, row, n, width):
    """vec_fill, then vec_max_first + vec_hmax (is_max) or vec_add_first + vec_hsum, as
    the softmax calls them; width: a compile-time constant (``literally``)."""
    literally(width)
    acc = simd.vec_alloc(width)
    simd.vec_fill(acc, np.float32(-np.inf), width)
    simd.vec_store(acc, row.ctypes.data, width)  # row[:W] = -inf: vec_fill seen through memory
    out = np.empty(width, np.float32)
    simd.vec_zero(acc, width)
    simd.vec_fma(acc, np.float32(1.0), start.ctypes.data, width)  # acc = start
    at = row.ctypes.data + width * 4 + 4  # row[W + 1 : 2 W + 1]: not aligned
    if is_max:
        simd.vec_max_first(acc, at, n, width)
        total = simd.vec_hmax(acc, width)
    else:
        simd.vec_add_first(acc, at, n, width)
        total = simd.vec_hsum(acc, width)
    simd.vec_store(acc, out.ctypes.data, width)
    return out, total


def _twin(op, start, row, n, width):
    """The same sequence with the NumPy twins (plain Python calls)."""
    acc = simd.vec_alloc(width)
    simd.vec_fill(acc, -np.inf, width)
    simd.vec_store(acc, row.ctypes.data, width)
    acc[:] = start
    if op == "max":
        simd.vec_max_first(acc, row.ctypes.data + width * 4 + 4, n, width)
        return acc.copy(), simd.vec_hmax(acc, width)
    simd.vec_add_first(acc, row.ctypes.data + width * 4 + 4, n, width)
    return acc.copy(), simd.vec_hsum(acc, width)


def _case(rng, width, n, low_lane=False):
    start = rng.standard_normal(width).astype(np.float32)
    if low_lane:
        start[1] = -np.inf  # a lane that only a row value can raise
    row = rng.standard_normal(3 * width).astype(np.float32)
    taken = row[width + 1 : 2 * width + 1]  # the W floats the operations read
    taken[max(n, 0) :] = np.nan  # lanes past n: ignored
    return start, row, taken


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("n", COUNTS)
@pytest.mark.parametrize("form", ["compiled", "numpy twin"])
def test_vec_max_first_and_hmax(rng, width, n, form):
    start, row, taken = _case(rng, width, n, low_lane=True)
    first = np.arange(width) < n
    expected = np.where(first, np.fmax(start, taken), start)  # fmax: NaN lanes are not taken
    if form == "compiled":
        acc, hmax = _compiled(True, start, row, n, width)
    else:
        acc, hmax = _twin("max", start, row, n, width)
    np.testing.assert_array_equal(acc, expected, err_msg="acc after vec_max_first")
    assert hmax == expected.max(), f"vec_hmax: ours {hmax}, numpy {expected.max()}"
    assert np.all(row[:width] == -np.inf), "vec_fill"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("n", COUNTS)
@pytest.mark.parametrize("form", ["compiled", "numpy twin"])
def test_vec_add_first_and_hsum(rng, width, n, form):
    start, row, taken = _case(rng, width, n)
    first = np.arange(width) < n
    expected = start + np.where(first, taken, 0).astype(np.float32)
    if form == "compiled":
        acc, hsum = _compiled(False, start, row, n, width)
    else:
        acc, hsum = _twin("add", start, row, n, width)
    np.testing.assert_array_equal(acc, expected, err_msg="acc after vec_add_first")
    total = expected.astype(np.float64).sum()  # ours adds pairwise in float32
    assert_close(np.float64(hsum), total, rtol=0.0, atol=1e-5, name="vec_hsum")
