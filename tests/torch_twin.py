"""The PyTorch twin of the whole model, for the tests: the package's own
``minicompress.report.torch_twin`` (one copy, shared with the benchmarks), re-exported under
the names the tests and ``make_golden.py`` use. It is written in idiomatic torch from the
papers' descriptions and imports nothing of ``nn.model``, so it stays an independent oracle.
"""

from __future__ import annotations

from minicompress.report.torch_twin import (  # noqa: F401
    grads_to_ours,
    torch_forward,
    torch_params,
    torch_sentence_embedding,
    torch_twin,
    twin_forward,
)
