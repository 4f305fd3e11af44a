"""QuantizedTensor.load on damaged and foreign files: always a ValueError that says what
the file is not, never a MemoryError, OverflowError, tokenize.TokenError,
NotImplementedError or RuntimeError, and nothing allocated from a header before it is
checked against the bytes in the file."""
import io
import json
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from fastdl.quant import QuantizedTensor, quantize

from fastdl.testing import rng_for

Q = quantize(rng_for("files").standard_normal((65, 7)), 4, block_size=32)
QDQ = quantize(rng_for("files-dq").standard_normal((130, 3)), 4, scheme="nf4", double_quant=True)
NOT_OURS = "is not a fastdl QuantizedTensor file"


def saved(q=Q) -> bytes:
    buf = io.BytesIO()
    q.save(buf)
    return buf.getvalue()


def load_bytes(raw: bytes):
    return QuantizedTensor.load(io.BytesIO(raw))


def npy(header: str, payload: bytes = b"", version=1) -> bytes:
    """An .npy entry with a header written by hand (padded as numpy pads it)."""
    h = header.encode("latin1")
    start = 10 if version == 1 else 12
    h += b" " * ((-(start + len(h) + 1)) % 64) + b"\n"
    size = struct.pack("<H" if version == 1 else "<I", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + size + h + payload


def entries(raw: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return {n: z.read(n) for n in z.namelist()}


def rezip(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def with_entry(name, data, raw=None) -> bytes:
    m = entries(saved() if raw is None else raw)
    m[name] = data
    return rezip(m)


def patch_headers(raw: bytes, local_off: int, central_off: int, value: int, size=2) -> bytes:
    """Write ``value`` at an offset of every local (PK\\3\\4) and central (PK\\1\\2) header."""
    b = bytearray(raw)
    fmt = "<H" if size == 2 else "<I"
    for sig, off in ((b"PK\x03\x04", local_off), (b"PK\x01\x02", central_off)):
        i = b.find(sig)
        while i >= 0:
            b[i + off:i + off + size] = struct.pack(fmt, value)
            i = b.find(sig, i + 4)
    return bytes(b)


def meta_entry(**change) -> bytes:
    with np.load(io.BytesIO(saved())) as z:
        meta = json.loads(bytes(z["meta"]).decode())
    meta.update(change)
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return buf.getvalue()


def assert_not_ours(raw, *match):
    with pytest.raises(ValueError, match=NOT_OURS) as info:
        load_bytes(raw)
    msg = str(info.value)
    assert "allow_pickle" not in msg and "KeyError" not in msg
    for m in match:
        assert m in msg, msg
    return msg


# ---------------------------------------------------------------- damage modes of the report

def test_unknown_compression_method():
    raw = patch_headers(saved(), 8, 10, 99)
    assert_not_ours(raw, "compression method 99")


def test_encrypted_flag():
    raw = patch_headers(saved(), 6, 8, 0x1)
    assert_not_ours(raw, "encrypted")
    assert_not_ours(patch_headers(saved(), 6, 8, 0x40), "zip flags 0x40")   # strong encryption


@pytest.mark.parametrize("shape", ["(1099511627776,)", "(65536, 65536, 65536)",
                                   "(8589934592,)", "(7, 1099511627776)"])
def test_huge_declared_shape_allocates_nothing(shape):
    raw = with_entry("data.npy", npy(f"{{'descr': '|u1', 'fortran_order': False, "
                                     f"'shape': {shape}, }}", bytes(7 * 33)))
    tracemalloc.start()
    try:
        assert_not_ours(raw, "'data'")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_huge_shape_in_meta_allocates_nothing():
    raw = with_entry("meta.npy", meta_entry(shape=[2 ** 40, 2 ** 40]))
    tracemalloc.start()
    try:
        assert_not_ours(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    for shape in ([10 ** 400, 7], [1e308, 7], [-65, 7], [65], [65, 7, 1], "65x7", [True, 7]):
        assert_not_ours(with_entry("meta.npy", meta_entry(shape=shape)))


@pytest.mark.parametrize("header", [
    "{'descr': '|u1', 'fortran_order': False, 'shape': (7, 33",          # tokenize.TokenError
    "{'descr': '|u1', 'fortran_order': False, 'shape': (7, 33), ",
    "{'descr': '|u1', 'fortran_order': False}",
    "{'descr': '|u1', 'fortran_order': False, 'shape': (7, 33), 'shape': (7, 33)}",
    "{'descr': '|u1', 'fortran_order': False, 'shape': (7, 33), 'extra': 1}",
    "{'descr': '|u1', 'fortran_order': 0, 'shape': (7, 33)}",
    "{'descr': '|u1', 'fortran_order': False, 'shape': (7, 33" + "0" * 5000 + ")}",
    "{'descr': '|u1', 'fortran_order': False, 'shape': (" + "(" * 500 + ")}",
    "{'descr': '|u1', 'fortran_order': False, 'shape': (7, -33)}",
    "{'descr': '|u1', 'fortran_order': False, 'shape': (7.0, 33)}",
    "{'descr': [('a', '|u1')], 'fortran_order': False, 'shape': (7, 33)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (7, 33)}",
    "{'descr': '|O', 'fortran_order': False, 'shape': (7, 33)}",
    "__import__('os').system('echo hi')",
    "",
])
def test_broken_npy_headers(header):
    assert_not_ours(with_entry("data.npy", npy(header, bytes(7 * 33))), "'data'")


def test_npy_header_length_beyond_the_entry():
    good = entries(saved())["data.npy"]
    for hlen in (0xFFFF, len(good)):
        bad = good[:8] + struct.pack("<H", hlen) + good[10:]
        assert_not_ours(with_entry("data.npy", bad), "'data'")
    v2 = good[:6] + b"\x02\x00" + struct.pack("<I", 2 ** 32 - 1) + good[10:]
    assert_not_ours(with_entry("data.npy", v2), "'data'")
    assert_not_ours(with_entry("data.npy", good[:6] + b"\x09\x00" + good[8:]), "version 9")


def test_npy_versions_2_and_3_and_fortran_order_still_read():
    data = Q.data
    for version in (2, 3):
        raw = with_entry("data.npy", npy("{'descr': '|u1', 'fortran_order': False, "
                                         f"'shape': {data.shape}, }}", data.tobytes(), version))
        np.testing.assert_array_equal(load_bytes(raw).data, data)
    raw = with_entry("data.npy", npy("{'descr': '|u1', 'fortran_order': True, "
                                     f"'shape': {data.shape}, }}", data.T.tobytes()))
    np.testing.assert_array_equal(load_bytes(raw).data, data)
    # big-endian scales convert
    m = entries(saved())
    buf = io.BytesIO()
    np.save(buf, Q.scales.astype(">f4"))
    m["scales.npy"] = buf.getvalue()
    np.testing.assert_array_equal(load_bytes(rezip(m)).scales, Q.scales)


def test_deflated_archive_reads_and_a_lying_size_does_not():
    raw = saved(QDQ)
    buf = io.BytesIO()
    with np.load(io.BytesIO(raw)) as z:
        np.savez_compressed(buf, **{k: z[k] for k in z.files})
    r = load_bytes(buf.getvalue())
    np.testing.assert_array_equal(r.data, QDQ.data)
    # the uncompressed size field of every entry claims 4 GiB: ratio beyond deflate's
    lie = patch_headers(buf.getvalue(), 22, 24, 2 ** 32 - 1, size=4)
    assert_not_ours(lie)


def test_every_flipped_byte_is_value_error_or_the_same_tensor():
    raw = saved()
    entry = entries(raw)["data.npy"]
    start = raw.find(entry)                 # the data entry: .npy header and codes
    checked = set(range(start, start + len(entry)))
    for i in range(len(raw)):
        b = bytearray(raw)
        b[i] ^= 0xFF
        try:
            r = load_bytes(bytes(b))
        except ValueError as exc:
            assert NOT_OURS in str(exc)
            continue
        # only a field nobody reads (a timestamp, zip64 placeholders) may change
        assert i not in checked, i
        assert r.shape == Q.shape and r.data.tobytes() == Q.data.tobytes()
        assert r.scales.tobytes() == Q.scales.tobytes()


def test_every_truncation_is_value_error():
    raw = saved(QDQ)
    for cut in range(0, len(raw), 7):
        assert_not_ours(raw[:cut])


def test_duplicate_unknown_and_missing_entries():
    m = entries(saved())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in m.items():
            z.writestr(name, data)
        with pytest.warns(UserWarning, match="Duplicate"):
            z.writestr("data.npy", m["data.npy"])
    assert_not_ours(buf.getvalue(), "unexpected archive entry 'data.npy'")
    assert_not_ours(with_entry("extra.npy", m["data.npy"]), "expected")
    assert_not_ours(with_entry("notes.txt", b"hi"), "unexpected archive entry 'notes.txt'")
    del m["scales.npy"]
    assert_not_ours(rezip(m), "expected")


def test_meta_damage():
    assert_not_ours(with_entry("meta.npy", npy("{'descr': '|u1', 'fortran_order': False, "
                                               "'shape': (9,), }", b"{not json")), "JSON")
    deep = b"[" * 100000 + b"]" * 100000
    assert_not_ours(with_entry("meta.npy", npy("{'descr': '|u1', 'fortran_order': False, "
                                               f"'shape': ({len(deep)},), }}", deep)))
    for change in (dict(version=3), dict(version="1"), dict(bits=9), dict(bits=4.0),
                   dict(scheme="int4"), dict(block_size=0), dict(block_size=2 ** 80),
                   dict(rounding=None), dict(double_quant=1), dict(format="other")):
        assert_not_ours(with_entry("meta.npy", meta_entry(**change)))
    assert_not_ours(with_entry("meta.npy", meta_entry(version=3)), "format version 3")


# ---------------------------------------------------------------- foreign files

def test_plain_npz_names_the_missing_meta(tmp_path):
    p = tmp_path / "plain.npz"
    np.savez(p, a=np.zeros(3), b=np.ones(2))
    with pytest.raises(ValueError, match=r"is not a fastdl QuantizedTensor file \(no 'meta' "
                                         r"entry; the archive holds 'a', 'b'\)"):
        QuantizedTensor.load(p)


def test_npy_file(tmp_path):
    p = tmp_path / "w.npy"
    np.save(p, np.zeros(3))
    with pytest.raises(ValueError, match=NOT_OURS + r".*a single NumPy \.npy array"):
        QuantizedTensor.load(p)


def test_pickle_containing_npz(tmp_path):
    p = tmp_path / "pickled.npz"
    np.savez(p, meta=np.array([{"format": "fastdl.QuantizedTensor"}], dtype=object))
    assert_not_ours(p.read_bytes(), "entry 'meta' holds pickled Python objects")
    p2 = tmp_path / "pickled2.npz"
    with np.load(io.BytesIO(saved())) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["data"] = np.array([{"a": 1}, None], dtype=object)
    np.savez(p2, **arrays)
    assert_not_ours(p2.read_bytes(), "entry 'data' holds pickled Python objects")
    p3 = tmp_path / "raw.pkl"
    p3.write_bytes(pickle.dumps({"a": 1}))
    assert_not_ours(p3.read_bytes(), "not a zip")


def test_text_empty_directory_and_missing(tmp_path):
    t = tmp_path / "notes.txt"
    t.write_text("hello, not a tensor\n")
    with pytest.raises(ValueError, match=NOT_OURS + r" \(not a zip \(\.npz\) archive\)"):
        QuantizedTensor.load(t)
    e = tmp_path / "empty.npz"
    e.write_bytes(b"")
    with pytest.raises(ValueError, match=NOT_OURS + r" \(the file is empty\)"):
        QuantizedTensor.load(e)
    with pytest.raises(ValueError, match=NOT_OURS + r" \(it is a directory\)"):
        QuantizedTensor.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        QuantizedTensor.load(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="path must be"):
        QuantizedTensor.load(3.5)
    with pytest.raises(TypeError, match="binary mode"):
        QuantizedTensor.load(io.StringIO("x"))


def test_message_names_the_file(tmp_path):
    p = tmp_path / "plain.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(ValueError, match="plain.npz"):
        QuantizedTensor.load(str(p))
    with open(p, "rb") as f:
        with pytest.raises(ValueError, match="plain.npz"):
            QuantizedTensor.load(f)


def test_round_trip_still_exact(tmp_path):
    for q in (Q, QDQ, quantize(np.ones((3, 5)), 8, block_size=None),
              quantize(np.ones((3, 5)), 4, scheme="nf4", block_size=None)):
        p = tmp_path / "q.npz"
        q.save(p)
        r = QuantizedTensor.load(p)
        for name in ("shape", "bits", "scheme", "block_size", "rounding", "double_quant"):
            assert getattr(r, name) == getattr(q, name)
        for name in ("data", "scales", "scale_codes", "scale_scales", "scale_mean"):
            a, b = getattr(q, name), getattr(r, name)
            assert (a is None and b is None) or (a.dtype == b.dtype and a.shape == b.shape
                                                 and a.tobytes() == b.tobytes()), name
