"""The float64 oracle of ``entcore.reference.kv`` against the properties of ``matrix.md`` §2."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entcore.reference import kv

# ---- §2.1 calibrate_heads ---------------------------------------------------------------------


def test_default_group_sizes_follow_uncomp():
    assert kv.default_group_sizes(32, 2) == (16, 16)
    assert kv.default_group_sizes(32, 3) == (11, 10, 11)
    assert kv.default_group_sizes(32, 5) == (7, 6, 6, 6, 7)
    assert kv.default_group_sizes(3, 2) == (2, 1)


def test_one_sample_or_identical_samples_agree_fully():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(1, 4, 8))
    assert np.all(kv.calibrate_heads(e).agreement == 1.0)
    same = np.repeat(e, 5, axis=0)
    profile = kv.calibrate_heads(same, n_groups=3)
    assert np.all(profile.agreement == 1.0)
    # The consensus labels the heads by ascending entropy in blocks of the group sizes.
    for layer in range(4):
        order = np.argsort(e[0, layer], kind="stable")
        assert profile.groups[layer, order].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert np.all(profile.votes == 5 * (profile.groups == 2))
    assert profile.n_samples == 5 and profile.group_sizes == (3, 2, 3)


def test_sample_order_and_a_shift_of_one_sample_change_no_label():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(6, 5, 7))
    base = kv.calibrate_heads(e)
    shifted = e.copy()
    shifted[2] += 3.5
    for other in (kv.calibrate_heads(e[::-1]), kv.calibrate_heads(shifted)):
        np.testing.assert_array_equal(other.groups, base.groups)
        np.testing.assert_array_equal(other.votes, base.votes)
        np.testing.assert_array_equal(other.agreement, base.agreement)


def test_noisy_samples_recover_the_head_order():
    rng = np.random.default_rng(2)
    order = np.stack([rng.permutation(8) for _ in range(3)]).astype(float)  # (L, H)
    e = order[None] + rng.normal(scale=0.3, size=(20, 3, 8))
    profile = kv.calibrate_heads(e, n_groups=2)
    np.testing.assert_array_equal(profile.groups, (order >= 4).astype(int))
    assert np.all(profile.agreement > 0.8)


def test_each_sample_labels_exactly_the_group_sizes():
    rng = np.random.default_rng(3)
    e = rng.integers(0, 3, size=(4, 2, 9)).astype(float)  # many ties
    profile = kv.calibrate_heads(e, n_groups=3, group_sizes=(2, 3, 4))
    for layer in range(2):
        assert np.bincount(profile.groups[layer], minlength=3).tolist() == [2, 3, 4]


def test_profile_round_trips_through_json():
    rng = np.random.default_rng(4)
    profile = kv.calibrate_heads(rng.normal(size=(3, 2, 4)))
    back = kv.HeadProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    for name in ("groups", "votes", "mean", "std", "agreement"):
        np.testing.assert_array_equal(getattr(back, name), getattr(profile, name))
    assert back.n_samples == 3 and back.group_sizes == profile.group_sizes
    with pytest.raises(ValueError, match="format"):
        kv.HeadProfile.from_dict({**profile.to_dict(), "format": "other"})
    with pytest.raises(ValueError, match="version"):
        kv.HeadProfile.from_dict({**profile.to_dict(), "version": 99})
    with pytest.raises(AttributeError):
        profile.groups = back.groups  # frozen


def test_calibrate_heads_rejects_bad_input():
    with pytest.raises(ValueError, match="entropies"):
        kv.calibrate_heads(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        kv.calibrate_heads(np.full((1, 1, 2), np.nan))
    with pytest.raises(ValueError, match="n_groups"):
        kv.calibrate_heads(np.zeros((1, 1, 2)), n_groups=3)
    with pytest.raises(ValueError, match="group_sizes"):
        kv.calibrate_heads(np.zeros((1, 1, 4)), group_sizes=(1, 2))
    with pytest.raises(TypeError, match="entropies"):
        kv.calibrate_heads(np.zeros((1, 1, 2), dtype=np.int64))


# ---- §2.2 segment_layers ----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-10, 10), min_size=1, max_size=30),
    st.floats(0, 3),
    st.floats(-50, 50),
)
def test_stages_count_drops_above_the_threshold(profile, threshold, shift):
    p = np.array(profile)
    stages = kv.segment_layers(p, threshold=threshold)
    drops = np.diff(p) < -threshold
    assert stages[0] == 0 and stages[-1] == drops.sum()
    assert np.all(np.diff(stages) == drops)
    # A constant shift changes nothing up to the rounding of the differences.
    shifted = kv.segment_layers(p + shift, threshold=threshold)
    near = np.abs(np.abs(np.diff(p)) - threshold) < 1e-9
    if not near.any():
        np.testing.assert_array_equal(shifted, stages)


def test_segment_layers_rises_never_start_a_stage_and_errors():
    assert kv.segment_layers([1.0, 5.0, 9.0], threshold=0.5).tolist() == [0, 0, 0]
    assert kv.segment_layers([77.0, 75.5, 75.0, 73.0], threshold=1.0).tolist() == [0, 1, 1, 2]
    with pytest.raises(ValueError, match="L = 0"):
        kv.segment_layers(np.zeros(0), threshold=1.0)
    with pytest.raises(ValueError, match="NaN"):
        kv.segment_layers([1.0, np.nan], threshold=1.0)
    with pytest.raises(ValueError, match="profile"):
        kv.segment_layers(np.zeros((2, 2)), threshold=1.0)


# ---- §2.3 budget_weights, allocate_budgets -----------------------------------------------------


def test_budget_weight_schemes():
    labels = np.array([[0, 1, 1, 0]])
    np.testing.assert_array_equal(kv.budget_weights(labels), [[1.0, 2.0, 2.0, 1.0]])
    ramp = kv.budget_weights(np.array([0.3, 0.1, 0.2, 0.2]), scheme="rank_linear", low=1, high=4)
    np.testing.assert_allclose(ramp, [4.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(kv.budget_weights([4.0, 9.0], scheme="power", power=0.5), [2, 3])
    with pytest.raises(ValueError, match="labels"):
        kv.budget_weights(np.array([2]))
    with pytest.raises(TypeError, match="values"):
        kv.budget_weights(np.array([0.5]))
    with pytest.raises(ValueError, match="values"):
        kv.budget_weights(np.array([-1.0]), scheme="power")
    with pytest.raises(ValueError, match="scheme"):
        kv.budget_weights(np.array([1.0]), scheme="other")


def test_allocation_examples_of_the_spec():
    w = np.array([1.0] * 16 + [2.0] * 16)
    plan = kv.allocate_budgets(w, n_tokens=4096, tokens_per_head=576)
    assert plan.budgets.tolist() == [[384] * 16 + [768] * 16]
    assert plan.achieved_ratio == 0.859375 and plan.kept == 32 * 576
    four = np.repeat([128.0, 298.0, 470.0, 640.0], 8)
    plan = kv.allocate_budgets(four, n_tokens=4096, tokens_per_head=384)
    assert plan.budgets[0].tolist() == four.astype(int).tolist()


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 0.9, 0.99])
def test_equal_weights_keep_the_kvpress_count(ratio):
    plan = kv.allocate_budgets(np.ones((3, 5)), n_tokens=1000, compression_ratio=ratio)
    assert np.all(plan.budgets == int(1000 * (1 - ratio)))


@st.composite
def allocation_case(draw):
    n_layers = draw(st.integers(1, 4))
    n_heads = draw(st.integers(1, 6))
    n = draw(st.integers(1, 60))
    weights = np.array(
        draw(
            st.lists(
                st.one_of(st.just(0.0), st.floats(0.01, 100)),
                min_size=n_layers * n_heads,
                max_size=n_layers * n_heads,
            )
        )
    ).reshape(n_layers, n_heads)
    floor = draw(st.integers(0, n))
    total = draw(st.integers(n_layers * n_heads * floor, n_layers * n_heads * n))
    scope = draw(st.sampled_from(kv.SCOPES))
    return weights, n, floor, total, scope


@settings(max_examples=60, deadline=None)
@given(allocation_case())
def test_budgets_sum_exactly_and_respect_floor_cap_and_order(case):
    weights, n, floor, total, scope = case
    n_layers, n_heads = weights.shape
    if scope == "layer" and total // n_layers < n_heads * floor:
        with pytest.raises(ValueError, match="total"):
            kv.allocate_budgets(weights, n_tokens=n, total=total, min_tokens=floor, scope=scope)
        return
    if scope == "layer" and -(-total // n_layers) > n_heads * n:
        return
    plan = kv.allocate_budgets(weights, n_tokens=n, total=total, min_tokens=floor, scope=scope)
    b = plan.budgets
    assert b.sum() == total == plan.kept
    assert np.all(b >= floor) and np.all(b <= n)
    if scope == "layer":
        expected = [total // n_layers + (i < total % n_layers) for i in range(n_layers)]
        assert b.sum(axis=1).tolist() == expected
    cells = [np.s_[layer] for layer in range(n_layers)] if scope == "layer" else [np.s_[:]]
    for cell in cells:
        w, bb = weights[cell].ravel(), b[cell].ravel()
        larger = w[:, None] > w[None, :]
        assert not np.any(larger & (bb[:, None] < bb[None, :]))
    scaled = kv.allocate_budgets(
        weights * 7.5, n_tokens=n, total=total, min_tokens=floor, scope=scope
    )
    np.testing.assert_array_equal(scaled.budgets, b)
    assert math.isclose(plan.achieved_ratio, 1 - total / (n_layers * n_heads * n))


def test_caps_reshare_and_zero_weights_share_equally():
    plan = kv.allocate_budgets([100.0, 1.0, 1.0], n_tokens=10, total=24)
    assert plan.budgets.tolist() == [[10, 7, 7]]
    plan = kv.allocate_budgets([0.0, 0.0, 0.0, 0.0], n_tokens=10, total=10)
    assert plan.budgets.tolist() == [[3, 3, 2, 2]]  # ties of the remainder: lower index
    plan = kv.allocate_budgets([1.0, 0.0], n_tokens=5, total=8)
    assert plan.budgets.tolist() == [[5, 3]]


def test_floor_protected_and_safeguard():
    plan = kv.allocate_budgets([1.0, 0.0, 0.0, 0.0], n_tokens=100, total=40, protected=8)
    assert plan.floor == 8 and plan.budgets.tolist() == [[16, 8, 8, 8]]
    plan = kv.allocate_budgets([1.0, 0.0], n_tokens=100, total=40, safeguard=0.5)
    assert plan.floor == 10 and plan.budgets.tolist() == [[30, 10]]


def test_allocate_budgets_rejects_bad_targets():
    w = np.ones((2, 4))
    with pytest.raises(ValueError, match="exactly one"):
        kv.allocate_budgets(w, n_tokens=10)
    with pytest.raises(ValueError, match="exactly one"):
        kv.allocate_budgets(w, n_tokens=10, total=8, tokens_per_head=2)
    with pytest.raises(ValueError, match="compression_ratio"):
        kv.allocate_budgets(w, n_tokens=10, compression_ratio=1.0)
    with pytest.raises(ValueError, match="tokens_per_head"):
        kv.allocate_budgets(w, n_tokens=10, tokens_per_head=11)
    with pytest.raises(ValueError, match="compression_ratio"):
        kv.allocate_budgets(w, n_tokens=10, compression_ratio=0.9, protected=2)
    with pytest.raises(ValueError, match="weights"):
        kv.allocate_budgets(-w, n_tokens=10, total=8)
    with pytest.raises(ValueError, match="scope"):
        kv.allocate_budgets(w, n_tokens=10, total=8, scope="head")


# ---- §2.4 snapkv_scores -----------------------------------------------------------------------


def _window_attention(q, k, key_mask=None):
    """Independent transcription: repeat_kv, causal window softmax (kvpress ``compute_window_
    attention``)."""
    b, h_q, w, d = q.shape
    n = k.shape[2]
    kk = np.repeat(k, h_q // k.shape[1], axis=1)
    logits = np.einsum("bhrd,bhnd->bhrn", q, kk) / math.sqrt(d)
    mask = np.arange(n)[None, :] > (n - w + np.arange(w))[:, None]
    logits = np.where(mask, -np.inf, logits)
    if key_mask is not None:
        logits = np.where(key_mask[:, None, None, :], logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _qk(seed, b=2, h_q=6, h_kv=3, w=4, n=30, d=8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, h_q, w, d)), rng.normal(size=(b, h_kv, n, d))


def test_query_and_attention_paths_agree():
    q, k = _qk(0)
    key_mask = np.ones((2, 30), dtype=bool)
    key_mask[1, :5] = False
    a = _window_attention(q, k, key_mask)
    s_q = kv.snapkv_scores(queries=q, keys=k, window=4, key_mask=key_mask)
    s_a = kv.snapkv_scores(attention=a, window=4, n_kv_heads=3, key_mask=key_mask)
    np.testing.assert_allclose(s_q, s_a, rtol=1e-6, atol=1e-12)
    assert np.all(np.isneginf(s_q[1, :, :5])) and np.all(np.isfinite(s_q[0]))


def test_gqa_mean_with_avg_pooling_equals_kvpress():
    q, k = _qk(1, w=5, n=40)
    a = _window_attention(q, k)
    # kvpress SnapKVPress.score: mean over window, avg_pool1d(k=5, pad=2, count_include_pad),
    # mean over each KV group, window positions padded with the max.
    prefix = a[..., :-5].mean(axis=2)
    padded = np.pad(prefix, [(0, 0), (0, 0), (2, 2)])
    pooled = np.stack([padded[..., j : j + 5].sum(-1) / 5 for j in range(35)], axis=-1)
    grouped = pooled.reshape(2, 3, 2, 35).mean(axis=2)
    expected = np.concatenate([grouped, np.repeat(grouped.max(-1, keepdims=True), 5, -1)], -1)
    got = kv.snapkv_scores(
        queries=q, keys=k, window=5, kernel=5, pooling="avg", reduce="mean", group_reduce="mean"
    )
    np.testing.assert_allclose(got[..., :35], expected[..., :35], rtol=1e-12)
    np.testing.assert_allclose(got[..., 35:], expected[..., 35:] + 1, rtol=1e-12)


def test_sum_and_mean_select_the_same_tokens_and_max_pool_dominates():
    q, k = _qk(2)
    s_sum = kv.snapkv_scores(queries=q, keys=k, window=4)
    s_mean = kv.snapkv_scores(queries=q, keys=k, window=4, reduce="mean")
    for budget in (4, 10, 20):
        np.testing.assert_array_equal(
            kv.select_tokens(s_sum, budget)[0], kv.select_tokens(s_mean, budget)[0]
        )
    pooled = kv.snapkv_scores(queries=q, keys=k, window=4, kernel=5)
    plain = kv.snapkv_scores(queries=q, keys=k, window=4, pooling="none")
    assert np.all(pooled[..., :26] >= plain[..., :26])


def test_protected_positions_score_highest():
    q, k = _qk(3)
    s = kv.snapkv_scores(queries=q, keys=k, window=4, sink=3)
    protected = np.r_[0:3, 26:30]
    free = np.setdiff1d(np.arange(30), protected)
    assert np.all(s[..., protected].min(-1) > s[..., free].max(-1))
    idx, _ = kv.select_tokens(s, 7)
    assert np.all(idx == protected)
    short = kv.snapkv_scores(queries=q[:, :, :4], keys=k[:, :, :6], window=4, sink=2)
    assert np.all(short == 1.0)  # N <= window + sink: everything protected


def test_uncomp_layout_keeps_query_heads():
    q, k = _qk(4)
    a = _window_attention(q, k)
    assert kv.snapkv_scores(attention=a, window=4).shape == (2, 6, 30)


def test_snapkv_scores_rejects_bad_options():
    q, k = _qk(5)
    with pytest.raises(ValueError, match="kernel"):
        kv.snapkv_scores(queries=q, keys=k, window=4, kernel=4)
    with pytest.raises(ValueError, match="window"):
        kv.snapkv_scores(queries=q, keys=k, window=0)
    with pytest.raises(ValueError, match="window"):
        kv.snapkv_scores(queries=q, keys=k, window=8)
    with pytest.raises(ValueError, match="H_kv"):
        kv.snapkv_scores(queries=q, keys=np.concatenate([k, k[:, :1]], 1), window=4)
    with pytest.raises(ValueError, match="n_kv_heads"):
        kv.snapkv_scores(attention=_window_attention(q, k), window=4, n_kv_heads=4)
    with pytest.raises(ValueError, match="attention"):
        kv.snapkv_scores(attention=_window_attention(q, k), queries=q, keys=k, window=4)
    with pytest.raises(ValueError, match="queries"):
        kv.snapkv_scores(queries=q, window=4)
    with pytest.raises(ValueError, match="NaN"):
        kv.snapkv_scores(queries=np.full_like(q, np.nan), keys=k, window=4)
    with pytest.raises(ValueError, match="key_mask"):
        kv.snapkv_scores(queries=q, keys=k, window=4, key_mask=np.ones((3, 30)))


# ---- §2.5 select_tokens -----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 4), st.integers(1, 25))
def test_selection_matches_a_stable_argsort(seed, b, h, n):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=(b, h, n)), 1)  # ties
    budgets = rng.integers(0, n + 1, size=(b, h))
    idx, lengths = kv.select_tokens(s, budgets)
    np.testing.assert_array_equal(lengths, budgets)
    mask = kv.select_tokens(s, budgets, return_mask=True)
    for i in range(b):
        for j in range(h):
            oracle = np.sort(np.argsort(-s[i, j], kind="stable")[: budgets[i, j]])
            assert idx[i, j, : budgets[i, j]].tolist() == oracle.tolist()
            assert np.all(idx[i, j, budgets[i, j] :] == -1)
            assert np.flatnonzero(mask[i, j]).tolist() == oracle.tolist()


def test_select_tokens_budget_forms_and_errors():
    s = np.array([[[0.0, 2.0, 1.0, -np.inf]]])
    assert kv.select_tokens(s, 2)[0].tolist() == [[[1, 2]]]
    assert kv.select_tokens(s, np.array([3]))[0].tolist() == [[[0, 1, 2]]]
    with pytest.raises(ValueError, match="finite"):
        kv.select_tokens(s, 4)
    with pytest.raises(ValueError, match="budgets"):
        kv.select_tokens(s, -1)
    with pytest.raises(ValueError, match="budgets"):
        kv.select_tokens(s, np.array([1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        kv.select_tokens(np.full((1, 1, 2), np.nan), 1)
    with pytest.raises(ValueError, match="scores"):
        kv.select_tokens(np.zeros((2, 2)), 1)


# ---- §2.6 compress_kv -------------------------------------------------------------------------


def _plan(seed, b=2, h=3, n=12, d=4):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(b, h, n, d)).astype(np.float32)
    values = rng.normal(size=(b, h, n, d + 1)).astype(np.float16)
    budgets = np.array([2, 7, 5])
    idx, lengths = kv.select_tokens(rng.normal(size=(b, h, n)), budgets)
    return keys, values, idx, lengths


def test_layouts_gather_the_same_source_rows():
    keys, values, idx, lengths = _plan(0)
    pk, pv, valid = kv.compress_kv(keys, values, idx, lengths)
    fk, fv, cu = kv.compress_kv(keys, values, idx, lengths, layout="flat")
    groups = kv.compress_kv(keys, values, idx, lengths, layout="grouped")
    assert pk.dtype == np.float32 and pv.dtype == np.float16 and fv.dtype == np.float16
    assert cu.tolist() == [0, 2, 9, 14, 16, 23, 28]
    assert [g[0].tolist() for g in groups] == [[0], [2], [1]]  # ascending budgets
    for b in range(2):
        for h in range(3):
            rows = idx[b, h, : lengths[b, h]]
            np.testing.assert_array_equal(pk[b, h, : len(rows)], keys[b, h, rows])
            np.testing.assert_array_equal(pv[b, h, : len(rows)], values[b, h, rows])
            assert np.all(pk[b, h, len(rows) :] == 0) and valid[b, h].sum() == len(rows)
            flat = slice(cu[b * 3 + h], cu[b * 3 + h + 1])
            np.testing.assert_array_equal(fk[flat], keys[b, h, rows])
            np.testing.assert_array_equal(fv[flat], values[b, h, rows])
    for heads, gk, gv in groups:
        for i, h in enumerate(heads):
            for b in range(2):
                np.testing.assert_array_equal(gk[b, i], keys[b, h, idx[b, h, : lengths[b, h]]])
                np.testing.assert_array_equal(gv[b, i], values[b, h, idx[b, h, : lengths[b, h]]])


def test_memory_of_each_layout_matches_the_table():
    keys, values, idx, lengths = _plan(1)
    item_k, d = keys.itemsize, keys.shape[3]
    pk, _, _ = kv.compress_kv(keys, values, idx, lengths)
    fk, _, _ = kv.compress_kv(keys, values, idx, lengths, layout="flat")
    groups = kv.compress_kv(keys, values, idx, lengths, layout="grouped")
    assert pk.nbytes == 2 * 3 * 7 * d * item_k  # B·H·max_h b_h·d
    assert fk.nbytes == 2 * (2 + 7 + 5) * d * item_k  # B·Σ_h b_h·d
    assert sum(g[1].nbytes for g in groups) == fk.nbytes


def test_compress_kv_errors():
    keys, values, idx, lengths = _plan(2)
    with pytest.raises(ValueError, match="indices"):
        kv.compress_kv(keys, values, np.full_like(idx, 12), lengths)
    with pytest.raises(ValueError, match="lengths"):
        kv.compress_kv(keys, values, idx, lengths[:1])
    uneven = lengths.copy()
    uneven[1, 0] = 1
    with pytest.raises(ValueError, match="grouped"):
        kv.compress_kv(keys, values, idx, uneven, layout="grouped")
    with pytest.raises(ValueError, match="values"):
        kv.compress_kv(keys, values[:, :2], idx, lengths)
    with pytest.raises(TypeError, match="keys"):
        kv.compress_kv(keys.astype(np.int32), values, idx, lengths)
    with pytest.raises(ValueError, match="layout"):
        kv.compress_kv(keys, values, idx, lengths, layout="ragged")


def test_plan_floor_is_the_smallest_over_layers():
    plan = kv.allocate_budgets(np.ones((2, 2)), n_tokens=100, total=83, safeguard=1.0)
    assert plan.budgets.sum(axis=1).tolist() == [42, 41]  # floors 21 and 20
    assert plan.floor == 20 and plan.budgets.min() == 20
