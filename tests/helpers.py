"""Helpers importable from every test module (``tests`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import importlib
import importlib.util
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


def require_modules(*modules: str, install: str) -> None:
    """Skip a test whose optional packages (model weights, the hf extra) are missing; in CI, where
    ``make test`` installs them all, a missing one is an error instead."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"needs {', '.join(missing)}: {install}"
    if TORCH_REQUIRED:
        raise ModuleNotFoundError(message)
    pytest.skip(message)
