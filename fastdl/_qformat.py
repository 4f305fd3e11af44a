"""The QuantizedTensor format: its choices, sizes and checks, and the 8-bit quantization
of block scales (double quantization).

``fastdl.quant``'s module docstring describes the storage; this module holds the
rules every part of it (the tensor, the file reader, the quantizers) shares.
"""
from __future__ import annotations

import numbers

import numpy as np

from fastdl import ops as _ops
from fastdl._validate import check_choice

# absmax and nf4 are the kernels' own schemes; signmax and minmax are stored as absmax
# codes are (the kernels compute them unchanged; minmax adds one small product)
KERNEL_SCHEMES = _ops.SCHEMES
SCHEMES = KERNEL_SCHEMES + ("signmax", "minmax")
ROUNDINGS = _ops.ROUNDINGS
SCALE_DTYPES = ("float32", "float16")
LAYOUTS = ("rows", "lut")
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
DQ_GROUP = 256            # block scales per group in double quantization
DEFAULT_BLOCK = 64         # every peer quantizes in blocks; 64 is QLoRA's and bitsandbytes'

NF4_CODEBOOK = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
NF4_CODEBOOK.setflags(write=False)


def nf4_thresholds() -> np.ndarray:
    """float32 t_k with ``v > t_k`` ⇔ ``v`` above the exact midpoint of codes k, k+1
    (the midpoint rounded toward -inf), for every float32 v: ``code = #{k: v > t_k}``."""
    cb = NF4_CODEBOOK.astype(np.float64)
    mid = (cb[:-1] + cb[1:]) / 2
    t = mid.astype(np.float32)
    too_big = t.astype(np.float64) > mid
    t[too_big] = np.nextafter(t[too_big], np.float32(-np.inf))
    return t


def row_bytes(d_in: int) -> int:
    """Bytes per packed row of d_in codes (two per byte, groups of 64)."""
    return 32 * (d_in // 64) + (d_in % 64 + 1) // 2


def nblocks(d_in: int, block_size: int | None) -> int:
    return 1 if block_size is None else -(-d_in // block_size)


def storage_bytes(shape, bits: int, block_size: int | None, double_quant: bool = False, *,
                  scheme: str = "absmax", scale_dtype: str = "float32") -> int:
    """Real bytes of a quantized ``shape = (d_in, d_out)`` weight: codes + scales (+ the
    block minimums of scheme 'minmax'); the LUT layout stores the same bits."""
    d_in, d_out = shape
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1 or None, got {block_size}")
    data = d_out * (row_bytes(d_in) if bits <= 4 else d_in)
    per = 2 if scale_dtype == "float16" else 4
    per *= 2 if scheme == "minmax" else 1
    if block_size is None:
        return data + per
    count = d_out * nblocks(d_in, block_size)
    if double_quant:
        return data + count + 4 * -(-count // DQ_GROUP) + 4
    return data + per * count


def check_format(bits, scheme, block_size, rounding, double_quant, scale_dtype="float32",
                 layout="rows"):
    check_choice(scheme, "scheme", SCHEMES)
    check_choice(rounding, "rounding", ROUNDINGS)
    check_choice(scale_dtype, "scale_dtype", SCALE_DTYPES)
    check_choice(layout, "layout", LAYOUTS)
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if scheme == "nf4" and bits != 4:
        raise ValueError(f"scheme='nf4' needs bits=4, got bits={bits}")
    if scheme in ("nf4", "signmax", "minmax") and rounding == "floor":
        raise ValueError(f"rounding='floor' does not apply to scheme={scheme!r} (its codes "
                         "follow its own rounding rule); use rounding='nearest'")
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
            raise ValueError(f"block_size must be an integer >= 2 or None, got {block_size!r}")
        if block_size < 2:
            raise ValueError(f"block_size must be an integer >= 2 or None, got {block_size}")
    if double_quant and block_size is None:
        raise ValueError("double_quant=True needs block-wise scales (a block_size), got "
                         "block_size=None")
    if double_quant and scheme in ("signmax", "minmax"):
        raise ValueError(f"double_quant=True applies to schemes 'absmax' and 'nf4' (their "
                         f"scales are never negative), got scheme={scheme!r}")
    if double_quant and scale_dtype != "float32":
        raise ValueError("double_quant=True stores 8-bit scales; scale_dtype must stay "
                         f"'float32', got {scale_dtype!r}")
    if layout == "lut" and bits > 4:
        raise ValueError(f"layout='lut' holds 2..4-bit codes, got bits={bits}")


def file_entries(meta) -> dict:
    """{entry: (dtype, shape)} of a saved tensor with these (type-checked) fields."""
    from fastdl import _qlayout
    d_in, d_out = meta["shape"]
    bits, bs, dq, scheme = meta["bits"], meta["block_size"], meta["double_quant"], meta["scheme"]
    check_format(bits, scheme, bs, meta["rounding"], dq, meta["scale_dtype"], meta["layout"])
    data = (np.int8, (d_out, d_in)) if bits > 4 else (np.uint8, (d_out, row_bytes(d_in)))
    if meta["layout"] == "lut":
        data = (np.uint8, _qlayout.lut_shape(d_in, d_out, bits))
    sshape = (1,) if bs is None else (d_out, nblocks(d_in, bs))
    if not dq:
        sdt = np.float16 if meta["scale_dtype"] == "float16" else np.float32
        out = {"data": data, "scales": (sdt, sshape)}
        if scheme == "minmax":
            out["mins"] = (sdt, sshape)
        return out
    count = d_out * nblocks(d_in, bs)
    return {"data": data, "scale_codes": (np.int8, (count,)),
            "scale_scales": (np.float32, (-(-count // DQ_GROUP),)), "scale_mean": (np.float32, ())}


def check_finite_scales(w, scales):
    """Every backend's block absmax keeps NaN and inf, so non-finite weights show up as
    non-finite scales: no separate pass over w."""
    if np.isfinite(scales).all():
        return
    if w.dtype.kind == "f" and np.isnan(w).any():
        raise ValueError("w must be finite, got NaN")
    if w.dtype.kind == "f" and np.isinf(w).any():
        raise ValueError("w must be finite, got Inf")
    raise ValueError("w must fit in float32, got values beyond ±3.4e38")


def dq_scales(scales: np.ndarray):
    """Double quantization of block scales: mean, then 8-bit absmax in groups of 256."""
    flat = scales.reshape(-1).astype(np.float32)
    mean = np.float32(flat.mean(dtype=np.float64))
    c = flat - mean
    pad = (-c.size) % DQ_GROUP
    groups = np.concatenate([c, np.zeros(pad, np.float32)]).reshape(-1, DQ_GROUP)
    delta = (np.abs(groups).max(axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(delta > 0, delta, np.float32(1))
    v = groups / safe[:, None]
    q = np.trunc(v) + np.where(np.abs(v - np.trunc(v)) >= 0.5, np.sign(v), 0)
    q = np.clip(q, -127, 127).astype(np.int8).reshape(-1)[:c.size]
    return q, delta, np.array(mean, np.float32)
