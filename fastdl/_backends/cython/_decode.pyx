"""Decoding kernels (Cython backend); op contracts in fastdl.decode.ops.

* ``topk``: per row a heap of size k (root = worst kept item) fed by a SIMD
  threshold prefilter (src/decodek_*.c).  Many rows: threads share out rows.
  Few long rows: each row is cut into ``pp`` contiguous parts of at least
  TOPK_MIN_PART elements, each part gets its own heap (scanned in increasing
  index order), and the part heaps are merged by the total order.  The top-k
  of a row is unique under that order, so the result is the same for any
  thread count and part split.
* ``log_softmax``: the row offset ``max + log(sum(exp(x - max)))`` comes from
  fixed chunks of FDL_DK_CHUNK elements (per chunk: max, then the sum of exp
  while the chunk is in L1), folded in chunk order in float64; then
  ``out = x - (dtype)off``.  Many rows: one thread does a whole row (statistics,
  then the write while the row is in L2).  Few long rows: chunk statistics in
  parallel, fold, then the writes in parallel over the same chunks.
* ``beam_topk``: G independent groups of B rows (a 2-D call is G = 1).  Per
  row the offset as above (normalize), ``add[b]``, then the prefiltered heap
  over ``(dtype)(x + add[b])`` with the group-local flat index ``b*N + j``.
  Many groups (at least 4 per thread, or a multiple of the thread count): a
  thread does whole groups, each group's rows back to back into the group's
  own heap.  Few groups: each group is cut into the fewest parts that share
  out evenly over the threads (one group: a part per thread), contiguous row ranges
  (each row's offset and scan done back to back, the row still in L2) or, for
  few rows, contiguous pieces of the group's flat candidate range after
  parallel chunk statistics; a group's part heaps are merged in part order.
  The top-k of a group is unique under the total order, so the result is the
  same for any thread count and split, and equals the group's 2-D call.
* float16 (``*_f16``): the same drivers over the uint16 bits of the array;
  the C kernels convert L1-sized pieces to float32 as they read and give
  bitwise the float32 results on the converted input.

One driver per op serves float32, float64 and float16 (the fused type
``elem``); the typed shims below pick the table of the input's dtype.  Values
of the compute dtype (float32 for float16) travel in float64 variables and
arrays that hold exactly representable values; heap keys (uint32 for
float32/float16, uint64 for float64) live in byte buffers.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.math cimport isnan, INFINITY, NAN
from cython cimport floating

import numpy as np

from fastdl._backends.cython._cpu cimport simd_level
from fastdl._backends.cython._cpu cimport team

from fastdl._backends.cython._decodek cimport (
    FDL_DK_CHUNK, fdl_dk_f16, fdl_dk_f16_table, fdl_dk_f32, fdl_dk_f32_table, fdl_dk_f64,
    fdl_dk_f64_table, fdl_dk_fold, fdl_dk_fold_end, fdl_dk_fold_step, fdl_h2f)

# top-k: a part of a long row has at least this many elements
cdef int64_t TOPK_MIN_PART = 32768
# beam_topk: a thread's piece of the B*N candidates has at least this many
cdef int64_t BEAM_MIN_PART = 16384
# below this many elements in all, one thread (fork/join costs more)
cdef int64_t SERIAL_WORK = 32768

# the tuning constants, for tests
PARAMS = {"chunk": FDL_DK_CHUNK, "topk_min_part": TOPK_MIN_PART,
          "beam_min_part": BEAM_MIN_PART, "serial_work": SERIAL_WORK}

ctypedef fused elem:
    float
    double
    uint16_t


# ------------------------------------------------------------ typed shims

# The tables of one call (fetched once per call, at the current SIMD level).
cdef struct Kern:
    const fdl_dk_f32 *f32
    const fdl_dk_f64 *f64
    const fdl_dk_f16 *f16


cdef inline Kern _kern() noexcept nogil:
    cdef int level = simd_level()
    cdef Kern K
    K.f32 = fdl_dk_f32_table(level)
    K.f64 = fdl_dk_f64_table(level)
    K.f16 = fdl_dk_f16_table(level)
    return K


cdef inline double _round(const elem *tag, double v) noexcept nogil:
    """v rounded to the compute dtype of elem (float32 for float16)"""
    if elem is double:
        return v
    else:
        return <float>v


cdef inline double _value(const elem *x) noexcept nogil:
    """the element as a compute-dtype value"""
    if elem is uint16_t:
        return fdl_h2f(x[0])
    else:
        return x[0]


cdef inline double _cand(const elem *x, double sub, double add) noexcept nogil:
    """(C)((C)(x - sub) + add) in the compute dtype C (sub, add already in C)"""
    cdef float f
    if elem is double:
        return (x[0] - sub) + add
    else:
        f = <float>_value(x) - <float>sub
        return <float>(f + <float>add)


cdef inline int64_t _scan(Kern K, uint8_t *hk, int64_t *hi, int64_t size, int64_t k,
                          const elem *x, int64_t n, int64_t base) noexcept nogil:
    if elem is float:
        return K.f32.scan(<uint32_t *>hk, hi, size, k, x, n, base)
    elif elem is double:
        return K.f64.scan(<uint64_t *>hk, hi, size, k, x, n, base)
    else:
        return K.f16.scan(<uint32_t *>hk, hi, size, k, x, n, base)


cdef inline int64_t _scan_add(Kern K, uint8_t *hk, int64_t *hi, int64_t size, int64_t k,
                              const elem *x, int64_t n, double sub, double add,
                              int64_t base) noexcept nogil:
    if elem is float:
        return K.f32.scan_add(<uint32_t *>hk, hi, size, k, x, n, <float>sub, <float>add, base)
    elif elem is double:
        return K.f64.scan_add(<uint64_t *>hk, hi, size, k, x, n, sub, add, base)
    else:
        return K.f16.scan_add(<uint32_t *>hk, hi, size, k, x, n, <float>sub, <float>add, base)


cdef inline int64_t _merge(Kern K, const elem *tag, uint8_t *hk, int64_t *hi, int64_t size,
                           int64_t k, const uint8_t *sk, const int64_t *si,
                           int64_t n) noexcept nogil:
    if elem is double:
        return K.f64.merge(<uint64_t *>hk, hi, size, k, <const uint64_t *>sk, si, n)
    else:
        return K.f32.merge(<uint32_t *>hk, hi, size, k, <const uint32_t *>sk, si, n)


cdef inline void _sort(Kern K, const elem *tag, uint8_t *hk, int64_t *hi,
                       int64_t size) noexcept nogil:
    if elem is double:
        K.f64.sort(<uint64_t *>hk, hi, size)
    else:
        K.f32.sort(<uint32_t *>hk, hi, size)


cdef inline void _stats(Kern K, const elem *x, int64_t n, double *m, double *s,
                        int *bad) noexcept nogil:
    if elem is float:
        K.f32.stats(x, n, m, s, bad)
    elif elem is double:
        K.f64.stats(x, n, m, s, bad)
    else:
        K.f16.stats(x, n, m, s, bad)


cdef inline double _row_lse(Kern K, const elem *x, int64_t n, double *pm) noexcept nogil:
    """log(sum(exp(x - max))) of a row in float64 from its chunks, folded in
    order; the max in *pm (see fdl_dk_fold_end for non-finite rows)"""
    cdef double M = -INFINITY, S = 0.0, m, s
    cdef int bad = 0, b
    cdef int64_t i = 0
    while i < n:
        _stats(K, x + i, min(<int64_t>FDL_DK_CHUNK, n - i), &m, &s, &b)
        fdl_dk_fold_step(&M, &S, &bad, m, s, b)
        i += FDL_DK_CHUNK
    return fdl_dk_fold_end(M, S, bad, pm)


cdef inline void _sub(Kern K, const elem *x, elem *y, int64_t n, double m,
                      double l) noexcept nogil:
    """y = (x - m) - l in the compute dtype; a row without a finite max (l NaN)
    becomes NaN"""
    if isnan(l):
        m = NAN
    if elem is float:
        K.f32.sub(x, y, n, <float>m, <float>l)
    elif elem is double:
        K.f64.sub(x, y, n, m, l)
    else:
        K.f16.sub(x, y, n, <float>m, <float>l)


cdef inline int _threads(int nthreads, int64_t work, int64_t units) noexcept nogil:
    # work in elements; 4 bytes each for the grain and load checks (float32's size)
    if work < SERIAL_WORK or units < 2 or nthreads < 2:
        return 1
    return team(nthreads, 4 * work, units)


cdef object _dtype(const elem *tag):
    """numpy dtype of elem's arrays (float16 as its uint16 bits)"""
    if elem is float:
        return np.float32
    elif elem is double:
        return np.float64
    else:
        return np.uint16


cdef object _keys(const elem *tag, int64_t rows, int64_t cap):
    """a heap-key buffer of rows x cap keys, as bytes"""
    return np.empty((rows, cap * (8 if elem is double else 4)), np.uint8)


# ------------------------------------------------------------------ topk

cdef object _topk(const elem[:, ::1] x, int64_t k, int nthreads):
    cdef int64_t R = x.shape[0], n = x.shape[1]
    if R < 1 or n < 1 or k < 1 or k > n:
        raise ValueError(f"topk kernel: need R >= 1, n >= 1, 1 <= k <= n, got {(R, n)}, k={k}")
    cdef const elem *tag = &x[0, 0]
    vals = np.empty((R, k), _dtype(tag))
    idx = np.empty((R, k), np.int64)
    cdef elem[:, ::1] V = vals
    cdef uint8_t[:, ::1] KY = _keys(tag, R, k)
    cdef int64_t[:, ::1] I = idx
    cdef Kern K = _kern()
    cdef int64_t pp = 1, r, u, p, j, lo, hi, size, cap, units
    cdef int nt
    nthreads = _threads(nthreads, R * n, R * max(1, n // TOPK_MIN_PART))
    if R < nthreads:
        pp = min((nthreads + R - 1) // R, n // TOPK_MIN_PART)
        pp = max(pp, 1)
    if pp == 1:
        nt = _threads(nthreads, R * n, R)
        for r in prange(R, nogil=True, num_threads=nt, schedule="static"):
            size = _scan(K, &KY[r, 0], &I[r, 0], 0, k, &x[r, 0], n, 0)
            _sort(K, tag, &KY[r, 0], &I[r, 0], size)
            for j in range(k):
                V[r, j] = x[r, I[r, j]]
        return vals, idx
    units = R * pp
    cap = min(k, (n + pp - 1) // pp)
    hi_arr = np.empty((units, cap), np.int64)
    sizes_arr = np.zeros(units, np.int64)
    cdef uint8_t[:, ::1] HK = _keys(tag, units, cap)
    cdef int64_t[:, ::1] HI = hi_arr
    cdef int64_t[::1] SZ = sizes_arr
    nt = _threads(nthreads, R * n, units)
    for u in prange(units, nogil=True, num_threads=nt, schedule="static"):
        r = u // pp
        p = u % pp
        lo = p * n // pp
        hi = (p + 1) * n // pp
        SZ[u] = _scan(K, &HK[u, 0], &HI[u, 0], 0, k, &x[r, lo], hi - lo, lo)
    nt = _threads(nthreads, units * cap, R)
    for r in prange(R, nogil=True, num_threads=nt, schedule="static"):
        size = 0
        for p in range(pp):
            u = r * pp + p
            size = _merge(K, tag, &KY[r, 0], &I[r, 0], size, k, &HK[u, 0], &HI[u, 0], SZ[u])
        _sort(K, tag, &KY[r, 0], &I[r, 0], size)
        for j in range(k):
            V[r, j] = x[r, I[r, j]]
    return vals, idx


def topk(const floating[:, ::1] x, int64_t k, int nthreads):
    """(values (R, k), indices (R, k) int64) of the k best per row (validated input)."""
    return _topk(x, k, nthreads)


def topk_f16(const uint16_t[:, ::1] x, int64_t k, int nthreads):
    """(values (R, k) float16 bits as uint16, indices (R, k) int64) of the k best per row."""
    return _topk(x, k, nthreads)


# ----------------------------------------------------------- log_softmax

cdef void _chunk_stats(Kern K, const elem *x, int64_t R, int64_t n, double[::1] M,
                       double[::1] S, int[::1] BAD, int64_t nch, int nthreads) noexcept nogil:
    """statistics of every (row, chunk) unit of the C-contiguous (R, n) rows at x, in
    parallel"""
    cdef int64_t u, r, c, lo, ln
    cdef int nt = _threads(nthreads, R * n, R * nch)
    for u in prange(R * nch, num_threads=nt, schedule="static"):
        r = u // nch
        c = u % nch
        lo = c * FDL_DK_CHUNK
        ln = min(<int64_t>FDL_DK_CHUNK, n - lo)
        _stats(K, x + r * n + lo, ln, &M[u], &S[u], &BAD[u])


cdef object _log_softmax(const elem[:, ::1] x, out, int nthreads):
    cdef int64_t R = x.shape[0], n = x.shape[1]
    if R < 1 or n < 1:
        raise ValueError(f"log_softmax kernel: need a non-empty (R, n) array, got {(R, n)}")
    if out is None:
        out = np.empty((R, n), _dtype(&x[0, 0]))
    cdef elem[:, ::1] Y = out
    if Y.shape[0] != R or Y.shape[1] != n:
        raise ValueError(f"out must have shape {(R, n)}, got {out.shape}")
    cdef Kern K = _kern()
    cdef int64_t r, u, c, lo, ln, nch = (n + FDL_DK_CHUNK - 1) // FDL_DK_CHUNK
    cdef int nt
    cdef double lse, mx
    nthreads = _threads(nthreads, R * n, R * nch)
    if R >= 2 * nthreads or nch < 2 or nthreads < 2:
        nt = _threads(nthreads, R * n, R)
        for r in prange(R, nogil=True, num_threads=nt, schedule="static"):
            mx = 0.0            # assigned here: private to the thread (written via &mx)
            lse = _row_lse(K, &x[r, 0], n, &mx)
            _sub(K, &x[r, 0], &Y[r, 0], n, mx, lse)
        return out
    m_arr = np.empty(R * nch, np.float64)
    s_arr = np.empty(R * nch, np.float64)
    b_arr = np.empty(R * nch, np.intc)
    rm_arr = np.empty(R, np.float64)
    rl_arr = np.empty(R, np.float64)
    cdef double[::1] M = m_arr, S = s_arr, RM = rm_arr, RL = rl_arr
    cdef int[::1] BAD = b_arr
    with nogil:
        _chunk_stats(K, &x[0, 0], R, n, M, S, BAD, nch, nthreads)
        for r in range(R):
            RL[r] = fdl_dk_fold(&M[r * nch], &S[r * nch], &BAD[r * nch], nch, &RM[r])
    nt = _threads(nthreads, R * n, R * nch)
    for u in prange(R * nch, nogil=True, num_threads=nt, schedule="static"):
        r = u // nch
        c = u % nch
        lo = c * FDL_DK_CHUNK
        ln = min(<int64_t>FDL_DK_CHUNK, n - lo)
        _sub(K, &x[r, lo], &Y[r, lo], ln, RM[r], RL[r])
    return out


def log_softmax(const floating[:, ::1] x, out, int nthreads):
    """x - logsumexp(x) per row into out (None: a new array); validated input."""
    return _log_softmax(x, out, nthreads)


def log_softmax_f16(const uint16_t[:, ::1] x, out, int nthreads):
    """log_softmax of float16 rows (uint16 bits) into out (uint16, None: a new array)."""
    return _log_softmax(x, out, nthreads)


# ------------------------------------------------------------- beam_topk

cdef inline void _shift(const elem *tag, double score, double lse, double mx, double *sub,
                        double *add) noexcept nogil:
    """candidates of row b are (x - sub[b]) + add[b]: sub = the row max, add =
    (C)(score - lse) in float64 (C the compute dtype); an all -inf row gives
    -inf, a row holding NaN or +inf gives NaN"""
    if isnan(lse):
        sub[0] = 0
        add[0] = -INFINITY if mx == -INFINITY else NAN
    else:
        sub[0] = _round(tag, mx)
        add[0] = _round(tag, score - lse)


cdef inline int64_t _rows_heap(Kern K, const elem *x, const double *s, int64_t b0, int64_t b1,
                               int64_t N, bint normalize, double *SUB, double *ADD,
                               uint8_t *hk, int64_t *hi, int64_t k) noexcept nogil:
    """rows b0..b1 of one group (x, s, SUB, ADD at the group's first row) into one
    heap, each row's offset computed just before its scan (the row still in L2);
    indices b*N + j local to the group; returns the heap size"""
    cdef int64_t b, size = 0
    cdef double mx = 0.0, lse
    for b in range(b0, b1):
        if normalize:
            lse = _row_lse(K, x + b * N, N, &mx)
            _shift(x, s[b], lse, mx, &SUB[b], &ADD[b])
        size = _scan_add(K, hk, hi, size, k, x + b * N, N, SUB[b], ADD[b], b * N)
    return size


cdef inline int64_t _flat_heap(Kern K, const elem *x, int64_t lo, int64_t hi, int64_t N,
                               const double *SUB, const double *ADD, uint8_t *hk,
                               int64_t *hidx, int64_t k) noexcept nogil:
    """candidates lo..hi of one group's flat range (offsets already known) into one heap"""
    cdef int64_t b, j, size = 0
    while lo < hi:
        b = lo // N
        j = min(hi, (b + 1) * N)
        size = _scan_add(K, hk, hidx, size, k, x + lo, j - lo, SUB[b], ADD[b], lo)
        lo = j
    return size


cdef inline void _finish(Kern K, const elem *x, int64_t N, const double *SUB,
                         const double *ADD, uint8_t *hk, int64_t *hi, int64_t size,
                         int64_t k, double *V) noexcept nogil:
    """sort one group's heap best first and read its k scores back"""
    cdef int64_t j, b
    _sort(K, x, hk, hi, size)
    for j in range(k):
        b = hi[j] // N
        V[j] = _cand(x + hi[j], SUB[b], ADD[b])


cdef int _beam_plan(int64_t G, int64_t B, int64_t N, int nthreads, int64_t *pp,
                    bint *rows_mode) noexcept nogil:
    """the team size, the parts *pp each group is cut into and how (*rows_mode: row
    ranges, else pieces of the flat candidate range).  The fewest parts that share out
    evenly: G*pp at least 4 per thread or a multiple of the thread count (many groups:
    whole groups per thread, pp = 1; one group: pp = the thread count), no part under
    BEAM_MIN_PART candidates."""
    cdef int64_t per = max(1, B * N // BEAM_MIN_PART)
    nthreads = _threads(nthreads, G * B * N, G * per)
    pp[0] = 1
    while pp[0] < per and not (G * pp[0] >= 4 * nthreads or (G * pp[0]) % nthreads == 0):
        pp[0] += 1
    rows_mode[0] = B >= 4 * pp[0] or (B >= pp[0] and B % pp[0] == 0)
    return nthreads


cdef object _beam_topk(const elem[:, :, ::1] lp, const double[:, ::1] s, int64_t k,
                       bint normalize, int nthreads):
    cdef int64_t G = lp.shape[0], B = lp.shape[1], N = lp.shape[2], T
    if (G < 1 or B < 1 or N < 1 or s.shape[0] != G or s.shape[1] != B or k < 1
            or k > B * N):
        raise ValueError(f"beam_topk kernel: need log_probs (G, B, N) non-empty, beam_scores "
                         f"(G, B), 1 <= k <= B*N; got {(G, B, N)}, {(s.shape[0], s.shape[1])}, "
                         f"k={k}")
    T = B * N
    cdef const elem *tag = &lp[0, 0, 0]
    scores = np.empty((G, k), np.float64)
    flat = np.empty((G, k), np.int64)
    cdef double[:, ::1] V = scores
    cdef uint8_t[:, ::1] KY = _keys(tag, G, k)
    cdef int64_t[:, ::1] I = flat
    cdef Kern K = _kern()
    # candidates (x - SUB[r]) + ADD[r] of row r = g*B + b in the compute dtype (held
    # exactly in float64); without normalizing SUB = 0 (x - 0 is exact)
    adds_arr = np.empty(G * B, np.float64)
    subs_arr = np.zeros(G * B, np.float64)
    cdef double[::1] ADD = adds_arr, SUB = subs_arr
    cdef int64_t g, r, size, cap, units, pp
    cdef int nt
    cdef bint rows_mode
    nthreads = _beam_plan(G, B, N, nthreads, &pp, &rows_mode)
    if not normalize:
        for r in range(G * B):
            ADD[r] = _round(tag, s[r // B, r % B])
    if pp == 1:
        nt = <int>min(<int64_t>nthreads, G)
        # a group's result is its own whichever thread takes it: dynamic, so a thread
        # the OS holds back does not hold the rest of the call
        for g in prange(G, nogil=True, num_threads=nt, schedule="dynamic"):
            size = _rows_heap(K, &lp[g, 0, 0], &s[g, 0], 0, B, N, normalize, &SUB[g * B],
                              &ADD[g * B], &KY[g, 0], &I[g, 0], k)
            _finish(K, &lp[g, 0, 0], N, &SUB[g * B], &ADD[g * B], &KY[g, 0], &I[g, 0], size,
                    k, &V[g, 0])
    else:
        units = G * pp
        if rows_mode:
            cap = min(k, ((B + pp - 1) // pp) * N)
        else:
            cap = min(k, (T + pp - 1) // pp)
        hi_arr = np.empty((units, cap), np.int64)
        sizes_arr = np.zeros(units, np.int64)
        HK_arr = _keys(tag, units, cap)
        _beam_parts(K, lp, s, k, normalize, nthreads, pp, rows_mode, SUB, ADD, HK_arr,
                    hi_arr, sizes_arr)
        _beam_merge(K, lp, k, pp, nthreads, SUB, ADD, HK_arr, hi_arr, sizes_arr, KY, I, V)
    # the values are exact in the compute dtype
    if elem is not double:
        scores = scores.astype(np.float32)
    return scores, flat // N, flat % N


cdef void _beam_parts(Kern K, const elem[:, :, ::1] lp, const double[:, ::1] s, int64_t k,
                      bint normalize, int nthreads, int64_t pp, bint rows_mode,
                      double[::1] SUB, double[::1] ADD, hk_arr, hi_arr, sizes_arr):
    """the part heaps of every (group, part) unit: contiguous row ranges of a group
    (rows_mode), or contiguous pieces of its flat candidate range after parallel
    chunk statistics"""
    cdef int64_t G = lp.shape[0], B = lp.shape[1], N = lp.shape[2], T = B * N
    cdef int64_t units = G * pp, u, g, p, nch, r
    cdef uint8_t[:, ::1] HK = hk_arr
    cdef int64_t[:, ::1] HI = hi_arr
    cdef int64_t[::1] SZ = sizes_arr
    cdef const elem *tag = &lp[0, 0, 0]
    cdef double[::1] M, S
    cdef int[::1] BAD
    cdef double mx, lse
    if rows_mode:
        for u in prange(units, nogil=True, num_threads=nthreads, schedule="static"):
            g = u // pp
            p = u % pp
            SZ[u] = _rows_heap(K, &lp[g, 0, 0], &s[g, 0], p * B // pp, (p + 1) * B // pp, N,
                               normalize, &SUB[g * B], &ADD[g * B], &HK[u, 0], &HI[u, 0], k)
        return
    if normalize:
        nch = (N + FDL_DK_CHUNK - 1) // FDL_DK_CHUNK
        m_arr = np.empty(G * B * nch, np.float64)
        s_arr = np.empty(G * B * nch, np.float64)
        b_arr = np.empty(G * B * nch, np.intc)
        M = m_arr
        S = s_arr
        BAD = b_arr
        with nogil:
            _chunk_stats(K, tag, G * B, N, M, S, BAD, nch, nthreads)
            for r in range(G * B):
                lse = fdl_dk_fold(&M[r * nch], &S[r * nch], &BAD[r * nch], nch, &mx)
                _shift(tag, s[r // B, r % B], lse, mx, &SUB[r], &ADD[r])
    for u in prange(units, nogil=True, num_threads=nthreads, schedule="static"):
        g = u // pp
        p = u % pp
        SZ[u] = _flat_heap(K, &lp[g, 0, 0], p * T // pp, (p + 1) * T // pp, N, &SUB[g * B],
                           &ADD[g * B], &HK[u, 0], &HI[u, 0], k)


cdef void _beam_merge(Kern K, const elem[:, :, ::1] lp, int64_t k, int64_t pp, int nthreads,
                      double[::1] SUB, double[::1] ADD, hk_arr, hi_arr, sizes_arr,
                      uint8_t[:, ::1] KY, int64_t[:, ::1] I, double[:, ::1] V):
    """each group's part heaps merged in part order, sorted, its scores read back"""
    cdef int64_t G = lp.shape[0], B = lp.shape[1], N = lp.shape[2], g, p, u, size
    cdef uint8_t[:, ::1] HK = hk_arr
    cdef int64_t[:, ::1] HI = hi_arr
    cdef int64_t[::1] SZ = sizes_arr
    cdef const elem *tag = &lp[0, 0, 0]
    cdef int nt = _threads(nthreads, G * pp * HI.shape[1], G)
    for g in prange(G, nogil=True, num_threads=nt, schedule="static"):
        size = 0
        for p in range(pp):
            u = g * pp + p
            size = _merge(K, tag, &KY[g, 0], &I[g, 0], size, k, &HK[u, 0], &HI[u, 0], SZ[u])
        _finish(K, &lp[g, 0, 0], N, &SUB[g * B], &ADD[g * B], &KY[g, 0], &I[g, 0], size, k,
                &V[g, 0])


def _beam_split(int64_t G, int64_t B, int64_t N, int nthreads):
    """(threads, parts per group, "groups" | "rows" | "flat") the kernel would use for
    log_probs (G, B, N) at nthreads (tests)."""
    cdef int64_t pp
    cdef bint rows_mode
    cdef int nt = _beam_plan(G, B, N, nthreads, &pp, &rows_mode)
    return nt, pp, "groups" if pp == 1 else ("rows" if rows_mode else "flat")


def beam_topk(const floating[:, :, ::1] log_probs, const floating[:, ::1] beam_scores,
              int64_t k, bint normalize, int nthreads):
    """(scores (G, k), beam (G, k) int64, token (G, k) int64): per group g the best k of
    log_probs[g, b, j] + add[g, b] (validated input; beam local to the group)."""
    cdef const double[:, ::1] sd = np.ascontiguousarray(beam_scores, np.float64)
    return _beam_topk(log_probs, sd, k, normalize, nthreads)


def beam_topk_f16(const uint16_t[:, :, ::1] log_probs, const float[:, ::1] beam_scores,
                  int64_t k, bint normalize, int nthreads):
    """beam_topk over float16 log_probs (G, B, N) (uint16 bits) and float32 beam_scores
    (G, B), computed in float32: (scores (G, k) float32, beam, token (G, k) int64)."""
    cdef const double[:, ::1] sd = np.ascontiguousarray(beam_scores, np.float64)
    return _beam_topk(log_probs, sd, k, normalize, nthreads)


# ------------------------------------------------------------- diagnostics

def _h2f(const uint16_t[::1] x):
    """float16 bits -> float32 with the kernels' conversion at the current SIMD level (tests)."""
    y = np.empty(x.shape[0], np.float32)
    cdef float[::1] Y = y
    if x.shape[0]:
        _kern().f16.h2f(&x[0], &Y[0], x.shape[0])
    return y


def _f2h(const float[::1] x):
    """float32 -> float16 bits (nearest, ties to even) at the current SIMD level (tests)."""
    y = np.empty(x.shape[0], np.uint16)
    cdef uint16_t[::1] Y = y
    if x.shape[0]:
        _kern().f16.f2h(&x[0], &Y[0], x.shape[0])
    return y


def _exp(const floating[::1] x):
    """The kernels' polynomial exp, elementwise (tests): 0 below -86 (float32) /
    -708 (float64) and for -inf."""
    y = np.empty(x.shape[0], np.float32 if floating is float else np.float64)
    cdef floating[::1] Y = y
    if x.shape[0] == 0:
        return y
    if floating is float:
        _kern().f32.exp(&x[0], &Y[0], x.shape[0])
    else:
        _kern().f64.exp(&x[0], &Y[0], x.shape[0])
    return y


cdef object _offsets(const elem[:, ::1] x):
    cdef int64_t r, R = x.shape[0]
    cdef double mx
    cdef Kern K = _kern()
    out = np.empty(R, np.float64)
    cdef double[::1] O = out
    for r in range(R):
        O[r] = _row_lse(K, &x[r, 0], x.shape[1], &mx)
        O[r] += mx
    return out


def _row_offsets(const floating[:, ::1] x):
    """float64 max + log(sum(exp(x - max))) per row from the kernels' statistics (tests)."""
    return _offsets(x)


def _row_offsets_f16(const uint16_t[:, ::1] x):
    """float64 max + log(sum(exp(x - max))) per float16 row (bits) from the kernels (tests)."""
    return _offsets(x)
