"""entcore on torch tensors: any device, differentiable where the math is (``conventions.md``).

``entcore.torch.<name>`` has the names, argument names and defaults of ``entcore.<name>`` (NumPy,
Rust core) and ``entcore.reference.<name>`` (float64 oracle). CPU tensors go through the Rust
core (bfloat16 handed over as its 16-bit pattern, zero copy); tensors on any other device stay
there and are processed in row chunks by torch (``token.md`` §8). Results are float32 tensors on
the input's device. The torch-only memory knobs (``chunk_rows``, ``row_block``, ``vocab_block``,
``vocab_process_group``) change the rounding at most (``token.md`` §8).

The rollout statistics (``rollout.md``, :mod:`entcore.torch.rollout`, and ``nucleus_entropy`` in
:mod:`entcore.torch.nucleus`) compute in float64 on the input's device and return float32 (float64
for float64 input) per-token results and losses, float64 summaries; see their module docstring.

Requires torch: ``pip install entcore[torch]``.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "entcore.torch needs PyTorch, which is not installed: pip install entcore[torch]"
    ) from err

from entcore.torch.nucleus import nucleus_entropy
from entcore.torch.rollout import (
    PPOTerms,
    aepo_select,
    aepo_temperature,
    agg_loss,
    answer_entropy,
    canon_advantages,
    centered_cov,
    clip_cov_loss,
    clip_cov_select,
    detection_statistic,
    detection_threshold,
    entropy_position_curve,
    entropy_reduction,
    entropy_summary,
    epo_band_penalty,
    epo_phase_weight,
    forking_token_loss,
    group_advantages,
    high_entropy_mask,
    hwe_count,
    hwe_threshold,
    kl_cov_loss,
    kl_cov_select,
    nll_entropy_estimate,
    pass_at_k,
    peak_entropy_mask,
    pear_reward,
    phase_boundary,
    phase_entropy,
    ppo_loss,
    siren_regularizer,
    spear_recalibrate,
    spear_schedules,
    steer_weights,
    step_entropy_means,
    support_epsilon,
    support_metrics,
    window_entropy,
)
from entcore.torch.token import (
    TopkEntropy,
    collision_probability,
    renyi_entropy,
    token_entropy,
    token_logprob,
    token_logprob_entropy,
    token_logprob_entropy_linear,
    topk_entropy,
    topk_entropy_bounds,
)

__all__ = [
    "TopkEntropy",
    "collision_probability",
    "renyi_entropy",
    "token_entropy",
    "token_logprob",
    "token_logprob_entropy",
    "token_logprob_entropy_linear",
    "topk_entropy",
    "topk_entropy_bounds",
    # rollout.md (entcore.torch.rollout, entcore.torch.nucleus)
    "PPOTerms",
    "aepo_select",
    "aepo_temperature",
    "agg_loss",
    "answer_entropy",
    "canon_advantages",
    "centered_cov",
    "clip_cov_loss",
    "clip_cov_select",
    "detection_statistic",
    "detection_threshold",
    "entropy_position_curve",
    "entropy_reduction",
    "entropy_summary",
    "epo_band_penalty",
    "epo_phase_weight",
    "forking_token_loss",
    "group_advantages",
    "high_entropy_mask",
    "hwe_count",
    "hwe_threshold",
    "kl_cov_loss",
    "kl_cov_select",
    "nll_entropy_estimate",
    "nucleus_entropy",
    "pass_at_k",
    "peak_entropy_mask",
    "pear_reward",
    "phase_boundary",
    "phase_entropy",
    "ppo_loss",
    "siren_regularizer",
    "spear_recalibrate",
    "spear_schedules",
    "steer_weights",
    "step_entropy_means",
    "support_epsilon",
    "support_metrics",
    "window_entropy",
]
