"""Benchmark of the int8 linear layer end to end (float32 in, float32 out) against NumPy fp32
``x @ w + b`` and, when PyTorch is installed, ``torch.ao.quantization.quantize_dynamic``.

Every int8 path that runs here is measured (``cpu.int8_paths_here``: ``amx`` on a CPU with
AMX-INT8 tiles, ``vnni`` on one with AVX-512 VNNI, ``avx2`` on one with AVX2, always
``portable``), the one ``auto`` picks first, on each thread count. To measure what an AVX2
laptop would run on a newer CPU, let Numba compile for one and NumPy use OpenBLAS's AVX2
kernel: ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+avx2 OPENBLAS_CORETYPE=Haswell``
(``kernels/cpu.py``: ``NUMBA_CPU_NAME`` alone keeps the host's features). Each record names
the instructions the path multiplied with and the BLAS kernel NumPy ran. Numba threads are set with
``numba.set_num_threads``, BLAS threads with ``threadpoolctl.threadpool_limits`` and
PyTorch's with ``torch.set_num_threads``; all are restored afterwards. Nothing is printed:
the CLI formats the records.
"""

from __future__ import annotations

import warnings

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from minicompress.kernels.cpu import instructions, int8_paths_here, target_features
from minicompress.kernels.int8 import int8_kernel_path, int8_linear, pack_int8_linear
from minicompress.report.timing import best_of_rounds, blas_summary

M_VALUES = (1, 32, 128, 512)
KN_VALUES = ((256, 1024), (1024, 256), (768, 3072))
QUICK_M_VALUES = (1, 128)
QUICK_KN_VALUES = ((768, 3072),)
ROUNDS = 3  # rounds of the full benchmark: NumPy, torch and ours in turn (``best_of_rounds``)
PAUSE_S = 0.05  # before each timing: idle BLAS / OpenMP / Numba threads stop spinning


def _torch_dynamic_linear(w: np.ndarray, bias: np.ndarray):
    """A forward function of torch's dynamic int8 ``nn.Linear``, or None without torch."""
    try:
        import torch
    except ImportError:
        return None, None
    k, n = w.shape
    layer = torch.nn.Linear(k, n)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))  # [N, K] layout
        layer.bias.copy_(torch.from_numpy(bias))
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
        warnings.simplefilter("ignore")
        qlayer = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(layer), {torch.nn.Linear}, dtype=torch.qint8
        )

    def forward(x_t):
        with torch.inference_mode():
            return qlayer(x_t)

    return torch, forward


def run_int8_bench(
    quick: bool,
    threads_list: tuple[int, ...] = (1, 2),
    rounds: int | None = None,
    shapes: tuple[tuple[int, int, int], ...] | None = None,
) -> list[dict]:
    """Time ``int8_linear`` (every kernel path that runs here) against NumPy fp32 and torch.

    quick: True for one shape family and few repeats (a few seconds, for CI).
    threads_list: thread counts to run on.
    rounds: alternating rounds (``best_of_rounds``); default ROUNDS, or 1 when ``quick``.
    shapes: (M, K, N) triples to time instead of the grid M_VALUES x KN_VALUES.

    Returns one dict per (path, M, K, N, threads) with keys kernel, path, instructions
    (what the path multiplies with here), M, K, N, threads, ms, numpy_ms, speedup_vs_numpy,
    torch_ms, speedup_vs_torch (the last two None without torch), blas (the BLAS kernel
    NumPy ran, ``blas_summary``). Times are medians in milliseconds, the best of ROUNDS
    rounds in which every contender is timed in turn (one round when ``quick``).
    """
    for t in threads_list:
        if not isinstance(t, int) or not 1 <= t <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(
                f"threads_list entries must be ints in [1, {numba.config.NUMBA_NUM_THREADS}]; "
                f"got {t!r}"
            )
    m_values, kn_values = (QUICK_M_VALUES, QUICK_KN_VALUES) if quick else (M_VALUES, KN_VALUES)
    if shapes is None:
        shapes = tuple((m, k, n) for k, n in kn_values for m in m_values)
    for shape in shapes:
        if len(shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise ValueError(f"shapes must hold (M, K, N) triples of ints >= 1; got {shape!r}")
    timing = (
        {"rounds": 1, "repeat": 5, "min_seconds": 0.02, "pause_s": 0.0}
        if quick
        else {"rounds": ROUNDS, "repeat": 20, "min_seconds": 0.1, "pause_s": PAUSE_S}
    )
    if rounds is not None:
        if not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be an int >= 1; got {rounds!r}")
        timing["rounds"] = rounds
    # auto first, then every other kernel path that runs here, fastest first; no duplicate
    here = [p for p in reversed(int8_paths_here()) if p != "reference"]
    paths = list(dict.fromkeys([int8_kernel_path(), *here]))
    rng = np.random.default_rng(0)
    records = []
    old_numba_threads = numba.get_num_threads()
    try:
        for k, n in dict.fromkeys((k, n) for _, k, n in shapes):
            w = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
            bias = rng.standard_normal(n, dtype=np.float32)
            packed = {p: pack_int8_linear(w, bias, path=p) for p in paths}
            torch, torch_forward = _torch_dynamic_linear(w, bias)
            for m in [m for m, k2, n2 in shapes if (k2, n2) == (k, n)]:
                x = rng.standard_normal((m, k), dtype=np.float32)
                x_t = torch.from_numpy(x) if torch is not None else None
                for threads in threads_list:
                    records += _time_one(
                        x, w, bias, packed, torch, torch_forward, x_t, threads, timing
                    )
    finally:
        numba.set_num_threads(old_numba_threads)
    return records


def _time_one(x, w, bias, packed, torch, torch_forward, x_t, threads, timing):
    """Records of every path for one shape on ``threads`` threads: NumPy, torch and each of
    our paths timed in alternation (``best_of_rounds``), each figure its best round."""
    m, k = x.shape
    n = w.shape[1]
    fns = {"numpy": lambda: x @ w + bias}
    if torch is not None:
        fns["torch"] = lambda: torch_forward(x_t)
    for path, layer in packed.items():
        fns[path] = lambda layer=layer: int8_linear(x, layer)
    numba.set_num_threads(threads)
    old_torch_threads = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None:
            torch.set_num_threads(threads)
        with threadpool_limits(limits=threads):
            ms = best_of_rounds(fns, **timing)
            blas = blas_summary()  # the kernel and the thread count NumPy ran with
    finally:
        if torch is not None:
            torch.set_num_threads(old_torch_threads)
    torch_ms = ms.get("torch")
    features = target_features()
    return [
        {
            "kernel": "int8_linear",
            "path": path,
            "instructions": instructions(path, features),
            "M": m,
            "K": k,
            "N": n,
            "threads": threads,
            "ms": ms[path],
            "numpy_ms": ms["numpy"],
            "speedup_vs_numpy": ms["numpy"] / ms[path],
            "torch_ms": torch_ms,
            "speedup_vs_torch": None if torch_ms is None else torch_ms / ms[path],
            "blas": blas,
        }
        for path in packed
    ]
