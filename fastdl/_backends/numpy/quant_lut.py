"""NumPy definition of the "lut" weight layout and of its lookup-table matmul.

The layout (bits 2..4 absmax codes ``q + 2^(bits-1)``, or NF4 codes) serves kernels
that look up 16 output columns per instruction: d_out is cut in tiles of 16
columns, d_in in chunks of 32 inputs; per (tile, chunk) there are ``W = bits``
uint32 words per column, stored word-major (all 16 columns of word 0, then word
1, ...), so the array is ``(tiles, chunks, W, 16)`` uint32 viewed as uint8
``(tiles, chunks * W * 64)``.  Nibble ``m`` (bits 4m..4m+3) of word ``k`` is

* NF4: the code of input ``32c + 8k + m`` of the chunk;
* absmax: the bit plane ``k`` of the 4 inputs ``32c + 4m + i`` (bit ``i`` of the
  nibble): bit ``k`` of ``code XOR 2^(bits-1)``, the bits-bit two's complement of
  ``q``, so ``q = sum_{k<W-1} 2^k plane_k - 2^(W-1) plane_{W-1}``.

Padding (columns >= d_out, inputs >= d_in) holds q = 0 (NF4 code 7; absmax all
planes 0).  ``lut_qmatmul`` here performs exactly the float32 operations of the
compiled kernels in their order (src/qlutk.h), so both give the same bits.
"""
import numpy as np

from fastdl._qformat import NF4_CODEBOOK

from fastdl._backends.numpy.quant import pack_nibbles, unpack_nibbles

TILE, CHUNK = 16, 32


def lut_shape(d_in: int, d_out: int, bits: int) -> tuple:
    return (-(-d_out // TILE), -(-d_in // CHUNK) * bits * 64)


def _dims(d_in, d_out):
    return -(-d_out // TILE), -(-d_in // CHUNK)


def rows_to_lut(data_rows, d_in, d_out, bits, nf4):
    NT, NC = _dims(d_in, d_out)
    codes = unpack_nibbles(np.asarray(data_rows, np.uint8), d_in)
    if not nf4 and codes.size and codes.max() >= 1 << bits:
        raise ValueError(f"data_rows holds codes >= 2**bits = {1 << bits}")
    zero = 7 if nf4 else 1 << (bits - 1)
    full = np.full((NT * TILE, NC * CHUNK), zero, np.uint32)
    full[:d_out, :d_in] = codes
    sh = 4 * np.arange(8, dtype=np.uint32)
    if nf4:
        c = full.reshape(NT, TILE, NC, 4, 8)                 # [t, l, c, k, m]
        words = (c << sh).sum(axis=4, dtype=np.uint32)       # [t, l, c, k]
    else:
        c = (full ^ (1 << (bits - 1))).reshape(NT, TILE, NC, 8, 4)   # [t, l, c, m, i]
        planes = []
        for k in range(bits):
            nib = (((c >> k) & 1) << np.arange(4, dtype=np.uint32)).sum(axis=4, dtype=np.uint32)
            planes.append((nib << sh).sum(axis=3, dtype=np.uint32))   # [t, l, c]
        words = np.stack(planes, axis=3)                     # [t, l, c, k]
    words = np.ascontiguousarray(words.transpose(0, 2, 3, 1)).astype("<u4")
    return words.view(np.uint8).reshape(lut_shape(d_in, d_out, bits))


def _codes(lut, d_in, d_out, bits, nf4):
    """(NT*16, NC*32) codes of a lut array, padding included."""
    NT, NC = _dims(d_in, d_out)
    w = np.ascontiguousarray(lut, np.uint8).view("<u4").reshape(NT, NC, bits, TILE)
    nib = (w[..., None] >> (4 * np.arange(8, dtype=np.uint32))) & 15   # [t, c, k, l, m]
    if nf4:
        c = nib.transpose(0, 3, 1, 2, 4)                   # [t, l, c, k, m]: input 8k + m
    else:
        bit = (nib[..., None] >> np.arange(4, dtype=np.uint32)) & 1     # [t, c, k, l, m, i]
        q2 = (bit << np.arange(bits, dtype=np.uint32)[None, None, :, None, None, None]).sum(
            axis=2, dtype=np.uint32)                        # [t, c, l, m, i]
        c = (q2 ^ (1 << (bits - 1))).transpose(0, 2, 1, 3, 4)     # [t, l, c, m, i]: 4m + i
    return c.reshape(NT * TILE, NC * CHUNK)


def lut_to_rows(lut, d_in, d_out, bits, nf4):
    codes = _codes(lut, d_in, d_out, bits, nf4)[:d_out, :d_in]
    return pack_nibbles(codes.astype(np.uint8))


def block_scales(d_in, d_out, block_size, scales, scale_codes, scale_scales, scale_mean):
    """(d_out, nblocks) float32 scales as the rows layout decodes them (fastdl.quant)."""
    if block_size is None:
        return np.full((d_out, 1), np.asarray(scales, np.float32).reshape(-1)[0], np.float32)
    nb = -(-d_in // min(block_size, d_in))
    if scale_codes is None:
        return np.asarray(scales, np.float32).reshape(d_out, nb)
    u = np.arange(d_out * nb)
    t = scale_codes.astype(np.float32) * scale_scales[u // 256]
    t = t + np.float32(scale_mean)
    t = np.where(t > 0, np.minimum(t, np.finfo(np.float32).max), np.float32(0))
    return t.astype(np.float32).reshape(d_out, nb)


def tables(x, d_in, nf4):
    """Per row of x: (n, NC*32, 16) NF4 tables NF4[c] * x_i, or (n, NC*8, 16) subset
    sums of each group of 4 inputs (inputs >= d_in are 0)."""
    n = x.shape[0]
    NC = -(-d_in // CHUNK)
    xs = np.zeros((n, NC * CHUNK), np.float32)
    xs[:, :d_in] = x
    if nf4:
        return xs[:, :, None] * NF4_CODEBOOK[None, None, :]
    v = xs.reshape(n, NC * 8, 4)
    u = np.zeros((n, NC * 8, 16), np.float32)
    u[..., 1], u[..., 2] = v[..., 0], v[..., 1]
    u[..., 3] = v[..., 0] + v[..., 1]
    u[..., 4:8] = u[..., 0:4] + v[..., 2:3]
    u[..., 8:16] = u[..., 0:8] + v[..., 3:4]
    return u


def lut_qmatmul(x, lut, d_in, d_out, bits, nf4, block_size, scales=None, scale_codes=None,
                scale_scales=None, scale_mean=None):
    """y = x @ W (float32 (n, d_out)) with the kernels' operations in their order."""
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    NT, NC = _dims(d_in, d_out)
    W = bits
    nb = 1 if block_size is None else -(-d_in // min(block_size, d_in))
    cpb = NC if nb == 1 else block_size // CHUNK
    s = np.zeros((NT * TILE, nb), np.float32)
    s[:d_out] = block_scales(d_in, d_out, block_size, scales, scale_codes, scale_scales,
                             scale_mean)
    s = s.reshape(NT, TILE, nb)
    words = np.ascontiguousarray(lut, np.uint8).view("<u4").reshape(NT, NC, W, TILE)
    T = tables(x, d_in, nf4)
    A = np.zeros((8, n, NT, TILE), np.float32)
    y = np.zeros((n, NT, TILE), np.float32)
    for c in range(NC):
        for k in range(W):
            v = words[:, c, k, :]
            for m in range(8):
                tab = T[:, 32 * c + 8 * k + m] if nf4 else T[:, 8 * c + m]      # (n, 16)
                A[2 * k + (m >> 2)] += tab[:, (v >> (4 * m)) & 15]
        if (c + 1) % cpb == 0 or c + 1 == NC:
            if nf4:
                part = ((A[0] + A[1]) + (A[2] + A[3])) + ((A[4] + A[5]) + (A[6] + A[7]))
            else:
                part = A[0] + A[1]
                for k in range(1, W - 1):
                    part = part + np.float32(2 ** k) * (A[2 * k] + A[2 * k + 1])
                part = part - np.float32(2 ** (W - 1)) * (A[2 * W - 2] + A[2 * W - 1])
            y = y + s[None, :, :, c // cpb] * part
            A[:] = 0
    return y.reshape(n, NT * TILE)[:, :d_out]
