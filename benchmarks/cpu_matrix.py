"""The CPU matrix-entropy table of ``performance.md``, reproduced next to entcore in one run.

One layer of attention states, ``(heads, tokens, head_dim) = (32, 4096, 128)`` float32: UNComp's
matrix entropy (centre, row-normalise, ``d × d`` second moments, float64 symmetric eigenvalues,
top-32 partial sum over ``ln d``) by ``entcore.matrix_entropy``, by NumPy (einsum Gram,
``np.linalg.eigvalsh``) and by torch (batched Gram, ``torch.linalg.eigvalsh``), beside the torch
batched Gram product alone; then a 32-layer profile (one ``matrix_entropy`` call per layer, as a
capture hook makes them). Ratios are times over entcore's, all measured side by side.

    python benchmarks/cpu_matrix.py [--heads 32] [--tokens 4096] [--dim 128] [--layers 32]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from _harness import Row, machine, median_ms, print_table, write_json

import entcore


def numpy_matrix_entropy(x: np.ndarray, k: int = 32) -> np.ndarray:
    """UNComp's steps in NumPy: centre, row-normalise, einsum Gram, float64 ``eigvalsh``."""
    z = x - x.mean(axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=2, keepdims=True)
    a = np.einsum("hnd,hne->hde", z, z, optimize=True).astype(np.float64) / x.shape[1]
    a /= np.trace(a, axis1=1, axis2=2)[:, None, None]
    lam = np.clip(np.linalg.eigvalsh(a)[:, ::-1][:, :k], 0, None) + 1e-10
    return -(lam * np.log(lam)).sum(axis=1) / math.log(x.shape[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--json", default="bench-results/cpu_matrix.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.heads, args.tokens, args.dim)
    mix = rng.standard_normal((args.dim, args.dim)).astype(np.float32) / math.sqrt(args.dim)
    x = rng.standard_normal(shape, dtype=np.float32) @ mix + 0.5
    elems = x.size
    reps = args.repeats

    measured: list[tuple[str, float, str]] = []
    t_entcore = median_ms(lambda: entcore.matrix_entropy(x), reps)
    measured.append(("entcore.matrix_entropy (UNComp defaults)", t_entcore, "k = 32, float32 out"))
    measured.append(
        (
            "entcore.matrix_renyi2 (same steps, no eigenvalues)",
            median_ms(lambda: entcore.matrix_renyi2(x), reps),
            "centring, normalisation, second moments only",
        )
    )
    measured.append(
        (
            "NumPy: center, row-normalise, einsum Gram, eigvalsh (float64), entropy",
            median_ms(lambda: numpy_matrix_entropy(x), 3),
            "float32 Gram via BLAS",
        )
    )
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.torch_threads)
        t = torch.from_numpy(x)

        def torch_matrix_entropy(s: torch.Tensor, k: int = 32) -> torch.Tensor:
            z = s - s.mean(dim=1, keepdim=True)
            z = z / torch.linalg.vector_norm(z, dim=2, keepdim=True)
            a = (z.mT @ z).double() / s.shape[1]
            a = a / a.diagonal(dim1=1, dim2=2).sum(dim=1)[:, None, None]
            lam = torch.linalg.eigvalsh(a).flip(-1)[:, :k].clamp(min=0) + 1e-10
            return -(lam * lam.log()).sum(dim=1) / math.log(s.shape[2])

        measured.append(
            (
                "torch: same steps, torch.linalg.eigvalsh",
                median_ms(lambda: torch_matrix_entropy(t), 3),
                "float32 Gram, float64 eigvalsh",
            )
        )
        measured.append(
            (
                "torch batched Gram X^T X alone",
                median_ms(lambda: t.mT @ t, reps),
                f"{2 * elems * args.dim / 1e9:.1f} GFLOP",
            )
        )
        ours, theirs = entcore.matrix_entropy(x), torch_matrix_entropy(t).numpy()
        print(f"max |entcore - torch| = {np.abs(ours - theirs).max():.2e}")

    rows = [Row(name, ms, elems / ms / 1e6, ms / t_entcore, note) for name, ms, note in measured]
    info = machine()
    print(
        f"CPU: {info['cpu']}, {info['cores']} cores; entcore {info['entcore']} "
        f"({info['entcore_kernels']}, {info['entcore_threads']} threads); numpy {info['numpy']}; "
        f"torch {info.get('torch')} ({info.get('torch_threads')} threads)"
    )
    print_table(f"Matrix entropy of one layer {shape}, float32 ({x.nbytes / 1e6:.0f} MB)", rows)

    # A profile: one call per layer. Four distinct layers, cycled (the kernel reads each afresh).
    layers = [x] + [
        (rng.standard_normal(shape, dtype=np.float32) @ mix) for _ in range(min(3, args.layers))
    ]
    start = time.perf_counter()
    profile = [entcore.matrix_entropy(layers[i % len(layers)]) for i in range(args.layers)]
    t_profile = time.perf_counter() - start
    print(
        f"\n{args.layers}-layer profile ({args.layers} calls on {shape}): {t_profile:.2f} s "
        f"({len(profile)} x {profile[0].shape} entropies)"
    )

    by_name = {r.method: r for r in rows}
    numpy_ms = by_name["NumPy: center, row-normalise, einsum Gram, eigvalsh (float64), entropy"].ms
    print(
        "\nGoals (performance.md): one layer <= 35 ms and >= 3x NumPy (within 1.5x of the Gram "
        "product alone); a 32-layer profile <= 1.2 s"
    )
    line = f"  one layer {t_entcore:.1f} ms; {numpy_ms / t_entcore:.1f}x NumPy"
    if torch is not None:
        gram_ms = by_name["torch batched Gram X^T X alone"].ms
        line += f"; {t_entcore / gram_ms:.2f}x the torch Gram product's time"
    print(line + f"; profile {t_profile:.2f} s")
    write_json(
        args.json,
        "cpu_matrix",
        {"rows": [r.__dict__ for r in rows], "shape": list(shape), "profile_s": t_profile},
    )


if __name__ == "__main__":
    main()
