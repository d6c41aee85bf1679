"""The Triton kernels of ``entcore.torch`` run by Triton's CPU interpreter (``token.md`` §2–§5, §8).

Not collected by a plain ``pytest`` run: ``tests/test_triton_token.py`` runs this module in a
child pytest with ``TRITON_INTERPRET=1`` in the environment, because Triton decides between
compiling and interpreting when it is first imported. Every test forces the kernels with
``ENTCORE_TORCH_KERNEL=triton`` (so CPU tensors go through them) and holds them to the float64
oracle ``entcore.reference.token`` or to float64 torch autograd, on tiny shapes: the interpreter
runs each program in NumPy. The tiles are shrunk (``block=16``, small ``Blocks``) so that every
shape spans several vocabulary tiles, row blocks and splits.
"""

import os

from helpers import require_torch

torch = require_torch()

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_torch_token import (  # noqa: E402
    _linear_case,
    assert_close,
    check_vocab_parallel,
    finite_labels,
    make_logits,
    np64,
    torch64_stats,
)

import entcore.torch as et  # noqa: E402
from entcore.reference import token as ref  # noqa: E402
from entcore.torch import _triton_linear as tlin  # noqa: E402
from entcore.torch import _triton_token as ttok  # noqa: E402
from entcore.torch import token as tt  # noqa: E402

INF = math.inf
HALF = [torch.float16, torch.bfloat16]

if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover - guarded by the runner
    raise RuntimeError(
        "tests/triton_cases.py runs only with TRITON_INTERPRET=1 (see its docstring)"
    )


@pytest.fixture(autouse=True)
def triton_only(monkeypatch):
    """Force the Triton kernels and forbid the torch and Rust paths they replace.

    The interpreter evaluates ``-inf − (-inf)`` and ``inf · 0`` in NumPy, which warns where the
    GPU silently makes the NaN that the kernels select away: such "invalid" warnings are off.
    """
    monkeypatch.setenv("ENTCORE_TORCH_KERNEL", "triton")

    def forbidden(*args, **kwargs):
        raise AssertionError("the Triton kernel must run here")

    monkeypatch.setattr(tt, "_forward_rust", forbidden)
    monkeypatch.setattr(tt, "_forward_chunked", forbidden)
    monkeypatch.setattr(tt, "_tile_logits", forbidden)
    with np.errstate(invalid="ignore"):
        yield


def test_kernels_are_interpreted():
    from triton.runtime.interpreter import InterpretedFunction

    assert isinstance(ttok._logits_forward_kernel, InterpretedFunction)
    assert isinstance(tlin._linear_forward_kernel, InterpretedFunction)


# ---------------------------------------------------------------------------------------------
# Logits path: forward (token.md §2, §3, §4)
# ---------------------------------------------------------------------------------------------


TEMPERATURES = {"T=1": 1.0, "T=0.7": 0.7, "per-row T": "rows"}


def _temps(name, rows):
    value = TEMPERATURES[name]
    return torch.linspace(0.5, 2.0, rows) if value == "rows" else value


@pytest.mark.parametrize("temperature", list(TEMPERATURES), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
def test_forward_matches_reference(dtype, temperature):
    """Random rows with ``-inf`` entries, K = 2 labels, collision; several tiles per row."""
    x = make_logits((6, 300), dtype, seed=3)
    labels = finite_labels(x, k=2)
    temps = _temps(temperature, 6)
    expected = ref.token_logprob_entropy(
        np64(x), labels.numpy(), temperature=np.asarray(temps), return_collision=True
    )
    out = et.token_logprob_entropy(x, labels, temperature=temps, return_collision=True)
    for a, e in zip(out, expected, strict=True):
        assert_close(a, e)
    temps_t = None if not isinstance(temps, torch.Tensor) else temps.double()
    scalar = 1.0 if temps_t is not None else temps
    tiles = ttok.logits_forward(x, labels, temps_t, scalar, True, block=16)
    assert_close(tiles.logprob, expected[0])
    assert_close(tiles.entropy, expected[1])
    assert_close(tiles.collision, expected[2])
    assert not bool(tiles.status.any())


def test_extreme_rows():
    """All-very-negative rows, one-hot, uniform and near-one-hot rows (``token.md`` §2, §10.4)."""
    v = 70
    x = torch.full((6, v), -INF)
    x[0] = -1e30
    x[0, 5] = -1e30 + 1e24
    x[1] = -80000.0
    x[1, 9] = -79999.0
    x[1, 10] = -79998.5
    x[2, 3] = 4.0  # one finite entry: H = 0, ℓ = 0 exactly
    x[3] = 0.25  # uniform: H = log V
    x[4] = -50.0
    x[4, 0] = 100.0  # near one-hot (gap 150)
    x[5, ::2] = torch.linspace(-3.0, 3.0, 35)  # half the entries masked
    labels = torch.tensor([5, 10, 3, 0, 0, 4])
    lp, h, c = et.token_logprob_entropy(x, labels, return_collision=True)
    lp_r, h_r, c_r = ref.token_logprob_entropy(np64(x), labels.numpy(), return_collision=True)
    assert_close(h, h_r)
    assert_close(lp, lp_r)
    assert_close(c, c_r)
    assert float(h[2]) == 0.0 and float(lp[2]) == 0.0
    assert abs(float(h[3]) - math.log(v)) <= 1e-6 * math.log(v)
    assert 0.0 <= float(h[4]) < 1e-40 and torch.isfinite(h).all()
    assert bool((lp <= 0).all())
    tiles = ttok.logits_forward(x, labels[:, None], None, 1.0, True, block=16)
    assert_close(tiles.entropy, h_r)
    assert_close(tiles.logprob[:, 0], lp_r)


def test_label_on_masked_entry_and_ignore_index():
    x = make_logits((4, 40), seed=5)
    x[1, 7] = -INF
    labels = torch.tensor([0, 7, -100, 1])
    x[3, 1] = 2.0
    lp = et.token_logprob(x, labels, ignore_index=-100, temperature=1.5)
    assert float(lp[1]) == -INF and float(lp[2]) == 0.0
    keep = torch.tensor([True, False, False, True])
    expected = ref.token_logprob(np64(x[keep]), labels[keep].numpy(), temperature=1.5)
    assert_close(lp[keep], expected)


def _bad_rows(value):
    x = make_logits((3, 50), seed=6)
    x[1, 4] = value
    return x


def test_errors_and_nan_policy():
    """The documented errors of ``token.md`` §4 from the kernel's status word."""
    x = make_logits((3, 50), seed=6)
    x[2] = -INF
    with pytest.raises(ValueError, match="row 2 has every logit -inf"):
        et.token_entropy(x)
    with pytest.raises(ValueError, match=r"\+inf"):
        et.token_entropy(_bad_rows(INF))
    # The interpreter's NumPy warns where the GPU silently overflows to +inf.
    with pytest.raises(ValueError, match="temperature: too small"), np.errstate(over="ignore"):
        et.token_entropy(_bad_rows(3e38), temperature=1e-3)
    with pytest.raises(ValueError, match="contains NaN"):
        et.token_entropy(_bad_rows(math.nan))
    x = _bad_rows(math.nan)
    lp, h, c = et.token_logprob_entropy(
        x, torch.zeros(3, dtype=torch.int64), nan_policy="propagate", return_collision=True
    )
    assert torch.isnan(h[1]) and torch.isnan(lp[1]) and torch.isnan(c[1])
    keep = torch.tensor([True, False, True])
    assert_close(h[keep], ref.token_entropy(np64(x[keep])))
    with pytest.raises(ValueError, match="labels"):
        et.token_logprob(x, torch.tensor([0, 50, 0]))


# ---------------------------------------------------------------------------------------------
# Logits path: backward (token.md §5)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", list(TEMPERATURES), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_matches_float64_autograd(dtype, temperature):
    """``g_z`` against autograd through float64 torch formulas; 0 exactly on masked entries."""
    x = make_logits((5, 90), dtype, seed=8)
    labels = finite_labels(x, k=2)
    labels[3, 1] = -100
    temps = _temps(temperature, 5)
    gen = torch.Generator().manual_seed(9)
    g_lp, g_h, g_c = torch.randn(5, 2, generator=gen), torch.randn(5, generator=gen), torch.randn(5)
    xg = x.clone().requires_grad_()
    lp, h, c = et.token_logprob_entropy(
        xg, labels, temperature=temps, ignore_index=-100, return_collision=True
    )
    ((lp * g_lp).sum() + (h * g_h).sum() + (c * g_c).sum()).backward()
    assert xg.grad.dtype == dtype
    x64 = x.double().requires_grad_()
    temps64 = torch.as_tensor(temps, dtype=torch.float64).expand(5)
    lp64, h64, c64 = torch64_stats(x64, labels, temps64, ignore_index=-100)
    ((lp64 * g_lp).sum() + (h64 * g_h).sum() + (c64 * g_c).sum()).backward()
    masked = torch.isneginf(x)
    assert bool((xg.grad[masked] == 0).all()) and bool(torch.isfinite(xg.grad).all())
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(xg.grad.double(), x64.grad.nan_to_num(0.0), rtol=tol, atol=tol)


def test_backward_tiles_and_single_outputs():
    """Several tiles per row; each output's gradient alone (the others None)."""
    x = make_logits((4, 100), seed=10)
    labels = finite_labels(x)
    temps = torch.linspace(0.6, 1.4, 4)
    x64 = x.double().requires_grad_()
    lp64, h64, c64 = torch64_stats(x64, labels[:, None], temps.double())
    state = ttok.logits_forward(x, labels[:, None], temps.double(), 1.0, False)
    ones = torch.ones(4)
    for name, out64, grads in [
        ("entropy", h64, (None, ones, None)),
        ("logprob", lp64, (ones[:, None], None, None)),
        ("collision", c64, (None, None, ones)),
    ]:
        (expected,) = torch.autograd.grad(out64.sum(), x64, retain_graph=True)
        g = ttok.logits_backward(
            x, labels[:, None], temps.double(), 1.0, state.lse, state.mu, *grads, block=16
        )
        masked = torch.isneginf(x)
        assert bool((g[masked] == 0).all()), name
        torch.testing.assert_close(g.double(), expected.nan_to_num(0.0), rtol=2e-5, atol=2e-5)


def test_inplace_modification_before_backward_raises():
    """The kernel path saves a reference to the logits: autograd's version counter guards it."""
    x = make_logits((3, 40), seed=11).requires_grad_()
    logits = x * 1.0
    h = et.token_entropy(logits)
    logits.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


# ---------------------------------------------------------------------------------------------
# Fused linear head (token.md §8.2)
# ---------------------------------------------------------------------------------------------


def _materialised(hidden, weight, bias, labels, temperature, grads):
    """float64 outputs and gradients through the logits ``hidden @ weight.T + bias``."""
    h64, w64, b64 = (t.detach().double().requires_grad_() for t in (hidden, weight, bias))
    z = h64 @ w64.T + b64
    labels2d = torch.where(labels == -100, 0, labels)[:, None]
    temps = torch.full((z.shape[0],), float(temperature), dtype=torch.float64)
    lp, h, c = torch64_stats(z, labels2d, temps)
    lp = torch.where(labels == -100, 0.0, lp[:, 0])
    g_lp, g_h, g_c = grads
    ((lp * g_lp).sum() + (h * g_h).sum() + (c * g_c).sum()).backward()
    return (lp, h, c), (h64.grad, w64.grad, b64.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_public_matches_materialised(dtype):
    """Through ``token_logprob_entropy_linear`` (default kernel tiles), with a masked bias entry."""
    hidden, weight, bias, labels = _linear_case(dtype, n=21, vocab=45, dim=20)
    gen = torch.Generator().manual_seed(12)
    grads = tuple(torch.randn(21, generator=gen) for _ in range(3))
    params = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    out = et.token_logprob_entropy_linear(
        *params[:2],
        labels,
        bias=params[2],
        temperature=0.8,
        ignore_index=-100,
        return_collision=True,
        row_block=8,
        vocab_block=16,
    )
    sum((o * g).sum() for o, g in zip(out, grads, strict=True)).backward()
    expected, expected_grads = _materialised(hidden, weight, bias, labels, 0.8, grads)
    ref_lp, ref_h, ref_c = ref.token_logprob_entropy_linear(
        np64(hidden),
        np64(weight),
        labels.numpy(),
        bias=np64(bias),
        temperature=0.8,
        ignore_index=-100,
        return_collision=True,
    )
    tol = 1e-5 if dtype == torch.float32 else 2e-5
    for a, e in zip(out, (ref_lp, ref_h, ref_c), strict=True):
        assert_close(a, e, rtol=tol, atol=tol)
    assert bool((out[0] <= 0).all())
    gtol = 2e-5 if dtype == torch.float32 else 3e-2
    for p, e in zip(params, expected_grads, strict=True):
        assert p.grad.dtype == dtype and bool(torch.isfinite(p.grad).all())
        scale = float(e.abs().max())
        torch.testing.assert_close(p.grad.double(), e, rtol=gtol, atol=gtol * scale)
    assert float(params[2].grad[1]) == 0.0  # the masked vocabulary entry


@pytest.mark.parametrize("splits", [1, 3])
def test_linear_tiles_and_splits(splits):
    """Small tiles: several row blocks, vocabulary tiles, ``D`` slices and splits; no padding
    requirement on ``N``, ``V`` or ``D``."""
    hidden, weight, bias, labels = _linear_case(torch.float32, n=19, vocab=75, dim=21, seed=13)
    blocks = tlin.Blocks(16, 16, 16, splits)
    owned = torch.where(labels >= 0, labels, -1)
    state = tlin.linear_state(hidden, weight, bias, owned, 1.3, True, blocks)
    z = (hidden.double() @ weight.double().T + bias.double()) / 1.3
    lse = torch.logsumexp(z, -1)
    torch.testing.assert_close((state.m + torch.log(state.s)).double(), lse, rtol=1e-6, atol=1e-5)
    y = torch.where(labels >= 0, z.gather(1, labels.clamp(min=0)[:, None])[:, 0], -INF)
    torch.testing.assert_close(state.y.double(), y, rtol=1e-6, atol=1e-5)
    grads = tuple(torch.randn(19, generator=torch.Generator().manual_seed(s)) for s in range(3))
    _, expected = _materialised(hidden, weight, bias, labels, 1.3, grads)
    p = torch.exp(z - lse[:, None])
    mu = (p * torch.where(torch.isfinite(z), z, 0.0)).sum(-1)
    g_lp = torch.where(labels >= 0, grads[0], 0.0)
    d = tlin.linear_backward(
        hidden,
        weight,
        bias,
        owned,
        lse.float(),
        mu.float(),
        (p * p).sum(-1).float(),
        g_lp,
        grads[1],
        grads[2],
        (True, True, True),
        1.3,
        row_block=8,
        vocab_block=40,
        blocks=blocks,
    )
    for a, e in zip(d, expected, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), e, rtol=2e-5, atol=2e-5)


def test_linear_vocab_parallel_gloo(tmp_path):
    """Tensor-parallel vocabulary shards (2 gloo processes, unequal shards, masked entries in
    both): each rank's Triton partial state, merged across ranks, equals the one-process result."""
    check_vocab_parallel(tmp_path, torch.float32, timeout=300, tol=1e-5, grad_tol=1e-5)
