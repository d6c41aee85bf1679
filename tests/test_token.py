"""The NumPy face ``entcore.token_*`` (Rust core) held to the float64 oracle ``entcore.reference``.

Covers ``token.md`` §10 item 5 (agreement with the reference within the ``conventions.md`` bounds:
fp32 relative 1e-5, absolute 1e-5 near 0, against the reference run on the same upcast inputs),
item 6 (chunk- and tile-boundary invariance, bitwise), item 7 (thread-count invariance, bitwise),
item 9 (per-row temperature equal to a scalar is bitwise identical), the dtypes, shapes and
layouts of ``token.md`` §1 and ``conventions.md`` "Inputs and errors", the SIMD kernel families,
and the fused linear head (§8.2). The reference itself is checked against an independent
textbook evaluation in ``math.fsum``.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import entcore
from entcore import _core
from entcore.reference import token as ref

BF16 = ml_dtypes.bfloat16
DTYPES = [np.float32, np.float16, BF16, np.float64]
DTYPE_IDS = ["f32", "f16", "bf16", "f64"]
VOCABS = [1, 2, 7, 2047, 2048, 2049, 4095, 4097]
TEMPERATURES = [0.6, 1.0, 1.5]
TILE = 2048  # the vocabulary tile of token.md §3
RENYI_ALPHAS = [0.0, 0.5, 1.0 - 2e-4, 1.0 - 5e-5, 1.0, 1.0 + 5e-5, 1.0 + 2e-4, 2.0, 3.5, math.inf]

seeds = st.integers(0, 2**32 - 1)


def random_logits(seed, shape, *, scale=3.0, dtype=np.float32, masked=0.0):
    """Gaussian logits of standard deviation ``scale``; a fraction ``masked`` set to ``-inf``
    (never a whole row)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape) * scale
    if masked and z.size:
        mask = rng.random(shape) < masked
        keep = np.argmax(z, axis=-1)[..., None]
        np.put_along_axis(mask, keep, False, axis=-1)
        z[mask] = -np.inf
    return z.astype(dtype)


def tolerances(dtype):
    """``conventions.md`` Numbers: fp32 relative 1e-5 (absolute 1e-5 near 0); float64 input is
    accumulated in float64 and only rounded to the float32 output."""
    return (1e-6, 1e-7) if np.dtype(dtype) == np.float64 else (1e-5, 1e-5)


def assert_agrees(got, want, dtype=np.float32):
    """``got`` (entcore, float32) within tolerance of ``want`` (reference, float64)."""
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.float32, got.dtype
    assert got.shape == want.shape, (got.shape, want.shape)
    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol)


def assert_bitwise(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# ---------------------------------------------------------------------------------------------
# The oracle itself (an independent textbook evaluation, float64, math.fsum)
# ---------------------------------------------------------------------------------------------


def _textbook(row, t):
    """log-softmax, entropy and collision of one row with plain ``math`` calls."""
    finite = [float(x) / t for x in row if x > -math.inf]
    top = max(finite)
    lse = top + math.log(math.fsum(math.exp(x - top) for x in finite))
    logp = [float(x) / t - lse if x > -math.inf else -math.inf for x in row]
    probs = [math.exp(lp) for lp in logp]
    entropy = -math.fsum(p * lp for p, lp in zip(probs, logp, strict=True) if p > 0)
    collision = math.fsum(p * p for p in probs)
    return logp, entropy, collision


@pytest.mark.parametrize("vocab", [1, 2, 7, 300])
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_reference_matches_textbook_formulas(vocab, temperature):
    """The oracle equals ``−Σ p log p``, ``log softmax`` and ``Σ p²`` to float64 rounding."""
    logits = random_logits(vocab, (4, vocab), scale=4.0, masked=0.3 if vocab > 2 else 0.0)
    labels = np.random.default_rng(1).integers(0, vocab, size=(4, 3))
    logprob, entropy, collision = ref.token_logprob_entropy(
        logits, labels, temperature=temperature, return_collision=True
    )
    assert logprob.dtype == entropy.dtype == collision.dtype == np.float64
    for i, row in enumerate(logits):
        logp, h, c = _textbook(row, temperature)
        np.testing.assert_allclose(logprob[i], [logp[y] for y in labels[i]], rtol=1e-12, atol=1e-14)
        assert entropy[i] == pytest.approx(h, rel=1e-12, abs=1e-14)
        assert collision[i] == pytest.approx(c, rel=1e-12)
        for alpha in (0.5, 2.0, 3.0):
            probs = np.exp(logp)
            want = math.log(math.fsum(probs[probs > 0] ** alpha)) / (1 - alpha)
            got = ref.renyi_entropy(row, alpha, temperature=temperature)
            assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-14)


# ---------------------------------------------------------------------------------------------
# Agreement with the reference (token.md §10 item 5)
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40)
@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    rows=st.integers(0, 4),
    dtype=st.sampled_from(DTYPES),
    temperature=st.sampled_from(TEMPERATURES),
    scale=st.sampled_from([0.01, 1.0, 3.0, 8.0]),
    masked=st.sampled_from([0.0, 0.3, 0.97]),
    per_row=st.integers(1, 3),
)
def test_token_logprob_entropy_agrees_with_reference(
    seed, vocab, rows, dtype, temperature, scale, masked, per_row
):
    logits = random_logits(seed, (rows, vocab), scale=scale, dtype=dtype, masked=masked)
    labels = np.random.default_rng(seed + 1).integers(0, vocab, size=(rows, per_row))
    got = entcore.token_logprob_entropy(
        logits, labels, temperature=temperature, return_collision=True
    )
    want = ref.token_logprob_entropy(logits, labels, temperature=temperature, return_collision=True)
    assert len(got) == 3
    for g, w in zip(got, want, strict=True):
        assert_agrees(g, w, dtype)
    # The single-output functions are the same numbers.
    assert_agrees(entcore.token_entropy(logits, temperature=temperature), want[1], dtype)
    assert_agrees(entcore.token_logprob(logits, labels, temperature=temperature), want[0], dtype)
    assert_agrees(entcore.collision_probability(logits, temperature=temperature), want[2], dtype)
    two = entcore.token_logprob_entropy(logits, labels[:, 0], temperature=temperature)
    assert len(two) == 2
    assert_agrees(two[0], want[0][:, 0], dtype)
    assert_agrees(two[1], want[1], dtype)


@settings(max_examples=30)
@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    dtype=st.sampled_from(DTYPES),
    temperature=st.sampled_from(TEMPERATURES),
    alpha=st.sampled_from(RENYI_ALPHAS + [1.0 - 1.5e-4, 1.0 + 1e-3, 10.0, 60.0]),
    masked=st.sampled_from([0.0, 0.5]),
)
def test_renyi_entropy_agrees_with_reference(seed, vocab, dtype, temperature, alpha, masked):
    """``token.md`` §6, including α = 0, 1, 2, ∞ and both sides of the near-1 threshold."""
    logits = random_logits(seed, (3, vocab), dtype=dtype, masked=masked)
    got = entcore.renyi_entropy(logits, alpha, temperature=temperature)
    assert_agrees(got, ref.renyi_entropy(logits, alpha, temperature=temperature), dtype)


@pytest.mark.parametrize("vocab", [32000, 151936])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_vocabularies_agree_with_reference(vocab, dtype):
    logits = random_logits(vocab, (2, vocab), scale=2.5, dtype=dtype, masked=0.1)
    labels = np.random.default_rng(3).integers(0, vocab, size=(2, 4))
    got = entcore.token_logprob_entropy(logits, labels, temperature=0.6, return_collision=True)
    want = ref.token_logprob_entropy(logits, labels, temperature=0.6, return_collision=True)
    for g, w in zip(got, want, strict=True):
        assert_agrees(g, w, dtype)
    assert_agrees(entcore.renyi_entropy(logits, 2.0), ref.renyi_entropy(logits, 2.0), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_leading_shapes_labels_and_broadcast_temperatures(dtype):
    """``(B, L, V)`` logits with ``(B, L)`` and ``(B, L, K)`` labels, per-row temperatures
    broadcast from ``(B, 1)``; 1-D logits give 0-d results (``token.md`` §1)."""
    logits = random_logits(11, (2, 3, 50), dtype=dtype, masked=0.2)
    temps = np.array([[0.6], [1.5]])
    rng = np.random.default_rng(5)
    for labels in (rng.integers(0, 50, size=(2, 3)), rng.integers(0, 50, size=(2, 3, 4))):
        got = entcore.token_logprob_entropy(logits, labels, temperature=temps)
        want = ref.token_logprob_entropy(logits, labels, temperature=temps)
        assert got[0].shape == labels.shape and got[1].shape == (2, 3)
        for g, w in zip(got, want, strict=True):
            assert_agrees(g, w, dtype)
    one_row = logits[1, 2]
    h = entcore.token_entropy(one_row)
    assert h.shape == ()
    assert_agrees(h, ref.token_entropy(one_row), dtype)
    lp = entcore.token_logprob(one_row, np.array([7, 0, 49], dtype=np.int32))
    assert_agrees(lp, ref.token_logprob(one_row, np.array([7, 0, 49])), dtype)
    # one label for the one row: a 0-d label gives a 0-d log-prob (shape labels.shape)
    lp = entcore.token_logprob(one_row, np.array(7))
    assert lp.shape == ()
    assert_agrees(lp, ref.token_logprob(one_row, np.array(7)), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_empty_batch(dtype):
    """``N = 0``: empty float32 results of the right shapes, for every function."""
    logits = np.zeros((0, 7), dtype=dtype)
    assert entcore.token_entropy(logits).shape == (0,)
    assert entcore.token_entropy(logits).dtype == np.float32
    assert entcore.token_logprob(logits, np.zeros(0, np.int64)).shape == (0,)
    lp, h, c = entcore.token_logprob_entropy(
        logits, np.zeros((0, 3), np.int64), return_collision=True
    )
    assert lp.shape == (0, 3) and h.shape == (0,) and c.shape == (0,)
    assert entcore.collision_probability(logits).shape == (0,)
    assert entcore.renyi_entropy(logits, 2.0).shape == (0,)
    assert entcore.token_entropy(np.zeros((2, 0, 5), dtype=dtype)).shape == (2, 0)
    assert entcore.token_entropy(logits, temperature=np.ones(0)).shape == (0,)


def test_ignore_index_rows_get_zero():
    logits = random_logits(2, (4, 9))
    labels = np.array([[3, -100], [-100, -100], [0, 8], [-100, 5]])
    got = entcore.token_logprob(logits, labels, ignore_index=-100, temperature=0.6)
    want = ref.token_logprob(logits, labels, ignore_index=-100, temperature=0.6)
    assert_agrees(got, want)
    assert np.all(got[labels == -100] == 0.0)
    assert np.all(got[labels != -100] < 0.0)


def test_masked_label_gives_minus_inf():
    """A label on a ``-inf`` logit gives ``ℓ = -inf``; the others stay finite (``token.md`` §4)."""
    logits = np.array([[0.0, -np.inf, 1.0, 2.0]], dtype=np.float32)
    got = entcore.token_logprob(logits, np.array([[1, 0, 2, 3]]))
    assert got[0, 0] == -np.inf
    assert np.all(np.isfinite(got[0, 1:]))
    assert_agrees(got, ref.token_logprob(logits, np.array([[1, 0, 2, 3]])))


# ---------------------------------------------------------------------------------------------
# Temperatures (token.md §1, §10 item 9)
# ---------------------------------------------------------------------------------------------


@settings(max_examples=25)
@given(
    seed=seeds,
    vocab=st.sampled_from(VOCABS),
    dtype=st.sampled_from(DTYPES),
    temperature=st.sampled_from(TEMPERATURES + [0.37, 2.0]),
)
def test_per_row_temperature_equal_to_scalar_is_bitwise(seed, vocab, dtype, temperature):
    logits = random_logits(seed, (5, vocab), dtype=dtype, masked=0.2)
    labels = np.random.default_rng(seed).integers(0, vocab, size=(5, 2))
    per_row = np.full(5, temperature)
    a = entcore.token_logprob_entropy(
        logits, labels, temperature=temperature, return_collision=True
    )
    b = entcore.token_logprob_entropy(logits, labels, temperature=per_row, return_collision=True)
    for x, y in zip(a, b, strict=True):
        assert_bitwise(x, y)
    assert_bitwise(
        entcore.token_entropy(logits, temperature=temperature),
        entcore.token_entropy(logits, temperature=per_row[:, None][:, 0]),
    )
    for alpha in (0.5, 2.0, 1.0 + 5e-5, math.inf):
        assert_bitwise(
            entcore.renyi_entropy(logits, alpha, temperature=temperature),
            entcore.renyi_entropy(logits, alpha, temperature=per_row),
        )


@settings(max_examples=20)
@given(seed=seeds, vocab=st.sampled_from(VOCABS), dtype=st.sampled_from(DTYPES))
def test_distinct_per_row_temperatures_equal_rows_alone(seed, vocab, dtype):
    """Rows are independent: row ``i`` with ``T_i`` in a batch is bitwise the row alone with the
    scalar ``T_i``; and within tolerance of the reference."""
    logits = random_logits(seed, (4, vocab), dtype=dtype)
    labels = np.random.default_rng(seed).integers(0, vocab, size=4)
    temps = np.array([0.6, 1.0, 1.5, 0.25])
    lp, h = entcore.token_logprob_entropy(logits, labels, temperature=temps)
    want = ref.token_logprob_entropy(logits, labels, temperature=temps)
    assert_agrees(lp, want[0], dtype)
    assert_agrees(h, want[1], dtype)
    for i, t in enumerate(temps):
        lp_i, h_i = entcore.token_logprob_entropy(
            logits[i : i + 1], labels[i : i + 1], temperature=t
        )
        assert_bitwise(lp_i, lp[i : i + 1])
        assert_bitwise(h_i, h[i : i + 1])


# ---------------------------------------------------------------------------------------------
# Layouts: non-contiguous inputs, inputs never modified (conventions.md, Inputs and errors)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_contiguous_inputs_give_the_same_result(dtype):
    base = random_logits(21, (6, 2 * 2049 + 1), dtype=dtype, masked=0.1)
    views = [
        base[:, ::2],  # strided vocabulary
        base[::-1, 1::2],  # reversed rows
        np.asfortranarray(base[:, :300]),  # column-major
        base[::2, :2049],  # strided rows
    ]
    for view in views:
        contiguous = np.ascontiguousarray(view)
        vocab = view.shape[-1]
        labels_base = np.random.default_rng(0).integers(0, vocab, size=(view.shape[0], 4))
        labels = np.asfortranarray(labels_base)[:, ::2]
        temps_base = np.linspace(0.5, 1.5, 2 * view.shape[0])
        temps = temps_base[::2]
        got = entcore.token_logprob_entropy(view, labels, temperature=temps, return_collision=True)
        want = entcore.token_logprob_entropy(
            contiguous,
            np.ascontiguousarray(labels),
            temperature=np.ascontiguousarray(temps),
            return_collision=True,
        )
        for g, w in zip(got, want, strict=True):
            assert_bitwise(g, w)
        assert_bitwise(entcore.renyi_entropy(view, 3.0), entcore.renyi_entropy(contiguous, 3.0))
        assert_agrees(got[1], ref.token_entropy(view, temperature=temps), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_inputs_are_never_modified(dtype):
    logits = random_logits(8, (5, 2049), dtype=dtype, masked=0.2)
    logits[2, 3] = np.nan
    labels = np.random.default_rng(1).integers(0, 2049, size=(5, 3))
    labels[0, 0] = -100
    temps = np.array([0.6, 1.0, 1.5, 0.7, 2.0])
    copies = [logits.copy(), labels.copy(), temps.copy()]
    entcore.token_logprob_entropy(
        logits,
        labels,
        temperature=temps,
        ignore_index=-100,
        return_collision=True,
        nan_policy="propagate",
    )
    entcore.token_entropy(logits, temperature=0.6, nan_policy="propagate")
    entcore.token_logprob(
        logits, labels, temperature=temps, ignore_index=-100, nan_policy="propagate"
    )
    entcore.collision_probability(logits, temperature=1.5, nan_policy="propagate")
    entcore.renyi_entropy(logits, 0.5, temperature=temps, nan_policy="propagate")
    ref.token_logprob_entropy(
        logits, labels, temperature=temps, ignore_index=-100, nan_policy="propagate"
    )
    for before, after in zip(copies, [logits, labels, temps], strict=True):
        assert before.dtype == after.dtype
        np.testing.assert_array_equal(before.view(np.uint8), after.view(np.uint8))


# ---------------------------------------------------------------------------------------------
# Chunk and tile boundaries (token.md §3, §10 item 6): bitwise
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [2047, 2048, 2049, 4095, 4096, 4097, 3 * TILE + 1])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_rows_alone_equal_rows_in_a_batch(vocab, dtype):
    logits = random_logits(vocab, (7, vocab), scale=4.0, dtype=dtype, masked=0.05)
    labels = np.random.default_rng(vocab).integers(0, vocab, size=(7, 2))
    batch = entcore.token_logprob_entropy(logits, labels, temperature=0.6, return_collision=True)
    renyi = entcore.renyi_entropy(logits, 0.5, temperature=0.6)
    for i in range(7):
        alone = entcore.token_logprob_entropy(
            logits[i], labels[i], temperature=0.6, return_collision=True
        )
        for b, a in zip(batch, alone, strict=True):
            assert_bitwise(b[i], a)
        assert_bitwise(entcore.renyi_entropy(logits[i], 0.5, temperature=0.6), renyi[i])
    want = ref.token_logprob_entropy(logits, labels, temperature=0.6, return_collision=True)
    for b, w in zip(batch, want, strict=True):
        assert_agrees(b, w, dtype)


@pytest.mark.parametrize("vocab, rows", [(2048, 31), (2048, 32), (2048, 33), (2048, 65), (7, 9363)])
def test_batch_slices_are_bitwise_equal(vocab, rows):
    """Any way of cutting the batch into calls gives the same per-row bits (row chunking)."""
    logits = random_logits(rows, (rows, vocab), scale=3.0, masked=0.02)
    full = entcore.token_entropy(logits, temperature=1.5)
    for start, stop in ((0, rows - 1), (1, rows), (rows // 2, rows), (3, 4)):
        assert_bitwise(entcore.token_entropy(logits[start:stop], temperature=1.5), full[start:stop])


@pytest.mark.parametrize("vocab", [1, 2047, 2049, 4097])
def test_appending_an_empty_tile_is_bitwise_neutral(vocab):
    """A tile of 2048 ``-inf`` entries is the empty state, the identity of the merge (§2)."""
    logits = random_logits(vocab, (3, vocab), masked=0.1)
    padded = np.concatenate([logits, np.full((3, TILE), -np.inf, np.float32)], axis=-1)
    labels = np.zeros((3, 1), np.int64)
    for a, b in zip(
        entcore.token_logprob_entropy(logits, labels, temperature=0.6, return_collision=True),
        entcore.token_logprob_entropy(padded, labels, temperature=0.6, return_collision=True),
        strict=True,
    ):
        assert_bitwise(a, b)


# ---------------------------------------------------------------------------------------------
# Thread count (token.md §10 item 7) and SIMD kernel families
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    before = entcore.get_num_threads()
    yield
    entcore.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_thread_count_invariance(dtype, restore_threads):
    logits = random_logits(4, (300, 2049), dtype=dtype, masked=0.1)
    long_row = random_logits(5, (1, 151936), dtype=dtype)
    labels = np.random.default_rng(2).integers(0, 2049, size=(300, 2))
    temps = np.linspace(0.5, 2.0, 300)
    rng = np.random.default_rng(3)
    topk = np.sort(np.log(rng.dirichlet(np.ones(50), size=200)), axis=-1)[:, ::-1][:, :5]
    hidden = rng.standard_normal((40, 32)).astype(np.float32)
    weight = rng.standard_normal((3000, 32)).astype(np.float32) / 4
    results = {}
    for k in (1, 2, 8):
        entcore.set_num_threads(k)
        assert entcore.get_num_threads() == k
        results[k] = (
            *entcore.token_logprob_entropy(
                logits, labels, temperature=temps, return_collision=True
            ),
            entcore.token_entropy(long_row),
            entcore.renyi_entropy(logits, 0.5, temperature=temps),
            entcore.renyi_entropy(logits, 1.0 + 5e-5),
            entcore.topk_entropy(topk, 50, mode="estimate"),
            *entcore.token_logprob_entropy_linear(
                hidden, weight, labels[:40, 0], temperature=0.7, return_collision=True
            ),
        )
    for k in (2, 8):
        for a, b in zip(results[1], results[k], strict=True):
            assert_bitwise(a, b)


@pytest.fixture
def restore_simd():
    yield
    _core.set_simd_level("auto")


@pytest.mark.parametrize("level", ["avx512", "avx2", "scalar"])
def test_every_simd_level_agrees_with_reference(level, restore_simd):
    if level not in _core.supported_simd_levels():
        pytest.skip(f"this CPU cannot run the {level} kernels ({_core.supported_simd_levels()})")
    _core.set_simd_level(level)
    assert _core.simd_level() == level
    rng = np.random.default_rng(7)
    for vocab in VOCABS + [32000]:
        for dtype in DTYPES:
            logits = random_logits(vocab, (3, vocab), dtype=dtype, masked=0.1)
            labels = rng.integers(0, vocab, size=(3, 2))
            got = entcore.token_logprob_entropy(
                logits, labels, temperature=0.6, return_collision=True
            )
            want = ref.token_logprob_entropy(logits, labels, temperature=0.6, return_collision=True)
            for g, w in zip(got, want, strict=True):
                assert_agrees(g, w, dtype)
            # the row alone is bitwise the row in the batch at this level too
            assert_bitwise(entcore.token_entropy(logits[1], temperature=0.6), got[1][1])


def test_simd_level_auto_is_the_best_supported(restore_simd):
    levels = _core.supported_simd_levels()
    assert levels and levels[-1] == "scalar"
    assert set(levels) <= {"avx512", "avx2", "scalar"}
    _core.set_simd_level("auto")
    assert _core.simd_level() == levels[0]


# ---------------------------------------------------------------------------------------------
# Fused linear head (token.md §8.2, §10 item 6)
# ---------------------------------------------------------------------------------------------


@settings(max_examples=20)
@given(
    seed=seeds,
    rows=st.integers(0, 12),
    dim=st.sampled_from([1, 3, 16, 33, 64]),
    vocab=st.sampled_from([1, 7, 300, 2049, 4097]),
    dtype=st.sampled_from([np.float32, np.float64]),
    use_bias=st.booleans(),
    temperature=st.sampled_from(TEMPERATURES),
    ignore=st.booleans(),
)
def test_linear_head_agrees_with_materialised_logits(
    seed, rows, dim, vocab, dtype, use_bias, temperature, ignore
):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((rows, dim)).astype(dtype)
    weight = (rng.standard_normal((vocab, dim)) * 2.0 / math.sqrt(dim)).astype(dtype)
    bias = rng.standard_normal(vocab).astype(dtype) if use_bias else None
    labels = rng.integers(0, vocab, size=rows)
    if ignore and rows:
        labels[rng.random(rows) < 0.4] = -100
    kwargs = dict(temperature=temperature, bias=bias, ignore_index=-100 if ignore else None)
    got = entcore.token_logprob_entropy_linear(hidden, weight, labels, **kwargs)
    assert len(got) == 2
    logits64 = hidden.astype(np.float64) @ weight.astype(np.float64).T
    if bias is not None:
        logits64 = logits64 + bias
    want = ref.token_logprob_entropy(
        logits64,
        labels,
        temperature=temperature,
        ignore_index=-100 if ignore else None,
        return_collision=True,
    )
    assert_agrees(got[0], want[0], dtype)
    assert_agrees(got[1], want[1], dtype)
    if ignore:
        assert np.all(got[0][labels == -100] == 0.0)
    with_c = entcore.token_logprob_entropy_linear(
        hidden, weight, labels, return_collision=True, **kwargs
    )
    assert len(with_c) == 3
    assert_agrees(with_c[2], want[2], dtype)
    # The reference face of the linear head is the same float64 computation.
    for r, w in zip(
        ref.token_logprob_entropy_linear(hidden, weight, labels, return_collision=True, **kwargs),
        want,
        strict=True,
    ):
        np.testing.assert_array_equal(r, w)


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["f16", "bf16"])
def test_linear_head_half_inputs(dtype):
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((5, 24)).astype(dtype)
    weight = (rng.standard_normal((2100, 24)) / 3).astype(dtype)
    labels = rng.integers(0, 2100, size=5)
    got = entcore.token_logprob_entropy_linear(hidden, weight, labels, temperature=1.5)
    want = ref.token_logprob_entropy_linear(hidden, weight, labels, temperature=1.5)
    for g, w in zip(got, want, strict=True):
        assert_agrees(g, w)


def test_linear_head_inputs_never_modified():
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((6, 8)).astype(np.float32)
    weight = rng.standard_normal((50, 8)).astype(np.float32)
    bias = rng.standard_normal(50).astype(np.float32)
    labels = rng.integers(0, 50, size=6)
    copies = [x.copy() for x in (hidden, weight, bias, labels)]
    entcore.token_logprob_entropy_linear(hidden, weight, labels, temperature=0.5, bias=bias)
    for before, after in zip(copies, (hidden, weight, bias, labels), strict=True):
        np.testing.assert_array_equal(before, after)
    # non-contiguous hidden / weight are accepted and give the same result
    wide = np.repeat(hidden, 2, axis=1)[:, ::2]
    a = entcore.token_logprob_entropy_linear(wide, weight.T.copy().T, labels, bias=bias)
    b = entcore.token_logprob_entropy_linear(hidden, weight, labels, bias=bias)
    for x, y in zip(a, b, strict=True):
        assert_bitwise(x, y)
