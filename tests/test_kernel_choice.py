"""``minicompress/kernel_choice.py``: the one reader of ``MINICOMPRESS_KERNEL``."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from minicompress import kernel_choice
from minicompress.kernel_choice import CHOICES
from minicompress.kernel_choice import kernel_choice as choice
from minicompress.kernels import csr, int8
from minicompress.nn import backend

PACKAGE = Path(kernel_choice.__file__).resolve().parent


@pytest.mark.parametrize(
    "raw, expected",
    [("auto", "auto"), (" Reference ", "reference"), ("PORTABLE", "portable"), ("", "auto")],
)
def test_environment_values_are_normalized(monkeypatch, raw, expected):
    monkeypatch.setenv("MINICOMPRESS_KERNEL", raw)
    assert choice() == expected


def test_unset_means_auto_and_changes_are_seen_at_once(monkeypatch):
    monkeypatch.delenv("MINICOMPRESS_KERNEL", raising=False)
    assert choice() == "auto"
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "reference")
    assert choice() == "reference"  # no stale value from the call before
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "portable")
    assert choice() == "portable"


@pytest.mark.parametrize("read_with_getenv", [True, False])
def test_the_value_read_is_the_one_os_environ_holds(monkeypatch, read_with_getenv):
    """On POSIX the C library's getenv is read (cheaper than os.environ.get of a missing
    key); os.environ writes every change through, so both agree, and so does the fallback."""
    if not read_with_getenv:
        monkeypatch.setattr(kernel_choice, "_getenv", None)
    for value in ("vnni", " Reference ", "AMX"):
        monkeypatch.setenv("MINICOMPRESS_KERNEL", value)
        raw = kernel_choice.environment_value()
        assert (os.fsdecode(raw) if isinstance(raw, bytes) else raw) == value
        assert choice() == value.strip().lower()
    monkeypatch.delenv("MINICOMPRESS_KERNEL")
    assert kernel_choice.environment_value() is None and choice() == "auto"


def test_explicit_path_beats_the_environment(monkeypatch):
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "reference")
    assert choice("Portable") == "portable"


def test_bad_values_name_their_source(monkeypatch):
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "cuda")
    with pytest.raises(ValueError, match=r"MINICOMPRESS_KERNEL must be one of auto, .*'cuda'"):
        choice()
    with pytest.raises(ValueError, match=r"path must be one of .*'fast'"):
        choice("fast")
    with pytest.raises(TypeError, match="path must be a str or None; got int"):
        choice(3)
    with pytest.raises(TypeError, match="path must be a str or None; got list"):
        choice(["vnni"])


def test_every_reader_refuses_what_kernel_choice_refuses(monkeypatch):
    """The model's ops, the int8 and the CSR kernels read the same variable the same way."""
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "gpu")
    for read in (backend.default_op_impl, int8.int8_kernel_path, csr.csr_kernel_path):
        with pytest.raises(ValueError, match="MINICOMPRESS_KERNEL must be one of"):
            read()
    monkeypatch.setenv("MINICOMPRESS_KERNEL", "reference")
    assert backend.default_op_impl() is backend.NUMPY_OPS
    assert int8.int8_kernel_path() == csr.csr_kernel_path() == "reference"
    assert set(int8.KERNEL_PATHS) == set(CHOICES) - {"auto"}


def _reads_the_variable(path: Path) -> bool:
    """Whether a source file names MINICOMPRESS_KERNEL in code (not in a docstring or a
    comment) or reaches into os.environ's private fields."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in docstrings:
            if isinstance(node.value, str) and "MINICOMPRESS_KERNEL" in node.value:
                return True
        if isinstance(node, ast.Attribute) and node.attr in ("_data", "encodekey"):
            return True
    return False


def test_kernel_choice_is_the_only_reader():
    readers = [p for p in PACKAGE.rglob("*.py") if _reads_the_variable(p)]
    assert readers == [PACKAGE / "kernel_choice.py"], readers


def test_kernel_choice_imports_nothing_from_the_package():
    tree = ast.parse((PACKAGE / "kernel_choice.py").read_text(encoding="utf-8"))
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ] + [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [m for m in imported if m.startswith("minicompress")], imported
