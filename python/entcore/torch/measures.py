"""The other entropy measures of ``more.md`` on torch tensors: any device, differentiable where
the math is.

The torch face of ``entcore.measures``: same names, argument names and defaults as the float64
oracle ``entcore.reference.measures`` (whose docstrings hold the long form of every rule).

- Precision: :func:`attention_entropy`, :func:`history_consistency`, the losses
  (:func:`deyo`, :func:`ldr_kl_loss`, :func:`aldr_kl_loss`, :func:`marginal_entropy`) and
  :func:`attention_entropy_regularizer` compute in float32 (float64 for float64 input) and return
  that dtype, so that ``gradcheck`` runs in float64; :func:`semantic_entropy` returns float32;
  every other utility computes and returns float64 (``more.md`` preamble).
- Gradients flow through ``attention_entropy`` (``-inf`` scores get a zero gradient, never NaN),
  the regulariser (``entropy`` and ``theta``), ``history_consistency``, DeYO's entropies (weights
  and PLPD are constants), the LDR losses (``lam_new`` is a constant) and ``marginal_entropy``.
- Everything runs in torch ops on the input's device (checks of values synchronise once per
  checked tensor), except :func:`attention_entropy` on CPU tensors that need no gradient (and
  are not float64): they go to the Rust core of ``entcore.measures`` without a copy.
  ``inv_entropy_bootstrap`` draws its answer tuples with NumPy from ``seed`` (the draws of every
  face are the same).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from entcore import measures as _np_measures
from entcore.reference._layout import choice
from entcore.reference.measures import (
    ALDR_P_FLOOR,
    ATTENTION_NORMALIZE,
    ATTENTION_REDUCE,
    GRADIENTS,
    LOSS_REDUCTION,
    NAN_POLICIES,
    PROFILE_CLIP,
    REGULARIZER_REDUCTION,
    SCORE_TRANSFORMS,
    SEMANTIC_ESTIMATORS,
    DeyoResult,
    _optional_choice,
    _value_range,
    bootstrap_draws,
)
from entcore.torch.rollout import (
    _as_bool,
    _as_float,
    _as_int,
    _device_of,
    _float_tensor,
    _integer,
    _numeric,
    _numpy_view,
    _real,
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

_F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return _F64 if x.dtype == _F64 else torch.float32


def _plogp_sum(p: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ p ln q`` over the last axis (``q = p`` by default), ``0 · ln 0 = 0``, finite gradient."""
    q = p if q is None else q
    pos = p > 0
    logs = torch.where(pos, torch.log(torch.where(pos, q, torch.ones_like(q))), 0.0)
    return (p * logs).sum(dim=-1)


def _entropy_from_logits(z: torch.Tensor) -> torch.Tensor:
    """``−Σ p ln p`` of ``softmax(z)`` (``-inf`` entries masked, zero gradient there)."""
    lp = torch.log_softmax(z, dim=-1)
    finite = torch.isfinite(z)
    return -(lp.exp() * torch.where(finite, lp, 0.0)).sum(dim=-1)


def _check_logits(name: str, z: torch.Tensor) -> None:
    if bool((z == math.inf).any()):
        raise ValueError(f"{name}: +inf logits are not allowed")
    if z.shape[-1] and not bool(torch.isfinite(z).any(dim=-1).all()):
        raise ValueError(f"{name}: a row has no finite logit (all -inf)")


def _check_probabilities(name: str, p: torch.Tensor) -> None:
    if bool(((p < 0) | torch.isinf(p)).any()):
        raise ValueError(f"{name}: probabilities must be finite and >= 0")


def _no_nan(name: str, x: torch.Tensor) -> None:
    if bool(torch.isnan(x).any()):
        raise ValueError(f"{name}: contains NaN")


def _finite(name: str, x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values")


def _row_mask(name: str, mask: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    m = _as_bool(name, mask, device)
    try:
        return torch.broadcast_to(m, shape)
    except RuntimeError:
        raise ValueError(f"{name}: shape {tuple(m.shape)} does not broadcast to {shape}") from None


def _counts(name: str, x: Any, device: torch.device) -> torch.Tensor:
    c = _numeric(name, x, device)
    if c.ndim < 1 or c.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (..., A) with A >= 1, got {tuple(c.shape)}")
    _finite(name, c)
    if bool((c < 0).any()):
        raise ValueError(f"{name}: expected counts >= 0")
    return c


def _log_base(name: str, base: Any) -> float:
    value = _real(name, base, low=0.0, low_open=True)
    if value == 1.0 or math.isinf(value):
        raise ValueError(f"{name}: expected a finite base > 0 other than 1, got {value}")
    return math.log(value)


# ---------------------------------------------------------------------------------------------
# §1 attention_entropy, §2 entropic_overload_fraction, §3 the regulariser
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
) -> torch.Tensor:
    """Per-query attention entropy ``H_i = −Σ_j A_ij ln(A_ij + eps)``, differentiable.

    See :func:`entcore.reference.measures.attention_entropy`. Spec: ``more.md`` §1;
    arXiv 2501.03489.
    """
    if isinstance(attn, (list, tuple)):
        if not attn:
            raise ValueError("attn: expected at least one layer")
        layers = [_float_tensor("attn", layer) for layer in attn]
        if any(t.shape != layers[0].shape for t in layers) or layers[0].ndim != 4:
            raise ValueError("attn: every layer must have the same shape (B, H, Q, K)")
        a = torch.stack(layers)
    else:
        a = _float_tensor("attn", attn)
        if a.ndim not in (4, 5):
            raise ValueError(
                f"attn: expected (B, H, Q, K) or (L, B, H, Q, K), got shape {tuple(a.shape)}"
            )
    needs_graph = a.requires_grad and torch.is_grad_enabled()
    if a.device.type == "cpu" and a.dtype != _F64 and not needs_graph:
        # No graph to build: the Rust core of the NumPy face (float32 results, as here).
        masks = {"key_mask": key_mask, "query_mask": query_mask}
        out = _np_measures.attention_entropy(
            _numpy_view(a),
            from_logits=from_logits,
            causal=causal,
            normalize=normalize,
            eps=_real("eps", eps, low=0.0),
            reduce=reduce,
            nan_policy=nan_policy,
            **{k: None if v is None else _host_bool(k, v) for k, v in masks.items()},
        )
        return torch.from_numpy(np.ascontiguousarray(out))
    normalize = _optional_choice("normalize", normalize, ATTENTION_NORMALIZE)
    reduce = choice("reduce", reduce, ATTENTION_REDUCE)
    propagate = choice("nan_policy", nan_policy, NAN_POLICIES) == "propagate"
    eps = _real("eps", eps, low=0.0)
    batch, n_queries, n_keys = a.shape[-4], a.shape[-2], a.shape[-1]
    if n_keys < 1:
        raise ValueError(f"attn: the key (last) dimension is empty, shape {tuple(a.shape)}")
    if normalize == "log_keys" and n_keys < 2:
        raise ValueError("normalize: 'log_keys' needs K >= 2 keys")
    device = a.device
    a = a.to(_compute_dtype(a))
    sees = torch.ones((batch, 1, n_queries, n_keys), dtype=torch.bool, device=device)
    if causal:
        if n_queries > n_keys:
            raise ValueError(f"causal: needs Q <= K, got Q = {n_queries}, K = {n_keys}")
        i = torch.arange(n_queries, device=device)[:, None]
        j = torch.arange(n_keys, device=device)[None, :]
        sees = sees & (j <= n_keys - n_queries + i)
    if key_mask is not None:
        km = _as_bool("key_mask", key_mask, device)
        if tuple(km.shape) != (batch, n_keys):
            raise ValueError(f"key_mask: expected shape ({batch}, {n_keys}), got {tuple(km.shape)}")
        sees = sees & km[:, None, None, :]
    if query_mask is None:
        rows = torch.ones((batch, 1, n_queries), dtype=torch.bool, device=device)
    else:
        qm = _as_bool("query_mask", query_mask, device)
        if tuple(qm.shape) != (batch, n_queries):
            raise ValueError(
                f"query_mask: expected shape ({batch}, {n_queries}), got {tuple(qm.shape)}"
            )
        rows = qm[:, None, :]
    live = rows[..., None]
    nan_rows = (torch.isnan(a) & sees & live).any(dim=-1)
    if not propagate and bool(nan_rows.any()):
        raise ValueError("attn: contains NaN (pass nan_policy='propagate' for NaN rows)")
    safe = torch.where(torch.isnan(a) | ~live, 0.0, a)
    if from_logits:
        s = torch.where(live, torch.where(sees, safe, -math.inf), 0.0)
        _check_logits("attn", s)
        if eps == 0.0:
            h = _entropy_from_logits(s)
        else:
            p = torch.softmax(s, dim=-1)
            h = -_plogp_sum(p, p + eps)
    else:
        p = torch.where(sees, safe, 0.0)
        _check_probabilities("attn", p)
        h = -_plogp_sum(p, p + eps)
    if normalize == "log_keys":
        h = h / math.log(n_keys)
    elif normalize == "row":
        seen = sees.sum(dim=-1).to(h.dtype).expand_as(h)
        many = seen > 1
        h = torch.where(many, h / torch.log(torch.where(many, seen, 2.0)), 0.0)
    h = torch.where(nan_rows, math.nan, h)
    valid = rows.expand_as(h)
    h = torch.where(valid, h, 0.0)
    if reduce == "mean_queries":
        return h.sum(dim=-1) / valid.sum(dim=-1)
    if reduce == "head_mean":
        return h.sum(dim=(-3, -1)) / valid.sum(dim=(-3, -1))
    return h


def _host_bool(name: str, x: Any) -> np.ndarray:
    """A mask as a NumPy bool array (0/1 values checked as everywhere)."""
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    return _as_bool(name, x, device).cpu().numpy()


def entropic_overload_fraction(
    head_entropy: Any, *, max_entropy: Any, threshold: float = 0.75, side: str = "above"
) -> torch.Tensor:
    """Fraction of heads with ``H ≥ threshold · max_entropy`` (``"above"``) or below it
    (``"below"``), float64 ``head_entropy.shape[:-1]``. Spec: ``more.md`` §2.
    """
    h = _float_tensor("head_entropy", head_entropy).detach().to(_F64)
    if h.ndim < 1 or h.shape[-1] < 1:
        raise ValueError(
            f"head_entropy: expected shape (..., heads) with heads >= 1, got {tuple(h.shape)}"
        )
    _no_nan("head_entropy", h)
    e_max = _numeric("max_entropy", max_entropy, h.device)
    if not bool((torch.isfinite(e_max) & (e_max > 0)).all()):
        raise ValueError("max_entropy: expected finite values > 0")
    t = _real("threshold", threshold, low=0.0)
    side = choice("side", side, ("above", "below"))
    try:
        bound = torch.broadcast_to(t * e_max, h.shape)
    except RuntimeError:
        raise ValueError(
            f"max_entropy: shape {tuple(e_max.shape)} does not broadcast to head_entropy "
            f"{tuple(h.shape)}"
        ) from None
    hit = h >= bound if side == "above" else h < bound
    return hit.to(_F64).mean(dim=-1)


def attention_entropy_regularizer(
    entropy: Any,
    theta: Any,
    *,
    max_entropy: float,
    tolerance: float = 0.2,
    query_mask: Any = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Dead-zone squared deviation of per-row attention entropies from ``θ · E_max``,
    differentiable in ``entropy`` and ``theta``. Spec: ``more.md`` §3; arXiv 2501.03489.
    """
    h = _float_tensor("entropy", entropy)
    if h.ndim != 4:
        raise ValueError(f"entropy: expected shape (L, B, H, Q), got {tuple(h.shape)}")
    n_layers, batch, n_heads, n_queries = h.shape
    th = _as_float("theta", theta, h.device)
    dtype = _F64 if _F64 in (h.dtype, th.dtype) else torch.float32
    if tuple(th.shape) == (n_heads,):
        th = th.expand(n_layers, n_heads)
    elif tuple(th.shape) != (n_layers, n_heads):
        raise ValueError(
            f"theta: expected shape ({n_heads},) or ({n_layers}, {n_heads}), got {tuple(th.shape)}"
        )
    _finite("theta", th.detach())
    e_max = _real("max_entropy", max_entropy, low=0.0, low_open=True)
    gamma = _real("tolerance", tolerance, low=0.0)
    reduction = choice("reduction", reduction, REGULARIZER_REDUCTION)
    if query_mask is None:
        rows = torch.ones((batch, n_queries), dtype=torch.bool, device=h.device)
    else:
        rows = _as_bool("query_mask", query_mask, h.device)
        if tuple(rows.shape) != (batch, n_queries):
            raise ValueError(
                f"query_mask: expected shape ({batch}, {n_queries}), got {tuple(rows.shape)}"
            )
    valid = rows[None, :, None, :].expand(h.shape)
    _no_nan("entropy", h.detach()[valid])
    dev = h.to(dtype) - th.to(dtype)[:, None, :, None] * e_max
    dev = torch.where(valid, dev, 0.0)
    penalty = torch.where(dev.abs() > gamma * e_max, dev * dev, 0.0)
    layer = penalty.sum(dim=(1, 2, 3)) / n_heads
    if reduction == "mean":
        count = int(rows.sum())
        if count == 0:
            raise ValueError("query_mask: no valid query row")
        layer = layer / count
    return layer.mean()


# ---------------------------------------------------------------------------------------------
# §4 entropy_invariant_scale, §5 deyo
# ---------------------------------------------------------------------------------------------


def entropy_invariant_scale(n_train: Any, n_infer: Any, head_dim: Any) -> torch.Tensor:
    """``λ = sqrt(ln n_infer / ln n_train) / sqrt(head_dim)`` (float64, broadcast).
    Spec: ``more.md`` §4; arXiv 2306.08645.
    """
    device = _device_of(n_train, n_infer, head_dim)
    values = []
    for name, v, low in (
        ("n_train", n_train, 2),
        ("n_infer", n_infer, 1),
        ("head_dim", head_dim, 1),
    ):
        t = _numeric(name, v, device)
        if not bool((torch.isfinite(t) & (t >= low)).all()):
            raise ValueError(f"{name}: expected finite values >= {low}")
        values.append(t)
    n_tr, n_in, d = values
    return torch.sqrt(torch.log(n_in) / torch.log(n_tr)) / torch.sqrt(d)


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
    """DeYO selection and weighting; ``loss`` is differentiable through the selected entropies
    (weights and PLPD are constants; an empty selection gives a zero attached to the graph).
    Spec: ``more.md`` §5; arXiv 2403.07366.
    """
    z = _logit_matrix("logits", logits)
    z_aug = _logit_matrix("logits_aug", logits_aug)
    if z_aug.shape != z.shape:
        raise ValueError(
            f"logits_aug: expected shape {tuple(z.shape)} (as logits), got {tuple(z_aug.shape)}"
        )
    margin = _real("margin", margin, low=0.0)
    margin_e0 = _real("margin_e0", margin_e0, low=0.0)
    plpd_threshold = _real("plpd_threshold", plpd_threshold)
    n_classes = z.shape[1]
    dtype = _compute_dtype(z)
    zc = z.to(dtype)
    ent = _entropy_from_logits(zc)
    with torch.no_grad():
        y_hat = torch.argmax(zc, dim=1, keepdim=True)
        p_hat = torch.softmax(zc, dim=1).gather(1, y_hat)[:, 0]
        p_aug = torch.softmax(z_aug.detach().to(dtype), dim=1).gather(1, y_hat)[:, 0]
        plpd = p_hat - p_aug
        e = ent.detach()
        selected = (e < margin * math.log(n_classes)) & (plpd > plpd_threshold)
        weights = torch.zeros_like(e) if (reweight_ent or reweight_plpd) else torch.ones_like(e)
        if reweight_ent:
            weights = weights + torch.exp(-(e - margin_e0 * math.log(n_classes)))
        if reweight_plpd:
            weights = weights + torch.exp(plpd)
    n_sel = int(selected.sum())
    loss = torch.where(selected, weights * ent, 0.0).sum() / max(n_sel, 1)
    return DeyoResult(ent, plpd, selected, weights, loss, n_sel)


def _logit_matrix(name: str, x: Any) -> torch.Tensor:
    z = _float_tensor(name, x)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (B, C) with C >= 1, got {tuple(z.shape)}")
    _no_nan(name, z.detach())
    _check_logits(name, z.detach())
    return z


# ---------------------------------------------------------------------------------------------
# §6 LDR losses, §7 marginal_entropy
# ---------------------------------------------------------------------------------------------


def ldr_kl_loss(
    scores: Any,
    labels: Any,
    *,
    lam: float = 10.0,
    margin: float = 0.1,
    score_transform: str | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """LDR-KL ``λ ln((1/K) Σ_k exp(z_k/λ))``, ``z_k = f_k − f_y + c·[k ≠ y]``, differentiable in
    ``scores``. Spec: ``more.md`` §6; arXiv 2112.14869.
    """
    f, y = _scores_labels(scores, labels, score_transform)
    lam = _real("lam", lam, low=0.0, low_open=True)
    margin = _real("margin", margin)
    reduction = choice("reduction", reduction, LOSS_REDUCTION)
    lam_t = torch.full((f.shape[0],), lam, dtype=f.dtype, device=f.device)
    return _reduce(_ldr_rows(f, y, lam_t, margin), reduction)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALDR-KL → ``(loss, lam_new)``; ``lam_new`` is detached. Spec: ``more.md`` §6;
    arXiv 2112.14869.
    """
    f, y = _scores_labels(scores, labels, score_transform)
    n_rows, k = f.shape
    if k < 2:
        raise ValueError("scores: ALDR-KL needs K >= 2 classes")
    lam_p = _as_float("lam_prev", lam_prev, f.device).detach().to(f.dtype)
    if tuple(lam_p.shape) != (n_rows,):
        raise ValueError(f"lam_prev: expected shape ({n_rows},), got {tuple(lam_p.shape)}")
    if not bool((torch.isfinite(lam_p) & (lam_p > 0)).all()):
        raise ValueError("lam_prev: expected finite values > 0")
    lam0 = _real("lam0", lam0, low=0.0, low_open=True)
    alpha = _real("alpha", alpha)
    if not alpha > 1.0:
        raise ValueError(
            f"alpha: expected a value > 1 (lambda_new must stay positive), got {alpha}"
        )
    margin = _real("margin", margin)
    reduction = choice("reduction", reduction, LOSS_REDUCTION)
    log_k = math.log(k)
    with torch.no_grad():
        p = torch.softmax(f / lam_p[:, None], dim=1) + ALDR_P_FLOOR
        p = p / p.sum(dim=1, keepdim=True)
        kl = (p * torch.log(k * p)).sum(dim=1)
        lam_new = lam0 * (1.0 - kl / (alpha * log_k))
    per_row = _ldr_rows(f, y, lam_new, margin) - alpha * log_k / (2 * lam0) * (lam_new - lam0) ** 2
    return _reduce(per_row, reduction), lam_new


def _scores_labels(scores: Any, labels: Any, transform: Any) -> tuple[torch.Tensor, torch.Tensor]:
    f = _float_tensor("scores", scores)
    if f.ndim != 2 or f.shape[1] < 1:
        raise ValueError(f"scores: expected shape (B, K) with K >= 1, got {tuple(f.shape)}")
    _finite("scores", f.detach())
    f = f.to(_compute_dtype(f))
    y = _as_int("labels", labels, f.device)
    if tuple(y.shape) != (f.shape[0],):
        raise ValueError(f"labels: expected shape ({f.shape[0]},), got {tuple(y.shape)}")
    if bool(((y < 0) | (y >= f.shape[1])).any()):
        raise ValueError(f"labels: expected values in [0, {f.shape[1]})")
    transform = _optional_choice("score_transform", transform, SCORE_TRANSFORMS)
    if transform == "softplus_mean":
        f = F.softplus(f)
        f = f / f.mean(dim=1, keepdim=True)
    elif transform == "abs_mean":
        scale = f.abs().mean(dim=1, keepdim=True)
        if bool((scale == 0).any()):
            raise ValueError("scores: an all-zero row has no 'abs_mean' scale")
        f = f / scale
    return f, y


def _ldr_rows(f: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, margin: float) -> torch.Tensor:
    k = f.shape[1]
    is_y = F.one_hot(y, k).to(torch.bool)
    z = torch.where(is_y, 0.0, f - f.gather(1, y[:, None]) + margin)
    return lam * (torch.logsumexp(z / lam[:, None], dim=1) - math.log(k))


def _reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_row
    if per_row.shape[0] == 0:
        raise ValueError("scores: expected at least one row")
    return per_row.mean() if reduction == "mean" else per_row.sum()


def marginal_entropy(
    x: Any, *, from_logits: bool = True, eps: float = 1e-6, mask: Any = None
) -> torch.Tensor:
    """TFUP-T marginal entropy ``H(p̄) = −Σ_c p̄_c ln(p̄_c + eps)``, differentiable.
    Spec: ``more.md`` §7; arXiv 2404.16339.
    """
    v = _float_tensor("x", x)
    if v.ndim < 1 or v.shape[-1] < 1:
        raise ValueError(f"x: expected shape (..., C) with C >= 1, got {tuple(v.shape)}")
    eps = _real("eps", eps, low=0.0)
    valid = _row_mask("mask", mask, tuple(v.shape[:-1]), v.device).reshape(-1)
    rows = v.to(_compute_dtype(v)).reshape(-1, v.shape[-1])[valid]
    if rows.shape[0] == 0:
        raise ValueError("mask: no valid row")
    _no_nan("x", rows.detach())
    if from_logits:
        _check_logits("x", rows.detach())
        rows = torch.softmax(rows, dim=-1)
    else:
        _check_probabilities("x", rows.detach())
    p_bar = rows.mean(dim=0)
    return -_plogp_sum(p_bar, p_bar + eps)


# ---------------------------------------------------------------------------------------------
# §8 EAST
# ---------------------------------------------------------------------------------------------


def action_entropy(counts: Any) -> torch.Tensor:
    """``−Σ_a (c_a/n) ln(c_a/n)`` per row of ``counts (M, A)``, float64. Spec: ``more.md`` §8."""
    c = _counts("counts", counts, _device_of(counts))
    total = c.sum(dim=-1, keepdim=True)
    if bool((total == 0).any()):
        raise ValueError("counts: a row holds no action (all counts 0)")
    return -_plogp_sum(c / total)


def entropy_weighted_direction(
    activations: Any, entropies: Any, *, center: bool = True, normalize: bool = False
) -> torch.Tensor:
    """EAST direction ``Σ_i H_i (h_i − h̄) / Σ_i H_i`` (float64 ``(d,)``). Spec: ``more.md`` §8
    (reconstructed; arXiv 2406.00244).
    """
    device = _device_of(activations, entropies)
    h = _numeric("activations", activations, device)
    if h.ndim != 2 or h.shape[0] < 1:
        raise ValueError(f"activations: expected shape (M, d) with M >= 1, got {tuple(h.shape)}")
    _finite("activations", h)
    w = _numeric("entropies", entropies, device)
    if tuple(w.shape) != (h.shape[0],):
        raise ValueError(f"entropies: expected shape ({h.shape[0]},), got {tuple(w.shape)}")
    _finite("entropies", w)
    if bool((w < 0).any()):
        raise ValueError("entropies: expected values >= 0")
    total = w.sum()
    if float(total) == 0:
        raise ValueError("entropies: the sum is 0 (no weight)")
    base = h - h.mean(dim=0) if center else h
    u = (w[:, None] * base).sum(dim=0) / total
    if normalize:
        norm = torch.sqrt((u * u).sum())
        if float(norm) == 0:
            raise ValueError("normalize: the direction is 0 and has no unit vector")
        u = u / norm
    return u


# ---------------------------------------------------------------------------------------------
# §9 semantic_entropy
# ---------------------------------------------------------------------------------------------


def semantic_entropy(
    cluster_ids: Any, seq_logprob: Any = None, *, mask: Any = None, estimator: str = "rao"
) -> torch.Tensor:
    """Semantic entropy per row of ``cluster_ids (M,)`` / ``(B, M)``, float32.
    Spec: ``more.md`` §9; arXiv 2302.09664.
    """
    device = _device_of(cluster_ids, seq_logprob, mask)
    ids = _as_int("cluster_ids", cluster_ids, device)
    if ids.ndim not in (1, 2) or ids.shape[-1] < 1:
        raise ValueError(
            f"cluster_ids: expected shape (M,) or (B, M) with M >= 1, got {tuple(ids.shape)}"
        )
    estimator = choice("estimator", estimator, SEMANTIC_ESTIMATORS)
    ids2 = ids.reshape(-1, ids.shape[-1])
    n_rows, m = ids2.shape
    valid = _row_mask("mask", mask, tuple(ids.shape), device).reshape(ids2.shape)
    empty = ~valid.any(dim=1)
    if bool(empty.any()):
        raise ValueError(f"mask: row {int(torch.argmax(empty.to(torch.int8)))} keeps no sample")
    if seq_logprob is None:
        logp = torch.zeros(ids2.shape, dtype=_F64, device=device)
    else:
        lp = _as_float("seq_logprob", seq_logprob, device).detach().to(_F64)
        if lp.shape != ids.shape:
            raise ValueError(
                f"seq_logprob: expected shape {tuple(ids.shape)}, got {tuple(lp.shape)}"
            )
        logp = lp.reshape(ids2.shape)
        _no_nan("seq_logprob", logp[valid])
        if bool((logp[valid] == math.inf).any()):
            raise ValueError("seq_logprob: +inf is not a log-likelihood")
    logp = torch.where(valid, logp, -math.inf)
    dead = ~torch.isfinite(logp).any(dim=1)
    if bool(dead.any()):
        raise ValueError(
            f"seq_logprob: row {int(torch.argmax(dead.to(torch.int8)))} has every "
            "log-likelihood -inf"
        )
    sorted_ids, order = torch.sort(ids2, dim=1, stable=True)
    new = torch.ones_like(sorted_ids, dtype=torch.bool)
    new[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    local = torch.empty_like(ids2).scatter_(1, order, torch.cumsum(new.to(torch.int64), 1) - 1)
    group = (torch.arange(n_rows, device=device)[:, None] * m + local).reshape(-1)
    row_max = logp.max(dim=1).values
    flat = logp.reshape(-1)
    weight = torch.where(torch.isfinite(flat), torch.exp(flat - row_max.repeat_interleave(m)), 0.0)
    mass = torch.zeros(n_rows * m, dtype=_F64, device=device).index_add_(0, group, weight)
    mass = mass.reshape(n_rows, m)
    p = mass / mass.sum(dim=1, keepdim=True)
    present = p > 0
    logs = torch.where(present, torch.log(torch.where(present, p, 1.0)), 0.0)
    if estimator == "rao":
        out = -(p * logs).sum(dim=1)
    else:
        out = -logs.sum(dim=1) / present.sum(dim=1)
    out = out.to(torch.float32)
    return out[0] if ids.ndim == 1 else out


# ---------------------------------------------------------------------------------------------
# §10 Inv-Entropy
# ---------------------------------------------------------------------------------------------


def inv_entropy(sim_x: Any, sim_y: Any) -> torch.Tensor:
    """``Inv = −Σ_i Q_ii ln Q_ii`` with ``Q = P_Y P_X`` (row-normalised similarities), float64.
    Spec: ``more.md`` §10; arXiv 2506.09684.
    """
    device = _device_of(sim_x, sim_y)
    px = _transition("sim_x", sim_x, device)
    py = _transition("sim_y", sim_y, device)
    if px.shape != py.shape:
        raise ValueError(
            f"sim_y: expected shape {tuple(px.shape)} (as sim_x), got {tuple(py.shape)}"
        )
    q = torch.einsum("...ij,...ji->...i", py, px)
    return -_plogp_sum(q)


def inv_entropy_bootstrap(
    sim_x: Any, sim_y_all: Any, *, n_answers: int, n_bootstrap: int = 10, seed: int = 0
) -> torch.Tensor:
    """Mean :func:`inv_entropy` over distinct draws of one answer per question (the draws of
    ``entcore.reference.measures.bootstrap_draws``). float64. Spec: ``more.md`` §10.
    """
    device = _device_of(sim_x, sim_y_all)
    sx = _numeric("sim_x", sim_x, device)
    if sx.ndim != 2 or sx.shape[0] != sx.shape[1] or sx.shape[0] < 1:
        raise ValueError(f"sim_x: expected a square (n, n) matrix, got {tuple(sx.shape)}")
    n = sx.shape[0]
    n_ans = _integer("n_answers", n_answers, low=1)
    n_boot = _integer("n_bootstrap", n_bootstrap, low=1)
    seed = _integer("seed", seed, low=0)
    sy = _numeric("sim_y_all", sim_y_all, device)
    if tuple(sy.shape) != (n * n_ans, n * n_ans):
        raise ValueError(
            f"sim_y_all: expected shape ({n * n_ans}, {n * n_ans}), got {tuple(sy.shape)}"
        )
    if n_boot > n_ans**n:
        raise ValueError(f"n_bootstrap: at most n_answers^n = {n_ans**n} distinct draws")
    idx = torch.as_tensor(np.stack(bootstrap_draws(n, n_ans, n_boot, seed)), device=device)
    sim_y = sy[idx[:, :, None], idx[:, None, :]]  # (n_bootstrap, n, n)
    return inv_entropy(sx.expand(n_boot, n, n), sim_y).mean()


def _transition(name: str, s: Any, device: torch.device) -> torch.Tensor:
    m = _numeric(name, s, device)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2] or m.shape[-1] < 1:
        raise ValueError(f"{name}: expected (..., n, n) square matrices, got {tuple(m.shape)}")
    _finite(name, m)
    if bool((m < 0).any()):
        raise ValueError(f"{name}: expected entries >= 0")
    rows = m.sum(dim=-1, keepdim=True)
    if bool((rows == 0).any()):
        raise ValueError(f"{name}: a row sums to 0")
    return m / rows


# ---------------------------------------------------------------------------------------------
# §11 delentropy
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
) -> torch.Tensor:
    """Delentropy of greyscale images ``(..., H, W)`` (float64). Spec: ``more.md`` §11;
    arXiv 1609.01117, arXiv 2503.17856.
    """
    device = _device_of(image)
    is_uint8 = (isinstance(image, torch.Tensor) and image.dtype == torch.uint8) or (
        not isinstance(image, torch.Tensor) and np.asarray(image).dtype == np.uint8
    )
    f = _numeric("image", image, device)
    if f.ndim < 2 or f.shape[-1] < 2 or f.shape[-2] < 2:
        raise ValueError(f"image: expected shape (..., H, W) with H, W >= 2, got {tuple(f.shape)}")
    _finite("image", f)
    gradient = choice("gradient", gradient, GRADIENTS)
    bins = _integer("bins", bins, low=1)
    low, high = _value_range(value_range)
    ln_base = _log_base("base", base)
    prefactor = _real("prefactor", prefactor)
    lead = tuple(f.shape[:-2])
    f = f.reshape(-1, 1, *f.shape[-2:])
    if blur_sigma is not None:
        sigma = _real("blur_sigma", blur_sigma, low=0.0, low_open=True)
        g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=_F64, device=device) / (2 * sigma**2))
        g = g / g.sum()
        f = F.conv2d(F.pad(f, (1, 1, 1, 1), mode="reflect"), (g[:, None] * g[None, :])[None, None])
        if is_uint8:
            f = torch.round(f).clamp(0, 255)
    gx, gy = _gradients(f, gradient)
    edges = torch.as_tensor(np.linspace(low, high, bins + 1), device=device)
    n_img = f.shape[0]
    ix = _bin_index(gx.reshape(n_img, -1), edges, bins)
    iy = _bin_index(gy.reshape(n_img, -1), edges, bins)
    inside = (ix >= 0) & (iy >= 0)
    cell = torch.where(inside, ix * bins + iy, 0) + torch.arange(n_img, device=device)[:, None] * (
        bins * bins
    )
    counts = torch.zeros(n_img * bins * bins, dtype=_F64, device=device)
    counts = counts.index_add_(0, cell.reshape(-1), inside.reshape(-1).to(_F64))
    counts = counts.reshape(n_img, -1)
    total = counts.sum(dim=1, keepdim=True)
    p = counts / torch.where(total > 0, total, 1.0)
    h = -prefactor * _plogp_sum(p) / ln_base
    return torch.where(total[:, 0] > 0, h, math.nan).reshape(lead)


def _gradients(f: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = F.pad(f, (1, 1, 1, 1), mode="reflect")
    if kind == "sobel":
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=_F64)
        kx = kx.to(f.device)
        return F.conv2d(p, kx[None, None]), F.conv2d(p, kx.T.contiguous()[None, None])
    c = p[..., 1:-1, 1:-1]
    if kind == "central":
        return p[..., 1:-1, 2:] - p[..., 1:-1, :-2], p[..., 2:, 1:-1] - p[..., :-2, 1:-1]
    return p[..., 1:-1, 2:] - c, p[..., 2:, 1:-1] - c


def _bin_index(v: torch.Tensor, edges: torch.Tensor, bins: int) -> torch.Tensor:
    """``numpy.histogramdd`` binning: ``searchsorted(edges, v, 'right') − 1``, the top edge in the
    last bin, values outside ``[low, high]`` → −1."""
    idx = torch.searchsorted(edges, v.contiguous(), right=True) - 1
    idx = torch.where(v == edges[-1], bins - 1, idx)
    return torch.where((v < edges[0]) | (v > edges[-1]), -1, idx)


def delentropic_scene_profile(
    values: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beta-by-moments profile ``(a, b, mean, std)`` of per-image delentropies (float64 0-dim
    tensors). Spec: ``more.md`` §11.
    """
    v = _numeric("values", values, _device_of(values)).reshape(-1)
    _finite("values", v)
    if v.numel() < 2 or float(v.min()) == float(v.max()):
        raise ValueError("values: expected at least two different values")
    lo, hi = v.min(), v.max()
    x = ((v - lo) / (hi - lo)).clamp(PROFILE_CLIP, 1.0 - PROFILE_CLIP)
    m = x.mean()
    var = ((x - m) ** 2).mean()
    k = m * (1.0 - m) / var - 1.0
    return m * k, (1.0 - m) * k, m, torch.sqrt(var)


# ---------------------------------------------------------------------------------------------
# §12 structural_entropy, §13 pds_entropy
# ---------------------------------------------------------------------------------------------


def structural_entropy(adjacency: Any, labels: Any = None, *, base: float = 2.0) -> torch.Tensor:
    """One-dimensional or two-level structural entropy of a weighted graph (float64 0-dim).
    Spec: ``more.md`` §12; Li & Pan 2016.
    """
    device = _device_of(adjacency, labels)
    w = _numeric("adjacency", adjacency, device)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 1:
        raise ValueError(f"adjacency: expected a square (n, n) matrix, got {tuple(w.shape)}")
    _finite("adjacency", w)
    if bool((w < 0).any()):
        raise ValueError("adjacency: expected weights >= 0")
    if not bool(torch.equal(w, w.T)):
        raise ValueError("adjacency: expected a symmetric matrix")
    ln_base = _log_base("base", base)
    d = w.sum(dim=0)
    vol = d.sum()
    if float(vol) == 0:
        raise ValueError("adjacency: the graph has no edge weight (vol = 0)")
    if labels is None:
        return -_plogp_sum(d / vol) / ln_base
    lab = _as_int("labels", labels, device)
    if tuple(lab.shape) != (w.shape[0],):
        raise ValueError(f"labels: expected shape ({w.shape[0]},), got {tuple(lab.shape)}")
    _, module = torch.unique(lab, return_inverse=True)
    n_mod = int(module.max()) + 1
    member = F.one_hot(module, n_mod).to(_F64)  # (n, L)
    volume = member.T @ d  # V_j
    inner = ((member.T @ w) * member.T).sum(dim=1)  # weight with both ends in X_j
    cut = volume - inner  # g_j
    live = volume > 0
    vol_safe = torch.where(live, volume, 1.0)
    term_cut = torch.where(live, cut / vol * torch.log(vol_safe / vol), 0.0).sum()
    d_mod = vol_safe[module]
    pos = d > 0
    term_nodes = torch.where(pos, d / vol * torch.log(torch.where(pos, d, 1.0) / d_mod), 0.0).sum()
    return -(term_cut + term_nodes) / ln_base


def pds_entropy(counts: Any, *, n_categories: int | None = None) -> torch.Tensor:
    """Normalised entropy ``−Σ p ln p / ln K`` over the last axis (float64; all-zero row → NaN).
    Spec: ``more.md`` §13 (reconstructed; arXiv 2505.09595).
    """
    c = _counts("counts", counts, _device_of(counts))
    k = c.shape[-1] if n_categories is None else _integer("n_categories", n_categories)
    if k < 2 or k < c.shape[-1]:
        raise ValueError(f"n_categories: expected >= max(2, {c.shape[-1]}), got {k}")
    total = c.sum(dim=-1, keepdim=True)
    p = c / torch.where(total > 0, total, 1.0)
    return torch.where(total[..., 0] > 0, -_plogp_sum(p), math.nan) / math.log(k)


# ---------------------------------------------------------------------------------------------
# §14 history_consistency
# ---------------------------------------------------------------------------------------------


def history_consistency(
    x: Any, *, from_logits: bool = False, weights: Any = None, mask: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(entropy_of_mean, mean_entropy, mutual_information)`` over the last ``W`` decoding steps,
    differentiable in ``x``. Spec: ``more.md`` §14; arXiv 2512.02044.
    """
    v = _float_tensor("x", x)
    if v.ndim < 2 or v.shape[-1] < 1 or v.shape[0] < 1:
        raise ValueError(f"x: expected shape (W, ..., V) with W, V >= 1, got {tuple(v.shape)}")
    n_steps = v.shape[0]
    device = v.device
    keep = _row_mask("mask", mask, tuple(v.shape[:-1]), device)
    if weights is None:
        omega = torch.full((n_steps,), 1.0 / n_steps, dtype=_F64, device=device)
    else:
        omega = _as_float("weights", weights, device).detach().to(_F64)
        if tuple(omega.shape) != (n_steps,):
            raise ValueError(f"weights: expected shape ({n_steps},), got {tuple(omega.shape)}")
        _finite("weights", omega)
        if bool((omega < 0).any()) or float(omega.sum()) == 0:
            raise ValueError("weights: expected values >= 0 with a positive sum")
        omega = omega / omega.sum()
    dtype = _compute_dtype(v)
    vc = v.to(dtype)
    _no_nan("x", vc.detach()[keep])
    kv = keep[..., None]
    om = torch.where(keep, omega.to(dtype).reshape((n_steps,) + (1,) * (v.ndim - 2)), 0.0)
    norm = om.sum(dim=0)
    alive = norm > 0
    om = torch.where(alive, om / torch.where(alive, norm, 1.0), 0.0)
    if from_logits:
        z = torch.where(kv, vc, 0.0)
        _check_logits("x", z.detach())
        lp = torch.log_softmax(z, dim=-1)
        p = torch.where(kv, lp.exp(), 0.0)
        h_steps = -(p * torch.where(torch.isfinite(z), lp, 0.0)).sum(dim=-1)
    else:
        p = torch.where(kv, vc, 0.0)
        _check_probabilities("x", p.detach())
        h_steps = -_plogp_sum(p)
    mean_h = (om * h_steps).sum(dim=0)
    h_bar = -_plogp_sum((om[..., None] * p).sum(dim=0))
    mi = torch.clamp(h_bar - mean_h, min=0.0)
    return tuple(torch.where(alive, r, 0.0) for r in (h_bar, mean_h, mi))
