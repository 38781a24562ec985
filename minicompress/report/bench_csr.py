"""Benchmark of the sparse linear layer: ``csr.sparse_linear`` against scipy.sparse and dense NumPy.

``run_csr_bench`` times ``y = x @ w`` for a pruned weight w [K, N] three ways:

- ours:   ``sparse_linear(x, w_t)`` with w_t = CSR of w.T (Numba, ``numba.set_num_threads``);
- scipy:  the faster, case by case, of ``(w_t_scipy @ x.T).T`` and ``x @ w_scipy`` (both
          are timed; which one wins depends on M: the first is a matrix-vector product at
          M = 1; scipy's CSR products run on one thread whatever the setting);
- dense:  ``x @ w`` in float32 (the BLAS NumPy ships, limited by threadpoolctl).

``storage_bytes`` counts the bytes of each way of storing the same weight, from real arrays.
Nothing is printed here; the CLI and the tutorial format the records.
"""

from __future__ import annotations

import time

import numba
import numpy as np
import scipy.sparse
from threadpoolctl import threadpool_limits

from minicompress.kernels.csr import csr_kernel_path, dense_to_csr, quantize_csr, sparse_linear
from minicompress.kernels.reference import quantize_weight_per_channel
from minicompress.report.timing import blas_summary, median_ms

FULL_M = (1, 32, 128, 512)  # tokens per call: one (decoding) to a batch of sequences
FULL_SHAPES = ((256, 1024), (1024, 256), (768, 3072))  # (K, N): up, down, BERT-base MLP
FULL_SPARSITY = (0.5, 0.8, 0.9, 0.95, 0.98)
QUICK_M = (1, 32)
QUICK_SHAPES = ((256, 1024),)
QUICK_SPARSITY = (0.9,)
PAUSE_S = 0.2  # lets idle BLAS / Numba worker threads stop spinning between passes


def pruned_weight(rng: np.random.Generator, k: int, n: int, sparsity: float) -> np.ndarray:
    """A float32 [K, N] weight with round(sparsity * K * N) zeros, unstructured.

    Normal values with the smallest |w| set to zero: the pattern that magnitude pruning
    leaves on a trained layer (no structure, every row a different length).
    """
    w = rng.standard_normal((k, n)).astype(np.float32)  # [K, N]
    n_zero = round(sparsity * w.size)
    if n_zero:
        smallest = np.argpartition(np.abs(w), n_zero - 1, axis=None)[:n_zero]
        w.flat[smallest] = 0.0
    return w


def storage_bytes(k: int, n: int, sparsity: float, seed: int = 0) -> list[dict]:
    """Bytes needed to store one pruned [K, N] weight in each format, measured on real arrays.

    Formats: fp32 dense; int8 dense + one float32 scale per output; CSR of w.T with float32
    or int8 values (+ scales) and int32 or int16 column indices (indptr is always int32).
    Each record: format, values, indices, bytes, ratio (fp32 dense bytes / bytes).
    """
    w = pruned_weight(np.random.default_rng(seed), k, n, sparsity)  # [K, N]
    q, scale = quantize_weight_per_channel(w)  # int8 [K, N], float32 [N]
    sizes = [("dense", "float32", None, w.nbytes), ("dense", "int8", None, q.nbytes + scale.nbytes)]
    for index_dtype in (np.int32, np.int16):
        w_t = dense_to_csr(np.ascontiguousarray(w.T), index_dtype)  # [N, K]
        q_t, q_scale = quantize_csr(w_t)
        name = np.dtype(index_dtype).name
        sizes.append(("csr", "float32", name, w_t.nbytes()))
        sizes.append(("csr", "int8", name, q_t.nbytes() + q_scale.nbytes))
    return [
        {
            "K": k,
            "N": n,
            "sparsity": sparsity,
            "format": fmt,
            "values": values,
            "indices": indices,
            "bytes": int(size),
            "ratio": w.nbytes / size,
        }
        for fmt, values, indices, size in sizes
    ]


def run_csr_bench(
    quick: bool, threads_list: tuple[int, ...] = (1, 2), seed: int = 0, repeat: int | None = None
) -> list[dict]:
    """Time ours / scipy / dense fp32 for each M, (K, N), sparsity and thread count.

    Times are medians (``median_ms``) of ``repeat`` calls after warm-up; scipy's is the
    faster of its two formulations (``scipy_form`` says which). Ours, scipy and
    dense are timed in separate passes (see ``_sweep``), and the three passes are repeated
    in ``rounds`` rounds (3; 1 when ``quick``), each case keeping its best round: the speed
    of a shared machine drifts over seconds, and alternating puts the three contenders
    through the same drift. ``quick`` runs one shape (a few seconds once the kernels are in
    Numba's disk cache).
    Records: kernel ("csr_linear"), path (``csr_kernel_path()``), M, K, N, threads, sparsity,
    nnz, ms, scipy_ms, numpy_ms,
    speedup_vs_scipy, speedup_vs_numpy, scipy_form, blas.
    """
    m_list = QUICK_M if quick else FULL_M
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    sparsities = QUICK_SPARSITY if quick else FULL_SPARSITY
    repeat = repeat if repeat is not None else (5 if quick else 15)
    rounds = 1 if quick else 3
    rng = np.random.default_rng(seed)
    saved_threads = numba.get_num_threads()

    def timed(fn) -> float:
        return median_ms(fn, repeat=repeat, min_seconds=0.02)

    records = []
    try:
        for threads in threads_list:
            numba.set_num_threads(threads)
            with threadpool_limits(limits=threads, user_api="blas"):
                records += _sweep(rng, m_list, shapes, sparsities, threads, timed, rounds)
    finally:
        numba.set_num_threads(saved_threads)
    return records


def _sweep(rng, m_list, shapes, sparsities, threads, timed, rounds) -> list[dict]:
    """One thread count: every case timed ours, then scipy, then dense, in separate passes,
    ``rounds`` times over; each case keeps its best time of each contender.

    OpenBLAS's worker threads keep spinning for a while after a matmul, and Numba's after a
    parallel region; timing the three back to back would make each fight the other's idle
    threads for the two cores (measured: 8-16 ms per call instead of 0.1-1 ms). Hence the
    passes, and a pause before each.
    """
    blas = blas_summary()
    cases = []  # (m, k, n, sparsity, x, w, w_t, scipy_forms)
    for k, n in shapes:
        xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in m_list}  # [M, K]
        for sparsity in sparsities:
            w = pruned_weight(rng, k, n, sparsity)  # [K, N]
            w_t = dense_to_csr(np.ascontiguousarray(w.T))  # [N, K]
            forms = _scipy_forms(w)
            for m in m_list:
                _check_same(sparse_linear(xs[m], w_t), xs[m] @ w)
                cases.append((m, k, n, sparsity, xs[m], w, w_t, forms))
    dense_cases = {}  # the dense time does not depend on the sparsity
    for m, k, n, _, x, w, _, _ in cases:
        dense_cases.setdefault((m, k, n), (x, w))
    ours = [np.inf] * len(cases)
    scipy_ms = [dict.fromkeys(c[7], np.inf) for c in cases]  # per case, per scipy form
    dense_ms = dict.fromkeys(dense_cases, np.inf)
    for _ in range(rounds):
        time.sleep(PAUSE_S)
        ours = [
            min(t, timed(lambda c=c: sparse_linear(c[4], c[6])))
            for t, c in zip(ours, cases, strict=True)
        ]
        time.sleep(PAUSE_S)
        for best, c in zip(scipy_ms, cases, strict=True):
            for form, fn in c[7].items():
                best[form] = min(best[form], timed(lambda fn=fn, x=c[4]: fn(x)))
        time.sleep(PAUSE_S)
        for key, (x, w) in dense_cases.items():
            dense_ms[key] = min(dense_ms[key], timed(lambda x=x, w=w: x @ w))
    return [
        {
            "kernel": "csr_linear",
            "path": csr_kernel_path(),
            "M": m,
            "K": k,
            "N": n,
            "threads": threads,
            "sparsity": sparsity,
            "nnz": int(w_t.data.size),
            "ms": t,
            "scipy_ms": min(by_form.values()),
            "numpy_ms": dense_ms[m, k, n],
            "speedup_vs_scipy": min(by_form.values()) / t,
            "speedup_vs_numpy": dense_ms[m, k, n] / t,
            "scipy_form": min(by_form, key=by_form.get),
            "blas": blas,
        }
        for (m, k, n, sparsity, _, _, w_t, _), t, by_form in zip(cases, ours, scipy_ms, strict=True)
    ]


def _scipy_forms(w: np.ndarray) -> dict:
    w_t_scipy = scipy.sparse.csr_matrix(np.ascontiguousarray(w.T))  # [N, K]
    w_scipy = scipy.sparse.csr_matrix(w)  # [K, N]
    return {
        "wT@xT": lambda x: (w_t_scipy @ x.T).T,  # CSR [N, K] @ [K, M] -> [N, M] -> [M, N]
        "x@w": lambda x: x @ w_scipy,  # [M, K] @ CSR [K, N] -> [M, N]
    }


def _check_same(ours: np.ndarray, dense: np.ndarray) -> None:
    """Never time a wrong answer: ours must match the dense product to float32 rounding."""
    tol = 1e-4 * (float(np.abs(dense).max()) + 1.0)
    if not np.allclose(ours, dense, rtol=1e-4, atol=tol):
        raise AssertionError(f"sparse_linear differs from x @ w by {np.abs(ours - dense).max()}")
