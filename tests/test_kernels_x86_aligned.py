"""Aligned allocation (kernels/x86/aligned.py) and the arrays the x86 kernels keep aligned."""

from __future__ import annotations

import numpy as np
import pytest

from minicompress.kernels import cpu, csr
from minicompress.kernels.int8 import pack_int8_linear
from minicompress.kernels.x86.aligned import ALIGNMENT, aligned_bytes, aligned_copy, aligned_empty


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("nbytes", [0, 1, 63, 64, 65, 4096, 3 * 2**20 + 7])
def test_aligned_bytes_start_on_a_boundary(nbytes):
    a = aligned_bytes(nbytes)
    assert a.dtype == np.uint8 and a.shape == (nbytes,) and a.flags.c_contiguous
    if nbytes:
        assert address(a) % ALIGNMENT == 0
        a[:] = 7  # the whole view is writable
        assert a.sum(dtype=np.int64) == 7 * nbytes


@pytest.mark.parametrize(
    "shape,dtype",
    [(5, np.float32), ((3, 7), np.int32), ((2, 3, 16, 4), np.int8), ((0, 4), np.float32)],
)
def test_aligned_empty_has_the_shape_and_dtype_asked(shape, dtype):
    a = aligned_empty(shape, dtype)
    assert a.shape == ((shape,) if isinstance(shape, int) else shape)
    assert a.dtype == np.dtype(dtype) and a.flags.c_contiguous and a.flags.writeable
    if a.size:
        assert address(a) % ALIGNMENT == 0


def test_aligned_copy_is_an_equal_independent_copy(rng):
    src = rng.standard_normal((9, 13)).astype(np.float32)[:, ::2]  # not contiguous
    out = aligned_copy(src)
    np.testing.assert_array_equal(out, src)
    assert out.dtype == src.dtype and address(out) % ALIGNMENT == 0
    out[0, 0] += 1
    assert out[0, 0] != src[0, 0]


@pytest.mark.parametrize("path", cpu.X86_PATHS)
def test_packed_layers_are_aligned(path, rng):
    """Every array an x86 layer's kernels read with vector loads starts on a cache line."""
    if path not in cpu.int8_paths_here():
        pytest.skip(f"this CPU does not run the {path} path")
    w = rng.standard_normal((70, 33)).astype(np.float32)
    packed = pack_int8_linear(w, rng.standard_normal(33).astype(np.float32), path=path)
    for a in (packed.weight, packed.col_sum, packed.w_scale, packed.bias):
        assert address(a) % ALIGNMENT == 0


def test_csr_product_is_the_same_whatever_the_alignment_of_its_inputs(rng):
    """Inputs at every 4-byte offset from a cache line give the same product (the kernels
    copy x into aligned blocks; nothing assumes the caller's alignment)."""
    w = rng.standard_normal((40, 24)).astype(np.float32)
    w[np.abs(w) < 1.0] = 0.0
    w_t = csr.dense_to_csr(np.ascontiguousarray(w.T))  # [N, K]
    x = rng.standard_normal((20, 40)).astype(np.float32)
    expected = csr.sparse_linear(x, w_t, path="simd")
    np.testing.assert_allclose(expected, x @ w, rtol=1e-5, atol=1e-5)
    for offset in range(0, ALIGNMENT, 4):
        raw = aligned_bytes(x.nbytes + ALIGNMENT)[offset : offset + x.nbytes]
        x_shifted = raw.view(np.float32).reshape(x.shape)
        x_shifted[...] = x
        assert address(x_shifted) % ALIGNMENT == offset
        np.testing.assert_array_equal(csr.sparse_linear(x_shifted, w_t, path="simd"), expected)
