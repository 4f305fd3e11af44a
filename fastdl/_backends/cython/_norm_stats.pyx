"""Fused mean/variance kernel behind ``fastdl.norm_stats`` (Cython backend).

Every statistic group is cut into fixed work items (contiguous blocks of at
most FDL_BLOCK_BYTES, or chunks of rows for batch statistics over a short spatial
extent).  Each item gets its mean and M2 from two passes while it sits
in cache; items are then merged per group with Chan's formula in a fixed
pairwise tree.  The cut does not depend on the thread count, so neither do the
results.

float16 input is converted to float32 a block at a time inside the kernels
(moments.h), with the float32 block length, so its statistics are bitwise
those of the float32 input ``x.astype(np.float32)`` without a float32 copy.
"""
from cython.parallel cimport prange, parallel, threadid
from libc.stdint cimport int64_t, uint16_t

import threading

import numpy as np

from fastdl._backends.cython._cpu cimport simd_level
from fastdl._backends.cython._cpu cimport team

from fastdl._backends.cython._moments cimport (
    FDL_BLOCK_BYTES, comp_size, data, fdl_chan, mom_blocks, mom_columns, mom_table)

# Blocks per work item (pipelined inside the kernel).
cdef int64_t RUN_BLOCKS = 16
# Batch statistics use the row-chunk path below this spatial extent.
cdef int64_t SHORT_SPATIAL = 64
# Row chunks of the row-chunk path: about CHUNK_ELEMS elements, and between
# MIN_CHUNK_ROWS and MAX_CHUNK_ROWS rows (each column sums that many terms in
# the input's precision; 128 matches the terms per lane of the block path).
cdef int64_t CHUNK_ELEMS = 131072
cdef int64_t MIN_CHUNK_ROWS = 16
cdef int64_t MAX_CHUNK_ROWS = 128
# Groups per work item of the final merge.
cdef int64_t MERGE_GROUPS = 64

F16 = np.dtype(np.float16)


cdef inline int64_t _block_len(int64_t itemsize) noexcept nogil:
    return FDL_BLOCK_BYTES // itemsize


cdef void _segment_items(const data[::1] x, int64_t M, int64_t L, double[::1] cnt,
                         double[::1] mu, double[::1] m2, int nthreads) noexcept nogil:
    # x is M segments of length L back to back (segment m = p * G + g); the
    # result of block b of segment m goes to m * nblk + b.  A work item is a
    # run of up to RUN_BLOCKS blocks (or of short segments, each its own
    # block), which the kernel pipelines: pass 1 of a block overlaps pass 2 of
    # the previous one.  float16 blocks have the float32 block length.
    cdef const void *K = mom_table(<data *>NULL, simd_level())
    cdef int64_t bl = _block_len(comp_size(<data *>NULL)), blk = min(bl, L)
    cdef int64_t nblk = (L + blk - 1) // blk
    cdef int64_t per_run = 1, nrun = 1, total, it, m, r, b0, nb, off, ln, b
    if nblk > 1:                       # long segments: runs inside a segment
        nrun = (nblk + RUN_BLOCKS - 1) // RUN_BLOCKS
        total = M * nrun
    else:                              # short segments: runs of whole segments
        per_run = max(1, (RUN_BLOCKS * bl) // L)
        total = (M + per_run - 1) // per_run
    for it in prange(total, num_threads=team(nthreads, M * L * sizeof(data), total),
                     schedule="static"):
        if nblk > 1:
            m = it // nrun
            r = it % nrun
            b0 = m * nblk + r * RUN_BLOCKS
            nb = min(RUN_BLOCKS, nblk - r * RUN_BLOCKS)
            off = m * L + r * RUN_BLOCKS * blk
            ln = min(RUN_BLOCKS * blk, L - r * RUN_BLOCKS * blk)
        else:
            b0 = it * per_run
            nb = min(per_run, M - b0)
            off = b0 * L
            ln = nb * L
        mom_blocks(K, &x[off], ln, blk, &mu[b0], &m2[b0])
        for b in range(nb):
            cnt[b0 + b] = <double>min(blk, ln - b * blk)


cdef void _row_chunk_items(const data[::1] x, int64_t N, int64_t C, int64_t S,
                           int64_t rpc, double[:, ::1] work, double[::1] cnt,
                           double[::1] mu, double[::1] m2, int nthreads) noexcept nogil:
    # item k * C + c: channel c over rows [k * rpc, (k + 1) * rpc)
    cdef const void *K = mom_table(<data *>NULL, simd_level())
    cdef int64_t nch = (N + rpc - 1) // rpc
    cdef int64_t k, c, r0, rows
    cdef int64_t tid = 0
    with parallel(num_threads=team(nthreads, N * C * S * sizeof(data), nch)):
        tid = threadid()
        for k in prange(nch, schedule="static"):
            r0 = k * rpc
            rows = min(rpc, N - r0)
            mom_columns(K, &x[r0 * C * S], rows, C, S, &work[tid, 0], &mu[k * C], &m2[k * C])
            for c in range(C):
                cnt[k * C + c] = <double>(rows * S)


cdef void _merge_groups(double[::1] cnt, double[::1] mu, double[::1] m2, int64_t G,
                        int64_t P, int64_t nblk, double[:, ::1] out,
                        int nthreads) noexcept nogil:
    # out[g] = (count, mean, M2) of group g, from its J = P * nblk items merged
    # bottom-up in a fixed pairwise tree (in place).  Item j of group g lives at
    # ((j // nblk) * G + g) * nblk + j % nblk; the inner loop runs over a block
    # of groups, which is contiguous when nblk == 1.
    cdef int64_t J = P * nblk, nb = (G + MERGE_GROUPS - 1) // MERGE_GROUPS
    cdef int64_t gb, g, g0, g1, step, j, a0, b0, ia, ib
    for gb in prange(nb, num_threads=team(nthreads, 24 * J * G, nb), schedule="static"):
        g0 = gb * MERGE_GROUPS
        g1 = min(G, g0 + MERGE_GROUPS)
        step = 1
        while step < J:
            j = 0
            while j + step < J:
                a0 = (j // nblk) * G * nblk + j % nblk
                b0 = ((j + step) // nblk) * G * nblk + (j + step) % nblk
                for g in range(g0, g1):
                    ia = a0 + g * nblk
                    ib = b0 + g * nblk
                    fdl_chan(&cnt[ia], &mu[ia], &m2[ia], cnt[ib], mu[ib], m2[ib])
                j = j + 2 * step
            step = step * 2
        for g in range(g0, g1):
            out[g, 0] = cnt[g * nblk]
            out[g, 1] = mu[g * nblk]
            out[g, 2] = m2[g * nblk]


def _layout(shape, str kind, num_groups):
    """(G, P, L, out_shape): G groups, each P segments of L contiguous elements;
    segment p of group g starts at element (p * G + g) * L."""
    cdef int64_t N = shape[0], C = shape[1], S = 1
    for s in shape[2:]:
        S *= s
    if kind == "batch":
        return C, N, S, (C,)
    if kind == "layer":
        return N, 1, C * S, (N,)
    if kind == "instance":
        return N * C, 1, S, (N, C)
    if kind == "group":
        return N * num_groups, 1, (C // num_groups) * S, (N, num_groups)
    raise ValueError(f"kind must be one of 'batch', 'layer', 'instance', 'group', got {kind!r}")


_scratch = threading.local()


def _scratch_array(str name, shape, dtype):
    """A buffer reused across calls of this Python thread (fresh multi-MB arrays
    cost page faults on every call); one per name, contents undefined."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = getattr(_scratch, name, None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, 4096), np.uint8)
        setattr(_scratch, name, buf)
    return buf[:nbytes].view(dtype).reshape(shape)


def _moments(const data[::1] xf, tuple shape, str kind, num_groups, int nthreads):
    cdef int64_t G, P, L, nblk, rpc, N, C, S, items
    cdef int64_t bl = _block_len(comp_size(<data *>NULL))
    cdef double[::1] cnt, mu, m2
    cdef double[:, ::1] work, merged_v
    G, P, L, out_shape = _layout(shape, kind, num_groups)
    if G == 0:
        return np.empty(0), np.empty(0), out_shape
    N = shape[0]
    C = shape[1]
    S = L
    if kind == "batch" and S < SHORT_SPATIAL:
        rpc = min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, CHUNK_ELEMS // max(1, C * S)))
        nblk = 1
        P = (N + rpc - 1) // rpc
        items = G * P
        buf = _scratch_array("norm_stats", (3 * items + max(1, nthreads) * 4 * C * S,),
                             np.float64)
        cnt, mu, m2 = buf[:items], buf[items:2 * items], buf[2 * items:3 * items]
        work = buf[3 * items:].reshape(max(1, nthreads), 4 * C * S)
        with nogil:
            _row_chunk_items(xf, N, C, S, rpc, work, cnt, mu, m2, nthreads)
    else:
        nblk = (L + bl - 1) // bl
        items = G * P * nblk
        buf = _scratch_array("norm_stats", (3 * items,), np.float64)
        cnt, mu, m2 = buf[:items], buf[items:2 * items], buf[2 * items:3 * items]
        with nogil:
            _segment_items(xf, G * P, L, cnt, mu, m2, nthreads)
    if P * nblk == 1:      # views of the scratch buffer: norm_stats copies them
        return np.asarray(mu), np.asarray(m2), out_shape
    merged = np.empty((G, 3))
    merged_v = merged
    with nogil:
        _merge_groups(cnt, mu, m2, G, P, nblk, merged_v, nthreads)
    return merged[:, 1], merged[:, 2], out_shape


def moments(x, tuple shape, str kind, num_groups, int nthreads):
    """(mean, M2, out_shape) per statistic group of the flat C-ordered ``x``
    (float16, float32 or float64) of ``shape``."""
    return _moments(x.view(np.uint16) if x.dtype == F16 else x, shape, kind, num_groups,
                    nthreads)


def shape_count(shape, str kind, num_groups):
    """Number of elements in each statistic group."""
    G, P, L, _ = _layout(shape, kind, num_groups)
    return P * L


def norm_stats(x, str kind, num_groups, ddof, int nthreads):
    """(mean, var) of ``x`` per statistic group; see ``fastdl.norm_stats``.

    ``x`` must be a C-contiguous float16/float32/float64 array with ndim >= 2 (the
    public API converts and validates); the count of each group minus ``ddof``
    must be positive.
    """
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"x must be a float16, float32 or float64 ndarray, got "
                        f"{type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.ndim < 2 or not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous with ndim >= 2, got "
                         f"ndim={x.ndim}, c_contiguous={x.flags.c_contiguous}")
    if nthreads < 1:
        raise ValueError(f"nthreads must be >= 1, got {nthreads}")
    count = shape_count(x.shape, kind, num_groups)
    if count - ddof <= 0:
        raise ValueError(f"count - ddof must be positive, got count={count}, ddof={ddof}")
    mean, m2, out_shape = moments(x.reshape(-1), x.shape, kind, num_groups, nthreads)
    var = m2 / float(count - ddof)
    return (mean.astype(x.dtype).reshape(out_shape), var.astype(x.dtype).reshape(out_shape))
