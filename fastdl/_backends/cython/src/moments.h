/* Mean and centered sum of squares (M2) of contiguous data.
 *
 * One function table per (dtype, ISA) holds the kernels (moments_body.h,
 * with intrinsic overrides in moments_avx2.c / moments_avx512.c); a caller
 * fetches it once per call (fdl_moments_f32_table(simd_level())) and hands
 * it to the drivers below.  Every table of a dtype rounds identically. */
#ifndef FASTDL_MOMENTS_H
#define FASTDL_MOMENTS_H
#include <math.h>
#include <stdint.h>

/* The block callers cut data into (16 KiB: a block in pass 2 and the next one
 * streaming in both fit in L1). */
#define FDL_BLOCK_BYTES 16384
/* Long rows are cut into runs of FDL_ROW_RUN blocks (pipelined inside a run). */
#define FDL_ROW_RUN 64

/* Chan et al.: (n, m, q) becomes (count, mean, M2) of the union of itself and
 * the disjoint part (nb, mb, qb).  Groups holding inf/nan get NumPy's mean
 * (inf + inf, inf - inf) and a nan M2. */
static inline void fdl_chan(double *n, double *m, double *q, double nb, double mb, double qb) {
    if (nb == 0) return;
    if (*n == 0) { *n = nb; *m = mb; *q = qb; return; }
    if (!isfinite(*m) || !isfinite(mb)) {
        *n += nb;
        *m += mb;
        *q = NAN;
        return;
    }
    double nn = *n + nb, d = mb - *m;
    *q = *q + qb + d * d * (*n * nb / nn);
    *m = *m + d * (nb / nn);
    *n = nn;
}

/* Merge k (count, mean, M2) items in place, bottom-up pairwise (a fixed
 * tree); the result is item 0. */
static inline void fdl_merge_tree(double *cnt, double *mu, double *m2, int64_t k) {
    for (int64_t step = 1; step < k; step *= 2)
        for (int64_t j = 0; j + step < k; j += 2 * step)
            fdl_chan(&cnt[j], &mu[j], &m2[j], cnt[j + step], mu[j + step], m2[j + step]);
}

/* blocks: mean and M2 of each consecutive block of x[0:n] (all of length
 *   `block` but the last, each at most a few thousand elements so it sits in
 *   L1/L2), two passes over lane accumulators (32 float lanes for float32, 16
 *   double lanes for float64) combined in double in a fixed tree.  Pass 2
 *   uses d = x - K (K = pass-1 mean): mean = K + sum(d)/n and
 *   M2 = sum(d^2) - sum(d)^2/n (the corrected two-pass algorithm).
 * colsum: col[j] += sum over the rows of x[r * L + j] (rows added in order).
 * coldev: with d = x[r * L + j] - kc[j], sq[j] += sum d^2, dv[j] += sum d;
 *   coldev_strip computes the same sums a strip of columns at a time (for
 *   L >= FDL_COL_STRIP_MIN).
 * h2f, f2h: float16 bits <-> float32 conversion of the table's ISA. */
#define FDL_COL_STRIP_MIN 32
typedef struct {
    void (*blocks)(const float *x, int64_t n, int64_t block, double *mean, double *m2);
    void (*colsum)(const float *x, int64_t rows, int64_t L, float *col);
    void (*coldev)(const float *x, int64_t rows, int64_t L, const float *kc, float *sq,
                   float *dv);
    void (*coldev_strip)(const float *x, int64_t rows, int64_t L, const float *kc, float *sq,
                         float *dv);
    void (*h2f)(const uint16_t *h, float *f, int64_t n);
    void (*f2h)(const float *f, uint16_t *h, int64_t n);
} fdl_moments_f32;

typedef struct {
    void (*blocks)(const double *x, int64_t n, int64_t block, double *mean, double *m2);
    void (*colsum)(const double *x, int64_t rows, int64_t L, double *col);
    void (*coldev)(const double *x, int64_t rows, int64_t L, const double *kc, double *sq,
                   double *dv);
    void (*coldev_strip)(const double *x, int64_t rows, int64_t L, const double *kc,
                         double *sq, double *dv);
} fdl_moments_f64;

const fdl_moments_f32 *fdl_moments_f32_table(int level);
const fdl_moments_f64 *fdl_moments_f64_table(int level);

/* ---- drivers over a table (M) ---- */

/* Mean and M2 of each of nrows consecutive rows of D elements: a row of at most
 * FDL_BLOCK_BYTES is one block (the run pipelined by M->blocks); longer rows
 * are cut into blocks merged with Chan's formula in a fixed order. */
void fdl_rows_moments_f32(const fdl_moments_f32 *M, const float *x, int64_t nrows, int64_t D,
                          double *mean, double *m2);
void fdl_rows_moments_f64(const fdl_moments_f64 *M, const double *x, int64_t nrows, int64_t D,
                          double *mean, double *m2);

/* Mean and M2 over nseg segments of len elements, segment s at x + s * stride.
 * work: fdl_seg_moments_work(nseg, len, itemsize) doubles. */
void fdl_seg_moments_f32(const fdl_moments_f32 *M, const float *x, int64_t nseg, int64_t len,
                         int64_t stride, double *work, double *mean, double *m2);
void fdl_seg_moments_f64(const fdl_moments_f64 *M, const double *x, int64_t nseg, int64_t len,
                         int64_t stride, double *work, double *mean, double *m2);
int64_t fdl_seg_moments_work(int64_t nseg, int64_t len, int64_t itemsize);

/* Per-channel moments of a (rows, C, S) block, reduced over rows and S;
 * `work` must hold 4*C*S elements of the input's type. */
void fdl_colmoments_f32(const fdl_moments_f32 *M, const float *x, int64_t rows, int64_t C,
                        int64_t S, float *work, double *mean, double *m2);
void fdl_colmoments_f64(const fdl_moments_f64 *M, const double *x, int64_t rows, int64_t C,
                        int64_t S, double *work, double *mean, double *m2);

/* float16 data (uint16_t bits), converted block by block into float32
 * scratch and given to the float32 kernels: the results are bitwise those of
 * the float32 functions on x converted to float32, without a float32 copy of
 * x.  `block` is at most FDL_BLOCK_BYTES / 4 elements. */
void fdl_moments_blocks_f16(const fdl_moments_f32 *M, const uint16_t *x, int64_t n,
                            int64_t block, double *mean, double *m2);
void fdl_colmoments_f16(const fdl_moments_f32 *M, const uint16_t *x, int64_t rows, int64_t C,
                        int64_t S, float *work, double *mean, double *m2);

/* Prefetch up to 16 KiB from p, one request per 64-byte line. */
void fdl_prefetch(const void *p, int64_t nbytes);
#endif
