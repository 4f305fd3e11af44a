/* Normalization layer kernels: per-row / per-segment building blocks that
 * _norm.pyx runs in parallel.  `stream` (nonzero) writes a forward's output
 * with non-temporal stores.  A table per (dtype, ISA) holds the functions of
 * one ISA: the body (normk_body.h) compiled for it, plus intrinsic overrides
 * (normk_avx2.c, normk_avx512.c).  fdl_nk_*_table(level) returns the table of
 * a SIMD level (simd.h); every table of a dtype rounds identically. */
#ifndef FASTDL_NORMK_H
#define FASTDL_NORMK_H
#include <stdint.h>

/* Lane partial sums of the reductions are flushed into double every
 * NK_FLUSH elements (see normk_body.h). */
#define NK_FLUSH 1024

#define FDL_NK_FUNCS(T)                                                                 \
    double (*sumsq)(const T *x, int64_t n);                                             \
    void (*apply_row)(const T *x, T *y, int64_t n, T mh, T ml, T r, const T *w,         \
                      const T *b, int stream);                                          \
    void (*apply_rms)(const T *x, T *y, int64_t n, T r, const T *w, int stream);        \
    void (*apply_chan)(const T *x, T *y, int64_t n, T mh, T ml, T a, T c, int stream);  \
    void (*apply_cols)(const T *x, T *y, int64_t n, const T *mh, const T *ml,           \
                       const T *a, const T *c, int stream);                             \
    void (*row_sums)(const T *dy, const T *x, int64_t n, T mh, T ml, T r, const T *w,   \
                     T *dwp, T *dbp, double *s1, double *s2);                           \
    void (*row_dx)(const T *dy, const T *x, T *dx, int64_t n, T mh, T ml, T r,          \
                   const T *w, T c1, T c2);                                             \
    double (*rms_sums)(const T *dy, const T *x, int64_t n, T r, const T *w, T *dwp);    \
    void (*rms_dx)(const T *dy, const T *x, T *dx, int64_t n, T r, const T *w, T c2);   \
    void (*seg_sums)(const T *dy, const T *x, int64_t n, T mh, T ml, T r, double *A,    \
                     double *B);                                                        \
    void (*seg_dx)(const T *dy, const T *x, T *dx, int64_t n, T mh, T ml, T r, T wk,    \
                   T c1, T c2);                                                         \
    void (*col_sums)(const T *dy, const T *x, int64_t n, const T *mh, const T *ml,      \
                     const T *r, T *ap, T *bp);                                         \
    void (*col_dx)(const T *dy, const T *x, T *dx, int64_t n, const T *mh, const T *ml, \
                   const T *r, const T *w, const T *c1, const T *c2);                   \
    void (*seg_scale)(const T *dy, T *dx, int64_t n, T wk, T r);                        \
    void (*col_scale)(const T *dy, T *dx, int64_t n, const T *w, const T *r);

typedef struct { FDL_NK_FUNCS(float) } fdl_nk_f32;
typedef struct { FDL_NK_FUNCS(double) } fdl_nk_f64;

const fdl_nk_f32 *fdl_nk_f32_table(int level);
const fdl_nk_f64 *fdl_nk_f64_table(int level);

/* Orders this thread's non-temporal stores before later stores (x86 sfence). */
void fdl_sfence(void);
#endif
