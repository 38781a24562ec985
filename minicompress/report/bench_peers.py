"""Side by side with the industry tools (issue 18): the same model, the same input, the same
threads, timed in one process.

The contenders, each built from our own parameters:

==============  ============  ==========================================================
key             library       what runs
==============  ============  ==========================================================
torch-fp32      torch         the PyTorch twin (``report.torch_twin``), eager, no_grad
torch-int8      torch         ``quantize_dynamic`` of its ``nn.Linear`` layers, per channel
ort-fp32        onnxruntime   the twin exported to ONNX (static shape [B, T])
ort-int8        onnxruntime   ``quantization.quantize_dynamic`` of that file, per channel
ov-fp32         openvino      the ONNX file compiled for the CPU, f32 precision forced
ov-int8         nncf          ``nncf.quantize(model_type=TRANSFORMER)`` of it, calibrated
ours-fp32       minicompress  ``deploy.Runtime`` on the float32 weights
ours-int8       minicompress  W8A8 dynamic: symmetric per-channel int8 weights
                              (``quant.ptq``), per-token uint8 activations, the int8 kernels
                              (``deploy.compressed.runtime_params``, as ``load_runtime``)
ours-csr50      minicompress  50% global magnitude pruning (no fine-tune) on the CSR
                              kernels (``prune.sparse``; decoders with a head only)
==============  ============  ==========================================================

A peer whose package is not installed is skipped with one line (``pip install -e
".[peers]"``). Timing: ``report.timing.interleaved_times`` (rounds with a rotating start, a
pause and one untimed call before each contender's timed calls), every library on the same
number of threads (short calls repeated for at least ``MIN_SECONDS`` per round); min and
median milliseconds, and their ratios to torch fp32's.

Fidelity against our fp32 output: on a decoder, over all the validation windows, the largest
absolute logit difference, the fraction of positions whose argmax agrees, and the validation
perplexity; on an encoder (MiniLM), the cosine of each sentence embedding of the timed batch
to ours (mean and min). Every contender computes its outputs in batches of the timed shape
(the last one padded with repeated rows), so static-shape peers run unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minicompress.nn.model import TransformerConfig
from minicompress.nn.ops import cross_entropy_forward, l2_normalize_forward, mean_pool_forward
from minicompress.report.timing import blas_summary, interleaved_times

PAUSE_S = 0.2  # before each contender's timed calls: idle thread pools stop spinning
ROUNDS = 5  # timing rounds (each contender once per round)
REPEAT = 5  # timed calls per contender per round, at least
MIN_SECONDS = 0.25  # and more calls until this long: a 1 x 128 forward takes ~1-5 ms
CALIBRATION_ROWS = 64  # NNCF's calibration rows (training windows / other sentences)
SPARSITY = 0.5  # the CSR contender's global magnitude sparsity
EXTRA_HINT = "pip install -e '.[peers]'"


class Contender(NamedTuple):
    key: str  # the name on the command line
    library: str  # the package whose version is reported
    label: str  # the row's name in the table
    needs: tuple[str, ...]  # modules that must be importable


_ORT = ("torch", "onnx", "onnxruntime")  # the twin is exported by torch, read by onnxruntime
CONTENDERS = (
    Contender("torch-fp32", "torch", "torch eager fp32", ("torch",)),
    Contender("torch-int8", "torch", "torch quantize_dynamic int8", ("torch",)),
    Contender("ort-fp32", "onnxruntime", "onnxruntime fp32", _ORT),
    Contender("ort-int8", "onnxruntime", "onnxruntime int8 dynamic", _ORT),
    Contender("ov-fp32", "openvino", "openvino fp32", ("torch", "onnx", "openvino")),
    Contender("ov-int8", "nncf", "openvino + nncf int8", ("torch", "onnx", "openvino", "nncf")),
    Contender("ours-fp32", "minicompress", "minicompress fp32", ()),
    Contender("ours-int8", "minicompress", "minicompress int8 W8A8", ()),
    Contender("ours-csr50", "minicompress", "minicompress csr 50%", ()),
)
BY_KEY = {c.key: c for c in CONTENDERS}
BASELINE = "torch-fp32"  # the ratios' denominator
REFERENCE = "ours-fp32"  # the fidelity's reference


def check_contenders(keys: list[str] | None) -> list[str]:
    """The contenders to run, in table order: ``keys`` (checked) or all of them.
    ``ours-fp32`` is always run: it is the fidelity reference."""
    if keys is None:
        return [c.key for c in CONTENDERS]
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown or not keys:
        what = f"unknown contender(s) {', '.join(unknown)}" if unknown else "no contender given"
        raise ValueError(f"{what}; choose among {', '.join(BY_KEY)}")
    wanted = set(keys) | {REFERENCE}
    return [c.key for c in CONTENDERS if c.key in wanted]


def missing_modules(contender: Contender) -> list[str]:
    """The modules a contender needs that are not installed."""
    return [m for m in contender.needs if importlib.util.find_spec(m) is None]


def library_version(library: str) -> str:
    if library == "openvino":
        import openvino

        return openvino.get_version().split("-")[0]
    return str(importlib.import_module(library).__version__)


# ----------------------------------------------------------------------------------------
# fidelity
# ----------------------------------------------------------------------------------------


def logit_fidelity(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """max_abs_diff = max |out - ref|; argmax_agreement = mean over positions of
    [argmax_v out[..., v] == argmax_v ref[..., v]] (ties: the first index, as ``np.argmax``).

    ref, out: logits [..., V] of the same shape -> {"max_abs_diff", "argmax_agreement"}.
    """
    ref, out = np.asarray(ref), np.asarray(out)
    if ref.shape != out.shape or ref.ndim < 1 or ref.size == 0:
        raise ValueError(
            f"ref and out must be non-empty and of one shape; got {ref.shape}, {out.shape}"
        )
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    agree = np.argmax(out, axis=-1) == np.argmax(ref, axis=-1)
    return {"max_abs_diff": float(diff.max()), "argmax_agreement": float(agree.mean())}


def embedding_fidelity(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """cos_b = <ref_b, out_b> / (|ref_b| |out_b|) per row (``pretrained.fidelity.row_cosines``);
    -> {"max_abs_diff": max |out - ref|, "cosine_mean": mean_b cos_b, "cosine_min": min_b cos_b}.
    ref, out: [B, C]."""
    from minicompress.pretrained.fidelity import row_cosines

    cos = row_cosines(np.asarray(ref), np.asarray(out))
    diff = np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64))
    return {"max_abs_diff": float(diff.max()), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min())}  # fmt: skip


def in_batches(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, b: int) -> np.ndarray:
    """run over the rows of x [N, T] in batches of exactly b rows (the last one padded with
    copies of its last row, their outputs dropped) -> the outputs of the N rows."""
    outs = []
    for s in range(0, len(x), b):
        part = x[s : s + b]
        n = len(part)
        if n < b:
            part = np.concatenate([part, np.repeat(part[-1:], b - n, axis=0)])
        outs.append(run(part)[:n])
    return np.concatenate(outs)


def val_perplexity(logits: np.ndarray, y: np.ndarray) -> float:
    """exp(mean cross-entropy) of logits [N, T, V] against next tokens y [N, T]
    (``nn.ops.cross_entropy_forward``; as ``nn.train.evaluate`` computes it for our model)."""
    loss, _ = cross_entropy_forward(logits, y)
    return math.exp(float(loss))


# ----------------------------------------------------------------------------------------
# the model under test
# ----------------------------------------------------------------------------------------


class PeerModel(NamedTuple):
    """What every contender runs: our parameters and config, the timed input [B, T], the
    calibration rows [N, T] (static quantization), and for a decoder the validation
    windows (x, y) [N, T] of the perplexity. An encoder without head outputs sentence
    embeddings (mean pooled, L2-normalized; inputs without padding, token types 0)."""

    name: str
    params: dict
    cfg: TransformerConfig
    bench_x: np.ndarray
    calib_x: np.ndarray
    val: tuple[np.ndarray, np.ndarray] | None = None


def decoder_model(name, params, cfg, train_ids, val_ids, batch_size: int) -> PeerModel:
    """A decoder (the teacher): timed on the first ``batch_size`` validation windows,
    calibrated on ``CALIBRATION_ROWS`` training windows (seeded draw)."""
    from minicompress.data.corpus import eval_windows, get_batch

    x, y = eval_windows(val_ids, cfg.block_size)
    if len(x) < 1:
        raise ValueError(f"val_ids holds no window of {cfg.block_size} + 1 tokens")
    bench = x[np.arange(batch_size) % len(x)]  # [B, T]
    calib, _ = get_batch(train_ids, CALIBRATION_ROWS, cfg.block_size, np.random.default_rng(0))
    return PeerModel(name, params, cfg, bench, calib, (x, y))


def minilm_model(batch_size: int, seq_len: int) -> PeerModel:
    """all-MiniLM-L6-v2 (``pretrained.load_pretrained``): timed on ``bench_batch`` (corpus
    prose, rows of exactly ``seq_len`` tokens), calibrated on rows made of other sentences."""
    from minicompress.pretrained.loader import load_pretrained
    from minicompress.pretrained.sentences import corpus_sentences, sentences_outside
    from minicompress.pretrained.tokenizer import TruncationWarning
    from minicompress.report.bench_pretrained import bench_batch

    model = load_pretrained()
    bench = bench_batch(model, batch_size, seq_len)
    other = sentences_outside(corpus_sentences(batch_size * 8))[: CALIBRATION_ROWS * 8]
    texts = [" ".join(other[i : i + 8]) for i in range(0, len(other), 8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        calib = model.tokenizer.encode(texts, max_length=seq_len)
    full = ~calib.pad_mask.any(axis=1)  # rows without padding only
    return PeerModel("minilm", model.params, model.cfg, bench.ids, calib.ids[full])


# ----------------------------------------------------------------------------------------
# the contenders: each build returns run(x [B, T]) -> output (numpy float32)
# ----------------------------------------------------------------------------------------


class PeerContext(NamedTuple):
    """What every peer builder takes (``bench quality-peers`` builds the same peers)."""

    m: PeerModel
    threads: int
    workdir: Path  # the ONNX files


def _pool(h: np.ndarray) -> np.ndarray:
    pooled, _ = mean_pool_forward(h)  # [B, T, C] -> [B, C]
    return l2_normalize_forward(pooled)[0]


def _ours(ctx: PeerContext, params: dict) -> Callable:
    from minicompress.deploy.runtime import Runtime, RuntimeConfig

    rt = Runtime(params, ctx.m.cfg, RuntimeConfig(threads=ctx.threads))
    if ctx.m.cfg.head:
        return rt.forward
    return lambda x: _pool(rt.forward(x))


def build_ours_fp32(ctx: PeerContext) -> Callable:
    return _ours(ctx, ctx.m.params)


def build_ours_int8(ctx: PeerContext) -> Callable:
    from minicompress.deploy.compressed import runtime_params
    from minicompress.quant.ptq import quantize_weights
    from minicompress.quant.tensor import QuantSpec

    spec = QuantSpec(8, "symmetric", "channel")
    qt = quantize_weights(ctx.m.params, ctx.m.cfg, spec, embedding_spec=None)
    return _ours(ctx, runtime_params({**ctx.m.params, **qt}, ctx.m.cfg, "dynamic"))


def build_ours_csr50(ctx: PeerContext) -> Callable:
    from minicompress.prune.masks import apply_masks, global_masks
    from minicompress.prune.pipeline import prunable_names
    from minicompress.prune.scores import magnitude_scores
    from minicompress.prune.sparse import pack_sparse

    if not ctx.m.cfg.head:
        raise SkipContender("the CSR contender runs on decoders with a head (the teacher) only")
    p = ctx.m.params
    masks = global_masks({n: magnitude_scores(p[n]) for n in prunable_names(ctx.m.cfg)}, SPARSITY)
    return _ours(ctx, pack_sparse(apply_masks(p, masks), ctx.m.cfg))


def torch_module(ctx: PeerContext):
    """The PyTorch twin of the model (``report.torch_twin``), pooled for an encoder."""
    from minicompress.report.torch_twin import torch_twin

    return torch_twin(ctx.m.params, ctx.m.cfg, pool=not ctx.m.cfg.head)


def torch_runner(module) -> Callable:
    """run(x) -> the module's output as NumPy, under ``torch.inference_mode``."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


def build_torch_fp32(ctx: PeerContext) -> Callable:
    return torch_runner(torch_module(ctx))


def torch_int8_module(ctx: PeerContext):
    """The twin with its ``nn.Linear`` layers through ``quantize_dynamic``, per channel."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
        warnings.simplefilter("ignore")
        return quantize_dynamic(torch_module(ctx), {torch.nn.Linear: per_channel_dynamic_qconfig})


def build_torch_int8(ctx: PeerContext) -> Callable:
    return torch_runner(torch_int8_module(ctx))


def onnx_fp32_file(ctx: PeerContext) -> Path:
    """The twin exported once to ``workdir/fp32.onnx``, input ``idx`` int64 [B, T]."""
    path = ctx.workdir / "fp32.onnx"
    if not path.exists():
        import torch

        x = torch.from_numpy(ctx.m.bench_x)
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(torch_module(ctx), (x,), str(path), input_names=["idx"],
                              output_names=["out"], opset_version=17, dynamo=False)  # fmt: skip
    return path


def ort_runner(ctx: PeerContext, path: Path) -> Callable:
    """run(x) on an onnxruntime CPU session of the ONNX file, on ``ctx.threads`` threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = ctx.threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"idx": x.astype(np.int64)})[0]


def build_ort_fp32(ctx: PeerContext) -> Callable:
    return ort_runner(ctx, onnx_fp32_file(ctx))


def ort_int8_file(ctx: PeerContext) -> Path:
    """``workdir/ort_int8.onnx``: onnxruntime's ``quantize_dynamic`` of the fp32 file, per
    channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = ctx.workdir / "ort_int8.onnx"
    quantize_dynamic(onnx_fp32_file(ctx), path, per_channel=True, weight_type=QuantType.QInt8)
    return path


def build_ort_int8(ctx: PeerContext) -> Callable:
    return ort_runner(ctx, ort_int8_file(ctx))


def ov_runner(ctx: PeerContext, model) -> Callable:
    """run(x) on the OpenVINO model compiled for the CPU, on ``ctx.threads`` threads."""
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": ctx.threads,
        "INFERENCE_PRECISION_HINT": "f32",  # no silent bf16 on CPUs that have it
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x.astype(np.int64)})[0].copy()


def ov_model(ctx: PeerContext):
    """OpenVINO's reading of the fp32 ONNX file."""
    import openvino as ov

    return ov.Core().read_model(str(onnx_fp32_file(ctx)))


def build_ov_fp32(ctx: PeerContext) -> Callable:
    return ov_runner(ctx, ov_model(ctx))


def nncf_dataset(ctx: PeerContext):
    """The calibration rows as an ``nncf.Dataset`` of batches of the timed (static) shape."""
    import nncf

    b = len(ctx.m.bench_x)
    calib = ctx.m.calib_x
    n = max(1, len(calib) // b) * b
    items = [np.resize(calib, (n, calib.shape[1]))[i : i + b] for i in range(0, n, b)]
    return nncf.Dataset(items, lambda x: {0: x.astype(np.int64)})


@contextlib.contextmanager
def silenced():
    """NNCF draws progress bars whatever its log level, and its import sets its logger to
    INFO (statistics tables): both kept off the terminal while NNCF works."""
    sink = io.StringIO()
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        nncf_log.setLevel(level)


def nncf_int8_model(ctx: PeerContext):
    """The OpenVINO model quantized by ``nncf.quantize(model_type=TRANSFORMER)``."""
    import nncf

    dataset = nncf_dataset(ctx)
    with silenced():
        return nncf.quantize(
            ov_model(ctx),
            dataset,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=dataset.get_length(),
        )


def build_ov_int8(ctx: PeerContext) -> Callable:
    return ov_runner(ctx, nncf_int8_model(ctx))


class SkipContender(Exception):
    """A contender that does not apply to this model (one line in the report)."""


BUILDERS = {
    "torch-fp32": build_torch_fp32,
    "torch-int8": build_torch_int8,
    "ort-fp32": build_ort_fp32,
    "ort-int8": build_ort_int8,
    "ov-fp32": build_ov_fp32,
    "ov-int8": build_ov_int8,
    "ours-fp32": build_ours_fp32,
    "ours-int8": build_ours_int8,
    "ours-csr50": build_ours_csr50,
}


# ----------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_logs():
    """NNCF and OpenVINO log progress bars and notices: keep the terminal to our table."""
    old = os.environ.get("OPENVINO_TELEMETRY")  # no telemetry from a benchmark
    os.environ["OPENVINO_TELEMETRY"] = "0"
    # onnxruntime's quantizer warns on the root logger; NNCF draws progress bars at INFO;
    # onnxruntime's 4-bit quantizer module calls logging.basicConfig(level=INFO) when it is
    # imported (a handler on the root logger, which then prints every INFO line)
    loggers = [logging.getLogger(), logging.getLogger("nncf")]
    levels = [lg.level for lg in loggers]
    root_handlers = list(logging.getLogger().handlers)
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger().handlers[:] = root_handlers  # drop what a library added
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if old is None:
            os.environ.pop("OPENVINO_TELEMETRY", None)
        else:
            os.environ["OPENVINO_TELEMETRY"] = old


def _fidelity(m: PeerModel, run: Callable, ref: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """The contender's fidelity fields against ``ref`` (None: it is the reference) and its
    outputs (validation windows of a decoder, the timed batch of an encoder)."""
    b = len(m.bench_x)
    if m.val is not None:
        x, y = m.val
        logits = in_batches(run, x, b)  # [N, T, V]
        out = {"val_ppl": val_perplexity(logits, y)}
        if ref is not None:
            out.update(logit_fidelity(ref, logits))
        return out, logits
    emb = run(m.bench_x)  # [B, C]
    return ({} if ref is None else embedding_fidelity(ref, emb)), emb


def run_peers_bench(
    m: PeerModel,
    threads: int = 2,
    contenders: list[str] | None = None,
    rounds: int = ROUNDS,
    repeat: int = REPEAT,
    pause_s: float = PAUSE_S,
    log: Callable[[str], None] = print,
    min_seconds: float = MIN_SECONDS,
) -> dict:
    """Build every installed contender for ``m``, check its fidelity against ours, then time
    them all in interleaved rounds (module docstring).

    ->  {"rows": [{"contender", "key", "library", "version", "threads", "min_ms",
         "median_ms", "ratio_to_torch_fp32", "min_ratio_to_torch_fp32", fidelity fields}],
         "skipped": [{"key", "reason"}], "model", "batch_size", "seq_len", "threads",
         "blas", "load_average"}. ``log`` receives one line per skipped contender.
    """
    from minicompress.report.bench_pretrained import fixed_threads

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1; got {threads!r}")
    keys = check_contenders(contenders)
    runs, rows, skipped = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="minicompress-peers-") as tmp, quiet_logs():
        ctx = PeerContext(m, threads, Path(tmp))
        with fixed_threads(threads):
            ref = None
            for key in [REFERENCE] + [k for k in keys if k != REFERENCE]:
                c = BY_KEY[key]
                missing = missing_modules(c)
                try:
                    if missing:
                        raise SkipContender(f"{', '.join(missing)} not installed ({EXTRA_HINT})")
                    run = BUILDERS[key](ctx)
                except SkipContender as e:
                    skipped.append({"key": key, "reason": str(e)})
                    log(f"skipped {key}: {e}")
                    continue
                fields, out = _fidelity(m, run, ref)
                ref = out if ref is None else ref
                runs[key] = lambda run=run: run(m.bench_x)
                rows[key] = {"contender": c.label, "key": key, "library": c.library,
                             "version": library_version(c.library), "threads": threads,
                             **fields}  # fmt: skip
            times = interleaved_times(runs, rounds, repeat, pause_s, min_seconds)
    base = times.get(BASELINE)
    out_rows = []
    for key in [k for k in keys if k in rows]:
        t = times[key]
        row = {**rows[key], "min_ms": float(np.min(t)), "median_ms": float(np.median(t))}
        row["ratio_to_torch_fp32"] = None
        row["min_ratio_to_torch_fp32"] = None
        if base is not None:
            row["ratio_to_torch_fp32"] = row["median_ms"] / float(np.median(base))
            row["min_ratio_to_torch_fp32"] = row["min_ms"] / float(np.min(base))
        out_rows.append(row)
    b, t = m.bench_x.shape
    return {
        "rows": out_rows,
        "skipped": skipped,
        "model": m.name,
        "batch_size": int(b),
        "seq_len": int(t),
        "threads": threads,
        "rounds": rounds,
        "repeat": repeat,
        "blas": blas_summary(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def json_rows(r: dict) -> list[dict]:
    """The rows of ``--json``: each row with the run's model, shape and machine fields."""
    common = {k: r[k] for k in ("model", "batch_size", "seq_len", "blas", "load_average")}
    return [{**row, **common} for row in r["rows"]]


def speed_ratio(r: dict, ours: str, theirs: str, stat: str = "median_ms") -> float | None:
    """Time of ``ours`` over ``theirs`` (``stat``: "median_ms" or "min_ms"; < 1: ours is
    faster), or None if either contender did not run."""
    ms = {row["key"]: row[stat] for row in r["rows"]}
    return ms[ours] / ms[theirs] if ours in ms and theirs in ms else None


def format_peers_bench(r: dict) -> str:
    """The benchmark's result as the terminal shows it."""
    from minicompress.report.table import format_table

    cols = ["contender", "version", "min_ms", "median_ms", "ratio_to_torch_fp32"]
    cols += ["min_ratio_to_torch_fp32"]
    if r["rows"] and "val_ppl" in r["rows"][0]:
        cols += ["val_ppl", "max_abs_diff", "argmax_agreement"]
    else:
        cols += ["cosine_mean", "cosine_min", "max_abs_diff"]
    lines = [
        f"bench peers: {r['model']}, {r['batch_size']} x {r['seq_len']} tokens, "
        f"{r['threads']} thread(s); NumPy BLAS: {r['blas']}"
        + (f"; load average {r['load_average']:.1f}" if r["load_average"] is not None else ""),
        format_table(r["rows"], cols, floatfmt=".4g"),
    ]
    for ours, theirs in (("ours-int8", "ort-int8"), ("ours-int8", "ov-int8")):
        ratio = speed_ratio(r, ours, theirs)
        if ratio is not None:
            lines.append(
                f"{ours} / {theirs} time: median {ratio:.3g}, min "
                f"{speed_ratio(r, ours, theirs, 'min_ms'):.3g} (< 1: ours faster)"
            )
    lines.append(
        "(fidelity against minicompress fp32; ratio = median time / torch fp32's median, "
        "min_ratio = min / min)"
    )
    return "\n".join(lines)


def plot_peers_bench(r: dict, path: str | Path) -> Path:
    """Horizontal bars: each contender's median milliseconds, its minimum as a tick."""
    from minicompress.report.plots import _plt, save_figure

    plt = _plt()
    rows = r["rows"]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    ypos = np.arange(len(rows))
    colors = ["C0" if row["library"] == "minicompress" else "0.6" for row in rows]
    ax.barh(ypos, [row["median_ms"] for row in rows], color=colors)
    ax.plot([row["min_ms"] for row in rows], ypos, "k|", markersize=12, label="min")
    ax.set_yticks(ypos, [row["contender"] for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms per forward (bar: median)")
    ax.set_title(f"{r['model']} {r['batch_size']}x{r['seq_len']}, {r['threads']} thread(s)")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)
