/* AVX2 and AVX-VNNI int8-activation strip kernels (ymm: 8 rows of the x panel's
 * 16-row tile per register, 2 weight columns broadcast); scalar twin
 * fdl_qi8_strip_scalar (qi8k.c), bitwise equal: exact integer sums, then
 * the float order of fdl_qi8_strip_scalar.
 *
 * Dot step per mode: QI8_VNNI: vpdpbusd (u8 = q_x + 128, s8 = unit).  QI8_U:
 * maddubs on the same operands (|unit| <= 15 for nibble codes: 255 * 15 * 2 fits
 * int16) + madd.  QI8_S (int8 weights, where u8 255 * 127 * 2 would saturate):
 * maddubs(|w|, sign(q_x, w)) (127 * 128 * 2 fits) + madd, with no offset. */
#include "qi8k_int.h"

#if FDL_HAVE_AVX2_TARGET
#define QI8_U 0
#define QI8_S 1
#define QI8_VNNI 2

static FDL_TARGET_AVX2 ALWAYS_INLINE __m256i dot4(__m256i acc, __m256i xv, __m256i wb,
                                                  __m256i xs, const int mode) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (mode == QI8_VNNI) {
        /* the VEX (AVX-VNNI) encoding, written as asm so this body compiles for
         * plain AVX2 too (the instruction is only reached in the VNNI tier) */
        __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(xv), "x"(wb));
        return acc;
    }
    __m256i p = mode == QI8_U ? _mm256_maddubs_epi16(xv, wb)
                              : _mm256_maddubs_epi16(_mm256_abs_epi8(wb), _mm256_sign_epi8(xs, wb));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
}

#define NC2 2
static FDL_TARGET_AVX2 ALWAYS_INLINE void mk256(const fdl_qi8_x *X, int64_t t, const fdl_qi8_w *W,
                                                int64_t c0, float *out, const int mode) {
    const int64_t nb32 = X->nb32, kp = W->kp, spb = W->spb, nbw = W->nbw;
    const __m256i m80 = _mm256_set1_epi8((char)0x80);
    __m256i acc[2][NC2];
    __m256 fa[2][NC2], ft[2][NC2];
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < NC2; c++) {
            fa[h][c] = _mm256_setzero_ps();
            ft[h][c] = _mm256_setzero_ps();
        }
    int64_t left = spb, B = 0;      /* 32-blocks left in weight block B (no division) */
    for (int64_t s = 0; s < nb32; s++) {
        for (int c = 0; c < NC2; c++) {
            __m256i cc = mode == QI8_S ? _mm256_setzero_si256()
                                       : _mm256_set1_epi32(W->wc[(c0 + c) * nb32 + s]);
            acc[0][c] = acc[1][c] = cc;
        }
        const uint8_t *xs = X->xp + (t * nb32 + s) * 512;
        const int8_t *ws = W->wu + c0 * kp + 32 * s;
        for (int kg = 0; kg < 8; kg++) {
            __m256i xv[2], xq[2];
            for (int h = 0; h < 2; h++) {
                xv[h] = _mm256_loadu_si256((const void *)(xs + 64 * kg + 32 * h));
                xq[h] = _mm256_xor_si256(xv[h], m80);
            }
            for (int c = 0; c < NC2; c++) {
                int32_t wv;
                memcpy(&wv, ws + c * kp + 4 * kg, 4);
                __m256i wb = _mm256_set1_epi32(wv);
                for (int h = 0; h < 2; h++) acc[h][c] = dot4(acc[h][c], xv[h], wb, xq[h], mode);
            }
        }
        for (int h = 0; h < 2; h++) {
            __m256 dxv = _mm256_loadu_ps(X->dxp + (t * nb32 + s) * 16 + 8 * h);
            for (int c = 0; c < NC2; c++)
                fa[h][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[h][c]), dxv, fa[h][c]);
        }
        if (--left == 0 || s + 1 == nb32) {
            left = spb;
            for (int c = 0; c < NC2; c++) {
                __m256 swv = _mm256_set1_ps(W->sw[(c0 + c) * nbw + B]);
                for (int h = 0; h < 2; h++) {
                    ft[h][c] = _mm256_fmadd_ps(fa[h][c], swv, ft[h][c]);
                    fa[h][c] = _mm256_setzero_ps();
                }
            }
            B++;
        }
    }
    for (int c = 0; c < NC2; c++)
        for (int h = 0; h < 2; h++) _mm256_storeu_ps(out + c * 16 + 8 * h, ft[h][c]);
}

static FDL_TARGET_AVX2 ALWAYS_INLINE void strip256(const fdl_qi8_x *X, const fdl_qi8_w *W,
                                                   float *y, int64_t ldy, float *tbuf,
                                                   const int mode) {
    for (int64_t t = 0; t < X->ntile; t++)
        for (int64_t c0 = 0; c0 < W->jwp; c0 += NC2) {
            mk256(X, t, W, c0, tbuf, mode);
            for (int c = 0; c < NC2 && c0 + c < W->jw; c++)
                for (int64_t rr = 0; rr < 16 && 16 * t + rr < X->n; rr++)
                    y[(16 * t + rr) * ldy + W->j0 + c0 + c] = tbuf[c * 16 + rr];
        }
}

FDL_TARGET_AVX2 void fdl_qi8_strip_avx2(const fdl_qi8_x *X, const fdl_qi8_w *W, float *y,
                                        int64_t ldy, float *tbuf) {
    if (W->wide) strip256(X, W, y, ldy, tbuf, QI8_S);
    else strip256(X, W, y, ldy, tbuf, QI8_U);
}

/* AVX-VNNI tier: the CPU check is fdl_qi8_best_tier's */
FDL_TARGET_AVX2 void fdl_qi8_strip_avxvnni(
    const fdl_qi8_x *X, const fdl_qi8_w *W, float *y, int64_t ldy, float *tbuf) {
    strip256(X, W, y, ldy, tbuf, QI8_VNNI);
}
#endif
