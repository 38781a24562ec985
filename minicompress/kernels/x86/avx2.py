"""The int8 layer on AVX2 CPUs (most laptops: Intel before Ice Lake and its consumer CPUs
without AVX-512, AMD before Zen 4): 32 byte products per instruction, in two forms.

Without AVX-512 VNNI, int8 libraries multiply with two AVX2 instructions:

    vpmaddubsw p, a, b    32 unsigned bytes of a times 32 signed bytes of b; each pair of
                          neighbouring products summed into an int16, with *saturation*:
                          p[i] = sat16(a[2i] b[2i] + a[2i+1] b[2i+1])
    vpmaddwd   d, p, one  pairs of those int16 summed into int32: d[j] = p[2j] + p[2j+1]

so one int32 lane receives a[4j..4j+3] . b[4j..4j+3], like one lane of ``vpdpbusd``, and
the weights use the k4 layout of ``layout.py`` with 8 columns per block (one ymm register:
8 columns x 4 k). The catch is the saturation: an activation code up to 255 times a weight
up to 127 is 32,385, and two of them, 64,770, do not fit an int16. (PyTorch's answer is
``reduce_range``: 7-bit activations, another quantization than the reference's.) Here the
ranges are chosen so that no pair can saturate, and the sums stay exact:

- the activations are centred, x8 = q - 128 (a signed byte in [-128, 127]), so that
  sum_k q w = sum_k x8 w + 128 sum_k w, and the second sum is the layer's ``col_sum``;
- each product x8 * w is formed as |x8| * (w * sign(x8)): ``vpabsb`` gives |x8| in
  [0, 128], the unsigned operand; ``vpsignb`` gives w * sign(x8), in [-127, 127] for a
  weight in [-127, 127], the signed operand;
- a pair is then at most 2 * 128 * 127 = 32,512 < 32,767 in size: never saturated.

The price: one ``vpsignb`` per ``vpmaddubsw``, a pass over the quantized rows that makes x8
and |x8| once per call (``prepare``: measured 1.4x faster than a ``vpxor`` and a ``vpabsb``
per row and 4 k in the micro-kernel), and weights in [-127, 127]:
``quantize_weight_per_channel`` never gives -128, and a layer holding -128 is refused on this
form (``exact_for``). Where the CPU has AVX-VNNI
(Intel Alder Lake and later: ``vpdpbusd`` on ymm registers, the 256-bit form of AVX-512
VNNI's instruction, no saturation), the same layout and tiles use it instead, one
instruction per 32 products (``cpu.uses_avx_vnni``).

The micro-kernel keeps a register tile of MR rows x NV ymm vectors (8 int32 columns each)
of accumulators for the whole K loop (AVX2 has 16 ymm registers: 8 accumulators, 2 weight
vectors, the activations, their absolute values, the constant of ones and the temporaries),
then dequantizes in registers (``vnni.emit_dequantize``, the float32 operations of
``int8_quant.dequantize_tile`` in the same order). The layer kernel is ``parallel.run_layer``
with this module's steps, registered as the paths ``"avx2"`` (vpmaddubsw) and
``"avx2-vnni"`` (vpdpbusd): both are the public path ``avx2``.
"""

from __future__ import annotations

import types as pytypes

import numpy as np
from llvmlite import ir
from numba import literally, njit, prange, types
from numba.extending import intrinsic

from minicompress.kernels import cpu, parallel
from minicompress.kernels.int8_quant import BAD_SHAPES, BAD_VALUES, OK, dequantize_tile
from minicompress.kernels.x86.layout import k4_shape, pack_k4, padding_is_zero, unpack_k4
from minicompress.kernels.x86.simd import splat
from minicompress.kernels.x86.vnni import (
    MIN_ROWS_SPLIT_M,
    SPLIT_N_MAX_ROWS,
    SPLIT_N_MIN_WEIGHT_BYTES,
    _byte_ptr,
    _const,
    emit_dequantize,
)

LANES = 8  # int32 lanes of a ymm register: output columns per block of the packed weights
MR = 4  # rows of a register tile
NV = 2  # ymm vectors (8 int32 columns each) per row of a tile
ROW_NV = 4  # vectors per tile of a single row (M = 1: nothing to reuse from registers)
M_CHUNK = 64  # rows per parallel work item of the GEMM (a multiple of MR)
MADD, AVX_VNNI = 0, 1  # the two forms of the inner product (module docstring)
_NO_SCALE, _NO_ZP = parallel.NO_SCALE, parallel.NO_ZERO_POINT  # per-row activation ranges

_I8X32 = ir.VectorType(ir.IntType(8), 32)
_I16X16 = ir.VectorType(ir.IntType(16), 16)
_I32X8 = ir.VectorType(ir.IntType(32), 8)
_F32X8 = ir.VectorType(ir.FloatType(), 8)
_I32 = ir.IntType(32)


# ----------------------------------------------------------------------------------------
# packing
# ----------------------------------------------------------------------------------------


def pack_weight(w_q: np.ndarray) -> np.ndarray:
    """Pack int8 weights for the AVX2 micro-kernel: ``layout.pack_k4`` with 8 columns per
    block (one ymm register holds 8 columns x 4 k).

    w_q: int8 [K, N]  ->  int8 [ceil(N/8), ceil(K/4), 8, 4], C-contiguous, 64-byte aligned.
    """
    return pack_k4(w_q, LANES)


@njit(cache=True, nogil=True)
def weight_shape(k, n):
    """The shape ``pack_weight`` gives a [K, N] weight: (ceil(N/8), ceil(K/4), 8, 4)."""
    return k4_shape(k, n, LANES, 4)


def unpack_weight(packed: np.ndarray, k: int, n: int) -> np.ndarray:
    """Inverse of ``pack_weight``: -> int8 [K, N]."""
    return unpack_k4(packed, k, n)


def exact_for(w_q: np.ndarray) -> bool:
    """Whether this CPU's form of the path multiplies these int8 weights exactly: always
    with AVX-VNNI; with vpmaddubsw, only weights in [-127, 127] (module docstring)."""
    return cpu.uses_avx_vnni(cpu.target_features()) or not bool((w_q == -128).any())


# ----------------------------------------------------------------------------------------
# the micro-kernel, written in LLVM IR
# ----------------------------------------------------------------------------------------


def _declare(module, name, ret, args):
    f = module.globals.get(name)
    return f if f is not None else ir.Function(module, ir.FunctionType(ret, args), name)


def _emit_k_loop(builder, form, n_rows, n_vecs, a_addr, lda, b_addr, b_stride, kq):
    """Emit the K loop of an n_rows x (8 n_vecs) tile; return its n_rows * n_vecs int32x8
    accumulators (row-major), zeros when kq == 0. For each 4 k (one int32 of a row,
    broadcast to the 8 lanes) and each weight vector b[v, kk] (8 columns x 4 k):

      AVX_VNNI: acc += vpdpbusd(q, b)             (a row: the codes q, 4 kq bytes)
      MADD:     acc += vpmaddwd(vpmaddubsw(u, sign(b, x8)), 1)
                (a row: x8 = q - 128 in its first 4 kq bytes, u = |x8| in the next 4 kq;
                sum_k x8 w, to which the caller adds 128 col_sum)
    """
    module = builder.module
    zero = ir.Constant(_I32X8, None)
    entry = builder.block
    loop = builder.append_basic_block("avx2.kloop")
    done = builder.append_basic_block("avx2.done")
    builder.cbranch(builder.icmp_signed(">", kq, _const(0)), loop, done)

    builder.position_at_end(loop)
    kk = builder.phi(ir.IntType(64))
    acc = [builder.phi(_I32X8) for _ in range(n_rows * n_vecs)]
    b_off = builder.mul(kk, _const(32))
    b_vec = []
    for v in range(n_vecs):
        off = builder.add(b_off, builder.mul(b_stride, _const(v)))
        b_vec.append(builder.load(_byte_ptr(builder, b_addr, off, _I32X8), align=1))
    a_off = builder.mul(kk, _const(4))
    new = []
    if form == AVX_VNNI:
        dpbusd = _declare(module, "llvm.x86.avx512.vpdpbusd.256", _I32X8, [_I32X8] * 3)
    else:
        maddubs = _declare(module, "llvm.x86.avx2.pmadd.ub.sw", _I16X16, [_I8X32, _I8X32])
        maddwd = _declare(module, "llvm.x86.avx2.pmadd.wd", _I32X8, [_I16X16, _I16X16])
        sign = _declare(module, "llvm.x86.avx2.psign.b", _I8X32, [_I8X32, _I8X32])
        ones = ir.Constant(_I16X16, [1] * 16)
        b_bytes = [builder.bitcast(b, _I8X32) for b in b_vec]
    for r in range(n_rows):
        row_off = builder.add(a_off, builder.mul(lda, _const(r)))
        four_bytes = builder.load(_byte_ptr(builder, a_addr, row_off, _I32), align=1)
        a_vec = splat(builder, four_bytes, _I32X8)
        if form == AVX_VNNI:
            for v in range(n_vecs):
                new.append(builder.call(dpbusd, [acc[r * n_vecs + v], a_vec, b_vec[v]]))
            continue
        x8 = builder.bitcast(a_vec, _I8X32)  # q - 128, signed
        u_off = builder.add(row_off, builder.mul(kq, _const(4)))  # |x8|, 4 kq bytes further
        u_bytes = builder.load(_byte_ptr(builder, a_addr, u_off, _I32), align=1)
        magnitude = builder.bitcast(splat(builder, u_bytes, _I32X8), _I8X32)  # |x8|, [0, 128]
        for v in range(n_vecs):
            signed = builder.call(sign, [b_bytes[v], x8])  # w * sign(x8), in [-127, 127]
            pairs = builder.call(maddubs, [magnitude, signed])  # |pair| <= 32,512
            sums = builder.call(maddwd, [pairs, ones])
            new.append(builder.add(acc[r * n_vecs + v], sums))
    kk_next = builder.add(kk, _const(1))
    loop_end = builder.block
    kk.add_incoming(_const(0), entry)
    kk.add_incoming(kk_next, loop_end)
    for phi, value in zip(acc, new, strict=True):
        phi.add_incoming(zero, entry)
        phi.add_incoming(value, loop_end)
    builder.cbranch(builder.icmp_signed("<", kk_next, kq), loop, done)

    builder.position_at_end(done)
    result = []
    for value in new:
        phi = builder.phi(_I32X8)
        phi.add_incoming(zero, entry)
        phi.add_incoming(value, loop_end)
        result.append(phi)
    return result


def _true_sums(builder, form, acc, col_sum_addr, n_vecs):
    """sum_k q w from the loop's accumulators: as they are (AVX_VNNI), or + 128 col_sum
    (MADD, which summed x8 w = (q - 128) w). Exact: the true sums fit int32, and int32
    arithmetic wraps modulo 2**32."""
    if form == AVX_VNNI:
        return acc
    shifted = []
    for v in range(n_vecs):
        col = builder.load(_byte_ptr(builder, col_sum_addr, _const(32 * v), _I32X8), align=1)
        shifted.append(builder.shl(col, ir.Constant(_I32X8, [7] * 8)))
    return [builder.add(a, shifted[i % n_vecs]) for i, a in enumerate(acc)]


def _tile_shape(form, mr, nv):
    literal = (types.IntegerLiteral, types.IntegerLiteral, types.IntegerLiteral)
    if not all(isinstance(t, c) for t, c in zip((form, mr, nv), literal, strict=True)):
        return None  # the form and the tile shape must be known when the IR is written
    return form.literal_value, mr.literal_value, nv.literal_value


@intrinsic(prefer_literal=True)
def _ir_tile(typingctx, form, mr, nv, a_addr, lda, b_addr, b_stride, kq, cs_addr, c_addr, ldc):
    """c[r, 8v + i] = sum_kk sum_t a[r, 4kk + t] * b[v, kk, i, t]  for r < mr, v < nv.

    form: MADD or AVX_VNNI; mr, nv: compile-time constants. a_addr: activation rows ``lda``
    bytes apart: the codes (AVX_VNNI, 4 kq bytes) or x8 then |x8| (MADD, 8 kq bytes);
    b_addr: packed weights [nv][kq][8][4], one vector block every ``b_stride`` bytes;
    cs_addr: int32 column sums of those 8 nv columns (read by MADD); c_addr: int32 results,
    rows ``ldc`` bytes apart, 8 nv values stored per row.
    """
    shape = _tile_shape(form, mr, nv)
    if shape is None:
        return None
    form_value, n_rows, n_vecs = shape

    def codegen(context, builder, signature, args):
        a_addr, lda, b_addr, b_stride, kq, cs_addr, c_addr, ldc = args[3:]
        acc = _emit_k_loop(builder, form_value, n_rows, n_vecs, a_addr, lda, b_addr, b_stride, kq)
        acc = _true_sums(builder, form_value, acc, cs_addr, n_vecs)
        for r in range(n_rows):
            for v in range(n_vecs):
                off = builder.add(builder.mul(ldc, _const(r)), _const(32 * v))
                builder.store(acc[r * n_vecs + v], _byte_ptr(builder, c_addr, off, _I32X8), align=1)
        return context.get_dummy_value()

    return types.void(form, mr, nv, *([types.intp] * 8)), codegen


@intrinsic(prefer_literal=True)
def _ir_tile_dequantize(
    typingctx, form, mr, nv, a_addr, lda, b_addr, b_stride, kq, s_addr, z_addr, cs_addr,
    ws_addr, bias_addr, has_bias, y_addr, ldy,
):  # fmt: skip
    """``_ir_tile`` followed, in registers, by ``int8_quant.dequantize_tile``:

    y[r, n] = (s_x[r] * w_scale[n]) * float32(acc[r, n] - z_x[r] * col_sum[n]) + bias[n]

    with the same float32 operations in the same order, so the result is bit for bit the
    portable path's. s_addr, z_addr: float32 / int32 per row from the tile's first row;
    cs_addr, ws_addr, bias_addr: int32 / float32 / float32 per column from the tile's first
    column (bias read only if has_bias != 0); y_addr: float32 rows ``ldy`` bytes apart.
    """
    shape = _tile_shape(form, mr, nv)
    if shape is None:
        return None
    form_value, n_rows, n_vecs = shape

    def codegen(context, builder, signature, args):
        a_addr, lda, b_addr, b_stride, kq, s_addr, z_addr, cs_addr = args[3:11]
        ws_addr, bias_addr, has_bias, y_addr, ldy = args[11:]
        acc = _emit_k_loop(builder, form_value, n_rows, n_vecs, a_addr, lda, b_addr, b_stride, kq)
        acc = _true_sums(builder, form_value, acc, cs_addr, n_vecs)
        add_bias = builder.icmp_signed("!=", has_bias, _const(0))
        col = []  # per vector: col_sum, w_scale, bias
        for v in range(n_vecs):
            off = _const(32 * v)
            col.append(
                [
                    builder.load(_byte_ptr(builder, addr, off, ty), align=1)
                    for addr, ty in ((cs_addr, _I32X8), (ws_addr, _F32X8), (bias_addr, _F32X8))
                ]
            )
        for r in range(n_rows):
            z = builder.load(_byte_ptr(builder, z_addr, _const(4 * r), _I32), align=1)
            s = builder.load(_byte_ptr(builder, s_addr, _const(4 * r), ir.FloatType()), align=1)
            z_vec, s_vec = splat(builder, z, _I32X8), splat(builder, s, _F32X8)
            for v in range(n_vecs):
                y = emit_dequantize(builder, acc[r * n_vecs + v], z_vec, s_vec, *col[v], add_bias)
                off = builder.add(builder.mul(ldy, _const(r)), _const(32 * v))
                builder.store(y, _byte_ptr(builder, y_addr, off, _F32X8), align=1)
        return context.get_dummy_value()

    return types.void(form, mr, nv, *([types.intp] * 14)), codegen


@njit(cache=True, nogil=True)
def _tile(form, rows, vecs, a, m, w_packed, j0, col_sum, c, c_row, c_col):
    """c[c_row + r, c_col + 8 v + i] = (a[m + r] @ w)[8 (j0 + v) + i] for r < rows (1..MR),
    v < vecs (1..NV, or ROW_NV when rows < MR), in int32: one MR x NV micro-kernel, or
    MR x 1, 1 x NV, 1 x ROW_NV and 1 x 1 ones at the edges.

    a: the activations as the form reads them (``_emit_k_loop``): uint8 [M, Kp] codes
    (AVX_VNNI) or [M, 2 Kp], x8 then |x8| (MADD, ``prepare``); w_packed: int8
    [Np/8, Kp/4, 8, 4]; col_sum: int32 [>= 8 (j0 + vecs)] (``_true_sums``); c: int32 2-D.
    The arrays are passed (not their addresses) so that Numba keeps them alive while the IR
    reads them.
    """
    literally(form)
    kq = np.intp(w_packed.shape[1])
    lda, b_stride, ldc = np.intp(a.shape[1]), np.intp(kq * 32), np.intp(c.shape[1] * 4)
    a_addr = np.intp(a.ctypes.data) + m * lda
    b_addr = np.intp(w_packed.ctypes.data) + j0 * b_stride
    cs = np.intp(col_sum.ctypes.data) + j0 * 32
    c_addr = np.intp(c.ctypes.data) + c_row * ldc + c_col * 4
    if rows == MR:
        if vecs == NV:
            _ir_tile(form, MR, NV, a_addr, lda, b_addr, b_stride, kq, cs, c_addr, ldc)
        else:
            for v in range(vecs):
                b_v, cs_v, c_v = b_addr + v * b_stride, cs + 32 * v, c_addr + 32 * v
                _ir_tile(form, MR, 1, a_addr, lda, b_v, b_stride, kq, cs_v, c_v, ldc)
        return
    for r in range(rows):
        a_r, c_r = a_addr + r * lda, c_addr + r * ldc
        if vecs == NV:
            _ir_tile(form, 1, NV, a_r, lda, b_addr, b_stride, kq, cs, c_r, ldc)
        elif vecs == ROW_NV:
            _ir_tile(form, 1, ROW_NV, a_r, lda, b_addr, b_stride, kq, cs, c_r, ldc)
        else:
            for v in range(vecs):
                b_v, cs_v, c_v = b_addr + v * b_stride, cs + 32 * v, c_r + 32 * v
                _ir_tile(form, 1, 1, a_r, lda, b_v, b_stride, kq, cs_v, c_v, ldc)


@njit(cache=True, nogil=True)
def _tile_dequantize(form, rows, vecs, q, m, w_packed, j0, s_x, z_x, col_sum, w_scale, bias,
                     has_bias, y):  # fmt: skip
    """y[m + r, 8 j0 + c] for r < rows, c < 8 vecs (the shapes of ``_tile``), all inside y:
    the tile of ``_tile`` dequantized in registers (``_ir_tile_dequantize``).

    q: the activations as ``_tile`` reads them; s_x: float32 [M]; z_x: int32 [M];
    col_sum: int32 [N]; w_scale, bias: float32 [N]; y: float32 [M, N].
    """
    literally(form)
    kq = np.intp(w_packed.shape[1])
    lda, b_stride, ldy = np.intp(q.shape[1]), np.intp(kq * 32), np.intp(y.shape[1] * 4)
    n0 = j0 * 8
    a = np.intp(q.ctypes.data) + m * lda
    b = np.intp(w_packed.ctypes.data) + j0 * b_stride
    s, z = np.intp(s_x.ctypes.data) + 4 * m, np.intp(z_x.ctypes.data) + 4 * m
    cs, ws = np.intp(col_sum.ctypes.data) + 4 * n0, np.intp(w_scale.ctypes.data) + 4 * n0
    bs = np.intp(bias.ctypes.data) + 4 * n0
    y0 = np.intp(y.ctypes.data) + m * ldy + 4 * n0
    hb = np.intp(1) if has_bias else np.intp(0)
    if rows == MR:
        if vecs == NV:
            _ir_tile_dequantize(
                form, MR, NV, a, lda, b, b_stride, kq, s, z, cs, ws, bs, hb, y0, ldy
            )
        else:
            for v in range(vecs):
                o = 32 * v
                _ir_tile_dequantize(form, MR, 1, a, lda, b + v * b_stride, b_stride, kq, s, z,
                                    cs + o, ws + o, bs + o, hb, y0 + o, ldy)  # fmt: skip
        return
    for r in range(rows):
        a_r, s_r, z_r, y_r = a + r * lda, s + 4 * r, z + 4 * r, y0 + r * ldy
        if vecs == NV:
            _ir_tile_dequantize(form, 1, NV, a_r, lda, b, b_stride, kq, s_r, z_r, cs, ws, bs,
                                hb, y_r, ldy)  # fmt: skip
        elif vecs == ROW_NV:
            _ir_tile_dequantize(form, 1, ROW_NV, a_r, lda, b, b_stride, kq, s_r, z_r, cs, ws,
                                bs, hb, y_r, ldy)  # fmt: skip
        else:
            for v in range(vecs):
                o = 32 * v
                _ir_tile_dequantize(form, 1, 1, a_r, lda, b + v * b_stride, b_stride, kq, s_r,
                                    z_r, cs + o, ws + o, bs + o, hb, y_r + o, ldy)  # fmt: skip


# ----------------------------------------------------------------------------------------
# the GEMM (``int8.int8_gemm``)
# ----------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, nogil=True)
def _gemm(form, a, w_packed, col_sum, c):
    """c = q @ w for the activations a as ``_tile`` reads them (the codes q, or x8 and |x8|),
    w_packed: int8 [Np/8, Kp/4, 8, 4], col_sum: int32 [Np] (its column sums), c: int32
    [M, Np], written in full; parallel over (N tile, M chunk) work items."""
    literally(form)
    m_total, nb = a.shape[0], w_packed.shape[0]
    n_tiles = (nb + NV - 1) // NV
    m_chunks = (m_total + M_CHUNK - 1) // M_CHUNK
    for t in prange(n_tiles * m_chunks):
        j0 = (t // m_chunks) * NV
        m0 = (t % m_chunks) * M_CHUNK
        vecs = min(NV, nb - j0)
        for m in range(m0, min(m_total, m0 + M_CHUNK), MR):
            _tile(form, min(MR, m_total - m), vecs, a, m, w_packed, j0, col_sum, c, m, j0 * 8)


def gemm_kernel(a: np.ndarray, w_packed: np.ndarray, c: np.ndarray) -> None:
    """c = a @ w (``vnni.gemm_kernel``'s arguments, the layout of ``pack_weight``), with the
    form of this CPU: AVX-VNNI where it has it, else vpmaddubsw (weights in [-127, 127])."""
    col_sum = w_packed.sum(axis=(1, 3), dtype=np.int32).reshape(-1)  # [Np/8, 8] -> [Np]
    if cpu.uses_avx_vnni(cpu.target_features()):
        _gemm(AVX_VNNI, a, w_packed, col_sum, c)
    else:
        centred = np.empty((a.shape[0], 2 * a.shape[1]), dtype=np.uint8)  # [M, 2 Kp]
        prepare(a, centred, 0, a.shape[0])
        _gemm(MADD, centred, w_packed, col_sum, c)


# ----------------------------------------------------------------------------------------
# the linear layer: the steps of parallel.run_layer for this path
# ----------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def weight_status(w_packed, k, n):
    """OK if w_packed has the layout ``pack_weight`` gives a [K, N] layer, with zeros in
    the padding, else BAD_SHAPES or BAD_VALUES."""
    if w_packed.shape != weight_shape(k, n):
        return BAD_SHAPES
    return OK if padding_is_zero(w_packed, k, n) else BAD_VALUES


@njit(cache=True, nogil=True)
def column_units(w_packed, n):
    """The units of N the threads share: blocks of 8 columns."""
    return w_packed.shape[0]


@njit(cache=True, nogil=True)
def split_columns(m, w_packed, threads):
    """As on the VNNI path: few rows, or up to SPLIT_N_MAX_ROWS on large weights, share N."""
    return m < MIN_ROWS_SPLIT_M or (
        m <= SPLIT_N_MAX_ROWS and w_packed.size >= SPLIT_N_MIN_WEIGHT_BYTES
    )


@njit(cache=True, nogil=True)
def panel(m, units, threads):
    """8-column blocks per tile of an m-row product: NV, or ROW_NV for one row."""
    return ROW_NV if m == 1 else NV


@njit(cache=True, nogil=True)
def row_multiple():
    return MR


@njit(cache=True, nogil=True)
def workspace(q, m):
    """(vpmaddubsw form) the centred activations: per row, x8 = q - 128 (as int8 bytes) in
    its first Kp bytes and |x8| in the next Kp: uint8 [Mq, 2 Kp]."""
    return np.empty((q.shape[0], 2 * q.shape[1]), dtype=np.uint8)


@njit(cache=True, nogil=True)
def prepare(q, work, m0, m1):
    """(vpmaddubsw form) work[r] = (q[r] ^ 0x80, |q[r] - 128|) for rows m0:m1: the two
    operands the micro-kernel broadcasts, made once per row instead of once per tile."""
    kp = q.shape[1]
    for r in range(m0, m1):
        q_r, x8_r, u_r = q[r], work[r, :kp], work[r, kp:]  # [Kp] each
        for i in range(kp):
            x8_r[i] = q_r[i] ^ np.uint8(0x80)
            u_r[i] = np.uint8(abs(np.int32(q_r[i]) - 128))


@njit(cache=True, nogil=True)
def _linear_rows(form, q, m0, m1, w_packed, j0, j1, n, s_x, z_x, col_sum, w_scale, bias,
                 has_bias, y):  # fmt: skip
    """y[m0:m1, 8 j0 : min(n, 8 j1)] from the quantized rows, tile by tile: full tiles
    dequantized in registers, the last columns of N through ``dequantize_tile``."""
    literally(form)
    tile_width = panel(m1 - m0, 0, 0)
    for j in range(j0, j1, tile_width):
        vecs = min(tile_width, j1 - j)
        n0, n1 = j * 8, min(n, (j + vecs) * 8)
        if n1 - n0 < vecs * 8:  # the last columns of N: stored as int32 first
            acc = np.empty((MR, ROW_NV * 8), dtype=np.int32)  # [MR, 32]
            col_sum_padded = np.zeros(n0 + ROW_NV * 8, dtype=np.int32)  # read from n0 on
            col_sum_padded[n0:n1] = col_sum[n0:n1]
        for m in range(m0, m1, MR):
            rows = min(MR, m1 - m)
            if n1 - n0 == vecs * 8:
                _tile_dequantize(form, rows, vecs, q, m, w_packed, j, s_x, z_x, col_sum,
                                 w_scale, bias, has_bias, y)  # fmt: skip
            else:
                _tile(form, rows, vecs, q, m, w_packed, j, col_sum_padded, acc, 0, 0)
                dequantize_tile(acc, m, rows, n0, n1, s_x, z_x, col_sum, w_scale, bias, has_bias, y)


@njit(cache=True, nogil=True)
def linear_rows_madd(q, work, m0, m1, w_packed, j0, j1, n, s_x, z_x, col_sum, w_scale, bias,
                     has_bias, y):  # fmt: skip
    """``_linear_rows`` on the centred activations of ``prepare``."""
    _linear_rows(MADD, work, m0, m1, w_packed, j0, j1, n, s_x, z_x, col_sum, w_scale, bias,
                 has_bias, y)  # fmt: skip


@njit(cache=True, nogil=True)
def linear_rows_vnni(q, work, m0, m1, w_packed, j0, j1, n, s_x, z_x, col_sum, w_scale,
                         bias, has_bias, y):  # fmt: skip
    _linear_rows(AVX_VNNI, q, m0, m1, w_packed, j0, j1, n, s_x, z_x, col_sum, w_scale, bias,
                 has_bias, y)  # fmt: skip


@njit(cache=True, nogil=True)
def linear_kernel_madd(x, weight, col_sum, w_scale, bias, has_bias, y):
    """The quantized linear layer of ``quantized_linear_reference`` on the AVX2 path with
    vpmaddubsw + vpmaddwd: ``parallel.run_layer`` (its status) with the steps above.

    x: float32 [M, K]; weight: int8 [Np/8, Kp/4, 8, 4] (``pack_weight``, weights in
    [-127, 127]); col_sum: int32 [N]; w_scale: float32 [N]; bias: float32 [N] (read only if
    has_bias); y: float32 [M, N] out.
    """
    return parallel.run_layer(
        "avx2", x, weight, col_sum, w_scale, bias, has_bias, y, False, parallel.options()
    )


@njit(cache=True, nogil=True)
def linear_kernel_madd_serial(x, weight, col_sum, w_scale, bias, has_bias, y):
    """``linear_kernel_madd`` on the calling thread (``parallel.run_layer_serial``)."""
    return parallel.run_layer_serial(
        "avx2", x, weight, col_sum, w_scale, bias, has_bias, y, True, parallel.options()
    )


@njit(cache=True, nogil=True)
def linear_kernel_madd_full(x, weight, col_sum, w_scale, bias, has_bias, y, serial, options):
    """``linear_kernel_madd`` with every argument of ``parallel.run_layer``: on the calling
    thread only if ``serial``; ``options``: static activation scale and zero point, carried
    codes in and out, the activation of ``epilogue.py``."""
    return parallel.run_layer(
        "avx2", x, weight, col_sum, w_scale, bias, has_bias, y, serial, options
    )


@njit(cache=True, nogil=True)
def linear_kernel_vnni(x, weight, col_sum, w_scale, bias, has_bias, y):
    """``linear_kernel_madd`` with AVX-VNNI's vpdpbusd on ymm registers (any int8 weight)."""
    return parallel.run_layer(
        "avx2-vnni", x, weight, col_sum, w_scale, bias, has_bias, y, False, parallel.options()
    )


@njit(cache=True, nogil=True)
def linear_kernel_vnni_serial(x, weight, col_sum, w_scale, bias, has_bias, y):
    """``linear_kernel_vnni`` on the calling thread (``parallel.run_layer_serial``)."""
    return parallel.run_layer_serial(
        "avx2-vnni", x, weight, col_sum, w_scale, bias, has_bias, y, True, parallel.options()
    )


@njit(cache=True, nogil=True)
def linear_kernel_vnni_full(x, weight, col_sum, w_scale, bias, has_bias, y, serial, options):
    """``linear_kernel_vnni`` with every argument of ``parallel.run_layer``: on the calling
    thread only if ``serial``; ``options``: static activation scale and zero point, carried
    codes in and out, the activation of ``epilogue.py``."""
    return parallel.run_layer(
        "avx2-vnni", x, weight, col_sum, w_scale, bias, has_bias, y, serial, options
    )


def layer_kernels(avx_vnni: bool) -> tuple:
    """The (parallel, serial, static) layer kernels of the form this CPU runs."""
    if avx_vnni:
        return linear_kernel_vnni, linear_kernel_vnni_serial, linear_kernel_vnni_full
    return linear_kernel_madd, linear_kernel_madd_serial, linear_kernel_madd_full


_STEPS = {
    "weight_status": weight_status,
    "column_units": column_units,
    "split_columns": split_columns,
    "panel": panel,
    "row_multiple": row_multiple,
}
parallel.register(
    "avx2",
    pytypes.SimpleNamespace(
        **_STEPS, workspace=workspace, prepare=prepare, linear_rows=linear_rows_madd
    ),
)
parallel.register("avx2-vnni", pytypes.SimpleNamespace(**_STEPS, linear_rows=linear_rows_vnni))
