/* Shared by the decoding kernels' translation units (not part of the API):
 * the name-suffix macros and the SIMD builds' tables. */
#ifndef FASTDL_DECODEK_ISA_H
#define FASTDL_DECODEK_ISA_H
#include "decodek.h"
#include "simd.h"

#define DK_CAT3(a, b, c) a##_##b##_##c
#define DK_XCAT3(a, b, c) DK_CAT3(a, b, c)
#define DK(name) DK_XCAT3(name, DK_SFX, DK_ISA)
#define DK16(name) DK_XCAT3(name, f16, DK_ISA)

#if FDL_HAVE_AVX2_TARGET
extern const fdl_dk_f32 fdl_dk_f32_avx2;
extern const fdl_dk_f64 fdl_dk_f64_avx2;
extern const fdl_dk_f16 fdl_dk_f16_avx2;
extern const fdl_dk_f32 fdl_dk_f32_avx512;
extern const fdl_dk_f64 fdl_dk_f64_avx512;
extern const fdl_dk_f16 fdl_dk_f16_avx512;
#endif

#endif
