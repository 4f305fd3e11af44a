/* RNN kernels: the body (rnnk_body.h) compiled once per (dtype, ISA) and one
 * table per (dtype, ISA).  The body vectorizes well at every level (the tanh
 * is branch-free, selects and integer lanes only), so no intrinsic overrides
 * are needed. */
#include "rnnk.h"
#include "rnnk_tanh.h"
#include "simd.h"

#define RK_CAT3(a, b, c) a##_##b##_##c
#define RK_XCAT3(a, b, c) RK_CAT3(a, b, c)
#define RK(name) RK_XCAT3(name, RK_SFX, RK_ISA)


/* every ISA's float32 and float64 bodies (rnnk_isa.h: one ISA, both dtypes) */
#define ATTR
#define RK_ISA scalar
#include "rnnk_isa.h"
#undef ATTR
#undef RK_ISA

#if FDL_HAVE_AVX2_TARGET
#define ATTR FDL_TARGET_AVX2
#define RK_ISA avx2
#include "rnnk_isa.h"
#undef ATTR
#undef RK_ISA

#define ATTR FDL_TARGET_AVX512
#define RK_ISA avx512
#include "rnnk_isa.h"
#undef ATTR
#undef RK_ISA
#endif

static const fdl_rnnk_f32 f32_scalar = {
    .bias_tanh = bias_tanh_f32_scalar, .dtanh = dtanh_f32_scalar,
    .add_rows = add_rows_f32_scalar, .colsum = colsum_f32_scalar, .tanh = tanh_f32_scalar,
};
static const fdl_rnnk_f64 f64_scalar = {
    .bias_tanh = bias_tanh_f64_scalar, .dtanh = dtanh_f64_scalar,
    .add_rows = add_rows_f64_scalar, .colsum = colsum_f64_scalar, .tanh = tanh_f64_scalar,
};
#if FDL_HAVE_AVX2_TARGET
static const fdl_rnnk_f32 f32_avx2 = {
    .bias_tanh = bias_tanh_f32_avx2, .dtanh = dtanh_f32_avx2,
    .add_rows = add_rows_f32_avx2, .colsum = colsum_f32_avx2, .tanh = tanh_f32_avx2,
};
static const fdl_rnnk_f64 f64_avx2 = {
    .bias_tanh = bias_tanh_f64_avx2, .dtanh = dtanh_f64_avx2,
    .add_rows = add_rows_f64_avx2, .colsum = colsum_f64_avx2, .tanh = tanh_f64_avx2,
};
static const fdl_rnnk_f32 f32_avx512 = {
    .bias_tanh = bias_tanh_f32_avx512, .dtanh = dtanh_f32_avx512,
    .add_rows = add_rows_f32_avx512, .colsum = colsum_f32_avx512, .tanh = tanh_f32_avx512,
};
static const fdl_rnnk_f64 f64_avx512 = {
    .bias_tanh = bias_tanh_f64_avx512, .dtanh = dtanh_f64_avx512,
    .add_rows = add_rows_f64_avx512, .colsum = colsum_f64_avx512, .tanh = tanh_f64_avx512,
};
#endif

const fdl_rnnk_f32 *fdl_rnnk_f32_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &f32_avx512;
    if (level >= FDL_SIMD_AVX2) return &f32_avx2;
#endif
    (void)level;
    return &f32_scalar;
}

const fdl_rnnk_f64 *fdl_rnnk_f64_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &f64_avx512;
    if (level >= FDL_SIMD_AVX2) return &f64_avx2;
#endif
    (void)level;
    return &f64_scalar;
}
