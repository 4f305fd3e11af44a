"""Stress tests of the Cython normalization kernels: SIMD twins and the streaming path.

* every SIMD level this machine runs (scalar, AVX2, AVX-512) at 1 and 2 threads: bitwise
  equal for every forward and backward, float32/float64, and close to the NumPy reference;
  inner sizes that are not multiples of the lane / flush / block sizes, long reductions,
  misaligned inputs and ``out=`` views;
* the >= 8 MiB non-temporal (streaming) output path: Cython vs NumPy, 1 vs 2 threads
  bitwise, misaligned ``out=``.

Everything here must run in well under a minute on 2 cores.
"""

import numpy as np
import pytest

import fastdl

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl.testing import requires_simd, rng_for, threads

from _norm_kernels_helpers import (  # noqa: E402
    CHAN_NORMS, DTYPES, F32, F64, NORMS, ROW_NORMS, assert_bitwise, assert_close,
    assert_twins, operands, run_all, twins)


needs_simd = requires_simd("avx2")      # AVX2 is the lowest SIMD tier


STREAM_BYTES = 8 << 20


def aligned_empty(shape, dtype, offset_elems=0, align=64):
    """An empty C-contiguous array whose data starts ``offset_elems`` elements past a
    64-byte boundary (carved from a flat buffer, like ``buf[1:].reshape(...)``)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.empty((n + offset_elems) * dtype.itemsize + 2 * align, np.uint8)
    start = (-raw.ctypes.data) % align
    flat = raw[start:start + (n + offset_elems) * dtype.itemsize].view(dtype)
    a = flat[offset_elems:].reshape(shape)
    assert a.flags.c_contiguous and a.ctypes.data % align == (offset_elems * dtype.itemsize) % align
    return a


def placed(values, offset_elems):
    a = aligned_empty(values.shape, values.dtype, offset_elems)
    a[...] = values
    return a


# ---------------------------------------------------------------- SIMD twins vs scalar

ROW_D = [1, 3, 15, 17, 31, 33, 1023, 1025, 4097, 16387]
CHAN_S = [1, 3, 15, 17, 31, 32, 33, 63, 64, 65, 1023, 1025, 4097]


def _row_cases():
    for norm in ROW_NORMS:
        for D in ROW_D:
            yield pytest.param(norm, (5, D), id=f"{norm}-5x{D}")
    for norm in CHAN_NORMS:
        for S in CHAN_S:
            yield pytest.param(norm, (3, 4, S), id=f"{norm}-3x4x{S}")


@needs_simd
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm,shape", list(_row_cases()))
def test_twins_bitwise_and_numpy(norm, shape, dtype):
    x, dy, w, b, rm, rv = operands(norm, shape, dtype)
    want = run_all(norm, x, dy, w, b, rm, rv, backend="numpy")
    res = twins(norm, x, dy, w, b, rm, rv)
    s = res["scalar", 1]
    assert_twins(res, s, f"{norm} {shape} {dtype} vs scalar")
    assert_close(s, want, dtype, f"{norm} {shape} {dtype}: cython vs numpy")


@needs_simd
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm,shape", [
    pytest.param("layer", (2, 262149), id="layer-2x262149"),     # > 64 blocks of 16 KiB
    pytest.param("rms", (2, 262149), id="rms-2x262149"),
    pytest.param("group", (2, 2, 70001), id="group-2x2x70001"),
    pytest.param("batch_train", (3, 2, 40001), id="batch_train-3x2x40001"),
    pytest.param("batch_train", (300, 3, 7), id="batch_train-300x3x7"),   # > 64 row chunks
    pytest.param("batch_train", (1100, 2, 40), id="batch_train-1100x2x40"),
    pytest.param("layer", (1100, 33), id="layer-1100x33"),
])
def test_twins_long_reductions(norm, shape, dtype):
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("long",))
    res = twins(norm, x, dy, w, b, rm, rv)
    s = res["scalar", 1]
    assert_twins(res, s, f"{norm} {shape} {dtype} vs scalar")
    want = run_all(norm, x, dy, w, b, rm, rv, backend="numpy")
    assert_close(s, want, dtype, f"{norm} {shape} {dtype}: cython vs numpy")


MISALIGNED_SHAPES = {"layer": (5, 1025), "rms": (7, 17), "group": (3, 4, 1025),
                     "instance": (2, 3, 17), "batch_train": (9, 4, 17), "batch_eval": (3, 4, 1025)}


@needs_simd
@pytest.mark.parametrize("offset", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", NORMS)
def test_twins_misaligned_inputs_and_out(norm, dtype, offset):
    shape = MISALIGNED_SHAPES[norm]
    x0, dy0, w, b, rm, rv = operands(norm, shape, dtype, key=("mis",))
    x, dy = placed(x0, offset), placed(dy0, offset + 1)
    out = aligned_empty(shape, dtype, offset + 2)
    ref = run_all(norm, x0, dy0, w, b, rm, rv, backend="cython")
    res = twins(norm, x, dy, w, b, rm, rv, nts=(1,), out=out)
    assert_twins(res, ref, f"{norm} misaligned vs aligned")
    want = run_all(norm, x0, dy0, w, b, rm, rv, backend="numpy")
    assert_close(ref, want, dtype, f"{norm} misaligned cython vs numpy")


# ---------------------------------------------------------------- streaming (>= 8 MiB) path

COLUMNS = (4096, 64, 9)        # few columns per channel: batch norm's per-column path


def stream_cases(cases, sized):
    """pytest params ``norm-f32[-RxC...]`` (the shape in the id when ``sized``), and
    ``-columns`` for the per-column batch-norm shape."""
    return [pytest.param(n, s, d, id=f"{n}-{'f32' if d == F32 else 'f64'}"
                         + ("-" + "x".join(map(str, s)) if sized else "")
                         + ("-columns" if s == COLUMNS else ""))
            for n, s, d in cases]


STREAM_CASES = stream_cases([
    ("layer", (2048, 1100), F32), ("rms", (2048, 1100), F32), ("group", (64, 32, 1100), F32),
    ("instance", (64, 32, 1100), F32), ("batch_train", (64, 32, 1100), F32),
    ("batch_eval", (64, 32, 1100), F32), ("batch_train", COLUMNS, F32),
    ("batch_eval", COLUMNS, F32), ("layer", (131072, 17), F32), ("layer", (1024, 1025), F64),
    ("rms", (1024, 1025), F64), ("group", (32, 32, 1025), F64),
    ("batch_train", (32, 32, 1025), F64)], sized=True)


@pytest.mark.parametrize("norm,shape,dtype", STREAM_CASES)
def test_streaming_path(norm, shape, dtype):
    assert np.prod(shape) * dtype.itemsize >= STREAM_BYTES
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("stream",))
    want = run_all(norm, x, dy, w, b, rm, rv, backend="numpy")
    with threads(2):
        two = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    assert_close(two, want, dtype, f"{norm} {shape} streaming: cython vs numpy")
    with threads(1):
        one = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    assert_bitwise(two, one, f"{norm} {shape} streaming: 2 threads vs 1")
    # out= a C-contiguous view one element past a 64-byte boundary
    out = aligned_empty(shape, dtype, 1)
    with threads(2):
        mis = run_all(norm, x, dy, w, b, rm, rv, backend="cython", out=out)
    assert_bitwise(mis, one, f"{norm} {shape} streaming: misaligned out vs fresh")


@needs_simd
@pytest.mark.parametrize("norm,shape,dtype", stream_cases([
    ("layer", (2048, 1100), F32), ("rms", (2048, 1100), F32), ("group", (64, 32, 1100), F32),
    ("batch_train", (64, 32, 1100), F32), ("batch_eval", COLUMNS, F32),
    ("batch_train", COLUMNS, F32), ("layer", (1024, 1025), F64), ("rms", (1024, 1025), F64),
    ("instance", (32, 32, 1025), F64), ("batch_train", (32, 32, 1025), F64)], sized=False))
def test_streaming_twins_misaligned(norm, shape, dtype):
    """Every SIMD level on the >= 8 MiB path, x/dy/out 1..3 elements off 64 bytes."""
    x0, dy0, w, b, rm, rv = operands(norm, shape, dtype, key=("stream-twin",))
    x, dy = placed(x0, 1), placed(dy0, 2)
    out = aligned_empty(shape, dtype, 3)
    res = twins(norm, x, dy, w, b, rm, rv, nts=(2,), out=out)
    with threads(2):
        ref = run_all(norm, x0, dy0, w, b, rm, rv, backend="cython")
    assert_twins(res, ref, f"{norm} {shape} streaming misaligned vs aligned")


def test_streaming_backend_op_out_rows_misaligned():
    """layer_norm_fwd / rms_norm_fwd write into a misaligned out (rows of odd length)
    on the streaming path: every element written, nothing outside touched."""
    R, D = 4099, 513
    x = rng_for("op-out").standard_normal((R, D)).astype(np.float32)
    assert x.nbytes >= STREAM_BYTES
    raw = aligned_empty((R * D + 64,), np.float32, 0)
    raw[...] = np.float32(12345.0)
    out = raw[5:5 + R * D].reshape(R, D)
    y, mean, var = cy.layer_norm_fwd(x, None, None, 1e-5, out)
    assert y is out
    want = np.empty_like(x)
    _, wm, wv = fastdl._backends.numpy.norm.layer_norm_fwd(x, None, None, 1e-5, want)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    assert (raw[:5] == 12345.0).all() and (raw[5 + R * D:] == 12345.0).all()
    np.testing.assert_allclose(mean, wm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, wv, rtol=1e-4)
    raw[...] = np.float32(12345.0)
    cy.rms_norm_fwd(x, None, 1e-6, out)
    fastdl._backends.numpy.norm.rms_norm_fwd(x, None, 1e-6, want)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    assert (raw[:5] == 12345.0).all() and (raw[5 + R * D:] == 12345.0).all()
