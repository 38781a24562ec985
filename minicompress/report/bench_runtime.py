"""Benchmark of the inference runtime against PyTorch eager on the same weights.

Three contests, each timed in alternating rounds in one process (``best_of_rounds``: every
round times every contender in turn, after a pause that lets idle thread pools stop
spinning; the best round of each is kept):

1. **fp32 forward** of a batch (default 32 x 128): the runtime (``deploy.Runtime``) against
   PyTorch eager under ``no_grad`` and against the training forward (``nn.model.forward``
   with ``NUMBA_OPS``, BLAS on its threads);
2. **int8 forward**: the runtime on the int8 kernels (every linear layer W8A8 dynamic:
   per-channel int8 weights, per-token uint8 activations) against PyTorch's
   ``torch.ao.quantization.quantize_dynamic`` of the same model;
3. **generation**: greedy tokens per second after a prompt, one sequence, with the
   key/value cache (``nn.model.generate``) and without it, against PyTorch eager loops with
   and without a key/value cache.

The PyTorch contender is written here as an ``nn.Module`` with ``nn.Linear`` layers (so that
``quantize_dynamic`` can replace them), ``F.scaled_dot_product_attention`` and a key/value
cache; its logits are checked against ours before anything is timed. Without PyTorch only
our figures are reported. Nothing is printed: the CLI formats the result.
"""

from __future__ import annotations

import os
import warnings

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from minicompress.deploy.runtime import Runtime, RuntimeConfig
from minicompress.kernels import int8_kernel_path
from minicompress.nn.backend import NUMBA_OPS
from minicompress.nn.model import TransformerConfig, forward, init_params
from minicompress.platform import tune_allocator
from minicompress.quant.ptq import quantize_weights
from minicompress.quant.runtime import pack_int8_params
from minicompress.quant.tensor import QuantSpec
from minicompress.report.timing import best_of_rounds, blas_summary

PAUSE_S = 0.1  # before each timing: idle BLAS / OpenMP threads stop spinning


# ----------------------------------------------------------------------------------------
# the PyTorch contender
# ----------------------------------------------------------------------------------------


def torch_decoder(params: dict, cfg: TransformerConfig):
    """Our pre-LN causal decoder as a PyTorch ``nn.Module`` holding copies of ``params``.

    ``model(idx, past=None) -> (logits [B, T, V], past)``: ``past`` is a list of (k, v)
    [B, H, T_past, D] per block (a key/value cache); idx holds the new positions only.
    Heads per block come from the qkv weight, so a pruned model runs too.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    if cfg.norm != "pre" or not cfg.causal or not cfg.head or cfg.type_vocab_size:
        raise ValueError("torch_decoder takes a pre-LN causal decoder with a head")
    c, d, eps = cfg.n_embd, cfg.head_dim, cfg.ln_eps

    def linear(name: str, bias: bool = True) -> nn.Linear:
        w = params[name + ".w"]  # [K, N]
        layer = nn.Linear(w.shape[0], w.shape[1], bias=bias)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))  # [N, K]
            if bias:
                layer.bias.copy_(torch.from_numpy(params[name + ".b"]))
        return layer

    def norm(name: str) -> nn.LayerNorm:
        ln = nn.LayerNorm(c, eps=eps)
        with torch.no_grad():
            ln.weight.copy_(torch.from_numpy(params[name + ".g"]))
            ln.bias.copy_(torch.from_numpy(params[name + ".b"]))
        return ln

    class Block(nn.Module):
        def __init__(self, i: int):
            super().__init__()
            p = f"blocks.{i}."
            self.ln1, self.ln2 = norm(p + "ln1"), norm(p + "ln2")
            self.qkv, self.proj = linear(p + "attn.qkv"), linear(p + "attn.proj")
            self.fc, self.mlp_proj = linear(p + "mlp.fc"), linear(p + "mlp.proj")
            self.h = params[p + "attn.qkv.w"].shape[1] // (3 * d)

        def forward(self, x, past):
            b, t, _ = x.shape
            qkv = self.qkv(self.ln1(x))
            q, k, v = (z.view(b, t, self.h, d).transpose(1, 2) for z in qkv.split(self.h * d, 2))
            if past is not None:
                k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
            # with a cache, the t new queries see every earlier key: causal only among them
            causal = past is None and t > 1
            if past is not None and t > 1:
                raise ValueError("torch_decoder: with a cache, feed one new position at a time")
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, self.h * d))
            f = F.gelu(self.fc(self.ln2(x)), approximate=cfg.gelu)
            return x + self.mlp_proj(f), (k, v)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Parameter(torch.from_numpy(params["wte"].copy()))
            self.wpe = nn.Parameter(torch.from_numpy(params["wpe"].copy()))
            self.blocks = nn.ModuleList(Block(i) for i in range(cfg.n_layer))
            self.ln_f, self.head = norm("ln_f"), linear("head", bias=False)

        def forward(self, idx, past=None):
            start = 0 if past is None else past[0][0].shape[2]
            x = self.wte[idx] + self.wpe[start : start + idx.shape[1]]
            new_past = []
            for i, block in enumerate(self.blocks):
                x, kv = block(x, None if past is None else past[i])
                new_past.append(kv)
            return self.head(self.ln_f(x)), new_past

    return Decoder().eval()


def torch_quantized(model):
    """``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (qint8 weights per
    tensor, activations quantized per batch at run time), on a copy."""
    import copy

    import torch

    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )


def torch_generate(model, prompt: np.ndarray, n_tokens: int, use_cache: bool) -> np.ndarray:
    """Greedy tokens of a ``torch_decoder`` model, eager, one at a time: with its key/value
    cache (one new position per step) or re-running the whole context (the plain loop)."""
    import torch

    out = [int(i) for i in prompt]
    past = None
    with torch.inference_mode():
        for _ in range(n_tokens):
            if use_cache and past is not None:
                idx = torch.tensor([out[-1:]])
            else:
                idx = torch.tensor([out])
            logits, new_past = model(idx, past)
            past = new_past if use_cache else None
            out.append(int(logits[0, -1].argmax()))
    return np.array(out, dtype=np.int64)


# ----------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def run_runtime_bench(
    params: dict | None = None,
    cfg: TransformerConfig | None = None,
    batch_size: int = 32,
    threads: int = 2,
    rounds: int = 3,
    repeat: int = 5,
    prompt_len: int = 16,
    gen_tokens: int = 100,
    with_torch: bool = True,
    seed: int = 0,
    pause_s: float = PAUSE_S,
) -> dict:
    """Time the runtime against PyTorch eager (see the module docstring).

    params, cfg: the model (default: the default teacher's shape with random weights —
    the speed does not depend on the values); batch_size x block_size tokens per forward;
    threads: the runtime's threads, PyTorch's and BLAS's; prompt_len + gen_tokens <=
    block_size (no sliding window in the timed loop); pause_s: the pause before each timing.
    ->  {"forward": [rows], "generate": [rows], "checks": {...}, "blas", "torch_threads",
         "int8_path", "threads", "load_average", ...}. Times in ms (best round's median).
    """
    tune_allocator()
    if params is None:
        cfg = TransformerConfig(vocab_size=103) if cfg is None else cfg
        params = init_params(cfg, np.random.default_rng(seed))
    if cfg is None:
        raise ValueError("cfg must be given with params")
    if prompt_len + gen_tokens > cfg.block_size:
        raise ValueError(
            f"prompt_len + gen_tokens = {prompt_len + gen_tokens} must be <= block_size="
            f"{cfg.block_size}"
        )
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, (batch_size, cfg.block_size))
    prompt = rng.integers(0, cfg.vocab_size, prompt_len)
    fp32 = Runtime(params, cfg, RuntimeConfig(threads=threads))
    w8 = quantize_weights(params, cfg, QuantSpec(8, "symmetric", "channel"), embedding_spec=None)
    int8 = Runtime(pack_int8_params(params, cfg, w8), cfg, RuntimeConfig(threads=threads))
    torch = _import_torch() if with_torch else None
    old_torch_threads = torch.get_num_threads() if torch is not None else None
    old_numba_threads = numba.get_num_threads()
    try:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        if torch is not None:
            torch.set_num_threads(threads)
        result = _measure(
            fp32, int8, params, cfg, idx, prompt, gen_tokens, torch, rounds, repeat, pause_s
        )
    finally:
        numba.set_num_threads(old_numba_threads)
        if torch is not None:
            torch.set_num_threads(old_torch_threads)
        fp32.close()
        int8.close()
    return {
        **result,
        "batch_size": batch_size,
        "block_size": cfg.block_size,
        "threads": threads,
        "rounds": rounds,
        "config": cfg.to_dict(),
        "blas": blas_summary(),
        "int8_path": int8_kernel_path(),
        "torch_version": None if torch is None else torch.__version__,
        "torch_threads": threads if torch is not None else None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _measure(
    fp32, int8, params, cfg, idx, prompt, gen_tokens, torch, rounds, repeat, pause_s
) -> dict:
    threads = fp32.rc.threads
    # correctness before speed: every contender computes the same model
    ref = fp32.forward(idx)
    checks = {"int8_vs_fp32_max_abs": float(np.abs(int8.forward(idx) - ref).max())}
    forward_fns = {
        "runtime fp32": lambda: fp32.forward(idx),
        "training forward fp32": lambda: _training_forward(params, idx, cfg, threads),
        "runtime int8": lambda: int8.forward(idx),
    }
    greedy = np.random.default_rng(0)  # temperature 0: never drawn from

    def ours(runtime, use_cache):
        return lambda: runtime.generate(prompt, gen_tokens, greedy, 0.0, None, use_cache)

    def theirs(model, use_cache):
        return lambda: torch_generate(model, prompt, gen_tokens, use_cache)

    gen_fns = {
        "runtime fp32 + KV cache": ours(fp32, True),
        "runtime fp32, no cache": ours(fp32, False),
        "runtime int8 + KV cache": ours(int8, True),
    }
    ours_tokens = ours(fp32, True)()
    if torch is not None:
        tmodel = torch_decoder(params, cfg)
        qmodel = torch_quantized(tmodel)
        tidx = torch.from_numpy(idx)
        with torch.no_grad():
            logits = tmodel(tidx)[0].numpy()
            logits_q = qmodel(tidx)[0].numpy()
        checks["torch_fp32_vs_ours_max_abs"] = float(np.abs(logits - ref).max())
        checks["torch_int8_vs_fp32_max_abs"] = float(np.abs(logits_q - ref).max())
        torch_tokens = theirs(tmodel, True)()
        checks["greedy_tokens_equal_torch"] = bool(np.array_equal(torch_tokens, ours_tokens))

        def eager(model):
            def run():
                with torch.no_grad():
                    model(tidx)

            return run

        forward_fns["torch eager fp32"] = eager(tmodel)
        forward_fns["torch quantize_dynamic int8"] = eager(qmodel)
        gen_fns["torch eager fp32 + KV cache"] = theirs(tmodel, True)
        gen_fns["torch eager fp32, no cache"] = theirs(tmodel, False)
        gen_fns["torch quantize_dynamic + KV cache"] = theirs(qmodel, True)
    fwd = best_of_rounds(forward_fns, rounds, repeat=repeat, pause_s=pause_s)
    gen = best_of_rounds(gen_fns, rounds, repeat=max(1, repeat // 2), pause_s=pause_s)
    tokens = idx.size
    forward_rows = [
        {"contender": k, "ms": v, "tokens_per_s": tokens / (v / 1e3)} for k, v in fwd.items()
    ]
    gen_rows = [
        {"contender": k, "ms": v, "tokens_per_s": gen_tokens / (v / 1e3)} for k, v in gen.items()
    ]
    return {
        "forward": _with_ratios(forward_rows, "runtime fp32"),
        "generate": _with_ratios(gen_rows, "runtime fp32 + KV cache"),
        "checks": checks,
        "gen_tokens": gen_tokens,
        "prompt_len": len(prompt),
    }


def _training_forward(params, idx, cfg, threads):
    with threadpool_limits(threads, user_api="blas"):
        forward(params, idx, cfg, op_impl=NUMBA_OPS)


def _with_ratios(rows: list[dict], base: str) -> list[dict]:
    """Each row's time relative to ``base``'s: ``time_vs_ours`` > 1 is slower than it."""
    base_ms = next(r["ms"] for r in rows if r["contender"] == base)
    return [{**r, "time_vs_ours": r["ms"] / base_ms} for r in rows]


def format_runtime_bench(r: dict) -> str:
    """The benchmark's result as the terminal shows it."""
    from minicompress.report.table import format_table

    lines = [
        f"NumPy BLAS: {r['blas']}; int8 kernel path: {r['int8_path']}; threads: {r['threads']}"
        + (f"; PyTorch {r['torch_version']}" if r["torch_version"] else " (PyTorch absent)")
        + (f"; load average {r['load_average']:.1f}" if r["load_average"] is not None else ""),
        "",
        f"forward of {r['batch_size']} x {r['block_size']} tokens:",
        format_table(r["forward"], floatfmt=".4g"),
        "",
        f"greedy generation of {r['gen_tokens']} tokens after {r['prompt_len']}, one sequence:",
        format_table(r["generate"], floatfmt=".4g"),
        "",
        "checks: "
        + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["checks"].items()
        ),
        "(time_vs_ours > 1: slower than the runtime's fp32 row of its table)",
    ]
    return "\n".join(lines)
