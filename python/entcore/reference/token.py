"""Float64 NumPy oracle for the token statistics of ``token.md`` (the executable spec).

Written to be read, not to be fast (``conventions.md``, "The three faces of every function"):
every input is upcast exactly to float64 (float16 and ``ml_dtypes.bfloat16`` widen exactly), the
temperature is applied after the upcast (``z' = float64(z) / T``, ``token.md`` §1) and every sum
runs in float64 over whole rows. Results are float64 arrays; the Rust-backed ``entcore.<name>``
(float32 results) and ``entcore.torch.<name>`` are held to these values in the tests.

Names, argument names and defaults are those of ``entcore.token``. This module never imports the
compiled core.

Row conventions (``token.md`` §4, ``conventions.md`` "Inputs and errors"):

- ``-inf`` logits are masked vocabulary entries with ``p_j = 0``; the statistics are those of the
  distribution with those entries removed (``V_fin`` finite entries remain).
- ``+inf`` anywhere, a row whose logits are all ``-inf``, an empty vocabulary, ``T <= 0`` or a
  non-finite ``T``, a label outside ``[0, V)`` (other than ``ignore_index``) → ``ValueError``
  naming the argument; a non-float ``logits`` or non-integer ``labels`` → ``TypeError``.
- NaN: ``nan_policy="raise"`` (default) → ``ValueError``; ``"propagate"`` → NaN in the affected
  rows only (labels equal to ``ignore_index`` still give 0 there: an ignored label is never read).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

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

NAN_POLICIES = ("raise", "propagate")
TOPK_MODES = ("estimate", "lower", "upper", "truncated", "bucket", "renormalized")

#: The float dtypes every face accepts (``token.md`` §1).
FLOAT_DTYPES = (
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(np.float16),
    np.dtype(ml_dtypes.bfloat16),
)

#: ``S = Σ p_i`` above ``1 + SUM_TOLERANCE`` is not a set of log-probs of one distribution (§7).
SUM_TOLERANCE = 1e-3

#: For ``0 < |α − 1| < NEAR_ONE`` the Rényi entropy uses its first-order expansion (§6).
NEAR_ONE = 1e-4


class TopkEntropy(NamedTuple):
    """Entropy bounds from top-k log-probs (``token.md`` §7), float64 arrays in the reference."""

    lower: np.ndarray
    estimate: np.ndarray
    upper: np.ndarray


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def token_entropy(logits: Any, *, temperature: Any = 1.0, nan_policy: str = "raise") -> np.ndarray:
    """Shannon entropy of ``p = softmax(z / T)`` in nats, one value per row.

    ``H = −Σ_j p_j log p_j`` with ``0 · log 0 = 0``, evaluated as
    ``H = log s − Σ_{j finite} p_j (z'_j − m)`` where ``m = max z'``, ``s = Σ exp(z'_j − m)``
    and ``p_j = exp(z'_j − m) / s`` (``token.md`` §2; ``conventions.md`` Notation).

    Returns float64 of shape ``logits.shape[:-1]``.
    """
    rows = _Rows(logits, temperature, nan_policy)
    return rows.finish(rows.entropy())


def token_logprob(
    logits: Any,
    labels: Any,
    *,
    temperature: Any = 1.0,
    ignore_index: int | None = None,
    nan_policy: str = "raise",
) -> np.ndarray:
    """Log-probability ``ℓ_y = z'_y − LSE(z') = (z'_y − m) − log s`` of each label.

    ``labels`` has shape ``logits.shape[:-1]`` or ``logits.shape[:-1] + (K,)``; values in
    ``[0, V)``, or ``ignore_index`` which gives ``ℓ = 0``. A label on a ``-inf`` logit gives
    ``-inf`` (``token.md`` §1, §2, §4). Returns float64 of shape ``labels.shape``.
    """
    rows = _Rows(logits, temperature, nan_policy)
    return _labelled_logprob(rows, labels, ignore_index)


def token_logprob_entropy(
    logits: Any,
    labels: Any,
    *,
    temperature: Any = 1.0,
    ignore_index: int | None = None,
    return_collision: bool = False,
    nan_policy: str = "raise",
) -> tuple[np.ndarray, ...]:
    """``(logprob, entropy[, collision])``: :func:`token_logprob`, :func:`token_entropy` and,
    with ``return_collision=True``, :func:`collision_probability` (``token.md`` §2, §6).
    """
    rows = _Rows(logits, temperature, nan_policy)
    logprob = _labelled_logprob(rows, labels, ignore_index)
    entropy = rows.finish(rows.entropy())
    if return_collision:
        return logprob, entropy, rows.finish(rows.collision())
    return logprob, entropy


def collision_probability(
    logits: Any, *, temperature: Any = 1.0, nan_policy: str = "raise"
) -> np.ndarray:
    """Collision probability ``Σ_j p_j² = exp(LSE(2z') − 2 LSE(z')) = exp(−H₂)``.

    In ``[1/V_fin, 1]`` (``token.md`` §6). Returns float64 of shape ``logits.shape[:-1]``.
    """
    rows = _Rows(logits, temperature, nan_policy)
    return rows.finish(rows.collision())


def renyi_entropy(
    logits: Any, alpha: float, *, temperature: Any = 1.0, nan_policy: str = "raise"
) -> np.ndarray:
    """Rényi entropy ``H_α`` in nats, ``α ∈ [0, ∞]`` a scalar (``token.md`` §6).

    - ``α = 0``: ``log V_fin`` (the number of finite logits of the row).
    - ``α = 1``: Shannon entropy, exactly :func:`token_entropy`.
    - ``α = 2``: ``−log Σ p²``.
    - ``α = ∞``: min-entropy ``LSE(z') − max z' = log s``.
    - ``0 < |α − 1| < 1e-4``: ``H − (α − 1) · Var_p(z') / 2`` (the closed form cancels there).
    - otherwise ``H_α = (LSE(α z') − α LSE(z')) / (1 − α) = (log s_α − α log s) / (1 − α)`` with
      ``s_α = Σ exp(α (z'_j − m))``, evaluated as ``(α/(α−1)) log s − log s_α / (α−1)`` so that a
      huge finite ``α`` does not overflow ``α log s``.

    Reference: Rényi, "On measures of entropy and information" (1961).
    """
    alpha = _check_alpha(alpha)
    rows = _Rows(logits, temperature, nan_policy)
    if alpha == 0.0:
        value = np.log(rows.finite.sum(axis=-1).astype(np.float64))
    elif alpha == 1.0:
        value = rows.entropy()
    elif alpha == 2.0:
        value = -np.log(rows.collision())
    elif alpha == math.inf:
        value = np.log(rows.s)
    elif abs(alpha - 1.0) < NEAR_ONE:
        value = rows.entropy() - (alpha - 1.0) * rows.variance() / 2.0
    else:
        # exp(α (z' − m)) of a masked entry is exp(−inf) = 0: it drops out of s_α.
        with np.errstate(over="ignore"):  # α (z' − m) may round to −inf for a huge α: exp → 0
            s_alpha = np.sum(np.exp(alpha * rows.shifted), axis=-1)
        value = (alpha / (alpha - 1.0)) * np.log(rows.s) - np.log(s_alpha) / (alpha - 1.0)
    return rows.finish(value)


def topk_entropy_bounds(topk_logprobs: Any, vocab_size: int) -> TopkEntropy:
    """``TopkEntropy(lower, estimate, upper)`` from the top-k log-probs of each row (§7).

    With ``p_i = exp(topk_logprobs_i)`` over the ``k'`` finite entries, ``h(x) = −x log x``:
    ``S = Σ p_i``, tail mass ``τ = max(0, 1 − S)``, cap ``c = min_i p_i``, tail size ``m = V − k'``,
    ``H_k = Σ h(p_i)``;
    ``upper = H_k + τ log(m/τ)`` (0 added when ``τ = 0``),
    ``lower = H_k + n h(c) + h(r)`` with ``n = ⌊τ/c⌋``, ``r = τ − n c`` (``lower = upper`` when
    ``n + 1 > m``), ``estimate = (lower + upper) / 2``. When ``k' = V`` all three equal ``H_k``.
    ``S > 1 + 1e-3`` or a row with no finite entry → ``ValueError``. Returns float64 arrays of
    shape ``topk_logprobs.shape[:-1]``.
    """
    table = _topk_table(topk_logprobs, vocab_size, "estimate")
    return TopkEntropy(table["lower"], table["estimate"], table["upper"])


def topk_entropy(topk_logprobs: Any, vocab_size: int | None = None, *, mode: str = "estimate"):
    """One top-k entropy convention of ``token.md`` §7, float64 of shape ``shape[:-1]``.

    ``"lower"``, ``"estimate"``, ``"upper"`` as in :func:`topk_entropy_bounds` (``vocab_size``
    required); ``"truncated"`` = ``H_k``; ``"bucket"`` = ``H_k + h(τ)`` (the tail as one
    pseudo-token; it does not use ``vocab_size``); ``"renormalized"`` = entropy of ``p_i / S``.
    For the top-k of one distribution, ``truncated ≤ bucket ≤ lower ≤ H ≤ upper``.
    """
    return _topk_table(topk_logprobs, vocab_size, mode)[mode]


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

    The reference materialises the ``(N, V)`` logits in float64 (``hidden``, ``weight``, ``bias``
    upcast exactly) and applies :func:`token_logprob_entropy`; the tiled evaluation of
    ``token.md`` §8.2 changes only the rounding. ``hidden (N, D)``, ``weight (V, D)``,
    ``bias (V,)``, ``labels (N,)``, ``temperature`` a scalar.
    """
    hidden64 = _float64_matrix("hidden", hidden, 2)
    weight64 = _float64_matrix("weight", weight, 2)
    if hidden64.shape[1] != weight64.shape[1]:
        raise ValueError(
            f"weight: expected shape (V, {hidden64.shape[1]}) to match hidden, got {weight64.shape}"
        )
    if weight64.shape[0] < 1:
        raise ValueError("weight: the vocabulary is empty (V = 0)")
    logits = hidden64 @ weight64.T
    if bias is not None:
        bias64 = _float64_matrix("bias", bias, 1)
        if bias64.shape != (weight64.shape[0],):
            raise ValueError(f"bias: expected shape ({weight64.shape[0]},), got {bias64.shape}")
        logits = logits + bias64
    labels_arr = _index_array("labels", labels)
    if labels_arr.shape != (hidden64.shape[0],):
        raise ValueError(f"labels: expected shape ({hidden64.shape[0]},), got {labels_arr.shape}")
    if np.ndim(temperature) != 0:
        raise ValueError(f"temperature: expected a scalar, got shape {np.shape(temperature)}")
    return token_logprob_entropy(
        logits,
        labels_arr,
        temperature=temperature,
        ignore_index=ignore_index,
        return_collision=return_collision,
    )


# ---------------------------------------------------------------------------------------------
# The row state (token.md §2), evaluated in float64 over whole rows
# ---------------------------------------------------------------------------------------------


class _Rows:
    """Validated, scaled logits as ``(N, V)`` float64 rows and the quantities of ``token.md`` §2.

    Attributes:
        shape: ``logits.shape[:-1]`` (the shape of every per-row result).
        scaled: ``z' = float64(z) / T``, ``(N, V)``; NaN rows (``"propagate"``) are zeroed here
            and restored as NaN by :meth:`finish`.
        nan_rows: ``(N,)`` bool, rows that contained a NaN.
        finite: ``(N, V)`` bool, the unmasked entries (``z' > −inf``).
        m: ``(N,)`` the row maximum over finite entries.
        shifted: ``z' − m`` (``−inf`` on masked entries, ``≤ 0`` elsewhere).
        s: ``Σ exp(z' − m)`` (``≥ 1``).
        logp: ``log p_j = (z'_j − m) − log s`` (``−inf`` on masked entries).
        p: ``p_j = exp(log p_j)`` (exactly 0 on masked entries).
    """

    def __init__(self, logits: Any, temperature: Any, nan_policy: str) -> None:
        propagate = _check_nan_policy(nan_policy)
        z = _float64_logits("logits", logits)
        vocab = z.shape[-1]
        self.shape = z.shape[:-1]
        temps = _row_temperatures(temperature, self.shape)
        z = z.reshape(-1, vocab)

        nan_entries = np.isnan(z)
        if nan_entries.any() and not propagate:
            raise ValueError(
                "logits: contains NaN (nan_policy='raise'); pass nan_policy='propagate' to get "
                "NaN for the affected rows"
            )
        self.nan_rows = nan_entries.any(axis=-1)
        if np.any(z == np.inf):
            raise ValueError("logits: contains +inf (only -inf, a masked entry, is allowed)")
        # A NaN row is computed as a row of zeros and reported as NaN (finish()).
        z = np.where(self.nan_rows[:, None], 0.0, z)
        all_masked = np.all(z == -np.inf, axis=-1)
        if np.any(all_masked):
            row = int(np.flatnonzero(all_masked)[0])
            raise ValueError(f"logits: row {row} has every logit -inf (no finite entry)")

        # Scale after the exact upcast (token.md §1): z' = float64(z) / T, never in place.
        self.scaled = z / temps.reshape(-1, 1)
        if np.any(self.scaled == np.inf):
            raise ValueError("temperature: too small, logits / temperature overflows float64")
        self.finite = self.scaled > -np.inf
        self.m = np.max(self.scaled, axis=-1)
        self.shifted = self.scaled - self.m[:, None]  # −inf − finite = −inf: no warning
        self.s = np.sum(np.exp(self.shifted), axis=-1)
        self.logp = self.shifted - np.log(self.s)[:, None]
        self.p = np.exp(self.logp)

    def entropy(self) -> np.ndarray:
        """``H = −Σ_j p_j log p_j = log s − Σ_j p_j (z'_j − m)`` over the finite entries.

        Masked entries contribute ``0 · log 0 = 0`` (they are left out of the sum, never
        evaluated as ``0 · (−inf)``). Both terms are ``≥ 0`` (``token.md`` §2).
        """
        return np.log(self.s) - np.sum(self.p * np.where(self.finite, self.shifted, 0.0), axis=-1)

    def collision(self) -> np.ndarray:
        """``Σ_j p_j²``."""
        return np.sum(self.p * self.p, axis=-1)

    def variance(self) -> np.ndarray:
        """``Var_p(z') = Σ_j p_j (z'_j − μ)²`` with ``μ = Σ_j p_j z'_j``, masked entries dropped."""
        centred_shift = np.where(self.finite, self.shifted, 0.0)
        mean = np.sum(self.p * centred_shift, axis=-1)
        deviation = np.where(self.finite, centred_shift - mean[:, None], 0.0)
        return np.sum(self.p * deviation * deviation, axis=-1)

    def finish(self, per_row: np.ndarray) -> np.ndarray:
        """NaN on NaN rows, reshaped to ``logits.shape[:-1]``, float64."""
        out = np.where(self.nan_rows, np.nan, per_row).astype(np.float64)
        return out.reshape(self.shape)


def _labelled_logprob(rows: _Rows, labels: Any, ignore_index: int | None) -> np.ndarray:
    """``ℓ_y = log p_y`` per label; 0 for ``ignore_index``; NaN on NaN rows."""
    ignore = _check_ignore_index(ignore_index)
    labels_arr = _index_array("labels", labels)
    n_rows = rows.scaled.shape[0]
    if labels_arr.shape == rows.shape:
        per_row = labels_arr.reshape(n_rows, 1)
    elif labels_arr.ndim == len(rows.shape) + 1 and labels_arr.shape[:-1] == rows.shape:
        per_row = labels_arr.reshape(n_rows, labels_arr.shape[-1])
    else:
        raise ValueError(
            f"labels: expected shape {rows.shape} or {rows.shape} + (K,), got {labels_arr.shape}"
        )
    vocab = rows.scaled.shape[-1]
    ignored = per_row == ignore if ignore is not None else np.zeros(per_row.shape, dtype=bool)
    bad = ~ignored & ((per_row < 0) | (per_row >= vocab))
    if np.any(bad):
        value = int(per_row[bad][0])
        raise ValueError(f"labels: expected values in [0, {vocab}), got {value}")
    safe = np.where(ignored, 0, per_row)
    logprob = np.take_along_axis(rows.logp, safe, axis=-1)
    logprob = np.where(rows.nan_rows[:, None], np.nan, logprob)
    logprob = np.where(ignored, 0.0, logprob)
    return logprob.astype(np.float64).reshape(labels_arr.shape)


# ---------------------------------------------------------------------------------------------
# Top-k (token.md §7)
# ---------------------------------------------------------------------------------------------


def _topk_table(topk_logprobs: Any, vocab_size: int | None, mode: str) -> dict[str, np.ndarray]:
    """All six conventions of §7 for every row, after validating the arguments."""
    if mode not in TOPK_MODES:
        raise ValueError(f"mode: expected one of {TOPK_MODES}, got {mode!r}")
    logprobs = _float64_logits("topk_logprobs", topk_logprobs, what="k")
    k = logprobs.shape[-1]
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
    if np.any(np.isnan(logprobs)):
        raise ValueError("topk_logprobs: contains NaN")
    flat = logprobs.reshape(-1, k)
    table = {name: np.empty(flat.shape[0], dtype=np.float64) for name in TOPK_MODES}
    for i, row in enumerate(flat):
        for name, value in _topk_row(i, row, vocab).items():
            table[name][i] = value
    return {name: values.reshape(logprobs.shape[:-1]) for name, values in table.items()}


def _h(x: float) -> float:
    """``h(x) = −x log x`` with ``h(0) = 0``."""
    return 0.0 if x == 0.0 else -x * math.log(x)


def _topk_row(index: int, row: np.ndarray, vocab: int | None) -> dict[str, float]:
    """The six conventions of §7 for one row of top-k log-probs (float64, plain Python)."""
    present = [float(x) for x in row if x > -math.inf]
    if not present:
        raise ValueError(f"topk_logprobs: row {index} has every entry -inf (no entry present)")
    k_present = len(present)
    probs = [math.exp(x) for x in present]
    total = math.fsum(probs)
    if not total <= 1.0 + SUM_TOLERANCE:
        raise ValueError(
            f"topk_logprobs: row {index} sums to {total} > 1 + {SUM_TOLERANCE} in probability "
            "(not the log-probs of one distribution)"
        )
    # h(p_i) = −p_i log p_i = −p_i · logprob_i (exact log, even when p_i underflows to 0).
    h_k = math.fsum(-p * x for p, x in zip(probs, present, strict=True))
    renormalized = math.fsum(
        -(p / total) * (x - math.log(total)) for p, x in zip(probs, present, strict=True)
    )

    tau = max(0.0, 1.0 - total)  # tail mass; 1 < S <= 1 + 1e-3 is rounding: tau = 0
    result = {"truncated": h_k, "bucket": h_k + _h(tau), "renormalized": renormalized}
    if vocab is None:
        return result

    m = vocab - k_present  # tail size
    if m == 0 or tau == 0.0:  # k' = V: the tail is empty and tau is ignored
        upper = lower = h_k
    else:
        upper = h_k + tau * math.log(m / tau)
        cap = min(probs)  # every tail entry is <= the smallest listed probability
        if cap == 0.0 or math.floor(tau / cap) + 1 > m:
            lower = upper  # n + 1 > m: rounding made the data inconsistent (§7)
        else:
            n = math.floor(tau / cap)
            r = tau - n * cap
            lower = h_k + n * _h(cap) + _h(r)
    result.update(lower=lower, upper=upper, estimate=(lower + upper) / 2.0)
    return result


# ---------------------------------------------------------------------------------------------
# Argument checks (conventions.md, "Inputs and errors")
# ---------------------------------------------------------------------------------------------


def _as_array(name: str, x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__") and type(x).__module__.startswith("torch"):
        raise TypeError(f"{name}: got a torch tensor; use entcore.torch for tensors")
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}") from err


def _float64_logits(name: str, x: Any, what: str = "V") -> np.ndarray:
    """``x`` (a float array of rank ≥ 1, last dimension ≥ 1) upcast exactly to float64 (a copy)."""
    array = _as_array(name, x)
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected float32, float16, bfloat16 or float64, got dtype {array.dtype}"
        )
    if array.ndim < 1:
        raise ValueError(f"{name}: expected at least 1 dimension, got shape {array.shape}")
    if array.shape[-1] < 1:
        raise ValueError(f"{name}: the last dimension ({what}) is empty, shape {array.shape}")
    return array.astype(np.float64)  # exact for every accepted dtype; never modifies the input


def _float64_matrix(name: str, x: Any, ndim: int) -> np.ndarray:
    array = _as_array(name, x)
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected float32, float16, bfloat16 or float64, got dtype {array.dtype}"
        )
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {array.shape}")
    return array.astype(np.float64)


def _index_array(name: str, x: Any) -> np.ndarray:
    array = _as_array(name, x)
    if array.dtype.kind not in "iu" or array.dtype == np.uint64:
        raise TypeError(f"{name}: expected an int32 or int64 array, got dtype {array.dtype}")
    return array.astype(np.int64)


def _row_temperatures(temperature: Any, row_shape: tuple[int, ...]) -> np.ndarray:
    """One float64 temperature per row (flat), each finite and ``> 0`` (``token.md`` §1)."""
    values = np.asarray(temperature, dtype=np.float64)
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"temperature: every value must be finite and > 0, got {temperature}")
    try:
        values = np.broadcast_to(values, row_shape)
    except ValueError:
        raise ValueError(
            f"temperature: shape {values.shape} does not broadcast to the row shape {row_shape}"
        ) from None
    return values.reshape(-1)


def _check_nan_policy(nan_policy: str) -> bool:
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy: expected one of {NAN_POLICIES}, got {nan_policy!r}")
    return nan_policy == "propagate"


def _check_ignore_index(ignore_index: int | None) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int or None, got {type(ignore_index).__name__}")
    return int(ignore_index)


def _check_alpha(alpha: Any) -> float:
    if np.ndim(alpha) != 0:
        raise ValueError(f"alpha: expected a scalar in [0, inf], got shape {np.shape(alpha)}")
    value = float(alpha)
    if not value >= 0.0:
        raise ValueError(f"alpha: expected a value in [0, inf], got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Nucleus entropy (rollout.md §13, placed in the token domain)
# ---------------------------------------------------------------------------------------------

#: The ``1e-12`` of the SIREN formula (``q = p·keep / (Σ p·keep + 1e-12)``, ``log(q + 1e-12)``).
NUCLEUS_EPS = 1e-12


def nucleus_entropy(
    logits: Any, *, top_p: float = 0.8, top_k: int = 10000, temperature: Any = 1.0
) -> np.ndarray:
    """Entropy of the renormalised top-p nucleus (``rollout.md`` §13), in nats, per row.

    ``p = softmax(z / T)``; the ``top_k`` largest logits in descending order (ties by lower
    index; ``top_k`` larger than ``V`` means all ``V``); ``C_r = Σ_{i≤r} p_(i)`` (ranks from 0,
    accumulated in rank order); cut ``c = min{r : C_r ≥ top_p}`` (``c = min(top_k, V)`` if never
    reached); keep the ranks ``r < c`` (the token crossing ``top_p`` is excluded, so a top-1
    probability ``≥ top_p`` leaves an empty nucleus and ``H^p = 0``);
    ``q = p·keep / (Σ p·keep + 1e-12)``, ``H^p = −Σ q log(q + 1e-12)``.

    Defaults (SIREN): ``top_p`` 0.8, ``top_k`` 10 000. ``-inf`` logits have ``p = 0`` and rank
    last. NaN or ``+inf`` logits → ``ValueError`` (as :func:`token_entropy`).

    Paper: *Rethinking Entropy Regularization in Large Reasoning Models* (arXiv 2509.25133).
    Matches Linn3a/siren ``verl/verl/workers/actor/dp_actor.py :: efficient_top_p_sampling``.
    Returns float64 of shape ``logits.shape[:-1]``.
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
    rows = _Rows(logits, temperature, "raise")
    n_rows, vocab = rows.scaled.shape
    k = min(int(top_k), vocab)
    out = np.zeros(n_rows, dtype=np.float64)
    for i in range(n_rows):
        order = np.argsort(-rows.scaled[i], kind="stable")[:k]  # descending, ties by index
        p_sorted = rows.p[i][order]
        cumulative = np.cumsum(p_sorted)
        reached = np.flatnonzero(cumulative >= p_cut)
        cut = int(reached[0]) if reached.size else k
        kept = p_sorted[:cut]
        q = kept / (np.sum(kept) + NUCLEUS_EPS)
        out[i] = 0.0 - float(np.sum(q * np.log(q + NUCLEUS_EPS)))  # an empty nucleus gives +0.0
    return rows.finish(out)
