"""entcore: exact, fast entropy statistics for RL on LLMs and KV-cache compression.

Three faces share names, arguments and defaults (``conventions.md``):
``entcore.reference`` (float64 NumPy oracle), ``entcore`` (NumPy arrays, Rust core) and
``entcore.torch`` (tensors on any device, differentiable).
"""

from __future__ import annotations

from entcore import _core, rollout
from entcore._threads import get_num_threads, set_num_threads
from entcore.rollout import *  # noqa: F403  (every rollout statistic as entcore.<name>)
from entcore.token import (
    TopkEntropy,
    collision_probability,
    nucleus_entropy,
    renyi_entropy,
    token_entropy,
    token_logprob,
    token_logprob_entropy,
    token_logprob_entropy_linear,
    topk_entropy,
    topk_entropy_bounds,
)

__version__: str = _core.__version__

__all__ = [
    *rollout.__all__,
    "TopkEntropy",
    "nucleus_entropy",
    "__version__",
    "collision_probability",
    "get_num_threads",
    "renyi_entropy",
    "set_num_threads",
    "token_entropy",
    "token_logprob",
    "token_logprob_entropy",
    "token_logprob_entropy_linear",
    "topk_entropy",
    "topk_entropy_bounds",
]
