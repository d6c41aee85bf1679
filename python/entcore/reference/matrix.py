"""Float64 NumPy oracle for the matrix entropy of token sets (``matrix.md`` §0–§1).

Written to be read, not to be fast (``conventions.md``, "The three faces of every function"):
every input is upcast exactly to float64 and every step of ``matrix.md`` §1.2 is done as written,
one problem (one head of one layer of one batch entry) at a time. Spectra and entropies are
float64 arrays; the Rust-backed ``entcore.matrix`` (float32 entropies) and ``entcore.torch`` are
held to these values in the tests. This module never imports the compiled core.

A token set is ``x (..., N, d)``: rows are tokens, columns features; every leading index is an
independent problem. ``mask`` (bool or 0/1, broadcastable to ``x.shape[:-1]``) marks the rows
that enter; a problem with no valid row is a ``ValueError``.

One problem (``matrix.md`` §1.2 steps 1–4), with ``Z`` the kept rows after centring and row
normalisation::

    Â = A / tr A,   A = (1/n) ZᵀZ   ⇒   Â = WᵀW,   W = Z / ‖Z‖_F

so ``Â`` has the nonzero eigenvalues of the ``n × n`` matrix ``WWᵀ`` (the Gram route, used for
``n < d``). ``"pooled"`` head groups average the ``G`` matrices ``Â_h``: that is ``WᵀW`` for the
rows of all heads stacked, each head's ``W_h`` scaled by ``1/√G``. The covariance route forms
``Â`` as written (so an exactly rank-one ``Â`` gives an entropy of exactly 0 with ``eps=0``).

Decisions where ``matrix.md`` is silent, kept on every face:

- Zero-norm rows (``‖x̃_i‖ ≤ zero_tol · max_j ‖x_j‖``) are dropped with or without row
  normalisation (without it they add nothing to ``A`` but would count in ``n``).
- ``n`` in the ``"log_rank"`` divisor counts the kept rows; for a ``"pooled"`` group the rank
  bound is ``min(Σ_h r_h, d)`` over the heads' own bounds ``r_h``.
- A problem with no row left has an all-zero spectrum and entropy ``0.0``; a ``"pooled"`` group
  averages the heads that have rows left.
- ``matrix_renyi2`` with ``normalize=None`` is in nats (it has no ``base``); ``"log_k"`` is not
  one of its divisors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entcore.reference._layout import as_array, bool_array, choice, float64_array, integer, real

__all__ = ["group_heads", "matrix_entropy", "matrix_renyi2", "matrix_spectrum"]

TRUNCATIONS = ("partial", "renormalized")
NORMALIZE_ENTROPY = ("log_d", "log_k", "log_rank", None)
NORMALIZE_RENYI2 = ("log_d", "log_rank", None)
METHODS = ("auto", "covariance", "gram")
GROUP_REDUCE = ("mean", "max", "sum", "pooled")
HEAD_REDUCE = ("mean", "max", "sum", "min")
NAN_POLICIES = ("raise", "propagate")


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def matrix_spectrum(
    x: Any,
    *,
    center: bool = True,
    row_normalize: bool = True,
    mask: Any = None,
    method: str = "auto",
    zero_tol: float = 1e-10,
) -> np.ndarray:
    """Spectrum ``λ_1 ≥ … ≥ λ_d ≥ 0``, ``Σ λ = 1``, of ``Â`` (``matrix.md`` §1.1, §1.2 steps 1–4).

    Steps: centre over the valid tokens, drop zero-norm rows, L2-normalise rows,
    ``A = (1/n) Σ z_i z_iᵀ``, ``Â = A / tr A``; eigenvalues of the symmetric ``Â`` (or of the
    ``n × n`` Gram matrix, zero-padded to ``d``, for ``method="gram"`` or ``"auto"`` with
    ``n < d``) in float64, clamped at 0, sorted descending. No row left → all zeros.
    Returns float64 ``(..., d)``. NaN or ``±inf`` at a valid row → ``ValueError``.

    Ref: UNComp, arXiv 2410.03090 (``cal_cov_4``); ``matrix.md`` §0 (symmetric eigensolver, never
    an SVD of the ``N × d`` matrix).
    """
    xs, valid = _token_sets(x, mask)
    check_flag("center", center)
    check_flag("row_normalize", row_normalize)
    method = choice("method", method, METHODS)
    zero_tol = real("zero_tol", zero_tol, low=0.0)
    _check_values(xs, valid, propagate=False)
    d = xs.shape[-1]
    out = np.zeros(xs.shape[:-2] + (d,))
    for index in np.ndindex(*xs.shape[:-2]):
        head = _normalized_rows(xs[index], valid[index], center, row_normalize, zero_tol)
        out[index] = _unit_spectrum([head], d, method) if head.n else np.zeros(d)
    return out


def matrix_entropy(
    x: Any,
    *,
    k: int | None = 32,
    truncation: str = "partial",
    normalize: str | None = "log_d",
    center: bool = True,
    row_normalize: bool = True,
    eps: float = 1e-10,
    base: float = math.e,
    mask: Any = None,
    group_size: int | None = None,
    group_reduce: str = "mean",
    method: str = "auto",
    zero_tol: float = 1e-10,
    nan_policy: str = "raise",
) -> np.ndarray:
    """UNComp's truncated matrix entropy of each token set (``matrix.md`` §1.2).

    With ``λ = spec(Â) + eps`` (``Â`` from :func:`matrix_spectrum`) and ``k' = min(k, d)``
    (``k=None`` → ``d``)::

        "partial":      H = −Σ_{i≤k'} λ_i ln λ_i               (UNComp, no renormalisation)
        "renormalized": H = −Σ_{i≤k'} p_i ln p_i,  p_i = λ_i / Σ_{j≤k'} λ_j

    divided by ``ln d`` (``"log_d"``), ``ln k'`` (``"log_k"``), ``ln r`` with
    ``r = min(n − 1, d)`` if centred else ``min(n, d)`` (``"log_rank"``) or ``ln base``
    (``None``); a divisor of 0, or no row left, gives ``0.0``. ``0 · ln 0 = 0``.

    ``group_size=G``: axis ``−3`` of ``x`` holds ``H_q`` query heads, head ``h`` belongs to KV
    head ``h // G``; ``group_reduce`` ``"mean" | "max" | "sum"`` reduces the per-query-head
    values, ``"pooled"`` averages the ``G`` matrices ``Â`` before adding ``eps``.
    Returns float64 ``x.shape[:-2]`` (axis ``−3`` of ``x`` divided by ``G``).

    Ref: UNComp, arXiv 2410.03090 (``cal_entropy_no_group_svd``, ``svdn = 32``);
    Matrix-Entropy / Diff-eRank, arXiv 2401.17139 (``k=None``).
    """
    xs, valid = _token_sets(x, mask)
    d = xs.shape[-1]
    if k is not None:
        k = integer("k", k, low=1)
    kk = d if k is None else min(k, d)
    truncation = choice("truncation", truncation, TRUNCATIONS)
    normalize = check_normalize(normalize, NORMALIZE_ENTROPY)
    check_flag("center", center)
    check_flag("row_normalize", row_normalize)
    eps = check_eps(eps)
    base = check_base(base)
    method = choice("method", method, METHODS)
    zero_tol = real("zero_tol", zero_tol, low=0.0)
    propagate = choice("nan_policy", nan_policy, NAN_POLICIES) == "propagate"
    group_reduce = choice("group_reduce", group_reduce, GROUP_REDUCE)
    group = check_group(xs.shape, group_size)
    nan = _check_values(xs, valid, propagate=propagate)

    def value(heads: list[_Head]) -> float:
        kept = [h for h in heads if h.n > 0]
        if not kept:
            return 0.0
        lam = _unit_spectrum(kept, d, method) + eps
        top = lam[:kk]
        if truncation == "renormalized":
            top = top / top.sum()
        h_nats = -float(np.sum(_xlogx(top)))
        divisor = _divisor(normalize, d=d, k=kk, rank=_rank_bound(kept, d), base=base)
        return 0.0 if divisor == 0.0 else h_nats / divisor

    return _per_problem(xs, valid, nan, group, group_reduce, value, center, row_normalize, zero_tol)


def matrix_renyi2(
    x: Any,
    *,
    normalize: str | None = "log_d",
    center: bool = True,
    row_normalize: bool = True,
    mask: Any = None,
    group_size: int | None = None,
    group_reduce: str = "mean",
    zero_tol: float = 1e-10,
) -> np.ndarray:
    """Rényi-2 matrix entropy ``H_2 = −ln tr(Â²) = −ln ‖Â‖_F²`` without eigendecomposition.

    ``Â = WᵀW`` as in :func:`matrix_spectrum` (``matrix.md`` §1.3), so
    ``‖Â‖_F² = ‖WᵀW‖_F² = ‖WWᵀ‖_F² = Σ_{i,j} (w_i·w_j)²``; the smaller of the two products is
    formed. Divided by ``ln d`` (``"log_d"``), ``ln r`` (``"log_rank"``, ``r`` as in
    :func:`matrix_entropy`), or nothing (``None``: nats); divisor 0 or no row left → ``0.0``.
    Grouping as in :func:`matrix_entropy`. NaN or ``±inf`` at a valid row → ``ValueError``.
    Returns float64 ``x.shape[:-2]``.

    Ref: Sanchez Giraldo, Rao & Principe, "Measures of Entropy from Data Using Infinitely
    Divisible Kernels", arXiv 1211.2459 (the ``α = 2`` Frobenius identity).
    """
    xs, valid = _token_sets(x, mask)
    d = xs.shape[-1]
    normalize = check_normalize(normalize, NORMALIZE_RENYI2)
    check_flag("center", center)
    check_flag("row_normalize", row_normalize)
    zero_tol = real("zero_tol", zero_tol, low=0.0)
    group_reduce = choice("group_reduce", group_reduce, GROUP_REDUCE)
    group = check_group(xs.shape, group_size)
    nan = _check_values(xs, valid, propagate=False)

    def value(heads: list[_Head]) -> float:
        kept = [h for h in heads if h.n > 0]
        if not kept:
            return 0.0
        h_nats = -math.log(_unit_frobenius2(kept, d))
        divisor = _divisor(normalize, d=d, k=d, rank=_rank_bound(kept, d), base=math.e)
        return 0.0 if divisor == 0.0 else h_nats / divisor

    return _per_problem(xs, valid, nan, group, group_reduce, value, center, row_normalize, zero_tol)


def group_heads(
    values: Any, *, group_size: int, reduce: str = "mean", axis: int = -1
) -> np.ndarray:
    """Reduce a per-query-head array to KV heads (``matrix.md`` §1.4).

    Query head ``h`` belongs to KV head ``h // group_size`` (HF ``repeat_kv`` order); the
    ``G = group_size`` values of a group are reduced by ``"mean" | "max" | "sum" | "min"``
    (NaN propagates). ``H_q`` not a multiple of ``G`` → ``ValueError``. Returns float64 with
    axis ``axis`` of length ``H_q / G``.

    Ref: UNComp, arXiv 2410.03090 (GQA head groups); HF transformers ``repeat_kv``.
    """
    array = as_array("values", values)
    if array.dtype.kind not in "biuf" and array.dtype.name != "bfloat16":
        raise TypeError(f"values: expected a real array, got dtype {array.dtype}")
    array = array.astype(np.float64)
    group_size = integer("group_size", group_size, low=1)
    reduce = choice("reduce", reduce, HEAD_REDUCE)
    axis = integer("axis", axis)
    if array.ndim == 0 or not -array.ndim <= axis < array.ndim:
        raise ValueError(f"axis: {axis} is out of range for values of shape {array.shape}")
    moved = np.moveaxis(array, axis, -1)
    n_heads = moved.shape[-1]
    if n_heads % group_size != 0:
        raise ValueError(
            f"group_size: the head axis has length {n_heads}, not a multiple of {group_size}"
        )
    grouped = moved.reshape(moved.shape[:-1] + (n_heads // group_size, group_size))
    reduced = {"mean": np.mean, "max": np.max, "sum": np.sum, "min": np.min}[reduce](
        grouped, axis=-1
    )
    return np.moveaxis(reduced, -1, axis)


# ---------------------------------------------------------------------------------------------
# Steps of matrix.md §1.2
# ---------------------------------------------------------------------------------------------


class _Head:
    """The kept rows ``Z`` of one problem (centred, row-normalised), their count ``n`` and the
    rank bound ``r`` of the ``"log_rank"`` divisor."""

    def __init__(self, z: np.ndarray, n: int, rank: int) -> None:
        self.z = z
        self.n = n
        self.rank = rank


def _normalized_rows(
    x: np.ndarray, valid: np.ndarray, center: bool, row_normalize: bool, zero_tol: float
) -> _Head:
    """Steps 1–2 of ``matrix.md`` §1.2 for one ``(N, d)`` problem (finite valid rows)."""
    rows = x[valid]
    if rows.shape[0] == 0:
        raise ValueError("mask: a token set has no valid row (n = 0)")
    scale = float(np.max(np.linalg.norm(rows, axis=1)))
    if center:
        rows = rows - rows.mean(axis=0)
    norms = np.linalg.norm(rows, axis=1)
    keep = norms > zero_tol * scale
    z = rows[keep]
    n = z.shape[0]
    rank = min(n - 1, x.shape[1]) if center else min(n, x.shape[1])
    if row_normalize:
        z = z / norms[keep][:, None]
    return _Head(z, n, max(rank, 0))


def _unit_spectrum(heads: list[_Head], d: int, method: str) -> np.ndarray:
    """Steps 3–4 and the eigenvalues of ``Â`` (clamped at 0, descending, length ``d``) for the
    heads of one unit that have rows left: ``Â = mean_h A_h / tr A_h``, ``A_h = (1/n_h) Z_hᵀZ_h``.

    Gram route: ``Â = WᵀW`` with the rows of every head stacked as ``W_h = Z_h / √(G n_h tr A_h)``,
    so ``Â`` has the nonzero eigenvalues of ``WWᵀ``, zero-padded (or cut) to ``d``."""
    m = sum(h.n for h in heads)
    if method == "gram" or (method == "auto" and m < d):
        w = np.concatenate([h.z / math.sqrt(len(heads) * float(np.sum(h.z * h.z))) for h in heads])
        matrix = w @ w.T
    else:
        matrix = np.zeros((d, d))
        for h in heads:
            a = h.z.T @ h.z / h.n
            matrix += a / np.trace(a)
        matrix /= len(heads)
    a_hat = matrix / np.trace(matrix)
    lam = np.clip(np.linalg.eigvalsh(a_hat)[::-1], 0.0, None)
    out = np.zeros(d)
    out[: min(d, lam.shape[0])] = lam[:d]
    return out


def _unit_frobenius2(heads: list[_Head], d: int) -> float:
    """``‖Â‖_F² = ‖WᵀW‖_F² = ‖WWᵀ‖_F²`` (``matrix.md`` §1.3), the smaller product formed."""
    w = np.concatenate([h.z / math.sqrt(len(heads) * float(np.sum(h.z * h.z))) for h in heads])
    small = w @ w.T if w.shape[0] < d else w.T @ w
    small = small / np.trace(small)
    return float(np.sum(small * small))


def _xlogx(p: np.ndarray) -> np.ndarray:
    """``p ln p`` with ``0 ln 0 = 0``."""
    safe = np.where(p > 0, p, 1.0)
    return np.where(p > 0, p * np.log(safe), 0.0)


def _rank_bound(heads: list[_Head], d: int) -> int:
    return min(sum(h.rank for h in heads), d)


def _divisor(normalize: str | None, *, d: int, k: int, rank: int, base: float) -> float:
    """The step-7 divisor (``matrix.md`` §1.2); 0 for ``d = 1``, ``k = 1``, ``r ≤ 1``."""
    if normalize == "log_d":
        return math.log(d)
    if normalize == "log_k":
        return math.log(k)
    if normalize == "log_rank":
        return math.log(rank) if rank > 1 else 0.0
    return math.log(base)


def _per_problem(
    xs: np.ndarray,
    valid: np.ndarray,
    nan: np.ndarray,
    group: int,
    group_reduce: str,
    value: Any,
    center: bool,
    row_normalize: bool,
    zero_tol: float,
) -> np.ndarray:
    """``value`` per problem, or per head group along axis −3 of ``x`` (``matrix.md`` §1.2,
    Heads and GQA). Problems holding NaN at a valid row give NaN (``nan_policy="propagate"``)."""
    lead = xs.shape[:-2]
    if group == 1:
        out = np.zeros(lead)
        for index in np.ndindex(*lead):
            if nan[index]:
                out[index] = math.nan
                continue
            head = _normalized_rows(xs[index], valid[index], center, row_normalize, zero_tol)
            out[index] = value([head])
        return out
    out = np.zeros(lead[:-1] + (lead[-1] // group,))
    for index in np.ndindex(*out.shape):
        members = [index[:-1] + (index[-1] * group + g,) for g in range(group)]
        if any(nan[m] for m in members):
            out[index] = math.nan
            continue
        heads = [
            _normalized_rows(xs[m], valid[m], center, row_normalize, zero_tol) for m in members
        ]
        if group_reduce == "pooled":
            out[index] = value(heads)
        else:
            per_head = np.array([value([h]) for h in heads])
            out[index] = {"mean": np.mean, "max": np.max, "sum": np.sum}[group_reduce](per_head)
    return out


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _token_sets(x: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float64 ``(..., N, d)`` and the valid-row mask broadcast to ``x.shape[:-1]``."""
    xs = float64_array("x", x)
    if xs.ndim < 2:
        raise ValueError(f"x: expected shape (..., N, d), got {xs.shape}")
    if xs.shape[-1] == 0:
        raise ValueError(f"x: expected d >= 1 features, got shape {xs.shape}")
    if mask is None:
        return xs, np.ones(xs.shape[:-1], dtype=bool)
    return xs, row_mask(mask, xs.shape[:-1])


def row_mask(mask: Any, rows_shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` (bool or 0/1) broadcast to ``x.shape[:-1]`` (``matrix.md`` §0), read-only."""
    m = bool_array("mask", mask)
    try:
        return np.broadcast_to(m, rows_shape)
    except ValueError:
        raise ValueError(
            f"mask: shape {m.shape} does not broadcast to x.shape[:-1] = {rows_shape}"
        ) from None


def _check_values(xs: np.ndarray, valid: np.ndarray, *, propagate: bool) -> np.ndarray:
    """``±inf`` at a valid row → ``ValueError``; NaN → ``ValueError`` unless ``propagate``.

    Returns the problems that hold a NaN at a valid row. Also raises when a problem has no valid
    row (``n = 0``)."""
    if xs.shape[-2] == 0 or not np.all(np.any(valid, axis=-1)):
        raise ValueError("mask: a token set has no valid row (n = 0)")
    rows = np.where(valid[..., None], xs, 0.0)
    if np.any(np.isinf(rows)):
        raise ValueError("x: contains ±inf at a valid row")
    nan = np.any(np.isnan(rows), axis=(-2, -1))
    if np.any(nan) and not propagate:
        raise ValueError("x: contains NaN at a valid row (nan_policy='raise')")
    return nan


def check_normalize(normalize: Any, options: tuple[str | None, ...]) -> str | None:
    if normalize is None and None in options:
        return None
    if not isinstance(normalize, str) or normalize not in options:
        raise ValueError(f"normalize: expected one of {options}, got {normalize!r}")
    return normalize


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")


def check_eps(eps: Any) -> float:
    value = real("eps", eps, low=0.0)
    if not math.isfinite(value):
        raise ValueError(f"eps: expected a finite value >= 0, got {value}")
    return value


def check_base(base: Any) -> float:
    value = real("base", base, low=0.0, low_open=True)
    if not math.isfinite(value) or value == 1.0:
        raise ValueError(f"base: expected a finite value > 0 other than 1, got {value}")
    return value


def check_group(shape: tuple[int, ...], group_size: Any) -> int:
    """``1`` without grouping; else ``G`` after checking axis −3 of ``x`` is a multiple of it."""
    if group_size is None:
        return 1
    group = integer("group_size", group_size, low=1)
    if len(shape) < 3:
        raise ValueError(f"group_size: x needs a head axis (-3), got shape {shape}")
    if shape[-3] % group != 0:
        raise ValueError(
            f"group_size: the head axis (-3) of x has length {shape[-3]}, not a multiple of {group}"
        )
    return group
