"""Tier 2: x86 code generators, imported only when a path that needs them is chosen.

The kernels here reach the CPU's int8 and gather instructions through LLVM IR written by
hand (Numba ``@intrinsic``), which no loop form makes LLVM emit on its own. Read them after
``reference.py`` (what is computed) and the tier-1 kernels (``int8_portable.py``,
``csr_portable.py``: how it is computed in plain Numba).

- ``layout.py``: the packed int8 weight layout (4 consecutive k of a column side by side);
- ``avx2.py``: AVX2 ``vpmaddubsw`` + ``vpmaddwd`` micro-kernel (exact: no int16 saturation),
  or AVX-VNNI ``vpdpbusd`` on ymm registers (int8 GEMM and layer);
- ``vnni.py``: AVX-512 VNNI ``vpdpbusd`` micro-kernel, register-tiled (int8 GEMM and layer);
- ``amx.py``: AMX tiles (``tdpbusd``) for the int8 layer;
- ``simd.py``: W-float accumulators and 16 x 16 register transposes (CSR, and the
  inference attention of ``deploy/attention.py``);
- ``csr_spmm.py``: the CSR x dense product on activations packed in blocks;
- ``csr_spmv.py``: the CSR product for a few rows, by 16-lane gathers;
- ``aligned.py``: 64-byte aligned arrays (one cache line, one zmm register).
"""
