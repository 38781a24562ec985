"""What every kernel computes, in plain NumPy.

These functions are the contracts (tier 0: read them first). Each fast kernel in this
package (tier 1, Numba for any CPU; tier 2, ``x86/``: AVX2, AVX-512 VNNI, AMX) has the same
signature and must give the same result: integers bit for bit, and for the int8 layer the
same float32 bits too; CSR products to float32 rounding (another summation order). Tests
run both and compare.

Conventions (see DESIGN.md):
- A linear layer stores its weight ``w`` as ``[K, N]`` (in, out) so that ``y = x @ w + b``.
- int8 path: activations uint8 (asymmetric, zero point per row), weights int8 (symmetric,
  one scale per output channel), products accumulated in int32.
- Non-finite values: the quantizers and the int8 layer refuse NaN and inf (ValueError naming
  the argument), and so does every kernel path of the int8 layer, at packing time for the
  weights and at call time for the activations. (The CSR products compute with whatever
  floats they are given: NaN and inf propagate as in a dense product.)
- Sparse path: the weight is kept as CSR of ``w.T`` (``[N, K]``, one row per output
  feature, the layout of PyTorch's ``nn.Linear.weight``), so ``x @ w`` is a
  CSR x dense product ``(w.T @ x.T).T`` and every output feature is an independent sparse
  dot product.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Largest K for which sum_k a[m, k] * b[k, n] cannot overflow int32 whatever the values:
# |a * b| <= 255 * 128 = 32640 for uint8 x int8 (and 128 * 128 for int8 x int8).
MAX_K_INT32 = (2**31 - 1) // (255 * 128)  # = 65793


# ----------------------------------------------------------------------------------------
# checks shared by references and kernels
# ----------------------------------------------------------------------------------------


def check_array(name: str, a: object, dtypes: tuple, ndim: int) -> np.ndarray:
    """Refuse what a kernel cannot take, naming the argument, the value and what is allowed."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in [np.dtype(d) for d in dtypes]:
        allowed = ", ".join(np.dtype(d).name for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {a.shape}")
    return a


def check_vector(name: str, v: object, n: int) -> np.ndarray:
    """Refuse a per-output-channel vector (scale, bias) that is not float32 [n]."""
    check_array(name, v, (np.float32,), 1)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {v.shape}")
    return v


def check_index_dtype(index_dtype, n_cols: int) -> np.dtype:
    """The CSR column-index dtype: int32, or int16 when the columns fit."""
    index_dtype = np.dtype(index_dtype)
    if index_dtype not in (np.dtype(np.int32), np.dtype(np.int16)):
        raise TypeError(f"index_dtype must be int32 or int16; got {index_dtype}")
    if n_cols - 1 > np.iinfo(index_dtype).max:
        raise ValueError(
            f"a has {n_cols} columns: too many for index_dtype {index_dtype} "
            f"(at most {np.iinfo(index_dtype).max + 1})"
        )
    return index_dtype


def check_finite(name: str, a: np.ndarray) -> np.ndarray:
    """Refuse an array holding NaN or inf, naming it and where the first one is."""
    bad = ~np.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite; it holds {a[where]} at index {where}")
    return a


def check_static_activation(act_scale: object, act_zero_point: object) -> tuple | None:
    """The static activation quantization of an int8 layer, checked: (float32 scale, int
    zero point), or None for dynamic per-row ranges (both arguments None).

    act_scale: a real number, finite and > 0 once rounded to float32; act_zero_point: an
    integer in [0, 255] (the uint8 code of 0.0).
    """
    if act_scale is None and act_zero_point is None:
        return None
    if act_scale is None or act_zero_point is None:
        raise ValueError(
            "act_scale and act_zero_point go together (a static activation quantization) or "
            f"are both None (dynamic); got act_scale={act_scale!r}, "
            f"act_zero_point={act_zero_point!r}"
        )
    if isinstance(act_scale, (bool, np.bool_)) or not isinstance(
        act_scale, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"act_scale must be a real number; got {type(act_scale).__name__}")
    with np.errstate(over="ignore"):
        scale = np.float32(act_scale)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"act_scale must be finite and > 0 in float32; got {act_scale!r}")
    if isinstance(act_zero_point, (bool, np.bool_)) or not isinstance(
        act_zero_point, (int, np.integer)
    ):
        raise TypeError(f"act_zero_point must be an integer; got {type(act_zero_point).__name__}")
    if not 0 <= act_zero_point <= 255:
        raise ValueError(f"act_zero_point must be in [0, 255]; got {act_zero_point}")
    return scale, int(act_zero_point)


def check_k_fits_int32(k: int) -> None:
    """Refuse a reduction length whose int32 accumulation could overflow."""
    if k > MAX_K_INT32:
        raise ValueError(
            f"K={k} is too large for exact int32 accumulation of uint8 x int8 products "
            f"(at most {MAX_K_INT32}); split the reduction"
        )


# ----------------------------------------------------------------------------------------
# int8 GEMM and the quantized linear layer
# ----------------------------------------------------------------------------------------


def int8_gemm_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer matrix product ``c = a @ b`` with int32 accumulation.

    a: uint8 or int8 [M, K]; b: int8 [K, N]  ->  c: int32 [M, N].

    NumPy's own ``a @ b`` on int8 arrays accumulates in int8 and overflows silently, so both
    operands are widened first. ``K > MAX_K_INT32`` is refused: the sum could overflow int32.
    """
    check_array("a", a, (np.uint8, np.int8), 2)
    check_array("b", b, (np.int8,), 2)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a is {a.shape} and b is {b.shape}: a.shape[1] must equal b.shape[0]")
    check_k_fits_int32(a.shape[1])
    # int64 products and sums are exact for any K; the range check above makes int32 exact.
    c = a.astype(np.int64) @ b.astype(np.int64)  # [M, K] @ [K, N] -> [M, N]
    return c.astype(np.int32)


def quantize_weight_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization with one scale per output channel (column of ``w``).

    s_n = max_k |w[k, n]| / 127,  q[k, n] = clip(round(w[k, n] / s_n), -127, 127).

    w: float32 [K, N], finite  ->  q: int8 [K, N], scale: float32 [N].
    An all-zero column gets scale 1 (any scale reproduces zeros; it avoids 0/0). NaN or inf
    is refused (one would make its column's scale meaningless). Rounding is half to even
    (``np.rint``), as in PyTorch; note the /127 (PyTorch's symmetric qint8 observer uses
    /127.5 and the range [-128, 127]).
    """
    check_array("w", w, (np.float32,), 2)
    check_finite("w", w)
    amax = np.abs(w).max(axis=0)  # [K, N] -> [N]
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)  # [K, N]
    return q, scale


def quantize_uint8(x: np.ndarray, scale, zero_point) -> np.ndarray:
    """Asymmetric uint8 codes of x: q = clip(round(x / s) + z, 0, 255), round half to even.

    x: float32 [...]; scale: float32 > 0 and zero_point: integer in [0, 255], each a scalar
    (per tensor) or an array broadcasting against x (per row: [M, 1])  ->  uint8, x's shape.
    x / s is a true float32 division (PyTorch's fake quantization multiplies by 1 / s, which
    can round a tie differently). Values beyond the range clip to 0 or 255.
    """
    check_finite("x", x)
    with np.errstate(over="ignore"):  # x / s beyond float32 is +-inf: it clips like any other
        q = np.rint(x / scale) + zero_point  # integers (or +-inf), exact in float32 / float64
    return np.clip(q, 0, 255).astype(np.uint8)


def quantize_rows_uint8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dynamic asymmetric uint8 quantization with a scale and zero point per row (token).

    lo = min(min_k x[m, k], 0), hi = max(max_k x[m, k], 0)   (range widened to hold 0),
    s_m = (hi - lo) / 255,  z_m = clip(round(-lo / s_m), 0, 255),
    q[m, k] = clip(round(x[m, k] / s_m) + z_m, 0, 255)        (``quantize_uint8``).

    x: float32 [M, K], finite  ->  q: uint8 [M, K], scale: float32 [M], zero_point: int32 [M].
    Holding 0 in the range makes zero (padding, ReLU/GELU zeros) exact. A row of zeros gets
    scale 1 and zero point 0, and so does a row whose range is so small that (hi - lo) / 255
    underflows to 0 in float32 (below about 3.6e-43). Rounding is half to even. NaN or inf
    is refused, and so is a row whose range hi - lo overflows float32 (|x| near 3.4e38: its
    scale would be inf).
    """
    check_array("x", x, (np.float32,), 2)
    check_finite("x", x)
    lo = np.minimum(x.min(axis=1), np.float32(0.0))  # [M, K] -> [M]
    hi = np.maximum(x.max(axis=1), np.float32(0.0))  # [M, K] -> [M]
    with np.errstate(over="ignore"):
        span = hi - lo  # [M]
    if not np.isfinite(span).all():
        row = int(np.argmax(~np.isfinite(span)))
        raise ValueError(
            f"x must have rows whose range max - min fits float32; row {row} spans "
            f"[{lo[row]}, {hi[row]}]"
        )
    scale = (span / np.float32(255.0)).astype(np.float32)  # [M]
    scale[~(scale > 0)] = 1.0  # rows of zeros, and ranges below 255 x 1.4e-45 (it underflows)
    zero_point = np.clip(np.rint(-lo / scale), 0, 255).astype(np.int32)  # [M]
    q = quantize_uint8(x, scale[:, None], zero_point[:, None])  # [M, K]
    return q, scale, zero_point


def int8_linear_from_codes(
    q_x: np.ndarray,
    s_x: np.ndarray,
    z_x: np.ndarray,
    w_q: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray | None,
) -> np.ndarray:
    """Steps 2-4 of the int8 linear layer, from the quantized activations:

    2. integer GEMM:                  acc = q_x @ w_q            (int32 [M, N])
    3. zero-point correction:         acc -= z_x[:, None] * sum_k w_q[k, :]
    4. dequantize and add the bias:   y = s_x[:, None] * w_scale[None, :] * acc + bias

    Step 3 is exact in int32: sum_k (q_x - z_x) w_q = acc - z_x * colsum(w_q).

    q_x: uint8 [M, K]; s_x: float32 [M]; z_x: int32 [M]; w_q: int8 [K, N];
    w_scale: float32 [N]; bias: float32 [N] or None  ->  y: float32 [M, N].
    """
    acc = int8_gemm_reference(q_x, w_q)  # [M, N] int32
    col_sum = w_q.astype(np.int32).sum(axis=0)  # [K, N] -> [N]
    acc = acc - z_x[:, None] * col_sum[None, :]  # [M, N] int32
    y = (s_x[:, None] * w_scale[None, :]) * acc.astype(np.float32)  # [M, N]
    if bias is not None:
        y = y + bias
    return y.astype(np.float32)


def quantized_linear_reference(
    x: np.ndarray,
    w_q: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray | None = None,
    act_scale: float | None = None,
    act_zero_point: int | None = None,
) -> np.ndarray:
    """The int8 linear layer end to end: float32 in, float32 out.

    1. quantize x, either per row (dynamic):  q_x, s_x [M], z_x [M]  (``quantize_rows_uint8``)
       or with a static scale and zero point calibrated ahead of time (``act_scale``,
       ``act_zero_point``):  q_x = ``quantize_uint8(x, act_scale, act_zero_point)``,
       s_x = act_scale, z_x = act_zero_point for every row;
    2-4. integer GEMM, zero-point correction, dequantization and bias
       (``int8_linear_from_codes``).

    x: float32 [M, K], finite; w_q: int8 [K, N]; w_scale: float32 [N]; bias: float32 [N] or
    None; act_scale, act_zero_point: both None, or a float32 > 0 and an integer in [0, 255]
    (``check_static_activation``)  ->  y: float32 [M, N].
    """
    check_array("x", x, (np.float32,), 2)
    check_array("w_q", w_q, (np.int8,), 2)
    k, n = w_q.shape
    if x.shape[1] != k:
        raise ValueError(f"x is {x.shape} and w_q is {w_q.shape}: x.shape[1] must equal K={k}")
    check_vector("w_scale", w_scale, n)
    check_finite("w_scale", w_scale)
    if bias is not None:
        check_vector("bias", bias, n)
        check_finite("bias", bias)
    static = check_static_activation(act_scale, act_zero_point)
    if static is None:
        q_x, s_x, z_x = quantize_rows_uint8(x)  # [M, K] uint8, [M], [M]
    else:
        scale, zero_point = static
        q_x = quantize_uint8(x, scale, zero_point)  # [M, K] uint8
        s_x = np.full(x.shape[0], scale, dtype=np.float32)  # [M]
        z_x = np.full(x.shape[0], zero_point, dtype=np.int32)  # [M]
    return int8_linear_from_codes(q_x, s_x, z_x, w_q, w_scale, bias)


# ----------------------------------------------------------------------------------------
# CSR sparse matrices
# ----------------------------------------------------------------------------------------


class CSR(NamedTuple):
    """A sparse matrix [R, C] in compressed sparse row form.

    indptr:  int32 [R + 1]   row r holds entries indptr[r] : indptr[r + 1]
    indices: int32 or int16 [nnz]   column of each entry, increasing within a row
    data:    float32 or int8 [nnz]  value of each entry
    shape:   (R, C)
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    def nbytes(self) -> int:
        """Bytes of storage: the three arrays."""
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes)


def dense_to_csr(a: np.ndarray, index_dtype: type = np.int32) -> CSR:
    """CSR of a dense 2-D array, keeping its dtype (float32 or int8) and its non-zeros.

    a: float32 or int8 [R, C]  ->  CSR with indices of ``index_dtype`` (int32, or int16
    when C <= 32767, which halves the index bytes).
    """
    check_array("a", a, (np.float32, np.int8), 2)
    index_dtype = check_index_dtype(index_dtype, a.shape[1])
    rows, cols = np.nonzero(a)  # row-major order: rows increasing, columns within a row
    counts = np.bincount(rows, minlength=a.shape[0])  # [R]
    indptr = np.zeros(a.shape[0] + 1, dtype=np.int32)
    np.cumsum(counts, out=indptr[1:])
    return CSR(indptr, cols.astype(index_dtype), a[rows, cols], (a.shape[0], a.shape[1]))


def csr_to_dense(m: CSR) -> np.ndarray:
    """The dense [R, C] array that a CSR matrix stands for."""
    check_csr("m", m)
    out = np.zeros(m.shape, dtype=m.data.dtype)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))  # [nnz]
    out[rows, m.indices] = m.data
    return out


def check_csr(name: str, m: object) -> CSR:
    """Refuse an invalid CSR structure with a clear error (never a crash or a wrong answer).

    Checks: dtypes, indptr of length R + 1 starting at 0, non-decreasing and ending at nnz,
    every column index in [0, C).
    """
    if not isinstance(m, CSR):
        raise TypeError(f"{name} must be a minicompress.kernels.CSR, got {type(m).__name__}")
    r, c = m.shape
    check_array(f"{name}.indptr", m.indptr, (np.int32,), 1)
    check_array(f"{name}.indices", m.indices, (np.int32, np.int16), 1)
    check_array(f"{name}.data", m.data, (np.float32, np.int8), 1)
    if r < 0 or c < 0:
        raise ValueError(f"{name}.shape must be non-negative; got {m.shape}")
    if m.indptr.shape != (r + 1,):
        raise ValueError(f"{name}.indptr must have length R + 1 = {r + 1}; got {m.indptr.shape[0]}")
    nnz = m.data.shape[0]
    if m.indices.shape[0] != nnz:
        raise ValueError(f"{name}.indices has {m.indices.shape[0]} entries but data has {nnz}")
    if m.indptr[0] != 0 or m.indptr[-1] != nnz or np.any(np.diff(m.indptr) < 0):
        raise ValueError(
            f"{name}.indptr must start at 0, never decrease and end at nnz={nnz}; "
            f"got start {m.indptr[0]}, end {m.indptr[-1]}"
        )
    if nnz and (m.indices.min() < 0 or m.indices.max() >= c):
        raise ValueError(
            f"{name}.indices must lie in [0, {c}); got [{m.indices.min()}, {m.indices.max()}]"
        )
    # Within a row, columns must increase strictly: a repeated column would be summed by a
    # product but overwritten by csr_to_dense, so the two would disagree.
    step = np.diff(m.indices.astype(np.int64))  # [nnz - 1]: entry i + 1 minus entry i
    starts_row = np.zeros(nnz, dtype=bool)  # [nnz]: entry p is the first of a row r >= 1
    starts_row[m.indptr[1:-1][m.indptr[1:-1] < nnz]] = True
    bad = np.flatnonzero((step <= 0) & ~starts_row[1:])
    if bad.size:
        row = int(np.searchsorted(m.indptr, bad[0] + 1, side="right") - 1)
        lo, hi = m.indptr[row], m.indptr[row + 1]
        raise ValueError(
            f"{name}.indices must increase strictly within each row; row {row} has "
            f"{m.indices[lo:hi].tolist()[:20]}"
        )
    return m


def check_matmul_operands(a: CSR, b: object) -> None:
    """Refuse operands of ``a @ b`` (a CSR, structure already checked) that do not fit:
    a's data must be float32, b float32 [C, M] with C = a.shape[1]."""
    check_array("b", b, (np.float32,), 2)
    if a.data.dtype != np.float32:
        raise TypeError(f"a.data must be float32 for csr_matmul; got {a.data.dtype}")
    if b.shape[0] != a.shape[1]:
        raise ValueError(f"a is {a.shape} and b is {b.shape}: b.shape[0] must equal {a.shape[1]}")


def csr_matmul_reference(a: CSR, b: np.ndarray) -> np.ndarray:
    """CSR x dense: ``c = a @ b``.

    a: CSR [R, C] with float32 data; b: float32 [C, M]  ->  c: float32 [R, M].
    Row r of c is sum over the entries (j, v) of row r of a of v * b[j, :]; an empty row
    gives zeros.
    """
    check_csr("a", a)
    check_matmul_operands(a, b)
    c = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    for r in range(a.shape[0]):
        lo, hi = a.indptr[r], a.indptr[r + 1]
        # [nnz_r] values times [nnz_r, M] rows of b, summed over the entries -> [M]
        c[r] = a.data[lo:hi] @ b[a.indices[lo:hi].astype(np.int64)]
    return c


def sparse_linear_reference(x: np.ndarray, w_t: CSR, bias: np.ndarray | None = None) -> np.ndarray:
    """A linear layer with a sparse weight: ``y = x @ w + bias`` where ``w_t`` is CSR of w.T.

    x: float32 [M, K]; w_t: CSR [N, K] (float32 data); bias: float32 [N] or None
    ->  y: float32 [M, N].   Equal to ``(w_t @ x.T).T``.
    """
    check_array("x", x, (np.float32,), 2)
    check_csr("w_t", w_t)
    if x.shape[1] != w_t.shape[1]:
        raise ValueError(f"x is {x.shape} and w_t is {w_t.shape}: x.shape[1] must equal K")
    y = csr_matmul_reference(w_t, np.ascontiguousarray(x.T)).T  # [N, M] -> [M, N]
    if bias is not None:
        check_array("bias", bias, (np.float32,), 1)
        if bias.shape != (w_t.shape[0],):
            raise ValueError(f"bias must have shape ({w_t.shape[0]},); got {bias.shape}")
        y = y + bias
    return np.ascontiguousarray(y, dtype=np.float32)
