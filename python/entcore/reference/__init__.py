"""Float64 pure-NumPy oracles: the executable form of the spec (``conventions.md``).

``entcore.reference.<domain>.<name>`` has the names, argument names and defaults of
``entcore.<name>`` and ``entcore.torch.<name>``, computes in float64 and returns float64. It never
imports the compiled core; it is what the tests hold the other two faces to.
"""

from __future__ import annotations

from entcore.reference import token
from entcore.reference.token import (
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
    "token",
    "token_entropy",
    "token_logprob",
    "token_logprob_entropy",
    "token_logprob_entropy_linear",
    "topk_entropy",
    "topk_entropy_bounds",
]
