"""The runtime promises of the Rust core: the GIL is released during kernels, the thread pool is
configurable and survives ``fork``, and the type stub matches the compiled module."""

from __future__ import annotations

import ast
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import entcore
from entcore import _core


def test_gil_is_released_during_a_kernel():
    logits = np.random.default_rng(0).standard_normal((512, 65536), dtype=np.float32)
    started = threading.Event()

    def work() -> None:
        started.set()
        for _ in range(3):
            entcore.token_entropy(logits)

    worker = threading.Thread(target=work)
    worker.start()
    started.wait()
    python_steps = 0
    while worker.is_alive():
        python_steps += 1
    worker.join()
    # With the GIL held for the whole kernel this loop could only run between calls.
    assert python_steps > 1000


def test_set_num_threads_round_trip_and_errors():
    before = entcore.get_num_threads()
    try:
        entcore.set_num_threads(3)
        assert entcore.get_num_threads() == 3
        with pytest.raises(ValueError, match="n: expected a thread count >= 1"):
            entcore.set_num_threads(0)
        with pytest.raises(TypeError, match="n: expected an int"):
            entcore.set_num_threads(2.0)
    finally:
        entcore.set_num_threads(before)


def test_environment_variable_sets_the_pool_size():
    code = "import entcore; print(entcore.get_num_threads())"
    env = {**os.environ, "ENTCORE_NUM_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


def _child_entropy(queue, logits):
    queue.put(entcore.token_entropy(logits))


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_pool_survives_fork():
    # Big enough to run in the pool (not inline), in the parent first so the pool exists.
    logits = np.random.default_rng(1).standard_normal((64, 8192), dtype=np.float32)
    expected = entcore.token_entropy(logits)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_entropy, args=(queue, logits))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, expected)


def test_stub_lists_exactly_the_compiled_functions():
    stub = Path(entcore.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text())
    stubbed = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    compiled = {name for name in dir(_core) if callable(getattr(_core, name))}
    compiled -= {name for name in compiled if name.startswith("__")}
    assert stubbed == compiled
