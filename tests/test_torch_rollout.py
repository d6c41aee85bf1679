"""The torch face of the rollout statistics (``rollout.md`` §1–§16, properties of §17).

Every function of ``rollout.md``'s table is held to the float64 NumPy oracle
``entcore.reference.rollout`` (and ``reference.token.nucleus_entropy``) on random padded and
packed batches with mask holes, with NaN at every padded or masked-out position (so padding
never changes a result). Tolerances: 1e-6 relative where the face returns float64 (everything is
computed in float64 from exactly upcast inputs), float32 rounding where it returns float32.
Gradients of the differentiable losses are checked against autograd through direct float64
transcriptions of the spec's formulas, and ``gradcheck`` in float64.

``high_entropy_mask`` has two CPU-testable paths: the Rust core (``"core"``, what CPU tensors
use) and the sort of order-preserving keys (``"sorted"``, what every other device uses).
"""

from helpers import require_torch

torch = require_torch()

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402

import entcore.torch as et  # noqa: E402
from entcore.reference import rollout as ref  # noqa: E402
from entcore.reference import token as ref_token  # noqa: E402
from entcore.torch import rollout as tr  # noqa: E402

LAYOUTS = ["padded", "packed"]
DTYPES = [torch.float64, torch.float32]
NP_DTYPE = {torch.float64: np.float64, torch.float32: np.float32}


# ---------------------------------------------------------------------------------------------
# Random buffers and comparisons
# ---------------------------------------------------------------------------------------------


class Batch:
    """A random rollout buffer, padded ``(B, L)`` or packed ``(N,)``, with mask holes, an empty
    row, a full row, and ``pad`` (NaN by default) at every invalid position of every float
    field. ``np(name)`` is the array in ``dtype`` for the reference, ``t(name)`` the tensor."""

    def __init__(
        self, seed, layout="padded", dtype=torch.float64, rows=7, width=11, holes=0.25, pad=np.nan
    ):
        rng = np.random.default_rng(seed)
        self.rows = rows
        self.dtype = dtype
        self.packed = layout == "packed"
        lengths = rng.integers(1, width + 1, size=rows)
        lengths[0] = width
        lengths[rows // 2] = 0
        self.lengths = lengths
        if self.packed:
            self.cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            shape = (int(self.cu[-1]),)
            self.mask = rng.random(shape) > holes
            self.row = np.repeat(np.arange(rows), lengths)
        else:
            self.cu = None
            shape = (rows, width)
            self.mask = (np.arange(width)[None, :] < lengths[:, None]) & (rng.random(shape) > holes)
            self.row = np.repeat(np.arange(rows), width).reshape(shape)
        self.shape = shape
        seq_adv = rng.normal(0.0, 1.5, rows)
        logprob = -rng.gamma(1.0, 1.0, shape)
        self.fields = {
            "entropy": rng.gamma(1.0, 0.7, shape),
            "logprob": logprob,
            "old_logprob": logprob + rng.normal(0.0, 0.3, shape),
            "advantages": seq_adv[self.row],
            "loss": rng.normal(0.0, 1.0, shape),
        }
        self.token_ids = rng.integers(0, 6, shape)
        for name, values in self.fields.items():
            values = values.astype(NP_DTYPE[dtype]).astype(np.float64)
            self.fields[name] = np.where(self.mask, values, pad)

    @property
    def kw(self):
        return {} if self.cu is None else {"cu_seqlens": self.cu}

    @property
    def tkw(self):
        return {} if self.cu is None else {"cu_seqlens": torch.as_tensor(self.cu)}

    def np(self, name):
        return self.fields[name].astype(NP_DTYPE[self.dtype])

    def t(self, name, grad=False):
        return torch.tensor(self.fields[name], dtype=self.dtype, requires_grad=grad)

    @property
    def tmask(self):
        return torch.as_tensor(self.mask)


def as_np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def close(actual, expected, dtype=torch.float64, rtol=None, atol=None):
    """``actual`` (a tensor) against the float64 reference ``expected``."""
    if isinstance(actual, torch.Tensor) and actual.is_floating_point():
        assert actual.dtype == dtype, (actual.dtype, dtype)
    if rtol is None:
        rtol = 1e-6 if dtype == torch.float64 else 2e-6
    if atol is None:
        atol = 1e-9 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(
        as_np(actual).astype(np.float64), np.asarray(expected, dtype=np.float64), rtol, atol
    )


def same(actual, expected):
    a = as_np(actual)
    assert a.dtype == np.asarray(expected).dtype or a.dtype == np.bool_, (a.dtype,)
    np.testing.assert_array_equal(a, np.asarray(expected))


def grad_of(fn, x):
    (g,) = torch.autograd.grad(fn(x), x)
    return g


# ---------------------------------------------------------------------------------------------
# §1 agg_loss
# ---------------------------------------------------------------------------------------------

AGG_CASES = [
    ("token-mean", {}),
    ("token-mean", {"dp_size": 4, "batch_num_tokens": 37}),
    ("seq-mean-token-sum", {}),
    ("seq-mean-token-sum", {"global_batch_size": 7, "dp_size": 2}),
    ("seq-mean-token-mean", {}),
    ("seq-mean-token-mean", {"global_batch_size": 7}),
    ("seq-mean-token-sum-norm", {"loss_scale_factor": 13.0}),
    ("grpo", {"grad_accum_steps": 3}),
    ("bnpo", {}),
    ("dr_grpo", {"max_completion_length": 16, "grad_accum_steps": 2}),
    ("dapo", {}),
    ("dapo", {"num_items_in_batch": 50, "num_processes": 4}),
]


def agg_formula(loss, mask, mode, kw):
    """§1's table, transcribed in float64 torch on the padded layout."""
    s = torch.where(mask, loss, 0.0).sum(dim=1)
    n = mask.sum(dim=1).double()
    rows = loss.shape[0]
    nonempty = n > 0
    dp = kw.get("dp_size", 1)
    accum = kw.get("grad_accum_steps", 1)
    if mode == "token-mean":
        return s.sum() / kw.get("batch_num_tokens", n.sum()) * dp
    if mode == "seq-mean-token-sum":
        return s[nonempty].sum() / kw.get("global_batch_size", nonempty.sum()) * dp
    if mode == "seq-mean-token-mean":
        return (s[nonempty] / n[nonempty]).sum() / kw.get("global_batch_size", nonempty.sum()) * dp
    if mode == "seq-mean-token-sum-norm":
        return s.sum() / kw.get("loss_scale_factor", loss.shape[1])
    if mode == "grpo":
        return (s / n.clamp(min=1)).sum() / rows / accum
    if mode == "bnpo":
        return s.sum() / n.sum().clamp(min=1) / accum
    if mode == "dr_grpo":
        return s.sum() / (rows * kw["max_completion_length"]) / accum
    items = kw.get("num_items_in_batch", n.sum())
    return s.sum() / (items / kw.get("num_processes", 1))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,kw", AGG_CASES)
def test_agg_loss_matches_reference(mode, kw, dtype, layout):
    b = Batch(1, layout, dtype)
    if layout == "packed" and mode == "seq-mean-token-sum-norm":
        kw = {"loss_scale_factor": 13.0}
    got = et.agg_loss(b.t("loss"), b.tmask, mode, **b.tkw, **kw)
    assert got.ndim == 0
    close(got, ref.agg_loss(b.np("loss"), b.mask, mode, **b.kw, **kw), dtype)


@pytest.mark.parametrize("mode,kw", AGG_CASES)
def test_agg_loss_gradient_matches_formula(mode, kw):
    b = Batch(2, "padded", torch.float64)
    mask = b.tmask
    loss = b.t("loss", grad=True)
    got = grad_of(lambda x: et.agg_loss(x, mask, mode, **kw), loss)
    clean = torch.tensor(np.where(b.mask, b.fields["loss"], 0.0), requires_grad=True)
    want = grad_of(lambda x: agg_formula(x, mask, mode, kw), clean)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert torch.all(got[~mask] == 0)  # masked (NaN-padded) tokens get exactly zero gradient
    assert torch.isfinite(got).all()


def test_agg_loss_empty_mask_is_zero_and_differentiable():
    loss = torch.randn(3, 4, requires_grad=True)
    out = et.agg_loss(loss, torch.zeros(3, 4, dtype=torch.bool))
    assert out.item() == 0.0 and out.dtype == torch.float32
    out.backward()
    assert torch.all(loss.grad == 0)


def test_agg_loss_gradcheck():
    b = Batch(3, "packed", torch.float64)
    x = torch.tensor(np.where(b.mask, b.fields["loss"], 0.0), requires_grad=True)
    mask = b.tmask
    cu = torch.as_tensor(b.cu)
    for mode in ("seq-mean-token-mean", "grpo"):
        assert gradcheck(lambda v, m=mode: et.agg_loss(v, mask, m, cu_seqlens=cu), (x,))


# ---------------------------------------------------------------------------------------------
# §2 ppo_loss, group_advantages, pass_at_k
# ---------------------------------------------------------------------------------------------

PPO_CASES = [
    {},
    {"clip_low": 0.2, "clip_high": 0.28},
    {"clip_c": 3.0},
    {"clip_c": 10.0, "clip_high": 0.28, "log_ratio_clamp": None},
    {"log_ratio_clamp": 0.1},
]


def ppo_formula(
    lp, old, adv, mask, clip_low=0.2, clip_high=None, clip_c=None, log_ratio_clamp=20.0
):
    """§2 per-token PPO loss, transcribed in float64 torch."""
    high = clip_low if clip_high is None else clip_high
    delta = torch.where(mask, lp - old, 0.0)
    if log_ratio_clamp is not None:
        delta = delta.clamp(-log_ratio_clamp, log_ratio_clamp)
    r = torch.exp(delta)
    loss = torch.maximum(-adv * r, -adv * r.clamp(1 - clip_low, 1 + high))
    if clip_c is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * clip_c), loss)
    return torch.where(mask, loss, 0.0)


def check_ppo_terms(got, want, dtype):
    close(got.loss, want.loss, dtype)
    close(got.ratio, want.ratio, dtype)
    same(got.clipped, want.clipped)
    for field in ("clipfrac", "clipfrac_lower", "ppo_kl"):
        value = getattr(got, field)
        assert value.ndim == 0 and value.dtype == torch.float64 and not value.requires_grad
        close(
            value,
            getattr(want, field),
            torch.float64,
            rtol=1e-6 if dtype == torch.float64 else 1e-5,
        )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", PPO_CASES)
def test_ppo_loss_matches_reference(kw, dtype, layout):
    b = Batch(4, layout, dtype)
    got = et.ppo_loss(b.t("logprob"), b.t("old_logprob"), b.t("advantages"), b.tmask, **b.tkw, **kw)
    want = ref.ppo_loss(
        b.np("logprob"), b.np("old_logprob"), b.np("advantages"), b.mask, **b.kw, **kw
    )
    assert isinstance(got, et.PPOTerms)
    check_ppo_terms(got, want, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kw", PPO_CASES)
def test_ppo_loss_gradient_matches_formula(kw, layout):
    b = Batch(5, layout, torch.float64)
    weights = torch.randn(b.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lp = b.t("logprob", grad=True)
    old, adv, mask = b.t("old_logprob"), b.t("advantages"), b.tmask
    got = grad_of(
        lambda x: (et.ppo_loss(x, old, adv, mask, **b.tkw, **kw).loss * weights).sum(), lp
    )
    clean = [
        torch.tensor(np.where(b.mask, b.fields[n], 0.0)) for n in ("old_logprob", "advantages")
    ]
    x0 = torch.tensor(np.where(b.mask, b.fields["logprob"], 0.0), requires_grad=True)
    want = grad_of(lambda x: (ppo_formula(x, *clean, mask, **kw) * weights).sum(), x0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert torch.all(got[~mask] == 0)


def test_ppo_loss_only_logprob_is_differentiable():
    b = Batch(6, "padded", torch.float64)
    old = b.t("old_logprob", grad=True)
    adv = b.t("advantages", grad=True)
    terms = et.ppo_loss(b.t("logprob"), old, adv, b.tmask)
    assert not terms.loss.requires_grad


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_advantages_matches_reference(scale, dtype):
    rng = np.random.default_rng(7)
    rewards = rng.integers(0, 2, 20).astype(np.float64) + rng.normal(0, 0.1, 20) * (
        rng.random(20) < 0.5
    )
    group = rng.permutation(np.repeat([5, -2, 11, 3, 40], 4))
    group[0] = 99  # a singleton group
    rewards = rewards.astype(NP_DTYPE[dtype])
    got = et.group_advantages(torch.tensor(rewards), torch.as_tensor(group), scale=scale, eps=1e-4)
    close(got, ref.group_advantages(rewards, group, scale=scale, eps=1e-4), dtype)
    constant = et.group_advantages(
        torch.full((6,), 0.7, dtype=dtype), torch.tensor([1, 1, 1, 2, 2, 2])
    )
    assert torch.all(constant == 0)


def test_pass_at_k_matches_reference():
    n = np.array([1, 5, 10, 16, 64, 100])[:, None]
    c = np.array([0, 1, 3, 5])[None, :]
    k = np.array([[1], [2], [4], [8], [16], [50]])
    c = np.minimum(c, n)
    got = et.pass_at_k(torch.as_tensor(n), torch.as_tensor(c), torch.as_tensor(k))
    close(got, ref.pass_at_k(n, c, k), torch.float64, rtol=1e-12)
    scalar = et.pass_at_k(10, 3, 2)
    assert scalar.ndim == 0 and math.isclose(float(scalar), 1 - math.comb(7, 2) / math.comb(10, 2))
    with pytest.raises(ValueError, match="c"):
        et.pass_at_k(3, 4, 1)


# ---------------------------------------------------------------------------------------------
# §3 high_entropy_mask, forking_token_loss
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["core", "sorted"])
def path(request, monkeypatch):
    """``"core"``: CPU tensors through the Rust core; ``"sorted"``: the device (sort) path."""
    if request.param == "sorted":
        monkeypatch.setattr(tr, "_CORE_METHODS", ())
    else:
        sorted_path = tr._high_entropy_mask_sorted

        def checked(x, mask, rho, method, cu_seqlens, scope, micro_batch, nan_policy, ret):
            assert x.numel() == 0, "CPU tensors must go through the Rust core"
            return sorted_path(
                x, mask, rho, method, cu_seqlens, scope, micro_batch, nan_policy, ret
            )

        monkeypatch.setattr(tr, "_high_entropy_mask_sorted", checked)
    return request.param


TRL = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]])
TRL_MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize(
    "rho,kept",
    [(0.2, [0.9, 1.0]), (0.5, [0.6, 0.7, 0.8, 0.9, 1.0]), (1.0, "all"), (0.0, [1.0])],
)
def test_high_entropy_mask_trl_fixture(path, rho, kept):
    got = et.high_entropy_mask(TRL, TRL_MASK, rho=rho)
    expected = TRL_MASK.bool() if kept == "all" else torch.isin(TRL, torch.tensor(kept))
    assert torch.equal(got, expected & TRL_MASK.bool())
    assert not et.high_entropy_mask(TRL, torch.zeros_like(TRL_MASK)).any()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("method", ["linear", "lower", "nearest", "topk"])
@pytest.mark.parametrize("units", [{}, {"micro_batch": 3}, {"micro_batch": [4, 1, 1, 4, 0, 1, 4]}])
def test_high_entropy_mask_matches_reference(path, layout, method, units):
    for seed, rho in ((8, 0.2), (9, 0.37), (10, 0.0), (11, 1.0)):
        b = Batch(seed, layout, torch.float32, rows=7, width=15)
        if seed == 9:  # ties
            b.fields["entropy"] = np.round(b.fields["entropy"], 1)
        units_t = {k: torch.as_tensor(v) if isinstance(v, list) else v for k, v in units.items()}
        got, tau = et.high_entropy_mask(
            b.t("entropy"),
            b.tmask,
            rho=rho,
            method=method,
            return_threshold=True,
            **b.tkw,
            **units_t,
        )
        want, want_tau = ref.high_entropy_mask(
            b.np("entropy"), b.mask, rho=rho, method=method, return_threshold=True, **b.kw, **units
        )
        same(got, want)
        assert tau.dtype == torch.float64
        np.testing.assert_array_equal(as_np(tau), want_tau)


@pytest.mark.parametrize("method", ["higher", "midpoint", "linear"])
@pytest.mark.parametrize("nan_policy", ["omit", "propagate"])
def test_high_entropy_mask_nan_policies_and_other_methods(path, method, nan_policy):
    b = Batch(12, "padded", torch.float32, rows=6, width=9)
    h = b.fields["entropy"].copy()
    h[1, 0] = np.nan
    b.mask[1, 0] = True
    b.fields["entropy"] = h
    kw = {"rho": 0.3, "method": method, "nan_policy": nan_policy, "micro_batch": 2}
    got, tau = et.high_entropy_mask(b.t("entropy"), b.tmask, return_threshold=True, **kw)
    want, want_tau = ref.high_entropy_mask(b.np("entropy"), b.mask, return_threshold=True, **kw)
    same(got, want)
    np.testing.assert_array_equal(as_np(tau), want_tau)
    with pytest.raises(ValueError, match="entropy"):
        et.high_entropy_mask(b.t("entropy"), b.tmask)


def test_high_entropy_mask_kept_count_and_ties(path):
    rng = np.random.default_rng(13)
    for n in (1, 2, 5, 10, 97, 1000):
        values = torch.tensor(rng.permutation(n).astype(np.float32))[None, :] / 7.0
        for rho in (0.1, 0.2, 0.25, 0.5, 0.8, 0.99):
            got = et.high_entropy_mask(values, None, rho=rho)
            assert int(got.sum()) == n - math.ceil(
                tr._snap(torch.tensor((n - 1) * (1 - rho))).item()
            )
    ties = torch.tensor([[0.5] * 7 + [0.1] * 3])
    assert int(et.high_entropy_mask(ties, None, rho=0.2).sum()) == 7


def test_high_entropy_mask_beyond_2_24_elements():
    """``torch.quantile`` refuses more than 2²⁴ elements; both paths are exact beyond."""
    n = 2**24 + 5
    rng = np.random.default_rng(14)
    # distinct positive floats from consecutive bit patterns, shuffled
    values = (rng.permutation(n).astype(np.int32) + np.int32(0x3F800000)).view(np.float32)
    x = torch.from_numpy(values)
    cu = torch.tensor([0, n])
    rho = 0.2
    h = (n - 1) * (1 - rho)
    lo_value, cut = (
        float(v)
        for v in np.partition(values, [math.floor(h), math.ceil(h)])[[math.floor(h), math.ceil(h)]]
    )
    expected = x >= cut
    assert int(expected.sum()) == n - math.ceil(h)
    tau_expected = lo_value + (h - math.floor(h)) * (cut - lo_value)
    got, tau = et.high_entropy_mask(x, None, rho=rho, cu_seqlens=cu, return_threshold=True)
    assert torch.equal(got, expected) and tau.item() == tau_expected
    got, tau = tr._high_entropy_mask_sorted(
        x, None, rho, "linear", cu, "batch", None, "raise", True
    )
    assert torch.equal(got, expected) and tau.item() == tau_expected


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [{}, {"normalize": "all_valid"}, {"num_tokens": 40, "dp_size": 2}])
def test_forking_token_loss(kw, dtype, layout):
    b = Batch(16, layout, dtype)
    sel = ref.high_entropy_mask(b.np("entropy"), b.mask, **b.kw)
    loss = b.t("loss", grad=True)
    got = et.forking_token_loss(loss, b.tmask, torch.as_tensor(sel), **b.tkw, **kw)
    close(got, ref.forking_token_loss(b.np("loss"), b.mask, sel, **b.kw, **kw), dtype)
    (g,) = torch.autograd.grad(got, loss)
    if "num_tokens" in kw:
        den = kw["num_tokens"] / kw["dp_size"]
    elif kw.get("normalize") == "all_valid":
        den = b.mask.sum()
    else:
        den = sel.sum()
    close(g, np.where(sel, 1.0 / den, 0.0), dtype)


# ---------------------------------------------------------------------------------------------
# §4 entropy_summary, entropy_position_curve
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_summary(layout, dtype):
    b = Batch(17, layout, dtype, rows=9, width=20)
    h = b.fields["entropy"]
    h[b.mask & (np.arange(h.size).reshape(h.shape) % 7 == 0)] = 0.672  # boundary values
    kw = {"percentiles": (0, 1, 33.3, 50, 99, 100), "low": 0.2, "high": 0.672}
    got = et.entropy_summary(b.t("entropy"), b.tmask, **b.tkw, **kw)
    want = ref.entropy_summary(b.np("entropy"), b.mask, **b.kw, **kw)
    assert set(got) == set(want)
    for key, value in want.items():
        if key == "count":
            assert got[key].dtype == torch.int64 and int(got[key]) == value
        else:
            close(got[key], value, torch.float64)
    empty = et.entropy_summary(b.t("entropy"), torch.zeros_like(b.tmask), **b.tkw)
    assert (
        int(empty["count"]) == 0
        and math.isnan(empty["mean"])
        and empty["percentiles"].isnan().all()
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kw", [{}, {"max_len": 4}, {"max_len": 30}, {"bins": 1}, {"bins": 5}])
def test_entropy_position_curve(layout, kw):
    b = Batch(18, layout, torch.float32)
    mean, count = et.entropy_position_curve(b.t("entropy"), b.tmask, **b.tkw, **kw)
    want_mean, want_count = ref.entropy_position_curve(b.np("entropy"), b.mask, **b.kw, **kw)
    close(mean, want_mean, torch.float64)
    same(count, want_count)


# ---------------------------------------------------------------------------------------------
# §5 centered_cov, Clip-Cov, KL-Cov
# ---------------------------------------------------------------------------------------------


def cov_args(b):
    return b.t("advantages"), b.t("logprob")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("units", [{}, {"micro_batch": 2}, {"scope": "batch", "micro_batch": 2}])
def test_centered_cov(layout, dtype, units):
    b = Batch(19, layout, dtype)
    got = et.centered_cov(*cov_args(b), b.tmask, **b.tkw, **units)
    close(
        got, ref.centered_cov(b.np("advantages"), b.np("logprob"), b.mask, **b.kw, **units), dtype
    )


CLIP_COV = {"ratio": 0.2, "lb": 0.05, "ub": 5.0}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("units", [{}, {"micro_batch": 3}, {"micro_batch": [2, 0, 2, 1, 1, 0, 2]}])
def test_clip_cov_select_seed_and_perm_match_reference(layout, units):
    for seed in (20, 21, 22):
        b = Batch(seed, layout, torch.float32, width=14)
        args_np = (b.np("advantages"), b.np("logprob"), b.np("old_logprob"), b.mask)
        args_t = (b.t("advantages"), b.t("logprob"), b.t("old_logprob"), b.tmask)
        units_t = {k: torch.as_tensor(v) if isinstance(v, list) else v for k, v in units.items()}
        got, cand = et.clip_cov_select(
            *args_t, seed=seed, return_candidates=True, **CLIP_COV, **b.tkw, **units_t
        )
        want, want_cand = ref.clip_cov_select(
            *args_np, seed=seed, return_candidates=True, **CLIP_COV, **b.kw, **units
        )
        same(cand, want_cand)
        same(got, want)  # same seed → same mask on every face
        assert want.sum() > 0
        # an injected permutation per unit
        unit_ids = (
            sorted(set(units.get("micro_batch", [0])))
            if isinstance(units.get("micro_batch"), list)
            else None
        )
        if unit_ids is None:
            n_units = 1 if "micro_batch" not in units else math.ceil(b.rows / units["micro_batch"])
            row_unit = (
                np.zeros(b.rows, int) if n_units == 1 else np.arange(b.rows) // units["micro_batch"]
            )
        else:
            row_unit = np.searchsorted(unit_ids, units["micro_batch"])
            n_units = len(unit_ids)
        counts = [int(want_cand[row_unit[b.row] == u].sum()) for u in range(n_units)]
        rng = np.random.default_rng(seed + 100)
        perms = [rng.permutation(c) for c in counts]
        got = et.clip_cov_select(
            *args_t, perm=[torch.as_tensor(p) for p in perms], **CLIP_COV, **b.tkw, **units_t
        )
        same(got, ref.clip_cov_select(*args_np, perm=perms, **CLIP_COV, **b.kw, **units))


def test_clip_cov_select_generator_draws_torch_randperm():
    b = Batch(23, "padded", torch.float32, width=14)
    args_np = (b.np("advantages"), b.np("logprob"), b.np("old_logprob"), b.mask)
    args_t = (b.t("advantages"), b.t("logprob"), b.t("old_logprob"), b.tmask)
    got = et.clip_cov_select(
        *args_t, generator=torch.Generator().manual_seed(5), micro_batch=4, **CLIP_COV
    )
    _, cand = ref.clip_cov_select(
        *args_np, seed=0, return_candidates=True, micro_batch=4, **CLIP_COV
    )
    draw = torch.Generator().manual_seed(5)
    perms = [
        torch.randperm(int(cand[:4].sum()), generator=draw),
        torch.randperm(int(cand[4:].sum()), generator=draw),
    ]
    assert all(len(p) for p in perms)
    same(
        got,
        ref.clip_cov_select(*args_np, perm=[p.numpy() for p in perms], micro_batch=4, **CLIP_COV),
    )
    # invariants: quota, valid, unclipped, lb < c < ub
    assert got.sum() == sum(
        min(max(1, math.floor(0.2 * b.mask[r].sum())), int(cand[r].sum()))
        for r in (slice(0, 4), slice(4, 7))
    )
    assert not (got & ~torch.as_tensor(cand)).any()
    with pytest.raises(ValueError, match="seed"):
        et.clip_cov_select(*args_t)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [{}, {"clip_low": 0.1, "clip_high": 0.28}])
def test_clip_cov_loss(layout, dtype, kw):
    b = Batch(24, layout, dtype)
    sel = ref.clip_cov_select(
        b.np("advantages"), b.np("logprob"), b.np("old_logprob"), b.mask, seed=1, **CLIP_COV, **b.kw
    )
    assert sel.any()
    lp = b.t("logprob", grad=True)
    got = et.clip_cov_loss(
        lp, b.t("old_logprob"), b.t("advantages"), b.tmask, torch.as_tensor(sel), **b.tkw, **kw
    )
    want = ref.clip_cov_loss(
        b.np("logprob"), b.np("old_logprob"), b.np("advantages"), b.mask, sel, **b.kw, **kw
    )
    check_ppo_terms(got, want, dtype)
    (g,) = torch.autograd.grad(got.loss.sum(), lp)
    assert torch.all(g[torch.as_tensor(sel)] == 0) and torch.all(g[~b.tmask] == 0)
    if dtype == torch.float64:
        old = torch.tensor(np.where(b.mask, b.fields["old_logprob"], 0.0))
        adv = torch.tensor(np.where(b.mask, b.fields["advantages"], 0.0))
        keep = b.tmask & ~torch.as_tensor(sel)
        x0 = torch.tensor(np.where(b.mask, b.fields["logprob"], 0.0), requires_grad=True)
        want_g = grad_of(
            lambda x: ppo_formula(x, old, adv, keep, log_ratio_clamp=None, **kw).sum(), x0
        )
        torch.testing.assert_close(g, want_g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("units", [{}, {"micro_batch": 3}, {"micro_batch": [1, 1, 0, 0, 1, 5, 5]}])
@pytest.mark.parametrize("ratio", [2e-4, 0.1, 0.35])
def test_kl_cov_select(layout, units, ratio):
    b = Batch(25, layout, torch.float64, width=13)
    units_t = {k: torch.as_tensor(v) if isinstance(v, list) else v for k, v in units.items()}
    got = et.kl_cov_select(*cov_args(b), b.tmask, ratio=ratio, **b.tkw, **units_t)
    same(
        got,
        ref.kl_cov_select(
            b.np("advantages"), b.np("logprob"), b.mask, ratio=ratio, **b.kw, **units
        ),
    )
    # ties (a constant advantage per row makes many equal covariances): lower index first
    adv = torch.ones(4, 5, dtype=torch.float64)
    adv[0] = 3.0
    lp = torch.zeros(4, 5, dtype=torch.float64)
    lp[0] = 1.0
    mask = torch.ones(4, 5, dtype=torch.bool)
    got = et.kl_cov_select(adv, lp, mask, ratio=0.15)
    same(got, ref.kl_cov_select(adv.numpy(), lp.numpy(), mask.numpy(), ratio=0.15))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_cov_loss(layout, dtype):
    b = Batch(26, layout, dtype)
    sel = ref.kl_cov_select(b.np("advantages"), b.np("logprob"), b.mask, ratio=0.2, **b.kw)
    lp = b.t("logprob", grad=True)
    got = et.kl_cov_loss(
        lp,
        b.t("old_logprob"),
        b.t("advantages"),
        b.tmask,
        torch.as_tensor(sel),
        kl_coef=0.5,
        **b.tkw,
    )
    want = ref.kl_cov_loss(
        b.np("logprob"), b.np("old_logprob"), b.np("advantages"), b.mask, sel, kl_coef=0.5, **b.kw
    )
    check_ppo_terms(got, want, dtype)
    (g,) = torch.autograd.grad(got.loss.sum(), lp)
    assert torch.all(g[~b.tmask] == 0)
    if dtype == torch.float64:
        old = torch.tensor(np.where(b.mask, b.fields["old_logprob"], 0.0))
        adv = torch.tensor(np.where(b.mask, b.fields["advantages"], 0.0))
        x0 = torch.tensor(np.where(b.mask, b.fields["logprob"], 0.0), requires_grad=True)
        s = torch.as_tensor(sel, dtype=torch.float64)
        want_g = grad_of(
            lambda x: (-adv * torch.exp(x - old) + 0.5 * (x - old).abs() * s).sum(), x0
        )
        torch.testing.assert_close(g, torch.where(b.tmask, want_g, 0.0), rtol=1e-12, atol=1e-15)


def test_kl_cov_on_policy_extra_gradient_is_exactly_zero():
    b = Batch(27, "padded", torch.float64)
    lp = b.t("logprob", grad=True)
    adv, mask = b.t("advantages"), b.tmask
    sel = et.kl_cov_select(adv, lp.detach(), mask, ratio=0.3)
    assert sel.any()
    with_kl = grad_of(lambda x: et.kl_cov_loss(x, x.detach(), adv, mask, sel).loss.sum(), lp)
    plain = grad_of(
        lambda x: et.kl_cov_loss(x, x.detach(), adv, mask, torch.zeros_like(sel)).loss.sum(), lp
    )
    assert torch.equal(with_kl, plain)
    assert et.kl_cov_loss(lp, lp.detach(), adv, mask, sel).ppo_kl.item() == 0.0


# ---------------------------------------------------------------------------------------------
# §6–§7 STEER, CANON
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"lam_min": 0.7, "micro_batch": 3},
        {"mode": "linear"},
        {"mode": "linear", "lam_min": 0.5, "lam_max": 1.5, "micro_batch": 2},
    ],
)
def test_steer_weights(layout, dtype, kw):
    b = Batch(28, layout, dtype)
    names = ("advantages", "logprob", "old_logprob", "entropy")
    got = et.steer_weights(*(b.t(n) for n in names), b.tmask, **b.tkw, **kw)
    want = ref.steer_weights(*(b.np(n) for n in names), b.mask, **b.kw, **kw)
    close(got, want, dtype)
    assert not got.requires_grad


@pytest.mark.parametrize("variant", ["entropy", "length"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_canon_advantages(variant, dtype):
    rng = np.random.default_rng(29)
    rewards = rng.integers(0, 2, 23).astype(NP_DTYPE[dtype])
    metric = np.round(rng.gamma(1.0, 1.0, 23), 1)  # ties in the metric
    group = np.repeat([3, 0, 7, 1, 9], [6, 5, 8, 3, 1])
    for kw in ({}, {"lam": 0.5}, {"lam": 0.3, "alpha": 1.2, "beta": 0.1, "l_norm": 8.0}):
        got = et.canon_advantages(
            torch.tensor(rewards),
            torch.tensor(metric),
            torch.as_tensor(group),
            variant=variant,
            **kw,
        )
        close(got, ref.canon_advantages(rewards, metric, group, variant=variant, **kw), dtype)


# ---------------------------------------------------------------------------------------------
# §8 ARES windows, §9 PEAR, §10 EPO
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window,start", [(1, 0), (4, 0), (3, 1)])
def test_ares_windows_and_hwe(layout, dtype, window, start):
    b = Batch(30, layout, dtype, holes=0.1, width=14)
    kw = {"window": window, "start": start, **b.kw}
    tkw = {"window": window, "start": start, **b.tkw}
    mean, defined = et.window_entropy(b.t("entropy"), b.tmask, **tkw)
    want_mean, want_defined = ref.window_entropy(b.np("entropy"), b.mask, **kw)
    close(mean, want_mean, dtype)
    same(defined, want_defined)
    for triggers in ({1, 3}, [], torch.tensor([0, 2, 5])):
        ref_triggers = triggers.numpy() if isinstance(triggers, torch.Tensor) else triggers
        count, cost, is_hwe = et.hwe_count(
            b.t("entropy"), torch.as_tensor(b.token_ids), b.tmask, triggers, threshold=0.6, **tkw
        )
        w_count, w_cost, w_hwe = ref.hwe_count(
            b.np("entropy"), b.token_ids, b.mask, ref_triggers, threshold=0.6, **kw
        )
        same(count, w_count)
        close(cost, w_cost, dtype)
        same(is_hwe, w_hwe)
    for extra in ({}, {"q": 0.5, "prev": 0.9, "momentum": 0.9}):
        got = et.hwe_threshold(b.t("entropy"), b.tmask, **tkw, **extra)
        close(got, ref.hwe_threshold(b.np("entropy"), b.mask, **kw, **extra), torch.float64)
    nothing = et.hwe_threshold(b.t("entropy"), torch.zeros_like(b.tmask), prev=0.25, **tkw)
    assert nothing.item() == 0.25


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pear(layout, dtype):
    b = Batch(31, layout, dtype, width=12)
    ids = torch.as_tensor(b.token_ids)
    k = et.phase_boundary(ids, b.tmask, 4, **b.tkw)
    want_k = ref.phase_boundary(b.token_ids, b.mask, 4, **b.kw)
    same(k, want_k)
    assert (want_k == -1).any() and (want_k >= 0).any()
    got = et.phase_entropy(b.t("entropy"), b.tmask, k, **b.tkw)
    want = ref.phase_entropy(b.np("entropy"), b.mask, want_k, **b.kw)
    close(got[0], want[0], dtype)
    close(got[1], want[1], dtype)
    same(got[2], want[2])
    same(got[3], want[3])
    correct = np.arange(b.rows) % 2 == 0
    for kw in ({}, {"alpha": 0.5, "score": 0.8, "format_score": -0.1}):
        r = et.pear_reward(torch.as_tensor(correct), got[0], got[1], **kw)
        close(
            r,
            ref.pear_reward(
                correct, want[0].astype(NP_DTYPE[dtype]), want[1].astype(NP_DTYPE[dtype]), **kw
            ),
            dtype,
        )


def epo_formula(h, mask, bar, kl, kr, power, seq):
    x = h
    if seq:
        x = (
            torch.where(mask, h, 0.0).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
        ).expand_as(h)
    p = torch.relu(kl * bar - x) ** power + torch.relu(x - kr * bar) ** power
    return torch.where(mask, p, 0.0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_epo(layout, dtype):
    b = Batch(32, layout, dtype)
    steps = np.array([0, 2, 1, 5, 2, 0, 1])
    sums, counts = et.step_entropy_means(
        b.t("entropy"), b.tmask, torch.as_tensor(steps), max_steps=4, **b.tkw
    )
    w_sums, w_counts = ref.step_entropy_means(b.np("entropy"), b.mask, steps, max_steps=4, **b.kw)
    close(sums, w_sums, torch.float64)
    same(counts, w_counts)
    history = np.array([0.8, 0.6, 1.1, np.nan, 0.5, 0.7])
    history[3] = np.nan if not b.mask[b.row == 6].any() else 0.9  # NaN only at unused steps
    steps = np.array([0, 2, 1, 5, 2, 4, 1])
    for form in ("released", "relu"):
        for gran in ("token", "seq"):
            for power in (1, 2, 0.5):
                kw = {
                    "form": form,
                    "granularity": gran,
                    "power": power,
                    "kappa_low": 0.7,
                    "kappa_high": 1.3,
                    "rho_out": 0.3,
                }
                got = et.epo_band_penalty(
                    b.t("entropy"),
                    b.tmask,
                    torch.as_tensor(steps),
                    torch.as_tensor(history),
                    **b.tkw,
                    **kw,
                )
                want = ref.epo_band_penalty(b.np("entropy"), b.mask, steps, history, **b.kw, **kw)
                close(got, want, dtype)
    epochs = np.array([0, 10, 74.9, 75, 76, 150, 300])
    close(
        et.epo_phase_weight(torch.as_tensor(epochs)),
        ref.epo_phase_weight(epochs),
        torch.float64,
        rtol=1e-12,
    )
    assert et.epo_phase_weight(3).ndim == 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_epo_gradients(layout):
    b = Batch(33, layout, torch.float64)
    steps = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    history = torch.tensor([0.5, 0.9, 0.7], dtype=torch.float64)
    h = b.t("entropy", grad=True)
    released = et.epo_band_penalty(h, b.tmask, steps, history, **b.tkw)
    assert not released.requires_grad  # gradient-free, as released: contributes exactly 0
    entropy_term = grad_of(lambda x: et.agg_loss(x, b.tmask, **b.tkw), h)
    both = grad_of(
        lambda x: (
            et.agg_loss(x, b.tmask, **b.tkw)
            - et.agg_loss(
                et.epo_band_penalty(x, b.tmask, steps, history, **b.tkw), b.tmask, **b.tkw
            )
        ),
        h,
    )
    assert torch.equal(entropy_term, both)
    if layout == "padded":
        bar = history[steps][:, None]
        clean = torch.tensor(np.where(b.mask, b.fields["entropy"], 0.0), requires_grad=True)
        for seq in (False, True):
            for power in (1, 2, 1.5):
                kw = {"form": "relu", "power": power, "granularity": "seq" if seq else "token"}
                got = grad_of(
                    lambda x, kw=kw: et.epo_band_penalty(x, b.tmask, steps, history, **kw).sum(),
                    h,
                )
                want = grad_of(
                    lambda x, p=power, s=seq: epo_formula(x, b.tmask, bar, 0.5, 1.5, p, s).sum(),
                    clean,
                )
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
                assert torch.all(got[~b.tmask] == 0)
                assert got.abs().sum() > 0
    x = torch.tensor(np.where(b.mask, b.fields["entropy"], 0.0), requires_grad=True)
    cu = b.tkw.get("cu_seqlens")
    assert gradcheck(
        lambda v: et.epo_band_penalty(
            v, b.tmask, steps, history, form="relu", power=2, cu_seqlens=cu
        ),
        (x,),
    )


# ---------------------------------------------------------------------------------------------
# §11 SPEAR, §12 AEPO
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_spear(dtype):
    rng = np.random.default_rng(34)
    rewards = rng.normal(0.5, 0.5, 9).astype(NP_DTYPE[dtype])
    means = rng.random(10)
    stds = rng.random(7)
    for kw, tkw in (
        ({}, {}),
        ({"baseline_stds": stds}, {"baseline_stds": torch.tensor(stds)}),
        (
            {"decay": 0.9, "old_advantages": means[:9]},
            {"decay": 0.9, "old_advantages": torch.tensor(means[:9])},
        ),
    ):
        got, keep = et.spear_recalibrate(
            torch.tensor(rewards), torch.tensor(means[: 10 if kw else 9]), **tkw
        )
        want, want_keep = ref.spear_recalibrate(rewards, means[: 10 if kw else 9], **kw)
        close(got, want, dtype)
        same(keep, want_keep)
    steps = np.array([0, 1, 50, 199, 200, 201, 1000])
    turns = np.array([0, 1, 3, 12, 5, 7, 2])
    for kw in ({}, {"replay_coef": 0.5, "replay_period": 100, "tool_period": 50}):
        for t in (None, turns):
            got = et.spear_schedules(
                torch.as_tensor(steps), num_turns=None if t is None else torch.as_tensor(t), **kw
            )
            want = ref.spear_schedules(steps, num_turns=t, **kw)
            close(got[0], want[0], torch.float64, rtol=1e-12, atol=1e-15)
            close(got[1], want[1], torch.float64, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_aepo(layout):
    b = Batch(35, layout, torch.float32)
    got = et.nll_entropy_estimate(b.t("logprob"), b.tmask, **b.tkw)
    close(got, ref.nll_entropy_estimate(b.np("logprob"), b.mask, **b.kw), torch.float64)
    for prev in (None, 0.3, 0.5, 0.7, torch.tensor(0.9)):
        p = None if prev is None else float(prev)
        assert et.aepo_temperature(prev, target=0.5) == ref.aepo_temperature(p, target=0.5)
        adv = np.array([0.5, -1.0, 0.01, 0.3, 0.06, 2.0, 0.05, 0.9])
        for limit in (0, 3, 60):
            idx, ones = et.aepo_select(torch.tensor(adv), prev_entropy=prev, max_samples=limit)
            w_idx, w_ones = ref.aepo_select(adv, prev_entropy=p, max_samples=limit)
            same(idx, w_idx)
            close(ones, w_ones, torch.float64)


# ---------------------------------------------------------------------------------------------
# §13 SIREN: nucleus_entropy, peak_entropy_mask, siren_regularizer
# ---------------------------------------------------------------------------------------------


def nucleus_brute_force(logits, top_p, top_k, temperature):
    """§13 by a full float64 sort per row."""
    out = []
    for row in logits.double().reshape(-1, logits.shape[-1]):
        p = torch.softmax(row / temperature, dim=0)
        order = sorted(range(row.numel()), key=lambda i: (-row[i].item(), i))[:top_k]
        ps = p[order]
        c = torch.cumsum(ps, 0)
        reached = torch.nonzero(c >= top_p)
        cut = int(reached[0]) if reached.numel() else len(order)
        q = ps[:cut] / (ps[:cut].sum() + 1e-12)
        out.append(-(q * torch.log(q + 1e-12)).sum().item())
    return np.array(out).reshape(logits.shape[:-1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "top_p,top_k,temperature",
    [(0.8, 10000, 1.0), (0.5, 7, 0.7), (0.95, 3, 1.3), (0.99, 50, 1.0), (0.0, 10, 1.0)],
)
def test_nucleus_entropy_matches_reference(dtype, top_p, top_k, temperature):
    gen = torch.Generator().manual_seed(36)
    logits = (torch.randn(3, 5, 40, generator=gen, dtype=torch.float64) * 2.0).to(dtype)
    logits[0, 0, 5:] = -math.inf
    logits[1, 1, :] = logits[1, 1, 0]  # all tied
    logits[2, 2, 3] = 30.0  # a peaked row: empty nucleus → 0
    got = et.nucleus_entropy(logits, top_p=top_p, top_k=top_k, temperature=temperature)
    want = ref_token.nucleus_entropy(
        logits.double().numpy(), top_p=top_p, top_k=top_k, temperature=temperature
    )
    out = torch.float64 if dtype == torch.float64 else torch.float32
    close(
        got,
        want,
        out,
        rtol=1e-9 if dtype == torch.float64 else 1e-5,
        atol=1e-9 if dtype == torch.float64 else 1e-5,
    )
    np.testing.assert_allclose(
        want, nucleus_brute_force(logits, top_p, top_k, temperature), rtol=1e-9, atol=1e-12
    )
    assert got[2, 2].item() == 0.0
    temps = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    got = et.nucleus_entropy(logits, top_p=top_p, top_k=top_k, temperature=temps)
    want = ref_token.nucleus_entropy(
        logits.double().numpy(), top_p=top_p, top_k=top_k, temperature=temps.numpy()
    )
    close(
        got,
        want,
        out,
        rtol=1e-9 if dtype == torch.float64 else 1e-5,
        atol=1e-9 if dtype == torch.float64 else 1e-5,
    )


def test_nucleus_entropy_gradients():
    gen = torch.Generator().manual_seed(37)
    logits = torch.randn(4, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    assert gradcheck(
        lambda z: et.nucleus_entropy(z, top_p=0.7, top_k=8, temperature=0.9), (logits,)
    )
    masked = logits.detach().clone()
    masked[:, 6:] = -math.inf
    masked.requires_grad_(True)
    g = grad_of(lambda z: et.nucleus_entropy(z, top_p=0.9).sum(), masked)
    assert torch.isfinite(g).all() and torch.all(g[:, 6:] == 0)
    with pytest.raises(ValueError, match="logits"):
        et.nucleus_entropy(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="logits"):
        et.nucleus_entropy(torch.tensor([[-math.inf, -math.inf]]))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("q", [0.0, 0.5, 0.8, 1.0])
def test_peak_entropy_mask(layout, q):
    b = Batch(38, layout, torch.float32, width=15)
    b.fields["entropy"] = np.round(b.fields["entropy"], 1)  # ties
    got = et.peak_entropy_mask(b.t("entropy"), b.tmask, q=q, **b.tkw)
    same(got, ref.peak_entropy_mask(b.np("entropy"), b.mask, q=q, **b.kw))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_siren_regularizer(layout, dtype):
    b = Batch(39, layout, dtype)
    sel = ref.peak_entropy_mask(b.np("entropy"), b.mask, **b.kw)
    sel_t = torch.as_tensor(sel)
    anchor = et.siren_regularizer(b.t("entropy"), sel_t, **b.tkw)
    close(anchor, ref.siren_regularizer(b.np("entropy"), sel, **b.kw), torch.float64)
    assert anchor.ndim == 0
    h = b.t("entropy", grad=True)
    for kw in (
        {"anchor": anchor.detach()},
        {"anchor": 0.3, "coef": 0.1},
        {"anchor": 0.3, "micro_batch": 3},
    ):
        got = et.siren_regularizer(h, sel_t, **b.tkw, **kw)
        want = ref.siren_regularizer(
            b.np("entropy"),
            sel,
            **b.kw,
            **{k: float(v) if isinstance(v, torch.Tensor) else v for k, v in kw.items()},
        )
        close(got, want, dtype, atol=1e-9 if dtype == torch.float64 else 1e-7)
        (g,) = torch.autograd.grad(got.sum(), h)
        assert torch.all(g[~sel_t] == 0)
        if "micro_batch" not in kw and "coef" not in kw:
            assert got.item() == 0 and torch.all(g == 0)  # zero at the anchor
    if layout == "padded" and dtype == torch.float64:
        x = torch.tensor(np.where(sel, b.fields["entropy"], 0.0), requires_grad=True)
        assert gradcheck(lambda v: et.siren_regularizer(v, sel_t, anchor=0.2, micro_batch=2), (x,))

        # the formula: coef (Ē − anchor)², Ē the mean of row means (0 for rows without selection)
        def formula(v):
            n = sel_t.sum(1)
            means = torch.where(n > 0, torch.where(sel_t, v, 0.0).sum(1) / n.clamp(min=1), 0.0)
            return 0.005 * (means.mean() - 0.2) ** 2

        torch.testing.assert_close(
            grad_of(lambda v: et.siren_regularizer(v, sel_t, anchor=0.2), x),
            grad_of(formula, x),
            rtol=1e-12,
            atol=1e-18,
        )


# ---------------------------------------------------------------------------------------------
# §14–§16
# ---------------------------------------------------------------------------------------------


def test_answer_entropy_and_support():
    rng = np.random.default_rng(40)
    codes = rng.integers(0, 4, 30)
    group = rng.integers(-3, 5, 30)
    groups, h = et.answer_entropy(torch.as_tensor(codes), torch.as_tensor(group))
    w_groups, w_h = ref.answer_entropy(codes, group)
    same(groups, w_groups)
    close(h, w_h, torch.float64, rtol=1e-12, atol=0)
    _, single = et.answer_entropy(torch.tensor([3, 3]), torch.tensor([0, 0]))
    assert single.item() == 0.0 and not math.copysign(1, single.item()) < 0
    k = np.array([1, 2, 10, 100])
    close(
        et.support_epsilon(torch.as_tensor(k), confidence=0.9),
        ref.support_epsilon(k, confidence=0.9),
        torch.float64,
        rtol=1e-12,
    )
    for base, rl in (
        (rng.random(25) < 0.5, rng.random(25) < 0.6),
        (np.zeros(4, bool), np.zeros(4, bool)),
        (np.ones(3, bool), np.zeros(3, bool)),
    ):
        got = et.support_metrics(torch.as_tensor(base), torch.as_tensor(rl))
        want = ref.support_metrics(base, rl)
        assert set(got) == set(want)
        for key, value in want.items():
            if isinstance(value, int):
                assert int(got[key]) == value
            else:
                close(got[key], value, torch.float64, rtol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_detection(layout, dtype):
    b = Batch(41, layout, dtype)
    stat, n = et.detection_statistic(b.t("logprob"), b.t("entropy"), b.tmask, **b.tkw)
    w_stat, w_n = ref.detection_statistic(b.np("logprob"), b.np("entropy"), b.mask, **b.kw)
    close(stat, w_stat, dtype)
    same(n, w_n)
    counts = np.array([0, 1, 10, 1000])
    close(
        et.detection_threshold(torch.as_tensor(counts), alpha=0.1, bound=2.0),
        ref.detection_threshold(counts, alpha=0.1, bound=2.0),
        torch.float64,
        rtol=1e-12,
    )


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_entropy_reduction(reduce):
    rng = np.random.default_rng(42)
    values = rng.gamma(1.0, 1.0, (3, 2, 6, 5))
    mask = rng.random((3, 2, 1, 5)) < 0.8
    mask[0, 0] = False  # no valid answer token: NaN means
    steps = rng.random((3, 2, 6)) < 0.75
    steps[1, 1] = False
    steps[2, 0] = [False, False, True, False, False, False]
    values[~np.broadcast_to(mask, values.shape)] = np.nan
    for sm in (None, steps):
        got = et.entropy_reduction(
            torch.tensor(values),
            torch.as_tensor(mask),
            step_mask=None if sm is None else torch.as_tensor(sm),
            reduce=reduce,
        )
        want = ref.entropy_reduction(values, mask, step_mask=sm, reduce=reduce)
        for key, value in want.items():
            close(got[key], value, torch.float64)


# ---------------------------------------------------------------------------------------------
# Layouts, padding and errors (§17.1)
# ---------------------------------------------------------------------------------------------


def packed_from(b):
    """The packed form of a padded batch: the same rows and values."""
    keep = np.arange(b.shape[1])[None, :] < b.lengths[:, None]
    cu = torch.as_tensor(np.concatenate([[0], np.cumsum(b.lengths)]))
    return (
        (lambda name: torch.tensor(b.fields[name][keep], dtype=b.dtype)),
        torch.as_tensor(b.mask[keep]),
        cu,
    )


def test_padded_and_packed_agree_and_padding_never_matters():
    b = Batch(43, "padded", torch.float64)
    t_packed, m_packed, cu = packed_from(b)
    calls = [
        lambda t, m, **kw: et.agg_loss(t("loss"), m, "seq-mean-token-mean", **kw),
        lambda t, m, **kw: (
            et.ppo_loss(t("logprob"), t("old_logprob"), t("advantages"), m, clip_c=3.0, **kw).loss
        ),
        lambda t, m, **kw: et.high_entropy_mask(t("entropy"), m, **kw),
        lambda t, m, **kw: et.centered_cov(t("advantages"), t("logprob"), m, micro_batch=2, **kw),
        lambda t, m, **kw: et.window_entropy(t("entropy"), m, **kw)[0],
        lambda t, m, **kw: et.steer_weights(
            t("advantages"), t("logprob"), t("old_logprob"), t("entropy"), m, **kw
        ),
    ]
    keep = torch.as_tensor(np.arange(b.shape[1])[None, :] < b.lengths[:, None])
    for call in calls:
        padded = call(b.t, b.tmask)
        packed = call(t_packed, m_packed, cu_seqlens=cu)
        if padded.ndim == 2:
            torch.testing.assert_close(padded[keep], packed, rtol=1e-12, atol=1e-15)
            assert torch.all(padded[~b.tmask] == 0)
        else:
            torch.testing.assert_close(padded, packed, rtol=1e-12, atol=1e-15)
        for fill in (0.0, 1e30, -7.0):
            other = Batch(43, "padded", torch.float64, pad=fill)
            torch.testing.assert_close(
                call(other.t, other.tmask), padded, rtol=0, atol=0, equal_nan=True
            )
    # a 0/1 float mask and a packed call without mask are accepted
    torch.testing.assert_close(
        et.agg_loss(b.t("loss"), b.tmask.double()), et.agg_loss(b.t("loss"), b.tmask)
    )
    full = et.agg_loss(t_packed("loss").nan_to_num(), None, cu_seqlens=cu)
    assert torch.isfinite(full)


def test_inputs_are_not_modified_and_non_contiguous_accepted():
    b = Batch(44, "padded", torch.float32)
    h = b.t("entropy")
    before = h.clone()
    wide = torch.stack([h, h], dim=-1)[..., 0]  # a non-contiguous view with h's values
    assert not wide.is_contiguous()
    same(et.high_entropy_mask(wide, b.tmask), et.high_entropy_mask(h, b.tmask))
    torch.testing.assert_close(
        et.steer_weights(wide, wide, wide, wide, b.tmask), et.steer_weights(h, h, h, h, b.tmask)
    )
    assert torch.equal(h.nan_to_num(-1), before.nan_to_num(-1))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: et.agg_loss(np.zeros((2, 3)), np.ones((2, 3))), TypeError, "loss"),
        (
            lambda: et.agg_loss(torch.zeros(2, 3, dtype=torch.int64), torch.ones(2, 3)),
            TypeError,
            "loss",
        ),
        (lambda: et.agg_loss(torch.zeros(2, 3), torch.ones(2, 4)), ValueError, "mask"),
        (lambda: et.agg_loss(torch.zeros(2, 3), torch.full((2, 3), 2)), ValueError, "mask"),
        (lambda: et.agg_loss(torch.zeros(2, 3), None, mode="nope"), ValueError, "mode"),
        (
            lambda: et.agg_loss(torch.zeros(5), None, cu_seqlens=torch.tensor([0, 3, 2, 5])),
            ValueError,
            "cu_seqlens",
        ),
        (
            lambda: et.agg_loss(torch.zeros(5), None, cu_seqlens=torch.tensor([0, 3, 4])),
            ValueError,
            "cu_seqlens",
        ),
        (
            lambda: et.agg_loss(
                torch.zeros(5), None, "seq-mean-token-sum-norm", cu_seqlens=torch.tensor([0, 5])
            ),
            ValueError,
            "loss_scale_factor",
        ),
        (lambda: et.agg_loss(torch.tensor([[math.nan]]), torch.ones(1, 1)), ValueError, "NaN"),
        (
            lambda: et.ppo_loss(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, 3), None),
            ValueError,
            "old_logprob",
        ),
        (
            lambda: et.ppo_loss(
                torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), None, clip_c=1.0
            ),
            ValueError,
            "clip_c",
        ),
        (lambda: et.high_entropy_mask(torch.zeros(2, 3), None, rho=1.5), ValueError, "rho"),
        (lambda: et.high_entropy_mask(torch.zeros(2, 3), None, method="x"), ValueError, "method"),
        (lambda: et.high_entropy_mask(torch.zeros(3), None), ValueError, "entropy"),
        (
            lambda: et.kl_cov_select(torch.zeros(2, 3), torch.zeros(2, 3), None, scope="x"),
            ValueError,
            "scope",
        ),
        (
            lambda: et.clip_cov_select(
                torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), None, perm=[[0]]
            ),
            ValueError,
            "perm",
        ),
        (
            lambda: et.group_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.int64)),
            ValueError,
            "group",
        ),
        (lambda: et.group_advantages(torch.zeros(3), torch.zeros(3)), TypeError, "group"),
        (
            lambda: et.epo_band_penalty(
                torch.zeros(2, 3), None, torch.tensor([0, 3]), torch.zeros(3)
            ),
            ValueError,
            "step_index",
        ),
        (
            lambda: et.siren_regularizer(torch.zeros(2, 3), torch.ones(2, 3), anchor=[1.0, 2.0]),
            ValueError,
            "anchor",
        ),
        (
            lambda: et.steer_weights(*[torch.zeros(2, 3)] * 4, None, lam_min=0.0),
            ValueError,
            "lam_min",
        ),
        (lambda: et.nucleus_entropy(torch.zeros(2, 3), top_p=2.0), ValueError, "top_p"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
