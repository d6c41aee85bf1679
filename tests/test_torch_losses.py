"""The torch training losses against direct float64 computations of ``rollout.md``'s formulas.

Every expected value here is written out independently of entcore, token by token in Python
floats (or plain float64 torch arithmetic): the PPO surrogate with dual clip and verl's metrics
(§2), every aggregation mode of §1 by verl's and TRL's names, the 80/20 forking-token mask and
both normalisations (§3), Clip-Cov and KL-Cov with their selections (§5), STEER weights (§6),
CANON and GRPO advantages (§2, §7), EPO's band penalty and loss term (§10), AEPO's REINFORCE
term (§12), SIREN's nucleus-entropy regulariser from logits (§13), and the entropy bonus (static
and adaptive, :mod:`entcore.torch.policy_loss`). Gradients: ``gradcheck`` in float64 on inputs
kept away from the kinks (clip boundaries, ``|Δ| = 0``); masked-out tokens (NaN there) get
exactly zero gradient.
"""

from helpers import require_torch

torch = require_torch()

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402

import entcore.torch as et  # noqa: E402

F64 = torch.float64
EPS_LOW, EPS_HIGH, CLIP_C = 0.2, 0.28, 3.0


# ---------------------------------------------------------------------------------------------
# Random batches
# ---------------------------------------------------------------------------------------------


def _away_from_kinks(delta: np.ndarray) -> np.ndarray:
    """Log-ratios at least 0.02 from every kink of the losses: ``0`` (|Δ| of KL-Cov), the clip
    edges ``log(1 − ε_low)``, ``log(1 + ε_high)``, ``log(1 + ε_low)``, the dual clip ``log c``."""
    kinks = np.log([1.0, 1 - EPS_LOW, 1 + EPS_HIGH, 1 + EPS_LOW, CLIP_C])
    out = delta.copy()
    for k in kinks:
        near = np.abs(out - k) < 0.02
        out[near] = k + np.where(out[near] >= k, 0.02, -0.02)
    return out


class Batch:
    """A padded ``(B, L)`` batch with mask holes, one empty row and one full row; NaN at every
    invalid position of every float field (never read). Fields are float64 tensors."""

    def __init__(self, seed: int, rows: int = 6, width: int = 10, spread: float = 0.6):
        rng = np.random.default_rng(seed)
        mask = rng.random((rows, width)) > 0.3
        mask[0] = True
        mask[2] = False
        old = -rng.uniform(0.05, 3.0, (rows, width))
        delta = _away_from_kinks(rng.normal(0.0, spread, (rows, width)))
        self.mask_np = mask
        self.old_np = old
        self.lp_np = old + delta
        self.adv_np = rng.normal(0.0, 1.5, (rows, width))
        self.h_np = rng.uniform(0.0, 3.0, (rows, width))
        self.old_h_np = rng.uniform(0.0, 3.0, (rows, width))
        self.mask = torch.from_numpy(mask)

    def t(self, name: str, *, grad: bool = False) -> torch.Tensor:
        x = torch.from_numpy(np.where(self.mask_np, getattr(self, f"{name}_np"), np.nan))
        return x.requires_grad_(grad)

    def valid(self):
        """``(b, t)`` of every valid token in row-major order."""
        return [tuple(int(i) for i in bt) for bt in np.argwhere(self.mask_np)]


# ---------------------------------------------------------------------------------------------
# Direct float64 transcriptions of the spec
# ---------------------------------------------------------------------------------------------


def direct_ppo(b: Batch, clip_c=CLIP_C, clamp=20.0, eps_low=EPS_LOW, eps_high=EPS_HIGH):
    """Per-token loss, clipped, lower-clipped flags and -Δ per valid token (§2)."""
    loss, clipped, lower, neg_kl = {}, {}, {}, {}
    for bt in b.valid():
        d = b.lp_np[bt] - b.old_np[bt]
        if clamp is not None:
            d = max(-clamp, min(clamp, d))
        r = math.exp(d)
        a = b.adv_np[bt]
        l1 = -a * r
        l2 = -a * min(max(r, 1 - eps_low), 1 + eps_high)
        value = max(l1, l2)
        clipped[bt] = l2 > l1
        lower[bt] = clip_c is not None and a < 0 and value > -a * clip_c
        if clip_c is not None and a < 0:
            value = min(value, -a * clip_c)
        loss[bt] = value
        neg_kl[bt] = -d
    return loss, clipped, lower, neg_kl


def direct_agg(b: Batch, per_token: dict, mode: str, **kw) -> float:
    """``rollout.md`` §1, one mode at a time, from row sums and counts."""
    rows, width = b.mask_np.shape
    sums = [sum(per_token.get((r, t), 0.0) for t in range(width)) for r in range(rows)]
    counts = [int(b.mask_np[r].sum()) for r in range(rows)]
    nonempty = [r for r in range(rows) if counts[r] > 0]
    total, n_valid = sum(sums), sum(counts)
    dp = kw.get("dp_size", 1)
    accum = kw.get("grad_accum_steps", 1)

    def div(x, y):
        return 0.0 if y == 0 else x / y

    if mode == "token-mean":
        return div(total, kw.get("batch_num_tokens", n_valid)) * dp
    if mode == "seq-mean-token-sum":
        return div(sum(sums[r] for r in nonempty), kw.get("global_batch_size", len(nonempty))) * dp
    if mode == "seq-mean-token-mean":
        means = sum(sums[r] / counts[r] for r in nonempty)
        return div(means, kw.get("global_batch_size", len(nonempty))) * dp
    if mode == "seq-mean-token-sum-norm":
        return div(total, kw.get("loss_scale_factor", width))
    if mode == "grpo":
        return sum(sums[r] / max(counts[r], 1) for r in range(rows)) / rows / accum
    if mode == "bnpo":
        return total / max(n_valid, 1) / accum
    if mode == "dr_grpo":
        return total / (rows * kw["max_completion_length"]) / accum
    assert mode == "dapo"
    items = kw.get("num_items_in_batch", n_valid)
    return div(total, items / kw.get("num_processes", 1))


def masked_mean(b: Batch, values: dict) -> float:
    return sum(float(values[bt]) for bt in b.valid()) / len(b.valid())


def direct_forking(b: Batch, rho: float) -> dict:
    """Top-ρ tokens of the batch: ``H ≥ x_(⌈h⌉)``, ``h = (N − 1)(1 − ρ)`` snapped (§3)."""
    values = sorted(b.h_np[bt] for bt in b.valid())
    h = (len(values) - 1) * (1 - rho)
    if abs(h - round(h)) <= 2.0**-30 * max(1.0, h):
        h = float(round(h))
    threshold = values[math.ceil(h)]
    return {bt: b.h_np[bt] >= threshold for bt in b.valid()}


def direct_cov(b: Batch) -> dict:
    """``c_t = (A_t − Ā)(ℓ_t − ℓ̄)`` over the valid tokens (§5)."""
    valid = b.valid()
    a_bar = sum(b.adv_np[bt] for bt in valid) / len(valid)
    l_bar = sum(b.lp_np[bt] for bt in valid) / len(valid)
    return {bt: (b.adv_np[bt] - a_bar) * (b.lp_np[bt] - l_bar) for bt in valid}


def direct_steer(b: Batch, mode: str, lam_min: float, lam_max: float) -> dict:
    """STEER's released first-order weights (§6)."""
    omega = {}
    for bt in b.valid():
        pi = min(max(math.exp(b.lp_np[bt]), 1e-8), 1 - 1e-8)
        pi_old = min(max(math.exp(b.old_np[bt]), 1e-8), 1.0)
        w = (b.adv_np[bt] / pi_old) * pi * (1 - pi) * (math.log(pi) + b.old_h_np[bt])
        omega[bt] = abs(w) if math.isfinite(w) else 0.0
    big, small = max(omega.values()), min(omega.values())
    if mode == "exp":
        kappa = -math.log(lam_min) / max(big, 0.02)
        return {bt: min(max(math.exp(-kappa * o), lam_min), 1.0) for bt, o in omega.items()}
    slope = (lam_max - lam_min) / (big - small)
    return {
        bt: min(max(lam_max - (o - small) * slope, lam_min), lam_max) for bt, o in omega.items()
    }


def close(x, expected, rel=1e-9, abs_=1e-12):
    if isinstance(x, torch.Tensor):
        x = x.detach()
    return float(x) == pytest.approx(expected, rel=rel, abs=abs_)


# ---------------------------------------------------------------------------------------------
# PPO / GRPO surrogate and aggregation (§1, §2)
# ---------------------------------------------------------------------------------------------

AGG_CASES = [
    ("token-mean", {}),
    ("token-mean", {"dp_size": 4, "batch_num_tokens": 123}),
    ("seq-mean-token-sum", {}),
    ("seq-mean-token-sum", {"global_batch_size": 6, "dp_size": 2}),
    ("seq-mean-token-mean", {}),
    ("seq-mean-token-mean", {"global_batch_size": 6}),
    ("seq-mean-token-sum-norm", {}),
    ("seq-mean-token-sum-norm", {"loss_scale_factor": 4096}),
    ("grpo", {"grad_accum_steps": 2}),
    ("bnpo", {}),
    ("dr_grpo", {"max_completion_length": 64}),
    ("dapo", {}),
    ("dapo", {"num_items_in_batch": 300, "num_processes": 4}),
]


@pytest.mark.parametrize(("mode", "kw"), AGG_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_vanilla_policy_loss_equals_the_formula_in_every_aggregation_mode(mode, kw, seed):
    b = Batch(seed, spread=0.8)
    loss, metrics = et.compute_policy_loss(
        b.t("old"), b.t("lp", grad=True), b.t("adv"), b.mask, mode, clip_ratio_high=EPS_HIGH, **kw
    )
    per_token, clipped, lower, neg_kl = direct_ppo(b)
    assert loss.dtype == F64 and loss.requires_grad
    assert close(loss, direct_agg(b, per_token, mode, **kw))
    assert close(metrics["pg_loss"], direct_agg(b, per_token, mode, **kw))
    assert close(metrics["pg_clipfrac"], masked_mean(b, clipped))
    assert close(metrics["pg_clipfrac_lower"], masked_mean(b, lower))
    assert close(metrics["ppo_kl"], masked_mean(b, neg_kl))
    assert all(not v.requires_grad for v in metrics.values())


def test_dual_clip_and_clip_metrics_are_exercised():
    b = Batch(3, spread=1.2)
    _, clipped, lower, _ = direct_ppo(b)
    assert 0 < sum(clipped.values()) < len(clipped)
    assert sum(lower.values()) > 0  # the dual clip acts on this batch
    _, metrics = et.compute_policy_loss(
        b.t("old"), b.t("lp"), b.t("adv"), b.mask, clip_ratio_high=EPS_HIGH
    )
    assert close(metrics["pg_clipfrac_lower"], masked_mean(b, lower))
    # Without dual clip there is no lower clip fraction and the loss is the plain max(l1, l2).
    loss, metrics = et.compute_policy_loss(
        b.t("old"), b.t("lp"), b.t("adv"), b.mask, clip_ratio_high=EPS_HIGH, clip_ratio_c=None
    )
    assert float(metrics["pg_clipfrac_lower"]) == 0.0
    assert close(loss, direct_agg(b, direct_ppo(b, clip_c=None)[0], "token-mean"))


def test_log_ratio_clamp():
    b = Batch(4, spread=0.5)
    b.lp_np = b.old_np + np.where(np.arange(b.lp_np.size).reshape(b.lp_np.shape) % 3 == 0, 3.0, 0.1)
    for clamp in (None, 20.0, 1.5):
        loss, metrics = et.compute_policy_loss(
            b.t("old"),
            b.t("lp"),
            b.t("adv"),
            b.mask,
            clip_ratio_high=EPS_HIGH,
            log_ratio_clamp=clamp,
            clip_ratio_c=None,
        )
        per_token, _, _, neg_kl = direct_ppo(b, clip_c=None, clamp=clamp)
        assert close(loss, direct_agg(b, per_token, "token-mean"))
        assert close(metrics["ppo_kl"], masked_mean(b, neg_kl))


def test_policy_loss_gradcheck_and_masked_tokens_have_zero_gradient():
    b = Batch(5)
    old, adv, h = b.t("old"), b.t("adv"), b.t("h", grad=True)
    for method, extra in [
        ("vanilla", {"clip_ratio_high": EPS_HIGH}),
        ("vanilla", {"rho": 0.2, "entropy_coeff": 0.01}),
        ("clip_cov", {"cov_ratio": 0.2, "seed": 3, "clip_cov_lb": 0.0, "clip_cov_ub": 50.0}),
        ("kl_cov", {"cov_ratio": 0.2, "rho": 0.5, "forking_normalize": "all_valid"}),
    ]:
        for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):

            def f(lp, ent, method=method, extra=extra, mode=mode, valid=b.mask):
                lp = torch.where(valid, lp, torch.nan)  # NaN at masked tokens: never read
                loss, _ = et.compute_policy_loss(
                    old, lp, adv, b.mask, mode, method=method, entropy=ent, **extra
                )
                return loss

            lp = torch.from_numpy(np.where(b.mask_np, b.lp_np, 0.0)).requires_grad_()
            ent = torch.from_numpy(np.where(b.mask_np, b.h_np, 0.0)).requires_grad_()
            assert gradcheck(f, (lp, ent)), (method, mode)
            loss = f(lp, ent)
            g_lp, g_h = torch.autograd.grad(loss, (lp, ent), allow_unused=True)
            assert torch.isfinite(g_lp).all()
            assert (g_lp[~b.mask] == 0).all()
            if g_h is not None:
                assert (g_h[~b.mask] == 0).all()
    # NaN inputs at masked positions in every field: finite loss, zero gradient there.
    lp = b.t("lp", grad=True)
    loss, _ = et.compute_policy_loss(old, lp, adv, b.mask, entropy=h, rho=0.5, entropy_coeff=0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert (lp.grad[~b.mask] == 0).all() and (h.grad[~b.mask] == 0).all()
    assert torch.isfinite(lp.grad).all() and torch.isfinite(h.grad).all()


def test_packed_layout_gives_the_padded_result():
    b = Batch(6)
    kw = {"method": "kl_cov", "cov_ratio": 0.1, "entropy_coeff": 0.02, "rho": 0.3}
    padded, m_pad = et.compute_policy_loss(
        b.t("old"), b.t("lp"), b.t("adv"), b.mask, "seq-mean-token-mean", entropy=b.t("h"), **kw
    )
    lengths = np.full(b.mask_np.shape[0], b.mask_np.shape[1])
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    packed, m_pack = et.compute_policy_loss(
        b.t("old").reshape(-1),
        b.t("lp").reshape(-1),
        b.t("adv").reshape(-1),
        b.mask.reshape(-1),
        "seq-mean-token-mean",
        entropy=b.t("h").reshape(-1),
        cu_seqlens=cu,
        **kw,
    )
    assert close(packed, float(padded))
    assert m_pad.keys() == m_pack.keys()
    for key in m_pad:
        assert close(m_pack[key], float(m_pad[key])), key


# ---------------------------------------------------------------------------------------------
# Forking tokens (§3)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.2, 0.5, 1.0])
@pytest.mark.parametrize("mode", ["token-mean", "grpo", "dapo", "seq-mean-token-sum"])
def test_forking_token_loss_both_normalisations(rho, mode):
    b = Batch(7)
    per_token = direct_ppo(b)[0]
    keep = direct_forking(b, rho)
    kept_loss = {bt: v * keep[bt] for bt, v in per_token.items()}
    n_sel = sum(keep.values())
    args = (b.t("old"), b.t("lp"), b.t("adv"), b.mask, mode)
    common = {"entropy": b.t("h"), "rho": rho, "clip_ratio_high": EPS_HIGH}
    selected, metrics = et.compute_policy_loss(*args, forking_normalize="selected", **common)
    assert close(selected, sum(kept_loss.values()) / n_sel)  # the paper's Eq. 6, any mode
    assert int(metrics["forking_selected"]) == n_sel
    assert close(metrics["forking_kept_frac"], n_sel / len(keep))
    all_valid, _ = et.compute_policy_loss(*args, forking_normalize="all_valid", **common)
    assert close(all_valid, direct_agg(b, kept_loss, mode))  # TRL: normaliser unchanged
    if rho == 1.0:
        assert n_sel == len(keep)


def test_forking_selected_dp_size_and_rejected_agg_arguments():
    b = Batch(8)
    args = (b.t("old"), b.t("lp"), b.t("adv"), b.mask)
    one, _ = et.compute_policy_loss(*args, entropy=b.t("h"), rho=0.2)
    four, _ = et.compute_policy_loss(*args, entropy=b.t("h"), rho=0.2, dp_size=4)
    assert close(four, 4 * float(one))
    with pytest.raises(ValueError, match="agg_kwargs"):
        et.compute_policy_loss(*args, entropy=b.t("h"), rho=0.2, global_batch_size=6)
    with pytest.raises(ValueError, match="entropy"):
        et.compute_policy_loss(*args, rho=0.2)
    with pytest.raises(ValueError, match="old_entropy"):
        et.compute_policy_loss(*args, steer="exp")
    with pytest.raises(ValueError, match="method"):
        et.compute_policy_loss(*args, method="gspo")
    with pytest.raises(TypeError, match="dapo_size"):
        et.compute_policy_loss(*args, dapo_size=2)


# ---------------------------------------------------------------------------------------------
# Clip-Cov and KL-Cov (§5)
# ---------------------------------------------------------------------------------------------


def test_clip_cov_selection_loss_metrics_and_gradient():
    b = Batch(9, spread=0.4)
    b.adv_np = b.adv_np * 3.0
    ratio, lb, ub, seed = 0.08, 0.2, 6.0, 11
    cov = direct_cov(b)
    per_token, clipped, _, neg_kl = direct_ppo(b, clip_c=None, clamp=None, eps_high=EPS_LOW)
    candidates = [bt for bt in b.valid() if not clipped[bt] and lb < cov[bt] < ub]
    quota = max(math.floor(ratio * len(cov)), 1)
    assert len(candidates) > quota  # the random draw matters on this batch
    perm = np.random.default_rng(seed).permutation(len(candidates))
    chosen = {candidates[i] for i in perm[:quota]}
    lp = b.t("lp", grad=True)
    loss, metrics = et.compute_policy_loss(
        b.t("old"),
        lp,
        b.t("adv"),
        b.mask,
        method="clip_cov",
        cov_ratio=ratio,
        clip_cov_lb=lb,
        clip_cov_ub=ub,
        seed=seed,
    )
    expected = {bt: (0.0 if bt in chosen else v) for bt, v in per_token.items()}
    assert close(loss, direct_agg(b, expected, "token-mean"))
    assert int(metrics["cov_selected"]) == quota
    assert close(metrics["pg_clipfrac"], quota / len(cov))
    assert close(metrics["ppo_kl"], masked_mean(b, neg_kl))
    loss.backward()
    chosen_mask = torch.zeros_like(b.mask)
    for bt in chosen:
        chosen_mask[bt] = True
    assert (lp.grad[chosen_mask] == 0).all() and (lp.grad[~b.mask] == 0).all()
    assert (lp.grad[b.mask & ~chosen_mask] != 0).sum() > 0


@pytest.mark.parametrize("kl_coef", [1.0, 0.1])
def test_kl_cov_selection_loss_metrics(kl_coef):
    b = Batch(10)
    ratio = 0.1
    cov = direct_cov(b)
    k = max(1, math.floor(ratio * len(cov)))
    top = set(sorted(cov, key=lambda bt: -cov[bt])[:k])
    expected, abs_kl = {}, {}
    for bt in b.valid():
        d = b.lp_np[bt] - b.old_np[bt]
        expected[bt] = -b.adv_np[bt] * math.exp(d) + kl_coef * abs(d) * (bt in top)
        abs_kl[bt] = abs(d)
    loss, metrics = et.compute_policy_loss(
        b.t("old"), b.t("lp"), b.t("adv"), b.mask, method="kl_cov", cov_ratio=ratio, kl_coef=kl_coef
    )
    assert close(loss, direct_agg(b, expected, "token-mean"))
    assert int(metrics["cov_selected"]) == k
    assert close(metrics["ppo_kl"], masked_mean(b, abs_kl))
    assert float(metrics["pg_clipfrac"]) == 0.0 == float(metrics["pg_clipfrac_lower"])


def test_kl_cov_on_policy_equals_unclipped_policy_gradient():
    b = Batch(11)
    lp = b.t("lp", grad=True)
    loss, _ = et.compute_policy_loss(
        lp.detach(), lp, b.t("adv"), b.mask, method="kl_cov", cov_ratio=0.3
    )
    (g,) = torch.autograd.grad(loss, lp)
    n = int(b.mask.sum())
    expected = torch.where(b.mask, -torch.from_numpy(b.adv_np) / n, 0.0)
    assert torch.allclose(g, expected, rtol=1e-13, atol=0)


# ---------------------------------------------------------------------------------------------
# STEER (§6)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "lam_min", "lam_max"), [("exp", 0.8, 1.2), ("linear", 0.8, 1.2)])
def test_steer_weights_and_weighted_loss(mode, lam_min, lam_max):
    b = Batch(12)
    weights = direct_steer(b, mode, lam_min, lam_max)
    got = et.steer_weights(b.t("adv"), b.t("lp"), b.t("old"), b.t("old_h"), b.mask, mode=mode)
    for bt, w in weights.items():
        assert close(got[bt], w)
    assert (got[~b.mask] == 0).all()
    per_token = direct_ppo(b, clip_c=10.0)[0]
    loss, metrics = et.compute_policy_loss(
        b.t("old"),
        b.t("lp"),
        b.t("adv"),
        b.mask,
        clip_ratio_high=EPS_HIGH,
        clip_ratio_c=10.0,
        steer=mode,
        old_entropy=b.t("old_h"),
    )
    weighted = {bt: v * weights[bt] for bt, v in per_token.items()}
    assert close(loss, direct_agg(b, weighted, "token-mean"))
    assert close(metrics["steer_weight_mean"], masked_mean(b, weights))
    # The weights are constants: the gradient is the weighted PPO gradient, written out.
    lp = b.t("lp", grad=True)
    loss, _ = et.compute_policy_loss(
        b.t("old"),
        lp,
        b.t("adv"),
        b.mask,
        clip_ratio_high=EPS_HIGH,
        clip_ratio_c=10.0,
        steer=mode,
        old_entropy=b.t("old_h"),
    )
    (g,) = torch.autograd.grad(loss, lp)
    n = len(weights)
    for bt in b.valid():
        r = math.exp(b.lp_np[bt] - b.old_np[bt])
        a = b.adv_np[bt]
        unclipped = -a * r >= -a * min(max(r, 1 - EPS_LOW), 1 + EPS_HIGH)
        capped = a < 0 and max(-a * r, -a * min(max(r, 1 - EPS_LOW), 1 + EPS_HIGH)) > -a * 10.0
        want = (-a * r if unclipped and not capped else 0.0) * weights[bt] / n
        assert close(g[bt], want, abs_=1e-15)
    assert (g[~b.mask] == 0).all()


# ---------------------------------------------------------------------------------------------
# Entropy bonus: static and adaptive
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_static_entropy_bonus(mode):
    b = Batch(13)
    coef = 0.003
    h = b.t("h", grad=True)
    loss, metrics = et.compute_policy_loss(
        b.t("old"), b.t("lp"), b.t("adv"), b.mask, mode, entropy=h, entropy_coeff=coef
    )
    entropies = {bt: b.h_np[bt] for bt in b.valid()}
    pg = direct_agg(b, direct_ppo(b, eps_high=EPS_LOW)[0], mode)
    assert close(loss, pg - coef * direct_agg(b, entropies, mode))
    assert close(metrics["entropy_loss"], direct_agg(b, entropies, mode))
    assert close(metrics["entropy"], masked_mean(b, entropies))  # the token mean, any mode
    (g,) = torch.autograd.grad(loss, h)
    if mode == "token-mean":
        expected = torch.zeros(b.mask.shape, dtype=F64)
        expected[b.mask] = -coef / len(entropies)
        assert torch.allclose(g, expected, rtol=1e-13, atol=0)
    assert (g[~b.mask] == 0).all()
    assert gradcheck(
        lambda x: et.entropy_bonus(torch.where(b.mask, x, torch.nan), b.mask, mode, coef=coef),
        (torch.from_numpy(b.h_np).requires_grad_(),),
    )


def test_adaptive_entropy_coefficient():
    ctl = et.AdaptiveEntropyCoef(target=0.2, delta=0.005)
    entropies = [0.1, 0.15, 0.3, 0.2, 0.1, 0.5, 0.5, 0.5]
    expected_alpha, c = [], 0.0
    for e in entropies:
        expected_alpha.append(c if e <= 0.2 else 0.0)
        c = max(0.0, c + 0.005 if e < 0.2 else (c - 0.005 if e > 0.2 else c))
    got = [ctl.step(e) for e in entropies]
    assert got == pytest.approx(expected_alpha, abs=1e-15)
    assert ctl.coef == 0.0  # clipped at 0 after the decreases
    capped = et.AdaptiveEntropyCoef(delta=0.5, max_coef=0.7)
    assert [capped.step(0.0) for _ in range(3)] == [0.0, 0.5, 0.7]
    assert capped.step(torch.tensor(0.1)) == 0.7
    with pytest.raises(ValueError, match="entropy"):
        ctl.step(float("nan"))
    with pytest.raises(ValueError, match="delta"):
        et.AdaptiveEntropyCoef(delta=-1.0)


# ---------------------------------------------------------------------------------------------
# Advantages: GRPO (§2) and CANON (§7)
# ---------------------------------------------------------------------------------------------


def test_group_and_canon_advantages():
    rng = np.random.default_rng(14)
    group = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 3, 3, 3])
    rewards = rng.integers(0, 2, group.size).astype(np.float64) + rng.normal(0, 0.1, group.size)
    metric = rng.uniform(0, 2, group.size)
    r_t, g_t, m_t = (torch.from_numpy(x) for x in (rewards, group, metric))
    for scale, eps in [("group", 1e-6), ("batch", 1e-4), ("none", 1e-6)]:
        got = et.group_advantages(r_t, g_t, scale=scale, eps=eps)
        for i, gi in enumerate(group):
            members = rewards[group == gi]
            if members.size == 1:
                mu, sd = 0.0, 1.0
            else:
                mu, sd = members.mean(), members.std(ddof=1)
            if scale == "batch":
                sd = rewards.std(ddof=1)
            want = rewards[i] - mu if scale == "none" else (rewards[i] - mu) / (sd + eps)
            assert close(got[i], want)
    lam, alpha, beta, l_norm = 0.7, 1.3, 0.1, 2.0
    got = et.canon_advantages(r_t, m_t, g_t, lam=lam, alpha=alpha, beta=beta, l_norm=l_norm)
    for gi in np.unique(group):
        idx = np.flatnonzero(group == gi)
        if idx.size == 1:
            assert close(got[idx[0]], rewards[idx[0]] / l_norm)
            continue
        order = idx[np.argsort(metric[idx], kind="stable")]
        low, high = order[: idx.size // 2], order[idx.size // 2 :]
        mu_lo, mu_hi = rewards[low].mean(), rewards[high].mean()
        for i in high:
            want = lam * (rewards[i] - alpha * mu_lo + beta) + (1 - lam) * (rewards[i] - mu_hi)
            assert close(got[i], want / l_norm)
        for i in low:
            want = lam * (alpha * rewards[i] - mu_hi - beta) + (1 - lam) * (rewards[i] - mu_lo)
            assert close(got[i], want / l_norm)


# ---------------------------------------------------------------------------------------------
# EPO (§10), AEPO (§12), SIREN (§13)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["released", "relu"])
def test_epo_entropy_loss(form):
    b = Batch(15)
    rows = b.mask_np.shape[0]
    step_index = np.arange(rows) % 3
    history = np.array([1.0, 1.6, 0.9])
    beta, c_ent, c_smooth, power = 0.9, 0.01, 1.0, 2.0
    penalty = {}
    for bt in b.valid():
        x, bar = b.h_np[bt], history[step_index[bt[0]]]
        if form == "released":
            penalty[bt] = 0.0 if 0.5 * bar < x < 1.5 * bar else 0.1
        else:
            penalty[bt] = max(0.0, 0.5 * bar - x) ** power + max(0.0, x - 1.5 * bar) ** power
    assert 0 < sum(v > 0 for v in penalty.values()) < len(penalty)
    entropies = {bt: b.h_np[bt] for bt in b.valid()}
    args = (b.mask, torch.from_numpy(step_index), torch.from_numpy(history), "seq-mean-token-mean")
    kw = {"beta": beta, "c_ent": c_ent, "c_smooth": c_smooth, "form": form, "power": power}
    term = et.epo_entropy_loss(b.t("h"), *args, **kw)
    scaled = {bt: beta * p for bt, p in penalty.items()}
    want = -c_ent * (
        direct_agg(b, entropies, "seq-mean-token-mean")
        - c_smooth * direct_agg(b, scaled, "seq-mean-token-mean")
    )
    assert close(term, want)
    x = torch.from_numpy(b.h_np).requires_grad_()
    assert gradcheck(
        lambda v: et.epo_entropy_loss(torch.where(b.mask, v, torch.nan), *args, **kw), (x,)
    )
    (g,) = torch.autograd.grad(
        et.epo_entropy_loss(torch.where(b.mask, x, torch.nan), *args, **kw), x
    )
    assert (g[~b.mask] == 0).all()


def test_aepo_reinforce_term():
    b = Batch(16)
    adv = b.mask.to(F64)
    lp = b.t("lp", grad=True)
    for mode in ("token-mean", "seq-mean-token-sum"):
        term = et.aepo_reinforce_loss(lp, adv, b.mask, mode, coef=0.5)
        want = 0.5 * direct_agg(b, {bt: -b.lp_np[bt] for bt in b.valid()}, mode)
        assert close(term, want)
    # On-policy its gradient equals the PPO surrogate's at r = 1 (the released batch form).
    term = et.aepo_reinforce_loss(lp, adv, b.mask)
    ppo, _ = et.compute_policy_loss(lp.detach(), lp, adv, b.mask)
    g1, g2 = torch.autograd.grad(term, lp)[0], torch.autograd.grad(ppo, lp)[0]
    assert torch.allclose(g1, g2, rtol=1e-12, atol=0)
    assert (g1[~b.mask] == 0).all()
    x = torch.from_numpy(b.lp_np).requires_grad_()
    assert gradcheck(
        lambda v: et.aepo_reinforce_loss(torch.where(b.mask, v, torch.nan), adv, b.mask), (x,)
    )


def direct_nucleus_entropy(z: np.ndarray, top_p: float) -> float:
    p = np.exp(z - z.max())
    p /= p.sum()
    order = sorted(range(z.size), key=lambda i: (-z[i], i))
    cum, cut = 0.0, len(order)
    for r, i in enumerate(order):
        cum += p[i]
        if cum >= top_p:
            cut = r
            break
    kept = np.array([p[i] for i in order[:cut]])
    if kept.size == 0:
        return 0.0
    q = kept / (kept.sum() + 1e-12)
    return float(-(q * np.log(q + 1e-12)).sum())


def test_siren_regulariser_from_logits():
    rng = np.random.default_rng(17)
    rows, width, vocab = 4, 6, 12
    logits = rng.normal(0, 2.0, (rows, width, vocab))
    mask = rng.random((rows, width)) > 0.2
    mask[0] = True
    top_p, q, coef, anchor = 0.8, 0.8, 0.005, 0.3
    h = np.array(
        [[direct_nucleus_entropy(logits[r, t], top_p) for t in range(width)] for r in range(rows)]
    )
    row_means = []
    for r in range(rows):
        values = np.sort(h[r][mask[r]])
        pos = (values.size - 1) * q
        lo, hi = math.floor(pos), math.ceil(pos)
        tau = values[lo] + (pos - lo) * (values[hi] - values[lo])
        picked = [h[r, t] for t in range(width) if mask[r, t] and h[r, t] > tau]
        row_means.append(sum(picked) / len(picked) if picked else 0.0)
    want = coef * (sum(row_means) / rows - anchor) ** 2
    m = torch.from_numpy(mask)

    def regulariser(z):
        ent = et.nucleus_entropy(z, top_p=top_p)
        selected = et.peak_entropy_mask(ent.detach(), m, q=q)
        return et.siren_regularizer(ent, selected, anchor=anchor, coef=coef)

    z = torch.from_numpy(logits).requires_grad_()
    assert close(regulariser(z), want)
    assert gradcheck(regulariser, (z,))  # the gradient goes through the nucleus entropy
    (g,) = torch.autograd.grad(regulariser(z), z)
    assert g.abs().sum() > 0
