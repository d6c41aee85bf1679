"""The other entropy measures of ``more.md`` on NumPy arrays.

Names, arguments and defaults match ``entcore.reference.measures`` (the float64 oracle, whose
docstrings hold the long form of every rule) and ``entcore.torch``.

Core functions (``more.md`` preamble) return float32:

- :func:`attention_entropy` runs in the Rust core over the rows of the attention map, without a
  float32 copy of the input when no mask applies (a causal, key or query mask is written into
  one copy: ``-inf`` scores, or 0 probabilities): from scores (``from_logits=True``, ``eps=0``)
  it is the token entropy kernel (``entcore.token_entropy``); from probabilities, the row kernel
  ``−Σ p ln(p + eps)`` summed in float64. Scores with ``eps > 0`` go through NumPy in float64.
- :func:`semantic_entropy` groups the clusters of all rows at once (a sort per row).
- :func:`history_consistency` runs in NumPy, float64 inside, over blocks of positions.
- :func:`entropic_overload_fraction` and :func:`attention_entropy_regularizer` act on a few
  numbers per head and are the reference functions (float64 results).

The utilities (``more.md``: DeYO, the LDR losses, TFUP-T, EAST, Inv-Entropy, delentropy,
structural and PDS entropy, the attention scale) are the float64 reference functions themselves,
re-exported so that ``entcore.<name>`` exists for every name of the spec.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entcore import _core
from entcore._arrays import as_core_float, float_kind
from entcore.reference._layout import as_array, choice, int64_array, real
from entcore.reference.measures import (
    ATTENTION_NORMALIZE,
    ATTENTION_REDUCE,
    NAN_POLICIES,
    SEMANTIC_ESTIMATORS,
    DeyoResult,
    _optional_choice,
    _query_rows,
    _row_mask,
    _step_weights,
    _visible_keys,
    action_entropy,
    aldr_kl_loss,
    attention_entropy_regularizer,
    delentropic_scene_profile,
    delentropy,
    deyo,
    entropic_overload_fraction,
    entropy_invariant_scale,
    entropy_weighted_direction,
    inv_entropy,
    inv_entropy_bootstrap,
    ldr_kl_loss,
    marginal_entropy,
    pds_entropy,
    structural_entropy,
)
from entcore.token import token_entropy

__all__ = [
    "DeyoResult",
    "action_entropy",
    "aldr_kl_loss",
    "attention_entropy",
    "attention_entropy_regularizer",
    "delentropic_scene_profile",
    "delentropy",
    "deyo",
    "entropic_overload_fraction",
    "entropy_invariant_scale",
    "entropy_weighted_direction",
    "history_consistency",
    "inv_entropy",
    "inv_entropy_bootstrap",
    "ldr_kl_loss",
    "marginal_entropy",
    "pds_entropy",
    "semantic_entropy",
    "structural_entropy",
]

#: Elements per float64 block of the NumPy passes (32 MiB).
BLOCK_ELEMENTS = 1 << 22


def attention_entropy(
    attn: Any,
    *,
    from_logits: bool = False,
    causal: bool = False,
    key_mask: Any = None,
    query_mask: Any = None,
    normalize: str | None = None,
    eps: float = 0.0,
    reduce: str = "none",
    nan_policy: str = "raise",
) -> np.ndarray:
    """Per-query attention entropy ``H_i = −Σ_j A_ij ln(A_ij + eps)`` of ``(B, H, Q, K)`` or
    ``(L, B, H, Q, K)`` maps (or a sequence of layers), float32 results.

    See :func:`entcore.reference.measures.attention_entropy` for every argument. Spec:
    ``more.md`` §1; arXiv 2501.03489.
    """
    a = _attention_input(attn)
    n_queries, n_keys = a.shape[-2], a.shape[-1]
    normalize = _optional_choice("normalize", normalize, ATTENTION_NORMALIZE)
    reduce = choice("reduce", reduce, ATTENTION_REDUCE)
    propagate = choice("nan_policy", nan_policy, NAN_POLICIES) == "propagate"
    eps = real("eps", eps, low=0.0)
    if n_keys < 1:
        raise ValueError(f"attn: the key (last) dimension is empty, shape {a.shape}")
    if normalize == "log_keys" and n_keys < 2:
        raise ValueError("normalize: 'log_keys' needs K >= 2 keys")
    batch = a.shape[-4]
    sees = _visible_keys(causal, key_mask, batch, n_queries, n_keys)
    rows = _query_rows(query_mask, batch, n_queries)
    masked = causal or key_mask is not None or not bool(rows.all())
    if from_logits and eps == 0.0:
        if masked:
            a = np.where(rows[..., None], np.where(sees, a, -np.inf), 0.0).astype(
                a.dtype if a.dtype == np.float64 else np.float32
            )
        try:
            h = token_entropy(a, nan_policy="propagate" if propagate else "raise")
        except ValueError as err:  # the token kernel names its input "logits"
            raise ValueError(str(err).replace("logits", "attn", 1)) from None
        h = h.astype(np.float64)
    elif not from_logits:
        if masked:  # keys a row does not see, and excluded rows, are never read
            a = np.where(rows[..., None] & sees, a, 0.0).astype(
                a.dtype if a.dtype == np.float64 else np.float32
            )
        probs, kind = as_core_float("attn", a)
        h = _core.prob_entropy(probs.reshape(-1, n_keys), kind, eps, propagate)
        h = h.astype(np.float64).reshape(a.shape[:-1])
    else:
        h = _softmax_entropy_blocks(a, sees, rows, eps, propagate)
    if normalize == "log_keys":
        h = h / math.log(n_keys)
    elif normalize == "row":
        seen = np.broadcast_to(sees.sum(axis=-1), h.shape).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.where(seen > 1, h / np.log(np.maximum(seen, 1.0)), 0.0)
    valid = np.broadcast_to(rows, h.shape)
    h = np.where(valid, h, 0.0)
    if reduce == "mean_queries":
        with np.errstate(invalid="ignore"):
            h = h.sum(axis=-1) / valid.sum(axis=-1)
    elif reduce == "head_mean":
        with np.errstate(invalid="ignore"):
            h = h.sum(axis=(-3, -1)) / valid.sum(axis=(-3, -1))
    return h.astype(np.float32)


def _attention_input(attn: Any) -> np.ndarray:
    if isinstance(attn, (list, tuple)):
        if not attn:
            raise ValueError("attn: expected at least one layer")
        layers = [as_array("attn", layer) for layer in attn]
        for layer in layers:
            float_kind("attn", layer)
        if any(layer.shape != layers[0].shape for layer in layers) or layers[0].ndim != 4:
            raise ValueError("attn: every layer must have the same shape (B, H, Q, K)")
        return np.stack(layers)
    a = as_array("attn", attn)
    float_kind("attn", a)
    if a.ndim not in (4, 5):
        raise ValueError(f"attn: expected (B, H, Q, K) or (L, B, H, Q, K), got shape {a.shape}")
    return a


def _softmax_entropy_blocks(
    a: np.ndarray, sees: np.ndarray, rows: np.ndarray, eps: float, propagate: bool
) -> np.ndarray:
    """``−Σ_j p_ij ln(p_ij + eps)`` of ``p = softmax(scores)`` per row, float64, over blocks of
    the leading axes (the ``eps > 0`` route from scores)."""
    flat = a.reshape(-1, *a.shape[-3:])  # (P, H, Q, K), P = prod(..., B)
    batch = sees.shape[0]
    step = max(1, BLOCK_ELEMENTS // max(1, math.prod(flat.shape[1:])))
    out = np.empty(flat.shape[:-1])
    for start in range(0, flat.shape[0], step):
        idx = np.arange(start, min(start + step, flat.shape[0]))
        block = flat[idx].astype(np.float64)
        vis = sees[idx % batch]
        live = np.broadcast_to(rows[idx % batch][..., None], block.shape)
        nan_rows = np.any(np.isnan(block) & vis & live, axis=-1)
        if np.any(nan_rows) and not propagate:
            raise ValueError("attn: contains NaN (pass nan_policy='propagate' for NaN rows)")
        block = np.where(live & ~np.isnan(block), np.where(vis, block, -np.inf), 0.0)
        if np.any(block == np.inf):
            raise ValueError("attn: +inf logits are not allowed")
        m = block.max(axis=-1, keepdims=True)
        if not np.all(np.isfinite(m)):
            raise ValueError("attn: a row has no finite logit (all -inf)")
        e = np.exp(block - m)
        p = e / e.sum(axis=-1, keepdims=True)
        logs = np.log(p + eps, out=np.zeros_like(p), where=p > 0)
        out[idx] = np.where(nan_rows, np.nan, 0.0 - (p * logs).sum(axis=-1))
    return out.reshape(a.shape[:-1])


def semantic_entropy(
    cluster_ids: Any, seq_logprob: Any = None, *, mask: Any = None, estimator: str = "rao"
) -> Any:
    """Semantic entropy of sampled answers grouped into meaning clusters, float32 ``(B,)`` (a
    float32 scalar for 1-D input).

    See :func:`entcore.reference.measures.semantic_entropy`. Spec: ``more.md`` §9;
    arXiv 2302.09664, Farquhar et al., Nature 2024.
    """
    ids = int64_array("cluster_ids", cluster_ids)
    if ids.ndim not in (1, 2) or ids.shape[-1] < 1:
        raise ValueError(f"cluster_ids: expected shape (M,) or (B, M) with M >= 1, got {ids.shape}")
    estimator = choice("estimator", estimator, SEMANTIC_ESTIMATORS)
    ids2 = ids.reshape(-1, ids.shape[-1])
    n_rows, m = ids2.shape
    valid = _row_mask("mask", mask, ids.shape).reshape(ids2.shape)
    empty = ~valid.any(axis=1)
    if np.any(empty):
        raise ValueError(f"mask: row {int(np.argmax(empty))} keeps no sample")
    if seq_logprob is None:
        logp = np.zeros(ids2.shape)
    else:
        lp = as_array("seq_logprob", seq_logprob)
        float_kind("seq_logprob", lp)
        if lp.shape != ids.shape:
            raise ValueError(f"seq_logprob: expected shape {ids.shape}, got {lp.shape}")
        logp = lp.astype(np.float64).reshape(ids2.shape)
        if np.any(np.isnan(logp[valid])):
            raise ValueError("seq_logprob: contains NaN")
        if np.any(logp[valid] == np.inf):
            raise ValueError("seq_logprob: +inf is not a log-likelihood")
    logp = np.where(valid, logp, -np.inf)
    dead = ~np.isfinite(logp).any(axis=1)
    if np.any(dead):
        raise ValueError(f"seq_logprob: row {int(np.argmax(dead))} has every log-likelihood -inf")
    # Cluster index within each row: rank of the id among the row's distinct ids.
    order = np.argsort(ids2, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids2, order, axis=1)
    new = np.ones(ids2.shape, dtype=bool)
    new[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    local = np.empty(ids2.shape, dtype=np.int64)
    np.put_along_axis(local, order, np.cumsum(new, axis=1) - 1, axis=1)
    group = (np.arange(n_rows)[:, None] * m + local).reshape(-1)
    flat = logp.reshape(-1)
    finite = np.isfinite(flat)
    row_max = logp.max(axis=1)
    weight = np.where(finite, np.exp(flat - np.repeat(row_max, m)), 0.0)
    mass = np.zeros(n_rows * m)
    np.add.at(mass, group, weight)
    mass = mass.reshape(n_rows, m)
    p = mass / mass.sum(axis=1, keepdims=True)
    present = p > 0
    logs = np.log(p, out=np.zeros_like(p), where=present)
    if estimator == "rao":
        out = 0.0 - (p * logs).sum(axis=1)
    else:
        out = 0.0 - logs.sum(axis=1) / present.sum(axis=1)
    out = out.astype(np.float32)
    return out[0] if ids.ndim == 1 else out


def history_consistency(
    x: Any, *, from_logits: bool = False, weights: Any = None, mask: Any = None
) -> tuple[Any, Any, Any]:
    """``(entropy_of_mean, mean_entropy, mutual_information)`` of the last ``W`` decoding steps of
    each position, float32 arrays ``(...)``.

    See :func:`entcore.reference.measures.history_consistency`. Spec: ``more.md`` §14;
    arXiv 2512.02044.
    """
    v = as_array("x", x)
    float_kind("x", v)
    if v.ndim < 2 or v.shape[-1] < 1 or v.shape[0] < 1:
        raise ValueError(f"x: expected shape (W, ..., V) with W, V >= 1, got {v.shape}")
    n_steps, n_vocab = v.shape[0], v.shape[-1]
    pos_shape = v.shape[1:-1]
    keep = _row_mask("mask", mask, v.shape[:-1]).reshape(n_steps, -1)
    omega = _step_weights(weights, n_steps)
    flat = v.reshape(n_steps, -1, n_vocab)
    n_pos = flat.shape[1]
    step = max(1, BLOCK_ELEMENTS // max(1, n_steps * n_vocab))
    results = np.zeros((3, n_pos))
    for start in range(0, n_pos, step):
        sl = slice(start, min(start + step, n_pos))
        k = keep[:, sl]
        block = flat[:, sl].astype(np.float64)
        if np.any(np.isnan(block) & k[..., None]):
            raise ValueError("x: contains NaN")
        if from_logits:
            z = np.where(k[..., None], block, 0.0)
            if np.any(z == np.inf):
                raise ValueError("x: +inf logits are not allowed")
            zmax = z.max(axis=-1, keepdims=True)
            if not np.all(np.isfinite(zmax)):
                raise ValueError("x: a row has no finite logit (all -inf)")
            e = np.exp(z - zmax)
            p = e / e.sum(axis=-1, keepdims=True)
        else:
            p = np.where(k[..., None], block, 0.0)
            if np.any(p < 0) or np.any(np.isinf(p)):
                raise ValueError("x: probabilities must be finite and >= 0")
        om = np.where(k, omega[:, None], 0.0)
        norm = om.sum(axis=0)
        alive = norm > 0
        om = np.where(alive, om / np.where(alive, norm, 1.0), 0.0)
        h_steps = _entropy_last(p)
        mean_h = (om * h_steps).sum(axis=0)
        h_bar = _entropy_last((om[..., None] * p).sum(axis=0))
        mi = np.maximum(h_bar - mean_h, 0.0)
        results[:, sl] = np.where(alive, np.stack([h_bar, mean_h, mi]), 0.0)
    out = results.astype(np.float32).reshape(3, *pos_shape)
    return out[0], out[1], out[2]


def _entropy_last(p: np.ndarray) -> np.ndarray:
    logs = np.log(p, out=np.zeros_like(p), where=p > 0)
    return 0.0 - (p * logs).sum(axis=-1)
