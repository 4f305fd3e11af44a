/* quantize, AVX2 override of fdl_qk_qz_tile_scalar (quantk_pack.c): the same
 * float32 operations (division, trunc/floor, compare) on 8 columns at a time,
 * so the codes and scales are identical by IEEE. */
#include "quantk_int.h"

#ifndef QZ_PF_ROWS
#define QZ_PF_ROWS 4
#endif

#if FDL_HAVE_AVX2_TARGET
/* codes of 8 values (int32 lanes); MODE 0 nf4, 1 floor, 2 nearest */
FDL_TARGET_AVX2 static ALWAYS_INLINE __m256i qz_codes8(const int MODE, __m256 v, __m256 keep,
                                                      __m256 qmax, __m256 nqmax, __m256i coff) {
    if (MODE == 0) {
        __m256i c = _mm256_setzero_si256();
        for (int t = 0; t < 15; t++)
            c = _mm256_sub_epi32(c, _mm256_castps_si256(
                _mm256_cmp_ps(v, _mm256_set1_ps(fdl_qk_nf4_t[t]), _CMP_GT_OQ)));
        return c;
    }
    __m256 t;
    if (MODE == 1) {
        t = _mm256_floor_ps(v);
    } else {
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        const __m256 signmask = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
        t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m256 fr = _mm256_and_ps(_mm256_sub_ps(v, t), absmask);
        __m256 ge = _mm256_cmp_ps(fr, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
        __m256 sg = _mm256_or_ps(_mm256_and_ps(v, signmask), _mm256_set1_ps(1.0f));
        t = _mm256_add_ps(t, _mm256_and_ps(ge, sg));
    }
    t = _mm256_max_ps(t, nqmax);
    t = _mm256_min_ps(t, qmax);
    t = _mm256_and_ps(t, keep);
    return _mm256_add_epi32(_mm256_cvttps_epi32(t), coff);
}

/* Tile: columns [j0, j0+jw), rows [r0, r1); codes -> buf[jj*R + r - r0]; msc: 2*JS floats */
FDL_TARGET_AVX2 static ALWAYS_INLINE void qz_tile_avx2_m(const int MODE, const qz_t *z,
        const float *w, int64_t j0, int64_t jw, int64_t r0, int64_t r1, uint8_t *buf,
        int64_t R, float *scales, float *msc) {
    int64_t jv = jw & ~(int64_t)7;     /* vector columns; the rest through the scalar twin */
    if (jv < jw) fdl_qk_qz_tile_scalar(z, w, j0 + jv, jw - jv, r0, r1, buf + jv * R, R, scales, msc);
    if (jv == 0) return;
    const int64_t d_out = z->d_out, nb = z->nb, bs = z->bs;
    const int per_tensor = z->per_tensor;
    const int64_t step = per_tensor ? r1 - r0 : bs;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    const __m256 qmax = _mm256_set1_ps(z->qmax), nqmax = _mm256_set1_ps(-z->qmax);
    const __m256i coff = _mm256_set1_epi32(z->coff);
    const __m256i tr4 = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                         0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    float *dv = msc, *kp = msc + jv;      /* divisors and keep masks per column */
    int32_t tmp[8] __attribute__((aligned(32)));
    for (int64_t b0 = r0; b0 < r1; b0 += step) {
        int64_t b1 = b0 + step < r1 ? b0 + step : r1;
        /* scales */
        if (!per_tensor) {
            for (int64_t k = 0; k < jv; k += 8) _mm256_storeu_ps(dv + k, zero);
            for (int64_t r = b0; r < b1; r++) {
                const float *p = w + r * d_out + j0;
                const char *pf = (const char *)(p + QZ_PF_ROWS * d_out);
                int64_t pfn = r + QZ_PF_ROWS < r1 ? jv * 4 : 0;
                for (int64_t k = 0; k < jv; k += 8) {
                    if (((k * 4) & 63) == 0 && k * 4 < pfn) _mm_prefetch(pf + k * 4, _MM_HINT_T0);
                    /* integer max of |x| bit patterns: NaN above +inf above numbers */
                    _mm256_storeu_si256((__m256i *)(dv + k), _mm256_max_epi32(
                        _mm256_loadu_si256((const __m256i *)(dv + k)),
                        _mm256_castps_si256(_mm256_and_ps(_mm256_loadu_ps(p + k), absmask))));
                }
            }
            int64_t b = b0 / bs;
            if (MODE != 0) {
                /* qz_scale in vectors: d = m / qmax, one float32 step down (bits - 1; d > 0
                 * there) where qmax * d > m in double (exact products) */
                const __m256d qd = _mm256_set1_pd((double)z->qmax);
                for (int64_t k = 0; k < jv; k += 8) {
                    __m256 m = _mm256_loadu_ps(dv + k);
                    __m256 dd = _mm256_div_ps(m, qmax);
                    __m256d lo = _mm256_cmp_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(dd)), qd),
                                               _mm256_cvtps_pd(_mm256_castps256_ps128(m)), _CMP_GT_OQ);
                    __m256d hi = _mm256_cmp_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(dd, 1)), qd),
                                               _mm256_cvtps_pd(_mm256_extractf128_ps(m, 1)), _CMP_GT_OQ);
                    /* 64-bit masks -> 32-bit lanes */
                    __m128 l4 = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(_mm256_castpd_ps(lo),
                                    _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)));
                    __m128 h4 = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(_mm256_castpd_ps(hi),
                                    _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)));
                    __m256i down = _mm256_castps_si256(_mm256_set_m128(h4, l4));   /* -1 where too high */
                    dd = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(dd), down));
                    _mm256_storeu_ps(dv + k, dd);
                }
            }
            for (int64_t jj = 0; jj < jv; jj++) scales[(j0 + jj) * nb + b] = dv[jj];
        } else {
            for (int64_t k = 0; k < jv; k++) dv[k] = z->gscale;
        }
        for (int64_t k = 0; k < jv; k += 8) {
            __m256 sv = _mm256_loadu_ps(dv + k);
            __m256 pos = _mm256_cmp_ps(sv, zero, _CMP_GT_OQ);
            _mm256_storeu_ps(dv + k, _mm256_blendv_ps(one, sv, pos));
            _mm256_storeu_ps(kp + k, MODE == 0 ? _mm256_castsi256_ps(_mm256_set1_epi32(-1)) : pos);
        }
        /* codes, 4 rows at a time through a 4x8 byte transpose */
        int64_t r = b0;
        for (; r + 4 <= b1; r += 4) {
            const float *p = w + r * d_out + j0;
            uint8_t *o = buf + (r - r0);
            for (int64_t k = 0; k < jv; k += 8) {
                __m256 d = _mm256_loadu_ps(dv + k), kk = _mm256_loadu_ps(kp + k);
                __m256i c0 = qz_codes8(MODE, _mm256_div_ps(_mm256_loadu_ps(p + k), d), kk, qmax, nqmax, coff);
                __m256i c1 = qz_codes8(MODE, _mm256_div_ps(_mm256_loadu_ps(p + d_out + k), d), kk, qmax, nqmax, coff);
                __m256i c2 = qz_codes8(MODE, _mm256_div_ps(_mm256_loadu_ps(p + 2 * d_out + k), d), kk, qmax, nqmax, coff);
                __m256i c3 = qz_codes8(MODE, _mm256_div_ps(_mm256_loadu_ps(p + 3 * d_out + k), d), kk, qmax, nqmax, coff);
                __m256i bb = _mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
                bb = _mm256_shuffle_epi8(bb, tr4);
                _mm256_store_si256((__m256i *)tmp, bb);
                uint8_t *oo = o + k * R;
                for (int l = 0; l < 4; l++) memcpy(oo + l * R, tmp + l, 4);
                for (int l = 0; l < 4; l++) memcpy(oo + (l + 4) * R, tmp + 4 + l, 4);
            }
        }
        for (; r < b1; r++) {
            const float *p = w + r * d_out + j0;
            uint8_t *o = buf + (r - r0);
            for (int64_t k = 0; k < jv; k += 8) {
                __m256i c = qz_codes8(MODE, _mm256_div_ps(_mm256_loadu_ps(p + k), _mm256_loadu_ps(dv + k)),
                                      _mm256_loadu_ps(kp + k), qmax, nqmax, coff);
                _mm256_store_si256((__m256i *)tmp, c);
                for (int l = 0; l < 8; l++) o[(k + l) * R] = (uint8_t)tmp[l];
            }
        }
    }
}

/* twin: fdl_qk_qz_tile_scalar */
FDL_TARGET_AVX2 void fdl_qk_qz_tile_avx2(const qz_t *z, const float *w, int64_t j0, int64_t jw,
                                         int64_t r0, int64_t r1, uint8_t *buf, int64_t R,
                                         float *scales, float *msc) {
    if (z->nf4) qz_tile_avx2_m(0, z, w, j0, jw, r0, r1, buf, R, scales, msc);
    else if (z->floor_) qz_tile_avx2_m(1, z, w, j0, jw, r0, r1, buf, R, scales, msc);
    else qz_tile_avx2_m(2, z, w, j0, jw, r0, r1, buf, R, scales, msc);
}
#endif

