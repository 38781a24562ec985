"""The int8 GEMM and the int8 linear layer: the public functions, and which path runs.

Every path computes the integers of ``reference.py`` bit for bit, and the same float32 bits
for the layer (the dequantization does the same float32 operations in the same order):

- ``reference``: the NumPy functions of ``reference.py`` (tier 0);
- ``portable``: the Numba kernels of ``int8_portable.py`` (tier 1), for any CPU, and the one
  that runs as plain Python under ``NUMBA_DISABLE_JIT=1``;
- ``avx2``: ``x86/avx2.py``, for CPUs with AVX2 but not AVX-512 VNNI (most laptops):
  ``vpmaddubsw`` + ``vpmaddwd``, or AVX-VNNI's ``vpdpbusd`` on ymm registers where the CPU
  has it; 32 products per instruction;
- ``vnni``: ``x86/vnni.py``, AVX-512 VNNI's ``vpdpbusd`` on zmm registers, 64 products per
  instruction;
- ``amx``: ``x86/amx.py``, AMX tiles (``tdpbusd``, 16 x 16 x 64 products per instruction)
  for the layer where they win, the VNNI kernels on the same weights elsewhere (the raw
  ``int8_gemm`` runs the VNNI kernel on this path).

``MINICOMPRESS_KERNEL`` (read by ``minicompress.kernel_choice``) = ``auto`` (default: the
fastest of amx, vnni, avx2 this CPU and Numba's target run, see ``cpu.py``, else
portable) | ``reference`` | ``portable`` | ``avx2`` | ``vnni`` | ``amx`` chooses; every public
function also takes ``path=``; ``int8_kernel_path()`` says which one runs. An x86 path is
imported the first time it is chosen, never on a CPU that cannot run it.

Weights are quantized and packed once (``pack_int8_linear``), for one path: the portable
and reference paths keep ``w_q`` [K, N] as is, the x86 paths their packed layout
(``x86/layout.py``). Activations are quantized on every call, inside the kernel (it is part
of the cost): per row from the row's range (dynamic), or with a static scale and zero point
calibrated ahead of time (``act_scale``, ``act_zero_point``). Layers with M*K*N <=
SERIAL_MAX_WORK run on the calling thread, larger ones on all of Numba's threads
(``numba.set_num_threads``), in one parallel region per call (``parallel.py``).

Non-finite values: refused with a ValueError on every path, at packing time for weights,
scales and biases, at call time for the activations (see ``reference.py``). A packed layer
whose fields were changed after packing (its ``k``, ``n``, an array) is refused on every
path unless it is still a valid layer. Input arrays that are not C-contiguous are copied to
C order (never an error, never a wrong answer); wrong dtypes, shapes and ``K >
MAX_K_INT32`` raise ``TypeError``/``ValueError`` naming the argument.
"""

from __future__ import annotations

import functools
import importlib
from typing import NamedTuple

import numpy as np

from minicompress.kernel_choice import choice_source, kernel_choice
from minicompress.kernels import cpu, int8_portable
from minicompress.kernels.carried import RowCodes
from minicompress.kernels.epilogue import ACT_NONE
from minicompress.kernels.int8_quant import BAD_SHAPES, BAD_VALUES, NOT_FINITE, OK
from minicompress.kernels.reference import (
    check_array,
    check_finite,
    check_k_fits_int32,
    check_static_activation,
    check_vector,
    int8_gemm_reference,
    quantize_weight_per_channel,
    quantized_linear_reference,
)

KERNEL_PATHS = cpu.INT8_PATHS  # ("reference", "portable", "avx2", "vnni", "amx")
# M*K*N below which a layer runs on the calling thread: waking another core (a few us, a
# whole time slice on a busy machine) costs more than the product (256 KB of weights at M=1)
SERIAL_MAX_WORK = 2**19


# ----------------------------------------------------------------------------------------
# which path runs
# ----------------------------------------------------------------------------------------


def int8_kernel_path(path: str | None = None) -> str:
    """The int8 path that runs: ``path`` if given, else ``MINICOMPRESS_KERNEL`` (default auto).

    ``auto`` resolves to ``cpu.choose_int8_path`` for this machine: amx, vnni or avx2 where
    the CPU and Numba's target run them, else portable (always portable under
    ``NUMBA_DISABLE_JIT=1``). Asking for an x86 path that cannot run here, or for an unknown
    path, raises ValueError saying why.
    """
    choice = kernel_choice(path)
    here = (cpu.target_features(), cpu.jit_enabled(), cpu.amx_tiles_granted())
    if choice == "auto":
        return cpu.choose_int8_path(*here)
    reason = cpu.why_not(choice, *here)
    if reason:
        source = choice_source(path)
        raise ValueError(
            f"{source}={choice!r} cannot run here: {reason}. Use 'portable' or 'auto'."
        )
    return choice


@functools.cache
def _x86(name: str):
    """The module ``x86/<name>.py``, imported on first use."""
    return importlib.import_module(f"minicompress.kernels.x86.{name}")


# ----------------------------------------------------------------------------------------
# int8 GEMM
# ----------------------------------------------------------------------------------------


def int8_gemm(a: np.ndarray, b: np.ndarray, path: str | None = None) -> np.ndarray:
    """Exact ``c = a @ b`` with int32 accumulation: ``int8_gemm_reference``'s contract.

    a: uint8 or int8 [M, K]; b: int8 [K, N]  ->  c: int32 [M, N].

    int8 activations on the x86 paths (whose instructions multiply *unsigned* by signed
    bytes) are shifted into uint8 and corrected with the column sums of b:
    a @ b = (a + 128) @ b - 128 * sum_k b[k, :]. This entry point packs b on every call; a
    layer should pack once with ``pack_int8_linear``. On the avx2 path without AVX-VNNI, a b
    holding -128 runs the portable kernel (``x86/avx2.py`` says why).
    """
    path = int8_kernel_path(path)
    check_array("a", a, (np.uint8, np.int8), 2)
    check_array("b", b, (np.int8,), 2)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a is {a.shape} and b is {b.shape}: a.shape[1] must equal b.shape[0]")
    check_k_fits_int32(a.shape[1])
    if path == "reference":
        return int8_gemm_reference(a, b)
    if path == "avx2" and not _x86("avx2").exact_for(b):
        path = "portable"
    (m, k), n = a.shape, b.shape[1]
    if path == "portable":
        c = np.empty((m, n), dtype=np.int32)  # [M, N]
        int8_portable.gemm_kernel(np.ascontiguousarray(a), np.ascontiguousarray(b), c)
        return c
    module = _x86("avx2" if path == "avx2" else "vnni")  # amx: the VNNI GEMM
    w_packed = module.pack_weight(b)  # [Np/L, Kp/4, L, 4]
    a_pad = np.zeros((m, w_packed.shape[1] * 4), dtype=np.uint8)  # [M, Kp], zero padding
    a_pad[:, :k] = a.view(np.uint8) ^ np.uint8(0x80) if a.dtype == np.int8 else a
    c = np.empty((m, w_packed.shape[0] * w_packed.shape[2]), dtype=np.int32)  # [M, Np]
    module.gemm_kernel(a_pad, w_packed, c)
    c = np.ascontiguousarray(c[:, :n])  # [M, Np] -> [M, N]
    if a.dtype == np.int8:
        c -= np.int32(128) * b.astype(np.int32).sum(axis=0)  # exact: the true c fits int32
    return c


# ----------------------------------------------------------------------------------------
# the int8 linear layer
# ----------------------------------------------------------------------------------------


class PackedInt8Linear(NamedTuple):
    """An int8 linear layer, quantized and laid out once for one path.

    path:    one of KERNEL_PATHS, the path ``int8_linear`` will run
    weight:  int8, [K, N] (reference, portable), or the k4 layout of ``x86/layout.py``:
             [ceil(N/16), ceil(K/4), 16, 4] (vnni), [ceil(N/16), 16 ceil(K/64), 16, 4]
             (amx), [ceil(N/8), ceil(K/4), 8, 4] (avx2)
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
        if self.path in cpu.X86_PATHS:
            return _x86(self.path).unpack_weight(self.weight, self.k, self.n)
        return self.weight


@functools.lru_cache(maxsize=256)
def _weight_shape(path: str, k: int, n: int) -> tuple[int, ...]:
    """The shape of ``PackedInt8Linear.weight`` for a [K, N] layer on ``path``."""
    if path in cpu.X86_PATHS:
        return tuple(_x86(path).weight_shape(k, n))
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

    w_q: int8 [K, N]; w_scale: float32 [N], finite; bias: float32 [N], finite, or None;
    path: as in ``int8_kernel_path``  ->  PackedInt8Linear. The arrays are copied, never
    aliased (on the x86 paths into 64-byte aligned memory, ``x86/aligned.py``: a vector load
    never straddles two cache lines). The avx2 path without AVX-VNNI cannot multiply a
    weight of -128 exactly (``x86/avx2.py``): asked for explicitly, such a layer is refused;
    chosen by ``auto``, it is packed for the portable path instead.
    """
    choice = kernel_choice(path)
    path = int8_kernel_path(path)
    check_array("w_q", w_q, (np.int8,), 2)
    k, n = w_q.shape
    _check_k_positive("w_q", w_q.shape)
    check_k_fits_int32(k)
    check_finite("w_scale", check_vector("w_scale", w_scale, n))
    if bias is not None:
        check_finite("bias", check_vector("bias", bias, n))
    if path == "avx2" and not _x86("avx2").exact_for(w_q):
        if choice == "avx2":
            raise ValueError(
                "w_q holds -128, which the avx2 path cannot multiply exactly on this CPU "
                "(vpmaddubsw without AVX-VNNI; see x86/avx2.py): quantize to [-127, 127] "
                "(quantize_weight_per_channel does) or use path='portable'"
            )
        path = "portable"
    col_sum = w_q.sum(axis=0, dtype=np.int32)  # [K, N] -> [N]; exact, as K <= MAX_K_INT32
    if path in cpu.X86_PATHS:
        copy = _x86("aligned").aligned_copy
        weight = _x86(path).pack_weight(w_q)
    else:
        copy = np.array  # a C-ordered copy
        weight = np.array(w_q, order="C")
    # NumPy's own float32 dtype object (arrays read from a file may carry an equal but
    # distinct one, which int8_linear's identity check would send down its slow path)
    bias = None if bias is None else copy(bias.view(_FLOAT32))
    return PackedInt8Linear(path, weight, copy(col_sum), copy(w_scale.view(_FLOAT32)), bias, k, n)


def pack_int8_linear(
    w: np.ndarray, bias: np.ndarray | None = None, path: str | None = None
) -> PackedInt8Linear:
    """Quantize float32 weights per output channel (``quantize_weight_per_channel``) and
    lay them out for ``int8_linear``.

    w: float32 [K, N], finite; bias: float32 [N], finite, or None  ->  PackedInt8Linear.
    """
    check_array("w", w, (np.float32,), 2)
    _check_k_positive("w", w.shape)
    w_q, w_scale = quantize_weight_per_channel(w)  # int8 [K, N], float32 [N]
    return pack_quantized_int8_linear(w_q, w_scale, bias, path)


_INT8, _INT32, _FLOAT32 = np.dtype(np.int8), np.dtype(np.int32), np.dtype(np.float32)
# "nothing carried" for the full kernels: codes, scales, zero points with 0 rows; dynamic
# activation ranges (no static scale)
NO_SCALE, NO_ZERO_POINT = np.float32(0.0), np.int32(0)
NO_CODES = RowCodes(np.empty((0, 0), np.uint8), np.empty(0, np.float32), np.empty(0, np.int32))
# path -> (parallel, serial, static) layer kernels of the paths found to run here (filled by
# _layer_kernels; each kernel's module says what it takes)
_KERNELS: dict[str, tuple] = {}


def _layer_kernels(path: str) -> tuple:
    """The layer kernels of ``path`` (raises if this CPU cannot run it), remembered."""
    int8_kernel_path(path)  # raises: this CPU or Numba's target lacks the instructions
    if path == "avx2":
        kernels = _x86("avx2").layer_kernels(cpu.uses_avx_vnni(cpu.target_features()))
    else:
        module = int8_portable if path == "portable" else _x86("vnni" if path == "amx" else path)
        kernels = (module.linear_kernel, module.linear_kernel_serial, module.linear_kernel_full)
    if path == "amx":  # the tiles where they win (``amx.use_tiles``), the VNNI kernels elsewhere
        amx = _x86("amx")
        tiles = (amx.linear_kernel, amx.linear_kernel_serial, amx.linear_kernel_full)

        def choose(i):
            def kernel(x, weight, *rest):
                chosen = tiles[i] if amx.use_tiles(x.shape[0], weight) else kernels[i]
                return chosen(x, weight, *rest)

            return kernel

        kernels = (choose(0), choose(1), choose(2))
    _KERNELS[path] = kernels
    return kernels


def _arrays_are_plain(packed: PackedInt8Linear) -> bool:
    """The dtypes and C order of a layer's arrays, checked on every call before a kernel
    runs: Numba would compile a new specialization (seconds) for any other. The kernels
    check the shapes and values themselves (``int8_quant.layer_status`` and each path's
    ``weight_status``). Dtypes are compared by identity: ``==`` and helper calls cost
    0.1-0.3 us each, the layer at M = 1 about 6 us. The weight's ndim is checked too, so
    that a kernel can read its shape. False sends the layer to ``_check_packed``, which
    names what is wrong."""
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
    """Refuse a PackedInt8Linear whose fields the kernels cannot read safely, or that is not
    a valid layer any more, naming the field (the slow path: ``int8_linear`` calls it when
    its own checks fail, or a kernel refused the layer)."""
    if packed.path not in KERNEL_PATHS:
        raise ValueError(
            f"packed.path must be one of {', '.join(KERNEL_PATHS)}; got {packed.path!r}"
        )
    k, n = packed.k, packed.n
    for name, value in (("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"packed.{name} must be an int >= 1; got {value!r}")
    shape = _weight_shape(packed.path, int(k), int(n))
    check_array("packed.weight", packed.weight, (np.int8,), len(shape))
    if packed.weight.shape != shape or not packed.weight.flags.c_contiguous:
        raise ValueError(
            f"packed.weight must be C-contiguous of shape {shape} for path "
            f"{packed.path!r} and k={k}, n={n}; got {packed.weight.shape}"
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
        if dtype == np.float32:
            check_finite(f"packed.{name}", a)
    if packed.path in cpu.X86_PATHS:
        from minicompress.kernels.x86.layout import padding_is_zero

        if not padding_is_zero(packed.weight, int(k), int(n)):
            raise ValueError(
                f"packed.weight holds non-zero weights past k={k} or n={n} (the padding of "
                f"its layout): packed.k or packed.n was changed after packing"
            )


def layer_kernels_for(packed: PackedInt8Linear) -> tuple | None:
    """The (parallel, serial, full) layer kernels that run ``packed``, after the checks of its
    arrays (by identity when they pass, ``_check_packed`` naming the field when one fails);
    None on the reference path (NumPy, no kernel). Raises if this CPU cannot run the path."""
    kernels = _KERNELS.get(packed.path)
    if kernels is None or not _arrays_are_plain(packed):
        _check_packed(packed)  # raises if the layer itself is malformed
        if packed.path == "reference":
            return None
        kernels = _layer_kernels(packed.path)  # raises: this CPU cannot run the path
    return kernels


def raise_for(status: int, packed: PackedInt8Linear) -> None:
    """Turn a kernel's status other than OK into the error that names the problem."""
    if status == NOT_FINITE:
        raise ValueError(
            "x must be finite, with rows whose range max - min fits float32; it holds NaN "
            "or inf, or a row spans more than 3.4e38"
        )
    if status in (BAD_SHAPES, BAD_VALUES):
        _check_packed(packed)  # raises, naming the array
    raise ValueError(f"packed's arrays do not fit together for path {packed.path!r}")


def int8_linear(
    x: np.ndarray,
    packed: PackedInt8Linear,
    act_scale: float | None = None,
    act_zero_point: int | None = None,
) -> np.ndarray:
    """``quantized_linear_reference`` on the path ``packed`` was made for.

    y = s_x[:, None] * w_scale[None, :] * (q_x @ w_q - z_x[:, None] * col_sum[None, :]) + bias

    x: float32 [..., K] (finite)  ->  y: float32 [..., N]. The activation is quantized inside
    the kernel, bit for bit as the reference: per row (``quantize_rows_uint8``) by default,
    or, given ``act_scale`` (float > 0) and ``act_zero_point`` (int in [0, 255]) calibrated
    ahead of time, with those for every row (``quantize_uint8``), which saves the pass over
    each row for its range.
    """
    if not isinstance(packed, PackedInt8Linear):
        raise TypeError(f"packed must be a PackedInt8Linear; got {type(packed).__name__}")
    static = None
    if act_scale is not None or act_zero_point is not None:
        scale, zero_point = check_static_activation(act_scale, act_zero_point)
        static = (scale, np.int32(zero_point))
    if not (type(x) is np.ndarray and x.dtype is _FLOAT32 and x.ndim == 2):
        return _linear_any_shape(x, packed, act_scale, act_zero_point)
    if x.shape[1] != packed.k:
        raise ValueError(f"x is {x.shape}: x.shape[1] must equal the layer's K={packed.k}")
    kernels = layer_kernels_for(packed)
    if kernels is None:
        return quantized_linear_reference(
            x, packed.weight, packed.w_scale, packed.bias, act_scale, act_zero_point
        )
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)  # a C-contiguous array for the kernels
    m = x.shape[0]
    y = np.empty((m, packed.n), _FLOAT32)  # [M, N]
    has_bias = packed.bias is not None
    args = (
        x,
        packed.weight,
        packed.col_sum,
        packed.w_scale,
        packed.bias if has_bias else packed.w_scale,  # a float32 [N] never read without bias
        has_bias,
        y,
    )
    serial = m * packed.k * packed.n <= SERIAL_MAX_WORK
    if static is not None:
        status = kernels[2](*args, serial, (*static, *NO_CODES, ACT_NONE, *NO_CODES))
    else:
        status = kernels[1](*args) if serial else kernels[0](*args)
    if status != OK:
        raise_for(status, packed)
    return y


def _linear_any_shape(x, packed, act_scale, act_zero_point) -> np.ndarray:
    """``int8_linear`` of x [..., K] (any number of leading axes, or none) as one [M, K]
    product; also turns ndarray subclasses into plain arrays."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != _FLOAT32:
        raise TypeError(f"x must have dtype float32; got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x must have shape [..., K]; got a 0-d array")
    if x.shape[-1] != packed.k:
        raise ValueError(f"x is {x.shape}: x.shape[-1] must equal the layer's K={packed.k}")
    # [..., K] -> [M, K], a plain array with NumPy's own float32 dtype object (arrays read
    # from a file carry an equal but distinct one, and the fast path tests identity)
    x2 = np.asarray(x).reshape(-1, x.shape[-1]).view(_FLOAT32)
    y = int8_linear(x2, packed, act_scale, act_zero_point)  # [M, N]
    return y.reshape(*x.shape[:-1], packed.n)  # [..., N]
