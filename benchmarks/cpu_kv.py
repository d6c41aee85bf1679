"""One layer of KV-cache compression (``matrix.md`` §2.4-2.6) on each face, in one run.

A Llama-3-8B-shaped layer by default: ``B = 1``, 32 query / 8 KV heads, ``N`` tokens, head_dim 128,
float32 post-RoPE queries of the last ``window`` positions and keys/values. Per face: SnapKV scores
from the queries and the GQA keys (``window`` 32, max pooling 7), ``select_tokens`` with per-head
budgets (UNComp's 1:2 groups at compression ratio 0.75) and ``compress_kv`` into the grouped
layout. Faces: ``entcore.kv`` (vectorised NumPy), ``entcore.torch.kv`` on CPU tensors and the
float64 reference (loops; only at the smallest size). Ratios are times over the NumPy face's.

    python benchmarks/cpu_kv.py [--tokens 1024 4096 16384] [--json PATH]

The scores' ``q·kᵀ`` runs in NumPy's BLAS: on a busy machine OpenBLAS's own threads can cost
more than they bring (``OPENBLAS_NUM_THREADS=1`` was 16x faster for this product on a loaded
2-core machine); say which setting a reported number used.
"""

from __future__ import annotations

import argparse

import numpy as np
from _harness import Row, machine, median_ms, print_table, write_json

import entcore
from entcore import kv
from entcore.reference import kv as ref


def pipeline(face, q, k, v, budgets, window):
    scores = face.snapkv_scores(queries=q, keys=k, window=window)
    idx, lengths = face.select_tokens(scores, budgets)
    return face.compress_kv(k, v, idx, lengths, layout="grouped")


def bench(n: int, args, torch) -> list[Row]:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(1, args.heads, args.window, args.dim)).astype(np.float32)
    k = rng.normal(size=(1, args.kv_heads, n, args.dim)).astype(np.float32)
    v = rng.normal(size=(1, args.kv_heads, n, args.dim)).astype(np.float32)
    labels = np.arange(args.kv_heads) % 2
    plan = entcore.allocate_budgets(
        entcore.budget_weights(labels), n_tokens=n, compression_ratio=0.75, protected=args.window
    )
    budgets = plan.budgets[0]
    t_np = median_ms(lambda: pipeline(kv, q, k, v, budgets, args.window), args.repeats)
    measured = [("entcore.kv (NumPy)", t_np, f"kept {plan.kept} of {args.kv_heads * n}")]
    if torch is not None:
        import entcore.torch as tface

        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        tb = torch.from_numpy(budgets.copy())
        t_torch = median_ms(lambda: pipeline(tface, tq, tk, tv, tb, args.window), args.repeats)
        measured.append(("entcore.torch.kv (CPU tensors)", t_torch, ""))
    if n <= args.reference_max:
        t_ref = median_ms(lambda: pipeline(ref, q, k, v, budgets, args.window), 1, warmup=0)
        measured.append(("entcore.reference.kv (float64 loops)", t_ref, "the oracle"))
    elements = k.size
    return [Row(name, ms, elements / ms / 1e6, ms / t_np, note) for name, ms, note in measured]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-max", type=int, default=1024)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--json", default="bench-results/cpu_kv.json")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(args.torch_threads)
    except ImportError:
        torch = None
    info = machine()
    print(
        f"CPU: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}; torch {info['torch']}"
    )
    results = {}
    for n in args.tokens:
        rows = bench(n, args, torch)
        print_table(
            f"N = {n:,}: {args.heads} query / {args.kv_heads} KV heads, d = {args.dim}, "
            f"window {args.window}; Gelem/s over the keys",
            rows,
        )
        results[str(n)] = [r.__dict__ for r in rows]
    write_json(args.json, "cpu_kv", {"results": results})


if __name__ == "__main__":
    main()
