"""The Cython LoRA and attention kernels (lora_fwd, lora_bwd, attention_fwd,
attention_bwd): against the NumPy backend in float64 and a float64 evaluation of the
float32 inputs within rounding-error bounds, the softmax rows within a few ulp, causal
and masked entries exactly 0, non-finite rows as the plain formula, thread counts and
SIMD twins bitwise equal, empty dimensions, inputs unchanged and bad input rejected."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastdl import ops
from fastdl._backends.numpy import lora as ref
from fastdl.testing import fixed_teams, simd, simd_levels, threads

_lora = pytest.importorskip("fastdl._backends.cython._lora")
from fastdl._backends.cython import _cpu  # noqa: E402

EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}


def lora_case(seed, N, I, O, R, dtype, *, w=True, bias=True, p=0.25, scale=2.0):
    rng = np.random.default_rng(seed)

    def u(*shape):
        return rng.uniform(-1, 1, shape).astype(dtype)

    x, a, b = u(N, I), u(I, R), u(O, R)
    mask = ((rng.random((N, I)) >= p) / (1 - p)).astype(dtype) if p else None
    return x, (u(I, O) if w else None), a, b, (u(O) if bias else None), mask, scale, u(N, O)


def att_case(seed, G, N, M, D, E, dtype, causal=False):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in ((G, N, D), (G, M, D), (G, M, E)))
    return q, k, v, float(1 / np.sqrt(D)), causal, rng.standard_normal((G, N, E)).astype(dtype)


def run_lora(mod, case, need_dx=True, *nt):
    x, w, a, b, bias, mask, scale, dy = case
    y, xa = mod.lora_fwd(x, w, a, b, bias, mask, scale, *nt)
    return (y, xa) + tuple(mod.lora_bwd(dy, x, xa, w, a, b, mask, scale, need_dx, *nt))


def run_att(mod, case, *nt):
    q, k, v, scale, causal, do = case
    o, p = mod.attention_fwd(q, k, v, scale, causal, *nt)
    return (o, p) + tuple(mod.attention_bwd(do, q, k, v, p, scale, *nt))


def lora_bounds(case, need_dx=True):
    """Rounding-error bounds of the 5 results, (terms + 4) eps times the sums of |terms|
    (a bound on any summation order), and the float64 values."""
    x, w, a, b, bias, mask, s, dy = case
    f = (lambda t: None if t is None else t.astype(np.float64))
    x, w, a, b, bias, mask, dy = map(f, (x, w, a, b, bias, mask, dy))
    xd = x if mask is None else x * mask
    ab = np.abs
    want = ref.lora_fwd(x, w, a, b, bias, mask, s) + ref.lora_bwd(dy, x, xd @ a, w, a, b,
                                                                   mask, s, need_dx)
    N, I = x.shape
    O, R = b.shape
    ya = abs(s) * (ab(xd) @ ab(a)) @ ab(b).T + (0 if w is None else ab(x) @ ab(w)) + \
        (0 if bias is None else ab(bias))
    g = abs(s) * ab(dy) @ ab(b)
    dxa = (g @ ab(a).T) * (1 if mask is None else mask) + (0 if w is None else ab(dy) @ ab(w).T)
    scales = (ya, ab(xd) @ ab(a), ab(xd).T @ g, abs(s) * ab(dy).T @ (ab(xd) @ ab(a)), dxa)
    terms = (I + R + O, I, N + O, N + I, R + O)
    return want, [None if t is None else (k + 4) * t for t, k in zip(scales, terms)]


def check_lora(case, need_dx=True):
    dtype = case[0].dtype.type
    got = run_lora(_lora, case, need_dx, 2)
    want, bounds = lora_bounds(case, need_dx)
    for i, (gv, wv, bd) in enumerate(zip(got, want, bounds)):
        if wv is None:
            assert gv is None, i
            continue
        assert gv.dtype == dtype and gv.shape == wv.shape, i
        assert np.all(np.abs(gv - wv) <= EPS[dtype] * bd + 1e-300), i
    if dtype == np.float64:     # the NumPy backend on the same inputs
        for gv, nv in zip(got, run_lora(ref, case, need_dx)):
            assert (gv is None) == (nv is None)
            if gv is not None:
                np.testing.assert_allclose(gv, nv, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 40), st.integers(0, 9),
       st.sampled_from([np.float32, np.float64]), st.booleans(), st.booleans(),
       st.sampled_from([0.0, 0.1, 0.5]), st.booleans(), st.integers(0, 2 ** 31))
def test_lora_against_references(N, I, O, R, dtype, w, bias, p, need_dx, seed):
    check_lora(lora_case(seed, N, I, O, R, dtype, w=w, bias=bias, p=p, scale=0.75), need_dx)


def test_lora_many_mask_blocks():
    """Rows past one block of x * mask (the block holds 512 KiB of rows)."""
    check_lora(lora_case(1, 200, 1100, 30, 4, np.float32))
    check_lora(lora_case(2, 70, 2100, 9, 3, np.float64))


def test_lora_need_dx_false_and_no_base():
    case = lora_case(3, 9, 12, 7, 3, np.float32, w=False, bias=False, p=0.0)
    da, db, dx = _lora.lora_bwd(case[7], case[0], case[0] @ case[2], None, case[2], case[3],
                                None, 2.0, False, 2)
    assert dx is None and da.shape == (12, 3) and db.shape == (7, 3)
    check_lora(case, need_dx=True)


def att_close(got, case):
    """float32: no further from a float64 evaluation than the NumPy backend's float32 is,
    plus 8 ulp of each array's scale; float64: the NumPy backend to 1e-12."""
    dtype = case[0].dtype.type
    f64 = tuple(t.astype(np.float64) if isinstance(t, np.ndarray) else t for t in case)
    want = run_att(ref, f64)
    npy = run_att(ref, case)
    for i, (gv, wv, nv) in enumerate(zip(got, want, npy)):
        assert gv.dtype == dtype and gv.shape == wv.shape, i
        if not wv.size:
            continue
        if dtype == np.float64:
            np.testing.assert_allclose(gv, nv, rtol=1e-12, atol=1e-12 * np.abs(wv).max(),
                                       err_msg=str(i))
        else:
            lim = 2 * np.abs(nv - wv).max() + 8 * EPS[dtype] * np.abs(wv).max()
            assert np.abs(gv - wv).max() <= lim, i


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40), st.integers(1, 24),
       st.integers(0, 24), st.sampled_from([np.float32, np.float64]), st.booleans(),
       st.integers(0, 2 ** 31))
def test_attention_against_references(G, N, M, D, E, dtype, causal, seed):
    if causal:
        M = N
    case = att_case(seed, G, N, M, D, E, dtype, causal)
    got = run_att(_lora, case, 2)
    att_close(got, case)
    p = got[1]
    assert np.allclose(p.sum(axis=2), 1, rtol=0, atol=4 * N * EPS[dtype] + 1e-6)
    if causal:                               # above the diagonal exactly 0
        assert np.all(p[:, np.triu(np.ones((N, N), bool), 1)] == 0)


def test_attention_causal_row_blocks():
    """More queries than one causal block (64): blocks that see keys up to their last row."""
    case = att_case(4, 2, 150, 150, 8, 5, np.float32, causal=True)
    got = run_att(_lora, case, 2)
    att_close(got, case)
    assert np.all(got[1][:, np.triu(np.ones((150, 150), bool), 1)] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M", [1, 15, 16, 17, 100, 1000])
def test_softmax_rows_within_a_few_ulp(dtype, M, simd_level):
    """Exactly representable scores (k = e_0, scale a power of 2, so S = q[:, :, 0] / 2):
    p within 4 ulp (float32; measured at most 2) or 6 ulp (float64; measured 4) of the
    exact softmax of the same scores, at every SIMD level; values below the exp's range
    (float32: exp(-86) of the row's max) come out 0, an error under 4 tiny."""
    rng = np.random.default_rng(M)
    G, N = 2, 3
    q = np.round(rng.uniform(-300, 300, (G, N, 1)) * 4) / 4
    q = np.concatenate([q.repeat(1, 2), np.zeros((G, N, 1))], 2).astype(dtype)
    k = np.zeros((G, M, 2), dtype)
    k[:, :, 0] = np.round(rng.uniform(-1, 1, (G, M)) * 64) / 64
    _, p = _lora.attention_fwd(q, k, np.zeros((G, M, 0), dtype), 0.5, False, 1)
    s = 0.5 * np.einsum("gnd,gmd->gnm", q.astype(np.float64), k.astype(np.float64))
    e = np.exp(s - s.max(axis=2, keepdims=True))
    want = e / e.sum(axis=2, keepdims=True)
    tiny = np.finfo(dtype).tiny
    n_ulp = 4 if dtype == np.float32 else 6
    assert np.all(np.abs(p - want) <= n_ulp * np.spacing(want.astype(dtype)) + 4 * tiny)


def test_non_finite_rows_as_the_formula():
    """A NaN or +inf score makes its row NaN, as the plain formula does; -inf scores
    give 0; other rows are untouched."""
    q = np.ones((1, 4, 1), np.float32)
    k = np.ones((1, 20, 1), np.float32)
    q[0, 1, 0] = np.nan
    q[0, 2, 0] = np.inf
    k[0, 3, 0] = -np.inf
    _, p = _lora.attention_fwd(q, k, np.ones((1, 20, 2), np.float32), 1.0, False, 1)
    with np.errstate(invalid="ignore"):
        _, pr = ref.attention_fwd(q, k, np.ones((1, 20, 2), np.float32), 1.0, False)
    np.testing.assert_array_equal(np.isnan(p), np.isnan(pr))
    assert np.isnan(p[0, 1]).all() and np.isnan(p[0, 2]).all()
    assert p[0, 0, 3] == 0 and p[0, 3, 3] == 0
    np.testing.assert_allclose(p[0, [0, 3]], pr[0, [0, 3]], rtol=1e-6)
    k[0, 7, 0] = -np.abs(np.float32(np.nan))          # a NaN with the sign bit set
    k[0, 3, 0] = 1
    for level in simd_levels():
        with simd(level):
            _, p = _lora.attention_fwd(q[:, [0, 3]], k, np.ones((1, 20, 2), np.float32), 1.0,
                                       False, 1)
        assert np.isnan(p).all(), level


def test_empty_inner_dimensions():
    """R = 0 (y = x w + bias), O = 0 and E = 0 give the formula's values (empty sums 0)."""
    for O, R in ((5, 0), (0, 3)):
        check_lora(lora_case(5, 4, 6, O, R, np.float32))
    case = att_case(6, 2, 5, 7, 3, 0, np.float64)
    got = run_att(_lora, case, 2)
    assert got[0].shape == (2, 5, 0) and got[4].shape == (2, 7, 0)
    assert not got[2].any() and not got[3].any()       # dp = do vᵀ = 0: no gradient
    att_close(got, case)


def _bitwise(a, b):
    return all((p is None and q is None) or (p.shape == q.shape and np.array_equal(
        p.view(np.uint8), q.view(np.uint8))) for p, q in zip(a, b))


@pytest.fixture
def parallel_small():
    """Regions of any size get their threads (the grain would keep these on one), the
    softmax rows too (one thread by default)."""
    old = _lora.set_params(row_threads=0)
    with fixed_teams():
        yield
    _lora.set_params(**old)


class _Dispatch:
    """The ops as fastdl dispatches them to the cython backend."""
    @staticmethod
    def lora_fwd(*args):
        return ops.lora_fwd(*args, backend="cython")

    @staticmethod
    def lora_bwd(*args):
        return ops.lora_bwd(*args, backend="cython")

    @staticmethod
    def attention_fwd(*args):
        return ops.attention_fwd(*args, backend="cython")

    @staticmethod
    def attention_bwd(*args):
        return ops.attention_bwd(*args, backend="cython")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
def test_threads_bitwise_equal(parallel_small, simd_level, dtype, causal):
    lc = lora_case(7, 37, 300, 45, 5, dtype)
    ac = att_case(8, 5, 70, 70 if causal else 33, 20, 11, dtype, causal)
    want = run_lora(_lora, lc, True, 1), run_att(_lora, ac, 1)
    for nt in (2, 3):
        assert _bitwise(run_lora(_lora, lc, True, nt), want[0]), nt
        assert _bitwise(run_att(_lora, ac, nt), want[1]), nt
    with threads(2):                           # through the op table
        assert _bitwise(run_lora(_Dispatch, lc), want[0])
        assert _bitwise(run_att(_Dispatch, ac), want[1])


@pytest.mark.parametrize("level", simd_levels(scalar=False))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simd_twins_bitwise_equal(parallel_small, level, dtype):
    """Every row length mod 16 (the lanes), causal rows, masks."""
    cases = [att_case(9, 3, n, n, 6, 4, dtype, c) for n in (1, 5, 16, 31, 47) for c in (0, 1)]
    lc = lora_case(10, 33, 70, 19, 4, dtype)
    with simd("scalar"):
        want = [run_att(_lora, c, 2) for c in cases], run_lora(_lora, lc, True, 2)
    with simd(level):
        for c, wv in zip(cases, want[0]):
            assert _bitwise(run_att(_lora, c, 2), wv)
        assert _bitwise(run_lora(_lora, lc, True, 2), want[1])


def test_inputs_unchanged_and_blas_threads_restored():
    lc = lora_case(11, 6, 9, 5, 2, np.float32)
    ac = att_case(12, 2, 6, 6, 4, 3, np.float32, True)
    arrays = [t for t in lc + ac if isinstance(t, np.ndarray)]
    before = [t.copy() for t in arrays]
    old = _cpu.blas_threads(3)
    try:
        run_lora(_lora, lc, True, 2)
        run_att(_lora, ac, 2)
        assert _cpu.blas_threads(3) in (0, 3)      # the calling thread's count is back
    finally:
        _cpu.blas_threads(old if old else 0)
    for t, c in zip(arrays, before):
        assert np.array_equal(t, c)


def test_set_params_checks_and_restores():
    with pytest.raises(ValueError, match="unknown parameter 'rows'"):
        _lora.set_params(rows=1)
    with pytest.raises(ValueError, match="row_threads must be an int >= 0, got -1"):
        _lora.set_params(row_threads=-1)
    old = _lora.set_params(row_threads=3)
    assert _lora.set_params(**old) == {"row_threads": 3}


def test_bad_input_is_a_clear_error():
    x, w, a, b, bias, mask, s, dy = lora_case(13, 4, 6, 5, 2, np.float32)
    with pytest.raises(ValueError, match=r"w must have shape \(6, 5\)"):
        _lora.lora_fwd(x, w.T.copy(), a, b, bias, mask, s, 1)
    with pytest.raises(TypeError, match="mask must be a float32"):
        _lora.lora_fwd(x, w, a, b, bias, mask.astype(np.float64), s, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _lora.lora_fwd(np.asfortranarray(x), w, a, b, bias, mask, s, 1)
    with pytest.raises(ValueError, match="x must be a non-empty 2-D"):
        _lora.lora_fwd(x[:0], w, a, b, bias, None, s, 1)
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 5\)"):
        _lora.lora_bwd(dy[:, :3], x, x @ a, w, a, b, mask, s, True, 1)
    with pytest.raises(ValueError, match=r"b must have shape"):
        _lora.lora_fwd(x, w, a, b[:, :1], bias, mask, s, 1)
    q, k, v, sc, _, do = att_case(14, 2, 3, 4, 5, 6, np.float32)
    with pytest.raises(ValueError, match="causal attention needs as many keys"):
        _lora.attention_fwd(q, k, v, sc, True, 1)
    with pytest.raises(ValueError, match=r"k must have shape \(2, 4, 5\)"):
        _lora.attention_fwd(q, k[:, :, :4], v, sc, False, 1)
    with pytest.raises(ValueError, match=r"p must have shape \(2, 3, 4\)"):
        _lora.attention_bwd(do, q, k, v, np.zeros((2, 3, 3), np.float32), sc, 1)
    with pytest.raises(ValueError, match="scale must be finite"):   # the op's own check
        ops.attention_fwd(q, k, v, float("nan"), False, backend="cython")
