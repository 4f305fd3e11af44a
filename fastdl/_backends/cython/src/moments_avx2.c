/* AVX2 overrides of the moments kernels (see moments_simd_body.h): lanes in
 * 4 vectors of 8 floats / 4 doubles. */
#include "moments_simd.h"

#if FDL_HAVE_AVX2_TARGET
/* The lane trees of moments_simd.h on lanes held in 4 vectors. */
FDL_TARGET_AVX2 static inline double hsum4_tree(__m256d u) {
    /* (u0 + u2) + (u1 + u3) */
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(u), _mm256_extractf128_pd(u, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

/* twin: fdl_mom_reduce16 */
FDL_TARGET_AVX2 static inline double reduce16_avx2(const __m256d v[4]) {
    return hsum4_tree(_mm256_add_pd(_mm256_add_pd(v[0], v[2]), _mm256_add_pd(v[1], v[3])));
}

/* twin: fdl_mom_reduce32f */
FDL_TARGET_AVX2 static inline double reduce32f_avx2(const __m256 v[4]) {
    __m256d r0 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v[0])),
                               _mm256_cvtps_pd(_mm256_castps256_ps128(v[2])));
    __m256d r1 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v[0], 1)),
                               _mm256_cvtps_pd(_mm256_extractf128_ps(v[2], 1)));
    __m256d r2 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v[1])),
                               _mm256_cvtps_pd(_mm256_castps256_ps128(v[3])));
    __m256d r3 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v[1], 1)),
                               _mm256_cvtps_pd(_mm256_extractf128_ps(v[3], 1)));
    return hsum4_tree(_mm256_add_pd(_mm256_add_pd(r0, r2), _mm256_add_pd(r1, r3)));
}

#define ATTR FDL_TARGET_AVX2
#define NV 4
#define V_PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)

/* twins: blocks_f32 / coldev_strip_f32 of moments_body.h */
#define T float
#define VT __m256
#define W 8
#define V_LOAD _mm256_loadu_ps
#define V_STORE _mm256_storeu_ps
#define V_ADD _mm256_add_ps
#define V_SUB _mm256_sub_ps
#define V_MUL _mm256_mul_ps
#define V_SET1 _mm256_set1_ps
#define V_ZERO _mm256_setzero_ps
#define RARR fdl_mom_reduce32f
#define RVEC reduce32f_avx2
#define BLOCKS_FN fdl_mom_blocks_f32_avx2
#define STRIP_FN fdl_mom_coldev_strip_f32_avx2
#include "moments_simd_body.h"
#undef T
#undef VT
#undef W
#undef V_LOAD
#undef V_STORE
#undef V_ADD
#undef V_SUB
#undef V_MUL
#undef V_SET1
#undef V_ZERO
#undef RARR
#undef RVEC
#undef BLOCKS_FN
#undef STRIP_FN

/* twins: blocks_f64 / coldev_strip_f64 of moments_body.h */
#define T double
#define VT __m256d
#define W 4
#define V_LOAD _mm256_loadu_pd
#define V_STORE _mm256_storeu_pd
#define V_ADD _mm256_add_pd
#define V_SUB _mm256_sub_pd
#define V_MUL _mm256_mul_pd
#define V_SET1 _mm256_set1_pd
#define V_ZERO _mm256_setzero_pd
#define RARR fdl_mom_reduce16
#define RVEC reduce16_avx2
#define BLOCKS_FN fdl_mom_blocks_f64_avx2
#define STRIP_FN fdl_mom_coldev_strip_f64_avx2
#include "moments_simd_body.h"
#endif
