"""Quantization-aware training (QAT): fine-tune through fake quantization.

The course (3.1.2.2) notes that quantization loses accuracy and that fine-tuning or
retraining can win it back. QAT is the one training loop, ``nn.train.train``, with
``linear=FakeQuantLinear(spec)``: every forward pass runs the weights (and optionally the
activations) on their quantization grid, the straight-through backward updates the float
weights behind them, and validation runs through the same fake quantization. Afterwards
``ptq.quantize_weights(params, cfg, spec)`` gives exactly the weights the last forward
pass used (each weight's grid follows its own min-max range on every call).

Fine-tune at about lr = 1e-3 (the training rate 6e-3 makes even the float teacher worse),
and compare with the same fine-tune of the float model (``finetune``): the fine-tune's own
gain must not be credited to quantization.
"""

from __future__ import annotations

from collections.abc import Iterable

from minicompress.nn.linear import DENSE
from minicompress.nn.model import TransformerConfig
from minicompress.nn.train import History, TrainConfig, train
from minicompress.quant.linear import FakeQuantLinear
from minicompress.quant.ptq import check_layers
from minicompress.quant.tensor import QuantSpec

# the fine-tune of QAT and of its float control: a tenth of the teacher's schedule at a
# sixth of its learning rate
QAT_TRAIN = TrainConfig(steps=300, lr=1e-3, min_lr=1e-4, warmup=20, eval_every=0, seed=1)


def qat(
    params: dict,
    cfg: TransformerConfig,
    data,
    spec: QuantSpec,
    tc: TrainConfig = QAT_TRAIN,
    activations: str = "none",
    act_qparams: dict | None = None,
    layers: Iterable[str] | None = None,
    progress: bool = True,
) -> History:
    """Fine-tune ``params`` in place through ``FakeQuantLinear(spec, activations)`` on the
    chosen ``layers`` (default all). ``data``: as ``train`` takes it. -> the History
    (validation losses are those of the fake-quantized model)."""
    linear = FakeQuantLinear(
        spec, activations, act_qparams=act_qparams, layers=check_layers(cfg, layers)
    )
    return train(params, cfg, data, tc, linear=linear, progress=progress, desc="QAT")


def finetune(
    params: dict, cfg: TransformerConfig, data, tc: TrainConfig = QAT_TRAIN, progress=True
) -> History:
    """The control of ``qat``: the same fine-tune (same schedule, same batches: same seed)
    of the float model."""
    return train(params, cfg, data, tc, linear=DENSE, progress=progress, desc="fine-tune fp32")
