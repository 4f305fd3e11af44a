/* Decoding kernels (top-k heaps, log-sum-exp statistics) for _decode.pyx.
 *
 * One function table per input dtype and SIMD level: fdl_dk_*_table(level)
 * returns the scalar, AVX2 or AVX-512 build (FDL_TARGET_* function attributes,
 * never -march=native).  The builds give bitwise the same results:
 *
 * - heaps: a heap of capacity k over (key, index) keeps the k "best" items
 *   by the total order "larger value, then lower index; NaN above every
 *   number, NaNs by index".  The root is the worst kept item.  The scans
 *   assume every index they see is larger than every index already in the
 *   heap (they scan in increasing index order), so a value equal to the root
 *   can never enter: the SIMD prefilters skip `x <= root` (NaN passes) and
 *   the scalar replacement is exact.  Every build replaces the same items in
 *   the same order.
 * - statistics: `stats` gives one chunk's (max, sum of exp(x - max), bad)
 *   with the sum accumulated in float64 lanes in a fixed lane layout (see
 *   decodek_body.h) that every build reproduces; the exp is a polynomial
 *   evaluated with fma in every build (decodek_exp.h).  fdl_dk_fold_* fold
 *   chunk statistics in chunk order into a row's max and float64 log(sum).
 * - float16 inputs (uint16_t bit patterns) are computed in float32: the
 *   results equal the float32 kernels' on the converted values, bitwise
 *   (heap keys are float32 keys).
 */
#ifndef FASTDL_DECODEK_H
#define FASTDL_DECODEK_H
#include <stdint.h>

/* Elements per statistics chunk: rows are reduced in fixed chunks of this
 * size (independent of the thread count), folded in chunk order. */
#define FDL_DK_CHUNK 8192

/* Heaps are (key, index) arrays, root = worst: key(v) is an unsigned integer
 * of the value's width (float16: float32 keys), increasing with v,
 * -0.0 == +0.0, every NaN the largest key; values are read back from the
 * input by index.
 *   scan:     top-k scan of x[0..n) (indices base + i); returns the new size.
 *   scan_add: the same over candidates (C)((C)(x[i] - sub) + add).
 *   merge:    offer n items (any index order; merging part heaps).
 *   sort:     heap -> sorted best first, in place.
 *   stats:    one chunk (n <= FDL_DK_CHUNK): *m = max (as double), *s = sum
 *             exp(x - max) (0 when the chunk is all -inf), *bad = 1 when it
 *             holds NaN or +inf (then *s = 0).
 *   sub:      y = (x - m) - l (float16: computed in float32, rounded once).
 *   exp:      the polynomial exp, elementwise (tests): 0 below -86 (float32)
 *             / -708 (float64) and for -inf.
 *   h2f/f2h:  float16 <-> float32 conversions (f16.h), elementwise. */
typedef struct {
    int64_t (*scan)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k, const float *x,
                    int64_t n, int64_t base);
    int64_t (*scan_add)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k, const float *x,
                        int64_t n, float sub, float add, int64_t base);
    int64_t (*merge)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k, const uint32_t *sk,
                     const int64_t *si, int64_t n);
    void (*sort)(uint32_t *hk, int64_t *hi, int64_t size);
    void (*stats)(const float *x, int64_t n, double *m, double *s, int *bad);
    void (*sub)(const float *x, float *y, int64_t n, float m, float l);
    void (*exp)(const float *x, float *y, int64_t n);
} fdl_dk_f32;

typedef struct {
    int64_t (*scan)(uint64_t *hk, int64_t *hi, int64_t size, int64_t k, const double *x,
                    int64_t n, int64_t base);
    int64_t (*scan_add)(uint64_t *hk, int64_t *hi, int64_t size, int64_t k, const double *x,
                        int64_t n, double sub, double add, int64_t base);
    int64_t (*merge)(uint64_t *hk, int64_t *hi, int64_t size, int64_t k, const uint64_t *sk,
                     const int64_t *si, int64_t n);
    void (*sort)(uint64_t *hk, int64_t *hi, int64_t size);
    void (*stats)(const double *x, int64_t n, double *m, double *s, int *bad);
    void (*sub)(const double *x, double *y, int64_t n, double m, double l);
    void (*exp)(const double *x, double *y, int64_t n);
} fdl_dk_f64;

typedef struct {
    int64_t (*scan)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k, const uint16_t *x,
                    int64_t n, int64_t base);
    int64_t (*scan_add)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k,
                        const uint16_t *x, int64_t n, float sub, float add, int64_t base);
    int64_t (*merge)(uint32_t *hk, int64_t *hi, int64_t size, int64_t k, const uint32_t *sk,
                     const int64_t *si, int64_t n);
    void (*sort)(uint32_t *hk, int64_t *hi, int64_t size);
    void (*stats)(const uint16_t *x, int64_t n, double *m, double *s, int *bad);
    void (*sub)(const uint16_t *x, uint16_t *y, int64_t n, float m, float l);
    void (*h2f)(const uint16_t *x, float *y, int64_t n);
    void (*f2h)(const float *x, uint16_t *y, int64_t n);
} fdl_dk_f16;

/* level: FDL_SIMD_SCALAR / _AVX2 / _AVX512 (simd.h) */
const fdl_dk_f32 *fdl_dk_f32_table(int level);
const fdl_dk_f64 *fdl_dk_f64_table(int level);
const fdl_dk_f16 *fdl_dk_f16_table(int level);

/* Folding chunk statistics (dtype- and ISA-free, float64).  fold_step adds
 * one chunk's (m, s, bad) to a row's running (*M, *S, *bad) (start: -inf, 0,
 * 0), in chunk order; fold_end returns L = log(sum exp(x - max)) and the row
 * max in *pm.  A row holding NaN or +inf: L = NaN, *pm = NaN; an all -inf
 * row: L = NaN, *pm = -inf.  fdl_dk_fold folds nch chunks in order. */
void fdl_dk_fold_step(double *M, double *S, int *bad, double m, double s, int b);
double fdl_dk_fold_end(double M, double S, int bad, double *pm);
double fdl_dk_fold(const double *m, const double *s, const int *bad, int64_t nch,
                   double *pm);

#endif
