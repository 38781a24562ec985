"""Command line: ``python -m minicompress demo | train | eval | generate | bench``.

Every error the user can cause (a bad flag value, a missing or damaged file) prints one
line and exits with status 2; no traceback (``MINICOMPRESS_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from minicompress.data.corpus import CharTokenizer, builtin_text, load_text, make_dataset
from minicompress.fileio import save_json
from minicompress.nn.checkpoint import CONFIG_FILE, load_checkpoint
from minicompress.nn.model import TransformerConfig, count_params, forward, generate, init_params
from minicompress.nn.train import TrainConfig, evaluate, train
from minicompress.report.table import format_table


class UserError(Exception):
    """A problem with what the user asked for; printed as one line."""


# ----------------------------------------------------------------------------------------
# flags built from the config dataclasses
# ----------------------------------------------------------------------------------------


def _add_dataclass_flags(parser, cls, skip=()):
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(
                flag,
                type=lambda s: s.lower() in ("1", "true", "yes"),
                default=None,
                help=f"(default {default})",
            )
        elif default is None or isinstance(default, (int, float, str)):
            kind = type(default) if default is not None else float
            parser.add_argument(flag, type=kind, default=None, help=f"(default {default})")


def _dataclass_from_args(cls, args, **fixed):
    kwargs = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    kwargs.update(fixed)
    return cls(**kwargs)


def _text(args) -> str:
    return load_text(args.text) if getattr(args, "text", None) else builtin_text()


# ----------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------


def _metrics(loss: float, params: dict) -> dict:
    return {
        "val_loss": loss,
        "val_ppl": math.exp(loss),
        "bpc": loss / math.log(2),
        "params": count_params(params),
    }


def cmd_train(args) -> int:
    out = Path(args.out)
    if (out / CONFIG_FILE).exists() and not args.overwrite:
        raise UserError(
            f"--out {str(out)!r} already holds a checkpoint; pass --overwrite to "
            f"replace it or choose another folder"
        )
    text = _text(args)
    block = args.block_size or TransformerConfig.__dataclass_fields__["block_size"].default
    data = make_dataset(text, block)
    cfg = _dataclass_from_args(TransformerConfig, args, vocab_size=data.tokenizer.vocab_size)
    tc = _dataclass_from_args(TrainConfig, args)
    params = init_params(cfg, np.random.default_rng([tc.seed, 0]))
    print(
        f"model: {count_params(params):,} parameters, {cfg.n_layer} layers, width "
        f"{cfg.n_embd}, {cfg.n_head} heads, context {cfg.block_size}; corpus "
        f"{len(text):,} characters, vocabulary {cfg.vocab_size}"
    )
    hist = train(params, cfg, data, tc, out_dir=out, progress=not args.no_progress)
    m = _metrics(hist.val_loss[-1], params)
    print(
        f"trained {hist.steps[-1] if hist.steps else 0} steps in {hist.seconds:.0f} s "
        f"({hist.tokens_per_second:,.0f} tokens/s): val ppl {m['val_ppl']:.3f}, "
        f"{m['bpc']:.3f} bits/char -> {out}"
    )
    if not args.no_plot:
        from minicompress.report.plots import plot_loss_curve

        print(f"loss curve: {plot_loss_curve(hist, out / 'loss.png', 'teacher')}")
    return 0


def cmd_eval(args) -> int:
    params, cfg, vocab, _ = load_checkpoint(args.model)
    data = make_dataset(_text(args), cfg.block_size, tokenizer=CharTokenizer(vocab))
    m = _metrics(evaluate(params, cfg, data.val), params)
    print(format_table([m], floatfmt=".4f"))
    if args.json:
        save_json(args.json, m)
    return 0


def cmd_generate(args) -> int:
    params, cfg, vocab, _ = load_checkpoint(args.model)
    tok = CharTokenizer(vocab)
    if not args.prompt:
        raise UserError("--prompt must not be empty")
    ids = generate(
        params,
        cfg,
        tok.encode(args.prompt, "--prompt"),
        args.tokens,
        np.random.default_rng(args.seed),
        args.temperature,
        args.top_k,
    )
    print(tok.decode(ids))
    return 0


def _latency_ms(params, cfg, repeat: int = 20) -> float:
    """Median time of one forward pass over a full context of one sequence."""
    from minicompress.report.timing import median_ms

    x = np.zeros((1, cfg.block_size), dtype=np.int64)
    return median_ms(lambda: forward(params, x, cfg), repeat=repeat)


def cmd_demo(args) -> int:
    out = Path(args.out)
    quick = args.quick
    text = builtin_text()
    cfg_kw = {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 64} if quick else {}
    data = make_dataset(text, cfg_kw.get("block_size", 128))
    cfg = TransformerConfig(vocab_size=data.tokenizer.vocab_size, **cfg_kw)
    tc = TrainConfig(steps=40, eval_every=0, warmup=10) if quick else TrainConfig(seed=args.seed)
    params = init_params(cfg, np.random.default_rng([tc.seed, 0]))
    print(
        f"minicompress demo: training the teacher ({count_params(params):,} parameters) on "
        f"Python's documentation ({len(text):,} characters)" + (" [quick mode]" if quick else "")
    )
    hist = train(params, cfg, data, tc, out_dir=out / "teacher", progress=not args.no_progress)
    m = _metrics(hist.val_loss[-1], params)
    rows = [
        {
            "model": "teacher fp32",
            "params": m["params"],
            "size_MB": sum(a.nbytes for a in params.values()) / 1e6,
            "ratio": 1.0,
            "val_ppl": m["val_ppl"],
            "bpc": m["bpc"],
            "latency_ms": _latency_ms(params, cfg, 5 if quick else 20),
        }
    ]
    print()
    print(format_table(rows))
    print("(latency: one forward pass over a full context of one sequence)")
    from minicompress.report.plots import plot_loss_curve

    print(f"\nloss curve: {plot_loss_curve(hist, out / 'teacher_loss.png', 'teacher')}")
    save_json(out / "results.json", {"rows": rows, "train_seconds": hist.seconds})
    sample = generate(
        params,
        cfg,
        data.tokenizer.encode("The "),
        200 if not quick else 40,
        np.random.default_rng(0),
        temperature=0.8,
        top_k=20,
    )
    print("\nsample:\n" + data.tokenizer.decode(sample))
    return 0


def cmd_bench(args) -> int:
    from minicompress.report.timing import blas_summary

    t0 = time.perf_counter()
    if args.what == "train":
        from minicompress.report.bench_train import run_train_bench

        r = run_train_bench(batch_size=args.batch_size, repeat=3 if args.quick else 10)
        print(f"NumPy BLAS: {r['blas']}")
        print(
            format_table(
                [
                    {
                        k: r[k]
                        for k in ("batch_size", "tokens_per_step", "numpy_ms", "torch_ms", "ratio")
                    }
                ]
            )
        )
        if r["torch_ms"] is None:
            print("(PyTorch not installed: no torch_ms; pip install torch==2.13.0)")
        result = r
    else:
        result = _bench_kernels(args)
    result_time = time.perf_counter() - t0
    if args.json:
        payload = result if isinstance(result, dict) else {"records": result}
        payload = {**payload, "blas": blas_summary(), "seconds": result_time}
        save_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0


def _bench_kernels(args) -> dict:
    from minicompress.report.bench_csr import run_csr_bench, storage_bytes
    from minicompress.report.bench_int8 import run_int8_bench
    from minicompress.report.timing import blas_summary

    threads = (2,) if args.quick else (1, 2)
    print(f"NumPy BLAS: {blas_summary()}")
    int8 = run_int8_bench(args.quick, threads)
    print("\nint8 linear (float in, float out) vs NumPy fp32 and torch dynamic int8:")
    cols = [
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
    ]
    print(format_table(int8, [c for c in cols if c in int8[0]]))
    csr = run_csr_bench(args.quick, threads)
    print("\nCSR linear vs scipy.sparse and dense NumPy fp32:")
    cols = [
        "M",
        "K",
        "N",
        "threads",
        "sparsity",
        "ms",
        "scipy_ms",
        "numpy_ms",
        "speedup_vs_scipy",
        "speedup_vs_numpy",
    ]
    print(format_table(csr, [c for c in cols if c in csr[0]]))
    sizes = storage_bytes(768, 3072, 0.9)
    print("\nstorage of a 768 x 3072 weight at 90% sparsity:")
    print(format_table(sizes))
    return {"records": int8 + csr, "storage": sizes}


# ----------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="minicompress",
        description="Transformer compression from scratch in NumPy: train a teacher, "
        "evaluate, sample, benchmark.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a teacher and print size / quality / latency")
    d.add_argument("--out", default="runs/demo", help="folder for checkpoints and figures")
    d.add_argument("--quick", action="store_true", help="a tiny model, a few steps (for CI)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a character language model")
    _add_dataclass_flags(t, TransformerConfig, skip=("vocab_size",))
    _add_dataclass_flags(t, TrainConfig)
    t.add_argument("--text", help="a UTF-8 text file instead of the built-in corpus")
    t.add_argument("--out", default="runs/teacher", help="checkpoint folder")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint in --out")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--no-plot", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="validation perplexity and bits per character")
    e.add_argument("model", help="checkpoint folder")
    e.add_argument("--text", help="the UTF-8 text file the model was trained on")
    e.add_argument("--json", help="also write the metrics to this JSON file")
    e.set_defaults(func=cmd_eval)

    g = sub.add_parser("generate", help="sample text from a checkpoint")
    g.add_argument("model", help="checkpoint folder")
    g.add_argument("--prompt", required=True)
    g.add_argument("--tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="benchmarks: a training step, or the kernels")
    b.add_argument("what", choices=["train", "kernels"])
    b.add_argument("--json", help="write the results to this JSON file")
    b.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    b.add_argument("--batch-size", type=int, default=16, help="(bench train)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError, TypeError, FloatingPointError) as e:
        if os.environ.get("MINICOMPRESS_DEBUG"):
            raise
        print(f"minicompress {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minicompress {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
