"""Fused normalization kernels, forward (Cython backend); op contracts in fastdl.norm.

One driver per op serves float32, float64 and float16 (passed to C as its
uint16 bits; computed in float32 with float32 parameters, see src/normk16.h:
the results are bitwise the float32 path's on ``x.astype(np.float32)``,
rounded once to float16).  Work is split into fixed units (rows, (n, group)
rows, channels, chunks of rows) that do not depend on the thread count, and
each unit is computed in a fixed order, so results are bitwise the same for
any number of threads.  The backward drivers are in _norm_bwd.
"""
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport sqrt
from libc.stdint cimport int64_t, uint16_t

import numpy as np

from fastdl._backends.cython._cpu cimport simd_level, team

cdef extern from "simd.h":
    int FDL_SIMD_AVX2
from fastdl._backends.cython._moments cimport (
    FDL_BLOCK_BYTES, data, fdl_seg_moments_work, mom_rows, mom_segments)
from fastdl._backends.cython._normk cimport (
    K16, Tables, apply_chan, apply_cols, apply_row, fdl_nk16_group_row, fdl_nk16_layer_row,
    fdl_nk16_seg_moments, fdl_sfence, paired, param, rms_row, tables)
from fastdl._backends.cython._norm_stats import _scratch_array, moments

# Batch norm works channel by channel (the channel's N segments stay in L2
# between passes) when a segment has at least this many bytes (of the compute
# type); below, it works on rows with per-column vectors.
cdef int64_t CHANNEL_SEGMENT_BYTES = 256
# Rows per chunk of the dweight/dbias partial sums: at most MAX_CHUNK_ROWS
# (each partial adds that many terms in the input's precision) and about
# R / MIN_CHUNKS so that small inputs still split across threads.
cdef int64_t MAX_CHUNK_ROWS = 64
cdef int64_t MIN_CHUNKS = 16
# Outputs of at least STREAM_BYTES are written with non-temporal stores: no
# read-for-ownership of the destination (writes ~1.5x faster on the project's
# machines), and an output this large would not stay cached for the next op.
# (float16 outputs are written with plain stores.)
cdef int64_t STREAM_BYTES = 8 << 20
# Below this many channels the batch-norm forward shares out (n, c) segments
# instead of whole channels, so that few channels still use every thread.
cdef int64_t FEW_CHANNELS = 16
# Rows of at most FDL_BLOCK_BYTES get their moments a run of RUN_BYTES at a
# time (pass 1 of the next row overlaps pass 2 of this one, with prefetch),
# then are normalized while the run is in cache; longer rows go one by one.
cdef int64_t RUN_BYTES = 65536

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
_PAIRS = "float32 parameters for float16 and float32 data, float64 for float64 data"


def param_dtype(x):
    """dtype of the parameters, per-column vectors and partial sums for ``x``."""
    return F32 if x.dtype == F16 else x.dtype


def _bits(a):
    """``a`` as the kernels read it: float16 as its uint16 bits."""
    return a.view(np.uint16) if a.dtype == F16 else a


def _ones(w, n, x):
    return np.ones(n, param_dtype(x)) if w is None else w


def _zeros(b, n, x):
    return np.zeros(n, param_dtype(x)) if b is None else b


def _check_pair(bint ok):
    if not ok:
        raise TypeError(f"norm kernels take {_PAIRS}")


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


def _comp_itemsize(x):
    """Bytes of an element of the computation's type (float32 for float16)."""
    return 4 if x.dtype == F16 else x.itemsize


def _by_channel(x):
    return x.shape[2] * _comp_itemsize(x) >= CHANNEL_SEGMENT_BYTES


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


# ---------------------------------------------------------------- layer / RMS norm

def _layer_fwd(const data[:, ::1] x, const param[::1] w, const param[::1] b, double eps,
               data[:, ::1] y, double[::1] mean, double[::1] var, bint stream, int nt):
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t R = x.shape[0], D = x.shape[1], r, k, r0
    cdef int64_t run = _run_rows(D, sizeof(data)), nrun = (R + run - 1) // run
    cdef double v
    if data is uint16_t:     # one row at a time, converted in L1
        with nogil:
            for r in prange(R, num_threads=team(nt, R * D * sizeof(data), R), schedule="static"):
                fdl_nk16_layer_row(K16(&t), &x[r, 0], &y[r, 0], D, <const float *>&w[0],
                                   <const float *>&b[0], eps, &mean[r], &var[r])
    else:
        with nogil, parallel(num_threads=team(nt, R * D * sizeof(data), nrun)):
            for k in prange(nrun, schedule="static"):
                r0 = k * run
                mom_rows(t.mom, &x[r0, 0], min(run, R - r0), D, &mean[r0], &var[r0])
                for r in range(r0, min(R, r0 + run)):
                    v = var[r] / D
                    var[r] = v
                    apply_row(&t, &x[r, 0], &y[r, 0], D, mean[r], 1.0 / sqrt(v + eps), &w[0],
                              &b[0], stream)
            fdl_sfence()   # once per thread: its streamed stores are visible


def layer_norm_fwd(x, w, b, double eps, out, int nt):
    out, stream = _output(out, x)
    R, D = x.shape
    mean, var = np.empty(R), np.empty(R)
    _layer_fwd(_bits(x), _ones(w, D, x), _zeros(b, D, x), eps, _bits(out), mean, var, stream,
               nt)
    return out, mean, var


def _rms_fwd(const data[:, ::1] x, const param[::1] w, double eps, data[:, ::1] y,
             double[::1] ms, bint stream, int nt):
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef int level = simd_level()
    if data is uint16_t and level > FDL_SIMD_AVX2:
        # float16 RMS norm forward runs the AVX2 kernels at the AVX-512 level as float32
        # does (normk.c); with the 16-lane conversions too it measured 0.84-0.92x of AVX2
        # on rows of 64, so it takes the AVX2 tables whole (the same bits either way)
        level = FDL_SIMD_AVX2
    cdef Tables t = tables(<data *>NULL, level)
    cdef int64_t R = x.shape[0], D = x.shape[1], r
    with nogil, parallel(num_threads=team(nt, R * D * sizeof(data), R)):
        for r in prange(R, schedule="static"):
            ms[r] = rms_row(&t, &x[r, 0], &y[r, 0], D, &w[0], eps, stream)
        fdl_sfence()


def rms_norm_fwd(x, w, double eps, out, int nt):
    out, stream = _output(out, x)
    ms = np.empty(x.shape[0])
    _rms_fwd(_bits(x), _ones(w, x.shape[1], x), eps, _bits(out), ms, stream, nt)
    return out, ms


# ---------------------------------------------------------------- group / instance norm

def _group_fwd(const data[:, :, ::1] x, int64_t G, const param[::1] w, const param[::1] b,
               double eps, data[:, :, ::1] y, double[::1] mean, double[::1] var, bint stream,
               int nt):
    # row = (n, g): K channels of S elements, rows back to back in memory
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], K = C // G, M = K * S
    cdef int64_t R = N * G, run = _run_rows(M, sizeof(data)), nrun = (R + run - 1) // run
    cdef int64_t row, n, g, c, k, r0
    cdef double v, rs
    if data is uint16_t:
        with nogil:
            for row in prange(R, num_threads=team(nt, R * M * sizeof(data), R),
                              schedule="static"):
                n = row // G
                g = row % G
                fdl_nk16_group_row(K16(&t), &x[n, g * K, 0], &y[n, g * K, 0], K, S,
                                   <const float *>&w[g * K], <const float *>&b[g * K], eps,
                                   &mean[row], &var[row])
    else:
        with nogil, parallel(num_threads=team(nt, R * M * sizeof(data), nrun)):
            for k in prange(nrun, schedule="static"):
                r0 = k * run
                mom_rows(t.mom, &x[0, 0, 0] + r0 * M, min(run, R - r0), M, &mean[r0],
                         &var[r0])
                for row in range(r0, min(R, r0 + run)):
                    n = row // G
                    g = row % G
                    v = var[row] / M
                    var[row] = v
                    rs = 1.0 / sqrt(v + eps)
                    for c in range(g * K, (g + 1) * K):
                        apply_chan(&t, &x[n, c, 0], &y[n, c, 0], S, mean[row], rs * w[c],
                                   b[c], stream)
            fdl_sfence()


def group_norm_fwd(x, int64_t G, w, b, double eps, out, int nt):
    out, stream = _output(out, x)
    N, C, S = x.shape
    mean, var = np.empty(N * G), np.empty(N * G)
    _group_fwd(_bits(x), G, _ones(w, C, x), _zeros(b, C, x), eps, _bits(out), mean, var,
               stream, nt)
    return out, mean.reshape(N, G), var.reshape(N, G)


# ---------------------------------------------------------------- batch norm

def _batch_fwd_channels(const data[:, :, ::1] x, const param[::1] w, const param[::1] b,
                        double eps, data[:, :, ::1] y, double[::1] mean, double[::1] var,
                        double[:, ::1] work, bint stream, int nt):
    # statistics of channel c over its N segments, then the channel is normalized
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n
    cdef double mu, q, v, rs
    cdef int tid = 0
    with nogil, parallel(num_threads=team(nt, N * C * S * sizeof(data), C)):
        tid = threadid()
        for c in prange(C, schedule="static"):
            mu = 0
            q = 0
            if data is uint16_t:
                fdl_nk16_seg_moments(K16(&t), &x[0, c, 0], N, S, C * S, &work[tid, 0], &mu, &q)
            else:
                mom_segments(t.mom, &x[0, c, 0], N, S, C * S, &work[tid, 0], &mu, &q)
            v = q / (N * S)
            mean[c] = mu
            var[c] = v
            rs = 1.0 / sqrt(v + eps)
            for n in range(N):
                apply_chan(&t, &x[n, c, 0], &y[n, c, 0], S, mu, rs * w[c], b[c], stream)
        fdl_sfence()   # once per thread: its streamed stores are visible


def _apply_rows(const data[:, ::1] x, const param[:, ::1] vec, data[:, ::1] y, bint stream,
                int nt):
    # y[n] = ((x[n] - mh) - ml) * a + c with vec = (mh, ml, a, c) per column
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t R = x.shape[0], L = x.shape[1], r
    with nogil, parallel(num_threads=team(nt, R * L * sizeof(data), R)):
        for r in prange(R, schedule="static"):
            apply_cols(&t, &x[r, 0], &y[r, 0], L, &vec[0, 0], &vec[1, 0], &vec[2, 0],
                       &vec[3, 0], stream)
        fdl_sfence()


def _apply_channels(const data[:, :, ::1] x, const double[::1] mean, const double[::1] rstd,
                    const param[::1] w, const param[::1] b, data[:, :, ::1] y, bint stream,
                    int nt):
    _check_pair(paired(<data *>NULL, <param *>NULL))
    cdef Tables t = tables(<data *>NULL, simd_level())
    cdef int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i, n, c
    with nogil, parallel(num_threads=team(nt, N * C * S * sizeof(data), N * C)):
        for i in prange(N * C, schedule="static"):
            n = i // C
            c = i % C
            apply_chan(&t, &x[n, c, 0], &y[n, c, 0], S, mean[c], rstd[c] * w[c], b[c], stream)
        fdl_sfence()


def _apply(x, mean, rstd, w, b, out, bint stream, int nt):
    """out = the batch norm of x with the given statistics."""
    N, C, S = x.shape
    if _by_channel(x):
        _apply_channels(_bits(x), mean, rstd, _ones(w, C, x), _zeros(b, C, x), _bits(out),
                        stream, nt)
    else:
        vec = _column_vectors(mean, rstd, w, b, S, param_dtype(x))
        _apply_rows(_bits(x).reshape(N, C * S), vec, _bits(out).reshape(N, C * S), stream, nt)


def batch_norm_eval(x, mean, rstd, w, b, out, int nt):
    out, stream = _output(out, x)
    _apply(x, mean, rstd, w, b, out, stream, nt)
    return out


def batch_norm_fwd(x, w, b, double eps, out, int nt):
    out, stream = _output(out, x)
    N, C, S = x.shape
    if not _by_channel(x) or C < FEW_CHANNELS:     # statistics over blocks, then apply
        mu, m2, _ = moments(x.reshape(-1), x.shape, "batch", None, nt)
        mean = np.array(mu, np.float64)
        var = np.asarray(m2) / float(N * S)
        _apply(x, mean, 1.0 / np.sqrt(var + eps), w, b, out, stream, nt)
        return out, mean, var
    mean, var = np.empty(C), np.empty(C)
    nwork = fdl_seg_moments_work(N, S, _comp_itemsize(x))
    work = _scratch_array("batch_fwd", (max(1, nt), nwork), np.float64)
    _batch_fwd_channels(_bits(x), _ones(w, C, x), _zeros(b, C, x), eps, _bits(out), mean, var,
                        work, stream, nt)
    return out, mean, var


from fastdl._backends.cython._norm_bwd import (  # noqa: E402 - the backward drivers
    batch_norm_bwd, group_norm_bwd, layer_norm_bwd, rms_norm_bwd)
