"""The AVX-512 VNNI path of the int8 GEMM: one instruction, ``vpdpbusd``, does 64 multiplies.

``vpdpbusd acc, a, b`` treats each 32-bit lane of ``a`` as 4 unsigned bytes and of ``b`` as
4 signed bytes, and adds the 4 products to the int32 lane of ``acc``:

    acc[i] += a[4i] * b[4i] + a[4i+1] * b[4i+1] + a[4i+2] * b[4i+2] + a[4i+3] * b[4i+3].

No loop form makes Numba's auto-vectorizer emit it, so ``_dpbusd_tile`` below is a Numba
``@intrinsic`` that writes the LLVM IR of a register-tiled micro-kernel by hand:

- the weights are packed once as ``[N/16, K/4, 16, 4]`` (``pack_weight``, ``layout.py``): for 16
  output columns, 4 consecutive k of each column lie side by side, so one 64-byte load is a
  ``b`` operand for 16 columns x 4 k;
- 4 bytes of an activation row (4 consecutive k) are broadcast as one int32 to all 16 lanes
  (``vpbroadcastd``) and form the ``a`` operand;
- a tile of MR rows x NV*16 columns keeps MR*NV int32 accumulators in zmm registers for the
  whole K loop and stores them once at the end (``_dpbusd_tile``), or first applies the
  zero-point correction, the scales and the bias in registers and stores float32
  (``_dpbusd_tile_dequantize``, the int8 linear layer).

The intrinsics take raw addresses; the Numba functions that call them take the arrays, so
that Numba keeps the arrays alive while the IR reads them (an array whose address was
taken but that is not used afterwards is freed early, and its memory reused).

Padding: K is padded to a multiple of 4 and N to a multiple of 16 with zero weights, so the
padded k contribute 0 whatever the activation byte there, and padded columns are dropped.

The weights are in the k4 layout of ``layout.py`` with 16 columns per block. The layer
kernel (``linear_kernel``) is ``parallel.run_layer`` with this module's steps
(``weight_status``, ``column_units``, ``split_columns``, ``panel``, ``row_multiple``,
``linear_rows``).

Only ``int8.py`` calls this module, and only when ``cpu.why_not("vnni", ...)`` allows it:
Numba compiles a function on its first call, so on a CPU without VNNI nothing here is ever
compiled.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from minicompress.kernels import parallel
from minicompress.kernels.int8_quant import BAD_SHAPES, BAD_VALUES, OK, dequantize_tile
from minicompress.kernels.x86.layout import k4_shape, pack_k4, padding_is_zero, unpack_k4
from minicompress.kernels.x86.simd import splat

# The register tile: MR rows x NV zmm vectors of 16 int32 columns = 24 accumulators, plus NV
# weight vectors and one broadcast, 28 of the 32 zmm registers. Each 64-byte weight load
# feeds MR = 8 vpdpbusd, and a 48-column panel of weights (36 KB at K = 768) stays in L1
# while the row tiles pass over it. Measured here against 4 x 4, 6 x 4 and 12 x 2 in one
# process: 8 x 3 was 0-15% faster on every shape of the benchmark.
MR = 8  # rows of a register tile
NV = 3  # zmm vectors (16 int32 columns each) per row of a tile
LANES = 16  # int32 lanes of a zmm register: output columns per block of the packed weights
M_CHUNK = 64  # rows per parallel work item of ``gemm_kernel`` (a multiple of MR)
MIN_ROWS_SPLIT_M = parallel.MIN_ROWS_SPLIT_M  # with fewer rows, the threads split N, not M
# ... and up to SPLIT_N_MAX_ROWS rows when the weights are too large for one core's L2
# (2 MB here): each thread then reads only its half of them, which stays in its own L2
# from call to call. Measured on 768 x 3072 (2.4 MB): 7% faster at M = 32, 10% slower at
# M = 128 (where quantizing the rows on one thread first costs more than it saves).
SPLIT_N_MAX_ROWS = 32
SPLIT_N_MIN_WEIGHT_BYTES = 2**20
# A single row (M = 1, a matrix-vector product) reuses no weight from register, so its tile
# is 1 x ROW_NV: four 64-byte loads in flight per k-step instead of three. Measured on
# 1024 x 256 (256 KB of weights, read from L2): 3.97 against 4.37 us; 8 vectors, 3.96.
ROW_NV = 4
_NO_SCALE, _NO_ZP = parallel.NO_SCALE, parallel.NO_ZERO_POINT  # per-row activation ranges


# ----------------------------------------------------------------------------------------
# packing
# ----------------------------------------------------------------------------------------


def pack_weight(w_q: np.ndarray) -> np.ndarray:
    """Pack int8 weights for the VNNI micro-kernel: ``layout.pack_k4`` with 16 columns per
    block.

    packed[j, kk, i, r] = w_q[4 kk + r, 16 j + i]   (zero where 4 kk + r >= K or 16 j + i >= N)

    w_q: int8 [K, N]  ->  int8 [ceil(N/16), ceil(K/4), 16, 4], C-contiguous, its data
    64-byte aligned.
    """
    return pack_k4(w_q, LANES)


@njit(cache=True, nogil=True)
def weight_shape(k, n):
    """The shape ``pack_weight`` gives a [K, N] weight: (ceil(N/16), ceil(K/4), 16, 4)."""
    return k4_shape(k, n, LANES, 4)


@njit(cache=True, nogil=True)
def readable_weight_shape(w_packed, k, n):
    """The packed shape the VNNI kernels read for a [K, N] layer: ``weight_shape``,
    except that K may be padded further (``amx.pack_weight`` pads it to a multiple of
    64; those k meet activations quantized to 0). w_packed: int8 4-D."""
    nb, kq, _, _ = weight_shape(k, n)
    return (nb, max(kq, w_packed.shape[1]), LANES, 4)


def unpack_weight(packed: np.ndarray, k: int, n: int) -> np.ndarray:
    """Inverse of ``pack_weight`` (and of ``amx.pack_weight``): -> int8 [K, N]."""
    return unpack_k4(packed, k, n)


# ----------------------------------------------------------------------------------------
# the micro-kernel, written in LLVM IR
# ----------------------------------------------------------------------------------------

_I32X16 = ir.VectorType(ir.IntType(32), 16)
_F32X16 = ir.VectorType(ir.FloatType(), 16)
_I8P, _I32, _I64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"


def _byte_ptr(builder, address, offset, ty):
    """Pointer to a ``ty`` at ``address + offset`` bytes (both i64)."""
    base = builder.inttoptr(address, _I8P)
    return builder.bitcast(builder.gep(base, [offset]), ty.as_pointer())


def _const(value):
    return ir.Constant(_I64, value)


def emit_dequantize(builder, acc, z_vec, s_vec, col_sum, w_scale, bias, add_bias):
    """L lanes of ``int8_quant.dequantize_tile``, with its float32 operations in the same
    order (no fused multiply-add), so every path gives the same floats:

    y = (s * w_scale) * float32(acc - z * col_sum) + bias      (bias added if add_bias)

    acc, z_vec, col_sum: <L x i32>; s_vec, w_scale, bias: <L x float>; add_bias: i1.
    Used by this file's tile, by ``amx._dequantize_row32`` and by ``avx2.py`` (L = 8).
    """
    floats = ir.VectorType(ir.FloatType(), acc.type.count)
    corrected = builder.sub(acc, builder.mul(z_vec, col_sum))
    y = builder.fmul(builder.fmul(s_vec, w_scale), builder.sitofp(corrected, floats))
    return builder.select(add_bias, builder.fadd(y, bias), y)


def _emit_dpbusd_loop(builder, n_rows, n_vecs, a_addr, lda, b_addr, b_stride, kq):
    """Emit the K loop of an n_rows x (16 n_vecs) tile; return its n_rows * n_vecs int32x16
    accumulators (row-major), zeros when kq == 0.

    acc[r][v] += vpdpbusd(broadcast(a[r, 4kk:4kk+4] as one int32), b[v, kk, :, :])
    """
    module = builder.module
    dpbusd = module.globals.get(_VPDPBUSD)
    if dpbusd is None:
        dpbusd = ir.Function(module, ir.FunctionType(_I32X16, [_I32X16] * 3), _VPDPBUSD)
    zero = ir.Constant(_I32X16, None)
    entry = builder.block
    loop = builder.append_basic_block("vnni.kloop")
    done = builder.append_basic_block("vnni.done")
    builder.cbranch(builder.icmp_signed(">", kq, _const(0)), loop, done)

    # one iteration: 4 k of every row against one 64-byte block of each vector
    builder.position_at_end(loop)
    kk = builder.phi(_I64)
    acc = [builder.phi(_I32X16) for _ in range(n_rows * n_vecs)]
    b_off = builder.mul(kk, _const(64))
    b_vec = []
    for v in range(n_vecs):
        off = builder.add(b_off, builder.mul(b_stride, _const(v)))
        b_vec.append(builder.load(_byte_ptr(builder, b_addr, off, _I32X16), align=1))
    a_off = builder.mul(kk, _const(4))
    new = []
    for r in range(n_rows):
        row_off = builder.add(a_off, builder.mul(lda, _const(r)))
        four_bytes = builder.load(_byte_ptr(builder, a_addr, row_off, _I32), align=1)
        a_vec = splat(builder, four_bytes, _I32X16)
        for v in range(n_vecs):
            new.append(builder.call(dpbusd, [acc[r * n_vecs + v], a_vec, b_vec[v]]))
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
        phi = builder.phi(_I32X16)
        phi.add_incoming(zero, entry)
        phi.add_incoming(value, loop_end)
        result.append(phi)
    return result


def _tile_shape(mr, nv):
    if not (isinstance(mr, types.IntegerLiteral) and isinstance(nv, types.IntegerLiteral)):
        return None  # the tile shape must be known when the IR is written
    return mr.literal_value, nv.literal_value


@intrinsic(prefer_literal=True)
def _dpbusd_tile(typingctx, mr, nv, a_addr, lda, b_addr, b_stride, kq, c_addr, ldc):
    """c[r, 16v + i] = sum_kk sum_t a[r, 4kk + t] * b[v, kk, i, t]  for r < mr, v < nv.

    mr, nv: compile-time constants (rows, zmm vectors of 16 columns).
    a_addr: address of a uint8 row-major block, row stride ``lda`` bytes, 4*kq bytes per row.
    b_addr: address of packed int8 weights [nv][kq][16][4]; one vector block every
        ``b_stride`` bytes (= 64 * kq in the packed array).
    c_addr: address of int32 results, row stride ``ldc`` bytes; mr x (16 nv) values stored.
    """
    shape = _tile_shape(mr, nv)
    if shape is None:
        return None
    n_rows, n_vecs = shape

    def codegen(context, builder, signature, args):
        _, _, a_addr, lda, b_addr, b_stride, kq, c_addr, ldc = args
        acc = _emit_dpbusd_loop(builder, n_rows, n_vecs, a_addr, lda, b_addr, b_stride, kq)
        for r in range(n_rows):
            for v in range(n_vecs):
                off = builder.add(builder.mul(ldc, _const(r)), _const(64 * v))
                builder.store(
                    acc[r * n_vecs + v], _byte_ptr(builder, c_addr, off, _I32X16), align=1
                )
        return context.get_dummy_value()

    return types.void(mr, nv, *([types.intp] * 7)), codegen


@intrinsic(prefer_literal=True)
def _dpbusd_tile_dequantize(
    typingctx,
    mr,
    nv,
    a_addr,
    lda,
    b_addr,
    b_stride,
    kq,
    s_addr,
    z_addr,
    col_sum_addr,
    w_scale_addr,
    bias_addr,
    has_bias,
    y_addr,
    ldy,
):
    """``_dpbusd_tile`` followed, in registers, by ``int8_quant.dequantize_tile``:

    y[r, n] = (s_x[r] * w_scale[n]) * float32(acc[r, n] - z_x[r] * col_sum[n]) + bias[n]

    with the same float32 operations in the same order (no fused multiply-add), so the
    result is bit for bit the portable path's. s_addr, z_addr: float32 / int32 per row from
    the tile's first row; col_sum_addr, w_scale_addr, bias_addr: int32 / float32 / float32
    per column from the tile's first column (bias read only if has_bias != 0); y_addr:
    float32 results, row stride ``ldy`` bytes. All 16 nv columns are stored.
    """
    shape = _tile_shape(mr, nv)
    if shape is None:
        return None
    n_rows, n_vecs = shape

    def codegen(context, builder, signature, args):
        (
            _,
            _,
            a_addr,
            lda,
            b_addr,
            b_stride,
            kq,
            s_addr,
            z_addr,
            col_sum_addr,
            w_scale_addr,
            bias_addr,
            has_bias,
            y_addr,
            ldy,
        ) = args
        acc = _emit_dpbusd_loop(builder, n_rows, n_vecs, a_addr, lda, b_addr, b_stride, kq)
        add_bias = builder.icmp_signed("!=", has_bias, _const(0))
        col = []  # per vector: col_sum, w_scale, bias
        for v in range(n_vecs):
            off = _const(64 * v)
            col.append(
                [
                    builder.load(_byte_ptr(builder, addr, off, ty), align=1)
                    for addr, ty in (
                        (col_sum_addr, _I32X16),
                        (w_scale_addr, _F32X16),
                        (bias_addr, _F32X16),
                    )
                ]
            )
        for r in range(n_rows):
            z = builder.load(_byte_ptr(builder, z_addr, _const(4 * r), _I32), align=1)
            s = builder.load(_byte_ptr(builder, s_addr, _const(4 * r), ir.FloatType()), align=1)
            z_vec, s_vec = splat(builder, z, _I32X16), splat(builder, s, _F32X16)
            for v in range(n_vecs):
                y = emit_dequantize(builder, acc[r * n_vecs + v], z_vec, s_vec, *col[v], add_bias)
                off = builder.add(builder.mul(ldy, _const(r)), _const(64 * v))
                builder.store(y, _byte_ptr(builder, y_addr, off, _F32X16), align=1)
        return context.get_dummy_value()

    return types.void(mr, nv, *([types.intp] * 13)), codegen


@njit(cache=True, nogil=True)
def _tile(rows, vecs, a, m, w_packed, j0, c, c_row, c_col):
    """c[c_row + r, c_col + 16 v + i] = (a[m + r] @ w)[16 (j0 + v) + i] for r < rows (1..MR),
    v < vecs (1..NV, or ROW_NV when rows < MR).

    a: uint8 [M, Kp]; w_packed: int8 [Np/16, Kp/4, 16, 4]; c: int32 2-D. The arrays are
    passed (not their addresses) so that Numba keeps them alive while the IR reads them.
    Full tiles are one MR x NV micro-kernel; edge tiles (last rows of M, last columns of N)
    are MR x 1, 1 x NV or 1 x 1 micro-kernels, so M = 1 costs one row of work, not MR.
    """
    kq = np.intp(w_packed.shape[1])
    lda, b_stride, ldc = np.intp(a.shape[1]), np.intp(kq * 64), np.intp(c.shape[1] * 4)
    a_addr = np.intp(a.ctypes.data) + m * lda
    b_addr = np.intp(w_packed.ctypes.data) + j0 * b_stride
    c_addr = np.intp(c.ctypes.data) + c_row * ldc + c_col * 4
    if rows == MR:
        if vecs == NV:
            _dpbusd_tile(MR, NV, a_addr, lda, b_addr, b_stride, kq, c_addr, ldc)
        else:
            for v in range(vecs):
                _dpbusd_tile(
                    MR, 1, a_addr, lda, b_addr + v * b_stride, b_stride, kq, c_addr + v * 64, ldc
                )
        return
    for r in range(rows):
        a_r, c_r = a_addr + r * lda, c_addr + r * ldc
        if vecs == NV:
            _dpbusd_tile(1, NV, a_r, lda, b_addr, b_stride, kq, c_r, ldc)
        elif vecs == ROW_NV:
            _dpbusd_tile(1, ROW_NV, a_r, lda, b_addr, b_stride, kq, c_r, ldc)
        else:
            for v in range(vecs):
                _dpbusd_tile(1, 1, a_r, lda, b_addr + v * b_stride, b_stride, kq, c_r + v * 64, ldc)


@njit(cache=True, nogil=True)
def _tile_dequantize(rows, vecs, q, m, w_packed, j0, s_x, z_x, col_sum, w_scale, bias, has_bias, y):
    """y[m + r, 16 j0 + c] for r < rows (1..MR), c < 16 vecs (1..NV, or ROW_NV when
    rows < MR), all inside y: the
    tile of ``_tile`` dequantized in registers (``_dpbusd_tile_dequantize``).

    q: uint8 [M, Kp]; s_x: float32 [M]; z_x: int32 [M]; col_sum: int32 [N];
    w_scale, bias: float32 [N]; y: float32 [M, N].
    """
    kq = np.intp(w_packed.shape[1])
    lda, b_stride, ldy = np.intp(q.shape[1]), np.intp(kq * 64), np.intp(y.shape[1] * 4)
    n0 = j0 * 16
    a_addr = np.intp(q.ctypes.data) + m * lda
    b_addr = np.intp(w_packed.ctypes.data) + j0 * b_stride
    s_addr, z_addr = np.intp(s_x.ctypes.data) + 4 * m, np.intp(z_x.ctypes.data) + 4 * m
    cs_addr, ws_addr = np.intp(col_sum.ctypes.data) + 4 * n0, np.intp(w_scale.ctypes.data) + 4 * n0
    bias_addr = np.intp(bias.ctypes.data) + 4 * n0
    y_addr = np.intp(y.ctypes.data) + m * ldy + 4 * n0
    hb = np.intp(1) if has_bias else np.intp(0)
    if rows == MR:
        if vecs == NV:
            _dpbusd_tile_dequantize(
                MR,
                NV,
                a_addr,
                lda,
                b_addr,
                b_stride,
                kq,
                s_addr,
                z_addr,
                cs_addr,
                ws_addr,
                bias_addr,
                hb,
                y_addr,
                ldy,
            )
        else:
            for v in range(vecs):
                _dpbusd_tile_dequantize(
                    MR,
                    1,
                    a_addr,
                    lda,
                    b_addr + v * b_stride,
                    b_stride,
                    kq,
                    s_addr,
                    z_addr,
                    cs_addr + 64 * v,
                    ws_addr + 64 * v,
                    bias_addr + 64 * v,
                    hb,
                    y_addr + 64 * v,
                    ldy,
                )
        return
    for r in range(rows):
        a_r, s_r, z_r, y_r = a_addr + r * lda, s_addr + 4 * r, z_addr + 4 * r, y_addr + r * ldy
        if vecs == NV:
            _dpbusd_tile_dequantize(
                1,
                NV,
                a_r,
                lda,
                b_addr,
                b_stride,
                kq,
                s_r,
                z_r,
                cs_addr,
                ws_addr,
                bias_addr,
                hb,
                y_r,
                ldy,
            )
        elif vecs == ROW_NV:
            _dpbusd_tile_dequantize(
                1,
                ROW_NV,
                a_r,
                lda,
                b_addr,
                b_stride,
                kq,
                s_r,
                z_r,
                cs_addr,
                ws_addr,
                bias_addr,
                hb,
                y_r,
                ldy,
            )
        else:
            for v in range(vecs):
                _dpbusd_tile_dequantize(
                    1,
                    1,
                    a_r,
                    lda,
                    b_addr + v * b_stride,
                    b_stride,
                    kq,
                    s_r,
                    z_r,
                    cs_addr + 64 * v,
                    ws_addr + 64 * v,
                    bias_addr + 64 * v,
                    hb,
                    y_r + 64 * v,
                    ldy,
                )


# ----------------------------------------------------------------------------------------
# the GEMM, parallel over (N tile, M chunk) work items
# ----------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, nogil=True)
def gemm_kernel(a, w_packed, c):
    """c = a @ w for a: uint8 [M, Kp] (Kp = 4 * w_packed.shape[1]), w_packed: int8
    [Np/16, Kp/4, 16, 4], c: int32 [M, Np] (written in full). Same result as
    ``int8_gemm_reference`` on the unpadded arrays."""
    m_total, nb = a.shape[0], w_packed.shape[0]
    n_tiles = (nb + NV - 1) // NV
    m_chunks = (m_total + M_CHUNK - 1) // M_CHUNK
    for t in prange(n_tiles * m_chunks):
        j0 = (t // m_chunks) * NV  # first 16-column block of the tile
        m0 = (t % m_chunks) * M_CHUNK
        vecs = min(NV, nb - j0)
        for m in range(m0, min(m_total, m0 + M_CHUNK), MR):
            rows = min(MR, m_total - m)
            _tile(rows, vecs, a, m, w_packed, j0, c, m, j0 * 16)


# ----------------------------------------------------------------------------------------
# the linear layer: the steps of parallel.run_layer for this path
# ----------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def weight_status(w_packed, k, n):
    """OK if w_packed has the layout of a [K, N] layer (K padded to 4, or further for the
    AMX layout) with zeros in the padding, else BAD_SHAPES or BAD_VALUES."""
    if w_packed.shape != readable_weight_shape(w_packed, k, n):
        return BAD_SHAPES
    return OK if padding_is_zero(w_packed, k, n) else BAD_VALUES


@njit(cache=True, nogil=True)
def column_units(w_packed, n):
    """The units of N the threads share: blocks of 16 columns."""
    return w_packed.shape[0]


@njit(cache=True, nogil=True)
def split_columns(m, w_packed, threads):
    """Share the columns for fewer than MIN_ROWS_SPLIT_M rows, and up to SPLIT_N_MAX_ROWS
    rows when the weights are too large for one core's L2 (each thread then reads only
    its part of them, which stays in its own L2 from call to call)."""
    return m < MIN_ROWS_SPLIT_M or (
        m <= SPLIT_N_MAX_ROWS and w_packed.size >= SPLIT_N_MIN_WEIGHT_BYTES
    )


@njit(cache=True, nogil=True)
def panel(m, units, threads):
    """16-column blocks per tile of an m-row product: NV, or ROW_NV for one row."""
    return ROW_NV if m == 1 else NV


@njit(cache=True, nogil=True)
def row_multiple():
    return MR


@njit(cache=True, nogil=True)
def linear_rows(
    q, work, m0, m1, w_packed, j0, j1, n, s_x, z_x, col_sum, w_scale, bias, has_bias, y
):
    """y[m0:m1, 16 j0 : min(n, 16 j1)] from the quantized rows q (uint8 [M, Kp]), tile by
    tile: full tiles dequantized in registers, the last columns of N through
    ``dequantize_tile``."""
    tile_width = panel(m1 - m0, 0, 0)
    for j in range(j0, j1, tile_width):
        vecs = min(tile_width, j1 - j)
        n0, n1 = j * 16, min(n, (j + vecs) * 16)
        full_width = n1 - n0 == vecs * 16  # else the last columns of N: not all stored
        for m in range(m0, m1, MR):
            rows = min(MR, m1 - m)
            if full_width:
                _tile_dequantize(
                    rows, vecs, q, m, w_packed, j, s_x, z_x, col_sum, w_scale, bias, has_bias, y
                )
            else:
                acc = np.empty((MR, max(NV, ROW_NV) * 16), dtype=np.int32)  # [MR, 64]
                _tile(rows, vecs, q, m, w_packed, j, acc, 0, 0)
                dequantize_tile(acc, m, rows, n0, n1, s_x, z_x, col_sum, w_scale, bias, has_bias, y)


@njit(cache=True, nogil=True)
def linear_kernel(x, weight, col_sum, w_scale, bias, has_bias, y):
    """The quantized linear layer of ``quantized_linear_reference`` on the VNNI path:
    ``parallel.run_layer`` (its status) with the steps above.

    x: float32 [M, K]; weight: int8 [Np/16, Kp/4, 16, 4] (``pack_weight``, or the AMX
    layout); col_sum: int32 [N]; w_scale: float32 [N]; bias: float32 [N] (read only if
    has_bias); y: float32 [M, N] out. Few rows are quantized on one thread and the threads
    share N (M = 1 still uses every core); more rows, one chunk of rows per thread, each
    quantized by its thread and run against all of N, panel by panel of 48 columns, so a
    panel of weights is reused by every row tile of the chunk while it is in cache."""
    return parallel.run_layer(
        "vnni", x, weight, col_sum, w_scale, bias, has_bias, y, False, parallel.options()
    )


@njit(cache=True, nogil=True)
def linear_kernel_serial(x, weight, col_sum, w_scale, bias, has_bias, y):
    """``linear_kernel`` on the calling thread (``parallel.run_layer_serial``)."""
    return parallel.run_layer_serial(
        "vnni", x, weight, col_sum, w_scale, bias, has_bias, y, True, parallel.options()
    )


@njit(cache=True, nogil=True)
def linear_kernel_full(x, weight, col_sum, w_scale, bias, has_bias, y, serial, options):
    """``linear_kernel`` with every argument of ``parallel.run_layer``: on the calling
    thread only if ``serial``; ``options``: static activation scale and zero point, carried
    codes in and out, the activation of ``epilogue.py``."""
    return parallel.run_layer(
        "vnni", x, weight, col_sum, w_scale, bias, has_bias, y, serial, options
    )


parallel.register("vnni", sys.modules[__name__])
