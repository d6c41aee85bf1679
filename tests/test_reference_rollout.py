"""The float64 reference of ``rollout.md``: layouts (§0.1, §17.1), errors (``conventions.md``
"Inputs and errors"), loss aggregation (§1, §17.3), PPO/GRPO pieces (§2, §17.6) and the
forking-token mask (§3, §17.4).

The other ``test_reference_rollout_*`` files cover §5–§7 (covariance selection, STEER, CANON) and
§4, §8–§16 (summaries, windows, phases, EPO, SPEAR, AEPO, SIREN, evaluation statistics).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entcore.reference import rollout as ref
from entcore.reference import token as ref_token
from helpers import require_torch

seeds = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------------------------------
# Buffers in both layouts (§0.1)
# ---------------------------------------------------------------------------------------------


class Buffer:
    """A random rollout buffer, padded ``(B, L)``, with its packed twin.

    Row ``b`` of the packed layout is the padded row's first ``s_b`` columns, ``s_b`` random in
    ``[last valid position + 1, L]``, so positions agree (§0.1) and the packed layout carries
    invalid slots too (holes and trailing tokens with mask 0).
    """

    FLOATS = ("entropy", "logprob", "old_logprob", "advantages")

    def __init__(self, seed: int, n_rows: int = 5, width: int = 9, dtype=np.float32):
        rng = np.random.default_rng(seed)
        self.rng = rng
        lengths = rng.integers(0, width + 1, size=n_rows)
        self.mask = (np.arange(width)[None, :] < lengths[:, None]) & (
            rng.random((n_rows, width)) < 0.85
        )
        self.entropy = rng.gamma(1.0, 0.6, (n_rows, width)).astype(dtype)
        self.logprob = (-rng.gamma(1.0, 1.0, (n_rows, width))).astype(dtype)
        self.old_logprob = (self.logprob + rng.normal(0.0, 0.3, (n_rows, width))).astype(dtype)
        self.advantages = np.repeat(rng.normal(size=(n_rows, 1)), width, axis=1).astype(dtype)
        self.token_ids = rng.integers(0, 6, (n_rows, width))
        last = np.where(self.mask, np.arange(width), -1).max(axis=1)
        self.slots = np.array([rng.integers(last_b + 1, width + 1) for last_b in last])
        self.cu_seqlens = np.concatenate([[0], np.cumsum(self.slots)]).astype(np.int64)

    def padded(self, garbage: bool = False) -> dict:
        """Padded fields; with ``garbage`` every invalid position holds NaN (floats) or a huge
        id (token ids): values there must never be read."""
        out = {name: getattr(self, name).copy() for name in self.FLOATS}
        out["token_ids"] = self.token_ids.copy()
        if garbage:
            for name in self.FLOATS:
                out[name][~self.mask] = np.nan
            out["token_ids"][~self.mask] = 10**9
        out["mask"] = self.mask.copy()
        out["cu_seqlens"] = None
        return out

    def packed(self) -> dict:
        def pack(x):
            return np.concatenate([x[b, : self.slots[b]] for b in range(x.shape[0])])

        out = {name: pack(getattr(self, name)) for name in self.FLOATS}
        out["token_ids"] = pack(self.token_ids)
        out["mask"] = pack(self.mask)
        out["cu_seqlens"] = self.cu_seqlens
        return out

    def unpack(self, x: np.ndarray) -> np.ndarray:
        """A packed per-token output in the padded layout (zeros beyond each row's slots)."""
        out = np.zeros(self.mask.shape, dtype=x.dtype)
        for b in range(self.mask.shape[0]):
            out[b, : self.slots[b]] = x[self.cu_seqlens[b] : self.cu_seqlens[b + 1]]
        return out


def _agg(mode, **kw):
    return lambda d: ref.agg_loss(d["logprob"], d["mask"], mode, cu_seqlens=d["cu_seqlens"], **kw)


#: Every token-array function: name → (call on a field dict, which outputs are per-token).
CASES = {
    **{
        f"agg_loss[{mode}]": (_agg(mode, **kw), ())
        for mode, kw in [
            ("token-mean", {"dp_size": 2}),
            ("seq-mean-token-sum", {}),
            ("seq-mean-token-mean", {"global_batch_size": 7}),
            ("seq-mean-token-sum-norm", {"loss_scale_factor": 9}),
            ("grpo", {"grad_accum_steps": 2}),
            ("bnpo", {}),
            ("dr_grpo", {"max_completion_length": 16}),
            ("dapo", {"num_items_in_batch": 40, "num_processes": 2}),
        ]
    },
    "ppo_loss": (
        lambda d: ref.ppo_loss(
            d["logprob"],
            d["old_logprob"],
            d["advantages"],
            d["mask"],
            clip_c=3.0,
            clip_high=0.28,
            cu_seqlens=d["cu_seqlens"],
        ),
        (0, 1, 2),
    ),
    **{
        f"high_entropy_mask[{method}]": (
            lambda d, method=method: ref.high_entropy_mask(
                d["entropy"],
                d["mask"],
                rho=0.3,
                method=method,
                micro_batch=2,
                return_threshold=True,
                cu_seqlens=d["cu_seqlens"],
            ),
            (0,),
        )
        for method in ref.QUANTILE_METHODS
    },
    "forking_token_loss": (
        lambda d: (
            ref.forking_token_loss(
                d["logprob"], d["mask"], d["token_ids"] % 2 == 0, cu_seqlens=d["cu_seqlens"]
            ),
            ref.forking_token_loss(
                d["logprob"],
                d["mask"],
                d["token_ids"] % 2 == 0,
                normalize="all_valid",
                cu_seqlens=d["cu_seqlens"],
            ),
        ),
        (),
    ),
    "entropy_summary": (
        lambda d: tuple(
            ref.entropy_summary(d["entropy"], d["mask"], cu_seqlens=d["cu_seqlens"]).values()
        ),
        (),
    ),
    "entropy_position_curve": (
        lambda d: (
            ref.entropy_position_curve(d["entropy"], d["mask"], cu_seqlens=d["cu_seqlens"])
            + ref.entropy_position_curve(
                d["entropy"], d["mask"], bins=3, cu_seqlens=d["cu_seqlens"]
            )
        ),
        (),
    ),
    "centered_cov": (
        lambda d: (
            ref.centered_cov(
                d["advantages"], d["logprob"], d["mask"], micro_batch=2, cu_seqlens=d["cu_seqlens"]
            ),
        ),
        (0,),
    ),
    "clip_cov_select": (
        lambda d: ref.clip_cov_select(
            d["advantages"],
            d["logprob"],
            d["old_logprob"],
            d["mask"],
            ratio=0.2,
            lb=-0.5,
            ub=2.0,
            seed=3,
            return_candidates=True,
            micro_batch=np.array([1, 0, 1, 0, 1]),
            cu_seqlens=d["cu_seqlens"],
        ),
        (0, 1),
    ),
    "clip_cov_loss": (
        lambda d: ref.clip_cov_loss(
            d["logprob"],
            d["old_logprob"],
            d["advantages"],
            d["mask"],
            d["token_ids"] == 1,
            cu_seqlens=d["cu_seqlens"],
        ),
        (0, 1, 2),
    ),
    "kl_cov_select": (
        lambda d: (
            ref.kl_cov_select(
                d["advantages"], d["logprob"], d["mask"], ratio=0.25, cu_seqlens=d["cu_seqlens"]
            ),
        ),
        (0,),
    ),
    "kl_cov_loss": (
        lambda d: ref.kl_cov_loss(
            d["logprob"],
            d["old_logprob"],
            d["advantages"],
            d["mask"],
            d["token_ids"] == 2,
            cu_seqlens=d["cu_seqlens"],
        ),
        (0, 1, 2),
    ),
    **{
        f"steer_weights[{mode}]": (
            lambda d, mode=mode: (
                ref.steer_weights(
                    d["advantages"],
                    d["logprob"],
                    d["old_logprob"],
                    d["entropy"],
                    d["mask"],
                    mode=mode,
                    micro_batch=2,
                    cu_seqlens=d["cu_seqlens"],
                ),
            ),
            (0,),
        )
        for mode in ("exp", "linear")
    },
    **{
        f"window_entropy[start={start}]": (
            lambda d, start=start: ref.window_entropy(
                d["entropy"], d["mask"], window=3, start=start, cu_seqlens=d["cu_seqlens"]
            ),
            (0, 1),
        )
        for start in (0, 1)
    },
    "hwe_count": (
        lambda d: ref.hwe_count(
            d["entropy"],
            d["token_ids"],
            d["mask"],
            [1, 3],
            threshold=0.5,
            window=2,
            cu_seqlens=d["cu_seqlens"],
        ),
        (2,),
    ),
    "hwe_threshold": (
        lambda d: (
            ref.hwe_threshold(d["entropy"], d["mask"], window=2, q=0.7, cu_seqlens=d["cu_seqlens"]),
        ),
        (),
    ),
    "phase": (
        lambda d: (
            ref.phase_boundary(d["token_ids"], d["mask"], 4, cu_seqlens=d["cu_seqlens"]),
            *ref.phase_entropy(
                d["entropy"],
                d["mask"],
                ref.phase_boundary(d["token_ids"], d["mask"], 4, cu_seqlens=d["cu_seqlens"]),
                cu_seqlens=d["cu_seqlens"],
            ),
        ),
        (),
    ),
    "step_entropy_means": (
        lambda d: ref.step_entropy_means(
            d["entropy"],
            d["mask"],
            np.array([0, 1, 1, 3, 0]),
            max_steps=3,
            cu_seqlens=d["cu_seqlens"],
        ),
        (),
    ),
    **{
        f"epo_band_penalty[{form},{granularity}]": (
            lambda d, form=form, granularity=granularity: (
                ref.epo_band_penalty(
                    d["entropy"],
                    d["mask"],
                    np.array([0, 1, 1, 2, 0]),
                    np.array([0.4, 0.6, 0.9]),
                    form=form,
                    granularity=granularity,
                    power=2,
                    cu_seqlens=d["cu_seqlens"],
                ),
            ),
            (0,),
        )
        for form in ("released", "relu")
        for granularity in ("token", "seq")
    },
    "nll_entropy_estimate": (
        lambda d: (ref.nll_entropy_estimate(d["logprob"], d["mask"], cu_seqlens=d["cu_seqlens"]),),
        (),
    ),
    "peak_entropy_mask+siren": (
        lambda d: (
            ref.peak_entropy_mask(d["entropy"], d["mask"], cu_seqlens=d["cu_seqlens"]),
            ref.siren_regularizer(
                d["entropy"],
                ref.peak_entropy_mask(d["entropy"], d["mask"], cu_seqlens=d["cu_seqlens"]),
                micro_batch=2,
                anchor=0.3,
                cu_seqlens=d["cu_seqlens"],
            ),
        ),
        (0,),
    ),
    "detection_statistic": (
        lambda d: ref.detection_statistic(
            d["logprob"], d["entropy"], d["mask"], cu_seqlens=d["cu_seqlens"]
        ),
        (),
    ),
}


def assert_same(a, b):
    """Bitwise-equal results (NaN equal to NaN), same dtype."""
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    assert a_arr.dtype == b_arr.dtype
    np.testing.assert_array_equal(a_arr, b_arr)


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=30)
@given(seed=seeds)
def test_layouts_agree_and_padding_is_never_read(name, seed):
    """§17.1: padded and packed inputs give identical results; NaN (or any value) at invalid
    positions changes nothing; masks with holes work (the buffers have holes)."""
    call, per_token = CASES[name]
    buf = Buffer(seed)
    clean = call(buf.padded())
    dirty = call(buf.padded(garbage=True))
    packed = call(buf.packed())
    clean = clean if isinstance(clean, tuple) else (clean,)
    dirty = dirty if isinstance(dirty, tuple) else (dirty,)
    packed = packed if isinstance(packed, tuple) else (packed,)
    for i, (x, y, z) in enumerate(zip(clean, dirty, packed, strict=True)):
        assert_same(x, y)
        if i in per_token:
            assert np.shape(z) == (int(buf.cu_seqlens[-1]),)
            z = buf.unpack(np.asarray(z))
            # 0 (or False) at invalid positions, in both layouts (§0.1)
            assert not np.any(np.asarray(x)[~buf.mask])
        assert_same(x, z)


def test_packed_mask_is_optional():
    """§0.1: with ``cu_seqlens`` the mask may be ``None`` (all positions valid)."""
    h = np.array([0.1, 0.9, 0.5, 0.7, 0.2], dtype=np.float32)
    cu = np.array([0, 2, 5])
    assert_same(
        ref.high_entropy_mask(h, None, rho=0.4, cu_seqlens=cu),
        ref.high_entropy_mask(h, np.ones(5, bool), rho=0.4, cu_seqlens=cu),
    )
    assert ref.agg_loss(h.astype(np.float64), None, cu_seqlens=cu) == pytest.approx(np.mean(h))


def test_mask_accepts_bool_int_and_float():
    h = np.array([[0.5, 0.1, 0.3]])
    results = [
        ref.agg_loss(h, m)
        for m in (
            np.array([[True, False, True]]),
            np.array([[1, 0, 1]]),
            np.array([[1.0, 0.0, 1.0]]),
        )
    ]
    assert results[0] == results[1] == results[2] == pytest.approx(0.4)


# ---------------------------------------------------------------------------------------------
# Errors (conventions.md "Inputs and errors")
# ---------------------------------------------------------------------------------------------

H2 = np.full((2, 3), 0.5, dtype=np.float32)
M2 = np.ones((2, 3), dtype=bool)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ref.agg_loss(H2, M2[:, :2]), ValueError, "mask"),
        (lambda: ref.agg_loss(H2[0], M2[0]), ValueError, "loss"),
        (lambda: ref.agg_loss(H2.astype(np.int64), M2), TypeError, "loss"),
        (lambda: ref.agg_loss(H2, M2 * 2), ValueError, "mask"),
        (lambda: ref.agg_loss(H2, M2.astype("U1")), TypeError, "mask"),
        (lambda: ref.agg_loss(H2, M2, "mean"), ValueError, "mode"),
        (lambda: ref.agg_loss(H2, M2, dp_size=0), ValueError, "dp_size"),
        (lambda: ref.agg_loss(H2, M2, "dr_grpo"), ValueError, "max_completion_length"),
        (
            lambda: ref.agg_loss(H2.ravel(), None, "seq-mean-token-sum-norm", cu_seqlens=[0, 3, 6]),
            ValueError,
            "loss_scale_factor",
        ),
        (lambda: ref.agg_loss(H2.ravel(), None, cu_seqlens=[0, 4, 3, 6]), ValueError, "cu_seqlens"),
        (lambda: ref.agg_loss(H2.ravel(), None, cu_seqlens=[0, 3, 5]), ValueError, "cu_seqlens"),
        (lambda: ref.agg_loss(H2.ravel(), None, cu_seqlens=[1, 3, 6]), ValueError, "cu_seqlens"),
        (lambda: ref.agg_loss(H2.ravel(), None, cu_seqlens=[0.0, 6.0]), TypeError, "cu_seqlens"),
        (lambda: ref.agg_loss(H2, M2, cu_seqlens=[0, 6]), ValueError, "loss"),
        (lambda: ref.agg_loss(np.where(M2, np.nan, H2), M2), ValueError, "loss"),
        (lambda: ref.high_entropy_mask(H2, M2, rho=1.5), ValueError, "rho"),
        (lambda: ref.high_entropy_mask(H2, M2, rho=-0.1), ValueError, "rho"),
        (lambda: ref.high_entropy_mask(H2, M2, rho=math.nan), ValueError, "rho"),
        (lambda: ref.high_entropy_mask(H2, M2, method="cubic"), ValueError, "method"),
        (lambda: ref.high_entropy_mask(H2, M2, scope="global"), ValueError, "scope"),
        (lambda: ref.high_entropy_mask(H2, M2, micro_batch=0), ValueError, "micro_batch"),
        (lambda: ref.high_entropy_mask(H2, M2, micro_batch=[0, 1, 2]), ValueError, "micro_batch"),
        (lambda: ref.high_entropy_mask(H2, M2, micro_batch=[0.0, 1.0]), TypeError, "micro_batch"),
        (lambda: ref.high_entropy_mask(H2 * np.nan, M2), ValueError, "entropy"),
        (lambda: ref.high_entropy_mask(H2, M2, nan_policy="ignore"), ValueError, "nan_policy"),
        (lambda: ref.ppo_loss(H2, H2, H2[:1], M2), ValueError, "advantages"),
        (lambda: ref.ppo_loss(H2, H2, H2, M2, clip_c=1.0), ValueError, "clip_c"),
        (lambda: ref.ppo_loss(H2, H2, H2, M2, clip_low=-0.1), ValueError, "clip_low"),
        (lambda: ref.group_advantages([1.0, 0.0], [0]), ValueError, "group"),
        (lambda: ref.group_advantages([1.0, 0.0], [0.0, 1.0]), TypeError, "group"),
        (lambda: ref.group_advantages([1.0, 0.0], [0, 0], scale="std"), ValueError, "scale"),
        (lambda: ref.pass_at_k(5, 6, 1), ValueError, "c"),
        (lambda: ref.pass_at_k(5, 2, 0), ValueError, "k"),
        (lambda: ref.pass_at_k(5, 2, 6), ValueError, "k"),
        (lambda: ref.pass_at_k(5.0, 2, 1), TypeError, "n"),
        (lambda: ref.forking_token_loss(H2, M2, M2, normalize="all"), ValueError, "normalize"),
        (lambda: ref.forking_token_loss(H2, M2, M2[0]), ValueError, "selected"),
        (lambda: ref.clip_cov_select(H2, H2, H2, M2), ValueError, "seed"),
        (lambda: ref.clip_cov_select(H2, H2, H2, M2, seed=0, ratio=2.0), ValueError, "ratio"),
        (lambda: ref.kl_cov_select(H2, H2, M2, ratio=-1e-3), ValueError, "ratio"),
        (lambda: ref.steer_weights(H2, H2, H2, H2, M2, lam_min=0.0), ValueError, "lam_min"),
        (
            lambda: ref.steer_weights(H2, H2, H2, H2, M2, mode="linear", lam_min=2.0),
            ValueError,
            "lam_min",
        ),
        (lambda: ref.window_entropy(H2, M2, window=0), ValueError, "window"),
        (lambda: ref.hwe_count(H2, M2.astype(np.int64), M2, [1]), TypeError, "threshold"),
        (lambda: ref.hwe_count(H2, H2, M2, [1], threshold=0.5), TypeError, "token_ids"),
        (lambda: ref.hwe_threshold(H2, M2, q=1.5), ValueError, "q"),
        (lambda: ref.phase_entropy(H2, M2, [-2, 0]), ValueError, "boundary"),
        (lambda: ref.step_entropy_means(H2, M2, [0, -1], max_steps=2), ValueError, "step_index"),
        (lambda: ref.step_entropy_means(H2, M2, [0, 1]), TypeError, "max_steps"),
        (
            lambda: ref.epo_band_penalty(H2, M2, [0, 2], np.array([0.5, 0.5])),
            ValueError,
            "step_index",
        ),
        (
            lambda: ref.epo_band_penalty(H2, M2, [0, 1], np.array([0.5, np.nan])),
            ValueError,
            "history_mean",
        ),
        (lambda: ref.spear_recalibrate([1.0], [0.5], decay=0.5), ValueError, "old_advantages"),
        (
            lambda: ref.spear_recalibrate([1.0], [0.5], decay=1.5, old_advantages=[1.0]),
            ValueError,
            "decay",
        ),
        (lambda: ref.aepo_select([0.1]), TypeError, "prev_entropy"),
        (lambda: ref.peak_entropy_mask(H2, M2, q=2.0), ValueError, "q"),
        (lambda: ref.siren_regularizer(H2, M2, anchor=[0.1, 0.2]), ValueError, "anchor"),
        (lambda: ref.support_metrics([True, False], [True]), ValueError, "rl"),
        (lambda: ref.detection_threshold(10), TypeError, "bound"),
        (lambda: ref.detection_threshold(10, bound=1.0, alpha=0.0), ValueError, "alpha"),
        (lambda: ref.entropy_reduction(H2, M2, reduce="max"), ValueError, "reduce"),
        (lambda: ref.entropy_summary(H2, M2, percentiles=(50, 101)), ValueError, "percentiles"),
        (lambda: ref_token.nucleus_entropy(H2, top_p=1.5), ValueError, "top_p"),
        (lambda: ref_token.nucleus_entropy(H2, top_k=0), ValueError, "top_k"),
        (lambda: ref_token.nucleus_entropy(H2, temperature=0.0), ValueError, "temperature"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_torch_tensors_are_refused():
    torch = require_torch()
    with pytest.raises(TypeError, match="torch"):
        ref.agg_loss(torch.zeros(2, 3), torch.ones(2, 3))


def test_inputs_are_not_modified():
    buf = Buffer(7)
    fields = buf.padded(garbage=True)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in fields.items()}
    CASES["ppo_loss"][0](fields)
    CASES["clip_cov_select"][0](fields)
    CASES["high_entropy_mask[linear]"][0](fields)
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(fields[k], v)


# ---------------------------------------------------------------------------------------------
# §1 agg_loss
# ---------------------------------------------------------------------------------------------

LOSS = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # n_b = 2, 1, 0; S_b = 3, 4, 0; B = 3, L = 3


@pytest.mark.parametrize(
    ("mode", "kwargs", "expected"),
    [
        ("token-mean", {}, 7 / 3),
        ("token-mean", {"dp_size": 2}, 14 / 3),
        ("token-mean", {"batch_num_tokens": 14, "dp_size": 4}, 2.0),
        ("seq-mean-token-sum", {}, 7 / 2),
        ("seq-mean-token-sum", {"global_batch_size": 3}, 7 / 3),  # legacy verl: G = B
        ("seq-mean-token-sum", {"global_batch_size": 7, "dp_size": 2}, 2.0),
        ("seq-mean-token-mean", {}, (1.5 + 4.0) / 2),
        ("seq-mean-token-mean", {"global_batch_size": 3}, (1.5 + 4.0) / 3),
        ("seq-mean-token-sum-norm", {}, 7 / 3),  # default: padded width L = 3
        ("seq-mean-token-sum-norm", {"loss_scale_factor": 14, "dp_size": 8}, 0.5),  # no dp_size
        ("grpo", {}, (1.5 + 4.0 + 0.0) / 3),
        ("grpo", {"grad_accum_steps": 2}, (1.5 + 4.0) / 6),
        ("bnpo", {}, 7 / 3),
        ("bnpo", {"grad_accum_steps": 7}, 1 / 3),
        ("dr_grpo", {"max_completion_length": 7}, 7 / 21),
        ("dr_grpo", {"max_completion_length": 7, "grad_accum_steps": 2}, 7 / 42),
        ("dapo", {}, 7 / 3),
        ("dapo", {"num_items_in_batch": 28, "num_processes": 4}, 1.0),
        # a zero denominator gives 0
        ("token-mean", {"batch_num_tokens": 0}, 0.0),
        ("seq-mean-token-sum", {"global_batch_size": 0}, 0.0),
        ("dr_grpo", {"max_completion_length": 0}, 0.0),
    ],
)
def test_agg_loss_hand_computed(mode, kwargs, expected):
    """§1 table on a hand-made buffer (an empty row included); NaN off-mask is never read."""
    loss = np.where(MASK == 1, LOSS, np.nan)
    value = ref.agg_loss(loss, MASK, mode, **kwargs)
    assert isinstance(value, np.float64)
    assert value == pytest.approx(expected, rel=1e-15)


def test_agg_loss_empty_mask_is_zero():
    for mode in ref.AGG_MODES:
        assert ref.agg_loss(LOSS, np.zeros_like(MASK), mode, max_completion_length=4) == 0.0


# Transcriptions of the frameworks (rollout.md §1 table), in torch float64.


def verl_agg_loss(torch, loss_mat, loss_mask, mode, dp_size=1, batch_num_tokens=None,
                  global_batch_size=None, loss_scale_factor=None):  # fmt: skip
    """verl ``core_algos.py :: agg_loss`` (including its ``+ 1e-8``)."""
    if mode == "token-mean":
        if batch_num_tokens is None:
            batch_num_tokens = loss_mask.sum()
        return (loss_mat * loss_mask).sum() / batch_num_tokens * dp_size
    if mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        seq_tokens = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        if mode == "seq-mean-token-mean":
            seq_losses = seq_losses / (seq_tokens + 1e-8)
        seq_mask = (seq_tokens > 0).to(loss_mat.dtype)
        if global_batch_size is None:
            global_batch_size = seq_mask.sum()
        return (seq_losses * seq_mask).sum() / global_batch_size * dp_size
    if mode == "seq-mean-token-sum-norm":
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        if loss_scale_factor is None:
            loss_scale_factor = loss_mask.shape[-1]
        return torch.sum(seq_losses) / loss_scale_factor
    raise AssertionError(mode)


def trl_loss(per_token_loss, completion_mask, loss_type, grad_accum_steps=1,
             max_completion_length=None, num_items_in_batch=None, num_processes=1):  # fmt: skip
    """TRL ``GRPOTrainer._compute_loss`` normalisations."""
    if loss_type == "grpo":
        loss = (
            (per_token_loss * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1.0)
        ).mean()
        return loss / grad_accum_steps
    if loss_type == "bnpo":
        loss = (per_token_loss * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)
        return loss / grad_accum_steps
    if loss_type == "dr_grpo":
        loss = (per_token_loss * completion_mask).sum() / (
            per_token_loss.size(0) * max_completion_length
        )
        return loss / grad_accum_steps
    if loss_type == "dapo":
        normalizer = num_items_in_batch / num_processes
        return (per_token_loss * completion_mask).sum() / normalizer
    raise AssertionError(loss_type)


@given(seed=seeds)
def test_agg_loss_matches_verl_and_trl_transcriptions(seed):
    """§17.3: every mode against verl's ``agg_loss`` / TRL's ``_compute_loss`` on random inputs
    with fully masked rows, ``dp_size``, ``loss_scale_factor``, ``global_batch_size=B``."""
    torch = require_torch()
    rng = np.random.default_rng(seed)
    n_rows, width = int(rng.integers(1, 7)), int(rng.integers(1, 10))
    loss = rng.normal(size=(n_rows, width))
    mask = rng.random((n_rows, width)) < 0.6
    mask[rng.random(n_rows) < 0.3] = False  # fully masked rows
    if not mask.any():
        mask[0, 0] = True
    tl, tm = torch.from_numpy(loss), torch.from_numpy(mask.astype(np.float64))
    dp = int(rng.integers(1, 5))
    accum = int(rng.integers(1, 4))
    verl_cases = [
        ("token-mean", {"dp_size": dp}),
        ("token-mean", {"dp_size": dp, "batch_num_tokens": 11}),
        ("seq-mean-token-sum", {"dp_size": dp}),
        ("seq-mean-token-sum", {"global_batch_size": n_rows}),
        ("seq-mean-token-mean", {"dp_size": dp}),
        ("seq-mean-token-mean", {"global_batch_size": n_rows}),
        ("seq-mean-token-sum-norm", {}),
        ("seq-mean-token-sum-norm", {"loss_scale_factor": 4096}),
    ]
    for mode, kw in verl_cases:
        expected = float(verl_agg_loss(torch, tl, tm, mode, **kw))
        assert ref.agg_loss(loss, mask, mode, **kw) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    trl_cases = [
        ("grpo", {"grad_accum_steps": accum}),
        ("bnpo", {"grad_accum_steps": accum}),
        ("dr_grpo", {"grad_accum_steps": accum, "max_completion_length": width + 3}),
        ("dapo", {"num_items_in_batch": int(mask.sum()) * 2 + 1, "num_processes": 2}),
        ("dapo", {"num_items_in_batch": int(mask.sum())}),
    ]
    for mode, kw in trl_cases:
        expected = float(trl_loss(tl, tm, mode, **kw))
        assert ref.agg_loss(loss, mask, mode, **kw) == pytest.approx(expected, rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# §2 PPO/GRPO
# ---------------------------------------------------------------------------------------------


def verl_policy_loss_vanilla(torch, old_log_prob, log_prob, advantages, response_mask,
                             clip_low, clip_high, clip_ratio_c):  # fmt: skip
    """verl ``core_algos.py :: compute_policy_loss_vanilla`` (per-token loss and metrics)."""

    def masked_mean(values, mask):
        return (values * mask).sum() / mask.sum()

    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = masked_mean(-negative_approx_kl, response_mask)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses1).double(), response_mask)
    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_clipfrac_lower = masked_mean(
        torch.gt(clip_pg_losses1, pg_losses3) * (advantages < 0).double(), response_mask
    )
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    return pg_losses * response_mask, pg_clipfrac, ppo_kl, pg_clipfrac_lower


@given(seed=seeds)
def test_ppo_loss_matches_verl_and_trl(seed):
    """§2: ``max(l1, l2)`` = TRL's ``−min(rA, clip(r)A)``; with dual clip, verl's vanilla loss
    and its ``pg_clipfrac``, ``pg_clipfrac_lower``, ``ppo_kl``."""
    torch = require_torch()
    buf = Buffer(seed, dtype=np.float64)
    d = buf.padded()
    if not d["mask"].any():
        d["mask"][0, 0] = True
    lp, old, adv, m = d["logprob"], d["old_logprob"], d["advantages"] * 3, d["mask"]
    plain = ref.ppo_loss(lp, old, adv, m, clip_high=0.28)
    r = np.exp(lp - old)
    trl = -np.minimum(r * adv, np.clip(r, 0.8, 1.28) * adv)
    np.testing.assert_allclose(plain.loss, np.where(m, trl, 0.0), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(plain.ratio, np.where(m, r, 0.0))
    assert plain.clipfrac_lower == 0.0

    terms = ref.ppo_loss(lp, old, adv, m, clip_high=0.28, clip_c=3.0)
    t = [torch.from_numpy(x) for x in (old, lp, adv, m.astype(np.float64))]
    loss, clipfrac, ppo_kl, lower = verl_policy_loss_vanilla(torch, *t, 0.2, 0.28, 3.0)
    np.testing.assert_allclose(terms.loss, loss.numpy(), rtol=1e-15, atol=0)
    assert terms.clipfrac == pytest.approx(float(clipfrac), rel=1e-12)
    assert terms.clipfrac_lower == pytest.approx(float(lower), rel=1e-12)
    assert terms.ppo_kl == pytest.approx(float(ppo_kl), rel=1e-12, abs=1e-15)
    assert np.array_equal(terms.clipped, plain.clipped)


def test_ppo_loss_hand_values():
    """§2 on single tokens: clipping, dual clip, ratio clamp."""
    # A = 1, r = e^{0.5} ≈ 1.65 > 1.2: clipped, l = −1.2
    lp, old, adv, m = (np.array([[v]]) for v in (0.5, 0.0, 1.0, 1))
    terms = ref.ppo_loss(lp, old, adv, m)
    assert terms.loss[0, 0] == pytest.approx(-1.2) and terms.clipped[0, 0]
    assert terms.clipfrac == 1.0 and terms.ppo_kl == pytest.approx(-0.5)
    # A = −1, r = e^{2} ≈ 7.39: l = max(7.39, 1.2) = 7.39 > −A·3 = 3 → dual clip to 3
    terms = ref.ppo_loss(np.array([[2.0]]), np.array([[0.0]]), np.array([[-1.0]]), m, clip_c=3.0)
    assert terms.loss[0, 0] == pytest.approx(3.0) and terms.clipfrac_lower == 1.0
    assert not terms.clipped[0, 0]
    # clamp: Δ = 50 → 20
    terms = ref.ppo_loss(np.array([[50.0]]), np.array([[0.0]]), np.array([[-1.0]]), m)
    assert terms.ratio[0, 0] == pytest.approx(math.exp(20.0)) and terms.ppo_kl == -20.0
    terms = ref.ppo_loss(
        np.array([[5.0]]), np.array([[0.0]]), np.array([[-1.0]]), m, log_ratio_clamp=None
    )
    assert terms.ratio[0, 0] == pytest.approx(math.exp(5.0))
    # empty mask: zero loss, NaN means (0/0, §0.3)
    terms = ref.ppo_loss(lp, old, adv, np.zeros((1, 1)))
    assert terms.loss[0, 0] == 0.0 and math.isnan(terms.clipfrac) and math.isnan(terms.ppo_kl)


def test_group_advantages_known_values():
    """§2, §17.6: constant group → exactly 0; singleton μ = 0, σ = 1; the three scales."""
    rewards = np.array([0.1, 0.1, 0.1, 1.0, 0.0, 0.7, 0.3, 0.6])
    group = np.array([5, 5, 5, 2, 2, 9, 1, 1])
    adv = ref.group_advantages(rewards, group)
    assert np.all(adv[:3] == 0.0)  # constant group: exactly 0, not 1e-17 / eps
    s = math.sqrt(0.5)
    np.testing.assert_allclose(adv[3:5], [0.5 / (s + 1e-6), -0.5 / (s + 1e-6)], rtol=1e-15)
    assert adv[5] == pytest.approx(0.7 / (1 + 1e-6), rel=1e-15)  # singleton: μ = 0, σ = 1
    none = ref.group_advantages(rewards, group, scale="none")
    np.testing.assert_allclose(none, [0, 0, 0, 0.5, -0.5, 0.7, -0.15, 0.15], atol=1e-15)
    batch = ref.group_advantages(rewards, group, scale="batch", eps=1e-4)
    sigma = np.std(rewards, ddof=1)
    np.testing.assert_allclose(batch, none / (sigma + 1e-4), rtol=1e-14, atol=1e-15)
    assert ref.group_advantages(np.array([]), np.array([], dtype=np.int64)).shape == (0,)


@given(seed=seeds)
def test_group_advantages_matches_verl_transcription(seed):
    """verl ``compute_grpo_outcome_advantage``: per-group ``torch.mean``/``torch.std``
    (unbiased), singleton ``μ = 0``, ``σ = 1``; and TRL's ``arange(B) // num_generations``."""
    torch = require_torch()
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 16))
    rewards = rng.integers(0, 3, n) / 2.0 + rng.normal(0, 0.1, n) * (rng.random(n) < 0.5)
    group = rng.integers(0, 4, n)
    scores = torch.from_numpy(rewards)
    expected = scores.clone()
    for g in np.unique(group):
        idx = torch.from_numpy(np.flatnonzero(group == g))
        if len(idx) == 1:
            mean = torch.tensor(0.0, dtype=torch.float64)
            std = torch.tensor(1.0, dtype=torch.float64)
        else:
            mean, std = scores[idx].mean(), scores[idx].std()
        expected[idx] = (scores[idx] - mean) / (std + 1e-6)
    np.testing.assert_allclose(
        ref.group_advantages(rewards, group), expected.numpy(), rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("n", [1, 2, 5, 10, 17, 40])
def test_pass_at_k_exact_rational(n):
    """§2, §17.6: against ``1 − C(n−c, k)/C(n, k)`` in exact rational arithmetic."""
    cs, ks, expected = [], [], []
    for c in range(n + 1):
        for k in range(1, n + 1):
            cs.append(c)
            ks.append(k)
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            expected.append(float(exact))
    got = ref.pass_at_k(n, np.array(cs), np.array(ks))
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)
    assert np.all(got[np.array(ks) > n - np.array(cs)] == 1.0)  # n − c < k → exactly 1


def test_pass_at_k_scalar_and_broadcast():
    assert isinstance(ref.pass_at_k(10, 0, 3), np.float64) and ref.pass_at_k(10, 0, 3) == 0.0
    assert ref.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert ref.pass_at_k([[4], [8]], 2, [1, 2]).shape == (2, 2)


# ---------------------------------------------------------------------------------------------
# §3 high_entropy_mask and forking_token_loss
# ---------------------------------------------------------------------------------------------

TRL_ENTROPIES = np.array(
    [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]], np.float32
)
TRL_MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize(
    ("quantile", "expected"),
    [
        (0.8, [[0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]]),  # keeps 0.9 and 1.0
        (0.5, [[0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 0, 0]]),  # keeps 0.6 – 1.0
        (0.0, [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),  # keeps all valid
        (1.0, [[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]]),  # keeps only 1.0
    ],
)
@pytest.mark.parametrize("packed", [False, True])
def test_high_entropy_mask_trl_fixture(quantile, expected, packed):
    """§17.4: TRL ``TestGetHighEntropyMask``; TRL's ``threshold`` is the quantile ``1 − ρ``."""
    rho = 1.0 - quantile
    if packed:
        got = ref.high_entropy_mask(
            TRL_ENTROPIES.ravel(), TRL_MASK.ravel(), rho=rho, cu_seqlens=[0, 6, 12]
        ).reshape(2, 6)
    else:
        got = ref.high_entropy_mask(TRL_ENTROPIES, TRL_MASK, rho=rho)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, np.array(expected, dtype=bool))


def test_high_entropy_mask_trl_fixture_other():
    """TRL ``test_compute_entropy_mask_1`` and ``test_compute_entropy_all_masked``."""
    entropies = np.array(
        [[0.1, 0.2, 0.3, 1.4, 0.5, 0.14], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]], np.float32
    )
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]])
    got = ref.high_entropy_mask(entropies, mask, rho=1.0 - 0.8)
    np.testing.assert_array_equal(got, [[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0]])
    got, tau = ref.high_entropy_mask(
        TRL_ENTROPIES, np.zeros_like(TRL_MASK), rho=0.5, return_threshold=True
    )
    assert not got.any() and tau.shape == (1,) and math.isnan(tau[0])


RHOS = ["0", "0.05", "0.1", "0.15", "0.2", "0.25", "0.3", "0.35", "0.4", "0.45", "0.5", "0.6",
        "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95", "1"]  # fmt: skip


def test_high_entropy_mask_kept_count_decimal_rho():
    """§3, §17.4: kept count ``N − ⌈h⌉`` with ``h = (N−1)(1−ρ)`` taken exactly (decimal ``ρ``
    lands on integer positions: the snapping); distinct values, many ``(N, ρ)``."""
    rng = np.random.default_rng(0)
    for n in range(1, 130):
        values = rng.permutation(n).astype(np.float32)[None, :] / 7
        mask = np.ones_like(values, dtype=bool)
        for text in RHOS:
            rho = float(text)
            h = (n - 1) * (1 - Fraction(text))
            expected = n - math.ceil(h)
            got = ref.high_entropy_mask(values, mask, rho=rho)
            assert got.sum() == expected, (n, text)
            # the kept tokens are the largest ones
            if expected:
                assert values[got].min() >= values[~got].max(initial=-1.0)
            topk = ref.high_entropy_mask(values, mask, rho=rho, method="topk")
            assert topk.sum() == math.ceil(n * Fraction(text)), (n, text)


@given(seed=seeds, rho=st.floats(0.0, 1.0))
def test_high_entropy_mask_kept_count_random_rho(seed, rho):
    """Kept count ``N − ⌈h⌉`` for random ``ρ`` (distinct values; h far from integers)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    h = (n - 1) * (1 - rho)
    if abs(h - round(h)) < 1e-6:
        return
    values = rng.permutation(n).astype(np.float64)
    got = ref.high_entropy_mask(values, None, rho=rho, cu_seqlens=[0, n])
    assert got.sum() == n - math.ceil(h)


@given(seed=seeds, rho=st.sampled_from([0.0, 0.1, 0.2, 0.5, 0.9, 1.0]))
def test_high_entropy_mask_ties_all_kept(seed, rho):
    """§3: all ties at the threshold value are kept; ρ = 0 keeps the maximum with its ties."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, (3, 11)).astype(np.float32)
    mask = rng.random((3, 11)) < 0.8
    mask[0, 0] = True
    got, tau = ref.high_entropy_mask(values, mask, rho=rho, return_threshold=True)
    x = np.sort(values[mask])
    h = (x.size - 1) * (1 - rho)
    cut = x[math.ceil(round(h, 9))]
    np.testing.assert_array_equal(got, mask & (values >= cut))
    assert got.sum() >= x.size - math.ceil(round(h, 9))
    if rho == 0.0:
        np.testing.assert_array_equal(got, mask & (values == x[-1]))
    if rho == 1.0:
        np.testing.assert_array_equal(got, mask)
    assert x[0] <= tau[0] <= x[-1]


@pytest.mark.parametrize("method", ["linear", "lower", "higher", "nearest", "midpoint"])
@given(seed=seeds, rho=st.floats(0.0, 1.0))
def test_high_entropy_mask_equals_torch_quantile(method, seed, rho):
    """§17.4: equality with TRL's ``torch.quantile(valid, 1 − ρ, interpolation=...)`` then
    ``>=`` (N ≤ 2²⁴), away from rounding boundaries of ``h``; ``τ`` equals the quantile."""
    torch = require_torch()
    rng = np.random.default_rng(seed)
    n_rows, width = int(rng.integers(1, 8)), int(rng.integers(1, 60))
    values = (rng.gamma(1.0, 0.5, (n_rows, width)) * 1024).round() / 1024  # few ties
    mask = rng.random((n_rows, width)) < 0.8
    n = int(mask.sum())
    if n == 0:
        return
    h = (n - 1) * (1 - rho)
    frac = h - math.floor(h)
    if min(frac, 1 - frac) < 1e-6 or abs(frac - 0.5) < 1e-6:
        return
    flat = torch.from_numpy(values[mask])
    threshold = torch.quantile(flat, 1 - rho, interpolation=method)
    expected = (torch.from_numpy(values) >= threshold).numpy() & mask
    got, tau = ref.high_entropy_mask(values, mask, rho=rho, method=method, return_threshold=True)
    np.testing.assert_array_equal(got, expected)
    assert tau[0] == pytest.approx(float(threshold), rel=1e-12, abs=1e-12)


@given(seed=seeds, rho=st.floats(0.0, 1.0))
def test_high_entropy_mask_topk_brute_force(seed, rho):
    """``"topk"``: exactly ``⌈ρN⌉`` largest, ties by lower flat index (§0.3)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 5, (4, 7)).astype(np.float64)
    mask = rng.random((4, 7)) < 0.7
    got = ref.high_entropy_mask(values, mask, rho=rho, method="topk")
    flat = [(-values.flat[i], i) for i in np.flatnonzero(mask)]
    k = math.ceil(round(rho * len(flat), 9))
    expected = np.zeros(values.size, dtype=bool)
    expected[[i for _, i in sorted(flat)[:k]]] = True
    np.testing.assert_array_equal(got.ravel(), expected)


def test_high_entropy_mask_units():
    """§0.2: each micro-batch is a unit; ``scope="batch"`` (or ``micro_batch=None``) is one."""
    buf = Buffer(11, n_rows=6, width=8)
    h, m = buf.entropy, buf.mask
    m[:, 0] = True
    per_unit, tau = ref.high_entropy_mask(
        h, m, micro_batch=[3, 1, 3, 1, 7, 7], return_threshold=True
    )
    for u, rows in enumerate(([1, 3], [0, 2], [4, 5])):  # units in increasing id
        alone, tau_alone = ref.high_entropy_mask(h[rows], m[rows], return_threshold=True)
        np.testing.assert_array_equal(per_unit[rows], alone)
        assert tau[u] == tau_alone[0]
    by_size = ref.high_entropy_mask(h, m, micro_batch=2)
    for start in (0, 2, 4):
        np.testing.assert_array_equal(
            by_size[start : start + 2],
            ref.high_entropy_mask(h[start : start + 2], m[start : start + 2]),
        )
    np.testing.assert_array_equal(
        ref.high_entropy_mask(h, m, scope="batch", micro_batch=2), ref.high_entropy_mask(h, m)
    )


def test_high_entropy_mask_nan_policy():
    """``"omit"`` excludes NaN tokens everywhere; ``"propagate"`` empties the affected unit only."""
    buf = Buffer(5, n_rows=4, width=6)
    h, m = buf.entropy.astype(np.float64), buf.mask
    m[:, :2] = True
    h[1, 0] = np.nan
    omitted = ref.high_entropy_mask(h, m, nan_policy="omit", micro_batch=2)
    np.testing.assert_array_equal(
        omitted, ref.high_entropy_mask(np.nan_to_num(h), m & ~np.isnan(h), micro_batch=2)
    )
    got, tau = ref.high_entropy_mask(
        h, m, nan_policy="propagate", micro_batch=2, return_threshold=True
    )
    assert not got[:2].any() and math.isnan(tau[0])
    np.testing.assert_array_equal(got[2:], ref.high_entropy_mask(h[2:], m[2:]))
    assert not math.isnan(tau[1])


def test_high_entropy_mask_beyond_2_24():
    """§3: no size limit (``torch.quantile`` refuses more than 2²⁴ elements)."""
    n = 2**24 + 3
    values = np.arange(n, dtype=np.float64)[::-1].copy()
    got = ref.high_entropy_mask(values, None, rho=0.25, cu_seqlens=np.array([0, n]))
    h = (n - 1) * 0.75  # exact in float64
    assert int(got.sum()) == n - math.ceil(h)
    assert got[: n - math.ceil(h)].all()


def test_forking_token_loss_hand_values():
    """§3: ``"selected"`` = Eq. 6, ``"all_valid"`` = TRL, ``num_tokens``, ``dp_size``, 0/0 → 0."""
    loss = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, np.nan]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    sel = np.array([[0, 1, 1], [1, 0, 1]])  # the last one is off-mask: ignored
    assert ref.forking_token_loss(loss, mask, sel) == pytest.approx(9 / 3)
    assert ref.forking_token_loss(loss, mask, sel, normalize="all_valid") == pytest.approx(9 / 5)
    assert ref.forking_token_loss(loss, mask, sel, num_tokens=18, dp_size=4) == pytest.approx(2.0)
    assert ref.forking_token_loss(loss, mask, np.zeros_like(sel)) == 0.0
    # TRL's all_valid equals agg_loss(loss * selected, mask, "token-mean")
    assert ref.forking_token_loss(loss, mask, sel, normalize="all_valid") == pytest.approx(
        ref.agg_loss(np.where(sel == 1, np.nan_to_num(loss), 0.0), mask)
    )
