"""The torch face of the token statistics (``token.md`` §2, §5, §6, §7, §8, §10).

Every logits-path test runs on both forward paths on CPU: ``"rust"`` (CPU tensors through the
Rust core, ``token.md`` §8.1 last bullet) and ``"chunked"`` (the pure-torch row-chunk path that
non-CPU tensors take, §8.1 fallback). Values are held to the float64 NumPy oracle
``entcore.reference.token`` within the ``conventions.md`` bounds (fp32: relative 1e-5, absolute
1e-5 near 0; fp16/bf16 against the reference on the exactly upcast values).

The torch face returns float32 whatever the input dtype (``token.md`` §3 Decision), so the
float64 ``gradcheck`` runs use ``eps=1e-3`` (a float32 output rounds at ~6e-8 relative, which the
default ``eps=1e-6`` would amplify to ~1e-1); the exact form of every backward is checked
separately against autograd through float64 torch formulas at ~1e-9.
"""

from helpers import TORCH_REQUIRED, require_torch

torch = require_torch()

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402

import entcore.token as np_token  # noqa: E402
import entcore.torch as et  # noqa: E402
from entcore.reference import token as ref  # noqa: E402
from entcore.torch import token as tt  # noqa: E402

INF = math.inf
RTOL = 1e-5
ATOL = 1e-5
GRADCHECK = {"eps": 1e-3, "atol": 2e-3, "rtol": 1e-3}
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["rust", "chunked"])
def path(request, monkeypatch):
    """Select the CPU forward path of the logits functions (``token.md`` §8.1)."""
    if request.param == "chunked":

        def chunked(x2d, labels2d, temps, opts, need_state):
            return tt._forward_chunked(x2d, labels2d, temps, opts, need_state)

        monkeypatch.setattr(tt, "_forward_rows", chunked)
    else:

        def forbidden(*args, **kwargs):
            raise AssertionError("CPU tensors must go through the Rust core")

        monkeypatch.setattr(tt, "_forward_chunked", forbidden)
    return request.param


def make_logits(shape, dtype=torch.float32, seed=0, masked=0.2, scale=3.0):
    """Random logits with a fraction of ``-inf`` entries, at least one finite entry per row."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    if masked and shape[-1] > 1:
        drop = torch.rand(shape, generator=gen) < masked
        drop[..., 0] = False
        perm = torch.argsort(torch.rand(shape, generator=gen), dim=-1)
        drop = torch.gather(drop, -1, torch.argsort(perm, dim=-1))
        x = x.masked_fill(drop, -INF)
    return x.to(dtype)


def finite_labels(x, k=None, seed=1):
    """Labels on finite entries of ``x`` (shape ``x.shape[:-1]`` or ``+ (k,)``)."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.isfinite(x.double()).reshape(-1, x.shape[-1]).double()
    picks = torch.multinomial(weights, k or 1, replacement=True, generator=gen)
    shape = x.shape[:-1] + ((k,) if k else ())
    return picks.reshape(shape)


def np64(t):
    """The exact float64 NumPy upcast of a tensor (the reference's input)."""
    return t.detach().to(torch.float64).numpy()


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    assert actual.dtype == torch.float32
    np.testing.assert_allclose(actual.detach().double().numpy(), expected, rtol=rtol, atol=atol)


def torch64_stats(x, labels, temps, ignore_index=None):
    """``(logprob, entropy, collision)`` by plain float64 torch ops, differentiable in ``x``.

    Masked entries are handled so that their gradient is exactly 0 (``token.md`` §4, §5).
    ``x (N, V)``, ``labels (N, K)``, ``temps (N,)``.
    """
    zp = x / temps[:, None]
    finite = zp > -INF
    lse = torch.logsumexp(zp, -1, keepdim=True)
    logp = zp - lse
    p = torch.exp(logp)
    entropy = lse[:, 0] - (p * torch.where(finite, zp, 0.0)).sum(-1)
    collision = (p * p).sum(-1)
    ignored = labels == ignore_index if ignore_index is not None else torch.zeros_like(labels) > 0
    gathered = logp.gather(1, torch.where(ignored, 0, labels))
    logprob = torch.where(ignored, 0.0, gathered)
    return logprob, entropy, collision


# ---------------------------------------------------------------------------------------------
# Forward values against the float64 reference (token.md §2, §3, §10.5)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("vocab", [1, 7, 2049])
@pytest.mark.parametrize("temperature", [0.6, 1.0, "rows"])
def test_forward_matches_reference(path, dtype, vocab, temperature):
    x = make_logits((2, 3, vocab), dtype, seed=vocab)
    if temperature == "rows":
        temperature = torch.tensor([[0.6, 1.0, 1.5], [2.0, 0.9, 1.1]])
    temp_np = temperature.numpy() if isinstance(temperature, torch.Tensor) else temperature
    labels = finite_labels(x)
    labels[0, 1] = -100
    labels_k = finite_labels(x, k=3, seed=5)
    x64 = np64(x)

    lp, h, c = et.token_logprob_entropy(
        x, labels, temperature=temperature, ignore_index=-100, return_collision=True
    )
    assert lp.device == x.device and h.shape == (2, 3) and c.shape == (2, 3)
    assert_close(lp, ref.token_logprob(x64, labels.numpy(), temperature=temp_np, ignore_index=-100))
    assert_close(h, ref.token_entropy(x64, temperature=temp_np))
    assert_close(c, ref.collision_probability(x64, temperature=temp_np))
    assert float(lp[0, 1]) == 0.0

    lp_k = et.token_logprob(x, labels_k, temperature=temperature)
    assert lp_k.shape == (2, 3, 3)
    assert_close(lp_k, ref.token_logprob(x64, labels_k.numpy(), temperature=temp_np))
    assert torch.equal(et.token_entropy(x, temperature=temperature), h)
    assert torch.equal(et.collision_probability(x, temperature=temperature), c)


def test_one_dimensional_and_empty_rows(path):
    x = make_logits((9,), seed=3)
    h = et.token_entropy(x)
    assert h.shape == () and h.dtype == torch.float32
    assert_close(h, ref.token_entropy(np64(x)))
    lp = et.token_logprob(x, torch.tensor([0, 0]))
    assert lp.shape == (2,)
    empty = torch.zeros((0, 4))
    assert et.token_entropy(empty).shape == (0,)
    assert et.token_logprob(empty, torch.zeros(0, dtype=torch.int64)).shape == (0,)


def test_edge_rows(path):
    """Uniform, one-hot and near-one-hot rows (``token.md`` §10.4)."""
    vocab = 2048
    uniform = torch.zeros((1, vocab))
    onehot = torch.full((1, vocab), -INF)
    onehot[0, 5] = 3.0
    near = torch.zeros((1, vocab))
    near[0, 7] = 200.0
    x = torch.cat([uniform, onehot, near])
    lp, h, c = et.token_logprob_entropy(x, torch.tensor([0, 5, 7]), return_collision=True)
    assert abs(float(h[0]) - math.log(vocab)) <= 1e-6 * math.log(vocab)
    assert abs(float(c[0]) - 1.0 / vocab) <= 1e-6 / vocab
    assert float(h[1]) == 0.0 and float(lp[1]) == 0.0
    assert 0.0 <= float(h[2]) < 1e-30 and 0.0 <= float(c[2]) <= 1.0
    assert torch.isfinite(h).all() and torch.isfinite(lp).all()


@pytest.mark.parametrize("shift", [-1e4, -30.0, 30.0])
def test_shift_and_permutation_invariance(path, shift):
    """``token.md`` §10.2-3: logits on a 2⁻¹⁰ grid in [−64, 64], so ``z + c`` is exact in fp32."""
    gen = torch.Generator().manual_seed(31)
    x = torch.randint(-(2**16), 2**16, (6, 300), generator=gen).float() / 1024
    labels = torch.randint(0, 300, (6,), generator=gen)
    lp, h, c = et.token_logprob_entropy(x, labels, return_collision=True)
    lp2, h2, c2 = et.token_logprob_entropy(x + shift, labels, return_collision=True)
    for a, b in ((lp, lp2), (h, h2), (c, c2)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    perm = torch.randperm(300, generator=gen)
    inverse = torch.argsort(perm)
    lp3, h3, c3 = et.token_logprob_entropy(x[:, perm], inverse[labels], return_collision=True)
    for a, b in ((lp, lp3), (h, h3), (c, c3)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_chunk_rows_invariance():
    """Any ``chunk_rows`` gives the same per-row values (``token.md`` §8.1, §10.6)."""
    x = make_logits((7, 33), seed=11)
    labels = finite_labels(x, k=2)
    base = tt._forward_chunked(x, labels, None, _opts(x, labels, chunk_rows=None), need_state=True)
    for chunk in (1, 2, 3, 6, 7, 8):
        other = tt._forward_chunked(
            x, labels, None, _opts(x, labels, chunk_rows=chunk), need_state=True
        )
        for a, b in zip(base, other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _opts(x, labels, chunk_rows=None, temperature=1.0, collision=True):
    return tt._Options(
        rows=x.shape[0],
        vocab=x.shape[1],
        row_shape=(x.shape[0],),
        labels_shape=tuple(labels.shape),
        temperature=temperature,
        ignore_index=None,
        collision=collision,
        propagate=False,
        nan_policy="raise",
        chunk_rows=chunk_rows,
    )


def test_default_chunk_rows_fits_budget():
    """Default chunk: the largest row count whose fp32 temporaries fit 256 MiB (§8.1)."""
    rows = tt._default_chunk_rows(151936, torch.float32)
    assert rows >= 1
    per_row = 4 * 151936 * tt._LIVE_TEMPORARIES
    assert rows * per_row <= tt.CHUNK_BYTES < (rows + 1) * per_row
    assert tt._default_chunk_rows(10**9, torch.float32) == 1


def test_public_chunk_rows_argument(path):
    x = make_logits((5, 17), seed=2)
    labels = finite_labels(x)
    for chunk in (1, 2, 5, 100):
        lp, h = et.token_logprob_entropy(x, labels, chunk_rows=chunk)
        assert_close(h, ref.token_entropy(np64(x)))
        assert_close(lp, ref.token_logprob(np64(x), labels.numpy()))


def test_inputs_not_modified(path):
    """Logits are never divided in place (verl PR #2484, OpenRLHF PR #1319; ``token.md`` §1)."""
    for dtype in FLOAT_DTYPES:
        x = make_logits((4, 9), dtype, seed=4)
        before = x.clone()
        labels = finite_labels(x)
        temps = torch.tensor([0.5, 1.0, 2.0, 3.0])
        et.token_logprob_entropy(x, labels, temperature=temps, return_collision=True)
        assert torch.equal(x, before)
        x.requires_grad_()
        out = et.token_logprob_entropy(x, labels, temperature=0.7, return_collision=True)
        sum(o.sum() for o in out).backward()
        assert torch.equal(x.detach(), before)


def test_non_contiguous_input(path):
    base = make_logits((9, 6), seed=8)
    x = base.t()  # (6, 9), non-contiguous
    assert not x.is_contiguous()
    assert_close(et.token_entropy(x, temperature=1.3), ref.token_entropy(np64(x), temperature=1.3))
    xg = x.detach().clone().t().contiguous().t().requires_grad_()
    h = et.token_entropy(xg)
    h.sum().backward()
    assert xg.grad.shape == xg.shape and torch.isfinite(xg.grad).all()


def test_temperature_monotone_and_rows_equal_scalar(path):
    """``H`` non-decreasing in ``T``; per-row ``T`` equal to a scalar gives identical results."""
    x = make_logits((6, 50), seed=9)
    hs = [et.token_entropy(x, temperature=t) for t in (0.3, 0.6, 1.0, 1.5, 4.0)]
    for a, b in zip(hs, hs[1:], strict=False):
        assert torch.all(b >= a - 1e-6)
    rows = et.token_entropy(x, temperature=torch.full((6,), 0.6, dtype=torch.float64))
    assert torch.equal(rows, hs[1])


def test_entropy_temperature_derivative_identity():
    """``∂H/∂T = Var_p(z')/T`` (``token.md`` §5), by central differences of the forward."""
    x = make_logits((4, 40), torch.float64, seed=10, masked=0.1)
    t, step = 1.3, 1e-3
    numeric = (
        et.token_entropy(x, temperature=t + step).double()
        - et.token_entropy(x, temperature=t - step).double()
    ) / (2 * step)
    zp = x / t
    p = torch.softmax(zp, -1)
    zf = torch.where(torch.isfinite(zp), zp, 0.0)
    mean = (p * zf).sum(-1, keepdim=True)
    var = (p * torch.where(torch.isfinite(zp), zf - mean, 0.0) ** 2).sum(-1)
    torch.testing.assert_close(numeric, var / t, rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------------------------
# Errors (conventions.md "Inputs and errors", token.md §4, §10.12)
# ---------------------------------------------------------------------------------------------


def _bad_row(value):
    x = make_logits((3, 5), seed=12)
    x[1, 2] = value
    return x


def _ones(*shape, dtype=torch.float32):
    return torch.ones(shape, dtype=dtype)


# (name, function, make() -> (args, kwargs), exception, also checked on the NumPy face)
ERROR_CASES = [
    (
        "int logits",
        "token_entropy",
        lambda: ([_ones(2, 3, dtype=torch.int32)], {}),
        TypeError,
        True,
    ),
    (
        "numpy logits",
        "token_entropy",
        lambda: ([np.ones((2, 3), np.float32)], {}),
        TypeError,
        False,
    ),
    ("0-d logits", "token_entropy", lambda: ([torch.tensor(1.0)], {}), ValueError, True),
    ("V = 0", "token_entropy", lambda: ([_ones(2, 0)], {}), ValueError, True),
    ("T = 0", "token_entropy", lambda: ([_ones(2, 3)], {"temperature": 0.0}), ValueError, True),
    ("T < 0", "token_entropy", lambda: ([_ones(2, 3)], {"temperature": -1.0}), ValueError, True),
    (
        "T nan",
        "token_entropy",
        lambda: ([_ones(2, 3)], {"temperature": math.nan}),
        ValueError,
        True,
    ),
    ("T inf", "token_entropy", lambda: ([_ones(2, 3)], {"temperature": INF}), ValueError, True),
    (
        "T row <= 0",
        "token_entropy",
        lambda: ([_ones(2, 3)], {"temperature": torch.tensor([1.0, 0.0], dtype=torch.float64)}),
        ValueError,
        True,
    ),
    (
        "T shape",
        "token_entropy",
        lambda: ([_ones(2, 3)], {"temperature": torch.ones(3, dtype=torch.float64)}),
        ValueError,
        True,
    ),
    ("+inf", "token_entropy", lambda: ([_bad_row(INF)], {}), ValueError, True),
    ("NaN", "token_entropy", lambda: ([_bad_row(math.nan)], {}), ValueError, True),
    (
        "+inf propagate",
        "token_entropy",
        lambda: ([_bad_row(INF)], {"nan_policy": "propagate"}),
        ValueError,
        True,
    ),
    (
        "+inf in a NaN row",
        "token_entropy",
        lambda: (
            [_bad_row(math.nan).index_fill(1, torch.tensor([4]), INF)],
            {"nan_policy": "propagate"},
        ),
        ValueError,
        True,
    ),
    (
        "all -inf row",
        "token_entropy",
        lambda: ([torch.tensor([[0.0, 1.0], [-INF, -INF]])], {}),
        ValueError,
        True,
    ),
    (
        "nan_policy",
        "token_entropy",
        lambda: ([_ones(2, 3)], {"nan_policy": "omit"}),
        ValueError,
        True,
    ),
    (
        "label >= V",
        "token_logprob",
        lambda: ([_ones(2, 3), torch.tensor([0, 3])], {}),
        ValueError,
        True,
    ),
    (
        "label < 0",
        "token_logprob",
        lambda: ([_ones(2, 3), torch.tensor([0, -1])], {}),
        ValueError,
        True,
    ),
    (
        "label not ignore_index",
        "token_logprob",
        lambda: ([_ones(2, 3), torch.tensor([0, -1])], {"ignore_index": -100}),
        ValueError,
        True,
    ),
    (
        "K labels out of range",
        "token_logprob",
        lambda: ([_ones(2, 3), torch.tensor([[0, 1], [2, 7]])], {}),
        ValueError,
        True,
    ),
    (
        "float labels",
        "token_logprob",
        lambda: ([_ones(2, 3), torch.tensor([0.0, 1.0])], {}),
        TypeError,
        True,
    ),
    (
        "bool labels",
        "token_logprob",
        lambda: ([_ones(2, 3), torch.tensor([True, False])], {}),
        TypeError,
        True,
    ),
    (
        "labels shape",
        "token_logprob",
        lambda: ([_ones(2, 3), torch.tensor([0, 1, 2])], {}),
        ValueError,
        True,
    ),
    (
        "ignore_index type",
        "token_logprob",
        lambda: ([_ones(2, 3), torch.tensor([0, 1])], {"ignore_index": 1.5}),
        TypeError,
        True,
    ),
    (
        "chunk_rows 0",
        "token_entropy",
        lambda: ([_ones(2, 3)], {"chunk_rows": 0}),
        ValueError,
        False,
    ),
    (
        "collision NaN",
        "collision_probability",
        lambda: ([_bad_row(math.nan)], {}),
        ValueError,
        True,
    ),
]


def _call(face, name, make, convert):
    args, kwargs = make()
    args = [convert(a) for a in args]
    kwargs = {k: convert(v) for k, v in kwargs.items()}
    return getattr(face, name)(*args, **kwargs)


@pytest.mark.parametrize(
    "name, make, error", [c[1:4] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_errors(path, name, make, error):
    with pytest.raises(error):
        _call(et, name, make, lambda v: v)


MIRRORED = [c for c in ERROR_CASES if c[4]]


@pytest.mark.parametrize(
    "name, make, error", [c[1:4] for c in MIRRORED], ids=[c[0] for c in MIRRORED]
)
def test_errors_mirror_numpy_face(name, make, error):
    """The NumPy face raises the same exception type on the same values (conventions.md)."""

    def to_numpy(v):
        return v.numpy() if isinstance(v, torch.Tensor) else v

    with pytest.raises(error):
        _call(np_token, name, make, to_numpy)


def test_errors_also_under_grad(path):
    x = _bad_row(math.nan).requires_grad_()
    with pytest.raises(ValueError):
        et.token_entropy(x)
    with pytest.raises(ValueError):
        et.token_logprob(torch.ones(2, 3, requires_grad=True), torch.tensor([0, 9]))


def test_nan_propagate_only_affected_rows(path):
    x = _bad_row(math.nan)
    labels = torch.tensor([0, 0, 0])
    lp, h, c = et.token_logprob_entropy(x, labels, nan_policy="propagate", return_collision=True)
    assert torch.isnan(h[1]) and torch.isnan(lp[1]) and torch.isnan(c[1])
    keep = torch.tensor([True, False, True])
    assert_close(h[keep], ref.token_entropy(np64(x[keep])))
    ignored = et.token_logprob(
        x, torch.tensor([0, -100, 0]), ignore_index=-100, nan_policy="propagate"
    )
    assert float(ignored[1]) == 0.0


# ---------------------------------------------------------------------------------------------
# Gradients (token.md §5, §10.8)
# ---------------------------------------------------------------------------------------------


GRAD_CASES = {
    "scalar T": {"temperature": 0.7},
    "T = 1": {"temperature": 1.0},
    "per-row T": {"temperature": "rows"},
    "ignore_index": {"temperature": 1.3, "ignore": True},
    "K labels": {"temperature": 0.8, "k": 3, "ignore": True},
    "chunks": {"temperature": "rows", "k": 2, "chunk_rows": 2},
}


def _grad_case(case, dtype=torch.float64):
    x = make_logits((5, 6), dtype, seed=21, masked=0.25)
    labels = finite_labels(x, k=case.get("k"))
    ignore = None
    if case.get("ignore"):
        ignore = -100
        labels.view(-1)[1] = -100
        labels.view(-1)[-1] = -100
    temperature = case["temperature"]
    if temperature == "rows":
        temperature = torch.tensor([0.5, 0.9, 1.0, 1.7, 3.0], dtype=torch.float64)
    return x, labels, temperature, ignore


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradcheck_logits(path, name):
    case = GRAD_CASES[name]
    x, labels, temperature, ignore = _grad_case(case)
    x.requires_grad_()

    def fn(x):
        return et.token_logprob_entropy(
            x,
            labels,
            temperature=temperature,
            ignore_index=ignore,
            return_collision=True,
            chunk_rows=case.get("chunk_rows"),
        )

    assert gradcheck(fn, (x,), **GRADCHECK)


@pytest.mark.parametrize("name", list(GRAD_CASES))
@pytest.mark.parametrize("outputs", ["all", "logprob", "entropy", "collision"])
def test_gradients_match_float64_autograd(path, name, outputs):
    """The fused backward equals autograd through float64 formulas, 0 on masked entries."""
    case = GRAD_CASES[name]
    x, labels, temperature, ignore = _grad_case(case)
    if not isinstance(temperature, torch.Tensor):
        temps = torch.full((5,), temperature, dtype=torch.float64)
    else:
        temps = temperature
    gen = torch.Generator().manual_seed(3)
    # Upstream grads exactly representable in float32 (the outputs' dtype).
    weights = [torch.randn(t, generator=gen).double() for t in (labels.shape, (5,), (5,))]
    use = {"all": (1, 1, 1), "logprob": (1, 0, 0), "entropy": (0, 1, 0), "collision": (0, 0, 1)}[
        outputs
    ]

    xa = x.clone().requires_grad_()
    lp, h, c = et.token_logprob_entropy(
        xa,
        labels,
        temperature=temperature,
        ignore_index=ignore,
        return_collision=True,
        chunk_rows=case.get("chunk_rows"),
    )
    loss = sum(
        u * (w * o.double()).sum() for u, w, o in zip(use, weights, (lp, h, c), strict=True) if u
    )
    loss.backward()

    xr = x.clone().requires_grad_()
    labels2d = labels.reshape(5, -1)
    rlp, rh, rc = torch64_stats(xr, labels2d, temps, ignore)
    rloss = sum(
        u * (w.reshape(o.shape) * o).sum()
        for u, w, o in zip(use, weights, (rlp, rh, rc), strict=True)
        if u
    )
    rloss.backward()

    tol = 1e-9 if path == "chunked" else 2e-6  # the Rust core hands back float32 LSE and H
    torch.testing.assert_close(xa.grad, xr.grad, rtol=tol, atol=tol)
    masked = torch.isneginf(x)
    assert torch.all(xa.grad[masked] == 0.0)
    assert torch.isfinite(xa.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gradient_dtype_and_masked_zero(path, dtype):
    """Gradient in ``logits``' dtype, exactly 0 at ``-inf``, no NaN (verl/TRL give NaN)."""
    x = make_logits((4, 300), dtype, seed=5, masked=0.5).requires_grad_()
    labels = finite_labels(x)
    lp, h, c = et.token_logprob_entropy(x, labels, temperature=0.7, return_collision=True)
    (lp.sum() + h.sum() + c.sum()).backward()
    assert x.grad.dtype == dtype
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[torch.isneginf(x.detach())] == 0)
    ref_x = x.detach().double().requires_grad_()
    rlp, rh, rc = torch64_stats(ref_x, labels[:, None], torch.full((4,), 0.7))
    (rlp.sum() + rh.sum() + rc.sum()).backward()
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=tol, atol=tol)


def test_label_on_masked_entry(path):
    """``ℓ = -inf`` for a label on a ``-inf`` logit; its gradient ``onehot − p`` is finite."""
    x = torch.tensor([[0.0, -INF, 1.0]], dtype=torch.float64, requires_grad=True)
    lp = et.token_logprob(x, torch.tensor([1]))
    assert float(lp.detach()[0]) == -INF
    lp.backward(torch.ones(1))
    assert torch.isfinite(x.grad).all()
    assert float(x.grad[0, 1]) == 1.0


def test_no_grad_saves_nothing(path):
    """Under ``torch.no_grad()`` (TRL's logged entropy) nothing is saved (``token.md`` §5)."""
    x = make_logits((3, 10), seed=6).requires_grad_()
    labels = finite_labels(x)
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.no_grad():
            lp, h, c = et.token_logprob_entropy(x, labels, return_collision=True)
        assert lp.grad_fn is None and h.grad_fn is None and c.grad_fn is None
        assert not h.requires_grad
        h2 = et.token_entropy(x.detach())
        assert h2.grad_fn is None
    assert packed == []


def test_saves_reference_and_two_numbers_per_row(path):
    x = make_logits((3, 10), seed=7).requires_grad_()
    labels = finite_labels(x)
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, h = et.token_logprob_entropy(x, labels)
    big = [t for t in packed if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()  # a reference, not a copy
    floats = [t for t in packed if t.dtype == torch.float32 and t is not big[0]]
    assert sorted(t.shape for t in floats) == [(3,), (3,)]  # LSE and μ
    assert h.grad_fn is lp.grad_fn  # one autograd node for the joint outputs


def test_inplace_modification_between_forward_and_backward_raises(path):
    """autograd's version counter catches ``logits.div_(T)`` after the forward (§5)."""
    leaf = make_logits((3, 8), seed=13).requires_grad_()
    x = leaf * 1.0
    h = et.token_entropy(x, temperature=0.7)
    with torch.no_grad():
        x.div_(0.7)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


def test_unused_outputs_and_double_backward(path):
    x = make_logits((3, 8), torch.float64, seed=14).requires_grad_()
    labels = finite_labels(x)
    lp, h, c = et.token_logprob_entropy(x, labels, return_collision=True)
    (g,) = torch.autograd.grad(h.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


# ---------------------------------------------------------------------------------------------
# Zero copy into the Rust core (conventions.md; token.md §8.1)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str
)
def test_cpu_input_reaches_the_core_without_copy(monkeypatch, dtype):
    seen = []
    original = np_token._core.token_stats

    def spy(logits, kind, *args):
        seen.append((logits.__array_interface__["data"][0], kind))
        return original(logits, kind, *args)

    monkeypatch.setattr(np_token._core, "token_stats", spy)
    x = make_logits((4, 64), dtype, seed=15)
    et.token_entropy(x)
    x.requires_grad_()
    et.token_logprob_entropy(x, finite_labels(x))
    kinds = {
        torch.float32: "f32",
        torch.float16: "f16",
        torch.bfloat16: "bf16",
        torch.float64: "f64",
    }
    assert seen == [(x.data_ptr(), kinds[dtype])] * 2


# ---------------------------------------------------------------------------------------------
# Rényi entropy (token.md §6)
# ---------------------------------------------------------------------------------------------

ALPHAS = [0.0, 0.5, 1.0, 1.0 + 5e-5, 1.0 - 5e-5, 2.0, 3.0, 50.0, INF]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_renyi_matches_reference(alpha, dtype):
    x = make_logits((3, 4, 37), dtype, seed=16)
    temps = torch.tensor([[0.7, 1.0, 1.3, 2.0]])
    out = et.renyi_entropy(x, alpha, temperature=temps)
    assert out.shape == (3, 4) and out.dtype == torch.float32
    assert_close(out, ref.renyi_entropy(np64(x), alpha, temperature=temps.numpy()))


def test_renyi_order_and_special_cases():
    x = make_logits((5, 40), seed=17)
    h = {a: et.renyi_entropy(x, a) for a in (0.0, 1.0, 2.0, INF)}
    assert torch.all(h[INF] <= h[2.0] + 1e-6) and torch.all(h[2.0] <= h[1.0] + 1e-6)
    assert torch.all(h[1.0] <= h[0.0] + 1e-6)
    assert torch.equal(h[1.0], et.token_entropy(x))
    torch.testing.assert_close(
        h[2.0], -torch.log(et.collision_probability(x)), rtol=1e-6, atol=1e-6
    )
    near = [et.renyi_entropy(x, 1.0 + d) for d in (-2e-4, -5e-5, 5e-5, 2e-4)]
    for a, b in zip(near, near[1:], strict=False):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)  # continuous through α = 1


@pytest.mark.parametrize("alpha", [0.5, 2.0, 3.0, 1.0 + 5e-5, 1.0 - 5e-5, INF])
def test_renyi_gradcheck(alpha):
    x = make_logits((4, 6), torch.float64, seed=18, masked=0.25).requires_grad_()
    temps = torch.tensor([0.6, 1.0, 1.4, 2.5])
    assert gradcheck(lambda x: et.renyi_entropy(x, alpha, temperature=temps), (x,), **GRADCHECK)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 3.0, 1.0 + 5e-5, 1.0 - 3e-5])
def test_renyi_gradient_formula(alpha):
    """§5: ``(1/T) α/(1−α) (p^(α) − p)``; near 1 the gradient of the §6 expansion."""
    x = make_logits((4, 9), torch.float64, seed=19, masked=0.3)
    temps = torch.tensor([0.6, 1.0, 1.4, 2.5])
    xa = x.clone().requires_grad_()
    et.renyi_entropy(xa, alpha, temperature=temps).double().sum().backward()

    xr = x.clone().requires_grad_()
    zp = xr / temps[:, None]
    finite = torch.isfinite(zp)
    lse = torch.logsumexp(zp, -1)
    if abs(alpha - 1.0) < 1e-4:
        p = torch.softmax(zp, -1)
        zf = torch.where(finite, zp, 0.0)
        mean = (p * zf).sum(-1)
        dev = torch.where(finite, zf - mean[:, None], 0.0)
        var = (p * dev * dev).sum(-1)
        value = lse - mean - (alpha - 1.0) * var / 2.0
    else:
        value = (torch.logsumexp(alpha * zp, -1) - alpha * lse) / (1.0 - alpha)
    value.sum().backward()
    torch.testing.assert_close(xa.grad, xr.grad, rtol=1e-9, atol=1e-9)
    assert torch.all(xa.grad[torch.isneginf(x)] == 0)


def test_renyi_alpha_zero_and_errors():
    x = make_logits((3, 10), seed=20).requires_grad_()
    h0 = et.renyi_entropy(x, 0.0)
    finite = torch.isfinite(x.detach()).sum(-1).double()
    torch.testing.assert_close(h0.double(), torch.log(finite), rtol=1e-6, atol=1e-6)
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError):
            et.renyi_entropy(x, bad)
    with pytest.raises(ValueError):
        et.renyi_entropy(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError):
        et.renyi_entropy(_bad_row(math.nan), 2.0)
    with pytest.raises(TypeError):
        et.renyi_entropy(torch.ones(2, 3, dtype=torch.int64), 2.0)
    out = et.renyi_entropy(_bad_row(math.nan), 2.0, nan_policy="propagate")
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()


# ---------------------------------------------------------------------------------------------
# Top-k entropy (token.md §7)
# ---------------------------------------------------------------------------------------------


def _topk_case(seed=22, vocab=50, k=5):
    x = make_logits((3, 4, vocab), torch.float64, seed=seed, masked=0.0)
    logp = torch.log_softmax(x, -1)
    top = torch.topk(logp, k, dim=-1).values
    top[0, 0, -2:] = -INF  # absent entries
    return logp, top


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_topk_matches_reference(dtype):
    logp, top = _topk_case()
    top = top.to(dtype)
    vocab = logp.shape[-1]
    bounds = et.topk_entropy_bounds(top, vocab)
    assert isinstance(bounds, et.TopkEntropy)
    rb = ref.topk_entropy_bounds(np64(top), vocab)
    for name in ("lower", "estimate", "upper"):
        value = getattr(bounds, name)
        assert value.dtype == torch.float32 and value.shape == (3, 4)
        assert_close(value, getattr(rb, name))
    for mode in tt.TOPK_MODES:
        size = vocab if mode in ("estimate", "lower", "upper") else None
        assert_close(
            et.topk_entropy(top, size, mode=mode), ref.topk_entropy(np64(top), size, mode=mode)
        )
        assert_close(
            et.topk_entropy(top, vocab, mode=mode), ref.topk_entropy(np64(top), vocab, mode=mode)
        )


def test_topk_bounds_hold_and_full_vocab_exact():
    logp, top = _topk_case(seed=23, vocab=40, k=6)
    top[0, 0] = torch.topk(logp[0, 0], 6).values  # no absent entries in the ordering check
    vocab = logp.shape[-1]
    h = et.token_entropy(logp)
    b = et.topk_entropy_bounds(top, vocab)
    trunc = et.topk_entropy(top, mode="truncated")
    bucket = et.topk_entropy(top, mode="bucket")
    assert torch.all(trunc <= bucket + 1e-6) and torch.all(bucket <= b.lower + 1e-6)
    assert torch.all(b.lower <= h + 1e-5) and torch.all(h <= b.upper + 1e-5)
    full = et.topk_entropy_bounds(logp, vocab)
    for value in full:
        torch.testing.assert_close(value, h, rtol=1e-5, atol=1e-5)


TOPK_ERRORS = [
    ("mode", lambda t: et.topk_entropy(t, 50, mode="median"), ValueError),
    ("vocab None", lambda t: et.topk_entropy(t, None, mode="upper"), ValueError),
    ("vocab < k", lambda t: et.topk_entropy_bounds(t, 3), ValueError),
    ("vocab float", lambda t: et.topk_entropy_bounds(t, 50.0), TypeError),
    (
        "int dtype",
        lambda t: et.topk_entropy_bounds(torch.zeros(3, dtype=torch.int64), 50),
        TypeError,
    ),
    ("0-d", lambda t: et.topk_entropy_bounds(t[0, 0, 0], 50), ValueError),
    ("k = 0", lambda t: et.topk_entropy_bounds(t[..., :0], 50), ValueError),
    ("sum > 1", lambda t: et.topk_entropy_bounds(t + 1.0, 50), ValueError),
    ("nan", lambda t: et.topk_entropy_bounds(t.masked_fill(t < -1e9, math.nan), 50), ValueError),
    ("all absent", lambda t: et.topk_entropy_bounds(torch.full_like(t, -INF), 50), ValueError),
]


@pytest.mark.parametrize(
    "call, error", [c[1:] for c in TOPK_ERRORS], ids=[c[0] for c in TOPK_ERRORS]
)
def test_topk_errors(call, error):
    _, top = _topk_case()
    with pytest.raises(error):
        call(top)


# ---------------------------------------------------------------------------------------------
# Fused linear head (token.md §8.2)
# ---------------------------------------------------------------------------------------------


def _linear_case(dtype=torch.float64, n=5, vocab=7, dim=3, seed=24, masked_bias=True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, dim, generator=gen, dtype=torch.float64).to(dtype)
    weight = torch.randn(vocab, dim, generator=gen, dtype=torch.float64).to(dtype)
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64).to(dtype)
    if masked_bias:
        bias[1] = -INF  # a masked vocabulary entry
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[labels == 1] = 0
    labels[2] = -100
    return hidden, weight, bias, labels


BLOCKS = [(2, 3), (5, 4), (3, 7), (1, 2), (4, 100)]


@pytest.mark.parametrize("row_block, vocab_block", BLOCKS)
def test_linear_gradcheck(row_block, vocab_block):
    hidden, weight, bias, labels = _linear_case()
    inputs = tuple(t.requires_grad_() for t in (hidden, weight, bias))

    def fn(hidden, weight, bias):
        return et.token_logprob_entropy_linear(
            hidden,
            weight,
            labels,
            temperature=0.8,
            bias=bias,
            ignore_index=-100,
            return_collision=True,
            row_block=row_block,
            vocab_block=vocab_block,
        )

    assert gradcheck(fn, inputs, **GRADCHECK)


@pytest.mark.parametrize("row_block, vocab_block", BLOCKS + [(None, None)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_materialised_logits_fp32(row_block, vocab_block, with_bias):
    """fp32 forward and grads against autograd through the materialised logits (rel 1e-4).

    The materialised path runs in float64 on the same (exactly upcast) fp32 parameters, so it is
    the more accurate side of the comparison (``token.md`` §8.2, §10.6, §10.8).
    """
    n, vocab = 13, 29
    hidden, weight, bias, labels = _linear_case(
        torch.float32, n=n, vocab=vocab, dim=11, masked_bias=with_bias
    )
    if not with_bias:
        bias = None
    params = [t for t in (hidden, weight, bias) if t is not None]
    gen = torch.Generator().manual_seed(4)
    wl, wh, wc = (torch.randn(n, generator=gen) for _ in range(3))

    fused = [t.clone().requires_grad_() for t in params]
    lp, h, c = et.token_logprob_entropy_linear(
        fused[0],
        fused[1],
        labels,
        temperature=0.9,
        bias=fused[2] if with_bias else None,
        ignore_index=-100,
        return_collision=True,
        row_block=row_block,
        vocab_block=vocab_block,
    )
    ((wl * lp).sum() + (wh * h).sum() + (wc * c).sum()).backward()

    plain = [t.detach().double().requires_grad_() for t in params]
    logits = plain[0] @ plain[1].t()
    if with_bias:
        logits = logits + plain[2]
    rlp, rh, rc = torch64_stats(
        logits, labels[:, None], torch.full((n,), 0.9, dtype=torch.float64), ignore_index=-100
    )
    ((wl * rlp[:, 0]).sum() + (wh * rh).sum() + (wc * rc).sum()).backward()

    for a, b in zip((lp, h, c), (rlp[:, 0], rh, rc), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)
    for a, b in zip(fused, plain, strict=True):
        assert a.grad.dtype == torch.float32 and torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-5)
    if with_bias:
        assert float(fused[2].grad[1]) == 0.0  # masked vocabulary entry


def test_linear_matches_reference_and_logprob_nonpositive():
    hidden, weight, bias, labels = _linear_case(torch.float32, n=40, vocab=300, dim=24)
    hidden = hidden * 4
    r_lp, r_h, r_c = ref.token_logprob_entropy_linear(
        np64(hidden),
        np64(weight),
        labels.numpy(),
        temperature=0.7,
        bias=np64(bias),
        ignore_index=-100,
        return_collision=True,
    )
    for rb, vb in [(7, 64), (40, 300), (16, 128)]:
        lp, h, c = et.token_logprob_entropy_linear(
            hidden,
            weight,
            labels,
            temperature=0.7,
            bias=bias,
            ignore_index=-100,
            return_collision=True,
            row_block=rb,
            vocab_block=vb,
        )
        assert_close(lp, r_lp, rtol=1e-4)
        assert_close(h, r_h, rtol=1e-4)
        assert_close(c, r_c, rtol=1e-4)
        assert torch.all(lp <= 0)
        assert float(lp[2]) == 0.0  # ignore_index


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_linear_half_precision(dtype):
    hidden, weight, bias, labels = _linear_case(dtype, n=9, vocab=31, dim=16)
    params = [t.requires_grad_() for t in (hidden, weight, bias)]
    lp, h = et.token_logprob_entropy_linear(
        params[0], params[1], labels, bias=params[2], ignore_index=-100, vocab_block=8
    )
    assert lp.dtype == h.dtype == torch.float32
    r_lp, r_h = ref.token_logprob_entropy_linear(
        np64(hidden), np64(weight), labels.numpy(), bias=np64(bias), ignore_index=-100
    )
    assert_close(lp, r_lp, rtol=1e-4)
    assert_close(h, r_h, rtol=1e-4)
    (lp.sum() + h.sum()).backward()
    for t in params:
        assert t.grad.dtype == dtype and torch.isfinite(t.grad.float()).all()


def test_linear_no_grad_and_errors():
    hidden, weight, bias, labels = _linear_case(torch.float32)
    hidden.requires_grad_()
    with torch.no_grad():
        lp, h = et.token_logprob_entropy_linear(
            hidden, weight, labels, bias=bias, ignore_index=-100
        )
    assert lp.grad_fn is None and h.grad_fn is None
    with pytest.raises(ValueError):
        et.token_logprob_entropy_linear(hidden, weight, labels)  # -100 without ignore_index
    with pytest.raises(ValueError):
        et.token_logprob_entropy_linear(hidden, weight[:, :2], labels, ignore_index=-100)
    with pytest.raises(ValueError):
        et.token_logprob_entropy_linear(hidden, weight, labels[:3], ignore_index=-100)
    with pytest.raises(ValueError):
        et.token_logprob_entropy_linear(hidden, weight, labels, bias=bias[:3], ignore_index=-100)
    with pytest.raises(ValueError):
        et.token_logprob_entropy_linear(hidden, weight, labels, temperature=0.0, ignore_index=-100)
    with pytest.raises(ValueError):
        et.token_logprob_entropy_linear(hidden, weight[:0], labels, ignore_index=-100)
    with pytest.raises(TypeError):
        et.token_logprob_entropy_linear(hidden.long(), weight, labels, ignore_index=-100)
    with pytest.raises(TypeError):
        et.token_logprob_entropy_linear(hidden, weight, labels.float(), ignore_index=-100)
    with pytest.raises(ValueError):
        et.token_logprob_entropy_linear(hidden[0], weight, labels, ignore_index=-100)
    with pytest.raises(ValueError):
        et.token_logprob_entropy_linear(hidden, weight, labels, ignore_index=-100, row_block=0)


_TP_WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    import entcore.torch as et

    rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    data = torch.load(sys.argv[5])
    bounds = data["bounds"]
    lo, hi = bounds[rank], bounds[rank + 1]
    hidden = data["hidden"].clone().requires_grad_()
    weight = data["weight"][lo:hi].clone().requires_grad_()
    bias = data["bias"][lo:hi].clone().requires_grad_()
    lp, h, c = et.token_logprob_entropy_linear(
        hidden, weight, data["labels"], temperature=0.8, bias=bias, ignore_index=-100,
        return_collision=True, vocab_block=3, row_block=4, vocab_process_group=dist.group.WORLD,
    )
    w = data["weights"]
    ((w[0] * lp).sum() + (w[1] * h).sum() + (w[2] * c).sum()).backward()
    torch.save({"lp": lp, "h": h, "c": c, "dh": hidden.grad, "dw": weight.grad,
                "db": bias.grad}, out)
    dist.barrier()  # no rank tears gloo down while a peer is still talking to it
    dist.destroy_process_group()
    """
)


def check_vocab_parallel(tmp_path, dtype, *, timeout: float, tol: float, grad_tol: float) -> None:
    """Two gloo processes, each holding an unequal vocabulary shard of the LM head (masked
    entries in both), run :data:`_TP_WORKER`; each rank's log-probs, entropies, collisions and
    gradients must equal the one-process result (its shard of the weight and bias gradients)."""
    hidden, weight, bias, labels = _linear_case(dtype, n=6, vocab=11, dim=5)
    bias[8] = -INF  # masked entries in both shards
    weights = torch.randn(3, 6, generator=torch.Generator().manual_seed(9), dtype=dtype)
    bounds = [0, 4, 11]  # unequal shards
    data = {"hidden": hidden, "weight": weight, "bias": bias, "labels": labels}
    torch.save(data | {"weights": weights, "bounds": bounds}, tmp_path / "data.pt")
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TP_WORKER, str(rank), "2", init]
            + [str(tmp_path / f"out{rank}.pt"), str(tmp_path / "data.pt")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, output.decode()
    params = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    lp, h, c = et.token_logprob_entropy_linear(
        params[0],
        params[1],
        labels,
        temperature=0.8,
        bias=params[2],
        ignore_index=-100,
        return_collision=True,
    )
    ((weights[0] * lp).sum() + (weights[1] * h).sum() + (weights[2] * c).sum()).backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"out{rank}.pt")
        lo, hi = bounds[rank], bounds[rank + 1]
        for name, expected in (("lp", lp), ("h", h), ("c", c)):
            torch.testing.assert_close(got[name], expected, rtol=tol, atol=tol)
        torch.testing.assert_close(got["dh"], params[0].grad, rtol=grad_tol, atol=grad_tol)
        torch.testing.assert_close(got["dw"], params[1].grad[lo:hi], rtol=grad_tol, atol=grad_tol)
        torch.testing.assert_close(got["db"], params[2].grad[lo:hi], rtol=grad_tol, atol=grad_tol)


def test_linear_vocab_parallel_gloo(tmp_path):
    """Tensor-parallel vocabulary shards over gloo, 2 processes (``token.md`` §8.2)."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        if TORCH_REQUIRED:
            raise RuntimeError("torch.distributed with gloo is not available")
        pytest.skip("torch.distributed with gloo is not available")
    check_vocab_parallel(tmp_path, torch.float64, timeout=120, tol=1e-6, grad_tol=1e-9)


# ---------------------------------------------------------------------------------------------
# Packaging and devices
# ---------------------------------------------------------------------------------------------


def test_missing_torch_message():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import entcore.torch\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install entcore[torch]" in out.stdout


def test_public_names():
    import entcore

    for name in set(et.__all__) - set(et.policy_loss.__all__):  # the losses are torch-only
        assert hasattr(entcore, name)
    assert et.TopkEntropy is np_token.TopkEntropy
