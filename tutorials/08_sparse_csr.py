# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 — Sparse weights in CSR: when pruning really makes a layer faster
#
# Pruning sets most weights of a layer to zero. This chapter shows that the zeros alone change
# nothing — a dense matmul multiplies zeros as fast as anything else — and that the layer
# only becomes smaller and faster once the zeros are *not stored*: the CSR format, and a
# kernel that walks only the stored weights (`minicompress.kernels.sparse_linear`). It ends
# with the question that matters in practice: from which sparsity does CSR beat the dense
# float32 layer, and the int8 one?
#
# With `MINICOMPRESS_FAST=1` the shapes are small and each time is measured a few times
# (seconds); without it, a BERT-base MLP layer (768 -> 3072) is timed properly (under a minute).
# Open as a notebook: `jupytext --to notebook tutorials/08_sparse_csr.py`.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt
import numba
import numpy as np
from threadpoolctl import threadpool_limits

from minicompress.kernels import (
    csr_kernel_path,
    csr_to_dense,
    dense_to_csr,
    int8_linear,
    pack_int8_linear,
    quantize_csr,
    sparse_linear,
)
from minicompress.report.bench_csr import pruned_weight, storage_bytes
from minicompress.report.plots import save_figure
from minicompress.report.table import format_table
from minicompress.report.timing import blas_summary, median_ms

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)
rng = np.random.default_rng(0)

K, N = (256, 1024) if FAST else (768, 3072)  # in- and out-features of the layer
M = 32 if FAST else 128  # tokens per call
REPEAT = 5 if FAST else 20
# Everything is timed on one thread (BLAS and Numba): a fair comparison, and one that a busy
# machine does not distort (a parallel call waits for its last thread to get a core).
numba.set_num_threads(1)
threadpool_limits(limits=1, user_api="blas")
print(
    f"layer {K} -> {N}, M = {M} tokens; BLAS: {blas_summary()}; "
    f"Numba threads: {numba.get_num_threads()}; CSR path: {csr_kernel_path()}"
)

# %% [markdown]
# ## 1. A mask on a dense matrix speeds nothing up
#
# `pruned_weight` zeroes the smallest 90% of |w| (what magnitude pruning does). The matrix
# keeps its shape and its bytes, and BLAS multiplies every zero:

# %%
w_full = rng.standard_normal((K, N)).astype(np.float32)  # [K, N]
w_pruned = pruned_weight(rng, K, N, 0.9)  # [K, N], 90% zeros
x = rng.standard_normal((M, K)).astype(np.float32)  # [M, K]

t_full = median_ms(lambda: x @ w_full, repeat=REPEAT)
t_pruned = median_ms(lambda: x @ w_pruned, repeat=REPEAT)
print(f"dense x @ w:               {t_full:7.3f} ms, {w_full.nbytes / 2**20:.1f} MiB")
print(f"dense x @ w (90% zeros):   {t_pruned:7.3f} ms, {w_pruned.nbytes / 2**20:.1f} MiB")
assert w_pruned.nbytes == w_full.nbytes  # same storage: the zeros are stored

# %% [markdown]
# ## 2. CSR: store only the non-zeros
#
# Compressed sparse row keeps three arrays: `data` (the values, row by row), `indices` (the
# column of each value) and `indptr` (row r holds entries `indptr[r]:indptr[r+1]`). A linear
# layer's weight is stored as CSR of `w.T` ([N, K]): one row per output feature, so each
# output `y[:, n]` is the sum of `v_j * x[:, k_j]` over the entries of row n.

# %%
tiny = np.array(
    [[0, 2, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [3, 0, 0, 4, 0, 5], [0, 0, 6, 0, 0, 0]],
    dtype=np.float32,
)  # [R, C] = [4, 6]
tiny_csr = dense_to_csr(tiny)
print(tiny)
print("indptr :", tiny_csr.indptr, " (row 1 is empty: indptr[1] == indptr[2])")
print("indices:", tiny_csr.indices)
print("data   :", tiny_csr.data)
print(f"bytes: dense {tiny.nbytes}, CSR {tiny_csr.nbytes()}")
assert np.array_equal(csr_to_dense(tiny_csr), tiny)
assert tiny_csr.indptr.tolist() == [0, 2, 2, 5, 6]

# the layer y = x @ w with w = tiny.T ([6, 4]): same numbers as the dense product
x_tiny = rng.standard_normal((2, 6)).astype(np.float32)  # [M, K] = [2, 6]
print(sparse_linear(x_tiny, tiny_csr), "\n", x_tiny @ tiny.T)
assert np.allclose(sparse_linear(x_tiny, tiny_csr), x_tiny @ tiny.T, rtol=1e-6, atol=1e-6)

# %% [markdown]
# ### 2b. The same product, plainly and fast
#
# `kernels/csr_portable.py` computes it as written above, one row of `w_t` at a time: each
# stored weight `v_j` of row n multiplies a contiguous row of `x.T`. The x86 path
# (`kernels/x86/csr_spmm.py`, chosen by `auto` on x86-64) computes the same sums with the
# activations packed in blocks of 16 or 32 tokens kept in registers, and `x86/csr_spmv.py`
# gathers 16 entries at a time for one token. Same numbers to float32 rounding (each sums in
# its own order); the time is what differs:

# %%
w_t_90 = dense_to_csr(np.ascontiguousarray(w_pruned.T))  # CSR [N, K] of the 90% pruned w
y_plain = sparse_linear(x, w_t_90, path="portable")
y_fast = sparse_linear(x, w_t_90, path=csr_kernel_path("auto"))
np.testing.assert_allclose(y_plain, x @ w_pruned, rtol=1e-4, atol=1e-3)
np.testing.assert_allclose(y_fast, y_plain, rtol=1e-4, atol=1e-3)
t_plain = median_ms(lambda: sparse_linear(x, w_t_90, path="portable"), repeat=REPEAT)
t_fast = median_ms(lambda: sparse_linear(x, w_t_90), repeat=REPEAT)
print(
    f"row by row (portable): {t_plain:.3f} ms; {csr_kernel_path()} path: {t_fast:.3f} ms "
    f"({t_plain / t_fast:.1f}x)"
)

# %% [markdown]
# ## 3. Storage: what each format costs
#
# A stored float32 value with an int32 column costs 8 bytes, twice a dense float32 weight:
# CSR float32/int32 only gets smaller than dense beyond 50% sparsity. int16 columns (K <=
# 32768) and int8 values (one float32 scale per output feature, `quantize_csr`) shrink each
# entry to 3 bytes. Measured on real arrays:

# %%
rows = []
for sparsity in (0.5, 0.9, 0.98):
    for rec in storage_bytes(K, N, sparsity):
        rows.append(
            {
                "sparsity": sparsity,
                "format": rec["format"],
                "values": rec["values"],
                "indices": rec["indices"] or "-",
                "KiB": rec["bytes"] / 1024,
                "x smaller": rec["ratio"],
            }
        )
print(format_table(rows))
by_key = {(r["sparsity"], r["format"], r["values"], r["indices"]): r["KiB"] for r in rows}
assert by_key[(0.5, "csr", "float32", "int32")] > by_key[(0.5, "dense", "float32", "-")]
assert by_key[(0.9, "csr", "int8", "int16")] < by_key[(0.9, "dense", "int8", "-")]

# %% [markdown]
# ## 4. Time against sparsity: where CSR breaks even
#
# The same layer, timed as dense float32 (`x @ w`), int8 (`int8_linear`, per-channel int8
# weights, activations quantized per row inside the kernel) and CSR with float32 and with int8
# values (`sparse_linear`). The dense times do not depend on the sparsity; CSR's fall with
# the number of stored weights. The break-even sparsity is where the CSR curve crosses each
# dense line. (Times are wall-clock medians on this machine; on a machine shared with other
# jobs they are noisy.)

# %%
sparsities = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
t_dense = median_ms(lambda: x @ w_full, repeat=REPEAT)
packed = pack_int8_linear(w_full)
t_int8 = median_ms(lambda: int8_linear(x, packed), repeat=REPEAT)
t_csr, t_csr_int8 = [], []
for sparsity in sparsities:
    w = pruned_weight(rng, K, N, sparsity)  # [K, N]
    w_t = dense_to_csr(np.ascontiguousarray(w.T))  # CSR [N, K]
    q_t, scale = quantize_csr(w_t)  # int8 values, float32 scale [N]
    assert np.allclose(sparse_linear(x, w_t), x @ w, rtol=1e-4, atol=1e-3)
    t_csr.append(median_ms(lambda w_t=w_t: sparse_linear(x, w_t), repeat=REPEAT))
    t_csr_int8.append(median_ms(lambda q=q_t, s=scale: sparse_linear(x, q, scale=s), repeat=REPEAT))
print(
    format_table(
        [
            {
                "sparsity": s,
                "csr fp32 ms": a,
                "csr int8 ms": b,
                "dense fp32 ms": t_dense,
                "dense int8 ms": t_int8,
            }
            for s, a, b in zip(sparsities, t_csr, t_csr_int8, strict=True)
        ]
    )
)


def break_even(times: list[float], line: float) -> str:
    """The lowest measured sparsity at which CSR is faster than ``line``."""
    faster = [s for s, t in zip(sparsities, times, strict=True) if t < line]
    return f">= {faster[0]:.0%}" if faster else "not reached"


print(
    f"CSR fp32 beats dense fp32 from sparsity {break_even(t_csr, t_dense)}, "
    f"dense int8 from {break_even(t_csr, t_int8)}"
)

fig, ax = plt.subplots(figsize=(6.5, 4))
ax.plot(sparsities, t_csr, "o-", label="CSR, float32 values (sparse_linear)")
ax.plot(sparsities, t_csr_int8, "s-", label="CSR, int8 values + scale")
ax.axhline(t_dense, color="k", ls="--", label="dense float32 (x @ w)")
ax.axhline(t_int8, color="tab:red", ls=":", label="dense int8 (int8_linear)")
ax.set_xlabel("sparsity (fraction of weights pruned)")
ax.set_ylabel("ms per call (median)")
ax.set_yscale("log")
ax.set_title(f"y = x @ w, x [{M}, {K}], w [{K}, {N}], one thread")
ax.legend(fontsize=8)
figure = FIGURES / "08_time_vs_sparsity.png"
save_figure(fig, figure, dpi=120)
print("saved", figure)

# %% [markdown]
# ## What to remember
# - A mask alone (zeros in a dense matrix) saves neither bytes nor time.
# - CSR pays 8 bytes per stored float32 weight (value + int32 column): it is smaller than
#   dense only beyond 50% sparsity; int16 columns and int8 values bring it to 3 bytes.
# - The CSR kernel does work proportional to the stored weights, but each one costs more
#   than a dense multiply-add (an indirect load): it wins only at high sparsity — around 80-90%
#   against dense float32 here, higher against int8 — unstructured sparsity needs to be high
#   to pay. `python -m minicompress bench` and `minicompress.report.bench_csr` give the full
#   table for several shapes and thread counts.
