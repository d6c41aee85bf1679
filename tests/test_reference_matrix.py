"""The float64 matrix-entropy oracle against the properties of ``matrix.md`` §1 (the tests listed
under §1.2, §1.3 and §1.4), and its errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entcore.reference import matrix as ref

seeds = st.integers(0, 2**32 - 1)


def gaussian(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def signed_basis(r, d, copies=1):
    """Rows ``±e_1 … ±e_r`` in equal numbers: ``Â = I_r / r``."""
    e = np.eye(d)[:r]
    return np.concatenate([e, -e] * copies)


def orthogonal(seed, d):
    q, _ = np.linalg.qr(gaussian(seed, (d, d)))
    return q


# ---------------------------------------------------------------------------------------------
# Known spectra (matrix.md §1.2 Tests)
# ---------------------------------------------------------------------------------------------


@given(seeds, st.integers(2, 60), st.integers(2, 40))
@settings(max_examples=25)
def test_rank_one_after_centring_is_zero(seed, n, d):
    rng = np.random.default_rng(seed)
    a, v, b = rng.standard_normal(n), rng.standard_normal(d), rng.standard_normal(d)
    x = a[:, None] * v + b
    assert 0.0 <= ref.matrix_entropy(x) <= 1e-7
    assert abs(ref.matrix_entropy(x, eps=0.0)) <= 1e-12
    assert abs(ref.matrix_renyi2(x)) <= 1e-12
    spectrum = ref.matrix_spectrum(x)
    assert spectrum[0] == pytest.approx(1.0, abs=1e-12)


def test_rank_one_along_an_axis_is_exactly_zero_without_eps():
    x = np.zeros((10, 4))  # n > d: the covariance route, where Â = e_3 e_3ᵀ exactly
    x[:, 2] = [1.0, -2.0, 3.0, 0.5, -1.5, 4.0, 0.25, -3.0, 2.0, 1.0]
    x += 7.0
    assert ref.matrix_entropy(x, eps=0.0) == 0.0
    assert ref.matrix_entropy(x, eps=0.0, k=None) == 0.0


@pytest.mark.parametrize("r", [2, 3, 8, 16])
def test_signed_basis_vectors_give_the_closed_forms(r):
    d = 16
    x = signed_basis(r, d, copies=3)
    ln_r, ln_d = math.log(r), math.log(d)
    assert ref.matrix_entropy(x, k=None) == pytest.approx(ln_r / ln_d, abs=1e-7)
    assert ref.matrix_entropy(x, k=None, eps=0.0) == pytest.approx(ln_r / ln_d, abs=1e-14)
    for k in range(1, r):
        partial = ref.matrix_entropy(x, k=k, eps=0.0)
        assert partial == pytest.approx(k * ln_r / (r * ln_d), abs=1e-14)
    for k in range(2, r + 1):
        renorm = ref.matrix_entropy(x, k=k, truncation="renormalized", normalize="log_k", eps=0.0)
        assert renorm == pytest.approx(1.0, abs=1e-14)
    assert ref.matrix_renyi2(x) == pytest.approx(ln_r / ln_d, abs=1e-14)
    np.testing.assert_allclose(ref.matrix_spectrum(x)[:r], 1.0 / r, atol=1e-15)
    np.testing.assert_allclose(ref.matrix_spectrum(x)[r:], 0.0, atol=1e-15)


def test_full_rank_signed_basis_partial_sum_is_k_over_d():
    d, k = 16, 5
    x = signed_basis(d, d)
    assert ref.matrix_entropy(x, k=k, eps=0.0) == pytest.approx(k / d, abs=1e-14)


def test_isotropic_gaussian_matches_the_spec_ranges():
    x = gaussian(0, (4096, 128))
    full = ref.matrix_entropy(x, k=None)
    partial = ref.matrix_entropy(x)
    renorm = ref.matrix_entropy(x, truncation="renormalized", normalize="log_k")
    assert full >= 0.99
    assert 0.25 < partial < 0.32
    assert renorm >= 0.999
    assert ref.matrix_renyi2(x) <= full


@given(seeds, st.integers(2, 50), st.integers(1, 24), st.integers(1, 40), st.booleans())
@settings(max_examples=40)
def test_partial_is_at_most_full_and_both_in_unit_interval(seed, n, d, k, center):
    x = gaussian(seed, (n, d)) * np.random.default_rng(seed).uniform(0.1, 5.0, d)
    partial = ref.matrix_entropy(x, k=k, center=center)
    full = ref.matrix_entropy(x, k=None, center=center)
    renyi2 = ref.matrix_renyi2(x, center=center)
    assert -1e-7 <= partial <= full + 1e-7
    assert full <= 1.0 + 1e-7
    assert -1e-12 <= renyi2 <= ref.matrix_entropy(x, k=None, eps=0.0, center=center) + 1e-12


# ---------------------------------------------------------------------------------------------
# Invariances and routes
# ---------------------------------------------------------------------------------------------


@given(seeds, st.integers(3, 40), st.integers(2, 12), st.booleans())
@settings(max_examples=30)
def test_invariant_to_row_order_scale_translation_and_rotation(seed, n, d, row_normalize):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, d)
    c = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.01, 100.0))
    variants = [
        x[rng.permutation(n)],
        c * x,
        x + rng.standard_normal(d) * 10,
        x @ orthogonal(seed, d),
    ]
    kw = dict(row_normalize=row_normalize, k=3)
    base = ref.matrix_entropy(x, **kw)
    base_spectrum = ref.matrix_spectrum(x, row_normalize=row_normalize)
    base_renyi2 = ref.matrix_renyi2(x, row_normalize=row_normalize)
    for y in variants:
        assert ref.matrix_entropy(y, **kw) == pytest.approx(base, abs=1e-10)
        np.testing.assert_allclose(
            ref.matrix_spectrum(y, row_normalize=row_normalize), base_spectrum, atol=1e-10
        )
        assert ref.matrix_renyi2(y, row_normalize=row_normalize) == pytest.approx(
            base_renyi2, abs=1e-10
        )


@given(seeds, st.integers(1, 30), st.integers(1, 20), st.booleans(), st.booleans())
@settings(max_examples=40)
def test_gram_and_covariance_routes_agree(seed, n, d, center, row_normalize):
    x = gaussian(seed, (2, n, d))
    kw = dict(center=center, row_normalize=row_normalize)
    gram = ref.matrix_spectrum(x, method="gram", **kw)
    cov = ref.matrix_spectrum(x, method="covariance", **kw)
    auto = ref.matrix_spectrum(x, **kw)
    np.testing.assert_allclose(gram, cov, atol=1e-10)
    np.testing.assert_allclose(auto, cov, atol=1e-10)
    assert np.all(np.diff(cov, axis=-1) <= 0) and np.all(cov >= 0)


@given(seeds, st.integers(2, 40), st.integers(1, 16))
@settings(max_examples=25)
def test_spectrum_equals_the_singular_values_of_a_hat(seed, n, d):
    x = gaussian(seed, (n, d))
    z = x - x.mean(axis=0)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    a = z.T @ z / n
    a_hat = a / np.trace(a)
    np.testing.assert_allclose(
        ref.matrix_spectrum(x, method="covariance"),
        np.linalg.svd(a_hat, compute_uv=False),
        atol=1e-12,
    )
    assert ref.matrix_spectrum(x).sum() == pytest.approx(1.0, abs=1e-12)


@given(seeds, st.integers(4, 40), st.integers(1, 12))
@settings(max_examples=30)
def test_masked_rows_equal_deleted_rows(seed, n, d):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    keep = rng.random(n) < 0.6
    keep[0] = True
    x_masked = x.copy()
    x_masked[~keep] = rng.standard_normal(((~keep).sum(), d)) * 1e3
    kw = dict(k=4, normalize="log_rank")
    assert ref.matrix_entropy(x_masked, mask=keep, **kw) == pytest.approx(
        ref.matrix_entropy(x[keep], **kw), abs=1e-12
    )
    np.testing.assert_allclose(
        ref.matrix_spectrum(x_masked, mask=keep), ref.matrix_spectrum(x[keep]), atol=1e-12
    )
    # NaN or ±inf in a masked row is never read.
    x_masked[~keep] = np.nan
    assert ref.matrix_renyi2(x_masked, mask=keep) == pytest.approx(
        ref.matrix_renyi2(x[keep]), abs=1e-12
    )


def test_a_row_equal_to_the_mean_is_dropped_and_does_not_count():
    x = gaussian(3, (9, 6)) + 5.0
    with_mean = np.concatenate([x, x.mean(axis=0, keepdims=True)])
    for normalize in ("log_d", "log_rank"):
        assert ref.matrix_entropy(with_mean, normalize=normalize) == pytest.approx(
            ref.matrix_entropy(x, normalize=normalize), abs=1e-12
        )


def test_zero_rows_are_dropped_without_centring():
    x = gaussian(4, (5, 8))
    padded = np.concatenate([x, np.zeros((3, 8))])
    kw = dict(center=False, normalize="log_rank", k=None)
    assert ref.matrix_entropy(padded, **kw) == pytest.approx(ref.matrix_entropy(x, **kw))


def test_no_row_left_gives_zero_and_a_zero_spectrum():
    x = np.tile(gaussian(5, (1, 7)), (4, 1))  # every row equals the mean
    assert ref.matrix_entropy(x) == 0.0
    assert ref.matrix_renyi2(x) == 0.0
    np.testing.assert_array_equal(ref.matrix_spectrum(x), np.zeros(7))
    assert ref.matrix_entropy(np.zeros((3, 4)), center=False) == 0.0
    assert ref.matrix_entropy(gaussian(6, (1, 5))) == 0.0  # n = 1 with centring


def test_zero_divisors_give_zero():
    x = gaussian(7, (20, 6))
    assert ref.matrix_entropy(x[:, :1]) == 0.0  # d = 1
    assert ref.matrix_entropy(x, k=1, normalize="log_k") == 0.0
    assert ref.matrix_entropy(x[:2], normalize="log_rank") == 0.0  # r = min(n - 1, d) = 1
    assert ref.matrix_renyi2(x[:2], normalize="log_rank") == 0.0


def test_divisors_and_base():
    x = gaussian(8, (30, 10))
    nats = ref.matrix_entropy(x, k=None, normalize=None)
    assert ref.matrix_entropy(x, k=None) == pytest.approx(nats / math.log(10))
    assert ref.matrix_entropy(x, k=None, normalize=None, base=2.0) == pytest.approx(
        nats / math.log(2)
    )
    assert ref.matrix_entropy(x[:5], k=None, normalize="log_rank") == pytest.approx(
        ref.matrix_entropy(x[:5], k=None, normalize=None) / math.log(4)
    )
    assert ref.matrix_entropy(x[:5], k=None, normalize="log_rank", center=False) == pytest.approx(
        ref.matrix_entropy(x[:5], k=None, normalize=None, center=False) / math.log(5)
    )
    # k >= d is the full spectrum.
    assert ref.matrix_entropy(x, k=10) == ref.matrix_entropy(x, k=None)
    assert ref.matrix_entropy(x, k=50) == ref.matrix_entropy(x, k=None)


@given(seeds, st.integers(2, 30), st.integers(1, 16))
@settings(max_examples=30)
def test_renyi2_is_minus_log_of_the_squared_spectrum(seed, n, d):
    x = gaussian(seed, (n, d))
    spectrum = ref.matrix_spectrum(x)
    expected = -math.log(np.sum(spectrum**2)) / (math.log(d) if d > 1 else 1.0)
    if d == 1:
        expected = 0.0
    assert ref.matrix_renyi2(x) == pytest.approx(expected, abs=1e-10)
    assert ref.matrix_renyi2(x, normalize=None) == pytest.approx(
        -math.log(np.sum(spectrum**2)), abs=1e-10
    )


# ---------------------------------------------------------------------------------------------
# UNComp parity (matrix.md §1.2 Tests, "Parity")
# ---------------------------------------------------------------------------------------------


def uncomp_transcription(x, k=32, eps=1e-10):
    """UNComp's steps written independently: centre, row-normalise, covariance over tokens,
    divide by the trace, add ``eps·I``, singular values, ``nansum`` of the top ``k`` terms,
    divided by ``ln d`` (``cal_cov_4`` + ``cal_entropy_no_group_svd``)."""
    n, d = x.shape
    centred = x - x.mean(axis=0)
    z = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    cov = z.T @ z / n
    cov = cov / np.trace(cov) + eps * np.eye(d)
    s = np.linalg.svd(cov, compute_uv=False)[:k]
    return np.nansum(-s * np.log(s)) / math.log(d)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_an_uncomp_transcription(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 128)) @ rng.standard_normal((128, 128)) * 0.3
    assert ref.matrix_entropy(x) == pytest.approx(uncomp_transcription(x), abs=1e-7)


# ---------------------------------------------------------------------------------------------
# Heads, GQA and group_heads (matrix.md §1.2 Heads and GQA, §1.4)
# ---------------------------------------------------------------------------------------------


@given(seeds, st.sampled_from([1, 2, 3]), st.integers(2, 20))
@settings(max_examples=20)
def test_grouped_reductions_follow_the_head_mapping(seed, group, n):
    x = gaussian(seed, (2, 3 * group, n, 6))
    per_head = ref.matrix_entropy(x)
    for reduce in ("mean", "max", "sum"):
        grouped = ref.matrix_entropy(x, group_size=group, group_reduce=reduce)
        assert grouped.shape == (2, 3)
        np.testing.assert_allclose(
            grouped, ref.group_heads(per_head, group_size=group, reduce=reduce), atol=1e-14
        )
        for kv in range(3):
            heads = per_head[:, kv * group : (kv + 1) * group]
            np.testing.assert_allclose(
                grouped[:, kv], {"mean": np.mean, "max": np.max, "sum": np.sum}[reduce](heads, 1)
            )


def test_pooled_with_one_head_per_group_is_ungrouped():
    x = gaussian(9, (2, 4, 30, 8))
    np.testing.assert_allclose(
        ref.matrix_entropy(x, group_size=1, group_reduce="pooled"), ref.matrix_entropy(x)
    )
    np.testing.assert_allclose(
        ref.matrix_renyi2(x, group_size=1, group_reduce="pooled"), ref.matrix_renyi2(x)
    )


def test_pooled_averages_the_normalised_matrices():
    x = gaussian(10, (4, 25, 6))
    pooled = ref.matrix_entropy(x, group_size=2, group_reduce="pooled", k=None, eps=0.0)

    def a_hat(rows):
        z = rows - rows.mean(axis=0)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        a = z.T @ z
        return a / np.trace(a)

    for g in range(2):
        mean = (a_hat(x[2 * g]) + a_hat(x[2 * g + 1])) / 2
        lam = np.clip(np.linalg.eigvalsh(mean), 0, None)
        lam = lam[lam > 0]
        assert pooled[g] == pytest.approx(-np.sum(lam * np.log(lam)) / math.log(6), abs=1e-12)
    # Identical heads pool to the single head.
    same = np.stack([x[0], x[0]])
    assert ref.matrix_entropy(same, group_size=2, group_reduce="pooled")[0] == pytest.approx(
        ref.matrix_entropy(x[0]), abs=1e-12
    )
    # Pooled Gram route (few rows) equals the covariance route.
    few = x[:, :3]
    np.testing.assert_allclose(
        ref.matrix_entropy(few, group_size=2, group_reduce="pooled", method="gram"),
        ref.matrix_entropy(few, group_size=2, group_reduce="pooled", method="covariance"),
        atol=1e-10,
    )


def test_group_heads_reductions_and_axis():
    values = np.arange(24.0).reshape(2, 6, 2)
    out = ref.group_heads(values, group_size=3, reduce="sum", axis=1)
    np.testing.assert_array_equal(out, values.reshape(2, 2, 3, 2).sum(axis=2))
    np.testing.assert_array_equal(
        ref.group_heads([1.0, 5.0, 2.0, 0.0], group_size=2, reduce="min"), [1.0, 0.0]
    )
    np.testing.assert_array_equal(
        ref.group_heads([1.0, 5.0, 2.0, 0.0], group_size=2, reduce="max"), [5.0, 2.0]
    )
    assert ref.group_heads([[1.0, np.nan]], group_size=2).shape == (1, 1)
    assert np.isnan(ref.group_heads([[1.0, np.nan]], group_size=2)[0, 0])
    with pytest.raises(ValueError, match="group_size"):
        ref.group_heads(np.zeros(5), group_size=2)
    with pytest.raises(ValueError, match="reduce"):
        ref.group_heads(np.zeros(4), group_size=2, reduce="median")
    with pytest.raises(ValueError, match="axis"):
        ref.group_heads(np.zeros(4), group_size=2, axis=1)
    with pytest.raises(ValueError, match="group_size"):
        ref.group_heads(np.zeros(4), group_size=0)


# ---------------------------------------------------------------------------------------------
# Errors and NaN policy (matrix.md §0, §1.2 Edge cases; conventions.md)
# ---------------------------------------------------------------------------------------------


def test_nan_policy_is_per_problem():
    x = gaussian(11, (3, 10, 4))
    x[1, 4, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ref.matrix_entropy(x)
    out = ref.matrix_entropy(x, nan_policy="propagate")
    assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2]]))
    np.testing.assert_allclose(out[[0, 2]], ref.matrix_entropy(x[[0, 2]]))
    with pytest.raises(ValueError, match="NaN"):
        ref.matrix_spectrum(x)
    with pytest.raises(ValueError, match="NaN"):
        ref.matrix_renyi2(x)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: ref.matrix_entropy(x, k=0), ValueError, "k"),
        (lambda x: ref.matrix_entropy(x, k=2.5), TypeError, "k"),
        (lambda x: ref.matrix_entropy(x, truncation="tail"), ValueError, "truncation"),
        (lambda x: ref.matrix_entropy(x, normalize="log_n"), ValueError, "normalize"),
        (lambda x: ref.matrix_renyi2(x, normalize="log_k"), ValueError, "normalize"),
        (lambda x: ref.matrix_entropy(x, eps=-1.0), ValueError, "eps"),
        (lambda x: ref.matrix_entropy(x, normalize=None, base=1.0), ValueError, "base"),
        (lambda x: ref.matrix_entropy(x, method="svd"), ValueError, "method"),
        (lambda x: ref.matrix_entropy(x, nan_policy="omit"), ValueError, "nan_policy"),
        (lambda x: ref.matrix_entropy(x, group_size=3), ValueError, "group_size"),
        (lambda x: ref.matrix_entropy(x, group_size=2, group_reduce="min"), ValueError, "group"),
        (lambda x: ref.matrix_entropy(x, center=1), TypeError, "center"),
        (lambda x: ref.matrix_spectrum(x, zero_tol=-1e-3), ValueError, "zero_tol"),
        (lambda x: ref.matrix_entropy(x, mask=np.zeros((2, 4, 5), bool)), ValueError, "mask"),
        (lambda x: ref.matrix_entropy(x, mask=np.ones(3, bool)), ValueError, "mask"),
        (lambda x: ref.matrix_entropy(x, mask=np.full(5, 2)), ValueError, "mask"),
        (lambda x: ref.matrix_entropy(x.astype(np.int64)), TypeError, "x"),
        (lambda x: ref.matrix_entropy(x[0, 0, 0]), ValueError, "x"),
        (lambda x: ref.matrix_entropy(x[..., :0]), ValueError, "x"),
        (lambda x: ref.matrix_entropy(x[:, :, :0]), ValueError, "n = 0"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, error, match):
    x = gaussian(12, (2, 4, 5, 3))
    with pytest.raises(error, match=match):
        call(x)


def test_infinities_raise_and_inputs_are_not_modified():
    x = gaussian(13, (4, 3))
    before = x.copy()
    ref.matrix_entropy(x, mask=np.array([1, 1, 0, 1]))
    np.testing.assert_array_equal(x, before)
    x[1, 1] = np.inf
    with pytest.raises(ValueError, match="inf"):
        ref.matrix_entropy(x, nan_policy="propagate")
    x[1, 1] = -np.inf
    with pytest.raises(ValueError, match="inf"):
        ref.matrix_spectrum(x)
    assert np.isfinite(ref.matrix_entropy(x, mask=np.array([1, 0, 1, 1])))
