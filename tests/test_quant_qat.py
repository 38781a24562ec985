"""minicompress/quant/qat.py: QAT is the one training loop with fake quantization; the
model it validates is the one PTQ of its final weights gives; it beats PTQ at 2 bits."""

from __future__ import annotations

import math

from quant_models import tiny_trained

from minicompress.nn.train import TrainConfig
from minicompress.quant import ptq
from minicompress.quant.qat import finetune, qat
from minicompress.quant.tensor import QuantSpec

SPEC = QuantSpec(2, "asymmetric", "group", group_size=16)
TC = TrainConfig(batch_size=8, steps=40, lr=3e-3, min_lr=1e-4, warmup=5, eval_every=0, seed=3)


def _ptq_ppl(params, cfg, data):
    q = ptq.quantize_weights(params, cfg, SPEC, embedding_spec=None)
    return ptq.perplexity(ptq.dequantized_params(params, q), cfg, data.val)


def test_qat_validates_the_model_that_ptq_of_its_weights_gives():
    params, cfg, data = tiny_trained()
    hist = qat(params, cfg, data, SPEC, TC, progress=False)
    assert len(hist.steps) == TC.steps and hist.loss[-1] < hist.loss[0]
    # the training loop's last validation ran through the fake quantization, whose grid
    # follows each weight's own range: exactly the quantized copy of the final weights
    assert math.exp(hist.val_loss[-1]) == _ptq_ppl(params, cfg, data)


def test_qat_beats_ptq_after_the_same_fine_tune():
    # 2 bits per group of 16 on a barely trained model: PTQ of the fine-tuned float model
    # loses about 2%; QAT, through the same fine-tune, keeps less than half of that loss
    params, cfg, data = tiny_trained()
    control = {k: v.copy() for k, v in params.items()}
    finetune(control, cfg, data, TC, progress=False)  # the float model, same schedule
    qat(params, cfg, data, SPEC, TC, progress=False)
    float_ppl = ptq.perplexity(control, cfg, data.val)
    ptq_loss = _ptq_ppl(control, cfg, data) - float_ppl
    qat_loss = _ptq_ppl(params, cfg, data) - float_ppl
    assert ptq_loss > 0.005 * float_ppl and qat_loss < 0.5 * ptq_loss, (ptq_loss, qat_loss)
