"""Speed and size of pruned models: where CSR breaks even, and what pruning buys a whole model.

- ``break_even``: for each block shape of a model, the sparse layer (``prune.sparse.SPARSE``:
  ``kernels.sparse_linear``) against the dense one (``nn.linear.DENSE``: ``x @ w``), both
  called through the ``linear`` contract as the model calls them, at several sparsities,
  timed in alternation in the same process (``report.timing.best_of_rounds``); the lowest
  sparsity at which CSR is faster.
- ``model_bench``: the forward pass of the dense model, of its 80%-sparse version on the CSR
  kernels (``prune.sparse.SPARSE``; layers below the break-even stay dense) and of
  structurally shrunk versions (heads or neurons removed), timed in alternation; the bytes of
  each one's weights.

Run: ``python -m minicompress.report.bench_prune --model DIR [--out DIR] [--quick]``.
Timings are one run on whatever machine runs it (here: 2 shared cores), one thread for BLAS
and Numba so that the comparison is of the kernels, not of the threading.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from minicompress.fileio import save_json
from minicompress.nn.checkpoint import load_checkpoint, save_checkpoint
from minicompress.nn.linear import DENSE
from minicompress.nn.model import count_params, forward
from minicompress.prune.masks import apply_masks, global_masks
from minicompress.prune.pipeline import prunable_names
from minicompress.prune.scores import magnitude_scores
from minicompress.prune.sparse import (
    BREAK_EVEN,
    SPARSE,
    SparseWeight,
    pack_sparse,
    save_sparse,
    sparse_layers,
    to_sparse_weight,
    unpack_sparse,
)
from minicompress.prune.structured import prune_structures
from minicompress.report.bench_csr import pruned_weight
from minicompress.report.table import format_table
from minicompress.report.timing import best_of_rounds, blas_summary

SPARSITIES = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def block_shapes(params: dict, cfg) -> list[tuple[int, int]]:
    """The distinct (K, N) shapes of a model's block linear weights."""
    return list(dict.fromkeys(params[n].shape for n in prunable_names(cfg)))


def break_even(
    shapes: list[tuple[int, int]],
    m: int,
    sparsities=SPARSITIES,
    rounds: int = 3,
    repeat: int = 10,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """Rows {K, N, M, sparsity, dense_ms, csr_ms, speedup} and, per shape, the lowest measured
    sparsity at which CSR was faster than dense (None: never)."""
    rng = np.random.default_rng(seed)
    rows, lowest = [], {}
    for k, n in shapes:
        x = rng.standard_normal((m, k)).astype(np.float32)  # [M, K]
        fns, weights = {}, {}
        w_dense = rng.standard_normal((k, n)).astype(np.float32)
        # both through the linear contract, as the model calls them
        fns["dense"] = lambda w=w_dense, x=x: DENSE.forward("bench", x, w, None)
        for s in sparsities:
            weights[s] = to_sparse_weight(pruned_weight(rng, k, n, s))
            fns[s] = lambda sw=weights[s], x=x: SPARSE.forward("bench", x, sw, None)
        best = best_of_rounds(fns, rounds=rounds, repeat=repeat, pause_s=0.05)
        faster = []
        for s in sparsities:
            rows.append(
                {
                    "K": k,
                    "N": n,
                    "M": m,
                    "sparsity": s,
                    "dense_ms": best["dense"],
                    "csr_ms": best[s],
                    "speedup": best["dense"] / best[s],
                }  # fmt: skip
            )
            if best[s] < best["dense"]:
                faster.append(s)
        lowest[f"{k}x{n}"] = min(faster) if faster else None
    return rows, lowest


def weight_bytes(params: dict) -> int:
    """Bytes of every array (a ``SparseWeight`` counts its CSR arrays and scales)."""
    return int(
        sum(v.nbytes() if isinstance(v, SparseWeight) else v.nbytes for v in params.values())
    )


def model_bench(
    params: dict,
    cfg,
    batch: int = 8,
    rounds: int = 3,
    repeat: int = 5,
    sparsity: float = 0.8,
    min_sparsity: float | None = None,
) -> list[dict]:
    """Forward time and size of the dense model and of its pruned versions (pruned one-shot:
    the speed of a sparsity pattern does not depend on how it was fine-tuned).

    -> rows {model, params, nonzero, weight_bytes, checkpoint_bytes, ms, speedup}."""
    names = prunable_names(cfg)
    masks = global_masks({n: magnitude_scores(params[n]) for n in names}, sparsity)
    sparse_dense = apply_masks(params, masks)
    min_sparsity = BREAK_EVEN if min_sparsity is None else min_sparsity
    sparse_rt = pack_sparse(sparse_dense, cfg, min_sparsity)
    heads, heads_cfg, _ = prune_structures(params, cfg, "heads", 0.25)
    neurons, neurons_cfg, _ = prune_structures(params, cfg, "neurons", 0.5)
    models = {
        "dense fp32": (params, cfg, None),
        f"{sparsity:.0%} sparse, CSR": (sparse_rt, cfg, SPARSE),
        f"{sparsity:.0%} sparse, dense kernels": (sparse_dense, cfg, None),
        "25% heads removed": (heads, heads_cfg, None),
        "50% neurons removed": (neurons, neurons_cfg, None),
    }
    idx = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, cfg.block_size))
    fns = {
        name: (lambda p=p, c=c, lin=lin: forward(p, idx, c, lin) if lin else forward(p, idx, c))
        for name, (p, c, lin) in models.items()
    }
    best = best_of_rounds(fns, rounds=rounds, repeat=repeat, pause_s=0.1)
    rows = []
    vocab = [chr(32 + i) for i in range(cfg.vocab_size)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (p, c, _) in models.items():
            folder = Path(tmp) / name.replace(" ", "_").replace("%", "").replace(",", "")
            if sparse_layers(p):  # the CSR checkpoint of the same weights: its real size
                file = save_sparse(folder, unpack_sparse(p), c, vocab, None, min_sparsity)
            else:
                file = save_checkpoint(folder, p, c, vocab)
            ckpt = file.stat().st_size
            rows.append(
                {
                    "model": name,
                    "params": int(sum(int(np.prod(v.shape)) for v in p.values())),
                    "nonzero": int(
                        sum(
                            v.w_t.data.size if isinstance(v, SparseWeight) else np.count_nonzero(v)
                            for v in p.values()
                        )
                    ),
                    "weight_bytes": weight_bytes(p),
                    "checkpoint_bytes": ckpt,
                    "ms": best[name],
                    "speedup": best["dense fp32"] / best[name],
                    "csr_layers": len(sparse_layers(p)),
                }
            )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a trained checkpoint folder")
    ap.add_argument("--out", default=None, help="folder for bench_prune.json and the figure")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and points")
    ap.add_argument("--batch", type=int, default=8, help="sequences per forward pass")
    ap.add_argument("--threads", type=int, default=1, help="BLAS and Numba threads")
    ap.add_argument(
        "--rows", type=int, default=None, help="rows M of the break-even layers (default batch x T)"
    )
    ap.add_argument("--no-models", action="store_true", help="only the break-even table")
    args = ap.parse_args(argv)
    params, cfg, _, _ = load_checkpoint(args.model)
    numba.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        print(f"BLAS: {blas_summary()}; Numba threads: {numba.get_num_threads()}")
        m = args.rows or args.batch * cfg.block_size
        sparsities = (0.0, 0.5, 0.8, 0.95) if args.quick else SPARSITIES
        rows, lowest = break_even(
            block_shapes(params, cfg), m, sparsities, rounds=2 if args.quick else 3
        )
        print(format_table(rows))
        print("lowest sparsity at which CSR beat dense, per shape:", lowest)
        model_rows = []
        if not args.no_models:
            model_rows = model_bench(
                params,
                cfg,
                args.batch,
                rounds=2 if args.quick else 3,
                repeat=3 if args.quick else 5,
            )
            print(format_table(model_rows))
    if args.out:
        from minicompress.report.prune_plots import plot_break_even

        out = Path(args.out)
        save_json(
            out / f"bench_prune_M{m}.json",
            {"break_even": rows, "lowest": lowest, "models": model_rows, "M": m,
             "threads": args.threads, "blas": blas_summary(), "params": count_params(params)},
        )  # fmt: skip
        print("figure:", plot_break_even(rows, out / f"break_even_M{m}.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
