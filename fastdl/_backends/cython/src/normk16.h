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

#include "moments.h"
#include "normk.h"

#define FDL_NK16_CHUNK 4096

/* The kernels of one ISA that a float16 unit runs: the float32 norm table
 * and the float32 moments table (with its float16 conversions), fetched once
 * per call by the caller (fdl_nk_f32_table and fdl_moments_f32_table of
 * simd_level()) and passed to every unit. */
typedef struct {
    const fdl_nk_f32 *nk;
    const fdl_moments_f32 *mom;
} fdl_nk16;

/* Layer norm row of D: mean, biased var; y = xh * w + b. */
void fdl_nk16_layer_row(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t D,
                        const float *w, const float *b, double eps, double *mean, double *var);
/* RMS norm row: ms = mean of squares; y = x r w. */
void fdl_nk16_rms_row(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t D,
                      const float *w, double eps, double *ms);
/* Group norm row: K channels of S elements (w, b point at the group's first channel). */
void fdl_nk16_group_row(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t K, int64_t S,
                        const float *w, const float *b, double eps, double *mean, double *var);
/* y = ((x - mh) - ml) * a + c over n elements. */
void fdl_nk16_apply_chan(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t n, float mh,
                         float ml, float a, float c);
/* Per-column version (vectors of n elements). */
void fdl_nk16_apply_cols(const fdl_nk16 *T, const uint16_t *x, uint16_t *y, int64_t n,
                         const float *mh, const float *ml, const float *a, const float *c);
/* Mean and M2 of nseg segments of len elements, segment s at x + s * stride (work as
 * fdl_seg_moments_work(nseg, len, 4)). */
void fdl_nk16_seg_moments(const fdl_nk16 *T, const uint16_t *x, int64_t nseg, int64_t len,
                          int64_t stride, double *work, double *mean, double *m2);

/* Backward rows: dwp/dbp (float32 partials) accumulate dy xh and dy. */
void fdl_nk16_layer_bwd_row(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                            uint16_t *dx, int64_t D, double mean, double rstd, const float *w,
                            float *dwp, float *dbp);
void fdl_nk16_rms_bwd_row(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                          uint16_t *dx, int64_t D, double rstd, const float *w, float *dwp);
/* Group norm backward row: A, B (K doubles) get sum dy xh and sum dy per channel. */
void fdl_nk16_group_bwd_row(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x,
                            uint16_t *dx, int64_t K, int64_t S, double mean, double rstd,
                            const float *w, double *A, double *B);
/* Batch norm segments: *A += sum dy xh, *B += sum dy; then dx of the segment
 * (training) or dx = dy wk r (constant statistics). */
void fdl_nk16_seg_sums(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x, int64_t n,
                       float mh, float ml, float r, double *A, double *B);
void fdl_nk16_seg_dx(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x, uint16_t *dx,
                     int64_t n, float mh, float ml, float r, float wk, float c1, float c2,
                     int training);
/* Batch norm rows with per-column vectors. */
void fdl_nk16_col_sums(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x, int64_t n,
                       const float *mh, const float *ml, const float *r, float *ap, float *bp);
void fdl_nk16_col_dx(const fdl_nk16 *T, const uint16_t *dy, const uint16_t *x, uint16_t *dx,
                     int64_t n, const float *mh, const float *ml, const float *r,
                     const float *w, const float *c1, const float *c2, int training);

#endif
