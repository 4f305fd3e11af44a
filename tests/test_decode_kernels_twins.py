"""Adversarial tests of the Cython decoding kernels: the scalar twin vs every SIMD tier
(bitwise; every tail length in test_decode_tiers.py), the exp polynomial's accuracy,
thread-count independence (bitwise), hypothesis property tests of topk / log_softmax /
beam_topk against the NumPy backend, and bad input to the raw backend ops.
"""

import numpy as np
import pytest

from fastdl.decode import beam_topk, log_softmax, topk

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _decode  # noqa: E402

hyp = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402
from fastdl.testing import rng_for, simd, simd_levels, threads  # noqa: E402

from _decode_kernels_helpers import (  # noqa: E402
    CHUNK, DTYPES, LONG, assert_twin_tails, check_beam, check_topk, ref_offsets, same, ulp_close)


SIMD = simd_levels(scalar=False)     # every SIMD tier this machine runs


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
    e, _ = assert_twin_tails(_decode._exp, x, level)
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
    lp, sg = x[None], s[None]           # the op takes groups: (G, B, N) and (G, B)
    with pytest.raises(TypeError, match="beam_scores"):
        cy.beam_topk(lp, sg.astype(np.float64), 2, True)
    with pytest.raises(ValueError, match="beam_scores"):
        cy.beam_topk(lp, np.zeros((1, 4), np.float32), 2, True)
    with pytest.raises(ValueError, match="beam_scores"):
        cy.beam_topk(lp, np.zeros((1, 6), np.float32)[:, ::2], 2, True)
    with pytest.raises(ValueError, match="log_probs must be 3-D"):
        cy.beam_topk(x, s, 2, True)
    with pytest.raises(ValueError, match="k must be"):
        cy.beam_topk(lp, sg, 13, True)
    with pytest.raises(ValueError, match="k must be"):
        cy.beam_topk(lp, sg, 0, True)
    with pytest.raises(TypeError, match="normalize"):
        cy.beam_topk(lp, sg, 2, 1)
    with pytest.raises(TypeError, match="log_probs"):
        cy.beam_topk(lp.astype(np.int32), sg, 2, True)
    # the raw Cython kernels refuse inconsistent sizes instead of reading out of bounds
    for call in (lambda: _decode.topk(x, 5, 1),
                 lambda: _decode.beam_topk(x[None], np.zeros((1, 2), np.float32), 2, True, 1),
                 lambda: _decode.log_softmax(x, np.zeros((2, 4), np.float32), 1)):
        with pytest.raises(ValueError):
            call()


def test_backend_registered():
    assert {"topk", "log_softmax", "beam_topk"} <= set(cy.backend.ops)
