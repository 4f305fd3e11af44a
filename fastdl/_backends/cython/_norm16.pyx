"""float16 normalization kernels (Cython backend); op contracts in fastdl.norm.

x, dy, y and dx are float16 (passed to C as their uint16 bits); weight, bias,
per-column vectors and the dweight/dbias partial sums are float32, statistics
float64.  The C units (src/normk16.c) convert their rows a chunk at a time in
L1 and run the float32 kernels on the chunk, so every result is bitwise the
float32 path's on ``x.astype(np.float32)`` (same work units, same block
lengths, same merge order), rounded once to float16 - without a float32 copy
of any array.  The work split is the float32 one: it never depends on the
thread count.  Outputs are written with plain stores (no streaming).
"""
from cython.parallel cimport prange, parallel, threadid
from libc.stdint cimport int64_t, uint16_t
from libc.string cimport memset
from libc.math cimport sqrt
cimport cython

import numpy as np

from fastdl._backends.cython._cpu cimport simd_level, team
from fastdl._backends.cython._norm import _chunk_rows, _column_vectors, _reduce_partials, _split_mean
from fastdl._backends.cython._norm_stats import _scratch_array, moments

cdef extern from "normk16.h" nogil:
    void fdl_nk16_layer_row(const uint16_t *x, uint16_t *y, int64_t D, const float *w,
                            const float *b, double eps, int level, double *mean, double *var)
    void fdl_nk16_rms_row(const uint16_t *x, uint16_t *y, int64_t D, const float *w, double eps,
                          int level, double *ms)
    void fdl_nk16_group_row(const uint16_t *x, uint16_t *y, int64_t K, int64_t S,
                            const float *w, const float *b, double eps, int level,
                            double *mean, double *var)
    void fdl_nk16_apply_chan(const uint16_t *x, uint16_t *y, int64_t n, float mh, float ml,
                             float a, float c, int level)
    void fdl_nk16_apply_cols(const uint16_t *x, uint16_t *y, int64_t n, const float *mh,
                             const float *ml, const float *a, const float *c, int level)
    void fdl_nk16_seg_moments(const uint16_t *x, int64_t nseg, int64_t len, int64_t stride,
                              int level, double *work, double *mean, double *m2)
    void fdl_nk16_layer_bwd_row(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t D,
                                double mean, double rstd, const float *w, float *dwp,
                                float *dbp, int level)
    void fdl_nk16_rms_bwd_row(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t D,
                              double rstd, const float *w, float *dwp, int level)
    void fdl_nk16_group_bwd_row(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t K,
                                int64_t S, double mean, double rstd, const float *w, double *A,
                                double *B, int level)
    void fdl_nk16_seg_sums(const uint16_t *dy, const uint16_t *x, int64_t n, float mh, float ml,
                           float r, double *A, double *B, int level)
    void fdl_nk16_seg_dx(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t n,
                         float mh, float ml, float r, float wk, float c1, float c2,
                         int training, int level)
    void fdl_nk16_col_sums(const uint16_t *dy, const uint16_t *x, int64_t n, const float *mh,
                           const float *ml, const float *r, float *ap, float *bp, int level)
    void fdl_nk16_col_dx(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t n,
                         const float *mh, const float *ml, const float *r, const float *w,
                         const float *c1, const float *c2, int training, int level)
    void fdl_nk16_h2f(const uint16_t *h, float *f, int64_t n, int level)
    void fdl_nk16_f2h(const float *f, uint16_t *h, int64_t n, int level)

cdef extern from "normk.h" nogil:
    int64_t fdl_seg_moments_work(int64_t nseg, int64_t len, int64_t itemsize)

# the float32 path's thresholds (see _norm.pyx), on float32 sizes
cdef int64_t CHANNEL_SEGMENT_BYTES = 256
cdef int64_t FEW_CHANNELS = 16

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)


def _bits(a):
    return a.view(np.uint16)


def _output(out, x):
    return np.empty(x.shape, F16) if out is None else out


def _ones(w, n):
    return np.ones(n, F32) if w is None else w


def _zeros(b, n):
    return np.zeros(n, F32) if b is None else b


def half_to_float(h, int level):
    """Test hook: float16 ``h`` (1-D, contiguous) as float32, converted at SIMD ``level``."""
    cdef const uint16_t[::1] hv = _bits(np.ascontiguousarray(h, F16))
    out = np.empty(hv.shape[0], F32)
    cdef float[::1] ov = out
    if hv.shape[0]:
        fdl_nk16_h2f(&hv[0], &ov[0], hv.shape[0], level)
    return out


def float_to_half(f, int level):
    """Test hook: float32 ``f`` (1-D, contiguous) rounded to float16 at SIMD ``level``."""
    cdef const float[::1] fv = np.ascontiguousarray(f, F32)
    out = np.empty(fv.shape[0], F16)
    cdef uint16_t[::1] ov = _bits(out)
    if fv.shape[0]:
        fdl_nk16_f2h(&fv[0], &ov[0], fv.shape[0], level)
    return out


# ---------------------------------------------------------------- layer / RMS norm

@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _layer_fwd(const uint16_t[:, ::1] x, const float[::1] w, const float[::1] b,
                     double eps, uint16_t[:, ::1] y, double[::1] mean, double[::1] var,
                     int nt) noexcept nogil:
    cdef int64_t R = x.shape[0], D = x.shape[1], r
    cdef int level = simd_level()
    for r in prange(R, num_threads=team(nt, 2 * R * D, R), schedule="static"):
        fdl_nk16_layer_row(&x[r, 0], &y[r, 0], D, &w[0], &b[0], eps, level, &mean[r], &var[r])


def layer_norm_fwd(x, w, b, double eps, out, int nt):
    out = _output(out, x)
    R, D = x.shape
    mean, var = np.empty(R), np.empty(R)
    _layer_fwd(_bits(x), _ones(w, D), _zeros(b, D), eps, _bits(out), mean, var, nt)
    return out, mean, var


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _layer_bwd(const uint16_t[:, ::1] dy, const uint16_t[:, ::1] x,
                     const double[::1] mean, const double[::1] rstd, const float[::1] w,
                     uint16_t[:, ::1] dx, float[:, ::1] dwp, float[:, ::1] dbp, int64_t rpc,
                     int nt) noexcept nogil:
    cdef int64_t R = x.shape[0], D = x.shape[1], nch = dwp.shape[0], k, r
    cdef int level = simd_level()
    for k in prange(nch, num_threads=team(nt, 4 * R * D, nch), schedule="static"):
        memset(&dwp[k, 0], 0, D * sizeof(float))
        memset(&dbp[k, 0], 0, D * sizeof(float))
        for r in range(k * rpc, min(R, (k + 1) * rpc)):
            fdl_nk16_layer_bwd_row(&dy[r, 0], &x[r, 0], &dx[r, 0], D, mean[r], rstd[r], &w[0],
                                   &dwp[k, 0], &dbp[k, 0], level)


def layer_norm_bwd(dy, x, mean, rstd, w, bint need_dw, bint need_db, int nt):
    R, D = x.shape
    rpc = _chunk_rows(R)
    nch = (R + rpc - 1) // rpc
    dx = np.empty(x.shape, F16)
    part = _scratch_array("layer_bwd", (2, nch, D), F32)
    _layer_bwd(_bits(dy), _bits(x), mean, rstd, _ones(w, D), _bits(dx), part[0], part[1], rpc,
               nt)
    dw = _reduce_partials(part[0], nt).astype(F32) if need_dw else None
    db = _reduce_partials(part[1], nt).astype(F32) if need_db else None
    return dx, dw, db


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _rms_fwd(const uint16_t[:, ::1] x, const float[::1] w, double eps, uint16_t[:, ::1] y,
                   double[::1] ms, int nt) noexcept nogil:
    cdef int64_t R = x.shape[0], D = x.shape[1], r
    cdef int level = simd_level()
    for r in prange(R, num_threads=team(nt, 2 * R * D, R), schedule="static"):
        fdl_nk16_rms_row(&x[r, 0], &y[r, 0], D, &w[0], eps, level, &ms[r])


def rms_norm_fwd(x, w, double eps, out, int nt):
    out = _output(out, x)
    ms = np.empty(x.shape[0])
    _rms_fwd(_bits(x), _ones(w, x.shape[1]), eps, _bits(out), ms, nt)
    return out, ms


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _rms_bwd(const uint16_t[:, ::1] dy, const uint16_t[:, ::1] x, const double[::1] rstd,
                   const float[::1] w, uint16_t[:, ::1] dx, float[:, ::1] dwp, int64_t rpc,
                   int nt) noexcept nogil:
    cdef int64_t R = x.shape[0], D = x.shape[1], nch = dwp.shape[0], k, r
    cdef int level = simd_level()
    for k in prange(nch, num_threads=team(nt, 4 * R * D, nch), schedule="static"):
        memset(&dwp[k, 0], 0, D * sizeof(float))
        for r in range(k * rpc, min(R, (k + 1) * rpc)):
            fdl_nk16_rms_bwd_row(&dy[r, 0], &x[r, 0], &dx[r, 0], D, rstd[r], &w[0], &dwp[k, 0],
                                 level)


def rms_norm_bwd(dy, x, rstd, w, bint need_dw, int nt):
    R, D = x.shape
    rpc = _chunk_rows(R)
    nch = (R + rpc - 1) // rpc
    dx = np.empty(x.shape, F16)
    part = _scratch_array("rms_bwd", (nch, D), F32)
    _rms_bwd(_bits(dy), _bits(x), rstd, _ones(w, D), _bits(dx), part, rpc, nt)
    return dx, (_reduce_partials(part, nt).astype(F32) if need_dw else None)


# ---------------------------------------------------------------- group / instance norm

@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _group_fwd(const uint16_t[:, :, ::1] x, int64_t G, const float[::1] w,
                     const float[::1] b, double eps, uint16_t[:, :, ::1] y, double[::1] mean,
                     double[::1] var, int nt) noexcept nogil:
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], K = C // G, row, n, g
    cdef int level = simd_level()
    for row in prange(N * G, num_threads=team(nt, 2 * N * C * S, N * G), schedule="static"):
        n = row // G
        g = row % G
        fdl_nk16_group_row(&x[n, g * K, 0], &y[n, g * K, 0], K, S, &w[g * K], &b[g * K], eps,
                           level, &mean[row], &var[row])


def group_norm_fwd(x, int64_t G, w, b, double eps, out, int nt):
    out = _output(out, x)
    N, C, S = x.shape
    mean, var = np.empty(N * G), np.empty(N * G)
    _group_fwd(_bits(x), G, _ones(w, C), _zeros(b, C), eps, _bits(out), mean, var, nt)
    return out, mean.reshape(N, G), var.reshape(N, G)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _group_bwd(const uint16_t[:, :, ::1] dy, const uint16_t[:, :, ::1] x,
                     const double[::1] mean, const double[::1] rstd, int64_t G,
                     const float[::1] w, uint16_t[:, :, ::1] dx, double[:, ::1] A,
                     double[:, ::1] B, int nt) noexcept nogil:
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], K = C // G, row, n, c0
    cdef int level = simd_level()
    for row in prange(N * G, num_threads=team(nt, 4 * N * C * S, N * G), schedule="static"):
        n = row // G
        c0 = (row % G) * K
        fdl_nk16_group_bwd_row(&dy[n, c0, 0], &x[n, c0, 0], &dx[n, c0, 0], K, S, mean[row],
                               rstd[row], &w[c0], &A[n, c0], &B[n, c0], level)


def group_norm_bwd(dy, x, mean, rstd, int64_t G, w, bint need_dw, bint need_db, int nt):
    N, C, S = x.shape
    dx = np.empty(x.shape, F16)
    A, B = np.empty((N, C)), np.empty((N, C))
    _group_bwd(_bits(dy), _bits(x), np.ascontiguousarray(mean).reshape(-1),
               np.ascontiguousarray(rstd).reshape(-1), G, _ones(w, C), _bits(dx), A, B, nt)
    dw = A.sum(axis=0).astype(F32) if need_dw else None
    db = B.sum(axis=0).astype(F32) if need_db else None
    return dx, dw, db


# ---------------------------------------------------------------- batch norm

def _by_channel(x):
    return x.shape[2] * F32.itemsize >= CHANNEL_SEGMENT_BYTES


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _fwd_channels(const uint16_t[:, :, ::1] x, const float[::1] w, const float[::1] b,
                        double eps, uint16_t[:, :, ::1] y, double[::1] mean, double[::1] var,
                        double[:, ::1] work, int nt) noexcept nogil:
    # statistics of channel c over its N segments, then the channel is normalized
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n
    cdef int level = simd_level()
    cdef double mu, q, v, rs
    cdef float mh, ml, a
    cdef int tid = 0
    with parallel(num_threads=team(nt, 2 * N * C * S, C)):
        tid = threadid()
        for c in prange(C, schedule="static"):
            mu = 0
            q = 0
            fdl_nk16_seg_moments(&x[0, c, 0], N, S, C * S, level, &work[tid, 0], &mu, &q)
            v = q / (N * S)
            mean[c] = mu
            var[c] = v
            rs = 1.0 / sqrt(v + eps)
            mh = <float>mu
            ml = <float>(mu - <double>mh)
            a = <float>(rs * w[c])
            for n in range(N):
                fdl_nk16_apply_chan(&x[n, c, 0], &y[n, c, 0], S, mh, ml, a, b[c], level)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _apply_channels(const uint16_t[:, :, ::1] x, const double[::1] mean,
                          const double[::1] rstd, const float[::1] w, const float[::1] b,
                          uint16_t[:, :, ::1] y, int nt) noexcept nogil:
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i, n, c
    cdef int level = simd_level()
    cdef float mh
    for i in prange(N * C, num_threads=team(nt, 2 * N * C * S, N * C), schedule="static"):
        n = i // C
        c = i % C
        mh = <float>mean[c]
        fdl_nk16_apply_chan(&x[n, c, 0], &y[n, c, 0], S, mh, <float>(mean[c] - <double>mh),
                            <float>(rstd[c] * w[c]), b[c], level)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _apply_rows(const uint16_t[:, ::1] x, const float[:, ::1] vec, uint16_t[:, ::1] y,
                      int nt) noexcept nogil:
    # y[r] = ((x[r] - mh) - ml) * a + c with vec = (mh, ml, a, c) per column
    cdef int64_t R = x.shape[0], L = x.shape[1], r
    cdef int level = simd_level()
    for r in prange(R, num_threads=team(nt, 2 * R * L, R), schedule="static"):
        fdl_nk16_apply_cols(&x[r, 0], &y[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0],
                            &vec[3, 0], level)


def _apply(x, mean, rstd, w, b, out, int nt):
    N, C, S = x.shape
    if _by_channel(x):
        _apply_channels(_bits(x), mean, rstd, _ones(w, C), _zeros(b, C), _bits(out), nt)
    else:
        vec = _column_vectors(mean, rstd, w, b, S, F32)
        _apply_rows(_bits(x).reshape(N, C * S), vec, _bits(out).reshape(N, C * S), nt)


def batch_norm_eval(x, mean, rstd, w, b, out, int nt):
    out = _output(out, x)
    _apply(x, mean, rstd, w, b, out, nt)
    return out


def batch_norm_fwd(x, w, b, double eps, out, int nt):
    out = _output(out, x)
    N, C, S = x.shape
    if not _by_channel(x) or C < FEW_CHANNELS:     # statistics, then apply
        mu, m2, _ = moments(x.reshape(-1), x.shape, "batch", None, nt)
        mean = np.array(mu, np.float64)
        var = np.asarray(m2) / float(N * S)
        _apply(x, mean, 1.0 / np.sqrt(var + eps), w, b, out, nt)
        return out, mean, var
    mean, var = np.empty(C), np.empty(C)
    work = _scratch_array("batch_fwd", (max(1, nt), fdl_seg_moments_work(N, S, F32.itemsize)),
                          np.float64)
    _fwd_channels(_bits(x), _ones(w, C), _zeros(b, C), eps, _bits(out), mean, var, work, nt)
    return out, mean, var


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _seg_sums(const uint16_t[:, :, ::1] dy, const uint16_t[:, :, ::1] x,
                    const double[::1] mean, const double[::1] rstd, double[:, ::1] A,
                    double[:, ::1] B, int nt) noexcept nogil:
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i, n, c
    cdef int level = simd_level()
    cdef float mh
    for i in prange(N * C, num_threads=team(nt, 4 * N * C * S, N * C), schedule="static"):
        n = i // C
        c = i % C
        A[n, c] = 0
        B[n, c] = 0
        mh = <float>mean[c]
        fdl_nk16_seg_sums(&dy[n, c, 0], &x[n, c, 0], S, mh, <float>(mean[c] - <double>mh),
                          <float>rstd[c], &A[n, c], &B[n, c], level)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _seg_dx(const uint16_t[:, :, ::1] dy, const uint16_t[:, :, ::1] x,
                  const double[::1] mean, const double[::1] rstd, const float[::1] w,
                  const double[::1] c1, const double[::1] c2, bint training,
                  uint16_t[:, :, ::1] dx, int nt) noexcept nogil:
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i, n, c
    cdef int level = simd_level()
    cdef float mh
    for i in prange(N * C, num_threads=team(nt, 4 * N * C * S, N * C), schedule="static"):
        n = i // C
        c = i % C
        mh = <float>mean[c]
        fdl_nk16_seg_dx(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mh,
                        <float>(mean[c] - <double>mh), <float>rstd[c], w[c], <float>c1[c],
                        <float>c2[c], training, level)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _col_sums(const uint16_t[:, ::1] dy, const uint16_t[:, ::1] x, const float[:, ::1] vec,
                    float[:, ::1] ap, float[:, ::1] bp, int64_t rpc, int nt) noexcept nogil:
    # partial column sums of dy * xh and dy over fixed chunks of rpc rows
    cdef int64_t R = x.shape[0], L = x.shape[1], nch = ap.shape[0], k, r
    cdef int level = simd_level()
    for k in prange(nch, num_threads=team(nt, 4 * R * L, nch), schedule="static"):
        memset(&ap[k, 0], 0, L * sizeof(float))
        memset(&bp[k, 0], 0, L * sizeof(float))
        for r in range(k * rpc, min(R, (k + 1) * rpc)):
            fdl_nk16_col_sums(&dy[r, 0], &x[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0],
                              &ap[k, 0], &bp[k, 0], level)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _col_dx(const uint16_t[:, ::1] dy, const uint16_t[:, ::1] x, const float[:, ::1] vec,
                  uint16_t[:, ::1] dx, bint training, int nt) noexcept nogil:
    # vec rows: mean head, mean rest, rstd, weight, c1, c2
    cdef int64_t R = x.shape[0], L = x.shape[1], r
    cdef int level = simd_level()
    for r in prange(R, num_threads=team(nt, 4 * R * L, R), schedule="static"):
        fdl_nk16_col_dx(&dy[r, 0], &x[r, 0], &dx[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0],
                        &vec[3, 0], &vec[4, 0], &vec[5, 0], training, level)


def _bwd_segments(dy, x, mean, rstd, w, bint training, int nt):
    N, C, S = x.shape
    wv = _ones(w, C)
    A2, B2 = np.empty((N, C)), np.empty((N, C))
    _seg_sums(_bits(dy), _bits(x), mean, rstd, A2, B2, nt)
    A, B = A2.sum(axis=0), B2.sum(axis=0)      # over n in order: a fixed merge
    w64 = wv.astype(np.float64)
    c1, c2 = w64 * B / float(N * S), w64 * A / float(N * S)
    dx = np.empty(x.shape, F16)
    _seg_dx(_bits(dy), _bits(x), mean, rstd, wv, c1, c2, training, _bits(dx), nt)
    return dx, A, B


def _bwd_columns(dy, x, mean, rstd, w, bint training, int nt):
    N, C, S = x.shape
    L = C * S
    w64 = np.ones(C) if w is None else w.astype(np.float64)
    mh, ml = _split_mean(mean, F32)
    vec = np.empty((6, L), F32)
    vec[:3] = np.repeat(np.stack([mh, ml, rstd.astype(F32)]), S, axis=1)
    x2, dy2 = _bits(x).reshape(N, L), _bits(dy).reshape(N, L)
    rpc = _chunk_rows(N)
    nch = (N + rpc - 1) // rpc
    part = _scratch_array("batch_bwd", (2, nch, L), F32)
    _col_sums(dy2, x2, vec, part[0], part[1], rpc, nt)
    A = _reduce_partials(part[0], nt).reshape(C, S).sum(axis=1)
    B = _reduce_partials(part[1], nt).reshape(C, S).sum(axis=1)
    M = float(N * S)
    c1 = w64 * B / M if training else np.zeros(C)
    c2 = w64 * A / M if training else np.zeros(C)
    vec[3:] = np.repeat(np.stack([w64, c1, c2]).astype(F32), S, axis=1)
    dx = np.empty(x.shape, F16)
    _col_dx(dy2, x2, vec, _bits(dx).reshape(N, L), training, nt)
    return dx, A, B


def batch_norm_bwd(dy, x, mean, rstd, w, bint training, bint need_dw, bint need_db, int nt):
    if _by_channel(x):
        dx, A, B = _bwd_segments(dy, x, mean, rstd, w, training, nt)
    else:
        dx, A, B = _bwd_columns(dy, x, mean, rstd, w, training, nt)
    return dx, A.astype(F32) if need_dw else None, B.astype(F32) if need_db else None
