"""Shared argument checks; errors name the argument, what was expected and what came."""
from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(x, name: str = "x") -> np.ndarray:
    """``x`` as a float32/float64 ndarray (no copy when it already is one).

    Integers and bools are computed in float64, float16 in float32; complex,
    object, string and datetime inputs are rejected.
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - ragged lists and the like
            raise TypeError(f"{name} must be array-like of real numbers; "
                            f"could not convert {type(x).__name__}: {exc}") from None
    kind = arr.dtype.kind
    if arr.dtype in FLOAT_DTYPES:
        return arr
    if kind == "f" and arr.dtype.itemsize < 4:
        return arr.astype(np.float32)
    if kind in "biu":
        return arr.astype(np.float64)
    if kind == "f":  # longdouble
        return arr.astype(np.float64)
    raise TypeError(f"{name} must have a real numeric dtype (float32, float64, integer or "
                    f"bool), got dtype {arr.dtype}")


def check_int(value, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
