"""Float64 pure-NumPy oracles: the executable form of the spec (``conventions.md``).

``entcore.reference.<domain>.<name>`` has the names, argument names and defaults of
``entcore.<name>`` and ``entcore.torch.<name>``, computes in float64 and returns float64. It never
imports the compiled core; it is what the tests hold the other two faces to.

Domains: ``token`` (``token.md``, plus ``nucleus_entropy`` of ``rollout.md`` §13), ``rollout``
(``rollout.md``), ``matrix`` (``matrix.md`` §1) and ``kv`` (``matrix.md`` §2).
"""

from __future__ import annotations

from entcore.reference import geometry, kv, matrix, measures, rollout, token
from entcore.reference.geometry import *  # noqa: F403
from entcore.reference.kv import *  # noqa: F403
from entcore.reference.matrix import *  # noqa: F403
from entcore.reference.measures import *  # noqa: F403
from entcore.reference.rollout import *  # noqa: F403
from entcore.reference.token import *  # noqa: F403

# The same names as entcore and entcore.torch (tests/test_faces.py holds them equal).
__all__ = [
    "geometry",
    "measures",
    "kv",
    "matrix",
    "rollout",
    "token",
    *token.__all__,
    *rollout.__all__,
    *measures.__all__,
    *geometry.__all__,
    *kv.__all__,
    *matrix.__all__,
]
