"""The RNN kernels' vectorized tanh: its documented error bound (1.5 ulp from the exact
tanh), special values, oddness, and the SIMD twins bitwise equal to the scalar one."""
import numpy as np
import pytest

from fastdl.testing import simd, simd_levels

_rnn = pytest.importorskip("fastdl._backends.cython._rnn")

BOUND = 1.5


def _ulps(got, exact, mant_bits):
    """|got - exact| in units of the last place of `exact` in a type with mant_bits."""
    _, e = np.frexp(np.abs(exact))
    ulp = np.ldexp(1.0, np.maximum(e - mant_bits - 1, {23: -149, 52: -1074}[mant_bits]))
    return np.abs(got.astype(np.float64) - exact) / ulp


def _f32_inputs():
    """Every 512th non-negative float32 bit pattern (4 M values, finite), every binade
    (denormals included) with 2048 random mantissas each, and the neighbours of the
    polynomial/exponential switch at 0.625 and of the clamp at 20."""
    rng = np.random.default_rng(0)
    grid = np.arange(0, 0x7F800000, 512, dtype=np.uint32)
    binades = (np.arange(255, dtype=np.uint32)[:, None] << 23) | rng.integers(
        0, 1 << 23, (255, 2048), dtype=np.uint32)
    around = []
    for v in (0.625, 20.0, 1.0, 0.5):
        b = np.array(v, np.float32).view(np.uint32)
        around.append(np.arange(b - 4096, b + 4096, dtype=np.uint32))
    bits = np.concatenate([grid, binades.ravel()] + around)
    x = bits.view(np.float32)
    return np.concatenate([x, -x])


def test_float32_within_bound_of_exact_tanh():
    x = _f32_inputs()
    y = _rnn.tanh(x)
    err = _ulps(y, np.tanh(x.astype(np.float64)), 23)
    worst = int(np.argmax(err))
    assert err[worst] <= BOUND, f"{err[worst]:.3f} ulp at x = {x[worst]!r}"
    assert np.all(np.abs(y) <= 1)


def test_float64_within_bound_on_a_dense_grid():
    rng = np.random.default_rng(1)
    x = np.concatenate([np.ldexp(1 + rng.random(4000), e) for e in range(-60, 6)]
                       + [np.linspace(0, 20, 400_001), np.linspace(0.6, 0.65, 100_001)])
    x = np.concatenate([x, -x])
    y = _rnn.tanh(x)
    # the C library's tanh is itself within an ulp: 2 ulp between the two
    err = _ulps(y, np.tanh(x), 52)
    assert err.max() <= 2.0, f"{err.max():.3f} ulp at x = {x[np.argmax(err)]!r}"
    assert np.all(np.abs(y) <= 1)
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    worst = np.argsort(err)[-300:]
    exact = np.array([float(mp.tanh(mp.mpf(float(v)))) for v in x[worst]])
    # exact - y in 40 digits, relative to the ulp of the exact value
    diff = np.array([float(mp.tanh(mp.mpf(float(v))) - mp.mpf(float(g)))
                     for v, g in zip(x[worst], y[worst])])
    true_err = np.abs(diff) / np.ldexp(1.0, np.frexp(np.abs(exact))[1] - 53)
    assert true_err.max() <= BOUND, f"{true_err.max():.3f} ulp"
    assert true_err.max() > 0.5           # the sample does reach the worst cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    info = np.finfo(dtype)
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, info.max, -info.max,
                  info.smallest_subnormal, -info.smallest_subnormal, 20.0, 1e4], dtype)
    y = _rnn.tanh(x)
    assert np.isnan(y[0]) and np.isnan(y[1])
    assert y.view(np.uint64 if dtype == np.float64 else np.uint32)[0] == \
        x.view(np.uint64 if dtype == np.float64 else np.uint32)[0]       # NaN kept as is
    assert list(y[2:4]) == [1, -1] and list(y[6:8]) == [1, -1]
    assert y[4] == 0 and not np.signbit(y[4]) and y[5] == 0 and np.signbit(y[5])
    assert y[8] == x[8] and y[9] == x[9]
    assert y[10] == 1 and y[11] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_odd_bitwise(dtype):
    x = np.random.default_rng(2).standard_normal(100_000).astype(dtype) * 4
    assert np.array_equal(_rnn.tanh(-x), -_rnn.tanh(x))


@pytest.mark.parametrize("level", simd_levels(scalar=False))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simd_twins_bitwise_equal(level, dtype):
    rng = np.random.default_rng(3)
    # every length remainder of the vector loops, and values across both branches
    x = (rng.standard_normal(100_003) * 3).astype(dtype)
    x[::997] = np.nan
    with simd("scalar"):
        want = _rnn.tanh(x)
    with simd(level):
        got = _rnn.tanh(x)
        for n in range(1, 40):
            assert np.array_equal(_rnn.tanh(x[:n]), want[:n], equal_nan=True)
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))


def test_arguments():
    with pytest.raises(TypeError, match="x must be a float32/float64"):
        _rnn.tanh(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="out must be"):
        _rnn.tanh(np.zeros(3, np.float32), out=np.zeros(4, np.float32))
    out = np.zeros((2, 3), np.float64)
    assert _rnn.tanh(np.ones((2, 3)), out=out) is out
    assert np.abs(out - np.tanh(1.0)).max() < 1e-15
