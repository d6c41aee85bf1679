"""Float64 NumPy oracle for representation geometry (``matrix.md`` §0 and §3).

Written to be read: every input is upcast exactly to float64, second-moment and Gram matrices are
formed in float64, eigenvalues come from the symmetric eigensolver ``numpy.linalg.eigvalsh``
(never an SVD of the ``N × d`` data), clamped at 0 and sorted descending (``matrix.md`` §0);
eigenvalues at or below ``n·ε·λ_max`` (``ε`` the float64 machine epsilon) are round-off and set
to 0, so that a rank-``k`` matrix has exactly ``k`` positive eigenvalues.
Distances for the intrinsic-dimension estimators are exact row differences, by blocks of rows.
Random draws use ``numpy.random.Generator(PCG64(seed))`` (§0), one generator per call.

A token set is ``x (..., N, d)``: rows are samples, columns features, leading axes independent
problems; ``mask`` (bool, broadcastable to ``x.shape[:-1]``) marks the rows that enter; a problem
with no valid row raises ``ValueError``. Entropies are float64 (natural log unless ``base``).
This module never imports the compiled core.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from entcore.reference._layout import as_array, bool_array, choice, float64_array, integer, real

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

#: Entries of a spectrum in ``[−NEG_TOL · Σλ, 0)`` are round-off and clamp to 0 (§3.1).
NEG_TOL = 1e-12
#: ``|α − 1|`` below this is evaluated as ``α = 1`` (§3.1, as in ``token.md``).
NEAR_ONE = 1e-6
METHODS = ("auto", "covariance", "gram")
VN_NORMALIZE = (None, "log_d", "log_rank")
KERNELS = ("gaussian", "linear", "precomputed")
RANKME_SPECTRA = ("singular", "covariance")
ERANK_KINDS = ("entropy", "participation", "stable", "threshold")
ERANK_SPECTRA = ("covariance", "singular", "precomputed")
TWONN_METHODS = ("linear", "mle")
MLE_AGGREGATES = ("harmonic", "mean", "median")
#: Rows per block of the exact pairwise differences.
DIST_BLOCK = 64


class PowerLawFit(NamedTuple):
    """``λ_i ≈ C · i^(−α)`` fitted on ranks (``matrix.md`` §3.5): ``alpha``, ``log_c = ln C`` and
    the unweighted ``r2`` of ``ln λ`` over the fit range."""

    alpha: Any
    log_c: Any
    r2: Any


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _log_base(base: Any) -> float:
    value = real("base", base, low=0.0, low_open=True)
    if value == 1.0 or math.isinf(value):
        raise ValueError(f"base: expected a finite base > 0 other than 1, got {value}")
    return math.log(value)


def _token_sets(name: str, x: Any, mask: Any = None) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """The valid rows of each problem of ``x (..., N, d)`` as float64 arrays, and the lead shape."""
    v = float64_array(name, x)
    if v.ndim < 2 or v.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (..., N, d) with d >= 1, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: expected finite values (NaN or inf found)")
    lead = v.shape[:-2]
    flat = v.reshape(-1, *v.shape[-2:])
    if mask is None:
        keep = np.ones(flat.shape[:-1], dtype=bool)
    else:
        m = bool_array("mask", mask)
        try:
            keep = np.broadcast_to(m, v.shape[:-1]).reshape(flat.shape[:-1])
        except ValueError:
            raise ValueError(
                f"mask: shape {m.shape} does not broadcast to {v.shape[:-1]}"
            ) from None
    sets = []
    for i in range(flat.shape[0]):
        rows = flat[i][keep[i]]
        if rows.shape[0] == 0:
            raise ValueError(f"{name}: a problem has no valid row (n = 0)")
        sets.append(rows)
    return sets, lead


def _eig_desc(m: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric matrix, float64, descending, clamped at 0; those at or below
    ``n·ε·λ_max`` are round-off of zero eigenvalues and are set to 0 (they would count as
    positive in a Rényi order ``α < 1`` or under the square root of a singular value)."""
    lam = np.linalg.eigvalsh(m)[::-1]
    floor = m.shape[0] * np.finfo(np.float64).eps * max(float(lam[0]), 0.0)
    return np.where(lam > floor, lam, 0.0)


def _second_moment_spectrum(x: np.ndarray, method: str) -> np.ndarray:
    """Eigenvalues of ``XᵀX`` (length ``d``), through the ``n × n`` Gram matrix when ``n < d``
    (``"auto"``) or when asked; the Gram spectrum is zero-padded to ``d``."""
    n, d = x.shape
    if method == "gram" or (method == "auto" and n < d):
        lam = _eig_desc(x @ x.T)
        out = np.zeros(d)
        out[: min(n, d)] = lam[: min(n, d)]
        return out
    return _eig_desc(x.T @ x)


def _h1(p: np.ndarray) -> float:
    q = p[p > 0]
    return float(-(q * np.log(q)).sum())


def _renyi(p: np.ndarray, alpha: float) -> float:
    """``H_α`` of a distribution ``p`` (zeros allowed), natural log (``matrix.md`` §3.1)."""
    if abs(alpha - 1.0) < NEAR_ONE:
        return _h1(p)
    if alpha == 0.0:
        return math.log(np.count_nonzero(p))
    if math.isinf(alpha):
        return -math.log(p.max())
    q = p[p > 0]
    return math.log(float((q**alpha).sum())) / (1.0 - alpha)


def _alpha(alpha: Any) -> float:
    value = real("alpha", alpha, low=0.0)
    return value


def _finish(values: list[float], lead: tuple[int, ...]) -> Any:
    out = np.array(values, dtype=np.float64).reshape(lead)
    return out[()] if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------
# §3.1 spectrum_entropy, §3.2 von_neumann_entropy
# ---------------------------------------------------------------------------------------------


def spectrum_entropy(
    lam: Any, *, alpha: float = 1.0, base: float = math.e, normalize: bool = False
) -> Any:
    """Rényi-``α`` entropy of a nonnegative spectrum ``λ`` over its last axis.

    ``p = λ / Σλ`` (entries in ``[−1e-12 Σλ, 0)`` clamp to 0; more negative, or ``Σλ = 0`` →
    ``ValueError``); ``H_1 = −Σ p ln p``, ``H_α = ln(Σ p^α)/(1 − α)``, ``α = 0`` → ``ln #{p > 0}``,
    ``α = inf`` → ``−ln max p``; ``|α − 1| < 1e-6`` is ``α = 1``. Divided by ``ln base``, or by
    ``ln(len)`` with ``normalize=True`` (0 for a spectrum of length 1). Returns float64 ``(...)``.

    Spec: ``matrix.md`` §3.1. Rényi (1961).
    """
    v = float64_array("lam", lam)
    if v.ndim < 1 or v.shape[-1] < 1:
        raise ValueError(f"lam: expected shape (..., m) with m >= 1, got {v.shape}")
    if np.any(np.isnan(v)) or np.any(np.isinf(v)):
        raise ValueError("lam: expected finite values")
    a = _alpha(alpha)
    divisor = _log_base(base)
    if normalize:
        divisor = math.log(v.shape[-1])
    flat = v.reshape(-1, v.shape[-1])
    values = []
    for row in flat:
        total = float(row.sum())
        if total <= 0:
            raise ValueError("lam: the spectrum sums to 0 (or less)")
        if np.any(row < -NEG_TOL * total):
            raise ValueError("lam: expected a nonnegative spectrum (negative entries found)")
        p = np.clip(row, 0.0, None) / total
        h = _renyi(p / p.sum(), a)
        values.append(h / divisor if divisor > 0 else 0.0)
    return _finish(values, v.shape[:-1])


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
    """Von Neumann entropy of the trace-normalised second moment of a token set.

    ``Σ = X̃ᵀX̃`` (``X̃`` centred over the valid rows when ``center``; the ``1/(n−1)`` cancels),
    ``ρ = Σ / tr Σ + eps·I``, ``S = −Σ λ ln λ`` over ``eig(ρ)`` (``d`` eigenvalues; the Gram route
    zero-pads). ``normalize``: ``None`` (÷ ``ln base``), ``"log_d"`` (÷ ``ln d``), ``"log_rank"``
    (÷ ``ln r``, ``r = min(n − 1, d)`` centred, else ``min(n, d)``); a divisor of 0 gives 0.
    ``tr Σ = 0`` (e.g. one row, centred) gives 0. ``method``: ``"auto"`` (Gram when ``n < d``),
    ``"covariance"``, ``"gram"``. Returns float64 ``(...)``.

    Equals ``matrix_entropy(x, k=None, row_normalize=False, normalize=None, eps=eps)`` of §1.2.
    InformationKoopman adds ``1e-8·I`` before trace normalisation and clamps at 1e-8; the sign
    (maximised against collapse or minimised) is the caller's. Spec: ``matrix.md`` §3.2.
    "Information Shapes Koopman Representation", arXiv 2510.13025.
    """
    sets, lead = _token_sets("x", x, mask)
    eps = real("eps", eps, low=0.0)
    ln_base = _log_base(base)
    normalize = None if normalize is None else choice("normalize", normalize, VN_NORMALIZE[1:])
    method = choice("method", method, METHODS)
    values = []
    for rows in sets:
        n, d = rows.shape
        xc = rows - rows.mean(axis=0) if center else rows
        lam = _second_moment_spectrum(xc, method)
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


# ---------------------------------------------------------------------------------------------
# §3.3 matrix-based Rényi entropy (Sanchez Giraldo et al.)
# ---------------------------------------------------------------------------------------------


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
    """Matrix-based Rényi-``α`` entropy of a Gram matrix, ``S_α(A) = ln(Σ λ_i^α)/(1 − α)``.

    ``K (n × n)``: ``"gaussian"`` ``exp(−‖x_i − x_j‖²/(2σ²))`` (``sigma`` required), ``"linear"``
    ``X Xᵀ`` (``X`` centred if ``center``), ``"precomputed"`` (``x`` is ``K``, symmetric);
    ``A = K / tr K``. ``α = 1``: von Neumann; ``α = 2``: ``−ln ‖A‖_F²`` without eigenvalues;
    otherwise over the eigenvalues of ``A``. Divided by ``ln base`` or, with
    ``normalize``, by ``ln n``. ``x (..., n, D)``. Returns float64 ``(...)``.

    Spec: ``matrix.md`` §3.3 (**Decision**: natural log). "Measures of Entropy from Data Using
    Infinitely Divisible Kernels", arXiv 1211.2459; "Layer by Layer", arXiv 2502.02013.
    """
    a = real("alpha", alpha, low=0.0, low_open=True)
    if math.isinf(a):
        raise ValueError("alpha: expected a finite value > 0")
    ln_base = _log_base(base)
    grams, lead = _grams(x, kernel, sigma, center)
    values = [_matrix_renyi(k / np.trace(k), a) for k in grams]
    out = np.array(values).reshape(lead)
    if normalize:
        n = grams[0].shape[0]
        out = out / math.log(n) if n > 1 else np.zeros_like(out)
    else:
        out = out / ln_base
    return out[()] if out.ndim == 0 else out


def matrix_joint_entropy(ka: Any, kb: Any, *, alpha: float = 2.0, base: float = math.e) -> Any:
    """Joint matrix entropy ``S_α(A∘B / tr(A∘B))`` of two Gram matrices (Hadamard product).

    ``ka``, ``kb`` ``(..., n, n)`` symmetric, positive trace. Spec: ``matrix.md`` §3.3.
    """
    a = real("alpha", alpha, low=0.0, low_open=True)
    ln_base = _log_base(base)
    ga, lead = _grams(ka, "precomputed", None, False, name="ka")
    gb, lead_b = _grams(kb, "precomputed", None, False, name="kb")
    if lead != lead_b or ga[0].shape != gb[0].shape:
        raise ValueError("kb: expected the shape of ka")
    values = []
    for p, q in zip(ga, gb, strict=True):
        h = p * q
        tr = np.trace(h)
        if tr <= 0:
            raise ValueError("ka, kb: the Hadamard product has trace 0")
        values.append(_matrix_renyi(h / tr, a) / ln_base)
    return _finish(values, lead)


def matrix_mutual_information(ka: Any, kb: Any, *, alpha: float = 2.0, base: float = math.e) -> Any:
    """Matrix-based mutual information ``I_α = S_α(A) + S_α(B) − S_α(A, B)``.

    Spec: ``matrix.md`` §3.3 (Sanchez Giraldo et al., arXiv 1211.2459).
    """
    s_a = matrix_renyi_entropy(ka, alpha=alpha, kernel="precomputed", base=base)
    s_b = matrix_renyi_entropy(kb, alpha=alpha, kernel="precomputed", base=base)
    return s_a + s_b - matrix_joint_entropy(ka, kb, alpha=alpha, base=base)


def _grams(
    x: Any, kernel: str, sigma: Any, center: bool, name: str = "x"
) -> tuple[list[np.ndarray], tuple[int, ...]]:
    kernel = choice("kernel", kernel, KERNELS)
    v = float64_array(name, x)
    if v.ndim < 2 or v.shape[-2] < 1:
        raise ValueError(f"{name}: expected shape (..., n, D) with n >= 1, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: expected finite values")
    lead = v.shape[:-2]
    flat = v.reshape(-1, *v.shape[-2:])
    grams = []
    if kernel == "gaussian":
        if sigma is None:
            raise ValueError("sigma: required for the Gaussian kernel (no default bandwidth)")
        s = real("sigma", sigma, low=0.0, low_open=True)
    for rows in flat:
        if kernel == "precomputed":
            if rows.shape[0] != rows.shape[1] or not np.array_equal(rows, rows.T):
                raise ValueError(f"{name}: expected symmetric (n, n) Gram matrices")
            k = rows
        elif kernel == "linear":
            xc = rows - rows.mean(axis=0) if center else rows
            k = xc @ xc.T
        else:
            xc = rows - rows.mean(axis=0) if center else rows
            k = np.exp(-_sq_distances(xc) / (2.0 * s * s))
        if np.trace(k) <= 0:
            raise ValueError(f"{name}: the Gram matrix has trace <= 0")
        grams.append(k)
    return grams, lead


def _matrix_renyi(a_mat: np.ndarray, alpha: float) -> float:
    if alpha == 2.0:
        return -math.log(float((a_mat * a_mat).sum()))
    lam = _eig_desc(a_mat)
    return _renyi(lam / lam.sum(), alpha)


def _sq_distances(x: np.ndarray) -> np.ndarray:
    """``‖x_i − x_j‖²`` from exact differences, by blocks of rows."""
    n = x.shape[0]
    out = np.empty((n, n))
    for start in range(0, n, DIST_BLOCK):
        diff = x[start : start + DIST_BLOCK, None, :] - x[None, :, :]
        out[start : start + DIST_BLOCK] = (diff * diff).sum(axis=-1)
    return out


# ---------------------------------------------------------------------------------------------
# §3.4 rankme, §3.5 alpha_req / powerlaw_alpha, §3.6 effective_rank
# ---------------------------------------------------------------------------------------------


def rankme(
    z: Any,
    *,
    spectrum: str = "singular",
    center: bool | None = None,
    eps: float = 1e-7,
    max_components: int | None = None,
) -> Any:
    """RankMe: ``exp(−Σ_i p_i ln p_i)`` over ``r = min(N, D)`` spectrum entries (or
    ``max_components``), zeros included.

    ``"singular"`` (Garrido et al.; ``center`` defaults to False): ``σ_i`` from the eigenvalues of
    the smaller of ``zᵀz``, ``zzᵀ``; ``p_i = σ_i / Σ σ + eps``. ``"covariance"`` (the Tracing paper;
    ``center`` defaults to True): covariance eigenvalues ``λ_i``, the top ``max_components`` kept
    but ``p_i = λ_i / Σ_all λ + eps``. ``eps`` is added after normalisation, not renormalised
    (reference behaviour). A zero matrix gives ``exp(−r · eps ln eps)`` (1 with ``eps=0``).
    ``z (..., N, D)``. Returns float64 ``(...)``.

    Spec: ``matrix.md`` §3.4. "RankMe", arXiv 2210.02885 (reptrix ``rankme.py``); "Tracing the
    Representation Geometry of Language Models", arXiv 2509.23024.
    """
    spectrum = choice("spectrum", spectrum, RANKME_SPECTRA)
    centred = (spectrum == "covariance") if center is None else bool(center)
    eps = real("eps", eps, low=0.0)
    top = None if max_components is None else integer("max_components", max_components, low=1)
    sets, lead = _token_sets("z", z)
    values = []
    for rows in sets:
        n, d = rows.shape
        xc = rows - rows.mean(axis=0) if centred else rows
        lam = _second_moment_spectrum(xc, "auto")[: min(n, d)]
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
    """α-ReQ: power-law decay ``α`` of the covariance spectrum of ``z (..., N, D)``.

    Spectrum: eigenvalues of the covariance of ``z`` (centred when ``center``), descending,
    divided by their sum, the top ``max_components`` kept; then :func:`powerlaw_alpha`.
    Spec: ``matrix.md`` §3.5. Agrawal et al., NeurIPS 2022 (reptrix ``alpha.py``);
    arXiv 2509.23024.
    """
    top = integer("max_components", max_components, low=1)
    sets, lead = _token_sets("z", z)
    fits = []
    for rows in sets:
        xc = rows - rows.mean(axis=0) if center else rows
        lam = _second_moment_spectrum(xc, "auto")
        total = float(lam.sum())
        if total <= 0:
            raise ValueError("z: the covariance is 0 (no spectrum to fit)")
        fits.append(powerlaw_alpha(lam[:top] / total, fit_range=fit_range))
    return PowerLawFit(*(_finish([f[i] for f in fits], lead) for i in range(3)))


def powerlaw_alpha(spectrum: Any, *, fit_range: tuple[int, int] = (11, 100)) -> PowerLawFit:
    """Fit ``λ_i ≈ C · i^(−α)`` to a 1-D spectrum (sorted descending first).

    On 0-based indices ``[start, stop)`` with ranks ``r_i = i + 1``: weighted least squares of
    ``y_i = ln λ_i`` on ``(−ln r_i, 1)`` with weights ``1/r_i``, minimising
    ``Σ w_i (y_i − c + a ln r_i)²``; ``α = a``, ``log_c = c``; ``r2`` the unweighted coefficient of
    determination of ``y`` over the range (NaN when ``y`` is constant there). Fewer than ``stop``
    values, a non-positive value inside the range or fewer than 2 points → ``ValueError``.

    Spec: ``matrix.md`` §3.5 (**Decision**: default range 11…99, ranks 12…100).
    """
    lam = float64_array("spectrum", spectrum)
    if lam.ndim != 1:
        raise ValueError(f"spectrum: expected a 1-D array, got shape {lam.shape}")
    if not np.all(np.isfinite(lam)):
        raise ValueError("spectrum: expected finite values")
    start, stop = _fit_range(fit_range)
    if lam.shape[0] < stop:
        raise ValueError(f"spectrum: the fit range needs {stop} values, got {lam.shape[0]}")
    window = np.sort(lam)[::-1][start:stop]
    if np.any(window <= 0):
        raise ValueError("spectrum: a value inside the fit range is <= 0")
    ranks = np.arange(start + 1, stop + 1, dtype=np.float64)
    y = np.log(window)
    design = np.stack([-np.log(ranks), np.ones_like(ranks)], axis=1)
    w = 1.0 / ranks
    lhs = design.T @ (w[:, None] * design)
    rhs = design.T @ (w * y)
    a, c = np.linalg.solve(lhs, rhs)
    resid = y - (c - a * np.log(ranks))
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return PowerLawFit(float(a), float(c), r2)


def _fit_range(fit_range: Any) -> tuple[int, int]:
    if not isinstance(fit_range, (tuple, list)) or len(fit_range) != 2:
        raise TypeError(f"fit_range: expected (start, stop), got {fit_range!r}")
    start = integer("fit_range", fit_range[0], low=0)
    stop = integer("fit_range", fit_range[1], low=0)
    if stop - start < 2:
        raise ValueError(f"fit_range: expected at least 2 points, got {fit_range!r}")
    return start, stop


def effective_rank(
    x: Any,
    *,
    kind: str = "entropy",
    spectrum: str = "covariance",
    center: bool = True,
    row_normalize: bool = False,
    threshold: float = 0.99,
) -> Any:
    """Effective rank of a token set (or of a given spectrum), ``p`` = spectrum / sum.

    ``spectrum``: ``"covariance"`` (eigenvalues of ``X̃ᵀX̃``), ``"singular"`` (singular values of
    ``X̃``), ``"precomputed"`` (``x`` is a nonnegative spectrum ``(..., m)``); ``X̃`` is centred
    when ``center`` and then row L2-normalised when ``row_normalize`` (zero rows dropped).
    ``kind``: ``"entropy"`` ``exp(−Σ p ln p)``, ``"participation"`` ``1/Σp²``, ``"stable"``
    ``1/max p``, ``"threshold"`` the smallest ``k`` with ``Σ_{i≤k} p_i ≥ threshold`` (compared
    with a 1e-12 slack for round-off). A zero spectrum gives 0. Returns float64 ``(...)``.

    Roy & Vetterli (``spectrum="singular", center=False``); Diff-eRank's eRank
    (``center=True, row_normalize=True``). Spec: ``matrix.md`` §3.6. Roy & Vetterli, EUSIPCO 2007;
    arXiv 2401.17139.
    """
    kind = choice("kind", kind, ERANK_KINDS)
    spectrum = choice("spectrum", spectrum, ERANK_SPECTRA)
    t = real("threshold", threshold, low=0.0, low_open=True, high=1.0)
    if spectrum == "precomputed":
        v = float64_array("x", x)
        if v.ndim < 1 or v.shape[-1] < 1:
            raise ValueError(f"x: expected a spectrum (..., m) with m >= 1, got {v.shape}")
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError("x: expected a finite nonnegative spectrum")
        spectra = list(v.reshape(-1, v.shape[-1]))
        lead = v.shape[:-1]
    else:
        sets, lead = _token_sets("x", x)
        spectra = []
        for rows in sets:
            xc = rows - rows.mean(axis=0) if center else rows
            if row_normalize:
                norms = np.sqrt((xc * xc).sum(axis=1))
                xc = xc[norms > 0] / norms[norms > 0, None]
            lam = _second_moment_spectrum(xc, "auto") if xc.shape[0] else np.zeros(1)
            spectra.append(np.sqrt(lam) if spectrum == "singular" else lam)
    values = []
    for s in spectra:
        s = np.sort(s)[::-1]
        total = float(s.sum())
        if total == 0:
            values.append(0.0)
            continue
        p = s / total
        if kind == "entropy":
            values.append(math.exp(_h1(p)))
        elif kind == "participation":
            values.append(1.0 / float((p * p).sum()))
        elif kind == "stable":
            values.append(1.0 / float(p.max()))
        else:
            reached = np.cumsum(p) >= t - 1e-12
            values.append(float(np.argmax(reached) + 1))
    return _finish(values, lead)


# ---------------------------------------------------------------------------------------------
# §3.7 diffusion spectral entropy and mutual information
# ---------------------------------------------------------------------------------------------


def diffusion_spectral_entropy(
    z: Any,
    *,
    sigma: float = 10.0,
    t: float = 1,
    max_n: int = 10000,
    seed: int = 0,
    base: float = 2.0,
) -> float:
    """Diffusion spectral entropy of ``z (N, D)``, in bits by default.

    ``max_n`` rows drawn without replacement when ``N > max_n``
    (``Generator(PCG64(seed)).choice``, indices sorted). ``G_ij = exp(−‖z_i − z_j‖²/(2σ²))``,
    ``q_i = Σ_j G_ij``, ``K = Q^{−1/2} G Q^{−1/2}`` (the eigenvalues ``μ`` of the diffusion
    operator ``Q^{−1}G``), ``p ∝ |μ|^t``, ``DSE = −Σ p log p``. Cost ``O(N³)``.

    Written from the mathematics (the published code is under a non-commercial licence).
    Spec: ``matrix.md`` §3.7. arXiv 2312.04823.
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
    """Diffusion spectral mutual information between ``z (N, D)`` and discrete ``labels (N,)``.

    One generator ``Generator(PCG64(seed))`` per call: first ``max_n`` rows (with their labels)
    when ``N > max_n``; then for each class ``b`` (ascending) of size ``n_b``:
    ``H_b = DSE(z[labels == b])`` and ``H*_b`` the mean over ``n_repetitions`` of the DSE of
    ``n_b`` rows drawn without replacement from all ``N`` (indices sorted);
    ``DSMI = Σ_b (n_b/N)(H*_b − H_b)`` (can be slightly negative; one class gives 0 exactly).

    Spec: ``matrix.md`` §3.7. arXiv 2312.04823.
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


def _matrix_2d(name: str, z: Any) -> np.ndarray:
    v = float64_array(name, z)
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (N, D) with N, D >= 1, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: expected finite values")
    return v


def _dse_args(sigma: Any, t: Any, max_n: Any, base: Any) -> tuple[float, float, int, float]:
    s = real("sigma", sigma, low=0.0, low_open=True)
    t_val = real("t", t, low=0.0)
    if math.isinf(s) or math.isinf(t_val):
        raise ValueError("sigma, t: expected finite values")
    return s, t_val, integer("max_n", max_n, low=1), _log_base(base)


def _dse(rows: np.ndarray, sigma: float, t: float) -> float:
    """DSE in nats of one row set (the diagonal of ``G`` included)."""
    g = np.exp(-_sq_distances(rows) / (2.0 * sigma * sigma))
    q = g.sum(axis=1)
    k = g / np.sqrt(np.outer(q, q))
    mu = np.abs(np.linalg.eigvalsh((k + k.T) / 2.0)) ** t
    return _h1(mu / mu.sum())


# ---------------------------------------------------------------------------------------------
# §3.8 intrinsic dimension
# ---------------------------------------------------------------------------------------------


def twonn_dimension(x: Any, *, discard_fraction: float = 0.1, method: str = "linear") -> float:
    """TwoNN intrinsic dimension (Facco et al.).

    ``μ_i = r_2(i)/r_1(i)`` (the two nearest distinct neighbours), sorted ascending, ``F_i = i/N``
    (``i = 1 … N``); the first ``k = ⌊N(1 − discard_fraction)⌋`` are kept (never the last, where
    ``F = 1``). ``"linear"``: slope through the origin of ``−ln(1 − F_i)`` on ``ln μ_(i)``;
    ``"mle"``: ``(k − 1) / (Σ_{i≤k} ln μ_(i) + (N − k) ln μ_(k))``. Exact duplicate rows are removed
    first (one copy kept). Spec: ``matrix.md`` §3.8. arXiv 1803.06992; scikit-dimension 0.5
    ``_TwoNN.py`` computes the same (tests/test_geometry_skdim.py).
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
    """Levina–Bickel maximum-likelihood intrinsic dimension with the MacKay–Ghahramani
    aggregation.

    With the ``k`` nearest-neighbour distances ``R_1 ≤ … ≤ R_k`` of each point,
    ``m(x) = (k − 1) / Σ_{j<k} ln(R_k/R_j)`` (``k − 2`` when ``unbiased``); the global value is
    ``1 / mean(1/m)`` (``"harmonic"``), or the ``"mean"`` or ``"median"`` of ``m``. Duplicates are
    removed first; requires ``N > k``. Spec: ``matrix.md`` §3.8. Levina & Bickel, NIPS 2004.
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
    """Persistent-homology dimension from the growth of minimum-spanning-tree weights.

    Step ``s = ⌊(N − n_min)/n_sizes⌋``; sizes ``n_j = n_min + j s`` while ``n_min + (j+1)s < N``
    (fewer than 3 sizes → ``ValueError``). With one generator ``Generator(PCG64(seed))``, for each
    rerun and each size, ``n_subsamples`` subsets (``n_subsamples_large`` when ``2n ≥ N``) are
    drawn without replacement; ``E = Σ_{MST edges} |e|^α``, the median per size; ``m`` is the
    least-squares slope of ``ln E`` on ``ln n``, averaged over reruns; ``PHD = α / (1 − m̄)``
    (NaN when ``m̄ ≥ 1``). Duplicates are removed first.

    Spec: ``matrix.md`` §3.8. arXiv 2306.04723 (ArGintum/GPTID ``IntrinsicDim.py``).
    """
    pts = _distinct_rows(x)
    a = real("alpha", alpha, low=0.0, low_open=True)
    n_min = integer("n_min", n_min, low=2)
    n_sizes = integer("n_sizes", n_sizes, low=1)
    n_sub = integer("n_subsamples", n_subsamples, low=1)
    n_sub_large = integer("n_subsamples_large", n_subsamples_large, low=1)
    reruns = integer("n_reruns", n_reruns, low=1)
    rng = np.random.Generator(np.random.PCG64(integer("seed", seed, low=0)))
    sizes = phd_sizes(pts.shape[0], n_min, n_sizes)
    slopes = []
    for _ in range(reruns):
        log_e = []
        for n in sizes:
            draws = n_sub_large if 2 * n >= pts.shape[0] else n_sub
            weights = [
                _mst_weight(pts[rng.choice(pts.shape[0], n, replace=False)], a)
                for _ in range(draws)
            ]
            log_e.append(math.log(float(np.median(weights))))
        slopes.append(float(np.polyfit(np.log(sizes), log_e, 1)[0]))
    m = float(np.mean(slopes))
    return a / (1.0 - m) if m < 1.0 else math.nan


def phd_sizes(n_points: int, n_min: int, n_sizes: int) -> list[int]:
    """The subsample sizes of :func:`phd_dimension` (shared by every face)."""
    step = (n_points - n_min) // n_sizes
    sizes = []
    j = 0
    while step > 0 and n_min + (j + 1) * step < n_points:
        sizes.append(n_min + j * step)
        j += 1
    if len(sizes) < 3:
        raise ValueError(
            f"x: {n_points} distinct points give {len(sizes)} PHD sizes from n_min = {n_min}, "
            "need at least 3"
        )
    return sizes


def _distinct_rows(x: Any) -> np.ndarray:
    """``x (N, D)`` as float64 with exact duplicate rows removed (first copies kept, in order)."""
    pts = _matrix_2d("x", x)
    _, first = np.unique(pts, axis=0, return_index=True)
    return pts[np.sort(first)]


def _knn_distances(pts: np.ndarray, k: int) -> np.ndarray:
    """Distances to the ``k`` nearest other points, ascending, ``(N, k)``."""
    d2 = _sq_distances(pts)
    np.fill_diagonal(d2, np.inf)
    part = np.partition(d2, k - 1, axis=1)[:, :k]
    return np.sqrt(np.sort(part, axis=1))


def _mst_weight(pts: np.ndarray, alpha: float) -> float:
    """``Σ |e|^α`` over the edges of a Euclidean minimum spanning tree (Prim, dense)."""
    d = np.sqrt(_sq_distances(pts))
    n = pts.shape[0]
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    best = d[0].copy()
    total = 0.0
    for _ in range(n - 1):
        cand = np.where(in_tree, np.inf, best)
        j = int(np.argmin(cand))
        total += float(cand[j]) ** alpha
        in_tree[j] = True
        best = np.minimum(best, d[j])
    return total
