/* Mean and centered sum of squares (M2) of contiguous data. */
#ifndef FASTDL_MOMENTS_H
#define FASTDL_MOMENTS_H
#include <stdint.h>

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
#endif
