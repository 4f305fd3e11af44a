"""The lut weight layout and its lookup-table matmul (fastdl/_backends/cython/_qlut.pyx,
the NumPy definition fastdl/_backends/numpy/quant_lut.py): the layout against its
description, C == NumPy, exact round trips, accuracy against float64 x @ dequantize(q)
within the float32 rounding of the method, and the argument checks."""
import numpy as np
import pytest

from fastdl.quant import quantize, row_bytes
from fastdl.testing import rng_for
from fastdl._backends.numpy import quant_lut as npl
from fastdl._backends.numpy.quant import pack_nibbles

from _quant_lut_helpers import (FORMATS, assert_within_bound, c_matmul, lut_of, make,
                                np_matmul, reference, rounding_bound)

_qlut = pytest.importorskip("fastdl._backends.cython._qlut")

SHAPES = [(1, 1), (31, 15), (32, 16), (33, 17), (96, 40), (100, 33), (4100, 20)]


def random_rows(d_in, d_out, bits, nf4, key):
    rng = rng_for("rows", d_in, d_out, bits, nf4, key)
    codes = rng.integers(0, 16 if nf4 else 1 << bits, size=(d_out, d_in)).astype(np.uint8)
    return codes, pack_nibbles(codes)


@pytest.mark.parametrize("d_in,d_out", SHAPES)
@pytest.mark.parametrize("bits,scheme", FORMATS)
def test_layout_round_trip_and_numpy_definition(d_in, d_out, bits, scheme):
    nf4 = scheme == "nf4"
    codes, rows = random_rows(d_in, d_out, bits, nf4, 0)
    lut = _qlut.rows_to_lut(rows, d_in, d_out, bits, nf4, 2)
    assert lut.dtype == np.uint8 and lut.shape == _qlut.lut_shape(d_in, d_out, bits)
    assert lut.shape == npl.lut_shape(d_in, d_out, bits)
    np.testing.assert_array_equal(lut, npl.rows_to_lut(rows, d_in, d_out, bits, nf4))
    back = _qlut.lut_to_rows(lut, d_in, d_out, bits, nf4, 2)
    np.testing.assert_array_equal(back, rows)
    np.testing.assert_array_equal(npl.lut_to_rows(lut, d_in, d_out, bits, nf4), rows)
    assert back.shape == (d_out, row_bytes(d_in))


@pytest.mark.parametrize("bits,scheme", FORMATS)
def test_layout_follows_its_description(bits, scheme):
    """Every nibble where the docstring says, read back with plain integer arithmetic."""
    nf4 = scheme == "nf4"
    d_in, d_out = 70, 19
    codes, rows = random_rows(d_in, d_out, bits, nf4, 1)
    lut = _qlut.rows_to_lut(rows, d_in, d_out, bits, nf4)
    NT, NC = -(-d_out // 16), -(-d_in // 32)
    words = lut.view("<u4").reshape(NT, NC, bits, 16)
    zero = 7 if nf4 else 1 << (bits - 1)
    for j in range(NT * 16):
        for i in range(NC * 32):
            code = codes[j, i] if j < d_out and i < d_in else zero
            t, l, c, r = j // 16, j % 16, i // 32, i % 32
            if nf4:
                k, m = divmod(r, 8)
                assert (int(words[t, c, k, l]) >> (4 * m)) & 15 == code
            else:
                m, b = divmod(r, 4)
                two = code ^ (1 << (bits - 1))
                for k in range(bits):
                    assert (int(words[t, c, k, l]) >> (4 * m + b)) & 1 == (two >> k) & 1


def test_rows_to_lut_rejects_codes_wider_than_bits():
    codes = np.zeros((3, 40), np.uint8)
    codes[1, 7] = 4                               # not a 2-bit code
    rows = pack_nibbles(codes)
    with pytest.raises(ValueError, match="2\\*\\*bits"):
        _qlut.rows_to_lut(rows, 40, 3, 2, False)
    with pytest.raises(ValueError, match="2\\*\\*bits"):
        npl.rows_to_lut(rows, 40, 3, 2, False)
    _qlut.rows_to_lut(rows, 40, 3, 3, False)      # fine as 3-bit codes


BLOCKS = [None, 32, 64, 128]


@pytest.mark.parametrize("d_in,d_out", [(32, 16), (96, 17), (100, 33), (4100, 20)])
@pytest.mark.parametrize("bits,scheme", FORMATS)
@pytest.mark.parametrize("block_size,dq", [(b, dq) for b in BLOCKS for dq in (False, True)
                                           if b is not None or not dq])
def test_matmul_accuracy(d_in, d_out, bits, scheme, block_size, dq):
    q = make(d_in, d_out, bits, scheme, block_size, dq)
    lut = lut_of(q)
    for n in (1, 2, 3, 16):
        x = rng_for("x", d_in, n, bits, scheme).standard_normal((n, d_in)).astype(np.float32)
        y = c_matmul(x, q, lut)
        np.testing.assert_array_equal(y, np_matmul(x, q, lut))     # the same operations
        assert_within_bound(y, x, q)


def test_matmul_bound_is_not_vacuous():
    """One wrong code per column breaks the accuracy bound (so the bound can fail)."""
    q = make(256, 32, 4, "nf4", 64, False)
    lut = lut_of(q)
    x = rng_for("x-bad").standard_normal((1, 256)).astype(np.float32)
    rows = q.data.copy()
    rows[:, 3] ^= 0x05                            # a different code of one input per column
    bad = _qlut.rows_to_lut(rows, 256, 32, 4, True)
    err = np.abs(c_matmul(x, q, bad) - reference(x, q))
    assert np.all(err > rounding_bound(x, q))
    assert_within_bound(c_matmul(x, q, lut), x, q)


def test_zero_and_padding_contribute_nothing():
    q = quantize(np.zeros((40, 5), np.float32), bits=4, scheme="nf4", block_size=32)
    x = np.full((2, 40), 3.0, np.float32)
    np.testing.assert_array_equal(c_matmul(x, q, lut_of(q)), np.zeros((2, 5), np.float32))


def test_supports():
    assert _qlut.lut_supports(4, True, 64) and _qlut.lut_supports(2, False, None)
    assert _qlut.lut_supports(3, False, 4096)
    assert not _qlut.lut_supports(3, True, 64)        # NF4 is 4-bit
    assert not _qlut.lut_supports(5, False, 64)
    assert not _qlut.lut_supports(4, False, 48)
    assert not _qlut.lut_supports(4, False, 16)


def test_bad_arguments():
    q = make(64, 20, 4, "absmax", 32, False)
    lut = lut_of(q)
    x = np.ones((1, 64), np.float32)
    out = np.empty((1, 20), np.float32)

    def call(**kw):
        a = dict(x=x, lut=lut, d_in=64, d_out=20, bits=4, nf4=False, block_size=32,
                 scales=q.scales, scale_codes=None, scale_scales=None, scale_mean=None,
                 out=out, nthreads=1)
        a.update(kw)
        return _qlut.lut_qmatmul(**a)

    call()
    with pytest.raises(ValueError, match="block_size"):
        call(block_size=48)
    with pytest.raises(ValueError, match="bits"):
        call(bits=5)
    with pytest.raises(ValueError, match="nf4=True needs bits=4"):
        call(bits=3, nf4=True)
    with pytest.raises(ValueError, match="lut must have shape"):
        call(lut=lut[:, :-64].copy())
    with pytest.raises(TypeError, match="lut must be a uint8"):
        call(lut=lut.view(np.int8))
    with pytest.raises(TypeError, match="x must be a float32"):
        call(x=x.astype(np.float64))
    with pytest.raises(ValueError, match="x must have shape"):
        call(x=np.ones((1, 63), np.float32))
    with pytest.raises(ValueError, match="out must have shape"):
        call(out=np.empty((2, 20), np.float32))
    with pytest.raises(ValueError, match="writeable"):
        ro = np.empty((1, 20), np.float32)
        ro.setflags(write=False)
        call(out=ro)
    with pytest.raises(ValueError, match="overlap"):
        big = np.ones((1, 84), np.float32)
        call(x=big[:, :64], out=big[:, 50:70])
    with pytest.raises(ValueError, match="C-contiguous"):
        call(x=np.ones((1, 128), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="scales must have shape"):
        call(scales=q.scales[:, :1].copy())
    with pytest.raises(ValueError, match="needs? a block_size"):
        call(block_size=None, scales=None, scale_codes=np.zeros(20, np.int8),
             scale_scales=np.ones(1, np.float32), scale_mean=np.float32(0))
    with pytest.raises(ValueError, match="scale_codes must have shape"):
        call(scales=None, scale_codes=np.zeros(20, np.int8), scale_scales=np.ones(1, np.float32),
             scale_mean=np.float32(0))
    with pytest.raises(ValueError, match="either scales or"):
        call(scale_codes=np.zeros(40, np.int8), scale_scales=np.ones(1, np.float32),
             scale_mean=np.float32(0))
    with pytest.raises(ValueError, match="d_in must be"):
        call(d_in=0)
    with pytest.raises(ValueError, match="data_rows must have shape"):
        _qlut.rows_to_lut(q.data[:, :-1].copy(), 64, 20, 4, False)
    with pytest.raises(TypeError, match="nf4 must be a bool"):
        _qlut.lut_to_rows(lut, 64, 20, 4, 1)
    np.testing.assert_array_equal(out, call())     # nothing above wrote out or changed inputs
