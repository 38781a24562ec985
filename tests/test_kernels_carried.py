"""int8 activations carried between layers and the fused epilogue (``kernels/carried.py``,
``kernels/epilogue.py``, ``int8_fused.int8_linear_fused``, the driver's new steps in
``parallel.py``) against the unfused steps, bit for bit, and against NumPy references
composed of the package's own: ``quantized_linear_reference``, ``nn.ops.gelu_forward``,
``quantize_rows_uint8``."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from gradcheck import assert_close

from minicompress.deploy.ops import gelu_forward_infer
from minicompress.kernels import cpu, int8
from minicompress.kernels.carried import (
    CodedArray,
    RowCodes,
    codes_of,
    empty_row_codes,
    row_codes,
    with_codes,
)
from minicompress.kernels.int8 import int8_linear, pack_int8_linear
from minicompress.kernels.int8_fused import int8_linear_fused
from minicompress.kernels.reference import quantize_rows_uint8, quantized_linear_reference
from minicompress.nn.ops import gelu_forward

HERE = cpu.int8_paths_here()
KERNEL_PATHS = [
    "portable",
    pytest.param("avx2", marks=pytest.mark.skipif("avx2" not in HERE, reason="CPU lacks AVX2")),
    pytest.param("vnni", marks=pytest.mark.skipif("vnni" not in HERE, reason="no AVX-512 VNNI")),
    pytest.param("amx", marks=pytest.mark.skipif("amx" not in HERE, reason="no AMX-INT8 tiles")),
]
GELU = {"gelu_erf": "none", "gelu_tanh": "tanh"}  # the kernels' names -> the model's cfg.gelu
# (M, K, N): one row; few rows (columns shared); the VNNI path's split of N for large weights;
# many rows not a multiple of the epilogue's 64-row blocks; K not a multiple of 64
SHAPES = [(1, 64, 48), (5, 128, 200), (24, 256, 2048), (150, 128, 96), (70, 100, 40)]


def _layer(rng, k, n, path):
    w = (rng.standard_normal((k, n)) * 0.1).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return pack_int8_linear(w, b, path=path)


def _unfused(x, packed, activation):
    """The steps one by one: the layer, then the inference ops' GELU, then the codes."""
    y = int8_linear(x, packed)
    if activation != "none":
        y = gelu_forward_infer(y, GELU[activation])[0]
    return y, quantize_rows_uint8(y)


def _assert_codes_equal(codes: RowCodes, expected: tuple, k: int):
    q, scale, zero_point = expected
    m = q.shape[0]
    assert codes.codes.shape[0] >= m and codes.codes.shape[1] % 64 == 0
    np.testing.assert_array_equal(codes.codes[:m, :k], q)
    assert not codes.codes[:m, k:].any()  # the padding of K is zero
    np.testing.assert_array_equal(codes.scale, scale)
    np.testing.assert_array_equal(codes.zero_point, zero_point)


@pytest.mark.parametrize("path", KERNEL_PATHS)
@pytest.mark.parametrize("activation", ["none", "gelu_erf", "gelu_tanh"])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_equals_unfused_steps_bit_for_bit(rng, path, activation, threads):
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for m, k, n in SHAPES:
            x = (rng.standard_normal((m, k)) * 2).astype(np.float32)
            packed = _layer(rng, k, n, path)
            y_ref, codes_ref = _unfused(x, packed, activation)
            for codes_in in (None, row_codes(x)):
                y, codes = int8_linear_fused(x, packed, codes_in, activation, True)
                np.testing.assert_array_equal(y, y_ref)
                _assert_codes_equal(codes, codes_ref, n)
            y_only, none = int8_linear_fused(x, packed, None, activation)
            np.testing.assert_array_equal(y_only, y_ref)
            assert none is None
    finally:
        numba.set_num_threads(old)


@pytest.fixture(params=[True, False], ids=["avx-vnni", "vpmaddubsw"])
def avx2_form(request, monkeypatch):
    monkeypatch.setattr(cpu, "uses_avx_vnni", lambda features: request.param)
    monkeypatch.setattr(int8, "_KERNELS", {})  # the layer kernels are chosen anew


@pytest.mark.skipif("avx2" not in HERE, reason="CPU lacks AVX2")
def test_fused_on_both_avx2_forms(rng, avx2_form):
    for m, k, n in SHAPES[1:4]:
        x = rng.standard_normal((m, k)).astype(np.float32)
        packed = _layer(rng, k, n, "avx2")
        y_ref, codes_ref = _unfused(x, packed, "gelu_erf")
        y, codes = int8_linear_fused(x, packed, row_codes(x), "gelu_erf", True)
        np.testing.assert_array_equal(y, y_ref)
        _assert_codes_equal(codes, codes_ref, n)


@pytest.mark.parametrize("path", ["reference", *KERNEL_PATHS])
@pytest.mark.parametrize("activation", ["none", "gelu_erf", "gelu_tanh"])
def test_fused_against_the_numpy_reference(rng, path, activation):
    """The NumPy layer, NumPy's GELU in float64 (``nn.ops.gelu_forward``: SciPy's erf) and
    the NumPy quantizer, against the fused layer (GELU in float32, ``fastmath``): y to a
    few ulps; codes equal except where y lands within that of a rounding boundary."""
    m, k, n = 40, 128, 96
    x = rng.standard_normal((m, k)).astype(np.float32)
    packed = _layer(rng, k, n, path)
    y_ref = quantized_linear_reference(x, packed.w_q(), packed.w_scale, packed.bias)
    if activation != "none":
        y64, _ = gelu_forward(y_ref.astype(np.float64), GELU[activation])
        y_ref = y64.astype(np.float32)
    q_ref, s_ref, z_ref = quantize_rows_uint8(y_ref)
    y, codes = int8_linear_fused(x, packed, None, activation, True)
    assert_close(y, y_ref, rtol=1e-5, atol=2e-6, name=f"y, {activation}")
    assert_close(codes.scale, s_ref, rtol=1e-5, atol=0, name="scale")
    diff = np.abs(codes.codes[:m, :n].astype(int) - q_ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert np.abs(codes.zero_point - z_ref).max() <= 1


@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_the_kernel_reads_the_carried_codes_not_x(rng, path):
    """Codes made from another activation give that activation's product: the kernel did
    not quantize x itself."""
    m, k, n = 20, 128, 64
    x = rng.standard_normal((m, k)).astype(np.float32)
    other = rng.standard_normal((m, k)).astype(np.float32)
    packed = _layer(rng, k, n, path)
    y, _ = int8_linear_fused(x, packed, row_codes(other))
    np.testing.assert_array_equal(y, int8_linear(other, packed))
    assert not np.array_equal(y, int8_linear(x, packed))


def test_codes_of_another_width_are_not_used(rng):
    """K = 100 on the VNNI and AVX2 layouts reads rows of 100 codes; a RowCodes is padded to
    128: the kernel quantizes x itself (same result)."""
    x = rng.standard_normal((20, 100)).astype(np.float32)
    other = rng.standard_normal((20, 100)).astype(np.float32)
    for path in [p for p in ("avx2", "vnni") if p in HERE]:
        packed = _layer(rng, 100, 40, path)
        y, _ = int8_linear_fused(x, packed, row_codes(other))
        np.testing.assert_array_equal(y, int8_linear(x, packed))


def test_row_codes_are_quantize_rows_uint8_padded(rng):
    for m, k in [(1, 5), (33, 64), (64, 130)]:
        x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
        x[0] = 0.0  # a row of zeros: scale 1, zero point 0
        codes = row_codes(x)
        assert codes.codes.shape == (-(-m // 32) * 32, -(-k // 64) * 64)
        _assert_codes_equal(codes, quantize_rows_uint8(x), k)
    with pytest.raises(ValueError, match="finite"):
        row_codes(np.array([[1.0, np.nan]], np.float32))


def test_coded_array_carries_codes_only_on_itself(rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    codes = row_codes(x)
    coded = with_codes(x, codes)
    assert codes_of(coded) is codes and np.shares_memory(coded, x)
    for derived in (coded.reshape(2, 16), coded[1:], coded + 1, coded * 1, coded.T, coded.copy()):
        assert codes_of(derived) is None  # its values may differ from the coded ones
    assert codes_of(x) is None and type(np.asarray(coded)) is np.ndarray
    assert isinstance(coded, CodedArray)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(activation="relu"), ValueError, "activation must be one of none, gelu_tanh"),
        (dict(activation=None), ValueError, "activation must be one of"),
        (dict(codes=(1, 2, 3)), TypeError, "codes must be a RowCodes or None; got tuple"),
        (dict(codes="wrong shape"), ValueError, r"codes.scale and codes.zero_point must have"),
        (dict(codes="too few rows"), ValueError, r"codes.codes is \(0, 64\)"),
    ],
)
def test_bad_input_is_refused_by_name(rng, kwargs, error, match):
    x = rng.standard_normal((6, 64)).astype(np.float32)
    packed = _layer(rng, 64, 16, "portable")
    if kwargs.get("codes") == "wrong shape":
        good = row_codes(x)
        kwargs["codes"] = RowCodes(good.codes, good.scale[:3], good.zero_point)
    elif kwargs.get("codes") == "too few rows":
        kwargs["codes"] = RowCodes(*empty_row_codes(0, 64)[:1], *row_codes(x)[1:])
    with pytest.raises(error, match=match):
        int8_linear_fused(x, packed, **kwargs)


def test_non_finite_x_is_refused_on_the_fused_path(rng):
    x = rng.standard_normal((20, 64)).astype(np.float32)
    x[3, 5] = np.inf
    for path in ["portable", *(p for p in ("vnni",) if p in HERE)]:
        with pytest.raises(ValueError, match="x must be finite"):
            int8_linear_fused(x, _layer(rng, 64, 32, path), None, "gelu_erf", True)
