"""``minicompress.kernels`` as a package: its public names, its tiers, its map.

(That kernels import nothing above them, and nn nothing of them, is ``test_layering.py``.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import minicompress.kernels as kernels
from minicompress.kernels import cache

PUBLIC = [  # every name importable from minicompress.kernels before the tiers (keep them)
    "CSR",
    "MAX_K_INT32",
    "PackedInt8Linear",
    "int8_gemm",
    "int8_kernel_path",
    "int8_linear",
    "pack_int8_linear",
    "pack_quantized_int8_linear",
    "csr_kernel_path",
    "csr_matmul",
    "csr_matmul_reference",
    "csr_to_dense",
    "dense_to_csr",
    "dequantize_csr",
    "int8_gemm_reference",
    "quantize_csr",
    "quantize_rows_uint8",
    "quantize_weight_per_channel",
    "quantized_linear_reference",
    "sparse_linear",
    "sparse_linear_reference",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_are_still_importable(name):
    assert name in kernels.__all__
    assert getattr(kernels, name) is not None


def _package_files(folder: str):
    return sorted((cache.PACKAGE_DIR / folder).rglob("*.py"))


def test_x86_tier_is_imported_only_when_selected():
    """With the portable path chosen, the int8 layer and the CSR product run without a single
    module of kernels/x86 being imported."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import minicompress.kernels as k
        x = np.ones((5, 8), np.float32)
        k.int8_linear(x, k.pack_int8_linear(np.ones((8, 3), np.float32)))
        k.sparse_linear(x, k.dense_to_csr(np.eye(8, dtype=np.float32)))
        print(sorted(m for m in sys.modules if m.startswith("minicompress.kernels.x86")))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    env["MINICOMPRESS_KERNEL"] = "portable"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cache.PACKAGE_DIR.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_the_kernels_readme_names_every_module():
    """kernels/README.md is the map of the tiers: every module of the package is on it."""
    readme = (cache.KERNELS_DIR / "README.md").read_text(encoding="utf-8")
    missing = [
        str(p.relative_to(cache.KERNELS_DIR))
        for p in _package_files("kernels")
        if p.name != "__init__.py" and str(p.relative_to(cache.KERNELS_DIR)) not in readme
    ]
    assert not missing, f"kernels/README.md does not mention {missing}"
