"""The NumPy and torch faces of ``matrix.md`` §3 against the float64 oracle, and torch gradients.

Every face computes in float64, so results agree to 1e-9 relative (different summation orders
and eigensolvers: the NumPy face takes eigenvalues and nearest-neighbour distances from the Rust
core); the random draws of DSE/DSMI/PHD are the same on every face for one seed.
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


def same(got, want):
    """The NumPy face: float64 of the reference's shape (Python floats for scalars)."""
    if isinstance(want, tuple):
        assert type(got) is type(want)
        for g, w in zip(got, want, strict=True):
            same(g, w)
        return
    assert type(got) is type(want) and np.shape(got) == np.shape(want)
    if isinstance(want, np.ndarray):
        assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, **TOL)


def faces(name, *args, **kw):
    """``name`` on the NumPy and torch faces against the reference."""
    want = getattr(geo, name)(*args, **kw)
    same(getattr(entcore, name)(*args, **kw), want)
    args_t = [t(a) if isinstance(a, np.ndarray) else a for a in args]
    kw_t = {k: t(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    close(getattr(et, name)(*args_t, **kw_t), want)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(100)
    x = rng.normal(size=(3, 40, 6)) @ rng.normal(size=(6, 6))
    wide = rng.normal(size=(2, 5, 9))
    return rng, x, wide


RUST_BACKED = {
    "alpha_req",
    "diffusion_spectral_entropy",
    "diffusion_spectral_mutual_information",
    "effective_rank",
    "matrix_joint_entropy",
    "matrix_mutual_information",
    "matrix_renyi_entropy",
    "mle_dimension",
    "phd_dimension",
    "rankme",
    "twonn_dimension",
    "von_neumann_entropy",
}


def test_numpy_face_is_rust_backed_where_the_work_is_heavy():
    for name in geo.__all__:
        assert (getattr(entcore, name) is getattr(geo, name)) == (name not in RUST_BACKED), name


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
        faces("von_neumann_entropy", x, **kw)
    faces("von_neumann_entropy", wide)
    faces("von_neumann_entropy", wide[0], method="covariance")
    for kw in (
        {"sigma": 3.0},
        {"alpha": 1.0, "kernel": "linear", "center": True},
        {"alpha": 0.5, "sigma": 2.0, "normalize": True},
        {"alpha": 3.0, "kernel": "linear"},
    ):
        faces("matrix_renyi_entropy", x, **kw)
    faces("matrix_renyi_entropy", wide.astype(np.float32), alpha=1.0, kernel="linear")
    faces("matrix_renyi_entropy", rng.normal(size=(2, 130, 5)), alpha=1.5, sigma=2.0, center=True)
    ka = np.exp(-((x[0][:, None] - x[0][None]) ** 2).sum(-1) / 50.0)
    kb = np.exp(-((x[1][:, None] - x[1][None]) ** 2).sum(-1) / 50.0)
    for alpha in (1.0, 2.0, 1.5):
        faces("matrix_mutual_information", ka, kb, alpha=alpha)
        faces("matrix_joint_entropy", ka, kb, alpha=alpha, base=2)
        faces("matrix_renyi_entropy", np.stack([ka, kb]), alpha=alpha, kernel="precomputed")


def test_ranks_and_power_laws(data):
    rng, x, wide = data
    for kw in ({}, {"spectrum": "covariance"}, {"eps": 0.0, "max_components": 3}):
        faces("rankme", x, **kw)
        faces("rankme", wide, **kw)
        faces("rankme", x[0], **kw)
    for kind in ("entropy", "participation", "stable", "threshold"):
        for kw in ({}, {"spectrum": "singular", "center": False}, {"row_normalize": True}):
            faces("effective_rank", x, kind=kind, **kw)
        faces("effective_rank", wide[1], kind=kind)
    lam = rng.exponential(size=(2, 7))
    faces("effective_rank", lam, spectrum="precomputed")
    spec = np.arange(1, 200.0) ** -1.3 * np.exp(rng.normal(scale=0.05, size=199))
    close(et.powerlaw_alpha(t(spec)), geo.powerlaw_alpha(spec))
    z = rng.normal(size=(2, 150, 60)) * np.arange(1, 61) ** -0.7
    faces("alpha_req", z, fit_range=(2, 40))
    faces("alpha_req", z[1], fit_range=(0, 30), center=False)


def test_diffusion_spectral_entropy_and_mutual_information():
    rng = np.random.default_rng(101)
    z = rng.normal(size=(50, 4))
    labels = rng.integers(0, 3, size=50)
    for kw in (
        {"sigma": 1.0},
        {"sigma": 2.0, "t": 3, "base": math.e},
        {"max_n": 30, "seed": 2},
        {"sigma": 1.0, "t": 0},
    ):
        faces("diffusion_spectral_entropy", z, **kw)
    # 150 rows: the Rust distances cross a 64-row block; float32 input.
    big = rng.normal(size=(150, 7)).astype(np.float32)
    faces("diffusion_spectral_entropy", big, sigma=2.0)
    kw = {"sigma": 1.5, "n_repetitions": 3, "max_n": 40, "seed": 7}
    faces("diffusion_spectral_mutual_information", z, labels, **kw)
    faces("diffusion_spectral_mutual_information", z, np.zeros(50, dtype=np.int64), sigma=1.0)


def test_intrinsic_dimension_faces():
    rng = np.random.default_rng(102)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    x = np.pad(rng.uniform(size=(200, 3)), [(0, 0), (0, 7)]) @ q
    x = np.concatenate([x, x[:5]])  # duplicates are removed first
    for method in ("linear", "mle"):
        faces("twonn_dimension", x, method=method)
    for kw in ({}, {"unbiased": True, "k": 10}, {"aggregate": "mean"}, {"aggregate": "median"}):
        faces("mle_dimension", x, **kw)
    kw = {"n_min": 20, "n_sizes": 5, "n_subsamples": 3, "n_subsamples_large": 2, "n_reruns": 2}
    faces("phd_dimension", x, seed=4, **kw)
    faces("phd_dimension", x, alpha=1.5, **kw)
    faces("phd_dimension", x.astype(np.float32), alpha=0.5, **kw)


def test_rust_spectra_across_sizes_dtypes_and_ranks():
    rng = np.random.default_rng(104)
    # d = 130 and n = 300: covariance route; (2, 90, 130): Gram route; float32 and float64 input.
    big = rng.normal(size=(2, 300, 130)) * np.arange(1, 131) ** -0.6
    for x in (big, big.astype(np.float32), big[:, :90].astype(np.float32)):
        faces("von_neumann_entropy", x, normalize="log_rank")
        faces("rankme", x)
        faces("rankme", x, spectrum="covariance", max_components=50)
        faces("effective_rank", x, kind="participation")
        faces("alpha_req", x, fit_range=(5, 60))
    # Rank 4 (no centring): exactly 4 nonzero eigenvalues, so RankMe with eps = 0 is 4.
    low = np.repeat(np.eye(4, 40), 5, axis=0) * 3.0
    assert entcore.rankme(low, eps=0.0) == pytest.approx(4.0, abs=1e-10)
    assert entcore.effective_rank(low, kind="threshold", center=False) == 4.0
    faces("rankme", low, eps=0.0)
    faces("von_neumann_entropy", low, center=False)
    # A constant set has a zero covariance.
    assert entcore.von_neumann_entropy(np.ones((5, 3))) == 0.0
    assert entcore.effective_rank(np.ones((5, 3))) == 0.0


def test_rust_neighbours_across_blocks_dtypes_ties_and_duplicates():
    rng = np.random.default_rng(105)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    x = np.pad(rng.uniform(size=(333, 4)), [(0, 0), (0, 8)]) @ q  # 333 rows: 6 query blocks
    for pts in (x, x.astype(np.float32)):
        faces("twonn_dimension", pts)
        faces("twonn_dimension", pts, discard_fraction=0.0, method="mle")
        faces("mle_dimension", pts, k=5, aggregate="median")
    # A grid: many equal distances (the neighbour distances do not depend on tie-breaking).
    grid = np.stack(np.meshgrid(np.arange(9.0), np.arange(8.0)), axis=-1).reshape(-1, 2)
    faces("mle_dimension", grid, k=6)
    faces("mle_dimension", grid, k=6, aggregate="mean")
    # Duplicate rows are removed first: zero distances never reach the estimators.
    shuffled = np.concatenate([x, x[::7], x[:3]])
    assert entcore.twonn_dimension(shuffled) == entcore.twonn_dimension(x)
    assert entcore.mle_dimension(shuffled) == entcore.mle_dimension(x)
    faces("twonn_dimension", shuffled)


def test_rust_paths_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(106)
    x = rng.normal(size=(400, 12))
    z = rng.normal(size=(3, 200, 80))
    before = entcore.get_num_threads()
    runs = []
    try:
        for threads in (1, 3):
            entcore.set_num_threads(threads)
            runs.append(
                (
                    entcore.twonn_dimension(x),
                    entcore.mle_dimension(x),
                    entcore.von_neumann_entropy(z).tolist(),
                    entcore.rankme(z).tolist(),
                    entcore.phd_dimension(x, n_min=30, n_sizes=4, n_reruns=1),
                    entcore.diffusion_spectral_entropy(x[:160], sigma=3.0),
                )
            )
    finally:
        entcore.set_num_threads(before)
    assert runs[0] == runs[1]


def test_core_bindings_check_their_arguments():
    from entcore import _core

    with pytest.raises(ValueError, match="^k:"):
        _core.knn_distances(np.zeros(6), 3, 2, 3)
    with pytest.raises(ValueError, match="^x:"):
        _core.knn_distances(np.zeros(5), 3, 2, 1)
    with pytest.raises(ValueError, match="^a:"):
        _core.symmetric_eigenvalues(np.array([1.0, np.nan, np.nan, 1.0]), 1, 2)
    with pytest.raises(ValueError, match="^a:"):
        _core.symmetric_eigenvalues(np.zeros(5), 1, 2)
    lam = _core.symmetric_eigenvalues(np.array([2.0, 1.0, 1.0, 2.0, -1.0, 0.0, 0.0, 4.0]), 2, 2)
    np.testing.assert_allclose(lam, [3.0, 1.0, 4.0, 0.0], atol=1e-15)
    with pytest.raises(ValueError, match="k"):
        entcore.mle_dimension(np.eye(5), k=5)
    with pytest.raises(ValueError, match="^alpha:"):
        _core.mst_weights(np.zeros(4), 1, 4, 1, 0.0)
    np.testing.assert_array_equal(
        _core.mst_weights(np.array([0.0, 1.0, 3.0, 6.0, 0.0, 2.0, 4.0, 6.0]), 2, 4, 1, 2.0),
        [14.0, 12.0],
    )
    with pytest.raises(ValueError, match="3 distinct points"):
        entcore.twonn_dimension(np.ones((6, 2)))


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
