"""NumPy definition of llama.cpp's block rules: signmax (Q4_0 / Q5_0 style),
minmax (Q4_1 style) and llama.cpp's absmax (Q8_0), in fastdl's storage layout.

A weight ``w`` has shape ``(d_in, d_out)``; blocks run along ``d_in`` in each
output column (``block_size=None``: one block for the whole tensor; a block size
above ``d_in`` is one block per column; the last block of a column is short when
``block_size`` does not divide ``d_in``).  ``h = 2^(bits-1)``.  Every operation is
the float32 one llama.cpp (and ``gguf.quants``) performs, in the same order:

* signmax: ``mx`` = the block's value of largest magnitude, with its sign (the
  first one on a tie, in storage order: column by column per tensor; an all-zero
  block's mx is its first zero, so d is -0.0 or +0.0 as in ``gguf.quants``);
  ``d = mx / -h``; ``id = 1/d`` (0 when d == 0);
  ``code = min(2^bits - 1, trunc(x*id + (h + 0.5)))``; the signed integer is
  ``q = code - h`` in ``[-h, h-1]``, so the block's extreme gets ``q = -h`` and all
  ``2^bits`` levels are used.  Value: ``d * q``.  ``d`` is negative when ``mx`` is
  positive: kernels multiply by it as by any scale.
* minmax: ``d = (max - min) / (2^bits - 1)``, ``id = 1/d`` (0 when d == 0),
  ``code = clip(trunc((x - min)*id + 0.5), 0, 2^bits - 1)``.  Value: ``d*code + m``
  with ``m`` = min (a zero min keeps the sign NumPy's ``min`` gives it, as in
  ``gguf.quants``).
* q8_0: ``d = absmax / 127``, ``id = 1/d`` (0 when d == 0), ``q = round(x*id)``
  half away from zero.  Value: ``d * q``.  (fastdl's own absmax divides by the
  step rounded down instead, so its codes can differ by one from llama.cpp's.)

The codes are computed with the float32 ``d`` (and float32 ``min``); what is
stored is ``d`` (and ``m``) rounded to ``scale_dtype`` (float16 as in GGUF, or
float32), kept as a float32 array.  Blocks so small that ``1/d`` overflows
float32 (``|d|`` below about 2.9e-39, where llama.cpp's arithmetic is undefined)
divide by ``d`` instead of multiplying by ``id``.

Storage (as fastdl's absmax): bits 2..4: the code ``q + h`` (signmax) or the raw
code (minmax) as nibbles (``pack_nibbles``); bits 5..8: int8 ``q`` (signmax) or
``code - h`` (minmax).  Either way ``unit = stored code - h`` (or the int8) and the
value is ``d * unit`` (signmax, q8_0) or ``d * (unit + h) + m`` (minmax).
"""
import numpy as np

from fastdl._backends.numpy.quant import pack_nibbles, unpack_nibbles
from fastdl._validate import check_choice, check_int
from fastdl._qformat import row_bytes

SCALE_DTYPES = ("float16", "float32")
SCHEMES = ("absmax", "signmax", "minmax")
F16_MAX = float(np.finfo(np.float16).max)


# ---------------------------------------------------------------- arguments

def _scale_dtype(scale_dtype) -> str:
    """'float16' / 'float32' from the name or a NumPy dtype."""
    name = scale_dtype
    if isinstance(scale_dtype, (np.dtype, type)):
        try:
            name = np.dtype(scale_dtype).name
        except TypeError:
            pass
    return check_choice(name, "scale_dtype", SCALE_DTYPES)


def _weights(w) -> np.ndarray:
    if not isinstance(w, np.ndarray) or w.dtype.kind not in "biuf":
        got = getattr(w, "dtype", type(w).__name__)
        raise TypeError(f"w must be a real NumPy array, got {got}")
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"w must be a non-empty 2-D (d_in, d_out) array, got shape {w.shape}")
    with np.errstate(over="ignore"):
        return np.asarray(w, np.float32)


def _block(block_size, d_in):
    """(block size used, per_tensor); quant.py's rule: None is one scale, a block above
    d_in is one block per column."""
    if block_size is None:
        return d_in, True
    return min(check_int(block_size, "block_size", minimum=2), d_in), False


def _blocks(w32: np.ndarray, bs: int, per_tensor: bool) -> np.ndarray:
    """(d_out, nblocks, bs) blocks of the transposed weight, or (1, 1, size) per tensor.
    A short last block is padded with copies of its last value, which changes neither
    its min, its max nor the first position of its largest magnitude."""
    wt = np.ascontiguousarray(w32.T)
    d_out, d_in = wt.shape
    if per_tensor:
        return wt.reshape(1, 1, -1)
    nb = -(-d_in // bs)
    if nb * bs != d_in:
        wt = np.pad(wt, ((0, 0), (0, nb * bs - d_in)), mode="edge")
    return wt.reshape(d_out, nb, bs)


def _reciprocal(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _scaled(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """x * (1/d) per block (llama.cpp's product), x / d where 1/d overflows float32."""
    inv = _reciprocal(d)
    with np.errstate(invalid="ignore", over="ignore"):       # 0 * inf where 1/d overflows
        v = x * inv[..., None]
    tiny = np.isinf(inv)
    if tiny.any():                          # rare: blocks of (near-)subnormal values
        v[tiny] = x[tiny] / d[tiny][..., None]
    return v


def _codes(v: np.ndarray, top: int) -> np.ndarray:
    """min(top, trunc(v)) for v >= -1 (finite): the int32 cast truncates toward zero."""
    c = v.astype(np.int32)
    np.clip(c, 0, top, out=c)
    return c


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """round(v) half away from zero, exactly, for finite |v| < 2^23 (int32)."""
    t = v.astype(np.int32)                  # trunc; v - t is exact (the fraction of v)
    frac = v - t.astype(np.float32)
    t += frac >= 0.5
    t -= frac <= -0.5
    return t


def _stored(a: np.ndarray, scale_dtype: str, what: str, w32: np.ndarray) -> np.ndarray:
    """``a`` rounded to scale_dtype, as float32; non-finite values raise, naming why."""
    if not np.isfinite(a).all():
        if np.isnan(w32).any():
            raise ValueError("w must be finite, got NaN")
        if np.isinf(w32).any():
            raise ValueError("w must be finite (within float32's range), got Inf")
        raise ValueError(f"the {what} of a block overflows float32 (a block's max - min is "
                         f"beyond 3.4e38); scale the weights down")
    if scale_dtype == "float32":
        return np.ascontiguousarray(a, np.float32)
    with np.errstate(over="ignore"):
        h = a.astype(np.float16)
    if np.isinf(h).any():
        worst = float(np.abs(a).max())
        raise ValueError(f"scale_dtype='float16' cannot hold a block {what} of {worst:.6g} "
                         f"(float16's largest value is {F16_MAX:g}); use scale_dtype='float32' "
                         f"or scale the weights down")
    return h.astype(np.float32)


def _shape_out(a: np.ndarray, per_tensor: bool) -> np.ndarray:
    return a.reshape(1) if per_tensor else np.ascontiguousarray(a)


def _pack(codes: np.ndarray, bits: int, d_out: int, d_in: int) -> np.ndarray:
    """Raw codes 0..2^bits-1 of the blocks -> fastdl's data (nibbles, or int8 code - h)."""
    codes = codes.reshape(d_out, -1)[:, :d_in]
    if bits <= 4:
        return pack_nibbles(codes.astype(np.uint8))
    return np.ascontiguousarray((codes - 2 ** (bits - 1)).astype(np.int8))


# ---------------------------------------------------------------- quantizers

def _setup(w, bits, block_size, scale_dtype):
    """(bits, scale dtype name, w as float32, per_tensor, blocks (d_out, nb, bs))."""
    bits = check_int(bits, "bits", minimum=2, maximum=8)
    sdt = _scale_dtype(scale_dtype)
    w32 = _weights(w)
    bs, per_tensor = _block(block_size, w32.shape[0])
    return bits, sdt, w32, per_tensor, _blocks(w32, bs, per_tensor)


def quantize_signmax(w, bits, block_size, scale_dtype="float16"):
    """llama.cpp's Q4_0 rule for ``bits`` 2..8 (the module docstring): ``(data, scales)``
    with data in fastdl's rows layout and float32 scales ``(d_out, nblocks)`` (``(1,)``
    per tensor) holding values of ``scale_dtype``.  bits=4, block_size=32, float16 is
    GGUF's Q4_0 exactly (bits=5: Q5_0's values)."""
    bits, sdt, w32, per_tensor, blocks = _setup(w, bits, block_size, scale_dtype)
    d_in, d_out = w32.shape
    h = 2 ** (bits - 1)
    pos = np.abs(blocks).argmax(axis=-1)[..., None]
    mx = np.take_along_axis(blocks, pos, axis=-1)[..., 0]
    d = (mx / np.float32(-h)).astype(np.float32)
    scales = _stored(d, sdt, "scale", w32)
    v = _scaled(blocks, d)
    v += np.float32(h + 0.5)
    codes = _codes(v, 2 ** bits - 1)
    return _pack(codes, bits, d_out, d_in), _shape_out(scales, per_tensor)


def quantize_minmax(w, bits, block_size, scale_dtype="float16"):
    """llama.cpp's Q4_1 rule for ``bits`` 2..8: ``(data, scales, mins)``; value =
    ``scale * code + min`` with ``code`` 0..2^bits-1 stored as absmax stores
    ``q + 2^(bits-1)`` (nibbles for bits <= 4, int8 ``code - 2^(bits-1)`` above).
    bits=4, block_size=32, float16 is GGUF's Q4_1 exactly."""
    bits, sdt, w32, per_tensor, blocks = _setup(w, bits, block_size, scale_dtype)
    d_in, d_out = w32.shape
    lo, hi = blocks.min(axis=-1), blocks.max(axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        d = ((hi - lo) / np.float32(2 ** bits - 1)).astype(np.float32)
    mins = _stored(lo, sdt, "minimum", w32)
    scales = _stored(d, sdt, "scale", w32)
    v = _scaled(blocks - lo[..., None], d)
    v += np.float32(0.5)
    codes = _codes(v, 2 ** bits - 1)
    return (_pack(codes, bits, d_out, d_in), _shape_out(scales, per_tensor),
            _shape_out(mins, per_tensor))


def quantize_q8_0(w, block_size=32, scale_dtype="float16"):
    """llama.cpp's Q8_0 rule (int8 absmax, ``d = absmax/127``, ``q = round(x * (1/d))``):
    ``(data, scales)`` in fastdl's absmax 8-bit storage (int8 ``(d_out, d_in)``).
    block_size=32, float16 is GGUF's Q8_0 exactly."""
    sdt = _scale_dtype(scale_dtype)
    w32 = _weights(w)
    d_in, d_out = w32.shape
    bs, per_tensor = _block(block_size, d_in)
    blocks = _blocks(w32, bs, per_tensor)
    d = (np.abs(blocks).max(axis=-1) / np.float32(127)).astype(np.float32)
    scales = _stored(d, sdt, "scale", w32)
    q = np.clip(_round_half_away(_scaled(blocks, d)), -127, 127)
    return _pack(q + 128, 8, d_out, d_in), _shape_out(scales, per_tensor)


def quantize_scheme(w, bits, scheme, block_size, scale_dtype="float16"):
    """``(data, scales, mins)`` of scheme 'signmax' (mins None) or 'minmax'."""
    check_choice(scheme, "scheme", ("signmax", "minmax"))
    if scheme == "minmax":
        return quantize_minmax(w, bits, block_size, scale_dtype)
    return (*quantize_signmax(w, bits, block_size, scale_dtype), None)


# ---------------------------------------------------------------- values

def dequantize_schemes(data, scales, shape, bits, scheme, block_size, mins=None):
    """float32 ``(d_out, d_in)`` values (the transposed weight) of absmax, signmax or
    minmax storage: ``scale * unit`` (absmax, signmax, q8_0) or ``scale * code + min``
    (minmax), one float32 product (and sum) per value, as ``gguf.quants.dequantize``
    computes Q4_0, Q8_0 and Q4_1.  ``scales`` (and ``mins``): float32 ``(d_out,
    nblocks)``, or ``(1,)`` for ``block_size=None``."""
    check_choice(scheme, "scheme", SCHEMES)
    bits = check_int(bits, "bits", minimum=2, maximum=8)
    d_in, d_out = (check_int(s, "shape entries", minimum=1) for s in shape)
    bs, per_tensor = _block(block_size, d_in)
    nb = -(-d_in // bs)
    want = (1,) if per_tensor else (d_out, nb)
    arrays = [("scales", scales)] + ([("mins", mins)] if scheme == "minmax" else [])
    if scheme != "minmax" and mins is not None:
        raise ValueError(f"mins belong to scheme 'minmax' only, got mins with scheme {scheme!r}")
    for name, a in arrays:
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != want:
            raise ValueError(f"{name} must be a float32 array of shape {want}, got "
                             f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    dshape, ddt = ((d_out, row_bytes(d_in)), np.uint8) if bits <= 4 else ((d_out, d_in), np.int8)
    if not isinstance(data, np.ndarray) or data.dtype != ddt or data.shape != dshape:
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise ValueError(f"data must be a {np.dtype(ddt)} array of shape {dshape}, got {got}")
    h = np.float32(2 ** (bits - 1))
    units = (unpack_nibbles(data, d_in).astype(np.float32) - h if bits <= 4
             else data.astype(np.float32))

    def per_value(a):
        return np.repeat(a.reshape(-1, 1) if per_tensor else a, bs, axis=1)[:, :d_in]

    with np.errstate(over="ignore", invalid="ignore"):
        if scheme != "minmax":
            return (per_value(scales) * units).astype(np.float32)
        return ((per_value(scales) * (units + h)) + per_value(mins)).astype(np.float32)
