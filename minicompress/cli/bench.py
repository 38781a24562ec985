"""``minicompress bench train | kernels | runtime``: a training step against PyTorch, the int8
and CSR kernels against NumPy, SciPy and PyTorch, or the inference runtime against PyTorch
eager and ``quantize_dynamic`` (forward and generation), timed in the same process."""

from __future__ import annotations

import time

from minicompress.cli.common import check_output_file, flag_int
from minicompress.fileio import save_json
from minicompress.report.table import format_table


def register(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks: a training step, or the kernels")
    b.add_argument("what", choices=["train", "kernels", "runtime"])
    b.add_argument("--json", help="write the results to this JSON file")
    b.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    b.add_argument(
        "--batch-size",
        type=flag_int(minimum=1),
        default=None,
        help="(bench train: default 16; bench runtime: default 32)",
    )
    b.add_argument(
        "--model", help="(bench runtime) a checkpoint; default the teacher's shape, random"
    )
    b.add_argument(
        "--threads", type=flag_int(minimum=1), default=2, help="(bench runtime; default 2)"
    )
    b.set_defaults(func=run)


def run(args) -> int:
    from minicompress.report.timing import blas_summary

    if args.json is not None:
        check_output_file("--json", args.json)
    t0 = time.perf_counter()
    runs = {"train": _bench_train, "kernels": _bench_kernels, "runtime": _bench_runtime}
    result = runs[args.what](args)
    if args.json is not None:
        payload = {**result, "blas": blas_summary(), "seconds": time.perf_counter() - t0}
        save_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0


def _bench_train(args) -> dict:
    from minicompress.report.bench_train import run_train_bench

    r = run_train_bench(batch_size=args.batch_size or 16, repeat=3 if args.quick else 10)
    print(f"NumPy BLAS: {r['blas']}")
    cols = ("batch_size", "tokens_per_step", "numpy_ms", "torch_ms", "ratio")
    print(format_table([{k: r[k] for k in cols}]))
    if r["torch_ms"] is None:
        print("(PyTorch not installed: no torch_ms; pip install torch==2.13.0)")
    return r


def _bench_kernels(args) -> dict:
    from minicompress.report.bench_csr import run_csr_bench, storage_bytes
    from minicompress.report.bench_int8 import run_int8_bench
    from minicompress.report.timing import blas_summary

    threads = (2,) if args.quick else (1, 2)
    print(f"NumPy BLAS: {blas_summary()}")
    int8 = run_int8_bench(args.quick, threads)
    print("\nint8 linear (float in, float out) vs NumPy fp32 and torch dynamic int8:")
    cols = ["path", "M", "K", "N", "threads", "ms", "numpy_ms", "speedup_vs_numpy"]
    cols += ["torch_ms", "speedup_vs_torch"]
    print(format_table(int8, [c for c in cols if c in int8[0]]))
    csr = run_csr_bench(args.quick, threads)
    print("\nCSR linear vs scipy.sparse and dense NumPy fp32:")
    cols = ["M", "K", "N", "threads", "sparsity", "ms", "scipy_ms", "numpy_ms"]
    cols += ["speedup_vs_scipy", "speedup_vs_numpy"]
    print(format_table(csr, [c for c in cols if c in csr[0]]))
    sizes = storage_bytes(768, 3072, 0.9)
    print("\nstorage of a 768 x 3072 weight at 90% sparsity:")
    print(format_table(sizes))
    return {"records": int8 + csr, "storage": sizes}


def _bench_runtime(args) -> dict:
    from minicompress.report.bench_runtime import format_runtime_bench, run_runtime_bench

    params = cfg = None
    if args.model is not None:
        from minicompress.nn.checkpoint import load_checkpoint

        params, cfg, _, _ = load_checkpoint(args.model)
    r = run_runtime_bench(
        params,
        cfg,
        batch_size=args.batch_size or 32,
        threads=args.threads,
        rounds=2 if args.quick else 3,
        repeat=2 if args.quick else 5,
        gen_tokens=30 if args.quick else 100,
    )
    print(format_runtime_bench(r))
    return r
