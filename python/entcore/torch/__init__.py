"""entcore on torch tensors: any device, differentiable where the math is (``conventions.md``).

``entcore.torch.<name>`` has the names, argument names and defaults of ``entcore.<name>`` (NumPy,
Rust core) and ``entcore.reference.<name>`` (float64 oracle). CPU tensors go through the Rust
core (bfloat16 handed over as its 16-bit pattern, zero copy); tensors on any other device stay
there and go through fused Triton kernels (CUDA) or row chunks in torch (``token.md`` §8).
Results are float32 tensors on the input's device. The torch-only memory knobs (``chunk_rows``,
``row_block``, ``vocab_block``, ``vocab_process_group``) change the rounding at most
(``token.md`` §8).

The rollout statistics (``rollout.md``, :mod:`entcore.torch.rollout`, and ``nucleus_entropy`` in
:mod:`entcore.torch.nucleus`) compute in float64 on the input's device and return float32 (float64
for float64 input) per-token results and losses, float64 summaries; see their module docstring.

:mod:`entcore.torch.policy_loss` (torch only, no NumPy or reference face) holds verl-style policy
losses ``(old_log_prob, log_prob, advantages, response_mask, ...) -> (loss, metrics)`` built from
those functions.

Requires torch: ``pip install entcore[torch]``.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "entcore.torch needs PyTorch, which is not installed: pip install entcore[torch]"
    ) from err

from entcore.torch import geometry, kv, matrix, measures, nucleus, policy_loss, rollout, token
from entcore.torch.geometry import *  # noqa: F403
from entcore.torch.kv import *  # noqa: F403
from entcore.torch.matrix import *  # noqa: F403
from entcore.torch.measures import *  # noqa: F403
from entcore.torch.nucleus import *  # noqa: F403
from entcore.torch.policy_loss import *  # noqa: F403
from entcore.torch.rollout import *  # noqa: F403
from entcore.torch.token import *  # noqa: F403

# The same names as entcore and entcore.reference (tests/test_faces.py holds them equal), plus
# the torch-only policy-loss entry points of entcore.torch.policy_loss.
__all__ = [
    *token.__all__,
    *rollout.__all__,
    *nucleus.__all__,
    *measures.__all__,
    *geometry.__all__,
    *kv.__all__,
    *matrix.__all__,
    *policy_loss.__all__,
]
