"""fastdl.quant argument rules: bad quantize arguments and weights, other real inputs,
inputs never modified, qmatmul / dequantize argument errors, non-finite weights, blocks
larger than a row, read-only arrays and block signs under double quantization.

Expected values are computed here independently of the library (Fractions, float64
NumPy, a packer/unpacker written from the fastdl.quant docstring).  Tests whose id
contains "cython" run the Cython kernels; the rest run the NumPy reference
(``-k "not cython"`` selects those alone).
"""

import warnings

import numpy as np
import pytest

import fastdl
from fastdl import quant
from fastdl.quant import dequantize, qmatmul, quantize
from fastdl.testing import rng_for

from _quant_helpers import FORMATS, W, assert_same, fmt_id, ints_of, stored_arrays, weights


# ---------------------------------------------------------------- argument rules

QUANTIZE_ERRORS = [
    (dict(bits=1), "bits must be in 2..8, got 1"),
    (dict(bits=9), "bits must be in 2..8, got 9"),
    (dict(bits=0), "bits must be in 2..8, got 0"),
    (dict(bits=-4), "bits"),
    (dict(bits=4, scheme="int4"), "scheme must be one of 'absmax', 'nf4', 'signmax', 'minmax', got 'int4'"),
    (dict(bits=4, scheme="NF4"), "scheme"),
    (dict(bits=8, scheme="nf4"), "scheme='nf4' needs bits=4, got bits=8"),
    (dict(bits=3, scheme="nf4", block_size=2), "bits=3"),
    (dict(bits=4, block_size=1), "block_size must be an integer >= 2 or None, got 1"),
    (dict(bits=4, block_size=0), "block_size.*got 0"),
    (dict(bits=4, block_size=-64), "block_size.*got -64"),
    (dict(bits=4, block_size=1.5), "block_size.*got 1.5"),
    (dict(bits=4, block_size=64.0), "block_size.*got 64.0"),
    (dict(bits=4, block_size="64"), "block_size.*got '64'"),
    (dict(bits=4, block_size=True), "block_size.*got True"),
    (dict(bits=4, scheme="nf4", block_size=1), "block_size"),
    (dict(bits=4, rounding="up"), "rounding must be one of 'nearest', 'floor', got 'up'"),
    (dict(bits=4, block_size=None, double_quant=True), "double_quant=True needs .*block_size"),
    (dict(bits=8, block_size=None, double_quant=True), "double_quant"),
    (dict(bits=4, block_size=4, double_quant=1), "double_quant must be a bool"),
]


@pytest.mark.parametrize("kw, match", QUANTIZE_ERRORS, ids=[fmt_id(k) for k, _ in QUANTIZE_ERRORS])
def test_quantize_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        quantize(W, **kw)


W_ERRORS = [
    (np.ones(8), "w must be 2-D \\(d_in, d_out\\), got shape \\(8,\\)"),
    (np.ones((2, 3, 4)), "w must be 2-D.*\\(2, 3, 4\\)"),
    (np.float32(3), "w must be 2-D"),
    (np.ones((0, 3)), "w must not be empty, got shape \\(0, 3\\)"),
    (np.ones((3, 0)), "w must not be empty"),
    (np.ones((2, 2), np.complex64), "w must have a real dtype, got complex64"),
    (np.ones((2, 2), np.complex128) * 1j, "w must have a real dtype"),
    (np.array([["a", "b"]]), "w must have a real dtype"),
    (np.array([[1.0, np.nan]]), "w must be finite, got NaN"),
    (np.array([[1.0], [np.inf]], np.float32), "w must be finite, got Inf"),
    (np.array([[-np.inf, 2.0]]), "w must be finite, got Inf"),
    (np.array([[1e39, 2.0]]), "w must fit in float32"),
    ([[1, 2], [3]], "w must be"),
]


@pytest.mark.parametrize("w, match", W_ERRORS, ids=range(len(W_ERRORS)))
def test_quantize_bad_weights(w, match):
    with pytest.raises(ValueError, match=match):
        quantize(w, 4, block_size=2)
    with pytest.raises(ValueError, match=match):
        quantize(w, 4, scheme="nf4")


def test_quantize_accepts_other_real_inputs(backend):
    ref = quantize(np.array([[1.0, -2.0], [3.0, 0.5]], np.float32), 8, backend=backend)
    for w in ([[1, -2], [3, 0.5]], np.array([[1.0, -2.0], [3.0, 0.5]], np.float16),
              np.asfortranarray(np.array([[1.0, -2.0], [3.0, 0.5]])),
              np.array([[1.0, -2.0], [3.0, 0.5]], ">f4")):
        assert_same(ref, quantize(w, 8, backend=backend))
    qi = quantize(np.array([[1, -2], [3, 0]]), 8, block_size=None, backend=backend)
    np.testing.assert_array_equal(ints_of(qi), [[42, -85], [127, 0]])   # 127/3 = 42.33...
    qi = quantize(np.array([[1, -2], [3, 0]]), 8, backend=backend)     # a block per column
    np.testing.assert_array_equal(ints_of(qi), [[42, -127], [127, 0]])
    qb = quantize(np.array([[True, False]]), 2, backend=backend)
    np.testing.assert_array_equal(ints_of(qb), [[1, 0]])


@pytest.mark.parametrize("kw", [FORMATS[0], FORMATS[9], FORMATS[12]], ids=fmt_id)
def test_inputs_never_modified(backend, kw):
    base = weights(("inp",), (65, 7))
    for w in (base, base.astype(np.float64), np.asfortranarray(base), base[:, ::-1]):
        before = w.copy()
        flags = (w.flags.c_contiguous, w.flags.f_contiguous, w.flags.writeable)
        q = quantize(w, backend=backend, **kw)
        np.testing.assert_array_equal(w, before)
        assert (w.flags.c_contiguous, w.flags.f_contiguous, w.flags.writeable) == flags
        data_before = {n: a.copy() for n, a in stored_arrays(q).items()}
        for x in (np.ones((3, 65), np.float32), np.ones(7), np.arange(21.0).reshape(3, 7)):
            x_before = x.copy()
            qmatmul(x, q, transpose=x.shape[-1] == 7, backend=backend)
            np.testing.assert_array_equal(x, x_before)
        dequantize(q, backend=backend)
        for n, a in stored_arrays(q).items():
            np.testing.assert_array_equal(a, data_before[n])


@pytest.fixture(scope="module")
def q34():
    return quantize(np.arange(12.0).reshape(3, 4), 4, block_size=2)     # shape (3, 4)


def test_qmatmul_inner_dimension_message(q34):
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(3, 4\)"):
        qmatmul(np.ones((2, 5)), q34)
    with pytest.raises(ValueError, match=r"\(4,\).*\(3, 4\)"):
        qmatmul(np.ones(4), q34)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 3\)"):
        qmatmul(np.ones((2, 3)), q34, transpose=True)
    with pytest.raises(ValueError, match=r"\(2, 2, 4\).*inner dimensions.*\(\.\.\., 3\)"):
        qmatmul(np.ones((2, 2, 4)), q34)
    with pytest.raises(ValueError, match="inner dimensions"):
        qmatmul(np.float64(1.0), q34)


def test_qmatmul_bad_arguments(q34):
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4\), got \(2, 3\)"):
        qmatmul(x, q34, out=np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(4,\)"):
        qmatmul(x[0], q34, out=np.empty((1, 4), np.float32))
    # the project's rule (fastdl._validate.check_out): a wrong out dtype is a TypeError
    with pytest.raises(TypeError, match="out must have dtype float32, got float64"):
        qmatmul(x, q34, out=np.empty((2, 4)))
    with pytest.raises(TypeError, match="out must have dtype float64, got float32"):
        qmatmul(np.ones((2, 3), np.int64), q34, out=np.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        qmatmul(x, q34, out=np.empty((4, 2), np.float32).T)
    ro = np.empty((2, 4), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out must be writeable"):
        qmatmul(x, q34, out=ro)
    with pytest.raises(ValueError, match="transpose must be a bool"):
        qmatmul(x, q34, transpose=1)
    with pytest.raises(ValueError, match="x must have a real dtype"):
        qmatmul(x.astype(np.complex64), q34)
    with pytest.raises(TypeError, match="q must be a fastdl.quant.QuantizedTensor, got ndarray"):
        qmatmul(x, np.ones((3, 4)))
    with pytest.raises(TypeError, match="q must be"):
        qmatmul(x, None)


def test_dequantize_bad_arguments(q34):
    for dtype in (np.int32, np.float16, np.complex64, "int8"):
        with pytest.raises(ValueError, match="dtype must be float32 or float64"):
            dequantize(q34, dtype=dtype)
        with pytest.raises(ValueError, match="dtype"):
            q34.dequantize(dtype)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 4\), got \(4, 3\)"):
        dequantize(q34, out=np.empty((4, 3), np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32, got float64"):
        dequantize(q34, np.float32, out=np.empty((3, 4)))
    got = dequantize(q34, out=np.empty((3, 4)))          # out alone sets the dtype
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, dequantize(q34).astype(np.float64))
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        dequantize(q34, out=np.empty((3, 4), np.float16))
    with pytest.raises(ValueError, match="C-contiguous"):
        dequantize(q34, np.float64, out=np.empty((4, 3)).T)
    for bad in (np.ones((3, 4)), [[1.0]], "q", None):
        with pytest.raises(TypeError, match="q must be a fastdl.quant.QuantizedTensor"):
            dequantize(bad)


def test_module_exports():
    assert {"QuantizedTensor", "quantize", "dequantize", "qmatmul", "NF4_CODEBOOK"} <= \
        set(quant.__all__)
    assert quant.SCHEMES == ("absmax", "nf4", "signmax", "minmax")
    assert set(quant.ROUNDINGS) == {"nearest", "floor"}
    assert fastdl.quant is quant


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fmt", [dict(bits=4, block_size=None), dict(bits=8, block_size=64),
                                 dict(bits=4, scheme="nf4", block_size=3)])
def test_non_finite_anywhere_is_rejected(backend, fmt, value):
    # the check rides on the block absmax (no extra pass over w): a NaN or inf must reach
    # the scale from any position, first or last of a block, vector or scalar columns
    for shape, pos in [((130, 13), (0, 0)), ((130, 13), (129, 12)), ((64, 8), (63, 7)),
                       ((70, 17), (35, 16))]:
        w = weights(("nf", str(value)), shape)
        w[pos] = value
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match="w must be finite"):
                quantize(w, backend=backend, **fmt)


@pytest.mark.parametrize("block_size", [2 ** 20, 2 ** 57 + 1, 2 ** 62 + 1, 10 ** 12])
def test_block_larger_than_d_in_is_one_block(backend, block_size):
    w = weights(("huge-bs",), (100, 64))
    q = quantize(w, 8, block_size=block_size, backend=backend)
    ref = quantize(w, 8, block_size=100, backend=backend)
    np.testing.assert_array_equal(q.data, ref.data)
    np.testing.assert_array_equal(q.scales, ref.scales)
    assert q.block_size == block_size and q.nblocks == 1
    np.testing.assert_array_equal(dequantize(q, backend=backend), dequantize(ref, backend=backend))


def test_arrays_cannot_be_made_writeable_again(backend):
    for kw in (dict(bits=8), dict(bits=8, block_size=10), dict(bits=4, block_size=32)):
        q = quantize(weights(("lock",), (40, 6)), backend=backend, **kw)
        for a in (q.data, q.scales):
            with pytest.raises(ValueError):
                a.setflags(write=True)


def test_double_quant_never_flips_a_block_sign(backend):
    rng = rng_for("dq-sign")
    w = rng.standard_normal((64, 256)).astype(np.float32)
    w[:, 0] *= 1e-2                        # a scale far below its group's step
    w[:, 1] *= 30
    q = quantize(w, 4, scheme="nf4", double_quant=True, backend=backend)
    assert (q.block_scales() >= 0).all()
    deq = dequantize(q, backend=backend)
    assert np.corrcoef(w[:, 0], deq[:, 0])[0, 1] >= 0 or not deq[:, 0].any()
