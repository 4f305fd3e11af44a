"""The public side of the quantized-matmul paths: the signmax / minmax schemes,
float16 scales, the LUT layout, format-2 files (and format-1 files still loading),
and ``qmatmul``'s ``activations`` / ``compute`` arguments and their errors."""
import io
import json

import numpy as np
import pytest

from fastdl import quant
from fastdl.quant import QuantizedTensor, dequantize, qmatmul, quantize
from fastdl.testing import rng_for

FORMATS = [
    dict(bits=4, scheme="signmax", block_size=32, scale_dtype="float16"),
    dict(bits=4, scheme="minmax", block_size=32, scale_dtype="float16"),
    dict(bits=3, scheme="signmax", block_size=64),
    dict(bits=2, scheme="minmax", block_size=None),
    dict(bits=8, scheme="signmax", block_size=32),
    dict(bits=6, scheme="minmax", block_size=48),
    dict(bits=4, block_size=64, layout="lut"),
    dict(bits=4, scheme="nf4", block_size=64, double_quant=True, layout="lut"),
    dict(bits=2, scheme="minmax", block_size=32, layout="lut"),
]
IDS = ["-".join(f"{k}={v}" for k, v in f.items()) for f in FORMATS]


def _w(key, shape=(100, 37)):
    return (rng_for(key).standard_normal(shape) * 0.05).astype(np.float32)


def _bound(x, q, transpose=False):
    """float32 rounding of a dot product of these terms, with a margin of 8."""
    w = np.abs(dequantize(q, np.float64))
    a = np.abs(x.astype(np.float64)) @ (w.T if transpose else w)
    k = w.shape[1] if transpose else w.shape[0]
    return 8 * (k + 4) * np.finfo(np.float32).eps * a + 1e-30


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("backend", ["numpy", "cython"])
@pytest.mark.parametrize("transpose", [False, True])
def test_exact_path_of_every_format(fmt, backend, transpose):
    q = quantize(_w(("fmt", str(fmt))), **fmt)
    k = q.shape[1] if transpose else q.shape[0]
    for n in (1, 3, 40):
        x = rng_for(("x", n, str(fmt))).standard_normal((n, k)).astype(np.float32)
        w64 = dequantize(q, np.float64)
        ref = x.astype(np.float64) @ (w64.T if transpose else w64)
        y = qmatmul(x, q, transpose=transpose, backend=backend)
        assert y.dtype == np.float32
        assert (np.abs(y - ref) <= _bound(x, q, transpose)).all()


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_save_load_round_trip_keeps_every_field(fmt):
    q = quantize(_w(("io", str(fmt))), **fmt)
    buf = io.BytesIO()
    q.save(buf)
    buf.seek(0)
    r = QuantizedTensor.load(buf)
    for name in ("shape", "bits", "scheme", "block_size", "scale_dtype", "layout",
                 "double_quant"):
        assert getattr(r, name) == getattr(q, name), name
    assert np.array_equal(r.data, q.data)
    assert np.array_equal(dequantize(r), dequantize(q))
    assert r.nbytes == q.nbytes


def test_a_version_1_file_still_loads():
    q = quantize(_w("v1"), 4, block_size=32)
    meta = {"format": "fastdl.QuantizedTensor", "version": 1, "shape": list(q.shape),
            "bits": 4, "scheme": "absmax", "block_size": 32, "rounding": "nearest",
            "double_quant": False}
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), data=q.data,
             scales=q.scales)
    buf.seek(0)
    r = QuantizedTensor.load(buf)
    assert r.layout == "rows" and r.scale_dtype == "float32"
    assert np.array_equal(dequantize(r), dequantize(q))


def test_float16_scales_are_stored_in_two_bytes():
    w = _w("f16", (128, 16))
    q16 = quantize(w, 4, scheme="signmax", block_size=32, scale_dtype="float16")
    q32 = quantize(w, 4, scheme="signmax", block_size=32)
    assert q16.scales.dtype == np.float32
    assert np.array_equal(q16.scales.astype(np.float16).astype(np.float32), q16.scales)
    assert q32.nbytes - q16.nbytes == 2 * q16.scales.size
    assert q16.bits_per_param == pytest.approx(4.5)
    qm = quantize(w, 4, scheme="minmax", block_size=32, scale_dtype="float16")
    assert qm.bits_per_param == pytest.approx(5.0)


def test_signmax_uses_every_level_and_minmax_spans_the_block():
    w = _w("levels", (64, 8))
    q = quantize(w, 4, scheme="signmax", block_size=64)
    v = dequantize(q)
    d = q.scales[:, 0]
    units = np.round(v / d).astype(int)
    assert units.min() == -8 and units.max() <= 7
    # the block's largest magnitude lands on -8 d exactly
    big = np.abs(w).argmax(axis=0)
    assert np.array_equal(units[big, np.arange(8)], np.full(8, -8))
    qm = quantize(w, 4, scheme="minmax", block_size=64)
    vm = dequantize(qm)
    assert np.allclose(vm.min(axis=0), w.min(axis=0), atol=1e-7)
    assert (np.abs(vm - w) <= qm.scales[:, 0] / 2 * (1 + 1e-5) + 1e-7).all()


def test_lut_layout_round_trips_and_keeps_values():
    w = _w("lut", (100, 37))
    for fmt in (dict(bits=2), dict(bits=3), dict(bits=4), dict(bits=4, scheme="nf4")):
        q = quantize(w, block_size=32, **fmt)
        lq = q.to_layout("lut")
        assert lq.layout == "lut" and lq.data.shape != q.data.shape
        back = lq.to_layout("rows")
        assert np.array_equal(back.data, q.data)
        assert np.array_equal(dequantize(lq), dequantize(q))
        assert lq.to_layout("lut") is lq


def test_repr_names_scheme_layout_and_scale_dtype():
    q = quantize(_w("repr"), 4, scheme="minmax", block_size=32, scale_dtype="float16",
                 layout="lut")
    assert "int4 minmax" in repr(q) and "lut layout" in repr(q) and "float16" in repr(q)


@pytest.mark.parametrize("kw, match", [
    (dict(bits=4, scheme="signmax", double_quant=True), "double_quant=True applies"),
    (dict(bits=4, scale_dtype="float16"), "scale_dtype='float16' applies"),
    (dict(bits=4, scale_dtype="bfloat16"), "scale_dtype must be one of"),
    (dict(bits=8, layout="lut"), "layout='lut' holds 2..4-bit codes"),
    (dict(bits=4, layout="columns"), "layout must be one of"),
    (dict(bits=4, scheme="minmax", rounding="floor"), "rounding='floor' does not apply"),
])
def test_quantize_rejects_bad_format_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        quantize(_w("bad"), **kw)


def test_qmatmul_rejects_bad_path_arguments():
    q = quantize(_w("args", (64, 8)), 4, block_size=32)
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match="activations must be None .exact. or 'int8', got 'fp8'"):
        qmatmul(x, q, activations="fp8")
    with pytest.raises(ValueError, match="compute must be None .exact. or 'bf16', got 'fp16'"):
        qmatmul(x, q, compute="fp16")
    with pytest.raises(ValueError, match="two different paths"):
        qmatmul(x, q, activations="int8", compute="bf16")
    with pytest.raises(ValueError, match="transpose=True"):
        qmatmul(np.ones((2, 8), np.float32), q, transpose=True, activations="int8")
    nf4 = quantize(_w("args", (64, 8)), 4, scheme="nf4", block_size=32)
    with pytest.raises(ValueError, match="NF4 codes stand for codebook values"):
        qmatmul(x, nf4, activations="int8")
    odd = quantize(_w("args", (64, 8)), 4, block_size=48)
    for kw in (dict(activations="int8"), dict(compute="bf16")):
        with pytest.raises(ValueError, match="multiple of 32 or per-tensor scales, got "
                                             "block_size=48"):
            qmatmul(x, odd, **kw)


def test_module_lists_the_new_choices():
    assert quant.SCALE_DTYPES == ("float32", "float16")
    assert quant.LAYOUTS == ("rows", "lut")
    assert quant.ACTIVATIONS == (None, "int8") and quant.COMPUTES == (None, "bf16")


@pytest.mark.parametrize("name, kw", [
    ("Q4_0", dict(bits=4, scheme="signmax")), ("Q4_1", dict(bits=4, scheme="minmax")),
    ("Q8_0", dict(bits=8, scheme="absmax"))])
def test_gguf_blocks_through_the_tensor(name, kw):
    gq = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType as T
    w = _w(("gguf", name), (96, 20))                       # fastdl (d_in, d_out)
    raw = gq.quantize(np.ascontiguousarray(w.T), T[name])  # GGUF (d_out, d_in)
    q = QuantizedTensor.from_gguf(raw, name, (20, 96))
    assert q.shape == (96, 20) and q.block_size == 32 and q.scale_dtype == "float16"
    assert q.scheme == kw["scheme"] and q.bits == kw["bits"]
    assert np.array_equal(dequantize(q), gq.dequantize(raw, T[name]).T)
    data, type_name, shape = q.to_gguf()
    assert type_name == name and shape == (20, 96) and np.array_equal(data, raw)
    # fastdl's own quantizer with llama.cpp's rule writes the same bytes
    mine = quantize(w, block_size=32, scale_dtype="float16", **kw)
    assert np.array_equal(mine.to_gguf()[0], raw)
    # every path runs the imported weights; the LUT layout too (4 bits)
    x = rng_for(("gguf-x", name)).standard_normal((3, 96)).astype(np.float32)
    ref = x.astype(np.float64) @ dequantize(q, np.float64)
    assert (np.abs(qmatmul(x, q) - ref) <= _bound(x, q)).all()
    if q.bits == 4:
        lq = q.to_layout("lut")
        assert (np.abs(qmatmul(x, lq) - ref) <= _bound(x, q)).all()
        assert np.array_equal(lq.to_gguf()[0], raw)


def test_to_gguf_refuses_what_gguf_cannot_hold():
    q = quantize(_w("nogguf", (64, 4)), 4, block_size=64)
    with pytest.raises(ValueError, match="block_size must be 32"):
        q.to_gguf()
    dq = quantize(_w("nogguf", (64, 4)), 4, block_size=32, double_quant=True)
    with pytest.raises(ValueError, match="8-bit ones"):
        dq.to_gguf()


def test_lut_tensors_export_what_their_rows_form_exports():
    q = quantize(_w("bnb-lut", (128, 16)), 4, scheme="nf4", block_size=64)
    lq = q.to_layout("lut")
    (w1, s1), (w2, s2) = q.to_bnb(), lq.to_bnb()
    assert np.array_equal(np.asarray(w1), np.asarray(w2))
    assert s1.keys() == s2.keys()
    assert all(np.array_equal(np.asarray(s1[k]), np.asarray(s2[k])) for k in s1)


def test_raw_kernels_read_signmax_as_the_absmax_codes_they_are():
    cy = pytest.importorskip("fastdl._backends.cython._quant")
    from fastdl import _qpaths
    q = quantize(_w("raw-signmax", (64, 8)), 4, scheme="signmax", block_size=32)
    x = rng_for("raw-signmax-x").standard_normal((2, 64)).astype(np.float32)
    a, b = np.empty((2, 8), np.float32), np.empty((2, 8), np.float32)
    cy.qmatmul(x, q, False, a, 1)
    cy.qmatmul(x, _qpaths.kernel_view(q), False, b, 1)
    assert np.array_equal(a, b)
