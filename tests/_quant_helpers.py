"""Shared by the tests/test_quant_*.py modules split from one: independent unpacking of the
packed nibble format, the expected scales and dequantized weights, seeded weights and the
list of quantization formats every module runs.
"""

import contextlib

import numpy as np

from fastdl.testing import rng_for


def nibble_positions(d_in):
    """(byte, shift) of each of the d_in values of a packed row, from the docstring:
    groups of 64; in a group of g values with h = ceil(g/2) (32 for a full group) value i
    sits in byte i (low nibble) when i < h, else in byte i - h (high nibble)."""
    t = np.arange(d_in)
    g, i = np.divmod(t, 64)
    size = np.minimum(64, d_in - 64 * g)
    h = (size + 1) // 2
    high = i >= h
    return 32 * g + np.where(high, i - h, i), np.where(high, 4, 0)


def unpack(data, d_in):
    """uint8 (rows, row_bytes) -> int64 (rows, d_in) codes."""
    byte, shift = nibble_positions(d_in)
    return (data[:, byte].astype(np.int64) >> shift) & 15


def codes_of(q):
    """The stored code of every weight, (d_in, d_out) int64."""
    if q.bits <= 4:
        return unpack(q.data, q.shape[0]).T
    return q.data.T.astype(np.int64)


def ints_of(q):
    """absmax: the signed integer q of every weight."""
    assert q.scheme == "absmax"
    c = codes_of(q)
    return c - 2 ** (q.bits - 1) if q.bits <= 4 else c


def weights(key, shape, *, spread=2.0):
    """float32 weights with block magnitudes spread over 10**±spread."""
    rng = rng_for("w", *key, shape)
    w = rng.standard_normal(shape) * 10.0 ** rng.uniform(-spread, spread, (shape[0], 1))
    return w.astype(np.float32)


FORMATS = [
    dict(bits=8, block_size=None, rounding="floor"),
    dict(bits=8, block_size=64),
    dict(bits=7, block_size=5, rounding="floor"),
    dict(bits=6, block_size=3),
    dict(bits=5, block_size=100, rounding="floor"),
    dict(bits=4, block_size=32),
    dict(bits=4, block_size=None),
    dict(bits=3, block_size=2, rounding="floor"),
    dict(bits=2, block_size=128),
    dict(bits=4, scheme="nf4"),
    dict(bits=4, scheme="nf4", block_size=3),
    dict(bits=4, scheme="nf4", double_quant=True),
    dict(bits=8, block_size=64, double_quant=True),
    dict(bits=3, block_size=7, rounding="floor", double_quant=True),
    dict(bits=4, scheme="nf4", block_size=None),       # one NF4 scale for the tensor
    dict(bits=6),                                      # the default block size
]


def fmt_id(kw):
    return "-".join(f"{k}={v}" for k, v in kw.items())


def stored_arrays(q):
    names = ["data", "scale_codes", "scale_scales", "scale_mean"] if q.double_quant else \
        ["data", "scales"]
    return {n: getattr(q, n) for n in names}


def assert_same(a, b):
    for n in ("shape", "bits", "scheme", "block_size", "rounding", "double_quant", "nblocks",
              "nbytes"):
        assert getattr(a, n) == getattr(b, n), n
        assert type(getattr(a, n)) is type(getattr(b, n)), n
    for n in ("data", "scales", "scale_codes", "scale_scales", "scale_mean"):
        x, y = getattr(a, n), getattr(b, n)
        if x is None:
            assert y is None, n
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, n
        assert x.tobytes() == y.tobytes(), n
        assert not y.flags.writeable, n


W = np.ones((8, 3), np.float32)


@contextlib.contextmanager
def quant_params(**kw):
    """The Cython quantization kernels' tuning constants set to ``kw`` inside the block."""
    from fastdl._backends.cython import _quant
    old = _quant.set_params(**kw)
    try:
        yield
    finally:
        _quant.set_params(**old)
