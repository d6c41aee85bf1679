"""Nucleus (top-p) entropy on torch tensors, differentiable (``rollout.md`` §13, SIREN).

The torch face of ``entcore.reference.token.nucleus_entropy``: same name, argument names and
defaults. Runs in torch ops on the input's device (CUDA tensors stay on the GPU).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["nucleus_entropy"]

#: The ``1e-12`` of SIREN's renormalisation and logarithm (``rollout.md`` §13).
NUCLEUS_EPS = 1e-12

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def nucleus_entropy(
    logits: torch.Tensor, *, top_p: float = 0.8, top_k: int = 10000, temperature: Any = 1.0
) -> torch.Tensor:
    """Entropy of the renormalised top-p nucleus, in nats, per row (``rollout.md`` §13).

    ``p = softmax(z / T)``; the ``top_k`` largest logits in descending order (ties by lower
    index); ``C_r = Σ_{i≤r} p_(i)``; cut ``c = min{r : C_r ≥ top_p}`` (``min(top_k, V)`` if never
    reached); keep ranks ``r < c`` (the token crossing ``top_p`` is excluded: a top-1 ``p ≥
    top_p`` gives an empty nucleus and 0); ``q = p·keep / (Σ p·keep + 1e-12)``,
    ``H^p = −Σ q log(q + 1e-12)``.

    Differentiable through ``p`` (not through the cut). ``s = Σ exp(z' − max z')`` over the full
    vocabulary is taken in float32 (float64 for float64 logits); the ``top_k`` kept logits are
    scaled and the tail (``p``, cumulative sum, cut, ``q``, ``H^p``) computed in float64.
    ``-inf`` logits have ``p = 0``; NaN, ``+inf`` or an all ``-inf`` row → ``ValueError``.
    ``temperature``: ``T > 0``, a scalar or one value per row.

    Args:
        logits: ``(..., V)`` float32, float16, bfloat16 or float64 tensor, ``V ≥ 1``.

    Returns float32 (float64 for float64 logits) of shape ``logits.shape[:-1]``.

    Paper: *Rethinking Entropy Regularization in Large Reasoning Models* (arXiv 2509.25133).
    Matches Linn3a/siren ``verl/verl/workers/actor/dp_actor.py :: efficient_top_p_sampling``.
    Reference: ``entcore.reference.token.nucleus_entropy``.
    """
    if isinstance(top_p, bool) or np.ndim(top_p) != 0:
        raise TypeError(f"top_p: expected a real scalar, got {top_p!r}")
    p_cut = float(top_p)
    if not 0.0 <= p_cut <= 1.0:
        raise ValueError(f"top_p: expected a value in [0, 1], got {p_cut}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
        raise TypeError(f"top_k: expected an int, got {type(top_k).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k: expected an int >= 1, got {top_k}")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"logits: expected float32, float16, bfloat16 or float64, got dtype {logits.dtype}"
        )
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits: expected shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    row_shape = tuple(logits.shape[:-1])
    vocab = logits.shape[-1]
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.reshape(-1, vocab)
    detached = z.detach()
    if bool(torch.isnan(detached).any()):
        raise ValueError("logits: contains NaN")
    if bool((detached == math.inf).any()):
        raise ValueError("logits: contains +inf (only -inf, a masked entry, is allowed)")
    all_masked = (detached == -math.inf).all(dim=-1)
    if bool(all_masked.any()):
        row = int(torch.nonzero(all_masked)[0, 0])
        raise ValueError(f"logits: row {row} has every logit -inf (no finite entry)")
    temps = _row_temperatures(temperature, row_shape, z.shape[0], z.device)

    # As the reference: m = max z', s = Σ exp(z' − m) (in acc, over the full vocabulary),
    # log p = (z' − m) − log s. m is a constant for autograd (p does not depend on it).
    scaled = z.to(acc) / temps.to(acc)[:, None]  # z' = z / T after the upcast, never in place
    if bool((scaled.detach() == math.inf).any()):
        raise ValueError("temperature: too small, logits / temperature overflows")
    m = detached.amax(dim=-1).to(torch.float64) / temps  # max z' (T > 0 keeps the order)
    s = torch.exp(scaled - m.to(acc)[:, None]).sum(dim=-1)
    k = min(int(top_k), vocab)
    # The order of z' = z / T is the order of z (ties: equal logits), so rank the raw logits;
    # the kept logits are rescaled in float64 as the reference does.
    index = _top_indices(detached, k)
    top = torch.gather(z, -1, index).to(torch.float64) / temps[:, None]
    log_s = torch.log(s.to(torch.float64))[:, None]
    p_sorted = torch.exp((top - m[:, None]) - log_s)  # exactly 0 at -inf logits
    cumulative = torch.cumsum(p_sorted.detach(), dim=-1)
    reached = cumulative >= p_cut
    cut = torch.where(reached.any(dim=-1), torch.argmax(reached.to(torch.int8), dim=-1), k)
    keep = torch.arange(k, device=z.device)[None, :] < cut[:, None]
    kept = torch.where(keep, p_sorted, 0.0)
    q = kept / (kept.sum(dim=-1, keepdim=True) + NUCLEUS_EPS)
    entropy = 0.0 - (q * torch.log(q + NUCLEUS_EPS)).sum(dim=-1)  # an empty nucleus gives +0.0
    return entropy.to(acc).reshape(row_shape)


def _top_indices(scaled: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries per row, descending, ties by lower index."""
    if k >= scaled.shape[-1]:
        return torch.sort(scaled, dim=-1, descending=True, stable=True).indices
    candidates = torch.topk(scaled, k, dim=-1, sorted=False).indices
    # Put the candidates in index order, then stable-sort by value (descending).
    candidates = torch.sort(candidates, dim=-1).values
    order = torch.sort(
        torch.gather(scaled, -1, candidates), dim=-1, descending=True, stable=True
    ).indices
    return torch.gather(candidates, -1, order)


def _row_temperatures(
    temperature: Any, row_shape: tuple[int, ...], rows: int, device: torch.device
) -> torch.Tensor:
    """``T`` per row as a float64 ``(N,)`` tensor; every value finite and ``> 0``."""
    if isinstance(temperature, torch.Tensor):
        values = temperature.detach().to(device=device, dtype=torch.float64)
    else:
        if isinstance(temperature, bool):
            raise TypeError("temperature: expected a real number, got a bool")
        try:
            values = torch.as_tensor(np.asarray(temperature, dtype=np.float64), device=device)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"temperature: expected a real number or array, got {type(temperature).__name__}"
            ) from err
    try:
        values = torch.broadcast_to(values, row_shape)
    except RuntimeError:
        raise ValueError(
            f"temperature: shape {tuple(values.shape)} does not broadcast to the row shape "
            f"{row_shape}"
        ) from None
    if not bool(torch.all(torch.isfinite(values) & (values > 0))):
        raise ValueError("temperature: every value must be finite and > 0")
    return values.reshape(rows).contiguous()
