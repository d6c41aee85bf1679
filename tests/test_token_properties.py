"""Mathematical properties of the token statistics on the NumPy face (``token.md`` §10).

Items 1 (bounds), 2 (shift invariance), 3 (permutation invariance), 4 (uniform, one-hot, near
one-hot rows), 5 (``Σ_y exp(ℓ_y) = 1``), 9 (``H`` non-decreasing in ``T``), 10 (Rényi order and
continuity through ``α = 1``) and 12 (``-inf`` never gives NaN; NaN only in affected rows under
``nan_policy="propagate"``). Each property is also asserted on the reference where it is exact.
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

BF16 = ml_dtypes.bfloat16
DTYPES = [np.float32, np.float16, BF16, np.float64]
DTYPE_IDS = ["f32", "f16", "bf16", "f64"]
VOCABS = [1, 2, 7, 2047, 2048, 2049, 4095, 4097]
TEMPERATURES = [0.6, 1.0, 1.5]
RTOL = ATOL = 1e-5  # conventions.md Numbers (fp32)

seeds = st.integers(0, 2**32 - 1)


def random_logits(seed, shape, *, scale=3.0, dtype=np.float32, masked=0.0):
    """Gaussian logits; a fraction ``masked`` set to ``-inf`` (never a whole row)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape) * scale
    if masked and z.size:
        mask = rng.random(shape) < masked
        np.put_along_axis(mask, np.argmax(z, axis=-1)[..., None], False, axis=-1)
        z[mask] = -np.inf
    return z.astype(dtype)


def grid_logits(seed, shape):
    """Logits that are multiples of 2^-10 in [-64, 64] (``token.md`` §10 item 2): adding any
    ``c ∈ {-1e4, -30, 30}`` is exact in float32."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-64 * 1024, 64 * 1024 + 1, size=shape) / 1024.0).astype(np.float32)


def assert_bitwise(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# ---------------------------------------------------------------------------------------------
# 1. Bounds
# ---------------------------------------------------------------------------------------------


@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    dtype=st.sampled_from(DTYPES),
    temperature=st.sampled_from(TEMPERATURES),
    scale=st.sampled_from([0.0, 0.01, 1.0, 5.0, 30.0]),
    masked=st.sampled_from([0.0, 0.5, 0.99]),
)
def test_bounds(seed, vocab, dtype, temperature, scale, masked):
    """``0 ≤ H ≤ log V_fin``, ``ℓ_y ≤ 0``, ``1/V_fin ≤ Σp² ≤ 1`` (§10 item 1). ``H ≥ 0`` and
    ``ℓ ≤ 0`` hold exactly: both are sums of terms of one sign (§2)."""
    logits = random_logits(seed, (4, vocab), scale=scale, dtype=dtype, masked=masked)
    v_fin = np.sum(logits.astype(np.float64) > -np.inf, axis=-1)
    labels = np.broadcast_to(np.arange(min(vocab, 64)), (4, min(vocab, 64)))
    for face in (entcore, ref):
        logprob, entropy, collision = face.token_logprob_entropy(
            logits, labels, temperature=temperature, return_collision=True
        )
        assert np.all(entropy >= 0.0)
        assert np.all(entropy <= np.log(v_fin) * (1 + RTOL) + 1e-6)
        assert not np.any(np.isnan(logprob))
        assert np.all(logprob <= 0.0)
        assert np.all(collision >= (1.0 / v_fin) * (1 - RTOL))
        assert np.all(collision <= 1.0 + 1e-6)
        for alpha in (0.0, 0.5, 2.0, math.inf):
            h_alpha = face.renyi_entropy(logits, alpha, temperature=temperature)
            assert np.all(h_alpha >= 0.0)
            assert np.all(h_alpha <= np.log(v_fin) * (1 + RTOL) + 1e-6)


# ---------------------------------------------------------------------------------------------
# 2. Shift invariance, 3. permutation invariance
# ---------------------------------------------------------------------------------------------


@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    shifts=st.lists(st.sampled_from([-1e4, -30.0, 30.0, 0.0]), min_size=3, max_size=3),
)
def test_shift_invariance_is_exact(seed, vocab, shifts):
    """``H(z + c) = H(z)``, ``ℓ(z + c) = ℓ(z)``, ``Σp²(z + c) = Σp²(z)`` for a per-row ``c``
    (§10 item 2). With ``T = 1`` every ``z'_j − m`` is the same float32 number, so the §2 pass
    gives identical bits."""
    logits = grid_logits(seed, (3, vocab))
    shifted = logits + np.array(shifts, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(shifted.astype(np.float64) - np.array(shifts)[:, None], logits)
    labels = np.random.default_rng(seed).integers(0, vocab, size=(3, 4))
    for a, b in zip(
        entcore.token_logprob_entropy(logits, labels, return_collision=True),
        entcore.token_logprob_entropy(shifted, labels, return_collision=True),
        strict=True,
    ):
        assert_bitwise(a, b)
    for a, b in zip(
        ref.token_logprob_entropy(logits, labels, return_collision=True),
        ref.token_logprob_entropy(shifted, labels, return_collision=True),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    temperature=st.sampled_from(TEMPERATURES),
    shift=st.sampled_from([-1e4, -30.0, 30.0]),
)
def test_shift_invariance_with_temperature(seed, vocab, temperature, shift):
    """With ``T ≠ 1`` the scaled values round differently; the results stay within the fp32
    tolerance as long as ``|z'|`` stays moderate (``c = ±30``); the reference is exact."""
    logits = grid_logits(seed, (2, vocab))
    labels = np.random.default_rng(seed).integers(0, vocab, size=2)
    want = ref.token_logprob_entropy(logits, labels, temperature=temperature)
    got_ref = ref.token_logprob_entropy(logits + shift, labels, temperature=temperature)
    for g, w in zip(got_ref, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9)
    if abs(shift) <= 30:
        got = entcore.token_logprob_entropy(logits + shift, labels, temperature=temperature)
        for g, w in zip(got, want, strict=True):
            # |z'| <= 94/0.6: float32 rounding of z' is the only difference (token.md §1)
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=4e-5)


@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    dtype=st.sampled_from(DTYPES),
    temperature=st.sampled_from(TEMPERATURES),
    masked=st.sampled_from([0.0, 0.4]),
)
def test_permutation_invariance(seed, vocab, dtype, temperature, masked):
    """Permuting the vocabulary and the labels with it (§10 item 3)."""
    rng = np.random.default_rng(seed)
    logits = random_logits(seed, (3, vocab), dtype=dtype, masked=masked)
    labels = rng.integers(0, vocab, size=(3, 3))
    perm = rng.permutation(vocab)
    inverse = np.argsort(perm)
    permuted = logits[:, perm]
    a = entcore.token_logprob_entropy(
        logits, labels, temperature=temperature, return_collision=True
    )
    b = entcore.token_logprob_entropy(
        permuted, inverse[labels], temperature=temperature, return_collision=True
    )
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL)
    for alpha in (0.5, 3.0):
        np.testing.assert_allclose(
            entcore.renyi_entropy(logits, alpha, temperature=temperature),
            entcore.renyi_entropy(permuted, alpha, temperature=temperature),
            rtol=RTOL,
            atol=ATOL,
        )


# ---------------------------------------------------------------------------------------------
# 4. Uniform, one-hot and near one-hot rows
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", VOCABS + [32000, 151936])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_uniform_row(vocab, dtype):
    """``H = log V`` (relative 1e-6), ``Σp² = 1/V``, ``ℓ_y = −log V``, ``H_α = log V``."""
    logits = np.full((2, vocab), 3.25, dtype=dtype)
    logits[1] = -7.5
    labels = np.array([0, vocab - 1])
    logprob, entropy, collision = entcore.token_logprob_entropy(
        logits, labels, temperature=0.6, return_collision=True
    )
    np.testing.assert_allclose(entropy, math.log(vocab), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(collision, 1.0 / vocab, rtol=1e-6)
    np.testing.assert_allclose(logprob, -math.log(vocab), rtol=1e-6, atol=1e-7)
    for alpha in (0.0, 0.5, 2.0, math.inf):
        np.testing.assert_allclose(
            entcore.renyi_entropy(logits, alpha), math.log(vocab), rtol=1e-6, atol=1e-7
        )
    np.testing.assert_allclose(ref.token_entropy(logits), math.log(vocab), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("vocab", VOCABS + [32000])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_one_hot_row_is_exactly_zero(vocab, dtype):
    """One finite logit, the rest ``-inf``: ``H = 0``, ``ℓ_y = 0``, ``Σp² = 1`` exactly
    (§10 item 4)."""
    rng = np.random.default_rng(vocab)
    hot = rng.integers(0, vocab, size=3)
    logits = np.full((3, vocab), -np.inf)
    logits[np.arange(3), hot] = [0.0, -1e4, 55.5]
    logits = logits.astype(dtype)
    for face in (entcore, ref):
        logprob, entropy, collision = face.token_logprob_entropy(
            logits, hot, temperature=0.6, return_collision=True
        )
        assert np.all(entropy == 0.0) and not np.any(np.signbit(entropy))
        assert np.all(logprob == 0.0)
        assert np.all(collision == 1.0)
        for alpha in (0.0, 0.5, 1.0 + 5e-5, 2.0, math.inf):
            assert np.all(face.renyi_entropy(logits, alpha) == 0.0)


@pytest.mark.parametrize("vocab", [2, 7, 2049, 32000])
@pytest.mark.parametrize("gap", [100.0, 200.0, 1e4])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_near_one_hot_row(vocab, gap, dtype):
    """One logit ``gap ≥ 100`` above the rest: tiny, non-negative, no NaN (§10 item 4)."""
    logits = np.zeros((2, vocab))
    logits[0, 0] = gap
    logits[1] = -gap
    logits[1, vocab // 2] = 0.0
    logits = logits.astype(dtype)
    labels = np.array([[0, vocab - 1], [vocab // 2, 0]])
    logprob, entropy, collision = entcore.token_logprob_entropy(
        logits, labels, return_collision=True
    )
    assert not np.any(np.isnan(entropy)) and not np.any(np.isnan(logprob))
    assert np.all(entropy >= 0.0) and np.all(entropy < 1e-30)
    assert np.all(logprob[:, 0] <= 0.0) and np.all(logprob[:, 0] > -1e-30)
    np.testing.assert_allclose(logprob[:, 1], ref.token_logprob(logits, labels)[:, 1], rtol=1e-5)
    np.testing.assert_allclose(collision, 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# 5. The log-probs of a row sum to one
# ---------------------------------------------------------------------------------------------


@settings(max_examples=25)
@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    dtype=st.sampled_from(DTYPES),
    temperature=st.sampled_from(TEMPERATURES),
    masked=st.sampled_from([0.0, 0.5]),
)
def test_probabilities_sum_to_one(seed, vocab, dtype, temperature, masked):
    """``Σ_y exp(ℓ_y) = 1`` within 1e-5, with ``K = V`` labels per row covering the vocabulary."""
    logits = random_logits(seed, (3, vocab), dtype=dtype, masked=masked)
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.permutation(vocab) for _ in range(3)])
    logprob = entcore.token_logprob(logits, labels, temperature=temperature)
    assert logprob.shape == (3, vocab)
    total = np.exp(logprob.astype(np.float64)).sum(axis=-1)
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        np.exp(ref.token_logprob(logits, labels, temperature=temperature)).sum(axis=-1),
        1.0,
        atol=1e-12,
    )


# ---------------------------------------------------------------------------------------------
# 9. Entropy is non-decreasing in the temperature
# ---------------------------------------------------------------------------------------------


@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    dtype=st.sampled_from(DTYPES),
    masked=st.sampled_from([0.0, 0.5]),
)
def test_entropy_non_decreasing_in_temperature(seed, vocab, dtype, masked):
    """``∂H/∂T = Var_p(z')/T ≥ 0`` (§5, §10 item 9)."""
    logits = random_logits(seed, (3, vocab), dtype=dtype, masked=masked)
    temps = [0.1, 0.3, 0.6, 0.61, 1.0, 1.5, 3.0, 10.0]
    entropies = np.stack([entcore.token_entropy(logits, temperature=t) for t in temps])
    steps = np.diff(entropies.astype(np.float64), axis=0)
    assert np.all(steps >= -(RTOL * entropies[1:] + 1e-6)), steps.min()
    per_row = entcore.token_entropy(np.repeat(logits[:1], 8, axis=0), temperature=np.array(temps))
    np.testing.assert_array_equal(per_row, entropies[:, 0])
    reference = np.stack([ref.token_entropy(logits, temperature=t) for t in temps])
    assert np.all(np.diff(reference, axis=0) >= -1e-12)


# ---------------------------------------------------------------------------------------------
# 10. Rényi entropies
# ---------------------------------------------------------------------------------------------


@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    dtype=st.sampled_from(DTYPES),
    temperature=st.sampled_from(TEMPERATURES),
    masked=st.sampled_from([0.0, 0.5]),
)
def test_renyi_order_and_special_cases(seed, vocab, dtype, temperature, masked):
    """``H_∞ ≤ H_2 ≤ H_1 ≤ H_0`` and more generally non-increasing in ``α``;
    ``H_1 = token_entropy`` bitwise; ``H_2 = −log Σp²``; ``H_0 = log V_fin`` (§6, §10 item 10)."""
    logits = random_logits(seed, (3, vocab), dtype=dtype, masked=masked)
    kw = dict(temperature=temperature)
    alphas = [
        0.0,
        0.3,
        0.5,
        1.0 - 1e-3,
        1.0 - 5e-5,
        1.0,
        1.0 + 5e-5,
        1.0 + 1e-3,
        2.0,
        5.0,
        math.inf,
    ]
    values = np.stack([entcore.renyi_entropy(logits, a, **kw) for a in alphas]).astype(np.float64)
    steps = np.diff(values, axis=0)
    assert np.all(steps <= RTOL * values[:-1] + 2e-6), steps.max()
    assert_bitwise(entcore.renyi_entropy(logits, 1.0, **kw), entcore.token_entropy(logits, **kw))
    v_fin = np.sum(logits.astype(np.float64) > -np.inf, axis=-1)
    np.testing.assert_allclose(values[0], np.log(v_fin), rtol=1e-6)
    collision = entcore.collision_probability(logits, **kw).astype(np.float64)
    np.testing.assert_allclose(values[alphas.index(2.0)], -np.log(collision), rtol=RTOL, atol=ATOL)
    h_inf = ref.renyi_entropy(logits, math.inf, **kw)
    np.testing.assert_allclose(values[-1], h_inf, rtol=RTOL, atol=ATOL)
    ref_values = np.stack([ref.renyi_entropy(logits, a, **kw) for a in alphas])
    assert np.all(np.diff(ref_values, axis=0) <= 1e-12)


@given(seed=seeds, vocab=st.sampled_from(VOCABS), temperature=st.sampled_from(TEMPERATURES))
def test_renyi_continuous_through_one(seed, vocab, temperature):
    """``|H_α − H_1| ≤ |α − 1| · Var_p(z')/2 · (1 + O(|α−1|))`` on both sides of ``α = 1`` and of
    the ``1e-4`` switch between the expansion and the closed form (§6)."""
    logits = random_logits(seed, (3, vocab), scale=2.0)
    h1 = ref.token_entropy(logits, temperature=temperature)
    z = logits.astype(np.float64) / temperature
    every_label = np.broadcast_to(np.arange(vocab), (3, vocab))
    p = np.exp(ref.token_logprob(logits, every_label, temperature=temperature))
    centred = z - np.sum(p * z, axis=-1, keepdims=True)
    # H_α = H − κ2 (α−1)/2 − κ3 (α−1)²/6 − …, κ_i the cumulants of z' under p
    var, m3, m4 = (np.sum(p * centred**k, axis=-1) for k in (2, 3, 4))
    for eps in (1e-6, 5e-5, 9.9e-5, 1.01e-4, 2e-4, 1e-3):
        for alpha in (1 - eps, 1 + eps):
            # + rounding of the float64 closed form, about 1e-16 / eps
            bound = eps * var / 2 + eps**2 * np.abs(m3) / 3 + eps**3 * m4 + 1e-10
            assert np.all(
                np.abs(ref.renyi_entropy(logits, alpha, temperature=temperature) - h1) <= bound
            )
            got = entcore.renyi_entropy(logits, alpha, temperature=temperature).astype(np.float64)
            assert np.all(np.abs(got - h1) <= bound + RTOL * h1 + ATOL)


def test_renyi_huge_order_tends_to_min_entropy():
    """``H_α → H_∞`` as ``α → ∞``; a huge finite ``α`` must not overflow ``α · log s``."""
    logits = random_logits(3, (4, 300), scale=2.0)
    h_inf = ref.renyi_entropy(logits, math.inf)
    for alpha in (1e6, 1e300, 1e308):
        np.testing.assert_allclose(ref.renyi_entropy(logits, alpha), h_inf, rtol=1e-5)
        np.testing.assert_allclose(entcore.renyi_entropy(logits, alpha), h_inf, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# 12. -inf never gives NaN; NaN only in the affected rows
# ---------------------------------------------------------------------------------------------


@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    dtype=st.sampled_from(DTYPES),
    temperature=st.sampled_from(TEMPERATURES),
    masked=st.sampled_from([0.5, 0.9, 0.999]),
)
def test_minus_inf_never_gives_nan(seed, vocab, dtype, temperature, masked):
    logits = random_logits(seed, (4, vocab), dtype=dtype, masked=masked)
    finite = logits.astype(np.float64) > -np.inf
    labels = np.argmax(finite, axis=-1)  # a finite entry of each row
    kw = dict(temperature=temperature)
    logprob, entropy, collision = entcore.token_logprob_entropy(
        logits, labels, return_collision=True, **kw
    )
    assert np.all(np.isfinite(entropy)) and np.all(np.isfinite(collision))
    assert np.all(np.isfinite(logprob))
    for alpha in (0.0, 0.5, 1.0 + 5e-5, 2.0, 7.0, math.inf):
        assert np.all(np.isfinite(entcore.renyi_entropy(logits, alpha, **kw)))
    # entcore's value equals the entropy of the distribution with those entries removed (§4)
    for i in range(4):
        kept = logits[i][finite[i]]
        np.testing.assert_allclose(
            entcore.token_entropy(kept, **kw), entropy[i], rtol=RTOL, atol=ATOL
        )


@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    dtype=st.sampled_from(DTYPES),
    nan_rows=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_nan_propagates_to_affected_rows_only(seed, vocab, dtype, nan_rows):
    """``nan_policy="propagate"``: NaN exactly in the rows holding a NaN; the other rows are
    bitwise the rows computed without the NaN rows (§4, §10 item 12)."""
    rng = np.random.default_rng(seed)
    logits = random_logits(seed, (4, vocab), dtype=dtype, masked=0.2)
    clean = logits.copy()
    rows = np.array(nan_rows)
    for i in np.flatnonzero(rows):
        logits[i, rng.integers(0, vocab)] = np.nan
    labels = rng.integers(0, vocab, size=(4, 2))
    labels[:, 1] = -100
    kw = dict(temperature=0.6, nan_policy="propagate")
    got = entcore.token_logprob_entropy(
        logits, labels, ignore_index=-100, return_collision=True, **kw
    )
    want_clean = entcore.token_logprob_entropy(
        clean, labels, ignore_index=-100, temperature=0.6, return_collision=True
    )
    for g, w in zip(got[1:], want_clean[1:], strict=True):
        assert np.array_equal(np.isnan(g), rows)
        assert_bitwise(g[~rows], w[~rows])
    assert np.array_equal(np.isnan(got[0][:, 0]), rows)
    assert_bitwise(got[0][~rows, 0], want_clean[0][~rows, 0])
    assert np.all(got[0][:, 1] == 0.0)  # an ignored label is never read
    for alpha in (0.5, 2.0):
        h = entcore.renyi_entropy(logits, alpha, **kw)
        assert np.array_equal(np.isnan(h), rows)
    ref_h = ref.token_entropy(logits, **kw)
    assert np.array_equal(np.isnan(ref_h), rows)
    if rows.any():
        for face in (entcore, ref):
            with pytest.raises(ValueError, match="logits"):
                face.token_entropy(logits)
