"""Token layouts, units and argument checks shared by the reference rollout statistics.

``rollout.md`` §0.1 (buffer fields) and §0.2 (units): token arrays come either padded, shape
``(B, L)`` with a 0/1 (or bool) ``mask``, or packed, shape ``(N,)`` with ``cu_seqlens`` (int,
length ``B + 1``, starting at 0, non-decreasing, ending at ``N``; the flash-attention varlen
layout) and an optional ``mask``. The reference reads both into one *grid*: a ``(B, W)`` array
whose row ``b`` holds the slots of sequence ``b`` left-aligned (``W = L`` when padded, the longest
row when packed). Column ``t`` of the grid is the position ``t`` of §0.1 (``t − cu[b]`` when
packed), row-major grid order is the flat order of §0.3 (padded row-major order = packed order),
and every statistic is computed on the grid, so both layouts give identical results by
construction. Values at invalid positions (mask 0, or no slot) are never read: the grid holds 0
there (``conventions.md``: "Padding never enters a statistic").

This module never imports the compiled core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

#: The float dtypes every face accepts (``conventions.md`` "The three faces").
FLOAT_DTYPES = (
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(np.float16),
    np.dtype(ml_dtypes.bfloat16),
)

SCOPES = ("micro_batch", "batch")


# ---------------------------------------------------------------------------------------------
# Arrays and scalars
# ---------------------------------------------------------------------------------------------


def as_array(name: str, x: Any) -> np.ndarray:
    """``x`` as a NumPy array (no copy when it already is one); torch tensors are refused."""
    if isinstance(x, np.ndarray):
        return x
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    if hasattr(x, "__dlpack__") and type(x).__module__.startswith("torch"):
        raise TypeError(f"{name}: got a torch tensor; use entcore.torch for tensors")
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}") from err


def float64_array(name: str, x: Any) -> np.ndarray:
    """A float array (float16/bfloat16/float32/float64) upcast exactly to float64 (a copy)."""
    array = as_array(name, x)
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected float32, float16, bfloat16 or float64, got dtype {array.dtype}"
        )
    return array.astype(np.float64)


def int64_array(name: str, x: Any) -> np.ndarray:
    """A signed or unsigned integer array as int64 (bool and floats are refused)."""
    array = as_array(name, x)
    if array.dtype.kind not in "iu" or array.dtype == np.uint64:
        raise TypeError(f"{name}: expected an integer (int64) array, got dtype {array.dtype}")
    return array.astype(np.int64)


def bool_array(name: str, x: Any) -> np.ndarray:
    """A bool array, or a 0/1 integer or float array (``rollout.md`` §0.1 ``mask``), as bool."""
    array = as_array(name, x)
    if array.dtype == np.bool_:
        return array.copy()
    if array.dtype.kind in "iu" or array.dtype in FLOAT_DTYPES:
        values = array.astype(np.float64)
        if not np.all((values == 0.0) | (values == 1.0)):
            raise ValueError(f"{name}: expected bool or 0/1 values")
        return values == 1.0
    raise TypeError(f"{name}: expected a bool or 0/1 array, got dtype {array.dtype}")


def float_vector(name: str, x: Any, n: int | None = None, *, nan_ok: bool = False) -> np.ndarray:
    """A 1-D float array (length ``n`` when given) as float64; NaN → ``ValueError``."""
    array = float64_array(name, x)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {array.shape}")
    if not nan_ok and np.any(np.isnan(array)):
        raise ValueError(f"{name}: contains NaN")
    return array


def int_vector(name: str, x: Any, n: int | None = None) -> np.ndarray:
    """A 1-D integer array (length ``n`` when given) as int64."""
    array = int64_array(name, x)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {array.shape}")
    return array


def bool_vector(name: str, x: Any, n: int | None = None) -> np.ndarray:
    """A 1-D bool (or 0/1) array of length ``n`` when given."""
    array = bool_array(name, x)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {array.shape}")
    return array


def real(
    name: str,
    x: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real scalar in ``[low, high]`` (ends open when asked) as a Python float."""
    if isinstance(x, (bool, np.bool_)) or np.ndim(x) != 0:
        raise TypeError(f"{name}: expected a real scalar, got {x!r}")
    try:
        value = float(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected a real scalar, got {type(x).__name__}") from err
    if math.isnan(value):
        raise ValueError(f"{name}: expected a number, got NaN")
    if low is not None and (value < low or (low_open and value == low)):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}: expected a value in {bracket}{low}, {high}], got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name}: expected a value in [{low}, {high}{bracket}, got {value}")
    return value


def integer(name: str, x: Any, *, low: int | None = None) -> int:
    """A Python int (``numpy`` integers accepted, bool refused) that is ``≥ low``."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    value = int(x)
    if low is not None and value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    return value


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Token layouts (rollout.md §0.1)
# ---------------------------------------------------------------------------------------------


def check_cu_seqlens(cu_seqlens: Any, n_tokens: int) -> np.ndarray:
    """``cu_seqlens``: integer, 1-D, length ``≥ 1``, ``cu[0] = 0``, non-decreasing, ending at N."""
    cu = int64_array("cu_seqlens", cu_seqlens)
    if cu.ndim != 1 or cu.shape[0] < 1:
        raise ValueError(f"cu_seqlens: expected a 1-D array of length B + 1 >= 1, got {cu.shape}")
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens: expected to start at 0, got {int(cu[0])}")
    if np.any(np.diff(cu) < 0):
        raise ValueError("cu_seqlens: expected non-decreasing (monotone) offsets")
    if cu[-1] != n_tokens:
        raise ValueError(
            f"cu_seqlens: expected to end at N = {n_tokens} (the token count), got {int(cu[-1])}"
        )
    return cu


@dataclass(frozen=True)
class Layout:
    """The token layout of one call, read into a ``(B, W)`` grid (module docstring).

    Attributes:
        packed: ``cu_seqlens`` was given.
        shape: the shape of every token array of the call: ``(B, L)`` or ``(N,)``.
        slot: ``(B, W)`` bool, the grid cell is a position of row ``b``.
        valid: ``(B, W)`` bool, ``slot ∧ mask``: the valid response tokens.
        index: ``(B, W)`` int64, the flat index of the cell in the input (0 where no slot).
    """

    packed: bool
    shape: tuple[int, ...]
    slot: np.ndarray
    valid: np.ndarray
    index: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.slot.shape[0])

    @property
    def width(self) -> int:
        return int(self.slot.shape[1])

    @property
    def positions(self) -> np.ndarray:
        """``(B, W)`` int64: the position ``t`` of each cell (its column)."""
        return np.broadcast_to(np.arange(self.width, dtype=np.int64), self.slot.shape)

    def _read(self, name: str, x: np.ndarray) -> np.ndarray:
        if x.shape != self.shape:
            what = "(N,) with cu_seqlens" if self.packed else "(B, L) padded"
            raise ValueError(f"{name}: expected shape {self.shape} {what}, got {x.shape}")
        return x.reshape(-1)[self.index]

    def floats(self, name: str, x: Any, *, allow_nan: bool = False) -> np.ndarray:
        """A float token array as a float64 grid, 0 at every invalid cell.

        NaN at a valid position → ``ValueError`` unless ``allow_nan`` (``conventions.md``:
        ``nan_policy="raise"`` is the default; functions without ``nan_policy`` raise).
        """
        grid = self._read(name, float64_array(name, x))
        if not allow_nan and np.any(np.isnan(grid) & self.valid):
            raise ValueError(f"{name}: contains NaN at a valid (mask = 1) position")
        return np.where(self.valid, grid, 0.0)

    def ints(self, name: str, x: Any) -> np.ndarray:
        """An integer token array (``token_ids``) as an int64 grid, 0 at every invalid cell."""
        return np.where(self.valid, self._read(name, int64_array(name, x)), 0)

    def bools(self, name: str, x: Any) -> np.ndarray:
        """A bool (or 0/1) token array as a bool grid, False at every invalid cell."""
        return self._read(name, bool_array(name, x)) & self.valid

    def tokens(self, grid: np.ndarray) -> np.ndarray:
        """A grid back in the input layout; 0 (False) at invalid positions (§0.1)."""
        grid = np.asarray(grid)
        out = np.zeros(int(np.prod(self.shape)), dtype=grid.dtype)
        out[self.index[self.valid]] = grid[self.valid]
        return out.reshape(self.shape)


def layout(name: str, x: Any, mask: Any, cu_seqlens: Any) -> Layout:
    """The layout of the token array ``x`` (named ``name``) with its ``mask`` and ``cu_seqlens``.

    Padded (``cu_seqlens=None``): ``x`` is ``(B, L)`` and ``mask`` ``(B, L)``. Packed: ``x`` is
    ``(N,)``, ``mask`` ``(N,)`` or ``None``. ``mask=None`` means every position is valid.
    """
    array = as_array(name, x)
    if cu_seqlens is None:
        if array.ndim != 2:
            raise ValueError(
                f"{name}: expected a padded (B, L) array (or (N,) with cu_seqlens), "
                f"got shape {array.shape}"
            )
        n_rows, width = array.shape
        slot = np.ones((n_rows, width), dtype=bool)
        index = np.arange(n_rows * width, dtype=np.int64).reshape(n_rows, width)
    else:
        if array.ndim != 1:
            raise ValueError(
                f"{name}: expected a packed (N,) array with cu_seqlens, got shape {array.shape}"
            )
        cu = check_cu_seqlens(cu_seqlens, array.shape[0])
        lengths = np.diff(cu)
        n_rows = lengths.shape[0]
        width = int(lengths.max()) if n_rows else 0
        columns = np.arange(width, dtype=np.int64)
        slot = columns[None, :] < lengths[:, None]
        index = np.where(slot, cu[:-1, None] + columns[None, :], 0)
    if mask is None:
        valid = slot.copy()
    else:
        mask_arr = bool_array("mask", mask)
        if mask_arr.shape != array.shape:
            raise ValueError(
                f"mask: expected shape {array.shape} (as {name}), got {mask_arr.shape}"
            )
        valid = slot & mask_arr.reshape(-1)[index]
    return Layout(
        packed=cu_seqlens is not None,
        shape=tuple(array.shape),
        slot=slot,
        valid=valid,
        index=index,
    )


# ---------------------------------------------------------------------------------------------
# Units (rollout.md §0.2)
# ---------------------------------------------------------------------------------------------


def units(scope: Any, micro_batch: Any, n_rows: int) -> tuple[np.ndarray, int]:
    """``(unit (B,) int64 in [0, U), U)``: the unit of each row, units in increasing id order.

    ``scope="batch"`` or ``micro_batch=None``: one unit. ``micro_batch`` an int ``m ≥ 1``: row
    ``b`` is in micro-batch ``b // m``. ``micro_batch`` an int array ``(B,)``: the micro-batch id of
    each row (any integers; units are ordered by increasing id).
    """
    choice("scope", scope, SCOPES)
    if scope == "batch" or micro_batch is None:
        return np.zeros(n_rows, dtype=np.int64), 1 if n_rows else 0
    if isinstance(micro_batch, (int, np.integer)) and not isinstance(micro_batch, (bool, np.bool_)):
        size = integer("micro_batch", micro_batch, low=1)
        ids = np.arange(n_rows, dtype=np.int64) // size
    else:
        ids = int_vector("micro_batch", micro_batch, n_rows)
    distinct, unit = np.unique(ids, return_inverse=True)
    return unit.reshape(-1).astype(np.int64), int(distinct.shape[0])


# ---------------------------------------------------------------------------------------------
# Order statistics
# ---------------------------------------------------------------------------------------------


def lerp(a: float, b: float, t: float) -> float:
    """``a + t (b − a)``, evaluated as ``torch.lerp`` and ``numpy.percentile`` do: from ``a`` when
    ``t < 0.5``, from ``b`` (``b − (1 − t)(b − a)``) otherwise, so ``t = 1`` gives ``b`` exactly."""
    if a == b:
        return a
    if t < 0.5:
        return a + t * (b - a)
    return b - (1.0 - t) * (b - a)


def linear_quantile(values: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile (``torch.quantile(..., interpolation="linear")``,
    ``numpy.quantile(method="linear")``): position ``h = (n − 1) q`` in the ascending order
    statistics, ``lerp(x_(⌊h⌋), x_(⌈h⌉), h − ⌊h⌋)``. NaN for an empty array."""
    if values.size == 0:
        return math.nan
    ordered = np.sort(values)
    h = (ordered.size - 1) * q
    lo = math.floor(h)
    hi = min(math.ceil(h), ordered.size - 1)
    return lerp(float(ordered[lo]), float(ordered[hi]), h - lo)
