"""Per-token entropy and log-probs from logits, on NumPy arrays, backed by the Rust core.

Every function reads each row of ``logits`` once (the fused online pass of ``token.md`` §2):
running maximum ``m``, ``s = Σ exp(z'−m)``, ``w = Σ (z'−m) exp(z'−m)`` and optionally
``q = Σ exp(2(z'−m))``, with ``z' = float32(z) / T``. Then ``H = log s − w/s`` (no cancellation,
``H ≥ 0``), ``ℓ_y = (z'_y − m) − log s`` and ``Σ p² = q / s²``. float16 and bfloat16 are widened
inside the kernel (no float32 copy of the input); results are float32, bitwise independent of the
thread count. ``-inf`` logits are masked vocabulary entries; ``+inf``, an all ``-inf`` row, and
NaN (unless ``nan_policy="propagate"``) raise ``ValueError``.

Names and defaults match ``entcore.reference.token`` (float64 oracle) and ``entcore.torch``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from entcore import _core
from entcore._arrays import (
    as_core_float,
    as_index_array,
    check_nan_policy,
    float_kind,
    row_temperatures,
)
from entcore.reference.token import nucleus_entropy  # a per-row sort: the reference serves

__all__ = [
    "TopkEntropy",
    "collision_probability",
    "nucleus_entropy",
    "renyi_entropy",
    "token_entropy",
    "token_logprob",
    "token_logprob_entropy",
    "token_logprob_entropy_linear",
    "topk_entropy",
    "topk_entropy_bounds",
]

TOPK_MODES = ("estimate", "lower", "upper", "truncated", "bucket", "renormalized")


class TopkEntropy(NamedTuple):
    """Entropy bounds from top-k log-probs (``token.md`` §7), float32 arrays."""

    lower: np.ndarray
    estimate: np.ndarray
    upper: np.ndarray


def token_entropy(logits: Any, *, temperature: Any = 1.0, nan_policy: str = "raise") -> np.ndarray:
    """Shannon entropy ``H = −Σ_j p_j log p_j`` of ``p = softmax(logits / T)``, in nats.

    Args:
        logits: ``(..., V)`` float32, float16, bfloat16 or float64, ``V ≥ 1``.
        temperature: ``T > 0``, a float or an array broadcastable to ``logits.shape[:-1]``.
        nan_policy: ``"raise"`` or ``"propagate"`` (NaN for the affected rows only).

    Returns:
        float32 array of shape ``logits.shape[:-1]``.

    Spec: ``token.md`` §2. The forking-token analysis that motivates it: Wang et al., "Beyond the
    80/20 Rule: High-Entropy Minority Tokens Drive Effective RLVR", arXiv 2506.01939.
    """
    return _token_pass(logits, None, temperature, None, False, nan_policy)[1]


def token_logprob(
    logits: Any,
    labels: Any,
    *,
    temperature: Any = 1.0,
    ignore_index: int | None = None,
    nan_policy: str = "raise",
) -> np.ndarray:
    """Log-probability ``ℓ_y = z'_y − LSE(z')`` of ``labels`` under ``softmax(logits / T)``.

    ``labels`` has shape ``logits.shape[:-1]`` or ``logits.shape[:-1] + (K,)`` (K labels per row,
    as TRL's ``selective_log_softmax``); values in ``[0, V)`` or ``ignore_index`` (→ ``ℓ = 0``).
    A label on a ``-inf`` logit gives ``-inf``. Returns float32 of shape ``labels.shape``.

    Spec: ``token.md`` §2.
    """
    return _token_pass(logits, labels, temperature, ignore_index, False, nan_policy)[0]


def token_logprob_entropy(
    logits: Any,
    labels: Any,
    *,
    temperature: Any = 1.0,
    ignore_index: int | None = None,
    return_collision: bool = False,
    nan_policy: str = "raise",
) -> tuple[np.ndarray, ...]:
    """``(logprob, entropy[, collision])`` from one pass over ``logits``.

    ``logprob`` as :func:`token_logprob`, ``entropy`` as :func:`token_entropy`, and with
    ``return_collision=True`` the collision probability ``Σ_j p_j²``
    (:func:`collision_probability`).

    Spec: ``token.md`` §2; replaces verl's ``entropy_from_logits`` + ``logprobs_from_logits`` and
    TRL's ``entropy_from_logits`` + ``selective_log_softmax`` (``token.md`` §9).
    """
    logprob, entropy, collision, _ = _token_pass(
        logits, labels, temperature, ignore_index, return_collision, nan_policy
    )
    return (logprob, entropy, collision) if return_collision else (logprob, entropy)


def collision_probability(
    logits: Any, *, temperature: Any = 1.0, nan_policy: str = "raise"
) -> np.ndarray:
    """Collision probability ``Σ_j p_j² = exp(−H₂)``, in ``[1/V_fin, 1]``.

    verl's Optimal Token Baseline uses ``1 − 2π_t + Σπ²`` as a per-token variance proxy.
    Spec: ``token.md`` §6.
    """
    return _token_pass(logits, None, temperature, None, True, nan_policy)[2]


def renyi_entropy(
    logits: Any, alpha: float, *, temperature: Any = 1.0, nan_policy: str = "raise"
) -> np.ndarray:
    """Rényi entropy ``H_α = (LSE(α z') − α LSE(z')) / (1 − α)`` in nats, ``α ∈ [0, ∞]``.

    ``α = 0``: ``log V_fin``; ``α = 1``: Shannon; ``α = 2``: ``−log Σp²``; ``α = ∞``:
    min-entropy ``LSE(z') − max z'``. For ``0 < |α − 1| < 1e-4`` the expansion
    ``H − (α−1) Var_p(z')/2`` is used. Sums run in float64.
    Rényi, "On measures of entropy and information" (1961). Spec: ``token.md`` §6.
    """
    alpha = float(alpha)
    if not (alpha >= 0):
        raise ValueError(f"alpha: expected a value in [0, inf], got {alpha}")
    if alpha == 1.0:
        return token_entropy(logits, temperature=temperature, nan_policy=nan_policy)
    array, kind, rows, vocab, out_shape = _logits_2d(logits)
    temp, temps = row_temperatures(temperature, out_shape)
    propagate = check_nan_policy(nan_policy)
    result = _core.renyi_entropy(array.reshape(rows, vocab), kind, alpha, temp, temps, propagate)
    return result.reshape(out_shape)


def topk_entropy_bounds(topk_logprobs: Any, vocab_size: int) -> TopkEntropy:
    """Smallest, midpoint and largest entropy consistent with the top-k log-probs of each row.

    With ``p_i = exp(topk_logprobs_i)``, tail mass ``τ = max(0, 1 − Σ p_i)``, cap ``c = min p_i``
    and ``m = V − k'`` tail entries: ``upper = H_k + τ log(m/τ)``, ``lower = H_k + n h(c) + h(r)``
    with ``n = ⌊τ/c⌋``, ``r = τ − n c``; ``estimate`` is their midpoint. ``-inf`` marks absent
    entries. Spec: ``token.md`` §7 (vLLM ``logprobs``; ARES; OpenPipe/ART PR #555).
    """
    lower, estimate, upper = (
        _topk(topk_logprobs, vocab_size, mode) for mode in ("lower", "estimate", "upper")
    )
    return TopkEntropy(lower, estimate, upper)


def topk_entropy(topk_logprobs: Any, vocab_size: int | None = None, *, mode: str = "estimate"):
    """One top-k entropy convention (``token.md`` §7): ``"estimate"``, ``"lower"``, ``"upper"``,
    ``"truncated"`` (``H_k``), ``"bucket"`` (``H_k + h(τ)``) or ``"renormalized"`` (entropy of
    ``p_i / Σp``). ``vocab_size`` is required for the first three. Returns float32.
    """
    return _topk(topk_logprobs, vocab_size, mode)


def token_logprob_entropy_linear(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    temperature: float = 1.0,
    bias: Any = None,
    ignore_index: int | None = None,
    return_collision: bool = False,
) -> tuple[np.ndarray, ...]:
    """``(logprob, entropy[, collision])`` of ``softmax((hidden @ weight.T + bias) / T)``.

    Computed tile by tile over the vocabulary (``token.md`` §8.2) so that the ``(N, V)`` logits are
    never held; the label logit is taken from the same tile value. ``hidden (N, D)``,
    ``weight (V, D)``, ``bias (V,)``, ``labels (N,)``. float64 inputs accumulate in float64, all
    others in float32 (half-precision inputs are widened to float32 first). A CPU oracle and
    convenience; the training path is ``entcore.torch.token_logprob_entropy_linear``.
    """
    hidden_arr = _float_matrix("hidden", hidden, 2)
    weight_arr = _float_matrix("weight", weight, 2)
    if hidden_arr.shape[1] != weight_arr.shape[1]:
        raise ValueError(
            f"weight: expected shape (V, {hidden_arr.shape[1]}) to match hidden, "
            f"got {weight_arr.shape}"
        )
    if weight_arr.shape[0] < 1:
        raise ValueError("weight: the vocabulary is empty (V = 0)")
    dtype = np.float64 if np.float64 in (hidden_arr.dtype, weight_arr.dtype) else np.float32
    bias_arr = None
    if bias is not None:
        bias_arr = _float_matrix("bias", bias, 1)
        if bias_arr.shape != (weight_arr.shape[0],):
            raise ValueError(f"bias: expected shape ({weight_arr.shape[0]},), got {bias_arr.shape}")
        bias_arr = np.ascontiguousarray(bias_arr, dtype=dtype)
    labels_arr = as_index_array("labels", labels)
    if labels_arr.shape != (hidden_arr.shape[0],):
        raise ValueError(f"labels: expected shape ({hidden_arr.shape[0]},), got {labels_arr.shape}")
    temp, _ = row_temperatures(temperature, ())
    logprob, entropy, collision = _core.token_logprob_entropy_linear(
        np.ascontiguousarray(hidden_arr, dtype=dtype),
        np.ascontiguousarray(weight_arr, dtype=dtype),
        bias_arr,
        labels_arr,
        temp,
        _ignore(ignore_index),
        return_collision,
    )
    return (logprob, entropy, collision) if return_collision else (logprob, entropy)


def _token_pass(
    logits: Any,
    labels: Any,
    temperature: Any,
    ignore_index: int | None,
    collision: bool,
    nan_policy: str,
    lse: bool = False,
) -> tuple[Any, ...]:
    """The fused pass: ``(logprob, entropy, collision, lse)``, ``None`` where not requested."""
    array, kind, rows, vocab, out_shape = _logits_2d(logits)
    temp, temps = row_temperatures(temperature, out_shape)
    propagate = check_nan_policy(nan_policy)
    labels_2d = None
    labels_shape: tuple[int, ...] = ()
    if labels is not None:
        labels_arr = as_index_array("labels", labels)
        labels_shape = labels_arr.shape
        if labels_shape == out_shape:
            labels_2d = labels_arr.reshape(rows, 1)
        elif labels_arr.ndim == len(out_shape) + 1 and labels_shape[:-1] == out_shape:
            labels_2d = labels_arr.reshape(rows, labels_shape[-1])
        else:
            raise ValueError(
                f"labels: expected shape {out_shape} or {out_shape} + (K,), got {labels_shape}"
            )
    logprob, entropy, coll, lse_out = _core.token_stats(
        array.reshape(rows, vocab),
        kind,
        labels_2d,
        temp,
        temps,
        _ignore(ignore_index),
        collision,
        lse,
        propagate,
    )
    return (
        None if logprob is None else logprob.reshape(labels_shape),
        entropy.reshape(out_shape),
        None if coll is None else coll.reshape(out_shape),
        None if lse_out is None else lse_out.reshape(out_shape),
    )


def _logits_2d(logits: Any) -> tuple[np.ndarray, str, int, int, tuple[int, ...]]:
    array, kind = as_core_float("logits", logits, min_ndim=1)
    vocab = array.shape[-1]
    if vocab < 1:
        raise ValueError(f"logits: the vocabulary (last) dimension is empty, shape {array.shape}")
    out_shape = array.shape[:-1]
    rows = math.prod(out_shape)
    return array, kind, rows, vocab, out_shape


def _float_matrix(name: str, x: Any, ndim: int) -> np.ndarray:
    array = np.asarray(x)
    float_kind(name, array)
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {array.shape}")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)
    return array


def _ignore(ignore_index: int | None) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int or None, got {type(ignore_index).__name__}")
    return int(ignore_index)


def _topk(topk_logprobs: Any, vocab_size: int | None, mode: str) -> np.ndarray:
    if mode not in TOPK_MODES:
        raise ValueError(f"mode: expected one of {TOPK_MODES}, got {mode!r}")
    array = np.asarray(topk_logprobs)
    float_kind("topk_logprobs", array)
    if array.ndim < 1 or array.shape[-1] < 1:
        raise ValueError(f"topk_logprobs: expected shape (..., k) with k >= 1, got {array.shape}")
    if vocab_size is None:
        if mode in ("estimate", "lower", "upper"):
            raise ValueError(f"vocab_size: required for mode={mode!r}")
        vocab = -1
    else:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise TypeError(f"vocab_size: expected an int, got {type(vocab_size).__name__}")
        vocab = int(vocab_size)
        if vocab < array.shape[-1]:
            raise ValueError(f"vocab_size: expected >= k = {array.shape[-1]}, got {vocab}")
    flat = np.ascontiguousarray(array.reshape(-1, array.shape[-1]), dtype=np.float64)
    return _core.topk_entropy(flat, vocab, mode).reshape(array.shape[:-1])
