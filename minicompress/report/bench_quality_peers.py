"""Quality side by side with the industry tools (issue 18): ``bench quality-peers``.

The quantization and pruning rows of issue 18's first table, ours beside the peers', on one
model. Every contender starts from the same float weights (the peers from the PyTorch twin
of ``report.torch_twin``, its ONNX export and the OpenVINO model read from that file, built
as ``bench peers`` builds them), calibrates on the same 64 training windows
(``quant.pipeline.calibration_data``: 4 batches of 16, seeded), is measured on the same
validation windows, and every pruned model is fine-tuned the same way, by our one training
loop (``PruneConfig.train_config``; a peer's masks held by ``prune.masks.HoldMasks``).

============  ===================================  ======================================
row           ours                                 peers
============  ===================================  ======================================
w8            W8 per channel (symmetric,           NNCF ``compress_weights`` INT8_ASYM;
              asymmetric)                          torch ``PerChannelMinMaxObserver``
                                                   (symmetric, affine) on the twin's weights
w8a8-dynamic  W8A8 dynamic (per token)             onnxruntime ``quantize_dynamic`` per
                                                   channel; torch ``quantize_dynamic``
w8a8-static   min-max; min-max + SmoothQuant 0.5   NNCF ``quantize(model_type=TRANSFORMER)``;
                                                   onnxruntime static QDQ on the linears,
                                                   MinMax
w4            group 64 round-to-nearest; GPTQ      NNCF INT4_ASYM group 64 + AWQ;
                                                   onnxruntime 4-bit block 32
prune50       global magnitude 50% (one shot,      torch ``prune.global_unstructured`` L1
              cubic schedule)                      50%, then our fine-tune
prune80       global magnitude 80%, cubic; the       torch global L1 80% at once, then our
              recipe of issue 18 (ramp 20%, lr     fine-tune (same steps)
              3e-3, KD; against its own control)
heads         1 head of 4 per block (L2 score)     torch-pruning (not run by this harness)
============  ===================================  ======================================

Quality: the validation perplexity; ``delta_pct`` is its change in percent against the fp32
model (quantization rows; the peers' fp32 runtimes agree with ours to 1e-5, ``bench
peers``) or against the unpruned model after the same fine-tune (pruning rows, the control:
the fine-tune alone changes the perplexity). Size: the bytes of the file each library
deploys — our compressed checkpoint (``deploy.format``; pruned models with CSR weights,
``prune.sparse.save_sparse``), the ONNX file, the OpenVINO IR (.xml + .bin), or
``torch.save`` of the state dict — and ``compression_ratio``, the same library's fp32 file
over it. A peer that is not installed is skipped with one line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minicompress.nn.model import TransformerConfig
from minicompress.report.bench_peers import (
    EXTRA_HINT,
    PeerContext,
    SkipContender,
    decoder_model,
    in_batches,
    library_version,
    missing_modules,
    nncf_dataset,
    nncf_int8_model,
    onnx_fp32_file,
    ort_int8_file,
    ort_runner,
    ov_model,
    ov_runner,
    quiet_logs,
    silenced,
    torch_int8_module,
    torch_module,
    torch_runner,
    val_perplexity,
)

FINETUNE_STEPS = 300  # the fine-tune budget of every pruning row
QUICK_STEPS = 4  # --quick: fine-tune steps (the machinery runs, the numbers mean little)
QUICK_WINDOWS = 16  # --quick: validation windows measured

# our contenders, key -> label of the row in ``quant_experiments.rows_to_run`` (its config)
OURS_QUANT = {
    "w8": {"ours-sym": "W8 per channel", "ours-asym": "W8 per channel, asymmetric"},
    "w8a8-dynamic": {"ours": "W8A8 dynamic (per token)"},
    "w8a8-static": {"ours": "W8A8 static, minmax",
                    "ours-smooth": "W8A8 static, minmax, SmoothQuant 0.5"},
    "w4": {"ours-rtn": "W4 group 64", "ours-gptq": "W4 group 64, GPTQ"},
}  # fmt: skip
# our pruning contenders, key -> name in ``prune_experiments.BARS`` (its PruneConfig)
OURS_PRUNE = {
    "prune50": {"ours": "magnitude 50% global", "ours-cubic": "magnitude 50% cubic global"},
    "prune80": {
        "ours-cubic": "magnitude 80% cubic global",
        "ours-recipe": "magnitude 80% cubic global, ramp 20%, lr 3e-3, KD",
    },
    "heads": {"ours": "heads 25% local"},
}


class Measured(NamedTuple):
    val_ppl: float
    model_bytes: int  # the file this library deploys
    fp32_bytes: int  # the same library's fp32 file
    note: str = ""  # what the library said it did differently (e.g. an algorithm skipped)
    reference_ppl: float | None = None  # its own control (a fine-tune unlike the row's); None:
    # the row's reference


class Contender(NamedTuple):
    key: str  # unique within its row
    library: str  # the package whose version is reported
    label: str  # the name in the table
    needs: tuple[str, ...]  # modules that must be importable
    measure: Callable  # (_Setup) -> Measured
    hint: str = EXTRA_HINT  # how to install what ``needs`` names


class Row(NamedTuple):
    key: str  # the name on the command line
    title: str
    reference: str  # "fp32" (quantization) or "control" (pruning, fine-tuned)
    contenders: tuple[Contender, ...]


# ----------------------------------------------------------------------------------------
# what every contender shares
# ----------------------------------------------------------------------------------------


class _Setup:
    """One run's model, data, calibration and validation windows, the fp32 and control
    references (each computed once, when first needed), and a folder for the files."""

    def __init__(self, params, cfg, vocab, data, workdir: Path, steps, eval_windows, threads):
        from minicompress.nn.train import evaluate
        from minicompress.quant.pipeline import CALIB_BATCH_SIZE, calibration_data

        self.params, self.cfg, self.vocab, self.data = params, cfg, vocab, data
        self.workdir, self.steps, self.eval_windows = workdir, steps, eval_windows
        calib = np.concatenate([b.x for b in calibration_data(data, cfg, _calib_config())])
        m = decoder_model("model", params, cfg, data.train, data.val, CALIB_BATCH_SIZE)
        x, y = m.val
        self.m = m._replace(calib_x=calib, val=(x[:eval_windows], y[:eval_windows]))
        self.ctx = PeerContext(self.m, threads, workdir)
        self.base_loss = evaluate(params, cfg, data.val, eval_windows)
        self._control_loss = None
        self._fp32_bytes = {}

    def folder(self, *parts: str) -> Path:
        path = self.workdir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def prune_config(self, **kw):
        """A ``PruneConfig`` with this run's fine-tune steps and validation windows."""
        from minicompress.prune.pipeline import PruneConfig

        return PruneConfig(**kw, finetune_steps=self.steps, eval_windows=self.eval_windows)

    @property
    def control_loss(self) -> float:
        """Validation loss of the unpruned model after the pruning rows' fine-tune."""
        if self._control_loss is None:
            from minicompress.report.prune_experiments import control_loss

            pc = self.prune_config(method="magnitude", sparsity=0.0)
            self._control_loss = control_loss(self.params, self.cfg, self.data, pc)
        return self._control_loss

    def peer_ppl(self, run: Callable) -> float:
        """A peer's validation perplexity: ``run`` over the windows in batches of the
        exported (static) shape."""
        x, y = self.m.val
        return val_perplexity(in_batches(run, x, len(self.m.bench_x)), y)

    def fp32_bytes(self, fmt: str) -> int:
        """The fp32 model's bytes in ``fmt``: mc (ours), onnx, openvino or torch."""
        if fmt not in self._fp32_bytes:
            if fmt == "mc":
                from minicompress.nn.checkpoint import save_checkpoint

                path = save_checkpoint(self.folder("fp32"), self.params, self.cfg, self.vocab)
                nbytes = path.stat().st_size
            elif fmt == "onnx":
                nbytes = onnx_fp32_file(self.ctx).stat().st_size
            elif fmt == "openvino":
                nbytes = _ov_bytes(ov_model(self.ctx), self.folder("fp32-ov"))
            else:
                nbytes = _torch_bytes(torch_module(self.ctx).state_dict())
            self._fp32_bytes[fmt] = nbytes
        return self._fp32_bytes[fmt]


def _calib_config():
    """The configuration whose calibration windows every contender uses (our rows' own)."""
    from minicompress.quant.pipeline import QuantizeConfig
    from minicompress.report.quant_experiments import CALIB_BATCHES

    return QuantizeConfig(calib_batches=CALIB_BATCHES)


def _ov_bytes(model, folder: Path) -> int:
    """Bytes of an OpenVINO model saved as IR (.xml + .bin; weights kept as they are)."""
    import openvino as ov

    xml = folder / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def _torch_bytes(state_dict) -> int:
    """Bytes of ``torch.save(state_dict)``."""
    import torch

    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getbuffer().nbytes


# ----------------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------------


def _ours_quant(label: str) -> Callable:
    def measure(s: _Setup) -> Measured:
        from minicompress.report.quant_experiments import measure_row, rows_to_run

        qc = dict(rows_to_run(0))[label]
        folder = s.folder("ours", "".join(c if c.isalnum() else "_" for c in label))
        ppl, nbytes = measure_row(s.params, s.cfg, s.vocab, {}, s.data, qc, folder, s.eval_windows)
        return Measured(ppl, nbytes, s.fp32_bytes("mc"))

    return measure


def _sparse_bytes(s: _Setup, params: dict, cfg: TransformerConfig, name: str) -> int:
    """Bytes of a pruned model's checkpoint: CSR weights where sparse enough, fp32 else."""
    from minicompress.prune.sparse import save_sparse

    return save_sparse(s.folder("pruned", name), params, cfg, s.vocab).stat().st_size


def _ours_prune(bar: str) -> Callable:
    """Our pruning bar ``bar`` (``prune_experiments.BARS``); when its fine-tune is not the
    row's (another learning rate, a distillation loss), against its own control: the same
    fine-tune of the unpruned model."""

    def measure(s: _Setup) -> Measured:
        from minicompress.prune.pipeline import prune_model
        from minicompress.report.prune_experiments import bar_config, bar_loss

        pc, distill = bar_config(bar, s.steps, eval_windows=s.eval_windows)
        default = s.prune_config(method="magnitude", sparsity=0.0).train_config()
        own = distill is not None or pc.train_config() != default
        r = prune_model(s.params, s.cfg, s.data, pc, progress=False, baseline_loss=s.base_loss,
                        control_loss=None if own else s.control_loss,
                        loss=bar_loss(s.params, s.cfg, distill))  # fmt: skip
        nbytes = _sparse_bytes(s, r.params, r.cfg, "".join(c for c in bar if c.isalnum()))
        m = r.metrics
        if not own:
            return Measured(m["val_ppl"], nbytes, s.fp32_bytes("mc"))
        note = (
            f"against its own control, the same fine-tune (lr {pc.lr:g}"
            + (", KD " + " ".join(f"{k} {v:g}" for k, v in distill.items()) if distill else "")
            + f") of the unpruned model: {m['control_val_ppl']:.4f}"
        )
        return Measured(m["val_ppl"], nbytes, s.fp32_bytes("mc"), note, m["control_val_ppl"])

    return measure


# ----------------------------------------------------------------------------------------
# the peers
# ----------------------------------------------------------------------------------------


def _nncf_weights(mode: str, **kw) -> Callable:
    """NNCF ``compress_weights`` of the OpenVINO model (weight-only)."""

    def measure(s: _Setup) -> Measured:
        import nncf

        data = {"dataset": nncf_dataset(s.ctx)} if kw.get("awq") else {}  # AWQ calibrates
        with silenced(), _nncf_messages() as said:
            model = nncf.compress_weights(
                ov_model(s.ctx), mode=getattr(nncf.CompressWeightsMode, mode), **kw, **data
            )
        nbytes = _ov_bytes(model, s.folder(f"nncf-{mode}"))
        note = " ".join(m for m in said if "skipped" in m)  # NNCF: "... AWQ ... skipped."
        return Measured(s.peer_ppl(ov_runner(s.ctx, model)), nbytes, s.fp32_bytes("openvino"),
                        note)  # fmt: skip

    return measure


@contextlib.contextmanager
def _nncf_messages():
    """NNCF's INFO and louder messages, collected in a list instead of printed (it says
    there when it skips an algorithm it was asked for)."""

    class Collect(logging.Handler):
        def emit(self, record):
            said.append(" ".join(record.getMessage().split()))

    said = []
    log = logging.getLogger("nncf")
    handlers, level = log.handlers, log.level
    log.handlers, log.level = [Collect()], logging.INFO
    try:
        yield said
    finally:
        log.handlers, log.level = handlers, level


def _nncf_static(s: _Setup) -> Measured:
    model = nncf_int8_model(s.ctx)
    nbytes = _ov_bytes(model, s.folder("nncf-int8"))
    return Measured(s.peer_ppl(ov_runner(s.ctx, model)), nbytes, s.fp32_bytes("openvino"))


def _torch_observer(qscheme: str) -> Callable:
    """Each ``nn.Linear`` weight of the twin quantized to int8 by a
    ``PerChannelMinMaxObserver`` (one range per output channel) and run dequantized."""

    def measure(s: _Setup) -> Measured:
        import torch
        from torch.ao.quantization.observer import PerChannelMinMaxObserver

        module = torch_module(s.ctx)
        state = dict(module.state_dict())
        for key, lin in module.linears.items():
            obs = PerChannelMinMaxObserver(
                ch_axis=0, dtype=torch.qint8, qscheme=getattr(torch, qscheme)
            )
            w = lin.weight.detach().clone()  # [N, K]
            obs(w)
            scale, zero_point = obs.calculate_qparams()
            qw = torch.quantize_per_channel(w, scale, zero_point, 0, torch.qint8)
            state[f"linears.{key}.weight"] = qw  # what would be saved: int8 codes + scales
            with torch.no_grad():
                lin.weight.copy_(qw.dequantize())
        nbytes = _torch_bytes(state)
        return Measured(s.peer_ppl(torch_runner(module)), nbytes, s.fp32_bytes("torch"))

    return measure


def _torch_dynamic(s: _Setup) -> Measured:
    q = torch_int8_module(s.ctx)
    return Measured(s.peer_ppl(torch_runner(q)), _torch_bytes(q.state_dict()),
                    s.fp32_bytes("torch"))  # fmt: skip


def _ort_file(s: _Setup, path: Path) -> Measured:
    return Measured(s.peer_ppl(ort_runner(s.ctx, path)), path.stat().st_size,
                    s.fp32_bytes("onnx"))  # fmt: skip


def _ort_dynamic(s: _Setup) -> Measured:
    return _ort_file(s, ort_int8_file(s.ctx))


def _ort_static(s: _Setup) -> Measured:
    """onnxruntime ``quantize_static``, QDQ, MinMax calibration on our windows, per-channel
    int8 weights and uint8 activations, on the linear layers only (the MatMul / Gemm nodes
    whose weight is a stored tensor; not the attention's two products)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fp32 = onnx_fp32_file(s.ctx)
    graph = onnx.load(str(fp32)).graph
    stored = {t.name for t in graph.initializer}
    linears = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
               and n.input[1] in stored]  # fmt: skip
    b = len(s.m.bench_x)
    batches = [s.m.calib_x[i : i + b] for i in range(0, len(s.m.calib_x) - b + 1, b)]

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.items = iter(batches)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"idx": x.astype(np.int64)}

    path = s.ctx.workdir / "ort_static.onnx"
    quantize_static(fp32, path, Windows(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=linears,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    return _ort_file(s, path)


def _ort_int4(s: _Setup) -> Measured:
    """onnxruntime's ``MatMulNBitsQuantizer``: 4-bit asymmetric blocks of 32 weights."""
    import onnx

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:  # 1.32 imports onnx_ir, which it does not require
        raise SkipContender(f"onnxruntime's 4-bit quantizer does not import here ({e})") from None
    logging.getLogger().setLevel(logging.ERROR)  # its import set the root logger to INFO
    q = MatMulNBitsQuantizer(onnx.load(str(onnx_fp32_file(s.ctx))), bits=4, block_size=32,
                             is_symmetric=False)  # fmt: skip
    q.process()
    path = s.ctx.workdir / "ort_int4.onnx"
    q.model.save_model_to_file(str(path), False)
    return _ort_file(s, path)


def _finetune_with_masks(s: _Setup, masks: dict) -> dict:
    """A copy of the model with ``masks`` applied, fine-tuned exactly as our pruning rows
    are (same steps, schedule and batches) with the pruned weights held at zero."""
    from minicompress.nn.train import train
    from minicompress.prune.masks import HoldMasks, apply_masks

    work = {k: v.copy() for k, v in apply_masks(s.params, masks).items()}
    tc = s.prune_config(method="magnitude", sparsity=0.0).train_config()
    train(work, s.cfg, s.data, tc, after_step=HoldMasks(masks), progress=False)
    return work


def torch_global_l1_masks(params: dict, cfg: TransformerConfig, sparsity: float) -> dict:
    """torch ``prune.global_unstructured(L1Unstructured, amount=sparsity)`` over the twin's
    linear layers of ``prune.pipeline.prunable_names`` (the weights our pruning acts on).
    -> {name: bool mask [K, N] in our layout, True = kept}."""
    from torch.nn.utils import prune

    from minicompress.prune.pipeline import prunable_names
    from minicompress.report.torch_twin import _module_key, torch_twin

    module = torch_twin(params, cfg)
    names = prunable_names(cfg)
    layers = [module.linears[_module_key(n.removesuffix(".w"))] for n in names]
    prune.global_unstructured([(lin, "weight") for lin in layers],
                              pruning_method=prune.L1Unstructured, amount=sparsity)  # fmt: skip
    # torch's masks are [N, K] like its weights
    return {n: lin.weight_mask.numpy().T > 0 for n, lin in zip(names, layers, strict=True)}


def _torch_global_l1(sparsity: float) -> Callable:
    """``torch_global_l1_masks``, then our fine-tune with the masks held."""

    def measure(s: _Setup) -> Measured:
        from minicompress.nn.train import evaluate

        work = _finetune_with_masks(s, torch_global_l1_masks(s.params, s.cfg, sparsity))
        ppl = math.exp(evaluate(work, s.cfg, s.data.val, s.eval_windows))
        nbytes = _sparse_bytes(s, work, s.cfg, f"torch_l1_{round(100 * sparsity)}")
        return Measured(ppl, nbytes, s.fp32_bytes("mc"))

    return measure


def _torch_pruning(s: _Setup) -> Measured:
    """Not driven: torch-pruning's dependency graph does not follow the twin's split of its
    fused qkv projection into q, k and v (``MetaPruner(num_heads=..., prune_num_heads=True)``
    on torch-pruning 1.6.1 fails in its head importance with an IndexError); telling it the
    coupling by hand would make its choice ours (the L2 norm of a head's rows and columns)."""
    raise SkipContender(
        "torch-pruning is installed, but its dependency graph does not follow the twin's "
        "q, k, v split of the fused qkv projection (1.6.1: IndexError in its head importance)"
    )


# ----------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------


def _ours(labels: dict[str, str], measure: Callable) -> tuple[Contender, ...]:
    """Our contenders of a row: key -> ``measure(label)``."""
    return tuple(
        Contender(key, "minicompress", label, (), measure(label)) for key, label in labels.items()
    )


_TORCH = ("torch",)
_ONNX = ("torch", "onnx", "onnxruntime")
_OV = ("torch", "onnx", "openvino", "nncf")
ROWS = (
    Row("w8", "W8 weight-only per channel", "fp32", _ours(OURS_QUANT["w8"], _ours_quant) + (
        Contender("nncf", "nncf", "NNCF compress_weights INT8_ASYM", _OV,
                  _nncf_weights("INT8_ASYM")),
        Contender("torch-sym", "torch", "torch PerChannelMinMaxObserver symmetric", _TORCH,
                  _torch_observer("per_channel_symmetric")),
        Contender("torch-affine", "torch", "torch PerChannelMinMaxObserver affine", _TORCH,
                  _torch_observer("per_channel_affine")),
    )),
    Row("w8a8-dynamic", "W8A8 dynamic", "fp32",
        _ours(OURS_QUANT["w8a8-dynamic"], _ours_quant) + (
        Contender("ort", "onnxruntime", "onnxruntime quantize_dynamic per channel", _ONNX,
                  _ort_dynamic),
        Contender("torch", "torch", "torch quantize_dynamic per channel", _TORCH,
                  _torch_dynamic),
    )),
    Row("w8a8-static", "W8A8 static", "fp32",
        _ours(OURS_QUANT["w8a8-static"], _ours_quant) + (
        Contender("nncf", "nncf", "NNCF quantize(model_type=TRANSFORMER)", _OV, _nncf_static),
        Contender("ort", "onnxruntime", "onnxruntime static QDQ, linears, MinMax", _ONNX,
                  _ort_static),
    )),
    Row("w4", "W4 weight-only", "fp32", _ours(OURS_QUANT["w4"], _ours_quant) + (
        Contender("nncf", "nncf", "NNCF INT4_ASYM group 64 + AWQ", _OV,
                  _nncf_weights("INT4_ASYM", group_size=64, ratio=1.0, awq=True)),
        Contender("ort", "onnxruntime", "onnxruntime 4-bit block 32", _ONNX, _ort_int4),
    )),
    Row("prune50", "50% unstructured + fine-tune", "control",
        _ours(OURS_PRUNE["prune50"], _ours_prune) + (
        Contender("torch", "torch", "torch global_unstructured L1 50% + our fine-tune",
                  _TORCH, _torch_global_l1(0.5)),
    )),
    Row("prune80", "80% unstructured + fine-tune", "control",
        _ours(OURS_PRUNE["prune80"], _ours_prune) + (
        Contender("torch", "torch", "torch global_unstructured L1 80% one shot + our "
                  "fine-tune", _TORCH, _torch_global_l1(0.8)),
    )),
    Row("heads", "1 head of 4 per block removed + fine-tune", "control",
        _ours(OURS_PRUNE["heads"], _ours_prune) + (
        Contender("torch-pruning", "torch_pruning", "torch-pruning", ("torch_pruning",),
                  _torch_pruning, "not a dependency of minicompress, not in the peers extra"),
    )),
)  # fmt: skip
BY_KEY = {r.key: r for r in ROWS}


def check_rows(keys: list[str] | None) -> list[str]:
    """The rows to run, in table order: ``keys`` (checked) or all of them."""
    if keys is None:
        return list(BY_KEY)
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown or not keys:
        what = f"unknown row(s) {', '.join(unknown)}" if unknown else "no row given"
        raise ValueError(f"{what}; choose among {', '.join(BY_KEY)}")
    return [k for k in BY_KEY if k in keys]


def run_quality_peers(
    params: dict,
    cfg: TransformerConfig,
    vocab: list[str],
    data,
    rows: list[str] | None = None,
    finetune_steps: int = FINETUNE_STEPS,
    eval_windows: int | None = None,
    threads: int = 2,
    log: Callable[[str], None] = print,
) -> dict:
    """Every contender of ``rows`` (default all) on the decoder ``params`` (module
    docstring). data: its ``TextDataset`` (calibration and fine-tune batches from
    ``data.train``, the measurements on the first ``eval_windows`` windows of ``data.val``,
    None: all). A peer that is missing or fails is skipped: one line to ``log``.

    ->  {"rows": [{"row", "title", "key", "contender", "library", "version", "ours",
         "val_ppl", "reference", "reference_ppl", "delta_pct", "model_bytes", "fp32_bytes",
         "compression_ratio", "note", "seconds"}], "skipped": [{"row", "key", "reason"}],
         "fp32_val_ppl", "control_val_ppl" (None without a pruning row), "finetune_steps",
         "calibration_windows", "eval_windows", "threads"}
    """
    from minicompress.report.bench_pretrained import fixed_threads

    keys = check_rows(rows)
    for name, v, low in (("finetune_steps", finetune_steps, 1), ("threads", threads, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {v!r}")
    if not cfg.head or not cfg.causal:
        raise ValueError("bench quality-peers measures a decoder with a head (the teacher)")
    out_rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="minicompress-qpeers-") as tmp, quiet_logs():
        with fixed_threads(threads):
            s = _Setup(params, cfg, vocab, data, Path(tmp), finetune_steps, eval_windows, threads)
            for row in (BY_KEY[k] for k in keys):
                for c in row.contenders:
                    t0 = time.perf_counter()
                    missing = missing_modules(c)
                    try:
                        if missing:
                            raise SkipContender(f"{', '.join(missing)} not installed ({c.hint})")
                        got = c.measure(s)
                    except SkipContender as e:
                        reason = str(e)
                    except Exception as e:  # a peer's own failure: reported, the run goes on
                        if c.library == "minicompress":
                            raise
                        reason = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
                    else:
                        reason = None
                    if reason is not None:
                        skipped.append({"row": row.key, "key": c.key, "reason": reason})
                        log(f"skipped {row.key} {c.key}: {reason}")
                        continue
                    ref = got.reference_ppl
                    if ref is None:
                        ref = math.exp(s.base_loss if row.reference == "fp32" else s.control_loss)
                    out_rows.append(_result(row, c, got, ref, time.perf_counter() - t0))
                    log(_progress_line(out_rows[-1]))
        control = s._control_loss
    return {
        "rows": out_rows,
        "skipped": skipped,
        "fp32_val_ppl": math.exp(s.base_loss),
        "control_val_ppl": None if control is None else math.exp(control),
        "finetune_steps": finetune_steps,
        "calibration_windows": int(len(s.m.calib_x)),
        "eval_windows": int(len(s.m.val[0])),
        "threads": threads,
    }


def _result(row: Row, c: Contender, got: Measured, ref_ppl: float, seconds: float) -> dict:
    return {
        "row": row.key,
        "title": row.title,
        "key": c.key,
        "contender": c.label,
        "library": c.library,
        "version": library_version(c.library),
        "ours": c.library == "minicompress",
        "val_ppl": got.val_ppl,
        "reference": row.reference,
        "reference_ppl": ref_ppl,
        "delta_pct": 100 * (got.val_ppl / ref_ppl - 1),
        "model_bytes": int(got.model_bytes),
        "fp32_bytes": int(got.fp32_bytes),
        "compression_ratio": got.fp32_bytes / got.model_bytes,
        "note": got.note,
        "seconds": seconds,
    }


def _progress_line(r: dict) -> str:
    return (
        f"{r['row']:13s} {r['contender']:50s} ppl {r['val_ppl']:.4f} "
        f"{r['delta_pct']:+.3f}% vs {r['reference']}, {r['model_bytes']:,} bytes "
        f"({r['compression_ratio']:.2f}x), {r['seconds']:.0f} s"
        + (f"; {r['note']}" if r["note"] else "")
    )


def json_rows(r: dict) -> list[dict]:
    """The rows of ``--json``: each with the run's references and budget."""
    common = {k: r[k] for k in ("fp32_val_ppl", "control_val_ppl", "finetune_steps",
                                "calibration_windows", "eval_windows")}  # fmt: skip
    return [{**row, **common} for row in r["rows"]]


def format_quality_peers(r: dict) -> str:
    """The run's result as the terminal shows it."""
    from minicompress.report.table import format_table

    control = r["control_val_ppl"]
    lines = [
        f"bench quality-peers: fp32 val ppl {r['fp32_val_ppl']:.4f}"
        + ("" if control is None else f"; control ({r['finetune_steps']} fine-tune steps, "
           f"unpruned) {control:.4f}")
        + f"; {r['calibration_windows']} calibration windows, {r['eval_windows']} "
        "validation windows",
        format_table(
            r["rows"],
            ["row", "contender", "version", "val_ppl", "reference", "delta_pct", "model_bytes",
             "compression_ratio"],
            floatfmt=".4g",
        ),
    ]  # fmt: skip
    lines += [f"note {x['row']} {x['key']}: {x['note']}" for x in r["rows"] if x["note"]]
    lines += [f"skipped {s['row']} {s['key']}: {s['reason']}" for s in r["skipped"]]
    lines.append("(delta_pct: val ppl change in % against the reference: the fp32 model, or "
                 "the unpruned model after the same fine-tune)")  # fmt: skip
    return "\n".join(lines)


def plot_quality_peers(r: dict, path: str | Path) -> Path:
    """Δ perplexity (%) against the model's bytes: quantization rows (against fp32) on the
    left, pruning rows (against the fine-tuned control) on the right; ours as filled
    circles, the peers as open squares, each point named by its row."""
    from minicompress.report.plots import _plt, save_figure

    plt = _plt()
    from matplotlib import ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, ref, title in zip(axes, ("fp32", "control"),
                              ("quantization (vs fp32)", "pruning + fine-tune (vs control)"),
                              strict=True):  # fmt: skip
        rows = [row for row in r["rows"] if row["reference"] == ref]
        for ours, style in ((True, dict(marker="o", color="C0", label="minicompress")),
                            (False, dict(marker="s", facecolors="none", edgecolors="C3",
                                         label="peers"))):  # fmt: skip
            pts = [row for row in rows if row["ours"] == ours]
            if pts:
                ax.scatter([p["model_bytes"] / 1e6 for p in pts],
                           [p["delta_pct"] for p in pts], **style)  # fmt: skip
            for p in pts:
                ax.annotate(f"{p['row']} {p['key']}", (p["model_bytes"] / 1e6, p["delta_pct"]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.margins(0.1, 0.15)  # room for the points' names
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.set_xlabel("model bytes on disk (MB)")
        ax.set_ylabel("Δ validation perplexity (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if rows:
            ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)
