"""Hot-path kernels, each beside the plain NumPy reference in ``reference.py``."""

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
    "csr_matmul_reference",
    "csr_to_dense",
    "dense_to_csr",
    "int8_gemm_reference",
    "quantize_rows_uint8",
    "quantize_weight_per_channel",
    "quantized_linear_reference",
    "sparse_linear_reference",
]
