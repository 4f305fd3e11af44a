/* LoRA and attention kernels: the elementwise and row passes that _lora.pyx
 * runs between its BLAS calls.  A table per (dtype, ISA) holds the body
 * (lorak_body.h) compiled for that ISA; fdl_lorak_*_table(level) returns the
 * table of a SIMD level (simd.h).  Every kernel rounds in one fixed order (sums
 * in a fixed lane layout, fp-contract off, the exp of decodek_exp.h with its
 * fma sequence), so all tables of a dtype give bitwise equal results.
 *
 * softmax_row(s, n, m): in place over one row of n entries whose first m
 *   (1 <= m <= n) are live: s_j = exp(s_j - max) / sum over live j of
 *   exp(s_j - max); entries j >= m become exactly 0.  The exp is within about
 *   1 ulp (float32: the Cephes polynomial; float64: degree 13); the sum is
 *   accumulated in double in FDL_LORAK_LANES lanes (element j to lane
 *   j mod LANES, lanes added 0, 1, ... at the end).  A live NaN, a +inf
 *   maximum or an all -inf row makes every live entry NaN (as the plain
 *   formula does).
 * softmax_bwd_row(dp, p, n, scale): in place over one row of n entries:
 *   dp_j = (p_j * (dp_j - r)) * scale with r = sum_j dp_j p_j (the products and
 *   the sum in double, the same lane layout).
 * mul(a, b, y, n):   y = a * b elementwise (y may be a).
 * scale(a, y, n, s): y = a * s elementwise (y may be a).
 * add_rows(a, m, n, c): a[i, j] += c[j] over m rows of n. */
#ifndef FASTDL_LORAK_H
#define FASTDL_LORAK_H
#include <stdint.h>

#define FDL_LORAK_LANES 16

typedef struct {
    void (*softmax_row)(float *s, int64_t n, int64_t m);
    void (*softmax_bwd_row)(float *dp, const float *p, int64_t n, float scale);
    void (*mul)(const float *a, const float *b, float *y, int64_t n);
    void (*scale)(const float *a, float *y, int64_t n, float s);
    void (*add_rows)(float *a, int64_t m, int64_t n, const float *c);
} fdl_lorak_f32;

typedef struct {
    void (*softmax_row)(double *s, int64_t n, int64_t m);
    void (*softmax_bwd_row)(double *dp, const double *p, int64_t n, double scale);
    void (*mul)(const double *a, const double *b, double *y, int64_t n);
    void (*scale)(const double *a, double *y, int64_t n, double s);
    void (*add_rows)(double *a, int64_t m, int64_t n, const double *c);
} fdl_lorak_f64;

const fdl_lorak_f32 *fdl_lorak_f32_table(int level);
const fdl_lorak_f64 *fdl_lorak_f64_table(int level);
#endif
