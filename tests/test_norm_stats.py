"""fastdl.norm_stats: the document's Question 1, accuracy, layouts, threads, bad input."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdl
from fastdl._backends.cython import _cpu
from fastdl.testing import requires_simd, simd, simd_levels, threads

BACKENDS = ["cython", "numpy"]
KINDS = ["batch", "layer", "instance", "group"]

# The document's 4 x 2 x 3 tensor (batch, channels, features).
DOC_X = np.array([[[2, 5, 1], [4, 3, 4]],
                  [[1, 2, 4], [1, 2, 2]],
                  [[3, 1, 2], [3, 2, 4]],
                  [[3, 4, 3], [5, 2, 3]]], dtype=np.float64)


def reference(x, kind, num_groups=None, ddof=0):
    """float64 mean/var straight from the definitions."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape[:2]
    if kind == "group":
        x = x.reshape(n, num_groups, -1)
        axes = (2,)
    else:
        spatial = tuple(range(2, x.ndim))
        axes = {"batch": (0,) + spatial, "layer": (1,) + spatial, "instance": spatial}[kind]
    mean = x.mean(axis=axes)
    var = ((x - x.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes) / (
        np.prod([x.shape[a] for a in axes]) - ddof)
    return mean, var


# ---------------------------------------------------------------- the document

@pytest.mark.parametrize("backend", BACKENDS)
def test_document_batch_and_layer(backend):
    mean, var = fastdl.norm_stats(DOC_X, "batch", backend=backend)
    np.testing.assert_allclose(mean, [31 / 12, 35 / 12], rtol=1e-14)
    np.testing.assert_allclose(np.round(mean, 4), [2.5833, 2.9167])
    np.testing.assert_allclose(np.round(var, 4), [1.5764, 1.2431])
    mean, var = fastdl.norm_stats(DOC_X, "layer", backend=backend)
    np.testing.assert_allclose(np.round(mean, 4), [3.1667, 2.0, 2.5, 3.3333])
    np.testing.assert_allclose(np.round(var, 4), [1.8056, 1.0, 0.9167, 0.8889])


@pytest.mark.parametrize("backend", BACKENDS)
def test_document_instance_tables(backend):
    mean, var = fastdl.norm_stats(DOC_X, "instance", backend=backend)
    assert mean.shape == var.shape == (4, 2)
    np.testing.assert_allclose(np.round(mean, 3), [[2.667, 3.667], [2.333, 1.667],
                                                   [2.000, 3.000], [3.333, 3.333]])
    np.testing.assert_allclose(np.round(var, 3), [[2.889, 0.222], [1.556, 0.222],
                                                  [0.667, 0.667], [0.222, 1.556]])
    # group norm with one channel per group is instance norm
    gm, gv = fastdl.norm_stats(DOC_X, "group", num_groups=2, backend=backend)
    np.testing.assert_allclose(gm, mean, rtol=1e-14)
    np.testing.assert_allclose(gv, var, rtol=1e-14)


# ---------------------------------------------------------------- accuracy

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,shape", [("layer", (1, 1, 10**6)), ("batch", (1000, 1, 1000)),
                                        ("batch", (10**5, 1, 10)), ("instance", (2, 1, 500_000))])
def test_large_offset_float32_is_accurate(backend, kind, shape):
    # mean 1e4, std 0.1: E[x^2] - E[x]^2 in float32 would be all rounding error
    rng = np.random.default_rng(1)
    x = (1e4 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    mean, var = fastdl.norm_stats(x, kind, backend=backend)
    rmean, rvar = reference(x, kind)
    assert mean.dtype == var.dtype == np.float32
    np.testing.assert_allclose(var, rvar.reshape(var.shape), rtol=1e-3)
    np.testing.assert_allclose(mean, rmean.reshape(mean.shape), rtol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-11)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(2, 4), (3, 4, 1), (5, 8, 7), (4, 8, 33, 3), (3, 4, 5000),
                                   (70, 2, 3), (2, 4, 2, 3, 5), (1, 2, 70000)])
def test_cython_matches_float64_reference(shape, kind, dtype, rtol):
    rng = np.random.default_rng(abs(hash((shape, kind))) % 2**32)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    g = 2 if kind == "group" else None
    mean, var = fastdl.norm_stats(x, kind, num_groups=g, backend="cython")
    rmean, rvar = reference(x, kind, g)
    assert mean.dtype == var.dtype == dtype
    np.testing.assert_allclose(mean, rmean.reshape(mean.shape), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(var, rvar.reshape(var.shape), rtol=rtol)


@pytest.mark.parametrize("ddof", [0, 1, 3])
def test_ddof(ddof):
    x = np.random.default_rng(2).standard_normal((6, 3, 5))
    for kind in ("batch", "layer", "instance"):
        _, var = fastdl.norm_stats(x, kind, ddof=ddof)
        np.testing.assert_allclose(var, reference(x, kind, ddof=ddof)[1], rtol=1e-12)


# ---------------------------------------------------------------- property test

@st.composite
def layouts(draw):
    ndim = draw(st.integers(2, 4))
    shape = [draw(st.integers(1, 6)), draw(st.integers(1, 6))]
    shape += [draw(st.sampled_from([1, 2, 3, 5, 17, 64, 100])) for _ in range(ndim - 2)]
    kind = draw(st.sampled_from(KINDS))
    num_groups = None
    if kind == "group":
        num_groups = draw(st.sampled_from([d for d in range(1, shape[1] + 1) if shape[1] % d == 0]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    layout = draw(st.sampled_from(["c", "f", "step", "transposed"]))
    seed = draw(st.integers(0, 2**32 - 1))
    offset = draw(st.sampled_from([0.0, 1.0, 1e3]))
    return tuple(shape), kind, num_groups, dtype, layout, seed, offset


def _make(shape, dtype, layout, rng, offset):
    if layout == "step":        # every other element along axis 0 and the last axis
        big = shape[:-1] + (2 * shape[-1],)
        base = rng.standard_normal((2 * shape[0],) + big[1:]).astype(dtype) + offset
        return base[::2, ..., ::2]
    base = (rng.standard_normal(shape) + offset).astype(dtype)
    if layout == "f":
        return np.asfortranarray(base)
    if layout == "transposed":  # same values, axes 0 and 1 stored swapped
        return np.ascontiguousarray(np.swapaxes(base, 0, 1)).swapaxes(0, 1)
    return base


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_property_cython_equals_numpy_float64(params):
    shape, kind, num_groups, dtype, layout, seed, offset = params
    x = _make(shape, dtype, layout, np.random.default_rng(seed), offset)
    assert x.shape == shape
    before = x.copy()
    mean, var = fastdl.norm_stats(x, kind, num_groups=num_groups, backend="cython")
    rmean, rvar = fastdl.norm_stats(x.astype(np.float64), kind, num_groups=num_groups,
                                    backend="numpy")
    np.testing.assert_array_equal(x, before)           # input untouched
    # both see the same float32 values: only our rounding differs
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(mean, rmean, rtol=tol, atol=tol)
    np.testing.assert_allclose(var, rvar, rtol=tol, atol=tol)


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(64, 32, 40), (8, 16, 3000), (3, 4, 70000), (300, 8)])
def test_same_bits_for_any_thread_count(kind, shape):
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32) + 5
    g = 4 if kind == "group" else None
    results = []
    for n in (1, 2, 3):
        with threads(n):
            results.append(fastdl.norm_stats(x, kind, num_groups=g, backend="cython"))
    for mean, var in results[1:]:
        np.testing.assert_array_equal(mean, results[0][0])
        np.testing.assert_array_equal(var, results[0][1])


@requires_simd("avx2")      # AVX2 is the lowest SIMD tier
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 3, 4100), (5, 2, 100000), (20, 3, 33),
                                   (300, 8), (200, 1030), (130, 6, 5), (7, 3, 31),
                                   (33, 4097), (3, 17, 65)])
def test_every_simd_level_equals_scalar_twin(shape, dtype):
    x = (np.random.default_rng(4).standard_normal(shape) * 4 + 7).astype(dtype)
    out = {}
    for level in simd_levels():
        for nt in (1, 2):
            with simd(level), threads(nt):
                out[level, nt] = [fastdl.norm_stats(x, k, num_groups=1 if k == "group" else None,
                                                    backend="cython") for k in KINDS]
    for key, res in out.items():
        for kind, (m1, v1), (m2, v2) in zip(KINDS, res, out["scalar", 1]):
            assert m1.tobytes() == m2.tobytes(), (key, kind, "mean")
            assert v1.tobytes() == v2.tobytes(), (key, kind, "var")


def test_set_simd_level_rejects_unknown():
    with pytest.raises(ValueError, match="simd level"):
        _cpu.set_simd_level("avx9000")


# ---------------------------------------------------------------- inputs

@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts_give_same_results(backend):
    x = np.random.default_rng(5).standard_normal((6, 4, 9, 5))
    for kind in KINDS:
        g = 2 if kind == "group" else None
        want = fastdl.norm_stats(x, kind, num_groups=g, backend=backend)
        for variant in (np.asfortranarray(x), x[:, :, ::-1][:, :, ::-1],
                        np.ascontiguousarray(x.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)):
            got = fastdl.norm_stats(variant, kind, num_groups=g, backend=backend)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_and_bool_inputs_computed_in_float64(backend, dtype):
    x = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    mean, var = fastdl.norm_stats(x, "layer", backend=backend)
    assert mean.dtype == var.dtype == np.float64
    np.testing.assert_allclose(mean, reference(x, "layer")[0], rtol=1e-14)
    np.testing.assert_allclose(var, reference(x, "layer")[1], rtol=1e-14)


def test_list_input():
    mean, var = fastdl.norm_stats(DOC_X.tolist(), "batch")
    np.testing.assert_allclose(mean, [31 / 12, 35 / 12])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stays_in_its_group(backend):
    x = np.random.default_rng(6).standard_normal((4, 3, 10)).astype(np.float32)
    x[1, 2, 5] = np.nan
    mean, var = fastdl.norm_stats(x, "instance", backend=backend)
    nan = np.isnan(mean)
    assert nan[1, 2] and nan.sum() == 1 and np.isnan(var[1, 2]) and np.isnan(var).sum() == 1
    bm, bv = fastdl.norm_stats(x, "batch", backend=backend)
    assert np.isnan(bm).tolist() == [False, False, True]
    assert np.isnan(bv).tolist() == [False, False, True]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_empty_statistics(backend):
    x = np.zeros((0, 3, 4), dtype=np.float32)
    mean, var = fastdl.norm_stats(x, "layer", backend=backend)
    assert mean.shape == var.shape == (0,)
    mean, var = fastdl.norm_stats(x, "instance", backend=backend)
    assert mean.shape == (0, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,kind,groups,want", [
    ((0, 3, 4), "batch", None, (3,)),          # empty batch: per channel, nothing to reduce
    ((2, 3, 0), "instance", None, (2, 3)),     # empty spatial dims
    ((2, 4, 0), "group", 2, (2, 2)),
    ((2, 0, 5), "layer", None, (2,)),          # no channels
    ((0, 0), "batch", None, (0,)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groups_over_zero_elements_are_nan(shape, kind, groups, want, dtype, backend):
    """As NumPy's mean/var of an empty slice (and torch.var_mean): NaN, not an error."""
    x = np.zeros(shape, dtype)
    mean, var = fastdl.norm_stats(x, kind, num_groups=groups, ddof=1, backend=backend)
    assert mean.shape == var.shape == want and mean.dtype == var.dtype == dtype
    assert np.isnan(mean).all() and np.isnan(var).all()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {"batch": (0, 2) if x.ndim == 3 else (0,), "instance": (2,), "layer": (1, 2)}
        if kind in axes:
            np.testing.assert_array_equal(mean, np.mean(x, axis=axes[kind]))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((DOC_X, "batchy"), {}, ValueError, "kind must be one of.*'batchy'"),
    ((np.ones(5), "batch"), {}, ValueError, r"at least 2 dimensions.*\(5,\)"),
    ((np.ones(()), "layer"), {}, ValueError, "at least 2 dimensions"),
    ((DOC_X, "group"), {}, ValueError, "num_groups is required"),
    ((DOC_X, "group"), {"num_groups": 3}, ValueError, r"divide.*C=2.*num_groups=3"),
    ((DOC_X, "group"), {"num_groups": 0}, ValueError, "num_groups must be >= 1, got 0"),
    ((DOC_X, "group"), {"num_groups": 2.0}, TypeError, "num_groups must be an int"),
    ((DOC_X, "group"), {"num_groups": True}, TypeError, "num_groups must be an int"),
    ((DOC_X, "batch"), {"num_groups": 2}, ValueError, "only used with kind='group'"),
    ((DOC_X.astype(complex), "batch"), {}, TypeError, "real numeric dtype.*complex128"),
    ((DOC_X.astype(object), "batch"), {}, TypeError, "real numeric dtype.*object"),
    ((np.array([["a", "b"]]), "batch"), {}, TypeError, "real numeric dtype"),
    ((DOC_X, "instance"), {"ddof": 3}, ValueError, r"ddof must be smaller.*\(3\).*ddof=3"),
    ((DOC_X, "batch"), {"ddof": -1}, ValueError, "ddof must be >= 0"),
    ((DOC_X, "batch"), {"backend": "nope"}, ValueError, "unknown backend 'nope'.*cython.*numpy"),
])
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastdl.norm_stats(*args, **kwargs)


def test_ragged_input_is_type_error():
    with pytest.raises((TypeError, ValueError), match="x"):
        fastdl.norm_stats([[1, 2], [3]], "batch")


def test_kernel_boundary_rejects_what_the_api_would_convert():
    from fastdl._backends.cython import _norm_stats
    with pytest.raises(TypeError, match="float32 or float64"):
        _norm_stats.norm_stats(np.ones((2, 3), dtype=np.int64), "batch", None, 0, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _norm_stats.norm_stats(np.ones((4, 3))[::2], "batch", None, 0, 1)
    with pytest.raises(ValueError, match="count - ddof"):
        _norm_stats.norm_stats(np.ones((2, 3)), "batch", None, 2, 1)
    with pytest.raises(ValueError, match="nthreads"):
        _norm_stats.norm_stats(np.ones((2, 3)), "batch", None, 0, 0)
