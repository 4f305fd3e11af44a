"""fastdl.quant rounding: the absmax formula W~ = floor(W / Δ), Δ = max|W| / (2^(m-1) - 1)
worked by hand, round-trip error bounds for every bit width and block size, all-zero,
largest-finite and subnormal blocks, NF4 codes (nearest codebook entry, midpoints and
ties) and double quantization of the scales.

Expected values are computed here independently of the library (Fractions, float64
NumPy, a packer/unpacker written from the fastdl.quant docstring).  Tests whose id
contains "cython" run the Cython kernels; the rest run the NumPy reference
(``-k "not cython"`` selects those alone).
"""

from fractions import Fraction
from math import floor

import numpy as np
import pytest

from fastdl.quant import NF4_CODEBOOK, dequantize, nf4_thresholds, quantize, row_bytes
from fastdl.testing import rng_for

from _quant_helpers import codes_of, fmt_id, ints_of, weights


def scales_expected(q):
    """float32 (d_out, nblocks) block scales as the docstring defines them (dequantized
    with the documented float32 formula when double-quantized)."""
    if not q.double_quant:
        return q.scales.reshape(q.shape[1], q.nblocks) if q.block_size else q.scales.reshape(1, 1)
    u = np.arange(q.scale_codes.size)
    prod = (q.scale_codes.astype(np.float32) * q.scale_scales[u // 256]).astype(np.float32)
    return (prod + np.float32(q.scale_mean)).astype(np.float32).reshape(q.shape[1], q.nblocks)


def per_weight(s, d_in, block_size):
    """(d_out, nblocks) per-block values -> (d_in, d_out) per weight."""
    if block_size is None:
        return np.broadcast_to(s.reshape(1, 1), (d_in, 1))
    return np.repeat(s, block_size, axis=1)[:, :d_in].T


def dequant_expected(q):
    """float32 (d_in, d_out): scale * q (absmax) or scale * codebook[code] (NF4), in float32."""
    d_in, d_out = q.shape
    units = NF4_CODEBOOK[codes_of(q)] if q.scheme == "nf4" else ints_of(q).astype(np.float32)
    s = per_weight(scales_expected(q), d_in, q.block_size)
    return (s * units).astype(np.float32)


def step_down(am, qmax):
    """The largest float32 not above am / qmax (exact: float32 * qmax <= 127 is exact in
    float64)."""
    d = (am / np.float32(qmax)).astype(np.float32)
    high = d.astype(np.float64) * qmax > am.astype(np.float64)
    d[high] = np.nextafter(d[high], np.float32(0))
    return d


def absmax_scales(w32, block_size, qmax):
    """float32 (d_out, nblocks): absmax of the block / qmax rounded down to float32."""
    d_in, d_out = w32.shape
    bs = d_in if block_size is None else block_size
    cols = [np.abs(w32[b:b + bs]).max(axis=0) for b in range(0, d_in, bs)]
    am = np.stack(cols, axis=1).astype(np.float32)
    if block_size is None:
        am = am.max().reshape(1, 1)
    return step_down(am, qmax) if qmax else am


# ---------------------------------------------------------------- the document's formula by hand

# The document: W~ = floor(W / Δ), Δ = max|W| / (2^(m-1) - 1), per tensor.
HAND_W8 = [[1.0, -0.5, 0.25],
           [0.75, -1.0, 0.1]]          # 2 x 3; Δ = 1/127
HAND_Q8 = [[127, -64, 31],             # 127, -63.5, 31.75
           [95, -127, 12]]             # 95.25, -127, 12.7


HAND_W4 = [[0.7, -0.25],
           [0.33, -0.7],
           [-0.05, 0.45]]              # 3 x 2; Δ = 0.1
HAND_Q4 = [[7, -3],                    # 7, -2.5
           [3, -7],                    # 3.3, -7
           [-1, 4]]                    # -0.5, 4.5


# codes q + 8: column 0 -> 15, 11, 7; column 1 -> 5, 1, 12.  d_in = 3 is one short group,
# h = 2: byte 0 = value 0 | value 2 << 4, byte 1 = value 1 (high nibble 0).
HAND_DATA4 = [[15 | 7 << 4, 11],       # 127, 11
              [5 | 12 << 4, 1]]        # 197, 1


def doc_floor(w, bits):
    """The document's formula in exact rational arithmetic on the float32 weights."""
    w = [[Fraction(float(np.float32(v))) for v in row] for row in w]
    delta = max(abs(v) for row in w for v in row) / (2 ** (bits - 1) - 1)
    return [[floor(v / delta) for v in row] for row in w]


@pytest.mark.parametrize("w, expected, bits", [(HAND_W8, HAND_Q8, 8), (HAND_W4, HAND_Q4, 4)],
                         ids=["int8-2x3", "int4-3x2"])
def test_document_formula_by_hand(backend, w, expected, bits):
    assert doc_floor(w, bits) == expected          # the literal table is the formula
    q = quantize(np.array(w), bits, scheme="absmax", block_size=None, rounding="floor",
                 backend=backend)
    assert q.shape == (len(w), len(w[0])) and q.block_size is None and q.nblocks == 1
    assert q.scales.dtype == np.float32 and q.scales.shape == (1,)
    w32 = np.array(w, np.float32)
    exact = Fraction(float(np.abs(w32).max())) / (2 ** (bits - 1) - 1)
    delta = np.float32(float(exact))
    if Fraction(float(delta)) > exact:                 # the largest float32 not above it
        delta = np.nextafter(delta, np.float32(0))
    assert q.scales[0] == delta
    assert q.scales[0] == pytest.approx(float(np.abs(w32).max()) / (2 ** (bits - 1) - 1),
                                        rel=1e-7)
    if bits == 8:
        assert q.data.dtype == np.int8
        np.testing.assert_array_equal(q.data, np.array(expected).T)   # one row per column
    else:
        assert q.data.dtype == np.uint8 and q.data.shape == (2, row_bytes(3)) == (2, 2)
        np.testing.assert_array_equal(q.data, np.array(HAND_DATA4, np.uint8))
    np.testing.assert_array_equal(ints_of(q), expected)
    deq = dequantize(q, backend=backend)
    assert deq.dtype == np.float32 and deq.shape == w32.shape
    np.testing.assert_array_equal(deq, (delta * np.array(expected, np.float32)))
    np.testing.assert_allclose(deq, np.array(expected) * (float(np.abs(w32).max())
                                                          / (2 ** (bits - 1) - 1)), rtol=1e-6)


def test_document_formula_by_hand_int4_max_one(backend):
    # Δ = 1/7: 7, -3.5, 1.75, 5.25, -7, 0.7
    expected = [[7, -4, 1], [5, -7, 0]]
    assert doc_floor(HAND_W8, 4) == expected
    q = quantize(np.array(HAND_W8), 4, block_size=None, rounding="floor", backend=backend)
    np.testing.assert_array_equal(ints_of(q), expected)


@pytest.mark.parametrize("bits", [
    2, 3, 4, 5, 6, 7, 8])
def test_floor_absmax_element_gets_qmax(backend, bits):
    # The document: ⌊max / (max / qmax)⌋ = qmax, so the block maximum dequantizes to itself.
    rng = rng_for("absmax-element", bits)
    w = rng.uniform(-1, 1, (64 * 8, 64)).astype(np.float32)
    w[::64] = np.abs(w[::64]) + 1.0           # the first value of every block is its max
    q = quantize(w, bits, block_size=64, rounding="floor", backend=backend)
    got = ints_of(q)[::64]
    np.testing.assert_array_equal(got, 2 ** (bits - 1) - 1)


# ---------------------------------------------------------------- round-trip bounds

@pytest.mark.parametrize("rounding", ["floor", "nearest"])
@pytest.mark.parametrize("block_size", [None, 2, 3, 32, 64, 100, 128])
@pytest.mark.parametrize("bits", range(2, 9))
def test_round_trip_bounds(backend, bits, block_size, rounding):
    qmax = 2 ** (bits - 1) - 1
    for d_in, d_out in [(1, 5), (3, 4), (63, 3), (65, 5), (4095, 2)]:
        w = weights(("rt", bits, block_size, rounding), (d_in, d_out))
        w_before = w.copy()
        q = quantize(w, bits, block_size=block_size, rounding=rounding, backend=backend)
        np.testing.assert_array_equal(w, w_before)
        assert (q.bits, q.scheme, q.block_size, q.rounding, q.double_quant) == \
            (bits, "absmax", block_size, rounding, False)
        nb = 1 if block_size is None else -(-d_in // block_size)
        assert q.nblocks == nb
        assert q.scales.shape == ((1,) if block_size is None else (d_out, nb))
        # Δ = float32(absmax of the block) / float32(qmax), exactly
        np.testing.assert_array_equal(scales_expected(q), absmax_scales(w, block_size, qmax))
        ints = ints_of(q)
        assert ints.min() >= -qmax and ints.max() <= qmax
        deq = dequantize(q, backend=backend)
        assert deq.dtype == np.float32 and deq.shape == (d_in, d_out)
        np.testing.assert_array_equal(deq, dequant_expected(q))
        delta = per_weight(scales_expected(q), d_in, block_size).astype(np.float64)
        err = w.astype(np.float64) - deq
        tol = 1e-6 * np.abs(w.astype(np.float64))
        if rounding == "floor":
            assert np.all(err >= -tol), f"d_in={d_in}: W - deq < 0"
            assert np.all(err < delta + tol), f"d_in={d_in}: W - deq >= Δ"
        else:
            assert np.all(np.abs(err) <= delta / 2 + tol), f"d_in={d_in}: |W - deq| > Δ/2"


@pytest.mark.parametrize("scheme_kw", [dict(bits=b) for b in range(2, 9)] +
                         [dict(bits=4, scheme="nf4")], ids=fmt_id)
@pytest.mark.parametrize("double_quant", [False, True])
def test_all_zero_blocks(backend, scheme_kw, double_quant):
    w = weights(("zero", fmt_id(scheme_kw)), (130, 4))
    w[:, 1] = 0                 # a whole column
    w[:64, 2] = 0               # its first block
    w[64:128, 3] = -0.0         # a middle block of negative zeros
    kw = dict(scheme_kw, block_size=64, double_quant=double_quant)
    q = quantize(w, backend=backend, **kw)
    zero_code = 7 if q.scheme == "nf4" else (0 if q.bits > 4 else 2 ** (q.bits - 1))
    codes = codes_of(q)
    zero = w == 0
    assert np.all(codes[zero] == zero_code)
    if not double_quant:
        s = q.scales
        assert s[1].tolist() == [0, 0, 0] and s[2, 0] == 0 and s[3, 1] == 0
        assert np.all(s[0] > 0)
    deq = dequantize(q, backend=backend)
    assert np.isfinite(deq).all()
    np.testing.assert_array_equal(deq[zero], 0)     # code 0 / NF4 0.0 whatever the scale
    # the whole tensor zero, per tensor and block-wise
    z = np.zeros((70, 3))
    for bs in ([None] if q.scheme == "absmax" and not double_quant else []) + [64]:
        qz = quantize(z, backend=backend, **dict(kw, block_size=bs))
        assert np.all(codes_of(qz) == zero_code)
        assert np.all(qz.block_scales() == 0)
        d = dequantize(qz, backend=backend)
        assert np.isfinite(d).all() and np.all(d == 0)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("per_tensor", [True, False])
def test_half_rounds_away_from_zero(backend, bits, per_tensor):
    qmax = 2 ** (bits - 1) - 1
    k = np.arange(qmax)                          # k + 0.5 < qmax
    col = np.concatenate([[qmax], k + 0.5, -(k + 0.5), [0.0]]) * 0.25   # Δ = 0.25 exactly
    w = np.stack([col, -col], axis=1)
    bs = None if per_tensor else len(col)
    near = quantize(w, bits, block_size=bs, rounding="nearest", backend=backend)
    flo = quantize(w, bits, block_size=bs, rounding="floor", backend=backend)
    assert np.all(near.block_scales() == 0.25)
    want_near = np.concatenate([[qmax], k + 1, -(k + 1), [0]])
    want_floor = np.concatenate([[qmax], k, -(k + 1), [0]])
    np.testing.assert_array_equal(ints_of(near)[:, 0], want_near)
    np.testing.assert_array_equal(ints_of(near)[:, 1], -want_near)
    np.testing.assert_array_equal(ints_of(flo)[:, 0], want_floor)
    # -col: floor(-(k+.5)) = -k-1, floor(k+.5) = k, and -qmax stays -qmax
    np.testing.assert_array_equal(ints_of(flo)[:, 1],
                                  np.concatenate([[-qmax], -(k + 1), k, [0]]))


@pytest.mark.parametrize("rounding", ["nearest", "floor"])
@pytest.mark.parametrize("bits", [
    2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("block_size", [None, 64])
def test_largest_finite_weights_stay_finite(backend, bits, rounding, block_size):
    big = np.finfo(np.float32).max
    w = np.array([[big, -big], [big / 3, 1.0]], np.float32)
    q = quantize(w, bits, rounding=rounding, block_size=block_size, backend=backend)
    with np.errstate(over="ignore"):
        deq = dequantize(q, backend=backend)
    assert np.isfinite(deq).all(), deq
    err = np.abs(w.astype(np.float64) - deq.astype(np.float64))
    assert np.all(err <= q.block_scales().T.astype(np.float64) * (1 + 1e-6))


@pytest.mark.parametrize("units", [1, 190])
def test_subnormal_block_round_trip(backend, units):
    # documented limit: a subnormal scale has few significant bits, so the ±Δ/2 bound of
    # "nearest" is not promised there; values stay finite, keep their sign and their size
    tiny = np.float32(2.0 ** -149)                     # the smallest subnormal
    w = np.array([[units * tiny], [tiny]], np.float32)
    q = quantize(w, 8, rounding="nearest", backend=backend)
    deq = dequantize(q, backend=backend).astype(np.float64)
    assert np.isfinite(deq).all() and np.all(deq >= 0)
    assert np.all(np.abs(w.astype(np.float64) - deq) <= units * float(tiny))


# ---------------------------------------------------------------- NF4

def test_nf4_codebook_and_thresholds():
    cb = NF4_CODEBOOK
    assert cb.dtype == np.float32 and cb.shape == (16,) and not cb.flags.writeable
    assert cb[0] == -1 and cb[7] == 0 and cb[15] == 1 and np.all(np.diff(cb) > 0)
    with pytest.raises(ValueError):
        cb[3] = 0
    t = nf4_thresholds()
    mid = (cb[:-1].astype(np.float64) + cb[1:]) / 2
    assert t.dtype == np.float32 and t.shape == (15,)
    assert np.all(t.astype(np.float64) <= mid)
    assert np.all(np.nextafter(t, np.float32(np.inf)).astype(np.float64) > mid)


def nearest_code(v):
    """argmin |v - codebook| in float64, ties to the lower index (argmin takes the first)."""
    cb = NF4_CODEBOOK.astype(np.float64)
    return np.argmin(np.abs(np.asarray(v, np.float64)[..., None] - cb), axis=-1)


@pytest.mark.parametrize("shape", [(1, 3), (3, 5), (63, 4), (64, 2), (65, 5), (300, 7)])
def test_nf4_codes_are_nearest_codebook_entry(backend, shape):
    d_in, d_out = shape
    w = weights(("nf4", shape), shape)
    q = quantize(w, 4, scheme="nf4", backend=backend)
    assert (q.bits, q.scheme, q.block_size) == (4, "nf4", 64)       # default block 64
    nb = -(-d_in // 64)
    assert q.scales.shape == (d_out, nb) and q.data.shape == (d_out, row_bytes(d_in))
    # scale = absmax of the block
    np.testing.assert_array_equal(q.scales, absmax_scales(w, 64, 0))
    s = per_weight(q.scales, d_in, 64).astype(np.float64)
    v64 = w.astype(np.float64) / s
    codes = codes_of(q)
    cb = NF4_CODEBOOK.astype(np.float64)
    mid = (cb[:-1] + cb[1:]) / 2
    near_mid = np.abs(v64[..., None] - mid).min(axis=-1) < 1e-6
    assert near_mid.mean() < 0.01
    np.testing.assert_array_equal(codes[~near_mid], nearest_code(v64)[~near_mid])
    # next to a midpoint the float32 quotient decides (the format's arithmetic)
    v32 = (w / per_weight(q.scales, d_in, 64)).astype(np.float32)
    np.testing.assert_array_equal(codes, nearest_code(v32))
    # the block maximum is ±1
    assert np.all(np.isin(codes[np.abs(w) == s], [0, 15]))
    deq = dequantize(q, backend=backend)
    np.testing.assert_array_equal(deq, (per_weight(q.scales, d_in, 64)
                                        * NF4_CODEBOOK[codes]).astype(np.float32))


@pytest.mark.parametrize("scale", [1.0, 0.125, 8.0])
def test_nf4_midpoints_and_ties(backend, scale):
    """w / s straddling every midpoint: at or just below it -> lower code, just above ->
    upper (an exactly representable midpoint is a tie and goes to the lower code)."""
    cb = NF4_CODEBOOK.astype(np.float64)
    mid = (cb[:-1] + cb[1:]) / 2
    lo = mid.astype(np.float32)
    lo[lo.astype(np.float64) > mid] = np.nextafter(lo[lo.astype(np.float64) > mid],
                                                   np.float32(-np.inf))
    hi = np.nextafter(lo, np.float32(np.inf))
    ties = lo.astype(np.float64) == mid
    assert ties.sum() >= 5                             # ties really happen
    assert np.all(lo.astype(np.float64) <= mid) and np.all(hi.astype(np.float64) > mid)
    col = np.concatenate([[1.0], lo, hi, [-1.0]]).astype(np.float32) * np.float32(scale)
    q = quantize(col.reshape(-1, 1), 4, scheme="nf4", block_size=len(col), backend=backend)
    assert q.scales[0, 0] == np.float32(scale)
    codes = codes_of(q)[:, 0]
    k = np.arange(15)
    np.testing.assert_array_equal(codes, np.concatenate([[15], k, k + 1, [0]]))


def test_double_quant_reconstructs_scales(backend):
    d_in, d_out = 640, 30                      # 10 blocks x 30 columns = 300 scales: 2 groups
    rng = rng_for("dq")
    w = (rng.standard_normal((d_in, d_out)) * 10.0 ** rng.uniform(-2, 1, d_out)).astype(
        np.float32)
    for kw in (dict(bits=4, scheme="nf4"), dict(bits=6, block_size=64)):
        q = quantize(w, double_quant=True, backend=backend, **kw)
        plain = quantize(w, backend=backend, **kw)
        assert q.double_quant and q.scales is None and q.block_size == 64
        assert q.scale_codes.dtype == np.int8 and q.scale_codes.shape == (300,)
        assert q.scale_scales.dtype == np.float32 and q.scale_scales.shape == (2,)
        assert q.scale_mean.dtype == np.float32 and q.scale_mean.shape == ()
        np.testing.assert_array_equal(q.data, plain.data)   # codes use the exact scales
        s = plain.scales.reshape(-1).astype(np.float64)      # row-major: u = j*nblocks + b
        mean = s.mean()
        assert float(q.scale_mean) == pytest.approx(mean, rel=1e-6)
        g = np.arange(300) // 256
        d2 = q.scale_scales.astype(np.float64)
        for k in range(2):
            assert d2[k] == pytest.approx(np.abs(s[g == k] - mean).max() / 127, rel=1e-6)
        rec = q.block_scales()
        assert rec.dtype == np.float32 and rec.shape == (d_out, 10)
        np.testing.assert_array_equal(rec, scales_expected(q))        # the documented formula
        err = np.abs(rec.reshape(-1).astype(np.float64) - s)
        assert np.all(err <= d2[g] / 2 + 1e-6 * (np.abs(s) + abs(mean)))
        assert err.max() > 0                                          # really quantized
        np.testing.assert_array_equal(dequantize(q, backend=backend), dequant_expected(q))
