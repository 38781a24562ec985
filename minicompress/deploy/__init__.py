"""Deployment: the compressed checkpoint format (``format.py``) and the runtimes built on it.

``load_compressed(path)`` reads any checkpoint, dense or compressed, as float32 parameters
(the signature of ``nn.checkpoint.load_checkpoint``).
"""

from minicompress.deploy.format import (
    load_compressed,
    load_int8,
    load_quantized,
    read_compressed,
    save_compressed,
)

__all__ = ["load_compressed", "load_int8", "load_quantized", "read_compressed", "save_compressed"]
