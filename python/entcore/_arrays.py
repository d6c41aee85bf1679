"""Input checks and dtype plumbing of the NumPy faces (``conventions.md``, Inputs and errors).

Half-precision arrays reach the Rust core as their raw 16-bit patterns (a zero-copy ``uint16``
view) together with a kind tag, so that no float32 copy of a large input is ever made.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

NAN_POLICIES = ("raise", "propagate")

_KIND_OF_DTYPE = {
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
    np.dtype(np.float16): "f16",
    np.dtype(ml_dtypes.bfloat16): "bf16",
}


def float_kind(name: str, array: np.ndarray) -> str:
    """The core's tag for a float dtype; ``TypeError`` naming ``name`` for any other dtype."""
    kind = _KIND_OF_DTYPE.get(array.dtype)
    if kind is None:
        raise TypeError(
            f"{name}: expected float32, float16, bfloat16 or float64, got dtype {array.dtype}"
        )
    return kind


def as_core_float(name: str, x: Any, *, min_ndim: int = 1) -> tuple[np.ndarray, str]:
    """``x`` as a C-contiguous array the core reads directly, plus its kind tag.

    Contiguous inputs are not copied; float16/bfloat16 become ``uint16`` views of the same memory.
    """
    array = _as_array(name, x)
    kind = float_kind(name, array)
    if array.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected at least {min_ndim} dimension(s), got shape {array.shape}"
        )
    array = np.ascontiguousarray(array)
    if kind in ("f16", "bf16"):
        array = array.view(np.uint16)
    return array, kind


def as_index_array(name: str, x: Any) -> np.ndarray:
    """An int64 C-contiguous copy-if-needed of an integer array; ``TypeError`` for other dtypes."""
    array = _as_array(name, x)
    if array.dtype.kind not in "iu" or array.dtype == np.uint64:
        raise TypeError(f"{name}: expected an int32 or int64 array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64).reshape(array.shape)


def row_temperatures(
    temperature: Any, row_shape: tuple[int, ...]
) -> tuple[float, np.ndarray | None]:
    """Split ``temperature`` into a scalar or a flat float64 array with one value per row.

    Every value must be finite and > 0 (``token.md`` §1, Decision: raise instead of clamping).
    """
    if np.ndim(temperature) == 0:
        value = float(temperature)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"temperature: expected a finite value > 0, got {value}")
        return value, None
    values = np.asarray(temperature, dtype=np.float64)
    try:
        values = np.broadcast_to(values, row_shape)
    except ValueError:
        raise ValueError(
            f"temperature: shape {values.shape} does not broadcast to the row shape {row_shape}"
        ) from None
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError("temperature: every value must be finite and > 0")
    return 1.0, np.ascontiguousarray(values.reshape(-1))


def check_nan_policy(nan_policy: str) -> bool:
    """``True`` when NaN rows propagate, ``False`` when NaN raises."""
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy: expected one of {NAN_POLICIES}, got {nan_policy!r}")
    return nan_policy == "propagate"


def _as_array(name: str, x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__") and type(x).__module__.startswith("torch"):
        raise TypeError(f"{name}: got a torch tensor; use entcore.torch for tensors")
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}") from err
