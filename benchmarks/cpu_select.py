"""The exact top-ρ threshold and mask of ``rollout.md`` §3 against NumPy and torch, in one run.

For each N (default 1e3 … 1e8 float32 token entropies, gamma-distributed like real ones with many
near-zero values): ``entcore.high_entropy_mask`` (threshold *and* mask, exact, TRL's
``"linear"`` rule), ``np.partition`` at the order statistic, ``np.quantile(..., "linear")``,
``torch.kthvalue`` and ``torch.quantile`` (which refuses more than 2^24 elements). Ratios are
times over entcore's. Checks on the way that entcore's threshold equals ``np.quantile``'s.

    python benchmarks/cpu_select.py [--sizes 1e3 1e5 1e7 5e7 1e8] [--rho 0.2] [--json PATH]
"""

from __future__ import annotations

import argparse

import numpy as np
from _harness import Row, machine, median_ms, print_table, write_json

import entcore.rollout as rollout


def bench_size(h: np.ndarray, rho: float, repeats: int, torch) -> list[Row]:
    n = h.shape[0]
    q = 1.0 - rho
    k = int(round(q * (n - 1)))
    reps = repeats if n <= 10_000_000 else 3
    padded = h[None, :]
    t_ec = median_ms(lambda: rollout.high_entropy_mask(padded, rho=rho), reps)
    _, tau = rollout.high_entropy_mask(padded, rho=rho, return_threshold=True)
    # np.quantile interpolates in float32 for float32 input; entcore's tau is float64.
    agrees = bool(np.isclose(float(np.quantile(h, q)), float(tau[0]), rtol=1e-6, atol=0))
    measured = [
        (
            "entcore.high_entropy_mask (threshold + mask)",
            t_ec,
            f"threshold = np.quantile (1e-6): {agrees}",
        ),
        ("one read (h.sum())", median_ms(lambda: h.sum(), reps), "memory floor"),
        (
            "np.partition at the order statistic",
            median_ms(lambda: np.partition(h, k), reps),
            "one order statistic, no mask",
        ),
        (
            "np.quantile(h, 1 - rho) (linear)",
            median_ms(lambda: np.quantile(h, q), reps),
            "threshold only",
        ),
    ]
    if torch is not None:
        ht = torch.from_numpy(h)
        measured.append(
            (
                "torch.kthvalue",
                median_ms(lambda: torch.kthvalue(ht, k + 1), reps),
                "one order statistic",
            )
        )
        try:
            measured.append(
                ("torch.quantile", median_ms(lambda: torch.quantile(ht, q), reps), "threshold only")
            )
        except RuntimeError as err:
            measured.append(("torch.quantile", float("nan"), f"fails: {str(err)[:48]}"))
    return [Row(name, ms, n / ms / 1e6, ms / t_ec, note) for name, ms, note in measured]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e5, 1e6, 1e7, 5e7, 1e8])
    parser.add_argument("--rho", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--json", default="bench-results/cpu_select.json")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(args.torch_threads)
    except ImportError:
        torch = None

    info = machine()
    print(
        f"CPU: {info['cpu']}, {info['cores']} cores; entcore {info['entcore']} "
        f"({info['entcore_threads']} threads); numpy {info['numpy']}; torch {info.get('torch')}"
    )
    results = {}
    rng = np.random.default_rng(0)
    for size in args.sizes:
        n = int(size)
        rows = bench_size(rng.gamma(0.3, 1.0, n).astype(np.float32), args.rho, args.repeats, torch)
        print_table(f"N = {n:,} float32 entropies, rho = {args.rho}", rows)
        results[str(n)] = [r.__dict__ for r in rows]
    write_json(args.json, "cpu_select", {"rho": args.rho, "results": results})


if __name__ == "__main__":
    main()
