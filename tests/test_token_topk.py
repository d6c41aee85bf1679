"""Entropy from top-k log-probs (``token.md`` §7, §10 item 11) on the NumPy face, held to the
reference: the six conventions, the ordering ``truncated ≤ bucket ≤ lower ≤ H ≤ upper`` on full
logits truncated to their top-k, ``k = V``, absent entries, the rounding and consistency rules,
and the errors.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import entcore
from entcore.reference import token as ref

MODES = ["estimate", "lower", "upper", "truncated", "bucket", "renormalized"]
RTOL = ATOL = 1e-5  # conventions.md Numbers (float32 results of a float64 computation)
FACES = pytest.mark.parametrize("face", [entcore, ref], ids=["entcore", "reference"])

seeds = st.integers(0, 2**32 - 1)


def h(x):
    return 0.0 if x == 0 else -x * math.log(x)


def full_and_topk(seed, rows, vocab, k, *, scale=2.0, absent=0.0):
    """Random float64 logits, their exact log-softmax and its ``k`` largest entries per row
    (descending, as vLLM returns them). With ``absent > 0`` some rows list fewer entries: their
    last entries are ``-inf`` (each row stays the top-k' of its distribution, k' ≥ 1)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((rows, vocab)) * scale
    logprobs = logits - np.max(logits, axis=-1, keepdims=True)
    logprobs = logprobs - np.log(np.sum(np.exp(logprobs), axis=-1, keepdims=True))
    topk = -np.sort(-logprobs, axis=-1)[:, :k]
    if absent:
        listed = np.where(rng.random(rows) < absent, rng.integers(1, k + 1, size=rows), k)
        topk[np.arange(k)[None, :] >= listed[:, None]] = -np.inf
    return logits, topk


def assert_agrees(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=RTOL, atol=ATOL)


@settings(max_examples=40)
@given(
    seed=seeds,
    vocab=st.sampled_from([1, 2, 7, 50, 2049, 32000]),
    k_fraction=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    scale=st.sampled_from([0.1, 2.0, 8.0]),
    absent=st.sampled_from([0.0, 0.3]),
    dtype=st.sampled_from([np.float64, np.float32, np.float16, ml_dtypes.bfloat16]),
)
def test_all_modes_agree_with_reference(seed, vocab, k_fraction, scale, absent, dtype):
    k = max(1, min(vocab, 20, round(k_fraction * vocab)))
    _, topk = full_and_topk(seed, 5, vocab, k, scale=scale, absent=absent)
    topk = topk.astype(dtype)
    if np.any(np.exp(topk.astype(np.float64)).sum(-1) > 1 + 1e-3):
        # half-precision rounding pushed a row's mass above 1 + 1e-3: an error on both faces
        for face in (entcore, ref):
            with pytest.raises(ValueError, match="topk_logprobs"):
                face.topk_entropy(topk, vocab, mode="truncated")
        return
    for mode in MODES:
        got = entcore.topk_entropy(topk, vocab, mode=mode)
        assert_agrees(got, ref.topk_entropy(topk, vocab, mode=mode))
    bounds = entcore.topk_entropy_bounds(topk, vocab)
    want = ref.topk_entropy_bounds(topk, vocab)
    assert isinstance(bounds, entcore.TopkEntropy) and isinstance(want, ref.TopkEntropy)
    assert bounds._fields == want._fields == ("lower", "estimate", "upper")
    for g, w in zip(bounds, want, strict=True):
        assert_agrees(g, w)
    np.testing.assert_allclose(bounds.estimate, (bounds.lower + bounds.upper) / 2, rtol=1e-6)


@settings(max_examples=40)
@given(
    seed=seeds,
    vocab=st.sampled_from([2, 7, 50, 2049, 32000]),
    k=st.integers(1, 20),
    scale=st.sampled_from([0.1, 1.0, 3.0, 10.0]),
    absent=st.sampled_from([0.0, 0.3]),
)
def test_ordering_on_truncated_full_logits(seed, vocab, k, scale, absent):
    """``truncated ≤ bucket ≤ lower ≤ H ≤ upper`` where ``H`` is the entropy of the full logits
    (§7, §10 item 11): the bounds hold for the distribution the top-k came from."""
    k = min(k, vocab)
    logits, topk = full_and_topk(seed, 6, vocab, k, scale=scale, absent=absent)
    entropy = entcore.token_entropy(logits).astype(np.float64)
    for face in (entcore, ref):
        values = [
            np.asarray(face.topk_entropy(topk, vocab, mode=m), dtype=np.float64)
            for m in ("truncated", "bucket", "lower")
        ] + [entropy, np.asarray(face.topk_entropy(topk, vocab, mode="upper"), np.float64)]
        for low, high in zip(values, values[1:], strict=False):
            assert np.all(low <= high + RTOL * np.abs(high) + ATOL), (low, high)
    # the reference exactly, against its own float64 entropy
    exact = ref.token_entropy(logits)
    b = ref.topk_entropy_bounds(topk, vocab)
    assert np.all(b.lower <= exact + 1e-12) and np.all(exact <= b.upper + 1e-12)


@pytest.mark.parametrize("vocab", [1, 2, 7, 50, 2049])
@FACES
def test_k_equal_to_vocab_gives_the_exact_entropy(face, vocab):
    """``k' = V``: the tail is empty, all three bounds equal ``H_k`` = the entropy (§7)."""
    logits, topk = full_and_topk(vocab, 4, vocab, vocab)
    entropy = ref.token_entropy(logits)
    for mode in MODES:
        np.testing.assert_allclose(
            face.topk_entropy(topk, vocab, mode=mode), entropy, rtol=RTOL, atol=ATOL
        )
    for bound in face.topk_entropy_bounds(topk, vocab):
        np.testing.assert_allclose(bound, entropy, rtol=RTOL, atol=ATOL)


@FACES
def test_k_equal_to_vocab_ignores_the_tail_mass(face):
    """With ``k' = V`` the bounds are ``H_k`` even when ``S < 1`` (``τ`` is ignored, §7)."""
    p = np.array([[0.5, 0.3, 0.1]])
    h_k = sum(h(x) for x in p[0])
    for bound in face.topk_entropy_bounds(np.log(p), 3):
        np.testing.assert_allclose(bound, [h_k], rtol=1e-6)


@FACES
def test_hand_computed_bounds(face):
    """``p = (0.5, 0.2)``, ``V = 10``: ``τ = 0.3``, ``c = 0.2``, ``n = 1``, ``r = 0.1``,
    ``m = 8``."""
    topk = np.log(np.array([[0.5, 0.2], [0.2, 0.5]]))
    h_k = h(0.5) + h(0.2)
    lower = h_k + h(0.2) + h(0.1)
    upper = h_k + 0.3 * math.log(8 / 0.3)
    want = {
        "lower": lower,
        "upper": upper,
        "estimate": (lower + upper) / 2,
        "truncated": h_k,
        "bucket": h_k + h(0.3),
        "renormalized": h(0.5 / 0.7) + h(0.2 / 0.7),
    }
    for mode, value in want.items():
        np.testing.assert_allclose(face.topk_entropy(topk, 10, mode=mode), [value] * 2, rtol=1e-6)
    for mode in ("truncated", "bucket", "renormalized"):
        np.testing.assert_allclose(face.topk_entropy(topk, mode=mode), [want[mode]] * 2, rtol=1e-6)
    bounds = face.topk_entropy_bounds(topk, 10)
    np.testing.assert_allclose(
        bounds, [[lower] * 2, [want["estimate"]] * 2, [upper] * 2], rtol=1e-6
    )


@FACES
def test_inconsistent_counts_make_lower_equal_upper(face):
    """``p = (0.5, 0.1, 0.1)``, ``V = 5``: ``n = ⌊0.3/0.1⌋ = 3 > m − 1 = 1``, so
    ``lower = upper = H_k + τ log(m/τ)`` (§7)."""
    topk = np.log(np.array([[0.5, 0.1, 0.1]]))
    upper = h(0.5) + 2 * h(0.1) + 0.3 * math.log(2 / 0.3)
    bounds = face.topk_entropy_bounds(topk, 5)
    for bound in bounds:
        np.testing.assert_allclose(bound, [upper], rtol=1e-6)


@FACES
def test_underflowing_entry_makes_lower_equal_upper(face):
    """A listed log-prob so small that ``exp`` underflows gives ``c = 0``: no finite ``n``."""
    topk = np.array([[math.log(0.6), -800.0]])
    bounds = face.topk_entropy_bounds(topk, 100)
    assert np.all(np.isfinite(bounds.lower)) and np.all(np.isfinite(bounds.upper))
    np.testing.assert_allclose(bounds.lower, bounds.upper, rtol=1e-6)


@FACES
def test_sum_slightly_above_one_is_rounding(face):
    """``1 < S ≤ 1 + 1e-3``: ``τ = 0``, every convention but renormalized equals ``H_k``."""
    p = np.array([0.6, 0.3005, 0.1])
    topk = np.log(p)[None]
    h_k = sum(h(x) for x in p)
    for mode in ("lower", "estimate", "upper", "truncated", "bucket"):
        np.testing.assert_allclose(face.topk_entropy(topk, 1000, mode=mode), [h_k], rtol=1e-6)


@FACES
def test_absent_entries_are_skipped(face):
    """``-inf`` marks an absent entry: a row padded with ``-inf`` equals the row without them."""
    p = np.log(np.array([0.4, 0.3, 0.1]))
    padded = np.array([[p[0], -np.inf, p[1], p[2], -np.inf]])
    for mode in MODES:
        np.testing.assert_allclose(
            face.topk_entropy(padded, 50, mode=mode),
            face.topk_entropy(p[None], 50, mode=mode),
            rtol=1e-6,
        )


@settings(max_examples=20)
@given(seed=seeds, vocab=st.sampled_from([7, 50, 2049]), k=st.integers(1, 7))
def test_renormalized_is_the_entropy_of_the_listed_entries(seed, vocab, k):
    """``"renormalized"`` = entropy of ``p_i / S`` = ``token_entropy`` of the top-k log-probs."""
    _, topk = full_and_topk(seed, 5, vocab, k, absent=0.3)
    np.testing.assert_allclose(
        entcore.topk_entropy(topk, mode="renormalized"),
        entcore.token_entropy(topk),
        rtol=RTOL,
        atol=ATOL,
    )


def test_shapes_dtypes_and_layouts():
    _, topk = full_and_topk(0, 24, 100, 5, absent=0.2)
    batched = topk.reshape(2, 3, 4, 5)
    for mode in MODES:
        got = entcore.topk_entropy(batched, 100, mode=mode)
        assert got.shape == (2, 3, 4) and got.dtype == np.float32
        np.testing.assert_array_equal(got.reshape(-1), entcore.topk_entropy(topk, 100, mode=mode))
    bounds = entcore.topk_entropy_bounds(batched, 100)
    assert all(b.shape == (2, 3, 4) and b.dtype == np.float32 for b in bounds)
    assert entcore.topk_entropy(topk[0], 100).shape == ()
    assert entcore.topk_entropy(np.zeros((0, 5)), 100).shape == (0,)
    assert all(b.shape == (0,) for b in entcore.topk_entropy_bounds(np.zeros((0, 5)), 100))
    # non-contiguous input, unchanged input
    wide = np.repeat(topk, 2, axis=-1)[:, ::2]
    before = wide.copy()
    np.testing.assert_array_equal(
        entcore.topk_entropy(wide, 100), entcore.topk_entropy(np.ascontiguousarray(wide), 100)
    )
    np.testing.assert_array_equal(wide, before)
    # vocab_size as a NumPy integer
    np.testing.assert_array_equal(
        entcore.topk_entropy(topk, np.int64(100)), entcore.topk_entropy(topk, 100)
    )


@FACES
def test_topk_errors(face):
    good = np.log(np.array([[0.5, 0.2]]))
    cases = [
        (ValueError, "topk_logprobs", lambda: face.topk_entropy(np.log([[0.7, 0.31]]), 10)),
        (ValueError, "topk_logprobs", lambda: face.topk_entropy(np.log([[0.9, 0.9]]), 10)),
        (ValueError, "topk_logprobs", lambda: face.topk_entropy_bounds(np.log([[0.7, 0.4]]), 10)),
        (ValueError, "topk_logprobs", lambda: face.topk_entropy([[-np.inf, -np.inf]], 10)),
        (
            ValueError,
            "topk_logprobs",
            lambda: face.topk_entropy([[-1.0, -2.0], [-np.inf, -np.inf]], 10, mode="truncated"),
        ),
        (ValueError, "topk_logprobs", lambda: face.topk_entropy([[-1.0, np.nan]], 10)),
        (ValueError, "topk_logprobs", lambda: face.topk_entropy([[-1.0, np.inf]], 10)),
        (ValueError, "topk_logprobs", lambda: face.topk_entropy(np.zeros((3, 0)), 10)),
        (ValueError, "topk_logprobs", lambda: face.topk_entropy(np.float64(-1.0), 10)),
        (TypeError, "topk_logprobs", lambda: face.topk_entropy(np.zeros((2, 3), np.int64), 10)),
        (ValueError, "vocab_size", lambda: face.topk_entropy(good)),
        (ValueError, "vocab_size", lambda: face.topk_entropy(good, None, mode="lower")),
        (ValueError, "vocab_size", lambda: face.topk_entropy(good, None, mode="upper")),
        (ValueError, "vocab_size", lambda: face.topk_entropy_bounds(good, None)),
        (ValueError, "vocab_size", lambda: face.topk_entropy(good, 1)),
        (TypeError, "vocab_size", lambda: face.topk_entropy(good, 10.0)),
        (TypeError, "vocab_size", lambda: face.topk_entropy(good, True)),
        (ValueError, "mode", lambda: face.topk_entropy(good, 10, mode="mean")),
        (ValueError, "mode", lambda: face.topk_entropy(good, 10, mode="Lower")),
    ]
    for exc, name, call in cases:
        with pytest.raises(exc, match=name):
            call()
