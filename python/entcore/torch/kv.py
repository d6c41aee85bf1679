"""KV-cache compression on torch tensors (``matrix.md`` §2): any device, the cache never leaves it.

Same names, argument names and defaults as ``entcore.reference.kv`` (the float64 oracle, whose
docstrings hold the long form of every rule) and ``entcore.kv``.

- :func:`snapkv_scores`, :func:`select_tokens` and :func:`compress_kv` run in torch ops on the
  input's device: scores from post-RoPE queries and keys are one batched ``q·kᵀ`` per KV head
  (the cache is never repeated to query heads), softmax in float32, float32 results;
  selection is a stable sort (ties to the lower position); gathers keep the cache dtype. They
  carry no gradient (selection is discrete).
- :func:`calibrate_heads`, :func:`segment_layers`, :func:`budget_weights` and
  :func:`allocate_budgets` work on a few numbers per head: tensors (or arrays) are read on the
  CPU and the reference functions run on them. ``calibrate_heads`` returns a
  :class:`HeadProfile` and ``allocate_budgets`` a :class:`BudgetPlan` (NumPy arrays, as on every
  face); ``segment_layers`` (int64) and ``budget_weights`` (float64) return tensors on the
  input's device (CPU for non-tensor input).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from entcore.reference import kv as _ref
from entcore.reference._layout import integer
from entcore.reference.kv import LAYOUTS, BudgetPlan, HeadProfile, check_snapkv_options

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

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _numpy(x: Any) -> Any:
    """A tensor as a NumPy array on the CPU (bfloat16 upcast exactly to float32)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    return x


def _device(x: Any) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def calibrate_heads(entropies: Any, *, n_groups: int = 2, group_sizes: Any = None) -> HeadProfile:
    """Head labels by consensus over samples (§2.1); see ``entcore.reference.kv``."""
    return _ref.calibrate_heads(_numpy(entropies), n_groups=n_groups, group_sizes=group_sizes)


def segment_layers(profile: Any, *, threshold: float) -> torch.Tensor:
    """Layer stages (§2.2), int64 on the profile's device; see ``entcore.reference.kv``."""
    stages = _ref.segment_layers(_numpy(profile), threshold=float(_numpy(threshold)))
    return torch.from_numpy(stages).to(_device(profile))


def budget_weights(
    values: Any,
    *,
    scheme: str = "groups",
    group_weights: Any = (1.0, 2.0),
    low: float = 144.0,
    high: float = 640.0,
    power: float = 1.0,
) -> torch.Tensor:
    """Relative budgets from a profile (§2.3), float64 on the input's device."""
    w = _ref.budget_weights(
        _numpy(values),
        scheme=scheme,
        group_weights=_numpy(group_weights),
        low=low,
        high=high,
        power=power,
    )
    return torch.from_numpy(np.ascontiguousarray(w)).to(_device(values))


def allocate_budgets(
    weights: Any,
    *,
    n_tokens: int,
    compression_ratio: float | None = None,
    tokens_per_head: int | None = None,
    total: int | None = None,
    scope: str = "layer",
    min_tokens: int = 0,
    safeguard: float = 0.0,
    protected: int = 0,
) -> BudgetPlan:
    """Integer budgets conserving the total exactly (§2.3); see ``entcore.reference.kv``."""
    return _ref.allocate_budgets(
        _numpy(weights),
        n_tokens=n_tokens,
        compression_ratio=compression_ratio,
        tokens_per_head=tokens_per_head,
        total=total,
        scope=scope,
        min_tokens=min_tokens,
        safeguard=safeguard,
        protected=protected,
    )


def _float_tensor(name: str, x: Any, ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a float tensor, got dtype {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def _check_finite(name: str, x: torch.Tensor) -> None:
    if bool(torch.isnan(x).any()):
        raise ValueError(f"{name}: contains NaN")
    if bool(torch.isinf(x).any()):
        raise ValueError(f"{name}: contains ±inf")


def _key_mask(key_mask: Any, batch: int, n: int, device: torch.device) -> torch.Tensor:
    if key_mask is None:
        return torch.ones((batch, n), dtype=torch.bool, device=device)
    m = key_mask if isinstance(key_mask, torch.Tensor) else torch.as_tensor(np.asarray(key_mask))
    if m.dtype != torch.bool:
        if m.is_complex():
            raise TypeError(f"key_mask: expected a bool or 0/1 tensor, got dtype {m.dtype}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("key_mask: expected bool or 0/1 values")
        m = m == 1
    try:
        return torch.broadcast_to(m.to(device), (batch, n))
    except RuntimeError:
        raise ValueError(
            f"key_mask: shape {tuple(m.shape)} does not broadcast to (B, N) = {(batch, n)}"
        ) from None


def _pool(a: torch.Tensor, prefix: int, kernel: int, pooling: str) -> torch.Tensor:
    out = a.clone()
    if pooling == "none" or kernel == 1 or prefix == 0:
        return out
    half = kernel // 2
    fill = -math.inf if pooling == "max" else 0.0
    padded = torch.nn.functional.pad(a[..., :prefix], (half, half), value=fill)
    windows = padded.unfold(-1, kernel, 1)
    out[..., :prefix] = windows.amax(-1) if pooling == "max" else windows.sum(-1) / kernel
    return out


@torch.no_grad()
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
) -> torch.Tensor:
    """SnapKV-style token scores, float32 ``(B, H_out, N)`` on the input's device (§2.4)."""
    w, k, pool, red, grp, sink, sc = check_snapkv_options(
        window, kernel, pooling, reduce, group_reduce, sink, scale
    )
    if attention is not None:
        if queries is not None or keys is not None:
            raise ValueError("attention: give either attention or queries and keys, not both")
        probs = _float_tensor("attention", attention, 4).float()
        _check_finite("attention", probs)
        batch, h_q, rows, n = probs.shape
        if rows != w:
            raise ValueError(f"attention: expected w = window = {w} query rows, got {rows}")
        valid = _key_mask(key_mask, batch, n, probs.device)
        h_kv = None
        if n_kv_heads is not None:
            h_kv = integer("n_kv_heads", n_kv_heads, low=1)
            if h_q % h_kv:
                raise ValueError(f"n_kv_heads: H_q = {h_q} is not a multiple of {h_kv}")
    else:
        if queries is None or keys is None:
            raise ValueError("queries: give attention, or both queries and keys")
        q = _float_tensor("queries", queries, 4)
        kk = _float_tensor("keys", keys, 4)
        batch, h_q, rows, d = q.shape
        h_kv, n = kk.shape[1], kk.shape[2]
        if kk.shape[0] != batch or kk.shape[3] != d:
            raise ValueError(
                f"keys: expected shape (B={batch}, H_kv, N, d={d}), got {tuple(kk.shape)}"
            )
        if kk.device != q.device:
            raise ValueError(f"keys: on {kk.device}, queries on {q.device}")
        if rows != w:
            raise ValueError(f"queries: expected w = window = {w} query rows, got {rows}")
        if h_kv == 0 or h_q % h_kv:
            raise ValueError(f"keys: H_q = {h_q} is not a multiple of H_kv = {h_kv}")
        if n_kv_heads is not None and integer("n_kv_heads", n_kv_heads, low=1) != h_kv:
            raise ValueError(f"n_kv_heads: expected H_kv = {h_kv} of keys, got {n_kv_heads}")
        if n < w:
            raise ValueError(f"keys: the window of {w} queries needs N >= {w} keys, got N = {n}")
        _check_finite("queries", q)
        _check_finite("keys", kk)
        valid = _key_mask(key_mask, batch, n, q.device)
        step = 1.0 / math.sqrt(d) if sc is None else sc
        group = h_q // h_kv
        grouped = q.float().reshape(batch, h_kv, group * w, d)
        logits = torch.matmul(grouped, kk.float().transpose(-1, -2)) * step
        logits = logits.reshape(batch, h_q, w, n)
        pos = torch.arange(n, device=q.device)
        causal = pos[None, :] <= (n - w + torch.arange(w, device=q.device))[:, None]
        seen = causal[None, None] & valid[:, None, None, :]
        logits = logits.masked_fill(~seen, -math.inf)
        any_seen = seen.any(-1, keepdim=True)
        probs = torch.softmax(logits.masked_fill(~any_seen, 0.0), dim=-1)
        probs = probs.masked_fill(~any_seen, 0.0)
    prefix = max(n - w, 0)
    a = probs.sum(2) if red == "sum" else probs.mean(2)
    scores = _pool(a, prefix, k, pool)
    if h_kv is not None:
        g = scores.reshape(batch, h_kv, h_q // h_kv, n)
        scores = {"mean": g.mean(2), "max": g.amax(2), "sum": g.sum(2)}[grp]
    protected = torch.zeros(n, dtype=torch.bool, device=scores.device)
    protected[prefix:] = True
    protected[: min(sink, n)] = True
    free = ~protected[None, None, :] & valid[:, None, :]
    top = scores.masked_fill(~free, -math.inf).amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top + 1, torch.ones_like(top))
    scores = torch.where(protected[None, None, :], top, scores)
    return scores.masked_fill(~valid[:, None, :], -math.inf)


def _budget_grid(budgets: Any, scores: torch.Tensor) -> torch.Tensor:
    batch, n_heads, n = scores.shape
    if isinstance(budgets, torch.Tensor):
        if budgets.dtype.is_floating_point or budgets.dtype == torch.bool:
            raise TypeError(f"budgets: expected an integer tensor, got dtype {budgets.dtype}")
        budgets = budgets.cpu().numpy()
    finite = torch.isfinite(scores).sum(-1).cpu().numpy()
    grid = _ref.budget_grid(budgets, batch, n_heads, n, finite)
    return torch.from_numpy(grid).to(scores.device)


@torch.no_grad()
def select_tokens(scores: Any, budgets: Any, *, return_mask: bool = False) -> Any:
    """The ``budgets`` highest scores per ``(b, h)``, ties to the lower position (§2.5):
    ``(indices int64 (B, H, b_max), lengths int64 (B, H))`` or a bool ``(B, H, N)`` mask."""
    s = _float_tensor("scores", scores, 3)
    if bool(torch.isnan(s).any()):
        raise ValueError("scores: contains NaN")
    if bool(torch.isposinf(s).any()):
        raise ValueError("scores: contains +inf (-inf marks a position that is never kept)")
    grid = _budget_grid(budgets, s)
    n = s.shape[-1]
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(n, device=s.device).expand_as(order).contiguous())
    mask = rank < grid[..., None]
    if return_mask:
        return mask
    b_max = int(grid.max()) if grid.numel() else 0
    indices = torch.sort((~mask).to(torch.uint8), dim=-1, stable=True).indices[..., :b_max]
    slots = torch.arange(b_max, device=s.device)
    indices = indices.masked_fill(slots >= grid[..., None], -1)
    return indices, grid


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    index = idx.clamp(min=0)[..., None].expand(*idx.shape, x.shape[-1])
    return torch.gather(x, 2, index)


@torch.no_grad()
def compress_kv(keys: Any, values: Any, indices: Any, lengths: Any, *, layout: str = "padded"):
    """Gather a plan's kept tokens from ``(B, H_kv, N, d)`` keys/values on their device, dtype
    kept (§2.6): ``"padded"``, ``"grouped"`` or ``"flat"``; see ``entcore.reference.kv``."""
    k = _float_tensor("keys", keys, 4)
    v = _float_tensor("values", values, 4)
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"values: expected (B, H, N) = {tuple(k.shape[:3])} as keys, got {tuple(v.shape[:3])}"
        )
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    idx_np = _numpy(indices)
    lens_np = _numpy(lengths)
    _ref.check_plan(idx_np, lens_np, tuple(k.shape))
    idx = torch.as_tensor(np.asarray(idx_np, dtype=np.int64), device=k.device)
    lens = torch.as_tensor(np.asarray(lens_np, dtype=np.int64), device=k.device)
    valid = torch.arange(idx.shape[2], device=k.device) < lens[..., None]
    if layout == "padded":
        out_k = _gather(k, idx).masked_fill(~valid[..., None], 0)
        out_v = _gather(v, idx).masked_fill(~valid[..., None], 0)
        return out_k, out_v, valid
    if layout == "flat":
        cu = torch.zeros(lens.numel() + 1, dtype=torch.int64, device=k.device)
        cu[1:] = torch.cumsum(lens.reshape(-1), 0)
        return _gather(k, idx)[valid], _gather(v, idx)[valid], cu
    lens0 = np.asarray(lens_np, dtype=np.int64)
    if np.any(lens0 != lens0[:1]):
        raise ValueError("lengths: layout='grouped' needs equal lengths over the batch per head")
    groups = []
    for budget in np.unique(lens0[0]) if lens0.shape[0] else []:
        heads = torch.as_tensor(np.flatnonzero(lens0[0] == budget), device=k.device)
        sub = idx[:, heads, : int(budget)]
        groups.append((heads, _gather(k[:, heads], sub), _gather(v[:, heads], sub)))
    return groups
