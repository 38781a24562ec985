"""Kernels that make a compressed layer really smaller and faster, in three tiers.

- tier 0, ``reference.py``: what each kernel computes, in plain NumPy. Read it first.
- tier 1, readable Numba for any CPU: ``int8_portable.py`` (the int8 GEMM and layer),
  ``csr_portable.py`` (CSR conversions and a row-by-row CSR x dense product), with the
  pieces they share: ``int8_quant.py`` (activation quantizer, dequantizer, checks),
  ``parallel.py`` (the one parallel driver of every int8 layer kernel), ``row_parts.py``.
- tier 2, ``x86/``: code generators that reach the CPU's int8 and gather instructions
  (AVX-512 VNNI, AMX, gathers, register transposes), imported only when selected.

``int8.py`` and ``csr.py`` hold the public functions and choose the path
(``MINICOMPRESS_KERNEL``, read by ``minicompress.kernel_choice``; ``cpu.py`` says what this
machine runs). ``cache.py`` keys Numba's disk cache of every kernel on all the sources it
depends on. ``kernels/README.md`` is the map.
"""

from minicompress.kernels import cache as _cache

_cache.install()  # before any kernel is defined: no stale machine code after an edit

from minicompress.kernels.csr import (  # noqa: E402
    csr_kernel_path,
    csr_matmul,
    dequantize_csr,
    quantize_csr,
    sparse_linear,
)
from minicompress.kernels.int8 import (  # noqa: E402
    PackedInt8Linear,
    int8_gemm,
    int8_kernel_path,
    int8_linear,
    pack_int8_linear,
    pack_quantized_int8_linear,
)
from minicompress.kernels.reference import (  # noqa: E402
    CSR,
    MAX_K_INT32,
    csr_matmul_reference,
    csr_to_dense,
    dense_to_csr,
    int8_gemm_reference,
    quantize_rows_uint8,
    quantize_uint8,
    quantize_weight_per_channel,
    quantized_linear_reference,
    sparse_linear_reference,
)

__all__ = [
    "CSR",
    "MAX_K_INT32",
    "PackedInt8Linear",
    "int8_gemm",
    "int8_kernel_path",
    "int8_linear",
    "pack_int8_linear",
    "pack_quantized_int8_linear",
    "csr_kernel_path",
    "csr_matmul",
    "csr_matmul_reference",
    "csr_to_dense",
    "dense_to_csr",
    "dequantize_csr",
    "int8_gemm_reference",
    "quantize_csr",
    "quantize_rows_uint8",
    "quantize_uint8",
    "quantize_weight_per_channel",
    "quantized_linear_reference",
    "sparse_linear",
    "sparse_linear_reference",
]
