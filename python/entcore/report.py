"""The rollout report behind ``entcore demo`` and ``entcore rollout-report``: every entropy
statistic of ``rollout.md`` that a buffer supports, printed and written as an HTML page with
figures (histogram, per-position curves, masks) next to the 80/20 paper's numbers.

Everything is computed from the buffer at run time; nothing is canned.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import entcore
from entcore.io import RolloutBuffer, load_rollouts

# Wang et al., arXiv 2506.01939, §3: Qwen3-8B on AIME at T = 1.
PAPER_FRAC_LOW = 0.5064
PAPER_FRAC_HIGH = 0.20
PAPER_HIGH = 0.672
# Words whose positions ARES checks for high window entropy (a few of its 174 triggers).
ARES_TRIGGERS = ("wait", "but", "however", "so", "then", "hmm", "alternatively", "check")


@dataclass
class Report:
    """Text sections and figures of a report."""

    title: str
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def add(self, heading: str, lines: list[str]) -> None:
        self.sections.append((heading, lines))

    def text(self) -> str:
        out = [self.title, "=" * len(self.title)]
        for heading, lines in self.sections:
            out += ["", heading, "-" * len(heading), *lines]
        return "\n".join(out)

    def html(self) -> str:
        parts = [
            "<!doctype html><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
            "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}</style>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for heading, lines in self.sections:
            parts.append(
                f"<h2>{html.escape(heading)}</h2><pre>{html.escape(chr(10).join(lines))}</pre>"
            )
        for caption, png in self.figures:
            data = base64.b64encode(png).decode()
            parts.append(f"<h2>{html.escape(caption)}</h2><img src='data:image/png;base64,{data}'>")
        return "\n".join(parts)


class _Tokens:
    """Decodes token ids with the buffer's tokenizer (``tokenizers``), when available."""

    def __init__(self, path: Path | None):
        self.tokenizer = None
        if path is not None and path.exists():
            try:
                from tokenizers import Tokenizer
            except ImportError:
                return
            self.tokenizer = Tokenizer.from_file(str(path))

    def show(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"#{token_id}"
        return repr(self.tokenizer.decode([int(token_id)]))

    def ids_of(self, words: tuple[str, ...]) -> np.ndarray:
        if self.tokenizer is None:
            return np.zeros(0, dtype=np.int64)
        ids = set()
        for word in words:
            for variant in (word, " " + word, word.capitalize(), " " + word.capitalize()):
                encoded = self.tokenizer.encode(variant, add_special_tokens=False).ids
                if len(encoded) == 1:
                    ids.add(encoded[0])
        return np.array(sorted(ids), dtype=np.int64)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def build_report(
    buffer: RolloutBuffer,
    tokenizer_path: Path | None,
    name: str,
    step: Callable[[str], None] = lambda stage: None,
) -> Report:
    """All sections of the report; ``step(stage)`` is called as each stage starts."""
    b = buffer.to_packed()
    cu = b.cu_seqlens
    lengths = np.diff(cu)
    entropy, logprob, ids = b.entropy, b.logprob, b.token_ids
    group = b.group
    rewards = b.rewards.astype(np.float64)
    correct = b.correct.astype(bool) if b.correct is not None else rewards >= 1
    meta = b.metadata
    tokens = _Tokens(tokenizer_path)
    report = Report(f"entcore rollout report: {name}")

    n_groups = np.unique(group).size
    report.add(
        "Buffer",
        [
            f"model: {meta.get('model', '?')}; dataset: {meta.get('dataset', '?')}; "
            f"sampling temperature {meta.get('temperature', '?')}",
            f"{b.num_sequences} responses in {n_groups} groups, {b.num_tokens} response tokens "
            f"(mean length {lengths.mean():.1f}, max {lengths.max()})",
            f"accuracy {correct.mean():.1%}; groups with mixed outcomes "
            f"{sum(len(set(correct[group == g])) > 1 for g in np.unique(group))} of {n_groups}",
        ],
    )

    s = entcore.entropy_summary(entropy, cu_seqlens=cu, low=0.01, high=PAPER_HIGH)
    pct = dict(zip((1, 5, 10, 25, 50, 75, 90, 95, 99), s["percentiles"], strict=True))
    report.numbers["entropy_summary"] = {
        k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()
    }
    report.add(
        "Token entropy (nats) against the 80/20 paper",
        [
            f"mean {s['mean']:.3f} (per response {s['seq_mean']:.3f}), std {s['std']:.3f}, "
            f"max {s['max']:.3f} of log V = {np.log(b.vocab_size or 49152):.2f}",
            "percentiles: " + ", ".join(f"p{q} {v:.3f}" for q, v in pct.items()),
            f"below 0.01 nats: {_pct(s['frac_low'])} here, {_pct(PAPER_FRAC_LOW)} in the paper "
            "(Qwen3-8B, AIME)",
            f"above 0.672 nats: {_pct(s['frac_high'])} here, {_pct(PAPER_FRAC_HIGH)} in the paper; "
            f"this buffer's own 80th percentile is {np.percentile(entropy, 80):.3f}",
        ],
    )

    step("forking tokens")
    fork, tau = entcore.high_entropy_mask(
        entropy, cu_seqlens=cu, rho=0.2, scope="batch", return_threshold=True
    )
    top = Counter(ids[fork].tolist()).most_common(15)
    low = Counter(ids[entropy < 0.01].tolist()).most_common(10)
    report.add(
        "Forking tokens (top 20% entropy, the paper's mask)",
        [
            f"threshold tau = {tau[0]:.4f} nats; {fork.sum()} of {entropy.size} tokens kept "
            f"({fork.mean():.1%})",
            "most frequent forking tokens: " + ", ".join(f"{tokens.show(t)} x{c}" for t, c in top),
            "most frequent near-deterministic tokens (H < 0.01): "
            + ", ".join(f"{tokens.show(t)} x{c}" for t, c in low),
            "highest-entropy positions: "
            + ", ".join(
                f"{tokens.show(ids[i])} ({entropy[i]:.2f})" for i in np.argsort(-entropy)[:8]
            ),
        ],
    )

    step("masks and selections")
    grpo = entcore.group_advantages(rewards, group)
    seq_entropy = np.array(
        [entropy[cu[i] : cu[i + 1]].mean() if lengths[i] else 0.0 for i in range(len(lengths))]
    )
    canon = entcore.canon_advantages(rewards, seq_entropy, group)
    token_adv = np.repeat(grpo, lengths).astype(np.float32)
    peak = entcore.peak_entropy_mask(entropy, None, cu_seqlens=cu)
    kl = entcore.kl_cov_select(token_adv, logprob, None, ratio=2e-3, scope="batch", cu_seqlens=cu)
    clip = entcore.clip_cov_select(
        token_adv, logprob, logprob, None, ratio=2e-3, scope="batch", seed=0, cu_seqlens=cu
    )
    cov = entcore.centered_cov(token_adv, logprob, None, scope="batch", cu_seqlens=cu)
    lines = [
        f"forking-token mask (rho 0.2, whole batch): {fork.sum()} tokens ({fork.mean():.1%})",
        f"SIREN peak mask (per response, q 0.8, strict): {peak.sum()} tokens ({peak.mean():.1%})",
        f"KL-Cov (ratio 2e-3): {kl.sum()} tokens, covariance c from {cov[kl].min():.3f} "
        f"to {cov[kl].max():.3f}; largest c overall {cov.max():.3f}",
        f"Clip-Cov (ratio 2e-3, 1 < c < 5, seed 0): {clip.sum()} tokens drawn from "
        f"{int(((cov > 1) & (cov < 5)).sum())} candidates",
    ]
    trigger_ids = tokens.ids_of(ARES_TRIGGERS)
    if trigger_ids.size:
        theta = entcore.hwe_threshold(entropy, None, cu_seqlens=cu)
        count, _, _ = entcore.hwe_count(
            entropy, ids, None, trigger_ids, threshold=theta, cu_seqlens=cu
        )
        lines.append(
            f"ARES: {trigger_ids.size} trigger tokens, window-entropy threshold "
            f"{theta:.3f} (median of per-response 95th percentiles); "
            f"{int(count.sum())} high-window-entropy triggers in "
            f"{int((count > 0).sum())} responses"
        )
    report.add("What each mask and selection keeps", lines)

    step("advantages")
    order = np.lexsort((np.arange(len(group)), group))
    shown = [g for g in np.unique(group) if len(set(correct[group == g])) > 1][:4]
    adv_lines = ["group  reward  mean H  GRPO adv  CANON adv"]
    for g in shown:
        for i in order[group[order] == g]:
            adv_lines.append(
                f"{g:5d}  {rewards[i]:6.1f}  {seq_entropy[i]:6.3f}  {grpo[i]:8.3f}  {canon[i]:9.3f}"
            )
    ok_h = entropy[np.repeat(correct, lengths)]
    bad_h = entropy[np.repeat(~correct, lengths)]
    adv_lines += [
        f"CANON (entropy variant, lambda 1) splits each group at its median response entropy "
        f"and scores each half against the other's mean reward; corr(GRPO, CANON) = "
        f"{np.corrcoef(grpo, canon)[0, 1]:.3f}",
        f"token entropy of correct responses {ok_h.mean():.3f}, of incorrect ones "
        f"{bad_h.mean():.3f}"
        if ok_h.size and bad_h.size
        else "all responses share one outcome",
    ]
    report.add("CANON against GRPO advantages (groups with mixed outcomes)", adv_lines)

    k = int(meta.get("samples_per_prompt", 0) or np.bincount(group).max())
    c = np.array([correct[group == g].sum() for g in np.unique(group)])
    n = np.array([(group == g).sum() for g in np.unique(group)])
    pass_lines = [
        f"pass@{kk} = {np.mean(entcore.pass_at_k(n, c, kk)):.3f}"
        for kk in (1, 2, 4, k)
        if kk <= n.min()
    ]
    if b.answers is not None:
        codes = np.unique(
            np.array([a if a is not None else "NA" for a in b.answers]), return_inverse=True
        )[1]
        _, h_ans = entcore.answer_entropy(codes, group)
        pass_lines.append(
            f"answer-level entropy per group: mean {h_ans.mean():.3f} nats "
            f"(0 = every sample gives the same answer)"
        )
    t_stat, _ = entcore.detection_statistic(logprob, entropy, None, cu_seqlens=cu)
    pass_lines.append(
        f"detection statistic T = mean(-logprob) - mean(H) per response: "
        f"median {np.median(t_stat):.3f} (near 0 on the model's own text)"
    )
    report.add("Evaluation statistics", pass_lines)

    step("figures")
    report.figures += _figures(entropy, cu, fork, tau[0])
    return report


def _figures(entropy: np.ndarray, cu: np.ndarray, fork: np.ndarray, tau: float):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    figs = []
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.hist(np.log10(np.maximum(entropy, 1e-6)), bins=80, color="#4a7ab5")
    ax.axvline(np.log10(0.01), color="k", ls=":", label="0.01 nats")
    ax.axvline(np.log10(PAPER_HIGH), color="r", ls="--", label="0.672 nats (paper's p80)")
    ax.axvline(np.log10(tau), color="g", ls="-", label=f"this buffer's p80 ({tau:.3f})")
    ax.set_xlabel("log10 token entropy (nats)")
    ax.set_ylabel("tokens")
    ax.legend(fontsize=8)
    figs.append(("Distribution of token entropies", _png(fig)))
    mean, count = entcore.entropy_position_curve(entropy, None, cu_seqlens=cu)
    rel, rel_count = entcore.entropy_position_curve(entropy, None, cu_seqlens=cu, bins=20)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    keep = count >= 8
    axes[0].plot(np.flatnonzero(keep), mean[keep], color="#4a7ab5")
    axes[0].set_xlabel("response position (tokens)")
    axes[0].set_ylabel("mean entropy (nats)")
    axes[1].plot((np.arange(20) + 0.5) / 20, rel, marker="o", color="#b54a4a")
    axes[1].set_xlabel("relative position in the response")
    figs.append(("Mean entropy by position (absolute, relative)", _png(fig)))
    return figs


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write ``report.html``, ``report.txt``, ``report.json`` and the PNG figures atomically
    (each file to a temporary name, then renamed), so nothing is left half-written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report.html": report.html().encode(),
        "report.txt": report.text().encode(),
        "report.json": json.dumps(report.numbers, indent=2, default=float).encode(),
    }
    for i, (_, png) in enumerate(report.figures):
        files[f"figure{i + 1}.png"] = png
    written = []
    for fname, data in files.items():
        path = out_dir / fname
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        written.append(path)
    return written


# A buffer file this large takes more than about 2 s to report on: show a progress bar (stderr).
PROGRESS_MIN_BYTES = 50 * 2**20
STAGES = ("load", "summaries", "forking tokens", "masks and selections", "advantages", "figures")


def run_report(path: Path, out_dir: Path, tokenizer: Path | None) -> int:
    start = time.perf_counter()
    show = path.exists() and path.stat().st_size >= PROGRESS_MIN_BYTES
    with _progress(show) as step:
        step("load")
        buffer = load_rollouts(path)
        if tokenizer is None:
            candidate = path.with_name(buffer.metadata.get("tokenizer", "tokenizer.json"))
            tokenizer = candidate if candidate.exists() else None
        report = build_report(buffer, tokenizer, path.name, step)
    print(report.text())
    written = write_report(report, out_dir)
    print(f"\nwrote {', '.join(str(p) for p in written)} in {time.perf_counter() - start:.1f} s")
    return 0


class _progress:
    """A stage progress bar on stderr (``rich``) for big buffers; a no-op otherwise."""

    def __init__(self, show: bool):
        self.bar = None
        if show:
            try:
                from rich.progress import Progress
            except ImportError:
                return
            self.bar = Progress(transient=True)

    def __enter__(self) -> Callable[[str], None]:
        if self.bar is None:
            return lambda stage: None
        self.bar.start()
        task = self.bar.add_task("rollout report", total=len(STAGES))

        def step(stage: str) -> None:
            self.bar.update(task, completed=STAGES.index(stage), description=stage)

        return step

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
