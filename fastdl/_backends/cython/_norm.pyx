"""Fused normalization kernels (Cython backend); op contracts in fastdl.norm.

Work is split into fixed units (rows, (n, group) rows, channels, chunks of
rows) that do not depend on the thread count, and each unit is computed in a
fixed order, so results are bitwise the same for any number of threads.
Cross-unit reductions (dweight/dbias partials) are summed afterwards in a
fixed order.
"""
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport sqrt
from libc.stdint cimport int64_t
from libc.string cimport memset
cimport cython
from cython cimport floating

import numpy as np

from fastdl._backends.cython._cpu cimport simd_level
from fastdl._backends.cython._cpu cimport team
from fastdl._backends.cython._moments cimport FDL_BLOCK_BYTES
from fastdl._backends.cython._norm_stats import _moments, _scratch_array

cdef extern from "normk.h" nogil:
    ctypedef struct fdl_nk_f32:
        double (*sumsq)(const float *x, int64_t n) noexcept nogil
        void (*apply_row)(const float *x, float *y, int64_t n, float mh, float ml, float r,
                          const float *w, const float *b, int stream) noexcept nogil
        void (*apply_rms)(const float *x, float *y, int64_t n, float r, const float *w,
                          int stream) noexcept nogil
        void (*apply_chan)(const float *x, float *y, int64_t n, float mh, float ml, float a,
                           float c, int stream) noexcept nogil
        void (*apply_cols)(const float *x, float *y, int64_t n, const float *mh,
                           const float *ml, const float *a, const float *c,
                           int stream) noexcept nogil
        void (*row_sums)(const float *dy, const float *x, int64_t n, float mh, float ml,
                         float r, const float *w, float *dwp, float *dbp, double *s1,
                         double *s2) noexcept nogil
        void (*row_dx)(const float *dy, const float *x, float *dx, int64_t n, float mh,
                       float ml, float r, const float *w, float c1, float c2) noexcept nogil
        double (*rms_sums)(const float *dy, const float *x, int64_t n, float r, const float *w,
                           float *dwp) noexcept nogil
        void (*rms_dx)(const float *dy, const float *x, float *dx, int64_t n, float r,
                       const float *w, float c2) noexcept nogil
        void (*seg_sums)(const float *dy, const float *x, int64_t n, float mh, float ml,
                         float r, double *A, double *B) noexcept nogil
        void (*seg_dx)(const float *dy, const float *x, float *dx, int64_t n, float mh,
                       float ml, float r, float wk, float c1, float c2) noexcept nogil
        void (*col_sums)(const float *dy, const float *x, int64_t n, const float *mh,
                         const float *ml, const float *r, float *ap, float *bp) noexcept nogil
        void (*col_dx)(const float *dy, const float *x, float *dx, int64_t n, const float *mh,
                       const float *ml, const float *r, const float *w, const float *c1,
                       const float *c2) noexcept nogil
        void (*seg_scale)(const float *dy, float *dx, int64_t n, float wk,
                          float r) noexcept nogil
        void (*col_scale)(const float *dy, float *dx, int64_t n, const float *w,
                          const float *r) noexcept nogil
    ctypedef struct fdl_nk_f64:
        double (*sumsq)(const double *x, int64_t n) noexcept nogil
        void (*apply_row)(const double *x, double *y, int64_t n, double mh, double ml, double r,
                          const double *w, const double *b, int stream) noexcept nogil
        void (*apply_rms)(const double *x, double *y, int64_t n, double r, const double *w,
                          int stream) noexcept nogil
        void (*apply_chan)(const double *x, double *y, int64_t n, double mh, double ml,
                           double a, double c, int stream) noexcept nogil
        void (*apply_cols)(const double *x, double *y, int64_t n, const double *mh,
                           const double *ml, const double *a, const double *c,
                           int stream) noexcept nogil
        void (*row_sums)(const double *dy, const double *x, int64_t n, double mh, double ml,
                         double r, const double *w, double *dwp, double *dbp, double *s1,
                         double *s2) noexcept nogil
        void (*row_dx)(const double *dy, const double *x, double *dx, int64_t n, double mh,
                       double ml, double r, const double *w, double c1,
                       double c2) noexcept nogil
        double (*rms_sums)(const double *dy, const double *x, int64_t n, double r,
                           const double *w, double *dwp) noexcept nogil
        void (*rms_dx)(const double *dy, const double *x, double *dx, int64_t n, double r,
                       const double *w, double c2) noexcept nogil
        void (*seg_sums)(const double *dy, const double *x, int64_t n, double mh, double ml,
                         double r, double *A, double *B) noexcept nogil
        void (*seg_dx)(const double *dy, const double *x, double *dx, int64_t n, double mh,
                       double ml, double r, double wk, double c1, double c2) noexcept nogil
        void (*col_sums)(const double *dy, const double *x, int64_t n, const double *mh,
                         const double *ml, const double *r, double *ap,
                         double *bp) noexcept nogil
        void (*col_dx)(const double *dy, const double *x, double *dx, int64_t n,
                       const double *mh, const double *ml, const double *r, const double *w,
                       const double *c1, const double *c2) noexcept nogil
        void (*seg_scale)(const double *dy, double *dx, int64_t n, double wk,
                          double r) noexcept nogil
        void (*col_scale)(const double *dy, double *dx, int64_t n, const double *w,
                          const double *r) noexcept nogil
    const fdl_nk_f32 *fdl_nk_f32_table(int level)
    const fdl_nk_f64 *fdl_nk_f64_table(int level)
    void fdl_rows_moments_f32(const float *x, int64_t nrows, int64_t D, int level,
                              double *mean, double *m2)
    void fdl_rows_moments_f64(const double *x, int64_t nrows, int64_t D, int level,
                              double *mean, double *m2)
    void fdl_seg_moments_f32(const float *x, int64_t nseg, int64_t len, int64_t stride,
                             int level, double *work, double *mean, double *m2)
    void fdl_seg_moments_f64(const double *x, int64_t nseg, int64_t len, int64_t stride,
                             int level, double *work, double *mean, double *m2)
    int64_t fdl_seg_moments_work(int64_t nseg, int64_t len, int64_t itemsize)
    void fdl_sfence()

# Batch norm works channel by channel (the channel's N segments stay in L2
# between passes) when a segment has at least this many bytes; below, it works
# on rows with per-column vectors.
cdef int64_t CHANNEL_SEGMENT_BYTES = 256
# Rows per chunk of the dweight/dbias partial sums: at most MAX_CHUNK_ROWS
# (each partial adds that many terms in the input's precision) and about
# R / MIN_CHUNKS so that small inputs still split across threads.
cdef int64_t MAX_CHUNK_ROWS = 64
cdef int64_t MIN_CHUNKS = 16
# Outputs of at least STREAM_BYTES are written with non-temporal stores: no
# read-for-ownership of the destination (writes ~1.5x faster on the project's
# machines), and an output this large would not stay cached for the next op.
cdef int64_t STREAM_BYTES = 8 << 20
# Below this many channels the batch-norm forward shares out (n, c) segments
# instead of whole channels, so that few channels still use every thread.
cdef int64_t FEW_CHANNELS = 16

# Rows of at most FDL_BLOCK_BYTES get their moments a run of RUN_BYTES at a
# time (in the AVX2 build, pass 1 of the next row overlaps pass 2 of this one,
# with prefetch), then are normalized while the run is in cache; longer rows
# go one by one.
cdef int64_t RUN_BYTES = 65536

def _output(out, x):
    """(output array, stream?) for a forward.  Only an output the caller
    provided is streamed: stores into freshly allocated memory fault its pages
    in, and the kernel's zeroed lines then make non-temporal stores slower than
    plain ones (a 64 MiB layer norm: 15.6 ms streamed vs 11.4 ms plain into new
    memory, 5.8 ms streamed into reused memory)."""
    if out is None:
        return np.empty_like(x), False
    return out, out.nbytes >= STREAM_BYTES


cdef inline int64_t _run_rows(int64_t D, int64_t itemsize) noexcept nogil:
    if D * itemsize > FDL_BLOCK_BYTES:
        return 1
    return max(1, RUN_BYTES // (D * itemsize))


def _chunk_rows(int64_t R):
    return min(MAX_CHUNK_ROWS, max(1, (R + MIN_CHUNKS - 1) // MIN_CHUNKS))


# ---------------------------------------------------------------- layer norm

@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _layer_fwd(const floating[:, ::1] x, const floating[::1] w, const floating[::1] b,
                     double eps, floating[:, ::1] y, double[::1] mean, double[::1] var,
                     bint stream, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    cdef int64_t R = x.shape[0], D = x.shape[1], r, k, r0
    cdef int64_t run = _run_rows(D, sizeof(floating)), nrun = (R + run - 1) // run
    cdef int level = simd_level()
    cdef double mu, v
    cdef floating mh, ml
    with parallel(num_threads=team(nt, R * D * sizeof(floating), nrun)):
        for k in prange(nrun, schedule="static"):
            r0 = k * run
            if floating is float:
                fdl_rows_moments_f32(&x[r0, 0], min(run, R - r0), D, level, &mean[r0], &var[r0])
            else:
                fdl_rows_moments_f64(&x[r0, 0], min(run, R - r0), D, level, &mean[r0], &var[r0])
            for r in range(r0, min(R, r0 + run)):
                mu = mean[r]
                v = var[r] / D
                var[r] = v
                mh = <floating>mu
                ml = <floating>(mu - <double>mh)
                if floating is float:
                    K32.apply_row(&x[r, 0], &y[r, 0], D, mh, ml, <float>(1.0 / sqrt(v + eps)),
                                  &w[0], &b[0], stream)
                else:
                    K64.apply_row(&x[r, 0], &y[r, 0], D, mh, ml, 1.0 / sqrt(v + eps), &w[0],
                                  &b[0], stream)
        fdl_sfence()   # once per thread: its streamed stores are visible


def layer_norm_fwd(x, w, b, double eps, out, int nt):
    out, stream = _output(out, x)
    R, D = x.shape
    w = np.ones(D, x.dtype) if w is None else w
    b = np.zeros(D, x.dtype) if b is None else b
    mean, var = np.empty(R), np.empty(R)
    cdef double[::1] mv = mean, vv = var
    if x.dtype == np.float32:
        _layer_fwd[float](x, w, b, eps, out, mv, vv, stream, nt)
    else:
        _layer_fwd[double](x, w, b, eps, out, mv, vv, stream, nt)
    return out, mean, var


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _layer_bwd(const floating[:, ::1] dy, const floating[:, ::1] x,
                     const double[::1] mean, const double[::1] rstd, const floating[::1] w,
                     floating[:, ::1] dx, floating[:, ::1] dwp, floating[:, ::1] dbp,
                     int64_t rpc, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    cdef int64_t R = x.shape[0], D = x.shape[1], nch = dwp.shape[0], k, r
    cdef double s1, s2
    cdef floating mh, ml, rs
    with parallel(num_threads=team(nt, 2 * R * D * sizeof(floating), nch)):
        for k in prange(nch, schedule="static"):
            memset(&dwp[k, 0], 0, D * sizeof(floating))
            memset(&dbp[k, 0], 0, D * sizeof(floating))
            for r in range(k * rpc, min(R, (k + 1) * rpc)):
                s1 = 0
                s2 = 0
                mh = <floating>mean[r]
                ml = <floating>(mean[r] - <double>mh)
                rs = <floating>rstd[r]
                if floating is float:
                    K32.row_sums(&dy[r, 0], &x[r, 0], D, mh, ml, rs, &w[0], &dwp[k, 0],
                                 &dbp[k, 0], &s1, &s2)
                    K32.row_dx(&dy[r, 0], &x[r, 0], &dx[r, 0], D, mh, ml, rs, &w[0],
                               <float>(s1 / D), <float>(s2 / D))
                else:
                    K64.row_sums(&dy[r, 0], &x[r, 0], D, mh, ml, rs, &w[0], &dwp[k, 0],
                                 &dbp[k, 0], &s1, &s2)
                    K64.row_dx(&dy[r, 0], &x[r, 0], &dx[r, 0], D, mh, ml, rs, &w[0], s1 / D,
                               s2 / D)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _sum_rows(const floating[:, ::1] p, double[::1] out, int nt) noexcept nogil:
    # out[j] = sum over rows of p[:, j], in row order (fixed), columns in parallel
    cdef int64_t K = p.shape[0], D = p.shape[1], j0, j, k
    cdef int64_t STRIP = 256
    for j0 in prange(0, D, STRIP, num_threads=team(nt, K * D * sizeof(floating), (D + STRIP - 1) // STRIP),
                    schedule="static"):
        for j in range(j0, min(D, j0 + STRIP)):
            out[j] = 0
        for k in range(K):
            for j in range(j0, min(D, j0 + STRIP)):
                out[j] += p[k, j]


def _reduce_partials(p, int nt):
    out = np.empty(p.shape[1])
    cdef double[::1] ov = out
    if p.dtype == np.float32:
        _sum_rows[float](p, ov, nt)
    else:
        _sum_rows[double](p, ov, nt)
    return out


def layer_norm_bwd(dy, x, mean, rstd, w, bint need_dw, bint need_db, int nt):
    R, D = x.shape
    w = np.ones(D, x.dtype) if w is None else w
    rpc = _chunk_rows(R)
    nch = (R + rpc - 1) // rpc
    dx = np.empty_like(x)
    part = _scratch_array("layer_bwd", (2, nch, D), x.dtype)
    if x.dtype == np.float32:
        _layer_bwd[float](dy, x, mean, rstd, w, dx, part[0], part[1], rpc, nt)
    else:
        _layer_bwd[double](dy, x, mean, rstd, w, dx, part[0], part[1], rpc, nt)
    dw = _reduce_partials(part[0], nt).astype(x.dtype) if need_dw else None
    db = _reduce_partials(part[1], nt).astype(x.dtype) if need_db else None
    return dx, dw, db


# ---------------------------------------------------------------- RMS norm

@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _rms_fwd(const floating[:, ::1] x, const floating[::1] w, double eps,
                   floating[:, ::1] y, double[::1] ms, bint stream, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    cdef int64_t R = x.shape[0], D = x.shape[1], r
    cdef double m
    with parallel(num_threads=team(nt, R * D * sizeof(floating), R)):
        for r in prange(R, schedule="static"):
            if floating is float:
                m = K32.sumsq(&x[r, 0], D) / D
                K32.apply_rms(&x[r, 0], &y[r, 0], D, <float>(1.0 / sqrt(m + eps)), &w[0], stream)
            else:
                m = K64.sumsq(&x[r, 0], D) / D
                K64.apply_rms(&x[r, 0], &y[r, 0], D, 1.0 / sqrt(m + eps), &w[0], stream)
            ms[r] = m
        fdl_sfence()   # once per thread: its streamed stores are visible


def rms_norm_fwd(x, w, double eps, out, int nt):
    out, stream = _output(out, x)
    R, D = x.shape
    w = np.ones(D, x.dtype) if w is None else w
    ms = np.empty(R)
    cdef double[::1] mv = ms
    if x.dtype == np.float32:
        _rms_fwd[float](x, w, eps, out, mv, stream, nt)
    else:
        _rms_fwd[double](x, w, eps, out, mv, stream, nt)
    return out, ms


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _rms_bwd(const floating[:, ::1] dy, const floating[:, ::1] x, const double[::1] rstd,
                   const floating[::1] w, floating[:, ::1] dx, floating[:, ::1] dwp,
                   int64_t rpc, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    cdef int64_t R = x.shape[0], D = x.shape[1], nch = dwp.shape[0], k, r
    cdef double s2
    cdef floating rs
    with parallel(num_threads=team(nt, 2 * R * D * sizeof(floating), nch)):
        for k in prange(nch, schedule="static"):
            memset(&dwp[k, 0], 0, D * sizeof(floating))
            for r in range(k * rpc, min(R, (k + 1) * rpc)):
                rs = <floating>rstd[r]
                if floating is float:
                    s2 = K32.rms_sums(&dy[r, 0], &x[r, 0], D, rs, &w[0], &dwp[k, 0])
                    K32.rms_dx(&dy[r, 0], &x[r, 0], &dx[r, 0], D, rs, &w[0], <float>(s2 / D))
                else:
                    s2 = K64.rms_sums(&dy[r, 0], &x[r, 0], D, rs, &w[0], &dwp[k, 0])
                    K64.rms_dx(&dy[r, 0], &x[r, 0], &dx[r, 0], D, rs, &w[0], s2 / D)


def rms_norm_bwd(dy, x, rstd, w, bint need_dw, int nt):
    R, D = x.shape
    w = np.ones(D, x.dtype) if w is None else w
    rpc = _chunk_rows(R)
    nch = (R + rpc - 1) // rpc
    dx = np.empty_like(x)
    part = _scratch_array("rms_bwd", (nch, D), x.dtype)
    if x.dtype == np.float32:
        _rms_bwd[float](dy, x, rstd, w, dx, part, rpc, nt)
    else:
        _rms_bwd[double](dy, x, rstd, w, dx, part, rpc, nt)
    return dx, (_reduce_partials(part, nt).astype(x.dtype) if need_dw else None)


# ---------------------------------------------------------------- group / instance norm

@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _group_fwd(const floating[:, :, ::1] x, int64_t G, const floating[::1] w,
                     const floating[::1] b, double eps, floating[:, :, ::1] y,
                     double[::1] mean, double[::1] var, bint stream, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    # row = (n, g): K channels of S elements, rows back to back in memory
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], K = C // G, M = K * S
    cdef int64_t R = N * G, run = _run_rows(M, sizeof(floating)), nrun = (R + run - 1) // run
    cdef int64_t row, n, g, c, k, r0
    cdef int level = simd_level()
    cdef double mu, v, rs
    cdef floating mh, ml
    with parallel(num_threads=team(nt, R * M * sizeof(floating), nrun)):
        for k in prange(nrun, schedule="static"):
            r0 = k * run
            if floating is float:
                fdl_rows_moments_f32(&x[0, 0, 0] + r0 * M, min(run, R - r0), M, level,
                                     &mean[r0], &var[r0])
            else:
                fdl_rows_moments_f64(&x[0, 0, 0] + r0 * M, min(run, R - r0), M, level,
                                     &mean[r0], &var[r0])
            for row in range(r0, min(R, r0 + run)):
                n = row // G
                g = row % G
                mu = mean[row]
                v = var[row] / M
                var[row] = v
                rs = 1.0 / sqrt(v + eps)
                mh = <floating>mu
                ml = <floating>(mu - <double>mh)
                for c in range(g * K, (g + 1) * K):
                    if floating is float:
                        K32.apply_chan(&x[n, c, 0], &y[n, c, 0], S, mh, ml, <float>(rs * w[c]),
                                       b[c], stream)
                    else:
                        K64.apply_chan(&x[n, c, 0], &y[n, c, 0], S, mh, ml, rs * w[c], b[c],
                                       stream)
        fdl_sfence()   # once per thread: its streamed stores are visible


def group_norm_fwd(x, int64_t G, w, b, double eps, out, int nt):
    out, stream = _output(out, x)
    N, C, S = x.shape
    w = np.ones(C, x.dtype) if w is None else w
    b = np.zeros(C, x.dtype) if b is None else b
    mean, var = np.empty(N * G), np.empty(N * G)
    cdef double[::1] mv = mean, vv = var
    if x.dtype == np.float32:
        _group_fwd[float](x, G, w, b, eps, out, mv, vv, stream, nt)
    else:
        _group_fwd[double](x, G, w, b, eps, out, mv, vv, stream, nt)
    return out, mean.reshape(N, G), var.reshape(N, G)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _group_bwd(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                     const double[::1] mean, const double[::1] rstd, int64_t G,
                     const floating[::1] w, floating[:, :, ::1] dx, double[:, ::1] A,
                     double[:, ::1] B, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], K = C // G
    cdef int64_t row, n, g, c
    cdef double s1, s2, M = <double>(K * S)
    cdef floating mh, ml, rs
    with parallel(num_threads=team(nt, 2 * N * C * S * sizeof(floating), N * G)):
        for row in prange(N * G, schedule="static"):
            n = row // G
            g = row % G
            mh = <floating>mean[row]
            ml = <floating>(mean[row] - <double>mh)
            rs = <floating>rstd[row]
            s1 = 0     # assigned in the body: private to each thread (also mu, q below)
            s2 = 0
            for c in range(g * K, (g + 1) * K):
                A[n, c] = 0
                B[n, c] = 0
                if floating is float:
                    K32.seg_sums(&dy[n, c, 0], &x[n, c, 0], S, mh, ml, rs, &A[n, c], &B[n, c])
                else:
                    K64.seg_sums(&dy[n, c, 0], &x[n, c, 0], S, mh, ml, rs, &A[n, c], &B[n, c])
                s1 = s1 + w[c] * B[n, c]
                s2 = s2 + w[c] * A[n, c]
            for c in range(g * K, (g + 1) * K):
                if floating is float:
                    K32.seg_dx(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mh, ml, rs, w[c],
                               <float>(s1 / M), <float>(s2 / M))
                else:
                    K64.seg_dx(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mh, ml, rs, w[c],
                               s1 / M, s2 / M)


def group_norm_bwd(dy, x, mean, rstd, int64_t G, w, bint need_dw, bint need_db, int nt):
    N, C, S = x.shape
    w = np.ones(C, x.dtype) if w is None else w
    dx = np.empty_like(x)
    A, B = np.empty((N, C)), np.empty((N, C))
    mean = np.ascontiguousarray(mean).reshape(-1)
    rstd = np.ascontiguousarray(rstd).reshape(-1)
    if x.dtype == np.float32:
        _group_bwd[float](dy, x, mean, rstd, G, w, dx, A, B, nt)
    else:
        _group_bwd[double](dy, x, mean, rstd, G, w, dx, A, B, nt)
    dw = A.sum(axis=0).astype(x.dtype) if need_dw else None
    db = B.sum(axis=0).astype(x.dtype) if need_db else None
    return dx, dw, db


# ---------------------------------------------------------------- batch norm

cdef bint _by_channel(x):
    return x.shape[2] * x.itemsize >= CHANNEL_SEGMENT_BYTES


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _batch_fwd_channels(const floating[:, :, ::1] x, const floating[::1] w,
                              const floating[::1] b, double eps, floating[:, :, ::1] y,
                              double[::1] mean, double[::1] var, double[:, ::1] work,
                              bint stream, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n
    cdef int level = simd_level()
    cdef double mu, q, v, rs
    cdef floating mh, ml, a
    cdef int tid = 0
    with parallel(num_threads=team(nt, N * C * S * sizeof(floating), C)):
        tid = threadid()
        for c in prange(C, schedule="static"):
            mu = 0
            q = 0
            if floating is float:
                fdl_seg_moments_f32(&x[0, c, 0], N, S, C * S, level, &work[tid, 0], &mu, &q)
            else:
                fdl_seg_moments_f64(&x[0, c, 0], N, S, C * S, level, &work[tid, 0], &mu, &q)
            v = q / (N * S)
            mean[c] = mu
            var[c] = v
            rs = 1.0 / sqrt(v + eps)
            mh = <floating>mu
            ml = <floating>(mu - <double>mh)
            a = <floating>(rs * w[c])
            for n in range(N):
                if floating is float:
                    K32.apply_chan(&x[n, c, 0], &y[n, c, 0], S, mh, ml, a, b[c], stream)
                else:
                    K64.apply_chan(&x[n, c, 0], &y[n, c, 0], S, mh, ml, a, b[c], stream)
        fdl_sfence()   # once per thread: its streamed stores are visible


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _apply_rows(const floating[:, ::1] x, const floating[:, ::1] vec,
                      floating[:, ::1] y, bint stream, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    # y[n] = ((x[n] - mh) - ml) * a + c with vec = (mh, ml, a, c) per column
    cdef int64_t R = x.shape[0], L = x.shape[1], r
    with parallel(num_threads=team(nt, R * L * sizeof(floating), R)):
        for r in prange(R, schedule="static"):
            if floating is float:
                K32.apply_cols(&x[r, 0], &y[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0],
                               &vec[3, 0], stream)
            else:
                K64.apply_cols(&x[r, 0], &y[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0],
                               &vec[3, 0], stream)
        fdl_sfence()   # once per thread: its streamed stores are visible


def _split_mean(mean, dtype):
    """The float64 mean as head + rest in ``dtype`` (the kernels' mh, ml)."""
    mh = mean.astype(dtype)
    return mh, (mean - mh.astype(np.float64)).astype(dtype)


def _column_vectors(mean, rstd, w, b, S, dtype):
    """(4, C*S) per-column (mean head, mean rest, scale, shift) in ``dtype``."""
    C = mean.shape[0]
    mh, ml = _split_mean(mean, dtype)
    a = rstd if w is None else rstd * w.astype(np.float64)
    a = a.astype(dtype)      # rounded once, like the channel path's scale
    c = np.zeros(C, dtype) if b is None else b
    return np.repeat(np.stack([mh, ml, a, c.astype(dtype)]), S, axis=1)


def _apply_columns(x, mean, rstd, w, b, out, bint stream, int nt):
    N, C, S = x.shape
    vec = _column_vectors(mean, rstd, w, b, S, x.dtype)
    x2, y2 = x.reshape(N, C * S), out.reshape(N, C * S)
    if x.dtype == np.float32:
        _apply_rows[float](x2, vec, y2, stream, nt)
    else:
        _apply_rows[double](x2, vec, y2, stream, nt)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _apply_channels(const floating[:, :, ::1] x, const double[::1] mean,
                          const double[::1] rstd, const floating[::1] w,
                          const floating[::1] b, floating[:, :, ::1] y, bint stream, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i, n, c
    cdef floating mh, ml
    with parallel(num_threads=team(nt, N * C * S * sizeof(floating), N * C)):
        for i in prange(N * C, schedule="static"):
            n = i // C
            c = i % C
            mh = <floating>mean[c]
            ml = <floating>(mean[c] - <double>mh)
            if floating is float:
                K32.apply_chan(&x[n, c, 0], &y[n, c, 0], S, mh, ml, <float>(rstd[c] * w[c]), b[c], stream)
            else:
                K64.apply_chan(&x[n, c, 0], &y[n, c, 0], S, mh, ml, rstd[c] * w[c], b[c], stream)
        fdl_sfence()   # once per thread: its streamed stores are visible


def batch_norm_eval(x, mean, rstd, w, b, out, int nt):
    out, stream = _output(out, x)
    if not _by_channel(x):
        _apply_columns(x, mean, rstd, w, b, out, stream, nt)
        return out
    C = x.shape[1]
    w = np.ones(C, x.dtype) if w is None else w
    b = np.zeros(C, x.dtype) if b is None else b
    if x.dtype == np.float32:
        _apply_channels[float](x, mean, rstd, w, b, out, stream, nt)
    else:
        _apply_channels[double](x, mean, rstd, w, b, out, stream, nt)
    return out


def batch_norm_fwd(x, w, b, double eps, out, int nt):
    out, stream = _output(out, x)
    N, C, S = x.shape
    if not _by_channel(x):
        mu, m2, _ = _moments(x.reshape(-1), x.shape, "batch", None, nt)
        mean = np.array(mu, np.float64)
        var = np.asarray(m2) / float(N * S)
        _apply_columns(x, mean, 1.0 / np.sqrt(var + eps), w, b, out, stream, nt)
        return out, mean, var
    w = np.ones(C, x.dtype) if w is None else w
    b = np.zeros(C, x.dtype) if b is None else b
    if C < FEW_CHANNELS:     # statistics over blocks of every segment, then apply
        mu, m2, _ = _moments(x.reshape(-1), x.shape, "batch", None, nt)
        mean = np.array(mu, np.float64)
        var = np.asarray(m2) / float(N * S)
        if x.dtype == np.float32:
            _apply_channels[float](x, mean, 1.0 / np.sqrt(var + eps), w, b, out, stream, nt)
        else:
            _apply_channels[double](x, mean, 1.0 / np.sqrt(var + eps), w, b, out, stream, nt)
        return out, mean, var
    mean, var = np.empty(C), np.empty(C)
    work = _scratch_array("batch_fwd", (max(1, nt), fdl_seg_moments_work(N, S, x.itemsize)),
                          np.float64)
    cdef double[::1] mv = mean, vv = var
    if x.dtype == np.float32:
        _batch_fwd_channels[float](x, w, b, eps, out, mv, vv, work, stream, nt)
    else:
        _batch_fwd_channels[double](x, w, b, eps, out, mv, vv, work, stream, nt)
    return out, mean, var


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _batch_seg_sums(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                          const double[::1] mean, const double[::1] rstd, double[:, ::1] A,
                          double[:, ::1] B, int nt) noexcept nogil:
    # A[n, c] = sum_s dy xh, B[n, c] = sum_s dy, one (n, c) segment per unit in
    # memory order: parallel over the batch whatever the number of channels
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i, n, c
    cdef float mh
    for i in prange(N * C, num_threads=team(nt, 2 * N * C * S * sizeof(floating), N * C),
                    schedule="static"):
        n = i // C
        c = i % C
        A[n, c] = 0
        B[n, c] = 0
        if floating is float:
            mh = <float>mean[c]
            K32.seg_sums(&dy[n, c, 0], &x[n, c, 0], S, mh, <float>(mean[c] - <double>mh),
                         <float>rstd[c], &A[n, c], &B[n, c])
        else:
            K64.seg_sums(&dy[n, c, 0], &x[n, c, 0], S, mean[c], 0.0, rstd[c], &A[n, c],
                         &B[n, c])


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _batch_seg_dx(const floating[:, :, ::1] dy, const floating[:, :, ::1] x,
                        const double[::1] mean, const double[::1] rstd, const floating[::1] w,
                        const double[::1] c1, const double[::1] c2, bint training,
                        floating[:, :, ::1] dx, int nt) noexcept nogil:
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i, n, c
    cdef float mh
    for i in prange(N * C, num_threads=team(nt, 2 * N * C * S * sizeof(floating), N * C),
                    schedule="static"):
        n = i // C
        c = i % C
        if not training:          # constant statistics: dx = dy w r
            if floating is float:
                K32.seg_scale(&dy[n, c, 0], &dx[n, c, 0], S, w[c], <float>rstd[c])
            else:
                K64.seg_scale(&dy[n, c, 0], &dx[n, c, 0], S, w[c], rstd[c])
        elif floating is float:
            mh = <float>mean[c]
            K32.seg_dx(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mh,
                       <float>(mean[c] - <double>mh), <float>rstd[c], w[c], <float>c1[c],
                       <float>c2[c])
        else:
            K64.seg_dx(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mean[c], 0.0, rstd[c],
                       w[c], c1[c], c2[c])


def _batch_bwd_segments(dy, x, mean, rstd, w, bint training, int nt):
    N, C, S = x.shape
    wv = np.ones(C, x.dtype) if w is None else w
    A2, B2 = np.empty((N, C)), np.empty((N, C))
    if x.dtype == np.float32:
        _batch_seg_sums[float](dy, x, mean, rstd, A2, B2, nt)
    else:
        _batch_seg_sums[double](dy, x, mean, rstd, A2, B2, nt)
    A, B = A2.sum(axis=0), B2.sum(axis=0)      # over n in order: a fixed merge
    w64 = wv.astype(np.float64)
    c1, c2 = w64 * B / float(N * S), w64 * A / float(N * S)
    dx = np.empty_like(x)
    if x.dtype == np.float32:
        _batch_seg_dx[float](dy, x, mean, rstd, wv, c1, c2, training, dx, nt)
    else:
        _batch_seg_dx[double](dy, x, mean, rstd, wv, c1, c2, training, dx, nt)
    return dx, A, B


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _col_sums(const floating[:, ::1] dy, const floating[:, ::1] x,
                    const floating[:, ::1] vec, floating[:, ::1] ap, floating[:, ::1] bp,
                    int64_t rpc, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    # partial column sums of dy * xh and dy over fixed chunks of rpc rows;
    # vec rows: mean head, mean rest, rstd
    cdef int64_t R = x.shape[0], L = x.shape[1], nch = ap.shape[0], k, r
    for k in prange(nch, num_threads=team(nt, 2 * R * L * sizeof(floating), nch), schedule="static"):
        memset(&ap[k, 0], 0, L * sizeof(floating))
        memset(&bp[k, 0], 0, L * sizeof(floating))
        for r in range(k * rpc, min(R, (k + 1) * rpc)):
            if floating is float:
                K32.col_sums(&dy[r, 0], &x[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0],
                             &ap[k, 0], &bp[k, 0])
            else:
                K64.col_sums(&dy[r, 0], &x[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0],
                             &ap[k, 0], &bp[k, 0])


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _col_dx(const floating[:, ::1] dy, const floating[:, ::1] x,
                  const floating[:, ::1] vec, floating[:, ::1] dx, bint training, int nt) noexcept nogil:
    # the SIMD level's function table, read once per call (no shared state)
    cdef const fdl_nk_f32 *K32 = fdl_nk_f32_table(simd_level())
    cdef const fdl_nk_f64 *K64 = fdl_nk_f64_table(simd_level())
    # vec rows: mean head, mean rest, rstd, weight, c1, c2; without training
    # (constant statistics) dx = dy * weight * rstd
    cdef int64_t R = x.shape[0], L = x.shape[1], r
    with parallel(num_threads=team(nt, 2 * R * L * sizeof(floating), R)):
        for r in prange(R, schedule="static"):
            if not training:
                if floating is float:
                    K32.col_scale(&dy[r, 0], &dx[r, 0], L, &vec[3, 0], &vec[2, 0])
                else:
                    K64.col_scale(&dy[r, 0], &dx[r, 0], L, &vec[3, 0], &vec[2, 0])
            elif floating is float:
                K32.col_dx(&dy[r, 0], &x[r, 0], &dx[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0],
                           &vec[3, 0], &vec[4, 0], &vec[5, 0])
            else:
                K64.col_dx(&dy[r, 0], &x[r, 0], &dx[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0],
                           &vec[3, 0], &vec[4, 0], &vec[5, 0])


def _batch_bwd_columns(dy, x, mean, rstd, w, bint training, int nt):
    N, C, S = x.shape
    L = C * S
    dt = x.dtype
    w64 = np.ones(C) if w is None else w.astype(np.float64)
    mh, ml = _split_mean(mean, dt)
    vec = np.empty((6, L), dt)
    vec[:3] = np.repeat(np.stack([mh, ml, rstd.astype(dt)]), S, axis=1)
    x2, dy2 = x.reshape(N, L), dy.reshape(N, L)
    rpc = _chunk_rows(N)
    nch = (N + rpc - 1) // rpc
    part = _scratch_array("batch_bwd", (2, nch, L), dt)
    if dt == np.float32:
        _col_sums[float](dy2, x2, vec, part[0], part[1], rpc, nt)
    else:
        _col_sums[double](dy2, x2, vec, part[0], part[1], rpc, nt)
    A = _reduce_partials(part[0], nt).reshape(C, S).sum(axis=1)
    B = _reduce_partials(part[1], nt).reshape(C, S).sum(axis=1)
    M = float(N * S)
    c1 = w64 * B / M if training else np.zeros(C)
    c2 = w64 * A / M if training else np.zeros(C)
    vec[3:] = np.repeat(np.stack([w64, c1, c2]).astype(dt), S, axis=1)
    dx = np.empty_like(x)
    if dt == np.float32:
        _col_dx[float](dy2, x2, vec, dx.reshape(N, L), training, nt)
    else:
        _col_dx[double](dy2, x2, vec, dx.reshape(N, L), training, nt)
    return dx, A, B


def batch_norm_bwd(dy, x, mean, rstd, w, bint training, bint need_dw, bint need_db, int nt):
    if _by_channel(x):
        dx, A, B = _batch_bwd_segments(dy, x, mean, rstd, w, training, nt)
    else:
        dx, A, B = _batch_bwd_columns(dy, x, mean, rstd, w, training, nt)
    return (dx, A.astype(x.dtype) if need_dw else None, B.astype(x.dtype) if need_db else None)
