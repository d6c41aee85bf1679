"""Representation geometry (``matrix.md`` §3) on one token set, NumPy face next to the float64
reference in one run.

A ``(tokens, dim) = (4096, 576)`` float32 set (SmolLM2-135M's hidden size), correlated features:
TwoNN (Rust brute-force nearest neighbours vs the reference's blocked NumPy differences) and the
von Neumann entropy of the covariance (NumPy BLAS ``XᵀX`` + the Rust float64 symmetric
eigensolver vs ``numpy.linalg.eigvalsh``). Ratios are the reference's time over the NumPy face's,
measured side by side; the two results are printed to show they agree.

    python benchmarks/cpu_geometry.py [--tokens 4096] [--dim 576] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from _harness import Row, machine, median_ms, print_table, write_json

import entcore
from entcore.reference import geometry as geo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="bench-results/cpu_geometry.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.tokens, args.dim)
    mix = rng.standard_normal((args.dim, args.dim)).astype(np.float32) / math.sqrt(args.dim)
    x = rng.standard_normal(shape, dtype=np.float32) @ mix
    reps = args.repeats

    rows: list[Row] = []
    for name, face, ref, note in (
        (
            "twonn_dimension",
            entcore.twonn_dimension,
            geo.twonn_dimension,
            "exact f64 differences, N^2 D",
        ),
        (
            "von_neumann_entropy",
            entcore.von_neumann_entropy,
            geo.von_neumann_entropy,
            "f64 X^T X + symmetric eigenvalues",
        ),
    ):
        t_face = median_ms(lambda f=face: f(x), reps)
        t_ref = median_ms(lambda f=ref: f(x), 1, warmup=0)
        got, want = face(x), ref(x)
        rows.append(Row(f"entcore.{name} (NumPy face, Rust)", t_face, x.size / t_face / 1e6, 1.0))
        rows.append(
            Row(
                f"entcore.reference.{name} (NumPy)",
                t_ref,
                x.size / t_ref / 1e6,
                t_ref / t_face,
                f"{note}; |face - reference| = {abs(got - want):.1e}",
            )
        )
    info = machine()
    print(
        f"CPU: {info['cpu']}, {info['cores']} cores; entcore {info['entcore']} "
        f"({info['entcore_kernels']}, {info['entcore_threads']} threads); numpy {info['numpy']}"
    )
    print_table(f"Geometry of one token set {shape}, float32", rows)
    write_json(
        args.json, "cpu_geometry", {"rows": [r.__dict__ for r in rows], "shape": list(shape)}
    )


if __name__ == "__main__":
    main()
