"""Quantization: the course's formulas, calibration observers, fake quantization with the
straight-through estimator, PTQ and QAT of the whole model, and the int8 runtime.

Modules, in the order they build on each other:

- ``formulas``: each formula of the course once (linear asymmetric/symmetric, log,
  granularities, quantize / dequantize / fake-quantize, the STE mask). NumPy only; the
  int8 kernels' quantizers are these functions;
- ``tensor``: a tensor quantized at one granularity (``QuantSpec``, ``QuantizedTensor``),
  clipping search;
- ``observers``: activation ranges over calibration batches (min-max, EMA, percentile,
  MSE, KL); ``calibrate``: runs them on the model's linear inputs;
- ``linear``: ``FakeQuantLinear``, the fake-quantizing ``linear`` of the model contract;
- ``ptq``, ``qat``: the whole model, after training or through training;
- ``smooth``: per-input-channel scales folded into the layer before (SmoothQuant for
  static activations, AWQ for weights); ``gptq``: rounding with error compensation;
  ``bias_correction``: each layer's mean output shift subtracted from its bias;
- ``runtime``: ``Int8Linear``, the model's linear layers on the int8 kernels (dynamic or
  static activations);
- ``pipeline``: the ``quantize`` command's work (``QuantizeConfig``, ``quantize_model``).

This file imports nothing: the int8 kernels import ``formulas``, and must not pull in
modules that import them back.
"""
