"""The sparse linear layer for a few rows of x (SpMV): each output is a dot product gathered from x.

    out[m, n] = scale[n] * sum_{j in row n of w_t} data[j] * x[m, indices[j]] + bias[n]

For M < ``csr_spmm.SPMV_MAX_M`` packing x into blocks (the SpMM of ``csr_spmm.py``) costs
more than it saves, so each row n of w_t is read once per row of x, 16 entries at a time:

    mask  = lanes < entries left in the row          (the row's last chunk is partial)
    idx   = indices[j:j+16]                          one masked vector load
    v     = data[j:j+16]                             one masked vector load (int8 -> float32)
    xs    = x[m, idx]                                one masked gather (``vgatherdps``)
    acc  += v * xs                                   16 lanes, a multiply then an add
    out   = scale[n] * (sum of the 16 lanes, in a fixed tree) + bias[n]

The same LLVM operations run on every CPU: LLVM turns the masked loads and the gather into
AVX-512 instructions where the CPU has them and into plain loads where it has not, and the
multiply, the add and the summation tree are spelled out (no FMA contraction, no reassociation),
so every CPU gives the same bits. Measured here on 26K stored weights, one thread: 12-17 us
against 19-25 us for four scalar multiply-add chains, and scipy's 22-28 us. Not measured:
CPUs whose gathers are slow (Intel 6th-11th generation with the 2023 "Downfall" microcode
fix, AMD before Zen 4), where scalar chains in the same lane order might win.

The structure of w_t is checked as it is read, at no extra pass: each row's ``indptr`` ends must
lie in [0, nnz] and not decrease; in each chunk, an index outside [0, K) or not above the one
before it (within the row) is a bad lane. A chunk with a bad lane is never gathered: the row is
reported to ``csr.py``, which raises ``check_csr``'s message. Masked-off lanes are never read.

With ``NUMBA_DISABLE_JIT=1``, ``_gather_fma`` and ``_lane_sum`` are the NumPy functions below,
which compute the same thing lane by lane.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from minicompress.kernels import row_parts
from minicompress.kernels.x86 import simd

LANES = 16  # one AVX-512 register of float32

_F32, _I32, _I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
_MASK = ir.VectorType(ir.IntType(1), LANES)


class _VectorGEP(ir.instructions.Instruction):
    """``getelementptr float, ptr base, <16 x i64> index``: 16 addresses from one base.

    llvmlite's ``builder.gep`` takes scalar indices only. This form, a scalar base and a vector
    of sign-extended int32 indices, is the one LLVM lowers to ``vgatherdps`` with 32-bit indices
    (a vector of 64-bit addresses becomes two ``vgatherqps`` of 8: 1.1-1.6x slower, in two
    runs not side by side).
    """

    def __init__(self, parent, base, index):
        super().__init__(parent, ir.VectorType(base.type, LANES), "getelementptr", [base, index])

    def descr(self, buf):
        base, index = self.operands
        buf.append(
            f"getelementptr {base.type.pointee}, {base.type} {base.get_reference()}, "
            f"{index.type} {index.get_reference()}\n"
        )


def _masked_load(builder, pointer, element, mask):
    """``llvm.masked.load``: lanes where mask is false are 0 and their memory is not touched."""
    vt = ir.VectorType(element, LANES)
    name = "f32" if element == _F32 else f"i{element.width}"
    fn = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vt, [vt.as_pointer(), _I32, _MASK, vt]),
        f"llvm.masked.load.v{LANES}{name}.p0",
    )
    align = ir.Constant(_I32, max(1, getattr(element, "width", 32) // 8))
    return builder.call(
        fn, [builder.bitcast(pointer, vt.as_pointer()), align, mask, ir.Constant(vt, None)]
    )


@intrinsic
def _ir_gather_fma(typingctx, acc, data, indices, j, count, x_addr, k_total, first):
    """acc[l] += data[j + l] * x[indices[j + l]] for lanes l < min(count, 16), unless a lane's
    index is outside [0, K) or (l > 0 or not ``first``) not above indices[j + l - 1]: then
    nothing is gathered and the result is True. acc: float32 [16] slot; x_addr: x[m, 0]."""
    if not (isinstance(data, types.Array) and isinstance(indices, types.Array)):
        return None

    def codegen(context, builder, sig, args):
        acc_p, data_a, indices_a, j, count, x_addr, k_total, first = args
        data_t, indices_t = sig.args[1], sig.args[2]
        vf = ir.VectorType(_F32, LANES)
        vi = ir.VectorType(_I32, LANES)
        lanes = ir.Constant(vi, list(range(LANES)))
        n_valid = builder.trunc(
            builder.select(
                builder.icmp_signed("<", count, ir.Constant(count.type, LANES)),
                count,
                ir.Constant(count.type, LANES),
            ),
            _I32,
        )
        mask = builder.icmp_signed("<", lanes, simd.splat(builder, n_valid, vi))
        # the indices, widened to int32; negative ones are huge as unsigned: out of range
        idx_ptr = builder.gep(context.make_array(indices_t)(context, builder, indices_a).data, [j])
        idx_elem = context.get_data_type(indices_t.dtype)
        idx = builder.sext(_masked_load(builder, idx_ptr, idx_elem, mask), vi)
        k32 = simd.splat(builder, builder.trunc(k_total, _I32), vi)
        bad = builder.and_(mask, builder.icmp_unsigned(">=", idx, k32))
        # strictly increasing: compare with the index one entry before (not for a row's first)
        skipped = simd.splat(builder, builder.zext(first, _I32), vi)  # 1: a row's first chunk
        has_prev = builder.and_(mask, builder.icmp_signed(">=", lanes, skipped))
        prev_ptr = builder.gep(idx_ptr, [ir.Constant(_I64, -1)])
        prev = builder.sext(_masked_load(builder, prev_ptr, idx_elem, has_prev), vi)
        bad = builder.or_(bad, builder.and_(has_prev, builder.icmp_signed("<=", idx, prev)))
        gather_mask = builder.and_(mask, builder.not_(bad))
        # the values, as float32
        data_ptr = builder.gep(context.make_array(data_t)(context, builder, data_a).data, [j])
        values = _masked_load(builder, data_ptr, context.get_data_type(data_t.dtype), mask)
        if data_t.dtype != types.float32:
            values = builder.sitofp(values, vf)
        x_base = builder.inttoptr(x_addr, _F32.as_pointer())
        addresses = _VectorGEP(builder.block, x_base, builder.sext(idx, ir.VectorType(_I64, LANES)))
        builder._insert(addresses)
        gather = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vf, [addresses.type, _I32, _MASK, vf]),
            f"llvm.masked.gather.v{LANES}f32.v{LANES}p0",
        )
        xs = builder.call(
            gather, [addresses, ir.Constant(_I32, 4), gather_mask, ir.Constant(vf, None)]
        )
        acc_v = builder.bitcast(acc_p, vf.as_pointer())
        builder.store(builder.fadd(builder.load(acc_v), builder.fmul(values, xs)), acc_v)
        any_bad = builder.bitcast(bad, ir.IntType(LANES))
        return builder.icmp_unsigned("!=", any_bad, ir.Constant(ir.IntType(LANES), 0))

    sig = types.boolean(
        acc, data, indices, types.intp, types.intp, types.intp, types.intp, types.boolean
    )
    return sig, codegen


@intrinsic
def _ir_lane_sum(typingctx, acc):
    """(acc[0:8] + acc[8:16]) -> (.[0:4] + .[4:8]) -> (.[0:2] + .[2:4]) -> .[0] + .[1]."""

    def codegen(context, builder, sig, args):
        v = builder.load(builder.bitcast(args[0], ir.VectorType(_F32, LANES).as_pointer()))
        n = LANES
        while n > 1:
            half = n // 2
            low = ir.Constant(ir.VectorType(_I32, half), list(range(half)))
            high = ir.Constant(ir.VectorType(_I32, half), list(range(half, n)))
            v = builder.fadd(builder.shuffle_vector(v, v, low), builder.shuffle_vector(v, v, high))
            n = half
        return builder.extract_element(v, ir.Constant(_I32, 0))

    return types.float32(acc), codegen


# The same two operations in NumPy, for NUMBA_DISABLE_JIT=1; compiled code uses the above.


def _lane_sum(acc):
    v = acc
    while v.shape[0] > 1:
        half = v.shape[0] // 2
        v = v[:half] + v[half:]
    return v[0]


def _gather_fma(acc, data, indices, j, count, x, m, first):
    """``_ir_gather_fma`` on arrays: x float32 [M, K], row m; True if a lane is bad."""
    c = min(count, LANES)
    idx = indices[j : j + c].astype(np.int64)  # [c]
    prev = indices[j - 1 : j + c - 1].astype(np.int64) if j > 0 else np.array([-1, *idx[:-1]])
    checked = np.arange(c) >= (1 if first else 0)
    if np.any((idx < 0) | (idx >= x.shape[1])) or np.any(checked & (idx <= prev)):
        return True
    acc[:c] += data[j : j + c].astype(np.float32) * x[m, idx]
    return False


@overload(_lane_sum)
def _ol_lane_sum(acc):
    return lambda acc: _ir_lane_sum(acc)


@overload(_gather_fma)
def _ol_gather_fma(acc, data, indices, j, count, x, m, first):
    def impl(acc, data, indices, j, count, x, m, first):
        x_row = x.ctypes.data + m * x.strides[0]
        return _ir_gather_fma(acc, data, indices, j, count, x_row, x.shape[1], first)

    return impl


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def spmv_part(indptr, indices, data, x, scale, bias, out, r0, r1):
    """Rows r0:r1 of out[m, n] = scale[n] * sum_j data[j] * x[m, indices[j]] + bias[n];
    returns the first row found not to be a valid CSR, else -1.
    x: float32 [M, K] (small M), out: float32 [M, N]."""
    nnz = indices.shape[0]
    acc = simd.vec_alloc(LANES)  # [16]
    for m in range(x.shape[0]):
        for n in range(r0, r1):
            lo, hi = indptr[n], indptr[n + 1]
            if lo < 0 or hi < lo or hi > nnz:
                return n
            simd.vec_zero(acc, LANES)
            first = True
            for j in range(lo, hi, LANES):
                if _gather_fma(acc, data, indices, j, hi - j, x, m, first):
                    return n
                first = False
            out[m, n] = scale[n] * _lane_sum(acc) + bias[n]
    return -1


@njit(parallel=True, cache=True, nogil=True)
def spmv(indptr, indices, data, x, scale, bias, out, min_work):
    """``spmv_part`` over all rows: on the calling thread below ``min_work`` stored weights x
    rows of x, else in parallel over ``row_parts.balanced_parts``. Returns how many parts found
    an invalid CSR. (The choice is made here, not in Python, where asking Numba for its
    number of threads costs 1 us: a tenth of a product of 26K weights.)"""
    n_rows = indptr.shape[0] - 1
    if not row_parts.csr_ends_fit(indptr, indices, data, out.shape[1]):
        return 1
    count = row_parts.n_parts(n_rows, data.shape[0] * x.shape[0], min_work)
    if count == 1:
        return np.int64(spmv_part(indptr, indices, data, x, scale, bias, out, 0, n_rows) >= 0)
    parts = row_parts.balanced_parts(indptr, count)  # [count + 1]
    n_bad = 0
    for p in prange(count):
        n_bad += np.int64(
            spmv_part(indptr, indices, data, x, scale, bias, out, parts[p], parts[p + 1]) >= 0
        )
    return n_bad
