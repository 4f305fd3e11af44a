"""fastdl normalization layers without torch: backends against each other, gradients by
finite differences, the document's Question 1, accuracy, threads, argument rules.

Tests whose id contains "cython" run the Cython kernels; the rest run the NumPy
reference (``-k "not cython"`` selects those alone).
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastdl
from fastdl import NormStats
from fastdl.testing import rng_for, threads


# The document's 4 x 2 x 3 tensor (batch, channels, features), as in test_norm_stats.py.
DOC_X = np.array([[[2, 5, 1], [4, 3, 4]],
                  [[1, 2, 4], [1, 2, 2]],
                  [[3, 1, 2], [3, 2, 4]],
                  [[3, 4, 3], [5, 2, 3]]], dtype=np.float64)


# ---------------------------------------------------------------- one interface for every norm
#
# NORMS name a layer and its mode.  fwd()/bwd() call it with weight w, bias b (per-channel,
# or the normalized shape for layer/RMS norm) and, for the modes that use them, running
# statistics rm/rv.  Group norm uses 2 groups when C is even, else 1.

NORMS = ["batch_train", "batch_eval", "instance", "instance_eval", "group", "layer", "rms"]
CENTERING = ["batch_train", "instance", "group", "layer"]   # normalize with their own statistics
RUNNING = {"batch_train", "batch_eval", "instance", "instance_eval"}


def groups_of(C):
    return 2 if C % 2 == 0 else 1


def param_shape(norm, shape):
    return shape[-1:] if norm in ("layer", "rms") else (shape[1],)


def fwd(norm, x, w=None, b=None, rm=None, rv=None, *, backend, **kw):
    if norm in ("batch_train", "batch_eval"):
        return fastdl.batch_norm(x, rm, rv, w, b, norm == "batch_train", backend=backend, **kw)
    if norm in ("instance", "instance_eval"):
        return fastdl.instance_norm(x, rm, rv, w, b, norm == "instance", backend=backend, **kw)
    if norm == "group":
        return fastdl.group_norm(x, groups_of(x.shape[1]), w, b, backend=backend, **kw)
    if norm == "layer":
        return fastdl.layer_norm(x, x.shape[-1:], w, b, backend=backend, **kw)
    assert b is None
    return fastdl.rms_norm(x, x.shape[-1:], w, backend=backend, **kw)


def bwd(norm, dy, x, w=None, b=None, rm=None, rv=None, *, backend, **kw):
    if norm in ("batch_train", "batch_eval"):
        return fastdl.batch_norm_backward(dy, x, rm, rv, w, b, norm == "batch_train",
                                          backend=backend, **kw)
    if norm in ("instance", "instance_eval"):
        return fastdl.instance_norm_backward(dy, x, rm, rv, w, b, norm == "instance",
                                             backend=backend, **kw)
    if norm == "group":
        return fastdl.group_norm_backward(dy, x, groups_of(x.shape[1]), w, b, backend=backend,
                                          **kw)
    if norm == "layer":
        return fastdl.layer_norm_backward(dy, x, x.shape[-1:], w, b, backend=backend, **kw)
    assert b is None
    return fastdl.rms_norm_backward(dy, x, x.shape[-1:], w, backend=backend, **kw)


def operands(norm, shape, dtype=np.float64, *, affine=True, key=()):
    """x, dy, w, b, rm, rv for ``norm`` (None where the layer / mode takes none)."""
    rng = rng_for(norm, shape, np.dtype(dtype).name, affine, *key)
    x = (rng.standard_normal(shape) * 1.3 + 0.4).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ps = param_shape(norm, shape)
    w = (rng.standard_normal(ps) * 0.5 + 1).astype(dtype) if affine else None
    b = rng.standard_normal(ps).astype(dtype) if affine and norm != "rms" else None
    rm = rv = None
    if norm in RUNNING:
        C = shape[1]
        rm = (rng.standard_normal(C) * 0.3).astype(dtype)
        rv = rng.uniform(0.5, 2.0, C).astype(dtype)
    return x, dy, w, b, rm, rv


def assert_same(a, b, what=""):
    if b is None:
        assert a is None, what
    else:
        assert a.dtype == b.dtype, what
        np.testing.assert_array_equal(a, b, err_msg=what)


# ---------------------------------------------------------------- Cython against NumPy (hypothesis)

LAYOUTS = ["c", "f", "step", "transposed", "reversed"]


def make_array(shape, dtype, layout, rng, offset=0.0, scale=1.0):
    """``shape`` values of ``dtype`` stored C-contiguous, Fortran, with steps of 2, with
    axes 0 and 1 swapped in memory, or with negative strides."""
    if layout == "step":
        big = (2 * shape[0],) + tuple(shape[1:-1]) + (2 * shape[-1],)
        base = (rng.standard_normal(big) * scale + offset).astype(dtype)
        a = base[::2, ..., ::2]
    else:
        a = (rng.standard_normal(shape) * scale + offset).astype(dtype)
        if layout == "f":
            a = np.asfortranarray(a)
        elif layout == "transposed":
            a = np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)
        elif layout == "reversed":
            a = np.ascontiguousarray(a[::-1, ..., ::-1])[::-1, ..., ::-1]
    assert a.shape == tuple(shape)
    return a


def make_param(ps, dtype, rng, strided, loc=0.0):
    if strided:   # every other element of a longer array
        full = (rng.standard_normal(tuple(ps[:-1]) + (2 * ps[-1],)) * 0.5 + loc).astype(dtype)
        return full[..., ::2]
    return (rng.standard_normal(ps) * 0.5 + loc).astype(dtype)


@st.composite
def cases(draw):
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.sampled_from([1, 2, 3, 5, 7, 8])) for _ in range(ndim))
    return dict(
        shape=shape,
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        layout=draw(st.sampled_from(LAYOUTS)),
        dy_layout=draw(st.sampled_from(LAYOUTS)),
        weight=draw(st.booleans()),
        bias=draw(st.booleans()),
        strided_params=draw(st.booleans()),
        offset=draw(st.sampled_from([0.0, 3.0, -20.0])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def tolerance(dtype):
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-10


def assert_close(got, want, dtype, what):
    """Backends agree within the dtype's tolerance, absolute part relative to the scale."""
    if want is None:
        assert got is None, what
        return
    assert got is not None, what
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    tol = tolerance(dtype)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


def compare_backends(run_fwd, run_bwd, dtype):
    """run_fwd(backend) -> (y, stats); run_bwd(backend, stats) -> grads. Cython vs NumPy."""
    y_c, s_c = run_fwd("cython")
    y_n, s_n = run_fwd("numpy")
    assert_close(y_c, y_n, dtype, "forward output")
    assert_close(s_c.mean, s_n.mean, np.float64 if dtype == np.float64 else dtype, "stats.mean")
    assert_close(s_c.rstd, s_n.rstd, dtype, "stats.rstd")
    for stats_c, stats_n in ((None, None), (s_c, s_n)):
        g_c = run_bwd("cython", stats_c)
        g_n = run_bwd("numpy", stats_n)
        for got, want, name in zip(g_c, g_n, ("dx", "dweight", "dbias")):
            assert_close(got, want, dtype, name)


def hyp_operands(case, ps, with_bias=True):
    rng = np.random.default_rng(case["seed"])
    dtype, shape = case["dtype"], case["shape"]
    x = make_array(shape, dtype, case["layout"], rng, case["offset"], 1.5)
    dy = make_array(shape, dtype, case["dy_layout"], rng)
    w = make_param(ps, dtype, rng, case["strided_params"], 1.0) if case["weight"] else None
    b = make_param(ps, dtype, rng, case["strided_params"]) \
        if case["bias"] and with_bias else None
    return rng, x, dy, w, b


HYP = settings(max_examples=30, deadline=None)


@HYP
@given(cases(), st.booleans())
def test_hypothesis_cython_matches_numpy_batch_norm(case, training):
    shape, dtype = case["shape"], case["dtype"]
    C = shape[1]
    assume(not training or np.prod(shape) // C > 1)
    rng, x, dy, w, b = hyp_operands(case, (C,))
    rm0 = (rng.standard_normal(C) + case["offset"]).astype(dtype)
    rv0 = rng.uniform(0.5, 3, C).astype(dtype)
    x0 = x.copy()
    bufs = {}

    def run_fwd(backend):
        rm, rv = rm0.copy(), rv0.copy()
        out = fastdl.batch_norm(x, rm, rv, w, b, training, 0.2, 1e-4, return_stats=True,
                                backend=backend)
        bufs[backend] = rm, rv
        return out

    def run_bwd(backend, stats):
        return fastdl.batch_norm_backward(dy, x, rm0, rv0, w, b, training, 0.2, 1e-4,
                                          stats=stats, backend=backend)

    compare_backends(run_fwd, run_bwd, dtype)
    for got, want, name in zip(bufs["cython"], bufs["numpy"], ("running_mean", "running_var")):
        assert_close(got, want, dtype, name)
    np.testing.assert_array_equal(x, x0)


@HYP
@given(cases(), st.integers(1, 4))
def test_hypothesis_cython_matches_numpy_layer_norm(case, k):
    shape, dtype = case["shape"], case["dtype"]
    ns = shape[-min(k, len(shape)):]
    _, x, dy, w, b = hyp_operands(case, ns)
    compare_backends(
        lambda be: fastdl.layer_norm(x, ns, w, b, 1e-4, return_stats=True, backend=be),
        lambda be, stats: fastdl.layer_norm_backward(dy, x, ns, w, b, 1e-4, stats=stats,
                                                     backend=be),
        dtype)


@HYP
@given(cases(), st.integers(1, 4), st.sampled_from([None, 1e-3]))
def test_hypothesis_cython_matches_numpy_rms_norm(case, k, eps):
    shape, dtype = case["shape"], case["dtype"]
    ns = shape[-min(k, len(shape)):]
    _, x, dy, w, _ = hyp_operands(case, ns, with_bias=False)
    compare_backends(
        lambda be: fastdl.rms_norm(x, ns, w, eps, return_stats=True, backend=be),
        lambda be, stats: fastdl.rms_norm_backward(dy, x, ns, w, eps, stats=stats, backend=be),
        dtype)


@HYP
@given(cases(), st.data())
def test_hypothesis_cython_matches_numpy_group_norm(case, data):
    shape, dtype = case["shape"], case["dtype"]
    C = shape[1]
    G = data.draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]), label="G")
    _, x, dy, w, b = hyp_operands(case, (C,))
    compare_backends(
        lambda be: fastdl.group_norm(x, G, w, b, 1e-4, return_stats=True, backend=be),
        lambda be, stats: fastdl.group_norm_backward(dy, x, G, w, b, 1e-4, stats=stats,
                                                     backend=be),
        dtype)


@HYP
@given(cases(), st.booleans(), st.booleans())
def test_hypothesis_cython_matches_numpy_instance_norm(case, use_input_stats, with_running):
    shape, dtype = case["shape"], case["dtype"]
    C = shape[1]
    assume(not use_input_stats or np.prod(shape[2:]) > 1)
    rng, x, dy, w, b = hyp_operands(case, (C,))
    if with_running or not use_input_stats:
        rm0 = (rng.standard_normal(C) + case["offset"]).astype(dtype)
        rv0 = rng.uniform(0.5, 3, C).astype(dtype)
    else:
        rm0 = rv0 = None
    bufs = {}

    def run_fwd(backend):
        rm = None if rm0 is None else rm0.copy()
        rv = None if rv0 is None else rv0.copy()
        out = fastdl.instance_norm(x, rm, rv, w, b, use_input_stats, 0.3, 1e-4,
                                   return_stats=True, backend=backend)
        bufs[backend] = rm, rv
        return out

    def run_bwd(backend, stats):
        return fastdl.instance_norm_backward(dy, x, rm0, rv0, w, b, use_input_stats, 0.3, 1e-4,
                                             stats=stats, backend=backend)

    compare_backends(run_fwd, run_bwd, dtype)
    for got, want, name in zip(bufs["cython"], bufs["numpy"], ("running_mean", "running_var")):
        assert_close(got, want, dtype, name)


# ---------------------------------------------------------------- finite differences (float64)

FD_CASES = [
    pytest.param("batch_train", (4, 3, 5), id="batch_train"),
    pytest.param("batch_train", (6, 3), id="batch_train_2d"),
    pytest.param("batch_eval", (3, 2, 4), id="batch_eval"),
    pytest.param("instance", (2, 3, 5), id="instance_input_stats"),
    pytest.param("instance_eval", (2, 3, 2, 3), id="instance_running_stats"),
    pytest.param("group", (2, 4, 3), id="group_G2"),
    pytest.param("layer", (3, 2, 5), id="layer"),
    pytest.param("rms", (3, 6), id="rms"),
]


def numeric_grad(f, a, h=1e-6):
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + h
        fp = f()
        a[idx] = old - h
        fm = f()
        a[idx] = old
        g[idx] = (fp - fm) / (2 * h)
    return g


@pytest.mark.parametrize("affine", [pytest.param(True, id="affine"),
                                    pytest.param(False, id="plain")])
@pytest.mark.parametrize("norm,shape", FD_CASES)
def test_finite_difference_gradients(norm, shape, affine, backend):
    x, _, w, b, rm, rv = operands(norm, shape, affine=affine, key=("fd",))
    r = rng_for("projection", norm, shape).standard_normal(shape)   # L = sum(y * r), dL/dy = r
    # running buffers must not move between the perturbed forwards: training modes get none
    rm_f = None if norm in ("batch_train", "instance") else rm
    rv_f = None if norm in ("batch_train", "instance") else rv

    def loss():
        y = fwd(norm, x, w, b, rm_f, rv_f, backend=backend)
        return float(np.sum(y * r))

    dx, dw, db = bwd(norm, r, x, w, b, rm, rv, backend=backend)
    for name, analytic, arr in (("dx", dx, x), ("dweight", dw, w), ("dbias", db, b)):
        if arr is None:
            assert analytic is None, f"{name} must be None without that parameter"
            continue
        numeric = numeric_grad(loss, arr)
        assert analytic.shape == arr.shape and analytic.dtype == np.float64
        scale = max(1.0, float(np.max(np.abs(numeric))))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7 * scale,
                                   err_msg=name)


# ---------------------------------------------------------------- the document's Question 1

# exact moments of DOC_X, the document's tables being these rounded
DOC = {
    "batch": ([31 / 12, 35 / 12], [227 / 144, 179 / 144]),
    "layer": ([19 / 6, 2, 5 / 2, 10 / 3], [65 / 36, 1, 11 / 12, 8 / 9]),
    "instance": ([[8 / 3, 11 / 3], [7 / 3, 5 / 3], [2, 3], [10 / 3, 10 / 3]],
                 [[26 / 9, 2 / 9], [14 / 9, 2 / 9], [2 / 3, 2 / 3], [2 / 9, 14 / 9]]),
}
DOC_TABLES = {   # as printed in the document
    "batch": ([2.5833, 2.9167], [1.5764, 1.2431], 4),
    "layer": ([3.1667, 2.0, 2.5, 3.3333], [1.8056, 1.0, 0.9167, 0.8889], 4),
    "instance": ([[2.667, 3.667], [2.333, 1.667], [2.000, 3.000], [3.333, 3.333]],
                 [[2.889, 0.222], [1.556, 0.222], [0.667, 0.667], [0.222, 1.556]], 3),
}


@pytest.mark.parametrize("kind", ["batch", "layer", "instance"])
def test_document_question_1(kind, backend):
    eps = 1e-5
    if kind == "batch":
        y, stats = fastdl.batch_norm(DOC_X, None, None, training=True, return_stats=True,
                                     backend=backend)
        axes = (0, 2)
    elif kind == "layer":
        y, stats = fastdl.layer_norm(DOC_X, DOC_X.shape[1:], return_stats=True, backend=backend)
        axes = (1, 2)
    else:
        y, stats = fastdl.instance_norm(DOC_X, return_stats=True, backend=backend)
        axes = (2,)
    mean, var = (np.array(v) for v in DOC[kind])
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.rstd, 1 / np.sqrt(var + eps), rtol=1e-12, atol=1e-12)
    # the printed tables
    tmean, tvar, digits = DOC_TABLES[kind]
    np.testing.assert_allclose(np.round(stats.mean, digits), tmean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.round(1 / stats.rstd**2 - eps, digits), tvar, rtol=0,
                               atol=1e-12)
    # the output is (x - mean) / sqrt(var + eps)
    shape = [1 if a in axes else n for a, n in enumerate(DOC_X.shape)]
    want = (DOC_X - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- large offset, float32

@pytest.mark.parametrize("norm", CENTERING)
def test_large_offset_float32_is_normalized(norm, backend):
    # mean 1e4, std 0.1: E[x^2] - E[x]^2 in float32 would be all rounding error
    shape = (8, 16, 1000)
    x = (1e4 + 0.1 * rng_for("offset").standard_normal(shape)).astype(np.float32)
    y = fwd(norm, x, backend=backend).astype(np.float64)
    assert np.isfinite(y).all()
    if norm == "batch_train":
        groups = y.transpose(1, 0, 2).reshape(16, -1)
    elif norm == "group":
        groups = y.reshape(8 * groups_of(16), -1)
    else:                      # instance and layer (over the last dim): per (n, c)
        groups = y.reshape(8 * 16, -1)
    np.testing.assert_allclose(groups.mean(axis=1), 0, atol=1e-2)
    np.testing.assert_allclose(groups.std(axis=1), 1, atol=1e-2)


# ---------------------------------------------------------------- threads

THREAD_CASES = [
    pytest.param("batch_train", (16, 64, 300), id="batch_train"),
    pytest.param("batch_train", (4096, 64), id="batch_train_2d"),
    pytest.param("batch_eval", (16, 64, 300), id="batch_eval"),
    pytest.param("instance", (16, 64, 300), id="instance"),
    pytest.param("instance_eval", (16, 64, 300), id="instance_eval"),
    pytest.param("group", (16, 64, 300), id="group"),
    pytest.param("layer", (512, 768), id="layer"),
    pytest.param("rms", (512, 768), id="rms"),
]


@pytest.fixture
def restore_threads():
    old = fastdl.get_num_threads()
    yield
    fastdl.set_num_threads(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("norm,shape", THREAD_CASES)
def test_cython_same_bits_for_1_and_2_threads(norm, shape, dtype, restore_threads):
    x, dy, w, b, rm0, rv0 = operands(norm, shape, dtype, key=("threads",))
    results = []
    for n in (1, 2):
        fastdl.set_num_threads(n)
        rm = None if rm0 is None else rm0.copy()
        rv = None if rv0 is None else rv0.copy()
        y, stats = fwd(norm, x, w, b, rm, rv, backend="cython", return_stats=True)
        grads = bwd(norm, dy, x, w, b, rm0, rv0, backend="cython")
        grads_s = bwd(norm, dy, x, w, b, rm0, rv0, backend="cython", stats=stats)
        results.append((y, stats.mean, stats.rstd, rm, rv) + tuple(grads) + tuple(grads_s))
    names = ("y", "stats.mean", "stats.rstd", "running_mean", "running_var", "dx", "dweight",
             "dbias", "dx(stats=)", "dweight(stats=)", "dbias(stats=)")
    for one, two, name in zip(results[0], results[1], names):
        assert_same(two, one, f"{name}: 2 threads differ from 1")


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


# ---------------------------------------------------------------- bad input

X = np.random.default_rng(7).standard_normal((2, 4, 5))
C4 = np.ones(4)
GOOD_STATS_C = NormStats(np.zeros(4), np.ones(4))

BAD = [
    # dimensions
    ("batch_1d", lambda: fastdl.batch_norm(np.ones(5), None, None, training=True),
     ValueError, r"input must have at least 2 dimensions.*got shape \(5,\)"),
    ("group_1d", lambda: fastdl.group_norm(np.ones(5), 1),
     ValueError, r"input must have at least 2 dimensions.*got shape \(5,\)"),
    ("instance_1d", lambda: fastdl.instance_norm(np.ones(5)),
     ValueError, r"input must have at least 2 dimensions.*got shape \(5,\)"),
    ("batch_bwd_1d", lambda: fastdl.batch_norm_backward(np.ones(5), np.ones(5), None, None,
                                                         training=True),
     ValueError, r"input must have at least 2 dimensions.*got shape \(5,\)"),
    # normalized_shape
    ("layer_ns_mismatch", lambda: fastdl.layer_norm(X, (4,)),
     ValueError, r"normalized_shape=\(4,\) for input of shape \(2, 4, 5\)"),
    ("layer_ns_int_mismatch", lambda: fastdl.layer_norm(X, 4),
     ValueError, r"normalized_shape=\(4,\) for input of shape \(2, 4, 5\)"),
    ("layer_ns_too_long", lambda: fastdl.layer_norm(X, (1, 2, 4, 5)),
     ValueError, r"normalized_shape=\(1, 2, 4, 5\) for input of shape \(2, 4, 5\)"),
    ("layer_ns_empty", lambda: fastdl.layer_norm(X, ()),
     ValueError, r"normalized_shape must have at least one dimension, got \(\)"),
    ("layer_ns_float", lambda: fastdl.layer_norm(X, (5.0,)),
     TypeError, r"normalized_shape entries must be an int, got 5\.0"),
    ("layer_ns_str", lambda: fastdl.layer_norm(X, None),
     TypeError, r"normalized_shape must be an int or a sequence of ints, got None"),
    ("rms_ns_mismatch", lambda: fastdl.rms_norm(X, (2, 5)),
     ValueError, r"normalized_shape=\(2, 5\) for input of shape \(2, 4, 5\)"),
    ("layer_bwd_ns", lambda: fastdl.layer_norm_backward(X, X, 3),
     ValueError, r"normalized_shape=\(3,\) for input of shape \(2, 4, 5\)"),
    # num_groups
    ("groups_not_dividing", lambda: fastdl.group_norm(X, 3),
     ValueError, r"num_groups must divide the number of channels C=4, got num_groups=3"),
    ("groups_0", lambda: fastdl.group_norm(X, 0), ValueError, "num_groups must be >= 1, got 0"),
    ("groups_negative", lambda: fastdl.group_norm(X, -2),
     ValueError, "num_groups must be >= 1, got -2"),
    ("groups_float", lambda: fastdl.group_norm(X, 2.0),
     TypeError, r"num_groups must be an int, got 2\.0 \(float\)"),
    ("groups_bool", lambda: fastdl.group_norm(X, True),
     TypeError, r"num_groups must be an int, got True"),
    ("groups_bwd", lambda: fastdl.group_norm_backward(X, X, 3),
     ValueError, r"C=4, got num_groups=3"),
    # parameter shapes
    ("batch_weight", lambda: fastdl.batch_norm(X, None, None, np.ones(5), training=True),
     ValueError, r"weight must have shape \(4,\), got \(5,\)"),
    ("batch_bias", lambda: fastdl.batch_norm(X, None, None, C4, np.ones((4, 1)), True),
     ValueError, r"bias must have shape \(4,\), got \(4, 1\)"),
    ("group_weight", lambda: fastdl.group_norm(X, 2, np.ones(2)),
     ValueError, r"weight must have shape \(4,\), got \(2,\)"),
    ("instance_bias", lambda: fastdl.instance_norm(X, bias=np.ones(3)),
     ValueError, r"bias must have shape \(4,\), got \(3,\)"),
    ("layer_weight", lambda: fastdl.layer_norm(X, (4, 5), np.ones(5)),
     ValueError, r"weight must have shape \(4, 5\), got \(5,\)"),
    ("layer_bias", lambda: fastdl.layer_norm(X, 5, None, np.ones(4)),
     ValueError, r"bias must have shape \(5,\), got \(4,\)"),
    ("rms_weight", lambda: fastdl.rms_norm(X, 5, np.ones(4)),
     ValueError, r"weight must have shape \(5,\), got \(4,\)"),
    ("layer_bwd_weight", lambda: fastdl.layer_norm_backward(X, X, 5, np.ones(4)),
     ValueError, r"weight must have shape \(5,\), got \(4,\)"),
    ("weight_complex", lambda: fastdl.group_norm(X, 2, np.ones(4, complex)),
     TypeError, r"weight must have a real numeric dtype.*complex128"),
    # running statistics
    ("batch_running_mean_shape", lambda: fastdl.batch_norm(X, np.zeros(3), C4, training=True),
     ValueError, r"running_mean must have shape \(4,\), got \(3,\)"),
    ("batch_running_var_shape", lambda: fastdl.batch_norm(X, np.zeros(4), np.ones((1, 4))),
     ValueError, r"running_var must have shape \(4,\), got \(1, 4\)"),
    ("instance_running_shape", lambda: fastdl.instance_norm(X, np.zeros(5), np.ones(5)),
     ValueError, r"running_mean must have shape \(4,\), got \(5,\)"),
    ("instance_eval_running_shape",
     lambda: fastdl.instance_norm(X, np.zeros(4), np.ones(2), use_input_stats=False),
     ValueError, r"running_var must have shape \(4,\), got \(2,\)"),
    ("batch_bwd_running_shape",
     lambda: fastdl.batch_norm_backward(X, X, np.zeros(3), np.ones(3)),
     ValueError, r"running_mean must have shape \(4,\), got \(3,\)"),
    ("batch_eval_missing", lambda: fastdl.batch_norm(X, None, None, training=False),
     ValueError, "running_mean and running_var are required when training=False, got None"),
    ("batch_bwd_eval_missing", lambda: fastdl.batch_norm_backward(X, X, None, None),
     ValueError, "required when training=False.*got None"),
    ("instance_eval_missing", lambda: fastdl.instance_norm(X, use_input_stats=False),
     ValueError, "running_mean and running_var are required when use_input_stats=False, "
                 "got None"),
    ("instance_bwd_eval_missing",
     lambda: fastdl.instance_norm_backward(X, X, use_input_stats=False),
     ValueError, "required when use_input_stats=False"),
    ("running_mean_alone", lambda: fastdl.batch_norm(X, np.zeros(4), None, training=True),
     ValueError, "running_mean and running_var must be given together, got running_mean=an "
                 "array and running_var=None"),
    ("running_list_training", lambda: fastdl.batch_norm(X, [0.0] * 4, [1.0] * 4, training=True),
     TypeError, "running_mean must be a float numpy.ndarray .*updated in place.*got list"),
    ("running_int_training",
     lambda: fastdl.batch_norm(X, np.zeros(4, int), np.ones(4, int), training=True),
     TypeError, "running_mean must be a float numpy.ndarray.*int64"),
    ("training_not_bool", lambda: fastdl.batch_norm(X, None, None, training=1),
     TypeError, r"training must be a bool, got 1 \(int\)"),
    ("use_input_stats_not_bool", lambda: fastdl.instance_norm(X, use_input_stats="yes"),
     TypeError, r"use_input_stats must be a bool, got 'yes' \(str\)"),
    # eps and momentum
    ("eps_negative_layer", lambda: fastdl.layer_norm(X, 5, eps=-1e-5),
     ValueError, r"eps must be in \[0\.0, inf\], got -1e-05"),
    ("eps_negative_batch", lambda: fastdl.batch_norm(X, None, None, training=True, eps=-1.0),
     ValueError, r"eps must be in \[0\.0, inf\], got -1\.0"),
    ("eps_negative_group", lambda: fastdl.group_norm(X, 2, eps=-0.5),
     ValueError, r"eps must be in \[0\.0, inf\], got -0\.5"),
    ("eps_negative_rms", lambda: fastdl.rms_norm(X, 5, eps=-1e-6),
     ValueError, r"eps must be in \[0\.0, inf\], got -1e-06"),
    ("eps_negative_instance_bwd", lambda: fastdl.instance_norm_backward(X, X, eps=-1.0),
     ValueError, r"eps must be in \[0\.0, inf\], got -1\.0"),
    ("eps_str", lambda: fastdl.layer_norm(X, 5, eps="1e-5"),
     TypeError, r"eps must be a real number, got '1e-5' \(str\)"),
    ("eps_none_layer", lambda: fastdl.layer_norm(X, 5, eps=None),
     TypeError, r"eps must be a real number, got None"),
    ("eps_list_group", lambda: fastdl.group_norm(X, 2, eps=[1e-5]),
     TypeError, r"eps must be a real number, got \[1e-05\] \(list\)"),
    ("eps_str_rms", lambda: fastdl.rms_norm(X, 5, eps="tiny"),
     TypeError, r"eps must be a real number, got 'tiny'"),
    ("eps_nan", lambda: fastdl.layer_norm(X, 5, eps=float("nan")),
     ValueError, "eps must be finite, got nan"),
    ("momentum_negative_batch",
     lambda: fastdl.batch_norm(X, None, None, training=True, momentum=-0.1),
     ValueError, r"momentum must be in \[0\.0, 1\.0\], got -0\.1"),
    ("momentum_big_batch", lambda: fastdl.batch_norm(X, None, None, training=True, momentum=1.5),
     ValueError, r"momentum must be in \[0\.0, 1\.0\], got 1\.5"),
    ("momentum_negative_instance", lambda: fastdl.instance_norm(X, momentum=-0.1),
     ValueError, r"momentum must be in \[0\.0, 1\.0\], got -0\.1"),
    ("momentum_big_instance", lambda: fastdl.instance_norm(X, momentum=1.5),
     ValueError, r"momentum must be in \[0\.0, 1\.0\], got 1\.5"),
    ("momentum_big_batch_bwd",
     lambda: fastdl.batch_norm_backward(X, X, None, None, training=True, momentum=1.5),
     ValueError, r"momentum must be in \[0\.0, 1\.0\], got 1\.5"),
    ("momentum_none", lambda: fastdl.batch_norm(X, None, None, training=True, momentum=None),
     TypeError, "momentum must be a real number, got None"),
    # out=
    ("out_shape", lambda: fastdl.layer_norm(X, 5, out=np.empty((2, 4))),
     ValueError, r"out must have shape \(2, 4, 5\), got \(2, 4\)"),
    ("out_dtype", lambda: fastdl.group_norm(X, 2, out=np.empty(X.shape, np.float32)),
     TypeError, "out must have dtype float64, got float32"),
    ("out_is_input", lambda: fastdl.instance_norm(X, out=X),
     ValueError, "out must not overlap the input"),
    # dtypes
    ("complex_batch", lambda: fastdl.batch_norm(X.astype(complex), None, None, training=True),
     TypeError, r"input must have a real numeric dtype.*got dtype complex128"),
    ("complex_layer", lambda: fastdl.layer_norm(X.astype(np.complex64), 5),
     TypeError, r"input must have a real numeric dtype.*got dtype complex64"),
    ("object_group", lambda: fastdl.group_norm(X.astype(object), 2),
     TypeError, r"input must have a real numeric dtype.*got dtype object"),
    ("object_rms", lambda: fastdl.rms_norm(X.astype(object), 5),
     TypeError, r"input must have a real numeric dtype.*got dtype object"),
    ("string_instance", lambda: fastdl.instance_norm(np.full((2, 3, 4), "a")),
     TypeError, r"input must have a real numeric dtype.*got dtype <U1"),
    ("complex_grad_output", lambda: fastdl.layer_norm_backward(X.astype(complex), X, 5),
     TypeError, r"grad_output must have a real numeric dtype.*complex128"),
    # too few values to normalize
    ("batch_one_value_2d", lambda: fastdl.batch_norm(np.ones((1, 3)), None, None, training=True),
     ValueError, r"batch_norm needs more than 1 value per channel when training, got input of "
                 r"shape \(1, 3\)"),
    ("batch_one_value_3d",
     lambda: fastdl.batch_norm(np.ones((1, 3, 1)), np.zeros(3), np.ones(3), training=True),
     ValueError, r"more than 1 value per channel when training, got input of shape \(1, 3, 1\)"),
    ("batch_bwd_one_value",
     lambda: fastdl.batch_norm_backward(np.ones((1, 3)), np.ones((1, 3)), None, None,
                                        training=True),
     ValueError, r"more than 1 value per channel.*\(1, 3\)"),
    ("instance_one_spatial", lambda: fastdl.instance_norm(np.ones((2, 3, 1))),
     ValueError, r"instance_norm needs more than 1 spatial element.*got input of shape "
                 r"\(2, 3, 1\)"),
    ("instance_2d", lambda: fastdl.instance_norm(np.ones((2, 3))),
     ValueError, r"more than 1 spatial element.*\(2, 3\)"),
    ("instance_bwd_one_spatial",
     lambda: fastdl.instance_norm_backward(np.ones((2, 3, 1, 1)), np.ones((2, 3, 1, 1))),
     ValueError, r"more than 1 spatial element.*\(2, 3, 1, 1\)"),
    ("instance_one_spatial_empty_batch", lambda: fastdl.instance_norm(np.ones((0, 3, 1))),
     ValueError, r"more than 1 spatial element.*\(0, 3, 1\)"),
    ("batch_one_value_no_channels",
     lambda: fastdl.batch_norm(np.ones((1, 0)), None, None, training=True),
     ValueError, r"more than 1 value per channel.*\(1, 0\)"),
    ("batch_bwd_one_value_with_stats",
     lambda: fastdl.batch_norm_backward(np.ones((1, 3)), np.ones((1, 3)), None, None,
                                        training=True, stats=NormStats(np.zeros(3), np.ones(3))),
     ValueError, r"more than 1 value per channel.*\(1, 3\)"),
    # grad_output
    ("batch_grad_shape",
     lambda: fastdl.batch_norm_backward(X[:1], X, None, None, training=True),
     ValueError, r"grad_output must have the input's shape \(2, 4, 5\), got \(1, 4, 5\)"),
    ("layer_grad_shape", lambda: fastdl.layer_norm_backward(X.T, X, 5),
     ValueError, r"grad_output must have the input's shape \(2, 4, 5\), got \(5, 4, 2\)"),
    ("group_grad_shape", lambda: fastdl.group_norm_backward(X[..., :4], X, 2),
     ValueError, r"grad_output must have the input's shape \(2, 4, 5\), got \(2, 4, 4\)"),
    ("instance_grad_shape", lambda: fastdl.instance_norm_backward(X.reshape(2, 20), X),
     ValueError, r"grad_output must have the input's shape \(2, 4, 5\), got \(2, 20\)"),
    ("rms_grad_shape", lambda: fastdl.rms_norm_backward(X[0], X, 5),
     ValueError, r"grad_output must have the input's shape \(2, 4, 5\), got \(4, 5\)"),
    # stats=
    ("batch_stats_mean_shape",
     lambda: fastdl.batch_norm_backward(X, X, None, None, training=True,
                                        stats=NormStats(np.zeros(3), np.ones(4))),
     ValueError, r"stats.mean must have shape \(4,\), got \(3,\)"),
    ("batch_stats_rstd_shape",
     lambda: fastdl.batch_norm_backward(X, X, C4, C4, stats=NormStats(np.zeros(4), np.ones(2))),
     ValueError, r"stats.rstd must have shape \(4,\), got \(2,\)"),
    ("layer_stats_shape",
     lambda: fastdl.layer_norm_backward(X, X, 5, stats=NormStats(np.zeros(2), np.ones(2))),
     ValueError, r"stats.mean must have shape \(2, 4\), got \(2,\)"),
    ("group_stats_shape",
     lambda: fastdl.group_norm_backward(X, X, 2, stats=NormStats(np.zeros((2, 4)),
                                                                  np.ones((2, 4)))),
     ValueError, r"stats.mean must have shape \(2, 2\), got \(2, 4\)"),
    ("instance_stats_shape",
     lambda: fastdl.instance_norm_backward(X, X, stats=GOOD_STATS_C),
     ValueError, r"stats.mean must have shape \(2, 4\), got \(4,\)"),
    ("instance_eval_stats_shape",
     lambda: fastdl.instance_norm_backward(X, X, C4, C4, use_input_stats=False,
                                           stats=NormStats(np.zeros((2, 4)), np.ones((2, 4)))),
     ValueError, r"stats.mean must have shape \(4,\), got \(2, 4\)"),
    ("rms_stats_shape",
     lambda: fastdl.rms_norm_backward(X, X, 5, stats=NormStats(None, np.ones(8))),
     ValueError, r"stats.rstd must have shape \(2, 4\), got \(8,\)"),
    ("stats_not_pair",
     lambda: fastdl.group_norm_backward(X, X, 2, stats=np.ones((2, 2))),
     TypeError, "stats must be the NormStats .*got ndarray"),
    ("stats_mean_none",
     lambda: fastdl.layer_norm_backward(X, X, 5, stats=NormStats(None, np.ones((2, 4)))),
     TypeError, r"stats.mean must have a real numeric dtype"),
]


@pytest.mark.parametrize("call,exc,match", [pytest.param(*c[1:], id=c[0]) for c in BAD])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


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
