"""GGUF Q4_0 / Q4_1 / Q8_0 interop (fastdl._gguf) and llama.cpp's block rules
(quant_schemes) against the installed gguf package (gguf.quants is the reference:
bytes and dequantized values compared bit for bit).  The error tests need no peer."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastdl import _gguf
from fastdl._backends.numpy.quant_schemes import (dequantize_schemes, quantize_minmax,
                                                  quantize_q8_0, quantize_signmax)
from fastdl.testing import rng_for

TYPES = ["Q4_0", "Q4_1", "Q8_0"]
SHAPES = [(1, 32), (3, 64), (17, 96), (5, 160), (64, 4096)]


def gguf_quants():
    return pytest.importorskip("gguf.quants")


def qtype(name):
    return getattr(pytest.importorskip("gguf").GGMLQuantizationType, name)


def torch_weights(key, shape, std=0.02):
    """(out, in) Gaussian weights, some rows scaled by 10**±2 and one block all zero."""
    rng = rng_for("gguf", key, shape)
    w = rng.standard_normal(shape) * std * 10.0 ** rng.uniform(-2, 2, (shape[0], 1))
    w[0, :32] = 0
    return w.astype(np.float32)


def values_of(f):
    return dequantize_schemes(f["data"], f["scales"], f["shape"], f["bits"], f["scheme"],
                              f["block_size"], f["mins"])


def ours(name, wt):
    """Our quantizers on fastdl's (d_in, d_out) weight, as fields."""
    d_in, d_out = wt.shape
    mins = None
    if name == "Q4_0":
        (data, scales), scheme, bits = quantize_signmax(wt, 4, 32, "float16"), "signmax", 4
    elif name == "Q4_1":
        (data, scales, mins), scheme, bits = quantize_minmax(wt, 4, 32, "float16"), "minmax", 4
    else:
        (data, scales), scheme, bits = quantize_q8_0(wt, 32, "float16"), "absmax", 8
    return dict(shape=(d_in, d_out), bits=bits, scheme=scheme, block_size=32,
                scale_dtype="float16", data=data, scales=scales, mins=mins)


def same_bits(a, b):
    return a.shape == b.shape and (a.view(np.uint32) == b.view(np.uint32)).all()


def check(name, w):
    """Every agreement with gguf.quants for one (out, in) weight."""
    gq = gguf_quants()
    b = gq.quantize(w, qtype(name))
    f = _gguf.from_gguf_fields(b, name, w.shape)
    want = gq.dequantize(b, qtype(name))
    assert same_bits(values_of(f), want)                       # (d_out, d_in): fastdl's .T
    out = _gguf.to_gguf_bytes(f)
    assert out.dtype == np.uint8 and out.shape == b.shape and (out == b).all()
    mine = ours(name, np.ascontiguousarray(w.T))
    assert (_gguf.to_gguf_bytes(mine) == b).all()
    for k in ("data", "scales", "mins"):
        assert (f[k] is None and mine[k] is None) or np.array_equal(
            f[k].view(np.uint8), mine[k].view(np.uint8)), k
    return f


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gguf_quants_bitwise(name, shape):
    f = check(name, torch_weights(name, shape))
    d_out, d_in = shape
    assert f["shape"] == (d_in, d_out) and f["block_size"] == 32
    assert f["scales"].shape == (d_out, d_in // 32) and f["scales"].dtype == np.float32
    assert (f["mins"] is not None) == (name == "Q4_1")


@pytest.mark.parametrize("name", TYPES)
def test_ties_zeros_and_signs(name):
    """Small integers put x*id on .5 boundaries; ±a of equal magnitude, -0.0 and zero
    blocks exercise the sign of d and the first-of-a-tie rule."""
    rng = rng_for("ties", name)
    w = (rng.integers(-8, 9, (6, 128)) * 0.125).astype(np.float32)
    w[1] = np.where(np.arange(128) % 2, 1.5, -1.5)
    w[2, :64] = -0.0
    w[3, 32:64] = 0
    w[4] = np.float32(2.0) ** -20 * rng.integers(-3, 4, 128)
    check(name, w)


@given(d_out=st.integers(1, 4), nb=st.integers(1, 5), name=st.sampled_from(TYPES),
       logstd=st.floats(-6, 3), seed=st.integers(0, 2 ** 16))
@settings(max_examples=60, deadline=None)
def test_gguf_quants_bitwise_hypothesis(d_out, nb, name, logstd, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((d_out, 32 * nb)) * 10.0 ** logstd).astype(np.float32)
    check(name, w)


@pytest.mark.parametrize("name", TYPES)
def test_type_names_and_data_forms(name):
    gq = gguf_quants()
    w = torch_weights("forms", (3, 64))
    b = gq.quantize(w, qtype(name))
    want = _gguf.from_gguf_fields(b, name, (3, 64))
    ids = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8}
    for t, data in [(name.lower(), b.reshape(-1)), (qtype(name), b.tobytes()),
                    (ids[name], bytearray(b.tobytes())), (name, b.reshape(1, 3, -1))]:
        got = _gguf.from_gguf_fields(data, t, [3, 64])
        for k in ("data", "scales"):
            assert np.array_equal(got[k], want[k])
    assert _gguf.gguf_type_of(want) == name


def test_gguf_file_round_trip(tmp_path):
    """Through a real GGUF file: GGUFReader's shape is ggml's (d_in, d_out) order, the
    reverse of the NumPy shape from_gguf_fields takes."""
    gguf = pytest.importorskip("gguf")
    w = torch_weights("file", (5, 96))
    writer = gguf.GGUFWriter(str(tmp_path / "w.gguf"), "llama")
    for name in TYPES:
        writer.add_tensor(name, gguf.quants.quantize(w, qtype(name)), raw_dtype=qtype(name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for t in gguf.GGUFReader(str(tmp_path / "w.gguf")).tensors:
        f = _gguf.from_gguf_fields(t.data, t.tensor_type, tuple(int(s) for s in t.shape[::-1]))
        assert f["shape"] == (96, 5)
        assert same_bits(values_of(f), gguf.quants.dequantize(t.data, qtype(t.name)))


def test_rms_error_of_signmax_vs_absmax():
    """Q4_0's rule uses all 16 levels (q = -8 at the block extreme): on N(0, 0.02^2)
    weights its RMS error is about 11% below fastdl's 4-bit absmax at the same block
    size (32), and below absmax at the same storage (4.5 bits: block 64)."""
    from fastdl.quant import quantize
    w = (rng_for("rms").standard_normal((1024, 1024)) * 0.02).astype(np.float32)

    def rms(v):
        return float(np.sqrt(np.mean((v.astype(np.float64) - w.astype(np.float64).T) ** 2)))

    data, scales = quantize_signmax(w, 4, 32, "float16")
    sign = rms(dequantize_schemes(data, scales, w.shape, 4, "signmax", 32))
    ab32 = rms(quantize(w, 4, block_size=32, backend="numpy").dequantize(backend="numpy").T)
    ab64 = rms(quantize(w, 4, block_size=64, backend="numpy").dequantize(backend="numpy").T)
    assert 1.6e-3 < sign < 1.8e-3 and 1.85e-3 < ab32 < 2.05e-3 and 2.05e-3 < ab64 < 2.25e-3
    assert sign < 0.9 * ab32


# ---------------------------------------------------------------- bad input (no peer)

def q4_0_bytes(d_out=2, d_in=64):
    """Hand-made Q4_0 bytes: d = 0.5 (float16 0x3800) and codes 0..15 repeated."""
    blk = np.concatenate([np.array([0x00, 0x38], np.uint8),
                          (np.arange(16) | (np.arange(16)[::-1] << 4)).astype(np.uint8)])
    return np.tile(blk, d_out * d_in // 32).reshape(d_out, -1)


def test_hand_made_q4_0_layout():
    """byte i of a block holds value i (low nibble) and value i + 16 (high)."""
    f = _gguf.from_gguf_fields(q4_0_bytes(1, 32), "Q4_0", (1, 32))
    vals = values_of(f)[0]
    codes = np.concatenate([np.arange(16), np.arange(16)[::-1]])
    np.testing.assert_array_equal(vals, 0.5 * (codes - 8))
    assert (_gguf.to_gguf_bytes(f) == q4_0_bytes(1, 32)).all()


@pytest.mark.parametrize("args,err,msg", [
    ((q4_0_bytes(), "Q5_K", (2, 64)), ValueError, "Q4_0, Q4_1, Q8_0.*got 'Q5_K'"),
    ((q4_0_bytes(), 12, (2, 64)), ValueError, "ggml type 12"),
    ((q4_0_bytes(), True, (2, 64)), TypeError, "type_name"),
    ((q4_0_bytes(), 4.0, (2, 64)), TypeError, "type_name"),
    ((q4_0_bytes(), "Q4_0", (2, 48)), ValueError, "multiple of 32"),
    ((q4_0_bytes(), "Q4_0", (2, 64, 1)), ValueError, r"\(d_out, d_in\)"),
    ((q4_0_bytes(), "Q4_0", (0, 64)), ValueError, "positive"),
    ((q4_0_bytes(), "Q4_0", 64), TypeError, "shape"),
    ((q4_0_bytes(), "Q4_0", (3, 64)), ValueError, "3 rows of 36 bytes"),
    ((q4_0_bytes(), "Q4_1", (2, 64)), ValueError, "40 bytes"),
    ((q4_0_bytes().reshape(4, 18), "Q4_0", (2, 64)), ValueError, r"shape \(4, 18\)"),
    ((q4_0_bytes().astype(np.int8), "Q4_0", (2, 64)), TypeError, "uint8"),
    (([1, 2, 3], "Q4_0", (2, 64)), TypeError, "uint8 array or bytes"),
])
def test_from_gguf_bad_input(args, err, msg):
    with pytest.raises(err, match=msg):
        _gguf.from_gguf_fields(*args)


@pytest.mark.parametrize("half,what", [(0x7C00, "scale"), (0xFE00, "scale"), (0xFC00, "min")])
def test_non_finite_block_scales(half, what):
    b = np.zeros((2, 40), np.uint8)
    at = 2 if what == "min" else 0
    b[1, 20 + at:22 + at] = [half & 255, half >> 8]        # row 1, block 1
    with pytest.raises(ValueError, match=f"non-finite block {what}.*row 1, block 1"):
        _gguf.from_gguf_fields(b, "Q4_1", (2, 64))


def test_to_gguf_bad_fields():
    f = _gguf.from_gguf_fields(q4_0_bytes(), "Q4_0", (2, 64))
    cases = [
        (dict(bits=3), "got 3-bit 'signmax'"), (dict(scheme="nf4"), "4-bit 'nf4'"),
        (dict(block_size=64), "block_size must be 32"),
        (dict(scales=f["scales"] * np.float32(1.0001)), "not a float16 value"),
        (dict(scales=f["scales"].astype(np.float64)), "float32 array of shape"),
        (dict(scheme="minmax"), "mins must be a float32"),
        (dict(data=f["data"][:, :16]), r"uint8 array of shape \(2, 32\)"),
        (dict(shape=(64,)), r"\(d_in, d_out\)"),
        (dict(shape=(48, 2)), "multiple of 32"),
    ]
    for change, msg in cases:
        with pytest.raises(ValueError, match=msg):
            _gguf.to_gguf_bytes({**f, **change})
    with pytest.raises(ValueError, match="lack"):
        _gguf.to_gguf_bytes({k: v for k, v in f.items() if k != "scales"})
    with pytest.raises(TypeError, match="mapping"):
        _gguf.to_gguf_bytes([f])
    bad = f["scales"].copy()
    bad[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"non-finite scales\[1, 0\] = inf"):
        _gguf.to_gguf_bytes({**f, "scales": bad})


def test_fastdl_absmax_exports_as_q4_0_and_q8_0():
    """absmax codes fit Q4_0 / Q8_0 exactly once the scales are float16 values."""
    from fastdl.quant import quantize
    w = (rng_for("abs").standard_normal((64, 3))).astype(np.float32)
    q = quantize(w, 4, block_size=32, backend="numpy")
    f = dict(shape=q.shape, bits=4, scheme="absmax", block_size=32, data=q.data,
             scales=q.scales.astype(np.float16).astype(np.float32))
    back = _gguf.from_gguf_fields(_gguf.to_gguf_bytes(f), "Q4_0", (3, 64))
    assert np.array_equal(back["data"], q.data) and same_bits(back["scales"], f["scales"])
    with pytest.raises(ValueError, match="not a float16 value"):
        _gguf.to_gguf_bytes({**f, "scales": q.scales})
    q8 = quantize(w, 8, block_size=32, backend="numpy")
    f8 = dict(f, bits=8, data=q8.data, scales=q8.scales.astype(np.float16).astype(np.float32))
    back = _gguf.from_gguf_fields(_gguf.to_gguf_bytes(f8), "Q8_0", (3, 64))
    assert np.array_equal(back["data"], q8.data) and back["scheme"] == "absmax"
