"""CSR kernels (``kernels/csr.py``, ``kernels/csr_portable.py``, ``kernels/x86/csr_spmm.py``,
``kernels/x86/csr_spmv.py``) against ``kernels/reference.py``, scipy.sparse and dense NumPy.

Every test runs on the three paths: ``reference`` (the NumPy contracts), ``portable`` (plain
Numba) and ``simd`` (the x86 kernels).
Conversions must agree exactly; products agree with a float64 dense product to float32
rounding: |y - y64| <= 1e-5 * (|x| @ |w| + |bias|), the size of the terms being summed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from minicompress.kernels import cpu, csr, row_parts
from minicompress.kernels.reference import (
    CSR,
    csr_matmul_reference,
    dense_to_csr,
    quantize_weight_per_channel,
    sparse_linear_reference,
)
from minicompress.kernels.x86 import csr_spmm

PATHS = ("reference", "portable", "simd")
AUTO = "simd" if cpu.is_x86_64() else "portable"
REPO = Path(__file__).resolve().parents[1]


def random_sparse(rng: np.random.Generator, shape: tuple[int, int], sparsity: float) -> np.ndarray:
    """float32 [R, C] with round(sparsity * R * C) entries set to zero (the smallest |w|)."""
    w = rng.standard_normal(shape).astype(np.float32)
    n_zero = round(sparsity * w.size)
    order = np.argsort(np.abs(w), axis=None, kind="stable")
    w.flat[order[:n_zero]] = 0.0
    return w


def assert_close_to_dense(ours: np.ndarray, x: np.ndarray, w: np.ndarray, bias=None) -> None:
    """ours == x @ w + bias to float32 rounding of the sum (float64 dense product as truth)."""
    truth = x.astype(np.float64) @ w.astype(np.float64)  # [M, K] @ [K, N] -> [M, N]
    size = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64)  # [M, N]
    if bias is not None:
        truth = truth + bias
        size = size + np.abs(bias)
    assert ours.dtype == np.float32 and ours.shape == truth.shape
    err = np.abs(ours - truth)  # [M, N]
    bound = 1e-5 * size  # exact zeros (an empty row, no bias) must come out exactly zero
    if not np.all(err <= bound):
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"at {i}: ours {ours[i]!r}, float64 dense {truth[i]!r}, allowed error {bound[i]:.3g}"
        )


# ----------------------------------------------------------------------------------------
# path selection
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, expected",
    [
        ("reference", "reference"),
        ("portable", "portable"),
        ("vnni", "simd"),
        ("amx", "simd"),
        ("auto", AUTO),
        (" Reference ", "reference"),
    ],
)
def test_kernel_path_follows_environment(monkeypatch, env, expected):
    monkeypatch.setenv("MINICOMPRESS_KERNEL", env)
    assert csr.csr_kernel_path() == expected


def test_kernel_path_default_and_bad_values(monkeypatch):
    monkeypatch.delenv("MINICOMPRESS_KERNEL", raising=False)
    assert csr.csr_kernel_path() == AUTO
    assert csr.csr_kernel_path("reference") == "reference"  # explicit path beats the env
    assert csr.csr_kernel_path("simd") == "simd"  # the CSR names are accepted too
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "gpu")
    with pytest.raises(ValueError, match="MINICOMPRESS_KERNEL.*gpu"):
        csr.csr_kernel_path()
    with pytest.raises(ValueError, match="path.*fast"):
        csr.csr_kernel_path("fast")


# ----------------------------------------------------------------------------------------
# conversions
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.int8])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 300), (3, 0), (0, 4)])
def test_dense_to_csr_matches_scipy(rng, path, dtype, shape):
    a = random_sparse(rng, shape, 0.7)
    a = (a * 40).astype(dtype) if dtype == np.int8 else a
    a[: shape[0] // 2 : 2] = 0  # some empty rows
    ours = csr.dense_to_csr(a, path=path)
    theirs = scipy.sparse.csr_matrix(a)  # an independent implementation
    assert ours.shape == a.shape
    assert ours.indptr.dtype == np.int32 and ours.indices.dtype == np.int32
    assert ours.data.dtype == a.dtype
    np.testing.assert_array_equal(ours.indptr, theirs.indptr)
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    np.testing.assert_array_equal(ours.data, theirs.data)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int16])
def test_round_trip_is_exact(rng, path, index_dtype):
    a = random_sparse(rng, (37, 129), 0.9)
    a[5] = 0.0  # an empty row
    a[0, 3] = -0.0  # a negative zero is a zero, as in np.nonzero
    a[1, 4] = np.nan  # NaN is a non-zero and must survive
    m = csr.dense_to_csr(a, index_dtype, path=path)
    assert m.indices.dtype == index_dtype
    back = csr.csr_to_dense(m, path=path)
    np.testing.assert_array_equal(back, a)  # NaN == NaN for assert_array_equal
    ref = dense_to_csr(a, index_dtype)
    for ours, theirs in zip(m[:3], ref[:3], strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("path", PATHS)
def test_all_zero_matrix_has_no_entries(path):
    m = csr.dense_to_csr(np.zeros((4, 6), dtype=np.float32), path=path)
    assert m.data.size == 0 and m.indices.size == 0
    np.testing.assert_array_equal(m.indptr, np.zeros(5, dtype=np.int32))
    np.testing.assert_array_equal(csr.csr_to_dense(m, path=path), np.zeros((4, 6), np.float32))


@pytest.mark.parametrize("path", PATHS)
def test_int16_indices_refused_when_columns_do_not_fit(path):
    csr.dense_to_csr(np.ones((1, 32768), dtype=np.float32), np.int16, path=path)  # fits
    with pytest.raises(ValueError, match="32769 columns"):
        csr.dense_to_csr(np.ones((1, 32769), dtype=np.float32), np.int16, path=path)
    with pytest.raises(TypeError, match="index_dtype"):
        csr.dense_to_csr(np.ones((2, 2), dtype=np.float32), np.int64, path=path)
    with pytest.raises(TypeError, match="a must have dtype"):
        csr.dense_to_csr(np.ones((2, 2)), path=path)  # float64


# ----------------------------------------------------------------------------------------
# products
# ----------------------------------------------------------------------------------------

# (M, K, N): M = 1 and tiny M (SpMV), M <= 16 (16-wide blocks), M > 16 with a partial last
# 32-wide block, odd K, N not a multiple of 16 (the tile of output features)
SHAPES = [
    (1, 33, 17),
    (2, 7, 5),
    (3, 100, 50),
    (5, 129, 31),
    (16, 64, 40),
    (17, 300, 129),
    (33, 31, 1),
    (70, 768, 300),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m, k, n", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int16])
def test_sparse_linear_matches_dense(rng, path, m, k, n, with_bias, index_dtype):
    w = random_sparse(rng, (k, n), 0.8)  # [K, N]
    w[:, n // 2] = 0.0  # an output feature with no weights: an empty row of w_t
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    w_t = csr.dense_to_csr(np.ascontiguousarray(w.T), index_dtype)  # [N, K]
    y = csr.sparse_linear(x, w_t, bias, path=path)
    assert_close_to_dense(y, x, w, bias)
    y_ref = sparse_linear_reference(x, w_t, bias)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * float(np.abs(y_ref).max()))


@pytest.mark.parametrize("min_work", [0, 10**9])  # every product on all threads, or on one
@pytest.mark.parametrize("m, k, n", [(1, 1024, 400), (3, 257, 129), (16, 512, 257), (100, 300, 77)])
def test_parallel_and_serial_kernels_agree(rng, monkeypatch, min_work, m, k, n):
    monkeypatch.setattr(row_parts, "PARALLEL_MIN_WORK", min_work)
    monkeypatch.setattr(row_parts, "PARALLEL_MIN_BLOCK_WORK", min_work)
    w = random_sparse(rng, (k, n), 0.8)
    w[:, 5:40] = 0.0  # a run of empty rows: parts of unequal length
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = csr.sparse_linear(x, csr.dense_to_csr(np.ascontiguousarray(w.T)), bias, path="simd")
    assert_close_to_dense(y, x, w, bias)


@pytest.mark.parametrize("m, k", [(16, 16), (32, 1024), (37, 70), (64, 33), (5, 100)])
@pytest.mark.parametrize("transposed", [True, False])
def test_packed_blocks_hold_x_transposed_and_zero_padded(rng, m, k, transposed):
    """xp[b, k, t] = x[b*W + t, k], 0 past M: exactly, for full 16 x 16 register transposes,
    K tails and partial blocks alike."""
    width = 16 if m <= 16 else 32
    x = rng.standard_normal((m, k)).astype(np.float32)  # [M, K]
    xp = np.full(((m + width - 1) // width, k, width), np.nan, np.float32)
    csr_spmm._pack_blocks(x if transposed else np.ascontiguousarray(x.T), transposed, xp, False)
    padded = np.zeros((xp.shape[0] * width, k), np.float32)
    padded[:m] = x
    expected = padded.reshape(xp.shape[0], width, k).transpose(0, 2, 1)  # [blocks, K, W]
    np.testing.assert_array_equal(xp, expected)


def spmv_in_lane_order(x: np.ndarray, w_t: CSR, scale: np.ndarray) -> np.ndarray:
    """The SpMV's summation order, written out in NumPy (float32 throughout): entry j of a
    row goes to lane j % 16 (a multiply, then an add); the 16 lanes are summed in halves."""
    out = np.empty((x.shape[0], w_t.shape[0]), np.float32)  # [M, N]
    for n in range(w_t.shape[0]):
        lo, hi = w_t.indptr[n], w_t.indptr[n + 1]
        values, idx = w_t.data[lo:hi].astype(np.float32), w_t.indices[lo:hi]
        for m in range(x.shape[0]):
            lanes = np.zeros(16, np.float32)
            for j in range(0, hi - lo, 16):  # one chunk of up to 16 entries
                c = min(16, hi - lo - j)
                lanes[:c] += values[j : j + c] * x[m, idx[j : j + c]]
            while lanes.size > 1:
                lanes = lanes[: lanes.size // 2] + lanes[lanes.size // 2 :]
            out[m, n] = scale[n] * lanes[0]
    return out


@pytest.mark.parametrize("min_work", [0, 10**9])
@pytest.mark.parametrize("int8_values", [False, True])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int16])
def test_spmv_sums_in_its_documented_order_exactly(
    rng, monkeypatch, min_work, int8_values, index_dtype
):
    """M < SPMV_MAX_M: bit for bit the lane order of csr_spmv.py, on any CPU (no FMA, no
    reassociation); rows of 0 to 70 entries cover partial, full and several chunks."""
    monkeypatch.setattr(row_parts, "PARALLEL_MIN_WORK", min_work)
    monkeypatch.setattr(row_parts, "PARALLEL_MIN_BLOCK_WORK", min_work)
    k, n = 300, 50
    w = rng.standard_normal((k, n)).astype(np.float32)
    keep = rng.random((k, n)) < np.linspace(0.0, 70 / k, n)  # row n of w_t: about 1.4 n entries
    w[~keep] = 0.0
    w_t = csr.dense_to_csr(np.ascontiguousarray(w.T), index_dtype)
    scale = np.ones(n, np.float32)
    if int8_values:
        w_t, scale = csr.quantize_csr(w_t)
    for m in range(1, csr_spmm.SPMV_MAX_M):
        x = rng.standard_normal((m, k)).astype(np.float32)
        y = csr.sparse_linear(x, w_t, scale=scale if int8_values else None, path="simd")
        np.testing.assert_array_equal(y, spmv_in_lane_order(x, w_t, scale))


def _long_rows() -> CSR:
    """Two rows of 40 entries (three chunks each) over K = 64."""
    idx = np.concatenate([np.arange(0, 40), np.arange(20, 60)]).astype(np.int32)
    return CSR(np.array([0, 40, 80], np.int32), idx, np.ones(80, np.float32), (2, 64))


@pytest.mark.parametrize("min_work", [0, 10**9])
@pytest.mark.parametrize("position", [1, 15, 16, 17, 39, 40, 41, 79])
@pytest.mark.parametrize("fault", ["repeated", "too large", "negative"])
def test_spmv_finds_a_bad_index_in_any_lane_of_any_chunk(
    rng, monkeypatch, min_work, position, fault
):
    """Positions at the chunk edges (15|16, 31|32) and the row edge (39|40): an index is
    compared with the one before it even across chunks, but not across rows (row 1 starts
    at 20, after row 0's 39: valid)."""
    monkeypatch.setattr(row_parts, "PARALLEL_MIN_WORK", min_work)
    monkeypatch.setattr(row_parts, "PARALLEL_MIN_BLOCK_WORK", min_work)
    m = _long_rows()
    x = rng.standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_allclose(
        csr.sparse_linear(x, m, path="simd"), sparse_linear_reference(x, m), rtol=1e-5
    )
    bad = m.indices.copy()
    if fault == "repeated":
        bad[position] = bad[position - 1] if position != 40 else bad[position + 1]
    else:
        bad[position] = 64 if fault == "too large" else -1
    with pytest.raises(ValueError, match=r"w_t.indices must (increase strictly|lie in \[0, 64\))"):
        csr.sparse_linear(x, m._replace(indices=bad), path="simd")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("r, c, m", [(17, 33, 1), (40, 31, 5), (129, 300, 47)])
def test_csr_matmul_matches_reference_and_dense(rng, path, r, c, m):
    a = random_sparse(rng, (r, c), 0.9)
    a[3] = 0.0
    b = rng.standard_normal((c, m)).astype(np.float32)
    ours = csr.csr_matmul(csr.dense_to_csr(a), b, path=path)  # [R, C] @ [C, M] -> [R, M]
    assert_close_to_dense(ours, a, b)
    ref = csr_matmul_reference(dense_to_csr(a), b)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


@pytest.mark.parametrize("m", [1, 3, 20])
def test_non_finite_values_propagate_alike_on_every_path(rng, m):
    """The CSR products' rule for NaN and inf (reference.py): they propagate as in a dense
    product of the stored entries, on every path, to the same outputs."""
    w = random_sparse(rng, (30, 24), 0.7)  # [K, N]
    w[7, :] = 0.0  # input 7 meets no stored weight: its NaN reaches no output
    w_t = csr.dense_to_csr(np.ascontiguousarray(w.T))
    x = rng.standard_normal((m, 30)).astype(np.float32)
    x[0, 3], x[0, 7], x[-1, 11] = np.nan, np.nan, np.inf
    outputs = [csr.sparse_linear(x, w_t, path=path) for path in PATHS]
    for y in outputs:
        np.testing.assert_array_equal(np.isnan(y), np.isnan(outputs[0]))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(outputs[0]))
    if m > 1:  # row 0 holds NaN only: exactly the outputs with a stored weight on input 3
        assert np.isnan(outputs[0][0]).tolist() == (w[3] != 0).tolist()
        assert np.all(np.isfinite(outputs[0][1:-1]))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m", [1, 20])
def test_all_zero_weight_gives_the_bias(rng, path, m):
    w_t = csr.dense_to_csr(np.zeros((24, 10), dtype=np.float32))  # nnz = 0
    x = rng.standard_normal((m, 10)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    np.testing.assert_array_equal(csr.sparse_linear(x, w_t, path=path), np.zeros((m, 24)))
    np.testing.assert_array_equal(
        csr.sparse_linear(x, w_t, bias, path=path), np.broadcast_to(bias, (m, 24))
    )


@pytest.mark.parametrize("path", PATHS)
def test_empty_dimensions(rng, path):
    w_t = csr.dense_to_csr(random_sparse(rng, (6, 5), 0.5))
    assert csr.sparse_linear(np.zeros((0, 5), np.float32), w_t, path=path).shape == (0, 6)
    empty = csr.dense_to_csr(np.zeros((0, 5), dtype=np.float32))
    x = rng.standard_normal((3, 5)).astype(np.float32)
    assert csr.sparse_linear(x, empty, path=path).shape == (3, 0)


@pytest.mark.parametrize("path", PATHS)
def test_non_contiguous_inputs_are_copied_not_refused(rng, path):
    w = random_sparse(rng, (20, 30), 0.8)
    w_t = csr.dense_to_csr(np.ascontiguousarray(w.T))
    x_wide = rng.standard_normal((9, 40)).astype(np.float32)
    x = x_wide[:, ::2][:, :20]  # [9, 20], strided
    spread = CSR(*(np.repeat(a, 2)[::2] for a in w_t[:3]), w_t.shape)  # strided arrays
    assert not spread.data.flags.c_contiguous
    y = csr.sparse_linear(x, spread, path=path)
    np.testing.assert_allclose(
        y, csr.sparse_linear(np.ascontiguousarray(x), w_t, path=path), rtol=1e-6, atol=1e-6
    )
    assert_close_to_dense(y, x, w)


# ----------------------------------------------------------------------------------------
# int8 values with a scale per output feature
# ----------------------------------------------------------------------------------------


def test_quantize_csr_by_hand():
    w_t = dense_to_csr(np.array([[0.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]], np.float32))
    q, scale = csr.quantize_csr(w_t)
    # s_0 = 2 / 127; -1 / s_0 = -63.5 rounds half to even -> -64; an empty row gets scale 1
    np.testing.assert_array_equal(q.data, np.array([127, -64], np.int8))
    np.testing.assert_array_equal(scale, np.array([2.0 / 127.0, 1.0], np.float32))
    np.testing.assert_array_equal(q.indices, w_t.indices)


def test_quantize_csr_agrees_with_dense_per_channel_quantizer(rng):
    w = random_sparse(rng, (50, 30), 0.7)  # [K, N]
    q, scale = csr.quantize_csr(dense_to_csr(np.ascontiguousarray(w.T)))
    q_dense, scale_dense = quantize_weight_per_channel(w)  # [K, N], [N]
    np.testing.assert_array_equal(scale, scale_dense)
    np.testing.assert_array_equal(csr.csr_to_dense(q, path="reference"), q_dense.T)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m", [1, 3, 16, 45])
def test_int8_sparse_linear_is_the_dequantized_layer(rng, path, m):
    w = random_sparse(rng, (77, 40), 0.85)  # [K, N]
    q, scale = csr.quantize_csr(dense_to_csr(np.ascontiguousarray(w.T)))
    x = rng.standard_normal((m, 77)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    y = csr.sparse_linear(x, q, bias, scale=scale, path=path)
    w_hat = csr.csr_to_dense(csr.dequantize_csr(q, scale)).T  # [K, N]
    assert_close_to_dense(y, x, w_hat, bias)


@pytest.mark.parametrize("path", PATHS)
def test_int8_scale_is_required_and_only_for_int8(rng, path):
    w_t = dense_to_csr(random_sparse(rng, (6, 5), 0.5))
    q, scale = csr.quantize_csr(w_t)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="int8 data"):
        csr.sparse_linear(x, q, path=path)
    with pytest.raises(ValueError, match="scale= is only for int8"):
        csr.sparse_linear(x, w_t, scale=scale, path=path)
    with pytest.raises(ValueError, match=r"scale must have shape \(6,\)"):
        csr.sparse_linear(x, q, scale=scale[:5], path=path)
    with pytest.raises(TypeError, match="a.data must be float32"):
        csr.csr_matmul(q, x.T.copy(), path=path)


# ----------------------------------------------------------------------------------------
# invalid input: a clear error, never a crash or a wrong answer
# ----------------------------------------------------------------------------------------


def _valid() -> CSR:
    # [[1, 0, 2, 0], [0, 0, 0, 0], [0, 3, 0, 4], [5, 0, 0, 0]]: 5 entries, K = 4
    return CSR(
        np.array([0, 2, 2, 4, 5], np.int32),
        np.array([0, 2, 1, 3, 0], np.int32),
        np.array([1, 2, 3, 4, 5], np.float32),
        (4, 4),
    )


BROKEN = {
    "indptr decreasing": (
        _valid()._replace(indptr=np.array([0, 2, 1, 4, 5], np.int32)),
        ValueError,
        "never decrease",
    ),
    "indptr past nnz inside": (
        _valid()._replace(indptr=np.array([0, 9, 2, 4, 5], np.int32)),
        ValueError,
        "never decrease",
    ),
    "indptr not starting at 0": (
        _valid()._replace(indptr=np.array([1, 2, 2, 4, 5], np.int32)),
        ValueError,
        "indptr must start at 0",
    ),
    "indptr too short": (
        _valid()._replace(indptr=np.array([0, 2, 4, 5], np.int32)),
        ValueError,
        "length R",
    ),
    "indptr not ending at nnz": (
        _valid()._replace(indptr=np.array([0, 2, 2, 4, 4], np.int32)),
        ValueError,
        "end at nnz",
    ),
    "index too large": (
        _valid()._replace(indices=np.array([0, 2, 1, 4, 0], np.int32)),
        ValueError,
        r"lie in \[0, 4\)",
    ),
    "index negative": (
        _valid()._replace(indices=np.array([0, 2, 1, 3, -1], np.int32)),
        ValueError,
        r"lie in \[0, 4\)",
    ),
    "index repeated": (
        _valid()._replace(indices=np.array([2, 2, 1, 3, 0], np.int32)),
        ValueError,
        "increase strictly",
    ),
    "indices unsorted": (
        _valid()._replace(indices=np.array([0, 2, 3, 1, 0], np.int32)),
        ValueError,
        "increase strictly",
    ),
    "indices int64": (
        _valid()._replace(indices=np.array([0, 2, 1, 3, 0], np.int64)),
        TypeError,
        "indices must have dtype",
    ),
    "indptr int64": (
        _valid()._replace(indptr=np.array([0, 2, 2, 4, 5], np.int64)),
        TypeError,
        "indptr must have dtype",
    ),
    "data float64": (
        _valid()._replace(data=np.arange(5, dtype=np.float64)),
        TypeError,
        "data must have dtype",
    ),
    "data shorter than indices": (
        _valid()._replace(data=np.ones(4, np.float32)),
        ValueError,
        "indices has 5 entries",
    ),
    "not a CSR": ((np.zeros(5), np.zeros(5), np.zeros(5), (4, 4)), TypeError, "CSR"),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", list(BROKEN))
def test_invalid_csr_is_refused_clearly(rng, path, case):
    m, error, message = BROKEN[case]
    for rows in (1, 3, 40):  # SpMV, 16-wide and 32-wide kernels
        x = rng.standard_normal((rows, 4)).astype(np.float32)
        with pytest.raises(error, match=message):
            csr.sparse_linear(x, m, path=path)
        with pytest.raises(error, match=message):
            csr.csr_matmul(m, np.ascontiguousarray(x.T), path=path)
    with pytest.raises(error, match=message):
        csr.csr_to_dense(m, path=path)


@pytest.mark.parametrize("path", PATHS)
def test_mismatched_arguments_are_refused(rng, path):
    w_t = _valid()
    x = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="x.shape\\[1\\] must equal K"):
        csr.sparse_linear(x[:, :3].copy(), w_t, path=path)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        csr.sparse_linear(x.astype(np.float64), w_t, path=path)
    with pytest.raises(ValueError, match="x must be 2-D"):
        csr.sparse_linear(x[0], w_t, path=path)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        csr.sparse_linear(x, w_t, np.zeros(3, np.float32), path=path)
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        csr.sparse_linear(x, w_t, np.zeros(4), path=path)
    with pytest.raises(ValueError, match="b.shape\\[0\\] must equal 4"):
        csr.csr_matmul(w_t, np.zeros((5, 2), np.float32), path=path)


# ----------------------------------------------------------------------------------------
# the kernels as plain Python, and the on-disk cache
# ----------------------------------------------------------------------------------------

_SMALL_CHECK = textwrap.dedent(
    """
    import numpy as np
    from minicompress.kernels import csr, reference as ref, row_parts
    rng = np.random.default_rng(0)
    w = rng.standard_normal((9, 21)).astype(np.float32)  # [K, N]: one full tile of 16 outputs
    w[rng.random(w.shape) < 0.6] = 0.0
    w[:, 2] = 0.0
    w_t = csr.dense_to_csr(np.ascontiguousarray(w.T), path="portable")
    assert all(np.array_equal(a, b) for a, b in zip(w_t[:3], ref.dense_to_csr(w.T.copy())[:3]))
    assert np.array_equal(csr.csr_to_dense(w_t, path="portable"), w.T)
    print("auto:", csr.csr_kernel_path())
    for path in ("portable", "simd"):
        for work in (0, 10**9):  # the parallel kernels, then the serial ones
            row_parts.PARALLEL_MIN_WORK = row_parts.PARALLEL_MIN_BLOCK_WORK = work
            for m in (1, 5, 16, 20, 32):  # SpMV, partial and full 16- and 32-wide blocks
                x = rng.standard_normal((m, 9)).astype(np.float32)
                y = csr.sparse_linear(x, w_t, path=path)
                assert np.allclose(y, x @ w, rtol=1e-5, atol=1e-5), (m, y, x @ w)
                c = csr.csr_matmul(w_t, np.ascontiguousarray(x.T), path=path)
                assert np.allclose(c, w.T @ x.T, rtol=1e-5, atol=1e-5)
        bad = w_t._replace(indices=np.where(w_t.indices == w_t.indices.max(), 11, w_t.indices)
                           .astype(np.int32))
        try:
            csr.sparse_linear(x, bad, path=path)
            raise SystemExit("bad CSR accepted")
        except ValueError:
            pass
    print("ok")
    """
)


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    full_env.pop("MINICOMPRESS_KERNEL", None)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_kernels_run_as_plain_python_with_jit_disabled():
    done = _run_python(_SMALL_CHECK, NUMBA_DISABLE_JIT="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["auto:", "portable", "ok"]  # auto never needs the JIT


def test_kernels_are_loaded_from_the_disk_cache():
    _run_python(_SMALL_CHECK)  # compiles what is missing and saves it
    done = _run_python(_SMALL_CHECK, NUMBA_DEBUG_CACHE="1")
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stdout.splitlines() if "kernels" in ln]
    loaded = [ln for ln in lines if "data loaded" in ln]
    saved = [ln for ln in lines if "data saved" in ln]
    for kernel in (
        "csr_spmm._spmm-",
        "csr_spmm._pack_blocks-",
        "csr_spmv.spmv-",
        "csr_portable.spmm_rows-",
        "csr_portable.fill_csr-",
    ):
        assert any(kernel in ln for ln in loaded), f"{kernel} not loaded from cache:\n{lines}"
    assert not saved, f"second run compiled again:\n{saved}"
