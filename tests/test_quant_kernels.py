"""Tests of the Cython quantization kernels (fastdl/_backends/cython/_quant.pyx,
src/quantk*.{c,h}) against the NumPy backend (fastdl/_backends/numpy/quant.py).

* quantize: bit-identical data and scales for bits 2..8 absmax (nearest and
  floor), NF4, per-tensor and block sizes 2, 3, 32, 64, 100, 128, odd d_in
  (1, 3, 63, 65, 4095), all-zero blocks and columns, exact .5 quotients and
  values on the NF4 thresholds; NF4 per tensor too;
* dequantize: bit-identical float32 / float64 output, with and without double
  quantization;
* qmatmul: against float64 ``x @ dequantize(q)`` (rtol 1e-5 of |x| @ |W| for
  float32 x) on both paths (fused small-n kernel and BLAS panels, forced with
  ``_quant.set_params``), both transpose values, n = 1 .. 600, odd shapes,
  float32 and float64 x;
* scalar twin vs AVX2 vs AVX-512 (every level this machine runs, every scheme,
  both dtypes, both transposes, n = 1, 3, 4, 17, 64 on both paths, odd shapes,
  1 and 2 threads) and 1 vs 2 vs 3 threads: bitwise;
* bad input to the raw backend ops: TypeError / ValueError, never a crash.
"""
import numpy as np
import pytest

import fastdl
from fastdl import quant

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _quant  # noqa: E402

from fastdl.testing import (bitwise_equal as same, fixed_teams, has_simd, rng_for,  # noqa: E402
                            simd, simd_levels, threads)
from _quant_helpers import quant_params as params  # noqa: E402

# (bits, scheme, block_size, rounding)
FORMATS = ([(b, "absmax", bs, r) for b in range(2, 9) for r in ("nearest", "floor")
            for bs in (None, 2, 3, 32, 64, 100, 128)]
           + [(4, "nf4", bs, "nearest") for bs in (None, 2, 3, 32, 64, 100, 128)])
SHAPES = [(1, 5), (3, 4), (63, 7), (65, 9), (128, 24), (200, 33), (4095, 3)]
# a smaller set for the matmul sweeps
MM_FORMATS = [(8, "absmax", 64, "nearest"), (5, "absmax", None, "floor"), (6, "absmax", 100, "nearest"),
              (4, "absmax", 64, "nearest"), (3, "absmax", 32, "floor"), (2, "absmax", None, "nearest"),
              (4, "absmax", 3, "nearest"), (4, "nf4", 64, "nearest"), (4, "nf4", 128, "nearest"),
              (4, "nf4", 100, "nearest"), (4, "nf4", None, "nearest")]


def fmt_id(f):
    b, s, bs, r = f
    return f"{'nf4' if s == 'nf4' else f'int{b}'}-{bs}-{r}"


def weights(d_in, d_out, key, bits=8, scheme="absmax"):
    """Random weights with all-zero blocks, a zero column, exact ties and NF4 thresholds."""
    rng = rng_for("w", d_in, d_out, *key)
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)
    w[:, rng.integers(0, d_out)] *= np.float32(1e-3)           # a column of small values
    if d_out >= 3:
        w[:, 1] = 0.0                                           # a zero column
        w[: min(64, d_in), 2] = 0.0                             # zero blocks
        w[rng.random(d_in) < 0.2, 2] = -0.0
    if d_out >= 5 and d_in >= 2:
        # ties: absmax qmax * 2^-3 -> scale 2^-3 exactly (per block and per tensor when the
        # column holds the largest value); w / scale = m + 0.5 exactly
        qmax = 2 ** (bits - 1) - 1
        col = np.empty(d_in, np.float32)
        m = np.arange(d_in) % (2 * qmax + 1) - qmax
        col[:] = (m + np.where(m < 0, -0.5, 0.5)) * 0.125
        col = np.clip(col, -qmax * 0.125, qmax * 0.125)
        col[::2] = qmax * 0.125 * np.where(np.arange(0, d_in, 2) % 4 == 0, 1, -1)
        w[:, 3] = col
        # NF4: absmax 1 in every block of 2, the other value exactly a threshold or
        # its neighbour
        t = quant.nf4_thresholds()
        vals = np.concatenate([t, np.nextafter(t, np.float32(2)), np.nextafter(t, np.float32(-2)),
                               quant.NF4_CODEBOOK]).astype(np.float32)
        col = np.resize(vals, d_in)
        col[::2] = 1.0
        w[:, 4] = col
        if scheme == "absmax":
            w[:, 0] *= np.float32(qmax * 0.125) / max(np.abs(w[:, 0]).max(), 1e-30)
    if d_out >= 7:
        w[:, 6] *= np.float32(1e30)
    if d_out >= 8:
        # subnormal and tiny block maxima (the scale rounding down matters there)
        w[:, 7] *= np.float32(1e-39)
        w[::3, 7] = np.float32(1.4e-45) * rng.integers(-300, 300, w[::3, 7].shape)
    return w


def q_pair(w, fmt, dq=False):
    b, s, bs, r = fmt
    kw = dict(scheme=s, block_size=bs, rounding=r, double_quant=dq)
    return (quant.quantize(w, b, backend="cython", **kw), quant.quantize(w, b, backend="numpy", **kw))


# ---------------------------------------------------------------- quantize


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_quantize_bit_identical(fmt):
    for d_in, d_out in SHAPES:
        w = weights(d_in, d_out, fmt, fmt[0], fmt[1])
        a, b = q_pair(w, fmt)
        assert same(a.data, b.data), (fmt, d_in, d_out)
        assert same(a.scales, b.scales), (fmt, d_in, d_out)


def test_quantize_ties_are_hit():
    """the tie column really has .5 quotients (so the rounding test can fail)"""
    w = weights(64, 8, ("ties",), 4)
    a, _ = q_pair(w, (4, "absmax", 64, "nearest"))
    assert a.scales[3, 0] == np.float32(0.125)
    v = w[:, 3] / a.scales[3, 0]
    assert np.any(np.abs(v - np.trunc(v)) == 0.5)
    fl, _ = q_pair(w, (4, "absmax", 64, "floor"))
    assert not np.array_equal(a.data[3], fl.data[3])


def test_quantize_zero_tensor_and_double_quant():
    for fmt in [(4, "absmax", 64, "nearest"), (8, "absmax", None, "floor"), (4, "nf4", 64, "nearest")]:
        w = np.zeros((130, 6), np.float32)
        a, b = q_pair(w, fmt)
        assert same(a.data, b.data) and same(a.scales, b.scales)
        if fmt[2] is not None:
            w = weights(130, 6, fmt)
            a, b = q_pair(w, fmt, dq=True)
            assert same(a.data, b.data) and same(a.scale_codes, b.scale_codes)
            assert same(a.scale_scales, b.scale_scales) and same(a.scale_mean, b.scale_mean)


def test_quantize_large_strip():
    """enough columns for several column strips and threads, rows for several chunks"""
    w = weights(2100, 150, ("large",))
    for fmt in [(4, "absmax", 64, "nearest"), (8, "absmax", 100, "floor"), (4, "nf4", 64, "nearest"),
                (3, "absmax", None, "nearest")]:
        a, b = q_pair(w, fmt)
        assert same(a.data, b.data) and same(a.scales, b.scales), fmt


# ---------------------------------------------------------------- dequantize


@pytest.mark.parametrize("fmt", MM_FORMATS + [(7, "absmax", 2, "floor")], ids=fmt_id)
@pytest.mark.parametrize("dq", [False, True], ids=["plain", "dq"])
def test_dequantize_bit_identical(fmt, dq):
    if dq and fmt[2] is None:
        pytest.skip("double quantization needs blocks")
    for d_in, d_out in [(1, 3), (65, 9), (300, 40), (4095, 3)]:
        w = weights(d_in, d_out, fmt, fmt[0], fmt[1])
        q = quant.quantize(w, fmt[0], scheme=fmt[1], block_size=fmt[2], rounding=fmt[3],
                           double_quant=dq, backend="numpy")
        for dt in (np.float32, np.float64):
            a = quant.dequantize(q, dt, backend="cython")
            b = quant.dequantize(q, dt, backend="numpy")
            assert same(a, b), (fmt, dq, d_in, d_out, dt)


# ---------------------------------------------------------------- qmatmul


def check_mm(x, q, transpose, out):
    W = quant.dequantize(q, np.float64, backend="numpy")
    W = W.T if transpose else W
    x64 = x.astype(np.float64)
    ref = x64 @ W
    bound = np.abs(x64) @ np.abs(W)
    rtol = 1e-5 if x.dtype == np.float32 else 1e-12
    assert out.dtype == x.dtype and out.shape == ref.shape
    err = np.abs(out.astype(np.float64) - ref)
    assert np.all(err <= rtol * bound + 1e-37), float(np.max(err - rtol * bound))


PATHS = {"small": dict(small_n=10**9, small_n_t=10**9), "blas": dict(small_n=0, small_n_t=0)}


@pytest.mark.parametrize("fmt", MM_FORMATS, ids=fmt_id)
@pytest.mark.parametrize("path", sorted(PATHS))
def test_qmatmul(fmt, path):
    dq_opts = [False, True] if fmt[2] is not None else [False]
    with params(**PATHS[path]):
        for (d_in, d_out), ns in [((200, 72), (1, 2, 7, 8, 33, 600)), ((65, 9), (1, 3, 600)),
                                  ((1, 5), (1, 2)), ((130, 1), (1, 7)), ((4095, 3), (2,))]:
            w = weights(d_in, d_out, fmt, fmt[0], fmt[1])
            for dq in dq_opts:
                q = quant.quantize(w, fmt[0], scheme=fmt[1], block_size=fmt[2], rounding=fmt[3],
                                   double_quant=dq, backend="numpy")
                for n in ns:
                    for transpose in (False, True):
                        k = d_out if transpose else d_in
                        for dt in (np.float32, np.float64):
                            x = rng_for("x", fmt, n, d_in, d_out, transpose).standard_normal((n, k))
                            x = x.astype(dt)
                            out = quant.qmatmul(x, q, transpose=transpose, backend="cython")
                            check_mm(x, q, transpose, out)


def test_qmatmul_vector_and_out():
    w = weights(96, 40, ("vec",))
    q = quant.quantize(w, 4, block_size=32, backend="numpy")
    x = rng_for("vx").standard_normal(96).astype(np.float32)
    y = quant.qmatmul(x, q, backend="cython")
    assert y.shape == (40,)
    check_mm(x[None], q, False, y[None])
    out = np.full((3, 96), np.nan, np.float32)
    x2 = rng_for("vx2").standard_normal((3, 40)).astype(np.float32)
    r = quant.qmatmul(x2, q, transpose=True, out=out, backend="cython")
    assert r is out
    check_mm(x2, q, True, out)


@pytest.mark.parametrize("transpose", [False, True])
def test_path_threshold_is_used(transpose):
    """the automatic choice follows PARAMS['small_n'] / ['small_n_t'] (the two paths
    round differently)"""
    w = weights(256, 64, ("thr",))
    q = quant.quantize(w, 4, block_size=64, backend="numpy")
    x = rng_for("thr-x").standard_normal((4, 64 if transpose else 256)).astype(np.float32)
    key = "small_n_t" if transpose else "small_n"
    res = {}
    for name, kw in PATHS.items():
        with params(**kw):
            res[name] = quant.qmatmul(x, q, transpose=transpose, backend="cython")
    assert not same(res["small"], res["blas"])
    with params(**{key: 4}):
        assert same(quant.qmatmul(x, q, transpose=transpose, backend="cython"), res["small"])
    with params(**{key: 3}):
        assert same(quant.qmatmul(x, q, transpose=transpose, backend="cython"), res["blas"])
    assert _quant.PARAMS["small_n"] >= 8 and _quant.PARAMS["small_n_t"] >= 8


# ---------------------------------------------------------------- twins, threads


def all_outputs(w, fmt, dq, ns=(1, 3, 20)):
    """every kernel output for one format (both matmul paths, both transposes)"""
    b, s, bs, r = fmt
    q = quant.quantize(w, b, scheme=s, block_size=bs, rounding=r, double_quant=dq, backend="cython")
    outs = [q.data, q.scale_codes if dq else q.scales,
            quant.dequantize(q, np.float32, backend="cython"),
            quant.dequantize(q, np.float64, backend="cython")]
    d_in, d_out = w.shape
    for path, kw in sorted(PATHS.items()):
        with params(**kw):
            for n in ns:
                for transpose in (False, True):
                    for dt in (np.float32, np.float64):
                        x = rng_for("tw", n, transpose).standard_normal(
                            (n, d_out if transpose else d_in)).astype(dt)
                        outs.append(quant.qmatmul(x, q, transpose=transpose, backend="cython"))
    return outs


# every scheme at the bit widths with their own kernels (int8, int4, the narrower and
# wider nibble / byte codes), plain, double-quantized and per-tensor scales, block
# sizes that are and are not multiples of the 32-value halves
TWIN_FORMATS = [((8, "absmax", 64, "nearest"), False), ((4, "absmax", 64, "floor"), True),
                ((4, "nf4", 64, "nearest"), True), ((3, "absmax", None, "nearest"), False),
                ((6, "absmax", 32, "floor"), False), ((2, "absmax", 96, "nearest"), True),
                ((4, "nf4", 100, "nearest"), False), ((5, "absmax", 3, "nearest"), False),
                ((4, "absmax", 64, "nearest"), False), ((4, "nf4", 32, "nearest"), False),
                ((4, "nf4", None, "nearest"), False), ((8, "absmax", 128, "floor"), True)]
# odd d_in (a partial last 64-group, halves that straddle blocks) and d_out (column
# groups and the 4-row passes with a remainder); 1024 rows: several row chunks
TWIN_SHAPES = [(300, 131), (65, 17), (1024, 9), (32, 5)]
TWIN_NS = (1, 3, 4, 17, 64)


def test_twin_formats_cover_every_scheme():
    # the kernels' schemes: signmax and minmax run as absmax (fastdl._qpaths)
    assert {f[1] for f, _ in TWIN_FORMATS} == set(fastdl.ops.SCHEMES) == {"absmax", "nf4"}
    assert {8, 4} <= {f[0] for f, _ in TWIN_FORMATS if f[1] == "absmax"}


@pytest.mark.parametrize("level", [lv for lv in ("avx2", "avx512")])
@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("fmt,dq", TWIN_FORMATS, ids=lambda v: fmt_id(v) if isinstance(v, tuple) else str(v))
def test_simd_twins_bitwise(fmt, dq, nt, level):
    """every output at `level` is bitwise the scalar twin's, at 1 and 2 threads"""
    if not has_simd(level):
        pytest.skip(f"no {level} on this CPU/build (levels: {simd_levels()})")
    for shape in TWIN_SHAPES:
        w = weights(*shape, fmt, fmt[0], fmt[1])
        with threads(nt), fixed_teams():
            with simd(level):
                a = all_outputs(w, fmt, dq, TWIN_NS)
            with simd("scalar"):
                b = all_outputs(w, fmt, dq, TWIN_NS)
        for i, (u, v) in enumerate(zip(a, b)):
            assert same(u, v), (level, fmt, dq, shape, nt, i)


@pytest.mark.parametrize("level", ["avx2", "avx512"])
@pytest.mark.parametrize("fmt,dq", [((4, "nf4", 32, "nearest"), True), ((4, "absmax", 32, "floor"), True),
                                    ((8, "absmax", 32, "nearest"), True), ((8, "absmax", 32, "nearest"), False),
                                    ((3, "absmax", None, "nearest"), False)],
                         ids=lambda v: fmt_id(v) if isinstance(v, tuple) else str(v))
def test_simd_twins_long_columns(fmt, dq, level):
    """columns of more than 256 blocks (the AVX-512 n = 1 kernels rebuild double-quantized
    scales 256 blocks at a time, 16 per instruction, across groups of 256 scale codes)"""
    if not has_simd(level):
        pytest.skip(f"no {level} on this CPU/build (levels: {simd_levels()})")
    w = weights(8263, 7, fmt, fmt[0], fmt[1])
    b, s, bs, r = fmt
    q = quant.quantize(w, b, scheme=s, block_size=bs, rounding=r, double_quant=dq, backend="cython")
    res = {}
    for lv in ("scalar", level):
        with simd(lv), params(**PATHS["small"]):
            res[lv] = [quant.qmatmul(rng_for("long", t).standard_normal((1, 7 if t else 8263))
                                     .astype(np.float32), q, transpose=t, backend="cython")
                       for t in (False, True)]
    for u, v in zip(res["scalar"], res[level]):
        assert same(u, v), (level, fmt, dq)


@pytest.mark.parametrize("fmt,dq", TWIN_FORMATS[:5], ids=lambda v: fmt_id(v) if isinstance(v, tuple) else str(v))
def test_threads_bitwise(fmt, dq):
    w = weights(700, 133, fmt, fmt[0], fmt[1])
    res = {}
    for nt in (1, 2, 3):
        with threads(nt):
            res[nt] = all_outputs(w, fmt, dq, ns=(1, 5, 40))
    # outputs 4.. are the matmuls, the BLAS path's first (sorted PATHS): OpenBLAS groups
    # its sums by its own thread count, which follows fastdl's, so those agree to rounding
    n_blas = 4 + len((1, 5, 40)) * 2 * 2
    for nt in (2, 3):
        for i, (u, v) in enumerate(zip(res[1], res[nt])):
            if 4 <= i < n_blas:
                tol = 1e-5 if u.dtype == np.float32 else 1e-12
                np.testing.assert_allclose(v, u, rtol=tol, atol=tol * np.abs(u).max(),
                                           err_msg=str((fmt, dq, nt, i)))
            else:
                assert same(u, v), (fmt, dq, nt, i)


# ---------------------------------------------------------------- bad input


def test_bad_input_raw_ops():
    w = weights(64, 8, ("bad",))
    q = quant.quantize(w, 4, block_size=32, backend="numpy")
    qn = cy.quantize
    with pytest.raises(TypeError):
        qn(w.astype(np.float64), 4, "absmax", 32, "nearest", False)
    with pytest.raises(TypeError):
        qn(w.tolist(), 4, "absmax", 32, "nearest", False)
    with pytest.raises(ValueError):
        qn(np.asfortranarray(w), 4, "absmax", 32, "nearest", False)
    with pytest.raises(ValueError):
        qn(w[:, :0], 4, "absmax", 32, "nearest", False)
    with pytest.raises(ValueError):
        qn(w[0], 4, "absmax", 32, "nearest", False)
    with pytest.raises(ValueError):
        qn(w, 9, "absmax", 32, "nearest", False)
    with pytest.raises(ValueError):
        qn(w, 4, "absmax", 0, "nearest", False)
    with pytest.raises(TypeError):
        qn(w, 4, "absmax", 32.0, "nearest", False)
    with pytest.raises(ValueError):
        qn(w, 4, "nf3", 32, "nearest", False)
    with pytest.raises(ValueError):
        qn(w, 3, "nf4", 32, "nearest", False)
    with pytest.raises(ValueError):
        qn(w, 4, "absmax", 32, "up", False)
    with pytest.raises(TypeError):
        qn(w, 4, "absmax", 32, "nearest", 1)

    dq = cy.dequantize
    with pytest.raises(TypeError):
        dq(w, np.empty((64, 8), np.float32))
    with pytest.raises(TypeError):
        dq(q, np.empty((64, 8), np.int32))
    with pytest.raises(TypeError):
        dq(q, None)
    with pytest.raises(ValueError):
        dq(q, np.empty((8, 64), np.float32))
    with pytest.raises(ValueError):
        dq(q, np.empty((64, 16), np.float32)[:, ::2])
    ro = np.empty((64, 8), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError):
        dq(q, ro)

    mm = cy.qmatmul
    x = np.ones((2, 64), np.float32)
    good = np.empty((2, 8), np.float32)
    mm(x, q, False, good)                               # the valid call works
    check_mm(x, q, False, good)
    with pytest.raises(TypeError):
        mm(x.tolist(), q, False, good)
    with pytest.raises(TypeError):
        mm(x.astype(np.int32), q, False, good)
    with pytest.raises(TypeError):
        mm(x, w, False, good)
    with pytest.raises(ValueError):
        mm(x[0], q, False, good)
    with pytest.raises(ValueError):
        mm(np.ones((2, 8), np.float32), q, False, good)  # needs (n, 64)
    with pytest.raises(ValueError):
        mm(np.ones((0, 64), np.float32), q, False, good[:0])
    with pytest.raises(ValueError):
        mm(np.ones((2, 128), np.float32)[:, ::2], q, False, good)
    with pytest.raises(TypeError):
        mm(x, q, False, good.astype(np.float64))
    with pytest.raises(TypeError):
        mm(x, q, False, None)
    with pytest.raises(ValueError):
        mm(x, q, False, np.empty((2, 9), np.float32))
    with pytest.raises(ValueError):
        mm(x, q, False, np.empty((8, 2), np.float32).T)
    with pytest.raises(TypeError):
        mm(x, q, 0, good)
    with pytest.raises(ValueError):
        mm(np.ones((2, 8), np.float32), q, True, np.empty((2, 8), np.float32))
    xa = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError):
        mm(xa, q, False, xa[:, :8])                     # overlaps x
    with pytest.raises(ValueError):
        _quant.set_params(small_n=-1)
    with pytest.raises(ValueError):
        _quant.set_params(bogus=1)
    with pytest.raises(ValueError):
        _quant.qmatmul(x, q, False, good, 1, "fast")
    assert _quant.PARAMS == _quant._DEFAULTS


def test_nf4_thresholds_match():
    assert same(_quant.nf4_thresholds(), quant.nf4_thresholds())


def test_backend_registered():
    assert set(quant.QUANT_OPS) <= set(cy.backend.ops)
