"""The Rust-backed ``entcore.matrix`` against the float64 oracle (``matrix.md`` §0–§1): every
option, dtype, mask and head grouping at the float32 accuracy bound (absolute 1e-5 on normalised
entropies, relative 1e-5 elsewhere), thread-count invariance, inputs left untouched, bad inputs."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import entcore
from entcore.reference import matrix as ref
from helpers import require_torch

BF16 = ml_dtypes.bfloat16
DTYPES = [np.float32, np.float16, BF16, np.float64]
DTYPE_IDS = ["f32", "f16", "bf16", "f64"]
ATOL = 1e-5  # matrix.md §0: absolute on normalised entropies

seeds = st.integers(0, 2**32 - 1)


def token_sets(seed, shape, *, offset=0.0, dtype=np.float32):
    """Correlated Gaussian token sets (anisotropic, so the spectrum is not flat) plus an offset."""
    rng = np.random.default_rng(seed)
    d = shape[-1]
    mix = rng.standard_normal((d, d)) * rng.uniform(0.05, 1.0, d)
    return (rng.standard_normal(shape) @ mix + offset).astype(dtype)


OPTIONS = [
    {},
    dict(k=None),
    dict(k=3, truncation="renormalized", normalize="log_k"),
    dict(normalize="log_rank"),
    dict(normalize=None, base=2.0),
    dict(center=False),
    dict(row_normalize=False),
    dict(eps=0.0, k=None),
    dict(method="gram"),
    dict(method="covariance"),
]


@pytest.mark.parametrize("options", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_entropy_options_match_the_reference(options):
    for shape in [(3, 300, 24), (2, 2, 9, 16), (4, 40, 5), (2, 6, 1)]:
        x = token_sets(1, shape, offset=2.0)
        got = entcore.matrix_entropy(x, **options)
        want = ref.matrix_entropy(x, **options)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@given(
    seeds,
    st.integers(1, 3),
    st.integers(1, 600),
    st.integers(1, 40),
    st.sampled_from([None, 1, 4, 32]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([0.0, 3.0, 100.0]),
)
@settings(max_examples=40)
def test_random_token_sets_match_the_reference(
    seed, problems, n, d, k, center, row_normalize, offset
):
    x = token_sets(seed, (problems, n, d), offset=offset)
    mask = np.random.default_rng(seed + 1).random((problems, n)) < 0.9
    mask[:, 0] = True
    kw = dict(center=center, row_normalize=row_normalize, mask=mask)
    np.testing.assert_allclose(
        entcore.matrix_entropy(x, k=k, **kw), ref.matrix_entropy(x, k=k, **kw), atol=ATOL, rtol=0
    )
    np.testing.assert_allclose(
        entcore.matrix_renyi2(x, **kw), ref.matrix_renyi2(x, **kw), atol=ATOL, rtol=0
    )
    np.testing.assert_allclose(
        entcore.matrix_spectrum(x, **kw), ref.matrix_spectrum(x, **kw), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_dtype_matches_the_reference_on_the_upcast_values(dtype):
    x = token_sets(2, (2, 3, 700, 32), offset=1.0, dtype=dtype)
    for kw in [{}, dict(k=None), dict(group_size=3, group_reduce="pooled")]:
        got = entcore.matrix_entropy(x, **kw)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref.matrix_entropy(x, **kw), atol=ATOL, rtol=0)
    spectrum = entcore.matrix_spectrum(x)
    assert spectrum.dtype == np.float64 and spectrum.shape == (2, 3, 32)
    np.testing.assert_allclose(spectrum, ref.matrix_spectrum(x), atol=1e-6, rtol=0)
    np.testing.assert_allclose(spectrum.sum(axis=-1), 1.0, atol=1e-12)


def test_one_uncomp_layer_matches_the_reference():
    # 4 heads of the benchmark shape: 4096 tokens × 128, float32, UNComp defaults.
    x = token_sets(3, (4, 4096, 128), offset=0.5)
    np.testing.assert_allclose(
        entcore.matrix_entropy(x), ref.matrix_entropy(x), atol=ATOL / 10, rtol=0
    )
    # Low-rank heads are the hardest case for float32 partial sums (matrix.md §0).
    rng = np.random.default_rng(12)
    for rank in (1, 2):
        low = rng.standard_normal((2, 4096, rank)) @ rng.standard_normal((rank, 128)) + 0.3
        low = low.astype(np.float32)
        for kw in ({}, dict(k=None), dict(truncation="renormalized", normalize="log_k")):
            np.testing.assert_allclose(
                entcore.matrix_entropy(low, **kw), ref.matrix_entropy(low, **kw), atol=ATOL
            )
    iso = np.random.default_rng(4).standard_normal((1, 4096, 128)).astype(np.float32)
    assert 0.25 < entcore.matrix_entropy(iso)[0] < 0.32
    assert entcore.matrix_entropy(iso, k=None)[0] >= 0.99


@pytest.mark.parametrize("group_reduce", ["mean", "max", "sum", "pooled"])
def test_gqa_groups_match_the_reference(group_reduce):
    x = token_sets(5, (2, 9, 50, 16))
    mask = np.random.default_rng(5).random((1, 9, 50)) < 0.8  # broadcast over the batch
    mask[..., 0] = True
    for fn in (entcore.matrix_entropy, entcore.matrix_renyi2):
        got = fn(x, group_size=3, group_reduce=group_reduce, mask=mask)
        want = getattr(ref, fn.__name__)(x, group_size=3, group_reduce=group_reduce, mask=mask)
        assert got.shape == (2, 3)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    # The GQA mapping: KV head j gathers query heads 3j, 3j + 1, 3j + 2.
    per_head = entcore.matrix_entropy(x)
    if group_reduce != "pooled":
        np.testing.assert_allclose(
            entcore.matrix_entropy(x, group_size=3, group_reduce=group_reduce),
            entcore.group_heads(per_head, group_size=3, reduce=group_reduce),
            atol=1e-7,
        )


def test_spec_properties_on_the_numpy_face():
    rng = np.random.default_rng(6)
    x = token_sets(6, (200, 16))
    base = entcore.matrix_entropy(x)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    for y in (x[rng.permutation(200)], -3.5 * x, x + 40.0, (x @ q).astype(np.float32)):
        assert entcore.matrix_entropy(y) == pytest.approx(base, abs=ATOL)
    # Masked rows = deleted rows; a row equal to the mean is ignored.
    mask = rng.random(200) < 0.5
    assert entcore.matrix_entropy(x, mask=mask) == pytest.approx(
        entcore.matrix_entropy(x[mask]), abs=1e-6
    )
    # Rank one → 0; signed basis → ln r / ln d; routes agree.
    a = rng.integers(-8, 9, 300)  # x_i = a_i v + b, exact in float32
    rank_one = (a[:, None] * (rng.integers(-4, 5, 16) / 4) + 1.0).astype(np.float32)
    assert abs(entcore.matrix_entropy(rank_one)) <= 1e-6
    basis = np.concatenate([np.eye(16)[:4], -np.eye(16)[:4]]).astype(np.float32)
    assert entcore.matrix_entropy(basis, k=None) == pytest.approx(
        math.log(4) / math.log(16), abs=1e-6
    )
    small = x[:10]
    np.testing.assert_allclose(
        entcore.matrix_spectrum(small, method="gram"),
        entcore.matrix_spectrum(small, method="covariance"),
        atol=1e-7,
    )


def test_edge_cases_give_zero():
    one = token_sets(7, (3, 1, 8))
    np.testing.assert_array_equal(entcore.matrix_entropy(one), 0.0)  # n = 1 with centring
    same = np.ones((2, 5, 4), np.float32)
    np.testing.assert_array_equal(entcore.matrix_entropy(same), 0.0)
    np.testing.assert_array_equal(entcore.matrix_renyi2(same), 0.0)
    np.testing.assert_array_equal(entcore.matrix_spectrum(same), 0.0)
    x = token_sets(7, (3, 20, 8))
    np.testing.assert_array_equal(entcore.matrix_entropy(x, k=1, normalize="log_k"), 0.0)
    assert entcore.matrix_entropy(np.zeros((0, 5, 3), np.float32)).shape == (0,)


def test_nan_policy_and_infinities():
    x = token_sets(8, (3, 30, 6))
    x[2, 7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        entcore.matrix_entropy(x)
    out = entcore.matrix_entropy(x, nan_policy="propagate")
    assert np.isnan(out[2]) and np.all(np.isfinite(out[:2]))
    np.testing.assert_allclose(out[:2], ref.matrix_entropy(x[:2]), atol=ATOL)
    mask = np.ones((3, 30), bool)
    mask[2, 7] = False
    assert np.all(np.isfinite(entcore.matrix_entropy(x, mask=mask)))
    x[2, 7, 1] = -np.inf
    with pytest.raises(ValueError, match="inf"):
        entcore.matrix_entropy(x, nan_policy="propagate")
    with pytest.raises(ValueError, match="NaN|inf"):
        entcore.matrix_renyi2(np.full((4, 3), np.nan, np.float32))


def test_results_do_not_depend_on_the_thread_count():
    x = token_sets(9, (6, 900, 40), offset=1.0)
    before = entcore.get_num_threads()
    try:
        entcore.set_num_threads(1)
        one = entcore.matrix_entropy(x, k=None)
        entcore.set_num_threads(3)
        three = entcore.matrix_entropy(x, k=None)
    finally:
        entcore.set_num_threads(before)
    np.testing.assert_array_equal(one, three)


def test_inputs_are_never_modified_and_non_contiguous_inputs_work():
    x = token_sets(10, (4, 64, 12))
    mask = np.random.default_rng(10).random((4, 64)) < 0.7
    mask[:, 0] = True
    x_before, mask_before = x.copy(), mask.copy()
    entcore.matrix_entropy(x, mask=mask, group_size=2, group_reduce="pooled")
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(mask, mask_before)
    strided = np.swapaxes(np.ascontiguousarray(np.swapaxes(x, 1, 2)), 1, 2)
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(
        entcore.matrix_entropy(strided, mask=mask), entcore.matrix_entropy(x, mask=mask)
    )


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: entcore.matrix_entropy(x.astype(np.int32)), TypeError, "x"),
        (lambda x: entcore.matrix_entropy(list(x[0, 0, 0])), ValueError, "x"),
        (lambda x: entcore.matrix_entropy(x[..., :0]), ValueError, "x"),
        (lambda x: entcore.matrix_entropy(x[:, :, :0]), ValueError, "n = 0"),
        (lambda x: entcore.matrix_entropy(x, k=0), ValueError, "k"),
        (lambda x: entcore.matrix_entropy(x, k=True), TypeError, "k"),
        (lambda x: entcore.matrix_entropy(x, truncation="low_rank"), ValueError, "truncation"),
        (lambda x: entcore.matrix_entropy(x, normalize="log_2"), ValueError, "normalize"),
        (lambda x: entcore.matrix_renyi2(x, normalize="log_k"), ValueError, "normalize"),
        (lambda x: entcore.matrix_entropy(x, eps=math.nan), ValueError, "eps"),
        (lambda x: entcore.matrix_entropy(x, normalize=None, base=-2.0), ValueError, "base"),
        (lambda x: entcore.matrix_entropy(x, method="svd"), ValueError, "method"),
        (lambda x: entcore.matrix_spectrum(x, zero_tol=math.inf), ValueError, "zero_tol"),
        (lambda x: entcore.matrix_entropy(x, nan_policy="omit"), ValueError, "nan_policy"),
        (lambda x: entcore.matrix_entropy(x, group_size=3), ValueError, "group_size"),
        (lambda x: entcore.matrix_entropy(x[0, 0], group_size=1), ValueError, "group_size"),
        (lambda x: entcore.matrix_renyi2(x, group_size=2, group_reduce="min"), ValueError, "group"),
        (lambda x: entcore.matrix_entropy(x, row_normalize="yes"), TypeError, "row_normalize"),
        (lambda x: entcore.matrix_entropy(x, mask=np.zeros((2, 4, 6), bool)), ValueError, "mask"),
        (lambda x: entcore.matrix_entropy(x, mask=np.ones((3, 6), bool)), ValueError, "mask"),
        (lambda x: entcore.matrix_entropy(x, mask=np.full(6, 0.5)), ValueError, "mask"),
        (lambda x: entcore.matrix_entropy(x, mask=np.array(["a"] * 6)), TypeError, "mask"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, error, match):
    x = token_sets(11, (2, 4, 6, 5))
    with pytest.raises(error, match=match):
        call(x)


def test_torch_tensors_are_refused_with_a_pointer_to_the_torch_face():
    torch = require_torch()
    with pytest.raises(TypeError, match="entcore.torch"):
        entcore.matrix_entropy(torch.zeros(3, 4))
