"""fastdl.decode kernels against PyTorch: topk, log_softmax and the fused beam step.

``beam_topk(x, s, k)`` must equal ``torch.topk((torch.log_softmax(x, -1) + s[:, None])
.view(-1), k)`` with beam = flat // N, token = flat % N (``normalize=False``: without the
log-softmax).  Run on the NumPy backend and, where it is built and provides the op, on
the Cython backend; float32 and float64.
"""

import numpy as np
import pytest

import fastdl
from fastdl.decode import beam_topk, log_softmax, topk
from fastdl.testing import rng_for

torch = pytest.importorskip("torch")

TOL = {np.dtype(np.float32): dict(rtol=2e-6, atol=2e-6),
       np.dtype(np.float64): dict(rtol=1e-13, atol=1e-13)}
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def _backends(op):
    info = fastdl.backends()
    cy = info.get("cython")
    has = cy is not None and op in cy.ops
    return ["numpy", pytest.param("cython", marks=pytest.mark.skipif(
        not has, reason=f"cython backend does not provide {op}"))]


def _data(shape, dtype, *key, special=False):
    rng = rng_for(shape, np.dtype(dtype).name, *key)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    if special and x.size:
        flat = x.reshape(-1)
        flat[rng.random(flat.size) < 0.1] = -np.inf
    return x


def _t(a):
    return torch.from_numpy(np.array(a, copy=True))


def _determined(vals, k, dtype):
    """How many leading positions of the top-k of ``vals`` have a determined index: the
    finite ones among the k best, when they and the next value are all apart by more than
    rounding (else 0)."""
    v = np.sort(np.asarray(vals, np.float64).ravel())[::-1]
    m = int(np.isfinite(v[:k]).sum())
    head = v[:min(m + 1, v.size)]
    gap = 1e-4 if np.dtype(dtype) == np.float32 else 1e-10
    diffs = -np.diff(head)
    return m if (diffs > gap).all() else 0


def _lsm_tol(x, dtype):
    """Rounding of x - logsumexp(x): a few ulp of the row's magnitude (PyTorch's float32
    log-sum-exp is itself off by a few ulp)."""
    fin = np.abs(x[np.isfinite(x)])
    scale = max(float(fin.max()) if fin.size else 1.0, 1.0)
    return dict(rtol=0, atol=64 * np.finfo(dtype).eps * scale)


SHAPES_K = [((1,), 1), ((7,), 3), ((1, 1), 1), ((3, 7), 7), ((5, 100), 10), ((2, 1000), 37),
            ((4, 3, 50), 5), ((8, 64), 1), ((2, 5000), 200)]


@pytest.mark.parametrize("backend", _backends("topk"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, k", SHAPES_K)
def test_topk_matches_torch(backend, dtype, shape, k):
    x = _data(shape, dtype, "topk")
    x0 = x.copy()
    v, i = topk(x, k, backend=backend)
    tv, ti = torch.topk(_t(x), k, dim=-1, largest=True, sorted=True)
    assert v.dtype == dtype and i.dtype == np.int64 and v.shape == tuple(tv.shape)
    np.testing.assert_array_equal(v, tv.numpy())          # selection: exact values
    rows_x = x.reshape(-1, shape[-1])
    for r, (vi, ti_) in enumerate(zip(i.reshape(-1, k), ti.numpy().reshape(-1, k))):
        if len(np.unique(rows_x[r])) == rows_x.shape[1]:  # no ties: indices are determined
            np.testing.assert_array_equal(vi, ti_)
        np.testing.assert_array_equal(rows_x[r][vi], v.reshape(-1, k)[r])
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("backend", _backends("topk"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_axis0_and_ties_and_infs(backend, dtype):
    x = _data((40, 6), dtype, "axis0", special=True)
    v, i = topk(x, 4, axis=0, backend=backend)
    tv, ti = torch.topk(_t(x), 4, dim=0)
    np.testing.assert_array_equal(v, tv.numpy())
    np.testing.assert_array_equal(np.take_along_axis(x, i, axis=0), v)
    # ties everywhere: values match torch, indices follow the lower-index rule
    q = np.round(_data((6, 50), dtype, "ties")).astype(dtype)
    v, i = topk(q, 20, backend=backend)
    tv, _ = torch.topk(_t(q), 20)
    np.testing.assert_array_equal(v, tv.numpy())
    for r in range(q.shape[0]):
        order = np.lexsort((np.arange(q.shape[1]), -q[r]))[:20]
        np.testing.assert_array_equal(i[r], order)


@pytest.mark.parametrize("backend", _backends("log_softmax"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (5,), (1, 1), (3, 7), (4, 1000), (2, 3, 33),
                                   (16, 50257)])
@pytest.mark.parametrize("special", [False, True], ids=["finite", "with_-inf"])
def test_log_softmax_matches_torch(backend, dtype, shape, special):
    x = _data(shape, dtype, "lsm", special=special)
    if special and x.ndim == 2 and x.shape[0] > 1:
        x[0] = -np.inf                                      # an all -inf row: NaN in both
    x0 = x.copy()
    got = log_softmax(x, backend=backend)
    want = torch.log_softmax(_t(x), dim=-1).numpy()
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    np.testing.assert_allclose(got, want, **_lsm_tol(x, dtype))
    # and no worse than one rounding of the float64 result
    exact = torch.log_softmax(_t(x.astype(np.float64)), dim=-1).numpy()
    fin = np.isfinite(exact)
    err = np.abs(got[fin].astype(np.float64) - exact[fin])
    off = x.astype(np.float64)[fin] - exact[fin]                  # the row's log-sum-exp
    assert (err <= 4 * np.finfo(dtype).eps * (np.abs(exact[fin]) + np.abs(off))).all()
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("backend", _backends("log_softmax"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_axis_and_out(backend, dtype):
    x = _data((30, 4, 5), dtype, "lsm-axis")
    for axis in (0, 1, -1):
        want = torch.log_softmax(_t(x), dim=axis).numpy()
        np.testing.assert_allclose(log_softmax(x, axis, backend=backend), want,
                                   **_lsm_tol(x, dtype))
        out = np.empty_like(x)
        res = log_softmax(x, axis, out=out, backend=backend)
        assert res is out
        np.testing.assert_allclose(out, want, **_lsm_tol(x, dtype))
    # large offsets: no overflow
    big = (x[0] + 1e4).astype(dtype) if dtype == np.float64 else (x[0] + 80).astype(dtype)
    np.testing.assert_allclose(log_softmax(big, backend=backend),
                               torch.log_softmax(_t(big), -1).numpy(),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


BEAM_CASES = [(1, 1, 1), (1, 7, 3), (3, 5, 15), (4, 100, 8), (8, 1000, 16), (2, 5000, 50),
              (16, 257, 32)]


@pytest.mark.parametrize("backend", _backends("beam_topk"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, N, k", BEAM_CASES)
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("special", [False, True], ids=["finite", "with_-inf"])
def test_beam_topk_matches_torch(backend, dtype, B, N, k, normalize, special):
    x = _data((B, N), dtype, "beam", special=special)
    if special:
        x[:, 0] = 0.0                                        # every row keeps a finite entry
    s = (-np.abs(_data((B,), np.float64, "beam-s")) * 4).astype(dtype)
    if special and B > 2:
        s[1] = -np.inf                                       # a dead beam
    x0, s0 = x.copy(), s.copy()
    scores, beam, tok = beam_topk(x, s, k, normalize=normalize, backend=backend)
    tx = torch.log_softmax(_t(x), -1) if normalize else _t(x)
    tv, flat = torch.topk((tx + _t(s)[:, None]).view(-1), k)
    assert scores.dtype == dtype and beam.dtype == tok.dtype == np.int64
    assert scores.shape == beam.shape == tok.shape == (k,)
    want = tv.numpy()
    np.testing.assert_array_equal(np.isneginf(scores), np.isneginf(want))
    fin = np.isfinite(want)
    tol = _lsm_tol(np.concatenate([x.ravel(), s]), dtype)
    np.testing.assert_allclose(scores[fin], want[fin], **tol)
    # each candidate's score is its own entry's score
    full = (tx + _t(s)[:, None]).numpy()
    np.testing.assert_allclose(scores[fin], full[beam[fin], tok[fin]], **tol)
    m = _determined(full, k, dtype)
    flat = flat.numpy()
    np.testing.assert_array_equal(beam[:m], flat[:m] // N)
    np.testing.assert_array_equal(tok[:m], flat[:m] % N)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(s, s0)


def test_indices_are_checked_somewhere():
    """The index comparison above must not be vacuous: most random cases are tie-free."""
    checked = 0
    for B, N, k in BEAM_CASES:
        for dtype in (np.float32, np.float64):
            x = _data((B, N), dtype, "beam", special=False)
            s = (-np.abs(_data((B,), np.float64, "beam-s")) * 4).astype(dtype)
            full = (torch.log_softmax(_t(x), -1) + _t(s)[:, None]).numpy()
            checked += _determined(full, k, dtype) == k
    assert checked >= len(BEAM_CASES)


@pytest.mark.parametrize("backend", _backends("beam_topk"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_beam_topk_all_candidates_and_dead_rows(backend, dtype):
    x = _data((3, 4), dtype, "all")
    x[2] = -np.inf                                           # a dead row: -inf, never NaN
    s = np.array([-1.0, -0.5, 0.0], dtype)
    scores, beam, tok = beam_topk(x, s, 12, backend=backend)
    assert np.isneginf(scores[8:]).all() and not np.isnan(scores).any()
    tv, flat = torch.topk((torch.log_softmax(_t(x[:2]), -1) + _t(s[:2])[:, None]).view(-1), 8)
    np.testing.assert_allclose(scores[:8], tv.numpy(), **TOL[np.dtype(dtype)])
    np.testing.assert_array_equal(beam[:8], flat.numpy() // 4)
    np.testing.assert_array_equal(tok[:8], flat.numpy() % 4)
    assert sorted(zip(beam[8:].tolist(), tok[8:].tolist())) == [(2, j) for j in range(4)]


# ------------------------------------------------------------------ float16
# PyTorch keeps float16 in topk and log_softmax; fastdl computes float16 in float32 and
# rounds once (PyTorch's CPU kernel rounds some intermediates to float16 and is up to one
# float16 step away from the exact result; fastdl is within half a step of it).  Beam
# scores accumulate: float16 log-probs give float32 scores, as transformers' beam search
# takes its scores in float32.

@pytest.mark.parametrize("backend", _backends("topk"))
@pytest.mark.parametrize("shape, k", SHAPES_K)
def test_topk_float16_matches_torch(backend, shape, k):
    x = _data(shape, np.float16, "topk16", special=True)
    v, i = topk(x, k, backend=backend)
    tv, ti = torch.topk(_t(x), k, dim=-1)
    assert v.dtype == np.float16 and i.dtype == np.int64
    np.testing.assert_array_equal(v, tv.numpy())           # exact: elements of x
    rows_x = x.reshape(-1, shape[-1])
    for r, (vi, ti_) in enumerate(zip(i.reshape(-1, k), ti.numpy().reshape(-1, k))):
        if len(np.unique(rows_x[r])) == rows_x.shape[1]:
            np.testing.assert_array_equal(vi, ti_)
        np.testing.assert_array_equal(rows_x[r][vi], v.reshape(-1, k)[r])


@pytest.mark.parametrize("backend", _backends("log_softmax"))
@pytest.mark.parametrize("shape", [(1,), (3, 7), (4, 1000), (2, 3, 33), (16, 50257)])
@pytest.mark.parametrize("special", [False, True], ids=["finite", "with_-inf"])
def test_log_softmax_float16_matches_torch(backend, shape, special):
    x = _data(shape, np.float16, "lsm16", special=special)
    if special and x.ndim == 2 and x.shape[0] > 1:
        x[0] = -np.inf
    got = log_softmax(x, backend=backend)
    want = torch.log_softmax(_t(x), dim=-1).numpy()
    assert got.dtype == np.float16 == want.dtype and got.shape == x.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    exact = torch.log_softmax(_t(x.astype(np.float64)), dim=-1).numpy()[fin]
    # PyTorch's rounding is on the scale of the subtraction x - logsumexp(x)
    scale = np.maximum(np.abs(exact), np.abs(x[fin].astype(np.float64) - exact))
    step = np.spacing(scale.astype(np.float16)).astype(np.float64)
    assert (np.abs(got[fin].astype(np.float64) - want[fin]) <= 2 * step).all()
    err = np.abs(got[fin].astype(np.float64) - exact)
    assert (err <= (0.5 + 2.0 ** -6) * np.spacing(np.abs(got[fin])).astype(np.float64)).all()


@pytest.mark.parametrize("backend", _backends("beam_topk"))
@pytest.mark.parametrize("B, N, k", BEAM_CASES)
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_beam_topk_float16_matches_torch_in_float32(backend, B, N, k, normalize):
    x = _data((B, N), np.float16, "beam16", special=True)
    x[:, 0] = 0.0
    s = (-np.abs(_data((B,), np.float64, "beam-s")) * 4).astype(np.float32)
    scores, beam, tok = beam_topk(x, s, k, normalize=normalize, backend=backend)
    assert scores.dtype == np.float32
    tx = _t(x).float()
    tx = torch.log_softmax(tx, -1) if normalize else tx
    full = (tx + _t(s)[:, None]).numpy()
    tv, flat = torch.topk(torch.from_numpy(full).view(-1), k)
    want = tv.numpy()
    np.testing.assert_array_equal(np.isneginf(scores), np.isneginf(want))
    fin = np.isfinite(want)
    tol = _lsm_tol(np.concatenate([x.ravel().astype(np.float32), s]), np.float32)
    np.testing.assert_allclose(scores[fin], want[fin], **tol)
    np.testing.assert_allclose(scores[fin], full[beam[fin], tok[fin]], **tol)
    m = _determined(full, k, np.float32)
    np.testing.assert_array_equal(beam[:m] * N + tok[:m], flat.numpy()[:m])
