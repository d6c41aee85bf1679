"""The rollout buffer format (``entcore.io``): round trips in both layouts, layout conversion,
the shipped SmolLM2 buffer, malformed files (each raises ``RolloutFormatError`` naming the
field) and atomic saving. No model and no network: the shipped buffer is package data.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import safetensors.numpy as stnp

import entcore
from entcore.io import (
    FORMAT_VERSION,
    RolloutBuffer,
    RolloutDtypeError,
    RolloutFormatError,
    default_rollouts_path,
    default_tokenizer_path,
    load_rollouts,
    save_rollouts,
)

K = 4
VOCAB = 50


def topk_of(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Top-K log-probs (descending) and ids of random distributions over ``VOCAB`` entries."""
    logits = rng.standard_normal(shape + (VOCAB,)) * 2.0
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[..., :K]
    return np.take_along_axis(logp, ids, -1).astype(np.float32), ids


def padded_buffer(seed: int = 0, *, holes: bool = False) -> RolloutBuffer:
    """Six sequences in two groups, left-aligned responses of lengths 0..9 (one with a hole)."""
    rng = np.random.default_rng(seed)
    b, t = 6, 9
    lengths = np.array([9, 3, 0, 5, 7, 1])
    mask = np.arange(t)[None, :] < lengths[:, None]
    if holes:
        mask[0, 4] = False  # e.g. a tool-output token inside the response
    topk_lp, topk_ids = topk_of(rng, (b, t))
    rewards = np.array([1.0, 0.0, 0.01, 1.0, 1.0, 0.0], dtype=np.float32)
    return RolloutBuffer(
        layout="padded",
        entropy=rng.uniform(0, 3, (b, t)).astype(np.float32),
        logprob=-rng.uniform(0, 5, (b, t)).astype(np.float32),
        token_ids=rng.integers(0, VOCAB, (b, t)),
        topk_logprobs=topk_lp,
        topk_ids=topk_ids,
        rewards=rewards,
        correct=rewards >= 1,
        group=np.array([0, 0, 0, 1, 1, 1]),
        mask=mask,
        advantages=rng.standard_normal((b, t)).astype(np.float32),
        metadata={
            "model": "test",
            "temperature": "1.0",
            "vocab_size": str(VOCAB),
            "prompts": json.dumps(["1 + 1 =", "2 + 3 ="]),
            "answers": json.dumps(["2", "3", None, "5", "5", "x"]),
        },
    )


def valid_tokens(buffer: RolloutBuffer, name: str) -> np.ndarray | None:
    """The valid entries of a token field in row-major (= packed) order."""
    value = getattr(buffer, name)
    if value is None or buffer.mask is None:
        return value
    return value[buffer.mask]


TOKEN_FIELDS = ("entropy", "logprob", "token_ids", "topk_logprobs", "topk_ids", "advantages")
SEQ_FIELDS = ("rewards", "correct", "group")


def assert_same_rollouts(a: RolloutBuffer, b: RolloutBuffer) -> None:
    assert a.num_sequences == b.num_sequences
    assert a.num_tokens == b.num_tokens
    np.testing.assert_array_equal(a.lengths, b.lengths)
    for name in TOKEN_FIELDS:
        va, vb = valid_tokens(a, name), valid_tokens(b, name)
        assert (va is None) == (vb is None), name
        if va is not None:
            np.testing.assert_array_equal(va, vb, err_msg=name)
    for name in SEQ_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# ---- round trips and conversion --------------------------------------------------------------


@pytest.mark.parametrize("holes", [False, True])
def test_padded_round_trip(tmp_path, holes):
    buf = padded_buffer(holes=holes)
    path = save_rollouts(buf, tmp_path / "r.safetensors")
    back = load_rollouts(path)
    assert back.layout == "padded" and back.cu_seqlens is None
    for name, value in buf.tensors().items():
        got = getattr(back, name)
        assert got.dtype == value.dtype, name
        np.testing.assert_array_equal(got, value, err_msg=name)
    assert back.old_logprob is None and back.step_index is None
    assert back.metadata["format_version"] == FORMAT_VERSION
    assert back.metadata["entcore_version"] == entcore.__version__
    assert back.metadata["layout"] == "padded"
    assert back.prompts == ["1 + 1 =", "2 + 3 ="]
    assert back.answers == ["2", "3", None, "5", "5", "x"]
    assert back.temperature == 1.0 and back.vocab_size == VOCAB


@pytest.mark.parametrize("ids_dtype", ["int64", "int32"])
def test_packed_round_trip(tmp_path, ids_dtype):
    buf = padded_buffer(holes=True).to_packed()
    path = save_rollouts(buf, tmp_path / "p.safetensors", ids_dtype=ids_dtype)
    with stnp.safe_open(str(path), framework="numpy") as f:
        assert f.get_slice("topk_ids").get_dtype() == ("I32" if ids_dtype == "int32" else "I64")
    back = load_rollouts(path)
    assert back.layout == "packed"
    assert back.token_ids.dtype == back.topk_ids.dtype == np.int64  # widened on load
    for name, value in buf.tensors().items():
        np.testing.assert_array_equal(getattr(back, name), value, err_msg=name)
    assert back.metadata["layout"] == "packed"


def test_to_packed_and_to_padded_are_equivalent():
    padded = padded_buffer()
    packed = padded.to_packed()
    assert packed.layout == "packed" and packed.mask is None  # no holes: no packed mask
    np.testing.assert_array_equal(packed.cu_seqlens, [0, 9, 12, 12, 17, 24, 25])
    assert packed.num_tokens == padded.num_tokens == 25
    assert_same_rollouts(padded, packed)
    again = packed.to_padded()
    assert again.layout == "padded" and again.entropy.shape == (6, 9)
    np.testing.assert_array_equal(again.mask, padded.mask)
    assert_same_rollouts(again, padded)
    assert packed.to_packed() is packed and padded.to_padded() is padded
    # Padding is a point mass: the top-k bounds accept the whole padded array (entropy 0 there).
    bounds = entcore.topk_entropy_bounds(again.topk_logprobs, VOCAB)
    assert np.all(bounds.upper[~again.mask] == 0)


def test_conversion_keeps_holes():
    padded = padded_buffer(holes=True)
    packed = padded.to_packed()
    assert packed.mask is not None and packed.mask.shape == packed.entropy.shape
    assert packed.num_tokens == padded.num_tokens == 24
    np.testing.assert_array_equal(packed.lengths, padded.lengths)
    assert_same_rollouts(padded, packed)
    assert_same_rollouts(packed.to_padded(), padded)


def test_constructor_normalises_benign_dtypes():
    buf = padded_buffer()
    other = RolloutBuffer(
        layout="padded",
        entropy=buf.entropy.astype(np.float64),
        logprob=buf.logprob.astype(np.float16),
        token_ids=buf.token_ids.astype(np.int32),
        topk_logprobs=buf.topk_logprobs,
        topk_ids=buf.topk_ids.astype(np.uint16),
        rewards=buf.rewards.tolist(),
        correct=buf.correct.astype(np.uint8),
        group=buf.group.astype(np.int32),
        mask=buf.mask.astype(np.uint8),
    )
    assert other.entropy.dtype == other.logprob.dtype == np.float32
    assert other.token_ids.dtype == other.topk_ids.dtype == other.group.dtype == np.int64
    assert other.correct.dtype == other.mask.dtype == np.bool_
    np.testing.assert_array_equal(other.correct, buf.correct)


# ---- the shipped buffer ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> RolloutBuffer:
    return load_rollouts(default_rollouts_path())


def test_shipped_buffer_shapes_and_metadata(shipped):
    buf = shipped
    assert buf.layout == "packed"
    b, n = buf.num_sequences, buf.entropy.shape[0]
    prompts, answers = buf.prompts, buf.answers
    assert prompts is not None and answers is not None
    assert b >= 64 and len(answers) == b
    assert buf.num_tokens == n >= 10 * b
    assert buf.topk_logprobs.shape == buf.topk_ids.shape == (n, 20)
    for name in ("logprob", "token_ids"):
        assert getattr(buf, name).shape == (n,)
    for name in SEQ_FIELDS:
        assert getattr(buf, name).shape == (b,)
    assert set(np.unique(buf.group)) == set(range(len(prompts)))
    assert buf.metadata["model"] == "SmolLM2-135M-Instruct"
    assert buf.temperature == 1.0 and buf.vocab_size == 49152
    for key in ("dataset", "dataset_seed", "format_version", "entcore_version"):
        assert buf.metadata[key]
    assert np.all(buf.lengths >= 1)
    assert np.all(buf.lengths <= int(buf.metadata["max_new_tokens"]))


def test_shipped_buffer_values_are_sane(shipped):
    buf = shipped
    v = buf.vocab_size
    assert np.all(np.isfinite(buf.entropy)) and np.all(np.isfinite(buf.logprob))
    assert np.all(buf.entropy >= 0) and np.all(buf.entropy <= math.log(v) + 1e-4)
    assert np.all(buf.logprob <= 0)
    assert np.all((buf.token_ids >= 0) & (buf.token_ids < v))
    assert np.all((buf.topk_ids >= 0) & (buf.topk_ids < v))
    assert np.all(np.diff(buf.topk_logprobs, axis=-1) <= 0)  # descending
    # The sampled token's log-prob matches its top-k entry wherever it is in the top 20.
    hit = buf.topk_ids == buf.token_ids[:, None]
    rows = hit.any(axis=1)
    assert rows.mean() > 0.5
    np.testing.assert_allclose(buf.topk_logprobs[hit], buf.logprob[rows], atol=1e-4)
    # Entropies sit between the bounds computed from the top-20 log-probs (token.md §7).
    bounds = entcore.topk_entropy_bounds(buf.topk_logprobs, v)
    assert np.all(bounds.lower <= buf.entropy + 1e-4)
    assert np.all(buf.entropy <= bounds.upper + 1e-4)
    # Sequences end at <|im_end|> unless cut at max_new_tokens.
    eos = int(buf.metadata["eos_token_id"])
    ends = buf.token_ids[buf.cu_seqlens[1:] - 1]
    cut = buf.lengths == int(buf.metadata["max_new_tokens"])
    assert np.all((ends == eos) | cut)
    assert not np.any(
        buf.token_ids[np.setdiff1d(np.arange(buf.num_tokens), buf.cu_seqlens[1:] - 1)] == eos
    )


def test_shipped_buffer_rewards_vary(shipped):
    buf = shipped
    assert np.all((buf.rewards >= 0) & (buf.rewards <= 1))
    np.testing.assert_array_equal(buf.correct, buf.rewards >= 1)
    assert 0 < buf.correct.mean() < 1
    groups = np.unique(buf.group)
    mixed = [g for g in groups if np.ptp(buf.rewards[buf.group == g]) > 0]
    assert mixed, "no group has varying rewards"
    answers = buf.answers
    assert answers is not None
    assert sum(a is not None for a in answers) > len(answers) // 2


def test_shipped_tokenizer_decodes_the_tokens(shipped):
    import tokenizers  # a test dependency (the `dev` extra): missing is an error, not a skip

    tok = tokenizers.Tokenizer.from_file(str(default_tokenizer_path()))
    assert tok.get_vocab_size() == shipped.vocab_size
    eos = int(shipped.metadata["eos_token_id"])
    assert tok.id_to_token(eos) == "<|im_end|>"
    first = shipped.token_ids[shipped.cu_seqlens[0] : shipped.cu_seqlens[1]]
    text = tok.decode(first.tolist())
    assert text.strip()


def test_packed_and_padded_shipped_agree(shipped):
    padded = shipped.to_padded()
    assert padded.entropy.shape == (shipped.num_sequences, int(shipped.lengths.max()))
    assert_same_rollouts(padded, shipped)


# ---- malformed files -------------------------------------------------------------------------


def write_raw(path, tensors, metadata) -> str:
    stnp.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata)
    return str(path)


def base_files(layout: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    buf = padded_buffer() if layout == "padded" else padded_buffer().to_packed()
    meta = dict(buf.metadata, format="entcore.rollouts", format_version=FORMAT_VERSION)
    return dict(buf.tensors()), meta


def expect_error(tmp_path, tensors, meta, field, error=RolloutFormatError):
    path = write_raw(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(error) as info:
        load_rollouts(path)
    assert isinstance(info.value, RolloutFormatError)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith(f"{field}:") or f"'{field}'" in message, message
    return info.value


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_valid_raw_files_load(tmp_path, layout):
    tensors, meta = base_files(layout)
    buf = load_rollouts(write_raw(tmp_path / "ok.safetensors", tensors, meta))
    assert buf.layout == layout


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize(
    "field",
    ["entropy", "logprob", "token_ids", "topk_logprobs", "topk_ids", "rewards", "correct", "group"],
)
def test_missing_field(tmp_path, layout, field):
    tensors, meta = base_files(layout)
    del tensors[field]
    err = expect_error(tmp_path, tensors, meta, field)
    assert "missing" in str(err)


def test_padded_without_mask(tmp_path):
    tensors, meta = base_files("padded")
    del tensors["mask"]
    expect_error(tmp_path, tensors, meta, "mask")


SHAPE_CASES = [
    ("padded", "logprob", lambda t: t["logprob"][:, :-1]),
    ("padded", "token_ids", lambda t: t["token_ids"][:-1]),
    ("padded", "entropy", lambda t: t["entropy"][..., None]),
    ("padded", "topk_logprobs", lambda t: t["topk_logprobs"][..., 0]),
    ("padded", "topk_ids", lambda t: t["topk_ids"][..., :-1]),
    ("padded", "rewards", lambda t: np.append(t["rewards"], 1.0).astype(np.float32)),
    ("padded", "group", lambda t: t["group"][:, None]),
    ("padded", "advantages", lambda t: t["advantages"][:2]),
    ("packed", "entropy", lambda t: t["entropy"][None, :]),
    ("packed", "correct", lambda t: t["correct"][:-1]),
    ("packed", "topk_logprobs", lambda t: t["topk_logprobs"][:-1]),
    ("packed", "topk_logprobs", lambda t: t["topk_logprobs"][:, :0]),
    ("packed", "cu_seqlens", lambda t: t["cu_seqlens"][None, :]),
]


@pytest.mark.parametrize(("layout", "field", "change"), SHAPE_CASES)
def test_wrong_shape(tmp_path, layout, field, change):
    tensors, meta = base_files(layout)
    tensors[field] = change(tensors)
    err = expect_error(tmp_path, tensors, meta, field)
    assert "expected" in str(err)


DTYPE_CASES = [
    ("padded", "entropy", np.float64),
    ("padded", "logprob", np.float16),
    ("padded", "token_ids", np.float32),
    ("padded", "topk_ids", np.int16),
    ("padded", "rewards", np.float64),
    ("padded", "correct", np.int64),
    ("padded", "group", np.float32),
    ("padded", "mask", np.float32),
    ("packed", "cu_seqlens", np.int32),
    ("packed", "topk_logprobs", np.float64),
]


@pytest.mark.parametrize(("layout", "field", "dtype"), DTYPE_CASES)
def test_wrong_dtype(tmp_path, layout, field, dtype):
    tensors, meta = base_files(layout)
    tensors[field] = tensors[field].astype(dtype)
    err = expect_error(tmp_path, tensors, meta, field, RolloutDtypeError)
    assert isinstance(err, TypeError)


CU_CASES = [
    ("start at 0", lambda cu: cu + 1),
    ("non-decreasing", lambda cu: np.array([0, 9, 5, 12, 17, 24, 25])),
    ("end at N", lambda cu: np.append(cu[:-1], cu[-1] - 1)),
    ("end at N", lambda cu: np.append(cu[:-1], cu[-1] + 3)),
    ("(B + 1,)", lambda cu: cu[:0]),
]


@pytest.mark.parametrize(("what", "change"), CU_CASES)
def test_bad_cu_seqlens(tmp_path, what, change):
    tensors, meta = base_files("packed")
    tensors["cu_seqlens"] = change(tensors["cu_seqlens"]).astype(np.int64)
    err = expect_error(tmp_path, tensors, meta, "cu_seqlens")
    assert what in str(err)


def test_cu_seqlens_with_wrong_number_of_sequences(tmp_path):
    tensors, meta = base_files("packed")
    tensors["cu_seqlens"] = tensors["cu_seqlens"][1:] - tensors["cu_seqlens"][1]  # B - 1 seqs
    tensors["cu_seqlens"][-1] = tensors["entropy"].shape[0]
    expect_error(tmp_path, tensors, meta, "rewards")


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_mask_shape_mismatch(tmp_path, layout):
    tensors, meta = base_files(layout)
    n = tensors["entropy"].shape[0]
    tensors["mask"] = np.ones((n + 1,) + tensors["entropy"].shape[1:], dtype=bool)
    expect_error(tmp_path, tensors, meta, "mask")
    if layout == "padded":
        tensors["mask"] = np.ones(tensors["entropy"].shape[::-1], dtype=bool)
        expect_error(tmp_path, tensors, meta, "mask")


@pytest.mark.parametrize("field", ["mask", "correct"])
def test_uint8_flags_must_be_0_or_1(tmp_path, field):
    tensors, meta = base_files("padded")
    flags = tensors[field].astype(np.uint8)
    flags.flat[0] = 2
    tensors[field] = flags
    err = expect_error(tmp_path, tensors, meta, field)
    assert "0/1" in str(err)
    tensors[field] = np.minimum(flags, 1)  # uint8 0/1 is fine
    load_rollouts(write_raw(tmp_path / "ok.safetensors", tensors, meta))


def test_unknown_field(tmp_path):
    tensors, meta = base_files("padded")
    tensors["values"] = tensors["entropy"]
    expect_error(tmp_path, tensors, meta, "values")


METADATA_CASES = [
    ("format_version", lambda m: m.pop("format_version")),
    ("format_version", lambda m: m.update(format_version="99")),
    ("format", lambda m: m.update(format="something.else")),
    ("layout", lambda m: m.update(layout="packed")),
    ("prompts", lambda m: m.update(prompts="[not json")),
    ("prompts", lambda m: m.update(prompts=json.dumps({"a": 1}))),
    ("group", lambda m: m.update(prompts=json.dumps(["only one prompt"]))),
    ("answers", lambda m: m.update(answers=json.dumps(["1", "2"]))),
    ("answers", lambda m: m.update(answers=json.dumps([1, 2, 3, 4, 5, 6]))),
    ("temperature", lambda m: m.update(temperature="0")),
    ("temperature", lambda m: m.update(temperature="hot")),
    ("vocab_size", lambda m: m.update(vocab_size="many")),
]


@pytest.mark.parametrize(("field", "change"), METADATA_CASES)
def test_bad_metadata(tmp_path, field, change):
    tensors, meta = base_files("padded")
    change(meta)
    expect_error(tmp_path, tensors, meta, field)


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"definitely not safetensors")
    with pytest.raises(RolloutFormatError, match="safetensors"):
        load_rollouts(path)
    with pytest.raises(FileNotFoundError):
        load_rollouts(tmp_path / "absent.safetensors")


def test_constructor_errors_name_the_field():
    buf = padded_buffer()
    good = {name: getattr(buf, name) for name in buf.tensors()}
    with pytest.raises(RolloutFormatError, match="layout"):
        RolloutBuffer(layout="ragged", **good)
    with pytest.raises(RolloutDtypeError, match="token_ids"):
        RolloutBuffer(layout="padded", **{**good, "token_ids": good["token_ids"] * 0.5})
    with pytest.raises(RolloutFormatError, match="cu_seqlens"):
        RolloutBuffer(layout="packed", **good)
    with pytest.raises(RolloutFormatError, match="mask"):
        RolloutBuffer(layout="padded", **{**good, "mask": None})
    with pytest.raises(RolloutFormatError, match="metadata"):
        RolloutBuffer(layout="padded", **good, metadata={"model": 3})


# ---- atomic saving ---------------------------------------------------------------------------


def leftovers(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_saved_file_has_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = save_rollouts(padded_buffer(), tmp_path / "r.safetensors")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "r.safetensors"

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(stnp, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_rollouts(padded_buffer(), target)
    assert leftovers(tmp_path) == []


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "r.safetensors"
    save_rollouts(padded_buffer(seed=1), target)
    before = target.read_bytes()

    def interrupted(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(stnp, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_rollouts(padded_buffer(seed=2), target)
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == ["r.safetensors"]


def test_malformed_buffer_is_not_written(tmp_path):
    buf = padded_buffer()
    buf.logprob = buf.logprob[:, :-1]  # broken after construction
    with pytest.raises(RolloutFormatError, match="logprob"):
        save_rollouts(buf, tmp_path / "r.safetensors")
    with pytest.raises(ValueError, match="ids_dtype"):
        save_rollouts(padded_buffer(), tmp_path / "r.safetensors", ids_dtype="int16")
    assert leftovers(tmp_path) == []


# ---- the generator's answer extraction (no model needed) -------------------------------------


def test_make_rollouts_extracts_the_last_number():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "make_rollouts.py"
    spec = importlib.util.spec_from_file_location("make_rollouts", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports transformers only when generating
    extract = module.extract_answer
    assert extract("The answer to 3 + 4 is 7.") == "7"
    assert extract("15 - 43 - 75 = -103") == "-103"
    assert extract("It is 1,024 in total") == "1024"
    assert extract("x = 2.50, so") == "2.50"
    assert extract("<answer>12</answer> but 13") == "12"
    assert extract("so \\boxed{42}. Check: 6 * 7") == "42"
    assert extract("no digits here") is None
