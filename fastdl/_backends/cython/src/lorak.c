/* LoRA / attention kernels: the body (lorak_body.h) compiled once per (dtype,
 * ISA) and one table per (dtype, ISA).  The body vectorizes at every level (the
 * exp of decodek_exp.h is branch-free: fma, min/max, selects and an integer
 * add), so no intrinsic overrides are needed. */
#include <math.h>
#include <string.h>
#include "lorak.h"
#include "decodek_exp.h"
#include "simd.h"

#define LK_CAT3(a, b, c) a##_##b##_##c
#define LK_XCAT3(a, b, c) LK_CAT3(a, b, c)
#define LK(name) LK_XCAT3(name, LK_SFX, LK_ISA)

#define ATTR
#define LK_ISA scalar
#include "lorak_types.h"
#undef ATTR
#undef LK_ISA

#if FDL_HAVE_AVX2_TARGET
#define ATTR FDL_TARGET_AVX2
#define LK_ISA avx2
#include "lorak_types.h"
#undef ATTR
#undef LK_ISA

#define ATTR FDL_TARGET_AVX512
#define LK_ISA avx512
#include "lorak_types.h"
#undef ATTR
#undef LK_ISA
#endif

static const fdl_lorak_f32 f32_scalar = {
    .softmax_row = softmax_row_f32_scalar, .softmax_bwd_row = softmax_bwd_row_f32_scalar,
    .mul = mul_f32_scalar, .scale = scale_f32_scalar, .add_rows = add_rows_f32_scalar,
};
static const fdl_lorak_f64 f64_scalar = {
    .softmax_row = softmax_row_f64_scalar, .softmax_bwd_row = softmax_bwd_row_f64_scalar,
    .mul = mul_f64_scalar, .scale = scale_f64_scalar, .add_rows = add_rows_f64_scalar,
};
#if FDL_HAVE_AVX2_TARGET
static const fdl_lorak_f32 f32_avx2 = {
    .softmax_row = softmax_row_f32_avx2, .softmax_bwd_row = softmax_bwd_row_f32_avx2,
    .mul = mul_f32_avx2, .scale = scale_f32_avx2, .add_rows = add_rows_f32_avx2,
};
static const fdl_lorak_f64 f64_avx2 = {
    .softmax_row = softmax_row_f64_avx2, .softmax_bwd_row = softmax_bwd_row_f64_avx2,
    .mul = mul_f64_avx2, .scale = scale_f64_avx2, .add_rows = add_rows_f64_avx2,
};
static const fdl_lorak_f32 f32_avx512 = {
    .softmax_row = softmax_row_f32_avx512, .softmax_bwd_row = softmax_bwd_row_f32_avx512,
    .mul = mul_f32_avx512, .scale = scale_f32_avx512, .add_rows = add_rows_f32_avx512,
};
static const fdl_lorak_f64 f64_avx512 = {
    .softmax_row = softmax_row_f64_avx512, .softmax_bwd_row = softmax_bwd_row_f64_avx512,
    .mul = mul_f64_avx512, .scale = scale_f64_avx512, .add_rows = add_rows_f64_avx512,
};
#endif

const fdl_lorak_f32 *fdl_lorak_f32_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &f32_avx512;
    if (level >= FDL_SIMD_AVX2) return &f32_avx2;
#endif
    (void)level;
    return &f32_scalar;
}

const fdl_lorak_f64 *fdl_lorak_f64_table(int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX512) return &f64_avx512;
    if (level >= FDL_SIMD_AVX2) return &f64_avx2;
#endif
    (void)level;
    return &f64_scalar;
}
