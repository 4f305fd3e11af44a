"""fastdl normalization layers without torch, numerics: the Cython backend against the
NumPy one (hypothesis, every layout and dtype), gradients against finite differences,
the exact moments of a small worked 4 x 2 x 3 example, float32 accuracy at a large
offset, and the same bits at 1 and 2 threads.

Tests whose id contains "cython" run the Cython kernels; the rest run the NumPy
reference (``-k "not cython"`` selects those alone).
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastdl
from fastdl.testing import rng_for

from _norm_layers_helpers import assert_same, bwd, fwd, groups_of, make_array, operands


# The document's 4 x 2 x 3 tensor (batch, channels, features), as in test_norm_stats.py.
DOC_X = np.array([[[2, 5, 1], [4, 3, 4]],
                  [[1, 2, 4], [1, 2, 2]],
                  [[3, 1, 2], [3, 2, 4]],
                  [[3, 4, 3], [5, 2, 3]]], dtype=np.float64)


CENTERING = ["batch_train", "instance", "group", "layer"]   # normalize with their own statistics


# ---------------------------------------------------------------- Cython against NumPy (hypothesis)

LAYOUTS = ["c", "f", "step", "transposed", "reversed"]


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


def compare_layer(forward, backward, x, dy, args, dtype):
    """compare_backends of ``forward(x, *args)`` and ``backward(dy, x, *args)``."""
    compare_backends(
        lambda be: forward(x, *args, return_stats=True, backend=be),
        lambda be, stats: backward(dy, x, *args, stats=stats, backend=be),
        dtype)


def compare_backends_and_buffers(run_fwd, run_bwd, dtype, rm0, rv0):
    """compare_backends for a forward run_fwd(backend, rm, rv) -> (y, stats) that updates
    copies of the running buffers rm0 / rv0 (None: none); then those buffers, Cython vs NumPy."""
    bufs = {}

    def fwd_on_copies(backend):
        rm = None if rm0 is None else rm0.copy()
        rv = None if rv0 is None else rv0.copy()
        bufs[backend] = rm, rv
        return run_fwd(backend, rm, rv)

    compare_backends(fwd_on_copies, run_bwd, dtype)
    for got, want, name in zip(bufs["cython"], bufs["numpy"], ("running_mean", "running_var")):
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

    def run_fwd(backend, rm, rv):
        return fastdl.batch_norm(x, rm, rv, w, b, training, 0.2, 1e-4, return_stats=True,
                                 backend=backend)

    def run_bwd(backend, stats):
        return fastdl.batch_norm_backward(dy, x, rm0, rv0, w, b, training, 0.2, 1e-4,
                                          stats=stats, backend=backend)

    compare_backends_and_buffers(run_fwd, run_bwd, dtype, rm0, rv0)
    np.testing.assert_array_equal(x, x0)


@HYP
@given(cases(), st.integers(1, 4))
def test_hypothesis_cython_matches_numpy_layer_norm(case, k):
    shape, dtype = case["shape"], case["dtype"]
    ns = shape[-min(k, len(shape)):]
    _, x, dy, w, b = hyp_operands(case, ns)
    compare_layer(fastdl.layer_norm, fastdl.layer_norm_backward, x, dy, (ns, w, b, 1e-4), dtype)


@HYP
@given(cases(), st.integers(1, 4), st.sampled_from([None, 1e-3]))
def test_hypothesis_cython_matches_numpy_rms_norm(case, k, eps):
    shape, dtype = case["shape"], case["dtype"]
    ns = shape[-min(k, len(shape)):]
    _, x, dy, w, _ = hyp_operands(case, ns, with_bias=False)
    compare_layer(fastdl.rms_norm, fastdl.rms_norm_backward, x, dy, (ns, w, eps), dtype)


@HYP
@given(cases(), st.data())
def test_hypothesis_cython_matches_numpy_group_norm(case, data):
    shape, dtype = case["shape"], case["dtype"]
    C = shape[1]
    G = data.draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]), label="G")
    _, x, dy, w, b = hyp_operands(case, (C,))
    compare_layer(fastdl.group_norm, fastdl.group_norm_backward, x, dy, (G, w, b, 1e-4), dtype)


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

    def run_fwd(backend, rm, rv):
        return fastdl.instance_norm(x, rm, rv, w, b, use_input_stats, 0.3, 1e-4,
                                    return_stats=True, backend=backend)

    def run_bwd(backend, stats):
        return fastdl.instance_norm_backward(dy, x, rm0, rv0, w, b, use_input_stats, 0.3, 1e-4,
                                             stats=stats, backend=backend)

    compare_backends_and_buffers(run_fwd, run_bwd, dtype, rm0, rv0)


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
