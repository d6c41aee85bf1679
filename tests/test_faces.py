"""The three faces carry the same names (``conventions.md``, The three faces of every function)."""

from __future__ import annotations

import inspect

import entcore
import entcore.reference as reference
from helpers import require_torch

torch_face = require_torch() and __import__("entcore.torch", fromlist=["entcore"])

RUNTIME = {"__version__", "get_num_threads", "set_num_threads"}
MODULES = {"geometry", "kv", "matrix", "measures", "rollout", "token"}


def test_every_face_exports_the_same_names():
    numpy_names = set(entcore.__all__) - RUNTIME
    assert set(reference.__all__) - MODULES == numpy_names
    torch_only = set(torch_face.policy_loss.__all__)  # verl-style losses, torch face only
    assert set(torch_face.__all__) - torch_only == numpy_names
    for name in numpy_names:
        for face in (entcore, reference, torch_face):
            assert getattr(face, name) is not None, (face.__name__, name)


def test_shared_functions_have_the_reference_arguments():
    # Arguments the spec gives only to the torch face (memory knobs, process groups, generators).
    torch_only = {
        "chunk_rows",
        "row_block",
        "vocab_block",
        "vocab_process_group",
        "process_group",
        "generator",
    }
    for name in set(reference.__all__) - MODULES:
        ref = getattr(reference, name)
        if not inspect.isfunction(ref):
            continue
        want = list(inspect.signature(ref).parameters)
        for face in (entcore, torch_face):
            got = [
                p for p in inspect.signature(getattr(face, name)).parameters if p not in torch_only
            ]
            assert got == want, (face.__name__, name, got, want)
