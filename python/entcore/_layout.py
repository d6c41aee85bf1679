"""Token layouts and units of the rollout functions (``rollout.md`` §0.1–0.2), NumPy face.

A token array is padded ``(B, L)`` with a mask, or packed ``(N,)`` with ``cu_seqlens`` (int64,
``B + 1``, from 0, non-decreasing, ending at ``N``). A *unit* is a set of rows over which a
statistic is taken: every micro-batch (``scope="micro_batch"``) or the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SCOPES = ("micro_batch", "batch")


@dataclass(frozen=True)
class Layout:
    """Where each row's tokens are: padded rows of width ``width``, or ``cu_seqlens`` segments."""

    rows: int
    width: int | None  # padded
    cu_seqlens: np.ndarray | None  # packed

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    def row_tokens(self, row: int) -> slice:
        if self.cu_seqlens is None:
            assert self.width is not None
            return slice(row * self.width, (row + 1) * self.width)
        return slice(int(self.cu_seqlens[row]), int(self.cu_seqlens[row + 1]))


def token_layout(
    name: str, values: np.ndarray, mask: Any, cu_seqlens: Any
) -> tuple[Layout, np.ndarray | None]:
    """Validate ``values`` against its mask and layout; returns the layout and a flat bool mask
    (``None`` when every token is valid)."""
    if cu_seqlens is None:
        if values.ndim != 2:
            raise ValueError(
                f"{name}: expected a padded (B, L) array (or pass cu_seqlens for packed (N,)), "
                f"got shape {values.shape}"
            )
        layout = Layout(rows=values.shape[0], width=values.shape[1], cu_seqlens=None)
    else:
        if values.ndim != 1:
            raise ValueError(
                f"{name}: expected a packed (N,) array with cu_seqlens, got shape {values.shape}"
            )
        cu = check_cu_seqlens(cu_seqlens, values.shape[0])
        layout = Layout(rows=cu.shape[0] - 1, width=None, cu_seqlens=cu)
    if mask is None:
        return layout, None
    mask_arr = np.asarray(mask)
    if mask_arr.shape != values.shape:
        raise ValueError(f"mask: expected shape {values.shape} like {name}, got {mask_arr.shape}")
    if mask_arr.dtype != np.bool_:
        if mask_arr.dtype.kind not in "iuf" or not np.all((mask_arr == 0) | (mask_arr == 1)):
            raise TypeError("mask: expected a bool or 0/1 array")
        mask_arr = mask_arr != 0
    return layout, np.ascontiguousarray(mask_arr).reshape(-1)


def check_cu_seqlens(cu_seqlens: Any, n: int) -> np.ndarray:
    cu = np.asarray(cu_seqlens)
    if cu.ndim != 1 or cu.shape[0] < 1 or cu.dtype.kind not in "iu":
        raise ValueError(f"cu_seqlens: expected an int64 (B + 1,) array, got {cu.dtype} {cu.shape}")
    cu = cu.astype(np.int64)
    if cu[0] != 0 or cu[-1] != n or np.any(np.diff(cu) < 0):
        raise ValueError(
            f"cu_seqlens: expected non-decreasing offsets from 0 to N = {n}, "
            f"got {cu[:3].tolist()}...{cu[-1:].tolist()}"
        )
    return cu


def unit_rows(rows: int, scope: str, micro_batch: Any) -> list[np.ndarray]:
    """The rows of each unit, units in increasing id (``rollout.md`` §0.2)."""
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
    if scope == "batch" or micro_batch is None:
        return [np.arange(rows)]
    if isinstance(micro_batch, (int, np.integer)) and not isinstance(micro_batch, bool):
        size = int(micro_batch)
        if size < 1:
            raise ValueError(f"micro_batch: expected rows per micro-batch >= 1, got {size}")
        return [np.arange(lo, min(lo + size, rows)) for lo in range(0, rows, size)] or [
            np.arange(0)
        ]
    ids = np.asarray(micro_batch)
    if ids.shape != (rows,) or ids.dtype.kind not in "iu":
        raise ValueError(f"micro_batch: expected an int or an int64 ({rows},) array of row ids")
    return [np.flatnonzero(ids == u) for u in np.unique(ids)]


def unit_tokens(layout: Layout, rows: np.ndarray) -> np.ndarray | slice:
    """Flat token indices of a unit's rows (a slice when they are contiguous)."""
    if rows.size == 0:
        return slice(0, 0)
    if np.all(np.diff(rows) == 1):
        first, last = layout.row_tokens(int(rows[0])), layout.row_tokens(int(rows[-1]))
        return slice(first.start, last.stop)
    return np.concatenate([np.arange(s.start, s.stop) for s in map(layout.row_tokens, rows)])
