"""``minicompress bench train | kernels | runtime | peers | quality-peers``: a training step
against PyTorch, the int8 and CSR kernels against NumPy, SciPy and PyTorch, the inference
runtime against PyTorch eager and ``quantize_dynamic`` (forward and generation), or the whole
model against the industry runtimes (PyTorch, onnxruntime, OpenVINO + NNCF), timed in the same
process; or the quality of their quantization and pruning beside ours on the same teacher."""

from __future__ import annotations

import time

from minicompress.cli.common import UserError, check_output_file, flag_int
from minicompress.fileio import save_json
from minicompress.report.table import format_table

PEERS_MODELS = ("teacher", "minilm")
PEERS_TEACHER = "runs/teacher"  # where ``minicompress train`` writes the teacher by default
FLAGS_OF = {  # flags that only some benchmarks take
    "checkpoint": ("quality-peers", "peers"),
    "contenders": ("peers",),
    "plot": ("quality-peers", "peers"),
    "rows": ("quality-peers",),
    "finetune_steps": ("quality-peers",),
}


def register(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks: a training step, or the kernels")
    b.add_argument("what", choices=["train", "kernels", "runtime", "peers", "quality-peers"])
    b.add_argument("--json", help="write the results to this JSON file")
    b.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    b.add_argument(
        "--batch-size",
        type=flag_int(minimum=1),
        default=None,
        help="(bench train: default 16; bench runtime, peers: default 32)",
    )
    b.add_argument(
        "--model",
        help="(bench runtime) a checkpoint; default the teacher's shape, random. "
        "(bench peers) teacher or minilm; default teacher",
    )
    b.add_argument(
        "--threads",
        type=flag_int(minimum=1),
        default=2,
        help="(bench runtime, peers, quality-peers; default 2)",
    )
    b.add_argument(
        "--checkpoint",
        help=f"(bench peers, quality-peers) the teacher's checkpoint; default {PEERS_TEACHER}",
    )
    b.add_argument(
        "--contenders",
        help="(bench peers) comma-separated, default all: torch-fp32, torch-int8, ort-fp32, "
        "ort-int8, ov-fp32, ov-int8, ours-fp32, ours-int8, ours-csr50",
    )
    b.add_argument(
        "--plot",
        help="(bench peers) a bar chart of the times; (quality-peers) delta ppl against bytes",
    )
    b.add_argument(
        "--rows",
        help="(bench quality-peers) comma-separated, default all: w8, w8a8-dynamic, "
        "w8a8-static, w4, prune50, prune80, heads",
    )
    b.add_argument(
        "--finetune-steps",
        type=flag_int(minimum=1),
        default=None,
        help="(bench quality-peers) fine-tune steps of the pruning rows; default 300",
    )
    b.set_defaults(func=run)


def run(args) -> int:
    from minicompress.report.timing import blas_summary

    for flag, whats in FLAGS_OF.items():
        if args.what not in whats and getattr(args, flag) is not None:
            where = " and ".join(f"bench {w}" for w in whats)
            raise UserError(f"--{flag.replace('_', '-')} is a flag of {where} only")
    if args.json is not None:
        check_output_file("--json", args.json)
    t0 = time.perf_counter()
    runs = {
        "train": _bench_train,
        "kernels": _bench_kernels,
        "runtime": _bench_runtime,
        "peers": _bench_peers,
        "quality-peers": _bench_quality_peers,
    }
    result = runs[args.what](args)
    if result is None:  # nothing was measured (bench peers: the model is not installed)
        return 0
    if args.json is not None:
        if isinstance(result, list):  # bench peers, quality-peers: a list of rows
            payload = result
        else:
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


def _bench_peers(args) -> list | None:
    """``bench peers``: checks every flag before anything is loaded or built."""
    from minicompress.report.bench_peers import check_contenders

    model = args.model or "teacher"
    if model not in PEERS_MODELS:
        raise UserError(f"--model {model!r}: bench peers runs {' or '.join(PEERS_MODELS)}")
    keys = None
    if args.contenders is not None:
        keys = [k.strip() for k in args.contenders.split(",") if k.strip()]
        try:
            keys = check_contenders(keys)
        except ValueError as e:
            raise UserError(f"--contenders {args.contenders!r}: {e}") from None
    if args.plot is not None:
        check_output_file("--plot", args.plot)
    batch = args.batch_size or 32
    m = _peers_teacher(args, batch) if model == "teacher" else _peers_minilm(batch)
    if m is None:
        return None
    from minicompress.report.bench_peers import (
        format_peers_bench,
        json_rows,
        plot_peers_bench,
        run_peers_bench,
    )

    quick = {"rounds": 2, "repeat": 2, "min_seconds": 0.0} if args.quick else {}
    r = run_peers_bench(m, args.threads, keys, **quick)
    print(format_peers_bench(r))
    if args.plot is not None:
        print(f"wrote {plot_peers_bench(r, args.plot)}")
    return json_rows(r)


def _peers_teacher(args, batch: int):
    from minicompress.report.bench_peers import decoder_model

    params, cfg, _, data = _load_teacher(args)
    return decoder_model("teacher", params, cfg, data.train, data.val, batch)


def _load_teacher(args):
    """The decoder of ``--checkpoint`` -> (params, cfg, vocab, its TextDataset)."""
    from minicompress.data.corpus import CharTokenizer, builtin_text, make_dataset
    from minicompress.nn.checkpoint import checkpoint_file, load_checkpoint

    path = args.checkpoint or PEERS_TEACHER
    if not checkpoint_file(path).is_file():
        raise UserError(
            f"--checkpoint {path!r}: no checkpoint there; train the teacher "
            f"(python -m minicompress train --out {path}) or give its path"
        )
    params, cfg, vocab, _ = load_checkpoint(path)
    if not cfg.head or not cfg.causal:
        raise UserError(f"--checkpoint {path!r}: bench {args.what} takes a decoder (the teacher)")
    data = make_dataset(builtin_text(), cfg.block_size, tokenizer=CharTokenizer(vocab))
    return params, cfg, vocab, data


def _bench_quality_peers(args) -> list:
    """``bench quality-peers``: checks every flag before anything is loaded or trained."""
    from minicompress.report import bench_quality_peers as bq

    keys = None
    if args.rows is not None:
        try:
            keys = bq.check_rows([k.strip() for k in args.rows.split(",") if k.strip()])
        except ValueError as e:
            raise UserError(f"--rows {args.rows!r}: {e}") from None
    if args.plot is not None:
        check_output_file("--plot", args.plot)
    steps = args.finetune_steps or (bq.QUICK_STEPS if args.quick else bq.FINETUNE_STEPS)
    params, cfg, vocab, data = _load_teacher(args)
    windows = bq.QUICK_WINDOWS if args.quick else None
    r = bq.run_quality_peers(params, cfg, vocab, data, keys, steps, windows, args.threads)
    print(bq.format_quality_peers(r))
    if args.plot is not None:
        print(f"wrote {bq.plot_quality_peers(r, args.plot)}")
    return bq.json_rows(r)


def _peers_minilm(batch: int):
    from minicompress.pretrained.loader import INSTALL_HINT, model_package_version
    from minicompress.report.bench_peers import minilm_model
    from minicompress.report.bench_pretrained import BENCH_TOKENS

    if model_package_version() is None:
        print(f"bench peers --model minilm: skipped, the model package is not installed "
              f"({INSTALL_HINT})")  # fmt: skip
        return None
    return minilm_model(batch, BENCH_TOKENS)
