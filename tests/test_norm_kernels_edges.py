"""Stress tests of the Cython normalization kernels: edge sizes and non-finite values.

* edge sizes (D=1, S=1, N=1, C=1, one channel per group, the batch-norm per-channel /
  per-column threshold at S * itemsize = 256 bytes, N*S = 2), a mean far from zero in
  float32, no weight and bias;
* inf/nan propagate like NumPy; constant rows give the bias (eps > 0) or what NumPy
  gives (eps = 0).

Everything here must run in well under a minute on 2 cores.
"""

import numpy as np
import pytest

import fastdl

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl.testing import has_simd, rng_for

from _norm_kernels_helpers import (  # noqa: E402
    DTYPES, F32, NAMES, NORMS, ROW_NORMS, RTOL, assert_close, assert_twins, forward,
    operands, run_all, twins)


def cython_vs_numpy(norm, x, dy, w, b, rm, rv, dtype, what, **kw):
    got = run_all(norm, x, dy, w, b, rm, rv, backend="cython", **kw)
    want = run_all(norm, x, dy, w, b, rm, rv, backend="numpy", eps=kw.get("eps", 1e-5))
    assert_close(got, want, dtype, what)
    return got


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
    if has_simd("avx2"):
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
    if has_simd("avx2"):
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
