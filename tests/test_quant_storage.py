"""fastdl.quant storage: the packed nibble format and row sizes, int8 storage, bits per
parameter, ``nbytes``, the immutability of QuantizedTensor, and save / load (round trip
and every malformed or truncated file rejected).

Expected values are computed here independently of the library (Fractions, float64
NumPy, a packer/unpacker written from the fastdl.quant docstring).  Tests whose id
contains "cython" run the Cython kernels; the rest run the NumPy reference
(``-k "not cython"`` selects those alone).
"""

import copy
import io
import json

import numpy as np
import pytest

from fastdl.quant import QuantizedTensor, dequantize, quantize, row_bytes
from fastdl.testing import rng_for

from _quant_helpers import (FORMATS, assert_same, fmt_id, nibble_positions, stored_arrays, unpack,
                            weights)


def pack(codes):
    """int (rows, d_in) codes < 16 -> uint8 (rows, nbytes) with unused nibbles 0."""
    rows, d_in = codes.shape
    byte, shift = nibble_positions(d_in)
    nbytes = int(byte.max()) + 1
    out = np.zeros((rows, nbytes), np.uint8)
    low = shift == 0
    out[:, byte[low]] = codes[:, low]                   # each byte once per nibble half
    out[:, byte[~low]] |= (codes[:, ~low] << 4).astype(np.uint8)
    return out


# ---------------------------------------------------------------- sizes and packing

def test_row_bytes_literal():
    got = {d: row_bytes(d) for d in (1, 2, 3, 31, 32, 63, 64, 65, 66, 127, 128, 129, 4095, 4096)}
    assert got == {1: 1, 2: 1, 3: 2, 31: 16, 32: 16, 63: 32, 64: 32, 65: 33, 66: 33, 127: 64,
                   128: 64, 129: 65, 4095: 2048, 4096: 2048}
    for d in range(1, 300):
        assert row_bytes(d) == int(nibble_positions(d)[0].max()) + 1 == -(-d // 2)


def test_nibble_order_literal():
    # d_in = 65: one full group (value i low, i + 32 high) and a short group of 1 (byte 32).
    byte, shift = nibble_positions(65)
    assert (byte[0], shift[0]) == (0, 0) and (byte[31], shift[31]) == (31, 0)
    assert (byte[32], shift[32]) == (0, 4) and (byte[63], shift[63]) == (31, 4)
    assert (byte[64], shift[64]) == (32, 0)
    codes = np.arange(65).reshape(1, -1) % 16
    q = QuantizedTensor((65, 1), 4, "absmax", None, "nearest", pack(codes),
                        np.ones(1, np.float32))
    assert q.data[0, 0] == 0 | (32 % 16) << 4 and q.data[0, 1] == 1 | (33 % 16) << 4
    assert q.data[0, 32] == 64 % 16
    np.testing.assert_array_equal(dequantize(q)[:, 0], codes[0] - 8.0)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("d_in", [1, 3, 63, 64, 65, 127, 4095])
def test_packing_exact(backend, bits, d_in):
    qmax = 2 ** (bits - 1) - 1
    rng = rng_for("pack", bits, d_in)
    ints = rng.integers(-qmax, qmax + 1, (d_in, 3))
    ints[0, 0] = qmax                         # absmax = qmax * 0.25, Δ = 0.25 exactly
    w = ints * 0.25
    for rounding in ("nearest", "floor"):
        q = quantize(w, bits, block_size=None, rounding=rounding, backend=backend)
        assert q.data.dtype == np.uint8 and q.data.shape == (3, row_bytes(d_in))
        codes = (ints + 2 ** (bits - 1)).T
        np.testing.assert_array_equal(unpack(q.data, d_in), codes)
        np.testing.assert_array_equal(q.data, pack(codes))      # unused nibbles are 0
        np.testing.assert_array_equal(dequantize(q, backend=backend), w.astype(np.float32))


@pytest.mark.parametrize("bits", [5, 6, 7, 8])
def test_int8_storage(backend, bits):
    qmax = 2 ** (bits - 1) - 1
    ints = rng_for("int8", bits).integers(-qmax, qmax + 1, (65, 3))
    ints[5, 1] = -qmax
    q = quantize(ints * 0.5, bits, block_size=None, backend=backend)
    assert q.data.dtype == np.int8 and q.data.shape == (3, 65)
    np.testing.assert_array_equal(q.data, ints.T)


@pytest.mark.parametrize("kw, limit, exact", [
    (dict(bits=4, block_size=64), 4.5, 4 + 32 / 64),
    (dict(bits=4, scheme="nf4", double_quant=True), 4.13,
     4 + 8 / 64 + 32 * (1024 * 16 // 256) / 2 ** 20 + 32 / 2 ** 20),
    (dict(bits=8, block_size=64), 8.5, 8 + 32 / 64),
    (dict(bits=8, block_size=None), 8.0001, 8 + 32 / 2 ** 20),
], ids=["int4-b64", "nf4-dq", "int8-b64", "int8-tensor"])
def test_bits_per_param(backend, kw, limit, exact):
    w = rng_for("bpp").standard_normal((1024, 1024)).astype(np.float32)
    q = quantize(w, backend=backend, **kw)
    assert q.bits_per_param == pytest.approx(exact, rel=1e-12)
    assert q.bits_per_param <= limit
    assert q.nbytes == exact * 2 ** 20 / 8


@pytest.mark.parametrize("kw", FORMATS, ids=fmt_id)
@pytest.mark.parametrize("shape", [(65, 7), (3, 130), (1, 1)])
def test_nbytes_is_stored_arrays(kw, shape):
    q = quantize(weights(("nbytes",), shape), **kw)
    assert q.nbytes == sum(a.nbytes for a in stored_arrays(q).values())
    assert q.bits_per_param == 8 * q.nbytes / (shape[0] * shape[1])
    if not q.double_quant:
        assert q.scale_codes is None and q.scale_scales is None and q.scale_mean is None
    text = repr(q)
    assert text.startswith("QuantizedTensor(shape=") and str(shape) in text


# ---------------------------------------------------------------- immutability

@pytest.mark.parametrize("kw", [FORMATS[0], FORMATS[5], FORMATS[11]], ids=fmt_id)
def test_quantized_tensor_is_immutable(kw):
    q = quantize(weights(("imm",), (65, 7)), **kw)
    before = {n: getattr(q, n) for n in ("shape", "bits", "scheme", "block_size", "rounding",
                                         "double_quant")}
    for name in list(before) + ["data", "scales", "scale_codes", "scale_mean", "new_attr"]:
        with pytest.raises(AttributeError, match="immutable"):
            setattr(q, name, 3)
        if name != "new_attr":
            with pytest.raises(AttributeError, match="immutable"):
                delattr(q, name)
    assert {n: getattr(q, n) for n in before} == before
    arrays = stored_arrays(q)
    snapshot = {n: a.copy() for n, a in arrays.items()}
    for name, a in arrays.items():
        assert not a.flags.writeable, name
        with pytest.raises(ValueError, match="read-only"):
            a[...] = 1
        with pytest.raises(ValueError):
            a += 1
    for name, a in stored_arrays(q).items():
        np.testing.assert_array_equal(a, snapshot[name])
    if not q.double_quant:
        with pytest.raises(ValueError):
            q.block_scales()[...] = 0


def test_constructor_copies_its_arrays():
    data = np.arange(6, dtype=np.int8).reshape(2, 3)
    scales = np.ones((2, 2), np.float32)
    q = QuantizedTensor((3, 2), 8, "absmax", 2, "nearest", data, scales)
    data[...] = 0
    scales[...] = 5
    assert data.flags.writeable                      # the caller's arrays stay theirs
    np.testing.assert_array_equal(q.data, np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(q.scales, 1)
    with pytest.raises(ValueError, match="data must be a int8 array of shape \\(2, 3\\)"):
        QuantizedTensor((3, 2), 8, "absmax", 2, "nearest", data.astype(np.int16), scales)
    with pytest.raises(ValueError, match="scales"):
        QuantizedTensor((3, 2), 8, "absmax", 2, "nearest", data, scales[:, :1])


def test_quantized_tensor_copies():
    q = quantize(weights(("cp",), (65, 7)), 4, block_size=32)
    for c in (copy.copy(q), copy.deepcopy(q)):
        assert c.shape == q.shape
        np.testing.assert_array_equal(c.data, q.data)


# ---------------------------------------------------------------- save / load

@pytest.mark.parametrize("kw", FORMATS, ids=fmt_id)
def test_save_load_round_trip(tmp_path, kw):
    q = quantize(weights(("io", fmt_id(kw)), (130, 67)), **kw)
    path = tmp_path / "q.npz"
    q.save(path)
    assert_same(q, QuantizedTensor.load(path))
    assert_same(q, QuantizedTensor.load(str(path)))
    buf = io.BytesIO()
    q.save(buf)
    buf.seek(0)
    r = QuantizedTensor.load(buf)
    assert_same(q, r)
    assert np.array_equal(dequantize(r), dequantize(q))
    with open(path, "rb") as f:
        assert_same(q, QuantizedTensor.load(f))
    with np.load(path, allow_pickle=False) as z:                 # a plain npz, no pickle
        meta = json.loads(bytes(z["meta"]).decode())
    assert meta["format"] == "fastdl.QuantizedTensor" and meta["version"] == 2


def saved_bytes(**kw):
    q = quantize(weights(("bad",), (65, 7)), **(kw or dict(bits=4, block_size=32)))
    buf = io.BytesIO()
    q.save(buf)
    return buf.getvalue()


def npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def rewritten(change):
    """A saved file whose meta was changed by ``change(meta)``."""
    with np.load(io.BytesIO(saved_bytes())) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    change(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return npz_bytes(**arrays)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


GOOD = saved_bytes()
BAD_FILES = {
    "empty": b"",
    "truncated-10": GOOD[:10],
    "truncated-half": GOOD[:len(GOOD) // 2],
    "truncated-last-byte": GOOD[:-1],
    "random-bytes": rng_for("random-bytes").bytes(600),
    "npz-without-meta": npz_bytes(data=np.zeros((7, 33), np.uint8),
                                  scales=np.ones((7, 3), np.float32)),
    "version-3": rewritten(_set("version", 3)),
    "version-2-without-layout": rewritten(lambda m: m.pop("layout")),
    "version-0": rewritten(_set("version", 0)),
    "no-version": rewritten(lambda m: m.pop("version")),
    "wrong-format-tag": rewritten(_set("format", "something.else")),
    "bad-bits": rewritten(_set("bits", 9)),
    "bad-shape": rewritten(_set("shape", [65, 8])),
    "meta-not-json": npz_bytes(meta=np.frombuffer(b"{not json", np.uint8),
                               data=np.zeros((7, 33), np.uint8)),
    "pickle-in-npz": npz_bytes(meta=np.frombuffer(json.dumps({"format": "x"}).encode(),
                                                  np.uint8),
                               data=np.array([{"a": 1}, None], dtype=object)),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_load_rejects_bad_files(tmp_path, name):
    raw = BAD_FILES[name]
    path = tmp_path / "bad.npz"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="QuantizedTensor file"):
        QuantizedTensor.load(path)
    with pytest.raises(ValueError, match="QuantizedTensor file"):
        QuantizedTensor.load(io.BytesIO(raw))


def test_load_rejects_npy_file(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="QuantizedTensor file"):
        QuantizedTensor.load(path)


def test_load_every_truncation_is_value_error():
    raw = saved_bytes(bits=4, scheme="nf4", double_quant=True)
    assert_same(QuantizedTensor.load(io.BytesIO(raw)),
                quantize(weights(("bad",), (65, 7)), 4, scheme="nf4", double_quant=True))
    for cut in range(0, len(raw), 37):
        with pytest.raises(ValueError):
            QuantizedTensor.load(io.BytesIO(raw[:cut]))
