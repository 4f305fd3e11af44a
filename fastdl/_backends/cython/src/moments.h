/* Mean and centered sum of squares (M2) of contiguous data. */
#ifndef FASTDL_MOMENTS_H
#define FASTDL_MOMENTS_H
#include <math.h>
#include <stdint.h>

/* The block callers cut data into (16 KiB: a block in pass 2 and the next one
 * streaming in both fit in L1). */
#define FDL_BLOCK_BYTES 16384

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

/* Mean and M2 of each consecutive block of x[0:n] (all of length `block` but
 * the last, each at most a few thousand elements so it sits in L1/L2), with two
 * passes: lane accumulators (16 double lanes for float64, 32 float lanes for
 * float32) combined in double in a fixed tree, so the AVX2 and scalar twins
 * agree bitwise.  Pass 2 uses d = x - K (K = pass-1 mean): mean = K + sum(d)/n
 * and M2 = sum(d^2) - sum(d)^2/n (the corrected two-pass algorithm). */
void fdl_moments_blocks_f32(const float *x, int64_t n, int64_t block, int level,
                            double *mean, double *m2);
void fdl_moments_blocks_f64(const double *x, int64_t n, int64_t block, int level,
                            double *mean, double *m2);

/* Per-channel moments of a (rows, C, S) block, reduced over rows and S;
 * `work` must hold 4*C*S elements of the input's type.  Twins agree bitwise. */
void fdl_colmoments_f32(const float *x, int64_t rows, int64_t C, int64_t S, int level,
                        float *work, double *mean, double *m2);
void fdl_colmoments_f64(const double *x, int64_t rows, int64_t C, int64_t S, int level,
                        double *work, double *mean, double *m2);

/* float16 data (uint16_t bits), converted block by block into float32
 * scratch and given to the float32 kernels above: the results are bitwise
 * those of the float32 functions on x converted to float32, without a
 * float32 copy of x.  `block` is at most FDL_BLOCK_BYTES / 4 elements. */
void fdl_moments_blocks_f16(const uint16_t *x, int64_t n, int64_t block, int level,
                            double *mean, double *m2);
void fdl_colmoments_f16(const uint16_t *x, int64_t rows, int64_t C, int64_t S, int level,
                        float *work, double *mean, double *m2);
#endif
