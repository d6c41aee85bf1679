"""The float64 geometry oracle (``matrix.md`` §3) against the spec's properties: uniform spectra,
rank one, isotropic Gaussians, known dimensions, invariances, and the documented errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from entcore.reference import geometry as geo


def rotation(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------------------------
# §3.1 spectrum_entropy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.0 + 1e-8, 2.0, 3.5, math.inf])
def test_spectrum_entropy_uniform_is_log_r_for_every_alpha(alpha):
    lam = np.array([2.0, 2.0, 2.0, 0.0, 0.0])
    np.testing.assert_allclose(geo.spectrum_entropy(lam, alpha=alpha), math.log(3), rtol=1e-12)
    np.testing.assert_allclose(
        geo.spectrum_entropy(lam, alpha=alpha, normalize=True), math.log(3) / math.log(5)
    )
    np.testing.assert_allclose(geo.spectrum_entropy(lam, alpha=alpha, base=2), math.log2(3))


def test_spectrum_entropy_is_non_increasing_in_alpha_and_checks_input():
    rng = np.random.default_rng(60)
    lam = rng.exponential(size=(4, 12))
    alphas = [0.0, 0.3, 1.0, 1.7, 2.0, 5.0, math.inf]
    values = np.stack([geo.spectrum_entropy(lam, alpha=a) for a in alphas])
    assert np.all(np.diff(values, axis=0) <= 1e-12)
    p = lam / lam.sum(-1, keepdims=True)
    np.testing.assert_allclose(values[2], -(p * np.log(p)).sum(-1), rtol=1e-12)
    tiny = np.array([1.0, 1.0, -1e-15])
    np.testing.assert_allclose(geo.spectrum_entropy(tiny), math.log(2))
    with pytest.raises(ValueError, match="lam"):
        geo.spectrum_entropy(np.array([1.0, -0.5]))
    with pytest.raises(ValueError, match="lam"):
        geo.spectrum_entropy(np.zeros(3))
    with pytest.raises(ValueError, match="alpha"):
        geo.spectrum_entropy(lam, alpha=-1.0)


# ---------------------------------------------------------------------------------------------
# §3.2 von Neumann entropy, §3.3 matrix Rényi entropy
# ---------------------------------------------------------------------------------------------


def test_von_neumann_rank_one_isotropic_and_routes():
    rng = np.random.default_rng(61)
    v = rng.normal(size=8)
    rank_one = rng.normal(size=(30, 1)) * v + 3.0
    assert abs(geo.von_neumann_entropy(rank_one)) < 1e-12
    d = 6
    axes = np.concatenate([np.eye(d), -np.eye(d)])  # Σ ∝ I
    np.testing.assert_allclose(geo.von_neumann_entropy(axes), math.log(d), rtol=1e-12)
    np.testing.assert_allclose(geo.von_neumann_entropy(axes, normalize="log_d"), 1.0)
    x = rng.normal(size=(5, 9))  # n < d: the Gram route is the automatic one
    for center in (True, False):
        cov = geo.von_neumann_entropy(x, center=center, method="covariance")
        gram = geo.von_neumann_entropy(x, center=center, method="gram")
        np.testing.assert_allclose(cov, gram, rtol=1e-10)
        np.testing.assert_allclose(geo.von_neumann_entropy(x, center=center), gram)
    rank = geo.von_neumann_entropy(x, normalize="log_rank")
    np.testing.assert_allclose(rank, geo.von_neumann_entropy(x) / math.log(4))
    assert geo.von_neumann_entropy(rng.normal(size=(1, 4))) == 0.0


def test_von_neumann_invariances_mask_and_eps():
    rng = np.random.default_rng(62)
    x = rng.normal(size=(40, 7)) @ rng.normal(size=(7, 7))
    h = geo.von_neumann_entropy(x)
    np.testing.assert_allclose(geo.von_neumann_entropy(x[rng.permutation(40)]), h, rtol=1e-10)
    np.testing.assert_allclose(geo.von_neumann_entropy(-3.0 * x + 5.0), h, rtol=1e-10)
    np.testing.assert_allclose(geo.von_neumann_entropy(x @ rotation(rng, 7)), h, rtol=1e-10)
    mask = rng.random(40) > 0.3
    np.testing.assert_allclose(
        geo.von_neumann_entropy(x, mask=mask), geo.von_neumann_entropy(x[mask])
    )
    batch = geo.von_neumann_entropy(np.stack([x, 2 * x[::-1]]))
    np.testing.assert_allclose(batch, [h, h], rtol=1e-10)
    lam = np.linalg.eigvalsh(np.cov(x.T))
    p = lam / lam.sum() + 1e-3
    np.testing.assert_allclose(
        geo.von_neumann_entropy(x, eps=1e-3), -(p * np.log(p)).sum(), rtol=1e-10
    )
    with pytest.raises(ValueError, match="no valid row"):
        geo.von_neumann_entropy(x, mask=np.zeros(40, dtype=bool))
    with pytest.raises(ValueError, match="x"):
        geo.von_neumann_entropy(np.full((3, 2), np.nan))


def test_matrix_renyi_known_values_fast_path_and_linear_kernel():
    n = 7
    for alpha in (0.5, 1.0, 2.0, 3.0):
        np.testing.assert_allclose(
            geo.matrix_renyi_entropy(np.eye(n), alpha=alpha, kernel="precomputed"), math.log(n)
        )
        assert (
            abs(geo.matrix_renyi_entropy(np.ones((n, n)), alpha=alpha, kernel="precomputed"))
            < 1e-12
        )
    rng = np.random.default_rng(63)
    x = rng.normal(size=(12, 5))
    k = geo.matrix_renyi_entropy(x, kernel="gaussian", sigma=2.0)
    gram = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 8.0)
    lam = np.linalg.eigvalsh(gram / np.trace(gram))
    np.testing.assert_allclose(
        k, geo.spectrum_entropy(np.clip(lam, 0, None), alpha=2.0), rtol=1e-10
    )
    np.testing.assert_allclose(
        geo.matrix_renyi_entropy(x, alpha=1.0, kernel="linear", center=True),
        geo.von_neumann_entropy(x),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        geo.matrix_renyi_entropy(x, kernel="gaussian", sigma=2.0, normalize=True),
        k / math.log(12),
    )
    with pytest.raises(ValueError, match="sigma"):
        geo.matrix_renyi_entropy(x)
    with pytest.raises(ValueError, match="symmetric"):
        geo.matrix_renyi_entropy(np.triu(np.ones((3, 3))), kernel="precomputed")


@pytest.mark.parametrize("alpha", [1.0, 2.0, 1.5])
def test_matrix_mutual_information_identities(alpha):
    rng = np.random.default_rng(64)
    x = rng.normal(size=(9, 3))
    ka = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 4.0)  # unit diagonal
    s_a = geo.matrix_renyi_entropy(ka, alpha=alpha, kernel="precomputed")
    ones = np.ones((9, 9))
    assert abs(geo.matrix_mutual_information(ka, ones, alpha=alpha)) < 1e-10
    np.testing.assert_allclose(geo.matrix_mutual_information(ka, np.eye(9), alpha=alpha), s_a)
    y = rng.normal(size=(9, 2))
    kb = np.exp(-((y[:, None] - y[None]) ** 2).sum(-1) / 4.0)
    joint = geo.matrix_joint_entropy(ka, kb, alpha=alpha)
    assert (
        joint >= max(s_a, geo.matrix_renyi_entropy(kb, alpha=alpha, kernel="precomputed")) - 1e-10
    )


# ---------------------------------------------------------------------------------------------
# §3.4 rankme, §3.5 alpha-ReQ, §3.6 effective rank
# ---------------------------------------------------------------------------------------------


def test_rankme_equal_singular_values_and_eps_excess():
    rng = np.random.default_rng(65)
    k, d = 5, 9
    q = rotation(rng, d)[:, :k]  # k orthonormal columns: k equal singular values
    z = rotation(rng, 20)[:, :k] @ q.T * 3.0
    np.testing.assert_allclose(geo.rankme(z, eps=0.0), k, rtol=1e-10)
    np.testing.assert_allclose(
        geo.rankme(z, spectrum="covariance", center=False, eps=0.0), k, rtol=1e-10
    )
    eps = 1e-7
    r = min(z.shape)
    excess = math.log(geo.rankme(z)) - math.log(k)
    np.testing.assert_allclose(excess, (r - k) * eps * abs(math.log(eps)), rtol=0.05)


def test_rankme_isotropic_gaussian_and_invariances():
    rng = np.random.default_rng(66)
    z = rng.normal(size=(20000, 64))
    assert geo.rankme(z) > 63.5
    assert geo.rankme(z, spectrum="covariance") > 63.5
    small = rng.normal(size=(50, 8)) @ rng.normal(size=(8, 8))
    for spectrum in ("singular", "covariance"):
        r = geo.rankme(small, spectrum=spectrum)
        np.testing.assert_allclose(geo.rankme(small[::-1], spectrum=spectrum), r, rtol=1e-10)
        np.testing.assert_allclose(geo.rankme(4.0 * small, spectrum=spectrum), r, rtol=1e-10)
        np.testing.assert_allclose(
            geo.rankme(small @ rotation(rng, 8), spectrum=spectrum), r, rtol=1e-10
        )
    assert geo.rankme(small) != geo.rankme(small, spectrum="covariance")
    cov_top = geo.rankme(small, spectrum="covariance", max_components=3, eps=0.0)
    lam = np.sort(np.linalg.eigvalsh(np.cov(small.T)))[::-1]
    p = lam[:3] / lam.sum()
    np.testing.assert_allclose(cov_top, math.exp(-(p * np.log(p)).sum()), rtol=1e-10)


@pytest.mark.parametrize("fit_range", [(11, 100), (0, 10), (3, 50)])
@pytest.mark.parametrize("a", [0.5, 1.0, 2.3])
def test_powerlaw_alpha_exact_power_law(fit_range, a):
    lam = 7.5 * np.arange(1, 151, dtype=np.float64) ** (-a)
    fit = geo.powerlaw_alpha(lam[::-1], fit_range=fit_range)  # any order: sorted first
    np.testing.assert_allclose(fit.alpha, a, rtol=1e-10)
    np.testing.assert_allclose(fit.log_c, math.log(7.5), rtol=1e-10)
    np.testing.assert_allclose(fit.r2, 1.0, rtol=1e-12)


def test_alpha_req_isotropic_gaussian_scale_and_errors():
    rng = np.random.default_rng(67)
    z = rng.normal(size=(50000, 256))
    assert abs(geo.alpha_req(z).alpha) < 0.1
    decaying = rng.normal(size=(400, 120)) * np.arange(1, 121) ** -0.8
    fit = geo.alpha_req(decaying)
    np.testing.assert_allclose(geo.alpha_req(3.0 * decaying).alpha, fit.alpha, rtol=1e-10)
    assert 1.0 < fit.alpha < 2.2 and 0.9 < fit.r2 <= 1.0
    with pytest.raises(ValueError, match="fit range needs"):
        geo.alpha_req(rng.normal(size=(200, 50)))
    with pytest.raises(ValueError, match="<= 0"):
        geo.powerlaw_alpha(np.concatenate([np.ones(50), np.zeros(60)]))
    with pytest.raises(ValueError, match="2 points"):
        geo.powerlaw_alpha(np.ones(20), fit_range=(4, 5))


def test_effective_rank_orderings_equal_spectra_and_threshold():
    rng = np.random.default_rng(68)
    x = rng.normal(size=(60, 10)) @ rng.normal(size=(10, 10))
    values = {k: geo.effective_rank(x, kind=k) for k in ("stable", "participation", "entropy")}
    rank = np.linalg.matrix_rank(x - x.mean(0))
    assert values["stable"] <= values["participation"] <= values["entropy"] <= rank
    r = 6
    lam = np.concatenate([np.full(r, 2.5), np.zeros(4)])
    for kind in ("stable", "participation", "entropy", "threshold"):
        np.testing.assert_allclose(geo.effective_rank(lam, kind=kind, spectrum="precomputed"), r)
    previous = 0.0
    for t in np.linspace(0.05, 1.0, 20):
        k = geo.effective_rank(x, kind="threshold", threshold=t)
        assert k >= previous
        previous = k
    sv = geo.effective_rank(x, spectrum="singular", center=False)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum()
    np.testing.assert_allclose(sv, math.exp(-(p * np.log(p)).sum()), rtol=1e-10)
    erank = geo.effective_rank(x, row_normalize=True)
    xc = x - x.mean(0)
    zc = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    lam2 = np.linalg.eigvalsh(zc.T @ zc)
    p2 = lam2 / lam2.sum()
    np.testing.assert_allclose(erank, math.exp(-(p2 * np.log(p2)).sum()), rtol=1e-10)
    with pytest.raises(ValueError, match="threshold"):
        geo.effective_rank(x, kind="threshold", threshold=1.5)


# ---------------------------------------------------------------------------------------------
# §3.7 DSE / DSMI
# ---------------------------------------------------------------------------------------------


def test_dse_bounds_limits_t_and_invariances():
    rng = np.random.default_rng(69)
    z = rng.normal(size=(60, 5))
    n = z.shape[0]
    h = geo.diffusion_spectral_entropy(z, sigma=1.0)
    assert 0.0 <= h <= math.log2(n)
    np.testing.assert_allclose(geo.diffusion_spectral_entropy(z, sigma=1e-6), math.log2(n))
    assert geo.diffusion_spectral_entropy(z, sigma=1e6) < 1e-6
    previous = math.inf
    for t in (1, 2, 3, 5, 10):
        value = geo.diffusion_spectral_entropy(z, sigma=1.0, t=t)
        assert value <= previous + 1e-12
        previous = value
    moved = z[rng.permutation(n)] @ rotation(rng, 5) + 7.0
    np.testing.assert_allclose(geo.diffusion_spectral_entropy(moved, sigma=1.0), h, rtol=1e-8)
    sub = geo.diffusion_spectral_entropy(z, sigma=1.0, max_n=30, seed=4)
    keep = np.sort(np.random.Generator(np.random.PCG64(4)).choice(n, 30, replace=False))
    np.testing.assert_allclose(sub, geo.diffusion_spectral_entropy(z[keep], sigma=1.0))


def test_dsmi_one_class_is_zero_and_two_clusters_give_one_bit():
    rng = np.random.default_rng(70)
    z = rng.normal(size=(40, 3))
    assert (
        geo.diffusion_spectral_mutual_information(z, np.zeros(40, dtype=np.int64), sigma=1.0) == 0.0
    )
    centres = np.array([[0.0, 0.0, 0.0], [1000.0, 0.0, 0.0]])
    labels = np.repeat([0, 1], 30)
    points = centres[labels] + rng.normal(scale=0.01, size=(60, 3))
    dsmi = geo.diffusion_spectral_mutual_information(points, labels, sigma=10.0)
    assert abs(dsmi - 1.0) < 0.02
    with pytest.raises(ValueError, match="labels"):
        geo.diffusion_spectral_mutual_information(points, labels[:10])


# ---------------------------------------------------------------------------------------------
# §3.8 intrinsic dimension
# ---------------------------------------------------------------------------------------------


def embedded_cube(rng, n, d, ambient=20):
    u = rng.uniform(size=(n, d))
    return np.pad(u, [(0, 0), (0, ambient - d)]) @ rotation(rng, ambient)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_twonn_and_mle_recover_the_dimension(d):
    rng = np.random.default_rng(71 + d)
    x = embedded_cube(rng, 2000, d)
    for method in ("linear", "mle"):
        assert abs(geo.twonn_dimension(x, method=method) - d) / d < 0.15
    for aggregate in ("harmonic", "mean", "median"):
        assert abs(geo.mle_dimension(x, aggregate=aggregate) - d) / d < 0.15


@pytest.mark.parametrize("d", [2, 3, 5])
def test_phd_recovers_the_dimension(d):
    rng = np.random.default_rng(80 + d)
    x = embedded_cube(rng, 500, d)
    assert abs(geo.phd_dimension(x) - d) / d < 0.12


def test_intrinsic_dimension_invariances_duplicates_and_errors():
    rng = np.random.default_rng(90)
    x = embedded_cube(rng, 300, 3)
    moved = 2.5 * x @ rotation(rng, 20) + 4.0
    perm = rng.permutation(300)
    for f in (geo.twonn_dimension, geo.mle_dimension):
        v = f(x)
        np.testing.assert_allclose(f(moved), v, rtol=1e-8)
        np.testing.assert_allclose(f(x[perm]), v, rtol=1e-12)
        np.testing.assert_allclose(f(np.concatenate([x, x[:40]])), v, rtol=1e-12)
    phd = geo.phd_dimension(x, seed=3)
    np.testing.assert_allclose(geo.phd_dimension(moved, seed=3), phd, rtol=1e-8)
    assert geo.phd_dimension(x, seed=3) == phd
    assert geo.phd_sizes(300, 40, 7) == [40, 77, 114, 151, 188, 225, 262]
    with pytest.raises(ValueError, match="PHD sizes"):
        geo.phd_dimension(x[:45])
    with pytest.raises(ValueError, match="k"):
        geo.mle_dimension(x[:10], k=20)
    with pytest.raises(ValueError, match="method"):
        geo.twonn_dimension(x, method="ols")
