"""The AVX2 int8 path (``kernels/x86/avx2.py``) in both its forms, vpmaddubsw + vpmaddwd and
AVX-VNNI's vpdpbusd on ymm registers, against ``kernels/reference.py``: integers and the
layer's floats bit for bit, on odd shapes, extreme values and the pairs that would saturate
a plain vpmaddubsw. (The selection of the path per CPU is in ``test_kernels_int8.py``.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from minicompress.kernels import cpu, int8
from minicompress.kernels.int8 import (
    int8_gemm,
    int8_linear,
    pack_int8_linear,
    pack_quantized_int8_linear,
)
from minicompress.kernels.reference import (
    int8_gemm_reference,
    quantize_weight_per_channel,
    quantized_linear_reference,
)
from minicompress.kernels.x86 import avx2

REPO = Path(__file__).resolve().parents[1]
HERE = cpu.target_features()
NO_AVX2 = pytest.mark.skipif(not cpu.AVX2 <= HERE, reason="CPU lacks AVX2")
NO_AVX_VNNI = pytest.mark.skipif(not cpu.AVX_VNNI <= HERE, reason="CPU lacks AVX-VNNI")
FORMS = [
    pytest.param(False, id="vpmaddubsw", marks=NO_AVX2),
    pytest.param(True, id="vpdpbusd-ymm", marks=NO_AVX_VNNI),
]
# (M, K, N): M = 1, K not a multiple of 4, N not a multiple of 8 or 16, the tile edges
# (MR = 4 rows, NV = 2 vectors of 8 columns, ROW_NV = 4 for one row), both thread splits
SHAPES = [
    (1, 1, 1),
    (1, 7, 33),
    (1, 768, 3072),
    (3, 5, 17),
    (4, 64, 16),
    (5, 131, 70),
    (9, 36, 130),
    (33, 1024, 1030),
    (67, 257, 129),
    (130, 200, 70),
]


@pytest.fixture
def form(request, monkeypatch):
    """Run the avx2 path in one form: AVX-VNNI (True) or vpmaddubsw (False)."""
    monkeypatch.setattr(cpu, "uses_avx_vnni", lambda features: request.param)
    monkeypatch.setattr(int8, "_KERNELS", {})  # the layer kernels are chosen anew
    return request.param


def random_layer(rng, m, k, n):
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
    return x, w, rng.standard_normal(n, dtype=np.float32)


def maddubs_without_care(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What a plain ``vpmaddwd(vpmaddubsw(a, b), 1)`` gives for one row a (uint8 [K]) and
    b (int8 [K, N]), K a multiple of 4, as the instructions define it: neighbouring products
    summed into an int16 *with saturation*, then pairs of those into int32. The reference
    to show that a case really saturates."""
    products = a.astype(np.int64)[:, None] * b.astype(np.int64)  # [K, N]
    pairs = np.clip(products[0::2] + products[1::2], -32768, 32767)  # [K/2, N] int16
    return pairs.sum(axis=0)  # [N]


@pytest.mark.parametrize("form", FORMS, indirect=True)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_gemm_and_layer_match_the_reference(form, m, k, n, rng):
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-127, 128, (k, n), dtype=np.int8)
    np.testing.assert_array_equal(int8_gemm(a, b, path="avx2"), int8_gemm_reference(a, b))
    x, w, bias = random_layer(rng, m, k, n)
    packed = pack_int8_linear(w, bias, path="avx2")
    assert packed.path == "avx2" and packed.weight.shape == (-(-n // 8), -(-k // 4), 8, 4)
    w_q, w_scale = quantize_weight_per_channel(w)
    np.testing.assert_array_equal(
        int8_linear(x, packed), quantized_linear_reference(x, w_q, w_scale, bias)
    )
    np.testing.assert_array_equal(  # the static activation variant
        int8_linear(x, packed, act_scale=0.03, act_zero_point=101),
        quantized_linear_reference(x, w_q, w_scale, bias, 0.03, 101),
    )


@pytest.mark.parametrize("form", FORMS, indirect=True)
@pytest.mark.parametrize("w_value", [127, -127])
def test_extreme_values_do_not_saturate(form, w_value):
    """Activations 255 and weights all 127 (or -127): every pair of products is 64,770 in
    size, which a plain vpmaddubsw saturates to 32,767; the path's centred activations
    keep each pair within 2 * 128 * 127."""
    m, k, n = 5, 1027, 35  # odd K (padded to 1028 with zeros), N not a multiple of 8
    a = np.full((m, k), 255, dtype=np.uint8)
    b = np.full((k, n), w_value, dtype=np.int8)
    c = int8_gemm(a, b, path="avx2")
    assert c[0, 0] == 255 * w_value * k  # worked by hand
    np.testing.assert_array_equal(c, int8_gemm_reference(a, b))
    # the same case through a plain vpmaddubsw is wrong: the test can fail
    plain = maddubs_without_care(np.pad(a[0], (0, 1)), np.pad(b, ((0, 1), (0, 0))))
    assert plain[0] != c[0, 0]
    # and the layer, with weights quantized to 127 / -127 and x at the top of its range
    w_q = b
    w_scale = np.full(n, 0.01, dtype=np.float32)
    x = np.full((m, k), 3.0, dtype=np.float32)  # range [0, 3]: every code 255
    x[:, 0] = 0.0
    packed = pack_quantized_int8_linear(w_q, w_scale, None, path="avx2")
    np.testing.assert_array_equal(
        int8_linear(x, packed), quantized_linear_reference(x, w_q, w_scale)
    )


@pytest.mark.parametrize("form", FORMS, indirect=True)
def test_the_saturating_pairs_of_random_data(form, rng):
    """Random codes in [200, 255] and weights of one sign in [100, 127]: most pairs saturate
    a plain vpmaddubsw (the emulation above says how many), none changes our sums."""
    k, n = 64, 24
    a = rng.integers(200, 256, (1, k), dtype=np.uint8)
    b = rng.integers(100, 128, (k, n), dtype=np.int8) * np.int8(rng.choice([-1, 1], n))
    exact = int8_gemm_reference(a, b)[0]
    assert np.count_nonzero(maddubs_without_care(a[0], b) != exact) == n  # all columns off
    np.testing.assert_array_equal(int8_gemm(a, b, path="avx2")[0], exact)


def test_minus_128_is_refused_or_avoided_on_the_vpmaddubsw_form(monkeypatch, rng):
    """vpsignb cannot negate -128: the vpmaddubsw form takes weights in [-127, 127] only.
    Asked for explicitly, a layer holding -128 is refused; chosen by auto (an AVX2 CPU),
    it is packed for the portable path; the raw GEMM runs the portable kernel. All exact."""
    monkeypatch.setattr(cpu, "uses_avx_vnni", lambda features: False)
    monkeypatch.setattr(int8, "_KERNELS", {})
    w_q = rng.integers(-128, 128, (40, 24), dtype=np.int8)
    w_q[3, 5] = -128
    w_scale = np.full(24, 0.02, dtype=np.float32)
    with pytest.raises(ValueError, match="w_q holds -128.*avx2 path"):
        pack_quantized_int8_linear(w_q, w_scale, path="avx2")
    monkeypatch.setattr(cpu, "target_features", lambda: frozenset({"avx", "avx2"}))
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "auto")
    packed = pack_quantized_int8_linear(w_q, w_scale)
    assert packed.path == "portable"
    assert pack_quantized_int8_linear(np.clip(w_q, -127, 127), w_scale).path == "avx2"
    x = rng.standard_normal((3, 40), dtype=np.float32)
    np.testing.assert_array_equal(
        int8_linear(x, packed), quantized_linear_reference(x, w_q, w_scale)
    )
    a = rng.integers(0, 256, (3, 40), dtype=np.uint8)
    np.testing.assert_array_equal(int8_gemm(a, w_q, path="avx2"), int8_gemm_reference(a, w_q))


@pytest.mark.skipif(not cpu.AVX_VNNI <= HERE, reason="no AVX-VNNI")
def test_avx_vnni_form_takes_minus_128(monkeypatch, rng):
    monkeypatch.setattr(int8, "_KERNELS", {})
    w_q = np.full((9, 10), -128, dtype=np.int8)
    packed = pack_quantized_int8_linear(w_q, np.ones(10, np.float32), path="avx2")
    assert packed.path == "avx2"
    x = rng.standard_normal((2, 9), dtype=np.float32)
    np.testing.assert_array_equal(
        int8_linear(x, packed), quantized_linear_reference(x, w_q, np.ones(10, np.float32))
    )


@pytest.mark.parametrize("form_code, expected, absent", [
    (avx2.MADD, ("vpmaddubsw", "vpsignb"), ("vpdpbusd",)),
    (avx2.AVX_VNNI, ("vpdpbusd",), ("vpmaddubsw",)),
])  # fmt: skip
def test_the_tile_emits_the_instructions_of_its_form(form_code, expected, absent):
    """(Where the host has VNNI, LLVM fuses vpmaddwd and the add that follows into
    vpdpwssd, the same exact sum: either is accepted.)"""
    if form_code == avx2.AVX_VNNI and not cpu.AVX_VNNI <= HERE:
        pytest.skip("no AVX-VNNI")
    fresh = njit(avx2._tile.py_func)  # not cached, so the assembly can be inspected
    a = np.zeros((4, 16), np.uint8)  # K = 8: the codes, or x8 then |x8|
    w = avx2.pack_weight(np.zeros((8, 16), np.int8))
    fresh(form_code, 4, 2, a, 0, w, 0, np.zeros(16, np.int32), np.zeros((4, 16), np.int32), 0, 0)
    asm = fresh.inspect_asm(fresh.signatures[0])
    for name in expected:
        assert name in asm, name
    for name in absent:
        assert name not in asm, name
    if form_code == avx2.MADD:
        assert "vpmaddwd" in asm or "vpdpwssd" in asm
    assert "ymm" in asm


@pytest.mark.slow
def test_on_a_haswell_target_auto_runs_the_vpmaddubsw_form():
    """Compiled for an AVX2 CPU without AVX-512 or AVX-VNNI (NUMBA_CPU_NAME=haswell,
    NUMBA_CPU_FEATURES=+avx2): auto picks avx2 in its vpmaddubsw form, which still gives
    the reference's bits, and no 512-bit register is used."""
    script = textwrap.dedent(
        """
        import numpy as np
        from numba import njit
        from minicompress.kernels import cpu, int8, reference as r
        from minicompress.kernels.x86 import avx2
        assert int8.int8_kernel_path() == "avx2", int8.int8_kernel_path()
        assert not cpu.uses_avx_vnni(cpu.target_features())
        rng = np.random.default_rng(0)
        for m, k, n in ((1, 7, 33), (9, 131, 70), (40, 256, 300)):
            x = rng.standard_normal((m, k), dtype=np.float32)
            w = rng.standard_normal((k, n), dtype=np.float32)
            packed = int8.pack_int8_linear(w)
            assert packed.path == "avx2"
            ref = r.quantized_linear_reference(x, *r.quantize_weight_per_channel(w))
            assert np.array_equal(int8.int8_linear(x, packed), ref), (m, k, n)
        fresh = njit(avx2._tile.py_func)
        a, w = np.zeros((4, 16), np.uint8), avx2.pack_weight(np.zeros((8, 16), np.int8))
        c, col_sum = np.zeros((4, 16), np.int32), np.zeros(16, np.int32)
        fresh(avx2.MADD, 4, 2, a, 0, w, 0, col_sum, c, 0, 0)
        asm = fresh.inspect_asm(fresh.signatures[0])
        assert "vpmaddubsw" in asm and "zmm" not in asm and "vpdpbusd" not in asm
        print("ok")
        """
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("MINICOMPRESS_KERNEL", "NUMBA_DISABLE_JIT")
    }
    env.update(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="+avx2")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
