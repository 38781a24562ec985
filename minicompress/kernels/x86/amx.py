"""The AMX path of the int8 linear layer: one instruction, ``tdpbusd``, does 16 x 16 x 64
multiplies.

Intel AMX (Sapphire Rapids and later) adds eight *tile* registers ``tmm0``-``tmm7`` of up to
16 rows x 64 bytes and a matrix unit. ``tdpbusd c, a, b`` treats a tile ``a`` as 16 rows of
64 unsigned bytes (16 rows x 64 k of the activations) and ``b`` as 16 rows of 16 x 4 signed
bytes (64 k x 16 columns of the weights, 4 consecutive k of a column side by side: the
layout of ``vnni.pack_weight``), and adds to the 16 x 16 int32 tile ``c``:

    c[m, n] += sum_{r < 16} sum_{t < 4} a[m, 4r + t] * b[r, 4n + t].

That is 16,384 multiply-adds, against 64 for one ``vpdpbusd``; measured here, the unit
sustains about 4.5 TOP/s per core from registers, against about 0.6 for the VNNI kernel.
The catch is feeding it (measured here: 9-23 ns per 1 KB tile load even from L1, against
7 ns per ``tdpbusd``): each tile is loaded from memory (``tileloadd``, 1 KB), so the
kernel keeps a block of 2 x 2 output tiles (32 rows x 32 columns, ``tmm0``-``tmm3``) for the
whole K loop and loads, per 64 k, two activation tiles (``tmm4``, ``tmm5``) and two weight
tiles (``tmm6``, ``tmm7``): 4 KB for 65,536 multiply-adds.

The weights are packed as for VNNI, with K padded to a multiple of 64 (``pack_weight``):
the same array also feeds the VNNI kernels, which this path uses where they are faster
(``use_tiles``). The activations are quantized by rows (``int8_quant.quantize_rows``, bit
for bit as the reference), padded to a multiple of 32 rows and of 64 k, and copied into
tiles ``[M/16, K/64, 16, 64]``, so that every tile load reads 1 KB of contiguous memory
(``_to_tiles``). Each 32 x 32 block of int32 sums is stored to a small buffer and
dequantized from there (``_dequantize_row32``, the float32 operations of
``int8_quant.dequantize_tile`` in the same order): every path gives the same floats.

Linux lends the tile registers to a process only on request (``arch_prctl`` with
``ARCH_REQ_XCOMP_PERM``): ``cpu.amx_tiles_granted()`` asks once; ``int8.py`` runs this path
only if the CPU has AMX-INT8, LLVM targets it, and the kernel granted the request.

The layer kernel (``linear_kernel``) is ``parallel.run_layer`` with this module's steps:
rows padded to a multiple of 32 (``q_rows``), the activation tiles as its workspace, filled
from the quantized rows (``prepare``), and blocks of 32 x 32 outputs (``linear_rows``).
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from minicompress.kernels import parallel
from minicompress.kernels.int8_quant import BAD_SHAPES, BAD_VALUES, OK, dequantize_tile
from minicompress.kernels.x86 import simd, vnni
from minicompress.kernels.x86.aligned import aligned_bytes
from minicompress.kernels.x86.layout import k4_shape, pack_k4, padding_is_zero

K_BLOCK = 64  # k per tile: 16 rows of 4 bytes in a weight tile, 64 bytes of an activation row
M_BLOCK = 32  # rows of an output block: two tiles of 16 rows
N_BLOCK = 32  # columns of an output block: two tiles of 16 int32
# Where the tiles win, measured here against the VNNI kernel (2 threads, same process):
# from M = 128 rows on every benchmark layer (1.2-2x faster), and on layers of 1 MB of
# weights or more from M = 16 (768 x 3072 at M = 32: 0.22 against 0.30 ms). On small layers
# at M = 32-64 they lose (1.1-1.4x slower): the threads split N, one quantizes all rows
# first. Elsewhere the VNNI kernels run, on the same packed weights.
MIN_ROWS = 128
MIN_ROWS_LARGE = 16  # for weights of MIN_LARGE_BYTES or more
MIN_LARGE_BYTES = 2**20
_NO_SCALE, _NO_ZP = parallel.NO_SCALE, parallel.NO_ZERO_POINT  # per-row activation ranges


def use_tiles(m: int, w_packed: np.ndarray) -> bool:
    """Whether a product of m rows with these packed weights runs on the tiles (else VNNI)."""
    return m >= MIN_ROWS or (m >= MIN_ROWS_LARGE and w_packed.size >= MIN_LARGE_BYTES)


def pack_weight(w_q: np.ndarray) -> np.ndarray:
    """``vnni.pack_weight`` with K padded to a multiple of 64 (one tile of k).

    w_q: int8 [K, N]  ->  int8 [ceil(N/16), 16 ceil(K/64), 16, 4] (zero where k >= K).
    """
    return pack_k4(w_q, vnni.LANES, K_BLOCK)


@njit(cache=True, nogil=True)
def weight_shape(k, n):
    """The shape ``pack_weight`` gives a [K, N] weight: (ceil(N/16), 16 ceil(K/64), 16, 4)."""
    return k4_shape(k, n, vnni.LANES, K_BLOCK)


unpack_weight = vnni.unpack_weight  # the same layout, with more zero k


# ----------------------------------------------------------------------------------------
# the tile instructions, written in LLVM IR
# ----------------------------------------------------------------------------------------

_I8, _I64 = ir.IntType(8), ir.IntType(64)
_I8P = _I8.as_pointer()


def _declare(module, name, arg_types):
    f = module.globals.get(name)
    if f is None:
        f = ir.Function(module, ir.FunctionType(ir.VoidType(), arg_types), name)
    return f


def _at(builder, address, offset):
    return builder.gep(builder.inttoptr(address, _I8P), [offset])


def _tile(t):
    return ir.Constant(_I8, t)


_i64 = vnni._const  # an i64 constant


@intrinsic
def _amx_configure(typingctx, config_addr):
    """``ldtilecfg``: load the 64-byte tile configuration at ``config_addr``."""

    def codegen(context, builder, signature, args):
        load_config = _declare(builder.module, "llvm.x86.ldtilecfg", [_I8P])
        builder.call(load_config, [builder.inttoptr(args[0], _I8P)])
        return context.get_dummy_value()

    return types.void(types.intp), codegen


@intrinsic
def _amx_release(typingctx):
    """``tilerelease``: return the tile registers to their initial state."""

    def codegen(context, builder, signature, args):
        builder.call(_declare(builder.module, "llvm.x86.tilerelease", []), [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _amx_block(typingctx, a_addr, a_stride, b_addr, b_stride, kc, c_addr, ldc):
    """c[32 x 32] = a[32 x 64 kc] @ b[64 kc x 32], int32, with the tiles configured.

    a_addr: activation tiles of rows 0-15 ([kc, 16, 64], 1 KB per 64 k), those of rows 16-31
    ``a_stride`` bytes further; b_addr: packed weights of 16 columns ([K/4, 16, 4], 1 KB per
    64 k), the next 16 columns ``b_stride`` bytes further; c_addr: int32 rows, ``ldc``
    bytes apart, 32 values each. Every tile is 1 KB of contiguous memory: four sequential
    streams, which the hardware prefetchers follow (rows of the activations ``lda`` bytes
    apart made 32 streams, measured 1.6x slower).
    """

    def codegen(context, builder, signature, args):
        a_addr, a_stride, b_addr, b_stride, kc, c_addr, ldc = args
        module = builder.module
        zero = _declare(module, "llvm.x86.tilezero", [_I8])
        load = _declare(module, "llvm.x86.tileloadd64", [_I8, _I8P, _I64])
        dot = _declare(module, "llvm.x86.tdpbusd", [_I8, _I8, _I8])
        store = _declare(module, "llvm.x86.tilestored64", [_I8, _I8P, _I64])
        for t in range(4):
            builder.call(zero, [_tile(t)])
        entry = builder.block
        loop = builder.append_basic_block("amx.kloop")
        done = builder.append_basic_block("amx.done")
        builder.cbranch(builder.icmp_signed(">", kc, _i64(0)), loop, done)

        builder.position_at_end(loop)
        kk = builder.phi(_I64)
        off = builder.mul(kk, _i64(1024))
        builder.call(load, [_tile(4), _at(builder, a_addr, off), _i64(64)])  # rows 0-15
        a_low = builder.add(off, a_stride)
        builder.call(load, [_tile(5), _at(builder, a_addr, a_low), _i64(64)])  # rows 16-31
        builder.call(load, [_tile(6), _at(builder, b_addr, off), _i64(64)])  # columns 0-15
        b_next = builder.add(off, b_stride)
        builder.call(load, [_tile(7), _at(builder, b_addr, b_next), _i64(64)])  # 16-31
        for c, a, b in ((0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7)):
            builder.call(dot, [_tile(c), _tile(a), _tile(b)])
        kk_next = builder.add(kk, _i64(1))
        kk.add_incoming(_i64(0), entry)
        kk.add_incoming(kk_next, loop)
        builder.cbranch(builder.icmp_signed("<", kk_next, kc), loop, done)

        builder.position_at_end(done)
        low = builder.mul(ldc, _i64(16))
        for t, offset in enumerate((_i64(0), _i64(64), low, builder.add(low, _i64(64)))):
            builder.call(store, [_tile(t), _at(builder, c_addr, offset), ldc])
        return context.get_dummy_value()

    return types.void(*([types.intp] * 7)), codegen


@intrinsic
def _dequantize_row32(
    typingctx, acc_addr, s, z, col_sum_addr, w_scale_addr, bias_addr, has_bias, y_addr
):
    """y[0:32] = (s * w_scale[n]) * float32(acc[n] - z * col_sum[n]) + bias[n] for one row
    of a block, in two 16-lane vectors (``vnni.emit_dequantize``, bit for bit as
    ``int8_quant.dequantize_tile``), without that function's per-row array views, which
    cost more than the 32 values here. Addresses of 32 int32 / float32 each; bias read if
    has_bias != 0."""

    def codegen(context, builder, signature, args):
        acc_addr, s, z, cs_addr, ws_addr, bias_addr, has_bias, y_addr = args
        i32x16, f32x16 = vnni._I32X16, vnni._F32X16
        z_vec = simd.splat(builder, builder.trunc(z, ir.IntType(32)), i32x16)
        s_vec = simd.splat(builder, s, f32x16)
        add_bias = builder.icmp_signed("!=", has_bias, _i64(0))
        for v in range(2):
            offset = _i64(64 * v)
            acc, col_sum = (
                vnni._byte_ptr(builder, addr, offset, i32x16) for addr in (acc_addr, cs_addr)
            )
            w_scale, bias = (
                vnni._byte_ptr(builder, addr, offset, f32x16) for addr in (ws_addr, bias_addr)
            )
            y = vnni.emit_dequantize(
                builder,
                builder.load(acc, align=4),
                z_vec,
                s_vec,
                builder.load(col_sum, align=4),
                builder.load(w_scale, align=4),
                builder.load(bias, align=4),
                add_bias,
            )
            builder.store(y, vnni._byte_ptr(builder, y_addr, offset, f32x16), align=4)
        return context.get_dummy_value()

    sig = types.void(
        types.intp,
        types.float32,
        types.intp,
        types.intp,
        types.intp,
        types.intp,
        types.intp,
        types.intp,
    )
    return sig, codegen


@njit(cache=True, nogil=True)
def tile_config():
    """The ``ldtilecfg`` operand: palette 1, eight tiles of 16 rows x 64 bytes. Made on each
    call (64 bytes): a global array would be frozen into the machine code."""
    config = np.zeros(64, dtype=np.uint8)
    config[0] = 1  # palette
    for t in range(8):
        config[16 + 2 * t] = 64  # bytes per row of tmm t (a little-endian uint16)
        config[48 + t] = 16  # rows of tmm t
    return config


# ----------------------------------------------------------------------------------------
# the linear layer
# ----------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _to_tiles(q, a_t, m0, m1):
    """a_t[r // 16, kk, r % 16, :] = q[r, 64 kk : 64 kk + 64] for rows m0 <= r < m1.

    q: uint8 [Mp, Kp] (rows, Kp a multiple of 64); a_t: uint8 [Mp/16, Kp/64, 16, 64]
    (tiles). Copied as 8-byte words through flat views: slicing 64 bytes at a time cost 4x,
    bytes one by one 10x."""
    kc = a_t.shape[1]
    src, dst = q.reshape(-1).view(np.uint64), a_t.reshape(-1).view(np.uint64)
    words = K_BLOCK // 8  # per tile row
    for r in range(m0, m1):
        d0 = ((r // 16) * kc * 16 + r % 16) * words  # row r of tile (r // 16, 0)
        s0 = r * kc * words
        for kk in range(kc):
            d, s = d0 + kk * 16 * words, s0 + kk * words
            for w in range(words):
                dst[d + w] = src[s + w]


@njit(cache=True, nogil=True)
def _linear_blocks(
    a_t, m0, m1, w_packed, j0, j1, n, s_x, z_x, col_sum, w_scale, bias, has_bias, y, config
):
    """y[m0:m1, 16 j0 : min(n, 16 j1)] from the quantized activation tiles a_t (rows padded
    to a multiple of 32 past m1 are read, never stored), block by block of 32 x 32, on this
    thread. m0 is a multiple of 32."""
    kq = w_packed.shape[1]
    tile_row, b_stride = np.intp(a_t.shape[1] * 1024), np.intp(kq * 64)
    acc = aligned_bytes(M_BLOCK * N_BLOCK * 4).view(np.int32).reshape((M_BLOCK, N_BLOCK))
    ldc, ldy = np.intp(N_BLOCK * 4), np.intp(y.shape[1] * 4)
    cs_addr, ws_addr = np.intp(col_sum.ctypes.data), np.intp(w_scale.ctypes.data)
    bias_addr, y_addr = np.intp(bias.ctypes.data), np.intp(y.ctypes.data)
    _amx_configure(np.intp(config.ctypes.data))
    for j in range(j0, j1, 2):
        n0, n1 = j * 16, min(n, (j + 2) * 16)
        # an odd last block of 16 columns reads the same 16 twice (never stored)
        b = np.intp(w_packed.ctypes.data) + j * b_stride
        step = b_stride if j + 1 < j1 else np.intp(0)
        for m in range(m0, m1, M_BLOCK):
            a = np.intp(a_t.ctypes.data) + (m // 16) * tile_row
            _amx_block(a, tile_row, b, step, np.intp(kq // 16), np.intp(acc.ctypes.data), ldc)
            rows = min(M_BLOCK, m1 - m)
            if n1 - n0 == N_BLOCK:
                hb = np.intp(1) if has_bias else np.intp(0)
                for r in range(rows):
                    _dequantize_row32(
                        np.intp(acc.ctypes.data) + r * ldc,
                        s_x[m + r],
                        np.intp(z_x[m + r]),
                        cs_addr + 4 * n0,
                        ws_addr + 4 * n0,
                        bias_addr + 4 * n0,
                        hb,
                        y_addr + (m + r) * ldy + 4 * n0,
                    )
            else:  # the last columns of N
                dequantize_tile(acc, m, rows, n0, n1, s_x, z_x, col_sum, w_scale, bias, has_bias, y)
    _amx_release()


@njit(cache=True, nogil=True)
def weight_status(w_packed, k, n):
    """OK if w_packed has the layout ``pack_weight`` gives a [K, N] layer, with zeros in
    the padding, else BAD_SHAPES or BAD_VALUES."""
    if w_packed.shape != weight_shape(k, n):
        return BAD_SHAPES
    return OK if padding_is_zero(w_packed, k, n) else BAD_VALUES


@njit(cache=True, nogil=True)
def column_units(w_packed, n):
    """The units of N the threads share: blocks of 16 columns (taken in pairs)."""
    return w_packed.shape[0]


@njit(cache=True, nogil=True)
def q_rows(m):
    """The quantized rows are padded to a multiple of M_BLOCK (the padded ones stay 0)."""
    return -(-m // M_BLOCK) * M_BLOCK


@njit(cache=True, nogil=True)
def split_columns(m, w_packed, threads):
    """Up to 64 rows, or fewer pairs of 16-column blocks than threads, the threads share N
    (each keeps its part of the weights in its own cache); else each takes rows."""
    return m <= 2 * M_BLOCK or (w_packed.shape[0] + 1) // 2 < threads


@njit(cache=True, nogil=True)
def panel(m, units, threads):
    """16-column blocks per thread when the threads share N: an even number (pairs)."""
    pairs = (units + 1) // 2
    return 2 * -(-pairs // threads)


@njit(cache=True, nogil=True)
def row_multiple():
    return M_BLOCK


@njit(cache=True, nogil=True)
def workspace(q, m):
    """(the activation tiles [Mp/16, Kp/64, 16, 64], the tile configuration); zeroes the
    rows of q past m, which the tiles read (and which are never stored)."""
    q[m:] = 0
    m_padded, kp = q.shape
    # aligned, so that no 64-byte row of a tile straddles two cache lines
    a_t = aligned_bytes(m_padded * kp).reshape((m_padded // 16, kp // K_BLOCK, 16, K_BLOCK))
    return a_t, tile_config()


@njit(cache=True, nogil=True)
def prepare(q, work, m0, m1):
    """Copy the quantized rows m0:m1 into the tiles (``_to_tiles``)."""
    _to_tiles(q, work[0], m0, m1)


@njit(cache=True, nogil=True)
def linear_rows(
    q, work, m0, m1, w_packed, j0, j1, n, s_x, z_x, col_sum, w_scale, bias, has_bias, y
):
    """y[m0:m1, 16 j0 : min(n, 16 j1)] from the activation tiles (``_linear_blocks``)."""
    a_t, config = work
    _linear_blocks(
        a_t, m0, m1, w_packed, j0, j1, n, s_x, z_x, col_sum, w_scale, bias, has_bias, y, config
    )


@njit(cache=True, nogil=True)
def linear_kernel(x, weight, col_sum, w_scale, bias, has_bias, y):
    """The quantized linear layer of ``quantized_linear_reference`` on the AMX path:
    ``parallel.run_layer`` (its status) with the steps above.

    x: float32 [M, K] (M >= 1); weight: int8 [ceil(N/16), Kp/4, 16, 4] (``pack_weight``);
    col_sum: int32 [N]; w_scale, bias: float32 [N]; y: float32 [M, N] out. For up to 64
    rows the threads split N (each keeps its part of the weights in its own cache), for
    more rows each thread takes a chunk of rows."""
    return parallel.run_layer(
        "amx", x, weight, col_sum, w_scale, bias, has_bias, y, False, parallel.options()
    )


@njit(cache=True, nogil=True)
def linear_kernel_serial(x, weight, col_sum, w_scale, bias, has_bias, y):
    """``linear_kernel`` on the calling thread (``parallel.run_layer_serial``)."""
    return parallel.run_layer_serial(
        "amx", x, weight, col_sum, w_scale, bias, has_bias, y, True, parallel.options()
    )


@njit(cache=True, nogil=True)
def linear_kernel_full(x, weight, col_sum, w_scale, bias, has_bias, y, serial, options):
    """``linear_kernel`` with every argument of ``parallel.run_layer``: on the calling
    thread only if ``serial``; ``options``: static activation scale and zero point, carried
    codes in and out, the activation of ``epilogue.py``."""
    return parallel.run_layer(
        "amx", x, weight, col_sum, w_scale, bias, has_bias, y, serial, options
    )


parallel.register("amx", sys.modules[__name__])
