"""Representation geometry (``matrix.md`` §3) on torch tensors: any device, differentiable.

The torch face of ``entcore.geometry``: same names, argument names and defaults as the float64
oracle ``entcore.reference.geometry`` (whose docstrings hold the long form of every rule).
Inputs are upcast to float64 on their device; second moments, kernels and distances are formed
in float64 and eigenvalues come from ``torch.linalg.eigvalsh`` (float64), clamped at 0, with
eigenvalues at or below ``n·ε·λ_max`` set to 0 as in the reference. Results are float64 tensors.

Gradients flow through ``spectrum_entropy`` (in ``lam``), ``von_neumann_entropy``, the matrix
Rényi entropies and mutual information, ``rankme``, ``effective_rank`` (``"entropy"``,
``"participation"``, ``"stable"``), the power-law fits and DSE (the eigenvalue gradient of
``eigvalsh`` is well defined at repeated eigenvalues; ``λ ln λ`` gets a zero gradient at
``λ = 0``). Random draws (DSE subsampling, DSMI, PHD) are made with NumPy from ``seed``, exactly
as the reference makes them, so one seed gives the same draws on every face (``matrix.md`` §0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from entcore.reference._layout import choice
from entcore.reference.geometry import (
    ERANK_KINDS,
    ERANK_SPECTRA,
    KERNELS,
    METHODS,
    MLE_AGGREGATES,
    NEAR_ONE,
    NEG_TOL,
    RANKME_SPECTRA,
    TWONN_METHODS,
    VN_NORMALIZE,
    PowerLawFit,
    _fit_range,
    phd_sizes,
)
from entcore.torch.rollout import _as_bool, _integer, _numeric, _real

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

_F64 = torch.float64
_EPS64 = float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _float64(name: str, x: Any) -> torch.Tensor:
    """A float tensor (kept in the graph) or an array-like, as float64."""
    if isinstance(x, torch.Tensor):
        if not x.dtype.is_floating_point:
            raise TypeError(
                f"{name}: expected float32, float16, bfloat16 or float64, got dtype {x.dtype}"
            )
        return x.to(_F64)
    return _numeric(name, x, torch.device("cpu"))


def _log_base(base: Any) -> float:
    value = _real("base", base, low=0.0, low_open=True)
    if value == 1.0 or math.isinf(value):
        raise ValueError(f"base: expected a finite base > 0 other than 1, got {value}")
    return math.log(value)


def _finite(name: str, x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name}: expected finite values (NaN or inf found)")


def _token_sets(name: str, x: Any, mask: Any = None) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    v = _float64(name, x)
    if v.ndim < 2 or v.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (..., N, d) with d >= 1, got {tuple(v.shape)}")
    _finite(name, v)
    lead = tuple(v.shape[:-2])
    flat = v.reshape(-1, *v.shape[-2:])
    if mask is None:
        keep = torch.ones(flat.shape[:-1], dtype=torch.bool, device=v.device)
    else:
        m = _as_bool("mask", mask, v.device)
        try:
            keep = torch.broadcast_to(m, tuple(v.shape[:-1])).reshape(flat.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"mask: shape {tuple(m.shape)} does not broadcast to {tuple(v.shape[:-1])}"
            ) from None
    sets = []
    for i in range(flat.shape[0]):
        rows = flat[i][keep[i]]
        if rows.shape[0] == 0:
            raise ValueError(f"{name}: a problem has no valid row (n = 0)")
        sets.append(rows)
    return sets, lead


def _eig_desc(m: torch.Tensor) -> torch.Tensor:
    lam = torch.flip(torch.linalg.eigvalsh(m), dims=(-1,))
    floor = m.shape[-1] * _EPS64 * torch.clamp(lam[..., :1].detach(), min=0.0)
    return torch.where(lam > floor, lam, 0.0)


def _second_moment_spectrum(x: torch.Tensor, method: str) -> torch.Tensor:
    n, d = x.shape
    if method == "gram" or (method == "auto" and n < d):
        lam = _eig_desc(x @ x.T)[: min(n, d)]
        return torch.cat([lam, lam.new_zeros(d - lam.shape[0])])
    return _eig_desc(x.T @ x)


def _sqrt0(lam: torch.Tensor) -> torch.Tensor:
    """``√λ`` with a zero gradient at ``λ = 0``."""
    pos = lam > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, lam, 1.0)), 0.0)


def _xlogx_sum(p: torch.Tensor) -> torch.Tensor:
    pos = p > 0
    return (p * torch.where(pos, torch.log(torch.where(pos, p, 1.0)), 0.0)).sum(dim=-1)


def _h1(p: torch.Tensor) -> torch.Tensor:
    return -_xlogx_sum(p)


def _renyi(p: torch.Tensor, alpha: float) -> torch.Tensor:
    if abs(alpha - 1.0) < NEAR_ONE:
        return _h1(p)
    if alpha == 0.0:
        return torch.log((p > 0).sum(dim=-1).to(_F64))
    if math.isinf(alpha):
        return -torch.log(p.max(dim=-1).values)
    pos = p > 0
    powered = torch.where(pos, torch.where(pos, p, 1.0) ** alpha, 0.0)
    return torch.log(powered.sum(dim=-1)) / (1.0 - alpha)


def _stack(values: list[torch.Tensor], lead: tuple[int, ...]) -> torch.Tensor:
    return torch.stack(values).reshape(lead)


# ---------------------------------------------------------------------------------------------
# §3.1, §3.2
# ---------------------------------------------------------------------------------------------


def spectrum_entropy(
    lam: Any, *, alpha: float = 1.0, base: float = math.e, normalize: bool = False
) -> torch.Tensor:
    """Rényi-``α`` entropy of a nonnegative spectrum over its last axis. Spec: ``matrix.md``
    §3.1."""
    v = _float64("lam", lam)
    if v.ndim < 1 or v.shape[-1] < 1:
        raise ValueError(f"lam: expected shape (..., m) with m >= 1, got {tuple(v.shape)}")
    _finite("lam", v)
    a = _real("alpha", alpha, low=0.0)
    divisor = math.log(v.shape[-1]) if normalize else _log_base(base)
    total = v.sum(dim=-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("lam: the spectrum sums to 0 (or less)")
    if bool((v < -NEG_TOL * total).any()):
        raise ValueError("lam: expected a nonnegative spectrum (negative entries found)")
    p = torch.clamp(v, min=0.0)
    p = p / p.sum(dim=-1, keepdim=True)
    h = _renyi(p, a)
    return h / divisor if divisor > 0 else torch.zeros_like(h)


def von_neumann_entropy(
    x: Any,
    *,
    center: bool = True,
    eps: float = 0.0,
    base: float = math.e,
    normalize: str | None = None,
    mask: Any = None,
    method: str = "auto",
) -> torch.Tensor:
    """Von Neumann entropy of ``ρ = X̃ᵀX̃ / tr + eps·I``, differentiable. Spec: ``matrix.md`` §3.2."""
    sets, lead = _token_sets("x", x, mask)
    eps = _real("eps", eps, low=0.0)
    ln_base = _log_base(base)
    normalize = None if normalize is None else choice("normalize", normalize, VN_NORMALIZE[1:])
    method = choice("method", method, METHODS)
    values = []
    for rows in sets:
        n, d = rows.shape
        xc = rows - rows.mean(dim=0) if center else rows
        lam = _second_moment_spectrum(xc, method)
        total = lam.sum()
        if float(total.detach()) == 0:
            values.append(total * 0.0)
            continue
        h = _h1(lam / total + eps)
        if normalize is None:
            divisor = ln_base
        elif normalize == "log_d":
            divisor = math.log(d)
        else:
            divisor = math.log(max(1, min(n - 1 if center else n, d)))
        values.append(h / divisor if divisor > 0 else h * 0.0)
    return _stack(values, lead)


# ---------------------------------------------------------------------------------------------
# §3.3
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
) -> torch.Tensor:
    """Matrix-based Rényi-``α`` entropy of ``A = K / tr K``. Spec: ``matrix.md`` §3.3."""
    a = _real("alpha", alpha, low=0.0, low_open=True)
    if math.isinf(a):
        raise ValueError("alpha: expected a finite value > 0")
    ln_base = _log_base(base)
    grams, lead = _grams(x, kernel, sigma, center)
    out = _stack([_matrix_renyi(k / torch.trace(k), a) for k in grams], lead)
    if normalize:
        n = grams[0].shape[0]
        return out / math.log(n) if n > 1 else out * 0.0
    return out / ln_base


def matrix_joint_entropy(
    ka: Any, kb: Any, *, alpha: float = 2.0, base: float = math.e
) -> torch.Tensor:
    """``S_α(A∘B / tr(A∘B))``. Spec: ``matrix.md`` §3.3."""
    a = _real("alpha", alpha, low=0.0, low_open=True)
    ln_base = _log_base(base)
    ga, lead = _grams(ka, "precomputed", None, False, name="ka")
    gb, lead_b = _grams(kb, "precomputed", None, False, name="kb")
    if lead != lead_b or ga[0].shape != gb[0].shape:
        raise ValueError("kb: expected the shape of ka")
    values = []
    for p, q in zip(ga, gb, strict=True):
        h = p * q
        tr = torch.trace(h)
        if float(tr.detach()) <= 0:
            raise ValueError("ka, kb: the Hadamard product has trace 0")
        values.append(_matrix_renyi(h / tr, a) / ln_base)
    return _stack(values, lead)


def matrix_mutual_information(
    ka: Any, kb: Any, *, alpha: float = 2.0, base: float = math.e
) -> torch.Tensor:
    """``I_α = S_α(A) + S_α(B) − S_α(A, B)``. Spec: ``matrix.md`` §3.3."""
    s_a = matrix_renyi_entropy(ka, alpha=alpha, kernel="precomputed", base=base)
    s_b = matrix_renyi_entropy(kb, alpha=alpha, kernel="precomputed", base=base)
    return s_a + s_b - matrix_joint_entropy(ka, kb, alpha=alpha, base=base)


def _grams(
    x: Any, kernel: str, sigma: Any, center: bool, name: str = "x"
) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    kernel = choice("kernel", kernel, KERNELS)
    v = _float64(name, x)
    if v.ndim < 2 or v.shape[-2] < 1:
        raise ValueError(f"{name}: expected shape (..., n, D) with n >= 1, got {tuple(v.shape)}")
    _finite(name, v)
    lead = tuple(v.shape[:-2])
    flat = v.reshape(-1, *v.shape[-2:])
    if kernel == "gaussian":
        if sigma is None:
            raise ValueError("sigma: required for the Gaussian kernel (no default bandwidth)")
        s = _real("sigma", sigma, low=0.0, low_open=True)
    grams = []
    for rows in flat:
        if kernel == "precomputed":
            if rows.shape[0] != rows.shape[1] or not bool(torch.equal(rows, rows.T)):
                raise ValueError(f"{name}: expected symmetric (n, n) Gram matrices")
            k = rows
        else:
            xc = rows - rows.mean(dim=0) if center else rows
            k = xc @ xc.T if kernel == "linear" else torch.exp(-_sq_distances(xc) / (2 * s * s))
        if float(torch.trace(k).detach()) <= 0:
            raise ValueError(f"{name}: the Gram matrix has trace <= 0")
        grams.append(k)
    return grams, lead


def _matrix_renyi(a_mat: torch.Tensor, alpha: float) -> torch.Tensor:
    if alpha == 2.0:
        return -torch.log((a_mat * a_mat).sum())
    lam = _eig_desc(a_mat)
    return _renyi(lam / lam.sum(), alpha)


def _sq_distances(x: torch.Tensor) -> torch.Tensor:
    """``‖x_i − x_j‖²`` from exact differences (diagonal exactly 0)."""
    diff = x[:, None, :] - x[None, :, :]
    return (diff * diff).sum(dim=-1)


# ---------------------------------------------------------------------------------------------
# §3.4 – §3.6
# ---------------------------------------------------------------------------------------------


def rankme(
    z: Any,
    *,
    spectrum: str = "singular",
    center: bool | None = None,
    eps: float = 1e-7,
    max_components: int | None = None,
) -> torch.Tensor:
    """RankMe ``exp(−Σ p ln p)`` on singular values or covariance eigenvalues. Spec:
    ``matrix.md`` §3.4."""
    spectrum = choice("spectrum", spectrum, RANKME_SPECTRA)
    centred = (spectrum == "covariance") if center is None else bool(center)
    eps = _real("eps", eps, low=0.0)
    top = None if max_components is None else _integer("max_components", max_components, low=1)
    sets, lead = _token_sets("z", z)
    values = []
    for rows in sets:
        n, d = rows.shape
        xc = rows - rows.mean(dim=0) if centred else rows
        lam = _second_moment_spectrum(xc, "auto")[: min(n, d)]
        s = _sqrt0(lam) if spectrum == "singular" else lam
        total = s.sum()
        s = s if top is None else s[:top]
        p = (s / total if float(total.detach()) > 0 else torch.zeros_like(s)) + eps
        values.append(torch.exp(_h1(p)))
    return _stack(values, lead)


def alpha_req(
    z: Any,
    *,
    fit_range: tuple[int, int] = (11, 100),
    center: bool = True,
    max_components: int = 2048,
) -> PowerLawFit:
    """α-ReQ power-law decay of the covariance spectrum. Spec: ``matrix.md`` §3.5."""
    top = _integer("max_components", max_components, low=1)
    sets, lead = _token_sets("z", z)
    fits = []
    for rows in sets:
        xc = rows - rows.mean(dim=0) if center else rows
        lam = _second_moment_spectrum(xc, "auto")
        total = lam.sum()
        if float(total.detach()) <= 0:
            raise ValueError("z: the covariance is 0 (no spectrum to fit)")
        fits.append(powerlaw_alpha(lam[:top] / total, fit_range=fit_range))
    return PowerLawFit(*(_stack([f[i] for f in fits], lead) for i in range(3)))


def powerlaw_alpha(spectrum: Any, *, fit_range: tuple[int, int] = (11, 100)) -> PowerLawFit:
    """Weighted least-squares fit of ``λ_i ≈ C i^(−α)`` on ranks. Spec: ``matrix.md`` §3.5."""
    lam = _float64("spectrum", spectrum)
    if lam.ndim != 1:
        raise ValueError(f"spectrum: expected a 1-D array, got shape {tuple(lam.shape)}")
    _finite("spectrum", lam)
    start, stop = _fit_range(fit_range)
    if lam.shape[0] < stop:
        raise ValueError(f"spectrum: the fit range needs {stop} values, got {lam.shape[0]}")
    window = torch.sort(lam, descending=True).values[start:stop]
    if bool((window <= 0).any()):
        raise ValueError("spectrum: a value inside the fit range is <= 0")
    ranks = torch.arange(start + 1, stop + 1, dtype=_F64, device=lam.device)
    y = torch.log(window)
    design = torch.stack([-torch.log(ranks), torch.ones_like(ranks)], dim=1)
    w = 1.0 / ranks
    coef = torch.linalg.solve(design.T @ (w[:, None] * design), design.T @ (w * y))
    a, c = coef[0], coef[1]
    resid = y - (c - a * torch.log(ranks))
    ss_tot = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (resid**2).sum() / ss_tot if float(ss_tot.detach()) > 0 else ss_tot * math.nan
    return PowerLawFit(a, c, r2)


def effective_rank(
    x: Any,
    *,
    kind: str = "entropy",
    spectrum: str = "covariance",
    center: bool = True,
    row_normalize: bool = False,
    threshold: float = 0.99,
) -> torch.Tensor:
    """Effective rank (entropy, participation, stable, threshold). Spec: ``matrix.md`` §3.6."""
    kind = choice("kind", kind, ERANK_KINDS)
    spectrum = choice("spectrum", spectrum, ERANK_SPECTRA)
    t = _real("threshold", threshold, low=0.0, low_open=True, high=1.0)
    if spectrum == "precomputed":
        v = _float64("x", x)
        if v.ndim < 1 or v.shape[-1] < 1:
            raise ValueError(f"x: expected a spectrum (..., m) with m >= 1, got {tuple(v.shape)}")
        _finite("x", v)
        if bool((v < 0).any()):
            raise ValueError("x: expected a finite nonnegative spectrum")
        spectra = list(v.reshape(-1, v.shape[-1]))
        lead = tuple(v.shape[:-1])
    else:
        sets, lead = _token_sets("x", x)
        spectra = []
        for rows in sets:
            xc = rows - rows.mean(dim=0) if center else rows
            if row_normalize:
                norms = torch.sqrt((xc * xc).sum(dim=1))
                keep = norms > 0
                xc = xc[keep] / norms[keep, None]
            lam = _second_moment_spectrum(xc, "auto") if xc.shape[0] else xc.new_zeros(1)
            if spectrum == "singular":
                lam = _sqrt0(lam)
            spectra.append(lam)
    values = []
    for s in spectra:
        s = torch.sort(s, descending=True).values
        total = s.sum()
        if float(total.detach()) == 0:
            values.append(total * 0.0)
            continue
        p = s / total
        if kind == "entropy":
            values.append(torch.exp(_h1(p)))
        elif kind == "participation":
            values.append(1.0 / (p * p).sum())
        elif kind == "stable":
            values.append(1.0 / p.max())
        else:
            reached = torch.cumsum(p, dim=0) >= t - 1e-12
            values.append((torch.argmax(reached.to(torch.int8)) + 1).to(_F64))
    return _stack(values, lead)


# ---------------------------------------------------------------------------------------------
# §3.7 DSE / DSMI
# ---------------------------------------------------------------------------------------------


def diffusion_spectral_entropy(
    z: Any,
    *,
    sigma: float = 10.0,
    t: float = 1,
    max_n: int = 10000,
    seed: int = 0,
    base: float = 2.0,
) -> torch.Tensor:
    """Diffusion spectral entropy (bits by default). Spec: ``matrix.md`` §3.7."""
    rows = _matrix_2d("z", z)
    s, t_val, n_max, ln_base = _dse_args(sigma, t, max_n, base)
    rng = np.random.Generator(np.random.PCG64(_integer("seed", seed, low=0)))
    if rows.shape[0] > n_max:
        keep = np.sort(rng.choice(rows.shape[0], n_max, replace=False))
        rows = rows[torch.as_tensor(keep, device=rows.device)]
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
) -> torch.Tensor:
    """Diffusion spectral mutual information with discrete labels (the reference's draws).
    Spec: ``matrix.md`` §3.7."""
    rows = _matrix_2d("z", z)
    if isinstance(labels, torch.Tensor):
        lab = labels.detach().cpu().numpy()
    else:
        lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer array, got dtype {lab.dtype}")
    if lab.shape != (rows.shape[0],):
        raise ValueError(f"labels: expected shape ({rows.shape[0]},), got {lab.shape}")
    s, t_val, n_max, ln_base = _dse_args(sigma, t, max_n, base)
    reps = _integer("n_repetitions", n_repetitions, low=1)
    rng = np.random.Generator(np.random.PCG64(_integer("seed", seed, low=0)))
    if rows.shape[0] > n_max:
        keep = np.sort(rng.choice(rows.shape[0], n_max, replace=False))
        rows, lab = rows[torch.as_tensor(keep, device=rows.device)], lab[keep]
    n = rows.shape[0]
    total = rows.new_zeros(())
    for b in np.unique(lab):
        idx_b = np.flatnonzero(lab == b)
        n_b = idx_b.shape[0]
        h_b = _dse(rows[torch.as_tensor(idx_b, device=rows.device)], s, t_val)
        draws = [np.sort(rng.choice(n, n_b, replace=False)) for _ in range(reps)]
        h_star = torch.stack(
            [_dse(rows[torch.as_tensor(d, device=rows.device)], s, t_val) for d in draws]
        ).mean()
        total = total + n_b / n * (h_star - h_b)
    return total / ln_base


def _matrix_2d(name: str, z: Any) -> torch.Tensor:
    v = _float64(name, z)
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (N, D) with N, D >= 1, got {tuple(v.shape)}")
    _finite(name, v)
    return v


def _dse_args(sigma: Any, t: Any, max_n: Any, base: Any) -> tuple[float, float, int, float]:
    s = _real("sigma", sigma, low=0.0, low_open=True)
    t_val = _real("t", t, low=0.0)
    if math.isinf(s) or math.isinf(t_val):
        raise ValueError("sigma, t: expected finite values")
    return s, t_val, _integer("max_n", max_n, low=1), _log_base(base)


def _dse(rows: torch.Tensor, sigma: float, t: float) -> torch.Tensor:
    g = torch.exp(-_sq_distances(rows) / (2.0 * sigma * sigma))
    q = g.sum(dim=1)
    k = g / torch.sqrt(q[:, None] * q[None, :])
    mu = torch.linalg.eigvalsh((k + k.T) / 2.0).abs() ** t
    return _h1(mu / mu.sum())


# ---------------------------------------------------------------------------------------------
# §3.8 intrinsic dimension
# ---------------------------------------------------------------------------------------------


def twonn_dimension(
    x: Any, *, discard_fraction: float = 0.1, method: str = "linear"
) -> torch.Tensor:
    """TwoNN intrinsic dimension. Spec: ``matrix.md`` §3.8."""
    pts = _distinct_rows(x)
    frac = _real("discard_fraction", discard_fraction, low=0.0, high=1.0, high_open=True)
    method = choice("method", method, TWONN_METHODS)
    n = pts.shape[0]
    if n < 3:
        raise ValueError(f"x: TwoNN needs at least 3 distinct points, got {n}")
    near = _knn_distances(pts, 2)
    mu = torch.sort(near[:, 1] / near[:, 0]).values
    k = min(int(math.floor(n * (1.0 - frac))), n - 1)
    if k < 2:
        raise ValueError("discard_fraction: fewer than 2 points are left to fit")
    log_mu = torch.log(mu[:k])
    if method == "linear":
        f = torch.arange(1, k + 1, dtype=_F64, device=pts.device) / n
        y = -torch.log(1.0 - f)
        return (log_mu * y).sum() / (log_mu * log_mu).sum()
    return (k - 1) / (log_mu.sum() + (n - k) * log_mu[-1])


def mle_dimension(
    x: Any, *, k: int = 20, unbiased: bool = False, aggregate: str = "harmonic"
) -> torch.Tensor:
    """Levina–Bickel MLE intrinsic dimension. Spec: ``matrix.md`` §3.8."""
    pts = _distinct_rows(x)
    k = _integer("k", k, low=3 if unbiased else 2)
    aggregate = choice("aggregate", aggregate, MLE_AGGREGATES)
    if pts.shape[0] <= k:
        raise ValueError(f"k: expected fewer than N = {pts.shape[0]} distinct points, got {k}")
    r = _knn_distances(pts, k)
    inv_m = torch.log(r[:, -1:] / r[:, :-1]).sum(dim=1) / (k - 2 if unbiased else k - 1)
    if aggregate == "harmonic":
        return 1.0 / inv_m.mean()
    m = 1.0 / inv_m
    return m.mean() if aggregate == "mean" else torch.quantile(m, 0.5)


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
) -> torch.Tensor:
    """Persistent-homology dimension from MST weights (the reference's draws). Spec:
    ``matrix.md`` §3.8."""
    pts = _distinct_rows(x)
    a = _real("alpha", alpha, low=0.0, low_open=True)
    n_min = _integer("n_min", n_min, low=2)
    n_sizes = _integer("n_sizes", n_sizes, low=1)
    n_sub = _integer("n_subsamples", n_subsamples, low=1)
    n_sub_large = _integer("n_subsamples_large", n_subsamples_large, low=1)
    reruns = _integer("n_reruns", n_reruns, low=1)
    rng = np.random.Generator(np.random.PCG64(_integer("seed", seed, low=0)))
    n_pts = pts.shape[0]
    sizes = phd_sizes(n_pts, n_min, n_sizes)
    log_n = torch.log(torch.tensor(sizes, dtype=_F64, device=pts.device))
    slopes = []
    for _ in range(reruns):
        log_e = []
        for n in sizes:
            draws = n_sub_large if 2 * n >= n_pts else n_sub
            weights = torch.stack(
                [
                    _mst_weight(pts[torch.as_tensor(rng.choice(n_pts, n, replace=False))], a)
                    for _ in range(draws)
                ]
            )
            middle = torch.sort(weights).values[(draws - 1) // 2 : draws // 2 + 1]
            log_e.append(torch.log(middle.mean()))  # the median
        y = torch.stack(log_e)
        xm = log_n - log_n.mean()
        slopes.append((xm * (y - y.mean())).sum() / (xm * xm).sum())
    m = torch.stack(slopes).mean()
    return a / (1.0 - m) if float(m.detach()) < 1.0 else m * math.nan


def _distinct_rows(x: Any) -> torch.Tensor:
    pts = _matrix_2d("x", x)
    _, first = np.unique(pts.detach().cpu().numpy(), axis=0, return_index=True)
    return pts[torch.as_tensor(np.sort(first), device=pts.device)]


def _knn_distances(pts: torch.Tensor, k: int) -> torch.Tensor:
    d2 = _sq_distances(pts)
    d2 = d2 + torch.diag(torch.full((d2.shape[0],), math.inf, dtype=_F64, device=d2.device))
    return torch.sqrt(torch.topk(d2, k, dim=1, largest=False).values)


def _mst_weight(pts: torch.Tensor, alpha: float) -> torch.Tensor:
    d = torch.sqrt(_sq_distances(pts))
    n = pts.shape[0]
    in_tree = torch.zeros(n, dtype=torch.bool, device=pts.device)
    in_tree[0] = True
    best = d[0].clone()
    total = d.new_zeros(())
    for _ in range(n - 1):
        cand = torch.where(in_tree, math.inf, best)
        j = int(torch.argmin(cand))
        total = total + cand[j] ** alpha
        in_tree[j] = True
        best = torch.minimum(best, d[j])
    return total
