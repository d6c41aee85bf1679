"""Helpers importable from every test module (``tests`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import importlib
import os

import pytest

TORCH_REQUIRED = bool(os.environ.get("CI") or os.environ.get("ENTCORE_REQUIRE_TORCH"))


def require_torch():
    """Import torch for a test module: an error in CI when it is missing, a skip elsewhere."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        if TORCH_REQUIRED:
            raise
        pytest.skip(
            "torch is not installed (set ENTCORE_REQUIRE_TORCH=1 to make this an error)",
            allow_module_level=True,
        )
