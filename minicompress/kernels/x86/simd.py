"""Explicit SIMD for the CSR kernels and the inference attention: a W-float accumulator that
LLVM keeps in registers, and 16 x 16 transposes in registers.

Why: written as a plain ``for t in range(W)`` loop, LLVM unrolls the W accumulations into W
scalar FMAs and does not regroup them into vectors (checked with ``inspect_asm``:
``vfmadd231ss`` x 16). The helpers emit ``<W x float>`` LLVM operations on
a stack slot, which LLVM keeps in registers: one ``vbroadcastss`` and one or two
``vfmadd231ps zmm`` per stored weight. With ``NUMBA_DISABLE_JIT=1`` they are plain NumPy.

``vec_*`` operate on a ``<W x float>`` stack slot (W = 16 or 32, a literal): ``vec_max_first``
and ``vec_add_first`` take only the first n lanes of a row (a row's last keys, without
scalar stores of -inf or 0 before a vector load), ``vec_hmax`` and ``vec_hsum`` reduce the
slot to one float (``deploy/attention.py``'s softmax: LLVM does not vectorize a max
reduction without ``nnan``, which the package never sets); ``transpose_tile``
packs 16 rows of x into 16 rows of a block of x.T; ``store_full_tile_t`` stores a 16 x W
tile of sums transposed, scaled and biased. Each is an ``@intrinsic`` that writes LLVM IR,
reached through an ``@overload`` of a NumPy function of the same name that runs instead
with ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload


def splat(builder, scalar, vector_type: ir.VectorType):
    """Broadcast a scalar to every lane (``vpbroadcastd``/``vbroadcastss``)."""
    undefined = ir.Constant(vector_type, ir.Undefined)
    one = builder.insert_element(undefined, scalar, ir.Constant(ir.IntType(32), 0))
    lanes0 = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(one, undefined, lanes0)


def _vector_type(width: types.IntegerLiteral) -> ir.VectorType:
    return ir.VectorType(ir.FloatType(), width.literal_value)


@intrinsic
def _ir_vec_alloc(typingctx, width):
    """A stack slot of ``width`` float32 (a ``<W x float>``), as a float32 pointer."""
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        slot = cgutils.alloca_once(builder, _vector_type(width))  # in the entry block
        return builder.bitcast(slot, ir.FloatType().as_pointer())

    return types.CPointer(types.float32)(width), codegen


@intrinsic
def _ir_vec_zero(typingctx, acc, width):
    """acc[0:W] = 0."""
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        vt = _vector_type(width)
        builder.store(ir.Constant(vt, None), builder.bitcast(args[0], vt.as_pointer()))
        return context.get_dummy_value()

    return types.none(acc, width), codegen


@intrinsic
def _ir_vec_fma(typingctx, acc, v, address, width):
    """acc[0:W] += v * row[0:W], where row is W float32 at byte ``address`` (any alignment)."""
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        vt = _vector_type(width)
        acc_ptr = builder.bitcast(args[0], vt.as_pointer())
        row = builder.load(builder.inttoptr(args[2], vt.as_pointer()), align=4)
        v1 = builder.insert_element(ir.Constant(vt, None), args[1], ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), width.literal_value), None)
        splat = builder.shuffle_vector(v1, ir.Constant(vt, None), zeros)  # [v, v, ..., v]
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{width.literal_value}f32"
        )
        builder.store(builder.call(fma, [splat, row, builder.load(acc_ptr)]), acc_ptr)
        return context.get_dummy_value()

    return types.none(acc, types.float32, types.intp, width), codegen


@intrinsic
def _ir_vec_store(typingctx, acc, address, width):
    """row[0:W] = acc[0:W], where row is W float32 at byte ``address`` (any alignment)."""
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        vt = _vector_type(width)
        value = builder.load(builder.bitcast(args[0], vt.as_pointer()))
        builder.store(value, builder.inttoptr(args[1], vt.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(acc, types.intp, width), codegen


@intrinsic
def _ir_vec_add(typingctx, acc, other, width):
    """acc[0:W] += other[0:W]."""
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        vt = _vector_type(width)
        a = builder.bitcast(args[0], vt.as_pointer())
        b = builder.bitcast(args[1], vt.as_pointer())
        builder.store(builder.fadd(builder.load(a), builder.load(b)), a)
        return context.get_dummy_value()

    return types.none(acc, other, width), codegen


@intrinsic
def _ir_vec_fill(typingctx, acc, value, width):
    """acc[0:W] = value."""
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        vt = _vector_type(width)
        builder.store(splat(builder, args[1], vt), builder.bitcast(args[0], vt.as_pointer()))
        return context.get_dummy_value()

    return types.none(acc, types.float32, width), codegen


def _first_lanes(builder, n, width: int):
    """The <W x i1> mask of lanes l < n (n: an intp; n >= W: every lane)."""
    i32 = ir.IntType(32)
    w = ir.Constant(n.type, width)
    clamped = builder.select(builder.icmp_signed("<", n, w), n, w)
    lanes = ir.Constant(ir.VectorType(i32, width), list(range(width)))
    bound = splat(builder, builder.trunc(clamped, i32), ir.VectorType(i32, width))
    return builder.icmp_signed("<", lanes, bound)


@intrinsic
def _ir_vec_max_first(typingctx, acc, address, n, width):
    """acc[l] = max(acc[l], row[l]) for l < n (lanes l >= n keep acc), where row is W float32
    at byte ``address`` (any alignment; all W are read): ``row > acc ? row : acc``, one
    ``vmaxps`` under a mask (a NaN in row leaves acc)."""
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        vt = _vector_type(width)
        acc_ptr = builder.bitcast(args[0], vt.as_pointer())
        row = builder.load(builder.inttoptr(args[1], vt.as_pointer()), align=4)
        old = builder.load(acc_ptr)
        first = _first_lanes(builder, args[2], width.literal_value)
        take = builder.and_(builder.fcmp_ordered(">", row, old), first)
        builder.store(builder.select(take, row, old), acc_ptr)
        return context.get_dummy_value()

    return types.none(acc, types.intp, types.intp, width), codegen


@intrinsic
def _ir_vec_add_first(typingctx, acc, address, n, width):
    """acc[l] += row[l] for l < n (lanes l >= n keep acc), where row is W float32 at byte
    ``address`` (any alignment; all W are read, what lies past n is ignored)."""
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        vt = _vector_type(width)
        acc_ptr = builder.bitcast(args[0], vt.as_pointer())
        row = builder.load(builder.inttoptr(args[1], vt.as_pointer()), align=4)
        first = _first_lanes(builder, args[2], width.literal_value)
        row = builder.select(first, row, ir.Constant(vt, None))
        builder.store(builder.fadd(builder.load(acc_ptr), row), acc_ptr)
        return context.get_dummy_value()

    return types.none(acc, types.intp, types.intp, width), codegen


def _halving_reduce(builder, value, width: int, combine):
    """combine(value[0:n/2], value[n/2:n]) with n = W, W/2, ..., 2: log2(W) shuffles and
    combines; the result is lane 0 of the last one."""
    n = width
    while n > 1:
        half = n // 2
        low = ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half)))
        high = ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half, n)))
        a = builder.shuffle_vector(value, value, low)
        b = builder.shuffle_vector(value, value, high)
        value, n = combine(a, b), half
    return builder.extract_element(value, ir.Constant(ir.IntType(32), 0))


@intrinsic
def _ir_vec_hmax(typingctx, acc, width):
    """max(acc[0:W]), by halving (``_halving_reduce``); acc without NaN."""
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        vt = _vector_type(width)
        acc_ptr = builder.bitcast(args[0], vt.as_pointer())
        value = builder.load(acc_ptr)

        def combine(a, b):
            return builder.select(builder.fcmp_ordered(">", b, a), b, a)

        return _halving_reduce(builder, value, width.literal_value, combine)

    return types.float32(acc, width), codegen


@intrinsic
def _ir_vec_hsum(typingctx, acc, width):
    """acc[0] + ... + acc[W - 1], by halving (``_halving_reduce``: pairwise, not left to
    right)."""
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        vt = _vector_type(width)
        acc_ptr = builder.bitcast(args[0], vt.as_pointer())
        value = builder.load(acc_ptr)
        return _halving_reduce(builder, value, width.literal_value, builder.fadd)

    return types.float32(acc, width), codegen


def _transpose16(builder, rows: list) -> list:
    """Transpose 16 vectors of 16 floats in registers: result[t][i] = rows[i][t].

    Four stages (b = 8, 4, 2, 1); each swaps the off-diagonal b x b blocks of every 2b x 2b
    block with two ``shufflevector`` per pair of rows (``vpermt2ps``): 64 shuffles for 256
    floats, instead of 256 scalar loads and stores.
    """
    rows = list(rows)
    for b in (8, 4, 2, 1):
        low = ir.Constant(
            ir.VectorType(ir.IntType(32), 16), [j if j & b == 0 else 16 + j - b for j in range(16)]
        )
        high = ir.Constant(
            ir.VectorType(ir.IntType(32), 16), [j + b if j & b == 0 else 16 + j for j in range(16)]
        )
        for i in range(16):
            if i & b == 0:
                a, c = rows[i], rows[i + b]
                rows[i] = builder.shuffle_vector(a, c, low)
                rows[i + b] = builder.shuffle_vector(a, c, high)
    return rows


@intrinsic
def _ir_store_tile_t(typingctx, tile_addr, out_addr, ldo, scale_addr, bias_addr, width):
    """out[t, i] = scale[i] * tile[i, t] + bias[i] for i < 16, t < W: a full tile of 16
    output features x W tokens, stored transposed (16 contiguous floats per token row).

    tile_addr: float32 [16, W] row-major; out_addr: float32 rows ``ldo`` bytes apart;
    scale_addr, bias_addr: 16 float32 each. W = 16 or 32 (two 16 x 16 transposes).
    """
    if not isinstance(width, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        tile_addr, out_addr, ldo, scale_addr, bias_addr, _ = args
        vt = ir.VectorType(ir.FloatType(), 16)
        w = width.literal_value

        def at(address, offset):  # a <16 x float> pointer at address + offset bytes
            shifted = builder.add(address, offset)
            return builder.inttoptr(shifted, vt.as_pointer())

        i64 = ir.IntType(64)
        scale = builder.load(at(scale_addr, ir.Constant(i64, 0)), align=4)
        bias = builder.load(at(bias_addr, ir.Constant(i64, 0)), align=4)
        for h in range(w // 16):
            rows = [
                builder.load(at(tile_addr, ir.Constant(i64, (i * w + 16 * h) * 4)), align=4)
                for i in range(16)
            ]
            for t, column in enumerate(_transpose16(builder, rows)):
                y = builder.fadd(builder.fmul(column, scale), bias)
                offset = builder.mul(ldo, ir.Constant(i64, 16 * h + t))
                builder.store(y, at(out_addr, offset), align=4)
        return context.get_dummy_value()

    return types.none(types.intp, types.intp, types.intp, types.intp, types.intp, width), codegen


@intrinsic
def _ir_transpose_tile(typingctx, src_addr, lds, dst_addr, ldd):
    """dst[i, t] = src[t, i] for i, t < 16: 16 rows of 16 float32 ``lds`` bytes apart in,
    16 rows ``ldd`` bytes apart out (16 loads, 64 shuffles, 16 stores)."""

    def codegen(context, builder, sig, args):
        src_addr, lds, dst_addr, ldd = args
        vt = ir.VectorType(ir.FloatType(), 16)

        def row(address, ld, i):
            offset = builder.mul(ld, ir.Constant(ir.IntType(64), i))
            return builder.inttoptr(builder.add(address, offset), vt.as_pointer())

        rows = [builder.load(row(src_addr, lds, i), align=4) for i in range(16)]
        for i, column in enumerate(_transpose16(builder, rows)):
            builder.store(column, row(dst_addr, ldd, i), align=4)
        return context.get_dummy_value()

    return types.none(types.intp, types.intp, types.intp, types.intp), codegen


# The same twelve operations as plain Python on NumPy arrays, so that the kernels also run
# with NUMBA_DISABLE_JIT=1 (for debugging); compiled code uses the LLVM versions above.


def _float_row(address: int, width: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_float * int(width)).from_address(int(address)))


def vec_alloc(width):
    return np.zeros(width, dtype=np.float32)


def vec_zero(acc, width):
    acc[:] = 0.0


def vec_fma(acc, v, address, width):
    acc += np.float32(v) * _float_row(address, width)


def vec_store(acc, address, width):
    _float_row(address, width)[:] = acc


def vec_add(acc, other, width):
    acc += other


def vec_fill(acc, value, width):
    acc[:] = value


def vec_max_first(acc, address, n, width):
    row, first = _float_row(address, width), np.arange(width) < n
    acc[:] = np.where(first & (row > acc), row, acc)


def vec_add_first(acc, address, n, width):
    row, first = _float_row(address, width), np.arange(width) < n
    acc += np.where(first, row, np.float32(0.0))


def vec_hmax(acc, width):
    return np.float32(acc.max())


def vec_hsum(acc, width):
    return np.float32(acc.sum(dtype=np.float32))


def store_full_tile_t(tile, out, scale, bias, m0, n0, width):
    """out[m0 + t, n0 + i] = scale[n0 + i] * tile[i, t] + bias[n0 + i] for i < 16, t < W:
    ``_store_tile`` for a full tile, transposed in registers (``_ir_store_tile_t``).
    tile: float32 [16, W]; out: float32 [M, N], C-contiguous."""
    s, b = scale[n0 : n0 + 16], bias[n0 : n0 + 16]  # [16]
    out[m0 : m0 + width, n0 : n0 + 16] = tile[:, :width].T * s + b


def transpose_tile(src, m0, k0, xp, b, t0):
    """xp[b, k0 + i, t0 + t] = src[m0 + t, k0 + i] for i, t < 16 (``_ir_transpose_tile``).
    src: float32 [M, K], xp: float32 [n_blocks, K, W], both C-contiguous."""
    xp[b, k0 : k0 + 16, t0 : t0 + 16] = src[m0 : m0 + 16, k0 : k0 + 16].T


@overload(vec_alloc)
def _ol_vec_alloc(width):
    return lambda width: _ir_vec_alloc(width)


@overload(vec_zero)
def _ol_vec_zero(acc, width):
    return lambda acc, width: _ir_vec_zero(acc, width)


@overload(vec_fma)
def _ol_vec_fma(acc, v, address, width):
    return lambda acc, v, address, width: _ir_vec_fma(acc, v, address, width)


@overload(vec_store)
def _ol_vec_store(acc, address, width):
    return lambda acc, address, width: _ir_vec_store(acc, address, width)


@overload(vec_add)
def _ol_vec_add(acc, other, width):
    return lambda acc, other, width: _ir_vec_add(acc, other, width)


@overload(vec_fill)
def _ol_vec_fill(acc, value, width):
    return lambda acc, value, width: _ir_vec_fill(acc, np.float32(value), width)


@overload(vec_max_first)
def _ol_vec_max_first(acc, address, n, width):
    return lambda acc, address, n, width: _ir_vec_max_first(acc, address, n, width)


@overload(vec_add_first)
def _ol_vec_add_first(acc, address, n, width):
    return lambda acc, address, n, width: _ir_vec_add_first(acc, address, n, width)


@overload(vec_hmax)
def _ol_vec_hmax(acc, width):
    return lambda acc, width: _ir_vec_hmax(acc, width)


@overload(vec_hsum)
def _ol_vec_hsum(acc, width):
    return lambda acc, width: _ir_vec_hsum(acc, width)


@overload(transpose_tile)
def _ol_transpose_tile(src, m0, k0, xp, b, t0):
    def impl(src, m0, k0, xp, b, t0):
        lds, ldd = src.strides[0], xp.strides[1]
        source = src.ctypes.data + m0 * lds + k0 * 4
        _ir_transpose_tile(source, lds, xp.ctypes.data + b * xp.strides[0] + k0 * ldd + t0 * 4, ldd)

    return impl


@overload(store_full_tile_t)
def _ol_store_full_tile_t(tile, out, scale, bias, m0, n0, width):
    def impl(tile, out, scale, bias, m0, n0, width):
        ldo = out.strides[0]
        _ir_store_tile_t(
            tile.ctypes.data,
            out.ctypes.data + m0 * ldo + n0 * 4,
            ldo,
            scale.ctypes.data + n0 * 4,
            bias.ctypes.data + n0 * 4,
            width,
        )

    return impl
