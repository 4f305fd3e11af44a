/* IEEE binary16 (numpy.float16) <-> float32 conversions for kernels that read
 * float16 directly and compute in float32.
 *
 * float16 values travel as their uint16_t bit patterns.  Each conversion has a
 * scalar version written in C and an F16C version (vcvtph2ps / vcvtps2ph,
 * used only inside FDL_TARGET_AVX2_F16C functions when fdl_cpu_has_f16c()):
 * both give bitwise the same results, NaN included.
 *
 * - half -> float is exact (every binary16 value is a float32 value); a
 *   signalling NaN comes out quiet, as vcvtph2ps does.
 * - float -> half rounds to nearest, ties to even (the F16C immediate
 *   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC, independent of MXCSR);
 *   beyond the largest half (65504) values round to +-inf from 65520 on; NaN
 *   stays NaN (quiet, the top 10 payload bits kept).
 */
#ifndef FASTDL_HALF_H
#define FASTDL_HALF_H

#include <stdint.h>
#include <string.h>

#include "simd.h"

static inline float fdl_h2f_s(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    float f;
    if (e == 0x1f) {
        x = sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u);
    } else if (e) {
        x = sign | ((e + 112u) << 23) | (m << 13);
    } else {
        f = (float)m * 0x1p-24f;        /* subnormal (or zero): exact in float32 */
        memcpy(&x, &f, 4);
        x |= sign;
    }
    memcpy(&f, &x, 4);
    return f;
}

static inline uint16_t fdl_f2h_s(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)                               /* NaN */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u)                              /* >= 65520 (or inf) */
        return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) {                            /* a normal half: >= 2^-14 */
        uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);  /* ties to even */
        return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
    }
    if (ax < 0x33000000u)                               /* below 2^-25: to zero */
        return sign;
    /* subnormal half: round(|f| * 2^24), ties to even */
    uint32_t shift = 126u - (ax >> 23);                /* 14 .. 24 */
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    q += (rem > half) | ((rem == half) & (q & 1u));
    return (uint16_t)(sign | q);
}

#if FDL_HAVE_AVX2_TARGET
#define FDL_TARGET_AVX2_F16C __attribute__((target("avx2,fma,f16c")))

static inline int fdl_cpu_has_f16c(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c");
}

/* 8 halves at p -> 8 floats */
FDL_TARGET_AVX2_F16C static inline __m256 fdl_h2f_v(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* 8 floats -> 8 halves at p */
FDL_TARGET_AVX2_F16C static inline void fdl_f2h_v(uint16_t *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#else
static inline int fdl_cpu_has_f16c(void) { return 0; }
#endif

#endif
