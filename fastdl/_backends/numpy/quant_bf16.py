"""NumPy reference of bf16 compute for ``y = x @ dequantize(q)`` (the readable
definition the Cython kernels are tested against).

bf16 compute rounds x to bfloat16 (8 significant bits, round to nearest even;
values below 2^-126 in magnitude count as 0, as the AVX512-BF16 instruction
treats denormal inputs) and takes the weight's units as bfloat16: the integer
units of absmax/signmax (``code - 2^(bits-1)``, or the int8 ``q``) are exact,
NF4's codebook entries are rounded to the nearest bfloat16.  The scales stay
float32.  Here the products and sums run in float64, so the reference is
``bf16(x) @ (bf16(unit) * scale)`` with no further rounding; the kernels sum in
float32 and stay within ``bound(x, q)`` of it (``kernel_bound``).

Error against the exact ``x @ dequantize(q)`` (float64): bfloat16 keeps 8
significant bits, so each x element moves by at most 2^-8 of itself, each NF4
unit by at most 2^-8 (``nf4_unit_error()``: 3.1e-3 at worst over the 16
entries), the integer units not at all.  Measured on Gaussian x (4 x 4096) and
Gaussian weights (4096 x 4096, block 64), ||y - ref|| / ||ref||: NF4 with double
quantization 2.2e-3 (max |y - ref| / rms(ref) 9.3e-3), int4 and int8 absmax
1.7e-3 (6.5e-3); bitsandbytes' fused CPU 4-bit GEMV on the same weights (its own
NF4 quantization, bfloat16 scales and output) 3.3e-3 (1.5e-2).
"""
from __future__ import annotations

import numpy as np

from fastdl._backends.numpy.quant import unpack_nibbles
from fastdl._qformat import NF4_CODEBOOK

BF16_MIN_NORMAL = 2.0 ** -126


def to_bf16(a) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest even), as float32; NaN stays NaN,
    magnitudes that round below 2^-126 become a zero of the same sign."""
    a = np.asarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).astype(np.uint32).view(np.float32)
    r = np.where(np.isnan(a), a, r)
    return np.where(np.abs(r) < BF16_MIN_NORMAL, np.copysign(np.float32(0), a), r)


def bf16_units(q) -> np.ndarray:
    """float32 (d_out, d_in): the weight's units as bfloat16 values (storage rows)."""
    d_in = q.shape[0]
    if q.bits > 4:
        return q.data.astype(np.float32)
    codes = unpack_nibbles(q.data, d_in)
    if q.scheme == "nf4":
        return to_bf16(NF4_CODEBOOK)[codes]
    return codes.astype(np.float32) - np.float32(2 ** (q.bits - 1))


def _scales(q) -> np.ndarray:
    """float64 (d_out, d_in): each value's float32 block scale."""
    d_in = q.shape[0]
    bs = d_in if q.block_size is None else min(q.block_size, d_in)
    return np.repeat(q.block_scales().astype(np.float64), bs, axis=1)[:, :d_in]


def check(q) -> None:
    """ValueError unless bf16 compute supports q (the kernels' lanes need every
    32-value half of a row in one block)."""
    bs = q.block_size
    if bs is not None and bs % 32 and bs < q.shape[0]:
        raise ValueError(f"bf16 compute needs q.block_size a multiple of 32 or None (per "
                         f"tensor), got {bs}")


def bf16_qmatmul_reference(x, q) -> np.ndarray:
    """float64 (n, d_out): bf16(x) @ (bf16(unit) * scale), products and sums in float64."""
    check(q)
    xb = to_bf16(x).astype(np.float64)
    return xb @ (bf16_units(q).astype(np.float64) * _scales(q)).T


def bf16_qmatmul(x, q, out=None) -> np.ndarray:
    """float32 (n, d_out): the reference rounded to float32 (the NumPy backend's path)."""
    y = bf16_qmatmul_reference(x, q).astype(np.float32)
    if out is None:
        return y
    out[...] = y
    return out


def kernel_bound(x, q) -> np.ndarray:
    """float64 (n, d_out): how far the float32-summing kernels may be from the
    reference: (d_in/32 + 24) * 2^-24 * sum_i |bf16(x_i) * unit_i * scale_i|.  Each term
    meets at most d_in/64 + 1 lane fma roundings, 4 vdpbf16ps sums, 5 tree sums, a
    tail of at most 63 sums: first order, (d_in/32 + 24) float32 roundings covers the
    deepest path with room (a 4-bit row's 64-value steps alternate between two sets of
    lanes, each meeting half the fmas)."""
    d_in = q.shape[0]
    xb = np.abs(to_bf16(x).astype(np.float64))
    mag = xb @ np.abs(bf16_units(q).astype(np.float64) * _scales(q)).T
    return (d_in / 32 + 24 + min(63, d_in % 64)) * 2.0 ** -24 * mag * 1.01


def nf4_unit_error() -> float:
    """The largest relative change of an NF4 codebook entry rounded to bfloat16."""
    cb = NF4_CODEBOOK.astype(np.float64)
    nz = cb != 0
    return float(np.max(np.abs(to_bf16(NF4_CODEBOOK)[nz] - cb[nz]) / np.abs(cb[nz])))
