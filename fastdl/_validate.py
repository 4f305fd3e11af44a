"""Shared argument checks; errors name the argument, what was expected and what came."""
from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class MissingInstructionError(ValueError):
    """An opt-in path needs an instruction this CPU lacks, or that the pinned SIMD level
    (``fastdl.testing.simd``, ``FASTDL_SIMD``) keeps off; the message names it."""


def compute_dtype(dtype) -> np.dtype:
    """The dtype the kernels compute in for data of ``dtype``: float32 for float16
    (as torch computes float16), else ``dtype`` itself; parameters (a norm's
    weight and bias) and accumulated scores (beam scores) are kept in it."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def reject_masked(x, name: str) -> None:
    """Masked arrays are refused: the kernels read every element, so the mask would be
    silently ignored (masked entries would count as data)."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} must not be a numpy masked array: its mask would be ignored; "
                        f"pass {name}.filled(value) to choose what masked entries become, or "
                        f"{name}.data to use the values underneath")


def plain_array(x, name: str = "x") -> np.ndarray:
    """``x`` as exactly ``numpy.ndarray``: other ndarray subclasses (``np.matrix``,
    ``np.memmap``, user subclasses) become a base-class view of the same memory (no copy),
    so their overridden operators cannot change the results; masked arrays are refused
    (``reject_masked``); anything else goes through ``np.asarray``."""
    reject_masked(x, name)
    if type(x) is np.ndarray:
        return x
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - ragged lists and the like
        raise TypeError(f"{name} must be array-like of real numbers; "
                        f"could not convert {type(x).__name__}: {exc}") from None


def as_float_array(x, name: str = "x", *, keep_half: bool = False) -> np.ndarray:
    """``x`` as a float32/float64 ``numpy.ndarray`` (no copy when it already is one).

    Integers and bools are computed in float64, float16 in float32 (or kept
    float16 with ``keep_half``, for ops whose kernels read float16 directly);
    complex, object, string and datetime inputs are rejected.  ndarray subclasses
    become a plain ndarray view and masked arrays are a TypeError (see ``plain_array``).
    """
    arr = plain_array(x, name)
    kind = arr.dtype.kind
    if arr.dtype in FLOAT_DTYPES:
        return arr
    if keep_half and kind == "f" and arr.dtype.newbyteorder("=") == np.float16:
        return arr if arr.dtype.isnative else arr.astype(np.float16)
    if kind == "f" and arr.dtype.newbyteorder("=") in FLOAT_DTYPES:
        return arr.astype(arr.dtype.newbyteorder("="))     # non-native byte order
    if kind == "f" and arr.dtype.itemsize < 4:
        return arr.astype(np.float32)
    if kind in "biu":
        return arr.astype(np.float64)
    if kind == "f":  # longdouble
        return arr.astype(np.float64)
    raise TypeError(f"{name} must have a real numeric dtype (float32, float64, integer or "
                    f"bool), got dtype {arr.dtype}")


def check_finite(a: np.ndarray, name: str) -> None:
    """ValueError naming the first non-finite entry of ``a`` and its index."""
    # a NaN or an infinity makes the sum non-finite, so a finite sum clears the array
    # without a mask as large as it (only a sum that overflows looks further)
    if a.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.add.reduce(a, axis=None)):
                return
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        idx = tuple(int(i) for i in bad)
        raise ValueError(f"{name} must be finite, got {a[idx]} at index {idx}")


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None,
              maximum_text: str | None = None) -> int:
    """An int (not bool) within [minimum, maximum]; ``maximum_text`` says the bound in
    the error message when the bare number would not explain it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum_text or maximum}, got {value}")
    return value


def check_flag(value, name: str) -> bool:
    """A bool (Python or NumPy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_real(value, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """A finite real number (not bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def check_param(value, name: str, shape: tuple, dtype) -> np.ndarray | None:
    """An optional per-feature array of exactly ``shape``, as a C-contiguous ``dtype`` array."""
    if value is None:
        return None
    arr = as_float_array(value, name)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b may share memory (exact check, conservative if too hard)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10_000))
    except np.exceptions.TooHardError:
        return True


def check_out(out, name: str, shape: tuple, dtype, inputs=()) -> np.ndarray | None:
    """Validate an ``out=`` array: ndarray, exact shape and dtype, writeable, and
    not overlapping any of ``inputs`` (kernels read inputs while writing out).
    Returns a plain ndarray (a view of a subclass's memory); masked arrays are refused."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    out = plain_array(out, name)     # a subclass is written through a plain view of its memory
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    for arr in inputs:
        if arr is not None and overlaps(out, arr):
            raise ValueError(f"{name} must not overlap the input arrays")
    return out
