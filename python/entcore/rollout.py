"""Rollout-buffer statistics for RLVR (``rollout.md``), on NumPy arrays, hot paths in Rust.

Token arrays are padded ``(B, L)`` with a mask, or packed ``(N,)`` with ``cu_seqlens``
(``rollout.md`` §0.1); unit-based statistics take ``scope`` and ``micro_batch`` (§0.2). Names,
arguments and defaults match ``entcore.reference.rollout`` (the float64 oracle).

The passes over every token run in the Rust core: the exact top-ρ selection
(:func:`high_entropy_mask`), the per-row sums of :func:`entropy_summary`, the sliding windows
of :func:`window_entropy`, the covariance terms of :func:`centered_cov` and
:func:`clip_cov_select`, and the top-k of :func:`kl_cov_select`. The statistics of a few numbers
per sequence or per unit (advantages, pass@k, schedules, PPO terms, ...) are the float64
reference functions themselves, re-exported here so that ``entcore.<name>`` exists for every name
of the spec; they return float64.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from entcore import _core
from entcore._layout import Layout, token_layout, unit_rows, unit_tokens
from entcore.reference._layout import real
from entcore.reference.rollout import (
    PPOTerms,
    _check_perm,
    _clip_bounds,
    _unit_perms,
    aepo_select,
    aepo_temperature,
    agg_loss,
    answer_entropy,
    canon_advantages,
    clip_cov_loss,
    detection_statistic,
    detection_threshold,
    entropy_position_curve,
    entropy_reduction,
    epo_band_penalty,
    epo_phase_weight,
    forking_token_loss,
    group_advantages,
    hwe_count,
    hwe_threshold,
    kl_cov_loss,
    nll_entropy_estimate,
    pass_at_k,
    peak_entropy_mask,
    pear_reward,
    phase_boundary,
    phase_entropy,
    ppo_loss,
    siren_regularizer,
    spear_recalibrate,
    spear_schedules,
    steer_weights,
    step_entropy_means,
    support_epsilon,
    support_metrics,
)

__all__ = [
    "PPOTerms",
    "aepo_select",
    "aepo_temperature",
    "agg_loss",
    "answer_entropy",
    "canon_advantages",
    "centered_cov",
    "clip_cov_loss",
    "clip_cov_select",
    "detection_statistic",
    "detection_threshold",
    "entropy_position_curve",
    "entropy_reduction",
    "entropy_summary",
    "epo_band_penalty",
    "epo_phase_weight",
    "forking_token_loss",
    "group_advantages",
    "high_entropy_mask",
    "hwe_count",
    "hwe_threshold",
    "kl_cov_loss",
    "kl_cov_select",
    "nll_entropy_estimate",
    "pass_at_k",
    "peak_entropy_mask",
    "pear_reward",
    "phase_boundary",
    "phase_entropy",
    "ppo_loss",
    "siren_regularizer",
    "spear_recalibrate",
    "spear_schedules",
    "steer_weights",
    "step_entropy_means",
    "support_epsilon",
    "support_metrics",
    "window_entropy",
]

MASK_METHODS = ("linear", "lower", "nearest", "topk", "higher", "midpoint")
NAN_POLICIES = ("raise", "omit", "propagate")


def high_entropy_mask(
    entropy: Any,
    mask: Any = None,
    *,
    rho: float = 0.2,
    method: str = "linear",
    cu_seqlens: Any = None,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    nan_policy: str = "raise",
    return_threshold: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The forking-token mask: the valid tokens whose entropy is in the top ``ρ`` of their unit.

    Per unit with sorted valid entropies ``x_(0) ≤ … ≤ x_(N−1)`` and ``h = (N − 1)(1 − ρ)``
    (snapped to an integer within ``2⁻³⁰·max(1, h)``):
    ``"linear"`` (TRL's ``torch.quantile`` then ``>=``) keeps ``H ≥ x_(⌈h⌉)`` with threshold
    ``τ = x_(⌊h⌋) + (h − ⌊h⌋)(x_(⌈h⌉) − x_(⌊h⌋))``; ``"lower"`` keeps ``H ≥ x_(⌊h⌋)``;
    ``"nearest"`` uses index ``round_half_even(h)``; ``"topk"`` keeps exactly ``⌈ρN⌉`` tokens, ties
    by lower index. Ties at the threshold are all kept (except ``"topk"``); an empty unit keeps
    nothing. Exact for any ``N``: an O(N) radix select in the Rust core, no sort, no size limit.

    Returns the bool mask in the layout of ``entropy`` and, with ``return_threshold=True``, the
    float64 ``τ`` of each unit (NaN for an empty unit).

    Wang et al., "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective
    Reinforcement Learning for LLM Reasoning", arXiv 2506.01939, §5.1; TRL
    ``GRPOTrainer.get_high_entropy_mask`` (``top_entropy_quantile``). Spec: ``rollout.md`` §3.
    """
    if method not in MASK_METHODS:
        raise ValueError(f"method: expected one of {MASK_METHODS}, got {method!r}")
    _check_nan_policy(nan_policy)
    rho = float(rho)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho: expected a value in [0, 1], got {rho}")
    values = _entropy_f32(entropy)
    layout, valid = token_layout("entropy", values, mask, cu_seqlens)
    flat = values.reshape(-1)
    units = unit_rows(layout.rows, scope, micro_batch)
    out = None
    thresholds = np.empty(len(units), dtype=np.float64)
    for u, rows in enumerate(units):
        tokens = unit_tokens(layout, rows)
        if isinstance(tokens, slice) and tokens == slice(0, flat.shape[0]):  # whole: no copy
            out, thresholds[u], _, _ = _core.high_entropy_select(
                flat, valid, rho, method, nan_policy
            )
            continue
        unit_valid = None if valid is None else np.ascontiguousarray(valid[tokens])
        selected, thresholds[u], _, _ = _core.high_entropy_select(
            np.ascontiguousarray(flat[tokens]), unit_valid, rho, method, nan_policy
        )
        if out is None:
            out = np.zeros(flat.shape[0], dtype=bool)
        out[tokens] = selected
    if out is None:
        out = np.zeros(flat.shape[0], dtype=bool)
    mask_out = out.reshape(values.shape)
    return (mask_out, thresholds) if return_threshold else mask_out


def entropy_summary(
    entropy: Any,
    mask: Any = None,
    *,
    cu_seqlens: Any = None,
    percentiles: Any = (1, 5, 10, 25, 50, 75, 90, 95, 99),
    low: float = 0.01,
    high: float = 0.672,
) -> dict[str, Any]:
    """Distribution of the valid token entropies, float64 accumulation (``rollout.md`` §4).

    ``count``, token-weighted ``mean`` and population ``std``, ``seq_mean`` (mean over non-empty
    rows of the row means), ``min``, ``max``, linear ``percentiles`` (as
    ``numpy.percentile(method="linear")``), ``frac_low = #{H < low}/N`` and
    ``frac_high = #{H > high}/N`` (strict). The 80/20 paper reports 50.64% below 0.01 and 20%
    above 0.672 for Qwen3-8B (arXiv 2506.01939, §3). Empty: ``count = 0``, NaN elsewhere.
    """
    qs = np.asarray(percentiles, dtype=np.float64)
    if qs.ndim != 1 or np.any((qs < 0) | (qs > 100)) or np.any(np.isnan(qs)):
        raise ValueError(f"percentiles: expected a 1-D sequence of values in [0, 100], got {qs}")
    low, high = float(low), float(high)
    values = _entropy_f32(entropy)
    layout, valid = token_layout("entropy", values, mask, cu_seqlens)
    flat = values.reshape(-1)
    count, total, total_sq = _core.row_stats(flat, valid, _offsets(layout), False)
    n = int(count.sum())
    if n == 0:
        nan = float("nan")
        return {
            "count": 0,
            "mean": nan,
            "seq_mean": nan,
            "std": nan,
            "min": nan,
            "max": nan,
            "percentiles": np.full(qs.shape, nan),
            "frac_low": nan,
            "frac_high": nan,
        }
    x = flat if valid is None else flat[valid]
    mean = float(total.sum()) / n
    rows = count > 0
    return {
        "count": n,
        "mean": mean,
        "seq_mean": float(np.mean(total[rows] / count[rows])),
        "std": float(np.sqrt(max(float(total_sq.sum()) / n - mean * mean, 0.0))),
        "min": float(x.min()),
        "max": float(x.max()),
        "percentiles": np.percentile(x.astype(np.float64), qs, method="linear"),
        "frac_low": np.count_nonzero(x < low) / n,
        "frac_high": np.count_nonzero(x > high) / n,
    }


def window_entropy(
    entropy: Any,
    mask: Any = None,
    *,
    window: int = 4,
    start: int = 0,
    cu_seqlens: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ARES window entropy ``W_t = (1/w) Σ_{j<w} H_{t+start+j}`` → ``(W, defined)``.

    Defined iff ``t`` and the ``w`` window positions are valid positions of the same row; ``W = 0``
    where undefined. ``start=0`` is the paper's window, ``start=1`` the released code's
    (``rollout.md`` §8). *ARES: Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level
    Entropy Shaping*, arXiv 2510.08457.
    """
    for name, value, low in (("window", window, 1), ("start", start, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    values = _entropy_f32(entropy)
    layout, valid = token_layout("entropy", values, mask, cu_seqlens)
    flat = values.reshape(-1)
    w, defined = _core.window_means(flat, valid, _offsets(layout), int(window), int(start))
    return w.reshape(values.shape), defined.reshape(values.shape)


def centered_cov(
    advantages: Any,
    logprob: Any,
    mask: Any = None,
    *,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    cu_seqlens: Any = None,
) -> np.ndarray:
    """Centred covariance ``c_t = (A_t − Ā)(ℓ_t − ℓ̄)`` per unit, float64, 0 off-mask.

    ``Ā``, ``ℓ̄`` are token-weighted means over the unit's valid tokens (a sequence advantage counts
    once per token), computed as ``x₀ + Σ(x − x₀)/n`` so a constant unit gives exactly 0. Cui et
    al., *The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models*, arXiv
    2505.22617 (verl ``compute_policy_loss_clip_cov`` / ``_kl_cov``). Spec: ``rollout.md`` §5.
    """
    adv, lp, layout, valid = _token_pair(advantages, logprob, mask, cu_seqlens)
    out = np.zeros(adv.size, dtype=np.float64)
    for tokens, unit_valid in _units(layout, valid, scope, micro_batch, adv.size):
        out[tokens] = _core.centered_cov(
            np.ascontiguousarray(adv[tokens]), np.ascontiguousarray(lp[tokens]), unit_valid
        )
    return out.reshape(np.shape(advantages))


def kl_cov_select(
    advantages: Any,
    logprob: Any,
    mask: Any = None,
    *,
    ratio: float = 2e-4,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    cu_seqlens: Any = None,
) -> np.ndarray:
    """KL-Cov selection: the ``k = max(1, ⌊ratio · N_valid⌋)`` valid tokens of each unit with the
    largest centred covariance ``c`` (:func:`centered_cov`), ties by lower index; none when a unit
    has no valid token. arXiv 2505.22617 (verl ``compute_policy_loss_kl_cov``; ``torch.topk``'s
    tie order is unspecified there). Spec: ``rollout.md`` §5.
    """
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio: expected a value in [0, 1], got {ratio}")
    adv, lp, layout, valid = _token_pair(advantages, logprob, mask, cu_seqlens)
    selected = np.zeros(adv.size, dtype=bool)
    for tokens, unit_valid in _units(layout, valid, scope, micro_batch, adv.size):
        unit_adv, unit_lp = np.ascontiguousarray(adv[tokens]), np.ascontiguousarray(lp[tokens])
        n_valid = unit_adv.size if unit_valid is None else int(np.count_nonzero(unit_valid))
        if n_valid == 0:
            continue
        c = _core.centered_cov(unit_adv, unit_lp, unit_valid)
        chosen = _core.top_k(c, unit_valid, max(1, int(np.floor(ratio * n_valid))))
        flat_index = np.arange(adv.size)[tokens][chosen]
        selected[flat_index] = True
    return selected.reshape(np.shape(advantages))


def clip_cov_select(
    advantages: Any,
    logprob: Any,
    old_logprob: Any,
    mask: Any,
    *,
    ratio: float = 2e-4,
    lb: float = 1.0,
    ub: float = 5.0,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    seed: Any = None,
    perm: Any = None,
    return_candidates: bool = False,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    cu_seqlens: Any = None,
) -> Any:
    """Clip-Cov token selection (``rollout.md`` §5), the covariance in the Rust core. Per unit:

    1. ``r = exp(ℓ − ℓ^old)`` (no clamp), ``l1 = −A r``, ``l2 = −A clip(r, 1 − ε_low, 1 + ε_high)``,
       ``ppo_clipped = (l2 > l1) ∧ M``;
    2. ``c`` as :func:`centered_cov`, quota ``n = max(⌊ratio · N_valid⌋, 1)``;
    3. candidates ``M ∧ ¬ppo_clipped ∧ lb < c < ub`` in flat order;
    4. selected ``= candidates[π[:min(n, #cand)]]`` with ``π`` from ``perm`` (one array per unit)
       or ``numpy.random.default_rng(seed).permutation(#cand)`` (one generator, drawn only for
       units with candidates, in increasing unit id). Neither ``seed`` nor ``perm`` →
       ``ValueError``.

    Uniform among candidates, not top-k (as published). ``return_candidates=True`` returns
    ``(selected, candidates)``. Cui et al., *The Entropy Mechanism of Reinforcement Learning for
    Reasoning Language Models*, arXiv 2505.22617 (verl ``compute_policy_loss_clip_cov``, bit for
    bit with verl's ``torch.randperm`` draw passed as ``perm``).
    """
    if seed is None and perm is None:
        raise ValueError("seed: Clip-Cov selection is random; pass seed or perm")
    ratio = real("ratio", ratio, low=0.0, high=1.0)
    lb, ub = real("lb", lb), real("ub", ub)
    eps_low, eps_high = _clip_bounds(clip_low, clip_high)
    adv, lp, layout, valid = _token_pair(advantages, logprob, mask, cu_seqlens)
    old = np.asarray(old_logprob)
    if old.dtype.kind != "f":
        raise TypeError(f"old_logprob: expected a float array, got dtype {old.dtype}")
    if old.shape != np.shape(advantages):
        raise ValueError(
            f"old_logprob: expected shape {np.shape(advantages)} like advantages, got {old.shape}"
        )
    old = old.astype(np.float64, copy=False).reshape(-1)
    taken = np.ones(adv.size, dtype=bool) if valid is None else valid
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.exp(np.where(taken, lp - old, 0.0))
        ppo_clipped = taken & (-adv * np.clip(r, 1.0 - eps_low, 1.0 + eps_high) > -adv * r)
    units = list(_units(layout, valid, scope, micro_batch, adv.size)) if layout.rows else []
    perms = None if perm is None else _unit_perms(perm, len(units))
    rng = np.random.default_rng(seed) if perms is None else None
    candidates = np.zeros(adv.size, dtype=bool)
    selected = np.zeros(adv.size, dtype=bool)
    for u, (tokens, unit_valid) in enumerate(units):
        index = np.arange(adv.size)[tokens]
        unit_taken = taken[tokens]
        c = _core.centered_cov(
            np.ascontiguousarray(adv[tokens]), np.ascontiguousarray(lp[tokens]), unit_valid
        )
        cand_index = index[unit_taken & ~ppo_clipped[tokens] & (lb < c) & (c < ub)]
        candidates[cand_index] = True
        if perms is not None:
            pi = _check_perm(perms[u], cand_index.size, u)
        elif cand_index.size > 0:
            pi = rng.permutation(cand_index.size)
        else:
            continue
        quota = max(int(np.floor(ratio * np.count_nonzero(unit_taken))), 1)
        selected[cand_index[pi[: min(quota, cand_index.size)]]] = True
    shape = np.shape(advantages)
    out = selected.reshape(shape)
    return (out, candidates.reshape(shape)) if return_candidates else out


def _token_pair(
    advantages: Any, logprob: Any, mask: Any, cu_seqlens: Any
) -> tuple[np.ndarray, np.ndarray, Layout, np.ndarray | None]:
    """Two float64 token arrays of one layout, flattened, and the flat validity mask."""
    adv = np.asarray(advantages)
    lp = np.asarray(logprob)
    for name, x in (("advantages", adv), ("logprob", lp)):
        if x.dtype.kind != "f":
            raise TypeError(f"{name}: expected a float array, got dtype {x.dtype}")
    if lp.shape != adv.shape:
        raise ValueError(f"logprob: expected shape {adv.shape} like advantages, got {lp.shape}")
    layout, valid = token_layout("advantages", adv, mask, cu_seqlens)
    flat = (np.ascontiguousarray(x, dtype=np.float64).reshape(-1) for x in (adv, lp))
    return *flat, layout, valid


def _units(layout: Layout, valid: np.ndarray | None, scope: str, micro_batch: Any, n: int):
    """``(tokens, unit_valid)`` of every unit: a slice or index array and its mask (or None)."""
    for rows in unit_rows(layout.rows, scope, micro_batch):
        tokens = unit_tokens(layout, rows)
        if isinstance(tokens, slice) and tokens == slice(0, n):
            yield tokens, valid
        else:
            yield tokens, None if valid is None else np.ascontiguousarray(valid[tokens])


def _offsets(layout: Layout) -> np.ndarray:
    """``cu_seqlens`` of the layout (padded rows are segments of equal width)."""
    if layout.cu_seqlens is not None:
        return layout.cu_seqlens
    return np.arange(layout.rows + 1, dtype=np.int64) * int(layout.width or 0)


def _check_nan_policy(nan_policy: str) -> None:
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy: expected one of {NAN_POLICIES}, got {nan_policy!r}")


def _entropy_f32(entropy: Any) -> np.ndarray:
    """Entropies as float32 (the spec's ``x`` values): float16/bfloat16 widened exactly."""
    array = np.asarray(entropy)
    if array.dtype not in (np.float32, np.float64, np.float16, np.dtype(ml_dtypes.bfloat16)):
        raise TypeError(f"entropy: expected a float array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)
