"""``entcore.torch`` matrix entropy (``matrix.md`` §1) against the float64 oracle, gradients
through ``eigvalsh`` (finite on rank-deficient matrices with the default ``eps``, equal to
finite differences), dtypes, masks, head groups and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entcore.reference import matrix as ref
from helpers import require_torch

torch = require_torch()
import entcore.torch as et  # noqa: E402

seeds = st.integers(0, 2**32 - 1)


def token_sets(seed, shape, *, offset=0.0):
    rng = np.random.default_rng(seed)
    d = shape[-1]
    mix = rng.standard_normal((d, d)) * rng.uniform(0.05, 1.0, d)
    return rng.standard_normal(shape) @ mix + offset


OPTIONS = [
    {},
    dict(k=None),
    dict(k=3, truncation="renormalized", normalize="log_k"),
    dict(normalize="log_rank"),
    dict(normalize=None, base=2.0),
    dict(center=False),
    dict(row_normalize=False),
    dict(method="gram"),
    dict(method="covariance"),
    dict(eps=0.0, k=None),
]


@pytest.mark.parametrize("options", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_float64_tensors_match_the_reference(options):
    for shape in [(3, 40, 12), (2, 2, 9, 16), (2, 6, 1)]:
        x = token_sets(1, shape, offset=2.0)
        got = et.matrix_entropy(torch.tensor(x), **options)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), ref.matrix_entropy(x, **options), atol=1e-10)


@given(seeds, st.integers(1, 60), st.integers(1, 20), st.booleans(), st.booleans())
@settings(max_examples=30)
def test_random_sets_with_masks_match_the_reference(seed, n, d, center, row_normalize):
    x = token_sets(seed, (2, n, d))
    mask = np.random.default_rng(seed).random((2, n)) < 0.8
    mask[:, 0] = True
    kw = dict(center=center, row_normalize=row_normalize, mask=mask)
    xt = torch.tensor(x)
    np.testing.assert_allclose(
        et.matrix_spectrum(xt, **kw).numpy(), ref.matrix_spectrum(x, **kw), atol=1e-10
    )
    np.testing.assert_allclose(
        et.matrix_entropy(xt, **kw).numpy(), ref.matrix_entropy(x, **kw), atol=1e-10
    )
    np.testing.assert_allclose(
        et.matrix_renyi2(xt, **kw).numpy(), ref.matrix_renyi2(x, **kw), atol=1e-10
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_float32_on_the_upcast_values(dtype):
    xt = torch.tensor(token_sets(2, (3, 50, 8), offset=1.0)).to(dtype)
    upcast = xt.double().numpy()
    got = et.matrix_entropy(xt)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref.matrix_entropy(upcast), atol=1e-6)
    assert et.matrix_spectrum(xt).dtype == torch.float64


@pytest.mark.parametrize("group_reduce", ["mean", "max", "sum", "pooled"])
def test_head_groups_match_the_reference(group_reduce):
    x = token_sets(3, (2, 6, 20, 8))
    mask = np.random.default_rng(3).random((2, 6, 20)) < 0.8
    mask[..., 0] = True
    for name in ("matrix_entropy", "matrix_renyi2"):
        got = getattr(et, name)(
            torch.tensor(x), group_size=2, group_reduce=group_reduce, mask=torch.tensor(mask)
        )
        want = getattr(ref, name)(x, group_size=2, group_reduce=group_reduce, mask=mask)
        assert got.shape == (2, 3)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    values = torch.tensor(x[..., 0, 0])
    np.testing.assert_allclose(
        et.group_heads(values, group_size=3, reduce="min", axis=1).numpy(),
        ref.group_heads(x[..., 0, 0], group_size=3, reduce="min", axis=1),
    )
    assert et.group_heads(torch.arange(6), group_size=2).dtype == torch.float32


def test_gradients_match_finite_differences():
    x = torch.tensor(token_sets(4, (12, 5), offset=0.3), requires_grad=True)
    for fn, kw in [
        (et.matrix_entropy, dict(k=None)),
        (et.matrix_entropy, dict(k=2)),
        (et.matrix_entropy, dict(k=3, truncation="renormalized", normalize="log_k")),
        (et.matrix_renyi2, {}),
    ]:
        assert torch.autograd.gradcheck(lambda t, fn=fn, kw=kw: fn(t, **kw), (x,), atol=1e-6)


def test_gradients_are_finite_on_rank_deficient_sets_with_the_default_eps():
    rng = np.random.default_rng(5)
    a = rng.standard_normal(30)
    rank_one = torch.tensor(a[:, None] * rng.standard_normal(16) + 2.0, requires_grad=True)
    few = torch.tensor(rng.standard_normal((2, 5, 32)), requires_grad=True)  # n < d
    for t in (rank_one, few):
        for kw in ({}, dict(k=None), dict(truncation="renormalized")):
            (g,) = torch.autograd.grad(et.matrix_entropy(t, **kw).sum(), t)
            assert torch.isfinite(g).all()
    # Masked and zero-norm rows get zero gradients.
    x = torch.tensor(token_sets(6, (10, 4)), requires_grad=True)
    mask = torch.ones(10, dtype=torch.bool)
    mask[3] = False
    (g,) = torch.autograd.grad(et.matrix_entropy(x, mask=mask, k=None), x)
    assert torch.all(g[3] == 0) and torch.isfinite(g).all()


def test_spec_properties_on_the_torch_face():
    x = torch.tensor(token_sets(7, (64, 8)))
    base = et.matrix_entropy(x)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    for y in (x[torch.randperm(64)], -2.0 * x, x + 5.0, x @ q):
        assert float(et.matrix_entropy(y)) == pytest.approx(float(base), abs=1e-10)
    basis = torch.cat([torch.eye(8)[:4], -torch.eye(8)[:4]]).double()
    assert float(et.matrix_entropy(basis, k=None, eps=0.0)) == pytest.approx(
        math.log(4) / math.log(8), abs=1e-12
    )
    assert float(et.matrix_entropy(torch.ones(5, 3))) == 0.0


def test_nan_policy_and_errors():
    x = torch.tensor(token_sets(8, (3, 10, 4)))
    x[1, 2, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        et.matrix_entropy(x)
    out = et.matrix_entropy(x, nan_policy="propagate")
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    np.testing.assert_allclose(
        out[[0, 2]].numpy(), ref.matrix_entropy(x[[0, 2]].numpy()), atol=1e-10
    )
    x[1, 2, 0] = math.inf
    with pytest.raises(ValueError, match="inf"):
        et.matrix_entropy(x, nan_policy="propagate")
    y = torch.randn(2, 4, 5, 3)
    for call, error, match in [
        (lambda: et.matrix_entropy(y.numpy()), TypeError, "x"),
        (lambda: et.matrix_entropy(y.int()), TypeError, "x"),
        (lambda: et.matrix_entropy(y[0, 0, 0]), ValueError, "x"),
        (lambda: et.matrix_entropy(y, k=0), ValueError, "k"),
        (lambda: et.matrix_entropy(y, group_size=3), ValueError, "group_size"),
        (lambda: et.matrix_entropy(y, mask=torch.zeros(5, dtype=torch.bool)), ValueError, "n = 0"),
        (lambda: et.matrix_entropy(y, mask=torch.ones(4)), ValueError, "mask"),
        (lambda: et.matrix_entropy(y, mask=torch.full((5,), 0.5)), ValueError, "mask"),
        (lambda: et.matrix_renyi2(y, normalize="log_k"), ValueError, "normalize"),
        (lambda: et.matrix_spectrum(y, method="svd"), ValueError, "method"),
        (lambda: et.group_heads(y, group_size=3, axis=1), ValueError, "group_size"),
        (lambda: et.group_heads([1.0, 2.0], group_size=2), TypeError, "values"),
    ]:
        with pytest.raises(error, match=match):
            call()
