"""int8 GEMM and int8 linear kernels (``kernels/int8.py``, ``kernels/vnni.py``,
``kernels/amx.py``) against the contracts of ``kernels/reference.py``: integers bit for bit,
floats to rtol 1e-5 (and the fast paths bit for bit against each other)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from minicompress.kernels import MAX_K_INT32, int8_gemm_reference, quantized_linear_reference
from minicompress.kernels import amx as amx_module
from minicompress.kernels import vnni as vnni_module
from minicompress.kernels.int8 import (
    PackedInt8Linear,
    int8_gemm,
    int8_kernel_path,
    int8_linear,
    pack_int8_linear,
    pack_quantized_int8_linear,
)
from minicompress.kernels.int8_quant import quantize_rows, round_half_even, row_range
from minicompress.kernels.reference import quantize_rows_uint8, quantize_weight_per_channel

HAS_VNNI = vnni_module.vnni_supported()
HAS_AMX = amx_module.amx_supported()
AUTO = "amx" if HAS_AMX else "vnni" if HAS_VNNI else "portable"
REPO = Path(__file__).resolve().parents[1]

PATHS = [
    "reference",
    "portable",
    pytest.param("vnni", marks=pytest.mark.skipif(not HAS_VNNI, reason="CPU lacks AVX-512 VNNI")),
    pytest.param("amx", marks=pytest.mark.skipif(not HAS_AMX, reason="no AMX-INT8 tiles here")),
]
FAST_PATHS = PATHS[1:]

# (M, K, N): M = 1, odd K, N not a multiple of 16, edges of the VNNI tiles (MR = 8 rows,
# NV = 3 vectors: 48 columns) and M >= 8 (rows quantized in parallel), with several row tiles
# over a longer K and M*K*N above SERIAL_MAX_WORK (parallel kernels): N split (M < 8, and
# M <= 32 with weights of 1 MB or more) and M split (M = 33 past that limit); on the amx
# path, the tiles from M = 128 (K not a multiple of 64, an odd number of 16-column blocks, a
# last block of 32 rows cut short; N split up to 64 rows, M split above) and from M = 16
# on weights of 1 MB or more
SHAPES = [
    (1, 1, 1),
    (1, 7, 33),
    (3, 5, 17),
    (4, 64, 64),
    (5, 131, 70),
    (8, 128, 64),
    (9, 36, 130),
    (12, 100, 80),
    (64, 100, 256),
    (67, 257, 129),
    (2, 520, 1030),
    (20, 1024, 1030),
    (33, 1024, 1030),
    (130, 200, 70),
    (257, 64, 33),
]


def test_shapes_reach_every_thread_split():
    """SHAPES above must keep covering the N split for large weights and its limits, and
    the edges of the AMX tile kernel."""
    big = [
        (m, k, n)
        for m, k, n in SHAPES
        if -(-n // 16) * -(-k // 4) * 64 >= vnni_module.SPLIT_N_MIN_WEIGHT_BYTES
    ]
    assert any(vnni_module.MIN_ROWS_SPLIT_M <= m <= vnni_module.SPLIT_N_MAX_ROWS for m, _, _ in big)
    assert any(m > vnni_module.SPLIT_N_MAX_ROWS for m, _, _ in big)
    on_tiles = [
        (m, k, n)
        for m, k, n in SHAPES
        if amx_module.use_tiles(m, np.empty(amx_module.amx_weight_shape(k, n), np.int8))
    ]
    assert any(m <= 2 * amx_module.M_BLOCK for m, _, _ in on_tiles)  # N split
    assert any(m > 2 * amx_module.M_BLOCK and m % amx_module.M_BLOCK for m, _, _ in on_tiles)
    assert any(-(-n // 16) % 2 for _, _, n in on_tiles)  # an odd last block of 16 columns
    assert any(k % amx_module.K_BLOCK for _, k, _ in on_tiles)


def assert_same_integers(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == ref.dtype == np.int32, (ours.dtype, ref.dtype)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    bad = np.argwhere(ours != ref)
    assert bad.size == 0, (
        f"first mismatch at {tuple(bad[0])}: ours {ours[tuple(bad[0])]} "
        f"vs reference {ref[tuple(bad[0])]} ({len(bad)} mismatches)"
    )


# ----------------------------------------------------------------------------------------
# path selection
# ----------------------------------------------------------------------------------------


def test_kernel_path_from_environment(monkeypatch):
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "portable")
    assert int8_kernel_path() == "portable"
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "reference")
    assert int8_kernel_path() == "reference"
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "auto")
    assert int8_kernel_path() == AUTO
    monkeypatch.delenv("MINICOMPRESS_KERNEL")
    assert int8_kernel_path() == AUTO


def test_kernel_path_refuses_unknown(monkeypatch):
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "avx9000")
    with pytest.raises(ValueError, match="MINICOMPRESS_KERNEL must be one of.*'avx9000'"):
        int8_kernel_path()
    with pytest.raises(ValueError, match="path must be one of"):
        int8_kernel_path("fast")


def test_vnni_refused_without_the_cpu_feature(monkeypatch):
    monkeypatch.setattr(vnni_module, "vnni_supported", lambda: False)
    monkeypatch.setattr(amx_module, "amx_supported", lambda: False)  # no AMX without VNNI
    with pytest.raises(ValueError, match="AVX-512 VNNI"):
        int8_kernel_path("vnni")
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "vnni")
    with pytest.raises(ValueError, match="AVX-512 VNNI"):
        int8_kernel_path()
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "auto")
    assert int8_kernel_path() == "portable"


def test_amx_refused_without_the_tiles(monkeypatch):
    monkeypatch.setattr(amx_module, "amx_supported", lambda: False)
    with pytest.raises(ValueError, match="AMX-INT8"):
        int8_kernel_path("amx")
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "auto")
    assert int8_kernel_path() == ("vnni" if HAS_VNNI else "portable")


@pytest.mark.skipif(not HAS_AMX, reason="no AMX-INT8 tiles here")
def test_amx_layer_refused_where_the_tiles_are_missing(monkeypatch, rng):
    x, w, bias = random_layer(rng, 130, 64, 40)
    packed = pack_int8_linear(w, bias, path="amx")
    monkeypatch.setattr(amx_module, "amx_supported", lambda: False)
    with pytest.raises(ValueError, match="AMX-INT8"):
        int8_linear(x, packed)


def test_amx_tiles_are_used_where_they_win():
    big = np.empty(amx_module.MIN_LARGE_BYTES, dtype=np.int8)
    small = np.empty(1024, dtype=np.int8)
    assert amx_module.use_tiles(amx_module.MIN_ROWS, small)
    assert not amx_module.use_tiles(amx_module.MIN_ROWS - 1, small)
    assert amx_module.use_tiles(amx_module.MIN_ROWS_LARGE, big)
    assert not amx_module.use_tiles(amx_module.MIN_ROWS_LARGE - 1, big)


def test_amx_weight_layout_is_the_vnni_one_padded_to_64_k(rng):
    w_q = rng.integers(-128, 128, size=(70, 33), dtype=np.int8)
    packed = amx_module.pack_amx_weight(w_q)
    assert packed.shape == amx_module.amx_weight_shape(70, 33) == (3, 32, 16, 4)
    np.testing.assert_array_equal(vnni_module.unpack_vnni_weight(packed, 70, 33), w_q)
    np.testing.assert_array_equal(packed[:, 70 // 4 + 1 :], 0)  # k = 72..127: zeros
    assert packed[0, 17, 0, 2:].tolist() == [0, 0]  # k = 70, 71: zeros


@pytest.mark.skipif(not HAS_VNNI, reason="CPU lacks AVX-512 VNNI")
def test_vnni_layer_refused_on_a_cpu_without_vnni(monkeypatch, rng):
    x, w, bias = random_layer(rng, 2, 8, 5)
    packed = pack_int8_linear(w, bias, path="vnni")  # e.g. packed here, unpickled elsewhere
    monkeypatch.setattr(vnni_module, "vnni_supported", lambda: False)
    with pytest.raises(ValueError, match="AVX-512 VNNI"):
        int8_linear(x, packed)


# ----------------------------------------------------------------------------------------
# int8 GEMM: exact
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_gemm_uint8_matches_reference(path, m, k, n, rng):
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    assert_same_integers(int8_gemm(a, b, path=path), int8_gemm_reference(a, b))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m,k,n", SHAPES[::2])
def test_gemm_int8_activations_match_reference(path, m, k, n, rng):
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    assert_same_integers(int8_gemm(a, b, path=path), int8_gemm_reference(a, b))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("a_value,b_value", [(255, -128), (255, 127), (0, -128), (0, 127)])
def test_gemm_extreme_values(path, a_value, b_value):
    m, k, n = 5, 1027, 35  # odd K, large enough that int16 accumulation would overflow
    a = np.full((m, k), a_value, dtype=np.uint8)
    b = np.full((k, n), b_value, dtype=np.int8)
    c = int8_gemm(a, b, path=path)
    assert_same_integers(c, int8_gemm_reference(a, b))
    assert c[0, 0] == a_value * b_value * k  # worked by hand


@pytest.mark.parametrize("path", PATHS)
def test_gemm_int8_extremes(path):
    a = np.array([[-128, 127, -128, 0, 1]], dtype=np.int8)  # [1, 5]
    b = np.array([[-128], [127], [127], [-128], [1]], dtype=np.int8)  # [5, 1]
    # by hand: 16384 + 16129 - 16256 + 0 + 1 = 16258
    assert int8_gemm(a, b, path=path)[0, 0] == 16258


@pytest.mark.parametrize("path", PATHS)
def test_gemm_at_max_k_does_not_overflow(path):
    k = MAX_K_INT32
    a = np.full((1, k), 255, dtype=np.uint8)
    b = np.full((k, 3), -128, dtype=np.int8)
    c = int8_gemm(a, b, path=path)
    assert c[0, 0] == -255 * 128 * k >= np.iinfo(np.int32).min


@pytest.mark.parametrize("path", PATHS)
def test_gemm_non_contiguous_inputs_are_copied(path, rng):
    a = rng.integers(0, 256, (9, 40), dtype=np.uint8)[:, ::2]  # [9, 20], strided
    b = np.asfortranarray(rng.integers(-128, 128, (20, 18), dtype=np.int8))
    assert_same_integers(int8_gemm(a, b, path=path), int8_gemm_reference(a, b))


@pytest.mark.parametrize("path", PATHS)
def test_gemm_refuses_k_too_large(path):
    k = MAX_K_INT32 + 1
    a = np.zeros((1, k), dtype=np.uint8)
    b = np.zeros((k, 1), dtype=np.int8)
    with pytest.raises(ValueError, match=f"K={k} is too large"):
        int8_gemm(a, b, path=path)


@pytest.mark.parametrize("path", PATHS)
def test_gemm_refuses_bad_inputs(path):
    a, b = np.zeros((2, 3), dtype=np.uint8), np.zeros((3, 4), dtype=np.int8)
    with pytest.raises(TypeError, match="a must have dtype uint8, int8; got float32"):
        int8_gemm(a.astype(np.float32), b, path=path)
    with pytest.raises(TypeError, match="b must have dtype int8; got uint8"):
        int8_gemm(a, b.astype(np.uint8), path=path)
    with pytest.raises(TypeError, match="a must be a numpy.ndarray, got list"):
        int8_gemm([[1, 2, 3]], b, path=path)
    with pytest.raises(ValueError, match="a must be 2-D"):
        int8_gemm(a[0], b, path=path)
    with pytest.raises(ValueError, match=r"a.shape\[1\] must equal b.shape\[0\]"):
        int8_gemm(a, b[:2], path=path)


# ----------------------------------------------------------------------------------------
# activation quantization: bit for bit
# ----------------------------------------------------------------------------------------


def test_numba_quantize_rows_is_bit_identical(rng):
    x = rng.standard_normal((20, 37), dtype=np.float32) * np.float32(3.0)
    x[1] = 0.0  # a row of zeros: scale 1, zero point 0
    x[2] = np.abs(x[2])  # only positive: lo = 0
    x[3] = -np.abs(x[3])  # only negative: hi = 0
    x[4] = 7.5  # a constant row
    x[5, :3] = [-1.0, 1.0, 0.5]  # values landing exactly on .5 of a step
    x[5, 3:] = 0.0
    q = np.full((20, 40), 99, dtype=np.uint8)  # K padded to 40: the pad must become 0
    s, z = np.empty(20, np.float32), np.empty(20, np.int32)
    assert quantize_rows(x, q, s, z, 0, 20)
    q_ref, s_ref, z_ref = quantize_rows_uint8(x)
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_array_equal(z, z_ref)
    np.testing.assert_array_equal(q[:, :37], q_ref)
    np.testing.assert_array_equal(q[:, 37:], 0)


def test_half_to_even_rounding_is_kept():
    # with the range [-1, 1], s = 2/255 and z = rint(127.5) = 128: x = 0.5 s and 1.5 s land
    # exactly on ties, which half-to-even rounds to 0 and 2
    s = np.float32(2.0) / np.float32(255.0)
    x = np.array([[-1.0, 1.0, np.float32(0.5) * s, np.float32(1.5) * s]], dtype=np.float32)
    q, sc, z = np.zeros(x.shape, np.uint8), np.empty(1, np.float32), np.empty(1, np.int32)
    quantize_rows(x, q, sc, z, 0, 1)
    q_ref, _, _ = quantize_rows_uint8(x)
    np.testing.assert_array_equal(q, q_ref)


def test_round_half_even_equals_rint(rng):
    from numba import njit

    @njit
    def round_all(v):
        out = np.empty_like(v)
        for i in range(v.size):
            out[i] = round_half_even(v[i])
        return out

    halves = np.arange(-600, 600, 0.5, dtype=np.float32)  # every .5 tie in the code range
    v = np.concatenate(
        [
            halves,
            np.nextafter(halves, np.float32(np.inf)),
            np.nextafter(halves, np.float32(-np.inf)),
            rng.uniform(-300, 300, 10_000).astype(np.float32),
            np.array([0.0, -0.0, 2.0**22, -(2.0**22)], dtype=np.float32),
        ]
    )
    np.testing.assert_array_equal(round_all(v), np.rint(v))


@pytest.mark.parametrize(
    "row",
    [
        [1.0, -2.0, 3.0],
        [-1.0, -0.5],
        [0.25, 4.0],
        [0.0],
        [-0.0, 1.0],
        [3.4e38, -3.4e38],
        [1e-45, -1e-45],
    ],
)
def test_row_range_of_bit_patterns(row):
    x = np.array(row, dtype=np.float32)
    lo, hi, finite = row_range(x.view(np.int32))
    assert (lo, hi, finite) == (min(x.min(), 0), max(x.max(), 0), True)


@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf, -np.inf])
def test_row_range_flags_non_finite(bad):
    x = np.array([1.0, bad, -2.0], dtype=np.float32)
    assert not row_range(x.view(np.int32))[2]


# ----------------------------------------------------------------------------------------
# int8 linear layer
# ----------------------------------------------------------------------------------------


def random_layer(rng, m, k, n):
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
    bias = rng.standard_normal(n, dtype=np.float32)
    return x, w, bias


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_reference(path, m, k, n, with_bias, rng):
    x, w, bias = random_layer(rng, m, k, n)
    bias = bias if with_bias else None
    packed = pack_int8_linear(w, bias, path=path)
    assert packed.path == path
    ours = int8_linear(x, packed)
    ref = quantized_linear_reference(x, *quantize_weight_per_channel(w), bias)
    assert ours.dtype == np.float32 and ours.shape == (m, n)
    np.testing.assert_allclose(
        ours,
        ref,
        rtol=1e-5,
        atol=1e-6,
        err_msg=f"ours {ours.ravel()[:4]} vs reference {ref.ravel()[:4]}",
    )


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_linear_fast_paths_agree_bit_for_bit(m, k, n, rng):
    if not HAS_VNNI:
        pytest.skip("CPU lacks AVX-512 VNNI")
    x, w, bias = random_layer(rng, m, k, n)
    y_portable = int8_linear(x, pack_int8_linear(w, bias, path="portable"))
    y_vnni = int8_linear(x, pack_int8_linear(w, bias, path="vnni"))
    np.testing.assert_array_equal(y_portable, y_vnni)
    if HAS_AMX:
        np.testing.assert_array_equal(
            y_portable, int8_linear(x, pack_int8_linear(w, bias, path="amx"))
        )


@pytest.mark.parametrize("path", PATHS)
def test_linear_extreme_weights_and_activations(path, rng):
    k, n = 67, 40
    w_q = rng.choice(np.array([-128, 127], dtype=np.int8), size=(k, n))
    w_scale = np.full(n, 0.01, dtype=np.float32)
    x = rng.choice(np.array([-5.0, 0.0, 5.0], dtype=np.float32), size=(6, k))  # codes 0, 255
    x[0] = 0.0
    packed = pack_quantized_int8_linear(w_q, w_scale, None, path=path)
    ours = int8_linear(x, packed)
    ref = quantized_linear_reference(x, w_q, w_scale)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=0)
    np.testing.assert_array_equal(packed.w_q(), w_q)


@pytest.mark.parametrize("path", FAST_PATHS)
def test_linear_is_close_to_float_matmul(path, rng):
    """|y - (x @ w + b)| is bounded by the quantization errors, per element.

    With x = s_x (q_x - z_x) + e_x, |e_x| <= s_x / 2 (inside the range) and
    w = s_w q_w + e_w, |e_w| <= s_w / 2:
        x w - x_hat w_hat = sum_k (x_hat_k e_w,k + e_x,k w_hat_k + e_x,k e_w,k),
    so |y - x @ w - b| <= sum_k (|x_hat_k| s_w / 2 + |w_hat_k| s_x / 2 + s_x s_w / 4),
    and with |x_hat| <= |x| + s_x / 2, |w_hat| <= |w| + s_w / 2 the bound below follows.
    """
    m, k, n = 16, 200, 48
    x, w, bias = random_layer(rng, m, k, n)
    y = int8_linear(x, pack_int8_linear(w, bias, path=path)).astype(np.float64)
    exact = x.astype(np.float64) @ w.astype(np.float64) + bias
    _, s_x, _ = quantize_rows_uint8(x)  # [M]
    _, s_w = quantize_weight_per_channel(w)  # [N]
    s_x, s_w = s_x.astype(np.float64)[:, None], s_w.astype(np.float64)[None, :]
    abs_x = np.abs(x).astype(np.float64).sum(axis=1, keepdims=True)  # [M, 1]
    abs_w = np.abs(w).astype(np.float64).sum(axis=0, keepdims=True)  # [1, N]
    bound = abs_x * s_w / 2 + abs_w * s_x / 2 + k * s_x * s_w * (1 / 4 + 1 / 4 + 1 / 4)
    err = np.abs(y - exact)
    assert np.all(err <= bound * (1 + 1e-4) + 1e-5), f"worst excess {np.max(err - bound)}"
    assert np.max(err) > 0  # the bound is not vacuous: the layer does quantize


@pytest.mark.parametrize("path", FAST_PATHS)
def test_linear_close_to_torch_dynamic_quantization(path, rng, torch):
    m, k, n = 8, 128, 64
    x, w, bias = random_layer(rng, m, k, n)
    layer = torch.nn.Linear(k, n)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
        layer.bias.copy_(torch.from_numpy(bias))
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        qlayer = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(layer), {torch.nn.Linear}, dtype=torch.qint8
        )
    with torch.inference_mode():
        theirs = qlayer(torch.from_numpy(x)).numpy()
    ours = int8_linear(x, pack_int8_linear(w, bias, path=path))
    # torch quantizes weights per tensor (scale max|w| / 127.5) and activations with its own
    # observer and reduced range: both are close to the float layer, not equal to each other
    exact = x @ w + bias
    scale = np.abs(exact).max()
    assert np.max(np.abs(ours - theirs)) < 0.05 * scale, (ours[0, :4], theirs[0, :4])


@pytest.mark.parametrize("path", PATHS)
def test_linear_refuses_bad_inputs(path, rng):
    x, w, bias = random_layer(rng, 2, 8, 5)
    packed = pack_int8_linear(w, bias, path=path)
    with pytest.raises(TypeError, match="x must have dtype float32; got float64"):
        int8_linear(x.astype(np.float64), packed)
    with pytest.raises(ValueError, match=r"x.shape\[1\] must equal the layer's K=8"):
        int8_linear(x[:, :7], packed)
    with pytest.raises(TypeError, match="packed must be a PackedInt8Linear"):
        int8_linear(x, (w, bias))
    with pytest.raises(TypeError, match="w must have dtype float32"):
        pack_int8_linear(w.astype(np.float64), bias, path=path)
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        pack_int8_linear(w, bias[:4], path=path)
    w_q, w_scale = quantize_weight_per_channel(w)
    with pytest.raises(ValueError, match=r"w_scale must have shape \(5,\)"):
        pack_quantized_int8_linear(w_q, w_scale[:3], path=path)
    with pytest.raises(ValueError, match=r"w must have K >= 1 rows .*got shape \(0, 5\)"):
        pack_int8_linear(w[:0], bias, path=path)
    with pytest.raises(ValueError, match="K=65794 is too large"):
        pack_quantized_int8_linear(
            np.zeros((MAX_K_INT32 + 1, 1), np.int8), np.ones(1, np.float32), path=path
        )


@pytest.mark.parametrize("path", FAST_PATHS)
def test_linear_refuses_inconsistent_packed_layer(path, rng):
    x, w, bias = random_layer(rng, 2, 8, 5)
    packed = pack_int8_linear(w, bias, path=path)
    assert packed.col_sum.dtype == np.int32
    with pytest.raises(TypeError, match="packed.col_sum must have dtype int32; got int64"):
        int8_linear(x, packed._replace(col_sum=packed.col_sum.astype(np.int64)))
    with pytest.raises(ValueError, match="packed.weight must be C-contiguous of shape"):
        int8_linear(x, packed._replace(weight=packed.weight[..., :1]))
    with pytest.raises(ValueError, match=r"packed.bias must be C-contiguous of shape \(5,\)"):
        int8_linear(x, packed._replace(bias=bias[:3]))
    with pytest.raises(ValueError, match="packed.path must be one of"):
        int8_linear(x, packed._replace(path="gpu"))


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("m,k,n", [(2, 8, 5), (40, 128, 130), (130, 64, 40)])
def test_kernels_refuse_arrays_of_the_wrong_shape(path, m, k, n, rng):
    """Shapes are checked inside the kernels (``int8_quant.layer_status``), not in Python:
    the serial kernel, the parallel one and (130 rows, amx) the tiles each refuse arrays of
    the right dtype and order but the wrong size, and no result comes back."""
    x, w, bias = random_layer(rng, m, k, n)
    packed = pack_int8_linear(w, bias, path=path)
    shape = packed.weight.shape  # one more block of N (and of K) than the layer's
    wrong = np.zeros([d + 1 if i < 2 else d for i, d in enumerate(shape)], np.int8)
    with pytest.raises(ValueError, match="packed.weight must be C-contiguous of shape"):
        int8_linear(x, packed._replace(weight=wrong))
    for name in ("col_sum", "w_scale", "bias"):
        short = getattr(packed, name)[:-1].copy()
        with pytest.raises(ValueError, match=rf"packed.{name} must be C-contiguous of shape"):
            int8_linear(x, packed._replace(**{name: short}))


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize(
    "m,k,n",
    [(40, 8, 5), (40, 128, 130), (3, 1024, 300), (16, 256, 300), (130, 64, 40), (20, 1024, 1030)],
)
def test_linear_refuses_non_finite_input(path, m, k, n, rng):
    # serial kernel; parallel kernel with M split; parallel kernel with N split (M < 8);
    # on amx, the tiles with M split (130 rows) and N split (20 rows of 1 MB of weights)
    x, w, bias = random_layer(rng, m, k, n)
    packed = pack_int8_linear(w, bias, path=path)
    for bad in (np.nan, np.inf, -np.inf):
        x_bad = x.copy()
        x_bad[-2, k // 2] = bad
        with pytest.raises(ValueError, match="x must be finite"):
            int8_linear(x_bad, packed)
        with pytest.raises(ValueError, match="x must be finite"):
            int8_linear(x_bad[-2:-1], packed)


@pytest.mark.parametrize("path", PATHS)
def test_linear_does_not_mutate_and_copies(path, rng):
    x, w, bias = random_layer(rng, 3, 10, 7)
    x_t = np.asfortranarray(x)
    before = (x.copy(), w.copy(), bias.copy())
    packed = pack_int8_linear(w, bias, path=path)
    bias[0] += 1  # the layer holds its own copy
    ref = quantized_linear_reference(x, *quantize_weight_per_channel(w), before[2])
    np.testing.assert_allclose(int8_linear(x_t, packed), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(w, before[1])
    assert isinstance(packed, PackedInt8Linear)


# ----------------------------------------------------------------------------------------
# the machine code and the cache
# ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_VNNI, reason="CPU lacks AVX-512 VNNI")
def test_vnni_tile_emits_vpdpbusd():
    from numba import njit

    fresh = njit(vnni_module._tile.py_func)  # not cached, so the assembly can be inspected
    a = np.zeros((4, 8), np.uint8)
    w = vnni_module.pack_vnni_weight(np.zeros((8, 64), np.int8))
    c = np.zeros((4, 64), np.int32)
    fresh(4, 4, a, 0, w, 0, c, 0, 0)
    asm = fresh.inspect_asm(fresh.signatures[0])
    assert "vpdpbusd" in asm and "zmm" in asm


def test_cached_kernels_load_in_a_second_process(tmp_path):
    """Two fresh processes share NUMBA_CACHE_DIR: the first writes the cache, the second
    compiles nothing (Numba's own per-dispatcher cache statistics say so). The VNNI and AMX
    kernels are the ones checked where they run: their intrinsics must survive the cache."""
    script = (
        "import numpy as np\n"
        "from minicompress.kernels import amx, int8 as g, vnni\n"
        "x = np.ones((2, 512), np.float32); w = np.ones((512, 1024), np.float32)\n"
        "path = 'vnni' if vnni.vnni_supported() else 'portable'\n"
        "g.int8_linear(x, g.pack_int8_linear(w, None, path=path))\n"
        "ks = [vnni.vnni_linear_kernel if path == 'vnni' else g.portable_linear_kernel]\n"
        "if amx.amx_supported():\n"
        "    g.int8_linear(np.ones((130, 512), np.float32), g.pack_int8_linear(w, None, 'amx'))\n"
        "    ks.append(amx.amx_linear_kernel)\n"
        "print(sum(sum(k.stats.cache_misses.values()) for k in ks),\n"
        "      sum(sum(k.stats.cache_hits.values()) for k in ks))\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_DISABLE_JIT", None)

    def run() -> tuple[int, int]:
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        return int(out[0]), int(out[1])

    misses_first, _ = run()
    assert misses_first >= 1  # compiled and written to the empty cache dir
    assert any(p.suffix == ".nbi" for p in tmp_path.rglob("*"))
    misses_second, hits_second = run()
    assert (misses_second, hits_second) == (0, misses_first)


def test_portable_kernels_run_as_plain_python():
    """With NUMBA_DISABLE_JIT=1 the portable kernels are plain Python and still exact."""
    script = (
        "import numpy as np\n"
        "from minicompress.kernels import int8 as g\n"
        "from minicompress.kernels import reference as r\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.integers(0, 256, (3, 9), dtype=np.uint8)\n"
        "b = rng.integers(-128, 128, (9, 5), dtype=np.int8)\n"
        "assert np.array_equal(g.int8_gemm(a, b, path='portable'), r.int8_gemm_reference(a, b))\n"
        "x = rng.standard_normal((9, 9), dtype=np.float32)\n"
        "w = rng.standard_normal((9, 5), dtype=np.float32)\n"
        "y = g.int8_linear(x, g.pack_int8_linear(w, None, path='portable'))\n"
        "ref = r.quantized_linear_reference(x, *r.quantize_weight_per_channel(w))\n"
        "np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ----------------------------------------------------------------------------------------
# the benchmark's records (its speed is reported, never asserted)
# ----------------------------------------------------------------------------------------


def test_bench_records(monkeypatch):
    from minicompress.kernels import bench_int8

    monkeypatch.setattr(bench_int8, "_torch_dynamic_linear", lambda w, b: (None, None))
    monkeypatch.setattr(bench_int8, "QUICK_KN_VALUES", ((64, 48),))  # keep the test short
    records = bench_int8.run_int8_bench(quick=True, threads_list=(1,))
    keys = {
        "kernel",
        "path",
        "M",
        "K",
        "N",
        "threads",
        "ms",
        "numpy_ms",
        "speedup_vs_numpy",
        "torch_ms",
        "speedup_vs_torch",
    }
    assert records and all(keys <= set(r) for r in records)
    assert {r["path"] for r in records} == {int8_kernel_path(), "portable"} | (
        {"vnni"} if HAS_VNNI else set()
    )
    assert all(
        r["ms"] > 0 and r["torch_ms"] is None and r["speedup_vs_torch"] is None for r in records
    )
    with pytest.raises(ValueError, match="threads_list entries must be ints"):
        bench_int8.run_int8_bench(quick=True, threads_list=(0,))
    with pytest.raises(ValueError, match="rounds must be an int >= 1; got 0"):
        bench_int8.run_int8_bench(quick=True, threads_list=(1,), rounds=0)


def test_every_module_accepts_the_same_kernel_choices():
    """MINICOMPRESS_KERNEL is read by the training ops, the CSR and the int8 kernels."""
    from minicompress.kernels import csr, int8
    from minicompress.nn import backend

    assert set(backend.KERNEL_CHOICES) == set(csr.KERNEL_CHOICES) == set(int8.KERNEL_CHOICES)


def test_generic_numba_target_falls_back_to_portable():
    """NUMBA_CPU_NAME=generic (a cache for any x86-64) cannot emit vpdpbusd or tdpbusd:
    auto must pick the portable path, which still gives the reference's numbers."""
    script = (
        "import numpy as np\n"
        "from minicompress.kernels import int8, quantized_linear_reference\n"
        "from minicompress.kernels.reference import quantize_weight_per_channel\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((3, 40), dtype=np.float32)\n"
        "w = rng.standard_normal((40, 20), dtype=np.float32)\n"
        "y = int8.int8_linear(x, int8.pack_int8_linear(w))\n"
        "ref = quantized_linear_reference(x, *quantize_weight_per_channel(w))\n"
        "assert np.allclose(y, ref, rtol=1e-5, atol=1e-6)\n"
        "print(int8.int8_kernel_path())\n"
    )
    env = dict(os.environ, NUMBA_CPU_NAME="generic")
    env.pop("MINICOMPRESS_KERNEL", None)
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "portable"
