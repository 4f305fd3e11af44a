/* float16 (IEEE binary16, stored as uint16_t) <-> float32 conversion.
 *
 * The scalar twins are bit manipulations, so the baseline build needs no
 * F16C and no _Float16 support; the AVX2 tier (which requires F16C, see
 * simd.h) converts 8 values per instruction.  Both give the same bits:
 * float16 -> float32 is exact, float32 -> float16 rounds to nearest even
 * (overflow to inf), NaNs come out quiet with the top payload bits kept, as
 * VCVTPH2PS / VCVTPS2PH do. */
#ifndef FASTDL_F16_H
#define FASTDL_F16_H
#include <stdint.h>
#include <string.h>

#include "simd.h"

static inline float fdl_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, u;
    float f;
    if (e == 0x1F) {
        u = sign | 0x7F800000u | (m << 13) | (m ? 0x400000u : 0u);
    } else if (e) {
        u = sign | ((e + 112u) << 23) | (m << 13);
    } else {
        f = (float)m * 0x1p-24f;     /* zero or subnormal: exact */
        memcpy(&u, &f, 4);
        u |= sign;
    }
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t fdl_f2h(float f) {
    uint32_t x, sign, ax;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u)                       /* inf, nan */
        return (uint16_t)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u | ((ax >> 13) & 0x3FFu) : 0u));
    if (ax >= 0x477FF000u)                       /* >= 65520: rounds to inf */
        return (uint16_t)(sign | 0x7C00u);
    if (ax < 0x38800000u) {                      /* below 2^-14: subnormal or zero */
        float t;
        memcpy(&t, &ax, 4);
        t += 0.5f;          /* the float adder rounds to the 2^-24 grid, to nearest even */
        memcpy(&ax, &t, 4);
        return (uint16_t)(sign | (ax - 0x3F000000u));
    }
    ax += 0xC8000FFFu + ((ax >> 13) & 1u);       /* rebias, round to nearest even */
    return (uint16_t)(sign | (ax >> 13));
}

static inline void fdl_h2f_scalar(const uint16_t *h, float *f, int64_t n) {
    for (int64_t i = 0; i < n; i++) f[i] = fdl_h2f(h[i]);
}

static inline void fdl_f2h_scalar(const float *f, uint16_t *h, int64_t n) {
    for (int64_t i = 0; i < n; i++) h[i] = fdl_f2h(f[i]);
}

#if FDL_HAVE_AVX2_TARGET
/* 8 halves at p -> 8 floats */
FDL_TARGET_AVX2 static inline __m256 fdl_h2f_v(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* 8 floats -> 8 halves at p, nearest even whatever MXCSR says */
FDL_TARGET_AVX2 static inline void fdl_f2h_v(uint16_t *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

FDL_TARGET_AVX2 static inline void fdl_h2f_avx2(const uint16_t *h, float *f, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(f + i, fdl_h2f_v(h + i));
    fdl_h2f_scalar(h + i, f + i, n - i);
}

FDL_TARGET_AVX2 static inline void fdl_f2h_avx2(const float *f, uint16_t *h, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        fdl_f2h_v(h + i, _mm256_loadu_ps(f + i));
    fdl_f2h_scalar(f + i, h + i, n - i);
}
#endif

/* n values at the given SIMD level. */
static inline void fdl_h2f_row(const uint16_t *h, float *f, int64_t n, int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX2) {
        fdl_h2f_avx2(h, f, n);
        return;
    }
#endif
    (void)level;
    fdl_h2f_scalar(h, f, n);
}

static inline void fdl_f2h_row(const float *f, uint16_t *h, int64_t n, int level) {
#if FDL_HAVE_AVX2_TARGET
    if (level >= FDL_SIMD_AVX2) {
        fdl_f2h_avx2(f, h, n);
        return;
    }
#endif
    (void)level;
    fdl_f2h_scalar(f, h, n);
}
#endif
