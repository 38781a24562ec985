"""Timing and machine description for benchmarks (never for assertions in tests)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def median_ms(
    fn: Callable[[], object], repeat: int = 20, warmup: int = 2, min_seconds: float = 0.0
) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeat`` runs after ``warmup`` runs.

    With ``min_seconds`` > 0 the run continues past ``repeat`` until that much time has passed,
    so that very short calls are measured many times.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1; got {repeat}")
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def best_of_rounds(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    repeat: int = 20,
    min_seconds: float = 0.0,
    pause_s: float = 0.0,
) -> dict[str, float]:
    """Each function's smallest ``median_ms`` over ``rounds`` rounds; every round times every
    function once, in turn, after a pause of ``pause_s`` seconds.

    On a shared machine the speed of the cores drifts over seconds (measured here: the same
    call 1.5-2x slower for minutes at a time). Timing the contenders in alternation puts
    them through the same drift, and the best round of each is the least disturbed one.
    The pause lets the idle worker threads of a BLAS or OpenMP pool stop spinning, so that
    they do not compete with the next contender for the cores.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; got {rounds}")
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if pause_s:
                time.sleep(pause_s)
            best[name] = min(best[name], median_ms(fn, repeat=repeat, min_seconds=min_seconds))
    return best


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    repeat: int = 5,
    pause_s: float = 0.2,
    min_seconds: float = 0.0,
) -> dict[str, list[float]]:
    """Every call's wall time in milliseconds, at least ``rounds * repeat`` per function,
    timed in rounds: round r starts with function r (mod n) and goes on in turn (a rotating
    start, so that no function always follows the same one); before a function's timed
    calls come a pause of ``pause_s`` seconds and one untimed call. Within a round a
    function is called ``repeat`` times, and more until ``min_seconds`` have passed (short
    calls get many samples).

    The pause lets the worker threads of the previous library (BLAS, OpenMP, a runtime's
    pool) stop spinning; the untimed call wakes this one's threads and caches. ->
    {name: [ms, ...]} in the order of ``fns``; summarize with min and median.
    """
    if rounds < 1 or repeat < 1:
        raise ValueError(f"rounds and repeat must be >= 1; got {rounds} and {repeat}")
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(pause_s)
            fns[name]()
            start, n = time.perf_counter(), 0
            while n < repeat or time.perf_counter() - start < min_seconds:
                t0 = time.perf_counter()
                fns[name]()
                times[name].append((time.perf_counter() - t0) * 1e3)
                n += 1
    return times


def blas_info() -> list[dict]:
    """The BLAS libraries loaded: library, version, kernel (architecture), threads."""
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads", "filepath")
    return [{k: d.get(k) for k in keys} for d in threadpool_info() if d.get("user_api") == "blas"]


def blas_summary() -> str:
    """One line naming the BLAS kernel NumPy uses, e.g. ``openblas 0.3.29 SkylakeX, 2 threads``.

    SciPy may load a BLAS of its own; the one under NumPy's folder is the one ``x @ w`` runs.
    """
    infos = blas_info()
    numpy_own = [d for d in infos if "numpy" in (d.get("filepath") or "")]
    parts = [
        f"{d['internal_api']} {d['version']} {d['architecture']}, {d['num_threads']} threads"
        for d in (numpy_own or infos)
    ]
    return "; ".join(parts) or "unknown BLAS"
