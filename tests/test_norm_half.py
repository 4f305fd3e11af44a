"""float16 in the normalization layers: float16 in, float16 out, computed in float32.

* the conversions of the Cython kernels (F16C in the AVX2 tier, bit manipulation in the
  scalar twin): every float16 and every class of float32 value, twin vs twin and vs NumPy;
* the Cython float16 path is bitwise the float32 path on ``x.astype(float32)`` rounded
  once to float16 (it converts chunks in L1 and runs the float32 kernels on them), for
  every forward, backward and ``norm_stats``, over the sizes where the kernels change
  path (chunk, block, flush, per-channel/per-column, few channels);
* every SIMD level this machine runs (scalar, AVX2, AVX-512) at 1 and 2 threads, and
  1 vs 2 vs 3 threads: bitwise;
* against torch float16 (forward and autograd backward, both backends): fastdl's error
  against a float64 reference of the same float16 inputs is at most torch's plus half a
  float16 ulp (and the float32 rounding of the computation);
* strided inputs, ``out=`` (contiguous and strided), parameter dtypes (float16 or float32
  weights, as torch accepts, with gradients in the parameter's dtype), running buffers
  keeping their dtype, hypothesis over shapes;
* direct calls of the Cython backend's norm ops with bad arguments raise TypeError /
  ValueError naming the argument before any kernel runs.
"""
import numpy as np
import pytest

import fastdl
from fastdl.testing import requires_simd, rng_for, simd, simd_levels, threads

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _cpu, _norm16  # noqa: E402

from _norm_kernels_helpers import operands as _operands  # noqa: E402

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
LEVELS = simd_levels()
needs_simd = requires_simd("avx2")      # AVX2 is the lowest SIMD tier
NORMS = ["layer", "rms", "group", "instance", "batch_train", "batch_eval"]
ROW = ("layer", "rms")


# ---------------------------------------------------------------- conversions

def test_half_to_float_every_value():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    want = h.astype(np.float32)
    nan = np.isnan(want)
    scalar = _norm16.half_to_float(h, _cpu.LEVELS["scalar"])
    for name in LEVELS:
        got = _norm16.half_to_float(h, _cpu.LEVELS[name])
        assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32)), name
        assert np.isnan(got[nan]).all()
        assert np.array_equal(got.view(np.uint32), scalar.view(np.uint32)), name


def _float_cases():
    rng = rng_for("f2h")
    bits = rng.integers(0, 1 << 32, 400_000, dtype=np.uint64).astype(np.uint32)
    # every float16 value and the midpoints and their neighbours (ties to even), the
    # subnormal range, the overflow threshold 65520, zeros, infinities
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    h = h[np.isfinite(h)].astype(np.float32)
    mid = (np.sort(h)[:-1].astype(np.float64) + np.sort(h)[1:]) / 2
    mid = mid.astype(np.float32)
    u = mid.view(np.uint32).astype(np.int64)
    near = np.concatenate([(u + d).astype(np.uint32) for d in (-1, 0, 1)]).view(np.float32)
    edges = np.array([0.0, -0.0, 65504, 65519.996, 65520, 65536, 6.1e-5, 5.96e-8, 2.98e-8,
                      2.9802322e-8, 1e-10, np.inf, -np.inf], np.float32)
    return np.concatenate([bits.view(np.float32), h, near, edges, -edges])


def test_float_to_half_rounds_like_numpy_and_twins_agree():
    f = _float_cases()
    with np.errstate(over="ignore"):
        want = f.astype(np.float16)
    nan = np.isnan(f)
    got = {}
    for name in LEVELS:
        got[name] = _norm16.float_to_half(f, _cpu.LEVELS[name])
        g = got[name]
        assert np.array_equal(g[~nan].view(np.uint16), want[~nan].view(np.uint16)), name
        assert np.isnan(g[nan]).all()
        assert np.array_equal(g.view(np.uint16), got["scalar"].view(np.uint16)), name


# ---------------------------------------------------------------- operands and runs

def operands(norm, shape, wdtype=F32, key=()):
    """float16 x / dy; weight, bias and running statistics in ``wdtype``."""
    return _operands(norm, shape, wdtype, key, xdtype=F16)


def groups(norm, C):
    return C if norm == "instance" else (2 if C % 2 == 0 else 1)


def run_all(norm, x, dy, w, b, rm, rv, *, backend, out=None, eps=1e-5):
    """(y, stats.mean, stats.rstd, dx, dw, db) of the forward and of the backward from its stats."""
    kw = dict(backend=backend)
    if norm == "layer":
        y, st = fastdl.layer_norm(x, x.shape[-1:], w, b, eps, out=out, return_stats=True, **kw)
        g = fastdl.layer_norm_backward(dy, x, x.shape[-1:], w, b, eps, stats=st, **kw)
    elif norm == "rms":
        y, st = fastdl.rms_norm(x, x.shape[-1:], w, eps, out=out, return_stats=True, **kw)
        g = fastdl.rms_norm_backward(dy, x, x.shape[-1:], w, eps, stats=st, **kw)
    elif norm in ("group", "instance"):
        G = groups(norm, x.shape[1])
        y, st = fastdl.group_norm(x, G, w, b, eps, out=out, return_stats=True, **kw)
        g = fastdl.group_norm_backward(dy, x, G, w, b, eps, stats=st, **kw)
    else:
        train = norm == "batch_train"
        r = (None, None) if train else (rm.copy(), rv.copy())
        y, st = fastdl.batch_norm(x, *r, w, b, train, 0.1, eps, out=out, return_stats=True, **kw)
        g = fastdl.batch_norm_backward(dy, x, *r, w, b, train, 0.1, eps, stats=st, **kw)
    return (y if out is None else y.copy(), st.mean, st.rstd) + tuple(g)


def assert_bitwise(got, want, what):
    for i, (g, w_) in enumerate(zip(got, want)):
        if w_ is None:
            assert g is None, (what, i)
            continue
        g, w_ = np.asarray(g), np.asarray(w_)
        assert g.dtype == w_.dtype and g.shape == w_.shape, (what, i, g.dtype, w_.dtype)
        assert g.tobytes() == w_.tobytes(), (
            f"{what}: output {i} differs bitwise in "
            f"{int(np.sum(g.view(f'u{g.itemsize}') != w_.view(f'u{w_.itemsize}')))} elements")


def as_f16_path(res32):
    """The float32 path's results as the float16 path gives them: y and dx rounded to
    float16, statistics float64, parameter gradients float32."""
    y, mean, rstd, dx, dw, db = res32
    return (y.astype(F16), mean, rstd, dx.astype(F16), dw, db)


# sizes around every threshold of the kernels: float32 lanes (16/32), the reduction
# flush (1024), the chunk / moments block (4096), a run of 64 blocks (262144),
# batch norm per-column below S = 64 / per-channel from S = 64, few (< 16) channels
ROW_SHAPES = [(3, 1), (5, 17), (4, 1025), (3, 4097), (2, 9000), (1, 262_150)]
CHAN_SHAPES = [(3, 4, 1), (4, 6, 15), (3, 5, 63), (2, 4, 64), (2, 18, 65), (2, 4, 4097),
               (2, 2, 9000), (40, 3, 7)]


def _cases():
    for norm in NORMS:
        for shape in (ROW_SHAPES if norm in ROW else CHAN_SHAPES):
            if norm != "instance" or shape[2] > 1:
                yield pytest.param(norm, shape, id=f"{norm}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("norm, shape", list(_cases()))
def test_cython_half_is_float32_path_rounded(norm, shape):
    x, dy, w, b, rm, rv = operands(norm, shape)
    for level in LEVELS:
        with simd(level):
            got = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
            want = run_all(norm, x.astype(F32), dy.astype(F32), w, b,
                           None if rm is None else rm.astype(F32),
                           None if rv is None else rv.astype(F32), backend="cython")
        assert_bitwise(got, as_f16_path(want), f"{norm} {shape} {level}")


@needs_simd
@pytest.mark.parametrize("norm, shape", list(_cases()))
def test_every_simd_level_equals_scalar_half(norm, shape):
    x, dy, w, b, rm, rv = operands(norm, shape, key=("twin",))
    with simd("scalar"), threads(1):
        s = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    for level in LEVELS:
        for nt in (1, 2):
            with simd(level), threads(nt):
                v = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
            assert_bitwise(v, s, f"{norm} {shape} {level} x{nt} threads")


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [(37, 8, 300), (130, 20, 9), (9, 4, 5000)])
def test_thread_count_does_not_change_half_results(norm, shape):
    if norm in ROW:
        shape = (shape[0] * shape[1], shape[2])
    x, dy, w, b, rm, rv = operands(norm, shape, key=("threads",))
    res = []
    for n in (1, 2, 3):
        with threads(n):
            res.append(run_all(norm, x, dy, w, b, rm, rv, backend="cython"))
    assert_bitwise(res[1], res[0], f"{norm} 2 threads")
    assert_bitwise(res[2], res[0], f"{norm} 3 threads")


def _stats_cases():
    for kind, ng in (("batch", None), ("layer", None), ("instance", None), ("group", 2)):
        for shape in [(5, 4, 3), (70, 6, 20), (3, 4, 64), (2, 2, 5000), (3, 2, 3, 700),
                      (2, 4)]:
            if kind in ("instance", "group") and len(shape) == 2:
                continue
            yield pytest.param(kind, ng, shape, id=f"{kind}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("kind, ng, shape", list(_stats_cases()))
def test_norm_stats_half(kind, ng, shape):
    rng = rng_for("stats16", kind, shape)
    x = (rng.standard_normal(shape) * 2 + 3).astype(F16)
    ref_m, ref_v = fastdl.norm_stats(x.astype(F64), kind, num_groups=ng, backend="numpy")
    res = {}
    for level in LEVELS:
        for nt in (1, 2):
            with simd(level), threads(nt):
                res[level, nt] = fastdl.norm_stats(x, kind, num_groups=ng, backend="cython")
    base = res[LEVELS[0], 1]
    for r in res.values():
        assert_bitwise(r, base, f"norm_stats {kind} {shape}")
    for got, ref in zip(base, (ref_m, ref_v)):
        assert got.dtype == F16
        # computed in float32 blocks combined in float64, rounded once to float16
        ulp = np.spacing(np.abs(ref).astype(F16)).astype(F64)
        assert np.all(np.abs(got.astype(F64) - ref) <= 0.5 * ulp + 1e-5 * np.abs(ref))
    num = fastdl.norm_stats(x, kind, num_groups=ng, backend="numpy")
    assert num[0].dtype == num[1].dtype == F16
    assert_bitwise(num, (ref_m.astype(F16), ref_v.astype(F16)), "numpy backend")


def test_norm_stats_half_like_torch_var_mean():
    torch = pytest.importorskip("torch")
    x = (rng_for("vm").standard_normal((6, 5, 40)) * 3 + 2).astype(F16)
    tv, tm = torch.var_mean(torch.from_numpy(x), dim=(0, 2), correction=0)
    for backend in ("numpy", "cython"):
        m, v = fastdl.norm_stats(x, "batch", backend=backend)
        assert m.dtype == v.dtype == F16 and tm.dtype == torch.float16
        np.testing.assert_allclose(m, tm.numpy(), rtol=2e-3)
        np.testing.assert_allclose(v, tv.numpy(), rtol=2e-3)


# ---------------------------------------------------------------- against torch float16

def _torch_run(norm, x, dy, w, b, rm, rv, eps=1e-5):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def t(a, grad=False):
        return None if a is None else torch.from_numpy(np.array(a)).requires_grad_(grad)
    tx, tw, tb = t(x, True), t(w, True), t(b, True)
    if norm == "layer":
        ty = F.layer_norm(tx, x.shape[-1:], tw, tb, eps)
    elif norm == "rms":
        ty = F.rms_norm(tx, x.shape[-1:], tw, eps)
    elif norm in ("group", "instance"):
        ty = F.group_norm(tx, groups(norm, x.shape[1]), tw, tb, eps)
    else:
        train = norm == "batch_train"
        ty = F.batch_norm(tx, None if train else t(rm), None if train else t(rv), tw, tb,
                          train, 0.1, eps)
    ty.backward(t(dy))
    return [a.detach().numpy() if a is not None else None
            for a in (ty, tx.grad, None if tw is None else tw.grad,
                      None if tb is None else tb.grad)]


def _no_worse_than_torch(got, tgot, ref, what):
    """|fastdl - ref| <= |torch - ref| + half an ulp of the result's dtype + the float32
    rounding of the computation (relative to the array's scale)."""
    assert got.dtype == tgot.dtype, (what, got.dtype, tgot.dtype)
    g, t_, r = (np.asarray(a, F64) for a in (got, tgot, ref))
    scale = max(1.0, float(np.abs(r).max()))
    ulp = np.spacing(np.abs(r).astype(got.dtype)).astype(F64)
    bound = np.abs(t_ - r) + 0.5 * ulp + 32 * float(np.finfo(F32).eps) * scale
    bad = np.abs(g - r) > bound
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} worse than torch, e.g. "
                           f"fastdl {g[bad][:3]} torch {t_[bad][:3]} ref {r[bad][:3]}")


TORCH_SHAPES = {"row": [(6, 33), (4, 3, 700)], "chan": [(4, 6, 7), (3, 4, 5, 20), (2, 6, 300)]}


def _torch_cases():
    for norm in NORMS:
        for shape in TORCH_SHAPES["row" if norm in ROW else "chan"]:
            for wd in (F16, F32):
                for backend in ("numpy", "cython"):
                    yield pytest.param(norm, shape, wd, backend,
                                       id=f"{norm}-{'x'.join(map(str, shape))}-w{wd.name}-{backend}")


@pytest.mark.parametrize("norm, shape, wd, backend", list(_torch_cases()))
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_against_torch_half(norm, shape, wd, backend):
    pytest.importorskip("torch")
    if norm in ROW:
        shape = (shape[0] * (shape[1] if len(shape) == 3 else 1), shape[-1])
    x, dy, w, b, rm, rv = operands(norm, shape, wdtype=wd, key=("torch",))
    y, mean, rstd, dx, dw, db = run_all(norm, x, dy, w, b, rm, rv, backend=backend)
    ty, tdx, tdw, tdb = _torch_run(norm, x, dy, w, b, rm, rv)
    up = (lambda a: None if a is None else a.astype(F64))
    ref = run_all(norm, x.astype(F64), dy.astype(F64), up(w), up(b), up(rm), up(rv),
                  backend="numpy")
    assert y.dtype == dx.dtype == F16
    assert mean is None or mean.dtype == F64
    for name, got, tg, r in (("y", y, ty, ref[0]), ("dx", dx, tdx, ref[3]),
                             ("dw", dw, tdw, ref[4]), ("db", db, tdb, ref[5])):
        if tg is None:
            assert got is None, name
            continue
        assert got.dtype == tg.dtype == wd or name in ("y", "dx"), (name, got.dtype, tg.dtype)
        _no_worse_than_torch(got, tg, r, f"{norm} {shape} {backend} {name}")


def test_rms_norm_default_eps_like_torch_half():
    torch = pytest.importorskip("torch")
    x = (rng_for("rms-eps").standard_normal((3, 50)) * 0.01).astype(F16)
    want = torch.nn.functional.rms_norm(torch.from_numpy(x), (50,)).numpy()
    for backend in ("numpy", "cython"):
        got = fastdl.rms_norm(x, 50, backend=backend)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------- layouts, out=, dtypes

@pytest.mark.parametrize("backend", ["numpy", "cython"])
@pytest.mark.parametrize("norm", NORMS)
def test_strided_half_inputs_and_out(norm, backend):
    shape = (6, 300) if norm in ROW else (4, 6, 70)
    x, dy, w, b, rm, rv = operands(norm, shape, key=("strided",))
    big = np.zeros((2,) + tuple(2 * s for s in shape), F16)
    sl = (1,) + tuple(slice(None, None, 2) for _ in shape)
    xs, dys = big[sl], big.copy()[sl]
    xs[...], dys[...] = x, dy
    assert not xs.flags.c_contiguous
    want = run_all(norm, x, dy, w, b, rm, rv, backend=backend)
    assert_bitwise(run_all(norm, xs, dys, w, b, rm, rv, backend=backend), want, "strided")
    out = np.empty(shape, F16)
    assert_bitwise(run_all(norm, x, dy, w, b, rm, rv, backend=backend, out=out), want, "out")
    assert np.array_equal(out, want[0])
    outs = np.empty((2,) + tuple(2 * s for s in shape), F16)[sl]
    assert_bitwise(run_all(norm, x, dy, w, b, rm, rv, backend=backend, out=outs), want,
                   "strided out")
    with pytest.raises(TypeError, match="out"):
        run_all(norm, x, dy, w, b, rm, rv, backend=backend, out=np.empty(shape, F32))


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_running_buffers_keep_their_dtype(backend):
    x, *_ = operands("batch_train", (8, 4, 30), key=("running",))
    for dt in (F16, F32, F64):
        rm, rv = np.zeros(4, dt), np.ones(4, dt)
        y = fastdl.batch_norm(x, rm, rv, None, None, True, backend=backend)
        assert y.dtype == F16 and rm.dtype == rv.dtype == dt
        want = 0.1 * x.astype(F64).mean(axis=(0, 2))
        np.testing.assert_allclose(rm, want, rtol=2e-3, atol=1e-3)
        rm2, rv2 = np.zeros(4, dt), np.ones(4, dt)
        fastdl.instance_norm(x, rm2, rv2, backend=backend)
        assert rm2.dtype == dt and np.all(rm2 != 0)


def test_layers_with_float16_input():
    import fastdl.nn
    x = operands("layer", (4, 3, 16), key=("nn",))[0]
    for layer in (fastdl.nn.LayerNorm(16), fastdl.nn.GroupNorm(1, 3),
                  fastdl.nn.BatchNorm(3), fastdl.nn.RMSNorm(16)):
        y = layer(x)
        assert y.dtype == F16
        layer.backward(np.ones_like(y))
        assert all(g.dtype == F32 and np.isfinite(g).all() for g in layer.grads.values())


# ---------------------------------------------------------------- hypothesis

hyp = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(norm=st.sampled_from(NORMS), n=st.integers(1, 9), c=st.integers(1, 8),
       s=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_half_shapes(norm, n, c, s, seed):
    if norm in ROW:
        shape = (n, c * s)
    else:
        shape = (n, c, s)
        if (norm == "instance" and s == 1) or (norm == "batch_train" and n * s == 1):
            return
    x, dy, w, b, rm, rv = operands(norm, shape, key=(seed,))
    got = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    want = run_all(norm, x.astype(F32), dy.astype(F32), w, b,
                   None if rm is None else rm.astype(F32),
                   None if rv is None else rv.astype(F32), backend="cython")
    assert_bitwise(got, as_f16_path(want), f"{norm} {shape}")
    ref = run_all(norm, x, dy, w, b, rm, rv, backend="numpy")
    for g, r in zip((got[0], got[3]), (ref[0], ref[3])):
        np.testing.assert_allclose(g.astype(F64), r.astype(F64), rtol=4e-3,
                                   atol=4e-3 * max(1.0, float(np.abs(r).max())))


# ---------------------------------------------------------------- direct op calls

def _bad_calls():
    x2, x3 = np.ones((4, 8), F16), np.ones((2, 4, 5), F16)
    w8, w4 = np.ones(8, np.float32), np.ones(4, np.float32)
    return [
        (lambda: cy.norm_stats([[1.0, 2.0]], "batch", None, 0), TypeError, "x"),
        (lambda: cy.norm_stats(np.ones((2, 4), np.int32), "batch", None, 0), TypeError, "x"),
        (lambda: cy.norm_stats(np.ones(4, F16), "batch", None, 0), ValueError, "x"),
        (lambda: cy.norm_stats(x3, "bogus", None, 0), ValueError, "kind"),
        (lambda: cy.norm_stats(x3, "group", 3, 0), ValueError, "num_groups"),
        (lambda: cy.norm_stats(x3, "group", None, 0), TypeError, "num_groups"),
        (lambda: cy.norm_stats(x3, "group", 2.0, 0), TypeError, "num_groups"),
        (lambda: cy.norm_stats(x3, "layer", 2, 0), ValueError, "num_groups"),
        (lambda: cy.norm_stats(x3, "layer", None, -1), ValueError, "ddof"),
        (lambda: cy.norm_stats(x3, "layer", None, 1.5), TypeError, "ddof"),
        (lambda: cy.layer_norm_fwd([[1.0]], None, None, 1e-5, None), TypeError, "x"),
        (lambda: cy.layer_norm_fwd(x2, np.ones(7, F16), None, 1e-5, None), ValueError, "w"),
        (lambda: cy.layer_norm_fwd(x2, np.array(["a"] * 8), None, 1e-5, None), TypeError, "w"),
        (lambda: cy.layer_norm_fwd(x2, None, None, 1e-5, np.ones((4, 8), F32)), TypeError, "out"),
        (lambda: cy.layer_norm_fwd(x2, None, None, 1e-5, x2), ValueError, "out"),
        (lambda: cy.layer_norm_fwd(x2, w8, None, 1e-5, x2[:0]), ValueError, "out"),
        (lambda: cy.layer_norm_bwd(x2, x2, np.zeros(3), np.ones(4), None, False, False),
         ValueError, "mean"),
        (lambda: cy.layer_norm_bwd(np.ones((4, 7), F16), x2, np.zeros(4), np.ones(4), None,
                                   False, False), ValueError, "dy"),
        (lambda: cy.rms_norm_bwd(x2, x2, None, None, False), TypeError, "rstd"),
        (lambda: cy.group_norm_fwd(x3, 3, None, None, 1e-5, None), ValueError, "G"),
        (lambda: cy.group_norm_fwd(x3, 2.5, None, None, 1e-5, None), TypeError, "G"),
        (lambda: cy.group_norm_fwd(x3, True, None, None, 1e-5, None), TypeError, "G"),
        (lambda: cy.group_norm_bwd(x3, x3, np.zeros(4), np.ones(4), 0, None, False, False),
         ValueError, "G"),
        (lambda: cy.batch_norm_fwd(x2, None, None, 1e-5, None), ValueError, "x"),
        (lambda: cy.batch_norm_eval(x3, np.zeros(4), np.ones(3), w4, None, None),
         ValueError, "rstd"),
        (lambda: cy.batch_norm_eval(x3, np.zeros(4).astype(complex), np.ones(4), None, None,
                                    None), TypeError, "mean"),
        (lambda: cy.batch_norm_bwd(x3, x3, np.zeros(4), np.ones(4), np.ones(5), True, True,
                                   False), ValueError, "w"),
    ]


@pytest.mark.parametrize("i", range(len(_bad_calls())))
def test_backend_ops_check_their_arguments(i):
    call, exc, match = _bad_calls()[i]
    with pytest.raises(exc, match=match):
        call()


def test_backend_ops_pack_unaligned_inputs():
    raw = np.zeros(4 * 8 * 4 + 1, np.uint8)
    x = raw[1:].view(np.float32).reshape(4, 8)
    x[...] = np.arange(32).reshape(4, 8)
    assert not x.flags.aligned
    y, mean, var = cy.layer_norm_fwd(x, None, None, 1e-5, None)
    np.testing.assert_allclose(mean, np.arange(32).reshape(4, 8).mean(axis=1))
    with pytest.raises(ValueError, match="out"):
        cy.layer_norm_fwd(np.ones((4, 8), np.float32), None, None, 1e-5, x)


# ---------------------------------------------------------------- no float32 copies

@pytest.mark.parametrize("norm", NORMS)
def test_half_path_makes_no_float32_copy(norm):
    """Peak memory of a forward + backward stays near the float16 outputs: a float32 copy
    of x (twice x's bytes) would show."""
    import tracemalloc
    shape = (1024, 4096) if norm in ROW else (64, 32, 2048)
    x, dy, w, b, rm, rv = operands(norm, shape, key=("memory",))
    run_all(norm, x[:8], dy[:8], w, b, rm, rv, backend="cython")     # scratch buffers exist
    tracemalloc.start()
    try:
        run_all(norm, x, dy, w, b, rm, rv, backend="cython")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # y and dx (float16) may both be alive, plus per-row statistics and small scratch
    assert peak < 2 * x.nbytes + (4 << 20), (peak, x.nbytes)


@pytest.mark.parametrize("norm", NORMS)
def test_non_finite_half_like_float32_path(norm):
    shape = (6, 40) if norm in ROW else (3, 4, 30)
    x, dy, w, b, rm, rv = operands(norm, shape, key=("nonfinite",))
    x.reshape(-1)[[3, 50]] = np.inf
    x.reshape(-1)[7] = np.nan
    got = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    want = as_f16_path(run_all(norm, x.astype(F32), dy.astype(F32), w, b,
                               None if rm is None else rm.astype(F32),
                               None if rv is None else rv.astype(F32), backend="cython"))
    for g, w_ in zip(got, want):
        if w_ is None:
            assert g is None
        else:
            assert g.dtype == w_.dtype
            np.testing.assert_array_equal(g, w_)      # nan where the float32 path has nan
