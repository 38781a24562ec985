"""Benchmark and PyTorch references of a real pretrained encoder (all-MiniLM-L6-v2).

- ``torch_encoder``: the same weights as an idiomatic PyTorch eager module (``nn.Linear``,
  ``nn.LayerNorm``, ``F.scaled_dot_product_attention``, mean pooling, L2 normalization),
  so that ``torch.ao.quantization.quantize_dynamic`` can replace its linear layers;
  ``torch_int8_dynamic`` is that replacement (int8 weights per tensor, activations
  quantized per tensor at run time, fbgemm kernels).
- ``bench_batch``: the fixed batch of the speed figures, 32 rows of 64 tokens of corpus
  text, no padding.
- ``time_contenders``: each contender's milliseconds per batch, in rounds in the same
  process, with the thread count fixed for NumPy's BLAS, Numba and PyTorch alike.
- ``run_pretrained_bench``: our fp32 model on the inference runtime (``deploy.runtime``)
  and on the training path (``nn.model.forward`` with its default ops) against PyTorch
  fp32 and PyTorch's dynamic int8 (when torch is installed), plus any contenders the
  caller adds (a compressed model on the same runtime).

PyTorch is optional: without it only our own contenders are timed. Speed is never
asserted in a test; the figures are reported by the CLI and the tutorial.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import warnings
from collections.abc import Callable

import numpy as np

from minicompress.pretrained.compress import encoder_runtime
from minicompress.pretrained.embed import runtime_embeddings, sentence_embeddings
from minicompress.pretrained.fidelity import fidelity_report, row_cosines
from minicompress.pretrained.sentences import corpus_sentences
from minicompress.pretrained.tokenizer import TokenBatch, TruncationWarning
from minicompress.report.timing import best_of_rounds, blas_summary

BENCH_BATCH = 32  # rows of the speed figures (issue 15)
BENCH_TOKENS = 64  # tokens per row, [CLS] and [SEP] included
BENCH_THREADS = 2  # threads for every library (the machine's cores)


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------
# the batch
# ----------------------------------------------------------------------------------------


def bench_batch(model, batch_size: int = BENCH_BATCH, seq_len: int = BENCH_TOKENS) -> TokenBatch:
    """``batch_size`` rows of exactly ``seq_len`` tokens of corpus prose, no padding: each
    row is 8 consecutive sentences of the fixed set, cut to ``seq_len`` tokens."""
    group = 8  # sentences per row: always more than 64 tokens
    sentences = corpus_sentences(batch_size * group)
    texts = [" ".join(sentences[i * group : (i + 1) * group]) for i in range(batch_size)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # cutting is the point here
        batch = model.tokenizer.encode(texts, max_length=seq_len)
    if batch.ids.shape != (batch_size, seq_len) or batch.pad_mask.any():
        raise RuntimeError(
            f"bench batch has shape {batch.ids.shape} or padding; expected full rows"
        )
    return batch


# ----------------------------------------------------------------------------------------
# PyTorch references of the same weights
# ----------------------------------------------------------------------------------------


def torch_encoder(params: dict, cfg):
    """A PyTorch ``nn.Module`` computing the sentence embeddings of our BERT parameters:
    ``forward(ids [B, T], pad_mask [B, T] or None, token_types [B, T]) -> [B, C]``.

    The package's one PyTorch twin (``report.torch_twin.torch_twin`` with pooling):
    idiomatic eager PyTorch, one ``nn.Linear`` per layer (q, k and v as one [3C, C] layer,
    our ``attn.qkv``), SDPA attention, ``F.layer_norm``. In eval mode; call it under
    ``torch.inference_mode()``.
    """
    from minicompress.report.torch_twin import torch_twin

    if cfg.norm != "post" or cfg.causal or not cfg.emb_norm or cfg.head:
        raise ValueError("torch_encoder takes a BERT encoder config (post-LN, no head)")
    return torch_twin(params, cfg, pool=True)


def torch_int8_dynamic(module):
    """``torch.ao.quantization.quantize_dynamic`` of the encoder's ``nn.Linear`` layers
    (qint8 weights per tensor; activations quantized per tensor at run time)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own deprecation notices
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


def torch_runner(module, batch: TokenBatch) -> Callable[[], np.ndarray]:
    """A call of ``module`` on ``batch`` under inference mode -> embeddings [B, C] (NumPy)."""
    import torch

    ids = torch.from_numpy(batch.ids)
    pad = torch.from_numpy(batch.pad_mask) if batch.pad_mask.any() else None
    types = torch.from_numpy(batch.token_types)

    def run() -> np.ndarray:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module(ids, pad, types).numpy()

    return run


def torch_embed_texts(module, model, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Embeddings [N, C] of ``texts`` by a torch encoder, in input order (batched by length,
    as ``pretrained.embed_texts``)."""
    from minicompress.pretrained.tokenizer import select_rows

    everything = model.tokenizer.encode(texts)
    order = np.argsort(everything.lengths, kind="stable")
    out = np.empty((len(texts), model.cfg.n_embd), dtype=np.float32)
    for s in range(0, len(texts), batch_size):
        rows = order[s : s + batch_size]
        out[rows] = torch_runner(module, select_rows(everything, rows))()
    return out


def torch_int8_fidelity(model, ref: np.ndarray, texts: list[str]) -> dict[str, float]:
    """Fidelity of PyTorch's dynamic int8 model of the same weights against our fp32
    embeddings ``ref`` of ``texts``."""
    module = torch_int8_dynamic(torch_encoder(model.params, model.cfg))
    return fidelity_report(ref, torch_embed_texts(module, model, texts))


# ----------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def fixed_threads(n: int):
    """Every library on ``n`` threads: NumPy's BLAS (threadpoolctl), Numba, PyTorch."""
    import numba
    from threadpoolctl import threadpool_limits

    old_numba = numba.get_num_threads()
    torch = None
    if have_torch():
        import torch

        old_torch = torch.get_num_threads()
        torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(old_numba)
        if torch is not None:
            torch.set_num_threads(old_torch)


def time_contenders(
    contenders: dict[str, Callable[[], object]],
    threads: int = BENCH_THREADS,
    rounds: int = 3,
    repeat: int = 5,
) -> dict[str, float]:
    """Milliseconds per call of each contender: the best of ``rounds`` rounds of
    ``report.timing.best_of_rounds`` (each round times every contender in turn), all on
    ``threads`` threads."""
    with fixed_threads(threads):
        return best_of_rounds(contenders, rounds=rounds, repeat=repeat, pause_s=0.2)


def run_pretrained_bench(
    model,
    extra: dict[str, Callable[[TokenBatch], Callable[[], np.ndarray]]] | None = None,
    batch_size: int = BENCH_BATCH,
    seq_len: int = BENCH_TOKENS,
    threads: int = BENCH_THREADS,
    rounds: int = 3,
    repeat: int = 5,
    with_torch: bool = True,
    torch_process: bool = True,
) -> dict:
    """Milliseconds per batch of sentence embeddings, our fp32 forward against PyTorch fp32
    and ``quantize_dynamic`` int8 (when installed), in the same run.

    PyTorch is timed in a child process of this one (``torch_process``, the default:
    ``torch_times_in_child``), on the same batch and threads; its cosines are computed
    here. In one process, PyTorch's OpenMP threads and Numba's share the 2 cores: PyTorch's
    2-thread calls took 2.4-3.4 s there against 0.1 s alone (measured on 2026-12-03;
    ``torch_process=False`` times everyone in this process, as before).

    extra: more contenders, ``name -> make(batch) -> run() -> embeddings`` (e.g. our W8A8
    model). Each contender's output on the batch is compared with our fp32 output (the
    cosine, to show that what was timed computes the same thing).
    ->  {"ms": {name: ms}, "cosine_to_fp32": {name: mean cosine}, "batch": [B, T],
         "threads", "blas", "torch": version or None}. Contenders: "numpy_fp32" (our fp32
         model on the inference runtime), "numpy_fp32_training_path" (``nn.model.forward``
         with the default ops, on ``threads`` BLAS/Numba threads), "torch_fp32",
         "torch_int8_dynamic", and ``extra``'s.
    """
    from minicompress.nn.linear import DENSE
    from minicompress.pretrained.compress import CompressedModel

    batch = bench_batch(model, batch_size, seq_len)
    fp32 = CompressedModel(model.params, model.cfg, DENSE, "float", {}, {}, {}, {})
    rt = encoder_runtime(fp32, threads)
    runners: dict[str, Callable[[], np.ndarray]] = {
        "numpy_fp32": lambda: runtime_embeddings(rt, batch),
        "numpy_fp32_training_path": lambda: sentence_embeddings(model.params, model.cfg, batch),
    }
    torch_version = None
    with_torch = with_torch and have_torch()
    torch_runners = {}
    if with_torch:
        import torch

        torch_version = torch.__version__
        fp32 = torch_encoder(model.params, model.cfg)
        torch_runners = {
            "torch_fp32": torch_runner(fp32, batch),
            "torch_int8_dynamic": torch_runner(torch_int8_dynamic(fp32), batch),
        }
    for name, make in (extra or {}).items():
        runners[name] = make(batch)
    ref = runners["numpy_fp32"]()
    everyone = {**runners, **torch_runners}
    cosines = {name: float(row_cosines(ref, run()).mean()) for name, run in everyone.items()}
    ms = time_contenders(runners, threads, rounds, repeat)
    rt.close()
    if with_torch and torch_process:
        ms.update(torch_times_in_child(model, batch_size, seq_len, threads, rounds, repeat))
    elif with_torch:
        ms.update(time_contenders(torch_runners, threads, rounds, repeat))
    return {
        "ms": ms,
        "cosine_to_fp32": cosines,
        "batch": [batch_size, seq_len],
        "threads": threads,
        "blas": blas_summary(),
        "torch": torch_version,
    }


def torch_times_in_child(
    model, batch_size: int, seq_len: int, threads: int, rounds: int, repeat: int
) -> dict[str, float]:
    """PyTorch fp32 and dynamic int8 timed in a fresh Python process on the same checkpoint,
    batch (``bench_batch``) and threads: ``python -m minicompress.report.bench_pretrained
    --torch-only ...``, which prints one JSON line {name: ms}. A failure raises a
    RuntimeError with the child's last lines."""
    cmd = [
        sys.executable, "-m", "minicompress.report.bench_pretrained", "--torch-only",
        "--model-dir", str(model.model_dir), "--batch-size", str(batch_size),
        "--seq-len", str(seq_len), "--threads", str(threads), "--rounds", str(rounds),
        "--repeat", str(repeat),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"timing PyTorch in a child process failed: {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _time_torch_only(model_dir: str, batch_size: int, seq_len: int, threads: int,
                     rounds: int, repeat: int) -> dict[str, float]:  # fmt: skip
    """The child's side of ``torch_times_in_child``."""
    from minicompress.pretrained.loader import load_pretrained

    model = load_pretrained(model_dir)
    batch = bench_batch(model, batch_size, seq_len)
    fp32 = torch_encoder(model.params, model.cfg)
    runners = {
        "torch_fp32": torch_runner(fp32, batch),
        "torch_int8_dynamic": torch_runner(torch_int8_dynamic(fp32), batch),
    }
    return time_contenders(runners, threads, rounds, repeat)


# ----------------------------------------------------------------------------------------
# one compressed model: fidelity, speed, and PyTorch's dynamic int8 beside it
# ----------------------------------------------------------------------------------------

FIDELITY_SENTENCES = 256  # the fixed fidelity set (issue 15: at least 200)


def compress_report(
    model,
    cc,
    n_sentences: int = FIDELITY_SENTENCES,
    with_torch: bool = True,
    time_it: bool = True,
    rounds: int = 3,
    repeat: int = 5,
    compressed=None,
) -> dict:
    """Compress ``model`` as ``cc`` (a ``pretrained.compress.CompressConfig``) and measure
    it against the fp32 model on ``corpus_sentences(n_sentences)``; calibration sentences
    (static activations) come from outside that set.

    ->  {"method", "runtime", "mean_cosine", "min_cosine", "spearman", "top5_overlap",
         "sentences", and with ``time_it`` "ms_per_batch" (the compressed model on the
         inference runtime; a simulation on the training path, "timed" says which),
         "fp32_ms_per_batch" (our fp32 model on the runtime),
         "fp32_training_path_ms_per_batch", "batch", "threads"; with torch also
         "torch_fp32_ms_per_batch", "torch_int8_ms_per_batch", "torch_int8_mean_cosine",
         "torch_int8_min_cosine", "torch_int8_spearman", "torch_int8_top5_overlap"}.
    ``compressed``: an already compressed model (``CompressedModel``) to measure instead.
    """
    from minicompress.pretrained.compress import compress_beside
    from minicompress.pretrained.embed import embed_texts

    texts = corpus_sentences(n_sentences)
    cm = compress_beside(model, cc, texts) if compressed is None else compressed
    ref = embed_texts(model, texts)
    emb = embed_texts(model, texts, params=cm.params, cfg=cm.cfg, linear=cm.linear)
    out = {"method": cc.label(), "runtime": cm.runtime, **fidelity_report(ref, emb)}
    out["sentences"] = n_sentences
    out.update({k: v for k, v in cm.info.items()})
    torch_ok = with_torch and have_torch()
    if torch_ok:
        theirs = torch_int8_fidelity(model, ref, texts)
        out.update({f"torch_int8_{k}": v for k, v in theirs.items()})
    if time_it:
        rt = encoder_runtime(cm)

        def make(batch):
            if rt is None:  # a simulation: no faster form than the training path
                return lambda: sentence_embeddings(cm.params, cm.cfg, batch, cm.linear)
            return lambda: runtime_embeddings(rt, batch)

        bench = run_pretrained_bench(
            model, {"compressed": make}, rounds=rounds, repeat=repeat, with_torch=torch_ok,
            seq_len=min(BENCH_TOKENS, model.tokenizer.max_length),  # a smaller position table
        )  # fmt: skip
        if rt is not None:
            rt.close()
        ms = bench["ms"]
        out["timed"] = "training path (simulation)" if rt is None else "inference runtime"
        out["ms_per_batch"] = ms["compressed"]
        out["fp32_ms_per_batch"] = ms["numpy_fp32"]
        out["fp32_training_path_ms_per_batch"] = ms["numpy_fp32_training_path"]
        if torch_ok:
            out["torch_fp32_ms_per_batch"] = ms["torch_fp32"]
            out["torch_int8_ms_per_batch"] = ms["torch_int8_dynamic"]
        out.update(batch=bench["batch"], threads=bench["threads"], blas=bench["blas"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="PyTorch's side of the pretrained benchmark")
    ap.add_argument("--torch-only", action="store_true", required=True)
    ap.add_argument("--model-dir", required=True)
    for name, default in (("batch-size", BENCH_BATCH), ("seq-len", BENCH_TOKENS),
                          ("threads", BENCH_THREADS), ("rounds", 3), ("repeat", 5)):  # fmt: skip
        ap.add_argument(f"--{name}", type=int, default=default)
    a = ap.parse_args(argv)
    ms = _time_torch_only(a.model_dir, a.batch_size, a.seq_len, a.threads, a.rounds, a.repeat)
    print(json.dumps(ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
