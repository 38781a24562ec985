"""``kernels/x86/amx.py`` where no AMX CPU is at hand: its kernels still compile, for a
Sapphire Rapids target, to the tile instructions. (They run, and are checked bit for bit
against the portable path, in ``test_kernels_int8.py`` on a CPU with AMX-INT8.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_amx_layer_kernels_compile_to_tile_instructions():
    script = textwrap.dedent(
        """
        from numba import njit, types
        from minicompress.kernels.x86 import amx
        a2f, a4i = types.Array(types.float32, 2, "C"), types.Array(types.int8, 4, "C")
        a1i, a1f = types.Array(types.int32, 1, "C"), types.Array(types.float32, 1, "C")
        a4u, a1u, i = types.Array(types.uint8, 4, "C"), types.Array(types.uint8, 1, "C"), types.intp
        layer = (a2f, a4i, a1i, a1f, a1f, types.boolean, a2f)
        amx.linear_kernel.compile(layer)  # compiled, never run: this CPU has no tiles
        amx.linear_kernel_serial.compile(layer)
        codes = (types.Array(types.uint8, 2, "C"), a1f, a1i)
        options = types.Tuple((types.float32, types.int32, *codes, types.int64, *codes))
        amx.linear_kernel_full.compile(layer + (types.boolean, options))
        blocks = njit(amx._linear_blocks.py_func)  # not cached, so its assembly can be read
        blocks.compile((a4u, i, i, a4i, i, i, i, a1f, a1i, a1i, a1f, a1f, types.boolean, a2f, a1u))
        asm = blocks.inspect_asm(blocks.signatures[0])
        print(all(i in asm for i in ("ldtilecfg", "tileloadd", "tdpbusd", "tilerelease")))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_DISABLE_JIT",)}
    env.update(  # (the cache keeps this machine code apart: it is keyed on the target CPU)
        NUMBA_CPU_NAME="sapphirerapids",
        NUMBA_CPU_FEATURES="+avx2,+avx512f,+avx512bw,+avx512vl,+avx512vnni,+amx-tile,+amx-int8",
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "True"
