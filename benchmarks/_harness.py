"""Side-by-side timing helpers shared by the benchmark scripts (``performance.md``, How to measure):
warm up, median of repeats, every method measured in the same process and run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Row:
    method: str
    ms: float
    gelem_s: float
    ratio: float  # this method's time / entcore's time
    note: str = ""


def median_ms(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    import numpy

    import entcore
    from entcore import _core

    info: dict[str, object] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "entcore": entcore.__version__,
        "entcore_kernels": _core.simd_level(),
        "entcore_threads": entcore.get_num_threads(),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def print_table(title: str, rows: list[Row]) -> None:
    width = max(len(r.method) for r in rows)
    print(f"\n{title}")
    print(f"| {'method':<{width}} | {'time':>10} | {'Gelem/s':>7} | {'time / entcore':>14} | note")
    print(f"|{'-' * (width + 2)}|{'-' * 12}|{'-' * 9}|{'-' * 16}|-----")
    for r in rows:
        cells = f"{r.ms:7.1f} ms | {r.gelem_s:7.2f} | {r.ratio:13.2f}x"
        print(f"| {r.method:<{width}} | {cells} | {r.note}")


def write_json(path: str | None, name: str, payload: dict[str, object]) -> None:
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), **payload}
    out.write_text(json.dumps(data, indent=2, default=lambda o: asdict(o)))
    print(f"\nwrote {out}")
