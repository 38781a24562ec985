"""int8 GEMM and int8 linear kernels (``kernels/int8.py``, ``kernels/int8_portable.py``,
``kernels/x86/vnni.py``, ``kernels/x86/amx.py``) against the contracts of
``kernels/reference.py``: integers bit for bit, and the layer's floats bit for bit too."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minicompress.kernels import (
    MAX_K_INT32,
    cpu,
    int8,
    int8_gemm_reference,
    quantized_linear_reference,
)
from minicompress.kernels.int8 import (
    PackedInt8Linear,
    int8_gemm,
    int8_kernel_path,
    int8_linear,
    pack_int8_linear,
    pack_quantized_int8_linear,
)
from minicompress.kernels.int8_quant import quantize_rows, round_half_even, row_range
from minicompress.kernels.reference import (
    quantize_rows_uint8,
    quantize_uint8,
    quantize_weight_per_channel,
)
from minicompress.kernels.x86 import amx as amx_module
from minicompress.kernels.x86 import vnni as vnni_module

HERE = cpu.int8_paths_here()
HAS_VNNI = "vnni" in HERE
HAS_AMX = "amx" in HERE
AUTO = cpu.auto_int8_path()
REPO = Path(__file__).resolve().parents[1]
NO_ZP = (np.float32(0.0), np.int32(0))  # dynamic activation ranges, for quantize_rows

HAS_AVX2 = "avx2" in HERE
PATHS = [
    "reference",
    "portable",
    pytest.param("avx2", marks=pytest.mark.skipif(not HAS_AVX2, reason="CPU lacks AVX2")),
    pytest.param("vnni", marks=pytest.mark.skipif(not HAS_VNNI, reason="CPU lacks AVX-512 VNNI")),
    pytest.param("amx", marks=pytest.mark.skipif(not HAS_AMX, reason="no AMX-INT8 tiles here")),
]
FAST_PATHS = PATHS[1:]
FAST_PATHS_HERE = [p for p in HERE if p != "reference"]

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
        if amx_module.use_tiles(m, np.empty(amx_module.weight_shape(k, n), np.int8))
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

ZEN3 = frozenset({"avx", "avx2", "fma", "bmi2"})  # AVX2, no AVX-512
ALDER_LAKE = ZEN3 | cpu.AVX_VNNI  # AVX2 and AVX-VNNI (vpdpbusd on ymm), no AVX-512
ICELAKE = ZEN3 | cpu.AVX512_VNNI
SAPPHIRE_RAPIDS = ICELAKE | cpu.AMX_INT8


@pytest.mark.parametrize(
    "features, tiles, jit, expected",
    [
        (frozenset(), False, True, "portable"),  # generic x86-64, or an ARM CPU
        (frozenset({"avx", "fma"}), False, True, "portable"),  # Sandy Bridge: AVX, no AVX2
        (ZEN3, False, True, "avx2"),
        (ALDER_LAKE, False, True, "avx2"),
        (ZEN3, False, False, "portable"),
        (ICELAKE, False, True, "vnni"),
        (SAPPHIRE_RAPIDS, False, True, "vnni"),  # the OS did not lend the tiles
        (SAPPHIRE_RAPIDS, True, True, "amx"),
        (SAPPHIRE_RAPIDS, True, False, "portable"),  # NUMBA_DISABLE_JIT=1
        (frozenset({"avx512f", "avx512vnni"}), False, True, "portable"),  # no avx512bw
    ],
)
def test_auto_picks_the_fastest_path_each_cpu_runs(features, tiles, jit, expected):
    assert cpu.choose_int8_path(features, jit, tiles) == expected


def test_the_avx2_path_uses_avx_vnni_where_the_cpu_has_it():
    assert cpu.uses_avx_vnni(ALDER_LAKE) and cpu.uses_avx_vnni(ICELAKE | cpu.AVX_VNNI)
    assert not cpu.uses_avx_vnni(ZEN3) and not cpu.uses_avx_vnni(ICELAKE)


def test_explicit_paths_are_refused_with_the_reason(monkeypatch):
    assert cpu.why_not("portable", frozenset(), jit=False) == ""
    assert "avx2" in cpu.why_not("avx2", frozenset({"avx"}))
    assert cpu.why_not("avx2", ZEN3) == ""
    assert "avx512vnni" in cpu.why_not("vnni", ZEN3)
    assert "NUMBA_DISABLE_JIT" in cpu.why_not("vnni", ICELAKE, jit=False)
    assert "tile registers" in cpu.why_not("amx", SAPPHIRE_RAPIDS, tiles=False)
    monkeypatch.setattr(cpu, "target_features", lambda: ZEN3)
    with pytest.raises(ValueError, match="path='vnni' cannot run here: .*avx512vnni"):
        int8_kernel_path("vnni")
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "vnni")
    with pytest.raises(ValueError, match="MINICOMPRESS_KERNEL='vnni' cannot run here"):
        int8_kernel_path()
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "auto")
    assert int8_kernel_path() == "avx2"
    monkeypatch.setattr(cpu, "target_features", lambda: frozenset({"avx"}))
    assert int8_kernel_path() == "portable"


@pytest.mark.parametrize(
    "cpu_name, cpu_features, host, expected",
    [
        (None, None, ICELAKE, ICELAKE),  # Numba passes the host's features
        ("haswell", None, ICELAKE, ICELAKE),  # whatever the CPU name says
        ("haswell", "+avx2,+fma", ICELAKE, frozenset({"avx2", "fma"})),
        ("generic", "", ICELAKE, frozenset()),  # Numba's default for generic
        ("skylake-avx512", "+avx512vnni,+avx2", ZEN3, frozenset({"avx2"})),  # host lacks it
    ],
)
def test_target_features_follow_numba_config(monkeypatch, cpu_name, cpu_features, host, expected):
    monkeypatch.setattr(cpu.numba.config, "CPU_NAME", cpu_name)
    monkeypatch.setattr(cpu.numba.config, "CPU_FEATURES", cpu_features)
    monkeypatch.setattr(cpu, "host_features", lambda: host)
    assert cpu.target_features.__wrapped__() == expected


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


@pytest.mark.skipif(not HAS_AMX, reason="no AMX-INT8 tiles here")
def test_amx_layer_refused_where_the_tiles_are_missing(monkeypatch, rng):
    x, w, bias = random_layer(rng, 130, 64, 40)
    packed = pack_int8_linear(w, bias, path="amx")
    monkeypatch.setattr(cpu, "amx_tiles_granted", lambda: False)
    monkeypatch.setattr(int8, "_KERNELS", {})  # as in a new process
    with pytest.raises(ValueError, match="tile registers"):
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
    packed = amx_module.pack_weight(w_q)
    assert packed.shape == amx_module.weight_shape(70, 33) == (3, 32, 16, 4)
    np.testing.assert_array_equal(vnni_module.unpack_weight(packed, 70, 33), w_q)
    np.testing.assert_array_equal(packed[:, 70 // 4 + 1 :], 0)  # k = 72..127: zeros
    assert packed[0, 17, 0, 2:].tolist() == [0, 0]  # k = 70, 71: zeros


@pytest.mark.skipif(not HAS_VNNI, reason="CPU lacks AVX-512 VNNI")
def test_vnni_layer_refused_on_a_cpu_without_vnni(monkeypatch, rng):
    x, w, bias = random_layer(rng, 2, 8, 5)
    packed = pack_int8_linear(w, bias, path="vnni")  # e.g. packed here, used elsewhere
    monkeypatch.setattr(cpu, "target_features", lambda: ZEN3)
    monkeypatch.setattr(int8, "_KERNELS", {})  # as in a new process
    with pytest.raises(ValueError, match="path='vnni' cannot run here"):
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
    assert quantize_rows(x, q, s, z, 0, 20, *NO_ZP)
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
    quantize_rows(x, q, sc, z, 0, 1, *NO_ZP)
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
    x, w, bias = random_layer(rng, m, k, n)
    y_portable = int8_linear(x, pack_int8_linear(w, bias, path="portable"))
    for path in FAST_PATHS_HERE:
        np.testing.assert_array_equal(
            int8_linear(x, pack_int8_linear(w, bias, path=path)), y_portable, err_msg=path
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


# ----------------------------------------------------------------------------------------
# static activation quantization (a scale and zero point calibrated ahead of time)
# ----------------------------------------------------------------------------------------


def test_quantize_uint8_by_hand():
    # s = 0.5, z = 3: x / s = -2, 0, 0.5, 0.6, 1.5, 2.5, 200, -10  ->  rint (half to even)
    # -2, 0, 0, 1, 2, 2, 200, -10  ->  + 3 and clip to [0, 255]: 1, 3, 3, 4, 5, 5, 203, 0
    x = np.array([-1.0, 0.0, 0.25, 0.3, 0.75, 1.25, 100.0, -5.0], dtype=np.float32)
    q = quantize_uint8(x, np.float32(0.5), 3)
    assert q.dtype == np.uint8
    assert q.tolist() == [1, 3, 3, 4, 5, 5, 203, 0]
    assert quantize_uint8(np.float32([1e3]), np.float32(1.0), 0).tolist() == [255]


def test_static_equals_dynamic_for_the_row_s_own_range(rng):
    """Given a row's own dynamic scale and zero point as static ones, the layer computes the
    same bits: the two modes share everything after the choice of (s, z)."""
    x, w, bias = random_layer(rng, 1, 70, 33)
    _, s_x, z_x = quantize_rows_uint8(x)
    for path in FAST_PATHS_HERE:
        packed = pack_int8_linear(w, bias, path=path)
        dynamic = int8_linear(x, packed)
        static = int8_linear(x, packed, act_scale=float(s_x[0]), act_zero_point=int(z_x[0]))
        np.testing.assert_array_equal(static, dynamic)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_static_linear_matches_reference(path, m, k, n, rng):
    """Every path, bit for bit the reference's floats, with a range calibrated on other
    data: some activations fall outside it (clipped to 0 or 255)."""
    x, w, bias = random_layer(rng, m, k, n)
    calibration = rng.standard_normal((64, k), dtype=np.float32) * np.float32(0.7)
    lo, hi = min(calibration.min(), 0.0), max(calibration.max(), 0.0)
    act_scale = float(np.float32(hi - lo) / np.float32(255.0))
    act_zero_point = int(np.clip(np.rint(-lo / act_scale), 0, 255))
    packed = pack_int8_linear(w, bias, path=path)
    ours = int8_linear(x, packed, act_scale=act_scale, act_zero_point=act_zero_point)
    ref = quantized_linear_reference(
        x, *quantize_weight_per_channel(w), bias, act_scale, act_zero_point
    )
    assert ours.dtype == np.float32 and ours.shape == (m, n)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("path", PATHS)
def test_static_linear_far_outside_the_range(path, rng):
    """|x / s| beyond 2**22 (where the kernels' rounding trick is no longer exact) and x / s
    overflowing to inf (a tiny scale) still clip exactly as the reference does."""
    x, w, bias = random_layer(rng, 4, 40, 20)
    x[0, :4] = [1e30, -1e30, 3e5, -3e5]
    packed = pack_int8_linear(w, bias, path=path)
    w_q, w_scale = quantize_weight_per_channel(w)
    for act_scale, act_zero_point in ((0.01, 128), (1e-38, 7), (np.float32(2.0**-149), 0)):
        ours = int8_linear(x, packed, act_scale=act_scale, act_zero_point=act_zero_point)
        ref = quantized_linear_reference(x, w_q, w_scale, bias, act_scale, act_zero_point)
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("path", PATHS)
def test_static_parameters_are_checked(path, rng):
    x, w, bias = random_layer(rng, 2, 8, 5)
    packed = pack_int8_linear(w, bias, path=path)
    with pytest.raises(ValueError, match="act_scale and act_zero_point go together"):
        int8_linear(x, packed, act_scale=0.1)
    with pytest.raises(ValueError, match="act_scale and act_zero_point go together"):
        int8_linear(x, packed, act_zero_point=3)
    for bad_scale in (0.0, -0.1, np.nan, np.inf, 1e-50, 1e40):
        with pytest.raises(ValueError, match="act_scale must be finite and > 0"):
            int8_linear(x, packed, act_scale=bad_scale, act_zero_point=3)
    with pytest.raises(TypeError, match="act_scale must be a real number; got str"):
        int8_linear(x, packed, act_scale="0.1", act_zero_point=3)
    for bad_zero_point in (-1, 256):
        with pytest.raises(ValueError, match=r"act_zero_point must be in \[0, 255\]"):
            int8_linear(x, packed, act_scale=0.1, act_zero_point=bad_zero_point)
    for bad_type in (3.0, True, np.int64):
        with pytest.raises(TypeError, match="act_zero_point must be an integer"):
            int8_linear(x, packed, act_scale=0.1, act_zero_point=bad_type)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="x must be finite"):
        int8_linear(x, packed, act_scale=0.1, act_zero_point=3)


# ----------------------------------------------------------------------------------------
# non-finite values: one rule on every path (refused, with a ValueError naming the argument)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "m,k,n",
    [(40, 8, 5), (40, 128, 130), (3, 1024, 300), (16, 256, 300), (130, 64, 40), (20, 1024, 1030)],
)
def test_linear_refuses_non_finite_input(path, m, k, n, rng):
    # serial kernel; parallel kernel with M split; parallel kernel with N split (M < 8);
    # on amx, the tiles with M split (130 rows) and N split (20 rows of 1 MB of weights);
    # the reference path too (it returned finite numbers for NaN input)
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
def test_linear_refuses_a_row_whose_range_overflows(path, rng):
    """Finite values whose range max - min overflows float32 would make the row's scale
    inf (and the output NaN): refused on every path, like a non-finite x."""
    x, w, bias = random_layer(rng, 4, 16, 8)
    packed = pack_int8_linear(w, bias, path=path)
    x[2, 3], x[2, 5] = 3e38, -3e38
    with pytest.raises(ValueError, match="x must .*(range|finite)"):
        int8_linear(x, packed)
    x[2, 5] = 0.0  # one side only: the range fits, the layer runs
    y = int8_linear(x, packed)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_packing_refuses_non_finite_weights_scales_and_bias(path, bad, rng):
    """One NaN in a weight column used to quantize that column to garbage (its scale NaN)."""
    _, w, bias = random_layer(rng, 2, 12, 6)
    w_bad = w.copy()
    w_bad[4, 2] = bad
    with pytest.raises(ValueError, match=r"w must be finite; it holds .* at index \(4, 2\)"):
        pack_int8_linear(w_bad, bias, path=path)
    with pytest.raises(ValueError, match="w must be finite"):
        quantize_weight_per_channel(w_bad)
    bias_bad = bias.copy()
    bias_bad[1] = bad
    with pytest.raises(ValueError, match="bias must be finite"):
        pack_int8_linear(w, bias_bad, path=path)
    w_q, w_scale = quantize_weight_per_channel(w)
    w_scale[0] = bad
    with pytest.raises(ValueError, match="w_scale must be finite"):
        pack_quantized_int8_linear(w_q, w_scale, bias, path=path)


@pytest.mark.parametrize("path", PATHS)
def test_a_layer_whose_scale_was_made_non_finite_is_refused(path, rng):
    x, w, bias = random_layer(rng, 3, 12, 6)
    packed = pack_int8_linear(w, bias, path=path)
    for name in ("w_scale", "bias"):
        values = getattr(packed, name).copy()
        values[5] = np.nan
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            int8_linear(x, packed._replace(**{name: values}))


SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3e38, -3e38, 1e6, -1e-7]


@pytest.mark.parametrize("path", PATHS)
def test_a_range_whose_scale_underflows_gets_scale_1(path, rng):
    """(hi - lo) / 255 underflows to 0 in float32 for a range of a few denormals: the row
    is treated as a row of zeros (scale 1, zero point 0), not divided by 0."""
    x, w, bias = random_layer(rng, 3, 10, 6)
    x[1] = 0.0
    x[1, 4] = 1e-45  # the smallest float32: 1e-45 / 255 == 0
    q, s, z = quantize_rows_uint8(x)
    assert s[1] == 1.0 and z[1] == 0 and not q[1].any()
    with np.errstate(divide="raise", invalid="raise"):  # no x / 0 or 0 / 0 in the reference
        ref = quantized_linear_reference(x, *quantize_weight_per_channel(w), bias)
    packed = pack_int8_linear(w, bias, path=path)
    np.testing.assert_array_equal(int8_linear(x, packed), ref)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(0, 9),
    k=st.integers(1, 40),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    specials=st.lists(st.sampled_from(SPECIALS), max_size=3),
    static=st.one_of(st.none(), st.tuples(st.floats(1e-3, 10.0), st.integers(0, 255))),
)
def test_every_path_gives_the_reference_or_a_clear_error(m, k, n, seed, specials, static):
    """Any input: every path raises the ValueError the reference raises, or gives its bits
    (NaN, inf, huge values and ranges that overflow included)."""
    rng = np.random.default_rng(seed)
    x, w, bias = random_layer(rng, m, k, n)
    for value in specials:
        if m:
            x[rng.integers(m), rng.integers(k)] = value
    act = {} if static is None else {"act_scale": static[0], "act_zero_point": static[1]}
    try:
        expected = quantized_linear_reference(x, *quantize_weight_per_channel(w), bias, **act)
    except ValueError as error:
        expected = error
    for path in ["reference", *FAST_PATHS_HERE]:
        packed = pack_int8_linear(w, bias, path=path)
        if isinstance(expected, ValueError):
            with pytest.raises(ValueError, match="x must"):
                int8_linear(x, packed, **act)
        else:
            np.testing.assert_array_equal(int8_linear(x, packed, **act), expected, err_msg=path)


# ----------------------------------------------------------------------------------------
# a packed layer changed after packing is refused on every path
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("k, n", [(70, 33), (768, 64), (131, 256)])
def test_a_layer_whose_k_was_changed_is_refused(path, k, n, rng):
    """``packed._replace(k=k - 1)`` with an x of k - 1 columns was accepted on the VNNI path
    (the layout pads K to a multiple of 4, so the shapes still fitted) and gave wrong
    results: the dropped weight row still counted in col_sum. Now refused on every path;
    so is k - 8 (past one block of 4 k: another shape on the VNNI path, inside the 64-k
    padding of the AMX one) and k + 4 (a block more)."""
    x, w, bias = random_layer(rng, 5, k, n)
    packed = pack_int8_linear(w, bias, path=path)
    for new_k in (k - 1, k - 8, k + 4):
        with pytest.raises(ValueError, match="packed.(weight|k)"):
            int8_linear(
                np.ascontiguousarray(x[:, :1].repeat(new_k, axis=1)), packed._replace(k=new_k)
            )


@pytest.mark.parametrize("path", PATHS)
def test_a_layer_whose_n_was_changed_is_refused(path, rng):
    x, w, bias = random_layer(rng, 5, 40, 37)
    packed = pack_int8_linear(w, bias, path=path)
    with pytest.raises(ValueError, match="packed.(weight|col_sum|w_scale|bias)"):
        int8_linear(x, packed._replace(n=36))  # the vectors keep 37 entries
    shrunk = packed._replace(
        n=36, col_sum=packed.col_sum[:36].copy(), w_scale=packed.w_scale[:36].copy(),
        bias=packed.bias[:36].copy(),
    )  # fmt: skip
    with pytest.raises(ValueError, match="packed.weight"):
        int8_linear(x, shrunk)  # column 36 still holds weights: not a 36-column layer


@pytest.mark.parametrize("path", PATHS)
def test_m_zero_and_leading_axes(path, rng):
    """x [..., K] gives y [..., N]: the rows of all leading axes are one product."""
    x, w, bias = random_layer(rng, 6, 20, 9)
    packed = pack_int8_linear(w, bias, path=path)
    y = int8_linear(x, packed)  # [6, 9]
    np.testing.assert_array_equal(int8_linear(x.reshape(2, 3, 20), packed), y.reshape(2, 3, 9))
    np.testing.assert_array_equal(int8_linear(x[0], packed), y[0])  # [K] -> [N]
    assert int8_linear(x[:0], packed).shape == (0, 9)
    assert int8_linear(x[:0].reshape(0, 4, 20), packed).shape == (0, 4, 9)
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must equal the layer's K=20"):
        int8_linear(x.reshape(2, 3, 20)[..., :19], packed)
    with pytest.raises(ValueError, match="0-d"):
        int8_linear(np.ones((), np.float32), packed)


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
    w = vnni_module.pack_weight(np.zeros((8, 64), np.int8))
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
        "from minicompress.kernels import cpu, int8 as g, int8_portable\n"
        "x = np.ones((2, 512), np.float32); w = np.ones((512, 1024), np.float32)\n"
        "here = cpu.int8_paths_here()\n"
        "path = 'vnni' if 'vnni' in here else 'portable'\n"
        "g.int8_linear(x, g.pack_int8_linear(w, None, path=path))\n"
        "ks = [int8_portable.linear_kernel]\n"
        "if path == 'vnni':\n"
        "    from minicompress.kernels.x86 import vnni\n"
        "    ks = [vnni.linear_kernel]\n"
        "if 'amx' in here:\n"
        "    from minicompress.kernels.x86 import amx\n"
        "    g.int8_linear(np.ones((130, 512), np.float32), g.pack_int8_linear(w, None, 'amx'))\n"
        "    ks.append(amx.linear_kernel)\n"
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
    """With NUMBA_DISABLE_JIT=1 (which the README offers for stepping through kernels) auto
    picks the portable path, whose kernels are plain Python and still exact; the x86
    paths, LLVM IR written by hand, are refused with the reason."""
    script = (
        "import numpy as np\n"
        "import pytest\n"
        "from minicompress.kernels import int8 as g\n"
        "from minicompress.kernels import reference as r\n"
        "assert g.int8_kernel_path() == 'portable', g.int8_kernel_path()\n"
        "for x86_path in ('vnni', 'amx'):\n"
        "    with pytest.raises(ValueError, match='NUMBA_DISABLE_JIT'):\n"
        "        g.int8_kernel_path(x86_path)\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.integers(0, 256, (3, 9), dtype=np.uint8)\n"
        "b = rng.integers(-128, 128, (9, 5), dtype=np.int8)\n"
        "assert np.array_equal(g.int8_gemm(a, b, path='portable'), r.int8_gemm_reference(a, b))\n"
        "x = rng.standard_normal((9, 9), dtype=np.float32)\n"
        "w = rng.standard_normal((9, 5), dtype=np.float32)\n"
        "packed = g.pack_int8_linear(w)\n"
        "assert packed.path == 'portable'\n"
        "ref = r.quantized_linear_reference(x, *r.quantize_weight_per_channel(w))\n"
        "assert np.array_equal(g.int8_linear(x, packed), ref)\n"
        "x[0, 3] = np.nan\n"
        "with pytest.raises(ValueError, match='x must be finite'):\n"
        "    g.int8_linear(x, packed)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    env.pop("MINICOMPRESS_KERNEL", None)
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


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


@pytest.mark.parametrize("path", FAST_PATHS)
def test_arrays_with_an_equal_but_distinct_dtype_take_the_fast_path(path, rng, monkeypatch):
    """A bias and scales whose float32 dtype is equal to NumPy's but not the same object (as
    arrays read from a file may be) are packed with NumPy's own: ``int8_linear`` then runs
    the kernel without its slow re-check, and gives the same answer."""
    other = copy.deepcopy(np.dtype(np.float32))
    assert other == np.float32 and other is not np.dtype(np.float32)
    w_q = rng.integers(-127, 128, (24, 20)).astype(np.int8)
    w_scale = rng.uniform(0.01, 0.1, 20).astype(other)
    bias = rng.standard_normal(20).astype(other)
    packed = pack_quantized_int8_linear(w_q, w_scale, bias, path)
    assert int8._arrays_are_plain(packed)
    x = rng.standard_normal((5, 24)).astype(np.float32)
    int8_linear(x, packed)  # the first call of a path loads its kernels (the slow path)
    checks = []
    monkeypatch.setattr(int8, "_check_packed", lambda p: checks.append(p))
    y = int8_linear(x, packed)
    assert checks == []  # the slow path did not run
    ref = quantized_linear_reference(x, w_q, w_scale.astype(np.float32), bias.astype(np.float32))
    np.testing.assert_array_equal(y, ref)
