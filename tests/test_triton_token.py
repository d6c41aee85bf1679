"""The Triton kernels (``token.md`` §8), checked on CPU through Triton's interpreter.

Triton chooses between compiling and interpreting when it is first imported, so the kernel tests
live in ``tests/triton_cases.py`` and run here in a child pytest with ``TRITON_INTERPRET=1`` set
before anything imports Triton; the child's report is shown when it fails. Triton ships with
torch on Linux, so this runs (never skips) in CI. The kernel choice of ``entcore.torch``
(``ENTCORE_TORCH_KERNEL``) is checked in this process.
"""

from helpers import require_torch

torch = require_torch()

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from entcore.torch import token as tt  # noqa: E402

TESTS = Path(__file__).resolve().parent


def test_kernels_under_the_interpreter():
    import triton  # noqa: F401  (a missing Triton is an error here, not a skip)

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("ENTCORE_TORCH_KERNEL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "triton_cases.py"],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    report = proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, report


def test_kernel_choice(monkeypatch):
    """``auto``: Triton for CUDA tensors of fp32/fp16/bf16 only; ``chunked`` never; bad values."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv("ENTCORE_TORCH_KERNEL", raising=False)
    assert tt._uses_triton(cuda, torch.bfloat16, torch.float32)
    assert not tt._uses_triton(cuda, torch.float64)
    assert not tt._uses_triton(cpu, torch.float32)
    assert tt._logits_kernel(torch.zeros(2, 3)) == "rust"
    monkeypatch.setenv("ENTCORE_TORCH_KERNEL", "chunked")
    assert not tt._uses_triton(cuda, torch.bfloat16)
    monkeypatch.setenv("ENTCORE_TORCH_KERNEL", "triton")
    assert tt._uses_triton(cpu, torch.float16)
    assert not tt._uses_triton(cpu, torch.float64)
    monkeypatch.setenv("ENTCORE_TORCH_KERNEL", "cuda")
    with pytest.raises(ValueError, match="ENTCORE_TORCH_KERNEL"):
        tt.token_entropy(torch.zeros(2, 3))


def _signature(kernel, types, constexprs):
    """``(kernel, signature, constexprs)``: ``types`` by argument name, ``constexpr`` otherwise."""
    return kernel, {name: types.get(name, "constexpr") for name in kernel.arg_names}, constexprs


def test_kernels_compile_for_hopper():
    """The compiled (non-interpreted) kernels type-check and assemble for sm_90, without a GPU.

    The interpreter runs the kernel bodies as NumPy; this catches what only the compiler sees
    (loop-carried types, constexpr branches, ``tl.dot`` shapes). bf16 inputs, launch options as
    the host functions use them.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from entcore.torch import _triton_linear as tlin
    from entcore.torch import _triton_token as ttok

    ptr = "*fp32"
    rows = {"stride_x": "i64", "temperature": "fp32", "inv_temperature": "fp32", "vocab": "i32"}
    rows["n_labels"] = "i32"
    cases = [
        _signature(
            ttok._logits_forward_kernel,
            {"x_ptr": "*bf16", "labels_ptr": "*i64", "status_ptr": "*i32", **rows}
            | dict.fromkeys(["logprob_ptr", "entropy_ptr", "lse_ptr", "mu_ptr"], ptr),
            {"ROW_T": False, "SCALE": True, "COLLISION": False, "LABELS": True}
            | {"temps_ptr": None, "collision_ptr": None, "BLOCK_V": 2048, "BLOCK_K": 1},
        ),
        _signature(
            ttok._logits_backward_kernel,
            {"x_ptr": "*bf16", "grad_ptr": "*bf16", "labels_ptr": "*i64", **rows}
            | dict.fromkeys(["temps_ptr", "g_lp_ptr", "g_h_ptr", "g_c_ptr", "lse_ptr"], ptr)
            | {"mu_ptr": ptr},
            {"ROW_T": True, "SCALE": True, "LABELS": True, "ENTROPY": True, "COLLISION": True}
            | {"BLOCK_V": 2048, "BLOCK_K": 2},
        ),
    ]
    matmul = {"h_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "labels_ptr": "*i64"}
    matmul |= dict.fromkeys(["stride_hn", "stride_hd", "stride_wv", "stride_wd"], "i64")
    matmul |= {"dim": "i32", "n_rows": "i32", "temperature": "fp32", "inv_temperature": "fp32"}
    flags = {"HAS_BIAS": True, "SCALE": True, "IEEE": False, "UPCAST": False, "COLLISION": True}
    forward_blocks = {"BLOCK_N": tlin.BLOCK_N, "BLOCK_V": tlin.BLOCK_V, "BLOCK_D": tlin.BLOCK_D}
    grad = tlin.GRAD_BLOCKS
    cases.append(
        _signature(
            tlin._linear_forward_kernel,
            matmul | {"part_ptr": ptr, "vocab": "i32", "split_size": "i32"},
            flags | forward_blocks,
        )
    )
    cases.append(
        _signature(
            tlin._linear_grad_kernel,
            matmul
            | dict.fromkeys(["lse_ptr", "mu_ptr", "p2_ptr", "g_lp_ptr", "g_h_ptr", "g_c_ptr"], ptr)
            | {"g_ptr": "*bf16", "stride_g": "i64", "v_end": "i32"},
            flags
            | {"LABELS": True, "ENTROPY": True, "BLOCK_N": grad.n, "BLOCK_V": grad.v}
            | {"BLOCK_D": grad.d},
        ),
    )
    options = {"num_warps": 8, "num_stages": tlin.NUM_STAGES, "enable_fp_fusion": True}
    for kernel, signature, constexprs in cases:
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        assert compiled.asm["cubin"], kernel.fn.__name__
