"""beam_topk with a leading group dimension: log_probs (G, B, N), beam_scores (G, B).

Group g of the batched call is bitwise the 2-D call on (log_probs[g], beam_scores[g])
on both backends; the Cython kernel's every split (whole groups per thread, row
ranges of a group, pieces of a group's flat candidate range) gives the same bits for
1 to 4 threads and at every SIMD level, and matches the NumPy reference; bad shapes
are a ValueError naming the argument.
"""
import numpy as np
import pytest

from fastdl.decode import beam_topk

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _decode  # noqa: E402

hyp = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402
from fastdl.testing import (  # noqa: E402
    bitwise_equal, fixed_teams, rng_for, simd, simd_levels, threads)

DTYPES = [pytest.param(np.float16, id="f16"), pytest.param(np.float32, id="f32"),
          pytest.param(np.float64, id="f64")]
BACKENDS = ["numpy", "cython"]
MIN_PART = _decode.PARAMS["beam_min_part"]

# (G, B, N, k) and the kernel's split at 2 threads: whole groups per thread; one group
# cut into row ranges (the 2-D path); several groups cut into row ranges; several
# groups cut into flat pieces (B not a multiple of the parts); single-row groups cut
# into flat pieces; groups too small to cut, fewer groups than threads; two groups
# (at 4 threads: each cut into two row ranges)
SHAPES = [(8, 4, 50_257, 8), (1, 4, 50_257, 8), (3, 4, 20_000, 8), (3, 3, 40_000, 6),
          (3, 1, 70_000, 3), (3, 4, 3000, 8), (2, 2, 2 * MIN_PART + 5, 40)]
SPLITS = [(2, 1, "groups"), (2, 2, "rows"), (2, 2, "rows"), (2, 2, "flat"), (2, 2, "flat"),
          (2, 1, "groups"), (2, 1, "groups")]


def _sdtype(dtype):
    return np.float32 if np.dtype(dtype) == np.float16 else dtype


def _inputs(G, B, N, dtype, seed=0, kind="normal"):
    rng = rng_for("batched", G, B, N, seed)
    if kind == "ints":                      # ties within rows and across beams and groups
        lp = rng.integers(-3, 4, size=(G, B, N)).astype(dtype)
    else:
        lp = (rng.standard_normal((G, B, N)) * 3).astype(dtype)
    s = (rng.standard_normal((G, B)) - 2).astype(_sdtype(dtype))
    return lp, s


def _same(a, b):
    return all(bitwise_equal(p, q) for p, q in zip(a, b))


def _assert_groups(lp, s, k, normalize, backend):
    """the batched call is the 2-D call of every group, bitwise; returns it"""
    got = beam_topk(lp, s, k, normalize=normalize, backend=backend)
    G = lp.shape[0]
    assert all(r.shape == (G, k) for r in got)
    assert got[0].dtype == _sdtype(lp.dtype) and got[1].dtype == got[2].dtype == np.int64
    for g in range(G):
        one = beam_topk(lp[g], s[g], k, normalize=normalize, backend=backend)
        assert _same([r[g] for r in got], one), (backend, g)
    return got


def _assert_matches_reference(lp, s, k, normalize, got):
    """Cython vs the NumPy backend: indices exact; values exact without normalizing,
    else within a few ulps (the offsets' float64 log differs in its last bits)"""
    ref = beam_topk(lp, s, k, normalize=normalize, backend="numpy")
    assert np.array_equal(got[1], ref[1]) and np.array_equal(got[2], ref[2])
    v, rv = got[0], ref[0]
    if not normalize:
        assert bitwise_equal(v, rv)
        return
    fin = np.isfinite(rv)
    assert np.array_equal(np.isnan(v), np.isnan(rv))
    assert np.array_equal(v[~fin & ~np.isnan(rv)], rv[~fin & ~np.isnan(rv)])
    g = np.nonzero(fin)[0]
    x = lp[g, ref[1][fin], ref[2][fin]].astype(v.dtype)
    scale = np.abs(rv[fin]) + np.abs(x) + 1
    assert np.all(np.abs(v[fin] - rv[fin]) <= 4 * np.spacing(scale.astype(v.dtype)))


# ------------------------------------------------------------- per group, every path

def test_shapes_cover_every_split():
    with fixed_teams():
        assert [_decode._beam_split(G, B, N, 2) for G, B, N, _ in SHAPES] == SPLITS
        assert _decode._beam_split(*SHAPES[-1][:3], 4) == (4, 2, "rows")
        assert _decode._beam_split(*SHAPES[3][:3], 4) == (4, 4, "flat")
        assert _decode._beam_split(*SHAPES[0][:3], 3) == (3, 2, "rows")
        # the 2-D call is G = 1: its team and split are the ones it had alone
        assert _decode._beam_split(1, 3, 40_000, 2)[1:] == (2, "flat")
        assert _decode._beam_split(1, 64, 50_257, 2)[1:] == (2, "rows")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("G,B,N,k", SHAPES)
def test_batched_is_the_per_group_call(G, B, N, k, normalize, dtype):
    lp, s = _inputs(G, B, N, dtype)
    with fixed_teams():
        outs = {}
        for nt in (1, 2, 3, 4):
            with threads(nt):
                outs[nt] = _assert_groups(lp, s, k, normalize, "cython")
        for nt in (2, 3, 4):
            assert _same(outs[nt], outs[1]), nt
    _assert_matches_reference(lp, s, k, normalize, outs[1])
    _assert_groups(lp, s, k, normalize, "numpy")


@pytest.mark.parametrize("level", simd_levels(scalar=False))
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_simd_levels_bitwise(dtype, level):
    def run():
        out = []
        for G, B, N, k in SHAPES[:5]:
            lp, s = _inputs(G, B, N, dtype, seed=1)
            for norm in (True, False):
                with threads(2):
                    out += beam_topk(lp, s, k, normalize=norm, backend="cython")
        return out
    with fixed_teams():
        with simd(level):
            a = run()
        with simd("scalar"):
            b = run()
    assert _same(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_special_rows_and_ties(dtype, backend):
    G, B, N = 4, 3, 40
    lp, s = _inputs(G, B, N, dtype, kind="ints")
    lp[0, 1] = -np.inf                 # a dead row: -inf candidates, not NaN
    lp[1] = -np.inf                    # a dead group: every score -inf
    lp[2, 0, 5] = np.nan               # NaN ranks first (normalize: the row becomes NaN)
    lp[3, 2, 7] = np.inf
    s[3, 0] = -np.inf                  # a beam that can no longer win
    for norm in (True, False):
        for k in (1, 7, B * N):
            got = _assert_groups(lp, s, k, norm, backend)
            if backend == "cython":
                _assert_matches_reference(lp, s, k, norm, got)
        v, b, t = beam_topk(lp, s, B * N, normalize=norm, backend=backend)
        assert (v[1] == -np.inf).all() and np.array_equal(b[1] * N + t[1], np.arange(B * N))
        assert not np.isnan(v[0][b[0] == 1]).any()
        assert ((0 <= b) & (b < B)).all()      # beam indices are local to the group


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_non_contiguous_and_converted_inputs(backend):
    big = (rng_for("nc").standard_normal((6, 8, 90)) * 3).astype(np.float32)
    lp = big[::2, 1::2, ::3]                         # (3, 4, 30), strided everywhere
    s = -np.arange(12, dtype=np.float64).reshape(4, 3).T      # (3, 4), Fortran order
    a, c = lp.copy(), s.copy()
    got = beam_topk(lp, s, 9, backend=backend)
    want = beam_topk(np.ascontiguousarray(lp), np.ascontiguousarray(s, np.float32), 9,
                     backend=backend)
    assert _same(got, want)
    assert bitwise_equal(lp, a) and bitwise_equal(s, c)             # inputs unchanged
    assert _same(beam_topk(lp.tolist(), s.tolist(), 9, backend=backend),
                 beam_topk(np.asarray(lp.tolist()), s, 9, backend=backend))


def _misaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf[1:].data, dtype=a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_inputs_are_packed(dtype, backend):
    # the op refuses misaligned arrays; the public function must hand it aligned copies
    lp, s = _inputs(2, 3, 50, dtype, seed=3)
    want = beam_topk(lp, s, 5, backend=backend)
    assert _same(beam_topk(_misaligned(lp), _misaligned(s), 5, backend=backend), want)
    assert _same(beam_topk(_misaligned(lp[1]), _misaligned(s[1]), 5, backend=backend),
                 [r[1] for r in want])


def test_no_groups():
    v, b, t = beam_topk(np.zeros((0, 2, 3), np.float16), np.zeros((0, 2)), 4)
    assert v.shape == b.shape == t.shape == (0, 4)
    assert v.dtype == np.float32 and b.dtype == t.dtype == np.int64


# ------------------------------------------------------------------ hypothesis

@st.composite
def _cases(draw):
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    G = draw(st.integers(1, 5))
    B = draw(st.integers(1, 5))
    N = draw(st.sampled_from([1, 2, 3, 9, 33, 257, 20_000]))
    k = draw(st.integers(1, min(B * N, 64)))
    kind = draw(st.sampled_from(["ints", "normal", "special"]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "ints":
        lp = rng.integers(-3, 4, size=(G, B, N)).astype(dtype)
    else:
        lp = (rng.standard_normal((G, B, N)) * 5).astype(dtype)
    s = (rng.standard_normal((G, B)) * 3).astype(_sdtype(dtype))
    if kind == "special":
        pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
        m = rng.random(lp.shape) < 0.1
        lp[m] = rng.choice(pool, size=int(m.sum()))
        lp[rng.random((G, B)) < 0.2] = -np.inf          # whole dead rows
        s[rng.random((G, B)) < 0.2] = -np.inf
    if draw(st.booleans()):                               # a strided view of the same values
        wide = np.zeros((G, B, 2 * N), dtype)
        wide[:, :, ::2] = lp
        lp = wide[:, :, ::2]
    return lp, s, k, draw(st.sampled_from([1, 2, 3])), draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(_cases())
def test_hypothesis_batched(case):
    lp, s, k, nt, normalize = case
    with fixed_teams(), threads(nt):
        got = _assert_groups(lp, s, k, normalize, "cython")
    with threads(1):
        assert _same(got, beam_topk(lp, s, k, normalize=normalize, backend="cython"))
    _assert_groups(lp, s, k, normalize, "numpy")
    _assert_matches_reference(lp, s, k, normalize, got)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_shapes_name_the_argument(backend):
    lp = np.zeros((2, 3, 4), np.float32)
    s = np.zeros((2, 3), np.float32)
    cases = [
        ("log_probs must be 2-D .* or 3-D", lambda: beam_topk(np.zeros(4), np.zeros(1), 1)),
        ("log_probs must be 2-D .* or 3-D", lambda: beam_topk(lp[None], s, 1)),
        (r"beam_scores must have shape \(2, 3\) .*3-D log_probs.*got \(3,\)",
         lambda: beam_topk(lp, np.zeros(3), 1)),
        (r"beam_scores must have shape \(2, 3\).*got \(2, 4\)",
         lambda: beam_topk(lp, np.zeros((2, 4)), 1)),
        (r"beam_scores must have shape \(3,\).*got \(2, 3\)",
         lambda: beam_topk(lp[0], s, 1)),
        (r"k must be <= .* B\*N = 12, got k=13", lambda: beam_topk(lp, s, 13)),
        ("beam_scores must be finite", lambda: beam_topk(lp, np.full((2, 3), np.nan), 1)),
        (r"k must be <= .* B\*N = 0", lambda: beam_topk(np.zeros((2, 0, 4)), np.zeros((2, 0)),
                                                        1)),
    ]
    for match, call in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_bad_shapes_raw_op_and_kernel():
    lp = np.zeros((2, 3, 4), np.float32)
    s = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"log_probs must be 3-D"):
        cy.beam_topk(lp[0], s[0], 1, True)
    with pytest.raises(ValueError, match=r"beam_scores must have shape \(2, 3\)"):
        cy.beam_topk(lp, np.zeros((3, 2), np.float32), 1, True)
    with pytest.raises(ValueError, match=r"k must be in \[1, B\*N=12\]"):
        cy.beam_topk(lp, s, 13, True)
    # the compiled kernel checks the sizes itself too
    for call in (lambda: _decode.beam_topk(lp, np.zeros((2, 2), np.float32), 2, True, 1),
                 lambda: _decode.beam_topk(lp, s, 13, True, 1),
                 lambda: _decode.beam_topk(lp[:0], s[:0], 1, True, 1),
                 lambda: _decode.beam_topk_f16(lp.astype(np.float16).view(np.uint16),
                                               np.zeros((1, 3), np.float32), 1, True, 1)):
        with pytest.raises(ValueError, match="beam_topk kernel"):
            call()
