"""Which kernels run: the one place that reads ``MINICOMPRESS_KERNEL``.

The model's training ops (``nn/backend.py``), the int8 kernels (``kernels/int8.py``) and the
CSR kernels (``kernels/csr.py``) all ask ``kernel_choice()`` and then decide, each for
itself, what the choice means for them (``auto`` becomes the fastest path the CPU runs;
the CSR kernels have no per-instruction-set variants, and so on).

Values, case and surrounding spaces ignored, empty meaning ``auto``:

- ``auto`` (default): the fastest path this CPU and Numba's target run;
- ``reference``: the readable NumPy code everywhere (``kernels/reference.py``, ``nn/ops.py``);
- ``portable``: the Numba kernels that run on any CPU (and as plain Python with
  ``NUMBA_DISABLE_JIT=1``);
- ``avx2``, ``vnni``, ``amx``: one x86 int8 path, refused by the int8 kernels on a CPU
  without its instructions.

The variable is read on every call, so a change made while the program runs (a notebook
cell, ``monkeypatch.setenv`` in a test) takes effect at once. The M = 1 CSR product reads it
on every call and takes 10-20 us, so the read must be cheap: ``os.environ.get`` of a missing
variable raises and catches KeyError twice inside (measured here: 1.1-2.5 us, against
0.3-0.7 us when set). On POSIX the value is read with the C library's ``getenv`` instead
(0.3-0.5 us either way): ``os.environ`` writes every change through to the C environment
(``putenv`` / ``unsetenv``), so both always agree. The parsed value is then a dict lookup.
Elsewhere ``os.environ.get`` is used. This module imports nothing from the package, so any
layer may use it.
"""

from __future__ import annotations

import ctypes
import os

ENV_VAR = "MINICOMPRESS_KERNEL"
CHOICES = ("auto", "reference", "portable", "avx2", "vnni", "amx")

# raw value (None when unset) -> checked choice; grows by one entry per distinct valid value
_parsed: dict[str | bytes | None, str] = {None: "auto"}


def _c_getenv():
    """The C library's ``getenv(name) -> bytes | None``, or None where it cannot be loaded.
    Called through ``ctypes.PyDLL``, it holds the GIL: ``os.environ``'s writes, which call
    ``putenv`` with the GIL held too, cannot run at the same time."""
    if os.name != "posix":
        return None
    try:
        getenv = ctypes.PyDLL(None).getenv
    except (OSError, AttributeError, TypeError):
        return None
    getenv.restype = ctypes.c_char_p
    getenv.argtypes = (ctypes.c_char_p,)
    return getenv


_getenv = _c_getenv()
_ENV_VAR_BYTES = os.fsencode(ENV_VAR)


def environment_value() -> str | bytes | None:
    """The raw value of ``MINICOMPRESS_KERNEL`` (bytes from ``getenv`` on POSIX, str from
    ``os.environ`` elsewhere), or None when it is unset."""
    if _getenv is not None:
        return _getenv(_ENV_VAR_BYTES)
    return os.environ.get(ENV_VAR)


def kernel_choice(path: str | None = None) -> str:
    """The kernel choice: ``path`` if given, else ``MINICOMPRESS_KERNEL`` (default ``auto``).

    Returns one of ``CHOICES``, lower-cased and stripped. Raises ValueError naming where the
    value came from (``path`` or ``MINICOMPRESS_KERNEL``), the value and the allowed ones.
    """
    if path is None:
        raw = environment_value()
        choice = _parsed.get(raw)
        if choice is None:
            choice = _parse(raw, ENV_VAR)
            _parsed[raw] = choice
        return choice
    choice = _parsed.get(path) if isinstance(path, str) else None
    if choice is None:
        choice = _parse(path, "path")
        _parsed[path] = choice
    return choice


def choice_source(path: str | None) -> str:
    """Where a choice came from, for an error message: ``"path"`` or the variable's name."""
    return "path" if path is not None else ENV_VAR


def _parse(raw: object, source: str) -> str:
    """Check one raw value; ``source`` names it in the error message."""
    if isinstance(raw, bytes) and source == ENV_VAR:
        raw = os.fsdecode(raw)  # as os.environ decodes it
    if not isinstance(raw, str):
        raise TypeError(f"{source} must be a str or None; got {type(raw).__name__}")
    choice = raw.strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{source} must be one of {', '.join(CHOICES)}; got {raw!r}")
    return choice
