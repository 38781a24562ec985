"""``report/bench_int8.py``: the int8 layer benchmark's records (its speed is reported by
``python -m minicompress bench kernels``, never asserted)."""

from __future__ import annotations

import pytest

from minicompress.kernels import cpu
from minicompress.kernels.int8 import int8_kernel_path
from minicompress.report import bench_int8


def test_bench_records(monkeypatch):
    monkeypatch.setattr(bench_int8, "_torch_dynamic_linear", lambda w, b: (None, None))
    monkeypatch.setattr(bench_int8, "QUICK_KN_VALUES", ((64, 48),))  # keep the test short
    records = bench_int8.run_int8_bench(quick=True, threads_list=(1,))
    keys = {
        "kernel",
        "path",
        "M",
        "K",
        "N",
        "threads",
        "ms",
        "numpy_ms",
        "speedup_vs_numpy",
        "torch_ms",
        "speedup_vs_torch",
    }
    assert records and all(keys <= set(r) for r in records)
    assert [r["path"] for r in records][0] == int8_kernel_path()  # auto's path first
    assert {r["path"] for r in records} == set(cpu.int8_paths_here()) - {"reference"}
    assert all(
        r["ms"] > 0 and r["torch_ms"] is None and r["speedup_vs_torch"] is None for r in records
    )
    with pytest.raises(ValueError, match="threads_list entries must be ints"):
        bench_int8.run_int8_bench(quick=True, threads_list=(0,))
    with pytest.raises(ValueError, match="rounds must be an int >= 1; got 0"):
        bench_int8.run_int8_bench(quick=True, threads_list=(1,), rounds=0)
