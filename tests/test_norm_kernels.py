"""Stress tests of the Cython normalization kernels (fastdl/_backends/cython/_norm.pyx,
src/normk*.{c,h}, src/moments.c) against the NumPy reference and against themselves.

* every SIMD level this machine runs (scalar, AVX2, AVX-512) at 1 and 2 threads: bitwise
  equal for every forward and backward, float32/float64,
  inner sizes that are not multiples of the lane / flush / block sizes, misaligned
  inputs and ``out=`` views, and the >= 8 MiB non-temporal (streaming) output path;
* streaming path: Cython vs NumPy, 1 vs 2 threads bitwise, misaligned ``out=``;
* edge sizes (D=1, S=1, N=1, C=1, one channel per group, the batch-norm per-channel /
  per-column threshold at S * itemsize = 256 bytes, N*S = 2);
* inf/nan propagate like NumPy; constant rows give the bias (eps > 0) or what NumPy
  gives (eps = 0);
* repeated calls, scratch-buffer reuse, reference leaks, two Python threads at once;
* direct backend-op calls with bad arguments raise ValueError/TypeError and never crash
  (run in a child process so that a crash is a failing test, not a dead test run).

Everything here must run in well under a minute on 2 cores.
"""
import gc
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastdl

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _cpu  # noqa: E402
from fastdl.testing import rng_for, simd, simd_levels, threads

LEVELS = simd_levels()
HAVE_SIMD = len(LEVELS) > 1
needs_simd = pytest.mark.skipif(not HAVE_SIMD, reason="no SIMD level on this CPU/build")

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]
RTOL = {F32: 1e-4, F64: 1e-10}
STREAM_BYTES = 8 << 20

ROW_NORMS = ["layer", "rms"]                       # x (R, D)
CHAN_NORMS = ["group", "instance", "batch_train", "batch_eval"]   # x (N, C, S)
NORMS = ROW_NORMS + CHAN_NORMS


# ---------------------------------------------------------------- arrays

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


def operands(norm, shape, dtype, key=(), loc=1.5):
    rng = rng_for(norm, shape, np.dtype(dtype).name, *key)
    x = (rng.standard_normal(shape) * 1.3 + loc).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ps = shape[-1:] if norm in ROW_NORMS else (shape[1],)
    w = (rng.standard_normal(ps) * 0.5 + 1).astype(dtype)
    b = None if norm == "rms" else rng.standard_normal(ps).astype(dtype)
    rm = rv = None
    if norm == "batch_eval":
        rm = (rng.standard_normal(shape[1]) * 0.3 + loc).astype(dtype)
        rv = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
    return x, dy, w, b, rm, rv


def groups(norm, C):
    if norm == "instance":
        return C
    return 2 if C % 2 == 0 else 1


def forward(norm, x, w, b, rm=None, rv=None, *, backend, out=None, eps=1e-5):
    kw = dict(backend=backend, out=out, return_stats=True)
    if norm == "layer":
        return fastdl.layer_norm(x, x.shape[-1:], w, b, eps, **kw)
    if norm == "rms":
        return fastdl.rms_norm(x, x.shape[-1:], w, eps, **kw)
    if norm in ("group", "instance"):
        # instance norm = group norm with one channel per group (group_norm_fwd, G = C)
        return fastdl.group_norm(x, groups(norm, x.shape[1]), w, b, eps, **kw)
    if norm == "batch_train":
        return fastdl.batch_norm(x, None, None, w, b, True, 0.1, eps, **kw)
    if norm == "batch_eval":
        return fastdl.batch_norm(x, rm.copy(), rv.copy(), w, b, False, 0.1, eps, **kw)
    raise AssertionError(norm)


def backward(norm, dy, x, w, b, rm=None, rv=None, *, backend, eps=1e-5, stats=None):
    kw = dict(backend=backend, stats=stats)
    if norm == "layer":
        return fastdl.layer_norm_backward(dy, x, x.shape[-1:], w, b, eps, **kw)
    if norm == "rms":
        return fastdl.rms_norm_backward(dy, x, x.shape[-1:], w, eps, **kw)
    if norm in ("group", "instance"):
        return fastdl.group_norm_backward(dy, x, groups(norm, x.shape[1]), w, b, eps, **kw)
    if norm == "batch_train":
        return fastdl.batch_norm_backward(dy, x, None, None, w, b, True, 0.1, eps, **kw)
    if norm == "batch_eval":
        return fastdl.batch_norm_backward(dy, x, rm, rv, w, b, False, 0.1, eps, **kw)
    raise AssertionError(norm)


NAMES = ("y", "stats.mean", "stats.rstd", "dx", "dweight", "dbias")


def run_all(norm, x, dy, w, b, rm, rv, *, backend, out=None, eps=1e-5):
    """(y, mean, rstd, dx, dw, db): the forward and the backward from the saved stats."""
    y, st = forward(norm, x, w, b, rm, rv, backend=backend, out=out, eps=eps)
    if out is not None:
        assert y is out
    y = y.copy()     # out= may be reused by the caller
    dx, dw, db = backward(norm, dy, x, w, b, rm, rv, backend=backend, eps=eps, stats=st)
    return (y, st.mean, st.rstd, dx, dw, db)


def assert_bitwise(got, want, what):
    for g, w_, name in zip(got, want, NAMES):
        if w_ is None:
            assert g is None, f"{what}: {name}"
            continue
        g, w_ = np.asarray(g), np.asarray(w_)
        assert g.dtype == w_.dtype and g.shape == w_.shape, f"{what}: {name}"
        if g.tobytes() != w_.tobytes():
            diff = np.flatnonzero((g.reshape(-1).view(f"u{g.itemsize}")
                                   != w_.reshape(-1).view(f"u{w_.itemsize}")))
            first = diff[:5].tolist()
            raise AssertionError(
                f"{what}: {name} differs bitwise in {diff.size} of {g.size} elements, first "
                f"flat indices {first}: got {g.ravel()[first].tolist()} "
                f"want {w_.ravel()[first].tolist()}")


def assert_close(got, want, dtype, what, rtol=None, scale_floor=1.0):
    """|got - want| <= rtol * |want| + rtol * max(scale_floor, max|want|) where finite;
    nan/inf at the same places."""
    dtype = np.dtype(dtype)
    rtol = RTOL[dtype] if rtol is None else rtol
    for g, w_, name in zip(got, want, NAMES):
        if w_ is None:
            assert g is None, f"{what}: {name} should be None"
            continue
        assert g is not None, f"{what}: {name} is None"
        g = np.asarray(g, np.float64)
        w_ = np.asarray(w_, np.float64)
        assert g.shape == w_.shape, f"{what}: {name} shape {g.shape} != {w_.shape}"
        fin = np.isfinite(w_)
        scale = max(scale_floor, float(np.abs(w_[fin]).max())) if fin.any() else scale_floor
        np.testing.assert_allclose(g, w_, rtol=rtol, atol=rtol * scale, equal_nan=True,
                                   err_msg=f"{what}: {name}")


def cython_vs_numpy(norm, x, dy, w, b, rm, rv, dtype, what, **kw):
    got = run_all(norm, x, dy, w, b, rm, rv, backend="cython", **kw)
    want = run_all(norm, x, dy, w, b, rm, rv, backend="numpy", eps=kw.get("eps", 1e-5))
    assert_close(got, want, dtype, what)
    return got


def twins(norm, x, dy, w, b, rm, rv, nts=(1, 2), **kw):
    """{(level, threads): results} at every SIMD level this machine runs."""
    res = {}
    for level in LEVELS:
        for nt in nts:
            with simd(level), threads(nt):
                res[level, nt] = run_all(norm, x, dy, w, b, rm, rv, backend="cython", **kw)
    return res


def assert_twins(res, want, what):
    """Every (level, threads) result bitwise equal to ``want``."""
    for (level, nt), got in res.items():
        assert_bitwise(got, want, f"{what}: {level} x{nt} threads")


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

STREAM_CASES = [
    pytest.param("layer", (2048, 1100), F32, id="layer-f32-2048x1100"),
    pytest.param("rms", (2048, 1100), F32, id="rms-f32-2048x1100"),
    pytest.param("group", (64, 32, 1100), F32, id="group-f32-64x32x1100"),
    pytest.param("instance", (64, 32, 1100), F32, id="instance-f32-64x32x1100"),
    pytest.param("batch_train", (64, 32, 1100), F32, id="batch_train-f32-64x32x1100"),
    pytest.param("batch_eval", (64, 32, 1100), F32, id="batch_eval-f32-64x32x1100"),
    pytest.param("batch_train", (4096, 64, 9), F32, id="batch_train-f32-4096x64x9-columns"),
    pytest.param("batch_eval", (4096, 64, 9), F32, id="batch_eval-f32-4096x64x9-columns"),
    pytest.param("layer", (131072, 17), F32, id="layer-f32-131072x17"),
    pytest.param("layer", (1024, 1025), F64, id="layer-f64-1024x1025"),
    pytest.param("rms", (1024, 1025), F64, id="rms-f64-1024x1025"),
    pytest.param("group", (32, 32, 1025), F64, id="group-f64-32x32x1025"),
    pytest.param("batch_train", (32, 32, 1025), F64, id="batch_train-f64-32x32x1025"),
]


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
@pytest.mark.parametrize("norm,shape,dtype", [
    pytest.param("layer", (2048, 1100), F32, id="layer-f32"),
    pytest.param("rms", (2048, 1100), F32, id="rms-f32"),
    pytest.param("group", (64, 32, 1100), F32, id="group-f32"),
    pytest.param("batch_train", (64, 32, 1100), F32, id="batch_train-f32"),
    pytest.param("batch_eval", (4096, 64, 9), F32, id="batch_eval-f32-columns"),
    pytest.param("batch_train", (4096, 64, 9), F32, id="batch_train-f32-columns"),
    pytest.param("layer", (1024, 1025), F64, id="layer-f64"),
    pytest.param("rms", (1024, 1025), F64, id="rms-f64"),
    pytest.param("instance", (32, 32, 1025), F64, id="instance-f64"),
    pytest.param("batch_train", (32, 32, 1025), F64, id="batch_train-f64"),
])
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


# ---------------------------------------------------------------- edge sizes

EDGE_CASES = [
    ("layer", (1, 1)), ("layer", (6, 1)), ("layer", (1, 7)), ("layer", (2, 2)),
    ("rms", (1, 1)), ("rms", (6, 1)), ("rms", (1, 2)),
    ("group", (1, 1, 1)), ("group", (1, 1, 2)), ("group", (2, 4, 1)), ("group", (1, 2, 3)),
    ("instance", (1, 1, 2)), ("instance", (2, 3, 5)), ("instance", (1, 5, 65)),
    ("batch_train", (2, 1, 1)), ("batch_train", (1, 1, 2)), ("batch_train", (2, 5, 1)),
    ("batch_train", (1, 3, 2)), ("batch_train", (1, 1, 64)), ("batch_train", (1, 2, 63)),
    ("batch_train", (2, 3, 65)), ("batch_train", (1, 1, 31)), ("batch_train", (2, 1, 32)),
    ("batch_train", (3, 2, 33)), ("batch_train", (70, 3, 63)), ("batch_train", (70, 3, 64)),
    ("batch_eval", (1, 1, 1)), ("batch_eval", (1, 3, 1)), ("batch_eval", (2, 1, 64)),
    ("batch_eval", (2, 2, 63)), ("batch_eval", (2, 2, 32)), ("batch_eval", (2, 2, 31)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm,shape", [pytest.param(n, s, id=f"{n}-{'x'.join(map(str, s))}")
                                        for n, s in EDGE_CASES])
def test_edge_sizes(norm, shape, dtype):
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("edge",))
    got = cython_vs_numpy(norm, x, dy, w, b, rm, rv, dtype, f"{norm} {shape}")
    for a, name in zip(got, NAMES):
        if a is not None:
            assert np.isfinite(a).all(), f"{norm} {shape}: {name} not finite"
    if HAVE_SIMD:
        res = twins(norm, x, dy, w, b, rm, rv)
        assert_twins(res, res["scalar", 1], f"{norm} {shape} vs scalar")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S", [62, 63, 64, 65, 66, 30, 31, 32, 33, 34])
def test_batch_threshold_paths_agree(S, dtype):
    """Both sides of the S * itemsize = 256 per-channel / per-column switch against NumPy,
    with a large mean (the split-mean path) and a weight/bias."""
    shape = (37, 5, S)
    for norm in ("batch_train", "batch_eval"):
        x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("thr",), loc=100.0)
        cython_vs_numpy(norm, x, dy, w, b, rm, rv, dtype, f"{norm} {shape}")


def test_layer_norm_mean_far_from_zero_float32():
    """Split mean (head + rest): float32 rows at 1e4 + N(0, 1) normalize to ~N(0, 1)."""
    rng = rng_for("far")
    x = (1e4 + rng.standard_normal((8, 4097))).astype(np.float32)
    y = fastdl.layer_norm(x, 4097, backend="cython")
    want = fastdl.layer_norm(x, 4097, backend="numpy")
    np.testing.assert_allclose(y, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm,shape", [("layer", (5, 1025)), ("rms", (5, 17)),
                                        ("group", (3, 4, 65)), ("instance", (3, 4, 17)),
                                        ("batch_train", (7, 4, 9)), ("batch_train", (3, 4, 65)),
                                        ("batch_eval", (7, 4, 9)), ("batch_eval", (3, 4, 65))])
def test_without_weight_and_bias(norm, shape, dtype):
    x, dy, _, _, rm, rv = operands(norm, shape, dtype, key=("noaffine",))
    got = cython_vs_numpy(norm, x, dy, None, None, rm, rv, dtype, f"{norm} {shape} no affine")
    assert got[4] is None and got[5] is None
    if HAVE_SIMD:
        res = twins(norm, x, dy, None, None, rm, rv)
        assert_twins(res, res["scalar", 1], f"{norm} {shape} no affine vs scalar")


# ---------------------------------------------------------------- inf / nan, constant rows

def _poison(norm, x, dy):
    """nan in one statistic group, +inf in another, -inf in a third (when they exist),
    nan in one dy element."""
    x, dy = x.copy(), dy.copy()
    if norm in ROW_NORMS:
        x[0, 1] = np.nan
        x[1, 2] = np.inf
        x[2, 0] = -np.inf
        dy[3, 1] = np.nan
    elif norm == "batch_train" or norm == "batch_eval":
        x[1, 0, 2] = np.nan
        x[0, 1, 1] = np.inf
        x[2, 2, 0] = -np.inf
        dy[0, 3, 1] = np.nan
    else:
        x[0, 0, 1] = np.nan        # (n=0, group 0)
        x[1, 2, 0] = np.inf        # (n=1, group 1)
        x[2, 3, 2] = -np.inf
        dy[2, 0, 0] = np.nan
    return x, dy


@pytest.mark.parametrize("S", [5, 70], ids=["S5", "S70"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", NORMS)
def test_nonfinite_inputs_propagate_like_numpy(norm, dtype, S):
    shape = (6, S) if norm in ROW_NORMS else (3, 4, S)
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("nan",))
    x, dy = _poison(norm, x, dy)
    with np.errstate(all="ignore"):
        got = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
        want = run_all(norm, x, dy, w, b, rm, rv, backend="numpy")
    # outputs and gradients: same nan/inf places, finite values close
    for g, w_, name in zip(got, want, NAMES):
        if name == "stats.mean" or w_ is None:
            continue
        g64, w64 = np.asarray(g, np.float64), np.asarray(w_, np.float64)
        np.testing.assert_array_equal(np.isnan(g64), np.isnan(w64), err_msg=f"{norm}: {name} nan")
        np.testing.assert_array_equal(np.isinf(g64), np.isinf(w64), err_msg=f"{norm}: {name} inf")
        fin = np.isfinite(w64)
        scale = max(1.0, float(np.abs(w64[fin]).max())) if fin.any() else 1.0
        np.testing.assert_allclose(g64[fin], w64[fin], rtol=RTOL[dtype],
                                   atol=RTOL[dtype] * scale, err_msg=f"{norm}: {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["layer", "group", "batch_train"])
def test_nonfinite_stats_mean_like_numpy(norm, dtype):
    """The saved mean of a group holding +inf: NumPy says +inf (and var nan)."""
    shape = (6, 40) if norm in ROW_NORMS else (3, 4, 40)
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("nanmean",))
    x, dy = _poison(norm, x, dy)
    with np.errstate(all="ignore"):
        _, got = forward(norm, x, w, b, backend="cython")
        _, want = forward(norm, x, w, b, backend="numpy")
    np.testing.assert_array_equal(np.isnan(got.rstd), np.isnan(want.rstd))
    np.testing.assert_allclose(got.mean, want.mean, rtol=RTOL[dtype], atol=RTOL[dtype] * 10,
                               equal_nan=True, err_msg=f"{norm}: saved mean")


@pytest.mark.parametrize("S", [7, 100], ids=["S7", "S100"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", NORMS)
def test_constant_rows_give_bias(norm, dtype, S):
    """Zero-variance statistic groups with eps > 0: finite, y == bias (0 for RMS of a
    zero row), and the backward is finite."""
    shape = (4, S) if norm in ROW_NORMS else (3, 4, S)
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("const",))
    if norm == "rms":
        x[...] = 0
    elif norm == "batch_eval":
        rm = np.full(shape[1], 0.1, dtype)
        x[...] = np.asarray(0.1, dtype)
    else:
        x[...] = np.asarray(0.1, dtype)       # not exactly summable in float
    for backend in ("cython", "numpy"):
        with np.errstate(all="raise"):
            got = run_all(norm, x, dy, w, b, rm, rv, backend=backend)
        for a, name in zip(got, NAMES):
            if a is not None:
                assert np.isfinite(a).all(), f"{backend} {norm}: {name} not finite"
        y = got[0]
        if norm in ROW_NORMS:
            bias = np.zeros(shape[-1]) if b is None else b.astype(np.float64)
            want = np.broadcast_to(bias, shape)
        else:
            want = np.broadcast_to(b.astype(np.float64)[:, None], shape)
        # eps = 1e-5 and |x - mean| <= ~1e-8 => |y - bias| <= ~1e-5 * |w|
        np.testing.assert_allclose(y, want, rtol=0, atol=2e-5 if dtype == F32 else 1e-9,
                                   err_msg=f"{backend} {norm}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["layer", "rms", "group", "instance", "batch_train"])
def test_constant_rows_eps0_like_numpy(norm, dtype):
    """eps = 0 and exactly representable constant groups: rstd = inf; whatever NumPy
    gives (nan), the kernels give, without crashing."""
    shape = (4, 9) if norm in ROW_NORMS else (3, 4, 9)
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("eps0",))
    if norm in ROW_NORMS:
        x[1] = 0.0 if norm == "rms" else 3.0
    elif norm == "batch_train":
        x[:, 2] = -2.5
    else:
        x[1, :2] = 0.75      # group 0 of sample 1 (and instance (1, 0), (1, 1))
    with np.errstate(all="ignore"):
        got = run_all(norm, x, dy, w, b, rm, rv, backend="cython", eps=0.0)
        want = run_all(norm, x, dy, w, b, rm, rv, backend="numpy", eps=0.0)
    for g, w_, name in zip(got, want, NAMES):
        if w_ is None:
            continue
        g64, w64 = np.asarray(g, np.float64), np.asarray(w_, np.float64)
        np.testing.assert_array_equal(np.isnan(g64), np.isnan(w64), err_msg=f"{norm}: {name}")
        np.testing.assert_array_equal(np.isinf(g64), np.isinf(w64), err_msg=f"{norm}: {name}")
        fin = np.isfinite(w64)
        np.testing.assert_allclose(g64[fin], w64[fin], rtol=RTOL[dtype],
                                   atol=RTOL[dtype] * max(1.0, np.abs(w64[fin]).max(initial=0)),
                                   err_msg=f"{norm}: {name}")


# ---------------------------------------------------------------- repeated calls, scratch, threads

REPEAT_CASES = [("layer", (300, 77)), ("rms", (300, 77)), ("group", (5, 6, 40)),
                ("batch_train", (200, 4, 9)), ("batch_train", (6, 4, 80)),
                ("batch_eval", (200, 4, 9))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm,shape", [pytest.param(n, s, id=f"{n}-{'x'.join(map(str, s))}")
                                        for n, s in REPEAT_CASES])
def test_repeat_same_bits_and_no_scratch_leak(norm, shape, dtype):
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("repeat",))
    first = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    second = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    assert_bitwise(second, first, f"{norm}: second call")
    # dirty every scratch buffer with a larger, nan-filled problem of the same kind,
    # and with a smaller one, then recompute
    big = tuple(s * 2 + 1 for s in shape)
    xb, dyb, wb, bb, rmb, rvb = operands(norm, big, dtype, key=("big",))
    xb[...] = np.nan
    dyb[...] = np.nan
    with np.errstate(all="ignore"):
        run_all(norm, xb, dyb, wb, bb, rmb, rvb, backend="cython")
        small = tuple(max(1, s // 2) for s in shape)
        xs, dys, ws, bs, rms_, rvs = operands(norm, small, dtype, key=("small",))
        if not (norm == "batch_train" and np.prod(small) // small[1] < 2):
            run_all(norm, xs, dys, ws, bs, rms_, rvs, backend="cython")
    third = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    assert_bitwise(third, first, f"{norm}: after other calls dirtied the scratch buffers")


def test_no_reference_leaks():
    """The kernels must not keep references to (or leak references of) their arguments."""
    arrays = {}
    for norm, shape in [("layer", (40, 33)), ("rms", (40, 33)), ("group", (4, 4, 20)),
                        ("batch_train", (30, 4, 9)), ("batch_train", (3, 4, 70)),
                        ("batch_eval", (30, 4, 9)), ("batch_eval", (3, 4, 70))]:
        arrays[(norm, shape)] = operands(norm, shape, F32, key=("leak",))

    def counts():
        return [sys.getrefcount(a) for ops in arrays.values() for a in ops if a is not None]

    def once():
        for (norm, _), (x, dy, w, b, rm, rv) in arrays.items():
            run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    once()
    gc.collect()
    before = counts()
    for _ in range(5):
        once()
    gc.collect()
    assert counts() == before


def test_no_memory_growth():
    import tracemalloc
    x, dy, w, b, _, _ = operands("layer", (256, 300), F32, key=("mem",))
    x3, dy3, w3, b3, rm, rv = operands("batch_eval", (64, 8, 9), F32, key=("mem",))

    def once():
        run_all("layer", x, dy, w, b, None, None, backend="cython")
        run_all("batch_train", x3, dy3, w3, b3, None, None, backend="cython")
        run_all("batch_eval", x3, dy3, w3, b3, rm, rv, backend="cython")
        run_all("group", x3, dy3, w3, b3, None, None, backend="cython")
        run_all("rms", x, dy, w, None, None, None, backend="cython")
    tracemalloc.start()
    try:
        for _ in range(5):
            once()
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(40):
            once()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024, f"traced memory grew by {grown} bytes over 40 rounds"


def test_two_python_threads_at_once():
    """Calls from two Python threads (each with its own scratch buffers, sharing the global
    kernel table) give the single-threaded results, bitwise."""
    cases = [("layer", (300, 129), F32), ("rms", (200, 1025), F64), ("group", (4, 6, 300), F32),
             ("batch_train", (300, 8, 9), F64), ("batch_train", (20, 4, 300), F32),
             ("batch_eval", (300, 8, 9), F32), ("instance", (6, 5, 70), F64),
             ("layer", (2, 70001), F64)]
    data = [operands(n, s, d, key=("pythreads",)) for n, s, d in cases]
    expected = [run_all(n, *ops, backend="cython") for (n, _, _), ops in zip(cases, data)]
    errors = []
    barrier = threading.Barrier(2)

    def worker(order):
        try:
            barrier.wait()
            for _ in range(6):
                for i in order:
                    got = run_all(cases[i][0], *data[i], backend="cython")
                    assert_bitwise(got, expected[i], f"thread: {cases[i][:2]}")
        except BaseException as exc:   # noqa: BLE001
            errors.append(exc)
    idx = list(range(len(cases)))
    ts = [threading.Thread(target=worker, args=(idx,)),
          threading.Thread(target=worker, args=(idx[::-1],))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    if errors:
        raise errors[0]


def test_two_python_threads_different_thread_counts():
    """One Python thread calls while the other flips fastdl.set_num_threads: the results
    must not depend on the thread count."""
    cases = [("layer", (500, 257), F32), ("batch_train", (400, 8, 9), F32),
             ("group", (8, 4, 500), F64)]
    data = [operands(n, s, d, key=("nt",)) for n, s, d in cases]
    expected = [run_all(n, *ops, backend="cython") for (n, _, _), ops in zip(cases, data)]
    stop = threading.Event()
    errors = []

    def flipper():
        k = 0
        while not stop.is_set():
            fastdl.set_num_threads(1 + (k % 2))
            k += 1

    def caller():
        try:
            for _ in range(10):
                for (n, _, _), ops, want in zip(cases, data, expected):
                    assert_bitwise(run_all(n, *ops, backend="cython"), want, f"{n}")
        except BaseException as exc:   # noqa: BLE001
            errors.append(exc)
    old = fastdl.get_num_threads()
    t1, t2 = threading.Thread(target=flipper), threading.Thread(target=caller)
    t1.start()
    t2.start()
    t2.join(120)
    stop.set()
    t1.join(10)
    fastdl.set_num_threads(old)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm,shape", [
    ("layer", (33, 1025)), ("rms", (33, 17)), ("group", (5, 4, 1025)), ("instance", (5, 3, 65)),
    ("batch_train", (33, 3, 63)), ("batch_train", (33, 3, 64)), ("batch_eval", (33, 3, 31)),
    ("batch_train", (1100, 2, 5))])
def test_one_vs_two_threads_small(norm, shape, dtype):
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("thr12",))
    with threads(1):
        one = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    with threads(2):
        two = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    with threads(3):
        three = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    assert_bitwise(two, one, f"{norm} {shape}: 2 threads vs 1")
    assert_bitwise(three, one, f"{norm} {shape}: 3 threads vs 1")


# ---------------------------------------------------------------- direct backend-op calls

def _direct_cases():
    """name -> zero-argument callable that calls a Cython backend op with a bad argument."""
    import fastdl._backends.cython as c
    x = np.ones((4, 8))
    x[:, ::2] = 2.0
    dy = np.ones((4, 8))
    m, r = np.zeros(4), np.ones(4)
    x3 = np.ones((2, 4, 8))
    x3[..., ::2] = 2
    x3l = np.ones((2, 4, 40))       # per-channel batch path (40 * 8 >= 256 bytes)
    x3l[..., ::2] = 2
    e = np.empty_like
    wide = np.empty((4, 16))
    return {
        "ln_fwd_w_len": lambda: c.layer_norm_fwd(x, np.ones(7), None, 1e-5, e(x)),
        "ln_fwd_b_len": lambda: c.layer_norm_fwd(x, None, np.ones(9), 1e-5, e(x)),
        "ln_fwd_w_2d": lambda: c.layer_norm_fwd(x, np.ones((1, 8)), None, 1e-5, e(x)),
        "ln_fwd_out_noncontig": lambda: c.layer_norm_fwd(x, None, None, 1e-5, wide[:, ::2]),
        "ln_fwd_out_fortran": lambda: c.layer_norm_fwd(x, None, None, 1e-5,
                                                       np.empty((4, 8), order="F")),
        "ln_fwd_out_dtype": lambda: c.layer_norm_fwd(x, None, None, 1e-5, e(x, np.float32)),
        "ln_fwd_out_shape": lambda: c.layer_norm_fwd(x, None, None, 1e-5, np.empty((4, 9))),
        "ln_fwd_out_readonly": lambda: c.layer_norm_fwd(
            x, None, None, 1e-5, np.lib.stride_tricks.as_strided(e(x), writeable=False)),
        "ln_fwd_out_list": lambda: c.layer_norm_fwd(x, None, None, 1e-5, [[0.0] * 8] * 4),
        "ln_fwd_x_1d": lambda: c.layer_norm_fwd(np.ones(8), None, None, 1e-5, np.empty(8)),
        "ln_fwd_x_int": lambda: c.layer_norm_fwd(np.ones((4, 8), int), None, None, 1e-5, e(x)),
        "ln_fwd_x_list": lambda: c.layer_norm_fwd([[1.0, 2.0]], None, None, 1e-5,
                                                  np.empty((1, 2))),
        "ln_fwd_x_None": lambda: c.layer_norm_fwd(None, None, None, 1e-5, e(x)),
        "ln_fwd_eps_None": lambda: c.layer_norm_fwd(x, None, None, None, e(x)),
        "ln_fwd_w_list_len": lambda: c.layer_norm_fwd(x, [1.0] * 7, None, 1e-5, e(x)),
        "ln_fwd_empty_rows": lambda: c.layer_norm_fwd(np.empty((3, 0)), None, None, 1e-5, None),
        "rms_fwd_empty": lambda: c.rms_norm_fwd(np.empty((0, 4)), None, 1e-5, None),
        "gn_fwd_empty_channels": lambda: c.group_norm_fwd(np.empty((2, 0, 3)), 1, None, None,
                                                          1e-5, None),
        "gn_fwd_empty_spatial": lambda: c.group_norm_fwd(np.empty((2, 4, 0)), 2, None, None,
                                                         1e-5, None),
        "bn_fwd_empty": lambda: c.batch_norm_fwd(np.empty((0, 4, 8)), None, None, 1e-5, None),
        "ln_bwd_mean_len": lambda: c.layer_norm_bwd(dy, x, np.zeros(3), r, None, True, True),
        "ln_bwd_rstd_len": lambda: c.layer_norm_bwd(dy, x, m, np.ones(5), None, True, True),
        "ln_bwd_dy_shape": lambda: c.layer_norm_bwd(np.ones((4, 7)), x, m, r, None, True, True),
        "ln_bwd_w_len": lambda: c.layer_norm_bwd(dy, x, m, r, np.ones(3), True, True),
        "ln_bwd_mean_None": lambda: c.layer_norm_bwd(dy, x, None, r, None, True, True),
        "ln_bwd_rstd_None": lambda: c.layer_norm_bwd(dy, x, m, None, None, True, True),
        "ln_bwd_dy_None": lambda: c.layer_norm_bwd(None, x, m, r, None, True, True),
        "rms_fwd_w_len": lambda: c.rms_norm_fwd(x, np.ones(9), 1e-5, e(x)),
        "rms_fwd_out_noncontig": lambda: c.rms_norm_fwd(x, None, 1e-5, wide[:, 1::2]),
        "rms_bwd_rstd_len": lambda: c.rms_norm_bwd(dy, x, np.ones(3), None, True),
        "rms_bwd_rstd_None": lambda: c.rms_norm_bwd(dy, x, None, None, True),
        "rms_bwd_dy_None": lambda: c.rms_norm_bwd(None, x, r, None, True),
        "gn_fwd_G_not_divisor": lambda: c.group_norm_fwd(x3, 3, None, None, 1e-5, e(x3)),
        "gn_fwd_G_0": lambda: c.group_norm_fwd(x3, 0, None, None, 1e-5, e(x3)),
        "gn_fwd_G_neg": lambda: c.group_norm_fwd(x3, -2, None, None, 1e-5, e(x3)),
        "gn_fwd_x_2d": lambda: c.group_norm_fwd(x, 1, None, None, 1e-5, e(x)),
        "gn_fwd_w_len": lambda: c.group_norm_fwd(x3, 2, np.ones(8), None, 1e-5, e(x3)),
        "gn_fwd_out_noncontig": lambda: c.group_norm_fwd(x3, 2, None, None, 1e-5,
                                                         np.empty((2, 4, 16))[..., ::2]),
        "gn_bwd_mean_shape": lambda: c.group_norm_bwd(x3, x3, np.zeros(3), np.ones(4), 2, None,
                                                      True, True),
        "gn_bwd_mean_None": lambda: c.group_norm_bwd(x3, x3, None, np.ones(4), 2, None,
                                                     True, True),
        "gn_bwd_rstd_None": lambda: c.group_norm_bwd(x3, x3, np.zeros(4), None, 2, None,
                                                     True, True),
        "gn_bwd_dy_None": lambda: c.group_norm_bwd(None, x3, np.zeros(4), np.ones(4), 2, None,
                                                   True, True),
        "bn_fwd_w_len": lambda: c.batch_norm_fwd(x3, np.ones(3), None, 1e-5, e(x3)),
        "bn_fwd_b_len": lambda: c.batch_norm_fwd(x3l, None, np.ones(5), 1e-5, e(x3l)),
        "bn_fwd_out_noncontig": lambda: c.batch_norm_fwd(x3, None, None, 1e-5,
                                                         np.empty((2, 8, 8))[:, ::2]),
        "bn_eval_mean_len": lambda: c.batch_norm_eval(x3, np.zeros(3), np.ones(4), None, None,
                                                      e(x3)),
        "bn_eval_mean_None_cols": lambda: c.batch_norm_eval(x3, None, np.ones(4), None, None,
                                                            e(x3)),
        "bn_eval_mean_None_chan": lambda: c.batch_norm_eval(x3l, None, np.ones(4), None, None,
                                                            e(x3l)),
        "bn_eval_rstd_None_chan": lambda: c.batch_norm_eval(x3l, np.zeros(4), None, None, None,
                                                            e(x3l)),
        "bn_bwd_mean_None_chan": lambda: c.batch_norm_bwd(x3l, x3l, None, np.ones(4), None, True,
                                                          True, True),
        "bn_bwd_rstd_None_cols": lambda: c.batch_norm_bwd(x3, x3, np.zeros(4), None, None, True,
                                                          True, True),
        "bn_bwd_dy_None_chan": lambda: c.batch_norm_bwd(None, x3l, np.zeros(4), np.ones(4), None,
                                                        True, True, True),
        "bn_bwd_dy_shape": lambda: c.batch_norm_bwd(np.ones((2, 4, 7)), x3, np.zeros(4),
                                                    np.ones(4), None, True, True, True),
        "bn_bwd_w_len": lambda: c.batch_norm_bwd(x3l, x3l, np.zeros(4), np.ones(4), np.ones(5),
                                                 True, True, True),
    }


def _run_direct(names):
    """Child process: run each case, one JSON line per case (started / outcome)."""
    cases = _direct_cases()
    for name in names:
        print(json.dumps({"start": name}), flush=True)
        try:
            cases[name]()
            res = {"name": name, "outcome": "returned"}
        except Exception as exc:   # noqa: BLE001
            res = {"name": name, "outcome": "raised", "type": type(exc).__name__,
                   "msg": str(exc)[:200]}
        print(json.dumps(res), flush=True)


DIRECT_NAMES = list(_direct_cases()) if cy is not None else []


@pytest.fixture(scope="module")
def direct_results():
    """Outcome of every direct case, run in child processes; a child that dies marks the
    case it was running as crashed and the rest run in a fresh child."""
    here = os.path.abspath(__file__)
    root = os.path.dirname(os.path.dirname(here))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FASTDL_NUM_THREADS="2")
    todo, results = list(DIRECT_NAMES), {}
    while todo:
        proc = subprocess.run([sys.executable, "-X", "faulthandler", here, "--direct"] + todo,
                              capture_output=True, text=True, timeout=120, env=env, cwd=root)
        started = None
        for line in proc.stdout.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "start" in rec:
                started = rec["start"]
            else:
                results[rec["name"]] = rec
                started = None
        if started is not None:      # the child died inside this case
            results[started] = {"name": started, "outcome": "crashed",
                                "rc": proc.returncode, "stderr": proc.stderr[-600:]}
        elif proc.returncode != 0 and len(results) < len(DIRECT_NAMES):
            raise RuntimeError(f"direct-case child failed: {proc.stderr[-2000:]}")
        todo = [n for n in todo if n not in results]
    return results


@pytest.mark.parametrize("name", DIRECT_NAMES)
def test_direct_op_bad_arguments_raise(name, direct_results):
    res = direct_results[name]
    assert res["outcome"] != "crashed", \
        f"{name}: the process died (rc={res.get('rc')}):\n{res.get('stderr')}"
    assert res["outcome"] == "raised", f"{name}: returned instead of raising"
    assert res["type"] in ("ValueError", "TypeError"), \
        f"{name}: raised {res['type']}: {res['msg']}"


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--direct":
    _run_direct(sys.argv[2:])
