"""Rollout-buffer statistics on torch tensors (``rollout.md``): any device, differentiable where
the math is.

The torch face of ``entcore.rollout``: same names, argument names and defaults as the float64
oracle ``entcore.reference.rollout`` (whose docstrings hold the long form of every rule).

- ``process_group`` (§0.2, torch only): :func:`high_entropy_mask`, :func:`centered_cov`,
  :func:`clip_cov_select`, :func:`kl_cov_select` and :func:`steer_weights` take a
  ``torch.distributed`` group over which a unit spans all ranks; the result on each rank is its
  part of the single-process result on the rows of all ranks concatenated in rank order. A
  fixed number of collective rounds per call, nothing per token gathered
  (:mod:`entcore.torch._distributed`); every rank of the group must make the call. Argument
  checks run on each rank before the first collective, so a rank whose own input is refused
  (a NaN in ``logprob``, a bad shape) raises while the others wait in that collective, as with
  any ``torch.distributed`` code; ``high_entropy_mask``'s ``nan_policy="raise"`` is agreed in
  the first round and raises on every rank.
- Layouts (§0.1): token tensors are padded ``(B, L)`` with ``mask``, or packed ``(N,)`` with
  ``cu_seqlens`` (``mask`` then optional; ``mask=None`` means all valid). Both are read into one
  ``(B, W)`` grid on the input's device (a gather for packed input), so the two layouts give the
  same results; values at invalid positions are never read (NaN there is harmless, and gets a
  zero gradient). Per-token outputs have the input layout, 0 (False) at invalid positions.
- Devices: everything runs in torch ops on the input's device (CUDA tensors stay on the GPU).
  Two exceptions by design: :func:`high_entropy_mask` sends CPU tensors through the Rust core
  (a zero-copy NumPy view), and :func:`clip_cov_select` with ``seed`` draws its permutations with
  ``numpy.random.default_rng(seed)`` so that every face agrees (§0.3). Validation (NaN at a valid
  position, 0/1 masks, ``cu_seqlens``) synchronises once per checked tensor.
- Precision: float inputs are upcast exactly to float64 and every statistic is computed in
  float64. Per-token and per-row float results and the losses are returned as float32, or
  float64 when a float input is float64 (so ``gradcheck`` runs in float64); summary statistics
  the reference documents as float64 (``τ``, ``entropy_summary``, the ``PPOTerms`` scalars,
  schedules, ...) are float64. Counts and indices are int64, masks bool.
- Gradients: :func:`agg_loss`, :func:`ppo_loss` (in ``logprob``), :func:`forking_token_loss`,
  :func:`clip_cov_loss`, :func:`kl_cov_loss` (in ``logprob``), :func:`epo_band_penalty`
  (``form="relu"``, through ``entropy``) and :func:`siren_regularizer` (through ``h``) are
  differentiable; ``old_logprob``, ``advantages``, anchors and history means are constants. All
  other functions return results without gradient.
- Unit sums over rows use ``index_add`` (on CUDA the float64 atomics may change the last bit
  between runs); row sums and everything per token are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import torch

from entcore.reference._layout import FLOAT_DTYPES as _NP_FLOAT_DTYPES
from entcore.reference._layout import check_cu_seqlens as _ref_check_cu_seqlens
from entcore.reference._layout import choice
from entcore.reference._layout import integer as _ref_integer
from entcore.reference._layout import real as _ref_real
from entcore.torch import _distributed

__all__ = [
    "PPOTerms",
    "aepo_select",
    "aepo_temperature",
    "agg_loss",
    "answer_entropy",
    "canon_advantages",
    "centered_cov",
    "clip_cov_loss",
    "clip_cov_select",
    "detection_statistic",
    "detection_threshold",
    "entropy_position_curve",
    "entropy_reduction",
    "entropy_summary",
    "epo_band_penalty",
    "epo_phase_weight",
    "forking_token_loss",
    "group_advantages",
    "high_entropy_mask",
    "hwe_count",
    "hwe_threshold",
    "kl_cov_loss",
    "kl_cov_select",
    "nll_entropy_estimate",
    "pass_at_k",
    "peak_entropy_mask",
    "pear_reward",
    "phase_boundary",
    "phase_entropy",
    "ppo_loss",
    "siren_regularizer",
    "spear_recalibrate",
    "spear_schedules",
    "steer_weights",
    "step_entropy_means",
    "support_epsilon",
    "support_metrics",
    "window_entropy",
]

AGG_MODES = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
    "grpo",
    "bnpo",
    "dr_grpo",
    "dapo",
)
QUANTILE_METHODS = ("linear", "lower", "higher", "nearest", "midpoint", "topk")
HIGH_ENTROPY_NAN_POLICIES = ("raise", "propagate", "omit")
#: The methods the CPU fast path sends to the Rust-backed NumPy face (all of them).
_CORE_METHODS = QUANTILE_METHODS

#: ``h`` within ``2⁻³⁰·max(1, h)`` of an integer is snapped to it (§3).
SNAP = 2.0**-30
#: STEER's floor for ``M`` in the exponential mode (§6).
STEER_M_FLOOR = 0.02

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_F64 = torch.float64
_TWO32 = 2**32


class PPOTerms(NamedTuple):
    """Per-token PPO loss and its metrics (``rollout.md`` §2, §5), torch face.

    ``loss``, ``ratio``: float32 (float64 for float64 input) in the input layout, 0 off-mask,
    differentiable in ``logprob``; ``clipped``: bool (False off-mask); ``clipfrac``,
    ``clipfrac_lower``, ``ppo_kl``: float64 0-dim tensors without gradient (NaN for an empty
    mask, a ``0/0`` mean).
    """

    loss: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor
    clipfrac: torch.Tensor
    clipfrac_lower: torch.Tensor
    ppo_kl: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def _python_scalar(name: str, x: Any) -> Any:
    """A 0-dim tensor as a Python number (one synchronisation); anything else unchanged."""
    if isinstance(x, torch.Tensor):
        if x.ndim != 0:
            raise TypeError(f"{name}: expected a scalar, got a tensor of shape {tuple(x.shape)}")
        return x.item()
    return x


def _real(name: str, x: Any, **bounds: Any) -> float:
    return _ref_real(name, _python_scalar(name, x), **bounds)


def _integer(name: str, x: Any, *, low: int | None = None) -> int:
    return _ref_integer(name, _python_scalar(name, x), low=low)


def _nonneg(name: str, x: Any) -> float | None:
    return None if x is None else _real(name, x, low=0.0)


def _float_tensor(name: str, x: Any) -> torch.Tensor:
    """The primary float input of a call: a torch tensor of a float dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected float32, float16, bfloat16 or float64, got dtype {x.dtype}"
        )
    return x


def _on_device(name: str, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if x.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {x.device}")
    return x


def _as_float(name: str, x: Any, device: torch.device) -> torch.Tensor:
    """A secondary float input (tensor on ``device``, or an array-like) as a tensor."""
    if isinstance(x, torch.Tensor):
        return _on_device(name, _float_tensor(name, x), device)
    if x is None:
        raise TypeError(f"{name}: expected a tensor, got None")
    array = np.asarray(x)
    if array.dtype not in _NP_FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected float32, float16, bfloat16 or float64, got dtype {array.dtype}"
        )
    return torch.as_tensor(array.astype(np.float64), device=device)


def _as_int(name: str, x: Any, device: torch.device | None) -> torch.Tensor:
    """An integer input (tensor or array-like; bool and floats refused) as int64."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name}: expected an integer (int64) tensor, got dtype {x.dtype}")
        if device is not None:
            _on_device(name, x, device)
        return x.detach().to(torch.int64)
    if x is None:
        raise TypeError(f"{name}: expected an integer tensor, got None")
    array = np.asarray(x)
    if array.dtype.kind not in "iu" or array.dtype == np.uint64:
        raise TypeError(f"{name}: expected an integer (int64) array, got dtype {array.dtype}")
    return torch.as_tensor(array.astype(np.int64), device=device)


def _as_bool(name: str, x: Any, device: torch.device) -> torch.Tensor:
    """A bool input, or 0/1 integers or floats (``rollout.md`` §0.1 ``mask``), as bool."""
    if not isinstance(x, torch.Tensor):
        if x is None:
            raise TypeError(f"{name}: expected a bool tensor, got None")
        array = np.asarray(x)
        if array.dtype == np.bool_:
            return torch.as_tensor(array, device=device)
        if array.dtype.kind not in "iuf" and array.dtype not in _NP_FLOAT_DTYPES:
            raise TypeError(f"{name}: expected a bool or 0/1 array, got dtype {array.dtype}")
        x = torch.as_tensor(array.astype(np.float64), device=device)
    _on_device(name, x, device)
    x = x.detach()
    if x.dtype == torch.bool:
        return x
    if x.dtype.is_complex:
        raise TypeError(f"{name}: expected a bool or 0/1 tensor, got dtype {x.dtype}")
    if not bool(torch.all((x == 0) | (x == 1))):
        raise ValueError(f"{name}: expected bool or 0/1 values")
    return x == 1


def _vector(x: torch.Tensor, name: str, n: int | None) -> torch.Tensor:
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D tensor, got shape {tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(x.shape)}")
    return x


def _float_vector(
    name: str, x: Any, device: torch.device, n: int | None = None, *, nan_ok: bool = False
) -> torch.Tensor:
    """A 1-D float input as float64 (detached); NaN → ``ValueError`` unless ``nan_ok``."""
    t = _vector(_as_float(name, x, device).detach().to(_F64), name, n)
    if not nan_ok and bool(torch.isnan(t).any()):
        raise ValueError(f"{name}: contains NaN")
    return t


def _out_dtype(*tensors: Any) -> torch.dtype:
    """float64 when a float input is float64, else float32 (module docstring)."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dtype == _F64:
            return _F64
    return torch.float32


def _device_of(*xs: Any) -> torch.device:
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def _numeric(name: str, x: Any, device: torch.device) -> torch.Tensor:
    """A real scalar or array (tensor or array-like) as a float64 tensor on ``device``."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.dtype.is_complex:
            raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype}")
        return x.detach().to(device=device, dtype=_F64)
    try:
        array = np.asarray(x)
        if array.dtype == np.bool_ or array.dtype.kind not in "iuf":
            raise TypeError
        return torch.as_tensor(array.astype(np.float64), device=device)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected real numbers, got {type(x).__name__}") from err


# ---------------------------------------------------------------------------------------------
# Small tensor helpers
# ---------------------------------------------------------------------------------------------


def _scalar_t(value: Any, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(_F64)
    return torch.tensor(float(value), dtype=_F64, device=device)


def _safe_div(num: torch.Tensor, den: Any) -> torch.Tensor:
    """``num / den``; a zero denominator gives 0 (losses, §1), with a finite gradient."""
    den = _scalar_t(den, num.device)
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), 0.0)


def _ratio(num: torch.Tensor, den: Any) -> torch.Tensor:
    """``num / den``; a zero denominator gives NaN (§0.3)."""
    den = _scalar_t(den, num.device)
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), math.nan)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid cells (float64, no gradient), NaN when there is none."""
    values = values.detach().to(_F64)
    return _ratio(torch.where(valid, values, 0.0).sum(), valid.sum().to(_F64))


def _snap(h: torch.Tensor) -> torch.Tensor:
    """``h`` snapped to the nearest integer when within ``2⁻³⁰·max(1, h)`` of it (§3)."""
    nearest = torch.round(h)
    return torch.where((h - nearest).abs() <= SNAP * torch.clamp(h, min=1.0), nearest, h)


def _lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``a + t (b − a)`` as ``torch.lerp`` and ``numpy.percentile`` evaluate it (``t = 1`` → b)."""
    low = a + t * (b - a)
    high = b - (1.0 - t) * (b - a)
    return torch.where(a == b, a, torch.where(t < 0.5, low, high))


def _sorted_quantile(ordered: torch.Tensor, n: torch.Tensor, q: Any) -> torch.Tensor:
    """Linear quantile(s) ``q`` of rows of ascending values, the ``n`` valid values first.

    ``ordered``: ``(R, W)``; ``n``: ``(R,)`` int; ``q``: a float (→ ``(R,)``) or a float64
    ``(Q,)`` tensor (→ ``(R, Q)``). As ``_layout.linear_quantile``: ``h = (n − 1) q``,
    ``lerp(x_(⌊h⌋), x_(min(⌈h⌉, n−1)), h − ⌊h⌋)``; NaN where ``n = 0``.
    """
    scalar = not isinstance(q, torch.Tensor)
    qs = torch.as_tensor(q, dtype=_F64, device=ordered.device).reshape(-1)
    nf = n.to(_F64)[:, None]
    h = (nf - 1.0) * qs[None, :]
    width = ordered.shape[-1]
    if width == 0:
        out = torch.full(h.shape, math.nan, dtype=_F64, device=ordered.device)
    else:
        lo = torch.floor(h)
        hi = torch.minimum(torch.ceil(h), nf - 1.0)
        x_lo = torch.gather(ordered, 1, lo.clamp(0, width - 1).to(torch.int64))
        x_hi = torch.gather(ordered, 1, hi.clamp(0, width - 1).to(torch.int64))
        out = torch.where(n[:, None] > 0, _lerp(x_lo, x_hi, h - lo), math.nan)
    return out[:, 0] if scalar else out


def _median(values: torch.Tensor) -> torch.Tensor:
    """``numpy.median`` of a non-empty 1-D float64 tensor (mean of the two middle values)."""
    ordered = torch.sort(values).values
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0


def _stable_sort_by(keys: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """Permutation ordering by ``then`` (ascending), ties by ``keys`` ascending, then index."""
    first = torch.sort(keys, stable=True).indices
    second = torch.sort(then[first], stable=True).indices
    return first[second]


def _group_ids(name: str, x: Any, n: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """``(inverse (n,) int64, G)``: dense ids of arbitrary integer group labels, ascending."""
    ids = _vector(_as_int(name, x, device), name, n)
    _, inverse = torch.unique(ids, return_inverse=True)
    count = int(inverse.max()) + 1 if n else 0
    return inverse.reshape(-1), count


def _unit_sum(values: torch.Tensor, row_unit: torch.Tensor, n_units: int) -> torch.Tensor:
    out = torch.zeros(n_units, dtype=values.dtype, device=values.device)
    return out.index_add(0, row_unit, values)


# ---------------------------------------------------------------------------------------------
# Token layouts and units (rollout.md §0.1, §0.2)
# ---------------------------------------------------------------------------------------------


def _host_cu_seqlens(cu_seqlens: Any, n_tokens: int) -> np.ndarray:
    if isinstance(cu_seqlens, torch.Tensor):
        if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype in (torch.bool, torch.uint64):
            raise TypeError(
                f"cu_seqlens: expected an integer (int64) tensor, got dtype {cu_seqlens.dtype}"
            )
        cu_seqlens = cu_seqlens.detach().cpu().numpy()
    return _ref_check_cu_seqlens(cu_seqlens, n_tokens)


@dataclass(frozen=True)
class _Layout:
    """The token layout of one call as a ``(B, W)`` grid on the input's device.

    ``valid``: ``(B, W)`` bool, the valid response tokens (slot ∧ mask). Packed input only:
    ``index`` ``(B, W)`` int64, the flat index of each cell (0 where the cell is no slot);
    ``token_row``, ``token_pos`` ``(N,)``, the cell of each token; ``token_valid`` ``(N,)`` its
    mask. Row-major grid order over slots is the flat order of §0.3 in both layouts.
    """

    packed: bool
    shape: tuple[int, ...]
    device: torch.device
    valid: torch.Tensor
    index: torch.Tensor | None = None
    token_row: torch.Tensor | None = None
    token_pos: torch.Tensor | None = None
    token_valid: torch.Tensor | None = None

    @property
    def n_rows(self) -> int:
        return int(self.valid.shape[0])

    @property
    def width(self) -> int:
        return int(self.valid.shape[1])

    def positions(self) -> torch.Tensor:
        """``(B, W)`` int64: the position ``t`` of each cell (its column)."""
        columns = torch.arange(self.width, dtype=torch.int64, device=self.device)
        return columns.expand(self.n_rows, self.width)

    def grid(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` (input layout) as a ``(B, W)`` grid in its own dtype; nothing is masked yet."""
        if tuple(x.shape) != self.shape:
            what = "(N,) with cu_seqlens" if self.packed else "(B, L) padded"
            raise ValueError(f"{name}: expected shape {self.shape} {what}, got {tuple(x.shape)}")
        _on_device(name, x, self.device)
        return x if self.index is None else x[self.index]

    def floats(
        self, name: str, x: Any, *, allow_nan: bool = False, grad: bool = False
    ) -> torch.Tensor:
        """A float token tensor as a float64 grid, 0 at every invalid cell.

        NaN at a valid position → ``ValueError`` unless ``allow_nan``. With ``grad=True`` the
        result stays attached to ``x``'s graph (invalid cells get a zero gradient).
        """
        t = _as_float(name, x, self.device)
        if not grad:
            t = t.detach()
        g = self.grid(name, t).to(_F64)
        if not allow_nan and bool((torch.isnan(g) & self.valid).any()):
            raise ValueError(f"{name}: contains NaN at a valid (mask = 1) position")
        return torch.where(self.valid, g, 0.0)

    def ints(self, name: str, x: Any) -> torch.Tensor:
        """An integer token tensor (``token_ids``) as an int64 grid, 0 at every invalid cell."""
        return torch.where(self.valid, self.grid(name, _as_int(name, x, self.device)), 0)

    def bools(self, name: str, x: Any) -> torch.Tensor:
        """A bool (or 0/1) token tensor as a bool grid, False at every invalid cell."""
        return self.grid(name, _as_bool(name, x, self.device)) & self.valid

    def tokens(self, grid: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A grid back in the input layout (cast to ``dtype``); 0 (False) at invalid positions.

        A gather (differentiable), never a scatter: each token reads its own cell.
        """
        if dtype is not None:
            grid = grid.to(dtype)
        if self.token_row is None:
            valid = self.valid
        else:
            assert self.token_pos is not None and self.token_valid is not None
            grid = grid[self.token_row, self.token_pos]
            valid = self.token_valid
        if grid.dtype == torch.bool:
            return grid & valid
        return torch.where(valid, grid, torch.zeros((), dtype=grid.dtype, device=grid.device))


def _layout(name: str, x: torch.Tensor, mask: Any, cu_seqlens: Any) -> _Layout:
    """The layout of the token tensor ``x`` with its ``mask`` and ``cu_seqlens`` (§0.1)."""
    device = x.device
    mask_t = None
    if mask is not None:
        mask_t = _as_bool("mask", mask, device)
        if tuple(mask_t.shape) != tuple(x.shape):
            raise ValueError(
                f"mask: expected shape {tuple(x.shape)} (as {name}), got {tuple(mask_t.shape)}"
            )
    if cu_seqlens is None:
        if x.ndim != 2:
            raise ValueError(
                f"{name}: expected a padded (B, L) tensor (or (N,) with cu_seqlens), "
                f"got shape {tuple(x.shape)}"
            )
        if mask_t is None:
            mask_t = torch.ones(tuple(x.shape), dtype=torch.bool, device=device)
        return _Layout(False, tuple(x.shape), device, mask_t)
    if x.ndim != 1:
        raise ValueError(
            f"{name}: expected a packed (N,) tensor with cu_seqlens, got shape {tuple(x.shape)}"
        )
    n_tokens = x.shape[0]
    cu = _host_cu_seqlens(cu_seqlens, n_tokens)
    lengths = np.diff(cu)
    n_rows = lengths.shape[0]
    width = int(lengths.max()) if n_rows else 0
    cu_t = torch.as_tensor(cu, device=device)
    lengths_t = cu_t[1:] - cu_t[:-1]
    columns = torch.arange(width, dtype=torch.int64, device=device)
    slot = columns[None, :] < lengths_t[:, None]
    index = torch.where(slot, cu_t[:-1, None] + columns[None, :], 0)
    rows = torch.arange(n_rows, dtype=torch.int64, device=device)
    token_row = torch.repeat_interleave(rows, lengths_t, output_size=n_tokens)
    token_pos = torch.arange(n_tokens, dtype=torch.int64, device=device) - cu_t[token_row]
    if mask_t is None:
        token_valid = torch.ones(n_tokens, dtype=torch.bool, device=device)
        valid = slot
    else:
        token_valid = mask_t
        valid = slot & mask_t[index]
    return _Layout(True, (n_tokens,), device, valid, index, token_row, token_pos, token_valid)


def _unit_means(
    values: torch.Tensor, valid: torch.Tensor, row_unit: torch.Tensor, n_units: int
) -> torch.Tensor:
    """Mean of the valid grid values of each unit as ``x_0 + Σ(x − x_0)/n`` (``x_0`` its first
    valid value): exact for a constant unit (a GRPO sequence advantage), so equal values stay
    equal; NaN-free 0 for an empty unit."""
    n_rows, width = valid.shape
    cells = n_rows * width
    cell_unit = row_unit[:, None].expand(n_rows, width)
    flat = torch.arange(cells, dtype=torch.int64, device=valid.device).reshape(n_rows, width)
    first = torch.full((n_units,), cells, dtype=torch.int64, device=valid.device)
    first = first.scatter_reduce(
        0, cell_unit.reshape(-1), torch.where(valid, flat, cells).reshape(-1), reduce="amin"
    )
    x0 = values.reshape(-1)[first.clamp(max=max(cells - 1, 0))] if cells else first.to(_F64)
    x0 = torch.where(first < cells, x0, 0.0)
    deviation = torch.where(valid, values - x0[row_unit][:, None], 0.0).sum(dim=1)
    count = _unit_sum(valid.sum(dim=1).to(_F64), row_unit, n_units)
    return x0 + _unit_sum(deviation, row_unit, n_units) / torch.where(count > 0, count, 1.0)


def _units(
    scope: Any, micro_batch: Any, n_rows: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """``(unit (B,) int64 in [0, U), U)``: the unit of each row, units in increasing id (§0.2)."""
    choice("scope", scope, ("micro_batch", "batch"))
    if scope == "batch" or micro_batch is None:
        return torch.zeros(n_rows, dtype=torch.int64, device=device), 1 if n_rows else 0
    if isinstance(micro_batch, torch.Tensor) and micro_batch.ndim == 0:
        micro_batch = _python_scalar("micro_batch", micro_batch)
    if isinstance(micro_batch, (int, np.integer)) and not isinstance(micro_batch, (bool, np.bool_)):
        size = _integer("micro_batch", micro_batch, low=1)
        ids = torch.arange(n_rows, dtype=torch.int64, device=device) // size
    else:
        ids = _vector(_as_int("micro_batch", micro_batch, None), "micro_batch", n_rows)
        ids = ids.to(device)
    return _group_ids("micro_batch", ids, n_rows, device)


# ---------------------------------------------------------------------------------------------
# Units over a process group (rollout.md §0.2 process_group)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GlobalUnits:
    """The units of one call over a process group: ``unit`` ``(B_total,)`` the unit of every row
    of the ranks' rows concatenated in rank order, ``n_units`` their number, ``rows`` the row
    counts of the ranks (:class:`entcore.torch._distributed.Rows`)."""

    rows: _distributed.Rows
    unit: torch.Tensor
    n_units: int

    @property
    def group(self) -> Any:
        return self.rows.group

    @property
    def local(self) -> torch.Tensor:
        """The units of this rank's rows."""
        start = self.rows.offset
        return self.unit[start : start + self.rows.counts[self.rows.rank]]


def _is_size(micro_batch: Any) -> bool:
    """``micro_batch`` given as rows per consecutive micro-batch (an int), not as row ids."""
    if isinstance(micro_batch, torch.Tensor):
        return micro_batch.ndim == 0
    return isinstance(micro_batch, (int, np.integer)) and not isinstance(
        micro_batch, (bool, np.bool_)
    )


def _call_units(
    scope: Any, micro_batch: Any, lay: _Layout, process_group: Any, flag: int = 0
) -> tuple[torch.Tensor, int, _GlobalUnits | None]:
    """``(unit of each local row, U, global units or None)`` of a unit-based call (§0.2).

    With a ``process_group`` the units are those of the rows of all ranks concatenated in rank
    order: one ``all_gather`` of the ranks' row counts, grid widths and ``flag``, plus one of the
    rows' ids when ``micro_batch`` is an id array (an int counts rows of the concatenation).
    """
    if process_group is None:
        row_unit, n_units = _units(scope, micro_batch, lay.n_rows, lay.device)
        return row_unit, n_units, None
    choice("scope", scope, ("micro_batch", "batch"))
    ids = None  # checked before the first collective, so that a bad argument fails alone
    if scope == "micro_batch" and micro_batch is not None:
        if _is_size(micro_batch):
            _integer("micro_batch", micro_batch, low=1)
        else:
            ids = _vector(_as_int("micro_batch", micro_batch, None), "micro_batch", lay.n_rows)
    rows = _distributed.exchange_rows(process_group, lay.n_rows, lay.width, lay.device, flag)
    if ids is not None:
        micro_batch = _distributed.gather_rows(rows, ids.to(lay.device)[:, None])[:, 0]
    unit, n_units = _units(scope, micro_batch, rows.total, lay.device)
    units = _GlobalUnits(rows, unit, n_units)
    return units.local, n_units, units


def _global_unit_means(
    grids: tuple[torch.Tensor, ...], valid: torch.Tensor, units: _GlobalUnits
) -> list[torch.Tensor]:
    """:func:`_unit_means` of each float64 grid over a process group, ``(U,)`` each.

    Computed on every rank exactly as one process computes it on the concatenated rows (bit for
    bit for rows shorter than 2¹⁵ cells, below which torch sums a row in one piece): the count
    and first valid value of every row are gathered (one ``all_gather``, a few numbers per row),
    giving each unit's first valid value ``x_0``; then each row's sum of ``x − x_0`` over the
    concatenation's grid width (a second ``all_gather``), reduced over rows as
    :func:`_unit_means` does.
    """
    rows, unit, n_units = units.rows, units.unit, units.n_units
    device = valid.device
    n_rows, width = valid.shape
    full = max(rows.width, 1)  # the concatenated grid's width (at least one cell per row)
    valid = torch.cat(
        [valid, torch.zeros((n_rows, full - width), dtype=torch.bool, device=device)], dim=1
    )
    padding = torch.zeros((n_rows, full - width), dtype=_F64, device=device)
    grids = tuple(torch.cat([g, padding], dim=1) for g in grids)
    columns = torch.arange(full, dtype=torch.int64, device=device)
    first_column = torch.where(valid, columns, full).amin(dim=1).clamp(max=full - 1)
    firsts = [g.gather(1, first_column[:, None])[:, 0] for g in grids]
    row_counts = valid.sum(dim=1).to(_F64)
    info = _distributed.gather_rows(rows, torch.stack([row_counts, *firsts], dim=1))
    counts = info[:, 0]
    total = rows.total
    index = torch.arange(total, dtype=torch.int64, device=device)
    first_row = torch.full((n_units,), total, dtype=torch.int64, device=device)
    first_row = first_row.scatter_reduce(
        0, unit, torch.where(counts > 0, index, total), reduce="amin"
    )
    at = first_row.clamp(max=max(total - 1, 0))
    x0s = [torch.where(first_row < total, info[at, 1 + i], 0.0) for i in range(len(grids))]
    local = units.local
    deviations = [
        torch.where(valid, g - x0[local][:, None], 0.0).sum(dim=1)
        for g, x0 in zip(grids, x0s, strict=True)
    ]
    deviation = _distributed.gather_rows(rows, torch.stack(deviations, dim=1))
    count = _unit_sum(counts, unit, n_units)
    den = torch.where(count > 0, count, 1.0)
    return [x0 + _unit_sum(deviation[:, i], unit, n_units) / den for i, x0 in enumerate(x0s)]


def _clip_bounds(clip_low: Any, clip_high: Any) -> tuple[float, float]:
    low = _real("clip_low", clip_low, low=0.0)
    high = low if clip_high is None else _real("clip_high", clip_high, low=0.0)
    return low, high


def _pg_terms(
    adv: torch.Tensor, ratio: torch.Tensor, eps_low: float, eps_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``l1 = −A r`` and ``l2 = −A clip(r, 1 − ε_low, 1 + ε_high)`` (§2)."""
    return -adv * ratio, -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)


# ---------------------------------------------------------------------------------------------
# §1 Loss aggregation
# ---------------------------------------------------------------------------------------------


def agg_loss(
    loss: torch.Tensor,
    mask: Any,
    mode: str = "token-mean",
    *,
    cu_seqlens: Any = None,
    dp_size: int = 1,
    batch_num_tokens: Any = None,
    global_batch_size: Any = None,
    loss_scale_factor: Any = None,
    max_completion_length: Any = None,
    num_items_in_batch: Any = None,
    num_processes: int = 1,
    grad_accum_steps: int = 1,
) -> torch.Tensor:
    """Reduce a per-token loss to a differentiable scalar (``rollout.md`` §1).

    With ``S_b = Σ_t L_bt M_bt``, ``n_b`` valid tokens of row ``b`` and ``𝔅 = {b : n_b > 0}``:
    ``"token-mean"`` ``Σ S_b / D · dp_size``; ``"seq-mean-token-sum"`` ``Σ_𝔅 S_b / G · dp_size``;
    ``"seq-mean-token-mean"`` ``Σ_𝔅 (S_b/n_b) / G · dp_size``; ``"seq-mean-token-sum-norm"``
    ``Σ S_b / loss_scale_factor`` (default ``L``); ``"grpo"`` ``(1/B) Σ S_b / max(n_b, 1)``;
    ``"bnpo"`` ``Σ S_b / max(Σ n_b, 1)``; ``"dr_grpo"`` ``Σ S_b / (B · max_completion_length)``
    (the last three ``/ grad_accum_steps``); ``"dapo"`` ``Σ S_b / (num_items_in_batch /
    num_processes)``. A zero denominator gives 0. Long form: ``entcore.reference.rollout``.

    verl ``core_algos.py :: agg_loss``; TRL ``GRPOTrainer._compute_loss``; arXiv 2503.20783
    (Dr.GRPO), arXiv 2503.14476 (DAPO). Returns a 0-dim float32 (float64) tensor.
    """
    mode = choice("mode", mode, AGG_MODES)
    x = _float_tensor("loss", loss)
    lay = _layout("loss", x, mask, cu_seqlens)
    values = lay.floats("loss", x, grad=True)
    dp = _integer("dp_size", dp_size, low=1)
    accum = _integer("grad_accum_steps", grad_accum_steps, low=1)
    processes = _integer("num_processes", num_processes, low=1)
    tokens = _nonneg("batch_num_tokens", batch_num_tokens)
    global_batch = _nonneg("global_batch_size", global_batch_size)
    scale_factor = _nonneg("loss_scale_factor", loss_scale_factor)
    completion = _nonneg("max_completion_length", max_completion_length)
    items = _nonneg("num_items_in_batch", num_items_in_batch)
    out = _out_dtype(x)

    row_sums = values.sum(dim=1)  # S_b
    row_counts = lay.valid.sum(dim=1)  # n_b
    total = row_sums.sum()
    n_valid = row_counts.sum().to(_F64)
    nonempty = row_counts > 0
    n_nonempty = nonempty.sum().to(_F64)

    if mode == "token-mean":
        result = _safe_div(total, n_valid if tokens is None else tokens) * dp
    elif mode == "seq-mean-token-sum":
        result = _safe_div(total, n_nonempty if global_batch is None else global_batch) * dp
    elif mode == "seq-mean-token-mean":
        row_means = torch.where(nonempty, row_sums / row_counts.clamp(min=1).to(_F64), 0.0)
        den = n_nonempty if global_batch is None else global_batch
        result = _safe_div(row_means.sum(), den) * dp
    elif mode == "seq-mean-token-sum-norm":
        if scale_factor is None:
            if lay.packed:
                raise ValueError(
                    "loss_scale_factor: required with packed inputs (cu_seqlens) in mode "
                    "'seq-mean-token-sum-norm' (the default is the padded width L)"
                )
            scale_factor = float(lay.shape[1])
        result = _safe_div(total, scale_factor)
    elif mode == "grpo":
        per_row = row_sums / row_counts.clamp(min=1).to(_F64)
        result = _safe_div(per_row.sum(), float(lay.n_rows)) / accum
    elif mode == "bnpo":
        result = total / torch.clamp(n_valid, min=1.0) / accum
    elif mode == "dr_grpo":
        if completion is None:
            raise ValueError("max_completion_length: required for mode 'dr_grpo'")
        result = _safe_div(total, lay.n_rows * completion) / accum
    else:  # "dapo"
        den = n_valid / processes if items is None else _scalar_t(items / processes, x.device)
        result = _safe_div(total, den)
    return result.to(out)


# ---------------------------------------------------------------------------------------------
# §2 PPO/GRPO pieces
# ---------------------------------------------------------------------------------------------


def ppo_loss(
    logprob: torch.Tensor,
    old_logprob: Any,
    advantages: Any,
    mask: Any,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    clip_c: float | None = None,
    log_ratio_clamp: float | None = 20.0,
    cu_seqlens: Any = None,
) -> PPOTerms:
    """Clipped PPO surrogate per token (``rollout.md`` §2), differentiable in ``logprob``.

    ``Δ = clamp(ℓ − ℓ^old, ±log_ratio_clamp)``, ``r = exp(Δ)``, ``l1 = −A r``,
    ``l2 = −A clip(r, 1 − ε_low, 1 + ε_high)``, ``l = max(l1, l2)``; dual clip (``clip_c > 1``):
    ``l = min(l, −A·clip_c)`` where ``A < 0``. ``clipped = (l2 > l1) ∧ M``, ``clipfrac``,
    ``clipfrac_lower``, ``ppo_kl = mean_M(−Δ)``. Reduce ``loss`` with :func:`agg_loss`.

    Schulman et al., arXiv 1707.06347; verl ``core_algos.py :: compute_policy_loss_vanilla``.
    """
    lp_t = _float_tensor("logprob", logprob)
    lay = _layout("logprob", lp_t, mask, cu_seqlens)
    lp = lay.floats("logprob", lp_t, grad=True)
    old = lay.floats("old_logprob", old_logprob)
    adv = lay.floats("advantages", advantages)
    eps_low, eps_high = _clip_bounds(clip_low, clip_high)
    dual = None if clip_c is None else _real("clip_c", clip_c, low=1.0, low_open=True)
    clamp = None if log_ratio_clamp is None else _real("log_ratio_clamp", log_ratio_clamp, low=0.0)
    valid = lay.valid
    out = _out_dtype(lp_t)

    delta = lp - old
    if clamp is not None:
        delta = torch.clamp(delta, -clamp, clamp)
    delta = torch.where(valid, delta, 0.0)
    ratio = torch.exp(delta)
    l1, l2 = _pg_terms(adv, ratio, eps_low, eps_high)
    clipped = (l2 > l1) & valid
    per_token = torch.maximum(l1, l2)
    lower = torch.zeros_like(valid)
    if dual is not None:
        cap = -adv * dual
        lower = (adv < 0) & (per_token > cap) & valid
        per_token = torch.where(adv < 0, torch.minimum(per_token, cap), per_token)
    per_token = torch.where(valid, per_token, 0.0)
    return PPOTerms(
        loss=lay.tokens(per_token, out),
        ratio=lay.tokens(torch.where(valid, ratio, 0.0), out),
        clipped=lay.tokens(clipped),
        clipfrac=_masked_mean(clipped.to(_F64), valid),
        clipfrac_lower=_masked_mean(lower.to(_F64), valid),
        ppo_kl=_masked_mean(-delta, valid),
    )


def group_advantages(
    rewards: torch.Tensor, group: Any, *, scale: str = "group", eps: float = 1e-6
) -> torch.Tensor:
    """GRPO outcome advantages (``rollout.md`` §2) → ``(B,)`` float32 (float64).

    ``"group"``: ``(R_i − μ_g)/(σ_g + eps)``; ``"batch"``: ``σ`` of the whole batch (TRL);
    ``"none"``: ``R_i − μ_g`` (Dr.GRPO). ``σ`` unbiased (ddof 1); singleton group ``μ = 0``,
    ``σ = 1`` (verl). The mean is ``x_0 + Σ(x_i − x_0)/n``: a constant group gives exactly 0.

    Shao et al., *DeepSeekMath*, arXiv 2402.03300; verl ``compute_grpo_outcome_advantage``.
    """
    r_t = _float_tensor("rewards", rewards)
    device = r_t.device
    r = _float_vector("rewards", r_t, device)
    n = r.shape[0]
    g, n_groups = _group_ids("group", group, n, device)
    scale = choice("scale", scale, ("group", "batch", "none"))
    eps = _real("eps", eps, low=0.0)
    out = _out_dtype(r_t)
    if n == 0:
        return torch.zeros(0, dtype=out, device=device)
    rows = torch.arange(n, dtype=torch.int64, device=device)
    first = torch.full((n_groups,), n, dtype=torch.int64, device=device)
    first = first.scatter_reduce(0, g, rows, reduce="amin")
    counts = torch.bincount(g, minlength=n_groups)
    countf = counts.to(_F64)
    x0 = r[first]
    mu = x0 + _unit_sum(r - x0[g], g, n_groups) / countf
    squares = _unit_sum((r - mu[g]) ** 2, g, n_groups)
    single = counts == 1
    sigma = torch.sqrt(squares / torch.where(single, 1.0, countf - 1.0))
    mu = torch.where(single, 0.0, mu)
    sigma = torch.where(single, 1.0, sigma)
    if scale == "group":
        adv = (r - mu[g]) / (sigma[g] + eps)
    elif scale == "batch":
        batch_sigma = torch.ones((), dtype=_F64, device=device)
        if n > 1:
            batch_mu = r[0] + (r - r[0]).sum() / n
            batch_sigma = torch.sqrt(((r - batch_mu) ** 2).sum() / (n - 1))
        adv = (r - mu[g]) / (batch_sigma + eps)
    else:
        adv = r - mu[g]
    return adv.to(out)


def pass_at_k(n: Any, c: Any, k: Any) -> torch.Tensor:
    """Unbiased pass@k ``1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i)`` (``rollout.md``
    §2), float64, vectorised over broadcast integer ``n``, ``c``, ``k``; 1 when ``n − c < k``.

    Chen et al., *Evaluating LLMs Trained on Code*, arXiv 2107.03374. A 0-dim tensor for scalars.
    """
    device = _device_of(n, c, k)
    n_t, c_t, k_t = (
        _as_int(name, x, None).to(device) for name, x in (("n", n), ("c", c), ("k", k))
    )
    try:
        n_b, c_b, k_b = torch.broadcast_tensors(n_t, c_t, k_t)
    except RuntimeError:
        raise ValueError(
            f"n, c, k: shapes {tuple(n_t.shape)}, {tuple(c_t.shape)}, {tuple(k_t.shape)} do not "
            "broadcast"
        ) from None
    if bool(((c_b < 0) | (c_b > n_b)).any()):
        raise ValueError("c: expected 0 <= c <= n")
    if bool(((k_b < 1) | (k_b > n_b)).any()):
        raise ValueError("k: expected 1 <= k <= n")
    longest = int(c_b.max()) if c_b.numel() else 0
    j = torch.arange(longest, dtype=torch.int64, device=device)
    i = (n_b - c_b + 1).unsqueeze(-1) + j
    factors = 1.0 - k_b.unsqueeze(-1).to(_F64) / i.to(_F64)
    factors = torch.where(j < c_b.unsqueeze(-1), factors, 1.0)
    product = factors.prod(dim=-1)
    return torch.where(n_b - c_b < k_b, 1.0, 1.0 - product)


# ---------------------------------------------------------------------------------------------
# §3 Forking-token (top-ρ) mask
# ---------------------------------------------------------------------------------------------


def high_entropy_mask(
    entropy: torch.Tensor,
    mask: Any,
    *,
    rho: float = 0.2,
    method: str = "linear",
    cu_seqlens: Any = None,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    process_group: Any = None,
    nan_policy: str = "raise",
    return_threshold: bool = False,
) -> Any:
    """Forking-token mask: the top-``ρ`` entropy tokens of each unit (``rollout.md`` §3).

    With the unit's valid fp32 entropies ``x_(0) ≤ … ≤ x_(N−1)`` and ``h = (N − 1)(1 − ρ)``
    (snapped to an integer within ``2⁻³⁰·max(1, h)``): ``"linear"`` keeps ``H ≥ x_(⌈h⌉)`` (the
    set ``H ≥ τ`` of TRL's ``torch.quantile``), ``τ = x_(⌊h⌋) + (h − ⌊h⌋)(x_(⌈h⌉) − x_(⌊h⌋))``;
    ``"lower"`` ``H ≥ x_(⌊h⌋)``; ``"nearest"`` index ``round_half_even(h)``; ``"higher"``,
    ``"midpoint"`` the linear set; ``"topk"`` exactly ``⌈ρN⌉`` largest, ties by lower index.
    Empty unit → all False, ``τ = NaN``. Unit-based; ``nan_policy`` ``"raise"``, ``"omit"``,
    ``"propagate"`` (a unit with a NaN selects nothing).

    Exact for any ``N`` (no ``torch.quantile``, which refuses more than 2²⁴ elements): CPU tensors
    go through the Rust core's O(N) radix select (``entcore.high_entropy_mask``, zero-copy view);
    other devices sort the units' order-preserving integer keys ``unit · 2³² + uint32(x)`` once.
    Returns the bool mask in the input layout and, with ``return_threshold=True``, ``τ`` per unit
    (float64 ``(U,)``).

    ``process_group`` (§3): units span the group's ranks; the exact global order statistics come
    from a radix select whose 2¹⁶-bin digit histograms (two 16-bit rounds) are all-reduced, on
    any device, values never gathered; ranks may hold any number of tokens. Rounds: one
    ``all_gather`` of row counts (two with ``micro_batch`` ids), one ``all_reduce`` of unit
    counts, two of histograms, and for ``"topk"`` one ``all_gather`` of tie counts (ties by lower
    global flat index). ``nan_policy="raise"`` raises on every rank when any rank holds a NaN.

    Wang et al., *Beyond the 80/20 Rule*, arXiv 2506.01939 §5.1; TRL
    ``GRPOTrainer.get_high_entropy_mask``.
    """
    rho = _real("rho", rho, low=0.0, high=1.0)
    method = choice("method", method, QUANTILE_METHODS)
    nan_policy = choice("nan_policy", nan_policy, HIGH_ENTROPY_NAN_POLICIES)
    x = _float_tensor("entropy", entropy)
    if process_group is not None:
        out, tau = _high_entropy_mask_distributed(
            x, mask, rho, method, cu_seqlens, scope, micro_batch, nan_policy, process_group
        )
        return (out, tau) if return_threshold else out
    if x.device.type == "cpu" and method in _CORE_METHODS:
        return _high_entropy_mask_core(
            x, mask, rho, method, cu_seqlens, scope, micro_batch, nan_policy, return_threshold
        )
    return _high_entropy_mask_sorted(
        x, mask, rho, method, cu_seqlens, scope, micro_batch, nan_policy, return_threshold
    )


def _numpy_view(x: torch.Tensor) -> np.ndarray:
    """A NumPy array over the memory of the CPU tensor ``x`` (bfloat16 via its 16-bit pattern)."""
    x = x.detach().resolve_conj().resolve_neg()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()


def _high_entropy_mask_core(
    x: torch.Tensor,
    mask: Any,
    rho: float,
    method: str,
    cu_seqlens: Any,
    scope: str,
    micro_batch: Any,
    nan_policy: str,
    return_threshold: bool,
) -> Any:
    """CPU path: the Rust-backed NumPy face on zero-copy views of the tensors.

    The NaN policy is applied here (``"omit"`` folds NaN tokens into the mask, ``"propagate"``
    masks out every unit holding one), so the core only ever sees NaN at invalid positions.
    """
    from entcore import rollout as _np_rollout

    mask_t = None
    if mask is not None:
        mask_t = _as_bool("mask", mask, x.device)
        if tuple(mask_t.shape) != tuple(x.shape):
            raise ValueError(
                f"mask: expected shape {tuple(x.shape)} (as entropy), got {tuple(mask_t.shape)}"
            )
    cu = None
    if cu_seqlens is not None:
        if x.ndim != 1:
            raise ValueError(
                f"entropy: expected a packed (N,) tensor with cu_seqlens, got shape "
                f"{tuple(x.shape)}"
            )
        cu = _host_cu_seqlens(cu_seqlens, x.shape[0])
        n_rows = cu.shape[0] - 1
    elif x.ndim != 2:
        raise ValueError(
            f"entropy: expected a padded (B, L) tensor (or (N,) with cu_seqlens), got shape "
            f"{tuple(x.shape)}"
        )
    else:
        n_rows = x.shape[0]
    if n_rows == 0:  # no rows, no units
        return _high_entropy_mask_sorted(
            x, mask, rho, method, cu_seqlens, scope, micro_batch, nan_policy, return_threshold
        )
    nan = torch.isnan(x.detach())
    if bool(nan.any()):
        nan = nan if mask_t is None else nan & mask_t
        if bool(nan.any()):
            if nan_policy == "raise":
                raise ValueError(
                    "entropy: contains NaN at a valid position (nan_policy='raise'); pass "
                    "nan_policy='omit' or 'propagate'"
                )
            keep = ~nan
            if nan_policy == "propagate":
                row_unit, n_units = _units(scope, micro_batch, n_rows, x.device)
                if cu is None:
                    nan_rows = nan.any(dim=1)
                else:
                    token_row = torch.repeat_interleave(
                        torch.arange(n_rows), torch.as_tensor(np.diff(cu))
                    )
                    nan_rows = torch.zeros(n_rows, dtype=torch.bool)
                    nan_rows[token_row[nan]] = True
                poisoned = _unit_sum(nan_rows.to(torch.int64), row_unit, n_units) > 0
                dropped = poisoned[row_unit]
                keep = ~(dropped[:, None] if cu is None else dropped[token_row])
                keep = keep.expand(x.shape)
            mask_t = keep if mask_t is None else mask_t & keep
    if isinstance(micro_batch, torch.Tensor):
        micro_batch = (
            micro_batch.item()
            if micro_batch.ndim == 0
            else _as_int("micro_batch", micro_batch, None).cpu().numpy()
        )
    selected, tau = _np_rollout.high_entropy_mask(
        _numpy_view(x),
        None if mask_t is None else mask_t.numpy(),
        rho=rho,
        method=method,
        cu_seqlens=cu,
        scope=scope,
        micro_batch=micro_batch,
        nan_policy="raise",  # NaN at valid positions is handled above
        return_threshold=True,
    )
    out = torch.from_numpy(np.ascontiguousarray(selected, dtype=np.bool_))
    if return_threshold:
        return out, torch.from_numpy(np.array(tau, dtype=np.float64))
    return out


def _float_keys(v: torch.Tensor) -> torch.Tensor:
    """The order-preserving uint32 image of float32 values, as int64 (``-0.0`` → ``+0.0``)."""
    bits = (v + 0.0).view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits + 2**31, -1 - bits)


def _float_values(keys: torch.Tensor) -> torch.Tensor:
    """The float32 values of :func:`_float_keys` images."""
    bits = torch.where(keys >= 2**31, keys - 2**31, -1 - keys)
    return bits.to(torch.int32).view(torch.float32)


def _float64_keys(v: torch.Tensor) -> torch.Tensor:
    """An order-preserving int64 image of float64 values, in signed order (``-0.0`` → ``+0.0``)."""
    bits = (v + 0.0).view(torch.int64)
    return torch.where(bits >= 0, bits, bits ^ (2**63 - 1))


def _high_entropy_mask_sorted(
    x: torch.Tensor,
    mask: Any,
    rho: float,
    method: str,
    cu_seqlens: Any,
    scope: str,
    micro_batch: Any,
    nan_policy: str,
    return_threshold: bool,
) -> Any:
    """Device path: one sort of int64 keys ``unit · 2³² + uint32(x)`` (invalid cells last).

    Any ``N``, exact: the order statistics are read at ``offset_u + ⌊h⌋``, ``offset_u + ⌈h⌉`` of
    the sorted keys and the selection is a comparison with the fp32 cut value; ``"topk"`` sorts
    ``unit · 2³² + (2³² − 1 − uint32(x))`` stably (descending, ties by lower flat index).
    """
    lay = _layout("entropy", x, mask, cu_seqlens)
    device = lay.device
    g = lay.grid("entropy", x.detach()).to(torch.float32)
    nan_cells = torch.isnan(g) & lay.valid
    has_nan = bool(nan_cells.any())
    if has_nan and nan_policy == "raise":
        raise ValueError(
            "entropy: contains NaN at a valid position (nan_policy='raise'); pass "
            "nan_policy='omit' or 'propagate'"
        )
    n_rows, width = lay.n_rows, lay.width
    row_unit, n_units = _units(scope, micro_batch, n_rows, device)
    valid = lay.valid & ~nan_cells if has_nan else lay.valid
    if has_nan and nan_policy == "propagate":
        poisoned = _unit_sum(nan_cells.any(dim=1).to(torch.int64), row_unit, n_units) > 0
        valid = valid & ~poisoned[row_unit][:, None]

    g = torch.where(valid, g, 0.0) + 0.0  # -0.0 → +0.0; invalid cells are never compared
    counts = _unit_sum(valid.sum(dim=1), row_unit, n_units)
    offsets = torch.cumsum(counts, 0) - counts
    n = counts.to(_F64)
    nonempty = counts > 0
    tau = torch.full((n_units,), math.nan, dtype=_F64, device=device)
    selected = torch.zeros((n_rows, width), dtype=torch.bool, device=device)
    cells = n_rows * width
    if cells and n_units:
        values = g.reshape(-1)
        image = _float_keys(values)
        if method == "topk":
            image = (_TWO32 - 1) - image
        if n_units > 1:
            image = image + (row_unit * _TWO32)[:, None].expand(n_rows, width).reshape(-1)
        keys = torch.where(valid.reshape(-1), image, n_units * _TWO32)
        sorted_keys, order = torch.sort(keys, stable=method == "topk")
        if method == "topk":
            k = torch.ceil(_snap(rho * n)).to(torch.int64)
            unit_sorted = torch.clamp(sorted_keys // _TWO32, max=n_units - 1)
            rank = torch.arange(cells, dtype=torch.int64, device=device) - offsets[unit_sorted]
            keep_sorted = (rank < k[unit_sorted]) & (sorted_keys < n_units * _TWO32)
            keep = torch.empty(cells, dtype=torch.bool, device=device)
            keep[order] = keep_sorted
            selected = keep.reshape(n_rows, width)
            last = (offsets + k - 1).clamp(0, cells - 1)
            tau = torch.where(nonempty & (k > 0), values[order[last]].to(_F64), math.nan)
        else:

            def statistic(position: torch.Tensor) -> torch.Tensor:
                at = (offsets + position.clamp(min=0).to(torch.int64)).clamp(0, cells - 1)
                return values[order[at]].to(_F64)

            h = _snap((n - 1.0) * (1.0 - rho))
            tau, cut = _quantile_cut(method, h, statistic(torch.floor(h)), statistic(torch.ceil(h)))
            tau = torch.where(nonempty, tau, math.nan)
            cut32 = cut.to(torch.float32)  # an fp32 value exactly: the comparison is exact
            selected = valid & (g >= cut32[row_unit][:, None])
    out = lay.tokens(selected & valid)
    return (out, tau) if return_threshold else out


def _quantile_cut(
    method: str, h: torch.Tensor, x_lo: torch.Tensor, x_hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(τ, cut)`` per unit from ``x_(⌊h⌋)`` and ``x_(⌈h⌉)`` (§3); selected ``= H ≥ cut``."""
    lo, hi = torch.floor(h), torch.ceil(h)
    if method == "linear":
        return torch.where(lo == hi, x_lo, x_lo + (h - lo) * (x_hi - x_lo)), x_hi
    if method == "lower":
        return x_lo, x_lo
    if method == "higher":
        return x_hi, x_hi
    if method == "midpoint":
        return torch.where(lo == hi, x_lo, (x_lo + x_hi) / 2.0), x_hi
    # "nearest": round half to even (torch.quantile, numpy); round(h) is ⌊h⌋ or ⌈h⌉
    nearest = torch.where(torch.round(h) == lo, x_lo, x_hi)
    return nearest, nearest


def _high_entropy_mask_distributed(
    x: torch.Tensor,
    mask: Any,
    rho: float,
    method: str,
    cu_seqlens: Any,
    scope: str,
    micro_batch: Any,
    nan_policy: str,
    group: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``process_group`` path (§3): ``(mask, τ)``, the single-process result on the ranks'
    concatenated rows, by all-reduced radix selects (:mod:`entcore.torch._distributed`)."""
    lay = _layout("entropy", x, mask, cu_seqlens)
    g = lay.grid("entropy", x.detach()).to(torch.float32)
    nan_cells = torch.isnan(g) & lay.valid
    nan_raise = nan_policy == "raise" and bool(nan_cells.any())
    row_unit, n_units, units = _call_units(scope, micro_batch, lay, group, int(nan_raise))
    assert units is not None
    if any(units.rows.flags):
        ranks = [r for r, flag in enumerate(units.rows.flags) if flag]
        raise ValueError(
            f"entropy: contains NaN at a valid position on rank(s) {ranks} of process_group "
            "(nan_policy='raise'); pass nan_policy='omit' or 'propagate'"
        )
    valid = lay.valid & ~nan_cells
    local = torch.stack(
        [
            _unit_sum(valid.sum(dim=1), row_unit, n_units),
            _unit_sum(nan_cells.sum(dim=1), row_unit, n_units),
        ]
    )
    counts, nans = _distributed.all_reduce_sum(group, local)
    if nan_policy == "propagate":
        poisoned = nans > 0
        valid = valid & ~poisoned[row_unit][:, None]
        counts = torch.where(poisoned, 0, counts)
    g = torch.where(valid, g, 0.0) + 0.0  # -0.0 → +0.0; invalid cells are never compared
    cell_unit = row_unit[:, None].expand(lay.n_rows, lay.width)
    keys = _float_keys(g[valid])
    unit = cell_unit[valid]
    n = counts.to(_F64)
    if method == "topk":
        k = torch.ceil(_snap(rho * n)).to(torch.int64)
        keep, cut_key = _distributed.top_k(group, keys, unit, n_units, k, counts, 32)
        selected = torch.zeros(valid.shape, dtype=torch.bool, device=lay.device)
        selected[valid] = keep
        cut_value = _float_values(cut_key).to(_F64)
        tau = torch.where((counts > 0) & (k > 0), cut_value, math.nan)
    else:
        h = _snap((n - 1.0) * (1.0 - rho))
        positions = torch.stack([torch.floor(h), torch.ceil(h)], dim=1).clamp(min=0.0)
        found, _, _ = _distributed.radix_select(
            group, keys, unit, n_units, positions.to(torch.int64), 32
        )
        stats = _float_values(found).to(_F64)
        tau, cut = _quantile_cut(method, h, stats[:, 0], stats[:, 1])
        tau = torch.where(counts > 0, tau, math.nan)
        cut32 = cut.to(torch.float32)  # an fp32 value exactly: the comparison is exact
        selected = valid & (g >= cut32[row_unit][:, None])
    return lay.tokens(selected & valid), tau


def forking_token_loss(
    loss: torch.Tensor,
    mask: Any,
    selected: Any,
    *,
    normalize: str = "selected",
    num_tokens: Any = None,
    dp_size: int = 1,
    cu_seqlens: Any = None,
) -> torch.Tensor:
    """Policy loss on the forking tokens (``rollout.md`` §3), a differentiable scalar.

    ``"selected"`` (the paper's Eq. 6): ``Σ L·sel / Σ sel``; ``"all_valid"`` (TRL):
    ``Σ L·sel / Σ M``; ``num_tokens`` replaces the denominator; ``· dp_size``; zero
    denominator → 0. Wang et al., arXiv 2506.01939 §5.1; TRL ``GRPOTrainer._compute_loss``.
    """
    normalize = choice("normalize", normalize, ("selected", "all_valid"))
    x = _float_tensor("loss", loss)
    lay = _layout("loss", x, mask, cu_seqlens)
    values = lay.floats("loss", x, grad=True)
    sel = lay.bools("selected", selected)
    dp = _integer("dp_size", dp_size, low=1)
    tokens = _nonneg("num_tokens", num_tokens)
    numerator = torch.where(sel, values, 0.0).sum()
    if tokens is not None:
        den: Any = tokens
    elif normalize == "selected":
        den = sel.sum().to(_F64)
    else:
        den = lay.valid.sum().to(_F64)
    return (_safe_div(numerator, den) * dp).to(_out_dtype(x))


# ---------------------------------------------------------------------------------------------
# §4 Entropy distribution summaries
# ---------------------------------------------------------------------------------------------


def entropy_summary(
    entropy: torch.Tensor,
    mask: Any,
    *,
    cu_seqlens: Any = None,
    percentiles: Any = (1, 5, 10, 25, 50, 75, 90, 95, 99),
    low: float = 0.01,
    high: float = 0.672,
) -> dict[str, torch.Tensor]:
    """Distribution of the valid token entropies (``rollout.md`` §4), float64 0-dim tensors.

    Keys ``count`` (int64), ``mean``, ``seq_mean`` (mean of the non-empty rows' means), ``std``
    (population), ``min``, ``max``, ``percentiles`` (float64 ``(Q,)``, linear at ``(N−1)·q/100``),
    ``frac_low = #{H < low}/N``, ``frac_high = #{H > high}/N`` (strict). Empty: count 0, NaN.
    Wang et al., arXiv 2506.01939 §3.
    """
    x_t = _float_tensor("entropy", entropy)
    lay = _layout("entropy", x_t, mask, cu_seqlens)
    h = lay.floats("entropy", x_t)
    device = lay.device
    if isinstance(percentiles, torch.Tensor):
        percentiles = percentiles.detach().cpu().numpy()
    try:
        qs_np = np.asarray(percentiles, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"percentiles: expected a sequence of numbers, got {percentiles!r}"
        ) from err
    if qs_np.ndim != 1 or np.any(np.isnan(qs_np)) or np.any((qs_np < 0) | (qs_np > 100)):
        raise ValueError(f"percentiles: expected a 1-D sequence of values in [0, 100], got {qs_np}")
    low = _real("low", low)
    high = _real("high", high)
    qs = torch.as_tensor(qs_np, device=device)
    x = h[lay.valid]
    n = x.shape[0]

    def scalar(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=_F64, device=device)

    if n == 0:
        nan = scalar(math.nan)
        return {
            "count": torch.tensor(0, dtype=torch.int64, device=device),
            "mean": nan,
            "seq_mean": nan.clone(),
            "std": nan.clone(),
            "min": nan.clone(),
            "max": nan.clone(),
            "percentiles": torch.full(qs.shape, math.nan, dtype=_F64, device=device),
            "frac_low": nan.clone(),
            "frac_high": nan.clone(),
        }
    mean = x.sum() / n
    row_counts = lay.valid.sum(dim=1)
    nonempty = row_counts > 0
    row_means = h.sum(dim=1)[nonempty] / row_counts[nonempty].to(_F64)
    ordered = torch.sort(x).values
    quantiles = _sorted_quantile(ordered[None, :], torch.tensor([n], device=device), qs / 100.0)[0]
    return {
        "count": torch.tensor(n, dtype=torch.int64, device=device),
        "mean": mean,
        "seq_mean": row_means.sum() / row_means.shape[0],
        "std": torch.sqrt(((x - mean) ** 2).sum() / n),
        "min": ordered[0],
        "max": ordered[-1],
        "percentiles": quantiles,
        "frac_low": (x < low).sum().to(_F64) / n,
        "frac_high": (x > high).sum().to(_F64) / n,
    }


def entropy_position_curve(
    entropy: torch.Tensor,
    mask: Any,
    *,
    cu_seqlens: Any = None,
    max_len: Any = None,
    bins: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean entropy by response position (``rollout.md`` §4) → ``(mean float64, count int64)``.

    Absolute positions ``t < max_len`` (default: longest row), averaged over the rows valid at
    ``t``; with ``bins=K``, bin ``⌊K t / len_b⌋`` of the relative position (``len_b`` = last valid
    position + 1), token-weighted. Empty bin: count 0, mean NaN. arXiv 2506.01939 §3, Eq. 5.
    """
    x_t = _float_tensor("entropy", entropy)
    lay = _layout("entropy", x_t, mask, cu_seqlens)
    h = lay.floats("entropy", x_t)
    valid = lay.valid
    device = lay.device
    positions = lay.positions()
    if lay.width:
        last = torch.where(valid, positions, -1).amax(dim=1)
    else:
        last = torch.full((lay.n_rows,), -1, dtype=torch.int64, device=device)
    lengths = last + 1
    if bins is None:
        if max_len is None:
            width = int(lengths.max()) if lay.n_rows else 0
        else:
            width = _integer("max_len", max_len, low=0)
        sums = torch.zeros(width, dtype=_F64, device=device)
        counts = torch.zeros(width, dtype=torch.int64, device=device)
        usable = min(width, lay.width)
        sums[:usable] = h.sum(dim=0)[:usable]
        counts[:usable] = valid.sum(dim=0)[:usable]
    else:
        k = _integer("bins", bins, low=1)
        row_length = lengths[:, None].expand_as(positions)
        index = (k * positions[valid]) // row_length[valid]
        sums = torch.zeros(k, dtype=_F64, device=device).index_add(0, index, h[valid])
        counts = torch.bincount(index, minlength=k)[:k]
    mean = torch.where(counts > 0, sums / counts.clamp(min=1).to(_F64), math.nan)
    return mean, counts


# ---------------------------------------------------------------------------------------------
# §5 Covariance, Clip-Cov, KL-Cov
# ---------------------------------------------------------------------------------------------


def _centered_cov_grid(
    adv: torch.Tensor,
    lp: torch.Tensor,
    valid: torch.Tensor,
    row_unit: torch.Tensor,
    n_units: int,
    units: _GlobalUnits | None = None,
) -> torch.Tensor:
    """``c = (A − Ā)(ℓ − ℓ̄)`` on the grid, unit means over valid cells (of all ranks with
    ``units``), 0 elsewhere."""
    if units is None:
        a_bar = _unit_means(adv, valid, row_unit, n_units)
        l_bar = _unit_means(lp, valid, row_unit, n_units)
    else:
        a_bar, l_bar = _global_unit_means((adv, lp), valid, units)
    return torch.where(
        valid, (adv - a_bar[row_unit][:, None]) * (lp - l_bar[row_unit][:, None]), 0.0
    )


def centered_cov(
    advantages: torch.Tensor,
    logprob: Any,
    mask: Any,
    *,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    process_group: Any = None,
    cu_seqlens: Any = None,
) -> torch.Tensor:
    """Centred token covariance ``c_t = (A_t − Ā)(ℓ_t − ℓ̄)`` (``rollout.md`` §5), no gradient.

    ``Ā``, ``ℓ̄``: token-weighted means over the unit's valid tokens. Unit-based. float32
    (float64) in the input layout, 0 off-mask. ``process_group``: units span the ranks, the means
    computed as one process computes them on the concatenated rows (a few numbers per row
    gathered in two rounds after the row-count round). Cui et al., *The Entropy Mechanism of RL for
    Reasoning LMs*, arXiv 2505.22617; verl ``compute_policy_loss_clip_cov``/``_kl_cov``.
    """
    adv_t = _float_tensor("advantages", advantages)
    lay = _layout("advantages", adv_t, mask, cu_seqlens)
    adv = lay.floats("advantages", adv_t)
    lp = lay.floats("logprob", logprob)
    row_unit, n_units, units = _call_units(scope, micro_batch, lay, process_group)
    cov = _centered_cov_grid(adv, lp, lay.valid, row_unit, n_units, units)
    return lay.tokens(cov, _out_dtype(adv_t, logprob))


def _unit_perms(perm: Any, n_units: int) -> list[Any]:
    """``perm`` as one entry per unit: a 1-D array or tensor is the single unit's."""
    if isinstance(perm, (np.ndarray, torch.Tensor)) and perm.ndim == 1:
        per_unit = [perm]
    elif isinstance(perm, (list, tuple)) and perm and all(np.ndim(p) == 0 for p in perm):
        per_unit = [np.asarray(perm)]
    else:
        try:
            per_unit = list(perm)
        except TypeError as err:
            raise TypeError(
                f"perm: expected one permutation array per unit, got {type(perm).__name__}"
            ) from err
    if len(per_unit) != n_units:
        raise ValueError(
            f"perm: expected one permutation per unit ({n_units}), got {len(per_unit)}"
        )
    return per_unit


def _check_perm(perm: Any, n_candidates: int, unit: int) -> np.ndarray:
    if isinstance(perm, torch.Tensor):
        perm = _as_int("perm", perm, None).cpu().numpy()
    pi = np.asarray(perm)
    if pi.dtype.kind not in "iu":
        raise TypeError(f"perm: expected integer permutations, got dtype {pi.dtype}")
    pi = pi.astype(np.int64)
    if (
        pi.ndim != 1
        or pi.shape[0] != n_candidates
        or not np.array_equal(np.sort(pi), np.arange(n_candidates))
    ):
        raise ValueError(
            f"perm: unit {unit} expects a permutation of range({n_candidates}) (its candidate "
            f"count), got an array of shape {pi.shape}"
        )
    return pi


def clip_cov_select(
    advantages: torch.Tensor,
    logprob: Any,
    old_logprob: Any,
    mask: Any,
    *,
    ratio: float = 2e-4,
    lb: float = 1.0,
    ub: float = 5.0,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    seed: Any = None,
    perm: Any = None,
    generator: torch.Generator | None = None,
    return_candidates: bool = False,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    process_group: Any = None,
    cu_seqlens: Any = None,
) -> Any:
    """Clip-Cov token selection (``rollout.md`` §5), a bool mask without gradient.

    Per unit: candidates ``M ∧ ¬ppo_clipped ∧ lb < c < ub`` (strict, flat order; ``r =
    exp(ℓ − ℓ^old)`` unclamped), quota ``n = max(⌊ratio · N_valid⌋, 1)``; selected =
    ``candidates[π[:min(n, #cand)]]`` with ``π`` = ``perm`` (one per unit), else
    ``numpy.random.default_rng(seed).permutation(#cand)`` (one generator, units with candidates
    in increasing id: the same mask as every face), else ``torch.randperm(#cand,
    generator=generator)`` (``generator=torch.default_generator`` in verl's RNG state reproduces
    verl bit for bit). ``return_candidates=True`` → ``(selected, candidates)``.

    ``process_group``: units span the ranks; candidates are numbered in the global flat order
    (rank-major), ``N_valid`` and ``#cand`` are global, so ``π`` is the single-process draw:
    ``perm`` must be the same on every rank, as must ``seed``; with ``generator`` every rank
    draws (generators advance as in one process) and the group's rank 0 draw is broadcast.
    Rounds: those of :func:`centered_cov`, one ``all_gather`` of the per-unit candidate and
    token counts, and with ``generator`` one ``broadcast`` of the chosen indices.

    Cui et al., arXiv 2505.22617; verl ``core_algos.py :: compute_policy_loss_clip_cov``.
    """
    if seed is None and perm is None and generator is None:
        raise ValueError("seed: Clip-Cov selection is random; pass seed, perm or generator")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    ratio = _real("ratio", ratio, low=0.0, high=1.0)
    lb = _real("lb", lb)
    ub = _real("ub", ub)
    eps_low, eps_high = _clip_bounds(clip_low, clip_high)
    adv_t = _float_tensor("advantages", advantages)
    lay = _layout("advantages", adv_t, mask, cu_seqlens)
    device = lay.device
    adv = lay.floats("advantages", adv_t)
    lp = lay.floats("logprob", logprob)
    old = lay.floats("old_logprob", old_logprob)
    row_unit, n_units, units = _call_units(scope, micro_batch, lay, process_group)
    valid = lay.valid

    ratio_t = torch.exp(torch.where(valid, lp - old, 0.0))
    l1, l2 = _pg_terms(adv, ratio_t, eps_low, eps_high)
    ppo_clipped = (l2 > l1) & valid
    cov = _centered_cov_grid(adv, lp, valid, row_unit, n_units, units)
    candidates = valid & ~ppo_clipped & (lb < cov) & (cov < ub)

    cell_unit = row_unit[:, None].expand(lay.n_rows, lay.width).reshape(-1)
    cand_cells = torch.nonzero(candidates.reshape(-1)).reshape(-1)  # flat order
    cand_cells = cand_cells[torch.sort(cell_unit[cand_cells], stable=True).indices]
    n_cand = torch.bincount(cell_unit[cand_cells], minlength=n_units)[:n_units]
    n_valid = _unit_sum(valid.sum(dim=1), row_unit, n_units)
    first = (torch.cumsum(n_cand, 0) - n_cand).tolist()  # each unit's first in cand_cells
    if units is None:
        before = [0] * n_units
        chosen = _clip_cov_draws(
            n_cand.tolist(), n_valid.tolist(), ratio, perm, seed, generator, device
        )
    else:  # the unit's candidates on lower ranks come first in the global numbering
        lower, total = _distributed.exclusive_offsets(units.group, torch.cat([n_cand, n_valid]))
        before = lower[:n_units].tolist()
        chosen = _clip_cov_draws(
            total[:n_units].tolist(), total[n_units:].tolist(), ratio, perm, seed, generator, device
        )
        if perm is None and seed is None:  # generators may differ between ranks: rank 0 decides
            drawn = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), *chosen])
            shared = _distributed.broadcast_first(units.group, drawn)[1:]
            chosen = list(torch.split(shared, [c.shape[0] for c in chosen]))
    local_counts = n_cand.tolist()
    picks = [torch.zeros(0, dtype=torch.int64, device=device)]
    for u, pick in enumerate(chosen):
        mine = pick - before[u]  # the unit's candidates on this rank, in its flat order
        picks.append(first[u] + mine[(mine >= 0) & (mine < local_counts[u])])
    selected = torch.zeros(valid.numel(), dtype=torch.bool, device=device)
    selected[cand_cells[torch.cat(picks)]] = True
    out = lay.tokens(selected.reshape(valid.shape))
    return (out, lay.tokens(candidates)) if return_candidates else out


def _clip_cov_draws(
    n_cand: list[int],
    n_valid: list[int],
    ratio: float,
    perm: Any,
    seed: Any,
    generator: torch.Generator | None,
    device: torch.device,
) -> list[torch.Tensor]:
    """Step 4 of Clip-Cov (§5) per unit: ``π[:min(n, #cand)]``, indices into the unit's
    candidates in flat order, ``π`` from ``perm``, else ``seed`` (one generator, units with
    candidates in increasing id), else ``generator``; ``n = max(⌊ratio · N_valid⌋, 1)``."""
    perms = None if perm is None else _unit_perms(perm, len(n_cand))
    rng = np.random.default_rng(seed) if perms is None and seed is not None else None
    chosen = []
    for u, count in enumerate(n_cand):
        quota = max(math.floor(ratio * n_valid[u]), 1)
        if perms is not None:
            pi = torch.as_tensor(_check_perm(perms[u], count, u), device=device)
        elif count == 0:
            pi = torch.zeros(0, dtype=torch.int64, device=device)
        elif rng is not None:
            pi = torch.as_tensor(rng.permutation(count).astype(np.int64), device=device)
        else:
            assert generator is not None
            pi = torch.randperm(count, generator=generator, device=generator.device).to(device)
        chosen.append(pi[: min(quota, count)])
    return chosen


def clip_cov_loss(
    logprob: torch.Tensor,
    old_logprob: Any,
    advantages: Any,
    mask: Any,
    selected: Any,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    cu_seqlens: Any = None,
) -> PPOTerms:
    """Clip-Cov loss (``rollout.md`` §5): per token ``max(l1, l2) · (1 − selected)``.

    No dual clip, no ratio clamp; selected tokens get zero loss and zero gradient but stay in
    :func:`agg_loss`'s denominators. ``clipped = selected``, ``clipfrac = #selected / N_valid``
    (verl's ``pg_clipfrac``), ``clipfrac_lower = 0``, ``ppo_kl = mean_M(−Δ)``. Differentiable in
    ``logprob``. Cui et al., arXiv 2505.22617; verl ``compute_policy_loss_clip_cov``.
    """
    lp_t = _float_tensor("logprob", logprob)
    lay = _layout("logprob", lp_t, mask, cu_seqlens)
    lp = lay.floats("logprob", lp_t, grad=True)
    old = lay.floats("old_logprob", old_logprob)
    adv = lay.floats("advantages", advantages)
    sel = lay.bools("selected", selected)
    eps_low, eps_high = _clip_bounds(clip_low, clip_high)
    valid = lay.valid
    out = _out_dtype(lp_t)
    delta = torch.where(valid, lp - old, 0.0)
    ratio = torch.exp(delta)
    l1, l2 = _pg_terms(adv, ratio, eps_low, eps_high)
    per_token = torch.where(valid & ~sel, torch.maximum(l1, l2), 0.0)
    return PPOTerms(
        loss=lay.tokens(per_token, out),
        ratio=lay.tokens(torch.where(valid, ratio, 0.0), out),
        clipped=lay.tokens(sel),
        clipfrac=_masked_mean(sel.to(_F64), valid),
        clipfrac_lower=torch.zeros((), dtype=_F64, device=lay.device),
        ppo_kl=_masked_mean(-delta, valid),
    )


def kl_cov_select(
    advantages: torch.Tensor,
    logprob: Any,
    mask: Any,
    *,
    ratio: float = 2e-4,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    process_group: Any = None,
    cu_seqlens: Any = None,
) -> torch.Tensor:
    """KL-Cov token selection (``rollout.md`` §5): per unit the ``k = max(1, ⌊ratio ·
    N_valid⌋)`` valid tokens with the largest ``c`` (:func:`centered_cov`), ties by lower flat
    index (a stable sort, unlike ``torch.topk``); ``N_valid = 0`` → none. Unit-based.

    ``process_group``: units span the ranks, ``k`` and the ranking are global (ties by lower
    global flat index). Rounds: those of :func:`centered_cov`, one ``all_reduce`` of the unit
    counts, four of 2¹⁶-bin digit histograms (a radix select on the 64-bit key of ``c``) and one
    ``all_gather`` of tie counts; no value is gathered.

    Cui et al., arXiv 2505.22617; verl ``core_algos.py :: compute_policy_loss_kl_cov``.
    """
    ratio = _real("ratio", ratio, low=0.0, high=1.0)
    adv_t = _float_tensor("advantages", advantages)
    lay = _layout("advantages", adv_t, mask, cu_seqlens)
    device = lay.device
    adv = lay.floats("advantages", adv_t)
    lp = lay.floats("logprob", logprob)
    row_unit, n_units, units = _call_units(scope, micro_batch, lay, process_group)
    valid = lay.valid
    cov = _centered_cov_grid(adv, lp, valid, row_unit, n_units, units)
    cell_unit = row_unit[:, None].expand(lay.n_rows, lay.width)
    values = cov[valid]
    unit = cell_unit[valid]
    counts = torch.bincount(unit, minlength=n_units)[:n_units]
    if units is not None:
        counts = _distributed.all_reduce_sum(units.group, counts)
        k = torch.clamp(torch.floor(ratio * counts.to(_F64)), min=1.0).to(torch.int64)
        keys = _float64_keys(values)
        keep, _ = _distributed.top_k(units.group, keys, unit, n_units, k, counts, 64)
        selected = torch.zeros(valid.shape, dtype=torch.bool, device=device)
        selected[valid] = keep
        return lay.tokens(selected)
    offsets = torch.cumsum(counts, 0) - counts
    k = torch.clamp(torch.floor(ratio * counts.to(_F64)), min=1.0).to(torch.int64)
    order = _stable_sort_by(-values + 0.0, unit)  # by unit, then descending c, then index
    rank = torch.arange(values.shape[0], dtype=torch.int64, device=device) - offsets[unit[order]]
    keep = torch.zeros(values.shape, dtype=torch.bool, device=device)
    keep[order] = rank < k[unit[order]]
    selected = torch.zeros(valid.shape, dtype=torch.bool, device=device)
    selected[valid] = keep
    return lay.tokens(selected)


def kl_cov_loss(
    logprob: torch.Tensor,
    old_logprob: Any,
    advantages: Any,
    mask: Any,
    selected: Any,
    *,
    kl_coef: float = 1.0,
    cu_seqlens: Any = None,
) -> PPOTerms:
    """KL-Cov loss (``rollout.md`` §5): per token ``−A r + kl_coef · |ℓ − ℓ^old| · selected``.

    No clipping of any kind; ``clipped`` all False, ``clipfrac = clipfrac_lower = 0``, ``ppo_kl =
    mean_M |Δ|``. Differentiable in ``logprob``; on-policy (``old_logprob = logprob.detach()``)
    the penalty's gradient is exactly 0 (``d|x|/dx = 0`` at 0): plain unclipped PG.
    **Decision** (spec): ``kl_coef=1.0``. Cui et al., arXiv 2505.22617; verl
    ``compute_policy_loss_kl_cov``.
    """
    lp_t = _float_tensor("logprob", logprob)
    lay = _layout("logprob", lp_t, mask, cu_seqlens)
    lp = lay.floats("logprob", lp_t, grad=True)
    old = lay.floats("old_logprob", old_logprob)
    adv = lay.floats("advantages", advantages)
    sel = lay.bools("selected", selected)
    coef = _real("kl_coef", kl_coef)
    valid = lay.valid
    out = _out_dtype(lp_t)
    delta = torch.where(valid, lp - old, 0.0)
    ratio = torch.exp(delta)
    per_token = -adv * ratio + coef * torch.abs(delta) * sel.to(_F64)
    per_token = torch.where(valid, per_token, 0.0)
    zero = torch.zeros((), dtype=_F64, device=lay.device)
    return PPOTerms(
        loss=lay.tokens(per_token, out),
        ratio=lay.tokens(torch.where(valid, ratio, 0.0), out),
        clipped=lay.tokens(torch.zeros_like(valid)),
        clipfrac=zero,
        clipfrac_lower=zero.clone(),
        ppo_kl=_masked_mean(torch.abs(delta), valid),
    )


# ---------------------------------------------------------------------------------------------
# §6 STEER token weights
# ---------------------------------------------------------------------------------------------


def steer_weights(
    advantages: torch.Tensor,
    logprob: Any,
    old_logprob: Any,
    entropy: Any,
    mask: Any,
    *,
    mode: str = "exp",
    lam_min: float = 0.8,
    lam_max: float = 1.2,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    process_group: Any = None,
    cu_seqlens: Any = None,
) -> torch.Tensor:
    """STEER per-token weights (``rollout.md`` §6): float32 (float64), 0 off-mask, no gradient.

    ``Ω = (A / π_old) π (1 − π)(log π + H)`` with ``π = clamp(e^ℓ, 1e-8, 1 − 1e-8)``, ``π_old =
    clamp(e^ℓ_old, 1e-8, 1)``, non-finite → 0; unit ``M = max|Ω|``, ``μ = min|Ω|``. ``"exp"``:
    ``clamp(exp(−κ|Ω|), λ_min, 1)``, ``κ = −ln λ_min / max(M, 0.02)``; ``"linear"``:
    ``clamp(λ_max − (|Ω| − μ)(λ_max − λ_min)/(M − μ), λ_min, λ_max)`` (``M = μ``: the midpoint).
    Unit-based; ``process_group``: ``M`` and ``μ`` over the unit's tokens on all ranks (the row
    count round, plus one ``all_reduce`` of the extrema). arXiv 2510.10150; zz-haooo/STEER
    ``compute_token_weights``.
    """
    mode = choice("mode", mode, ("exp", "linear"))
    if mode == "exp":
        lam_lo = _real("lam_min", lam_min, low=0.0, high=1.0, low_open=True)
        lam_hi = 1.0
    else:
        lam_lo = _real("lam_min", lam_min)
        lam_hi = _real("lam_max", lam_max)
        if lam_lo > lam_hi:
            raise ValueError(f"lam_min: expected lam_min <= lam_max, got {lam_lo} > {lam_hi}")
    adv_t = _float_tensor("advantages", advantages)
    lay = _layout("advantages", adv_t, mask, cu_seqlens)
    device = lay.device
    adv = lay.floats("advantages", adv_t)
    lp = lay.floats("logprob", logprob)
    old = lay.floats("old_logprob", old_logprob)
    h = lay.floats("entropy", entropy)
    row_unit, n_units, units = _call_units(scope, micro_batch, lay, process_group)
    valid = lay.valid

    pi = torch.clamp(torch.exp(lp), 1e-8, 1.0 - 1e-8)
    pi_old = torch.clamp(torch.exp(old), 1e-8, 1.0)
    omega = (adv / pi_old) * pi * (1.0 - pi) * (torch.log(pi) + h)
    magnitude = torch.where(valid & torch.isfinite(omega), omega.abs(), 0.0)
    if lay.width == 0 and units is None:
        return lay.tokens(torch.zeros(valid.shape, dtype=_F64, device=device), _out_dtype(adv_t))
    no_cell = torch.full((lay.n_rows,), math.inf, dtype=_F64, device=device)
    row_max = torch.where(valid, magnitude, -math.inf).amax(dim=1) if lay.width else -no_cell
    row_min = torch.where(valid, magnitude, math.inf).amin(dim=1) if lay.width else no_cell
    big = torch.full((n_units,), -math.inf, dtype=_F64, device=device)
    big = big.scatter_reduce(0, row_unit, row_max, reduce="amax")
    small = torch.full((n_units,), math.inf, dtype=_F64, device=device)
    small = small.scatter_reduce(0, row_unit, row_min, reduce="amin")
    if units is not None:  # min = −max(−x): one all_reduce for both extrema
        both = _distributed.all_reduce_max(units.group, torch.cat([big, -small]))
        big, small = both[:n_units], -both[n_units:]
    big, small = big[row_unit][:, None], small[row_unit][:, None]
    if mode == "exp":
        kappa = -math.log(lam_lo) / torch.clamp(big, min=STEER_M_FLOOR)
        weights = torch.clamp(torch.exp(-kappa * magnitude), lam_lo, 1.0)
    else:
        spread = big - small
        flat = spread == 0
        slope = (lam_hi - lam_lo) / torch.where(flat, 1.0, spread)
        ramp = torch.clamp(lam_hi - (magnitude - small) * slope, lam_lo, lam_hi)
        weights = torch.where(flat, (lam_lo + lam_hi) / 2.0, ramp)
    weights = torch.where(valid, weights, 0.0)
    return lay.tokens(weights, _out_dtype(adv_t))


# ---------------------------------------------------------------------------------------------
# §7 CANON advantages
# ---------------------------------------------------------------------------------------------


def canon_advantages(
    rewards: torch.Tensor,
    seq_metric: Any,
    group: Any,
    *,
    lam: float = 1.0,
    alpha: float = 1.0,
    beta: float = 0.0,
    l_norm: float = 1.0,
    variant: str = "entropy",
) -> torch.Tensor:
    """CANON conditional advantages (``rollout.md`` §7) → ``(B,)`` float32 (float64).

    Per group: stable ascending sort by ``seq_metric``; ``C⁻`` = first ``⌊n/2⌋``, ``C⁺`` = rest,
    ``μ⁻``, ``μ⁺`` their mean rewards. ``"entropy"``: ``C⁺: [λ(R − α μ⁻ + β) + (1−λ)(R − μ⁺)]
    / l_norm``, ``C⁻: [λ(α R − μ⁺ − β) + (1−λ)(R − μ⁻)] / l_norm``; ``"length"`` moves ``α``
    to ``R`` in ``C⁺`` and to ``μ⁺`` in ``C⁻``. Singleton group: ``R / l_norm``.
    arXiv 2509.23962; biuboomc/CANON ``compute_dr_entropy_per_token_group_outcome_advantage``.
    """
    r_t = _float_tensor("rewards", rewards)
    device = r_t.device
    r = _float_vector("rewards", r_t, device)
    n = r.shape[0]
    metric = _float_vector("seq_metric", seq_metric, device, n)
    g, n_groups = _group_ids("group", group, n, device)
    lam = _real("lam", lam)
    alpha = _real("alpha", alpha)
    beta = _real("beta", beta)
    l_norm = _real("l_norm", l_norm, low=0.0, low_open=True)
    variant = choice("variant", variant, ("entropy", "length"))
    out = _out_dtype(r_t)
    if n == 0:
        return torch.zeros(0, dtype=out, device=device)
    counts = torch.bincount(g, minlength=n_groups)
    offsets = torch.cumsum(counts, 0) - counts
    order = _stable_sort_by(metric + 0.0, g)
    rank = torch.empty(n, dtype=torch.int64, device=device)
    rank[order] = torch.arange(n, dtype=torch.int64, device=device) - offsets[g[order]]
    half = counts // 2
    is_low = rank < half[g]
    n_low = half.to(_F64)
    n_high = (counts - half).to(_F64)
    mu_low = (_unit_sum(torch.where(is_low, r, 0.0), g, n_groups) / n_low.clamp(min=1.0))[g]
    mu_high = (_unit_sum(torch.where(is_low, 0.0, r), g, n_groups) / n_high)[g]
    if variant == "entropy":
        inter_high = r - alpha * mu_low + beta
        inter_low = alpha * r - mu_high - beta
    else:
        inter_high = alpha * r - mu_low + beta
        inter_low = r - alpha * mu_high - beta
    high_value = (lam * inter_high + (1.0 - lam) * (r - mu_high)) / l_norm
    low_value = (lam * inter_low + (1.0 - lam) * (r - mu_low)) / l_norm
    adv = torch.where(is_low, low_value, high_value)
    adv = torch.where(counts[g] == 1, r / l_norm, adv)
    return adv.to(out)


# ---------------------------------------------------------------------------------------------
# §8 ARES window entropy and HWE triggers
# ---------------------------------------------------------------------------------------------


def _windows(
    h: torch.Tensor, valid: torch.Tensor, window: int, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_t = (1/w) Σ_j H_{t+start+j}`` (summed in order ``j``) and where it is defined."""
    n_rows, width = valid.shape
    pad = start + window
    hp = torch.cat([h, torch.zeros((n_rows, pad), dtype=h.dtype, device=h.device)], dim=1)
    vp = torch.cat([valid, torch.zeros((n_rows, pad), dtype=torch.bool, device=h.device)], dim=1)
    total = torch.zeros((n_rows, width), dtype=_F64, device=h.device)
    defined = valid.clone()
    for j in range(window):
        total = total + hp[:, start + j : start + j + width]
        defined = defined & vp[:, start + j : start + j + width]
    return torch.where(defined, total / window, 0.0), defined


def window_entropy(
    entropy: torch.Tensor,
    mask: Any,
    *,
    window: int = 4,
    start: int = 0,
    cu_seqlens: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ARES window entropy (``rollout.md`` §8) → ``(W, defined)``.

    ``W_t = (1/w) Σ_{j<w} H_{t+start+j}``, defined iff ``t`` and all ``w`` window positions are
    valid positions of the same row (``W = 0`` elsewhere). **Decision** (spec): ``start=0`` is the
    paper's window, ``start=1`` the released code's. arXiv 2510.08457 (ARES).
    """
    w = _integer("window", window, low=1)
    s = _integer("start", start, low=0)
    x_t = _float_tensor("entropy", entropy)
    lay = _layout("entropy", x_t, mask, cu_seqlens)
    mean, defined = _windows(lay.floats("entropy", x_t), lay.valid, w, s)
    return lay.tokens(mean, _out_dtype(x_t)), lay.tokens(defined)


def _trigger_tensor(trigger_ids: Any, device: torch.device) -> torch.Tensor:
    if isinstance(trigger_ids, (set, frozenset)):
        trigger_ids = sorted(trigger_ids)
    if isinstance(trigger_ids, (list, tuple)) and len(trigger_ids) == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    if isinstance(trigger_ids, torch.Tensor):
        return _as_int("trigger_ids", trigger_ids, None).to(device).reshape(-1)
    return _as_int("trigger_ids", trigger_ids, device).reshape(-1)


def hwe_count(
    entropy: torch.Tensor,
    token_ids: Any,
    mask: Any,
    trigger_ids: Any,
    *,
    threshold: float,
    window: int = 4,
    start: int = 0,
    cu_seqlens: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """High-window-entropy trigger counts (``rollout.md`` §8).

    Triggers: valid ``t`` with ``token_ids[t] ∈ trigger_ids`` and ``W_t`` defined; HWE iff
    ``W_t ≥ θ``; ``soft_cost = Σ_triggers max(0, W_t − θ)``. Returns ``(count (B,) int64,
    soft_cost (B,) float32 (float64), is_hwe bool per token)``. arXiv 2510.08457 (ARES).
    """
    theta = _real("threshold", threshold)
    w = _integer("window", window, low=1)
    s = _integer("start", start, low=0)
    x_t = _float_tensor("entropy", entropy)
    lay = _layout("entropy", x_t, mask, cu_seqlens)
    h = lay.floats("entropy", x_t)
    ids = lay.ints("token_ids", token_ids)
    triggers = _trigger_tensor(trigger_ids, lay.device)
    mean, defined = _windows(h, lay.valid, w, s)
    trigger = lay.valid & torch.isin(ids, triggers) & defined
    is_hwe = trigger & (mean >= theta)
    excess = torch.where(trigger, torch.clamp(mean - theta, min=0.0), 0.0)
    count = is_hwe.sum(dim=1).to(torch.int64)
    soft_cost = excess.sum(dim=1).to(_out_dtype(x_t))
    return count, soft_cost, lay.tokens(is_hwe)


def hwe_threshold(
    entropy: torch.Tensor,
    mask: Any,
    *,
    window: int = 4,
    start: int = 0,
    q: float = 0.95,
    prev: float | None = None,
    momentum: float = 0.99,
    cu_seqlens: Any = None,
) -> torch.Tensor:
    """ARES HWE threshold ``θ`` (``rollout.md`` §8), a float64 0-dim tensor.

    ``θ_batch`` = median over rows (with ≥ 1 defined window) of each row's linear ``q``-quantile
    of its defined ``W_t``; ``θ = θ_batch``, or ``momentum·prev + (1 − momentum)·θ_batch``. No
    defined window: ``θ = prev`` (NaN when ``prev is None``). arXiv 2510.08457 (ARES).
    """
    w = _integer("window", window, low=1)
    s = _integer("start", start, low=0)
    q = _real("q", q, low=0.0, high=1.0)
    momentum = _real("momentum", momentum, low=0.0, high=1.0)
    previous = None if prev is None else _real("prev", prev)
    x_t = _float_tensor("entropy", entropy)
    lay = _layout("entropy", x_t, mask, cu_seqlens)
    device = lay.device
    mean, defined = _windows(lay.floats("entropy", x_t), lay.valid, w, s)
    n_defined = defined.sum(dim=1)
    ordered = torch.sort(torch.where(defined, mean, math.inf), dim=1).values
    row_q = _sorted_quantile(ordered, n_defined, q)[n_defined > 0]
    if row_q.shape[0] == 0:
        value = math.nan if previous is None else previous
        return torch.tensor(value, dtype=_F64, device=device)
    m = row_q.shape[0]
    theta_batch = _sorted_quantile(
        torch.sort(row_q).values[None, :], torch.tensor([m], device=device), 0.5
    )[0]
    if previous is None:
        return theta_batch
    return momentum * previous + (1.0 - momentum) * theta_batch


# ---------------------------------------------------------------------------------------------
# §9 PEAR phase entropies and reward
# ---------------------------------------------------------------------------------------------


def phase_boundary(
    token_ids: torch.Tensor, mask: Any, end_think_id: int, *, cu_seqlens: Any = None
) -> torch.Tensor:
    """Position ``k`` of the first valid ``</think>`` token of each row, −1 if absent
    (``rollout.md`` §9), int64 ``(B,)``. arXiv 2510.08026 (PEAR)."""
    end_id = _integer("end_think_id", end_think_id)
    if not isinstance(token_ids, torch.Tensor):
        raise TypeError(f"token_ids: expected a torch.Tensor, got {type(token_ids).__name__}")
    ids_t = _as_int("token_ids", token_ids, token_ids.device)
    lay = _layout("token_ids", ids_t, mask, cu_seqlens)
    hit = lay.valid & (lay.ints("token_ids", ids_t) == end_id)
    if lay.width == 0:
        return torch.full((lay.n_rows,), -1, dtype=torch.int64, device=lay.device)
    first = torch.argmax(hit.to(torch.int8), dim=1)
    return torch.where(hit.any(dim=1), first, -1)


def phase_entropy(
    entropy: torch.Tensor, mask: Any, boundary: Any, *, cu_seqlens: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PEAR phase entropies (``rollout.md`` §9) → ``(h_think, h_answer, n_think, n_answer)``.

    ``H̄_think`` over valid ``t < k``, ``H̄_answer`` over valid ``t > k`` (``</think>`` in
    neither); empty phase → 0; **Decision** (spec): ``k = −1`` makes every valid token thinking.
    float32 (float64) and int64 ``(B,)``. arXiv 2510.08026 (PEAR).
    """
    x_t = _float_tensor("entropy", entropy)
    lay = _layout("entropy", x_t, mask, cu_seqlens)
    h = lay.floats("entropy", x_t)
    k = _vector(_as_int("boundary", boundary, lay.device), "boundary", lay.n_rows)
    if bool((k < -1).any()):
        raise ValueError("boundary: expected positions >= -1 (-1: no </think>)")
    positions = lay.positions()
    no_end = (k == -1)[:, None]
    think = lay.valid & (no_end | (positions < k[:, None]))
    answer = lay.valid & ~no_end & (positions > k[:, None])
    n_think = think.sum(dim=1)
    n_answer = answer.sum(dim=1)
    out = _out_dtype(x_t)
    h_think = _safe_div(torch.where(think, h, 0.0).sum(dim=1), n_think.to(_F64))
    h_answer = _safe_div(torch.where(answer, h, 0.0).sum(dim=1), n_answer.to(_F64))
    return h_think.to(out), h_answer.to(out), n_think, n_answer


def pear_reward(
    correct: Any,
    h_think: torch.Tensor,
    h_answer: Any,
    *,
    alpha: float = 1.0,
    score: float = 1.0,
    format_score: float = 0.0,
) -> torch.Tensor:
    """PEAR reward (``rollout.md`` §9): ``P = max(0, H̄_think − α H̄_answer)``, ``r = min(1,
    score − P)`` if correct, else ``format_score`` (**formula to confirm**, spec).
    float32 (float64) ``(B,)``. arXiv 2510.08026 (PEAR)."""
    think_t = _float_tensor("h_think", h_think)
    device = think_t.device
    think = _float_vector("h_think", think_t, device)
    n = think.shape[0]
    ok = _vector(_as_bool("correct", correct, device), "correct", n)
    answer = _float_vector("h_answer", h_answer, device, n)
    alpha = _real("alpha", alpha)
    score = _real("score", score)
    format_score = _real("format_score", format_score)
    penalty = torch.clamp(think - alpha * answer, min=0.0)
    reward = torch.where(ok, torch.clamp(score - penalty, max=1.0), format_score)
    return reward.to(_out_dtype(think_t, h_answer))


# ---------------------------------------------------------------------------------------------
# §10 EPO entropy band
# ---------------------------------------------------------------------------------------------


def step_entropy_means(
    entropy: torch.Tensor,
    mask: Any,
    step_index: Any,
    *,
    max_steps: int,
    cu_seqlens: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per environment step ``k < max_steps``: ``(sum float64, count int64)`` of the valid token
    entropies of the rows with ``step_index = k`` (``rollout.md`` §10); the caller keeps the
    history means. arXiv 2509.22576 (EPO)."""
    steps = _integer("max_steps", max_steps, low=0)
    x_t = _float_tensor("entropy", entropy)
    lay = _layout("entropy", x_t, mask, cu_seqlens)
    h = lay.floats("entropy", x_t)
    k = _vector(_as_int("step_index", step_index, lay.device), "step_index", lay.n_rows)
    if bool((k < 0).any()):
        raise ValueError("step_index: expected non-negative steps")
    keep = k < steps
    sums = torch.zeros(steps, dtype=_F64, device=lay.device)
    sums = sums.index_add(0, k[keep], h.sum(dim=1)[keep])
    counts = torch.zeros(steps, dtype=torch.int64, device=lay.device)
    counts = counts.index_add(0, k[keep], lay.valid.sum(dim=1)[keep])
    return sums, counts


def epo_band_penalty(
    entropy: torch.Tensor,
    mask: Any,
    step_index: Any,
    history_mean: Any,
    *,
    kappa_low: float = 0.5,
    kappa_high: float = 1.5,
    form: str = "released",
    rho_out: float = 0.1,
    power: float = 1,
    granularity: str = "token",
    cu_seqlens: Any = None,
) -> torch.Tensor:
    """EPO entropy-band penalty per token (``rollout.md`` §10), 0 off-mask.

    ``H̄ = history_mean[step_index[b]]``; ``x = H_t`` (or the row mean, ``granularity="seq"``).
    ``"released"``: ``0`` when ``κ_l H̄ < x < κ_r H̄``, else ``ρ_out`` — a constant without
    gradient, as released. ``"relu"`` (an entcore design): ``relu(κ_l H̄ − x)^p + relu(x −
    κ_r H̄)^p``, differentiable through ``entropy`` (``H̄`` constant). **Decision** (spec):
    ``κ`` 0.5/1.5, ``ρ_out`` 0.1. arXiv 2509.22576; WujiangXu/EPO ``generate_entropy_penalty``.
    """
    x_t = _float_tensor("entropy", entropy)
    form = choice("form", form, ("released", "relu"))
    lay = _layout("entropy", x_t, mask, cu_seqlens)
    device = lay.device
    h = lay.floats("entropy", x_t, grad=form == "relu")
    k = _vector(_as_int("step_index", step_index, device), "step_index", lay.n_rows)
    history = _float_vector("history_mean", history_mean, device, nan_ok=True)
    kappa_l = _real("kappa_low", kappa_low)
    kappa_r = _real("kappa_high", kappa_high)
    if kappa_l > kappa_r:
        raise ValueError(f"kappa_low: expected kappa_low <= kappa_high, got {kappa_l} > {kappa_r}")
    rho = _real("rho_out", rho_out)
    p = _real("power", power, low=0.0, low_open=True)
    granularity = choice("granularity", granularity, ("token", "seq"))
    if bool(((k < 0) | (k >= history.shape[0])).any()):
        raise ValueError(
            f"step_index: expected values in [0, {history.shape[0]}) (len(history_mean))"
        )
    valid = lay.valid
    row_valid = valid.any(dim=1)
    bar = history[k] if lay.n_rows else torch.zeros(0, dtype=_F64, device=device)
    used = torch.isnan(bar) & row_valid
    if bool(used.any()):
        raise ValueError(f"history_mean: NaN at step {int(k[used][0])}")
    bar = torch.where(row_valid, bar, 0.0)[:, None]
    if granularity == "seq":
        counts = valid.sum(dim=1, keepdim=True).clamp(min=1).to(_F64)
        x = (h.sum(dim=1, keepdim=True) / counts).expand_as(h)
    else:
        x = h
    if form == "released":
        in_band = (kappa_l * bar < x) & (x < kappa_r * bar)
        penalty = torch.where(in_band, torch.zeros_like(x), torch.full_like(x, rho))
    else:
        penalty = _relu_pow(kappa_l * bar - x, p) + _relu_pow(x - kappa_r * bar, p)
    penalty = torch.where(valid, penalty, 0.0)
    return lay.tokens(penalty, _out_dtype(x_t))


def _relu_pow(d: torch.Tensor, p: float) -> torch.Tensor:
    """``relu(d)^p`` with a finite (zero) gradient wherever ``d ≤ 0``."""
    positive = d > 0
    return torch.where(positive, torch.where(positive, d, 1.0) ** p, 0.0)


def epo_phase_weight(epoch: Any, *, total: float = 150) -> torch.Tensor:
    """EPO phase weight ``β`` (``rollout.md`` §10, released schedule), float64, vectorised:
    ``1 − 0.2 (1 − exp(−2e/(E/2)))`` for ``e ≤ E/2``, else ``0.8 exp(−3(e − E/2)/(E/2))``.
    arXiv 2509.22576; WujiangXu/EPO ``_calculate_epoch_based_entropy_weight``."""
    e = _numeric("epoch", epoch, _device_of(epoch))
    if bool((torch.isnan(e) | (e < 0)).any()):
        raise ValueError("epoch: expected non-negative epochs")
    half = _real("total", total, low=0.0, low_open=True) / 2.0
    early = 1.0 - 0.2 * (1.0 - torch.exp(-2.0 * e / half))
    late = 0.8 * torch.exp(-3.0 * (e - half) / half)
    return torch.where(e <= half, early, late)


# ---------------------------------------------------------------------------------------------
# §11 SPEAR
# ---------------------------------------------------------------------------------------------


def spear_recalibrate(
    rewards: torch.Tensor,
    baseline_means: Any,
    *,
    baseline_stds: Any = None,
    decay: float | None = None,
    old_advantages: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEAR advantage recalibration for replayed trajectories (``rollout.md`` §11).

    ``Â = R − median(baseline_means)`` (``/ (median(baseline_stds) + 1e-6)`` with stds),
    ``keep = Â ≥ 0``; with ``decay = γ ∈ (0, 1]``: ``Â = γ · old_advantages``, all kept.
    Medians as ``numpy.median``. Returns ``(float32 (float64) (B,), bool (B,))``.
    arXiv 2509.22601; TencentYoutuResearch/SPEAR ``core_algos.py``.
    """
    r_t = _float_tensor("rewards", rewards)
    device = r_t.device
    r = _float_vector("rewards", r_t, device)
    out = _out_dtype(r_t)
    if decay is not None:
        gamma = _real("decay", decay, low=0.0, high=1.0, low_open=True)
        if old_advantages is None:
            raise ValueError("old_advantages: required with decay")
        old = _float_vector("old_advantages", old_advantages, device, r.shape[0])
        return (gamma * old).to(out), torch.ones(r.shape[0], dtype=torch.bool, device=device)
    means = _float_vector("baseline_means", baseline_means, device)
    if means.shape[0] == 0:
        raise ValueError("baseline_means: expected at least one stored mean")
    advantages = r - _median(means)
    if baseline_stds is not None:
        stds = _float_vector("baseline_stds", baseline_stds, device)
        if stds.shape[0] == 0:
            raise ValueError("baseline_stds: expected at least one stored std")
        advantages = advantages / (_median(stds) + 1e-6)
    return advantages.to(out), advantages >= 0.0


def spear_schedules(
    step: Any,
    *,
    replay_coef: float = 1.0,
    replay_period: int = 200,
    tool_period: int = 200,
    num_turns: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEAR schedules (``rollout.md`` §11) → ``(replay_weight, tool_reward)``, float64.

    Replay weight ``replay_coef · (1 − cos(π k/K))/2`` for ``k ≤ K``, then ``replay_coef``; tool
    reward ``min(1, 0.1·num_turns) · (1 + cos(π k/K))/2`` for ``k ≤ K``, then 0 (``num_turns=None``:
    the schedule factor alone). arXiv 2509.22601; SPEAR ``ray_trainer_hybrid.py``.
    """
    device = _device_of(step, num_turns)
    k = _numeric("step", step, device)
    if bool((torch.isnan(k) | (k < 0)).any()):
        raise ValueError("step: expected non-negative steps")
    coef = _real("replay_coef", replay_coef)
    k_replay = _integer("replay_period", replay_period, low=1)
    k_tool = _integer("tool_period", tool_period, low=1)
    replay = torch.where(
        k <= k_replay,
        coef * (1.0 - torch.cos(math.pi * torch.clamp(k, max=k_replay) / k_replay)) / 2.0,
        coef,
    )
    factor = torch.where(
        k <= k_tool, (1.0 + torch.cos(math.pi * torch.clamp(k, max=k_tool) / k_tool)) / 2.0, 0.0
    )
    if num_turns is not None:
        turns = _numeric("num_turns", num_turns, device)
        if bool((torch.isnan(turns) | (turns < 0)).any()):
            raise ValueError("num_turns: expected non-negative turn counts")
        factor = torch.clamp(0.1 * turns, max=1.0) * factor
    return replay, factor


# ---------------------------------------------------------------------------------------------
# §12 AEPO temperature controller
# ---------------------------------------------------------------------------------------------


def nll_entropy_estimate(
    logprob: torch.Tensor, mask: Any, *, cu_seqlens: Any = None
) -> torch.Tensor:
    """``mean_M(−ℓ)``, the sampled-token entropy estimate (``rollout.md`` §12): a float64 0-dim
    tensor without gradient, NaN for an empty mask. arXiv 2510.08141 (AEPO)."""
    lp_t = _float_tensor("logprob", logprob)
    lay = _layout("logprob", lp_t, mask, cu_seqlens)
    return _masked_mean(-lay.floats("logprob", lp_t), lay.valid)


def _prev_entropy(prev_entropy: Any) -> float:
    return 0.0 if prev_entropy is None else _real("prev_entropy", prev_entropy)


def aepo_temperature(
    prev_entropy: Any, *, target: float = 0.5, t_high: float = 1.2, t_low: float = 0.8
) -> float:
    """AEPO sampling temperature (``rollout.md`` §12): ``t_high`` if ``Ĥ ≤ target`` else
    ``t_low`` (``prev_entropy=None`` counts as 0). A Python float (a host-side decision).
    arXiv 2510.08141; 597358816/AEPO ``ray_trainer.py :: fit``."""
    h_hat = _prev_entropy(prev_entropy)
    target = _real("target", target)
    high = _real("t_high", t_high, low=0.0, low_open=True)
    low = _real("t_low", t_low, low=0.0, low_open=True)
    return high if h_hat <= target else low


def aepo_select(
    aux_advantages: torch.Tensor,
    *,
    prev_entropy: Any,
    target: float = 0.5,
    threshold: float = 0.05,
    max_samples: int = 60,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AEPO auxiliary-sample selection (``rollout.md`` §12) → ``(indices int64, advantages)``.

    Kept: ``A > threshold``; ``k = min(max_samples, #kept)``, halved when ``Ĥ > target``; the
    first ``k`` kept in order, advantages ``+1`` (float32 (float64) ``(k,)``).
    arXiv 2510.08141; 597358816/AEPO ``_select_by_advantage``.
    """
    adv_t = _float_tensor("aux_advantages", aux_advantages)
    device = adv_t.device
    adv = _float_vector("aux_advantages", adv_t, device)
    h_hat = _prev_entropy(prev_entropy)
    target = _real("target", target)
    threshold = _real("threshold", threshold)
    limit = _integer("max_samples", max_samples, low=0)
    kept = torch.nonzero(adv > threshold).reshape(-1)
    k = min(limit, kept.shape[0])
    if h_hat > target:
        k //= 2
    return kept[:k], torch.ones(k, dtype=_out_dtype(adv_t), device=device)


# ---------------------------------------------------------------------------------------------
# §13 SIREN
# ---------------------------------------------------------------------------------------------


def peak_entropy_mask(
    h: torch.Tensor, mask: Any, *, q: float = 0.8, cu_seqlens: Any = None
) -> torch.Tensor:
    """SIREN peak-entropy mask (``rollout.md`` §13): per row ``τ_b`` = linear quantile ``q`` of
    the row's valid ``h``; selected ``= valid ∧ h > τ_b`` (strict). A row sort, any size.
    arXiv 2509.25133; Linn3a/siren ``dp_actor.py :: mask_by_quantile``."""
    q = _real("q", q, low=0.0, high=1.0)
    h_t = _float_tensor("h", h)
    lay = _layout("h", h_t, mask, cu_seqlens)
    values = lay.floats("h", h_t)
    valid = lay.valid
    n = valid.sum(dim=1)
    ordered = torch.sort(torch.where(valid, values, math.inf), dim=1).values
    tau = _sorted_quantile(ordered, n, q)
    return lay.tokens(valid & (values > tau[:, None]))


def siren_regularizer(
    h: torch.Tensor,
    selected: Any,
    *,
    anchor: Any = None,
    coef: float = 0.005,
    scope: str = "micro_batch",
    micro_batch: Any = None,
    cu_seqlens: Any = None,
) -> torch.Tensor:
    """SIREN regulariser ``coef · (Ē − anchor)²`` (``rollout.md`` §13), differentiable in ``h``.

    ``Ē`` = mean over all rows of the unit of each row's mean ``h`` over its selected tokens (0
    for rows with none, still counted); ``anchor=None`` returns ``Ē`` (float64, so that the
    regulariser is exactly 0 at that anchor). A 0-dim tensor with one unit by construction
    (``micro_batch=None`` or ``scope="batch"``), else ``(U,)``; float32 (float64).
    arXiv 2509.25133; Linn3a/siren ``dp_actor.py``.
    """
    coef = _real("coef", coef)
    h_t = _float_tensor("h", h)
    lay = _layout("h", h_t, selected, cu_seqlens)
    device = lay.device
    values = lay.floats("h", h_t, grad=True)
    row_unit, n_units = _units(scope, micro_batch, lay.n_rows, device)
    row_counts = lay.valid.sum(dim=1)
    row_means = torch.where(
        row_counts > 0, values.sum(dim=1) / row_counts.clamp(min=1).to(_F64), 0.0
    )
    rows_per_unit = torch.bincount(row_unit, minlength=n_units)[:n_units].to(_F64)
    e_bar = _unit_sum(row_means, row_unit, n_units) / rows_per_unit
    single = scope == "batch" or micro_batch is None
    if anchor is None:
        result = e_bar
    else:
        anchors = _numeric("anchor", anchor, device)
        if anchors.ndim != 0 and tuple(anchors.shape) != (n_units,):
            raise ValueError(
                f"anchor: expected a scalar or shape ({n_units},), got {tuple(anchors.shape)}"
            )
        if bool(torch.isnan(anchors).any()):
            raise ValueError("anchor: contains NaN")
        result = coef * (e_bar - anchors) ** 2
    # Ē itself stays float64, so that the regulariser is exactly 0 at an anchor it returned.
    out = _F64 if anchor is None else _out_dtype(h_t)
    if single:
        if n_units == 0:
            return torch.zeros((), dtype=out, device=device)
        return result[0].to(out)
    return result.to(out)


# ---------------------------------------------------------------------------------------------
# §14 Answer-level entropy and support metrics
# ---------------------------------------------------------------------------------------------


def answer_entropy(answer_codes: Any, group: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer-level entropy per group (``rollout.md`` §14) → ``(groups int64, H float64)``:
    ``H = −Σ_j p_j log p_j`` over the distinct answer codes of each group (groups ascending).
    Yue et al., *The Invisible Leash*, arXiv 2507.14843."""
    device = _device_of(answer_codes, group)
    codes = _vector(_as_int("answer_codes", answer_codes, None).to(device), "answer_codes", None)
    g = _vector(_as_int("group", group, None).to(device), "group", codes.shape[0])
    groups, inverse = torch.unique(g, return_inverse=True)
    n_groups = groups.shape[0]
    if codes.shape[0] == 0:
        return groups, torch.zeros(0, dtype=_F64, device=device)
    pairs, pair_counts = torch.unique(
        torch.stack([inverse.reshape(-1), codes], dim=1), dim=0, return_counts=True
    )
    pair_group = pairs[:, 0]
    size = torch.bincount(inverse.reshape(-1), minlength=n_groups).to(_F64)
    p = pair_counts.to(_F64) / size[pair_group]
    plogp = _unit_sum(p * torch.log(p), pair_group, n_groups)
    return groups, torch.zeros(n_groups, dtype=_F64, device=device) - plogp


def support_epsilon(k: Any, *, confidence: float = 0.95) -> torch.Tensor:
    """``1 − (1 − confidence)^{1/k}`` (≈ 3/k), the mass seen at least once in ``k`` samples with
    that confidence (``rollout.md`` §14); float64, vectorised over ``k ≥ 1``. arXiv 2507.14843."""
    k_t = _numeric("k", k, _device_of(k))
    if bool((torch.isnan(k_t) | (k_t < 1)).any()):
        raise ValueError("k: expected sample counts >= 1")
    c = _real("confidence", confidence, low=0.0, high=1.0)
    return 1.0 - torch.pow(torch.tensor(1.0 - c, dtype=_F64, device=k_t.device), 1.0 / k_t)


def support_metrics(base: Any, rl: Any) -> dict[str, torch.Tensor]:
    """Support preservation/expansion metrics (``rollout.md`` §14), 0-dim tensors.

    ``P = Σ base∧rl``, ``S = Σ base∧¬rl``, ``E = Σ ¬base∧rl``, ``O = Σ ¬base∧¬rl`` (int64);
    ``SRR = P/(P+S)``, ``NDR = E/(P+E)``, ``SDS = 2·SRR·NDR/(SRR+NDR)``, ``NSCR = (E − S)/(P+E+S)``
    (float64; ``0/0`` → NaN). arXiv 2507.14843 (*The Invisible Leash*).
    """
    device = _device_of(base, rl)
    b = _as_bool("base", base.to(device) if isinstance(base, torch.Tensor) else base, device)
    r = _as_bool("rl", rl.to(device) if isinstance(rl, torch.Tensor) else rl, device)
    if b.shape != r.shape:
        raise ValueError(f"rl: expected shape {tuple(b.shape)} (as base), got {tuple(r.shape)}")
    p = (b & r).sum()
    s = (b & ~r).sum()
    e = (~b & r).sum()
    o = (~b & ~r).sum()
    pf, sf, ef = p.to(_F64), s.to(_F64), e.to(_F64)
    srr = _ratio(pf, pf + sf)
    ndr = _ratio(ef, pf + ef)
    sds = torch.where(
        torch.isnan(srr) | torch.isnan(ndr), math.nan, _ratio(2 * srr * ndr, srr + ndr)
    )
    nscr = _ratio(ef - sf, pf + ef + sf)
    return {"P": p, "S": s, "E": e, "O": o, "SRR": srr, "NDR": ndr, "SDS": sds, "NSCR": nscr}


# ---------------------------------------------------------------------------------------------
# §15 Zero-shot detection statistic
# ---------------------------------------------------------------------------------------------


def detection_statistic(
    logprob: torch.Tensor, entropy: Any, mask: Any, *, cu_seqlens: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row ``T = L − Ĥ``, ``L = −(1/n) Σ ℓ_t``, ``Ĥ = (1/n) Σ H_t`` (``rollout.md`` §15) →
    ``(T float32 (float64) (B,), n int64 (B,))``; ``T = NaN`` for an empty row. Radvand et al.,
    arXiv 2501.02406."""
    lp_t = _float_tensor("logprob", logprob)
    lay = _layout("logprob", lp_t, mask, cu_seqlens)
    lp = lay.floats("logprob", lp_t)
    h = lay.floats("entropy", entropy)
    n = lay.valid.sum(dim=1)
    nf = n.to(_F64)
    stat = _ratio(-lp.sum(dim=1), nf) - _ratio(h.sum(dim=1), nf)
    return stat.to(_out_dtype(lp_t, entropy)), n


def detection_threshold(n: Any, *, alpha: float = 0.05, bound: float) -> torch.Tensor:
    """``ε = bound · sqrt(2 ln(2/α) / n)`` (``rollout.md`` §15, entcore's Azuma–Hoeffding
    derivation; ``bound`` is the caller's assumption), float64, vectorised; ``n = 0`` → ``+inf``.
    arXiv 2501.02406."""
    n_t = _numeric("n", n, _device_of(n))
    if bool((torch.isnan(n_t) | (n_t < 0)).any()):
        raise ValueError("n: expected non-negative token counts")
    a = _real("alpha", alpha, low=0.0, high=1.0, low_open=True)
    bound = _real("bound", bound, low=0.0, low_open=True)
    return bound * torch.sqrt(2.0 * math.log(2.0 / a) / n_t)


# ---------------------------------------------------------------------------------------------
# §16 Conditional entropy reduction
# ---------------------------------------------------------------------------------------------


def entropy_reduction(
    answer_entropy: torch.Tensor,
    answer_mask: Any,
    *,
    step_mask: Any = None,
    reduce: str = "mean",
) -> dict[str, torch.Tensor]:
    """Conditional entropy reduction over reasoning steps (``rollout.md`` §16), float64.

    ``answer_entropy`` ``(..., K+1, Y)``; ``H_k`` = mean (or sum) over valid answer tokens (NaN
    at steps outside ``step_mask``); ``delta`` = ``H_{k−1} − H_k``; ``total`` = first − last valid
    step; ``frac_decreasing`` = ``#(ΔH > 0)/#defined``; ``slope`` = least-squares slope of ``H_k``
    on ``k`` over the valid steps. arXiv 2508.20395.
    """
    reduce = choice("reduce", reduce, ("mean", "sum"))
    x_t = _float_tensor("answer_entropy", answer_entropy)
    device = x_t.device
    values = x_t.detach().to(_F64)
    if values.ndim < 2:
        raise ValueError(f"answer_entropy: expected shape (..., K+1, Y), got {tuple(values.shape)}")
    mask_t = _as_bool("answer_mask", answer_mask, device)
    try:
        valid = torch.broadcast_to(mask_t, values.shape)
    except RuntimeError:
        raise ValueError(
            f"answer_mask: shape {tuple(mask_t.shape)} does not broadcast to {tuple(values.shape)}"
        ) from None
    if bool((torch.isnan(values) & valid).any()):
        raise ValueError("answer_entropy: contains NaN at a valid answer token")
    lead, steps = tuple(values.shape[:-2]), values.shape[-2]
    if step_mask is None:
        ok = torch.ones(lead + (steps,), dtype=torch.bool, device=device)
    else:
        ok = _as_bool("step_mask", step_mask, device)
        if tuple(ok.shape) != lead + (steps,):
            raise ValueError(f"step_mask: expected shape {lead + (steps,)}, got {tuple(ok.shape)}")
    sums = torch.where(valid, values, 0.0).sum(dim=-1)
    counts = valid.sum(dim=-1)
    h_k = sums if reduce == "sum" else _ratio(sums, counts.to(_F64))
    h_k = torch.where(ok, h_k, math.nan)

    pair_ok = ok[..., :-1] & ok[..., 1:]
    delta = torch.where(pair_ok, h_k[..., :-1] - h_k[..., 1:], math.nan)
    n_ok = ok.sum(dim=-1)
    ks = torch.arange(steps, dtype=torch.int64, device=device)
    first = torch.where(ok, ks, steps).amin(dim=-1).clamp(max=steps - 1)
    last = torch.where(ok, ks, -1).amax(dim=-1).clamp(min=0)
    total = h_k.gather(-1, first[..., None])[..., 0] - h_k.gather(-1, last[..., None])[..., 0]
    total = torch.where(n_ok > 0, total, math.nan)
    defined = ~torch.isnan(delta)
    frac = _ratio((defined & (delta > 0)).sum(dim=-1).to(_F64), defined.sum(dim=-1).to(_F64))
    x = ks.to(_F64)
    nf = n_ok.to(_F64).clamp(min=1.0)
    x_bar = torch.where(ok, x, 0.0).sum(dim=-1) / nf
    y_bar = torch.where(ok, h_k, 0.0).sum(dim=-1) / nf
    dx = torch.where(ok, x - x_bar[..., None], 0.0)
    dy = torch.where(ok, h_k - y_bar[..., None], 0.0)
    num = (dx * dy).sum(dim=-1)
    den = (dx * dx).sum(dim=-1)
    slope = torch.where(n_ok >= 2, num / torch.where(den > 0, den, 1.0), math.nan)
    return {"H": h_k, "delta": delta, "total": total, "frac_decreasing": frac, "slope": slope}
