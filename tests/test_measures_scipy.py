"""``more.md`` measures against SciPy where SciPy computes the same quantity (``scipy`` is in the
dev extra, so this module runs in CI)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, stats
from scipy.spatial.distance import jensenshannon

import entcore
from entcore.reference import measures as ref


def softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_row_entropies_match_scipy():
    rng = np.random.default_rng(50)
    p = softmax(rng.normal(size=(2, 3, 4, 9)) * 2)
    want = stats.entropy(p, axis=-1)
    np.testing.assert_allclose(ref.attention_entropy(p), want, rtol=1e-12)
    np.testing.assert_allclose(entcore.attention_entropy(p.astype(np.float32)), want, rtol=1e-5)
    counts = rng.integers(0, 7, size=(5, 6))
    counts[:, 0] += 1
    np.testing.assert_allclose(ref.action_entropy(counts), stats.entropy(counts, axis=-1))
    np.testing.assert_allclose(
        ref.pds_entropy(counts), stats.entropy(counts, axis=-1) / math.log(6), rtol=1e-12
    )
    ids = rng.integers(0, 4, size=12)
    np.testing.assert_allclose(
        ref.semantic_entropy(ids), stats.entropy(np.unique(ids, return_counts=True)[1])
    )


def test_marginal_and_structural_entropy_match_scipy():
    rng = np.random.default_rng(51)
    z = rng.normal(size=(10, 7))
    np.testing.assert_allclose(
        ref.marginal_entropy(z, eps=0.0), stats.entropy(softmax(z).mean(0)), rtol=1e-12
    )
    w = rng.uniform(size=(8, 8))
    w = w + w.T
    np.testing.assert_allclose(
        ref.structural_entropy(w), stats.entropy(w.sum(0), base=2), rtol=1e-12
    )


def test_two_step_consistency_is_the_jensen_shannon_divergence():
    rng = np.random.default_rng(52)
    x = softmax(rng.normal(size=(2, 6, 11)) * 2)
    _, _, mi = ref.history_consistency(x)
    want = jensenshannon(x[0], x[1], axis=-1) ** 2
    np.testing.assert_allclose(mi, want, rtol=1e-9)
    np.testing.assert_allclose(entcore.history_consistency(x)[2], want, rtol=1e-5, atol=1e-7)


def test_delentropy_matches_scipy_ndimage_filters():
    rng = np.random.default_rng(53)
    img = rng.integers(0, 256, size=(20, 17)).astype(np.float64)
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / 2.0)
    g /= g.sum()
    blurred = ndimage.correlate(img, np.outer(g, g), mode="mirror")
    gx = ndimage.sobel(blurred, axis=1, mode="mirror")
    gy = ndimage.sobel(blurred, axis=0, mode="mirror")
    counts, _, _ = np.histogram2d(gx.ravel(), gy.ravel(), bins=511, range=[[-256, 256]] * 2)
    want = stats.entropy(counts.ravel(), base=2) / 2
    np.testing.assert_allclose(ref.delentropy(img), want, rtol=1e-12)
