"""``process_group`` of the torch face (``rollout.md`` §0.2, §3, §5, §6, §17.4).

Over a gloo group of 4 CPU processes and a 2-process subgroup of it (global ranks 1 and 3; the
processes start once and run every case in both), each rank holds a contiguous block of rows,
some ranks none or only fully masked ones. Every rank's result must equal its part of the
single-process result on the concatenated rows: masks and selections exactly, thresholds,
covariances and weights bit for bit. Each rank also counts its collective calls, which must be
the fixed number each function documents whatever the data.

The workers are this file run as a script (``python tests/test_torch_distributed.py``), with a
``FileStore`` rendezvous in the test's temporary directory.
"""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from helpers import require_torch

torch = require_torch()

import entcore.torch as et  # noqa: E402
from entcore.reference import rollout as ref_rollout  # noqa: E402

COLLECTIVES = ("all_gather", "all_reduce", "broadcast")
TOKEN_ARGS = ("entropy", "advantages", "logprob", "old_logprob", "mask")


# ---------------------------------------------------------------------------------------------
# Cases: global inputs, the rows of each rank, and the expected number of collective rounds
# ---------------------------------------------------------------------------------------------


def _bounds(n_rows: int, world: int) -> list[int]:
    """Unequal blocks of rows per rank; with 4 ranks the second holds no row and the third only
    row 3, which is fully masked (:func:`_batch`)."""
    if world == 2:
        return [0, min(3, n_rows), n_rows]
    return [0, min(3, n_rows), min(3, n_rows), min(4, n_rows), n_rows]


def _batch(
    gen: torch.Generator, layout: str, ties: bool, n_rows: int = 8, width: int = 9
) -> dict[str, Any]:
    """Token inputs of one batch: padded ``(B, L)`` or packed with ``cu_seqlens``.

    Row 1 is empty, row 3 fully masked, and values at masked positions are NaN (never read).
    With ``ties`` the values come from a few levels.
    """
    lengths = torch.randint(0, width + 1, (n_rows,), generator=gen)
    if n_rows > 1:
        lengths[1] = 0  # an empty row

    def draw(scale: float, shift: float = 0.0) -> torch.Tensor:
        x = torch.rand((n_rows, width), generator=gen, dtype=torch.float64)
        if ties:
            x = torch.floor(x * 4) / 4
        return (x * scale + shift).to(torch.float32)

    entropy = draw(3.0)
    if n_rows:
        entropy[0, :3] = torch.tensor([-0.0, 0.0, -1.5])  # signed zeros and a negative value
    row_adv = torch.randn(n_rows, 1, generator=gen, dtype=torch.float64)
    advantages = (torch.round(row_adv) if ties else row_adv).expand(n_rows, width).float()
    logprob = -draw(2.0)
    old_logprob = logprob + 0.3 * (draw(1.0) - 0.5)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    mask &= torch.rand((n_rows, width), generator=gen) > 0.15  # holes
    if n_rows > 3:
        mask[3] = False
    tokens = {
        "entropy": entropy,
        "advantages": advantages.contiguous(),
        "logprob": logprob,
        "old_logprob": old_logprob,
    }
    for name in tokens:
        tokens[name] = torch.where(mask, tokens[name], math.nan)
    if layout == "padded":
        return {**tokens, "mask": mask}
    slots = torch.arange(width)[None, :] < lengths[:, None]
    cu = torch.zeros(n_rows + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(lengths, 0)
    packed = {name: t[slots] for name, t in tokens.items()}
    return {**packed, "mask": mask[slots], "cu_seqlens": cu}


def _cases() -> list[dict[str, Any]]:
    """Every case: ``fn``, token and row inputs, keyword arguments, the expected round count."""
    gen = torch.Generator().manual_seed(20260521)
    cases: list[dict[str, Any]] = []

    def add(fn: str, batch: dict[str, Any], names: tuple[str, ...], rounds: int, **kw: Any):
        inputs = {k: batch[k] for k in (*names, "mask", "cu_seqlens") if k in batch}
        cases.append({"fn": fn, "inputs": inputs, "kwargs": kw, "rounds": rounds})

    ids = torch.tensor([3, 1, 3, 0, 1, 7, 0, 3])  # micro-batch ids, not sorted
    entropy_only = ("entropy",)
    cov_args = ("advantages", "logprob")
    clip_args = ("advantages", "logprob", "old_logprob")
    steer_args = ("advantages", "logprob", "old_logprob", "entropy")
    for layout in ("padded", "packed"):
        for ties in (False, True):
            batch = _batch(gen, layout, ties)
            # §3: rows (1) [+ ids (1)] + counts (1) + two digit rounds (2) [+ ties (1), "topk"]
            for method in ("linear", "lower", "higher", "nearest", "midpoint", "topk"):
                add("high_entropy_mask", batch, entropy_only, 4 + (method == "topk"),
                    rho=0.37, method=method)  # fmt: skip
            for method in ("linear", "topk"):
                extra = method == "topk"
                for rho in (0.2, 1.0, 0.0):
                    add("high_entropy_mask", batch, entropy_only, 4 + extra, rho=rho, method=method)
                add("high_entropy_mask", batch, entropy_only, 5 + extra, method=method,
                    micro_batch=ids, rho=0.5)  # fmt: skip
                add("high_entropy_mask", batch, entropy_only, 4 + extra, method=method,
                    micro_batch=3, rho=0.5)  # fmt: skip
            add("high_entropy_mask", batch, entropy_only, 4, scope="batch", micro_batch=ids)
            # §5: rows (1) [+ ids (1)] + two per-row gathers (2)
            add("centered_cov", batch, cov_args, 3)
            add("centered_cov", batch, cov_args, 4, micro_batch=ids)
            add("centered_cov", batch, cov_args, 3, micro_batch=2)
            # Clip-Cov: centered_cov's rounds + candidate counts (1) [+ broadcast (1)]
            clip = {"lb": -0.5, "ub": 0.5, "clip_low": 0.1}
            for ratio in (0.3, 1e-4, 1.0):
                add("clip_cov_select", batch, clip_args, 4, ratio=ratio, seed=7, **clip)
            add("clip_cov_select", batch, clip_args, 5, ratio=0.3, seed=11, micro_batch=ids,
                return_candidates=True, **clip)  # fmt: skip
            add("clip_cov_select", batch, clip_args, 5, ratio=0.3, generator=5, **clip)
            add("clip_cov_select", batch, clip_args, 6, ratio=0.2, generator=6,
                micro_batch=ids, **clip)  # fmt: skip
            add("clip_cov_select", batch, clip_args, 4, ratio=0.3, perm=True, **clip)
            # KL-Cov: centered_cov's rounds + counts (1) + four digit rounds (4) + ties (1)
            for ratio in (0.2, 1e-4, 1.0):
                add("kl_cov_select", batch, cov_args, 9, ratio=ratio)
            add("kl_cov_select", batch, cov_args, 10, ratio=0.3, micro_batch=ids)
            add("kl_cov_select", batch, cov_args, 9, ratio=0.3, micro_batch=3)
            # STEER: rows (1) [+ ids (1)] + extrema (1)
            for mode in ("exp", "linear"):
                add("steer_weights", batch, steer_args, 2, mode=mode)
                add("steer_weights", batch, steer_args, 3, mode=mode, micro_batch=ids)
    # NaN policies (§3): a NaN at a valid position of rank 0's rows and of the last rank's.
    nan_batch = _batch(gen, "padded", False)
    nan_batch["entropy"][0, 4] = math.nan
    nan_batch["mask"][0, 4] = True
    nan_batch["entropy"][7, 0] = math.nan
    nan_batch["mask"][7, 0] = True
    for policy in ("omit", "propagate"):
        for method in ("linear", "topk"):
            add("high_entropy_mask", nan_batch, entropy_only, 5 + (method == "topk"),
                nan_policy=policy, method=method, micro_batch=ids)  # fmt: skip
    add("high_entropy_mask", nan_batch, entropy_only, 1, nan_policy="raise")  # every rank raises
    # Half-precision input, widened exactly (§3).
    bf16 = _batch(gen, "packed", True)
    bf16["entropy"] = bf16["entropy"].to(torch.bfloat16)
    add("high_entropy_mask", bf16, entropy_only, 4, rho=0.3)
    # A larger batch (about 5000 tokens): order statistics in many digit buckets.
    large = _batch(gen, "packed", False, n_rows=40, width=250)
    for method in ("linear", "topk"):
        add("high_entropy_mask", large, entropy_only, 4 + (method == "topk"), method=method)
        add("high_entropy_mask", large, entropy_only, 5 + (method == "topk"), method=method,
            micro_batch=torch.arange(40) % 3)  # fmt: skip
    add("kl_cov_select", large, cov_args, 9, ratio=0.01)
    add("clip_cov_select", large, clip_args, 4, ratio=0.05, seed=1, lb=-0.2, ub=0.2)
    # No rows anywhere: no units.
    empty = _batch(gen, "padded", False, n_rows=0)
    add("high_entropy_mask", empty, entropy_only, 4, rho=0.3)
    add("kl_cov_select", empty, cov_args, 9)
    add("steer_weights", empty, steer_args, 2)
    return cases


def _rank_inputs(case: dict[str, Any], bounds: list[int], rank: int) -> dict[str, Any]:
    """The inputs of one rank: its block of rows (packed: their tokens and local offsets)."""
    lo, hi = bounds[rank], bounds[rank + 1]
    inputs = case["inputs"]
    out: dict[str, Any] = {}
    cu = inputs.get("cu_seqlens")
    for name, value in inputs.items():
        if name == "cu_seqlens":
            out[name] = value[lo : hi + 1] - value[lo]
        elif cu is None:
            out[name] = value[lo:hi]
        else:
            out[name] = value[int(cu[lo]) : int(cu[hi])]
    kwargs = dict(case["kwargs"])
    if isinstance(kwargs.get("micro_batch"), torch.Tensor):
        kwargs["micro_batch"] = kwargs["micro_batch"][lo:hi]
    return {**out, **kwargs}


def _call(fn: str, args: dict[str, Any], generator_seed: int, **extra: Any) -> Any:
    args = dict(args)
    if "generator" in args:
        args["generator"] = torch.Generator().manual_seed(generator_seed)
    return getattr(et, fn)(**args, **extra)


def _single_process(case: dict[str, Any]) -> Any:
    """The single-process result on the whole batch; ``None`` when it raises ``ValueError``.

    ``high_entropy_mask`` is held to the float64 oracle: the torch face's CPU fast path (the
    Rust core) does not treat ``-0.0`` as equal to ``+0.0`` at the cut, while the spec, the
    oracle and the torch device path do.
    """
    args = {**case["inputs"], **case["kwargs"]}
    try:
        if case["fn"] != "high_entropy_mask":
            return _call(case["fn"], args, case["kwargs"].get("generator", 0))
        for name in ("entropy", "mask", "cu_seqlens", "micro_batch"):
            if isinstance(args.get(name), torch.Tensor):
                value = args[name]
                args[name] = (value.float() if value.is_floating_point() else value).numpy()
        selected, tau = ref_rollout.high_entropy_mask(**args, return_threshold=True)
        return torch.from_numpy(selected), torch.from_numpy(np.asarray(tau, dtype=np.float64))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# The worker (one process per rank)
# ---------------------------------------------------------------------------------------------


#: The ranks started once for every case; the 2-rank cases run on a subgroup whose rank 0 is
#: global rank 1 (so group and global ranks differ).
STARTED = 4
PAIR = (1, 3)


def _run_cases(cases: list[dict[str, Any]], group: Any, calls: dict[str, int]) -> list[Any]:
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    results = []
    for case in cases:
        args = _rank_inputs(case, _bounds(_n_rows(case), world), rank)
        extra = {"return_threshold": True} if case["fn"] == "high_entropy_mask" else {}
        # Generators differ between ranks: the group's rank 0 draw decides (clip_cov_select).
        seed = case["kwargs"].get("generator", 0) + 1000 * rank
        before = calls["n"]
        try:
            out = _call(case["fn"], args, seed, process_group=group, **extra)
        except ValueError as err:
            out = f"ValueError: {err}"
        results.append({"out": out, "rounds": calls["n"] - before})
    return results


def _worker(rank: int, init: str, data_path: str, out_path: str) -> None:
    """One rank: every case over all ranks, then (ranks of ``PAIR``) over a 2-rank subgroup."""
    import torch.distributed as dist

    torch.set_num_threads(1)  # the ranks share the machine's cores
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=STARTED)
    pair = dist.new_group(list(PAIR))
    calls = {"n": 0}
    for name in COLLECTIVES:
        original = getattr(dist, name)

        def counted(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            calls["n"] += 1
            return _original(*args, **kwargs)

        setattr(dist, name, counted)
    cases = torch.load(data_path)
    results = {STARTED: _run_cases(cases, dist.group.WORLD, calls)}
    if rank in PAIR:
        results[len(PAIR)] = _run_cases(cases, pair, calls)
    torch.save(results, out_path)
    dist.barrier()  # no rank tears gloo down while a peer is still talking to it
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------


def _split_output(out: Any, case: dict[str, Any], bounds: list[int], rank: int) -> Any:
    """The part of a single-process result that belongs to one rank."""
    if isinstance(out, tuple):
        if case["fn"] == "high_entropy_mask":  # (mask, τ): τ is global
            return (_split_output(out[0], case, bounds, rank), out[1])
        return tuple(_split_output(o, case, bounds, rank) for o in out)
    local = _rank_inputs({"inputs": {"x": out, **_layout_of(case)}, "kwargs": {}}, bounds, rank)
    return local["x"]


def _layout_of(case: dict[str, Any]) -> dict[str, Any]:
    cu = case["inputs"].get("cu_seqlens")
    return {} if cu is None else {"cu_seqlens": cu}


def _n_rows(case: dict[str, Any]) -> int:
    cu = case["inputs"].get("cu_seqlens")
    return len(case["inputs"]["mask"]) if cu is None else len(cu) - 1


def _assert_identical(got: Any, want: Any, where: str) -> None:
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), where
        for g, w in zip(got, want, strict=True):
            _assert_identical(g, w, where)
        return
    assert isinstance(got, torch.Tensor), (where, got)
    assert got.dtype == want.dtype and got.shape == want.shape, (where, got, want)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=where)


@pytest.fixture(scope="module")
def distributed(tmp_path_factory) -> tuple[list[dict[str, Any]], dict[int, list[Any]]]:
    """``(cases, {world: per-rank results})``: the workers started once for every case."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.fail("torch.distributed with gloo is required")
    tmp_path = tmp_path_factory.mktemp("distributed")
    cases = _cases()
    for case in cases:  # perm: a permutation of the unit's global candidate count
        if case["kwargs"].get("perm") is True:
            args = {**case["inputs"], **case["kwargs"], "perm": None, "seed": 0}
            _, candidates = et.clip_cov_select(**{**args, "return_candidates": True})
            rng = np.random.default_rng(3)
            case["kwargs"]["perm"] = torch.as_tensor(rng.permutation(int(candidates.sum())))
    torch.save(cases, tmp_path / "data.pt")
    init = f"file://{tmp_path / 'rendezvous'}"
    outs = [tmp_path / f"out{rank}.pt" for rank in range(STARTED)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), init, str(tmp_path / "data.pt"), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank, out in enumerate(outs)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()
    loaded = [torch.load(out) for out in outs]
    return cases, {
        STARTED: [results[STARTED] for results in loaded],
        len(PAIR): [loaded[rank][len(PAIR)] for rank in PAIR],
    }


@pytest.mark.parametrize("world", [2, 4])
def test_process_group_equals_single_process_on_concatenation(distributed, world):
    cases, results = distributed
    selected_somewhere = 0
    for index, case in enumerate(cases):
        where = f"case {index}: {case['fn']} {case['kwargs']}"
        bounds = _bounds(_n_rows(case), world)
        want = _single_process(case)
        for rank in range(world):
            got = results[world][rank][index]
            assert got["rounds"] == case["rounds"], (where, rank, got["rounds"])
            if want is None:
                assert isinstance(got["out"], str) and got["out"].startswith("ValueError"), where
                continue
            _assert_identical(got["out"], _split_output(want, case, bounds, rank), where)
        mask = want[0] if isinstance(want, tuple) else want
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
            selected_somewhere += int(mask.any())
    assert selected_somewhere > 60  # the cases select something


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
