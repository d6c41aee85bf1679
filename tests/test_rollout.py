"""The Rust-backed NumPy face of the rollout statistics held to the float64 reference
(``rollout.md`` §3, §4, §8, §17.1–17.2, §17.4, §17.9)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import entcore
from entcore.reference import rollout as ref

METHODS = ["linear", "lower", "nearest", "topk", "higher", "midpoint"]


def batch(seed: int, rows: int, width: int, ties: bool = False):
    rng = np.random.default_rng(seed)
    h = rng.gamma(0.3, 1.0, (rows, width)).astype(np.float32)
    if ties:
        h = np.round(h, 1).astype(np.float32)
    lengths = rng.integers(0, width + 1, rows)
    mask = np.arange(width)[None, :] < lengths[:, None]
    mask &= rng.random((rows, width)) > 0.1  # holes
    return h, mask


def packed(h: np.ndarray, mask: np.ndarray):
    lengths = np.full(h.shape[0], h.shape[1])
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return h.reshape(-1), mask.reshape(-1), cu


@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 6),
    width=st.integers(1, 40),
    rho=st.sampled_from([0.0, 0.1, 0.2, 0.5, 0.8, 1.0, 0.37]),
    method=st.sampled_from(METHODS),
    ties=st.booleans(),
)
def test_high_entropy_mask_equals_reference(seed, rows, width, rho, method, ties):
    h, mask = batch(seed, rows, width, ties)
    got, tau = entcore.high_entropy_mask(h, mask, rho=rho, method=method, return_threshold=True)
    want, want_tau = ref.high_entropy_mask(h, mask, rho=rho, method=method, return_threshold=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(tau, want_tau, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("micro_batch", [None, 2, np.array([1, 0, 1, 2, 0])])
@pytest.mark.parametrize("scope", ["micro_batch", "batch"])
def test_units_and_layouts(micro_batch, scope):
    h, mask = batch(7, 5, 33)
    kwargs = dict(rho=0.2, scope=scope, micro_batch=micro_batch, return_threshold=True)
    got, tau = entcore.high_entropy_mask(h, mask, **kwargs)
    want, want_tau = ref.high_entropy_mask(h, mask, **kwargs)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(tau, want_tau, rtol=1e-12, equal_nan=True)
    flat, flat_mask, cu = packed(h, mask)
    got_packed = entcore.high_entropy_mask(flat, flat_mask, cu_seqlens=cu, **kwargs)[0]
    np.testing.assert_array_equal(got_packed, got.reshape(-1))


def test_trl_fixture():
    h = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]], np.float32)
    mask = np.ones_like(h, bool)
    mask[1, 4:] = False
    kept = {rho: h[entcore.high_entropy_mask(h, mask, rho=rho)] for rho in (0.2, 0.5, 1.0, 0.0)}
    np.testing.assert_array_equal(kept[0.2], np.float32([0.9, 1.0]))
    np.testing.assert_array_equal(kept[0.5], np.float32([0.6, 0.7, 0.8, 0.9, 1.0]))
    np.testing.assert_array_equal(kept[1.0], h[mask])
    np.testing.assert_array_equal(kept[0.0], np.float32([1.0]))
    assert not entcore.high_entropy_mask(h, np.zeros_like(mask)).any()


def test_padding_values_never_matter_and_nan_policies():
    h, mask = batch(3, 4, 25)
    dirty = h.copy()
    dirty[~mask] = np.nan
    np.testing.assert_array_equal(
        entcore.high_entropy_mask(dirty, mask), entcore.high_entropy_mask(h, mask)
    )
    h[0, np.argmax(mask[0])] = np.nan
    mask[0, np.argmax(mask[0])] = True
    with pytest.raises(ValueError, match="entropy: valid token .* is NaN"):
        entcore.high_entropy_mask(h, mask)
    for policy in ("omit", "propagate"):
        got, tau = entcore.high_entropy_mask(h, mask, nan_policy=policy, return_threshold=True)
        want, want_tau = ref.high_entropy_mask(h, mask, nan_policy=policy, return_threshold=True)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(tau, want_tau, equal_nan=True)


def test_large_buffer_matches_numpy_quantile_and_threads():
    h = np.random.default_rng(0).gamma(0.3, 1.0, 3_000_001).astype(np.float32)[None, :]
    got, tau = entcore.high_entropy_mask(h, rho=0.2, return_threshold=True)
    q = np.quantile(h.astype(np.float64), 0.8)
    np.testing.assert_allclose(tau[0], q, rtol=1e-12)
    np.testing.assert_array_equal(got, h >= np.min(h[h >= q]))
    before = entcore.get_num_threads()
    try:
        for threads in (1, 2, 8):
            entcore.set_num_threads(threads)
            np.testing.assert_array_equal(entcore.high_entropy_mask(h, rho=0.2), got)
    finally:
        entcore.set_num_threads(before)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(rho=1.5), "rho: expected a value in"),
        (dict(method="median"), "method: expected one of"),
        (dict(nan_policy="ignore"), "nan_policy: expected one of"),
        (dict(scope="global"), "scope: expected one of"),
        (dict(cu_seqlens=np.array([0, 3, 2])), "cu_seqlens"),
    ],
)
def test_bad_arguments(bad, match):
    h, mask = batch(1, 2, 5)
    if "cu_seqlens" in bad:
        h, mask = h.reshape(-1), mask.reshape(-1)
    with pytest.raises(ValueError, match=match):
        entcore.high_entropy_mask(h, mask, **bad)


@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 5), width=st.integers(1, 30))
def test_entropy_summary_equals_reference(seed, rows, width):
    h, mask = batch(seed, rows, width)
    got, want = entcore.entropy_summary(h, mask), ref.entropy_summary(h, mask)
    assert got["count"] == want["count"]
    for key in ("mean", "seq_mean", "std", "min", "max", "frac_low", "frac_high"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got["percentiles"], want["percentiles"], rtol=1e-12, equal_nan=True)


@given(
    seed=st.integers(0, 2**32 - 1),
    window=st.integers(1, 6),
    start=st.integers(0, 2),
    width=st.integers(1, 30),
)
def test_window_entropy_equals_reference_in_both_layouts(seed, window, start, width):
    h, mask = batch(seed, 4, width)
    w, defined = entcore.window_entropy(h, mask, window=window, start=start)
    rw, rdefined = ref.window_entropy(h, mask, window=window, start=start)
    np.testing.assert_array_equal(defined, rdefined)
    np.testing.assert_allclose(w, rw, rtol=1e-6, atol=1e-7)
    flat, flat_mask, cu = packed(h, mask)
    pw, pdefined = entcore.window_entropy(
        flat, flat_mask, window=window, start=start, cu_seqlens=cu
    )
    np.testing.assert_array_equal(pw, w.reshape(-1))
    np.testing.assert_array_equal(pdefined, defined.reshape(-1))


def test_every_spec_name_is_on_the_numpy_face():
    assert set(ref.__all__) <= set(entcore.rollout.__all__) | {"PPOTerms"}
    for name in entcore.rollout.__all__:
        assert getattr(entcore, name) is getattr(entcore.rollout, name)


@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 6),
    width=st.integers(1, 30),
    ratio=st.sampled_from([2e-4, 0.1, 0.5, 1.0]),
    micro_batch=st.sampled_from([None, 2, "ids"]),
    constant=st.booleans(),
)
def test_covariance_and_kl_cov_equal_reference(seed, rows, width, ratio, micro_batch, constant):
    rng = np.random.default_rng(seed)
    adv = np.repeat(rng.normal(size=(rows, 1)), width, axis=1)  # a sequence advantage per row
    if constant:
        adv = np.round(adv)  # constant units: covariance exactly 0, ties by lower index
    lp = rng.normal(size=(rows, width))
    mask = rng.random((rows, width)) > 0.3
    mb = rng.integers(0, 3, rows) if micro_batch == "ids" else micro_batch
    for scope in ("micro_batch", "batch"):
        kw = dict(scope=scope, micro_batch=mb)
        np.testing.assert_allclose(
            entcore.centered_cov(adv, lp, mask, **kw),
            ref.centered_cov(adv, lp, mask, **kw),
            rtol=1e-12,
            atol=1e-15,
        )
        got = entcore.kl_cov_select(adv, lp, mask, ratio=ratio, **kw)
        np.testing.assert_array_equal(got, ref.kl_cov_select(adv, lp, mask, ratio=ratio, **kw))
    flat_adv, flat_mask, cu = packed(adv, mask)
    np.testing.assert_array_equal(
        entcore.kl_cov_select(flat_adv, lp.reshape(-1), flat_mask, ratio=ratio, cu_seqlens=cu),
        entcore.kl_cov_select(adv, lp, mask, ratio=ratio).reshape(-1),
    )


@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(0, 6),
    width=st.integers(1, 30),
    ratio=st.sampled_from([2e-4, 0.1, 0.5, 1.0]),
    lb=st.sampled_from([-1.0, 0.0, 0.5]),
    micro_batch=st.sampled_from([None, 2, "ids"]),
    scope=st.sampled_from(["micro_batch", "batch"]),
)
def test_clip_cov_select_equals_reference(seed, rows, width, ratio, lb, micro_batch, scope):
    rng = np.random.default_rng(seed)
    adv = np.repeat(rng.normal(size=(rows, 1)), width, axis=1)
    lp = 2.0 * rng.normal(size=(rows, width))
    old = lp + 0.3 * rng.normal(size=(rows, width))
    mask = rng.random((rows, width)) > 0.2
    mb = rng.integers(0, 3, rows) if micro_batch == "ids" else micro_batch
    kw = dict(ratio=ratio, lb=lb, ub=5.0, scope=scope, micro_batch=mb, return_candidates=True)
    got = entcore.clip_cov_select(adv, lp, old, mask, seed=seed, **kw)
    want = ref.clip_cov_select(adv, lp, old, mask, seed=seed, **kw)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    # One unit: the same draw passed as an explicit permutation.
    if rows and (scope == "batch" or mb is None):
        perm = np.random.default_rng(seed).permutation(int(want[1].sum()))
        one_unit = dict(ratio=ratio, lb=lb, ub=5.0, scope=scope, micro_batch=mb)
        np.testing.assert_array_equal(
            entcore.clip_cov_select(adv, lp, old, mask, perm=perm, **one_unit), want[0]
        )
    flat_adv, flat_mask, cu = packed(adv, mask)
    packed_got = entcore.clip_cov_select(
        flat_adv, lp.reshape(-1), old.reshape(-1), flat_mask, seed=seed, cu_seqlens=cu, **kw
    )
    np.testing.assert_array_equal(packed_got[0], want[0].reshape(-1))


def test_covariance_bad_inputs():
    adv, lp = np.zeros((2, 3)), np.zeros((2, 4))
    with pytest.raises(ValueError, match="logprob: expected shape"):
        entcore.centered_cov(adv, lp)
    with pytest.raises(ValueError, match="ratio: expected a value in"):
        entcore.kl_cov_select(adv, adv, ratio=2.0)
    with pytest.raises(ValueError, match="seed: Clip-Cov selection is random"):
        entcore.clip_cov_select(adv, adv, adv, None)
    with pytest.raises(TypeError, match="old_logprob: expected a float array"):
        entcore.clip_cov_select(adv, adv, adv.astype(np.int64), None, seed=0)
    with pytest.raises(ValueError, match="old_logprob: expected shape"):
        entcore.clip_cov_select(adv, adv, lp, None, seed=0)
    with pytest.raises(ValueError, match="perm: unit 0 expects a permutation"):
        entcore.clip_cov_select(adv, adv + 1, adv, None, lb=-1, perm=[np.zeros(5, int)])
    with pytest.raises(TypeError, match="advantages: expected a float array"):
        entcore.centered_cov(adv.astype(np.int64), adv)
    bad = adv.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="advantages: valid token 1 is NaN"):
        entcore.centered_cov(bad, adv)
