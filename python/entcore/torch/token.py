"""Per-token entropy and log-probs on torch tensors, differentiable, memory-lean (``token.md``).

The torch face of ``entcore.token``: same names, argument names and defaults, plus the torch-only
memory knobs of ``token.md`` §8 (``chunk_rows``, ``row_block``, ``vocab_block``,
``vocab_process_group``), which change the rounding at most.

Forward paths of the logits functions (``token.md`` §8.1):

- CPU tensors go through the Rust core (``entcore.token``), handed over without a copy
  (bfloat16 as its 16-bit pattern).
- CUDA tensors of float32, float16 or bfloat16 go through the fused Triton kernels of
  :mod:`entcore.torch._triton_token` when Triton is importable: one read of each row, ``O(N)``
  extra memory, forward and backward (``token.md`` §8.1).
- Tensors on any other device (and float64, or CUDA without Triton) stay there: rows are processed
  in chunks of ``chunk_rows``, each chunk upcast to float32 (float64 for float64 input), scaled
  ``z' = z / T`` (never in bf16, never in place), reduced to the row state of ``token.md`` §2 and
  released, so the extra memory is ``O(chunk_rows · V)``. :func:`_forward_chunked` is this path; it
  is also callable on CPU tensors (the tests run both paths on CPU).

The environment variable ``ENTCORE_TORCH_KERNEL`` overrides the choice for non-CPU tensors (read at
each call): ``chunked`` forces the chunked torch path (for benchmarks and debugging), ``triton``
requires the Triton kernels, also for CPU tensors (which then need Triton's interpreter,
``TRITON_INTERPRET=1``; the CPU tests use this), ``auto`` (default) is the choice above. The fused
linear head (§8.2) follows the same switch (:mod:`entcore.torch._triton_linear`).

Gradients (``token.md`` §5) come from one custom autograd Function for the logits path: forward
saves a reference to ``logits`` (autograd's version counter catches an in-place change before
backward) and two numbers per row, ``LSE`` and ``μ = Σ p z'``; backward recomputes ``p`` chunk by
chunk and forms ``g_z = (1/T)[g_ℓ (onehot(y) − p) − g_H p ⊙ (z' − μ) + 2 g_c p ⊙ (p − Σp²)]``,
exactly 0 on masked (``-inf``) entries. Temperature is a constant. Under ``torch.no_grad()`` (or
when ``logits`` does not require grad) nothing is saved.

Results are float32 tensors on the input's device (``token.md`` §3, Decision).
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from entcore import token as _np_token
from entcore.token import TOPK_MODES, TopkEntropy

__all__ = [
    "TopkEntropy",
    "collision_probability",
    "renyi_entropy",
    "token_entropy",
    "token_logprob",
    "token_logprob_entropy",
    "token_logprob_entropy_linear",
    "topk_entropy",
    "topk_entropy_bounds",
]

NAN_POLICIES = ("raise", "propagate")

#: The float dtypes every face accepts (``token.md`` §1).
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: Default budget of the chunked path's temporaries (``token.md`` §8.1: 256 MiB).
CHUNK_BYTES = 256 * 2**20
#: Number of live ``(chunk_rows, V)`` temporaries in the accumulation dtype the budget assumes.
_LIVE_TEMPORARIES = 4

#: Default tiles of the fused linear head (``token.md`` §8.2).
DEFAULT_ROW_BLOCK = 1024
DEFAULT_VOCAB_BLOCK = 4096

#: For ``0 < |α − 1| < NEAR_ONE`` the Rényi entropy uses its first-order expansion (§6).
NEAR_ONE = 1e-4
#: ``S = Σ p_i`` above ``1 + SUM_TOLERANCE`` is not a set of log-probs of one distribution (§7).
SUM_TOLERANCE = 1e-3


# ---------------------------------------------------------------------------------------------
# Public functions: logits path
# ---------------------------------------------------------------------------------------------


def token_entropy(
    logits: torch.Tensor,
    *,
    temperature: Any = 1.0,
    nan_policy: str = "raise",
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Shannon entropy ``H = −Σ_j p_j log p_j`` of ``p = softmax(logits / T)``, in nats.

    Evaluated as ``H = log s − w / s`` from the single-pass row state (``token.md`` §2): no
    cancellation, ``H ≥ 0``, finite at ``-inf`` (masked) logits where verl and TRL give NaN.
    Differentiable: ``∂H/∂z_j = −(1/T) p_j (z'_j − μ)`` (``token.md`` §5).

    Args:
        logits: ``(..., V)`` float32, float16, bfloat16 or float64 tensor, ``V ≥ 1``.
        temperature: ``T > 0``, a float or a tensor/array broadcastable to ``logits.shape[:-1]``
            (one value per row); a constant for autograd.
        nan_policy: ``"raise"`` or ``"propagate"`` (NaN for the affected rows only).
        chunk_rows: rows per chunk on the chunked (non-CPU) path; default: the largest count
            whose float32 temporaries fit in 256 MiB (``token.md`` §8.1).

    Returns:
        float32 tensor of shape ``logits.shape[:-1]`` on ``logits.device``.

    Replaces verl's ``entropy_from_logits`` / ``entropy_from_logits_with_chunking``, TRL's
    ``entropy_from_logits`` and OpenRLHF's ``compute_entropy`` (``token.md`` §9). The
    forking-token analysis that motivates it: Wang et al., "Beyond the 80/20 Rule: High-Entropy
    Minority Tokens Drive Effective RLVR", arXiv 2506.01939.
    """
    return _token_stats(logits, None, temperature, None, False, nan_policy, chunk_rows)[1]


def token_logprob(
    logits: torch.Tensor,
    labels: Any,
    *,
    temperature: Any = 1.0,
    ignore_index: int | None = None,
    nan_policy: str = "raise",
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Log-probability ``ℓ_y = z'_y − LSE(z') = (z'_y − m) − log s`` of ``labels``.

    ``labels`` (integer tensor) has shape ``logits.shape[:-1]`` or ``logits.shape[:-1] + (K,)``
    (K labels per row, as TRL's ``selective_log_softmax``); values in ``[0, V)``, or
    ``ignore_index`` which gives ``ℓ = 0`` and zero gradient. A label on a ``-inf`` logit gives
    ``-inf`` (its gradient ``onehot − p`` is finite). ``∂ℓ_y/∂z_j = (1/T)(1[j = y] − p_j)``.
    Returns float32 of shape ``labels.shape``. Spec: ``token.md`` §2, §5; replaces verl's
    ``logprobs_from_logits`` and TRL's ``selective_log_softmax`` (§9).
    """
    return _token_stats(logits, labels, temperature, ignore_index, False, nan_policy, chunk_rows)[0]


def token_logprob_entropy(
    logits: torch.Tensor,
    labels: Any,
    *,
    temperature: Any = 1.0,
    ignore_index: int | None = None,
    return_collision: bool = False,
    nan_policy: str = "raise",
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """``(logprob, entropy[, collision])`` from one pass over ``logits``, jointly differentiable.

    ``logprob`` as :func:`token_logprob`, ``entropy`` as :func:`token_entropy`, ``collision`` as
    :func:`collision_probability`. The backward forms one gradient per row
    ``g_z = (1/T)[g_ℓ (onehot(y) − p) − g_H p ⊙ (z' − μ) + 2 g_c p ⊙ (p − Σp²)]`` (``token.md`` §5).

    Migration (``token.md`` §9): ``logits.div_(T); H = entropy_from_logits(logits);
    lp = logprobs_from_logits(logits, y)`` becomes
    ``lp, H = entcore.torch.token_logprob_entropy(logits, y, temperature=T)`` (inputs untouched).
    """
    logprob, entropy, collision = _token_stats(
        logits, labels, temperature, ignore_index, bool(return_collision), nan_policy, chunk_rows
    )
    return (logprob, entropy, collision) if return_collision else (logprob, entropy)


def collision_probability(
    logits: torch.Tensor,
    *,
    temperature: Any = 1.0,
    nan_policy: str = "raise",
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Collision probability ``Σ_j p_j² = q / s² = exp(−H₂)``, in ``[1/V_fin, 1]``.

    ``∂Σp²/∂z_j = (2/T) p_j (p_j − Σ_k p_k²)`` (``token.md`` §5, §6). verl's Optimal Token Baseline
    uses ``1 − 2π_t + Σπ²`` as a per-token gradient-variance proxy (verl
    ``calculate_sum_pi_squared_from_logits``). Returns float32 of shape ``logits.shape[:-1]``.
    """
    return _token_stats(logits, None, temperature, None, True, nan_policy, chunk_rows)[2]


def renyi_entropy(
    logits: torch.Tensor,
    alpha: float,
    *,
    temperature: Any = 1.0,
    nan_policy: str = "raise",
) -> torch.Tensor:
    """Rényi entropy ``H_α = (LSE(α z') − α LSE(z')) / (1 − α)`` in nats, ``α ∈ [0, ∞]``.

    ``α = 0``: ``log V_fin`` (zero gradient); ``α = 1``: Shannon, exactly :func:`token_entropy`;
    ``α = 2``: ``−log Σp²``; ``α = ∞``: min-entropy ``LSE(z') − max z' = log s`` (gradient
    ``(1/T)(p − onehot(argmax))``). For ``0 < |α − 1| < 1e-4`` the closed form cancels and the
    expansion ``H − (α − 1) Var_p(z') / 2`` is returned, with its exact gradient
    ``−(1/T) p_j [α d_j + (α − 1)(d_j² − Var)/2]``, ``d = z' − μ``. Otherwise
    ``∂H_α/∂z_j = (1/T) α/(1 − α) (p^(α)_j − p_j)``, ``p^(α) = softmax(α z')``.

    Sums run in float64 by torch on every device, in row chunks (the forward keeps three float64
    numbers per row for the backward). Returns float32 of shape ``logits.shape[:-1]``.
    Spec: ``token.md`` §5, §6. Rényi, "On measures of entropy and information" (1961).
    """
    alpha = _check_alpha(alpha)
    if alpha == 1.0:
        return token_entropy(logits, temperature=temperature, nan_policy=nan_policy)
    x, row_shape, rows, vocab = _logits_rows(logits)
    scalar_t, temps = _temperatures(temperature, row_shape, rows, x.device)
    propagate = _check_nan_policy(nan_policy)
    opts = _RenyiOptions(rows, vocab, row_shape, scalar_t, alpha, propagate)
    if torch.is_grad_enabled() and x.requires_grad and alpha != 0.0:
        return _RenyiFunction.apply(x, temps, opts)
    return _renyi_forward(x.detach().reshape(rows, vocab), temps, opts, need_state=False)[0]


# ---------------------------------------------------------------------------------------------
# Public functions: top-k (token.md §7)
# ---------------------------------------------------------------------------------------------


def topk_entropy_bounds(topk_logprobs: torch.Tensor, vocab_size: int) -> TopkEntropy:
    """``TopkEntropy(lower, estimate, upper)`` of float32 tensors from top-k log-probs per row.

    With ``p_i = exp(topk_logprobs_i)`` over the ``k'`` finite entries (``-inf`` marks an absent
    entry), ``h(x) = −x log x``, tail mass ``τ = max(0, 1 − Σ p_i)``, cap ``c = min p_i``, tail
    size ``m = V − k'`` and ``H_k = Σ h(p_i)``: ``upper = H_k + τ log(m/τ)``,
    ``lower = H_k + n h(c) + h(r)`` with ``n = ⌊τ/c⌋``, ``r = τ − n c`` (``lower = upper`` when
    ``n + 1 > m``), ``estimate = (lower + upper)/2``. Computed in float64 by torch on the input's
    device (CUDA tensors stay on the GPU); not differentiable.

    Spec: ``token.md`` §7 (vLLM ``SamplingParams(logprobs=k)``; ARES; OpenPipe/ART PR #555).
    """
    table = _topk_table(topk_logprobs, vocab_size, "estimate")
    return TopkEntropy(table["lower"], table["estimate"], table["upper"])


def topk_entropy(
    topk_logprobs: torch.Tensor, vocab_size: int | None = None, *, mode: str = "estimate"
) -> torch.Tensor:
    """One top-k entropy convention of ``token.md`` §7, float32 of shape ``shape[:-1]``.

    ``"estimate"``, ``"lower"``, ``"upper"`` as in :func:`topk_entropy_bounds` (``vocab_size``
    required); ``"truncated"`` = ``H_k`` (ARES's percentile routine); ``"bucket"`` =
    ``H_k + h(τ)`` (the tail as one pseudo-token, ARES's rollout entropy); ``"renormalized"`` =
    entropy of ``p_i / Σp``. Always ``truncated ≤ bucket ≤ lower ≤ H ≤ upper``.
    """
    return _topk_table(topk_logprobs, vocab_size, mode)[mode]


# ---------------------------------------------------------------------------------------------
# Public function: fused linear head (token.md §8.2)
# ---------------------------------------------------------------------------------------------


def token_logprob_entropy_linear(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: Any,
    *,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
    ignore_index: int | None = None,
    return_collision: bool = False,
    row_block: int | None = None,
    vocab_block: int | None = None,
    vocab_process_group: Any = None,
) -> tuple[torch.Tensor, ...]:
    """``(logprob, entropy[, collision])`` of ``softmax((hidden @ weight.T + bias) / T)``.

    The ``(N, V)`` logits never exist (``token.md`` §8.2): for each block of ``row_block`` rows
    the vocabulary is visited in tiles of ``vocab_block`` columns, ``Z = hidden_blk @ weight_tileᵀ
    (+ bias_tile)`` is formed with float32 accumulation (float64 when an input is float64),
    scaled ``z' = Z / T`` and merged into the row state by the online-softmax rule of ``token.md``
    §2 (Milakov & Gimelshein, arXiv 1805.02867). The label logit is taken from the same tile value
    (so ``ℓ_y ≤ 0`` always; verl #2656). Temporaries are ``O(row_block · vocab_block)``.

    Differentiable in ``hidden``, ``weight`` and ``bias``: the backward recomputes each tile, forms
    ``g_z`` as in ``token.md`` §5 and accumulates ``d_hidden += g_z @ weight_tile``,
    ``d_weight_tile += g_zᵀ @ hidden_blk``, ``d_bias_tile += Σ_rows g_z`` in float32, returned in
    each parameter's dtype. Saved: references to the inputs plus ``LSE``, ``μ`` (and ``Σp²`` when
    ``return_collision``) per row.

    Args:
        hidden: ``(N, D)`` float tensor. weight: ``(V, D)`` (the LM head, or this rank's
            contiguous vocabulary shard). bias: optional ``(V,)``. labels: ``(N,)`` integers in
            ``[0, V_total)`` or ``ignore_index`` (``ℓ = 0``, no gradient from ``ℓ``).
        temperature: a scalar ``T > 0`` (a constant for autograd).
        row_block, vocab_block: tile sizes (defaults 1024 and 4096); any value, no divisibility
            requirement on ``N``, ``V`` or ``D``. With the Triton kernels (CUDA, module
            docstring) the forward uses the kernel's own tiles and these size the chunk of
            ``g_z`` in the backward.
        vocab_process_group: a ``torch.distributed`` group over which the vocabulary is sharded
            (tensor parallel). Rank ``r`` holds rows ``[offset_r, offset_r + V_r)`` of the full
            head in rank order; ranks all-reduce ``MAX`` of the row maximum, rescale ``(s, w, q)``
            to it and all-reduce ``SUM`` (with the label logit from the owning rank). Every rank
            returns the full result; ``hidden``'s gradient is all-reduced (``SUM``) so that every
            rank holds the full gradient of its replicated ``hidden``; ``weight``/``bias``
            gradients stay local. Same math as Megatron's ``vocab_parallel_entropy`` and verl's
            ``linear_cross_entropy(..., dist_process_group=)``.

    Returns float32 tensors of shape ``(N,)``. Replaces verl's ``linear_cross_entropy`` and
    ``FusedLinearForPPO`` (``token.md`` §9): any ``D``, running maximum from ``-inf``, NaN-free
    backward, float32 outputs.
    """
    hidden_t = _float_tensor("hidden", hidden)
    if hidden_t.ndim != 2:
        raise ValueError(f"hidden: expected 2 dimension(s), got shape {tuple(hidden_t.shape)}")
    weight_t = _float_tensor("weight", weight)
    if weight_t.ndim != 2:
        raise ValueError(f"weight: expected 2 dimension(s), got shape {tuple(weight_t.shape)}")
    n_rows, dim = hidden_t.shape
    if weight_t.shape[1] != dim:
        raise ValueError(
            f"weight: expected shape (V, {dim}) to match hidden, got {tuple(weight_t.shape)}"
        )
    if weight_t.shape[0] < 1:
        raise ValueError("weight: the vocabulary is empty (V = 0)")
    device = hidden_t.device
    _same_device("weight", weight_t, device)
    bias_t = None
    if bias is not None:
        bias_t = _float_tensor("bias", bias)
        if tuple(bias_t.shape) != (weight_t.shape[0],):
            raise ValueError(
                f"bias: expected shape ({weight_t.shape[0]},), got {tuple(bias_t.shape)}"
            )
        _same_device("bias", bias_t, device)
    labels_t = _index_tensor("labels", labels, device)
    if tuple(labels_t.shape) != (n_rows,):
        raise ValueError(f"labels: expected shape ({n_rows},), got {tuple(labels_t.shape)}")
    scalar_t = _scalar_temperature(temperature)
    ignore = _check_ignore_index(ignore_index)
    row_block = _check_block("row_block", row_block, DEFAULT_ROW_BLOCK)
    vocab_block = _check_block("vocab_block", vocab_block, DEFAULT_VOCAB_BLOCK)

    local_vocab = weight_t.shape[0]
    offset, total_vocab = 0, local_vocab
    if vocab_process_group is not None:
        offset, total_vocab = _shard_offset(local_vocab, device, vocab_process_group)
    ignored = _ignored(labels_t, ignore)
    _check_label_range(labels_t, ignored, total_vocab)

    acc = torch.float64 if torch.float64 in _dtypes(hidden_t, weight_t, bias_t) else torch.float32
    opts = _LinearOptions(
        scalar_t,
        ignore,
        bool(return_collision),
        row_block,
        vocab_block,
        vocab_process_group,
        offset,
        acc,
    )
    tracked = [t for t in (hidden_t, weight_t, bias_t) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tracked):
        outs = _LinearFunction.apply(hidden_t, weight_t, bias_t, labels_t, opts)
    else:
        state = _linear_forward(
            hidden_t.detach(),
            weight_t.detach(),
            None if bias_t is None else bias_t.detach(),
            labels_t,
            opts,
        )
        outs = state.outputs(bool(return_collision))
    return tuple(outs)


# ---------------------------------------------------------------------------------------------
# Logits path: validation, dispatch and the autograd Function
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    """Everything about a logits-path call that is not a tensor."""

    rows: int
    vocab: int
    row_shape: tuple[int, ...]
    labels_shape: tuple[int, ...] | None
    temperature: float  # used when the per-row ``temps`` tensor is None
    ignore_index: int | None
    collision: bool
    propagate: bool
    nan_policy: str
    chunk_rows: int | None


class _RowStats(NamedTuple):
    """Per-row results of one forward pass (flat: ``(N,)`` and ``(N, K)``)."""

    logprob: torch.Tensor | None  # (N, K) float32
    entropy: torch.Tensor  # (N,) float32
    collision: torch.Tensor | None  # (N,) float32
    lse: torch.Tensor | None  # (N,) LSE(z'), float32 (float64 on the chunked float64 path)
    mu: torch.Tensor | None  # (N,) μ = Σ p z', same dtype as lse


def _token_stats(
    logits: Any,
    labels: Any,
    temperature: Any,
    ignore_index: int | None,
    collision: bool,
    nan_policy: str,
    chunk_rows: int | None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Validate, dispatch, and return ``(logprob, entropy, collision)`` (None if unrequested)."""
    x, row_shape, rows, vocab = _logits_rows(logits)
    scalar_t, temps = _temperatures(temperature, row_shape, rows, x.device)
    propagate = _check_nan_policy(nan_policy)
    labels2d, labels_shape = None, None
    if labels is not None:
        labels2d, labels_shape = _labels_rows(labels, row_shape, rows, x.device)
    ignore = _check_ignore_index(ignore_index)
    chunk = _check_block("chunk_rows", chunk_rows, None)
    opts = _Options(
        rows,
        vocab,
        row_shape,
        labels_shape,
        scalar_t,
        ignore,
        collision,
        propagate,
        nan_policy,
        chunk,
    )
    if torch.is_grad_enabled() and x.requires_grad:
        outs = _LogitsFunction.apply(x, labels2d, temps, opts)
        outs = list(outs) if isinstance(outs, tuple) else [outs]
        logprob = outs.pop(0) if labels2d is not None else None
        entropy = outs.pop(0)
        coll = outs.pop(0) if collision else None
        return logprob, entropy, coll
    stats = _forward_rows(x.detach().reshape(rows, vocab), labels2d, temps, opts, need_state=False)
    return _shape_outputs(stats, opts)


def _shape_outputs(
    stats: _RowStats, opts: _Options
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    logprob = None if stats.logprob is None else stats.logprob.reshape(opts.labels_shape)
    collision = None if stats.collision is None else stats.collision.reshape(opts.row_shape)
    return logprob, stats.entropy.reshape(opts.row_shape), collision


def _forward_rows(
    x2d: torch.Tensor,
    labels2d: torch.Tensor | None,
    temps: torch.Tensor | None,
    opts: _Options,
    need_state: bool,
) -> _RowStats:
    """The dispatch point of the logits forward: Rust core, Triton kernel or chunked torch."""
    kernel = _logits_kernel(x2d)
    if kernel == "rust":
        return _forward_rust(x2d, labels2d, temps, opts, need_state)
    if kernel == "triton":
        return _forward_triton(x2d, labels2d, temps, opts)
    return _forward_chunked(x2d, labels2d, temps, opts, need_state)


#: Values of the ``ENTCORE_TORCH_KERNEL`` environment variable (module docstring).
KERNEL_CHOICES = ("auto", "triton", "chunked")


def _kernel_choice() -> str:
    choice = os.environ.get("ENTCORE_TORCH_KERNEL", "auto") or "auto"
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"ENTCORE_TORCH_KERNEL: expected one of {KERNEL_CHOICES}, got {choice!r}")
    return choice


def _triton_module(name: str) -> Any:
    """``entcore.torch.<name>`` (a Triton kernel module), or None when Triton cannot be imported
    (an error when ``ENTCORE_TORCH_KERNEL=triton`` asks for it)."""
    try:
        return importlib.import_module(f"entcore.torch.{name}")
    except ImportError:
        if _kernel_choice() == "triton":
            raise
        return None


def _uses_triton(device: torch.device, *dtypes: torch.dtype) -> bool:
    """Whether the Triton kernels run for tensors of ``dtypes`` on ``device``."""
    choice = _kernel_choice()
    if choice == "chunked" or (choice == "auto" and device.type != "cuda"):
        return False
    return all(d in (torch.float32, torch.float16, torch.bfloat16) for d in dtypes)


def _logits_kernel(x2d: torch.Tensor) -> str:
    """``"triton"``, ``"rust"`` (CPU) or ``"chunked"`` for the logits path (``token.md`` §8.1)."""
    if _uses_triton(x2d.device, x2d.dtype) and _triton_module("_triton_token") is not None:
        return "triton"
    return "rust" if x2d.device.type == "cpu" else "chunked"


def _forward_triton(
    x2d: torch.Tensor,
    labels2d: torch.Tensor | None,
    temps: torch.Tensor | None,
    opts: _Options,
) -> _RowStats:
    """Forward through the fused Triton kernel (one read of each row, ``token.md`` §2, §8.1).

    The kernel reports NaN, ``+inf`` and all-``-inf`` rows in a status word per row; they become
    the errors of :func:`_raise_flags` (one synchronisation), or NaN rows under ``"propagate"``.
    """
    kernels = _triton_module("_triton_token")
    ignored = safe = None
    if labels2d is not None:
        ignored = _ignored(labels2d, opts.ignore_index)
        _check_label_range(labels2d, ignored, opts.vocab)
        safe = torch.where(ignored, 0, labels2d)
    out = kernels.logits_forward(x2d, safe, temps, opts.temperature, opts.collision)
    status = out.status
    flags = torch.stack(
        [
            (status & bit).any()
            for bit in (kernels.STATUS_NAN, kernels.STATUS_POSINF, kernels.STATUS_ALL_MASKED)
        ]
    )
    _raise_flags(flags, x2d, opts.propagate)
    nan_rows = (status & kernels.STATUS_NAN) != 0

    def rows(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or not opts.propagate:
            return t
        return torch.where(nan_rows.reshape((-1,) + (1,) * (t.ndim - 1)), math.nan, t)

    logprob = out.logprob
    if logprob is not None:
        logprob = torch.where(ignored, 0.0, logprob)
    return _RowStats(
        rows(logprob), rows(out.entropy), rows(out.collision), rows(out.lse), rows(out.mu)
    )


def _forward_rust(
    x2d: torch.Tensor,
    labels2d: torch.Tensor | None,
    temps: torch.Tensor | None,
    opts: _Options,
    need_state: bool,
) -> _RowStats:
    """CPU forward through the Rust core (``entcore.token``), reading ``x2d`` without a copy."""
    array = _numpy_view(x2d)
    labels_np = None if labels2d is None else labels2d.numpy()
    temperature: Any = opts.temperature if temps is None else temps.numpy()
    logprob, entropy, collision, lse = _np_token._token_pass(
        array,
        labels_np,
        temperature,
        opts.ignore_index,
        opts.collision,
        opts.nan_policy,
        lse=need_state,
    )
    entropy_t = _from_numpy(entropy)
    lse_t = mu_t = None
    if need_state:
        lse_t = _from_numpy(lse)
        mu_t = lse_t - entropy_t  # μ = LSE − H (token.md §5)
    return _RowStats(
        None if logprob is None else _from_numpy(logprob),
        entropy_t,
        None if collision is None else _from_numpy(collision),
        lse_t,
        mu_t,
    )


def _forward_chunked(
    x2d: torch.Tensor,
    labels2d: torch.Tensor | None,
    temps: torch.Tensor | None,
    opts: _Options,
    need_state: bool,
) -> _RowStats:
    """Pure-torch forward over row chunks (``token.md`` §8.1 fallback), on ``x2d``'s device.

    Each chunk is upcast (float32, or float64 for float64 input), scaled ``z' = z / T`` into a new
    tensor, shifted by its row maximum ``m`` and reduced to ``s = Σ e``, ``w = Σ (z'−m) e``,
    ``q = Σ e²`` with ``e = exp(z' − m)`` (``token.md`` §2). ``-inf`` entries are clamped to the
    most negative finite number after the label gather, so that ``e = 0`` and ``(z'−m) e = 0``
    exactly (never ``0 · inf``). Validation errors (NaN, ``+inf``, all ``-inf`` rows) are collected
    on the device and raised after the loop with one synchronisation.
    """
    rows, vocab = x2d.shape
    device = x2d.device
    acc = _acc_dtype(x2d.dtype)
    chunk = opts.chunk_rows or _default_chunk_rows(vocab, acc)
    ignored = safe = None
    logprob = None
    if labels2d is not None:
        ignored = _ignored(labels2d, opts.ignore_index)
        _check_label_range(labels2d, ignored, vocab)
        safe = torch.where(ignored, 0, labels2d)
        logprob = torch.empty(labels2d.shape, dtype=torch.float32, device=device)
    entropy = torch.empty(rows, dtype=torch.float32, device=device)
    collision = torch.empty(rows, dtype=torch.float32, device=device) if opts.collision else None
    lse = torch.empty(rows, dtype=acc, device=device) if need_state else None
    mu = torch.empty(rows, dtype=acc, device=device) if need_state else None
    flags = torch.zeros(3, dtype=torch.bool, device=device)
    tiny = torch.finfo(acc).min
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        zs, m = _shifted_chunk(x2d[r0:r1], temps, r0, r1, opts, acc, flags)
        if logprob is not None:
            label_shift = zs.gather(1, safe[r0:r1])  # z'_y − m, −inf on a masked label
        zs.clamp_(min=tiny)  # −inf → finite: e = 0 and (z'−m)·e = 0 exactly; NaN stays NaN
        e = torch.exp(zs)
        s = e.sum(-1)
        w = (zs * e).sum(-1)
        log_s = torch.log(s)
        entropy[r0:r1] = log_s - w / s
        if collision is not None:
            collision[r0:r1] = (e * e).sum(-1) / (s * s)
        if logprob is not None:
            value = label_shift - log_s[:, None]
            logprob[r0:r1] = torch.where(ignored[r0:r1], 0.0, value)
        if need_state:
            lse[r0:r1] = m + log_s
            mu[r0:r1] = m + w / s
        del zs, e
    _raise_flags(flags, x2d, opts.propagate)
    return _RowStats(logprob, entropy, collision, lse, mu)


def _shifted_chunk(
    chunk: torch.Tensor,
    temps: torch.Tensor | None,
    r0: int,
    r1: int,
    opts: Any,
    acc: torch.dtype,
    flags: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z' − m, m)`` of a row chunk in ``acc`` (a new tensor; the input is never modified).

    ``flags`` (bool ``(3,)``) accumulates: NaN seen, ``+inf`` seen (input or overflow of
    ``z / T``), a row with every entry ``-inf``. NaN rows keep NaN everywhere (``"propagate"``).
    """
    upcast = chunk.to(acc)  # exact widening (token.md §1); may alias the input: no in-place here
    if temps is None:
        zs = upcast / opts.temperature
    else:
        zs = upcast / temps[r0:r1, None].to(acc)
    del upcast
    m = zs.amax(-1)  # NaN on NaN rows, −inf on all-masked rows
    nan_rows = torch.isnan(m)
    posinf = torch.isposinf(zs).any() if opts.propagate else torch.isposinf(m).any()
    flags |= torch.stack([nan_rows.any(), posinf, torch.isneginf(m).any()])
    m_safe = torch.where(torch.isfinite(m), m, 0.0)
    zs.sub_(m_safe[:, None])  # in place on our own temporary
    return zs, m


def _raise_flags(flags: torch.Tensor, x2d: torch.Tensor, propagate: bool) -> None:
    """Raise the documented ``ValueError`` for what :func:`_shifted_chunk` saw (one sync)."""
    if not bool(flags.any()):
        return
    has_nan, has_posinf, all_masked = (bool(v) for v in flags.tolist())
    if has_nan and not propagate:
        raise ValueError(
            "logits: contains NaN (nan_policy='raise'); pass nan_policy='propagate' to get NaN "
            "for the affected rows"
        )
    if has_posinf:
        if bool(torch.isposinf(x2d).any()):
            raise ValueError("logits: contains +inf (only -inf, a masked entry, is allowed)")
        raise ValueError("temperature: too small, logits / temperature overflows")
    if all_masked:
        row = int(torch.nonzero(torch.isneginf(x2d).all(-1))[0, 0])
        raise ValueError(f"logits: row {row} has every logit -inf (no finite entry)")


def _logits_grad(
    logits: torch.Tensor,
    labels2d: torch.Tensor | None,
    temps: torch.Tensor | None,
    lse: torch.Tensor,
    mu: torch.Tensor,
    g_lp: torch.Tensor | None,
    g_h: torch.Tensor | None,
    g_c: torch.Tensor | None,
    opts: _Options,
) -> torch.Tensor:
    """``g_z`` of ``token.md`` §5, recomputing ``p`` chunk by chunk; ``logits``' dtype and shape.

    ``p = exp(z' − LSE)`` is exactly 0 on masked entries, and ``z' − μ`` is clamped to a finite
    value there, so every term is an exact 0 (never ``0 · inf``).
    """
    rows, vocab = opts.rows, opts.vocab
    x2d = logits.reshape(rows, vocab)
    if _logits_kernel(x2d) == "triton":
        return _grad_triton(x2d, labels2d, temps, lse, mu, g_lp, g_h, g_c, opts).reshape(
            logits.shape
        )
    acc = _acc_dtype(logits.dtype)
    device = logits.device
    chunk = opts.chunk_rows or _default_chunk_rows(vocab, acc)
    grad = torch.empty((rows, vocab), dtype=logits.dtype, device=device)
    lse = lse.to(acc)
    mu = mu.to(acc)
    tiny = torch.finfo(acc).min
    if g_lp is not None:
        ignored = _ignored(labels2d, opts.ignore_index)
        g_lp = torch.where(ignored, 0.0, g_lp.reshape(labels2d.shape).to(acc))
        safe = torch.where(ignored, 0, labels2d)
        g_lp_sum = g_lp.sum(-1)
    if g_h is not None:
        g_h = g_h.reshape(rows).to(acc)
    if g_c is not None:
        g_c = g_c.reshape(rows).to(acc)
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        zp = x2d[r0:r1].to(acc)
        zp = zp / (opts.temperature if temps is None else temps[r0:r1, None].to(acc))
        p = torch.exp(zp - lse[r0:r1, None])  # exactly 0 on masked entries
        g = torch.zeros_like(p)
        if g_h is not None:
            d = zp.sub_(mu[r0:r1, None]).clamp_(min=tiny)  # z' − μ, finite on masked entries
            g.addcmul_(p, d, value=-1.0).mul_(g_h[r0:r1, None])
            del d
        if g_c is not None:
            c = (p * p).sum(-1, keepdim=True)
            g.add_(p * (p - c) * (2.0 * g_c[r0:r1, None]))
        if g_lp is not None:
            g.sub_(p * g_lp_sum[r0:r1, None])
            g.scatter_add_(1, safe[r0:r1], g_lp[r0:r1])
        if temps is None:
            g.mul_(1.0 / opts.temperature)
        else:
            g.div_(temps[r0:r1, None].to(acc))
        grad[r0:r1] = g
        del zp, p, g
    return grad.reshape(logits.shape)


def _grad_triton(
    x2d: torch.Tensor,
    labels2d: torch.Tensor | None,
    temps: torch.Tensor | None,
    lse: torch.Tensor,
    mu: torch.Tensor,
    g_lp: torch.Tensor | None,
    g_h: torch.Tensor | None,
    g_c: torch.Tensor | None,
    opts: _Options,
) -> torch.Tensor:
    """``g_z`` of ``token.md`` §5 from the Triton backward kernel (one more read of each row)."""
    safe = None
    if g_lp is not None:
        ignored = _ignored(labels2d, opts.ignore_index)
        g_lp = torch.where(ignored, 0.0, g_lp.reshape(labels2d.shape).to(torch.float32))
        safe = torch.where(ignored, 0, labels2d)
    kernels = _triton_module("_triton_token")
    return kernels.logits_backward(
        x2d,
        safe,
        temps,
        opts.temperature,
        lse,
        mu,
        g_lp,
        None if g_h is None else g_h.reshape(opts.rows),
        None if g_c is None else g_c.reshape(opts.rows),
    )


class _LogitsFunction(torch.autograd.Function):
    """One autograd node for ``(logprob, entropy, collision)`` of the logits path (§5)."""

    @staticmethod
    def forward(ctx, logits, labels2d, temps, opts):  # type: ignore[override]
        x2d = logits.detach().reshape(opts.rows, opts.vocab)
        stats = _forward_rows(x2d, labels2d, temps, opts, need_state=True)
        ctx.set_materialize_grads(False)
        ctx.opts = opts
        ctx.has_labels = labels2d is not None
        # A reference to logits (not a copy) + two numbers per row (token.md §5).
        ctx.save_for_backward(logits, labels2d, temps, stats.lse, stats.mu)
        logprob, entropy, collision = _shape_outputs(stats, opts)
        outs = [t for t in (logprob, entropy, collision) if t is not None]
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):  # type: ignore[override]
        logits, labels2d, temps, lse, mu = ctx.saved_tensors
        opts = ctx.opts
        grads = list(grads)
        g_lp = grads.pop(0) if ctx.has_labels else None
        g_h = grads.pop(0)
        g_c = grads.pop(0) if opts.collision else None
        if (g_lp is None and g_h is None and g_c is None) or not ctx.needs_input_grad[0]:
            return None, None, None, None
        grad = _logits_grad(logits, labels2d, temps, lse, mu, g_lp, g_h, g_c, opts)
        return grad, None, None, None


# ---------------------------------------------------------------------------------------------
# Rényi entropy (token.md §6)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RenyiOptions:
    rows: int
    vocab: int
    row_shape: tuple[int, ...]
    temperature: float
    alpha: float
    propagate: bool
    chunk_rows: int | None = None


def _renyi_forward(
    x2d: torch.Tensor, temps: torch.Tensor | None, opts: _RenyiOptions, need_state: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(H_α as float32 of shape row_shape, state (N, 4) float64 or None)``.

    The state row is ``(m, log s, log s_α, ·)`` in general, ``(m, log s, μ, Var_p(z'))`` near
    ``α = 1`` and ``(m, log s, argmax, ·)`` for ``α = ∞``; all sums in float64 (``token.md`` §6).
    """
    rows, vocab = x2d.shape
    acc = torch.float64
    alpha = opts.alpha
    chunk = opts.chunk_rows or _default_chunk_rows(vocab, acc)
    out = torch.empty(rows, dtype=torch.float32, device=x2d.device)
    state = torch.zeros((rows, 4), dtype=acc, device=x2d.device) if need_state else None
    flags = torch.zeros(3, dtype=torch.bool, device=x2d.device)
    tiny = torch.finfo(acc).min
    near_one = abs(alpha - 1.0) < NEAR_ONE
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        zs, m = _shifted_chunk(x2d[r0:r1], temps, r0, r1, opts, acc, flags)
        finite = zs > -math.inf  # NaN rows: False, their value is NaN through m below
        if alpha == 0.0:
            value = torch.log(finite.sum(-1).to(acc)) + 0.0 * m  # NaN rows stay NaN
            out[r0:r1] = value
            continue
        if alpha == math.inf:
            log_s = torch.log(torch.exp(zs).sum(-1))
            out[r0:r1] = log_s
            if need_state:
                state[r0:r1, 0] = m
                state[r0:r1, 1] = log_s
                state[r0:r1, 2] = zs.argmax(-1).to(acc)
            continue
        zc = zs.clamp(min=tiny)  # −inf → finite: every product with e below is an exact 0
        e = torch.exp(zc)
        s = e.sum(-1)
        log_s = torch.log(s)
        if near_one:
            mean = (zc * e).sum(-1) / s  # μ − m
            dev = torch.where(finite, zs - mean[:, None], 0.0)
            var = (e * dev * dev).sum(-1) / s
            entropy = log_s - mean
            out[r0:r1] = entropy - (alpha - 1.0) * var / 2.0
            if need_state:
                state[r0:r1, 0] = m
                state[r0:r1, 1] = log_s
                state[r0:r1, 2] = m + mean
                state[r0:r1, 3] = var
        else:
            # exp(α (z' − m)) of a masked entry is exp(−inf) = 0; α (z' − m) ≤ 0 never overflows.
            log_s_alpha = torch.log(torch.exp(alpha * zs).sum(-1))
            out[r0:r1] = (alpha / (alpha - 1.0)) * log_s - log_s_alpha / (alpha - 1.0)
            if need_state:
                state[r0:r1, 0] = m
                state[r0:r1, 1] = log_s
                state[r0:r1, 2] = log_s_alpha
        del zs, zc, e
    _raise_flags(flags, x2d, opts.propagate)
    return out.reshape(opts.row_shape), state


class _RenyiFunction(torch.autograd.Function):
    """``H_α`` with the gradient of ``token.md`` §5 (and of the §6 expansion near ``α = 1``)."""

    @staticmethod
    def forward(ctx, logits, temps, opts):  # type: ignore[override]
        x2d = logits.detach().reshape(opts.rows, opts.vocab)
        out, state = _renyi_forward(x2d, temps, opts, need_state=True)
        ctx.opts = opts
        ctx.save_for_backward(logits, temps, state)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):  # type: ignore[override]
        logits, temps, state = ctx.saved_tensors
        opts = ctx.opts
        alpha = opts.alpha
        rows, vocab = opts.rows, opts.vocab
        x2d = logits.reshape(rows, vocab)
        acc = torch.float64
        g_out = g_out.reshape(rows).to(acc)
        chunk = opts.chunk_rows or _default_chunk_rows(vocab, acc)
        grad = torch.empty((rows, vocab), dtype=logits.dtype, device=logits.device)
        for r0 in range(0, rows, chunk):
            r1 = min(rows, r0 + chunk)
            zp = x2d[r0:r1].to(acc)
            zp = zp / (opts.temperature if temps is None else temps[r0:r1, None].to(acc))
            st = state[r0:r1]
            zs = zp - st[:, 0:1]  # z' − m (−inf on masked entries)
            p = torch.exp(zs - st[:, 1:2])  # exactly 0 on masked entries
            if alpha == math.inf:
                g = p.scatter_add_(1, st[:, 2:3].long(), torch.full_like(st[:, 2:3], -1.0))
            elif abs(alpha - 1.0) < NEAR_ONE:
                finite = zp > -math.inf
                d = torch.where(finite, zp - st[:, 2:3], 0.0)  # z' − μ, 0 on masked entries
                g = -p * (alpha * d + (alpha - 1.0) / 2.0 * (d * d - st[:, 3:4]))
            else:
                p_alpha = torch.exp(alpha * zs - st[:, 2:3])
                g = (alpha / (1.0 - alpha)) * (p_alpha - p)
            g.mul_(g_out[r0:r1, None])
            if temps is None:
                g.mul_(1.0 / opts.temperature)
            else:
                g.div_(temps[r0:r1, None].to(acc))
            grad[r0:r1] = g
        return grad.reshape(logits.shape), None, None


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, torch.Tensor):
        if alpha.ndim != 0:
            raise ValueError(
                f"alpha: expected a scalar in [0, inf], got shape {tuple(alpha.shape)}"
            )
        alpha = alpha.item()
    if np.ndim(alpha) != 0:
        raise ValueError(f"alpha: expected a scalar in [0, inf], got shape {np.shape(alpha)}")
    value = float(alpha)
    if not value >= 0.0:
        raise ValueError(f"alpha: expected a value in [0, inf], got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Top-k (token.md §7), float64 torch on the input's device
# ---------------------------------------------------------------------------------------------


def _topk_table(topk_logprobs: Any, vocab_size: int | None, mode: str) -> dict[str, torch.Tensor]:
    """All conventions of §7 as float32 tensors of shape ``topk_logprobs.shape[:-1]``."""
    if mode not in TOPK_MODES:
        raise ValueError(f"mode: expected one of {TOPK_MODES}, got {mode!r}")
    x = _float_tensor("topk_logprobs", topk_logprobs)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(
            f"topk_logprobs: expected shape (..., k) with k >= 1, got {tuple(x.shape)}"
        )
    k = x.shape[-1]
    if vocab_size is None:
        if mode in ("estimate", "lower", "upper"):
            raise ValueError(f"vocab_size: required for mode={mode!r}")
        vocab = None
    else:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise TypeError(f"vocab_size: expected an int, got {type(vocab_size).__name__}")
        vocab = int(vocab_size)
        if vocab < k:
            raise ValueError(f"vocab_size: expected >= k = {k}, got {vocab}")
    out_shape = tuple(x.shape[:-1])
    lp = x.detach().to(torch.float64).reshape(-1, k)
    if bool(torch.isnan(lp).any()):
        raise ValueError("topk_logprobs: contains NaN")
    present = lp > -math.inf
    k_present = present.sum(-1)
    empty = k_present == 0
    if bool(empty.any()):
        row = int(torch.nonzero(empty)[0, 0])
        raise ValueError(f"topk_logprobs: row {row} has every entry -inf (no entry present)")
    lp0 = torch.where(present, lp, 0.0)
    p = torch.where(present, torch.exp(lp0), 0.0)
    total = p.sum(-1)
    too_big = ~(total <= 1.0 + SUM_TOLERANCE)
    if bool(too_big.any()):
        row = int(torch.nonzero(too_big)[0, 0])
        raise ValueError(
            f"topk_logprobs: row {row} sums to {float(total[row])} > 1 + {SUM_TOLERANCE} in "
            "probability (not the log-probs of one distribution)"
        )
    # h(p_i) = −p_i · logprob_i (exact log, even when p_i underflows to 0).
    h_k = (-p * lp0).sum(-1)
    renormalized = (-(p / total[:, None]) * (lp0 - torch.log(total)[:, None])).sum(-1)
    if vocab is not None:
        tail_empty = k_present == vocab
    else:
        tail_empty = torch.zeros_like(empty)
    tau = torch.where(tail_empty, 0.0, torch.clamp(1.0 - total, min=0.0))
    table = {"truncated": h_k, "bucket": h_k + _h(tau), "renormalized": renormalized}
    if vocab is not None:
        tail = (vocab - k_present).to(torch.float64)
        trivial = tail_empty | (tau == 0.0)
        tau_safe = torch.where(trivial, 1.0, tau)
        upper = torch.where(trivial, h_k, h_k + tau_safe * torch.log(tail / tau_safe))
        cap = torch.where(present, p, math.inf).amin(-1)
        cap_safe = torch.where(cap > 0.0, cap, 1.0)
        n = torch.floor(tau_safe / cap_safe)
        inconsistent = (cap == 0.0) | (n + 1.0 > tail)
        lower = h_k + n * _h(cap_safe) + _h(tau_safe - n * cap_safe)
        lower = torch.where(trivial, h_k, torch.where(inconsistent, upper, lower))
        table.update(lower=lower, upper=upper, estimate=(lower + upper) / 2.0)
    return {name: value.to(torch.float32).reshape(out_shape) for name, value in table.items()}


def _h(x: torch.Tensor) -> torch.Tensor:
    """``h(x) = −x log x`` with ``h(0) = 0``."""
    positive = x > 0.0
    return torch.where(positive, -x * torch.log(torch.where(positive, x, 1.0)), 0.0)


# ---------------------------------------------------------------------------------------------
# Fused linear head (token.md §8.2)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LinearOptions:
    temperature: float
    ignore_index: int | None
    collision: bool
    row_block: int
    vocab_block: int
    group: Any
    offset: int  # first global vocabulary index of this rank's shard
    acc: torch.dtype


class _LinearState(NamedTuple):
    logprob: torch.Tensor  # (N,) float32
    entropy: torch.Tensor  # (N,) float32
    collision: torch.Tensor | None  # (N,) float32
    lse: torch.Tensor  # (N,) acc
    mu: torch.Tensor  # (N,) acc
    sum_p2: torch.Tensor | None  # (N,) acc

    def outputs(self, collision: bool) -> tuple[torch.Tensor, ...]:
        if collision:
            return self.logprob, self.entropy, self.collision
        return self.logprob, self.entropy


def _tile_logits(
    h_blk: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    v0: int,
    v1: int,
    opts: _LinearOptions,
) -> torch.Tensor:
    """``z' = (hidden_blk @ weight[v0:v1]ᵀ + bias[v0:v1]) / T`` in the accumulation dtype (new)."""
    tile = _matmul_acc(h_blk, weight[v0:v1].t(), opts.acc)
    if bias is not None:
        tile.add_(bias[v0:v1].to(opts.acc))
    if opts.temperature != 1.0:
        tile.div_(opts.temperature)
    return tile


def _half_mm(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> bool:
    """Whether ``a @ b`` can run on half inputs with a float32 result (CUDA ``out_dtype``)."""
    return (
        acc == torch.float32
        and a.is_cuda
        and a.dtype == b.dtype
        and a.dtype in (torch.float16, torch.bfloat16)
    )


def _matmul_operand(rows: torch.Tensor, weight: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """A row block as the left operand of :func:`_matmul_acc` (upcast once per block)."""
    return rows if _half_mm(rows, weight, acc) else rows.to(acc)


def _matmul_acc(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``a @ b`` accumulated and returned in ``acc`` (a new tensor, exact widening first)."""
    if _half_mm(a, b, acc):
        try:  # half inputs on tensor cores, float32 accumulation and output
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # pragma: no cover - older torch
            pass
    return torch.mm(a.to(acc), b.to(acc))


def _merge(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Merge row states ``(m, s, w, q)`` (``token.md`` §2); an empty side (``m = -inf``) drops."""
    m_a, s_a, w_a, q_a = a
    m_b, s_b, w_b, q_b = b
    m = torch.maximum(m_a, m_b)
    empty_a = torch.isneginf(m_a)
    empty_b = torch.isneginf(m_b)
    d_a = torch.where(empty_a, 0.0, m_a - m)
    d_b = torch.where(empty_b, 0.0, m_b - m)
    e_a = torch.where(empty_a, 0.0, torch.exp(d_a))
    e_b = torch.where(empty_b, 0.0, torch.exp(d_b))
    s = e_a * s_a + e_b * s_b
    w = e_a * (w_a + d_a * s_a) + e_b * (w_b + d_b * s_b)
    q = e_a * e_a * q_a + e_b * e_b * q_b
    return m, s, w, q


def _linear_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    opts: _LinearOptions,
) -> _LinearState:
    rows = hidden.shape[0]
    local_vocab = weight.shape[0]
    device = hidden.device
    acc = opts.acc
    tiny = torch.finfo(acc).min
    ignored = _ignored(labels, opts.ignore_index)
    local = labels - opts.offset
    owned_all = ~ignored & (local >= 0) & (local < local_vocab)
    kernels = _linear_kernels(hidden, weight, bias)
    if kernels is not None:
        m_all, s_all, w_all, q_all, y_all = kernels.linear_state(
            hidden,
            weight,
            bias,
            torch.where(owned_all, local, -1),
            opts.temperature,
            opts.collision,
        )
        return _linear_finish(m_all, s_all, w_all, q_all, y_all, owned_all, ignored, opts)
    m_all = torch.empty(rows, dtype=acc, device=device)
    s_all = torch.empty_like(m_all)
    w_all = torch.empty_like(m_all)
    q_all = torch.empty_like(m_all)
    y_all = torch.empty_like(m_all)  # z'_y for a label in this shard, else −inf
    for r0 in range(0, rows, opts.row_block):
        r1 = min(rows, r0 + opts.row_block)
        h_blk = _matmul_operand(hidden[r0:r1], weight, opts.acc)
        n = r1 - r0
        state = (
            torch.full((n,), -math.inf, dtype=acc, device=device),
            torch.zeros(n, dtype=acc, device=device),
            torch.zeros(n, dtype=acc, device=device),
            torch.zeros(n, dtype=acc, device=device),
        )
        y_val = torch.full((n,), -math.inf, dtype=acc, device=device)
        y_loc = local[r0:r1]
        owned = owned_all[r0:r1]
        for v0 in range(0, local_vocab, opts.vocab_block):
            v1 = min(local_vocab, v0 + opts.vocab_block)
            zp = _tile_logits(h_blk, weight, bias, v0, v1, opts)
            in_tile = owned & (y_loc >= v0) & (y_loc < v1)
            idx = (y_loc - v0).clamp(0, v1 - v0 - 1)
            # The label logit from this very tile value (token.md §8.2; verl #2656).
            y_val = torch.where(in_tile, zp.gather(1, idx[:, None])[:, 0], y_val)
            m_t = zp.amax(-1)
            m_t_safe = torch.where(torch.isneginf(m_t), 0.0, m_t)
            zs = zp.sub_(m_t_safe[:, None]).clamp_(min=tiny)
            e = torch.exp(zs)
            q_t = (e * e).sum(-1) if opts.collision else torch.zeros_like(m_t)
            tile_state = (m_t, e.sum(-1), (zs * e).sum(-1), q_t)
            state = _merge(state, tile_state)
            del zp, zs, e
        m_all[r0:r1], s_all[r0:r1], w_all[r0:r1], q_all[r0:r1] = state
        y_all[r0:r1] = y_val
    return _linear_finish(m_all, s_all, w_all, q_all, y_all, owned_all, ignored, opts)


def _linear_kernels(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """The Triton linear-head module when it runs for these inputs (same-dtype fp32/bf16/fp16)."""
    dtypes = [hidden.dtype] + ([] if bias is None else [bias.dtype])
    if weight.dtype != hidden.dtype or not _uses_triton(hidden.device, *dtypes):
        return None
    return _triton_module("_triton_linear")


def _linear_finish(
    m_all: torch.Tensor,
    s_all: torch.Tensor,
    w_all: torch.Tensor,
    q_all: torch.Tensor,
    y_all: torch.Tensor,
    owned_all: torch.Tensor,
    ignored: torch.Tensor,
    opts: _LinearOptions,
) -> _LinearState:
    """Outputs from this shard's row state, combined over ``opts.group`` first (§2, §8.2)."""
    if opts.group is not None:
        m_all, s_all, w_all, q_all, y_shift = _all_reduce_state(
            m_all, s_all, w_all, q_all, y_all, owned_all, opts.group
        )
    else:
        y_shift = torch.where(owned_all, y_all - m_all, 0.0)
    log_s = torch.log(s_all)
    mean_shift = w_all / s_all
    logprob = torch.where(ignored, 0.0, y_shift - log_s)
    entropy = log_s - mean_shift
    sum_p2 = q_all / (s_all * s_all) if opts.collision else None
    return _LinearState(
        logprob.to(torch.float32),
        entropy.to(torch.float32),
        None if sum_p2 is None else sum_p2.to(torch.float32),
        m_all + log_s,
        m_all + mean_shift,
        sum_p2,
    )


def _all_reduce_state(
    m: torch.Tensor,
    s: torch.Tensor,
    w: torch.Tensor,
    q: torch.Tensor,
    y: torch.Tensor,
    owned: torch.Tensor,
    group: Any,
) -> tuple[torch.Tensor, ...]:
    """Combine the shards' row states (``token.md`` §8.2): ``MAX`` of ``m``, then ``SUM``."""
    import torch.distributed as dist

    m_global = m.clone()
    dist.all_reduce(m_global, op=dist.ReduceOp.MAX, group=group)
    empty = torch.isneginf(m)
    d = torch.where(empty, 0.0, m - m_global)
    e = torch.where(empty, 0.0, torch.exp(d))
    y_shift = torch.where(owned, y - m_global, 0.0)  # only the owning rank contributes
    packed = torch.stack([e * s, e * (w + d * s), e * e * q, y_shift])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return m_global, packed[0], packed[1], packed[2], packed[3]


def _linear_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    mu: torch.Tensor,
    sum_p2: torch.Tensor | None,
    g_lp: torch.Tensor | None,
    g_h: torch.Tensor | None,
    g_c: torch.Tensor | None,
    needs: tuple[bool, bool, bool],
    opts: _LinearOptions,
) -> tuple[torch.Tensor | None, ...]:
    """Tile-by-tile recomputation of ``g_z`` (``token.md`` §5, §8.2); float32 accumulators."""
    rows, dim = hidden.shape
    local_vocab = weight.shape[0]
    acc = opts.acc
    device = hidden.device
    tiny = torch.finfo(acc).min
    need_h, need_w, need_b = needs
    ignored = _ignored(labels, opts.ignore_index)
    local = labels - opts.offset
    if g_lp is not None:
        g_lp = torch.where(ignored, 0.0, g_lp.to(acc))
    kernels = _linear_kernels(hidden, weight, bias)
    if kernels is not None:
        owned = ~ignored & (local >= 0) & (local < local_vocab)
        d_hidden, d_weight, d_bias = kernels.linear_backward(
            hidden,
            weight,
            bias,
            torch.where(owned, local, -1),
            lse,
            mu,
            sum_p2,
            g_lp,
            g_h,
            g_c,
            needs,
            opts.temperature,
            opts.row_block,
            opts.vocab_block,
        )
        return _linear_grads(d_hidden, d_weight, d_bias, hidden, weight, bias, opts)
    d_hidden = torch.zeros((rows, dim), dtype=acc, device=device) if need_h else None
    d_weight = torch.zeros((local_vocab, dim), dtype=acc, device=device) if need_w else None
    d_bias = torch.zeros(local_vocab, dtype=acc, device=device) if need_b else None
    if g_h is not None:
        g_h = g_h.to(acc)
    if g_c is not None:
        g_c = g_c.to(acc)
    for r0 in range(0, rows, opts.row_block):
        r1 = min(rows, r0 + opts.row_block)
        h_blk = _matmul_operand(hidden[r0:r1], weight, acc)
        h_acc = h_blk.to(acc)
        y_loc = local[r0:r1]
        owned = ~ignored[r0:r1] & (y_loc >= 0) & (y_loc < local_vocab)
        for v0 in range(0, local_vocab, opts.vocab_block):
            v1 = min(local_vocab, v0 + opts.vocab_block)
            zp = _tile_logits(h_blk, weight, bias, v0, v1, opts)
            p = torch.exp(zp - lse[r0:r1, None])  # exactly 0 on masked entries
            g = torch.zeros_like(p)
            if g_h is not None:
                d = zp.sub_(mu[r0:r1, None]).clamp_(min=tiny)
                g.addcmul_(p, d, value=-1.0).mul_(g_h[r0:r1, None])
                del d
            if g_c is not None:
                g.add_(p * (p - sum_p2[r0:r1, None]) * (2.0 * g_c[r0:r1, None]))
            if g_lp is not None:
                g_rows = g_lp[r0:r1]
                g.sub_(p * g_rows[:, None])
                in_tile = owned & (y_loc >= v0) & (y_loc < v1)
                idx = (y_loc - v0).clamp(0, v1 - v0 - 1)
                g.scatter_add_(1, idx[:, None], torch.where(in_tile, g_rows, 0.0)[:, None])
            if opts.temperature != 1.0:
                g.mul_(1.0 / opts.temperature)
            if need_h:
                d_hidden[r0:r1].add_(torch.mm(g, weight[v0:v1].to(acc)))
            if need_w:
                d_weight[v0:v1].add_(torch.mm(g.t(), h_acc))
            if need_b:
                d_bias[v0:v1].add_(g.sum(0))
            del zp, p, g
    return _linear_grads(d_hidden, d_weight, d_bias, hidden, weight, bias, opts)


def _linear_grads(
    d_hidden: torch.Tensor | None,
    d_weight: torch.Tensor | None,
    d_bias: torch.Tensor | None,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    opts: _LinearOptions,
) -> tuple[torch.Tensor | None, ...]:
    """The accumulators in each parameter's dtype; ``d_hidden`` summed over ``opts.group``."""
    if d_hidden is not None and opts.group is not None:
        import torch.distributed as dist

        dist.all_reduce(d_hidden, op=dist.ReduceOp.SUM, group=opts.group)
    return (
        None if d_hidden is None else d_hidden.to(hidden.dtype),
        None if d_weight is None else d_weight.to(weight.dtype),
        None if d_bias is None else d_bias.to(bias.dtype),
    )


class _LinearFunction(torch.autograd.Function):
    """The fused linear head of ``token.md`` §8.2 with its tiled backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, opts):  # type: ignore[override]
        state = _linear_forward(hidden, weight, bias, labels, opts)
        ctx.set_materialize_grads(False)
        ctx.opts = opts
        ctx.save_for_backward(hidden, weight, bias, labels, state.lse, state.mu, state.sum_p2)
        return state.outputs(opts.collision)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):  # type: ignore[override]
        hidden, weight, bias, labels, lse, mu, sum_p2 = ctx.saved_tensors
        opts = ctx.opts
        g_lp, g_h = grads[0], grads[1]
        g_c = grads[2] if opts.collision else None
        needs = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        nothing = g_lp is None and g_h is None and g_c is None
        if nothing and opts.group is None:
            return None, None, None, None, None
        d_hidden, d_weight, d_bias = _linear_backward(
            hidden, weight, bias, labels, lse, mu, sum_p2, g_lp, g_h, g_c, needs, opts
        )
        return d_hidden, d_weight, d_bias, None, None


def _shard_offset(local_vocab: int, device: torch.device, group: Any) -> tuple[int, int]:
    """``(offset of this rank's vocabulary shard, total vocabulary)`` over ``group``."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    size = torch.tensor([local_vocab], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(t.item()) for t in sizes]
    return sum(counts[:rank]), sum(counts)


# ---------------------------------------------------------------------------------------------
# Argument checks and dtype plumbing (conventions.md, "Inputs and errors")
# ---------------------------------------------------------------------------------------------


def _float_tensor(name: str, x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected float32, float16, bfloat16 or float64, got dtype {x.dtype}"
        )
    return x


def _logits_rows(logits: Any) -> tuple[torch.Tensor, tuple[int, ...], int, int]:
    """``(logits, row shape, number of rows, V)`` after the dtype and shape checks."""
    x = _float_tensor("logits", logits)
    if x.ndim < 1:
        raise ValueError(f"logits: expected at least 1 dimension(s), got shape {tuple(x.shape)}")
    vocab = x.shape[-1]
    if vocab < 1:
        raise ValueError(
            f"logits: the vocabulary (last) dimension is empty, shape {tuple(x.shape)}"
        )
    row_shape = tuple(x.shape[:-1])
    return x, row_shape, math.prod(row_shape), vocab


def _index_tensor(name: str, x: Any, device: torch.device) -> torch.Tensor:
    """An int64 tensor on ``device`` from an integer tensor or array; ``TypeError`` otherwise."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype in (torch.bool, torch.uint64):
            raise TypeError(f"{name}: expected an int32 or int64 tensor, got dtype {x.dtype}")
        if x.device != device:
            raise ValueError(f"{name}: expected a tensor on {device}, got one on {x.device}")
        return x.detach().to(torch.int64)
    array = np.asarray(x)
    if array.dtype.kind not in "iu" or array.dtype == np.uint64:
        raise TypeError(f"{name}: expected an int32 or int64 tensor, got dtype {array.dtype}")
    return torch.as_tensor(array.astype(np.int64), device=device)


def _labels_rows(
    labels: Any, row_shape: tuple[int, ...], rows: int, device: torch.device
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``labels`` as an ``(N, K)`` int64 tensor plus its original shape."""
    y = _index_tensor("labels", labels, device)
    shape = tuple(y.shape)
    if shape == row_shape:
        return y.reshape(rows, 1), shape
    if y.ndim == len(row_shape) + 1 and shape[:-1] == row_shape:
        return y.reshape(rows, shape[-1]), shape
    raise ValueError(f"labels: expected shape {row_shape} or {row_shape} + (K,), got {shape}")


def _ignored(labels: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    if ignore_index is None:
        return torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    return labels == ignore_index


def _check_label_range(labels: torch.Tensor, ignored: torch.Tensor, vocab: int) -> None:
    bad = ~ignored & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(f"labels: expected values in [0, {vocab}), got {value}")


def _temperatures(
    temperature: Any, row_shape: tuple[int, ...], rows: int, device: torch.device
) -> tuple[float, torch.Tensor | None]:
    """``(scalar T, None)`` or ``(1.0, per-row float64 T of shape (N,) on device)``.

    Every value must be finite and ``> 0`` (``token.md`` §1, Decision: raise, never clamp).
    """
    if isinstance(temperature, torch.Tensor):
        values = temperature.detach()
        if values.ndim == 0:
            return _scalar_temperature(values.item()), None
        values = values.to(device=device, dtype=torch.float64)
    elif np.ndim(temperature) == 0:
        return _scalar_temperature(temperature), None
    else:
        values = torch.as_tensor(np.asarray(temperature, dtype=np.float64), device=device)
    try:
        values = torch.broadcast_to(values, row_shape)
    except RuntimeError:
        raise ValueError(
            f"temperature: shape {tuple(values.shape)} does not broadcast to the row shape "
            f"{row_shape}"
        ) from None
    if not bool(torch.all(torch.isfinite(values) & (values > 0))):
        raise ValueError("temperature: every value must be finite and > 0")
    return 1.0, values.reshape(rows).contiguous()


def _scalar_temperature(temperature: Any) -> float:
    if isinstance(temperature, torch.Tensor):
        if temperature.ndim != 0:
            raise ValueError(
                f"temperature: expected a scalar, got shape {tuple(temperature.shape)}"
            )
        temperature = temperature.item()
    if np.ndim(temperature) != 0:
        raise ValueError(f"temperature: expected a scalar, got shape {np.shape(temperature)}")
    value = float(temperature)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"temperature: expected a finite value > 0, got {value}")
    return value


def _check_nan_policy(nan_policy: str) -> bool:
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy: expected one of {NAN_POLICIES}, got {nan_policy!r}")
    return nan_policy == "propagate"


def _check_ignore_index(ignore_index: Any) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int or None, got {type(ignore_index).__name__}")
    return int(ignore_index)


def _check_block(name: str, value: Any, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a value >= 1, got {value}")
    return int(value)


def _same_device(name: str, x: torch.Tensor, device: torch.device) -> None:
    if x.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (as hidden), got {x.device}")


def _dtypes(*tensors: torch.Tensor | None) -> set[torch.dtype]:
    return {t.dtype for t in tensors if t is not None}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 accumulates in float64, every other accepted dtype in float32 (``token.md`` §3)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _default_chunk_rows(vocab: int, acc: torch.dtype) -> int:
    """The largest row count whose temporaries fit in :data:`CHUNK_BYTES` (``token.md`` §8.1)."""
    itemsize = torch.finfo(acc).bits // 8
    return max(1, CHUNK_BYTES // (_LIVE_TEMPORARIES * itemsize * vocab))


def _numpy_view(x: torch.Tensor) -> np.ndarray:
    """A NumPy array over the same memory as the CPU tensor ``x`` (no copy; bf16 via int16)."""
    x = x.detach().resolve_conj().resolve_neg()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)
