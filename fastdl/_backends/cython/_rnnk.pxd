# Declarations of src/rnnk.h and the typed shims the RNN drivers (_rnn.pyx) call:
# one per kernel over the fused type, and row-major GEMM helpers over
# scipy.linalg.cython_blas that add the multiply-adds of every call to a counter.
from libc.stdint cimport int64_t

from fastdl._backends.cython._gemm cimport real, rm_gemm

cdef extern from "rnnk.h" nogil:
    ctypedef struct fdl_rnnk_f32:
        void (*bias_tanh)(float *a, int64_t m, int64_t n, const float *b) noexcept nogil
        void (*dtanh)(float *d, const float *h, int64_t n) noexcept nogil
        void (*add_rows)(float *a, int64_t m, int64_t n, const float *c) noexcept nogil
        void (*colsum)(const float *a, int64_t m, int64_t n, float *out,
                       double *acc) noexcept nogil
        void (*tanh)(const float *x, float *y, int64_t n) noexcept nogil
    ctypedef struct fdl_rnnk_f64:
        void (*bias_tanh)(double *a, int64_t m, int64_t n, const double *b) noexcept nogil
        void (*dtanh)(double *d, const double *h, int64_t n) noexcept nogil
        void (*add_rows)(double *a, int64_t m, int64_t n, const double *c) noexcept nogil
        void (*colsum)(const double *a, int64_t m, int64_t n, double *out,
                       double *acc) noexcept nogil
        void (*tanh)(const double *x, double *y, int64_t n) noexcept nogil
    const fdl_rnnk_f32 *fdl_rnnk_f32_table(int level)
    const fdl_rnnk_f64 *fdl_rnnk_f64_table(int level)


# the SIMD level's tables, fetched once per call
cdef struct Kern:
    const fdl_rnnk_f32 *f
    const fdl_rnnk_f64 *d


cdef inline void k_bias_tanh(const Kern *K, real *a, int64_t m, int64_t n,
                             const real *b) noexcept nogil:
    if real is float:
        K.f.bias_tanh(a, m, n, b)
    else:
        K.d.bias_tanh(a, m, n, b)


cdef inline void k_dtanh(const Kern *K, real *d, const real *h, int64_t n) noexcept nogil:
    if real is float:
        K.f.dtanh(d, h, n)
    else:
        K.d.dtanh(d, h, n)


cdef inline void k_add_rows(const Kern *K, real *a, int64_t m, int64_t n,
                             const real *c) noexcept nogil:
    if real is float:
        K.f.add_rows(a, m, n, c)
    else:
        K.d.add_rows(a, m, n, c)


cdef inline void k_colsum(const Kern *K, const real *a, int64_t m, int64_t n, real *out,
                          double *acc) noexcept nogil:
    if real is float:
        K.f.colsum(a, m, n, out, acc)
    else:
        K.d.colsum(a, m, n, out, acc)


# Row-major C (m x n) = op(A) op(B) + beta C (_gemm.rm_gemm); macs[0] += m n k for
# every call that multiplies (none for an empty product).
cdef inline void _gemm(char *ta, char *tb, int64_t m, int64_t n, int64_t k, const real *a,
                       int64_t lda, const real *b, int64_t ldb, real beta, real *c,
                       int64_t ldc, int64_t *macs) noexcept nogil:
    if m > 0 and n > 0 and k > 0:
        macs[0] += m * n * k
    rm_gemm(ta, tb, m, n, k, <real>1, a, lda, b, ldb, beta, c, ldc)


cdef inline void mm_nt(int64_t m, int64_t n, int64_t k, const real *a, int64_t lda,
                       const real *b, int64_t ldb, real beta, real *c, int64_t ldc,
                       int64_t *macs) noexcept nogil:
    """C = A B^T: A (m, k), B (n, k)."""
    _gemm(b"N", b"T", m, n, k, a, lda, b, ldb, beta, c, ldc, macs)


cdef inline void mm_nn(int64_t m, int64_t n, int64_t k, const real *a, int64_t lda,
                       const real *b, int64_t ldb, real beta, real *c, int64_t ldc,
                       int64_t *macs) noexcept nogil:
    """C = A B: A (m, k), B (k, n)."""
    _gemm(b"N", b"N", m, n, k, a, lda, b, ldb, beta, c, ldc, macs)


cdef inline void mm_tn(int64_t m, int64_t n, int64_t k, const real *a, int64_t lda,
                       const real *b, int64_t ldb, real beta, real *c, int64_t ldc,
                       int64_t *macs) noexcept nogil:
    """C = A^T B: A (k, m), B (k, n)."""
    _gemm(b"T", b"N", m, n, k, a, lda, b, ldb, beta, c, ldc, macs)
