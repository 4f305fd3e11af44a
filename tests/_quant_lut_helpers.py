"""Shared by tests/test_quant_lut*.py: quantized weights in the lut layout, the C and
NumPy matmuls on them, and the float32 rounding bound of the lookup-table arithmetic."""
import numpy as np

from fastdl.quant import dequantize, quantize
from fastdl.testing import rng_for
from fastdl._backends.numpy import quant_lut as npl

from _quant_helpers import unpack

EPS32 = float(np.finfo(np.float32).eps)
# (bits, scheme): every format the lut layout holds
FORMATS = [(2, "absmax"), (3, "absmax"), (4, "absmax"), (4, "nf4")]


def make(d_in, d_out, bits, scheme, block_size, dq, *key):
    rng = rng_for("lut", d_in, d_out, bits, scheme, block_size, dq, *key)
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)
    w *= rng.uniform(0.1, 10, size=(1, d_out)).astype(np.float32)   # scales differ per column
    return quantize(w, bits=bits, scheme=scheme, block_size=block_size, double_quant=dq)


def lut_of(q):
    from fastdl._backends.cython import _qlut
    d_in, d_out = q.shape
    return _qlut.rows_to_lut(q.data, d_in, d_out, q.bits, q.scheme == "nf4")


def scale_args(q):
    return (q.scales, q.scale_codes, q.scale_scales, q.scale_mean)


def c_matmul(x, q, lut, nthreads=1):
    from fastdl._backends.cython import _qlut
    d_in, d_out = q.shape
    out = np.full((x.shape[0], d_out), np.nan, np.float32)
    return _qlut.lut_qmatmul(x, lut, d_in, d_out, q.bits, q.scheme == "nf4", q.block_size,
                             *scale_args(q), out, nthreads)


def np_matmul(x, q, lut):
    d_in, d_out = q.shape
    return npl.lut_qmatmul(x, lut, d_in, d_out, q.bits, q.scheme == "nf4", q.block_size,
                           *scale_args(q))


def rounding_bound(x, q):
    """|y - x @ W (float64)| may reach K * (eps32/2) * sum_i |x_i| s_ij M_ij (the standard
    gamma_K bound of a float32 sum of products), where M_ij is what the lookups add up for
    weight (i, j): NF4 |NF4[code]|; absmax the planes' weights sum_k 2^k bit_k of q's
    two's complement (= |q| for q >= 0, 2^bits + q for q < 0: bit-serial sums see every
    set plane).  K counts the roundings a term goes through: its table entry (1 for NF4,
    3 for a subset sum), the chain (bs/8 adds), the combine (3 for NF4, 1 + bits - 1
    for absmax), the scale product, the nb adds into y, and for NF4 the rounding of the
    dequantized weight the reference uses.  Returned with eps32 (twice eps32/2: slack for
    gamma_K = K u / (1 - K u))."""
    d_in, d_out = q.shape
    bs = d_in if q.block_size is None else min(q.block_size, d_in)
    nb = -(-d_in // bs)
    codes = unpack(q.data, d_in).T                       # (d_in, d_out)
    if q.scheme == "nf4":
        from fastdl.quant import NF4_CODEBOOK
        M = np.abs(NF4_CODEBOOK.astype(np.float64))[codes]
        K = 1 + bs / 8 + 3 + 1 + nb + 1
    else:
        b = q.bits
        tc = codes ^ (1 << (b - 1))
        M = sum(float(1 << k) * ((tc >> k) & 1) for k in range(b))
        K = 3 + bs / 8 + b + 1 + nb
    s = npl.block_scales(d_in, d_out, q.block_size, *scale_args(q)).astype(np.float64)
    s_full = np.repeat(s, bs, axis=1)[:, :d_in].T        # (d_in, d_out)
    mag = np.abs(x.astype(np.float64)) @ (s_full * M)
    return K * EPS32 * mag


def reference(x, q):
    return x.astype(np.float64) @ dequantize(q).astype(np.float64)


def assert_within_bound(y, x, q):
    """y is within the lookup-table arithmetic's float32 rounding bound of x @ W (float64)."""
    err = np.abs(y - reference(x, q))
    bound = rounding_bound(x, q)
    assert np.all(err <= bound), float((err / bound).max())
