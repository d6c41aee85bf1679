"""Per-query attention entropy (``more.md`` §1) of one layer's attention maps, side by side.

A float32 ``(B, H, Q, K)`` causal attention map (softmax of Gaussian scores, ``-inf`` above the
diagonal) and its scores. Timed in one process: ``entcore.attention_entropy`` from probabilities
(NumPy blocks, float32 with float64 row sums) and from scores (the Rust token-entropy kernel
over rows), the float64 reference, the usual torch forms ``-(p * log p).sum(-1)`` (with
``torch.special.xlogy`` so that zeros give 0) and ``Categorical(probs).entropy()``, and
``entcore.torch.attention_entropy``. Ratios are times over entcore's from probabilities.

    python benchmarks/cpu_attention.py [--shape 4 9 512 512] [--json PATH]
"""

from __future__ import annotations

import argparse

import numpy as np
from _harness import Row, machine, median_ms, print_table, write_json

import entcore
from entcore.reference import measures as reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 9, 512, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--json", default="bench-results/cpu_attention.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)
    import entcore.torch as et

    b, h, q, k = args.shape
    rng = np.random.default_rng(0)
    causal = np.arange(k)[None, :] <= k - q + np.arange(q)[:, None]
    scores = np.where(causal, rng.normal(size=(b, h, q, k)), -np.inf).astype(np.float32)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    probs = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    pt, st = torch.from_numpy(probs), torch.from_numpy(scores)
    n = probs.size

    want = reference.attention_entropy(probs)
    got = entcore.attention_entropy(probs)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    t_ec = median_ms(lambda: entcore.attention_entropy(probs), args.repeats)
    measured = [
        ("entcore.attention_entropy, probabilities", t_ec, f"max rel. error {err:.1e}"),
        (
            "entcore.attention_entropy, scores (from_logits)",
            median_ms(lambda: entcore.attention_entropy(scores, from_logits=True), args.repeats),
            "Rust token kernel",
        ),
        (
            "float64 reference, probabilities",
            median_ms(lambda: reference.attention_entropy(probs), 1, 0),
            "oracle",
        ),
        (
            "torch -xlogy(p, p).sum(-1)",
            median_ms(lambda: -torch.special.xlogy(pt, pt).sum(-1), args.repeats),
            "float32",
        ),
        (
            "torch Categorical(probs).entropy()",
            median_ms(
                lambda: torch.distributions.Categorical(probs=pt, validate_args=False).entropy(),
                args.repeats,
            ),
            "float32",
        ),
        (
            "entcore.torch.attention_entropy, probabilities",
            median_ms(lambda: et.attention_entropy(pt), args.repeats),
            "float32, differentiable",
        ),
        (
            "entcore.torch.attention_entropy, scores",
            median_ms(lambda: et.attention_entropy(st, from_logits=True), args.repeats),
            "float32, differentiable",
        ),
    ]
    info = machine()
    print(
        f"CPU: {info['cpu']}, {info['cores']} cores; entcore {info['entcore']} "
        f"({info['entcore_threads']} threads); numpy {info['numpy']}; torch {info.get('torch')}"
    )
    rows = [Row(name, ms, n / ms / 1e6, ms / t_ec, note) for name, ms, note in measured]
    print_table(f"attention entropy of a causal ({b}, {h}, {q}, {k}) float32 map", rows)
    write_json(args.json, "cpu_attention", {"shape": args.shape, "rows": rows})


if __name__ == "__main__":
    main()
