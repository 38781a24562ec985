"""What this machine can run: the CPU's features as Numba's compiler targets them, and the
int8 path that ``auto`` picks from them.

An x86 int8 path needs two things: the CPU must execute its instructions, and LLVM must be
allowed to emit them for the target Numba compiles for. Numba passes LLVM the host's own
feature list, whatever ``NUMBA_CPU_NAME`` says (that name only tunes scheduling), unless
``NUMBA_CPU_FEATURES`` is set; then only the features it lists with ``+`` count here (the
named CPU's other defaults are not known to this module, so they are not assumed).
``NUMBA_CPU_NAME=generic`` sets no features: only the portable path runs. To compile for a
Haswell-class AVX2 CPU on a newer one: ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+avx2``.

With ``NUMBA_DISABLE_JIT=1`` nothing is compiled: the kernels run as plain Python, which
only the portable path can do (the x86 paths are LLVM IR written by hand), so ``auto`` picks
it and the x86 paths are refused.

``choose_int8_path`` and ``why_not`` are pure functions of a feature set, so that the choice
on every kind of CPU is tested here on one machine.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys

import llvmlite.binding as llvm
import numba

AVX2 = frozenset({"avx2"})
AVX_VNNI = frozenset({"avxvnni"})  # vpdpbusd on ymm registers (Intel Alder Lake and later)
AVX512_VNNI = frozenset({"avx512f", "avx512bw", "avx512vnni"})
AMX_INT8 = frozenset({"amx-tile", "amx-int8"})
INT8_PATHS = ("reference", "portable", "avx2", "vnni", "amx")  # every int8 path, slowest first
X86_PATHS = ("avx2", "vnni", "amx")

_SYS_ARCH_PRCTL = 158  # x86-64 Linux
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


@functools.cache
def host_features() -> frozenset[str]:
    """The features of the CPU this process runs on, as LLVM names them."""
    return frozenset(k for k, v in llvm.get_host_cpu_features().items() if v)


@functools.cache
def target_features() -> frozenset[str]:
    """Features that Numba's compiled code may use here: those of the host, or with
    ``NUMBA_CPU_FEATURES`` set, those it enables that the host also has."""
    host = host_features()
    explicit = numba.config.CPU_FEATURES
    if explicit is None:
        return host
    enabled = {f.strip()[1:] for f in explicit.split(",") if f.strip().startswith("+")}
    return frozenset(enabled & host)


def jit_enabled() -> bool:
    """False under ``NUMBA_DISABLE_JIT=1``: Numba functions run as Python."""
    return not numba.config.DISABLE_JIT


def is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


@functools.cache
def amx_tiles_granted() -> bool:
    """Whether Linux lends this process the AMX tile registers (asked once: the request,
    ``arch_prctl(ARCH_REQ_XCOMP_PERM)``, is process-wide). False without AMX-INT8."""
    if not AMX_INT8 <= target_features() or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def why_not(path: str, features: frozenset[str], jit: bool = True, tiles: bool = False) -> str:
    """Why ``path`` cannot run with these target ``features`` ("" if it can). ``jit``: Numba
    compiles (no ``NUMBA_DISABLE_JIT``); ``tiles``: the OS lends the AMX tiles."""
    if path in ("reference", "portable"):
        return ""
    if not jit:
        return (
            "NUMBA_DISABLE_JIT=1 runs the kernels as plain Python, which only the portable "
            "path can do (its x86 code is LLVM IR)"
        )
    needs = {"avx2": AVX2, "vnni": AVX512_VNNI, "amx": AVX512_VNNI | AMX_INT8}[path]
    if not needs <= features:
        missing = ", ".join(sorted(needs - features))
        return f"Numba's target here lacks {missing} (see kernels/cpu.py)"
    if path == "amx" and not tiles:
        return "the OS did not lend this process the AMX tile registers"
    return ""


def choose_int8_path(features: frozenset[str], jit: bool = True, tiles: bool = False) -> str:
    """The int8 path ``auto`` runs: the fastest of amx, vnni, avx2 that ``why_not`` allows,
    else portable."""
    for path in ("amx", "vnni", "avx2"):
        if not why_not(path, features, jit, tiles):
            return path
    return "portable"


def uses_avx_vnni(features: frozenset[str]) -> bool:
    """Whether the avx2 path multiplies with AVX-VNNI's ``vpdpbusd`` on ymm registers (else
    with ``vpmaddubsw`` + ``vpmaddwd``, ``x86/avx2.py``)."""
    return AVX_VNNI <= features


def instructions(path: str, features: frozenset[str]) -> str:
    """What the int8 path multiplies with on a CPU with these target features."""
    if path == "avx2":
        return "vpdpbusd ymm" if uses_avx_vnni(features) else "vpmaddubsw+vpmaddwd"
    return {
        "reference": "NumPy int64 matmul",
        "portable": "LLVM's loop (vpmaddwd)",
        "vnni": "vpdpbusd zmm",
        "amx": "tdpbusd tiles",
    }[path]


def int8_paths_here() -> list[str]:
    """The int8 paths that run on this machine, slowest first."""
    here = (target_features(), jit_enabled(), amx_tiles_granted())
    return [p for p in INT8_PATHS if not why_not(p, *here)]


def auto_int8_path() -> str:
    """``choose_int8_path`` for this machine."""
    return choose_int8_path(target_features(), jit_enabled(), amx_tiles_granted())
