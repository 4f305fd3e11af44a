"""fastdl.quant.qmatmul and dequantize: qmatmul equals ``x @ dequantize(q)`` (and the
transposed product) for every format in float32 and float64, result dtypes, and
dequantize's ``out=``.

Expected values are computed here independently of the library (Fractions, float64
NumPy, a packer/unpacker written from the fastdl.quant docstring).  Tests whose id
contains "cython" run the Cython kernels; the rest run the NumPy reference
(``-k "not cython"`` selects those alone).
"""

import numpy as np
import pytest

from fastdl.quant import dequantize, qmatmul, quantize
from fastdl.testing import rng_for

from _quant_helpers import FORMATS, W, fmt_id, weights


# ---------------------------------------------------------------- qmatmul

QM_SHAPES = [(65, 7), (3, 130), (130, 67), (1, 3)]


def qmatmul_cases(backend, kw, transpose):
    """(q, W, x64) for the odd shapes and n in {1, 2, 7, 33, 600} and 1-D x; W is
    dequantize(q) (or its transpose) in float64."""
    for shape in QM_SHAPES:
        q = quantize(weights(("qm", fmt_id(kw)), shape), backend=backend, **kw)
        W = dequantize(q, backend="numpy").astype(np.float64)
        W = W.T if transpose else W
        rng = rng_for("qmx", fmt_id(kw), transpose, shape)
        for n in (1, 2, 7, 33, 600, None):
            yield q, W, rng.standard_normal((W.shape[0],) if n is None else (n, W.shape[0]))


def check_qmatmul(backend, q, W, x, transpose, rel):
    x_before = x.copy()
    y = qmatmul(x, q, transpose=transpose, backend=backend)
    np.testing.assert_array_equal(x, x_before)
    x64 = x.astype(np.float64)                   # x rounded to float32 is the input
    want = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    assert y.dtype == want and y.shape == x.shape[:-1] + W.shape[1:], (x.shape, x.dtype)
    bound = np.abs(x64) @ np.abs(W)
    err = np.abs(y - x64 @ W)
    assert np.all(err <= rel * bound + 1e-300), (q.shape, x.shape, x.dtype,
                                                 float((err / (bound + 1e-300)).max()))
    out = np.full(y.shape, np.nan, y.dtype)
    assert qmatmul(x, q, transpose=transpose, out=out, backend=backend) is out
    np.testing.assert_array_equal(out, y)
    return y


@pytest.mark.parametrize("kw", FORMATS, ids=fmt_id)
@pytest.mark.parametrize("transpose", [False, True])
def test_qmatmul_float32_matches_dequantize(backend, kw, transpose):
    for q, W, x in qmatmul_cases(backend, kw, transpose):
        check_qmatmul(backend, q, W, x.astype(np.float32), transpose, 1e-5)


@pytest.mark.parametrize("kw", FORMATS, ids=fmt_id)
@pytest.mark.parametrize("transpose", [False, True])
def test_qmatmul_float64_matches_dequantize(backend, kw, transpose):
    # float64 x against the float32 dequantized weights: float64 rounding only
    for q, W, x in qmatmul_cases(backend, kw, transpose):
        y = check_qmatmul(backend, q, W, x, transpose, 1e-12)
        if x.ndim == 2 and x.shape[0] > 1:        # a row does not depend on the batch
            y1 = qmatmul(x[-1:], q, transpose=transpose, backend=backend)
            np.testing.assert_allclose(y1[0], y[-1], rtol=1e-12, atol=1e-12 * np.abs(y).max())
    # integers and bools are computed in float64
    q, W, x = next(qmatmul_cases(backend, kw, transpose))
    xi = np.round(x * 20).astype(np.int64)
    check_qmatmul(backend, q, W, xi, transpose, 1e-12)
    xb = x > 0
    y = qmatmul(xb, q, transpose=transpose, backend=backend)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, xb.astype(np.float64) @ W, rtol=1e-12,
                               atol=1e-12 * np.abs(W).sum())


@pytest.mark.parametrize("transpose", [False, True])
def test_qmatmul_dtypes(backend, transpose):
    q = quantize(weights(("dt",), (65, 7)), 4, scheme="nf4", backend=backend)
    W = dequantize(q).astype(np.float64)
    W = W.T if transpose else W
    rng = rng_for("dt", transpose)
    k, m = W.shape
    for x, dtype in ((rng.integers(-50, 50, (5, k)), np.float64),
                     (rng.integers(-50, 50, (5, k)).astype(np.int8), np.float64),
                     (rng.integers(-50, 50, k) > 0, np.float64),
                     (rng.standard_normal((3, k)).astype(np.float32), np.float32),
                     (rng.standard_normal((3, 2 * k))[:, ::2], np.float64),   # strided view
                     (rng.standard_normal((2, k)).tolist(), np.float64)):
        y = qmatmul(x, q, transpose=transpose, backend=backend)
        x64 = np.asarray(x, np.float64)
        assert y.dtype == dtype and y.shape == x64.shape[:-1] + (m,)
        np.testing.assert_allclose(y, x64 @ W, rtol=1e-5, atol=1e-5 * np.abs(x64).max()
                                   * np.abs(W).sum(axis=0).max())
        out = np.empty(y.shape, dtype)
        assert qmatmul(x, q, transpose=transpose, out=out, backend=backend) is out
        np.testing.assert_array_equal(out, y)
    # no rows: an empty result of the right shape
    y0 = qmatmul(np.zeros((0, k), np.float32), q, transpose=transpose, backend=backend)
    assert y0.shape == (0, m) and y0.dtype == np.float32


def test_dequantize_out_and_float64(backend):
    for kw in FORMATS:
        q = quantize(weights(("dqo", fmt_id(kw)), (65, 7)), backend=backend, **kw)
        d32 = dequantize(q, backend=backend)
        d64 = dequantize(q, np.float64, backend=backend)
        assert d64.dtype == np.float64
        np.testing.assert_array_equal(d64, d32.astype(np.float64))   # float32 arithmetic
        np.testing.assert_array_equal(q.dequantize(backend=backend), d32)
        out = np.full((65, 7), np.nan)
        assert dequantize(q, np.float64, out=out, backend=backend) is out
        np.testing.assert_array_equal(out, d64)
        assert d32.flags.writeable and d32.flags.c_contiguous
