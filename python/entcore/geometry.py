"""Representation geometry (``matrix.md`` §3) on NumPy arrays: float64 results, Rust where the
work is heavy.

- **Spectra** (``von_neumann_entropy``, ``rankme``, ``alpha_req``, ``effective_rank``, and for
  ``α ≠ 2`` the kernel entropies ``matrix_renyi_entropy`` / ``matrix_joint_entropy`` /
  ``matrix_mutual_information``): the second-moment matrix ``X̃ᵀX̃`` (or the ``n × n`` Gram
  matrix ``X̃X̃ᵀ`` when ``n < d``, as the reference chooses) is formed in float64 by NumPy's BLAS,
  and its eigenvalues come from the Rust symmetric eigensolver of ``entcore.matrix``
  (Householder tridiagonalisation, faer's above d = 768, + root-free QL, float64, never an
  SVD; ``matrix.md`` §0), all problems of a call in one batch on entcore's pool with the GIL
  released. Eigenvalues at or below
  ``n·ε·λ_max`` are round-off and set to 0, as in the reference, so a rank-``k`` matrix has
  exactly ``k`` positive eigenvalues. (The f32-tile second moments of
  ``entcore.matrix_spectrum`` are not used here: their ~1e-7 relative round-off would show as
  spurious singular values ``√(1e-7 λ_max)`` in ``rankme`` and in the tail fitted by
  ``alpha_req``.)
- **Nearest neighbours** (``twonn_dimension``, ``mle_dimension``): brute-force float64 distances
  from exact row differences in Rust (``entcore._core.knn_distances``), by blocks of query rows
  on entcore's pool, never the ``N × N`` matrix.
- **Minimum spanning trees** (``phd_dimension``): dense Prim in Rust with distances from exact
  differences computed as points join (``entcore._core.mst_weights``), the subsets of one size in
  parallel; the draws are the reference's.
- **Kernel matrices** (the Gaussian kernel of ``matrix_renyi_entropy``, DSE/DSMI): squared
  distances from exact differences in Rust (``entcore._core.sq_distances``), and the DSE
  eigenvalues from the Rust eigensolver.

``spectrum_entropy`` and ``powerlaw_alpha`` (no heavy step) are the float64 reference itself.
Names, arguments, defaults, checks and results match ``entcore.reference.geometry`` (to
round-off) and ``entcore.torch``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entcore import _core
from entcore.reference._layout import as_array, choice, float64_array, integer, real
from entcore.reference.geometry import (
    ERANK_KINDS,
    ERANK_SPECTRA,
    KERNELS,
    METHODS,
    MLE_AGGREGATES,
    RANKME_SPECTRA,
    TWONN_METHODS,
    VN_NORMALIZE,
    PowerLawFit,
    _distinct_rows,
    _dse_args,
    _finish,
    _grams,
    _h1,
    _log_base,
    _matrix_2d,
    _renyi,
    _token_sets,
    phd_sizes,
    powerlaw_alpha,
    spectrum_entropy,
)
from entcore.reference.geometry import effective_rank as _rank_of_spectra

__all__ = [
    "PowerLawFit",
    "alpha_req",
    "diffusion_spectral_entropy",
    "diffusion_spectral_mutual_information",
    "effective_rank",
    "matrix_joint_entropy",
    "matrix_mutual_information",
    "matrix_renyi_entropy",
    "mle_dimension",
    "phd_dimension",
    "powerlaw_alpha",
    "rankme",
    "spectrum_entropy",
    "twonn_dimension",
    "von_neumann_entropy",
]


# ---------------------------------------------------------------------------------------------
# Spectra through the Rust eigensolver
# ---------------------------------------------------------------------------------------------


def _eigenvalues(mats: list[np.ndarray]) -> list[np.ndarray]:
    """Eigenvalues of symmetric float64 matrices, descending, clamped at 0, those at or below
    ``m·ε·λ_max`` set to 0 (round-off, as in the reference); one Rust call per matrix size."""
    sizes = sorted({m.shape[0] for m in mats})
    eig: dict[int, list[np.ndarray]] = {}
    for size in sizes:
        batch = np.stack([m for m in mats if m.shape[0] == size])
        lam = _core.symmetric_eigenvalues(batch.reshape(-1), batch.shape[0], size)
        lam = lam.reshape(batch.shape[0], size)
        floor = size * np.finfo(np.float64).eps * lam[:, :1]
        eig[size] = list(np.where(lam > floor, lam, 0.0))[::-1]
    return [eig[m.shape[0]].pop() for m in mats]


def _spectra(sets: list[np.ndarray], method: str) -> list[np.ndarray]:
    """Eigenvalues of ``XᵀX`` (length ``d``, descending) of every set, through the ``n × n`` Gram
    matrix when ``n < d`` (``"auto"``) or when asked (zero-padded to ``d``); a set with no row
    gives zeros."""
    mats = [
        x @ x.T if method == "gram" or (method == "auto" and x.shape[0] < x.shape[1]) else x.T @ x
        for x in sets
        if x.shape[0] > 0
    ]
    lams = iter(_eigenvalues(mats))
    out = []
    for x in sets:
        full = np.zeros(x.shape[1])
        if x.shape[0] > 0:
            lam = next(lams)
            keep = min(lam.shape[0], full.shape[0])
            full[:keep] = lam[:keep]
        out.append(full)
    return out


def _centred(sets: list[np.ndarray], center: bool) -> list[np.ndarray]:
    return [rows - rows.mean(axis=0) if center else rows for rows in sets]


def von_neumann_entropy(
    x: Any,
    *,
    center: bool = True,
    eps: float = 0.0,
    base: float = math.e,
    normalize: str | None = None,
    mask: Any = None,
    method: str = "auto",
) -> Any:
    """Von Neumann entropy ``S = −Σ λ ln λ`` of ``ρ = Σ / tr Σ + eps·I``, ``Σ = X̃ᵀX̃``
    (``matrix.md`` §3.2); eigenvalues in Rust. See
    :func:`entcore.reference.geometry.von_neumann_entropy`.

    Ref: "Information Shapes Koopman Representation", arXiv 2510.13025.
    """
    sets, lead = _token_sets("x", x, mask)
    eps = real("eps", eps, low=0.0)
    ln_base = _log_base(base)
    normalize = None if normalize is None else choice("normalize", normalize, VN_NORMALIZE[1:])
    method = choice("method", method, METHODS)
    values = []
    for rows, lam in zip(sets, _spectra(_centred(sets, center), method), strict=True):
        n, d = rows.shape
        total = float(lam.sum())
        if total == 0:
            values.append(0.0)
            continue
        h = _h1(lam / total + eps)
        if normalize is None:
            divisor = ln_base
        elif normalize == "log_d":
            divisor = math.log(d)
        else:
            divisor = math.log(max(1, min(n - 1 if center else n, d)))
        values.append(h / divisor if divisor > 0 else 0.0)
    return _finish(values, lead)


def rankme(
    z: Any,
    *,
    spectrum: str = "singular",
    center: bool | None = None,
    eps: float = 1e-7,
    max_components: int | None = None,
) -> Any:
    """RankMe ``exp(−Σ p ln p)`` of the singular values or covariance eigenvalues of ``z``
    (``matrix.md`` §3.4); eigenvalues in Rust. See :func:`entcore.reference.geometry.rankme`.

    Ref: "RankMe", arXiv 2210.02885; "Tracing the Representation Geometry of Language Models",
    arXiv 2509.23024.
    """
    spectrum = choice("spectrum", spectrum, RANKME_SPECTRA)
    centred = (spectrum == "covariance") if center is None else bool(center)
    eps = real("eps", eps, low=0.0)
    top = None if max_components is None else integer("max_components", max_components, low=1)
    sets, lead = _token_sets("z", z)
    values = []
    for rows, lam in zip(sets, _spectra(_centred(sets, centred), "auto"), strict=True):
        lam = lam[: min(rows.shape)]
        s = np.sqrt(lam) if spectrum == "singular" else lam
        total = float(s.sum())
        s = s if top is None else s[:top]
        p = (s / total if total > 0 else np.zeros_like(s)) + eps
        values.append(math.exp(_h1(p)))
    return _finish(values, lead)


def alpha_req(
    z: Any,
    *,
    fit_range: tuple[int, int] = (11, 100),
    center: bool = True,
    max_components: int = 2048,
) -> PowerLawFit:
    """α-ReQ: :func:`powerlaw_alpha` of the normalised covariance spectrum of ``z``
    (``matrix.md`` §3.5); eigenvalues in Rust. See :func:`entcore.reference.geometry.alpha_req`.

    Ref: Agrawal et al., NeurIPS 2022; arXiv 2509.23024.
    """
    top = integer("max_components", max_components, low=1)
    sets, lead = _token_sets("z", z)
    fits = []
    for lam in _spectra(_centred(sets, center), "auto"):
        total = float(lam.sum())
        if total <= 0:
            raise ValueError("z: the covariance is 0 (no spectrum to fit)")
        fits.append(powerlaw_alpha(lam[:top] / total, fit_range=fit_range))
    return PowerLawFit(*(_finish([f[i] for f in fits], lead) for i in range(3)))


def effective_rank(
    x: Any,
    *,
    kind: str = "entropy",
    spectrum: str = "covariance",
    center: bool = True,
    row_normalize: bool = False,
    threshold: float = 0.99,
) -> Any:
    """Effective rank (entropy, participation, stable or threshold) of the covariance or singular
    spectrum of a token set, or of a given spectrum (``matrix.md`` §3.6); eigenvalues in Rust,
    then the reference on the spectra. See :func:`entcore.reference.geometry.effective_rank`.

    Ref: Roy & Vetterli, EUSIPCO 2007; Diff-eRank, arXiv 2401.17139.
    """
    kind = choice("kind", kind, ERANK_KINDS)
    spectrum = choice("spectrum", spectrum, ERANK_SPECTRA)
    if spectrum != "precomputed":
        sets, lead = _token_sets("x", x)
        sets = _centred(sets, center)
        if row_normalize:
            norms = [np.sqrt((xc * xc).sum(axis=1)) for xc in sets]
            sets = [xc[nm > 0] / nm[nm > 0, None] for xc, nm in zip(sets, norms, strict=True)]
        lams = np.array(_spectra(sets, "auto")).reshape(lead + (-1,))
        x = np.sqrt(lams) if spectrum == "singular" else lams
    return _rank_of_spectra(x, kind=kind, spectrum="precomputed", threshold=threshold)


def _sq_distances(x: np.ndarray) -> np.ndarray:
    """``‖x_i − x_j‖²`` ``(n, n)`` from exact differences (Rust, parallel over row blocks)."""
    n, dim = x.shape
    flat = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    return _core.sq_distances(flat, n, dim).reshape(n, n)


def _kernel_grams(
    x: Any, kernel: str, sigma: Any, center: bool
) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """The Gram matrices of :func:`matrix_renyi_entropy`: the reference's for ``"linear"`` and
    ``"precomputed"``; the Gaussian kernel from the Rust squared distances."""
    if choice("kernel", kernel, KERNELS) != "gaussian":
        return _grams(x, kernel, sigma, center)
    v = float64_array("x", x)
    if v.ndim < 2 or v.shape[-2] < 1:
        raise ValueError(f"x: expected shape (..., n, D) with n >= 1, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("x: expected finite values")
    if sigma is None:
        raise ValueError("sigma: required for the Gaussian kernel (no default bandwidth)")
    s = real("sigma", sigma, low=0.0, low_open=True)
    grams = []
    for rows in v.reshape(-1, *v.shape[-2:]):
        xc = rows - rows.mean(axis=0) if center else rows
        grams.append(np.exp(-_sq_distances(xc) / (2.0 * s * s)))
    return grams, v.shape[:-2]


def _kernel_entropies(mats: list[np.ndarray], alpha: float) -> list[float]:
    """``S_α`` (natural log) of unit-trace Gram matrices: ``−ln ‖A‖_F²`` for ``α = 2``, else over
    the eigenvalues (Rust)."""
    if alpha == 2.0:
        return [-math.log(float((m * m).sum())) for m in mats]
    return [_renyi(lam / lam.sum(), alpha) for lam in _eigenvalues(mats)]


def matrix_renyi_entropy(
    x: Any,
    *,
    alpha: float = 2.0,
    kernel: str = "gaussian",
    sigma: float | None = None,
    center: bool = False,
    base: float = math.e,
    normalize: bool = False,
) -> Any:
    """Matrix-based Rényi-``α`` entropy ``ln(Σ λ_i^α)/(1 − α)`` of ``A = K / tr K``
    (``matrix.md`` §3.3); the Gram matrices as in the reference, eigenvalues in Rust (none for
    ``α = 2``). See :func:`entcore.reference.geometry.matrix_renyi_entropy`.

    Ref: Sanchez Giraldo et al., arXiv 1211.2459; "Layer by Layer", arXiv 2502.02013.
    """
    a = real("alpha", alpha, low=0.0, low_open=True)
    if math.isinf(a):
        raise ValueError("alpha: expected a finite value > 0")
    ln_base = _log_base(base)
    grams, lead = _kernel_grams(x, kernel, sigma, center)
    out = np.array(_kernel_entropies([k / np.trace(k) for k in grams], a)).reshape(lead)
    if normalize:
        n = grams[0].shape[0]
        out = out / math.log(n) if n > 1 else np.zeros_like(out)
    else:
        out = out / ln_base
    return out[()] if out.ndim == 0 else out


def matrix_joint_entropy(ka: Any, kb: Any, *, alpha: float = 2.0, base: float = math.e) -> Any:
    """Joint matrix entropy ``S_α(A∘B / tr(A∘B))`` (``matrix.md`` §3.3); eigenvalues in Rust.
    See :func:`entcore.reference.geometry.matrix_joint_entropy`.

    Ref: Sanchez Giraldo et al., arXiv 1211.2459.
    """
    a = real("alpha", alpha, low=0.0, low_open=True)
    ln_base = _log_base(base)
    ga, lead = _grams(ka, "precomputed", None, False, name="ka")
    gb, lead_b = _grams(kb, "precomputed", None, False, name="kb")
    if lead != lead_b or ga[0].shape != gb[0].shape:
        raise ValueError("kb: expected the shape of ka")
    mats = []
    for p, q in zip(ga, gb, strict=True):
        h = p * q
        tr = np.trace(h)
        if tr <= 0:
            raise ValueError("ka, kb: the Hadamard product has trace 0")
        mats.append(h / tr)
    return _finish([v / ln_base for v in _kernel_entropies(mats, a)], lead)


def matrix_mutual_information(ka: Any, kb: Any, *, alpha: float = 2.0, base: float = math.e) -> Any:
    """Matrix-based mutual information ``I_α = S_α(A) + S_α(B) − S_α(A, B)`` (``matrix.md``
    §3.3). See :func:`entcore.reference.geometry.matrix_mutual_information`.

    Ref: Sanchez Giraldo et al., arXiv 1211.2459.
    """
    s_a = matrix_renyi_entropy(ka, alpha=alpha, kernel="precomputed", base=base)
    s_b = matrix_renyi_entropy(kb, alpha=alpha, kernel="precomputed", base=base)
    return s_a + s_b - matrix_joint_entropy(ka, kb, alpha=alpha, base=base)


def diffusion_spectral_entropy(
    z: Any,
    *,
    sigma: float = 10.0,
    t: float = 1,
    max_n: int = 10000,
    seed: int = 0,
    base: float = 2.0,
) -> float:
    """Diffusion spectral entropy of ``z (N, D)``, in bits by default (``matrix.md`` §3.7): the
    Gaussian kernel from Rust squared distances, the eigenvalues of ``Q^{−1/2} G Q^{−1/2}`` from
    the Rust eigensolver, the reference's draws. See
    :func:`entcore.reference.geometry.diffusion_spectral_entropy`.

    Written from the mathematics (the published code is under a non-commercial licence).
    Ref: arXiv 2312.04823.
    """
    rows = _matrix_2d("z", z)
    s, t_val, n_max, ln_base = _dse_args(sigma, t, max_n, base)
    rng = np.random.Generator(np.random.PCG64(integer("seed", seed, low=0)))
    if rows.shape[0] > n_max:
        rows = rows[np.sort(rng.choice(rows.shape[0], n_max, replace=False))]
    return _dse(rows, s, t_val) / ln_base


def diffusion_spectral_mutual_information(
    z: Any,
    labels: Any,
    *,
    sigma: float = 10.0,
    t: float = 1,
    n_repetitions: int = 5,
    max_n: int = 10000,
    seed: int = 0,
    base: float = 2.0,
) -> float:
    """Diffusion spectral mutual information ``Σ_b (n_b/N)(H*_b − H_b)`` between ``z (N, D)`` and
    discrete ``labels (N,)`` (``matrix.md`` §3.7), each DSE as in
    :func:`diffusion_spectral_entropy`, the reference's draws. See
    :func:`entcore.reference.geometry.diffusion_spectral_mutual_information`.

    Ref: arXiv 2312.04823.
    """
    rows = _matrix_2d("z", z)
    lab = as_array("labels", labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer array, got dtype {lab.dtype}")
    if lab.shape != (rows.shape[0],):
        raise ValueError(f"labels: expected shape ({rows.shape[0]},), got {lab.shape}")
    s, t_val, n_max, ln_base = _dse_args(sigma, t, max_n, base)
    reps = integer("n_repetitions", n_repetitions, low=1)
    rng = np.random.Generator(np.random.PCG64(integer("seed", seed, low=0)))
    if rows.shape[0] > n_max:
        keep = np.sort(rng.choice(rows.shape[0], n_max, replace=False))
        rows, lab = rows[keep], lab[keep]
    n = rows.shape[0]
    total = 0.0
    for b in np.unique(lab):
        members = rows[lab == b]
        n_b = members.shape[0]
        h_b = _dse(members, s, t_val)
        h_star = np.mean(
            [_dse(rows[np.sort(rng.choice(n, n_b, replace=False))], s, t_val) for _ in range(reps)]
        )
        total += n_b / n * (h_star - h_b)
    return total / ln_base


def _dse(rows: np.ndarray, sigma: float, t: float) -> float:
    """DSE in nats of one row set (the diagonal of ``G`` included); the eigenvalues of the PSD
    matrix ``K`` are clamped at 0 where the reference takes ``|μ|`` (round-off either way)."""
    g = np.exp(-_sq_distances(rows) / (2.0 * sigma * sigma))
    q = g.sum(axis=1)
    k = g / np.sqrt(np.outer(q, q))
    m = k.shape[0]
    mu = _core.symmetric_eigenvalues(np.ascontiguousarray((k + k.T) / 2.0).reshape(-1), 1, m)
    mu = mu**t
    return _h1(mu / mu.sum())


# ---------------------------------------------------------------------------------------------
# Intrinsic dimension through the Rust nearest-neighbour kernel
# ---------------------------------------------------------------------------------------------


def _knn_distances(pts: np.ndarray, k: int) -> np.ndarray:
    """Distances ``(N, k)`` to the ``k`` nearest other points, ascending (Rust, float64)."""
    n, dim = pts.shape
    flat = np.ascontiguousarray(pts, dtype=np.float64).reshape(-1)
    return _core.knn_distances(flat, n, dim, k).reshape(n, k)


def twonn_dimension(x: Any, *, discard_fraction: float = 0.1, method: str = "linear") -> float:
    """TwoNN intrinsic dimension from ``μ_i = r_2(i)/r_1(i)`` (``matrix.md`` §3.8); the two
    nearest distances in Rust. See :func:`entcore.reference.geometry.twonn_dimension`.

    Ref: Facco et al., arXiv 1803.06992.
    """
    pts = _distinct_rows(x)
    frac = real("discard_fraction", discard_fraction, low=0.0, high=1.0, high_open=True)
    method = choice("method", method, TWONN_METHODS)
    n = pts.shape[0]
    if n < 3:
        raise ValueError(f"x: TwoNN needs at least 3 distinct points, got {n}")
    near = _knn_distances(pts, 2)
    mu = np.sort(near[:, 1] / near[:, 0])
    k = min(int(math.floor(n * (1.0 - frac))), n - 1)
    if k < 2:
        raise ValueError("discard_fraction: fewer than 2 points are left to fit")
    log_mu = np.log(mu[:k])
    if method == "linear":
        y = -np.log(1.0 - np.arange(1, k + 1) / n)
        return float((log_mu * y).sum() / (log_mu * log_mu).sum())
    return float((k - 1) / (log_mu.sum() + (n - k) * log_mu[-1]))


def mle_dimension(
    x: Any, *, k: int = 20, unbiased: bool = False, aggregate: str = "harmonic"
) -> float:
    """Levina–Bickel MLE intrinsic dimension, MacKay–Ghahramani aggregation (``matrix.md``
    §3.8); the ``k`` nearest distances in Rust. See
    :func:`entcore.reference.geometry.mle_dimension`.

    Ref: Levina & Bickel, NIPS 2004.
    """
    pts = _distinct_rows(x)
    k = integer("k", k, low=3 if unbiased else 2)
    aggregate = choice("aggregate", aggregate, MLE_AGGREGATES)
    if pts.shape[0] <= k:
        raise ValueError(f"k: expected fewer than N = {pts.shape[0]} distinct points, got {k}")
    r = _knn_distances(pts, k)
    logs = np.log(r[:, -1:] / r[:, :-1]).sum(axis=1)
    inv_m = logs / (k - 2 if unbiased else k - 1)  # 1 / m(x)
    if aggregate == "harmonic":
        return float(1.0 / inv_m.mean())
    m = 1.0 / inv_m
    return float(m.mean() if aggregate == "mean" else np.median(m))


def phd_dimension(
    x: Any,
    *,
    alpha: float = 1.0,
    n_min: int = 40,
    n_sizes: int = 7,
    n_subsamples: int = 7,
    n_subsamples_large: int = 3,
    n_reruns: int = 3,
    seed: int = 0,
) -> float:
    """Persistent-homology dimension ``α / (1 − m̄)`` from the growth of minimum-spanning-tree
    weights over subsample sizes (``matrix.md`` §3.8); the same draws as the reference
    (``Generator(PCG64(seed))``), the subsets of one size in one batch of Rust MSTs (dense Prim,
    distances from exact differences). See :func:`entcore.reference.geometry.phd_dimension`.

    Ref: arXiv 2306.04723 (ArGintum/GPTID ``IntrinsicDim.py``).
    """
    pts = _distinct_rows(x)
    a = real("alpha", alpha, low=0.0, low_open=True)
    n_min = integer("n_min", n_min, low=2)
    n_sizes = integer("n_sizes", n_sizes, low=1)
    n_sub = integer("n_subsamples", n_subsamples, low=1)
    n_sub_large = integer("n_subsamples_large", n_subsamples_large, low=1)
    reruns = integer("n_reruns", n_reruns, low=1)
    rng = np.random.Generator(np.random.PCG64(integer("seed", seed, low=0)))
    total, dim = pts.shape
    sizes = phd_sizes(total, n_min, n_sizes)
    slopes = []
    for _ in range(reruns):
        log_e = []
        for n in sizes:
            draws = n_sub_large if 2 * n >= total else n_sub
            picks = np.stack([rng.choice(total, n, replace=False) for _ in range(draws)])
            weights = _core.mst_weights(pts[picks].reshape(-1), draws, n, dim, a)
            log_e.append(math.log(float(np.median(weights))))
        slopes.append(float(np.polyfit(np.log(sizes), log_e, 1)[0]))
    m = float(np.mean(slopes))
    return a / (1.0 - m) if m < 1.0 else math.nan
