"""GGUF (llama.cpp) Q4_0, Q4_1 and Q8_0 weights to and from fastdl's storage, in NumPy alone.

A GGUF tensor of NumPy shape ``(d_out, d_in)`` (torch's ``(out, in)``; the
reverse of the ``ne`` order ``GGUFReader`` reports as ``ReaderTensor.shape``) is
stored row by row, each row in blocks of 32 consecutive values, each block as
little-endian bytes:

======  =========================================  ==========  ==================
type    block (bytes)                              value       fastdl
======  =========================================  ==========  ==================
Q4_0    float16 d, 16 bytes of codes (18)           d*(c - 8)   signmax, 4 bits
Q4_1    float16 d, float16 m, 16 bytes (20)         d*c + m     minmax, 4 bits
Q8_0    float16 d, 32 int8 q (34)                   d*q         absmax, 8 bits
======  =========================================  ==========  ==================

In a 4-bit block byte ``i`` (0..15) holds value ``i`` in its low nibble and value
``i + 16`` in its high one.  fastdl's tensor is the transpose ``(d_in, d_out)``;
its data rows are GGUF's rows, so only the nibble order changes (fastdl packs
groups of 64); scales (and mins) become float32 ``(d_out, d_in // 32)`` arrays
holding the float16 values exactly, so dequantized values equal
``gguf.quants.dequantize(data, type).T`` bit for bit.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from fastdl._backends.numpy.quant import pack_nibbles, unpack_nibbles
from fastdl._validate import reject_masked
from fastdl._qformat import row_bytes

QK = 32                                          # values per GGUF block (Q4_0, Q4_1, Q8_0)
# name: (scheme, bits, bytes per block, has a min); GGML type ids in GGML_IDS
TYPES = {"Q4_0": ("signmax", 4, 18, False), "Q4_1": ("minmax", 4, 20, True),
         "Q8_0": ("absmax", 8, 34, False)}
GGML_IDS = {2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}     # ggml's GGMLQuantizationType values
_F16 = np.dtype("<f2")


def type_name_of(type_name) -> str:
    """'Q4_0', 'Q4_1' or 'Q8_0' from a name (any case), a ``gguf.GGMLQuantizationType``
    or its integer value."""
    if isinstance(type_name, bool):
        raise TypeError(f"type_name must be a GGUF type name or GGMLQuantizationType, got "
                        f"{type_name!r}")
    name = getattr(type_name, "name", None) if isinstance(type_name, numbers.Integral) else None
    if name is None and isinstance(type_name, numbers.Integral):
        name = GGML_IDS.get(int(type_name), f"ggml type {int(type_name)}")
    if name is None and isinstance(type_name, str):
        name = type_name
    if name is None:
        raise TypeError(f"type_name must be a GGUF type name (str) or GGMLQuantizationType, got "
                        f"{type(type_name).__name__}")
    if name.upper() not in TYPES:
        raise ValueError(f"type_name must be one of {', '.join(TYPES)} (the GGUF block types "
                         f"fastdl reads), got {name!r}")
    return name.upper()


def _shape(shape) -> tuple[int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be (d_out, d_in), got {shape!r}") from None
    if len(dims) != 2 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral)
                             or s < 1 for s in dims):
        raise ValueError(f"shape must be the float tensor's NumPy shape (d_out, d_in) with "
                         f"positive integers, got {shape!r}")
    d_out, d_in = (int(s) for s in dims)
    if d_in % QK:
        raise ValueError(f"GGUF blocks hold {QK} values of a row: the row length d_in = "
                         f"shape[1] must be a multiple of {QK}, got shape {(d_out, d_in)}")
    return d_out, d_in


def _raw(data, d_out: int, row: int) -> np.ndarray:
    """The block bytes as uint8 (d_out, row); flat, (d_out, row) or (..., row) input."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        a = np.frombuffer(data, np.uint8)
    else:
        reject_masked(data, "data")
        if hasattr(data, "detach") and hasattr(data, "cpu"):      # a torch tensor
            data = data.detach().cpu().numpy()
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data must be a uint8 array or bytes, got {type(data).__name__}")
        a = data
    if a.dtype != np.uint8:
        raise TypeError(f"data must hold the raw block bytes as uint8, got dtype {a.dtype}")
    want = d_out * row
    if a.size != want or (a.ndim > 1 and a.shape[-1] != row):
        raise ValueError(f"data must hold {d_out} rows of {row} bytes ({want} bytes, shape "
                         f"({d_out}, {row}) or flat), got shape {a.shape}")
    return np.ascontiguousarray(a).reshape(d_out, row)


def _half(raw: np.ndarray, at: int, what: str) -> np.ndarray:
    v = np.ascontiguousarray(raw[..., at:at + 2]).view(_F16)[..., 0].astype(np.float32)
    bad = ~np.isfinite(v)
    if bad.any():
        j, b = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"data has a non-finite block {what} ({v[j, b]}) in row {j}, block {b}: "
                         f"the bytes are not valid GGUF weights")
    return v


def from_gguf_fields(data, type_name, shape) -> dict:
    """The QuantizedTensor fields of a GGUF Q4_0 / Q4_1 / Q8_0 tensor: ``shape`` (d_in,
    d_out), ``bits``, ``scheme``, ``block_size`` (32), ``scale_dtype`` ('float16'),
    ``data`` (fastdl's rows layout), ``scales`` float32 (d_out, d_in // 32) and ``mins``
    (Q4_1; else None).  ``data``: the block bytes as ``gguf.quants.quantize`` returns
    them (uint8 (d_out, row_bytes), or flat, or bytes); ``shape``: the float tensor's
    NumPy shape ``(d_out, d_in)``."""
    name = type_name_of(type_name)
    scheme, bits, tsize, has_min = TYPES[name]
    d_out, d_in = _shape(shape)
    nb = d_in // QK
    raw = _raw(data, d_out, nb * tsize).reshape(d_out, nb, tsize)
    scales = _half(raw, 0, "scale")
    mins = _half(raw, 2, "min") if has_min else None
    qs = raw[..., 4 if has_min else 2:]
    if bits == 4:
        codes = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(d_out, d_in)
        packed = pack_nibbles(codes)
    else:
        packed = np.ascontiguousarray(qs.reshape(d_out, d_in)).view(np.int8)
    return dict(shape=(d_in, d_out), bits=bits, scheme=scheme, block_size=QK,
                scale_dtype="float16", data=packed, scales=scales, mins=mins)


def gguf_type_of(fields: Mapping) -> str:
    """The GGUF type that holds these fields' values exactly: 4-bit signmax or absmax
    (whose codes 1..15 are a subset of Q4_0's) -> Q4_0, 4-bit minmax -> Q4_1, 8-bit
    absmax or signmax -> Q8_0; block size 32.  Other formats raise ValueError."""
    scheme, bits, bs = (fields.get(k) for k in ("scheme", "bits", "block_size"))
    if bits == 4 and scheme in ("signmax", "absmax"):
        name = "Q4_0"
    elif bits == 4 and scheme == "minmax":
        name = "Q4_1"
    elif bits == 8 and scheme in ("absmax", "signmax"):
        name = "Q8_0"
    else:
        raise ValueError(f"GGUF holds 4-bit signmax/absmax (Q4_0), 4-bit minmax (Q4_1) and "
                         f"8-bit absmax/signmax (Q8_0) weights, got {bits}-bit {scheme!r}")
    if bs != QK:
        raise ValueError(f"GGUF blocks hold {QK} values: block_size must be {QK}, got {bs!r}")
    return name


def _as_half(a, name: str, shape) -> np.ndarray:
    """float32 values that float16 holds exactly, as float16 (the sign of zero kept)."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shape:
        raise ValueError(f"{name} must be a float32 array of shape {shape}, got "
                         f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    with np.errstate(over="ignore"):
        h = a.astype(np.float16)
    if not np.isfinite(a).all():
        j, b = (int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(f"GGUF cannot store the non-finite {name}[{j}, {b}] = {float(a[j, b])}")
    bad = h.astype(np.float32) != a
    if bad.any():
        j, b = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"GGUF stores {name} as float16, but {name}[{j}, {b}] = "
                         f"{float(a[j, b])!r} is not a float16 value; quantize with "
                         f"scale_dtype='float16'")
    return h.astype(_F16)


def to_gguf_bytes(fields: Mapping) -> np.ndarray:
    """The GGUF block bytes, uint8 ``(d_out, row_bytes)`` as ``gguf.quants.quantize``
    returns them, of QuantizedTensor fields (as ``from_gguf_fields`` gives): the type is
    ``gguf_type_of(fields)``; scales (and mins) must be float16 values, d_in a multiple
    of 32."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"fields must be a mapping, got {type(fields).__name__}")
    need = {"shape", "bits", "scheme", "block_size", "data", "scales"}
    if not need <= fields.keys():
        raise ValueError(f"fields lack {sorted(need - fields.keys())}")
    name = gguf_type_of(fields)
    scheme, bits, tsize, has_min = TYPES[name]
    shape = fields["shape"]
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise ValueError(f"fields['shape'] must be (d_in, d_out), got {shape!r}")
    d_out, d_in = _shape((shape[1], shape[0]))
    nb = d_in // QK
    data = fields["data"]
    want = ((d_out, row_bytes(d_in)), np.uint8) if bits == 4 else ((d_out, d_in), np.int8)
    if not isinstance(data, np.ndarray) or data.dtype != want[1] or data.shape != want[0]:
        raise ValueError(f"data must be a {np.dtype(want[1])} array of shape {want[0]}, got "
                         f"{getattr(data, 'dtype', type(data).__name__)} "
                         f"{getattr(data, 'shape', '')}")
    parts = [_as_half(fields["scales"], "scales", (d_out, nb)).view(np.uint8).reshape(d_out, nb, 2)]
    if has_min:
        mins = _as_half(fields.get("mins"), "mins", (d_out, nb))
        parts.append(mins.view(np.uint8).reshape(d_out, nb, 2))
    if bits == 4:
        codes = unpack_nibbles(data, d_in).reshape(d_out, nb, QK)
        parts.append(codes[..., :QK // 2] | (codes[..., QK // 2:] << 4))
    else:
        parts.append(np.ascontiguousarray(data).view(np.uint8).reshape(d_out, nb, QK))
    out = np.concatenate(parts, axis=-1).astype(np.uint8, copy=False)
    assert out.shape == (d_out, nb, tsize)
    return out.reshape(d_out, nb * tsize)
