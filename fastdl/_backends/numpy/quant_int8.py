"""NumPy reference of the int8-activation quantized matmul (the readable definition the
Cython kernels and the tests follow).

``y = x @ dequantize(q)`` with the activations quantized per row in blocks of 32
values, as llama.cpp's Q8_0 blocks:

* ``d = absmax / 127`` (float32; ``absmax`` of the block, zero padded past ``d_in``),
  ``q = round_half_away(x * (1 / d))`` (float32 product and reciprocal) clipped to
  ``[-127, 127]``; a block whose absmax is below 2^-100 (or zero) gets ``d = 0``,
  ``q = 0``.
* per output ``(i, j)`` and 32-block ``s``, the exact integer
  ``isum = sum(q_x * unit_w)`` over the block, ``unit_w = code - 2^(bits-1)`` (bits
  2..4) or the int8 ``q`` (bits 5..8); then ``y = sum_B scale_w[B] * sum_{s in B}
  d_x[s] * isum_s`` over the weight's blocks B (a multiple of 32 values, or the whole
  column).  Here the sum is in float64; the kernels compute it in float32 in one
  fixed order (a fused multiply-add per 32-block and per weight block), within
  float32 rounding of this.

Error added against ``x @ dequantize(q)`` (exact): each activation is replaced by
``d_s * q``, off by at most ``e_s = d_s * (1/2 + 2^-16)`` in its block ``s`` (the
``1/2`` of rounding, ``2^-16`` for the float32 reciprocal and product), or by its
absmax (< 2^-100) in a flushed block.  So, with ``W = dequantize(q)``,

    |y[i, j] - (x @ W)[i, j]|  <=  sum_k e_{s(k)}[i] * |W[k, j]|
                                   + (nb32 + nbw) * 2^-23 * sum_k |xhat[i, k]| * |W[k, j]|

the second term being the float32 evaluation (``nb32`` 32-blocks, ``nbw`` weight
blocks per column, ``xhat = d * q``).  ``error_bound`` computes it.
"""
import numpy as np

from fastdl._backends.numpy.quant import round_half_away, unpack_nibbles

FLUSH = np.float32(2.0 ** -100)
ROUNDING_SLACK = 2.0 ** -16


def quantize_rows_q8(x):
    """x float32 (n, d_in) -> (qx int8 (n, kp), d float32 (n, nb32)), kp = 32 * nb32 >=
    d_in (zero padded); raises ValueError for non-finite x."""
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != 2:
        raise TypeError(f"x must be a float32 (n, d_in) array, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x must be finite: int8 activations cannot hold inf or nan")
    n, d_in = x.shape
    nb32 = -(-d_in // 32)
    blocks = np.zeros((n, nb32 * 32), np.float32)
    blocks[:, :d_in] = x
    blocks = blocks.reshape(n, nb32, 32)
    amax = np.abs(blocks).max(axis=2)
    d = (amax / np.float32(127)).astype(np.float32)
    d[amax < FLUSH] = 0
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (blocks * inv[..., None]).astype(np.float32)
    q = np.clip(round_half_away(v), -127, 127).astype(np.int8)
    return q.reshape(n, nb32 * 32), d


def weight_units(q) -> np.ndarray:
    """int (d_out, d_in) integer units of q's codes (code - 2^(bits-1), or the int8 q)."""
    d_in, _ = q.shape
    if q.bits > 4:
        return q.data.astype(np.int64)
    return unpack_nibbles(q.data, d_in).astype(np.int64) - 2 ** (q.bits - 1)


def _check(q):
    if q.scheme == "nf4":
        raise ValueError("activations='int8' needs integer weight codes; NF4 codes are not "
                         "integers: use the exact path (activations='float32') or "
                         "compute='bf16' for NF4 weights")
    d_in = q.shape[0]
    if q.block_size is not None and q.block_size < d_in and q.block_size % 32:
        raise ValueError(f"int8 activations need q.block_size a multiple of 32, None (per "
                         f"tensor) or >= d_in={d_in}, got block_size={q.block_size}")


def _geometry(q, nb32):
    """(spb, per-column weight scales (d_out, nbw) float64)."""
    d_in, d_out = q.shape
    sw = q.block_scales().astype(np.float64)
    if q.block_size is None or q.nblocks == 1:
        return nb32, np.broadcast_to(sw.reshape(-1, 1)[:1] if q.block_size is None else sw,
                                     (d_out, 1))
    return q.block_size // 32, sw


def int_sums(qx, q) -> np.ndarray:
    """int64 (n, d_out, nb32): the exact per-32-block sums of q_x * unit_w."""
    n, kp = qx.shape
    nb32 = kp // 32
    d_in, d_out = q.shape
    u = np.zeros((d_out, kp), np.int64)
    u[:, :d_in] = weight_units(q)
    xb = qx.astype(np.int64).reshape(n, nb32, 32)
    ub = u.reshape(d_out, nb32, 32)
    out = np.empty((n, d_out, nb32), np.int64)
    for s in range(nb32):
        out[:, :, s] = xb[:, s, :] @ ub[:, s, :].T
    return out


def qmatmul_int8(x, q) -> np.ndarray:
    """float64 (n, d_out): y = x @ dequantize(q) with int8 activations, the integer sums
    exact and the scaling in float64 (the definition above)."""
    _check(q)
    qx, d = quantize_rows_q8(x)
    nb32 = qx.shape[1] // 32
    spb, sw = _geometry(q, nb32)
    isum = int_sums(qx, q).astype(np.float64)           # exact below 2^53
    scaled = isum * d.astype(np.float64)[:, None, :]     # (n, d_out, nb32)
    blk = np.arange(nb32) // spb
    per_col = sw[:, blk]                                  # (d_out, nb32)
    return (scaled * per_col[None, :, :]).sum(axis=2)


def error_bound(x, q) -> tuple[np.ndarray, np.ndarray]:
    """(activation_term, rounding_term), each float64 (n, d_out): the bound above is their
    sum; the float32 kernels are within rounding_term of qmatmul_int8."""
    _check(q)
    qx, d = quantize_rows_q8(x)
    n, kp = qx.shape
    nb32 = kp // 32
    d_in, d_out = q.shape
    w = np.abs(q.dequantize().astype(np.float64))        # (d_in, d_out)
    x64 = np.asarray(x, np.float64)
    amax = np.abs(np.pad(x64, ((0, 0), (0, kp - d_in)))).reshape(n, nb32, 32).max(axis=2)
    e = np.where(d > 0, d.astype(np.float64) * (0.5 + ROUNDING_SLACK), amax)
    e_el = np.repeat(e, 32, axis=1)[:, :d_in]
    xhat = (qx.astype(np.float64) * np.repeat(d.astype(np.float64), 32, axis=1))[:, :d_in]
    nbw = 1 if q.block_size is None else q.nblocks
    return e_el @ w, (nb32 + nbw) * 2.0 ** -23 * (np.abs(xhat) @ w)
