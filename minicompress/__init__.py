"""minicompress: Transformer compression from scratch in NumPy.

Quantization, knowledge distillation and pruning of a small NumPy Transformer, with Numba
int8 and sparse CSR kernels that make the compressed model really smaller and faster.
"""

__version__ = "0.1.0"
