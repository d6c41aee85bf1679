"""The float64 reference of ``rollout.md`` §4 and §8–§16: entropy summaries (§17.9), ARES
windows and PEAR phases (§17.7), EPO (§17.8), SPEAR, AEPO, SIREN with ``nucleus_entropy``
(§17.8), answer entropy and support metrics (§17.9), the detection statistic and the entropy
reduction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from entcore.reference import rollout as ref
from entcore.reference import token as ref_token
from helpers import require_torch

seeds = st.integers(0, 2**32 - 1)


def random_entropy(seed, n_rows=5, width=12, holes=True):
    rng = np.random.default_rng(seed)
    h = rng.gamma(1.0, 0.6, (n_rows, width))
    lengths = rng.integers(0, width + 1, n_rows)
    mask = np.arange(width)[None, :] < lengths[:, None]
    if holes:
        mask &= rng.random((n_rows, width)) < 0.85
    return h, mask


# ---------------------------------------------------------------------------------------------
# §4 entropy_summary, entropy_position_curve
# ---------------------------------------------------------------------------------------------


def test_entropy_summary_boundaries_are_strict():
    """§17.9: ``frac_low = #{H < low}/N``, ``frac_high = #{H > high}/N``: values equal to the
    boundaries are in neither."""
    h = np.array([[0.0, 0.01, 0.01, 0.3, 0.672, 0.672, 0.9, 5.0]])
    s = ref.entropy_summary(h, np.ones_like(h, dtype=bool))
    assert s["count"] == 8
    assert s["frac_low"] == 1 / 8  # only 0.0
    assert s["frac_high"] == 2 / 8  # 0.9 and 5.0
    s = ref.entropy_summary(h, np.ones_like(h, dtype=bool), low=0.0100001, high=0.6719999)
    assert s["frac_low"] == 3 / 8 and s["frac_high"] == 4 / 8


@given(seed=seeds)
def test_entropy_summary_against_numpy(seed):
    """Percentiles equal ``numpy.percentile(method="linear")``; mean, population std, min, max,
    and ``seq_mean`` (mean of the non-empty rows' means)."""
    h, mask = random_entropy(seed)
    mask[0, 0] = True
    qs = (0, 1, 5, 12.5, 25, 50, 75, 90, 95, 99, 100)
    s = ref.entropy_summary(h, mask, percentiles=qs)
    x = h[mask]
    np.testing.assert_allclose(
        s["percentiles"], np.percentile(x, qs, method="linear"), rtol=1e-12, atol=1e-15
    )
    assert s["count"] == x.size
    assert s["mean"] == pytest.approx(x.mean(), rel=1e-13)
    assert s["std"] == pytest.approx(x.std(), rel=1e-12)
    assert s["min"] == x.min() and s["max"] == x.max()
    rows = [h[b][mask[b]].mean() for b in range(h.shape[0]) if mask[b].any()]
    assert s["seq_mean"] == pytest.approx(np.mean(rows), rel=1e-13)
    assert s["frac_low"] == np.mean(x < 0.01) and s["frac_high"] == np.mean(x > 0.672)


def test_entropy_summary_empty():
    s = ref.entropy_summary(np.ones((2, 3)), np.zeros((2, 3)), percentiles=(50, 90))
    assert s["count"] == 0
    for key in ("mean", "seq_mean", "std", "min", "max", "frac_low", "frac_high"):
        assert math.isnan(s[key])
    assert s["percentiles"].shape == (2,) and np.all(np.isnan(s["percentiles"]))


def test_entropy_position_curve_hand_values():
    """§4: absolute positions over rows valid at ``t``; relative bins ``⌊K t / len_b⌋``."""
    h = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0], [7.0, 0.0, 9.0, 0.0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]])
    mean, count = ref.entropy_position_curve(h, mask)
    np.testing.assert_array_equal(count, [3, 2, 2, 1])  # longest row: len 4
    np.testing.assert_allclose(mean, [13 / 3, 4.0, 6.0, 4.0])
    mean, count = ref.entropy_position_curve(h, mask, max_len=6)
    np.testing.assert_array_equal(count, [3, 2, 2, 1, 0, 0])
    assert np.isnan(mean[4:]).all()
    # bins = 2: row 0 (len 4): t 0,1 → bin 0, t 2,3 → bin 1; row 1 (len 2): t 0 → 0, t 1 → 1;
    # row 2 (len 3): t 0 → 0, t 2 → ⌊4/3⌋ = 1
    mean, count = ref.entropy_position_curve(h, mask, bins=2)
    np.testing.assert_array_equal(count, [4, 4])
    np.testing.assert_allclose(mean, [(1 + 2 + 5 + 7) / 4, (3 + 4 + 6 + 9) / 4])
    mean, count = ref.entropy_position_curve(h, mask, bins=5)
    assert count.sum() == mask.sum() and np.isnan(mean[count == 0]).all()


# ---------------------------------------------------------------------------------------------
# §8 ARES
# ---------------------------------------------------------------------------------------------


def test_window_entropy_hand_values():
    h = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 0.0]])
    mask = np.array([[1, 1, 1, 1, 1, 0]])
    w0, d0 = ref.window_entropy(h, mask, window=2)
    np.testing.assert_allclose(w0[0], [1.5, 2.5, 3.5, 4.5, 0, 0])
    np.testing.assert_array_equal(d0[0], [1, 1, 1, 1, 0, 0])
    w1, d1 = ref.window_entropy(h, mask, window=2, start=1)
    np.testing.assert_allclose(w1[0], [2.5, 3.5, 4.5, 0, 0, 0])
    np.testing.assert_array_equal(d1[0], [1, 1, 1, 0, 0, 0])
    # a hole inside the window makes it undefined
    holed = mask.copy()
    holed[0, 2] = 0
    _, d = ref.window_entropy(h, holed, window=2)
    np.testing.assert_array_equal(d[0], [1, 0, 0, 1, 0, 0])
    # start=1: the window after an invalid t is complete, but t itself is not a valid position
    # (per-token outputs are 0/False there, §0.1)
    holed = mask.copy()
    holed[0, 0] = 0
    w, d = ref.window_entropy(h, holed, window=2, start=1)
    np.testing.assert_array_equal(d[0], [0, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(w[0], [0, 3.5, 4.5, 0, 0, 0])


@given(seed=seeds, window=st.integers(1, 5))
def test_window_start_one_shifts_start_zero(seed, window):
    """§17.7: ``start=1`` gives the ``start=0`` result one position later; windows at row ends
    are undefined (the last ``w − 1`` positions with ``start=0``, the last ``w`` with
    ``start=1``)."""
    h, mask = random_entropy(seed, holes=False)
    w0, d0 = ref.window_entropy(h, mask, window=window)
    w1, d1 = ref.window_entropy(h, mask, window=window, start=1)
    lengths = mask.sum(axis=1)
    for b, n in enumerate(lengths):
        if n >= 2:
            np.testing.assert_array_equal(w1[b, : n - 1], w0[b, 1:n])
            np.testing.assert_array_equal(d1[b, : n - 1], d0[b, 1:n])
        t = np.arange(h.shape[1])
        np.testing.assert_array_equal(d0[b], t + window <= n)
        np.testing.assert_array_equal(d1[b], t + window + 1 <= n)
        for i in np.flatnonzero(d0[b]):
            assert w0[b, i] == pytest.approx(h[b, i : i + window].mean(), rel=1e-14)
    assert np.all(w0[~d0] == 0.0)


def test_hwe_count_and_threshold_hand_values():
    """§8: triggers, HWE iff ``W ≥ θ``, ``soft_cost = Σ max(0, W − θ)``; ``θ`` = median of the
    rows' linear ``q``-quantiles, with momentum."""
    h = np.array([[0.2, 0.8, 1.0, 0.4, 0.1, 0.1], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    ids = np.array([[7, 3, 7, 7, 3, 7], [3, 7, 3, 3, 3, 3]])
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    # window 2: row 0 W = [.5, .9, .7, .25, .1, ·]; row 1 W = [1, 1, ·]
    count, cost, is_hwe = ref.hwe_count(h, ids, mask, [7], threshold=0.6, window=2)
    # row 0 triggers at t = 0, 2, 3 (t = 5 has no window): W = .5, .7, .25 → one HWE (t = 2)
    # row 1 triggers at t = 1: W = 1 → HWE
    np.testing.assert_array_equal(count, [1, 1])
    np.testing.assert_allclose(cost, [0.1, 0.4], rtol=1e-12)
    expected = np.zeros_like(mask, dtype=bool)
    expected[0, 2] = expected[1, 1] = True
    np.testing.assert_array_equal(is_hwe, expected)
    count, _, _ = ref.hwe_count(h, ids, mask, set(), threshold=0.0, window=2)
    assert not count.any()
    # θ: row 0 defined W = [.5, .9, .7, .25, .1], q = .5 → .5; row 1 [1, 1] → 1; median .75
    theta = ref.hwe_threshold(h, mask, window=2, q=0.5)
    assert theta == pytest.approx(0.75)
    assert ref.hwe_threshold(h, mask, window=2, q=0.5, prev=1.0, momentum=0.9) == pytest.approx(
        0.9 + 0.1 * 0.75
    )
    assert math.isnan(ref.hwe_threshold(h, mask, window=7))
    assert ref.hwe_threshold(h, mask, window=7, prev=0.3) == 0.3


# ---------------------------------------------------------------------------------------------
# §9 PEAR
# ---------------------------------------------------------------------------------------------


def test_phase_entropy_with_and_without_end_think():
    """§17.7: ``</think>`` in neither phase; absent (``k = −1``): every valid token thinking."""
    h = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 3.0, 9.0, 9.0, 9.0]])
    ids = np.array([[7, 7, 9, 7, 7], [7, 7, 7, 7, 7], [7, 7, 9, 9, 9]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    k = ref.phase_boundary(ids, mask, 9)
    np.testing.assert_array_equal(k, [2, -1, 2])
    assert k.dtype == np.int64
    h_think, h_answer, n_think, n_answer = ref.phase_entropy(h, mask, k)
    np.testing.assert_allclose(h_think, [1.5, 2.5, 2.0])
    np.testing.assert_allclose(h_answer, [4.5, 0.0, 9.0])
    np.testing.assert_array_equal(n_think, [2, 4, 2])
    np.testing.assert_array_equal(n_answer, [2, 0, 2])
    # </think> as the last token: empty answer → 0
    last = ref.phase_entropy(h[:1], mask[:1], np.array([4]))
    assert last[1][0] == 0.0 and last[3][0] == 0 and last[0][0] == 2.5
    # a masked </think> is not a boundary
    masked = mask.copy()
    masked[0, 2] = 0
    assert ref.phase_boundary(ids, masked, 9)[0] == -1


@given(
    seed=seeds,
    alpha=st.floats(0.0, 3.0),
    score=st.floats(0.5, 2.0),
    format_score=st.floats(-1.0, 0.5),
)
def test_pear_reward_bounds(seed, alpha, score, format_score):
    """§17.7: ``r ≤ score`` (and ``≤ 1``) for correct answers, ``= format_score`` otherwise."""
    rng = np.random.default_rng(seed)
    correct = rng.random(20) < 0.5
    h_think, h_answer = rng.gamma(1.0, 1.0, (2, 20))
    r = ref.pear_reward(
        correct, h_think, h_answer, alpha=alpha, score=score, format_score=format_score
    )
    assert np.all(r[correct] <= min(score, 1.0))
    assert np.all(r[~correct] == format_score)
    penalty = np.maximum(0.0, h_think - alpha * h_answer)
    np.testing.assert_allclose(r[correct], np.minimum(1.0, score - penalty)[correct], rtol=1e-15)


def test_pear_reward_hand_values():
    r = ref.pear_reward(
        np.array([True, True, False]), np.array([2.0, 0.2, 2.0]), np.array([0.5, 1.0, 0.5])
    )
    np.testing.assert_allclose(r, [-0.5, 1.0, 0.0])  # P = 1.5 → 1 − 1.5; P = 0; incorrect


# ---------------------------------------------------------------------------------------------
# §10 EPO
# ---------------------------------------------------------------------------------------------


def test_step_entropy_means():
    h = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [4.0, 5.0, 6.0], [9.0, 9.0, 9.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]])
    sums, counts = ref.step_entropy_means(h, mask, np.array([0, 0, 2, 5]), max_steps=3)
    np.testing.assert_allclose(sums, [6.0, 0.0, 15.0])
    np.testing.assert_array_equal(counts, [3, 0, 3])


def test_epo_band_penalty_released_is_constant():
    """§17.8: ``"released"`` is ``0`` in the band ``κ_l H̄ < H < κ_r H̄`` (strict) and ``ρ_out``
    outside: a piecewise constant, so it carries no gradient."""
    bar = np.array([1.0, 2.0])
    h = np.array([[0.5, 0.6, 1.0, 1.5, 1.6], [1.0, 2.9, 3.0, 3.1, 0.0]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    p = ref.epo_band_penalty(h, mask, np.array([0, 1]), bar)
    np.testing.assert_array_equal(p, [[0.1, 0, 0, 0.1, 0.1], [0.1, 0, 0.1, 0.1, 0]])
    nudged = ref.epo_band_penalty(
        h + 1e-3 * np.array([[0, 1, 1, 0, 1], [0, 1, 0, 1, 0]]), mask, [0, 1], bar
    )
    np.testing.assert_array_equal(nudged, p)  # locally constant away from the band edges
    seq = ref.epo_band_penalty(h, mask, np.array([0, 1]), bar, granularity="seq", rho_out=0.3)
    # row means 1.04 (in band of [.5, 1.5]) and 2.25 (in band of [1, 3])
    np.testing.assert_array_equal(seq, np.zeros_like(h))
    seq = ref.epo_band_penalty(h, mask, np.array([1, 0]), bar, granularity="seq", rho_out=0.3)
    np.testing.assert_array_equal(seq, [[0, 0, 0, 0, 0], [0.3, 0.3, 0.3, 0.3, 0]])


def test_epo_band_penalty_relu():
    bar = np.array([1.0])
    h = np.array([[0.2, 1.0, 2.0, 0.0]])
    mask = np.array([[1, 1, 1, 0]])
    p = ref.epo_band_penalty(h, mask, np.array([0]), bar, form="relu")
    np.testing.assert_allclose(p, [[0.3, 0.0, 0.5, 0.0]])
    p = ref.epo_band_penalty(h, mask, np.array([0]), bar, form="relu", power=2)
    np.testing.assert_allclose(p, [[0.09, 0.0, 0.25, 0.0]])


def test_epo_phase_weight():
    beta = ref.epo_phase_weight(np.array([0.0, 37.5, 75.0, 76.0, 150.0]), total=150)
    early = lambda e: 1 - 0.2 * (1 - math.exp(-2 * e / 75))  # noqa: E731
    np.testing.assert_allclose(
        beta,
        [1.0, early(37.5), early(75.0), 0.8 * math.exp(-3 / 75), 0.8 * math.exp(-3)],
        rtol=1e-15,
    )
    assert np.all(np.diff(beta) < 0)
    assert ref.epo_phase_weight(0) == 1.0


# ---------------------------------------------------------------------------------------------
# §11 SPEAR, §12 AEPO
# ---------------------------------------------------------------------------------------------


def test_spear_recalibrate():
    rewards = np.array([1.0, 0.25, 0.5])
    adv, keep = ref.spear_recalibrate(rewards, np.array([0.1, 0.9, 0.5, 0.4]))  # median 0.45
    np.testing.assert_allclose(adv, [0.55, -0.2, 0.05])
    np.testing.assert_array_equal(keep, [True, False, True])
    adv, _ = ref.spear_recalibrate(
        rewards, np.array([0.5]), baseline_stds=np.array([0.5, 0.1, 0.2])
    )
    np.testing.assert_allclose(adv, (rewards - 0.5) / (0.2 + 1e-6))
    adv, keep = ref.spear_recalibrate(
        rewards, np.array([9.0]), decay=0.5, old_advantages=np.array([2.0, -1.0, 0.0])
    )
    np.testing.assert_allclose(adv, [1.0, -0.5, 0.0])
    assert keep.all()


def test_spear_schedules():
    replay, tool = ref.spear_schedules(
        np.array([0, 50, 100, 200, 250]), replay_coef=2.0, replay_period=100, tool_period=200
    )
    np.testing.assert_allclose(replay, [0.0, 1.0, 2.0, 2.0, 2.0], atol=1e-15)
    np.testing.assert_allclose(
        tool, [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, 0.0, 0.0], atol=1e-15
    )
    _, tool = ref.spear_schedules(0, num_turns=np.array([0, 3, 10, 20]))
    np.testing.assert_allclose(tool, [0.0, 0.3, 1.0, 1.0], atol=1e-15)


def test_aepo_controller():
    lp = np.array([[-0.5, -1.5, 9.0], [-1.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    assert ref.nll_entropy_estimate(lp, mask) == pytest.approx(1.0)
    assert math.isnan(ref.nll_entropy_estimate(lp, np.zeros_like(mask)))
    assert ref.aepo_temperature(None) == 1.2  # first step counts as 0
    assert ref.aepo_temperature(0.5) == 1.2 and ref.aepo_temperature(0.51) == 0.8
    adv = np.array([0.01, 0.3, 0.05, 0.9, 0.2, 0.5])
    idx, a = ref.aepo_select(adv, prev_entropy=0.4)
    np.testing.assert_array_equal(idx, [1, 3, 4, 5])  # A > 0.05 (strict)
    np.testing.assert_array_equal(a, np.ones(4))
    idx, _ = ref.aepo_select(adv, prev_entropy=0.6)
    np.testing.assert_array_equal(idx, [1, 3])  # halved
    idx, _ = ref.aepo_select(adv, prev_entropy=0.6, max_samples=3)
    np.testing.assert_array_equal(idx, [1])  # min(3, 4) // 2
    idx, a = ref.aepo_select(adv, prev_entropy=None, threshold=1.0)
    assert idx.size == 0 and a.size == 0


# ---------------------------------------------------------------------------------------------
# §13 SIREN: nucleus_entropy, peak_entropy_mask, siren_regularizer
# ---------------------------------------------------------------------------------------------


def nucleus_brute_force(z, top_p, top_k, temperature):
    """§13 by hand: a Python sort, cumulative sums, the crossing token excluded."""
    zs = [float(v) / temperature for v in z]
    m = max(zs)
    ex = [math.exp(v - m) for v in zs]
    s = math.fsum(ex)
    p = [e / s for e in ex]
    ranked = sorted(range(len(zs)), key=lambda i: (-zs[i], i))[:top_k]
    kept, total = [], 0.0
    for i in ranked:
        total += p[i]
        if total >= top_p:
            break
        kept.append(p[i])
    norm = math.fsum(kept) + 1e-12
    return -math.fsum((q / norm) * math.log(q / norm + 1e-12) for q in kept)


@given(
    seed=seeds,
    top_p=st.sampled_from([0.0, 0.3, 0.8, 0.95]),  # 1.0: C_r = 1 is a rounding boundary
    top_k=st.sampled_from([1, 3, 10, 10000]),
    temperature=st.sampled_from([0.6, 1.0, 1.5]),
    scale=st.sampled_from([0.3, 2.0, 8.0]),
)
def test_nucleus_entropy_brute_force(seed, top_p, top_k, temperature, scale):
    """§17.8: against a brute-force sort (ties: integer logits, broken by lower index)."""
    rng = np.random.default_rng(seed)
    z = np.round(rng.normal(0, scale, (4, 17)) * 2) / 2
    got = ref_token.nucleus_entropy(z, top_p=top_p, top_k=top_k, temperature=temperature)
    expected = [nucleus_brute_force(row, top_p, top_k, temperature) for row in z]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert np.all(got >= 0.0)


def test_nucleus_entropy_known_cases():
    # top-1 probability ≥ top_p: empty nucleus → exactly 0
    z = np.array([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    got = ref_token.nucleus_entropy(z, top_p=0.5)
    assert got[0] == 0.0 and not np.signbit(got[0])
    # uniform over 3: C_1 = 2/3 crosses 0.5 → rank 0 only: H = 0 up to the formula's 1e-12
    assert 0.0 < got[1] < 1e-11
    # uniform over 3 at top_p = 0.8: ranks 0, 1 kept (C_1 = 2/3 < 0.8, C_2 = 1 crosses)
    got = ref_token.nucleus_entropy(z, top_p=0.8)
    assert got[1] == pytest.approx(math.log(2), rel=1e-10)
    # -inf entries have p = 0 and rank last; top_k bounds the nucleus
    z = np.array([[1.0, -np.inf, 1.0, 1.0, 1.0]])
    assert ref_token.nucleus_entropy(z, top_p=1.0)[0] == pytest.approx(math.log(3), rel=1e-10)
    assert ref_token.nucleus_entropy(z, top_p=1.0, top_k=2)[0] == pytest.approx(
        math.log(2), rel=1e-10
    )
    assert ref_token.nucleus_entropy(np.zeros((2, 3, 4)), top_p=0.9).shape == (2, 3)
    with pytest.raises(ValueError, match="logits"):
        ref_token.nucleus_entropy(np.array([[np.nan, 0.0]]))


def test_peak_entropy_mask_strict():
    """§13: per row ``h > τ_b`` (strict), ``τ_b`` the linear ``q``-quantile of the valid ``h``."""
    h = np.array(
        [
            [1.0, 2.0, 3.0, 4.0, 5.0, 99.0],
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            [3.0, 1.0, 2.0, 0.0, 0.0, 0.0],
        ]
    )
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    got = ref.peak_entropy_mask(h, mask)
    np.testing.assert_array_equal(
        got, [[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    )  # τ = 4.2; ties → none; τ = 2.6
    assert not ref.peak_entropy_mask(h, np.zeros_like(mask)).any()


@given(seed=seeds)
def test_peak_entropy_mask_matches_torch_quantile(seed):
    torch = require_torch()
    h, mask = random_entropy(seed)
    got = ref.peak_entropy_mask(h, mask, q=0.8)
    for b in range(h.shape[0]):
        if mask[b].any():
            tau = torch.quantile(torch.from_numpy(h[b][mask[b]]), 0.8).item()
            np.testing.assert_array_equal(got[b], mask[b] & (h[b] > tau))


@given(seed=seeds)
def test_siren_regularizer_zero_at_anchor(seed):
    """§17.8: the regulariser is 0 at its anchor (``anchor=None`` returns ``Ē``); rows without
    selected tokens count as 0 in ``Ē``."""
    h, mask = random_entropy(seed)
    sel = ref.peak_entropy_mask(h, mask)
    anchor = ref.siren_regularizer(h, sel)
    assert ref.siren_regularizer(h, sel, anchor=anchor) == 0.0
    rows = [h[b][sel[b]].mean() if sel[b].any() else 0.0 for b in range(h.shape[0])]
    assert anchor == pytest.approx(np.mean(rows), rel=1e-13)
    assert ref.siren_regularizer(h, sel, anchor=anchor + 0.1, coef=2.0) == pytest.approx(0.02)


def test_siren_regularizer_units():
    h = np.array([[1.0, 3.0], [2.0, 2.0], [5.0, 0.0], [4.0, 4.0]])
    sel = np.array([[1, 1], [0, 0], [1, 0], [1, 0]])
    # row means 2, 0 (none), 5, 4
    assert ref.siren_regularizer(h, sel) == pytest.approx(11 / 4)
    per_unit = ref.siren_regularizer(h, sel, micro_batch=2)
    np.testing.assert_allclose(per_unit, [1.0, 4.5])
    np.testing.assert_allclose(
        ref.siren_regularizer(h, sel, micro_batch=2, anchor=[1.0, 4.0], coef=1.0), [0.0, 0.25]
    )
    assert ref.siren_regularizer(h, sel, scope="batch", micro_batch=2) == pytest.approx(11 / 4)


# ---------------------------------------------------------------------------------------------
# §14 answer entropy and support metrics, §15 detection, §16 entropy reduction
# ---------------------------------------------------------------------------------------------


def test_answer_entropy_hand_values():
    codes = np.array([1, 1, 2, 2, 5, 5, 5, 1, 2, 3, 0])
    group = np.array([4, 4, 4, 4, 0, 0, 0, 9, 9, 9, 2])
    groups, h = ref.answer_entropy(codes, group)
    np.testing.assert_array_equal(groups, [0, 2, 4, 9])
    np.testing.assert_allclose(h, [0.0, 0.0, math.log(2), math.log(3)], atol=1e-15)


def test_support_metrics_hand_values():
    base = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    rl = np.array([1, 0, 0, 1, 0, 1], dtype=bool)
    s = ref.support_metrics(base, rl)
    assert (s["P"], s["S"], s["E"], s["O"]) == (1, 2, 2, 1)
    assert s["SRR"] == pytest.approx(1 / 3) and s["NDR"] == pytest.approx(2 / 3)
    assert s["SDS"] == pytest.approx(4 / 9) and s["NSCR"] == 0.0
    s = ref.support_metrics(np.array([1, 1, 0]), np.array([1, 0, 0]))
    assert s["SRR"] == 0.5 and s["NDR"] == 0.0 and s["SDS"] == 0.0
    assert s["NSCR"] == pytest.approx(-1 / 2)
    s = ref.support_metrics(np.zeros(4, bool), np.zeros(4, bool))  # 0/0 → NaN
    assert s["O"] == 4 and all(math.isnan(s[k]) for k in ("SRR", "NDR", "SDS", "NSCR"))


def test_support_epsilon():
    k = np.array([1, 10, 100, 1000])
    eps = ref.support_epsilon(k)
    np.testing.assert_allclose(eps, 1 - 0.05 ** (1 / k), rtol=1e-14)
    assert eps[0] == pytest.approx(0.95)
    assert eps[-1] == pytest.approx(3 / 1000, rel=0.01)  # ≈ 3/k
    assert ref.support_epsilon(20, confidence=0.99) == pytest.approx(1 - 0.01 ** (1 / 20))


def test_detection_statistic_and_threshold():
    """§15: ``T = −mean(ℓ) − mean(H)`` per row; ``ε = bound·sqrt(2 ln(2/α)/n)``."""
    lp = np.array([[-1.0, -3.0, 9.0], [-0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    h = np.array([[1.5, 0.5, 9.0], [0.25, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    stat, n = ref.detection_statistic(lp, h, mask)
    np.testing.assert_allclose(stat[:2], [2.0 - 1.0, 0.5 - 0.25])
    assert math.isnan(stat[2])
    np.testing.assert_array_equal(n, [2, 1, 0])
    eps = ref.detection_threshold(np.array([1, 100, 0]), alpha=0.05, bound=3.0)
    np.testing.assert_allclose(eps[:2], 3.0 * np.sqrt(2 * math.log(40) / np.array([1, 100])))
    assert eps[2] == np.inf
    # Azuma–Hoeffding: at ε the two-sided bound 2 exp(−n ε² / (2 bound²)) equals α
    n_tokens, bound = 250, 2.0
    e = ref.detection_threshold(n_tokens, alpha=0.01, bound=bound)
    assert 2 * math.exp(-n_tokens * e**2 / (2 * bound**2)) == pytest.approx(0.01)


@given(seed=seeds)
def test_entropy_reduction_slope_matches_polyfit(seed):
    """§16: ``H_k``, ``ΔH_k``, total, ``frac_decreasing`` and the least-squares slope
    (``numpy.polyfit``), also for chains shortened by ``step_mask``."""
    rng = np.random.default_rng(seed)
    n_chains, steps, width = 3, int(rng.integers(2, 7)), 5
    values = rng.gamma(1.0, 1.0, (n_chains, steps, width))
    answer_mask = rng.random((n_chains, width)) < 0.8
    answer_mask[:, 0] = True
    step_mask = np.arange(steps)[None, :] < rng.integers(1, steps + 1, (n_chains, 1))
    out = ref.entropy_reduction(values, answer_mask[:, None, :], step_mask=step_mask)
    for c in range(n_chains):
        ks = np.flatnonzero(step_mask[c])
        hk = np.array([values[c, k][answer_mask[c]].mean() for k in ks])
        np.testing.assert_allclose(out["H"][c][ks], hk, rtol=1e-13)
        assert np.isnan(out["H"][c][~step_mask[c]]).all()
        delta = hk[:-1] - hk[1:]
        np.testing.assert_allclose(out["delta"][c][: ks.size - 1], delta, rtol=1e-12, atol=1e-15)
        assert out["total"][c] == pytest.approx(hk[0] - hk[-1], abs=1e-14)
        if ks.size >= 2:
            assert out["frac_decreasing"][c] == np.mean(delta > 0)
            slope = np.polyfit(ks.astype(float), hk, 1)[0]
            assert out["slope"][c] == pytest.approx(slope, rel=1e-9, abs=1e-12)
        else:
            assert math.isnan(out["slope"][c]) and math.isnan(out["frac_decreasing"][c])
    summed = ref.entropy_reduction(values, answer_mask[:, None, :], reduce="sum")
    np.testing.assert_allclose(
        summed["H"], np.sum(np.where(answer_mask[:, None, :], values, 0.0), axis=-1), rtol=1e-13
    )


def test_entropy_reduction_hand_values():
    h = np.array([[3.0, 3.0], [2.0, 2.0], [2.5, 2.5], [0.5, 0.5]])  # K = 3, Y = 2
    out = ref.entropy_reduction(h, np.ones(2, dtype=bool))
    np.testing.assert_allclose(out["H"], [3.0, 2.0, 2.5, 0.5])
    np.testing.assert_allclose(out["delta"], [1.0, -0.5, 2.0])
    assert out["total"] == 2.5 and out["frac_decreasing"] == pytest.approx(2 / 3)
    assert out["slope"] == pytest.approx(np.polyfit([0, 1, 2, 3], [3.0, 2.0, 2.5, 0.5], 1)[0])
