"""Matrix entropy of token sets (``matrix.md`` §1) on NumPy arrays, backed by the Rust core.

``x (..., N, d)`` in float32, float16, ``ml_dtypes.bfloat16`` or float64 is read in place (half
precision as its 16-bit pattern, no float32 copy of the input). Per head (every leading index),
the core takes the mean over the valid tokens in float64, centres (in float32 lanes against the
mean split into two float32 parts, or in float64 for float64 input), drops zero-norm rows,
L2-normalises rows, forms the lower triangle of ``A = (1/n) Σ z zᵀ`` by float32 products over
chunks of 32 rows, gathered in float32 over groups of 8 chunks and added in float64, divides by
the trace and takes the eigenvalues with a float64 symmetric eigensolver (Householder
tridiagonalisation, one fused pass per reflection up to d = 768 and faer's blocked reduction
above, then root-free QL; never an SVD). Heads run in parallel on entcore's pool with the GIL
released; results do not depend on the thread count. For ``n < d`` (``method="auto"``) the
``n × n`` Gram matrix gives the same nonzero spectrum.

Entropies are float32, spectra float64 (``matrix.md`` §0). Names, arguments, defaults and the
decisions where the spec is silent are those of :mod:`entcore.reference.matrix`;
:func:`group_heads` (a reshape and a reduction) is the reference function itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entcore import _core
from entcore._arrays import as_core_float, check_nan_policy
from entcore.reference._layout import choice, integer, real
from entcore.reference.matrix import (
    GROUP_REDUCE,
    METHODS,
    NORMALIZE_ENTROPY,
    NORMALIZE_RENYI2,
    TRUNCATIONS,
    check_base,
    check_eps,
    check_flag,
    check_group,
    check_normalize,
    group_heads,
    row_mask,
)

__all__ = ["group_heads", "matrix_entropy", "matrix_renyi2", "matrix_spectrum"]


def matrix_spectrum(
    x: Any,
    *,
    center: bool = True,
    row_normalize: bool = True,
    mask: Any = None,
    method: str = "auto",
    zero_tol: float = 1e-10,
) -> np.ndarray:
    """Spectrum ``λ_1 ≥ … ≥ λ_d ≥ 0``, ``Σ λ = 1``, of ``Â`` (``matrix.md`` §1.1), float64
    ``(..., d)``; all zeros for a token set with no row left. See
    :func:`entcore.reference.matrix.matrix_spectrum`.

    Ref: UNComp, arXiv 2410.03090 (``cal_cov_4``).
    """
    sets = _TokenSets(x, mask)
    check_flag("center", center)
    check_flag("row_normalize", row_normalize)
    method = choice("method", method, METHODS)
    zero_tol = real("zero_tol", zero_tol, low=0.0)
    out = _core.matrix_spectrum(
        sets.flat, sets.kind, sets.mask, sets.problems, sets.rows, sets.d,
        center, row_normalize, zero_tol, method,
    )  # fmt: skip
    return out.reshape(sets.lead + (sets.d,))


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
    """UNComp's truncated matrix entropy of each token set (``matrix.md`` §1.2), float32.

    ``λ = spec(Â) + eps``; ``"partial"``: ``−Σ_{i≤k} λ_i ln λ_i`` (UNComp, default ``k = 32``),
    ``"renormalized"``: the entropy of the top-``k`` renormalised; ``k=None``: von Neumann
    entropy of ``Â``; divided by ``ln d`` / ``ln min(k, d)`` / ``ln r`` / ``ln base``.
    ``group_size=G`` reduces the query-head axis ``−3`` to KV heads (``h // G``) by
    ``group_reduce`` (``"pooled"`` averages the ``Â`` of a group before the eigenvalues); the
    KV cache is never expanded. See :func:`entcore.reference.matrix.matrix_entropy`.

    Ref: UNComp, arXiv 2410.03090 (``cal_entropy_no_group_svd``); Diff-eRank, arXiv 2401.17139.
    """
    sets = _TokenSets(x, mask)
    if k is not None:
        k = integer("k", k, low=1)
    truncation = choice("truncation", truncation, TRUNCATIONS)
    normalize = check_normalize(normalize, NORMALIZE_ENTROPY)
    check_flag("center", center)
    check_flag("row_normalize", row_normalize)
    eps = check_eps(eps)
    base = check_base(base)
    method = choice("method", method, METHODS)
    zero_tol = real("zero_tol", zero_tol, low=0.0)
    propagate = check_nan_policy(nan_policy)
    group_reduce = choice("group_reduce", group_reduce, GROUP_REDUCE)
    group = check_group(sets.shape, group_size)
    pool = group if group_reduce == "pooled" else 1
    values = _core.matrix_entropy(
        sets.flat, sets.kind, sets.mask, sets.problems, sets.rows, sets.d, pool,
        center, row_normalize, zero_tol, method,
        k, truncation == "renormalized", normalize, base, eps, propagate,
    )  # fmt: skip
    return _grouped(values, sets.lead, group, group_reduce)


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
    """Rényi-2 matrix entropy ``−ln ‖Â‖_F²`` over the ``matrix.md`` §1.2 divisor, without
    eigendecomposition (``matrix.md`` §1.3), float32. See
    :func:`entcore.reference.matrix.matrix_renyi2`.

    Ref: Sanchez Giraldo et al., arXiv 1211.2459 (the ``α = 2`` Frobenius identity).
    """
    sets = _TokenSets(x, mask)
    normalize = check_normalize(normalize, NORMALIZE_RENYI2)
    check_flag("center", center)
    check_flag("row_normalize", row_normalize)
    zero_tol = real("zero_tol", zero_tol, low=0.0)
    group_reduce = choice("group_reduce", group_reduce, GROUP_REDUCE)
    group = check_group(sets.shape, group_size)
    pool = group if group_reduce == "pooled" else 1
    values = _core.matrix_renyi2(
        sets.flat, sets.kind, sets.mask, sets.problems, sets.rows, sets.d, pool,
        center, row_normalize, zero_tol, normalize,
    )  # fmt: skip
    return _grouped(values, sets.lead, group, group_reduce)


class _TokenSets:
    """``x (..., N, d)`` flattened for the core, with its mask broadcast to ``x.shape[:-1]``."""

    def __init__(self, x: Any, mask: Any) -> None:
        array, self.kind = as_core_float("x", x, min_ndim=2)
        self.shape: tuple[int, ...] = array.shape
        self.lead: tuple[int, ...] = array.shape[:-2]
        self.rows, self.d = array.shape[-2:]
        if self.d == 0:
            raise ValueError(f"x: expected d >= 1 features, got shape {array.shape}")
        self.problems = math.prod(self.lead)
        self.flat = array.reshape(-1)
        self.mask = (
            None
            if mask is None
            else np.ascontiguousarray(row_mask(mask, array.shape[:-1])).reshape(-1)
        )


def _grouped(
    values: np.ndarray, lead: tuple[int, ...], group: int, group_reduce: str
) -> np.ndarray:
    """Per-unit float64 values from the core as float32 ``lead`` (axis −1 divided by ``G``)."""
    if group > 1 and group_reduce == "pooled":
        return values.reshape(lead[:-1] + (lead[-1] // group,)).astype(np.float32)
    values = values.reshape(lead)
    if group > 1:
        values = group_heads(values, group_size=group, reduce=group_reduce, axis=-1)
    return values.astype(np.float32)
