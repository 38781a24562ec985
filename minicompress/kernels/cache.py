"""No stale machine code: Numba's disk cache of a kernel is keyed on every source it depends on.

Numba saves each ``@njit(cache=True)`` function's machine code beside its source file and
reuses it while *that file* is unchanged. A kernel's machine code also holds every function
it calls from other modules, inlined or linked in: after an edit of ``int8_quant.py`` or
``x86/simd.py`` (as in an exercise), the kernels that call them would keep running the old
code, because their own files did not change.

``install()`` (called by ``minicompress/kernels/__init__.py`` before any kernel is defined)
puts a cache locator in front of Numba's own for the files of ``minicompress.kernels``
and ``minicompress.deploy`` (its inference ops call the kernels' SIMD helpers). It
finds the cache directory exactly as Numba would (``NUMBA_CACHE_DIR``, ``__pycache__`` beside
the source, or the user-wide one), and stamps the index with the SHA-256 of the module's
source *and of every package module it imports, directly or not* (``dependencies``). Any
edit in that closure makes the stamp differ, Numba treats the cache as stale and compiles
again: only the kernels that depend on the edited file are recompiled.

The imports are read from the source with ``ast`` (``import a.b``, ``from a.b import c``,
relative imports, at any depth of the file), so a dependency must be an explicit import of a
module of the package; a module found some other way (``importlib`` by name) would not be
followed. ``NUMBA_CACHE_LOCATOR_CLASSES`` (Numba >= 0.68), when set, replaces the locators
and this one with them.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
from pathlib import Path

from numba.core import caching

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../minicompress
KERNELS_DIR = PACKAGE_DIR / "kernels"
# the inference ops of deploy/ call the kernels' SIMD helpers (``x86/simd.py``)
DEPLOY_DIR = PACKAGE_DIR / "deploy"
PACKAGE = PACKAGE_DIR.name  # "minicompress"


# ----------------------------------------------------------------------------------------
# the import closure of a module, read from the sources
# ----------------------------------------------------------------------------------------


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` of the package (``a.b`` -> a/b.py or
    a/b/__init__.py), or None if it is not one of the package's modules."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    """``.../minicompress/kernels/x86/vnni.py`` -> ``minicompress.kernels.x86.vnni``."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=512)
def _direct_imports(path: Path, mtime_ns: int, size: int) -> tuple[Path, ...]:
    """Package modules that the source at ``path`` imports explicitly (mtime and size key
    the memo, so an edited file is read again)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [_module_file(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from ..y import z
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # ``from a import b``: b may be a module of its own
                found.append(_module_file(f"{module}.{alias.name}") or _module_file(module))
    return tuple(sorted({p.resolve() for p in found if p is not None} - {path}))


def dependencies(py_file: str | os.PathLike) -> tuple[Path, ...]:
    """Every package module that ``py_file`` imports, directly or through other package
    modules, and ``py_file`` itself: absolute paths, sorted."""
    start = Path(py_file).resolve()
    seen, todo = {start}, [start]
    while todo:
        path = todo.pop()
        st = path.stat()
        for dep in _direct_imports(path, st.st_mtime_ns, st.st_size):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return tuple(sorted(seen))


def sources_digest(py_file: str | os.PathLike) -> str:
    """SHA-256 over the relative path and the bytes of every file of ``dependencies``."""
    digest = hashlib.sha256()
    for path in dependencies(py_file):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------
# the locator
# ----------------------------------------------------------------------------------------

_CacheImpl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in 0.68


class DependencyStampLocator(caching._CacheLocator):
    """Numba's own locator for a kernel file, with ``sources_digest`` added to its stamp."""

    def __init__(self, inner: caching._CacheLocator, py_file: str):
        self._inner = inner
        self._py_file = py_file

    def ensure_cache_path(self):
        return self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_source_stamp(self):
        return self._inner.get_source_stamp(), sources_digest(self._py_file)

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            source = Path(py_file).resolve()
            inside = source.is_relative_to(KERNELS_DIR) or source.is_relative_to(DEPLOY_DIR)
        except (OSError, ValueError):
            inside = False
        if not inside:
            return None  # not a kernel of this package: Numba's own locators decide
        for locator_class in _CacheImpl._locator_classes:
            if locator_class is cls:
                continue
            inner = locator_class.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner, py_file)
        return None


def install() -> None:
    """Put ``DependencyStampLocator`` first in Numba's list of cache locators (once)."""
    classes = _CacheImpl._locator_classes
    if DependencyStampLocator not in classes:
        classes.insert(0, DependencyStampLocator)
