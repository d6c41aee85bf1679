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


def _on_kernel(monkeypatch, choice, fn):
    monkeypatch.setenv("ENTCORE_TORCH_KERNEL", choice)
    return fn()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_triton_kernels_match_chunked_path(monkeypatch, dtype):
    """The Triton kernels (default on CUDA) against the chunked torch path, forward and backward,
    with ``-inf`` entries, an all-very-negative row and per-row temperatures (``token.md`` §8)."""
    x = make_logits((40, 32003), dtype, seed=31)
    x[3] = -60000.0  # very negative, within the float16 range
    x[3, 17] = -59900.0
    labels = finite_labels(x, k=2).cuda()
    temps = torch.linspace(0.6, 1.6, 40).cuda()
    results = {}
    for choice in ("triton", "chunked"):
        xc = x.cuda().requires_grad_()

        def run(xc=xc):
            return et.token_logprob_entropy(xc, labels, temperature=temps, return_collision=True)

        out = _on_kernel(monkeypatch, choice, run)
        sum((o * (i + 1)).sum() for i, o in enumerate(out)).backward()
        results[choice] = (out, xc.grad)
    (out_t, grad_t), (out_c, grad_c) = results["triton"], results["chunked"]
    for a, b in zip(out_t, out_c, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    masked = torch.isneginf(x.cuda())
    assert bool((grad_t[masked] == 0).all()) and bool(torch.isfinite(grad_t).all())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad_t.float(), grad_c.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_linear_head_matches_chunked_path(monkeypatch, dtype):
    hidden, weight, bias, labels = _linear_case(dtype, n=300, vocab=5003, dim=200)
    results = {}
    for choice in ("triton", "chunked"):
        params = [t.cuda().requires_grad_() for t in (hidden, weight, bias)]

        def run(params=params):
            return et.token_logprob_entropy_linear(
                params[0],
                params[1],
                labels.cuda(),
                bias=params[2],
                temperature=0.9,
                ignore_index=-100,
                return_collision=True,
            )

        out = _on_kernel(monkeypatch, choice, run)
        sum((o * (i + 1)).sum() for i, o in enumerate(out)).backward()
        results[choice] = (out, [p.grad for p in params])
    (out_t, grads_t), (out_c, grads_c) = results["triton"], results["chunked"]
    for a, b in zip(out_t, out_c, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads_t, grads_c, strict=True):
        scale = float(b.float().abs().max())
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * scale)
