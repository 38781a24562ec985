"""int8 GEMM and the int8 linear layer, with the contracts of ``reference.py``.

Three paths compute the same integers (and the same floats for the layer):

- ``reference``: the NumPy functions of ``reference.py``;
- ``portable``: Numba kernels below, for any CPU Numba supports. The inner loop
  ``acc[n] += a[m, k] * w[k, n]`` runs over a contiguous row of w, so LLVM vectorizes it
  (``vpmovsxbd`` + ``vpmaddwd`` on 256-bit vectors). Measured here it runs at a quarter to
  half the speed of NumPy's fp32 sgemm (faster only at M = 1, where reading the weights
  dominates): no loop form makes LLVM emit the int8 dot-product instructions;
- ``vnni``: the AVX-512 VNNI micro-kernel of ``vnni.py`` (``vpdpbusd``, 64 uint8 x int8
  products per instruction) over weights packed ``[N/16, K/4, 16, 4]``;
- ``amx``: the AMX tile kernel of ``amx.py`` (``tdpbusd``, 16 x 16 x 64 products per
  instruction) over the same layout with K padded to a multiple of 64, for the int8 linear
  layer (the raw ``int8_gemm`` runs the VNNI kernel on this path).

``MINICOMPRESS_KERNEL`` = ``auto`` (default: ``amx`` when the CPU has AMX-INT8 and the OS
lends the tiles, else ``vnni`` when the CPU has it, else ``portable``) | ``reference`` |
``portable`` | ``vnni`` | ``amx`` chooses; ``int8_kernel_path()`` says
which one runs. Every public function also takes ``path=`` to ask for one explicitly.

Weights are quantized and packed once (``pack_int8_linear``), for one path: the portable
and reference paths keep ``w_q`` [K, N] as is, the VNNI path keeps the packed layout.
Activations are quantized on every call, inside the Numba kernel (it is part of the cost).
Layers with M*K*N <= SERIAL_MAX_WORK run on the calling thread, larger ones on all of
Numba's threads (``numba.set_num_threads``), in one parallel region per call.

Numba's cache (``cache=True``) is keyed on the source file of each kernel only: after
editing ``int8_quant.py``, delete ``minicompress/kernels/__pycache__/*.nb[ic]`` or the
kernels of ``vnni.py`` and this file keep the old code.

Input arrays that are not C-contiguous are copied to C order (never an error, never a
wrong answer); wrong dtypes, shapes, non-finite activations and ``K > MAX_K_INT32`` raise
``TypeError``/``ValueError`` naming the argument.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from minicompress.kernels import amx, vnni
from minicompress.kernels.aligned import aligned_copy
from minicompress.kernels.int8_quant import (
    BAD_SHAPES,
    NOT_FINITE,
    OK,
    dequantize_tile,
    layer_status,
    quantize_rows,
)
from minicompress.kernels.reference import (
    check_array,
    check_k_fits_int32,
    check_vector,
    int8_gemm_reference,
    quantize_weight_per_channel,
    quantized_linear_reference,
)

KERNEL_PATHS = ("reference", "portable", "vnni", "amx")
KERNEL_CHOICES = ("auto", *KERNEL_PATHS)
N_TILE = 256  # int32 accumulators of the portable kernel per row: 1 KB, stays in L1
MIN_ROWS_SPLIT_M = vnni.MIN_ROWS_SPLIT_M  # with fewer rows, the threads split N, else M
# M*K*N below which a layer runs on the calling thread: waking another core (a few us, a
# whole time slice on a busy machine) costs more than the product (256 KB of weights at M=1)
SERIAL_MAX_WORK = 2**19


# ----------------------------------------------------------------------------------------
# which path runs
# ----------------------------------------------------------------------------------------


def int8_kernel_path(path: str | None = None) -> str:
    """The int8 path that runs: ``path`` if given, else ``MINICOMPRESS_KERNEL`` (default auto).

    ``auto`` resolves to ``amx`` when ``amx.amx_supported()``, else to ``vnni`` when the CPU
    has AVX-512 VNNI, else ``portable``. Asking for ``vnni`` or ``amx`` on a CPU without it,
    or for an unknown path, raises ValueError.
    """
    source = "path"
    if path is None:
        source = "MINICOMPRESS_KERNEL"
        path = os.environ.get("MINICOMPRESS_KERNEL", "auto").strip().lower() or "auto"
    if path not in KERNEL_CHOICES:
        raise ValueError(f"{source} must be one of {', '.join(KERNEL_CHOICES)}; got {path!r}")
    if path == "auto":
        if amx.amx_supported():
            return "amx"
        return "vnni" if vnni.vnni_supported() else "portable"
    if path == "amx" and not amx.amx_supported():
        raise ValueError(
            f"{source}='amx' needs a CPU with AMX-INT8 whose OS lends this process the tile "
            "registers; this one does not. Use 'vnni', 'portable' or 'auto'."
        )
    if path == "vnni" and not vnni.vnni_supported():
        raise ValueError(
            f"{source}='vnni' needs a CPU with AVX-512 VNNI (avx512vnni); this one lacks it. "
            "Use 'portable' or 'auto'."
        )
    return path


# ----------------------------------------------------------------------------------------
# portable Numba kernels
# ----------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def portable_gemm_kernel(a, w, c):
    """c = a @ w: a uint8 or int8 [M, K], w int8 [K, N], c int32 [M, N] (written in full).

    Work items are (256-column tile of N, row of M) pairs, so M = 1 still uses every core.
    """
    m_total, k = a.shape
    n = w.shape[1]
    n_tiles = (n + N_TILE - 1) // N_TILE
    for t in prange(n_tiles * m_total):
        n0 = (t // m_total) * N_TILE
        m = t % m_total
        width = min(n, n0 + N_TILE) - n0
        acc = np.zeros(N_TILE, dtype=np.int32)  # [N_TILE]
        for i in range(k):
            a_mk = np.int32(a[m, i])
            w_row = w[i, n0 : n0 + width]  # [width], contiguous: the loop below vectorizes
            for j in range(width):
                acc[j] += a_mk * w_row[j]
        c[m, n0 : n0 + width] = acc[:width]


@njit(cache=True)
def _portable_linear_rows(
    q, m0, m1, w_q, n_start, n_stop, s_x, z_x, col_sum, w_scale, bias, has_bias, y
):
    """y[m0:m1, n_start:n_stop] from the quantized rows, 256 columns at a time."""
    k = w_q.shape[0]
    acc = np.empty((1, N_TILE), dtype=np.int32)  # [1, N_TILE]
    acc_row = acc[0]  # [N_TILE]
    for n0 in range(n_start, n_stop, N_TILE):
        n1 = min(n_stop, n0 + N_TILE)
        for m in range(m0, m1):
            acc_row[:] = 0
            for i in range(k):
                a_mk = np.int32(q[m, i])
                w_row = w_q[i, n0:n1]  # [n1 - n0], contiguous: the loop below vectorizes
                for j in range(n1 - n0):
                    acc_row[j] += a_mk * w_row[j]
            dequantize_tile(acc, m, 1, n0, n1, s_x, z_x, col_sum, w_scale, bias, has_bias, y)


@njit(cache=True)
def portable_linear_serial(x, w_q, col_sum, w_scale, bias, has_bias, y):
    """``portable_linear_kernel`` on the calling thread only (same arguments, no ``threads``)."""
    m_total, k = x.shape
    status = layer_status(x, w_q, (k, y.shape[1]), col_sum, w_scale, bias, y)
    if status != OK:
        return status
    q = np.empty((m_total, k), dtype=np.uint8)  # [M, K]
    s_x = np.empty(m_total, dtype=np.float32)
    z_x = np.empty(m_total, dtype=np.int32)
    if not quantize_rows(x, q, s_x, z_x, 0, m_total):
        return NOT_FINITE
    _portable_linear_rows(
        q, 0, m_total, w_q, 0, w_q.shape[1], s_x, z_x, col_sum, w_scale, bias, has_bias, y
    )
    return OK


@njit(parallel=True, cache=True)
def portable_linear_kernel(x, w_q, col_sum, w_scale, bias, has_bias, y, threads):
    """``quantized_linear_reference`` on the portable path: the arguments of
    ``vnni.vnni_linear_kernel`` with ``w_q`` int8 [K, N] in place of the packed weights, and
    the same single parallel region (N split for few rows, one chunk of rows per thread for
    many). Returns its status, as ``vnni.vnni_linear_kernel``."""
    m_total, k = x.shape
    n = y.shape[1]
    status = layer_status(x, w_q, (k, n), col_sum, w_scale, bias, y)
    if status != OK:
        return status
    q = np.empty((m_total, k), dtype=np.uint8)  # [M, K]
    s_x = np.empty(m_total, dtype=np.float32)
    z_x = np.empty(m_total, dtype=np.int32)
    finite = True
    if m_total < MIN_ROWS_SPLIT_M:
        finite = quantize_rows(x, q, s_x, z_x, 0, m_total)
        n_tiles = (n + N_TILE - 1) // N_TILE
        if finite:  # (a conditional inside prange's argument would make it a plain range)
            for t in prange(n_tiles):
                _portable_linear_rows(
                    q,
                    0,
                    m_total,
                    w_q,
                    t * N_TILE,
                    min(n, (t + 1) * N_TILE),
                    s_x,
                    z_x,
                    col_sum,
                    w_scale,
                    bias,
                    has_bias,
                    y,
                )
    else:
        chunk = -(-m_total // threads)
        n_chunks = -(-m_total // chunk)
        chunk_finite = np.empty(n_chunks, dtype=np.bool_)
        for c in prange(n_chunks):
            m0, m1 = c * chunk, min(m_total, (c + 1) * chunk)
            chunk_finite[c] = quantize_rows(x, q, s_x, z_x, m0, m1)
            _portable_linear_rows(
                q, m0, m1, w_q, 0, n, s_x, z_x, col_sum, w_scale, bias, has_bias, y
            )
        for c in range(n_chunks):
            finite &= chunk_finite[c]
    return OK if finite else NOT_FINITE


# ----------------------------------------------------------------------------------------
# int8 GEMM
# ----------------------------------------------------------------------------------------


def int8_gemm(a: np.ndarray, b: np.ndarray, path: str | None = None) -> np.ndarray:
    """Exact ``c = a @ b`` with int32 accumulation: ``int8_gemm_reference``'s contract.

    a: uint8 or int8 [M, K]; b: int8 [K, N]  ->  c: int32 [M, N].

    int8 activations on the VNNI path (``vpdpbusd`` multiplies *unsigned* by signed bytes)
    are shifted into uint8 and corrected with the column sums of b:
    a @ b = (a + 128) @ b - 128 * sum_k b[k, :]. This entry point packs b on every call; a
    layer should pack once with ``pack_int8_linear``.
    """
    path = int8_kernel_path(path)
    check_array("a", a, (np.uint8, np.int8), 2)
    check_array("b", b, (np.int8,), 2)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a is {a.shape} and b is {b.shape}: a.shape[1] must equal b.shape[0]")
    check_k_fits_int32(a.shape[1])
    if path == "reference":
        return int8_gemm_reference(a, b)
    (m, k), n = a.shape, b.shape[1]
    if path == "portable":
        c = np.empty((m, n), dtype=np.int32)  # [M, N]
        portable_gemm_kernel(np.ascontiguousarray(a), np.ascontiguousarray(b), c)
        return c
    w_packed = vnni.pack_vnni_weight(b)  # [Np/16, Kp/4, 16, 4]
    a_pad = np.zeros((m, w_packed.shape[1] * 4), dtype=np.uint8)  # [M, Kp], zero padding
    a_pad[:, :k] = a.view(np.uint8) ^ np.uint8(0x80) if a.dtype == np.int8 else a
    c = np.empty((m, w_packed.shape[0] * 16), dtype=np.int32)  # [M, Np]
    vnni.vnni_gemm_kernel(a_pad, w_packed, c)
    c = np.ascontiguousarray(c[:, :n])  # [M, Np] -> [M, N]
    if a.dtype == np.int8:
        c -= np.int32(128) * b.astype(np.int32).sum(axis=0)  # exact: the true c fits int32
    return c


# ----------------------------------------------------------------------------------------
# the int8 linear layer
# ----------------------------------------------------------------------------------------


class PackedInt8Linear(NamedTuple):
    """An int8 linear layer, quantized and laid out once for one path.

    path:    "reference" | "portable" | "vnni" | "amx", the path ``int8_linear`` will run
    weight:  int8, [K, N] (reference, portable), [ceil(N/16), ceil(K/4), 16, 4] (vnni) or
             [ceil(N/16), 16 ceil(K/64), 16, 4] (amx)
    col_sum: int32 [N], sum_k w_q[k, n], for the zero-point correction
    w_scale: float32 [N], per-output-channel weight scale
    bias:    float32 [N] or None
    k, n:    in- and out-features
    """

    path: str
    weight: np.ndarray
    col_sum: np.ndarray
    w_scale: np.ndarray
    bias: np.ndarray | None
    k: int
    n: int

    def w_q(self) -> np.ndarray:
        """The quantized weight as int8 [K, N], whatever the layout."""
        if self.path in ("vnni", "amx"):
            return vnni.unpack_vnni_weight(self.weight, self.k, self.n)
        return self.weight


@functools.lru_cache(maxsize=256)
def _weight_shape(path: str, k: int, n: int) -> tuple[int, ...]:
    """The shape of ``PackedInt8Linear.weight`` for a [K, N] layer on ``path``."""
    if path == "vnni":
        return vnni.vnni_weight_shape(k, n)
    if path == "amx":
        return amx.amx_weight_shape(k, n)
    return (k, n)


def _check_k_positive(name: str, shape: tuple) -> None:
    """A layer needs K >= 1 in-features (per-row activation ranges are undefined for K = 0)."""
    if shape[0] < 1:
        raise ValueError(f"{name} must have K >= 1 rows (in-features); got shape {shape}")


def pack_quantized_int8_linear(
    w_q: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray | None = None,
    path: str | None = None,
) -> PackedInt8Linear:
    """Lay out already-quantized weights for ``int8_linear``.

    w_q: int8 [K, N]; w_scale: float32 [N]; bias: float32 [N] or None; path: as in
    ``int8_kernel_path``  ->  PackedInt8Linear. The arrays are copied, never aliased, into
    64-byte aligned memory (``aligned.py``: a vector load never straddles two cache lines).
    """
    path = int8_kernel_path(path)
    check_array("w_q", w_q, (np.int8,), 2)
    k, n = w_q.shape
    _check_k_positive("w_q", w_q.shape)
    check_k_fits_int32(k)
    check_vector("w_scale", w_scale, n)
    if bias is not None:
        check_vector("bias", bias, n)
        bias = aligned_copy(bias)
    col_sum = w_q.sum(axis=0, dtype=np.int32)  # [K, N] -> [N]; exact, as K <= MAX_K_INT32
    if path == "vnni":
        weight = vnni.pack_vnni_weight(w_q)
    elif path == "amx":
        weight = amx.pack_amx_weight(w_q)
    else:
        weight = aligned_copy(w_q)
    return PackedInt8Linear(path, weight, aligned_copy(col_sum), aligned_copy(w_scale), bias, k, n)


def pack_int8_linear(
    w: np.ndarray, bias: np.ndarray | None = None, path: str | None = None
) -> PackedInt8Linear:
    """Quantize float32 weights per output channel (``quantize_weight_per_channel``) and
    lay them out for ``int8_linear``.

    w: float32 [K, N]; bias: float32 [N] or None  ->  PackedInt8Linear.
    """
    check_array("w", w, (np.float32,), 2)
    _check_k_positive("w", w.shape)
    w_q, w_scale = quantize_weight_per_channel(w)  # int8 [K, N], float32 [N]
    return pack_quantized_int8_linear(w_q, w_scale, bias, path)


_INT8, _INT32, _FLOAT32 = np.dtype(np.int8), np.dtype(np.int32), np.dtype(np.float32)


def _runs_here(path: str) -> bool:
    """Whether this CPU runs the kernels of ``path`` (the reference path is not a kernel)."""
    return (
        path == "portable"
        or (path == "vnni" and vnni.vnni_supported())
        or (path == "amx" and amx.amx_supported())
    )


def _arrays_are_plain(packed: PackedInt8Linear) -> bool:
    """The dtypes and C order of a layer's arrays, checked on every call before a kernel
    runs: Numba would compile a new specialization (seconds) for any other. The kernels
    check the shapes themselves (``int8_quant.layer_status``). Dtypes are compared by
    identity: ``==`` and helper calls cost 0.1-0.3 us each, the layer at M = 1 about 6 us.
    The weight's ndim is checked too, so that a kernel can read its shape. False sends the
    layer to ``_check_packed``, which names what is wrong."""
    w, col_sum, w_scale, bias = packed.weight, packed.col_sum, packed.w_scale, packed.bias
    if bias is None:
        bias = w_scale
    try:
        return (
            w.ndim == (2 if packed.path == "portable" else 4)
            and w.dtype is _INT8
            and col_sum.dtype is _INT32
            and w_scale.dtype is _FLOAT32
            and bias.dtype is _FLOAT32
            and w.flags.c_contiguous
            and col_sum.flags.c_contiguous
            and w_scale.flags.c_contiguous
            and bias.flags.c_contiguous
        )
    except AttributeError:  # not an array
        return False


def _check_packed(packed: PackedInt8Linear) -> None:
    """Refuse a PackedInt8Linear whose fields the kernels cannot read safely, naming the
    field (the slow path: ``int8_linear`` calls it when its own checks fail)."""
    if packed.path not in KERNEL_PATHS:
        raise ValueError(
            f"packed.path must be one of {', '.join(KERNEL_PATHS)}; got {packed.path!r}"
        )
    k, n = packed.k, packed.n
    shape = _weight_shape(packed.path, k, n)
    check_array("packed.weight", packed.weight, (np.int8,), len(shape))
    if packed.weight.shape != shape or not packed.weight.flags.c_contiguous:
        raise ValueError(
            f"packed.weight must be C-contiguous of shape {shape} for path "
            f"{packed.path!r}; got {packed.weight.shape}"
        )
    for name, a, dtype in (
        ("col_sum", packed.col_sum, np.int32),
        ("w_scale", packed.w_scale, np.float32),
        ("bias", packed.bias, np.float32),
    ):
        if name == "bias" and a is None:
            continue
        check_array(f"packed.{name}", a, (dtype,), 1)
        if a.shape != (n,) or not a.flags.c_contiguous:
            raise ValueError(f"packed.{name} must be C-contiguous of shape ({n},); got {a.shape}")


def _run_layer_kernel(x: np.ndarray, packed: PackedInt8Linear, y: np.ndarray) -> int:
    """Run the kernel of ``packed.path`` (vnni, amx or portable) on x into y; its status.

    Layers with M*K*N <= SERIAL_MAX_WORK run on the calling thread; on the amx path, only
    products where the tiles win (``amx.use_tiles``) run on them, the rest on VNNI.
    """
    m, path = x.shape[0], packed.path
    has_bias = packed.bias is not None
    bias = packed.bias if has_bias else packed.w_scale  # a float32 [N] that is never read
    args = (x, packed.weight, packed.col_sum, packed.w_scale, bias, has_bias, y)
    if path == "amx" and amx.use_tiles(m, packed.weight):
        return amx.amx_linear_kernel(*args, numba.get_num_threads(), amx.TILE_CONFIG)
    vnni_path = path != "portable"  # vnni, or amx where the tiles lose
    if m * packed.k * packed.n <= SERIAL_MAX_WORK:
        return (vnni.vnni_linear_serial if vnni_path else portable_linear_serial)(*args)
    kernel = vnni.vnni_linear_kernel if vnni_path else portable_linear_kernel
    # the thread count sizes the row chunks of a many-row call (1 us to ask: skipped)
    return kernel(*args, numba.get_num_threads() if m >= MIN_ROWS_SPLIT_M else 1)


def int8_linear(x: np.ndarray, packed: PackedInt8Linear) -> np.ndarray:
    """``quantized_linear_reference`` on the path ``packed`` was made for.

    y = s_x[:, None] * w_scale[None, :] * (q_x @ w_q - z_x[:, None] * col_sum[None, :]) + bias

    x: float32 [M, K] (finite)  ->  y: float32 [M, N]. The activation is quantized per row
    (``quantize_rows_uint8``, bit for bit) inside the kernel.
    """
    if not isinstance(packed, PackedInt8Linear):
        raise TypeError(f"packed must be a PackedInt8Linear; got {type(packed).__name__}")
    if not (type(x) is np.ndarray and x.dtype is _FLOAT32 and x.ndim == 2):
        check_array("x", x, (np.float32,), 2)  # raises, naming what is wrong
    if x.shape[1] != packed.k:
        raise ValueError(f"x is {x.shape}: x.shape[1] must equal the layer's K={packed.k}")
    path = packed.path
    if not (_runs_here(path) and _arrays_are_plain(packed)):
        _check_packed(packed)  # raises if the layer itself is malformed
        if path == "reference":
            return quantized_linear_reference(x, packed.weight, packed.w_scale, packed.bias)
        int8_kernel_path(path)  # raises: this CPU lacks the instructions of the path
    if type(x) is not np.ndarray or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)  # a plain C-contiguous ndarray for the kernels
    y = np.empty((x.shape[0], packed.n), _FLOAT32)  # [M, N]
    status = _run_layer_kernel(x, packed, y)
    if status == NOT_FINITE:
        raise ValueError("x must be finite; it holds NaN or inf")
    if status == BAD_SHAPES:
        _check_packed(packed)  # raises, naming the array
        raise ValueError(f"packed's arrays do not fit together for path {path!r}")
    return y
