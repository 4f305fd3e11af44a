"""bf16 compute (AVX512-BF16 vdpbf16ps) for x @ dequantize(q): the kernels against
their scalar emulation (bitwise) and the NumPy float64 reference (within the stated
bound), thread counts, row independence, bad input and the missing-feature errors."""
import numpy as np
import pytest

from fastdl.quant import quantize
from fastdl.testing import has_simd, rng_for, simd

_qbf16 = pytest.importorskip("fastdl._backends.cython._qbf16")
from fastdl._backends.numpy import quant_bf16 as ref  # noqa: E402

needs_bf16 = pytest.mark.skipif(not _qbf16.bf16_available()[0],
                                reason=f"bf16 compute unavailable: {_qbf16.bf16_available()[1]}")

FORMATS = [
    dict(bits=4, scheme="nf4", block_size=64, double_quant=True),
    dict(bits=4, scheme="nf4", block_size=32),
    dict(bits=4, scheme="absmax", block_size=64),
    dict(bits=4, scheme="absmax", block_size=96),
    dict(bits=3, scheme="absmax", block_size=128, double_quant=True),
    dict(bits=2, scheme="absmax", block_size=None),
    dict(bits=8, scheme="absmax", block_size=64),
    dict(bits=6, scheme="absmax", block_size=32),
    dict(bits=5, scheme="absmax", block_size=None),
]
# whole quads, an odd last 64-group, a short last group, a row shorter than 32
SHAPES = [(256, 9), (192, 5), (232, 7), (100, 3), (20, 4)]


def _case(shape, fmt, n, key=()):
    rng = rng_for("bf16", shape, sorted(fmt.items()), n, *key)
    d_in, d_out = shape
    fmt = dict(fmt)
    if fmt["block_size"] is not None and fmt["block_size"] > d_in:
        fmt["block_size"] = None if fmt.get("double_quant") is None else fmt["block_size"]
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    return x, quantize(w, **fmt)


def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("n", [1, 3])
def test_emulation_within_bound_of_reference(shape, fmt, n):
    x, q = _case(shape, fmt, n)
    y = _qbf16.bf16_qmatmul(x, q, emulate=True)
    err = np.abs(y.astype(np.float64) - ref.bf16_qmatmul_reference(x, q))
    assert np.all(err <= ref.kernel_bound(x, q))


@needs_bf16
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("n", [1, 3])
def test_kernel_equals_emulation(shape, fmt, n):
    x, q = _case(shape, fmt, n)
    y = _qbf16.bf16_qmatmul(x, q)
    np.testing.assert_array_equal(_bits(y), _bits(_qbf16.bf16_qmatmul(x, q, emulate=True)))
    err = np.abs(y.astype(np.float64) - ref.bf16_qmatmul_reference(x, q))
    assert np.all(err <= ref.kernel_bound(x, q))


@needs_bf16
@pytest.mark.parametrize("fmt", FORMATS[:3] + FORMATS[6:7], ids=str)
def test_threads_and_rows_bitwise(fmt):
    x, q = _case((320, 67), fmt, 5)
    y1 = _qbf16.bf16_qmatmul(x, q, nthreads=1)
    for nt in (2, 3, 7):
        np.testing.assert_array_equal(_bits(_qbf16.bf16_qmatmul(x, q, nthreads=nt)), _bits(y1))
    # a row's result does not depend on the other rows (n = 1 is the fused kernel)
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(_bits(_qbf16.bf16_qmatmul(x[i:i + 1], q, nthreads=2)),
                                      _bits(y1[i:i + 1]))


@needs_bf16
def test_special_values_match_emulation():
    x, q = _case((256, 8), FORMATS[0], 2)
    x = x.copy()
    x[0, :5] = [1e-39, -1e-39, 2.0 ** -126 * 0.999, 3e38, np.inf]    # denormal -> 0, overflow
    x[1, 7] = np.nan
    y = _qbf16.bf16_qmatmul(x, q)
    np.testing.assert_array_equal(y, _qbf16.bf16_qmatmul(x, q, emulate=True))
    assert np.all(np.isnan(y[1]))
    # values that bf16 rounds below 2^-126 count as zero: the same result as zeros
    x2 = x[:1].copy()
    x2[0, :5] = [1e-39, -1e-39, 2.0 ** -126 * 0.999, 0.0, 0.0]
    x3 = x2.copy()
    x3[0, :3] = 0.0
    np.testing.assert_array_equal(_bits(_qbf16.bf16_qmatmul(x2, q)),
                                  _bits(_qbf16.bf16_qmatmul(x3, q)))
    # tiny x: products and sums in the denormal range, flushed by the instruction and
    # by its emulation alike
    for scale in (2.0 ** -125, 2.0 ** -120, 1e-38):
        xs = (x[:1] * np.float32(scale)).astype(np.float32)
        xs[~np.isfinite(xs)] = 0
        y = _qbf16.bf16_qmatmul(xs, q)
        np.testing.assert_array_equal(_bits(y), _bits(_qbf16.bf16_qmatmul(xs, q, emulate=True)))


def test_reference_rounding():
    v = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, 1e-39,
                  np.inf], np.float32)
    np.testing.assert_array_equal(ref.to_bf16(v),
                                  np.array([1.0, 1.0, 1 + 2 ** -6, 1 + 2 ** -7, -2.5, 0.0,
                                            np.inf], np.float32))
    # the kernels' rounding of x is the reference's (before the below-2^-126 rule)
    rng = rng_for("bf16 rounding")
    a = (rng.standard_normal(4096) * 10.0 ** rng.integers(-30, 30, 4096)).astype(np.float32)
    bits = _qbf16.to_bf16_bits(a).astype(np.uint32) << 16
    np.testing.assert_array_equal(bits.view(np.float32), ref.to_bf16(a))
    assert 2.0 ** -9 < ref.nf4_unit_error() <= 2.0 ** -8


def test_bad_input():
    x, q = _case((128, 4), FORMATS[0], 1)
    f = _qbf16.bf16_qmatmul
    with pytest.raises(TypeError, match="x must be a float32"):
        f(x.astype(np.float64), q, emulate=True)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 128\)"):
        f(x[:, :64].copy(), q, emulate=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        f(np.asfortranarray(np.repeat(x, 3, 0)), q, emulate=True)
    with pytest.raises(TypeError, match="q must be a fastdl.quant.QuantizedTensor"):
        f(x, "q", emulate=True)
    with pytest.raises(ValueError, match="out must have shape"):
        f(x, q, out=np.empty((1, 5), np.float32), emulate=True)
    with pytest.raises(ValueError, match="nthreads"):
        f(x, q, nthreads=0, emulate=True)
    with pytest.raises(TypeError, match="emulate must be a bool"):
        f(x, q, emulate=1)
    q48 = quantize(np.ones((128, 4), np.float32), bits=4, scheme="nf4", block_size=48)
    with pytest.raises(ValueError, match="multiple of 32 or None.*got 48"):
        f(x, q48, emulate=True)
    with pytest.raises(ValueError, match="multiple of 32 or None.*got 48"):
        ref.bf16_qmatmul(x, q48)
    x0 = x.copy()
    f(x, q, out=np.empty((1, 4), np.float32), emulate=True)
    np.testing.assert_array_equal(x, x0)


def test_out_overlap():
    x, q = _case((64, 64), FORMATS[2], 1)
    with pytest.raises(ValueError, match="overlap"):
        _qbf16.bf16_qmatmul(x, q, out=x, emulate=True)


@pytest.mark.skipif(not has_simd("avx2"), reason="needs the avx2 level to pin")
@pytest.mark.parametrize("level", ["avx2", "scalar"])
def test_missing_feature_error(level):
    x, q = _case((128, 4), FORMATS[0], 1)
    want = (f"SIMD level pinned to {level}" if _qbf16.cpu_has_bf16()
            else "this CPU lacks AVX512-BF16 (vdpbf16ps)")
    with simd(level):
        ok, why = _qbf16.bf16_available()
        assert not ok and want in why
        with pytest.raises(ValueError, match=f"compute='bf16' cannot run: .*{want.split(' (')[0]}"):
            _qbf16.bf16_qmatmul(x, q)
        # the emulation needs no instruction
        y = _qbf16.bf16_qmatmul(x, q, emulate=True)
    assert _qbf16.bf16_available()[0] == _qbf16.cpu_has_bf16()
    np.testing.assert_array_equal(y, _qbf16.bf16_qmatmul(x, q, emulate=True))
