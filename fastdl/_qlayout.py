"""Converting 2..4-bit codes between the rows layout and the LUT layout.

The compiled converters when the Cython backend loads, else the NumPy reference
(both give the same bytes; tests compare them).
"""
from __future__ import annotations

from fastdl._backends.numpy import quant_lut as _np_lut


def _impl():
    try:
        from fastdl._backends.cython import _qlut
    except ImportError:
        return _np_lut
    return _qlut


def lut_shape(d_in: int, d_out: int, bits: int) -> tuple:
    return tuple(_np_lut.lut_shape(d_in, d_out, bits))


def to_lut(data, d_in: int, d_out: int, bits: int, nf4: bool):
    return _impl().rows_to_lut(data, d_in, d_out, bits, nf4)


def to_rows(data, d_in: int, d_out: int, bits: int, nf4: bool):
    return _impl().lut_to_rows(data, d_in, d_out, bits, nf4)
