"""Triton kernels of the logits path (``token.md`` §2, §5, §8.1): one read of each row.

Forward: one program per row walks the vocabulary in tiles of ``BLOCK_V`` entries, widens each
tile to float32 in registers (bf16/fp16/fp32 input), scales ``z' = z / T`` and merges every entry
into a per-lane row state ``(m, s, w, q)`` of ``token.md`` §2 (lane ``i`` sees entries
``i, i + BLOCK_V, …``; one ``exp`` per entry: the new maximum's own term is ``exp(0) = 1``, the
rescale of the old state is ``exp(m_old − z)``). The lanes are merged once at the end with the
rule of §2 (online softmax, Milakov & Gimelshein, arXiv 1805.02867). Masked (``-inf``) entries
and NaN add an exact 0; a NaN-propagating running maximum feeds a per-row status word (bit 0:
NaN, bit 1: ``+inf`` in ``z / T``, bit 2: every entry ``-inf``) that the caller turns into the
documented errors or NaN rows (``token.md`` §4; a ``+inf`` row always raises). The running
maximum starts at ``-inf``. ``z / T`` is rounded to nearest as in the torch path (:func:`divide`).
Outputs per row: ``H = log s − w/s``, ``LSE = m + log s``, ``μ = m + w/s``, ``Σp² = q/s²`` and
``ℓ_y = (z'_y − m) − log s`` for ``K`` labels, with ``z'_y`` loaded and scaled exactly as in the
sweep (so ``ℓ_y ≤ 0``).

Backward: one program per row recomputes ``p = exp(z' − LSE)`` tile by tile (exactly 0 on masked
entries) and writes ``g_z = (1/T)[g_ℓ (onehot(y) − p) − g_H p ⊙ (z' − μ) + 2 g_c p ⊙ (p − Σp²)]``
in the logits' dtype, with ``z' − μ`` clamped to a finite value so a masked entry gives an exact
0, never ``0 · ∞`` (``token.md`` §5). ``Σp²`` is recomputed in a first sweep only when the
collision output has a gradient.

The host functions take flat ``(N, V)`` logits (last stride 1), labels already made safe by the
caller (ignored labels replaced by a valid index, their ``g_ℓ`` zeroed) and return float32 rows.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch
import triton
import triton.language as tl

#: A finite stand-in for ``-inf`` in products with an exact 0 (``-FLT_MAX``).
NEG_BIG: tl.constexpr = tl.constexpr(-3.4028234663852886e38)

#: Vocabulary tile of one program (entries per sweep step); rows of the tile are lanes.
FORWARD_BLOCK = 2048
BACKWARD_BLOCK = 2048

#: Dtypes the kernels read (float64 stays on the chunked torch path).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

STATUS_NAN = 1
STATUS_POSINF = 2
STATUS_ALL_MASKED = 4


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1`` set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class LogitsForward(NamedTuple):
    logprob: torch.Tensor | None  # (N, K) float32
    entropy: torch.Tensor  # (N,) float32
    collision: torch.Tensor | None  # (N,) float32
    lse: torch.Tensor  # (N,) float32
    mu: torch.Tensor  # (N,) float32
    status: torch.Tensor  # (N,) int32, STATUS_* bits


@triton.jit
def divide(z, t, r):
    """``z / t`` rounded to nearest, from ``r = RN(1/t)`` with one fma correction (Markstein).

    ``q = z·r`` is within about an ulp of ``z/t``; ``q + (z − q·t)·r`` (the remainder exact by fma)
    is then the correctly rounded quotient (at most an ulp off in rare cases), at 3 operations
    instead of a full division. Infinite and NaN quotients are ``z·r`` itself.
    """
    q = z * r
    exact = tl.fma(tl.fma(-q, t, z), r, q)
    return tl.where(tl.abs(q) < float("inf"), exact, q)


@triton.jit
def _load_scaled(x_row, cols, vocab, t, r, SCALE: tl.constexpr):
    """``z' = float32(z) / T`` for the tile ``cols``; out-of-range entries are ``-inf``."""
    z = tl.load(x_row + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
    if SCALE:
        z = divide(z, t, r)
    return z


@triton.jit
def _logits_forward_kernel(
    x_ptr,
    stride_x,
    temps_ptr,
    temperature,
    inv_temperature,
    labels_ptr,
    n_labels,
    logprob_ptr,
    entropy_ptr,
    collision_ptr,
    lse_ptr,
    mu_ptr,
    status_ptr,
    vocab,
    ROW_T: tl.constexpr,
    SCALE: tl.constexpr,
    COLLISION: tl.constexpr,
    LABELS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    t = temperature
    r = inv_temperature
    if ROW_T:
        t = tl.load(temps_ptr + 2 * row)
        r = tl.load(temps_ptr + 2 * row + 1)
    lanes = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_V], tl.float32)
    w = tl.zeros([BLOCK_V], tl.float32)
    q = tl.zeros([BLOCK_V], tl.float32)
    seen = tl.full([BLOCK_V], float("-inf"), tl.float32)  # NaN-propagating maximum, for status
    for v0 in range(0, vocab, BLOCK_V):
        z = _load_scaled(x_row, v0 + lanes, vocab, t, r, SCALE)
        seen = tl.maximum(seen, z, propagate_nan=tl.PropagateNan.ALL)
        # One update of the lane state per entry with a single exp: a new maximum (gt) adds
        # exp(0) = 1 and rescales the old state by exp(m − z); otherwise the entry adds
        # exp(z − m). x = −|z − m| is that exponent; a masked entry, NaN (reported through
        # `seen`) or the first entry of an empty lane give x = NEG_BIG, whose exp is an exact 0.
        gt = z > m
        x = tl.maximum(-tl.abs(z - m), NEG_BIG)  # fmax: NaN → NEG_BIG
        one_exp = tl.exp(x)
        e = tl.where(gt, 1.0, one_exp)  # exp(z' − m_new)
        a = tl.where(gt, one_exp, 1.0)  # exp(m_old − m_new)
        a_s = a * s
        w = a * w + x * tl.where(gt, a_s, e)  # e_a (w + δ s) on a new maximum, else + (z' − m) e
        s = a_s + e
        if COLLISION:
            q = a * a * q + e * e
        m = tl.where(gt, z, m)
    # Merge the lanes (token.md §2); empty lanes (m = -inf) drop out with weight 0.
    m_row = tl.max(m, 0)
    ref = tl.where(m_row == float("-inf"), 0.0, m_row)
    d = tl.where(m == float("-inf"), NEG_BIG, m - ref)
    a = tl.exp(d)
    s_row = tl.sum(a * s, 0)
    w_row = tl.sum(a * (w + d * s), 0)
    has_nan = tl.max((seen != seen).to(tl.int32), 0)
    has_posinf = tl.max((seen == float("inf")).to(tl.int32), 0)
    empty = s_row == 0.0
    status = has_nan * 1 + has_posinf * 2 + (empty & (has_nan == 0)).to(tl.int32) * 4
    s_safe = tl.where(empty, 1.0, s_row)
    log_s = tl.log(s_safe)
    mean_shift = w_row / s_safe  # μ − m ≤ 0
    tl.store(entropy_ptr + row, log_s - mean_shift)
    tl.store(lse_ptr + row, ref + log_s)
    tl.store(mu_ptr + row, ref + mean_shift)
    tl.store(status_ptr + row, status)
    if COLLISION:
        q_row = tl.sum(a * a * q, 0)
        tl.store(collision_ptr + row, q_row / (s_safe * s_safe))
    if LABELS:
        ks = tl.arange(0, BLOCK_K)
        kmask = ks < n_labels
        y = tl.load(labels_ptr + row * n_labels + ks, mask=kmask, other=0)
        z_y = tl.load(x_row + y, mask=kmask, other=0.0).to(tl.float32)
        if SCALE:
            z_y = divide(z_y, t, r)
        tl.store(logprob_ptr + row * n_labels + ks, (z_y - ref) - log_s, mask=kmask)


@triton.jit
def _logits_backward_kernel(
    x_ptr,
    stride_x,
    grad_ptr,
    temps_ptr,
    temperature,
    inv_temperature,
    labels_ptr,
    n_labels,
    g_lp_ptr,
    g_h_ptr,
    g_c_ptr,
    lse_ptr,
    mu_ptr,
    vocab,
    ROW_T: tl.constexpr,
    SCALE: tl.constexpr,
    LABELS: tl.constexpr,
    ENTROPY: tl.constexpr,
    COLLISION: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    g_row = grad_ptr + row * vocab
    t = temperature
    r = inv_temperature
    if ROW_T:
        t = tl.load(temps_ptr + 2 * row)
        r = tl.load(temps_ptr + 2 * row + 1)
    lse = tl.load(lse_ptr + row)
    lanes = tl.arange(0, BLOCK_V)
    sum_p2 = 0.0
    g_c = 0.0
    if COLLISION:
        g_c = tl.load(g_c_ptr + row)
        acc = tl.zeros([BLOCK_V], tl.float32)
        for v0 in range(0, vocab, BLOCK_V):
            p = tl.exp(_load_scaled(x_row, v0 + lanes, vocab, t, r, SCALE) - lse)
            acc += p * p
        sum_p2 = tl.sum(acc, 0)
    mu = 0.0
    g_h = 0.0
    if ENTROPY:
        mu = tl.load(mu_ptr + row)
        g_h = tl.load(g_h_ptr + row)
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < n_labels
    y = tl.full([BLOCK_K], -1, tl.int64)
    g_y = tl.zeros([BLOCK_K], tl.float32)
    if LABELS:
        y = tl.load(labels_ptr + row * n_labels + ks, mask=kmask, other=-1)
        g_y = tl.load(g_lp_ptr + row * n_labels + ks, mask=kmask, other=0.0)
    g_y_sum = tl.sum(g_y, 0)
    for v0 in range(0, vocab, BLOCK_V):
        cols = v0 + lanes
        z = _load_scaled(x_row, cols, vocab, t, r, SCALE)
        p = tl.exp(z - lse)  # exactly 0 on masked entries
        g = tl.zeros([BLOCK_V], tl.float32)
        if ENTROPY:
            centred = tl.maximum(z - mu, NEG_BIG)  # z' − μ, finite on masked entries
            g -= g_h * p * centred
        if COLLISION:
            g += 2.0 * g_c * p * (p - sum_p2)
        if LABELS:
            hit = cols[:, None] == y[None, :]
            g += tl.sum(tl.where(hit, g_y[None, :], 0.0), 1) - g_y_sum * p
        if SCALE:
            g = g * r
        tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=cols < vocab)


def _launch_shape(vocab: int, block: int) -> tuple[int, dict[str, object]]:
    """``(BLOCK_V, launch options)``: the tile, at most ``block`` and at least 16 entries.

    FMA contraction is requested explicitly (Triton 3.9 warns when the default is relied on).
    """
    block_v = min(block, max(16, triton.next_power_of_2(vocab)))
    if interpreting():
        return block_v, {}
    return block_v, {"num_warps": 8 if block_v >= 2048 else 4, "enable_fp_fusion": True}


def temperature_args(
    temps: torch.Tensor | None, temperature: float
) -> tuple[torch.Tensor | None, float, float]:
    """``(per-row pairs, T, RN(1/T))`` as the kernels read the temperature (float32).

    Per-row temperatures become an ``(N, 2)`` float32 tensor of ``(T, RN(1/T))`` rows (or None);
    the scalar ``T`` and its reciprocal are rounded to float32 (IEEE division).
    """
    t32 = np.float32(temperature)
    inv = float(np.float32(1.0) / t32)
    if temps is None:
        return None, float(t32), inv
    t = temps.to(torch.float32)
    return torch.stack([t, 1.0 / t], dim=1).contiguous(), float(t32), inv


def _rows_view(x2d: torch.Tensor) -> torch.Tensor:
    """``x2d`` with unit last stride (a copy only when the input is not so laid out)."""
    return x2d if x2d.stride(1) == 1 or x2d.shape[1] == 1 else x2d.contiguous()


def logits_forward(
    x2d: torch.Tensor,
    labels2d: torch.Tensor | None,
    temps: torch.Tensor | None,
    temperature: float,
    collision: bool,
    block: int = FORWARD_BLOCK,
) -> LogitsForward:
    """Per-row outputs of the forward kernel for ``(N, V)`` logits (``token.md`` §2).

    ``labels2d``: ``(N, K)`` int64 indices in ``[0, V)`` (ignored labels replaced by a valid
    index by the caller); ``temps``: per-row temperatures ``(N,)`` or None for the scalar
    ``temperature``. ``block`` (a power of two ≥ 16) sets the vocabulary tile.
    """
    x2d = _rows_view(x2d)
    rows, vocab = x2d.shape
    device = x2d.device
    f32 = {"dtype": torch.float32, "device": device}
    entropy = torch.empty(rows, **f32)
    lse = torch.empty(rows, **f32)
    mu = torch.empty(rows, **f32)
    status = torch.empty(rows, dtype=torch.int32, device=device)
    coll = torch.empty(rows, **f32) if collision else None
    n_labels = 0 if labels2d is None else labels2d.shape[1]
    logprob = None if labels2d is None else torch.empty((rows, n_labels), **f32)
    labels_c = None if labels2d is None else labels2d.to(torch.int64).contiguous()
    pairs, t32, inv = temperature_args(temps, temperature)
    block_v, launch = _launch_shape(vocab, block)
    if rows:
        _logits_forward_kernel[(rows,)](
            x2d,
            x2d.stride(0),
            pairs,
            t32,
            inv,
            labels_c,
            n_labels,
            logprob,
            entropy,
            coll,
            lse,
            mu,
            status,
            vocab,
            ROW_T=temps is not None,
            SCALE=temps is not None or temperature != 1.0,
            COLLISION=collision,
            LABELS=labels2d is not None,
            BLOCK_V=block_v,
            BLOCK_K=triton.next_power_of_2(max(1, n_labels)),
            **launch,
        )
    return LogitsForward(logprob, entropy, coll, lse, mu, status)


def logits_backward(
    x2d: torch.Tensor,
    labels2d: torch.Tensor | None,
    temps: torch.Tensor | None,
    temperature: float,
    lse: torch.Tensor,
    mu: torch.Tensor,
    g_lp: torch.Tensor | None,
    g_h: torch.Tensor | None,
    g_c: torch.Tensor | None,
    block: int = BACKWARD_BLOCK,
) -> torch.Tensor:
    """``g_z`` of ``token.md`` §5 as an ``(N, V)`` tensor in ``x2d``'s dtype.

    ``g_lp`` ``(N, K)`` (zero for ignored labels), ``g_h`` and ``g_c`` ``(N,)``: the upstream
    gradients, None when an output has none; ``lse``, ``μ`` from :func:`logits_forward`.
    """
    x2d = _rows_view(x2d)
    rows, vocab = x2d.shape
    grad = torch.empty((rows, vocab), dtype=x2d.dtype, device=x2d.device)
    labels = g_lp is not None and labels2d is not None
    n_labels = labels2d.shape[1] if labels else 0

    def f32(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(torch.float32).contiguous()

    pairs, t32, inv = temperature_args(temps, temperature)
    block_v, launch = _launch_shape(vocab, block)
    if rows:
        _logits_backward_kernel[(rows,)](
            x2d,
            x2d.stride(0),
            grad,
            pairs,
            t32,
            inv,
            labels2d.to(torch.int64).contiguous() if labels else None,
            n_labels,
            f32(g_lp) if labels else None,
            f32(g_h),
            f32(g_c),
            f32(lse),
            f32(mu),
            vocab,
            ROW_T=temps is not None,
            SCALE=temps is not None or temperature != 1.0,
            LABELS=labels,
            ENTROPY=g_h is not None,
            COLLISION=g_c is not None,
            BLOCK_V=block_v,
            BLOCK_K=triton.next_power_of_2(max(1, n_labels)),
            **launch,
        )
    return grad
