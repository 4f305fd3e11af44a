/* Normalization layer kernels: per-row / per-segment building blocks that
 * _norm.pyx runs in parallel.  `stream` (nonzero)
 * writes a forward's output with non-temporal stores.  A table per dtype holds the functions of one
 * ISA; fdl_nk_*_table(level) picks the AVX2 build or the baseline one, which
 * round identically (see normk_body.h). */
#ifndef FASTDL_NORMK_H
#define FASTDL_NORMK_H
#include <stdint.h>

/* Lane partial sums of the reductions are flushed into double every
 * NK_FLUSH elements (see normk_body.h); long rows are cut into runs of
 * FDL_ROW_RUN moments blocks (pipelined inside a run). */
#define NK_FLUSH 1024
#define FDL_ROW_RUN 64

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

/* Mean and M2 of each of nrows consecutive rows of D elements: a row of at most
 * FDL_BLOCK_BYTES is one block (the run pipelined by fdl_moments_blocks_*);
 * longer rows are cut into blocks merged with Chan's formula in a fixed order. */
void fdl_rows_moments_f32(const float *x, int64_t nrows, int64_t D, int level, double *mean,
                          double *m2);
void fdl_rows_moments_f64(const double *x, int64_t nrows, int64_t D, int level, double *mean,
                          double *m2);

/* Mean and M2 over nseg segments of len elements, segment s at x + s * stride.
 * work: 3 * nseg * ceil(len / block) doubles (block: FDL_BLOCK_BYTES of elements). */
void fdl_seg_moments_f32(const float *x, int64_t nseg, int64_t len, int64_t stride, int level,
                         double *work, double *mean, double *m2);
void fdl_seg_moments_f64(const double *x, int64_t nseg, int64_t len, int64_t stride, int level,
                         double *work, double *mean, double *m2);
/* Prefetch up to 16 KiB from p, one request per 64-byte line. */
void fdl_prefetch(const void *p, int64_t nbytes);
/* Orders this thread's non-temporal stores before later stores (x86 sfence). */
void fdl_sfence(void);
int64_t fdl_seg_moments_work(int64_t nseg, int64_t len, int64_t itemsize);
#endif
