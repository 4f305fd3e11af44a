"""Tests of qmatmul's many-row path (panels of decoded storage rows, then BLAS GEMMs;
fastdl/_backends/cython/_quant.pyx ``_mm_blas``, src/quantk_dec.c, the decoders of
src/quantk_avx2.c / quantk_avx512.c).

* the panel decoder (``_quant.decode_rows``) returns exactly dequantize's values,
  transposed, at every SIMD level and thread count, float32 and float64, for
  d_in that is and is not a multiple of the 64-value groups, blocks of whole
  groups (the AVX-512 table-lookup decoder) and of other sizes, per-tensor and
  double-quantized scales;
* qmatmul on the BLAS path: bitwise the same at every SIMD level (the scalar
  twin's), at 1, 2 and 3 threads with fixed teams, both transposes, float32 and
  float64 x, n just below and above the small/BLAS switch, panels that do and do
  not divide d_out, and panels capped by the decoded-bytes limit;
* after a panel's decode team is released, later parallel kernels still run on
  a full team and give the same results;
* bad arguments to decode_rows: ValueError / TypeError.
"""
import numpy as np
import pytest

from fastdl import quant

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _quant  # noqa: E402

from fastdl.testing import (bitwise_equal as same, fixed_teams, has_simd, rng_for,  # noqa: E402
                            simd, simd_levels, threads)
from _quant_helpers import quant_params as params  # noqa: E402

# (bits, scheme, block_size, double_quant)
FORMATS = [(4, "absmax", 64, False), (4, "nf4", 64, True), (8, "absmax", 64, False),
           (4, "nf4", 128, False), (3, "absmax", None, False), (4, "absmax", 32, True),
           (8, "absmax", 100, True), (2, "absmax", 192, False), (4, "nf4", None, False)]
SHAPES = [(256, 40), (200, 37), (4095, 5), (65, 130), (1, 3)]


def fid(f):
    b, s, bs, dq = f
    return f"{'nf4' if s == 'nf4' else f'int{b}'}-{bs}{'-dq' if dq else ''}"


def qtensor(fmt, d_in, d_out):
    b, s, bs, dq = fmt
    w = rng_for("mr-w", fmt, d_in, d_out).standard_normal((d_in, d_out)).astype(np.float32)
    if d_out >= 3:
        w[:, 1] = 0.0
        w[: min(64, d_in), 2] = -0.0
    return quant.quantize(w, b, scheme=s, block_size=bs, double_quant=dq, backend="numpy")


def levels():
    return [lv for lv in ("scalar", "avx2", "avx512") if has_simd(lv)]


# ---------------------------------------------------------------- the panel decoder


@pytest.mark.parametrize("fmt", FORMATS, ids=fid)
def test_decode_rows_is_dequantize(fmt):
    for d_in, d_out in SHAPES:
        q = qtensor(fmt, d_in, d_out)
        for dt in (np.float32, np.float64):
            ref = quant.dequantize(q, dt, backend="numpy").T
            for j0, j1 in [(0, d_out), (d_out // 3, d_out), (d_out - 1, d_out)]:
                if j0 >= j1:
                    continue
                for lv in levels():
                    for nt in (1, 2, 3):
                        out = np.full((j1 - j0, d_in), np.nan, dt)
                        with simd(lv), fixed_teams():
                            r = _quant.decode_rows(q, j0, j1, out, nt)
                        assert r is out
                        assert same(out, np.ascontiguousarray(ref[j0:j1])), \
                            (fmt, d_in, d_out, dt, j0, j1, lv, nt)


def test_decode_rows_bad_input():
    q = qtensor((4, "absmax", 64, False), 128, 8)
    ok = np.empty((8, 128), np.float32)
    with pytest.raises(ValueError, match="j0"):
        _quant.decode_rows(q, 3, 3, ok, 1)
    with pytest.raises(ValueError, match="j0"):
        _quant.decode_rows(q, -1, 2, ok, 1)
    with pytest.raises(ValueError, match="j0"):
        _quant.decode_rows(q, 0, 9, np.empty((9, 128), np.float32), 1)
    with pytest.raises(ValueError, match="shape"):
        _quant.decode_rows(q, 0, 4, ok, 1)
    with pytest.raises(TypeError, match="out"):
        _quant.decode_rows(q, 0, 8, np.empty((8, 128), np.int32), 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _quant.decode_rows(q, 0, 8, np.empty((128, 8), np.float32).T, 1)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        _quant.decode_rows(np.zeros((8, 64), np.uint8), 0, 8, ok, 1)


# ---------------------------------------------------------------- qmatmul, BLAS path


def blas_outputs(q, ns, panel, dtypes=(np.float32, np.float64)):
    d_in, d_out = q.shape
    outs = []
    with params(small_n=0, small_n_t=0, panel=panel, panel_t=panel):
        for n in ns:
            for transpose in (False, True):
                for dt in dtypes:
                    x = rng_for("mr-x", n, transpose, d_in, d_out).standard_normal(
                        (n, d_out if transpose else d_in)).astype(dt)
                    outs.append(quant.qmatmul(x, q, transpose=transpose, backend="cython"))
    return outs


def check_mm(x, q, transpose, out):
    W = quant.dequantize(q, np.float64, backend="numpy")
    W = W.T if transpose else W
    ref = x.astype(np.float64) @ W
    bound = np.abs(x.astype(np.float64)) @ np.abs(W)
    rtol = 1e-5 if x.dtype == np.float32 else 1e-12
    err = np.abs(out.astype(np.float64) - ref)
    assert np.all(err <= rtol * bound + 1e-37), float(np.max(err - rtol * bound))


@pytest.mark.parametrize("fmt", FORMATS[:6], ids=fid)
def test_blas_path_twins_and_threads_bitwise(fmt):
    """every SIMD level and 1, 2, 3 threads give the scalar, 1-thread bits"""
    for (d_in, d_out), panel in [((200, 37), 16), ((256, 40), 40), ((65, 130), 7)]:
        q = qtensor(fmt, d_in, d_out)
        ref = None
        for lv in levels():
            for nt in (1, 2, 3):
                with simd(lv), threads(nt), fixed_teams():
                    got = blas_outputs(q, (21, 64), panel)
                if ref is None:
                    ref = got
                    continue
                for i, (u, v) in enumerate(zip(ref, got)):
                    assert same(u, v), (fmt, d_in, d_out, panel, lv, nt, i)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_switch_neighbours_and_panels(transpose, dt):
    """n just below and above the automatic switch; panels that do and do not divide
    d_out, one panel, and panels cut by the decoded-bytes limit (d_in = 8193: 512 rows
    of float32, 256 of float64, whatever PARAMS asks)"""
    key = "small_n_t" if transpose else "small_n"
    sw = _quant.PARAMS[key]
    q = qtensor((4, "nf4", 64, True), 300, 150)
    for n in (sw, sw + 1, 128):
        for panel in (1, 64, 150, 1024):
            k = 150 if transpose else 300
            x = rng_for("mr-sw", n, panel, transpose).standard_normal((n, k)).astype(dt)
            with params(panel=panel, panel_t=panel):
                out = quant.qmatmul(x, q, transpose=transpose, backend="cython")
            check_mm(x, q, transpose, out)
    wide = qtensor((4, "absmax", 64, False), 8193, 600)
    x = rng_for("mr-wide", transpose).standard_normal((40, 600 if transpose else 8193)).astype(dt)
    with params(small_n=0, small_n_t=0, panel=600, panel_t=600):
        out = quant.qmatmul(x, wide, transpose=transpose, backend="cython")
    check_mm(x, wide, transpose, out)


def test_parallel_kernels_after_release():
    """the decode team's pool is released before each GEMM; the next parallel
    kernels start a fresh team and give the 1-thread results"""
    q = qtensor((4, "nf4", 64, True), 512, 96)
    x = rng_for("mr-rel").standard_normal((64, 512)).astype(np.float32)
    with threads(1), fixed_teams():
        deq1 = quant.dequantize(q, np.float32, backend="cython")
        mm1 = blas_outputs(q, (30,), 32, (np.float32,))
    with threads(2), fixed_teams():
        for _ in range(3):
            mm2 = blas_outputs(q, (30,), 32, (np.float32,))
            deq2 = quant.dequantize(q, np.float32, backend="cython")
            assert same(deq1, deq2)
            for u, v in zip(mm1, mm2):
                assert same(u, v)
    check_mm(x, q, False, quant.qmatmul(x, q, backend="cython"))


def test_decode_team_does_not_change_results():
    """PARAMS['decode_team'] = 0 (the BLAS call's team decodes) gives the bits of the
    default one decoding thread"""
    q = qtensor((4, "absmax", 64, True), 300, 70)
    with threads(2), fixed_teams():
        a = blas_outputs(q, (33,), 16)
        with params(decode_team=0):
            b = blas_outputs(q, (33,), 16)
    for u, v in zip(a, b):
        assert same(u, v)
    for bad in (-1, 2):
        with pytest.raises(ValueError, match="decode_team"):
            _quant.set_params(decode_team=bad)


def test_params_panel_checked():
    with pytest.raises(ValueError, match="panel"):
        _quant.set_params(panel=0)
    with pytest.raises(ValueError, match="unknown"):
        _quant.set_params(decode_threads=1)
    assert _quant.PARAMS["panel"] >= 64 and _quant.PARAMS["panel_t"] >= 64
    assert simd_levels()[0] == "scalar"
