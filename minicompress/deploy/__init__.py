"""Deployment: the compressed checkpoint format (``format.py``), what the runtime runs for
a checkpoint (``compressed.py``), the inference runtime (``ops.py``, ``runtime.py``) and the
combined pipeline (``recipe.py``, ``pipeline.py``).

``load_compressed(path)`` reads any checkpoint, dense or compressed, as float32 parameters
(the signature of ``nn.checkpoint.load_checkpoint``); ``load_runtime(path)`` runs it.
"""

import minicompress.kernels  # noqa: F401  first: its cache locator covers deploy's kernels
from minicompress.deploy.compressed import load_runtime
from minicompress.deploy.format import (
    dense_params,
    load_compressed,
    load_int8,
    load_quantized,
    read_compressed,
    save_compressed,
)

__all__ = [
    "dense_params",
    "load_compressed",
    "load_int8",
    "load_quantized",
    "load_runtime",
    "read_compressed",
    "save_compressed",
]
