"""Every bad input of ``conventions.md`` "Inputs and errors" and ``token.md`` §1, §4 raises the
documented exception, naming the argument, on the NumPy face and on the reference alike
(``token.md`` §10 item 12).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import entcore
from entcore.reference import token as ref
from helpers import require_torch

BF16 = ml_dtypes.bfloat16
DTYPES = [np.float32, np.float16, BF16, np.float64]
DTYPE_IDS = ["f32", "f16", "bf16", "f64"]

FACES = pytest.mark.parametrize("face", [entcore, ref], ids=["entcore", "reference"])


def logits_of(dtype=np.float32, shape=(4, 9)):
    return (np.random.default_rng(0).standard_normal(shape) * 2).astype(dtype)


def all_logit_functions(face, logits, **kw):
    """Call every function that reads ``logits`` (yields callables for ``pytest.raises``)."""
    labels = np.zeros(logits.shape[:-1], np.int64)
    return [
        lambda: face.token_entropy(logits, **kw),
        lambda: face.token_logprob(logits, labels, **kw),
        lambda: face.token_logprob_entropy(logits, labels, return_collision=True, **kw),
        lambda: face.collision_probability(logits, **kw),
        lambda: face.renyi_entropy(logits, 0.5, **kw),
        lambda: face.renyi_entropy(logits, 2.0, **kw),
        lambda: face.renyi_entropy(logits, 1.0 + 5e-5, **kw),
    ]


@FACES
@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.uint16, np.bool_, np.complex64, np.longdouble]
)
def test_wrong_logits_dtype_is_a_type_error(face, dtype):
    logits = np.zeros((3, 5), dtype=dtype)
    for call in all_logit_functions(face, logits):
        with pytest.raises(TypeError, match="logits"):
            call()


@FACES
def test_torch_tensors_are_refused_on_the_numpy_faces(face):
    torch = require_torch()
    logits = torch.zeros(3, 5)
    with pytest.raises(TypeError, match="logits"):
        face.token_entropy(logits)


@FACES
@pytest.mark.parametrize("shape", [(), (3, 0), (0,), (2, 3, 0)])
def test_wrong_rank_or_empty_vocabulary(face, shape):
    logits = np.zeros(shape, dtype=np.float32)
    for call in all_logit_functions(face, logits):
        with pytest.raises(ValueError, match="logits"):
            call()


@FACES
@pytest.mark.parametrize("bad", [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf])
def test_bad_scalar_temperature(face, bad):
    for call in all_logit_functions(face, logits_of(), temperature=bad):
        with pytest.raises(ValueError, match="temperature"):
            call()


@FACES
@pytest.mark.parametrize("bad", [0.0, -2.0, math.nan, math.inf])
def test_bad_per_row_temperature(face, bad):
    temps = np.array([1.0, 0.6, 1.5, 1.0])
    temps[3] = bad  # the last row only
    for call in all_logit_functions(face, logits_of(), temperature=temps):
        with pytest.raises(ValueError, match="temperature"):
            call()


@FACES
@pytest.mark.parametrize("shape", [(3,), (5,), (4, 2), (2, 4)])
def test_per_row_temperature_of_the_wrong_shape(face, shape):
    for call in all_logit_functions(face, logits_of(), temperature=np.ones(shape)):
        with pytest.raises(ValueError, match="temperature"):
            call()


@FACES
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("policy", ["raise", "propagate"])
@pytest.mark.parametrize("vocab, column", [(9, 0), (9, 8), (2049, 2048), (4100, 4099), (4100, 7)])
def test_plus_inf_is_an_error(face, dtype, policy, vocab, column):
    """``+inf`` anywhere is an error under both NaN policies (§4), in any tile and in the scalar
    tail of a tile."""
    logits = logits_of(dtype, (3, vocab))
    logits[2, column] = np.inf
    for call in all_logit_functions(face, logits, nan_policy=policy):
        with pytest.raises(ValueError, match="logits"):
            call()


@FACES
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("policy", ["raise", "propagate"])
@pytest.mark.parametrize("vocab", [1, 9, 2049])
def test_all_minus_inf_row_is_an_error(face, dtype, policy, vocab):
    logits = logits_of(dtype, (3, vocab))
    logits[1] = -np.inf
    for call in all_logit_functions(face, logits, nan_policy=policy):
        with pytest.raises(ValueError, match="logits"):
            call()


@FACES
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("vocab, column", [(9, 4), (2049, 2048), (4100, 3000)])
def test_nan_raises_by_default(face, dtype, vocab, column):
    logits = logits_of(dtype, (3, vocab))
    logits[2, column] = np.nan
    for call in all_logit_functions(face, logits):
        with pytest.raises(ValueError, match="logits"):
            call()
    for call in all_logit_functions(face, logits, nan_policy="propagate"):
        out = call()
        out = out if isinstance(out, tuple) else (out,)
        for x in out:
            assert np.all(np.isnan(x[2])) and not np.any(np.isnan(x[:2]))


@FACES
@pytest.mark.parametrize("policy", ["omit", "ignore", "RAISE", None])
def test_unknown_nan_policy(face, policy):
    for call in all_logit_functions(face, logits_of(), nan_policy=policy):
        with pytest.raises(ValueError, match="nan_policy"):
            call()


@FACES
@pytest.mark.parametrize("bad", [9, -1, 2**40, -(2**40), -101])
def test_labels_out_of_range(face, bad):
    logits = logits_of()
    labels = np.array([[0, 8], [1, 2], [3, 4], [5, bad]])
    with pytest.raises(ValueError, match="labels"):
        face.token_logprob(logits, labels)
    with pytest.raises(ValueError, match="labels"):
        face.token_logprob(logits, labels, ignore_index=-100)
    if np.iinfo(np.int32).min <= bad <= np.iinfo(np.int32).max:
        with pytest.raises(ValueError, match="labels"):
            face.token_logprob_entropy(logits, labels[:, 1].astype(np.int32), ignore_index=-100)


@FACES
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_, np.complex64])
def test_labels_of_a_non_integer_dtype(face, dtype):
    labels = np.zeros(4, dtype=dtype)
    with pytest.raises(TypeError, match="labels"):
        face.token_logprob(logits_of(), labels)
    with pytest.raises(TypeError, match="labels"):
        face.token_logprob_entropy(logits_of(), labels)


@FACES
@pytest.mark.parametrize("shape", [(), (3,), (5,), (4, 2, 1), (2, 4), (1, 4)])
def test_labels_of_the_wrong_shape(face, shape):
    labels = np.zeros(shape, np.int64)
    with pytest.raises(ValueError, match="labels"):
        face.token_logprob(logits_of(), labels)
    with pytest.raises(ValueError, match="labels"):
        face.token_logprob_entropy(logits_of(), labels)


@FACES
@pytest.mark.parametrize("bad", [1.5, "x", True, np.float64(-100.0)])
def test_ignore_index_must_be_an_int(face, bad):
    with pytest.raises(TypeError, match="ignore_index"):
        face.token_logprob(logits_of(), np.zeros(4, np.int64), ignore_index=bad)


@FACES
@pytest.mark.parametrize("bad", [-1.0, -1e-9, math.nan, -math.inf])
def test_bad_alpha(face, bad):
    with pytest.raises(ValueError, match="alpha"):
        face.renyi_entropy(logits_of(), bad)


@FACES
def test_errors_name_the_first_bad_row_in_a_large_batch(face):
    """A bad row deep inside a multi-threaded batch is still found and reported."""
    logits = logits_of(np.float32, (2000, 300))
    logits[1999, 299] = np.inf
    with pytest.raises(ValueError, match="logits"):
        face.token_entropy(logits)
    logits[1999, 299] = 0.0
    logits[1500] = -np.inf
    with pytest.raises(ValueError, match="logits"):
        face.token_entropy(logits, nan_policy="propagate")


# ---------------------------------------------------------------------------------------------
# The fused linear head (token.md §8.2)
# ---------------------------------------------------------------------------------------------


def linear_inputs():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((4, 6)).astype(np.float32)
    weight = rng.standard_normal((10, 6)).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32)
    labels = rng.integers(0, 10, size=4)
    return hidden, weight, bias, labels


@FACES
def test_linear_head_bad_inputs(face):
    hidden, weight, bias, labels = linear_inputs()
    f = face.token_logprob_entropy_linear
    cases = [
        (TypeError, "hidden", lambda: f(hidden.astype(np.int32), weight, labels)),
        (TypeError, "weight", lambda: f(hidden, weight.astype(np.int64), labels)),
        (TypeError, "bias", lambda: f(hidden, weight, labels, bias=bias.astype(np.int32))),
        (TypeError, "labels", lambda: f(hidden, weight, labels.astype(np.float32))),
        (ValueError, "hidden", lambda: f(hidden[0], weight, labels)),
        (ValueError, "hidden", lambda: f(hidden[None], weight, labels)),
        (ValueError, "weight", lambda: f(hidden, weight[0], labels)),
        (ValueError, "weight", lambda: f(hidden, weight[:, :5], labels)),
        (ValueError, "weight", lambda: f(hidden, weight[:0], labels[:0] * 0)),
        (ValueError, "bias", lambda: f(hidden, weight, labels, bias=bias[:9])),
        (ValueError, "bias", lambda: f(hidden, weight, labels, bias=bias[None])),
        (ValueError, "labels", lambda: f(hidden, weight, labels[:3])),
        (ValueError, "labels", lambda: f(hidden, weight, labels[:, None])),
        (ValueError, "labels", lambda: f(hidden, weight, np.array([0, 1, 2, 10]))),
        (ValueError, "labels", lambda: f(hidden, weight, np.array([0, 1, -1, 3]))),
        (
            ValueError,
            "labels",
            lambda: f(hidden, weight, np.array([0, 1, -1, 3]), ignore_index=-100),
        ),
        (TypeError, "ignore_index", lambda: f(hidden, weight, labels, ignore_index=0.5)),
        (ValueError, "temperature", lambda: f(hidden, weight, labels, temperature=0.0)),
        (ValueError, "temperature", lambda: f(hidden, weight, labels, temperature=-1.0)),
        (ValueError, "temperature", lambda: f(hidden, weight, labels, temperature=math.nan)),
        (ValueError, "temperature", lambda: f(hidden, weight, labels, temperature=math.inf)),
    ]
    for exc, name, call in cases:
        with pytest.raises(exc, match=name):
            call()
