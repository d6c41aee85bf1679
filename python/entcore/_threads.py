"""Thread control for the Rust core's own rayon pool.

The pool size comes from ``ENTCORE_NUM_THREADS`` when the first kernel runs (default: the number
of available cores) and can be changed at any time with :func:`set_num_threads`. After ``fork``
the child builds a fresh pool on its first call, so DataLoader workers are safe. Results never
depend on the thread count (``conventions.md``: fixed chunking, partial sums combined in order).
"""

from __future__ import annotations

from entcore import _core


def set_num_threads(n: int) -> None:
    """Use ``n >= 1`` threads for every later entcore kernel."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n: expected a thread count >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads entcore kernels use."""
    return _core.get_num_threads()
