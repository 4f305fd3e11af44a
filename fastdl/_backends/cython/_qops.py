"""The Cython backend's quantized products that pick among kernel modules.

``qmatmul`` of a LUT-layout tensor runs the lookup-table kernels (``_qlut``) for float32
``x @ W`` with few rows at the AVX-512 level (where one ``vpermps`` looks up 16
columns; pinned to AVX2 the rows kernels are faster); every other product runs
``_quant``'s kernels on the tensor's rows form.  ``qmatmul_int8`` / ``qmatmul_bf16``
are the opt-in paths (``_qint8``, ``_qbf16``).  What a kernel needs reordered (a LUT
tensor's scales in tile order, the int8 kernels' column tiles) is built on first use and
kept in the tensor's ``_derived`` cache (tensors are immutable).
"""
from __future__ import annotations

import numpy as np

from fastdl._backends.cython import _cpu, _qbf16, _qint8, _qlut, _quant
from fastdl._qpaths import kept

# Up to this many rows the LUT kernels beat the rows kernels (measured at 4096x4096,
# one thread: each extra row costs a lookup and an add per 16 weights, against one FMA)
LUT_ROWS = {"absmax": 16, "nf4": 8}


def _lut_ok(x, q, transpose) -> bool:
    return (not transpose and x.dtype == np.float32 and x.shape[0] <= LUT_ROWS[q.scheme]
            and _cpu.active_simd() == "avx512"
            and _qlut.lut_supports(q.bits, q.scheme == "nf4", q.block_size))


def _lut_args(q):
    return (q.data, q.shape[0], q.shape[1], q.bits, q.scheme == "nf4", q.block_size, q.scales,
            q.scale_codes, q.scale_scales, q.scale_mean)


def _tile_scales(q, nthreads):
    """The tensor's block scales in the LUT kernels' order, decoded once and kept with
    it (4 bytes per block: decoding and reordering them cost a fifth of a 4096 x 4096
    product at n = 1)."""
    return kept(q, "lut_scales", lambda: _qlut.lut_tile_scales(*_lut_args(q), nthreads))


def qmatmul(x, q, transpose, out, nthreads):
    if q.layout == "lut":
        if _lut_ok(x, q, transpose):
            return _qlut.lut_qmatmul(x, *_lut_args(q), out, nthreads,
                                     tile_scales=_tile_scales(q, nthreads))
        q = q.to_layout("rows")
    return _quant.qmatmul(x, q, transpose, out, nthreads)


def _int8_tiles(q, nthreads):
    """q's codes reordered for the int8 small-n and AMX kernels, built on the first
    product that runs one and kept with q (as large as its codes, plus 4 bytes per
    weight block)."""
    return kept(q, "int8_tiles", lambda: _qint8.int8_tiles(q, nthreads))


def qmatmul_int8(x, q, out, nthreads):
    tiles = _int8_tiles(q, nthreads) if _qint8.tiles_run(x.shape[0]) else None
    return _qint8.int8_qmatmul(x, q, out, nthreads, tiles=tiles)


def qmatmul_bf16(x, q, out, nthreads):
    return _qbf16.bf16_qmatmul(x, q, out, nthreads)


def dequantize(q, out, nthreads):
    return _quant.dequantize(q.to_layout("rows"), out, nthreads)
