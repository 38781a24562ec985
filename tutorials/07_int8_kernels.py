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
# # 07 — int8 kernels: from a triple loop to the VNNI micro-kernel
#
# A quantized linear layer only saves time if its integer matrix product is fast. This
# chapter builds one up: the exact contract (`kernels/reference.py`), why the sums must be
# int32, what the activation zero point costs, and the fast paths of
# `minicompress.kernels`, one per kind of CPU:
#
# | path | runs on | multiplies with | products / instr. |
# |---|---|---|---|
# | **portable** | any CPU | LLVM's own loop (`vpmaddwd` on x86) | 8-16 |
# | **avx2** | AVX2 only: Intel 4th-9th, 12th gen. on, AMD Zen 1-3 | `vpmaddubsw`+`vpmaddwd` | 32 |
# | | ... with AVX-VNNI (Intel 12th generation on) | `vpdpbusd` on ymm | 32 |
# | **vnni** | AVX-512 VNNI: Intel 10th-11th gen., Xeons, AMD Zen 4 on | `vpdpbusd` on zmm | 64 |
# | **amx** | AMX-INT8: Xeons since Sapphire Rapids | `tdpbusd` on tiles | 16,384 |
#
# `auto` picks the fastest one the CPU runs (`kernels/cpu.py`). The x86 ones are LLVM IR
# written through Numba `@intrinsic`s over weights packed once; all give the same bits.
#
# Run with `python tutorials/07_int8_kernels.py` (`MINICOMPRESS_FAST=1`: fewer timings).
# `MINICOMPRESS_KERNEL=portable` (or `avx2`, `vnni`, `amx`) forces one path everywhere.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt
import numba
import numpy as np

from minicompress.kernels import (
    MAX_K_INT32,
    cpu,
    int8_gemm,
    int8_gemm_reference,
    int8_kernel_path,
    int8_linear,
    pack_int8_linear,
    quantize_rows_uint8,
    quantize_weight_per_channel,
    quantized_linear_reference,
)
from minicompress.kernels.x86 import amx as amx_kernels
from minicompress.kernels.x86 import vnni as vnni_kernels
from minicompress.report.bench_int8 import run_int8_bench
from minicompress.report.plots import save_figure
from minicompress.report.timing import blas_summary

FAST = os.environ.get("MINICOMPRESS_FAST") == "1"
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
FIGURES = HERE / "figures"
os.makedirs(FIGURES, exist_ok=True)
rng = np.random.default_rng(0)
PATHS = cpu.int8_paths_here()  # the int8 paths this CPU runs, slowest first
HAS_VNNI = "vnni" in PATHS
HAS_AMX = "amx" in PATHS
print(f"int8 paths this CPU runs: {PATHS}; 'auto' is {int8_kernel_path('auto')!r}")
for name, features in (
    ("an AVX2 laptop (Zen 3)", cpu.AVX2),
    ("an Alder Lake laptop", cpu.AVX2 | cpu.AVX_VNNI),
    ("an Ice Lake server", cpu.AVX2 | cpu.AVX512_VNNI),
    ("a CPU without AVX2", frozenset({"avx"})),
):
    path = cpu.choose_int8_path(features)
    print(f"  on {name:24s} auto runs {path:8s} with {cpu.instructions(path, features)}")
assert cpu.choose_int8_path(cpu.AVX2) == "avx2"

# %% [markdown]
# ## 1. The contract, and a triple loop
#
# $c_{mn} = \sum_k a_{mk} b_{kn}$ with $a$ uint8 $[M, K]$ (activations), $b$ int8 $[K, N]$
# (weights), $c$ int32. `int8_gemm_reference` is the definition. The loop below is a
# **deliberately naive teaching copy** — the slowest correct kernel — checked against it.


# %%
def naive_int8_gemm(a, b):  # teaching only: three loops, int accumulators
    m_total, k_total = a.shape
    c = np.zeros((m_total, b.shape[1]), dtype=np.int32)  # [M, N]
    for m in range(m_total):
        for n in range(b.shape[1]):
            acc = 0
            for k in range(k_total):
                acc += int(a[m, k]) * int(b[k, n])
            c[m, n] = acc
    return c


a = rng.integers(0, 256, (3, 7), dtype=np.uint8)  # [M, K]
b = rng.integers(-128, 128, (7, 5), dtype=np.int8)  # [K, N]
assert np.array_equal(naive_int8_gemm(a, b), int8_gemm_reference(a, b))
for path in PATHS:
    assert np.array_equal(int8_gemm(a, b, path=path), int8_gemm_reference(a, b))
print("triple loop == reference ==", " == ".join(PATHS))

# %% [markdown]
# ## 2. Why int32 accumulators
#
# A product of a uint8 and an int8 is at most $255 \cdot 128 = 32640$ in size: it already
# needs 16 bits, and a sum of $K$ of them needs $\log_2 K$ more. NumPy's `@` on int8 arrays
# keeps int8 and wraps around silently:

# %%
a8 = np.full((1, 4), 100, dtype=np.int8)
b8 = np.full((4, 1), 100, dtype=np.int8)
wrapped = (a8 @ b8)[0, 0]
exact = int8_gemm(a8, b8)[0, 0]
print(f"int8 @ int8 in NumPy: {wrapped}   exact (int32 accumulators): {exact}")
assert exact == 4 * 100 * 100 and wrapped != exact
print(f"int32 is exact for any values while K <= MAX_K_INT32 = {MAX_K_INT32:,}")
assert MAX_K_INT32 * 255 * 128 <= 2**31 - 1 < (MAX_K_INT32 + 1) * 255 * 128

# %% [markdown]
# ## 3. What the zero point costs
#
# Activations are quantized per row with a zero point (`quantize_rows_uint8`):
# $x_{mk} \approx s_m (q_{mk} - z_m)$. The layer needs $\sum_k (q_{mk} - z_m) w_{kn}$, which
# splits into the plain integer GEMM minus a correction:
# $$\sum_k (q_{mk} - z_m)\, w_{kn} = \underbrace{\sum_k q_{mk} w_{kn}}_{\text{int8 GEMM}}
#   - z_m \underbrace{\textstyle\sum_k w_{kn}}_{\text{col\_sum}_n}.$$
# The column sums depend only on the weights: `pack_int8_linear` computes them once. The
# correction is then one multiply-add per output, $O(MN)$ next to the GEMM's $O(MKN)$.

# %%
m, k, n = 4, 64, 32
x = rng.standard_normal((m, k), dtype=np.float32)
w = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
q_x, s_x, z_x = quantize_rows_uint8(x)  # [M, K] uint8, [M], [M]
w_q, w_scale = quantize_weight_per_channel(w)  # [K, N] int8, [N]
packed = pack_int8_linear(w, None, path="portable")
centered = (q_x.astype(np.int32) - z_x[:, None]) @ w_q.astype(np.int32)  # [M, N]
corrected = int8_gemm(q_x, w_q) - z_x[:, None] * packed.col_sum[None, :]  # [M, N]
assert np.array_equal(centered, corrected)
print(
    f"zero points {z_x}: correction exact; it costs {m * n} multiply-adds next to the "
    f"GEMM's {m * k * n} ({m * n / (m * k * n):.1%})"
)

# %% [markdown]
# ## 4. The packed layout and the VNNI micro-kernel
#
# `vpdpbusd acc, a, b` reads 64 bytes of `a` (unsigned) and 64 of `b` (signed) as 16 lanes
# of 4 bytes and adds, in each int32 lane $i$,
# $\mathrm{acc}_i \mathrel{+}= \sum_{t<4} a_{4i+t}\, b_{4i+t}$.
# To use it for $c = a\,w$ the kernel
#
# 1. **packs** $w$ once as $[N/16, K/4, 16, 4]$: for 16 output columns, 4 consecutive $k$
#    of each column sit together, so one 64-byte load feeds 16 columns $\times$ 4 $k$;
# 2. **broadcasts** 4 bytes of an activation row (the same 4 $k$) to all 16 lanes
#    (`vpbroadcastd`);
# 3. keeps a **register tile** of 8 rows $\times$ 48 columns (24 zmm accumulators) for the
#    whole $K$ loop, then dequantizes it in registers and stores float32. Each 64-byte
#    weight load feeds 8 `vpdpbusd`, and a 48-column panel of weights (36 KB at K = 768)
#    stays in the L1 cache while the row tiles pass over it.
#
# K is padded to a multiple of 4 and N to a multiple of 16 with zero weights, so padding
# never changes a sum. Below, one 64-byte block of the packed weights:

# %%
w_small = np.arange(8 * 16, dtype=np.int8).reshape(8, 16)  # [K=8, N=16], w[k, n] = 16k + n
packed_small = vnni_kernels.pack_weight(w_small)  # [N/16, K/4, 16, 4]
print("packed shape", packed_small.shape)
print("block [0, 0]: lane i holds w[0:4, i] =", packed_small[0, 0, :3].tolist(), "...")
assert np.array_equal(packed_small[0, 0, 1], w_small[0:4, 1])
assert np.array_equal(vnni_kernels.unpack_weight(packed_small, 8, 16), w_small)

# %% [markdown]
# No loop form makes Numba's auto-vectorizer emit `vpdpbusd`, so the micro-kernel is an
# `@intrinsic` (`vnni._dpbusd_tile`) that writes the LLVM IR by hand. On a VNNI CPU we can
# check that the machine code really contains the instruction:

# %%
if HAS_VNNI:
    tile = numba.njit(vnni_kernels._tile.py_func)  # an uncached copy, so asm is available
    mr, nv = vnni_kernels.MR, vnni_kernels.NV  # 8 rows x 3 vectors of 16 columns
    a_pad = np.zeros((mr, 8), np.uint8)
    c_tile = np.zeros((mr, 16 * nv), np.int32)
    tile(
        mr,
        nv,
        a_pad,
        0,
        vnni_kernels.pack_weight(np.zeros((8, 16 * nv), np.int8)),
        0,
        c_tile,
        0,
        0,
    )
    asm = tile.inspect_asm(tile.signatures[0])
    lines = [ln.strip() for ln in asm.splitlines() if "vpdpbusd" in ln]
    print(f"{len(lines)} vpdpbusd instructions, e.g. {lines[0]!r}")
    assert lines
else:
    print("no VNNI here: the portable path runs instead")

# %% [markdown]
# ### 4a. AVX2: two instructions, and a trap
#
# Most students' laptops have no AVX-512. Their int8 product is two AVX2 instructions on
# 256-bit (ymm) registers, which int8 libraries use:
#
# - `vpmaddubsw p, a, b`: 32 unsigned bytes of `a` times 32 signed bytes of `b`; each pair
#   of neighbouring products summed into an **int16, with saturation**:
#   $p_i = \mathrm{sat}_{16}(a_{2i} b_{2i} + a_{2i+1} b_{2i+1})$;
# - `vpmaddwd d, p, 1`: pairs of those int16 summed into int32, $d_j = p_{2j} + p_{2j+1}$.
#
# Together they add 4 products to each int32 lane, like `vpdpbusd`. The trap: $255 \cdot 127
# = 32385$ fits an int16, but two of them, $64770$, do not, and the pair silently sticks at
# $32767$. PyTorch's answer is `reduce_range` (7-bit activations: a different quantizer).
# Ours keeps the reference's numbers by choosing the ranges (`x86/avx2.py`): centre the
# activations, $x_8 = q - 128 \in [-128, 127]$, so that $\sum q w = \sum x_8 w + 128 \sum
# w$ (the second sum is the layer's `col_sum`); multiply $|x_8| \in [0, 128]$ (unsigned,
# `vpabsb`) by $w \cdot \mathrm{sign}(x_8) \in [-127, 127]$ (signed, `vpsignb`): a pair is
# then at most $2 \cdot 128 \cdot 127 = 32512$. Below, the case that breaks the plain form:

# %%
k_sat = 8
a_sat = np.full((1, k_sat), 255, dtype=np.uint8)  # [1, K]: codes at the top of the range
b_sat = np.full((k_sat, 8), 127, dtype=np.int8)  # [K, 8]: weights at the top
products = a_sat.astype(np.int64)[0, :, None] * b_sat.astype(np.int64)  # [K, 8]
plain = np.clip(products[0::2] + products[1::2], -32768, 32767).sum(axis=0)  # saturated pairs
exact_sat = int8_gemm_reference(a_sat, b_sat)[0]
print(f"exact sum {exact_sat[0]}, plain vpmaddubsw + vpmaddwd {plain[0]}")
assert plain[0] == 32767 * k_sat // 2 < exact_sat[0] == 255 * 127 * k_sat
if "avx2" in PATHS:
    assert np.array_equal(int8_gemm(a_sat, b_sat, path="avx2")[0], exact_sat)
    print(f"the avx2 path ({cpu.instructions('avx2', cpu.target_features())}): exact")
# the centred form, written out: every pair stays within 2 * 128 * 127
x8 = a_sat.astype(np.int64) - 128  # [1, K] in [-128, 127]
signed = b_sat.astype(np.int64) * np.sign(x8)[0, :, None]  # [K, 8] in [-127, 127]
pairs = np.abs(x8)[0, 0::2, None] * signed[0::2] + np.abs(x8)[0, 1::2, None] * signed[1::2]
assert np.abs(pairs).max() <= 2 * 128 * 127 < 32767
centred = pairs.sum(axis=0) + 128 * b_sat.astype(np.int64).sum(axis=0)
assert np.array_equal(centred, exact_sat)

# %% [markdown]
# Where the CPU has AVX-VNNI (Intel Alder Lake and later, and this machine), the avx2 path
# uses its `vpdpbusd` on ymm registers instead: one instruction, no saturation, the same
# packed weights (8 columns x 4 k per ymm register).

# %% [markdown]
# ### 4b. AMX: a matrix unit behind eight tile registers
#
# Newer Intel server CPUs (Sapphire Rapids on) also have AMX: eight *tile* registers of
# 16 rows $\times$ 64 bytes and one instruction, `tdpbusd`, that multiplies a 16 $\times$ 64
# tile of uint8 activations by a 64 $\times$ 16 tile of int8 weights, 16,384 products at once.
# The weight tile is exactly one 1 KB block of the packed layout above (16 groups of 4 $k$
# of 16 columns), so the AMX path (`kernels/amx.py`) reuses the packing with $K$ padded to
# 64. The unit computes far faster than it can be fed: each tile comes from memory, so the
# kernel keeps 2 $\times$ 2 output tiles (32 $\times$ 32 int32) and loads 4 KB per 64 $k$.
# It pays off for many rows or large layers (`amx.use_tiles`); below that, the VNNI
# kernel runs on the same packed weights. The integers, and so the floats, are the same:

# %%
if HAS_AMX:
    m_big, k_big, n_big = 130, 200, 70  # M >= amx.MIN_ROWS; K and N not multiples of a tile
    x_big = rng.standard_normal((m_big, k_big), dtype=np.float32)
    w_big = rng.standard_normal((k_big, n_big), dtype=np.float32)
    y_amx = int8_linear(x_big, pack_int8_linear(w_big, None, path="amx"))
    y_vnni = int8_linear(x_big, pack_int8_linear(w_big, None, path="vnni"))
    assert amx_kernels.use_tiles(m_big, pack_int8_linear(w_big, None, path="amx").weight)
    assert np.array_equal(y_amx, y_vnni)
    print(f"AMX tiles and VNNI agree bit for bit on a {m_big} x {k_big} x {n_big} layer")
else:
    print("no AMX tiles here (or the OS did not lend them): VNNI or portable runs instead")

# %% [markdown]
# ## 5. The int8 linear layer end to end
#
# `int8_linear(x, packed)` takes float32 and returns float32: it quantizes each row of `x`
# (bit for bit as `quantize_rows_uint8`, inside the Numba kernel), runs the integer GEMM,
# applies the zero-point correction and the scales, and adds the bias:
# $y = s_x\, s_w\, (q_x w_q - z_x\,\mathrm{col\_sum}) + b$. Every path gives the same floats.

# %%
m, k, n = 33, 100, 70  # odd sizes on purpose: padding of K and N, a partial row tile
x = rng.standard_normal((m, k), dtype=np.float32)
w = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
bias = rng.standard_normal(n, dtype=np.float32)
ref = quantized_linear_reference(x, *quantize_weight_per_channel(w), bias)
outputs = {p: int8_linear(x, pack_int8_linear(w, bias, path=p)) for p in PATHS}
for y in outputs.values():
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
if HAS_VNNI:
    assert np.array_equal(outputs["portable"], outputs["vnni"])  # bit for bit
err = np.abs(ref - (x @ w + bias))
print(
    f"all paths agree; int8 vs float32 layer: max |error| {err.max():.4f}, "
    f"output std {np.std(x @ w + bias):.3f}"
)

# %% [markdown]
# ## 6. How fast
#
# `run_int8_bench` times the layer end to end (activation quantization included) against
# NumPy's fp32 `x @ w + b` and, when PyTorch is installed, its dynamic int8 `nn.Linear`.
# Medians in milliseconds (here one round; `python -m minicompress bench kernels` keeps the
# best of three rounds in which NumPy, torch and ours are timed in turn, so that all go
# through the same drift of a shared machine's speed), on one thread: a fair comparison
# (every library gets one core)
# and a stable one on a busy machine, where a parallel call can wait a whole scheduler
# time slice for its second thread. `run_int8_bench(quick, threads_list=(1, 2))` times both.

# %%
threads = 1
records = run_int8_bench(quick=FAST, threads_list=(threads,), rounds=1)  # `bench`: 3 rounds
print(f"BLAS: {blas_summary()}; threads: {threads}")
print(
    f"{'path':>9} {'M':>4} {'K':>5} {'N':>5} {'ms':>8} {'numpy ms':>9} {'x numpy':>8} "
    f"{'torch ms':>9}"
)
for r in records:
    torch_ms = "-" if r["torch_ms"] is None else f"{r['torch_ms']:.3f}"
    print(
        f"{r['path']:>9} {r['M']:>4} {r['K']:>5} {r['N']:>5} {r['ms']:8.3f} "
        f"{r['numpy_ms']:9.3f} {r['speedup_vs_numpy']:8.2f} {torch_ms:>9}"
    )

# %%
k_plot, n_plot = records[-1]["K"], records[-1]["N"]
shape = [r for r in records if (r["K"], r["N"]) == (k_plot, n_plot)]
fig, ax = plt.subplots(figsize=(6, 3.5))
for path in dict.fromkeys(r["path"] for r in shape):
    rows = [r for r in shape if r["path"] == path]
    ax.plot([r["M"] for r in rows], [r["ms"] for r in rows], "o-", label=f"int8 {path}")
numpy_rows = [r for r in shape if r["path"] == shape[0]["path"]]
ax.plot(
    [r["M"] for r in numpy_rows], [r["numpy_ms"] for r in numpy_rows], "s--", label="NumPy fp32"
)
if numpy_rows[0]["torch_ms"] is not None:
    ax.plot(
        [r["M"] for r in numpy_rows],
        [r["torch_ms"] for r in numpy_rows],
        "^:",
        label="torch dynamic int8",
    )
ax.set(
    xscale="log",
    yscale="log",
    xlabel="M (tokens)",
    ylabel="ms (median)",
    title=f"linear layer K={k_plot}, N={n_plot}, {threads} thread(s)",
)
ax.legend()
save_figure(fig, FIGURES / "07_int8_paths.png", dpi=120)
print("saved", FIGURES / "07_int8_paths.png")
assert all(r["ms"] > 0 for r in records)
