"""``kernels/cache.py``: editing any kernel source never leaves stale machine code in use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from minicompress.kernels import cache

KERNELS = cache.KERNELS_DIR
REPO = cache.PACKAGE_DIR.parent


def names(paths) -> set[str]:
    return {str(p.relative_to(KERNELS)) for p in paths}


def test_dependencies_follow_imports_across_modules():
    deps = names(cache.dependencies(KERNELS / "x86" / "vnni.py"))
    # its own file, what it imports, and what those import (parallel -> int8_quant, threads)
    assert {
        "x86/vnni.py",
        "parallel.py",
        "int8_quant.py",
        "threads.py",
        "x86/layout.py",
        "x86/aligned.py",
        "x86/simd.py",
    } <= deps
    assert "csr.py" not in deps and "x86/csr_spmm.py" not in deps  # only what it imports


def test_dependencies_of_the_csr_kernels_leave_the_int8_ones_out():
    deps = names(cache.dependencies(KERNELS / "x86" / "csr_spmm.py"))
    assert {"x86/csr_spmm.py", "x86/csr_spmv.py", "x86/simd.py", "row_parts.py"} <= deps
    assert "int8_quant.py" not in deps  # editing it does not recompile the CSR kernels


def test_relative_imports_are_followed(tmp_path, monkeypatch):
    package = tmp_path / "minicompress"
    (package / "kernels" / "x86").mkdir(parents=True)
    for init in (package, package / "kernels", package / "kernels" / "x86"):
        (init / "__init__.py").write_text("")
    (package / "kernels" / "a.py").write_text("from .x86 import b\n")
    (package / "kernels" / "x86" / "b.py").write_text("from ..c import f\n")
    (package / "kernels" / "c.py").write_text("def f():\n    pass\n")
    monkeypatch.setattr(cache, "PACKAGE_DIR", package)
    monkeypatch.setattr(cache, "KERNELS_DIR", package / "kernels")
    found = {p.name for p in cache.dependencies(package / "kernels" / "a.py")}
    assert found == {"a.py", "b.py", "c.py"}


def test_the_stamp_changes_when_a_dependency_changes(tmp_path):
    """On a copy of the package: editing int8_quant.py changes the stamp of vnni.py and of
    int8_portable.py, not that of csr_portable.py."""
    copy = tmp_path / "minicompress"
    shutil.copytree(cache.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    script = textwrap.dedent(
        """
        import json, sys
        from minicompress.kernels import cache
        files = ["x86/vnni.py", "int8_portable.py", "csr_portable.py"]
        print(json.dumps([cache.sources_digest(cache.KERNELS_DIR / f) for f in files]))
        """
    )

    def stamps() -> list[str]:
        done = _python(script, cwd=tmp_path)
        return done.stdout.strip()

    before = stamps()
    quant = copy / "kernels" / "int8_quant.py"
    quant.write_text(quant.read_text() + "\n# an edit\n")
    after = stamps()
    import json

    before, after = json.loads(before), json.loads(after)
    assert after[0] != before[0] and after[1] != before[1]
    assert after[2] == before[2]


# ----------------------------------------------------------------------------------------
# the proof: results change as soon as a dependency of a cached kernel is edited
# ----------------------------------------------------------------------------------------

_RUN = textwrap.dedent(
    """
    import numpy as np
    import minicompress.kernels as k
    assert k.__file__.startswith(sys.argv[1]), k.__file__  # the copy, not the repository's
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 64)).astype(np.float32)
    w = rng.standard_normal((64, 40)).astype(np.float32)
    y_int8 = k.int8_linear(x, k.pack_int8_linear(w, None, path="portable"))
    w[np.abs(w) < 1.0] = 0.0
    w_t = k.csr.dense_to_csr(np.ascontiguousarray(w.T), path="portable")
    y_csr = k.sparse_linear(x, w_t, path="simd")  # M = 20: the packed SpMM (x86/simd.py)
    np.save(sys.argv[2], np.concatenate([y_int8.ravel(), y_csr.ravel()]))
    """
)


def _python(code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MINICOMPRESS_KERNEL")}
    env["PYTHONPATH"] = str(cwd)
    env.pop("NUMBA_DISABLE_JIT", None)
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


@pytest.mark.slow
def test_editing_a_dependency_recompiles_its_callers(tmp_path):
    """A copy of the package with its compiled caches: run an int8 layer (portable) and a CSR
    product (simd); edit int8_quant.py (each row's activation scale doubled) and x86/simd.py
    (each CSR sum stored doubled), files that the cached kernels only call; run again. Both
    results must double exactly: the callers' cached machine code was not reused. (Numba's
    own cache, keyed on each file's own source, kept the old results.)"""
    copy = tmp_path / "minicompress"
    shutil.copytree(cache.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("*.pyc"))
    first, second = tmp_path / "first.npy", tmp_path / "second.npy"
    _python(_RUN, tmp_path, str(copy), str(first))
    _edit(copy / "kernels" / "int8_quant.py", "    s_x[m] = scale\n", "    s_x[m] = scale * 2\n")
    _edit(
        copy / "kernels" / "x86" / "simd.py",
        "        value = builder.load(builder.bitcast(args[0], vt.as_pointer()))\n",
        "        value = builder.load(builder.bitcast(args[0], vt.as_pointer()))\n"
        "        value = builder.fadd(value, value)\n",
    )
    _python(_RUN, tmp_path, str(copy), str(second))
    before, after = np.load(first), np.load(second)
    n_int8 = 20 * 40
    assert np.any(before[:n_int8] != 0) and np.any(before[n_int8:] != 0)
    np.testing.assert_array_equal(after[:n_int8], 2 * before[:n_int8])  # int8_quant.py edit
    np.testing.assert_array_equal(after[n_int8:], 2 * before[n_int8:])  # simd.py edit
