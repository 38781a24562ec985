"""Every tutorial runs to the end in fast mode, and opens as a jupytext notebook.

The tutorials are found at collection time (``tutorials/[0-9][0-9]_*.py``), so a new one is
tested as soon as it exists. Each runs as a subprocess from an empty temporary directory
(so none may depend on the working directory) with ``MINICOMPRESS_FAST=1``; a tutorial
``assert``s its own claims, so a library change that breaks a claim fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 240  # fast mode takes well under 30 s; this only stops a hung run
TAIL_CHARS = 4000  # how much of the output to show on failure


def _tail(text: str) -> str:
    return text if len(text) <= TAIL_CHARS else "...\n" + text[-TAIL_CHARS:]


def test_tutorials_found():
    assert TUTORIALS, f"no tutorials found in {TUTORIALS_DIR}"


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path: Path, tmp_path: Path):
    env = {**os.environ, "MINICOMPRESS_FAST": "1", "MPLBACKEND": "Agg"}
    # the package is importable from the repo root even when it is not pip-installed
    root = str(TUTORIALS_DIR.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run(
            [sys.executable, str(path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{path.name} did not finish in {TIMEOUT_S} s\n--- stdout ---\n{_tail(out)}")
    assert proc.returncode == 0, (
        f"{path.name} exited with status {proc.returncode}\n"
        f"--- stdout (tail) ---\n{_tail(proc.stdout)}\n"
        f"--- stderr (tail) ---\n{_tail(proc.stderr)}"
    )
    assert not any(tmp_path.iterdir()), (
        f"{path.name} wrote into the working directory: {sorted(os.listdir(tmp_path))}"
    )


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_jupytext_notebook(path: Path):
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(path)
    kinds = [cell.cell_type for cell in nb.cells]
    assert len(kinds) >= 3, f"{path.name}: only {len(kinds)} cells"
    assert "markdown" in kinds and "code" in kinds, f"{path.name}: cell types {set(kinds)}"
    assert kinds[0] == "markdown", f"{path.name}: should open with a markdown title cell"
