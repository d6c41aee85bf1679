"""``entcore.kv`` (NumPy face) against the float64 oracle ``entcore.reference.kv``."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import entcore
from entcore import kv
from entcore.reference import kv as ref


def test_calibration_and_allocation_are_the_reference_functions():
    for name in ("calibrate_heads", "segment_layers", "budget_weights", "allocate_budgets"):
        assert getattr(kv, name) is getattr(ref, name)
        assert getattr(entcore, name) is getattr(ref, name)
    assert entcore.HeadProfile is ref.HeadProfile and entcore.BudgetPlan is ref.BudgetPlan


@st.composite
def snapkv_case(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    batch = draw(st.integers(1, 2))
    h_kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    window = draw(st.integers(1, 6))
    n = draw(st.integers(window, 40))
    d = draw(st.sampled_from([4, 8, 16]))
    options = {
        "window": window,
        "kernel": draw(st.sampled_from([1, 3, 5, 7])),
        "pooling": draw(st.sampled_from(ref.POOLINGS)),
        "reduce": draw(st.sampled_from(ref.REDUCES)),
        "group_reduce": draw(st.sampled_from(ref.GROUP_REDUCES)),
        "sink": draw(st.integers(0, 3)),
    }
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, ml_dtypes.bfloat16]))
    masked = draw(st.booleans())
    rng = np.random.default_rng(seed)
    q = (2 * rng.normal(size=(batch, h_kv * group, window, d))).astype(dtype)
    k = (2 * rng.normal(size=(batch, h_kv, n, d))).astype(dtype)
    key_mask = rng.random((batch, n)) > 0.2 if masked else None
    return q, k, key_mask, options


def _close(got, want):
    assert got.shape == want.shape
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(snapkv_case())
def test_snapkv_scores_match_the_reference(case):
    q, k, key_mask, options = case
    got = kv.snapkv_scores(queries=q, keys=k, key_mask=key_mask, **options)
    assert got.dtype == np.float32
    _close(got, ref.snapkv_scores(queries=q, keys=k, key_mask=key_mask, **options))


@settings(max_examples=30, deadline=None)
@given(snapkv_case())
def test_snapkv_scores_from_attention_match_the_reference(case):
    q, k, key_mask, options = case
    rng = np.random.default_rng(0)
    shape = (q.shape[0], q.shape[1], options["window"], k.shape[2])
    attention = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype(np.float32)
    for n_kv in (None, k.shape[1]):
        got = kv.snapkv_scores(attention=attention, n_kv_heads=n_kv, key_mask=key_mask, **options)
        want = ref.snapkv_scores(attention=attention, n_kv_heads=n_kv, key_mask=key_mask, **options)
        _close(got, want)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 4), st.integers(1, 30))
def test_select_tokens_matches_the_reference(seed, b, h, n):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(b, h, n)), 1).astype(np.float32)
    scores[rng.random((b, h, n)) < 0.1] = -np.inf
    finite = np.isfinite(scores).sum(-1)
    budgets = rng.integers(0, finite.min() + 1, size=(h,))
    got = kv.select_tokens(scores, budgets)
    want = ref.select_tokens(scores, budgets)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(
        kv.select_tokens(scores, budgets, return_mask=True),
        ref.select_tokens(scores, budgets, return_mask=True),
    )


@pytest.mark.parametrize("layout", ref.LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
def test_compress_kv_matches_the_reference_and_keeps_the_dtype(layout, dtype):
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(2, 4, 20, 8)).astype(dtype)
    values = rng.normal(size=(2, 4, 20, 6)).astype(dtype)
    idx, lengths = kv.select_tokens(rng.normal(size=(2, 4, 20)), np.array([3, 0, 11, 3]))
    got = kv.compress_kv(keys, values, idx, lengths, layout=layout)
    want = ref.compress_kv(keys, values, idx, lengths, layout=layout)
    if layout == "grouped":
        assert [g[0].tolist() for g in got] == [[1], [0, 3], [2]]
        got = [a for g in got for a in g]
        want = [a for g in want for a in g]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    assert keys.dtype == dtype  # inputs untouched


def test_numpy_face_raises_the_reference_errors():
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(1, 2, 4, 8)), rng.normal(size=(1, 1, 10, 8))
    for call in (
        lambda face: face.snapkv_scores(queries=q, keys=k, window=4, kernel=2),
        lambda face: face.snapkv_scores(queries=q, keys=k, window=5),
        lambda face: face.snapkv_scores(queries=q * np.nan, keys=k, window=4),
        lambda face: face.snapkv_scores(queries=q, keys=k[..., :4], window=4),
        lambda face: face.select_tokens(np.zeros((1, 1, 3)), 4),
        lambda face: face.select_tokens(np.full((1, 1, 3), np.inf), 1),
        lambda face: face.compress_kv(k, k, np.array([[[10]]]), np.array([[1]])),
    ):
        with pytest.raises(ValueError) as want:
            call(ref)
        with pytest.raises(ValueError) as got:
            call(kv)
        assert str(got.value).split(":")[0] == str(want.value).split(":")[0]
    with pytest.raises(TypeError, match="queries"):
        kv.snapkv_scores(queries=q.astype(np.int64), keys=k, window=4)
    with pytest.raises(TypeError, match="scores"):
        kv.select_tokens(np.zeros((1, 1, 3), dtype=np.int32), 1)


def test_inputs_are_never_modified():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(1, 4, 4, 8)).astype(np.float32)
    k = rng.normal(size=(1, 2, 16, 8)).astype(np.float32)
    mask = rng.random((1, 16)) > 0.2
    copies = [a.copy() for a in (q, k, mask)]
    scores = kv.snapkv_scores(queries=q, keys=k, window=4, key_mask=mask)
    s_copy = scores.copy()
    idx, lengths = kv.select_tokens(scores, 3)
    kv.compress_kv(k, k, idx, lengths, layout="flat")
    for a, c in zip((q, k, mask, scores), (*copies, s_copy), strict=True):
        np.testing.assert_array_equal(a, c)
