"""Shared by the tests/test_decode_kernels_*.py modules: sort-based topk references, an
exact comparison that treats NaN as equal, and the check of topk against them.
"""

import numpy as np
import pytest

from fastdl.decode import beam_topk, topk

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _decode  # noqa: E402
from fastdl.testing import simd  # noqa: E402


DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


CHUNK = _decode.PARAMS["chunk"]
LONG = 300_001          # one row > TOPK_MIN_PART * several: the part + merge path


def _order_key(v, i):
    """independent total order: NaN first (by index), then value desc, then index"""
    return (0, 0.0, i) if np.isnan(v) else (1, -float(v), i)


def assert_twin_tails(fn, x, level, equal=None, tails=40):
    """``fn(x)`` at SIMD ``level`` is ``equal`` (default: ``same``) to the scalar twin's,
    and so is every masked tail ``fn(x[-n:])``, n <= ``tails``; returns both results."""
    equal = same if equal is None else equal
    with simd(level):
        got = fn(x)
        ends = [fn(x[-n:]) for n in range(1, tails + 1)]
    with simd("scalar"):
        want = fn(x)
    assert equal(got, want)
    for n, end in enumerate(ends, 1):
        assert equal(end, want[-n:]), n
    return got, want


def ref_topk_row(row, k):
    idx = sorted(range(row.size), key=lambda i: _order_key(row[i], i))[:k]
    return row[idx], np.array(idx, np.int64)


def same(a, b):
    """bitwise equal arrays (NaN payloads aside; -0.0 != +0.0)"""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb) and np.array_equal(np.signbit(a[~na]), np.signbit(b[~nb]))
                and np.array_equal(a[~na], b[~nb]))


def check_topk(x, k, **kw):
    v, i = topk(x, k, backend="cython", **kw)
    rv, ri = topk(x, k, backend="numpy", **kw)
    assert np.array_equal(i, ri), "indices differ from the numpy backend"
    assert same(v, rv), "values differ from the numpy backend"
    return v, i


def ulp_close(a, b, x, off, n_ulp=4):
    """|a - b| within n_ulp ulps of the larger of |x|, |off| (the subtraction's scale)"""
    scale = np.maximum(np.abs(x), np.abs(off)[..., None]).astype(a.dtype)
    tol = n_ulp * np.spacing(np.maximum(scale, np.finfo(a.dtype).tiny))
    fin = np.isfinite(b)
    return bool(np.array_equal(np.isnan(a), np.isnan(b)) and np.all((a[~fin] == b[~fin]) | np.isnan(b[~fin]))
                and np.all(np.abs(a[fin] - b[fin]) <= tol[fin]))


def ref_offsets(x):
    x = x.astype(np.float64)
    m = x.max(axis=1)
    with np.errstate(all="ignore"):
        off = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
    return np.where(np.isfinite(m), off, np.nan)


def ref_beam(lp, s, k, normalize):
    """independent: materialise and sort with the total order"""
    B, N = lp.shape
    if normalize:
        off = ref_offsets(lp)
        dead = np.all(lp == -np.inf, axis=1)
        with np.errstate(invalid="ignore"):
            add = s.astype(np.float64) - off
        add[dead] = -np.inf
        add = add.astype(lp.dtype)
    else:
        add = s
    with np.errstate(invalid="ignore"):
        sc = (lp + add[:, None]).ravel()
    return ref_topk_row(sc, k) if sc.size <= 4000 else None


def check_beam(lp, s, k, normalize, exact_values=None):
    v, b, t = beam_topk(lp, s, k, normalize=normalize, backend="cython")
    rv, rb, rt = beam_topk(lp, s, k, normalize=normalize, backend="numpy")
    assert np.array_equal(b, rb) and np.array_equal(t, rt), "indices differ"
    assert b.dtype == np.int64 and t.dtype == np.int64 and v.dtype == lp.dtype
    if exact_values is None:
        exact_values = not normalize
    if exact_values:
        assert same(v, rv)
    else:
        fin = np.isfinite(rv)
        assert np.array_equal(np.isnan(v), np.isnan(rv)) and np.array_equal(v[~fin & ~np.isnan(rv)],
                                                                               rv[~fin & ~np.isnan(rv)])
        # the error is in add[b] (rounded once from float64): scale |score| + |x|
        scale = np.abs(rv[fin]) + np.abs(lp[rb[fin], rt[fin]]) + 1
        assert np.all(np.abs(v[fin] - rv[fin]) <= 4 * np.spacing(scale.astype(lp.dtype)))
    ref = ref_beam(lp, s, k, normalize)
    if ref is not None:
        assert np.array_equal(b * lp.shape[1] + t, ref[1])
    return v, b, t
