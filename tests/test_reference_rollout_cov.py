"""The float64 reference of ``rollout.md`` §5–§7: centred covariance, Clip-Cov and KL-Cov
(§17.5), STEER weights and CANON advantages (§17.6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from entcore.reference import rollout as ref
from helpers import require_torch

seeds = st.integers(0, 2**32 - 1)


def random_batch(seed, n_rows=6, width=10, spread=1.0):
    """Random ``(A, ℓ, ℓ^old, H, mask)`` in float64, a sequence advantage per row."""
    rng = np.random.default_rng(seed)
    adv = np.repeat(rng.normal(0.0, spread, (n_rows, 1)), width, axis=1)
    lp = -rng.gamma(1.0, 1.0, (n_rows, width))
    old = lp + rng.normal(0.0, 0.3, (n_rows, width))
    ent = rng.gamma(1.0, 0.6, (n_rows, width))
    mask = rng.random((n_rows, width)) < 0.8
    return adv, lp, old, ent, mask


def cov_formula(adv, lp, mask):
    """``c = (A − Ā)(ℓ − ℓ̄)`` over one unit, straight from §5, with the means taken as
    ``x₀ + Σ(x − x₀)/n`` (exact for a constant unit, as the reference documents)."""

    def mean(x):
        return x[0] + math.fsum(x - x[0]) / x.size

    a_bar = mean(adv[mask])
    l_bar = mean(lp[mask])
    return np.where(mask, (adv - a_bar) * (lp - l_bar), 0.0)


# ---------------------------------------------------------------------------------------------
# centered_cov
# ---------------------------------------------------------------------------------------------


def test_centered_cov_hand_values():
    adv = np.array([[1.0, 1.0, 5.0], [-1.0, -1.0, 7.0]])
    lp = np.array([[-1.0, -2.0, 9.0], [-3.0, -2.0, 9.0]])
    mask = np.array([[1, 1, 0], [1, 1, 0]])
    # Ā = 0, ℓ̄ = −2: c = [1·1, 1·0, ·], [(−1)(−1), (−1)·0, ·]
    np.testing.assert_allclose(ref.centered_cov(adv, lp, mask), [[1, 0, 0], [1, 0, 0]], atol=0)


@given(seed=seeds)
def test_centered_cov_formula_and_units(seed):
    adv, lp, _, _, mask = random_batch(seed)
    np.testing.assert_allclose(
        ref.centered_cov(adv, lp, mask), cov_formula(adv, lp, mask), rtol=1e-12, atol=1e-14
    )
    per_unit = ref.centered_cov(adv, lp, mask, micro_batch=3)
    for rows in (slice(0, 3), slice(3, 6)):
        if mask[rows].any():
            np.testing.assert_allclose(
                per_unit[rows], cov_formula(adv[rows], lp[rows], mask[rows]), rtol=1e-12, atol=1e-14
            )
    # scope="batch" on one micro-batch equals scope="micro_batch" (§17.5)
    np.testing.assert_array_equal(
        ref.centered_cov(adv, lp, mask, scope="batch", micro_batch=3),
        ref.centered_cov(adv, lp, mask),
    )


# ---------------------------------------------------------------------------------------------
# Clip-Cov
# ---------------------------------------------------------------------------------------------


@given(
    seed=seeds,
    draw_seed=st.integers(0, 2**63 - 1),
    ratio=st.sampled_from([0.0, 2e-4, 0.05, 0.2, 0.5, 1.0]),
    lb=st.sampled_from([-np.inf, -0.5, 0.0, 0.2]),
    ub=st.sampled_from([0.1, 1.0, 5.0, np.inf]),
    micro_batch=st.sampled_from([None, 2, 3]),
)
def test_clip_cov_invariants(seed, draw_seed, ratio, lb, ub, micro_batch):
    """§17.5: per unit ``#selected = min(max(1, ⌊rN⌋), #cand)``; selected tokens are valid,
    unclipped by PPO and ``lb < c < ub``; candidates exactly those; same seed → same mask."""
    adv, lp, old, _, mask = random_batch(seed)
    sel, cand = ref.clip_cov_select(
        adv, lp, old, mask, ratio=ratio, lb=lb, ub=ub, seed=draw_seed,
        return_candidates=True, micro_batch=micro_batch,
    )  # fmt: skip
    assert sel.dtype == np.bool_ and cand.dtype == np.bool_
    size = mask.shape[0] if micro_batch is None else micro_batch
    for start in range(0, mask.shape[0], size):
        rows = slice(start, start + size)
        m = mask[rows]
        r = np.exp(lp[rows] - old[rows])
        l1 = -adv[rows] * r
        l2 = -adv[rows] * np.clip(r, 0.8, 1.2)
        c = cov_formula(adv[rows], lp[rows], m) if m.any() else np.zeros(m.shape)
        expected_cand = m & ~(l2 > l1) & (lb < c) & (c < ub)
        np.testing.assert_array_equal(cand[rows], expected_cand)
        assert not np.any(sel[rows] & ~expected_cand)
        quota = max(1, math.floor(ratio * int(m.sum())))
        assert sel[rows].sum() == min(quota, int(expected_cand.sum()))
    again = ref.clip_cov_select(
        adv, lp, old, mask, ratio=ratio, lb=lb, ub=ub, seed=draw_seed, micro_batch=micro_batch
    )
    np.testing.assert_array_equal(sel, again)


def test_clip_cov_seed_draws_with_default_rng():
    """§0.3, §5 step 4: ``numpy.random.default_rng(seed).permutation(#cand)``, one generator
    across units in increasing id, drawn only for units with candidates."""
    adv, lp, old, _, mask = random_batch(3, n_rows=6, width=12)
    old = lp.copy()  # on-policy: nothing is PPO-clipped
    mb = np.array([9, 9, 4, 4, 0, 0])
    sel, cand = ref.clip_cov_select(
        adv, lp, old, mask, ratio=0.1, lb=-np.inf, ub=np.inf, seed=123, micro_batch=mb,
        return_candidates=True,
    )  # fmt: skip
    rng = np.random.default_rng(123)
    expected = np.zeros(mask.shape, dtype=bool)
    for rows in ([4, 5], [2, 3], [0, 1]):  # ids 0 < 4 < 9
        index = np.flatnonzero(cand[rows])
        pi = rng.permutation(index.size)
        quota = max(1, math.floor(0.1 * mask[rows].sum()))
        sub = np.zeros(len(rows) * mask.shape[1], dtype=bool)
        sub[index[pi[:quota]]] = True
        expected[rows] = sub.reshape(len(rows), -1)
    np.testing.assert_array_equal(sel, expected)
    assert sel.sum() == sum(
        max(1, math.floor(0.1 * mask[r].sum())) for r in ([4, 5], [2, 3], [0, 1])
    )


def test_clip_cov_injected_perm():
    """``perm`` replaces the draw: ``selected = candidates[π[:n]]`` in flat order."""
    adv = np.array([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    lp = np.array([[-0.1, -0.2, -3.0, -0.3], [-2.0, -2.5, -0.1, -3.0]])
    mask = np.ones((2, 4), dtype=bool)
    _, cand = ref.clip_cov_select(
        adv, lp, lp, mask, ratio=0.25, lb=0.0, ub=10.0, seed=0, return_candidates=True
    )
    index = np.flatnonzero(cand)
    assert index.size >= 3
    perm = np.roll(np.arange(index.size), 1)  # π = [n−1, 0, 1, …]
    sel = ref.clip_cov_select(adv, lp, lp, mask, ratio=0.25, lb=0.0, ub=10.0, perm=perm)
    expected = np.zeros(8, dtype=bool)
    expected[index[perm[:2]]] = True  # quota ⌊0.25 · 8⌋ = 2
    np.testing.assert_array_equal(sel.ravel(), expected)
    # list form, one permutation per unit; a wrong permutation is refused
    sel_list = ref.clip_cov_select(adv, lp, lp, mask, ratio=0.25, lb=0.0, ub=10.0, perm=[perm])
    np.testing.assert_array_equal(sel, sel_list)
    with pytest.raises(ValueError, match="perm"):
        ref.clip_cov_select(adv, lp, lp, mask, lb=0.0, ub=10.0, perm=np.zeros(index.size, int))
    with pytest.raises(ValueError, match="perm"):
        ref.clip_cov_select(adv, lp, lp, mask, lb=0.0, ub=10.0, perm=[perm], micro_batch=1)


def verl_clip_cov(torch, old_log_prob, log_prob, advantages, response_mask, cliprange,
                  clip_cov_ratio, clip_cov_lb, clip_cov_ub, generator):  # fmt: skip
    """verl ``core_algos.py :: compute_policy_loss_clip_cov`` (``randperm`` from ``generator``)."""

    def masked_mean(values, mask):
        return (values * mask).sum() / (mask.sum() + 1e-8)

    negative_approx_kl = log_prob - old_log_prob
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = masked_mean(-negative_approx_kl, response_mask)
    pg_losses1 = -advantages * ratio
    corr = torch.ones_like(advantages)
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    clip_by_origin = (pg_losses2 > pg_losses1) & (response_mask > 0)
    cov_all = (advantages - masked_mean(advantages, response_mask)) * (
        log_prob - masked_mean(log_prob.detach(), response_mask)
    )
    cov_all[response_mask == 0] = -torch.inf
    cov_all[clip_by_origin] = -torch.inf
    clip_num = max(int(clip_cov_ratio * response_mask.sum().item()), 1)
    top_k_idx = (cov_all < clip_cov_ub) & (cov_all > clip_cov_lb) & (response_mask > 0)
    top_k_idx = torch.nonzero(top_k_idx)
    if len(top_k_idx) > 0:
        perm = torch.randperm(len(top_k_idx), generator=generator)
        top_k_idx = top_k_idx[perm[: min(clip_num, len(top_k_idx))]]
    else:
        top_k_idx = torch.empty((0, 2), dtype=torch.long)
    corr[top_k_idx[:, 0], top_k_idx[:, 1]] = 0
    pg_clipfrac = masked_mean((corr == 0).double(), response_mask)
    pg_losses = torch.maximum(pg_losses1, pg_losses2) * corr
    return pg_losses * response_mask, pg_clipfrac, ppo_kl, corr == 0


@given(seed=seeds, ratio=st.sampled_from([2e-4, 0.05, 0.3, 1.0]))
def test_clip_cov_matches_verl_with_injected_perm(seed, ratio):
    """§17.5: the ``perm`` verl draws (``torch.randperm(#cand)``) reproduces its mask bit for
    bit; the loss, ``pg_clipfrac`` and ``ppo_kl`` match."""
    torch = require_torch()
    adv, lp, old, _, mask = random_batch(seed, spread=2.0)
    mask[0, 0] = True
    t = {k: torch.from_numpy(v) for k, v in dict(adv=adv, lp=lp, old=old).items()}
    tm = torch.from_numpy(mask.astype(np.float64))
    gen = torch.Generator().manual_seed(seed % 2**31)
    loss, clipfrac, ppo_kl, verl_sel = verl_clip_cov(
        torch, t["old"], t["lp"], t["adv"], tm, 0.2, ratio, -0.5, 3.0, gen
    )
    _, cand = ref.clip_cov_select(
        adv, lp, old, mask, ratio=ratio, lb=-0.5, ub=3.0, seed=0, return_candidates=True
    )
    gen = torch.Generator().manual_seed(seed % 2**31)
    perm = (
        torch.randperm(int(cand.sum()), generator=gen).numpy() if cand.any() else np.empty(0, int)
    )
    sel = ref.clip_cov_select(adv, lp, old, mask, ratio=ratio, lb=-0.5, ub=3.0, perm=perm)
    np.testing.assert_array_equal(sel, verl_sel.numpy())
    terms = ref.clip_cov_loss(lp, old, adv, mask, sel)
    np.testing.assert_allclose(terms.loss, loss.numpy(), rtol=1e-15, atol=0)
    assert terms.clipfrac == pytest.approx(float(clipfrac), rel=1e-7)
    assert terms.ppo_kl == pytest.approx(float(ppo_kl), rel=1e-7, abs=1e-12)


def test_clip_cov_loss_zero_on_selected():
    """§5: selected tokens get zero loss but stay in the denominators; ``clipfrac =
    #selected/N_valid``."""
    adv, lp, old, _, mask = random_batch(1)
    sel = mask & (np.arange(10)[None, :] % 3 == 0)
    terms = ref.clip_cov_loss(lp, old, adv, mask, sel, clip_high=0.28)
    assert np.all(terms.loss[sel] == 0.0)
    r = np.exp(lp - old)
    full = np.maximum(-adv * r, -adv * np.clip(r, 0.8, 1.28))
    keep = mask & ~sel
    np.testing.assert_array_equal(terms.loss[keep], full[keep])
    assert terms.clipfrac == pytest.approx(sel.sum() / mask.sum())
    assert terms.clipfrac_lower == 0.0
    np.testing.assert_array_equal(terms.clipped, sel)
    # denominators keep the selected tokens
    assert ref.agg_loss(terms.loss, mask) == pytest.approx(full[keep].sum() / mask.sum())


def test_clip_cov_empty_and_no_candidates():
    adv, lp, old, _, mask = random_batch(2)
    assert not ref.clip_cov_select(adv, lp, old, np.zeros_like(mask), seed=0).any()
    assert not ref.clip_cov_select(adv, lp, old, mask, lb=10.0, ub=20.0, seed=0).any()


# ---------------------------------------------------------------------------------------------
# KL-Cov
# ---------------------------------------------------------------------------------------------


@given(
    seed=seeds,
    ratio=st.sampled_from([0.0, 2e-4, 0.1, 0.3, 1.0]),
    micro_batch=st.sampled_from([None, 2]),
)
def test_kl_cov_select_top_k_ties_by_lower_index(seed, ratio, micro_batch):
    """§17.5: the ``max(1, ⌊rN⌋)`` largest ``c`` per unit, ties by lower flat index (values
    from a small set, so ties are common)."""
    rng = np.random.default_rng(seed)
    adv = np.repeat(rng.integers(-1, 2, (6, 1)).astype(np.float64), 8, axis=1)
    lp = -rng.integers(0, 3, (6, 8)).astype(np.float64)
    mask = rng.random((6, 8)) < 0.8
    got = ref.kl_cov_select(adv, lp, mask, ratio=ratio, micro_batch=micro_batch)
    size = 6 if micro_batch is None else micro_batch
    for start in range(0, 6, size):
        rows = slice(start, start + size)
        m = mask[rows]
        expected = np.zeros(m.size, dtype=bool)
        if m.any():
            c = cov_formula(adv[rows], lp[rows], m).ravel()
            order = sorted(np.flatnonzero(m.ravel()), key=lambda i: (-c[i], i))
            expected[order[: max(1, math.floor(ratio * m.sum()))]] = True
        np.testing.assert_array_equal(got[rows].ravel(), expected)


def verl_kl_cov(torch, old_log_prob, log_prob, advantages, response_mask, k_percent, kl_cov_coef):
    """verl ``core_algos.py :: compute_policy_loss_kl_cov``."""
    negative_approx_kl = log_prob - old_log_prob
    abs_kl = negative_approx_kl.abs()
    ratio = torch.exp(negative_approx_kl)
    ppo_kl_abs = (abs_kl * response_mask).sum() / (response_mask.sum() + 1e-8)
    pg_losses1 = -advantages * ratio
    pg_losses_kl = -advantages * ratio + kl_cov_coef * abs_kl
    pg_losses = pg_losses1.clone()
    all_valid = response_mask > 0
    all_valid_idx = torch.nonzero(all_valid.reshape(-1), as_tuple=True)[0]
    all_valid_adv = advantages[all_valid].detach().reshape(-1)
    all_valid_logp = log_prob[all_valid].detach().reshape(-1)
    k = min(k_percent, len(all_valid_adv))
    if k != 0:
        cov_lst_all = (all_valid_adv - all_valid_adv.mean()) * (
            all_valid_logp - all_valid_logp.mean()
        )
        k_percent_nums = max(1, int(len(cov_lst_all) * k_percent))
        large_cov_idxs = torch.topk(cov_lst_all, k_percent_nums, largest=True).indices
        if len(large_cov_idxs) != 0:
            large_cov_idxs = all_valid_idx[large_cov_idxs]
            rows = large_cov_idxs // advantages.shape[1]
            cols = large_cov_idxs % advantages.shape[1]
            pg_losses[rows, cols] = pg_losses_kl[rows, cols]
    return pg_losses * response_mask, ppo_kl_abs


@given(seed=seeds, ratio=st.sampled_from([0.05, 0.2, 0.5]))
def test_kl_cov_matches_verl(seed, ratio):
    """verl's KL-Cov loss on distinct values (``torch.topk``'s tie order is unspecified)."""
    torch = require_torch()
    adv, lp, old, _, mask = random_batch(seed, spread=2.0)
    adv = adv + np.random.default_rng(seed).normal(0, 1e-3, adv.shape)  # distinct c
    mask[0, 0] = True
    t = [torch.from_numpy(x) for x in (old, lp, adv, mask.astype(np.float64))]
    loss, ppo_kl = verl_kl_cov(torch, *t, ratio, 0.7)
    sel = ref.kl_cov_select(adv, lp, mask, ratio=ratio)
    terms = ref.kl_cov_loss(lp, old, adv, mask, sel, kl_coef=0.7)
    np.testing.assert_allclose(terms.loss, loss.numpy(), rtol=1e-14, atol=1e-15)
    assert terms.ppo_kl == pytest.approx(float(ppo_kl), rel=1e-7)
    assert terms.clipfrac == 0.0 and not terms.clipped.any()


def test_kl_cov_on_policy_penalty_is_zero():
    """§5, §17.5: on-policy ``|Δ| ≡ 0``: the penalty vanishes (plain unclipped PG, PRIME-RL
    issue #1; on the torch face the extra gradient is exactly 0)."""
    adv, lp, _, _, mask = random_batch(4, spread=3.0)
    sel = ref.kl_cov_select(adv, lp, mask, ratio=0.3)
    assert sel.sum() == max(1, math.floor(0.3 * mask.sum()))
    terms = ref.kl_cov_loss(lp, lp.copy(), adv, mask, sel, kl_coef=5.0)
    np.testing.assert_array_equal(terms.loss, np.where(mask, -adv, 0.0))
    assert terms.ppo_kl == 0.0
    # off-policy: the penalty is exactly kl_coef·|Δ| on the selected tokens only
    old = lp - 0.25
    with_pen = ref.kl_cov_loss(lp, old, adv, mask, sel, kl_coef=2.0).loss
    without = ref.kl_cov_loss(lp, old, adv, mask, np.zeros_like(sel), kl_coef=2.0).loss
    np.testing.assert_allclose(with_pen - without, np.where(sel, 0.5, 0.0), atol=1e-14)


def test_kl_cov_select_scope_and_empty():
    adv, lp, _, _, mask = random_batch(8)
    np.testing.assert_array_equal(
        ref.kl_cov_select(adv, lp, mask, scope="batch", micro_batch=2),
        ref.kl_cov_select(adv, lp, mask),
    )
    assert not ref.kl_cov_select(adv, lp, np.zeros_like(mask)).any()
    # the quota is per micro-batch (verl #7829): 3 units select ≥ 3 tokens at a tiny ratio
    assert ref.kl_cov_select(adv, lp, mask, micro_batch=2).sum() == 3


# ---------------------------------------------------------------------------------------------
# §6 STEER
# ---------------------------------------------------------------------------------------------


def steer_omega(adv, lp, old, ent):
    pi = np.clip(np.exp(lp), 1e-8, 1 - 1e-8)
    pi_old = np.clip(np.exp(old), 1e-8, 1.0)
    return (adv / pi_old) * pi * (1 - pi) * (np.log(pi) + ent)


@given(
    seed=seeds, lam_min=st.sampled_from([0.5, 0.7, 0.8, 1.0]), spread=st.sampled_from([0.01, 1.0])
)
def test_steer_exp_weights(seed, lam_min, spread):
    """§17.6: exp weights in ``[λ_min, 1]``, 1 where ``Ω = 0``, ``λ_min`` at the largest
    ``|Ω|`` when ``M ≥ 0.02``, 0 off-mask; the formula of §6."""
    adv, lp, old, ent, mask = random_batch(seed, spread=spread)
    adv[0] = 0.0  # Ω = 0 on row 0
    w = ref.steer_weights(adv, lp, old, ent, mask, lam_min=lam_min)
    assert np.all(w[~mask] == 0.0)
    assert np.all((w[mask] >= lam_min) & (w[mask] <= 1.0))
    assert np.all(w[0][mask[0]] == 1.0)
    omega = np.abs(steer_omega(adv, lp, old, ent))
    big = omega[mask].max()
    kappa = -math.log(lam_min) / max(big, 0.02)
    np.testing.assert_allclose(
        w[mask], np.clip(np.exp(-kappa * omega[mask]), lam_min, 1.0), rtol=1e-13
    )
    if big >= 0.02:
        assert w[mask][np.argmax(omega[mask])] == pytest.approx(lam_min, rel=1e-12)


@given(seed=seeds)
def test_steer_linear_weights(seed):
    """Linear weights in ``[λ_min, λ_max]``: ``λ_max`` at ``min |Ω|``, ``λ_min`` at ``max |Ω|``;
    a constant ``|Ω|`` gives the midpoint."""
    adv, lp, old, ent, mask = random_batch(seed)
    mask[0, :2] = True
    w = ref.steer_weights(adv, lp, old, ent, mask, mode="linear", lam_min=0.7, lam_max=1.3)
    assert np.all(w[~mask] == 0.0)
    assert np.all((w[mask] >= 0.7) & (w[mask] <= 1.3))
    omega = np.abs(steer_omega(adv, lp, old, ent))[mask]
    assert w[mask][np.argmax(omega)] == pytest.approx(0.7, rel=1e-12)
    assert w[mask][np.argmin(omega)] == pytest.approx(1.3, rel=1e-12)
    zero = ref.steer_weights(np.zeros_like(adv), lp, old, ent, mask, mode="linear")
    assert np.all(zero[mask] == pytest.approx(1.0))  # (0.8 + 1.2) / 2


def test_steer_units_and_non_finite():
    adv, lp, old, ent, mask = random_batch(9)
    mask[:, 0] = True
    per_unit = ref.steer_weights(adv, lp, old, ent, mask, micro_batch=3)
    np.testing.assert_array_equal(
        per_unit[3:], ref.steer_weights(adv[3:], lp[3:], old[3:], ent[3:], mask[3:])
    )
    ent_inf = ent.copy()
    ent_inf[0, 0] = np.inf  # Ω non-finite → 0 → weight 1
    adv[0] = 1.0
    w = ref.steer_weights(adv, lp, old, ent_inf, mask)
    assert w[0, 0] == 1.0


# ---------------------------------------------------------------------------------------------
# §7 CANON
# ---------------------------------------------------------------------------------------------


@given(seed=seeds)
def test_canon_half_lambda_is_dr_grpo_on_even_groups(seed):
    """§17.6: ``λ = 0.5, α = 1, β = 0`` on even groups equals ``R − group mean``."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, 4) * 2
    group = np.repeat(rng.permutation(10)[:4], sizes)
    rewards = rng.integers(0, 2, group.size) + rng.normal(0, 0.1, group.size)
    metric = rng.gamma(1.0, 1.0, group.size)
    got = ref.canon_advantages(rewards, metric, group, lam=0.5)
    expected = rewards.copy()
    for g in np.unique(group):
        expected[group == g] -= rewards[group == g].mean()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_canon_hand_values():
    """Groups split by a stable ascending sort of the metric (§7)."""
    rewards = np.array([1.0, 0.0, 1.0, 1.0, 0.7, 0.5, 0.25, 0.0])
    metric = np.array([0.3, 0.1, 0.4, 0.2, 5.0, 0.1, 0.1, 0.1])
    group = np.array([0, 0, 0, 0, 1, 2, 2, 2])
    # group 0: C⁻ = rows 1, 3 (μ⁻ = 0.5), C⁺ = rows 0, 2 (μ⁺ = 1)
    # group 2 (ties: row order): C⁻ = row 5 (μ⁻ = 0.5), C⁺ = rows 6, 7 (μ⁺ = 0.125)
    got = ref.canon_advantages(rewards, metric, group, l_norm=2.0)  # λ = 1, α = 1, β = 0
    np.testing.assert_allclose(
        got, np.array([0.5, -1.0, 0.5, 0.0, 0.7, 0.375, -0.25, -0.5]) / 2.0, atol=1e-15
    )
    got = ref.canon_advantages(rewards, metric, group, alpha=2.0, beta=0.1)
    np.testing.assert_allclose(got[:4], [0.1, -1.1, 0.1, 0.9], atol=1e-15)
    got = ref.canon_advantages(rewards, metric, group, alpha=2.0, beta=0.1, variant="length")
    np.testing.assert_allclose(got[:4], [1.6, -2.1, 1.6, -1.1], atol=1e-15)
    got = ref.canon_advantages(rewards, metric, group, lam=0.0)  # intra-group only
    np.testing.assert_allclose(got[:4], [0.0, -0.5, 0.0, 0.5], atol=1e-15)
    assert got[4] == 0.7  # singleton: R / l_norm
