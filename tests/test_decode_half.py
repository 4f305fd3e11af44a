"""float16 in the decoding ops: kept float16 (beam scores float32), computed in float32.

* every Cython float16 op equals the float32 op on the exactly converted input,
  bitwise, in every kernel mode (many rows, few long rows split in parts, chunked
  statistics, flat beam pieces), at every SIMD level and thread count;
* the conversions (scalar C, F16C, AVX-512) against each other and against NumPy;
* the NumPy reference backend agrees;
* no float32 copy of the input is made (peak traced memory);
* the raw Cython backend ops refuse what could make a kernel read or write out of
  bounds (wrong dtypes, shapes, strides, alignment, k) with ValueError/TypeError.
"""
import tracemalloc

import numpy as np
import pytest

from fastdl.decode import beam_topk, log_softmax, topk

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _decode  # noqa: E402
from fastdl.testing import rng_for, simd, simd_levels, threads  # noqa: E402

from _decode_kernels_helpers import assert_twin_tails  # noqa: E402

SIMD = simd_levels(scalar=False)     # every SIMD tier this machine runs
CHUNK = _decode.PARAMS["chunk"]
H16 = np.float16


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def same(a, b):
    """bitwise equal, dtype and shape included (NaN payloads too)"""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bits(a), bits(b))


def data(shape, key, special=True):
    rng = rng_for("half", shape, key)
    x = (rng.standard_normal(shape) * 4).astype(H16)
    if special:
        flat = x.reshape(-1)
        flat[rng.random(flat.size) < 0.02] = -np.inf
        flat[rng.random(flat.size) < 0.01] = np.round(flat[:1])     # ties
    return x


# (shape, k): many short rows, few long rows (topk parts, chunked log_softmax), tails
CASES = [((1, 1), 1), ((5, 7), 3), ((16, 3000), 10), ((2, 3 * CHUNK + 5), 7),
         ((1, 300_001), 50), ((3, 70_001), 1)]


def _ops16(seed):
    outs = []
    for shape, k in CASES:
        x = data(shape, seed)
        outs += list(topk(x, k, backend="cython")) + [log_softmax(x, backend="cython")]
    for B, N in [(1, 1), (4, 100), (1, 128_256), (3, 40_000), (8, 5000)]:
        lp = data((B, N), ("beam", seed))
        s = rng_for("s", B, seed).standard_normal(B).astype(np.float32)
        for norm in (True, False):
            outs += list(beam_topk(lp, s, min(2 * B + 3, B * N), normalize=norm,
                                   backend="cython"))
    return outs


@pytest.mark.parametrize("shape,k", CASES)
def test_topk_and_log_softmax_equal_float32_on_converted(shape, k):
    x = data(shape, "eq")
    x0 = x.copy()
    v, i = topk(x, k, backend="cython")
    v32, i32 = topk(x.astype(np.float32), k, backend="cython")
    assert v.dtype == H16 and i.dtype == np.int64
    assert np.array_equal(i, i32) and same(v, v32.astype(H16))
    assert same(v, np.take_along_axis(x, i, axis=1))           # values are elements of x
    y = log_softmax(x, backend="cython")
    assert same(y, log_softmax(x.astype(np.float32), backend="cython").astype(H16))
    assert same(x, x0)


def test_nonfinite_rows_and_nan_order():
    x = data((4, 2 * CHUNK + 9), "nf")
    x[0] = -np.inf                      # no finite max: NaN row
    x[1, 17] = np.inf
    x[2, [3, 900, 5000]] = np.nan       # NaN ranks first, by index
    for k in (1, 5):
        v, i = topk(x, k, backend="cython")
        v32, i32 = topk(x.astype(np.float32), k, backend="cython")
        assert np.array_equal(i, i32) and same(v, v32.astype(H16))
    assert i[2, :3].tolist() == [3, 900, 5000]
    y = log_softmax(x, backend="cython")
    assert np.isnan(y[:3]).all() and not np.isnan(y[3]).any()


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("B,N,k", [(1, 1, 1), (3, 5, 15), (4, 100, 8), (1, 128_256, 2),
                                   (3, 40_000, 6), (9, 20_000, 50)])
def test_beam_equals_float32_on_converted(normalize, B, N, k):
    lp = data((B, N), "beam")
    if B > 2:
        lp[0] = -np.inf                             # a dead beam
    s = rng_for("bs", B).standard_normal(B).astype(np.float32)
    got = beam_topk(lp, s, k, normalize=normalize, backend="cython")
    want = beam_topk(lp.astype(np.float32), s, k, normalize=normalize, backend="cython")
    assert got[0].dtype == np.float32
    for p, q in zip(got, want):
        assert same(p, q)
    # float16 beam scores are taken in float32 too
    got16 = beam_topk(lp, s.astype(H16), k, normalize=normalize, backend="cython")
    want16 = beam_topk(lp.astype(np.float32), s.astype(H16).astype(np.float32), k,
                       normalize=normalize, backend="cython")
    for p, q in zip(got16, want16):
        assert same(p, q)


@pytest.mark.parametrize("shape,k", CASES[:4])
def test_numpy_backend_agrees(shape, k):
    x = data(shape, "np")
    v, i = topk(x, k, backend="cython")
    rv, ri = topk(x, k, backend="numpy")
    assert np.array_equal(i, ri) and same(v, rv)
    y, ry = log_softmax(x, backend="cython"), log_softmax(x, backend="numpy")
    assert y.dtype == ry.dtype == H16
    assert np.array_equal(np.isnan(y), np.isnan(ry))
    # both round a float32 result once: at most one float16 step apart
    fin = np.isfinite(ry)
    assert np.all(np.abs(y[fin].astype(np.float64) - ry[fin]) <= np.spacing(np.abs(ry[fin])))
    lp, s = x, np.zeros(shape[0], np.float32)
    b = beam_topk(lp, s, k, normalize=False, backend="cython")
    rb = beam_topk(lp, s, k, normalize=False, backend="numpy")
    for p, q in zip(b, rb):
        assert same(p, q)


def test_public_api_out_axis_and_subclass():
    x = data((6, 50), "api", special=False)
    out = np.empty_like(x)
    assert log_softmax(x, out=out) is out and same(out, log_softmax(x))
    v, i = topk(x.T, 4, axis=0)
    assert v.dtype == H16 and same(v, topk(x, 4)[0].T)
    yt = log_softmax(x.T, axis=0)
    assert yt.dtype == H16 and same(np.ascontiguousarray(yt.T), log_softmax(x))
    big = x.astype(">f2")                      # non-native byte order: same values
    assert same(topk(big, 3)[0], topk(x, 3)[0])
    with pytest.raises(TypeError, match="out"):
        log_softmax(x, out=np.empty(x.shape, np.float32))


def test_no_float32_copy_of_the_input():
    x = data((1, 2_000_000), "mem", special=False)          # 4 MB; a float32 copy is 8 MB
    topk(x, 10, backend="cython")
    log_softmax(x, backend="cython")
    beam_topk(x, np.zeros(1, np.float32), 4, backend="cython")
    for run, limit in [(lambda: topk(x, 10, backend="cython"), 1 << 20),
                       (lambda: beam_topk(x, np.zeros(1, np.float32), 4, backend="cython"),
                        1 << 20),
                       (lambda: log_softmax(x, backend="cython"), x.nbytes + (1 << 20))]:
        tracemalloc.start()
        try:
            run()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < limit, peak


# ------------------------------------------------------- twins and threads

@pytest.mark.parametrize("level", SIMD)
def test_conversions_scalar_vs_simd_vs_numpy(level):
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)       # every float16
    a, _ = assert_twin_tails(_decode._h2f, h, level, same)
    ref = h.view(H16).astype(np.float32)
    ok = ~np.isnan(ref)
    assert same(a[ok], ref[ok]) and np.isnan(a[~ok]).all()
    rng = rng_for("f2h")
    u = np.concatenate([rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32),
                        np.arange(0x32fff000, 0x38801000, 7, dtype=np.uint32),   # subnormals
                        np.arange(0x477fe000 - 300, 0x47800300, dtype=np.uint32),  # overflow
                        np.array([0x7f800000, 0x7fc00000, 0x7f800001, 0x7fffffff, 0], np.uint32)])
    f = np.concatenate([u, u | np.uint32(0x80000000)]).view(np.float32)
    c, _ = assert_twin_tails(_decode._f2h, f, level, same)
    with np.errstate(all="ignore"):
        r = f.astype(H16).view(np.uint16)
    ok = ~np.isnan(f)
    assert same(c[ok], r[ok]) and np.isnan(c[~ok].view(H16)).all()


@pytest.mark.parametrize("level", SIMD)
def test_scalar_twin_bitwise(level):
    with simd(level):
        a = _ops16(1)
    with simd("scalar"):
        b = _ops16(1)
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert same(p, q)


@pytest.mark.parametrize("level", SIMD)
def test_scalar_twin_offsets_bitwise(level):
    rng = rng_for("off16")
    for n in list(range(1, 140)) + [CHUNK - 1, CHUNK, CHUNK + 33, 3 * CHUNK + 17]:
        x = (rng.standard_normal((3, n)) * 4).astype(H16)
        x[2, ::5] = -np.inf
        with simd(level):
            a = _decode._row_offsets_f16(x.view(np.uint16))
        with simd("scalar"):
            b = _decode._row_offsets_f16(x.view(np.uint16))
        assert same(a, b), n
        assert same(a, _decode._row_offsets(x.astype(np.float32))), n


def test_thread_count_independent():
    with threads(1):
        a = _ops16(2)
    for n in (2, 3, 8):
        with threads(n):
            b = _ops16(2)
        for p, q in zip(a, b):
            assert same(p, q)


# ------------------------------------------- raw backend ops, bad arguments

def _misaligned(shape, dtype):
    n = int(np.prod(shape))
    buf = np.zeros(n * np.dtype(dtype).itemsize + 1, np.uint8)
    a = np.frombuffer(buf[1:].data, dtype=dtype).reshape(shape)
    assert not a.flags.aligned and a.flags.c_contiguous
    return a


def test_raw_ops_refuse_bad_arguments():
    x = data((3, 4), "bad", special=False)
    s = np.zeros(3, np.float32)
    cases = [
        (TypeError, "x must be", lambda: cy.topk(x.astype(np.int32), 2)),
        (TypeError, "x must be", lambda: cy.topk(x.tolist(), 2)),
        (ValueError, "2-D", lambda: cy.topk(x[0], 2)),
        (ValueError, "empty", lambda: cy.topk(x[:0], 1)),
        (ValueError, "C-contiguous", lambda: cy.topk(x[:, ::2], 1)),
        (ValueError, "aligned", lambda: cy.topk(_misaligned((3, 4), H16), 1)),
        (ValueError, "aligned", lambda: cy.log_softmax(_misaligned((3, 4), np.float32), None)),
        (ValueError, "k must be", lambda: cy.topk(x, 5)),
        (ValueError, "k must be", lambda: cy.topk(x, 0)),
        (TypeError, "k must be", lambda: cy.topk(x, 2.0)),
        (TypeError, "k must be", lambda: cy.topk(x, True)),
        (TypeError, "out must be", lambda: cy.log_softmax(x, np.empty((3, 4), np.float32))),
        (ValueError, "out must have shape", lambda: cy.log_softmax(x, np.empty((4, 3), H16))),
        (ValueError, "out must be", lambda: cy.log_softmax(x, np.empty((3, 8), H16)[:, ::2])),
        (ValueError, "out must be", lambda: cy.log_softmax(x, _misaligned((3, 4), H16))),
        (TypeError, "out must be", lambda: cy.log_softmax(x, [[0.0] * 4] * 3)),
        (TypeError, "beam_scores", lambda: cy.beam_topk(x[None], s[None].astype(H16), 2, True)),
        (TypeError, "beam_scores", lambda: cy.beam_topk(x[None], s[None].astype(np.float64), 2,
                                                         True)),
        (TypeError, "beam_scores", lambda: cy.beam_topk(x[None].astype(np.float32),
                                                         s[None].astype(H16), 2, True)),
        (ValueError, "beam_scores", lambda: cy.beam_topk(x[None], np.zeros((1, 2), np.float32), 2,
                                                         True)),
        (ValueError, "beam_scores", lambda: cy.beam_topk(
            x[None], np.zeros((1, 6), np.float32)[:, ::2], 2, True)),
        (ValueError, "beam_scores", lambda: cy.beam_topk(x[None], _misaligned((1, 3), np.float32),
                                                         2, True)),
        (ValueError, "k must be", lambda: cy.beam_topk(x[None], s[None], 13, True)),
        (TypeError, "normalize", lambda: cy.beam_topk(x[None], s[None], 2, 1)),
        (ValueError, "log_probs must be 3-D", lambda: cy.beam_topk(x, s, 2, True)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()
    ro = np.empty((3, 4), H16)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        cy.log_softmax(x, ro)
    # the compiled kernels check sizes themselves too
    xb = x.view(np.uint16)
    with pytest.raises(ValueError):
        _decode.topk_f16(xb, 5, 1)
    with pytest.raises(ValueError):
        _decode.beam_topk_f16(xb[None], np.zeros((1, 2), np.float32), 2, True, 1)
    with pytest.raises(ValueError):
        _decode.log_softmax_f16(xb, np.zeros((2, 4), np.uint16), 1)
