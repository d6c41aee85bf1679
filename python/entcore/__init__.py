"""entcore: exact, fast entropy statistics for RL on LLMs and KV-cache compression.

Three faces share names, arguments and defaults (``conventions.md``):
``entcore.reference`` (float64 NumPy oracle), ``entcore`` (NumPy arrays, Rust core) and
``entcore.torch`` (tensors on any device, differentiable).
"""

from __future__ import annotations

from entcore import _core, geometry, kv, matrix, measures, rollout, token
from entcore._threads import get_num_threads, set_num_threads
from entcore.geometry import *  # noqa: F403  (representation geometry as entcore.<name>)
from entcore.kv import *  # noqa: F403  (every KV-cache function as entcore.<name>)
from entcore.matrix import *  # noqa: F403  (every matrix statistic as entcore.<name>)
from entcore.measures import *  # noqa: F403  (every other measure as entcore.<name>)
from entcore.rollout import *  # noqa: F403  (every rollout statistic as entcore.<name>)
from entcore.token import *  # noqa: F403  (every token statistic as entcore.<name>)

__version__: str = _core.__version__

__all__ = [
    *token.__all__,
    *rollout.__all__,
    *measures.__all__,
    *geometry.__all__,
    *kv.__all__,
    *matrix.__all__,
    "__version__",
    "get_num_threads",
    "set_num_threads",
]
