# Row-major GEMM over scipy.linalg.cython_blas, shared by the kernels that call BLAS
# with raw pointers (_rnn through _rnnk.pxd, _lora).
from libc.stdint cimport int64_t
from libc.string cimport memset
from scipy.linalg.cython_blas cimport sgemm, dgemm

ctypedef fused real:
    float
    double


# Row-major C (m x n) = alpha op(A) op(B) + beta C through the column-major BLAS
# (Cᵀ = op(B)ᵀ op(A)ᵀ).  An empty sum (k = 0) is 0 (C = 0 when beta = 0, unchanged
# when beta = 1), as BLAS defines it, without calling BLAS (some reject k = 0 with
# lda = 0).
cdef inline void rm_gemm(char *ta, char *tb, int64_t m, int64_t n, int64_t k, real alpha,
                         const real *a, int64_t lda, const real *b, int64_t ldb, real beta,
                         real *c, int64_t ldc) noexcept nogil:
    cdef int mi = <int>m, ni = <int>n, ki = <int>k
    cdef int la = <int>lda, lb = <int>ldb, lc = <int>ldc
    cdef int64_t i
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        if beta == 0:
            for i in range(m):
                memset(c + i * ldc, 0, n * sizeof(real))
        return
    if real is float:
        sgemm(tb, ta, &ni, &mi, &ki, &alpha, <float *>b, &lb, <float *>a, &la, &beta, c, &lc)
    else:
        dgemm(tb, ta, &ni, &mi, &ki, &alpha, <double *>b, &lb, <double *>a, &la, &beta, c, &lc)
