"""Decoding kernels (Cython backend); op contracts in fastdl.decode.ops.

* ``topk``: per row a heap of size k (root = worst kept item) fed by an AVX2
  threshold prefilter (src/decodek.c).  Many rows: threads share out rows.
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
* ``beam_topk``: per row the offset as above (normalize), ``add[b]``, then the
  prefiltered heap over ``(dtype)(x + add[b])`` with flat index ``b*N + j``.
  Threads get contiguous row ranges (each row's offset and scan done back to
  back, the row still in L2) or, for few rows, contiguous pieces of the flat
  candidate range after parallel chunk statistics; part heaps are merged.
* float16 (``*_f16``): the same algorithms over the uint16 bits of the array;
  the C kernels convert L1-sized pieces to float32 as they read (F16C in the
  AVX2 tier) and give bitwise the float32 results on the converted input.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.math cimport isnan, INFINITY, NAN
from cython cimport floating

import numpy as np

from fastdl._backends.cython._cpu cimport simd_level
from fastdl._backends.cython._cpu cimport team

cdef extern from "decodek.h" nogil:
    int FDL_DK_CHUNK
    int64_t fdl_dk_scan_f32(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                            const float *x, int64_t n, int64_t base, int level)
    int64_t fdl_dk_scan_f64(uint64_t *hk, int64_t *hi, int64_t size, int64_t k,
                            const double *x, int64_t n, int64_t base, int level)
    int64_t fdl_dk_scan_add_f32(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                                const float *x, int64_t n, float sub, float add, int64_t base,
                                int level)
    int64_t fdl_dk_scan_add_f64(uint64_t *hk, int64_t *hi, int64_t size, int64_t k,
                                const double *x, int64_t n, double sub, double add,
                                int64_t base, int level)
    int64_t fdl_dk_merge_f32(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                             const uint32_t *sk, const int64_t *si, int64_t n)
    int64_t fdl_dk_merge_f64(uint64_t *hk, int64_t *hi, int64_t size, int64_t k,
                             const uint64_t *sk, const int64_t *si, int64_t n)
    void fdl_dk_sort_f32(uint32_t *hk, int64_t *hi, int64_t size)
    void fdl_dk_sort_f64(uint64_t *hk, int64_t *hi, int64_t size)
    void fdl_dk_stats_f32(const float *x, int64_t n, double *m, double *s, int *bad, int level)
    void fdl_dk_stats_f64(const double *x, int64_t n, double *m, double *s, int *bad,
                          int level)
    double fdl_dk_fold(const double *m, const double *s, const int *bad, int64_t nch,
                       double *pm)
    double fdl_dk_row_lse_f32(const float *x, int64_t n, int level, double *pm)
    double fdl_dk_row_lse_f64(const double *x, int64_t n, int level, double *pm)
    void fdl_dk_sub_f32(const float *x, float *y, int64_t n, float m, float l, int level)
    void fdl_dk_sub_f64(const double *x, double *y, int64_t n, double m, double l, int level)
    void fdl_dk_exp_f32(const float *x, float *y, int64_t n, int level)
    void fdl_dk_exp_f64(const double *x, double *y, int64_t n, int level)
    int64_t fdl_dk_scan_f16(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                            const uint16_t *x, int64_t n, int64_t base, int level)
    int64_t fdl_dk_scan_add_f16(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                                const uint16_t *x, int64_t n, float sub, float add, int64_t base,
                                int level)
    void fdl_dk_stats_f16(const uint16_t *x, int64_t n, double *m, double *s, int *bad,
                          int level)
    double fdl_dk_row_lse_f16(const uint16_t *x, int64_t n, int level, double *pm)
    void fdl_dk_sub_f16(const uint16_t *x, uint16_t *y, int64_t n, float m, float l, int level)
    void fdl_dk_h2f(const uint16_t *x, float *y, int64_t n, int level)
    void fdl_dk_f2h(const float *x, uint16_t *y, int64_t n, int level)

cdef extern from "f16.h" nogil:
    float fdl_h2f(uint16_t h)

# top-k: a part of a long row has at least this many elements
cdef int64_t TOPK_MIN_PART = 32768
# beam_topk: a thread's piece of the B*N candidates has at least this many
cdef int64_t BEAM_MIN_PART = 16384
# below this many elements in all, one thread (fork/join costs more)
cdef int64_t SERIAL_WORK = 32768

# the tuning constants, for tests
PARAMS = {"chunk": FDL_DK_CHUNK, "topk_min_part": TOPK_MIN_PART,
          "beam_min_part": BEAM_MIN_PART, "serial_work": SERIAL_WORK}


# ------------------------------------------------------------ typed shims

# Heaps live in buffers of the dtype (keys have the same width) and hold keys
# until the values are read back by index.

cdef inline int64_t _scan(floating *hk, int64_t *hi, int64_t size, int64_t k,
                          const floating *x, int64_t n, int64_t base, int level) noexcept nogil:
    if floating is float:
        return fdl_dk_scan_f32(<uint32_t *>hk, hi, size, k, x, n, base, level)
    else:
        return fdl_dk_scan_f64(<uint64_t *>hk, hi, size, k, x, n, base, level)


cdef inline int64_t _scan_add(floating *hk, int64_t *hi, int64_t size, int64_t k,
                              const floating *x, int64_t n, floating sub, floating add,
                              int64_t base, int level) noexcept nogil:
    if floating is float:
        return fdl_dk_scan_add_f32(<uint32_t *>hk, hi, size, k, x, n, sub, add, base, level)
    else:
        return fdl_dk_scan_add_f64(<uint64_t *>hk, hi, size, k, x, n, sub, add, base, level)


cdef inline int64_t _merge(floating *hk, int64_t *hi, int64_t size, int64_t k,
                           const floating *sk, const int64_t *si, int64_t n) noexcept nogil:
    if floating is float:
        return fdl_dk_merge_f32(<uint32_t *>hk, hi, size, k, <const uint32_t *>sk, si, n)
    else:
        return fdl_dk_merge_f64(<uint64_t *>hk, hi, size, k, <const uint64_t *>sk, si, n)


cdef inline void _sort(floating *hk, int64_t *hi, int64_t size) noexcept nogil:
    if floating is float:
        fdl_dk_sort_f32(<uint32_t *>hk, hi, size)
    else:
        fdl_dk_sort_f64(<uint64_t *>hk, hi, size)


cdef inline void _stats(const floating *x, int64_t n, double *m, double *s, int *bad,
                        int level) noexcept nogil:
    if floating is float:
        fdl_dk_stats_f32(x, n, m, s, bad, level)
    else:
        fdl_dk_stats_f64(x, n, m, s, bad, level)


cdef inline double _row_lse(const floating *x, int64_t n, int level, double *m) noexcept nogil:
    if floating is float:
        return fdl_dk_row_lse_f32(x, n, level, m)
    else:
        return fdl_dk_row_lse_f64(x, n, level, m)


cdef inline void _sub(const floating *x, floating *y, int64_t n, double m, double l,
                      int level) noexcept nogil:
    """y = (x - m) - l in the dtype; a row without a finite max (l NaN) becomes NaN"""
    if isnan(l):
        m = NAN
    if floating is float:
        fdl_dk_sub_f32(x, y, n, <float>m, <float>l, level)
    else:
        fdl_dk_sub_f64(x, y, n, m, l, level)


cdef inline int _threads(int nthreads, int64_t work, int64_t units) noexcept nogil:
    # work in elements; 4 bytes each for the grain and load checks (float32's size)
    if work < SERIAL_WORK or units < 2 or nthreads < 2:
        return 1
    return team(nthreads, 4 * work, units)


# ------------------------------------------------------------------ topk

def topk(const floating[:, ::1] x, int64_t k, int nthreads):
    """(values (R, k), indices (R, k) int64) of the k best per row (validated input)."""
    cdef int64_t R = x.shape[0], n = x.shape[1]
    if R < 1 or n < 1 or k < 1 or k > n:
        raise ValueError(f"topk kernel: need R >= 1, n >= 1, 1 <= k <= n, got {(R, n)}, k={k}")
    dtype = np.float32 if floating is float else np.float64
    vals = np.empty((R, k), dtype)
    idx = np.empty((R, k), np.int64)
    cdef floating[:, ::1] V = vals
    cdef int64_t[:, ::1] I = idx
    cdef int level = simd_level()
    cdef int64_t pp = 1, r, u, p, j, lo, hi, size, cap, units
    cdef int nt
    nthreads = _threads(nthreads, R * n, R * max(1, n // TOPK_MIN_PART))
    if R < nthreads:
        pp = min((nthreads + R - 1) // R, n // TOPK_MIN_PART)
        pp = max(pp, 1)
    if pp == 1:
        nt = _threads(nthreads, R * n, R)
        for r in prange(R, nogil=True, num_threads=nt, schedule="static"):
            size = _scan(&V[r, 0], &I[r, 0], 0, k, &x[r, 0], n, 0, level)
            _sort(&V[r, 0], &I[r, 0], size)
            for j in range(k):
                V[r, j] = x[r, I[r, j]]
        return vals, idx
    units = R * pp
    cap = min(k, (n + pp - 1) // pp)
    hv_arr = np.empty((units, cap), dtype)
    hi_arr = np.empty((units, cap), np.int64)
    sizes_arr = np.zeros(units, np.int64)
    cdef floating[:, ::1] HV = hv_arr
    cdef int64_t[:, ::1] HI = hi_arr
    cdef int64_t[::1] SZ = sizes_arr
    nt = _threads(nthreads, R * n, units)
    for u in prange(units, nogil=True, num_threads=nt, schedule="static"):
        r = u // pp
        p = u % pp
        lo = p * n // pp
        hi = (p + 1) * n // pp
        SZ[u] = _scan(&HV[u, 0], &HI[u, 0], 0, k, &x[r, lo], hi - lo, lo, level)
    nt = _threads(nthreads, units * cap, R)
    for r in prange(R, nogil=True, num_threads=nt, schedule="static"):
        size = 0
        for p in range(pp):
            u = r * pp + p
            size = _merge(&V[r, 0], &I[r, 0], size, k, &HV[u, 0], &HI[u, 0], SZ[u])
        _sort(&V[r, 0], &I[r, 0], size)
        for j in range(k):
            V[r, j] = x[r, I[r, j]]
    return vals, idx


# ----------------------------------------------------------- log_softmax

cdef void _chunk_stats(const floating[:, ::1] x, double[::1] M, double[::1] S, int[::1] BAD,
                       int64_t nch, int nthreads, int level) noexcept nogil:
    """statistics of every (row, chunk) unit, in parallel"""
    cdef int64_t R = x.shape[0], n = x.shape[1], u, r, c, lo, ln
    cdef int nt = _threads(nthreads, R * n, R * nch)
    for u in prange(R * nch, num_threads=nt, schedule="static"):
        r = u // nch
        c = u % nch
        lo = c * FDL_DK_CHUNK
        ln = min(<int64_t>FDL_DK_CHUNK, n - lo)
        _stats(&x[r, lo], ln, &M[u], &S[u], &BAD[u], level)


def log_softmax(const floating[:, ::1] x, out, int nthreads):
    """x - logsumexp(x) per row into out (None: a new array); validated input."""
    cdef int64_t R = x.shape[0], n = x.shape[1]
    if R < 1 or n < 1:
        raise ValueError(f"log_softmax kernel: need a non-empty (R, n) array, got {(R, n)}")
    dtype = np.float32 if floating is float else np.float64
    if out is None:
        out = np.empty((R, n), dtype)
    cdef floating[:, ::1] Y = out
    if Y.shape[0] != R or Y.shape[1] != n:
        raise ValueError(f"out must have shape {(R, n)}, got {out.shape}")
    cdef int level = simd_level()
    cdef int64_t r, u, c, lo, ln, nch = (n + FDL_DK_CHUNK - 1) // FDL_DK_CHUNK
    cdef int nt
    cdef double lse, mx
    nthreads = _threads(nthreads, R * n, R * nch)
    if R >= 2 * nthreads or nch < 2 or nthreads < 2:
        nt = _threads(nthreads, R * n, R)
        for r in prange(R, nogil=True, num_threads=nt, schedule="static"):
            mx = 0.0            # assigned here: private to the thread (written via &mx)
            lse = _row_lse(&x[r, 0], n, level, &mx)
            _sub(&x[r, 0], &Y[r, 0], n, mx, lse, level)
        return out
    m_arr = np.empty(R * nch, np.float64)
    s_arr = np.empty(R * nch, np.float64)
    b_arr = np.empty(R * nch, np.intc)
    rm_arr = np.empty(R, np.float64)
    rl_arr = np.empty(R, np.float64)
    cdef double[::1] M = m_arr, S = s_arr, RM = rm_arr, RL = rl_arr
    cdef int[::1] BAD = b_arr
    with nogil:
        _chunk_stats(x, M, S, BAD, nch, nthreads, level)
        for r in range(R):
            RL[r] = fdl_dk_fold(&M[r * nch], &S[r * nch], &BAD[r * nch], nch, &RM[r])
    nt = _threads(nthreads, R * n, R * nch)
    for u in prange(R * nch, nogil=True, num_threads=nt, schedule="static"):
        r = u // nch
        c = u % nch
        lo = c * FDL_DK_CHUNK
        ln = min(<int64_t>FDL_DK_CHUNK, n - lo)
        _sub(&x[r, lo], &Y[r, lo], ln, RM[r], RL[r], level)
    return out


# ------------------------------------------------------------- beam_topk

cdef inline void _shift(double score, double lse, double mx, floating *sub,
                        floating *add) noexcept nogil:
    """candidates of row b are (x - sub[b]) + add[b]: sub = the row max, add =
    (dtype)(score - lse) in float64; an all -inf row gives -inf, a row holding
    NaN or +inf gives NaN"""
    if isnan(lse):
        sub[0] = 0
        add[0] = -INFINITY if mx == -INFINITY else NAN
    else:
        sub[0] = <floating>mx
        add[0] = <floating>(score - lse)


def beam_topk(const floating[:, ::1] lp, const floating[::1] s, int64_t k, bint normalize,
              int nthreads):
    """(scores (k,), beam (k,) int64, token (k,) int64): best k of log_probs[b, j] + add[b]."""
    cdef int64_t B = lp.shape[0], N = lp.shape[1], T
    if B < 1 or N < 1 or s.shape[0] != B or k < 1 or k > B * N:
        raise ValueError(f"beam_topk kernel: need log_probs (B, N) non-empty, beam_scores "
                         f"(B,), 1 <= k <= B*N; got {(B, N)}, {(s.shape[0],)}, k={k}")
    T = B * N
    dtype = np.float32 if floating is float else np.float64
    scores = np.empty(k, dtype)
    flat = np.empty(k, np.int64)
    cdef floating[::1] V = scores
    cdef int64_t[::1] I = flat
    cdef int level = simd_level()
    cdef int64_t nparts = _threads(nthreads, T, T // BEAM_MIN_PART)
    cdef bint rows_mode = nparts == 1 or B >= 4 * nparts or (B >= nparts and B % nparts == 0)
    cdef int64_t p, b, b0, b1, lo, hi, size, cap, j, u, nch, c
    cdef int nt = <int>nparts
    if rows_mode:
        cap = min(k, ((B + nparts - 1) // nparts) * N)
    else:
        cap = min(k, (T + nparts - 1) // nparts)
    if nparts == 1:
        hv_arr, hi_arr = scores.reshape(1, k), flat.reshape(1, k)
    else:
        hv_arr, hi_arr = np.empty((nparts, cap), dtype), np.empty((nparts, cap), np.int64)
    sizes_arr = np.zeros(nparts, np.int64)
    # candidates (x - SUB[b]) + ADD[b]; without normalizing SUB = 0 (x - 0 is exact)
    adds_arr = np.empty(B, dtype)
    subs_arr = np.zeros(B, dtype)
    cdef floating[:, ::1] HV = hv_arr
    cdef int64_t[:, ::1] HI = hi_arr
    cdef int64_t[::1] SZ = sizes_arr
    cdef floating[::1] ADD = adds_arr, SUB = subs_arr
    cdef double[::1] M, S
    cdef int[::1] BAD
    cdef double lse, mx
    if not normalize:
        for b in range(B):
            ADD[b] = s[b]
    if rows_mode:
        for p in prange(nparts, nogil=True, num_threads=nt, schedule="static"):
            b0 = p * B // nparts
            b1 = (p + 1) * B // nparts
            size = 0
            mx = 0.0                # assigned here: private to the thread (written via &mx)
            for b in range(b0, b1):
                if normalize:
                    lse = _row_lse(&lp[b, 0], N, level, &mx)
                    _shift(s[b], lse, mx, &SUB[b], &ADD[b])
                size = _scan_add(&HV[p, 0], &HI[p, 0], size, k, &lp[b, 0], N, SUB[b], ADD[b],
                                 b * N, level)
            SZ[p] = size
    else:
        if normalize:
            nch = (N + FDL_DK_CHUNK - 1) // FDL_DK_CHUNK
            m_arr = np.empty(B * nch, np.float64)
            s_arr = np.empty(B * nch, np.float64)
            b_arr = np.empty(B * nch, np.intc)
            M = m_arr
            S = s_arr
            BAD = b_arr
            with nogil:
                _chunk_stats(lp, M, S, BAD, nch, nthreads, level)
                for b in range(B):
                    lse = fdl_dk_fold(&M[b * nch], &S[b * nch], &BAD[b * nch], nch, &mx)
                    _shift(s[b], lse, mx, &SUB[b], &ADD[b])
        for p in prange(nparts, nogil=True, num_threads=nt, schedule="static"):
            lo = p * T // nparts
            hi = (p + 1) * T // nparts
            size = 0
            while lo < hi:
                b = lo // N
                j = min(hi, (b + 1) * N)
                size = _scan_add(&HV[p, 0], &HI[p, 0], size, k, &lp[b, lo - b * N], j - lo,
                                 SUB[b], ADD[b], lo, level)
                lo = j
            SZ[p] = size
    if nparts == 1:
        size = SZ[0]
    else:
        with nogil:
            size = 0
            for p in range(nparts):
                size = _merge(&V[0], &I[0], size, k, &HV[p, 0], &HI[p, 0], SZ[p])
    with nogil:
        _sort(&V[0], &I[0], size)
        for j in range(k):
            b = I[j] // N
            V[j] = <floating>(lp[b, I[j] - b * N] - SUB[b]) + ADD[b]
    return scores, flat // N, flat % N


# --------------------------------------------------------------- float16
#
# float16 arrays arrive as uint16 views of their bits (no copy) and are
# computed in float32: the C kernels convert pieces that stay in L1 (F16C in
# the AVX2 tier) and run the float32 kernels on them, so every result equals
# the float32 op on the converted input, bitwise.  Heaps hold float32 keys.

def topk_f16(const uint16_t[:, ::1] x, int64_t k, int nthreads):
    """(values (R, k) float16 bits as uint16, indices (R, k) int64) of the k best per row."""
    cdef int64_t R = x.shape[0], n = x.shape[1]
    if R < 1 or n < 1 or k < 1 or k > n:
        raise ValueError(f"topk kernel: need R >= 1, n >= 1, 1 <= k <= n, got {(R, n)}, k={k}")
    vals = np.empty((R, k), np.uint16)
    idx = np.empty((R, k), np.int64)
    keys = np.empty((R, k), np.uint32)
    cdef uint16_t[:, ::1] V = vals
    cdef uint32_t[:, ::1] K = keys
    cdef int64_t[:, ::1] I = idx
    cdef int level = simd_level()
    cdef int64_t pp = 1, r, u, p, j, lo, hi, size, cap, units
    cdef int nt
    nthreads = _threads(nthreads, R * n, R * max(1, n // TOPK_MIN_PART))
    if R < nthreads:
        pp = min((nthreads + R - 1) // R, n // TOPK_MIN_PART)
        pp = max(pp, 1)
    if pp == 1:
        nt = _threads(nthreads, R * n, R)
        for r in prange(R, nogil=True, num_threads=nt, schedule="static"):
            size = fdl_dk_scan_f16(&K[r, 0], &I[r, 0], 0, k, &x[r, 0], n, 0, level)
            fdl_dk_sort_f32(&K[r, 0], &I[r, 0], size)
            for j in range(k):
                V[r, j] = x[r, I[r, j]]
        return vals, idx
    units = R * pp
    cap = min(k, (n + pp - 1) // pp)
    hk_arr = np.empty((units, cap), np.uint32)
    hi_arr = np.empty((units, cap), np.int64)
    sizes_arr = np.zeros(units, np.int64)
    cdef uint32_t[:, ::1] HK = hk_arr
    cdef int64_t[:, ::1] HI = hi_arr
    cdef int64_t[::1] SZ = sizes_arr
    nt = _threads(nthreads, R * n, units)
    for u in prange(units, nogil=True, num_threads=nt, schedule="static"):
        r = u // pp
        p = u % pp
        lo = p * n // pp
        hi = (p + 1) * n // pp
        SZ[u] = fdl_dk_scan_f16(&HK[u, 0], &HI[u, 0], 0, k, &x[r, lo], hi - lo, lo, level)
    nt = _threads(nthreads, units * cap, R)
    for r in prange(R, nogil=True, num_threads=nt, schedule="static"):
        size = 0
        for p in range(pp):
            u = r * pp + p
            size = fdl_dk_merge_f32(&K[r, 0], &I[r, 0], size, k, &HK[u, 0], &HI[u, 0], SZ[u])
        fdl_dk_sort_f32(&K[r, 0], &I[r, 0], size)
        for j in range(k):
            V[r, j] = x[r, I[r, j]]
    return vals, idx


cdef void _chunk_stats_f16(const uint16_t[:, ::1] x, double[::1] M, double[::1] S,
                           int[::1] BAD, int64_t nch, int nthreads, int level) noexcept nogil:
    """statistics of every (row, chunk) unit, in parallel"""
    cdef int64_t R = x.shape[0], n = x.shape[1], u, r, c, lo, ln
    cdef int nt = _threads(nthreads, R * n, R * nch)
    for u in prange(R * nch, num_threads=nt, schedule="static"):
        r = u // nch
        c = u % nch
        lo = c * FDL_DK_CHUNK
        ln = min(<int64_t>FDL_DK_CHUNK, n - lo)
        fdl_dk_stats_f16(&x[r, lo], ln, &M[u], &S[u], &BAD[u], level)


cdef inline void _sub_f16(const uint16_t *x, uint16_t *y, int64_t n, double m, double l,
                          int level) noexcept nogil:
    """y = float16((x - m) - l) computed in float32; a row without a finite max becomes NaN"""
    if isnan(l):
        m = NAN
    fdl_dk_sub_f16(x, y, n, <float>m, <float>l, level)


def log_softmax_f16(const uint16_t[:, ::1] x, out, int nthreads):
    """log_softmax of float16 rows (uint16 bits) into out (uint16, None: a new array)."""
    cdef int64_t R = x.shape[0], n = x.shape[1]
    if R < 1 or n < 1:
        raise ValueError(f"log_softmax kernel: need a non-empty (R, n) array, got {(R, n)}")
    if out is None:
        out = np.empty((R, n), np.uint16)
    cdef uint16_t[:, ::1] Y = out
    if Y.shape[0] != R or Y.shape[1] != n:
        raise ValueError(f"out must have shape {(R, n)}, got {out.shape}")
    cdef int level = simd_level()
    cdef int64_t r, u, c, lo, ln, nch = (n + FDL_DK_CHUNK - 1) // FDL_DK_CHUNK
    cdef int nt
    cdef double lse, mx
    nthreads = _threads(nthreads, R * n, R * nch)
    if R >= 2 * nthreads or nch < 2 or nthreads < 2:
        nt = _threads(nthreads, R * n, R)
        for r in prange(R, nogil=True, num_threads=nt, schedule="static"):
            mx = 0.0            # assigned here: private to the thread (written via &mx)
            lse = fdl_dk_row_lse_f16(&x[r, 0], n, level, &mx)
            _sub_f16(&x[r, 0], &Y[r, 0], n, mx, lse, level)
        return out
    m_arr = np.empty(R * nch, np.float64)
    s_arr = np.empty(R * nch, np.float64)
    b_arr = np.empty(R * nch, np.intc)
    rm_arr = np.empty(R, np.float64)
    rl_arr = np.empty(R, np.float64)
    cdef double[::1] M = m_arr, S = s_arr, RM = rm_arr, RL = rl_arr
    cdef int[::1] BAD = b_arr
    with nogil:
        _chunk_stats_f16(x, M, S, BAD, nch, nthreads, level)
        for r in range(R):
            RL[r] = fdl_dk_fold(&M[r * nch], &S[r * nch], &BAD[r * nch], nch, &RM[r])
    nt = _threads(nthreads, R * n, R * nch)
    for u in prange(R * nch, nogil=True, num_threads=nt, schedule="static"):
        r = u // nch
        c = u % nch
        lo = c * FDL_DK_CHUNK
        ln = min(<int64_t>FDL_DK_CHUNK, n - lo)
        _sub_f16(&x[r, lo], &Y[r, lo], ln, RM[r], RL[r], level)
    return out


def beam_topk_f16(const uint16_t[:, ::1] lp, const float[::1] s, int64_t k, bint normalize,
                  int nthreads):
    """beam_topk over float16 log_probs (uint16 bits) and float32 beam_scores, computed
    in float32: (scores (k,) float32, beam (k,) int64, token (k,) int64)."""
    cdef int64_t B = lp.shape[0], N = lp.shape[1], T
    if B < 1 or N < 1 or s.shape[0] != B or k < 1 or k > B * N:
        raise ValueError(f"beam_topk kernel: need log_probs (B, N) non-empty, beam_scores "
                         f"(B,), 1 <= k <= B*N; got {(B, N)}, {(s.shape[0],)}, k={k}")
    T = B * N
    scores = np.empty(k, np.float32)
    flat = np.empty(k, np.int64)
    keys = np.empty(k, np.uint32)
    cdef float[::1] V = scores
    cdef uint32_t[::1] K = keys
    cdef int64_t[::1] I = flat
    cdef int level = simd_level()
    cdef int64_t nparts = _threads(nthreads, T, T // BEAM_MIN_PART)
    cdef bint rows_mode = nparts == 1 or B >= 4 * nparts or (B >= nparts and B % nparts == 0)
    cdef int64_t p, b, b0, b1, lo, hi, size, cap, j, u, nch, c
    cdef int nt = <int>nparts
    if rows_mode:
        cap = min(k, ((B + nparts - 1) // nparts) * N)
    else:
        cap = min(k, (T + nparts - 1) // nparts)
    if nparts == 1:
        hk_arr, hi_arr = keys.reshape(1, k), flat.reshape(1, k)
    else:
        hk_arr, hi_arr = np.empty((nparts, cap), np.uint32), np.empty((nparts, cap), np.int64)
    sizes_arr = np.zeros(nparts, np.int64)
    adds_arr = np.empty(B, np.float32)
    subs_arr = np.zeros(B, np.float32)
    cdef uint32_t[:, ::1] HK = hk_arr
    cdef int64_t[:, ::1] HI = hi_arr
    cdef int64_t[::1] SZ = sizes_arr
    cdef float[::1] ADD = adds_arr, SUB = subs_arr
    cdef double[::1] M, S
    cdef int[::1] BAD
    cdef double lse, mx
    if not normalize:
        for b in range(B):
            ADD[b] = s[b]
    if rows_mode:
        for p in prange(nparts, nogil=True, num_threads=nt, schedule="static"):
            b0 = p * B // nparts
            b1 = (p + 1) * B // nparts
            size = 0
            mx = 0.0                # assigned here: private to the thread (written via &mx)
            for b in range(b0, b1):
                if normalize:
                    lse = fdl_dk_row_lse_f16(&lp[b, 0], N, level, &mx)
                    _shift(s[b], lse, mx, &SUB[b], &ADD[b])
                size = fdl_dk_scan_add_f16(&HK[p, 0], &HI[p, 0], size, k, &lp[b, 0], N, SUB[b],
                                           ADD[b], b * N, level)
            SZ[p] = size
    else:
        if normalize:
            nch = (N + FDL_DK_CHUNK - 1) // FDL_DK_CHUNK
            m_arr = np.empty(B * nch, np.float64)
            s_arr = np.empty(B * nch, np.float64)
            b_arr = np.empty(B * nch, np.intc)
            M = m_arr
            S = s_arr
            BAD = b_arr
            with nogil:
                _chunk_stats_f16(lp, M, S, BAD, nch, nthreads, level)
                for b in range(B):
                    lse = fdl_dk_fold(&M[b * nch], &S[b * nch], &BAD[b * nch], nch, &mx)
                    _shift(s[b], lse, mx, &SUB[b], &ADD[b])
        for p in prange(nparts, nogil=True, num_threads=nt, schedule="static"):
            lo = p * T // nparts
            hi = (p + 1) * T // nparts
            size = 0
            while lo < hi:
                b = lo // N
                j = min(hi, (b + 1) * N)
                size = fdl_dk_scan_add_f16(&HK[p, 0], &HI[p, 0], size, k, &lp[b, lo - b * N],
                                           j - lo, SUB[b], ADD[b], lo, level)
                lo = j
            SZ[p] = size
    if nparts == 1:
        size = SZ[0]
    else:
        with nogil:
            size = 0
            for p in range(nparts):
                size = fdl_dk_merge_f32(&K[0], &I[0], size, k, &HK[p, 0], &HI[p, 0], SZ[p])
    with nogil:
        fdl_dk_sort_f32(&K[0], &I[0], size)
        for j in range(k):
            b = I[j] // N
            V[j] = <float>(fdl_h2f(lp[b, I[j] - b * N]) - SUB[b]) + ADD[b]
    return scores, flat // N, flat % N


# ------------------------------------------------------------- diagnostics

def _h2f(const uint16_t[::1] x):
    """float16 bits -> float32 with the kernels' conversion at the current SIMD level (tests)."""
    y = np.empty(x.shape[0], np.float32)
    cdef float[::1] Y = y
    if x.shape[0]:
        fdl_dk_h2f(&x[0], &Y[0], x.shape[0], simd_level())
    return y


def _f2h(const float[::1] x):
    """float32 -> float16 bits (nearest, ties to even) at the current SIMD level (tests)."""
    y = np.empty(x.shape[0], np.uint16)
    cdef uint16_t[::1] Y = y
    if x.shape[0]:
        fdl_dk_f2h(&x[0], &Y[0], x.shape[0], simd_level())
    return y


def _row_offsets_f16(const uint16_t[:, ::1] x):
    """float64 max + log(sum(exp(x - max))) per float16 row (bits) from the kernels (tests)."""
    cdef int64_t r, R = x.shape[0]
    cdef double mx
    out = np.empty(R, np.float64)
    cdef double[::1] O = out
    for r in range(R):
        O[r] = fdl_dk_row_lse_f16(&x[r, 0], x.shape[1], simd_level(), &mx)
        O[r] += mx
    return out


def _exp(const floating[::1] x):
    """The kernels' polynomial exp, elementwise (tests): 0 below -86 (float32) /
    -708 (float64) and for -inf."""
    dtype = np.float32 if floating is float else np.float64
    y = np.empty(x.shape[0], dtype)
    cdef floating[::1] Y = y
    if x.shape[0] == 0:
        return y
    if floating is float:
        fdl_dk_exp_f32(&x[0], &Y[0], x.shape[0], simd_level())
    else:
        fdl_dk_exp_f64(&x[0], &Y[0], x.shape[0], simd_level())
    return y


def _row_offsets(const floating[:, ::1] x):
    """float64 max + log(sum(exp(x - max))) per row from the kernels' statistics (tests)."""
    cdef int64_t r, R = x.shape[0]
    cdef double mx
    out = np.empty(R, np.float64)
    cdef double[::1] O = out
    for r in range(R):
        O[r] = _row_lse(&x[r, 0], x.shape[1], simd_level(), &mx)
        O[r] += mx
    return out
