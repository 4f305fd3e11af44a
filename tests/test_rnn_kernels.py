"""The Cython BiRNN kernels (birnn_fwd, birnn_bwd): against the NumPy backend and a
float64 reference, padded batches against sequences run alone, SIMD twins and thread
counts bitwise equal, inputs unchanged, and the GEMM multiply-adds against
fastdl.complexity."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastdl import complexity, ops
from fastdl._backends.numpy import rnn as ref
from fastdl.testing import fixed_teams, simd, simd_levels, threads

_rnn = pytest.importorskip("fastdl._backends.cython._rnn")
from fastdl._backends.cython import _cpu  # noqa: E402

NAMES = ("y", "h_f", "h_b", "dW_f", "dU_f", "dV_f", "db_f", "dW_b", "dU_b", "dV_b", "db_b",
         "dc", "dh0_f", "dh0_b", "dx")


def model(seed, T, B, I, H, O, dtype, *, bias=True, h0=True, lengths=True):
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(dtype)

    x = rng.standard_normal((T, B, I)).astype(dtype)
    w = (u(H, I), u(H, H), u(O, H), u(H, I), u(H, H), u(O, H))
    b = (u(H), u(H), u(O)) if bias else (None, None, None)
    h = (u(B, H), u(B, H)) if h0 else (None, None)
    L = rng.integers(1, T + 1, B).astype(np.int64) if lengths else None
    dy = rng.standard_normal((T, B, O)).astype(dtype)
    return x, w, b, h, L, dy


def run(mod, x, w, b, h, L, dy, need_dx, nthreads=None):
    """Forward, then backward from the module's own hidden states: the 15 results."""
    extra = () if nthreads is None else (nthreads,)
    y, h_f, h_b = mod.birnn_fwd(x, *w, *b, *h, L, *extra)
    g = mod.birnn_bwd(dy, x, h_f, h_b, *w, *h, L, need_dx, *extra)
    return (y, h_f, h_b) + tuple(g)


def _as64(t):
    return tuple(None if a is None else a.astype(np.float64) for a in t)


def check_against_references(x, w, b, h, L, dy, need_dx):
    """Cython against the NumPy backend in the same dtype, and, for float32, no further
    from a float64 evaluation than the NumPy backend is (sums like db cancel, so the
    float32 references themselves differ by more than an ulp there)."""
    got = run(_rnn, x, w, b, h, L, dy, need_dx, 2)
    want = run(ref, x, w, b, h, L, dy, need_dx)
    if x.dtype == np.float64:
        for n, g, r in zip(NAMES, got, want):
            if r is None:
                assert g is None, n
                continue
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12 * max(1, np.abs(r).max()),
                                       err_msg=n)
        return
    exact = _exact(x, w, b, h, L, dy, need_dx)
    for n, g, r, e in zip(NAMES, got, want, exact):
        if r is None:
            assert g is None, n
            continue
        scale = np.abs(e).max() + 1e-30
        err_cy, err_np = np.abs(g - e).max() / scale, np.abs(r - e).max() / scale
        assert err_cy <= 4 * err_np + 2e-6, (n, err_cy, err_np)
        # the two float32 results may each be off the exact value by the reference's own
        # error (a sum that cancels, e.g. db with one hidden unit: both ~5e-4 relative)
        np.testing.assert_allclose(g, r, rtol=1e-5,
                                   atol=2e-4 * scale + 5 * np.abs(r - e).max(), err_msg=n)


def _exact(x, w, b, h, L, dy, need_dx):
    x64, w64, b64, h64 = _as64((x,)), _as64(w), _as64(b), _as64(h)
    y, h_f, h_b = ref.birnn_fwd(*x64, *w64, *b64, *h64, L)
    g = ref.birnn_bwd(dy.astype(np.float64), *x64, h_f, h_b, *w64, *h64, L, need_dx)
    return (y, h_f, h_b) + tuple(g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias,h0", [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("need_dx", [False, True])
def test_matches_references(dtype, bias, h0, lengths, need_dx):
    case = model(0, 9, 6, 5, 7, 4, dtype, bias=bias, h0=h0, lengths=lengths)
    check_against_references(*case, need_dx)


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 6), B=st.integers(1, 5), I=st.integers(1, 6), H=st.integers(1, 9),
       O=st.integers(1, 5), dtype=st.sampled_from([np.float32, np.float64]),
       bias=st.booleans(), h0=st.booleans(), lengths=st.booleans(), need_dx=st.booleans(),
       seed=st.integers(0, 2 ** 32 - 1))
def test_small_random_shapes(T, B, I, H, O, dtype, bias, h0, lengths, need_dx, seed):
    case = model(seed, T, B, I, H, O, dtype, bias=bias, h0=h0, lengths=lengths)
    check_against_references(*case, need_dx)


def test_larger_float32_shape_with_lengths():
    check_against_references(*model(3, 40, 24, 48, 64, 32, np.float32), True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padded_batch_equals_each_sequence_alone(dtype):
    """The backward direction of a padded sequence starts at its own last step, outputs
    past a length are 0, dy there is ignored: as if each sequence ran alone."""
    T, B, I, H, O = 7, 5, 4, 6, 3
    x, w, b, h, _, dy = model(4, T, B, I, H, O, dtype)
    L = np.array([3, 7, 1, 7, 5], np.int64)
    dy_noisy = dy.copy()
    for i, n in enumerate(L):
        dy_noisy[n:, i] = 1e6            # must be ignored
    got = run(_rnn, x, w, b, h, L, dy_noisy, True, 2)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    sums = [np.zeros_like(a) for a in got[3:12]]
    for i, n in enumerate(L):
        one = run(_rnn, np.ascontiguousarray(x[:n, i:i + 1]), w, b,
                  tuple(np.ascontiguousarray(a[i:i + 1]) for a in h), None,
                  np.ascontiguousarray(dy[:n, i:i + 1]), True, 2)
        for k in (0, 1, 2, 14):
            np.testing.assert_allclose(got[k][:n, i], one[k][:, 0], **tol, err_msg=NAMES[k])
            assert not got[k][n:, i].any(), NAMES[k]
        for k in (12, 13):
            np.testing.assert_allclose(got[k][i], one[k][0], **tol, err_msg=NAMES[k])
        for s, a in zip(sums, one[3:12]):
            s += a
    for k, s in zip(range(3, 12), sums):
        np.testing.assert_allclose(got[k], s, **tol, err_msg=NAMES[k])


def test_full_lengths_equal_no_lengths_bitwise():
    x, w, b, h, _, dy = model(5, 6, 4, 3, 5, 2, np.float32)
    full = np.full(4, 6, np.int64)
    for a, c in zip(run(_rnn, x, w, b, h, full, dy, True, 2),
                    run(_rnn, x, w, b, h, None, dy, True, 2)):
        assert np.array_equal(a, c)


def _bitwise(a, b):
    return all((p is None and q is None) or (p.shape == q.shape and np.array_equal(
        p.view(np.uint8), q.view(np.uint8))) for p, q in zip(a, b))


@pytest.fixture
def parallel_small():
    """Regions of any size get their threads (the grain would keep these on one)."""
    with fixed_teams():
        yield


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths", [False, True])
def test_threads_bitwise_equal(parallel_small, simd_level, dtype, lengths):
    case = model(6, 11, 7, 9, 33, 5, dtype, lengths=lengths)
    want = run(_rnn, *case, True, 1)
    for nt in (2, 3):
        assert _bitwise(run(_rnn, *case, True, nt), want), nt
    with threads(2):                           # through the op table
        got = run(_Dispatch, *case, True)
    assert _bitwise(got, want)


class _Dispatch:
    """The ops as fastdl dispatches them to the cython backend."""
    @staticmethod
    def birnn_fwd(*args):
        return ops.birnn_fwd(*args, backend="cython")

    @staticmethod
    def birnn_bwd(*args):
        return ops.birnn_bwd(*args, backend="cython")


@pytest.mark.parametrize("level", simd_levels(scalar=False))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simd_twins_bitwise_equal(parallel_small, level, dtype):
    case = model(7, 8, 5, 17, 35, 9, dtype)
    with simd("scalar"):
        want = run(_rnn, *case, True, 2)
    with simd(level):
        assert _bitwise(run(_rnn, *case, True, 2), want)
        assert _bitwise(run(_rnn, *case, True, 1), want)


def test_inputs_unchanged_and_blas_threads_restored():
    x, w, b, h, L, dy = model(8, 5, 4, 3, 6, 2, np.float32)
    arrays = (x, dy, L) + w + b + h
    before = [a.copy() for a in arrays]
    old = _cpu.blas_threads(3)
    try:
        y, h_f, h_b = _rnn.birnn_fwd(x, *w, *b, *h, L, 2)
        hs = (h_f.copy(), h_b.copy())
        _rnn.birnn_bwd(dy, x, h_f, h_b, *w, *h, L, True, 2)
        assert _cpu.blas_threads(3) == 3          # the calling thread's count is back
    finally:
        _cpu.blas_threads(old if old else 0)
    for a, c in zip(arrays, before):
        assert np.array_equal(a, c)
    assert np.array_equal(h_f, hs[0]) and np.array_equal(h_b, hs[1])


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (5, 3, 4, 6, 2), (9, 7, 3, 8, 5),
                                   (16, 1, 8, 16, 4), (4, 12, 2, 3, 9)])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("need_dx", [False, True])
def test_gemm_macs_equal_the_complexity_formulas(shape, lengths, need_dx):
    T, B, I, H, O = shape
    x, w, b, h, L, dy = model(9, *shape, np.float32, lengths=lengths)
    y, h_f, h_b = _rnn.birnn_fwd(x, *w, *b, *h, L, 2)
    _rnn.birnn_bwd(dy, x, h_f, h_b, *w, *h, L, need_dx, 2)
    macs = _rnn.last_macs()
    assert macs["birnn_fwd"] == complexity.birnn_forward_macs(T, B, I, H, O, lengths=L)
    assert macs["birnn_bwd"] == complexity.birnn_backward_macs(T, B, I, H, O, lengths=L,
                                                               need_dx=need_dx)
    if lengths and L.sum() < T * B:              # padding is not computed
        assert macs["birnn_fwd"] < complexity.birnn_forward_macs(T, B, I, H, O)


def test_bad_direct_arguments_raise():
    x, w, b, h, L, dy = model(10, 4, 3, 2, 5, 2, np.float32)
    with pytest.raises(ValueError, match="U_f must be"):
        _rnn.birnn_fwd(x, w[0], w[1][:4], *w[2:], *b, *h, L, 1)
    with pytest.raises(ValueError, match="W_b must be"):
        _rnn.birnn_fwd(x, *w[:3], w[3].astype(np.float64), *w[4:], *b, *h, L, 1)
    with pytest.raises(ValueError, match=r"lengths must be in \[1, T=4\]"):
        _rnn.birnn_fwd(x, *w, *b, *h, np.array([1, 5, 2], np.int64), 1)
    with pytest.raises(ValueError, match="lengths must be an int64"):
        hs = np.zeros((4, 3, 5), np.float32)
        _rnn.birnn_bwd(dy, x, hs, hs, *w, *h, np.array([1, 2], np.int64), False, 1)
    with pytest.raises(TypeError, match="x must be"):
        _rnn.birnn_fwd(x.astype(np.float16), *w, *b, *h, L, 1)


@pytest.mark.parametrize("mode", ["process-wide", "none"])
def test_other_blas_thread_controls(monkeypatch, parallel_small, mode):
    """With only a process-wide BLAS setter the regions set it to 1 around them (the same
    single-threaded calls: bitwise equal); with none the directions run one after the
    other on the BLAS's own threads (agreement to rounding)."""
    case = model(11, 6, 5, 7, 9, 4, np.float64)
    want = run(_rnn, *case, True, 2)
    _rnn._blas_mode()
    monkeypatch.setattr(_rnn, "_BLAS", (0, True) if mode == "process-wide" else (0, False))
    got = run(_rnn, *case, True, 2)
    if mode == "process-wide":
        assert _bitwise(got, want)
    else:
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("H,O", [(0, 3), (3, 0), (0, 0)])
@pytest.mark.parametrize("lengths", [None, np.array([3, 1], np.int64)])
def test_empty_hidden_or_output(H, O, lengths):
    """H = 0 makes every product over the hidden units an empty sum: y = c, dx = 0."""
    T, B, I = 3, 2, 4
    x = np.ones((T, B, I), np.float32)
    W, U, V = (np.ones(s, np.float32) for s in ((H, I), (H, H), (O, H)))
    c = np.full(O, 0.5, np.float32)
    for garbage in range(2):        # the results do not depend on what np.empty returns
        got = _rnn.birnn_fwd(x, W, U, V, W, U, V, None, None, c, None, None, lengths, 2)
        want = ref.birnn_fwd(x, W, U, V, W, U, V, None, None, c, None, None, lengths)
        for g, r in zip(got, want):
            assert np.array_equal(g, r)
        dy = np.ones((T, B, O), np.float32)
        got = _rnn.birnn_bwd(dy, x, want[1], want[2], W, U, V, W, U, V, None, None, lengths,
                             True, 2)
        for g, r in zip(got, ref.birnn_bwd(dy, x, want[1], want[2], W, U, V, W, U, V, None,
                                           None, lengths, True)):
            assert np.array_equal(g, r)
        np.empty((T, B, max(I, O)), np.float32).fill(np.nan)
