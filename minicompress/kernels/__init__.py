"""Hot-path kernels, each beside the plain NumPy reference in ``reference.py``."""

from minicompress.kernels.csr import (
    csr_kernel_path,
    csr_matmul,
    dequantize_csr,
    quantize_csr,
    sparse_linear,
)
from minicompress.kernels.int8 import (
    PackedInt8Linear,
    int8_gemm,
    int8_kernel_path,
    int8_linear,
    pack_int8_linear,
    pack_quantized_int8_linear,
)
from minicompress.kernels.reference import (
    CSR,
    MAX_K_INT32,
    csr_matmul_reference,
    csr_to_dense,
    dense_to_csr,
    int8_gemm_reference,
    quantize_rows_uint8,
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
    "quantize_weight_per_channel",
    "quantized_linear_reference",
    "sparse_linear",
    "sparse_linear_reference",
]
