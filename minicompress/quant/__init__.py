"""Quantization: the course's formulas, calibration observers, fake quantization with the
straight-through estimator, PTQ and QAT of the whole model, and the int8 runtime.

Import the submodules (``minicompress.quant.formulas`` ...). This file imports nothing:
the int8 kernels import ``formulas`` and must not pull in modules that import them back.
"""
