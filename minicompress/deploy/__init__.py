"""Deployment: the compressed checkpoint format (``format.py``), compressed checkpoints
(``compressed.py``), the inference runtime (``ops.py``, ``runtime.py``) and the combined
pipeline (``pipeline.py``)."""

from minicompress.deploy.compressed import load_compressed, load_runtime, save_compressed

__all__ = ["load_compressed", "load_runtime", "save_compressed"]
