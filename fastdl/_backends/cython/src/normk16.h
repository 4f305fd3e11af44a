/* float16 normalization kernels: the per-row / per-segment units of
 * _norm16.pyx.  Data are float16 bits (uint16_t); parameters, per-column
 * vectors and partial sums are float32, statistics float64.  Each unit
 * converts its input a chunk at a time (at most FDL_NK16_CHUNK elements, in
 * L1) to float32, runs the float32 kernels of normk.h on the chunk and
 * converts the output back, so the results are bitwise those of the float32
 * path on the input converted to float32, rounded once to float16 - with no
 * float32 copy of the arrays.  Reductions are cut at multiples of NK_FLUSH,
 * where the float32 kernels flush their lanes into double, so cutting does
 * not change a rounding. */
#ifndef FASTDL_NORMK16_H
#define FASTDL_NORMK16_H
#include <stdint.h>

#define FDL_NK16_CHUNK 4096

/* Layer norm row of D: mean, biased var; y = xh * w + b. */
void fdl_nk16_layer_row(const uint16_t *x, uint16_t *y, int64_t D, const float *w,
                        const float *b, double eps, int level, double *mean, double *var);
/* RMS norm row: ms = mean of squares; y = x r w. */
void fdl_nk16_rms_row(const uint16_t *x, uint16_t *y, int64_t D, const float *w, double eps,
                      int level, double *ms);
/* Group norm row: K channels of S elements (w, b point at the group's first channel). */
void fdl_nk16_group_row(const uint16_t *x, uint16_t *y, int64_t K, int64_t S, const float *w,
                        const float *b, double eps, int level, double *mean, double *var);
/* y = ((x - mh) - ml) * a + c over n elements. */
void fdl_nk16_apply_chan(const uint16_t *x, uint16_t *y, int64_t n, float mh, float ml, float a,
                         float c, int level);
/* Per-column version (vectors of n elements). */
void fdl_nk16_apply_cols(const uint16_t *x, uint16_t *y, int64_t n, const float *mh,
                         const float *ml, const float *a, const float *c, int level);
/* Mean and M2 of nseg segments of len elements, segment s at x + s * stride (work as
 * fdl_seg_moments_work(nseg, len, 4)). */
void fdl_nk16_seg_moments(const uint16_t *x, int64_t nseg, int64_t len, int64_t stride,
                          int level, double *work, double *mean, double *m2);

/* Backward rows: dwp/dbp (float32 partials) accumulate dy xh and dy. */
void fdl_nk16_layer_bwd_row(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t D,
                            double mean, double rstd, const float *w, float *dwp, float *dbp,
                            int level);
void fdl_nk16_rms_bwd_row(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t D,
                          double rstd, const float *w, float *dwp, int level);
/* Group norm backward row: A, B (K doubles) get sum dy xh and sum dy per channel. */
void fdl_nk16_group_bwd_row(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t K,
                            int64_t S, double mean, double rstd, const float *w, double *A,
                            double *B, int level);
/* Batch norm segments: *A += sum dy xh, *B += sum dy; then dx of the segment
 * (training) or dx = dy wk r (constant statistics). */
void fdl_nk16_seg_sums(const uint16_t *dy, const uint16_t *x, int64_t n, float mh, float ml,
                       float r, double *A, double *B, int level);
void fdl_nk16_seg_dx(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t n, float mh,
                     float ml, float r, float wk, float c1, float c2, int training, int level);
/* Batch norm rows with per-column vectors. */
void fdl_nk16_col_sums(const uint16_t *dy, const uint16_t *x, int64_t n, const float *mh,
                       const float *ml, const float *r, float *ap, float *bp, int level);
void fdl_nk16_col_dx(const uint16_t *dy, const uint16_t *x, uint16_t *dx, int64_t n,
                     const float *mh, const float *ml, const float *r, const float *w,
                     const float *c1, const float *c2, int training, int level);

/* Test hooks: n values converted at the given SIMD level. */
void fdl_nk16_h2f(const uint16_t *h, float *f, int64_t n, int level);
void fdl_nk16_f2h(const float *f, uint16_t *h, int64_t n, int level);
#endif
