"""Bidirectional tanh RNN kernels (Cython backend); op contracts in fastdl.ops.rnn.

The whole time loop of each direction runs without the GIL, as BLAS calls
(scipy.linalg.cython_blas) plus the elementwise C kernels of src/rnnk.h:

* forward, per direction: X W^T for every step as one GEMM into the hidden
  states, then per step one GEMM that adds state U^T onto the step's rows
  (beta = 1) and one fused bias-and-tanh pass; then y = H_f V_f^T + H_b V_b^T
  (+ c) as GEMMs over all steps.
* backward, per direction: dH = dy V as one GEMM; per step only the recursion
  (delta_t = dH_t (1 - h_t^2) in place, then delta_t U as one GEMM added onto
  the next step's rows, or into dh0 where a sequence starts); then dW = delta^T X,
  dU = delta^T prev, dV = dy^T H and dx = delta_f W_f + delta_b W_b as one GEMM
  each over all steps; db, dc are column sums in a fixed order (in double).

Padded batches (``lengths``) work in packed order, as torch's packed
sequences: the sequences are sorted by length, descending (stable), so the n_t
sequences still running at step t are a prefix; x (and dy, h) are gathered
into the sum(lengths) real rows, every GEMM runs over those rows only, and the
results are scattered back (zeros at the padding).  The backward direction
starts rows [n_{t+1}, n_t) of step t from h0_b.  Without lengths (or when every
length is T) nothing is gathered.

Threads: the two directions run in parallel (then y, and dx, in two fixed row
blocks), each on one thread with a single-threaded BLAS (OpenBLAS's
thread-local thread count is set to 1 in each worker and restored; with only a
process-wide setter it is 1 around the region).  Every BLAS call is then the
same single-threaded call whatever the thread count, so results are bitwise
the same for any thread count and SIMD level.  A BLAS whose thread count
cannot be set runs the directions one after the other, each call on its own
threads (agreement to rounding then).

``last_macs()``: the multiply-adds of the GEMM calls of the calling thread's
last call of each op (the tests compare them with fastdl.complexity).
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uintptr_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy

import ctypes
import threading

import numpy as np

from fastdl._backends.cython._cpu cimport simd_level, team
from fastdl._backends.cython import _cpu
from fastdl._backends.cython._rnn_args import WEIGHTS, check, plan_of, shape_of
from fastdl._backends.cython._rnnk cimport (
    Kern, fdl_rnnk_f32_table, fdl_rnnk_f64_table, k_add_rows, k_bias_tanh, k_colsum, k_dtanh,
    mm_nn, mm_nt, mm_tn, real)

ctypedef int (*blas_set_fn)(int) noexcept nogil

_local = threading.local()


# ---------------------------------------------------------------- BLAS threads

_BLAS = None      # (thread-local setter address or 0, process-wide setter usable)


def _blas_mode():
    global _BLAS
    if _BLAS is None:
        if _cpu._blas_set is None:
            _cpu._bind_blas()
        f = _cpu._blas_set
        if f is False:
            _BLAS = (0, False)
        elif _cpu._blas_get is None:                 # OpenBLAS's thread-local setter
            _BLAS = (ctypes.cast(f, ctypes.c_void_p).value, False)
        else:
            _BLAS = (0, True)
    return _BLAS


cdef struct Region:
    blas_set_fn local      # NULL: nothing to set per worker
    int nt                 # threads of the direction / row-block regions
    int old_global         # 0, or the process-wide count to restore


cdef _enter(Region *g, int nthreads, int64_t work_bytes):
    addr, glob = _blas_mode()
    g.local = <blas_set_fn><uintptr_t>addr
    g.old_global = 0
    if addr or glob:
        # the steps are latency-bound: the second direction pays from about the grain on
        g.nt = team(nthreads, work_bytes, 2)
        if glob:
            g.old_global = _cpu.blas_threads(1)
    else:
        g.nt = 1            # no way to keep BLAS off nested threads: one direction at a time


cdef _leave(Region *g):
    if g.old_global:
        _cpu.blas_threads(g.old_global)


cdef inline int _blas1(const Region *g) noexcept nogil:
    return g.local(1) if g.local != NULL else 0


cdef inline void _blas_back(const Region *g, int old) noexcept nogil:
    if g.local != NULL:
        g.local(old)


# ---------------------------------------------------------------- packing

cdef struct Plan:
    int64_t T, B, N, DI, H, O
    const int64_t *n       # n[t]: sequences running at step t (n[T] = 0)
    const int64_t *off     # off[t]: first packed row of step t
    const int64_t *seq     # packed row r of any step is batch entry seq[r]
    int packed             # 0: packed order is (t, b) order, no gather/scatter


cdef void _gather(const Plan *p, const real *src, real *dst, int64_t w) noexcept nogil:
    """dst[off[t] + r] = src[t, seq[r]] (rows of w)."""
    cdef int64_t t, r
    for t in range(p.T):
        for r in range(p.n[t]):
            memcpy(dst + (p.off[t] + r) * w, src + (t * p.B + p.seq[r]) * w, w * sizeof(real))


cdef void _scatter(const Plan *p, const real *src, real *dst, int64_t w) noexcept nogil:
    """dst[t, seq[r]] = src[off[t] + r]; the padding of dst stays as it is (zeros)."""
    cdef int64_t t, r
    for t in range(p.T):
        for r in range(p.n[t]):
            memcpy(dst + (t * p.B + p.seq[r]) * w, src + (p.off[t] + r) * w, w * sizeof(real))


cdef void _permute_rows(const Plan *p, const real *src, real *dst, int64_t w,
                        bint to_packed) noexcept nogil:
    cdef int64_t r
    for r in range(p.B):
        if to_packed:
            memcpy(dst + r * w, src + p.seq[r] * w, w * sizeof(real))
        else:
            memcpy(dst + p.seq[r] * w, src + r * w, w * sizeof(real))


# ---------------------------------------------------------------- one direction

cdef struct Dir:
    const void *W
    const void *U
    const void *V
    const void *b          # forward; NULL: no bias
    const void *h0         # (B, H), packed order; zeros when not given
    void *H                # (N, H) hidden states: the forward's result, the backward's input
    void *D                # backward: dH, then the pre-activation gradients (N, H)
    void *prev             # backward: the state each row's step started from (N, H)
    void *dW
    void *dU
    void *dV
    void *db
    void *dh0              # (B, H), packed order
    double *acc            # 2 H doubles
    int reverse
    int64_t macs


cdef void _fwd_dir(const Kern *K, const Plan *p, const real *X, Dir *d,
                   const Region *g) noexcept nogil:
    cdef int old = _blas1(g)
    cdef int64_t H = p.H, s, t, m, m1
    cdef real *P = <real *>d.H
    cdef real *rows
    cdef const real *U = <const real *>d.U
    cdef const real *h0 = <const real *>d.h0
    mm_nt(p.N, H, p.DI, X, p.DI, <const real *>d.W, p.DI, 0, P, H, &d.macs)
    for s in range(p.T):
        t = p.T - 1 - s if d.reverse else s
        m = p.n[t]
        rows = P + p.off[t] * H
        if d.reverse:
            # rows [0, n[t+1]) continue from step t+1, the rest start from h0
            m1 = p.n[t + 1]
            mm_nt(m1, H, H, P + p.off[t + 1] * H, H, U, H, 1, rows, H, &d.macs)
            mm_nt(m - m1, H, H, h0 + m1 * H, H, U, H, 1, rows + m1 * H, H, &d.macs)
        else:
            mm_nt(m, H, H, h0 if t == 0 else P + p.off[t - 1] * H, H, U, H, 1, rows, H,
                  &d.macs)
        k_bias_tanh(K, rows, m, H, <const real *>d.b)
    _blas_back(g, old)


cdef void _bwd_dir(const Kern *K, const Plan *p, const real *dY, const real *X, Dir *d,
                   const Region *g) noexcept nogil:
    cdef int old = _blas1(g)
    cdef int64_t H = p.H, s, t, m, m1
    cdef real *D = <real *>d.D
    cdef real *prev = <real *>d.prev
    cdef real *dh0 = <real *>d.dh0
    cdef real *rows
    cdef const real *Hs = <const real *>d.H
    cdef const real *U = <const real *>d.U
    cdef const real *h0 = <const real *>d.h0
    cdef size_t row = H * sizeof(real)
    mm_nn(p.N, H, p.O, dY, p.O, <const real *>d.V, H, 0, D, H, &d.macs)
    for s in range(p.T):
        t = s if d.reverse else p.T - 1 - s
        m = p.n[t]
        rows = D + p.off[t] * H
        k_dtanh(K, rows, Hs + p.off[t] * H, m * H)
        if d.reverse:
            m1 = p.n[t + 1]
            mm_nn(m1, H, H, rows, H, U, H, 1, D + p.off[t + 1] * H, H, &d.macs)
            mm_nn(m - m1, H, H, rows + m1 * H, H, U, H, 0, dh0 + m1 * H, H, &d.macs)
            memcpy(prev + p.off[t] * H, Hs + p.off[t + 1] * H, m1 * row)
            memcpy(prev + (p.off[t] + m1) * H, h0 + m1 * H, (m - m1) * row)
        elif t > 0:
            mm_nn(m, H, H, rows, H, U, H, 1, D + p.off[t - 1] * H, H, &d.macs)
            memcpy(prev + p.off[t] * H, Hs + p.off[t - 1] * H, m * row)
        else:
            mm_nn(m, H, H, rows, H, U, H, 0, dh0, H, &d.macs)
            memcpy(prev, h0, m * row)
    mm_tn(H, p.DI, p.N, D, H, X, p.DI, 0, <real *>d.dW, p.DI, &d.macs)
    mm_tn(H, H, p.N, D, H, prev, H, 0, <real *>d.dU, H, &d.macs)
    mm_tn(p.O, H, p.N, dY, p.O, Hs, H, 0, <real *>d.dV, H, &d.macs)
    k_colsum(K, D, p.N, H, <real *>d.db, d.acc)
    _blas_back(g, old)


cdef inline void _half(const Plan *p, int i, int64_t *r0, int64_t *m) noexcept nogil:
    """Row block i (0 or 1) of the N packed rows: a split that no thread count changes."""
    cdef int64_t h = p.N // 2
    r0[0] = 0 if i == 0 else h
    m[0] = h if i == 0 else p.N - h


cdef void _y_block(const Kern *K, const Plan *p, const Dir *dirs, const real *c, real *Y,
                   int i, int64_t *macs, const Region *g) noexcept nogil:
    """Y = H_f V_f^T + H_b V_b^T (+ c) on row block i."""
    cdef int64_t r0, m, H = p.H, O = p.O
    cdef int old
    _half(p, i, &r0, &m)
    if m == 0:
        return
    old = _blas1(g)
    mm_nt(m, O, H, <const real *>dirs[0].H + r0 * H, H, <const real *>dirs[0].V, H, 0,
          Y + r0 * O, O, macs)
    mm_nt(m, O, H, <const real *>dirs[1].H + r0 * H, H, <const real *>dirs[1].V, H, 1,
          Y + r0 * O, O, macs)
    if c != NULL:
        k_add_rows(K, Y + r0 * O, m, O, c)
    _blas_back(g, old)


cdef void _dx_block(const Plan *p, const Dir *dirs, real *dX, int i, int64_t *macs,
                    const Region *g) noexcept nogil:
    """dX = delta_f W_f + delta_b W_b on row block i."""
    cdef int64_t r0, m, H = p.H, I = p.DI
    cdef int old
    _half(p, i, &r0, &m)
    if m == 0:
        return
    old = _blas1(g)
    mm_nn(m, I, H, <const real *>dirs[0].D + r0 * H, H, <const real *>dirs[0].W, I, 0,
          dX + r0 * I, I, macs)
    mm_nn(m, I, H, <const real *>dirs[1].D + r0 * H, H, <const real *>dirs[1].W, I, 1,
          dX + r0 * I, I, macs)
    _blas_back(g, old)


# ---------------------------------------------------------------- drivers

cdef const void *_at(a, const real *tag) except? NULL:
    """Data pointer of a C-contiguous array of tag's type, NULL for None (the caller
    keeps a alive)."""
    cdef const real[::1] v
    if a is None:
        return NULL
    v = a.reshape(-1)
    return &v[0] if v.shape[0] else tag


cdef void *_scratch(list bufs, int64_t nbytes, bint zero=False) except NULL:
    """A work buffer freed by _free(bufs); only zero=True ones start as zeros (the rest
    are written in full before they are read: no memset, and reused heap pages)."""
    cdef size_t n = nbytes if nbytes > 0 else 1
    cdef void *q = calloc(n, 1) if zero else malloc(n)
    if q == NULL:
        raise MemoryError(f"birnn: out of memory for {nbytes} bytes of work buffers")
    bufs.append(<uintptr_t>q)
    return q


cdef _free(list bufs):
    for q in bufs:
        free(<void *><uintptr_t>q)


cdef _plan_struct(Plan *p, tuple plan, int64_t T, int64_t B, int64_t I, int64_t H, int64_t O):
    cdef const int64_t[::1] n = plan[0], off = plan[1], seq = plan[2]
    p.T, p.B, p.DI, p.H, p.O = T, B, I, H, O
    p.n, p.off, p.seq = &n[0], &off[0], &seq[0]
    p.N = off[T]
    p.packed = plan[3]


cdef _state(list bufs, const Plan *p, h0, const real *tag, const void **out):
    """h0 (B, H) in packed order, or zeros."""
    cdef const real *src = <const real *>_at(h0, tag)
    cdef real *dst
    if src != NULL and not p.packed:
        out[0] = src
        return
    dst = <real *>_scratch(bufs, p.B * p.H * sizeof(real), src == NULL)
    if src != NULL:
        _permute_rows(p, src, dst, p.H, True)
    out[0] = dst


def _fwd(const real[:, :, ::1] x, tuple w, tuple opt, tuple plan, tuple res, int nthreads):
    cdef const real *tag = &x[0, 0, 0]
    cdef Plan p
    cdef Dir d[2]
    cdef Region g
    cdef Kern K
    cdef list bufs = []
    cdef int64_t i
    cdef int64_t ymacs[2]
    cdef const real *X = tag
    cdef real *y_out = <real *>_at(res[0], tag)
    cdef const real *c = <const real *>_at(opt[2], tag)
    cdef real *Y = <real *>_at(res[0], tag)
    cdef real *hout[2]
    hout[0] = <real *>_at(res[1], tag)
    hout[1] = <real *>_at(res[2], tag)
    _plan_struct(&p, plan, x.shape[0], x.shape[1], x.shape[2], w[0].shape[0], w[2].shape[0])
    if real is float:
        K.f = fdl_rnnk_f32_table(simd_level())
    else:
        K.d = fdl_rnnk_f64_table(simd_level())
    ymacs[0] = ymacs[1] = 0
    try:
        if p.packed:
            X = <real *>_scratch(bufs, p.N * p.DI * sizeof(real))
            _gather(&p, tag, <real *>X, p.DI)
            Y = <real *>_scratch(bufs, p.N * p.O * sizeof(real))
        for i in range(2):
            d[i].W, d[i].U, d[i].V = _at(w[3 * i], tag), _at(w[3 * i + 1], tag), _at(w[3 * i + 2], tag)
            d[i].b = _at(opt[i], tag)
            _state(bufs, &p, opt[3 + i], tag, &d[i].h0)
            d[i].H = _scratch(bufs, p.N * p.H * sizeof(real)) if p.packed else <void *>hout[i]
            d[i].reverse = i
            d[i].macs = 0
        _enter(&g, nthreads, p.N * p.H * (p.DI + p.H + p.O) * sizeof(real))
        try:
            with nogil:
                for i in prange(2, num_threads=g.nt, schedule="static"):
                    _fwd_dir(&K, &p, X, &d[i], &g)
                for i in prange(2, num_threads=g.nt, schedule="static"):
                    _y_block(&K, &p, d, c, Y, <int>i, &ymacs[i], &g)
                if p.packed:
                    _scatter(&p, Y, y_out, p.O)
                    for i in range(2):
                        _scatter(&p, <const real *>d[i].H, hout[i], p.H)
        finally:
            _leave(&g)
    finally:
        _free(bufs)
    return d[0].macs + d[1].macs + ymacs[0] + ymacs[1]


def _bwd(const real[:, :, ::1] x, dy, tuple hs, tuple w, tuple h0s, tuple plan, tuple res,
         int nthreads):
    cdef const real *tag = &x[0, 0, 0]
    cdef Plan p
    cdef Dir d[2]
    cdef Region g
    cdef Kern K
    cdef list bufs = []
    cdef int64_t i
    cdef int64_t xmacs[2]
    cdef const real *X = tag
    cdef real *dc = <real *>_at(res[8], tag)
    cdef const real *dY = <const real *>_at(dy, tag)
    cdef real *dX = <real *>_at(res[11], tag)
    cdef real *dx_out = dX
    cdef real *dh0_out[2]
    cdef double *acc
    _plan_struct(&p, plan, x.shape[0], x.shape[1], x.shape[2], w[0].shape[0], w[2].shape[0])
    if real is float:
        K.f = fdl_rnnk_f32_table(simd_level())
    else:
        K.d = fdl_rnnk_f64_table(simd_level())
    xmacs[0] = xmacs[1] = 0
    try:
        acc = <double *>_scratch(bufs, 2 * (2 * p.H + 2 * p.O) * sizeof(double), True)
        if p.packed:
            X = <real *>_scratch(bufs, p.N * p.DI * sizeof(real))
            _gather(&p, tag, <real *>X, p.DI)
            dY = <real *>_scratch(bufs, p.N * p.O * sizeof(real))
            _gather(&p, <const real *>_at(dy, tag), <real *>dY, p.O)
            if dX != NULL:
                dX = <real *>_scratch(bufs, p.N * p.DI * sizeof(real))
        for i in range(2):
            d[i].W, d[i].U, d[i].V = _at(w[3 * i], tag), _at(w[3 * i + 1], tag), _at(w[3 * i + 2], tag)
            _state(bufs, &p, h0s[i], tag, &d[i].h0)
            d[i].H = <void *>_at(hs[i], tag)
            if p.packed:
                d[i].H = _scratch(bufs, p.N * p.H * sizeof(real))
                _gather(&p, <const real *>_at(hs[i], tag), <real *>d[i].H, p.H)
            d[i].D = _scratch(bufs, p.N * p.H * sizeof(real))
            d[i].prev = _scratch(bufs, p.N * p.H * sizeof(real))
            d[i].dW, d[i].dU, d[i].dV, d[i].db = (
                <void *>_at(res[4 * i], tag), <void *>_at(res[4 * i + 1], tag),
                <void *>_at(res[4 * i + 2], tag), <void *>_at(res[4 * i + 3], tag))
            dh0_out[i] = <real *>_at(res[9 + i], tag)
            d[i].dh0 = _scratch(bufs, p.B * p.H * sizeof(real)) if p.packed else <void *>dh0_out[i]
            d[i].acc = acc + 2 * p.H * i
            d[i].reverse = i
            d[i].macs = 0
        _enter(&g, nthreads, p.N * p.H * (2 * p.DI + 2 * p.H + 2 * p.O) * sizeof(real))
        try:
            with nogil:
                for i in prange(2, num_threads=g.nt, schedule="static"):
                    _bwd_dir(&K, &p, dY, X, &d[i], &g)
                if dX != NULL:
                    for i in prange(2, num_threads=g.nt, schedule="static"):
                        _dx_block(&p, d, dX, <int>i, &xmacs[i], &g)
                k_colsum(&K, dY, p.N, p.O, dc, acc + 4 * p.H)
                if p.packed:
                    if dX != NULL:
                        _scatter(&p, dX, dx_out, p.DI)
                    for i in range(2):
                        _permute_rows(&p, <const real *>d[i].dh0, dh0_out[i], p.H, False)
        finally:
            _leave(&g)
    finally:
        _free(bufs)
    return d[0].macs + d[1].macs + xmacs[0] + xmacs[1]


# ---------------------------------------------------------------- the ops

def birnn_fwd(x, W_f, U_f, V_f, W_b, U_b, V_b, b_f, b_b, c, h0_f, h0_b, lengths, nthreads):
    """(y, h_f, h_b) of a bidirectional tanh RNN (fastdl.ops.rnn.birnn_fwd)."""
    w = (W_f, U_f, V_f, W_b, U_b, V_b)
    named = {n: (a, s) for (n, s), a in zip(WEIGHTS, w)}
    named.update(b_f=(b_f, "H"), b_b=(b_b, "H"), c=(c, "O"), h0_f=(h0_f, "BH"),
                 h0_b=(h0_b, "BH"))
    T, B, I, H, O = check(x, named, lengths)
    plan = plan_of(lengths, T, B)
    new = np.zeros if plan[3] else np.empty
    res = (new((T, B, O), x.dtype), new((T, B, H), x.dtype), new((T, B, H), x.dtype))
    _local.birnn_fwd = _fwd(x, w, (b_f, b_b, c, h0_f, h0_b), plan, res, nthreads)
    return res


def birnn_bwd(dy, x, h_f, h_b, W_f, U_f, V_f, W_b, U_b, V_b, h0_f, h0_b, lengths, need_dx,
              nthreads):
    """The 12 gradients of fastdl.ops.rnn.birnn_bwd (dx None unless need_dx)."""
    w = (W_f, U_f, V_f, W_b, U_b, V_b)
    named = {n: (a, s) for (n, s), a in zip(WEIGHTS, w)}
    named.update(dy=(dy, "TBO"), h_f=(h_f, "TBH"), h_b=(h_b, "TBH"), h0_f=(h0_f, "BH"),
                 h0_b=(h0_b, "BH"))
    T, B, I, H, O = check(x, named, lengths)
    plan = plan_of(lengths, T, B)
    e, dt = np.empty, x.dtype
    res = (e((H, I), dt), e((H, H), dt), e((O, H), dt), e(H, dt),
           e((H, I), dt), e((H, H), dt), e((O, H), dt), e(H, dt), e(O, dt),
           e((B, H), dt), e((B, H), dt),
           (np.zeros if plan[3] else e)((T, B, I), dt) if need_dx else None)
    _local.birnn_bwd = _bwd(x, dy, (h_f, h_b), w, (h0_f, h0_b), plan, res, nthreads)
    return res


def last_macs():
    """{"birnn_fwd": int, "birnn_bwd": int}: the multiply-adds (sum of m n k over the
    GEMM calls) of the calling thread's last call of each op (0 before any)."""
    return {op: getattr(_local, op, 0) for op in ("birnn_fwd", "birnn_bwd")}


def tanh(x, out=None):
    """The kernels' tanh of a C-contiguous float32/float64 array, at the active SIMD level
    (at most 1.5 ulp from the exact tanh: float32 over every float32,
    float64 on a dense grid; NaN stays NaN, +-inf gives +-1, odd bitwise).  Returns ``out`` (a new array when None)."""
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be a float32/float64 numpy.ndarray, got {shape_of(x)}")
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty_like(x)
    elif not isinstance(out, np.ndarray) or out.dtype != x.dtype or out.shape != x.shape \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous {x.dtype} array of shape "
                         f"{x.shape}")
    if x.size:
        _tanh(x.reshape(-1), out.reshape(-1))
    return out


def _tanh(const real[::1] x, real[::1] y):
    cdef Kern K
    with nogil:
        if real is float:
            K.f = fdl_rnnk_f32_table(simd_level())
            K.f.tanh(&x[0], &y[0], x.shape[0])
        else:
            K.d = fdl_rnnk_f64_table(simd_level())
            K.d.tanh(&x[0], &y[0], x.shape[0])
