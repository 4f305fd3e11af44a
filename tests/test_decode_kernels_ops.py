"""Adversarial tests of the Cython decoding kernels against the NumPy backend and
independent sort references.

* topk: ties (integer-valued data), -inf, NaN, +inf, -0.0, k=1, k=n, large k, n=1,
  many short rows and one long row (the per-thread-part + merge path), sorted
  inputs (every element replaces the heap root), the public API with
  non-contiguous / axis != -1 input;
* log_softmax: offsets vs a float64 reference, non-finite rows -> NaN, exp underflow,
  out=, in place;
* beam_topk: normalize on/off, dead rows, -inf beam scores, NaN/+inf rows, ties
  across beams, inputs never modified.
"""

import numpy as np
import pytest

from fastdl.decode import beam_topk, log_softmax

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _decode  # noqa: E402

hyp = pytest.importorskip("hypothesis")
from fastdl.testing import rng_for  # noqa: E402

from _decode_kernels_helpers import (  # noqa: E402
    CHUNK, DTYPES, LONG, check_beam, check_topk, ref_offsets, ref_topk_row, same, ulp_close)


def ref_topk_argsort(x, k):
    """np.argsort reference for rows without NaN: stable sort of -x keeps ties by index"""
    idx = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, idx, -1), idx


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
