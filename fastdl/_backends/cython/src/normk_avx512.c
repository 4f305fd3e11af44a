/* AVX-512 overrides of the norm reductions (normk_sums_simd.h): the same NL
 * lanes as every other build (16 floats / 8 doubles), in one vector. */
#include "normk.h"
#include "normk_simd.h"

#if FDL_HAVE_AVX2_TARGET
#define ATTR FDL_TARGET_AVX512
#define NV 1

/* twins: row_sums_f32, rms_sums_f32, seg_sums_f32 of normk_body.h */
#define T float
#define VT __m512
#define W 16
#define NK_LANES nk_lanes_f32
#define V_LOAD _mm512_loadu_ps
#define V_STORE _mm512_storeu_ps
#define V_ADD _mm512_add_ps
#define V_SUB _mm512_sub_ps
#define V_MUL _mm512_mul_ps
#define V_SET1 _mm512_set1_ps
#define V_ZERO _mm512_setzero_ps
#define FN(name) fdl_nk_##name##_f32_avx512
#include "normk_sums_simd.h"
#undef T
#undef VT
#undef W
#undef NK_LANES
#undef V_LOAD
#undef V_STORE
#undef V_ADD
#undef V_SUB
#undef V_MUL
#undef V_SET1
#undef V_ZERO
#undef FN

/* twins: sumsq_f64, row_sums_f64, rms_sums_f64, seg_sums_f64 of normk_body.h */
#define T double
#define VT __m512d
#define W 8
#define NK_LANES nk_lanes_f64
#define V_LOAD _mm512_loadu_pd
#define V_STORE _mm512_storeu_pd
#define V_ADD _mm512_add_pd
#define V_SUB _mm512_sub_pd
#define V_MUL _mm512_mul_pd
#define V_SET1 _mm512_set1_pd
#define V_ZERO _mm512_setzero_pd
#define FN(name) fdl_nk_##name##_f64_avx512
#include "normk_sumsq_simd.h"
#include "normk_sums_simd.h"
#endif
