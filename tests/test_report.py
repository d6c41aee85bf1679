"""The rollout report on the shipped buffer: sections, numbers tied to the statistics, progress."""

from __future__ import annotations

import json

import numpy as np

import entcore
import entcore.report as report
from entcore.io import default_rollouts_path, default_tokenizer_path, load_rollouts


def test_report_numbers_are_the_statistics_of_the_buffer():
    buffer = load_rollouts(default_rollouts_path())
    built = report.build_report(buffer, default_tokenizer_path(), "shipped")
    headings = [h for h, _ in built.sections]
    assert headings[:3] == [
        "Buffer",
        "Token entropy (nats) against the 80/20 paper",
        "Forking tokens (top 20% entropy, the paper's mask)",
    ]
    packed = buffer.to_packed()
    summary = entcore.entropy_summary(packed.entropy, cu_seqlens=packed.cu_seqlens)
    assert built.numbers["entropy_summary"]["count"] == packed.entropy.size
    np.testing.assert_allclose(built.numbers["entropy_summary"]["mean"], summary["mean"])
    text = built.text()
    assert f"{summary['frac_low']:.2%}"[:-1] in text
    # Tokens are shown decoded by the shipped tokenizer (quoted text), not as raw ids (#123).
    assert "most frequent forking tokens: '" in text


def test_progress_bar_path_and_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "PROGRESS_MIN_BYTES", 0)
    assert report.run_report(default_rollouts_path(), tmp_path, default_tokenizer_path()) == 0
    out = capsys.readouterr().out
    assert "What each mask and selection keeps" in out
    numbers = json.loads((tmp_path / "report.json").read_text())
    assert numbers["entropy_summary"]["count"] > 10_000
    assert not list(tmp_path.glob("*.tmp"))
