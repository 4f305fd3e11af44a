"""How ``qmatmul`` runs a tensor of any scheme and layout on the kernels' two schemes.

The kernels know absmax units (``code - 2^(bits-1)``, int8 q) and NF4, in the rows
or the LUT layout.  'signmax' is stored exactly as absmax is, so its kernel view is
the same arrays under scheme 'absmax'.  'minmax' (w = d * code + m) is the absmax
view plus one small product: with ``code = unit + 2^(bits-1)``,

    x @ W = x @ (d * unit) + blocksums(x) @ (m + 2^(bits-1) * d)

where ``blocksums(x)`` sums x over each scale block (an ``(n, nblocks)`` array).
"""
from __future__ import annotations

import numpy as np

from fastdl import ops as _ops

PATH_BLOCK = 32          # the opt-in paths work in blocks of 32 inputs
SMALL_ROWS = 16          # up to here minmax's small product stays off BLAS


def kept(q, key, build):
    """``q._derived[key]``, made by ``build()`` on first use and kept (tensors are
    immutable, so it stays valid); the arrays in it are made read-only."""
    got = q._derived.get(key)
    if got is None:
        got = build()
        for a in got if isinstance(got, tuple) else (got,):
            if isinstance(a, np.ndarray):
                a.setflags(write=False)
        q._derived[key] = got
    return got


def kernel_view(q):
    """``q`` under a scheme the kernels compute (the same arrays, no copy; made once)."""
    if q.scheme in ("absmax", "nf4"):
        return q
    from fastdl.quant import QuantizedTensor
    return kept(q, "view", lambda: QuantizedTensor(q.shape, q.bits, "absmax", q.block_size,
                                                   "nearest", q.data, q.scales,
                                                   layout=q.layout, _copy=False))


def rows_view(q):
    return kernel_view(q).to_layout("rows")


def _block_edges(d_in: int, block_size):
    bs = d_in if block_size is None else min(block_size, d_in)
    return np.arange(0, d_in, bs)


def _shifted_mins(q, dtype, transposed=False):
    """m + 2^(bits-1) * d per block, (d_out, nblocks) (``transposed``: (nblocks, d_out),
    C-contiguous either way: the small product reads it straight), made once."""
    def build():
        off = float(1 << (q.bits - 1))
        m = q.block_mins().astype(np.float64) + off * q.block_scales().astype(np.float64)
        m = np.broadcast_to(m, (q.shape[1], q.nblocks))          # per tensor: (1, 1)
        return np.ascontiguousarray(m.T if transposed else m, dtype=dtype)
    return kept(q, ("mins", np.dtype(dtype).str, transposed), build)


_blas = None


def one_blas_thread():
    """A context in which NumPy's BLAS runs on the calling thread only: its workers, once
    woken, spin for ~0.1 s and took a core from the int8 kernel that ran next (Q4_1 at
    512 rows, 4096 x 4096: 51 ms against 31 with the minmax term on one thread)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def minmax_term(x2: np.ndarray, q, transpose: bool) -> np.ndarray:
    """What 'minmax' adds to the absmax view's product (shape of the result)."""
    d_in = q.shape[0]
    edges = _block_edges(d_in, q.block_size)
    if not transpose:
        sums = np.add.reduceat(x2, edges, axis=1)                  # (n, nb)
        m = _shifted_mins(q, x2.dtype, transposed=True)              # (nb, d_out)
        if x2.shape[0] <= SMALL_ROWS:
            # einsum's own loop, not BLAS: OpenBLAS's threads spin ~0.1 s after a call and
            # would take a core from the next few-row kernel
            return np.einsum("nb,bj->nj", sums, m)
        with one_blas_thread():                                      # the same, many rows
            return sums @ m
    with one_blas_thread():
        c = x2 @ _shifted_mins(q, x2.dtype)                         # (n, nb)
    lengths = np.diff(np.append(edges, d_in))
    return np.repeat(c, lengths, axis=1)


def minmax_values(q) -> np.ndarray:
    """float32 (d_in, d_out) values ``d * code + m`` of a 'minmax' tensor (the product
    rounded to float32 before the sum, as llama.cpp and gguf compute them)."""
    from fastdl._backends.numpy.quant_schemes import dequantize_schemes
    r = rows_view(q)
    v = dequantize_schemes(r.data, q.scales, q.shape, q.bits, "minmax", q.block_size, q.mins)
    return np.ascontiguousarray(v.T)


def check_path(q, path: str) -> None:
    """ValueError when an opt-in path cannot take this tensor."""
    arg = "activations='int8'" if path == "int8" else "compute='bf16'"
    if path == "int8" and q.scheme == "nf4":
        raise ValueError(f"{arg} multiplies integer codes; NF4 codes stand for codebook "
                         "values that are not integers: use compute='bf16' or the exact "
                         "path (activations=None)")
    bs = q.block_size
    if bs is not None and bs < q.shape[0] and bs % PATH_BLOCK:
        raise ValueError(f"{arg} works in blocks of {PATH_BLOCK} inputs: it needs q.block_size "
                         f"a multiple of {PATH_BLOCK} or per-tensor scales, got "
                         f"block_size={bs}")


def run(x2, q, transpose, path, buf, backend):
    """The product into ``buf`` ((n, m), x2's dtype) by the path asked for."""
    kq = kernel_view(q)
    if path is None:
        res = _ops.qmatmul(x2, kq, transpose, buf, backend=backend)
    elif path == "int8":
        res = _ops.qmatmul_int8(x2, kq.to_layout("rows"), buf, backend=backend)
    else:
        res = _ops.qmatmul_bf16(x2, kq.to_layout("rows"), buf, backend=backend)
    if q.scheme == "minmax":
        res += minmax_term(x2, q, transpose)
    return res
