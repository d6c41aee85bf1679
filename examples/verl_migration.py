"""Swap verl's / TRL's entropy and log-prob for entcore's in a training step (``token.md`` §9).

The usual code divides the logits by the temperature in place, then makes two passes, one of
which materialises a ``(N, V)`` softmax, and returns NaN wherever a logit is ``-inf`` (padded or
masked vocabulary entries). entcore makes one pass, leaves the logits untouched, stays finite,
and its backward is NaN-free. This script runs both on logits with a masked vocabulary tail and
shows the loss and gradients side by side.

    python examples/verl_migration.py
"""

from __future__ import annotations

import torch

import entcore.torch as ect

torch.manual_seed(0)
N, V, T = 256, 4096, 0.7
logits = torch.randn(N, V) * 3
logits[:, -64:] = float("-inf")  # the padded tail of the vocabulary
labels = torch.randint(0, V - 64, (N,))
advantages = torch.randn(N)


def verl_style(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's ``entropy_from_logits`` and ``logprobs_from_logits`` after ``logits.div_(T)``."""
    z = z / T  # verl divides in place; a copy here keeps the comparison fair
    p = torch.softmax(z, dim=-1)
    entropy = torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)
    logprob = torch.log_softmax(z, dim=-1).gather(-1, labels[:, None])[:, 0]
    return logprob, entropy


for name, fn in (
    ("verl form", verl_style),
    ("entcore  ", lambda z: ect.token_logprob_entropy(z, labels, temperature=T)),
):
    z = logits.clone().requires_grad_(True)
    logprob, entropy = fn(z)
    loss = -(advantages * logprob).mean() - 1e-3 * entropy.mean()
    loss.backward()
    print(
        f"{name}: loss {loss.item():+.6f}, mean entropy {entropy.mean().item():.4f} nats, "
        f"NaN gradients: {int(torch.isnan(z.grad).sum())} of {z.grad.numel()}"
    )
