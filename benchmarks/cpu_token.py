"""The CPU entropy table of ``performance.md``, reproduced next to entcore in one run.

Entropy of the rows of a ``(2048, 32768)`` float32 logits matrix (268 MB): the memory floor, the
NumPy reference form, the torch forms of TRL and verl, ``Categorical``, verl's form on bfloat16,
and ``entcore.token_logprob_entropy`` (entropy *and* the sampled token's log-prob in one pass) on
float32 and bfloat16. Ratios are times over entcore's float32 time, all measured side by side.

    python benchmarks/cpu_token.py [--rows 2048] [--vocab 32768] [--json PATH]
"""

from __future__ import annotations

import argparse

import ml_dtypes
import numpy as np
from _harness import Row, machine, median_ms, print_table, write_json

import entcore


def numpy_reference_entropy(x: np.ndarray) -> np.ndarray:
    """The textbook NumPy form of the anchor: max, exp, sum, divide, dot."""
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    return np.log(s[:, 0]) - np.einsum("ij,ij->i", p, x - m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--json", default="bench-results/cpu_token.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.vocab), dtype=np.float32) * 2.0
    labels = rng.integers(0, args.vocab, args.rows)
    x_bf16 = x.astype(ml_dtypes.bfloat16)
    elems = x.size
    reps = args.repeats

    measured: list[tuple[str, float, str]] = []
    t_entcore = median_ms(lambda: entcore.token_logprob_entropy(x, labels), reps)
    measured.append(("entcore.token_logprob_entropy, float32", t_entcore, "entropy + log-prob"))
    measured.append(
        (
            "entcore.token_logprob_entropy, bfloat16",
            median_ms(lambda: entcore.token_logprob_entropy(x_bf16, labels), reps),
            "entropy + log-prob, widened in-kernel",
        )
    )
    measured.append(
        (
            "one read of the array (x.sum(axis=1)), the memory floor",
            median_ms(lambda: x.sum(axis=1), reps),
            "NumPy, 1 thread",
        )
    )
    measured.append(
        (
            "NumPy reference (max, exp, sum, divide, dot)",
            median_ms(lambda: numpy_reference_entropy(x), 3),
            "entropy only",
        )
    )
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.torch_threads)
        z = torch.from_numpy(x)
        z_bf16 = z.to(torch.bfloat16)

        def trl(t: torch.Tensor) -> torch.Tensor:
            lp = torch.log_softmax(t, dim=-1)
            return -(lp.exp() * lp).sum(dim=-1)

        def verl(t: torch.Tensor) -> torch.Tensor:
            return torch.logsumexp(t, dim=-1) - (torch.softmax(t, dim=-1) * t).sum(dim=-1)

        measured.append(
            (
                "torch log_softmax then -(exp(lp)*lp).sum() (TRL form)",
                median_ms(lambda: trl(z), 3),
                "entropy only",
            )
        )
        measured.append(
            (
                "torch logsumexp - (softmax*z).sum() (verl form)",
                median_ms(lambda: verl(z), 3),
                "entropy only",
            )
        )
        measured.append(
            (
                "torch.distributions.Categorical(logits).entropy()",
                median_ms(lambda: torch.distributions.Categorical(logits=z).entropy(), 3),
                "entropy only",
            )
        )
        measured.append(
            (
                "torch verl form on bfloat16 input",
                median_ms(lambda: verl(z_bf16), 3),
                "entropy only, bf16 arithmetic",
            )
        )

    rows = [Row(name, ms, elems / ms / 1e6, ms / t_entcore, note) for name, ms, note in measured]
    info = machine()
    print(
        f"CPU: {info['cpu']}, {info['cores']} cores; entcore {info['entcore']} "
        f"({info['entcore_kernels']}, {info['entcore_threads']} threads); numpy {info['numpy']}; "
        f"torch {info.get('torch')} ({info.get('torch_threads')} threads)"
    )
    print_table(
        f"Entropy of ({args.rows}, {args.vocab}) logits, float32 ({x.nbytes / 1e6:.0f} MB)", rows
    )
    by_name = {r.method: r for r in rows}
    floor = by_name["one read of the array (x.sum(axis=1)), the memory floor"].ms
    numpy_ref = by_name["NumPy reference (max, exp, sum, divide, dot)"].ms
    print(
        "\nGoals (performance.md): >= 3 Gelem/s float32 and bfloat16, >= 10x the NumPy "
        "reference, >= 15x torch, within 2x of the memory floor"
    )
    print(
        f"  float32 {rows[0].gelem_s:.2f} Gelem/s, bfloat16 {rows[1].gelem_s:.2f} Gelem/s; "
        f"{numpy_ref / t_entcore:.1f}x NumPy; {t_entcore / floor:.2f}x the floor's time"
    )
    if torch is not None:
        fastest_torch = min(r.ms for r in rows if r.method.startswith("torch"))
        print(f"  {fastest_torch / t_entcore:.1f}x the fastest torch form")
    write_json(
        args.json,
        "cpu_token",
        {"rows": [r.__dict__ for r in rows], "shape": [args.rows, args.vocab]},
    )


if __name__ == "__main__":
    main()
