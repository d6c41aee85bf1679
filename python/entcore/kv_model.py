"""A real model and real text for ``entcore.kv``: SmolLM2-135M loaded offline, English text that
a package ships, post-RoPE attention states, and attention over a per-head compressed cache.

- :func:`load_smollm2_for_kv`: SmolLM2-135M-Instruct (:mod:`entcore.smollm2`) with the
  ``"entcore"`` attention below.
- :func:`shipped_documents`: ``lee_background.cor`` of the ``gensim`` wheel (``gensim/test/
  test_data/``: 300 English news articles, one per line), read as a file, without importing
  gensim (``pip install --no-deps gensim`` is enough).
- :func:`capture_states`: the post-RoPE queries, keys and values that every attention layer hands
  to its attention kernel (after ``apply_rotary_pos_emb``, before any ``repeat_kv``), recorded by
  an attention function registered with transformers' ``AttentionInterface`` under the name
  ``"entcore"`` (otherwise plain SDPA); :func:`check_post_rope` proves on a real forward that they
  are the rotated projections.
- :class:`GroupedKVCache`: a compressed prefix in ``compress_kv(..., layout="grouped")`` form per
  layer (one ``(B, H_g, b_g, d)`` tensor pair per distinct budget) and an attention that reads
  it. Memory is exactly ``Σ_h b_h`` rows per layer, K and V (``matrix.md`` §2.6): HF's
  ``DynamicCache`` needs one length for all heads of a layer, so per-head budgets cannot live in
  it without padding (memory of the largest head) or masking (no saving at all).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from entcore.smollm2 import load_smollm2, package_folder

TEXT_NAME = "gensim/test/test_data/lee_background.cor"
ATTENTION = "entcore"

_HOOK: ContextVar[Callable[..., Any] | None] = ContextVar("entcore_attention_hook", default=None)


def shipped_documents() -> list[str]:
    """The 300 English news articles of gensim's ``lee_background.cor`` (one per line)."""
    folder = package_folder("gensim", "gensim")
    path = folder / "test" / "test_data" / "lee_background.cor"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the gensim package")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip()]


def _attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any):
    """The ``"entcore"`` attention: the active hook if any, else transformers' SDPA."""
    hook = _HOOK.get()
    if hook is not None:
        return hook(module, query, key, value, attention_mask, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def use_entcore_attention(model: Any) -> Any:
    """Register the ``"entcore"`` attention with transformers and switch ``model`` (any model
    whose attention layers go through ``AttentionInterface``, e.g. Llama) to it. Without an active
    hook of this module it is transformers' SDPA, unchanged. Returns ``model``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)
    return model


def load_smollm2_for_kv() -> tuple[Any, Any]:
    """``(tokenizer, model)``: :func:`entcore.smollm2.load_smollm2` with attention ``"entcore"``
    (SDPA unless a hook of this module is active)."""
    tokenizer, model = load_smollm2()
    use_entcore_attention(model)
    return tokenizer, model


def token_windows(tokenizer: Any, documents: list[str], n_tokens: int) -> Any:
    """The documents joined by blank lines, tokenized once and cut into consecutive windows of
    ``n_tokens`` tokens: int64 ``(W, n_tokens)`` (the ragged tail is dropped)."""
    import torch

    ids = tokenizer("\n\n".join(documents), add_special_tokens=False)["input_ids"]
    count = len(ids) // n_tokens
    return torch.tensor(ids[: count * n_tokens], dtype=torch.long).reshape(count, n_tokens)


@dataclass
class States:
    """Post-RoPE states of one forward, per layer, on the CPU: ``queries[l] (B, H_q, rows, d)``
    (the last ``rows`` positions, or all), ``keys[l]``/``values[l] (B, H_kv, N, d)``."""

    queries: dict[int, Any] = field(default_factory=dict)
    keys: dict[int, Any] = field(default_factory=dict)
    values: dict[int, Any] = field(default_factory=dict)


@contextlib.contextmanager
def capture_states(query_rows: int | None = None, kv: bool = True) -> Iterator[States]:
    """Record what each attention layer receives, for every forward inside the block.

    ``query_rows``: keep only the last ``query_rows`` query positions (SnapKV's window); ``kv``:
    also keep keys and values. The attention itself is transformers' SDPA, unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    states = States()

    def hook(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any):
        layer = module.layer_idx
        q = query if query_rows is None else query[:, :, -query_rows:]
        states.queries[layer] = q.detach().cpu().clone()
        if kv:
            states.keys[layer] = key.detach().cpu().clone()
            states.values[layer] = value.detach().cpu().clone()
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    token = _HOOK.set(hook)
    try:
        yield states
    finally:
        _HOOK.reset(token)


def check_post_rope(model: Any, input_ids: Any, layer: int = 0) -> dict[str, float]:
    """Evidence that captured states are post-RoPE, on a real forward of ``input_ids (1, N)``.

    Recomputes layer ``layer``'s projections from its input (``q_proj``/``k_proj`` of the
    normed hidden state) and rotates them with the model's own ``cos``/``sin``. Returns the
    largest absolute differences of the captured queries and keys to the rotated projections
    (≈ 0) and to the unrotated ones (large), and of the captured keys to the keys that
    transformers stores in its ``DynamicCache`` (HF caches post-RoPE keys; ≈ 0).
    """
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = model.model.layers[layer].self_attn
    seen: dict[str, Any] = {}

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
        seen["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
        seen["cos_sin"] = kwargs["position_embeddings"]

    handle = attn.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad(), capture_states() as states:
            out = model(input_ids=input_ids, use_cache=True)
    finally:
        handle.remove()
    hidden = seen["hidden"]
    shape = (*hidden.shape[:-1], -1, attn.head_dim)
    with torch.no_grad():
        q = attn.q_proj(hidden).view(shape).transpose(1, 2)
        k = attn.k_proj(hidden).view(shape).transpose(1, 2)
        cos, sin = seen["cos_sin"]
        q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
    cached = out.past_key_values.layers[layer].keys
    return {
        "query_vs_rotated": float((states.queries[layer] - q_rot).abs().max()),
        "key_vs_rotated": float((states.keys[layer] - k_rot).abs().max()),
        "query_vs_unrotated": float((states.queries[layer] - q).abs().max()),
        "key_vs_dynamic_cache": float((states.keys[layer] - cached).abs().max()),
    }


class GroupedKVCache:
    """A compressed prefix cache, per layer a list of ``(heads, keys (B, H_g, b_g, d), values)``
    (``entcore.compress_kv(..., layout="grouped")``), and the attention that reads it.

    Inside :meth:`active`, every attention layer of the model attends, for KV head ``h``, to the
    kept prefix of ``h`` followed by the new tokens of the forward (causal among themselves);
    query head ``i`` reads KV head ``i // G`` (SDPA's ``enable_gqa``: the cache is never
    repeated). New tokens must carry their true positions (``position_ids`` after the
    uncompressed prefix length), as the kept keys keep their RoPE rotation. With
    ``append=True`` the new keys and values are appended to every head (generation).
    """

    def __init__(self, layers: list[list[tuple[Any, Any, Any]]], group_size: int):
        self.layers = layers
        self.group_size = group_size
        self.append = False

    def nbytes(self) -> int:
        """Bytes held by the cache's key and value tensors."""
        return sum(k.nbytes + v.nbytes for layer in self.layers for _, k, v in layer)

    def kept_tokens(self) -> int:
        """Kept (token, KV head) pairs over all layers, for one batch row."""
        return sum(k.shape[1] * k.shape[2] for layer in self.layers for _, k, _ in layer)

    def _attend(self, module: Any, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any):
        import torch
        import torch.nn.functional as F

        layer = module.layer_idx
        batch, _, m, _ = query.shape
        g = self.group_size
        out = query.new_zeros((batch, query.shape[1], m, value.shape[-1]))
        causal = torch.ones((m, m), dtype=torch.bool, device=query.device).tril()
        for i, (heads, k_old, v_old) in enumerate(self.layers[layer]):
            k_all = torch.cat([k_old, key[:, heads]], dim=2)
            v_all = torch.cat([v_old, value[:, heads]], dim=2)
            q_heads = (heads[:, None] * g + torch.arange(g, device=heads.device)).reshape(-1)
            visible = torch.cat(
                [torch.ones((m, k_old.shape[2]), dtype=torch.bool, device=query.device), causal],
                dim=1,
            )
            out[:, q_heads] = F.scaled_dot_product_attention(
                query[:, q_heads],
                k_all,
                v_all,
                attn_mask=visible,
                scale=kwargs.get("scaling"),
                enable_gqa=True,
            )
            if self.append:
                self.layers[layer][i] = (heads, k_all, v_all)
        return out.transpose(1, 2).contiguous(), None

    @contextlib.contextmanager
    def active(self, append: bool = False) -> Iterator[GroupedKVCache]:
        self.append = append
        token = _HOOK.set(self._attend)
        try:
            yield self
        finally:
            _HOOK.reset(token)
            self.append = False


def query_entropies(
    model: Any,
    windows: Any,
    *,
    k: int | None = 32,
    group_size: int | None = None,
    step: Callable[[int], None] = lambda done: None,
) -> Any:
    """UNComp's calibration statistic: ``matrix_entropy`` (``matrix.md`` §1.2, truncated at
    ``k``) of each layer's post-RoPE queries, per window of ``windows (S, N)`` token ids.

    Returns float32 ``(S, L, H)`` (``entcore.matrix_entropy``, Rust core): ``H = H_q``, or
    ``H_q / group_size`` KV heads (the mean over each group's query heads, §1.2 "Heads and
    GQA"). ``step(done)`` is called after each window.
    """
    import numpy as np
    import torch

    from entcore.matrix import matrix_entropy

    rows = []
    for s in range(windows.shape[0]):
        with torch.no_grad(), capture_states(kv=False) as states:
            model(input_ids=windows[s : s + 1], use_cache=False)
        q = torch.stack([states.queries[layer][0] for layer in sorted(states.queries)])
        rows.append(matrix_entropy(q.numpy(), k=k, group_size=group_size))
        step(s + 1)
    return np.stack(rows)
