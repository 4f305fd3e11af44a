"""LoRA and attention kernels (Cython backend); op contracts in fastdl.ops.lora.

BLAS (scipy.linalg.cython_blas) does every product, on fastdl's thread count
(``_cpu.blas_team``), called outside any parallel region; the C kernels of
src/lorak.h do the row and elementwise passes between the calls:

* ``lora_fwd``: xa = (x * mask) A, the masked rows built in blocks of a few rows
  into a small buffer (no (N, I) copy); y = (s xa) Bᵀ, then y += x W by a GEMM
  with beta = 1 (no (N, O) temporary), then + bias.
* ``lora_bwd``: g = s (dy B) (N, R); dB = s (dyᵀ xa); dA = (x * mask)ᵀ g over the
  same row blocks (beta = 1 from the second block on); dx = g Aᵀ, times mask in
  place, then dx += dy Wᵀ with beta = 1.
* ``attention_fwd``: per group, serially, S = scale q kᵀ (one GEMM into p; causal:
  row blocks of ``_CAUSAL_ROWS`` queries against the keys up to the block's last
  one, so the masked corner is never computed), then every row's softmax (each
  row by one thread in one fixed order; ``PARAMS["row_threads"]`` threads, 1 by
  default: see there), then o = p v per group.
* ``attention_bwd``: per group dv = pᵀ do and dp = do vᵀ (into a work buffer the
  size of p), the rows ds = p (dp - rowsum(dp p)) scale (threads as the forward's
  rows), then per group dq = ds k and dk = dsᵀ q.

The row blocks depend on the shapes only, so no result depends on the thread
count (the BLAS splits its work over rows and columns of the result, not over
the sum).
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

import numpy as np

from fastdl._backends.cython._cpu cimport simd_level, team
from fastdl._backends.cython._gemm cimport real, rm_gemm as _mm
from fastdl._backends.cython import _cpu

cdef extern from "lorak.h" nogil:
    ctypedef struct fdl_lorak_f32:
        void (*softmax_row)(float *s, int64_t n, int64_t m) noexcept nogil
        void (*softmax_bwd_row)(float *dp, const float *p, int64_t n, float scale) noexcept nogil
        void (*mul)(const float *a, const float *b, float *y, int64_t n) noexcept nogil
        void (*scale)(const float *a, float *y, int64_t n, float s) noexcept nogil
        void (*add_rows)(float *a, int64_t m, int64_t n, const float *c) noexcept nogil
    ctypedef struct fdl_lorak_f64:
        void (*softmax_row)(double *s, int64_t n, int64_t m) noexcept nogil
        void (*softmax_bwd_row)(double *dp, const double *p, int64_t n, double scale) noexcept nogil
        void (*mul)(const double *a, const double *b, double *y, int64_t n) noexcept nogil
        void (*scale)(const double *a, double *y, int64_t n, double s) noexcept nogil
        void (*add_rows)(double *a, int64_t m, int64_t n, const double *c) noexcept nogil
    const fdl_lorak_f32 *fdl_lorak_f32_table(int level)
    const fdl_lorak_f64 *fdl_lorak_f64_table(int level)


# Rows of x * mask built at once: about this many bytes, so the block stays in cache.
cdef int64_t _BLOCK_BYTES = 512 * 1024
# Causal attention: queries per GEMM block (N = 128: 25% fewer multiply-adds in S and o).
cdef int64_t _CAUSAL_ROWS = 64
cdef int64_t _INT_MAX = 2147483647
# Threads of the softmax rows (0: the op's thread count).  1, measured on the project's
# 2-core AVX-512 Xeon (float32, 2 threads, load adaptation off, best of 30): the OpenMP
# team that ends the rows spin-waits against the BLAS threads of the next GEMM, so
# parallel rows make the op slower, not faster (G=4, N=128, D=1024: forward 4.2 ms
# with 2 row threads, 1.7 ms with 1; backward 7.7 vs 3.4 ms; G=16, D=64: 3.6 vs 1.6 ms).
PARAMS = {"row_threads": 1}
_DEFAULTS = dict(PARAMS)


def set_params(**kw):
    """Change tuning constants (tests and benchmarks); returns the previous values."""
    old = {}
    for k, v in kw.items():
        if k not in PARAMS:
            raise ValueError(f"unknown parameter {k!r}; known: {sorted(PARAMS)}")
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{k} must be an int >= 0, got {v!r}")
        old[k] = PARAMS[k]
    PARAMS.update(kw)
    return old


# ---------------------------------------------------------------- typed shims

# the SIMD level's table, fetched once per call
cdef struct Kern:
    const fdl_lorak_f32 *f
    const fdl_lorak_f64 *d


cdef inline void _kern(Kern *K, const real *tag) noexcept nogil:
    if real is float:
        K.f = fdl_lorak_f32_table(simd_level())
    else:
        K.d = fdl_lorak_f64_table(simd_level())


cdef inline void k_softmax_row(const Kern *K, real *s, int64_t n, int64_t m) noexcept nogil:
    if real is float:
        K.f.softmax_row(s, n, m)
    else:
        K.d.softmax_row(s, n, m)


cdef inline void k_softmax_bwd_row(const Kern *K, real *dp, const real *p, int64_t n,
                                   real scale) noexcept nogil:
    if real is float:
        K.f.softmax_bwd_row(dp, p, n, scale)
    else:
        K.d.softmax_bwd_row(dp, p, n, scale)


cdef inline void k_mul(const Kern *K, const real *a, const real *b, real *y,
                       int64_t n) noexcept nogil:
    if real is float:
        K.f.mul(a, b, y, n)
    else:
        K.d.mul(a, b, y, n)


cdef inline void k_scale(const Kern *K, const real *a, real *y, int64_t n, real s) noexcept nogil:
    if real is float:
        K.f.scale(a, y, n, s)
    else:
        K.d.scale(a, y, n, s)


cdef inline void k_add_rows(const Kern *K, real *a, int64_t m, int64_t n,
                            const real *c) noexcept nogil:
    if real is float:
        K.f.add_rows(a, m, n, c)
    else:
        K.d.add_rows(a, m, n, c)


cdef char *NN = b"N"
cdef char *TT = b"T"


cdef inline int64_t _block_rows(int64_t N, int64_t I, size_t size) noexcept nogil:
    cdef int64_t r = _BLOCK_BYTES // (I * <int64_t>size)
    return max(1, min(N, r))


cdef void *_alloc(int64_t nbytes) except NULL:
    cdef void *q = malloc(nbytes if nbytes > 0 else 1)
    if q == NULL:
        raise MemoryError(f"out of memory for {nbytes} bytes of work buffers")
    return q


# ---------------------------------------------------------------- LoRA

def _lora_fwd(const real[:, ::1] x, w, const real[:, ::1] a, const real[:, ::1] b, bias,
              mask, double scale, real[:, ::1] y, real[:, ::1] xa):
    cdef int64_t N = x.shape[0], I = x.shape[1], R = a.shape[1], O = b.shape[0]
    cdef int64_t nb = _block_rows(N, I, sizeof(real)), kb, r0, rn
    cdef const real[:, ::1] wv, mv
    cdef const real[::1] bv
    cdef const real *X = &x[0, 0]
    cdef const real *A = &a[0, 0]
    cdef const real *B = &b[0, 0]
    cdef const real *W = NULL
    cdef const real *BI = NULL
    cdef const real *M = NULL
    cdef real *Y = &y[0, 0]
    cdef real *XA = &xa[0, 0]
    cdef real *xs
    cdef real *buf
    cdef Kern K
    if w is not None:
        wv = w
        W = &wv[0, 0]
    if bias is not None:
        bv = bias
        BI = &bv[0]
    if mask is not None:
        mv = mask
        M = &mv[0, 0]
    _kern(&K, X)
    xs = <real *>_alloc((N * R + (nb * I if M != NULL else 0)) * sizeof(real))
    buf = xs + N * R
    try:
        with nogil:
            if M == NULL:
                _mm(NN, NN, N, R, I, 1, X, I, A, R, 0, XA, R)
            else:
                for kb in range((N + nb - 1) // nb):
                    r0 = kb * nb
                    rn = min(nb, N - r0)
                    k_mul(&K, X + r0 * I, M + r0 * I, buf, rn * I)
                    _mm(NN, NN, rn, R, I, 1, buf, I, A, R, 0, XA + r0 * R, R)
            k_scale(&K, XA, xs, N * R, <real>scale)       # the scale on the small product
            _mm(NN, TT, N, O, R, 1, xs, R, B, R, 0, Y, O)
            if W != NULL:
                _mm(NN, NN, N, O, I, 1, X, I, W, O, 1, Y, O)
            if BI != NULL:
                k_add_rows(&K, Y, N, O, BI)
    finally:
        free(xs)


def _lora_bwd(const real[:, ::1] dy, const real[:, ::1] x, const real[:, ::1] xa, w,
              const real[:, ::1] a, const real[:, ::1] b, mask, double scale,
              real[:, ::1] da, real[:, ::1] db, dx):
    cdef int64_t N = x.shape[0], I = x.shape[1], R = a.shape[1], O = b.shape[0]
    cdef int64_t nb = _block_rows(N, I, sizeof(real)), kb, r0, rn
    cdef const real[:, ::1] wv, mv
    cdef real[:, ::1] dxv
    cdef const real *DY = &dy[0, 0]
    cdef const real *X = &x[0, 0]
    cdef const real *XA = &xa[0, 0]
    cdef const real *A = &a[0, 0]
    cdef const real *B = &b[0, 0]
    cdef const real *W = NULL
    cdef const real *M = NULL
    cdef real *DA = &da[0, 0]
    cdef real *DB = &db[0, 0]
    cdef real *DX = NULL
    cdef real s = <real>scale
    cdef real *g
    cdef real *buf
    cdef Kern K
    if w is not None:
        wv = w
        W = &wv[0, 0]
    if mask is not None:
        mv = mask
        M = &mv[0, 0]
    if dx is not None:
        dxv = dx
        DX = &dxv[0, 0]
    _kern(&K, X)
    g = <real *>_alloc((N * R + (nb * I if M != NULL else 0)) * sizeof(real))
    buf = g + N * R
    try:
        with nogil:
            _mm(NN, NN, N, R, O, 1, DY, O, B, R, 0, g, R)
            k_scale(&K, g, g, N * R, s)
            _mm(TT, NN, O, R, N, 1, DY, O, XA, R, 0, DB, R)
            k_scale(&K, DB, DB, O * R, s)
            if M == NULL:
                _mm(TT, NN, I, R, N, 1, X, I, g, R, 0, DA, R)
            else:
                for kb in range((N + nb - 1) // nb):
                    r0 = kb * nb
                    rn = min(nb, N - r0)
                    k_mul(&K, X + r0 * I, M + r0 * I, buf, rn * I)
                    _mm(TT, NN, I, R, rn, 1, buf, I, g + r0 * R, R, 0 if kb == 0 else 1, DA, R)
            if DX != NULL:
                _mm(NN, TT, N, I, R, 1, g, R, A, R, 0, DX, I)
                if M != NULL:
                    k_mul(&K, DX, M, DX, N * I)
                if W != NULL:
                    _mm(NN, TT, N, I, O, 1, DY, O, W, O, 1, DX, I)
    finally:
        free(g)


# ---------------------------------------------------------------- attention

def _att_fwd(const real[:, :, ::1] q, const real[:, :, ::1] k, const real[:, :, ::1] v,
             double scale, bint causal, real[:, :, ::1] o, real[:, :, ::1] p, int nthreads):
    cdef int64_t G = q.shape[0], N = q.shape[1], D = q.shape[2], M = k.shape[1]
    cdef int64_t E = v.shape[2], gi, r, kb, r0, r1, cb = _CAUSAL_ROWS
    cdef const real *Q = &q[0, 0, 0]
    cdef const real *Kp = &k[0, 0, 0]
    cdef const real *V = &v[0, 0, 0]
    cdef real *O = &o[0, 0, 0]
    cdef real *P = &p[0, 0, 0]
    cdef Kern K
    cdef int nt = team(PARAMS["row_threads"] or nthreads, G * N * M * <int64_t>sizeof(real),
                       G * N)
    _kern(&K, Q)
    with nogil:
        for gi in range(G):
            if not causal:
                _mm(NN, TT, N, M, D, <real>scale, Q + gi * N * D, D, Kp + gi * M * D, D, 0,
                    P + gi * N * M, M)
                continue
            for kb in range((N + cb - 1) // cb):
                r0 = kb * cb
                r1 = min(N, r0 + cb)
                _mm(NN, TT, r1 - r0, r1, D, <real>scale, Q + (gi * N + r0) * D, D,
                    Kp + gi * M * D, D, 0, P + (gi * N + r0) * M, M)
        # one row per thread: entries past the live ones (never computed) become 0
        for r in prange(G * N, num_threads=nt, schedule="static"):
            k_softmax_row(&K, P + r * M, M, (r % N) + 1 if causal else M)
        for gi in range(G):
            if not causal:
                _mm(NN, NN, N, E, M, 1, P + gi * N * M, M, V + gi * M * E, E, 0,
                    O + gi * N * E, E)
                continue
            for kb in range((N + cb - 1) // cb):
                r0 = kb * cb
                r1 = min(N, r0 + cb)
                _mm(NN, NN, r1 - r0, E, r1, 1, P + (gi * N + r0) * M, M, V + gi * M * E, E, 0,
                    O + (gi * N + r0) * E, E)


def _att_bwd(const real[:, :, ::1] do, const real[:, :, ::1] q, const real[:, :, ::1] k,
             const real[:, :, ::1] v, const real[:, :, ::1] p, double scale,
             real[:, :, ::1] dq, real[:, :, ::1] dk, real[:, :, ::1] dv, int nthreads):
    cdef int64_t G = q.shape[0], N = q.shape[1], D = q.shape[2], M = k.shape[1]
    cdef int64_t E = v.shape[2], gi, r
    cdef const real *DO = &do[0, 0, 0]
    cdef const real *Q = &q[0, 0, 0]
    cdef const real *Kp = &k[0, 0, 0]
    cdef const real *V = &v[0, 0, 0]
    cdef const real *P = &p[0, 0, 0]
    cdef real *DQ = &dq[0, 0, 0]
    cdef real *DK = &dk[0, 0, 0]
    cdef real *DV = &dv[0, 0, 0]
    cdef real *S
    cdef Kern K
    cdef int nt = team(PARAMS["row_threads"] or nthreads,
                       2 * G * N * M * <int64_t>sizeof(real), G * N)
    _kern(&K, Q)
    S = <real *>_alloc(G * N * M * sizeof(real))
    try:
        with nogil:
            for gi in range(G):
                _mm(TT, NN, M, E, N, 1, P + gi * N * M, M, DO + gi * N * E, E, 0,
                    DV + gi * M * E, E)
                _mm(NN, TT, N, M, E, 1, DO + gi * N * E, E, V + gi * M * E, E, 0,
                    S + gi * N * M, M)
            for r in prange(G * N, num_threads=nt, schedule="static"):
                k_softmax_bwd_row(&K, S + r * M, P + r * M, M, <real>scale)
            for gi in range(G):
                _mm(NN, NN, N, D, M, 1, S + gi * N * M, M, Kp + gi * M * D, D, 0,
                    DQ + gi * N * D, D)
                _mm(TT, NN, M, D, N, 1, S + gi * N * M, M, Q + gi * N * D, D, 0,
                    DK + gi * M * D, D)
    finally:
        free(S)


# ---------------------------------------------------------------- checks and the ops
# The ops are reachable directly (backend functions, tests), so each checks what the
# kernels index memory with before it releases the GIL.

def _desc(a):
    return f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}".rstrip()


def _arr(a, name, dtype, shape, optional=False):
    if a is None and optional:
        return
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.dtype not in (np.float32,
                                                                             np.float64):
        raise TypeError(f"{name} must be a {dtype} numpy.ndarray (float32 or float64), got "
                        f"{_desc(a)}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous or not a.flags.aligned:
        raise ValueError(f"{name} must be C-contiguous and aligned, got strides {a.strides}")
    if any(d > _INT_MAX for d in shape):
        raise ValueError(f"{name} has a dimension past the BLAS's 32-bit limit: {shape}")


def _dim(a, int i, int ndim):
    """a.shape[i] of an ndim-D array; -1 (which no shape check accepts) otherwise."""
    return a.shape[i] if isinstance(a, np.ndarray) and a.ndim == ndim else -1


def _xdims(x, name, ndim):
    if not isinstance(x, np.ndarray) or x.ndim != ndim or x.size == 0:
        raise ValueError(f"{name} must be a non-empty {ndim}-D numpy.ndarray, got {_desc(x)}")
    return x.shape


class _Blas:
    """BLAS at fastdl's thread count inside the block (the caller's count restored)."""
    def __init__(self, nthreads):
        self.n = _cpu.blas_team(nthreads)

    def __enter__(self):
        self.old = _cpu.blas_threads(self.n)

    def __exit__(self, *exc):
        if self.old:
            _cpu.blas_threads(self.old)


def lora_fwd(x, w, a, b, bias, mask, scale, nthreads):
    """(y, xa) of fastdl.ops.lora.lora_fwd: y = x w + bias + scale (x*mask) a bᵀ."""
    N, I = _xdims(x, "x", 2)
    dt = x.dtype
    _arr(x, "x", dt, (N, I))
    _arr(a, "a", dt, (I, _dim(a, 1, 2)))
    R = a.shape[1]
    _arr(b, "b", dt, (_dim(b, 0, 2), R))
    O = b.shape[0]
    _arr(w, "w", dt, (I, O), True)
    _arr(bias, "bias", dt, (O,), True)
    _arr(mask, "mask", dt, (N, I), True)
    y, xa = np.empty((N, O), dt), np.empty((N, R), dt)
    with _Blas(nthreads):
        _lora_fwd(x, w, a, b, bias, mask, float(scale), y, xa)
    return y, xa


def lora_bwd(dy, x, xa, w, a, b, mask, scale, need_dx, nthreads):
    """(da, db, dx) of fastdl.ops.lora.lora_bwd (dx None unless need_dx)."""
    N, I = _xdims(x, "x", 2)
    dt = x.dtype
    _arr(x, "x", dt, (N, I))
    _arr(a, "a", dt, (I, _dim(a, 1, 2)))
    R = a.shape[1]
    _arr(b, "b", dt, (_dim(b, 0, 2), R))
    O = b.shape[0]
    _arr(dy, "dy", dt, (N, O))
    _arr(xa, "xa", dt, (N, R))
    _arr(w, "w", dt, (I, O), True)
    _arr(mask, "mask", dt, (N, I), True)
    da, db = np.empty((I, R), dt), np.empty((O, R), dt)
    dx = np.empty((N, I), dt) if need_dx else None
    with _Blas(nthreads):
        _lora_bwd(dy, x, xa, w, a, b, mask, float(scale), da, db, dx)
    return da, db, dx


def _att_shapes(q, k, v):
    G, N, D = _xdims(q, "q", 3)
    dt = q.dtype
    _arr(q, "q", dt, (G, N, D))
    M = _xdims(k, "k", 3)[1]
    _arr(k, "k", dt, (G, M, D))
    _arr(v, "v", dt, (G, M, _dim(v, 2, 3)))
    return G, N, D, M, v.shape[2], dt


def attention_fwd(q, k, v, scale, causal, nthreads):
    """(o, p) of fastdl.ops.lora.attention_fwd: p = softmax(scale q kᵀ) (causal: keys j <= i),
    o = p v, per group."""
    G, N, D, M, E, dt = _att_shapes(q, k, v)
    if causal and M != N:
        raise ValueError(f"causal attention needs as many keys as queries, got N={N} queries "
                         f"and M={M} keys")
    o, p = np.empty((G, N, E), dt), np.empty((G, N, M), dt)
    with _Blas(nthreads):
        _att_fwd(q, k, v, float(scale), bool(causal), o, p, nthreads)
    return o, p


def attention_bwd(do, q, k, v, p, scale, nthreads):
    """(dq, dk, dv) of fastdl.ops.lora.attention_bwd, given the forward's p."""
    G, N, D, M, E, dt = _att_shapes(q, k, v)
    _arr(do, "do", dt, (G, N, E))
    _arr(p, "p", dt, (G, N, M))
    dq, dk, dv = np.empty((G, N, D), dt), np.empty((G, M, D), dt), np.empty((G, M, E), dt)
    with _Blas(nthreads):
        _att_bwd(do, q, k, v, p, float(scale), dq, dk, dv, nthreads)
    return dq, dk, dv
