/* Norm kernels: the body (normk_body.h) compiled once per (dtype, ISA) and
 * one table per (dtype, ISA) listing body functions and the intrinsic
 * overrides of normk_avx2.c / normk_avx512.c. */
#include "normk.h"
#include "normk_simd.h"
#include "simd.h"

#include <math.h>
#include <string.h>

#define NK_CAT3(a, b, c) a##_##b##_##c
#define NK_XCAT3(a, b, c) NK_CAT3(a, b, c)
#define NK(name) NK_XCAT3(name, NK_SFX, NK_ISA)

/* Non-temporal store of one 64-byte line to d from t (both 64-byte aligned). */
#if defined(__x86_64__) || defined(__SSE2__)
#include <emmintrin.h>
#define NK_SFENCE() _mm_sfence()
static inline void stream_f32_sse2(float *d, const float *t) {
    for (int k = 0; k < 16; k += 4) _mm_stream_ps(d + k, _mm_load_ps(t + k));
}
static inline void stream_f64_sse2(double *d, const double *t) {
    for (int k = 0; k < 8; k += 2) _mm_stream_pd(d + k, _mm_load_pd(t + k));
}
#define NK_STREAM_F32 stream_f32_sse2
#define NK_STREAM_F64 stream_f64_sse2
#else
#define NK_SFENCE() ((void)0)
static inline void stream_f32_plain(float *d, const float *t) { memcpy(d, t, 64); }
static inline void stream_f64_plain(double *d, const double *t) { memcpy(d, t, 64); }
#define NK_STREAM_F32 stream_f32_plain
#define NK_STREAM_F64 stream_f64_plain
#endif

/* baseline builds */
#define ATTR
#define NK_ISA scalar
#include "normk_types.h"
#undef ATTR
#undef NK_ISA

#if FDL_HAVE_AVX2_TARGET
FDL_TARGET_AVX2 static inline void stream_f32_avx2(float *d, const float *t) {
    _mm256_stream_ps(d, _mm256_load_ps(t));
    _mm256_stream_ps(d + 8, _mm256_load_ps(t + 8));
}
FDL_TARGET_AVX2 static inline void stream_f64_avx2(double *d, const double *t) {
    _mm256_stream_pd(d, _mm256_load_pd(t));
    _mm256_stream_pd(d + 4, _mm256_load_pd(t + 4));
}
#undef NK_STREAM_F32
#undef NK_STREAM_F64
#define NK_STREAM_F32 stream_f32_avx2
#define NK_STREAM_F64 stream_f64_avx2
#define ATTR FDL_TARGET_AVX2
#define NK_ISA avx2
#include "normk_types.h"
#undef ATTR
#undef NK_ISA

FDL_TARGET_AVX512 static inline void stream_f32_avx512(float *d, const float *t) {
    _mm512_stream_ps(d, _mm512_load_ps(t));
}
FDL_TARGET_AVX512 static inline void stream_f64_avx512(double *d, const double *t) {
    _mm512_stream_pd(d, _mm512_load_pd(t));
}
#undef NK_STREAM_F32
#undef NK_STREAM_F64
#define NK_STREAM_F32 stream_f32_avx512
#define NK_STREAM_F64 stream_f64_avx512
#define ATTR FDL_TARGET_AVX512
#define NK_ISA avx512
#include "normk_types.h"
#undef ATTR
#undef NK_ISA
#endif

/* The elementwise kernels of one body build (a plain initializer list). */
#define NK_ELEMENTWISE(SFX, ISA)                                                      \
    .apply_row = apply_row_##SFX##_##ISA, .apply_rms = apply_rms_##SFX##_##ISA,       \
    .apply_chan = apply_chan_##SFX##_##ISA, .apply_cols = apply_cols_##SFX##_##ISA,   \
    .row_dx = row_dx_##SFX##_##ISA, .rms_dx = rms_dx_##SFX##_##ISA,                   \
    .seg_dx = seg_dx_##SFX##_##ISA, .col_sums = col_sums_##SFX##_##ISA,               \
    .col_dx = col_dx_##SFX##_##ISA, .seg_scale = seg_scale_##SFX##_##ISA,             \
    .col_scale = col_scale_##SFX##_##ISA

static const fdl_nk_f32 f32_scalar = {
    NK_ELEMENTWISE(f32, scalar),
    .sumsq = sumsq_f32_scalar, .row_sums = row_sums_f32_scalar,
    .rms_sums = rms_sums_f32_scalar, .seg_sums = seg_sums_f32_scalar,
};
static const fdl_nk_f64 f64_scalar = {
    NK_ELEMENTWISE(f64, scalar),
    .sumsq = sumsq_f64_scalar, .row_sums = row_sums_f64_scalar,
    .rms_sums = rms_sums_f64_scalar, .seg_sums = seg_sums_f64_scalar,
};
#if FDL_HAVE_AVX2_TARGET
static const fdl_nk_f32 f32_avx2 = {
    NK_ELEMENTWISE(f32, avx2),
    .sumsq = fdl_nk_sumsq_f32_avx2, .row_sums = fdl_nk_row_sums_f32_avx2,
    .rms_sums = fdl_nk_rms_sums_f32_avx2, .seg_sums = fdl_nk_seg_sums_f32_avx2,
};
static const fdl_nk_f64 f64_avx2 = {
    NK_ELEMENTWISE(f64, avx2),
    .sumsq = fdl_nk_sumsq_f64_avx2, .row_sums = fdl_nk_row_sums_f64_avx2,
    .rms_sums = fdl_nk_rms_sums_f64_avx2, .seg_sums = fdl_nk_seg_sums_f64_avx2,
};
/* AVX-512: the body's elementwise kernels and the reduction overrides of
 * normk_avx512.c, except for float32 sumsq and apply_rms (RMS norm forward),
 * which stay AVX2: measured against AVX2 they did not pay (same lanes, so the
 * same add chains; rows of 64: 0.87x with the AVX-512 sumsq on float16 data,
 * which run it per chunk, 0.96-0.99x with the AVX-512 apply_rms). */
static const fdl_nk_f32 f32_avx512 = {
    NK_ELEMENTWISE(f32, avx512),
    .apply_rms = apply_rms_f32_avx2,
    .sumsq = fdl_nk_sumsq_f32_avx2, .row_sums = fdl_nk_row_sums_f32_avx512,
    .rms_sums = fdl_nk_rms_sums_f32_avx512, .seg_sums = fdl_nk_seg_sums_f32_avx512,
};
static const fdl_nk_f64 f64_avx512 = {
    NK_ELEMENTWISE(f64, avx512),
    .sumsq = fdl_nk_sumsq_f64_avx512, .row_sums = fdl_nk_row_sums_f64_avx512,
    .rms_sums = fdl_nk_rms_sums_f64_avx512, .seg_sums = fdl_nk_seg_sums_f64_avx512,
};
#endif

const fdl_nk_f32 *fdl_nk_f32_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &f32_avx512;
    if (level >= FDL_SIMD_AVX2) return &f32_avx2;
#endif
    (void)level;
    return &f32_scalar;
}

const fdl_nk_f64 *fdl_nk_f64_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &f64_avx512;
    if (level >= FDL_SIMD_AVX2) return &f64_avx2;
#endif
    (void)level;
    return &f64_scalar;
}

void fdl_sfence(void) { NK_SFENCE(); }
