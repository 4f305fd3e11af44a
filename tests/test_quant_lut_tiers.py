"""The lut matmul's results do not depend on the SIMD tier, the thread count, the input
blocking or how the rows of x are grouped; property tests over shapes against the NumPy
definition and the float64 reference."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastdl.testing import bitwise_equal, fixed_teams, rng_for, simd, simd_levels, threads

from _quant_lut_helpers import FORMATS, assert_within_bound, c_matmul, lut_of, make, np_matmul

_qlut = pytest.importorskip("fastdl._backends.cython._qlut")

CASES = [(4, "nf4", 64, True), (4, "absmax", 64, False), (3, "absmax", 128, True),
         (2, "absmax", None, False), (4, "nf4", None, False), (4, "absmax", 32, True)]


def _x(n, d_in, *key):
    return rng_for("x", n, d_in, *key).standard_normal((n, d_in)).astype(np.float32)


@pytest.mark.parametrize("bits,scheme,block_size,dq", CASES)
@pytest.mark.parametrize("level", simd_levels(scalar=False))
@pytest.mark.parametrize("d_in,d_out", [(1100, 70), (200, 64)])   # odd / even tile counts
def test_simd_tiers_bitwise_equal_scalar(bits, scheme, block_size, dq, level, d_in, d_out):
    q = make(d_in, d_out, bits, scheme, block_size, dq, "tiers")
    lut = lut_of(q)
    for n in (1, 2, 3, 5):
        x = _x(n, d_in, level)
        with simd("scalar"):
            want = c_matmul(x, q, lut)
        with simd(level):
            got = c_matmul(x, q, lut)
        assert bitwise_equal(got, want), (level, n)
        assert bitwise_equal(want, np_matmul(x, q, lut).astype(np.float32))


@pytest.mark.parametrize("bits,scheme,block_size,dq", CASES[:3])
def test_thread_count_does_not_change_bits(bits, scheme, block_size, dq):
    q = make(512, 200, bits, scheme, block_size, dq, "threads")
    lut = lut_of(q)
    x = _x(3, 512, "threads")
    with fixed_teams():
        with threads(1):
            want = c_matmul(x, q, lut, nthreads=1)
        for nt in (2, 3, 7):
            with threads(nt):
                assert bitwise_equal(c_matmul(x, q, lut, nthreads=nt), want), nt


def test_input_blocking_does_not_change_bits():
    q = make(700, 40, 4, "nf4", None, False, "ib")
    qa = make(700, 40, 3, "absmax", 64, True, "ib")
    x = _x(4, 700, "ib")
    want = [c_matmul(x, qq, lut_of(qq)) for qq in (q, qa)]
    old = _qlut.set_params(ib_nf4=1, ib_absmax=3)
    try:
        for qq, w in zip((q, qa), want):
            assert bitwise_equal(c_matmul(x, qq, lut_of(qq)), w)
    finally:
        _qlut.set_params(**old)
    with pytest.raises(ValueError, match="unknown parameter"):
        _qlut.set_params(ib=3)


def test_rows_alone_equal_rows_together():
    q = make(300, 50, 4, "absmax", 64, False, "rows")
    lut = lut_of(q)
    x = _x(5, 300, "rows")
    together = c_matmul(x, q, lut)
    for i in range(5):
        assert bitwise_equal(c_matmul(x[i:i + 1], q, lut), together[i:i + 1])


@settings(max_examples=40, deadline=None)
@given(d_in=st.integers(1, 300), d_out=st.integers(1, 50), n=st.integers(1, 4),
       fmt=st.sampled_from(FORMATS), block=st.sampled_from([None, 32, 64, 96, 256]),
       dq=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_property_shapes(d_in, d_out, n, fmt, block, dq, seed):
    bits, scheme = fmt
    dq = dq and block is not None
    q = make(d_in, d_out, bits, scheme, block, dq, seed)
    lut = lut_of(q)
    x = _x(n, d_in, seed)
    y = c_matmul(x, q, lut, nthreads=2)
    assert bitwise_equal(y, np_matmul(x, q, lut).astype(np.float32))
    assert_within_bound(y, x, q)
    np.testing.assert_array_equal(_qlut.lut_to_rows(lut, d_in, d_out, bits, scheme == "nf4"),
                                  q.data)


@pytest.mark.parametrize("bits,scheme,block_size,dq", CASES)
def test_kept_tile_scales_give_the_same_bits(bits, scheme, block_size, dq):
    """Scales decoded once in the kernels' order (what a LUT tensor keeps) give the bits
    of decoding them on every call, at every tier and thread count."""
    from _quant_lut_helpers import scale_args
    d_in, d_out = 300, 70                                 # a partial last tile
    q = make(d_in, d_out, bits, scheme, block_size, dq, "tsc")
    lut = lut_of(q)
    args = (lut, d_in, d_out, bits, scheme == "nf4", block_size, *scale_args(q))
    ts = _qlut.lut_tile_scales(*args)
    nb = q.block_scales().shape[1]
    assert ts.shape == ((d_out + 15) // 16, nb * 16)
    want_ts = np.zeros((ts.shape[0] * 16, nb), np.float32)
    want_ts[:d_out] = q.block_scales()
    assert bitwise_equal(ts.reshape(-1, nb, 16).transpose(0, 2, 1).reshape(-1, nb), want_ts)
    x = _x(3, d_in, "tsc")
    for level in simd_levels():
        with simd(level):
            for nt in (1, 2):
                want = c_matmul(x, q, lut, nthreads=nt)
                out = np.full_like(want, np.nan)
                got = _qlut.lut_qmatmul(x, *args, out, nt, tile_scales=ts)
                assert bitwise_equal(got, want), (level, nt)
    out = np.empty((3, d_out), np.float32)
    with pytest.raises(ValueError, match="tile_scales"):
        _qlut.lut_qmatmul(x, *args, out, 1, tile_scales=ts[:-1])
    with pytest.raises(TypeError, match="tile_scales"):
        _qlut.lut_qmatmul(x, *args, out, 1, tile_scales=ts.astype(np.float64))


def test_lut_tensor_keeps_its_tile_scales():
    from fastdl.quant import qmatmul
    q = make(256, 48, 4, "absmax", 64, True, "keep").to_layout("lut")
    x = _x(1, 256, "keep")
    y = qmatmul(x, q, backend="cython")
    ts = q._derived.get("lut_scales")
    from fastdl._backends.cython import _cpu
    if _cpu.active_simd() != "avx512":
        pytest.skip("the LUT kernels run at the AVX-512 level only")
    assert ts is not None and not ts.flags.writeable
    assert bitwise_equal(qmatmul(x, q, backend="cython"), y)
    assert q._derived["lut_scales"] is ts


def test_tile_grouping_does_not_change_bits():
    """The threads take tiles in groups as they come free; a tile's sums do not depend
    on its group or on which thread runs it."""
    for bits, scheme, bs, dq in CASES[:3]:
        q = make(300, 200, bits, scheme, bs, dq, "groups")     # 13 tiles: odd groups too
        lut = lut_of(q)
        x = _x(3, 300, "groups")
        want = c_matmul(x, q, lut, nthreads=1)
        for groups in (1, 3, 64):
            old = _qlut.set_params(groups=groups)
            try:
                for nt in (1, 2, 3):
                    assert bitwise_equal(c_matmul(x, q, lut, nthreads=nt), want), (groups, nt)
            finally:
                _qlut.set_params(**old)
