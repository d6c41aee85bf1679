"""The Triton kernels (``token.md`` §8), checked on CPU through Triton's interpreter.

Triton chooses between compiling and interpreting when it is first imported, so the kernel tests
live in ``tests/triton_cases.py`` and run here in a child pytest with ``TRITON_INTERPRET=1`` set
before anything imports Triton; the child's report is shown when it fails. Triton ships with
torch on Linux, so this runs (never skips) in CI. The kernel choice of ``entcore.torch``
(``ENTCORE_TORCH_KERNEL``) is checked in this process.
"""

from helpers import require_torch

torch = require_torch()

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from entcore.torch import token as tt  # noqa: E402

TESTS = Path(__file__).resolve().parent


def test_kernels_under_the_interpreter():
    import triton  # noqa: F401  (a missing Triton is an error here, not a skip)

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("ENTCORE_TORCH_KERNEL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "triton_cases.py"],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    report = proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, report


def test_kernel_choice(monkeypatch):
    """``auto``: Triton for CUDA tensors of fp32/fp16/bf16 only; ``chunked`` never; bad values."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv("ENTCORE_TORCH_KERNEL", raising=False)
    assert tt._uses_triton(cuda, torch.bfloat16, torch.float32)
    assert not tt._uses_triton(cuda, torch.float64)
    assert not tt._uses_triton(cpu, torch.float32)
    assert tt._logits_kernel(torch.zeros(2, 3)) == "rust"
    monkeypatch.setenv("ENTCORE_TORCH_KERNEL", "chunked")
    assert not tt._uses_triton(cuda, torch.bfloat16)
    monkeypatch.setenv("ENTCORE_TORCH_KERNEL", "triton")
    assert tt._uses_triton(cpu, torch.float16)
    assert not tt._uses_triton(cpu, torch.float64)
    monkeypatch.setenv("ENTCORE_TORCH_KERNEL", "cuda")
    with pytest.raises(ValueError, match="ENTCORE_TORCH_KERNEL"):
        tt.token_entropy(torch.zeros(2, 3))
