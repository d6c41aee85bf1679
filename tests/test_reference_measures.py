"""The float64 oracle of ``more.md`` against the spec's known values, properties and errors.

Each section names the ``more.md`` section whose "Tests:" line it implements. The NumPy and torch
faces are held to this oracle in ``test_measures_faces.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from entcore.reference import measures as ref


def softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def plain_entropy(p):
    p = np.asarray(p, dtype=np.float64)
    q = p[p > 0]
    return float(-(q * np.log(q)).sum())


# ---------------------------------------------------------------------------------------------
# §1 attention_entropy
# ---------------------------------------------------------------------------------------------


def test_attention_uniform_rows_give_log_k_and_one_hot_rows_zero():
    b, h, q, k = 2, 3, 4, 5
    uniform = np.full((b, h, q, k), 1.0 / k)
    np.testing.assert_allclose(ref.attention_entropy(uniform), math.log(k), rtol=1e-14)
    np.testing.assert_allclose(
        ref.attention_entropy(uniform, normalize="log_keys"), 1.0, rtol=1e-14
    )
    one_hot = np.zeros((b, h, q, k))
    one_hot[..., 2] = 1.0
    assert np.all(ref.attention_entropy(one_hot) == 0.0)


def test_attention_probability_and_logit_routes_agree():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 3, 4, 6)) * 3
    from_probs = ref.attention_entropy(softmax(s))
    from_logits = ref.attention_entropy(s, from_logits=True)
    np.testing.assert_allclose(from_probs, from_logits, rtol=1e-6, atol=1e-12)
    # Causal masking: the logit route masks with -inf, the probability route reads the causal
    # softmax (zeros above the diagonal) and leaves the masked keys out.
    q, k = 4, 6
    causal = np.arange(k)[None, :] <= k - q + np.arange(q)[:, None]
    masked = np.where(causal, s, -np.inf)
    np.testing.assert_allclose(
        ref.attention_entropy(softmax(masked), causal=True),
        ref.attention_entropy(s, from_logits=True, causal=True),
        rtol=1e-6,
    )


def test_attention_causal_uniform_row_normalisation_is_one():
    q = k = 5
    causal = np.arange(k)[None, :] <= np.arange(q)[:, None]
    attn = causal / causal.sum(axis=1, keepdims=True)
    attn = np.broadcast_to(attn, (2, 3, q, k))
    h = ref.attention_entropy(attn, causal=True, normalize="row")
    np.testing.assert_allclose(h[..., 1:], 1.0, rtol=1e-14)
    assert np.all(h[..., 0] == 0.0)  # row 0 sees one key
    # "log_keys" divides every row by ln K, causal or not.
    h_keys = ref.attention_entropy(attn, causal=True, normalize="log_keys")
    np.testing.assert_allclose(h_keys[0, 0], np.log(np.arange(1, q + 1)) / math.log(k))


def test_attention_masked_logits_are_finite_and_key_mask_removes_keys():
    s = np.array([[[[0.0, -np.inf, 1.0, 2.0]]]])
    h = ref.attention_entropy(s, from_logits=True)
    assert np.isfinite(h).all()
    np.testing.assert_allclose(h[0, 0, 0], plain_entropy(softmax(np.array([0.0, 1.0, 2.0]))))
    key_mask = np.array([[True, False, True, False]])
    h_km = ref.attention_entropy(np.zeros((1, 1, 1, 4)), from_logits=True, key_mask=key_mask)
    np.testing.assert_allclose(h_km, math.log(2))


def test_attention_eps_matches_the_reference_formula():
    rng = np.random.default_rng(1)
    p = softmax(rng.normal(size=(1, 2, 3, 7)))
    p[0, 0, 0, :3] = 0.0
    want = -(p * np.log(p + 1e-9)).sum(-1)
    np.testing.assert_allclose(ref.attention_entropy(p, eps=1e-9), want, rtol=1e-14)
    np.testing.assert_allclose(
        ref.attention_entropy(p, eps=0.0)[0, 1], -(p[0, 1] * np.log(p[0, 1])).sum(-1)
    )


def test_attention_query_mask_reductions_and_layers():
    rng = np.random.default_rng(2)
    layers = [softmax(rng.normal(size=(2, 3, 4, 5))) for _ in range(3)]
    qmask = np.array([[True, True, False, True], [False, True, True, True]])
    layers[1][0, :, 2, :] = np.nan  # a fully masked (excluded) row may hold NaN
    h = ref.attention_entropy(layers, query_mask=qmask)
    assert h.shape == (3, 2, 3, 4)
    assert np.all(h.transpose(0, 2, 1, 3)[:, :, ~qmask] == 0.0)
    per_query = ref.attention_entropy(layers, query_mask=qmask, reduce="mean_queries")
    want = h.sum(-1) / qmask.sum(-1)[None, :, None]
    np.testing.assert_allclose(per_query, want)
    head = ref.attention_entropy(layers, query_mask=qmask, reduce="head_mean")
    assert head.shape == (3, 3)
    np.testing.assert_allclose(head, h.sum(axis=(1, 3)) / qmask.sum())
    one = ref.attention_entropy(layers[0], reduce="head_mean")
    assert one.shape == (3,)


def test_attention_nan_policy_and_errors():
    p = np.full((1, 1, 2, 3), 1 / 3)
    p[0, 0, 1, 0] = np.nan
    with pytest.raises(ValueError, match="attn: contains NaN"):
        ref.attention_entropy(p)
    h = ref.attention_entropy(p, nan_policy="propagate")
    assert np.isnan(h[0, 0, 1]) and np.isclose(h[0, 0, 0], math.log(3))
    with pytest.raises(ValueError, match="attn: expected"):
        ref.attention_entropy(np.ones((3, 3)))
    with pytest.raises(TypeError, match="attn"):
        ref.attention_entropy(np.ones((1, 1, 1, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="attn: probabilities"):
        ref.attention_entropy(-np.ones((1, 1, 1, 2)))
    with pytest.raises(ValueError, match=r"attn: \+inf"):
        ref.attention_entropy(np.full((1, 1, 1, 2), np.inf), from_logits=True)
    with pytest.raises(ValueError, match="all -inf"):
        ref.attention_entropy(np.full((1, 1, 1, 2), -np.inf), from_logits=True)
    with pytest.raises(ValueError, match="causal"):
        ref.attention_entropy(np.ones((1, 1, 3, 2)) / 2, causal=True)
    with pytest.raises(ValueError, match="key_mask"):
        ref.attention_entropy(np.ones((1, 1, 1, 2)) / 2, key_mask=np.ones((1, 3), dtype=bool))
    with pytest.raises(ValueError, match="normalize"):
        ref.attention_entropy(np.ones((1, 1, 1, 2)) / 2, normalize="bits")
    with pytest.raises(ValueError, match="reduce"):
        ref.attention_entropy(np.ones((1, 1, 1, 2)) / 2, reduce="sum")


# ---------------------------------------------------------------------------------------------
# §2 entropic_overload_fraction, §3 attention_entropy_regularizer
# ---------------------------------------------------------------------------------------------


def test_overload_fraction_extremes_monotonicity_and_sides():
    k = 16
    e_max = math.log(k)
    assert ref.entropic_overload_fraction(np.full(8, e_max), max_entropy=e_max) == 1.0
    assert ref.entropic_overload_fraction(np.zeros(8), max_entropy=e_max) == 0.0
    rng = np.random.default_rng(3)
    h = rng.uniform(0, e_max, size=(5, 9))
    previous = np.ones(5)
    for t in np.linspace(0, 1.2, 13):
        above = ref.entropic_overload_fraction(h, max_entropy=e_max, threshold=t)
        below = ref.entropic_overload_fraction(h, max_entropy=e_max, threshold=t, side="below")
        assert np.all(above <= previous)
        np.testing.assert_allclose(above + below, 1.0)
        previous = above
    per_layer = ref.entropic_overload_fraction(h, max_entropy=np.full((5, 1), e_max))
    np.testing.assert_allclose(per_layer, ref.entropic_overload_fraction(h, max_entropy=e_max))
    with pytest.raises(ValueError, match="max_entropy"):
        ref.entropic_overload_fraction(h, max_entropy=0.0)
    with pytest.raises(ValueError, match="side"):
        ref.entropic_overload_fraction(h, max_entropy=1.0, side="left")


def test_regularizer_dead_zone_reductions_and_gradient_formula():
    n_layers, batch, heads, q = 2, 3, 4, 5
    e_max = math.log(64)
    rng = np.random.default_rng(4)
    theta = rng.uniform(0.3, 0.8, size=(n_layers, heads))
    target = theta[:, None, :, None] * e_max
    exact = np.broadcast_to(target, (n_layers, batch, heads, q))
    assert ref.attention_entropy_regularizer(exact, theta, max_entropy=e_max) == 0.0
    band = 0.2 * e_max
    inside = exact + band * (1 - 1e-9)
    assert ref.attention_entropy_regularizer(inside, theta, max_entropy=e_max) == 0.0
    d = band * (1 + 1e-9)
    outside = exact + d
    want = batch * q * d * d  # per layer: (1/H) Σ_h Σ_{b,i} D², then the mean over layers
    np.testing.assert_allclose(
        ref.attention_entropy_regularizer(outside, theta, max_entropy=e_max), want, rtol=1e-12
    )
    h = exact + rng.normal(scale=0.5, size=exact.shape)
    qmask = rng.random((batch, q)) > 0.3
    total = ref.attention_entropy_regularizer(h, theta, max_entropy=e_max, query_mask=qmask)
    mean = ref.attention_entropy_regularizer(
        h, theta, max_entropy=e_max, query_mask=qmask, reduction="mean"
    )
    np.testing.assert_allclose(total, mean * qmask.sum(), rtol=1e-12)
    shared = ref.attention_entropy_regularizer(h, theta[0], max_entropy=e_max)
    np.testing.assert_allclose(
        shared, ref.attention_entropy_regularizer(h, np.stack([theta[0]] * 2), max_entropy=e_max)
    )
    with pytest.raises(ValueError, match="theta"):
        ref.attention_entropy_regularizer(h, np.ones(3), max_entropy=e_max)
    with pytest.raises(ValueError, match="entropy"):
        ref.attention_entropy_regularizer(h[0], theta, max_entropy=e_max)


# ---------------------------------------------------------------------------------------------
# §4 entropy_invariant_scale
# ---------------------------------------------------------------------------------------------


def test_entropy_invariant_scale_values_and_errors():
    assert ref.entropy_invariant_scale(1024, 1024, 64) == 1 / 8
    scales = ref.entropy_invariant_scale(256, np.array([64, 256, 1024, 4096]), 64)
    assert np.all(np.diff(scales) > 0)
    for args, name in (((1, 4, 8), "n_train"), ((4, 0, 8), "n_infer"), ((4, 4, 0), "head_dim")):
        with pytest.raises(ValueError, match=name):
            ref.entropy_invariant_scale(*args)


def test_entropy_invariant_scale_keeps_attention_entropy_closer_to_training():
    rng = np.random.default_rng(5)
    d, n_train = 32, 64

    def mean_entropy(n, scale):
        q = rng.normal(size=(64, d))
        k = rng.normal(size=(n, d))
        return float(ref.attention_entropy(softmax(scale * q @ k.T)[None, None]).mean())

    base = mean_entropy(n_train, 1 / math.sqrt(d))
    plain = mean_entropy(4 * n_train, 1 / math.sqrt(d))
    scaled = mean_entropy(4 * n_train, ref.entropy_invariant_scale(n_train, 4 * n_train, d))
    assert abs(scaled - base) < abs(plain - base)


# ---------------------------------------------------------------------------------------------
# §5 deyo
# ---------------------------------------------------------------------------------------------


def test_deyo_selection_weights_and_loss():
    rng = np.random.default_rng(6)
    c = 10
    logits = rng.normal(size=(40, c)) * 4
    aug = rng.normal(size=(40, c))
    r = ref.deyo(logits, aug)
    p = softmax(logits)
    ent = -(p * np.log(p)).sum(1)
    y = p.argmax(1)
    plpd = p[np.arange(40), y] - softmax(aug)[np.arange(40), y]
    np.testing.assert_allclose(r.entropy, ent, rtol=1e-10)
    np.testing.assert_allclose(r.plpd, plpd, rtol=1e-12, atol=1e-15)
    sel = (ent < 0.5 * math.log(c)) & (plpd > 0.2)
    np.testing.assert_array_equal(r.selected, sel)
    w = np.exp(-(ent - 0.4 * math.log(c))) + np.exp(plpd)
    np.testing.assert_allclose(r.weights, w, rtol=1e-12)
    assert r.n_selected == sel.sum() > 0
    np.testing.assert_allclose(r.loss, (w * ent)[sel].sum() / sel.sum(), rtol=1e-12)
    plain = ref.deyo(logits, aug, reweight_ent=False, reweight_plpd=False)
    assert np.all(plain.weights == 1.0)
    only_plpd = ref.deyo(logits, aug, reweight_ent=False)
    np.testing.assert_allclose(only_plpd.weights, np.exp(plpd), rtol=1e-12)


def test_deyo_uniform_rows_never_selected_and_empty_loss_is_zero():
    r = ref.deyo(np.zeros((5, 1000)), np.zeros((5, 1000)))
    assert not r.selected.any() and r.loss == 0.0 and r.n_selected == 0
    # τ_Ent = 0.5 ln 1000: a row just below it is selected (PLPD large), just above it is not.
    assert np.all(np.isclose(r.entropy, math.log(1000)))
    with pytest.raises(ValueError, match="logits_aug"):
        ref.deyo(np.zeros((5, 3)), np.zeros((4, 3)))


def test_deyo_threshold_on_entropy_at_c_1000():
    c = 1000
    tau = 0.5 * math.log(c)

    # One large logit a over c − 1 zeros: pick a so that the entropy sits just either side of τ.
    def entropy_of(a):
        z = np.zeros(c)
        z[0] = a
        return plain_entropy(softmax(z))

    lo, hi = 0.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if entropy_of(mid) > tau else (lo, mid)
    rows = np.zeros((2, c))
    rows[0, 0], rows[1, 0] = hi + 1e-6, lo - 1e-6
    aug = np.zeros((2, c))
    r = ref.deyo(rows, aug, plpd_threshold=-1.0)
    assert r.selected.tolist() == [True, False]


# ---------------------------------------------------------------------------------------------
# §6 LDR losses
# ---------------------------------------------------------------------------------------------


def test_ldr_limits_and_known_values():
    rng = np.random.default_rng(7)
    f = rng.normal(size=(6, 5))
    y = rng.integers(0, 5, size=6)
    z = f - f[np.arange(6), y][:, None] + 0.1
    z[np.arange(6), y] = 0.0
    big = ref.ldr_kl_loss(f, y, lam=1e7, reduction="none")
    np.testing.assert_allclose(big, z.mean(1), rtol=1e-5, atol=1e-6)
    small = ref.ldr_kl_loss(f, y, lam=1e-4, reduction="none")
    np.testing.assert_allclose(small, z.max(1), atol=1e-3)
    ce = -np.log(softmax(f)[np.arange(6), y])
    np.testing.assert_allclose(
        ref.ldr_kl_loss(f, y, lam=1.0, margin=0.0, reduction="none"), ce - math.log(5), rtol=1e-12
    )
    k, c, lam = 5, 0.3, 2.0
    equal = ref.ldr_kl_loss(np.ones((2, k)), np.array([0, 3]), lam=lam, margin=c, reduction="none")
    np.testing.assert_allclose(equal, lam * math.log((1 + (k - 1) * math.exp(c / lam)) / k))
    per_row = ref.ldr_kl_loss(f, y, reduction="none")
    np.testing.assert_allclose(ref.ldr_kl_loss(f, y), per_row.mean())
    np.testing.assert_allclose(ref.ldr_kl_loss(f, y, reduction="sum"), per_row.sum())


def test_ldr_score_transforms():
    rng = np.random.default_rng(8)
    f = rng.normal(size=(4, 6))
    y = rng.integers(0, 6, size=4)
    sp = np.log1p(np.exp(f))
    np.testing.assert_allclose(
        ref.ldr_kl_loss(f, y, score_transform="softplus_mean", reduction="none"),
        ref.ldr_kl_loss(sp / sp.mean(1, keepdims=True), y, reduction="none"),
    )
    np.testing.assert_allclose(
        ref.ldr_kl_loss(f, y, score_transform="abs_mean", reduction="none"),
        ref.ldr_kl_loss(f / np.abs(f).mean(1, keepdims=True), y, reduction="none"),
    )


def test_aldr_on_uniform_predictions_equals_ldr():
    f = np.zeros((3, 4))
    y = np.array([0, 1, 3])
    loss, lam_new = ref.aldr_kl_loss(f, y, np.full(3, 10.0), reduction="none")
    np.testing.assert_allclose(lam_new, 10.0, rtol=1e-12)
    np.testing.assert_allclose(loss, ref.ldr_kl_loss(f, y, lam=10.0, reduction="none"), rtol=1e-12)


def test_aldr_formula_and_errors():
    rng = np.random.default_rng(9)
    f = rng.normal(size=(5, 4)) * 3
    y = rng.integers(0, 4, size=5)
    lam_prev = rng.uniform(1, 10, size=5)
    loss, lam_new = ref.aldr_kl_loss(f, y, lam_prev, lam0=10.0, alpha=2.0, reduction="none")
    p = softmax(f / lam_prev[:, None]) + 1e-5
    p /= p.sum(1, keepdims=True)
    kl = (p * np.log(4 * p)).sum(1)
    want_lam = 10.0 * (1 - kl / (2.0 * math.log(4)))
    np.testing.assert_allclose(lam_new, want_lam, rtol=1e-12)
    z = f - f[np.arange(5), y][:, None] + 0.1
    z[np.arange(5), y] = 0.0
    want = (
        want_lam * np.log(np.exp(z / want_lam[:, None]).mean(1))
        - 2 * math.log(4) / 20 * (want_lam - 10) ** 2
    )
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    assert np.all(lam_new >= 10.0 * (1 - 1 / 2.0))
    with pytest.raises(ValueError, match="alpha"):
        ref.aldr_kl_loss(f, y, lam_prev, alpha=1.0)
    with pytest.raises(ValueError, match="labels"):
        ref.ldr_kl_loss(f, np.array([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="labels"):
        ref.ldr_kl_loss(f, -np.ones(5, dtype=np.int64))
    with pytest.raises(TypeError, match="labels"):
        ref.ldr_kl_loss(f, np.zeros(5))
    with pytest.raises(ValueError, match="lam_prev"):
        ref.aldr_kl_loss(f, y, np.zeros(5))


# ---------------------------------------------------------------------------------------------
# §7 marginal_entropy
# ---------------------------------------------------------------------------------------------


def test_marginal_entropy_values_concavity_order_and_mask():
    one_hot = np.zeros((4, 6))
    one_hot[:, 2] = 1.0
    assert ref.marginal_entropy(one_hot, from_logits=False, eps=0.0) == 0.0
    np.testing.assert_allclose(ref.marginal_entropy(np.zeros((3, 6)), eps=0.0), math.log(6))
    rng = np.random.default_rng(10)
    z = rng.normal(size=(8, 6)) * 2
    h_bar = ref.marginal_entropy(z, eps=0.0)
    assert h_bar >= np.mean([plain_entropy(p) for p in softmax(z)])
    np.testing.assert_allclose(ref.marginal_entropy(z[::-1], eps=0.0), h_bar, rtol=1e-14)
    p_bar = softmax(z).mean(0)
    np.testing.assert_allclose(
        ref.marginal_entropy(z), -(p_bar * np.log(p_bar + 1e-6)).sum(), rtol=1e-14
    )
    mask = np.arange(8) < 5
    np.testing.assert_allclose(ref.marginal_entropy(z, mask=mask), ref.marginal_entropy(z[:5]))
    with pytest.raises(ValueError, match="mask"):
        ref.marginal_entropy(z, mask=np.zeros(8, dtype=bool))


# ---------------------------------------------------------------------------------------------
# §8 EAST
# ---------------------------------------------------------------------------------------------


def test_action_entropy_values_and_errors():
    counts = np.array([[4, 0, 0], [1, 1, 2], [3, 3, 3]])
    np.testing.assert_allclose(
        ref.action_entropy(counts), [0.0, plain_entropy([0.25, 0.25, 0.5]), math.log(3)]
    )
    with pytest.raises(ValueError, match="counts"):
        ref.action_entropy(np.array([[0, 0]]))
    with pytest.raises(ValueError, match="counts"):
        ref.action_entropy(np.array([[1, -1]]))


def test_entropy_weighted_direction_properties():
    rng = np.random.default_rng(11)
    h = rng.normal(size=(9, 4))
    w = rng.uniform(0.1, 2.0, size=9)
    u = ref.entropy_weighted_direction(h, w)
    np.testing.assert_allclose(u, (w[:, None] * (h - h.mean(0))).sum(0) / w.sum(), rtol=1e-12)
    assert np.allclose(ref.entropy_weighted_direction(h, np.full(9, 0.7)), 0.0, atol=1e-15)
    perm = rng.permutation(9)
    np.testing.assert_allclose(ref.entropy_weighted_direction(h[perm], w[perm]), u, rtol=1e-12)
    h2 = rng.normal(size=(9, 4))
    np.testing.assert_allclose(
        ref.entropy_weighted_direction(2 * h + 3 * h2, w),
        2 * u + 3 * ref.entropy_weighted_direction(h2, w),
        rtol=1e-12,
        atol=1e-14,
    )
    np.testing.assert_allclose(ref.entropy_weighted_direction(h + 5.0, w), u, atol=1e-12)
    raw = ref.entropy_weighted_direction(h, w, center=False)
    np.testing.assert_allclose(raw, (w[:, None] * h).sum(0) / w.sum(), rtol=1e-12)
    unit = ref.entropy_weighted_direction(h, w, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit), 1.0)
    for bad, match in ((-w, "entropies"), (np.zeros(9), "entropies")):
        with pytest.raises(ValueError, match=match):
            ref.entropy_weighted_direction(h, bad)
    with pytest.raises(ValueError, match="activations"):
        ref.entropy_weighted_direction(np.zeros((0, 4)), np.zeros(0))


# ---------------------------------------------------------------------------------------------
# §9 semantic_entropy
# ---------------------------------------------------------------------------------------------


def test_semantic_entropy_known_values_and_invariances():
    assert ref.semantic_entropy(np.zeros(5, dtype=np.int64)) == 0.0
    m = 6
    np.testing.assert_allclose(ref.semantic_entropy(np.arange(m), np.full(m, -2.0)), math.log(m))
    rng = np.random.default_rng(12)
    ids = rng.integers(0, 3, size=(4, 10))
    discrete = ref.semantic_entropy(ids)
    np.testing.assert_allclose(ref.semantic_entropy(ids, np.full((4, 10), -1.3)), discrete)
    want = [plain_entropy(np.unique(r, return_counts=True)[1] / 10) for r in ids]
    np.testing.assert_allclose(discrete, want)
    logp = rng.normal(size=(4, 10))
    se = ref.semantic_entropy(ids, logp)
    np.testing.assert_allclose(ref.semantic_entropy(ids * 7 + 100, logp), se)
    perm = rng.permutation(10)
    np.testing.assert_allclose(ref.semantic_entropy(ids[:, perm], logp[:, perm]), se)
    np.testing.assert_allclose(ref.semantic_entropy(ids[2], logp[2]), se[2])
    # Rows are independent.
    other = ids.copy()
    other[0] = 0
    np.testing.assert_allclose(ref.semantic_entropy(other, logp)[1:], se[1:])
    # Likelihood weights by hand, and the MC estimator.
    w = np.exp(logp[0]) / np.exp(logp[0]).sum()
    pc = np.array([w[ids[0] == c].sum() for c in np.unique(ids[0])])
    np.testing.assert_allclose(se[0], plain_entropy(pc), rtol=1e-12)
    mc = ref.semantic_entropy(ids, logp, estimator="mc")
    np.testing.assert_allclose(mc[0], -np.log(pc).mean(), rtol=1e-12)


def test_semantic_entropy_mask_minus_inf_and_errors():
    ids = np.array([[0, 0, 1, 2]])
    logp = np.array([[-1.0, -np.inf, -2.0, -np.inf]])
    np.testing.assert_allclose(
        ref.semantic_entropy(ids, logp), ref.semantic_entropy(ids[:, :3], logp[:, :3])
    )
    mask = np.array([[True, True, False, True]])
    np.testing.assert_allclose(
        ref.semantic_entropy(ids, mask=mask), ref.semantic_entropy(ids[:, [0, 1, 3]])
    )
    with pytest.raises(ValueError, match="mask"):
        ref.semantic_entropy(ids, mask=np.zeros((1, 4), dtype=bool))
    with pytest.raises(ValueError, match="seq_logprob"):
        ref.semantic_entropy(ids, np.full((1, 4), -np.inf))
    with pytest.raises(ValueError, match="estimator"):
        ref.semantic_entropy(ids, estimator="plugin")
    with pytest.raises(TypeError, match="cluster_ids"):
        ref.semantic_entropy(np.zeros(3))


# ---------------------------------------------------------------------------------------------
# §10 Inv-Entropy
# ---------------------------------------------------------------------------------------------


def test_inv_entropy_known_values_bounds_and_permutation():
    n = 5
    assert ref.inv_entropy(np.eye(n), np.eye(n)) == 0.0
    np.testing.assert_allclose(ref.inv_entropy(np.ones((n, n)), np.ones((n, n))), math.log(n))
    rng = np.random.default_rng(13)
    sx, sy = np.abs(rng.normal(size=(2, 3, n, n)))
    inv = ref.inv_entropy(sx, sy)
    assert inv.shape == (3,) and np.all((inv >= 0) & (inv <= n / math.e))
    perm = rng.permutation(n)
    np.testing.assert_allclose(
        ref.inv_entropy(sx[:, perm][:, :, perm], sy[:, perm][:, :, perm]), inv, rtol=1e-12
    )
    px = sx[0] / sx[0].sum(1, keepdims=True)
    py = sy[0] / sy[0].sum(1, keepdims=True)
    q = np.diag(py @ px)
    np.testing.assert_allclose(inv[0], -(q * np.log(q)).sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="sim_x"):
        ref.inv_entropy(-np.eye(n), np.eye(n))
    with pytest.raises(ValueError, match="sim_y"):
        ref.inv_entropy(np.eye(n), np.zeros((n, n)))


def test_inv_entropy_bootstrap_draws_and_mean():
    rng = np.random.default_rng(14)
    n, a = 3, 2
    sx = np.abs(rng.normal(size=(n, n)))
    sy_all = np.abs(rng.normal(size=(n * a, n * a)))
    value = ref.inv_entropy_bootstrap(sx, sy_all, n_answers=a, n_bootstrap=8, seed=3)
    draws = ref.bootstrap_draws(n, a, 8, 3)
    assert len({tuple(d) for d in draws}) == 8  # all 2^3 tuples, each once
    want = np.mean([ref.inv_entropy(sx, sy_all[np.ix_(d, d)]) for d in draws])
    np.testing.assert_allclose(value, want, rtol=1e-12)
    with pytest.raises(ValueError, match="n_bootstrap"):
        ref.inv_entropy_bootstrap(sx, sy_all, n_answers=a, n_bootstrap=9)
    with pytest.raises(ValueError, match="sim_y_all"):
        ref.inv_entropy_bootstrap(sx, sy_all[:5, :5], n_answers=a)


# ---------------------------------------------------------------------------------------------
# §11 delentropy
# ---------------------------------------------------------------------------------------------


def test_delentropy_constant_shift_transpose():
    assert ref.delentropy(np.full((8, 9), 77, dtype=np.uint8)) == 0.0
    rng = np.random.default_rng(15)
    img = rng.integers(0, 200, size=(16, 20)).astype(np.uint8)
    for kw in ({}, {"blur_sigma": None}, {"gradient": "central"}, {"gradient": "forward"}):
        h = ref.delentropy(img, **kw)
        assert h > 0
        np.testing.assert_allclose(ref.delentropy(img + np.uint8(40), **kw), h, rtol=1e-12)
        np.testing.assert_allclose(ref.delentropy(img.T, **kw), h, rtol=1e-12)


def test_delentropy_exact_histogram_without_blur():
    rng = np.random.default_rng(16)
    img = rng.integers(0, 256, size=(12, 10)).astype(np.float64)
    p = np.pad(img, 1, mode="reflect")
    gx = np.zeros_like(img)
    gy = np.zeros_like(img)
    k = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    for i in range(12):
        for j in range(10):
            win = p[i : i + 3, j : j + 3]
            gx[i, j] = (win * k).sum()
            gy[i, j] = (win * k.T).sum()
    counts, _, _ = np.histogram2d(gx.ravel(), gy.ravel(), bins=511, range=[[-256, 256]] * 2)
    q = counts[counts > 0] / counts.sum()
    want = -0.5 * (q * np.log2(q)).sum()
    np.testing.assert_allclose(ref.delentropy(img, blur_sigma=None), want, rtol=1e-12)
    batch = ref.delentropy(np.stack([img, img + 10]), blur_sigma=None)
    np.testing.assert_allclose(batch, [want, want], rtol=1e-12)
    assert np.isnan(ref.delentropy(img * 100, blur_sigma=None, value_range=(1e6, 2e6)))


def test_delentropic_scene_profile_recovers_beta_and_errors():
    rng = np.random.default_rng(17)
    values = np.concatenate([[0.0, 1.0], rng.beta(2.0, 5.0, size=10_000)])
    a, b, m, s = ref.delentropic_scene_profile(values)
    assert abs(a - 2.0) / 2.0 < 0.05 and abs(b - 5.0) / 5.0 < 0.05
    np.testing.assert_allclose(m, np.clip(values, 1e-6, 1 - 1e-6).mean())
    with pytest.raises(ValueError, match="values"):
        ref.delentropic_scene_profile(np.full(4, 3.0))


# ---------------------------------------------------------------------------------------------
# §12 structural_entropy
# ---------------------------------------------------------------------------------------------


def random_graph(rng, n):
    w = rng.uniform(0, 1, size=(n, n)) * (rng.random((n, n)) < 0.5)
    w = np.triu(w, 1)
    return w + w.T


def test_structural_entropy_partitions():
    rng = np.random.default_rng(18)
    n = 10
    w = random_graph(rng, n)
    h1 = ref.structural_entropy(w)
    d = w.sum(0)
    np.testing.assert_allclose(h1, plain_entropy(d / d.sum()) / math.log(2))
    np.testing.assert_allclose(ref.structural_entropy(w, np.arange(n)), h1, rtol=1e-12)
    np.testing.assert_allclose(ref.structural_entropy(w, np.zeros(n, dtype=np.int64)), h1)
    labels = rng.integers(0, 3, size=n)
    hp = ref.structural_entropy(w, labels)
    assert hp <= h1 + 1e-12
    np.testing.assert_allclose(ref.structural_entropy(w, (labels + 1) * 5), hp, rtol=1e-12)
    # Equivalent form: H^P = H¹ − Σ_j ((V_j − g_j)/vol) log(vol/V_j).
    vol = d.sum()
    form = h1
    for j in np.unique(labels):
        inside = labels == j
        v_j = d[inside].sum()
        g_j = w[np.ix_(inside, ~inside)].sum()
        form -= (v_j - g_j) / vol * math.log2(vol / v_j)
    np.testing.assert_allclose(hp, form, rtol=1e-12)
    # Merging modules a, b.
    a_, b_ = 0, 1
    ia, ib = labels == a_, labels == b_
    v_a, v_b = d[ia].sum(), d[ib].sum()
    g_a, g_b = w[np.ix_(ia, ~ia)].sum(), w[np.ix_(ib, ~ib)].sum()
    w_ab = w[np.ix_(ia, ib)].sum()
    v_ab = v_a + v_b
    delta = (
        (v_a - g_a) * math.log2(v_ab / v_a)
        + (v_b - g_b) * math.log2(v_ab / v_b)
        - 2 * w_ab * math.log2(vol / v_ab)
    ) / vol
    merged = np.where(labels == b_, a_, labels)
    np.testing.assert_allclose(ref.structural_entropy(w, merged) - hp, delta, atol=1e-12)


def test_structural_entropy_zero_cut_and_errors():
    block = np.ones((3, 3)) - np.eye(3)
    w = np.zeros((5, 5))
    w[:3, :3] = block
    w[3, 4] = w[4, 3] = 2.0
    labels = np.array([0, 0, 0, 1, 1])
    d = w.sum(0)
    h1 = ref.structural_entropy(w)
    v = np.array([d[:3].sum(), d[3:].sum()])
    np.testing.assert_allclose(
        ref.structural_entropy(w, labels), h1 - plain_entropy(v / v.sum()) / math.log(2)
    )
    isolated = np.zeros((6, 6))
    isolated[:5, :5] = w
    np.testing.assert_allclose(ref.structural_entropy(isolated), h1)
    with pytest.raises(ValueError, match="symmetric"):
        ref.structural_entropy(np.triu(np.ones((3, 3))))
    with pytest.raises(ValueError, match="vol = 0"):
        ref.structural_entropy(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="labels"):
        ref.structural_entropy(w, np.zeros(4, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# §13 pds_entropy, §14 history_consistency
# ---------------------------------------------------------------------------------------------


def test_pds_entropy_values_and_errors():
    assert ref.pds_entropy(np.array([3, 3, 3, 3])) == 1.0
    assert ref.pds_entropy(np.array([0, 5, 0])) == 0.0
    rng = np.random.default_rng(19)
    c = rng.integers(0, 9, size=(4, 6))
    h = ref.pds_entropy(c)
    np.testing.assert_allclose(ref.pds_entropy(c[:, ::-1]), h)
    np.testing.assert_allclose(
        ref.pds_entropy(c, n_categories=9), ref.pds_entropy(np.pad(c, [(0, 0), (0, 3)]))
    )
    assert np.isnan(ref.pds_entropy(np.zeros(3)))
    with pytest.raises(ValueError, match="counts"):
        ref.pds_entropy(np.array([1, -1]))
    with pytest.raises(ValueError, match="n_categories"):
        ref.pds_entropy(np.array([1]))
    with pytest.raises(ValueError, match="n_categories"):
        ref.pds_entropy(c, n_categories=3)


def test_history_consistency_properties():
    rng = np.random.default_rng(20)
    p = softmax(rng.normal(size=(7, 11)))
    same = np.stack([p] * 4)
    h_bar, mean_h, mi = ref.history_consistency(same)
    np.testing.assert_allclose(mi, 0.0, atol=1e-12)
    np.testing.assert_allclose(h_bar, mean_h, rtol=1e-12)
    w_steps = 4
    disjoint = np.eye(w_steps)[:, None, :]  # (W, 1, V=W)
    h_bar, mean_h, mi = ref.history_consistency(disjoint)
    np.testing.assert_allclose([h_bar[0], mi[0]], math.log(w_steps))
    assert mean_h[0] == 0.0
    x = softmax(rng.normal(size=(5, 6, 9)) * 3)
    weights = rng.uniform(0.1, 1.0, size=5)
    h_bar, mean_h, mi = ref.history_consistency(x, weights=weights)
    omega = weights / weights.sum()
    assert np.all(mi <= plain_entropy(omega) + 1e-12)
    p_bar = (omega[:, None, None] * x).sum(0)
    np.testing.assert_allclose(h_bar, [plain_entropy(r) for r in p_bar], rtol=1e-12)
    single = ref.history_consistency(x[:1])
    assert np.all(single[2] == 0.0)
    z = rng.normal(size=(3, 4, 5))
    np.testing.assert_allclose(
        ref.history_consistency(z, from_logits=True), ref.history_consistency(softmax(z))
    )
    mask = np.ones((3, 4), dtype=bool)
    mask[0, 1] = False
    masked = ref.history_consistency(softmax(z), mask=mask)
    kept = ref.history_consistency(softmax(z)[1:, 1:2])
    np.testing.assert_allclose([r[1] for r in masked], [r[0] for r in kept])
    with pytest.raises(ValueError, match="weights"):
        ref.history_consistency(x, weights=np.zeros(5))
    with pytest.raises(ValueError, match="x"):
        ref.history_consistency(-x)
