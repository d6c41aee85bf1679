"""Shared test setup: hypothesis profiles (``CI`` selects the larger one)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# GPU tests exist only where a GPU does; on CPU machines they are not collected (not skipped).
collect_ignore = [] if _cuda_available() else ["test_torch_cuda.py"]
