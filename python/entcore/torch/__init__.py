"""entcore on torch tensors: any device, differentiable where the math is (``conventions.md``).

``entcore.torch.<name>`` has the names, argument names and defaults of ``entcore.<name>`` (NumPy,
Rust core) and ``entcore.reference.<name>`` (float64 oracle). CPU tensors go through the Rust
core (bfloat16 handed over as its 16-bit pattern, zero copy); tensors on any other device stay
there and are processed in row chunks by torch (``token.md`` §8). Results are float32 tensors on
the input's device. The torch-only memory knobs (``chunk_rows``, ``row_block``, ``vocab_block``,
``vocab_process_group``) change the rounding at most (``token.md`` §8).

Requires torch: ``pip install entcore[torch]``.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "entcore.torch needs PyTorch, which is not installed: pip install entcore[torch]"
    ) from err

from entcore.torch.token import (
    TopkEntropy,
    collision_probability,
    renyi_entropy,
    token_entropy,
    token_logprob,
    token_logprob_entropy,
    token_logprob_entropy_linear,
    topk_entropy,
    topk_entropy_bounds,
)

__all__ = [
    "TopkEntropy",
    "collision_probability",
    "renyi_entropy",
    "token_entropy",
    "token_logprob",
    "token_logprob_entropy",
    "token_logprob_entropy_linear",
    "topk_entropy",
    "topk_entropy_bounds",
]
