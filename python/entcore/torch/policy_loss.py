"""Policy losses with verl's calling convention, torch only (``rollout.md`` §1–§3, §5, §6, §10,
§12, §13).

A trainer built on verl, TRL or OpenRLHF swaps its policy loss for :func:`compute_policy_loss`::

    loss, metrics = compute_policy_loss(
        old_log_prob, log_prob, advantages, response_mask, "token-mean",
        clip_ratio_high=0.28, entropy=entropy, rho=0.2,      # the 80/20 mask
    )

The signature ``(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, ...) ->
(loss, metrics)`` is verl's ``compute_policy_loss_vanilla`` (``core_algos.py``); ``metrics``
carries verl's ``pg_clipfrac``, ``ppo_kl``, ``pg_clipfrac_lower`` and the methods' own counters.
Everything here composes the shared three-face functions of :mod:`entcore.torch.rollout`
(``ppo_loss``, ``clip_cov_select``/``clip_cov_loss``, ``kl_cov_select``/``kl_cov_loss``,
``high_entropy_mask``/``forking_token_loss``, ``steer_weights``, ``agg_loss``,
``epo_band_penalty``), so each option is exactly the spec's formula with the spec's defaults.

These entry points exist on the torch face only (they return autograd losses); they are not
part of ``entcore`` or ``entcore.reference``. Two pieces are not in ``rollout.md`` and are
described where they are defined: the entropy bonus (:func:`entropy_bonus`,
:class:`AdaptiveEntropyCoef`) and AEPO's REINFORCE term (:func:`aepo_reinforce_loss`).

The other methods are separate terms a trainer adds to ``loss``:

- SIREN (§13): ``nucleus_entropy(logits)`` (differentiable through the nucleus entropy), then
  ``peak_entropy_mask`` and ``siren_regularizer(h, selected, anchor=...)``.
- EPO (§10): :func:`epo_entropy_loss`.
- CANON (§7) and GRPO (§2) advantages: ``canon_advantages`` / ``group_advantages`` per sequence,
  broadcast over the tokens before the call.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from entcore.reference._layout import choice
from entcore.torch.rollout import (
    agg_loss,
    clip_cov_loss,
    clip_cov_select,
    epo_band_penalty,
    forking_token_loss,
    high_entropy_mask,
    kl_cov_loss,
    kl_cov_select,
    ppo_loss,
    steer_weights,
)

__all__ = [
    "AdaptiveEntropyCoef",
    "aepo_reinforce_loss",
    "compute_policy_loss",
    "entropy_bonus",
    "epo_entropy_loss",
]

POLICY_LOSS_METHODS = ("vanilla", "clip_cov", "kl_cov")
#: verl's default covariance ratio for both Clip-Cov and KL-Cov (``rollout.md`` §5).
COV_RATIO = 2e-4


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64)


def _count(selected: torch.Tensor) -> torch.Tensor:
    return selected.sum().to(torch.int64)


def compute_policy_loss(
    old_log_prob: Any,
    log_prob: torch.Tensor,
    advantages: Any,
    response_mask: Any,
    loss_agg_mode: str = "token-mean",
    *,
    method: str = "vanilla",
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float | None = 3.0,
    log_ratio_clamp: float | None = 20.0,
    entropy: torch.Tensor | None = None,
    rho: float | None = None,
    forking_normalize: str = "selected",
    cov_ratio: float = COV_RATIO,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    kl_coef: float = 1.0,
    seed: Any = None,
    generator: torch.Generator | None = None,
    steer: str | None = None,
    old_entropy: Any = None,
    steer_lam_min: float = 0.8,
    steer_lam_max: float = 1.2,
    entropy_coeff: float = 0.0,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    cu_seqlens: Any = None,
    **agg_kwargs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO/GRPO policy loss with the seed papers' token-level methods as options.

    Steps (each the spec's formula; every option off by default except PPO clipping):

    1. Per-token loss by ``method`` (``rollout.md`` §2, §5):

       - ``"vanilla"``: :func:`ppo_loss` — ``max(−A r, −A clip(r, 1 − ε_low, 1 + ε_high))``,
         ``r = exp(clamp(ℓ − ℓ^old, ±log_ratio_clamp))``, dual clip ``min(·, −A·clip_ratio_c)``
         for ``A < 0`` (verl's default ``clip_ratio_c=3.0``; ``None`` turns it off).
       - ``"clip_cov"``: Clip-Cov (Cui et al., arXiv 2505.22617): :func:`clip_cov_select` with
         ``ratio=cov_ratio``, ``lb``/``ub``, ``seed`` or ``generator``, then
         :func:`clip_cov_loss` (selected tokens: zero loss and gradient; no dual clip, no clamp).
       - ``"kl_cov"``: KL-Cov: :func:`kl_cov_select` (top ``max(1, ⌊cov_ratio·N⌋)`` by
         covariance) and :func:`kl_cov_loss` ``−A r + kl_coef·|ℓ − ℓ^old|·selected``.

       ``clip_ratio_low``/``clip_ratio_high`` are verl's ε (``high=None`` → ``low``; DAPO and
       the 80/20 paper use 0.2/0.28). Selections are per unit (``scope``, ``micro_batch``; §0.2).
    2. STEER (§6, arXiv 2510.10150): ``steer="exp"`` or ``"linear"`` multiplies the per-token
       loss by :func:`steer_weights` (needs ``old_entropy``, the buffer's entropies;
       ``steer_lam_min`` 0.8, ``steer_lam_max`` 1.2; STEER's scripts use ``clip_ratio_c=10``).
    3. Reduction: with ``rho`` (the 80/20 forking-token mask, §3, arXiv 2506.01939) the tokens
       kept are :func:`high_entropy_mask` of ``entropy`` (detached) with ``rho``;
       ``forking_normalize="selected"`` (the paper, the spec's default) is
       :func:`forking_token_loss` ``Σ L·sel / Σ sel``; ``"all_valid"`` (TRL's
       ``top_entropy_quantile``) is ``agg_loss(L·sel, mask, loss_agg_mode)``. Without ``rho``:
       ``agg_loss(L, mask, loss_agg_mode)`` with verl's or TRL's mode names (§1).
       ``agg_kwargs`` go to :func:`agg_loss` (``dp_size``, ``global_batch_size``,
       ``loss_scale_factor``, ``num_items_in_batch``, ...); with ``forking_normalize="selected"``
       only ``dp_size`` applies.
    4. Entropy bonus: ``loss −= entropy_coeff · agg_loss(entropy, mask, loss_agg_mode)``
       (verl's ``entropy_coeff``; :class:`AdaptiveEntropyCoef` supplies an adaptive one).
       ``entropy`` should then be the current policy's, with gradient.

    Args:
        old_log_prob, log_prob, advantages, response_mask: verl's ``(B, L)`` tensors (or packed
            ``(N,)`` with ``cu_seqlens``); ``log_prob`` carries the gradient.
        entropy: current-policy per-token entropy; required by ``rho`` and ``entropy_coeff``.

    Returns ``(loss, metrics)``: ``loss`` a differentiable 0-dim tensor; ``metrics`` 0-dim
    tensors without gradient: ``pg_loss`` (before the bonus), ``pg_clipfrac``, ``ppo_kl``,
    ``pg_clipfrac_lower`` (verl's meanings; Clip-Cov's ``pg_clipfrac`` is its selected fraction),
    and when used ``cov_selected`` (count), ``forking_selected`` (count), ``forking_kept_frac``
    (selected / valid tokens), ``steer_weight_mean`` (over valid tokens), ``entropy`` (token
    mean, detached) and ``entropy_loss`` (the aggregated entropy of step 4).
    """
    method = choice("method", method, POLICY_LOSS_METHODS)
    entropy_coeff = _real_arg("entropy_coeff", entropy_coeff)
    forking_normalize = choice("forking_normalize", forking_normalize, ("selected", "all_valid"))
    if steer is not None:
        steer = choice("steer", steer, ("exp", "linear"))
    if (rho is not None or entropy_coeff != 0.0) and entropy is None:
        raise ValueError("entropy: required with rho (forking tokens) or a nonzero entropy_coeff")
    if steer is not None and old_entropy is None:
        raise ValueError("old_entropy: required with steer (the buffer's per-token entropies)")
    if rho is not None and forking_normalize == "selected" and set(agg_kwargs) - {"dp_size"}:
        extra = sorted(set(agg_kwargs) - {"dp_size"})
        raise ValueError(
            f"agg_kwargs: {extra} do not apply with forking_normalize='selected' (only dp_size)"
        )
    units = {"scope": scope, "micro_batch": micro_batch, "cu_seqlens": cu_seqlens}
    lp_detached = log_prob.detach()
    metrics: dict[str, torch.Tensor] = {}

    if method == "vanilla":
        terms = ppo_loss(
            log_prob,
            old_log_prob,
            advantages,
            response_mask,
            clip_low=clip_ratio_low,
            clip_high=clip_ratio_high,
            clip_c=clip_ratio_c,
            log_ratio_clamp=log_ratio_clamp,
            cu_seqlens=cu_seqlens,
        )
    elif method == "clip_cov":
        cov_sel = clip_cov_select(
            advantages,
            lp_detached,
            old_log_prob,
            response_mask,
            ratio=cov_ratio,
            lb=clip_cov_lb,
            ub=clip_cov_ub,
            clip_low=clip_ratio_low,
            clip_high=clip_ratio_high,
            seed=seed,
            generator=generator,
            **units,
        )
        terms = clip_cov_loss(
            log_prob,
            old_log_prob,
            advantages,
            response_mask,
            cov_sel,
            clip_low=clip_ratio_low,
            clip_high=clip_ratio_high,
            cu_seqlens=cu_seqlens,
        )
        metrics["cov_selected"] = _count(cov_sel)
    else:
        cov_sel = kl_cov_select(advantages, lp_detached, response_mask, ratio=cov_ratio, **units)
        terms = kl_cov_loss(
            log_prob,
            old_log_prob,
            advantages,
            response_mask,
            cov_sel,
            kl_coef=kl_coef,
            cu_seqlens=cu_seqlens,
        )
        metrics["cov_selected"] = _count(cov_sel)
    per_token = terms.loss
    metrics["pg_clipfrac"] = terms.clipfrac
    metrics["ppo_kl"] = terms.ppo_kl
    metrics["pg_clipfrac_lower"] = terms.clipfrac_lower

    if steer is not None:
        weights = steer_weights(
            advantages,
            lp_detached,
            old_log_prob,
            old_entropy,
            response_mask,
            mode=steer,
            lam_min=steer_lam_min,
            lam_max=steer_lam_max,
            **units,
        )
        per_token = per_token * weights
        valid_weights = agg_loss(weights, response_mask, "token-mean", cu_seqlens=cu_seqlens)
        metrics["steer_weight_mean"] = _f64(valid_weights)

    if rho is not None:
        assert entropy is not None
        selected = high_entropy_mask(entropy.detach(), response_mask, rho=rho, **units)
        if forking_normalize == "selected":
            pg_loss = forking_token_loss(
                per_token,
                response_mask,
                selected,
                normalize="selected",
                dp_size=agg_kwargs.get("dp_size", 1),
                cu_seqlens=cu_seqlens,
            )
        else:
            masked = per_token * selected
            pg_loss = agg_loss(
                masked, response_mask, loss_agg_mode, cu_seqlens=cu_seqlens, **agg_kwargs
            )
        kept = selected.to(torch.float64)
        metrics["forking_selected"] = _count(selected)
        metrics["forking_kept_frac"] = _f64(agg_loss(kept, response_mask, cu_seqlens=cu_seqlens))
    else:
        pg_loss = agg_loss(
            per_token, response_mask, loss_agg_mode, cu_seqlens=cu_seqlens, **agg_kwargs
        )
    metrics["pg_loss"] = _f64(pg_loss)

    loss = pg_loss
    if entropy is not None:
        h = entropy.detach()
        metrics["entropy"] = _f64(agg_loss(h, response_mask, cu_seqlens=cu_seqlens))
    if entropy_coeff != 0.0:
        assert entropy is not None
        kw = {"cu_seqlens": cu_seqlens, **agg_kwargs}
        loss = loss + entropy_bonus(entropy, response_mask, loss_agg_mode, coef=entropy_coeff, **kw)
        metrics["entropy_loss"] = _f64(
            agg_loss(entropy.detach(), response_mask, loss_agg_mode, **kw)
        )
    return loss, metrics


def entropy_bonus(
    entropy: torch.Tensor,
    response_mask: Any,
    loss_agg_mode: str = "token-mean",
    *,
    coef: float,
    cu_seqlens: Any = None,
    **agg_kwargs: Any,
) -> torch.Tensor:
    """Entropy bonus term ``−coef · agg_loss(H, mask, loss_agg_mode)`` to add to the policy loss.

    verl's ``entropy_coeff`` (``policy_loss = pg_loss − entropy_coeff · entropy_loss``, with the
    entropy aggregated like the loss; §1 notes that the seq-sum modes then do not give a
    per-token mean). Static: a constant ``coef``; adaptive: ``coef`` from
    :class:`AdaptiveEntropyCoef` each step. Differentiable through ``entropy``.
    """
    c = _real_arg("coef", coef)
    aggregated = agg_loss(
        entropy, response_mask, loss_agg_mode, cu_seqlens=cu_seqlens, **agg_kwargs
    )
    return -c * aggregated


class AdaptiveEntropyCoef:
    """Adaptive entropy coefficient (Skywork-OR1's adaptive entropy control, arXiv 2505.22312).

    Not in ``rollout.md``: implemented as the report describes it. State ``c`` (starts at
    ``init``). Each step, :meth:`step` takes ``e``, the step's mean token entropy (e.g.
    ``metrics["entropy"]`` or the rollout's), and returns the coefficient for this step's loss
    ``α = c · 1[e ≤ target]`` (the bonus only acts when entropy is at or below the target), then
    moves ``c ← clip(c + Δ, 0, max_coef)`` if ``e < target``, ``clip(c − Δ, 0, max_coef)`` if
    ``e > target``. Defaults: ``target`` 0.2, ``Δ`` 0.005, ``c_0`` 0 (the report's values);
    ``max_coef=None`` leaves ``c`` unbounded above. The released code was not compared.
    Pass ``α`` as ``entropy_coeff`` to :func:`compute_policy_loss` or ``coef`` to
    :func:`entropy_bonus`.
    """

    def __init__(
        self,
        target: float = 0.2,
        delta: float = 0.005,
        init: float = 0.0,
        max_coef: float | None = None,
    ) -> None:
        self.target = _real_arg("target", target, low=0.0)
        self.delta = _real_arg("delta", delta, low=0.0)
        self.max_coef = None if max_coef is None else _real_arg("max_coef", max_coef, low=0.0)
        self.coef = self._clip(_real_arg("init", init, low=0.0))

    def _clip(self, c: float) -> float:
        c = max(c, 0.0)
        return c if self.max_coef is None else min(c, self.max_coef)

    def step(self, entropy: Any) -> float:
        """``α`` for this step from the step's mean entropy ``e``, then the update of ``c``."""
        e = _real_arg("entropy", entropy)
        alpha = self.coef if e <= self.target else 0.0
        if e < self.target:
            self.coef = self._clip(self.coef + self.delta)
        elif e > self.target:
            self.coef = self._clip(self.coef - self.delta)
        return alpha


def _real_arg(name: str, x: Any, low: float | None = None) -> float:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name}: expected a scalar, got shape {tuple(x.shape)}")
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name}: expected a real number, got {x!r}")
    value = float(x)
    if math.isnan(value) or (low is not None and value < low):
        bound = "" if low is None else f" >= {low}"
        raise ValueError(f"{name}: expected a number{bound}, got {value}")
    return value


def aepo_reinforce_loss(
    log_prob: torch.Tensor,
    advantages: Any,
    response_mask: Any,
    loss_agg_mode: str = "token-mean",
    *,
    coef: float = 1.0,
    cu_seqlens: Any = None,
    **agg_kwargs: Any,
) -> torch.Tensor:
    """AEPO's REINFORCE regulariser ``coef · agg_loss(−A ℓ, mask, loss_agg_mode)``.

    AEPO (arXiv 2510.08141) adds ``α E_{o∼π^T}[∇ log π(o|q) R]`` on samples drawn at the
    temperature of :func:`aepo_temperature`, kept by :func:`aepo_select` with advantage ``+1``
    (``rollout.md`` §12): pass those rows' ``log_prob`` (with gradient) and advantages. The
    released code instead puts the rows into the main batch, whose PPO loss at ``r = 1`` has the
    same gradient ``−A ∇ℓ``; this term lets the regulariser carry its own ``α`` (``coef``).
    Differentiable in ``log_prob``; advantages are constants.
    """
    if not isinstance(log_prob, torch.Tensor):
        raise TypeError(f"log_prob: expected a torch.Tensor, got {type(log_prob).__name__}")
    adv = torch.as_tensor(advantages, device=log_prob.device)
    if adv.shape != log_prob.shape:
        raise ValueError(
            f"advantages: expected shape {tuple(log_prob.shape)}, got {tuple(adv.shape)}"
        )
    c = _real_arg("coef", coef)
    per_token = -adv.detach().to(log_prob.dtype) * log_prob
    return c * agg_loss(
        per_token, response_mask, loss_agg_mode, cu_seqlens=cu_seqlens, **agg_kwargs
    )


def epo_entropy_loss(
    entropy: torch.Tensor,
    response_mask: Any,
    step_index: Any,
    history_mean: Any,
    loss_agg_mode: str = "token-mean",
    *,
    beta: float = 1.0,
    c_ent: float = 0.001,
    c_smooth: float = 1.0,
    kappa_low: float = 0.5,
    kappa_high: float = 1.5,
    form: str = "released",
    rho_out: float = 0.1,
    power: float = 1,
    granularity: str = "token",
    cu_seqlens: Any = None,
    **agg_kwargs: Any,
) -> torch.Tensor:
    """EPO's entropy term ``−c_ent (agg(H) − c_smooth · agg(β P))`` (``rollout.md`` §10), to add
    to the policy loss.

    ``P`` = :func:`epo_band_penalty` (``form="released"``: the constant ``ρ_out`` outside the
    band, gradient only through ``agg(H)``; ``form="relu"``: the differentiable band penalty, an
    entcore design); ``β`` = :func:`epo_phase_weight` of the epoch. Defaults ``c_ent`` 0.001,
    ``c_smooth`` 1, ``κ`` 0.5/1.5, ``ρ_out`` 0.1. The released code applies the term only when a
    row of the micro-batch has ``step_index ≥ max_steps/2``: that gate is the caller's.
    arXiv 2509.22576; WujiangXu/EPO ``dp_actor.py``.
    """
    penalty = epo_band_penalty(
        entropy,
        response_mask,
        step_index,
        history_mean,
        kappa_low=kappa_low,
        kappa_high=kappa_high,
        form=form,
        rho_out=rho_out,
        power=power,
        granularity=granularity,
        cu_seqlens=cu_seqlens,
    )
    b = _real_arg("beta", beta)
    ce = _real_arg("c_ent", c_ent)
    cs = _real_arg("c_smooth", c_smooth)
    kw = {"cu_seqlens": cu_seqlens, **agg_kwargs}
    h_agg = agg_loss(entropy, response_mask, loss_agg_mode, **kw)
    p_agg = agg_loss(penalty * b, response_mask, loss_agg_mode, **kw)
    return -ce * (h_agg - cs * p_agg)
