"""Argument checks the quantized kernel modules (_qlut, _qint8, _qbf16) share: each
raises TypeError / ValueError naming the argument before any kernel reads it."""
from __future__ import annotations

import numbers

import numpy as np


def what(a) -> str:
    """How a received value reads in a message: type, dtype, shape."""
    return f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}".rstrip()


def array(a, name: str, dtype, shape: tuple, writeable: bool = False):
    """``a`` when it is a C-contiguous ndarray of exactly ``dtype`` and ``shape``."""
    if not isinstance(a, np.ndarray) or a.dtype != dtype:
        raise TypeError(f"{name} must be a {np.dtype(dtype)} numpy.ndarray, got {what(a)}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {a.strides}")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return a


def dim(v, name: str) -> int:
    """A dimension: an int in [1, 2**40] (bools refused)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) \
            or not 1 <= v <= 2 ** 40:
        raise ValueError(f"{name} must be an int in [1, 2**40], got {v!r}")
    return int(v)
