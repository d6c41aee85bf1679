"""The NumPy and torch faces of ``matrix.md`` §3 against the float64 oracle, and torch gradients.

Every face computes in float64, so results agree to 1e-9 relative (different summation orders
and eigensolvers); the random draws of DSE/DSMI/PHD are the same on every face for one seed.
"""

from __future__ import annotations

from helpers import require_torch

torch = require_torch()

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402

import entcore  # noqa: E402
import entcore.torch as et  # noqa: E402
from entcore.reference import geometry as geo  # noqa: E402

TOL = {"rtol": 1e-9, "atol": 1e-12}


def t(x):
    return torch.as_tensor(np.asarray(x))


def close(got, want):
    if isinstance(got, tuple):
        for g, w in zip(got, want, strict=True):
            close(g, w)
        return
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_allclose(got.detach().numpy(), want, **TOL)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(100)
    x = rng.normal(size=(3, 40, 6)) @ rng.normal(size=(6, 6))
    wide = rng.normal(size=(2, 5, 9))
    return rng, x, wide


def test_numpy_face_is_the_reference():
    for name in geo.__all__:
        assert getattr(entcore, name) is getattr(geo, name)


def test_spectral_entropies(data):
    rng, x, wide = data
    lam = rng.exponential(size=(4, 10))
    for kw in ({}, {"alpha": 0.0}, {"alpha": 2.5}, {"alpha": math.inf}, {"normalize": True}):
        close(et.spectrum_entropy(t(lam), **kw), geo.spectrum_entropy(lam, **kw))
    mask = rng.random((3, 40)) > 0.2
    for kw in (
        {},
        {"eps": 1e-6},
        {"normalize": "log_d"},
        {"normalize": "log_rank", "center": False},
        {"mask": mask},
        {"method": "gram"},
    ):
        kw_t = {k: t(v) if k == "mask" else v for k, v in kw.items()}
        close(et.von_neumann_entropy(t(x), **kw_t), geo.von_neumann_entropy(x, **kw))
    close(et.von_neumann_entropy(t(wide)), geo.von_neumann_entropy(wide))
    for kw in (
        {"sigma": 3.0},
        {"alpha": 1.0, "kernel": "linear", "center": True},
        {"alpha": 0.5, "sigma": 2.0, "normalize": True},
    ):
        close(et.matrix_renyi_entropy(t(x), **kw), geo.matrix_renyi_entropy(x, **kw))
    ka = np.exp(-((x[0][:, None] - x[0][None]) ** 2).sum(-1) / 50.0)
    kb = np.exp(-((x[1][:, None] - x[1][None]) ** 2).sum(-1) / 50.0)
    for alpha in (1.0, 2.0):
        close(
            et.matrix_mutual_information(t(ka), t(kb), alpha=alpha),
            geo.matrix_mutual_information(ka, kb, alpha=alpha),
        )
        close(
            et.matrix_joint_entropy(t(ka), t(kb), alpha=alpha, base=2),
            geo.matrix_joint_entropy(ka, kb, alpha=alpha, base=2),
        )


def test_ranks_and_power_laws(data):
    rng, x, wide = data
    for kw in ({}, {"spectrum": "covariance"}, {"eps": 0.0, "max_components": 3}):
        close(et.rankme(t(x), **kw), geo.rankme(x, **kw))
        close(et.rankme(t(wide), **kw), geo.rankme(wide, **kw))
    for kind in ("entropy", "participation", "stable", "threshold"):
        for kw in ({}, {"spectrum": "singular", "center": False}, {"row_normalize": True}):
            close(et.effective_rank(t(x), kind=kind, **kw), geo.effective_rank(x, kind=kind, **kw))
    lam = rng.exponential(size=(2, 7))
    close(
        et.effective_rank(t(lam), spectrum="precomputed"),
        geo.effective_rank(lam, spectrum="precomputed"),
    )
    spec = np.arange(1, 200.0) ** -1.3 * np.exp(rng.normal(scale=0.05, size=199))
    close(et.powerlaw_alpha(t(spec)), geo.powerlaw_alpha(spec))
    z = rng.normal(size=(2, 150, 60)) * np.arange(1, 61) ** -0.7
    close(et.alpha_req(t(z), fit_range=(2, 40)), geo.alpha_req(z, fit_range=(2, 40)))


def test_diffusion_spectral_entropy_and_mutual_information():
    rng = np.random.default_rng(101)
    z = rng.normal(size=(50, 4))
    labels = rng.integers(0, 3, size=50)
    for kw in ({"sigma": 1.0}, {"sigma": 2.0, "t": 3, "base": math.e}, {"max_n": 30, "seed": 2}):
        close(et.diffusion_spectral_entropy(t(z), **kw), geo.diffusion_spectral_entropy(z, **kw))
    kw = {"sigma": 1.5, "n_repetitions": 3, "max_n": 40, "seed": 7}
    close(
        et.diffusion_spectral_mutual_information(t(z), t(labels), **kw),
        geo.diffusion_spectral_mutual_information(z, labels, **kw),
    )


def test_intrinsic_dimension_faces():
    rng = np.random.default_rng(102)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    x = np.pad(rng.uniform(size=(200, 3)), [(0, 0), (0, 7)]) @ q
    x = np.concatenate([x, x[:5]])  # duplicates are removed first
    for method in ("linear", "mle"):
        close(et.twonn_dimension(t(x), method=method), geo.twonn_dimension(x, method=method))
    for kw in ({}, {"unbiased": True, "k": 10}, {"aggregate": "mean"}, {"aggregate": "median"}):
        close(et.mle_dimension(t(x), **kw), geo.mle_dimension(x, **kw))
    kw = {"n_min": 20, "n_sizes": 5, "n_subsamples": 3, "n_subsamples_large": 2, "n_reruns": 2}
    close(et.phd_dimension(t(x), seed=4, **kw), geo.phd_dimension(x, seed=4, **kw))
    close(et.phd_dimension(t(x), alpha=1.5, **kw), geo.phd_dimension(x, alpha=1.5, **kw))


def test_geometry_gradients():
    rng = np.random.default_rng(103)
    x = t(rng.normal(size=(12, 4))).requires_grad_()
    assert gradcheck(lambda v: et.von_neumann_entropy(v), (x,))
    assert gradcheck(lambda v: et.rankme(v, spectrum="covariance"), (x,))
    assert gradcheck(lambda v: et.effective_rank(v, kind="participation"), (x,))
    assert gradcheck(lambda v: et.matrix_renyi_entropy(v, sigma=2.0), (x,))
    assert gradcheck(lambda v: et.matrix_renyi_entropy(v, alpha=1.5, sigma=2.0), (x,))
    assert gradcheck(lambda v: et.diffusion_spectral_entropy(v, sigma=2.0), (x,))
    lam = t(rng.exponential(size=6)).requires_grad_()
    assert gradcheck(lambda v: et.spectrum_entropy(v, alpha=2.0), (lam,))
    rank_one = (t(rng.normal(size=(10, 1))) * t(rng.normal(size=(1, 5)))).requires_grad_()
    et.von_neumann_entropy(rank_one).backward()
    assert torch.isfinite(rank_one.grad).all()


def test_torch_errors_match_the_reference():
    with pytest.raises(ValueError, match="sigma"):
        et.matrix_renyi_entropy(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="no valid row"):
        et.von_neumann_entropy(torch.ones(4, 2), mask=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="fit range needs"):
        et.powerlaw_alpha(torch.ones(50))
    with pytest.raises(ValueError, match="PHD sizes"):
        et.phd_dimension(torch.randn(45, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x"):
        et.von_neumann_entropy(torch.ones(3, 2, dtype=torch.int64))
