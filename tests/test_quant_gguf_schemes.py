"""llama.cpp's block rules in fastdl's layout (fastdl._backends.numpy.quant_schemes),
against scalar ports of llama.cpp's C loops (quantize_row_q4_0_ref, _q4_1_ref,
_q8_0_ref) written here one value at a time, for every bit width, block size
(ragged last blocks, per tensor) and scale dtype.  The gguf peer tests are in
test_quant_gguf.py."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from _quant_helpers import unpack
from fastdl._backends.numpy.quant_schemes import (dequantize_schemes, quantize_minmax,
                                                  quantize_q8_0, quantize_scheme,
                                                  quantize_signmax)
from fastdl.testing import rng_for

F32 = np.float32


def _spans(d_in, d_out, block_size):
    """[(column or None for all, start, stop)] of every block, in storage order."""
    if block_size is None:
        return [(None, 0, d_in)]
    bs = min(block_size, d_in)
    return [(j, s, min(s + bs, d_in)) for j in range(d_out) for s in range(0, d_in, bs)]


def _vals(wt, j, s, e):
    return [F32(v) for v in (wt.reshape(-1) if j is None else wt[j, s:e])]


def _scale_of(d, scale_dtype):
    return F32(np.float16(d)) if scale_dtype == "float16" else F32(d)


def _scaled(x, d):
    """llama.cpp's x * (1/d); x / d where 1/d overflows float32 (the documented rule)."""
    if d == 0:
        return F32(0)
    with np.errstate(over="ignore"):
        inv = F32(1) / d
    return F32(x / d) if math.isinf(inv) else F32(x * inv)


def reference(w, bits, block_size, scale_dtype, rule):
    """(codes (d_out, d_in) of 0..2^bits-1, scales, mins) one value at a time."""
    wt = np.asarray(w, F32).T
    d_out, d_in = wt.shape
    h = 2 ** (bits - 1)
    codes = np.zeros(d_out * d_in, np.int64)
    out_codes = codes.reshape(d_out, d_in)
    scales, mins = [], []
    for j, s, e in _spans(d_in, d_out, block_size):
        xs = _vals(wt, j, s, e)
        if rule == "signmax":
            amax, mx = abs(xs[0]), xs[0]        # gguf.quants' argmax: a zero block's first
            for v in xs:                        # value (C starts at +0.0); strict <: the
                if amax < abs(v):               # first one on a tie
                    amax, mx = abs(v), v
            d = F32(mx / F32(-h))
            cs = [min(2 ** bits - 1, max(0, math.trunc(float(_scaled(x, d) + F32(h + 0.5)))))
                  for x in xs]
        elif rule == "minmax":
            lo, hi = min(xs), max(xs)
            d = F32(F32(hi - lo) / F32(2 ** bits - 1))
            cs = [min(2 ** bits - 1, max(0, math.trunc(float(_scaled(F32(x - lo), d) + F32(0.5)))))
                  for x in xs]
            mins.append(_scale_of(lo, scale_dtype))
        else:
            d = F32(max(abs(v) for v in xs) / F32(127))
            cs = []
            for x in xs:
                v = _scaled(x, d)
                r = math.floor(abs(v)) + (1 if abs(v) - math.floor(abs(v)) >= 0.5 else 0)
                cs.append(int(math.copysign(r, v)) + 128)
        scales.append(_scale_of(d, scale_dtype))
        if j is None:
            codes[:] = cs
        else:
            out_codes[j, s:e] = cs
    shape = (1,) if block_size is None else (d_out, -1)
    as_array = (lambda a: np.array(a, F32).reshape(shape))
    return out_codes, as_array(scales), as_array(mins) if mins else None


def stored_codes(data, bits, d_in):
    """Raw codes 0..2^bits-1 back from fastdl's storage (the test's own unpacking)."""
    return unpack(data, d_in) if bits <= 4 else data.astype(np.int64) + 2 ** (bits - 1)


def run(rule, w, bits, block_size, scale_dtype):
    if rule in ("signmax", "minmax"):
        got = quantize_scheme(w, bits, rule, block_size, scale_dtype)
        direct = (quantize_minmax if rule == "minmax" else quantize_signmax)(
            w, bits, block_size, scale_dtype)
        assert all(np.array_equal(a, b) for a, b in zip(got, direct))
        return got
    return (*quantize_q8_0(w, block_size, scale_dtype), None)


def same_bits(a, b):
    return a.shape == b.shape and (a.view(np.uint32) == b.view(np.uint32)).all()


def same_but_zero_sign(a, b):
    """Bitwise equal except that a zero may have either sign: NumPy's min of -0.0 and
    +0.0 (what gguf.quants uses too) does not say which it returns."""
    nz = a != 0
    return a.shape == b.shape and (a == b).all() and same_bits(a[nz], b[nz])


def check_against_reference(rule, w, bits, block_size, scale_dtype):
    data, scales, mins = run(rule, w, bits, block_size, scale_dtype)
    codes, want_scales, want_mins = reference(w, bits, block_size, scale_dtype, rule)
    d_in, d_out = w.shape
    assert data.dtype == (np.uint8 if bits <= 4 else np.int8)
    np.testing.assert_array_equal(stored_codes(data, bits, d_in), codes)
    assert same_bits(scales, want_scales), (scales, want_scales)
    if rule == "minmax":
        assert same_but_zero_sign(mins, want_mins)
    # values: one float32 product (plus the min) per value, from the test's own codes
    bs = d_in if block_size is None else min(block_size, d_in)
    per = lambda a: np.repeat(a.reshape(-1, 1) if block_size is None else a, bs, axis=1)[:, :d_in]
    c = codes.astype(F32)
    want = (per(want_scales) * c + per(want_mins) if rule == "minmax"
            else per(want_scales) * (c - F32(2 ** (bits - 1))))
    scheme = "absmax" if rule == "q8_0" else rule
    got = dequantize_schemes(data, scales, (d_in, d_out), bits, scheme, block_size, mins)
    want = np.broadcast_to(want, got.shape).astype(F32)
    assert same_but_zero_sign(got, want) if rule == "minmax" else same_bits(got, want)
    return data, scales, mins, got


RULES = [("signmax", b) for b in range(2, 9)] + [("minmax", b) for b in range(2, 9)] + \
    [("q8_0", 8)]


@pytest.mark.parametrize("rule,bits", RULES)
@pytest.mark.parametrize("shape,block_size", [((64, 3), 32), ((70, 2), 32), ((33, 4), 5),
                                              ((130, 2), 64), ((7, 3), None), ((10, 1), 200)])
@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
def test_matches_scalar_port(rule, bits, shape, block_size, scale_dtype):
    w = (rng_for("ref", rule, bits, shape, block_size).standard_normal(shape) * 0.05).astype(F32)
    data, scales, mins, _ = check_against_reference(rule, w, bits, block_size, scale_dtype)
    nb = 1 if block_size is None else -(-shape[0] // min(block_size, shape[0]))
    assert scales.shape == ((1,) if block_size is None else (shape[1], nb))
    assert scales.flags.c_contiguous and scales.dtype == F32
    if scale_dtype == "float16":            # the stored scales are float16 values
        assert same_bits(scales.astype(np.float16).astype(F32), scales)


@given(d_in=st.integers(1, 70), d_out=st.integers(1, 3),
       rb=st.sampled_from(RULES), block_size=st.sampled_from([None, 2, 3, 8, 32, 33, 64, 100]),
       scale_dtype=st.sampled_from(["float16", "float32"]),
       kind=st.sampled_from(["gauss", "ties", "zeros", "tiny", "signs"]),
       seed=st.integers(0, 2 ** 16))
@settings(max_examples=150, deadline=None)
def test_matches_scalar_port_hypothesis(d_in, d_out, rb, block_size, scale_dtype, kind, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d_in, d_out))
    if kind == "ties":                  # small integers: x*id lands on .5 boundaries
        w = rng.integers(-8, 9, (d_in, d_out)) * 0.25
    elif kind == "zeros":
        w[rng.random(w.shape) < 0.7] = 0
    elif kind == "tiny":                # subnormal blocks: 1/d overflows, x/d is used
        w = w * 1e-39
    elif kind == "signs":               # +a and -a of the same magnitude in one block
        w = np.where(rng.random(w.shape) < 0.5, -1.5, 1.5) * (rng.random(w.shape) < 0.8)
    w = w.astype(F32)
    check_against_reference(rb[0], w, rb[1], block_size, scale_dtype)


@pytest.mark.parametrize("bits", range(2, 9))
def test_signmax_uses_every_level_and_keeps_the_extreme(bits):
    h = 2 ** (bits - 1)
    w = (rng_for("levels", bits).standard_normal((4096, 2)) * 3).astype(F32)
    ks = np.abs(w[:-1]).argmax(axis=0)
    w[-1] = -w[ks, [0, 1]]                  # the opposite extreme: clipped to code 2^bits - 1
    data, scales = quantize_signmax(w, bits, 4096, "float32")
    codes = stored_codes(data, bits, 4096)
    vals = dequantize_schemes(data, scales, w.shape, bits, "signmax", 4096)
    for j, k in enumerate(ks):
        assert codes[j, k] == 0 and vals[j, k] == w[k, j]       # d * -h is the block's extreme
        assert codes[j, -1] == 2 ** bits - 1 and scales[j, 0] == w[k, j] / -h
        err = np.abs(vals[j] - w[:, j])
        inside = w[:, j] * np.sign(w[k, j]) >= -np.abs(w[k, j]) * (h - 1) / h
        assert err[inside].max() <= abs(scales[j, 0]) * 0.5 * (1 + 1e-4)
        assert err.max() <= abs(scales[j, 0]) * (1 + 1e-4)     # the clipped far end


@pytest.mark.parametrize("bits", [2, 4, 5, 8])
def test_minmax_keeps_the_min_and_rounds_to_nearest(bits):
    w = (rng_for("mm", bits).standard_normal((256, 3)) + 1.5).astype(F32)   # all positive
    data, scales, mins = quantize_minmax(w, bits, 64, "float32")
    vals = dequantize_schemes(data, scales, w.shape, bits, "minmax", 64, mins)
    wt = w.T.reshape(3, 4, 64)
    assert same_bits(mins, wt.min(axis=2))
    np.testing.assert_array_equal(vals.reshape(3, 4, 64).min(axis=2), wt.min(axis=2))
    err = np.abs(vals - w.T).reshape(3, 4, 64).max(axis=2)
    assert (err <= scales * 0.5 * (1 + 1e-4) + 1e-6).all()


def test_zero_blocks():
    w = np.zeros((64, 2), F32)
    w[32:, 1] = 0.5
    data, scales = quantize_signmax(w, 4, 32, "float16")
    assert np.signbit(scales[0]).all() and (scales[0] == 0).all()    # 0 / -8 is -0.0 (as GGUF)
    assert scales[1, 0] == 0 and scales[1, 1] == F32(-0.0625)
    vals = dequantize_schemes(data, scales, w.shape, 4, "signmax", 32)
    np.testing.assert_array_equal(vals, w.T)
    data, scales, mins = quantize_minmax(w, 4, 32, "float16")
    assert (scales == 0).all() and mins[1, 1] == 0.5 and (mins.reshape(-1)[:3] == 0).all()
    vals = dequantize_schemes(data, scales, w.shape, 4, "minmax", 32, mins)
    np.testing.assert_array_equal(vals, w.T)


def test_ragged_block_ignores_padding():
    """A short last block's min / max are its own values (not a zero pad)."""
    w = np.full((40, 1), 3.0, F32)
    w[32:, 0] = np.linspace(5, 6, 8)
    data, scales, mins = quantize_minmax(w, 4, 32, "float32")
    assert mins[0, 1] == 5 and scales[0, 1] == F32(F32(1) / F32(15))
    vals = dequantize_schemes(data, scales, w.shape, 4, "minmax", 32, mins)
    np.testing.assert_allclose(vals[0], w[:, 0], atol=scales[0, 1] / 2 * 1.001)


def test_float16_overflow_is_an_error():
    w = np.zeros((32, 1), F32)
    w[3] = 7e5                              # d = 7e5 / -8 = -87500: beyond float16
    with pytest.raises(ValueError, match="float16.*65504"):
        quantize_signmax(w, 4, 32, "float16")
    data, scales = quantize_signmax(w, 4, 32, "float32")
    assert scales[0, 0] == F32(-87500)
    w[3] = 8 * 49152                        # d = -49152 is a float16 value
    assert quantize_signmax(w, 4, 32, np.float16)[1][0, 0] == F32(-49152)
    w2 = np.full((32, 1), -7e4, F32)        # the minimum overflows float16, the scale (0) not
    with pytest.raises(ValueError, match="minimum"):
        quantize_minmax(w2, 4, 32, "float16")
    with pytest.raises(ValueError, match="float16"):
        quantize_q8_0(np.full((32, 1), 1e7, F32))


@pytest.mark.parametrize("fn", ["signmax", "minmax", "q8_0"])
@pytest.mark.parametrize("bad,msg", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_weights(fn, bad, msg):
    w = np.ones((64, 2), F32)
    w[40, 1] = bad
    with pytest.raises(ValueError, match=f"finite.*got {msg}"):
        run(fn, w, 8, 32, "float32")
    big = np.ones((64, 2))
    big[3, 0] = 1e39 if msg == "Inf" else np.nan       # float64 beyond float32
    with pytest.raises(ValueError, match=f"finite.*got {msg}"):
        run(fn, big, 8, None, "float32")


def test_range_overflowing_float32():
    w = np.array([[3e38], [-3e38]], F32)
    with pytest.raises(ValueError, match="overflows float32"):
        quantize_minmax(w, 4, None, "float32")
    data, scales = quantize_signmax(w, 4, None, "float32")      # one value's magnitude: fine
    assert scales.shape == (1,) and scales[0] == F32(F32(3e38) / F32(-8))


@pytest.mark.parametrize("kw,err,msg", [
    (dict(bits=1), ValueError, "bits must be >= 2"), (dict(bits=9), ValueError, "bits"),
    (dict(bits=True), TypeError, "bits"), (dict(bits=4.0), TypeError, "bits"),
    (dict(block_size=1), ValueError, "block_size"), (dict(block_size=0), ValueError, "block_size"),
    (dict(block_size=2.5), TypeError, "block_size"),
    (dict(scale_dtype="bfloat16"), ValueError, "scale_dtype"),
    (dict(scale_dtype=np.float64), ValueError, "scale_dtype"),
    (dict(w=np.ones(32, F32)), ValueError, "2-D"),
    (dict(w=np.ones((0, 3), F32)), ValueError, "2-D"),
    (dict(w=[[1.0]]), TypeError, "NumPy"), (dict(w=np.array([["a"]])), TypeError, "real"),
])
@pytest.mark.parametrize("fn", [quantize_signmax, quantize_minmax])
def test_bad_arguments(fn, kw, err, msg):
    args = dict(w=np.ones((32, 2), F32), bits=4, block_size=32, scale_dtype="float16")
    args.update(kw)
    with pytest.raises(err, match=msg):
        fn(**args)


def test_input_unchanged_and_other_dtypes():
    w = rng_for("in").standard_normal((70, 3))
    keep = w.copy()
    a = quantize_minmax(w, 4, 32, "float16")
    np.testing.assert_array_equal(w, keep)
    b = quantize_minmax(w.astype(F32), 4, 32, "float16")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    ints = quantize_signmax(np.arange(64).reshape(32, 2), 8, None, "float32")
    assert ints[1][0] == F32(63 / -128)


def test_quantize_scheme_names():
    with pytest.raises(ValueError, match="scheme must be one of 'signmax', 'minmax'"):
        quantize_scheme(np.ones((4, 1), F32), 4, "absmax", None)


def test_dequantize_schemes_checks_its_arrays():
    data, scales, mins = quantize_minmax(np.ones((64, 2), F32), 4, 32, "float16")
    shape = (64, 2)
    with pytest.raises(ValueError, match="scheme"):
        dequantize_schemes(data, scales, shape, 4, "nf4", 32)
    with pytest.raises(ValueError, match="mins must be a float32 array of shape"):
        dequantize_schemes(data, scales, shape, 4, "minmax", 32)
    with pytest.raises(ValueError, match="mins belong"):
        dequantize_schemes(data, scales, shape, 4, "signmax", 32, mins)
    with pytest.raises(ValueError, match=r"scales must be a float32 array of shape \(2, 2\)"):
        dequantize_schemes(data, scales[:, :1].copy(), shape, 4, "minmax", 32, mins)
    with pytest.raises(ValueError, match=r"data must be a uint8 array of shape \(2, 32\)"):
        dequantize_schemes(data[:, :16], scales, shape, 4, "minmax", 32, mins)
    with pytest.raises(ValueError, match="data must be a int8"):
        dequantize_schemes(data, scales, shape, 8, "absmax", 32)


@pytest.mark.parametrize("rule,bits", [("signmax", 4), ("minmax", 4), ("q8_0", 8)])
def test_subnormal_blocks_divide(rule, bits):
    """|d| below ~2.9e-39: 1/d overflows float32, so codes come from x / d (finite, no
    warning, the scalar port's codes); float16 scales round such blocks to 0."""
    w = (rng_for("tiny", rule).standard_normal((64, 2)) * 1e-39).astype(F32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, scales, _, vals = check_against_reference(rule, w, bits, 32, "float32")
    assert np.isfinite(vals).all() and (np.abs(vals - w.T) <= np.abs(scales).max()).all()
    _, scales16, _, _ = check_against_reference(rule, w, bits, 32, "float16")
    assert (scales16 == 0).all()
