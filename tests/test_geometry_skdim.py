"""TwoNN and MLE against scikit-dimension 0.5, the widely used implementation, when it is
installed (``pip install scikit-dimension``, in the dev extra; an error under CI when missing)."""

from __future__ import annotations

import numpy as np
import pytest

from entcore.reference import geometry as geo
from helpers import require_modules

require_modules("skdim", install="pip install scikit-dimension (the dev extra)")
import skdim  # noqa: E402


@pytest.mark.parametrize("d", [2, 4])
def test_twonn_and_mle_match_scikit_dimension(d):
    rng = np.random.default_rng(110 + d)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    x = np.pad(rng.uniform(size=(600, d)), [(0, 0), (0, 12 - d)]) @ q
    for method in ("linear", "mle"):
        want = skdim.id.TwoNN(discard_fraction=0.1, method=method).fit(x).dimension_
        np.testing.assert_allclose(geo.twonn_dimension(x, method=method), want, rtol=1e-9)
    for comb, aggregate in (("mle", "harmonic"), ("mean", "mean"), ("median", "median")):
        want = skdim.id.MLE().fit(x, n_neighbors=20, comb=comb).dimension_
        np.testing.assert_allclose(geo.mle_dimension(x, k=20, aggregate=aggregate), want, rtol=1e-9)
