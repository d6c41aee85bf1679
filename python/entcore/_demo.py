"""``entcore demo``: the token kernels on LLM-shaped logits, held against the float64 reference,
NumPy and the usual torch forms (verl, TRL) in one run.

The logits imitate a language model's: a heavy-tailed score per vocabulary entry, a sharp peak on
most positions (confident tokens) and flat rows on a minority (forking tokens), and the padded
tail of the vocabulary masked with ``-inf`` as in verl/vLLM vocabularies padded to a multiple of
128. Numbers are measured here, now; nothing is canned.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ml_dtypes
import numpy as np

import entcore
from entcore import _core
from entcore.reference import token as reference

PADDED_TAIL = 128


def llm_like_logits(rows: int, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(logits float32 (rows, vocab), sampled labels)`` with a masked padded tail."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(vocab).astype(np.float32) * 2.0
    logits = base + rng.standard_normal((rows, vocab), dtype=np.float32) * 1.5
    sharp = rng.random(rows) < 0.8
    peaks = rng.integers(0, vocab - PADDED_TAIL, rows)
    logits[np.arange(rows), peaks] += np.where(sharp, rng.uniform(15, 30, rows), 2.0).astype(
        np.float32
    )
    logits[:, vocab - PADDED_TAIL :] = -np.inf
    gumbel = -np.log(-np.log(rng.random((rows, vocab))))
    labels = np.argmax(logits + gumbel, axis=1)
    return logits, labels


def _median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _numpy_float32(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    shifted = np.where(np.isfinite(logits), logits - m, 0.0)
    return (np.log(s[:, 0]) - np.einsum("ij,ij->i", p, shifted)).astype(np.float32)


def run_token_demo(rows: int, vocab: int, seed: int) -> int:
    if rows < 1 or vocab <= PADDED_TAIL:
        raise ValueError(f"rows >= 1 and vocab > {PADDED_TAIL} are required")
    logits, labels = llm_like_logits(rows, vocab, seed)
    bf16 = logits.astype(ml_dtypes.bfloat16)
    elems = logits.size
    print(
        f"entcore {entcore.__version__}: {_core.simd_level()} kernels, "
        f"{entcore.get_num_threads()} threads"
    )
    print(
        f"logits ({rows}, {vocab}) float32, {logits.nbytes / 2**20:.0f} MiB; "
        f"the last {PADDED_TAIL} vocabulary entries are -inf (padded vocabulary)\n"
    )

    ref_lp, ref_h = reference.token_logprob_entropy(logits, labels)
    lp, h = entcore.token_logprob_entropy(logits, labels)
    ref_lp16, ref_h16 = reference.token_logprob_entropy(bf16, labels)
    lp16, h16 = entcore.token_logprob_entropy(bf16, labels)

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0)))

    rows_out: list[tuple[str, float, str]] = []
    t_ec = _median_ms(lambda: entcore.token_logprob_entropy(logits, labels))
    rows_out.append(
        (
            "entcore float32 (entropy + log-prob)",
            t_ec,
            f"max error {max(rel(h, ref_h), rel(lp, ref_lp)):.1e}",
        )
    )
    t_ec16 = _median_ms(lambda: entcore.token_logprob_entropy(bf16, labels))
    rows_out.append(
        (
            "entcore bfloat16 (entropy + log-prob)",
            t_ec16,
            f"max error {max(rel(h16, ref_h16), rel(lp16, ref_lp16)):.1e}",
        )
    )
    np_h = _numpy_float32(logits)
    t_np = _median_ms(lambda: _numpy_float32(logits), repeats=3)
    rows_out.append(
        ("NumPy float32 (max, exp, sum, divide, dot)", t_np, f"max error {rel(np_h, ref_h):.1e}")
    )
    rows_out.extend(_torch_rows(logits, ref_h))

    width = max(len(name) for name, _, _ in rows_out)
    print(f"{'method':<{width}}  {'time':>9}  {'Gelem/s':>7}  {'vs entcore':>10}  result")
    for name, ms, note in rows_out:
        print(f"{name:<{width}}  {ms:7.1f} ms  {elems / ms / 1e6:7.2f}  {ms / t_ec:9.1f}x  {note}")

    print("\nentropy of the positions (nats), entcore float32:")
    q = np.percentile(h, [10, 50, 90, 99])
    print(
        f"  mean {h.mean():.3f}; p10 {q[0]:.3f}, p50 {q[1]:.3f}, p90 {q[2]:.3f}, "
        f"p99 {q[3]:.3f}; max log V_fin = {np.log(vocab - PADDED_TAIL):.3f}"
    )
    print(
        f"  {np.mean(h < 0.01):.1%} of positions below 0.01 nats, "
        f"{np.mean(h > 0.672):.1%} above 0.672 nats (the 80/20 paper's Qwen3-8B figures: "
        "50.64% and 20%)"
    )
    print(
        f"  collision probability Σp² mean {entcore.collision_probability(logits).mean():.3f}; "
        f"Rényi-2 mean {entcore.renyi_entropy(logits, 2.0).mean():.3f} nats"
    )
    ok = rel(h, ref_h) <= 1e-5 and rel(lp, ref_lp) <= 1e-5 and np.all(np.isfinite(h))
    print(
        "\nall entcore results finite and within 1e-5 of the float64 reference:",
        "yes" if ok else "NO",
    )
    return 0 if ok else 1


def _torch_rows(logits: np.ndarray, ref_h: np.ndarray) -> list[tuple[str, float, str]]:
    try:
        import torch
    except ImportError:
        return [("torch forms", float("nan"), "skipped: torch is not installed")]
    z = torch.from_numpy(logits)

    def verl() -> torch.Tensor:
        p = torch.softmax(z, dim=-1)
        return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)

    def trl() -> torch.Tensor:
        lp = torch.log_softmax(z, dim=-1)
        return -(lp.exp() * lp).sum(dim=-1)

    def categorical() -> torch.Tensor:
        return torch.distributions.Categorical(logits=z).entropy()

    out = []
    for name, fn in (
        ("torch verl form (logsumexp - softmax·z)", verl),
        ("torch TRL form (log_softmax)", trl),
        ("torch Categorical.entropy()", categorical),
    ):
        values = fn().numpy()
        nan_rows = int(np.isnan(values).sum())
        note = (
            f"{nan_rows} of {len(values)} rows NaN (the -inf entries)"
            if nan_rows
            else f"max error {float(np.max(np.abs(values - ref_h))):.1e}"
        )
        out.append((name, _median_ms(fn, repeats=3), note))
    return out
