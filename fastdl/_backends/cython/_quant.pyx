"""Quantization kernels (Cython backend); format and op contracts in fastdl.quant,
arithmetic contracts of the kernels in src/quantk.h.

* ``quantize``: column strips of W (OpenMP), tiles of block rows x strip: the
  block absmax is a max over rows of vectors along j, codes go through a small
  transpose buffer, then are packed into the storage rows.
* ``dequantize``: strips of storage rows decoded into a small buffer, written
  transposed.
* ``qmatmul``: n <= ``PARAMS["small_n"]`` (``"small_n_t"`` transposed; both
  measured): fused AVX2 kernels.  n = 1: each 32-value half is unpacked in
  registers (nibbles by and/shift, int2-4 to floats by the 2^23 magic number,
  NF4 by a pshufb lookup of the codebook's byte planes) and FMA'd with x into per-block lane accumulators, one
  scale multiply per block.  n >= 2: each pair of storage rows is decoded
  once into float32 values (exactly dequantize's), then 2 rows x 2 columns
  register tiles.  Transposed: threads own slices of d_in (private, padded
  accumulation buffers) and loop over the storage rows j in order, four at a
  time, y += (x[:, j] * s_jb) * unit: the same fma sequence per element for
  any thread count.  Larger n:
  panels of ``PARAMS["panel"]`` storage rows dequantized (exact float32
  values) and multiplied with BLAS sgemm/dgemm (OpenBLAS threads); the panel
  is decoded by ``PARAMS["decode_threads"]`` threads so no OpenMP team spins
  against OpenBLAS during the GEMM.
"""
from libc.stdint cimport int64_t, uint8_t, int8_t
from scipy.linalg.cython_blas cimport sgemm, dgemm

import numpy as np

from fastdl._backends.cython._cpu cimport simd_level
from fastdl._backends.cython._cpu cimport team
from fastdl._backends.cython import _cpu

cdef extern from "quantk.h" nogil:
    ctypedef void (*fdl_sgemm_t)(char *, char *, int *, int *, int *, float *, float *, int *,
                                 float *, int *, float *, float *, int *)
    ctypedef void (*fdl_dgemm_t)(char *, char *, int *, int *, int *, double *, double *, int *,
                                 double *, int *, double *, double *, int *)
    ctypedef struct fdl_qk_desc:
        int64_t d_in, d_out, bs, nb, rowb
        int bits, nf4, per_tensor, dq
        const uint8_t *data
        const float *scales
        const int8_t *sc_codes
        const float *sc_scales
        float sc_mean
    void fdl_qk_init()
    void fdl_qk_set_team(int (*team)(int, int64_t, int64_t) noexcept nogil)
    const float *fdl_qk_nf4_thresholds()
    int fdl_qk_quantize(const float *w, int64_t d_in, int64_t d_out, int bits, int nf4,
                        int64_t bs, int floor_, int per_tensor, uint8_t *data, float *scales,
                        int nthreads, int level)
    int fdl_qk_dequantize(const fdl_qk_desc *q, void *out, int f64, int nthreads, int level)
    int fdl_qk_matmul_small(const fdl_qk_desc *q, const void *x, int64_t n, void *y, int f64,
                            int transpose, int nthreads, int level)
    int fdl_qk_matmul_large(const fdl_qk_desc *q, const void *x, int64_t n, void *y, int f64,
                            int transpose, int nthreads, int level, int64_t panel,
                            int decode_threads, fdl_sgemm_t sgemm, fdl_dgemm_t dgemm)

fdl_qk_init()
fdl_qk_set_team(team)

cdef int64_t INT_MAX = 2147483647

# Tuning constants, measured on the 2-core AVX2 Xeon of the project (float32,
# d_in = d_out = 4096, int8 / int4 / NF4+dq blocks of 64, 2 threads, median of 9):
# the fused kernel beats panels + sgemm up to n = 16 (x @ W: 8.2 vs 9.7 ms; n = 24
# is even, 32 loses 16 vs 13 ms) and, transposed, up to n = 48 (17 vs 19 ms; n = 64
# loses 25 vs 20 ms).  panel / panel_t: storage rows per sgemm call (n = 512:
# 512 rows 73 ms vs 256 rows 80 ms; transposed 256 rows 67.5 ms vs 512 rows 69 ms).
# decode_threads: threads that decode a panel; 1, because an OpenMP team that
# decodes and then spin-waits fights OpenBLAS's threads (2 threads: 105-210 ms).
PARAMS = {"small_n": 20, "small_n_t": 48, "panel": 512, "panel_t": 256, "decode_threads": 1}
_DEFAULTS = dict(PARAMS)


def set_params(**kw):
    """Change tuning constants (tests and benchmarks); returns the previous values.
    ``set_params(**_DEFAULTS)`` restores."""
    old = {}
    for k, v in kw.items():
        if k not in PARAMS:
            raise ValueError(f"unknown parameter {k!r}; known: {sorted(PARAMS)}")
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k.startswith("small") else 1):
            raise ValueError(f"{k} must be a positive int, got {v!r}")
        old[k] = PARAMS[k]
    PARAMS.update(kw)
    return old


def nf4_thresholds():
    cdef const float *t = fdl_qk_nf4_thresholds()
    return np.array([t[k] for k in range(15)], np.float32)


def quantize(w, int bits, scheme, int64_t bs, rounding, bint per_tensor, int nthreads):
    """w: C-contiguous float32 (d_in, d_out), checked by the caller."""
    cdef const float[:, ::1] wv = w
    cdef int64_t d_in = wv.shape[0], d_out = wv.shape[1]
    cdef int nf4 = scheme == "nf4"
    cdef int fl = rounding == "floor"
    cdef int64_t nb = 1
    if not per_tensor:
        nb = (d_in + bs - 1) // bs
    cdef int64_t rowb = d_in
    if bits <= 4:
        rowb = 32 * (d_in // 64) + (d_in % 64 + 1) // 2
    data = np.empty((d_out, rowb), np.int8 if bits > 4 else np.uint8)
    sshape = (1,)
    if not per_tensor:
        sshape = (int(d_out), int(nb))
    scales = np.empty(sshape, np.float32)
    cdef uint8_t[:, ::1] dv = data.view(np.uint8)
    cdef float[::1] sv = scales.reshape(-1)
    cdef int rc, level = simd_level()
    with nogil:
        rc = fdl_qk_quantize(&wv[0, 0], d_in, d_out, bits, nf4, bs, fl, per_tensor,
                             &dv[0, 0], &sv[0], nthreads, level)
    if rc:
        raise MemoryError("quantize: out of memory for the tile buffers")
    return data, scales


cdef int _desc(fdl_qk_desc *d, q, dict keep) except -1:
    """Fill d from the QuantizedTensor q; keep holds the arrays alive."""
    cdef const uint8_t[:, ::1] data = q.data.view(np.uint8)
    cdef const float[::1] sc
    cdef const int8_t[::1] codes
    cdef const float[::1] gs
    d_in, d_out = q.shape
    d.d_in = d_in
    d.d_out = d_out
    d.bits = q.bits
    d.nf4 = q.scheme == "nf4"
    d.per_tensor = q.block_size is None
    d.bs = d_in if q.block_size is None else min(q.block_size, d_in)   # one block at most d_in
    d.nb = 1 if q.block_size is None else (d_in + d.bs - 1) // d.bs
    d.rowb = data.shape[1]
    d.data = &data[0, 0]
    keep["data"] = data
    d.dq = bool(q.double_quant)
    d.scales = NULL
    d.sc_codes = NULL
    d.sc_scales = NULL
    d.sc_mean = 0
    if d.dq:
        codes = q.scale_codes
        gs = q.scale_scales
        d.sc_codes = &codes[0]
        d.sc_scales = &gs[0]
        d.sc_mean = float(q.scale_mean)
        keep["codes"] = codes
        keep["gs"] = gs
    else:
        sc = q.scales.reshape(-1)
        d.scales = &sc[0]
        keep["sc"] = sc
    return 0


def dequantize(q, out, int nthreads):
    """out: C-contiguous writeable float32/float64 (d_in, d_out), checked by the caller."""
    cdef fdl_qk_desc d
    cdef dict keep = {}
    _desc(&d, q, keep)
    cdef int f64 = out.dtype == np.float64
    cdef uint8_t[::1] ov = out.reshape(-1).view(np.uint8)
    cdef int level = simd_level()
    with nogil:
        fdl_qk_dequantize(&d, &ov[0], f64, nthreads, level)
    return out


def qmatmul(x, q, bint transpose, out, int nthreads, path=None):
    """x (n, k) and out (n, m): C-contiguous, same float dtype, checked by the caller.
    ``path``: None (choose by n), "small" or "blas" (tests)."""
    cdef fdl_qk_desc d
    cdef dict keep = {}
    _desc(&d, q, keep)
    cdef int64_t n = x.shape[0]
    cdef int f64 = x.dtype == np.float64
    cdef const uint8_t[::1] xv = x.reshape(-1).view(np.uint8)
    cdef uint8_t[::1] ov = out.reshape(-1).view(np.uint8)
    cdef int level = simd_level(), rc
    cdef int64_t panel = PARAMS["panel_t" if transpose else "panel"]
    cdef int dthreads = PARAMS["decode_threads"]
    if path is None:
        path = "small" if n <= PARAMS["small_n_t" if transpose else "small_n"] else "blas"
    if path == "blas" and max(n, d.d_in, d.d_out) > INT_MAX:
        path = "small"          # BLAS takes 32-bit ints
    if path not in ("small", "blas"):
        raise ValueError(f"path must be None, 'small' or 'blas', got {path!r}")
    cdef bint small = path == "small"
    # BLAS runs outside any OpenMP region, on as many threads as fastdl would use
    cdef int blas_old = 0 if small else _cpu.blas_threads(_cpu.blas_team(nthreads))
    try:
        with nogil:
            if small:
                rc = fdl_qk_matmul_small(&d, &xv[0], n, &ov[0], f64, transpose, nthreads, level)
            else:
                rc = fdl_qk_matmul_large(&d, &xv[0], n, &ov[0], f64, transpose, nthreads, level,
                                         panel, dthreads, sgemm, dgemm)
    finally:
        if blas_old:
            _cpu.blas_threads(blas_old)
    if rc:
        raise MemoryError("qmatmul: out of memory for the work buffers")
    return out
