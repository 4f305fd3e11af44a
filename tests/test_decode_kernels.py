"""Adversarial tests of the Cython decoding kernels (fastdl/_backends/cython/_decode.pyx,
src/decodek*) against the NumPy backend and against independent sort references.

* topk: ties (integer-valued data), -inf, NaN, +inf, -0.0, k=1, k=n, large k, n=1,
  many short rows and one long row (the per-thread-part + merge path), sorted
  inputs (every element replaces the heap root);
* log_softmax: offsets vs a float64 reference, non-finite rows -> NaN, out=, in place;
* beam_topk: normalize on/off, dead rows, -inf beam scores, NaN/+inf rows, ties
  across beams, rows mode and flat-piece mode;
* scalar twin vs every SIMD tier (bitwise; every tail length in
  test_decode_tiers.py), thread-count independence (bitwise), public API
  with non-contiguous / axis != -1 input, hypothesis property tests, bad input to
  the raw backend ops.
"""

import numpy as np
import pytest

from fastdl.decode import beam_topk, log_softmax, topk

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _decode  # noqa: E402

hyp = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402
from fastdl.testing import rng_for, simd, simd_levels, threads  # noqa: E402

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
SIMD = simd_levels(scalar=False)     # every SIMD tier this machine runs
CHUNK = _decode.PARAMS["chunk"]
LONG = 300_001          # one row > TOPK_MIN_PART * several: the part + merge path


def _order_key(v, i):
    """independent total order: NaN first (by index), then value desc, then index"""
    return (0, 0.0, i) if np.isnan(v) else (1, -float(v), i)


def ref_topk_row(row, k):
    idx = sorted(range(row.size), key=lambda i: _order_key(row[i], i))[:k]
    return row[idx], np.array(idx, np.int64)


def ref_topk_argsort(x, k):
    """np.argsort reference for rows without NaN: stable sort of -x keeps ties by index"""
    idx = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, idx, -1), idx


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


# ---------------------------------------------------------------------- topk

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", [((1, 1), 1), ((9, 1), 1), ((4, 7), 7), ((4, 7), 1),
                                     ((50, 33), 5), ((3, 1000), 1000), ((2, 5000), 999),
                                     ((1, LONG), 1), ((1, LONG), 64), ((1, LONG), 1000),
                                     ((2, LONG), 3)])
def test_topk_ties_vs_sort(dtype, shape, k):
    x = rng_for("ties", shape, k).integers(-6, 7, size=shape).astype(dtype)   # many duplicates
    v, i = check_topk(x, k)
    rv, ri = ref_topk_argsort(x, k)
    assert np.array_equal(i, ri) and same(v, rv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(1, 1), (17, 4), (17, 17), (200, 50), (LONG, 20)])
def test_topk_nonfinite_vs_sorted(dtype, n, k):
    rng = rng_for("nonfinite", n, k)
    x = rng.integers(-3, 4, size=(3, n)).astype(dtype)
    x[0] = -np.inf                                            # all -inf row
    x[1, rng.integers(0, n, size=max(1, n // 5))] = np.nan     # NaNs rank first, by index
    x[2, rng.integers(0, n, size=max(1, n // 7))] = np.inf
    x[2, rng.integers(0, n, size=max(1, n // 7))] = -np.inf
    if n > 3:
        x[1, 1] = -0.0
        x[1, 2] = 0.0
    v, i = check_topk(x, k)
    for r in range(3):
        if n <= 5000:
            rv, ri = ref_topk_row(x[r], k)
            assert np.array_equal(i[r], ri) and same(v[r], rv)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_first_k_are_minus_inf(dtype):
    # the heap must take -inf while it is not full, then be replaced by the finite ones
    x = np.full((1, 100), -np.inf, dtype)
    x[0, 90:] = np.arange(10)
    x[0, 50] = -np.inf
    v, i = check_topk(x, 15)
    assert np.array_equal(i[0, :10], np.arange(99, 89, -1))
    assert np.array_equal(i[0, 10:], np.arange(5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["ascending", "descending", "constant"])
def test_topk_sorted_inputs(dtype, order):
    n = 100_003
    x = {"ascending": np.arange(n), "descending": np.arange(n)[::-1],
         "constant": np.zeros(n)}[order].astype(dtype)[None]
    for k in (1, 7, 300):
        v, i = check_topk(x, k)
        rv, ri = ref_topk_argsort(x, k)
        assert np.array_equal(i, ri)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_nan_root_and_many_nans(dtype):
    x = np.zeros((1, 70_000), dtype)
    x[0, ::3] = np.nan                     # more NaNs than k: the first k NaNs by index
    v, i = check_topk(x, 50)
    assert np.array_equal(i[0], np.arange(0, 150, 3))
    assert np.isnan(v).all()


def test_topk_public_api_axes_and_noncontiguous():
    x = rng_for("axes").integers(-4, 5, size=(6, 40, 5)).astype(np.float32)
    for axis in (0, 1, 2, -1, -2):
        check_topk(x, 3, axis=axis)
    check_topk(x[:, ::3, :], 2, axis=1)                   # strided
    check_topk(np.asfortranarray(x[0]), 4, axis=0)        # Fortran order
    check_topk(x[0].astype(np.int32), 4)                  # integers go through float64
    ro = x[0].copy()
    ro.setflags(write=False)
    check_topk(ro, 4)                                     # read-only input


# ---------------------------------------------------------------- log_softmax

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 1), (3, 31), (7, 1000), (1, CHUNK), (2, CHUNK + 1),
                                   (1, LONG), (3, 3 * CHUNK + 5), (64, 2000)])
def test_log_softmax_vs_numpy(dtype, shape):
    x = (rng_for("lsm", shape).standard_normal(shape) * 6).astype(dtype)
    got = log_softmax(x, backend="cython")
    ref = log_softmax(x, backend="numpy")
    off = ref_offsets(x)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert ulp_close(got, ref, x, off)
    # the float64 offset itself: within a few float64 ulps of an exact reference
    koff = _decode._row_offsets(np.ascontiguousarray(x))
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert np.allclose(koff, off, rtol=0, atol=tol * np.maximum(1, np.abs(off)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_offsets_round_like_reference(dtype):
    # the offset is rounded once to the dtype: it must match the float64 reference's
    # rounding in the vast majority of rows (float32 exp error is about 1 ulp)
    x = (rng_for("round", dtype).standard_normal((2000, 300)) * 3).astype(dtype)
    koff = _decode._row_offsets(x).astype(dtype)
    roff = ref_offsets(x).astype(dtype)
    # float64: both are float64 sums in different orders, equal within a few ulps
    assert np.mean(koff == roff) > (0.95 if dtype == np.float32 else 0.75)
    assert np.all(np.abs(koff - roff) <= 4 * np.spacing(np.abs(roff)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [5, 40, CHUNK * 2 + 3])
def test_log_softmax_nonfinite_rows(dtype, n):
    x = rng_for("lsm-nf", n).standard_normal((6, n)).astype(dtype)
    x[0] = -np.inf                     # no finite max -> NaN
    x[1, n // 2] = np.inf              # +inf -> NaN
    x[2, n - 1] = np.nan               # NaN -> NaN
    x[3, : n - 1] = -np.inf            # one finite value -> 0 there, -inf elsewhere
    x[4, ::2] = -np.inf                # -inf entries stay -inf
    x[5] = 1e30 if dtype == np.float64 else 3e38        # huge equal values
    got = log_softmax(x, backend="cython")
    ref = log_softmax(x, backend="numpy")
    assert np.isnan(got[:3]).all()
    assert got[3, n - 1] == 0 and (got[3, : n - 1] == -np.inf).all()
    assert (got[4, ::2] == -np.inf).all() and np.isfinite(got[4, 1::2]).all()
    assert ulp_close(got[3:], ref[3:], x[3:], ref_offsets(x[3:]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_exp_underflow(dtype):
    # spread of 1e4: most terms underflow to 0; the offset is the max
    x = np.array([[0.0, -1e4, -800.0, -100.0, -50.0, -20.0]], dtype)
    got = log_softmax(x, backend="cython")
    assert ulp_close(got, log_softmax(x, backend="numpy"), x, ref_offsets(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_out_and_in_place(dtype):
    x = rng_for("out").standard_normal((5, 3 * CHUNK)).astype(dtype)
    keep = x.copy()
    ref = log_softmax(x, backend="cython")
    out = np.full_like(x, 7)
    res = log_softmax(x, out=out, backend="cython")
    assert res is out and same(out, ref)
    assert same(x, keep), "input modified"
    # out with another layout (axis=0 view)
    out2 = np.empty((x.shape[1], x.shape[0]), dtype).T
    log_softmax(x, out=out2, backend="cython")
    assert same(out2, ref)
    # raw op in place (out is x)
    y = x.copy()
    _ = cy.log_softmax(y, y)
    assert same(y, ref)
    # public axis != -1 and non-contiguous
    xt = np.ascontiguousarray(x.T)
    assert same(log_softmax(xt, axis=0, backend="cython"), ref.T)
    assert same(log_softmax(x[:, ::2], backend="cython"),
                log_softmax(np.ascontiguousarray(x[:, ::2]), backend="cython"))


# ------------------------------------------------------------------ beam_topk

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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("B,N,k", [(1, 1, 1), (1, 7, 7), (3, 5, 15), (4, 100, 8), (5, 30, 150),
                                   (1, 128_256, 2), (3, 40_000, 6), (4, 50_257, 8),
                                   (16, 3000, 32), (9, 20_000, 500)])
def test_beam_vs_numpy(dtype, normalize, B, N, k):
    rng = rng_for("beam", B, N, k)
    lp = (rng.standard_normal((B, N)) * 3).astype(dtype)
    s = (rng.standard_normal(B) * 5).astype(dtype)
    check_beam(lp, s, k, normalize)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_beam_ties_across_beams(dtype, normalize):
    # identical rows and scores: every candidate ties with its copies in other beams,
    # the lower flat index must win; integer data ties within rows too
    row = rng_for("bt").integers(-3, 3, size=50).astype(dtype)
    lp = np.tile(row, (4, 1))
    s = np.zeros(4, dtype)
    v, b, t = check_beam(lp, s, 40, normalize)
    # values are equal in each run of ties; beams ascend within a run
    for a in range(39):
        if v[a] == v[a + 1]:
            assert (b[a], t[a]) < (b[a + 1], t[a + 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_beam_dead_and_nonfinite_rows(dtype, normalize):
    rng = rng_for("dead", normalize)
    lp = rng.standard_normal((6, 40)).astype(dtype)
    s = rng.standard_normal(6).astype(dtype)
    lp[0] = -np.inf                    # dead row: -inf candidates (not NaN)
    lp[1, 3] = np.nan                  # NaN row (normalize: all NaN)
    lp[2, 7] = np.inf                  # +inf (normalize: NaN row; else +inf first)
    s[3] = -np.inf                     # -inf beam score: its candidates are -inf
    lp[4, ::2] = -np.inf
    for k in (1, 5, 80, 240):
        check_beam(lp, s, k, normalize)
    v, b, t = beam_topk(lp, s, 240, normalize=normalize, backend="cython")
    assert not np.isnan(v[b == 0]).any() and (v[b == 0] == -np.inf).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_beam_all_dead(dtype):
    lp = np.full((3, 10), -np.inf, dtype)
    s = np.zeros(3, dtype)
    v, b, t = check_beam(lp, s, 30, True, exact_values=True)
    assert (v == -np.inf).all() and np.array_equal(b * 10 + t, np.arange(30))


@pytest.mark.parametrize("dtype", DTYPES)
def test_beam_inputs_not_modified(dtype):
    lp = rng_for("nm").standard_normal((3, 5000)).astype(dtype)
    s = np.arange(3, dtype=dtype)
    a, c = lp.copy(), s.copy()
    beam_topk(lp, s, 10, backend="cython")
    assert same(lp, a) and same(s, c)


# ------------------------------------------------------ twins and thread counts

def _all_ops(dtype, seed):
    rng = rng_for("ops", seed)
    outs = []
    for shape, k in [((7, 1000), 13), ((1, LONG), 100), ((3, 3 * CHUNK + 7), 1)]:
        x = rng.integers(-50, 50, size=shape).astype(dtype) + (rng.standard_normal(shape) * 0.5).astype(dtype)
        x[0, 5] = -np.inf
        outs += list(topk(x, k, backend="cython")) + [log_softmax(x, backend="cython")]
    for B, N in [(1, 128_256), (3, 40_000), (8, 5000)]:
        lp = (rng.standard_normal((B, N)) * 3).astype(dtype)
        s = rng.standard_normal(B).astype(dtype)
        for norm in (True, False):
            outs += list(beam_topk(lp, s, 2 * B + 3, normalize=norm, backend="cython"))
    return outs


@pytest.mark.parametrize("level", SIMD)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scalar_twin_bitwise(dtype, level):
    with simd(level):
        a = _all_ops(dtype, 1)
    with simd("scalar"):
        b = _all_ops(dtype, 1)
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert same(p, q)


@pytest.mark.parametrize("level", SIMD)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scalar_twin_offsets_bitwise(dtype, level):
    # the float64 offsets themselves (before rounding to the dtype), every tail length
    rng = rng_for("twin-off", dtype)
    for n in list(range(1, 140)) + [CHUNK - 1, CHUNK, CHUNK + 33, 3 * CHUNK + 17]:
        x = (rng.standard_normal((3, n)) * 4).astype(dtype)
        x[2, ::5] = -np.inf
        with simd(level):
            a = _decode._row_offsets(x)
        with simd("scalar"):
            b = _decode._row_offsets(x)
        assert same(a, b), n


@pytest.mark.parametrize("level", SIMD)
@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_polynomial_twins_and_accuracy(dtype, level):
    lo = -86.0 if dtype == np.float32 else -708.0
    x = np.concatenate([np.linspace(lo, 80 if dtype == np.float32 else 700, 200_001),
                        [0.0, -0.0, -np.inf, lo - 1, -1e30]]).astype(dtype)
    with simd(level):
        e = _decode._exp(x)
        tails = [_decode._exp(x[-n:]) for n in range(1, 41)]    # every masked tail
    with simd("scalar"):
        es = _decode._exp(x)
    assert same(e, es)
    for n, t in zip(range(1, 41), tails):
        assert same(t, es[-n:]), n
    ref = np.exp(x.astype(np.float64))
    ok = x >= lo
    rel = np.abs(e[ok] - ref[ok]) / ref[ok]
    assert rel.max() < (2.5 * 2.0 ** -24 if dtype == np.float32 else 3 * 2.0 ** -53)
    assert (e[~ok] == 0).all() and e[x == 0].tolist() == [1, 1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_independent(dtype):
    with threads(1):
        a = _all_ops(dtype, 2)
    for n in (2, 3, 8):
        with threads(n):
            b = _all_ops(dtype, 2)
        for p, q in zip(a, b):
            assert same(p, q)


# ------------------------------------------------------------------ hypothesis

@st.composite
def _cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    R = draw(st.integers(1, 4))
    n = draw(st.sampled_from([1, 2, 3, 8, 9, 31, 33, 100, 257, 40_000]))
    k = draw(st.integers(1, min(n, 300)))
    kind = draw(st.sampled_from(["ints", "normal", "special"]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "ints":
        x = rng.integers(-3, 4, size=(R, n)).astype(dtype)
    else:
        x = (rng.standard_normal((R, n)) * 10).astype(dtype)
    if kind == "special":
        pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
        m = rng.random((R, n)) < 0.1
        x[m] = rng.choice(pool, size=int(m.sum()))
    return x, k, draw(st.sampled_from([1, 2])), seed


@settings(max_examples=60, deadline=None)
@given(_cases())
def test_hypothesis_topk_logsoftmax(case):
    x, k, nt, _ = case
    with threads(nt):
        check_topk(x, k)
        got = log_softmax(x, backend="cython")
    ref = log_softmax(x, backend="numpy")
    assert ulp_close(got, ref, x, ref_offsets(x))


@settings(max_examples=40, deadline=None)
@given(_cases(), st.booleans())
def test_hypothesis_beam(case, normalize):
    x, k, nt, seed = case
    s = np.random.default_rng(seed).standard_normal(x.shape[0]).astype(x.dtype)
    k = min(k * x.shape[0], x.size)
    with threads(nt):
        check_beam(x, s, k, normalize, exact_values=True if not normalize else None)


# ------------------------------------------------------------------ bad input

def test_bad_input_raw_ops():
    x = np.zeros((3, 4), np.float32)
    s = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="x"):
        cy.topk(x.astype(np.int32), 2)
    with pytest.raises(TypeError, match="x"):
        cy.topk([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        cy.topk(np.zeros((4, 6), np.float32)[:, ::2], 1)
    with pytest.raises(ValueError, match="2-D"):
        cy.topk(np.zeros(4, np.float32), 1)
    with pytest.raises(ValueError, match="empty"):
        cy.topk(np.zeros((0, 4), np.float32), 1)
    for k in (0, 5, -1):
        with pytest.raises(ValueError, match="k must be"):
            cy.topk(x, k)
    with pytest.raises(TypeError, match="k"):
        cy.topk(x, 1.5)
    with pytest.raises(TypeError, match="out"):          # as numpy's out=: a dtype is a TypeError
        cy.log_softmax(x, np.zeros((3, 4), np.float64))
    with pytest.raises(ValueError, match="out"):
        cy.log_softmax(x, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="out"):
        cy.log_softmax(x, np.zeros((3, 8), np.float32)[:, ::2])
    ro = np.zeros((3, 4), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out"):
        cy.log_softmax(x, ro)
    with pytest.raises(TypeError, match="out"):
        cy.log_softmax(x, [[0.0] * 4] * 3)
    with pytest.raises(TypeError, match="beam_scores"):
        cy.beam_topk(x, s.astype(np.float64), 2, True)
    with pytest.raises(ValueError, match="beam_scores"):
        cy.beam_topk(x, np.zeros(4, np.float32), 2, True)
    with pytest.raises(ValueError, match="beam_scores"):
        cy.beam_topk(x, np.zeros(6, np.float32)[::2], 2, True)
    with pytest.raises(ValueError, match="k must be"):
        cy.beam_topk(x, s, 13, True)
    with pytest.raises(ValueError, match="k must be"):
        cy.beam_topk(x, s, 0, True)
    with pytest.raises(TypeError, match="normalize"):
        cy.beam_topk(x, s, 2, 1)
    with pytest.raises(TypeError, match="log_probs"):
        cy.beam_topk(x.astype(np.int32), s, 2, True)
    # the raw Cython kernels refuse inconsistent sizes instead of reading out of bounds
    with pytest.raises(ValueError):
        _decode.topk(x, 5, 1)
    with pytest.raises(ValueError):
        _decode.beam_topk(x, np.zeros(2, np.float32), 2, True, 1)
    with pytest.raises(ValueError):
        _decode.log_softmax(x, np.zeros((2, 4), np.float32), 1)


def test_backend_registered():
    assert {"topk", "log_softmax", "beam_topk"} <= set(cy.backend.ops)
