"""NumPy reference of the quantization ops (format and contracts in fastdl/quant.py).

Every value is computed with the float32 operations the format defines, so the
Cython kernels can match it exactly; ``qmatmul`` materialises the float matrix
(the Cython backend does not).
"""
import numpy as np

from fastdl._qformat import NF4_CODEBOOK, nf4_thresholds, row_bytes


def _blocks(wt: np.ndarray, bs: int) -> np.ndarray:
    """(d_out, nblocks, bs) view of wt (d_out, d_in) zero-padded to whole blocks."""
    d_out, d_in = wt.shape
    nb = -(-d_in // bs)
    padded = np.zeros((d_out, nb * bs), np.float32)
    padded[:, :d_in] = wt
    return padded.reshape(d_out, nb, bs)


def absmax_step(absmax: np.ndarray, qmax: int) -> np.ndarray:
    """Δ: the largest float32 not above absmax / qmax (so ⌊absmax/Δ⌋ = qmax and qmax·Δ
    never overflows); float32 products by qmax <= 127 are exact in float64."""
    d = (absmax / np.float32(qmax)).astype(np.float32)
    high = d.astype(np.float64) * qmax > absmax.astype(np.float64)
    d[high] = np.nextafter(d[high], np.float32(0))
    return d


def round_half_away(v: np.ndarray) -> np.ndarray:
    t = np.trunc(v)
    return t + np.where(np.abs(v - t) >= 0.5, np.sign(v), 0).astype(v.dtype)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """(rows, d_in) codes < 16 -> (rows, row_bytes(d_in)) bytes, groups of 64."""
    rows, d_in = codes.shape
    G, r = divmod(d_in, 64)
    full = codes[:, :64 * G].reshape(rows, G, 2, 32)
    parts = [(full[:, :, 0, :] | (full[:, :, 1, :] << 4)).reshape(rows, 32 * G)]
    if r:
        h = (r + 1) // 2
        tail = np.zeros((rows, 2 * h), np.uint8)
        tail[:, :r] = codes[:, 64 * G:]
        parts.append(tail[:, :h] | (tail[:, h:] << 4))
    out = np.concatenate(parts, axis=1).astype(np.uint8)
    assert out.shape[1] == row_bytes(d_in)
    return out


def unpack_nibbles(data: np.ndarray, d_in: int) -> np.ndarray:
    rows = data.shape[0]
    G, r = divmod(d_in, 64)
    full = data[:, :32 * G].reshape(rows, G, 32)
    parts = [np.stack([full & 15, full >> 4], axis=2).reshape(rows, 64 * G)]
    if r:                           # short group: low nibbles first, then high, cut to r
        tail = data[:, 32 * G:]
        parts.append(np.concatenate([tail & 15, tail >> 4], axis=1)[:, :r])
    return np.concatenate(parts, axis=1)


def quantize(w, bits, scheme, block_size, rounding, per_tensor):
    # non-finite weights give non-finite scales, which the caller rejects: no warnings here
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return _quantize(w, bits, scheme, block_size, rounding, per_tensor)


def _quantize(w, bits, scheme, bs, rounding, per_tensor):
    d_in, d_out = w.shape
    wt = np.ascontiguousarray(w.T)
    if per_tensor:
        absmax = np.abs(wt).max().reshape(1, 1)
        blocks = wt.reshape(d_out, 1, d_in)
    else:
        blocks = _blocks(wt, bs)
        absmax = np.abs(blocks).max(axis=2)
    if scheme == "nf4":
        scale = absmax.astype(np.float32)
        v = blocks / np.where(scale > 0, scale, np.float32(1))[..., None]
        codes = np.searchsorted(nf4_thresholds(), v, side="left").astype(np.uint8)
    else:
        qmax = 2 ** (bits - 1) - 1
        scale = absmax_step(absmax.astype(np.float32), qmax)
        v = blocks / np.where(scale > 0, scale, np.float32(1))[..., None]
        q = np.floor(v) if rounding == "floor" else round_half_away(v)
        q = np.clip(q, -qmax, qmax)
        q[np.broadcast_to((scale == 0)[..., None], q.shape)] = 0
        codes = q.astype(np.int8) if bits > 4 else (q + 2 ** (bits - 1)).astype(np.uint8)
    codes = codes.reshape(d_out, -1)[:, :d_in]
    data = pack_nibbles(codes) if bits <= 4 else np.ascontiguousarray(codes)
    return data, (scale.reshape(1) if per_tensor else np.ascontiguousarray(scale))


def values(q) -> np.ndarray:
    """float32 (d_out, d_in): the dequantized transposed weight."""
    d_in, d_out = q.shape
    data = q.data
    if q.layout == "lut":
        from fastdl._backends.numpy.quant_lut import lut_to_rows
        data = lut_to_rows(data, d_in, d_out, q.bits, q.scheme == "nf4")
    if q.bits <= 4:
        codes = unpack_nibbles(data, d_in)
        if q.scheme == "nf4":
            units = NF4_CODEBOOK[codes]
        else:
            units = codes.astype(np.float32) - np.float32(2 ** (q.bits - 1))
    else:
        units = data.astype(np.float32)
    bs = d_in if q.block_size is None else min(q.block_size, d_in)
    per = np.repeat(q.block_scales(), bs, axis=1)[:, :d_in]   # per-tensor (1, d_in) broadcasts
    return (per * units).astype(np.float32)


def dequantize(q, out):
    out[...] = values(q).T
    return out


def qmatmul(x, q, transpose, out):
    wt = values(q).astype(x.dtype)            # (d_out, d_in)
    np.matmul(x, wt if transpose else wt.T, out=out)
    return out


def qmatmul_int8(x, q, out):
    from fastdl._backends.numpy import quant_int8
    out[...] = quant_int8.qmatmul_int8(x, q)
    return out


def qmatmul_bf16(x, q, out):
    from fastdl._backends.numpy import quant_bf16
    return quant_bf16.bf16_qmatmul(x, q, out)
