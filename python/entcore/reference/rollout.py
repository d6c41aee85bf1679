"""Float64 NumPy oracle for the rollout-buffer statistics of ``rollout.md`` (the executable spec).

Written to be read, not to be fast (``conventions.md``, "The three faces of every function"):
float inputs are upcast exactly to float64, sums run in float64, results are float64 (counts and
indices int64, masks bool). The Rust-backed ``entcore.<name>`` and ``entcore.torch.<name>`` are
held to these values in the tests. This module never imports the compiled core.

Common rules (``rollout.md`` §0):

- Layouts (§0.1): every function with token arrays takes them padded ``(B, L)`` with ``mask``, or
  packed ``(N,)`` with ``cu_seqlens`` (``mask`` then optional; ``mask=None`` means all valid).
  Both are read into one ``(B, W)`` grid (``entcore.reference._layout``), so the two layouts give
  identical results; values at invalid positions are never read (NaN there is harmless).
  Per-token outputs have the input layout with 0 (False) at invalid positions. ``cu_seqlens`` is
  also accepted by the per-token functions whose signature in the spec omits it
  (``clip_cov_loss``, ``kl_cov_loss``, ``nll_entropy_estimate``, ``siren_regularizer``), as §0.1
  asks of every function with token arrays.
- Units (§0.2): the unit-based functions take ``scope`` (``"micro_batch"`` default, or
  ``"batch"``) and ``micro_batch`` (``None``: all rows are one micro-batch; an int: rows per
  consecutive micro-batch; an int64 ``(B,)`` array: the micro-batch id of each row). The torch-only
  ``process_group`` and ``generator`` are not arguments here.
- Ties break by lower flat index (row-major padded order = packed order); randomness only through
  ``seed`` (``numpy.random.default_rng(seed)``) or an explicit ``perm``; empty units give
  all-False masks and zero losses; undefined ratios (``0/0``) are NaN (§0.3).
- NaN at a valid position: ``ValueError`` naming the argument (``conventions.md``, the default
  ``nan_policy="raise"``), except in :func:`high_entropy_mask`, the one function with a
  ``nan_policy`` argument (§3). Wrong dtypes → ``TypeError``; wrong shapes, ratios outside their
  range, bad ``cu_seqlens``, missing required values → ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from entcore.reference._layout import (
    Layout,
    bool_array,
    bool_vector,
    choice,
    float64_array,
    float_vector,
    int64_array,
    int_vector,
    integer,
    layout,
    linear_quantile,
    real,
    units,
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

AGG_MODES = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
    "grpo",
    "bnpo",
    "dr_grpo",
    "dapo",
)
QUANTILE_METHODS = ("linear", "lower", "higher", "nearest", "midpoint", "topk")
HIGH_ENTROPY_NAN_POLICIES = ("raise", "propagate", "omit")

#: ``h`` within ``2⁻³⁰·max(1, h)`` of an integer is snapped to it (§3).
SNAP = 2.0**-30

#: STEER's floor for ``M`` in the exponential mode (§6).
STEER_M_FLOOR = 0.02


class PPOTerms(NamedTuple):
    """Per-token PPO loss and its metrics (``rollout.md`` §2, §5).

    ``loss``, ``ratio``: float64 in the input layout (0 off-mask); ``clipped``: bool (False
    off-mask); ``clipfrac``, ``clipfrac_lower``, ``ppo_kl``: float64 scalars (NaN when the mask is
    empty: a ``0/0`` mean, §0.3).
    """

    loss: np.ndarray
    ratio: np.ndarray
    clipped: np.ndarray
    clipfrac: float
    clipfrac_lower: float
    ppo_kl: float


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _scalar(value: float) -> np.float64:
    return np.float64(value)


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; ``0/0`` (and ``x/0``) is NaN (§0.3)."""
    return numerator / denominator if denominator != 0 else math.nan


def _safe_div(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; a zero denominator gives 0 (losses, §1)."""
    return numerator / denominator if denominator != 0 else 0.0


def _fsum(values: Any) -> float:
    """Exactly rounded float64 sum (``math.fsum``): independent of order and layout. Falls back
    to ``numpy.sum`` when a value is not finite (``fsum`` refuses ``inf − inf``)."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(flat)):
        with np.errstate(invalid="ignore"):
            return float(np.sum(flat))
    return math.fsum(flat.tolist())


def _row_sums(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(B,)``: the sum of each grid row over its valid cells."""
    return np.array([_fsum(values[b][valid[b]]) for b in range(valid.shape[0])], dtype=np.float64)


def _masked_mean(values: np.ndarray, valid: np.ndarray) -> float:
    """Mean over the valid cells, NaN when there is none."""
    return _ratio(_fsum(values[valid]), float(np.count_nonzero(valid)))


def _snap(h: float) -> float:
    """``h`` snapped to the nearest integer when within ``2⁻³⁰·max(1, h)`` of it (§3)."""
    nearest = float(round(h))
    if abs(h - nearest) <= SNAP * max(1.0, h):
        return nearest
    return h


def _cell_units(lay: Layout, scope: Any, micro_batch: Any) -> tuple[np.ndarray, int]:
    """``(B, W)`` unit id of every grid cell and the number of units."""
    row_unit, n_units = units(scope, micro_batch, lay.n_rows)
    return np.broadcast_to(row_unit[:, None], lay.slot.shape), n_units


def _nonneg_count(name: str, x: Any) -> float | None:
    if x is None:
        return None
    return real(name, x, low=0.0)


def _clip_bounds(clip_low: Any, clip_high: Any) -> tuple[float, float]:
    low = real("clip_low", clip_low, low=0.0)
    high = low if clip_high is None else real("clip_high", clip_high, low=0.0)
    return low, high


def _pg_terms(
    advantages: np.ndarray, ratio: np.ndarray, eps_low: float, eps_high: float
) -> tuple[np.ndarray, np.ndarray]:
    """``l1 = −A r`` and ``l2 = −A clip(r, 1 − ε_low, 1 + ε_high)`` (§2)."""
    with np.errstate(invalid="ignore", over="ignore"):
        l1 = -advantages * ratio
        l2 = -advantages * np.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    return l1, l2


def _exp(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.exp(x)


# ---------------------------------------------------------------------------------------------
# §1 Loss aggregation
# ---------------------------------------------------------------------------------------------


def agg_loss(
    loss: Any,
    mask: Any,
    mode: str = "token-mean",
    *,
    cu_seqlens: Any = None,
    dp_size: int = 1,
    batch_num_tokens: Any = None,
    global_batch_size: Any = None,
    loss_scale_factor: Any = None,
    max_completion_length: Any = None,
    num_items_in_batch: Any = None,
    num_processes: int = 1,
    grad_accum_steps: int = 1,
) -> np.float64:
    """Reduce a per-token loss to a scalar (``rollout.md`` §1).

    With ``S_b = Σ_t L_bt M_bt``, ``n_b`` valid tokens of row ``b``, ``B`` rows (empty ones
    included) and ``𝔅 = {b : n_b > 0}``:

    - ``"token-mean"``: ``Σ_b S_b / D · dp_size``, ``D = batch_num_tokens`` or ``Σ_b n_b`` (verl).
    - ``"seq-mean-token-sum"``: ``Σ_{b∈𝔅} S_b / G · dp_size``, ``G = global_batch_size`` or
      ``|𝔅|`` (verl).
    - ``"seq-mean-token-mean"``: ``Σ_{b∈𝔅} (S_b / n_b) / G · dp_size`` (verl).
    - ``"seq-mean-token-sum-norm"``: ``Σ_b S_b / loss_scale_factor`` (default: the padded width
      ``L``; required when packed), no ``dp_size`` (verl, Dr.GRPO).
    - ``"grpo"``: ``(1/B) Σ_b S_b / max(n_b, 1) / grad_accum_steps`` (TRL).
    - ``"bnpo"``: ``Σ_b S_b / max(Σ_b n_b, 1) / grad_accum_steps`` (TRL).
    - ``"dr_grpo"``: ``Σ_b S_b / (B · max_completion_length) / grad_accum_steps``; the argument
      is required (TRL).
    - ``"dapo"``: ``Σ_b S_b / (num_items_in_batch / num_processes)``, ``num_items_in_batch``
      defaulting to the local ``Σ n_b`` (TRL's default ``loss_type``).

    A zero denominator gives 0; verl's ``+1e-8`` on ``n_b`` is not reproduced. Legacy verl
    (≤ 0.4, and PRIME-RL, STEER, SIREN, CANON) is ``global_batch_size=B``.

    Matches verl ``verl/trainer/ppo/core_algos.py :: agg_loss`` and TRL
    ``trl/trainer/grpo_trainer.py :: GRPOTrainer._compute_loss``. Papers: *Understanding
    R1-Zero-Like Training: A Critical Perspective* (arXiv 2503.20783); *DAPO: An Open-Source LLM
    Reinforcement Learning System at Scale* (arXiv 2503.14476).

    Returns a float64 scalar.
    """
    mode = choice("mode", mode, AGG_MODES)
    lay = layout("loss", loss, mask, cu_seqlens)
    values = lay.floats("loss", loss)
    dp = integer("dp_size", dp_size, low=1)
    accum = integer("grad_accum_steps", grad_accum_steps, low=1)
    processes = integer("num_processes", num_processes, low=1)
    tokens = _nonneg_count("batch_num_tokens", batch_num_tokens)
    global_batch = _nonneg_count("global_batch_size", global_batch_size)
    scale_factor = _nonneg_count("loss_scale_factor", loss_scale_factor)
    completion = _nonneg_count("max_completion_length", max_completion_length)
    items = _nonneg_count("num_items_in_batch", num_items_in_batch)

    row_sums = _row_sums(values, lay.valid)  # S_b
    row_counts = np.count_nonzero(lay.valid, axis=1)  # n_b
    n_rows = lay.n_rows
    total = _fsum(values[lay.valid])  # Σ_b S_b
    n_valid = float(np.sum(row_counts))
    nonempty = row_counts > 0

    if mode == "token-mean":
        denominator = n_valid if tokens is None else tokens
        return _scalar(_safe_div(total, denominator) * dp)
    if mode == "seq-mean-token-sum":
        denominator = float(np.count_nonzero(nonempty)) if global_batch is None else global_batch
        return _scalar(_safe_div(_fsum(row_sums[nonempty]), denominator) * dp)
    if mode == "seq-mean-token-mean":
        denominator = float(np.count_nonzero(nonempty)) if global_batch is None else global_batch
        row_means = row_sums[nonempty] / row_counts[nonempty]
        return _scalar(_safe_div(_fsum(row_means), denominator) * dp)
    if mode == "seq-mean-token-sum-norm":
        if scale_factor is None:
            if lay.packed:
                raise ValueError(
                    "loss_scale_factor: required with packed inputs (cu_seqlens) in mode "
                    "'seq-mean-token-sum-norm' (the default is the padded width L)"
                )
            scale_factor = float(lay.shape[1])
        return _scalar(_safe_div(total, scale_factor))
    if mode == "grpo":
        per_row = row_sums / np.maximum(row_counts, 1)
        return _scalar(_safe_div(_fsum(per_row), float(n_rows)) / accum)
    if mode == "bnpo":
        return _scalar(total / max(n_valid, 1.0) / accum)
    if mode == "dr_grpo":
        if completion is None:
            raise ValueError("max_completion_length: required for mode 'dr_grpo'")
        return _scalar(_safe_div(total, n_rows * completion) / accum)
    # "dapo"
    items = n_valid if items is None else items
    return _scalar(_safe_div(total, items / processes))


# ---------------------------------------------------------------------------------------------
# §2 PPO/GRPO pieces
# ---------------------------------------------------------------------------------------------


def ppo_loss(
    logprob: Any,
    old_logprob: Any,
    advantages: Any,
    mask: Any,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    clip_c: float | None = None,
    log_ratio_clamp: float | None = 20.0,
    cu_seqlens: Any = None,
) -> PPOTerms:
    """Clipped PPO surrogate per token (``rollout.md`` §2).

    ``Δ = ℓ − ℓ^old`` clamped to ``±log_ratio_clamp`` (``None``: no clamp); ``r = exp(Δ)``;
    ``l1 = −A r``; ``l2 = −A clip(r, 1 − ε_low, 1 + ε_high)`` (``clip_high=None`` → ``ε_low``);
    ``l = max(l1, l2)`` (= TRL's ``−min(rA, clip(r)A)``). Dual clip (``clip_c > 1``; verl 3.0,
    STEER 10): ``l = min(l, −A·clip_c)`` where ``A < 0``.

    ``clipped = (l2 > l1) ∧ M``; ``clipfrac = mean_M(clipped)``; ``clipfrac_lower =
    mean_M(A < 0 ∧ max(l1, l2) > −A·clip_c)`` (0 without dual clip); ``ppo_kl = mean_M(−Δ)`` (the
    clamped ``Δ``, as verl). ``loss`` is per token (0 off-mask), for :func:`agg_loss`.

    Defaults are verl's (ε 0.2/0.2); DAPO and the 80/20 paper use 0.2/0.28.
    Paper: *Proximal Policy Optimization Algorithms* (arXiv 1707.06347). Matches verl
    ``core_algos.py :: compute_policy_loss_vanilla``.
    """
    lay = layout("logprob", logprob, mask, cu_seqlens)
    lp = lay.floats("logprob", logprob)
    old = lay.floats("old_logprob", old_logprob)
    adv = lay.floats("advantages", advantages)
    eps_low, eps_high = _clip_bounds(clip_low, clip_high)
    dual = None if clip_c is None else real("clip_c", clip_c, low=1.0, low_open=True)
    clamp = None if log_ratio_clamp is None else real("log_ratio_clamp", log_ratio_clamp, low=0.0)
    valid = lay.valid

    with np.errstate(invalid="ignore"):
        delta = lp - old
    if clamp is not None:
        delta = np.clip(delta, -clamp, clamp)
    delta = np.where(valid, delta, 0.0)
    ratio = _exp(delta)
    l1, l2 = _pg_terms(adv, ratio, eps_low, eps_high)
    clipped = (l2 > l1) & valid
    per_token = np.maximum(l1, l2)
    lower = np.zeros_like(valid)
    if dual is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            cap = -adv * dual
        lower = (adv < 0) & (per_token > cap) & valid
        per_token = np.where(adv < 0, np.minimum(per_token, cap), per_token)
    per_token = np.where(valid, per_token, 0.0)

    return PPOTerms(
        loss=lay.tokens(per_token),
        ratio=lay.tokens(np.where(valid, ratio, 0.0)),
        clipped=lay.tokens(clipped),
        clipfrac=_scalar(_masked_mean(clipped.astype(np.float64), valid)),
        clipfrac_lower=_scalar(_masked_mean(lower.astype(np.float64), valid)),
        ppo_kl=_scalar(_masked_mean(-delta, valid)),
    )


def _mean_exact_if_constant(values: np.ndarray) -> float:
    """Mean as ``x_0 + Σ (x_i − x_0) / n`` (``math.fsum``): exactly ``x_0`` for a constant group."""
    first = float(values[0])
    return first + math.fsum(float(v) - first for v in values) / values.size


def _unbiased_std(values: np.ndarray, mean: float) -> float:
    return math.sqrt(math.fsum((float(v) - mean) ** 2 for v in values) / (values.size - 1))


def group_advantages(
    rewards: Any, group: Any, *, scale: str = "group", eps: float = 1e-6
) -> np.ndarray:
    """GRPO outcome advantages (``rollout.md`` §2).

    ``μ_g``, ``σ_g``: mean and unbiased (ddof 1) std of the rewards of group ``g``.
    ``"group"``: ``(R_i − μ_g)/(σ_g + eps)``; ``"batch"``: ``σ`` = unbiased std of the whole
    batch (TRL ``scale_rewards="batch"``); ``"none"``: ``R_i − μ_g`` (Dr.GRPO; verl
    ``norm_adv_by_std_in_grpo=False``). Singleton group: ``μ = 0``, ``σ = 1`` (verl); a batch of
    one row has ``σ_batch = 1`` too (its unbiased std is undefined). ``eps``: verl 1e-6
    (default), TRL 1e-4. Group ids are arbitrary integers.

    The mean is ``x_0 + fsum(x_i − x_0)/n``, so a constant group gives exactly 0.

    Paper: *DeepSeekMath* (arXiv 2402.03300). Matches verl ``core_algos.py ::
    compute_grpo_outcome_advantage``, TRL ``GRPOTrainer._generate_and_score_completions``.
    Returns float64 ``(B,)``.
    """
    r = float_vector("rewards", rewards)
    g = int_vector("group", group, r.shape[0])
    scale = choice("scale", scale, ("group", "batch", "none"))
    eps = real("eps", eps, low=0.0)
    out = np.zeros(r.shape[0], dtype=np.float64)
    if r.shape[0] == 0:
        return out
    batch_sigma = 1.0
    if scale == "batch" and r.shape[0] > 1:
        batch_sigma = _unbiased_std(r, _mean_exact_if_constant(r))
    for gid in np.unique(g):
        rows = np.flatnonzero(g == gid)
        values = r[rows]
        if rows.size == 1:
            mu, sigma = 0.0, 1.0
        else:
            mu = _mean_exact_if_constant(values)
            sigma = _unbiased_std(values, mu)
        if scale == "group":
            out[rows] = (values - mu) / (sigma + eps)
        elif scale == "batch":
            out[rows] = (values - mu) / (batch_sigma + eps)
        else:
            out[rows] = values - mu
    return out


def pass_at_k(n: Any, c: Any, k: Any) -> Any:
    """Unbiased pass@k, vectorised over broadcast ``n``, ``c``, ``k`` (``rollout.md`` §2).

    ``1 − C(n−c, k)/C(n, k)``, computed as ``1 − Π_{i=n−c+1}^{n} (1 − k/i)`` in float64 (the
    product in increasing ``i``); 1 when ``n − c < k``. Requires ``0 ≤ c ≤ n``, ``1 ≤ k ≤ n``.
    Paper: *Evaluating Large Language Models Trained on Code* (arXiv 2107.03374), the numerically
    stable estimator of its Fig. 3. Returns float64 (a scalar for scalar inputs).
    """
    n_arr, c_arr, k_arr = (int64_array(name, x) for name, x in (("n", n), ("c", c), ("k", k)))
    try:
        n_b, c_b, k_b = np.broadcast_arrays(n_arr, c_arr, k_arr)
    except ValueError:
        raise ValueError(
            f"n, c, k: shapes {n_arr.shape}, {c_arr.shape}, {k_arr.shape} do not broadcast"
        ) from None
    if np.any((c_b < 0) | (c_b > n_b)):
        raise ValueError("c: expected 0 <= c <= n")
    if np.any((k_b < 1) | (k_b > n_b)):
        raise ValueError("k: expected 1 <= k <= n")
    out = np.empty(n_b.shape, dtype=np.float64)
    for index in np.ndindex(n_b.shape):
        ni, ci, ki = int(n_b[index]), int(c_b[index]), int(k_b[index])
        if ni - ci < ki:
            out[index] = 1.0
            continue
        product = 1.0
        for i in range(ni - ci + 1, ni + 1):
            product *= 1.0 - ki / i
        out[index] = 1.0 - product
    return out[()] if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------
# §3 Forking-token (top-ρ) mask
# ---------------------------------------------------------------------------------------------


def _top_rho(values: np.ndarray, rho: float, method: str) -> tuple[np.ndarray, float]:
    """Selection and threshold ``τ`` of one non-empty unit (values in flat order), §3."""
    n = values.size
    if method == "topk":
        k = math.ceil(_snap(rho * n))
        order = np.argsort(-values, kind="stable")  # descending, ties by lower index
        keep = np.zeros(n, dtype=bool)
        keep[order[:k]] = True
        tau = float(values[order[k - 1]]) if k > 0 else math.nan
        return keep, tau
    ordered = np.sort(values)
    h = _snap((n - 1) * (1.0 - rho))
    lo, hi = math.floor(h), math.ceil(h)
    x_lo, x_hi = float(ordered[lo]), float(ordered[hi])
    if method == "linear":
        tau = x_lo if lo == hi else x_lo + (h - lo) * (x_hi - x_lo)
        cut = x_hi
    elif method == "lower":
        tau = cut = x_lo
    elif method == "higher":
        tau = cut = x_hi
    elif method == "midpoint":
        tau = x_lo if lo == hi else (x_lo + x_hi) / 2.0
        cut = x_hi
    else:  # "nearest": round half to even, as torch.quantile and numpy
        tau = cut = float(ordered[round(h)])
    return values >= cut, tau


def high_entropy_mask(
    entropy: Any,
    mask: Any,
    *,
    rho: float = 0.2,
    method: str = "linear",
    cu_seqlens: Any = None,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    nan_policy: str = "raise",
    return_threshold: bool = False,
) -> Any:
    """Forking-token mask: the top-``ρ`` entropy tokens of each unit (``rollout.md`` §3).

    In a unit with valid entropies ``x_(0) ≤ … ≤ x_(N−1)``: ``h = (N − 1)(1 − ρ)`` in float64,
    snapped to the nearest integer when within ``2⁻³⁰·max(1, h)`` of it.

    - ``"linear"`` (TRL: ``torch.quantile`` then ``>=``): ``τ = x_(⌊h⌋) + (h − ⌊h⌋)(x_(⌈h⌉) −
      x_(⌊h⌋))``; selected ``= valid ∧ H ≥ x_(⌈h⌉)`` (the set ``H ≥ τ``, immune to the rounding
      of ``τ``). Kept count ``N − ⌈h⌉`` for distinct values; ties at the threshold all kept.
    - ``"lower"``: ``H ≥ x_(⌊h⌋)``; ``"nearest"``: ``H ≥ x_(round_half_even(h))``; ``"higher"``,
      ``"midpoint"``: the ``"linear"`` set (their ``τ`` as ``torch.quantile``).
    - ``"topk"``: exactly ``K = ⌈ρN⌉`` (``ρN`` snapped likewise) largest, ties by lower index;
      ``τ`` = the smallest selected value (NaN when ``K = 0``).

    ``ρ = 1``: all valid; ``ρ = 0``: the maximum with its ties (``"topk"``: none); ``ρ ∉ [0, 1]``
    → ``ValueError``. Empty unit → all False, ``τ = NaN``. Unit-based (§0.2).
    ``nan_policy``: ``"raise"``; ``"propagate"`` (a unit with a NaN entropy selects nothing and
    has ``τ = NaN``; other units are unaffected); ``"omit"`` (NaN tokens are treated as invalid).

    Returns the bool mask in the input layout, and with ``return_threshold=True`` also ``τ``
    per unit (float64 ``(U,)``, units in increasing id).

    Paper: *Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement
    Learning for LLM Reasoning* (arXiv 2506.01939), §5.1. Matches TRL
    ``trl/trainer/grpo_trainer.py :: GRPOTrainer.get_high_entropy_mask`` (its ``threshold`` is
    ``1 − ρ``; config ``top_entropy_quantile``).
    """
    rho = real("rho", rho, low=0.0, high=1.0)
    method = choice("method", method, QUANTILE_METHODS)
    nan_policy = choice("nan_policy", nan_policy, HIGH_ENTROPY_NAN_POLICIES)
    lay = layout("entropy", entropy, mask, cu_seqlens)
    h = lay.floats("entropy", entropy, allow_nan=True)
    cell_unit, n_units = _cell_units(lay, scope, micro_batch)
    nan_cells = np.isnan(h) & lay.valid
    if nan_cells.any() and nan_policy == "raise":
        raise ValueError(
            "entropy: contains NaN at a valid position (nan_policy='raise'); pass "
            "nan_policy='omit' or 'propagate'"
        )
    valid = lay.valid & ~nan_cells if nan_policy == "omit" else lay.valid

    selected = np.zeros(lay.slot.shape, dtype=bool)
    tau = np.full(n_units, math.nan, dtype=np.float64)
    for u in range(n_units):
        cells = valid & (cell_unit == u)
        if not cells.any():
            continue
        if nan_policy == "propagate" and np.any(nan_cells & cells):
            continue
        keep, tau[u] = _top_rho(h[cells], rho, method)  # h[cells]: row-major = flat order
        selected[cells] = keep
    out = lay.tokens(selected)
    return (out, tau) if return_threshold else out


def forking_token_loss(
    loss: Any,
    mask: Any,
    selected: Any,
    *,
    normalize: str = "selected",
    num_tokens: Any = None,
    dp_size: int = 1,
    cu_seqlens: Any = None,
) -> np.float64:
    """Policy loss restricted to the forking tokens (``rollout.md`` §3).

    ``"selected"`` (default, the paper's Eq. 6): ``Σ L·sel / Σ sel``; ``"all_valid"`` (TRL:
    ``per_token_loss *= entropy_mask`` with the normaliser unchanged): ``Σ L·sel / Σ M``; ``sel``
    is taken inside the mask. ``num_tokens`` replaces the denominator (a global count); the result
    is multiplied by ``dp_size`` (always, as verl's ``token-mean``); a zero denominator gives 0.
    For TRL's other loss types use ``agg_loss(loss * selected, mask, mode=...)``.

    Paper: arXiv 2506.01939 §5.1 (*Beyond the 80/20 Rule*). Matches TRL
    ``GRPOTrainer._compute_loss`` with ``top_entropy_quantile < 1``.
    """
    normalize = choice("normalize", normalize, ("selected", "all_valid"))
    lay = layout("loss", loss, mask, cu_seqlens)
    values = lay.floats("loss", loss)
    sel = lay.bools("selected", selected)
    dp = integer("dp_size", dp_size, low=1)
    tokens = _nonneg_count("num_tokens", num_tokens)
    numerator = _fsum(values[sel])
    if tokens is not None:
        denominator = tokens
    elif normalize == "selected":
        denominator = float(np.count_nonzero(sel))
    else:
        denominator = float(np.count_nonzero(lay.valid))
    return _scalar(_safe_div(numerator, denominator) * dp)


# ---------------------------------------------------------------------------------------------
# §4 Entropy distribution summaries
# ---------------------------------------------------------------------------------------------


def entropy_summary(
    entropy: Any,
    mask: Any,
    *,
    cu_seqlens: Any = None,
    percentiles: Any = (1, 5, 10, 25, 50, 75, 90, 95, 99),
    low: float = 0.01,
    high: float = 0.672,
) -> dict[str, Any]:
    """Distribution of the valid token entropies (``rollout.md`` §4), float64 accumulation.

    Keys: ``count`` (int), ``mean`` (token-weighted), ``seq_mean`` (mean over non-empty rows of
    the row means), ``std`` (token-weighted, population), ``min``, ``max``, ``percentiles``
    (float64 array aligned with the argument; linear interpolation at position ``(N−1)·q/100``,
    as ``numpy.percentile(method="linear")``), ``frac_low = #{H < low}/N``, ``frac_high =
    #{H > high}/N`` (strict). Empty: ``count = 0``, NaN elsewhere.

    The 80/20 paper reports 50.64% of tokens below 1e-2 and 20% above 0.672 (Qwen3-8B, AIME,
    ``T = 1``; 0.672 is that model's 80th percentile). Paper: arXiv 2506.01939 §3 (*Beyond the
    80/20 Rule*).
    """
    lay = layout("entropy", entropy, mask, cu_seqlens)
    h = lay.floats("entropy", entropy)
    try:
        qs = np.asarray(percentiles, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"percentiles: expected a sequence of numbers, got {percentiles!r}"
        ) from err
    if qs.ndim != 1 or np.any(np.isnan(qs)) or np.any((qs < 0) | (qs > 100)):
        raise ValueError(f"percentiles: expected a 1-D sequence of values in [0, 100], got {qs}")
    low = real("low", low)
    high = real("high", high)
    x = h[lay.valid]
    n = x.size
    if n == 0:
        return {
            "count": 0,
            "mean": math.nan,
            "seq_mean": math.nan,
            "std": math.nan,
            "min": math.nan,
            "max": math.nan,
            "percentiles": np.full(qs.shape, math.nan),
            "frac_low": math.nan,
            "frac_high": math.nan,
        }
    mean = _fsum(x) / n
    row_counts = np.count_nonzero(lay.valid, axis=1)
    nonempty = row_counts > 0
    row_means = _row_sums(h, lay.valid)[nonempty] / row_counts[nonempty]
    return {
        "count": int(n),
        "mean": mean,
        "seq_mean": _fsum(row_means) / row_means.size,
        "std": math.sqrt(_fsum((x - mean) ** 2) / n),
        "min": float(np.min(x)),
        "max": float(np.max(x)),
        "percentiles": np.array([linear_quantile(x, q / 100.0) for q in qs], dtype=np.float64),
        "frac_low": np.count_nonzero(x < low) / n,
        "frac_high": np.count_nonzero(x > high) / n,
    }


def entropy_position_curve(
    entropy: Any,
    mask: Any,
    *,
    cu_seqlens: Any = None,
    max_len: Any = None,
    bins: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean entropy by response position (``rollout.md`` §4) → ``(mean, count)``.

    Without ``bins``: absolute positions ``t < max_len`` (default: the longest row, ``max_b
    len_b``), ``mean[t]`` averaged over the rows valid at ``t``, ``count[t]`` = that number of
    rows. With ``bins=K``: relative position ``t / len_b`` (``len_b`` = last valid position + 1)
    in ``K`` equal bins, bin ``⌊K t / len_b⌋`` (exact integer arithmetic), token-weighted;
    ``max_len`` is then ignored. Empty bin or position: count 0, mean NaN.

    Paper: arXiv 2506.01939 §3, Fig. 2 and Eq. 5 (*Beyond the 80/20 Rule*).
    Returns ``(mean float64, count int64)``.
    """
    lay = layout("entropy", entropy, mask, cu_seqlens)
    h = lay.floats("entropy", entropy)
    valid = lay.valid
    positions = lay.positions
    last = np.where(valid, positions, -1).max(axis=1, initial=-1)
    lengths = last + 1  # len_b, 0 for an empty row
    if bins is None:
        width = (
            int(lengths.max(initial=0)) if max_len is None else integer("max_len", max_len, low=0)
        )
        sums = np.zeros(width, dtype=np.float64)
        counts = np.zeros(width, dtype=np.int64)
        usable = min(width, lay.width)
        sums[:usable] = [_fsum(h[:, t][valid[:, t]]) for t in range(usable)]
        counts[:usable] = np.count_nonzero(valid[:, :usable], axis=0)
    else:
        k = integer("bins", bins, low=1)
        sums = np.zeros(k, dtype=np.float64)
        counts = np.zeros(k, dtype=np.int64)
        for b, t in zip(*np.nonzero(valid), strict=True):
            index = (k * int(t)) // int(lengths[b])
            sums[index] += h[b, t]
            counts[index] += 1
    mean = np.full(sums.shape, math.nan)
    np.divide(sums, counts, out=mean, where=counts > 0)
    return mean, counts


# ---------------------------------------------------------------------------------------------
# §5 Covariance, Clip-Cov, KL-Cov
# ---------------------------------------------------------------------------------------------


def _centered_cov_grid(
    adv: np.ndarray, lp: np.ndarray, valid: np.ndarray, cell_unit: np.ndarray, n_units: int
) -> np.ndarray:
    cov = np.zeros(valid.shape, dtype=np.float64)
    for u in range(n_units):
        cells = valid & (cell_unit == u)
        n = np.count_nonzero(cells)
        if n == 0:
            continue
        # x₀ + Σ(x − x₀)/n: exact for a constant unit, so its covariances are exactly 0.
        a_bar = _mean_exact_if_constant(adv[cells])
        l_bar = _mean_exact_if_constant(lp[cells])
        cov[cells] = (adv[cells] - a_bar) * (lp[cells] - l_bar)
    return cov


def centered_cov(
    advantages: Any,
    logprob: Any,
    mask: Any,
    *,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    cu_seqlens: Any = None,
) -> np.ndarray:
    """Centred token covariance ``c_t = (A_t − Ā)(ℓ_t − ℓ̄)`` (``rollout.md`` §5).

    ``Ā``, ``ℓ̄``: token-weighted means over the unit's valid tokens (a sequence advantage counts
    once per token; ``ℓ`` detached). Unit-based (§0.2). float64 in the input layout, 0 off-mask.

    Paper: *The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models* (arXiv
    2505.22617). Matches the covariance of verl ``core_algos.py :: compute_policy_loss_clip_cov``
    and ``compute_policy_loss_kl_cov``.
    """
    lay = layout("advantages", advantages, mask, cu_seqlens)
    adv = lay.floats("advantages", advantages)
    lp = lay.floats("logprob", logprob)
    cell_unit, n_units = _cell_units(lay, scope, micro_batch)
    return lay.tokens(_centered_cov_grid(adv, lp, lay.valid, cell_unit, n_units))


def _unit_perms(perm: Any, n_units: int) -> list[Any]:
    """``perm`` as one entry per unit: a 1-D array (or a flat list of ints) is the single unit's."""
    if isinstance(perm, np.ndarray) and perm.ndim == 1:
        per_unit = [perm]
    elif isinstance(perm, (list, tuple)) and all(np.ndim(p) == 0 for p in perm) and perm:
        per_unit = [np.asarray(perm)]
    else:
        try:
            per_unit = list(perm)
        except TypeError as err:
            raise TypeError(
                f"perm: expected one permutation array per unit, got {type(perm).__name__}"
            ) from err
    if len(per_unit) != n_units:
        raise ValueError(
            f"perm: expected one permutation per unit ({n_units}), got {len(per_unit)}"
        )
    return per_unit


def _check_perm(perm: Any, n_candidates: int, unit: int) -> np.ndarray:
    pi = int64_array("perm", perm)
    if (
        pi.ndim != 1
        or pi.shape[0] != n_candidates
        or not np.array_equal(np.sort(pi), np.arange(n_candidates))
    ):
        raise ValueError(
            f"perm: unit {unit} expects a permutation of range({n_candidates}) (its candidate "
            f"count), got an array of shape {pi.shape}"
        )
    return pi


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
    """Clip-Cov token selection (``rollout.md`` §5). Per unit:

    1. ``r = exp(ℓ − ℓ^old)`` (no clamp); ``l1``, ``l2`` as :func:`ppo_loss`;
       ``ppo_clipped = (l2 > l1) ∧ M``.
    2. ``c`` as :func:`centered_cov`; quota ``n = max(⌊ratio · N_valid⌋, 1)`` (float64 product).
    3. Candidates: ``M ∧ ¬ppo_clipped ∧ lb < c < ub`` (strict), in flat order.
    4. If any: a permutation ``π`` of ``range(#cand)``: ``perm`` (one array per unit, units in
       increasing id; a single 1-D array for a single unit) if given, else
       ``numpy.random.default_rng(seed).permutation(#cand)`` — one generator, drawn only for the
       units that have candidates, in increasing unit id. Selected ``= candidates[π[:min(n,
       #cand)]]``. Neither ``seed`` nor ``perm`` → ``ValueError``.

    Selection is uniform among candidates, not top-k (as published). Defaults (verl config):
    ``ratio`` 2e-4, ``lb``/``ub`` 1/5, ε 0.2. With ``return_candidates=True`` returns
    ``(selected, candidates)`` (``#cand`` per unit lets a caller draw verl's ``torch.randperm``).
    Unit-based (§0.2).

    Paper: *The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models* (arXiv
    2505.22617). Matches verl ``core_algos.py :: compute_policy_loss_clip_cov`` (bit for bit with
    verl's ``torch.randperm`` draw passed as ``perm``); PRIME-RL/Entropy-Mechanism-of-RL.
    """
    if seed is None and perm is None:
        raise ValueError("seed: Clip-Cov selection is random; pass seed or perm")
    ratio = real("ratio", ratio, low=0.0, high=1.0)
    lb = real("lb", lb)
    ub = real("ub", ub)
    eps_low, eps_high = _clip_bounds(clip_low, clip_high)
    lay = layout("advantages", advantages, mask, cu_seqlens)
    adv = lay.floats("advantages", advantages)
    lp = lay.floats("logprob", logprob)
    old = lay.floats("old_logprob", old_logprob)
    cell_unit, n_units = _cell_units(lay, scope, micro_batch)
    valid = lay.valid

    ratio_t = _exp(np.where(valid, lp - old, 0.0))
    l1, l2 = _pg_terms(adv, ratio_t, eps_low, eps_high)
    ppo_clipped = (l2 > l1) & valid
    cov = _centered_cov_grid(adv, lp, valid, cell_unit, n_units)
    candidates = valid & ~ppo_clipped & (lb < cov) & (cov < ub)

    perms = None if perm is None else _unit_perms(perm, n_units)
    rng = np.random.default_rng(seed) if perms is None else None
    selected = np.zeros(valid.shape, dtype=bool)
    flat_selected = selected.reshape(-1)
    for u in range(n_units):
        cells = valid & (cell_unit == u)
        quota = max(math.floor(ratio * np.count_nonzero(cells)), 1)
        cand_index = np.flatnonzero(candidates & cells)  # row-major grid order = flat order
        if perms is not None:
            pi = _check_perm(perms[u], cand_index.size, u)
        elif cand_index.size > 0:
            pi = rng.permutation(cand_index.size)
        else:
            continue
        flat_selected[cand_index[pi[: min(quota, cand_index.size)]]] = True
    out = lay.tokens(selected)
    return (out, lay.tokens(candidates)) if return_candidates else out


def clip_cov_loss(
    logprob: Any,
    old_logprob: Any,
    advantages: Any,
    mask: Any,
    selected: Any,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    cu_seqlens: Any = None,
) -> PPOTerms:
    """Clip-Cov loss (``rollout.md`` §5): per token ``max(l1, l2) · (1 − selected)``.

    No dual clip, no ratio clamp (``r = exp(ℓ − ℓ^old)``); selected tokens get zero loss (and
    zero gradient on the torch face) but stay in the denominators of :func:`agg_loss`.
    ``clipped = selected ∧ M`` (the cov-clipped tokens), ``clipfrac = #selected / N_valid`` (verl's
    ``pg_clipfrac``), ``clipfrac_lower = 0``, ``ppo_kl = mean_M(−Δ)``.

    Paper: arXiv 2505.22617 (*The Entropy Mechanism of RL for Reasoning LMs*). Matches verl
    ``core_algos.py :: compute_policy_loss_clip_cov``.
    """
    lay = layout("logprob", logprob, mask, cu_seqlens)
    lp = lay.floats("logprob", logprob)
    old = lay.floats("old_logprob", old_logprob)
    adv = lay.floats("advantages", advantages)
    sel = lay.bools("selected", selected)
    eps_low, eps_high = _clip_bounds(clip_low, clip_high)
    valid = lay.valid
    delta = np.where(valid, lp - old, 0.0)
    ratio = _exp(delta)
    l1, l2 = _pg_terms(adv, ratio, eps_low, eps_high)
    per_token = np.where(valid & ~sel, np.maximum(l1, l2), 0.0)
    return PPOTerms(
        loss=lay.tokens(per_token),
        ratio=lay.tokens(np.where(valid, ratio, 0.0)),
        clipped=lay.tokens(sel),
        clipfrac=_scalar(_masked_mean(sel.astype(np.float64), valid)),
        clipfrac_lower=_scalar(0.0),
        ppo_kl=_scalar(_masked_mean(-delta, valid)),
    )


def kl_cov_select(
    advantages: Any,
    logprob: Any,
    mask: Any,
    *,
    ratio: float = 2e-4,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    cu_seqlens: Any = None,
) -> np.ndarray:
    """KL-Cov token selection (``rollout.md`` §5).

    Per unit, the ``k = max(1, ⌊ratio · N_valid⌋)`` valid tokens with the largest ``c``
    (:func:`centered_cov`), ties by lower flat index; ``N_valid = 0`` → none. Unit-based (§0.2);
    verl selects per micro-batch per GPU, the paper over the training batch (``scope="batch"``).
    The original code takes the ratio in percent (``k_percent`` 0.2 = 2e-3).

    Paper: arXiv 2505.22617 (*The Entropy Mechanism of RL for Reasoning LMs*). Matches verl
    ``core_algos.py :: compute_policy_loss_kl_cov`` (``torch.topk``; its tie order is
    unspecified).
    """
    ratio = real("ratio", ratio, low=0.0, high=1.0)
    lay = layout("advantages", advantages, mask, cu_seqlens)
    adv = lay.floats("advantages", advantages)
    lp = lay.floats("logprob", logprob)
    cell_unit, n_units = _cell_units(lay, scope, micro_batch)
    cov = _centered_cov_grid(adv, lp, lay.valid, cell_unit, n_units)
    selected = np.zeros(lay.valid.shape, dtype=bool)
    flat_selected = selected.reshape(-1)
    for u in range(n_units):
        cell_index = np.flatnonzero(lay.valid & (cell_unit == u))
        if cell_index.size == 0:
            continue
        k = max(1, math.floor(ratio * cell_index.size))
        order = np.argsort(-cov.reshape(-1)[cell_index], kind="stable")
        flat_selected[cell_index[order[:k]]] = True
    return lay.tokens(selected)


def kl_cov_loss(
    logprob: Any,
    old_logprob: Any,
    advantages: Any,
    mask: Any,
    selected: Any,
    *,
    kl_coef: float = 1.0,
    cu_seqlens: Any = None,
) -> PPOTerms:
    """KL-Cov loss (``rollout.md`` §5): per token ``−A r + kl_coef · |ℓ − ℓ^old| · selected``.

    ``r = exp(ℓ − ℓ^old)``, no clipping of any kind; ``clipped`` all False, ``clipfrac`` and
    ``clipfrac_lower`` 0 (verl reports 0); ``ppo_kl = mean_M |Δ|``. On-policy
    (``old_logprob = logprob``) ``|Δ| ≡ 0``: plain unclipped PG (PRIME-RL issue #1).
    **Decision** (spec): ``kl_coef=1.0`` (original code, recipes); verl's config default is 0.1.

    Paper: arXiv 2505.22617 (*The Entropy Mechanism of RL for Reasoning LMs*). Matches verl
    ``core_algos.py :: compute_policy_loss_kl_cov``.
    """
    lay = layout("logprob", logprob, mask, cu_seqlens)
    lp = lay.floats("logprob", logprob)
    old = lay.floats("old_logprob", old_logprob)
    adv = lay.floats("advantages", advantages)
    sel = lay.bools("selected", selected)
    coef = real("kl_coef", kl_coef)
    valid = lay.valid
    delta = np.where(valid, lp - old, 0.0)
    ratio = _exp(delta)
    with np.errstate(invalid="ignore", over="ignore"):
        per_token = -adv * ratio + coef * np.abs(delta) * sel
    per_token = np.where(valid, per_token, 0.0)
    return PPOTerms(
        loss=lay.tokens(per_token),
        ratio=lay.tokens(np.where(valid, ratio, 0.0)),
        clipped=lay.tokens(np.zeros(valid.shape, dtype=bool)),
        clipfrac=_scalar(0.0),
        clipfrac_lower=_scalar(0.0),
        ppo_kl=_scalar(_masked_mean(np.abs(delta), valid)),
    )


# ---------------------------------------------------------------------------------------------
# §6 STEER token weights
# ---------------------------------------------------------------------------------------------


def steer_weights(
    advantages: Any,
    logprob: Any,
    old_logprob: Any,
    entropy: Any,
    mask: Any,
    *,
    mode: str = "exp",
    lam_min: float = 0.8,
    lam_max: float = 1.2,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    cu_seqlens: Any = None,
) -> np.ndarray:
    """STEER per-token weights (``rollout.md`` §6), no gradient, 0 off-mask. Unit-based.

    ``π = clamp(exp ℓ, 1e-8, 1 − 1e-8)``, ``π_old = clamp(exp ℓ^old, 1e-8, 1)``, ``H_t`` the
    old-policy entropy: ``Ω_t = (A_t / π_old) · π · (1 − π) · (log π + H_t)``; non-finite → 0.
    Over the unit's valid tokens ``M = max |Ω|``, ``μ = min |Ω|``.

    - ``"exp"``: ``κ = −ln(λ_min) / max(M, 0.02)``, ``w = clamp(exp(−κ|Ω|), λ_min, 1)``
      (``lam_max`` unused; ``0 < λ_min ≤ 1``).
    - ``"linear"``: ``w = clamp(λ_max − (|Ω| − μ)(λ_max − λ_min)/(M − μ), λ_min, λ_max)``; if
      ``M = μ``, ``(λ_min + λ_max)/2`` (``λ_min ≤ λ_max``).

    **Decision** (spec): defaults from the released scripts, exp λ_min 0.8; linear 0.8/1.2.
    Multiply the per-token PPO loss (dual clip) by ``w``, then :func:`agg_loss`.

    Paper: *Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective* (arXiv
    2510.10150). Matches zz-haooo/STEER ``verl/trainer/ppo/core_algos.py ::
    compute_token_weights``.
    """
    mode = choice("mode", mode, ("exp", "linear"))
    if mode == "exp":
        lam_lo = real("lam_min", lam_min, low=0.0, high=1.0, low_open=True)
        lam_hi = 1.0
    else:
        lam_lo = real("lam_min", lam_min)
        lam_hi = real("lam_max", lam_max)
        if lam_lo > lam_hi:
            raise ValueError(f"lam_min: expected lam_min <= lam_max, got {lam_lo} > {lam_hi}")
    lay = layout("advantages", advantages, mask, cu_seqlens)
    adv = lay.floats("advantages", advantages)
    lp = lay.floats("logprob", logprob)
    old = lay.floats("old_logprob", old_logprob)
    h = lay.floats("entropy", entropy)
    cell_unit, n_units = _cell_units(lay, scope, micro_batch)
    valid = lay.valid

    pi = np.clip(_exp(lp), 1e-8, 1.0 - 1e-8)
    pi_old = np.clip(_exp(old), 1e-8, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        omega = (adv / pi_old) * pi * (1.0 - pi) * (np.log(pi) + h)
    magnitude = np.where(valid & np.isfinite(omega), np.abs(omega), 0.0)

    weights = np.zeros(valid.shape, dtype=np.float64)
    for u in range(n_units):
        cells = valid & (cell_unit == u)
        if not cells.any():
            continue
        big = float(np.max(magnitude[cells]))
        small = float(np.min(magnitude[cells]))
        if mode == "exp":
            kappa = -math.log(lam_lo) / max(big, STEER_M_FLOOR)
            weights[cells] = np.clip(np.exp(-kappa * magnitude[cells]), lam_lo, 1.0)
        elif big == small:
            weights[cells] = (lam_lo + lam_hi) / 2.0
        else:
            slope = (lam_hi - lam_lo) / (big - small)
            weights[cells] = np.clip(lam_hi - (magnitude[cells] - small) * slope, lam_lo, lam_hi)
    return lay.tokens(weights)


# ---------------------------------------------------------------------------------------------
# §7 CANON advantages
# ---------------------------------------------------------------------------------------------


def canon_advantages(
    rewards: Any,
    seq_metric: Any,
    group: Any,
    *,
    lam: float = 1.0,
    alpha: float = 1.0,
    beta: float = 0.0,
    l_norm: float = 1.0,
    variant: str = "entropy",
) -> np.ndarray:
    """CANON conditional advantages (``rollout.md`` §7) → float64 ``(B,)``.

    Per group of size ``n``: stable ascending sort by ``seq_metric`` (ties by row order);
    ``C⁻`` = the first ``⌊n/2⌋``, ``C⁺`` = the rest; ``μ⁻``, ``μ⁺`` their mean rewards.

    - ``"entropy"``: ``i ∈ C⁺: [λ(R_i − α μ⁻ + β) + (1−λ)(R_i − μ⁺)] / l_norm``;
      ``i ∈ C⁻: [λ(α R_i − μ⁺ − β) + (1−λ)(R_i − μ⁻)] / l_norm``.
    - ``"length"``: ``α`` on the other factor of the inter-group term (``α R_i − μ⁻`` for ``C⁺``,
      ``R_i − α μ⁺`` for ``C⁻``).
    - Singleton group: ``R_i / l_norm``. No std normalisation.

    ``seq_metric``: each response's mean old-policy token entropy (``"entropy"``, 0 for an empty
    row) or its length ``n_b`` (``"length"``). ``λ = 0.5, α = 1, β = 0`` gives ``R_i − (μ⁻ +
    μ⁺)/2`` (Dr.GRPO for even ``n``). Defaults from the released code (``λ = 1``); the code sets
    ``l_norm`` = 8192 under ``seq-mean-token-sum``.

    Paper: *CANON: Conditional Advantage Estimation* (arXiv 2509.23962). Matches biuboomc/CANON
    ``verl/trainer/ppo/core_algos.py :: compute_dr_entropy_per_token_group_outcome_advantage``.
    """
    r = float_vector("rewards", rewards)
    metric = float_vector("seq_metric", seq_metric, r.shape[0])
    g = int_vector("group", group, r.shape[0])
    lam = real("lam", lam)
    alpha = real("alpha", alpha)
    beta = real("beta", beta)
    l_norm = real("l_norm", l_norm, low=0.0, low_open=True)
    variant = choice("variant", variant, ("entropy", "length"))
    out = np.zeros(r.shape[0], dtype=np.float64)
    for gid in np.unique(g):
        rows = np.flatnonzero(g == gid)
        if rows.size == 1:
            out[rows] = r[rows] / l_norm
            continue
        ordered = rows[np.argsort(metric[rows], kind="stable")]
        low_rows, high_rows = ordered[: rows.size // 2], ordered[rows.size // 2 :]
        mu_low = _fsum(r[low_rows]) / low_rows.size
        mu_high = _fsum(r[high_rows]) / high_rows.size
        r_high, r_low = r[high_rows], r[low_rows]
        if variant == "entropy":
            inter_high = r_high - alpha * mu_low + beta
            inter_low = alpha * r_low - mu_high - beta
        else:
            inter_high = alpha * r_high - mu_low + beta
            inter_low = r_low - alpha * mu_high - beta
        out[high_rows] = (lam * inter_high + (1.0 - lam) * (r_high - mu_high)) / l_norm
        out[low_rows] = (lam * inter_low + (1.0 - lam) * (r_low - mu_low)) / l_norm
    return out


# ---------------------------------------------------------------------------------------------
# §8 ARES window entropy and HWE triggers
# ---------------------------------------------------------------------------------------------


def _windows(
    h: np.ndarray, valid: np.ndarray, window: int, start: int
) -> tuple[np.ndarray, np.ndarray]:
    """``W_t = (1/w) Σ_j H_{t+start+j}`` on the grid and where it is defined (§8)."""
    n_rows, width = valid.shape
    mean = np.zeros((n_rows, width), dtype=np.float64)
    defined = np.zeros((n_rows, width), dtype=bool)
    for b in range(n_rows):
        for t in range(width):
            first = t + start
            last = first + window  # exclusive
            if not valid[b, t] or last > width or not np.all(valid[b, first:last]):
                continue
            total = 0.0
            for j in range(window):
                total += h[b, first + j]
            mean[b, t] = total / window
            defined[b, t] = True
    return mean, defined


def window_entropy(
    entropy: Any,
    mask: Any,
    *,
    window: int = 4,
    start: int = 0,
    cu_seqlens: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ARES window entropy (``rollout.md`` §8) → ``(W, defined)``.

    ``W_t = (1/w) Σ_{j=0}^{w−1} H_{t+start+j}`` (summed in order ``j = 0 … w−1``), defined iff
    ``t`` is a valid position and all ``w`` window positions are valid positions of the same row;
    ``W = 0`` where undefined. **Decision** (spec): ``start=0`` is the paper's window ``t …
    t+w−1``; ``start=1`` the released code's ``t+1 … t+w`` (the tokens after the trigger).

    Paper: *ARES: Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level Entropy Shaping*
    (arXiv 2510.08457). Matches shawn0728/ARES ``verl/workers/rollout/vllm_rollout_spmd.py``
    (without its filler values for incomplete windows).
    """
    w = integer("window", window, low=1)
    s = integer("start", start, low=0)
    lay = layout("entropy", entropy, mask, cu_seqlens)
    h = lay.floats("entropy", entropy)
    mean, defined = _windows(h, lay.valid, w, s)
    return lay.tokens(mean), lay.tokens(defined)


def _trigger_set(trigger_ids: Any) -> np.ndarray:
    """``trigger_ids`` (an int array, sequence or set; may be empty) as a flat int64 array."""
    if isinstance(trigger_ids, (set, frozenset)):
        trigger_ids = sorted(trigger_ids)
    if isinstance(trigger_ids, (list, tuple)) and len(trigger_ids) == 0:
        return np.empty(0, dtype=np.int64)
    return int64_array("trigger_ids", trigger_ids).reshape(-1)


def hwe_count(
    entropy: Any,
    token_ids: Any,
    mask: Any,
    trigger_ids: Any,
    *,
    threshold: float,
    window: int = 4,
    start: int = 0,
    cu_seqlens: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """High-window-entropy (HWE) trigger counts (``rollout.md`` §8).

    Triggers: valid ``t`` with ``token_ids[t] ∈ trigger_ids`` and ``W_t`` defined
    (:func:`window_entropy`); HWE iff ``W_t ≥ θ`` (``θ = threshold``, required);
    ``soft_cost = Σ_triggers max(0, W_t − θ)``. ARES matches the position's argmax token: pass
    argmax ids to reproduce it. ``trigger_ids``: any integer array or sequence (a set).

    Returns ``(count (B,) int64, soft_cost (B,) float64, is_hwe bool per token)``.
    Paper: arXiv 2510.08457 (*ARES*). Matches shawn0728/ARES ``verl/trainer/ray_trainer.py``.
    """
    theta = real("threshold", threshold)
    w = integer("window", window, low=1)
    s = integer("start", start, low=0)
    lay = layout("entropy", entropy, mask, cu_seqlens)
    h = lay.floats("entropy", entropy)
    ids = lay.ints("token_ids", token_ids)
    triggers_set = _trigger_set(trigger_ids)
    mean, defined = _windows(h, lay.valid, w, s)
    trigger = lay.valid & np.isin(ids, triggers_set) & defined
    is_hwe = trigger & (mean >= theta)
    excess = np.where(trigger, np.maximum(0.0, mean - theta), 0.0)
    count = np.count_nonzero(is_hwe, axis=1).astype(np.int64)
    soft_cost = np.zeros(lay.n_rows, dtype=np.float64)
    for b in range(lay.n_rows):
        for t in np.flatnonzero(trigger[b]):
            soft_cost[b] += excess[b, t]
    return count, soft_cost, lay.tokens(is_hwe)


def hwe_threshold(
    entropy: Any,
    mask: Any,
    *,
    window: int = 4,
    start: int = 0,
    q: float = 0.95,
    prev: float | None = None,
    momentum: float = 0.99,
    cu_seqlens: Any = None,
) -> np.float64:
    """ARES HWE threshold ``θ`` (``rollout.md`` §8).

    ``θ_batch`` = median (the linear 0.5-quantile: the mean of the two middle values for an even
    count) over the rows with ≥ 1 defined window of each row's linear ``q``-quantile of its
    defined ``W_t``. ``θ = θ_batch`` if ``prev is None``, else ``momentum·prev + (1 −
    momentum)·θ_batch``. No defined window anywhere: ``θ_batch = NaN`` and ``θ = prev`` (NaN
    when ``prev is None``) so an EMA is not poisoned.

    Paper: arXiv 2510.08457 (*ARES*). Matches shawn0728/ARES ``verl/trainer/ray_trainer.py``
    (without its filler values for incomplete windows and its top-10 log-prob entropies).
    """
    w = integer("window", window, low=1)
    s = integer("start", start, low=0)
    q = real("q", q, low=0.0, high=1.0)
    momentum = real("momentum", momentum, low=0.0, high=1.0)
    previous = None if prev is None else real("prev", prev)
    lay = layout("entropy", entropy, mask, cu_seqlens)
    h = lay.floats("entropy", entropy)
    mean, defined = _windows(h, lay.valid, w, s)
    row_quantiles = [
        linear_quantile(mean[b][defined[b]], q) for b in range(lay.n_rows) if defined[b].any()
    ]
    if not row_quantiles:
        return _scalar(math.nan if previous is None else previous)
    theta_batch = linear_quantile(np.array(row_quantiles, dtype=np.float64), 0.5)
    if previous is None:
        return _scalar(theta_batch)
    return _scalar(momentum * previous + (1.0 - momentum) * theta_batch)


# ---------------------------------------------------------------------------------------------
# §9 PEAR phase entropies and reward
# ---------------------------------------------------------------------------------------------


def phase_boundary(
    token_ids: Any, mask: Any, end_think_id: int, *, cu_seqlens: Any = None
) -> np.ndarray:
    """Position ``k`` of the first valid ``</think>`` token of each row, −1 if absent (§9).

    Paper: *PEAR: Phase Entropy Aware Reward for Efficient Reasoning* (arXiv 2510.08026).
    Returns int64 ``(B,)``.
    """
    end_id = integer("end_think_id", end_think_id)
    lay = layout("token_ids", token_ids, mask, cu_seqlens)
    ids = lay.ints("token_ids", token_ids)
    hit = lay.valid & (ids == end_id)
    out = np.full(lay.n_rows, -1, dtype=np.int64)
    for b in range(lay.n_rows):
        found = np.flatnonzero(hit[b])
        if found.size:
            out[b] = found[0]
    return out


def phase_entropy(
    entropy: Any, mask: Any, boundary: Any, *, cu_seqlens: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PEAR phase entropies (``rollout.md`` §9) → ``(h_think, h_answer, n_think, n_answer)``.

    ``H̄_think`` = mean of ``H_t`` over valid ``t < k``, ``H̄_answer`` over valid ``t > k``; the
    ``</think>`` token (``t = k``) is in neither; an empty phase gives 0. **Decision** (spec):
    ``k = −1`` makes every valid token thinking and ``H̄_answer = 0``. ``boundary`` (int64
    ``(B,)``, from :func:`phase_boundary`) must be ``≥ −1``.

    Paper: arXiv 2510.08026 (*PEAR*). Matches iNLP-Lab/PEAR ``entropy.py :: compute_score``'s
    phase split. Returns float64, float64, int64, int64 arrays of shape ``(B,)``.
    """
    lay = layout("entropy", entropy, mask, cu_seqlens)
    h = lay.floats("entropy", entropy)
    k = int_vector("boundary", boundary, lay.n_rows)
    if np.any(k < -1):
        raise ValueError("boundary: expected positions >= -1 (-1: no </think>)")
    positions = lay.positions
    no_end = (k == -1)[:, None]
    think = lay.valid & (no_end | (positions < k[:, None]))
    answer = lay.valid & ~no_end & (positions > k[:, None])
    n_think = np.count_nonzero(think, axis=1).astype(np.int64)
    n_answer = np.count_nonzero(answer, axis=1).astype(np.int64)
    h_think = np.array(
        [_safe_div(_fsum(h[b][think[b]]), float(n_think[b])) for b in range(lay.n_rows)],
        dtype=np.float64,
    )
    h_answer = np.array(
        [_safe_div(_fsum(h[b][answer[b]]), float(n_answer[b])) for b in range(lay.n_rows)],
        dtype=np.float64,
    )
    return h_think, h_answer, n_think, n_answer


def pear_reward(
    correct: Any,
    h_think: Any,
    h_answer: Any,
    *,
    alpha: float = 1.0,
    score: float = 1.0,
    format_score: float = 0.0,
) -> np.ndarray:
    """PEAR reward (``rollout.md`` §9): ``P = max(0, H̄_think − α H̄_answer)``;
    ``r = min(1, score − P)`` if correct, else ``format_score``.

    ``r < 0`` is possible when ``P > score`` (no lower clip). Status in the spec: the published
    equations with ``α = 1``; **formula to confirm** against the released reward function.
    ``r`` feeds :func:`group_advantages`.

    Paper: arXiv 2510.08026 (*PEAR: Phase Entropy Aware Reward for Efficient Reasoning*).
    Matches iNLP-Lab/PEAR ``entropy.py :: compute_score`` (interface). Returns float64 ``(B,)``.
    """
    ok = bool_vector("correct", correct)
    think = float_vector("h_think", h_think, ok.shape[0])
    answer = float_vector("h_answer", h_answer, ok.shape[0])
    alpha = real("alpha", alpha)
    score = real("score", score)
    format_score = real("format_score", format_score)
    penalty = np.maximum(0.0, think - alpha * answer)
    return np.where(ok, np.minimum(1.0, score - penalty), format_score)


# ---------------------------------------------------------------------------------------------
# §10 EPO entropy band
# ---------------------------------------------------------------------------------------------


def step_entropy_means(
    entropy: Any, mask: Any, step_index: Any, *, max_steps: int, cu_seqlens: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per environment step ``k < max_steps``, ``(sum, count)`` of the valid token entropies of
    the rows with ``step_index = k`` (token-weighted; ``rollout.md`` §10). Rows with
    ``step_index ≥ max_steps`` are left out; negative steps → ``ValueError``.

    The history mean ``H̄_k`` is the mean over past iterations of the per-iteration step means
    ``sum/count`` (iterations without step ``k`` do not count); the caller keeps it.
    Paper: *EPO: Entropy-regularized Policy Optimization for LLM Agents Reinforcement Learning*
    (arXiv 2509.22576). Returns ``(float64 (max_steps,), int64 (max_steps,))``.
    """
    steps = integer("max_steps", max_steps, low=0)
    lay = layout("entropy", entropy, mask, cu_seqlens)
    h = lay.floats("entropy", entropy)
    k = int_vector("step_index", step_index, lay.n_rows)
    if np.any(k < 0):
        raise ValueError("step_index: expected non-negative steps")
    sums = np.zeros(steps, dtype=np.float64)
    counts = np.zeros(steps, dtype=np.int64)
    for b in range(lay.n_rows):
        if k[b] < steps:
            sums[k[b]] += _fsum(h[b][lay.valid[b]])
            counts[k[b]] += np.count_nonzero(lay.valid[b])
    return sums, counts


def epo_band_penalty(
    entropy: Any,
    mask: Any,
    step_index: Any,
    history_mean: Any,
    *,
    kappa_low: float = 0.5,
    kappa_high: float = 1.5,
    form: str = "released",
    rho_out: float = 0.1,
    power: float = 1,
    granularity: str = "token",
    cu_seqlens: Any = None,
) -> np.ndarray:
    """EPO entropy-band penalty per token (``rollout.md`` §10), 0 off-mask.

    ``H̄ = history_mean[step_index[b]]`` for row ``b`` (must be a valid index, and not NaN for a
    row with valid tokens); ``x`` = ``H_t`` (``granularity="token"``) or the row's mean entropy
    (``"seq"``).

    - ``"released"`` (gradient-free, as released): in band iff ``κ_l H̄ < x < κ_r H̄``; ``P = 0``
      in band, else ``ρ_out``.
    - ``"relu"`` (an entcore design, not the paper's formula): ``P = relu(κ_l H̄ − x)^p +
      relu(x − κ_r H̄)^p``.

    **Decision** (spec): ``κ`` 0.5/1.5, ``ρ_out`` 0.1. Loss: ``L = L_PG − c_ent (agg(H) −
    c_smooth · agg(β P))`` with :func:`epo_phase_weight` ``β``.
    Paper: arXiv 2509.22576 (*EPO*). Matches WujiangXu/EPO ``verl/workers/actor/dp_actor.py ::
    generate_entropy_penalty``.
    """
    lay = layout("entropy", entropy, mask, cu_seqlens)
    h = lay.floats("entropy", entropy)
    k = int_vector("step_index", step_index, lay.n_rows)
    history = float_vector("history_mean", history_mean, nan_ok=True)
    kappa_l = real("kappa_low", kappa_low)
    kappa_r = real("kappa_high", kappa_high)
    if kappa_l > kappa_r:
        raise ValueError(f"kappa_low: expected kappa_low <= kappa_high, got {kappa_l} > {kappa_r}")
    form = choice("form", form, ("released", "relu"))
    rho = real("rho_out", rho_out)
    p = real("power", power, low=0.0, low_open=True)
    granularity = choice("granularity", granularity, ("token", "seq"))
    if np.any((k < 0) | (k >= history.shape[0])):
        raise ValueError(
            f"step_index: expected values in [0, {history.shape[0]}) (len(history_mean))"
        )
    valid = lay.valid
    used = np.isnan(history[k]) & valid.any(axis=1)
    if used.any():
        raise ValueError(f"history_mean: NaN at step {int(k[np.flatnonzero(used)[0]])}")

    penalty = np.zeros(valid.shape, dtype=np.float64)
    for b in range(lay.n_rows):
        if not valid[b].any():
            continue
        bar = float(history[k[b]])
        if granularity == "seq":
            x = np.full(lay.width, _fsum(h[b][valid[b]]) / np.count_nonzero(valid[b]))
        else:
            x = h[b]
        if form == "released":
            in_band = (kappa_l * bar < x) & (x < kappa_r * bar)
            row = np.where(in_band, 0.0, rho)
        else:
            row = np.maximum(kappa_l * bar - x, 0.0) ** p + np.maximum(x - kappa_r * bar, 0.0) ** p
        penalty[b] = np.where(valid[b], row, 0.0)
    return lay.tokens(penalty)


def epo_phase_weight(epoch: Any, *, total: float = 150) -> Any:
    """EPO phase weight ``β`` (``rollout.md`` §10, the released schedule), vectorised.

    With ``E = total``: ``β = 1 − 0.2 (1 − exp(−2e/(E/2)))`` for ``e ≤ E/2``, else
    ``0.8 exp(−3(e − E/2)/(E/2))``. Paper: arXiv 2509.22576 (*EPO*). Matches WujiangXu/EPO
    ``dp_actor.py :: _calculate_epoch_based_entropy_weight``. Returns float64.
    """
    e = float64_array("epoch", np.asarray(epoch, dtype=np.float64))
    if np.any(np.isnan(e)) or np.any(e < 0):
        raise ValueError("epoch: expected non-negative epochs")
    half = real("total", total, low=0.0, low_open=True) / 2.0
    early = 1.0 - 0.2 * (1.0 - np.exp(-2.0 * e / half))
    late = 0.8 * np.exp(-3.0 * (e - half) / half)
    out = np.where(e <= half, early, late)
    return out[()] if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------
# §11 SPEAR
# ---------------------------------------------------------------------------------------------


def spear_recalibrate(
    rewards: Any,
    baseline_means: Any,
    *,
    baseline_stds: Any = None,
    decay: float | None = None,
    old_advantages: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """SPEAR advantage recalibration for replayed trajectories (``rollout.md`` §11).

    ``b = median(baseline_means)`` (the caller passes the stored per-step, per-prompt group mean
    rewards, the most recent ≤ 10 240); ``Â = R − b``, divided by ``median(baseline_stds) +
    1e-6`` when stds are given (off in SPEAR); ``keep = Â ≥ 0``. With ``decay = γ ∈ (0, 1]``:
    ``Â = γ · old_advantages`` (required), all kept. Medians are ``numpy.median`` (mean of the two
    middle values).

    Paper: *Learn the Ropes, Then Trust the Wins* (arXiv 2509.22601). Matches
    TencentYoutuResearch/SPEAR ``verl-agent/verl/trainer/ppo/core_algos.py``.
    Returns ``(advantages float64 (B,), keep bool (B,))``.
    """
    r = float_vector("rewards", rewards)
    if decay is not None:
        gamma = real("decay", decay, low=0.0, high=1.0, low_open=True)
        if old_advantages is None:
            raise ValueError("old_advantages: required with decay")
        old = float_vector("old_advantages", old_advantages, r.shape[0])
        return gamma * old, np.ones(r.shape[0], dtype=bool)
    means = float_vector("baseline_means", baseline_means)
    if means.shape[0] == 0:
        raise ValueError("baseline_means: expected at least one stored mean")
    advantages = r - float(np.median(means))
    if baseline_stds is not None:
        stds = float_vector("baseline_stds", baseline_stds)
        if stds.shape[0] == 0:
            raise ValueError("baseline_stds: expected at least one stored std")
        advantages = advantages / (float(np.median(stds)) + 1e-6)
    return advantages, advantages >= 0.0


def spear_schedules(
    step: Any,
    *,
    replay_coef: float = 1.0,
    replay_period: int = 200,
    tool_period: int = 200,
    num_turns: Any = None,
) -> tuple[Any, Any]:
    """SPEAR schedules (``rollout.md`` §11) → ``(replay_weight, tool_reward)``, vectorised.

    Replay loss weight: ``replay_coef · (1 − cos(π k/K))/2`` for ``k ≤ K = replay_period``, then
    ``replay_coef``. Intrinsic tool reward: ``min(1, 0.1·num_turns) · (1 + cos(π k/K))/2`` for
    ``k ≤ K = tool_period``, then 0; ``num_turns=None`` returns the schedule factor alone (the
    turn factor taken as 1).

    Paper: arXiv 2509.22601 (*Learn the Ropes, Then Trust the Wins*). Matches
    TencentYoutuResearch/SPEAR ``verl-agent/verl/trainer/ppo/ray_trainer_hybrid.py``.
    """
    k = float64_array("step", np.asarray(step, dtype=np.float64))
    if np.any(np.isnan(k)) or np.any(k < 0):
        raise ValueError("step: expected non-negative steps")
    coef = real("replay_coef", replay_coef)
    k_replay = integer("replay_period", replay_period, low=1)
    k_tool = integer("tool_period", tool_period, low=1)
    replay = np.where(
        k <= k_replay, coef * (1.0 - np.cos(np.pi * np.minimum(k, k_replay) / k_replay)) / 2.0, coef
    )
    factor = np.where(
        k <= k_tool, (1.0 + np.cos(np.pi * np.minimum(k, k_tool) / k_tool)) / 2.0, 0.0
    )
    if num_turns is not None:
        turns = float64_array("num_turns", np.asarray(num_turns, dtype=np.float64))
        if np.any(np.isnan(turns)) or np.any(turns < 0):
            raise ValueError("num_turns: expected non-negative turn counts")
        factor = np.minimum(1.0, 0.1 * turns) * factor
    replay = replay[()] if replay.ndim == 0 else replay
    factor = factor[()] if np.ndim(factor) == 0 else factor
    return replay, factor


# ---------------------------------------------------------------------------------------------
# §12 AEPO temperature controller
# ---------------------------------------------------------------------------------------------


def nll_entropy_estimate(logprob: Any, mask: Any, *, cu_seqlens: Any = None) -> np.float64:
    """``mean_M(−ℓ)``, the sampled-token estimate of the entropy (``rollout.md`` §12); NaN for
    an empty mask. Paper: *Arbitrary Entropy Policy Optimization* (arXiv 2510.08141)."""
    lay = layout("logprob", logprob, mask, cu_seqlens)
    lp = lay.floats("logprob", logprob)
    return _scalar(_masked_mean(-lp, lay.valid))


def _prev_entropy(prev_entropy: Any) -> float:
    return 0.0 if prev_entropy is None else real("prev_entropy", prev_entropy)


def aepo_temperature(
    prev_entropy: Any, *, target: float = 0.5, t_high: float = 1.2, t_low: float = 0.8
) -> float:
    """AEPO sampling temperature (``rollout.md`` §12): ``t_high`` if ``Ĥ ≤ target`` else
    ``t_low``; ``prev_entropy=None`` (first step) counts as 0. ``Ĥ``: the mean over micro-batches
    of the previous update's :func:`nll_entropy_estimate` at ``T = 1``.

    Paper: *Arbitrary Entropy Policy Optimization* (arXiv 2510.08141). Matches 597358816/AEPO
    ``verl/trainer/ray_trainer.py :: fit``.
    """
    h_hat = _prev_entropy(prev_entropy)
    target = real("target", target)
    high = real("t_high", t_high, low=0.0, low_open=True)
    low = real("t_low", t_low, low=0.0, low_open=True)
    return high if h_hat <= target else low


def aepo_select(
    aux_advantages: Any,
    *,
    prev_entropy: Any,
    target: float = 0.5,
    threshold: float = 0.05,
    max_samples: int = 60,
) -> tuple[np.ndarray, np.ndarray]:
    """AEPO auxiliary-sample selection (``rollout.md`` §12) → ``(indices, advantages)``.

    ``aux_advantages``: float ``(B_aux,)``, one (sequence) advantage per auxiliary sample. Kept:
    ``A > threshold``; ``k = min(max_samples, #kept)``, halved (integer division) when ``Ĥ >
    target`` (``prev_entropy=None`` counts as 0); the first ``k`` kept in order, their
    advantages set to ``+1`` (float64 ``(k,)``, to broadcast over their tokens); the caller
    replaces the first ``k`` rows of the main batch with them.

    Paper: arXiv 2510.08141 (*Arbitrary Entropy Policy Optimization*). Matches 597358816/AEPO
    ``verl/trainer/ray_trainer.py :: _select_by_advantage``.
    """
    adv = float_vector("aux_advantages", aux_advantages)
    h_hat = _prev_entropy(prev_entropy)
    target = real("target", target)
    threshold = real("threshold", threshold)
    limit = integer("max_samples", max_samples, low=0)
    kept = np.flatnonzero(adv > threshold).astype(np.int64)
    k = min(limit, kept.size)
    if h_hat > target:
        k //= 2
    return kept[:k], np.ones(k, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# §13 SIREN
# ---------------------------------------------------------------------------------------------


def peak_entropy_mask(h: Any, mask: Any, *, q: float = 0.8, cu_seqlens: Any = None) -> np.ndarray:
    """SIREN peak-entropy mask (``rollout.md`` §13): per row ``τ_b`` = linear quantile ``q`` of
    the row's valid ``h`` (``torch.quantile`` interpolation, :func:`_layout.linear_quantile`);
    selected ``= valid ∧ h > τ_b`` (strict): about the top 20% per response, fewer with ties.

    Paper: *Rethinking Entropy Regularization in Large Reasoning Models* (arXiv 2509.25133).
    Matches Linn3a/siren ``verl/verl/workers/actor/dp_actor.py :: mask_by_quantile``.
    """
    q = real("q", q, low=0.0, high=1.0)
    lay = layout("h", h, mask, cu_seqlens)
    values = lay.floats("h", h)
    selected = np.zeros(lay.valid.shape, dtype=bool)
    for b in range(lay.n_rows):
        row_valid = lay.valid[b]
        if not row_valid.any():
            continue
        tau = linear_quantile(values[b][row_valid], q)
        selected[b] = row_valid & (values[b] > tau)
    return lay.tokens(selected)


def siren_regularizer(
    h: Any,
    selected: Any,
    *,
    anchor: Any = None,
    coef: float = 0.005,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    cu_seqlens: Any = None,
) -> Any:
    """SIREN regulariser ``coef · (Ē − anchor)²`` (``rollout.md`` §13). Unit-based.

    ``Ē`` = mean over all rows of the unit of each row's mean ``h`` over its selected tokens (0
    for rows with none, still counted). ``anchor=None`` returns ``Ē`` itself (call it once at
    step 1 on the old-policy nucleus entropies and keep it as the anchor). ``h`` is read only at
    selected positions (``selected`` plays the role of the mask).

    Returns a float64 scalar when there is one unit by construction (``micro_batch=None`` or
    ``scope="batch"``), else float64 ``(U,)`` per unit in increasing id (``anchor`` a scalar or
    one value per unit). Defaults: ``coef`` 0.005.

    Paper: *Rethinking Entropy Regularization in Large Reasoning Models* (arXiv 2509.25133).
    Matches Linn3a/siren ``verl/verl/workers/actor/dp_actor.py``.
    """
    coef = real("coef", coef)
    lay = layout("h", h, selected, cu_seqlens)
    values = lay.floats("h", h)
    row_unit, n_units = units(scope, micro_batch, lay.n_rows)
    sel = lay.valid
    row_counts = np.count_nonzero(sel, axis=1)
    row_sums = _row_sums(values, sel)
    row_means = np.where(row_counts > 0, row_sums / np.maximum(row_counts, 1), 0.0)
    e_bar = np.zeros(n_units, dtype=np.float64)
    for u in range(n_units):
        rows = row_unit == u
        e_bar[u] = _fsum(row_means[rows]) / np.count_nonzero(rows)
    single = scope == "batch" or micro_batch is None
    if anchor is None:
        result = e_bar
    else:
        anchors = float64_array("anchor", np.asarray(anchor, dtype=np.float64))
        if anchors.ndim != 0 and anchors.shape != (n_units,):
            raise ValueError(
                f"anchor: expected a scalar or shape ({n_units},), got {anchors.shape}"
            )
        if np.any(np.isnan(anchors)):
            raise ValueError("anchor: contains NaN")
        result = coef * (e_bar - anchors) ** 2
    if single:
        return _scalar(float(result[0]) if n_units else 0.0)
    return result


# ---------------------------------------------------------------------------------------------
# §14 Answer-level entropy and support metrics
# ---------------------------------------------------------------------------------------------


def answer_entropy(answer_codes: Any, group: Any) -> tuple[np.ndarray, np.ndarray]:
    """Answer-level entropy per group (``rollout.md`` §14) → ``(groups, H)``.

    ``p_j = f_j / N_g`` over the distinct answer codes of group ``g`` (integers encoded by the
    caller, e.g. ``numpy.unique(..., return_inverse=True)``; incomplete answers share one code);
    ``H = −Σ p_j log p_j``. ``groups``: the distinct group ids, ascending (int64).

    Paper: *The Invisible Leash: Why RLVR May Not Escape Its Origin* (arXiv 2507.14843).
    """
    codes = int_vector("answer_codes", answer_codes)
    g = int_vector("group", group, codes.shape[0])
    groups = np.unique(g)
    entropies = np.zeros(groups.shape[0], dtype=np.float64)
    for i, gid in enumerate(groups):
        _, freq = np.unique(codes[g == gid], return_counts=True)
        p = freq / freq.sum()
        entropies[i] = 0.0 - _fsum(p * np.log(p))
    return groups.astype(np.int64), entropies


def support_epsilon(k: Any, *, confidence: float = 0.95) -> Any:
    """``1 − (1 − confidence)^{1/k}`` (≈ 3/k at 95%): the probability mass seen at least once in
    ``k`` samples with that confidence (``rollout.md`` §14). Vectorised over ``k ≥ 1``.

    Paper: arXiv 2507.14843 (*The Invisible Leash*). Returns float64.
    """
    k_arr = float64_array("k", np.asarray(k, dtype=np.float64))
    if np.any(np.isnan(k_arr)) or np.any(k_arr < 1):
        raise ValueError("k: expected sample counts >= 1")
    c = real("confidence", confidence, low=0.0, high=1.0)
    out = 1.0 - (1.0 - c) ** (1.0 / k_arr)
    return out[()] if out.ndim == 0 else out


def support_metrics(base: Any, rl: Any) -> dict[str, Any]:
    """Support preservation/expansion metrics (``rollout.md`` §14).

    ``base``, ``rl``: bool arrays over items (e.g. per problem "a correct sample among the k").
    ``P = Σ base∧rl``, ``S = Σ base∧¬rl``, ``E = Σ ¬base∧rl``, ``O = Σ ¬base∧¬rl`` (int);
    ``SRR = P/(P+S)``, ``NDR = E/(P+E)``, ``SDS = 2·SRR·NDR/(SRR+NDR)``, ``NSCR = (E − S)/(P+E+S)``;
    ``0/0`` → NaN. Returns a dict with these eight keys.

    Paper: *The Invisible Leash: Why RLVR May Not Escape Its Origin* (arXiv 2507.14843).
    """
    b = bool_array("base", base)
    r = bool_array("rl", rl)
    if b.shape != r.shape:
        raise ValueError(f"rl: expected shape {b.shape} (as base), got {r.shape}")
    p = int(np.count_nonzero(b & r))
    s = int(np.count_nonzero(b & ~r))
    e = int(np.count_nonzero(~b & r))
    o = int(np.count_nonzero(~b & ~r))
    srr = _ratio(p, p + s)
    ndr = _ratio(e, p + e)
    sds = math.nan if math.isnan(srr) or math.isnan(ndr) else _ratio(2 * srr * ndr, srr + ndr)
    nscr = _ratio(e - s, p + e + s)
    return {"P": p, "S": s, "E": e, "O": o, "SRR": srr, "NDR": ndr, "SDS": sds, "NSCR": nscr}


# ---------------------------------------------------------------------------------------------
# §15 Zero-shot detection statistic
# ---------------------------------------------------------------------------------------------


def detection_statistic(
    logprob: Any, entropy: Any, mask: Any, *, cu_seqlens: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row ``T = L − Ĥ`` with ``L = −(1/n) Σ ℓ_t`` (log-perplexity) and ``Ĥ = (1/n) Σ H_t``
    (``rollout.md`` §15), ``ℓ`` and ``H`` from the same scoring model at the same temperature.

    Returns ``(T float64 (B,), n int64 (B,))``; ``T = NaN`` for an empty row (``0/0``).
    Paper: *Zero-Shot Statistical Tests for LLM-Generated Text Detection using Finite Sample
    Concentration Inequalities* (arXiv 2501.02406).
    """
    lay = layout("logprob", logprob, mask, cu_seqlens)
    lp = lay.floats("logprob", logprob)
    h = lay.floats("entropy", entropy)
    n = np.count_nonzero(lay.valid, axis=1).astype(np.int64)
    stat = np.full(lay.n_rows, math.nan, dtype=np.float64)
    for b in range(lay.n_rows):
        if n[b] > 0:
            log_ppl = -_fsum(lp[b][lay.valid[b]]) / n[b]
            mean_h = _fsum(h[b][lay.valid[b]]) / n[b]
            stat[b] = log_ppl - mean_h
    return stat, n


def detection_threshold(n: Any, *, alpha: float = 0.05, bound: float) -> Any:
    """``ε = bound · sqrt(2 ln(2/α) / n)`` (``rollout.md`` §15); reject "x was generated by the
    scoring model" when ``|T| > ε``. ``n = 0`` gives ``+inf`` (nothing can be rejected).

    entcore's own derivation (not the paper's constants): under H0 the ``D_t = −ℓ_t − H_t`` are
    martingale differences; if ``|D_t| ≤ bound`` (the caller's assumption, not checked),
    Azuma–Hoeffding gives ``P(|T| ≥ ε) ≤ 2 exp(−n ε² / (2 bound²))``.
    Paper: arXiv 2501.02406. Vectorised over ``n``; returns float64.
    """
    n_arr = float64_array("n", np.asarray(n, dtype=np.float64))
    if np.any(np.isnan(n_arr)) or np.any(n_arr < 0):
        raise ValueError("n: expected non-negative token counts")
    a = real("alpha", alpha, low=0.0, high=1.0, low_open=True)
    bound = real("bound", bound, low=0.0, low_open=True)
    with np.errstate(divide="ignore"):
        out = bound * np.sqrt(2.0 * math.log(2.0 / a) / n_arr)
    return out[()] if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------
# §16 Conditional entropy reduction
# ---------------------------------------------------------------------------------------------


def entropy_reduction(
    answer_entropy: Any,
    answer_mask: Any,
    *,
    step_mask: Any = None,
    reduce: str = "mean",
) -> dict[str, Any]:
    """Conditional entropy reduction over reasoning steps (``rollout.md`` §16).

    ``answer_entropy``: ``(..., K+1, Y)`` evaluator entropies at the teacher-forced answer tokens
    after the question plus the first ``k`` steps; ``answer_mask`` broadcastable to it (e.g.
    ``(..., Y)``); ``step_mask`` ``(..., K+1)`` bool, the steps a shorter chain has (default all).

    Keys (float64; ``...`` = the leading shape):

    - ``"H"`` ``(..., K+1)``: ``H_k`` = mean (``reduce="mean"``; NaN without valid answer
      tokens) or sum (``"sum"``) over valid answer tokens; NaN at steps outside ``step_mask``.
    - ``"delta"`` ``(..., K)``: ``ΔH_k = H_{k−1} − H_k`` (NaN unless both steps are valid).
    - ``"total"``: ``H_first − H_last`` over the valid steps (``H_0 − H_K`` for a full chain).
    - ``"frac_decreasing"``: ``#(ΔH_k > 0) / #(defined ΔH_k)`` (``/K`` for a full chain).
    - ``"slope"``: the least-squares slope of ``H_k`` on ``k`` over the valid steps (NaN with
      fewer than two).

    Paper: *Measuring Reasoning Utility in LLMs via Conditional Entropy Reduction* (arXiv
    2508.20395).
    """
    reduce = choice("reduce", reduce, ("mean", "sum"))
    values = float64_array("answer_entropy", answer_entropy)
    if values.ndim < 2:
        raise ValueError(f"answer_entropy: expected shape (..., K+1, Y), got {values.shape}")
    try:
        valid = np.broadcast_to(bool_array("answer_mask", answer_mask), values.shape)
    except ValueError:
        raise ValueError(
            f"answer_mask: shape {np.shape(answer_mask)} does not broadcast to {values.shape}"
        ) from None
    if np.any(np.isnan(values) & valid):
        raise ValueError("answer_entropy: contains NaN at a valid answer token")
    lead, steps = values.shape[:-2], values.shape[-2]
    if step_mask is None:
        steps_ok = np.ones(lead + (steps,), dtype=bool)
    else:
        steps_ok = bool_array("step_mask", step_mask)
        if steps_ok.shape != lead + (steps,):
            raise ValueError(f"step_mask: expected shape {lead + (steps,)}, got {steps_ok.shape}")

    sums = np.sum(np.where(valid, values, 0.0), axis=-1)
    counts = np.count_nonzero(valid, axis=-1)
    if reduce == "sum":
        h_k = sums
    else:
        h_k = np.full(sums.shape, math.nan)
        np.divide(sums, counts, out=h_k, where=counts > 0)
    h_k = np.where(steps_ok, h_k, math.nan)

    delta = np.full(lead + (steps - 1,), math.nan)
    total = np.full(lead, math.nan)
    frac = np.full(lead, math.nan)
    slope = np.full(lead, math.nan)
    for index in np.ndindex(*lead):
        chain = h_k[index]
        ok = steps_ok[index]
        for k in range(1, steps):
            if ok[k - 1] and ok[k]:
                delta[index + (k - 1,)] = chain[k - 1] - chain[k]
        ks = np.flatnonzero(ok)
        if ks.size:
            total[index] = chain[ks[0]] - chain[ks[-1]]
        defined = delta[index][~np.isnan(delta[index])] if steps > 1 else np.empty(0)
        if defined.size:
            frac[index] = np.count_nonzero(defined > 0) / defined.size
        if ks.size >= 2:
            x = ks.astype(np.float64)
            y = chain[ks]
            x_bar = float(np.mean(x))
            y_bar = float(np.mean(y))
            slope[index] = float(np.sum((x - x_bar) * (y - y_bar))) / float(
                np.sum((x - x_bar) ** 2)
            )
    return {"H": h_k, "delta": delta, "total": total, "frac_decreasing": frac, "slope": slope}
