/* AVX-512 overrides of the moments kernels (see moments_simd_body.h): the
 * same lane counts as every other build (32 floats, 16 doubles), held in 2
 * vectors of 16 floats / 8 doubles. */
#include "moments_simd.h"

#if FDL_HAVE_AVX2_TARGET
#define ATTR FDL_TARGET_AVX512

/* (u0 + u2) + (u1 + u3), the last steps of fdl_mom_reduce16 */
ATTR static inline double hsum4_tree(__m256d u) {
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(u), _mm256_extractf128_pd(u, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

/* twin: fdl_mom_reduce16 on lanes 0-7 in v[0], 8-15 in v[1] */
ATTR static inline double reduce16_avx512(const __m512d v[2]) {
    __m512d t = _mm512_add_pd(v[0], v[1]);                       /* t[k] = a[k] + a[k + 8] */
    __m256d u = _mm256_add_pd(_mm512_castpd512_pd256(t), _mm512_extractf64x4_pd(t, 1));
    return hsum4_tree(u);
}

/* twin: fdl_mom_reduce32f on lanes 0-15 in v[0], 16-31 in v[1] */
ATTR static inline double reduce32f_avx512(const __m512 v[2]) {
    __m512d r[2];
    r[0] = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v[0])),
                         _mm512_cvtps_pd(_mm512_castps512_ps256(v[1])));
    r[1] = _mm512_add_pd(
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[0]), 1))),
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[1]), 1))));
    return reduce16_avx512(r);
}

#define NV 2
#define V_PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)

/* twins: blocks_f32 / coldev_strip_f32 of moments_body.h */
#define T float
#define VT __m512
#define W 16
#define V_LOAD _mm512_loadu_ps
#define V_STORE _mm512_storeu_ps
#define V_ADD _mm512_add_ps
#define V_SUB _mm512_sub_ps
#define V_MUL _mm512_mul_ps
#define V_SET1 _mm512_set1_ps
#define V_ZERO _mm512_setzero_ps
#define RARR fdl_mom_reduce32f
#define RVEC reduce32f_avx512
#define BLOCKS_FN fdl_mom_blocks_f32_avx512
#define STRIP_FN fdl_mom_coldev_strip_f32_avx512
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
#define VT __m512d
#define W 8
#define V_LOAD _mm512_loadu_pd
#define V_STORE _mm512_storeu_pd
#define V_ADD _mm512_add_pd
#define V_SUB _mm512_sub_pd
#define V_MUL _mm512_mul_pd
#define V_SET1 _mm512_set1_pd
#define V_ZERO _mm512_setzero_pd
#define RARR fdl_mom_reduce16
#define RVEC reduce16_avx512
#define BLOCKS_FN fdl_mom_blocks_f64_avx512
#define STRIP_FN fdl_mom_coldev_strip_f64_avx512
#include "moments_simd_body.h"

/* ---- float16 conversions, 16 per instruction, masked tails ----
 * twins: fdl_h2f_scalar / fdl_f2h_scalar (f16.h); VCVTPH2PS / VCVTPS2PH give
 * the same bits (exact widening; nearest-even narrowing whatever MXCSR says,
 * quiet NaNs with the top payload bits kept). */
ATTR void fdl_mom_h2f_avx512(const uint16_t *h, float *f, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(f + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, h + i)));
    }
}

ATTR void fdl_mom_f2h_avx512(const float *f, uint16_t *h, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(h + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(f + i),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(h + i, m,
                                 _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, f + i),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
}
#endif
