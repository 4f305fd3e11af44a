"""Fused normalization kernels, backward (Cython backend); op contracts in fastdl.norm.

As the forward (_norm): one driver per op for float32, float64 and float16
(its uint16 bits, computed in float32), fixed work units whatever the thread
count.  dweight/dbias come from per-chunk partial sums (in the parameters'
dtype) added afterwards in a fixed order.
"""
from cython.parallel cimport prange, parallel
from libc.stdint cimport int64_t
from libc.string cimport memset

import numpy as np

from fastdl._backends.cython._cpu cimport simd_level, team
from fastdl._backends.cython._moments cimport data
from fastdl._backends.cython._normk cimport (
    Tables, col_dx, col_sums, group_bwd_row, layer_bwd_row, paired, param, rms_bwd_row,
    seg_dx, seg_sums, tables)
from fastdl._backends.cython._norm import (
    _bits, _by_channel, _check_pair, _chunk_rows, _ones, _split_mean, param_dtype)
from fastdl._backends.cython._norm_stats import _scratch_array


def _sum_rows(const param[:, ::1] p, double[::1] out, int nt):
    # out[j] = sum over rows of p[:, j], in row order (fixed), columns in parallel
    cdef int64_t K = p.shape[0], D = p.shape[1], j0, j, k
    cdef int64_t STRIP = 256
    for j0 in prange(0, D, STRIP, nogil=True, schedule="static",
                     num_threads=team(nt, K * D * sizeof(param), (D + STRIP - 1) // STRIP)):
        for j in range(j0, min(D, j0 + STRIP)):
            out[j] = 0
        for k in range(K):
            for j in range(j0, min(D, j0 + STRIP)):
                out[j] += p[k, j]


def _reduce_partials(p, int nt):
    out = np.empty(p.shape[1])
    _sum_rows(p, out, nt)
    return out


# ---------------------------------------------------------------- layer / RMS norm

def _layer_bwd(const data[:, ::1] dy, const data[:, ::1] x, const double[::1] mean,
               const double[::1] rstd, const param[::1] w, data[:, ::1] dx, param[:, ::1] dwp,
               param[:, ::1] dbp, int64_t rpc, int nt):
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t R = x.shape[0], D = x.shape[1], nch = dwp.shape[0], k, r
    for k in prange(nch, nogil=True, schedule="static",
                    num_threads=team(nt, 2 * R * D * sizeof(data), nch)):
        memset(&dwp[k, 0], 0, D * sizeof(param))
        memset(&dbp[k, 0], 0, D * sizeof(param))
        for r in range(k * rpc, min(R, (k + 1) * rpc)):
            layer_bwd_row(&t, &dy[r, 0], &x[r, 0], &dx[r, 0], D, mean[r], rstd[r], &w[0],
                          &dwp[k, 0], &dbp[k, 0])


def layer_norm_bwd(dy, x, mean, rstd, w, bint need_dw, bint need_db, int nt):
    R, D = x.shape
    pd = param_dtype(x)
    rpc = _chunk_rows(R)
    nch = (R + rpc - 1) // rpc
    dx = np.empty_like(x)
    part = _scratch_array("layer_bwd", (2, nch, D), pd)
    _layer_bwd(_bits(dy), _bits(x), mean, rstd, _ones(w, D, x), _bits(dx), part[0], part[1],
               rpc, nt)
    dw = _reduce_partials(part[0], nt).astype(pd) if need_dw else None
    db = _reduce_partials(part[1], nt).astype(pd) if need_db else None
    return dx, dw, db


def _rms_bwd(const data[:, ::1] dy, const data[:, ::1] x, const double[::1] rstd,
             const param[::1] w, data[:, ::1] dx, param[:, ::1] dwp, int64_t rpc, int nt):
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t R = x.shape[0], D = x.shape[1], nch = dwp.shape[0], k, r
    for k in prange(nch, nogil=True, schedule="static",
                    num_threads=team(nt, 2 * R * D * sizeof(data), nch)):
        memset(&dwp[k, 0], 0, D * sizeof(param))
        for r in range(k * rpc, min(R, (k + 1) * rpc)):
            rms_bwd_row(&t, &dy[r, 0], &x[r, 0], &dx[r, 0], D, rstd[r], &w[0], &dwp[k, 0])


def rms_norm_bwd(dy, x, rstd, w, bint need_dw, int nt):
    R, D = x.shape
    pd = param_dtype(x)
    rpc = _chunk_rows(R)
    nch = (R + rpc - 1) // rpc
    dx = np.empty_like(x)
    part = _scratch_array("rms_bwd", (nch, D), pd)
    _rms_bwd(_bits(dy), _bits(x), rstd, _ones(w, D, x), _bits(dx), part, rpc, nt)
    return dx, (_reduce_partials(part, nt).astype(pd) if need_dw else None)


# ---------------------------------------------------------------- group / instance norm

def _group_bwd(const data[:, :, ::1] dy, const data[:, :, ::1] x, const double[::1] mean,
               const double[::1] rstd, int64_t G, const param[::1] w, data[:, :, ::1] dx,
               double[:, ::1] A, double[:, ::1] B, int nt):
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], K = C // G, row, n, c0
    for row in prange(N * G, nogil=True, schedule="static",
                      num_threads=team(nt, 2 * N * C * S * sizeof(data), N * G)):
        n = row // G
        c0 = (row % G) * K
        group_bwd_row(&t, &dy[n, c0, 0], &x[n, c0, 0], &dx[n, c0, 0], K, S, mean[row],
                      rstd[row], &w[c0], &A[n, c0], &B[n, c0])


def group_norm_bwd(dy, x, mean, rstd, int64_t G, w, bint need_dw, bint need_db, int nt):
    N, C, S = x.shape
    pd = param_dtype(x)
    dx = np.empty_like(x)
    A, B = np.empty((N, C)), np.empty((N, C))
    _group_bwd(_bits(dy), _bits(x), np.ascontiguousarray(mean).reshape(-1),
               np.ascontiguousarray(rstd).reshape(-1), G, _ones(w, C, x), _bits(dx), A, B, nt)
    dw = A.sum(axis=0).astype(pd) if need_dw else None
    db = B.sum(axis=0).astype(pd) if need_db else None
    return dx, dw, db


# ---------------------------------------------------------------- batch norm

def _seg_sums(const data[:, :, ::1] dy, const data[:, :, ::1] x, const double[::1] mean,
              const double[::1] rstd, double[:, ::1] A, double[:, ::1] B, int nt):
    # A[n, c] = sum_s dy xh, B[n, c] = sum_s dy, one (n, c) segment per unit in
    # memory order: parallel over the batch whatever the number of channels
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i, n, c
    for i in prange(N * C, nogil=True, schedule="static",
                    num_threads=team(nt, 2 * N * C * S * sizeof(data), N * C)):
        n = i // C
        c = i % C
        A[n, c] = 0
        B[n, c] = 0
        seg_sums(&t, &dy[n, c, 0], &x[n, c, 0], S, mean[c], rstd[c], &A[n, c], &B[n, c])


def _seg_dx(const data[:, :, ::1] dy, const data[:, :, ::1] x, const double[::1] mean,
            const double[::1] rstd, const param[::1] w, const double[::1] c1,
            const double[::1] c2, bint training, data[:, :, ::1] dx, int nt):
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i, n, c
    for i in prange(N * C, nogil=True, schedule="static",
                    num_threads=team(nt, 2 * N * C * S * sizeof(data), N * C)):
        n = i // C
        c = i % C
        seg_dx(&t, &dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mean[c], rstd[c], w[c], c1[c],
               c2[c], training)


def _bwd_segments(dy, x, mean, rstd, w, bint training, int nt):
    N, C, S = x.shape
    wv = _ones(w, C, x)
    A2, B2 = np.empty((N, C)), np.empty((N, C))
    _seg_sums(_bits(dy), _bits(x), mean, rstd, A2, B2, nt)
    A, B = A2.sum(axis=0), B2.sum(axis=0)      # over n in order: a fixed merge
    w64 = wv.astype(np.float64)
    c1, c2 = w64 * B / float(N * S), w64 * A / float(N * S)
    dx = np.empty_like(x)
    _seg_dx(_bits(dy), _bits(x), mean, rstd, wv, c1, c2, training, _bits(dx), nt)
    return dx, A, B


def _col_sums(const data[:, ::1] dy, const data[:, ::1] x, const param[:, ::1] vec,
              param[:, ::1] ap, param[:, ::1] bp, int64_t rpc, int nt):
    # partial column sums of dy * xh and dy over fixed chunks of rpc rows;
    # vec rows: mean head, mean rest, rstd
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t R = x.shape[0], L = x.shape[1], nch = ap.shape[0], k, r
    for k in prange(nch, nogil=True, schedule="static",
                    num_threads=team(nt, 2 * R * L * sizeof(data), nch)):
        memset(&ap[k, 0], 0, L * sizeof(param))
        memset(&bp[k, 0], 0, L * sizeof(param))
        for r in range(k * rpc, min(R, (k + 1) * rpc)):
            col_sums(&t, &dy[r, 0], &x[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0], &ap[k, 0],
                     &bp[k, 0])


def _col_dx(const data[:, ::1] dy, const data[:, ::1] x, const param[:, ::1] vec,
            data[:, ::1] dx, bint training, int nt):
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t R = x.shape[0], L = x.shape[1], r
    for r in prange(R, nogil=True, schedule="static",
                    num_threads=team(nt, 2 * R * L * sizeof(data), R)):
        col_dx(&t, &dy[r, 0], &x[r, 0], &dx[r, 0], L, &vec[0, 0], L, training)


def _bwd_columns(dy, x, mean, rstd, w, bint training, int nt):
    N, C, S = x.shape
    L = C * S
    dt = param_dtype(x)
    w64 = np.ones(C) if w is None else w.astype(np.float64)
    mh, ml = _split_mean(mean, dt)
    vec = np.empty((6, L), dt)
    vec[:3] = np.repeat(np.stack([mh, ml, rstd.astype(dt)]), S, axis=1)
    x2, dy2 = _bits(x).reshape(N, L), _bits(dy).reshape(N, L)
    rpc = _chunk_rows(N)
    nch = (N + rpc - 1) // rpc
    part = _scratch_array("batch_bwd", (2, nch, L), dt)
    _col_sums(dy2, x2, vec, part[0], part[1], rpc, nt)
    A = _reduce_partials(part[0], nt).reshape(C, S).sum(axis=1)
    B = _reduce_partials(part[1], nt).reshape(C, S).sum(axis=1)
    M = float(N * S)
    c1 = w64 * B / M if training else np.zeros(C)
    c2 = w64 * A / M if training else np.zeros(C)
    vec[3:] = np.repeat(np.stack([w64, c1, c2]).astype(dt), S, axis=1)
    dx = np.empty_like(x)
    _col_dx(dy2, x2, vec, _bits(dx).reshape(N, L), training, nt)
    return dx, A, B


def batch_norm_bwd(dy, x, mean, rstd, w, bint training, bint need_dw, bint need_db, int nt):
    pd = param_dtype(x)
    if _by_channel(x):
        dx, A, B = _bwd_segments(dy, x, mean, rstd, w, training, nt)
    else:
        dx, A, B = _bwd_columns(dy, x, mean, rstd, w, training, nt)
    return dx, A.astype(pd) if need_dw else None, B.astype(pd) if need_db else None
