"""Rollout-buffer statistics for RLVR (``rollout.md``), on NumPy arrays, hot paths in Rust.

Token arrays are padded ``(B, L)`` with a mask, or packed ``(N,)`` with ``cu_seqlens``
(``rollout.md`` §0.1); unit-based statistics take ``scope`` and ``micro_batch`` (§0.2). Names,
arguments and defaults match ``entcore.reference.rollout`` (the float64 oracle).
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from entcore import _core
from entcore._layout import token_layout, unit_rows, unit_tokens

__all__ = ["high_entropy_mask"]

MASK_METHODS = ("linear", "lower", "nearest", "topk")
MASK_NAN_POLICIES = ("raise", "omit")


def high_entropy_mask(
    entropy: Any,
    mask: Any = None,
    *,
    rho: float = 0.2,
    method: str = "linear",
    cu_seqlens: Any = None,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    nan_policy: str = "raise",
    return_threshold: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The forking-token mask: the valid tokens whose entropy is in the top ``ρ`` of their unit.

    Per unit with sorted valid entropies ``x_(0) ≤ … ≤ x_(N−1)`` and ``h = (N − 1)(1 − ρ)``
    (snapped to an integer within ``2⁻³⁰·max(1, h)``):
    ``"linear"`` (TRL's ``torch.quantile`` then ``>=``) keeps ``H ≥ x_(⌈h⌉)`` with threshold
    ``τ = x_(⌊h⌋) + (h − ⌊h⌋)(x_(⌈h⌉) − x_(⌊h⌋))``; ``"lower"`` keeps ``H ≥ x_(⌊h⌋)``;
    ``"nearest"`` uses index ``round_half_even(h)``; ``"topk"`` keeps exactly ``⌈ρN⌉`` tokens, ties
    by lower index. Ties at the threshold are all kept (except ``"topk"``); an empty unit keeps
    nothing. Exact for any ``N``: an O(N) radix select in the Rust core, no sort, no size limit.

    Returns the bool mask in the layout of ``entropy`` and, with ``return_threshold=True``, the
    float64 ``τ`` of each unit (NaN for an empty unit).

    Wang et al., "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective
    Reinforcement Learning for LLM Reasoning", arXiv 2506.01939, §5.1; TRL
    ``GRPOTrainer.get_high_entropy_mask`` (``top_entropy_quantile``). Spec: ``rollout.md`` §3.
    """
    if method not in MASK_METHODS:
        raise ValueError(f"method: expected one of {MASK_METHODS}, got {method!r}")
    if nan_policy not in MASK_NAN_POLICIES:
        raise ValueError(f"nan_policy: expected one of {MASK_NAN_POLICIES}, got {nan_policy!r}")
    rho = float(rho)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho: expected a value in [0, 1], got {rho}")
    values = _entropy_f32(entropy)
    layout, valid = token_layout("entropy", values, mask, cu_seqlens)
    flat = values.reshape(-1)
    units = unit_rows(layout.rows, scope, micro_batch)
    out = np.zeros(flat.shape[0], dtype=bool)
    thresholds = np.empty(len(units), dtype=np.float64)
    omit = nan_policy == "omit"
    for u, rows in enumerate(units):
        tokens = unit_tokens(layout, rows)
        if tokens == slice(0, flat.shape[0]):  # the whole buffer: no copy
            unit_values, unit_valid = flat, valid
        else:
            unit_values = np.ascontiguousarray(flat[tokens])
            unit_valid = None if valid is None else np.ascontiguousarray(valid[tokens])
        selected, tau, _, _ = _core.high_entropy_select(
            unit_values, unit_valid, rho, method, omit
        )
        out[tokens] = selected
        thresholds[u] = tau
    mask_out = out.reshape(values.shape)
    return (mask_out, thresholds) if return_threshold else mask_out


def _entropy_f32(entropy: Any) -> np.ndarray:
    """Entropies as float32 (the spec's ``x`` values): float16/bfloat16 widened exactly."""
    array = np.asarray(entropy)
    if array.dtype not in (np.float32, np.float64, np.float16, np.dtype(ml_dtypes.bfloat16)):
        raise TypeError(f"entropy: expected a float array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)
