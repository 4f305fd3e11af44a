"""Reading QuantizedTensor files (a NumPy ``.npz``: a zip of ``.npy`` entries, no pickle).

The reader trusts nothing in the file: the zip directory, the ``.npy`` headers and
the JSON ``meta`` entry are each checked against the bytes actually present before
anything is allocated from them, so a damaged, truncated or foreign file is a
``ValueError`` that says what the file is not, never a MemoryError or a parser's
own exception.  ``.npy`` headers are matched by a strict pattern rather than
evaluated.
"""
from __future__ import annotations

import io
import json
import os
import re
import struct
import zipfile
import zlib

import numpy as np

FORMAT_TAG = "fastdl.QuantizedTensor"
META_LIMIT = 1 << 16            # bytes of JSON meta; a real one is ~200
HEADER_LIMIT = 1 << 16          # bytes of one .npy header; numpy writes < 200
DEFLATE_RATIO = 1032            # deflate's largest expansion: a declared size beyond it lies
_FLAGS_OK = 0x2 | 0x4 | 0x8 | 0x800   # deflate options, data descriptor, UTF-8 names
_NPY_MAGIC = b"\x93NUMPY"

# one .npy header entry: 'key': value, for the three keys numpy writes
_ITEM = re.compile(r"""\s*'(descr|fortran_order|shape)'\s*:\s*
                       ('[^'\\]{1,32}'|True|False|\(\s*(?:\d{1,19}\s*,\s*)*(?:\d{1,19}\s*)?\))
                       \s*(?:,|(?=\s*\}))""", re.X)


class NotAQuantizedTensorFile(ValueError):
    """The file is damaged or is not a fastdl QuantizedTensor file."""


def _fail(name, reason):
    raise NotAQuantizedTensorFile(f"{name} is not a fastdl QuantizedTensor file ({reason})")


def read_bytes(path) -> tuple[bytes, str]:
    """The whole file (its real length bounds every later read) and a name for messages."""
    if hasattr(path, "read"):
        name = repr(getattr(path, "name", None) or f"<{type(path).__name__}>")
        raw = path.read()
        if not isinstance(raw, bytes):
            raise TypeError(f"path must be a file opened in binary mode, got one that reads "
                            f"{type(raw).__name__}")
        return raw, name
    try:
        fspath = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str, os.PathLike or a binary file object, got "
                        f"{type(path).__name__}") from None
    name = repr(fspath)
    if os.path.isdir(fspath):
        _fail(name, "it is a directory")
    with open(fspath, "rb") as f:             # FileNotFoundError / PermissionError as is
        return f.read(), name


def _npy_header(raw: bytes, entry: str, name: str):
    """(descr, fortran_order, shape, offset of the data) of an .npy entry's bytes."""
    if not raw.startswith(_NPY_MAGIC) or len(raw) < 10:
        _fail(name, f"entry {entry!r} is not a NumPy array")
    major = raw[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", raw[8:10]), 10
    elif major in (2, 3) and len(raw) >= 12:
        (hlen,), start = struct.unpack("<I", raw[8:12]), 12
    else:
        _fail(name, f"entry {entry!r} has .npy format version {major}.{raw[7]}")
    if hlen > HEADER_LIMIT or start + hlen > len(raw):
        _fail(name, f"entry {entry!r} has a truncated or oversized .npy header")
    try:
        text = raw[start:start + hlen].decode("latin1" if major < 3 else "utf8")
    except UnicodeDecodeError:
        _fail(name, f"entry {entry!r} has an unreadable .npy header")
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        _fail(name, f"entry {entry!r} has a damaged .npy header")
    items, pos, inner = {}, 0, body[1:-1]
    while inner[pos:].strip():
        m = _ITEM.match(inner, pos)
        if m is None or m.group(1) in items:
            _fail(name, f"entry {entry!r} has a damaged .npy header")
        items[m.group(1)] = m.group(2)
        pos = m.end()
    if set(items) != {"descr", "fortran_order", "shape"}:
        _fail(name, f"entry {entry!r} has a damaged .npy header")
    shape = tuple(int(v) for v in items["shape"].strip("()").replace(",", " ").split())
    return items["descr"][1:-1], items["fortran_order"] == "True", shape, start + hlen


def _check_entry(info: zipfile.ZipInfo, name: str, file_size: int) -> str:
    """The zip directory's facts about one entry, before it is opened: no encryption or
    unknown method, and no more bytes than the file holds."""
    entry = info.filename[:-4]
    if info.flag_bits & ~_FLAGS_OK:
        what = "encrypted" if info.flag_bits & 0x1 else f"zip flags {info.flag_bits:#x}"
        _fail(name, f"entry {entry!r} is {what}")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        _fail(name, f"entry {entry!r} uses zip compression method {info.compress_type}, "
                    "not stored or deflated")
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_RATIO
    if info.header_offset + info.compress_size > file_size or \
            info.file_size > max(info.compress_size, 1) * ratio:
        _fail(name, f"entry {entry!r} declares more bytes than the file holds (truncated?)")
    return entry


_DESCRS = {np.dtype(np.uint8): ("|u1",), np.dtype(np.int8): ("|i1",),
           np.dtype(np.float32): ("<f4", ">f4"), np.dtype(np.float16): ("<f2", ">f2")}


def read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dtype, shape, name: str,
               file_size: int) -> np.ndarray:
    """The entry ``info`` as an array of exactly ``dtype`` and ``shape`` (from the already
    checked meta), after checking the zip directory and the .npy header against them."""
    entry = _check_entry(info, name, file_size)
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=object))
    if info.file_size > nbytes + 12 + HEADER_LIMIT:
        _fail(name, f"entry {entry!r} holds {info.file_size} bytes, more than a {dtype} array "
                    f"of shape {shape}")
    with zf.open(info) as f:
        raw = f.read(info.file_size + 1)
    if len(raw) != info.file_size:
        _fail(name, f"entry {entry!r} is truncated")
    descr, fortran, got_shape, offset = _npy_header(raw, entry, name)
    if descr not in _DESCRS[dtype]:
        what = "pickled Python objects" if "O" in descr else f"dtype {descr!r}"
        _fail(name, f"entry {entry!r} holds {what}, expected {dtype}")
    if got_shape != tuple(shape):
        _fail(name, f"entry {entry!r} has shape {got_shape}, expected {tuple(shape)}")
    if len(raw) - offset != nbytes:
        _fail(name, f"entry {entry!r} holds {len(raw) - offset} data bytes, its header "
                    f"declares {nbytes}")
    a = np.frombuffer(raw, np.dtype(descr), offset=offset, count=nbytes // dtype.itemsize)
    a = a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
    return np.asarray(a, dtype=dtype, order="C")     # (ascontiguousarray makes 0-d 1-d)


def _meta(zf, infos, name, file_size) -> dict:
    if "meta" not in infos:
        held = ", ".join(repr(k) for k in sorted(infos)) or "nothing"
        _fail(name, f"no 'meta' entry; the archive holds {held}")
    info = infos["meta"]
    _check_entry(info, name, file_size)
    if info.file_size > META_LIMIT:
        _fail(name, f"its 'meta' entry holds {info.file_size} bytes, more than a fastdl header")
    with zf.open(info) as f:
        head = f.read(HEADER_LIMIT + 12)
    try:
        _, _, (n,), _ = _npy_header(head, "meta", name)
    except ValueError:
        _fail(name, "its 'meta' entry is not a fastdl header")
    raw = read_array(zf, info, np.uint8, (n,), name, file_size)
    try:
        meta = json.loads(raw.tobytes().decode("utf8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        _fail(name, "its 'meta' entry is not JSON")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_TAG:
        _fail(name, f"its 'meta' entry has no format tag {FORMAT_TAG!r}")
    return meta


def _field(meta, key, types, name):
    if key not in meta:
        _fail(name, f"'meta' has no {key!r}")
    v = meta[key]
    if type(v) not in types:
        _fail(name, f"'meta' {key!r} is {v!r}")
    return v


def read_tensor_fields(path, versions: tuple, layout) -> tuple[dict, dict]:
    """(meta fields, arrays) of the file at ``path`` (a format version in ``versions``;
    fields a version lacks get their defaults); ``layout(meta)`` gives the
    ``{entry: (dtype, shape)}`` the format expects for those fields (it raises
    ValueError for fields it rejects)."""
    raw, name = read_bytes(path)
    if not raw:
        _fail(name, "the file is empty")
    if raw.startswith(_NPY_MAGIC):
        _fail(name, "a single NumPy .npy array, not an .npz archive")
    if not raw.startswith(b"PK"):
        _fail(name, "not a zip (.npz) archive")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy") or info.filename[:-4] in infos:
                    _fail(name, f"unexpected archive entry {info.filename!r}")
                infos[info.filename[:-4]] = info
            meta = _meta(zf, infos, name, len(raw))
            v = meta.get("version")
            if type(v) is not int or v not in versions:
                _fail(name, f"format version {v!r}; this fastdl reads versions "
                            f"{', '.join(map(str, versions))}")
            fields = {k: _field(meta, k, t, name) for k, t in (
                ("shape", (list,)), ("bits", (int,)), ("scheme", (str,)),
                ("block_size", (int, type(None))), ("rounding", (str,)),
                ("double_quant", (bool,)))}
            # version 2 added the scale dtype and the weight layout
            for k, default in (("scale_dtype", "float32"), ("layout", "rows")):
                fields[k] = _field(meta, k, (str,), name) if v >= 2 else default
            shape = fields["shape"]
            if len(shape) != 2 or any(type(s) is not int or s < 1 for s in shape):
                _fail(name, f"'meta' shape is {shape!r}")
            try:
                want = layout(fields)
            except ValueError as exc:
                _fail(name, f"its 'meta' describes no valid tensor: {exc}")
            if set(infos) != set(want) | {"meta"}:
                _fail(name, f"entries {sorted(infos)}, expected "
                            f"{sorted(set(want) | {'meta'})}")
            arrays = {k: read_array(zf, infos[k], dt, shp, name, len(raw))
                      for k, (dt, shp) in want.items()}
    except NotAQuantizedTensorFile:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error,
            NotImplementedError, RuntimeError, OverflowError, KeyError, IndexError) as exc:
        # the zip layer's own checks (CRC, local headers) after ours
        _fail(name, f"damaged archive: {exc}")
    return fields, arrays
