"""Collectives behind the ``process_group`` argument of the torch face (``rollout.md`` §0.2).

With a ``torch.distributed`` process group a unit spans all ranks of the group, and a result
equals the single-process result on the rows of all ranks concatenated in rank order; the global
flat order (ties, §0.3) is rank-major, then each rank's own flat order. Nothing per token ever
crosses ranks. What does, in a fixed number of rounds that does not depend on the data:

- :func:`exchange_rows`: one ``all_gather`` of a few integers per rank (row count, grid width,
  a flag), giving each rank its row offset.
- :func:`gather_rows`: one ``all_gather`` of a few numbers per *row* (padded to the largest rank),
  for the unit ids of the rows and the per-row partial sums of the unit means, so that those
  means are computed on every rank exactly as a single process computes them.
- :func:`all_reduce_sum`, :func:`all_reduce_max`: per-unit counts and extrema.
- :func:`exclusive_offsets`: one ``all_gather`` of per-unit counts per rank, giving each rank the
  number of its units' items (candidates, ties) held by lower ranks.
- :func:`radix_select`: exact order statistics by a radix select whose 2¹⁶-bin digit histograms
  are all-reduced, one round per 16-bit digit of the order-preserving integer key (2 rounds for
  fp32 values, 4 for float64), all requested positions of all units in the same rounds
  (``rollout.md`` §3 ``process_group``). Ranks may hold any number of tokens, zero included.
- :func:`top_k`: the ``k`` largest keys per unit, ties by lower global flat index (the radix
  select plus one :func:`exclusive_offsets` round for the ties at the cut).

Every rank of the group must make the same calls in the same order (as for any collective); a
rank without rows or tokens takes part all the same (empty buffers travel as one element, so a
call makes the same collectives whatever the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: Bits per radix digit: one 2¹⁶-bin histogram per round and position.
DIGIT_BITS = 16
BINS = 1 << DIGIT_BITS
_INT64_MIN = -(2**63)


def _dist() -> Any:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group: torch.distributed is not available or not initialised")
    return dist


@dataclass(frozen=True)
class Rows:
    """The rows of one call across the group: ``counts[r]`` rows on rank ``r``.

    ``offset``: this rank's first row in the concatenation; ``total``: all rows; ``width``: the
    widest rank's grid width (the concatenated grid's width); ``flags``: one integer per rank.
    """

    group: Any
    device: torch.device
    rank: int
    counts: tuple[int, ...]
    width: int
    flags: tuple[int, ...]

    @property
    def offset(self) -> int:
        return sum(self.counts[: self.rank])

    @property
    def total(self) -> int:
        return sum(self.counts)


def _nonempty(values: torch.Tensor) -> torch.Tensor:
    """``values`` flattened, as one zero element when empty (some backends refuse empty buffers)."""
    flat = values.reshape(-1)
    return flat if flat.numel() else flat.new_zeros(1)


def exchange_rows(group: Any, n_rows: int, width: int, device: torch.device, flag: int = 0) -> Rows:
    """Row counts, grid widths and a flag of every rank (one ``all_gather``)."""
    dist = _dist()
    mine = torch.tensor([n_rows, width, flag], dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    table = torch.stack(parts).tolist()
    return Rows(
        group,
        device,
        dist.get_rank(group),
        tuple(int(r[0]) for r in table),
        max(int(r[1]) for r in table),
        tuple(int(r[2]) for r in table),
    )


def gather_rows(rows: Rows, values: torch.Tensor) -> torch.Tensor:
    """``values`` ``(n_rows, k)`` int64 or float64 of every rank, concatenated in rank order
    (one ``all_gather``, each rank padded to the largest row count)."""
    dist = _dist()
    floats = values.dtype == torch.float64
    bits = values.contiguous().view(torch.int64) if floats else values.to(torch.int64)
    longest = max(*rows.counts, 1)
    padded = torch.zeros((longest, bits.shape[1]), dtype=torch.int64, device=rows.device)
    padded[: bits.shape[0]] = bits
    parts = [torch.empty_like(padded) for _ in rows.counts]
    dist.all_gather(parts, padded, group=rows.group)
    out = torch.cat([part[:count] for part, count in zip(parts, rows.counts, strict=True)])
    return out.view(torch.float64) if floats else out


def all_reduce_sum(group: Any, values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``values`` (one ``all_reduce``; the input is not modified)."""
    out = _nonempty(values).clone()
    _dist().all_reduce(out, group=group)
    return out[: values.numel()].reshape(values.shape)


def all_reduce_max(group: Any, values: torch.Tensor) -> torch.Tensor:
    """The maximum over ranks of ``values`` (one ``all_reduce``; exact)."""
    dist = _dist()
    out = _nonempty(values).clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group)
    return out[: values.numel()].reshape(values.shape)


def exclusive_offsets(group: Any, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(offset, total)`` per unit: the items of the unit on lower ranks and on all ranks, from
    each rank's int64 ``counts`` ``(U,)`` (one ``all_gather`` of the counts only)."""
    dist = _dist()
    mine = _nonempty(counts).clone()
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    table = torch.stack(parts)[:, : counts.numel()]
    rank = dist.get_rank(group)
    return table[:rank].sum(dim=0), table.sum(dim=0)


def broadcast_first(group: Any, values: torch.Tensor) -> torch.Tensor:
    """``values`` of the group's rank 0 on every rank (one ``broadcast``)."""
    dist = _dist()
    out = values.clone()
    dist.broadcast(out, src=dist.get_global_rank(group, 0), group=group)
    return out


def radix_select(
    group: Any,
    keys: torch.Tensor,
    unit: torch.Tensor,
    n_units: int,
    positions: torch.Tensor,
    bits: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order statistics of the keys of each unit over all ranks, by an all-reduced radix select.

    ``keys`` ``(n,)`` int64, order-preserving images of the values (the caller's): in ``[0, 2³²)``
    (``bits=32``) or any int64 in signed order (``bits=64``); ``unit`` ``(n,)`` their unit;
    ``positions`` ``(U, P)`` ascending ranks (0-based, over the unit's keys on all ranks) to
    find. Returns ``(key, less, equal)``, each ``(U, P)`` int64: the key at each position and how
    many keys of the unit (all ranks) are below it and equal to it. A position outside
    ``[0, N_u)`` gives an unspecified key.

    Round ``j`` (of ``bits / 16``) counts, for every position, the ``j``-th 16-bit digit of the
    keys that agree with the digits found so far, all-reduces these ``(U, P, 2¹⁶)`` histograms,
    and walks each cumulative histogram to the digit holding the position. The first round reads
    every key once (all positions share its histogram); later rounds read only the keys still
    agreeing with some position, usually few.
    """
    device = keys.device
    n_pos = positions.shape[1]
    size = n_units * n_pos * BINS
    alive = keys ^ _INT64_MIN if bits == 64 else keys  # digits of the unsigned order
    alive_unit = unit
    matching: torch.Tensor | None = None  # (P, alive) after the first round
    remaining = positions.clone()
    less = torch.zeros_like(positions)
    key = torch.zeros_like(positions)
    hist = positions  # replaced by every round's histograms (bits ≥ 32: at least two rounds)
    for j in range(bits // DIGIT_BITS):
        shift = bits - DIGIT_BITS * (j + 1)
        digit = (alive >> shift) & (BINS - 1)
        if matching is None:  # every key agrees with the empty prefix of every position
            counts = torch.bincount(alive_unit * BINS + digit, minlength=n_units * BINS)
            local = counts[: n_units * BINS].reshape(n_units, 1, BINS).expand(-1, n_pos, -1)
        else:  # cells of keys agreeing with no prefix go to a spare last bin
            local = torch.zeros(size + 1, dtype=torch.int64, device=device)
            for p in range(n_pos):
                cell = (alive_unit * n_pos + p) * BINS + digit
                local += torch.bincount(torch.where(matching[p], cell, size), minlength=size + 1)
            local = local[:size]
        hist = all_reduce_sum(group, local.reshape(n_units, n_pos, BINS))
        cumulative = torch.cumsum(hist, dim=-1)
        found = torch.searchsorted(cumulative, remaining[..., None], right=True)
        found = found.clamp(max=BINS - 1)
        below = (torch.gather(cumulative, -1, found) - torch.gather(hist, -1, found))[..., 0]
        remaining = remaining - below
        less = less + below
        found = found[..., 0]
        # The top digit of a 64-bit key carries the sign: (d − 2¹⁵)·2⁴⁸ stays in int64.
        top = j == 0 and bits == 64
        key = key + ((found - 2**15) if top else found) * (1 << shift)
        agree = digit[None, :] == found[alive_unit].T  # (P, alive)
        matching = agree if matching is None else matching & agree
        still = torch.nonzero(matching.any(dim=0)).reshape(-1)
        alive, alive_unit, matching = alive[still], alive_unit[still], matching[:, still]
    equal = torch.gather(hist, -1, found[..., None])[..., 0]
    return key, less, equal


def top_k(
    group: Any,
    keys: torch.Tensor,
    unit: torch.Tensor,
    n_units: int,
    k: torch.Tensor,
    counts: torch.Tensor,
    bits: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k[u]`` largest keys of each unit over all ranks, ties by lower global flat index.

    ``keys``, ``unit`` ``(n,)`` in this rank's flat order; ``k``, ``counts`` ``(U,)`` int64 (the
    global key count per unit, ``0 ≤ k ≤ counts``). Returns ``(keep (n,) bool, cut (U,))``,
    ``cut`` the ``k``-th largest key (unspecified where ``k = 0``). Rounds: those of
    :func:`radix_select` plus one :func:`exclusive_offsets` for the ties at the cut.
    """
    position = (counts - k).clamp(min=0)[:, None]
    cut, less, equal = radix_select(group, keys, unit, n_units, position, bits)
    cut, less, equal = cut[:, 0], less[:, 0], equal[:, 0]
    ties_kept = k - (counts - less - equal)  # ties at the cut that make the count k
    tie = keys == cut[unit]
    tie_unit = unit[tie]
    local_ties = torch.bincount(tie_unit, minlength=n_units)[:n_units]
    before, _ = exclusive_offsets(group, local_ties)
    order = torch.sort(tie_unit, stable=True).indices  # by unit, then flat order
    first = torch.cumsum(local_ties, 0) - local_ties
    tie_rank = torch.empty_like(tie_unit)
    tie_rank[order] = torch.arange(order.shape[0], dtype=torch.int64, device=keys.device)
    tie_rank = tie_rank - first[tie_unit] + before[tie_unit]
    keep = (keys > cut[unit]) & (k[unit] > 0)
    keep[tie] = (tie_rank < ties_kept[tie_unit]) & (k[tie_unit] > 0)
    return keep, cut
