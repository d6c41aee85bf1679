"""``entcore.kv_model`` on a small random Llama (transformers): captured states are post-RoPE,
the grouped compressed cache reproduces transformers' own attention (full cache, and a uniform
plan stored in a ``DynamicCache``), and appending during generation matches one-shot decoding.

The real SmolLM2 run is ``examples/kv_compression.py`` (its weights load in 15-150 s here)."""

from __future__ import annotations

import pytest

import entcore
from entcore import kv_model
from helpers import require_modules, require_torch

torch = require_torch()
require_modules("transformers", install="the dev extra")
import transformers  # noqa: E402

import entcore.torch  # noqa: E402  (after require_torch)

N, M = 40, 6


@pytest.fixture(scope="module")
def model():
    config = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(config).eval()
    return kv_model.use_entcore_attention(llama)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 101, (2, N + M), generator=torch.Generator().manual_seed(1))


def _prefill(model, ids, rows=4):
    with torch.no_grad(), kv_model.capture_states(query_rows=rows) as states:
        model(input_ids=ids[:, :N], use_cache=False)
    return states


def _run(model, cache, ids, append=False):
    positions = torch.arange(N, N + M)[None].expand(2, -1)
    with torch.no_grad(), cache.active(append=append):
        if not append:
            return model(input_ids=ids[:, N:], position_ids=positions, use_cache=False).logits
        steps = [
            model(input_ids=ids[:, N + s : N + s + 1], position_ids=positions[:, s : s + 1]).logits
            for s in range(M)
        ]
        return torch.cat(steps, 1)


def test_captured_states_are_post_rope(model, ids):
    check = kv_model.check_post_rope(model, ids[:1, :16], layer=1)
    assert check["query_vs_rotated"] < 1e-6 and check["key_vs_rotated"] < 1e-6
    assert check["key_vs_dynamic_cache"] < 1e-6
    assert check["query_vs_unrotated"] > 1e-2


def _full_cache(states):
    layers = [[(torch.arange(2), states.keys[i], states.values[i])] for i in sorted(states.keys)]
    return kv_model.GroupedKVCache(layers, group_size=3)


def test_full_grouped_cache_reproduces_the_model(model, ids):
    states = _prefill(model, ids)
    assert states.queries[0].shape == (2, 6, 4, 16) and states.keys[0].shape == (2, 2, N, 16)
    cache = _full_cache(states)
    assert cache.kept_tokens() == 2 * 2 * N
    assert cache.nbytes() == 2 * 2 * (2 * 2 * N * 16 * 4)  # layers x (K+V) x B·H·N·d float32
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits[:, N:]
    torch.testing.assert_close(_run(model, cache, ids), want, rtol=1e-4, atol=1e-4)
    # Generation: one token at a time, appended to every head, equals the one-shot pass.
    torch.testing.assert_close(
        _run(model, _full_cache(states), ids, append=True), want, rtol=1e-4, atol=1e-4
    )


def _plan_cache(states, budgets):
    layers = []
    for i in sorted(states.keys):
        scores = entcore.torch.snapkv_scores(
            queries=states.queries[i], keys=states.keys[i], window=4, kernel=3
        )
        idx, lengths = entcore.torch.select_tokens(scores, torch.tensor(budgets[i]))
        layers.append(
            entcore.torch.compress_kv(
                states.keys[i], states.values[i], idx, lengths, layout="grouped"
            )
        )
    return kv_model.GroupedKVCache(layers, group_size=3)


def test_uniform_plan_equals_a_gathered_dynamic_cache(model, ids):
    states = _prefill(model, ids)
    plan = entcore.allocate_budgets(
        torch.ones(2, 2).numpy(), n_tokens=N, compression_ratio=0.5, protected=4
    )
    cache = _plan_cache(states, plan.budgets)
    assert cache.kept_tokens() == plan.kept == 2 * 2 * 20
    dynamic = transformers.DynamicCache()
    for i in sorted(states.keys):
        scores = entcore.torch.snapkv_scores(
            queries=states.queries[i], keys=states.keys[i], window=4, kernel=3
        )
        idx, lengths = entcore.torch.select_tokens(scores, 20)
        keys, values, _ = entcore.torch.compress_kv(states.keys[i], states.values[i], idx, lengths)
        dynamic.update(keys, values, i)
    positions = torch.arange(N, N + M)[None].expand(2, -1)
    model.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            want = model(input_ids=ids[:, N:], position_ids=positions, cache=dynamic).logits
    finally:
        kv_model.use_entcore_attention(model)
    torch.testing.assert_close(_run(model, cache, ids), want, rtol=1e-4, atol=1e-4)


def test_per_head_budgets_hold_exactly_the_plan(model, ids):
    states = _prefill(model, ids)
    plan = entcore.allocate_budgets(
        [[1.0, 3.0], [2.0, 1.0]], n_tokens=N, compression_ratio=0.5, protected=4
    )
    cache = _plan_cache(states, plan.budgets)
    assert cache.kept_tokens() == plan.kept
    assert cache.nbytes() == 2 * plan.kept * 2 * 16 * 4  # B x kept x (K+V) x d x float32
    logits = _run(model, cache, ids)
    assert torch.isfinite(logits).all()
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[:, N:]
    assert not torch.allclose(logits, full)
