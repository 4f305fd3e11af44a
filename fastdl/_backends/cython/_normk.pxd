# Declarations of src/normk.h and src/normk16.h, and the typed shims the norm
# drivers call: one per kernel, over the data type (float32, float64, or
# float16 as its uint16 bits).  The tables of the SIMD level are fetched once
# per call (``tables``); parameters, per-column vectors and partial sums are
# passed untyped (``const void *``): they are float32 for float16 data and of
# the data's type otherwise (``paired`` checks that).
from libc.math cimport sqrt
from libc.stdint cimport int64_t, uint16_t

from fastdl._backends.cython._moments cimport (
    data, fdl_moments_f32, fdl_moments_f64, fdl_moments_f32_table, fdl_moments_f64_table)

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
    void fdl_sfence()

cdef extern from "normk16.h" nogil:
    ctypedef struct fdl_nk16:
        const fdl_nk_f32 *nk
        const fdl_moments_f32 *mom
    void fdl_nk16_layer_row(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t D,
                            const float *w, const float *b, double eps, double *mean,
                            double *var)
    void fdl_nk16_rms_row(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t D,
                          const float *w, double eps, double *ms)
    void fdl_nk16_group_row(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t K,
                            int64_t S, const float *w, const float *b, double eps,
                            double *mean, double *var)
    void fdl_nk16_apply_chan(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t n,
                             float mh, float ml, float a, float c)
    void fdl_nk16_apply_cols(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t n,
                             const float *mh, const float *ml, const float *a, const float *c)
    void fdl_nk16_seg_moments(const fdl_nk16 *T, const uint16_t *x, int64_t nseg, int64_t len,
                              int64_t stride, double *work, double *mean, double *m2)
    void fdl_nk16_layer_bwd_row(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                                uint16_t *dx, int64_t D, double mean, double rstd,
                                const float *w, float *dwp, float *dbp)
    void fdl_nk16_rms_bwd_row(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                              uint16_t *dx, int64_t D, double rstd, const float *w, float *dwp)
    void fdl_nk16_group_bwd_row(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                                uint16_t *dx, int64_t K, int64_t S, double mean, double rstd,
                                const float *w, double *A, double *B)
    void fdl_nk16_seg_sums(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x, int64_t n,
                           float mh, float ml, float r, double *A, double *B)
    void fdl_nk16_seg_dx(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                         uint16_t *dx, int64_t n, float mh, float ml, float r, float wk,
                         float c1, float c2, int training)
    void fdl_nk16_col_sums(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x, int64_t n,
                           const float *mh, const float *ml, const float *r, float *ap,
                           float *bp)
    void fdl_nk16_col_dx(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                         uint16_t *dx, int64_t n, const float *mh, const float *ml,
                         const float *r, const float *w, const float *c1, const float *c2,
                         int training)

# Parameters and partial sums: float32 for float16 and float32 data, float64
# for float64 data.
ctypedef fused param:
    float
    double

# The tables of one SIMD level for one data type; the layout of fdl_nk16.
ctypedef struct Tables:
    const void *nk
    const void *mom


cdef inline Tables tables(const data *tag, int level) noexcept nogil:
    cdef Tables t
    if data is double:
        t.nk = fdl_nk_f64_table(level)
        t.mom = fdl_moments_f64_table(level)
    else:
        t.nk = fdl_nk_f32_table(level)
        t.mom = fdl_moments_f32_table(level)
    return t


cdef inline bint paired(const data *d, const param *p) noexcept nogil:
    """Whether ``param`` is the parameter type of ``data``."""
    cdef bint ok = False
    if data is double:
        if param is double:
            ok = True
    elif param is float:
        ok = True
    return ok


# ------------------------------------------------------------ the shims
# mean arrives in float64 and is split into a head in the compute type and
# the rest (mh, ml): data far from zero keep their precision.

cdef inline const fdl_nk_f32 *K32(const Tables *t) noexcept nogil:
    return <const fdl_nk_f32 *>t.nk


cdef inline const fdl_nk_f64 *K64(const Tables *t) noexcept nogil:
    return <const fdl_nk_f64 *>t.nk


cdef inline const fdl_nk16 *K16(const Tables *t) noexcept nogil:
    return <const fdl_nk16 *>t


cdef inline void apply_row(const Tables *t, const data *x, data *y, int64_t n, double mean,
                           double rstd, const void *w, const void *b, bint stream) noexcept nogil:
    cdef float mh = <float>mean
    if data is float:
        K32(t).apply_row(x, y, n, mh, <float>(mean - <double>mh), <float>rstd, <const float *>w,
                         <const float *>b, stream)
    elif data is double:
        K64(t).apply_row(x, y, n, mean, 0.0, rstd, <const double *>w, <const double *>b, stream)


cdef inline double rms_row(const Tables *t, const data *x, data *y, int64_t D, const void *w,
                           double eps, bint stream) noexcept nogil:
    # returns the mean of squares
    cdef double m = 0
    if data is float:
        m = K32(t).sumsq(x, D) / D
        K32(t).apply_rms(x, y, D, <float>(1.0 / sqrt(m + eps)), <const float *>w, stream)
    elif data is double:
        m = K64(t).sumsq(x, D) / D
        K64(t).apply_rms(x, y, D, 1.0 / sqrt(m + eps), <const double *>w, stream)
    else:
        fdl_nk16_rms_row(K16(t), x, y, D, <const float *>w, eps, &m)
    return m


cdef inline void apply_chan(const Tables *t, const data *x, data *y, int64_t n, double mean,
                            double a, double c, bint stream) noexcept nogil:
    # y = (x - mean) * a + c, with a and c rounded once to the compute type
    cdef float mh = <float>mean
    if data is float:
        K32(t).apply_chan(x, y, n, mh, <float>(mean - <double>mh), <float>a, <float>c, stream)
    elif data is double:
        K64(t).apply_chan(x, y, n, mean, 0.0, a, c, stream)
    else:
        fdl_nk16_apply_chan(K16(t), x, y, n, mh, <float>(mean - <double>mh), <float>a, <float>c)


cdef inline void apply_cols(const Tables *t, const data *x, data *y, int64_t n, const void *mh,
                            const void *ml, const void *a, const void *c,
                            bint stream) noexcept nogil:
    if data is float:
        K32(t).apply_cols(x, y, n, <const float *>mh, <const float *>ml, <const float *>a,
                          <const float *>c, stream)
    elif data is double:
        K64(t).apply_cols(x, y, n, <const double *>mh, <const double *>ml, <const double *>a,
                          <const double *>c, stream)
    else:
        fdl_nk16_apply_cols(K16(t), x, y, n, <const float *>mh, <const float *>ml,
                            <const float *>a, <const float *>c)


cdef inline void layer_bwd_row(const Tables *t, const data *dy, const data *x, data *dx,
                               int64_t D, double mean, double rstd, const void *w, void *dwp,
                               void *dbp) noexcept nogil:
    cdef double s1 = 0, s2 = 0
    cdef float mh = <float>mean, ml = <float>(mean - <double>mh), rs = <float>rstd
    if data is float:
        K32(t).row_sums(dy, x, D, mh, ml, rs, <const float *>w, <float *>dwp, <float *>dbp,
                        &s1, &s2)
        K32(t).row_dx(dy, x, dx, D, mh, ml, rs, <const float *>w, <float>(s1 / D),
                      <float>(s2 / D))
    elif data is double:
        K64(t).row_sums(dy, x, D, mean, 0.0, rstd, <const double *>w, <double *>dwp,
                        <double *>dbp, &s1, &s2)
        K64(t).row_dx(dy, x, dx, D, mean, 0.0, rstd, <const double *>w, s1 / D, s2 / D)
    else:
        fdl_nk16_layer_bwd_row(K16(t), dy, x, dx, D, mean, rstd, <const float *>w,
                               <float *>dwp, <float *>dbp)


cdef inline void rms_bwd_row(const Tables *t, const data *dy, const data *x, data *dx,
                             int64_t D, double rstd, const void *w, void *dwp) noexcept nogil:
    cdef double s2
    if data is float:
        s2 = K32(t).rms_sums(dy, x, D, <float>rstd, <const float *>w, <float *>dwp)
        K32(t).rms_dx(dy, x, dx, D, <float>rstd, <const float *>w, <float>(s2 / D))
    elif data is double:
        s2 = K64(t).rms_sums(dy, x, D, rstd, <const double *>w, <double *>dwp)
        K64(t).rms_dx(dy, x, dx, D, rstd, <const double *>w, s2 / D)
    else:
        fdl_nk16_rms_bwd_row(K16(t), dy, x, dx, D, rstd, <const float *>w, <float *>dwp)


cdef inline void seg_sums(const Tables *t, const data *dy, const data *x, int64_t n,
                          double mean, double rstd, double *A, double *B) noexcept nogil:
    # *A += sum dy xh, *B += sum dy
    cdef float mh = <float>mean
    if data is float:
        K32(t).seg_sums(dy, x, n, mh, <float>(mean - <double>mh), <float>rstd, A, B)
    elif data is double:
        K64(t).seg_sums(dy, x, n, mean, 0.0, rstd, A, B)
    else:
        fdl_nk16_seg_sums(K16(t), dy, x, n, mh, <float>(mean - <double>mh), <float>rstd, A, B)


cdef inline void seg_dx(const Tables *t, const data *dy, const data *x, data *dx, int64_t n,
                        double mean, double rstd, double wk, double c1, double c2,
                        bint training) noexcept nogil:
    # training: dx = ((dy wk - c1) - xh c2) r; constant statistics: dx = dy wk r
    cdef float mh = <float>mean
    if data is float:
        if training:
            K32(t).seg_dx(dy, x, dx, n, mh, <float>(mean - <double>mh), <float>rstd, <float>wk,
                          <float>c1, <float>c2)
        else:
            K32(t).seg_scale(dy, dx, n, <float>wk, <float>rstd)
    elif data is double:
        if training:
            K64(t).seg_dx(dy, x, dx, n, mean, 0.0, rstd, wk, c1, c2)
        else:
            K64(t).seg_scale(dy, dx, n, wk, rstd)
    else:
        fdl_nk16_seg_dx(K16(t), dy, x, dx, n, mh, <float>(mean - <double>mh), <float>rstd,
                        <float>wk, <float>c1, <float>c2, training)


cdef inline void group_bwd_row(const Tables *t, const data *dy, const data *x, data *dx,
                               int64_t K, int64_t S, double mean, double rstd, const void *w,
                               double *A, double *B) noexcept nogil:
    # one (n, group) row of K channels of S: A[c], B[c] = sum dy xh, sum dy
    cdef int64_t c
    cdef double s1 = 0, s2 = 0, M = <double>(K * S), wc
    if data is uint16_t:
        fdl_nk16_group_bwd_row(K16(t), dy, x, dx, K, S, mean, rstd, <const float *>w, A, B)
    else:
        for c in range(K):
            A[c] = 0
            B[c] = 0
            seg_sums(t, dy + c * S, x + c * S, S, mean, rstd, &A[c], &B[c])
            wc = (<const float *>w)[c] if data is float else (<const double *>w)[c]
            s1 = s1 + wc * B[c]
            s2 = s2 + wc * A[c]
        for c in range(K):
            wc = (<const float *>w)[c] if data is float else (<const double *>w)[c]
            seg_dx(t, dy + c * S, x + c * S, dx + c * S, S, mean, rstd, wc, s1 / M, s2 / M,
                   True)


cdef inline void col_sums(const Tables *t, const data *dy, const data *x, int64_t n,
                          const void *mh, const void *ml, const void *r, void *ap,
                          void *bp) noexcept nogil:
    if data is float:
        K32(t).col_sums(dy, x, n, <const float *>mh, <const float *>ml, <const float *>r,
                        <float *>ap, <float *>bp)
    elif data is double:
        K64(t).col_sums(dy, x, n, <const double *>mh, <const double *>ml, <const double *>r,
                        <double *>ap, <double *>bp)
    else:
        fdl_nk16_col_sums(K16(t), dy, x, n, <const float *>mh, <const float *>ml,
                          <const float *>r, <float *>ap, <float *>bp)


cdef inline void col_dx(const Tables *t, const data *dy, const data *x, data *dx, int64_t n,
                        const void *vec, int64_t L, bint training) noexcept nogil:
    # vec: 6 rows of L (mean head, mean rest, rstd, weight, c1, c2); without
    # training (constant statistics) dx = dy * weight * rstd
    if data is float:
        if training:
            K32(t).col_dx(dy, x, dx, n, <const float *>vec, <const float *>vec + L,
                          <const float *>vec + 2 * L, <const float *>vec + 3 * L,
                          <const float *>vec + 4 * L, <const float *>vec + 5 * L)
        else:
            K32(t).col_scale(dy, dx, n, <const float *>vec + 3 * L, <const float *>vec + 2 * L)
    elif data is double:
        if training:
            K64(t).col_dx(dy, x, dx, n, <const double *>vec, <const double *>vec + L,
                          <const double *>vec + 2 * L, <const double *>vec + 3 * L,
                          <const double *>vec + 4 * L, <const double *>vec + 5 * L)
        else:
            K64(t).col_scale(dy, dx, n, <const double *>vec + 3 * L,
                             <const double *>vec + 2 * L)
    else:
        fdl_nk16_col_dx(K16(t), dy, x, dx, n, <const float *>vec, <const float *>vec + L,
                        <const float *>vec + 2 * L, <const float *>vec + 3 * L,
                        <const float *>vec + 4 * L, <const float *>vec + 5 * L, training)
