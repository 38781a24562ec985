"""Shared fixtures: a seeded generator, and PyTorch as an optional oracle.

Tests that take the ``torch`` fixture are marked ``torch`` automatically and skip cleanly
when PyTorch is not importable (``pytest -m "not torch"`` deselects them).
"""

from __future__ import annotations

import numpy as np
import pytest

SEED = 20240611  # any fixed number: the same seed gives the same test inputs, run after run


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator with a fixed seed for every test (no global random state)."""
    return np.random.default_rng(SEED)


@pytest.fixture
def torch():
    """The ``torch`` module in float64-friendly form, or a clean skip without it."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)  # no test draws from it, but keep any torch init deterministic
    return torch


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "torch" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.torch)
