"""``entcore.torch.kv`` (tensors, any device) against the oracle ``entcore.reference.kv``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entcore.reference import kv as ref
from helpers import require_torch

torch = require_torch()
tkv = __import__("entcore.torch.kv", fromlist=["kv"])

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _np(x):
    return x.detach().cpu().float().numpy() if x.dtype == torch.bfloat16 else x.cpu().numpy()


@st.composite
def snapkv_case(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    h_kv, group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    window = draw(st.integers(1, 6))
    n = draw(st.integers(window, 40))
    options = {
        "window": window,
        "kernel": draw(st.sampled_from([1, 3, 5, 7])),
        "pooling": draw(st.sampled_from(ref.POOLINGS)),
        "reduce": draw(st.sampled_from(ref.REDUCES)),
        "group_reduce": draw(st.sampled_from(ref.GROUP_REDUCES)),
        "sink": draw(st.integers(0, 3)),
    }
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    gen = torch.Generator().manual_seed(seed)
    q = (2 * torch.randn((2, h_kv * group, window, 8), generator=gen)).to(dtype)
    k = (2 * torch.randn((2, h_kv, n, 8), generator=gen)).to(dtype)
    key_mask = torch.rand((2, n), generator=gen) > 0.2 if draw(st.booleans()) else None
    return q, k, key_mask, options


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(case=snapkv_case())
def test_snapkv_scores_match_the_reference(device, case):
    q, k, key_mask, options = case
    mask_dev = None if key_mask is None else key_mask.to(device)
    got = tkv.snapkv_scores(queries=q.to(device), keys=k.to(device), key_mask=mask_dev, **options)
    assert got.device.type == device and got.dtype == torch.float32
    want = ref.snapkv_scores(
        queries=_np(q),
        keys=_np(k),
        key_mask=None if key_mask is None else key_mask.numpy(),
        **options,
    )
    got = got.cpu().numpy()
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_snapkv_scores_from_attention(device):
    gen = torch.Generator().manual_seed(0)
    attention = torch.softmax(torch.randn((2, 6, 4, 30), generator=gen), -1)
    for n_kv in (None, 3):
        got = tkv.snapkv_scores(attention=attention.to(device), window=4, n_kv_heads=n_kv)
        want = ref.snapkv_scores(attention=attention.numpy(), window=4, n_kv_heads=n_kv)
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30))
def test_select_tokens_matches_the_reference(device, seed, n):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(2, 3, n)), 1)
    scores[rng.random((2, 3, n)) < 0.1] = -np.inf
    budgets = rng.integers(0, np.isfinite(scores).sum(-1).min() + 1, size=(2, 3))
    s = torch.from_numpy(scores).to(device)
    idx, lengths = tkv.select_tokens(s, torch.from_numpy(budgets))
    want_idx, want_len = ref.select_tokens(scores, budgets)
    assert idx.device.type == device and idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.cpu().numpy(), want_idx)
    np.testing.assert_array_equal(lengths.cpu().numpy(), want_len)
    mask = tkv.select_tokens(s, budgets, return_mask=True)
    np.testing.assert_array_equal(
        mask.cpu().numpy(), ref.select_tokens(scores, budgets, return_mask=True)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ref.LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compress_kv_matches_the_reference(device, layout, dtype):
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn((2, 4, 20, 8), generator=gen).to(dtype)
    values = torch.randn((2, 4, 20, 6), generator=gen).to(dtype)
    scores = torch.randn((2, 4, 20), generator=gen)
    idx, lengths = tkv.select_tokens(scores, [3, 0, 11, 3])
    got = tkv.compress_kv(keys.to(device), values.to(device), idx, lengths, layout=layout)
    want = ref.compress_kv(
        keys.float().numpy(), values.float().numpy(), idx.numpy(), lengths.numpy(), layout=layout
    )
    if layout == "grouped":
        got = [a for g in got for a in g]
        want = [a for g in want for a in g]
    for g, w in zip(got, want, strict=True):
        assert g.device.type == device
        if g.dtype.is_floating_point:
            assert g.dtype == dtype
        np.testing.assert_array_equal(_np(g).astype(w.dtype), w)


def test_calibration_and_allocation_take_tensors():
    gen = torch.Generator().manual_seed(2)
    e = torch.randn((4, 3, 6), generator=gen)
    profile = tkv.calibrate_heads(e)
    np.testing.assert_array_equal(profile.groups, ref.calibrate_heads(e.numpy()).groups)
    weights = tkv.budget_weights(torch.from_numpy(profile.groups))
    assert isinstance(weights, torch.Tensor) and weights.dtype == torch.float64
    plan = tkv.allocate_budgets(weights, n_tokens=50, compression_ratio=0.75)
    want = ref.allocate_budgets(
        ref.budget_weights(profile.groups), n_tokens=50, compression_ratio=0.75
    )
    np.testing.assert_array_equal(plan.budgets, want.budgets)
    stages = tkv.segment_layers(torch.tensor([5.0, 3.0, 3.5, 1.0]), threshold=1.0)
    assert stages.tolist() == [0, 1, 1, 2] and stages.dtype == torch.int64


def test_torch_face_errors():
    q, k = torch.randn((1, 2, 4, 8)), torch.randn((1, 1, 10, 8))
    with pytest.raises(ValueError, match="kernel"):
        tkv.snapkv_scores(queries=q, keys=k, window=4, kernel=2)
    with pytest.raises(ValueError, match="NaN"):
        tkv.snapkv_scores(queries=q * float("nan"), keys=k, window=4)
    with pytest.raises(TypeError, match="queries"):
        tkv.snapkv_scores(queries=q.numpy(), keys=k, window=4)
    with pytest.raises(ValueError, match="finite"):
        tkv.select_tokens(torch.zeros((1, 1, 3)).log(), 1)
    with pytest.raises(ValueError, match="budgets"):
        tkv.select_tokens(torch.zeros((1, 1, 3)), 4)
    with pytest.raises(ValueError, match="indices"):
        tkv.compress_kv(k, k, torch.tensor([[[10]]]), torch.tensor([[1]]))
