"""Float64 NumPy oracle for KV-cache compression (``matrix.md`` §2): the executable spec.

Written to be read, not to be fast (``conventions.md``, "The three faces of every function"):
float inputs are upcast exactly to float64, scores are computed in float64, counts, budgets and
indices are int64, masks bool. ``entcore.kv`` and ``entcore.torch.kv`` are held to these results
in the tests. This module never imports the compiled core.

Shapes follow NVIDIA/kvpress: keys/values ``(B, H_kv, N, d)`` post-RoPE, token scores
``(B, H_kv, N)`` with higher = keep. ``compression_ratio`` always means the fraction *removed*,
in ``[0, 1)``. Every budget counts the protected tokens (window, sinks) it contains.

The pipeline of UNComp (arXiv 2410.03090, §2.7): per-sample matrix entropies of post-RoPE queries
``(S, L, H)`` → :func:`calibrate_heads` → :func:`budget_weights` → :func:`allocate_budgets` (a
:class:`BudgetPlan` that keeps exactly the requested total); per prompt and layer
:func:`snapkv_scores` → :func:`select_tokens` → :func:`compress_kv`.

NaN anywhere in a float input raises ``ValueError`` (the default ``nan_policy="raise"`` of
``conventions.md``; none of these functions has a ``nan_policy`` argument).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from entcore.reference._layout import as_array, choice, float64_array, int64_array, integer, real

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

PROFILE_FORMAT = "entcore.HeadProfile"
PROFILE_VERSION = 1

SCHEMES = ("groups", "rank_linear", "power")
SCOPES = ("layer", "global")
POOLINGS = ("max", "avg", "none")
REDUCES = ("sum", "mean")
GROUP_REDUCES = ("mean", "max", "sum")
LAYOUTS = ("padded", "grouped", "flat")


# ---------------------------------------------------------------------------------------------
# Checks shared by the three faces (they raise the same errors)
# ---------------------------------------------------------------------------------------------


def finite_float64(name: str, x: Any, ndim: int | None = None) -> np.ndarray:
    """A float array upcast to float64; NaN or ±inf → ``ValueError``; rank checked if given."""
    array = float64_array(name, x)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {array.shape}")
    if np.any(np.isnan(array)):
        raise ValueError(f"{name}: contains NaN")
    if np.any(np.isinf(array)):
        raise ValueError(f"{name}: contains ±inf")
    return array


def default_group_sizes(n_heads: int, n_groups: int) -> tuple[int, ...]:
    """``⌊H/n⌋`` heads per group; the ``H mod n`` extra heads go one each to groups
    ``0, n−1, 1, n−2, …`` (UNComp: 16/16 for ``H = 32, n = 2``; 11/10/11; 7/6/6/6/7)."""
    sizes = [n_heads // n_groups] * n_groups
    order = []
    lo, hi = 0, n_groups - 1
    while lo <= hi:
        order.append(lo)
        if hi != lo:
            order.append(hi)
        lo, hi = lo + 1, hi - 1
    for g in order[: n_heads % n_groups]:
        sizes[g] += 1
    return tuple(sizes)


def check_group_sizes(n_heads: int, n_groups: Any, group_sizes: Any) -> tuple[int, ...]:
    n = integer("n_groups", n_groups, low=1)
    if n > n_heads:
        raise ValueError(f"n_groups: expected at most H = {n_heads} groups, got {n}")
    if group_sizes is None:
        return default_group_sizes(n_heads, n)
    sizes = tuple(integer("group_sizes", s, low=0) for s in group_sizes)
    if len(sizes) != n:
        raise ValueError(f"group_sizes: expected n_groups = {n} sizes, got {len(sizes)}")
    if sum(sizes) != n_heads:
        raise ValueError(f"group_sizes: expected sizes summing to H = {n_heads}, got {sum(sizes)}")
    return sizes


# ---------------------------------------------------------------------------------------------
# §2.1 calibrate_heads → HeadProfile
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HeadProfile:
    """The consensus of head labels over calibration samples (``matrix.md`` §2.1).

    Attributes (arrays copied at construction; the fields cannot be reassigned):
        groups: ``(L, H)`` int64, consensus label of each head (0 = lowest entropy).
        votes: ``(L, H)`` int64, samples in which the head got the top label ``n − 1``
            (UNComp's count of "top-half" samples for ``n = 2``).
        mean, std: ``(L, H)`` float64, mean and population std of the entropies over samples.
        agreement: ``(L,)`` float64, fraction of (sample, head) pairs whose label equals the
            consensus.
        n_samples: ``S``.
        group_sizes: heads per label, ``sum = H``.
    """

    groups: np.ndarray
    votes: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    agreement: np.ndarray
    n_samples: int
    group_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        for name, dtype in (
            ("groups", np.int64),
            ("votes", np.int64),
            ("mean", np.float64),
            ("std", np.float64),
            ("agreement", np.float64),
        ):
            object.__setattr__(self, name, np.array(getattr(self, name), dtype=dtype))
        object.__setattr__(self, "n_samples", int(self.n_samples))
        object.__setattr__(self, "group_sizes", tuple(int(s) for s in self.group_sizes))
        shape = self.groups.shape
        if len(shape) != 2:
            raise ValueError(f"groups: expected shape (L, H), got {shape}")
        for name in ("votes", "mean", "std"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {getattr(self, name).shape}")
        if self.agreement.shape != shape[:1]:
            raise ValueError(f"agreement: expected shape ({shape[0]},), got {self.agreement.shape}")
        if sum(self.group_sizes) != shape[1]:
            raise ValueError(f"group_sizes: expected sizes summing to H = {shape[1]}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples: expected >= 1, got {self.n_samples}")

    @property
    def n_groups(self) -> int:
        return len(self.group_sizes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists and numbers) with a format name and version."""
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "n_samples": self.n_samples,
            "group_sizes": list(self.group_sizes),
            "groups": self.groups.tolist(),
            "votes": self.votes.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "agreement": self.agreement.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadProfile:
        """The inverse of :meth:`to_dict`; ``ValueError`` on another format or version."""
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"format: expected {PROFILE_FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"version: expected {PROFILE_VERSION}, got {data.get('version')!r}")
        missing = [k for k in ("n_samples", "group_sizes", "groups", "votes") if k not in data]
        missing += [k for k in ("mean", "std", "agreement") if k not in data]
        if missing:
            raise ValueError(f"{missing[0]}: missing from the profile dict")
        return cls(
            groups=np.asarray(data["groups"], dtype=np.int64),
            votes=np.asarray(data["votes"], dtype=np.int64),
            mean=np.asarray(data["mean"], dtype=np.float64),
            std=np.asarray(data["std"], dtype=np.float64),
            agreement=np.asarray(data["agreement"], dtype=np.float64),
            n_samples=data["n_samples"],
            group_sizes=tuple(data["group_sizes"]),
        )


def calibrate_heads(entropies: Any, *, n_groups: int = 2, group_sizes: Any = None) -> HeadProfile:
    """Head labels by consensus over calibration samples (``matrix.md`` §2.1, UNComp).

    ``entropies (S, L, H)``: one value per sample, layer and head (UNComp: the matrix entropy of
    post-RoPE queries, ``matrix_entropy(q, k=32, group_size=H_q // H_kv)`` for KV heads).

    1. Per sample and layer, rank heads by ascending entropy (ties: lower head index first) and
       label them by consecutive blocks of ``group_sizes`` (label 0 = lowest entropy).
    2. ``c[l, h, g]`` = number of samples in which head ``h`` of layer ``l`` got label ``g``.
    3. Consensus: for ``g = 0, …, n − 1``, among the heads not yet assigned take the
       ``group_sizes[g]`` with the largest ``c[l, h, g]`` (ties: lower mean entropy, then lower
       index).

    Default sizes: :func:`default_group_sizes`. Exactly ``group_sizes[g]`` heads per label per
    sample; for ``n = 2`` this is UNComp's vote rule (``determine_head_type``) when votes are not
    tied. Ref: menik1126/UNComp ``run_longbench.py``, ``uncomp/utils/entropy_utils.py``.
    """
    e = finite_float64("entropies", entropies, ndim=3)
    s_count, n_layers, n_heads = e.shape
    if s_count == 0 or n_layers == 0 or n_heads == 0:
        raise ValueError(f"entropies: expected a non-empty (S, L, H) array, got {e.shape}")
    sizes = check_group_sizes(n_heads, n_groups, group_sizes)
    block_label = np.repeat(np.arange(len(sizes)), sizes)  # label of ascending rank r
    labels = np.zeros(e.shape, dtype=np.int64)
    for s in range(s_count):
        for layer in range(n_layers):
            order = np.argsort(e[s, layer], kind="stable")
            labels[s, layer, order] = block_label
    counts = np.zeros((n_layers, n_heads, len(sizes)), dtype=np.int64)
    for g in range(len(sizes)):
        counts[:, :, g] = (labels == g).sum(axis=0)
    mean = e.mean(axis=0)
    std = e.std(axis=0)
    groups = np.full((n_layers, n_heads), -1, dtype=np.int64)
    for layer in range(n_layers):
        for g, size in enumerate(sizes):
            free = [h for h in range(n_heads) if groups[layer, h] < 0]
            free.sort(key=lambda h, g=g, layer=layer: (-counts[layer, h, g], mean[layer, h], h))
            for h in free[:size]:
                groups[layer, h] = g
    agreement = (labels == groups[None]).mean(axis=(0, 2))
    return HeadProfile(
        groups=groups,
        votes=counts[:, :, -1],
        mean=mean,
        std=std,
        agreement=agreement,
        n_samples=s_count,
        group_sizes=sizes,
    )


# ---------------------------------------------------------------------------------------------
# §2.2 segment_layers
# ---------------------------------------------------------------------------------------------


def segment_layers(profile: Any, *, threshold: float) -> np.ndarray:
    """Layer stages from a per-layer profile (``matrix.md`` §2.2, UNComp ``stage_division.py``).

    ``stage[0] = 0``; ``stage[l] = stage[l−1] + 1`` if ``profile[l−1] − profile[l] > threshold``,
    else ``stage[l−1]``. ``threshold`` is in the units of the profile (no default: UNComp's 1.0
    belongs to a profile of values ≈ 67–77). Returns int64 ``(L,)``.
    """
    p = float64_array("profile", profile)
    if p.ndim != 1:
        raise ValueError(f"profile: expected a 1-D per-layer array, got shape {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("profile: expected at least one layer (L = 0)")
    if np.any(np.isnan(p)):
        raise ValueError("profile: contains NaN")
    t = real("threshold", threshold)
    stages = np.zeros(p.shape[0], dtype=np.int64)
    for layer in range(1, p.shape[0]):
        drop = p[layer - 1] - p[layer] > t
        stages[layer] = stages[layer - 1] + (1 if drop else 0)
    return stages


# ---------------------------------------------------------------------------------------------
# §2.3 budget_weights, allocate_budgets → BudgetPlan
# ---------------------------------------------------------------------------------------------


def budget_weights(
    values: Any,
    *,
    scheme: str = "groups",
    group_weights: Any = (1.0, 2.0),
    low: float = 144.0,
    high: float = 640.0,
    power: float = 1.0,
) -> np.ndarray:
    """Nonnegative relative budgets from a profile, higher entropy ⇒ larger (``matrix.md`` §2.3).

    - ``"groups"``: ``values`` are integer labels (0 = lowest entropy, e.g.
      ``HeadProfile.groups``) and ``w = group_weights[label]``. ``(1, 2)`` is UNComp's two-group
      384 : 768; its multi-group lists are weights too: ``(128, 298, 470, 640)``,
      ``(32, 384, 736)``.
    - ``"rank_linear"``: along the last (head) axis, the head of ascending rank ``r`` (ties: lower
      index) gets ``low + (high − low)·r/(H − 1)`` (UNComp's 32-group ramp 144 … 640); ``low``
      when ``H = 1``.
    - ``"power"``: ``w = values ** power`` (``values ≥ 0``).

    Returns float64 with the shape of ``values``.
    """
    scheme = choice("scheme", scheme, SCHEMES)
    if scheme == "groups":
        labels = int64_array("values", values)
        weights = finite_float64("group_weights", np.asarray(group_weights, dtype=np.float64), 1)
        if weights.shape[0] == 0 or np.any(weights < 0):
            raise ValueError("group_weights: expected a non-empty list of weights >= 0")
        if labels.size and (labels.min() < 0 or labels.max() >= weights.shape[0]):
            raise ValueError(
                f"values: labels must lie in [0, {weights.shape[0]}) for {weights.shape[0]} "
                "group_weights"
            )
        return weights[labels]
    x = finite_float64("values", values)
    if scheme == "rank_linear":
        lo = real("low", low, low=0.0)
        hi = real("high", high, low=0.0)
        if x.ndim == 0:
            raise ValueError("values: expected at least one (head) axis")
        n_heads = x.shape[-1]
        out = np.empty_like(x)
        flat_in = x.reshape(-1, n_heads)
        flat_out = out.reshape(-1, n_heads)
        for row in range(flat_in.shape[0]):
            order = np.argsort(flat_in[row], kind="stable")
            for rank, h in enumerate(order):
                step = rank / (n_heads - 1) if n_heads > 1 else 0.0
                flat_out[row, h] = lo + (hi - lo) * step
        return out
    p = real("power", power)
    if np.any(x < 0):
        raise ValueError("values: expected values >= 0 for scheme='power'")
    return x**p


@dataclass(frozen=True, eq=False)
class BudgetPlan:
    """Integer token budgets per layer and head (``matrix.md`` §2.3).

    Attributes:
        budgets: ``(L, H)`` int64; ``Σ budgets`` is exactly the requested total.
        n_tokens: ``N``, the tokens of the uncompressed cache per head.
        kept: ``Σ budgets``.
        tokens_per_head: ``kept / (L·H)``.
        achieved_ratio: ``1 − kept / (L·H·N)``, the fraction removed (kvpress' convention).
        floor: the per-head floor ``f`` that every budget respects (the smallest over scopes:
            with ``safeguard``, layers of ``scope="layer"`` may get different floors).
    """

    budgets: np.ndarray
    n_tokens: int
    kept: int
    tokens_per_head: float
    achieved_ratio: float
    floor: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", np.array(self.budgets, dtype=np.int64))


def _layer_totals(target: int, n_layers: int) -> list[int]:
    """``⌊T/L⌋`` per layer, the first ``T mod L`` layers one more."""
    extra = target % n_layers
    return [target // n_layers + (1 if layer < extra else 0) for layer in range(n_layers)]


def _shares(weights: list[Fraction], total: int, floor: int, cap: int) -> list[Fraction]:
    """Exact real shares ``s_h = f + (T − H f)·w_h/Σw``, capped at ``N`` with the excess shared
    again by weight among the others (zero-weight heads share equally when only they are left)."""
    n = len(weights)
    shares: list[Fraction | None] = [None] * n
    while True:
        free = [h for h in range(n) if shares[h] is None]
        fixed = sum(Fraction(cap) for h in range(n) if shares[h] is not None)
        rest = Fraction(total) - fixed - floor * len(free)
        weight_sum = sum(weights[h] for h in free)
        proposal = {}
        for h in free:
            part = rest * weights[h] / weight_sum if weight_sum > 0 else rest / len(free)
            proposal[h] = floor + part
        over = [h for h in free if proposal[h] > cap]
        if not over:
            for h in free:
                shares[h] = proposal[h]
            return [s for s in shares if s is not None]
        for h in over:
            shares[h] = Fraction(cap)


def _largest_remainder(shares: list[Fraction], total: int) -> list[int]:
    """``b_h = ⌊s_h⌋``, then one more token each to the heads with the largest ``s_h − ⌊s_h⌋``
    (ties: smaller flat index) until ``Σ b = total``."""
    budgets = [math.floor(s) for s in shares]
    missing = total - sum(budgets)
    order = sorted(range(len(shares)), key=lambda h: (-(shares[h] - budgets[h]), h))
    for h in order[:missing]:
        budgets[h] += 1
    return budgets


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
    """Integer budgets that conserve the requested total exactly (``matrix.md`` §2.3).

    ``weights (L, H)`` (or ``(H,)``, treated as ``L = 1``), ``≥ 0``. Exactly one target:
    ``compression_ratio = r`` (nominal ``m = int(N(1 − r))`` per head, kvpress' rounding),
    ``tokens_per_head = m`` (the mean over heads, protected tokens included) or ``total = T``.
    ``scope="layer"``: each layer gets ``H·m`` (``total``: ``⌊T/L⌋``, the first ``T mod L`` layers
    one more); ``"global"``: all ``L·H`` heads share ``L·H·m`` (or ``T``).

    Inside a scope of ``H_s`` heads and total ``T_s``: floor ``f = min(N, max(min_tokens,
    protected, ⌊safeguard·⌊T_s/H_s⌋⌋))`` (``safeguard``: Ada-KV's ``α``, arXiv 2407.11550),
    ``H_s f ≤ T_s ≤ H_s N`` or ``ValueError``; shares ``s_h = f + (T_s − H_s f)·w_h/Σw`` capped
    at ``N`` with the excess re-shared by weight (all weights zero → equal shares); then largest
    remainder (ties: smaller flat index, layer-major) so ``Σ b_h = T_s`` exactly. Shares are
    computed in exact rational arithmetic. Ref: menik1126/UNComp ``uncomp_utils.py``
    (``update_kv``); NVIDIA/kvpress ``adakv_press.py``, ``lukv_press.py``.
    """
    w = finite_float64("weights", weights)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"weights: expected a non-empty (L, H) or (H,) array, got {w.shape}")
    if np.any(w < 0):
        raise ValueError("weights: expected weights >= 0")
    n_layers, n_heads = w.shape
    n = integer("n_tokens", n_tokens, low=1)
    targets = {
        "compression_ratio": compression_ratio,
        "tokens_per_head": tokens_per_head,
        "total": total,
    }
    given = [k for k, v in targets.items() if v is not None]
    if len(given) != 1:
        raise ValueError(
            "allocate_budgets: give exactly one of compression_ratio, tokens_per_head, total "
            f"(got {', '.join(given) if given else 'none'})"
        )
    target_name = given[0]
    if target_name == "compression_ratio":
        r = real("compression_ratio", compression_ratio, low=0.0, high=1.0, high_open=True)
        grand_total = n_layers * n_heads * int(n * (1 - r))
    elif target_name == "tokens_per_head":
        grand_total = n_layers * n_heads * integer("tokens_per_head", tokens_per_head, low=0)
    else:
        grand_total = integer("total", total, low=0)
    scope = choice("scope", scope, SCOPES)
    min_tok = integer("min_tokens", min_tokens, low=0)
    prot = integer("protected", protected, low=0)
    alpha = real("safeguard", safeguard, low=0.0, high=1.0)

    if scope == "layer":
        scopes = [
            ([(layer, h) for h in range(n_heads)], t)
            for layer, t in enumerate(_layer_totals(grand_total, n_layers))
        ]
    else:
        scopes = [([(layer, h) for layer in range(n_layers) for h in range(n_heads)], grand_total)]
    budgets = np.zeros((n_layers, n_heads), dtype=np.int64)
    floors = []
    for cells, scope_total in scopes:
        h_s = len(cells)
        floor = min(n, max(min_tok, prot, math.floor(alpha * (scope_total // h_s))))
        if not h_s * floor <= scope_total <= h_s * n:
            raise ValueError(
                f"{target_name}: a scope of {h_s} heads gets {scope_total} tokens, outside "
                f"[{h_s} x floor {floor}, {h_s} x N {n}] = [{h_s * floor}, {h_s * n}]"
            )
        floors.append(floor)
        cell_weights = [Fraction(float(w[c])) for c in cells]
        shares = _shares(cell_weights, scope_total, floor, n)
        for c, b in zip(cells, _largest_remainder(shares, scope_total), strict=True):
            budgets[c] = b
    kept = int(budgets.sum())
    return BudgetPlan(
        budgets=budgets,
        n_tokens=n,
        kept=kept,
        tokens_per_head=kept / (n_layers * n_heads),
        achieved_ratio=1.0 - kept / (n_layers * n_heads * n),
        floor=min(floors),
    )


# ---------------------------------------------------------------------------------------------
# §2.4 snapkv_scores
# ---------------------------------------------------------------------------------------------


def check_snapkv_options(
    window: Any, kernel: Any, pooling: Any, reduce: Any, group_reduce: Any, sink: Any, scale: Any
) -> tuple[int, int, str, str, str, int, float | None]:
    w = integer("window", window, low=1)
    k = integer("kernel", kernel, low=1)
    if k % 2 == 0:
        raise ValueError(f"kernel: expected an odd pooling width >= 1, got {k}")
    pool = choice("pooling", pooling, POOLINGS)
    red = choice("reduce", reduce, REDUCES)
    grp = choice("group_reduce", group_reduce, GROUP_REDUCES)
    s = integer("sink", sink, low=0)
    sc = None if scale is None else real("scale", scale, low=0.0, low_open=True)
    return w, k, pool, red, grp, s, sc


def key_mask_grid(key_mask: Any, batch: int, n: int) -> np.ndarray:
    """``key_mask`` (bool or 0/1, broadcastable to ``(B, N)``) as a bool ``(B, N)`` array."""
    if key_mask is None:
        return np.ones((batch, n), dtype=bool)
    m = as_array("key_mask", key_mask)
    if m.dtype != np.bool_:
        if m.dtype.kind not in "iuf":
            raise TypeError(f"key_mask: expected a bool or 0/1 array, got dtype {m.dtype}")
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("key_mask: expected bool or 0/1 values")
        m = m == 1
    try:
        return np.broadcast_to(m, (batch, n)).copy()
    except ValueError:
        raise ValueError(
            f"key_mask: shape {m.shape} does not broadcast to (B, N) = {(batch, n)}"
        ) from None


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
    """SnapKV-style token scores ``(B, H_out, N)``, higher = keep (``matrix.md`` §2.4).

    Input: ``attention (B, H_q, w, N)`` (post-softmax rows of the last ``w = window`` queries),
    or post-RoPE ``queries (B, H_q, w, d)`` with ``keys (B, H_kv, N, d)`` (``N ≥ w``): logits
    ``scale·q·k`` (``scale = 1/√d`` by default), query row ``r`` sees keys ``j ≤ N − w + r``,
    ``key_mask`` False keys get ``−inf``, softmax per row (a row that sees no key contributes 0).
    Keys are shared by the ``G = H_q / H_kv`` query heads of a group (query head ``h`` reads KV
    head ``h // G``), never repeated.

    1. ``a_j = Σ_r A[r, j]`` (``reduce="sum"``) or the mean, on the prefix ``j < N − w``.
    2. Pooling over the prefix, stride 1, half-width ``kernel // 2``: ``"max"`` over in-range
       neighbours; ``"avg"``: their sum divided by ``kernel`` (torch ``avg_pool1d`` zero padding);
       ``"none"`` or ``kernel=1``: none.
    3. ``n_kv_heads`` given (inferred from ``keys``): each group of ``G`` query heads reduced by
       ``group_reduce``; otherwise ``H_out = H_q``.
    4. Protected positions — the last ``w`` and the first ``sink`` — get the per-``(b, h)`` maximum
       of the unprotected scores + 1 (1 if there are none); ``key_mask`` False positions ``−inf``.

    Presets: UNComp LongBench = the defaults; SnapKV ``init_snapkv`` ``window=32, kernel=5,
    pooling="avg"``; kvpress ``SnapKVPress`` ``window=64, kernel=5, pooling="avg",
    reduce="mean"`` with KV-head ``"mean"``. Ref: arXiv 2404.14469,
    FasterDecoding/SnapKV ``snapkv_utils.py``; NVIDIA/kvpress ``snapkv_press.py``.
    """
    w, k, pool, red, grp, sink, sc = check_snapkv_options(
        window, kernel, pooling, reduce, group_reduce, sink, scale
    )
    if attention is not None:
        if queries is not None or keys is not None:
            raise ValueError("attention: give either attention or queries and keys, not both")
        a = finite_float64("attention", attention, ndim=4)
        batch, h_q, rows, n = a.shape
        if rows != w:
            raise ValueError(f"attention: expected w = window = {w} query rows, got {rows}")
        valid = key_mask_grid(key_mask, batch, n)
        probs = a
        if n_kv_heads is not None:
            h_kv = integer("n_kv_heads", n_kv_heads, low=1)
            if h_q % h_kv:
                raise ValueError(f"n_kv_heads: H_q = {h_q} is not a multiple of {h_kv}")
    else:
        if queries is None or keys is None:
            raise ValueError("queries: give attention, or both queries and keys")
        q = finite_float64("queries", queries, ndim=4)
        kk = finite_float64("keys", keys, ndim=4)
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
        n_kv_heads = h_kv
        valid = key_mask_grid(key_mask, batch, n)
        step = 1.0 / math.sqrt(d) if sc is None else sc
        probs = np.zeros((batch, h_q, w, n))
        group = h_q // h_kv
        for b in range(batch):
            for h in range(h_q):
                for r in range(w):
                    seen = np.arange(n) <= n - w + r
                    seen &= valid[b]
                    if not seen.any():
                        continue
                    logits = step * (kk[b, h // group] @ q[b, h, r])
                    logits = np.where(seen, logits, -np.inf)
                    e = np.exp(logits - logits[seen].max())
                    probs[b, h, r] = e / e.sum()
    prefix = max(n - w, 0)
    a_sum = probs.sum(axis=2) if red == "sum" else probs.mean(axis=2)
    pooled = np.zeros_like(a_sum)
    half = k // 2
    for j in range(prefix):
        lo, hi = max(0, j - half), min(prefix, j + half + 1)
        if pool == "none" or k == 1:
            pooled[..., j] = a_sum[..., j]
        elif pool == "max":
            pooled[..., j] = a_sum[..., lo:hi].max(axis=-1)
        else:
            pooled[..., j] = a_sum[..., lo:hi].sum(axis=-1) / k
    if n_kv_heads is not None:
        h_kv = int(n_kv_heads)
        g = pooled.reshape(batch, h_kv, h_q // h_kv, n)
        pooled = {"mean": g.mean, "max": g.max, "sum": g.sum}[grp](axis=2)
    protected = np.zeros(n, dtype=bool)
    protected[prefix:] = True
    protected[: min(sink, n)] = True
    scores = pooled.copy()
    for b in range(batch):
        for h in range(scores.shape[1]):
            free = ~protected & valid[b]
            top = scores[b, h, free].max() + 1.0 if free.any() else 1.0
            scores[b, h, protected] = top
            scores[b, h, ~valid[b]] = -np.inf
    return scores


# ---------------------------------------------------------------------------------------------
# §2.5 select_tokens
# ---------------------------------------------------------------------------------------------


def check_scores(scores: np.ndarray) -> None:
    if scores.ndim != 3:
        raise ValueError(f"scores: expected shape (B, H, N), got {scores.shape}")
    if np.any(np.isnan(scores)):
        raise ValueError("scores: contains NaN")
    if np.any(np.isposinf(scores)):
        raise ValueError("scores: contains +inf (-inf marks a position that is never kept)")


def budget_grid(budgets: Any, batch: int, n_heads: int, n: int, finite: np.ndarray) -> np.ndarray:
    """``budgets`` (int, ``(H,)`` or ``(B, H)``) as int64 ``(B, H)``, each in ``[0, finite]``.

    ``finite (B, H)``: positions with a finite score; ``N`` bounds them too."""
    if isinstance(budgets, (int, np.integer)) and not isinstance(budgets, (bool, np.bool_)):
        grid = np.full((batch, n_heads), int(budgets), dtype=np.int64)
    else:
        b = int64_array("budgets", budgets)
        if b.shape not in ((n_heads,), (batch, n_heads)):
            raise ValueError(
                f"budgets: expected an int, (H,) = ({n_heads},) or (B, H) = {(batch, n_heads)}, "
                f"got shape {b.shape}"
            )
        grid = np.broadcast_to(b, (batch, n_heads)).astype(np.int64)
    if np.any(grid < 0) or np.any(grid > n):
        raise ValueError(f"budgets: expected budgets in [0, N = {n}]")
    if np.any(grid > finite):
        raise ValueError(
            "budgets: a budget exceeds the number of positions with a finite score "
            "(masked positions are never kept)"
        )
    return grid


def select_tokens(scores: Any, budgets: Any, *, return_mask: bool = False) -> Any:
    """The ``budgets`` highest-scoring positions per ``(b, h)`` (``matrix.md`` §2.5).

    ``scores (B, H, N)`` (``−inf`` = never kept, e.g. padding); ``budgets``: int, ``(H,)`` or
    ``(B, H)``. Ties: lower position first. Returns ``(indices int64 (B, H, b_max), lengths int64
    (B, H))`` with the kept positions in ascending order, padded with ``−1``; or, with
    ``return_mask=True``, a bool ``(B, H, N)`` keep mask (the masking layout of §2.6, which saves
    no memory). A budget outside ``[0, N]`` or above the number of finite scores → ``ValueError``.
    """
    s = float64_array("scores", scores)
    check_scores(s)
    batch, n_heads, n = s.shape
    finite = np.isfinite(s).sum(axis=-1)
    grid = budget_grid(budgets, batch, n_heads, n, finite)
    b_max = int(grid.max()) if grid.size else 0
    indices = np.full((batch, n_heads, b_max), -1, dtype=np.int64)
    mask = np.zeros(s.shape, dtype=bool)
    for b in range(batch):
        for h in range(n_heads):
            # Sort by (score descending, position ascending).
            ranked = sorted(range(n), key=lambda j, b=b, h=h: (-s[b, h, j], j))
            kept = sorted(ranked[: grid[b, h]])
            indices[b, h, : len(kept)] = kept
            mask[b, h, kept] = True
    if return_mask:
        return mask
    return indices, grid.copy()


# ---------------------------------------------------------------------------------------------
# §2.6 compress_kv
# ---------------------------------------------------------------------------------------------


def check_cache(keys: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """``keys (B, H, N, d)`` and ``values (B, H, N, d_v)`` of a float dtype (never upcast)."""
    k = as_array("keys", keys)
    v = as_array("values", values)
    for name, x in (("keys", k), ("values", v)):
        if x.dtype.kind != "f" and x.dtype.name != "bfloat16":
            raise TypeError(f"{name}: expected a float array, got dtype {x.dtype}")
        if x.ndim != 4:
            raise ValueError(f"{name}: expected shape (B, H_kv, N, d), got {x.shape}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"values: expected (B, H, N) = {k.shape[:3]} as keys, got {v.shape[:3]}")
    return k, v


def check_plan(indices: Any, lengths: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``indices (B, H, b_max)`` and ``lengths (B, H)``: every index below ``lengths`` in
    ``[0, N)``."""
    batch, n_heads, n = shape[:3]
    idx = int64_array("indices", indices)
    lens = int64_array("lengths", lengths)
    if idx.ndim != 3 or idx.shape[:2] != (batch, n_heads):
        raise ValueError(f"indices: expected shape (B, H, b_max) = ({batch}, {n_heads}, b_max)")
    if lens.shape != (batch, n_heads):
        raise ValueError(f"lengths: expected shape (B, H) = {(batch, n_heads)}, got {lens.shape}")
    if np.any(lens < 0) or np.any(lens > idx.shape[2]):
        raise ValueError(f"lengths: expected values in [0, b_max = {idx.shape[2]}]")
    used = np.arange(idx.shape[2]) < lens[..., None]
    if np.any(used & ((idx < 0) | (idx >= n))):
        raise ValueError(f"indices: a kept index lies outside [0, N = {n})")
    return idx, lens


def compress_kv(keys: Any, values: Any, indices: Any, lengths: Any, *, layout: str = "padded"):
    """Gather a plan's kept tokens from a KV cache (``matrix.md`` §2.6).

    ``keys (B, H_kv, N, d)``, ``values (B, H_kv, N, d_v)`` of any float dtype (kept as is);
    ``indices``/``lengths`` from :func:`select_tokens`. Keys keep their RoPE rotation.

    - ``"padded"`` → ``(keys (B, H, b_max, d), values, valid bool (B, H, b_max))``, unused slots
      zero. Memory ``B·H·max_h b_h·d``: saves only down to the largest head.
    - ``"grouped"`` → list of ``(heads int64 (H_g,), keys (B, H_g, b_g, d), values)``, one entry
      per distinct budget, ascending; each head needs equal lengths over the batch. Memory
      ``B·Σ_h b_h·d``: exactly the plan (UNComp's list-of-groups cache).
    - ``"flat"`` → ``(keys (Σ lengths, d), values, cu_seqlens int64 (B·H + 1,))`` in ``(b, h)``
      row-major order (flash-attention varlen, one "sequence" per head). Memory
      ``Σ lengths · d``: exactly the plan.

    A full cache plus a keep mask (``select_tokens(..., return_mask=True)``, kvpress' AdaKV
    "fake keys") saves nothing. Ref: menik1126/UNComp ``cache_revise.py``; NVIDIA/kvpress
    ``adakv_press.py``.
    """
    k, v = check_cache(keys, values)
    idx, lens = check_plan(indices, lengths, k.shape)
    layout = choice("layout", layout, LAYOUTS)
    batch, n_heads = k.shape[:2]
    if layout == "padded":
        b_max = idx.shape[2]
        out_k = np.zeros((batch, n_heads, b_max, k.shape[3]), dtype=k.dtype)
        out_v = np.zeros((batch, n_heads, b_max, v.shape[3]), dtype=v.dtype)
        valid = np.zeros((batch, n_heads, b_max), dtype=bool)
        for b in range(batch):
            for h in range(n_heads):
                rows = idx[b, h, : lens[b, h]]
                out_k[b, h, : len(rows)] = k[b, h, rows]
                out_v[b, h, : len(rows)] = v[b, h, rows]
                valid[b, h, : len(rows)] = True
        return out_k, out_v, valid
    if layout == "flat":
        parts_k, parts_v = [], []
        for b in range(batch):
            for h in range(n_heads):
                rows = idx[b, h, : lens[b, h]]
                parts_k.append(k[b, h, rows])
                parts_v.append(v[b, h, rows])
        cu = np.concatenate([[0], np.cumsum(lens.reshape(-1))]).astype(np.int64)
        return (
            np.concatenate(parts_k, axis=0) if parts_k else np.zeros((0, k.shape[3]), k.dtype),
            np.concatenate(parts_v, axis=0) if parts_v else np.zeros((0, v.shape[3]), v.dtype),
            cu,
        )
    if np.any(lens != lens[:1]):
        raise ValueError("lengths: layout='grouped' needs equal lengths over the batch per head")
    groups = []
    for budget in sorted(set(lens[0].tolist()) if batch else []):
        heads = np.array([h for h in range(n_heads) if lens[0, h] == budget], dtype=np.int64)
        gk = np.zeros((batch, len(heads), budget, k.shape[3]), dtype=k.dtype)
        gv = np.zeros((batch, len(heads), budget, v.shape[3]), dtype=v.dtype)
        for b in range(batch):
            for i, h in enumerate(heads):
                rows = idx[b, h, :budget]
                gk[b, i] = k[b, h, rows]
                gv[b, i] = v[b, h, rows]
        groups.append((heads, gk, gv))
    return groups
