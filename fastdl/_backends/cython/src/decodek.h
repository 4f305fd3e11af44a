/* Decoding kernels (top-k heaps, log-sum-exp statistics) for _decode.pyx.
 *
 * Every function takes `level` (FDL_SIMD_SCALAR / FDL_SIMD_AVX2): the AVX2/FMA
 * version (FDL_TARGET_AVX2 function attribute, never -march=native) or its
 * scalar twin, which gives bitwise the same results:
 *
 * - heaps: a heap of capacity k over (value, index) keeps the k "best" items
 *   by the total order "larger value, then lower index; NaN above every
 *   number, NaNs by index".  The root is the worst kept item.  The scans
 *   assume every index they see is larger than every index already in the
 *   heap (they scan in increasing index order), so a value equal to the root
 *   can never enter: the AVX2 prefilter skips `x <= root` (NaN passes) and the
 *   scalar replacement is exact.  Both twins replace the same items in the
 *   same order.
 * - statistics: fdl_dk_stats_* gives one chunk's (max, sum of exp(x - max),
 *   bad) with the sum accumulated in float64 lanes in a fixed lane layout that
 *   the scalar twin reproduces; the exp is a polynomial evaluated with fma in
 *   both twins (bitwise equal).  fdl_dk_fold folds chunk statistics in chunk
 *   order into a row's max and float64 log(sum).
 */
#ifndef FASTDL_DECODEK_H
#define FASTDL_DECODEK_H
#include <stdint.h>

/* Elements per statistics chunk: rows are reduced in fixed chunks of this
 * size (independent of the thread count), folded in chunk order. */
#define FDL_DK_CHUNK 8192

/* Heaps are (key, index) arrays, root = worst: key(v) is an unsigned integer
 * of the value's width, increasing with v, -0.0 == +0.0, every NaN the
 * largest key; values are read back from the input by index.
 * Top-k scan of x[0..n) (indices base + i): returns the new heap size. */
int64_t fdl_dk_scan_f32(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                        const float *x, int64_t n, int64_t base, int level);
int64_t fdl_dk_scan_f64(uint64_t *hk, int64_t *hi, int64_t size, int64_t k,
                        const double *x, int64_t n, int64_t base, int level);
/* Same over candidates (T)((T)(x[i] - sub) + add). */
int64_t fdl_dk_scan_add_f32(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                            const float *x, int64_t n, float sub, float add, int64_t base,
                            int level);
int64_t fdl_dk_scan_add_f64(uint64_t *hk, int64_t *hi, int64_t size, int64_t k,
                            const double *x, int64_t n, double sub, double add, int64_t base,
                            int level);
/* Offer n items (any index order; merging part heaps): returns the new size. */
int64_t fdl_dk_merge_f32(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                         const uint32_t *sk, const int64_t *si, int64_t n);
int64_t fdl_dk_merge_f64(uint64_t *hk, int64_t *hi, int64_t size, int64_t k,
                         const uint64_t *sk, const int64_t *si, int64_t n);
/* Heap -> sorted best first, in place. */
void fdl_dk_sort_f32(uint32_t *hk, int64_t *hi, int64_t size);
void fdl_dk_sort_f64(uint64_t *hk, int64_t *hi, int64_t size);

/* One chunk's statistics: *m = max (as double), *s = sum exp(x - max) (0 when
 * the chunk is all -inf), *bad = 1 when it holds NaN or +inf (then *s = 0). */
void fdl_dk_stats_f32(const float *x, int64_t n, double *m, double *s, int *bad, int level);
void fdl_dk_stats_f64(const double *x, int64_t n, double *m, double *s, int *bad, int level);
/* Fold nch chunk statistics in order: returns L = log(sum exp(x - max)) in
 * float64 and the row max in *pm.  A row holding NaN or +inf: L = NaN, *pm =
 * NaN; an all -inf row: L = NaN, *pm = -inf. */
double fdl_dk_fold(const double *m, const double *s, const int *bad, int64_t nch,
                   double *pm);
/* The same for a whole row (chunks of FDL_DK_CHUNK, folded): equal to
 * fdl_dk_stats_* over the chunks + fdl_dk_fold. */
double fdl_dk_row_lse_f32(const float *x, int64_t n, int level, double *pm);
double fdl_dk_row_lse_f64(const double *x, int64_t n, int level, double *pm);
/* y = (x - m) - l */
void fdl_dk_sub_f32(const float *x, float *y, int64_t n, float m, float l, int level);
void fdl_dk_sub_f64(const double *x, double *y, int64_t n, double m, double l, int level);

/* float16 inputs (uint16_t bit patterns), computed in float32: the same as
 * the float32 functions on the converted values, bitwise (keys are float32
 * keys; fdl_dk_stats_f16 needs n <= FDL_DK_CHUNK).  fdl_dk_sub_f16 rounds
 * (x - m) - l, computed in float32, once to float16 (nearest, ties to even). */
int64_t fdl_dk_scan_f16(uint32_t *hk, int64_t *hi, int64_t size, int64_t k, const uint16_t *x,
                        int64_t n, int64_t base, int level);
int64_t fdl_dk_scan_add_f16(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                            const uint16_t *x, int64_t n, float sub, float add, int64_t base,
                            int level);
void fdl_dk_stats_f16(const uint16_t *x, int64_t n, double *m, double *s, int *bad, int level);
double fdl_dk_row_lse_f16(const uint16_t *x, int64_t n, int level, double *pm);
void fdl_dk_sub_f16(const uint16_t *x, uint16_t *y, int64_t n, float m, float l, int level);
/* Conversions, elementwise (tests/diagnostics; see f16.h). */
void fdl_dk_h2f(const uint16_t *x, float *y, int64_t n, int level);
void fdl_dk_f2h(const float *x, uint16_t *y, int64_t n, int level);

/* The exp polynomials, elementwise (tests/diagnostics). */
void fdl_dk_exp_f32(const float *x, float *y, int64_t n, int level);
void fdl_dk_exp_f64(const double *x, double *y, int64_t n, int level);

#endif
