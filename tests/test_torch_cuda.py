"""CUDA tensors: the chunked path stays on the GPU and agrees with the CPU (Rust) path.

Collected only where a CUDA device exists (``tests/conftest.py``); run on the GPU machine.
"""

from helpers import require_torch

torch = require_torch()

import pytest  # noqa: E402
from test_torch_token import _linear_case, finite_labels, make_logits  # noqa: E402

import entcore.torch as et  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_matches_cpu(dtype):
    """CUDA tensors stay on the GPU (chunked path) and agree with the CPU/Rust path."""
    x = make_logits((64, 3001), dtype, seed=30)
    labels = finite_labels(x, k=2)
    temps = torch.linspace(0.5, 2.0, 64)
    xc = x.cuda().requires_grad_()
    out = et.token_logprob_entropy(
        xc, labels.cuda(), temperature=temps.cuda(), return_collision=True, chunk_rows=17
    )
    assert all(o.is_cuda and o.dtype == torch.float32 for o in out)
    sum(o.sum() for o in out).backward()
    xh = x.clone().requires_grad_()
    cpu = et.token_logprob_entropy(xh, labels, temperature=temps, return_collision=True)
    sum(o.sum() for o in cpu).backward()
    for a, b in zip(out, cpu, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(xc.grad.cpu().float(), xh.grad.float(), rtol=tol, atol=tol)
    top = torch.topk(torch.log_softmax(x.float(), -1), 20).values.cuda()
    assert et.topk_entropy(top, 3001).is_cuda
    hidden, weight, bias, lab = _linear_case(dtype, n=33, vocab=257, dim=64)
    lp, h = et.token_logprob_entropy_linear(
        hidden.cuda(),
        weight.cuda(),
        lab.cuda(),
        bias=bias.cuda(),
        ignore_index=-100,
        vocab_block=64,
    )
    lp_cpu, h_cpu = et.token_logprob_entropy_linear(
        hidden, weight, lab, bias=bias, ignore_index=-100, vocab_block=64
    )
    torch.testing.assert_close(lp.cpu(), lp_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.cpu(), h_cpu, rtol=1e-4, atol=1e-4)
