"""Rollout buffers on disk: entcore's safetensors format, its loader and its saver.

A *rollout buffer* is what an RLVR trainer holds after sampling: the response tokens of ``B``
sequences (``G`` samples for each of several prompts), with per-token statistics of the policy
that sampled them and one verifier reward per sequence. entcore stores it as **one safetensors
file** (https://github.com/huggingface/safetensors): named tensors plus a string-to-string
metadata header. The tensor names, shapes and meanings are the buffer fields of the spec
(``rollout.md`` §0.1), so a loaded buffer feeds every ``entcore`` rollout function unchanged.

Quick use::

    from entcore.io import default_rollouts_path, load_rollouts

    buf = load_rollouts(default_rollouts_path())  # 256 real SmolLM2 rollouts, shipped with entcore
    buf.entropy, buf.mask, buf.rewards, buf.group  # NumPy arrays
    packed = buf.to_packed()  # flat (N,) arrays and cu_seqlens

Layouts
-------
Token fields come in one of two layouts (``conventions.md``); the file holds exactly one:

* **padded**: token arrays ``(B, T)``, responses left-aligned (column ``t`` is response token
  ``t``, as verl ``responses`` and TRL ``completion_ids``), with a ``mask`` ``(B, T)`` that is
  true on valid tokens. There is no ``cu_seqlens`` tensor.
* **packed**: the valid tokens of all sequences concatenated, token arrays ``(N,)``, and
  ``cu_seqlens`` (int64, ``(B + 1,)``): sequence ``b`` is ``[cu_seqlens[b], cu_seqlens[b + 1])``
  (the flash-attention varlen layout). ``cu_seqlens`` starts at 0, never decreases and ends at
  ``N``. A ``mask`` ``(N,)`` is optional (holes inside a sequence, e.g. tool-output tokens);
  without it every packed token is valid.

The layout is told by the tensors (``cu_seqlens`` present: packed) and repeated in the metadata
key ``layout``.

Tensors
-------
``B`` sequences, ``T`` padded length, ``N`` packed tokens, ``K`` top-k width (20 in the shipped
buffer; any ``K >= 1`` is accepted, the same for both top-k tensors). "token shape" is ``(B, T)``
padded or ``(N,)`` packed.

================  ==================  ==================  =========================================
name              shape               dtype in the file   meaning
================  ==================  ==================  =========================================
``entropy``       token shape         float32             ``H_t`` in nats of the sampling
                                                          distribution ``softmax(z / T_s)`` (``T_s``
                                                          = metadata ``temperature``), full vocab
``logprob``       token shape         float32             log-prob of the sampled token under it
``token_ids``     token shape         int64 or int32      the sampled token ``y_t``
``topk_logprobs`` token shape + (K,)  float32             the K largest log-probs of the position,
                                                          descending, normalised over the full
                                                          vocabulary (``-inf``: absent entry)
``topk_ids``      token shape + (K,)  int64 or int32      their token ids
``rewards``       (B,)                float32             ``R_i``, the verifier's reward
``correct``       (B,)                bool or uint8 (0/1) verifier outcome
``group``         (B,)                int64 or int32      prompt id ``g(i)`` (samples of one prompt
                                                          share it)
``mask``          (B, T) / (N,)       bool or uint8 (0/1) valid response tokens (required padded,
                                                          optional packed)
``cu_seqlens``    (B + 1,)            int64               packed layout only
================  ==================  ==================  =========================================

Optional tensors of ``rollout.md`` §0.1, checked the same way when present:
``old_logprob``, ``ref_logprob``, ``advantages`` (token shape, float32) and ``step_index``,
``micro_batch`` (``(B,)``, int64 or int32). Any other tensor name is an error.

Integer ids stored as int32 (half the bytes) are widened exactly to int64 on load; ``mask`` and
``correct`` stored as uint8 become bool. In memory a :class:`RolloutBuffer` therefore always holds
float32 token statistics, int64 ids and bool masks.

Padding. Positions where the mask is false carry no information and never enter a statistic.
:meth:`RolloutBuffer.to_padded` fills them with ``0`` (``entropy``, ``logprob``, ids,
``topk_ids``) and with a point mass in ``topk_logprobs`` (``[0, -inf, ..., -inf]``, entropy 0), so
that top-k functions (``entcore.topk_entropy_bounds``) accept the whole padded array. The
``topk_logprobs`` row of a valid token is consistent with its ``entropy``:
``topk_entropy_bounds(topk_logprobs, V).lower <= entropy <= .upper`` (``token.md`` §7).

Metadata
--------
The safetensors header holds strings only; structured values are JSON.

=====================  ========  ==============================================================
key                    required  value
=====================  ========  ==============================================================
``format``             no        ``"entcore.rollouts"`` (written by :func:`save_rollouts`)
``format_version``     yes       ``"1"``
``entcore_version``    no        entcore version that wrote the file (written by the saver)
``layout``             no        ``"padded"`` or ``"packed"``; must agree with the tensors
``model``              no        the policy that sampled, e.g. ``"SmolLM2-135M-Instruct"``
``temperature``        no        sampling temperature ``T_s`` as a decimal string, e.g. ``"1.0"``
``vocab_size``         no        ``V`` (decimal string), for ``topk_entropy_bounds``
``dataset``            no        the prompt source, e.g. a reasoning-gym generator name
``dataset_seed``       no        its seed (decimal string)
``prompts``            no        JSON list of strings: ``prompts[g]`` is the prompt of group ``g``
                                 (every ``group`` id must index it)
``answers``            no        JSON list of ``B`` strings or ``null``: the answer extracted from
                                 each completion and given to the verifier
=====================  ========  ==============================================================

Writers may add further string keys (the shipped buffer records, among others,
``oracle_answers``, ``max_new_tokens``, ``eos_token_id``, ``sampling_seed``, ``answer_extraction``
and ``generator``); they are kept in :attr:`RolloutBuffer.metadata` and written back unchanged.

Errors
------
Every malformed file or buffer raises :class:`RolloutFormatError` (a ``ValueError``), whose
message names the field and what was expected: a file that is not safetensors, a missing or
unknown field, a wrong shape, ``cu_seqlens`` not starting at 0 / decreasing / not ending at
``N``, a mask of another shape than the token arrays, non-0/1 values in a uint8 ``mask`` or
``correct``, group ids outside ``prompts``, bad metadata. Wrong dtypes raise
:class:`RolloutDtypeError`, which is both a ``RolloutFormatError`` and a ``TypeError``.

Saving is atomic: :func:`save_rollouts` checks the buffer, writes a temporary file in the target
folder and moves it over the target with ``os.replace``; on any failure the temporary file is
removed and an existing target is left untouched.

The shipped buffer
------------------
:func:`default_rollouts_path` is ``entcore/data/rollouts_smollm2.safetensors``: real samples of
SmolLM2-135M-Instruct (temperature 1.0, no top-p/top-k) on reasoning-gym problems, made by
``examples/make_rollouts.py``; its metadata records the exact settings. Its tokenizer is
:func:`default_tokenizer_path` (``tokenizer.json`` for the ``tokenizers`` package).

Reading files needs the ``safetensors`` package (``pip install safetensors``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RolloutBuffer",
    "RolloutDtypeError",
    "RolloutFormatError",
    "default_rollouts_path",
    "default_tokenizer_path",
    "load_rollouts",
    "save_rollouts",
]

FORMAT_NAME = "entcore.rollouts"
FORMAT_VERSION = "1"

DEFAULT_ROLLOUTS = "rollouts_smollm2.safetensors"
DEFAULT_TOKENIZER = "smollm2_tokenizer.json"


class RolloutFormatError(ValueError):
    """A rollout file or buffer does not follow the format; the message names the field."""


class RolloutDtypeError(RolloutFormatError, TypeError):
    """A field has a dtype the format does not allow."""


# Field kinds. Token fields have the token shape, "topk" fields the token shape plus (K,),
# sequence fields (B,).
_FLOAT = "float32"
_INT = "int64 or int32"
_BOOL = "bool or uint8 (0/1)"

_TOKEN_FLOAT = ("entropy", "logprob")
_TOKEN_FLOAT_OPTIONAL = ("old_logprob", "ref_logprob", "advantages")
_SEQ_INT_OPTIONAL = ("step_index", "micro_batch")
_REQUIRED = (
    "entropy",
    "logprob",
    "token_ids",
    "topk_logprobs",
    "topk_ids",
    "rewards",
    "correct",
    "group",
)

# name -> (allowed dtypes in a file, description of the dtype)
_FILE_DTYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "entropy": (("F32",), _FLOAT),
    "logprob": (("F32",), _FLOAT),
    "token_ids": (("I64", "I32"), _INT),
    "topk_logprobs": (("F32",), _FLOAT),
    "topk_ids": (("I64", "I32"), _INT),
    "rewards": (("F32",), _FLOAT),
    "correct": (("BOOL", "U8"), _BOOL),
    "group": (("I64", "I32"), _INT),
    "mask": (("BOOL", "U8"), _BOOL),
    "cu_seqlens": (("I64",), "int64"),
    "old_logprob": (("F32",), _FLOAT),
    "ref_logprob": (("F32",), _FLOAT),
    "advantages": (("F32",), _FLOAT),
    "step_index": (("I64", "I32"), _INT),
    "micro_batch": (("I64", "I32"), _INT),
}
_KNOWN = tuple(_FILE_DTYPES)


@dataclass(eq=False)
class RolloutBuffer:
    """A rollout buffer in memory (format: this module's docstring).

    Construct it from NumPy arrays (or anything ``np.asarray`` takes) in either layout; the
    constructor converts benign dtypes (any float to float32, any integer to int64, 0/1 integers
    to bool) and checks shapes, raising :class:`RolloutFormatError` naming the field otherwise.
    Arrays are not copied when they already have the target dtype; treat them as read-only.
    """

    layout: str
    entropy: np.ndarray
    logprob: np.ndarray
    token_ids: np.ndarray
    topk_logprobs: np.ndarray
    topk_ids: np.ndarray
    rewards: np.ndarray
    correct: np.ndarray
    group: np.ndarray
    mask: np.ndarray | None = None
    cu_seqlens: np.ndarray | None = None
    old_logprob: np.ndarray | None = None
    ref_logprob: np.ndarray | None = None
    advantages: np.ndarray | None = None
    step_index: np.ndarray | None = None
    micro_batch: np.ndarray | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layout not in ("padded", "packed"):
            raise RolloutFormatError(f"layout: expected 'padded' or 'packed', got {self.layout!r}")
        for name in _TOKEN_FLOAT + ("topk_logprobs", "rewards"):
            setattr(self, name, _as_float32(name, getattr(self, name)))
        for name in _TOKEN_FLOAT_OPTIONAL:
            if getattr(self, name) is not None:
                setattr(self, name, _as_float32(name, getattr(self, name)))
        for name in ("token_ids", "topk_ids", "group"):
            setattr(self, name, _as_int64(name, getattr(self, name)))
        for name in _SEQ_INT_OPTIONAL:
            if getattr(self, name) is not None:
                setattr(self, name, _as_int64(name, getattr(self, name)))
        self.correct = _as_bool("correct", self.correct)
        if self.mask is not None:
            self.mask = _as_bool("mask", self.mask)
        if self.cu_seqlens is not None:
            self.cu_seqlens = _as_int64("cu_seqlens", self.cu_seqlens, exact="int64")
        if not isinstance(self.metadata, dict):
            raise RolloutFormatError(
                f"metadata: expected a dict of str to str, got {type(self.metadata).__name__}"
            )
        self.metadata = dict(self.metadata)
        self._check_shapes()
        _check_metadata(self.metadata, self.num_sequences, self.group, self.layout)

    def __repr__(self) -> str:
        extra = "".join(
            f", {key}={self.metadata[key]!r}"
            for key in ("model", "dataset")
            if key in self.metadata
        )
        return (
            f"RolloutBuffer(layout={self.layout!r}, sequences={self.num_sequences}, "
            f"tokens={self.num_tokens}, topk={self.topk_logprobs.shape[-1]}{extra})"
        )

    # ---- shapes -----------------------------------------------------------------------------

    def _check_shapes(self) -> None:
        entropy = self.entropy
        if self.layout == "padded":
            if self.cu_seqlens is not None:
                raise RolloutFormatError(
                    "cu_seqlens: the padded layout has no cu_seqlens (give layout='packed' for "
                    "flat (N,) token arrays)"
                )
            if entropy.ndim != 2:
                raise RolloutFormatError(
                    f"entropy: expected shape (B, T) in the padded layout, got {entropy.shape}"
                )
            if self.mask is None:
                raise RolloutFormatError("mask: missing; the padded layout needs a (B, T) mask")
            token_shape = entropy.shape
            token_desc = "(B, T)"
            b = entropy.shape[0]
        else:
            if self.cu_seqlens is None:
                raise RolloutFormatError(
                    "cu_seqlens: missing; the packed layout needs cu_seqlens (int64, (B + 1,))"
                )
            if entropy.ndim != 1:
                raise RolloutFormatError(
                    f"entropy: expected shape (N,) in the packed layout, got {entropy.shape}"
                )
            token_shape = entropy.shape
            token_desc = "(N,)"
            _check_cu_seqlens(self.cu_seqlens, entropy.shape[0])
            b = self.cu_seqlens.shape[0] - 1
        for name in ("logprob", "token_ids", "mask") + _TOKEN_FLOAT_OPTIONAL:
            value = getattr(self, name)
            if value is not None and value.shape != token_shape:
                raise RolloutFormatError(
                    f"{name}: expected shape {token_desc} = {token_shape} like entropy, "
                    f"got {value.shape}"
                )
        topk = self.topk_logprobs
        if topk.ndim != len(token_shape) + 1 or topk.shape[:-1] != token_shape:
            raise RolloutFormatError(
                f"topk_logprobs: expected shape {token_desc} + (K,) = {token_shape} + (K,), "
                f"got {topk.shape}"
            )
        if topk.shape[-1] < 1:
            raise RolloutFormatError("topk_logprobs: expected K >= 1 entries per token, got 0")
        if self.topk_ids.shape != topk.shape:
            raise RolloutFormatError(
                f"topk_ids: expected shape {topk.shape} like topk_logprobs, "
                f"got {self.topk_ids.shape}"
            )
        for name in ("rewards", "correct", "group") + _SEQ_INT_OPTIONAL:
            value = getattr(self, name)
            if value is not None and value.shape != (b,):
                raise RolloutFormatError(
                    f"{name}: expected shape (B,) = ({b},), one value per sequence, "
                    f"got {value.shape}"
                )

    # ---- properties ---------------------------------------------------------------------------

    @property
    def num_sequences(self) -> int:
        """``B``, the number of sequences (rows)."""
        if self.layout == "packed":
            assert self.cu_seqlens is not None
            return int(self.cu_seqlens.shape[0] - 1)
        return int(self.entropy.shape[0])

    @property
    def num_tokens(self) -> int:
        """Valid response tokens over all sequences (``N_valid``)."""
        if self.mask is None:
            return int(self.entropy.shape[0])
        return int(np.count_nonzero(self.mask))

    @property
    def lengths(self) -> np.ndarray:
        """Valid tokens per sequence, int64 ``(B,)``."""
        if self.layout == "padded":
            assert self.mask is not None
            return np.count_nonzero(self.mask, axis=1).astype(np.int64)
        assert self.cu_seqlens is not None
        if self.mask is None:
            return np.diff(self.cu_seqlens)
        counts = np.concatenate([[0], np.cumsum(self.mask, dtype=np.int64)])
        return counts[self.cu_seqlens[1:]] - counts[self.cu_seqlens[:-1]]

    @property
    def prompts(self) -> list[str] | None:
        """``metadata["prompts"]`` decoded: ``prompts[g]`` is the prompt of group ``g``."""
        raw = self.metadata.get("prompts")
        return None if raw is None else list(json.loads(raw))

    @property
    def answers(self) -> list[str | None] | None:
        """``metadata["answers"]`` decoded: the extracted answer of each sequence (or None)."""
        raw = self.metadata.get("answers")
        return None if raw is None else list(json.loads(raw))

    @property
    def vocab_size(self) -> int | None:
        """``metadata["vocab_size"]`` as an int, if recorded."""
        raw = self.metadata.get("vocab_size")
        return None if raw is None else int(raw)

    @property
    def temperature(self) -> float | None:
        """``metadata["temperature"]`` (the sampling temperature) as a float, if recorded."""
        raw = self.metadata.get("temperature")
        return None if raw is None else float(raw)

    def tensors(self) -> dict[str, np.ndarray]:
        """The fields present, by their file names (what :func:`save_rollouts` writes)."""
        out = {}
        for f in fields(self):
            if f.name in ("layout", "metadata"):
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return out

    # ---- layout conversion --------------------------------------------------------------------

    def to_packed(self) -> RolloutBuffer:
        """The same buffer in the packed layout (``self`` if already packed).

        Row ``b`` keeps columns ``0 .. last valid column`` (trailing padding dropped). When the
        kept tokens are all valid (responses without holes) the packed buffer has no mask;
        otherwise it keeps a ``(N,)`` mask marking the holes.
        """
        if self.layout == "packed":
            return self
        assert self.mask is not None
        b, t = self.mask.shape
        cols = np.arange(t)
        last = np.where(self.mask, cols[None, :] + 1, 0).max(axis=1, initial=0).astype(np.int64)
        keep = cols[None, :] < last[:, None]
        cu = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(last, out=cu[1:])
        packed = {name: value[keep] for name, value in self.tensors().items() if _is_token(name)}
        mask = packed.pop("mask")
        return replace(
            self,
            layout="packed",
            cu_seqlens=cu,
            mask=None if bool(mask.all()) else mask,
            metadata=_with_layout(self.metadata, "packed"),
            **packed,
        )

    def to_padded(self) -> RolloutBuffer:
        """The same buffer in the padded layout (``self`` if already padded).

        ``T`` is the longest sequence; padding is filled as the module docstring says (0, and a
        point mass in ``topk_logprobs``) with ``mask`` false.
        """
        if self.layout == "padded":
            return self
        assert self.cu_seqlens is not None
        b = self.num_sequences
        lengths = np.diff(self.cu_seqlens)
        t = int(lengths.max(initial=0))
        keep = np.arange(t)[None, :] < lengths[:, None]
        padded: dict[str, np.ndarray] = {}
        for name, value in self.tensors().items():
            if not _is_token(name):
                continue
            out = np.zeros((b, t) + value.shape[1:], dtype=value.dtype)
            if name == "topk_logprobs":
                out[..., 1:] = -np.inf
            out[keep] = value
            padded[name] = out
        if "mask" not in padded:
            padded["mask"] = keep
        return replace(
            self,
            layout="padded",
            cu_seqlens=None,
            metadata=_with_layout(self.metadata, "padded"),
            **padded,
        )


_SEQUENCE_FIELDS = ("rewards", "correct", "group", "cu_seqlens") + _SEQ_INT_OPTIONAL


def _is_token(name: str) -> bool:
    return name not in _SEQUENCE_FIELDS


def _with_layout(meta: dict[str, str], layout: str) -> dict[str, str]:
    return {**meta, "layout": layout} if "layout" in meta else dict(meta)


# ---- conversions and checks ------------------------------------------------------------------


def _as_array(name: str, value: Any) -> np.ndarray:
    if value is None:
        raise RolloutFormatError(f"{name}: missing (required field)")
    try:
        return np.asarray(value)
    except Exception as exc:  # any conversion failure is a format error
        raise RolloutFormatError(f"{name}: not convertible to an array ({exc})") from exc


def _as_float32(name: str, value: Any) -> np.ndarray:
    array = _as_array(name, value)
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise RolloutDtypeError(
            f"{name}: expected a float array (stored float32), got {array.dtype}"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_int64(name: str, value: Any, exact: str | None = None) -> np.ndarray:
    array = _as_array(name, value)
    if array.dtype.kind not in "iu":
        raise RolloutDtypeError(
            f"{name}: expected {exact or 'an integer array'}, got {array.dtype}"
        )
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise RolloutFormatError(f"{name}: values exceed the int64 range")
    return np.ascontiguousarray(array, dtype=np.int64)


def _as_bool(name: str, value: Any) -> np.ndarray:
    array = _as_array(name, value)
    if array.dtype == np.bool_:
        return np.ascontiguousarray(array)
    if array.dtype.kind not in "iu":
        raise RolloutDtypeError(f"{name}: expected bool or 0/1 integers, got {array.dtype}")
    if array.size and not np.isin(array, (0, 1)).all():
        raise RolloutFormatError(f"{name}: expected 0/1 values, found others")
    return array.astype(np.bool_)


def _check_cu_seqlens(cu: np.ndarray, n: int) -> None:
    if cu.ndim != 1 or cu.shape[0] < 1:
        raise RolloutFormatError(f"cu_seqlens: expected shape (B + 1,) with B >= 0, got {cu.shape}")
    if cu[0] != 0:
        raise RolloutFormatError(f"cu_seqlens: expected to start at 0, starts at {int(cu[0])}")
    steps = np.diff(cu)
    if steps.size and steps.min() < 0:
        i = int(np.argmin(steps >= 0))
        raise RolloutFormatError(
            f"cu_seqlens: expected non-decreasing offsets, cu_seqlens[{i + 1}] = {int(cu[i + 1])} "
            f"< cu_seqlens[{i}] = {int(cu[i])}"
        )
    if cu[-1] != n:
        raise RolloutFormatError(
            f"cu_seqlens: expected to end at N = {n} (packed token count), ends at {int(cu[-1])}"
        )


def _check_metadata(meta: dict[str, str], b: int, group: np.ndarray, layout: str) -> None:
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise RolloutFormatError(
                f"metadata: expected str keys and str values, got {key!r}: {type(value).__name__}"
            )
    if "layout" in meta and meta["layout"] != layout:
        raise RolloutFormatError(
            f"metadata 'layout': says {meta['layout']!r} but the tensors are {layout}"
        )
    if "prompts" in meta:
        prompts = _json_list("prompts", meta["prompts"])
        if not all(isinstance(p, str) for p in prompts):
            raise RolloutFormatError("metadata 'prompts': expected a JSON list of strings")
        if group.size and (group.min() < 0 or group.max() >= len(prompts)):
            raise RolloutFormatError(
                f"group: ids must index metadata 'prompts' (0 <= group < {len(prompts)}), "
                f"found ids in [{int(group.min())}, {int(group.max())}]"
            )
    if "answers" in meta:
        answers = _json_list("answers", meta["answers"])
        if len(answers) != b:
            raise RolloutFormatError(
                f"metadata 'answers': expected B = {b} entries (one per sequence), "
                f"got {len(answers)}"
            )
        if not all(a is None or isinstance(a, str) for a in answers):
            raise RolloutFormatError("metadata 'answers': expected strings or null")
    if "temperature" in meta:
        try:
            temperature = float(meta["temperature"])
        except ValueError:
            temperature = float("nan")
        if not 0 < temperature < float("inf"):
            raise RolloutFormatError(
                f"metadata 'temperature': expected a positive number, got {meta['temperature']!r}"
            )
    for key in ("vocab_size", "dataset_seed"):
        if key in meta:
            try:
                int(meta[key])
            except ValueError:
                raise RolloutFormatError(
                    f"metadata '{key}': expected an integer, got {meta[key]!r}"
                ) from None


def _json_list(key: str, raw: str) -> list[Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RolloutFormatError(f"metadata '{key}': not valid JSON ({exc})") from None
    if not isinstance(value, list):
        raise RolloutFormatError(f"metadata '{key}': expected a JSON list")
    return value


def _safetensors_numpy() -> Any:
    try:
        import safetensors.numpy as stnp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "entcore.io needs the safetensors package: pip install safetensors"
        ) from exc
    return stnp


# ---- public functions ------------------------------------------------------------------------


def load_rollouts(path: str | os.PathLike[str]) -> RolloutBuffer:
    """Read a rollout buffer (either layout) from the safetensors file ``path``.

    Checks names, dtypes, shapes, ``cu_seqlens`` and metadata; raises
    :class:`RolloutFormatError` (:class:`RolloutDtypeError` for dtypes) naming the field.
    """
    stnp = _safetensors_numpy()
    path = os.fspath(path)
    try:
        handle = stnp.safe_open(path, framework="numpy")
    except FileNotFoundError:
        raise
    except Exception as exc:  # SafetensorError and friends: not a safetensors file
        if not os.path.exists(path):
            raise FileNotFoundError(path) from exc
        raise RolloutFormatError(f"{path}: not a readable safetensors file ({exc})") from exc
    with handle as f:
        meta = dict(f.metadata() or {})
        names = list(f.keys())
        version = meta.get("format_version")
        if version is None:
            raise RolloutFormatError(
                f"{path}: metadata 'format_version' missing: not an entcore rollout file "
                "(write it with entcore.io.save_rollouts)"
            )
        if meta.get("format", FORMAT_NAME) != FORMAT_NAME:
            raise RolloutFormatError(
                f"{path}: metadata 'format' is {meta['format']!r}, expected {FORMAT_NAME!r}"
            )
        if version != FORMAT_VERSION:
            raise RolloutFormatError(
                f"{path}: metadata 'format_version' is {version!r}; this entcore reads "
                f"{FORMAT_VERSION!r}"
            )
        unknown = sorted(set(names) - set(_KNOWN))
        if unknown:
            raise RolloutFormatError(
                f"{unknown[0]}: unknown field in {path}; known fields: {', '.join(_KNOWN)}"
            )
        for name in _REQUIRED:
            if name not in names:
                desc = _FILE_DTYPES[name][1]
                raise RolloutFormatError(f"{name}: missing from {path} (required, {desc})")
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            allowed, desc = _FILE_DTYPES[name]
            dtype = f.get_slice(name).get_dtype()
            if dtype not in allowed:
                raise RolloutDtypeError(
                    f"{name}: expected dtype {desc} in the file, got {dtype} "
                    "(safetensors dtype code)"
                )
            arrays[name] = f.get_tensor(name)
    layout = "packed" if "cu_seqlens" in arrays else "padded"
    if layout == "padded" and "mask" not in arrays:
        raise RolloutFormatError(
            f"mask: missing from {path}; a file without cu_seqlens is padded and needs a (B, T) "
            "mask (or add cu_seqlens for the packed layout)"
        )
    return RolloutBuffer(layout=layout, metadata=meta, **arrays)


def save_rollouts(
    buffer: RolloutBuffer, path: str | os.PathLike[str], *, ids_dtype: str = "int64"
) -> Path:
    """Write ``buffer`` to ``path`` (a safetensors file) in its own layout, atomically.

    The buffer is checked first; the file is written to a temporary name in the same folder and
    moved over ``path`` with ``os.replace``, so readers see either the old file or the complete
    new one. ``format``, ``format_version``, ``entcore_version`` and ``layout`` are set in the
    metadata; other keys are written as given. ``ids_dtype="int32"`` stores ``token_ids`` and
    ``topk_ids`` as int32 (half the bytes; they are widened back on load). Returns the path
    written.
    """
    if not isinstance(buffer, RolloutBuffer):
        raise TypeError(f"buffer: expected a RolloutBuffer, got {type(buffer).__name__}")
    if ids_dtype not in ("int64", "int32"):
        raise ValueError(f"ids_dtype: expected 'int64' or 'int32', got {ids_dtype!r}")
    # Re-run the constructor's checks (fields may have been reassigned since).
    buffer = replace(buffer)
    stnp = _safetensors_numpy()
    from entcore import __version__

    meta = dict(buffer.metadata)
    meta.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        entcore_version=__version__,
        layout=buffer.layout,
    )
    tensors = {name: np.ascontiguousarray(value) for name, value in buffer.tensors().items()}
    if ids_dtype == "int32":
        info = np.iinfo(np.int32)
        for name in ("token_ids", "topk_ids"):
            ids = tensors[name]
            if ids.size and (ids.min() < info.min or ids.max() > info.max):
                raise RolloutFormatError(f"{name}: values do not fit ids_dtype='int32'")
            tensors[name] = ids.astype(np.int32)
    target = Path(os.fspath(path))
    folder = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        stnp.save_file(tensors, tmp, metadata=meta)
        _chmod_like_new_file(tmp)  # mkstemp and safetensors both create files 0600
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def _chmod_like_new_file(path: str) -> None:
    """Give a ``mkstemp`` file (mode 0600) the mode ``open()`` would have given it."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _data_file(name: str) -> Path:
    ref = resources.files("entcore").joinpath("data", name)
    path = Path(str(ref))
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: not found in the installed entcore package (expected at {path})"
        )
    return path


def default_rollouts_path() -> Path:
    """The shipped buffer: real SmolLM2-135M-Instruct rollouts (``entcore/data``)."""
    return _data_file(DEFAULT_ROLLOUTS)


def default_tokenizer_path() -> Path:
    """``tokenizer.json`` of the shipped buffer's model, for ``tokenizers.Tokenizer.from_file``."""
    return _data_file(DEFAULT_TOKENIZER)
