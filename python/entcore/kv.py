"""KV-cache compression on NumPy arrays (``matrix.md`` §2): calibration, budgets, SnapKV scores,
token selection and the gather of a plan from a real cache.

Names, arguments and defaults match ``entcore.reference.kv`` (the float64 oracle, whose
docstrings hold the long form of every rule). Per the spec table, calibration and allocation
work on a few numbers per head: :func:`calibrate_heads`, :func:`segment_layers`,
:func:`budget_weights` and :func:`allocate_budgets` are the reference functions themselves
(exact rational shares, float64), re-exported so that ``entcore.<name>`` exists for every name.
The passes over every token are vectorised NumPy here: :func:`snapkv_scores` (one batched
``q·kᵀ`` per KV head, softmax in float32, as kvpress computes it, returns float32),
:func:`select_tokens` (one stable sort per ``(b, h)``) and :func:`compress_kv` (gathers that keep
the cache dtype, bfloat16 included).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from entcore.reference._layout import as_array, integer
from entcore.reference.kv import (
    LAYOUTS,
    BudgetPlan,
    HeadProfile,
    allocate_budgets,
    budget_grid,
    budget_weights,
    calibrate_heads,
    check_cache,
    check_plan,
    check_scores,
    check_snapkv_options,
    key_mask_grid,
    segment_layers,
)

__all__ = [
    "BudgetPlan",
    "HeadProfile",
    "allocate_budgets",
    "budget_weights",
    "calibrate_heads",
    "compress_kv",
    "segment_layers",
    "select_tokens",
    "snapkv_scores",
]

_FLOATS = ("float16", "float32", "float64", "bfloat16")


def _finite_float32(name: str, x: Any, ndim: int) -> np.ndarray:
    """A float array as float32 (one conversion; bfloat16/float16 upcast exactly)."""
    array = as_array(name, x)
    if array.dtype.name not in _FLOATS:
        raise TypeError(
            f"{name}: expected float32, float16, bfloat16 or float64, got dtype {array.dtype}"
        )
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {array.shape}")
    out = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        if np.any(np.isnan(out)):
            raise ValueError(f"{name}: contains NaN")
        raise ValueError(f"{name}: contains ±inf")
    return out


def _pool(a: np.ndarray, prefix: int, kernel: int, pooling: str) -> np.ndarray:
    """Stride-1 pooling of the first ``prefix`` positions of the last axis (§2.4 step 2)."""
    out = a.copy()
    if pooling == "none" or kernel == 1 or prefix == 0:
        return out
    half = kernel // 2
    pad = [(0, 0)] * (a.ndim - 1) + [(half, half)]
    fill = -np.inf if pooling == "max" else 0.0
    padded = np.pad(a[..., :prefix], pad, constant_values=fill)
    windows = sliding_window_view(padded, kernel, axis=-1)
    out[..., :prefix] = windows.max(axis=-1) if pooling == "max" else windows.sum(-1) / kernel
    return out


def _window_softmax(
    q: np.ndarray, k: np.ndarray, valid: np.ndarray | None, scale: np.float32
) -> np.ndarray:
    """Softmax rows ``(B, H_q, w, N)`` of the window queries over the keys they see (§2.4).

    One 2-D BLAS product per ``(b, KV head)`` with the keys read in place (``k[b, h].T`` is a
    view); the causal part touches only the last ``w`` columns; ``valid`` (the key mask) costs a
    pass only when given. A row that sees no key is 0."""
    batch, h_q, w, d = q.shape
    h_kv, n = k.shape[1], k.shape[2]
    group = h_q // h_kv
    logits = np.empty((batch, h_kv, group * w, n), dtype=np.float32)
    for b in range(batch):
        for h in range(h_kv):
            np.matmul(
                q[b, h * group : (h + 1) * group].reshape(group * w, d), k[b, h].T, out=logits[b, h]
            )
    logits = logits.reshape(batch, h_q, w, n)
    logits *= scale
    future = np.arange(w)[None, :] > np.arange(w)[:, None]  # key n - w + c, query row r: c > r
    logits[..., n - w :][..., future] = -np.inf
    if valid is not None:
        logits[np.broadcast_to(~valid[:, None, None, :], logits.shape)] = -np.inf
    row_max = logits.max(axis=-1, keepdims=True)
    seen = np.isfinite(row_max)
    row_max[~seen] = 0
    logits -= row_max
    np.exp(logits, out=logits)
    total = logits.sum(axis=-1, keepdims=True)
    total[~seen] = 1
    logits /= total
    return logits


def snapkv_scores(
    *,
    attention: Any = None,
    queries: Any = None,
    keys: Any = None,
    window: int = 8,
    kernel: int = 7,
    pooling: str = "max",
    reduce: str = "sum",
    n_kv_heads: int | None = None,
    group_reduce: str = "mean",
    sink: int = 0,
    key_mask: Any = None,
    scale: float | None = None,
) -> np.ndarray:
    """SnapKV-style token scores, float32 ``(B, H_out, N)`` (``matrix.md`` §2.4).

    From ``attention (B, H_q, window, N)`` or from post-RoPE ``queries (B, H_q, window, d)`` and
    ``keys (B, H_kv, N, d)`` (logits ``scale·q·kᵀ`` per KV head, causal inside the window, softmax
    in float32; the cache is never repeated to ``H_q`` heads). Window sums, pooling, GQA reduction
    and protected positions as in ``entcore.reference.kv.snapkv_scores``.
    """
    w, k, pool, red, grp, sink, sc = check_snapkv_options(
        window, kernel, pooling, reduce, group_reduce, sink, scale
    )
    if attention is not None:
        if queries is not None or keys is not None:
            raise ValueError("attention: give either attention or queries and keys, not both")
        probs = _finite_float32("attention", attention, 4)
        batch, h_q, rows, n = probs.shape
        if rows != w:
            raise ValueError(f"attention: expected w = window = {w} query rows, got {rows}")
        valid = key_mask_grid(key_mask, batch, n)
        h_kv = None
        if n_kv_heads is not None:
            h_kv = integer("n_kv_heads", n_kv_heads, low=1)
            if h_q % h_kv:
                raise ValueError(f"n_kv_heads: H_q = {h_q} is not a multiple of {h_kv}")
    else:
        if queries is None or keys is None:
            raise ValueError("queries: give attention, or both queries and keys")
        q = _finite_float32("queries", queries, 4)
        kk = _finite_float32("keys", keys, 4)
        batch, h_q, rows, d = q.shape
        h_kv, n = kk.shape[1], kk.shape[2]
        if kk.shape[0] != batch or kk.shape[3] != d:
            raise ValueError(f"keys: expected shape (B={batch}, H_kv, N, d={d}), got {kk.shape}")
        if rows != w:
            raise ValueError(f"queries: expected w = window = {w} query rows, got {rows}")
        if h_kv == 0 or h_q % h_kv:
            raise ValueError(f"keys: H_q = {h_q} is not a multiple of H_kv = {h_kv}")
        if n_kv_heads is not None and integer("n_kv_heads", n_kv_heads, low=1) != h_kv:
            raise ValueError(f"n_kv_heads: expected H_kv = {h_kv} of keys, got {n_kv_heads}")
        if n < w:
            raise ValueError(f"keys: the window of {w} queries needs N >= {w} keys, got N = {n}")
        valid = key_mask_grid(key_mask, batch, n)
        step = np.float32(1.0 / np.sqrt(d) if sc is None else sc)
        probs = _window_softmax(q, kk, valid if key_mask is not None else None, step)
    prefix = max(n - w, 0)
    a = probs.sum(axis=2) if red == "sum" else probs.mean(axis=2)
    scores = _pool(a, prefix, k, pool)
    if h_kv is not None:
        g = scores.reshape(batch, h_kv, h_q // h_kv, n)
        scores = {"mean": g.mean, "max": g.max, "sum": g.sum}[grp](axis=2)
    protected = np.zeros(n, dtype=bool)
    protected[prefix:] = True
    protected[: min(sink, n)] = True
    free = ~protected[None, None, :] & valid[:, None, :]
    top = np.where(free, scores, -np.inf).max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top + 1, 1.0)
    scores = np.where(protected[None, None, :], top, scores)
    scores = np.where(valid[:, None, :], scores, -np.inf)
    return scores.astype(np.float32)


def select_tokens(scores: Any, budgets: Any, *, return_mask: bool = False) -> Any:
    """The ``budgets`` highest scores per ``(b, h)``, ties to the lower position (``matrix.md``
    §2.5): ``(indices int64 (B, H, b_max) ascending, −1 padded; lengths int64 (B, H))`` or a bool
    ``(B, H, N)`` mask with ``return_mask=True``."""
    s = as_array("scores", scores)
    if s.dtype.name not in _FLOATS:
        raise TypeError(f"scores: expected a float array, got dtype {s.dtype}")
    s = np.asarray(s, dtype=np.float64 if s.dtype == np.float64 else np.float32)
    check_scores(s)
    batch, n_heads, n = s.shape
    grid = budget_grid(budgets, batch, n_heads, n, np.isfinite(s).sum(axis=-1))
    order = np.argsort(-s, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n, dtype=order.dtype), axis=-1)
    mask = rank < grid[..., None]
    if return_mask:
        return mask
    b_max = int(grid.max()) if grid.size else 0
    indices = np.argsort(~mask, axis=-1, kind="stable")[..., :b_max].astype(np.int64)
    indices[np.arange(b_max) >= grid[..., None]] = -1
    return indices, grid


def _gather(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``x[b, h, idx[b, h, s]]`` for ``x (B, H, N, d)``, ``idx (B, H, S)`` (−1 read as 0)."""
    return np.take_along_axis(x, np.maximum(idx, 0)[..., None], axis=2)


def compress_kv(keys: Any, values: Any, indices: Any, lengths: Any, *, layout: str = "padded"):
    """Gather a plan's kept tokens from ``(B, H_kv, N, d)`` keys/values, dtype kept
    (``matrix.md`` §2.6): ``"padded"`` ``(keys, values, valid)`` (saves memory only down to the
    largest head), ``"grouped"`` ``[(heads, keys, values), …]`` per distinct budget, or
    ``"flat"`` ``(keys (Σ lengths, d), values, cu_seqlens)`` (both exactly the plan's memory)."""
    k, v = check_cache(keys, values)
    idx, lens = check_plan(indices, lengths, k.shape)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    valid = np.arange(idx.shape[2]) < lens[..., None]
    if layout == "padded":
        out_k = np.where(valid[..., None], _gather(k, idx), np.zeros((), k.dtype))
        out_v = np.where(valid[..., None], _gather(v, idx), np.zeros((), v.dtype))
        return out_k.astype(k.dtype, copy=False), out_v.astype(v.dtype, copy=False), valid
    if layout == "flat":
        cu = np.concatenate([[0], np.cumsum(lens.reshape(-1))]).astype(np.int64)
        return _gather(k, idx)[valid], _gather(v, idx)[valid], cu
    if np.any(lens != lens[:1]):
        raise ValueError("lengths: layout='grouped' needs equal lengths over the batch per head")
    groups = []
    for budget in np.unique(lens[0]) if lens.shape[0] else []:
        heads = np.flatnonzero(lens[0] == budget).astype(np.int64)
        sub = idx[:, heads, : int(budget)]
        groups.append((heads, _gather(k[:, heads], sub), _gather(v[:, heads], sub)))
    return groups
