"""Benchmark of the quantized model's forward pass: our int8 kernels against the fp32 NumPy
forward and PyTorch's ``quantize_dynamic`` of the same weights, in one process.

Contenders, one batch [B, T] of token ids (default 32 x 128), logits out:
- ``fp32 numpy``: ``nn.model.forward`` with the dense linear;
- ``int8 ours``: the same forward with ``quant.runtime.Int8Linear`` on W8 weights
  (symmetric, per output channel), activations quantized per token inside the kernel;
- ``fp32 torch``: the model as a PyTorch ``nn.Module`` of ``nn.Linear`` layers, eager,
  under ``inference_mode``;
- ``int8 torch``: that module after ``torch.ao.quantization.quantize_dynamic`` (its
  default qconfig: int8 weights per tensor, activations per tensor at run time).

Each is timed with ``report.timing.best_of_rounds`` (the contenders alternate, the best
round of each counts), with the time inside the linear layers measured in the same runs
(a timing wrapper around our ``linear``; forward hooks on torch's Linear modules):
``other_ms`` = total - linear, i.e. attention, layer norm, GELU, embeddings, copies.

Run: ``python -m minicompress.report.bench_quant MODEL [--json PATH]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig, forward, linear_names
from minicompress.quant.ptq import quantize_weights
from minicompress.quant.runtime import INT8, pack_int8_params
from minicompress.quant.tensor import QuantSpec
from minicompress.report.timing import best_of_rounds, blas_summary

W8 = QuantSpec(8, "symmetric", "channel")


class TimedLinear:
    """Wraps a ``linear`` and adds the wall time of its forward calls to ``seconds``."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def forward(self, name, x, w, b):
        t0 = time.perf_counter()
        out = self.inner.forward(name, x, w, b)
        self.seconds += time.perf_counter() - t0
        return out

    def backward(self, name, dy, cache):
        return self.inner.backward(name, dy, cache)


def torch_module(params: dict, cfg: TransformerConfig):
    """The pre-LN model as a torch ``nn.Module`` whose linear layers are ``nn.Linear``
    (what ``quantize_dynamic`` replaces); weights copied from ``params`` ([in, out] ->
    torch's [out, in])."""
    import torch
    import torch.nn.functional as F

    if cfg.norm != "pre":
        raise ValueError(f"the torch module supports norm='pre' only; got {cfg.norm!r}")

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.ModuleDict()
            for name in linear_names(cfg):
                w = params[name + ".w"]
                b = params.get(name + ".b")
                layer = torch.nn.Linear(w.shape[0], w.shape[1], bias=b is not None)
                with torch.no_grad():
                    layer.weight.copy_(torch.tensor(np.ascontiguousarray(w.T)))
                    if b is not None:
                        layer.bias.copy_(torch.tensor(b))
                self.lin[name.replace(".", "_")] = layer
            linear_keys = {f"{n}.{s}" for n in linear_names(cfg) for s in "wb"}
            # embeddings and LayerNorms, as plain tensors
            self.p = {k: torch.tensor(v) for k, v in params.items() if k not in linear_keys}

        def linear(self, name, x):
            return self.lin[name.replace(".", "_")](x)

        def forward(self, idx):  # idx: long [B, T] -> logits [B, T, V]
            b, t = idx.shape
            c, h, p = cfg.n_embd, cfg.n_head, self.p
            x = F.embedding(idx, p["wte"]) + p["wpe"][:t]  # [B, T, C]
            for i in range(cfg.n_layer):
                pre = f"blocks.{i}."
                a = F.layer_norm(x, (c,), p[pre + "ln1.g"], p[pre + "ln1.b"], cfg.ln_eps)
                qkv = self.linear(pre + "attn.qkv", a)  # [B, T, 3C]
                q, k, v = (z.view(b, t, h, c // h).transpose(1, 2) for z in qkv.split(c, 2))
                y = F.scaled_dot_product_attention(q, k, v, is_causal=cfg.causal)
                x = x + self.linear(pre + "attn.proj", y.transpose(1, 2).reshape(b, t, c))
                m = F.layer_norm(x, (c,), p[pre + "ln2.g"], p[pre + "ln2.b"], cfg.ln_eps)
                m = F.gelu(self.linear(pre + "mlp.fc", m), approximate=cfg.gelu)
                x = x + self.linear(pre + "mlp.proj", m)
            x = F.layer_norm(x, (c,), p["ln_f.g"], p["ln_f.b"], cfg.ln_eps)
            return self.linear("head", x)

    return Twin().eval()


def _time_torch_linears(module) -> list:
    """Forward pre/post hooks on every Linear (float or dynamic int8) of ``module`` that add
    their wall time to ``box[0]``; -> the box."""
    box = [0.0]
    starts = {}

    def pre(mod, args):
        starts[id(mod)] = time.perf_counter()

    def post(mod, args, out):
        box[0] += time.perf_counter() - starts[id(mod)]

    for mod in module.lin.values():
        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)
    return box


def run_quant_bench(
    params: dict,
    cfg: TransformerConfig,
    batch_size: int = 32,
    seq_len: int | None = None,
    rounds: int = 3,
    repeat: int = 5,
    threads: int = 2,
    with_torch: bool = True,
    seed: int = 0,
) -> dict:
    """Time the four contenders (module docstring) on one batch -> {"rows": [...], ...}.

    Each row: model, ms (best round's median), linear_ms, other_ms, vs_fp32_numpy (its
    time over the fp32 NumPy forward's), logit_rmse (root-mean-square difference of its
    logits to the fp32 NumPy ones).
    """
    import numba

    seq_len = cfg.block_size if seq_len is None else seq_len
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(threads, user_api="blas")
    idx = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch_size, seq_len))
    q = quantize_weights(params, cfg, W8, embedding_spec=None)
    packed = pack_int8_params(params, cfg, q)
    timed = {"fp32 numpy": (params, TimedLinear(DENSE)), "int8 ours": (packed, TimedLinear(INT8))}
    fns, linear_seconds, calls, logits = {}, {}, {}, {}
    for name, (p, lin) in timed.items():
        fns[name] = lambda p=p, lin=lin: forward(p, idx, cfg, lin)
        logits[name] = fns[name]()[0]
        linear_seconds[name] = lambda lin=lin: lin.seconds
    torch_threads = None
    if with_torch:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            torch.set_num_threads(threads)
            torch_threads = torch.get_num_threads()
            fp = torch_module(params, cfg)
            with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
                warnings.simplefilter("ignore")
                int8 = torch.ao.quantization.quantize_dynamic(
                    torch_module(params, cfg), {torch.nn.Linear}, dtype=torch.qint8
                )
            tidx = torch.tensor(idx)
            for name, mod in (("fp32 torch", fp), ("int8 torch", int8)):
                box = _time_torch_linears(mod)

                def run(mod=mod):
                    with torch.inference_mode():
                        return mod(tidx)

                fns[name] = run
                logits[name] = run().numpy()
                linear_seconds[name] = lambda box=box: box[0]
    for name, fn in fns.items():  # count calls, to turn the accumulated seconds into ms/call

        def counted(fn=fn, name=name):
            calls[name] = calls.get(name, 0) + 1
            return fn()

        fns[name] = counted
    start = {name: get() for name, get in linear_seconds.items()}
    best = best_of_rounds(fns, rounds=rounds, repeat=repeat, pause_s=0.2)
    limits.unregister()
    ref = logits["fp32 numpy"]
    rows = []
    for name in fns:
        linear_ms = 1e3 * (linear_seconds[name]() - start[name]) / calls[name]
        rows.append(
            {
                "model": name,
                "ms": best[name],
                "linear_ms": linear_ms,
                "other_ms": best[name] - linear_ms,
                "vs_fp32_numpy": best[name] / best["fp32 numpy"],
                "logit_rmse": float(np.sqrt(np.mean((logits[name] - ref) ** 2))),
            }
        )
    return {
        "rows": rows,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "threads": threads,
        "torch_threads": torch_threads,
        "blas": blas_summary(),
        "note": "linear_ms is the mean over all timed calls (all rounds); ms the best median",
    }


def main(argv=None) -> int:
    from minicompress.fileio import save_json
    from minicompress.nn.checkpoint import load_checkpoint
    from minicompress.report.table import format_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a dense checkpoint (the teacher)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    params, cfg, _, _ = load_checkpoint(args.model)
    r = run_quant_bench(params, cfg, args.batch_size, rounds=args.rounds, threads=args.threads)
    head = f"forward of a {r['batch_size']} x {r['seq_len']} batch, {r['threads']} threads"
    print(f"{head}; BLAS: {r['blas']}")
    print(format_table(r["rows"], floatfmt=".3g"))
    if args.json:
        save_json(args.json, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
