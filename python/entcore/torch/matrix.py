"""Matrix entropy of token sets (``matrix.md`` §1) on torch tensors, any device, differentiable.

Every step runs in float64 on the input's device (CUDA tensors stay on the GPU): centring over
the valid tokens, dropping zero-norm rows, row normalisation, ``Â = A / tr A`` batched over every
leading axis, and ``torch.linalg.eigvalsh`` (a symmetric eigensolver, never an SVD). Gradients
flow through ``eigvalsh``; at a tie between ``λ_k`` and ``λ_{k+1}`` the gradient is that of one
ordering, and ``eps`` (default ``1e-10``) keeps it finite on rank-deficient matrices.

Entropies are float32 tensors (float64 for float64 input), spectra float64. Names, arguments,
defaults and the decisions where the spec is silent are those of
:mod:`entcore.reference.matrix`. ``method="auto"`` picks the Gram route when the padded token
count ``N`` is below ``d`` (the same nonzero spectrum); ``"pooled"`` groups always average the
``d × d`` matrices.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from entcore.reference._layout import choice, integer, real
from entcore.reference.matrix import (
    GROUP_REDUCE,
    HEAD_REDUCE,
    METHODS,
    NAN_POLICIES,
    NORMALIZE_ENTROPY,
    NORMALIZE_RENYI2,
    TRUNCATIONS,
    check_base,
    check_eps,
    check_flag,
    check_group,
    check_normalize,
)

__all__ = ["group_heads", "matrix_entropy", "matrix_renyi2", "matrix_spectrum"]

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def matrix_spectrum(
    x: torch.Tensor,
    *,
    center: bool = True,
    row_normalize: bool = True,
    mask: Any = None,
    method: str = "auto",
    zero_tol: float = 1e-10,
) -> torch.Tensor:
    """Spectrum ``λ_1 ≥ … ≥ λ_d ≥ 0``, ``Σ λ = 1``, of ``Â`` (``matrix.md`` §1.1), float64
    ``(..., d)`` on ``x.device``; all zeros for a token set with no row left.

    Ref: UNComp, arXiv 2410.03090 (``cal_cov_4``).
    """
    sets = _TokenSets(x, mask, propagate=False)
    check_flag("center", center)
    check_flag("row_normalize", row_normalize)
    method = choice("method", method, METHODS)
    zero_tol = real("zero_tol", zero_tol, low=0.0)
    z, n = sets.normalized(center, row_normalize, zero_tol)
    return _eigenvalues(_normalized_matrix(z, n, method), sets.d)


def matrix_entropy(
    x: torch.Tensor,
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
) -> torch.Tensor:
    """UNComp's truncated matrix entropy of each token set (``matrix.md`` §1.2).

    ``λ = spec(Â) + eps``; ``"partial"``: ``−Σ_{i≤k} λ_i ln λ_i`` (UNComp, ``k = 32``),
    ``"renormalized"``: the entropy of the renormalised top ``k``; ``k=None``: von Neumann
    entropy of ``Â``; divided by ``ln d`` / ``ln min(k, d)`` / ``ln r`` / ``ln base`` (divisor
    0 or no row left → 0). ``group_size=G`` reduces the query-head axis ``−3`` to KV heads.

    Ref: UNComp, arXiv 2410.03090 (``cal_entropy_no_group_svd``); Diff-eRank, arXiv 2401.17139.
    """
    propagate = choice("nan_policy", nan_policy, NAN_POLICIES) == "propagate"
    sets = _TokenSets(x, mask, propagate=propagate)
    d = sets.d
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
    group_reduce = choice("group_reduce", group_reduce, GROUP_REDUCE)
    group = check_group(tuple(x.shape), group_size)

    def value(a_hat: torch.Tensor, n: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        top = (_eigenvalues(a_hat, d) + eps)[..., :kk]
        if truncation == "renormalized":
            top = top / top.sum(dim=-1, keepdim=True)
        h = -torch.xlogy(top, top).sum(dim=-1)
        return _divide(h, normalize, d=d, k=kk, rank=rank, base=base, empty=n == 0)

    out = _per_unit(sets, value, group, group_reduce, center, row_normalize, zero_tol, method)
    return out.to(sets.out_dtype)


def matrix_renyi2(
    x: torch.Tensor,
    *,
    normalize: str | None = "log_d",
    center: bool = True,
    row_normalize: bool = True,
    mask: Any = None,
    group_size: int | None = None,
    group_reduce: str = "mean",
    zero_tol: float = 1e-10,
) -> torch.Tensor:
    """Rényi-2 matrix entropy ``−ln ‖Â‖_F²`` over the ``matrix.md`` §1.2 divisor, without
    eigendecomposition (``matrix.md`` §1.3); ``normalize=None``: nats.

    Ref: Sanchez Giraldo et al., arXiv 1211.2459 (the ``α = 2`` Frobenius identity).
    """
    sets = _TokenSets(x, mask, propagate=False)
    normalize = check_normalize(normalize, NORMALIZE_RENYI2)
    check_flag("center", center)
    check_flag("row_normalize", row_normalize)
    zero_tol = real("zero_tol", zero_tol, low=0.0)
    group_reduce = choice("group_reduce", group_reduce, GROUP_REDUCE)
    group = check_group(tuple(x.shape), group_size)
    d = sets.d

    def value(a_hat: torch.Tensor, n: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        frob2 = (a_hat * a_hat).sum(dim=(-2, -1))
        h = -torch.log(torch.where(n > 0, frob2, 1.0))
        return _divide(h, normalize, d=d, k=d, rank=rank, base=math.e, empty=n == 0)

    out = _per_unit(sets, value, group, group_reduce, center, row_normalize, zero_tol, "auto")
    return out.to(sets.out_dtype)


def group_heads(
    values: torch.Tensor, *, group_size: int, reduce: str = "mean", axis: int = -1
) -> torch.Tensor:
    """Reduce a per-query-head tensor to KV heads (``matrix.md`` §1.4): query head ``h`` belongs
    to KV head ``h // group_size``; ``"mean" | "max" | "sum" | "min"`` (NaN propagates). Integer
    or bool values are reduced as float32.

    Ref: UNComp, arXiv 2410.03090 (GQA head groups); HF transformers ``repeat_kv``.
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values: expected a torch tensor, got {type(values).__name__}")
    group_size = integer("group_size", group_size, low=1)
    reduce = choice("reduce", reduce, HEAD_REDUCE)
    axis = integer("axis", axis)
    if values.ndim == 0 or not -values.ndim <= axis < values.ndim:
        raise ValueError(f"axis: {axis} is out of range for values of shape {tuple(values.shape)}")
    if not values.is_floating_point():
        values = values.to(torch.float32)
    moved = values.movedim(axis, -1)
    n_heads = moved.shape[-1]
    if n_heads % group_size != 0:
        raise ValueError(
            f"group_size: the head axis has length {n_heads}, not a multiple of {group_size}"
        )
    grouped = moved.reshape(*moved.shape[:-1], n_heads // group_size, group_size)
    reduced = _REDUCE[reduce](grouped)
    return reduced.movedim(-1, axis)


_REDUCE = {
    "mean": lambda t: t.mean(dim=-1),
    "max": lambda t: t.amax(dim=-1),
    "sum": lambda t: t.sum(dim=-1),
    "min": lambda t: t.amin(dim=-1),
}


# ---------------------------------------------------------------------------------------------
# Steps of matrix.md §1.2, batched over every leading axis
# ---------------------------------------------------------------------------------------------


class _TokenSets:
    """``x (..., N, d)`` in float64 on its device, the valid rows, and the problems holding NaN
    at a valid row (``nan``; an error unless ``propagate``)."""

    def __init__(self, x: Any, mask: Any, *, propagate: bool) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"x: expected float32, float16, bfloat16 or float64, got dtype {x.dtype}"
            )
        if x.ndim < 2:
            raise ValueError(f"x: expected shape (..., N, d), got {tuple(x.shape)}")
        self.d = x.shape[-1]
        if self.d == 0:
            raise ValueError(f"x: expected d >= 1 features, got shape {tuple(x.shape)}")
        self.out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.valid = _row_mask(mask, x)
        if x.shape[:-2].numel() > 0 and not bool(self.valid.any(dim=-1).all()):
            raise ValueError("mask: a token set has no valid row (n = 0)")
        xs = x.to(torch.float64)
        at_valid = self.valid.unsqueeze(-1)
        if bool((torch.isinf(xs) & at_valid).any()):
            raise ValueError("x: contains ±inf at a valid row")
        self.nan = (torch.isnan(xs) & at_valid).any(dim=-1).any(dim=-1)
        if not propagate and bool(self.nan.any()):
            raise ValueError("x: contains NaN at a valid row (nan_policy='raise')")
        # Padding and NaN problems are zeros from here on (their results are set apart).
        keep = at_valid & ~self.nan[..., None, None]
        self.x = torch.where(keep, xs, torch.zeros((), dtype=xs.dtype, device=xs.device))
        self.valid = self.valid & ~self.nan[..., None]

    def normalized(
        self, center: bool, row_normalize: bool, zero_tol: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1–2: the kept rows ``z`` (dropped and padded rows are 0) and their count ``n``."""
        x, valid = self.x, self.valid
        scale = torch.linalg.vector_norm(x.detach(), dim=-1).amax(dim=-1, keepdim=True)
        if center:
            count = valid.sum(dim=-1).clamp(min=1).to(x.dtype)
            mean = x.sum(dim=-2) / count[..., None]
            x = torch.where(valid.unsqueeze(-1), x - mean.unsqueeze(-2), 0.0)
        norms = torch.linalg.vector_norm(x, dim=-1)
        keep = valid & (norms > zero_tol * scale)
        if row_normalize:
            x = x / torch.where(keep, norms, 1.0).unsqueeze(-1)
        z = torch.where(keep.unsqueeze(-1), x, 0.0)
        return z, keep.sum(dim=-1)


def _row_mask(mask: Any, x: torch.Tensor) -> torch.Tensor:
    """``mask`` (bool or 0/1) broadcast to ``x.shape[:-1]`` on ``x.device``."""
    rows_shape = x.shape[:-1]
    if mask is None:
        return torch.ones(rows_shape, dtype=torch.bool, device=x.device)
    try:
        m = torch.as_tensor(mask, device=x.device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"mask: expected a bool or 0/1 tensor, got {type(mask).__name__}") from err
    if m.dtype != torch.bool:
        if m.is_complex():
            raise TypeError(f"mask: expected a bool or 0/1 tensor, got dtype {m.dtype}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask: expected bool or 0/1 values")
        m = m == 1
    try:
        return m.broadcast_to(rows_shape)
    except RuntimeError:
        raise ValueError(
            f"mask: shape {tuple(m.shape)} does not broadcast to x.shape[:-1] = {tuple(rows_shape)}"
        ) from None


def _normalized_matrix(z: torch.Tensor, n: torch.Tensor, method: str) -> torch.Tensor:
    """Steps 3–4: ``Â = A / tr A`` (``d × d``), or the trace-normalised Gram matrix ``ZZᵀ``
    (``N × N``, the same nonzero spectrum) for ``method="gram"`` or ``"auto"`` with ``N < d``."""
    rows, d = z.shape[-2:]
    gram = method == "gram" or (method == "auto" and rows < d)
    a = z @ z.mT if gram else z.mT @ z
    a = a / n.clamp(min=1).to(a.dtype)[..., None, None]
    trace = a.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    return a / torch.where(trace > 0, trace, 1.0)[..., None, None]


def _eigenvalues(a_hat: torch.Tensor, d: int) -> torch.Tensor:
    """Eigenvalues of ``Â`` (float64), clamped at 0, descending, zero-padded or cut to ``d``."""
    lam = torch.linalg.eigvalsh(a_hat).flip(-1).clamp(min=0.0)
    size = lam.shape[-1]
    if size >= d:
        return lam[..., :d]
    return torch.nn.functional.pad(lam, (0, d - size))


def _rank(n: torch.Tensor, center: bool, d: int) -> torch.Tensor:
    """``r = min(n − 1, d)`` if centred, else ``min(n, d)`` (0 when no row is left)."""
    return (n - 1 if center else n).clamp(min=0, max=d)


def _divide(
    h: torch.Tensor,
    normalize: str | None,
    *,
    d: int,
    k: int,
    rank: torch.Tensor,
    base: float,
    empty: torch.Tensor,
) -> torch.Tensor:
    """Step 7: ``h`` over the divisor; a divisor of 0, or no row left, gives 0."""
    if normalize == "log_rank":
        divisor = torch.where(rank > 1, rank.to(h.dtype), 1.0).log()
    else:
        m = {"log_d": d, "log_k": k}.get(normalize)  # type: ignore[arg-type]
        value = math.log(base) if normalize is None else (math.log(m) if m > 1 else 0.0)
        divisor = torch.full_like(h, value)
    zero = empty | (divisor == 0)
    return torch.where(zero, 0.0, h / torch.where(zero, 1.0, divisor))


def _per_unit(
    sets: _TokenSets,
    value: Any,
    group: int,
    group_reduce: str,
    center: bool,
    row_normalize: bool,
    zero_tol: float,
    method: str,
) -> torch.Tensor:
    """``value(Â, n, r)`` per problem, or per head group along axis −3 of ``x``; NaN for problems
    that hold NaN at a valid row (``nan_policy="propagate"``)."""
    z, n = sets.normalized(center, row_normalize, zero_tol)
    d = sets.d
    rank = _rank(n, center, d)
    if group > 1 and group_reduce == "pooled":
        a_hat = _normalized_matrix(z, n, "covariance")
        lead = a_hat.shape[:-3]
        heads = a_hat.shape[-3]
        a_hat = a_hat.reshape(*lead, heads // group, group, d, d)
        has = (n > 0).reshape(*lead, heads // group, group)
        total = (a_hat * has[..., None, None].to(a_hat.dtype)).sum(dim=-3)
        trace = total.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
        pooled = total / torch.where(trace > 0, trace, 1.0)[..., None, None]
        n_unit = n.reshape(*lead, heads // group, group).sum(dim=-1)
        r_unit = rank.reshape(*lead, heads // group, group).sum(dim=-1).clamp(max=d)
        out = value(pooled, n_unit, r_unit)
        nan = sets.nan.reshape(*lead, heads // group, group).any(dim=-1)
        return torch.where(nan, math.nan, out)
    out = value(_normalized_matrix(z, n, method), n, rank)
    out = torch.where(sets.nan, math.nan, out)
    if group > 1:
        out = group_heads(out, group_size=group, reduce=group_reduce, axis=-1)
    return out
