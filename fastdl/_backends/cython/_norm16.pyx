"""float16 normalization kernels (Cython backend); op contracts in fastdl.norm.

x, dy, y and dx are float16 (passed to C as their uint16 bits); weight, bias,
per-column vectors and the dweight/dbias partial sums are float32, statistics
float64.  The drivers are those of the float32 path (_norm, _norm_bwd): their
C units (src/normk16.c) convert the rows a chunk at a time in L1 and run the
float32 kernels on the chunk, so every result is bitwise the float32 path's on
``x.astype(np.float32)`` (same work units, same block lengths, same merge
order), rounded once to float16 - without a float32 copy of any array.
Outputs are written with plain stores (no streaming).
"""
from libc.stdint cimport uint16_t

import numpy as np

from fastdl._backends.cython._moments cimport fdl_moments_f32, fdl_moments_f32_table
from fastdl._backends.cython._norm import (  # noqa: F401 - this module's ops
    batch_norm_bwd, batch_norm_eval, batch_norm_fwd, group_norm_bwd, group_norm_fwd,
    layer_norm_bwd, layer_norm_fwd, rms_norm_bwd, rms_norm_fwd)

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)


def half_to_float(h, int level):
    """Test hook: float16 ``h`` (1-D, contiguous) as float32, converted at SIMD ``level``."""
    cdef const uint16_t[::1] hv = np.ascontiguousarray(h, F16).view(np.uint16)
    out = np.empty(hv.shape[0], F32)
    cdef float[::1] ov = out
    if hv.shape[0]:
        fdl_moments_f32_table(level).h2f(&hv[0], &ov[0], hv.shape[0])
    return out


def float_to_half(f, int level):
    """Test hook: float32 ``f`` (1-D, contiguous) rounded to float16 at SIMD ``level``."""
    cdef const float[::1] fv = np.ascontiguousarray(f, F32)
    out = np.empty(fv.shape[0], F16)
    cdef uint16_t[::1] ov = out.view(np.uint16)
    if fv.shape[0]:
        fdl_moments_f32_table(level).f2h(&fv[0], &ov[0], fv.shape[0])
    return out
