"""Shared by the tests/test_norm_kernels_*.py modules: aligned and misaligned operands, one
forward / backward call per norm on a chosen backend, bitwise and tolerance comparisons,
and the SIMD-twin runner (every level at 1 and 2 threads).
"""

import numpy as np
import pytest

import fastdl

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl.testing import rng_for, simd, simd_levels, threads


LEVELS = simd_levels()


F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F64, id="f64")]
RTOL = {F32: 1e-4, F64: 1e-10}


ROW_NORMS = ["layer", "rms"]                       # x (R, D)
CHAN_NORMS = ["group", "instance", "batch_train", "batch_eval"]   # x (N, C, S)
NORMS = ROW_NORMS + CHAN_NORMS


def operands(norm, shape, dtype, key=(), loc=1.5, xdtype=None):
    """x, dy (in ``xdtype``, default ``dtype``), weight, bias and the running statistics
    batch_eval uses (in ``dtype``), seeded by the arguments."""
    xdtype = dtype if xdtype is None else xdtype
    rng = rng_for(norm, shape, np.dtype(dtype).name, *key)
    x = (rng.standard_normal(shape) * 1.3 + loc).astype(xdtype)
    dy = rng.standard_normal(shape).astype(xdtype)
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
