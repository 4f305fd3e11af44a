"""fastdl normalization layers, buffers: inputs never modified, running statistics
(updated, kept, required), ``out=`` (received, rejected, overlapping), statistics that
never alias the running buffers, and empty batches.

Tests whose id contains "cython" run the Cython kernels; the rest run the NumPy
reference (``-k "not cython"`` selects those alone).
"""

import numpy as np
import pytest
from hypothesis import strategies as st

import fastdl
from fastdl import NormStats
from fastdl.testing import rng_for, threads

from _norm_layers_helpers import assert_same, bwd, fwd, make_array, operands


# every layer and mode fwd() / bwd() call
NORMS = ["batch_train", "batch_eval", "instance", "instance_eval", "group", "layer", "rms"]


# ---------------------------------------------------------------- inputs are never modified

def _mean_var(x, norm):
    xd = x.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim)) if norm == "batch_train" else tuple(range(2, x.ndim))
    return xd.mean(axis=axes), xd.var(axis=axes, ddof=1)


@pytest.mark.parametrize("layout", ["c", "f", "step"])
@pytest.mark.parametrize("norm", NORMS)
def test_inputs_not_modified(norm, layout, backend):
    shape = (4, 6, 5)
    x, dy, w, b, rm, rv = operands(norm, shape, key=("untouched",))
    rng = rng_for("layout", norm, layout)
    x = make_array(shape, np.float64, layout, rng, 0.5, 2.0)
    dy = make_array(shape, np.float64, layout, rng)
    arrays = {"input": x, "grad_output": dy, "weight": w, "bias": b}
    saved = {k: None if v is None else v.copy() for k, v in arrays.items()}
    rm0 = None if rm is None else rm.copy()
    rv0 = None if rv is None else rv.copy()
    momentum = 0.1                                   # the default

    y, stats = fwd(norm, x, w, b, rm, rv, backend=backend, return_stats=True)
    for k, v in arrays.items():
        assert_same(v, saved[k], f"forward modified {k}")
    if norm in ("batch_train", "instance"):
        # documented update: (1 - momentum) * running + momentum * batch, variance unbiased
        mean, var = _mean_var(x, norm)
        if norm == "instance":                       # mean over the batch of per-(n, c)
            mean, var = mean.mean(axis=0), var.mean(axis=0)
        np.testing.assert_allclose(rm, (1 - momentum) * rm0 + momentum * mean, rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_allclose(rv, (1 - momentum) * rv0 + momentum * var, rtol=1e-12)
    elif rm is not None:
        assert_same(rm, rm0, "evaluation modified running_mean")
        assert_same(rv, rv0, "evaluation modified running_var")

    rm1 = None if rm is None else rm.copy()
    rv1 = None if rv is None else rv.copy()
    st_saved = (None if stats.mean is None else stats.mean.copy(), stats.rstd.copy())
    y_saved = y.copy()
    for kw in ({}, {"stats": stats}):
        bwd(norm, dy, x, w, b, rm, rv, backend=backend, **kw)
        for k, v in arrays.items():
            assert_same(v, saved[k], f"backward modified {k}")
        assert_same(rm, rm1, "backward modified running_mean")
        assert_same(rv, rv1, "backward modified running_var")
        assert_same(stats.mean, st_saved[0], "backward modified stats.mean")
        assert_same(stats.rstd, st_saved[1], "backward modified stats.rstd")
        assert_same(y, y_saved, "backward modified the forward's output")


# ---------------------------------------------------------------- running statistics

def test_batch_norm_training_without_running_stats(backend):
    x, _, w, b, rm, rv = operands("batch_train", (5, 3, 4), key=("norunning",))
    y0, s0 = fastdl.batch_norm(x, None, None, w, b, training=True, return_stats=True,
                               backend=backend)
    y1, s1 = fastdl.batch_norm(x, rm, rv, w, b, training=True, return_stats=True,
                               backend=backend)
    assert_same(y0, y1)
    assert_same(s0.mean, s1.mean)
    assert_same(s0.rstd, s1.rstd)
    mean, _ = _mean_var(x, "batch_train")
    np.testing.assert_allclose(s0.mean, mean, rtol=1e-12)


@pytest.mark.parametrize("norm", ["batch_train", "instance"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_momentum_0_keeps_and_1_replaces_running_stats(norm, dtype, backend):
    shape = (5, 3, 4)
    x, _, w, b, rm, rv = operands(norm, shape, dtype, key=("momentum",))
    rm0, rv0 = rm.copy(), rv.copy()
    layer = fastdl.batch_norm if norm == "batch_train" else fastdl.instance_norm

    def call(momentum):
        layer(x, rm, rv, w, b, True, momentum, backend=backend)

    call(0.0)
    assert_same(rm, rm0, "momentum=0 changed running_mean")
    assert_same(rv, rv0, "momentum=0 changed running_var")
    call(1.0)
    mean, var = _mean_var(x, norm)                   # var unbiased
    if norm == "instance":
        mean, var = mean.mean(axis=0), var.mean(axis=0)
    assert rm.dtype == rv.dtype == dtype
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(rm, mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(rv, var, rtol=tol)


@pytest.mark.parametrize("norm", ["batch_eval", "instance_eval"])
def test_evaluation_requires_running_stats(norm):
    x = np.ones((2, 3, 4))
    match = "running_mean and running_var are required when " + (
        "training=False" if norm == "batch_eval" else "use_input_stats=False")
    with pytest.raises(ValueError, match=match):
        fwd(norm, x, backend="numpy")
    with pytest.raises(ValueError, match=match):
        bwd(norm, x, x, backend="numpy")


# ---------------------------------------------------------------- out=

def _fwd_plain(norm, x, w, b, rm, rv, backend, **kw):
    """Forward with copies of the running buffers (so repeated calls see the same state)."""
    rm = None if rm is None else rm.copy()
    rv = None if rv is None else rv.copy()
    return fwd(norm, x, w, b, rm, rv, backend=backend, **kw)


@pytest.mark.parametrize("norm", NORMS)
def test_out_receives_the_result(norm, backend):
    shape = (3, 4, 5)
    x, _, w, b, rm, rv = operands(norm, shape, key=("out",))
    want = _fwd_plain(norm, x, w, b, rm, rv, backend)

    out = np.full(shape, np.nan)
    got = _fwd_plain(norm, x, w, b, rm, rv, backend, out=out)
    assert got is out
    assert_same(out, want)

    out = np.full(shape[::-1], np.nan).T                    # transposed, not C-contiguous
    assert not out.flags.c_contiguous
    got, stats = _fwd_plain(norm, x, w, b, rm, rv, backend, out=out, return_stats=True)
    assert got is out and isinstance(stats, NormStats)
    assert_same(out, want)

    big = np.full(shape[:-1] + (2 * shape[-1],), np.nan)    # every other element
    out = big[..., ::2]
    got = _fwd_plain(norm, x, w, b, rm, rv, backend, out=out)
    assert got is out
    assert_same(out, want)
    assert np.isnan(big[..., 1::2]).all(), "out= wrote outside its view"


@pytest.mark.parametrize("norm", NORMS)
def test_out_rejected(norm):
    shape = (3, 4, 5)
    x, _, w, b, rm, rv = operands(norm, shape, key=("badout",))
    with pytest.raises(ValueError, match=r"out must have shape \(3, 4, 5\), got \(3, 5, 4\)"):
        _fwd_plain(norm, x, w, b, rm, rv, "numpy", out=np.empty((3, 5, 4)))
    with pytest.raises(TypeError, match="out must have dtype float64, got float32"):
        _fwd_plain(norm, x, w, b, rm, rv, "numpy", out=np.empty(shape, np.float32))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray, got list"):
        _fwd_plain(norm, x, w, b, rm, rv, "numpy", out=np.empty(shape).tolist())
    ro = np.empty(shape)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        _fwd_plain(norm, x, w, b, rm, rv, "numpy", out=ro)
    with pytest.raises(ValueError, match="out must not overlap"):
        _fwd_plain(norm, x, w, b, rm, rv, "numpy", out=x)
    with pytest.raises(ValueError, match="out must not overlap"):
        _fwd_plain(norm, x, w, b, rm, rv, "numpy", out=x[::-1])
    base = np.zeros((3, 4, 6))
    xv = base[..., :5]
    xv[...] = x
    with pytest.raises(ValueError, match="out must not overlap"):
        _fwd_plain(norm, xv, w, b, rm, rv, "numpy", out=base[..., 1:])   # partial overlap


@pytest.mark.parametrize("norm", NORMS)
def test_out_overlapping_weight_or_bias(norm, backend):
    """out= sharing memory with weight / bias must be rejected or give the right result."""
    shape = (3, 4, 5)
    x, _, w, b, rm, rv = operands(norm, shape, key=("outparam",))
    want = _fwd_plain(norm, x, w, b, rm, rv, backend)
    out = np.zeros(shape)
    flat = out.reshape(-1)                       # contiguous views into out
    wv = flat[:w.size].reshape(w.shape)
    wv[...] = w
    bv = None
    if b is not None:
        bv = flat[2 * w.size:3 * w.size].reshape(b.shape)
        bv[...] = b
    try:
        got = _fwd_plain(norm, x, wv, bv, rm, rv, backend, out=out)
    except ValueError as exc:
        assert "overlap" in str(exc)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12,
                                   err_msg="out= aliasing weight/bias gave a wrong result")


@pytest.mark.parametrize("norm", ["batch_eval", "instance_eval"])
def test_eval_stats_do_not_alias_running_buffers(norm, backend):
    x, _, w, b, rm, rv = operands(norm, (3, 4, 5), key=("alias",))
    _, stats = fwd(norm, x, w, b, rm, rv, backend=backend, return_stats=True)
    mean, rstd = stats.mean.copy(), stats.rstd.copy()
    rm += 1.0
    rv *= 2.0
    assert_same(stats.mean, mean, "stats.mean follows running_mean")
    assert_same(stats.rstd, rstd, "stats.rstd follows running_var")


# ---------------------------------------------------------------- empty batch

@pytest.mark.parametrize("norm", ["layer", "rms", "group", "batch_eval", "instance",
                                  "instance_eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_empty_batch(norm, dtype, backend):
    shape = (0, 4, 5)
    _, _, w, b, rm, rv = operands(norm, (2, 4, 5), dtype, key=("empty",))
    x = np.zeros(shape, dtype)
    rm0 = None if rm is None else rm.copy()
    rv0 = None if rv is None else rv.copy()
    y, stats = fwd(norm, x, w, b, rm, rv, backend=backend, return_stats=True)
    assert y.shape == shape and y.dtype == dtype
    want_stats = {"layer": (0, 4), "rms": (0, 4), "group": (0, 2), "instance": (0, 4),
                  "batch_eval": (4,), "instance_eval": (4,)}[norm]
    assert stats.rstd.shape == want_stats
    if norm != "rms":
        assert stats.mean.shape == want_stats
    if rm is not None:
        assert_same(rm, rm0)
        assert_same(rv, rv0)
    out = np.empty(shape, dtype)
    assert fwd(norm, x, w, b, rm, rv, backend=backend, out=out) is out
    for kw in ({}, {"stats": stats}):
        dx, dw, db = bwd(norm, x, x, w, b, rm, rv, backend=backend, **kw)
        assert dx.shape == shape and dx.dtype == dtype
        if w is not None:
            assert_same(dw, np.zeros_like(w))
        if b is not None:
            assert_same(db, np.zeros_like(b))


def test_layer_norm_empty_leading_dim(backend):
    x = np.zeros((3, 0, 5), np.float32)
    y, stats = fastdl.layer_norm(x, 5, np.ones(5, np.float32), return_stats=True,
                                 backend=backend)
    assert y.shape == x.shape and stats.mean.shape == stats.rstd.shape == (3, 0)
    dx, dw, db = fastdl.layer_norm_backward(x, x, 5, np.ones(5, np.float32), backend=backend)
    assert dx.shape == x.shape and db is None
    assert_same(dw, np.zeros(5, np.float32))


def test_running_buffers_must_not_overlap_operands():
    x = np.random.default_rng(0).standard_normal((4, 3))
    with pytest.raises(ValueError, match="running_mean and running_var must not share memory "
                                         "with the input"):
        fastdl.batch_norm(x, x[0], np.ones(3), training=True)
    buf = np.ones(3)
    with pytest.raises(ValueError, match="must not share memory"):
        fastdl.batch_norm(x, buf, buf, training=True)
    x3 = x.reshape(4, 3, 1).repeat(2, axis=2)
    with pytest.raises(ValueError, match="must not share memory with the input"):
        fastdl.instance_norm(x3, x3[0, :, 0], np.ones(3))


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_batch_norm_without_channels(backend):
    x = np.ones((4, 0, 5))
    y, stats = fastdl.batch_norm(x, None, None, training=True, return_stats=True, backend=backend)
    assert y.shape == x.shape and stats.mean.shape == (0,)
    dx, dw, db = fastdl.batch_norm_backward(np.ones_like(x), x, None, None, np.ones(0),
                                            np.zeros(0), True, backend=backend)
    assert dx.shape == x.shape and dw.shape == (0,) and db.shape == (0,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_few_channels_parallel_over_batch(dtype):
    """Few channels (C < 16): the forward shares (n, c) segments out to threads.
    Same values as NumPy, same bits for 1 and 2 threads."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((33, 3, 257)) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w, b = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    got = {}
    for nt in (1, 2):
        with threads(nt):
            y, st = fastdl.batch_norm(x, None, None, w, b, True, return_stats=True,
                                      backend="cython")
            grads = fastdl.batch_norm_backward(dy, x, None, None, w, b, True, stats=st,
                                               backend="cython")
        got[nt] = (y, st.mean, st.rstd) + grads
    for a, c in zip(got[1], got[2]):
        assert np.array_equal(a, c)
    y_ref, st_ref = fastdl.batch_norm(x, None, None, w, b, True, return_stats=True,
                                      backend="numpy")
    ref = fastdl.batch_norm_backward(dy, x, None, None, w, b, True, stats=st_ref,
                                     backend="numpy")
    np.testing.assert_allclose(got[2][0], y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(got[2][1], st_ref.mean, rtol=tol, atol=tol)
    for a, r in zip(got[2][3:], ref):
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol * np.abs(r).max())
