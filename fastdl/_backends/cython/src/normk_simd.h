/* Internal to the norm kernels: the lane tree the body (normk_body.h) and its
 * intrinsic overrides share, and the overrides the SIMD tables list. */
#ifndef FASTDL_NORMK_SIMD_H
#define FASTDL_NORMK_SIMD_H
#include <stdint.h>

#include "simd.h"

/* NL lane partial sums (16 float / 8 double) into double: lane k goes to
 * s[k % 4], then (s0 + s2) + (s1 + s3). */
static inline double nk_lanes_f32(const float *a) {
    double s[4] = {0, 0, 0, 0};
    for (int k = 0; k < 16; k++) s[k & 3] += (double)a[k];
    return (s[0] + s[2]) + (s[1] + s[3]);
}

static inline double nk_lanes_f64(const double *a) {
    double s[4] = {0, 0, 0, 0};
    for (int k = 0; k < 8; k++) s[k & 3] += a[k];
    return (s[0] + s[2]) + (s[1] + s[3]);
}

#if FDL_HAVE_AVX2_TARGET
/* Overrides of the body's sumsq, row_sums, rms_sums and seg_sums (their
 * scalar twins), same signatures; ISA = avx2 | avx512 (float32 sumsq has no
 * AVX-512 override, see normk.c). */
#define NK_SUMSQ_DECL(SFX, T, ISA) double fdl_nk_sumsq_##SFX##_##ISA(const T *x, int64_t n);
#define NK_ROW_SUMS_DECL(SFX, T, ISA)                                                       \
    void fdl_nk_row_sums_##SFX##_##ISA(const T *dy, const T *x, int64_t n, T mh, T ml, T r, \
                                       const T *w, T *dwp, T *dbp, double *s1, double *s2); \
    double fdl_nk_rms_sums_##SFX##_##ISA(const T *dy, const T *x, int64_t n, T r,           \
                                         const T *w, T *dwp);                               \
    void fdl_nk_seg_sums_##SFX##_##ISA(const T *dy, const T *x, int64_t n, T mh, T ml, T r, \
                                       double *A, double *B);
NK_SUMSQ_DECL(f32, float, avx2)
NK_SUMSQ_DECL(f64, double, avx2)
NK_SUMSQ_DECL(f64, double, avx512)
NK_ROW_SUMS_DECL(f32, float, avx2)
NK_ROW_SUMS_DECL(f64, double, avx2)
NK_ROW_SUMS_DECL(f32, float, avx512)
NK_ROW_SUMS_DECL(f64, double, avx512)
#undef NK_SUMSQ_DECL
#undef NK_ROW_SUMS_DECL
#endif
#endif
