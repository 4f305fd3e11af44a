/* Internal to the moments kernels: the lane reductions and block finish that
 * the body (moments_body.h) and its intrinsic overrides share, so every build
 * rounds alike, and the overrides the AVX2 / AVX-512 tables list. */
#ifndef FASTDL_MOMENTS_SIMD_H
#define FASTDL_MOMENTS_SIMD_H
#include <math.h>
#include <stdint.h>

#include "simd.h"

/* Lane k of a 16-lane accumulator holds the terms x[i] with i % 16 == k;
 * every build reduces the lanes with this tree. */
static inline double fdl_mom_reduce16(const double *a) {
    double t[8], u[4];
    for (int k = 0; k < 8; k++) t[k] = a[k] + a[k + 8];
    for (int k = 0; k < 4; k++) u[k] = t[k] + t[k + 4];
    return (u[0] + u[2]) + (u[1] + u[3]);
}

/* 32 float lanes: pairs (k, k + 16) in double, then the 16-lane tree. */
static inline double fdl_mom_reduce32f(const float *a) {
    double r[16];
    for (int k = 0; k < 16; k++) r[k] = (double)a[k] + (double)a[k + 16];
    return fdl_mom_reduce16(r);
}

/* mean = K + sum(x - K) / n, where K is the first-pass mean.  A non-finite K
 * (the data hold inf or nan) is already the mean NumPy gives (inf - inf in
 * the correction would turn +inf into nan). */
static inline double fdl_mom_shifted_mean(double K, double s1, int64_t n) {
    return isfinite(K) ? K + s1 / (double)n : K;
}

static inline void fdl_mom_finish(double s, double c, int64_t n, double *m2) {
    double v = s - c * c / (double)n;
    *m2 = v < 0.0 ? 0.0 : v;   /* rounding can dip below 0; NaN passes */
}

/* Software prefetch distance (bytes) for the streamed block in the pipelined
 * loop: 8 KiB ahead took the kernel from ~0.6x to ~0.97x of a plain read's
 * bandwidth on the project's machines (1 KiB was too short). */
#define FDL_MOM_PF_BYTES 8192

/* Intrinsic overrides; each has the signature of the body function named in
 * its comment (its scalar twin). */
#if FDL_HAVE_AVX2_TARGET
void fdl_mom_blocks_f32_avx2(const float *x, int64_t n, int64_t block, double *mean,
                             double *m2);
void fdl_mom_blocks_f64_avx2(const double *x, int64_t n, int64_t block, double *mean,
                             double *m2);
void fdl_mom_coldev_strip_f32_avx2(const float *x, int64_t rows, int64_t L, const float *kc,
                                   float *sq, float *dv);
void fdl_mom_coldev_strip_f64_avx2(const double *x, int64_t rows, int64_t L, const double *kc,
                                   double *sq, double *dv);
void fdl_mom_blocks_f32_avx512(const float *x, int64_t n, int64_t block, double *mean,
                               double *m2);
void fdl_mom_blocks_f64_avx512(const double *x, int64_t n, int64_t block, double *mean,
                               double *m2);
void fdl_mom_coldev_strip_f32_avx512(const float *x, int64_t rows, int64_t L, const float *kc,
                                     float *sq, float *dv);
void fdl_mom_coldev_strip_f64_avx512(const double *x, int64_t rows, int64_t L,
                                     const double *kc, double *sq, double *dv);
void fdl_mom_h2f_avx512(const uint16_t *h, float *f, int64_t n);
void fdl_mom_f2h_avx512(const float *f, uint16_t *h, int64_t n);
#endif
#endif
