"""The command line and the examples run as a user runs them (subprocesses, small sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import require_torch

require_torch()

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_demo_compares_against_reference_numpy_and_torch():
    out = run("-m", "entcore.cli", "demo", "--rows", "64", "--vocab", "4096")
    assert out.returncode == 0, out.stderr
    assert "within 1e-5 of the float64 reference: yes" in out.stdout
    assert "torch verl form" in out.stdout and "rows NaN" in out.stdout


def test_demo_rejects_bad_sizes_with_a_clear_error():
    out = run("-m", "entcore.cli", "demo", "--rows", "0")
    assert out.returncode == 2
    assert "rows >= 1" in out.stderr


def test_info_names_the_kernels():
    out = run("-m", "entcore.cli", "info")
    assert out.returncode == 0, out.stderr
    assert "kernels:" in out.stdout


def test_verl_migration_example_is_nan_free_where_verl_is_not():
    out = run("examples/verl_migration.py")
    assert out.returncode == 0, out.stderr
    verl, entcore_line = out.stdout.strip().splitlines()
    assert "nan" in verl
    assert "NaN gradients: 0 of" in entcore_line
