/* AVX-512 tier of the lookup-table kernels: the bodies of qlutk_body.h and the
 * override fdl_qlut_run_avx512 (twin: fdl_qlut_run_scalar in qlutk.c).  One
 * vpermps looks up 16 columns at once: it reads only the low 4 bits of each
 * index lane, so the word is shifted right by 4 between nibbles; the rows of a
 * group share each loaded word. */
#include "qlutk_int.h"

#if FDL_HAVE_AVX2_TARGET
#define ATTR FDL_TARGET_AVX512
#define FN(name) fdl_qlut_##name##_avx512
#define QL_PF 8
#define QL_OWN_TABLES
#include "qlutk_body.h"

/* twin: fdl_qlut_tables_scalar (qlutk_body.h).  absmax: one group of 4 inputs per
 * vector, U[1] = x0, U[2] = x1, U[3] = x0 + x1, then lanes 4..7 = lanes 0..3 + x2 and
 * lanes 8..15 = lanes 0..7 + x3 (masked adds: the other lanes keep their value, as
 * the scalar twin's sums); NF4: 16 code values times each input. */
ATTR void fdl_qlut_tables_avx512(const fdl_qlut_desc *q, const float *x, int64_t c0,
                                 int64_t c1, float *tab) {
    int64_t d_in = q->d_in;
    const __m512i lo4 = _mm512_set_epi32(3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0);
    const __m512i lo8 = _mm512_set_epi32(7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512 nf4 = _mm512_loadu_ps(fdl_qlut_nf4);
    for (int64_t c = c0; c < c1; c++) {
        float xs[32];
        int64_t i0 = 32 * c;
        if (i0 + 32 <= d_in) {
            memcpy(xs, x + i0, sizeof xs);
        } else {
            for (int i = 0; i < 32; i++) xs[i] = i0 + i < d_in ? x[i0 + i] : 0.0f;
        }
        if (q->nf4) {
            float *t = tab + (c - c0) * 512;
            for (int i = 0; i < 32; i++)
                _mm512_storeu_ps(t + 16 * i, _mm512_mul_ps(nf4, _mm512_set1_ps(xs[i])));
        } else {
            float *t = tab + (c - c0) * 128;
            for (int g = 0; g < 8; g++) {
                const float *v = xs + 4 * g;
                __m512 u = _mm512_maskz_mov_ps(0x000A, _mm512_set1_ps(v[0]));   /* lanes 1, 3 */
                u = _mm512_mask_mov_ps(u, 0x0004, _mm512_set1_ps(v[1]));
                u = _mm512_mask_add_ps(u, 0x0008, u, _mm512_set1_ps(v[1]));
                u = _mm512_mask_add_ps(u, 0x00F0, _mm512_permutexvar_ps(lo4, u), _mm512_set1_ps(v[2]));
                u = _mm512_mask_add_ps(u, 0xFF00, _mm512_permutexvar_ps(lo8, u), _mm512_set1_ps(v[3]));
                _mm512_storeu_ps(t + 16 * g, u);
            }
        }
    }
}

/* nibble m of word k (its index in the low 4 bits of each lane of v) for NR rows */
static ATTR QL_ALWAYS_INLINE void lookup512(const float *tc, int64_t ldt, __m512i v,
                                            __m512 (*A)[8], const int NR, const int NF4,
                                            const int k, const int m) {
    for (int r = 0; r < NR; r++) {
        const float *t = tc + r * ldt + 16 * (NF4 ? 8 * k + m : m);
        __m512 e = _mm512_permutexvar_ps(v, _mm512_loadu_ps(t));
        A[r][2 * k + (m >> 2)] = _mm512_add_ps(A[r][2 * k + (m >> 2)], e);
    }
}

static ATTR QL_ALWAYS_INLINE void run512(const fdl_qlut_desc *q, const uint32_t *w, int64_t c0,
                                         int64_t c1, const float *tab, int64_t ldt,
                                         const float *sc, float *st, const int NR, const int W,
                                         const int NF4) {
    __m512 A[2][8], Y[2];
    const int64_t tpc = NF4 ? 512 : 128;
    const uint32_t *wend = q->lut + q->NT * q->NC * W * 16;
    for (int r = 0; r < NR; r++) {
        for (int i = 0; i < 2 * W; i++) A[r][i] = _mm512_loadu_ps(st + r * FDL_QLUT_ST + 16 * i);
        Y[r] = _mm512_loadu_ps(st + r * FDL_QLUT_ST + 128);
    }
    ql_bcur bc = ql_bcur_init(q, c0);
    for (int64_t c = c0; c < c1; c++) {
        const uint32_t *wc = w + (c - c0) * W * 16;
        const float *tc = tab + (c - c0) * tpc;
        /* the codes 8 chunks on (a tile's codes are a stream the hardware prefetcher
         * picks up late; about 10% at 4096 x 4096; never faults past the end) */
        for (int k = 0; k < W; k++) _mm_prefetch((const char *)(wc + QL_PF * W * 16 + 16 * k), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int k = 0; k < W; k++) {
            const uint32_t *wk = wc + 16 * k;
            if (wk + 16 < wend) {
                /* nibbles 2b and 2b+1 of each lane from the vector loaded b bytes on:
                 * 4 loads and 4 shifts instead of 7 shifts (the shift port is the
                 * adds' too); the last vector of the array is never read past */
                for (int b = 0; b < 4; b++) {
                    __m512i u = _mm512_loadu_si512((const void *)((const uint8_t *)wk + b));
                    lookup512(tc, ldt, u, A, NR, NF4, k, 2 * b);
                    lookup512(tc, ldt, _mm512_srli_epi32(u, 4), A, NR, NF4, k, 2 * b + 1);
                }
            } else {
                __m512i v = _mm512_loadu_si512((const void *)wk);
                for (int m = 0; m < 8; m++) {
                    lookup512(tc, ldt, v, A, NR, NF4, k, m);
                    v = _mm512_srli_epi32(v, 4);
                }
            }
        }
        if (c == bc.end) {
            __m512 s = _mm512_loadu_ps(sc + 16 * bc.b);
            ql_bnext(q, &bc);
            for (int r = 0; r < NR; r++) {
                __m512 part;
                if (NF4) {
                    part = _mm512_add_ps(
                        _mm512_add_ps(_mm512_add_ps(A[r][0], A[r][1]), _mm512_add_ps(A[r][2], A[r][3])),
                        _mm512_add_ps(_mm512_add_ps(A[r][4], A[r][5]), _mm512_add_ps(A[r][6], A[r][7])));
                } else {
                    part = _mm512_add_ps(A[r][0], A[r][1]);
                    for (int k = 1; k < W - 1; k++)
                        part = _mm512_add_ps(part, _mm512_mul_ps(_mm512_set1_ps((float)(1 << k)),
                                                                 _mm512_add_ps(A[r][2 * k], A[r][2 * k + 1])));
                    part = _mm512_sub_ps(part, _mm512_mul_ps(_mm512_set1_ps((float)(1 << (W - 1))),
                                                             _mm512_add_ps(A[r][2 * W - 2], A[r][2 * W - 1])));
                }
                Y[r] = _mm512_add_ps(Y[r], _mm512_mul_ps(s, part));
                for (int i = 0; i < 2 * W; i++) A[r][i] = _mm512_setzero_ps();
            }
        }
    }
    for (int r = 0; r < NR; r++) {
        for (int i = 0; i < 2 * W; i++) _mm512_storeu_ps(st + r * FDL_QLUT_ST + 16 * i, A[r][i]);
        _mm512_storeu_ps(st + r * FDL_QLUT_ST + 128, Y[r]);
    }
}

/* twin: fdl_qlut_run_scalar */
ATTR void fdl_qlut_run_avx512(const fdl_qlut_desc *q, const uint32_t *w, int64_t c0, int64_t c1,
                              const float *tab, int64_t ldt, int nr, const float *sc, float *st) {
    if (q->nf4) {
        if (nr == 2) run512(q, w, c0, c1, tab, ldt, sc, st, 2, 4, 1);
        else run512(q, w, c0, c1, tab, ldt, sc, st, 1, 4, 1);
        return;
    }
    switch (q->bits * 2 + (nr == 2)) {
    case 4: run512(q, w, c0, c1, tab, ldt, sc, st, 1, 2, 0); break;
    case 5: run512(q, w, c0, c1, tab, ldt, sc, st, 2, 2, 0); break;
    case 6: run512(q, w, c0, c1, tab, ldt, sc, st, 1, 3, 0); break;
    case 7: run512(q, w, c0, c1, tab, ldt, sc, st, 2, 3, 0); break;
    case 8: run512(q, w, c0, c1, tab, ldt, sc, st, 1, 4, 0); break;
    default: run512(q, w, c0, c1, tab, ldt, sc, st, 2, 4, 0); break;
    }
}
/* NF4, one row, two tiles (w and w + wstride, their scales sc and sc + sstride, states st
 * and st + ststride): each table vector is loaded once for both tiles.  The same lane
 * sequence as run512 (twin: fdl_qlut_run_scalar, tile by tile). */
ATTR void fdl_qlut_run2_avx512(const fdl_qlut_desc *q, const uint32_t *w, int64_t wstride,
                               int64_t c0, int64_t c1, const float *tab, const float *sc,
                               int64_t sstride, float *st, int64_t ststride) {
    __m512 A[2][8], Y[2];
    const uint32_t *wend = q->lut + q->NT * q->NC * 4 * 16;
    for (int u = 0; u < 2; u++) {
        for (int i = 0; i < 8; i++) A[u][i] = _mm512_loadu_ps(st + u * ststride + 16 * i);
        Y[u] = _mm512_loadu_ps(st + u * ststride + 128);
    }
    ql_bcur bc = ql_bcur_init(q, c0);
    for (int64_t c = c0; c < c1; c++) {
        const float *tc = tab + (c - c0) * 512;
        /* unrolled so the chains stay in registers (gcc keeps A on the stack otherwise) */
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            const uint32_t *wk0 = w + (c - c0) * 64 + 16 * k, *wk1 = wk0 + wstride;
            if (wk1 + 16 < wend) {
#pragma GCC unroll 4
                for (int b = 0; b < 4; b++) {
                    __m512i u0 = _mm512_loadu_si512((const void *)((const uint8_t *)wk0 + b));
                    __m512i u1 = _mm512_loadu_si512((const void *)((const uint8_t *)wk1 + b));
                    __m512 t0 = _mm512_loadu_ps(tc + 16 * (8 * k + 2 * b));
                    __m512 t1 = _mm512_loadu_ps(tc + 16 * (8 * k + 2 * b + 1));
                    int h = 2 * k + (b >> 1);
                    A[0][h] = _mm512_add_ps(A[0][h], _mm512_permutexvar_ps(u0, t0));
                    A[1][h] = _mm512_add_ps(A[1][h], _mm512_permutexvar_ps(u1, t0));
                    A[0][h] = _mm512_add_ps(A[0][h], _mm512_permutexvar_ps(_mm512_srli_epi32(u0, 4), t1));
                    A[1][h] = _mm512_add_ps(A[1][h], _mm512_permutexvar_ps(_mm512_srli_epi32(u1, 4), t1));
                }
            } else {
                __m512i v0 = _mm512_loadu_si512((const void *)wk0);
                __m512i v1 = _mm512_loadu_si512((const void *)wk1);
                for (int m = 0; m < 8; m++) {
                    __m512 t = _mm512_loadu_ps(tc + 16 * (8 * k + m));
                    int h = 2 * k + (m >> 2);
                    A[0][h] = _mm512_add_ps(A[0][h], _mm512_permutexvar_ps(v0, t));
                    A[1][h] = _mm512_add_ps(A[1][h], _mm512_permutexvar_ps(v1, t));
                    v0 = _mm512_srli_epi32(v0, 4);
                    v1 = _mm512_srli_epi32(v1, 4);
                }
            }
        }
        if (c == bc.end) {
            for (int u = 0; u < 2; u++) {
                __m512 s = _mm512_loadu_ps(sc + u * sstride + 16 * bc.b);
                __m512 part = _mm512_add_ps(
                    _mm512_add_ps(_mm512_add_ps(A[u][0], A[u][1]), _mm512_add_ps(A[u][2], A[u][3])),
                    _mm512_add_ps(_mm512_add_ps(A[u][4], A[u][5]), _mm512_add_ps(A[u][6], A[u][7])));
                Y[u] = _mm512_add_ps(Y[u], _mm512_mul_ps(s, part));
                for (int i = 0; i < 8; i++) A[u][i] = _mm512_setzero_ps();
            }
            ql_bnext(q, &bc);
        }
    }
    for (int u = 0; u < 2; u++) {
        for (int i = 0; i < 8; i++) _mm512_storeu_ps(st + u * ststride + 16 * i, A[u][i]);
        _mm512_storeu_ps(st + u * ststride + 128, Y[u]);
    }
}
#endif
