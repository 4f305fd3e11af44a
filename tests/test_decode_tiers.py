"""Every SIMD tier of the decoding kernels against the scalar twin, bitwise.

For float16, float32 and float64 and every tier that ``simd_levels()`` lists
(AVX2, AVX-512), at 1 and 2 threads: topk, log_softmax, beam_topk (normalized
or not), the float64 row offsets and the polynomial exp equal the scalar build
at 1 thread bit for bit (NaN payloads included), over row lengths that hit
every tail of the 8- and 16-lane loops with and without a main loop before
it, the statistics chunk edges and one vocabulary-sized row.
"""
import numpy as np
import pytest

from fastdl.decode import beam_topk, log_softmax, topk

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _decode  # noqa: E402
from fastdl.testing import rng_for, simd, simd_levels, threads  # noqa: E402

SIMD = simd_levels(scalar=False)     # every SIMD tier this machine runs
CHUNK = _decode.PARAMS["chunk"]
TAILS = list(range(1, 41)) + list(range(64, 129)) + [CHUNK - 1, CHUNK + 1, 50_257]
DTYPES = [pytest.param(np.float16, id="f16"), pytest.param(np.float32, id="f32"),
          pytest.param(np.float64, id="f64")]


def same(a, b):
    """bitwise equal, dtype and shape included"""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8),
                                                                         b.view(np.uint8))


def _offsets(x):
    if x.dtype == np.float16:
        return _decode._row_offsets_f16(x.view(np.uint16))
    return _decode._row_offsets(x)


def _tail_ops(dtype):
    rng = rng_for("tails", np.dtype(dtype).name)
    sdt = np.float32 if dtype == np.float16 else dtype      # float16 beams score in float32
    outs = []
    for n in TAILS:
        x = (rng.standard_normal((3, n)) * 4).astype(dtype)
        x[1, ::7] = -np.inf
        x[2, rng.integers(0, n, size=max(1, n // 9))] = np.round(x[2].max())   # ties at the top
        s = rng.standard_normal(3).astype(sdt)
        outs += list(topk(x, min(n, 5), backend="cython")) + [log_softmax(x, backend="cython")]
        for norm in (True, False):
            outs += list(beam_topk(x, s, min(3 * n, 7), normalize=norm, backend="cython"))
        outs.append(_offsets(x))
        if dtype != np.float16:
            outs.append(_decode._exp(np.linspace(-800, 710, n).astype(dtype)))
    x = np.zeros((2, 40), dtype)
    x[0, 33], x[1, 17] = np.nan, np.inf        # NaN / +inf in a masked tail
    outs += [_offsets(x), log_softmax(x, backend="cython")]
    return outs


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("level", SIMD)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_tier_every_tail_bitwise(dtype, level, nt):
    with simd("scalar"), threads(1):
        ref = _tail_ops(dtype)
    with simd(level), threads(nt):
        got = _tail_ops(dtype)
    assert len(ref) == len(got)
    for i, (p, q) in enumerate(zip(ref, got)):
        assert same(p, q), i
