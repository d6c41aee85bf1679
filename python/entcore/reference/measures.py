"""Float64 NumPy oracle for the other entropy measures of ``more.md`` (the executable spec).

Written to be read, not to be fast (``conventions.md``, "The three faces of every function"):
float inputs are upcast exactly to float64 and every sum runs in float64. Names, argument names
and defaults are those of ``entcore.measures`` and ``entcore.torch``; results are float64 (the
NumPy face returns float32 for the core functions of ``more.md``). This module never imports the
compiled core.

Conventions of the whole module (``more.md`` preamble): entropies in nats unless a function says
otherwise, ``0 · ln 0 = 0``, an ``eps`` only where a published reference needs it for parity
(``eps=0`` is always the exact value). Bad input raises ``ValueError`` (values, shapes) or
``TypeError`` (dtypes), naming the argument.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from entcore.reference._layout import (
    as_array,
    bool_array,
    choice,
    float64_array,
    int64_array,
    integer,
    real,
)

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

NAN_POLICIES = ("raise", "propagate")
ATTENTION_NORMALIZE = (None, "log_keys", "row")
ATTENTION_REDUCE = ("none", "mean_queries", "head_mean")
REGULARIZER_REDUCTION = ("sum", "mean")
LOSS_REDUCTION = ("mean", "sum", "none")
SCORE_TRANSFORMS = (None, "softplus_mean", "abs_mean")
SEMANTIC_ESTIMATORS = ("rao", "mc")
GRADIENTS = ("sobel", "central", "forward")

#: Mass added to each ALDR-KL probability before renormalising (the reference's ``1e-5``).
ALDR_P_FLOOR = 1e-5
#: Scene-profile clipping of the min–max scaled values (``more.md`` §11).
PROFILE_CLIP = 1e-6


class DeyoResult(NamedTuple):
    """DeYO selection and weighting of one test batch (``more.md`` §5)."""

    entropy: Any
    plpd: Any
    selected: Any
    weights: Any
    loss: Any
    n_selected: Any


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _xlogy(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p · ln q`` with ``0 · ln q = 0`` (also for ``q = 0``)."""
    out = np.zeros(np.broadcast_shapes(p.shape, q.shape), dtype=np.float64)
    p_b, q_b = np.broadcast_arrays(p, q)
    nz = p_b != 0
    out[nz] = p_b[nz] * np.log(q_b[nz])
    return out


def _entropy_rows(p: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """``−Σ_j p_j ln(p_j + eps)`` over the last axis, ``0 · ln 0 = 0``."""
    return 0.0 - _xlogy(p, p + eps).sum(axis=-1)


def _lse(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """``ln Σ exp z`` over ``axis``; ``-inf`` entries are skipped, an all ``-inf`` slice gives
    ``-inf``."""
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(z - m).sum(axis=axis)) + np.squeeze(m, axis=axis)


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row softmax of logits with ``-inf`` entries (probability 0); each row needs a finite one."""
    m = np.max(z, axis=-1, keepdims=True)
    e = np.exp(z - m)
    return e / e.sum(axis=-1, keepdims=True)


def _finite_logits(name: str, z: np.ndarray, valid_rows: np.ndarray | None = None) -> None:
    """``+inf`` is an error; a row without a finite entry is an error (``conventions.md``)."""
    if np.any(z == np.inf):
        raise ValueError(f"{name}: +inf logits are not allowed")
    dead = ~np.any(np.isfinite(z), axis=-1)
    if valid_rows is not None:
        dead &= valid_rows
    if np.any(dead):
        raise ValueError(f"{name}: a row has no finite logit (all -inf)")


def _probabilities(name: str, p: np.ndarray) -> None:
    if np.any(p < 0) or np.any(np.isinf(p)):
        raise ValueError(f"{name}: probabilities must be finite and >= 0")


def _no_nan(name: str, x: np.ndarray) -> None:
    if np.any(np.isnan(x)):
        raise ValueError(f"{name}: contains NaN")


def _finite(name: str, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: expected finite values")


def _log_base(name: str, base: Any) -> float:
    value = real(name, base, low=0.0, low_open=True)
    if value == 1.0 or math.isinf(value):
        raise ValueError(f"{name}: expected a finite base > 0 other than 1, got {value}")
    return math.log(value)


def _numeric64(name: str, x: Any) -> np.ndarray:
    """A float or integer array (counts, images, similarities) as float64."""
    array = as_array(name, x)
    if array.dtype.kind in "iu" and array.dtype != np.uint64:
        return array.astype(np.float64)
    return float64_array(name, array)


def _scalar_out(x: np.ndarray) -> Any:
    return x[()] if x.ndim == 0 else x


# ---------------------------------------------------------------------------------------------
# §1 attention_entropy
# ---------------------------------------------------------------------------------------------


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
    """Per-row (per query) Shannon entropy of attention maps, ``H_i = −Σ_j A_ij ln(A_ij + eps)``.

    ``attn``: ``(B, H, Q, K)`` for one layer, ``(L, B, H, Q, K)`` or a sequence of ``L``
    ``(B, H, Q, K)`` layers; probabilities, or pre-softmax scores with ``from_logits=True``
    (``H = LSE(s) − Σ p s``, ``-inf`` scores are masked keys; with ``eps > 0`` the probabilities
    are formed first). ``causal=True``: query ``i`` sees keys ``j ≤ K − Q + i`` (``Q ≤ K``);
    ``key_mask (B, K)`` removes keys. Keys a row does not see are never read: with probabilities
    they are left out of the sum (not renormalised), with scores they are set to ``-inf``.

    ``normalize``: ``None``; ``"log_keys"`` divides by ``ln K`` (the reference's ``E_max``, for
    every row, causal or not; ``K ≥ 2``); ``"row"`` divides by ``ln`` of the number of keys the
    row sees (0 for a row that sees one key). ``query_mask (B, Q)``: excluded rows read as 0, enter
    no mean and may hold NaN. ``reduce``: ``"none"`` → ``(…, H, Q)``; ``"mean_queries"`` → mean
    over valid queries ``(…, H)``; ``"head_mean"`` → mean over batch and valid queries, ``(H,)``
    per layer or ``(L, H)``. A mean over no valid row is NaN. ``nan_policy``: ``"raise"`` or
    ``"propagate"`` (NaN rows). Returns float64.

    Spec: ``more.md`` §1. "Entropy-Guided Attention for Private LLMs", arXiv 2501.03489
    (Nandan91/entropy-guided-attention-llm ``entropy_regularization.py``, ``eps = 1e-9``).
    """
    a = _attention_array(attn)
    n_keys, n_queries = a.shape[-1], a.shape[-2]
    normalize = _optional_choice("normalize", normalize, ATTENTION_NORMALIZE)
    reduce = choice("reduce", reduce, ATTENTION_REDUCE)
    propagate = choice("nan_policy", nan_policy, NAN_POLICIES) == "propagate"
    eps = real("eps", eps, low=0.0)
    if n_keys < 1:
        raise ValueError(f"attn: the key (last) dimension is empty, shape {a.shape}")
    if normalize == "log_keys" and n_keys < 2:
        raise ValueError("normalize: 'log_keys' needs K >= 2 keys")
    batch = a.shape[-4]
    sees = _visible_keys(causal, key_mask, batch, n_queries, n_keys)  # (B, 1, Q, K)
    rows = _query_rows(query_mask, batch, n_queries)  # (B, 1, Q)
    a_rows = np.broadcast_to(rows[..., None], a.shape)
    nan_rows = np.any(np.isnan(a) & np.broadcast_to(sees, a.shape) & a_rows, axis=-1)
    if np.any(nan_rows) and not propagate:
        raise ValueError("attn: contains NaN (pass nan_policy='propagate' for NaN rows)")
    safe = np.where(np.isnan(a) | ~a_rows, 0.0, a)
    if from_logits:
        # Rows left out by query_mask are read as uniform scores (never as an error).
        s = np.where(a_rows, np.where(sees, safe, -np.inf), 0.0)
        _finite_logits("attn", s)
        if eps == 0.0:
            p = _softmax(s)
            h = _lse(s) - np.where(p > 0, p * np.where(np.isfinite(s), s, 0.0), 0.0).sum(-1)
        else:
            h = _entropy_rows(_softmax(s), eps)
    else:
        p = np.where(sees, safe, 0.0)
        _probabilities("attn", p)
        h = _entropy_rows(p, eps)
    if normalize == "log_keys":
        h = h / math.log(n_keys)
    elif normalize == "row":
        seen = np.broadcast_to(sees.sum(axis=-1), h.shape).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.where(seen > 1, h / np.log(np.maximum(seen, 1.0)), 0.0)
    h = np.where(nan_rows, np.nan, h)
    h = np.where(np.broadcast_to(rows, h.shape), h, 0.0)
    if reduce == "none":
        return h
    valid = np.broadcast_to(rows, h.shape)
    if reduce == "mean_queries":
        with np.errstate(invalid="ignore"):
            return h.sum(axis=-1) / valid.sum(axis=-1)
    # head_mean: batch axis is -3 of (…, B, H, Q).
    with np.errstate(invalid="ignore"):
        return h.sum(axis=(-3, -1)) / valid.sum(axis=(-3, -1))


def _attention_array(attn: Any) -> np.ndarray:
    if isinstance(attn, (list, tuple)):
        layers = [float64_array("attn", layer) for layer in attn]
        if not layers:
            raise ValueError("attn: expected at least one layer")
        if any(layer.shape != layers[0].shape for layer in layers) or layers[0].ndim != 4:
            raise ValueError("attn: every layer must have the same shape (B, H, Q, K)")
        return np.stack(layers)
    a = float64_array("attn", attn)
    if a.ndim not in (4, 5):
        raise ValueError(f"attn: expected (B, H, Q, K) or (L, B, H, Q, K), got shape {a.shape}")
    return a


def _optional_choice(name: str, value: Any, options: tuple[Any, ...]) -> Any:
    if value is None and None in options:
        return None
    return choice(name, value, tuple(o for o in options if o is not None))


def _visible_keys(
    causal: bool, key_mask: Any, batch: int, n_queries: int, n_keys: int
) -> np.ndarray:
    """``(B, 1, Q, K)`` bool: the keys each query row sees (causal offset, key mask)."""
    sees = np.ones((batch, 1, n_queries, n_keys), dtype=bool)
    if causal:
        if n_queries > n_keys:
            raise ValueError(f"causal: needs Q <= K, got Q = {n_queries}, K = {n_keys}")
        i = np.arange(n_queries)[:, None]
        j = np.arange(n_keys)[None, :]
        sees &= j <= n_keys - n_queries + i
    if key_mask is not None:
        km = bool_array("key_mask", key_mask)
        if km.shape != (batch, n_keys):
            raise ValueError(f"key_mask: expected shape ({batch}, {n_keys}), got {km.shape}")
        sees &= km[:, None, None, :]
    return sees


def _query_rows(query_mask: Any, batch: int, n_queries: int) -> np.ndarray:
    """``(B, 1, Q)`` bool: the query rows that enter (all when ``query_mask`` is None)."""
    if query_mask is None:
        return np.ones((batch, 1, n_queries), dtype=bool)
    qm = bool_array("query_mask", query_mask)
    if qm.shape != (batch, n_queries):
        raise ValueError(f"query_mask: expected shape ({batch}, {n_queries}), got {qm.shape}")
    return qm[:, None, :]


# ---------------------------------------------------------------------------------------------
# §2 entropic_overload_fraction, §3 attention_entropy_regularizer
# ---------------------------------------------------------------------------------------------


def entropic_overload_fraction(
    head_entropy: Any, *, max_entropy: Any, threshold: float = 0.75, side: str = "above"
) -> Any:
    """Fraction of heads (last axis) with ``H ≥ threshold · max_entropy`` (``side="above"``,
    entropic overload: heads attending almost uniformly) or ``H < threshold · max_entropy``
    (``side="below"``, e.g. entropy collapse with a low threshold).

    ``max_entropy``: ``ln K``, a scalar or an array broadcastable to ``head_entropy``, ``> 0``.
    Returns float64 of shape ``head_entropy.shape[:-1]``.

    Spec: ``more.md`` §2. arXiv 2501.03489 (share of heads per quarter of the maximum; the top
    quarter is overload).
    """
    h = float64_array("head_entropy", head_entropy)
    if h.ndim < 1 or h.shape[-1] < 1:
        raise ValueError(
            f"head_entropy: expected shape (..., heads) with heads >= 1, got {h.shape}"
        )
    _no_nan("head_entropy", h)
    e_max = np.asarray(max_entropy, dtype=np.float64)
    if not np.all(np.isfinite(e_max) & (e_max > 0)):
        raise ValueError("max_entropy: expected finite values > 0")
    t = real("threshold", threshold, low=0.0)
    side = choice("side", side, ("above", "below"))
    try:
        bound = np.broadcast_to(t * e_max, h.shape)
    except ValueError:
        raise ValueError(
            f"max_entropy: shape {e_max.shape} does not broadcast to head_entropy {h.shape}"
        ) from None
    hit = h >= bound if side == "above" else h < bound
    return _scalar_out(hit.mean(axis=-1))


def attention_entropy_regularizer(
    entropy: Any,
    theta: Any,
    *,
    max_entropy: float,
    tolerance: float = 0.2,
    query_mask: Any = None,
    reduction: str = "sum",
) -> Any:
    """Entropy-guided attention regulariser: a dead-zone squared deviation from ``θ · E_max``.

    ``entropy (L, B, H, Q)`` per-row attention entropies (nats, :func:`attention_entropy`);
    ``theta (L, H)`` or ``(H,)`` (shared by all layers), learnable. ``δ = θ E_max``,
    ``D = H − δ``; penalty ``D²`` where ``|D| > tolerance · E_max`` (the whole deviation, a hard
    dead zone), else 0. Layer loss ``(1/H) Σ_h Σ_{b, i valid} penalty`` (``reduction="sum"``,
    the reference; ``"mean"`` divides by the number of valid ``(b, i)``); result: the mean over
    layers. The caller adds ``λ · result`` (reference ``λ = 1e-5``).

    Spec: ``more.md`` §3. arXiv 2501.03489, ``entropy_regularization.py``.
    """
    h = float64_array("entropy", entropy)
    if h.ndim != 4:
        raise ValueError(f"entropy: expected shape (L, B, H, Q), got {h.shape}")
    n_layers, batch, n_heads, n_queries = h.shape
    th = float64_array("theta", theta)
    if th.shape == (n_heads,):
        th = np.broadcast_to(th, (n_layers, n_heads))
    elif th.shape != (n_layers, n_heads):
        raise ValueError(
            f"theta: expected shape ({n_heads},) or ({n_layers}, {n_heads}), got {th.shape}"
        )
    _finite("theta", th)
    e_max = real("max_entropy", max_entropy, low=0.0, low_open=True)
    gamma = real("tolerance", tolerance, low=0.0)
    reduction = choice("reduction", reduction, REGULARIZER_REDUCTION)
    rows = _query_rows(query_mask, batch, n_queries)[:, 0, :]  # (B, Q)
    valid = np.broadcast_to(rows[None, :, None, :], h.shape)
    _no_nan("entropy", h[valid])
    dev = np.where(valid, h - th[:, None, :, None] * e_max, 0.0)
    penalty = np.where(np.abs(dev) > gamma * e_max, dev * dev, 0.0)
    layer = penalty.sum(axis=(1, 2, 3)) / n_heads
    if reduction == "mean":
        count = int(rows.sum())
        if count == 0:
            raise ValueError("query_mask: no valid query row")
        layer = layer / count
    return float(layer.mean())


# ---------------------------------------------------------------------------------------------
# §4 entropy_invariant_scale
# ---------------------------------------------------------------------------------------------


def entropy_invariant_scale(n_train: Any, n_infer: Any, head_dim: Any) -> Any:
    """Attention scale that keeps attention entropy near its training value when the number of
    attended tokens changes: ``λ = sqrt(ln n_infer / ln n_train) / sqrt(d)``, used as
    ``softmax(λ Q Kᵀ) V`` instead of ``1/√d`` (per layer token counts; self-attention only).

    Broadcasts over array arguments. ``n_train < 2``, ``n_infer < 1`` or ``head_dim < 1`` →
    ``ValueError``. Returns float64.

    Spec: ``more.md`` §4. "Training-free Diffusion Model Adaptation for Variable-Sized
    Text-to-Image Synthesis", arXiv 2306.08645.
    """
    n_tr, n_in, d = (
        _numeric64(name, v)
        for name, v in (("n_train", n_train), ("n_infer", n_infer), ("head_dim", head_dim))
    )
    for name, v, low in (("n_train", n_tr, 2), ("n_infer", n_in, 1), ("head_dim", d, 1)):
        if np.any(np.isnan(v)) or np.any(v < low) or np.any(np.isinf(v)):
            raise ValueError(f"{name}: expected finite values >= {low}")
    return _scalar_out(np.sqrt(np.log(n_in) / np.log(n_tr)) / np.sqrt(d))


# ---------------------------------------------------------------------------------------------
# §5 deyo
# ---------------------------------------------------------------------------------------------


def deyo(
    logits: Any,
    logits_aug: Any,
    *,
    margin: float = 0.5,
    margin_e0: float = 0.4,
    plpd_threshold: float = 0.2,
    reweight_ent: bool = True,
    reweight_plpd: bool = True,
) -> DeyoResult:
    """DeYO sample selection and weighting for test-time adaptation.

    ``logits``, ``logits_aug`` ``(B, C)``: the batch and its object-destroying transform (the
    caller's; the reference shuffles a 4 × 4 patch grid). ``p = softmax(logits)``,
    ``Ent = −Σ p ln p``, ``ŷ = argmax p`` (lowest index on ties),
    ``PLPD = p_ŷ − softmax(logits_aug)_ŷ``. Selection ``Ent < margin · ln C`` and
    ``PLPD > plpd_threshold``; weight ``[reweight_ent] exp(−(Ent − margin_e0 · ln C)) +
    [reweight_plpd] exp(PLPD)`` (1 when both are off); ``loss = (1/|S|) Σ_S weight · Ent``
    (0 for an empty selection). PLPD is evaluated on every row.

    Returns :class:`DeyoResult` (float64 arrays, bool ``selected``, float ``loss``, int
    ``n_selected``). Spec: ``more.md`` §5. "Entropy is not Enough for Test-Time Adaptation",
    arXiv 2403.07366 (Jhyun17/DeYO ``methods/deyo.py``).
    """
    z = _logit_matrix("logits", logits)
    z_aug = _logit_matrix("logits_aug", logits_aug)
    if z_aug.shape != z.shape:
        raise ValueError(f"logits_aug: expected shape {z.shape} (as logits), got {z_aug.shape}")
    margin = real("margin", margin, low=0.0)
    margin_e0 = real("margin_e0", margin_e0, low=0.0)
    plpd_threshold = real("plpd_threshold", plpd_threshold)
    n_classes = z.shape[1]
    p = _softmax(z)
    ent = _lse(z) - np.where(p > 0, p * np.where(np.isfinite(z), z, 0.0), 0.0).sum(-1)
    y_hat = np.argmax(z, axis=1)
    rows = np.arange(z.shape[0])
    plpd = p[rows, y_hat] - _softmax(z_aug)[rows, y_hat]
    selected = (ent < margin * math.log(n_classes)) & (plpd > plpd_threshold)
    weights = np.zeros_like(ent) if (reweight_ent or reweight_plpd) else np.ones_like(ent)
    if reweight_ent:
        weights = weights + np.exp(-(ent - margin_e0 * math.log(n_classes)))
    if reweight_plpd:
        weights = weights + np.exp(plpd)
    n_sel = int(selected.sum())
    loss = float((weights * ent)[selected].sum() / n_sel) if n_sel else 0.0
    return DeyoResult(ent, plpd, selected, weights, loss, n_sel)


def _logit_matrix(name: str, x: Any) -> np.ndarray:
    z = float64_array(name, x)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (B, C) with C >= 1, got {z.shape}")
    _no_nan(name, z)
    _finite_logits(name, z)
    return z


# ---------------------------------------------------------------------------------------------
# §6 ldr_kl_loss, aldr_kl_loss
# ---------------------------------------------------------------------------------------------


def ldr_kl_loss(
    scores: Any,
    labels: Any,
    *,
    lam: float = 10.0,
    margin: float = 0.1,
    score_transform: str | None = None,
    reduction: str = "mean",
) -> Any:
    """Label-distributionally-robust loss with a KL-to-uniform penalty (LDR-KL).

    ``z_k = f_k − f_y + c·[k ≠ y]``; ``L = λ ln((1/K) Σ_k exp(z_k / λ))`` (mean inside the log:
    ``λ ×`` the cross-entropy of ``(f_k + c·[k ≠ y])/λ`` minus ``λ ln K``), evaluated with the row
    maximum subtracted. ``scores (B, K)``, ``labels (B,)`` in ``[0, K)``; ``score_transform``
    ``None``, ``"softplus_mean"`` (``softplus(f)`` over its row mean, the reference LDR) or
    ``"abs_mean"`` (``f / (‖f‖₁/K)``, the reference ALDR). ``reduction``: ``"mean"``, ``"sum"``
    or ``"none"`` (per row). Returns float64.

    Spec: ``more.md`` §6 (**Decision**: ``λ = 10``, margin 0.1). "Label Distributionally Robust
    Losses for Multi-class Classification", arXiv 2112.14869 (Optimization-AI/ICML2023_LDR).
    """
    f, y = _scores_labels(scores, labels, score_transform)
    lam = real("lam", lam, low=0.0, low_open=True)
    margin = real("margin", margin)
    reduction = choice("reduction", reduction, LOSS_REDUCTION)
    per_row = _ldr_rows(f, y, np.full(f.shape[0], lam), margin)
    return _reduce(per_row, reduction)


def aldr_kl_loss(
    scores: Any,
    labels: Any,
    lam_prev: Any,
    *,
    lam0: float = 10.0,
    alpha: float = 2.0,
    margin: float = 0.1,
    score_transform: str | None = None,
    reduction: str = "mean",
) -> tuple[Any, np.ndarray]:
    """Adaptive LDR-KL with a per-sample ``λ`` → ``(loss, lam_new)``.

    ``lam_prev (B,)`` (initialised to ``λ0``, kept per training example by the caller);
    ``p = softmax(f/λ_prev) + 1e-5`` renormalised, ``KL = Σ p ln(K p)``,
    ``λ_new = λ0 (1 − KL/(α ln K))``, loss ``λ_new ln((1/K) Σ exp(z_k/λ_new)) −
    (α ln K/(2 λ0)) (λ_new − λ0)²``. ``score_transform`` applies to ``f`` before both.
    ``alpha ≤ 1`` → ``ValueError``; ``K ≥ 2``. ``lam_new`` is a constant (float64 ``(B,)``).

    Spec: ``more.md`` §6. arXiv 2112.14869 (ALDR-KL; Optimization-AI/ICML2023_LDR ``loss.py``).
    """
    f, y = _scores_labels(scores, labels, score_transform)
    n_rows, k = f.shape
    if k < 2:
        raise ValueError("scores: ALDR-KL needs K >= 2 classes")
    lam_p = float64_array("lam_prev", lam_prev)
    if lam_p.shape != (n_rows,):
        raise ValueError(f"lam_prev: expected shape ({n_rows},), got {lam_p.shape}")
    if not np.all(np.isfinite(lam_p) & (lam_p > 0)):
        raise ValueError("lam_prev: expected finite values > 0")
    lam0 = real("lam0", lam0, low=0.0, low_open=True)
    alpha = real("alpha", alpha)
    if not alpha > 1.0:
        raise ValueError(
            f"alpha: expected a value > 1 (lambda_new must stay positive), got {alpha}"
        )
    margin = real("margin", margin)
    reduction = choice("reduction", reduction, LOSS_REDUCTION)
    p = _softmax(f / lam_p[:, None]) + ALDR_P_FLOOR
    p = p / p.sum(axis=1, keepdims=True)
    kl = (p * np.log(k * p)).sum(axis=1)
    log_k = math.log(k)
    lam_new = lam0 * (1.0 - kl / (alpha * log_k))
    per_row = _ldr_rows(f, y, lam_new, margin) - alpha * log_k / (2 * lam0) * (lam_new - lam0) ** 2
    return _reduce(per_row, reduction), lam_new


def _scores_labels(scores: Any, labels: Any, transform: Any) -> tuple[np.ndarray, np.ndarray]:
    f = float64_array("scores", scores)
    if f.ndim != 2 or f.shape[1] < 1:
        raise ValueError(f"scores: expected shape (B, K) with K >= 1, got {f.shape}")
    _finite("scores", f)
    y = int64_array("labels", labels)
    if y.shape != (f.shape[0],):
        raise ValueError(f"labels: expected shape ({f.shape[0]},), got {y.shape}")
    if np.any((y < 0) | (y >= f.shape[1])):
        raise ValueError(f"labels: expected values in [0, {f.shape[1]})")
    transform = _optional_choice("score_transform", transform, SCORE_TRANSFORMS)
    if transform == "softplus_mean":
        f = np.logaddexp(0.0, f)
        f = f / f.mean(axis=1, keepdims=True)
    elif transform == "abs_mean":
        scale = np.abs(f).mean(axis=1, keepdims=True)
        if np.any(scale == 0):
            raise ValueError("scores: an all-zero row has no 'abs_mean' scale")
        f = f / scale
    return f, y


def _ldr_rows(f: np.ndarray, y: np.ndarray, lam: np.ndarray, margin: float) -> np.ndarray:
    """``λ ln((1/K) Σ_k exp(z_k/λ))`` per row, with the row maximum subtracted."""
    n_rows, k = f.shape
    rows = np.arange(n_rows)
    z = f - f[rows, y][:, None] + margin
    z[rows, y] = 0.0
    u = z / lam[:, None]
    m = u.max(axis=1)
    return lam * (m + np.log(np.exp(u - m[:, None]).sum(axis=1)) - math.log(k))


def _reduce(per_row: np.ndarray, reduction: str) -> Any:
    if reduction == "none":
        return per_row
    if per_row.shape[0] == 0:
        raise ValueError("scores: expected at least one row")
    return float(per_row.mean() if reduction == "mean" else per_row.sum())


# ---------------------------------------------------------------------------------------------
# §7 marginal_entropy (TFUP-T)
# ---------------------------------------------------------------------------------------------


def marginal_entropy(
    x: Any, *, from_logits: bool = True, eps: float = 1e-6, mask: Any = None
) -> float:
    """Entropy of the batch-mean prediction, ``H(p̄) = −Σ_c p̄_c ln(p̄_c + eps)``.

    ``x (..., C)``: logits (``from_logits=True``, ``-inf`` masked) or probabilities; ``p̄`` is the
    mean of the valid rows' distributions (``mask`` broadcastable to ``x.shape[:-1]``; no valid row
    → ``ValueError``). TFUP-T minimises ``−H(p̄)`` with weight 0.3 next to its pseudo-label
    cross-entropy (the caller's). ``eps = 1e-6`` is the reference's. Returns a float.

    Spec: ``more.md`` §7. "Training-Free Unsupervised Prompt for Vision-Language Models",
    arXiv 2404.16339 (wlb12345/TFUP ``utils.py`` ``marginal_loss``).
    """
    v = float64_array("x", x)
    if v.ndim < 1 or v.shape[-1] < 1:
        raise ValueError(f"x: expected shape (..., C) with C >= 1, got {v.shape}")
    eps = real("eps", eps, low=0.0)
    valid = _row_mask("mask", mask, v.shape[:-1]).reshape(-1)
    rows = v.reshape(-1, v.shape[-1])[valid]
    if rows.shape[0] == 0:
        raise ValueError("mask: no valid row")
    _no_nan("x", rows)
    if from_logits:
        _finite_logits("x", rows)
        rows = _softmax(rows)
    else:
        _probabilities("x", rows)
    return float(_entropy_rows(rows.mean(axis=0), eps))


def _row_mask(name: str, mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = bool_array(name, mask)
    try:
        return np.broadcast_to(m, shape)
    except ValueError:
        raise ValueError(f"{name}: shape {m.shape} does not broadcast to {shape}") from None


# ---------------------------------------------------------------------------------------------
# §8 EAST
# ---------------------------------------------------------------------------------------------


def action_entropy(counts: Any) -> Any:
    """Entropy of the empirical action distribution of each logged prompt,
    ``−Σ_a (c_a/n) ln(c_a/n)``, from ``counts (M, A)`` (or ``(..., A)``) of actions parsed from
    repeated samples. Negative counts or a row without any action → ``ValueError``. float64.

    Spec: ``more.md`` §8. "Controlling Large Language Model Agents with Entropic Activation
    Steering", arXiv 2406.00244.
    """
    c = _count_array("counts", counts)
    total = c.sum(axis=-1, keepdims=True)
    if np.any(total == 0):
        raise ValueError("counts: a row holds no action (all counts 0)")
    return _scalar_out(_entropy_rows(c / total))


def entropy_weighted_direction(
    activations: Any, entropies: Any, *, center: bool = True, normalize: bool = False
) -> np.ndarray:
    """EAST steering direction ``u = Σ_i H_i (h_i − h̄) / Σ_i H_i`` (``h̄`` the plain mean) with
    ``center``, else ``Σ_i H_i h_i / Σ_i H_i``; ``u/‖u‖`` with ``normalize`` (``u = 0`` →
    ``ValueError``). ``activations (M, d)``, ``entropies (M,) ≥ 0`` with ``Σ H > 0``.

    **Reconstructed** (the paper states only "an entropy-weighted combination of
    representations"): centring, normalisation, layer, token position and ``β`` are parameters.
    Spec: ``more.md`` §8. arXiv 2406.00244 (no public code). Returns float64 ``(d,)``.
    """
    h = float64_array("activations", activations)
    if h.ndim != 2 or h.shape[0] < 1:
        raise ValueError(f"activations: expected shape (M, d) with M >= 1, got {h.shape}")
    _finite("activations", h)
    w = float64_array("entropies", entropies)
    if w.shape != (h.shape[0],):
        raise ValueError(f"entropies: expected shape ({h.shape[0]},), got {w.shape}")
    _finite("entropies", w)
    if np.any(w < 0):
        raise ValueError("entropies: expected values >= 0")
    total = w.sum()
    if total == 0:
        raise ValueError("entropies: the sum is 0 (no weight)")
    base = h - h.mean(axis=0) if center else h
    u = (w[:, None] * base).sum(axis=0) / total
    if normalize:
        norm = float(np.sqrt((u * u).sum()))
        if norm == 0:
            raise ValueError("normalize: the direction is 0 and has no unit vector")
        u = u / norm
    return u


def _count_array(name: str, counts: Any) -> np.ndarray:
    c = _numeric64(name, counts)
    if c.ndim < 1 or c.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (..., A) with A >= 1, got {c.shape}")
    _finite(name, c)
    if np.any(c < 0):
        raise ValueError(f"{name}: expected counts >= 0")
    return c


# ---------------------------------------------------------------------------------------------
# §9 semantic_entropy
# ---------------------------------------------------------------------------------------------


def semantic_entropy(
    cluster_ids: Any, seq_logprob: Any = None, *, mask: Any = None, estimator: str = "rao"
) -> Any:
    """Semantic entropy of ``M`` sampled answers grouped into meaning clusters.

    ``cluster_ids (M,)`` or ``(B, M)`` int (only equality within a row matters; the clustering by
    bidirectional entailment is the caller's). Likelihood form (``seq_logprob`` given, same
    shape): ``p̂(c) = exp(LSE_{m∈c} ℓ_m − LSE_m ℓ_m)``; discrete form (``seq_logprob=None``):
    ``p̂(c) = n_c / M``. ``estimator="rao"``: ``−Σ_c p̂(c) ln p̂(c)``; ``"mc"`` (the 2023 paper):
    ``−(1/|C|) Σ_c ln p̂(c)`` over the clusters with ``p̂ > 0``. ``mask`` drops samples (a row with
    none left → ``ValueError``); ``ℓ = −inf`` is weight 0 (a row all ``−inf`` → ``ValueError``).
    Returns float64 ``(B,)``, or a float for 1-D input.

    Spec: ``more.md`` §9. arXiv 2302.09664; Farquhar et al., Nature 2024
    (jlko/semantic_uncertainty ``semantic_entropy.py``).
    """
    ids = int64_array("cluster_ids", cluster_ids)
    if ids.ndim not in (1, 2) or ids.shape[-1] < 1:
        raise ValueError(f"cluster_ids: expected shape (M,) or (B, M) with M >= 1, got {ids.shape}")
    estimator = choice("estimator", estimator, SEMANTIC_ESTIMATORS)
    ids2 = ids.reshape(-1, ids.shape[-1])
    valid = _row_mask("mask", mask, ids.shape).reshape(ids2.shape)
    if seq_logprob is None:
        logp = np.zeros(ids2.shape)
    else:
        lp = float64_array("seq_logprob", seq_logprob)
        if lp.shape != ids.shape:
            raise ValueError(f"seq_logprob: expected shape {ids.shape}, got {lp.shape}")
        logp = lp.reshape(ids2.shape)
        _no_nan("seq_logprob", logp[valid])
        if np.any(logp[valid] == np.inf):
            raise ValueError("seq_logprob: +inf is not a log-likelihood")
    out = np.empty(ids2.shape[0])
    for b in range(ids2.shape[0]):
        keep = valid[b]
        if not np.any(keep):
            raise ValueError(f"mask: row {b} keeps no sample")
        lb, cb = logp[b][keep], ids2[b][keep]
        if not np.any(np.isfinite(lb)):
            raise ValueError(f"seq_logprob: row {b} has every log-likelihood -inf")
        total = _lse(lb)
        log_pc = np.array([_lse(lb[cb == c]) - total for c in np.unique(cb)])
        log_pc = log_pc[np.isfinite(log_pc)]
        if estimator == "rao":
            out[b] = 0.0 - float((np.exp(log_pc) * log_pc).sum())
        else:
            out[b] = 0.0 - float(log_pc.mean())
    return float(out[0]) if ids.ndim == 1 else out


# ---------------------------------------------------------------------------------------------
# §10 inv_entropy, inv_entropy_bootstrap
# ---------------------------------------------------------------------------------------------


def inv_entropy(sim_x: Any, sim_y: Any) -> Any:
    """Inv-Entropy: ``P_X = diag(S_X 1)^{−1} S_X``, ``P_Y`` likewise, ``Q = P_Y P_X``
    (``Q_ij = p(x_j | y_i)``) and ``Inv = −Σ_i Q_ii ln Q_ii`` (a diagonal pseudo-entropy).

    ``sim_x``, ``sim_y`` ``(…, n, n)``: similarities (≥ 0) among a question and its paraphrases,
    and among their answers (the reference: ``|cos|`` of sentence embeddings). Negative entries,
    non-finite entries or a zero row sum → ``ValueError``. Returns float64 ``(…)``.

    Spec: ``more.md`` §10. "Inv-Entropy", arXiv 2506.09684 (PyPI ``inventropy``).
    """
    px = _transition("sim_x", sim_x)
    py = _transition("sim_y", sim_y)
    if px.shape != py.shape:
        raise ValueError(f"sim_y: expected shape {px.shape} (as sim_x), got {py.shape}")
    q = np.einsum("...ij,...ji->...i", py, px)  # diagonal of P_Y P_X
    return _scalar_out(0.0 - _xlogy(q, q).sum(axis=-1))


def inv_entropy_bootstrap(
    sim_x: Any, sim_y_all: Any, *, n_answers: int, n_bootstrap: int = 10, seed: int = 0
) -> float:
    """Mean :func:`inv_entropy` over ``n_bootstrap`` draws of one answer per question.

    ``sim_x (n, n)``; ``sim_y_all (n·n_answers, n·n_answers)`` with answer ``j`` of question
    ``i`` at index ``i·n_answers + j``. Replicate ``r`` draws one answer per question with
    ``numpy.random.Generator(PCG64(seed)).integers(0, n_answers, n)``; a tuple already drawn is
    drawn again, so the replicates are distinct (``n_bootstrap > n_answers^n`` → ``ValueError``).

    Spec: ``more.md`` §10 (reference settings: 9 paraphrases, 5 answers, 10 replicates).
    """
    sx = _numeric64("sim_x", sim_x)
    if sx.ndim != 2 or sx.shape[0] != sx.shape[1] or sx.shape[0] < 1:
        raise ValueError(f"sim_x: expected a square (n, n) matrix, got {sx.shape}")
    n = sx.shape[0]
    n_ans = integer("n_answers", n_answers, low=1)
    n_boot = integer("n_bootstrap", n_bootstrap, low=1)
    seed = integer("seed", seed, low=0)
    sy = _numeric64("sim_y_all", sim_y_all)
    if sy.shape != (n * n_ans, n * n_ans):
        raise ValueError(f"sim_y_all: expected shape ({n * n_ans}, {n * n_ans}), got {sy.shape}")
    if n_boot > n_ans**n:
        raise ValueError(f"n_bootstrap: at most n_answers^n = {n_ans**n} distinct draws")
    draws = bootstrap_draws(n, n_ans, n_boot, seed)
    values = [inv_entropy(sx, sy[np.ix_(idx, idx)]) for idx in draws]
    return float(np.mean(values))


def bootstrap_draws(n: int, n_answers: int, n_bootstrap: int, seed: int) -> list[np.ndarray]:
    """The distinct answer-index tuples of :func:`inv_entropy_bootstrap` (shared by every face)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    seen: set[tuple[int, ...]] = set()
    draws = []
    offsets = np.arange(n) * n_answers
    while len(draws) < n_bootstrap:
        pick = rng.integers(0, n_answers, n)
        key = tuple(int(v) for v in pick)
        if key in seen:
            continue
        seen.add(key)
        draws.append(offsets + pick)
    return draws


def _transition(name: str, s: Any) -> np.ndarray:
    m = _numeric64(name, s)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2] or m.shape[-1] < 1:
        raise ValueError(f"{name}: expected (..., n, n) square matrices, got {m.shape}")
    _finite(name, m)
    if np.any(m < 0):
        raise ValueError(f"{name}: expected entries >= 0")
    rows = m.sum(axis=-1, keepdims=True)
    if np.any(rows == 0):
        raise ValueError(f"{name}: a row sums to 0")
    return m / rows


# ---------------------------------------------------------------------------------------------
# §11 delentropy, delentropic_scene_profile
# ---------------------------------------------------------------------------------------------


def delentropy(
    image: Any,
    *,
    gradient: str = "sobel",
    bins: int = 511,
    value_range: tuple[float, float] = (-256.0, 256.0),
    blur_sigma: float | None = 1.0,
    base: float = 2.0,
    prefactor: float = 0.5,
) -> Any:
    """Delentropy of a greyscale image: the entropy of the joint histogram of its gradient.

    1. Blur (unless ``blur_sigma=None``): 3 × 3 Gaussian ``exp(−x²/(2σ²))`` normalised, border
       reflect-101; a uint8 image is rounded back to integers (an 8-bit pipeline).
    2. Gradients ``(f_x, f_y)``, border reflect-101: ``"sobel"`` (correlation with
       ``[[−1,0,1],[−2,0,2],[−1,0,1]]`` and its transpose), ``"central"`` ``f(n+1) − f(n−1)``,
       ``"forward"`` ``f(n+1) − f(n)``.
    3. Joint histogram, ``bins`` equal bins per axis over ``value_range`` (last bin closed),
       values outside dropped.
    4. ``H = −prefactor Σ p log p`` in ``base`` (bits by default; the ½ because both components
       come from one image). No pixel in range → NaN.

    ``image (..., H, W)``, ``H, W ≥ 2``. Returns float64 ``(...)``. Defaults = ClaraVid settings.
    Spec: ``more.md`` §11. Larkin, arXiv 1609.01117; ClaraVid, arXiv 2503.17856.
    """
    img = as_array("image", image)
    is_uint8 = img.dtype == np.uint8
    f = _numeric64("image", img)
    if f.ndim < 2 or f.shape[-1] < 2 or f.shape[-2] < 2:
        raise ValueError(f"image: expected shape (..., H, W) with H, W >= 2, got {f.shape}")
    _finite("image", f)
    gradient = choice("gradient", gradient, GRADIENTS)
    bins = integer("bins", bins, low=1)
    low, high = _value_range(value_range)
    ln_base = _log_base("base", base)
    prefactor = real("prefactor", prefactor)
    if blur_sigma is not None:
        sigma = real("blur_sigma", blur_sigma, low=0.0, low_open=True)
        f = _gaussian_blur3(f, sigma)
        if is_uint8:
            f = np.clip(np.rint(f), 0, 255)
    gx, gy = _gradients(f, gradient)
    flat_x = gx.reshape(-1, gx.shape[-2] * gx.shape[-1])
    flat_y = gy.reshape(flat_x.shape)
    out = np.empty(flat_x.shape[0])
    for i in range(flat_x.shape[0]):
        counts, _, _ = np.histogram2d(
            flat_x[i], flat_y[i], bins=bins, range=[[low, high], [low, high]]
        )
        total = counts.sum()
        if total == 0:
            out[i] = np.nan
            continue
        p = counts[counts > 0] / total
        out[i] = 0.0 - prefactor * float((p * np.log(p)).sum()) / ln_base
    return _scalar_out(out.reshape(f.shape[:-2]))


def delentropic_scene_profile(values: Any) -> tuple[float, float, float, float]:
    """Beta distribution of a scene's per-image delentropies, by moments → ``(a, b, mean, std)``.

    Min–max scale ``values`` to ``[0, 1]``, clip to ``[1e-6, 1 − 1e-6]``; ``m`` mean, ``v``
    population variance, ``k = m(1 − m)/v − 1``; ``a = m k``, ``b = (1 − m) k``, ``std = √v``.
    All values equal (or fewer than 2) → ``ValueError``.

    Spec: ``more.md`` §11. ClaraVid, arXiv 2503.17856 (rdbch/claravid_code
    ``scene_complexity_profile.py``).
    """
    v = _numeric64("values", values).reshape(-1)
    _finite("values", v)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if v.size < 2 or lo == hi:
        raise ValueError("values: expected at least two different values")
    x = np.clip((v - lo) / (hi - lo), PROFILE_CLIP, 1.0 - PROFILE_CLIP)
    m = float(x.mean())
    var = float(((x - m) ** 2).mean())
    k = m * (1.0 - m) / var - 1.0
    return m * k, (1.0 - m) * k, m, math.sqrt(var)


def _value_range(value_range: Any) -> tuple[float, float]:
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise TypeError(f"value_range: expected (low, high), got {value_range!r}")
    low = real("value_range", value_range[0])
    high = real("value_range", value_range[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"value_range: expected finite low < high, got {value_range!r}")
    return low, high


def _reflect101(f: np.ndarray) -> np.ndarray:
    """Pad the last two axes by one with border reflect-101 (``f(−1) = f(1)``)."""
    pad = [(0, 0)] * (f.ndim - 2) + [(1, 1), (1, 1)]
    return np.pad(f, pad, mode="reflect")


def _gaussian_blur3(f: np.ndarray, sigma: float) -> np.ndarray:
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2.0 * sigma * sigma))
    g = g / g.sum()
    p = _reflect101(f)
    rows = g[0] * p[..., :-2, :] + g[1] * p[..., 1:-1, :] + g[2] * p[..., 2:, :]
    return g[0] * rows[..., :, :-2] + g[1] * rows[..., :, 1:-1] + g[2] * rows[..., :, 2:]


def _gradients(f: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(f_x, f_y)`` with border reflect-101; ``x`` is the last axis (columns)."""
    p = _reflect101(f)
    c = p[..., 1:-1, 1:-1]
    if kind == "sobel":
        dx = p[..., :, 2:] - p[..., :, :-2]  # (H+2, W)
        dy = p[..., 2:, :] - p[..., :-2, :]  # (H, W+2)
        gx = dx[..., :-2, :] + 2.0 * dx[..., 1:-1, :] + dx[..., 2:, :]
        gy = dy[..., :, :-2] + 2.0 * dy[..., :, 1:-1] + dy[..., :, 2:]
        return gx, gy
    if kind == "central":
        return p[..., 1:-1, 2:] - p[..., 1:-1, :-2], p[..., 2:, 1:-1] - p[..., :-2, 1:-1]
    return p[..., 1:-1, 2:] - c, p[..., 2:, 1:-1] - c


# ---------------------------------------------------------------------------------------------
# §12 structural_entropy
# ---------------------------------------------------------------------------------------------


def structural_entropy(adjacency: Any, labels: Any = None, *, base: float = 2.0) -> float:
    """Structural entropy of a weighted graph: one-dimensional, or of a two-level partition.

    ``W (n, n)`` symmetric, ≥ 0; ``d_v = Σ_u W_uv`` (a self-loop counted once), ``vol = Σ d_v``
    (0 → ``ValueError``). Without ``labels``: ``H¹ = −Σ_v (d_v/vol) log(d_v/vol)``. With
    ``labels (n,)`` (modules ``X_j``, volume ``V_j``, cut weight ``g_j`` of the edges leaving
    ``X_j``): ``H^P = −Σ_j (g_j/vol) log(V_j/vol) − Σ_j Σ_{v∈X_j} (d_v/vol) log(d_v/V_j)``.
    Zero-degree nodes and zero-volume modules contribute 0. Bits by default (``base``).

    Spec: ``more.md`` §12. Li & Pan, "Structural Information and Dynamical Complexity of
    Networks", IEEE Trans. Inf. Theory 2016; SECodec, arXiv 2501.00018
    (SELGroup/HISEvent ``SE.py``).
    """
    w = _numeric64("adjacency", adjacency)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 1:
        raise ValueError(f"adjacency: expected a square (n, n) matrix, got {w.shape}")
    _finite("adjacency", w)
    if np.any(w < 0):
        raise ValueError("adjacency: expected weights >= 0")
    if not np.array_equal(w, w.T):
        raise ValueError("adjacency: expected a symmetric matrix")
    ln_base = _log_base("base", base)
    d = w.sum(axis=0)
    vol = float(d.sum())
    if vol == 0:
        raise ValueError("adjacency: the graph has no edge weight (vol = 0)")
    if labels is None:
        return (0.0 - float(_xlogy(d / vol, d / vol).sum())) / ln_base
    lab = int64_array("labels", labels)
    if lab.shape != (w.shape[0],):
        raise ValueError(f"labels: expected shape ({w.shape[0]},), got {lab.shape}")
    total = 0.0
    for j in np.unique(lab):
        inside = lab == j
        v_j = float(d[inside].sum())
        if v_j == 0:
            continue
        g_j = float(w[np.ix_(inside, ~inside)].sum())
        total -= (g_j / vol) * math.log(v_j / vol)
        total -= float(_xlogy(d[inside] / vol, d[inside] / v_j).sum())
    return total / ln_base


# ---------------------------------------------------------------------------------------------
# §13 pds_entropy
# ---------------------------------------------------------------------------------------------


def pds_entropy(counts: Any, *, n_categories: int | None = None) -> Any:
    """Normalised entropy (evenness) of counts over categories: ``−Σ p ln p / ln K`` with
    ``p = counts / Σ counts`` over the last axis and ``K = n_categories`` (default: the axis
    length; a larger ``K`` acts as zero padding). In ``[0, 1]`` (× 100: the paper's percentages).
    An all-zero row → NaN; negative counts, ``K < 2`` or ``K`` below the axis length →
    ``ValueError``. Returns float64 ``(...)``.

    **Reconstructed** (category list, ``K``, pooling are the caller's). Spec: ``more.md`` §13.
    "WorldView-Bench", arXiv 2505.09595.
    """
    c = _count_array("counts", counts)
    k = c.shape[-1] if n_categories is None else integer("n_categories", n_categories)
    if k < 2 or k < c.shape[-1]:
        raise ValueError(f"n_categories: expected >= max(2, {c.shape[-1]}), got {k}")
    total = c.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        p = c / total
    h = np.where(total[..., 0] > 0, _entropy_rows(np.nan_to_num(p)), np.nan)
    return _scalar_out(h / math.log(k))


# ---------------------------------------------------------------------------------------------
# §14 history_consistency (CCD)
# ---------------------------------------------------------------------------------------------


def history_consistency(
    x: Any, *, from_logits: bool = False, weights: Any = None, mask: Any = None
) -> tuple[Any, Any, Any]:
    """Consistency of a position's predictions over the last ``W`` decoding steps →
    ``(entropy_of_mean, mean_entropy, mutual_information)``.

    ``x (W, ..., V)``: probabilities (or logits with ``from_logits=True``) at each of the last
    ``W`` steps; ``ω = weights / Σ weights`` (default uniform, ``weights (W,) ≥ 0``). ``p̄ =
    Σ_w ω_w p_w``; ``H(p̄) = Σ_w ω_w H(p_w) + I`` with ``I ≥ 0`` the generalised Jensen–Shannon
    divergence, computed as ``H(p̄) − mean H`` clamped at 0. ``mask`` (broadcastable to
    ``x.shape[:-1]``) drops steps of a position (``ω`` renormalised over its kept steps); a
    position with no kept step reads 0 in all three results. Returns float64 arrays ``(...)``.

    The paper's adaptive unmasking budget is not implemented. Spec: ``more.md`` §14. "Beyond
    Confidence: Adaptive and Coherent Decoding for Diffusion Language Models", arXiv 2512.02044.
    """
    v = float64_array("x", x)
    if v.ndim < 2 or v.shape[-1] < 1 or v.shape[0] < 1:
        raise ValueError(f"x: expected shape (W, ..., V) with W, V >= 1, got {v.shape}")
    n_steps = v.shape[0]
    keep = _row_mask("mask", mask, v.shape[:-1])
    omega = _step_weights(weights, n_steps)
    om = np.where(keep, omega.reshape((n_steps,) + (1,) * (v.ndim - 2)), 0.0)
    norm = om.sum(axis=0)
    alive = norm > 0
    om = np.where(alive, om / np.where(alive, norm, 1.0), 0.0)
    _no_nan("x", v[keep])
    safe = np.where(keep[..., None], v, 0.0 if not from_logits else -np.inf)
    if from_logits:
        _finite_logits("x", safe, keep)
        p = np.where(keep[..., None], _softmax(np.where(keep[..., None], safe, 0.0)), 0.0)
    else:
        _probabilities("x", safe)
        p = safe
    h_steps = _entropy_rows(p)
    mean_h = (om * h_steps).sum(axis=0)
    p_bar = (om[..., None] * p).sum(axis=0)
    h_bar = _entropy_rows(p_bar)
    mi = np.maximum(h_bar - mean_h, 0.0)
    zero = np.zeros_like(h_bar)
    return tuple(_scalar_out(np.where(alive, r, zero)) for r in (h_bar, mean_h, mi))


def _step_weights(weights: Any, n_steps: int) -> np.ndarray:
    if weights is None:
        return np.full(n_steps, 1.0 / n_steps)
    w = float64_array("weights", weights)
    if w.shape != (n_steps,):
        raise ValueError(f"weights: expected shape ({n_steps},), got {w.shape}")
    _finite("weights", w)
    if np.any(w < 0) or w.sum() == 0:
        raise ValueError("weights: expected values >= 0 with a positive sum")
    return w / w.sum()
